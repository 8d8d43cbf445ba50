"""Backup and restore primitives over xapi's own interfaces (vmctl.spi DiskAccess,
ChangedBlocks, DiskWriter), mixed into XenDriver.

The flow XenServer backup vendors use (Xen Orchestra's delta backups, the
XS-CBT-backup reference client):

* a point in time is ``VM.snapshot`` (all disks of the VM at one moment), after
  ``VDI.enable_cbt`` on each disk, so that each snapshot VDI closes a CBT log;
* the content is read from the snapshot VDIs through ``GET /export_raw_vdi?format=vhd``
  (ocaml/xapi/export_raw_vdi.ml): a dynamic VHD whose block allocation table says which
  2 MiB blocks hold data (the allocated extents) and whose blocks arrive in disk order, so
  one stream per disk serves the core's in-order reads and holes never cross the wire;
* closing the point in time destroys the snapshot VM (``VM.destroy`` keeps its VDIs) and
  ``VDI.data_destroy``s each snapshot VDI: its data goes, its CBT metadata stays (type
  ``cbt_metadata``), and its UUID is the disk's checkpoint. The next backup asks
  ``VDI.list_changed_blocks(checkpoint, new snapshot)`` for a base64 bitmap of 64 KiB
  blocks. Only the ``KEEP_CHECKPOINTS`` newest checkpoints of a disk are kept; an older
  one (or one whose chain was broken by ``VDI.disable_cbt``) gives NotFound, and the core
  reads the disk whole;
* where the host exports VDIs over NBD (``VDI.get_nbd_info`` names servers: a network of
  the pool has purpose ``nbd`` (TLS) or ``insecure_nbd``), reads that are not part of a
  whole-disk stream go over NBD (xapi-nbd: EXPORT_NAME ``/<vdi uuid>?session_id=<ref>``,
  simple replies, reads 512-byte aligned): an incremental reads only the pieces the
  changed blocks touch, not every allocated block as the VHD stream would. A full backup
  still reads the VHD stream: xapi-nbd offers no block status, and the stream's table is
  how the allocated extents are known (one sequential transfer, holes never sent). Without
  NBD info (or when no server listed answers) every read goes through the VHD stream;
* writes (restore) go through ``PUT /import_raw_vdi?format=vhd`` (import_raw_vdi.ml) into
  the disk's VDI, as a dynamic VHD whose sector bitmaps mark exactly the bytes written
  (xapi's vhd-tool writes only the marked sectors), each transfer reporting to a task of
  our own (``task.create``, passed as ``task_id``).

Quiesce is not offered: xapi removed ``VM.snapshot_with_quiesce`` (VSS) in release
"quebec" (ocaml/idl/datamodel_vm.ml).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import socket
import ssl
import struct
import threading
import time
import urllib.parse
import uuid as uuidlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from vmctl import (
    AuthenticationError,
    BackendError,
    InvalidState,
    NotFound,
    PowerState,
    ValidationError,
    VmctlError,
)
from vmctl.nbd import NbdClient, NbdError
from vmctl.spi import (
    ChangedBlocks,
    Consistency,
    Deadline,
    DiskAccess,
    DiskWriter,
    Extent,
    ExtentData,
    PointInTime,
    PointInTimeDisk,
)

from . import _errors
from ._errors import power_state
from ._session import NULL
from ._transport import _HTTPConnection, _PinnedHTTPSConnection

if TYPE_CHECKING:
    from vmctl import URI

    from ._session import Connection

log = logging.getLogger("vmctl.xen")

#: VDI other_config key marking the snapshot VDIs (then CBT metadata) a backup made.
CHECKPOINT_KEY = "vmctl-backup-checkpoint"
#: Snapshot VM other_config key: "HOSTNAME PID" of the process whose point in time it is,
#: so that a later backup on the same machine can remove one a killed process left.
OWNER_KEY = "vmctl-backup-owner"
#: How many checkpoints (CBT-metadata-only snapshot VDIs) to keep per disk.
KEEP_CHECKPOINTS = 3
CBT_BLOCK = 64 * 1024  # datamodel.ml VDI.list_changed_blocks: "64k block increments"
SECTOR = 512
VHD_BLOCK = 2 * 1024 * 1024
_NO_BLOCK = 0xFFFFFFFF
_VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z
_SNAPSHOT_NAME = "vmctl-backup"
NBD_SECTOR = 512  # xapi-nbd (ocaml-nbd Server.serve): READ offset and length aligned, else EINVAL
NBD_MAX_READ = 32 * 1024 * 1024  # bytes per NBD read request (proto.md: servers may cap at 32 MiB)


def _disk_id(userdevice: str) -> str:
    if userdevice.isdigit() and int(userdevice) < 26:
        return "xvd" + chr(ord("a") + int(userdevice))
    return f"vbd{userdevice}"


def bitmap_extents(b64: str, size: int) -> list[Extent]:
    """The changed extents of a CBT bitmap (one bit per 64 KiB block, most significant bit
    of each byte first: sm drivers/VDI.py list_changed_blocks), clipped to ``size``."""
    import base64

    raw = base64.b64decode(b64)
    out: list[Extent] = []
    start = None
    for i in range(len(raw) * 8 + 1):
        on = i < len(raw) * 8 and raw[i // 8] & (0x80 >> (i % 8))
        if on and start is None:
            start = i
        elif not on and start is not None:
            lo, hi = start * CBT_BLOCK, min(i * CBT_BLOCK, size)
            if hi > lo:
                out.append(Extent(lo, hi - lo))
            start = None
    return out


# -- VHD (Microsoft's VHD specification: dynamic disks) -------------------------------------


def _owner() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


def _abandoned(owner: str) -> bool:
    """Whether a point in time's owner ("HOSTNAME PID") is a process of this machine that
    no longer runs (another machine's cannot be told, and is left alone)."""
    host, _, pid = owner.rpartition(" ")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _order(mark: str) -> int:
    """The nanosecond time a checkpoint mark ("NS PIT-ID") starts with."""
    head = mark.split(" ", 1)[0]
    return int(head) if head.isdigit() else 0


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def _checksum(data: bytes) -> int:
    return (~sum(data)) & 0xFFFFFFFF


def _footer(size: int) -> bytes:
    f = bytearray(512)
    struct.pack_into(
        ">8sIIQI4sI4sQQIII16sB",
        f,
        0,
        b"conectix",
        2,
        0x00010000,
        512,
        max(0, int(time.time()) - _VHD_EPOCH),
        b"vmct",
        0x00010000,
        b"Wi2k",
        size,
        size,
        0,
        3,  # dynamic
        0,
        uuidlib.uuid4().bytes,
        0,
    )
    struct.pack_into(">I", f, 64, _checksum(bytes(f)))
    return bytes(f)


def _header(entries: int) -> bytes:
    h = bytearray(1024)
    struct.pack_into(
        ">8sQQIII", h, 0, b"cxsparse", 0xFFFFFFFFFFFFFFFF, 1536, 0x00010000, entries, VHD_BLOCK
    )
    struct.pack_into(">I", h, 36, _checksum(bytes(h)))
    return bytes(h)


def _mark(bitmap: bytearray, first: int, end: int) -> None:
    """Set the bits of sectors ``first`` to ``end`` (exclusive) in a VHD block bitmap (the
    first sector is the most significant bit of byte 0): whole bytes at once."""
    while first < end and first % 8:
        bitmap[first // 8] |= 0x80 >> (first % 8)
        first += 1
    whole = (end - first) // 8
    if whole > 0:
        bitmap[first // 8 : first // 8 + whole] = b"\xff" * whole
        first += whole * 8
    while first < end:
        bitmap[first // 8] |= 0x80 >> (first % 8)
        first += 1


def vhd_of_extents(size: int, extents: Sequence[tuple[int, bytes]]) -> bytes:
    """A dynamic VHD of a disk of ``size`` bytes holding ``extents`` (sector-aligned
    offset, sector-multiple data; the last may end at ``size``): only the sectors written
    are marked in the block bitmaps."""
    blocks: dict[int, tuple[bytearray, bytearray]] = {}
    for offset, data in extents:
        pos = 0
        while pos < len(data):
            index, inner = divmod(offset + pos, VHD_BLOCK)
            n = min(VHD_BLOCK - inner, len(data) - pos)
            bitmap, buf = blocks.setdefault(index, (bytearray(SECTOR), bytearray(VHD_BLOCK)))
            buf[inner : inner + n] = data[pos : pos + n]
            _mark(bitmap, inner // SECTOR, -(-(inner + n) // SECTOR))
            pos += n
    entries = -(-size // VHD_BLOCK)
    bat_bytes = -(-(entries * 4) // SECTOR) * SECTOR
    bat = bytearray(b"\xff" * bat_bytes)
    first = (512 + 1024 + bat_bytes) // SECTOR
    order = sorted(blocks)
    for n, index in enumerate(order):
        struct.pack_into(">I", bat, index * 4, first + n * (1 + VHD_BLOCK // SECTOR))
    footer = _footer(size)
    parts = [footer, _header(entries), bytes(bat)]
    for index in order:
        bitmap, buf = blocks[index]
        parts += [bytes(bitmap), bytes(buf)]
    parts.append(footer)
    return b"".join(parts)


class _VhdReader:
    """Reads a VDI through one ``GET /export_raw_vdi?format=vhd`` stream: the block
    allocation table first, then the blocks in the order the stream holds them. A read
    behind the stream's position opens a new stream."""

    def __init__(
        self, opener: Callable[[Deadline], Any], size: int, deadline: Deadline, timeout: float
    ) -> None:
        self._opener = opener
        self.size = size
        self.deadline = deadline  # of the current read (set by the caller for each)
        self.timeout = timeout  # the longest socket wait
        self._resp: Any = None
        self._pos = 0
        self.where: dict[int, int] = {}  # 2 MiB block index -> byte offset in the stream
        self._block_size = VHD_BLOCK
        self._bitmap_bytes = SECTOR
        self._cache: tuple[int, bytes] | None = None
        self._open()

    def _take(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            piece = self._resp.read(min(n - len(out), 1 << 20))
            if not piece:
                raise BackendError(
                    "the VDI export ended early (the host's export task failed or the "
                    f"connection dropped) at byte {self._pos + len(out)}"
                )
            out += piece
        self._pos += n
        return bytes(out)

    def renew(self, deadline: Deadline) -> None:
        """Bound the next reads (and a new stream) by ``deadline``."""
        self.deadline = deadline
        sock = getattr(getattr(getattr(self._resp, "fp", None), "raw", None), "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(deadline.bound(self.timeout))

    def _open(self) -> None:
        self.close()
        self._resp = self._opener(self.deadline)
        self._pos = 0
        footer = self._take(512)
        if footer[:8] != b"conectix":
            raise BackendError("the VDI export is not a VHD (no conectix cookie)")
        (data_offset,) = struct.unpack_from(">Q", footer, 16)
        self._take(data_offset - self._pos)
        header = self._take(1024)
        if header[:8] != b"cxsparse":
            raise BackendError("the VDI export has no dynamic disk header")
        table, _ver, entries, block_size = struct.unpack_from(">QIII", header, 16)
        self._take(table - self._pos)
        bat = struct.unpack(
            f">{entries}I", self._take(-(-(entries * 4) // SECTOR) * SECTOR)[: entries * 4]
        )
        self._block_size = block_size
        self._bitmap_bytes = _round_up(_round_up(block_size // SECTOR, 8) // 8, SECTOR)
        self.where = {i: s * SECTOR for i, s in enumerate(bat) if s != _NO_BLOCK}

    def close(self) -> None:
        if self._resp is not None:
            with contextlib.suppress(Exception):
                self._resp.close()
            self._resp = None

    def allocated(self) -> list[Extent]:
        out: list[Extent] = []
        for index in sorted(self.where):
            lo = index * self._block_size
            hi = min(lo + self._block_size, self.size)
            if hi <= lo:
                continue
            if out and out[-1].end == lo:
                out[-1] = Extent(out[-1].offset, hi - out[-1].offset)
            else:
                out.append(Extent(lo, hi - lo))
        return out

    def _block(self, index: int) -> bytes | None:
        where = self.where.get(index)
        if where is None:
            return None
        if self._cache is not None and self._cache[0] == index:
            return self._cache[1]
        if self._resp is None or where < self._pos:
            self._open()
        while self._pos < where:
            self._take(min(where - self._pos, 1 << 20))
        bitmap = self._take(self._bitmap_bytes)
        data = self._take(self._block_size)
        if any(b != 0xFF for b in bitmap[: self._block_size // SECTOR // 8]):
            buf = bytearray(data)
            for s in range(self._block_size // SECTOR):
                if not bitmap[s // 8] & (0x80 >> (s % 8)):
                    buf[s * SECTOR : (s + 1) * SECTOR] = bytes(SECTOR)
            data = bytes(buf)
        self._cache = (index, data)
        return data

    def read(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        pos = offset
        while pos < offset + length:
            index, inner = divmod(pos, self._block_size)
            n = min(self._block_size - inner, offset + length - pos)
            block = self._block(index)
            if block is not None:
                out[pos - offset : pos - offset + n] = block[inner : inner + n]
            pos += n
        return bytes(out)


class _PitState:
    """What a point in time holds: the snapshot VM and, per disk, its snapshot VDI."""

    def __init__(self, snap_vm: str) -> None:
        self.snap_vm = snap_vm
        self.disks: dict[str, tuple[str, str, int]] = {}  # id -> (snap VDI, live VDI, size)
        self.readers: dict[str, _VhdReader] = {}
        self.nbd: dict[str, NbdClient | None] = {}  # None: no NBD for this disk
        self.nbd_lock = threading.Lock()  # one connection per disk, whichever thread reads
        self.extra: set[str] = set()  # snapshot VDIs of disks not backed up
        self.closed = False


class XenBackup(DiskAccess, ChangedBlocks, DiskWriter):
    """Mixed into XenDriver: needs its connection and helpers."""

    if TYPE_CHECKING:
        _c: Connection
        uri: URI

        def _vm(self, uuid: str, deadline: Deadline) -> tuple[str, dict[str, Any]]: ...
        def _call(self, what: str, method: str, *args: Any, deadline: Deadline) -> Any: ...
        def _run(self, what: str, method: str, *args: Any, deadline: Deadline) -> Any: ...
        def _devices(
            self, rec: dict[str, Any], deadline: Deadline
        ) -> tuple[
            list[tuple[str, dict[str, Any], dict[str, Any] | None]],
            list[tuple[str, dict[str, Any]]],
        ]: ...

    # -- HTTP ------------------------------------------------------------------------------

    def _http(self, timeout: float) -> http.client.HTTPConnection:
        url = urllib.parse.urlsplit(self._c.url)
        host = url.netloc
        tls = getattr(self._c, "_tls", None)
        if url.scheme == "https":
            assert tls is not None
            return _PinnedHTTPSConnection(
                host, timeout=timeout, context=tls, pin=getattr(self._c, "_pin", None)
            )
        return _HTTPConnection(host, timeout=timeout)

    def _transfer(
        self,
        what: str,
        method: str,
        path: str,
        args: dict[str, str],
        deadline: Deadline,
        body: bytes | None = None,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """One request to a xapi HTTP handler with the session's credentials (a new
        session once if the host says 401). The session id is a secret: it is in the
        request only, never in a message."""
        for attempt in (1, 2):
            session = self._c.ref or ""
            query = urllib.parse.urlencode({"session_id": session, **args})
            conn = self._http(deadline.bound(self._c.rpc_timeout))
            try:
                headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
                conn.request(method, f"{path}?{query}", body=body, headers=headers)
                resp = conn.getresponse()
            except Exception as exc:
                conn.close()
                raise _errors.from_exception(what, exc) from None
            if resp.status == 401 and attempt == 1:
                conn.close()
                self._c.relogin(deadline, stale=session)
                continue
            if resp.status != 200:
                text = resp.read(2000).decode("latin-1", "replace")
                conn.close()
                if resp.status == 401:
                    raise AuthenticationError(f"{what}: the host refused the session (HTTP 401)")
                raise BackendError(f"{what}: HTTP {resp.status} {resp.reason}: {text[:300]}")
            return conn, resp
        raise AssertionError("unreachable")

    def _new_task(self, what: str, deadline: Deadline) -> str:
        return str(self._call(what, "task.create", f"vmctl: {what}", "", deadline=deadline))

    def _task_outcome(self, what: str, task: str, deadline: Deadline) -> None:
        """The HTTP handler has ended (connection closed): its task's status decides."""
        try:
            rec = self._call(what, "task.get_record", task, deadline=deadline)
        finally:
            with contextlib.suppress(VmctlError):
                self._call(what, "task.destroy", task, deadline=deadline)
        status = str(rec.get("status"))
        if status == "success":
            return
        desc = [str(x) for x in rec.get("error_info") or []]
        if status == "failure" and desc:
            raise _errors.from_failure(what, desc)
        raise BackendError(f"{what}: the host's task ended {status} ({desc})")

    # -- DiskAccess ------------------------------------------------------------------------

    def open_point_in_time(self, uuid: str, *, quiesce: bool, deadline: Deadline) -> PointInTime:
        ref, rec = self._vm(uuid, deadline)
        name = rec["name_label"]
        what = f"take a point in time of VM {name!r}"
        if quiesce:
            raise InvalidState(
                f"cannot quiesce VM {name!r}: xapi removed VM.snapshot_with_quiesce (VSS)",
                current=power_state(str(rec.get("power_state"))),
            )
        if rec.get("snapshots"):
            self._remove_abandoned(ref, what, deadline)
        disks, _ = self._devices(rec, deadline)
        live: dict[str, tuple[str, dict[str, Any]]] = {}
        for _vbd, b, vdi in disks:
            if vdi is None:
                continue
            vref = str(b["VDI"])
            live[_disk_id(str(b.get("userdevice")))] = (vref, vdi)
            if not vdi.get("cbt_enabled"):
                self._call(what, "VDI.enable_cbt", vref, deadline=deadline)
        state = power_state(str(rec.get("power_state")))
        pit_id = uuidlib.uuid4().hex
        snap = str(
            self._run(what, "VM.snapshot", ref, f"{_SNAPSHOT_NAME} {pit_id}", deadline=deadline)
        )
        pit = _PitState(snap)
        try:
            self._call(what, "VM.add_to_other_config", snap, OWNER_KEY, _owner(), deadline=deadline)
            vbds = self._call(
                what, "VBD.get_all_records_where", f'field "VM" = "{snap}"', deadline=deadline
            )
            out = []
            for b in sorted(vbds.values(), key=lambda b: str(b.get("userdevice"))):
                disk_id = _disk_id(str(b.get("userdevice")))
                sref = str(b.get("VDI"))
                if b.get("type") != "Disk" or sref in ("", NULL):
                    continue
                if disk_id not in live:
                    pit.extra.add(sref)
                    continue
                vdi = live[disk_id][1]
                mark = f"{time.time_ns()} {pit_id}"
                self._call(
                    what, "VDI.add_to_other_config", sref, CHECKPOINT_KEY, mark, deadline=deadline
                )
                size = int(vdi.get("virtual_size", 0))
                pit.disks[disk_id] = (sref, live[disk_id][0], size)
                out.append(
                    PointInTimeDisk(
                        id=disk_id,
                        size_bytes=size,
                        name=str(vdi.get("name_label")) or None,
                        checkpoint=str(self._call(what, "VDI.get_uuid", sref, deadline=deadline)),
                    )
                )
        except BaseException:
            self._drop_snapshot(pit, what, deadline, keep_metadata=False)
            raise
        consistency = Consistency.STOPPED if state is PowerState.STOPPED else Consistency.CRASH
        return PointInTime(
            id=pit_id, vm_uuid=uuid, disks=tuple(out), consistency=consistency, handle=pit
        )

    def _remove_abandoned(self, ref: str, what: str, deadline: Deadline) -> None:
        """Destroy the snapshot VMs (and their VDIs) of points in time whose process is
        gone: killed backups on this machine (their owner's PID no longer runs)."""
        snaps = self._call(
            what, "VM.get_all_records_where", f'field "snapshot_of" = "{ref}"', deadline=deadline
        )
        for sref, srec in snaps.items():
            owner = str(srec.get("other_config", {}).get(OWNER_KEY, ""))
            if not owner or not _abandoned(owner):
                continue
            log.info("removing %s, left by a backup that did not finish", srec.get("name_label"))
            vdis = set()
            for vbd in srec.get("VBDs", []):
                with contextlib.suppress(NotFound):
                    vdi = self._call(what, "VBD.get_VDI", vbd, deadline=deadline)
                    if vdi not in ("", NULL):
                        vdis.add(str(vdi))
            with contextlib.suppress(NotFound):
                self._call(what, "VM.destroy", sref, deadline=deadline)
            for vdi in sorted(vdis):
                with contextlib.suppress(NotFound):
                    self._call(what, "VDI.destroy", vdi, deadline=deadline)

    def _state(self, pit: PointInTime, disk_id: str) -> tuple[_PitState, str, int]:
        state = pit.handle
        if not isinstance(state, _PitState) or state.closed:
            raise NotFound(f"the point in time {pit.id} is closed")
        if disk_id not in state.disks:
            raise NotFound(f"the point in time {pit.id} has no disk {disk_id!r}")
        sref, _live, size = state.disks[disk_id]
        return state, sref, size

    def _reader(self, pit: PointInTime, disk_id: str, deadline: Deadline) -> _VhdReader:
        state, sref, size = self._state(pit, disk_id)
        reader = state.readers.get(disk_id)
        if reader is None:
            reader = state.readers[disk_id] = self._export_reader(
                sref, size, f"read disk {disk_id} at point in time {pit.id}", deadline
            )
        else:
            reader.renew(deadline)
        return reader

    def _export_reader(self, vdi: str, size: int, what: str, deadline: Deadline) -> _VhdReader:
        """A reader of ``GET /export_raw_vdi?vdi=&format=vhd``."""

        def opener(dl: Deadline) -> Any:
            _conn, resp = self._transfer(
                what, "GET", "/export_raw_vdi", {"vdi": vdi, "format": "vhd"}, dl
            )
            return resp

        return _VhdReader(opener, size, deadline, self._c.rpc_timeout)

    def allocated_extents(
        self, pit: PointInTime, disk_id: str, *, deadline: Deadline
    ) -> list[Extent]:
        return self._reader(pit, disk_id, deadline).allocated()

    def read_extent(
        self, pit: PointInTime, disk_id: str, offset: int, length: int, *, deadline: Deadline
    ) -> bytes:
        _state, _sref, size = self._state(pit, disk_id)
        if offset < 0 or length <= 0 or offset + length > size:
            raise ValidationError(
                f"cannot read {length} bytes at {offset} of a disk of {size} bytes",
                field="extent",
            )
        if disk_id not in _state.readers:  # no whole-disk stream open: NBD if the host has it
            client = self._nbd_client(_state, disk_id, _sref, deadline)
            if client is not None:
                data = self._nbd_read(_state, disk_id, client, offset, length, size, deadline)
                if data is not None:
                    return data
        reader = self._reader(pit, disk_id, deadline)
        try:
            return reader.read(offset, length)
        except VmctlError:
            reader.close()
            _state.readers.pop(disk_id, None)
            raise
        except Exception as exc:
            reader.close()
            _state.readers.pop(disk_id, None)
            raise _errors.from_exception(f"read disk {disk_id}", exc) from exc

    # -- NBD -------------------------------------------------------------------------------

    def _nbd_client(
        self, state: _PitState, disk_id: str, vdi: str, deadline: Deadline
    ) -> NbdClient | None:
        with state.nbd_lock:
            if disk_id not in state.nbd:
                what = f"read disk {disk_id} over NBD"
                state.nbd[disk_id] = self._nbd_connect(vdi, what, deadline)
            return state.nbd[disk_id]

    def _nbd_connect(self, vdi: str, what: str, deadline: Deadline) -> NbdClient | None:
        """A connection to the first NBD server ``VDI.get_nbd_info`` lists that answers, or
        None: no NBD on this host (then the VHD stream serves)."""
        try:
            infos = self._call(what, "VDI.get_nbd_info", vdi, deadline=deadline)
        except VmctlError as exc:
            if exc.vendor_code == "MESSAGE_METHOD_UNKNOWN":  # a host before NBD (Inverness)
                return None
            raise
        if not infos:
            return None
        # xapi-nbd decides per connection from the pool's network purposes: any ``nbd``
        # means TLS (FORCEDTLS), ``insecure_nbd`` plain (NOTLS).
        nets = self._call(what, "network.get_all_records", deadline=deadline)
        tls = any("nbd" in (rec.get("purpose") or []) for rec in nets.values())
        last: BaseException | None = None
        for info in infos:
            ctx = None
            address = str(info.get("address", ""))
            subject = str(info.get("subject") or "")
            if tls:
                try:
                    ctx = ssl.create_default_context(cadata=str(info.get("cert", "")))
                except (ssl.SSLError, ValueError) as exc:
                    last = exc
                    continue
                ctx.check_hostname = bool(subject)  # the certificate itself is pinned
            try:
                return NbdClient.connect_tcp(
                    address.strip("[]"),
                    int(info.get("port", 10809)),
                    str(info.get("exportname", "")),
                    [],
                    deadline.bound(self._c.rpc_timeout),
                    tls=ctx,
                    server_hostname=subject or None,
                )
            except (OSError, NbdError) as exc:
                last = exc
                log.info("NBD server %s:%s did not serve: %s", address, info.get("port"), exc)
        log.warning(
            "no NBD server of the host served the VDI (%s); reading through /export_raw_vdi",
            type(last).__name__ if last else "none listed",
        )
        return None

    def _nbd_read(
        self,
        state: _PitState,
        disk_id: str,
        client: NbdClient,
        offset: int,
        length: int,
        size: int,
        deadline: Deadline,
    ) -> bytes | None:
        """The bytes, or None when NBD cannot serve them (a partial last sector of a disk
        whose size is not a multiple of 512: xapi-nbd reads whole sectors only)."""
        lo = offset - offset % NBD_SECTOR
        hi = min(_round_up(offset + length, NBD_SECTOR), size - size % NBD_SECTOR)
        if hi < offset + length:
            return None
        out = bytearray()
        try:
            pos = lo
            while pos < hi:
                n = min(NBD_MAX_READ, hi - pos)
                client.settimeout(deadline.bound(self._c.rpc_timeout))
                out += client.read(pos, n)
                pos += n
        except (OSError, NbdError) as exc:
            state.nbd.pop(disk_id, None)  # the next read connects again
            with contextlib.suppress(Exception):
                client.close()
            if isinstance(exc, NbdError):
                raise BackendError(f"read disk {disk_id} over NBD: {exc}") from exc
            raise _errors.from_exception(f"read disk {disk_id} over NBD", exc) from exc
        return bytes(out[offset - lo : offset - lo + length])

    def close_point_in_time(self, pit: PointInTime, *, deadline: Deadline) -> None:
        state = pit.handle
        if not isinstance(state, _PitState) or state.closed:
            return
        self._drop_snapshot(state, f"release point in time {pit.id}", deadline, keep_metadata=True)

    def _drop_snapshot(
        self, state: _PitState, what: str, deadline: Deadline, *, keep_metadata: bool
    ) -> None:
        """VM.destroy the snapshot VM (its VDIs stay), then VDI.data_destroy each snapshot
        VDI (only its CBT metadata stays) or, without ``keep_metadata``, VDI.destroy it;
        then forget the disks' older checkpoints."""
        for reader in state.readers.values():
            reader.close()
        state.readers.clear()
        for client in state.nbd.values():
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        state.nbd.clear()
        disk_vdis = {sref for sref, _l, _s in state.disks.values()}
        with contextlib.suppress(NotFound):
            self._call(what, "VM.destroy", state.snap_vm, deadline=deadline)
        state.closed = True
        for sref in sorted(disk_vdis | state.extra):
            with contextlib.suppress(NotFound):
                if keep_metadata and sref in disk_vdis:
                    self._call(what, "VDI.data_destroy", sref, deadline=deadline)
                else:
                    self._call(what, "VDI.destroy", sref, deadline=deadline)
        for _sref, live, _size in state.disks.values():
            self._forget_checkpoints(live, what, deadline, keep=KEEP_CHECKPOINTS)

    def _checkpoints(
        self, live: str, what: str, deadline: Deadline
    ) -> list[tuple[str, dict[str, Any]]]:
        """The checkpoints of a disk, oldest first: (VDI ref, VDI record)."""
        out = []
        found = self._call(
            what, "VDI.get_all_records_where", f'field "snapshot_of" = "{live}"', deadline=deadline
        )
        for snap, rec in found.items():
            mark = str(rec.get("other_config", {}).get(CHECKPOINT_KEY, ""))
            if mark and rec.get("type") == "cbt_metadata":
                out.append((_order(mark), str(snap), rec))
        return [(ref, rec) for _o, ref, rec in sorted(out, key=lambda x: x[0])]

    def _forget_checkpoints(self, live: str, what: str, deadline: Deadline, *, keep: int) -> None:
        try:
            found = self._checkpoints(live, what, deadline)
        except NotFound:
            return
        for sref, _rec in found[: max(0, len(found) - keep)]:
            with contextlib.suppress(NotFound):
                self._call(what, "VDI.destroy", sref, deadline=deadline)

    def backup_leftovers(
        self, vdis: Sequence[str], deadline: Deadline
    ) -> list[tuple[str, dict[str, Any]]]:
        """The checkpoints of these (live) VDIs, for a VM's deletion to take along."""
        out: list[tuple[str, dict[str, Any]]] = []
        for vdi in vdis:
            with contextlib.suppress(NotFound):
                out += self._checkpoints(vdi, "list the disk's checkpoints", deadline)
        return out

    # -- ChangedBlocks ---------------------------------------------------------------------

    def changed_extents(
        self, pit: PointInTime, disk_id: str, since: str, *, deadline: Deadline
    ) -> list[Extent]:
        _state, sref, size = self._state(pit, disk_id)
        what = f"list the blocks of disk {disk_id} changed since {since}"
        try:
            old = str(self._call(what, "VDI.get_by_uuid", since, deadline=deadline))
        except NotFound as exc:
            raise NotFound(f"{what}: the host no longer has that checkpoint") from exc
        try:
            bitmap = self._call(what, "VDI.list_changed_blocks", old, sref, deadline=deadline)
        except VmctlError as exc:
            code = exc.vendor_code or ""
            if code.startswith("SR_BACKEND_FAILURE_460") or code == "VDI_NO_CBT_METADATA":
                raise NotFound(
                    f"{what}: the host cannot relate it to this disk (changed-block tracking "
                    "was reset, or the disk was replaced)",
                    vendor_code=code,
                ) from exc
            raise
        return bitmap_extents(str(bitmap), size)

    # -- DiskWriter ------------------------------------------------------------------------

    def write_extents(
        self, uuid: str, disk_id: str, extents: Sequence[ExtentData], *, deadline: Deadline
    ) -> None:
        _ref, rec = self._vm(uuid, deadline)
        name = rec["name_label"]
        what = f"write to disk {disk_id} of VM {name!r}"
        state = power_state(str(rec.get("power_state")))
        if state is not PowerState.STOPPED:
            raise InvalidState(
                f"cannot write to the disks of VM {name!r}: it is {state.value}",
                current=state,
                allowed={PowerState.STOPPED},
            )
        disks, _ = self._devices(rec, deadline)
        hit = [
            (str(b["VDI"]), int(v.get("virtual_size", 0)))
            for _vbd, b, v in disks
            if v is not None and _disk_id(str(b.get("userdevice"))) == disk_id
        ]
        if not hit:
            raise NotFound(f"VM {name!r} has no disk {disk_id!r}")
        vdi, size = hit[0]
        for e in extents:
            if e.end > size:
                raise ValidationError(
                    f"an extent of {e.length} bytes at {e.offset} ends past the end of disk "
                    f"{disk_id!r} ({size} bytes)",
                    field="extents",
                )
        if not extents:
            return
        pieces = self._sector_aligned(vdi, size, extents, what, deadline)
        body = vhd_of_extents(size, pieces)
        task = self._new_task(what, deadline)
        conn, resp = self._transfer(
            what,
            "PUT",
            "/import_raw_vdi",
            {"vdi": vdi, "format": "vhd", "task_id": task},
            deadline,
            body=body,
        )
        try:
            resp.read()
        except Exception as exc:
            raise _errors.from_exception(what, exc) from exc
        finally:
            conn.close()
        self._task_outcome(what, task, deadline)

    def _sector_aligned(
        self,
        vdi: str,
        size: int,
        extents: Sequence[ExtentData],
        what: str,
        deadline: Deadline,
    ) -> list[tuple[int, bytes]]:
        """The extents widened to whole sectors (a VHD marks sectors): the bytes around an
        unaligned edge are read from the VDI first."""
        edges: set[int] = set()
        for e in extents:
            if e.offset % SECTOR:
                edges.add(e.offset // SECTOR)
            if e.end % SECTOR and e.end < size:
                edges.add(e.end // SECTOR)
        existing: dict[int, bytes] = {}
        if edges:
            reader = self._export_reader(vdi, size, what, deadline)
            try:
                for s in sorted(edges):
                    existing[s] = reader.read(s * SECTOR, min(SECTOR, size - s * SECTOR))
            finally:
                reader.close()
        out = []
        for e in extents:
            lo = e.offset - e.offset % SECTOR
            hi = min(-(-e.end // SECTOR) * SECTOR, size)
            if e.data is not None and (lo, hi) == (e.offset, e.end):
                out.append((lo, e.data))  # aligned already: no copy
                continue
            buf = bytearray(hi - lo)
            if lo != e.offset:
                buf[:SECTOR] = existing[lo // SECTOR].ljust(SECTOR, b"\0")[: min(SECTOR, hi - lo)]
            if hi != e.end and hi - SECTOR >= lo:
                tail = existing.get((hi - 1) // SECTOR)
                if tail is not None:
                    buf[hi - SECTOR - lo :] = tail.ljust(SECTOR, b"\0")[:SECTOR]
            buf[e.offset - lo : e.end - lo] = e.data if e.data is not None else bytes(e.length)
            out.append((lo, bytes(buf)))
        return out
