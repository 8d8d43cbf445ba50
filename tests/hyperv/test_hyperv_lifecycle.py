"""Create, configure, power, guest, delete through vmctl on hypervsim, checked against what
the host says (raw WS-Man calls through the driver's own client where vmctl cannot see)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from hyperv_helpers import GUEST_ISO, SWITCH, name

import vmctl
from vmctl import BootSource, DiskSpec, NicSpec, PowerState, Resources, VMSpec
from vmctl.spi import Deadline

S = PowerState


def _vhd_exists(hv: vmctl.Hypervisor, path: str) -> bool:
    d = hv._driver
    out = d.client.invoke(
        "Msvm_ImageManagementService",
        "GetVirtualHardDiskSettingData",
        d._svc("Msvm_ImageManagementService"),
        [("Path", path)],
        deadline=Deadline.after(10),
    )
    return bool(out["ReturnValue"] == 0)


@pytest.fixture()
def vm(hv: vmctl.Hypervisor) -> Iterator[vmctl.VM]:
    made = hv.create_vm(
        VMSpec(
            name=name("life"),
            vcpus=2,
            memory_mib=256,
            disks=[DiskSpec(size_mib=64)],
            nics=[NicSpec(network=SWITCH, mac="00:15:5d:aa:bb:01")],
            boot=BootSource(iso=GUEST_ISO),
            description="made by the tests",
        )
    )
    yield made
    if made.uuid in {i.uuid for i in hv.list_vms()}:
        made.delete(force=True)


def test_create_reads_back(hv: vmctl.Hypervisor, vm: vmctl.VM) -> None:
    info = vm.info()
    assert info.state is S.STOPPED and info.vcpus == 2 and info.memory_mib == 256
    cfg = vm.config()
    (disk,) = cfg.disks
    assert disk.size_mib == 64 and disk.path and disk.path.endswith(".vhdx")
    assert disk.path.startswith("C:\\ProgramData\\Microsoft\\Windows\\Virtual Hard Disks\\")
    (nic,) = cfg.nics
    assert nic.network == SWITCH and nic.mac == "00:15:5d:aa:bb:01"
    assert cfg.description == "made by the tests"
    assert cfg.resources.cpu_limit_percent is None  # 100000 = no limit
    assert info.uuid in {i.uuid for i in hv.list_vms()}


def test_power_cycle_and_guest(hv: vmctl.Hypervisor, vm: vmctl.VM) -> None:
    assert vm.start().state is S.RUNNING
    assert vm.pause().state is S.PAUSED
    assert vm.resume().state is S.RUNNING
    assert vm.suspend().state is S.SUSPENDED
    assert vm.info().reason is vmctl.StateReason.SAVED
    assert vm.resume().state is S.RUNNING
    deadline = time.monotonic() + 10
    while not (g := vm.guest_info()).ip_addresses and time.monotonic() < deadline:
        time.sleep(0.05)  # the guest answers guest_delay after the start
    assert g.agent is vmctl.AgentState.RUNNING and any("." in a for a in g.ip_addresses)
    assert g.hostname and vm.name in g.hostname
    assert vm.shutdown(timeout=30).state is S.STOPPED


def test_shutdown_without_a_guest_os_is_refused(hv: vmctl.Hypervisor) -> None:
    bare = hv.create_vm(VMSpec(name=name("bare"), memory_mib=128))
    try:
        bare.start()
        with pytest.raises(vmctl.InvalidState, match="integration service"):
            hv._driver.shutdown(bare.uuid, deadline=Deadline.after(10))
    finally:
        bare.delete(force=True)


def test_reconfigure_and_resources(vm: vmctl.VM) -> None:
    vm.set_resources(Resources(cpu_shares=200, cpu_reservation_percent=50, cpu_limit_percent=150))
    cfg = vm.reconfigure(vcpus=3, memory_mib=512)
    assert (cfg.vcpus, cfg.memory_mib) == (3, 512)
    # reservation and limit stay the same in cores when the vCPU count changes
    assert cfg.resources.cpu_shares == 200
    assert cfg.resources.cpu_reservation_percent == 50 and cfg.resources.cpu_limit_percent == 150
    with pytest.raises(vmctl.ValidationError):
        vm.set_resources(Resources(cpu_shares=20000))  # Hyper-V's weight is 1-10000


def test_devices_and_delete_removes_owned_disks(hv: vmctl.Hypervisor, vm: vmctl.VM) -> None:
    disk = vm.add_disk(DiskSpec(size_mib=32))
    assert disk.size_mib == 32 and disk.path and _vhd_exists(hv, disk.path)
    vm.remove_disk(disk.id)
    assert not _vhd_exists(hv, disk.path)  # vmctl made it: removing deletes it
    nic = vm.add_nic(NicSpec(network=SWITCH))
    assert nic.network == SWITCH and nic.mac.startswith("00:15:5d")
    vm.remove_nic(nic.id)
    assert [n.id for n in vm.config().nics] != [nic.id]
    (first,) = vm.config().disks
    assert first.path
    deleted = vm.delete()
    assert any(first.path in line for line in deleted)
    assert not _vhd_exists(hv, first.path)


def test_bad_input_refused_before_any_call(hv: vmctl.Hypervisor) -> None:
    driver = hv._driver
    before = driver.round_trips
    with pytest.raises(vmctl.ValidationError):
        driver.create_vm(VMSpec(name=name("odd"), memory_mib=129), deadline=Deadline.after(10))
    with pytest.raises(vmctl.ValidationError):
        driver.create_vm(
            VMSpec(name=name("kern"), boot=BootSource(kernel="/boot/vmlinuz")),
            deadline=Deadline.after(10),
        )
    with pytest.raises(vmctl.NotFound, match="pool"):
        driver.create_vm(
            VMSpec(name=name("pool"), disks=[DiskSpec(size_mib=8, pool="fast")]),
            deadline=Deadline.after(10),
        )
    assert driver.round_trips == before


def test_unknown_network_and_taken_name(hv: vmctl.Hypervisor, vm: vmctl.VM) -> None:
    names = {i.name for i in hv.list_vms()}
    with pytest.raises(vmctl.NotFound, match="switch"):
        hv.create_vm(VMSpec(name=name("nonet"), nics=[NicSpec(network="no-such-switch")]))
    with pytest.raises(vmctl.AlreadyExists):
        hv.create_vm(VMSpec(name=vm.name))
    assert {i.name for i in hv.list_vms()} == names


def test_return_codes_and_jobs_map_with_the_original(hv: vmctl.Hypervisor, vm: vmctl.VM) -> None:
    from vmctl_hyperv._errors import HyperVError

    vm.start()
    # DestroySystem of a running VM: 32775 (Invalid state for this operation)
    with pytest.raises(vmctl.InvalidState) as err:
        hv._driver.delete_vm(vm.uuid, deadline=Deadline.after(10))
    assert err.value.vendor_code == "32775" and isinstance(err.value.__cause__, HyperVError)
    vm.power_off()
    # a start that does not fit the host's memory: the job ends with ErrorCode 32778
    big = hv.create_vm(VMSpec(name=name("big"), memory_mib=70 * 1024))
    try:
        with pytest.raises(vmctl.InsufficientResources) as err2:
            big.start()
        assert err2.value.vendor_code == "32778"
        assert isinstance(err2.value.__cause__, HyperVError)
    finally:
        big.delete(force=True)


def test_checkpoints(vm: vmctl.VM) -> None:
    a = vm.snapshot("a", description="first")
    vm.reconfigure(vcpus=1)
    b = vm.snapshot("b")
    snaps = {s.name: s for s in vm.snapshots()}
    assert snaps["b"].parent == a.id and snaps["b"].current and snaps["a"].description == "first"
    with pytest.raises(vmctl.AlreadyExists):
        vm.snapshot("a")
    assert vm.revert(a).state is S.STOPPED
    assert vm.info().vcpus == 2
    vm.delete_snapshot(b)
    assert [s.name for s in vm.snapshots()] == ["a"]


def test_events_are_polled(hv: vmctl.Hypervisor, vm: vmctl.VM) -> None:
    with hv.watch(vm=vm, kinds=[vmctl.EventKind.STATE_CHANGED], timeout=30) as events:
        vm.start()
        assert any(e.state is S.RUNNING for e in events)


def test_migration_both_ways(hv: vmctl.Hypervisor, hv2: vmctl.Hypervisor, vm: vmctl.VM) -> None:
    vm.start()
    moved = vm.migrate(hv2)
    assert moved.info().state is S.RUNNING and moved.info().host == "HVHOST2"
    assert vm.uuid not in {i.uuid for i in hv.list_vms()}
    back = moved.migrate(hv)
    assert back.info().host == "HVHOST1"


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (32775, vmctl.InvalidState),
        (32777, vmctl.InvalidState),
        (32778, vmctl.InsufficientResources),
        (32779, vmctl.NotFound),
        (32774, vmctl.Conflict),
        (32770, vmctl.NotSupported),
        (32772, vmctl.OperationTimeout),
        (32773, vmctl.BackendError),
        (32768, vmctl.BackendError),
    ],
)
def test_return_code_table(code: int, error: type) -> None:
    from vmctl_hyperv._errors import HyperVError, from_code

    err, orig = from_code("do it", code, "what the job said")
    assert type(err) is error and isinstance(orig, HyperVError) and orig.code == code
    assert str(code) in str(err) and "what the job said" in str(err)
    assert err.vendor_code == str(code)
