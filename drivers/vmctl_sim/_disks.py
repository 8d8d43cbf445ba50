"""Sim disks with real bytes: content, changed-block tracking and points in time.

The reference for driver authors of the disk-access SPI (``vmctl.spi.DiskAccess``,
``ChangedBlocks``, ``DiskWriter``), done the way real hypervisors do it:

* content lives in a sparse file next to the state file (``?state=FILE`` puts disk
  ``STORE`` at ``FILE.disks/STORE.img``), else in memory, in blocks of ``BLOCK`` bytes;
  blocks never written are holes and read as zeroes;
* changed-block tracking: each disk has a generation counter; every block written records
  the generation it was written in (its *mark*). Opening a point in time ends the current
  generation: its checkpoint is ``STORE:GEN``, and the blocks changed since an earlier
  checkpoint ``STORE:OLD`` are those with ``OLD < mark <= GEN`` (libvirt's dirty bitmaps and
  vSphere's changeIds work the same way, per disk);
* a point in time is copy-on-write: while it is open, the first write to a block saves the
  block's old content and mark in the point in time, so reads through it see the disk as it
  was (a fleecing overlay; libvirt's backup job does the same in QEMU).

Limits: the copy-on-write overlay lives in the process that opened the point in time; a
write from another process (another CLI call on the same state file) during a backup is
not seen by it. Snapshots keep the configuration, not the disk content.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import uuid as uuidlib
from collections.abc import Iterable, Iterator
from typing import Protocol

#: Granularity of content, holes and changed-block tracking.
BLOCK = 64 * 1024
_ZERO = bytes(BLOCK)


class DiskFull(OSError):
    """The storage under a sim disk is full (ENOSPC)."""


class Data(Protocol):
    """The content of one disk, in whole blocks."""

    def read_block(self, index: int) -> bytes | None:
        """The block's bytes, or None for a hole."""
        ...

    def write_block(self, index: int, data: bytes | None) -> None:
        """Write a whole block (None: make it a hole / zeroes)."""
        ...

    def blocks(self) -> Iterable[int]:
        """Indexes of the blocks that may hold data."""
        ...

    def delete(self) -> None: ...


class MemoryData:
    def __init__(self) -> None:
        self._blocks: dict[int, bytes] = {}

    def read_block(self, index: int) -> bytes | None:
        return self._blocks.get(index)

    def write_block(self, index: int, data: bytes | None) -> None:
        if data is None or data == _ZERO:
            self._blocks.pop(index, None)
        else:
            self._blocks[index] = data

    def blocks(self) -> Iterable[int]:
        return sorted(self._blocks)

    def delete(self) -> None:
        self._blocks.clear()


class FileData:
    """A sparse file: holes are never-written blocks (SEEK_DATA/SEEK_HOLE find the data)."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size

    def _fd(self, write: bool) -> int:
        if write:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            if os.fstat(fd).st_size < self.size:
                os.ftruncate(fd, self.size)
            return fd
        return os.open(self.path, os.O_RDONLY)

    def read_block(self, index: int) -> bytes | None:
        try:
            fd = self._fd(False)
        except FileNotFoundError:
            return None
        try:
            data = os.pread(fd, BLOCK, index * BLOCK)
        finally:
            os.close(fd)
        if not data:
            return None
        return data.ljust(BLOCK, b"\0")

    def write_block(self, index: int, data: bytes | None) -> None:
        if data is None and not os.path.exists(self.path):
            return
        fd = self._fd(True)
        try:
            end = min(BLOCK, self.size - index * BLOCK)
            os.pwrite(fd, (data or _ZERO)[:end], index * BLOCK)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFull(exc.errno, f"no space left for {self.path}") from exc
            raise
        finally:
            os.close(fd)

    def blocks(self) -> Iterable[int]:
        try:
            fd = self._fd(False)
        except FileNotFoundError:
            return []
        out: list[int] = []
        try:
            end = os.fstat(fd).st_size
            pos = 0
            while pos < end:
                try:
                    start = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError:  # ENXIO: no data after pos
                    break
                stop = os.lseek(fd, start, os.SEEK_HOLE)
                out.extend(range(start // BLOCK, (stop + BLOCK - 1) // BLOCK))
                pos = stop
        finally:
            os.close(fd)
        return sorted(set(out))

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class Overlay:
    """What a point in time saved of one disk: the old content and mark of each block that
    was written after it was opened."""

    def __init__(self, store: str, generation: int, size: int) -> None:
        self.store = store
        self.generation = generation  # the checkpoint's generation
        self.size = size
        self.saved: dict[int, tuple[bytes | None, int | None]] = {}


class SimPointInTime:
    def __init__(self, pit_id: str, overlays: dict[str, Overlay]) -> None:
        self.id = pit_id
        self.overlays = overlays  # by disk id
        self.open = True


class DiskWorld:
    """All disk content of one sim site, and its open points in time."""

    def __init__(self, state_path: str | None) -> None:
        self.root = f"{os.path.abspath(state_path)}.disks" if state_path else None
        self._memory: dict[str, MemoryData] = {}
        self.pits: dict[str, SimPointInTime] = {}
        self.lock = threading.RLock()

    @staticmethod
    def new_store() -> str:
        return uuidlib.uuid4().hex

    def data(self, store: str, size: int) -> Data:
        if self.root is not None:
            return FileData(os.path.join(self.root, f"{store}.img"), size)
        with self.lock:
            return self._memory.setdefault(store, MemoryData())

    def delete(self, store: str, size: int) -> None:
        with self.lock:
            self.data(store, size).delete()
            self._memory.pop(store, None)

    def copy(self, src: str, dst: str, size: int) -> None:
        source, target = self.data(src, size), self.data(dst, size)
        for index in source.blocks():
            block = source.read_block(index)
            if block is not None:
                target.write_block(index, block)

    def overlays_of(self, store: str) -> Iterator[Overlay]:
        for pit in self.pits.values():
            for overlay in pit.overlays.values():
                if overlay.store == store:
                    yield overlay


def blocks_of(offset: int, length: int) -> range:
    """The indexes of the blocks that bytes [offset, offset+length) touch."""
    return range(offset // BLOCK, (offset + length + BLOCK - 1) // BLOCK)


def runs(indexes: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted block indexes as (first, count) runs."""
    out: list[tuple[int, int]] = []
    for i in sorted(set(indexes)):
        if out and out[-1][0] + out[-1][1] == i:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out
