"""Reading and writing a VM's disk content directly, through the same primitives backup and
restore use: for tests, the conformance kit, and seeding a new VM's disk (an upload)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from .._capabilities import Capability
from .._deadline import Deadline
from .._diskaccess import ExtentData, PointInTime
from .._errors import InvalidState, ValidationError, VmctlError
from .._state import PowerState
from ..spi import DiskAccess, DiskWriter

if TYPE_CHECKING:
    from .._vm import VM

_PIECE = 4 * 1024 * 1024  # bytes asked of the driver per read (the SPI's "a few MiB")


def _check(vm: VM, disk_id: object, offset: object) -> None:
    from .._vm import VM

    if not isinstance(vm, VM):
        raise ValidationError(f"expected a VM, got {type(vm).__name__}", field="vm")
    if not isinstance(disk_id, str) or not disk_id:
        raise ValidationError("give a disk id (see vm.config().disks)", field="disk_id")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValidationError(f"must be a byte offset >= 0, got {offset!r}", field="offset")


@contextlib.contextmanager
def _point_in_time(vm: VM, what: str) -> Iterator[tuple[DiskAccess, PointInTime]]:
    """The driver and a point in time of every disk of ``vm`` (capability backup), closed
    on the way out (its errors suppressed)."""
    conn = vm._conn
    conn.require(Capability.BACKUP, f"read the disks of VM {vm.name!r}")
    driver = conn.driver
    assert isinstance(driver, DiskAccess)
    call = conn.dispatcher.call
    pit = call(what, driver.open_point_in_time, vm.uuid, quiesce=False, deadline=_dl(vm))
    try:
        yield driver, pit
    finally:
        with contextlib.suppress(VmctlError):
            call(what, driver.close_point_in_time, pit, deadline=_dl(vm))


def read_disk(vm: VM, disk_id: str, offset: int, length: int) -> bytes:
    """``length`` bytes of a disk of ``vm`` at ``offset``, read through a point in time
    (capability backup; the VM may be running)."""
    _check(vm, disk_id, offset)
    if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
        raise ValidationError(f"must be a number of bytes > 0, got {length!r}", field="length")
    what = f"read disk {disk_id} of VM {vm.name!r}"
    with _point_in_time(vm, what) as (driver, pit):
        if not any(d.id == disk_id for d in pit.disks):
            raise ValidationError(f"VM {vm.name!r} has no disk {disk_id!r}", field="disk_id")
        data: bytes = vm._conn.dispatcher.call(
            what, driver.read_extent, pit, disk_id, offset, length, deadline=_dl(vm)
        )
        return data


def disk_digests(vm: VM, *, lengths: Sequence[int] | None = None) -> list[str]:
    """The SHA-256 (hex) of each disk of ``vm``, in ``vm.config().disks`` order, all read at
    one point in time (capability backup; the VM may be running). With ``lengths``, only the
    first ``lengths[i]`` bytes of disk i (a restore target may be rounded up)."""
    from .._vm import VM

    if not isinstance(vm, VM):
        raise ValidationError(f"expected a VM, got {type(vm).__name__}", field="vm")
    vm._conn.require(Capability.BACKUP, f"read the disks of VM {vm.name!r}")
    disks = vm.config().disks
    if lengths is not None:
        lengths = list(lengths)
        if len(lengths) != len(disks) or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in lengths
        ):
            raise ValidationError(
                f"give one length >= 0 per disk ({len(disks)} disks)", field="lengths"
            )
    call = vm._conn.dispatcher.call
    what = f"read the disks of VM {vm.name!r}"
    with _point_in_time(vm, what) as (driver, pit):
        sizes = {d.id: d.size_bytes for d in pit.disks}
        out = []
        for i, disk in enumerate(disks):
            if disk.id not in sizes:
                raise ValidationError(f"VM {vm.name!r} has no disk {disk.id!r}", field="disk_id")
            size = sizes[disk.id] if lengths is None else min(lengths[i], sizes[disk.id])
            h = hashlib.sha256()
            for start in range(0, size, _PIECE):
                n = min(_PIECE, size - start)
                h.update(call(what, driver.read_extent, pit, disk.id, start, n, deadline=_dl(vm)))
            out.append(h.hexdigest())
        return out


def write_disk(vm: VM, disk_id: str, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` of a disk of a STOPPED ``vm`` (capability restore): the
    backend's upload path."""
    _check(vm, disk_id, offset)
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise ValidationError("give the bytes to write", field="data")
    conn = vm._conn
    conn.require(Capability.RESTORE, f"write to the disks of VM {vm.name!r}")
    state = vm.info().state
    if state is not PowerState.STOPPED:
        raise InvalidState(
            f"cannot write to the disks of VM {vm.name!r}: it is {state.value}; stop it first",
            current=state,
            allowed={PowerState.STOPPED},
        )
    driver = conn.driver
    assert isinstance(driver, DiskWriter)
    extent = ExtentData(offset, len(data), bytes(data))
    deadline = _dl(vm)
    with flushed(vm, disk_id, deadline):
        conn.dispatcher.call(
            f"write disk {disk_id} of VM {vm.name!r}",
            driver.write_extents,
            vm.uuid,
            disk_id,
            [extent],
            deadline=deadline,
        )


@contextlib.contextmanager
def flushed(vm: VM, disk_id: str, deadline: Deadline) -> Iterator[None]:
    """Around the ``write_extents`` calls of one disk of ``vm``: ``flush_writes`` once after
    the last one (within the operation timeout from then, and ``deadline``, the job's), or
    ``flush_writes(discard=True)`` (its errors suppressed) when the block raises (restore,
    ``vmctl.move``)."""
    conn = vm._conn
    driver = conn.driver
    assert isinstance(driver, DiskWriter)
    try:
        yield
        # A driver that kept the extents locally writes them now (DiskWriter.flush_writes).
        conn.dispatcher.call(
            f"write disk {disk_id} of VM {vm.name!r}",
            driver.flush_writes,
            vm.uuid,
            disk_id,
            deadline=deadline.sooner(conn.timeouts.operation_s),
        )
    except BaseException:
        with contextlib.suppress(VmctlError):
            conn.dispatcher.call(
                f"discard the writes to disk {disk_id} of VM {vm.name!r}",
                driver.flush_writes,
                vm.uuid,
                disk_id,
                discard=True,
                deadline=Deadline.after(10),
            )
        raise


def _dl(vm: VM) -> Deadline:
    return Deadline.after(vm._conn.timeouts.operation_s)
