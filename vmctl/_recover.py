"""Recovery of a failed host: its VMs on shared storage restarted on the other hosts.

``plan_recovery(host)`` is a dry run for a host that is unreachable: for each of its VMs a
target and a mode (``restart`` for a VM recorded running, paused or suspended: it is
started afresh elsewhere; ``cold`` for a stopped one: its home moves), or a blocker (a disk
on storage only the failed host reaches, a pinned VM, no room). ``execute(plan,
confirm_fenced=...)`` carries it out with the evacuation executor, but only once the host
is known to run none of its VMs any more: the caller's ``confirm_fenced=True`` (it was
powered off, its power cut, its storage access revoked), or the backend's own proof
(``HostRecovery.fence_proof``). Without either, nothing is started: a VM of a half-dead
host would run twice, on the same disks.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from attrs import frozen

from ._errors import InvalidState, NotSupported, VmctlError
from ._evacuate import (
    BlockKind,
    EvacuationProgress,
    EvacuationReport,
    Move,
    Plan,
    _connection,
    _Executor,
    _Placer,
    check_execute_args,
    check_plan_args,
    choose_targets,
    drive,
)
from ._hosts import Host, find_host, list_hosts, read_placements
from ._hostspi import HostInventory, HostMigration, HostRecovery, HostState, MoveMode
from ._state import PowerState

if TYPE_CHECKING:
    from ._connection import Connection

log = logging.getLogger("vmctl")


@frozen(repr=False)
class RecoveryPlan(Plan):
    """What recovering the failed host ``source`` would do: ``moves`` (mode ``restart`` or
    ``cold``) and ``blockers``. ``fence_proof`` is the backend's proof, when the plan was
    made, that the host runs none of its VMs (None: ``execute`` needs
    ``confirm_fenced=True``)."""

    fence_proof: str | None = None

    @property
    def title(self) -> str:
        return f"Recovery of host {self.source.name}"

    def __repr__(self) -> str:
        return (
            f"<RecoveryPlan {self.source.name}: {len(self.moves)} moves, "
            f"{len(self.blockers)} blocked, fenced: {'proven' if self.fence_proof else 'ask'}>"
        )

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "kind": "recovery", "fence_proof": self.fence_proof}

    def __str__(self) -> str:
        text = super().__str__().replace("Evacuation plan", "Recovery plan", 1)
        fenced = (
            f"Fencing: proven by the backend: {self.fence_proof}"
            if self.fence_proof
            else "Fencing: not proven by the backend: execute only after making sure the "
            "host is down (confirm_fenced=True / --confirm-fenced)"
        )
        return f"{text}\n{fenced}"


def plan_recovery(host: Host, targets: Sequence[Host] | None = None) -> RecoveryPlan:
    """A dry run of restarting the VMs of the unreachable ``host`` (from ``hv.hosts()``) on
    other hosts. InvalidState when the host is not unreachable (evacuate a live host).
    ``targets`` as ``plan_evacuation``'s. Hosts, placements and the backend's fencing proof
    are read once, now."""
    check_plan_args(host, targets)
    hv, conn = _connection(host.hypervisor)
    deadline = conn.read_deadline()
    hosts = list_hosts(hv, conn, deadline)
    source = find_host(hosts, host.id)
    if source.state is not HostState.UNREACHABLE:
        raise InvalidState(
            f"host {source.name!r} is {source.state.value}: only an unreachable host is "
            "recovered (move the VMs of a live host with plan_evacuation)"
        )
    chosen = choose_targets(hosts, source, targets, "the failed host")
    driver = conn.driver
    able = isinstance(driver, (HostRecovery)) and isinstance(driver, HostMigration)
    proof = None
    if isinstance(driver, HostRecovery):
        proof = conn.dispatcher.call(
            f"fencing proof of host {source.name!r}",
            driver.fence_proof,
            source.id,
            deadline=deadline,
        )
    every = read_placements(conn, deadline)
    placer = _Placer(source, chosen, every)
    block = placer.block

    mine = [p for p in every if p.host_id == source.id]
    for p in sorted(mine, key=lambda p: (-p.memory_mib, p.vm.name)):
        vm = p.vm
        if not able:
            block(p, BlockKind.CAPABILITY, f"the {conn.driver_name} driver has no host recovery")
            continue
        if p.pinned:
            block(p, BlockKind.PINNED, p.pinned)
            continue
        if p.local_disks:
            block(
                p,
                BlockKind.LOCAL_STORAGE,
                f"disk(s) {', '.join(p.local_disks)} on storage local to {source.name}: no "
                "other host reaches them (the VM comes back with its host)",
            )
            continue
        mode = MoveMode.COLD if vm.state is PowerState.STOPPED else MoveMode.RESTART
        placer.place(p, mode, "restarts")
    return RecoveryPlan(
        source=source,
        targets=tuple(chosen),
        moves=tuple(placer.moves),
        blockers=tuple(placer.blockers),
        created=dt.datetime.now(dt.UTC),
        allow_restart=True,
        hypervisor=hv,
        fence_proof=proof,
    )


class _RecoveryExecutor(_Executor):
    """The evacuation executor; a ``restart`` move is ``HostRecovery.restart_on_host``."""

    def __init__(self, plan: RecoveryPlan, conn: Connection, **kw: Any) -> None:
        super().__init__(plan, conn, **kw)
        assert isinstance(conn.driver, HostRecovery)
        self.recovery: HostRecovery = conn.driver

    def _where(self, move: Move) -> tuple[str | None, PowerState]:
        host_id, state = super()._where(move)
        restart = move.mode is MoveMode.RESTART
        if restart and host_id == move.target_id and state is not PowerState.RUNNING:
            return move.source_id, state  # its home moved, the start did not happen
        return host_id, state

    def _attempt(self, move: Move, mode: MoveMode) -> None:
        if mode is not MoveMode.RESTART:
            super()._attempt(move, mode)
            return
        conn = self.conn
        deadline = conn.deadline(self.timeout, conn.timeouts.operation_s)
        what = (
            f"restart VM {move.vm_name!r} of failed host {move.source_name!r} on "
            f"{move.target_name!r}"
        )
        log.info("%s", what)
        task = conn.dispatcher.call(
            what,
            self.recovery.restart_on_host,
            move.vm_uuid,
            move.target_id,
            deadline=deadline,
            idempotent=False,
        )
        if task is not None:
            conn.dispatcher.await_task(task, deadline, what)
        host_id, state = _Executor._where(self, move)
        if host_id != move.target_id or state is not PowerState.RUNNING:
            raise VmctlError(
                f"{what}: the host reported it done, but the VM is on "
                f"{host_id or 'no host'} and {state.value}"
            )


def execute_recovery(
    plan: RecoveryPlan,
    *,
    max_parallel: int,
    on_fail: str,
    retries: int,
    progress: Callable[[EvacuationProgress], None] | None,
    timeout: float | None,
    confirm_fenced: bool,
) -> EvacuationReport:
    """``vmctl.execute`` of a ``RecoveryPlan``: the fencing check, the backend told the host
    failed (``declare_failed``), then the moves (see the module)."""
    hv, conn = check_execute_args(plan, max_parallel, on_fail, retries, progress, timeout)
    started = time.monotonic()
    if not plan.moves:
        return EvacuationReport(plan, (), False, 0.0)
    driver = conn.driver
    if not (
        isinstance(driver, HostRecovery)
        and isinstance(driver, HostMigration)
        and isinstance(driver, HostInventory)
    ):
        raise NotSupported(f"the {conn.driver_name} driver cannot recover a failed host")
    read = conn.read_deadline()
    source = find_host(list_hosts(hv, conn, read), plan.source.id)
    if source.state is not HostState.UNREACHABLE:
        raise InvalidState(
            f"host {source.name!r} is {source.state.value} again: its VMs may be running "
            "there; nothing was restarted"
        )
    name = source.name
    proof = conn.dispatcher.call(
        f"fencing proof of host {name!r}", driver.fence_proof, source.id, deadline=read
    )
    if proof is None and not confirm_fenced:
        raise InvalidState(
            f"host {name!r} is unreachable, but nothing proves it is down: its VMs could run "
            "twice. Make sure it is fenced (powered off, cut from its storage), then pass "
            "confirm_fenced=True (vmctl recover HOST --confirm-fenced); nothing was restarted"
        )
    log.warning("declaring host %s failed (%s)", name, proof or "the caller confirmed it is fenced")
    deadline = conn.deadline(timeout, conn.timeouts.operation_s)
    what = f"declare host {name!r} failed"
    task = conn.dispatcher.call(what, driver.declare_failed, source.id, deadline=deadline)
    if task is not None:
        conn.dispatcher.await_task(task, deadline, what)
    runner = _RecoveryExecutor(
        plan, conn, retries=retries, on_fail=on_fail, progress=progress, timeout=timeout
    )
    return drive(
        plan, hv, conn, runner, max_parallel=max_parallel, on_fail=on_fail, started=started
    )
