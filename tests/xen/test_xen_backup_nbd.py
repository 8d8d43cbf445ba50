"""Xen incrementals over NBD against xapisim: the NBD server as xapi-nbd serves VDIs
(network purposes, VDI.get_nbd_info, the fixed newstyle handshake with EXPORT_NAME,
FORCEDTLS or NOTLS, read-only simple replies), seen from the real XenAPI SDK and raw
sockets, and the driver reading only the changed blocks through it (bytes counted at the
server), with restores compared byte for byte."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import XenAPI
from xen_helpers import name

import vmctl
from vmctl import DiskSpec, VMSpec
from vmctl.backup import BackupKind, read_disk, write_disk
from vmctl.nbd import NbdClient, NbdError

MiB = 1024 * 1024
KiB = 1024
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9


@pytest.fixture
def purpose(raw: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """The pool network with the NBD purpose ``request.param`` (default insecure_nbd) for
    the test, removed after it."""
    value = getattr(request, "param", "insecure_nbd")
    net = raw.network.get_all()[0]
    raw.network.add_purpose(net, value)
    try:
        yield value
    finally:
        raw.network.remove_purpose(net, value)


@pytest.fixture
def vm(hv: vmctl.Hypervisor) -> Iterator[vmctl.VM]:
    v = hv.create_vm(VMSpec(name=name("nbd"), memory_mib=256, disks=[DiskSpec(size_mib=16)]))
    yield v
    with contextlib.suppress(vmctl.NotFound):
        v.delete(force=True)


def vdi_of(raw: Any, vm: vmctl.VM) -> str:
    return str(raw.VDI.get_by_uuid(vm.config().disks[0].path.removeprefix("vdi:")))


def failure(fn: Any, *args: Any) -> list[str]:
    with pytest.raises(XenAPI.Failure) as info:
        fn(*args)
    return list(info.value.details)


# -- the API: purposes and get_nbd_info ---------------------------------------------------


def test_purposes_follow_xapi_network_rules(raw: Any, sim: Any) -> None:
    net = raw.network.get_all()[0]
    assert raw.network.get_purpose(net) == []
    raw.network.add_purpose(net, "insecure_nbd")
    try:
        raw.network.add_purpose(net, "insecure_nbd")  # already there: a no-op
        assert raw.network.get_purpose(net) == ["insecure_nbd"]
        # xapi_network.ml: assert_can_add_purpose -- [new; conflicting]
        assert failure(raw.network.add_purpose, net, "nbd") == [
            "NETWORK_INCOMPATIBLE_PURPOSES",
            "nbd",
            "insecure_nbd",
        ]
        assert failure(raw.network.add_purpose, net, "fast")[0] == "FIELD_TYPE_ERROR"
    finally:
        raw.network.remove_purpose(net, "insecure_nbd")
    raw.network.remove_purpose(net, "insecure_nbd")  # not there: a no-op
    assert raw.network.get_purpose(net) == []
    # the management PIFs get_nbd_info looks for: one per host, attached, on the network
    pifs = [raw.PIF.get_record(p) for p in raw.network.get_PIFs(net)]
    assert len(pifs) == len(raw.host.get_all()) and all(p["currently_attached"] for p in pifs)


def test_get_nbd_info_as_xapi_vdi(raw: Any, sim: Any, vm: vmctl.VM) -> None:
    vdi = vdi_of(raw, vm)
    assert raw.VDI.get_nbd_info(vdi) == []  # no network has an NBD purpose
    net = raw.network.get_all()[0]
    raw.network.add_purpose(net, "nbd")
    try:
        infos = raw.VDI.get_nbd_info(vdi)
        # the shared SR is attached on both hosts, each with one NBD PIF: two servers
        assert len(infos) == len(raw.host.get_all()) == 2
        info = infos[0]
        assert set(info) == {"exportname", "address", "port", "cert", "subject"}
        uuid = raw.VDI.get_uuid(vdi)
        assert info["exportname"].startswith(f"/{uuid}?session_id=OpaqueRef:")
        assert info["port"] == str(sim.nbd.port)  # an int: a decimal string on the wire
        assert info["cert"] == raw.host.get_server_certificate(raw.host.get_all()[0])
        assert info["cert"].startswith("-----BEGIN CERTIFICATE-----")
        assert info["subject"] == "localhost"  # the certificate's DNS name
        snap = raw.VDI.snapshot(vdi, {})
        raw.VDI.enable_cbt(vdi)
        snap2 = raw.VDI.snapshot(vdi, {})
        raw.VDI.data_destroy(snap2)
        assert failure(raw.VDI.get_nbd_info, snap2) == [
            "VDI_INCOMPATIBLE_TYPE",
            snap2,
            "cbt_metadata",
        ]
        raw.VDI.destroy(snap2)
        raw.VDI.destroy(snap)
        raw.VDI.disable_cbt(vdi)
    finally:
        raw.network.remove_purpose(net, "nbd")


# -- the wire, as xapi-nbd's ocaml-nbd server speaks it ------------------------------------


class Raw:
    """A hand-driven NBD client socket."""

    def __init__(self, sim: Any) -> None:
        self.sock = socket.create_connection(("127.0.0.1", sim.nbd.port), timeout=10)

    def recv(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            piece = self.sock.recv(n - len(out))
            if not piece:
                raise EOFError(f"closed after {len(out)} of {n} bytes")
            out += piece
        return out

    def option(self, opt: int, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)

    def reply(self, opt: int) -> int:
        magic, ropt, rtype, length = struct.unpack(">QIII", self.recv(20))
        assert magic == REPLY_MAGIC and ropt == opt
        self.recv(length)
        return int(rtype)

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True


def test_the_wire_as_xapi_nbd(raw: Any, sim: Any, vm: vmctl.VM, purpose: str) -> None:
    write_disk(vm, "xvda", 0, bytes(range(256)) * 4096)  # 1 MiB of a pattern
    info = raw.VDI.get_nbd_info(vdi_of(raw, vm))[0]
    name_bytes = info["exportname"].encode()
    c = Raw(sim)
    head = c.recv(18)
    # greeting: NBDMAGIC, IHAVEOPT, global flags fixed newstyle only (no NO_ZEROES)
    assert head[:8] == b"NBDMAGIC" and struct.unpack(">QH", head[8:]) == (IHAVEOPT, 1)
    c.sock.sendall(struct.pack(">I", 1))
    c.option(7, struct.pack(">I", len(name_bytes)) + name_bytes + b"\0\0")  # OPT_GO
    assert c.reply(7) == 0x80000001  # ERR_UNSUP: ocaml-nbd knows no NBD_OPT_GO
    c.option(8)  # STRUCTURED_REPLY
    assert c.reply(8) == 0x80000001
    c.option(3)  # LIST: no export list offered
    assert c.reply(3) == 0x80000002  # ERR_POLICY
    c.option(5)  # STARTTLS on a NOTLS server
    assert c.reply(5) == 0x80000002
    c.option(1, name_bytes)  # EXPORT_NAME: size, flags, 124 zeroes
    size, flags = struct.unpack(">QH", c.recv(10))
    assert size == 16 * MiB and flags == 1 | 2  # HAS_FLAGS | READ_ONLY
    assert c.recv(124) == bytes(124)
    # while served, the VDI is plugged into the control domain read-only (xapi-nbd's VBD)
    vdi = vdi_of(raw, vm)

    def dom0_vbds() -> list[dict[str, Any]]:
        recs = [raw.VBD.get_record(b) for b in raw.VDI.get_VBDs(vdi)]
        return [r for r in recs if raw.VM.get_is_control_domain(r["VM"])]

    (vbd,) = dom0_vbds()
    assert vbd["mode"] == "RO" and vbd["currently_attached"] is True
    assert failure(raw.VDI.destroy, vdi)[0] == "VDI_IN_USE"

    def request(cmd: int, handle: int, offset: int, length: int) -> tuple[int, int]:
        c.sock.sendall(struct.pack(">IHHQQI", 0x25609513, 0, cmd, handle, offset, length))
        magic, err, h = struct.unpack(">IIQ", c.recv(16))
        assert magic == 0x67446698 and h == handle
        return int(err), int(h)

    assert request(0, 1, 512, 1024) == (0, 1)  # READ: a simple reply, then the data
    assert c.recv(1024) == (bytes(range(256)) * 8)[512:1536]
    assert request(0, 2, 100, 512) == (22, 2)  # not sector-aligned: EINVAL, no data
    assert request(4, 3, 0, 512) == (22, 3)  # TRIM: EINVAL
    assert request(7, 4, 0, 512) == (22, 4)  # BLOCK_STATUS: EINVAL
    assert request(1, 5, 0, 0) == (1, 5)  # WRITE: EPERM (read-only)
    c.sock.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 6, 0, 0))  # DISC
    assert c.closed()
    deadline = time.monotonic() + 10
    while dom0_vbds() and time.monotonic() < deadline:
        time.sleep(0.01)  # the server unplugs and destroys it as the connection ends
    assert dom0_vbds() == []
    # a session that is not valid, or none: the connection is closed after the name
    for bad in (info["exportname"].split("?")[0] + "?session_id=OpaqueRef:nope", "/x"):
        c = Raw(sim)
        c.recv(18)
        c.sock.sendall(struct.pack(">I", 1))
        c.option(1, bad.encode())
        assert c.closed()


@pytest.mark.parametrize("purpose", ["nbd"], indirect=True)
def test_forced_tls(raw: Any, sim: Any, vm: vmctl.VM, purpose: str) -> None:
    write_disk(vm, "xvda", 2 * MiB, b"tls" * 1000)
    info = raw.VDI.get_nbd_info(vdi_of(raw, vm))[0]
    c = Raw(sim)
    c.recv(18)
    c.sock.sendall(struct.pack(">I", 1))
    c.option(8)  # anything but STARTTLS before TLS: ERR_TLS_REQD
    assert c.reply(8) == 0x80000005
    c.option(1, info["exportname"].encode())  # an export in clear text: closed
    assert c.closed()
    ctx = ssl.create_default_context(cadata=info["cert"])
    client = NbdClient.connect_tcp(
        info["address"],
        int(info["port"]),
        info["exportname"],
        [],
        10,
        tls=ctx,
        server_hostname=info["subject"],
    )
    try:
        assert not client.structured and client.size == 16 * MiB
        assert client.read(2 * MiB, 3072)[:3000] == b"tls" * 1000  # whole sectors
    finally:
        client.close()
    with pytest.raises(NbdError):  # no TLS: every option but STARTTLS is refused
        NbdClient.connect_tcp(info["address"], int(info["port"]), info["exportname"], [], 10)


def test_no_purpose_no_connection(raw: Any, sim: Any, vm: vmctl.VM) -> None:
    # xapi-nbd: no network has purpose nbd or insecure_nbd -> the connection is refused
    c = Raw(sim)
    with pytest.raises((EOFError, OSError)):
        c.recv(18)


# -- the driver ---------------------------------------------------------------------------


def changed_pattern(seed: int, n: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32)


@pytest.mark.parametrize("purpose", ["insecure_nbd", "nbd"], indirect=True)
def test_incremental_reads_only_the_changed_blocks(
    hv: vmctl.Hypervisor, sim: Any, vm: vmctl.VM, purpose: str, tmp_path: Path
) -> None:
    for i in range(8):  # 8 MiB of data
        write_disk(vm, "xvda", i * MiB, changed_pattern(i, MiB))
    repo = vmctl.open_repo(str(tmp_path / "repo"), chunk_size=64 * KiB)  # = a CBT block
    before = dict(sim.nbd.stats)
    full = vm.backup(repo)
    assert full.kind is BackupKind.FULL and full.read_bytes == 8 * MiB
    # a full reads the VHD stream (the allocated extents come from its table), not NBD
    assert sim.nbd.stats["bytes_read"] == before["bytes_read"]
    blocks = [3, 40, 41, 77, 200]  # 64 KiB blocks, spread, two of them adjacent
    for b in blocks:
        write_disk(vm, "xvda", b * 64 * KiB + 100, changed_pattern(1000 + b, 4 * KiB))
    changed = len(blocks) * 64 * KiB
    before = dict(sim.nbd.stats)
    incr = vm.backup(repo)
    assert incr.kind is BackupKind.INCREMENTAL
    read_at_server = sim.nbd.stats["bytes_read"] - before["bytes_read"]
    assert read_at_server == changed == incr.read_bytes
    assert sim.nbd.stats["connections"] == before["connections"] + 1  # one per disk
    want = read_disk(vm, "xvda", 0, 16 * MiB)
    copy = repo.restore(incr.id, hv, name=name("nbd-copy"))
    try:
        assert read_disk(copy, "xvda", 0, 16 * MiB) == want
    finally:
        copy.delete()
    # the first generation still restores as it was
    first = repo.restore(full.id, hv, name=name("nbd-first"))
    try:
        got = read_disk(first, "xvda", 0, 16 * MiB)
        assert got[: 8 * MiB] == b"".join(changed_pattern(i, MiB) for i in range(8))
        assert got[8 * MiB :] == bytes(8 * MiB)
    finally:
        first.delete()


def test_without_nbd_the_vhd_stream_serves(
    hv: vmctl.Hypervisor, sim: Any, vm: vmctl.VM, tmp_path: Path
) -> None:
    write_disk(vm, "xvda", 0, changed_pattern(1, 4 * MiB))
    repo = vmctl.open_repo(str(tmp_path / "repo"), chunk_size=MiB)
    vm.backup(repo)
    write_disk(vm, "xvda", 2 * MiB, b"x" * 10)
    before = dict(sim.nbd.stats)
    incr = vm.backup(repo)
    assert incr.kind is BackupKind.INCREMENTAL and incr.read_bytes == MiB
    assert sim.nbd.stats == before  # no NBD connection at all
    copy = repo.restore(incr.id, hv, name=name("nbd-vhd"))
    try:
        assert read_disk(copy, "xvda", 0, 16 * MiB) == read_disk(vm, "xvda", 0, 16 * MiB)
    finally:
        copy.delete()


def test_unaligned_reads_and_a_broken_connection(
    hv: vmctl.Hypervisor, sim: Any, vm: vmctl.VM, purpose: str
) -> None:
    write_disk(vm, "xvda", 10 * MiB + 3, b"unaligned")
    before = dict(sim.nbd.stats)
    # read_disk opens a point in time and reads without a whole-disk stream: NBD
    assert read_disk(vm, "xvda", 10 * MiB, 12) == b"\0\0\0unaligned"
    assert sim.nbd.stats["bytes_read"] - before["bytes_read"] == 512  # one whole sector
    # the server drops every connection mid-backup: a clear vmctl error, nothing left
    driver: Any = hv._conn.driver
    from vmctl.spi import Deadline

    pit = driver.open_point_in_time(vm.uuid, quiesce=False, deadline=Deadline.after(30))
    try:
        assert driver.read_extent(pit, "xvda", 0, 512, deadline=Deadline.after(30))
        with sim.nbd._lock:
            conns = list(sim.nbd._conns)
        for c in conns:
            c.shutdown(socket.SHUT_RDWR)
        with pytest.raises(vmctl.VmctlError) as info:
            driver.read_extent(pit, "xvda", 0, 512, deadline=Deadline.after(30))
        assert "OpaqueRef" not in str(info.value)  # the export name holds the session
        # the next read connects again
        data = driver.read_extent(pit, "xvda", 10 * MiB, 12, deadline=Deadline.after(30))
        assert data == b"\0\0\0unaligned"
    finally:
        driver.close_point_in_time(pit, deadline=Deadline.after(30))
    assert vm.snapshots() == []


def test_kit_backup_clauses_over_nbd(sim: Any, purpose: str, tmp_path: Path) -> None:
    """The kit's BACKUP clauses, with the pool exporting VDIs over NBD."""
    from test_xen_kit import _env

    from tests.hosts.kitrun import VMCTL
    from vmctl_conformance import Report

    before = dict(sim.nbd.stats)
    out = tmp_path / "kit.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMCTL_")}
    env.update(_env(sim))
    proc = subprocess.run(
        [str(VMCTL), "conformance", env["VMCTL_URI"], "--other-uri", env["VMCTL_OTHER_URI"],
         "--clause", "BACKUP-", "--report", str(out)],
        env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert out.is_file(), proc.stdout + proc.stderr
    report = Report.from_json(out.read_text())
    assert not report.leaked and not report.failed, (report.failed, proc.stdout[-3000:])
    for clause in (
        "BACKUP-ROUNDTRIP-1",
        "BACKUP-INCR-1",
        "BACKUP-REPLACE-1",
        "BACKUP-INTERRUPT-1",
        "BACKUP-FORMAT-1",
    ):
        assert report.results[clause].status == "pass", (clause, report.results[clause])
    assert sim.nbd.stats["bytes_read"] > before["bytes_read"]  # the incrementals used NBD


# -- an independent client: libnbd's nbdinfo and nbdcopy ------------------------------------


@pytest.mark.parametrize("purpose", ["insecure_nbd", "nbd"], indirect=True)
def test_libnbd_reads_the_export(
    raw: Any, sim: Any, vm: vmctl.VM, purpose: str, tmp_path: Path
) -> None:
    """libnbd (written to the NBD specification by others) negotiates with the server as
    with xapi-nbd (no NBD_OPT_GO, so NBD_OPT_EXPORT_NAME; no structured replies; TLS
    for ``nbd``) and reads the VDI's bytes; tests/hosts/install-xen.sh installs it."""
    if shutil.which("nbdinfo") is None or shutil.which("nbdcopy") is None:
        pytest.skip("libnbd-bin is not installed: run tests/hosts/install-xen.sh")
    pattern = changed_pattern(7, MiB)
    write_disk(vm, "xvda", 5 * MiB, pattern)
    info = raw.VDI.get_nbd_info(vdi_of(raw, vm))[0]
    export = urllib.parse.quote(info["exportname"], safe="/")
    if purpose == "nbd":
        (tmp_path / "ca-cert.pem").write_text(info["cert"])
        uri = f"nbds://{info['subject']}:{info['port']}/{export}?tls-certificates={tmp_path}"
    else:
        uri = f"nbd://{info['address']}:{info['port']}/{export}"
    out = subprocess.run(
        ["nbdinfo", "--json", uri], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    found = json.loads(out)
    assert found["protocol"] == "newstyle-fixed" and found["structured"] is False
    assert found["TLS"] is (purpose == "nbd")
    (exp,) = found["exports"]
    assert exp["export-size"] == 16 * MiB and exp["is_read_only"] is True
    assert exp["can_trim"] is False and exp["can_flush"] is False
    before = sim.nbd.stats["bytes_read"]
    image = tmp_path / "disk.raw"
    subprocess.run(["nbdcopy", uri, str(image)], capture_output=True, timeout=120, check=True)
    assert sim.nbd.stats["bytes_read"] - before == 16 * MiB  # every byte, once
    data = image.read_bytes()
    assert len(data) == 16 * MiB and data[5 * MiB : 6 * MiB] == pattern
    assert data == read_disk(vm, "xvda", 0, 16 * MiB)
