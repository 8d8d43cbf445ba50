"""Listing the VMs of a Hyper-V host (hypervsim, a child process, over HTTPS with NTLM),
side by side:

* vmctl: ``hv.list_vms()`` (the hyperv driver: three projected WQL enumerations —
  Msvm_ComputerSystem, Msvm_ProcessorSettingData, Msvm_MemorySettingData — each an
  optimized Enumerate plus Pulls of up to 1000 items, as the envelope size allows);
* hand-written: the same three WQL queries with pypsrp's ``WSMan`` directly (Enumerate with
  ``OptimizeEnumeration``/``MaxElements`` 1000, Pull until ``EndOfSequence``), the fields
  read with ElementTree — what a careful user writes by hand;
* per-VM loop: one enumeration of the VMs' names, then one ``Get`` of each VM's
  Msvm_ComputerSystem (state) — the naive shape (still without vCPUs and memory, which
  would be two more Gets per VM).

Each is timed ``--runs`` times, interleaved (median; the per-VM loop once); round trips
counted per WS-Man call.

    python bench/hyperv_list.py [--vms 2000] [--runs 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "drivers"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from pypsrp.wsman import SelectorSet, WSMan  # noqa: E402

import vmctl  # noqa: E402
from tests.hosts.hyperv import running_simulator  # noqa: E402

V2 = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2/"
N = "http://schemas.xmlsoap.org/ws/2004/09/enumeration"
W = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
S = "http://www.w3.org/2003/05/soap-envelope"
WQL = "http://schemas.microsoft.com/wbem/wsman/1/WQL"
VMS = "Description = 'Microsoft Virtual Machine'"


class Counting:
    """A pypsrp WSMan whose invoke() calls are counted."""

    def __init__(self, w: WSMan) -> None:
        self.w = w
        self.calls = 0

    def invoke(self, *args: Any, **kw: Any) -> ET.Element:
        self.calls += 1
        return self.w.invoke(*args, **kw)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def query(c: Counting, wql: str) -> list[dict[str, str]]:
    e = ET.Element(f"{{{N}}}Enumerate")
    ET.SubElement(e, f"{{{W}}}OptimizeEnumeration")
    ET.SubElement(e, f"{{{W}}}MaxElements").text = "1000"
    ET.SubElement(e, f"{{{W}}}Filter", Dialect=WQL).text = wql
    resp = c.invoke(f"{N}/Enumerate", V2 + "*", e)
    node = resp.find(f"{{{S}}}Body/{{{N}}}EnumerateResponse")
    out: list[dict[str, str]] = []
    while node is not None:
        for holder in (f"{{{W}}}Items", f"{{{N}}}Items"):
            items = node.find(holder)
            if items is not None:
                out += [{_local(p.tag): p.text or "" for p in item} for item in items]
        ctx = node.findtext(f"{{{N}}}EnumerationContext")
        ended = (
            node.find(f"{{{W}}}EndOfSequence") is not None
            or node.find(f"{{{N}}}EndOfSequence") is not None
        )
        if ended or not ctx:
            break
        pull = ET.Element(f"{{{N}}}Pull")
        ET.SubElement(pull, f"{{{N}}}EnumerationContext").text = ctx
        ET.SubElement(pull, f"{{{N}}}MaxElements").text = "1000"
        node = c.invoke(f"{N}/Pull", V2 + "*", pull).find(f"{{{S}}}Body/{{{N}}}PullResponse")
    return out


def by_hand(c: Counting) -> int:
    css = query(c, f"SELECT Name, ElementName, EnabledState FROM Msvm_ComputerSystem WHERE {VMS}")
    cpus = {
        r["InstanceID"].upper(): r["VirtualQuantity"]
        for r in query(c, "SELECT InstanceID, VirtualQuantity FROM Msvm_ProcessorSettingData")
    }
    mems = {
        r["InstanceID"].upper(): r["VirtualQuantity"]
        for r in query(c, "SELECT InstanceID, VirtualQuantity FROM Msvm_MemorySettingData")
    }
    rows = []
    for cs in css:
        g = cs["Name"].upper()
        rows.append(
            (
                g,
                cs["ElementName"],
                int(cs["EnabledState"]),
                int(cpus.get(f"MICROSOFT:{g}\\B637F346-6A0E-4DEC-AF52-BD70CB80A21D\\0", 0)),
                int(mems.get(f"MICROSOFT:{g}\\4764334D-E001-4176-82EE-5594EC9B530E", 0)),
            )
        )
    return len(rows)


def per_vm(c: Counting) -> int:
    names = query(c, f"SELECT Name FROM Msvm_ComputerSystem WHERE {VMS}")
    n = 0
    for row in names:
        ss = SelectorSet()
        ss.add_option("CreationClassName", "Msvm_ComputerSystem")
        ss.add_option("Name", row["Name"])
        body = c.invoke(
            "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get",
            V2 + "Msvm_ComputerSystem",
            None,
            selector_set=ss,
        )
        n += body.find(f"{{{S}}}Body") is not None
    return n


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    t0 = time.perf_counter()
    with running_simulator(hosts=1, vms=a.vms, running=a.vms // 4) as sim:
        print(f"hypervsim with {a.vms} VMs up in {time.perf_counter() - t0:.1f} s")
        hv = vmctl.connect(
            f"hyperv://{sim.username}@127.0.0.1:{sim.ports[0]}",
            password=sim.password,
            cafile=sim.cafile,
            env={},
            timeouts=vmctl.Timeouts(300),
        )
        w = Counting(
            WSMan(
                "127.0.0.1",
                port=sim.ports[0],
                username=sim.username,
                password=sim.password,
                ssl=True,
                auth="negotiate",
                cert_validation=sim.cafile,  # type: ignore[arg-type]
                max_envelope_size=512000,
                read_timeout=300,
                no_proxy=True,
            )
        )
        driver = hv._driver  # type: ignore[attr-defined]
        times: dict[str, list[float]] = {"vmctl": [], "hand": [], "per_vm": []}
        trips: dict[str, int] = {}
        for run in range(a.runs):
            before = driver.round_trips
            dt, n = timed(lambda: len(hv.list_vms()))
            assert n == a.vms, n
            times["vmctl"].append(dt)
            trips["vmctl"] = driver.round_trips - before
            before = w.calls
            dt, n = timed(lambda: by_hand(w))
            assert n == a.vms, n
            times["hand"].append(dt)
            trips["hand"] = w.calls - before
            if run == 0:  # slow (one Get per VM): once
                before = w.calls
                dt, n = timed(lambda: per_vm(w))
                assert n == a.vms, n
                times["per_vm"].append(dt)
                trips["per_vm"] = w.calls - before
        hv.close()
        w.w.close()
    med = {k: statistics.median(v) for k, v in times.items() if v}
    print(f"\n{a.vms} VMs, median of {a.runs} runs (round trips per listing):")
    for k, label in (
        ("vmctl", "vmctl hv.list_vms()"),
        ("hand", "hand-written pypsrp WSMan WQL enumeration"),
        ("per_vm", "per-VM loop (enumerate names, Get each)"),
    ):
        print(f"  {label:45s} {med[k] * 1000:9.1f} ms  {trips[k]:5d} round trips")
    print(f"  vmctl / hand-written: {med['vmctl'] / med['hand']:.2f}x")
    print(f"  per-VM loop / vmctl:  {med['per_vm'] / med['vmctl']:.1f}x")
    if a.json:
        a.json.write_text(
            json.dumps({"vms": a.vms, "median_s": med, "round_trips": trips}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
