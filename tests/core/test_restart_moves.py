"""Restart moves the core composes (vmctl._restartmove) for a driver that does not restart in
place: a sim driver told so (``restarts_in_place = False``), whose connection acts on a VM
on any host of its site (as a vCenter's or a KVM site's does). It counts the shutdowns,
cold moves and starts it is asked for, and fails the ones a test tells it to."""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import pytest

import vmctl
from vmctl import (
    BlockKind,
    InsufficientResources,
    MoveMode,
    MoveOutcome,
    PowerState,
    VMInfo,
)
from vmctl.spi import Deadline, Placement
from vmctl_sim import SimDriver

S = PowerState
GUEST = vmctl.BootSource(kernel="/boot/vmlinuz")
_sites = itertools.count()
Fault = BaseException | Callable[[], None] | None


class Composing(SimDriver):
    """The sim without its one-call restart move; ``faults[op]`` is a list of exceptions to
    raise (or None: go on, or a function to call) on the next calls of ``op`` ("shutdown",
    "cold", "live", "start"), ``after[op]`` the same, after the call did its work (a lost
    reply)."""

    restarts_in_place = False
    calls: ClassVar[collections.Counter[str]] = collections.Counter()
    faults: ClassVar[dict[str, list[Fault]]] = {}
    after: ClassVar[dict[str, list[Fault]]] = {}
    #: VMs whose names start with this cannot move live (the planner's live_blocker).
    no_live_prefix: ClassVar[str] = "nolive-"
    #: Guests that ignore the shutdown request (named so).
    deaf_prefix: ClassVar[str] = "deaf-"

    def _vm(self, uuid: str) -> Any:
        return self._find(uuid)[1]  # any host of the site

    def _changed(self, known: Mapping[str, VMInfo]) -> dict[str, VMInfo | None]:
        with self.site.transaction():
            out: dict[str, VMInfo | None] = {}
            for uuid, info in known.items():
                try:
                    vm = self._vm(uuid)
                except vmctl.NotFound:
                    out[uuid] = None
                    continue
                if (vm.state, vm.reason) != (info.state, info.reason):
                    out[uuid] = self._info(vm)
            return out

    def _step(self, op: str, table: dict[str, list[Fault]]) -> None:
        pending = table.get(op)
        if pending:
            fault = pending.pop(0)
            if isinstance(fault, BaseException):
                raise fault
            if fault is not None:
                fault()

    def list_placements(self, *, deadline: Deadline) -> list[Placement]:
        import attrs

        return [
            attrs.evolve(p, live_blocker="the test says no")
            if p.vm.name.startswith(self.no_live_prefix)
            else p
            for p in super().list_placements(deadline=deadline)
        ]

    def shutdown(self, uuid: str, *, deadline: Deadline) -> None:
        self.calls["shutdown"] += 1
        self._step("shutdown", self.faults)
        with self.site.transaction():
            deaf = self._vm(uuid).name.startswith(self.deaf_prefix)
        if deaf:
            return  # asked, and the guest never reacts
        super().shutdown(uuid, deadline=deadline)
        self._step("shutdown", self.after)

    def start(self, uuid: str, *, deadline: Deadline) -> None:
        self.calls["start"] += 1
        self._step("start", self.faults)
        super().start(uuid, deadline=deadline)

    def move_to_host(self, uuid: str, host_id: str, *, mode: MoveMode, deadline: Deadline) -> None:
        assert mode is not MoveMode.RESTART, "the core handed a restart move to the driver"
        op = mode.value
        self.calls[op] += 1
        self._step(op, self.faults)
        super().move_to_host(uuid, host_id, mode=mode, deadline=deadline)
        self._step(op, self.after)


@pytest.fixture
def site(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, vmctl.Hypervisor]]:
    """h1 and h2 of a new sim site, through the composing driver (h1 with a 2 s shutdown
    timeout: the deaf guest's test waits that long)."""
    monkeypatch.setenv("VMCTL_STATE_DIR", str(tmp_path / "state"))
    vmctl.register("simc", Composing, clobber=True)
    Composing.calls.clear()
    Composing.faults.clear()
    Composing.after.clear()
    name = f"restart{next(_sites)}"
    conns = {
        "h1": vmctl.connect(f"simc://h1?site={name}", timeouts=vmctl.Timeouts(shutdown=2)),
        "h2": vmctl.connect(f"simc://h2?site={name}"),
    }
    try:
        yield conns
    finally:
        for c in conns.values():
            c.close()
        vmctl.unregister("simc")


def _make(hv: vmctl.Hypervisor, name: str, *, os: bool = True) -> vmctl.VM:
    spec = vmctl.VMSpec(name=name, vcpus=1, memory_mib=512, boot=GUEST if os else None)
    vm = hv.create_vm(spec, start=True)
    Composing.calls.clear()  # the tests count what the move asks for
    return vm


def _where(hv: vmctl.Hypervisor, vm: vmctl.VM) -> tuple[str, PowerState]:
    host_id, info = hv._driver.locate_vm(vm.uuid, deadline=Deadline.after(10))  # type: ignore[attr-defined]
    return hv.host(host_id).name, info.state


def _plan(hv: vmctl.Hypervisor, **kw: Any) -> vmctl.Plan:
    return vmctl.plan_evacuation(hv.host("h1"), **kw)


def test_a_vm_that_cannot_move_live_is_restarted_on_the_target(
    site: dict[str, vmctl.Hypervisor],
) -> None:
    hv = site["h1"]
    vm = _make(hv, "nolive-web")
    blocked = _plan(hv)
    [b] = blocked.blockers
    assert b.kind is BlockKind.CAPABILITY and "allow_restart=True" in b.reason
    plan = _plan(hv, allow_restart=True)
    [move] = plan.moves
    assert (move.mode, move.target_name) == (MoveMode.RESTART, "h2")
    report = vmctl.execute(plan)
    assert report.ok, str(report)
    [r] = report.results
    assert (r.outcome, r.mode, r.attempts) == (MoveOutcome.MOVED, MoveMode.RESTART, 1)
    assert _where(hv, vm) == ("h2", S.RUNNING)
    assert Composing.calls == {"shutdown": 1, "cold": 1, "start": 1}
    # the same plan again: it is there, running; nothing is asked of the host
    again = vmctl.execute(plan)
    assert [r.outcome for r in again.results] == [MoveOutcome.ALREADY]
    assert Composing.calls == {"shutdown": 1, "cold": 1, "start": 1}


def test_a_guest_that_cannot_be_asked_stays_running_where_it_was(
    site: dict[str, vmctl.Hypervisor],
) -> None:
    hv = site["h1"]
    vm = _make(hv, "nolive-noos", os=False)
    report = vmctl.execute(_plan(hv, allow_restart=True))
    [r] = report.results
    assert r.outcome is MoveOutcome.FAILED and r.attempts == 1  # final: no retry
    assert "cannot be asked to shut down" in (r.error or "")
    assert "nothing was moved: it still runs on h1" in (r.error or "")
    assert _where(hv, vm) == ("h1", S.RUNNING)
    assert Composing.calls == {"shutdown": 1}


def test_a_guest_that_does_not_stop_in_time_keeps_running(
    site: dict[str, vmctl.Hypervisor],
) -> None:
    hv = site["h1"]
    vm = _make(hv, "nolive-deaf-x")
    Composing.deaf_prefix = "nolive-deaf"
    try:
        report = vmctl.execute(_plan(hv, allow_restart=True))
    finally:
        Composing.deaf_prefix = "deaf-"
    [r] = report.results
    assert r.outcome is MoveOutcome.FAILED and r.attempts == 1  # final: not waited for twice
    assert "did not shut down within 2 s" in (r.error or "")
    assert "nothing was moved: it keeps running on h1" in (r.error or "")
    assert _where(hv, vm) == ("h1", S.RUNNING)
    assert Composing.calls == {"shutdown": 1}


def test_a_lost_reply_to_the_cold_move_neither_shuts_down_nor_starts_twice(
    site: dict[str, vmctl.Hypervisor],
) -> None:
    hv = site["h1"]
    vm = _make(hv, "nolive-lost")
    Composing.after["cold"] = [vmctl.BackendError("the reply was lost")]
    report = vmctl.execute(_plan(hv, allow_restart=True), retries=1)
    [r] = report.results
    assert (r.outcome, r.attempts) == (MoveOutcome.MOVED, 2), str(report)
    assert _where(hv, vm) == ("h2", S.RUNNING)
    # the retry located it on h2, stopped by this move: it only started it
    assert Composing.calls == {"shutdown": 1, "cold": 1, "start": 1}


def test_a_passing_cold_move_failure_is_retried_without_a_second_shutdown(
    site: dict[str, vmctl.Hypervisor],
) -> None:
    hv = site["h1"]
    vm = _make(hv, "nolive-again")
    Composing.faults["cold"] = [vmctl.BackendError("the host was busy")]
    report = vmctl.execute(_plan(hv, allow_restart=True), retries=1)
    [r] = report.results
    assert (r.outcome, r.attempts) == (MoveOutcome.MOVED, 2), str(report)
    assert _where(hv, vm) == ("h2", S.RUNNING)
    assert Composing.calls == {"shutdown": 1, "cold": 2, "start": 1}


def test_a_failed_cold_move_starts_the_vm_again_on_its_source(
    site: dict[str, vmctl.Hypervisor],
) -> None:
    hv = site["h1"]
    vm = _make(hv, "nolive-refused")
    Composing.faults["cold"] = [vmctl.ValidationError("host h2 does not reach its disks")]
    report = vmctl.execute(_plan(hv, allow_restart=True), retries=1)
    [r] = report.results
    assert r.outcome is MoveOutcome.FAILED and r.attempts == 1
    assert "does not reach its disks" in (r.error or "")
    assert "nothing was moved: it was started again on h1" in (r.error or "")
    assert _where(hv, vm) == ("h1", S.RUNNING)
    assert Composing.calls == {"shutdown": 1, "cold": 1, "start": 1}


def test_a_failed_start_on_the_target_says_where_the_vm_is(
    site: dict[str, vmctl.Hypervisor],
) -> None:
    hv = site["h1"]
    vm = _make(hv, "nolive-nostart")
    no_room = InsufficientResources("host h2 has no memory left")
    Composing.faults["start"] = [no_room]
    report = vmctl.execute(_plan(hv, allow_restart=True), retries=1)
    [r] = report.results
    assert r.outcome is MoveOutcome.FAILED and r.attempts == 1  # no room: final
    error = r.error or ""
    assert "no memory left" in error
    assert "stopped with its home on h2: start it there" in error
    assert _where(hv, vm) == ("h2", S.STOPPED)
    assert Composing.calls == {"shutdown": 1, "cold": 1, "start": 1}


def test_a_passing_start_failure_is_retried_as_a_start_only(
    site: dict[str, vmctl.Hypervisor],
) -> None:
    hv = site["h1"]
    vm = _make(hv, "nolive-restart")
    Composing.faults["start"] = [vmctl.BackendError("the host hiccuped")]
    report = vmctl.execute(_plan(hv, allow_restart=True), retries=1)
    [r] = report.results
    assert (r.outcome, r.attempts) == (MoveOutcome.MOVED, 2), str(report)
    assert _where(hv, vm) == ("h2", S.RUNNING)
    assert Composing.calls == {"shutdown": 1, "cold": 1, "start": 2}


def test_on_fail_cold_composes_the_restart_after_a_failed_live_move(
    site: dict[str, vmctl.Hypervisor],
) -> None:
    hv = site["h1"]
    vm = _make(hv, "web")
    plan = _plan(hv)
    assert [m.mode for m in plan.moves] == [MoveMode.LIVE]
    Composing.faults["live"] = [vmctl.InvalidState("the CPUs differ: live migration refused")]
    report = vmctl.execute(plan, on_fail="cold")
    [r] = report.results
    assert (r.outcome, r.mode, r.attempts) == (MoveOutcome.MOVED, MoveMode.RESTART, 2)
    assert _where(hv, vm) == ("h2", S.RUNNING)
    assert Composing.calls == {"live": 1, "shutdown": 1, "cold": 1, "start": 1}


def test_without_guest_shutdown_no_restart_is_planned(
    site: dict[str, vmctl.Hypervisor], monkeypatch: pytest.MonkeyPatch
) -> None:
    hv = site["h1"]
    _make(hv, "nolive-x")
    conn = hv._conn  # type: ignore[attr-defined]
    fewer = conn.capabilities - {vmctl.Capability.SHUTDOWN}
    monkeypatch.setattr(conn, "capabilities", fewer)
    [b] = _plan(hv, allow_restart=True).blockers
    assert b.kind is BlockKind.CAPABILITY
    assert "cannot restart it elsewhere either" in b.reason
    assert Composing.calls == {}


def test_a_target_flagged_between_tries_leaves_the_vm_running_on_its_source(
    site: dict[str, vmctl.Hypervisor],
) -> None:
    hv = site["h1"]
    vm = _make(hv, "nolive-flag")
    Composing.faults["cold"] = [vmctl.BackendError("the host was busy")]

    def flag_target(p: vmctl.EvacuationProgress) -> None:
        if p.status == "retrying":  # after the shutdown and the failed cold move
            hv.host("h2").enter_maintenance()

    report = vmctl.execute(_plan(hv, allow_restart=True), retries=1, progress=flag_target)
    [r] = report.results
    assert r.outcome is MoveOutcome.SKIPPED, str(report)
    assert "entered maintenance" in (r.error or "")
    assert "nothing was moved: it was started again on h1" in (r.error or "")
    assert _where(hv, vm) == ("h1", S.RUNNING)
    assert Composing.calls == {"shutdown": 1, "cold": 1, "start": 1}


def test_a_lost_reply_to_the_shutdown_is_not_taken_for_a_stopped_vm_of_someone_else(
    site: dict[str, vmctl.Hypervisor],
) -> None:
    hv = site["h1"]
    vm = _make(hv, "nolive-lostask")
    # VM.shutdown looks and asks once more after a lost reply; lost both times, it raises
    lost = vmctl.OutcomeUnknown("the connection dropped after the request was sent")
    Composing.after["shutdown"] = [lost, lost]

    def guest_stops_meanwhile(p: vmctl.EvacuationProgress) -> None:
        if p.status == "retrying":  # the guest acts on the request a moment later
            deadline = time.monotonic() + 10
            while _where(hv, vm)[1] is not S.STOPPED and time.monotonic() < deadline:
                time.sleep(0.05)

    report = vmctl.execute(_plan(hv, allow_restart=True), retries=1, progress=guest_stops_meanwhile)
    [r] = report.results
    assert (r.outcome, r.attempts) == (MoveOutcome.MOVED, 2), str(report)
    assert _where(hv, vm) == ("h2", S.RUNNING)
    # the retry found it stopped by this move's request: moved and started it, no new ask
    assert Composing.calls == {"shutdown": 2, "cold": 1, "start": 1}
