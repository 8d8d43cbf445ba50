"""The backup job: a point in time from the driver, chunks into the repository, the
manifest last.

1. take a shared repository lock;
2. find this VM's newest complete backup (the parent) unless ``full``;
3. open a point in time (quiesced when asked, or when the host can and the VM runs);
4. per disk: the chunks to read are those touching the extents changed since the parent's
   checkpoint (incremental), else those touching the allocated extents (full); every
   other chunk is copied from the parent's list (or is zeroes);
5. read those chunks, hash, compress and store the ones the repository lacks (a pool of
   workers; the driver is read by one thread in order), into a batch (``Store.batch``)
   flushed to disk every COMMIT_EVERY chunks and at the end: one wait for the disk, not
   one per chunk;
6. write the manifest, atomically, after that last flush: only now is the backup listed;
7. release the point in time and the lock, also after a failure.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .._capabilities import Capability
from .._deadline import Deadline
from .._diskaccess import PointInTime, PointInTimeDisk
from .._errors import InvalidState, NotFound, ValidationError, VmctlError
from .._model import to_dict
from .._state import PowerState
from ..spi import ChangedBlocks, DiskAccess
from . import _chunks
from ._chunking import chunk_count, chunk_span, chunks_touching
from ._locks import acquire
from ._manifest import DiskIndex, Manifest
from ._model import BackupInfo, BackupKind, BackupProgress
from ._repo import Progress, Repository, info, new_backup_id, open_repo

if TYPE_CHECKING:
    from .._connection import Connection
    from .._vm import VM

log = logging.getLogger("vmctl.backup")

#: Chunks hashed, compressed and stored at once, and chunks read ahead of them.
WORKERS = 4
IN_FLIGHT = 8
#: Chunks written before they are made durable and visible together (Batch.commit): a
#: crash loses at most these, and the last commit comes before the manifest.
COMMIT_EVERY = 256
PROGRESS_EVERY_S = 0.2


def check_progress(progress: object) -> Progress | None:
    if progress is not None and not callable(progress):
        raise ValidationError("must be a callable taking a BackupProgress", field="progress")
    return progress  # type: ignore[return-value]


class Reporter:
    """Calls ``progress`` at most every PROGRESS_EVERY_S seconds, and at the end."""

    def __init__(self, progress: Progress | None, phase: str, total: int) -> None:
        self.progress = progress
        self.phase = phase
        self.total = total
        self.done = 0
        self._last = 0.0

    def add(self, n: int, disk_id: str | None, *, final: bool = False) -> None:
        self.done += n
        if self.progress is None:
            return
        now = time.monotonic()
        if final or now - self._last >= PROGRESS_EVERY_S:
            self._last = now
            self.progress(BackupProgress(self.phase, self.done, self.total, disk_id))


class _Plan:
    """What to read of one disk."""

    def __init__(self, disk: PointInTimeDisk, chunks: list[str | None], read: list[int]) -> None:
        self.disk = disk
        self.chunks = chunks
        self.read = read
        self.note = ""
        self.incremental = False
        self.new_chunks = 0


class BackupJob:
    def __init__(
        self,
        vm: VM,
        repo: Repository,
        *,
        full: bool,
        quiesce: bool | None,
        progress: Progress | None,
        deadline: Deadline,
    ) -> None:
        self.vm = vm
        self.repo = repo
        self.full = full
        self.quiesce = quiesce
        self.progress = progress
        self.deadline = deadline
        self.conn: Connection = vm._conn
        driver = self.conn.driver
        assert isinstance(driver, DiskAccess)
        self.driver: DiskAccess = driver
        self.stats = {"read_bytes": 0, "new_bytes": 0, "new_chunks": 0, "reused_chunks": 0}
        self._stats_lock = threading.Lock()
        self._seen: set[str] = set()
        self._batch = repo.chunk_batch()

    def step(self) -> Deadline:
        """The deadline of one driver call: the operation timeout, within the job's."""
        return self.deadline.sooner(self.conn.timeouts.operation_s)

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return self.conn.dispatcher.call(what, fn, *args, deadline=self.step(), **kw)

    # -- the job ----------------------------------------------------------------------------

    def run(self) -> BackupInfo:
        vm, conn = self.vm, self.conn
        started = dt.datetime.now(dt.UTC)
        state = vm._read(self.step()).state
        if state is PowerState.UNKNOWN:
            raise InvalidState(f"cannot back up VM {vm.name!r}: its state is unknown")
        config = self.call(f"get config of {vm.name!r}", conn.driver.get_config, vm.uuid)
        lock = acquire(self.repo._store, "backup", exclusive=False)
        try:
            parent, kind_reason = self._parent()
            pit, quiesce_note = self._open(state)
            try:
                manifest = self._read_all(pit, parent, kind_reason, config, started, lock)
                manifest = _with_note(manifest, quiesce_note)
                self.repo.write_manifest(manifest)  # last: from now on the backup exists
            finally:
                self._close(pit)
        finally:
            lock.release()
        log.info("backup %s of VM %r: %s", manifest.id, vm.name, manifest.reason)
        return info(manifest, self.repo.url)

    def _parent(self) -> tuple[Manifest | None, str]:
        if self.full:
            return None, "full: asked for (full=True)"
        if Capability.BACKUP_INCREMENTAL not in self.conn.capabilities:
            return None, (
                f"full: the {self.conn.driver_name} driver does not track changed blocks "
                "(no backup_incremental capability)"
            )
        mine = [m for m in self.repo.manifests()[0] if m.vm_uuid == self.vm.uuid]
        if not mine:
            return None, "full: no earlier backup of this VM in the repository"
        parent = mine[-1]
        if parent.chunk_size != self.repo.chunk_size:
            return None, f"full: the parent {parent.id} has another chunk size"
        return parent, f"incremental: the extents changed since backup {parent.id}"

    def _open(self, state: PowerState) -> tuple[PointInTime, str]:
        can = Capability.BACKUP_QUIESCE in self.conn.capabilities
        want = self.quiesce if self.quiesce is not None else can and state is PowerState.RUNNING
        what = f"open a point in time of VM {self.vm.name!r}"
        try:
            return self.call(what, self.driver.open_point_in_time, self.vm.uuid, quiesce=want), ""
        except InvalidState as exc:
            if self.quiesce is not None or not want:
                raise
            note = f"not quiesced: {exc}"
            log.info("%s: %s; taking a crash-consistent point in time", what, exc)
            pit = self.call(what, self.driver.open_point_in_time, self.vm.uuid, quiesce=False)
            return pit, note

    def _close(self, pit: PointInTime) -> None:
        try:
            self.conn.dispatcher.call(
                "release the point in time",
                self.driver.close_point_in_time,
                pit,
                deadline=Deadline.after(self.conn.timeouts.operation_s),
            )
        except VmctlError as exc:  # the backup's own outcome matters more
            log.warning("releasing point in time %s of VM %r failed: %s", pit.id, self.vm.name, exc)

    def _plan(self, pit: PointInTime, disk: PointInTimeDisk, parent: Manifest | None) -> _Plan:
        size, cs = disk.size_bytes, self.repo.chunk_size
        n = chunk_count(size, cs)
        before = (
            None if parent is None else next((d for d in parent.disks if d.id == disk.id), None)
        )
        note = ""
        if parent is not None:
            if before is None:
                note = "new disk: read whole"
            elif before.size_bytes != size:
                note = f"resized from {before.size_bytes} bytes: read whole"
            elif not before.checkpoint or not disk.checkpoint:
                note = "no checkpoint: read whole"
        if parent is not None and before is not None and not note:
            assert isinstance(self.driver, ChangedBlocks) and before.checkpoint
            try:
                changed = self.call(
                    f"list changed extents of disk {disk.id}",
                    self.driver.changed_extents,
                    pit,
                    disk.id,
                    before.checkpoint,
                )
            except NotFound as exc:
                note = f"read whole: {exc}"
            else:
                plan = _Plan(disk, list(before.chunks), chunks_touching(changed, size, cs))
                plan.incremental = True
                return plan
        allocated = self.call(
            f"list allocated extents of disk {disk.id}", self.driver.allocated_extents, pit, disk.id
        )
        plan = _Plan(disk, [None] * n, chunks_touching(allocated, size, cs))
        plan.note = note
        return plan

    def _read_all(
        self,
        pit: PointInTime,
        parent: Manifest | None,
        reason: str,
        config: Any,
        started: dt.datetime,
        lock: Any,
    ) -> Manifest:
        plans = [self._plan(pit, d, parent) for d in pit.disks]
        total = sum(
            chunk_span(i, p.disk.size_bytes, self.repo.chunk_size)[1] for p in plans for i in p.read
        )
        reporter = Reporter(self.progress, "backup", total)
        try:
            with ThreadPoolExecutor(WORKERS, thread_name_prefix="vmctl-backup") as pool:
                for plan in plans:
                    self._read_disk(pit, plan, pool, reporter, lock)
            self._batch.commit()  # every chunk durable and in place before the manifest
        except BaseException:
            self._batch.abort()
            raise
        reporter.add(0, None, final=True)
        incremental = [p for p in plans if p.incremental]
        if parent is not None and not incremental:
            kind = BackupKind.FULL
            notes = "; ".join(f"disk {p.disk.id}: {p.note}" for p in plans)
            reason = f"full: {notes}" if plans else "full: the VM has no disks"
        elif parent is not None:
            kind = BackupKind.INCREMENTAL
        else:
            kind = BackupKind.FULL
        created = dt.datetime.now(dt.UTC)
        return Manifest(
            id=new_backup_id(started),
            vm_uuid=self.vm.uuid,
            vm_name=self.vm.name,
            source=str(self.conn.uri),
            driver=self.conn.driver_name,
            created=started,
            completed=created,
            kind=kind,
            reason=reason,
            parent=parent.id if parent is not None and incremental else None,
            consistency=pit.consistency,
            chunk_size=self.repo.chunk_size,
            config=to_dict(config),
            disks=tuple(
                DiskIndex(
                    id=p.disk.id,
                    size_bytes=p.disk.size_bytes,
                    chunks=tuple(p.chunks),
                    name=p.disk.name,
                    bus=p.disk.bus,
                    checkpoint=p.disk.checkpoint,
                    read_chunks=len(p.read),
                    new_chunks=p.new_chunks,
                    note=p.note,
                )
                for p in plans
            ),
            stats=dict(self.stats),
        )

    def _read_disk(
        self,
        pit: PointInTime,
        plan: _Plan,
        pool: ThreadPoolExecutor,
        reporter: Reporter,
        lock: Any,
    ) -> None:
        disk, cs = plan.disk, self.repo.chunk_size
        pending: deque[tuple[int, int, Future[tuple[str | None, bool]]]] = deque()

        def settle(wait_first: bool) -> None:
            """Take the finished chunks in order; wait for the first one if asked."""
            while pending and (wait_first or pending[0][2].done()):
                wait_first = False
                index, length, future = pending.popleft()
                digest, new = future.result()
                plan.chunks[index] = digest
                plan.new_chunks += new
                if len(self._batch) >= COMMIT_EVERY:
                    self._batch.commit()
                reporter.add(length, disk.id)

        try:
            for index in plan.read:
                offset, length = chunk_span(index, disk.size_bytes, cs)
                data = self.call(
                    f"read disk {disk.id} at {offset}",
                    self.driver.read_extent,
                    pit,
                    disk.id,
                    offset,
                    length,
                )
                if len(data) != length:
                    raise VmctlError(
                        f"the driver returned {len(data)} bytes of disk {disk.id} at {offset}, "
                        f"not {length}"
                    )
                with self._stats_lock:
                    self.stats["read_bytes"] += length
                pending.append((index, length, pool.submit(self._store_chunk, data)))
                settle(len(pending) >= IN_FLIGHT)
                lock.refresh()
            while pending:
                settle(True)
        finally:
            for _, _, future in pending:
                future.cancel()

    def _store_chunk(self, data: bytes) -> tuple[str | None, bool]:
        """(digest or None for zeroes, whether it was new to the repository): hash, and
        compress and write (into the batch) only what the repository lacks."""
        if _chunks.is_zero(data):
            return None, False
        digest = _chunks.digest_of(data)
        with self._stats_lock:
            if digest in self._seen:
                self.stats["reused_chunks"] += 1
                return digest, False
            self._seen.add(digest)
        if self.repo.has_chunk(digest):
            with self._stats_lock:
                self.stats["reused_chunks"] += 1
            return digest, False
        header, payload = _chunks.pack(data)
        self._batch.put(_chunks.chunk_path(digest), header, payload)
        with self._stats_lock:
            self.stats["new_chunks"] += 1
            self.stats["new_bytes"] += len(header) + len(payload)
        return digest, True


def _with_note(m: Manifest, note: str) -> Manifest:
    if not note:
        return m
    import attrs

    return attrs.evolve(m, reason=f"{m.reason}; {note}")


def backup_vm(
    vm: VM,
    repo: Repository | str,
    *,
    full: bool = False,
    quiesce: bool | None = None,
    progress: Progress | None = None,
    timeout: float | None = None,
) -> BackupInfo:
    """Back up ``vm`` into ``repo`` (a Repository or a URL); see ``VM.backup``."""
    from .._vm import VM

    if not isinstance(vm, VM):
        raise ValidationError(f"expected a VM, got {type(vm).__name__}", field="vm")
    if not isinstance(full, bool):
        raise ValidationError("must be True or False", field="full")
    if quiesce is not None and not isinstance(quiesce, bool):
        raise ValidationError("must be True, False or None (when the host can)", field="quiesce")
    check_progress(progress)
    conn = vm._conn
    deadline = conn.deadline(timeout, None)
    conn.require(Capability.BACKUP, f"back up VM {vm.name!r}")
    if quiesce:
        conn.require(Capability.BACKUP_QUIESCE, f"a quiesced backup of VM {vm.name!r}")
    if not isinstance(repo, Repository):
        if not isinstance(repo, str):
            raise ValidationError("give a Repository or a repository URL", field="repo")
        repo = open_repo(repo)
    job = BackupJob(vm, repo, full=full, quiesce=quiesce, progress=progress, deadline=deadline)
    return job.run()
