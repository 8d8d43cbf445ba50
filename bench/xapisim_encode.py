"""xapisim's own speed: building and encoding ``VM.get_all_records`` for N VMs.

Times, on an in-process ``xapisim.Database`` (no HTTP, no client decoding):

* ``records``: ``Api.dispatch("VM.get_all_records")`` -- building the reply value;
* ``xml``: turning that reply into the XML-RPC response bytes the server sends;
* ``total``: both, i.e. the server's work for one call;
* ``json``: the same reply as the JSON-RPC (v2.0) response bytes (new code only);
* ``after change``: ``total`` again right after one VM was modified (cache invalidation);
* ``cold``: ``total`` with every cached encoded record dropped first;
* ``http``: one full call over HTTP with the XenAPI SDK (client decoding included).

Each figure is the median of ``--runs`` runs. Run from the repository root:

    PYTHONPATH=drivers python bench/xapisim_encode.py [--vms 2000] [--runs 5]

Works against older xapisim versions too (they encoded with ``xmlrpc.client.dumps``), so
before/after figures come from the same script: point PYTHONPATH at the older tree.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import xmlrpc.client
from collections.abc import Callable
from typing import Any

import xapisim
from xapisim.api import Api
from xapisim.model import Config, Database

try:  # the compact encoder (ocaml-rpc's byte forms); absent in older versions
    from xapisim import wire

    if os.path.dirname(wire.__file__) != os.path.dirname(xapisim.__file__):
        wire = None  # type: ignore[assignment]  # another tree's: not the one measured
except ImportError:  # pragma: no cover - older tree
    wire = None  # type: ignore[assignment]


def median(fn: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def to_xml(resp: Any) -> bytes:
    if wire is not None:
        return wire.xml_response(resp)
    return xmlrpc.client.dumps((resp,), methodresponse=True, encoding="utf-8").encode()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vms", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-http", action="store_true")
    args = parser.parse_args()

    t0 = time.perf_counter()
    db = Database(Config(hosts=2, vms=args.vms, running=0, op_delay=0, guest_delay=0))
    populate = time.perf_counter() - t0
    api = Api(db)
    sess = db.login("root", "xenroot", "bench")

    def records() -> Any:
        return api.dispatch("VM.get_all_records", (sess,))

    resp = records()
    size = len(to_xml(resp))
    t_records = median(records, args.runs)
    t_xml = median(lambda: to_xml(resp), args.runs)
    t_total = median(lambda: to_xml(records()), args.runs)
    vm = next(r for r, rec in db.objs["VM"].items() if rec["name_label"] == "vm-01")

    def after_change() -> None:
        api.dispatch("VM.add_tags", (sess, vm, f"t{time.perf_counter()}"))
        to_xml(records())

    t_change = median(after_change, args.runs)
    caches = getattr(db, "wire_cache", {})

    def cold() -> None:  # every encoded record dropped first (no cache in older versions)
        for c in caches.values():
            c.clear()
        to_xml(records())

    t_cold = median(cold, args.runs)
    print(f"xapisim {'compact encoder' if wire is not None else 'xmlrpc.client.dumps'}")
    print(f"VMs in the reply          {len(resp['Value'])}")
    print(f"populate (Database)       {populate:.3f} s")
    print(f"records (dispatch)        {t_records:.3f} s")
    print(f"xml (encode)              {t_xml:.3f} s   ({size / 1e6:.1f} MB)")
    print(f"total (dispatch + xml)    {t_total:.3f} s")
    print(f"after one VM changed      {t_change:.3f} s")
    print(f"cold (no cached records)  {t_cold:.3f} s")
    if wire is not None:
        t_json = median(lambda: wire.json_response(records(), "2.0", 1), args.runs)
        print(f"json (dispatch + json)    {t_json:.3f} s")
    if not args.no_http:
        import XenAPI

        with xapisim.serve(hosts=2, vms=args.vms, tls=False, op_delay=0) as srv:
            s = XenAPI.Session(srv.url)
            s.xenapi.login_with_password(srv.username, srv.password, "2.21", "bench")
            t_http = median(lambda: s.xenapi.VM.get_all_records(), args.runs)
            s.xenapi.session.logout()
        print(f"http + SDK decode         {t_http:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
