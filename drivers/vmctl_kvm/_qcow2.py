"""The guest-visible content of a stopped VM's qcow2 (or raw) volume, read and written
through byte ranges of the volume file (libvirt's ``virStorageVolDownload`` and
``virStorageVolUpload`` stream the file's own bytes, not the disk's content).

Written to QEMU's qcow2 specification (docs/interop/qcow2.txt in QEMU's source): header,
L1/L2 tables, refcount table and blocks, the bitmaps extension and its directory. Only what
vmctl needs, and refused (``Unsupported``) where a change could be wrong:

* reads: standard L2 entries (allocated, unallocated, v3 zero clusters), a backing file
  (another image read the same way); compressed clusters, encryption, an external data file
  and extended L2 entries are refused;
* writes: into clusters this image owns alone (refcount 1: the COPIED flag), new clusters
  appended at the end of the file with their refcounts set (a new refcount block when the
  table has room); clusters shared with an internal snapshot are refused;
* persistent dirty bitmaps (libvirt checkpoints): every write sets its bits in each enabled
  (``auto``) bitmap, as QEMU does, so changed-block tracking sees it; a bitmap can be added
  (an offline checkpoint) and removed, and its set extents read.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol

MAGIC = b"QFI\xfb"
OFFSET_MASK = 0x00FFFFFFFFFFFE00
COPIED = 1 << 63
COMPRESSED = 1 << 62
ZERO = 1
EXT_END = 0
EXT_BITMAPS = 0x23852875
AUTOCLEAR_BITMAPS = 1
INCOMPAT_DIRTY, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_EXTL2 = 1, 2, 4, 16
BME_IN_USE, BME_AUTO = 1, 2
BITMAP_TYPE_DIRTY = 1


class Unsupported(Exception):
    """The image uses something this module does not handle (the message says what)."""


class NoSpace(Exception):
    """The volume's storage is full: the file did not grow by what was written to it
    (libvirt's upload stream does not always report ENOSPC: seen with small uploads)."""


class Io(Protocol):
    def pread(self, offset: int, length: int) -> bytes: ...

    def pwrite(self, offset: int, data: bytes) -> None: ...

    def size(self) -> int: ...


class Bitmap:
    def __init__(
        self, name: str, table_offset: int, table_size: int, flags: int, gran_bits: int, raw: bytes
    ) -> None:
        self.name = name
        self.table_offset = table_offset
        self.table_size = table_size
        self.flags = flags
        self.gran_bits = gran_bits
        self.raw = raw  # the directory entry as stored

    @property
    def enabled(self) -> bool:
        return bool(self.flags & BME_AUTO) and not self.flags & BME_IN_USE


def _pad8(n: int) -> int:
    return (n + 7) & ~7


class Image:
    """One qcow2 image, read and changed through ``io``. ``open_backing(path)`` gives the
    backing image (None: the backing file cannot be read, which is refused)."""

    def __init__(
        self, io: Io, open_backing: Callable[[str], Image | RawImage | None] | None = None
    ):
        self.io = io
        head = io.pread(0, 4096)
        if head[:4] != MAGIC:
            raise Unsupported("not a qcow2 image")
        (
            self.version,
            backing_off,
            backing_len,
            self.cluster_bits,
            self.size,
            crypt,
            self.l1_size,
            self.l1_offset,
            self.rt_offset,
            self.rt_clusters,
            self.nb_snapshots,
            _snap_off,
        ) = struct.unpack(">IQIIQIIQQIIQ", head[4:72])
        if crypt:
            raise Unsupported("an encrypted qcow2 image")
        self.cs = 1 << self.cluster_bits
        if self.version >= 3:
            (self.incompat, self.compat, self.autoclear, self.refcount_order, self.header_len) = (
                struct.unpack(">QQQII", head[72:104])
            )
        else:
            self.incompat = self.compat = self.autoclear = 0
            self.refcount_order, self.header_len = 4, 72
        if self.incompat & (INCOMPAT_DATA_FILE | INCOMPAT_EXTL2):
            raise Unsupported("a qcow2 image with an external data file or extended L2 entries")
        if self.incompat & INCOMPAT_CORRUPT:
            raise Unsupported("a qcow2 image marked corrupt (run qemu-img check -r)")
        self.head = io.pread(0, self.cs)
        self.backing: Image | RawImage | None = None
        if backing_off:
            path = self.head[backing_off : backing_off + backing_len].decode()
            backing = open_backing(path) if open_backing else None
            if backing is None:
                raise Unsupported(f"the backing file {path!r} cannot be read")
            self.backing = backing
        self._l1 = list(
            struct.unpack(f">{self.l1_size}Q", io.pread(self.l1_offset, 8 * self.l1_size))
        )
        self._l2: dict[int, list[int]] = {}
        self._rt: list[int] | None = None
        self._rb: dict[int, bytearray] = {}
        self._end: int = -(-io.size() // self.cs) * self.cs
        self.bitmaps = self._read_bitmaps()

    # -- header extensions and the bitmap directory -------------------------------------

    def _extensions(self) -> list[tuple[int, bytes, int]]:
        """(type, data, offset of the type field) of each header extension."""
        out = []
        pos = self.header_len
        while pos + 8 <= self.cs:
            etype, elen = struct.unpack(">II", self.head[pos : pos + 8])
            if etype == EXT_END:
                break
            out.append((etype, self.head[pos + 8 : pos + 8 + elen], pos))
            pos += 8 + _pad8(elen)
        return out

    def _read_bitmaps(self) -> list[Bitmap]:
        if self.version < 3 or not self.autoclear & AUTOCLEAR_BITMAPS:
            return []
        ext = next((d for t, d, _ in self._extensions() if t == EXT_BITMAPS), None)
        if ext is None:
            return []
        nb, _, dsize, doff = struct.unpack(">IIQQ", ext[:24])
        raw = self.io.pread(doff, dsize)
        out, pos = [], 0
        for _ in range(nb):
            toff, tsize, flags, _type, gbits, nsize, xsize = struct.unpack(
                ">QIIBBHI", raw[pos : pos + 24]
            )
            name = raw[pos + 24 + xsize : pos + 24 + xsize + nsize].decode()
            end = pos + _pad8(24 + xsize + nsize)
            out.append(Bitmap(name, toff, tsize, flags, gbits, raw[pos:end]))
            pos = end
        return out

    # -- mapping ------------------------------------------------------------------------

    def _l2_table(self, index: int) -> list[int] | None:
        entry = self._l1[index] if index < len(self._l1) else 0
        off = entry & OFFSET_MASK
        if not off:
            return None
        if index not in self._l2:
            n = self.cs // 8
            self._l2[index] = list(struct.unpack(f">{n}Q", self.io.pread(off, self.cs)))
        return self._l2[index]

    def _entry(self, cluster: int) -> int:
        per = self.cs // 8
        table = self._l2_table(cluster // per)
        return 0 if table is None else table[cluster % per]

    def read(self, offset: int, length: int) -> bytes:
        pos, end = offset, offset + length
        # runs of data contiguous in the file: (position in the result, host offset, length)
        runs: list[tuple[int, int, int]] = []
        out: bytearray | None = None  # made at the first hole or backing read

        def put(at: int, data: bytes) -> None:
            nonlocal out
            if out is None:
                out = bytearray(length)
            out[at : at + len(data)] = data

        while pos < end:
            cluster, within = divmod(pos, self.cs)
            n = min(self.cs - within, end - pos)
            entry = self._entry(cluster)
            if entry & COMPRESSED:
                raise Unsupported("a qcow2 image with compressed clusters")
            host = entry & OFFSET_MASK
            if host and not entry & ZERO:
                at = pos - offset
                if runs and runs[-1][0] + runs[-1][2] == at and sum(runs[-1][1:]) == host + within:
                    runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + n)
                else:
                    runs.append((at, host + within, n))
            elif not entry & ZERO and self.backing is not None:
                put(pos - offset, self.backing.read_clipped(pos, n))
            # else zeroes: the result starts as zeroes
            pos += n
        if out is None and len(runs) == 1 and runs[0][0] == 0 and runs[0][2] == length:
            data = self.io.pread(runs[0][1], length)  # the common case: one run, no copy
            return data if len(data) == length else data.ljust(length, b"\0")
        for at, host, n in runs:
            put(at, self.io.pread(host, n))  # short at the file's end: zeroes stay
        return bytes(out) if out is not None else bytes(length)

    def read_clipped(self, offset: int, length: int) -> bytes:
        """As ``read``, zeroes past the end of the (smaller) image."""
        have = max(0, min(length, self.size - offset))
        return (self.read(offset, have) if have else b"").ljust(length, b"\0")

    def allocated(self) -> list[tuple[int, int]]:
        """(offset, length) runs of the disk that may hold data."""
        clusters = -(-self.size // self.cs)
        used = [False] * clusters
        for c in range(clusters):
            entry = self._entry(c)
            if entry & ZERO:
                continue
            used[c] = bool(entry & OFFSET_MASK)
        if self.backing is not None:
            for off, ln in self.backing.allocated():
                for c in range(off // self.cs, min(clusters, -(-(off + ln) // self.cs))):
                    if not self._entry(c):
                        used[c] = True
        return _runs(used, self.cs, self.size)

    # -- bitmaps ------------------------------------------------------------------------

    def bitmap(self, name: str) -> Bitmap | None:
        return next((b for b in self.bitmaps if b.name == name), None)

    def bitmap_extents(self, name: str) -> list[tuple[int, int]]:
        """(offset, length) runs whose bits are set in bitmap ``name`` (KeyError: none)."""
        bm = self.bitmap(name)
        if bm is None:
            raise KeyError(name)
        gran = 1 << bm.gran_bits
        nbits = -(-self.size // gran)
        per = self.cs * 8
        table = struct.unpack(
            f">{bm.table_size}Q", self.io.pread(bm.table_offset, 8 * bm.table_size)
        )
        dirty = [False] * nbits
        for k, entry in enumerate(table):
            lo, hi = k * per, min(nbits, (k + 1) * per)
            if entry == 1:
                dirty[lo:hi] = [True] * (hi - lo)
            elif entry & OFFSET_MASK:
                data = self.io.pread(entry & OFFSET_MASK, self.cs)
                for bit in range(lo, hi):
                    i = bit - lo
                    if data[i >> 3] >> (i & 7) & 1:
                        dirty[bit] = True
        return _runs(dirty, gran, self.size)

    def _mark(self, offset: int, length: int) -> None:
        """Set the bits of [offset, offset+length) in every enabled bitmap."""
        for bm in self.bitmaps:
            if not bm.enabled:
                continue
            gran = 1 << bm.gran_bits
            first, last = offset // gran, (offset + length - 1) // gran
            per = self.cs * 8
            for k in range(first // per, last // per + 1):
                tpos = bm.table_offset + 8 * k
                (entry,) = struct.unpack(">Q", self.io.pread(tpos, 8))
                if entry == 1:
                    continue
                host = entry & OFFSET_MASK
                data = bytearray(self.io.pread(host, self.cs) if host else bytes(self.cs))
                for bit in range(max(first, k * per), min(last, (k + 1) * per - 1) + 1):
                    i = bit - k * per
                    data[i >> 3] |= 1 << (i & 7)
                if host:
                    self.io.pwrite(host, bytes(data))
                else:
                    host = self._alloc(bytes(data))
                    self.io.pwrite(tpos, struct.pack(">Q", host))

    def add_bitmap(self, name: str, gran_bits: int = 16) -> None:
        """A new, empty, enabled persistent bitmap (what a checkpoint creates)."""
        self._writable()
        if self.bitmap(name) is not None:
            raise Unsupported(f"a bitmap named {name!r} exists")
        nbits = -(-self.size // (1 << gran_bits))
        tsize = -(-nbits // (self.cs * 8))
        toff = self._alloc(bytes(-(-tsize * 8 // self.cs) * self.cs))
        raw_name = name.encode()
        entry = struct.pack(
            ">QIIBBHI", toff, tsize, BME_AUTO, BITMAP_TYPE_DIRTY, gran_bits, len(raw_name), 0
        )
        entry += raw_name
        entry += bytes(_pad8(len(entry)) - len(entry))
        self._write_directory(
            [*self.bitmaps, Bitmap(name, toff, tsize, BME_AUTO, gran_bits, entry)]
        )

    def remove_bitmap(self, name: str) -> None:
        """Drop bitmap ``name`` and free its clusters (nothing if there is none)."""
        bm = self.bitmap(name)
        if bm is None:
            return
        self._writable()
        table = struct.unpack(
            f">{bm.table_size}Q", self.io.pread(bm.table_offset, 8 * bm.table_size)
        )
        self._write_directory([b for b in self.bitmaps if b is not bm])
        for entry in table:
            if entry & OFFSET_MASK:
                self._set_refcount(entry & OFFSET_MASK, 0)
        for i in range(-(-bm.table_size * 8 // self.cs)):
            self._set_refcount(bm.table_offset + i * self.cs, 0)

    def _write_directory(self, bitmaps: list[Bitmap]) -> None:
        if self.version < 3:
            raise Unsupported("persistent bitmaps need a qcow2 v3 image (compat 1.1)")
        raw = b"".join(b.raw for b in bitmaps)
        old = next((d for t, d, _ in self._extensions() if t == EXT_BITMAPS), None)
        doff = 0
        if raw:
            doff = self._alloc(raw)
        exts = [(t, d) for t, d, _ in self._extensions() if t != EXT_BITMAPS]
        if bitmaps:
            exts.append((EXT_BITMAPS, struct.pack(">IIQQ", len(bitmaps), 0, len(raw), doff)))
        area = b"".join(
            struct.pack(">II", t, len(d)) + d + bytes(_pad8(len(d)) - len(d)) for t, d in exts
        )
        area += bytes(8)  # the end marker
        backing_off, backing_len = struct.unpack(">QI", self.head[8:20])
        backing = self.head[backing_off : backing_off + backing_len] if backing_off else b""
        if self.header_len + len(area) + len(backing) > self.cs:
            raise Unsupported("no room for the bitmaps extension in the qcow2 header")
        head = bytearray(self.head)
        start = self.header_len
        head[start : start + len(area)] = area
        if backing:
            new_off = start + len(area)
            head[new_off : new_off + len(backing)] = backing
            head[8:16] = struct.pack(">Q", new_off)
        autoclear = (
            self.autoclear | AUTOCLEAR_BITMAPS if bitmaps else self.autoclear & ~AUTOCLEAR_BITMAPS
        )
        head[88:96] = struct.pack(">Q", autoclear)
        used = start + len(area) + len(backing)
        self.io.pwrite(0, bytes(head[:used]))
        self.head = bytes(head)
        self.autoclear = autoclear
        if old is not None:
            _, _, osize, ooff = struct.unpack(">IIQQ", old[:24])
            for i in range(-(-osize // self.cs)):
                self._set_refcount(ooff + i * self.cs, 0)
        self.bitmaps = bitmaps

    # -- allocation and refcounts ---------------------------------------------------------

    def _writable(self) -> None:
        if self.refcount_order != 4:
            raise Unsupported(f"refcounts of {1 << self.refcount_order} bits (only 16 are written)")
        if self.incompat & INCOMPAT_DIRTY:
            raise Unsupported("a qcow2 image not closed cleanly (dirty): run qemu-img check -r")

    def _table(self) -> list[int]:
        if self._rt is None:
            n = self.rt_clusters * self.cs // 8
            self._rt = list(struct.unpack(f">{n}Q", self.io.pread(self.rt_offset, n * 8)))
        return self._rt

    def _block(self, off: int) -> bytearray:
        if off not in self._rb:
            self._rb[off] = bytearray(self.io.pread(off, self.cs).ljust(self.cs, b"\0"))
        return self._rb[off]

    def _set_refcount(self, host: int, value: int) -> None:
        per = self.cs // 2
        cluster = host // self.cs
        ti, bi = divmod(cluster, per)
        table = self._table()
        boff = table[ti] & OFFSET_MASK if ti < len(table) else 0
        if not boff:
            raise Unsupported("a refcount block is missing")
        block = self._block(boff)
        block[2 * bi : 2 * bi + 2] = struct.pack(">H", value)
        self.io.pwrite(boff + 2 * bi, struct.pack(">H", value))

    def _grown(self, end: int) -> None:
        if self.io.size() < end:
            raise NoSpace("the storage is full: the volume file did not grow by what was written")

    def _alloc(self, content: bytes) -> int:
        """New contiguous clusters at the end of the file holding ``content`` (padded to
        whole clusters), refcount 1 each, and a refcount block for them if their part of
        the file has none yet. Content first, checked to have landed, then the refcounts:
        no metadata ever points past the end of the file."""
        n = max(1, -(-len(content) // self.cs))
        content = content.ljust(n * self.cs, b"\0")
        per = self.cs // 2
        table = self._table()
        while True:
            start = self._end
            first, last = start // self.cs, start // self.cs + n - 1
            missing = [
                ti
                for ti in range(first // per, last // per + 1)
                if not (ti < len(table) and table[ti])
            ]
            if not missing:
                break
            ti = missing[0]
            if ti >= len(table):
                raise Unsupported("the refcount table is full (it would have to grow)")
            boff = self._end  # the new block covers itself when it falls in its own range
            self._end += self.cs
            block = bytearray(self.cs)
            if boff // self.cs // per == ti:
                bi = boff // self.cs % per
                block[2 * bi : 2 * bi + 2] = struct.pack(">H", 1)
            self.io.pwrite(boff, bytes(block))
            self._grown(boff + self.cs)
            self._rb[boff] = block
            table[ti] = boff
            self.io.pwrite(self.rt_offset + 8 * ti, struct.pack(">Q", boff))
            if boff // self.cs // per != ti:
                self._set_refcount(boff, 1)
        self.io.pwrite(start, content)
        self._grown(start + n * self.cs)
        self._end += n * self.cs
        for i in range(n):
            self._set_refcount(start + i * self.cs, 1)
        return start

    # -- writing ------------------------------------------------------------------------

    def write(self, offset: int, data: bytes | None, length: int) -> None:
        """Write ``data`` (None: ``length`` zero bytes) at guest ``offset``."""
        self._writable()
        if offset + length > self.size:
            raise ValueError(f"{length} bytes at {offset} end past the disk ({self.size} bytes)")
        per = self.cs // 8
        pos, end = offset, offset + length
        changed: list[tuple[int, int]] = []
        while pos < end:
            cluster, within = divmod(pos, self.cs)
            n = min(self.cs - within, end - pos)
            piece = None if data is None else data[pos - offset : pos - offset + n]
            l1i, l2i = divmod(cluster, per)
            l1 = self._l1[l1i] if l1i < len(self._l1) else 0
            if l1 & OFFSET_MASK and not l1 & COPIED:
                raise Unsupported(
                    "an L2 table is shared with an internal snapshot (delete the VM's snapshots "
                    "to write through the upload path)"
                )
            entry = self._entry(cluster)
            if entry & COMPRESSED:
                raise Unsupported("a qcow2 image with compressed clusters")
            host = entry & OFFSET_MASK
            if host and not entry & COPIED:
                raise Unsupported(
                    "the cluster is shared with an internal snapshot (delete the VM's snapshots "
                    "to write through the upload path)"
                )
            if piece is None and not host and (entry & ZERO or self.backing is None):
                pos += n  # zeroes over zeroes: nothing changes, no bit is set
                continue
            changed.append((pos, n))
            if host and not entry & ZERO:
                self.io.pwrite(host + within, piece if piece is not None else bytes(n))
            else:
                if entry & ZERO or self.backing is None:
                    old = bytearray(self.cs)
                else:
                    old = bytearray(self.backing.read_clipped(cluster * self.cs, self.cs))
                old[within : within + n] = piece if piece is not None else bytes(n)
                if host:
                    self.io.pwrite(host, bytes(old))
                else:
                    host = self._alloc(bytes(old))
                self._set_l2(l1i, l2i, host | COPIED)
            pos += n
        for start, n in _merge_runs(changed):
            self._mark(start, n)

    def _set_l2(self, l1i: int, l2i: int, value: int) -> None:
        if l1i >= len(self._l1):
            raise Unsupported("the L1 table is too small for the disk")
        l1 = self._l1[l1i]
        if l1 & OFFSET_MASK and not l1 & COPIED:
            raise Unsupported("an L2 table is shared with an internal snapshot")
        table = self._l2_table(l1i)
        if table is None:
            off = self._alloc(bytes(self.cs))
            table = [0] * (self.cs // 8)
            self._l2[l1i] = table
            self._l1[l1i] = off | COPIED
            self.io.pwrite(self.l1_offset + 8 * l1i, struct.pack(">Q", off | COPIED))
        table[l2i] = value
        off = self._l1[l1i] & OFFSET_MASK
        self.io.pwrite(off + 8 * l2i, struct.pack(">Q", value))


class RawImage:
    """A raw volume: the file's bytes are the disk's content."""

    bitmaps: list[Bitmap] = []

    def __init__(self, io: Io, size: int) -> None:
        self.io = io
        self.size = size

    def read(self, offset: int, length: int) -> bytes:
        return self.io.pread(offset, length).ljust(length, b"\0")

    def read_clipped(self, offset: int, length: int) -> bytes:
        have = max(0, min(length, self.size - offset))
        return (self.read(offset, have) if have else b"").ljust(length, b"\0")

    def allocated(self) -> list[tuple[int, int]]:
        return [(0, self.size)] if self.size else []

    def write(self, offset: int, data: bytes | None, length: int) -> None:
        self.io.pwrite(offset, data if data is not None else bytes(length))


def _merge_runs(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for o, n in runs:
        if out and out[-1][0] + out[-1][1] == o:
            out[-1] = (out[-1][0], out[-1][1] + n)
        else:
            out.append((o, n))
    return out


def _runs(flags: list[bool], unit: int, limit: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i, on in enumerate(flags):
        if not on:
            continue
        start = i * unit
        stop = min((i + 1) * unit, limit)
        if out and out[-1][0] + out[-1][1] == start:
            out[-1] = (out[-1][0], stop - out[-1][0])
        else:
            out.append((start, stop - start))
    return out
