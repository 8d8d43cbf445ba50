"""Listing VMs on a vCenter (the vSphere API simulator), side by side: vmctl, hand-written
pyvmomi PropertyCollector code, the raw floor (the same RetrievePropertiesEx bytes sent on
one HTTPS connection, the reply parsed with lxml into tuples), and the naive per-VM
attribute loop; at several inventory sizes.

    python bench/esx_list.py [--vms 500,2000,8000] [--repeat 5] [--json FILE]

For each size it starts the simulator in vCenter mode (tests/hosts/esx.py; one cluster
holding every VM), then times each way of getting (name, UUID, power state, vCPUs, memory,
host) for every VM (interleaved, median of --repeat) and counts its HTTP round trips (SOAP
requests). Prints seconds, ms per VM and ratios. Goals (issue 11, at 2000 VMs): vmctl
<= 1.3x the floor of the same run and >= 5x faster than hand-written pyvmomi, <= 5 round
trips. ``VMCTL_ESX_FASTPATH=0`` shows vmctl through pyvmomi's deserializer.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
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


def floor(si: Any, content: Any, srv: VcsimServer, paths: list[str] = PATHS) -> Any:
    """The raw floor: the RetrievePropertiesEx request serialized once, sent on one kept-alive
    HTTPS connection with the session cookie, the reply parsed with lxml into one tuple per
    VM (the listed values, templates dropped); ContinueRetrievePropertiesEx pages followed.
    Returns (list function, round-trip counter)."""
    from lxml import etree
    from pyVmomi import vim, vmodl

    pcq = vmodl.query.PropertyCollector
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
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
    stub = si._stub
    pc = content.propertyCollector
    body = stub.SerializeRequest(
        pc, pcq._GetMethodInfo("RetrievePropertiesEx"), [[spec], pcq.RetrieveOptions()]
    )
    ctx = ssl.create_default_context(cafile=str(srv.cafile))
    conn = http.client.HTTPSConnection(srv.host, srv.port, context=ctx)
    headers = {
        "Cookie": stub.cookie,
        "SOAPAction": stub.versionId,
        "Content-Type": "text/xml; charset=UTF-8",
    }
    trips = [0]
    ns = "{urn:vim25}"
    xsi_type = "{http://www.w3.org/2001/XMLSchema-instance}type"
    index = {p: i for i, p in enumerate(paths)}
    template = index["config.template"]

    def post(data: bytes) -> Any:
        trips[0] += 1
        conn.request("POST", stub.path, data, headers)
        return etree.fromstring(conn.getresponse().read())

    def run() -> int:
        out = []
        root = post(body)
        while True:
            returnval = root.find(f".//{ns}returnval")
            if returnval is None:
                break
            token = None
            for part in returnval:
                if part.tag == f"{ns}token":
                    token = part.text
                    continue
                row: list[Any] = [None] * len(paths)
                for prop in part.iterchildren(f"{ns}propSet"):
                    name, val = prop[0].text, prop[1]
                    kind = val.get(xsi_type)
                    text = val.text
                    if kind == "xsd:int":
                        row[index[name]] = int(text)
                    elif kind == "xsd:boolean":
                        row[index[name]] = text == "true"
                    else:
                        row[index[name]] = text
                if not row[template]:
                    out.append(tuple(row))
            if not token:
                break
            more = stub.SerializeRequest(
                pc, pcq._GetMethodInfo("ContinueRetrievePropertiesEx"), [token]
            )
            root = post(more)
        return len(out)

    return run, (lambda: trips[0]), (lambda: (conn.close(), view.DestroyView()))


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


def one_size(vms: int, repeat: int, naive_repeat: int, naive_max: int) -> dict[str, Any]:
    started = time.perf_counter()
    with running_simulator("vcenter", vms=vms, standalone_hosts=0) as srv:
        print(
            f"simulator: {srv.vm_count} VMs, ready in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        uri = f"vcenter://{srv.username}@{srv.host}:{srv.port}/DC0/DC0_C0"
        si, box = pyvmomi_session(srv)
        try:
            content = si.RetrieveContent()
            raw, raw_trips, raw_close = floor(si, content, srv)
            try:
                with vmctl.connect(uri, password=srv.password, cafile=str(srv.cafile)) as hv:
                    driver: Any = hv._driver
                    first = measure(lambda: len(hv.list_vms()), lambda: driver.round_trips, 1)
                    # Interleaved, so that load on the machine hits every way alike.
                    runs: dict[str, list[dict[str, float]]] = {"vmctl": [], "hand": [], "raw": []}
                    for _ in range(repeat):
                        runs["vmctl"].append(
                            measure(lambda: len(hv.list_vms()), lambda: driver.round_trips, 1)
                        )
                        runs["hand"].append(
                            measure(lambda: len(hand_written(si, content)), lambda: box[0], 1)
                        )
                        runs["raw"].append(measure(raw, raw_trips, 1))
                    fast_on = bool(driver._fast.enabled)
            finally:
                raw_close()
            warm, hand, rawm = (merge(runs[k]) for k in ("vmctl", "hand", "raw"))
            slow = (
                measure(lambda: len(naive(si, content)), lambda: box[0], naive_repeat)
                if vms <= naive_max
                else None
            )
        finally:
            from pyVim.connect import Disconnect

            Disconnect(si)
    rows = {
        "vmctl list_vms (first call, makes the view)": first,
        "vmctl list_vms": warm,
        "hand-written pyvmomi PropertyCollector": hand,
        "floor: raw RetrievePropertiesEx + lxml": rawm,
    }
    if slow is not None:
        rows["naive per-VM attribute loop"] = slow
    return {
        "vms": vms,
        "rows": rows,
        "fast_path": fast_on,
        "vmctl_vs_floor": warm["seconds"] / rawm["seconds"],
        "hand_vs_vmctl": hand["seconds"] / warm["seconds"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", default="500,2000,8000", help="comma-separated sizes")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--naive-repeat", type=int, default=1)
    parser.add_argument("--naive-max", type=int, default=8000, help="skip the naive loop above")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is not met")
    args = parser.parse_args(argv)

    results = []
    for vms in (int(v) for v in args.vms.split(",")):
        res = one_size(vms, args.repeat, args.naive_repeat, args.naive_max)
        results.append(res)
        rows = res["rows"]
        base = rows["floor: raw RetrievePropertiesEx + lxml"]["seconds"]
        n = rows["vmctl list_vms"]["vms"]
        print(
            f"\nListing {n} VMs on a vCenter simulator (median of {args.repeat}; vmctl fast "
            f"path {'on' if res['fast_path'] else 'OFF'}):\n"
        )
        best = rows["floor: raw RetrievePropertiesEx + lxml"]["best_seconds"]
        print(
            f"{'way':<45} {'VMs':>5} {'seconds':>8} {'ms/VM':>7} {'x floor':>8} "
            f"{'best':>7} {'x floor':>8} {'round trips':>12}"
        )
        for label, row in rows.items():
            print(
                f"{label:<45} {row['vms']:>5} {row['seconds']:>8.3f} "
                f"{1000 * row['seconds'] / max(row['vms'], 1):>7.3f} "
                f"{row['seconds'] / base:>8.2f} {row['best_seconds']:>7.3f} "
                f"{row['best_seconds'] / best:>8.2f} {row['round_trips']:>12.0f}"
            )
        w, h = rows["vmctl list_vms"], rows["hand-written pyvmomi PropertyCollector"]
        print(
            f"vmctl = {res['vmctl_vs_floor']:.2f}x the floor; hand-written pyvmomi = "
            f"{res['hand_vs_vmctl']:.1f}x vmctl (best of each: "
            f"{w['best_seconds'] / best:.2f}x, {h['best_seconds'] / w['best_seconds']:.1f}x); "
            f"load average {os.getloadavg()[0]:.1f}"
        )
    ok = True
    for res in results:
        rows = res["rows"]
        counts = {row["vms"] for label, row in rows.items() if not label.startswith("naive")}
        if len(counts) != 1:
            ok = False
        if rows["vmctl list_vms"]["round_trips"] > 5:
            ok = False
        if res["vms"] == 2000 and not (res["vmctl_vs_floor"] <= 1.3 and res["hand_vs_vmctl"] >= 5):
            ok = False
    print(
        "\ngoal (2000 VMs: vmctl <= 1.3x the floor, >= 5x faster than hand-written pyvmomi; "
        f"<= 5 round trips; every way lists the same VMs): {'met' if ok else 'NOT met'}"
    )
    if args.json:
        args.json.write_text(json.dumps({"results": results, "goal_met": ok}, indent=2))
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
