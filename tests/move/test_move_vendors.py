"""vmctl.move across vendors on real simulators: sim -> Xen (xapisim) -> ESX (the vSphere
simulator) -> Xen -> sim and sim -> ESX -> sim, each hop's disks read back byte for byte
through the target (the target's own read path, not the move's digests); a fault mid-way on a
Xen and an ESX target leaves no VM and no disk behind there, and the source as it was."""

from __future__ import annotations

import os
from typing import Any

import pytest

import vmctl
from vmctl import DiskSpec, MappingKind, NicSpec, PowerState, VMSpec
from vmctl.backup import disk_digests, read_disk, write_disk
from vmctl.spi import Deadline, StorageListing

from .conftest import ESX_NETWORK, XEN_NETWORK

pytestmark = [pytest.mark.xen, pytest.mark.esx]

MIB = 1024 * 1024
SIZE = 16 * MIB
NETWORK = {"sim": "default", "xen": XEN_NETWORK, "esx": ESX_NETWORK}


def source_vm(hv: vmctl.Hypervisor, name: str = "mv") -> tuple[vmctl.VM, bytes]:
    vm = hv.create_vm(
        VMSpec(
            name=name,
            memory_mib=256,
            disks=[DiskSpec(size_mib=SIZE // MIB)],
            nics=[NicSpec(network=NETWORK[hv.driver_name])],
        )
    )
    image = bytearray(SIZE)
    disk = vm.config().disks[0].id
    for offset, data in ((1000, os.urandom(3 * MIB)), (9 * MIB + 1, os.urandom(MIB // 2))):
        write_disk(vm, disk, offset, data)
        image[offset : offset + len(data)] = data
    return vm, bytes(image)


def on_target(vm: vmctl.VM) -> bytes:
    return read_disk(vm, vm.config().disks[0].id, 0, SIZE)


def hop(vm: vmctl.VM, target: vmctl.Hypervisor, image: bytes) -> vmctl.VM:
    src = vm.hypervisor.driver_name
    dst = target.driver_name
    report = vmctl.move(vm, target, network_map={NETWORK[src]: NETWORK[dst]}, keep_source=False)
    assert report.verified and report.source_deleted, str(report)
    moved = target.vm(report.target_uuid or "")
    assert on_target(moved) == image, f"{src} -> {dst}: the bytes differ"
    assert [n.network for n in moved.config().nics] == [NETWORK[dst]]
    kinds = {n.item: n.kind for n in report.mapping}
    assert kinds["nic 0 MAC"] is MappingKind.CHANGED
    assert kinds["nic 0 network"] is MappingKind.CHANGED
    assert any("firmware" in item for item in kinds)
    assert report.guest_needs  # another vendor: drivers, tools, MACs
    assert vm.uuid not in {i.uuid for i in vm.hypervisor.list_vms()}
    return moved


def test_sim_xen_esx_xen_sim(
    sim: vmctl.Hypervisor, xen: vmctl.Hypervisor, esx: vmctl.Hypervisor
) -> None:
    vm, image = source_vm(sim)
    for target in (xen, esx, xen, sim):
        vm = hop(vm, target, image)
    assert vm.hypervisor is sim and vm.info().state is PowerState.STOPPED


def test_sim_esx_sim(sim: vmctl.Hypervisor, esx: vmctl.Hypervisor) -> None:
    """The two ordered pairs the tour above does not take: sim -> ESX and ESX -> sim."""
    vm, image = source_vm(sim, "mv-se")
    for target in (esx, sim):
        vm = hop(vm, target, image)
    assert vm.hypervisor is sim and vm.info().state is PowerState.STOPPED


def test_esx_to_xen_powered_on(esx: vmctl.Hypervisor, xen: vmctl.Hypervisor) -> None:
    vm, image = source_vm(esx, "mv-on")
    report = vmctl.move(vm, xen, network_map={ESX_NETWORK: XEN_NETWORK}, power_on=True)
    assert report.verified and report.powered_on and not report.source_deleted
    moved = xen.vm("mv-on")
    assert moved.info().state is PowerState.RUNNING
    assert on_target(moved) == image  # read through a point in time of the running VM
    assert vm.info().state is PowerState.STOPPED and on_target(vm) == image


def test_an_unmapped_network_is_refused_with_nothing_made(
    sim: vmctl.Hypervisor, xen: vmctl.Hypervisor
) -> None:
    vm, _ = source_vm(sim)
    before = {i.uuid for i in xen.list_vms()}
    with pytest.raises(vmctl.NotFound, match="network_map"):
        vmctl.move(vm, xen)  # sim's "default" network is not on the Xen pool
    assert {i.uuid for i in xen.list_vms()} == before


def volumes(hv: vmctl.Hypervisor) -> set[str]:
    driver = hv._conn.driver
    assert isinstance(driver, StorageListing)
    return {v.path for v in driver.list_volumes(deadline=Deadline.after(30))}


def _fail_writes(
    cls: type, method: str, fault: vmctl.VmctlError, mp: pytest.MonkeyPatch
) -> list[Any]:
    calls: list[Any] = []
    real = getattr(cls, method)

    def failing(self: Any, *args: Any, **kw: Any) -> Any:
        calls.append(args)
        if not kw.get("discard"):  # every write: the VM is made, its disks are not
            raise fault
        return real(self, *args, **kw)

    mp.setattr(cls, method, failing)
    return calls


def test_xen_target_unreachable_mid_way(
    sim: vmctl.Hypervisor, xen: vmctl.Hypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmctl_xen import XenDriver

    vm, image = source_vm(sim)
    before_vms, before_vdis = {i.uuid for i in xen.list_vms()}, volumes(xen)
    fault = vmctl.ConnectionError("the connection to the Xen host was reset", sent=None)
    calls = _fail_writes(XenDriver, "write_extents", fault, monkeypatch)
    with pytest.raises(vmctl.VmctlError, match="reset"):
        vmctl.move(vm, xen, network_map={"default": XEN_NETWORK}, keep_source=False)
    assert len(calls) >= 1
    assert {i.uuid for i in xen.list_vms()} == before_vms
    assert volumes(xen) == before_vdis  # no VDI of the half-made VM left in the SR
    assert on_target(vm) == image and vm.info().state is PowerState.STOPPED


def test_esx_target_full_mid_way(
    xen: vmctl.Hypervisor, esx: vmctl.Hypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmctl_esx import EsxDriver

    vm, _ = source_vm(xen)
    before_vms, before_files = {i.uuid for i in esx.list_vms()}, volumes(esx)
    fault = vmctl.InsufficientResources("the datastore datastore1 is full")
    calls = _fail_writes(EsxDriver, "write_extents", fault, monkeypatch)
    digest = disk_digests(vm)
    with pytest.raises(vmctl.InsufficientResources, match="full"):
        vmctl.move(vm, esx, network_map={XEN_NETWORK: ESX_NETWORK}, keep_source=False)
    assert len(calls) >= 1
    assert {i.uuid for i in esx.list_vms()} == before_vms
    assert volumes(esx) == before_files
    assert disk_digests(vm) == digest and vm.info().state is PowerState.STOPPED


def test_running_xen_source_final_sync_with_cbt(
    sim: vmctl.Hypervisor, xen: vmctl.Hypervisor, xen_sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running Xen VM moved with keep_source=False: copied while it runs (a VM snapshot),
    stopped, then the blocks its guest wrote meanwhile copied (CBT's list_changed_blocks
    since the first pass's checkpoint)."""
    import vmctl._move._job as job
    import vmctl.backup._backup as backup_job

    monkeypatch.setattr(backup_job, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(job, "STOP_GRACE_S", 1.0)
    vm, image = source_vm(xen, "mv-live")
    vm.start()
    vdi_uuid = (vm.config().disks[0].path or "").removeprefix("vdi:")
    db = xen_sim.db
    with db.lock:
        vdi = next(r for r, rec in db.objs["VDI"].items() if rec["uuid"] == vdi_uuid)
    phases: list[str] = []
    late = (12 * MIB + 5, b"written by the guest during the copy" * 100)

    def progress(p: vmctl.backup.BackupProgress) -> None:
        phases.append(p.phase)
        if phases.count("move") == 1:  # the guest writes while the first pass runs
            db.vdata.write(vdi, late[0], late[1])

    report = vmctl.move(
        vm, sim, network_map={XEN_NETWORK: "default"}, keep_source=False, progress=progress
    )
    assert report.verified and report.source_deleted and report.powered_on
    assert "final sync" in phases
    assert report.final_sync_bytes == 4 * MIB  # the one 4 MiB piece the guest wrote in
    expected = bytearray(image)
    expected[late[0] : late[0] + len(late[1])] = late[1]
    moved = sim.vm(report.target_uuid or "")
    moved.power_off()
    assert on_target(moved) == bytes(expected)
    assert vm.uuid not in {i.uuid for i in xen.list_vms()}
