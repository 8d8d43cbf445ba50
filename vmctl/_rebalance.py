"""Rebalancing: a greedy plan of live moves that evens out the hosts' memory load.

``plan_rebalance(hv_or_hosts, threshold=10, max_moves=10)`` reads the hosts and the VM
placements once, then, one move at a time: takes the host with the highest memory load
(memory in use over memory, as the backend measures it) and, among its running VMs that can
move live, the move to another host that lowers the spread between the most and the least
loaded host most; it stops when the spread is within ``threshold`` percentage points, after
``max_moves`` moves, or when no move lowers it. Hosts in maintenance (either mark) or
unreachable take no VM and give none. VMs named in one ``affinity`` group stay where they
are (moving one would split the group); two VMs of one ``anti_affinity`` group never end on
the same host. The plan shows each host's load before and after; ``execute(plan)`` carries
it out as it does an evacuation.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from attrs import field, frozen

from ._capabilities import Capability
from ._errors import ValidationError
from ._evacuate import (
    Blocker,
    Move,
    _Executable,
    _table,
)
from ._hosts import Host, list_hosts, read_placements
from ._hostspi import HostInventory, HostMigration, MoveMode
from ._state import PowerState

if TYPE_CHECKING:
    from ._hypervisor import Hypervisor


@frozen
class HostLoad:
    """A host's memory load (percent of its memory in use) and VMs, before or after."""

    name: str
    memory_percent: float
    memory_used_mib: int
    vm_count: int

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.name,
            "memory_percent": self.memory_percent,
            "memory_used_mib": self.memory_used_mib,
            "vm_count": self.vm_count,
        }


@frozen(repr=False)
class RebalancePlan(_Executable):
    """Live moves that even out the hosts' memory load (nothing has moved)."""

    hosts: tuple[Host, ...]
    moves: tuple[Move, ...]
    before: tuple[HostLoad, ...]
    after: tuple[HostLoad, ...]
    threshold: float
    created: dt.datetime
    hypervisor: Hypervisor | None = field(default=None, eq=False, repr=False)
    blockers: tuple[Blocker, ...] = ()

    @property
    def title(self) -> str:
        return f"Rebalance of {len(self.hosts)} hosts"

    @staticmethod
    def spread(loads: Sequence[HostLoad]) -> float:
        values = [h.memory_percent for h in loads]
        return round(max(values) - min(values), 2) if values else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "hosts": [h.name for h in self.hosts],
            "threshold": self.threshold,
            "moves": [m.to_json() for m in self.moves],
            "before": [h.to_json() for h in self.before],
            "after": [h.to_json() for h in self.after],
            "spread_before": self.spread(self.before),
            "spread_after": self.spread(self.after),
            "created": self.created.isoformat(timespec="seconds"),
        }

    def __repr__(self) -> str:
        return (
            f"<RebalancePlan {len(self.moves)} moves, spread {self.spread(self.before)} -> "
            f"{self.spread(self.after)} points>"
        )

    def __str__(self) -> str:
        out = [
            f"{self.title}: {len(self.moves)} move(s); memory load spread "
            f"{self.spread(self.before)} -> {self.spread(self.after)} percentage points "
            f"(threshold {self.threshold:g})"
        ]
        if self.moves:
            out.append(
                _table(
                    ["VM", "MEMORY", "FROM", "TO", "MODE"],
                    [
                        [m.vm_name, f"{m.memory_mib} MiB", m.source_name, m.target_name,
                         m.mode.value]
                        for m in self.moves
                    ],
                )
            )  # fmt: skip
        after = {h.name: h for h in self.after}
        out.append(
            _table(
                ["HOST", "BEFORE", "AFTER", "VMS"],
                [
                    [
                        b.name,
                        f"{b.memory_percent:.1f} %",
                        f"{after[b.name].memory_percent:.1f} %",
                        f"{b.vm_count} -> {after[b.name].vm_count}",
                    ]
                    for b in self.before
                ],
            )
        )
        return "\n".join(out)


def _groups(value: object, what: str) -> list[frozenset[str]]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValidationError("expected a list of lists of VM names", field=what)
    out = []
    for group in value:
        if isinstance(group, (str, bytes)) or not isinstance(group, Sequence):
            raise ValidationError("expected a list of lists of VM names", field=what)
        if not all(isinstance(n, str) and n for n in group):
            raise ValidationError("VM names must be non-empty strings", field=what)
        out.append(frozenset(group))
    return out


def plan_rebalance(
    hosts: Hypervisor | Sequence[Host],
    *,
    threshold: float = 10.0,
    max_moves: int = 10,
    affinity: Sequence[Sequence[str]] = (),
    anti_affinity: Sequence[Sequence[str]] = (),
) -> RebalancePlan:
    """A dry run of a greedy rebalance over ``hosts`` (a connection: all its hosts; or some
    ``Host``s of one connection). See the module for the rules."""
    from ._hypervisor import Hypervisor

    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValidationError("must be a number of percentage points", field="threshold")
    if not 0 <= threshold <= 100:
        raise ValidationError("must be between 0 and 100", field="threshold")
    if isinstance(max_moves, bool) or not isinstance(max_moves, int) or max_moves < 0:
        raise ValidationError("must be an integer >= 0", field="max_moves")
    together = _groups(affinity, "affinity")
    apart = _groups(anti_affinity, "anti_affinity")
    if isinstance(hosts, Hypervisor):
        hv = hosts
        wanted: set[str] | None = None
    else:
        if isinstance(hosts, (str, bytes)) or not hosts:
            raise ValidationError("give a connection or a list of Host", field="hosts")
        if not all(isinstance(h, Host) for h in hosts):
            raise ValidationError("give a connection or a list of Host", field="hosts")
        owners = {id(h.hypervisor) for h in hosts}
        first = hosts[0].hypervisor
        if len(owners) != 1 or not isinstance(first, Hypervisor):
            raise ValidationError("the hosts must come from one connection", field="hosts")
        hv, wanted = first, {h.id for h in hosts}
    conn = hv._conn
    deadline = conn.read_deadline()
    every = list_hosts(hv, conn, deadline)
    pool = [h for h in every if h.takes_vms and (wanted is None or h.id in wanted)]
    for h in pool:
        if h.memory_used_mib is None or not h.memory_mib:
            raise ValidationError(
                f"host {h.name!r} does not report its memory in use: cannot balance it",
                field="hosts",
            )
    ids = {h.id for h in pool}
    placements = [p for p in read_placements(conn, deadline) if p.host_id in ids]
    used = {h.id: int(h.memory_used_mib or 0) for h in pool}
    count = {h.id: h.vm_count for h in pool}
    names: dict[str, set[str]] = {h.id: set() for h in pool}
    where: dict[str, str] = {}
    for p in placements:
        assert p.host_id is not None
        names[p.host_id].add(p.vm.name)
        where[p.vm.name] = p.host_id
    cap = {h.id: h.memory_mib for h in pool}
    by_id = {h.id: h for h in pool}

    def loads() -> tuple[HostLoad, ...]:
        return tuple(
            HostLoad(h.name, round(100.0 * used[h.id] / cap[h.id], 2), used[h.id], count[h.id])
            for h in pool
        )

    before = loads()
    movable = (
        isinstance(conn.driver, HostMigration)
        and isinstance(conn.driver, HostInventory)
        and Capability.MIGRATE_LIVE in conn.capabilities
    )
    pinned_by_group = set().union(*together) if together else set()
    moves: list[Move] = []
    moved: set[str] = set()
    while movable and len(moves) < max_moves and len(pool) > 1:
        pct = {i: 100.0 * used[i] / cap[i] for i in used}
        spread = max(pct.values()) - min(pct.values())
        if spread <= threshold:
            break
        best: tuple[float, Any, Host] | None = None
        for p in placements:
            vm = p.vm
            src = where.get(vm.name, p.host_id)
            if (
                vm.uuid in moved
                or src is None
                or vm.state is not PowerState.RUNNING
                or p.pinned
                or p.local_disks
                or p.live_blocker
                or vm.name in pinned_by_group
                or pct[src] < max(pct.values())  # only off the most loaded host
            ):
                continue
            for target in pool:
                t = target.id
                if t == src or vm.name in names[t]:
                    continue
                if cap[t] - used[t] < p.memory_mib:
                    continue
                if any(vm.name in g and (g - {vm.name}) & names[t] for g in apart):
                    continue
                trial = dict(used)
                trial[src] -= p.memory_mib
                trial[t] += p.memory_mib
                after = [100.0 * trial[i] / cap[i] for i in trial]
                new_spread = max(after) - min(after)
                if new_spread < spread - 1e-9 and (best is None or new_spread < best[0]):
                    best = (new_spread, p, target)
        if best is None:
            break
        _, p, target = best
        src = where.get(p.vm.name, p.host_id)
        assert src is not None
        used[src] -= p.memory_mib
        used[target.id] += p.memory_mib
        count[src] -= 1
        count[target.id] += 1
        names[src].discard(p.vm.name)
        names[target.id].add(p.vm.name)
        where[p.vm.name] = target.id
        moved.add(p.vm.uuid)
        moves.append(
            Move(
                p.vm.uuid,
                p.vm.name,
                p.vm.state,
                p.memory_mib,
                target.id,
                target.name,
                MoveMode.LIVE,
                src,
                by_id[src].name,
            )
        )
    return RebalancePlan(
        hosts=tuple(pool),
        moves=tuple(moves),
        before=before,
        after=loads(),
        threshold=float(threshold),
        created=dt.datetime.now(dt.UTC),
        hypervisor=hv,
    )
