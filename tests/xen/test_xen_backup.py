"""Backup and restore on the Xen driver against xapisim: the vendor mechanism behind it
(VM.snapshot, CBT checkpoints kept as metadata-only VDIs, the VHD export and import), as
seen from a plain XenAPI session."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from xen_helpers import GUEST, connect, name

import vmctl
from vmctl import DiskSpec, PowerState, VMSpec
from vmctl.backup import BackupKind, Consistency, read_disk, write_disk
from vmctl.spi import Deadline, ExtentData

MiB = 1024 * 1024
KEY = "vmctl-backup-checkpoint"


@pytest.fixture
def vm(hv: vmctl.Hypervisor) -> Iterator[vmctl.VM]:
    v = hv.create_vm(VMSpec(name=name("bk"), memory_mib=256, disks=[DiskSpec(size_mib=16)]))
    yield v
    with contextlib.suppress(vmctl.NotFound):
        v.delete(force=True)


def checkpoints(raw: Any, vm: vmctl.VM) -> list[dict[str, Any]]:
    """The CBT-metadata checkpoints of the VM's disk, oldest first."""
    vdi = raw.VDI.get_by_uuid(vm.config().disks[0].path.removeprefix("vdi:"))
    recs = [raw.VDI.get_record(s) for s in raw.VDI.get_snapshots(vdi)]
    found = [r for r in recs if KEY in r["other_config"]]
    return sorted(found, key=lambda r: int(r["other_config"][KEY].split()[0]))


def test_backups_leave_only_cbt_metadata(
    hv: vmctl.Hypervisor, raw: Any, vm: vmctl.VM, tmp_path: Path
) -> None:
    write_disk(vm, "xvda", 0, b"a" * (3 * MiB))
    write_disk(vm, "xvda", 10 * MiB + 3, b"unaligned")
    repo = vmctl.open_repo(str(tmp_path / "repo"), chunk_size=MiB)
    first = vm.backup(repo)
    assert first.kind is BackupKind.FULL and first.consistency is Consistency.STOPPED
    assert first.read_bytes == 6 * MiB  # the three allocated 2 MiB VHD blocks
    assert vm.snapshots() == []  # the point in time's snapshot VM is gone
    (cp,) = checkpoints(raw, vm)
    assert cp["type"] == "cbt_metadata" and cp["cbt_enabled"] is True
    manifest = json.loads(
        (tmp_path / "repo" / "backups" / vm.uuid / f"{first.id}.json").read_text()
    )
    assert manifest["disks"][0]["checkpoint"] == cp["uuid"]
    write_disk(vm, "xvda", 5 * MiB, b"b" * 100)
    second = vm.backup(repo)
    assert second.kind is BackupKind.INCREMENTAL and second.read_bytes == MiB
    assert read_disk(vm, "xvda", 10 * MiB, 12) == b"\0\0\0unaligned"
    for _ in range(3):
        vm.backup(repo)
    kept = checkpoints(raw, vm)
    assert len(kept) == 3  # older checkpoints are destroyed
    copy = repo.restore(second.id, hv, name=name("bk-copy"))
    try:
        want = hashlib.sha256(read_disk(vm, "xvda", 0, 16 * MiB)).hexdigest()
        assert hashlib.sha256(read_disk(copy, "xvda", 0, 16 * MiB)).hexdigest() == want
    finally:
        copy.delete()
    vdi = raw.VDI.get_by_uuid(vm.config().disks[0].path.removeprefix("vdi:"))
    vm.delete()
    # deleting the VM takes its disk's checkpoints along
    assert not [r for r in raw.VDI.get_all_records().values() if r["snapshot_of"] == vdi]


def test_reset_tracking_means_a_whole_read(raw: Any, vm: vmctl.VM, tmp_path: Path) -> None:
    write_disk(vm, "xvda", 0, b"x" * MiB)
    repo = vmctl.open_repo(str(tmp_path / "repo"), chunk_size=MiB)
    vm.backup(repo)
    vdi = raw.VDI.get_by_uuid(vm.config().disks[0].path.removeprefix("vdi:"))
    raw.VDI.disable_cbt(vdi)  # the CBT chain ends: the checkpoint relates to nothing new
    again = vm.backup(repo)
    # every disk read whole: a full backup, saying why
    assert again.kind is BackupKind.FULL and "read whole" in again.reason
    assert again.disks[0].note and again.read_bytes == 2 * MiB  # the allocated block
    assert raw.VDI.get_cbt_enabled(vdi) is True  # re-enabled by the backup


def test_running_vm_is_crash_consistent_and_not_writable(
    hv: vmctl.Hypervisor, tmp_path: Path
) -> None:
    v = hv.create_vm(
        VMSpec(name=name("bk-run"), memory_mib=256, disks=[DiskSpec(size_mib=16)], boot=GUEST)
    )
    try:
        v.start()
        info = v.backup(vmctl.open_repo(str(tmp_path / "repo"), chunk_size=MiB))
        assert info.consistency is Consistency.CRASH
        with pytest.raises(vmctl.InvalidState):
            write_disk(v, "xvda", 0, b"no")
        driver = hv._conn.driver  # the SPI method itself checks the state too
        with pytest.raises(vmctl.InvalidState):
            driver.write_extents(
                v.uuid, "xvda", [ExtentData(0, 2, b"no")], deadline=Deadline.after(30)
            )
        with pytest.raises(vmctl.NotSupported):
            v.backup(vmctl.open_repo(str(tmp_path / "repo")), quiesce=True)
        assert v.info().state is PowerState.RUNNING
    finally:
        v.delete(force=True)


def test_expired_session_is_renewed_for_a_transfer(sim: Any, raw: Any, vm: vmctl.VM) -> None:
    write_disk(vm, "xvda", 0, b"before")
    vdi = raw.VDI.get_by_uuid(vm.config().disks[0].path.removeprefix("vdi:"))
    with connect(sim) as hv:
        driver = hv._conn.driver
        old = driver._c.ref
        sim.db.logout(old)  # the host forgets the session (as after an idle timeout)
        # the HTTP handler answers 401; the driver logs in again once and repeats
        conn, resp = driver._transfer(
            "export", "GET", "/export_raw_vdi", {"vdi": vdi}, Deadline.after(30)
        )
        try:
            assert resp.read(6) == b"before"
        finally:
            conn.close()
        assert driver._c.ref != old


def test_a_killed_backup_is_cleared_by_the_next(
    hv: vmctl.Hypervisor, raw: Any, vm: vmctl.VM, tmp_path: Path
) -> None:
    driver = hv._conn.driver
    driver.open_point_in_time(vm.uuid, quiesce=False, deadline=Deadline.after(30))
    (left,) = vm.snapshots()  # a point in time never closed
    snap = raw.VM.get_by_uuid(left.id)
    owner = raw.VM.get_other_config(snap)["vmctl-backup-owner"]
    assert owner == f"{socket.gethostname()} {os.getpid()}"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    raw.VM.remove_from_other_config(snap, "vmctl-backup-owner")
    raw.VM.add_to_other_config(snap, "vmctl-backup-owner", f"{socket.gethostname()} {gone}")
    vm.backup(vmctl.open_repo(str(tmp_path / "repo")))
    assert vm.snapshots() == []
    vdi = raw.VDI.get_by_uuid(vm.config().disks[0].path.removeprefix("vdi:"))
    left_vdis = [r for r in raw.VDI.get_all_records().values() if r["snapshot_of"] == vdi]
    assert [r["type"] for r in left_vdis] == ["cbt_metadata"]  # this backup's checkpoint


def test_write_past_the_end_is_refused(hv: vmctl.Hypervisor, vm: vmctl.VM) -> None:
    driver = hv._conn.driver
    with pytest.raises(vmctl.ValidationError):
        driver.write_extents(
            vm.uuid, "xvda", [ExtentData(16 * MiB - 1, 2, b"no")], deadline=Deadline.after(30)
        )
    with pytest.raises(vmctl.NotFound):
        driver.write_extents(
            vm.uuid, "xvdz", [ExtentData(0, 2, b"no")], deadline=Deadline.after(30)
        )
