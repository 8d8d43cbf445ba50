"""Evacuation: a plan a person reads before anything moves, and carrying it out.

``plan_evacuation(host)`` is a dry run: for each VM on the host a target host and a mode
(live, cold, restart) or a blocker with its reason. ``execute(plan)`` moves the VMs with at
most ``max_parallel`` moves at once, each through the connection's dispatcher under its own
deadline (``Dispatcher.call``, ``await_task``), with bounded retries and progress. It is
resumable by construction: a plan lists the VMs on the host when it is made, so re-planning
after an interruption moves only what is left, and ``execute`` checks where each VM is
before moving it.

Planning: first-fit decreasing by memory, each VM to the target with the most memory left
after the moves planned so far; a stopped VM needs no memory. A host in maintenance (the
backend's mode or vmctl's flag) or unreachable is never a target.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING, Any, cast

from attrs import field, frozen

from . import _maintenance
from ._capabilities import Capability
from ._errors import (
    InsufficientResources,
    InvalidState,
    NotFound,
    NotSupported,
    ValidationError,
    VmctlError,
)
from ._hosts import Host, find_host, list_hosts, read_placements
from ._hostspi import HostInventory, HostMigration, HostState, MoveMode, Placement
from ._restartmove import (
    ComposedRestart,
    ShutdownTimedOut,
    can_compose,
    composes_restart,
    run_move,
)
from ._state import PowerState

if TYPE_CHECKING:
    from ._connection import Connection
    from ._hypervisor import Hypervisor
    from ._rebalance import RebalancePlan

log = logging.getLogger("vmctl")

ON_FAIL = ("stop", "cold", "skip")
#: Moves attempted at most this many extra times after a failure that may be passing
#: (a timeout, a lost connection, a backend error), by default.
DEFAULT_RETRIES = 1


class BlockKind(enum.StrEnum):
    """Why a VM cannot be moved off its host."""

    PINNED = "pinned"  # tied to the host (a passthrough device...)
    LOCAL_STORAGE = "local-storage"  # a disk on storage no target reaches
    MEMORY = "memory"  # no target has the memory
    CAPABILITY = "capability"  # the connection or the VM cannot move this way
    STATE = "state"  # its power state cannot be moved (paused, suspended, crashed)
    HOST_DOWN = "host-unreachable"  # its host does not answer: recovery, not evacuation
    NO_TARGET = "no-target"  # no host to move to


@frozen
class Move:
    """One VM to move: where to and how."""

    vm_uuid: str
    vm_name: str
    state: PowerState
    memory_mib: int
    target_id: str
    target_name: str
    mode: MoveMode
    #: The host it leaves (a rebalance moves VMs off several hosts).
    source_id: str = ""
    source_name: str = ""
    #: The part of ``memory_mib`` that is the backend's overhead for the VM (vSphere's).
    overhead_mib: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "vm": self.vm_name,
            "uuid": self.vm_uuid,
            "state": self.state.value,
            "memory_mib": self.memory_mib,
            "overhead_mib": self.overhead_mib,
            "source": self.source_name,
            "target": self.target_name,
            "target_id": self.target_id,
            "mode": self.mode.value,
        }


@frozen
class Blocker:
    """A VM that cannot be moved, and why."""

    vm_uuid: str
    vm_name: str
    state: PowerState
    memory_mib: int
    kind: BlockKind
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "vm": self.vm_name,
            "uuid": self.vm_uuid,
            "state": self.state.value,
            "memory_mib": self.memory_mib,
            "blocker": self.kind.value,
            "reason": self.reason,
        }


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _memory(total: int, overhead: int) -> str:
    if not overhead:
        return f"{total} MiB"
    return f"{total} MiB ({total - overhead} + {overhead} overhead)"


class _Executable:
    """``plan.execute(...)`` for the plans ``execute`` carries out (evacuation, rebalance)."""

    __slots__ = ()

    def execute(
        self,
        *,
        max_parallel: int = 4,
        on_fail: str = "stop",
        retries: int = DEFAULT_RETRIES,
        progress: Callable[[EvacuationProgress], None] | None = None,
        timeout: float | None = None,
    ) -> EvacuationReport:
        """``vmctl.execute(self, ...)``."""
        return execute(
            cast("Plan | RebalancePlan", self),
            max_parallel=max_parallel,
            on_fail=on_fail,
            retries=retries,
            progress=progress,
            timeout=timeout,
        )


@frozen(repr=False)
class Plan(_Executable):
    """What an evacuation of ``source`` would do, read at ``created``: ``moves`` and
    ``blockers``. Nothing has moved. ``str(plan)`` is a table; ``to_json()`` a dict."""

    source: Host
    targets: tuple[Host, ...]
    moves: tuple[Move, ...]
    blockers: tuple[Blocker, ...]
    created: dt.datetime
    allow_restart: bool = False
    hypervisor: Hypervisor | None = field(default=None, eq=False, repr=False)

    @property
    def title(self) -> str:
        return f"Evacuation of host {self.source.name}"

    def __repr__(self) -> str:
        return (
            f"<Plan evacuate {self.source.name}: {len(self.moves)} moves, "
            f"{len(self.blockers)} blocked, targets {[t.name for t in self.targets]}>"
        )

    @property
    def ok(self) -> bool:
        """Every VM of the host has a move."""
        return not self.blockers

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source.to_json(),
            "targets": [t.to_json() for t in self.targets],
            "moves": [m.to_json() for m in self.moves],
            "blockers": [b.to_json() for b in self.blockers],
            "created": self.created.isoformat(timespec="seconds"),
            "allow_restart": self.allow_restart,
        }

    def __str__(self) -> str:
        out = [
            f"Evacuation plan for host {self.source.name} ({self.source.state.value}), "
            f"{len(self.moves)} move(s), {len(self.blockers)} blocked; targets: "
            + (", ".join(t.name for t in self.targets) or "none")
        ]
        if self.moves:
            out.append(
                _table(
                    ["VM", "STATE", "MEMORY", "MODE", "TARGET"],
                    [
                        [
                            m.vm_name,
                            m.state.value,
                            _memory(m.memory_mib, m.overhead_mib),
                            m.mode.value,
                            m.target_name,
                        ]
                        for m in self.moves
                    ],
                )
            )
        if self.blockers:
            out.append("Blocked:")
            out.append(
                _table(
                    ["VM", "STATE", "BLOCKER", "REASON"],
                    [[b.vm_name, b.state.value, b.kind.value, b.reason] for b in self.blockers],
                )
            )
        return "\n".join(out)


# -- planning -----------------------------------------------------------------------------


def _connection(hv: object) -> tuple[Hypervisor, Connection]:
    from ._hypervisor import Hypervisor

    if not isinstance(hv, Hypervisor):
        raise ValidationError("the host was not read through a connection", field="host")
    return hv, hv._conn


def _memory_left(host: Host, incoming: int) -> int | None:
    free = host.memory_free_mib
    return None if free is None else free - incoming


class _Placer:
    """Places a host's VMs on targets one at a time, keeping count of the memory and names
    each target takes (plan_evacuation and plan_recovery share it)."""

    def __init__(self, source: Host, chosen: Sequence[Host], every: Sequence[Placement]) -> None:
        self.source = source
        self.chosen = list(chosen)
        self.incoming: dict[str, int] = {t.id: 0 for t in chosen}
        self.names: dict[str, set[str]] = {t.id: set() for t in chosen}
        self.moves: list[Move] = []
        self.blockers: list[Blocker] = []
        # Same-named VMs already on a target cannot go there (most backends refuse it).
        for other in every:
            if other.host_id in self.names:
                self.names[other.host_id].add(other.vm.name)

    def block(self, p: Placement, kind: BlockKind, reason: str) -> None:
        vm = p.vm
        self.blockers.append(Blocker(vm.uuid, vm.name, vm.state, p.memory_mib, kind, reason))

    def place(self, p: Placement, mode: MoveMode, planned: str) -> None:
        """Move ``p`` to the target with the most memory left that takes it, else block it
        (``planned`` names what was planned before it: "moves", "restarts")."""
        vm = p.vm
        if not self.chosen:
            self.block(
                p, BlockKind.NO_TARGET, "no other host takes VMs (all in maintenance or down)"
            )
            return
        needs = 0 if mode is MoveMode.COLD else p.memory_mib
        fits = []
        for t in self.chosen:
            if vm.name in self.names[t.id]:
                continue
            left = _memory_left(t, self.incoming[t.id])
            if left is None or left >= needs:
                fits.append((-(left if left is not None else math.inf), t.name, t))
        if not fits:
            free = ", ".join(
                f"{t.name} {_memory_left(t, self.incoming[t.id])} MiB" for t in self.chosen
            )
            self.block(
                p,
                BlockKind.MEMORY,
                f"not enough memory on any target: it needs {needs} MiB; free after the "
                f"{planned} planned before it: {free}",
            )
            return
        target = min(fits, key=lambda f: (f[0], f[1]))[2]
        self.incoming[target.id] += needs
        self.names[target.id].add(vm.name)
        source = self.source
        self.moves.append(
            Move(
                vm.uuid,
                vm.name,
                vm.state,
                p.memory_mib,
                target.id,
                target.name,
                mode,
                source.id,
                source.name,
                p.overhead_mib,
            )
        )


def check_plan_args(host: object, targets: Sequence[object] | None) -> None:
    """The arguments every planner takes: a Host, and None or a list of Host."""
    if not isinstance(host, Host):
        raise ValidationError("expected a Host from hv.hosts()", field="host")
    if targets is not None and (
        isinstance(targets, (str, bytes)) or not all(isinstance(t, Host) for t in targets)
    ):
        raise ValidationError("expected a list of Host from hv.hosts()", field="targets")


def choose_targets(
    hosts: Sequence[Host], source: Host, targets: Sequence[Host] | None, role: str
) -> list[Host]:
    """The hosts a plan may use, as read now: the named ``targets`` (each must be another
    host here that takes VMs, else ValidationError; ``role`` says what ``source`` is), or
    every other host that takes VMs."""
    if targets is None:
        return [h for h in hosts if h.id != source.id and h.takes_vms]
    by_id = {h.id: h for h in hosts}
    chosen: list[Host] = []
    for t in targets:
        now = by_id.get(t.id)
        if now is None:
            elsewhere = t.hypervisor is not None and t.hypervisor is not source.hypervisor
            raise ValidationError(
                f"target {t.name!r} is not a host here"
                + (
                    " (it was read through another connection: join the connections in a "
                    "vmctl.Site([...]) and plan over the site's hosts)"
                    if elsewhere
                    else ""
                ),
                field="targets",
            )
        if now.id == source.id:
            raise ValidationError(f"target {t.name!r} is {role}", field="targets")
        if not now.takes_vms:
            raise ValidationError(
                f"target {t.name!r} is {now.state.value}"
                + (" (vmctl's flag)" if now.vmctl_maintenance else "")
                + ": it takes no VMs",
                field="targets",
            )
        if now not in chosen:
            chosen.append(now)
    return chosen


def plan_evacuation(
    host: Host, targets: Sequence[Host] | None = None, *, allow_restart: bool = False
) -> Plan:
    """A dry run of moving every VM off ``host`` (a ``Host`` from ``hv.hosts()``).

    ``targets``: the hosts it may use (default: every other host of the connection that
    takes VMs). A named target in maintenance or unreachable is refused (ValidationError).
    A running VM moves live; a stopped one cold; a running VM that cannot move live (no
    MIGRATE_LIVE, or the backend refuses it now) is restarted elsewhere (shut down, moved
    cold, started) only with ``allow_restart``, else it is blocked. Hosts, VM placements
    and vmctl's maintenance flags are read once, now.
    """
    check_plan_args(host, targets)
    if not isinstance(allow_restart, bool):
        raise ValidationError("must be True or False", field="allow_restart")
    hv, conn = _connection(host.hypervisor)
    deadline = conn.read_deadline()
    hosts = list_hosts(hv, conn, deadline)
    source = find_host(hosts, host.id)
    chosen = choose_targets(hosts, source, targets, "the host evacuated")
    every = read_placements(conn, deadline)
    placements = [p for p in every if p.host_id == source.id]
    live_ok = Capability.MIGRATE_LIVE in conn.capabilities
    cold_ok = Capability.MIGRATE_COLD in conn.capabilities
    movable = isinstance(conn.driver, HostMigration) and isinstance(conn.driver, HostInventory)
    restart_ok = cold_ok and (not composes_restart(conn.driver) or can_compose(conn))
    placer = _Placer(source, chosen, every)
    block = placer.block
    for p in sorted(placements, key=lambda p: (-p.memory_mib, p.vm.name)):
        vm = p.vm
        if source.state is HostState.UNREACHABLE:
            block(
                p,
                BlockKind.HOST_DOWN,
                f"host {source.name} is unreachable: its VMs cannot be migrated; restarting "
                "them elsewhere is recovery (vmctl.plan_recovery)",
            )
            continue
        if p.pinned:
            block(p, BlockKind.PINNED, p.pinned)
            continue
        if not movable:
            block(
                p,
                BlockKind.NO_TARGET if len(hosts) < 2 else BlockKind.CAPABILITY,
                f"the {conn.driver_name} connection manages one host: vmctl has no other "
                "host to move it to"
                if len(hosts) < 2
                else f"the {conn.driver_name} driver cannot move VMs between its hosts",
            )
            continue
        if p.local_disks:
            block(
                p,
                BlockKind.LOCAL_STORAGE,
                f"disk(s) {', '.join(p.local_disks)} on storage local to {source.name} "
                "(no shared storage: no other host reaches them)",
            )
            continue
        if vm.state is PowerState.RUNNING:
            why_not_live = None
            if not live_ok:
                why_not_live = f"the {conn.driver_name} connection has no live migration"
            elif p.live_blocker:
                why_not_live = p.live_blocker
            if why_not_live is None:
                mode = MoveMode.LIVE
            elif allow_restart and restart_ok:
                mode = MoveMode.RESTART
            else:
                block(
                    p,
                    BlockKind.CAPABILITY,
                    f"cannot move live: {why_not_live}"
                    + (
                        "; allow_restart=True would restart it elsewhere"
                        if restart_ok
                        else f"; the {conn.driver_name} connection cannot restart it elsewhere "
                        "either (it needs cold migration and guest shutdown)"
                        if allow_restart
                        else ""
                    ),
                )
                continue
        elif vm.state is PowerState.STOPPED:
            if not cold_ok:
                block(
                    p,
                    BlockKind.CAPABILITY,
                    f"the {conn.driver_name} connection has no cold migration",
                )
                continue
            mode = MoveMode.COLD
        else:
            block(
                p,
                BlockKind.STATE,
                f"a {vm.state.value} VM is not moved: resume or stop it first",
            )
            continue
        placer.place(p, mode, "moves")
    return Plan(
        source=source,
        targets=tuple(chosen),
        moves=tuple(placer.moves),
        blockers=tuple(placer.blockers),
        created=dt.datetime.now(dt.UTC),
        allow_restart=allow_restart,
        hypervisor=hv,
    )


# -- executing ----------------------------------------------------------------------------


class MoveOutcome(enum.StrEnum):
    MOVED = "moved"  # this run moved it
    ALREADY = "already-there"  # it was on the target already (an earlier, interrupted run)
    FAILED = "failed"
    SKIPPED = "skipped"  # not attempted: stopped after a failure, target now in maintenance,
    #                      or it is no longer on the source


@frozen
class MoveResult:
    move: Move
    outcome: MoveOutcome
    mode: MoveMode | None = None  # the mode that moved it (RESTART after on_fail="cold")
    attempts: int = 0
    seconds: float = 0.0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.move.to_json(),
            "outcome": self.outcome.value,
            "moved_mode": self.mode.value if self.mode else None,
            "attempts": self.attempts,
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }


@frozen
class EvacuationProgress:
    """Handed to ``execute``'s ``progress`` callback as each move starts and ends."""

    done: int
    total: int
    move: Move
    status: str  # "started", "retrying", or an MoveOutcome's value
    message: str = ""


@frozen(repr=False)
class EvacuationReport:
    plan: Plan | RebalancePlan
    results: tuple[MoveResult, ...]
    stopped: bool
    seconds: float

    @property
    def ok(self) -> bool:
        """Every planned move ended with the VM on its target."""
        return not self.stopped and all(
            r.outcome in (MoveOutcome.MOVED, MoveOutcome.ALREADY) for r in self.results
        )

    def __repr__(self) -> str:
        counts = ", ".join(f"{self.count(o)} {o.value}" for o in MoveOutcome if self.count(o))
        return f"<EvacuationReport {self.plan.title}: {counts or 'nothing to do'}>"

    def count(self, outcome: MoveOutcome) -> int:
        return sum(1 for r in self.results if r.outcome is outcome)

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.plan.title,
            "ok": self.ok,
            "stopped": self.stopped,
            "seconds": round(self.seconds, 3),
            "results": [r.to_json() for r in self.results],
            "blockers": [b.to_json() for b in self.plan.blockers],
        }

    def __str__(self) -> str:
        head = (
            f"{self.plan.title}: "
            + ", ".join(f"{self.count(o)} {o.value}" for o in MoveOutcome if self.count(o))
            + (f", {len(self.plan.blockers)} blocked" if self.plan.blockers else "")
            + (" (stopped after a failure)" if self.stopped else "")
            + f" in {self.seconds:.1f} s"
        )
        if not self.results:
            return head
        rows = [
            [
                r.move.vm_name,
                (r.mode or r.move.mode).value,
                r.move.target_name,
                r.outcome.value,
                str(r.attempts),
                r.error or "",
            ]
            for r in self.results
        ]
        return head + "\n" + _table(["VM", "MODE", "TARGET", "OUTCOME", "TRIES", "ERROR"], rows)


#: Failures a retry may cure. Anything else (no room, refused state, bad target, a guest
#: that did not shut down in time for a restart move) is final.
_FINAL = (
    InsufficientResources,
    InvalidState,
    NotFound,
    NotSupported,
    ValidationError,
    ShutdownTimedOut,
)


class _Executor:
    def __init__(
        self,
        plan: Plan | RebalancePlan,
        conn: Connection,
        *,
        retries: int,
        on_fail: str,
        progress: Callable[[EvacuationProgress], None] | None,
        timeout: float | None,
    ) -> None:
        self.plan = plan
        self.conn = conn
        self.retries = retries
        self.on_fail = on_fail
        self.progress = progress
        self.timeout = timeout
        self.done = 0
        self._lock = threading.Lock()
        driver = conn.driver
        assert isinstance(driver, HostMigration) and isinstance(driver, HostInventory)
        self.mover: HostMigration = driver
        self.inventory: HostInventory = driver
        #: The restart moves the core composes, by VM (each kept across its attempts).
        self._restarts: dict[str, ComposedRestart] = {}

    def _composed(self, move: Move, mode: MoveMode) -> ComposedRestart | None:
        """The core's restart move for ``move`` when it is one the driver does not do."""
        if mode is not MoveMode.RESTART or not composes_restart(self.mover):
            return None
        restart = self._restarts.get(move.vm_uuid)
        if restart is None:
            if not can_compose(self.conn):
                raise NotSupported(
                    f"restart VM {move.vm_name!r} on host {move.target_name!r}: the "
                    f"{self.conn.driver_name} connection cannot shut a guest down and move "
                    "it cold"
                )
            hv = self.plan.hypervisor
            assert hv is not None
            evacuated = self.plan.source if isinstance(self.plan, Plan) else None
            restart = ComposedRestart(
                hv,
                self.conn,
                move,
                source_id=move.source_id or (evacuated.id if evacuated else ""),
                source_name=move.source_name or (evacuated.name if evacuated else "its host"),
                timeout=self.timeout,
            )
            with self._lock:
                self._restarts[move.vm_uuid] = restart
        return restart

    def _tell(self, move: Move, status: str, message: str = "") -> None:
        if self.progress is None:
            return
        try:
            self.progress(
                EvacuationProgress(self.done, len(self.plan.moves), move, status, message)
            )
        except Exception:  # a caller's callback must not break the evacuation
            log.warning("evacuation progress callback failed", exc_info=True)

    def _where(self, move: Move) -> tuple[str | None, PowerState]:
        deadline = self.conn.read_deadline()
        host_id, info = self.conn.dispatcher.call(
            f"locate VM {move.vm_name!r}", self.inventory.locate_vm, move.vm_uuid, deadline=deadline
        )
        return host_id, info.state

    def _attempt(self, move: Move, mode: MoveMode) -> None:
        composed = self._composed(move, mode)
        if composed is not None:
            composed.run()
            return
        what = f"move VM {move.vm_name!r} to host {move.target_name!r} ({mode.value})"
        run_move(self.conn, self.mover, move, mode, self.timeout, what)
        host_id, state = self._where(move)
        want = PowerState.STOPPED if mode is MoveMode.COLD else PowerState.RUNNING
        if host_id != move.target_id or state is not want:
            raise VmctlError(
                f"{what}: the host reported it done, but the VM is on "
                f"{host_id or 'no host'} and {state.value}"
            )

    def run_one(self, move: Move) -> MoveResult:
        """Locate, move, check; again while a retry may help (bounded)."""
        started = time.monotonic()
        self._tell(move, "started")
        mode = move.mode
        evacuated = self.plan.source if isinstance(self.plan, Plan) else None
        source_id = move.source_id or (evacuated.id if evacuated else "")
        source_name = move.source_name or (evacuated.name if evacuated else "its host")
        attempts = 0
        base = 0  # attempts made before falling back to a restart
        fell_back = False
        while True:
            final = False
            try:
                host_id, state = self._where(move)
            except NotFound as exc:
                return self._end(move, MoveOutcome.SKIPPED, None, attempts, started, str(exc))
            except VmctlError as exc:  # cannot tell where it is: counts as a try
                attempts += 1
                error = str(exc)
            else:
                restart = self._restarts.get(move.vm_uuid)
                # A restart this run composes may have moved the VM without starting it yet.
                unstarted = restart is not None and restart.waits_on_target(host_id, state)
                if host_id == move.target_id and not unstarted:
                    outcome = MoveOutcome.MOVED if attempts else MoveOutcome.ALREADY
                    return self._end(move, outcome, mode, attempts, started, None)
                if host_id != source_id and not unstarted:
                    why = f"no longer on {source_name} (moved elsewhere meanwhile)"
                    why += restart.give_up() if restart is not None else ""
                    return self._end(move, MoveOutcome.SKIPPED, None, attempts, started, why)
                if _maintenance.is_flagged(move.target_id) and not unstarted:
                    why = f"target {move.target_name} entered maintenance (vmctl's flag); re-plan"
                    why += restart.give_up() if restart is not None else ""
                    return self._end(move, MoveOutcome.SKIPPED, None, attempts, started, why)
                attempts += 1
                try:
                    self._attempt(move, mode)
                except _FINAL as exc:
                    error, final = str(exc), True
                    no_room = isinstance(exc, InsufficientResources)
                except VmctlError as exc:
                    error, no_room = str(exc), False
                else:
                    return self._end(move, MoveOutcome.MOVED, mode, attempts, started, None)
            if final or attempts - base > self.retries:
                if (
                    self.on_fail == "cold"
                    and mode is MoveMode.LIVE
                    and not fell_back
                    and not (final and no_room)
                ):
                    mode, fell_back, base = MoveMode.RESTART, True, attempts
                    self._tell(move, "retrying", f"{error}; restarting it there instead")
                    continue
                restart = self._restarts.get(move.vm_uuid)
                if restart is not None:
                    error += restart.give_up()
                return self._end(move, MoveOutcome.FAILED, None, attempts, started, error)
            self._tell(move, "retrying", error)

    def _end(
        self,
        move: Move,
        outcome: MoveOutcome,
        mode: MoveMode | None,
        attempts: int,
        started: float,
        error: str | None,
    ) -> MoveResult:
        with self._lock:
            self.done += 1
        self._tell(move, outcome.value, error or "")
        return MoveResult(move, outcome, mode, attempts, time.monotonic() - started, error)


def execute(
    plan: Plan | RebalancePlan,
    *,
    max_parallel: int = 4,
    on_fail: str = "stop",
    retries: int = DEFAULT_RETRIES,
    progress: Callable[[EvacuationProgress], None] | None = None,
    timeout: float | None = None,
    confirm_fenced: bool = False,
) -> EvacuationReport:
    """Carry out ``plan``'s moves, at most ``max_parallel`` at once.

    Before each move the VM is located: one already on its target counts as done (a plan
    made before an interruption), one gone elsewhere is skipped, and a target that got
    vmctl's maintenance flag since the plan is skipped. Hosts are read again first: a
    move to a host now in maintenance or down is skipped (re-plan). A move that fails in a
    way that may pass (timeout, lost connection, backend error) is tried again up to
    ``retries`` times, after checking where the VM is. ``on_fail``: "stop" starts no new
    move after a failure (running ones finish), "skip" goes on with the others, "cold"
    restarts a VM whose live move failed (clean shutdown, cold move, start there) and goes
    on. ``timeout`` bounds each move (default: the connection's operation timeout).
    A restart move the driver does not do in one call is composed here
    (``vmctl._restartmove``): ``vm.shutdown()`` waiting up to the connection's shutdown
    timeout (a guest that cannot be asked, or does not stop in time, fails the move with
    nothing moved), a cold move, ``vm.start()`` on the target (the move and the start
    each bounded by ``timeout``); when it fails after the shutdown, a VM still on its
    source is started there again, and one stopped on the target is named in the error.
    ``progress`` is called as each move starts, retries and ends, from the worker running
    the move (several at once: keep it quick and thread-safe); an exception it raises is
    logged and ignored. ``confirm_fenced`` is for a ``RecoveryPlan`` only
    (``vmctl.plan_recovery``): the caller confirms that the failed host is fenced.
    """
    from ._recover import RecoveryPlan, execute_recovery

    if not isinstance(confirm_fenced, bool):
        raise ValidationError("must be True or False", field="confirm_fenced")
    if isinstance(plan, RecoveryPlan):
        return execute_recovery(
            plan,
            max_parallel=max_parallel,
            on_fail=on_fail,
            retries=retries,
            progress=progress,
            timeout=timeout,
            confirm_fenced=confirm_fenced,
        )
    if confirm_fenced:
        raise ValidationError("only a recovery plan is fenced", field="confirm_fenced")
    hv, conn = check_execute_args(plan, max_parallel, on_fail, retries, progress, timeout)
    started = time.monotonic()
    if not plan.moves:
        return EvacuationReport(plan, (), False, 0.0)
    if not isinstance(conn.driver, HostMigration) or not isinstance(conn.driver, HostInventory):
        raise NotSupported(f"the {conn.driver_name} driver cannot move VMs between its hosts")
    modes = {m.mode for m in plan.moves}
    if MoveMode.LIVE in modes:
        conn.require(Capability.MIGRATE_LIVE, "a live move")
    if modes - {MoveMode.LIVE} or on_fail == "cold":
        conn.require(Capability.MIGRATE_COLD, "a cold move")
    if MoveMode.RESTART in modes and composes_restart(conn.driver):
        conn.require(Capability.SHUTDOWN, "a restart move (the guest is shut down first)")
    runner = _Executor(
        plan, conn, retries=retries, on_fail=on_fail, progress=progress, timeout=timeout
    )
    return drive(
        plan, hv, conn, runner, max_parallel=max_parallel, on_fail=on_fail, started=started
    )


def check_execute_args(
    plan: object,
    max_parallel: object,
    on_fail: object,
    retries: object,
    progress: object,
    timeout: float | None,
) -> tuple[Hypervisor, Connection]:
    """``execute``'s checks, before any call to the host."""
    from ._rebalance import RebalancePlan

    if not isinstance(plan, (Plan, RebalancePlan)):
        raise ValidationError(
            "expected a Plan from plan_evacuation() or plan_rebalance()", field="plan"
        )
    if isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1:
        raise ValidationError("must be an integer >= 1", field="max_parallel")
    if on_fail not in ON_FAIL:
        raise ValidationError(f"must be one of {', '.join(ON_FAIL)}", field="on_fail")
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
        raise ValidationError("must be an integer from 0 to 10", field="retries")
    if progress is not None and not callable(progress):
        raise ValidationError("must be callable", field="progress")
    hv, conn = _connection(plan.hypervisor)
    conn.deadline(timeout, None)  # checks it
    return hv, conn


def drive(
    plan: Plan | RebalancePlan,
    hv: Hypervisor,
    conn: Connection,
    runner: _Executor,
    *,
    max_parallel: int,
    on_fail: str,
    started: float,
) -> EvacuationReport:
    """Run ``plan``'s moves with ``runner``, at most ``max_parallel`` at once."""
    # Targets as they are now: none that entered maintenance or went down since the plan.
    now = {h.id: h for h in list_hosts(hv, conn, conn.read_deadline())}
    results: dict[int, MoveResult] = {}
    queue = list(enumerate(plan.moves))
    running: dict[Future[MoveResult], int] = {}
    stopped = False
    while queue or running:
        while queue and not stopped and len(running) < max_parallel:
            index, move = queue.pop(0)
            target = now.get(move.target_id)
            if target is None or not target.takes_vms:
                state = "gone" if target is None else target.state.value
                results[index] = runner._end(
                    move,
                    MoveOutcome.SKIPPED,
                    None,
                    0,
                    time.monotonic(),
                    f"target {move.target_name} is {state} now; re-plan",
                )
                continue
            future = conn.dispatcher.run_in_background(functools.partial(runner.run_one, move))
            running[future] = index
        if not running:
            break
        finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
        for future in finished:
            index = running.pop(future)
            result = future.result()
            results[index] = result
            if result.outcome is MoveOutcome.FAILED and on_fail == "stop":
                stopped = True
    for index, move in queue:
        results[index] = MoveResult(
            move, MoveOutcome.SKIPPED, error="not started: stopped after a failure"
        )
    ordered = tuple(results[i] for i in sorted(results))
    return EvacuationReport(plan, ordered, stopped, time.monotonic() - started)


def dumps(obj: Plan | EvacuationReport) -> str:
    """The ``--json`` form."""
    return json.dumps(obj.to_json(), indent=2)
