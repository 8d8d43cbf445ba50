"""VDI content, changed-block tracking and the disk image formats of the HTTP data path.

* Content: every VDI holds real bytes, in memory, as 64 KiB blocks (``BLOCK``); blocks
  never written (or written with zeroes) are holes. A snapshot, clone or copy shares the
  source's block objects (Python ``bytes`` are immutable: copy-on-write for free) and
  owns its own block table.
* CBT, modelled on the storage manager's CBT logs (xapi-project/sm ``drivers/VDI.py``:
  ``_cbt_snapshot``, ``list_changed_blocks``): a VDI with CBT enabled has a log of the
  blocks written since its last snapshot; a snapshot takes that log over (the live VDI
  starts a new, empty one), and the logs form a chain ``snap1 -> snap2 -> ... -> live``.
  ``list_changed_blocks(from, to)`` ORs the logs after ``from`` up to ``to``. Here a chain
  is a ``lineage`` id with a generation counter; each block carries the generation of its
  last write (``marks``), so the blocks changed between ``from`` and ``to`` are those of
  ``to`` with ``from.gen < mark``. ``VDI.disable_cbt`` deletes the live log, so the chain
  ends there: a later ``enable_cbt`` starts a new lineage.
* The bitmap as xapi returns it (sm ``drivers/VDI.py: list_changed_blocks``: a bitarray
  of the blktap log, ``bytereverse()``d, ``tobytes()``, base64): one bit per 64 KiB block,
  block ``i`` in byte ``i // 8`` under mask ``0x80 >> (i % 8)`` (most significant bit
  first, as the XS-CBT-backup reference client reads it with ``bitstring.BitArray``).
* VHD (Microsoft's Virtual Hard Disk Image Format Specification, as ocaml/libs/vhd
  writes it for vhd-tool): a dynamic disk is footer copy (512 bytes) | dynamic disk
  header (1024) | BAT (one big-endian u32 sector offset per 2 MiB block, 0xFFFFFFFF for
  none, padded to a sector) | blocks (a 512-byte sector bitmap, then 2 MiB of data) |
  footer.
"""

from __future__ import annotations

import base64
import struct
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass, field

BLOCK = 64 * 1024  # CBT granularity: datamodel.ml VDI.list_changed_blocks "64k block"
ZERO = bytes(BLOCK)
SECTOR = 512
VHD_BLOCK = 2 * 1024 * 1024  # ocaml/libs/vhd: the default block size
_PER_VHD = VHD_BLOCK // BLOCK
VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z, the VHD timestamp origin
VHD_MAX_SIZE = 2040 * 1024**3  # ocaml/xapi-consts/constants.ml: max_vhd_size (2 TiB - 8 GiB)


@dataclass
class Track:
    """The CBT state of one VDI: its lineage (chain of logs), the generation its log
    closes (a snapshot) or is writing (the live VDI), and each block's last-write
    generation."""

    lineage: str
    gen: int
    marks: dict[int, int] = field(default_factory=dict)


class Store:
    """The content and CBT state of every VDI, by VDI ref."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.blocks: dict[str, dict[int, bytes]] = {}
        self.tracks: dict[str, Track] = {}

    # -- content -----------------------------------------------------------------------
    def table(self, vdi: str) -> dict[int, bytes]:
        with self.lock:
            return self.blocks.setdefault(vdi, {})

    def read(self, vdi: str, offset: int, length: int) -> bytes:
        table = self.table(vdi)
        out = bytearray(length)
        pos = offset
        while pos < offset + length:
            index, inner = divmod(pos, BLOCK)
            n = min(BLOCK - inner, offset + length - pos)
            block = table.get(index)
            if block is not None:
                out[pos - offset : pos - offset + n] = block[inner : inner + n]
            pos += n
        return bytes(out)

    def write(self, vdi: str, offset: int, data: bytes | memoryview) -> None:
        """Write ``data`` at ``offset`` (whole zero blocks become holes), marking each
        block touched in the VDI's CBT log."""
        with self.lock:
            table = self.table(vdi)
            track = self.tracks.get(vdi)
            pos, end = offset, offset + len(data)
            while pos < end:
                index, inner = divmod(pos, BLOCK)
                n = min(BLOCK - inner, end - pos)
                piece = data[pos - offset : pos - offset + n]
                if n == BLOCK:
                    new = bytes(piece)
                else:
                    buf = bytearray(table.get(index, ZERO))
                    buf[inner : inner + n] = piece
                    new = bytes(buf)
                if new == ZERO:
                    table.pop(index, None)
                else:
                    table[index] = new
                if track is not None:
                    track.marks[index] = track.gen
                pos += n

    def allocated(self, vdi: str) -> list[int]:
        with self.lock:
            return sorted(self.table(vdi))

    def copy(self, src: str, dst: str) -> None:
        """``dst`` gets ``src``'s content (shared immutable blocks, its own table)."""
        with self.lock:
            self.blocks[dst] = dict(self.table(src))

    def drop(self, vdi: str) -> None:
        with self.lock:
            self.blocks.pop(vdi, None)
            self.tracks.pop(vdi, None)

    def drop_data(self, vdi: str) -> None:
        """VDI.data_destroy: the content goes, the CBT log stays."""
        with self.lock:
            self.blocks.pop(vdi, None)

    # -- CBT ---------------------------------------------------------------------------
    def enable_cbt(self, vdi: str) -> None:
        with self.lock:
            if vdi not in self.tracks:
                self.tracks[vdi] = Track(uuidlib.uuid4().hex, 1)

    def disable_cbt(self, vdi: str) -> None:
        with self.lock:
            self.tracks.pop(vdi, None)

    def snapshot_cbt(self, vdi: str, snap: str) -> None:
        """sm VDI._cbt_snapshot: the snapshot takes the live log over; the live VDI starts
        the next generation."""
        with self.lock:
            live = self.tracks.get(vdi)
            if live is None:
                return
            self.tracks[snap] = Track(live.lineage, live.gen, dict(live.marks))
            live.gen += 1

    def changed(self, vdi_from: str, vdi_to: str) -> list[int] | None:
        """The blocks written after ``vdi_from``'s log up to ``vdi_to``'s, or None when
        the two are not in one chain with ``vdi_from`` first."""
        with self.lock:
            a, b = self.tracks.get(vdi_from), self.tracks.get(vdi_to)
            if a is None or b is None or a.lineage != b.lineage or a.gen >= b.gen:
                return None
            return sorted(i for i, m in b.marks.items() if m > a.gen)


def bitmap_b64(blocks: list[int], size: int) -> str:
    """The base64 CBT bitmap of a disk of ``size`` bytes with ``blocks`` set."""
    bits = -(-size // BLOCK)
    out = bytearray(-(-bits // 8))
    for i in blocks:
        if i < bits:
            out[i // 8] |= 0x80 >> (i % 8)
    return base64.b64encode(bytes(out)).decode("ascii")


def bitmap_blocks(b64: str) -> list[int]:
    """The inverse of ``bitmap_b64``: the indexes of the set bits."""
    raw = base64.b64decode(b64)
    return [i * 8 + j for i, byte in enumerate(raw) if byte for j in range(8) if byte & (0x80 >> j)]


# -- VHD ---------------------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    return (~sum(data)) & 0xFFFFFFFF


def _geometry(size: int) -> int:
    """CHS geometry of the VHD specification (Appendix: CHS calculation)."""
    sectors = min(size // SECTOR, 65535 * 16 * 255)
    if sectors >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = sectors // spt
    else:
        spt = 17
        cth = sectors // spt
        heads = max((cth + 1023) // 1024, 4)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = sectors // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = sectors // spt
    cyl = cth // heads
    return (cyl << 16) | (heads << 8) | spt


def vhd_footer(size: int, disk_uuid: str, disk_type: int = 3) -> bytes:
    f = bytearray(512)
    struct.pack_into(
        ">8sIIQI4sI4sQQIII16sB",
        f,
        0,
        b"conectix",
        2,  # features: reserved bit always set
        0x00010000,
        512,  # data offset: the dynamic header follows the footer copy
        int(time.time()) - VHD_EPOCH,
        b"caml",
        0x00010000,
        b"Wi2k",
        size,
        size,
        _geometry(size),
        disk_type,
        0,
        uuidlib.UUID(disk_uuid).bytes,
        0,
    )
    struct.pack_into(">I", f, 64, _checksum(bytes(f)))
    return bytes(f)


def vhd_header(entries: int, parent_uuid: str | None = None) -> bytes:
    h = bytearray(1024)
    struct.pack_into(
        ">8sQQIII",
        h,
        0,
        b"cxsparse",
        0xFFFFFFFFFFFFFFFF,
        512 + 1024,  # the BAT right after the header
        0x00010000,
        entries,
        VHD_BLOCK,
    )
    if parent_uuid:
        h[40:56] = uuidlib.UUID(parent_uuid).bytes
    struct.pack_into(">I", h, 36, _checksum(bytes(h)))
    return bytes(h)


def vhd_stream(
    size: int, disk_uuid: str, read: object, present: list[int], parent_uuid: str | None = None
) -> Iterator[bytes]:
    """A dynamic VHD of a disk of ``size`` bytes holding the 2 MiB blocks ``present``
    (sorted), their data from ``read(offset, length)``; every sector of a present block is
    marked in its bitmap."""
    assert callable(read)
    entries = -(-size // VHD_BLOCK)
    bat_bytes = -(-(entries * 4) // SECTOR) * SECTOR
    footer = vhd_footer(size, disk_uuid, 4 if parent_uuid else 3)
    yield footer
    yield vhd_header(entries, parent_uuid)
    bat = bytearray(b"\xff" * bat_bytes)
    first = (512 + 1024 + bat_bytes) // SECTOR
    per = 1 + VHD_BLOCK // SECTOR
    for n, index in enumerate(present):
        struct.pack_into(">I", bat, index * 4, first + n * per)
    yield bytes(bat)
    bitmap = b"\xff" * SECTOR
    for index in present:
        start = index * VHD_BLOCK
        n = min(VHD_BLOCK, size - start)
        yield bitmap
        yield read(start, n) + bytes(VHD_BLOCK - n)
    yield footer


def vhd_blocks_of(blocks64: list[int]) -> list[int]:
    return sorted({i // _PER_VHD for i in blocks64})


class VhdError(ValueError):
    pass


def vhd_read(recv: object, length: int, write: object, disk_size: int) -> None:
    """Read a dynamic VHD of ``length`` bytes through ``recv(n) -> bytes`` and call
    ``write(offset, data)`` for each run of sectors its bitmaps mark (vhd-tool's
    serve_vhd_to_raw onto a prezeroed target). The blocks may come in any order."""
    assert callable(recv) and callable(write)
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        data: bytes = recv(n)
        if len(data) != n:
            raise VhdError("the VHD ends early")
        pos += n
        return data

    footer = take(512)
    if footer[:8] != b"conectix":
        raise VhdError("not a VHD: no conectix cookie")
    (data_offset,) = struct.unpack_from(">Q", footer, 16)
    (virtual,) = struct.unpack_from(">Q", footer, 48)
    (disk_type,) = struct.unpack_from(">I", footer, 60)
    if disk_type not in (3, 4):
        raise VhdError(f"VHD disk type {disk_type} is not dynamic or differencing")
    if virtual > disk_size:
        raise VhdError(f"the VHD's virtual size {virtual} exceeds the VDI's {disk_size}")
    take(data_offset - pos)
    header = take(1024)
    if header[:8] != b"cxsparse":
        raise VhdError("no dynamic disk header")
    table_offset, _v, entries, block_size = struct.unpack_from(">QIII", header, 16)
    take(table_offset - pos)
    bat_bytes = -(-(entries * 4) // SECTOR) * SECTOR
    bat = struct.unpack_from(f">{entries}I", take(bat_bytes))
    bitmap_bytes = -(-(block_size // SECTOR) // 8)
    bitmap_bytes = -(-bitmap_bytes // SECTOR) * SECTOR
    order = sorted(
        (sector * SECTOR, index) for index, sector in enumerate(bat) if sector != 0xFFFFFFFF
    )
    for where, index in order:
        if where < pos:
            raise VhdError("VHD blocks overlap")
        take(where - pos)
        bitmap = take(bitmap_bytes)
        data = take(block_size)
        base = index * block_size
        run = None
        for s in range(block_size // SECTOR + 1):
            marked = s < block_size // SECTOR and bitmap[s // 8] & (0x80 >> (s % 8))
            if marked and run is None:
                run = s
            elif not marked and run is not None:
                lo, hi = base + run * SECTOR, min(base + s * SECTOR, virtual)
                if hi > lo:
                    write(lo, data[run * SECTOR : run * SECTOR + hi - lo])
                run = None
    remaining = length - pos
    if remaining > 0:
        take(remaining)  # the trailing footer
