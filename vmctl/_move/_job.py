"""The move job: a VM's disks read at one point in time on the source, written into a new
VM on the target, read back through the target and compared.

1. validate the arguments; take this machine's lock on the source VM (Conflict when it is
   being moved already);
2. read the source's configuration, plan the target's spec (``_mapping``), check the
   target's capabilities, the name, and its hosts' CPUs and memory: a refusal here has
   touched nothing; ``dry_run`` stops here with the mapping report;
3. create the VM on the target (stopped); open a point in time of the source;
4. per disk, the allocated extents in pieces of PIECE bytes: read from the source (one
   thread, in order, a few pieces ahead), hashed, written through the target's
   ``DiskWriter`` (all-zero pieces skipped: a new disk reads as zeroes), then
   ``flush_writes``;
5. release the point in time; read the target's disks back (``disk_digests``, one point in
   time) and compare;
6. power the target on if asked; delete the source if ``keep_source=False``.

Any failure in 3-6 deletes the target VM (``left_behind`` names it if that fails) and
leaves the source as it was. Every driver call goes through the connection's dispatcher
with the job's deadline.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .._capabilities import Capability
from .._deadline import Deadline, check_seconds
from .._diskaccess import Consistency, ExtentData, PointInTime, PointInTimeDisk
from .._errors import (
    AlreadyExists,
    Conflict,
    InsufficientResources,
    InvalidState,
    NotFound,
    NotSupported,
    ValidationError,
    VmctlError,
)
from .._maintenance import state_dir
from .._model import Firmware, VMConfig, VMSpec
from .._state import PowerState
from .._validate import check_name
from ..backup._backup import Reporter, check_progress
from ..backup._chunking import chunk_span, chunks_touching
from ..backup._diskio import flushed
from ..backup._model import BackupProgress
from ..spi import ChangedBlocks, DiskAccess, DiskWriter, PlacementChecks, StorageSpace
from ._digest import PIECE, combine, is_zero, piece_hash
from ._mapping import check_network_map, mapping, target_spec
from ._model import MappingKind, MappingNote, MovedDisk, MoveReport

if TYPE_CHECKING:
    from .._connection import Connection
    from .._hypervisor import Hypervisor
    from .._vm import VM

log = logging.getLogger("vmctl.move")
MIB = 1024 * 1024
#: Pieces (of PIECE bytes) read ahead of the writes, and written per call.
AHEAD = 4
#: Seconds a running source's guest has to shut down for the final copy before power-off.
STOP_GRACE_S = 120.0
WRITE_RUN = 4

Progress = Callable[[BackupProgress], None]


# -- the lock: one move of a VM at a time on this machine ------------------------------------


@contextlib.contextmanager
def _moving(conn: Connection, vm: VM) -> Iterator[None]:
    """An flock on a file named by the source URI and the VM's UUID under vmctl's state
    directory (``$VMCTL_STATE_DIR``): a second move of the VM, from this process or another
    one, is refused with Conflict. The kernel drops the lock if the process dies."""
    key = hashlib.sha256(f"{conn.uri}\0{vm.uuid}".encode()).hexdigest()[:32]
    folder = os.path.join(state_dir(), "moves")
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(os.path.join(folder, f"{key}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise VmctlError(f"cannot take the move lock in {folder}: {exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise Conflict(
                f"VM {vm.name!r} ({vm.uuid}) is being moved already (by this or another "
                "process on this machine); wait for that move to end"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# -- validation and the plan ----------------------------------------------------------------


def _check_args(
    vm: object,
    target: object,
    name: object,
    storage: object,
    power_on: object,
    keep_source: object,
    dry_run: object,
    progress: object,
    keep_macs: object = False,
) -> None:
    from .._hypervisor import Hypervisor
    from .._vm import VM

    if not isinstance(vm, VM):
        raise ValidationError(f"expected a VM, got {type(vm).__name__}", field="vm")
    if not isinstance(target, Hypervisor):
        raise ValidationError(
            f"expected a Hypervisor (vmctl.connect(...)), got {type(target).__name__}",
            field="target",
        )
    if target.closed:
        raise ValidationError(f"the connection to {target.uri} is closed", field="target")
    if name is not None:
        check_name(name)
    if storage is not None:
        check_name(storage, "storage")
    if power_on is not None and not isinstance(power_on, bool):
        raise ValidationError("must be True, False or None (as the source)", field="power_on")
    flags = (("keep_source", keep_source), ("dry_run", dry_run), ("keep_macs", keep_macs))
    for flag, value in flags:
        if not isinstance(value, bool):
            raise ValidationError("must be True or False", field=flag)
    check_progress(progress)


#: Why a driver has no disk data path (capabilities backup/restore), for the refusal.
_NO_DATA_PATH = {
    "hyperv": "Hyper-V's WS-Management interface (WMI over WinRM) manages a VM's VHD/VHDX "
    "files but carries none of their bytes: reading or writing them needs SMB or a shell on "
    "the host, which vmctl's Hyper-V driver does not use",
}


def _check_data_path(sconn: Connection, tconn: Connection) -> None:
    """Both ends must move disk bytes: the source reads them (backup), the target writes
    and reads them back (restore, backup). Refused before anything is read or made, with
    the reason where a driver is known to have no data path (Hyper-V)."""
    for conn, role, needs in (
        (sconn, "from", (Capability.BACKUP,)),
        (tconn, "to", (Capability.RESTORE, Capability.BACKUP)),
    ):
        missing = [c for c in needs if c not in conn.capabilities]
        if not missing:
            continue
        why = _NO_DATA_PATH.get(conn.driver_name)
        raise NotSupported(
            f"cannot move a VM {role} {conn.uri}: the {conn.driver_name} driver has no disk "
            f"data path (capabilities {', '.join(c.value for c in missing)} missing)"
            + (f": {why}" if why else "")
            + "; nothing was touched",
            capability=missing[0],
        )


def _check_grace(value: object) -> float:
    """``shutdown_timeout``: seconds (0: power off at once, without asking the guest)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        return 0.0
    grace = check_seconds(value, "shutdown_timeout", allow_none=False)
    assert grace is not None
    return grace


def _check_target(target: Hypervisor, spec: VMSpec, *, start: bool) -> None:
    """Capabilities, the name, and whether a host of the target has the CPUs and memory."""
    conn = target._conn
    conn.require(Capability.CREATE, "move a VM here")
    conn.require(Capability.RESTORE, "write a moved VM's disks")
    conn.require(Capability.BACKUP, "read a moved VM's disks back for verification")
    conn.require(Capability.DELETE, "delete a half-moved VM after a failure")
    if start:
        conn.require(Capability.START, "power on the moved VM")
    taken = [i for i in target.list_vms() if i.name == spec.name]
    if taken:
        raise AlreadyExists(
            f"the target {target.uri} has a VM named {spec.name!r} ({taken[0].uuid}) already: "
            "give the moved VM another name (name=..., --name)"
        )
    hosts = [h for h in target.hosts() if h.takes_vms]
    if not hosts:
        raise InsufficientResources(f"no host of {target.uri} takes VMs (maintenance?)")
    if max(h.cpus for h in hosts) < spec.vcpus:
        raise InsufficientResources(
            f"the VM has {spec.vcpus} vCPUs; the largest host of {target.uri} has "
            f"{max(h.cpus for h in hosts)} CPUs"
        )
    if max(h.memory_mib for h in hosts) < spec.memory_mib:
        raise InsufficientResources(
            f"the VM has {spec.memory_mib} MiB of memory; the largest host of {target.uri} has "
            f"{max(h.memory_mib for h in hosts)} MiB"
        )
    if start:
        free = [h.memory_free_mib for h in hosts if h.memory_free_mib is not None]
        if free and len(free) == len(hosts) and max(free) < spec.memory_mib:
            raise InsufficientResources(
                f"the VM needs {spec.memory_mib} MiB to run; the hosts of {target.uri} have at "
                f"most {max(free)} MiB free: move it without power_on, or free memory"
            )


def _check_placement(
    target: Hypervisor, spec: VMSpec, pool: str | None, deadline: Deadline
) -> list[MappingNote]:
    """The target's networks, the free space of the storage the disks go to and (for MACs
    kept) the target's MAC rules, where its driver can tell (``PlacementChecks``): a VM
    that cannot land is refused here, before anything is made, with the reason. Returns
    what was checked, for the mapping report."""
    conn = target._conn
    driver = conn.driver
    if not isinstance(driver, PlacementChecks):
        return [
            MappingNote(
                MappingKind.UNKNOWN,
                "target storage and networks",
                detail=f"not checked before the VM is made (the {conn.driver_name} driver cannot "
                "tell); a full storage or a missing network is found at create or write time "
                "and what was made deleted",
            )
        ]

    def call(what: str, fn: Callable[..., Any], *args: Any) -> Any:
        return conn.dispatcher.call(what, fn, *args, deadline=deadline.sooner(conn.timeouts.read_s))

    for network in sorted({n.network for n in spec.nics}):
        try:
            call(f"look up network {network!r} on {target.uri}", driver.check_network, network)
        except NotFound as exc:
            raise NotFound(
                f"the target {target.uri} has no network {network!r} for the moved VM's NICs: "
                f"{exc}; map the VM's networks to the target's (network_map={{source: "
                "target}, --network SRC=DST); nothing was made"
            ) from exc
    for nic in spec.nics:
        refusal = driver.mac_refusal(nic.mac) if nic.mac else None
        if refusal:
            raise ValidationError(
                f"the target {target.uri} would refuse the kept MAC {nic.mac} of the NIC on "
                f"{nic.network!r}: {refusal}; move without keep_macs (new MACs) instead; "
                "nothing was made",
                field="keep_macs",
            )
    needed = sum(d.size_mib for d in spec.disks) * MIB
    if not spec.disks:
        return []
    try:
        space: StorageSpace = call(
            f"read the free space of the storage on {target.uri}", driver.storage_space, pool
        )
    except NotFound as exc:
        raise NotFound(
            f"the target {target.uri} has no storage {pool!r} for the moved VM's disks: {exc}; "
            "pick one (storage=..., --storage); nothing was made"
        ) from exc
    if needed > space.free_bytes:
        raise InsufficientResources(
            f"the moved VM's disks need {needed // MIB} MiB (their full size) on {space.name!r} "
            f"of {target.uri}, which has {space.free_bytes // MIB} MiB free: free space there, "
            "or pick other storage (storage=..., --storage); nothing was made"
        )
    return [
        MappingNote(
            MappingKind.KEPT,
            "target storage",
            f"{needed // MIB} MiB of disks",
            f"{space.name}: {space.free_bytes // MIB} MiB free",
            "checked before the VM was made",
        )
    ]


def _firmwares(target: Hypervisor, deadline: Deadline) -> frozenset[Firmware] | None:
    """The firmware the target can make VMs with (None: its driver does not say)."""
    conn = target._conn
    driver = conn.driver
    if not isinstance(driver, PlacementChecks):
        return None
    found: frozenset[Firmware] | None = conn.dispatcher.call(
        f"read the firmware {target.uri} can make VMs with",
        driver.firmwares,
        deadline=deadline.sooner(conn.timeouts.read_s),
    )
    return found


def _config_disks(config: VMConfig) -> list[PointInTimeDisk]:
    """The disks as the plan sees them before a point in time gives exact sizes."""
    return [
        PointInTimeDisk(id=d.id, size_bytes=d.size_mib * MIB, name=d.name, bus=d.bus)
        for d in config.disks
    ]


# -- the copy ---------------------------------------------------------------------------------


class _Copy:
    """Copies the disks of one point in time into the target VM's disks."""

    def __init__(
        self, src: VM, dst: VM, pit: PointInTime, deadline: Deadline, reporter: Reporter
    ) -> None:
        self.src, self.dst, self.pit = src, dst, pit
        self.sconn, self.dconn = src._conn, dst._conn
        reader = self.sconn.driver
        writer = self.dconn.driver
        assert isinstance(reader, DiskAccess) and isinstance(writer, DiskWriter)
        self.reader: DiskAccess = reader
        self.writer: DiskWriter = writer
        self.deadline = deadline
        self.reporter = reporter

    def _step(self, conn: Connection) -> Deadline:
        return self.deadline.sooner(conn.timeouts.operation_s)

    def pieces(self, disk: PointInTimeDisk) -> list[int]:
        """The indexes of the PIECE-sized pieces the allocated extents touch."""
        extents = self.sconn.dispatcher.call(
            f"list allocated extents of disk {disk.id} of VM {self.src.name!r}",
            self.reader.allocated_extents,
            self.pit,
            disk.id,
            deadline=self._step(self.sconn),
        )
        return chunks_touching(extents, disk.size_bytes, PIECE)

    def _read_hashed(
        self, disk: PointInTimeDisk, offset: int, length: int
    ) -> tuple[bytes, bytes, bool]:
        """A piece, its digest and whether it is all zeroes (told by its digest), in the
        read-ahead thread: hashing releases the GIL, so it runs beside the target's writes
        in the main thread."""
        data = self._read(disk, offset, length)
        digest = piece_hash(data)
        return data, digest, is_zero(digest, length)

    def _read(self, disk: PointInTimeDisk, offset: int, length: int) -> bytes:
        data: bytes = self.sconn.dispatcher.call(
            f"read disk {disk.id} of VM {self.src.name!r} at {offset}",
            self.reader.read_extent,
            self.pit,
            disk.id,
            offset,
            length,
            deadline=self._step(self.sconn),
        )
        if len(data) != length:
            raise VmctlError(
                f"the {self.sconn.driver_name} driver returned {len(data)} bytes of disk "
                f"{disk.id} at {offset}, not {length}"
            )
        return data

    def disk(
        self,
        disk: PointInTimeDisk,
        target_id: str,
        pieces: list[int],
        pool: ThreadPoolExecutor,
        digests: dict[int, bytes],
        *,
        zeroes: bool,
    ) -> int:
        """Read the pieces in order (a few ahead, in the pool's one thread), hash each into
        ``digests``, write them in batches of WRITE_RUN: pieces of zeroes as zeroes when
        ``zeroes`` (a final sync over older content), else not at all (a new disk reads as
        zeroes). Returns the bytes written with data."""
        batch: list[ExtentData] = []
        copied = 0
        pending: deque[tuple[int, Future[tuple[bytes, bytes, bool]]]] = deque()

        def write() -> None:
            if batch:
                self.dconn.dispatcher.call(
                    f"write disk {target_id} of VM {self.dst.name!r} at {batch[0].offset}",
                    self.writer.write_extents,
                    self.dst.uuid,
                    target_id,
                    list(batch),
                    deadline=self._step(self.dconn),
                )
                batch.clear()

        def take() -> None:
            nonlocal copied
            index, future = pending.popleft()
            data, digests[index], zero = future.result()
            if not zero:
                batch.append(ExtentData(index * PIECE, len(data), data))
                copied += len(data)
            elif zeroes:
                batch.append(ExtentData(index * PIECE, len(data), None))
            if len(batch) >= WRITE_RUN:
                write()
            self.reporter.add(len(data), disk.id)

        with flushed(self.dst, target_id, self.deadline):
            try:
                for index in pieces:
                    offset, length = chunk_span(index, disk.size_bytes, PIECE)
                    pending.append((index, pool.submit(self._read_hashed, disk, offset, length)))
                    if len(pending) >= AHEAD:
                        take()
                while pending:
                    take()
                write()
            finally:
                for _, future in pending:
                    future.cancel()
        return copied

    def changed_pieces(self, disk: PointInTimeDisk, since: str, before: list[int]) -> list[int]:
        """The pieces written since the checkpoint ``since``; where the host no longer knows
        it, every piece allocated now or copied before."""
        assert isinstance(self.reader, ChangedBlocks)
        try:
            extents = self.sconn.dispatcher.call(
                f"list the extents of disk {disk.id} of VM {self.src.name!r} changed meanwhile",
                self.reader.changed_extents,
                self.pit,
                disk.id,
                since,
                deadline=self._step(self.sconn),
            )
        except NotFound as exc:
            log.info("final sync of disk %s: %s; reading it whole", disk.id, exc)
            return sorted(set(self.pieces(disk)) | set(before))
        return chunks_touching(extents, disk.size_bytes, PIECE)


class _Pass:
    """What one pass over the source's disks (the copy, or the final sync) left."""

    def __init__(self) -> None:
        self.digests: dict[str, dict[int, bytes]] = {}
        self.pieces: dict[str, list[int]] = {}
        self.checkpoints: dict[str, str | None] = {}
        self.copied: dict[str, int] = {}
        self.sizes: dict[str, int] = {}  # in the source's order
        self.consistency: Consistency | None = None


# -- the job ----------------------------------------------------------------------------------


def move(
    vm: VM,
    target: Hypervisor,
    *,
    name: str | None = None,
    network_map: Mapping[str, str] | None = None,
    storage: str | None = None,
    power_on: bool | None = None,
    keep_source: bool = True,
    progress: Progress | None = None,
    dry_run: bool = False,
    timeout: float | None = None,
    shutdown_timeout: float | None = None,
    keep_macs: bool = False,
) -> MoveReport:
    """Move ``vm`` to the hypervisor ``target`` (any vendor): a new VM there with the
    source's configuration (mapped) and its disks' content, verified by reading it back.

    ``name`` (default: the source's), ``network_map`` {source network: target network}
    (networks not in it keep their name), ``storage`` the target's pool/SR/datastore for the
    disks (default: the target's), ``power_on`` (None: if the source was running),
    ``keep_source=False`` deletes the source after verification; a running source is then
    copied while it runs, stopped (its guest asked to shut down, powered off after
    ``shutdown_timeout`` seconds, default STOP_GRACE_S), and the pieces written meanwhile
    copied in a final sync where the host tracks changed blocks (else it is stopped before
    the copy). ``progress`` is called
    with ``BackupProgress(phase="move" or "final sync", ...)``. ``dry_run`` returns the
    mapping report having touched nothing. Refusals (bad input, a missing capability, a
    name taken, a target too small, the VM being moved already) come before anything is
    made; a failure later deletes what was made on the target and leaves the source as it
    was (started again if the move stopped it). ``timeout``: seconds for the whole move.
    """
    _check_args(vm, target, name, storage, power_on, keep_source, dry_run, progress, keep_macs)
    sconn, tconn = vm._conn, target._conn
    deadline = sconn.deadline(timeout, None)
    grace = _check_grace(STOP_GRACE_S if shutdown_timeout is None else shutdown_timeout)
    _check_data_path(sconn, tconn)
    if not keep_source:
        sconn.require(Capability.DELETE, f"delete VM {vm.name!r} after moving it")
    started = time.monotonic()
    with _moving(sconn, vm):
        state = vm.info().state
        if state is PowerState.UNKNOWN:
            raise InvalidState(f"cannot move VM {vm.name!r}: its state is unknown")
        if not keep_source and state not in (PowerState.STOPPED, PowerState.RUNNING):
            raise InvalidState(
                f"cannot move VM {vm.name!r} with keep_source=False while it is "
                f"{state.value}: stop it (or start it) first",
                current=state,
                allowed={PowerState.STOPPED, PowerState.RUNNING},
            )
        # A running source that is to go: copied while it runs, then stopped and the blocks
        # changed meanwhile copied (where it tracks changes), or stopped before the copy.
        live = not keep_source and state is PowerState.RUNNING
        if live and timeout is not None and grace >= deadline.seconds:
            raise ValidationError(
                f"shutdown_timeout ({grace:g} s) must be shorter than the move's timeout "
                f"({deadline.seconds:g} s): the running source is stopped within it",
                field="shutdown_timeout",
            )
        synced = live and Capability.BACKUP_INCREMENTAL in sconn.capabilities
        start = state is PowerState.RUNNING if power_on is None else power_on
        config = vm.config()
        networks = check_network_map(config, network_map)
        cross = sconn.driver_name != tconn.driver_name
        new_name = name or vm.name
        firmwares = _firmwares(target, deadline)
        spec = target_spec(
            config,
            _config_disks(config),
            name=new_name,
            pool=storage,
            target_caps=target.capabilities,
            networks=networks,
            cross_vendor=cross,
            keep_macs=keep_macs,
            firmwares=firmwares,
        )
        _check_target(target, spec, start=start)
        checked = _check_placement(target, spec, storage, deadline)
        snapshots = len(vm.snapshots()) if Capability.SNAPSHOT in sconn.capabilities else None

        def report(made: VMConfig | None, **kw: Any) -> MoveReport:
            notes, needs = mapping(
                config,
                spec,
                made,
                snapshots=snapshots,
                source_driver=sconn.driver_name,
                target_driver=tconn.driver_name,
                keep_source=keep_source,
                checks=checked,
                firmwares=firmwares,
            )
            return MoveReport(
                source_uri=str(sconn.uri),
                target_uri=str(tconn.uri),
                source_vm=vm.name,
                source_uuid=vm.uuid,
                target_name=new_name,
                dry_run=dry_run,
                mapping=notes,
                guest_needs=needs,
                duration_s=time.monotonic() - started,
                **kw,
            )

        if dry_run:
            disks = tuple(
                MovedDisk(source_id=d.id, size_bytes=d.size_mib * MIB) for d in config.disks
            )
            return report(None, disks=disks)
        made = _create(target, spec, _left(deadline, timeout))
        stopped_at: float | None = None
        passes: list[_Pass] = []
        try:
            if live and not synced:
                stopped_at = _stop(vm, deadline, timeout, grace)
            passes.append(_copy_all(vm, made, deadline, progress, None))
            if synced:
                stopped_at = _stop(vm, deadline, timeout, grace)
                passes.append(_copy_all(vm, made, deadline, progress, passes[0]))
            moved = _verify(made, _moved(made, passes), deadline)
            if start:
                made.start(timeout=_left(deadline, timeout))
        except BaseException as exc:
            _discard(made, exc)
            if stopped_at is not None:
                _restart(vm, exc)
            raise
        downtime = None if stopped_at is None else time.monotonic() - stopped_at
        consistency = passes[-1].consistency
        made_config = made.config()
        deleted = False
        if not keep_source:
            try:
                vm.delete(force=False, timeout=_left(deadline, timeout))
            except VmctlError as exc:
                exc.message += (
                    f" (the move itself succeeded: VM {made.name!r} ({made.uuid}) on "
                    f"{tconn.uri} holds the verified disks; the source VM {vm.name!r} was not "
                    "deleted)"
                )
                raise
            deleted = True
        log.info("moved VM %r from %s to %s as %r", vm.name, sconn.uri, tconn.uri, made.name)
        return report(
            made_config,
            disks=moved,
            target_uuid=made.uuid,
            consistency=consistency,
            powered_on=start,
            source_deleted=deleted,
            copied_bytes=sum(d.copied_bytes for d in moved),
            final_sync_bytes=sum(passes[1].copied.values()) if len(passes) > 1 else None,
            downtime_s=downtime,
        )


def _stop(vm: VM, deadline: Deadline, timeout: float | None, grace: float) -> float:
    """Stop the running source for the final copy: its guest asked to shut down (powered
    off after ``grace`` seconds; at once when 0), or powered off where the host cannot
    ask. Returns when."""
    at = time.monotonic()
    conn = vm._conn
    if grace > 0 and Capability.SHUTDOWN in conn.capabilities:
        # The shutdown's own timeout bounds the grace and the power-off after it.
        extra = conn.timeouts.operation_s
        wait = None if extra is None else grace + extra
        if timeout is not None:
            left = max(deadline.remaining(), 0.001)
            wait = left if wait is None else min(wait, left)
        if wait is not None and grace >= wait:
            raise ValidationError(
                f"shutdown_timeout ({grace:g} s) leaves no time of the move's timeout to power "
                "the source off after it",
                field="shutdown_timeout",
            )
        vm.shutdown(force_after=grace, timeout=wait)
    else:
        vm.power_off(timeout=_left(deadline, timeout))
    log.info("move: stopped the source VM %r for the final copy", vm.name)
    return at


def _restart(vm: VM, exc: BaseException) -> None:
    """After a failure, the source that the move stopped runs again."""
    try:
        vm.start()
    except VmctlError as again:
        log.warning("move: starting the source VM %r again failed: %s", vm.name, again)
        if isinstance(exc, VmctlError):
            exc.message += (
                f" (the source VM {vm.name!r} was stopped for the move and could not be "
                f"started again: {again})"
            )
    else:
        if isinstance(exc, VmctlError):
            exc.message += f" (the source VM {vm.name!r} was started again)"


def _left(deadline: Deadline, timeout: float | None) -> float | None:
    """What is left of the job's ``timeout`` for a request (None: the request's default)."""
    return None if timeout is None else max(deadline.remaining(), 0.001)


def _create(target: Hypervisor, spec: VMSpec, timeout: float | None) -> VM:
    try:
        return target.create_vm(spec, timeout=timeout)
    except NotFound as exc:
        raise NotFound(
            f"the target {target.uri} refused the moved VM: {exc}; map the VM's networks to "
            "the target's (network_map={source: target}, --network SRC=DST) and pick its "
            "storage (storage=..., --storage)"
        ) from exc


def _copy_all(
    vm: VM, made: VM, deadline: Deadline, progress: Progress | None, before: _Pass | None
) -> _Pass:
    """One pass: a point in time of the source, its disks into the target's. With
    ``before`` (a final sync), only the pieces changed since its checkpoints."""
    sconn = vm._conn
    reader = sconn.driver
    assert isinstance(reader, DiskAccess)
    targets = made.config().disks
    pit = _open(vm, reader, deadline)
    try:
        if len(targets) != len(pit.disks):
            raise VmctlError(
                f"the target made {len(targets)} disks for the {len(pit.disks)} of VM {vm.name!r}"
            )
        for d, t in zip(pit.disks, targets, strict=True):
            if t.size_mib * MIB < d.size_bytes:
                raise InsufficientResources(
                    f"disk {t.id} of the target ({t.size_mib} MiB) is smaller than disk {d.id} "
                    f"({d.size_bytes} bytes)"
                )
        reporter = Reporter(progress, "move" if before is None else "final sync", 0)
        copy = _Copy(vm, made, pit, deadline, reporter)
        out = _Pass()
        out.consistency = pit.consistency
        for d in pit.disks:
            out.checkpoints[d.id] = d.checkpoint
            out.sizes[d.id] = d.size_bytes
            if before is None:
                out.pieces[d.id] = copy.pieces(d)
                out.digests[d.id] = {}
            else:
                since = before.checkpoints.get(d.id)
                old = before.pieces[d.id]
                out.pieces[d.id] = (
                    copy.changed_pieces(d, since, old)
                    if since
                    else sorted(set(copy.pieces(d)) | set(old))
                )
                out.digests[d.id] = dict(before.digests[d.id])
        reporter.total = sum(
            chunk_span(i, d.size_bytes, PIECE)[1] for d in pit.disks for i in out.pieces[d.id]
        )
        with ThreadPoolExecutor(1, thread_name_prefix="vmctl-move") as pool:
            for d, t in zip(pit.disks, targets, strict=True):
                out.copied[d.id] = copy.disk(
                    d, t.id, out.pieces[d.id], pool, out.digests[d.id], zeroes=before is not None
                )
        if before is not None:  # every piece ever copied, for a later pass
            for d in pit.disks:
                out.pieces[d.id] = sorted(set(out.pieces[d.id]) | set(before.pieces[d.id]))
        reporter.add(0, None, final=True)
        return out
    finally:
        with contextlib.suppress(VmctlError):
            sconn.dispatcher.call(
                "release the point in time",
                reader.close_point_in_time,
                pit,
                deadline=Deadline.after(sconn.timeouts.operation_s),
            )


def _open(vm: VM, reader: DiskAccess, deadline: Deadline) -> PointInTime:
    """A point in time of the source: quiesced where the host can ask the guest (capability
    backup_quiesce) and the VM runs; crash-consistent when the guest cannot be asked."""
    conn = vm._conn
    what = f"open a point in time of VM {vm.name!r}"
    quiesce = Capability.BACKUP_QUIESCE in conn.capabilities and (
        vm.info().state is PowerState.RUNNING
    )
    if quiesce:
        try:
            pit: PointInTime = conn.dispatcher.call(
                what,
                reader.open_point_in_time,
                vm.uuid,
                quiesce=True,
                deadline=deadline.sooner(conn.timeouts.operation_s),
            )
            return pit
        except InvalidState as exc:
            log.info("%s: not quiesced (%s); taking a crash-consistent one", what, exc)
    pit = conn.dispatcher.call(
        what,
        reader.open_point_in_time,
        vm.uuid,
        quiesce=False,
        deadline=deadline.sooner(conn.timeouts.operation_s),
    )
    return pit


def _moved(made: VM, passes: list[_Pass]) -> tuple[MovedDisk, ...]:
    last = passes[-1]
    return tuple(
        MovedDisk(
            source_id=disk_id,
            size_bytes=size,
            target_id=t.id,
            copied_bytes=sum(p.copied.get(disk_id, 0) for p in passes),
            source_digest=combine(size, last.digests[disk_id]),
        )
        for (disk_id, size), t in zip(last.sizes.items(), made.config().disks, strict=True)
    )


def _verify(made: VM, moved: tuple[MovedDisk, ...], deadline: Deadline) -> tuple[MovedDisk, ...]:
    """Read the target's disks back at one point in time through its ``DiskAccess`` (the
    pieces its allocated extents touch, up to the source's size) and compare digests."""
    import attrs

    conn = made._conn
    reader = conn.driver
    assert isinstance(reader, DiskAccess)

    def call(what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        step = deadline.sooner(conn.timeouts.operation_s)
        return conn.dispatcher.call(what, fn, *args, deadline=step, **kw)

    what = f"read back the disks of VM {made.name!r}"

    def piece(disk_id: str, offset: int, length: int) -> bytes:
        # In the read-ahead thread; the main thread hashes (releasing the GIL) meanwhile.
        data: bytes = call(what, reader.read_extent, pit, disk_id, offset, length)
        return data

    pit: PointInTime = call(what, reader.open_point_in_time, made.uuid, quiesce=False)
    try:
        out = []
        with ThreadPoolExecutor(1, thread_name_prefix="vmctl-move-verify") as pool:
            for d in moved:
                assert d.target_id is not None
                extents = call(what, reader.allocated_extents, pit, d.target_id)
                digests: dict[int, bytes] = {}
                pending: deque[tuple[int, Future[bytes]]] = deque()
                try:
                    for index in chunks_touching(extents, d.size_bytes, PIECE):
                        offset, length = chunk_span(index, d.size_bytes, PIECE)
                        pending.append((index, pool.submit(piece, d.target_id, offset, length)))
                        if len(pending) >= AHEAD:
                            index, future = pending.popleft()
                            digests[index] = piece_hash(future.result())
                    while pending:
                        index, future = pending.popleft()
                        digests[index] = piece_hash(future.result())
                finally:
                    for _, future in pending:
                        future.cancel()
                digest = combine(d.size_bytes, digests)
                out.append(
                    attrs.evolve(d, target_digest=digest, verified=digest == d.source_digest)
                )
    finally:
        with contextlib.suppress(VmctlError):
            conn.dispatcher.call(
                "release the point in time",
                reader.close_point_in_time,
                pit,
                deadline=Deadline.after(conn.timeouts.operation_s),
            )
    bad = [d for d in out if not d.verified]
    if bad:
        raise VmctlError(
            "the moved disks read back from the target differ from the source: "
            + "; ".join(
                f"disk {d.source_id}: source digest {d.source_digest}, target {d.target_digest}"
                for d in bad
            )
        )
    return tuple(out)


def _discard(made: VM, exc: BaseException) -> None:
    """Delete the VM made on the target after a failure; say so if that fails too."""
    try:
        made.delete(force=True)
    except VmctlError as cleanup:
        log.warning("move: deleting the half-made VM %r failed: %s", made.name, cleanup)
        if isinstance(exc, VmctlError):
            exc.left_behind = (*exc.left_behind, ("vm", made.uuid))
            exc.message += (
                f" (the half-made VM {made.name!r} ({made.uuid}) on {made._conn.uri} could not "
                "be deleted)"
            )
