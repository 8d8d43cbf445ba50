"""Waits and state errors of the KVM driver on a real libvirtd: device removal blocks on
libvirt's DEVICE_REMOVED event up to the deadline (no fixed 20 s poll), a stalled libvirtd
is bounded by the request's timeout, a guest with nothing to hear a shutdown is refused at
once, and "domain is not running" is InvalidState."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

import vmctl
from tests.kvm.kvm_helpers import PREFIX, count_calls, virsh
from vmctl import DiskSpec, NicSpec, PowerState, VMSpec
from vmctl.spi import Deadline


def driver(hv: vmctl.Hypervisor) -> Any:
    return hv._driver  # the KvmDriver, for requests the core would refuse first


@pytest.fixture
def running(hv: vmctl.Hypervisor, hosts: Any) -> Iterator[vmctl.VM]:
    vm = hv.create_vm(
        VMSpec(
            name=PREFIX + "waits",
            memory_mib=128,
            disks=[DiskSpec(size_mib=16)],
            nics=[NicSpec(network=hosts.network)],
        )
    )
    try:
        vm.start(timeout=60)
        yield vm
    finally:
        vm.delete(force=True, timeout=60)


def test_live_nic_unplug_waits_for_the_deadline_not_20_s(
    hv: vmctl.Hypervisor, running: vmctl.VM
) -> None:
    """A guest with no OS never releases a virtio NIC (a PCI unplug needs the guest): the
    driver blocks on DEVICE_REMOVED until the deadline, not a hard-coded 20 s of polling."""
    nic = running.config().nics[0]
    timeout = 7.0  # libvirt itself waits ~5 s inside detachDeviceFlags
    with count_calls() as calls:
        t0 = time.monotonic()
        with pytest.raises(vmctl.OperationTimeout, match="still attached"):
            driver(hv).remove_nic(  # the core refuses a live NIC unplug (no hotplug_nic)
                running.uuid, nic.id, live=True, deadline=Deadline.after(timeout)
            )
        took = time.monotonic() - t0
    print(f"\nlive NIC unplug refused by the guest: OperationTimeout after {took:.2f} s")
    assert timeout - 0.5 <= took <= timeout + 2.5
    assert calls["virDomain.XMLDesc"] <= 4, calls  # no polling of the domain XML


def test_live_disk_unplug_ends_on_the_event(hv: vmctl.Hypervisor, running: vmctl.VM) -> None:
    disk = running.add_disk(DiskSpec(size_mib=8))
    t0 = time.monotonic()
    running.remove_disk(disk.id)
    took = time.monotonic() - t0
    print(f"\nlive virtio-scsi disk unplug: {took:.2f} s")
    assert disk.id not in {d.id for d in running.config().disks}
    assert took < 10


def test_stalled_libvirtd_bounded_by_each_timeout(
    hv: vmctl.Hypervisor, running: vmctl.VM, hosts: Any
) -> None:
    """SIGSTOP: pause(timeout=3) and suspend(timeout=0.3) end at their timeouts with
    OperationTimeout (they took 20 s / 1.67 s with a keepalive BackendError before)."""
    procs = [p for p in hosts.processes if p.role == "libvirtd" and p.alive()]
    if not procs:
        pytest.skip("libvirtd was not started by this test session: not ours to stop")
    running.info()
    os.kill(procs[0].pid, signal.SIGSTOP)
    try:
        for request, timeout in ((running.pause, 3.0), (running.suspend, 0.3)):
            t0 = time.monotonic()
            with pytest.raises(vmctl.OperationTimeout):
                request(timeout=timeout)
            took = time.monotonic() - t0
            print(f"\n{request.__name__}(timeout={timeout:g}) on a stopped libvirtd: {took:.2f} s")
            assert took <= timeout + 1.0
    finally:
        os.kill(procs[0].pid, signal.SIGCONT)
    virsh(hosts.uri, "list", "--name")
    # libvirtd may still carry out the pause it was sent; the VM is in a state, not half-way
    assert running.info().state in (PowerState.RUNNING, PowerState.PAUSED, PowerState.SUSPENDED)


def test_shutdown_refused_at_once_without_acpi_or_agent(hv: vmctl.Hypervisor, hosts: Any) -> None:
    import libvirt

    vm = hv.create_vm(VMSpec(name=PREFIX + "noacpi", memory_mib=128))
    conn = libvirt.open(hosts.uri)  # a second client strips <acpi/> from the definition
    try:
        xml = conn.lookupByUUIDString(vm.uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert "<acpi/>" in xml
        conn.defineXML(xml.replace("<acpi/>", ""))
        vm.start(timeout=60)
        t0 = time.monotonic()
        with pytest.raises(vmctl.InvalidState, match="power_off") as err:
            vm.shutdown(timeout=30)
        assert time.monotonic() - t0 < 5
        assert "no ACPI" in str(err.value)
        assert vm.info().state is PowerState.RUNNING
    finally:
        conn.close()
        vm.delete(force=True, timeout=60)


def test_domain_not_running_is_invalid_state(hv: vmctl.Hypervisor) -> None:
    """What the core relies on when a VM stopped by another path meanwhile (the flaky
    delete(force=True) after a libvirtd restart): libvirt's OPERATION_INVALID is
    InvalidState, so the core re-reads the state and finds the request done."""
    import libvirt

    vm = hv.create_vm(VMSpec(name=PREFIX + "notrunning", memory_mib=128))
    try:
        for request in (driver(hv).pause, driver(hv).reset):
            with pytest.raises(vmctl.InvalidState) as err:
                request(vm.uuid, deadline=Deadline.after(30))
            assert err.value.vendor_code == str(libvirt.VIR_ERR_OPERATION_INVALID)
    finally:
        vm.delete(force=True, timeout=60)


def test_force_delete_when_the_vm_stops_meanwhile(
    hv: vmctl.Hypervisor, hosts: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old flake, made to happen: delete(force=True) reads RUNNING, then another client
    destroys the domain just before the driver's destroy, which meets "domain is not
    running". That is InvalidState, and the core, finding the VM STOPPED, goes on."""
    import libvirt

    vm = hv.create_vm(VMSpec(name=PREFIX + "stopsmeanwhile", memory_mib=128))
    vm.start(timeout=60)
    original = libvirt.virDomain.destroy
    raced: list[bool] = []

    def destroy_after_another(self: Any) -> Any:
        if not raced:
            raced.append(True)
            virsh(hosts.uri, "destroy", vm.uuid)
        return original(self)

    monkeypatch.setattr(libvirt.virDomain, "destroy", destroy_after_another)
    deleted = vm.delete(force=True, timeout=60)
    assert raced and deleted[0].startswith("vm ")
    assert vm.uuid not in virsh(hosts.uri, "list", "--all", "--uuid")
