"""The KVM driver on libvirt's own test driver (test:///...): an in-process fake hypervisor
written by libvirt, so these run without libvirtd."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import vmctl
from tests.kvm.kvm_helpers import PREFIX, count_calls, write_node_xml
from vmctl import DiskSpec, EventKind, NicSpec, PowerState, Resources, StateReason, VMSpec

#: Where kit reports are kept for the support matrix (python -m vmctl_conformance.matrix).
REPORTS = Path(__file__).resolve().parents[2] / "reports"
REPORTS.mkdir(exist_ok=True)

S = PowerState


def test_lifecycle_and_state_reasons(test_hv: vmctl.Hypervisor) -> None:
    vm = test_hv.create_vm(
        VMSpec(
            name=PREFIX + "life",
            vcpus=1,
            memory_mib=128,
            disks=[DiskSpec(size_mib=32)],
            nics=[NicSpec(network="default")],
        )
    )
    assert vm.info().state is S.STOPPED
    assert vm.start().reason is StateReason.BOOTED
    assert vm.pause().state is S.PAUSED
    assert {i.uuid: i.state for i in test_hv.list_vms()}[vm.uuid] is S.PAUSED
    assert vm.resume().state is S.RUNNING
    suspended = vm.suspend()
    assert (suspended.state, suspended.reason) == (S.SUSPENDED, StateReason.SAVED)
    assert {i.uuid: i.state for i in test_hv.list_vms()}[vm.uuid] is S.SUSPENDED
    assert vm.resume().state is S.RUNNING
    off = vm.power_off()
    assert (off.state, off.reason) == (S.STOPPED, StateReason.POWERED_OFF)
    deleted = vm.delete()
    assert deleted[0].startswith(f"vm {PREFIX}life") and any("disk" in d for d in deleted)
    with pytest.raises(vmctl.NotFound):
        vm.info()


def test_events_come_from_libvirt(test_hv: vmctl.Hypervisor) -> None:
    with test_hv.watch(timeout=10) as events:
        vm = test_hv.create_vm(VMSpec(name=PREFIX + "events", memory_mib=64))
        vm.start()
        vm.power_off()
        vm.delete()
        got = []
        for e in events:  # delivered by libvirt's event loop thread, in order
            if e.vm_uuid == vm.uuid:
                got.append((e.kind, e.state))
            if e.kind is EventKind.DELETED:
                break
    assert got == [
        (EventKind.CREATED, S.STOPPED),
        (EventKind.STATE_CHANGED, S.RUNNING),
        (EventKind.STATE_CHANGED, S.STOPPED),
        (EventKind.DELETED, None),
    ]


def test_memory_limit_and_unsupported_controls(test_hv: vmctl.Hypervisor) -> None:
    vm = test_hv.create_vm(VMSpec(name=PREFIX + "res", memory_mib=128))
    try:
        assert vm.set_resources(Resources(memory_limit_mib=512)).resources.memory_limit_mib == 512
        with pytest.raises(vmctl.NotSupported) as err:
            vm.set_resources(Resources(cpu_shares=100))
        assert err.value.capability is vmctl.Capability.CPU_SHARES
    finally:
        vm.delete()


@pytest.mark.parametrize("count", [300])
def test_inventory_takes_two_calls(tmp_path: Path, count: int) -> None:
    """Two bulk calls; libvirt's test driver leaves the vcpu and balloon groups out of
    getAllDomainStats, so there (only) each domain's info() fills vCPUs and memory."""
    node = write_node_xml(tmp_path / "node.xml", count)
    with vmctl.connect(f"test://{node}") as h:
        with count_calls() as calls:
            infos = h.list_vms()
        assert len(infos) == count
        bulk = {k: v for k, v in calls.items() if k != "virDomain.info"}
        assert sum(bulk.values()) <= 2, calls
        assert calls["virDomain.info"] <= count
        states = {i.state for i in infos}
        assert states == {S.RUNNING, S.PAUSED, S.STOPPED}
        assert {(i.vcpus, i.memory_mib) for i in infos} == {(1, 128)}


def test_list_vms_reports_vcpus_and_memory(test_hv: vmctl.Hypervisor) -> None:
    """Issue 9 item 9: list_vms() on test:///default said 0 vCPUs and 0 MiB for every
    domain while vm.info() said otherwise."""
    vm = test_hv.create_vm(VMSpec(name=PREFIX + "sizes", vcpus=2, memory_mib=256))
    try:
        listed = {i.uuid: i for i in test_hv.list_vms()}
        for uuid, info in listed.items():
            one = test_hv.vm(uuid).info()
            assert (info.vcpus, info.memory_mib) == (one.vcpus, one.memory_mib), info
            assert info.vcpus > 0 and info.memory_mib > 0
        assert (listed[vm.uuid].vcpus, listed[vm.uuid].memory_mib) == (2, 256)
    finally:
        vm.delete()


def test_kit_on_test_driver(tmp_path: Path) -> None:
    from vmctl_conformance import run

    report = run("test:///default", report=tmp_path / "kit-test.md")
    report.write(REPORTS / "kvm-test.json")  # kept for the support matrix
    assert not report.failed, report.output[-3000:]
    assert not report.leaked
    statuses = {cid: r.status for cid, r in report.results.items()}
    assert statuses["LIFE-SUSPEND-1"] == "pass"
    assert statuses["LIFE-SHUTDOWN-1"] == "not-supported"


def test_refused_create_removes_what_it_made(test_hv: vmctl.Hypervisor) -> None:
    """The domain is defined first and the volumes made after it: when libvirt refuses the
    second volume (no space in the pool), the first volume and the domain are removed, and
    nothing is left behind."""
    import libvirt

    name = PREFIX + "refused"
    with pytest.raises(vmctl.VmctlError, match="free space") as err:
        test_hv.create_vm(
            VMSpec(
                name=name,
                memory_mib=64,
                disks=[DiskSpec(size_mib=8), DiskSpec(size_mib=60_000_000)],
            )
        )
    assert err.value.left_behind == ()
    assert name not in {i.name for i in test_hv.list_vms()}
    conn = libvirt.open("test:///default")  # the same in-process host, a second client
    try:
        vols = conn.storagePoolLookupByName("default-pool").listVolumes()
    finally:
        conn.close()
    assert not [v for v in vols if v.startswith(name)]


def test_late_definition_is_waited_for_before_clean_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """The definition outlives the deadline (a slow libvirtd): the clean-up first waits for
    that call (within one RPC timeout), then removes the domain it made; removing it before
    the late call landed would leave an orphan. The create raised OperationTimeout with
    nothing left behind."""
    import time

    import libvirt

    from vmctl import URI, ConnectParams
    from vmctl.spi import Deadline
    from vmctl_kvm import KvmDriver

    original = libvirt.virConnect.defineXML

    def slow_define(self: Any, xml: str) -> Any:
        time.sleep(1.5)
        return original(self, xml)

    driver = KvmDriver.open(
        ConnectParams(uri=URI.parse("test:///default")), deadline=Deadline.after(10)
    )
    name = PREFIX + "late"
    try:
        monkeypatch.setattr(libvirt.virConnect, "defineXML", slow_define)
        t0 = time.monotonic()
        with pytest.raises(vmctl.OperationTimeout) as err:
            driver.create_vm(
                VMSpec(name=name, memory_mib=64, disks=[DiskSpec(size_mib=8)]),
                deadline=Deadline.after(0.5),
            )
        took = time.monotonic() - t0
        monkeypatch.undo()
        assert err.value.left_behind == ()
        assert 1.4 <= took <= 3.0, took
        assert name not in {i.name for i in driver.list_vms(deadline=Deadline.after(10))}
    finally:
        driver.close()
