"""Listing N VMs of a XenAPI pool (the xapisim simulator over HTTPS): vmctl against the
hand-written best and the naive per-VM loop.

* vmctl: ``hv.list_vms()`` (the xen driver: one VM.get_all_records, then VMInfo values);
* hand-written: ``VM.get_all_records()`` through the XenAPI SDK, filtered to real VMs, the
  fields vmctl reports pulled out (uuid, name, power state, vCPUs, memory);
* naive: ``VM.get_all()`` and one ``VM.get_record`` per VM (what Libcloud-style code does).

Each is timed ``--runs`` times (median). Round trips are counted at the transport.
Goal: vmctl within 1.2x of hand-written.

    python bench/xen_list.py [--vms 2000] [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import ssl
import statistics
import sys
import time
import xmlrpc.client
from collections.abc import Callable
from typing import Any

import XenAPI

import vmctl
import xapisim


class CountingTransport(xmlrpc.client.SafeTransport):
    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self.calls = 0

    def request(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return super().request(*args, **kwargs)


def timed(fn: Callable[[], int], runs: int) -> tuple[float, int]:
    times = []
    count = 0
    for _ in range(runs):
        t = time.perf_counter()
        count = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), count


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vms", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--naive-runs", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    password = "bench-password"
    with xapisim.serve(hosts=2, vms=args.vms, password=password, op_delay=0.0) as srv:
        ctx = ssl.create_default_context(cafile=srv.cafile)
        transport = CountingTransport(ctx)
        session = XenAPI.Session(srv.url, transport=transport)
        session.xenapi.login_with_password("root", password, "2.21", "bench")
        api = session.xenapi

        def hand() -> int:
            recs = api.VM.get_all_records()
            rows = [
                (
                    r["uuid"],
                    r["name_label"],
                    r["power_state"],
                    int(r["VCPUs_at_startup"]),
                    int(r["memory_static_max"]) // 2**20,
                )
                for r in recs.values()
                if not (r["is_a_template"] or r["is_a_snapshot"] or r["is_control_domain"])
            ]
            return len(rows)

        def naive() -> int:
            rows = []
            for ref in api.VM.get_all():
                r = api.VM.get_record(ref)
                if not (r["is_a_template"] or r["is_a_snapshot"] or r["is_control_domain"]):
                    rows.append((r["uuid"], r["name_label"], r["power_state"]))
            return len(rows)

        with vmctl.connect(
            f"xen://root@127.0.0.1:{srv.port}", password=password, cafile=srv.cafile, env={}
        ) as hv:
            driver: Any = hv._driver
            hv.list_vms()  # warm-up (host names are cached once)
            api.VM.get_all_records()
            rt0 = driver.round_trips
            t_vmctl, n_vmctl = timed(lambda: len(hv.list_vms()), args.runs)
            rt_vmctl = (driver.round_trips - rt0) / args.runs
        c0 = transport.calls
        t_hand, n_hand = timed(hand, args.runs)
        rt_hand = (transport.calls - c0) / args.runs
        c0 = transport.calls
        t_naive, n_naive = timed(naive, args.naive_runs)
        rt_naive = (transport.calls - c0) / args.naive_runs
        api.session.logout()
    assert n_vmctl == n_hand == n_naive == args.vms, (n_vmctl, n_hand, n_naive)
    result = {
        "vms": args.vms,
        "vmctl_s": t_vmctl,
        "hand_s": t_hand,
        "naive_s": t_naive,
        "vmctl_round_trips": rt_vmctl,
        "hand_round_trips": rt_hand,
        "naive_round_trips": rt_naive,
        "vmctl_vs_hand": t_vmctl / t_hand,
        "naive_vs_hand": t_naive / t_hand,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"listing {args.vms} VMs (xapisim over HTTPS, median of {args.runs})")
        print(
            f"  vmctl list_vms()          {t_vmctl:7.3f} s  {rt_vmctl:6.0f} round trips  "
            f"{t_vmctl / t_hand:5.2f}x"
        )
        print(f"  hand-written get_all_records {t_hand:4.3f} s  {rt_hand:6.0f} round trips  1.00x")
        print(
            f"  naive per-VM get_record   {t_naive:7.3f} s  {rt_naive:6.0f} round trips  "
            f"{t_naive / t_hand:5.2f}x"
        )
    ok = t_vmctl / t_hand <= 1.2
    print(f"goal (vmctl within 1.2x of hand-written): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
