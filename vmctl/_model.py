"""Value classes: what users hand to vmctl (specs) and what vmctl hands back (infos).

All frozen attrs classes, validated at construction: a bad spec raises ValidationError
naming the field before anything reaches a hypervisor. Drivers build infos in their own
conversion functions; value objects never hold a driver.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs
from attrs import field, frozen

from . import _validate as v
from ._errors import ValidationError
from ._state import PowerState, StateReason

MAX_VCPUS = 768
MAX_MEMORY_MIB = 24 * 1024 * 1024  # 24 TiB, vSphere's ceiling
MIN_MEMORY_MIB = 16
MAX_DISK_MIB = 64 * 1024 * 1024  # 64 TiB
MAX_SHARES = 1_000_000


class GuestOS(enum.StrEnum):
    """A hint for the guest operating system; drivers pick device models and firmware by it."""

    LINUX = "linux"
    WINDOWS = "windows"
    OTHER = "other"


class Firmware(enum.StrEnum):
    """The firmware a VM boots with: a guest installed for one may not boot on the other."""

    BIOS = "bios"
    UEFI = "uefi"


class DiskBus(enum.StrEnum):
    DEFAULT = "default"  # what the driver thinks best for the guest OS
    VIRTIO = "virtio"
    SCSI = "scsi"
    SATA = "sata"
    IDE = "ide"


def _frozen_mapping(value: object) -> Mapping[str, str]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise ValidationError(f"expected a mapping, got {type(value).__name__}", field="extra")
    for k, val in value.items():
        if not isinstance(k, str) or not isinstance(val, str):
            raise ValidationError("keys and values must be strings", field="extra")
    return MappingProxyType(dict(value))


@frozen
class Resources:
    """Resource controls of a VM: how the host shares CPU and memory among VMs.

    ``None`` means "leave as it is" (or the backend's default at creation).
    CPU amounts are in percent of one physical core (200 = two cores), the unit Xen's cap
    and libvirt's quota/period share; drivers convert (vSphere: MHz of the host's cores).
    Shares are relative weights between VMs on one host.

    >>> Resources(cpu_shares=2048, memory_limit_mib=4096)
    Resources(cpu_shares=2048, ...)
    """

    cpu_shares: int | None = field(
        default=None, validator=v.int_range(1, MAX_SHARES, optional=True)
    )
    cpu_reservation_percent: int | None = field(
        default=None, validator=v.int_range(0, 100 * MAX_VCPUS, "percent", optional=True)
    )
    cpu_limit_percent: int | None = field(
        default=None, validator=v.int_range(1, 100 * MAX_VCPUS, "percent", optional=True)
    )
    memory_shares: int | None = field(
        default=None, validator=v.int_range(1, MAX_SHARES, optional=True)
    )
    memory_reservation_mib: int | None = field(
        default=None, validator=v.int_range(0, MAX_MEMORY_MIB, "MiB", optional=True)
    )
    memory_limit_mib: int | None = field(
        default=None, validator=v.int_range(MIN_MEMORY_MIB, MAX_MEMORY_MIB, "MiB", optional=True)
    )

    def __attrs_post_init__(self) -> None:
        if (
            self.cpu_reservation_percent is not None
            and self.cpu_limit_percent is not None
            and self.cpu_reservation_percent > self.cpu_limit_percent
        ):
            raise ValidationError(
                f"cpu_reservation_percent ({self.cpu_reservation_percent}) exceeds "
                f"cpu_limit_percent ({self.cpu_limit_percent})",
                field="cpu_reservation_percent",
            )
        if (
            self.memory_reservation_mib is not None
            and self.memory_limit_mib is not None
            and self.memory_reservation_mib > self.memory_limit_mib
        ):
            raise ValidationError(
                f"memory_reservation_mib ({self.memory_reservation_mib}) exceeds "
                f"memory_limit_mib ({self.memory_limit_mib})",
                field="memory_reservation_mib",
            )

    def set_fields(self) -> dict[str, int]:
        """The controls that are set (not None), by name."""
        return {k: val for k, val in attrs.asdict(self).items() if val is not None}

    def merged(self, other: Resources) -> Resources:
        """These controls with every control set in ``other`` taking its value."""
        return attrs.evolve(self, **other.set_fields())


def _disk_bus(value: object) -> DiskBus:
    return v.enum_of(DiskBus, "bus")(value)


def _guest_os(value: object) -> GuestOS:
    return v.enum_of(GuestOS, "guest_os")(value)


def _firmware(value: object) -> Firmware | None:
    return None if value is None else v.enum_of(Firmware, "firmware")(value)


@frozen
class DiskSpec:
    """A new virtual disk.

    ``source`` names an existing image to copy onto the new disk (a path, volume or datastore
    path, as the backend understands it); without it the disk is blank.
    """

    size_mib: int = field(validator=v.int_range(1, MAX_DISK_MIB, "MiB"))
    name: str | None = field(default=None, validator=v.optional_name)
    bus: DiskBus = field(default=DiskBus.DEFAULT, converter=_disk_bus)
    pool: str | None = field(default=None, validator=v.optional_name)
    source: str | None = field(default=None, validator=v.instance_of(str, optional=True))


@frozen
class NicSpec:
    """A new virtual NIC on a named network (libvirt network, port group, Xen network)."""

    network: str = field(validator=v.name)
    mac: str | None = field(default=None, converter=v.lower_str, validator=v.mac)
    model: str | None = field(default=None, validator=v.optional_name)


@frozen
class BootSource:
    """How a VM without an installed disk boots: a kernel and initrd, or an ISO image.

    Paths are as the backend sees them (host paths for libvirt, datastore paths for vSphere).
    """

    kernel: str | None = field(default=None, validator=v.instance_of(str, optional=True))
    initrd: str | None = field(default=None, validator=v.instance_of(str, optional=True))
    cmdline: str = field(default="", validator=v.instance_of(str))
    iso: str | None = field(default=None, validator=v.instance_of(str, optional=True))

    def __attrs_post_init__(self) -> None:
        if not self.kernel and not self.iso:
            raise ValidationError("give a kernel or an iso", field="boot")
        if self.kernel and self.iso:
            raise ValidationError("give a kernel or an iso, not both", field="boot")
        if self.initrd and not self.kernel:
            raise ValidationError("an initrd needs a kernel", field="boot")


@frozen
class VMSpec:
    """Everything needed to create a VM.

    >>> VMSpec(name="web-1", vcpus=2, memory_mib=2048,
    ...        disks=[DiskSpec(size_mib=10240)], nics=[NicSpec(network="default")])
    """

    name: str = field(validator=v.name)
    vcpus: int = field(default=1, validator=v.int_range(1, MAX_VCPUS, "vCPUs"))
    memory_mib: int = field(
        default=512, validator=v.int_range(MIN_MEMORY_MIB, MAX_MEMORY_MIB, "MiB")
    )
    disks: tuple[DiskSpec, ...] = field(
        default=(), converter=v.to_tuple, validator=v.tuple_of(DiskSpec)
    )
    nics: tuple[NicSpec, ...] = field(
        default=(), converter=v.to_tuple, validator=v.tuple_of(NicSpec)
    )
    guest_os: GuestOS = field(default=GuestOS.OTHER, converter=_guest_os)
    boot: BootSource | None = field(
        default=None, validator=v.instance_of(BootSource, optional=True)
    )
    resources: Resources = field(factory=Resources, validator=v.instance_of(Resources))
    description: str = field(default="", validator=v.instance_of(str))
    #: BIOS or UEFI; None: the driver's default (a driver that cannot make the one asked
    #: for refuses the spec before any hypervisor call).
    firmware: Firmware | None = field(default=None, converter=_firmware)

    def __attrs_post_init__(self) -> None:
        limit = self.resources.memory_limit_mib
        if limit is not None and limit < self.memory_mib:
            # A limit below the configured memory would make the guest swap from its first boot.
            raise ValidationError(
                f"memory_limit_mib ({limit}) is below memory_mib ({self.memory_mib})",
                field="resources",
            )
        reservation = self.resources.memory_reservation_mib
        if reservation is not None and reservation > self.memory_mib:
            raise ValidationError(
                f"memory_reservation_mib ({reservation}) exceeds memory_mib ({self.memory_mib})",
                field="resources",
            )
        names = [d.name for d in self.disks if d.name]
        if len(names) != len(set(names)):
            raise ValidationError("disk names must be unique within a VM", field="disks")
        macs = [n.mac for n in self.nics if n.mac]
        if len(macs) != len(set(macs)):
            raise ValidationError("MAC addresses must be unique within a VM", field="nics")


# -- what comes back ----------------------------------------------------------------------


@frozen
class HostInfo:
    """The host (or cluster) a connection manages."""

    name: str
    hypervisor: str  # "QEMU/KVM", "ESXi", "vCenter", "Xen", "sim"
    version: str
    cpus: int
    cpu_mhz: int
    memory_mib: int
    free_memory_mib: int | None = None
    uuid: str | None = None
    vm_count: int | None = None


@frozen
class VMInfo:
    """A VM's identity and state, as one batched listing returns it."""

    uuid: str
    name: str
    state: PowerState
    reason: StateReason = StateReason.UNKNOWN
    vcpus: int = 0
    memory_mib: int = 0
    host: str | None = None


@frozen
class DiskInfo:
    """A disk attached to a VM. ``id`` is the driver's stable device id (e.g. 'vdb')."""

    id: str
    size_mib: int
    name: str | None = None
    path: str | None = None
    bus: str | None = None


@frozen
class NicInfo:
    """A NIC attached to a VM. ``id`` is the driver's stable device id."""

    id: str
    network: str
    mac: str
    model: str | None = None


@frozen
class VMConfig:
    """A VM's configuration: its devices and resource controls."""

    uuid: str
    name: str
    vcpus: int
    memory_mib: int
    disks: tuple[DiskInfo, ...] = ()
    nics: tuple[NicInfo, ...] = ()
    resources: Resources = Resources()
    guest_os: GuestOS = GuestOS.OTHER
    description: str = ""
    #: The VM's firmware; None when the driver does not report it.
    firmware: Firmware | None = None


@frozen
class SnapshotInfo:
    """One snapshot of a VM. ``parent`` is the id of the snapshot it was taken on top of
    (the VM's current snapshot at the time), None when none was current.

    ``state`` is the state a revert returns the VM to: the VM's state when the snapshot was
    taken (RUNNING or PAUSED) for one ``with_memory``, STOPPED for a disk-only one, whatever
    state the VM was in. ``current`` marks the one snapshot the VM's present state descends
    from: the last one taken or reverted to (disk-only ones too); when that one is deleted,
    its parent (none is current when it had no parent, or the VM has no snapshot).
    """

    id: str
    name: str
    created: dt.datetime
    parent: str | None = None
    with_memory: bool = False
    state: PowerState = PowerState.STOPPED
    description: str = ""
    current: bool = False


@frozen
class SnapshotNode:
    """A snapshot and the snapshots taken on top of it."""

    snapshot: SnapshotInfo
    children: tuple[SnapshotNode, ...] = ()

    def walk(self) -> list[SnapshotInfo]:
        """This snapshot and all below it, depth first."""
        out = [self.snapshot]
        for child in self.children:
            out.extend(child.walk())
        return out


@frozen
class VMStats:
    """Counters of one VM at one moment; ``None`` where the backend has no such counter."""

    uuid: str
    timestamp: dt.datetime
    cpu_time_ns: int | None = None
    memory_used_mib: int | None = None
    disk_read_bytes: int | None = None
    disk_write_bytes: int | None = None
    net_rx_bytes: int | None = None
    net_tx_bytes: int | None = None


class AgentState(enum.StrEnum):
    RUNNING = "running"
    NOT_RUNNING = "not_running"
    UNKNOWN = "unknown"


@frozen
class GuestInfo:
    """What the guest tells about itself (through tools, an agent or DHCP leases)."""

    ip_addresses: tuple[str, ...] = ()
    agent: AgentState = AgentState.UNKNOWN
    hostname: str | None = None
    os_name: str | None = None


class EventKind(enum.StrEnum):
    CREATED = "created"
    DELETED = "deleted"
    STATE_CHANGED = "state_changed"
    RECONFIGURED = "reconfigured"
    SNAPSHOT = "snapshot"  # taken, reverted or deleted: see detail
    MIGRATED = "migrated"


@frozen
class Event:
    """Something that happened to a VM."""

    kind: EventKind
    vm_uuid: str
    vm_name: str | None = None
    timestamp: dt.datetime = field(factory=lambda: dt.datetime.now(dt.UTC))
    state: PowerState | None = None
    reason: StateReason | None = None
    detail: str = ""


def to_dict(value: Any) -> Any:
    """A JSON-ready dict of any value class (enums as their values, datetimes ISO)."""

    def ser(_inst: Any, _a: Any, val: Any) -> Any:
        if isinstance(val, enum.Enum):
            return val.value
        if isinstance(val, dt.datetime):
            return val.isoformat()
        return val

    return attrs.asdict(value, value_serializer=ser)
