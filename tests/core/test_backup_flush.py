"""The core's side of DiskWriter.flush_writes: once per disk after its last write, or
discard=True when a restore or write_disk gives up; the sim (which writes at once) keeps
the default no-op."""

from __future__ import annotations

from typing import Any

import pytest

import vmctl
from vmctl import DiskSpec, VMSpec
from vmctl.backup import _restore, open_repo, read_disk, write_disk
from vmctl.spi import Deadline, DiskWriter
from vmctl_sim import SimDriver

MIB = 1024 * 1024


class Recording(SimDriver):
    """The sim, logging write_extents and flush_writes in order."""

    log: list[tuple[str, str, bool]] = []
    fail_writes_after: int | None = None

    def write_extents(self, uuid: str, disk_id: str, extents: Any, *, deadline: Deadline) -> None:
        n = sum(1 for e in self.log if e[0] == "write")
        self.log.append(("write", disk_id, False))
        if self.fail_writes_after is not None and n >= self.fail_writes_after:
            raise vmctl.InsufficientResources(f"the storage of disk {disk_id} is full")
        super().write_extents(uuid, disk_id, extents, deadline=deadline)

    def flush_writes(
        self, uuid: str, disk_id: str, *, discard: bool = False, deadline: Deadline
    ) -> None:
        self.log.append(("flush", disk_id, discard))


@pytest.fixture
def rec() -> Any:
    vmctl.register("bkflush", Recording, clobber=True)
    Recording.log = []
    Recording.fail_writes_after = None
    try:
        yield Recording
    finally:
        vmctl.unregister("bkflush")


def test_default_is_a_no_op() -> None:
    assert "flush_writes" not in SimDriver.__dict__  # the sim writes at once
    assert not getattr(DiskWriter.flush_writes, "__isabstractmethod__", False)


def test_flush_after_each_disk_and_discard_on_failure(
    rec: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_restore, "WRITE_BYTES", MIB)  # a write per chunk: several per disk
    with vmctl.connect("bkflush://h") as hv:
        vm = hv.create_vm(VMSpec(name="src", disks=[DiskSpec(size_mib=8), DiskSpec(size_mib=8)]))
        write_disk(vm, "disk1", 0, b"a")
        assert rec.log == [("write", "disk1", False), ("flush", "disk1", False)]
        for i in range(0, 8, 2):  # runs of one chunk: several writes per disk
            write_disk(vm, "disk1", i * MIB, b"x")
            write_disk(vm, "disk2", i * MIB, b"y")
        repo = open_repo(str(tmp_path / "repo"), chunk_size=MIB)
        info = vm.backup(repo)
        rec.log = []
        copy = repo.restore(info.id, hv, name="copy")
        flushes = [e for e in rec.log if e[0] == "flush"]
        assert flushes == [("flush", "disk1", False), ("flush", "disk2", False)]
        # each flush comes after the last write of its disk and before the next disk's
        order = [e[1] for e in rec.log]
        assert order == sorted(order) and rec.log[-1] == ("flush", "disk2", False)
        assert read_disk(copy, "disk2", 6 * MIB, 1) == b"y"
        rec.log = []
        rec.fail_writes_after = 1
        with pytest.raises(vmctl.InsufficientResources):
            repo.restore(info.id, hv, name="half")
        assert ("flush", "disk1", True) in rec.log
        assert not [e for e in rec.log if e[0] == "flush" and not e[2]]
        assert "half" not in {i.name for i in hv.list_vms()}
        rec.log = []
        rec.fail_writes_after = 0
        with pytest.raises(vmctl.InsufficientResources):
            write_disk(vm, "disk1", 0, b"z")
        assert rec.log == [("write", "disk1", False), ("flush", "disk1", True)]
