"""plan_rebalance on a sim site of three hosts: greedy live moves off the most loaded host
until the load spread is within the threshold; max_moves, maintenance, affinity (a group moves
whole) and anti-affinity; the plan's before/after loads; execute carries it out."""

from __future__ import annotations

import json

import pytest

import vmctl
from vmctl import HostState, MoveOutcome

GUEST = vmctl.BootSource(kernel="/boot/vmlinuz")
GiB = 1024


def load(site: dict[str, vmctl.Hypervisor], host: str, *sizes_gib: int) -> None:
    for i, size in enumerate(sizes_gib):
        spec = vmctl.VMSpec(name=f"{host}-v{i}", vcpus=1, memory_mib=size * GiB, boot=GUEST)
        site[host].create_vm(spec, start=True)


def loads(hv: vmctl.Hypervisor) -> dict[str, float]:
    return {h.name: 100.0 * (h.memory_used_mib or 0) / h.memory_mib for h in hv.hosts()}


def test_greedy_moves_even_the_load_and_execute_does_them(
    site: dict[str, vmctl.Hypervisor],
) -> None:
    load(site, "h1", 8, 8, 8, 8, 8, 4)  # 44 GiB of 64 on h1, nothing elsewhere
    hv = site["h1"]
    plan = vmctl.plan_rebalance(hv, threshold=15)
    assert RebalanceCheck.spread(plan.before) == pytest.approx(68.75)
    assert plan.moves and all(m.source_name == "h1" for m in plan.moves)
    assert all(m.mode is vmctl.MoveMode.LIVE for m in plan.moves)
    assert plan.spread(plan.after) <= 15
    assert len({m.vm_uuid for m in plan.moves}) == len(plan.moves)
    text = str(plan)
    assert "BEFORE" in text and "AFTER" in text and "h1" in text
    data = plan.to_json()
    assert data["spread_after"] <= 15 and len(data["moves"]) == len(plan.moves)
    json.dumps(data)
    report = vmctl.execute(plan, max_parallel=3)
    assert report.ok and report.count(MoveOutcome.MOVED) == len(plan.moves), str(report)
    now = loads(hv)
    after = {h.name: h.memory_percent for h in plan.after}
    assert now == pytest.approx(after)
    assert max(now.values()) - min(now.values()) <= 15
    # Balanced now: nothing more to do.
    assert not vmctl.plan_rebalance(hv, threshold=15).moves


def test_max_moves_and_a_balanced_site(site: dict[str, vmctl.Hypervisor]) -> None:
    load(site, "h1", 4, 4, 4, 4, 4, 4)
    plan = vmctl.plan_rebalance(site["h2"], threshold=1, max_moves=2)
    assert len(plan.moves) == 2
    assert not vmctl.plan_rebalance(site["h2"], threshold=100).moves
    assert not vmctl.plan_rebalance(site["h2"], max_moves=0).moves


def test_maintenance_hosts_neither_give_nor_take(site: dict[str, vmctl.Hypervisor]) -> None:
    load(site, "h1", 8, 8, 8, 8)
    hv = site["h1"]
    hv.host("h3").enter_maintenance()
    plan = vmctl.plan_rebalance(hv, threshold=5)
    assert {m.target_name for m in plan.moves} == {"h2"}
    assert "h3" not in {h.name for h in plan.before}
    load(site, "h3", 16, 16)  # a host in maintenance with load: not touched either
    assert hv.host("h3").state is HostState.MAINTENANCE
    assert "h3" not in {m.source_name for m in vmctl.plan_rebalance(hv, threshold=5).moves}


def test_affinity_moves_together_and_anti_affinity_is_kept_apart(
    site: dict[str, vmctl.Hypervisor],
) -> None:
    load(site, "h1", 8, 8, 8, 8, 8)
    hv = site["h1"]
    plan = vmctl.plan_rebalance(hv, threshold=1, affinity=[["h1-v0", "h1-v1"]])
    group = [m for m in plan.moves if m.vm_name in ("h1-v0", "h1-v1")]
    assert len(group) == 2 and group[0].target_id == group[1].target_id, str(plan)
    # Anti-affinity: h1-v2 and a VM already on h2 must not share a host.
    load(site, "h2", 1)
    apart = vmctl.plan_rebalance(hv, threshold=1, anti_affinity=[["h1-v2", "h2-v0"]])
    assert all(not (m.vm_name == "h1-v2" and m.target_name == "h2") for m in apart.moves), str(
        apart
    )
    for bad in ({"affinity": "h1-v0"}, {"anti_affinity": [[1]]}, {"threshold": -1},
                {"max_moves": -1}, {"threshold": True}):  # fmt: skip
        with pytest.raises(vmctl.ValidationError):
            vmctl.plan_rebalance(hv, **bad)  # type: ignore[arg-type]


def test_given_hosts_only(site: dict[str, vmctl.Hypervisor]) -> None:
    load(site, "h1", 8, 8, 8, 8)
    hv = site["h1"]
    plan = vmctl.plan_rebalance([hv.host("h1"), hv.host("h3")], threshold=5)
    assert {m.target_name for m in plan.moves} == {"h3"}
    with pytest.raises(vmctl.ValidationError):
        vmctl.plan_rebalance([])


class RebalanceCheck:
    spread = staticmethod(vmctl.RebalancePlan.spread)
