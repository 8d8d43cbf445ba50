"""Recovery of a failed vCenter cluster host, and vSphere's memory overhead in the plans, on
the vSphere simulator (its own, as these tests take hosts down).

The launcher (tests/hosts/vcsim/hostfailure.go) adds what the simulator lacks, as vSphere
documents it: DisconnectHost_Task / ReconnectHost_Task / ShutdownHost_Task, UnregisterVM of a
VM whose host does not respond, the .vmx kept across UnregisterVM and RegisterVM_Task, and
config.initialOverhead. A host is taken down with the admin session, as an operator (or a
power cut) would; vmctl sees it only through the API.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import vmctl
from tests.esx.conftest import CLUSTER, Admin, connect
from tests.hosts.esx import VcsimServer
from vmctl import HostState, MoveMode, MoveOutcome, PowerState

pytest.importorskip("pyVmomi")
from pyVmomi import vim

VCSIM = {"vms": 0, "hosts": 4}
pytestmark = pytest.mark.usefixtures("own_state_dir")


@pytest.fixture
def hv(vc: VcsimServer) -> Iterator[vmctl.Hypervisor]:
    with connect(vc) as h:
        yield h


def host_ref(admin: Admin, name: str) -> Any:
    for ref in admin.content.viewManager.CreateContainerView(
        admin.content.rootFolder, [vim.HostSystem], True
    ).view:
        if ref.name == name:
            return ref
    raise AssertionError(f"no host {name}")


def wait(admin: Admin, task: Any) -> Any:
    """The end of an admin task (the simulator's tasks end inside the call)."""
    info = admin.props(task, vim.Task, ["info"])["info"]
    assert str(info.state) in ("success", "error"), info.state
    return info


def vm_props(admin: Admin, uuid: str, paths: list[str]) -> dict[str, Any]:
    return admin.props(admin.vm(uuid), vim.VirtualMachine, paths)


def make_vms(vc: VcsimServer, host: str, prefix: str) -> tuple[str, str]:
    """A running VM and a stopped one, each with a disk, on ``host`` of the cluster."""
    with connect(vc, f"{CLUSTER}/{host}") as one:
        disk = [vmctl.DiskSpec(size_mib=8)]
        up = one.create_vm(
            vmctl.VMSpec(name=f"{prefix}-up", vcpus=2, memory_mib=256, disks=disk), start=True
        )
        down = one.create_vm(vmctl.VMSpec(name=f"{prefix}-down", memory_mib=128, disks=disk))
        return up.uuid, down.uuid


def disks_of(admin: Admin, uuid: str) -> list[str]:
    devices = vm_props(admin, uuid, ["config.hardware.device"])["config.hardware.device"]
    return sorted(d.backing.fileName for d in devices if isinstance(d, vim.vm.device.VirtualDisk))


def test_a_disconnected_host_proves_nothing_its_vms_wait_for_the_callers_word(
    vc: VcsimServer, admin: Admin, hv: vmctl.Hypervisor
) -> None:
    up, down = make_vms(vc, "DC0_C0_H1", "dis")
    disks = {u: disks_of(admin, u) for u in (up, down)}
    ref = host_ref(admin, "DC0_C0_H1")
    assert str(wait(admin, ref.DisconnectHost_Task()).state) == "success"
    failed = hv.host("DC0_C0_H1")
    assert failed.state is HostState.UNREACHABLE
    # Evacuation is refused for it; recovery plans both VMs, the stopped one cold.
    with pytest.raises(vmctl.InvalidState):
        vmctl.plan_recovery(hv.host("DC0_C0_H0"))
    plan = vmctl.plan_recovery(failed)
    assert plan.fence_proof is None and plan.ok
    modes = {m.vm_uuid: m.mode for m in plan.moves}
    assert modes == {up: MoveMode.RESTART, down: MoveMode.COLD}
    assert "Fencing: not proven" in str(plan)
    # A disconnected host may still run its VMs: nothing happens without the caller's word.
    with pytest.raises(vmctl.InvalidState, match="confirm_fenced"):
        vmctl.execute(plan)
    assert vm_props(admin, up, ["runtime.host"])["runtime.host"]._moId == failed.id
    assert str(vm_props(admin, up, ["runtime.connectionState"])["runtime.connectionState"]) == (
        "disconnected"
    )
    # The caller confirms the host is fenced: both come back elsewhere, with their disks.
    report = vmctl.execute(plan, confirm_fenced=True, max_parallel=2)
    assert report.ok, str(report)
    for move in plan.moves:
        p = vm_props(
            admin, move.vm_uuid, ["runtime.host", "runtime.powerState", "config.instanceUuid"]
        )
        assert p["runtime.host"]._moId == move.target_id != failed.id
        assert p["config.instanceUuid"] == move.vm_uuid
        assert disks_of(admin, move.vm_uuid) == disks[move.vm_uuid]
    assert hv.vm(up).info().state is PowerState.RUNNING
    assert hv.vm(down).info().state is PowerState.STOPPED
    assert hv.vm(up).info().memory_mib == 256
    # Executed again: nothing left to do.
    again = vmctl.execute(plan, confirm_fenced=True)
    assert {r.outcome for r in again.results} == {MoveOutcome.ALREADY}
    # The host comes back (an administrator reconnects it): it runs none of them.
    assert str(wait(admin, ref.ReconnectHost_Task()).state) == "success"
    back = hv.host("DC0_C0_H1")
    assert back.state is HostState.CONNECTED and back.vm_count == 0


def test_a_host_vcenter_shut_down_is_proven_down_and_its_vms_restart_elsewhere(
    vc: VcsimServer, admin: Admin, hv: vmctl.Hypervisor
) -> None:
    up, down = make_vms(vc, "DC0_C0_H2", "off")
    ref = host_ref(admin, "DC0_C0_H2")
    # Not in maintenance: refused unless forced, as vSphere does.
    assert str(wait(admin, ref.ShutdownHost_Task(force=False)).state) == "error"
    assert hv.host("DC0_C0_H2").state is HostState.CONNECTED
    assert str(wait(admin, ref.ShutdownHost_Task(force=True)).state) == "success"
    failed = hv.host("DC0_C0_H2")
    assert failed.state is HostState.UNREACHABLE
    plan = vmctl.plan_recovery(failed)
    assert plan.fence_proof and "poweredOff" in plan.fence_proof, plan.fence_proof
    assert "Fencing: proven by the backend" in str(plan)
    report = vmctl.execute(plan)  # the backend's proof: no confirmation needed
    assert report.ok, str(report)
    assert hv.vm(up).info().state is PowerState.RUNNING
    assert hv.vm(down).info().state is PowerState.STOPPED
    for u in (up, down):
        assert vm_props(admin, u, ["runtime.host"])["runtime.host"]._moId != failed.id
    # declare_failed disconnected it: vCenter does not take it back by itself.
    state = admin.props(ref, vim.HostSystem, ["runtime.connectionState", "runtime.powerState"])
    assert str(state["runtime.connectionState"]) == "disconnected"
    # Powered off: it cannot be reconnected (nothing answers).
    assert str(wait(admin, ref.ReconnectHost_Task()).state) == "error"


def test_a_running_vm_of_a_live_host_is_never_restarted(
    vc: VcsimServer, admin: Admin, hv: vmctl.Hypervisor
) -> None:
    up, _down = make_vms(vc, "DC0_C0_H3", "live")
    driver: Any = hv._driver  # type: ignore[attr-defined]
    deadline = vmctl.spi.Deadline.after(30)
    with pytest.raises(vmctl.InvalidState, match="connected"):
        driver.restart_on_host(up, hv.host("DC0_C0_H0").id, deadline=deadline)
    with pytest.raises(vmctl.InvalidState, match="connected"):
        driver.declare_failed(hv.host("DC0_C0_H3").id, deadline=deadline)
    assert driver.fence_proof(hv.host("DC0_C0_H3").id, deadline=deadline) is None
    assert vm_props(admin, up, ["runtime.host"])["runtime.host"]._moId == hv.host("DC0_C0_H3").id


def test_plans_count_vsphere_memory_overhead(
    vc: VcsimServer, admin: Admin, hv: vmctl.Hypervisor
) -> None:
    source = hv.host("DC0_C0_H3")
    plan = vmctl.plan_evacuation(source)
    assert plan.moves, str(plan)
    for move in plan.moves:
        p = vm_props(admin, move.vm_uuid, ["config.initialOverhead", "config.hardware.memoryMB"])
        overhead = -(-p["config.initialOverhead"].initialMemoryReservation // 2**20)
        assert overhead > 0
        assert move.overhead_mib == overhead
        assert move.memory_mib == p["config.hardware.memoryMB"] + overhead
        assert f"{move.memory_mib} MiB ({p['config.hardware.memoryMB']} + {overhead} overhead)" in (
            str(plan)
        )
        assert move.to_json()["overhead_mib"] == overhead


def test_the_overhead_keeps_a_plan_from_overfilling_a_host(
    vc: VcsimServer, admin: Admin, hv: vmctl.Hypervisor
) -> None:
    targets = [hv.host("DC0_C0_H0"), hv.host("DC0_C0_H1")]
    # The largest VM is placed first: the free memory of the roomiest target is its room.
    room = max(t.memory_mib - (t.memory_used_mib or 0) for t in targets)
    # Its configured memory fits a target; with vSphere's overhead for it, none.
    with connect(vc, f"{CLUSTER}/DC0_C0_H3") as one:
        big = one.create_vm(vmctl.VMSpec(name="big", memory_mib=room - 1), start=True)
    try:
        plan = vmctl.plan_evacuation(hv.host("DC0_C0_H3"), targets)
        (blocked,) = [b for b in plan.blockers if b.vm_uuid == big.uuid]
        overhead = -(
            -vm_props(admin, big.uuid, ["config.initialOverhead"])[
                "config.initialOverhead"
            ].initialMemoryReservation
            // 2**20
        )
        assert blocked.kind is vmctl.BlockKind.MEMORY
        assert blocked.memory_mib == room - 1 + overhead
        assert f"needs {room - 1 + overhead} MiB" in blocked.reason
    finally:
        hv.vm(big.uuid).delete(force=True)
