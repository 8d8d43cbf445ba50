"""Backup and restore of one VM on xapisim (in this process, HTTPS): vmctl vs a plain
download of the disk's VHD export.

    python bench/xen_backup.py [--mib 256] [--data-mib 96] [--change-pct 5] [--repeat 3]

Makes a VM with one disk of ``--mib`` MiB, writes ``--data-mib`` MiB of incompressible data
at its start (one VHD import), then times, interleaved ``--repeat`` times (median):

* ``download``: one ``GET /export_raw_vdi?format=vhd`` of the disk with http.client (the
  floor: every allocated byte once, no snapshot);
* ``backup``: ``vm.backup(repo, full=True)`` into a new directory repository (CBT enable,
  VM.snapshot, one VHD export, hashing, zstd, chunk files, manifest; snapshot VM
  destroyed, data_destroy of its VDI);
* ``incremental``: after rewriting ``--change-pct`` % of the data (contiguous 64 KiB
  blocks from the middle of the data), ``vm.backup(repo)`` on top of a full one: bytes
  read and stored vs bytes changed (both rounded up to the repository's 4 MiB chunks);
* ``restore``: ``repo.restore(...)`` into a new VM (one VHD import per run of chunks).

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--data-mib", type=int, default=96)
    ap.add_argument("--change-pct", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with xapisim.serve(hosts=1, vms=0, password="bench", tls=True, op_delay=0.0) as sim:
        hv = vmctl.connect(
            f"xen://root@127.0.0.1:{sim.port}", env={}, password="bench", cafile=sim.cafile
        )
        driver = hv._conn.driver  # type: ignore[attr-defined]
        vm = hv.create_vm(VMSpec(name="bench-src", disks=[DiskSpec(size_mib=args.mib)]))
        write_disk(vm, "xvda", 0, os.urandom(args.data_mib * MIB))
        vdi = driver._call(
            "bench",
            "VDI.get_by_uuid",
            vm.config().disks[0].path[4:],
            deadline=vmctl.spi.Deadline.after(30),
        )
        times: dict[str, list[float]] = {
            "download": [],
            "backup": [],
            "incremental": [],
            "restore": [],
        }
        trips = stats = None
        blocks = args.data_mib * MIB // (64 * 1024)
        for _ in range(args.repeat):
            times["download"].append(download(sim, driver._c.ref, vdi))
            with tempfile.TemporaryDirectory() as tmp:
                repo = vmctl.open_repo(tmp + "/repo")
                before = driver.round_trips
                t = time.perf_counter()
                full = vm.backup(repo, full=True)
                times["backup"].append(time.perf_counter() - t)
                trips = driver.round_trips - before
                changed = int(blocks * args.change_pct / 100) * 64 * 1024
                write_disk(vm, "xvda", args.data_mib * MIB // 2, os.urandom(changed))
                t = time.perf_counter()
                inc = vm.backup(repo)
                times["incremental"].append(time.perf_counter() - t)
                stats = (inc.kind.value, inc.read_bytes, inc.new_bytes, changed, full.read_bytes)
                t = time.perf_counter()
                copy = repo.restore(full.id, hv, name="bench-copy")
                times["restore"].append(time.perf_counter() - t)
                copy.delete()
        vm.delete()
        hv.close()
    print(f"disk {args.mib} MiB with {args.data_mib} MiB of data; median of {args.repeat}")
    for k, v in times.items():
        med = statistics.median(v)
        print(f"  {k:12s} {med:7.3f} s  {args.data_mib / med:8.1f} MiB/s of data")
    ratio = statistics.median(times["backup"]) / statistics.median(times["download"])
    print(f"  backup / download = {ratio:.2f}x; XML-RPC round trips of a full backup: {trips}")
    if stats:
        kind, read, new, changed, full_read = stats
        print(
            f"  incremental ({kind}): read {read / MIB:.1f} MiB, stored {new / MIB:.2f} MiB "
            f"(compressed), for {changed / MIB:.2f} MiB written; "
            f"the full read {full_read / MIB:.1f} MiB"
        )


if __name__ == "__main__":
    main()
