"""Incremental backups on the vSphere simulator through changed block tracking: the launcher's
``QueryChangedDiskAreas`` (tests/hosts/vcsim/cbt.go) checked as the vSphere API reference
describes it with an independent client (pyvmomi, no vmctl code), and the esx driver's
incrementals: only the changed chunks read and stored, both generations restored byte for
byte, whole-disk reads where the host's changeId no longer suffices (tracking turned off, an
older parent after a restore into the VM)."""

from __future__ import annotations

import re
import secrets
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from pyVim.connect import Connect, Disconnect
from pyVmomi import vim, vmodl

import vmctl
from tests.hosts.esx import VcsimServer
from vmctl.backup import BackupKind, read_disk, write_disk
from vmctl_esx._backup import KEEP_WRITTEN

from .conftest import Admin, Target
from .test_backup import MIB, flat_file, make, snapshots

BLOCK = 64 * 1024  # the launcher's tracking block
CHANGE_ID = re.compile(r"^52( [0-9a-f]{2}){7}-[0-9a-f]{2}( [0-9a-f]{2}){7}/[0-9]+$")


def repo() -> vmctl.backup.Repository:
    return vmctl.open_repo(f"memory://esx-incr-{secrets.token_hex(4)}", chunk_size=MIB)


def dc_of(srv: VcsimServer) -> str:
    return "ha-datacenter" if srv.mode == "esx" else "DC0"


def flats(srv: VcsimServer, admin: Admin, vm: vmctl.VM) -> list[bytes]:
    return [flat_file(srv, admin, dc_of(srv), str(d.path)) for d in vm.config().disks]


# -- the launcher's QueryChangedDiskAreas, through pyvmomi only ------------------------------


def wait(task: Any) -> Any:
    """The task's result (tasks of the simulator end inside the call; the property read
    avoids pyVim's WaitForTask, which cannot type a snapshot task's entity)."""
    for _ in range(500):
        info = task.info
        if info.state == "success":
            return info.result
        if info.state == "error":
            raise info.error
        time.sleep(0.01)
    raise AssertionError("the task did not end")


def snap(ref: Any, name: str) -> Any:
    return wait(ref.CreateSnapshot_Task(name=name, memory=False, quiesce=False))


def disk_of(config: Any) -> Any:
    return next(d for d in config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk))


def areas(
    ref: Any, snapshot: Any, key: int, change_id: str, size: int
) -> tuple[list[tuple[int, int]], int]:
    """Every (start, length) area over the disk, asking from startOffset + length each time
    as the reference says; and how many answers it took."""
    found: list[tuple[int, int]] = []
    offset, calls = 0, 0
    while offset < size:
        info = ref.QueryChangedDiskAreas(
            snapshot=snapshot, deviceKey=key, startOffset=offset, changeId=change_id
        )
        calls += 1
        assert info.startOffset == offset and info.length > 0
        for a in info.changedArea or ():
            assert offset <= a.start and a.start + a.length <= offset + info.length
            found.append((a.start, a.length))
        offset += info.length
    return found, calls


def test_query_changed_disk_areas(esx: vmctl.Hypervisor, esx_admin: Admin) -> None:
    size = 72 * MIB
    vm = make(esx, sizes=(72,))
    disk_id = vm.config().disks[0].id
    write_disk(vm, disk_id, 0, b"A" * MIB)
    write_disk(vm, disk_id, 10 * MIB + 5, b"B" * 100)
    ref = esx_admin.vm(vm.uuid)
    assert ref.capability.changeTrackingSupported is True
    key = disk_of(ref.config).key

    # a snapshot taken while tracking is off has no changeId, and no changes to list
    s0 = snap(ref, "untracked")
    assert not disk_of(s0.config).backing.changeId
    with pytest.raises(vim.fault.FileFault):
        ref.QueryChangedDiskAreas(snapshot=s0, deviceKey=key, startOffset=0, changeId="*")
    s0.RemoveSnapshot_Task(removeChildren=False)

    wait(ref.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=True)))
    assert ref.config.changeTrackingEnabled is True  # shown at once, active at the stun
    s1 = snap(ref, "first")
    id1 = disk_of(s1.config).backing.changeId
    assert CHANGE_ID.match(id1) and id1.endswith("/1"), id1
    assert not disk_of(ref.config).backing.changeId  # the snapshot's, not the VM's devices
    # "*": the allocated areas, in 64 KiB blocks
    assert areas(ref, s1, key, "*", size) == ([(0, MIB), (10 * MIB, BLOCK)], 1)
    assert areas(ref, s1, key, id1, size) == ([], 1)
    s1.RemoveSnapshot_Task(removeChildren=False)

    # every other block of 70 MiB: 560 areas, more than one answer holds
    image = bytearray(70 * MIB)
    for block in range(0, len(image) // BLOCK, 2):
        image[block * BLOCK] = 1
    write_disk(vm, disk_id, 0, bytes(image))
    s2 = snap(ref, "second")
    id2 = disk_of(s2.config).backing.changeId
    assert id2 == id1[: -len("1")] + "2"
    changed, calls = areas(ref, s2, key, id1, size)
    # blocks 0-15 held "A"s (now a 1 or nothing), the even blocks gained a 1 (block 160
    # also lost the "B"s), the odd blocks past 16 MiB stayed zero; adjacent blocks merge
    expect = [(0, 17 * BLOCK)] + [(b * BLOCK, BLOCK) for b in range(18, 1120, 2)]
    assert changed == expect and calls == 2, (len(changed), calls)
    assert areas(ref, s2, key, id2, size) == ([], 1)

    # the faults the reference lists
    epoch = id2.rpartition("/")[0]
    for change_id, fault in (
        ("garbage", vmodl.fault.InvalidArgument),
        (f"{epoch}/9", vmodl.fault.InvalidArgument),  # later than the snapshot's
        ("52 00 00 00 00 00 00 00-00 00 00 00 00 00 00 00/1", vim.fault.FileFault),
    ):
        with pytest.raises(fault):
            ref.QueryChangedDiskAreas(snapshot=s2, deviceKey=key, startOffset=0, changeId=change_id)
    with pytest.raises(vmodl.fault.InvalidArgument) as bad_key:
        ref.QueryChangedDiskAreas(snapshot=s2, deviceKey=key + 1, startOffset=0, changeId="*")
    assert bad_key.value.invalidProperty == "deviceKey"
    with pytest.raises(vmodl.fault.InvalidArgument) as bad_offset:
        ref.QueryChangedDiskAreas(snapshot=s2, deviceKey=key, startOffset=size, changeId="*")
    assert bad_offset.value.invalidProperty == "startOffset"
    s2.RemoveSnapshot_Task(removeChildren=False)
    with pytest.raises(vim.fault.NotFound):
        ref.QueryChangedDiskAreas(snapshot=s2, deviceKey=key, startOffset=0, changeId="*")

    # no snapshot: the current disk of a powered-off VM
    write_disk(vm, disk_id, 20 * MIB + 1, b"C")
    assert areas(ref, None, key, id2, size) == ([(20 * MIB, BLOCK)], 1)

    # turned off (effective at the next stun): every changeId is forgotten
    wait(ref.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=False)))
    s3 = snap(ref, "off")
    assert not disk_of(s3.config).backing.changeId
    with pytest.raises(vim.fault.FileFault):
        ref.QueryChangedDiskAreas(snapshot=s3, deviceKey=key, startOffset=0, changeId=id2)
    s3.RemoveSnapshot_Task(removeChildren=False)
    assert snapshots(esx_admin, vm.uuid) == []


def test_query_needs_a_session(esx_sim: VcsimServer, esx_admin: Admin) -> None:
    """The routed method is still the simulator's: without a session, NotAuthenticated."""
    ctx = ssl.create_default_context(cafile=str(esx_sim.cafile))
    si = Connect(
        host=esx_sim.host,
        port=esx_sim.port,
        user=esx_sim.username,
        pwd=esx_sim.password,
        sslContext=ctx,
    )
    vm_ref = si.RetrieveContent().rootFolder.childEntity[0].vmFolder.childEntity[0]
    Disconnect(si)
    with pytest.raises(vim.fault.NotAuthenticated):
        vm_ref.QueryChangedDiskAreas(snapshot=None, deviceKey=2000, startOffset=0, changeId="*")


# -- the driver's incrementals ---------------------------------------------------------------


def test_incremental_reads_and_stores_only_changed_chunks(
    hv: vmctl.Hypervisor, target: Target
) -> None:
    srv, admin, _ = target
    vm = make(hv, sizes=(8, 3))
    big, small = (d.id for d in vm.config().disks)
    write_disk(vm, big, 0, bytes(range(256)) * 8192)  # chunks 0-1
    write_disk(vm, small, MIB + 3, b"small" * 1000)  # chunk 1
    r = repo()
    first = vm.backup(r)
    assert first.kind is BackupKind.FULL
    assert first.read_bytes == 3 * MIB  # only the allocated chunks ("*")
    gen1 = flats(srv, admin, vm)
    for d in r.manifest(first.id).disks:
        assert d.checkpoint and CHANGE_ID.match(d.checkpoint), d.checkpoint
    assert admin.vm(vm.uuid).config.changeTrackingEnabled is True

    write_disk(vm, big, 5 * MIB + 100, b"new" * 1000)  # chunk 5
    write_disk(vm, small, 7, b"x")  # chunk 0
    second = vm.backup(r)
    assert second.kind is BackupKind.INCREMENTAL, second.reason
    assert second.parent == first.id
    assert second.read_bytes == 2 * MIB
    assert [(d.read_chunks, d.new_chunks) for d in second.disks] == [(1, 1), (1, 1)]
    gen2 = flats(srv, admin, vm)
    assert gen1 != gen2
    for info, want in ((first, gen1), (second, gen2)):
        copy = r.restore(info.id, hv, name=f"{vm.name}-{info.kind.value}")
        assert flats(srv, admin, copy) == want
    assert all(r.verify(b.id).ok for b in (first, second))
    assert snapshots(admin, vm.uuid) == []


def test_tracking_turned_off_reads_whole_disks(esx: vmctl.Hypervisor, esx_admin: Admin) -> None:
    vm = make(esx, sizes=(4,))
    disk_id = vm.config().disks[0].id
    write_disk(vm, disk_id, 0, b"a" * MIB)
    r = repo()
    first = vm.backup(r)
    ref = esx_admin.vm(vm.uuid)
    wait(ref.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=False)))
    s = snap(ref, "stun")  # makes it take effect
    s.RemoveSnapshot_Task(removeChildren=False)
    write_disk(vm, disk_id, 2 * MIB, b"b" * 10)
    second = vm.backup(r)  # turns tracking on again: a new epoch, the old changeId unknown
    assert second.kind is BackupKind.FULL and "FileFault" in second.reason, second.reason
    assert second.read_bytes == 2 * MIB  # the allocated chunks, read again
    third = vm.backup(r)
    assert third.kind is BackupKind.INCREMENTAL and third.read_bytes == 0
    assert [b.id for b in r.backups(vm)] == [first.id, second.id, third.id]


def test_restore_into_the_vm_is_seen_by_the_next_incrementals(
    esx: vmctl.Hypervisor, esx_sim: VcsimServer, esx_admin: Admin
) -> None:
    """A restore writes around tracking: the driver records what it wrote, tagged with the
    next changeId, so the next incrementals read it, from this repository and from another
    whose parent is older; once more tags than it keeps follow, an older parent reads
    whole."""
    vm = make(esx, sizes=(6,))
    disk_id = vm.config().disks[0].id
    write_disk(vm, disk_id, 0, b"1" * (2 * MIB))
    r, other = repo(), repo()
    first = vm.backup(r)
    gen1 = flats(esx_sim, esx_admin, vm)
    vm.backup(other)  # its changeId predates the restore below
    write_disk(vm, disk_id, 4 * MIB, b"2" * MIB)
    second = vm.backup(r)
    assert second.kind is BackupKind.INCREMENTAL and second.read_bytes == MIB
    r.restore(first.id, esx, replace=True)
    assert flats(esx_sim, esx_admin, vm) == gen1
    extra = {o.key: o.value for o in esx_admin.vm(vm.uuid).config.extraConfig}
    assert extra[f"vmctl.cbt.{disk_id}.pending"]  # what the restore wrote
    third = vm.backup(r)
    assert third.kind is BackupKind.INCREMENTAL, third.reason
    copy = r.restore(third.id, esx, name=f"{vm.name}-3")
    assert flats(esx_sim, esx_admin, copy) == gen1
    later = vm.backup(other)  # parent: the backup before the writes and the restore
    assert later.kind is BackupKind.INCREMENTAL, later.reason
    copy = other.restore(later.id, esx, name=f"{vm.name}-o")
    assert flats(esx_sim, esx_admin, copy) == gen1
    for i in range(KEEP_WRITTEN + 1):  # each write seen by a point in time of its own
        write_disk(vm, disk_id, i * 4096, b"w")
        assert read_disk(vm, disk_id, i * 4096, 1) == b"w"
    gen3 = flats(esx_sim, esx_admin, vm)
    last = vm.backup(other)  # parent `later`: older than the floor now
    assert last.kind is BackupKind.FULL, last.reason
    assert "written around" in last.reason, last.reason
    copy = other.restore(last.id, esx, name=f"{vm.name}-l")
    assert flats(esx_sim, esx_admin, copy) == gen3


def extent_path(srv: VcsimServer, admin: Admin, descriptor: str) -> Path:
    """The local file of a flat disk's extent in the simulator's datastore: where a guest's
    writes would land (the simulator runs none, so the test writes there itself)."""
    datastore, _, path = descriptor[1:].partition("] ")
    ds = next(
        d
        for d in admin.content.viewManager.CreateContainerView(
            admin.content.rootFolder, [vim.Datastore], True
        ).view
        if d.name == datastore
    )
    return Path(ds.info.url) / (path[: -len(".vmdk")] + "-flat.vmdk")


def test_move_of_a_running_vm_syncs_the_changed_blocks(
    esx: vmctl.Hypervisor, esx_sim: VcsimServer, esx_admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vmctl.move of a running VM with keep_source=False copies it while it runs, stops it,
    then copies the blocks written meanwhile: the final sync asks QueryChangedDiskAreas since
    the first pass's changeId (the same ChangedBlocks hook as backups)."""
    import vmctl._move._job as job
    import vmctl.backup._backup as backup_job
    import vmctl_sim

    monkeypatch.setattr(backup_job, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(job, "STOP_GRACE_S", 1.0)
    vm = make(esx, sizes=(16,))
    disk = vm.config().disks[0]
    image = bytearray(16 * MIB)
    image[1000 : 1000 + 3 * MIB] = secrets.token_bytes(3 * MIB)
    write_disk(vm, disk.id, 1000, bytes(image[1000 : 1000 + 3 * MIB]))
    vm.start()
    flat = extent_path(esx_sim, esx_admin, str(disk.path))
    late = (12 * MIB + 5, b"written by the guest during the copy" * 100)
    phases: list[str] = []

    def progress(p: vmctl.backup.BackupProgress) -> None:
        phases.append(p.phase)
        if phases.count("move") == 1:  # the "guest" writes while the first pass runs
            with flat.open("r+b") as f:
                f.seek(late[0])
                f.write(late[1])

    vmctl_sim.reset_sites()
    try:
        with vmctl.connect("sim://esx-move-site") as sim:
            report = vmctl.move(
                vm,
                sim,
                keep_source=False,
                progress=progress,
            )
            assert report.verified and report.source_deleted and report.powered_on
            assert "final sync" in phases
            assert report.final_sync_bytes == 4 * MIB  # the one 4 MiB piece written to
            image[late[0] : late[0] + len(late[1])] = late[1]
            moved = sim.vm(report.target_uuid or "")
            moved.power_off()
            assert read_disk(moved, moved.config().disks[0].id, 0, 16 * MIB) == bytes(image)
    finally:
        vmctl_sim.reset_sites()


def test_recorded_extents_round_trip_and_coarsen() -> None:
    """The extraConfig encoding of extents written around tracking: what is parsed back is
    what was written, or more (never less), and a changeId compares within its epoch only."""
    from vmctl.spi import Extent
    from vmctl_esx._backup import (
        MAX_PENDING,
        _format_extents,
        _older,
        _parse_extents,
        _parse_written,
    )

    few = [Extent(0, 10), Extent(4096, 1)]
    assert _parse_extents(_format_extents(few)) == few
    many = [Extent(i * 2 * BLOCK, BLOCK) for i in range(MAX_PENDING + 1)]
    assert _parse_extents(_format_extents(many)) == [Extent(0, many[-1].end)]
    epoch = "52 00 11 22 33 44 55 66-77 88 99 aa bb cc dd ee"
    text = f"{epoch}/3={_format_extents(few)};{epoch}/12=5+5"
    assert _parse_written(text) == [(f"{epoch}/3", few), (f"{epoch}/12", [Extent(5, 5)])]
    assert _older(f"{epoch}/3", f"{epoch}/12") and not _older(f"{epoch}/12", f"{epoch}/3")
    assert not _older(f"{epoch}/3", "52 ff/12")  # another epoch: the host refuses it itself
