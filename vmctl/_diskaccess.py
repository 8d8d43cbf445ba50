"""Values of the disk-access SPI: extents, points in time, consistency levels.

A driver hands these to the core's backup and restore code (``vmctl.backup``); they say
nothing about repositories, chunks or manifests, which are the core's alone.
"""

from __future__ import annotations

import enum
from typing import Any

from attrs import field, frozen

from . import _validate as v
from ._errors import ValidationError


class Consistency(enum.StrEnum):
    """How consistent the disks' content at a point in time is, best first."""

    STOPPED = "stopped"  # the VM was not running: every write had reached the disks
    QUIESCED = "quiesced"  # the guest froze its file systems (agent, tools, VSS)
    CRASH = "crash"  # as if the power had been pulled at that moment


def _non_negative(_inst: object, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(f"must be an integer >= 0, got {value!r}", field=attribute.name)


def _positive(_inst: object, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValidationError(f"must be an integer > 0, got {value!r}", field=attribute.name)


@frozen
class Extent:
    """``length`` bytes of a disk starting at byte ``offset``."""

    offset: int = field(validator=_non_negative)
    length: int = field(validator=_positive)

    @property
    def end(self) -> int:
        return self.offset + self.length


@frozen
class ExtentData:
    """Content to write at ``offset``: ``data``, or ``length`` zero bytes when ``data`` is
    None (a driver may punch a hole, discard or write zeroes)."""

    offset: int = field(validator=_non_negative)
    length: int = field(validator=_positive)
    data: bytes | None = None

    @property
    def end(self) -> int:
        return self.offset + self.length

    def __attrs_post_init__(self) -> None:
        if self.data is not None and len(self.data) != self.length:
            raise ValidationError(
                f"data is {len(self.data)} bytes, length says {self.length}", field="data"
            )


@frozen
class PointInTimeDisk:
    """One disk as captured by a point in time.

    ``checkpoint`` names the state of this disk at that moment for changed-block tracking
    (a libvirt checkpoint, a vSphere changeId, a XenServer CBT metadata VDI): a later point
    in time lists the extents changed since it. None where the driver tracks no changes.
    """

    id: str = field(validator=v.instance_of(str))
    size_bytes: int = field(validator=_non_negative)
    name: str | None = None
    bus: str | None = None
    checkpoint: str | None = None


@frozen
class PointInTime:
    """A handle on the content of all disks of one VM frozen at one moment.

    ``id`` is the driver's name for it (a backup job, a snapshot); ``handle`` anything the
    driver needs to keep (never looked at by the core). Released with
    ``DiskAccess.close_point_in_time``.
    """

    id: str
    vm_uuid: str
    disks: tuple[PointInTimeDisk, ...]
    consistency: Consistency
    handle: Any = field(default=None, eq=False, repr=False)
