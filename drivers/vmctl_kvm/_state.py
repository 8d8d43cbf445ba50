"""libvirt domain states and reasons -> vmctl's PowerState and StateReason, exactly.

The numbers are libvirt's stable ABI (virDomainState and the per-state reason enums), spelled
out so that this module imports without libvirt-python.
"""

from __future__ import annotations

from vmctl import EventKind, PowerState, StateReason

S = PowerState
R = StateReason

NOSTATE, RUNNING, BLOCKED, PAUSED, SHUTDOWN, SHUTOFF, CRASHED, PMSUSPENDED = range(8)

_RUNNING_REASONS = {
    0: R.UNKNOWN,
    1: R.BOOTED,
    2: R.MIGRATED,
    3: R.RESUMED,  # restored from a saved image
    4: R.RESTORED,  # from snapshot
    5: R.RESUMED,  # unpaused
    6: R.RESUMED,  # migration canceled
    7: R.RESUMED,  # save canceled
    8: R.RESUMED,  # woken up from PM suspend
    9: R.CRASHED,  # running again after a crash (on_crash=restart)
    10: R.MIGRATED,  # post-copy migration
}
# Paused by libvirt for a job (migration, save, dump, snapshot, start-up, shut-down): still
# PAUSED (its vCPUs are stopped), with the reason naming the job.
_PAUSED_REASONS = {
    0: R.UNKNOWN,
    1: R.USER,
    2: R.MIGRATED,
    3: R.SAVED,
    4: R.UNKNOWN,  # dump
    5: R.FAILED,  # I/O error
    6: R.FAILED,  # watchdog
    7: R.RESTORED,  # from snapshot
    8: R.SHUTDOWN,  # shutting down
    9: R.UNKNOWN,  # snapshot in progress
    10: R.CRASHED,  # guest panicked
    11: R.BOOTED,  # starting up
    12: R.MIGRATED,  # post-copy
    13: R.FAILED,  # post-copy failed
}
_SHUTOFF_REASONS = {
    0: R.UNKNOWN,
    1: R.SHUTDOWN,
    2: R.POWERED_OFF,  # destroyed
    3: R.CRASHED,
    4: R.MIGRATED,
    5: R.SAVED,
    6: R.FAILED,
    7: R.RESTORED,  # from snapshot
    8: R.UNKNOWN,  # daemon
}
#: libvirt reason numbers whose meaning the paused mapping folds, to say in docs/tests
TRANSIENT_PAUSE_REASONS = frozenset({2, 3, 4, 8, 9, 11, 12})


def to_power_state(state: int, reason: int, managed_save: bool) -> tuple[PowerState, StateReason]:
    """vmctl's state and reason for a libvirt (state, reason) pair.

    SHUTOFF with a managed-save image is SUSPENDED (saved to disk); PMSUSPENDED is SUSPENDED
    too (the guest is in S3/S4); BLOCKED and SHUTDOWN (being shut down) are RUNNING.
    """
    if state in (RUNNING, BLOCKED):
        return S.RUNNING, _RUNNING_REASONS.get(reason, R.UNKNOWN)
    if state == SHUTDOWN:
        return S.RUNNING, R.UNKNOWN
    if state == PAUSED:
        return S.PAUSED, _PAUSED_REASONS.get(reason, R.UNKNOWN)
    if state == SHUTOFF:
        if managed_save:
            return S.SUSPENDED, R.SAVED
        return S.STOPPED, _SHUTOFF_REASONS.get(reason, R.UNKNOWN)
    if state == CRASHED:
        return S.CRASHED, R.CRASHED
    if state == PMSUSPENDED:
        return S.SUSPENDED, R.USER
    return S.UNKNOWN, R.UNKNOWN


# -- lifecycle events -----------------------------------------------------------------------

(
    EV_DEFINED,
    EV_UNDEFINED,
    EV_STARTED,
    EV_SUSPENDED,
    EV_RESUMED,
    EV_STOPPED,
    EV_SHUTDOWN,
    EV_PMSUSPENDED,
    EV_CRASHED,
) = range(9)

_STARTED = {0: R.BOOTED, 1: R.MIGRATED, 2: R.RESUMED, 3: R.RESTORED, 4: R.RESUMED}
_SUSPENDED = {
    0: R.USER,
    1: R.MIGRATED,
    2: R.FAILED,
    3: R.FAILED,
    4: R.RESTORED,
    5: R.RESTORED,
    6: R.FAILED,
    7: R.MIGRATED,
    8: R.FAILED,
}
_RESUMED = {0: R.RESUMED, 1: R.MIGRATED, 2: R.RESTORED, 3: R.MIGRATED}
_STOPPED = {
    0: R.SHUTDOWN,
    1: R.POWERED_OFF,
    2: R.CRASHED,
    3: R.MIGRATED,
    4: R.SAVED,
    5: R.FAILED,
    6: R.RESTORED,
}


def event_of(
    event: int, detail: int
) -> tuple[EventKind, PowerState | None, StateReason | None, str] | None:
    """(kind, state, reason, detail text) for a lifecycle event, or None to drop it."""
    if event == EV_DEFINED:
        if detail == 0:
            return EventKind.CREATED, S.STOPPED, R.CREATED, "defined"
        return (
            EventKind.RECONFIGURED,
            None,
            None,
            ["added", "updated", "renamed", "from snapshot"][min(detail, 3)],
        )
    if event == EV_UNDEFINED:
        return EventKind.DELETED, None, None, "undefined"
    if event == EV_STARTED:
        reason = _STARTED.get(detail, R.UNKNOWN)
        kind = EventKind.MIGRATED if reason is R.MIGRATED else EventKind.STATE_CHANGED
        return kind, S.RUNNING, reason, f"started ({reason.value})"
    if event == EV_SUSPENDED:
        reason = _SUSPENDED.get(detail, R.UNKNOWN)
        return EventKind.STATE_CHANGED, S.PAUSED, reason, f"paused ({reason.value})"
    if event == EV_RESUMED:
        reason = _RESUMED.get(detail, R.UNKNOWN)
        return EventKind.STATE_CHANGED, S.RUNNING, reason, f"resumed ({reason.value})"
    if event == EV_STOPPED:
        reason = _STOPPED.get(detail, R.UNKNOWN)
        if reason is R.MIGRATED:
            return EventKind.MIGRATED, S.STOPPED, reason, "migrated away"
        # "saved" is a managed save here (vmctl's suspend); a plain save-to-file is not
        # something vmctl does.
        state = S.SUSPENDED if reason is R.SAVED else S.STOPPED
        return EventKind.STATE_CHANGED, state, reason, f"stopped ({reason.value})"
    if event == EV_PMSUSPENDED:
        return EventKind.STATE_CHANGED, S.SUSPENDED, R.USER, "pm-suspended"
    if event == EV_CRASHED:
        return EventKind.STATE_CHANGED, S.CRASHED, R.CRASHED, "crashed"
    return None  # EV_SHUTDOWN: the guest finished shutting down; STOPPED follows
