"""Many requests at once: 200 starts, then 200 power-offs, with ``wait=False`` + ``wait_all``.

On the vCenter simulator and on xapisim with ``op_delay=0.5`` (every lifecycle task takes
half a second on the "host"), it prints for each backend and request: the wall time of one
request, of 200 submitted together, their ratio, the peak number of threads and of TCP
connections to the host, and the round trips per request where the driver counts them.

Goals (issue 8): xapisim 200/1 ratio <= 5; vCenter simulator 200 starts <= 0.5 s.

    python bench/concurrency.py [--vms 200] [--backend esx|xen|both] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import vmctl


def tcp_connections(port: int) -> int:
    """Established connections from this machine to ``port`` (from /proc/net/tcp)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


class Peak:
    """Samples threads and connections while a block runs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.threads = 0
        self.connections = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.threads = max(self.threads, threading.active_count())
            self.connections = max(self.connections, tcp_connections(self.port))

    @contextmanager
    def watching(self) -> Iterator[Peak]:
        t = threading.Thread(target=self._sample, daemon=True)
        t.start()
        try:
            yield self
        finally:
            self._stop.set()
            t.join()


def round_trips(hv: vmctl.Hypervisor) -> int | None:
    value = getattr(hv._driver, "round_trips", None)
    return int(value) if isinstance(value, int) else None


def run(hv: vmctl.Hypervisor, vms: list[vmctl.VM], port: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for verb in ("start", "power_off"):
        one = vms[0]
        t = time.perf_counter()
        getattr(one, verb)(timeout=120)
        single = time.perf_counter() - t
        # put the first VM back where the others are
        getattr(one, "power_off" if verb == "start" else "start")(timeout=120)
        rt0 = round_trips(hv)
        peak = Peak(port)
        with peak.watching():
            t = time.perf_counter()
            ops = [getattr(vm, verb)(wait=False, timeout=300) for vm in vms]
            submitted = time.perf_counter() - t
            vmctl.wait_all(ops, timeout=600)
            wall = time.perf_counter() - t
        errors = [op.exception() for op in ops if op.exception() is not None]
        rt1 = round_trips(hv)
        out[verb] = {
            "one_s": single,
            "many_s": wall,
            "submit_s": submitted,
            "ratio": wall / single,
            "threads": peak.threads,
            "connections": peak.connections,
            "round_trips_per_request": (
                (rt1 - rt0) / len(vms) if rt0 is not None and rt1 is not None else None
            ),
            "errors": len(errors),
            "first_error": repr(errors[0]) if errors else None,
        }
    return out


def bench_xen(n: int) -> dict[str, dict[str, Any]]:
    import xapisim

    password = "bench-password"
    with xapisim.serve(hosts=1, vms=n, running=0, password=password, op_delay=0.5) as srv:
        uri = f"xen://root@127.0.0.1:{srv.port}"
        with vmctl.connect(uri, password=password, cafile=srv.cafile) as hv:
            vms = [vm for vm in hv.vms() if vm.name.startswith("vm-")][:n]
            return run(hv, vms, srv.port)


def bench_esx(n: int) -> dict[str, dict[str, Any]]:
    from tests.hosts.esx import running_simulator

    with running_simulator("vcenter", vms=n, standalone_hosts=0, autostart=False) as srv:
        uri = f"vcenter://{srv.username}@{srv.host}:{srv.port}/DC0/DC0_C0"
        with vmctl.connect(uri, password=srv.password, cafile=str(srv.cafile)) as hv:
            vms = hv.vms()[:n]
            return run(hv, vms, int(srv.port))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=200)
    parser.add_argument("--backend", choices=("esx", "xen", "both"), default="both")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    if args.backend in ("xen", "both"):
        results["xapisim (op_delay 0.5 s)"] = bench_xen(args.vms)
    if args.backend in ("esx", "both"):
        results["vCenter simulator"] = bench_esx(args.vms)
    print(f"\n{args.vms} requests submitted with wait=False, then wait_all:\n")
    head = f"{'backend':<26} {'request':<10} {'1 (s)':>7} {f'{args.vms} (s)':>8} {'ratio':>6}"
    print(head + f" {'threads':>8} {'conns':>6} {'rt/req':>7} {'errors':>7}")
    for backend, rows in results.items():
        for verb, r in rows.items():
            rt = r["round_trips_per_request"]
            print(
                f"{backend:<26} {verb:<10} {r['one_s']:>7.3f} {r['many_s']:>8.3f} "
                f"{r['ratio']:>6.1f} {r['threads']:>8} {r['connections']:>6} "
                f"{'-' if rt is None else f'{rt:.1f}':>7} {r['errors']:>7}"
            )
            if r["first_error"]:
                print(f"    first error: {r['first_error']}")
    xen = results.get("xapisim (op_delay 0.5 s)")
    esx = results.get("vCenter simulator")
    if xen:
        print(f"goal xapisim ratio <= 5: {'met' if xen['start']['ratio'] <= 5 else 'NOT met'}")
    if esx:
        met = esx["start"]["many_s"] <= 0.5
        print(f"goal vCenter simulator 200 starts <= 0.5 s: {'met' if met else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
