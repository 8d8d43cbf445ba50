"""The restore job: a new VM from a manifest's configuration, or the original VM's disks
overwritten, then the chunks written through the driver's ``DiskWriter``.

Into a new VM, only chunks with data are written (a new disk reads as zeroes); on failure
the VM made for the restore is deleted, so nothing half-made stays on the host. With
``replace`` every chunk is written, zero chunks as zeroes, so no old data survives.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import attrs

from .._capabilities import RESOURCE_CAPABILITIES, Capability
from .._deadline import Deadline
from .._diskaccess import ExtentData, PointInTimeDisk
from .._errors import AlreadyExists, InvalidState, NotFound, ValidationError, VmctlError
from .._model import DiskBus, DiskSpec, Firmware, GuestOS, NicSpec, Resources, VMConfig, VMSpec
from .._state import PowerState
from .._validate import check_name
from ..spi import DiskWriter
from ._backup import Reporter, check_progress
from ._chunking import chunk_span, coalesce
from ._chunks import CorruptChunk
from ._diskio import flushed
from ._manifest import DiskIndex, Manifest
from ._repo import Progress, Repository

if TYPE_CHECKING:
    from .._hypervisor import Hypervisor
    from .._vm import VM

log = logging.getLogger("vmctl.backup")
MIB = 1024 * 1024
#: Chunk reads from the repository run in FETCH_WORKERS threads, AHEAD write batches ahead
#: of the one being written; a batch (one ``write_extents`` call) holds the chunks of up
#: to WRITE_BYTES of the disk, whatever the chunk size, each chunk its own extent (joining
#: them would cost a copy; no driver gains by it). Memory: about (AHEAD + 1) * WRITE_BYTES.
FETCH_WORKERS = 4
WRITE_BYTES = 16 * MIB
AHEAD = 2

#: One write batch: (has data, first chunk, count) runs in disk order.
_Batch = list[tuple[bool, int, int]]


def config_firmware(cfg: Mapping[str, Any]) -> Firmware | None:
    """The firmware a neutral configuration records; None when it does not (a manifest
    written before the field, or a driver that does not report it) or names one this vmctl
    does not know."""
    try:
        return Firmware(cfg["firmware"])
    except (KeyError, ValueError, TypeError):
        return None


def spec_from(m: Manifest, name: str, pool: str | None, caps: frozenset[Capability]) -> VMSpec:
    """The VMSpec that recreates a backup's VM: its vCPUs, memory, guest OS, description,
    NICs (on the same networks, new MACs), disks (at least as large), and the resource
    controls this host has (the others are dropped, with a warning)."""
    return spec_from_config(m.config, m.disks, name, pool, caps, f"restore of {m.id}")


def spec_from_config(
    cfg: Mapping[str, Any],
    disks_in: Sequence[DiskIndex | PointInTimeDisk],
    name: str,
    pool: str | None,
    caps: frozenset[Capability],
    what: str,
) -> VMSpec:
    """``spec_from`` for any neutral configuration (``to_dict(VMConfig)``) and the disks of
    a manifest or a point in time (``vmctl.move`` uses it too)."""
    kept: dict[str, Any] = {}
    for key, value in dict(cfg.get("resources") or {}).items():
        if value is None or key not in RESOURCE_CAPABILITIES:
            continue
        if RESOURCE_CAPABILITIES[key] in caps:
            kept[key] = value
        else:
            log.warning("%s: this host cannot set %s; dropped", what, key)
    disks = []
    for d in disks_in:
        try:
            bus = DiskBus(d.bus or "default")
        except ValueError:
            bus = DiskBus.DEFAULT
        disk_name: str | None = d.name
        if disk_name is not None:
            try:
                check_name(disk_name, "disk name")
            except ValidationError:
                disk_name = None  # a vendor's name vmctl cannot give: the host names the disk
        size_mib = max(1, -(-d.size_bytes // MIB))
        disks.append(DiskSpec(size_mib=size_mib, name=disk_name, bus=bus, pool=pool))
    nics = [
        NicSpec(network=n["network"], model=n.get("model"))
        for n in cfg.get("nics") or []
        if isinstance(n, dict) and n.get("network")
    ]
    try:
        guest_os = GuestOS(cfg.get("guest_os", "other"))
    except ValueError:
        guest_os = GuestOS.OTHER
    return VMSpec(
        name=name,
        vcpus=int(cfg.get("vcpus", 1)),
        memory_mib=int(cfg.get("memory_mib", 512)),
        disks=disks,
        nics=nics,
        guest_os=guest_os,
        resources=Resources(**kept),
        description=str(cfg.get("description", "")),
    )


class RestoreJob:
    def __init__(
        self,
        repo: Repository,
        m: Manifest,
        vm: VM,
        *,
        zeroes: bool,
        progress: Progress | None,
        deadline: Deadline,
    ) -> None:
        self.repo = repo
        self.m = m
        self.vm = vm
        self.zeroes = zeroes
        self.conn = vm._conn
        driver = self.conn.driver
        assert isinstance(driver, DiskWriter)
        self.driver: DiskWriter = driver
        self.deadline = deadline
        cs = m.chunk_size
        total = sum(
            chunk_span(i, d.size_bytes, cs)[1]
            for d in m.disks
            for i, c in enumerate(d.chunks)
            if c is not None or zeroes
        )
        self.reporter = Reporter(progress, "restore", total)

    def _fetch(self, disk: DiskIndex, index: int) -> bytes:
        digest = disk.chunks[index]
        assert digest is not None
        offset, length = chunk_span(index, disk.size_bytes, self.m.chunk_size)
        try:
            data = self.repo.read_chunk(digest)
        except (CorruptChunk, NotFound) as exc:
            raise type(exc)(
                f"backup {self.m.id}, disk {disk.id}, offset {offset}: chunk {digest} "
                f"cannot be restored: {exc}"
            ) from exc
        if len(data) != length:
            raise CorruptChunk(
                f"backup {self.m.id}, disk {disk.id}, offset {offset}: chunk {digest} holds "
                f"{len(data)} bytes, the index says {length}"
            )
        return data

    def run(self, disk_ids: list[str]) -> None:
        with ThreadPoolExecutor(FETCH_WORKERS, thread_name_prefix="vmctl-restore") as pool:
            for disk, target in zip(self.m.disks, disk_ids, strict=True):
                self._disk(disk, target, pool)
        self.reporter.add(0, None, final=True)

    def _batches(self, disk: DiskIndex) -> list[_Batch]:
        """The write batches of a disk, in order: runs of adjacent chunks with data (and,
        with ``zeroes``, runs of zero chunks), packed into batches of at most WRITE_BYTES
        of the disk each (a small chunk size does not mean many small writes: each write
        call costs the driver round trips, a new transfer, a task)."""
        per = max(1, WRITE_BYTES // self.m.chunk_size)
        data = [i for i, c in enumerate(disk.chunks) if c is not None]
        zero = [i for i, c in enumerate(disk.chunks) if c is None] if self.zeroes else []
        runs = [(True, f, n) for f, n in coalesce(data, per)]
        runs += [(False, f, n) for f, n in coalesce(zero, per)]
        runs.sort(key=lambda r: r[1])
        batches: list[_Batch] = []
        used = per
        for run in runs:
            if used + run[2] > per:
                batches.append([])
                used = 0
            batches[-1].append(run)
            used += run[2]
        return batches

    def _prefetch(
        self,
        disk: DiskIndex,
        pool: ThreadPoolExecutor,
        batches: list[_Batch],
        fetches: dict[int, Any],
    ) -> None:
        for batch in batches:
            for has_data, f, n in batch:
                if has_data:
                    for i in range(f, f + n):
                        if i not in fetches:
                            fetches[i] = pool.submit(self._fetch, disk, i)

    def _disk(self, disk: DiskIndex, target: str, pool: ThreadPoolExecutor) -> None:
        batches = self._batches(disk)
        fetches: dict[int, Any] = {}
        self._prefetch(disk, pool, batches[: AHEAD + 1], fetches)
        try:
            with flushed(self.vm, target, self.deadline):
                self._write_batches(disk, target, pool, batches, fetches)
        finally:
            for f in fetches.values():  # a failed write: the reads ahead are not needed
                f.cancel()

    def _write_batches(
        self,
        disk: DiskIndex,
        target: str,
        pool: ThreadPoolExecutor,
        batches: list[_Batch],
        fetches: dict[int, Any],
    ) -> None:
        cs = self.m.chunk_size
        for k, batch in enumerate(batches):
            self._prefetch(disk, pool, batches[k + 1 : k + 1 + AHEAD], fetches)
            extents = []
            for has_data, first, count in batch:
                offset = first * cs
                end = sum(chunk_span(first + count - 1, disk.size_bytes, cs))
                if has_data:
                    for i in range(first, first + count):
                        data = fetches.pop(i).result()
                        extents.append(ExtentData(i * cs, len(data), data))
                else:
                    extents.append(ExtentData(offset, end - offset, None))
            self.conn.dispatcher.call(
                f"write disk {target} of VM {self.vm.name!r} at {extents[0].offset}",
                self.driver.write_extents,
                self.vm.uuid,
                target,
                extents,
                deadline=self.deadline.sooner(self.conn.timeouts.operation_s),
            )
            self.reporter.add(sum(e.length for e in extents), target)


def _disk_ids(vm: VM, m: Manifest, *, by_id: bool, config: VMConfig | None = None) -> list[str]:
    """The target disk of each disk of the backup: by position in a new VM, by id in the
    original. ValidationError if a target is missing or too small."""
    disks = (config or vm.config()).disks
    out = []
    for i, d in enumerate(m.disks):
        target = (
            next((x for x in disks if x.id == d.id), None)
            if by_id
            else (disks[i] if i < len(disks) else None)
        )
        if target is None:
            raise ValidationError(
                f"VM {vm.name!r} has no disk for disk {d.id} of backup {m.id}", field="disks"
            )
        if target.size_mib * MIB < d.size_bytes:
            raise ValidationError(
                f"disk {target.id} of VM {vm.name!r} ({target.size_mib} MiB) is smaller than "
                f"disk {d.id} of backup {m.id} ({d.size_bytes} bytes)",
                field="disks",
            )
        out.append(target.id)
    return out


def restore(
    repo: Repository,
    backup_id: str,
    hv: Hypervisor,
    *,
    name: str | None,
    replace: bool,
    pool: str | None,
    progress: Progress | None,
    timeout: float | None,
) -> VM:
    from .._hypervisor import Hypervisor

    if not isinstance(hv, Hypervisor):
        raise ValidationError(f"expected a Hypervisor, got {type(hv).__name__}", field="hypervisor")
    if not isinstance(replace, bool):
        raise ValidationError("must be True or False", field="replace")
    if name is not None:
        check_name(name)
    if pool is not None:
        check_name(pool, "pool")
    check_progress(progress)
    conn = hv._conn
    deadline = conn.deadline(timeout, None)
    conn.require(Capability.RESTORE, "restore a backup")
    m = repo.manifest(backup_id)
    if replace:
        if name is not None or pool is not None:
            raise ValidationError(
                "replace=True writes into the original VM: give no name or pool", field="replace"
            )
        try:
            vm = hv.vm(m.vm_uuid)
        except NotFound as exc:
            raise NotFound(
                f"the VM of backup {m.id} ({m.vm_name!r}, {m.vm_uuid}) is not on {hv.uri}: "
                "restore into a new VM (without replace=True)"
            ) from exc
        state = vm.info().state
        if state is not PowerState.STOPPED:
            raise InvalidState(
                f"cannot replace the disks of VM {vm.name!r}: it is {state.value}; stop it "
                "first (power_off())",
                current=state,
                allowed={PowerState.STOPPED},
            )
        targets = _disk_ids(vm, m, by_id=True)
        RestoreJob(repo, m, vm, zeroes=True, progress=progress, deadline=deadline).run(targets)
        return vm
    conn.require(Capability.CREATE, "restore a backup into a new VM")
    from .._move._job import _firmwares
    from .._move._mapping import carried_firmware, firmware_note
    from .._move._model import MappingKind

    source_fw = config_firmware(m.config)
    firmwares = _firmwares(hv, deadline)
    spec = spec_from(m, name or m.vm_name, pool, hv.capabilities)
    spec = attrs.evolve(spec, firmware=carried_firmware(source_fw, firmwares))
    try:
        vm = hv.create_vm(spec, timeout=max(deadline.remaining(), 0.001) if timeout else None)
    except AlreadyExists as exc:
        raise AlreadyExists(
            f"{exc}: give the restored VM another name (name=...), or write the backup back "
            "into the original VM's disks with replace=True"
        ) from exc
    try:
        made = vm.config()
        note = firmware_note(
            source_fw,
            spec,
            made,
            firmwares,
            m.driver,
            conn.driver_name,
            source_unknown=f"backup {m.id} does not record the VM's firmware",
        )
        targets = _disk_ids(vm, m, by_id=False, config=made)
        RestoreJob(repo, m, vm, zeroes=False, progress=progress, deadline=deadline).run(targets)
    except BaseException as exc:
        try:
            vm.delete(force=True)
        except VmctlError as cleanup:
            log.warning(
                "restore of %s: deleting the half-made VM %r failed: %s", m.id, vm.name, cleanup
            )
            if isinstance(exc, VmctlError):
                exc.left_behind = (*exc.left_behind, ("vm", vm.uuid))
                exc.message += f" (the half-made VM {vm.name!r} ({vm.uuid}) could not be deleted)"
        raise
    if note.kind is not MappingKind.KEPT:
        log.warning("restore of %s into VM %r: %s", m.id, vm.name, note)
    log.info("restored backup %s into VM %r", m.id, vm.name)
    return vm
