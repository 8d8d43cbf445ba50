"""Backup and restore of one VM on the vSphere API simulator: vmctl vs a plain download of
the disk's flat extent over the same datastore HTTP access.

    python bench/esx_backup.py [--mib 256] [--data-mib 96] [--repeat 3] [--seed 1] [--json FILE]

Starts the simulator in ESX mode (tests/hosts/esx.py), makes a VM with one thin disk of
``--mib`` MiB, writes ``--data-mib`` MiB of incompressible data at its start (one upload),
then times, interleaved ``--repeat`` times (median):

* ``download``: one GET of NAME-flat.vmdk with http.client and the driver's session cookie
  (the floor: every byte once);
* ``backup``: ``vm.backup(repo, full=True)`` into a new directory repository (snapshot,
  ranged GETs of every chunk, hashing, zstd, chunk files, manifest; snapshot removed);
* ``restore``: ``repo.restore(...)`` into a new VM (the core writes batches of up to 16 MiB;
  the driver keeps them in a local copy, reads from the host only the bytes no batch
  wrote, and uploads the whole extent once: see docs/esx.md).

Then, once, the incremental path (changed block tracking, tests/hosts/vcsim/cbt.go):

* ``first``: ``vm.backup(repo)`` into a new repository: full, and it turns tracking on, so
  it reads only the allocated areas (QueryChangedDiskAreas "*");
* 5% of the disk's 4 MiB blocks (random places, ``--seed``) rewritten with new data in one
  upload (the driver's ``write_extents`` + ``flush_writes``);
* ``incremental``: ``vm.backup(repo)``: bytes read and stored vs the bytes changed (goal of
  issue 12: <= 1.1x), and its time vs the full's.

Prints MiB/s of the disk's size and the ratio of backup to download, then the incremental's
figures. Say the machine's load (``uptime``) with the figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import secrets
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlencode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import vmctl  # noqa: E402
from tests.hosts.esx import VcsimServer, running_simulator  # noqa: E402
from vmctl.backup import write_disk  # noqa: E402
from vmctl.spi import Deadline, ExtentData  # noqa: E402

MIB = 1024 * 1024
BLOCK = 4 * MIB


def change(hv: vmctl.Hypervisor, vm: vmctl.VM, disk_id: str, mib: int, seed: int) -> int:
    """Rewrite 5% of the disk's 4 MiB blocks with new data in one upload; bytes changed."""
    rnd = random.Random(seed)
    blocks = rnd.sample(range(mib * MIB // BLOCK), max(1, round(mib * MIB // BLOCK * 0.05)))
    extents = [ExtentData(b * BLOCK, BLOCK, rnd.randbytes(BLOCK)) for b in sorted(blocks)]
    driver = hv._conn.driver  # type: ignore[attr-defined]
    driver.write_extents(vm.uuid, disk_id, extents, deadline=Deadline.after(600))
    driver.flush_writes(vm.uuid, disk_id, deadline=Deadline.after(600))
    return len(blocks) * BLOCK


def download(srv: VcsimServer, descriptor: str, cookie: str) -> float:
    datastore, _, path = descriptor[1:].partition("] ")
    flat = path[: -len(".vmdk")] + "-flat.vmdk"
    url = f"/folder/{quote(flat)}?" + urlencode({"dcPath": "ha-datacenter", "dsName": datastore})
    ctx = ssl.create_default_context(cafile=str(srv.cafile))
    start = time.perf_counter()
    conn = http.client.HTTPSConnection(srv.host, srv.port, context=ctx)
    conn.request("GET", url, headers={"Cookie": cookie})
    response = conn.getresponse()
    while response.read(MIB):
        pass
    conn.close()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--data-mib", type=int, default=96)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    times: dict[str, list[float]] = {"download": [], "backup": [], "restore": []}
    with running_simulator("esx", vms=1) as srv:
        hv = vmctl.connect(srv.uri, password=srv.password, cafile=str(srv.cafile))
        try:
            spec = vmctl.VMSpec(
                name=f"bench-{secrets.token_hex(3)}", disks=[vmctl.DiskSpec(size_mib=args.mib)]
            )
            vm = hv.create_vm(spec)
            disk = vm.config().disks[0]
            write_disk(vm, disk.id, 0, os.urandom(args.data_mib * MIB))
            cookie = str(hv._conn.driver.conn.stub.cookie).split(";")[0]  # type: ignore[attr-defined]
            for _ in range(args.repeat):
                times["download"].append(download(srv, str(disk.path), cookie))
                with tempfile.TemporaryDirectory() as tmp:
                    repo = vmctl.open_repo(f"{tmp}/repo")
                    start = time.perf_counter()
                    info = vm.backup(repo, full=True)
                    times["backup"].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    copy = repo.restore(info.id, hv, name=f"{vm.name}-r")
                    times["restore"].append(time.perf_counter() - start)
                    copy.delete()
            with tempfile.TemporaryDirectory() as tmp:
                repo = vmctl.open_repo(f"{tmp}/repo")
                start = time.perf_counter()
                first = vm.backup(repo)
                t_first = time.perf_counter() - start
                changed = change(hv, vm, disk.id, args.mib, args.seed)
                start = time.perf_counter()
                inc = vm.backup(repo)
                t_inc = time.perf_counter() - start
            vm.delete()
        finally:
            hv.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "disk_mib": args.mib,
        "data_mib": args.data_mib,
        "seconds": med,
        "mib_per_s": {k: args.mib / v for k, v in med.items()},
        "backup_vs_download": med["backup"] / med["download"],
        "incremental": {
            "first_kind": first.kind.value,
            "first_read_bytes": first.read_bytes,
            "first_seconds": t_first,
            "kind": inc.kind.value,
            "changed_bytes": changed,
            "read_bytes": inc.read_bytes,
            "new_bytes": inc.new_bytes,
            "read_vs_changed": inc.read_bytes / changed,
            "stored_vs_changed": inc.new_bytes / changed,
            "seconds": t_inc,
            "time_vs_full": t_inc / med["backup"],
        },
    }
    for k, v in med.items():
        print(f"{k:9} {v:7.2f} s  {args.mib / v:8.1f} MiB/s")
    print(f"backup / download: {result['backup_vs_download']:.2f}x")
    print(
        f"first backup ({first.kind.value}, tracking on): read {first.read_bytes / MIB:.0f} "
        f"MiB of {args.mib} in {t_first:.2f} s"
    )
    print(
        f"incremental after changing 5% ({changed // MIB} MiB): {inc.kind.value}, "
        f"read {inc.read_bytes / changed:.2f}x, stored {inc.new_bytes / changed:.2f}x the bytes "
        f"changed, {t_inc:.2f} s ({t_inc / med['backup']:.2f}x the full backup's time)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
