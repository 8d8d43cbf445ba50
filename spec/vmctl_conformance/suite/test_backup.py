from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence

import pytest

import vmctl
from vmctl import VM, Capability, PowerState
from vmctl.backup import BackupKind, Consistency, Repository, read_disk, write_disk
from vmctl.backup import disk_digests as backup_disk_digests
from vmctl_conformance import clause, requires
from vmctl_conformance._kit import KIT_CHUNK_SIZE, Kit

S = PowerState
MIB = 1024 * 1024
READ = 4 * MIB  # compare disks in pieces of this many bytes
Write = tuple[int, bytes]  # (offset, data)


def pattern(disk: int, where: int, n: int) -> bytes:
    """A known pattern that differs per disk and offset (so nothing deduplicates)."""
    seed = hashlib.sha256(f"vmctl-kit {disk} {where}".encode()).digest()
    return (seed * (n // len(seed) + 1))[:n]


def first_writes(size: int, disk: int) -> list[Write]:
    """Data at the start, in the middle (unaligned), and at the very end of the disk."""
    mid = size // 2 + 4097
    return [
        (0, pattern(disk, 0, MIB + 123)),
        (mid, pattern(disk, mid, 70_000)),
        (size - 4096, pattern(disk, size - 4096, 4096)),
    ]


def later_writes(size: int, disk: int) -> list[Write]:
    """A few changed blocks: inside the first write, and in a region never written."""
    return [(512, pattern(disk, -1, 4096)), (size // 4, pattern(disk, -2, 100))]


def expected_digest(size: int, writes: Sequence[Write]) -> str:
    """The SHA-256 of a disk of zeroes with ``writes`` applied in order."""
    h = hashlib.sha256()
    for start in range(0, size, READ):
        piece = bytearray(min(READ, size - start))
        for offset, data in writes:
            lo, hi = max(offset, start), min(offset + len(data), start + len(piece))
            if lo < hi:
                piece[lo - start : hi - start] = data[lo - offset : hi - offset]
        h.update(piece)
    return h.hexdigest()


def disk_digests(vm: VM) -> list[str]:
    """Each disk's digest over its configured size, all read at one point in time."""
    return backup_disk_digests(vm, lengths=[d.size_mib * MIB for d in vm.config().disks])


def written_vm(kit: Kit, hint: str, disks: int = 2) -> tuple[VM, list[list[Write]]]:
    vm = kit.vm(hint, disks=disks)
    history = []
    for i, d in enumerate(vm.config().disks):
        writes = first_writes(d.size_mib * MIB, i)
        for offset, data in writes:
            write_disk(vm, d.id, offset, data)
        history.append(writes)
    return vm, history


def change(vm: VM, history: list[list[Write]]) -> None:
    for i, d in enumerate(vm.config().disks):
        for offset, data in later_writes(d.size_mib * MIB, i):
            write_disk(vm, d.id, offset, data)
            history[i].append((offset, data))


@clause("BACKUP-ROUNDTRIP-1")
@requires(Capability.BACKUP, Capability.RESTORE)
def test_two_generations_restore_byte_for_byte(kit: Kit) -> None:
    vm, history = written_vm(kit, "bk")
    sizes = [d.size_mib * MIB for d in vm.config().disks]
    gen1 = [expected_digest(s, w) for s, w in zip(sizes, history, strict=True)]
    assert disk_digests(vm) == gen1, "the pattern written is not what the disks hold"
    repo = kit.repo()
    first = vm.backup(repo)
    change(vm, history)
    gen2 = [expected_digest(s, w) for s, w in zip(sizes, history, strict=True)]
    # Back up before reading the disks again: each read opens a point in time, which would
    # hide a driver whose changed blocks leave out those of the last checkpoint's span.
    second = vm.backup(repo)
    assert disk_digests(vm) == gen2 and gen2 != gen1
    assert [b.id for b in repo.backups(vm)] == [first.id, second.id]
    source = vm.config()
    for info, want in ((first, gen1), (second, gen2)):
        restored = kit.track(repo.restore(info.id, kit.hv, name=kit.name("restored")))
        assert restored.info().state is S.STOPPED
        cfg = restored.config()
        assert (cfg.vcpus, cfg.memory_mib, len(cfg.disks)) == (
            source.vcpus,
            source.memory_mib,
            len(source.disks),
        )
        assert [d.size_mib for d in cfg.disks] >= [d.size_mib for d in source.disks]
        got = _prefix_digests(restored, [d.size_mib * MIB for d in source.disks])
        assert got == want, f"backup {info.id} ({info.kind.value}) restored other content"


def _prefix_digests(vm: VM, sizes: list[int]) -> list[str]:
    """Digests of the first ``sizes[i]`` bytes of each disk (a host may round a restored
    disk up)."""
    return backup_disk_digests(vm, lengths=sizes)


@clause("BACKUP-INCR-1")
@requires(Capability.BACKUP, Capability.BACKUP_INCREMENTAL)
def test_second_backup_is_incremental(kit: Kit) -> None:
    vm, history = written_vm(kit, "bk-incr", disks=1)
    repo = kit.repo()
    first = vm.backup(repo)
    assert first.kind is BackupKind.FULL
    change(vm, history)
    second = vm.backup(repo)
    assert second.kind is BackupKind.INCREMENTAL, second.reason
    assert second.parent == first.id
    assert second.read_bytes < first.read_bytes


@clause("BACKUP-QUIESCE-1")
@requires(Capability.BACKUP, Capability.BACKUP_QUIESCE)
def test_quiesced_backup(kit: Kit) -> None:
    if not kit.guest:
        pytest.skip("needs a bootable guest (kit options boot_kernel or boot_iso)")
    repo = kit.repo()
    stopped = kit.vm("bk-q-off")
    with contextlib.suppress(vmctl.InvalidState):
        assert stopped.backup(repo, quiesce=True).consistency is Consistency.STOPPED
    vm = kit.vm("bk-q", state=S.RUNNING, os=True)
    kit.wait_until(lambda: _quiesced(vm, repo), "a quiesced backup (the guest agent)")


def _quiesced(vm: VM, repo: Repository) -> bool:
    try:
        return vm.backup(repo, quiesce=True).consistency is Consistency.QUIESCED
    except vmctl.InvalidState:  # the guest agent is not up yet
        return False


@clause("BACKUP-REPLACE-1")
@requires(Capability.BACKUP, Capability.RESTORE)
def test_replace_in_place(kit: Kit) -> None:
    vm, history = written_vm(kit, "bk-repl", disks=1)
    size = vm.config().disks[0].size_mib * MIB
    saved = disk_digests(vm)
    repo = kit.repo()
    info = vm.backup(repo)
    change(vm, history)
    assert disk_digests(vm) != saved
    if kit.has(Capability.START):
        vm.start(timeout=kit.timeout)
        with pytest.raises(vmctl.InvalidState):
            repo.restore(info.id, kit.hv, replace=True)
        vm.power_off(timeout=kit.timeout)
    same = repo.restore(info.id, kit.hv, replace=True)
    assert same.uuid == vm.uuid
    assert _prefix_digests(vm, [size]) == saved


class _Interrupted(Exception):
    pass


@clause("BACKUP-INTERRUPT-1")
@requires(Capability.BACKUP)
def test_interrupted_backup_is_not_listed(kit: Kit) -> None:
    vm, _ = written_vm(kit, "bk-int", disks=1)
    repo = kit.repo()

    def stop(progress: object) -> None:
        raise _Interrupted

    with pytest.raises(_Interrupted):
        vm.backup(repo, progress=stop)
    assert repo.backups(vm) == []
    assert repo.verify().ok
    info = vm.backup(repo)
    assert [b.id for b in repo.backups(vm)] == [info.id]


@clause("BACKUP-FORMAT-1", "BACKUP-FORMAT-2", "BACKUP-FORMAT-3", "BACKUP-FORMAT-4")
@requires(Capability.BACKUP)
def test_repository_format(kit: Kit) -> None:
    import fsspec

    vm, _ = written_vm(kit, "bk-fmt", disks=1)
    twin, _ = written_vm(kit, "bk-fmt2", disks=1)  # the same content in another VM
    repo = kit.repo()
    info = vm.backup(repo)
    again = twin.backup(repo)
    assert again.new_bytes == 0 and again.disks[0].new_chunks == 0  # FORMAT-2: stored once
    fs, root = fsspec.core.url_to_fs(repo.url)
    config = json.loads(fs.cat_file(f"{root}/vmctl-repo.json"))
    assert config["format"] == "vmctl-backup-repository" and config["hash"] == "sha256"
    assert config["chunk_size"] == KIT_CHUNK_SIZE and config["id"] and config["version"] >= 1
    doc = json.loads(fs.cat_file(f"{root}/backups/{vm.uuid}/{info.id}.json"))
    assert doc["format"] == "vmctl-backup-manifest" and doc["id"] == info.id
    assert doc["vm"]["uuid"] == vm.uuid and doc["vm"]["driver"] == kit.hv.driver_name
    assert doc["kind"] in ("full", "incremental") and doc["reason"]
    assert doc["consistency"] in ("stopped", "quiesced", "crash")
    assert doc["config"]["vcpus"] == vm.config().vcpus
    (disk,) = doc["disks"]
    cs = doc["chunk_size"]
    assert len(disk["chunks"]) == -(-disk["size"] // cs)
    assert None in disk["chunks"]  # FORMAT-2: the zero chunks are not stored
    assert doc["checksum"].startswith("sha256:")
    for index, digest in enumerate(disk["chunks"]):
        if digest is None:
            continue
        frame = fs.cat_file(f"{root}/chunks/{digest[:2]}/{digest}")
        assert frame[:8] == b"VMCTLCK1" and frame[8] in (0, 1)
        plain = frame[9:] if frame[8] == 0 else _unzstd(frame[9:])
        assert hashlib.sha256(plain).hexdigest() == digest
        length = min(cs, disk["size"] - index * cs)
        assert plain == read_disk(vm, disk["id"], index * cs, length)
    # FORMAT-4: a damaged chunk is named by backup, disk and offset
    digest = next(c for c in disk["chunks"] if c)
    path = f"{root}/chunks/{digest[:2]}/{digest}"
    fs.pipe_file(path, b"VMCTLCK1\x00damaged")
    report = repo.verify(info.id)
    offset = disk["chunks"].index(digest) * cs
    assert [(p.backup_id, p.disk_id, p.offset) for p in report.problems] == [
        (info.id, disk["id"], offset)
    ]
    assert not [p for p in fs.find(root) if ".tmp-" in os.path.basename(p)]


def _unzstd(payload: bytes) -> bytes:
    import zstandard

    return bytes(zstandard.ZstdDecompressor().decompress(payload, max_output_size=64 * MIB))
