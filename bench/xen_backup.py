"""Backup and restore of one VM on xapisim (in this process, HTTPS): vmctl vs a plain
download of the disk's VHD export, and incrementals through the VHD stream vs over NBD.

    python bench/xen_backup.py [--mib 256] [--data-mib 96] [--change-pct 5] [--repeat 3]
                               [--chunk-kib 4096] [--spread]

Makes a VM with one disk of ``--mib`` MiB, writes ``--data-mib`` MiB of incompressible data
at its start (one VHD import), then times, interleaved ``--repeat`` times (median):

* ``download``: one ``GET /export_raw_vdi?format=vhd`` of the disk with http.client (the
  floor: every allocated byte once, no snapshot);
* per data path (``vhd``: no network has an NBD purpose, every read is the VHD stream;
  ``nbd``/``nbd+tls``: the pool network has purpose ``insecure_nbd``/``nbd``):
  ``full``: ``vm.backup(repo, full=True)`` into a new directory repository (CBT enable,
  VM.snapshot, one VHD export, hashing, zstd, chunk files, manifest; snapshot VM
  destroyed, data_destroy of its VDI); ``incremental``: after rewriting ``--change-pct``
  % of the data (64 KiB blocks: contiguous from the middle of the data, or with
  ``--spread`` every n-th block), ``vm.backup(repo)`` on top of it: the bytes that crossed
  the wire for the disk's content (VHD stream bytes taken by the driver, or READ bytes
  counted at the simulator's NBD server) and the core's bytes read, vs the bytes changed;
* ``restore``: ``repo.restore(...)`` of the first full into a new VM.

Also prints the XML-RPC round trips of a backup. The simulator's op_delay is 0 here, so
the figures are the driver's and the data path's own cost.
"""

from __future__ import annotations

import argparse
import http.client
import os
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "drivers"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import vmctl  # noqa: E402
import xapisim  # noqa: E402
from vmctl import DiskSpec, VMSpec  # noqa: E402
from vmctl.backup import write_disk  # noqa: E402

MIB = 1024 * 1024


def download(sim: xapisim.SimServer, session: str, vdi: str) -> float:
    ctx = ssl.create_default_context(cafile=sim.cafile)
    start = time.perf_counter()
    conn = http.client.HTTPSConnection("127.0.0.1", sim.port, context=ctx)
    conn.request(
        "GET", "/export_raw_vdi?" + urlencode({"session_id": session, "vdi": vdi, "format": "vhd"})
    )
    resp = conn.getresponse()
    while resp.read(MIB):
        pass
    conn.close()
    return time.perf_counter() - start


PATHS = {"vhd": None, "nbd": "insecure_nbd", "nbd+tls": "nbd"}


class WireCount:
    """Bytes the driver takes from VHD export streams (wraps ``_VhdReader._take``)."""

    def __init__(self) -> None:
        from vmctl_xen import _backup

        self.n = 0
        original = _backup._VhdReader._take

        def take(reader: object, n: int) -> bytes:
            self.n += n
            return original(reader, n)  # type: ignore[arg-type]

        _backup._VhdReader._take = take  # type: ignore[method-assign,assignment]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--data-mib", type=int, default=96)
    ap.add_argument("--change-pct", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk-kib", type=int, default=4096)
    ap.add_argument("--spread", action="store_true")
    args = ap.parse_args()
    wire = WireCount()
    with xapisim.serve(hosts=1, vms=0, password="bench", tls=True, op_delay=0.0) as sim:
        hv = vmctl.connect(
            f"xen://root@127.0.0.1:{sim.port}", env={}, password="bench", cafile=sim.cafile
        )
        driver: Any = hv._conn.driver  # type: ignore[attr-defined]
        dl = vmctl.spi.Deadline.after
        net = driver._call("bench", "network.get_all", deadline=dl(30))[0]
        vm = hv.create_vm(VMSpec(name="bench-src", disks=[DiskSpec(size_mib=args.mib)]))
        write_disk(vm, "xvda", 0, os.urandom(args.data_mib * MIB))
        vdi = driver._call(
            "bench", "VDI.get_by_uuid", str(vm.config().disks[0].path)[4:], deadline=dl(30)
        )
        times: dict[str, list[float]] = {"download": [], "restore": []}
        for path in PATHS:
            times[f"{path} full"] = []
            times[f"{path} incremental"] = []
        trips = None
        figures: dict[str, tuple[int, int, int, int, str]] = {}
        blocks = args.data_mib * MIB // (64 * 1024)
        n_changed = max(1, int(blocks * args.change_pct / 100))
        for _ in range(args.repeat):
            times["download"].append(download(sim, driver._c.ref, vdi))
            for path, purpose in PATHS.items():
                if purpose:
                    driver._call("bench", "network.add_purpose", net, purpose, deadline=dl(30))
                try:
                    with tempfile.TemporaryDirectory() as tmp:
                        repo = vmctl.open_repo(tmp + "/repo", chunk_size=args.chunk_kib * 1024)
                        before = driver.round_trips
                        t = time.perf_counter()
                        full = vm.backup(repo, full=True)
                        times[f"{path} full"].append(time.perf_counter() - t)
                        trips = driver.round_trips - before
                        if args.spread:
                            step = max(1, blocks // n_changed)
                            for i in range(n_changed):
                                write_disk(vm, "xvda", i * step * 64 * 1024, os.urandom(64 * 1024))
                        else:
                            write_disk(
                                vm, "xvda", args.data_mib * MIB // 2, os.urandom(n_changed * 65536)
                            )
                        wire.n, nbd0 = 0, sim.nbd.stats["bytes_read"]
                        t = time.perf_counter()
                        inc = vm.backup(repo)
                        times[f"{path} incremental"].append(time.perf_counter() - t)
                        on_wire = wire.n + sim.nbd.stats["bytes_read"] - nbd0
                        figures[path] = (
                            on_wire,
                            inc.read_bytes,
                            n_changed * 65536,
                            full.read_bytes,
                            inc.kind.value,
                        )
                        if path == "vhd":
                            t = time.perf_counter()
                            copy = repo.restore(full.id, hv, name="bench-copy")
                            times["restore"].append(time.perf_counter() - t)
                            copy.delete()
                finally:
                    if purpose:
                        driver._call(
                            "bench", "network.remove_purpose", net, purpose, deadline=dl(30)
                        )
        vm.delete()
        hv.close()
    print(
        f"disk {args.mib} MiB with {args.data_mib} MiB of data; chunks {args.chunk_kib} KiB; "
        f"{args.change_pct}% of the data changed ({'spread' if args.spread else 'contiguous'}"
        f" 64 KiB blocks); median of {args.repeat}; load {os.getloadavg()[0]:.1f}"
    )
    for k, v in times.items():
        med = statistics.median(v)
        print(f"  {k:22s} {med:7.3f} s")
    ratio = statistics.median(times["vhd full"]) / statistics.median(times["download"])
    print(f"  full (vhd) / download = {ratio:.2f}x; XML-RPC round trips of a full: {trips}")
    print("  path      incremental: on the wire / changed, core read / changed, time vs full")
    for path, (on_wire, read, changed, _full_read, kind) in figures.items():
        vs_full = statistics.median(times[f"{path} incremental"]) / statistics.median(
            times[f"{path} full"]
        )
        print(
            f"  {path:8s}  {kind}: {on_wire / MIB:7.2f} MiB / {changed / MIB:.2f} MiB = "
            f"{on_wire / changed:5.2f}x; {read / MIB:7.2f} MiB = {read / changed:5.2f}x; "
            f"{vs_full:.2f}x"
        )


if __name__ == "__main__":
    main()
