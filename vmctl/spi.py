"""The driver SPI: what a backend implements so that vmctl can drive it.

Read this module and docs/driver-authoring.md, and nothing else, to write a driver. Every
value type a driver builds or receives is re-exported here.

A driver is a thin translator. The core (``vmctl.connect``, ``Hypervisor``, ``VM`` and the
dispatcher in ``vmctl._dispatch``) does everything that is policy, once:

* arguments are validated (specs are valid ``VMSpec`` values, names and timeouts checked);
* the capability the request needs is offered by the driver (else NotSupported was raised);
* the VM's current power state allows the request (else InvalidState was raised);
* every request runs under one ``Deadline``; the same deadline is passed to every driver
  method the request calls (``deadline=``). A driver bounds each vendor call it makes by
  ``deadline.remaining()`` (or ``deadline.bound(rpc_timeout)``): a socket timeout, a task
  wait, a long poll. Nothing in a driver waits past it;
* the core owns the only wait loops: after a request the core waits for the vendor's task
  (``TaskWaiter.wait_tasks``) and then for the target state (``ChangeWaiter.wait_changes``,
  else it reads ``get_vm`` with a back-off). A driver offers these *primitives*: one
  blocking call on the vendor's own mechanism (a task, an event stream, a long poll) until
  something changed or the deadline; never a loop of its own;
* the core owns retries: a driver classifies a failure (``ConnectionError(sent=False)`` when
  the request never reached the host, e.g. an expired session; ``sent=True``/``None`` when it
  may have) and offers ``Reconnectable.reconnect``; the core reconnects and repeats only
  requests that cannot take effect twice;
* graceful-then-forced shutdown, ``wait=False`` operations, bulk submission and the
  concurrency bound are the core's.

So a driver method does one thing: translate the request into vendor calls, and map the
vendor's faults into vmctl's exception tree (``raise vmctl.NotFound(...) from vendor_exc``).
A request method (``start``, ``shutdown``, ...) returns a ``Task`` when the host is still
working on it, or None when the host has taken it (the core then waits for the state).

VMs are named by ``uuid`` (a string the backend keeps stable for the VM's life).

Mandatory methods are on ``Driver``. Optional features are separate interfaces
(``Pausable``, ``Snapshots``, ...): the capabilities a driver offers are *derived* from the
interfaces it implements (``capabilities_of``), and narrowed per host by one optional hook,
``Driver.narrow_capabilities`` (e.g. no hot-plug on this hypervisor version).

Thread safety: the core calls a driver from several threads (``wait=False`` operations,
bulk submissions, a Hypervisor shared between threads). Set ``thread_safe = False`` if the
vendor connection cannot take that; the core then serializes calls to the driver.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import ClassVar, Protocol

from attrs import frozen

from ._capabilities import REQUIRED_CAPABILITIES, Capability
from ._config import ConnectParams, Secret, Timeouts
from ._deadline import Deadline
from ._diskaccess import Consistency, Extent, ExtentData, PointInTime, PointInTimeDisk
from ._errors import (
    AlreadyExists,
    AuthenticationError,
    BackendError,
    Conflict,
    ConnectionError,
    InsufficientResources,
    InvalidState,
    NotFound,
    NotSupported,
    OperationTimeout,
    OutcomeUnknown,
    ValidationError,
    VmctlError,
)
from ._hostspi import (
    HostInventory,
    HostMaintenance,
    HostMigration,
    HostRecord,
    HostRecovery,
    HostState,
    MoveMode,
    Placement,
)
from ._model import (
    AgentState,
    BootSource,
    DiskBus,
    DiskInfo,
    DiskSpec,
    Event,
    EventKind,
    Firmware,
    GuestInfo,
    GuestOS,
    HostInfo,
    NicInfo,
    NicSpec,
    Resources,
    SnapshotInfo,
    VMConfig,
    VMInfo,
    VMSpec,
    VMStats,
)
from ._sitespi import SiteMember, SiteVM
from ._state import PowerState, StateReason
from ._storage import Volume
from ._tasks import Task, TaskOutcome
from ._uri import URI

__all__ = [
    "INTERFACES",
    "REQUIRED_CAPABILITIES",
    "URI",
    "AgentState",
    "AlreadyExists",
    "AuthenticationError",
    "BackendError",
    "BootSource",
    "BulkPower",
    "Capability",
    "ChangeWaiter",
    "ChangedBlocks",
    "Cloning",
    "Conflict",
    "ConnectParams",
    "ConnectionError",
    "Consistency",
    "Deadline",
    "Devices",
    "DiskAccess",
    "DiskBus",
    "DiskInfo",
    "DiskSpec",
    "DiskWriter",
    "Driver",
    "Event",
    "EventKind",
    "EventSource",
    "Events",
    "Extent",
    "ExtentData",
    "Firmware",
    "GracefulPower",
    "GuestAgent",
    "GuestInfo",
    "GuestOS",
    "HostInfo",
    "HostInventory",
    "HostMaintenance",
    "HostMigration",
    "HostRecord",
    "HostRecovery",
    "HostState",
    "InsufficientResources",
    "InvalidState",
    "Migration",
    "MoveMode",
    "NicInfo",
    "NicSpec",
    "NotFound",
    "NotSupported",
    "OperationTimeout",
    "OutcomeUnknown",
    "Pausable",
    "Pending",
    "Placement",
    "PlacementChecks",
    "PointInTime",
    "PointInTimeDisk",
    "PowerState",
    "Reconfigurable",
    "Reconnectable",
    "Resettable",
    "ResourceControls",
    "Resources",
    "Secret",
    "SiteMember",
    "SiteVM",
    "SnapshotInfo",
    "Snapshots",
    "StateReason",
    "Statistics",
    "StorageListing",
    "StorageSpace",
    "Suspendable",
    "Task",
    "TaskOutcome",
    "TaskWaiter",
    "Timeouts",
    "VMConfig",
    "VMInfo",
    "VMSpec",
    "VMStats",
    "ValidationError",
    "VmctlError",
    "Volume",
    "capabilities_of",
    "finish_task",
]

#: What a request method returns: a vendor task still running, or None (taken).
Pending = Task | None


class Driver(abc.ABC):
    """A connection to one host (or vCenter/pool) of one backend.

    Class attributes:
        name: short driver name shown to users ("sim", "kvm", "esx", "xen").
        thread_safe: False makes the core serialize calls to this driver.
    """

    name: ClassVar[str]
    thread_safe: ClassVar[bool] = True

    @classmethod
    @abc.abstractmethod
    def open(cls, params: ConnectParams, *, deadline: Deadline) -> Driver:
        """Connect to the host ``params.uri`` names, before ``deadline``.

        Raises AuthenticationError when credentials are refused, ConnectionError when the host
        cannot be reached, ValidationError for URI options the driver does not understand.
        Unwrap ``params.password`` (a ``Secret``) only in the call that hands it to the SDK,
        so that no frame of the driver holds the plain text.
        """

    @classmethod
    def kit_options(cls, uri: URI) -> Mapping[str, str]:
        """Options the conformance kit should use for ``uri`` when the operator gives none,
        known without connecting (e.g. ``other_uri``, a second host). Optional; see
        ``kit_defaults`` for what must be looked up on the host."""
        return {}

    def kit_defaults(self, *, deadline: Deadline) -> Mapping[str, str]:
        """Conformance-kit options found on this (connected) host: ``network`` and ``pool``
        (a network and a storage pool/SR/datastore that exist and that a new VM can use),
        and a bootable guest (``boot_kernel``/``boot_initrd``/``boot_cmdline`` or
        ``boot_iso``) where the host has one. Only what was found: a key left out makes the
        kit ask the operator for it. The operator's options ($VMCTL_KIT_OPTIONS, --opt)
        override these, and these override ``kit_options``. Reads only; optional."""
        return {}

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection and any session on the host. Idempotent; never raises."""

    def narrow_capabilities(self, offered: frozenset[Capability]) -> frozenset[Capability]:
        """The capabilities this host has, out of those the driver's interfaces ``offered``
        (see ``capabilities_of``). Optional: override to drop what this host or hypervisor
        version cannot do. Called once per connection; may not add anything."""
        return offered

    @abc.abstractmethod
    def host_info(self, *, deadline: Deadline) -> HostInfo:
        """The host or cluster this connection manages."""

    @abc.abstractmethod
    def list_vms(self, *, deadline: Deadline) -> list[VMInfo]:
        """Every VM (not templates, not the control domain) with its state.

        Must take a bounded number of backend round trips however many VMs exist: one batched
        query, never one call per VM. The core also uses it to read the states of many VMs at
        once (bulk requests).
        """

    @abc.abstractmethod
    def get_vm(self, uuid: str, *, deadline: Deadline) -> VMInfo:
        """One VM's current info. Raises NotFound."""

    @abc.abstractmethod
    def get_config(self, uuid: str, *, deadline: Deadline) -> VMConfig:
        """One VM's configuration: vCPUs, memory, disks, NICs, resource controls."""

    @abc.abstractmethod
    def create_vm(self, spec: VMSpec, *, deadline: Deadline) -> VMInfo:
        """Create a STOPPED VM from ``spec`` (disks created, NICs attached).

        Pre: ``spec`` is valid; resource controls it sets are offered capabilities.
        Post: the VM exists with ``spec.name``, or nothing of it is left behind: the driver
        removes what it had made before raising. When it cannot (the host stopped answering),
        it raises with ``left_behind`` naming each object that may remain, as (kind, id)
        pairs, and an ``OutcomeUnknown`` when the VM itself may exist. Raises AlreadyExists for
        a taken name, NotFound for an unknown network or pool, InsufficientResources.
        """

    @abc.abstractmethod
    def delete_vm(self, uuid: str, *, deadline: Deadline) -> list[str]:
        """Delete a VM that is not running, with the disks it owns (created with it or
        added by vmctl), and nothing else. Returns what was deleted, one line each
        (e.g. ["vm web-1", "disk /var/lib/.../web-1-0.qcow2"]).

        Pre: the VM is STOPPED, SUSPENDED or CRASHED (the core powers it off first on force).
        """

    @abc.abstractmethod
    def start(self, uuid: str, *, deadline: Deadline) -> Pending:
        """Power on a STOPPED or CRASHED VM. The core waits for RUNNING."""

    @abc.abstractmethod
    def power_off(self, uuid: str, *, deadline: Deadline) -> Pending:
        """Forced power-off (pulling the plug) from RUNNING, PAUSED, SUSPENDED or CRASHED.
        A SUSPENDED VM's saved state is discarded."""


# -- the primitives the core waits and retries with -----------------------------------------


class TaskWaiter(abc.ABC):
    """A driver whose request methods return ``Task`` handles implements this."""

    @abc.abstractmethod
    def wait_tasks(self, tasks: Sequence[Task], *, deadline: Deadline) -> list[TaskOutcome]:
        """Block, on the vendor's own mechanism, until at least one of ``tasks`` has ended or
        ``deadline`` passes; return the outcomes of those that ended ([] at the deadline).
        One blocking call (a long poll, an event wait), not a loop: the core loops."""


class ChangeWaiter(abc.ABC):
    """A driver that can wait for VMs to change without polling (events, long polls)."""

    @abc.abstractmethod
    def wait_changes(
        self, known: Mapping[str, VMInfo], *, deadline: Deadline
    ) -> dict[str, VMInfo | None]:
        """Block until the info of at least one VM in ``known`` (keyed by UUID) differs from
        what is given, or ``deadline`` passes. Return the VMs whose info changed (None for a
        VM that no longer exists); {} at the deadline. May return early with {}: the core
        calls again. One blocking call on the vendor's mechanism, not a loop."""


class Reconnectable(abc.ABC):
    """A driver that can make a new connection or session after a ConnectionError."""

    @abc.abstractmethod
    def reconnect(self, *, deadline: Deadline) -> None:
        """Replace the lost connection or expired session, before ``deadline``. Raise
        ConnectionError or AuthenticationError if that cannot be done."""


class BulkPower(abc.ABC):
    """Optional: the vendor powers many VMs on or off with one call (vCenter's
    ``Datacenter.PowerOnMultiVM_Task``) or waits for many at once (one xapi ``event.from``
    on all their tasks). The core uses it for starts and power-offs submitted together
    (``wait=False``) and then waits once for all of them; one request still goes through
    ``start`` / ``power_off``."""

    @abc.abstractmethod
    def start_many(
        self, uuids: Sequence[str], *, deadline: Deadline
    ) -> Mapping[str, Task | VmctlError | None]:
        """Start these STOPPED VMs. For each VM: the task the core waits on (one task may
        stand for several VMs), None when taken, or the (mapped) error for that VM. A VM
        missing from the result ({} for all) is started the ordinary way."""

    @abc.abstractmethod
    def power_off_many(
        self, uuids: Sequence[str], *, deadline: Deadline
    ) -> Mapping[str, Task | VmctlError | None]:
        """Power off these VMs; as ``start_many``."""


# -- optional interfaces: inherit the ones the backend has --------------------------------


class GracefulPower(abc.ABC):
    """Capabilities SHUTDOWN and REBOOT: ask the guest (ACPI, tools, agent)."""

    @abc.abstractmethod
    def shutdown(self, uuid: str, *, deadline: Deadline) -> Pending:
        """Ask the guest to shut down; return once asked (the core waits for STOPPED and
        applies ``force_after``). Raise InvalidState at once if the host knows the guest
        cannot be asked (no OS, no tools running, no PV drivers), saying why."""

    @abc.abstractmethod
    def reboot(self, uuid: str, *, deadline: Deadline) -> Pending:
        """Ask the guest to reboot. Raise InvalidState if it cannot be asked."""


class Resettable(abc.ABC):
    """Capability RESET: a forced restart."""

    @abc.abstractmethod
    def reset(self, uuid: str, *, deadline: Deadline) -> Pending: ...


class Pausable(abc.ABC):
    """Capability PAUSE: stop execution, keep memory in RAM."""

    @abc.abstractmethod
    def pause(self, uuid: str, *, deadline: Deadline) -> Pending: ...

    @abc.abstractmethod
    def unpause(self, uuid: str, *, deadline: Deadline) -> Pending: ...


class Suspendable(abc.ABC):
    """Capability SUSPEND: save memory to disk and stop; resume restores it."""

    @abc.abstractmethod
    def suspend(self, uuid: str, *, deadline: Deadline) -> Pending: ...

    @abc.abstractmethod
    def resume_suspended(self, uuid: str, *, deadline: Deadline) -> Pending: ...


class Reconfigurable(abc.ABC):
    """Capabilities SET_VCPUS / SET_MEMORY (stopped), HOT_VCPUS / HOT_MEMORY (running).

    The core has checked the state against the offered capabilities; ``live`` says whether
    the VM is running (so the change must be applied live and persisted).
    """

    @abc.abstractmethod
    def set_vcpus(self, uuid: str, vcpus: int, *, live: bool, deadline: Deadline) -> Pending: ...

    @abc.abstractmethod
    def set_memory(
        self, uuid: str, memory_mib: int, *, live: bool, deadline: Deadline
    ) -> Pending: ...


class ResourceControls(abc.ABC):
    """Capabilities CPU_SHARES, CPU_RESERVATION, CPU_LIMIT, MEMORY_SHARES,
    MEMORY_RESERVATION, MEMORY_LIMIT: only the fields that are set (not None) change, and
    only fields whose capability is offered are ever set."""

    @abc.abstractmethod
    def set_resources(self, uuid: str, resources: Resources, *, deadline: Deadline) -> Pending: ...


class Devices(abc.ABC):
    """Capabilities ADD_DISK, REMOVE_DISK, ADD_NIC, REMOVE_NIC (and HOTPLUG_DISK, HOTPLUG_NIC
    when they work on a running VM)."""

    @abc.abstractmethod
    def add_disk(self, uuid: str, disk: DiskSpec, *, live: bool, deadline: Deadline) -> DiskInfo:
        """Create and attach the disk; on failure remove what was made (or name it in
        ``left_behind``)."""

    @abc.abstractmethod
    def remove_disk(self, uuid: str, disk_id: str, *, live: bool, deadline: Deadline) -> None:
        """Detach and delete the disk. Raises NotFound for an unknown ``disk_id``. A live
        detach the guest must acknowledge is waited for within ``deadline`` (one blocking
        wait on the vendor's device-removed event, not a poll loop)."""

    @abc.abstractmethod
    def add_nic(self, uuid: str, nic: NicSpec, *, live: bool, deadline: Deadline) -> NicInfo: ...

    @abc.abstractmethod
    def remove_nic(self, uuid: str, nic_id: str, *, live: bool, deadline: Deadline) -> None: ...


class Snapshots(abc.ABC):
    """Capabilities SNAPSHOT and SNAPSHOT_MEMORY."""

    @abc.abstractmethod
    def create_snapshot(
        self, uuid: str, name: str, *, memory: bool, description: str, deadline: Deadline
    ) -> SnapshotInfo:
        """Take a snapshot; with ``memory`` (VM running) the guest's RAM is saved too, so a
        revert brings it back RUNNING."""

    @abc.abstractmethod
    def list_snapshots(self, uuid: str, *, deadline: Deadline) -> list[SnapshotInfo]:
        """All snapshots of the VM, each naming its parent; one marked ``current``."""

    @abc.abstractmethod
    def revert_snapshot(self, uuid: str, snapshot_id: str, *, deadline: Deadline) -> Pending:
        """Return the VM to the snapshot: STOPPED for a disk-only snapshot, the saved state
        (RUNNING or PAUSED) for one with memory."""

    @abc.abstractmethod
    def delete_snapshot(self, uuid: str, snapshot_id: str, *, deadline: Deadline) -> Pending:
        """Delete one snapshot; its children are re-parented, the VM's data is untouched."""


class Cloning(abc.ABC):
    """Capabilities CLONE (full copy of the disks) and LINKED_CLONE."""

    @abc.abstractmethod
    def clone_vm(self, uuid: str, name: str, *, linked: bool, deadline: Deadline) -> VMInfo:
        """Copy a STOPPED VM under a new name (new UUID, new MACs). The clone is STOPPED.
        On failure, as ``create_vm``: nothing left behind, or ``left_behind`` says what."""


class Migration(abc.ABC):
    """Capabilities MIGRATE_LIVE (running VM) and MIGRATE_COLD (stopped VM)."""

    @abc.abstractmethod
    def migrate_vm(self, uuid: str, target: Driver, *, live: bool, deadline: Deadline) -> Pending:
        """Move the VM to the host ``target`` (a connection of the same driver class). The
        VM keeps its UUID; the core then waits until it is on ``target`` in its state. Raise
        ValidationError if ``target`` is not reachable from this host."""


class EventSource(Protocol):
    """A subscription to a host's events, created by ``Events.subscribe``."""

    def next_event(self, timeout: float) -> Event | None:
        """The next event, or None if none came within ``timeout`` seconds."""
        ...

    def close(self) -> None: ...


class Events(abc.ABC):
    """Capability EVENTS: the host's events, from its own mechanism (a push callback, a long
    poll such as vSphere's WaitForUpdatesEx or XenAPI's event.from), not a sleep loop.
    Required kinds: created, deleted, state_changed. A host with no such mechanism either
    does not offer EVENTS or folds listings into events (docs/driver-authoring.md, Events)."""

    @abc.abstractmethod
    def subscribe(self, *, deadline: Deadline) -> EventSource:
        """Start receiving events now: every event after this call is delivered."""


class Statistics(abc.ABC):
    """Capability STATS."""

    @abc.abstractmethod
    def get_stats(self, uuids: Sequence[str], *, deadline: Deadline) -> dict[str, VMStats]:
        """Counters for the given VMs, in a bounded number of round trips."""


class GuestAgent(abc.ABC):
    """Capability GUEST_INFO."""

    @abc.abstractmethod
    def guest_info(self, uuid: str, *, deadline: Deadline) -> GuestInfo: ...


class DiskAccess(abc.ABC):
    """Capabilities BACKUP and BACKUP_QUIESCE: read a VM's disks at one point in time.

    The primitive under ``vm.backup()``: a libvirt backup job (pull mode, NBD), a vSphere
    snapshot read through VADP/NFC, a XenServer snapshot VDI exported over NBD. Everything
    else (chunking, hashing, repository, retries, progress) is the core's. Narrow away
    BACKUP_QUIESCE where the host cannot ask a guest to freeze its file systems.
    """

    @abc.abstractmethod
    def open_point_in_time(self, uuid: str, *, quiesce: bool, deadline: Deadline) -> PointInTime:
        """Freeze the content of every disk of the VM at one moment, in any power state.

        The VM may go on running and writing; reads through the returned handle see the
        content as it was at this call (copy-on-write, a snapshot, a fleecing overlay). With
        ``quiesce`` the guest is asked to freeze its file systems first (consistency
        QUIESCED); raise InvalidState at once if it cannot be asked (no agent or tools
        running). A stopped VM is STOPPED-consistent, a running one without quiesce CRASH.
        Where the driver tracks changed blocks, each disk carries the ``checkpoint`` of this
        moment. Release with ``close_point_in_time``, also after a failure.
        """

    @abc.abstractmethod
    def allocated_extents(
        self, pit: PointInTime, disk_id: str, *, deadline: Deadline
    ) -> list[Extent]:
        """The extents of the disk that may hold data, in order and not overlapping; holes
        (never written, discarded) may be left out. A driver that cannot tell returns one
        extent over the whole disk."""

    @abc.abstractmethod
    def read_extent(
        self, pit: PointInTime, disk_id: str, offset: int, length: int, *, deadline: Deadline
    ) -> bytes:
        """``length`` bytes of the disk at ``offset`` as of the point in time (zeroes for
        holes). The core reads in chunks of a few MiB, never past the disk's size."""

    @abc.abstractmethod
    def close_point_in_time(self, pit: PointInTime, *, deadline: Deadline) -> None:
        """Release the point in time (end the job, delete the snapshot, merge the overlay).
        Idempotent. The checkpoints it recorded stay valid for later ``changed_extents``."""


class ChangedBlocks(abc.ABC):
    """Capability BACKUP_INCREMENTAL: changed-block tracking (libvirt checkpoints and dirty
    bitmaps, vSphere CBT's QueryChangedDiskAreas, XenServer CBT's list_changed_blocks)."""

    @abc.abstractmethod
    def changed_extents(
        self, pit: PointInTime, disk_id: str, since: str, *, deadline: Deadline
    ) -> list[Extent]:
        """The extents of the disk written between the checkpoint ``since`` (the
        ``PointInTimeDisk.checkpoint`` of an earlier point in time of this disk) and ``pit``.
        May list more than was written, never less. Raise NotFound when the host no longer
        knows ``since`` (tracking was reset, the disk was replaced): the core then reads the
        whole disk."""


class DiskWriter(abc.ABC):
    """Capability RESTORE: write content into the disks of a STOPPED VM (a VM the core has
    just created for a restore, or one whose content a restore replaces). The upload path
    of the backend: libvirt's virStorageVolUpload, vSphere NFC/VDDK, a XenServer VDI
    import."""

    @abc.abstractmethod
    def write_extents(
        self, uuid: str, disk_id: str, extents: Sequence[ExtentData], *, deadline: Deadline
    ) -> None:
        """Write each extent at its offset (``data`` None: zeroes over ``length``). Pre: the
        VM is STOPPED (else InvalidState) and every extent lies inside the disk (else
        ValidationError). Raise InsufficientResources when the storage is full; what was
        written before stays written (the core deletes a VM it made for a restore). A
        driver whose backend only replaces whole files may keep the extents locally and
        write them in ``flush_writes``."""

    def flush_writes(
        self, uuid: str, disk_id: str, *, discard: bool = False, deadline: Deadline
    ) -> None:
        """Optional: the core calls this once after the last ``write_extents`` of a disk
        (a restore, ``write_disk``), with ``discard=True`` instead when it gives up on the
        writes (the restore failed). A driver that kept extents locally writes them now
        (or, discarding, drops them); the default does nothing, every call having written
        already. Idempotent; the same errors as ``write_extents``."""


class StorageListing(abc.ABC):
    """Optional, and no capability: the storage objects the driver's disks live in, so that
    the conformance kit can check that a deleted disk is gone from the backend (not only
    from the VM) and report disks and snapshots it left behind. Not used by the core."""

    @abc.abstractmethod
    def list_volumes(self, *, deadline: Deadline) -> list[Volume]:
        """Every object holding VM disk content in the storage this connection uses (the
        pools, datastores or SRs its disks are created in): volumes, disk files, VDIs,
        snapshot data (kind "snapshot"). Each ``Volume.path`` is what ``DiskInfo.path``
        says for a disk kept there. A bounded number of round trips, as ``list_vms``."""


@frozen
class StorageSpace:
    """The pool, SR or datastore new disks of a VM go to, as ``PlacementChecks`` reads it:
    its name, its free bytes and its capacity (None when the host does not say)."""

    name: str
    free_bytes: int
    capacity_bytes: int | None = None


class PlacementChecks(abc.ABC):
    """Optional, and no capability: what ``vmctl.move`` checks on its target before it
    creates anything, so that a VM that cannot land there is refused with the reason and
    nothing made. Reads only; each a bounded number of round trips."""

    @abc.abstractmethod
    def storage_space(self, pool: str | None, *, deadline: Deadline) -> StorageSpace:
        """The storage a new VM's disk with ``DiskSpec(pool=pool)`` goes to (``pool``, or
        the driver's default when None), read now. NotFound (naming the ones there are)
        when there is no such pool."""

    @abc.abstractmethod
    def check_network(self, network: str, *, deadline: Deadline) -> None:
        """Return if ``NicSpec(network=network)`` names a network a new VM's NIC can be
        put on; else NotFound naming the networks there are (the same rule as
        ``create_vm``)."""

    def firmwares(self, *, deadline: Deadline) -> frozenset[Firmware] | None:
        """The firmware ``create_vm`` can give a new VM here (``VMSpec.firmware``); None
        (the default) when the driver does not honour ``VMSpec.firmware``."""
        return None

    def mac_refusal(self, mac: str) -> str | None:
        """Why the host would refuse ``mac`` (lower case, colons) as a NIC's static MAC,
        or None when it takes it. No hypervisor call. The default: any unicast MAC (a
        multicast one is refused by ``NicSpec`` already)."""
        return None


#: The interface each optional capability needs; implementing it offers the capability.
INTERFACES: dict[Capability, type] = {
    Capability.SHUTDOWN: GracefulPower,
    Capability.REBOOT: GracefulPower,
    Capability.RESET: Resettable,
    Capability.PAUSE: Pausable,
    Capability.SUSPEND: Suspendable,
    Capability.SET_VCPUS: Reconfigurable,
    Capability.SET_MEMORY: Reconfigurable,
    Capability.HOT_VCPUS: Reconfigurable,
    Capability.HOT_MEMORY: Reconfigurable,
    Capability.CPU_SHARES: ResourceControls,
    Capability.CPU_RESERVATION: ResourceControls,
    Capability.CPU_LIMIT: ResourceControls,
    Capability.MEMORY_SHARES: ResourceControls,
    Capability.MEMORY_RESERVATION: ResourceControls,
    Capability.MEMORY_LIMIT: ResourceControls,
    Capability.ADD_DISK: Devices,
    Capability.REMOVE_DISK: Devices,
    Capability.ADD_NIC: Devices,
    Capability.REMOVE_NIC: Devices,
    Capability.HOTPLUG_DISK: Devices,
    Capability.HOTPLUG_NIC: Devices,
    Capability.SNAPSHOT: Snapshots,
    Capability.SNAPSHOT_MEMORY: Snapshots,
    Capability.CLONE: Cloning,
    Capability.LINKED_CLONE: Cloning,
    Capability.MIGRATE_LIVE: Migration,
    Capability.MIGRATE_COLD: Migration,
    Capability.EVENTS: Events,
    Capability.STATS: Statistics,
    Capability.GUEST_INFO: GuestAgent,
    Capability.BACKUP: DiskAccess,
    Capability.BACKUP_QUIESCE: DiskAccess,
    Capability.BACKUP_INCREMENTAL: ChangedBlocks,
    Capability.RESTORE: DiskWriter,
}


def capabilities_of(driver: type[Driver] | Driver) -> frozenset[Capability]:
    """The capabilities a driver class offers: the required ones, and each optional one
    whose interface it implements."""
    cls = driver if isinstance(driver, type) else type(driver)
    return REQUIRED_CAPABILITIES | frozenset(
        cap for cap, iface in INTERFACES.items() if issubclass(cls, iface)
    )


def finish_task(driver: Driver, task: Task, *, deadline: Deadline, what: str) -> TaskOutcome:
    """Wait for one of the driver's own tasks inside a method that must return a value
    (``create_vm``, ``clone_vm``, ``create_snapshot``, ``add_disk``...), with the core's one
    wait loop over ``TaskWaiter.wait_tasks``. Raises the task's error if it failed, and
    OperationTimeout (naming the task) when ``deadline`` passes first."""
    from ._dispatch import wait_task

    return wait_task(driver, task, deadline, what)
