"""The core's policy, checked once for every driver: arguments, capabilities and states are
checked before a driver is called; stray vendor errors are mapped; waiting is honest."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

import vmctl
from vmctl import Capability, PowerState, Resources, VMSpec
from vmctl.spi import Driver
from vmctl_sim import SimDriver

S = PowerState


class SpyDriver(SimDriver):
    """The sim, with fewer capabilities and a log of every SPI call made."""

    name = "spy"
    declared: frozenset[Capability] = frozenset(
        {Capability.CREATE, Capability.DELETE, Capability.START, Capability.POWER_OFF}
    )
    calls: list[str] = []

    def narrow_capabilities(self, offered: frozenset[Capability]) -> frozenset[Capability]:
        return self.declared

    def __getattribute__(self, attr: str) -> Any:
        value = super().__getattribute__(attr)
        if (
            not callable(value)
            or attr.startswith("_")
            or attr in ("narrow_capabilities", "close", "wait_changes")
        ):
            return value

        def record(*args: Any, **kwargs: Any) -> Any:
            SpyDriver.calls.append(attr)
            return value(*args, **kwargs)

        return record


@pytest.fixture
def spy() -> Iterator[vmctl.Hypervisor]:
    vmctl.register("spy", SpyDriver, clobber=True)
    SpyDriver.calls = []
    try:
        with vmctl.connect("spy://h") as hv:
            yield hv
    finally:
        vmctl.unregister("spy")


def _backend_calls(fn: Any) -> list[str]:
    SpyDriver.calls = []
    fn()
    return [c for c in SpyDriver.calls if c not in ("get_vm", "list_vms", "get_config")]


@pytest.mark.parametrize(
    ("cap", "request_"),
    [
        (Capability.PAUSE, lambda vm: vm.pause()),
        (Capability.SUSPEND, lambda vm: vm.suspend()),
        (Capability.SHUTDOWN, lambda vm: vm.shutdown()),
        (Capability.REBOOT, lambda vm: vm.reboot()),
        (Capability.RESET, lambda vm: vm.reset()),
        (Capability.SNAPSHOT, lambda vm: vm.snapshot("s")),
        (Capability.CLONE, lambda vm: vm.clone("c")),
        (Capability.HOT_VCPUS, lambda vm: vm.reconfigure(vcpus=2)),
        (Capability.ADD_DISK, lambda vm: vm.add_disk(vmctl.DiskSpec(size_mib=1))),
        (Capability.GUEST_INFO, lambda vm: vm.guest_info()),
        (Capability.CPU_LIMIT, lambda vm: vm.set_resources(Resources(cpu_limit_percent=50))),
        (Capability.MIGRATE_LIVE, lambda vm: vm.migrate(vm.hypervisor)),
    ],
)
def test_undeclared_capability_raises_before_driver_call(
    spy: vmctl.Hypervisor, cap: Capability, request_: Any
) -> None:
    vm = spy.create_vm(VMSpec(name="v"))
    vm.start()
    with pytest.raises(vmctl.NotSupported) as err:
        assert _backend_calls(lambda: request_(vm)) == []
    assert err.value.capability is cap
    assert cap.value in str(err.value)


def test_illegal_state_raises_before_driver_call(spy: vmctl.Hypervisor) -> None:
    vm = spy.create_vm(VMSpec(name="v"))
    with pytest.raises(vmctl.InvalidState) as err:
        _backend_calls(vm.power_off)
    assert err.value.current is S.STOPPED
    assert "power_off" not in SpyDriver.calls
    assert "stopped" in str(err.value) and "running" in str(err.value)


def test_events_and_stats_need_capability(spy: vmctl.Hypervisor) -> None:
    with pytest.raises(vmctl.NotSupported):
        spy.watch()
    with pytest.raises(vmctl.NotSupported):
        spy.stats()


def test_spec_resources_need_capability(spy: vmctl.Hypervisor) -> None:
    with pytest.raises(vmctl.NotSupported):
        spy.create_vm(VMSpec(name="v", resources=Resources(cpu_shares=10)))
    assert spy.list_vms() == []


def test_capabilities_come_from_the_interfaces() -> None:
    """A driver offers what its interfaces give; the hook can narrow, never add."""
    assert vmctl.spi.capabilities_of(SimDriver) == frozenset(Capability)
    assert vmctl.spi.capabilities_of(Driver) == vmctl.REQUIRED_CAPABILITIES

    class Boastful(SpyDriver):
        declared = SpyDriver.declared | {Capability.PAUSE}

    class Minimal(Driver):
        name = "minimal"
        __init__ = SimDriver.__init__
        _host = SimDriver._host
        _vm = SimDriver._vm
        _info = SimDriver._info

        @classmethod
        def open(cls, params: vmctl.ConnectParams, *, deadline: vmctl.spi.Deadline) -> Driver:
            sim = SimDriver.open(params, deadline=deadline)
            return cls(sim.site, sim.host_name)  # type: ignore[call-arg]

        close = SimDriver.close
        host_info = SimDriver.host_info
        list_vms = SimDriver.list_vms
        get_vm = SimDriver.get_vm
        get_config = SimDriver.get_config
        create_vm = SimDriver.create_vm
        delete_vm = SimDriver.delete_vm
        start = SimDriver.start
        power_off = SimDriver.power_off

        def narrow_capabilities(self, offered: frozenset[Capability]) -> frozenset[Capability]:
            return offered | {Capability.PAUSE}

    vmctl.register("minimal", Minimal)
    try:
        with pytest.raises(vmctl.DriverError, match="without implementing Pausable"):
            vmctl.connect("minimal://h")
    finally:
        vmctl.unregister("minimal")
    vmctl.register("boastful", Boastful)
    try:
        with vmctl.connect("boastful://h") as hv:  # the sim has Pausable: narrowing is fine
            assert hv.capabilities == Boastful.declared
    finally:
        vmctl.unregister("boastful")


def test_stray_vendor_exception_becomes_backend_error(
    hv: vmctl.Hypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm = hv.create_vm(VMSpec(name="v"))
    boom = KeyError("vendor says no")

    def broken(uuid: str, *, deadline: vmctl.spi.Deadline) -> None:
        raise boom

    monkeypatch.setattr(hv._driver, "start", broken)
    with pytest.raises(vmctl.BackendError) as err:
        vm.start()
    assert err.value.__cause__ is boom
    assert "start VM 'v'" in str(err.value)


def test_ambiguous_name_is_a_conflict(hv: vmctl.Hypervisor) -> None:
    a = hv.create_vm(VMSpec(name="a"))
    b = hv.create_vm(VMSpec(name="b"))
    hv._driver._host.vms[b.uuid].name = "a"  # type: ignore[attr-defined]  # as Xen allows
    with pytest.raises(vmctl.Conflict) as err:
        hv.vm("a")
    assert a.uuid in str(err.value) and b.uuid in str(err.value)
    assert hv.vm(b.uuid).uuid == b.uuid


def test_shutdown_waits_and_force_after(hv: vmctl.Hypervisor) -> None:
    guest = hv.create_vm(VMSpec(name="g", boot=vmctl.BootSource(kernel="/k")))
    guest.start()
    info = guest.shutdown(timeout=5)
    assert (info.state, info.reason) == (S.STOPPED, vmctl.StateReason.SHUTDOWN)
    guest.start()
    with pytest.raises(vmctl.OperationTimeout):  # the guest takes 0.15 s to act
        guest.shutdown(timeout=0.05)
    blank = hv.create_vm(VMSpec(name="blank"))
    blank.start()
    started = time.monotonic()
    with pytest.raises(vmctl.InvalidState, match="no guest OS") as err:
        blank.shutdown(timeout=30)  # the sim knows nobody can answer: at once, not in 30 s
    assert time.monotonic() - started < 5
    assert "force_after" in str(err.value) and "power_off" in str(err.value)
    assert blank.state is S.RUNNING
    info = blank.shutdown(timeout=5, force_after=0.2)
    assert (info.state, info.reason) == (S.STOPPED, vmctl.StateReason.POWERED_OFF)
    guest.start() if guest.state is S.STOPPED else None
    for bad in (2, 1):  # force_after must leave time for the power-off
        with pytest.raises(vmctl.ValidationError, match="force_after"):
            guest.shutdown(timeout=1, force_after=bad)


def test_delete_refuses_running_unless_forced(hv: vmctl.Hypervisor) -> None:
    vm = hv.create_vm(VMSpec(name="v", disks=[vmctl.DiskSpec(size_mib=8)]))
    vm.start()
    with pytest.raises(vmctl.InvalidState, match="force=True"):
        vm.delete()
    deleted = vm.delete(force=True)
    assert any("disk" in line for line in deleted)
    with pytest.raises(vmctl.NotFound):
        vm.info()


def test_operations_and_wait_all(hv: vmctl.Hypervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    # The guest takes 5 s to act on the shutdown below, far beyond its 0.1 s timeout (with the
    # sim's 0.15 s, a busy machine could let the guest win the race and the test flip).
    monkeypatch.setattr("vmctl_sim._driver.GUEST_DELAY", 5.0)
    vms = [hv.create_vm(VMSpec(name=f"v{i}")) for i in range(4)]
    ops = [vm.start(wait=False) for vm in vms]
    assert all(isinstance(op, vmctl.Operation) for op in ops)
    done = vmctl.wait_all(ops, timeout=10)
    assert [op.result().state for op in done] == [S.RUNNING] * 4
    # A missing capability fails at the call; the state is read in the background (no round
    # trip in the caller), so a request the state forbids fails in its operation.
    bad = vms[0].start(wait=False)
    with pytest.raises(vmctl.InvalidState):
        bad.result(timeout=10)
    slow = hv.create_vm(VMSpec(name="slow", boot=vmctl.BootSource(kernel="/k")))
    slow.start()
    op = slow.shutdown(wait=False, timeout=0.1)
    with pytest.raises(vmctl.OperationTimeout):
        vmctl.wait_all([op], timeout=0.01)
    assert isinstance(op.exception(timeout=10), vmctl.OperationTimeout)
    assert [o.description for o in vmctl.as_completed(ops, timeout=1)]


def test_migrate_checks(hv: vmctl.Hypervisor, other: vmctl.Hypervisor) -> None:
    vm = hv.create_vm(VMSpec(name="m"))
    with pytest.raises(vmctl.ValidationError, match="already on"):
        vm.migrate(hv)
    with pytest.raises(vmctl.InvalidState):
        vm.migrate(other, live=True)
    moved = vm.migrate(other)
    assert moved.hypervisor is other and moved.info().state is S.STOPPED
    other.create_vm(VMSpec(name="dup"))
    dup = hv.create_vm(VMSpec(name="dup"))
    with pytest.raises(vmctl.AlreadyExists):
        dup.migrate(other)


def test_reconfigure_and_resources_validate(hv: vmctl.Hypervisor) -> None:
    vm = hv.create_vm(VMSpec(name="r", memory_mib=1024))
    with pytest.raises(vmctl.ValidationError):
        vm.reconfigure()
    with pytest.raises(vmctl.ValidationError):
        vm.reconfigure(vcpus=0)
    with pytest.raises(vmctl.ValidationError, match="below"):
        vm.set_resources(Resources(memory_limit_mib=512))
    vm.set_resources(Resources(memory_limit_mib=2048))
    with pytest.raises(vmctl.ValidationError, match="limit"):
        vm.reconfigure(memory_mib=4096)
    assert vm.config().memory_mib == 1024
    vm.start()
    vm.pause()
    with pytest.raises(vmctl.InvalidState):
        vm.reconfigure(vcpus=2)


def test_closed_connection_refuses(hv: vmctl.Hypervisor) -> None:
    hv.close()
    hv.close()
    with pytest.raises(vmctl.VmctlError, match="closed"):
        hv.list_vms()


def test_connect_errors() -> None:
    with pytest.raises(vmctl.ValidationError, match="VMCTL_URI"):
        vmctl.connect(env={})
    with pytest.raises(vmctl.DriverError, match="no driver serves"):
        vmctl.connect("nosuch://h")
    with pytest.raises(vmctl.ValidationError, match="unknown sim option"):
        vmctl.connect("sim://h?colour=blue")
    with vmctl.connect(env={"VMCTL_URI": "sim://fromenv"}) as hv:
        assert hv.host_info().name == "fromenv"


def test_snapshot_tree_and_names(hv: vmctl.Hypervisor) -> None:
    vm = hv.create_vm(VMSpec(name="s"))
    a = vm.snapshot("a")
    b = vm.snapshot("b")
    vm.revert("a")
    c = vm.snapshot("c")
    (root,) = vm.snapshot_tree()
    assert root.snapshot.id == a.id
    assert sorted(n.snapshot.id for n in root.children) == sorted([b.id, c.id])
    with pytest.raises(vmctl.NotFound):
        vm.revert("zzz")
    with pytest.raises(vmctl.ValidationError):
        vm.snapshot("bad/name")
