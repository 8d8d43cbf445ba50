"""Backup and restore on the vSphere simulator: the snapshot, the disk files read and written
through the datastore's HTTP access (/folder), checked with an independent HTTP client; the
snapshot removed in every case; the refusals (quiesce without VMware Tools, writes into a
running VM or one with snapshots)."""

from __future__ import annotations

import hashlib
import http.client
import secrets
import ssl
import time
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from pyVmomi import vim

import vmctl
from tests.hosts.esx import VcsimServer, running_simulator
from vmctl import Capability as C
from vmctl import PowerState as S
from vmctl.backup import BackupKind, Consistency, read_disk, write_disk
from vmctl.spi import Deadline, ExtentData

from .conftest import Admin, Target

MIB = 1024 * 1024


def make(hv: vmctl.Hypervisor, name: str = "", sizes: tuple[int, ...] = (8,)) -> vmctl.VM:
    spec = vmctl.VMSpec(
        name=name or f"bk-{secrets.token_hex(3)}",
        disks=[vmctl.DiskSpec(size_mib=s) for s in sizes],
    )
    return hv.create_vm(spec)


def flat_file(srv: VcsimServer, admin: Admin, dc_path: str, descriptor: str) -> bytes:
    """The whole extent of a flat disk, read with a plain HTTP client (not the driver's):
    ``[ds] dir/NAME.vmdk`` keeps its data in ``dir/NAME-flat.vmdk``."""
    datastore, _, path = descriptor[1:].partition("] ")
    flat = path[: -len(".vmdk")] + "-flat.vmdk"
    url = f"/folder/{quote(flat)}?" + urlencode({"dcPath": dc_path, "dsName": datastore})
    conn = http.client.HTTPSConnection(
        srv.host, srv.port, context=ssl.create_default_context(cafile=str(srv.cafile))
    )
    try:
        cookie = str(admin.si._stub.cookie).split(";")[0]
        conn.request("GET", url, headers={"Cookie": cookie})
        response = conn.getresponse()
        assert response.status == 200, (response.status, url)
        return response.read()
    finally:
        conn.close()


def snapshots(admin: Admin, uuid: str) -> list[str]:
    props = admin.props(admin.vm(uuid), vim.VirtualMachine, ["snapshot"])
    info = props.get("snapshot")
    out: list[str] = []

    def walk(trees: Any) -> None:
        for t in trees or ():
            out.append(str(t.name))
            walk(t.childSnapshotList)

    walk(info.rootSnapshotList if info is not None else ())
    return out


def test_capabilities(hv: vmctl.Hypervisor) -> None:
    caps = hv.capabilities
    assert {C.BACKUP, C.BACKUP_QUIESCE, C.BACKUP_INCREMENTAL, C.RESTORE} <= caps


def test_written_bytes_are_in_the_flat_extent(hv: vmctl.Hypervisor, target: Target) -> None:
    """write_disk uploads into NAME-flat.vmdk at the right offsets (an independent GET sees
    them); a VM name with a space exercises the URL's quoting; read_disk reads them back."""
    srv, admin, _ = target
    vm = make(hv, f"bk with space {secrets.token_hex(2)}", sizes=(4, 2))
    second = vm.config().disks[1]
    write_disk(vm, second.id, 1000, b"abc" * 700)
    write_disk(vm, second.id, 2 * MIB - 5, b"12345")
    dc = "ha-datacenter" if srv.mode == "esx" else "DC0"
    raw = flat_file(srv, admin, dc, str(second.path))
    want = bytearray(2 * MIB)
    want[1000:3100] = b"abc" * 700
    want[-5:] = b"12345"
    assert raw == bytes(want)
    assert read_disk(vm, second.id, 999, 2102) == b"\0" + b"abc" * 700 + b"\0"
    first = vm.config().disks[0]
    assert flat_file(srv, admin, dc, str(first.path)) == bytes(4 * MIB)  # untouched
    assert snapshots(admin, vm.uuid) == []  # read_disk's snapshot is gone


def test_backup_restore_and_snapshot_removed(hv: vmctl.Hypervisor, target: Target) -> None:
    srv, admin, _ = target
    vm = make(hv, sizes=(8, 3))
    data = hashlib.sha256(b"esx").digest() * 4096  # 128 KiB
    for d in vm.config().disks:
        write_disk(vm, d.id, MIB + 17, data)
    repo = vmctl.open_repo(f"memory://esx-{secrets.token_hex(4)}", chunk_size=MIB)
    info = vm.backup(repo)
    assert info.kind is BackupKind.FULL and "no earlier backup" in info.reason
    assert info.consistency is Consistency.STOPPED
    # QueryChangedDiskAreas "*": only the chunk holding data, of each disk
    assert info.read_bytes == 2 * MIB
    assert snapshots(admin, vm.uuid) == []
    restored = repo.restore(info.id, hv, name=f"{vm.name}-r")
    assert restored.info().state is S.STOPPED
    dc = "ha-datacenter" if srv.mode == "esx" else "DC0"
    for src, dst in zip(vm.config().disks, restored.config().disks, strict=True):
        assert dst.size_mib == src.size_mib
        assert flat_file(srv, admin, dc, str(dst.path)) == flat_file(srv, admin, dc, str(src.path))
    assert snapshots(admin, restored.uuid) == []
    assert repo.verify(info.id).ok


def test_running_vm_is_crash_consistent_and_quiesce_needs_tools(
    esx: vmctl.Hypervisor, esx_admin: Admin
) -> None:
    vm = make(esx)
    write_disk(vm, "scsi0:0", 0, b"boot")
    vm.start()
    repo = vmctl.open_repo(f"memory://esx-{secrets.token_hex(4)}", chunk_size=MIB)
    assert vm.backup(repo).consistency is Consistency.CRASH
    with pytest.raises(vmctl.InvalidState, match="VMware Tools are not running"):
        vm.backup(repo, quiesce=True)
    assert snapshots(esx_admin, vm.uuid) == []  # refused before any snapshot
    esx_admin.set_props(vm.uuid, guest__toolsRunningStatus="guestToolsRunning")
    quiet = vm.backup(repo, quiesce=True)
    assert quiet.consistency is Consistency.QUIESCED
    auto = vm.backup(repo)  # quiesce=None: quiesced when the host can
    assert auto.consistency is Consistency.QUIESCED
    assert snapshots(esx_admin, vm.uuid) == []
    with pytest.raises(vmctl.InvalidState):
        write_disk(vm, "scsi0:0", 0, b"x")
    vm.power_off()


def test_failed_backup_removes_its_snapshot(esx: vmctl.Hypervisor, esx_admin: Admin) -> None:
    vm = make(esx)
    repo = vmctl.open_repo(f"memory://esx-{secrets.token_hex(4)}", chunk_size=MIB)

    class Stop(Exception):
        pass

    def stop(progress: object) -> None:
        raise Stop

    with pytest.raises(Stop):
        vm.backup(repo, progress=stop)
    assert snapshots(esx_admin, vm.uuid) == []
    assert repo.backups(vm) == []


def test_driver_refusals(esx: vmctl.Hypervisor, esx_admin: Admin) -> None:
    """Straight to the driver (the core checks these too): a running VM, a VM with
    snapshots, an extent past the end of the disk; a closed point in time."""
    vm = make(esx)
    driver: Any = esx._conn.driver
    deadline = Deadline.after(30)
    with pytest.raises(vmctl.ValidationError):
        driver.write_extents(vm.uuid, "scsi0:0", [ExtentData(8 * MIB - 1, 2)], deadline=deadline)
    with pytest.raises(vmctl.NotFound):
        driver.write_extents(vm.uuid, "scsi0:9", [ExtentData(0, 1)], deadline=deadline)
    snap = vm.snapshot("keep")
    with pytest.raises(vmctl.InvalidState, match="snapshots"):
        driver.write_extents(vm.uuid, "scsi0:0", [ExtentData(0, 1)], deadline=deadline)
    vm.delete_snapshot(snap)
    vm.start()
    with pytest.raises(vmctl.InvalidState, match="poweredOn"):
        driver.write_extents(vm.uuid, "scsi0:0", [ExtentData(0, 1)], deadline=deadline)
    pit = driver.open_point_in_time(vm.uuid, quiesce=False, deadline=deadline)
    assert [d.id for d in pit.disks] == ["scsi0:0"] and pit.consistency is Consistency.CRASH
    assert snapshots(esx_admin, vm.uuid) == [snapshots(esx_admin, vm.uuid)[0]]
    assert snapshots(esx_admin, vm.uuid)[0].startswith("vmctl-backup-")
    with pytest.raises(vmctl.ValidationError):
        driver.read_extent(pit, "scsi0:0", 8 * MIB - 1, 2, deadline=deadline)
    driver.close_point_in_time(pit, deadline=deadline)
    driver.close_point_in_time(pit, deadline=deadline)  # idempotent
    assert snapshots(esx_admin, vm.uuid) == []
    with pytest.raises(vmctl.NotFound):
        driver.read_extent(pit, "scsi0:0", 0, 1, deadline=deadline)
    vm.power_off()


def test_expired_session_on_the_datastore_access() -> None:
    """/folder with an expired session: 401 (the launcher checks the cookie as a host does),
    a ConnectionError(sent=False) from the driver; through the core, a new session and the
    read repeated."""
    with (
        running_simulator("esx", vms=0, idle_timeout=1.0) as srv,
        vmctl.connect(srv.uri, password=srv.password, cafile=str(srv.cafile)) as hv,
    ):
        vm = make(hv)
        write_disk(vm, "scsi0:0", 3 * MIB, b"still here")
        conn: Any = hv._conn
        driver = conn.driver
        pit = driver.open_point_in_time(vm.uuid, quiesce=False, deadline=Deadline.after(30))
        time.sleep(2.5)  # expiry is checked once a second: dead after 1-2 s idle
        with pytest.raises(vmctl.ConnectionError) as err:
            driver.read_extent(pit, "scsi0:0", 3 * MIB, 10, deadline=Deadline.after(30))
        assert err.value.sent is False and err.value.vendor_code == "HTTP 401"
        data = conn.dispatcher.call(
            "read", driver.read_extent, pit, "scsi0:0", 3 * MIB, 10, deadline=Deadline.after(30)
        )
        assert data == b"still here"
        conn.dispatcher.call("close", driver.close_point_in_time, pit, deadline=Deadline.after(30))
        assert vm.snapshots() == []
        vm.delete()


def test_independent_disk_is_refused(esx: vmctl.Hypervisor, esx_admin: Admin) -> None:
    """Snapshots do not cover an independent disk: no point in time, nothing left behind."""
    vm = make(esx, sizes=(4, 4))
    ref = esx_admin.vm(vm.uuid)
    devices = esx_admin.props(ref, vim.VirtualMachine, ["config.hardware.device"])
    disks = [
        d for d in devices["config.hardware.device"] if isinstance(d, vim.vm.device.VirtualDisk)
    ]
    disk = disks[1]
    disk.backing.diskMode = "independent_persistent"
    spec = vim.vm.ConfigSpec(
        deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)]
    )
    task = ref.ReconfigVM_Task(spec=spec)
    assert str(esx_admin.props(task, vim.Task, ["info.state"])["info.state"]) == "success"
    repo = vmctl.open_repo(f"memory://esx-{secrets.token_hex(4)}", chunk_size=MIB)
    with pytest.raises(vmctl.InvalidState, match="independent_persistent"):
        vm.backup(repo)
    assert snapshots(esx_admin, vm.uuid) == []
    assert repo.backups(vm) == []


def test_restore_moves_each_disk_once(
    esx: vmctl.Hypervisor, esx_sim: VcsimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many write calls a restore makes (here 6 runs of chunks per disk), each disk
    is uploaded once, and only the bytes no call wrote are read from the host: by ranged
    GETs of those gaps, or, when there are many, by one download of the file; so is it by
    write_disk; a failed restore uploads nothing and keeps no local copy."""
    from vmctl_esx import _backup

    vm = make(esx, sizes=(12, 12))
    files = esx._conn.driver._files()  # type: ignore[attr-defined]
    for d in vm.config().disks:
        for i in range(0, 12, 2):  # every other MiB: runs of one chunk
            write_disk(vm, d.id, i * MIB + 5, b"run %d" % i)
    repo = vmctl.open_repo(f"memory://esx-{secrets.token_hex(4)}", chunk_size=MIB)
    info = vm.backup(repo)
    was = (files.downloads, files.uploads, files.filled)
    copy = repo.restore(info.id, esx, name=f"{vm.name}-r")
    # 6 MiB of each disk written, its 6 gaps of 1 MiB read by ranged GETs
    now = (files.downloads, files.uploads, files.filled)
    assert now == (was[0], was[1] + 2, was[2] + 2 * 6 * MIB)
    for d in copy.config().disks:
        assert read_disk(copy, d.id, 10 * MIB + 5, 6) == b"run 10"
    copy.delete()
    monkeypatch.setattr(_backup, "RANGED_GAPS", 2)  # 6 gaps: one download of the file
    was = (files.downloads, files.uploads, files.filled)
    copy = repo.restore(info.id, esx, name=f"{vm.name}-r")
    now = (files.downloads, files.uploads, files.filled)
    assert now == (was[0] + 2, was[1] + 2, was[2])
    for d in copy.config().disks:
        for i in range(0, 12, 2):
            want = (bytes(5) + b"run %d" % i).ljust(16, b"\0")
            assert read_disk(copy, d.id, i * MIB, 16) == want
    monkeypatch.undo()
    was = (files.downloads, files.uploads, files.filled)
    write_disk(copy, "scsi0:0", 1, b"one")
    now = (files.downloads, files.uploads, files.filled)
    assert now == (was[0], was[1] + 1, was[2] + 12 * MIB - 3)
    assert read_disk(copy, "scsi0:0", 0, 16) == b"\0one\0run 0".ljust(16, b"\0")

    class Stop(Exception):
        pass

    def stop(p: Any) -> None:
        if p.done_bytes:
            raise Stop

    before = (files.downloads, files.uploads)
    with pytest.raises(Stop):
        repo.restore(info.id, esx, name=f"{vm.name}-f", progress=stop)
    assert files.uploads == before[1]
    assert not esx._conn.driver._staging  # type: ignore[attr-defined]
    assert f"{vm.name}-f" not in {i.name for i in esx.list_vms()}


def test_discarded_writes_leave_the_disk_alone(
    esx: vmctl.Hypervisor, esx_sim: VcsimServer, esx_admin: Admin
) -> None:
    vm = make(esx, sizes=(2,))
    write_disk(vm, "scsi0:0", 100, b"kept")
    driver: Any = esx._conn.driver
    deadline = Deadline.after(30)
    driver.write_extents(vm.uuid, "scsi0:0", [ExtentData(100, 4, b"lost")], deadline=deadline)
    driver.flush_writes(vm.uuid, "scsi0:0", discard=True, deadline=deadline)
    driver.flush_writes(vm.uuid, "scsi0:0", deadline=deadline)  # nothing left to write
    raw = flat_file(esx_sim, esx_admin, "ha-datacenter", str(vm.config().disks[0].path))
    assert raw[100:104] == b"kept" and len(raw) == 2 * MIB
