"""Rebalancing: a greedy plan of live moves that evens out the hosts' load, memory and CPU.

``plan_rebalance(hv_or_hosts, threshold=10, max_moves=10, cpu=True)`` reads the hosts and
the VM placements once (no per-VM sampling), then plans one move at a time.

Scoring (docs/hosts.md, "Rebalancing"). A host's **load score** is its dominant resource:
``max(memory %, CPU %)``, where memory % is the memory in use over the memory, as the
backend measures it, and CPU % the host's measured CPU load over its last sample
(``Host.cpu_percent``). CPU counts only with ``cpu=True`` and when every host in the plan
reports it; otherwise the score is the memory % and the plan says why (``cpu_note``). A
VM's share of its host's CPU is estimated from that measurement: the host's busy MHz
(CPU % x cores x MHz) split over its running VMs in proportion to their vCPUs; moving it
takes that many MHz off its host and onto the target.

Each step takes the host with the highest score and, among its running VMs that can move
live (not pinned, no local disk, no live blocker), the move of one VM (or of the VMs of an
``affinity`` group, together) to another host that evens the scores out most: that lowers
their variance (the mean squared difference from their mean) most, without widening the
spread (highest minus lowest score); a target must have the memory free, stay at or below
100 % CPU (when CPU counts), and hold no VM of the moving VMs' ``anti_affinity`` groups.
(The variance, not the spread, picks the move: with several hosts near the top, no single
move lowers the spread, but each lowers the variance.) It stops when the spread is within
``threshold`` percentage points, after ``max_moves`` moves (a group's VMs count one each),
or when no move lowers the variance (so it ends).
Hosts in maintenance (either mark) or unreachable take no VM and give none. The VMs of an
``affinity`` group move in one step to one host, when they all run on one host and can
move live; otherwise they stay where they are. The plan shows each host's memory, CPU and
score before and after; ``execute(plan)`` carries it out as it does an evacuation.
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
from ._hostspi import HostInventory, HostMigration, MoveMode, Placement
from ._state import PowerState

if TYPE_CHECKING:
    from ._hypervisor import Hypervisor


@frozen
class HostLoad:
    """A host's load before or after the plan: memory (percent of its memory in use),
    CPU (percent, estimated after the moves; None where not measured) and the score the
    plan evens out (``max`` of the two when CPU counts, else the memory %)."""

    name: str
    memory_percent: float
    memory_used_mib: int
    vm_count: int
    cpu_percent: float | None = None
    score: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.name,
            "memory_percent": self.memory_percent,
            "memory_used_mib": self.memory_used_mib,
            "vm_count": self.vm_count,
            "cpu_percent": self.cpu_percent,
            "score": self.score,
        }


@frozen(repr=False)
class RebalancePlan(_Executable):
    """Live moves that even out the hosts' load score (nothing has moved)."""

    hosts: tuple[Host, ...]
    moves: tuple[Move, ...]
    before: tuple[HostLoad, ...]
    after: tuple[HostLoad, ...]
    threshold: float
    created: dt.datetime
    hypervisor: Hypervisor | None = field(default=None, eq=False, repr=False)
    blockers: tuple[Blocker, ...] = ()
    #: Whether CPU load counted in the score, and why not when it did not.
    uses_cpu: bool = False
    cpu_note: str = ""

    @property
    def title(self) -> str:
        return f"Rebalance of {len(self.hosts)} hosts"

    @staticmethod
    def spread(loads: Sequence[HostLoad]) -> float:
        """Highest minus lowest load score, in percentage points."""
        values = [h.score for h in loads]
        return round(max(values) - min(values), 2) if values else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "hosts": [h.name for h in self.hosts],
            "threshold": self.threshold,
            "score": "max(memory %, cpu %)" if self.uses_cpu else "memory %",
            "cpu_note": self.cpu_note,
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
        what = "load (max of memory and CPU %)" if self.uses_cpu else "memory load"
        out = [
            f"{self.title}: {len(self.moves)} move(s); {what} spread "
            f"{self.spread(self.before)} -> {self.spread(self.after)} percentage points "
            f"(threshold {self.threshold:g})"
        ]
        if self.cpu_note:
            out[0] += f"; {self.cpu_note}"
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

        def cpu(h: HostLoad) -> str:
            return "-" if h.cpu_percent is None else f"{h.cpu_percent:.1f} %"

        out.append(
            _table(
                ["HOST", "MEMORY BEFORE", "AFTER", "CPU BEFORE", "AFTER", "VMS"],
                [
                    [
                        b.name,
                        f"{b.memory_percent:.1f} %",
                        f"{after[b.name].memory_percent:.1f} %",
                        cpu(b),
                        cpu(after[b.name]),
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
    cpu: bool = True,
) -> RebalancePlan:
    """A dry run of a greedy rebalance over ``hosts`` (a connection or a ``vmctl.Site``:
    all its hosts; or some ``Host``s of one). ``cpu=False`` evens out memory only. See the
    module for the scoring and the rules."""
    from ._hypervisor import Hypervisor

    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValidationError("must be a number of percentage points", field="threshold")
    if not 0 <= threshold <= 100:
        raise ValidationError("must be between 0 and 100", field="threshold")
    if isinstance(max_moves, bool) or not isinstance(max_moves, int) or max_moves < 0:
        raise ValidationError("must be an integer >= 0", field="max_moves")
    if not isinstance(cpu, bool):
        raise ValidationError("must be True or False", field="cpu")
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
    movable = (
        isinstance(conn.driver, HostMigration)
        and isinstance(conn.driver, HostInventory)
        and Capability.MIGRATE_LIVE in conn.capabilities
    )
    result = balance(
        pool,
        placements,
        threshold=float(threshold),
        max_moves=max_moves if movable else 0,
        affinity=together,
        anti_affinity=apart,
        cpu=cpu,
    )
    return RebalancePlan(
        hosts=tuple(pool),
        moves=result.moves,
        before=result.before,
        after=result.after,
        threshold=float(threshold),
        created=dt.datetime.now(dt.UTC),
        hypervisor=hv,
        uses_cpu=result.uses_cpu,
        cpu_note=result.cpu_note,
    )


#: For each VM, the planner weighs the moves to this many of the least loaded hosts that can
#: take it (moving load x from a host at s to one at t changes the variance by 2x(t - s + x):
#: the lower t, the better; more candidates only matter where CPU and memory disagree).
TARGETS_TRIED = 4


@frozen
class Balance:
    """What :func:`balance` planned."""

    moves: tuple[Move, ...]
    before: tuple[HostLoad, ...]
    after: tuple[HostLoad, ...]
    uses_cpu: bool
    cpu_note: str


def _cpu_capacity(h: Host) -> float:
    """A host's CPU capacity in MHz (cores when the backend gives no clock)."""
    return float(h.cpus * (h.cpu_mhz or 1)) or 1.0


def balance(
    pool: Sequence[Host],
    placements: Sequence[Placement],
    *,
    threshold: float,
    max_moves: int,
    affinity: Sequence[frozenset[str]] = (),
    anti_affinity: Sequence[frozenset[str]] = (),
    cpu: bool = True,
) -> Balance:
    """The greedy planner on a snapshot: ``pool`` the hosts that give and take VMs (each
    reporting its memory in use), ``placements`` the VMs on them. Reads nothing; the
    rules are the module's. ``max_moves=0`` plans nothing (e.g. no live migration)."""
    hosts = list(pool)
    by_id = {h.id: h for h in hosts}
    missing = [h.name for h in hosts if h.cpu_percent is None]
    uses_cpu = cpu and bool(hosts) and not missing
    note = ""
    if cpu and missing:
        note = f"CPU not measured on {', '.join(sorted(missing))}: memory only"
    cap = {h.id: h.memory_mib for h in hosts}
    used = {h.id: int(h.memory_used_mib or 0) for h in hosts}
    count = {h.id: h.vm_count for h in hosts}
    mhz_cap = {h.id: _cpu_capacity(h) for h in hosts}
    busy = {h.id: (h.cpu_percent or 0.0) / 100.0 * mhz_cap[h.id] for h in hosts}
    names: dict[str, set[str]] = {h.id: set() for h in hosts}
    mine = [p for p in placements if p.host_id in by_id]
    vcpus: dict[str, int] = {h.id: 0 for h in hosts}
    for p in mine:
        assert p.host_id is not None
        names[p.host_id].add(p.vm.name)
        if p.vm.state is PowerState.RUNNING:
            vcpus[p.host_id] += max(1, p.vm.vcpus)
    # A running VM's share of its host's measured CPU (MHz), by its vCPUs.
    share = {
        p.vm.uuid: busy[p.host_id] * max(1, p.vm.vcpus) / vcpus[p.host_id]
        for p in mine
        if p.host_id is not None and p.vm.state is PowerState.RUNNING and vcpus[p.host_id]
    }

    def mem_pct(i: str) -> float:
        return 100.0 * used[i] / cap[i]

    def cpu_pct(i: str) -> float:
        return 100.0 * busy[i] / mhz_cap[i]

    def score(i: str) -> float:
        return max(mem_pct(i), cpu_pct(i)) if uses_cpu else mem_pct(i)

    def loads() -> tuple[HostLoad, ...]:
        return tuple(
            HostLoad(
                h.name,
                round(mem_pct(h.id), 2),
                used[h.id],
                count[h.id],
                round(cpu_pct(h.id), 2) if h.cpu_percent is not None else None,
                round(score(h.id), 2),
            )
            for h in hosts
        )

    before = loads()
    units = _units(mine, affinity)
    where = {p.vm.uuid: p.host_id for p in mine}
    moves: list[Move] = []
    moved: set[str] = set()

    def trial_score(i: str, mem: int, mhz: float) -> float:
        m = 100.0 * mem / cap[i]
        return max(m, 100.0 * mhz / mhz_cap[i]) if uses_cpu else m

    n = len(hosts)
    while len(moves) < max_moves and n > 1:
        scores = {i: score(i) for i in used}
        ranked = sorted(scores, key=lambda i: scores[i])
        top, bottom = scores[ranked[-1]], scores[ranked[0]]
        spread = top - bottom
        if spread <= threshold:
            break
        s1 = sum(scores.values())
        s2 = sum(v * v for v in scores.values())
        variance = s2 / n - (s1 / n) ** 2
        high, low = ranked[::-1][:3], ranked[:3]
        best: tuple[tuple[float, float, str, str, str], tuple[Placement, ...]] | None = None
        for unit in units:
            src = where[unit[0].vm.uuid]
            if (
                src is None
                or scores[src] < top - 1e-9  # only off the most loaded host(s)
                or unit[0].vm.uuid in moved
                or len(moves) + len(unit) > max_moves
            ):
                continue
            mem = sum(p.memory_mib for p in unit)
            load = sum(share.get(p.vm.uuid, 0.0) for p in unit)
            members = {p.vm.name for p in unit}
            new_src = trial_score(src, used[src] - mem, busy[src] - load)
            tried = 0
            for t in ranked:  # least loaded first: the few first that take it are the best
                if tried == TARGETS_TRIED:
                    break
                if t == src or members & names[t]:
                    continue
                if cap[t] - used[t] < mem:
                    continue  # never over its memory
                if uses_cpu and busy[t] + load > mhz_cap[t] + 1e-9:
                    continue  # never over 100 % CPU
                if any(g & members and (g - members) & names[t] for g in anti_affinity):
                    continue
                tried += 1
                new_t = trial_score(t, used[t] + mem, busy[t] + load)
                rest_high = [scores[i] for i in high if i not in (src, t)][:1]
                rest_low = [scores[i] for i in low if i not in (src, t)][:1]
                new_spread = max([new_src, new_t, *rest_high]) - min([new_src, new_t, *rest_low])
                n1 = s1 - scores[src] - scores[t] + new_src + new_t
                n2 = s2 - scores[src] ** 2 - scores[t] ** 2 + new_src**2 + new_t**2
                new_variance = n2 / n - (n1 / n) ** 2
                if new_variance >= variance - 1e-9 or new_spread > spread + 1e-9:
                    continue  # every step evens the load out, and never widens the spread
                key = (new_variance, new_spread, by_id[t].name, t, min(members))
                if best is None or key < best[0]:
                    best = (key, unit)
        if best is None:
            break
        target = by_id[best[0][3]]
        for p in best[1]:
            src = where[p.vm.uuid]
            assert src is not None
            moved.add(p.vm.uuid)
            load = share.get(p.vm.uuid, 0.0)
            used[src] -= p.memory_mib
            used[target.id] += p.memory_mib
            busy[src] -= load
            busy[target.id] += load
            count[src] -= 1
            count[target.id] += 1
            names[src].discard(p.vm.name)
            names[target.id].add(p.vm.name)
            where[p.vm.uuid] = target.id
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
                    p.overhead_mib,
                )
            )
    return Balance(tuple(moves), before, loads(), uses_cpu, note)


def _movable(p: Placement) -> bool:
    return (
        p.vm.state is PowerState.RUNNING
        and not p.pinned
        and not p.local_disks
        and not p.live_blocker
        and p.host_id is not None
    )


def _units(
    placements: Sequence[Placement], affinity: Sequence[frozenset[str]]
) -> list[tuple[Placement, ...]]:
    """What can move in one step: a VM of no affinity group alone; the VMs of an affinity
    group (groups sharing a VM merged) together, when all of them run on one host and can
    move live. A group spread over hosts, or with a member that cannot move, stays put."""
    groups: list[set[str]] = []
    for g in affinity:
        merged = set(g)
        for other in [x for x in groups if x & merged]:
            merged |= other
            groups.remove(other)
        groups.append(merged)
    by_name: dict[str, list[Placement]] = {}
    for p in placements:
        by_name.setdefault(p.vm.name, []).append(p)
    grouped = set().union(*groups) if groups else set()
    units: list[tuple[Placement, ...]] = [
        (p,) for p in placements if p.vm.name not in grouped and _movable(p)
    ]
    for group in groups:
        members = [p for name in sorted(group) for p in by_name.get(name, [])]
        if (
            members
            and len(members) == len(group)
            and all(_movable(p) for p in members)
            and len({p.host_id for p in members}) == 1
        ):
            units.append(tuple(members))
    return units
