"""The rebalance planner's own cost (issue 14): ``vmctl._rebalance.balance`` on generated
snapshots of growing sites, no backend (what ``plan_rebalance`` adds to the two reads).

Each site: ``hosts`` hosts of 256 GiB and 32 cores, ``vms`` running VMs of 1-16 GiB and 1-8
vCPUs placed unevenly (the first tenth of the hosts hold half of them), CPU measured on every
host; the planner runs with ``threshold=0`` and ``--max-moves`` moves. Prints the best of
``--repeat`` wall times per site, the moves planned and the spread before and after.

    python bench/rebalance.py [--max-moves 20] [--repeat 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

from vmctl import Host, HostState, PowerState, RebalancePlan, VMInfo
from vmctl._rebalance import balance
from vmctl.spi import Placement

SITES = ((10, 200), (50, 2000), (200, 10000))


def site(n_hosts: int, n_vms: int, seed: int = 1) -> tuple[list[Host], list[Placement]]:
    rnd = random.Random(seed)
    busy = max(1, n_hosts // 10)
    placements = []
    used = [0] * n_hosts
    for i in range(n_vms):
        h = rnd.randrange(busy) if i % 2 == 0 else rnd.randrange(n_hosts)
        mem = rnd.randint(1, 16) * 1024
        if used[h] + mem > 256 * 1024:
            continue
        used[h] += mem
        info = VMInfo(
            f"u{i}", f"vm{i}", PowerState.RUNNING, vcpus=rnd.randint(1, 8), memory_mib=mem
        )
        placements.append(Placement(info, f"h{h}", mem))
    hosts = [
        Host(
            f"h{h}",
            f"host{h:03d}",
            HostState.CONNECTED,
            32,
            2600,
            256 * 1024,
            used[h],
            min(100.0, used[h] / (256 * 1024) * 80 + rnd.uniform(0, 10)),
            sum(1 for p in placements if p.host_id == f"h{h}"),
        )
        for h in range(n_hosts)
    ]
    return hosts, placements


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--max-moves", type=int, default=20)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json")
    a = p.parse_args()
    rows = []
    for n_hosts, n_vms in SITES:
        hosts, placements = site(n_hosts, n_vms)
        best = float("inf")
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            result = balance(hosts, placements, threshold=0.0, max_moves=a.max_moves)
            best = min(best, time.perf_counter() - t0)
        row = {
            "hosts": n_hosts,
            "vms": len(placements),
            "moves": len(result.moves),
            "seconds": round(best, 4),
            "spread_before": RebalancePlan.spread(result.before),
            "spread_after": RebalancePlan.spread(result.after),
        }
        rows.append(row)
        print(
            f"{n_hosts:4d} hosts {len(placements):6d} VMs: {len(result.moves):3d} moves in "
            f"{best:.3f} s, spread {row['spread_before']} -> {row['spread_after']}"
        )
    load = os.getloadavg()[0]
    print(f"(load average {load:.1f}, best of {a.repeat})", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"load": load, "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
