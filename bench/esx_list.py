"""Listing 2000 VMs on a vCenter (the vSphere API simulator): vmctl vs hand-written
PropertyCollector code vs the naive per-VM attribute loop.

    python bench/esx_list.py [--vms 2000] [--repeat 5] [--json FILE]

Starts the simulator in vCenter mode (tests/hosts/esx.py; one cluster holding every VM),
then times each way of getting (name, UUID, power state, vCPUs, memory, host) for every VM
and counts its HTTP round trips (SOAP requests). Prints the wall-time ratios to the
hand-written best. Goal: vmctl within 1.2x of it and at most 5 round trips.
"""

from __future__ import annotations

import argparse
import json
import ssl
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import vmctl  # noqa: E402
from tests.hosts.esx import VcsimServer, running_simulator  # noqa: E402

#: What a VMInfo needs (name, UUID, state, vCPUs, memory, host).
MINIMAL = [
    "name",
    "config.instanceUuid",
    "runtime.powerState",
    "config.hardware.numCPU",
    "config.hardware.memoryMB",
    "runtime.host",
]
#: The same job done right: templates dropped (config.template) and disconnected VMs seen
#: (runtime.connectionState), as vmctl's listing does.
PATHS = [*MINIMAL, "config.template", "runtime.connectionState"]


def counting(stub: Any) -> list[int]:
    """Count the SOAP requests a pyvmomi stub makes (wraps its InvokeMethod)."""
    box = [0]
    original = stub.InvokeMethod

    def invoke(*args: Any, **kwargs: Any) -> Any:
        box[0] += 1
        return original(*args, **kwargs)

    stub.InvokeMethod = invoke
    return box


def pyvmomi_session(srv: VcsimServer) -> tuple[Any, list[int]]:
    from pyVim.connect import Connect

    ctx = ssl.create_default_context(cafile=str(srv.cafile))
    si = Connect(host=srv.host, port=srv.port, user=srv.username, pwd=srv.password, sslContext=ctx)
    return si, counting(si._stub)


def hand_written(si: Any, content: Any, paths: list[str] = PATHS) -> list[tuple[Any, ...]]:
    """The best plain pyvmomi: one ContainerView, one RetrievePropertiesEx (+ its pages)."""
    from pyVmomi import vim, vmodl

    pcq = vmodl.query.PropertyCollector
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        spec = pcq.FilterSpec(
            objectSet=[
                pcq.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[
                        pcq.TraversalSpec(
                            name="v", path="view", skip=False, type=vim.view.ContainerView
                        )
                    ],
                )
            ],
            propSet=[pcq.PropertySpec(type=vim.VirtualMachine, pathSet=paths)],
        )
        pc = content.propertyCollector
        out = []
        result = pc.RetrievePropertiesEx(specSet=[spec], options=pcq.RetrieveOptions())
        while result is not None:
            for oc in result.objects:
                props = {p.name: p.val for p in oc.propSet}
                if not props.get("config.template"):
                    out.append(tuple(props.get(p) for p in paths))
            result = pc.ContinueRetrievePropertiesEx(token=result.token) if result.token else None
        return out
    finally:
        view.DestroyView()


def naive(si: Any, content: Any) -> list[tuple[Any, ...]]:
    """What pyvmomi invites: attribute reads on each managed object."""
    from pyVmomi import vim

    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return [
            (
                vm.name,
                vm.config.instanceUuid,
                vm.runtime.powerState,
                vm.config.hardware.numCPU,
                vm.config.hardware.memoryMB,
                vm.runtime.host,
            )
            for vm in view.view
        ]
    finally:
        view.DestroyView()


def measure(fn: Callable[[], int], counter: Callable[[], int], repeat: int) -> dict[str, float]:
    times, trips, count = [], [], 0
    for _ in range(repeat):
        before = counter()
        start = time.perf_counter()
        count = fn()
        times.append(time.perf_counter() - start)
        trips.append(counter() - before)
    return {
        "seconds": statistics.median(times),
        "best_seconds": min(times),
        "round_trips": max(trips),
        "vms": count,
    }


def merge(rows: list[dict[str, float]]) -> dict[str, float]:
    return {
        "seconds": statistics.median(r["seconds"] for r in rows),
        "best_seconds": min(r["seconds"] for r in rows),
        "round_trips": max(r["round_trips"] for r in rows),
        "vms": rows[-1]["vms"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--naive-repeat", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    with running_simulator("vcenter", vms=args.vms, standalone_hosts=0) as srv:
        print(
            f"simulator: {srv.vm_count} VMs, ready in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        uri = f"vcenter://{srv.username}@{srv.host}:{srv.port}/DC0/DC0_C0"
        si, box = pyvmomi_session(srv)
        try:
            content = si.RetrieveContent()
            with vmctl.connect(uri, password=srv.password, cafile=str(srv.cafile)) as hv:
                driver: Any = hv._driver
                first = measure(lambda: len(hv.list_vms()), lambda: driver.round_trips, 1)
                # Interleaved, so that load on the machine hits every way alike.
                runs: dict[str, list[dict[str, float]]] = {"vmctl": [], "best": [], "min": []}
                for _ in range(args.repeat):
                    runs["vmctl"].append(
                        measure(lambda: len(hv.list_vms()), lambda: driver.round_trips, 1)
                    )
                    runs["best"].append(
                        measure(lambda: len(hand_written(si, content)), lambda: box[0], 1)
                    )
                    runs["min"].append(
                        measure(lambda: len(hand_written(si, content, MINIMAL)), lambda: box[0], 1)
                    )
            warm, best, minimal = (merge(runs[k]) for k in ("vmctl", "best", "min"))
            slow = measure(lambda: len(naive(si, content)), lambda: box[0], args.naive_repeat)
        finally:
            from pyVim.connect import Disconnect

            Disconnect(si)

    rows = {
        "vmctl list_vms (first call, makes the view)": first,
        "vmctl list_vms": warm,
        "hand-written PropertyCollector (same properties)": best,
        "hand-written, only the 6 VMInfo properties": minimal,
        "naive per-VM attributes": slow,
    }
    base = best["seconds"]
    print(f"\nListing {best['vms']} VMs on a vCenter simulator (median of {args.repeat}):\n")
    print(f"{'way':<50} {'VMs':>5} {'seconds':>8} {'ratio':>6} {'round trips':>12}")
    for label, row in rows.items():
        print(
            f"{label:<50} {row['vms']:>5} {row['seconds']:>8.3f} "
            f"{row['seconds'] / base:>6.2f} {row['round_trips']:>12.0f}"
        )
    ok = (
        warm["seconds"] <= 1.2 * base
        and warm["round_trips"] <= 5
        and first["round_trips"] <= 5
        and warm["vms"] == best["vms"]
    )
    print(f"\ngoal (vmctl <= 1.2x hand-written, <= 5 round trips): {'met' if ok else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "goal_met": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
