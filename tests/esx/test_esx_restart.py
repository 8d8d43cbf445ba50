"""Restart moves on the vSphere simulator's cluster (vCenter DC0/DC0_C0): the ESX driver
does not restart in place, so the core composes the move: ShutdownGuest (VMware Tools made
to look running through the simulator's SET.* hook), RelocateVM_Task cold, PowerOnVM_Task
on the target. The VM's CD/DVD drive is connected to its host's drive, which vMotion
refuses, so the evacuation plan with ``allow_restart=True`` restarts it; the plan is narrowed
to that one move (``attrs.evolve``: public classes). The simulator's own view (a plain
pyVmomi session) says where the VM ends."""

from __future__ import annotations

from collections.abc import Iterator

import attrs
import pytest

import vmctl
from tests.esx.conftest import Admin, connect
from tests.hosts.esx import VcsimServer
from vmctl import MoveMode, MoveOutcome, PowerState

pytest.importorskip("pyVmomi")
from pyVmomi import vim

pytestmark = pytest.mark.usefixtures("own_state_dir")

S = PowerState


@pytest.fixture
def hv(vc: VcsimServer) -> Iterator[vmctl.Hypervisor]:
    with connect(vc) as h:
        yield h


def _raw(admin: Admin, uuid: str) -> tuple[str, str, list[str]]:
    """(host moid, power state, disk files) as the simulator has them."""
    p = admin.props(
        admin.vm(uuid),
        vim.VirtualMachine,
        ["runtime.host", "runtime.powerState", "config.hardware.device"],
    )
    disks = [
        d.backing.fileName
        for d in p["config.hardware.device"]
        if isinstance(d, vim.vm.device.VirtualDisk)
    ]
    return str(p["runtime.host"]._moId), str(p["runtime.powerState"]), disks


def _restart_plan(hv: vmctl.Hypervisor, admin: Admin, vm: vmctl.VM) -> vmctl.Plan:
    admin.set_drives(admin.vm(vm.uuid), connected=True)
    here = hv.host(_raw(admin, vm.uuid)[0])
    plan = vmctl.plan_evacuation(here, allow_restart=True)
    move = next(m for m in plan.moves if m.vm_uuid == vm.uuid)
    assert move.mode is MoveMode.RESTART
    return attrs.evolve(plan, moves=(move,), blockers=())


def _running_vm(hv: vmctl.Hypervisor) -> vmctl.VM:
    vm = next(v for v in hv.vms() if v.last_info.state is S.RUNNING)
    return vm


def test_a_restart_move_ends_running_on_the_target_with_its_disks(
    hv: vmctl.Hypervisor, admin: Admin
) -> None:
    vm = _running_vm(hv)
    admin.set_props(vm.uuid, guest__toolsRunningStatus="guestToolsRunning")
    source, _, disks = _raw(admin, vm.uuid)
    plan = _restart_plan(hv, admin, vm)
    [move] = plan.moves
    report = vmctl.execute(plan)
    assert report.ok, str(report)
    [r] = report.results
    assert (r.outcome, r.mode) == (MoveOutcome.MOVED, MoveMode.RESTART)
    host, power, disks_after = _raw(admin, vm.uuid)
    assert (host, power) == (move.target_id, "poweredOn") and host != source
    assert disks_after == disks  # moved, not copied: the same files
    assert vm.info().state is S.RUNNING
    # the same plan again: on its target and running, nothing to do
    assert [r.outcome for r in vmctl.execute(plan).results] == [MoveOutcome.ALREADY]


def test_a_guest_without_tools_is_not_moved(hv: vmctl.Hypervisor, admin: Admin) -> None:
    vm = _running_vm(hv)
    admin.set_props(vm.uuid, guest__toolsRunningStatus="guestToolsNotRunning")
    source, _, _ = _raw(admin, vm.uuid)
    report = vmctl.execute(_restart_plan(hv, admin, vm), retries=1)
    [r] = report.results
    assert r.outcome is MoveOutcome.FAILED and r.attempts == 1, str(report)
    assert "VMware Tools are not running" in (r.error or "")
    assert "nothing was moved" in (r.error or "")
    assert _raw(admin, vm.uuid)[:2] == (source, "poweredOn")
