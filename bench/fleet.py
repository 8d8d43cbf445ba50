"""Fleet inventory (issue 14): ``--hosts`` simulated hosts x ``--vms`` VMs each, listed
one host at a time, by ``vmctl.Fleet`` on threads, and by a Fleet on a Dask ``LocalCluster``
(``--workers`` processes; needs ``vmctl[fleet]``).

The hosts are sim hosts kept in state files (one site per host), so that Dask's worker
processes read the same hosts. Each listing opens no new connection except on Dask, where
each task connects to its member in the worker (the cost of a remote executor). Best of
``--repeat`` runs.

    python bench/fleet.py [--hosts 100] [--vms 100] [--workers 4] [--repeat 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import vmctl  # noqa: E402


def make_hosts(root: Path, hosts: int, vms: int) -> list[str]:
    """``hosts`` state-file sims with ``vms`` VMs each, written directly as one site file
    each (through vmctl, one host at a time)."""
    uris = []
    for h in range(hosts):
        uri = f"sim://host{h:03d}?state={root / f'h{h:03d}.json'}"
        with vmctl.connect(uri) as hv:
            for i in range(vms):
                hv.create_vm(vmctl.VMSpec(name=f"vm{i:03d}", vcpus=1, memory_mib=128))
        uris.append(uri)
    return uris


def best(repeat: int, run: Callable[[], int]) -> tuple[float, int]:
    times, count = [], 0
    for _ in range(repeat):
        t = time.perf_counter()
        count = run()
        times.append(time.perf_counter() - t)
    return min(times), count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--vms", type=int, default=100)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    results: dict[str, Any] = {"hosts": args.hosts, "vms_per_host": args.vms}
    with tempfile.TemporaryDirectory(prefix="vmctl-fleet-") as tmp:
        t = time.perf_counter()
        uris = make_hosts(Path(tmp), args.hosts, args.vms)
        print(f"made {args.hosts} hosts x {args.vms} VMs in {time.perf_counter() - t:.1f} s")
        conns = [vmctl.connect(u) for u in uris]
        try:
            serial, n = best(args.repeat, lambda: sum(len(c.list_vms()) for c in conns))
            results["one_at_a_time_s"] = round(serial, 3)
            with vmctl.Fleet(conns) as fleet:
                threads, n2 = best(
                    args.repeat, lambda: sum(len(v) for v in fleet.list_vms().values.values())
                )
            results["threads_s"] = round(threads, 3)
            assert n == n2 == args.hosts * args.vms, (n, n2)
        finally:
            for c in conns:
                c.close()
        try:
            import distributed
        except ImportError:
            results["dask_s"] = None
            results["dask_note"] = "distributed is not installed (pip install 'vmctl[fleet]')"
        else:
            with (
                distributed.LocalCluster(
                    n_workers=args.workers,
                    threads_per_worker=2,
                    processes=True,
                    dashboard_address=None,
                ) as cluster,
                distributed.Client(cluster) as client,
            ):
                fleet = vmctl.Fleet(uris, executor=client.get_executor())
                dask, n3 = best(
                    args.repeat, lambda: sum(len(v) for v in fleet.list_vms().values.values())
                )
                fleet.close()
            assert n3 == args.hosts * args.vms, n3
            results["dask_s"] = round(dask, 3)
            results["dask_workers"] = args.workers
    load = os.getloadavg()[0]
    results["load_1min"] = round(load, 2)
    print(
        f"list {args.hosts} x {args.vms} VMs: one host at a time {results['one_at_a_time_s']} s, "
        f"Fleet on threads {results['threads_s']} s, Fleet on Dask "
        f"({args.workers} worker processes, each task connecting) {results['dask_s']} s "
        f"(load {load:.1f})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
