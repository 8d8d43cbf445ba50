"""What the listing benchmarks (bench/esx_list.py, bench/xen_list.py) share: timing a way
of listing (median and best of several runs, its round trips), merging interleaved runs,
and printing the ways side by side against a floor.

A row is a dict: ``seconds`` (median), ``best_seconds``, ``round_trips`` (the most of any
run) and ``vms`` (how many the way listed; every way must list the same)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

Row = dict[str, float]


def timed(fn: Callable[[], int], count: Callable[[], int], runs: int) -> Row:
    """``fn`` (returning how many VMs it listed) timed ``runs`` times; ``count`` reads a
    round-trip counter before and after each run."""
    times, trips, n = [], [], 0
    for _ in range(runs):
        before = count()
        start = time.perf_counter()
        n = fn()
        times.append(time.perf_counter() - start)
        trips.append(count() - before)
    return {
        "seconds": statistics.median(times),
        "best_seconds": min(times),
        "round_trips": max(trips),
        "vms": n,
    }


def merge(rows: list[Row]) -> Row:
    """Single-run rows of one way (taken interleaved with the other ways) as one row."""
    return {
        "seconds": statistics.median(r["seconds"] for r in rows),
        "best_seconds": min(r["seconds"] for r in rows),
        "round_trips": max(r["round_trips"] for r in rows),
        "vms": rows[-1]["vms"],
    }


def print_table(rows: Mapping[str, Row], floor: str) -> None:
    """The rows side by side: seconds, ms per VM, and the ratio to the ``floor`` row, for the
    medians and for the best runs; then the round trips."""
    width = max(len(label) for label in rows)
    base, best = rows[floor]["seconds"], rows[floor]["best_seconds"]
    print(
        f"{'way':<{width}} {'VMs':>5} {'seconds':>8} {'ms/VM':>7} {'x floor':>8} "
        f"{'best':>7} {'x floor':>8} {'round trips':>12}"
    )
    for label, row in rows.items():
        print(
            f"{label:<{width}} {row['vms']:>5.0f} {row['seconds']:>8.3f} "
            f"{1000 * row['seconds'] / max(row['vms'], 1):>7.3f} "
            f"{row['seconds'] / base:>8.2f} {row['best_seconds']:>7.3f} "
            f"{row['best_seconds'] / best:>8.2f} {row['round_trips']:>12.0f}"
        )
