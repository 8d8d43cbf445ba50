"""Backup and restore on KVM: the qcow2 codec against QEMU's own tools (qemu-img, qemu-io),
and the driver's primitives on the real libvirtd (pull-mode backup jobs over NBD for running
VMs, volume streams for stopped ones, checkpoints, quiesce refusal, snapshots)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import vmctl
from tests.kvm.kvm_helpers import PREFIX, virsh
from vmctl import DiskSpec, VMSpec
from vmctl.backup import BackupKind, Consistency, read_disk, write_disk
from vmctl_kvm._qcow2 import Image, Unsupported

MIB = 1 << 20


def _qemu_img() -> None:
    if shutil.which("qemu-img") is None or shutil.which("qemu-io") is None:
        pytest.skip("qemu-img/qemu-io are missing: run tests/hosts/install-kvm.sh")


class LocalIo:
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR)

    def pread(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def pwrite(self, offset: int, data: bytes) -> None:
        os.pwrite(self.fd, data, offset)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def close(self) -> None:
        os.close(self.fd)


def _img(path: Path, size: int, *extra: str) -> None:
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=1.1",
            *extra,
            str(path),
            str(size),
        ],
        check=True,
    )


def _qemu_io(path: Path, *cmds: str) -> None:
    args = ["qemu-io"]
    for c in cmds:
        args += ["-c", c]
    subprocess.run([*args, str(path)], check=True, capture_output=True)


def _as_raw(path: Path, tmp: Path) -> bytes:
    out = tmp / "ref.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(path), str(out)], check=True)
    return out.read_bytes()


def _check(path: Path) -> None:
    res = subprocess.run(["qemu-img", "check", str(path)], capture_output=True, text=True)
    assert res.returncode == 0 and "No errors were found" in res.stdout, res.stdout + res.stderr


def _bitmaps(path: Path) -> dict[str, list[str]]:
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(path)], capture_output=True, check=True
        ).stdout
    )
    found = info.get("format-specific", {}).get("data", {}).get("bitmaps", [])
    return {b["name"]: b["flags"] for b in found}


def test_qcow2_reads_and_writes_what_qemu_sees(tmp_path: Path) -> None:
    _qemu_img()
    img, size = tmp_path / "a.qcow2", 64 * MIB
    _img(img, size)
    _qemu_io(img, "write -P 0x11 1M 3M", "write -P 0x22 40M 64k", "write -z 2M 64k")
    io = LocalIo(img)
    assert Image(io).read(0, size) == _as_raw(img, tmp_path)
    assert Image(io).allocated() == [
        (1 * MIB, 1 * MIB),
        (2 * MIB + 65536, 2 * MIB - 65536),
        (40 * MIB, 65536),
    ]
    ref = bytearray(_as_raw(img, tmp_path))
    rnd = random.Random(7)
    for i in range(40):  # unaligned writes and zeroes, in new and in allocated clusters
        off, n = rnd.randrange(0, size - 300_000), rnd.randrange(1, 300_000)
        data = None if i % 5 == 0 else rnd.randbytes(n)
        Image(io).write(off, data, n)
        ref[off : off + n] = data if data is not None else bytes(n)
    for _ in range(60):  # ranges across data, holes, zero clusters and cluster edges
        off = rnd.randrange(0, size - 1)
        n = rnd.randrange(1, min(size - off, 5 * MIB) + 1)
        assert Image(io).read(off, n) == ref[off : off + n], (off, n)
    io.close()
    _check(img)
    assert _as_raw(img, tmp_path) == bytes(ref)


def test_qcow2_bitmaps_match_qemu(tmp_path: Path) -> None:
    """A bitmap added here is one QEMU keeps up to date, and bits set here are the ones
    QEMU's own dirty tracking would set: both read back through QEMU's NBD export."""
    _qemu_img()
    img, size = tmp_path / "b.qcow2", 32 * MIB
    _img(img, size)
    io = LocalIo(img)
    Image(io).add_bitmap("cp1")
    Image(io).write(5 * MIB + 100, b"x" * 10, 10)  # one 64 KiB granule
    Image(io).write(9 * MIB, None, 200_000)  # zeroes over a hole: nothing changes
    io.close()
    assert _bitmaps(img) == {"cp1": ["auto"]}
    _check(img)
    _qemu_io(img, "write -P 0x33 20M 128k")  # QEMU tracks this in the bitmap made here
    io = LocalIo(img)
    image = Image(io)
    assert image.bitmap_extents("cp1") == [(5 * MIB, 65536), (20 * MIB, 131072)]
    image.add_bitmap("cp2")
    Image(io).remove_bitmap("cp1")
    io.close()
    assert _bitmaps(img) == {"cp2": ["auto"]}
    _check(img)


def test_qcow2_refuses_clusters_shared_with_a_snapshot(tmp_path: Path) -> None:
    _qemu_img()
    img = tmp_path / "s.qcow2"
    _img(img, 1024 * MIB)  # two L2 tables' worth (512 MiB each with 64 KiB clusters)
    _qemu_io(img, "write -P 0x44 0 1M")
    subprocess.run(["qemu-img", "snapshot", "-c", "s1", str(img)], check=True)
    io = LocalIo(img)
    with pytest.raises(Unsupported, match="snapshot"):
        Image(io).write(4096, b"y" * 10, 10)  # a cluster the snapshot holds too
    with pytest.raises(Unsupported, match="snapshot"):
        Image(io).write(4 * MIB, b"y" * 10, 10)  # a new cluster in an L2 table it holds
    Image(io).write(600 * MIB, b"z" * 10, 10)  # a table and a cluster of its own: fine
    io.close()
    _check(img)


def test_qcow2_reads_through_a_backing_file(tmp_path: Path) -> None:
    _qemu_img()
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    _img(base, 8 * MIB)
    _qemu_io(base, "write -P 0x55 0 2M")
    _img(top, 8 * MIB, "-b", str(base), "-F", "qcow2")
    _qemu_io(top, "write -P 0x66 1M 64k")
    ios = [LocalIo(base), LocalIo(top)]
    image = Image(ios[1], lambda p: Image(ios[0]) if p == str(base) else None)
    assert image.read(0, 8 * MIB) == _as_raw(top, tmp_path)
    image.write(512 * 1024 + 3, b"w" * 5, 5)  # copy-up of a backing cluster
    for io in ios:
        io.close()
    _check(top)
    want = bytearray(b"\x55" * 2 * MIB + bytes(6 * MIB))
    want[MIB : MIB + 65536] = b"\x66" * 65536
    want[512 * 1024 + 3 : 512 * 1024 + 8] = b"w" * 5
    assert _as_raw(top, tmp_path) == bytes(want)


# -- on the real libvirtd ---------------------------------------------------------------------


def _vm(hv: vmctl.Hypervisor, hosts: Any, hint: str, disks: int = 1) -> vmctl.VM:
    return hv.create_vm(
        VMSpec(
            name=PREFIX + hint,
            vcpus=1,
            memory_mib=64,
            disks=[DiskSpec(size_mib=32) for _ in range(disks)],
        )
    )


def _checkpoints(uri: str, vm: vmctl.VM) -> list[str]:
    out = virsh(uri, "checkpoint-list", vm.uuid, "--name")
    return [line.strip() for line in out.splitlines() if line.strip()]


def test_backup_running_and_stopped_incrementals(
    hv: vmctl.Hypervisor, hosts: Any, tmp_path: Path
) -> None:
    vm = _vm(hv, hosts, "bk-run", disks=2)
    try:
        write_disk(vm, "vda", 0, b"a" * 3 * MIB)
        write_disk(vm, "vdb", 10 * MIB, b"b" * 4096)
        repo = vmctl.open_repo(str(tmp_path / "repo"), chunk_size=MIB)
        first = vm.backup(repo)  # stopped: streams, an offline checkpoint
        assert (first.kind, first.consistency) == (BackupKind.FULL, Consistency.STOPPED)
        assert first.read_bytes == 4 * MIB  # only the allocated chunks
        (cp,) = _checkpoints(hosts.uri, vm)
        assert cp.startswith("vmctl-")
        write_disk(vm, "vda", 20 * MIB, b"c" * 100)
        vm.start(timeout=60)
        second = vm.backup(repo)  # running: a pull-mode job over NBD, from that checkpoint
        assert second.kind is BackupKind.INCREMENTAL, second.reason
        assert second.consistency is Consistency.CRASH and "not quiesced" in second.reason
        assert second.read_bytes == MIB  # the chunk the stopped write touched
        third = vm.backup(repo)
        assert third.kind is BackupKind.INCREMENTAL and third.read_bytes == 0
        with pytest.raises(vmctl.InvalidState):
            vm.backup(repo, quiesce=True)  # no guest agent in a VM without an OS
        with pytest.raises(vmctl.InvalidState):
            write_disk(vm, "vda", 0, b"x")
        assert read_disk(vm, "vda", 20 * MIB, 100) == b"c" * 100  # through the NBD export
        vm.power_off(timeout=60)
        # read_disk opened a point in time too: its checkpoint replaced the third backup's,
        # so this one reads whole disks and says why (docs/kvm.md#backup)
        fourth = vm.backup(repo)
        assert fourth.kind is BackupKind.FULL and fourth.parent is None
        assert all("read whole" in d.note and "checkpoint" in d.note for d in fourth.disks)
        fifth = vm.backup(repo)  # stopped: from the bitmap the running job left in the image
        assert fifth.kind is BackupKind.INCREMENTAL and fifth.read_bytes == 0
        assert len(_checkpoints(hosts.uri, vm)) == 1  # older checkpoints are deleted
        restored = repo.restore(second.id, hv, name=PREFIX + "bk-run-copy")
        try:
            for disk in ("vda", "vdb"):
                got = hashlib.sha256(read_disk(restored, disk, 0, 32 * MIB)).digest()
                want = hashlib.sha256(read_disk(vm, disk, 0, 32 * MIB)).digest()
                assert got == want, disk
        finally:
            restored.delete()
        assert repo.verify().ok
        # no scratch files or sockets are left behind
        assert not [p for p in os.listdir(hosts.image_dir) if ".vmctl-scratch-" in p]
        assert not [p for p in os.listdir("/var/lib/libvirt/qemu") if p.startswith("vmctl-bk-")]
    finally:
        vm.delete(force=True)
    assert vm.uuid not in virsh(hosts.uri, "list", "--all", "--uuid")


def test_write_past_the_end_and_snapshots(hv: vmctl.Hypervisor, hosts: Any, tmp_path: Path) -> None:
    vm = _vm(hv, hosts, "bk-snap")
    try:
        with pytest.raises(vmctl.ValidationError):
            write_disk(vm, "vda", 32 * MIB - 10, b"x" * 20)
        write_disk(vm, "vda", 0, b"s" * MIB)
        repo = vmctl.open_repo(str(tmp_path / "repo"), chunk_size=MIB)
        vm.backup(repo)
        assert _checkpoints(hosts.uri, vm)
        # libvirt refuses snapshots while checkpoints exist: the snapshot forgets them
        snap = vm.snapshot("s1")
        assert _checkpoints(hosts.uri, vm) == []
        after = vm.backup(repo)
        assert after.kind is BackupKind.FULL and "read whole" in after.disks[0].note
        # the disk's clusters are now shared with the internal snapshot: writes are refused
        with pytest.raises(vmctl.NotSupported, match="snapshot"):
            write_disk(vm, "vda", 0, b"t")
        vm.delete_snapshot(snap)
    finally:
        vm.delete(force=True)


def test_backup_on_a_remote_host_over_tcp(
    other: vmctl.Hypervisor, hosts: Any, tmp_path: Path
) -> None:
    """qemu+tcp:// (the second libvirtd, in its own network namespace): the stopped VM's
    volumes stream over libvirt's RPC, the running VM's export is an NBD server on TCP at
    the host's address."""
    vm = _vm(other, hosts, "bk-remote")
    try:
        write_disk(vm, "vda", MIB, b"r" * 5000)
        repo = vmctl.open_repo(str(tmp_path / "repo"), chunk_size=MIB)
        assert vm.backup(repo).read_bytes == MIB
        vm.start(timeout=60)
        inc = vm.backup(repo)
        assert inc.kind is BackupKind.INCREMENTAL and inc.read_bytes == 0
        assert read_disk(vm, "vda", MIB, 5000) == b"r" * 5000
        vm.power_off(timeout=60)
    finally:
        vm.delete(force=True)


def test_full_storage_is_insufficient_resources(hv: vmctl.Hypervisor, hosts: Any) -> None:
    """A pool on a 4 MiB tmpfs: writing 8 MiB raises InsufficientResources and the image
    stays consistent (libvirt's upload streams did not report ENOSPC for small uploads, so
    the codec checks that the file grew before pointing metadata at new clusters)."""
    _qemu_img()
    import libvirt

    where = Path(hosts.image_dir).parent / "tiny-pool"
    where.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "vmctl-tiny", str(where)], check=True)
    conn = libvirt.open(hosts.uri)
    pool = None
    try:
        pool = conn.storagePoolDefineXML(
            f"<pool type='dir'><name>vmctl-kvmtest-tiny</name><target><path>{where}</path>"
            "</target></pool>",
            0,
        )
        pool.create(0)
        vm = hv.create_vm(
            VMSpec(
                name=PREFIX + "bk-full",
                vcpus=1,
                memory_mib=64,
                disks=[DiskSpec(size_mib=64, pool="vmctl-kvmtest-tiny")],
            )
        )
        try:
            with pytest.raises(vmctl.InsufficientResources, match="full"):
                write_disk(vm, "vda", 0, os.urandom(8 * MIB))
            path = vm.config().disks[0].path
            assert path
            res = subprocess.run(["qemu-img", "check", path], capture_output=True, text=True)
            assert "ERROR" not in res.stdout + res.stderr and res.returncode in (0, 3), res.stdout
        finally:
            vm.delete(force=True)
    finally:
        if pool is not None:
            with contextlib.suppress(libvirt.libvirtError):
                pool.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                pool.undefine()
        conn.close()
        subprocess.run(["umount", str(where)], check=False)
        with contextlib.suppress(OSError):
            where.rmdir()


def test_orphan_bitmaps_are_removed(hv: vmctl.Hypervisor, hosts: Any, tmp_path: Path) -> None:
    """A bitmap whose checkpoint metadata went away (libvirt does not migrate checkpoint
    metadata) is removed by the next point in time of the stopped VM."""
    _qemu_img()
    vm = _vm(hv, hosts, "bk-orphan")
    try:
        write_disk(vm, "vda", 0, b"o" * 1000)
        repo = vmctl.open_repo(str(tmp_path / "repo"), chunk_size=MIB)
        vm.backup(repo)
        (cp,) = _checkpoints(hosts.uri, vm)
        virsh(hosts.uri, "checkpoint-delete", vm.uuid, cp, "--metadata")
        path = Path(vm.config().disks[0].path or "")
        assert list(_bitmaps(path)) == [cp]  # the orphan
        vm.backup(repo)
        (now,) = _checkpoints(hosts.uri, vm)
        assert list(_bitmaps(path)) == [now] and now != cp
        _check(path)
    finally:
        vm.delete(force=True)


def test_nbd_client_against_qemu_nbd(tmp_path: Path) -> None:
    """The NBD client against QEMU's own NBD server (qemu-nbd, started here): reads,
    base:allocation and a dirty bitmap's extents agree with the image."""
    _qemu_img()
    if shutil.which("qemu-nbd") is None:
        pytest.skip("qemu-nbd is missing: run tests/hosts/install-kvm.sh")
    from vmctl.nbd import NbdClient

    img, size = tmp_path / "n.qcow2", 16 * MIB
    _img(img, size)
    _qemu_io(img, "write -P 0x77 0 1M")
    io = LocalIo(img)
    Image(io).add_bitmap("cp1")
    io.close()
    _qemu_io(img, "write -P 0x78 8M 64k", "write -P 0x79 12M 4k")  # QEMU sets cp1's bits
    sock = tmp_path / "nbd.sock"
    proc = subprocess.Popen(
        ["qemu-nbd", "-r", "-k", str(sock), "-x", "disk", "-f", "qcow2", "-B", "cp1", str(img)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(200):
            if sock.exists():
                break
            if proc.poll() is not None:
                raise AssertionError(
                    f"qemu-nbd exited: {proc.stderr.read() if proc.stderr else b''!r}"
                )
            time.sleep(0.05)
        client = NbdClient.connect_unix(
            str(sock), "disk", ["base:allocation", "qemu:dirty-bitmap:cp1"], 10
        )
        try:
            assert client.size == size
            raw = _as_raw(img, tmp_path)
            assert client.read(0, size) == raw
            # pipelined reads into a used buffer: holes (OFFSET_HOLE chunks) are zeroed, the
            # replies of several requests in flight land where they belong
            buf = bytearray(b"\xff" * (3 * MIB + 777))
            for off, req, depth in ((0, MIB, 4), (MIB - 333, 65536 + 5, 16), (7 * MIB, MIB, 1)):
                client.read_into(off, buf, request_size=req, depth=depth)
                assert buf == raw[off : off + len(buf)], (off, req, depth)
            dirty = [
                (o, n) for o, n, f in client.extents("qemu:dirty-bitmap:cp1", 0, size) if f & 1
            ]
            io = LocalIo(img)
            assert dirty == Image(io).bitmap_extents("cp1") == [(8 * MIB, 65536), (12 * MIB, 65536)]
            data = [(o, n) for o, n, f in client.extents("base:allocation", 0, size) if not f & 1]
            assert data == Image(io).allocated()
            io.close()
        finally:
            client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
