"""Restart moves over a vmctl.Site of the two libvirt test hosts: the KVM driver does not
restart in place, so the core composes the move (ACPI shutdown through the site, an offline
migration, a start on the other libvirtd). Each VM has an ivshmem ``<shmem>`` device, which
libvirt does not migrate live (checked: a live move of it is refused), so the evacuation
plan with ``allow_restart=True`` restarts it; the plan is narrowed to this test's VM
(``attrs.evolve`` on the public Plan). virsh (another client) says where the VM ends and
which disk it uses.

With ``on_fail="cold"`` a live move libvirt refuses at execution (an ivshmem device
hot-plugged after the plan) becomes such a restart.

The guest that answers the ACPI power button is the harness's tiny guest; the failure cases
use a domain with no OS: with <acpi/> removed nothing in it can be asked (InvalidState at
once), with it SeaBIOS alone ignores the button (the shutdown timeout passes)."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import vmctl
from tests.kvm.kvm_helpers import PREFIX, virsh, vmctl_uri
from vmctl import BootSource, DiskSpec, GuestOS, MoveMode, MoveOutcome, NicSpec, VMSpec

S = vmctl.PowerState


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMCTL_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture
def site(hv: vmctl.Hypervisor, other: vmctl.Hypervisor, state_dir: None) -> Iterator[vmctl.Site]:
    with vmctl.Site([hv, other]) as s:
        yield s


def _spec(hosts: Any, hint: str, **kw: Any) -> VMSpec:
    base: dict[str, Any] = {
        "name": PREFIX + "rs-" + hint,
        "vcpus": 1,
        "memory_mib": 128,
        "disks": [],
        "nics": [NicSpec(network=hosts.network)],
    }
    return VMSpec(**{**base, **kw})


def _tiny_spec(hosts: Any, tiny: Any, hint: str) -> VMSpec:
    return _spec(
        hosts,
        hint,
        memory_mib=192,
        disks=[DiskSpec(size_mib=16)],
        guest_os=GuestOS.LINUX,
        boot=BootSource(kernel=str(tiny.kernel), initrd=str(tiny.initrd), cmdline=tiny.cmdline),
    )


def _start_and_wait_address(vm: vmctl.VM) -> None:
    """Start the tiny guest and wait until it answers the power button (it has its address)."""
    vm.start(timeout=60)
    deadline = time.monotonic() + 120
    while not vm.guest_info().ip_addresses and time.monotonic() < deadline:
        time.sleep(1)
    assert vm.guest_info().ip_addresses, "the tiny guest got no address within 120 s"


def _restart_plan(site: vmctl.Site, source: vmctl.Hypervisor, vm: vmctl.VM) -> vmctl.Plan:
    host = site.host(source.hosts()[0].id)
    plan = vmctl.plan_evacuation(host, allow_restart=True)
    move = next(m for m in plan.moves if m.vm_uuid == vm.uuid)
    assert move.mode is MoveMode.RESTART
    return attrs.evolve(plan, moves=(move,), blockers=())


def _shmem(name: str) -> ET.Element:
    """An ivshmem device named ``name``: QEMU maps /dev/shm/NAME (``_delete`` removes it)."""
    shmem = ET.Element("shmem", name=name)
    ET.SubElement(shmem, "model", type="ivshmem-plain")
    ET.SubElement(shmem, "size", unit="M").text = "4"
    return shmem


def _add_shmem(hosts: Any, uuid: str) -> None:
    """Redefine the (stopped) domain with an ivshmem device of its own name."""
    import libvirt

    conn = libvirt.open(hosts.uri)
    try:
        dom = conn.lookupByUUIDString(uuid)
        root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        root.find("devices").append(_shmem(dom.name()))  # type: ignore[union-attr]
        conn.defineXML(ET.tostring(root, encoding="unicode"))
    finally:
        conn.close()


def _hotplug_shmem(hosts: Any, uuid: str) -> None:
    """Plug an ivshmem device into the running domain only (``VIR_DOMAIN_AFFECT_LIVE``)."""
    import libvirt

    conn = libvirt.open(hosts.uri)
    try:
        dom = conn.lookupByUUIDString(uuid)
        shmem = ET.tostring(_shmem(dom.name()), encoding="unicode")
        dom.attachDeviceFlags(shmem, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    finally:
        conn.close()


def _state(uri: str, uuid: str) -> str:
    """virsh's view of the domain on ``uri``: its state, or "absent"."""
    if uuid not in virsh(uri, "list", "--all", "--uuid").split():
        return "absent"
    return virsh(uri, "domstate", uuid).strip()


def _disks(uri: str, uuid: str) -> list[str]:
    lines = virsh(uri, "domblklist", uuid).splitlines()[2:]
    return [line.split()[-1] for line in lines if line.strip()]


def _delete(vm: vmctl.VM, *hvs: vmctl.Hypervisor) -> None:
    for h in hvs:
        try:
            h.vm(vm.uuid).delete(force=True, timeout=60)
        except vmctl.NotFound:
            continue
    # QEMU's ivshmem memory (memory-backend-file): outlives the domain, as shared memory does
    Path("/dev/shm", vm.name).unlink(missing_ok=True)


def test_a_restart_move_ends_running_on_the_other_libvirtd(
    site: vmctl.Site, hv: vmctl.Hypervisor, other: vmctl.Hypervisor, hosts: Any, tiny: Any
) -> None:
    vm = hv.create_vm(_tiny_spec(hosts, tiny, "tiny"))
    try:
        _add_shmem(hosts, vm.uuid)
        _start_and_wait_address(vm)
        disks = _disks(hosts.uri, vm.uuid)
        assert len(disks) == 1
        host = site.host(hv.hosts()[0].id)
        [blocked] = [b for b in vmctl.plan_evacuation(host).blockers if b.vm_uuid == vm.uuid]
        assert "libvirt does not migrate it live: shared memory device" in blocked.reason
        plan = _restart_plan(site, hv, vm)
        # libvirt itself refuses to move it live
        live = attrs.evolve(plan, moves=(attrs.evolve(plan.moves[0], mode=MoveMode.LIVE),))
        [refused] = vmctl.execute(live, retries=1).results
        assert refused.outcome is MoveOutcome.FAILED and "shmem" in (refused.error or "")
        assert _state(hosts.uri, vm.uuid) == "running"
        t0 = time.monotonic()
        report = vmctl.execute(plan)
        took = time.monotonic() - t0
        assert report.ok, str(report)
        [r] = report.results
        assert (r.outcome, r.mode) == (MoveOutcome.MOVED, MoveMode.RESTART)
        assert _state(hosts.other_uri, vm.uuid) == "running"
        assert _state(hosts.uri, vm.uuid) == "absent"  # undefined on host 1
        assert _disks(hosts.other_uri, vm.uuid) == disks  # the same file, not a copy
        # it was shut down by the guest, not powered off, before it moved
        assert other.vm(vm.uuid).info().state is S.RUNNING
        assert [r.outcome for r in vmctl.execute(plan).results] == [MoveOutcome.ALREADY]
        print(f"\nKVM site restart move of the tiny guest: {took:.1f} s")
    finally:
        _delete(vm, hv, other)


def test_a_live_move_libvirt_refuses_becomes_a_restart_with_on_fail_cold(
    site: vmctl.Site, hv: vmctl.Hypervisor, other: vmctl.Hypervisor, hosts: Any, tiny: Any
) -> None:
    vm = hv.create_vm(_tiny_spec(hosts, tiny, "hotplug"))
    try:
        _start_and_wait_address(vm)
        disks = _disks(hosts.uri, vm.uuid)
        host = site.host(hv.hosts()[0].id)
        plan = vmctl.plan_evacuation(host)
        [move] = [m for m in plan.moves if m.vm_uuid == vm.uuid]
        assert move.mode is MoveMode.LIVE
        plan = attrs.evolve(plan, moves=(move,), blockers=())
        # After the plan, a device libvirt does not migrate live is plugged into the guest.
        _hotplug_shmem(hosts, vm.uuid)
        assert "<shmem" not in virsh(hosts.uri, "dumpxml", "--inactive", vm.uuid)
        # A new plan sees it: the running guest's devices are read, not only its definition.
        [blocked] = [b for b in vmctl.plan_evacuation(host).blockers if b.vm_uuid == vm.uuid]
        assert "libvirt does not migrate it live: shared memory device" in blocked.reason
        said: list[vmctl.EvacuationProgress] = []
        report = vmctl.execute(plan, on_fail="cold", retries=0, progress=said.append)
        [r] = report.results
        assert (r.outcome, r.mode) == (MoveOutcome.MOVED, MoveMode.RESTART), str(report)
        assert report.ok, str(report)
        [fallback] = [p for p in said if p.status == "retrying"]
        assert "shmem" in fallback.message and "restarting it there instead" in fallback.message
        assert _state(hosts.other_uri, vm.uuid) == "running"
        assert _state(hosts.uri, vm.uuid) == "absent"
        assert _disks(hosts.other_uri, vm.uuid) == disks
        # restarted from its definition: the hot-plugged device did not come along
        assert "<shmem" not in virsh(hosts.other_uri, "dumpxml", vm.uuid)
    finally:
        _delete(vm, hv, other)


def _no_acpi(hosts: Any, uuid: str) -> None:
    """Redefine the (stopped) domain without <acpi/>: no guest could hear the button."""
    import libvirt

    conn = libvirt.open(hosts.uri)
    try:
        dom = conn.lookupByUUIDString(uuid)
        root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        features = root.find("features")
        acpi = features.find("acpi") if features is not None else None
        if acpi is not None and features is not None:
            features.remove(acpi)
        conn.defineXML(ET.tostring(root, encoding="unicode"))
    finally:
        conn.close()


def test_a_guest_that_cannot_be_asked_stays_running_on_its_host(
    site: vmctl.Site, hv: vmctl.Hypervisor, other: vmctl.Hypervisor, hosts: Any
) -> None:
    vm = hv.create_vm(_spec(hosts, "noacpi"))
    try:
        _no_acpi(hosts, vm.uuid)
        _add_shmem(hosts, vm.uuid)
        assert "<acpi" not in virsh(hosts.uri, "dumpxml", "--inactive", vm.uuid)
        vm.start(timeout=60)
        report = vmctl.execute(_restart_plan(site, hv, vm), retries=1)
        [r] = report.results
        assert r.outcome is MoveOutcome.FAILED and r.attempts == 1, str(report)
        error = r.error or ""
        assert "no ACPI and no connected guest agent" in error
        assert "nothing was moved" in error
        assert _state(hosts.uri, vm.uuid) == "running"
        assert _state(hosts.other_uri, vm.uuid) == "absent"
    finally:
        _delete(vm, hv, other)


def test_a_guest_that_does_not_stop_in_time_stays_running(
    hv: vmctl.Hypervisor, other: vmctl.Hypervisor, hosts: Any, state_dir: None
) -> None:
    vm = hv.create_vm(_spec(hosts, "noos"))
    quick = vmctl.Timeouts(shutdown=3)
    try:
        _add_shmem(hosts, vm.uuid)
        vm.start(timeout=60)
        with vmctl.Site(
            [vmctl_uri(hosts.uri, hosts), vmctl_uri(hosts.other_uri, hosts)], timeouts=quick
        ) as site:
            report = vmctl.execute(_restart_plan(site, hv, vm), retries=1)
        [r] = report.results
        assert r.outcome is MoveOutcome.FAILED and r.attempts == 1, str(report)
        assert "did not shut down within 3 s" in (r.error or "")
        assert "it keeps running on" in (r.error or "")
        assert _state(hosts.uri, vm.uuid) == "running"  # SeaBIOS ignored the button
        assert _state(hosts.other_uri, vm.uuid) == "absent"
    finally:
        _delete(vm, hv, other)
