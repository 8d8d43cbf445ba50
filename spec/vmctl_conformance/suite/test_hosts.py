"""HOST, EVAC, REBAL and RECOVER clauses: hosts, evacuation, rebalancing and recovery of a
failed host, over two or more hosts (see SPEC.md and ``_hostkit``).

Safe on real hosts: the kit executes only the moves of VMs it made, sets only vmctl's
maintenance flag (and clears it), and takes a host down only where the driver is a
simulation that can fail one or the operator names it (``fail_host`` and its commands).
"""

from __future__ import annotations

import contextlib
from collections import Counter

import pytest

import vmctl
from vmctl import VM, BlockKind, Capability, HostState, MoveMode, MoveOutcome, PowerState
from vmctl_conformance import clause, requires
from vmctl_conformance._hostkit import (
    Scope,
    bring_back,
    failer_for,
    flagged,
    locate,
    only,
    scope_of,
)
from vmctl_conformance._kit import Kit

R = PowerState.RUNNING
S = PowerState.STOPPED


def _source(kit: Kit, scope: Scope, vm: VM) -> vmctl.Host:
    src = scope.host_of(vm)
    if src is None:
        pytest.skip("the driver does not say which host a VM runs on (VMInfo.host)")
    return src


def _outcomes(report: vmctl.EvacuationReport) -> str:
    """A report on one line (a failure note shows the first line)."""
    return f"{report.plan.title}: " + "; ".join(
        f"{r.move.vm_name} {r.move.mode.value} to {r.move.target_name}: {r.outcome.value}"
        + (f" ({r.error})" if r.error else "")
        for r in report.results
    )


@clause("HOST-LIST-1")
def test_hosts_are_listed(kit: Kit, request: pytest.FixtureRequest) -> None:
    scope = scope_of(kit, request)
    if scope is None:
        return
    hosts = scope.hosts()
    assert len(hosts) >= 2
    ids = [h.id for h in hosts]
    assert len(set(ids)) == len(ids), f"host ids listed more than once: {ids}"
    for h in hosts:
        assert h.id and h.name, h
        assert isinstance(h.state, HostState)
        assert h.cpus > 0 and h.memory_mib > 0, h
        if h.memory_used_mib is not None:
            assert 0 <= h.memory_used_mib <= h.memory_mib, h
        if h.cpu_percent is not None:
            assert 0.0 <= h.cpu_percent <= 100.0, h
        assert h.vm_count >= 0, h
        hv = scope.connection_of(h)
        assert hv.host(h.id).id == h.id
        if [x.name for x in hosts].count(h.name) == 1:
            assert hv.host(h.name).id == h.id
    vm = kit.vm("hosts", state=R, os=kit.guest)
    off = kit.vm("hosts-off")
    here = scope.host_of(vm)
    assert here is not None, f"running VM {vm.name} is located on no host"
    # Others may make and delete VMs meanwhile (a shared host): each host counts at least
    # the kit's VMs on it (a stopped one where it has a home host).
    mine = Counter(h for h in (here.id, locate(scope, off)[0]) if h is not None)
    for h in scope.hosts():
        assert h.vm_count >= mine[h.id], (
            f"{h.name} counts {h.vm_count} VMs, the kit has {mine[h.id]} there"
        )
    name = vm.info().host
    if name is not None and scope.source is kit.hv:
        assert name in (here.name, here.id), f"VMInfo.host {name!r}, located on {here.name}"


@clause("HOST-MAINT-1")
def test_maintenance_flag_is_honoured(kit: Kit, request: pytest.FixtureRequest) -> None:
    scope = scope_of(kit, request)
    if scope is None:
        return
    vm = kit.vm("maint", state=R, os=kit.guest)
    src = _source(kit, scope, vm)
    others = [h for h in scope.hosts() if h.id != src.id and h.takes_vms]
    if not others:
        pytest.skip(f"no host besides {src.name} takes VMs to put in maintenance")
    victim = others[0]
    with flagged(victim):
        now = scope.host(victim.id)
        assert now.state is HostState.MAINTENANCE and now.vmctl_maintenance
        plan = vmctl.plan_evacuation(scope.host(src.id))
        assert victim.id not in {t.id for t in plan.targets}
        assert victim.id not in {m.target_id for m in plan.moves}
        with pytest.raises(vmctl.ValidationError):
            vmctl.plan_evacuation(scope.host(src.id), [now])
        rebalance = scope.plan_rebalance(threshold=0.0, max_moves=5)
        touched = {m.target_id for m in rebalance.moves} | {m.source_id for m in rebalance.moves}
        assert victim.id not in touched, str(rebalance)
        assert victim.name not in {h.name for h in rebalance.before}
    after = scope.host(victim.id)
    assert (after.state, after.vmctl_maintenance) == (victim.state, False)


@clause("EVAC-PLAN-1")
def test_evacuation_plan_moves_nothing(kit: Kit, request: pytest.FixtureRequest) -> None:
    scope = scope_of(kit, request)
    if scope is None:
        return
    running = kit.vm("evac-plan", state=R, os=kit.guest)
    stopped = kit.vm("evac-plan-off")
    src = _source(kit, scope, running)
    where_before = {v.uuid: locate(scope, v) for v in (running, stopped)}
    for allow in (False, True):
        for _ in range(3):  # another client may make or delete a VM between the two reads
            plan = vmctl.plan_evacuation(scope.host(src.id), allow_restart=allow)
            listed = [m.vm_uuid for m in plan.moves] + [b.vm_uuid for b in plan.blockers]
            if len(listed) == plan.source.vm_count:
                break
        dupes = [u for u, n in Counter(listed).items() if n > 1]
        assert not dupes, f"VMs listed more than once: {dupes}\n{plan}"
        assert len(listed) == plan.source.vm_count, f"{plan.source.vm_count} VMs there\n{plan}"
        assert running.uuid in listed
        if where_before[stopped.uuid][0] == src.id:
            assert stopped.uuid in listed
        targets = {t.id: t for t in plan.targets}
        incoming: Counter[str] = Counter()
        for m in plan.moves:
            assert m.target_id in targets and m.target_id != src.id, m
            assert targets[m.target_id].takes_vms, m
            want = {R: {MoveMode.LIVE}, S: {MoveMode.COLD}}.get(m.state, set())
            if allow and m.state is R:
                want = want | {MoveMode.RESTART}
            assert m.mode in want, f"{m.vm_name} ({m.state.value}) planned {m.mode.value}"
            if m.mode is not MoveMode.COLD:
                incoming[m.target_id] += m.memory_mib
        for tid, mib in incoming.items():
            free = targets[tid].memory_free_mib
            if free is not None:
                assert mib <= free, f"{mib} MiB planned onto {targets[tid].name}, {free} free"
        for b in plan.blockers:
            assert isinstance(b.kind, BlockKind) and b.reason.strip(), b
    for v in (running, stopped):
        assert locate(scope, v) == where_before[v.uuid], f"{v.name} changed by a dry run"


@clause("EVAC-EXEC-1")
@requires(Capability.MIGRATE_COLD)
def test_evacuation_moves_and_resumes(kit: Kit, request: pytest.FixtureRequest) -> None:
    scope = scope_of(kit, request)
    if scope is None:
        return
    running = kit.vm("evac", state=R, os=kit.guest)
    stopped = kit.vm("evac-off")
    src = _source(kit, scope, running)
    mine = {running.uuid, stopped.uuid}  # a stopped VM tied to no host (Xen) is not moved
    if Capability.MIGRATE_LIVE not in kit.hv.capabilities:
        mine.discard(running.uuid)
    plan = only(vmctl.plan_evacuation(scope.host(src.id)), mine)
    if not plan.moves:
        pytest.skip(f"the plan moves none of the kit's VMs: {plan}")
    try:
        report = vmctl.execute(plan, max_parallel=2, timeout=kit.timeout)
        assert report.ok, _outcomes(report)
        hosts = {h.id: h for h in scope.hosts()}
        for m in plan.moves:
            host_id, state = locate(scope, m.vm_uuid)
            assert host_id == m.target_id, f"{m.vm_name} on {host_id}, planned {m.target_name}"
            assert state is m.state, f"{m.vm_name} is {state.value}, was {m.state.value}"
            assert not hosts[m.target_id].in_maintenance
        again = vmctl.execute(plan, max_parallel=2, timeout=kit.timeout)
        assert [r.outcome for r in again.results] == [MoveOutcome.ALREADY] * len(plan.moves), str(
            again
        )
        fresh = vmctl.plan_evacuation(scope.host(src.id))
        left = {m.vm_uuid for m in fresh.moves} | {b.vm_uuid for b in fresh.blockers}
        assert not left & {m.vm_uuid for m in plan.moves}, str(fresh)
    finally:
        bring_back(kit, scope, plan)


@clause("REBAL-PLAN-1")
def test_rebalance_plan_keeps_the_rules(kit: Kit, request: pytest.FixtureRequest) -> None:
    scope = scope_of(kit, request)
    if scope is None:
        return
    a = kit.vm("rebal-a", state=R, os=kit.guest)
    b = kit.vm("rebal-b", state=R, os=kit.guest)
    c = kit.vm("rebal-c", state=R, os=kit.guest)
    d = kit.vm("rebal-d", state=R, os=kit.guest)
    vms = (a, b, c, d)
    before_where = {v.uuid: locate(scope, v) for v in vms}
    hosts = scope.hosts()
    states = {h.id: h for h in hosts}
    for max_moves in (1, 5):
        plan = scope.plan_rebalance(
            threshold=0.0,
            max_moves=max_moves,
            anti_affinity=[[a.name, b.name]],
            affinity=[[c.name, d.name]],
        )
        assert len(plan.moves) <= max_moves, str(plan)
        where = {v.name: before_where[v.uuid][0] for v in vms}
        before = {h.name: h for h in plan.before}
        expect_used = {n: h.memory_used_mib for n, h in before.items()}
        expect_count = {n: h.vm_count for n, h in before.items()}
        for m in plan.moves:
            assert m.mode is MoveMode.LIVE and m.state is R, m
            assert m.source_id != m.target_id, m
            for hid in (m.source_id, m.target_id):
                assert states[hid].takes_vms, f"{m.vm_name}: {states[hid].name} takes no VMs"
            if m.vm_name in (a.name, b.name):
                other = b.name if m.vm_name == a.name else a.name
                assert where[other] != m.target_id, f"anti-affinity broken\n{plan}"
            where[m.vm_name] = m.target_id
            expect_used[m.source_name] -= m.memory_mib
            expect_used[m.target_name] += m.memory_mib
            expect_count[m.source_name] -= 1
            expect_count[m.target_name] += 1
        if before_where[c.uuid][0] == before_where[d.uuid][0]:
            assert where[c.name] == where[d.name], f"affinity group split\n{plan}"
        else:
            assert not {c.name, d.name} & {m.vm_name for m in plan.moves}, str(plan)
        after = {h.name: h for h in plan.after}
        assert set(after) == set(before), str(plan)
        assert {n: h.memory_used_mib for n, h in after.items()} == expect_used, str(plan)
        assert {n: h.vm_count for n, h in after.items()} == expect_count, str(plan)
        capacity = {h.name: h.memory_mib for h in hosts}
        for n, h in after.items():
            if h.memory_used_mib > capacity[n]:
                assert h.memory_used_mib <= before[n].memory_used_mib, str(plan)
    for v in vms:
        assert locate(scope, v) == before_where[v.uuid], f"{v.name} changed by a dry run"


@clause("RECOVER-REFUSE-1")
def test_recovery_of_a_live_host_is_refused(kit: Kit, request: pytest.FixtureRequest) -> None:
    scope = scope_of(kit, request)
    if scope is None:
        return
    vm = kit.vm("recover-live", state=R, os=kit.guest)
    src = _source(kit, scope, vm)
    before = locate(scope, vm)
    with pytest.raises(vmctl.InvalidState):
        vmctl.plan_recovery(scope.host(src.id))
    assert locate(scope, vm) == before
    assert scope.host(src.id).state is src.state


@clause("RECOVER-EXEC-1")
def test_recovery_of_a_failed_host(kit: Kit, request: pytest.FixtureRequest) -> None:
    scope = scope_of(kit, request)
    if scope is None:
        return
    failer, why = failer_for(kit, scope)
    if failer is None:
        pytest.skip(why)
    running = kit.vm("recover", state=R, os=kit.guest)
    stopped = kit.vm("recover-off")
    src = _source(kit, scope, running)
    victim = failer.victim(src)
    mine = {running.uuid, stopped.uuid}
    if victim.id != src.id:  # put the kit's VMs on the host that will fail
        there = only(vmctl.plan_evacuation(scope.host(src.id), [victim]), mine)
        vmctl.execute(there, max_parallel=2, timeout=kit.timeout)
    on_victim = {u for u in mine if locate(scope, u)[0] == victim.id}
    if running.uuid not in on_victim:
        pytest.skip(f"the kit could not put its running VM on {victim.name}")
    states = {running.uuid: R, stopped.uuid: S}
    try:
        failer.down(victim)
        kit.wait_until(
            lambda: scope.host(victim.id).state is HostState.UNREACHABLE,
            f"host {victim.name} unreachable",
        )
        evac = vmctl.plan_evacuation(scope.host(victim.id))
        blocked = {b.vm_uuid: b.kind for b in evac.blockers}
        for u in on_victim:
            assert blocked.get(u) is BlockKind.HOST_DOWN, str(evac)
        plan = only(vmctl.plan_recovery(scope.host(victim.id)), on_victim)
        modes = {m.vm_uuid: m.mode for m in plan.moves}
        for u in on_victim:
            want = MoveMode.RESTART if states[u] is R else MoveMode.COLD
            assert modes.get(u) is want, str(plan)
        if plan.fence_proof is None:
            with pytest.raises(vmctl.InvalidState):
                vmctl.execute(plan, timeout=kit.timeout)
            assert locate(scope, running)[0] == victim.id, "started without confirmation"
        report = vmctl.execute(plan, confirm_fenced=True, max_parallel=2, timeout=kit.timeout)
        assert report.ok, _outcomes(report)
        for m in plan.moves:
            host_id, state = locate(scope, m.vm_uuid)
            assert host_id not in (None, victim.id), f"{m.vm_name} on {host_id}"
            assert host_id == m.target_id, f"{m.vm_name} on {host_id}, planned {m.target_name}"
            assert state is states[m.vm_uuid], f"{m.vm_name} is {state.value}"
    finally:
        failer.up(victim)
        with contextlib.suppress(vmctl.VmctlError):
            scope.host(victim.id).exit_maintenance(timeout=kit.timeout)
