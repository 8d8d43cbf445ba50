from __future__ import annotations

import contextlib

import pytest

import vmctl
from vmctl import Capability, NicSpec, PowerState, StateReason, VMSpec
from vmctl_conformance import clause, requires
from vmctl_conformance._kit import Kit

S = PowerState


def _need_os(kit: Kit) -> None:
    if kit.boot is None:
        pytest.skip("no bootable guest given (kit options boot_kernel/boot_initrd or boot_iso)")


@clause("LIFE-CREATE-1")
def test_create_matches_spec(kit: Kit) -> None:
    spec = kit.spec("create", disks=2, nics=1)
    mac = "52:54:00:4b:1d:07"
    spec = VMSpec(
        name=spec.name,
        vcpus=2,
        memory_mib=spec.memory_mib,
        disks=spec.disks,
        nics=[NicSpec(network=kit.network, mac=mac)],
    )
    vm = kit.track(kit.hv.create_vm(spec))
    info = vm.info()
    assert info.state is S.STOPPED
    kit.settled(vm, S.STOPPED, "create_vm")
    assert (info.name, info.vcpus, info.memory_mib) == (spec.name, 2, spec.memory_mib)
    config = vm.config()
    assert len(config.disks) >= 2
    assert all(d.size_mib >= spec.disks[0].size_mib for d in config.disks[:2])
    assert [(n.network, n.mac) for n in config.nics] == [(kit.network, mac)]


@clause("LIFE-CREATE-2")
def test_duplicate_name_refused(kit: Kit) -> None:
    vm = kit.vm("dup")
    before = vm.config()
    with pytest.raises(vmctl.AlreadyExists):
        kit.hv.create_vm(VMSpec(name=vm.name, vcpus=2, memory_mib=before.memory_mib))
    assert [i.uuid for i in kit.hv.list_vms() if i.name == vm.name] == [vm.uuid]
    assert vm.config() == before


@clause("LIFE-CREATE-3")
def test_unknown_network_leaves_nothing(kit: Kit) -> None:
    spec = kit.spec("badnet")
    spec = VMSpec(
        name=spec.name,
        memory_mib=spec.memory_mib,
        disks=spec.disks,
        nics=[NicSpec(network="vmctl-kit-no-such-network")],
    )
    with pytest.raises((vmctl.NotFound, vmctl.ValidationError)):
        kit.track(kit.hv.create_vm(spec))
    assert not [i for i in kit.hv.list_vms() if i.name == spec.name]


@clause("LIFE-START-1")
def test_start_returns_running(kit: Kit) -> None:
    vm = kit.vm("start")
    info = vm.start(timeout=kit.timeout)
    assert info.state is S.RUNNING
    assert vm.info().state is S.RUNNING
    kit.settled(vm, S.RUNNING, "start")


@clause("LIFE-START-2")
def test_illegal_request_raises_invalid_state(kit: Kit) -> None:
    vm = kit.vm("illegal", state=S.RUNNING)
    with pytest.raises(vmctl.InvalidState) as err:
        vm.start()
    assert err.value.current is S.RUNNING
    assert S.STOPPED in err.value.allowed
    assert "running" in str(err.value)
    assert vm.info().state is S.RUNNING
    kit.settled(vm, S.RUNNING, "a refused start")


@clause("LIFE-OFF-1", "STATE-REASON-1")
def test_power_off_returns_stopped(kit: Kit) -> None:
    vm = kit.vm("off", state=S.RUNNING)
    info = vm.power_off(timeout=kit.timeout)
    assert info.state is S.STOPPED
    assert info.reason in (StateReason.POWERED_OFF, StateReason.UNKNOWN)
    kit.settled(vm, S.STOPPED, "power_off")
    assert vm.info().reason is not StateReason.BOOTED


@clause("LIFE-OFF-1")
@requires(Capability.PAUSE)
def test_power_off_from_paused(kit: Kit) -> None:
    vm = kit.vm("off-paused", state=S.PAUSED)
    assert vm.power_off(timeout=kit.timeout).state is S.STOPPED
    kit.settled(vm, S.STOPPED, "power_off")


@clause("LIFE-OFF-1")
@requires(Capability.SUSPEND)
def test_power_off_from_suspended(kit: Kit) -> None:
    vm = kit.vm("off-susp", state=S.SUSPENDED, os=kit.guest)
    assert vm.power_off(timeout=kit.timeout).state is S.STOPPED
    kit.settled(vm, S.STOPPED, "power_off")


@clause("LIFE-SHUTDOWN-1")
@requires(Capability.SHUTDOWN)
def test_graceful_shutdown_of_guest(kit: Kit) -> None:
    _need_os(kit)
    vm = kit.vm("shutdown", state=S.RUNNING, os=True)
    # A guest may need time to boot far enough to act on ACPI: wait for its IP if we can.
    if kit.has(Capability.GUEST_INFO):
        kit.wait_until(lambda: bool(vm.guest_info().ip_addresses), "the guest to boot")
    info = vm.shutdown(timeout=kit.timeout)
    assert info.state is S.STOPPED
    assert info.reason in (StateReason.SHUTDOWN, StateReason.UNKNOWN)
    kit.settled(vm, S.STOPPED, "shutdown")


@clause("LIFE-SHUTDOWN-2")
@requires(Capability.SHUTDOWN)
def test_unanswered_shutdown_times_out_then_forces(kit: Kit) -> None:
    vm = kit.vm("noos", state=S.RUNNING)
    with pytest.raises((vmctl.OperationTimeout, vmctl.InvalidState)):
        vm.shutdown(timeout=3)
    assert vm.info().state is S.RUNNING
    info = vm.shutdown(timeout=kit.timeout, force_after=2)
    assert info.state is S.STOPPED
    kit.settled(vm, S.STOPPED, "shutdown(force_after=2)")


@clause("LIFE-REBOOT-1")
@requires(Capability.REBOOT)
def test_reboot(kit: Kit) -> None:
    if kit.guest:
        vm = kit.vm("reboot", state=S.RUNNING, os=True)
        if kit.has(Capability.GUEST_INFO):
            kit.wait_until(lambda: bool(vm.guest_info().ip_addresses), "the guest to boot")
        assert vm.reboot(timeout=kit.timeout).state is S.RUNNING
        kit.settled(vm, S.RUNNING, "reboot")
        return
    # No guest OS to ask: the request is refused as one the guest cannot take, or the VM
    # simply keeps running (ACPI ignored); either way it stays RUNNING.
    vm = kit.vm("reboot", state=S.RUNNING)
    with contextlib.suppress(vmctl.InvalidState):
        assert vm.reboot(timeout=kit.timeout).state is S.RUNNING
    assert vm.info().state is S.RUNNING
    kit.settled(vm, S.RUNNING, "reboot")


@clause("LIFE-RESET-1")
@requires(Capability.RESET)
def test_reset(kit: Kit) -> None:
    vm = kit.vm("reset", state=S.RUNNING)
    assert vm.reset(timeout=kit.timeout).state is S.RUNNING
    assert vm.info().state is S.RUNNING
    kit.settled(vm, S.RUNNING, "reset")


@clause("LIFE-PAUSE-1")
@requires(Capability.PAUSE)
def test_pause_and_resume(kit: Kit) -> None:
    vm = kit.vm("pause", state=S.RUNNING)
    assert vm.pause(timeout=kit.timeout).state is S.PAUSED
    assert vm.info().state is S.PAUSED
    assert {i.uuid: i.state for i in kit.hv.list_vms()}[vm.uuid] is S.PAUSED
    kit.settled(vm, S.PAUSED, "pause")
    assert vm.resume(timeout=kit.timeout).state is S.RUNNING
    kit.settled(vm, S.RUNNING, "resume")


@clause("LIFE-SUSPEND-1")
@requires(Capability.SUSPEND)
def test_suspend_and_resume(kit: Kit) -> None:
    vm = kit.vm("suspend", state=S.RUNNING, os=kit.guest)
    assert vm.suspend(timeout=kit.timeout).state is S.SUSPENDED
    assert vm.info().state is S.SUSPENDED
    assert {i.uuid: i.state for i in kit.hv.list_vms()}[vm.uuid] is S.SUSPENDED
    kit.settled(vm, S.SUSPENDED, "suspend")
    assert vm.resume(timeout=kit.timeout).state is S.RUNNING
    kit.settled(vm, S.RUNNING, "resume")


@clause("LIFE-DELETE-1")
def test_delete_stopped(kit: Kit) -> None:
    vm = kit.vm("delete", disks=1)
    deleted = vm.delete()
    assert deleted and any(vm.name in line or vm.uuid in line for line in deleted)
    assert len(deleted) >= 2, f"the VM's disk is not among what was deleted: {deleted}"
    with pytest.raises(vmctl.NotFound):
        kit.hv.vm(vm.uuid)


@clause("LIFE-DELETE-2")
def test_delete_running_needs_force(kit: Kit) -> None:
    vm = kit.vm("delete-run", state=S.RUNNING)
    with pytest.raises(vmctl.InvalidState):
        vm.delete()
    assert vm.info().state is S.RUNNING
    kit.settled(vm, S.RUNNING, "a refused delete")
    vm.delete(force=True, timeout=kit.timeout)
    with pytest.raises(vmctl.NotFound):
        vm.info()


@clause("LIFE-ASYNC-1")
def test_wait_false_and_wait_all(kit: Kit) -> None:
    vms = [kit.vm(f"async{i}") for i in range(3)]
    ops = [vm.start(wait=False, timeout=kit.timeout) for vm in vms]
    assert all(isinstance(op, vmctl.Operation) for op in ops)
    vmctl.wait_all(ops, timeout=kit.timeout)
    for op in ops:
        assert op.exception() is None
        assert op.result().state is S.RUNNING
    states = {i.uuid: i.state for i in kit.hv.list_vms()}
    assert all(states[vm.uuid] is S.RUNNING for vm in vms)
    kit.settled(vms, S.RUNNING, "start(wait=False)")
