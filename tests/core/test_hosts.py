"""Hosts, maintenance and evacuation on sim:// (a site of three hosts): hv.hosts(), the
vmctl maintenance flag and the sim's own mode, plan_evacuation's moves and blockers, and
execute's parallelism, retries, on_fail and resuming."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import vmctl
from vmctl import BlockKind, HostState, MoveMode, MoveOutcome
from vmctl._evacuate import dumps

GUEST = vmctl.BootSource(kernel="/boot/vmlinuz")


def make(hv: vmctl.Hypervisor, name: str, mib: int, *, start: bool = True) -> vmctl.VM:
    spec = vmctl.VMSpec(name=name, vcpus=2, memory_mib=mib, boot=GUEST)
    return hv.create_vm(spec, start=start)


def host_of(hv: vmctl.Hypervisor, vm_name: str) -> str:
    placed = {p.vm.name: p.vm.host for p in hv._driver.list_placements(deadline=_dl())}  # type: ignore[attr-defined]
    return str(placed[vm_name])


def _dl() -> vmctl.spi.Deadline:
    return vmctl.spi.Deadline.after(10)


# -- hosts ------------------------------------------------------------------------------


def test_hosts_lists_the_site_with_capacity_load_and_state(site: dict[str, Any]) -> None:
    hv = site["h1"]
    before = {h.name: h for h in hv.hosts()}
    assert sorted(before) == ["h1", "h2", "h3"]
    h2 = before["h2"]
    assert (h2.cpus, h2.memory_mib, h2.state) == (16, 64 * 1024, HostState.CONNECTED)
    assert (h2.memory_used_mib, h2.cpu_percent, h2.vm_count) == (0, 0.0, 0)
    make(site["h2"], "a", 4096)
    make(site["h2"], "b", 2048, start=False)
    h2 = hv.host("h2")
    assert (h2.memory_used_mib, h2.vm_count, h2.memory_free_mib) == (4096, 2, 60 * 1024)
    assert h2.cpu_percent == pytest.approx(100 * 2 * 0.05 / 16, abs=0.01)
    assert hv.host(h2.id) == h2
    assert h2.to_json()["memory_free_mib"] == 60 * 1024
    with pytest.raises(vmctl.NotFound, match="h9"):
        hv.host("h9")
    with pytest.raises(vmctl.ValidationError):
        hv.host("")


def test_maintenance_flag_and_backend_mode(site: dict[str, Any], tmp_path: Path) -> None:
    hv = site["h1"]
    h3 = hv.host("h3")
    entered = h3.enter_maintenance()
    assert entered.state is HostState.MAINTENANCE
    assert entered.backend_maintenance and entered.vmctl_maintenance
    flags = json.loads((tmp_path / "state" / "maintenance.json").read_text())["hosts"]
    assert flags[h3.id]["name"] == "h3"
    # The sim itself refuses a VM sent there by an ordinary migration.
    vm = make(site["h2"], "m", 1024)
    with pytest.raises(vmctl.InvalidState, match="maintenance"):
        vm.migrate(site["h3"])
    left = entered.exit_maintenance()
    assert left.state is HostState.CONNECTED
    assert not (left.backend_maintenance or left.vmctl_maintenance)
    assert vm.migrate(site["h3"]).name == "m"


def test_vmctl_flag_alone_is_honoured_by_another_connection(site: dict[str, Any]) -> None:
    """The flag lives in a file: a fresh connection (another process alike) sees it."""
    from vmctl._hosts import set_maintenance

    hv = site["h1"]
    set_maintenance(hv, hv.host("h3"), True, timeout=None)
    with vmctl.connect("sim://h2?site=hosts") as again:
        h3 = again.host("h3")
        assert h3.state is HostState.MAINTENANCE
        assert h3.vmctl_maintenance and not h3.backend_maintenance
        make(again, "x", 1024)
        plan = vmctl.plan_evacuation(again.host("h2"))
        assert [t.name for t in plan.targets] == ["h1"]
        assert [m.target_name for m in plan.moves] == ["h1"]


# -- planning ---------------------------------------------------------------------------


def test_plan_moves_running_live_and_stopped_cold_within_memory(site: dict[str, Any]) -> None:
    hv = site["h1"]
    h2 = site["h2"]
    make(site["h1"], "h1-load", 40 * 1024)
    make(site["h3"], "h3-load", 40 * 1024)
    for i in range(3):
        make(h2, f"big{i}", 20 * 1024)  # one fits on h1 and one on h3 (24 GiB free each)
    make(h2, "off", 48 * 1024, start=False)
    make(h2, "small", 1024)
    plan = vmctl.plan_evacuation(hv.host("h2"))
    moves = {m.vm_name: m for m in plan.moves}
    assert moves["off"].mode is MoveMode.COLD
    assert moves["small"].mode is MoveMode.LIVE
    big = [n for n in moves if n.startswith("big")]
    assert len(big) == 2
    assert {moves[n].target_name for n in big} == {"h1", "h3"}
    (blocked,) = plan.blockers
    assert blocked.kind is BlockKind.MEMORY
    assert "needs 20480 MiB" in blocked.reason and "h1" in blocked.reason
    assert not plan.ok
    text = str(plan)
    assert "big" in text and "live" in text and "memory" in text
    data = json.loads(dumps(plan))
    assert data["source"]["name"] == "h2"
    assert {m["vm"] for m in data["moves"]} == set(moves)
    assert data["blockers"][0]["blocker"] == "memory"
    assert "Plan evacuate h2" in repr(plan)


def test_plan_never_targets_a_host_in_maintenance(site: dict[str, Any]) -> None:
    hv = site["h1"]
    make(site["h2"], "a", 1024)
    hv.host("h3").enter_maintenance()
    plan = vmctl.plan_evacuation(hv.host("h2"))
    assert [m.target_name for m in plan.moves] == ["h1"]
    with pytest.raises(vmctl.ValidationError, match=r"'h3' is maintenance"):
        vmctl.plan_evacuation(hv.host("h2"), [hv.host("h3")])
    hv.host("h1").enter_maintenance()
    plan = vmctl.plan_evacuation(hv.host("h2"))
    assert not plan.moves and plan.blockers[0].kind is BlockKind.NO_TARGET


def test_plan_blocks_paused_vms_and_names_targets(site: dict[str, Any]) -> None:
    hv = site["h1"]
    make(site["h2"], "p", 1024).pause()
    make(site["h2"], "r", 1024)
    plan = vmctl.plan_evacuation(hv.host("h2"), targets=[hv.host("h3")])
    assert [(m.vm_name, m.target_name) for m in plan.moves] == [("r", "h3")]
    assert [(b.vm_name, b.kind) for b in plan.blockers] == [("p", BlockKind.STATE)]
    with pytest.raises(vmctl.ValidationError, match="evacuated"):
        vmctl.plan_evacuation(hv.host("h2"), targets=[hv.host("h2")])
    with pytest.raises(vmctl.ValidationError):
        vmctl.plan_evacuation("h2")  # type: ignore[arg-type]


# -- executing --------------------------------------------------------------------------


def test_execute_moves_everything_and_reports_progress(site: dict[str, Any]) -> None:
    hv = site["h1"]
    for i in range(6):
        make(site["h2"], f"v{i}", 2048, start=i % 3 != 0)
    plan = vmctl.plan_evacuation(hv.host("h2"))
    assert plan.ok and len(plan.moves) == 6
    seen: list[vmctl.EvacuationProgress] = []
    report = vmctl.execute(plan, max_parallel=3, progress=seen.append)
    assert report.ok, str(report)
    assert report.count(MoveOutcome.MOVED) == 6
    assert hv.host("h2").vm_count == 0
    for m in plan.moves:
        assert host_of(hv, m.vm_name) == m.target_name
    assert [p.status for p in seen].count("started") == 6
    assert max(p.done for p in seen) == 6
    assert "6 moved" in str(report)
    assert json.loads(dumps(report))["ok"] is True
    # States kept: running VMs still run there, stopped ones are still stopped.
    for vm in site["h3"].vms() + site["h1"].vms():
        stopped = vm.name in ("v0", "v3")
        assert vm.state is (vmctl.PowerState.STOPPED if stopped else vmctl.PowerState.RUNNING)


def test_execute_runs_at_most_max_parallel(
    site: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    hv = site["h1"]
    for i in range(8):
        make(site["h2"], f"v{i}", 1024)
    driver = hv._driver
    real = driver.move_to_host
    lock = threading.Lock()
    now = peak = 0

    def slow(*a: Any, **kw: Any) -> Any:
        nonlocal now, peak
        with lock:
            now += 1
            peak = max(peak, now)
        time.sleep(0.05)
        try:
            return real(*a, **kw)
        finally:
            with lock:
                now -= 1

    monkeypatch.setattr(driver, "move_to_host", slow)
    report = vmctl.plan_evacuation(hv.host("h2")).execute(max_parallel=3)
    assert report.ok
    assert peak == 3


def test_interrupted_evacuation_resumes_by_replanning(site: dict[str, Any]) -> None:
    """A plan carried out in part (here: two VMs moved by hand, as an interrupted run
    would leave them) is finished by executing it again or by a new plan of what is left."""
    hv = site["h1"]
    for i in range(4):
        make(site["h2"], f"v{i}", 1024)
    plan = vmctl.plan_evacuation(hv.host("h2"))
    first, second = plan.moves[:2]
    for m in (first, second):
        site["h2"].vm(m.vm_name).migrate(site[m.target_name])
    again = vmctl.plan_evacuation(hv.host("h2"))
    assert {m.vm_name for m in again.moves} == {m.vm_name for m in plan.moves[2:]}
    report = vmctl.execute(plan)
    outcomes = {r.move.vm_name: r.outcome for r in report.results}
    assert outcomes[first.vm_name] is MoveOutcome.ALREADY
    assert outcomes[second.vm_name] is MoveOutcome.ALREADY
    assert report.count(MoveOutcome.MOVED) == 2 and report.ok
    assert not vmctl.plan_evacuation(hv.host("h2")).moves


def test_a_target_entering_maintenance_after_planning_is_skipped(site: dict[str, Any]) -> None:
    hv = site["h1"]
    make(site["h2"], "a", 1024)
    plan = vmctl.plan_evacuation(hv.host("h2"), targets=[hv.host("h3")])
    hv.host("h3").enter_maintenance()
    report = vmctl.execute(plan)
    (r,) = report.results
    assert r.outcome is MoveOutcome.SKIPPED and "maintenance" in (r.error or "")
    assert host_of(hv, "a") == "h2" and not report.ok


def _no_room_on_h1(site: dict[str, Any]) -> vmctl.Plan:
    """A plan sending 3 VMs to h1 that h1 no longer has room for after planning."""
    hv = site["h1"]
    for i in range(3):
        make(site["h2"], f"v{i}", 8 * 1024)
    plan = vmctl.plan_evacuation(hv.host("h2"), targets=[hv.host("h1")])
    assert len(plan.moves) == 3
    make(hv, "hog", 50 * 1024)  # now h1 has 14 GiB: one 8 GiB VM fits, not two
    return plan


def test_on_fail_stop_starts_nothing_after_a_failure(site: dict[str, Any]) -> None:
    report = vmctl.execute(_no_room_on_h1(site), max_parallel=1, on_fail="stop")
    assert [r.outcome for r in report.results] == [
        MoveOutcome.MOVED,
        MoveOutcome.FAILED,
        MoveOutcome.SKIPPED,
    ]
    failed = report.results[1]
    assert "8192 MiB" in (failed.error or "") and failed.attempts == 1  # no room: no retry
    assert report.stopped and not report.ok
    assert "stopped after a failure" in str(report)


def test_on_fail_skip_goes_on(site: dict[str, Any]) -> None:
    report = vmctl.execute(_no_room_on_h1(site), max_parallel=1, on_fail="skip")
    assert [r.outcome for r in report.results] == [
        MoveOutcome.MOVED,
        MoveOutcome.FAILED,
        MoveOutcome.FAILED,
    ]
    assert not report.stopped


def test_transient_failures_are_retried_within_the_bound(
    site: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    hv = site["h1"]
    make(site["h2"], "a", 1024)
    driver = hv._driver
    real = driver.move_to_host
    calls = []

    def flaky(*a: Any, **kw: Any) -> Any:
        calls.append(a)
        if len(calls) <= failures:
            raise vmctl.BackendError("the host's migration service restarted")
        return real(*a, **kw)

    monkeypatch.setattr(driver, "move_to_host", flaky)
    failures = 1
    report = vmctl.plan_evacuation(hv.host("h2")).execute(retries=1)
    assert report.ok and report.results[0].attempts == 2
    # Three failures with two retries allowed: failed after three tries, the VM untouched.
    calls.clear()
    failures = 3
    back = vmctl.plan_evacuation(hv.host(host_of(hv, "a")), targets=[hv.host("h2")])
    report = back.execute(retries=2)
    (r,) = report.results
    assert r.outcome is MoveOutcome.FAILED and r.attempts == 3 and len(calls) == 3
    assert "migration service" in (r.error or "")


def test_on_fail_cold_restarts_a_vm_whose_live_move_failed(
    site: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    hv = site["h1"]
    make(site["h2"], "a", 1024)
    driver = hv._driver
    real = driver.move_to_host

    def no_live(uuid: str, host_id: str, *, mode: MoveMode, deadline: Any) -> Any:
        if mode is MoveMode.LIVE:
            raise vmctl.InvalidState("live migration refused: CPU features differ")
        return real(uuid, host_id, mode=mode, deadline=deadline)

    monkeypatch.setattr(driver, "move_to_host", no_live)
    plan = vmctl.plan_evacuation(hv.host("h2"))
    stop = vmctl.execute(plan, on_fail="stop")
    assert stop.results[0].outcome is MoveOutcome.FAILED
    report = vmctl.execute(plan, on_fail="cold")
    (r,) = report.results
    assert r.outcome is MoveOutcome.MOVED and r.mode is MoveMode.RESTART, str(report)
    assert r.attempts == 2  # the live try, then the restart
    vm = site[r.move.target_name].vm("a")
    assert vm.state is vmctl.PowerState.RUNNING


def test_restart_mode_needs_a_guest_that_can_shut_down(site: dict[str, Any]) -> None:
    hv = site["h1"]
    vm = site["h2"].create_vm(vmctl.VMSpec(name="noos", vcpus=1, memory_mib=512), start=True)
    with pytest.raises(vmctl.InvalidState, match="no guest OS"):
        hv._driver.move_to_host(vm.uuid, hv.host("h3").id, mode=MoveMode.RESTART, deadline=_dl())
    assert host_of(hv, "noos") == "h2"


def test_enter_maintenance_with_evacuate(site: dict[str, Any]) -> None:
    hv = site["h1"]
    for i in range(3):
        make(site["h2"], f"v{i}", 1024, start=i != 1)
    h2 = hv.host("h2").enter_maintenance(evacuate=True, max_parallel=2)
    assert h2.state is HostState.MAINTENANCE and h2.vm_count == 0
    make(site["h3"], "p", 1024).pause()
    with pytest.raises(vmctl.InvalidState, match="cannot be moved"):
        hv.host("h3").enter_maintenance(evacuate=True)
    h3 = hv.host("h3")
    assert h3.vmctl_maintenance and not h3.backend_maintenance


def test_execute_validates_before_moving(site: dict[str, Any]) -> None:
    hv = site["h1"]
    make(site["h2"], "a", 1024)
    plan = vmctl.plan_evacuation(hv.host("h2"))
    for kw in ({"max_parallel": 0}, {"on_fail": "panic"}, {"retries": -1}, {"progress": 3}):
        with pytest.raises(vmctl.ValidationError):
            vmctl.execute(plan, **kw)  # type: ignore[arg-type]
    with pytest.raises(vmctl.ValidationError):
        vmctl.execute("plan")  # type: ignore[arg-type]
    assert host_of(hv, "a") == "h2"


def test_vms_of_an_unreachable_host_are_blocked_not_migrated(
    site: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend reporting a host unreachable (xapi: host_metrics.live false; vCenter: not
    connected): its VMs are recovery's business, so the plan blocks them and says so."""
    import attrs

    hv = site["h1"]
    make(site["h2"], "a", 1024)
    driver = hv._driver
    real = driver.list_hosts

    def h2_down(*, deadline: Any) -> Any:
        return [
            attrs.evolve(r, state=HostState.UNREACHABLE) if r.name == "h2" else r
            for r in real(deadline=deadline)
        ]

    monkeypatch.setattr(driver, "list_hosts", h2_down)
    h2 = hv.host("h2")
    assert h2.state is HostState.UNREACHABLE and not h2.takes_vms
    plan = vmctl.plan_evacuation(h2)
    assert not plan.moves
    (b,) = plan.blockers
    assert b.kind is BlockKind.HOST_DOWN and "recovery" in b.reason
    # Nor is it a target for another host's VMs.
    make(site["h3"], "b", 1024)
    assert [m.target_name for m in vmctl.plan_evacuation(hv.host("h3")).moves] == ["h1"]
