"""Backup on the real libvirtd (issue 12): full and incremental backups of a 1 GiB qcow2 disk
holding 300 MiB of data, side by side with ``qemu-img convert`` of the same disk.

    python bench/backup.py [--uri qemu:///system] [--pool vmctl-test] [--rounds 10] [--repeat 3]

Starts the test hosts of tests/hosts/kvm.py when no libvirtd answers (root). Steps:

1. a VM with one 1 GiB qcow2 disk; 300 MiB of random (incompressible) data in 75 pieces of
   4 MiB at random 4 MiB-aligned places, written with ``qemu-img convert`` into the volume;
2. ``qemu-img convert -O raw`` of the volume to a file (the reference reader; it does not
   flush, so the same followed by ``sync -f`` is shown too), then a full backup of the
   stopped VM (volume streams) and of the running VM (pull-mode backup job over NBD): MiB/s
   of data and the ratio to qemu-img (goal >= 0.8x), the best of ``--repeat`` runs. Beside
   them, the floor of each stage alone over the same chunks: the driver's reads, the zero
   check, SHA-256, compression, writing the chunks durably. Each line also gives the CPU
   seconds this process (and qemu-img) spent: steadier than the time on a shared machine;
3. 5% of the disk's 4 MiB blocks (13 blocks, random places) rewritten with new data through
   vmctl's upload path (stopped VM), then an incremental backup of the running VM: bytes
   read and stored vs bytes changed (goal <= 1.1x), and its time vs the full's;
4. the VM and a clone of it get the same 5% changes ``--rounds`` times; after each, the VM
   is backed up incrementally into one repository and the clone in full (``full=True``)
   into another: both repositories' sizes and the time spent.

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vmctl
from vmctl import DiskSpec, VMSpec
from vmctl.backup import BackupInfo, write_disk

MIB = 1 << 20
BLOCK = 4 * MIB
DISK = 1024 * MIB
DATA_PIECES = 75  # x 4 MiB = 300 MiB


@contextlib.contextmanager
def libvirtd(uri: str) -> Iterator[None]:
    try:
        import libvirt

        libvirt.open(uri).close()
        yield
        return
    except Exception:
        pass
    from tests.hosts.kvm import running_hosts

    with running_hosts(second_host=False):
        yield


def dir_size(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def change(vm: vmctl.VM, rnd: random.Random) -> int:
    """Rewrite 5% of the disk's 4 MiB blocks with new data; the bytes changed."""
    blocks = rnd.sample(range(DISK // BLOCK), max(1, DISK // BLOCK // 20))
    for b in blocks:
        write_disk(vm, "vda", b * BLOCK, rnd.randbytes(BLOCK))
    return len(blocks) * BLOCK


def cpu_now() -> float:
    """CPU seconds (user + system) of this process and its waited-for children so far."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


last_cpu = 0.0  # the CPU seconds of the last timed() step


def timed(fn: object) -> tuple[float, object]:
    global last_cpu
    t0, c0 = time.perf_counter(), cpu_now()
    out = fn()  # type: ignore[operator]
    last_cpu = cpu_now() - c0
    return time.perf_counter() - t0, out


def best_of(n: int, fn: Callable[[], object]) -> tuple[float, float, object]:
    """(seconds, CPU seconds, result) of the fastest of ``n`` runs of ``fn``."""
    best: tuple[float, float, object] | None = None
    for _ in range(n):
        t, out = timed(fn)
        if best is None or t < best[0]:
            best = (t, last_cpu, out)
    assert best is not None
    return best


def driver_read(hv: vmctl.Hypervisor, vm: vmctl.VM, keep: list[bytes] | None = None) -> float:
    """Seconds to read the allocated extents through the driver's point in time alone (the
    point in time opened and closed included); the chunks go to ``keep`` when given."""
    from vmctl.spi import Deadline, DiskAccess

    d = hv._driver
    assert isinstance(d, DiskAccess)

    def read() -> None:
        pit = d.open_point_in_time(vm.uuid, quiesce=False, deadline=Deadline.after(60))
        try:
            for e in d.allocated_extents(pit, "vda", deadline=Deadline.after(60)):
                for off in range(e.offset, e.end, BLOCK):
                    n = min(BLOCK, e.end - off)
                    data = d.read_extent(pit, "vda", off, n, deadline=Deadline.after(60))
                    if keep is not None:
                        keep.append(data)
        finally:
            d.close_point_in_time(pit, deadline=Deadline.after(60))

    return timed(read)[0]


def stage_floors(chunks: list[bytes], work: str) -> dict[str, tuple[float, float]]:
    """(seconds, CPU seconds) of each stage of the job's chunk work alone, on one thread,
    over the same chunks: the zero check, SHA-256, the compression trial (and zstd over
    whole chunks, as before the trial), and writing the frames into a repository's chunk
    store durably (Store.batch: write, then one flush)."""
    from vmctl.backup import _chunks
    from vmctl.backup._store import Store

    def timed_each(fn: Callable[[bytes], object]) -> tuple[float, float]:
        t = timed(lambda: [fn(c) for c in chunks])[0]
        return t, last_cpu

    out = {
        "zero check": timed_each(_chunks.is_zero),
        "SHA-256": timed_each(_chunks.digest_of),
        "compress (trial, then zstd where it helps)": timed_each(_chunks.pack),
    }
    import zstandard

    z = zstandard.ZstdCompressor(level=_chunks.ZSTD_LEVEL)
    out["zstd level 3 of every chunk (no trial)"] = timed_each(z.compress)
    frames = [(_chunks.digest_of(c), *_chunks.pack(c)) for c in chunks]
    batch = Store(os.path.join(work, "floor-store")).batch()

    def write() -> None:
        for digest, header, payload in frames:
            batch.put(_chunks.chunk_path(digest), header, payload)
        batch.commit()

    out["write + one flush (durable)"] = (timed(write)[0], last_cpu)
    shutil.rmtree(os.path.join(work, "floor-store"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uri", default="qemu:///system")
    ap.add_argument("--pool", default="vmctl-test")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3, help="full backups timed (the best shown)")
    args = ap.parse_args()
    if shutil.which("qemu-img") is None:
        sys.exit("qemu-img is missing: run tests/hosts/install-kvm.sh")
    rnd = random.Random(12)
    work = tempfile.mkdtemp(prefix="vmctl-bench-backup-")
    with libvirtd(args.uri), vmctl.connect(f"{args.uri}?pool={args.pool}") as hv:
        for info in hv.list_vms():
            if info.name.startswith("vmctl-bench-backup"):
                hv.vm(info.uuid).delete(force=True)
        vm = hv.create_vm(
            VMSpec(
                name="vmctl-bench-backup",
                vcpus=1,
                memory_mib=64,
                disks=[DiskSpec(size_mib=DISK // MIB, pool=args.pool)],
            )
        )
        try:
            run(hv, vm, rnd, work, args.rounds, args.repeat)
        finally:
            with contextlib.suppress(vmctl.VmctlError):
                vm.delete(force=True)
            shutil.rmtree(work, ignore_errors=True)


def run(
    hv: vmctl.Hypervisor, vm: vmctl.VM, rnd: random.Random, work: str, rounds: int, repeat: int
) -> None:
    path = vm.config().disks[0].path
    assert path
    raw = os.path.join(work, "seed.raw")
    with open(raw, "wb") as f:
        f.truncate(DISK)
        for b in rnd.sample(range(DISK // BLOCK), DATA_PIECES):
            f.seek(b * BLOCK)
            f.write(rnd.randbytes(BLOCK))
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", raw, path], check=True)
    os.unlink(raw)
    data = DATA_PIECES * BLOCK
    out = os.path.join(work, "convert.raw")

    def convert(flush: bool) -> None:
        subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", path, out], check=True)
        if flush:
            subprocess.run(["sync", "-f", out], check=True)
        os.unlink(out)

    # best of 3 (the machine is shared); then its data flushed to disk, as a backup's is
    t_convert, c_convert, _ = best_of(3, lambda: convert(False))
    t_sync, c_sync, _ = best_of(3, lambda: convert(True))
    load = os.getloadavg()
    print(
        f"data: {data // MIB} MiB in a {DISK // MIB} MiB qcow2 disk; {os.cpu_count()} cores, "
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )

    def line(what: str, t: float, cpu: float, extra: str = "") -> None:
        rate = f"{data / MIB / t:6.0f} MiB/s = {t_convert / t:4.2f}x" if t > 0.01 else "(no time)"
        print(f"{what:50s} {t:5.2f} s {rate:>24s}  CPU {cpu:4.2f} s{'  ' + extra if extra else ''}")

    print(
        "(N.NNx: qemu-img convert's time / this one's; CPU: user + system seconds of this "
        "process and qemu-img, not QEMU's or libvirtd's)"
    )
    line("qemu-img convert to a raw file (best of 3)", t_convert, c_convert)
    line("  the same, then flushed (sync -f)", t_sync, c_sync)
    n = 0

    def full_backup() -> BackupInfo:
        nonlocal n
        n += 1
        return vm.backup(vmctl.open_repo(os.path.join(work, f"full-{n}")), full=True)

    t, cpu, got = best_of(repeat, full_backup)
    info = cast(BackupInfo, got)
    line(
        f"full backup, stopped VM (streams), best of {repeat}",
        t,
        cpu,
        f"read {info.read_bytes // MIB} MiB",
    )
    t = driver_read(hv, vm)
    line("  the driver's reads alone (streams)", t, last_cpu)
    vm.start(timeout=60)
    chunks: list[bytes] = []
    t = driver_read(hv, vm, chunks)
    line("  the driver's reads alone (NBD; running VM)", t, last_cpu)
    for what, (t, cpu) in stage_floors(chunks, work).items():
        line(f"  {what}", t, cpu)
    del chunks
    t_full, cpu, got = best_of(repeat, full_backup)
    full = cast(BackupInfo, got)
    line(
        f"full backup, running VM (NBD), best of {repeat}",
        t_full,
        cpu,
        f"read {full.read_bytes // MIB} MiB, stored {full.new_bytes // MIB} MiB",
    )
    for i in range(1, n):  # the last one stays: the incremental below is from it
        shutil.rmtree(os.path.join(work, f"full-{i}"))
    repo = vmctl.open_repo(os.path.join(work, f"full-{n}"))
    vm.power_off(timeout=60)
    changed = change(vm, rnd)
    vm.start(timeout=60)
    t_inc, inc = timed(lambda: vm.backup(repo))
    print(
        f"incremental after changing 5% ({changed // MIB} MiB): {inc.kind.value}, "  # type: ignore[attr-defined]
        f"{t_inc:.2f} s = {t_inc / t_full:.2f}x the full's time; "
        f"read {inc.read_bytes / changed:.2f}x, stored {inc.new_bytes / changed:.2f}x "  # type: ignore[attr-defined]
        "the bytes changed"
    )
    vm.power_off(timeout=60)

    # two identical VMs (a clone), the same changes to both: one backed up incrementally, the
    # other in full every time (one VM alternating between two repositories would lose its
    # checkpoint to the other repository's backup each time: docs/kvm.md#backup)
    twin = vm.clone("vmctl-bench-backup-twin")
    try:
        incs = vmctl.open_repo(os.path.join(work, "incs"))
        fulls = vmctl.open_repo(os.path.join(work, "fulls"))
        vm.backup(incs)
        twin.backup(fulls)
        t_i = t_f = 0.0
        kinds = set()
        for r in range(rounds):
            change(vm, random.Random(1000 + r))
            change(twin, random.Random(1000 + r))
            t, got = timed(lambda: vm.backup(incs))
            kinds.add(got.kind.value)  # type: ignore[attr-defined]
            t_i += t
            t, _ = timed(lambda: twin.backup(fulls, full=True))
            t_f += t
        si, sf = dir_size(incs.url), dir_size(fulls.url)
        print(
            f"{rounds} rounds of 5% changes (stopped VMs), after a first full each: "
            f"{rounds} incrementals ({'/'.join(sorted(kinds))}): repository {si / MIB:.0f} MiB, "
            f"{t_i:.1f} s; {rounds} fulls: repository {sf / MIB:.0f} MiB, {t_f:.1f} s "
            "(chunks are content-addressed, so the fulls store no more; they read more)"
        )
    finally:
        twin.delete(force=True)


if __name__ == "__main__":
    main()
