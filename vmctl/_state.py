"""The neutral power-state model: states, the reasons for them, and which request is legal where.

Never folded: a paused VM is PAUSED, not STOPPED, on every backend. See DESIGN.md's table for
how each vendor's states map here.
"""

from __future__ import annotations

import enum

from ._capabilities import Capability


class PowerState(enum.StrEnum):
    """Where a VM is. The value is the stable name used in JSON and reports."""

    RUNNING = "running"
    PAUSED = "paused"  # execution stopped, memory kept in RAM
    SUSPENDED = "suspended"  # memory saved to disk, no RAM used
    STOPPED = "stopped"
    CRASHED = "crashed"
    UNKNOWN = "unknown"


class StateReason(enum.StrEnum):
    """Why a VM is in its state (libvirt's state reasons, made neutral)."""

    UNKNOWN = "unknown"
    CREATED = "created"  # defined, never started
    BOOTED = "booted"  # started normally
    RESUMED = "resumed"  # back from pause or suspend
    RESTORED = "restored"  # reverted to a snapshot
    MIGRATED = "migrated"  # arrived from or left for another host
    USER = "user"  # paused or suspended on request
    SHUTDOWN = "shutdown"  # the guest shut down
    POWERED_OFF = "powered_off"  # forced off (libvirt: destroyed)
    CRASHED = "crashed"
    SAVED = "saved"  # state saved to disk
    FAILED = "failed"  # failed to start or to keep running


class Request(enum.StrEnum):
    """A state change a user can ask for."""

    START = "start"
    SHUTDOWN = "shutdown"
    POWER_OFF = "power_off"
    REBOOT = "reboot"
    RESET = "reset"
    PAUSE = "pause"
    RESUME = "resume"
    SUSPEND = "suspend"


S = PowerState

#: Which states each request is legal from, and the state it reaches.
TRANSITIONS: dict[Request, tuple[frozenset[PowerState], PowerState]] = {
    Request.START: (frozenset({S.STOPPED, S.CRASHED}), S.RUNNING),
    Request.SHUTDOWN: (frozenset({S.RUNNING}), S.STOPPED),
    Request.POWER_OFF: (frozenset({S.RUNNING, S.PAUSED, S.SUSPENDED, S.CRASHED}), S.STOPPED),
    Request.REBOOT: (frozenset({S.RUNNING}), S.RUNNING),
    Request.RESET: (frozenset({S.RUNNING}), S.RUNNING),
    Request.PAUSE: (frozenset({S.RUNNING}), S.PAUSED),
    Request.RESUME: (frozenset({S.PAUSED, S.SUSPENDED}), S.RUNNING),
    Request.SUSPEND: (frozenset({S.RUNNING}), S.SUSPENDED),
}

#: The capability each request needs. RESUME needs PAUSE or SUSPEND: whichever got it there.
REQUEST_CAPABILITY: dict[Request, Capability] = {
    Request.START: Capability.START,
    Request.SHUTDOWN: Capability.SHUTDOWN,
    Request.POWER_OFF: Capability.POWER_OFF,
    Request.REBOOT: Capability.REBOOT,
    Request.RESET: Capability.RESET,
    Request.PAUSE: Capability.PAUSE,
    Request.SUSPEND: Capability.SUSPEND,
}

#: States in which a VM may be deleted without force.
DELETABLE = frozenset({S.STOPPED, S.SUSPENDED, S.CRASHED})
#: States in which the VM's disks are quiet and a cold operation (clone, cold reconfigure) works.
QUIESCENT = frozenset({S.STOPPED})


def allowed_from(request: Request) -> frozenset[PowerState]:
    """The states from which ``request`` is legal."""
    return TRANSITIONS[request][0]


def target_of(request: Request) -> PowerState:
    """The state ``request`` reaches."""
    return TRANSITIONS[request][1]
