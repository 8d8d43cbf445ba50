"""Bad input and faults: each a clear vmctl error; nothing half-made left on the host; no
incomplete backup listed."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

import vmctl
from vmctl import DiskSpec, VMSpec
from vmctl.backup import (
    CorruptChunk,
    Repository,
    RepositoryError,
    _locks,
    _restore,
    open_repo,
    write_disk,
)
from vmctl_sim import SimDriver
from vmctl_sim._site import POOL_CAPACITY_MIB

MIB = 1024 * 1024
CS = 256 * 1024
ROOT = Path(__file__).resolve().parents[2]


def vm_with_data(hv: vmctl.Hypervisor, name: str = "src", mib: int = 2) -> vmctl.VM:
    vm = hv.create_vm(VMSpec(name=name, disks=[DiskSpec(size_mib=mib)]))
    disk = vm.config().disks[0].id
    for i in range(mib * MIB // CS):
        write_disk(vm, disk, i * CS, random.Random(i).randbytes(CS))
    return vm


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return open_repo(str(tmp_path / "repo"), chunk_size=CS)


def names(hv: vmctl.Hypervisor) -> list[str]:
    return [i.name for i in hv.list_vms()]


# -- repositories that cannot be used ------------------------------------------------------


class _Mem(MemoryFileSystem):
    """The memory filesystem (one store for all) under another protocol name."""

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        return super()._strip_protocol(str(path).split("://", 1)[-1])


class ReadOnlyFS(_Mem):
    """A memory filesystem mounted read-only (EROFS on every write)."""

    protocol = "rotest"

    def pipe_file(self, path: str, value: Any, **kw: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system", path)

    def rm_file(self, path: str) -> None:
        raise OSError(errno.EROFS, "Read-only file system", path)


class FullFS(_Mem):
    """A memory filesystem with room for the repository's config and little else."""

    protocol = "fulltest"
    room = 4096

    def pipe_file(self, path: str, value: Any, **kw: Any) -> None:
        used = sum(len(v.getvalue()) for v in self.store.values())
        if used + len(value) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        super().pipe_file(path, value, **kw)


@pytest.fixture
def memfs() -> Any:
    fsspec.register_implementation("rotest", ReadOnlyFS, clobber=True)
    fsspec.register_implementation("fulltest", FullFS, clobber=True)
    MemoryFileSystem.store.clear()
    MemoryFileSystem.pseudo_dirs[:] = [""]
    yield
    MemoryFileSystem.store.clear()


def test_read_only_repository(hv: vmctl.Hypervisor, memfs: None) -> None:
    open_repo("memory://ro", chunk_size=CS)  # made while writable
    repo = open_repo("rotest://ro")
    vm = vm_with_data(hv)
    with pytest.raises(RepositoryError, match="read-only or not writable"):
        vm.backup(repo)
    assert repo.backups() == []
    with pytest.raises(RepositoryError, match="read-only"):
        open_repo("rotest://new")


def test_full_repository(hv: vmctl.Hypervisor, memfs: None) -> None:
    repo = open_repo("fulltest://full", chunk_size=CS)
    vm = vm_with_data(hv)
    with pytest.raises(vmctl.InsufficientResources, match="is full"):
        vm.backup(repo)
    assert repo.backups() == []
    assert not [p for p in MemoryFileSystem.store if "/locks/" in p]  # lock released


def test_not_a_repository(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(RepositoryError, match="not a vmctl backup repository"):
        open_repo(str(tmp_path / "photos"))
    with pytest.raises(vmctl.NotFound):
        open_repo(str(tmp_path / "none"), create=False)
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "vmctl-repo.json").write_text(
        '{"format": "vmctl-backup-repository", "version": 9, "id": "x", "hash": "sha256", '
        '"chunk_size": 262144}'
    )
    with pytest.raises(RepositoryError, match="upgrade vmctl"):
        open_repo(str(newer))
    with pytest.raises(RepositoryError, match="cannot open"):
        open_repo("nosuchprotocol://x")


# -- interrupted backups -------------------------------------------------------------------


def test_backup_killed_half_way_is_never_listed(tmp_path: Path) -> None:
    state = tmp_path / "site.json"
    repo_dir = tmp_path / "repo"
    code = textwrap.dedent(
        f"""
        import os, vmctl
        from vmctl.backup import open_repo, write_disk
        import vmctl.backup._backup as job
        job.PROGRESS_EVERY_S = 0.0
        hv = vmctl.connect("sim://kill?state={state}")
        vm = hv.create_vm(vmctl.VMSpec(name="victim", disks=[vmctl.DiskSpec(size_mib=2)]))
        d = vm.config().disks[0].id
        for i in range(8):
            write_disk(vm, d, i * {CS}, bytes([i + 1]) * {CS})
        repo = open_repo("{repo_dir}", chunk_size={CS})
        def die(p):
            if p.done_bytes >= 3 * {CS}:
                os._exit(9)   # killed: no cleanup, no finally
        vm.backup(repo, progress=die)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 9, out.stderr
    repo = open_repo(str(repo_dir))
    assert repo.backups() == []
    files = [p for p in (repo_dir / "chunks").rglob("*") if p.is_file()]
    assert files  # it had written chunks
    # committed ones (Batch.commit) stay, unreferenced; those written since the last commit
    # are temporary files, never under a chunk's name
    chunks = [p for p in files if ".tmp-" not in p.name]
    assert len(list((repo_dir / "locks").iterdir())) == 1  # a stale lock of a dead process
    assert repo.verify().ok
    with vmctl.connect(f"sim://kill?state={state}") as hv:
        vm = hv.vm("victim")
        info = vm.backup(repo)  # the stale lock does not stand in the way
        assert info.kind.value == "full"
        assert info.disks[0].new_chunks == 8 - len(chunks)  # what was stored is reused
    result = repo.prune(keep_last=1)
    assert result.chunks_removed == 0
    assert not [p for p in (repo_dir / "chunks").rglob("*") if ".tmp-" in p.name]
    assert not (repo_dir / "locks").exists() or not list((repo_dir / "locks").iterdir())
    assert [b.id for b in repo.backups()] == [info.id]


def test_orphan_chunks_are_pruned(hv: vmctl.Hypervisor, repo: Repository) -> None:
    vm = vm_with_data(hv)
    calls = []

    def fail(p: object) -> None:
        calls.append(p)
        if len(calls) == 2:
            raise KeyboardInterrupt

    import vmctl.backup._backup as job

    # chunks committed as they come (Batch.commit), so some are in place when it stops
    old, job.PROGRESS_EVERY_S, every, job.COMMIT_EVERY = (
        job.PROGRESS_EVERY_S,
        0.0,
        job.COMMIT_EVERY,
        1,
    )
    try:
        with pytest.raises(KeyboardInterrupt):
            vm.backup(repo, progress=fail)
    finally:
        job.PROGRESS_EVERY_S, job.COMMIT_EVERY = old, every
    assert repo.backups() == []
    assert not [p for p in Path(repo.url, "chunks").rglob("*") if ".tmp-" in p.name]  # aborted
    driver = hv._driver
    assert isinstance(driver, SimDriver) and driver.site.disks.pits == {}  # released
    result = repo.prune(keep_last=1)
    assert result.chunks_removed >= 1 and result.removed == ()
    assert not [p for p in Path(repo.url, "chunks").rglob("*") if p.is_file()]


def test_prune_waits_for_a_running_backup(repo: Repository) -> None:
    lock = _locks.acquire(repo._store, "backup", exclusive=False)
    try:
        with pytest.raises(vmctl.Conflict, match="a backup is running"):
            repo.prune(keep_last=1)
    finally:
        lock.release()
    prune_lock = _locks.acquire(repo._store, "prune", exclusive=True)
    try:
        with pytest.raises(vmctl.Conflict, match="a prune is running"):
            _locks.acquire(repo._store, "backup", exclusive=False)
    finally:
        prune_lock.release()
    assert repo.prune(keep_last=1).removed == ()


# -- damaged repositories ------------------------------------------------------------------


def _chunk_file(repo: Repository, backup_id: str, index: int) -> tuple[Path, str]:
    m = repo.manifest(backup_id)
    digest = m.disks[0].chunks[index]
    assert digest
    return Path(repo.url, "chunks", digest[:2], digest), m.disks[0].id


def test_corrupted_chunk_is_found_by_verify_and_refused_by_restore(
    hv: vmctl.Hypervisor, repo: Repository
) -> None:
    vm = vm_with_data(hv)
    info = vm.backup(repo)
    path, disk = _chunk_file(repo, info.id, 5)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    report = repo.verify(info.id)
    assert not report.ok
    (problem,) = report.problems
    assert (problem.disk_id, problem.offset, problem.length) == (disk, 5 * CS, CS)
    assert f"disk {disk} at offset {5 * CS}" in problem.error
    assert not repo.verify().ok
    with pytest.raises(CorruptChunk, match=f"disk {disk}, offset {5 * CS}"):
        repo.restore(info.id, hv, name="broken")
    assert names(hv) == ["src"]  # the half-made VM was deleted
    path.unlink()
    report = repo.verify()
    assert "missing" in report.problems[0].error
    with pytest.raises(vmctl.NotFound, match=f"offset {5 * CS}"):
        repo.restore(info.id, hv, name="broken")
    assert names(hv) == ["src"]


def test_damaged_manifest_is_not_listed_and_verify_says_so(
    hv: vmctl.Hypervisor, repo: Repository
) -> None:
    vm = vm_with_data(hv)
    info = vm.backup(repo)
    path = Path(repo.url, "backups", vm.uuid, f"{info.id}.json")
    path.write_text(path.read_text().replace('"vcpus": 1', '"vcpus": 64'))
    assert repo.backups() == []
    report = repo.verify()
    assert not report.ok and "checksum" in report.problems[0].error
    with pytest.raises(RepositoryError, match="checksum"):
        repo.restore(info.id, hv, name="x")
    assert repo.prune(keep_last=1).chunks_removed == 0  # an unreadable manifest: no sweep


# -- restore onto a host without room ------------------------------------------------------


def test_restore_onto_a_host_without_room(hv: vmctl.Hypervisor, repo: Repository) -> None:
    vm = vm_with_data(hv)
    info = vm.backup(repo)
    with vmctl.connect("sim://full-host") as full:
        full.create_vm(VMSpec(name="filler", disks=[DiskSpec(size_mib=POOL_CAPACITY_MIB - 1)]))
        with pytest.raises(vmctl.InsufficientResources, match="MiB free"):
            repo.restore(info.id, full)
        assert names(full) == ["filler"]


def test_storage_full_during_restore_leaves_nothing(
    hv: vmctl.Hypervisor, repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm = vm_with_data(hv)
    info = vm.backup(repo)
    monkeypatch.setattr(_restore, "WRITE_BYTES", 1)  # one chunk per write: several writes
    calls = []
    real = SimDriver.write_extents

    def filling(self: SimDriver, *args: Any, **kw: Any) -> None:
        calls.append(args)
        if len(calls) == 2:
            raise vmctl.InsufficientResources("the storage of disk disk1 is full")
        real(self, *args, **kw)

    monkeypatch.setattr(SimDriver, "write_extents", filling)
    with pytest.raises(vmctl.InsufficientResources, match="full"):
        repo.restore(info.id, hv, name="half")
    assert names(hv) == ["src"]

    def delete_fails(self: SimDriver, uuid: str, **kw: Any) -> list[str]:
        raise vmctl.ConnectionError("host gone", sent=None)

    calls.clear()
    monkeypatch.setattr(SimDriver, "delete_vm", delete_fails)
    with pytest.raises(vmctl.InsufficientResources) as err:
        repo.restore(info.id, hv, name="half")
    ((kind, uuid),) = err.value.left_behind
    assert kind == "vm" and "could not be deleted" in str(err.value)
    assert hv.vm(uuid).name == "half"


def test_bad_restore_input(hv: vmctl.Hypervisor, repo: Repository) -> None:
    vm = vm_with_data(hv)
    info = vm.backup(repo)
    with pytest.raises(vmctl.ValidationError):
        repo.restore(info.id, hv, name="")
    with pytest.raises(vmctl.ValidationError):
        repo.restore("../etc", hv)
    with pytest.raises(vmctl.ValidationError):
        repo.restore(info.id, "sim://x")  # type: ignore[arg-type]
    with pytest.raises(vmctl.NotFound):
        repo.restore("20000101T000000Z-000000", hv)
    with pytest.raises(vmctl.AlreadyExists, match="another name"):
        repo.restore(info.id, hv)
    with (
        vmctl.connect("sim://elsewhere") as other,
        pytest.raises(vmctl.NotFound, match="restore into a new VM"),
    ):
        repo.restore(info.id, other, replace=True)
    assert names(hv) == ["src"]
    assert os.path.isdir(repo.url)


# -- the same on a real local filesystem (a tiny tmpfs; needs root, as CI has) --------------


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Any:
    """A 1 MiB tmpfs mounted for the test, or a skip where mounting is not allowed."""
    import shutil

    where = tmp_path / "tiny"
    where.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_full_local_directory(hv: vmctl.Hypervisor, tiny_fs: Path) -> None:
    repo = open_repo(str(tiny_fs / "repo"), chunk_size=CS)
    vm = vm_with_data(hv)  # 2 MiB of random data: does not fit
    with pytest.raises(vmctl.InsufficientResources, match="is full"):
        vm.backup(repo)
    assert repo.backups() == []
    assert not [p for p in tiny_fs.rglob("*") if ".tmp-" in p.name]  # no half-written chunk
    assert not list((tiny_fs / "repo" / "locks").iterdir())


def test_read_only_local_directory(hv: vmctl.Hypervisor, tiny_fs: Path) -> None:
    repo = open_repo(str(tiny_fs / "repo"), chunk_size=CS)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    vm = hv.create_vm(VMSpec(name="small", disks=[DiskSpec(size_mib=1)]))
    with pytest.raises(RepositoryError, match="read-only"):
        vm.backup(repo)
    assert repo.backups() == [] and repo.verify().ok  # reading still works


class FlakyFS(_Mem):
    """Every first write of an object fails as a dropped connection does."""

    protocol = "flakytest"
    failed: set[str] = set()

    def pipe_file(self, path: str, value: Any, **kw: Any) -> None:
        if path not in self.failed:
            self.failed.add(path)
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        super().pipe_file(path, value, **kw)


def test_dropped_connections_to_the_repository_are_retried(
    hv: vmctl.Hypervisor, memfs: None
) -> None:
    fsspec.register_implementation("flakytest", FlakyFS, clobber=True)
    FlakyFS.failed.clear()
    repo = open_repo("flakytest://flaky", chunk_size=CS)
    vm = vm_with_data(hv)
    info = vm.backup(repo)
    assert info.disks[0].new_chunks == 8
    assert repo.verify().ok
    assert len(FlakyFS.failed) >= 10  # config, lock, 8 chunks, manifest: each failed once
