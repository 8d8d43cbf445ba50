"""Backup and restore primitives of the KVM driver (``DiskAccess``, ``ChangedBlocks``,
``DiskWriter``), mixed into ``KvmDriver``. See docs/kvm.md#backup for what and why.

* A **running** (or paused) VM: ``virDomainBackupBegin`` in pull mode. QEMU exports every
  disk, frozen at that moment (a fleecing overlay in a scratch qcow2 next to the disk), on
  an NBD server (a UNIX socket on a local host, TCP on a remote one); ``_nbd`` reads it,
  with ``base:allocation`` block status for the allocated extents. The job creates a
  libvirt checkpoint (a persistent dirty bitmap per qcow2 disk) atomically with it; when
  the domain has an earlier vmctl checkpoint the job is incremental from the newest one,
  and its exported bitmap (``qemu:dirty-bitmap:backup-DISK``) gives the changed extents.
  Quiesce: ``virDomainFSFreeze`` through qemu-guest-agent around the job's start.
* A **stopped** VM: its volumes are read through ``virStorageVolDownload`` ranges and
  decoded as qcow2 by ``_qcow2`` (libvirt streams the file's bytes). libvirt 9.0 refuses to
  create a checkpoint of an inactive domain, so the checkpoint is made as QEMU would: an
  empty enabled persistent bitmap added to each qcow2 (v3) volume, then the checkpoint's
  metadata defined with ``VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE``; its changed extents are
  read from the bitmap in the image.
* Writes into a stopped VM's disks: ``virStorageVolUpload`` ranges through ``_qcow2``,
  which sets the written bits in every enabled bitmap (as QEMU does), so the next
  incremental backup sees them.
* Checkpoints do not pile up: closing a point in time deletes the domain's older vmctl
  checkpoints (with their bitmaps). ``delete_vm`` undefines with the checkpoints' metadata
  and deletes the volumes (the bitmaps live in them).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import secrets
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from typing import Any

from vmctl import (
    InsufficientResources,
    InvalidState,
    NotFound,
    NotSupported,
    OperationTimeout,
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

from . import _errors as E
from . import _xml as X
from ._link import Link, require_libvirt
from ._qcow2 import Image, NoSpace, RawImage, Unsupported

PREFIX = "vmctl-"
ALLOCATION = "base:allocation"
BITMAP_CONTEXT = "qemu:dirty-bitmap:"
SOCKET_DIR = "/var/lib/libvirt/qemu"
VOL_GET_PHYSICAL = 1
STREAM_PIECE = 4 << 20
STREAMS, STREAM_PART = 4, 1 << 20  # parallel downloads of one read, and their least size
JOB_END_WAIT_S = 5.0

_guard = threading.Lock()
_vm_locks: dict[str, threading.Lock] = {}


def _vm_lock(uuid: str) -> threading.Lock:
    """Serialises this process's changes to one stopped VM's images (bitmap directories,
    refcounts): two writers through the streams would race. Other processes are not held
    back (docs/kvm.md#backup)."""
    with _guard:
        return _vm_locks.setdefault(uuid, threading.Lock())


class VolIo:
    """Byte ranges of a volume file through libvirt streams. A read of at least
    2 x STREAM_PART bytes runs as up to STREAMS downloads at once (libvirtd serves each
    stream with its own reader; one stream is bound by its round trips)."""

    def __init__(self, conn: Callable[[], Any], vol: Any) -> None:
        self._conn = conn
        self._vol = vol
        self._size: int | None = None  # the file's size, until this Io writes

    def pread(self, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        size = self.size()
        length = max(0, min(length, size - offset))
        if length == 0:
            return b""
        buf = bytearray(length)
        view = memoryview(buf)
        n = min(STREAMS, length // STREAM_PART)
        if n <= 1:
            got = self._download_into(offset, view)
        else:
            step = -(-length // n)
            parts = [(o, view[o : o + step]) for o in range(0, length, step)]
            gots = _in_threads(
                [functools.partial(self._download_into, offset + o, part) for o, part in parts]
            )
            got = 0
            for (o, part), g in zip(parts, gots, strict=True):
                got = o + g
                if g < len(part):  # the file ended early (it shrank meanwhile)
                    break
        return bytes(view[:got]) if got < length else bytes(buf)

    def _download_into(self, offset: int, into: memoryview) -> int:
        """Stream ``len(into)`` bytes of the file at ``offset`` into ``into``; the number
        received (fewer only where the file ends)."""
        length = len(into)
        st = self._conn().newStream(0)
        self._vol.download(st, offset, length, 0)
        got = 0
        try:
            while got < length:
                part = st.recv(min(STREAM_PIECE, length - got))
                if not isinstance(part, bytes) or not part:
                    break
                into[got : got + len(part)] = part
                got += len(part)
            st.finish()
        except BaseException:
            with contextlib.suppress(Exception):
                st.abort()
            raise
        return got

    def pwrite(self, offset: int, data: bytes) -> None:
        st = self._conn().newStream(0)
        self._vol.upload(st, offset, len(data), 0)
        self._size = None
        try:
            view = memoryview(data)
            for i in range(0, len(data), STREAM_PIECE):
                piece = view[i : i + STREAM_PIECE]
                sent = 0
                while sent < len(piece):
                    n = st.send(bytes(piece[sent:]))
                    if n <= 0:
                        raise OSError("the upload stream refused data")
                    sent += n
            st.finish()
        except BaseException:
            with contextlib.suppress(Exception):
                st.abort()
            raise

    def size(self) -> int:
        """The file's size (asked of libvirtd once, and again after each write)."""
        if self._size is None:
            self._size = int(self._vol.infoFlags(VOL_GET_PHYSICAL)[2])
        return self._size


def _in_threads(calls: list[Callable[[], int]]) -> list[int]:
    """Run ``calls`` at once, each on a daemon thread (as Link runs a libvirt call: a hung
    stream must not hold the process at exit); their results in order, or the first
    error once all have ended."""
    results: list[int | BaseException] = [0] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # handed to the caller
            results[i] = exc

    threads = [
        threading.Thread(target=run, args=(i,), name="vmctl-kvm-stream", daemon=True)
        for i in range(len(calls))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = []
    for r in results:
        if isinstance(r, BaseException):
            raise r
        out.append(r)
    return out


class _Disk:
    def __init__(self, dev: str, bus: str | None, path: str, fmt: str) -> None:
        self.dev = dev
        self.bus = bus
        self.path = path
        self.fmt = fmt
        self.name: str | None = None
        self.size = 0
        self.checkpoint: str | None = None
        self.export = dev
        self.bitmap: str | None = None
        self.client: NbdClient | None = None
        self.image: Image | RawImage | None = None


class _Pit:
    def __init__(self, uuid: str, running: bool, disks: list[_Disk]) -> None:
        self.uuid = uuid
        self.running = running
        self.disks = {d.dev: d for d in disks}
        self.checkpoint: str | None = None
        self.base: str | None = None  # the checkpoint a running job is incremental from
        self.job = False
        self.closed = False
        self.files: list[str] = []  # the NBD socket and scratch files (local hosts)


def _disks(root: ET.Element) -> list[_Disk]:
    names = {o.path: o.name for o in X.parse_metadata(root).disks}
    out = []
    for d in X.disks_of(root):
        if not d.path:
            continue
        drv = d.element.find("driver")
        fmt = (drv.get("type") if drv is not None else None) or "raw"
        disk = _Disk(d.dev, d.bus, d.path, fmt)
        disk.name = names.get(d.path)
        out.append(disk)
    return out


def _checkpoint_name() -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{PREFIX}{now}-{secrets.token_hex(3)}"


class KvmDiskAccess(DiskAccess, ChangedBlocks, DiskWriter):
    """Mixed into KvmDriver (uses its ``_call``, ``_dom``, ``_xml``, ``_link``)."""

    _call: Callable[..., Any]
    _dom: Callable[[Any, str], Any]
    _xml: Callable[..., ET.Element]
    _link: Link
    _local: bool
    _params: Any

    # -- helpers ------------------------------------------------------------------------

    def _conn_getter(self) -> Callable[[], Any]:
        return lambda: self._link.connection("stream a volume")

    def _image(self, c: Any, disk: _Disk) -> Image | RawImage:
        conn = self._conn_getter()

        def open_vol(path: str) -> Image | RawImage:
            vol = c.storageVolLookupByPath(path)
            io = VolIo(conn, vol)
            head = io.pread(0, 4)
            if head == b"QFI\xfb":
                return Image(io, open_backing)
            return RawImage(io, int(vol.info()[1]))

        def open_backing(path: str) -> Image | RawImage | None:
            try:
                return open_vol(path)
            except Exception:
                return None

        try:
            vol = c.storageVolLookupByPath(disk.path)
        except Exception as exc:
            if E.code_of(exc) == E.NO_STORAGE_VOL:
                raise NotSupported(
                    f"disk {disk.dev} ({disk.path}) is not a volume of a libvirt storage pool, "
                    "so libvirt cannot stream it"
                ) from exc
            raise
        io = VolIo(conn, vol)
        try:
            if disk.fmt == "qcow2":
                return Image(io, open_backing)
            if disk.fmt == "raw":
                return RawImage(io, int(vol.info()[1]))
        except Unsupported as exc:
            raise NotSupported(f"disk {disk.dev} ({disk.path}): {exc}") from exc
        raise NotSupported(f"disk {disk.dev} is a {disk.fmt} volume (qcow2 and raw are read)")

    def _vmctl_checkpoints(self, dom: Any) -> list[tuple[int, str, Any]]:
        """(creation time, name, object) of the domain's vmctl checkpoints, oldest first."""
        out = []
        for cp in dom.listAllCheckpoints(0):
            name = cp.getName()
            if not name.startswith(PREFIX):
                continue
            try:
                created = int(X.parse(cp.getXMLDesc(0)).findtext("creationTime") or 0)
            except Exception:
                created = 0
            out.append((created, name, cp))
        out.sort(key=lambda t: (t[0], t[1]))
        return out

    # -- points in time -----------------------------------------------------------------

    def open_point_in_time(self, uuid: str, *, quiesce: bool, deadline: Deadline) -> PointInTime:
        def prepare(c: Any) -> tuple[bool, bool, bool, list[_Disk], ET.Element]:
            dom = self._dom(c, uuid)
            root = self._xml(dom)
            active = bool(dom.isActive())
            agent = active and X.has_agent_channel(root) and self._agent_up(dom, root)  # type: ignore[attr-defined]
            saved = not active and bool(dom.hasManagedSaveImage(0))
            return active, agent, saved, _disks(root), root

        active, agent, saved, disks, _root = self._call(
            f"open a point in time of VM {uuid}", prepare, deadline
        )
        if quiesce and not agent:
            raise InvalidState(
                f"cannot quiesce VM {uuid}: "
                + ("no guest agent is connected" if active else "it is not running"),
            )
        if active:
            pit = self._open_running(uuid, disks, quiesce, deadline)
            consistency = Consistency.QUIESCED if quiesce else Consistency.CRASH
        else:
            pit = self._open_stopped(uuid, disks, deadline)
            consistency = Consistency.CRASH if saved else Consistency.STOPPED
        return PointInTime(
            id=pit.checkpoint or f"{PREFIX}pit-{secrets.token_hex(4)}",
            vm_uuid=uuid,
            disks=tuple(
                PointInTimeDisk(
                    id=d.dev, size_bytes=d.size, name=d.name, bus=d.bus, checkpoint=d.checkpoint
                )
                for d in pit.disks.values()
            ),
            consistency=consistency,
            handle=pit,
        )

    def _open_running(
        self, uuid: str, disks: list[_Disk], quiesce: bool, deadline: Deadline
    ) -> _Pit:
        lv = require_libvirt()
        pit = _Pit(uuid, True, disks)
        token = secrets.token_hex(4)
        local = self._local
        sock = f"{SOCKET_DIR}/vmctl-bk-{token}.sock"
        if local:
            pit.files.append(sock)
        host = self._params.uri.host
        port = 10809 + secrets.randbelow(20000)
        cp = _checkpoint_name()

        def begin(c: Any) -> str:
            dom = self._dom(c, uuid)
            olds = self._vmctl_checkpoints(dom)
            base = olds[-1][1] if olds else None
            for d in disks:
                d.size = int(dom.blockInfo(d.path)[0])
            qcow = [d for d in disks if d.fmt == "qcow2"]

            def xmls(with_cp: bool, incremental: str | None) -> tuple[str, str | None]:
                b = ET.Element("domainbackup", mode="pull")
                if incremental:
                    X.sub(b, "incremental", incremental)
                if local:
                    ET.SubElement(b, "server", transport="unix", socket=sock)
                else:
                    ET.SubElement(b, "server", name=host, port=str(port))
                ds = ET.SubElement(b, "disks")
                for d in disks:
                    attrs = {"name": d.dev, "backup": "yes", "type": "file"}
                    if incremental and d.fmt != "qcow2":
                        attrs["backupmode"] = "full"
                    e = ET.SubElement(ds, "disk", attrs)
                    scratch = f"{d.path.rsplit('/', 1)[0]}/.vmctl-scratch-{token}-{d.dev}.qcow2"
                    ET.SubElement(e, "scratch", file=scratch)
                    if local and scratch not in pit.files:
                        pit.files.append(scratch)
                if not with_cp or not qcow:
                    return X.to_string(b), None
                k = ET.Element("domaincheckpoint")
                X.sub(k, "name", cp)
                kd = ET.SubElement(k, "disks")
                for d in disks:
                    ET.SubElement(
                        kd, "disk", name=d.dev, checkpoint="bitmap" if d.fmt == "qcow2" else "no"
                    )
                return X.to_string(b), X.to_string(k)

            freeze = False
            try:
                if quiesce:
                    dom.fsFreeze(None, 0)
                    freeze = True
                tries = (
                    [(True, base), (True, None), (False, None)]
                    if base
                    else [(True, None), (False, None)]
                )
                last: Exception | None = None
                for with_cp, inc in tries:
                    bxml, cxml = xmls(with_cp, inc)
                    try:
                        dom.backupBegin(bxml, cxml, 0)
                    except lv.libvirtError as exc:
                        last = exc
                        if E.code_of(exc) in (E.OPERATION_INVALID, E.NO_DOMAIN):
                            raise
                        continue
                    pit.job = True
                    pit.base = inc
                    pit.checkpoint = cp if cxml else None
                    break
                else:
                    assert last is not None
                    raise last
            finally:
                if freeze:
                    with contextlib.suppress(Exception):
                        dom.fsThaw(None, 0)
            return str(dom.backupGetXMLDesc(0))

        desc = self._call(f"begin a backup job of VM {uuid}", begin, deadline, change=True)
        try:
            root = X.parse(desc)
            for e in root.findall("disks/disk"):
                d = pit.disks.get(e.get("name", ""))
                if d is None:
                    continue
                d.export = e.get("exportname") or d.dev
                d.bitmap = e.get("exportbitmap") if pit.base else None
                d.checkpoint = pit.checkpoint if d.fmt == "qcow2" else None
                contexts = [ALLOCATION] + ([BITMAP_CONTEXT + d.bitmap] if d.bitmap else [])
                timeout = max(1.0, min(deadline.remaining(), 30.0))
                if local:
                    d.client = NbdClient.connect_unix(sock, d.export, contexts, timeout)
                else:
                    d.client = NbdClient.connect_tcp(host, port, d.export, contexts, timeout)
        except (OSError, NbdError) as exc:
            self._end_job(pit, Deadline.after(self._link.rpc_timeout))
            raise VmctlError(f"cannot read the backup export of VM {uuid}: {exc}") from exc
        return pit

    def _open_stopped(self, uuid: str, disks: list[_Disk], deadline: Deadline) -> _Pit:
        lv = require_libvirt()
        pit = _Pit(uuid, False, disks)
        cp = _checkpoint_name()

        def open_(c: Any) -> None:
            dom = self._dom(c, uuid)
            if dom.isActive():  # started since it was seen stopped: QEMU owns the images now
                raise InvalidState(f"VM {uuid} was started while a backup was opening; retry")
            marked = []
            for d in disks:
                d.image = self._image(c, d)
                d.size = d.image.size
                if isinstance(d.image, Image) and d.image.version >= 3:
                    try:
                        d.image.add_bitmap(cp)
                    except Unsupported:
                        continue
                    except NoSpace as exc:
                        raise InsufficientResources(
                            f"no room for a checkpoint bitmap in disk {d.dev} ({d.path}): {exc}"
                        ) from exc
                    d.checkpoint = cp
                    marked.append(d)
            if not marked:
                return
            k = ET.Element("domaincheckpoint")
            X.sub(k, "name", cp)
            X.sub(k, "creationTime", str(int(dt.datetime.now(dt.UTC).timestamp())))
            kd = ET.SubElement(k, "disks")
            for d in disks:
                if d.checkpoint:
                    ET.SubElement(kd, "disk", name=d.dev, checkpoint="bitmap", bitmap=cp)
                else:
                    ET.SubElement(kd, "disk", name=d.dev, checkpoint="no")
            k.append(X.parse(dom.XMLDesc(2)))  # VIR_DOMAIN_XML_INACTIVE
            try:
                dom.checkpointCreateXML(X.to_string(k), lv.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE)
            except Exception:
                for d in marked:
                    with contextlib.suppress(Exception):
                        d.image.remove_bitmap(cp)  # type: ignore[union-attr]
                    d.checkpoint = None
                raise
            pit.checkpoint = cp

        def locked(c: Any) -> None:
            with _vm_lock(uuid):
                open_(c)

        self._call(f"open a point in time of stopped VM {uuid}", locked, deadline, change=True)
        return pit

    def _pit(self, pit: PointInTime, disk_id: str) -> tuple[_Pit, _Disk]:
        handle = pit.handle
        if not isinstance(handle, _Pit) or handle.closed:
            raise NotFound(f"the point in time {pit.id} is closed")
        disk = handle.disks.get(disk_id)
        if disk is None:
            raise NotFound(f"the point in time {pit.id} has no disk {disk_id!r}")
        return handle, disk

    def allocated_extents(
        self, pit: PointInTime, disk_id: str, *, deadline: Deadline
    ) -> list[Extent]:
        p, d = self._pit(pit, disk_id)
        if p.running:
            assert d.client is not None
            runs = [
                (o, n)
                for o, n, f in self._nbd(d, lambda cl: cl.extents(ALLOCATION, 0, d.size), deadline)
                if not f & 3
            ]
        else:
            assert d.image is not None
            image = d.image
            runs = self._call(f"map disk {disk_id}", lambda _c: image.allocated(), deadline)
        return [Extent(o, n) for o, n in _merge(runs)]

    def read_extent(
        self, pit: PointInTime, disk_id: str, offset: int, length: int, *, deadline: Deadline
    ) -> bytes:
        p, d = self._pit(pit, disk_id)
        if offset < 0 or length <= 0 or offset + length > d.size:
            raise ValidationError(
                f"cannot read {length} bytes at {offset} of a disk of {d.size} bytes",
                field="extent",
            )
        if p.running:
            buf = bytearray(length)
            self._nbd(d, lambda cl: cl.read_into(offset, buf), deadline)
            return bytes(buf)
        image = d.image
        assert image is not None

        def read(c: Any) -> bytes:
            if self._dom(c, p.uuid).isActive():
                raise InvalidState(
                    f"VM {p.uuid} was started while its stopped disks were being read"
                )
            return image.read(offset, length)

        out: bytes = self._call(f"read disk {disk_id} at {offset}", read, deadline)
        return out

    def _nbd(self, d: _Disk, fn: Callable[[NbdClient], Any], deadline: Deadline) -> Any:
        """``fn(client)`` bounded by ``deadline``. A timeout or failure midway leaves the
        connection out of step with the server: it is closed, and later reads fail at once."""
        client = d.client
        if client is None:
            raise VmctlError(f"the backup export of disk {d.dev} is no longer connected")
        remaining = deadline.remaining()
        client.settimeout(None if remaining == float("inf") else deadline.bound(None))
        try:
            return fn(client)
        except TimeoutError as exc:
            d.client = None
            client.close()
            raise OperationTimeout(
                f"reading disk {d.dev} from the backup export: no answer within the deadline"
            ) from exc
        except (OSError, NbdError) as exc:
            d.client = None
            client.close()
            raise VmctlError(f"reading disk {d.dev} from the backup export failed: {exc}") from exc

    def changed_extents(
        self, pit: PointInTime, disk_id: str, since: str, *, deadline: Deadline
    ) -> list[Extent]:
        p, d = self._pit(pit, disk_id)
        if p.running:
            if not d.bitmap or since != p.base:
                raise NotFound(
                    f"the backup job of disk {disk_id} is incremental from checkpoint "
                    f"{p.base or '(none)'}, not {since!r} (libvirt exports one checkpoint's "
                    "changes per job: the newest vmctl checkpoint)"
                )
            ctx = BITMAP_CONTEXT + d.bitmap
            runs = [
                (o, n)
                for o, n, f in self._nbd(d, lambda cl: cl.extents(ctx, 0, d.size), deadline)
                if f & 1
            ]
        else:
            image = d.image
            if not isinstance(image, Image):
                raise NotFound(f"disk {disk_id} is not qcow2: it has no checkpoint {since!r}")
            bm = image.bitmap(since)
            if bm is None or not bm.enabled:
                raise NotFound(
                    f"disk {disk_id} has no (consistent) bitmap for checkpoint {since!r}"
                )
            runs = self._call(
                f"read bitmap {since} of disk {disk_id}",
                lambda _c: image.bitmap_extents(since),
                deadline,
            )
        return [Extent(o, n) for o, n in _merge(runs)]

    def close_point_in_time(self, pit: PointInTime, *, deadline: Deadline) -> None:
        handle = pit.handle
        if not isinstance(handle, _Pit) or handle.closed:
            return
        handle.closed = True
        if handle.running:
            self._end_job(handle, deadline)
        else:
            self._prune_checkpoints(handle, deadline)

    def _end_job(self, p: _Pit, deadline: Deadline) -> None:
        for d in p.disks.values():
            if d.client is not None:
                d.client.close()
                d.client = None

        def end(c: Any) -> None:
            dom = self._dom(c, p.uuid)
            if p.job:
                try:
                    dom.abortJob()
                except Exception as exc:
                    if E.code_of(exc) not in (E.OPERATION_INVALID,):
                        raise
                p.job = False
                # libvirt finishes the job (NBD server stopped, scratch files deleted) after
                # abortJob returns: wait for it, briefly, so nothing is left when the VM is
                # destroyed right after (seen: a socket left behind)
                until = time.monotonic() + min(JOB_END_WAIT_S, deadline.remaining())
                while time.monotonic() < until:
                    try:
                        if not dom.isActive() or dom.jobInfo()[0] == 0:  # VIR_DOMAIN_JOB_NONE
                            break
                    except Exception:
                        break
                    time.sleep(0.05)
            self._drop_older(c, dom, p, live=True)

        try:
            self._call(f"end the backup job of VM {p.uuid}", end, deadline, change=True)
        finally:
            for path in p.files:  # ours by name; libvirt normally removed them already
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def _prune_checkpoints(self, p: _Pit, deadline: Deadline) -> None:
        self._call(
            f"delete older checkpoints of VM {p.uuid}",
            lambda c: self._drop_older(c, self._dom(c, p.uuid), p, live=False),
            deadline,
            change=True,
        )

    def _drop_older(self, c: Any, dom: Any, p: _Pit, *, live: bool) -> None:
        """Delete the domain's vmctl checkpoints older than this point in time's (and, on a
        stopped VM, vmctl bitmaps no checkpoint names: left by a checkpoint whose metadata
        went away, e.g. a VM migrated to another host, where libvirt does not take
        checkpoint metadata along)."""
        if not p.checkpoint:
            return
        olds = [t for t in self._vmctl_checkpoints(dom) if t[1] != p.checkpoint]
        if live and dom.isActive():
            for _, _, cp in olds:
                with contextlib.suppress(Exception):
                    cp.delete(0)
            return
        if dom.isActive():
            return  # started meanwhile: left for the next point in time
        with _vm_lock(p.uuid):
            self._drop_offline(c, dom, olds, keep=p.checkpoint)

    def _drop_offline(
        self, c: Any, dom: Any, olds: list[tuple[int, str, Any]], *, keep: str
    ) -> None:
        lv = require_libvirt()
        images = []
        for d in _disks(self._xml(dom, inactive=True)):
            with contextlib.suppress(Exception):
                images.append(self._image(c, d))
        for _, _, cp in olds:
            cp.delete(lv.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
        for image in images:
            if not isinstance(image, Image):
                continue
            for bm in list(image.bitmaps):
                if bm.name.startswith(PREFIX) and bm.name != keep:
                    image.remove_bitmap(bm.name)

    def _forget_checkpoints(self, c: Any, dom: Any) -> None:
        """Delete every vmctl checkpoint of the domain with its bitmaps: libvirt 9.0 refuses
        internal snapshot operations while a checkpoint exists ("cannot perform block
        operations while checkpoint exists"). The next backup then reads whole disks and
        says so in its note."""
        lv = require_libvirt()
        cps = self._vmctl_checkpoints(dom)
        if not cps:
            return
        if dom.isActive():
            for _, _, cp in reversed(cps):
                cp.delete(0)
            return
        with _vm_lock(dom.UUIDString()):
            images = [self._image(c, d) for d in _disks(self._xml(dom, inactive=True))]
            for _, name, cp in reversed(cps):
                for image in images:
                    if isinstance(image, Image):
                        image.remove_bitmap(name)
                cp.delete(lv.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)

    # -- writes -------------------------------------------------------------------------

    def write_extents(
        self, uuid: str, disk_id: str, extents: Sequence[ExtentData], *, deadline: Deadline
    ) -> None:
        def write(c: Any) -> None:
            dom = self._dom(c, uuid)
            if dom.isActive() or dom.hasManagedSaveImage(0):
                raise InvalidState(
                    f"cannot write to the disks of VM {dom.name()!r}: it is "
                    f"{'running' if dom.isActive() else 'suspended'}; stop it first"
                )
            disk = next(
                (d for d in _disks(self._xml(dom, inactive=True)) if d.dev == disk_id), None
            )
            if disk is None:
                raise NotFound(f"VM {dom.name()!r} has no disk {disk_id!r}")
            image = self._image(c, disk)
            for e in extents:
                if e.offset + e.length > image.size:
                    raise ValidationError(
                        f"an extent of {e.length} bytes at {e.offset} ends past the end of disk "
                        f"{disk_id!r} ({image.size} bytes)",
                        field="extents",
                    )
            try:
                for e in extents:
                    image.write(e.offset, e.data, e.length)
            except Unsupported as exc:
                raise NotSupported(f"writing disk {disk_id} of VM {dom.name()!r}: {exc}") from exc
            except NoSpace as exc:
                raise InsufficientResources(
                    f"writing disk {disk_id} of VM {dom.name()!r}: {exc} ({disk.path})"
                ) from exc

        def locked(c: Any) -> None:
            with _vm_lock(uuid):
                write(c)

        self._call(f"write disk {disk_id} of VM {uuid}", locked, deadline, change=True)


def _merge(runs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for o, n in sorted(runs):
        if n <= 0:
            continue
        if out and out[-1][0] + out[-1][1] >= o:
            end = max(out[-1][0] + out[-1][1], o + n)
            out[-1] = (out[-1][0], end - out[-1][0])
        else:
            out.append((o, n))
    return out
