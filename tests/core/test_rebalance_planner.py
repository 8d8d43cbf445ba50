"""The rebalance planner's invariants, on generated hosts and VMs (hypothesis): never over a
host's memory or 100 % CPU, an affinity group moved whole or not at all, anti-affinity kept, at
most max_moves moves of running movable VMs, each VM once, the after loads the before
changed by the moves, the spread never widened; and, through plan_rebalance on a
sim site, never a move to or from a host in maintenance. Plus the CPU scoring on a
worked example."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vmctl
import vmctl_sim
from vmctl import Host, HostState, MoveMode, PowerState, VMInfo
from vmctl._rebalance import Balance, balance
from vmctl.spi import Placement

EPS = 1e-6


@st.composite
def snapshots(draw: Any) -> dict[str, Any]:
    """Hosts (memory, cores, MHz, measured CPU or not) and VMs placed on them, with the
    hosts' memory in use at least what their running VMs take."""
    n = draw(st.integers(2, 5))
    vms = []
    for i in range(draw(st.integers(0, 14))):
        vms.append(
            {
                "name": f"vm{i}",
                "host": draw(st.integers(0, n - 1)),
                "memory": draw(st.integers(64, 8192)),
                "vcpus": draw(st.integers(1, 8)),
                "running": draw(st.booleans() | st.just(True)),
                "pinned": draw(st.integers(0, 9)) == 0,
                "local": draw(st.integers(0, 9)) == 0,
            }
        )
    measured = draw(st.booleans() | st.just(True))
    hosts = []
    for h in range(n):
        run = sum(v["memory"] for v in vms if v["host"] == h and v["running"])
        own = draw(st.integers(0, 2048))
        memory = draw(st.integers(max(1024, (run + own) // 2), 65536))  # may start over
        hosts.append(
            Host(
                id=f"id-{h}",
                name=f"host{h}",
                state=HostState.CONNECTED,
                cpus=draw(st.integers(1, 32)),
                cpu_mhz=draw(st.sampled_from([0, 2000, 3200])),
                memory_mib=memory,
                memory_used_mib=run + own,
                cpu_percent=(
                    draw(st.floats(0, 100, allow_nan=False))
                    if measured or draw(st.booleans())
                    else None
                ),
                vm_count=sum(1 for v in vms if v["host"] == h),
            )
        )
    placements = [
        Placement(
            vm=VMInfo(
                uuid=f"uuid-{v['name']}",
                name=v["name"],
                state=PowerState.RUNNING if v["running"] else PowerState.STOPPED,
                vcpus=v["vcpus"],
                memory_mib=v["memory"],
                host=f"host{v['host']}",
            ),
            host_id=f"id-{v['host']}",
            memory_mib=v["memory"],
            pinned="a passthrough device" if v["pinned"] else None,
            local_disks=("disk0",) if v["local"] else (),
        )
        for v in vms
    ]
    names = [v["name"] for v in vms]
    groups = st.lists(st.lists(st.sampled_from(names), min_size=2, max_size=3), max_size=2)
    return {
        "hosts": hosts,
        "placements": placements,
        "threshold": draw(st.sampled_from([0.0, 1.0, 10.0, 30.0])),
        "max_moves": draw(st.integers(0, 6)),
        "affinity": [frozenset(g) for g in draw(groups)] if names else [],
        "anti_affinity": [frozenset(g) for g in draw(groups)] if names else [],
        "cpu": draw(st.booleans()),
    }


def _components(groups: list[frozenset[str]]) -> list[frozenset[str]]:
    """Affinity groups sharing a VM, merged."""
    out: list[set[str]] = []
    for g in groups:
        merged = set(g)
        for other in [x for x in out if x & merged]:
            merged |= other
            out.remove(other)
        out.append(merged)
    return [frozenset(c) for c in out]


def _check(snap: dict[str, Any], result: Balance) -> None:
    hosts = {h.id: h for h in snap["hosts"]}
    by_uuid = {p.vm.uuid: p for p in snap["placements"]}
    assert len(result.moves) <= snap["max_moves"]
    assert len({m.vm_uuid for m in result.moves}) == len(result.moves)
    where = {p.vm.uuid: p.host_id for p in snap["placements"]}
    on = {h: {p.vm.name for p in snap["placements"] if p.host_id == h} for h in hosts}
    used = {h.id: h.memory_used_mib or 0 for h in snap["hosts"]}
    together = _components(snap["affinity"])
    unit_of = {name: c for c in together for name in c}
    for m in result.moves:
        p = by_uuid[m.vm_uuid]
        assert m.mode is MoveMode.LIVE and p.vm.state is PowerState.RUNNING
        assert not p.pinned and not p.local_disks
        assert m.source_id == where[m.vm_uuid] != m.target_id
        assert m.target_id in hosts
        assert used[m.target_id] + m.memory_mib <= hosts[m.target_id].memory_mib
        unit = unit_of.get(m.vm_name, frozenset({m.vm_name}))
        for g in snap["anti_affinity"]:
            if m.vm_name in g:
                assert not (g - unit) & on[m.target_id], (m, g, on)
        used[m.source_id] -= m.memory_mib
        used[m.target_id] += m.memory_mib
        on[m.source_id].discard(m.vm_name)
        on[m.target_id].add(m.vm_name)
        where[m.vm_uuid] = m.target_id
    # An affinity group moves whole, to one host, from one host, or not at all.
    names_moved = {m.vm_name: m for m in result.moves}
    present = {p.vm.name: p for p in snap["placements"]}
    for c in together:
        went = [names_moved[n] for n in c if n in names_moved]
        if went:
            assert len(went) == len(c), (c, went)
            assert len({m.target_id for m in went}) == 1 and len({m.source_id for m in went}) == 1
            assert all(n in present for n in c)
    before = {b.name: b for b in result.before}
    after = {a.name: a for a in result.after}
    assert set(before) == set(after) == {h.name for h in snap["hosts"]}
    for h in snap["hosts"]:
        assert after[h.name].memory_used_mib == used[h.id]
        got = sum(1 for m in result.moves if m.target_id == h.id) - sum(
            1 for m in result.moves if m.source_id == h.id
        )
        assert after[h.name].vm_count == before[h.name].vm_count + got
        took = any(m.target_id == h.id for m in result.moves)
        if took:
            assert after[h.name].memory_used_mib <= h.memory_mib
            if result.uses_cpu:
                assert (after[h.name].cpu_percent or 0.0) <= 100.0 + EPS
        if result.uses_cpu:
            a = after[h.name]
            assert a.score == pytest.approx(max(a.memory_percent, a.cpu_percent or 0), abs=0.02)
        else:
            assert after[h.name].score == after[h.name].memory_percent
    spread = vmctl.RebalancePlan.spread
    if result.moves:
        assert spread(result.after) < spread(result.before) + 0.01
    cpu_everywhere = all(h.cpu_percent is not None for h in snap["hosts"])
    assert result.uses_cpu == (snap["cpu"] and cpu_everywhere)
    assert bool(result.cpu_note) == (snap["cpu"] and not cpu_everywhere)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots())
def test_planner_invariants(snap: dict[str, Any]) -> None:
    result = balance(
        snap["hosts"],
        snap["placements"],
        threshold=snap["threshold"],
        max_moves=snap["max_moves"],
        affinity=snap["affinity"],
        anti_affinity=snap["anti_affinity"],
        cpu=snap["cpu"],
    )
    _check(snap, result)


def test_each_move_narrows_or_keeps_the_spread() -> None:
    """Greedy: each move evens the load out (a lower variance of the scores), never widening
    the spread: the spread after n moves is no wider than after n-1, and narrower at the
    end."""
    hosts = [
        Host("a", "a", HostState.CONNECTED, 8, 2000, 16384, 12288, 10.0, 4),
        Host("b", "b", HostState.CONNECTED, 8, 2000, 16384, 1024, 10.0, 0),
        Host("c", "c", HostState.CONNECTED, 8, 2000, 16384, 2048, 10.0, 0),
    ]
    vms = [
        Placement(VMInfo(f"u{i}", f"v{i}", PowerState.RUNNING, vcpus=1, memory_mib=2816), "a", 2816)
        for i in range(4)
    ]
    spreads = []
    for n in range(4):
        r = balance(hosts, vms, threshold=0.0, max_moves=n)
        assert len(r.moves) <= n
        spreads.append(vmctl.RebalancePlan.spread(r.after))
    assert spreads == sorted(spreads, reverse=True) and spreads[-1] < spreads[0]


def test_cpu_counts_where_it_is_the_dominant_load() -> None:
    """Equal memory, very unequal CPU: a memory-only plan has nothing to do; with CPU the
    busiest host's VM (its share of the measured 90 %: 4 of 8 vCPUs, 45 % of 8 cores x
    2000 MHz) moves to the idle host, whose CPU goes 10 % -> 55 % while the source's goes
    90 % -> 45 %; the spread of the scores (max of memory and CPU %) goes 40 -> 11.25."""
    hosts = [
        Host("a", "a", HostState.CONNECTED, 8, 2000, 16384, 8192, 90.0, 2),
        Host("b", "b", HostState.CONNECTED, 8, 2000, 16384, 8192, 10.0, 2),
    ]
    vms = [
        Placement(VMInfo("u1", "busy1", PowerState.RUNNING, vcpus=4, memory_mib=1024), "a", 1024),
        Placement(VMInfo("u2", "busy2", PowerState.RUNNING, vcpus=4, memory_mib=1024), "a", 1024),
        Placement(VMInfo("u3", "idle1", PowerState.RUNNING, vcpus=1, memory_mib=1024), "b", 1024),
        Placement(VMInfo("u4", "idle2", PowerState.RUNNING, vcpus=1, memory_mib=1024), "b", 1024),
    ]
    memory_only = balance(hosts, vms, threshold=5.0, max_moves=5, cpu=False)
    assert memory_only.moves == () and not memory_only.uses_cpu
    plan = balance(hosts, vms, threshold=15.0, max_moves=5)
    assert plan.uses_cpu
    assert [(m.vm_name, m.target_name) for m in plan.moves] == [("busy1", "b")]
    after = {h.name: h for h in plan.after}
    assert after["a"].cpu_percent == pytest.approx(45.0)
    assert after["b"].cpu_percent == pytest.approx(55.0)
    assert after["a"].score == pytest.approx(45.0)  # memory 7168 of 16384: 43.75 %
    assert after["b"].score == pytest.approx(56.25)  # memory 9216 of 16384
    assert vmctl.RebalancePlan.spread(plan.before) == pytest.approx(40.0)  # 90 - max(50, 10)
    # Not measured on one host: memory only, and the plan says so.
    blind = [hosts[0], Host("b", "b", HostState.CONNECTED, 8, 2000, 16384, 8192, None, 2)]
    plan = balance(blind, vms, threshold=5.0, max_moves=5)
    assert not plan.uses_cpu and "CPU not measured on b" in plan.cpu_note and not plan.moves


# -- through plan_rebalance: hosts in maintenance, on a sim site --------------------------


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("VMCTL_STATE_DIR", str(tmp_path / "state"))
    yield tmp_path / "state"


_site_ids = itertools.count()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    loads=st.lists(st.lists(st.integers(1, 12), max_size=4), min_size=3, max_size=4),
    down=st.sets(st.integers(0, 3), max_size=2),
    backend=st.booleans(),
)
def test_no_move_to_or_from_a_host_in_maintenance(
    state_dir: Path, loads: list[list[int]], down: set[int], backend: bool
) -> None:
    site = f"maint{next(_site_ids)}"
    conns = [vmctl.connect(f"sim://m{i}?site={site}") for i in range(len(loads))]
    try:
        for i, sizes in enumerate(loads):
            for j, gib in enumerate(sizes):
                spec = vmctl.VMSpec(name=f"m{i}-v{j}", memory_mib=gib * 1024)
                conns[i].create_vm(spec, start=True)
        flagged = set()
        for i in down:
            if i < len(conns):
                host = conns[0].host(f"m{i}")
                if backend:
                    host.enter_maintenance()
                else:
                    from vmctl._hosts import set_maintenance

                    set_maintenance(conns[0], host, True, timeout=None)
                flagged.add(host.id)
        plan = vmctl.plan_rebalance(conns[0], threshold=0.0, max_moves=6)
        for m in plan.moves:
            assert m.target_id not in flagged and m.source_id not in flagged, str(plan)
        assert not flagged & {h.id for h in plan.hosts}
        report = plan.execute(max_parallel=3)
        assert report.ok, str(report)
        for h in conns[0].hosts():
            assert h.memory_used_mib is not None and h.memory_used_mib <= h.memory_mib
    finally:
        for flag_host in conns[0].hosts():
            if flag_host.in_maintenance:
                flag_host.exit_maintenance()
        for c in conns:
            c.close()
        vmctl_sim.reset_sites()


def test_cli_shows_cpu_and_memory_only_leaves_it_out(state_dir: Path) -> None:
    from click.testing import CliRunner

    from vmctl.cli import cli

    state = state_dir.parent / "site.json"
    with vmctl.connect(f"sim://c1?state={state}") as hv:
        for i in range(3):
            hv.create_vm(vmctl.VMSpec(name=f"c{i}", vcpus=4, memory_mib=8192), start=True)
    with vmctl.connect(f"sim://c2?state={state}"):
        pass
    uri = f"sim://c1?state={state}"
    shown = CliRunner().invoke(cli, ["-c", uri, "rebalance", "--dry-run"])
    assert shown.exit_code == 0, shown.output
    assert "max of memory and CPU" in shown.output and "CPU BEFORE" in shown.output
    data = json.loads(
        CliRunner().invoke(cli, ["-c", uri, "--json", "rebalance", "--dry-run"]).output
    )
    assert data["score"] == "max(memory %, cpu %)" and data["moves"]
    assert all(h["cpu_percent"] is not None for h in data["before"])
    flat = CliRunner().invoke(cli, ["-c", uri, "--json", "rebalance", "--dry-run", "--memory-only"])
    assert flat.exit_code == 0, flat.output
    assert json.loads(flat.output)["score"] == "memory %"


def test_an_affinity_group_moves_whole_or_stays() -> None:
    """g1 and g2 must stay together: with the other VMs of the busy host pinned, they move
    in one step to the idle host; one of them on another host, neither moves."""
    hosts = [
        Host("a", "a", HostState.CONNECTED, 8, 2000, 16384, 12288, None, 4),
        Host("b", "b", HostState.CONNECTED, 8, 2000, 16384, 0, None, 0),
    ]

    def vm(name: str, host: str, mib: int, pinned: str | None = None) -> Placement:
        info = VMInfo(f"u-{name}", name, PowerState.RUNNING, vcpus=1, memory_mib=mib)
        return Placement(info, host, mib, pinned=pinned)

    vms = [
        vm("g1", "a", 2048),
        vm("g2", "a", 2048),
        vm("x", "a", 4096, pinned="a passthrough device"),
        vm("y", "a", 4096, pinned="a passthrough device"),
    ]
    plan = balance(hosts, vms, threshold=0.0, max_moves=5, affinity=[frozenset({"g1", "g2"})])
    assert [(m.vm_name, m.target_name) for m in plan.moves] == [("g1", "b"), ("g2", "b")]
    assert not balance(
        hosts, vms, threshold=0.0, max_moves=1, affinity=[frozenset({"g1", "g2"})]
    ).moves  # the group needs two moves
    apart = [vms[0], vm("g2", "b", 2048), *vms[2:]]
    assert not balance(
        hosts, apart, threshold=0.0, max_moves=5, affinity=[frozenset({"g1", "g2"})]
    ).moves
