"""Hosts, maintenance mode and evacuation on the vSphere simulator: the cluster DC0/DC0_C0
(three hosts) through vCenter, and a standalone ESX host (one host: nothing to move to).
Each test module runs its own simulator, as these tests move VMs and change host modes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import vmctl
from tests.esx.conftest import Admin, connect, vc_uri
from tests.hosts.esx import VcsimServer
from vmctl import BlockKind, HostState, MoveMode, MoveOutcome

pytest.importorskip("pyVmomi")
from pyVmomi import vim

pytestmark = pytest.mark.usefixtures("own_state_dir")


@pytest.fixture
def hv(vc: VcsimServer) -> Iterator[vmctl.Hypervisor]:
    with connect(vc) as h:
        yield h


def host_of(admin: Admin, hv: vmctl.Hypervisor, uuid: str) -> str:
    vm = admin.vm(uuid)
    return str(admin.props(vm, vim.VirtualMachine, ["runtime.host"])["runtime.host"]._moId)


def test_cluster_hosts_with_capacity_and_load(hv: vmctl.Hypervisor, admin: Admin) -> None:
    hosts = hv.hosts()
    assert [h.name for h in hosts] == ["DC0_C0_H0", "DC0_C0_H1", "DC0_C0_H2"]
    for h in hosts:
        ref = vim.HostSystem(h.id, admin.si._stub)
        p = admin.props(
            ref,
            vim.HostSystem,
            ["summary.hardware.memorySize", "summary.quickStats.overallMemoryUsage"],
        )
        assert h.memory_mib == p["summary.hardware.memorySize"] // 2**20
        assert h.memory_used_mib == p["summary.quickStats.overallMemoryUsage"]
        assert h.state is HostState.CONNECTED and h.cpus > 0 and h.cpu_mhz > 0
        assert h.cpu_percent is not None and 0 <= h.cpu_percent <= 100
    assert sum(h.vm_count for h in hosts) == len(hv.list_vms())


def test_maintenance_mode_and_evacuation(hv: vmctl.Hypervisor, admin: Admin) -> None:
    busy = max(hv.hosts(), key=lambda h: h.vm_count)
    assert busy.vm_count > 0
    plan = vmctl.plan_evacuation(busy)
    assert plan.ok and {m.mode for m in plan.moves} == {MoveMode.LIVE}
    assert busy.id not in {m.target_id for m in plan.moves}
    report = vmctl.execute(plan, max_parallel=2)
    assert report.ok, str(report)
    for m in plan.moves:
        assert host_of(admin, hv, m.vm_uuid) == m.target_id
    entered = hv.host(busy.id).enter_maintenance()
    assert entered.backend_maintenance and entered.state is HostState.MAINTENANCE
    ref = vim.HostSystem(busy.id, admin.si._stub)
    assert admin.props(ref, vim.HostSystem, ["runtime.inMaintenanceMode"])[
        "runtime.inMaintenanceMode"
    ]
    # Nothing is planned onto it, and the driver refuses it as a target.
    other = next(h for h in hv.hosts() if h.vm_count and h.id != busy.id)
    again = vmctl.plan_evacuation(other)
    assert busy.id not in {m.target_id for m in again.moves}
    vm_uuid = again.moves[0].vm_uuid
    with pytest.raises(vmctl.InvalidState, match="maintenance"):
        hv._driver.move_to_host(  # type: ignore[attr-defined]
            vm_uuid, busy.id, mode=MoveMode.LIVE, deadline=vmctl.spi.Deadline.after(30)
        )
    left = hv.host(busy.id).exit_maintenance()
    assert left.state is HostState.CONNECTED and not left.backend_maintenance
    # Resuming: a plan executed twice moves nothing the second time.
    back = vmctl.plan_evacuation(other, [hv.host(busy.id)])
    first = vmctl.execute(back)
    second = vmctl.execute(back)
    assert first.ok and second.ok
    assert {r.outcome for r in second.results} == {MoveOutcome.ALREADY}


def test_what_ties_a_vm_to_its_host_is_in_the_plan(hv: vmctl.Hypervisor, admin: Admin) -> None:
    """A CD/DVD drive connected to the host's drive keeps a VM from vMotion (VMware's vMotion
    requirements; the simulator's own VMs come so): the plan names the drive and what to do;
    allowed, a restart takes the VM (cold, its drive unused); disconnected, it moves live.
    A PCI device of the host passed through to it pins it."""
    busy = max(hv.hosts(), key=lambda h: h.vm_count)
    uuid = next(
        v.uuid
        for v in hv.list_vms()
        if v.state is vmctl.PowerState.RUNNING and host_of(admin, hv, v.uuid) == busy.id
    )
    ref = admin.vm(uuid)
    admin.set_drives(ref, connected=True)
    try:
        plan = vmctl.plan_evacuation(busy)
        [blocked] = [b for b in plan.blockers if b.vm_uuid == uuid]
        assert blocked.kind is BlockKind.CAPABILITY
        assert "is connected to the host's" in blocked.reason, blocked.reason
        assert "disconnect it first" in blocked.reason
        assert "allow_restart=True would restart it elsewhere" in blocked.reason
        restart = vmctl.plan_evacuation(busy, allow_restart=True)
        assert next(m for m in restart.moves if m.vm_uuid == uuid).mode is MoveMode.RESTART
    finally:
        admin.set_drives(ref, connected=False)
    plan = vmctl.plan_evacuation(busy)
    assert next(m for m in plan.moves if m.vm_uuid == uuid).mode is MoveMode.LIVE

    admin.pass_through_pci(ref)
    try:
        plan = vmctl.plan_evacuation(busy, allow_restart=True)
        [blocked] = [b for b in plan.blockers if b.vm_uuid == uuid]
        assert blocked.kind is BlockKind.PINNED
        assert "passed through to it (DirectPath I/O" in blocked.reason, blocked.reason
        assert uuid not in {m.vm_uuid for m in plan.moves}
    finally:
        admin.remove_pci(ref)
    assert all(m.vm_uuid != uuid for m in vmctl.plan_evacuation(busy).blockers)


def test_a_powered_off_vm_moves_cold(hv: vmctl.Hypervisor, admin: Admin) -> None:
    vm = hv.vms()[0]
    vm.power_off()
    try:
        here = hv.host(host_of(admin, hv, vm.uuid))
        plan = vmctl.plan_evacuation(here)
        move = next(m for m in plan.moves if m.vm_uuid == vm.uuid)
        assert move.mode is MoveMode.COLD
        assert vmctl.execute(plan).ok
        assert host_of(admin, hv, vm.uuid) == move.target_id
        assert vm.info().state is vmctl.PowerState.STOPPED
    finally:
        vm.start()


def test_standalone_host_has_nowhere_to_move(vc: VcsimServer) -> None:
    with vmctl.connect(
        vc_uri(vc, "DC0/DC0_H0"), password=vc.password, cafile=str(vc.cafile), env={}
    ) as one:
        (host,) = one.hosts()
        plan = vmctl.plan_evacuation(host)
        assert not plan.moves
        # Its VMs are blocked: their datastore is this host's only, and no host is left.
        assert len(plan.blockers) == host.vm_count > 0
        assert {b.kind for b in plan.blockers} <= {BlockKind.NO_TARGET, BlockKind.LOCAL_STORAGE}


def test_restart_moves_are_refused_not_half_done(hv: vmctl.Hypervisor, admin: Any) -> None:
    vm = hv.vms()[0]
    target = next(h for h in hv.hosts() if h.id != host_of(admin, hv, vm.uuid))
    with pytest.raises(vmctl.NotSupported):
        hv._driver.move_to_host(  # type: ignore[attr-defined]
            vm.uuid, target.id, mode=MoveMode.RESTART, deadline=vmctl.spi.Deadline.after(30)
        )
    assert vm.info().state is vmctl.PowerState.RUNNING
