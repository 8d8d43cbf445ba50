"""Listing 5000 domains of a libvirt test-driver host: vmctl vs hand-written libvirt-python.

    python bench/kvm_list.py [--domains 5000] [--repeat 5]

The host is libvirt's own test driver (test:///<generated node.xml>: 5000 domains, a third
each running, paused and shut off). Three ways to get every domain's name, UUID and state:

* vmctl: ``vmctl.connect("test:///...").list_vms()`` (the core sorts by name too);
* hand-written best: ``getAllDomainStats(STATE|VCPU|BALLOON)`` and
  ``listAllDomains(MANAGEDSAVE)``, the two batched calls (what the kvm driver does);
* naive: ``listAllDomains()`` then ``state()``, ``info()`` and ``hasManagedSaveImage()`` per
  domain (the same facts, one call each).

Prints the best wall time of ``--repeat`` runs, the ratios and the number of libvirt calls
(methods of virConnect/virDomain that ask the hypervisor; see tests/kvm/kvm_helpers.py).
The test driver is in-process, so a call costs microseconds; over libvirtd's RPC every call
is a round trip and the naive loop pays it 11667 times: ``--rpc-from qemu:///system``
measures one round trip to a real libvirtd (virConnectGetLibVersion, mean of 2000) and adds
it per call (``--rpc-us N`` sets it by hand). The batched calls' own RPC payload is not
added, so their projected times are a lower bound.
``--daemon`` opens the same generated test-driver host through a running libvirtd
(``test+unix:///<node.xml>``), so every call is a real RPC round trip (as for any remote or
system libvirt host); ``make bench`` uses it when libvirtd runs.
``--live-uri qemu:///system --domains 500`` instead defines that many (shut-off, diskless)
domains named ``vmctl-bench-*`` on a real libvirtd, measures the same three over its RPC and
undefines them again.
Goal (issue 3): vmctl within 1.2x of the hand-written best, >= 10x faster than naive.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import libvirt  # noqa: E402

import vmctl  # noqa: E402
from tests.kvm.kvm_helpers import count_calls, write_node_xml  # noqa: E402
from vmctl_kvm._state import SHUTOFF, to_power_state  # noqa: E402


def hand_written(conn: Any) -> list[tuple[str, str, str]]:
    kinds = (
        libvirt.VIR_DOMAIN_STATS_STATE
        | libvirt.VIR_DOMAIN_STATS_VCPU
        | libvirt.VIR_DOMAIN_STATS_BALLOON
    )  # vCPUs and memory, as VMInfo has them
    stats = conn.getAllDomainStats(kinds, 0)
    saved = {
        d.UUIDString() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_MANAGEDSAVE)
    }
    out = []
    for dom, st in stats:
        uuid = dom.UUIDString()
        state, _ = to_power_state(st["state.state"], st["state.reason"], uuid in saved)
        st.get("vcpu.current"), st.get("balloon.maximum")
        out.append((uuid, dom.name(), state.value))
    return out


def naive(conn: Any) -> list[tuple[str, str, str]]:
    out = []
    for dom in conn.listAllDomains(0):
        state, reason = dom.state()
        dom.info()  # vCPUs and memory, as VMInfo carries them
        saved = state == SHUTOFF and bool(dom.hasManagedSaveImage(0))
        ps, _ = to_power_state(state, reason, saved)
        out.append((dom.UUIDString(), dom.name(), ps.value))
    return out


@contextlib.contextmanager
def live_domains(uri: str | None, count: int) -> Iterator[bool]:
    """Define ``count`` diskless shut-off domains ``vmctl-bench-NNNNN`` on ``uri``; undefine
    them afterwards. Yields False (and does nothing) without a URI."""
    if not uri:
        yield False
        return
    conn = libvirt.open(uri)
    made = []
    try:
        for i in range(count):
            xml = (
                f"<domain type='qemu'><name>vmctl-bench-{i:05d}</name>"
                "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
                "<os><type arch='x86_64'>hvm</type></os></domain>"
            )
            made.append(conn.defineXML(xml))
        yield True
    finally:
        for dom in made:
            with contextlib.suppress(libvirt.libvirtError):
                dom.undefine()
        conn.close()


def measure_rpc_us(uri: str, n: int = 2000) -> float:
    """Mean wall time of one cheap RPC (virConnectGetLibVersion) to the daemon at ``uri``."""
    conn = libvirt.open(uri)
    try:
        conn.getLibVersion()
        t0 = time.perf_counter()
        for _ in range(n):
            conn.getLibVersion()
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--domains", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--rpc-us",
        type=float,
        default=0.0,
        help="add this many microseconds per libvirt call (RPC estimate)",
    )
    ap.add_argument(
        "--rpc-from",
        metavar="URI",
        help="measure the per-call round trip on this libvirt URI and add it",
    )
    ap.add_argument(
        "--daemon",
        action="store_true",
        help="open the test-driver host through a running libvirtd (test+unix://), so every "
        "call is a real RPC round trip",
    )
    ap.add_argument(
        "--live-uri",
        metavar="URI",
        help="measure on a real libvirtd: define --domains domains there",
    )
    args = ap.parse_args()
    libvirt.registerErrorHandler(lambda *_: None, None)
    if args.rpc_from:
        args.rpc_us = measure_rpc_us(args.rpc_from)
    with (
        tempfile.TemporaryDirectory(prefix="vmctl-bench-") as tmp,
        live_domains(args.live_uri, args.domains) as live,
    ):
        if live:
            uri = args.live_uri
            args.rpc_us = 0.0  # measured for real
        else:
            scheme = "test+unix" if args.daemon else "test"
            uri = f"{scheme}://{write_node_xml(Path(tmp) / 'node.xml', args.domains)}"
        t0 = time.perf_counter()
        hv = vmctl.connect(uri)
        opened = time.perf_counter() - t0
        conn = libvirt.open(uri)
        try:
            ways: list[tuple[str, Callable[[], list[Any]]]] = [
                ("vmctl list_vms()", hv.list_vms),
                ("hand-written (2 batched calls)", lambda: hand_written(conn)),
                ("naive per-domain loop", lambda: naive(conn)),
            ]
            n_calls = []
            for _, fn in ways:
                with count_calls() as calls:
                    assert len(fn()) >= args.domains
                n_calls.append(sum(calls.values()))
            # Interleaved rounds, best of each: load from elsewhere hits all three alike.
            best = [float("inf")] * len(ways)
            for _ in range(args.repeat):
                for k, (_, fn) in enumerate(ways):
                    gc.collect()
                    t0 = time.perf_counter()
                    fn()
                    best[k] = min(best[k], time.perf_counter() - t0)
            rows = [
                (label, best[k] + n_calls[k] * args.rpc_us / 1e6, n_calls[k])
                for k, (label, _) in enumerate(ways)
            ]
            vm_rows = {(i.uuid, i.name, i.state.value) for i in hv.list_vms()}
            assert vm_rows == set(hand_written(conn)) == set(naive(conn)), "results differ"
            assert len(vm_rows) >= args.domains
        finally:
            conn.close()
            hv.close()
    hand = rows[1][1]
    print(
        f"{args.domains} domains on {uri.split('?')[0][:60]}... (open {opened:.2f} s), "
        f"best of {args.repeat}" + (f", +{args.rpc_us:g} us per call" if args.rpc_us else "")
    )
    print(f"{'':32} {'wall s':>9} {'vs hand':>8} {'calls':>7}")
    for label, seconds, n_calls in rows:
        print(f"{label:32} {seconds:9.4f} {seconds / hand:7.2f}x {n_calls:7d}")
    vm_s, naive_s = rows[0][1], rows[2][1]
    print(
        f"vmctl / hand-written = {vm_s / hand:.2f}x (goal <= 1.2x); "
        f"naive / vmctl = {naive_s / vm_s:.1f}x (goal >= 10x)"
    )
    if not live and not args.rpc_us and not args.daemon:
        print(
            "(the test driver is in-process: a call costs microseconds, not a round trip; "
            "--daemon, --rpc-from qemu:///system or --live-uri URI show the naive loop over RPC)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
