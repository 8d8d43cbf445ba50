"""StorageListing on Hyper-V: the image files of disk_dir, from one root/cimv2 CIM_DataFile
WQL enumeration, with the paths ``config().disks`` gives; checked against hypervsim."""

from __future__ import annotations

import pytest
from hyperv_helpers import SWITCH, name
from vmctl_hyperv._storage import datafile_query

import vmctl
from vmctl import DiskSpec, NicSpec, VMSpec
from vmctl.spi import Deadline, StorageListing, Volume

DISK_DIR = "C:\\ProgramData\\Microsoft\\Windows\\Virtual Hard Disks"


def volumes(hv: vmctl.Hypervisor) -> dict[str, Volume]:
    driver = hv._driver
    assert isinstance(driver, StorageListing)
    return {v.path: v for v in driver.list_volumes(deadline=Deadline.after(30))}


def test_disks_are_listed_with_their_config_paths(hv: vmctl.Hypervisor) -> None:
    # an upper-case VM name: the file names vmctl makes are lower case, as WMI reports them
    vm = hv.create_vm(
        VMSpec(
            name=name("STOR").upper(),
            memory_mib=256,
            disks=[DiskSpec(size_mib=64), DiskSpec(size_mib=128)],
            nics=[NicSpec(network=SWITCH)],
        )
    )
    try:
        paths = [d.path for d in vm.config().disks]
        before = hv._driver.round_trips
        listed = volumes(hv)
        assert hv._driver.round_trips - before == 1  # one optimized enumeration
        for path in paths:
            assert path in listed, (path, sorted(listed))
            v = listed[path]
            assert v.kind == "disk" and v.pool == DISK_DIR and v.size_mib == 4  # empty dynamic
            assert path == f"{DISK_DIR}\\{v.name}"
        # the seed VMs' disks are in the same directory; the ISO and images elsewhere are not
        assert f"{DISK_DIR}\\vm-01.vhdx" in listed
        assert all(p.startswith(DISK_DIR + "\\") for p in listed)
        assert all(p.endswith(".vhdx") for p in listed)
        added = vm.add_disk(DiskSpec(size_mib=16))
        assert added.path in volumes(hv)
        vm.remove_disk(added.id)
        assert added.path not in volumes(hv)
    finally:
        vm.delete()
    left = set(paths) & set(volumes(hv))
    assert not left, left


def test_a_failed_create_leaves_no_file(hv: vmctl.Hypervisor) -> None:
    before = set(volumes(hv))
    spec = VMSpec(
        name=name("stor-bad"),
        memory_mib=256,
        disks=[DiskSpec(size_mib=16)],
        nics=[NicSpec(network="no-such-switch")],
    )
    with pytest.raises(vmctl.NotFound):
        hv.create_vm(spec)
    assert set(volumes(hv)) == before


def test_the_query_and_what_cannot_be_listed(hv: vmctl.Hypervisor) -> None:
    # Drive with its colon, Path with leading and trailing backslashes, each one doubled in
    # the WQL string (Win32/cim-datafile); a quote escaped with a backslash
    q = datafile_query("D:\\VMs\\Bob's Disks\\")
    assert "Drive = 'D:' AND Path = '\\\\VMs\\\\Bob\\'s Disks\\\\'" in q
    assert "Extension = 'vhdx'" in q and "Extension = 'avhdx'" in q
    assert "Path = '\\\\'" in datafile_query("E:")
    # CIM_DataFile lists local fixed disks only: a share is refused before any call
    driver = hv._driver
    saved = driver.disk_dir
    driver.disk_dir = "\\\\filer\\vms"
    try:
        before = driver.round_trips
        with pytest.raises(vmctl.NotSupported, match="local fixed disks"):
            driver.list_volumes(deadline=Deadline.after(5))
        assert driver.round_trips == before
    finally:
        driver.disk_dir = saved


def test_disk_files_follow_their_last_holder(hv: vmctl.Hypervisor) -> None:
    """ApplySnapshot detaches a disk added after the checkpoint but keeps its file: vmctl
    deletes it then, unless a checkpoint still holds it; a disk removed while a checkpoint
    holds it stays until that checkpoint (or the VM) goes."""
    vm = hv.create_vm(VMSpec(name=name("stor-snap"), memory_mib=256, disks=[DiskSpec(size_mib=16)]))
    try:
        vm.snapshot("base")
        late = vm.add_disk(DiskSpec(size_mib=16))
        assert late.path in volumes(hv)
        vm.revert("base")
        assert late.id not in {d.id for d in vm.config().disks}
        assert late.path not in volumes(hv)  # no VM or checkpoint holds it: deleted
        kept = vm.add_disk(DiskSpec(size_mib=16))
        vm.snapshot("with-kept")
        vm.remove_disk(kept.id)
        assert kept.path in volumes(hv)  # the checkpoint "with-kept" still holds it
        vm.revert("with-kept")
        assert kept.id in {d.id for d in vm.config().disks}  # and it is whole again
        vm.revert("base")
        assert kept.path in volumes(hv)  # still held by "with-kept"
        vm.delete_snapshot("with-kept")  # its last holder: the file goes with it
        assert kept.path not in volumes(hv)
    finally:
        paths = [d.path for d in vm.config().disks]
        vm.delete()
    left = (set(paths) | {kept.path}) & set(volumes(hv))
    assert not left, left
