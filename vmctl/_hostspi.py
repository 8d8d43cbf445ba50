"""The driver side of hosts: what a backend implements so that vmctl sees the hosts a
connection manages and can move VMs between them (re-exported by ``vmctl.spi``).

Optional interfaces, and no capability: a driver without ``HostInventory`` is one host,
described by ``Driver.host_info`` and ``Driver.list_vms`` (``vmctl._hosts`` builds it).
Planning (which VM goes where, in which mode, or why it cannot), parallelism, retries,
progress and the vmctl-level maintenance flag are the core's (``vmctl._evacuate``).
"""

from __future__ import annotations

import abc
import enum
from typing import ClassVar

from attrs import frozen

from ._deadline import Deadline
from ._model import VMInfo
from ._tasks import Task


class HostState(enum.StrEnum):
    """A host's state, as the backend or vmctl's own maintenance flag says."""

    CONNECTED = "connected"  # up, managed, takes VMs
    MAINTENANCE = "maintenance"  # up, takes no new VMs (backend mode or vmctl's flag)
    UNREACHABLE = "unreachable"  # the manager cannot reach it (not proof it is down)


class MoveMode(enum.StrEnum):
    """How a VM gets to another host."""

    LIVE = "live"  # a running VM moves running (live migration)
    COLD = "cold"  # a stopped VM moves (its registration / home host changes)
    RESTART = "restart"  # a running VM is shut down cleanly, moved cold, started there


@frozen
class HostRecord:
    """One host as the driver reads it. ``id`` is stable for the host's life (a UUID)."""

    id: str
    name: str
    state: HostState
    cpus: int
    cpu_mhz: int
    memory_mib: int
    #: Host memory in use (VMs and the hypervisor's own), when the backend says.
    memory_used_mib: int | None = None
    #: CPU load over the backend's last sampling interval, 0-100, when it says.
    cpu_percent: float | None = None
    #: VMs placed on the host (running ones, and stopped ones whose home it is).
    vm_count: int = 0


@frozen
class Placement:
    """Where a VM is and what ties it there, as the planner needs it.

    ``host_id`` is None for a VM tied to no host (a stopped VM any host may start).
    ``memory_mib`` is the host memory the VM takes when it runs (with the backend's
    overhead, which ``overhead_mib`` says when the backend reports it). ``local_disks``
    names the disks on storage only its host reaches; ``pinned`` says why the VM cannot
    leave its host at all (a passthrough device...); ``live_blocker`` why it cannot move
    live now (the backend refuses it), or None.
    """

    vm: VMInfo
    host_id: str | None
    memory_mib: int
    local_disks: tuple[str, ...] = ()
    pinned: str | None = None
    live_blocker: str | None = None
    overhead_mib: int = 0


class HostInventory(abc.ABC):
    """The hosts a connection manages: a vCenter cluster, a xapi pool, a sim site."""

    @abc.abstractmethod
    def list_hosts(self, *, deadline: Deadline) -> list[HostRecord]:
        """Every host, with capacity, load and state; a bounded number of round trips."""

    @abc.abstractmethod
    def list_placements(self, *, deadline: Deadline) -> list[Placement]:
        """Every VM of those hosts with its placement; a bounded number of round trips
        however many VMs exist (batched reads, as ``list_vms``)."""

    @abc.abstractmethod
    def locate_vm(self, uuid: str, *, deadline: Deadline) -> tuple[str | None, VMInfo]:
        """The host id a VM is on now, and its info: one cheap read (the core checks a
        move with it). Raises NotFound."""


class HostMigration(abc.ABC):
    """Moving a VM to a named host of the same connection (needs MIGRATE_LIVE for
    ``LIVE``, MIGRATE_COLD for ``COLD`` and ``RESTART``).

    ``restarts_in_place``: the driver does a RESTART move itself, in one call (xapi's
    clean_shutdown, set_affinity, start_on; the sim). False (the default): the core never
    hands it RESTART, and composes the move from the driver's own requests
    (``vmctl._restartmove``): ``GracefulPower.shutdown`` and a wait for STOPPED, a COLD
    ``move_to_host``, ``start`` and a wait for RUNNING on the target; such a driver needs
    SHUTDOWN too, and its ``start`` must reach a VM on any of its hosts.
    """

    restarts_in_place: ClassVar[bool] = False

    @abc.abstractmethod
    def move_to_host(
        self, uuid: str, host_id: str, *, mode: MoveMode, deadline: Deadline
    ) -> Task | None:
        """Move the VM to the host ``host_id``: LIVE (it is RUNNING, and stays so), COLD
        (it is STOPPED, and its home becomes that host) or, only when
        ``restarts_in_place``, RESTART (it is RUNNING: a clean shutdown, a cold move, a
        start there; InvalidState at once when the guest cannot be asked to shut down).

        Return a Task that ends when the VM is on the host in its state, or None when it
        is already there. Refuse (InvalidState) a host in maintenance; raise
        InsufficientResources when the host has no room, ValidationError for a host that
        cannot reach the VM's storage. The core checks the result with ``locate_vm``.
        """


class HostMaintenance(abc.ABC):
    """The backend's own maintenance mode (vCenter EnterMaintenanceMode_Task, xapi
    host.disable/enable, the sim's host flag)."""

    @abc.abstractmethod
    def set_maintenance(self, host_id: str, on: bool, *, deadline: Deadline) -> Task | None:
        """Put the host in (``on``) or out of the backend's maintenance mode: a host in it
        takes no new VMs. Idempotent. A Task when the backend still works on it."""


class HostRecovery(abc.ABC):
    """Restarting the VMs of a failed host on the others (``vmctl.plan_recovery``).

    The core never starts a VM of a failed host unless the caller confirmed that the host
    is fenced (it cannot run them any more) or ``fence_proof`` gives the backend's own
    proof; then ``declare_failed`` makes the backend record the VMs as stopped, and
    ``restart_on_host`` starts each elsewhere.
    """

    @abc.abstractmethod
    def fence_proof(self, host_id: str, *, deadline: Deadline) -> str | None:
        """Why the backend itself knows that the host runs none of its VMs (xapi: the
        host was declared dead, its VMs' power state reset; the sim: the host is marked
        failed), or None when it does not know (then only the caller's confirmation
        counts)."""

    @abc.abstractmethod
    def declare_failed(self, host_id: str, *, deadline: Deadline) -> Task | None:
        """Tell the backend that the host is down for good: its VMs are recorded STOPPED,
        their home still on it (xapi ``host.declare_dead``). Idempotent. InvalidState when
        the backend sees the host alive (xapi: HOST_IS_LIVE)."""

    @abc.abstractmethod
    def restart_on_host(self, uuid: str, host_id: str, *, deadline: Deadline) -> Task | None:
        """Start a STOPPED VM of a declared-failed host on ``host_id``, which becomes its
        home, after checking that the host reaches its disks (ValidationError otherwise).
        None when it already runs there."""
