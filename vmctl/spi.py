"""The driver SPI: what a backend implements so that vmctl can drive it.

Read this module and docs/driver-authoring.md, and nothing else, to write a driver.

A driver is a thin translator. The core (``vmctl.connect`` and the ``VM`` handle) has already
done everything that is policy before it calls a driver method:

* arguments are validated (specs are valid ``VMSpec`` values, names are checked);
* the capability the request needs is declared by the driver (else NotSupported was raised);
* the VM's current power state allows the request (else InvalidState was raised);
* timeouts are resolved: a driver gets plain seconds (``timeout``), never ``None`` defaults;
* after a state request, the core waits until the target state is reached (with
  ``wait_for_state`` when the driver has ``StateWaiter``, else by polling ``get_vm``),
  handles graceful-then-forced shutdown, and runs requests asynchronously for ``wait=False``.

So a driver method does one thing: translate the request into vendor calls and map the
vendor's faults into vmctl's exception tree (``raise vmctl.NotFound(...) from vendor_exc``).

VMs are named by ``uuid`` (a string the backend keeps stable for the VM's life).

Mandatory methods are on ``Driver``. Optional features are separate interfaces (``Pausable``,
``Snapshots``, ...): a driver inherits the ones it implements and declares the matching
``Capability`` values in ``capabilities()``. The core checks at connect time that every
declared capability has its interface.

Thread safety: the core may call a driver from several threads (``wait=False`` operations).
Set ``thread_safe = False`` if the vendor connection cannot take that; the core then
serializes calls to the driver with a lock.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from typing import ClassVar, Protocol, runtime_checkable

from ._capabilities import Capability
from ._config import ConnectParams
from ._model import (
    DiskInfo,
    DiskSpec,
    Event,
    GuestInfo,
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
from ._state import PowerState

__all__ = [
    "Cloning",
    "Devices",
    "Driver",
    "EventSource",
    "Events",
    "GracefulPower",
    "GuestAgent",
    "Migration",
    "Pausable",
    "Reconfigurable",
    "Resettable",
    "ResourceControls",
    "Snapshots",
    "StateWaiter",
    "Statistics",
    "Suspendable",
]


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
    def open(cls, params: ConnectParams) -> Driver:
        """Connect to the host ``params.uri`` names, within ``params.timeouts.connect_s``.

        Raises AuthenticationError when credentials are refused, ConnectionError when the host
        cannot be reached, ValidationError for URI options the driver does not understand.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection and any session on the host. Idempotent; never raises."""

    @abc.abstractmethod
    def capabilities(self) -> frozenset[Capability]:
        """What this connection can do. Must include REQUIRED_CAPABILITIES.

        May depend on the host (e.g. a hypervisor version); it is read once per connection.
        """

    @abc.abstractmethod
    def host_info(self) -> HostInfo:
        """The host or cluster this connection manages."""

    @abc.abstractmethod
    def list_vms(self) -> list[VMInfo]:
        """Every VM (not templates, not the control domain) with its state.

        Must take a bounded number of backend round trips however many VMs exist: one batched
        query, never one call per VM.
        """

    @abc.abstractmethod
    def get_vm(self, uuid: str) -> VMInfo:
        """One VM's current info. Raises NotFound."""

    @abc.abstractmethod
    def get_config(self, uuid: str) -> VMConfig:
        """One VM's configuration: vCPUs, memory, disks, NICs, resource controls."""

    @abc.abstractmethod
    def create_vm(self, spec: VMSpec) -> VMInfo:
        """Create a STOPPED VM from ``spec`` (disks created, NICs attached).

        Pre: ``spec`` is valid; resource controls it sets are declared capabilities.
        Post: the VM exists with ``spec.name``, or nothing of it is left behind (the driver
        removes what it had created before raising). Raises AlreadyExists for a taken name,
        NotFound for an unknown network or pool, InsufficientResources.
        """

    @abc.abstractmethod
    def delete_vm(self, uuid: str) -> list[str]:
        """Delete a VM that is not running, with the disks it owns (created with it or
        added by vmctl), and nothing else. Returns what was deleted, one line each
        (e.g. ["vm web-1", "disk /var/lib/.../web-1-0.qcow2"]).

        Pre: the VM is STOPPED, SUSPENDED or CRASHED (the core powers it off first on force).
        """

    @abc.abstractmethod
    def start(self, uuid: str) -> None:
        """Power on a STOPPED or CRASHED VM. May return before RUNNING is reached."""

    @abc.abstractmethod
    def power_off(self, uuid: str) -> None:
        """Forced power-off (pulling the plug) from RUNNING, PAUSED, SUSPENDED or CRASHED.
        A SUSPENDED VM's saved state is discarded."""


# -- optional interfaces: inherit the ones the backend has --------------------------------


class GracefulPower(abc.ABC):
    """Capabilities SHUTDOWN and REBOOT: ask the guest (ACPI, tools, agent)."""

    @abc.abstractmethod
    def shutdown(self, uuid: str) -> None:
        """Ask the guest to shut down; return once asked (the core waits for STOPPED and
        applies ``force_after``). Raise InvalidState if the guest cannot be asked (e.g. no
        tools), saying why."""

    @abc.abstractmethod
    def reboot(self, uuid: str) -> None:
        """Ask the guest to reboot."""


class Resettable(abc.ABC):
    """Capability RESET: a forced restart."""

    @abc.abstractmethod
    def reset(self, uuid: str) -> None: ...


class Pausable(abc.ABC):
    """Capability PAUSE: stop execution, keep memory in RAM."""

    @abc.abstractmethod
    def pause(self, uuid: str) -> None: ...

    @abc.abstractmethod
    def unpause(self, uuid: str) -> None: ...


class Suspendable(abc.ABC):
    """Capability SUSPEND: save memory to disk and stop; resume restores it."""

    @abc.abstractmethod
    def suspend(self, uuid: str) -> None: ...

    @abc.abstractmethod
    def resume_suspended(self, uuid: str) -> None: ...


class Reconfigurable(abc.ABC):
    """Capabilities SET_VCPUS / SET_MEMORY (stopped), HOT_VCPUS / HOT_MEMORY (running).

    The core has checked the state against the declared capabilities; ``live`` says whether
    the VM is running (so the change must be applied live and persisted).
    """

    @abc.abstractmethod
    def set_vcpus(self, uuid: str, vcpus: int, *, live: bool) -> None: ...

    @abc.abstractmethod
    def set_memory(self, uuid: str, memory_mib: int, *, live: bool) -> None: ...


class ResourceControls(abc.ABC):
    """Capabilities CPU_SHARES, CPU_RESERVATION, CPU_LIMIT, MEMORY_SHARES,
    MEMORY_RESERVATION, MEMORY_LIMIT: only the fields that are set (not None) change, and
    only fields whose capability is declared are ever set."""

    @abc.abstractmethod
    def set_resources(self, uuid: str, resources: Resources) -> None: ...


class Devices(abc.ABC):
    """Capabilities ADD_DISK, REMOVE_DISK, ADD_NIC, REMOVE_NIC (and HOTPLUG_DISK, HOTPLUG_NIC
    when they work on a running VM)."""

    @abc.abstractmethod
    def add_disk(self, uuid: str, disk: DiskSpec, *, live: bool) -> DiskInfo: ...

    @abc.abstractmethod
    def remove_disk(self, uuid: str, disk_id: str, *, live: bool) -> None:
        """Detach and delete the disk. Raises NotFound for an unknown ``disk_id``."""

    @abc.abstractmethod
    def add_nic(self, uuid: str, nic: NicSpec, *, live: bool) -> NicInfo: ...

    @abc.abstractmethod
    def remove_nic(self, uuid: str, nic_id: str, *, live: bool) -> None: ...


class Snapshots(abc.ABC):
    """Capabilities SNAPSHOT and SNAPSHOT_MEMORY."""

    @abc.abstractmethod
    def create_snapshot(
        self, uuid: str, name: str, *, memory: bool, description: str
    ) -> SnapshotInfo:
        """Take a snapshot; with ``memory`` (VM running) the guest's RAM is saved too, so a
        revert brings it back RUNNING."""

    @abc.abstractmethod
    def list_snapshots(self, uuid: str) -> list[SnapshotInfo]:
        """All snapshots of the VM, each naming its parent; one marked ``current``."""

    @abc.abstractmethod
    def revert_snapshot(self, uuid: str, snapshot_id: str) -> None:
        """Return the VM to the snapshot: STOPPED for a disk-only snapshot, the saved state
        (RUNNING or PAUSED) for one with memory."""

    @abc.abstractmethod
    def delete_snapshot(self, uuid: str, snapshot_id: str) -> None:
        """Delete one snapshot; its children are re-parented, the VM's data is untouched."""


class Cloning(abc.ABC):
    """Capabilities CLONE (full copy of the disks) and LINKED_CLONE."""

    @abc.abstractmethod
    def clone_vm(self, uuid: str, name: str, *, linked: bool) -> VMInfo:
        """Copy a STOPPED VM under a new name (new UUID, new MACs). The clone is STOPPED."""


class Migration(abc.ABC):
    """Capabilities MIGRATE_LIVE (running VM) and MIGRATE_COLD (stopped VM)."""

    @abc.abstractmethod
    def migrate_vm(self, uuid: str, target: Driver, *, live: bool, timeout: float) -> None:
        """Move the VM to the host ``target`` (a connection of the same driver class) and
        return when it is there, running if it was, within ``timeout`` seconds. The VM keeps
        its UUID. Raise ValidationError if ``target`` is not reachable from this host."""


class EventSource(Protocol):
    """A subscription to a host's events, created by ``Events.subscribe``."""

    def next_event(self, timeout: float) -> Event | None:
        """The next event, or None if none came within ``timeout`` seconds."""
        ...

    def close(self) -> None: ...


class Events(abc.ABC):
    """Capability EVENTS: the backend pushes events (no polling by the driver)."""

    @abc.abstractmethod
    def subscribe(self) -> EventSource:
        """Start receiving events now: every event after this call is delivered."""


class Statistics(abc.ABC):
    """Capability STATS."""

    @abc.abstractmethod
    def get_stats(self, uuids: Sequence[str]) -> dict[str, VMStats]:
        """Counters for the given VMs, in a bounded number of round trips."""


class GuestAgent(abc.ABC):
    """Capability GUEST_INFO."""

    @abc.abstractmethod
    def guest_info(self, uuid: str) -> GuestInfo: ...


@runtime_checkable
class StateWaiter(Protocol):
    """Optional: a driver that can wait for a state without polling (events, long-poll)."""

    def wait_for_state(self, uuid: str, states: Iterable[PowerState], *, timeout: float) -> VMInfo:
        """Return the VM's info as soon as its state is one of ``states``; raise
        OperationTimeout after ``timeout`` seconds."""
        ...


#: The interface each capability needs.
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
}
