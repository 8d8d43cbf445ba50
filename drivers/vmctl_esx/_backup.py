"""Backup and restore for the esx driver: a snapshot, then the disks' files over the
datastore's HTTP access, changed blocks from vSphere's tracking; restore by upload
(``DiskAccess``, ``ChangedBlocks``, ``DiskWriter``).

How it works, on vSphere's own documented interfaces:

* **Point in time**: ``CreateSnapshot_Task(memory=False, quiesce=...)``. While the snapshot
  exists the VM writes into new delta disks, so the files its disks had at that moment stay
  as they were; ``quiesce=True`` asks VMware Tools in the guest to freeze its file systems
  (refused here at once, ``InvalidState``, when the tools are not running). The snapshot's
  disk files come from ``VirtualMachine.layoutEx.snapshot[].disk[].chain`` and
  ``layoutEx.file`` (the file of type ``diskExtent``: ``NAME-flat.vmdk`` of a flat disk).
  ``close_point_in_time`` removes the snapshot (``RemoveSnapshot_Task``), which merges the
  deltas back.
* **Reading**: the extent file through the host's (or vCenter's) datastore HTTP access,
  ``GET https://HOST/folder/PATH?dcPath=DATACENTER&dsName=DATASTORE`` with the session's
  ``vmware_soap_session`` cookie and a ``Range: bytes=FIRST-LAST`` header (answered with 206;
  a server that ignores ranges answers 200 with the whole file, of which the part asked for
  is kept). A flat extent holds the disk's whole capacity, its bytes at their offsets.
* **Changed block tracking** (capability ``backup_incremental``): ``open_point_in_time``
  turns ``config.changeTrackingEnabled`` on (``ReconfigVM_Task``) where
  ``capability.changeTrackingSupported`` says the VM can; it takes effect at the next
  stun/unstun, which the backup's own snapshot is. Each disk of the snapshot then carries a
  ``changeId`` (``VirtualDiskFlatVer2BackingInfo.changeId`` in the snapshot's
  ``config.hardware``), which is the disk's checkpoint in the manifest. The allocated extents
  are ``QueryChangedDiskAreas(snapshot, deviceKey, offset, "*")`` and the extents changed
  since a checkpoint ``QueryChangedDiskAreas(snapshot, deviceKey, offset, changeId)``, each
  called from offset 0 on, then from ``startOffset + length`` of the last answer, until the
  whole disk is covered. A changeId the host no longer knows (``FileFault``: tracking was
  turned off or reset since; ``InvalidArgument``) is ``NotFound`` to the core, which then
  reads the whole disk. Where tracking is off or not supported (no changeId), the whole disk
  is one extent: the backup is full and reads every byte; zero chunks are still not stored.
* **Writing** (a stopped VM): ``PUT`` to the same URL replaces the whole file, so every
  ``write_extents`` of a disk applies its extents to a local temporary file of the disk's
  size (sparse), and ``flush_writes`` (the core calls it after a disk's last write) first
  reads from the host the bytes no call wrote (ranged ``GET``s of those gaps; one download
  of the file, keeping only their bytes, when there are more than ``RANGED_GAPS``; nothing
  when the writes covered the disk, as a ``restore(replace=True)``'s do), then uploads the
  file once. A restore moves each disk at most twice, whatever the number of calls;
  ``flush_writes(discard=True)`` drops the copy.

Writes through the datastore's HTTP access are file writes, not the guest's disk I/O that
the host's tracking sees, so the driver does not count on the host for them: on a VM with
tracking on, ``flush_writes`` records the extents it wrote in the VM's ``extraConfig``
(``vmctl.cbt.DISK.pending``). The next point in time tags them with its own changeId N (they
were written before N) and keeps them in ``vmctl.cbt.DISK.written``; ``changed_extents``
since a changeId older than N adds them to the host's answer (more than was written is
allowed, less is not). The last ``KEEP_WRITTEN`` tags are kept; when older ones are dropped,
the newest dropped becomes ``vmctl.cbt.DISK.floor``, and the changes since a changeId older
than the floor are NotFound (the core reads the whole disk).

Limits (refused with ``InvalidState``, never guessed): a disk whose chain at the point in
time has more than one file (a VM that already had snapshots: its data is in delta files of
the sparse formats, which this driver does not decode), a disk that is not flat (vSAN,
vVols, RDM), an independent disk (snapshots do not cover it), and writing into a VM that has
snapshots.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import tempfile
import threading
import uuid as uuidlib
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any, cast
from urllib.parse import quote, urlencode

from vmctl import (
    BackendError,
    ConnectionError,
    DriverError,
    InsufficientResources,
    InvalidState,
    NotFound,
    OperationTimeout,
    PowerState,
    ValidationError,
    VmctlError,
)
from vmctl.spi import (
    ChangedBlocks,
    Consistency,
    Deadline,
    DiskAccess,
    DiskWriter,
    Driver,
    Extent,
    ExtentData,
    PointInTime,
    PointInTimeDisk,
    Task,
    finish_task,
)

from ._conn import RPC_TIMEOUT_S, Connection
from ._faults import fault_message, fault_name, is_fault, reraise
from ._tls import describe_tls_error

if TYPE_CHECKING:
    from vmctl.spi import URI

log = logging.getLogger("vmctl.esx")

#: Bytes moved per socket read/write of a download or upload.
BLOCK = 1024 * 1024
#: flush_writes reads the unwritten parts of a disk by a ranged GET each when they are at
#: most RANGED_GAPS runs; more, by one download of the file.
RANGED_GAPS = 16
#: The cookie that carries the vSphere session (the SOAP API's and the /folder handler's).
SESSION_COOKIE = "vmware_soap_session"
_TOOLS_RUNNING = ("guestToolsRunning", "guestToolsExecutingScripts")
#: QueryChangedDiskAreas' changeId for "every allocated area".
ALL_AREAS = "*"
#: Answers one listing of a disk's areas may take (each covers at least one area).
MAX_AREA_CALLS = 100_000
#: extraConfig keys of the extents written around tracking (see the module).
PENDING_KEY = "vmctl.cbt.{}.pending"
WRITTEN_KEY = "vmctl.cbt.{}.written"
FLOOR_KEY = "vmctl.cbt.{}.floor"
#: At most this many extents are recorded per tag; more as the one extent covering them.
MAX_PENDING = 64
#: Tags (changeIds) of extents written around tracking kept per disk.
KEEP_WRITTEN = 8


class _DiskFile:
    """Where one disk's data is: the flat extent ``path`` on datastore ``datastore``."""

    __slots__ = ("datastore", "path", "size")

    def __init__(self, datastore: str, path: str, size: int) -> None:
        self.datastore = datastore
        self.path = path
        self.size = size

    def __repr__(self) -> str:
        return f"[{self.datastore}] {self.path} ({self.size} bytes)"


class _Staged:
    """Extents written to one disk and not yet uploaded: a local copy of its whole file."""

    def __init__(self, file: _DiskFile, local: IO[bytes]) -> None:
        self.file = file
        self.local = local
        self.written: list[tuple[int, int]] = []  # (offset, length) of every extent


_STAGING_LOCK = threading.Lock()


class _Snapshot:
    """The driver's handle of a point in time: the snapshot and each disk's file."""

    def __init__(self, vm_ref: Any, snapshot: Any, vm_name: str, files: dict[str, _DiskFile]):
        self.vm_ref = vm_ref
        self.snapshot = snapshot
        self.vm_name = vm_name
        self.files = files
        self.keys: dict[str, int] = {}  # disk id -> device key
        self.change_ids: dict[str, str] = {}  # disk id -> changeId (tracked disks only)
        # disk id -> (changeId, extents written around tracking before it), oldest first
        self.written: dict[str, list[tuple[str, list[Extent]]]] = {}
        self.floors: dict[str, str] = {}  # disk id -> the changeId older ones cannot answer
        self.closed = False


def split_datastore_path(name: str) -> tuple[str, str]:
    """``"[ds] dir/file.vmdk"`` -> ``("ds", "dir/file.vmdk")``."""
    text = name.strip()
    if not text.startswith("[") or "]" not in text:
        raise ValidationError(f"not a datastore path: {name!r}", field="path")
    datastore, _, rest = text[1:].partition("]")
    return datastore, rest.strip()


class DatastoreFiles:
    """Files of a datastore over HTTPS (``/folder/PATH?dcPath=&dsName=``), authenticated
    with the SOAP session's cookie, trusted as the SOAP connection is (its SSL context).

    Every request is bounded by the caller's deadline: each socket operation by what is
    left of it (at most RPC_TIMEOUT_S), and a transfer checks the deadline between blocks.
    The cookie is a credential: it is never logged nor put in an error.
    """

    def __init__(self, conn: Connection, datacenter_path: str) -> None:
        self.conn = conn
        self.datacenter_path = datacenter_path
        host, _, port = conn.where.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.context: ssl.SSLContext | None = conn.stub.schemeArgs.get("context")
        self.downloads = 0  # whole files read (for tests and benchmarks)
        self.uploads = 0  # whole files written
        self.filled = 0  # bytes read by ranged GETs to fill what a write left unwritten

    def url(self, datastore: str, path: str) -> str:
        query = urlencode({"dcPath": self.datacenter_path, "dsName": datastore})
        return f"/folder/{quote(path)}?{query}"

    def _cookie(self) -> str:
        # pyvmomi keeps the Set-Cookie value; the request needs only "name=value".
        raw = str(getattr(self.conn.stub, "cookie", "") or "")
        first = raw.split(";", 1)[0].strip()
        return first if first.startswith(SESSION_COOKIE + "=") else ""

    def _open(self, method: str, url: str, headers: dict[str, str], deadline: Deadline) -> Any:
        """A new HTTPS connection with the request's headers sent (not the body)."""
        conn = http.client.HTTPSConnection(
            self.host, self.port, timeout=deadline.bound(RPC_TIMEOUT_S), context=self.context
        )
        cookie = self._cookie()
        try:
            conn.putrequest(method, url, skip_accept_encoding=True)
            if cookie:
                conn.putheader("Cookie", cookie)
            for key, value in headers.items():
                conn.putheader(key, value)
            conn.endheaders()
        except BaseException:
            conn.close()
            raise
        return conn

    def _failed(
        self, exc: BaseException, what: str, deadline: Deadline, *, sent: bool | None
    ) -> VmctlError:
        if isinstance(exc, VmctlError):
            return exc
        tls = describe_tls_error(exc)
        if tls is not None:
            return ConnectionError(f"{what}: {tls}", sent=False, vendor_code="SSLError")
        if isinstance(exc, (socket.timeout, TimeoutError)) and deadline.expired():
            return OperationTimeout(
                f"{what}: no answer before the deadline ({deadline.seconds:g} s)"
            )
        return ConnectionError(
            f"{what}: {type(exc).__name__}: {exc}", sent=sent, vendor_code=type(exc).__name__
        )

    def _status(self, response: Any, what: str, ok: Sequence[int]) -> None:
        status = int(response.status)
        if status in ok:
            return
        body = response.read(2048)
        text = body.decode("utf-8", "replace").strip().splitlines()
        detail = f"HTTP {status} {response.reason}" + (f": {text[0][:200]}" if text else "")
        code = f"HTTP {status}"
        if status in (401, 403):
            # The session expired (or never was): nothing was done; the core logs in again.
            raise ConnectionError(
                f"{what}: {detail} (the session is not valid)", sent=False, vendor_code=code
            )
        if status == 404:
            raise NotFound(f"{what}: {detail}")
        if status in (413, 507):
            raise InsufficientResources(f"{what}: {detail}")
        raise BackendError(f"{what}: {detail}", vendor_code=code)

    def _ranged(
        self, what: str, datastore: str, path: str, offset: int, length: int, deadline: Deadline
    ) -> tuple[Any, Any]:
        """A connection and its response to a ranged GET, read up to ``offset`` (a server
        that ignores the range sends the whole file)."""
        deadline.check(what)
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        try:
            conn = self._open("GET", self.url(datastore, path), headers, deadline)
        except Exception as exc:
            raise self._failed(exc, what, deadline, sent=False) from exc
        try:
            response = conn.getresponse()
            self._status(response, what, (200, 206))
            skip = offset if response.status == 200 else 0  # the server ignored the range
            while skip:
                deadline.check(what)
                dropped = response.read(min(skip, BLOCK))
                if not dropped:
                    break
                skip -= len(dropped)
        except Exception as exc:
            conn.close()
            raise self._failed(exc, what, deadline, sent=None) from exc
        return conn, response

    @staticmethod
    def _short_read(what: str, got: int, length: int) -> BackendError:
        return BackendError(
            f"{what}: the host sent {got} of {length} bytes (the file is shorter than the disk)",
            vendor_code="ShortRead",
        )

    def read(
        self, datastore: str, path: str, offset: int, length: int, deadline: Deadline
    ) -> bytes:
        """``length`` bytes of the file at ``offset`` (a ranged GET)."""
        what = f"read [{datastore}] {path} at {offset}"
        conn, response = self._ranged(what, datastore, path, offset, length, deadline)
        out = bytearray()
        try:
            while len(out) < length:
                deadline.check(what)
                piece = response.read(min(BLOCK, length - len(out)))
                if not piece:
                    break
                out += piece
        except Exception as exc:
            raise self._failed(exc, what, deadline, sent=None) from exc
        finally:
            conn.close()
        if len(out) != length:
            raise self._short_read(what, len(out), length)
        return bytes(out)

    def read_into(
        self,
        datastore: str,
        path: str,
        offset: int,
        length: int,
        sink: IO[bytes],
        deadline: Deadline,
    ) -> None:
        """``length`` bytes of the file at ``offset`` (a ranged GET) written into ``sink``
        at the same offset as they arrive (blocks of zeroes skipped: ``sink`` reads as
        zeroes there already)."""
        what = f"read [{datastore}] {path} at {offset}"
        conn, response = self._ranged(what, datastore, path, offset, length, deadline)
        got = 0
        try:
            zero = bytes(BLOCK)
            while got < length:
                deadline.check(what)
                piece = response.read(min(BLOCK, length - got))
                if not piece:
                    break
                if piece != zero[: len(piece)]:
                    sink.seek(offset + got)
                    sink.write(piece)
                got += len(piece)
        except Exception as exc:
            raise self._failed(exc, what, deadline, sent=None) from exc
        finally:
            conn.close()
        if got != length:
            raise self._short_read(what, got, length)
        self.filled += got

    def download(self, datastore: str, path: str, sink: IO[bytes], deadline: Deadline) -> int:
        """The whole file into ``sink`` (a seekable file: blocks of zeroes become holes);
        its size."""
        what = f"download [{datastore}] {path}"
        deadline.check(what)
        try:
            conn = self._open("GET", self.url(datastore, path), {}, deadline)
        except Exception as exc:
            raise self._failed(exc, what, deadline, sent=False) from exc
        size = 0
        try:
            response = conn.getresponse()
            self._status(response, what, (200,))
            zero = bytes(BLOCK)
            while True:
                deadline.check(what)
                piece = response.read(BLOCK)
                if not piece:
                    break
                if piece == zero[: len(piece)]:
                    sink.seek(len(piece), 1)  # keep the local copy sparse
                else:
                    sink.write(piece)
                size += len(piece)
            sink.truncate(size)
            self.downloads += 1
        except Exception as exc:
            raise self._failed(exc, what, deadline, sent=None) from exc
        finally:
            conn.close()
        return size

    def upload(
        self, datastore: str, path: str, source: IO[bytes], size: int, deadline: Deadline
    ) -> None:
        """Replace the file with ``size`` bytes of ``source`` (a PUT)."""
        what = f"upload [{datastore}] {path}"
        deadline.check(what)
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        try:
            conn = self._open("PUT", self.url(datastore, path), headers, deadline)
        except Exception as exc:
            raise self._failed(exc, what, deadline, sent=False) from exc
        try:
            left = size
            while left:
                deadline.check(what)
                piece = source.read(min(BLOCK, left))
                if not piece:
                    raise BackendError(f"{what}: the local copy ended early", vendor_code="EOF")
                conn.send(piece)
                left -= len(piece)
            response = conn.getresponse()
            self._status(response, what, (200, 201, 204))
            response.read()
            self.uploads += 1
        except OSError as exc:
            if getattr(exc, "errno", None) == 28:  # ENOSPC in the temporary file
                raise InsufficientResources(f"{what}: {exc}") from exc
            raise self._failed(exc, what, deadline, sent=None) from exc
        except Exception as exc:
            raise self._failed(exc, what, deadline, sent=None) from exc
        finally:
            conn.close()


class EsxBackup(DiskAccess, ChangedBlocks, DiskWriter):
    """``DiskAccess``, ``ChangedBlocks`` and ``DiskWriter`` for ``EsxDriver`` (a mixin; see
    the module)."""

    if TYPE_CHECKING:
        conn: Connection
        scope: Any
        uri: URI

        def _props(self, uuid: str, paths: Sequence[str]) -> tuple[Any, dict[str, Any]]: ...
        def _disk_id(self, disk: Any, devices: Sequence[Any]) -> tuple[str, str]: ...
        def _task(self, task: Any, description: str) -> Task: ...
        def _make(
            self,
            start: Callable[[], Any],
            what: str,
            left: tuple[tuple[str, str], ...],
            deadline: Deadline,
        ) -> Any: ...

    _datastore_files: DatastoreFiles | None = None
    _staging: dict[tuple[str, str], _Staged] | None = None  # (uuid, disk id) -> local copy

    # -- helpers ----------------------------------------------------------------------------

    def _files(self) -> DatastoreFiles:
        files = self._datastore_files
        if files is None:
            files = self._datastore_files = DatastoreFiles(self.conn, self._datacenter_path())
        return files

    def _datacenter_path(self) -> str:
        """The datacenter's inventory path (dcPath): the URI's for a vCenter, else the name
        of the host's only datacenter (``ha-datacenter``)."""
        parts = [p for p in self.uri.path.split("/") if p]
        if self.conn.is_vcenter and parts:
            return parts[0]
        props = self.conn.retrieve_one(self.scope.datacenter, self.conn.vim.Datacenter, ["name"])
        return str(props.get("name") or "ha-datacenter")

    @staticmethod
    def _size(disk: Any) -> int:
        return int(disk.capacityInBytes or 0) or int(disk.capacityInKB or 0) * 1024

    def _extent_file(
        self, vm_name: str, disk_id: str, device: Any, chain: Sequence[Any], files: dict[int, Any]
    ) -> _DiskFile:
        """The flat extent of ``device`` given its layoutEx chain; InvalidState if the disk
        is not one flat file."""
        mode = str(getattr(device.backing, "diskMode", "") or "")
        if mode.startswith("independent"):
            raise InvalidState(
                f"disk {disk_id} of VM {vm_name!r} is {mode}: snapshots do not cover it, so "
                "it has no point in time to read (make it dependent to back it up)"
            )
        if len(chain) != 1:
            raise InvalidState(
                f"disk {disk_id} of VM {vm_name!r} is a chain of {len(chain)} files (the VM "
                "has snapshots): the esx driver reads flat base disks only; delete or "
                "consolidate the VM's snapshots first"
            )
        extents = [
            files[k] for k in chain[0].fileKey or () if k in files and files[k].type == "diskExtent"
        ]
        if len(extents) != 1:
            raise InvalidState(
                f"disk {disk_id} of VM {vm_name!r} is not a flat disk with one extent file "
                f"({type(device.backing).__name__}); the esx driver reads flat VMFS/NFS disks "
                "only"
            )
        datastore, path = split_datastore_path(str(extents[0].name))
        return _DiskFile(datastore, path, self._size(device))

    def _remove_snapshot(self, snap: _Snapshot, deadline: Deadline) -> None:
        what = f"remove the backup snapshot of VM {snap.vm_name!r}"
        try:
            task = self.conn.start_task(
                lambda: snap.snapshot.RemoveSnapshot_Task(removeChildren=False), what
            )
        except NotFound:
            return  # already gone
        except VmctlError as exc:
            if exc.vendor_code == "ManagedObjectNotFound":
                return
            raise
        finish_task(cast(Driver, self), self._task(task, what), deadline=deadline, what=what)

    # -- DiskAccess -------------------------------------------------------------------------

    def open_point_in_time(self, uuid: str, *, quiesce: bool, deadline: Deadline) -> PointInTime:
        with self.conn.within(deadline):
            return self._open_point_in_time(uuid, quiesce, deadline)

    def _open_point_in_time(self, uuid: str, quiesce: bool, deadline: Deadline) -> PointInTime:
        paths = (
            "name",
            "runtime.powerState",
            "guest.toolsRunningStatus",
            "config.extraConfig",
            "config.changeTrackingEnabled",
            "capability.changeTrackingSupported",
        )
        ref, props = self._props(uuid, paths)
        name = str(props["name"])
        power = str(props.get("runtime.powerState"))
        if quiesce:
            tools = str(props.get("guest.toolsRunningStatus") or "guestToolsNotRunning")
            if tools not in _TOOLS_RUNNING:
                raise InvalidState(
                    f"cannot quiesce VM {name!r}: VMware Tools are not running in it ({tools}"
                    f", {power})",
                    current=PowerState.STOPPED if power == "poweredOff" else PowerState.RUNNING,
                    vendor_code="ToolsUnavailable",
                )
        if props.get("capability.changeTrackingSupported") and not props.get(
            "config.changeTrackingEnabled"
        ):
            try:
                self._set_tracking(ref, name, True, deadline)
            except (ConnectionError, OperationTimeout):
                raise
            except VmctlError as exc:  # e.g. no VirtualMachine.Config.ChangeTracking privilege
                log.warning("VM %r: changed block tracking stays off: %s", name, exc)
        label = f"vmctl-backup-{uuidlib.uuid4().hex[:12]}"
        what = f"snapshot VM {name!r} for a backup"
        snapshot = self._make(
            lambda: ref.CreateSnapshot_Task(
                name=label,
                description="vmctl backup: a point in time, removed when the backup ends",
                memory=False,
                quiesce=quiesce,
            ),
            what,
            (("snapshot", f"{uuid}/{label}"),),
            deadline,
        )
        snap = _Snapshot(ref, snapshot, name, {})
        try:
            return self._point_in_time(uuid, snap, props, power, quiesce, deadline)
        except BaseException as exc:
            try:
                self._remove_snapshot(snap, deadline.sooner(RPC_TIMEOUT_S))
            except VmctlError as cleanup:
                log.warning("%s: removing snapshot %s failed: %s", what, label, cleanup)
                if isinstance(exc, VmctlError):
                    exc.left_behind = (*exc.left_behind, ("snapshot", f"{uuid}/{label}"))
            raise

    def _point_in_time(
        self,
        uuid: str,
        snap: _Snapshot,
        props: dict[str, Any],
        power_before: str,
        quiesce: bool,
        deadline: Deadline,
    ) -> PointInTime:
        vim = self.conn.vim
        what = f"read the backup snapshot of VM {snap.vm_name!r}"
        try:
            after = self.conn.retrieve_one(
                snap.vm_ref,
                vim.VirtualMachine,
                ["runtime.powerState", "layoutEx", "config.extraConfig"],
            )
            config = self.conn.retrieve_one(snap.snapshot, vim.vm.Snapshot, ["config"]).get(
                "config"
            )
        except Exception as exc:
            reraise(exc, what)
        if config is None:
            raise NotFound(f"the backup snapshot of VM {snap.vm_name!r} has no configuration")
        devices = list(config.hardware.device or ())
        layout = after.get("layoutEx")
        files = {int(f.key): f for f in (getattr(layout, "file", None) or ())}
        moid = str(snap.snapshot._moId)
        snap_layout = next(
            (s for s in getattr(layout, "snapshot", None) or () if str(s.key._moId) == moid),
            None,
        )
        if snap_layout is None:
            raise BackendError(
                f"the host lists no files for the backup snapshot of VM {snap.vm_name!r}",
                vendor_code="NoSnapshotLayout",
            )
        chains = {int(d.key): list(d.chain or ()) for d in snap_layout.disk or ()}
        extra = {str(o.key): str(o.value) for o in props.get("config.extraConfig") or ()}
        disks = []
        for device in devices:
            if not isinstance(device, vim.vm.device.VirtualDisk):
                continue
            disk_id, kind = self._disk_id(device, devices)
            snap.files[disk_id] = self._extent_file(
                snap.vm_name, disk_id, device, chains.get(int(device.key), []), files
            )
            snap.keys[disk_id] = int(device.key)
            change_id = str(getattr(device.backing, "changeId", None) or "")
            if change_id:
                snap.change_ids[disk_id] = change_id
            disks.append(
                PointInTimeDisk(
                    id=disk_id,
                    size_bytes=self._size(device),
                    name=extra.get(f"vmctl.disk.{disk_id}.name") or None,
                    bus=kind,
                    checkpoint=change_id or None,
                )
            )
        if quiesce:
            consistency = Consistency.QUIESCED
        elif power_before == "poweredOff" and str(after.get("runtime.powerState")) == "poweredOff":
            consistency = Consistency.STOPPED
        else:
            consistency = Consistency.CRASH
        # as the snapshot found them (a write may have ended since the first read)
        self._take_pending(
            snap,
            {str(o.key): str(o.value) for o in after.get("config.extraConfig") or ()},
            deadline,
        )
        log.debug("point in time of VM %r: snapshot %s, %s", snap.vm_name, moid, snap.files)
        return PointInTime(
            id=moid,
            vm_uuid=uuid,
            disks=tuple(disks),
            consistency=consistency,
            handle=snap,
        )

    @staticmethod
    def _handle(pit: PointInTime, disk_id: str) -> _DiskFile:
        snap = pit.handle
        if not isinstance(snap, _Snapshot) or snap.closed:
            raise NotFound(f"the point in time {pit.id} is closed")
        file = snap.files.get(disk_id)
        if file is None:
            raise NotFound(f"the point in time {pit.id} has no disk {disk_id!r}")
        return file

    def allocated_extents(
        self, pit: PointInTime, disk_id: str, *, deadline: Deadline
    ) -> list[Extent]:
        """``QueryChangedDiskAreas`` with changeId ``*`` on a tracked disk; else the whole
        disk (the datastore's HTTP access does not tell holes from data)."""
        file = self._handle(pit, disk_id)
        snap = pit.handle
        assert isinstance(snap, _Snapshot)
        if file.size and disk_id in snap.change_ids:
            try:
                return self._areas(snap, disk_id, file, ALL_AREAS, deadline)
            except NotFound as exc:
                log.info("allocated areas of disk %s: %s; reading it whole", disk_id, exc)
        return [Extent(0, file.size)] if file.size else []

    def changed_extents(
        self, pit: PointInTime, disk_id: str, since: str, *, deadline: Deadline
    ) -> list[Extent]:
        """``QueryChangedDiskAreas`` from the changeId ``since`` to the point in time's
        snapshot; NotFound when the host does not know ``since`` for this disk."""
        file = self._handle(pit, disk_id)
        snap = pit.handle
        assert isinstance(snap, _Snapshot)
        if not isinstance(since, str) or not since or since == ALL_AREAS:
            raise ValidationError(f"not a changeId: {since!r}", field="since")
        if disk_id not in snap.change_ids:
            raise NotFound(
                f"disk {disk_id} of VM {snap.vm_name!r} was not tracked at the point in time "
                "(changed block tracking is off or not supported for it)"
            )
        floor = snap.floors.get(disk_id)
        if floor is not None and _older(since, floor):
            raise NotFound(
                f"disk {disk_id} of VM {snap.vm_name!r} was written around changed block "
                f"tracking (a restore) before changeId {floor!r}, later than {since!r}"
            )
        if not file.size:
            return []
        found = self._areas(snap, disk_id, file, since, deadline)
        extra = [e for tag, ext in snap.written.get(disk_id, ()) if _older(since, tag) for e in ext]
        if not extra:
            return found
        return _merged([(e.offset, e.length) for e in (*found, *extra)])

    def _areas(
        self, snap: _Snapshot, disk_id: str, file: _DiskFile, change_id: str, deadline: Deadline
    ) -> list[Extent]:
        """The areas ``QueryChangedDiskAreas`` lists over the whole disk, merged, in order."""
        what = (
            f"list the {'allocated' if change_id == ALL_AREAS else 'changed'} areas of disk "
            f"{disk_id} of VM {snap.vm_name!r}"
        )
        key = snap.keys[disk_id]
        found: list[tuple[int, int]] = []
        offset = 0
        with self.conn.within(deadline):
            for _ in range(MAX_AREA_CALLS):
                if offset >= file.size:
                    break
                deadline.check(what)
                try:
                    info = snap.vm_ref.QueryChangedDiskAreas(
                        snapshot=snap.snapshot,
                        deviceKey=key,
                        startOffset=offset,
                        changeId=change_id,
                    )
                except Exception as exc:
                    if is_fault(exc, "FileFault") or is_fault(exc, "InvalidArgument"):
                        detail = fault_message(exc)
                        raise NotFound(
                            f"{what}: the host cannot answer for changeId {change_id!r} "
                            f"({fault_name(exc)}{': ' + detail if detail else ''})"
                        ) from exc
                    reraise(exc, what)
                start, length = int(info.startOffset), int(info.length)
                if start != offset or length <= 0 or start + length > file.size:
                    raise BackendError(
                        f"{what}: the host answered for {length} bytes at {start}, asked from "
                        f"{offset} of {file.size}",
                        vendor_code="BadDiskChangeInfo",
                    )
                for area in info.changedArea or ():
                    a, n = int(area.start), int(area.length)
                    if n <= 0:
                        continue
                    if a < start or a + n > start + length:
                        raise BackendError(
                            f"{what}: the area of {n} bytes at {a} lies outside the answer's "
                            f"{length} bytes at {start}",
                            vendor_code="BadDiskChangeInfo",
                        )
                    found.append((a, n))
                offset = start + length
            else:
                raise BackendError(
                    f"{what}: no end after {MAX_AREA_CALLS} answers", vendor_code="TooManyAnswers"
                )
        return _merged(found)

    def read_extent(
        self, pit: PointInTime, disk_id: str, offset: int, length: int, *, deadline: Deadline
    ) -> bytes:
        file = self._handle(pit, disk_id)
        if offset < 0 or length <= 0 or offset + length > file.size:
            raise ValidationError(
                f"cannot read {length} bytes at {offset} of a disk of {file.size} bytes",
                field="extent",
            )
        return self._files().read(file.datastore, file.path, offset, length, deadline)

    def close_point_in_time(self, pit: PointInTime, *, deadline: Deadline) -> None:
        snap = pit.handle
        if not isinstance(snap, _Snapshot) or snap.closed:
            return
        with self.conn.within(deadline):
            self._remove_snapshot(snap, deadline)
        snap.closed = True

    # -- DiskWriter -------------------------------------------------------------------------

    def _stage_lock(self) -> threading.Lock:
        with _STAGING_LOCK:
            if self._staging is None:
                self._staging = {}
        return _STAGING_LOCK

    def write_extents(
        self, uuid: str, disk_id: str, extents: Sequence[ExtentData], *, deadline: Deadline
    ) -> None:
        """Applied to a local copy of the disk's extent (sparse, of the disk's size);
        ``flush_writes`` reads the bytes no call wrote from the host, then uploads it."""
        with self.conn.within(deadline):
            file, name = self._writable_file(uuid, disk_id)
        for e in extents:
            if e.end > file.size:
                raise ValidationError(
                    f"cannot write {e.length} bytes at {e.offset} of disk {disk_id} of VM "
                    f"{name!r} ({file.size} bytes)",
                    field="extents",
                )
        if not extents:
            return
        key = (uuid, disk_id)
        with self._stage_lock():
            assert self._staging is not None
            staged = self._staging.get(key)
        if staged is not None and (staged.file.datastore, staged.file.path) != (
            file.datastore,
            file.path,
        ):
            staged.local.close()  # the disk was replaced since: start over
            staged = None
        what = f"write disk {disk_id} of VM {name!r}"
        if staged is None:
            # Kept open until flush_writes: it outlives this call.
            local = tempfile.TemporaryFile(prefix="vmctl-esx-disk-")  # noqa: SIM115
            try:
                local.truncate(file.size)  # what no call writes is read in flush_writes
            except OSError as exc:
                local.close()
                raise _no_room(exc, what, file.size) from exc
            except BaseException:
                local.close()
                raise
            staged = _Staged(file, local)
        try:
            for e in extents:
                staged.written.append((e.offset, e.length))
                staged.local.seek(e.offset)
                if e.data is not None:
                    staged.local.write(e.data)
                else:
                    _write_zeroes(staged.local, e.length)
            staged.local.flush()
        except OSError as exc:
            staged.local.close()
            with self._stage_lock():
                assert self._staging is not None
                self._staging.pop(key, None)
            raise _no_room(exc, what, file.size) from exc
        with self._stage_lock():
            assert self._staging is not None
            self._staging[key] = staged

    def flush_writes(
        self, uuid: str, disk_id: str, *, discard: bool = False, deadline: Deadline
    ) -> None:
        """Upload the local copy ``write_extents`` made: one PUT of the whole extent."""
        key = (uuid, disk_id)
        with self._stage_lock():
            assert self._staging is not None
            staged = self._staging.pop(key, None) if discard else self._staging.get(key)
        if staged is None:
            return
        if discard:
            staged.local.close()
            return
        with self.conn.within(deadline):
            file, _ = self._writable_file(uuid, disk_id)  # still stopped, the same file
        if (file.datastore, file.path, file.size) != (
            staged.file.datastore,
            staged.file.path,
            staged.file.size,
        ):
            raise InvalidState(
                f"disk {disk_id} of VM {uuid} changed while it was being written (now "
                f"{file}, was {staged.file}); write it again"
            )
        try:
            self._fill_unwritten(staged, f"write disk {disk_id} of VM {uuid}", deadline)
        except OSError as exc:
            raise _no_room(exc, f"write disk {disk_id} of VM {uuid}", file.size) from exc
        staged.local.seek(0)
        self._files().upload(file.datastore, file.path, staged.local, file.size, deadline)
        with self._stage_lock():
            assert self._staging is not None
            if self._staging.get(key) is staged:
                del self._staging[key]
        staged.local.close()
        with self.conn.within(deadline):
            self._record_pending(uuid, disk_id, staged.written, deadline)

    # -- changed block tracking -------------------------------------------------------------

    def _set_tracking(self, ref: Any, name: str, on: bool, deadline: Deadline) -> None:
        """``ReconfigVM_Task`` with ``changeTrackingEnabled``; it takes effect at the VM's
        next stun/unstun (power on, resume, snapshot create/delete/revert)."""
        what = f"turn changed block tracking {'on' if on else 'off'} for VM {name!r}"
        spec = self.conn.vim.vm.ConfigSpec(changeTrackingEnabled=on)
        task = self.conn.start_task(lambda: ref.ReconfigVM_Task(spec=spec), what)
        finish_task(cast(Driver, self), self._task(task, what), deadline=deadline, what=what)

    def _set_extra(self, ref: Any, name: str, values: dict[str, str], deadline: Deadline) -> None:
        """Set (an empty value: remove) extraConfig keys of the VM."""
        what = f"record changed block tracking state in VM {name!r}"
        opt = self.conn.vim.option.OptionValue
        spec = self.conn.vim.vm.ConfigSpec(
            extraConfig=[opt(key=k, value=v) for k, v in values.items()]
        )
        task = self.conn.start_task(lambda: ref.ReconfigVM_Task(spec=spec), what)
        finish_task(cast(Driver, self), self._task(task, what), deadline=deadline, what=what)

    def _fill_unwritten(self, staged: _Staged, what: str, deadline: Deadline) -> None:
        """Read into the local copy the bytes of the file no ``write_extents`` wrote (none
        when a restore wrote the whole disk): a few gaps by ranged GETs of them only,
        many by one download of the file that keeps only their bytes."""
        f = staged.file
        gaps = _gaps(staged.written, f.size)
        if not gaps:
            return
        files = self._files()
        if len(gaps) > RANGED_GAPS:
            got = files.download(
                f.datastore, f.path, cast(IO[bytes], _GapsOnly(staged.local, gaps)), deadline
            )
            if got != f.size:
                raise BackendError(
                    f"{what}: its file [{f.datastore}] {f.path} has {got} bytes, the disk {f.size}",
                    vendor_code="ShortFile",
                )
            return
        for offset, length in gaps:
            files.read_into(f.datastore, f.path, offset, length, staged.local, deadline)

    def _record_pending(
        self, uuid: str, disk_id: str, written: list[tuple[int, int]], deadline: Deadline
    ) -> None:
        """Add ``written`` to the disk's extents written around tracking (a VM with tracking
        on only: without it, the next backup is full anyway)."""
        if not written:
            return
        ref, props = self._props(
            uuid, ("name", "config.changeTrackingEnabled", "config.extraConfig")
        )
        if not props.get("config.changeTrackingEnabled"):
            return
        extra = {str(o.key): str(o.value) for o in props.get("config.extraConfig") or ()}
        key = PENDING_KEY.format(disk_id)
        before = [(e.offset, e.length) for e in _parse_extents(extra.get(key, ""))]
        merged = _merged(before + written)
        self._set_extra(ref, str(props["name"]), {key: _format_extents(merged)}, deadline)

    def _take_pending(self, snap: _Snapshot, extra: dict[str, str], deadline: Deadline) -> None:
        """Tag the extents written around tracking since the last point in time with this
        one's changeId, keep the last KEEP_WRITTEN tags, raise the floor past dropped ones
        (see the module)."""
        updates: dict[str, str] = {}
        for disk_id, change_id in snap.change_ids.items():
            epoch = change_id.rpartition("/")[0]
            raw = extra.get(WRITTEN_KEY.format(disk_id), "")
            entries = [(t, x) for t, x in _parse_written(raw) if t.rpartition("/")[0] == epoch]
            floor = extra.get(FLOOR_KEY.format(disk_id)) or ""
            if floor.rpartition("/")[0] != epoch:
                floor = ""  # of an earlier tracking epoch: the host refuses those itself
            pending = _parse_extents(extra.get(PENDING_KEY.format(disk_id), ""))
            if pending:
                entries.append((change_id, pending))
                updates[PENDING_KEY.format(disk_id)] = ""
            if len(entries) > KEEP_WRITTEN:
                floor = entries[-KEEP_WRITTEN - 1][0]
                entries = entries[-KEEP_WRITTEN:]
            text = ";".join(f"{t}={_format_extents(x)}" for t, x in entries)
            if text != raw:
                updates[WRITTEN_KEY.format(disk_id)] = text
            if floor != (extra.get(FLOOR_KEY.format(disk_id)) or ""):
                updates[FLOOR_KEY.format(disk_id)] = floor
            snap.written[disk_id] = entries
            if floor:
                snap.floors[disk_id] = floor
        if updates:
            try:
                self._set_extra(snap.vm_ref, snap.vm_name, updates, deadline)
            except (ConnectionError, OperationTimeout):
                raise
            except VmctlError as exc:
                # Still safe: the pending extents stay pending, and the next point in time
                # tags them with a later changeId, which lists them for more parents.
                log.warning("VM %r: tracking state not recorded: %s", snap.vm_name, exc)

    def _writable_file(self, uuid: str, disk_id: str) -> tuple[_DiskFile, str]:
        _, props = self._props(
            uuid, ("name", "runtime.powerState", "config.hardware.device", "layoutEx", "snapshot")
        )
        name = str(props["name"])
        power = str(props.get("runtime.powerState"))
        if power != "poweredOff":
            raise InvalidState(
                f"cannot write to the disks of VM {name!r}: it is {power}; stop it first",
                current=PowerState.SUSPENDED if power == "suspended" else PowerState.RUNNING,
                allowed={PowerState.STOPPED},
            )
        devices = list(props.get("config.hardware.device") or ())
        layout = props.get("layoutEx")
        files = {int(f.key): f for f in (getattr(layout, "file", None) or ())}
        chains = {int(d.key): list(d.chain or ()) for d in getattr(layout, "disk", None) or ()}
        for device in devices:
            if not isinstance(device, self.conn.vim.vm.device.VirtualDisk):
                continue
            if self._disk_id(device, devices)[0] != disk_id:
                continue
            if props.get("snapshot") is not None:
                raise InvalidState(
                    f"cannot write to disk {disk_id} of VM {name!r}: the VM has snapshots, "
                    "which its base disk must match; delete them first"
                )
            return (
                self._extent_file(name, disk_id, device, chains.get(int(device.key), []), files),
                name,
            )
        raise NotFound(f"VM {name!r} has no disk {disk_id!r}")


def _merged(areas: list[tuple[int, int]]) -> list[Extent]:
    """``(start, length)`` areas sorted, overlapping and adjacent ones joined."""
    out: list[list[int]] = []
    for start, length in sorted(areas):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], start + length)
        else:
            out.append([start, start + length])
    return [Extent(a, b - a) for a, b in out]


def _format_extents(extents: list[Extent]) -> str:
    """``"OFFSET+LENGTH,..."``; more than MAX_PENDING as the one extent covering them."""
    if len(extents) > MAX_PENDING:
        extents = [Extent(extents[0].offset, extents[-1].end - extents[0].offset)]
    return ",".join(f"{e.offset}+{e.length}" for e in extents)


def _parse_extents(text: str) -> list[Extent]:
    out = []
    for item in text.split(","):
        offset, _, length = item.strip().partition("+")
        if offset.isdigit() and length.isdigit() and int(length) > 0:
            out.append(Extent(int(offset), int(length)))
    return out


def _parse_written(text: str) -> list[tuple[str, list[Extent]]]:
    """``"CHANGEID=EXTENTS;..."`` (see ``_format_extents``)."""
    out = []
    for item in text.split(";"):
        tag, _, extents = item.partition("=")
        if tag.strip() and extents:
            out.append((tag.strip(), _parse_extents(extents)))
    return out


def _older(change_id: str, than: str) -> bool:
    """Whether ``change_id`` ("UUID/N") was issued before ``than`` in the same tracking
    epoch (another epoch: the host itself refuses it)."""
    epoch, _, seq = change_id.rpartition("/")
    floor_epoch, _, floor_seq = than.rpartition("/")
    if epoch != floor_epoch or not seq.isdigit() or not floor_seq.isdigit():
        return False
    return int(seq) < int(floor_seq)


def _gaps(written: Sequence[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """(offset, length) of the bytes of ``[0, size)`` that no ``written`` extent covers."""
    out = []
    pos = 0
    for offset, length in sorted(written):
        if offset > pos:
            out.append((pos, offset - pos))
        pos = max(pos, offset + length)
    if pos < size:
        out.append((pos, size - pos))
    return out


class _GapsOnly:
    """A sink for ``_Files.download`` that writes into ``sink`` only the bytes that fall in
    ``gaps`` (sorted, apart), dropping the rest (written locally already)."""

    def __init__(self, sink: IO[bytes], gaps: list[tuple[int, int]]) -> None:
        self.sink = sink
        self.gaps = gaps
        self.pos = 0
        self.next = 0  # the first gap that may still take bytes

    def seek(self, n: int, whence: int = 0) -> int:
        self.pos = self.pos + n if whence == 1 else n
        return self.pos

    def write(self, data: bytes) -> int:
        end = self.pos + len(data)
        while self.next < len(self.gaps) and sum(self.gaps[self.next]) <= self.pos:
            self.next += 1
        for offset, length in self.gaps[self.next :]:
            if offset >= end:
                break
            lo, hi = max(offset, self.pos), min(offset + length, end)
            self.sink.seek(lo)
            self.sink.write(data[lo - self.pos : hi - self.pos])
        self.pos = end
        return len(data)

    def truncate(self, size: int | None = None) -> int:
        return self.pos if size is None else size  # the local copy has the disk's size


def _no_room(exc: OSError, what: str, size: int) -> VmctlError:
    """An error of the local copy: ENOSPC as InsufficientResources, else DriverError."""
    if exc.errno == 28:
        return InsufficientResources(
            f"{what}: no room for the local copy of the disk ({size} bytes) in "
            f"{tempfile.gettempdir()}: {exc}"
        )
    return DriverError(f"{what}: the local copy of the disk failed: {exc}")


def _write_zeroes(sink: IO[bytes], length: int) -> None:
    zero = bytes(min(BLOCK, length))
    while length:
        n = min(len(zero), length)
        sink.write(zero[:n])
        length -= n


__all__ = ["DatastoreFiles", "EsxBackup", "split_datastore_path"]
