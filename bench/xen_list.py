"""Listing VMs of a XenAPI pool (the xapisim simulator over HTTPS), side by side: vmctl,
hand-written XenAPI SDK code, the floors of both transports, and the naive per-VM loop; at
several pool sizes.

* vmctl: ``hv.list_vms()`` (the xen driver: one VM.get_all_records over JSON-RPC where the
  host offers it, then VMInfo values); also with ``VMCTL_XEN_JSONRPC=0``-style XML-RPC;
* hand-written: ``VM.get_all_records()`` through the XenAPI SDK (XML-RPC), filtered to real
  VMs, the fields vmctl reports pulled out (uuid, name, power state, vCPUs, memory, host);
* floor, JSON-RPC: the same call as one JSON-RPC request on a kept-alive HTTPS connection,
  ``json.loads`` and the same fields pulled out;
* floor, XML-RPC: the XML-RPC request bytes sent the same way, the reply read with lxml
  (the fastest XML-RPC unmarshaller at hand: the alternative to JSON-RPC) into the fields;
* naive: ``VM.get_all()`` and one ``VM.get_record`` per VM.

Each is timed ``--runs`` times, interleaved (median). Round trips are counted at the
transport. Goals (issue 11, at 2000 VMs): vmctl <= 1.5x the floor of its transport and
>= 3x faster than the SDK's get_all_records.

    python bench/xen_list.py [--vms 500,2000,8000] [--runs 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import sys
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "drivers"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import XenAPI  # noqa: E402
from _table import merge, print_table, timed  # noqa: E402

import vmctl  # noqa: E402
import xapisim  # noqa: E402

NULL = "OpaqueRef:NULL"


class CountingTransport(xmlrpc.client.SafeTransport):
    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self.calls = 0

    def request(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return super().request(*args, **kwargs)


def fields(recs: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What a listing reports, for the real VMs (not templates, snapshots, dom0)."""
    return [
        (
            r["uuid"],
            r["name_label"],
            r["power_state"],
            int(r["VCPUs_at_startup"]),
            int(r["memory_static_max"]) // 2**20,
            r["resident_on"] if r["resident_on"] != NULL else r["affinity"],
        )
        for r in recs.values()
        if not (r["is_a_template"] or r["is_a_snapshot"] or r["is_control_domain"])
    ]


class RawFloor:
    """One kept-alive HTTPS connection; the request bytes made once."""

    def __init__(self, srv: Any, ctx: ssl.SSLContext, session: str) -> None:
        self.conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx)
        self.calls = 0
        self.json_body = json.dumps(
            {"jsonrpc": "2.0", "method": "VM.get_all_records", "params": [session], "id": 1}
        ).encode()
        self.xml_body = xmlrpc.client.dumps((session,), "VM.get_all_records").encode()

    def post(self, path: str, body: bytes, kind: str) -> bytes:
        self.calls += 1
        self.conn.request("POST", path, body, {"Content-Type": kind})
        return self.conn.getresponse().read()

    def json(self) -> int:
        doc = json.loads(self.post("/jsonrpc", self.json_body, "application/json"))
        return len(fields(doc["result"]))

    def xml_lxml(self) -> int:
        """XML-RPC read with lxml: only what a listing needs (struct members as text)."""
        from lxml import etree

        root = etree.fromstring(self.post("/", self.xml_body, "text/xml"))
        # methodResponse/params/param/value/struct{Status, Value: struct{ref: struct}}
        outer = root[0][0][0][0]
        value = None
        for member in outer:
            if member[0].text == "Value":
                value = member[1][0]
        assert value is not None
        recs: dict[str, Any] = {}
        for member in value:
            rec: dict[str, Any] = {}
            for m in member[1][0]:
                v = m[1]
                if len(v):
                    inner = v[0]
                    tag = inner.tag
                    if tag == "boolean":
                        rec[m[0].text] = inner.text == "1"
                    elif tag == "string":
                        rec[m[0].text] = inner.text or ""
                    else:
                        rec[m[0].text] = None  # structs/arrays: not needed for a listing
                else:
                    rec[m[0].text] = v.text or ""
            recs[member[0].text] = rec
        return len(fields(recs))

    def close(self) -> None:
        self.conn.close()


def one_size(vms: int, runs: int, naive_max: int) -> dict[str, Any]:
    password = "bench-password"
    started = time.perf_counter()
    with xapisim.serve(hosts=2, vms=vms, password=password, op_delay=0.0) as srv:
        print(
            f"xapisim: {vms} VMs, ready in {time.perf_counter() - started:.1f} s", file=sys.stderr
        )
        ctx = ssl.create_default_context(cafile=srv.cafile)
        transport = CountingTransport(ctx)
        session = XenAPI.Session(srv.url, transport=transport)
        session.xenapi.login_with_password("root", password, "2.21", "bench")
        api = session.xenapi
        raw = RawFloor(srv, ctx, session._session)

        def hand() -> int:
            return len(fields(api.VM.get_all_records()))

        def naive() -> int:
            rows = []
            for ref in api.VM.get_all():
                r = api.VM.get_record(ref)
                if not (r["is_a_template"] or r["is_a_snapshot"] or r["is_control_domain"]):
                    rows.append((r["uuid"], r["name_label"], r["power_state"]))
            return len(rows)

        uri = f"xen://root@127.0.0.1:{srv.port}"
        try:
            with vmctl.connect(uri, password=password, cafile=srv.cafile, env={}) as hv:
                driver: Any = hv._driver
                rpc = driver._c.jsonrpc
                hv.list_vms()  # warm-up (host names are cached once), probes /jsonrpc
                offered = rpc.offered
                hand(), raw.json(), raw.xml_lxml()  # warm the simulator's caches

                def vmctl_xml() -> int:
                    rpc.offered = False
                    try:
                        return len(hv.list_vms())
                    finally:
                        rpc.offered = offered

                runs_: dict[str, list[dict[str, float]]] = {
                    k: [] for k in ("vmctl", "vmctl_xml", "hand", "json", "lxml")
                }
                for _ in range(runs):
                    trips = lambda: driver.round_trips  # noqa: E731
                    runs_["vmctl"].append(timed(lambda: len(hv.list_vms()), trips, 1))
                    runs_["hand"].append(timed(hand, lambda: transport.calls, 1))
                    runs_["json"].append(timed(raw.json, lambda: raw.calls, 1))
                    runs_["lxml"].append(timed(raw.xml_lxml, lambda: raw.calls, 1))
                    runs_["vmctl_xml"].append(timed(vmctl_xml, trips, 1))
            naive_row = timed(naive, lambda: transport.calls, 1) if vms <= naive_max else None
        finally:
            raw.close()
            api.session.logout()
    rows = {
        "vmctl list_vms (JSON-RPC)": merge(runs_["vmctl"]),
        "vmctl list_vms (XML-RPC, JSON-RPC off)": merge(runs_["vmctl_xml"]),
        "hand-written XenAPI SDK get_all_records": merge(runs_["hand"]),
        "floor: raw JSON-RPC + json.loads": merge(runs_["json"]),
        "floor: raw XML-RPC + lxml": merge(runs_["lxml"]),
    }
    if naive_row is not None:
        rows["naive get_all + get_record per VM"] = naive_row
    v = rows["vmctl list_vms (JSON-RPC)"]["seconds"]
    return {
        "vms": vms,
        "jsonrpc_offered": offered,
        "rows": rows,
        "vmctl_vs_floor": v / rows["floor: raw JSON-RPC + json.loads"]["seconds"],
        "sdk_vs_vmctl": rows["hand-written XenAPI SDK get_all_records"]["seconds"] / v,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", default="500,2000,8000", help="comma-separated sizes")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--naive-max", type=int, default=8000, help="skip the naive loop above")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is not met")
    args = parser.parse_args(argv)
    results = []
    for vms in (int(v) for v in args.vms.split(",")):
        res = one_size(vms, args.runs, args.naive_max)
        results.append(res)
        rows = res["rows"]
        print(
            f"\nListing {vms} VMs (xapisim over HTTPS, median of {args.runs}; "
            f"JSON-RPC offered: {res['jsonrpc_offered']}):\n"
        )
        print_table(rows, "floor: raw JSON-RPC + json.loads")
        print(
            f"vmctl = {res['vmctl_vs_floor']:.2f}x the JSON-RPC floor; the SDK's "
            f"get_all_records = {res['sdk_vs_vmctl']:.1f}x vmctl; "
            f"load average {os.getloadavg()[0]:.1f}"
        )
    ok = True
    for res in results:
        counts = {r["vms"] for r in res["rows"].values()}
        if counts != {res["vms"]}:
            ok = False
        if res["vms"] == 2000 and not (res["vmctl_vs_floor"] <= 1.5 and res["sdk_vs_vmctl"] >= 3):
            ok = False
    print(
        "\ngoal (2000 VMs: vmctl <= 1.5x its transport's floor, >= 3x faster than the SDK's "
        f"get_all_records; every way lists the same VMs): {'met' if ok else 'NOT met'}"
    )
    if args.json:
        args.json.write_text(json.dumps({"results": results, "goal_met": ok}, indent=2))
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
