"""Restore writes in batches of at most WRITE_BYTES of the disk, whatever the chunk size:
a chunk an extent, holes skipped (a new VM) or written as zeroes (replace, a run of zero
chunks one extent), byte for byte."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

import vmctl
from vmctl import DiskSpec, VMSpec
from vmctl.backup import _restore, disk_digests, open_repo, write_disk
from vmctl.spi import Deadline
from vmctl_sim import SimDriver

KIB = 1024
MIB = 1024 * KIB


class Recording(SimDriver):
    """The sim, keeping each write_extents call's (offset, length, has data) extents."""

    calls: list[list[tuple[int, int, bool]]] = []

    def write_extents(self, uuid: str, disk_id: str, extents: Any, *, deadline: Deadline) -> None:
        self.calls.append([(e.offset, e.length, e.data is not None) for e in extents])
        super().write_extents(uuid, disk_id, extents, deadline=deadline)


@pytest.fixture
def rec() -> Any:
    vmctl.register("bkbatch", Recording, clobber=True)
    Recording.calls = []
    try:
        yield Recording
    finally:
        vmctl.unregister("bkbatch")


def _check_calls(calls: list[list[tuple[int, int, bool]]], limit: int) -> None:
    last_end = 0
    for extents in calls:
        assert sum(n for _o, n, _d in extents) <= limit
        for (o1, n1, d1), (o2, _n2, d2) in itertools.pairwise(extents):
            # in order, not overlapping; two zero extents that touch would have been one
            assert o1 + n1 <= o2 and not (not d1 and not d2 and o1 + n1 == o2)
        assert extents[0][0] >= last_end
        last_end = extents[-1][0] + extents[-1][1]


def test_small_chunks_are_written_in_large_batches(
    rec: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_restore, "WRITE_BYTES", 1 * MIB)
    with vmctl.connect("bkbatch://h") as hv:
        vm = hv.create_vm(VMSpec(name="src", disks=[DiskSpec(size_mib=4)]))
        write_disk(vm, "disk1", 0, bytes(range(256)) * (1536 * KIB // 256))  # 1.5 MiB
        for i in range(8):  # and single 64 KiB chunks with a hole after each
            write_disk(vm, "disk1", 2 * MIB + i * 128 * KIB, bytes([i + 1]) * 64 * KIB)
        repo = open_repo(str(tmp_path / "repo"), chunk_size=64 * KIB)
        info = vm.backup(repo)
        want = disk_digests(vm)

        rec.calls = []
        copy = repo.restore(info.id, hv, name="copy")
        assert disk_digests(copy) == want
        # 1.5 MiB contiguous: 1 MiB, then 0.5 MiB and the 8 single chunks in one call
        assert [len(c) for c in rec.calls] == [16, 16]  # not a call per chunk (24)
        assert rec.calls[0] == [(i * 64 * KIB, 64 * KIB, True) for i in range(16)]
        assert rec.calls[1][8:] == [(2 * MIB + i * 128 * KIB, 64 * KIB, True) for i in range(8)]
        _check_calls(rec.calls, MIB)

        # replace: every byte written, the holes as zeroes, in batches of 1 MiB of disk
        write_disk(vm, "disk1", 3 * MIB + 512 * KIB, b"\xff" * 4096)  # to be zeroed
        rec.calls = []
        repo.restore(info.id, hv, replace=True)
        assert disk_digests(vm) == want
        assert len(rec.calls) <= 5  # not one per chunk (64)
        _check_calls(rec.calls, MIB)
        covered = sorted((o, n) for c in rec.calls for o, n, _d in c)
        pos = 0
        for o, n in covered:
            assert o == pos
            pos += n
        assert pos == 4 * MIB


def test_a_large_chunk_is_one_batch_of_its_own(rec: Any, tmp_path: Any) -> None:
    with vmctl.connect("bkbatch://h") as hv:
        vm = hv.create_vm(VMSpec(name="src", disks=[DiskSpec(size_mib=64)]))
        write_disk(vm, "disk1", 0, b"\1" * 40 * MIB)
        repo = open_repo(str(tmp_path / "repo"), chunk_size=32 * MIB)
        info = vm.backup(repo)
        rec.calls = []
        copy = repo.restore(info.id, hv, name="copy")
        assert disk_digests(copy) == disk_digests(vm)
        assert rec.calls == [[(0, 32 * MIB, True)], [(32 * MIB, 32 * MIB, True)]]
