"""VDI content, changed-block tracking and the HTTP data path (/export_raw_vdi,
/import_raw_vdi), through the real XenAPI SDK and raw HTTP on a plain socket."""

from __future__ import annotations

import base64
import http.client
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from xapisim_helpers import failure, new_vm, wait_for

import xapisim
from xapisim.tables import CBT_ERROR, CBT_SAME, CBT_UNRELATED, EXPORT_HEADERS, IMPORT_HEADERS

PASSWORD = "vdi-data-pw"
MiB = 1024**2
BLOCK = 64 * 1024
SIZE = 8 * MiB


@pytest.fixture(scope="module")
def server() -> Iterator[xapisim.SimServer]:
    with xapisim.serve(hosts=1, vms=1, password=PASSWORD, tls=False, op_delay=0.0) as srv:
        yield srv


def sr_of(x: Any) -> str:
    return str(x.pool.get_default_SR(x.pool.get_all()[0]))


def new_vdi(x: Any, size: int = SIZE) -> str:
    return str(
        x.VDI.create(
            {
                "name_label": "data",
                "name_description": "",
                "SR": sr_of(x),
                "virtual_size": str(size),
                "type": "user",
                "sharable": False,
                "read_only": False,
                "other_config": {},
            }
        )
    )


def request(
    server: xapisim.SimServer, method: str, target: str, body: bytes = b"", headers: str = ""
) -> tuple[bytes, bytes]:
    """A raw HTTP/1.1 request on a socket; the response head and body (read to EOF)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}"
        if method == "PUT":
            head += f"Content-Length: {len(body)}\r\n"
        s.sendall((head + "\r\n").encode() + body)
        data = b""
        while chunk := s.recv(1 << 20):
            data += chunk
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    return head_bytes, rest


@pytest.fixture(scope="module")
def sid(server: xapisim.SimServer) -> Iterator[str]:
    import XenAPI

    s = XenAPI.Session(server.url)
    s.xenapi.login_with_password("root", PASSWORD, "2.21", "vdi-data")
    yield str(s._session)
    s.xenapi.session.logout()


def put(server: xapisim.SimServer, sid: str, vdi: str, body: bytes, fmt: str = "raw") -> bytes:
    head, _ = request(
        server, "PUT", f"/import_raw_vdi?session_id={sid}&vdi={vdi}&format={fmt}", body
    )
    return head


def get(server: xapisim.SimServer, sid: str, vdi: str, extra: str = "") -> tuple[bytes, bytes]:
    return request(server, "GET", f"/export_raw_vdi?session_id={sid}&vdi={vdi}{extra}")


def blocks(b64: str) -> list[int]:
    raw = base64.b64decode(b64)
    return [i for i in range(len(raw) * 8) if raw[i // 8] & (0x80 >> (i % 8))]


def test_raw_roundtrip_and_headers(server: xapisim.SimServer, x: Any, sid: str) -> None:
    vdi = new_vdi(x)
    data = bytes(range(256)) * 4096 * 2  # 2 MiB
    head = put(server, sid, vdi, data)
    lines = head.decode().split("\r\n")
    assert lines[0] == IMPORT_HEADERS[0] == "HTTP/1.1 200 OK"
    assert lines[1:3] == ["Connection: close", "Cache-Control: no-cache, no-store"]
    assert lines[3].startswith("task-id:OpaqueRef:") and lines[4] == IMPORT_HEADERS[4]
    head, body = get(server, sid, vdi)
    lines = head.decode().split("\r\n")
    uuid = x.VDI.get_uuid(vdi)
    assert lines[:3] == EXPORT_HEADERS[:3]
    assert lines[3].startswith("task-id:OpaqueRef:")
    assert lines[4:] == [
        "content-type:application/octet-stream",
        f'content-disposition: attachment; filename="{uuid}.raw"',
    ]
    assert len(body) == SIZE and body[: len(data)] == data and not any(body[len(data) :])
    # the handler's own task goes with the request (exec_with_new_task)
    assert lines[3][len("task-id:") :] not in x.task.get_all()
    x.VDI.destroy(vdi)


def test_vhd_export_is_sparse_and_imports_back(server: xapisim.SimServer, x: Any, sid: str) -> None:
    vdi = new_vdi(x)
    put(server, sid, vdi, b"\0" * (5 * MiB) + b"z" * 1000)  # data in the third 2 MiB block
    head, vhd = get(server, sid, vdi, "&format=vhd")
    assert b"content-type:application/vhd" in head
    assert vhd[:8] == b"conectix" and vhd[-512:] == vhd[:512]
    assert vhd[512:520] == b"cxsparse"
    (entries,) = struct.unpack_from(">I", vhd, 512 + 28)
    bat = struct.unpack_from(f">{entries}I", vhd, 1536)
    assert entries == 4 and [i for i, s in enumerate(bat) if s != 0xFFFFFFFF] == [2]
    assert len(vhd) == 512 + 1024 + 512 + 512 + 2 * MiB + 512  # one block, no holes
    copy = new_vdi(x)
    assert b"200 OK" in put(server, sid, copy, vhd, "vhd")
    assert get(server, sid, copy)[1] == get(server, sid, vdi)[1]
    for v in (vdi, copy):
        x.VDI.destroy(v)


def test_vhd_import_writes_only_marked_sectors(server: xapisim.SimServer, x: Any, sid: str) -> None:
    vdi = new_vdi(x)
    put(server, sid, vdi, b"o" * MiB)
    # A VHD with one block whose bitmap marks sector 1 only.
    _, template = get(server, sid, vdi, "&format=vhd")
    vhd = bytearray(template)
    first = struct.unpack_from(">I", vhd, 1536)[0] * 512
    vhd[first : first + 512] = b"\x40" + bytes(511)
    vhd[first + 512 : first + 512 + 2 * MiB] = b"n" * (2 * MiB)
    put(server, sid, vdi, bytes(vhd), "vhd")
    _, body = get(server, sid, vdi)
    assert body[:512] == b"o" * 512 and body[512:1024] == b"n" * 512
    assert body[1024:MiB] == b"o" * (MiB - 1024)
    x.VDI.destroy(vdi)


def test_bad_requests(server: xapisim.SimServer, x: Any, sid: str) -> None:
    vdi = new_vdi(x)
    head, body = get(server, "OpaqueRef:nope", vdi)
    assert head.startswith(b"HTTP/1.1 401 Unauthorised")
    assert b'WWW-Authenticate: Basic realm="VDI.export_raw"' in head and b"401" in body
    head, _ = request(server, "GET", f"/export_raw_vdi?vdi={vdi}")
    assert b"401" in head.split(b"\r\n")[0]
    basic = base64.b64encode(f"root:{PASSWORD}".encode()).decode()
    head, body = request(
        server, "GET", f"/export_raw_vdi?vdi={vdi}", headers=f"Authorization: Basic {basic}\r\n"
    )
    assert head.startswith(b"HTTP/1.1 200 OK") and len(body) == SIZE
    head, _ = get(server, sid, vdi, "&format=qcow3")
    assert head.split(b"\r\n")[0] == b"HTTP/1.0 404 Not Found"
    head, _ = request(server, "GET", f"/export_raw_vdi?session_id={sid}")
    assert head.startswith(b"HTTP/1.1 500")
    head, _ = request(server, "PUT", f"/import_raw_vdi?session_id={sid}", b"x")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 400 Bad Request"
    # a task of the client's own reports the failure of a transfer
    task = x.task.create("import", "")
    put_head, _ = request(
        server,
        "PUT",
        f"/import_raw_vdi?session_id={sid}&vdi={vdi}&format=vhd&task_id={task}",
        b"not a vhd" * 100,
    )
    assert b"200 OK" in put_head
    assert x.task.get_status(task) == "failure"
    assert x.task.get_error_info(task)[0] == "VDI_IO_ERROR"
    x.task.destroy(task)
    x.VDI.destroy(vdi)


def test_cbt_bitmaps_and_errors(server: xapisim.SimServer, x: Any, sid: str) -> None:
    vdi = new_vdi(x)
    assert x.VDI.get_cbt_enabled(vdi) is False
    x.VDI.enable_cbt(vdi)
    x.VDI.enable_cbt(vdi)  # idempotent
    put(server, sid, vdi, b"a" * (3 * BLOCK))
    s1 = x.VDI.snapshot(vdi, {})
    assert x.VDI.get_cbt_enabled(s1) is True and x.VDI.get_snapshot_of(s1) == vdi
    assert x.VDI.get_is_a_snapshot(s1) is True and s1 in x.VDI.get_snapshots(vdi)
    # writes after s1: block 1 (partly) and, as zeroes, block 0 -- CBT counts writes
    request(server, "PUT", f"/import_raw_vdi?session_id={sid}&vdi={vdi}", bytes(BLOCK) + b"b")
    s2 = x.VDI.snapshot(vdi)
    bitmap = x.VDI.list_changed_blocks(s1, s2)
    assert len(base64.b64decode(bitmap)) == SIZE // BLOCK // 8
    assert blocks(bitmap) == [0, 1]
    assert blocks(x.VDI.list_changed_blocks(s1, vdi)) == [0, 1]
    assert blocks(x.VDI.list_changed_blocks(s2, vdi)) == []
    # the snapshots keep their content
    assert get(server, sid, s1)[1][: 3 * BLOCK] == b"a" * (3 * BLOCK)
    assert failure(x.VDI.list_changed_blocks, s2, s1) == [
        "SR_BACKEND_FAILURE_460",
        "",
        f"{CBT_ERROR}{CBT_UNRELATED}]",
        "",
    ]
    assert failure(x.VDI.list_changed_blocks, s1, s1)[2] == f"{CBT_ERROR}{CBT_SAME}]"
    # data_destroy: snapshots with CBT only; keeps the metadata; idempotent
    assert failure(x.VDI.data_destroy, vdi) == [
        "OPERATION_NOT_ALLOWED",
        f"VDI is not a snapshot: {vdi}",
    ]
    assert failure(x.VDI.enable_cbt, s1) == ["OPERATION_NOT_ALLOWED", f"VDI is a snapshot: {s1}"]
    x.VDI.data_destroy(s1)
    x.VDI.data_destroy(s1)
    assert x.VDI.get_type(s1) == "cbt_metadata"
    assert blocks(x.VDI.list_changed_blocks(s1, s2)) == [0, 1]
    assert failure(x.VDI.snapshot, s1) == ["VDI_INCOMPATIBLE_TYPE", s1, "cbt_metadata"]
    task = x.task.create("export", "")
    head, body = get(server, sid, s1, f"&task_id={task}")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b""
    assert x.task.get_error_info(task) == ["VDI_INCOMPATIBLE_TYPE", s1, "cbt_metadata"]
    x.task.destroy(task)
    # disable_cbt ends the chain: a later log is unrelated to the old snapshots
    x.VDI.disable_cbt(vdi)
    x.VDI.disable_cbt(vdi)
    x.VDI.enable_cbt(vdi)
    s3 = x.VDI.snapshot(vdi)
    assert failure(x.VDI.list_changed_blocks, s2, s3)[0] == "SR_BACKEND_FAILURE_460"
    plain = x.VDI.snapshot(new_vdi(x))
    assert failure(x.VDI.data_destroy, plain) == ["VDI_NO_CBT_METADATA", plain]
    for v in (s1, s2, s3, vdi, plain, x.VDI.get_snapshot_of(plain)):
        x.VDI.destroy(v)


def test_vm_snapshot_and_in_use_rules(server: xapisim.SimServer, x: Any, sid: str) -> None:
    vm = new_vm(x, "cbt-vm")
    vbd = next(v for v in x.VM.get_VBDs(vm) if x.VBD.get_type(v) == "Disk")
    vdi = x.VBD.get_VDI(vbd)
    x.VDI.enable_cbt(vdi)
    put(server, sid, vdi, b"q" * BLOCK)
    snap = x.VM.snapshot(vm, "backup")
    svdi = next(x.VBD.get_VDI(v) for v in x.VM.get_VBDs(snap) if x.VBD.get_type(v) == "Disk")
    assert x.VDI.get_cbt_enabled(svdi) and get(server, sid, svdi)[1][:BLOCK] == b"q" * BLOCK
    x.VM.start(vm, False, False)
    # the running VM has its VDI attached: list_changed_blocks to it is refused, an import
    # into it fails in its task
    assert failure(x.VDI.list_changed_blocks, svdi, vdi) == [
        "VDI_IN_USE",
        vdi,
        "list_changed_blocks",
    ]
    task = x.task.create("import", "")
    request(
        server,
        "PUT",
        f"/import_raw_vdi?session_id={sid}&vdi={vdi}&task_id={task}",
        b"w" * 512,
    )
    assert x.task.get_error_info(task)[0] == "VDI_IN_USE"
    x.VM.hard_shutdown(vm)
    # data_destroy waits for the snapshot VM's VBDs to go (VM.destroy keeps the VDIs)
    x.VM.destroy(snap)
    x.VDI.data_destroy(svdi)
    assert x.VDI.get_type(svdi) == "cbt_metadata"
    assert wait_for(lambda: x.VDI.get_VBDs(svdi) == [])
    for v in (svdi, vdi):
        x.VDI.destroy(v)
    x.VM.destroy(vm)


def test_base_export_holds_only_the_difference(server: xapisim.SimServer, x: Any, sid: str) -> None:
    vdi = new_vdi(x)
    put(server, sid, vdi, b"a" * (5 * MiB))
    base = x.VDI.snapshot(vdi)
    request(server, "PUT", f"/import_raw_vdi?session_id={sid}&vdi={vdi}", b"b" * 512)
    _, vhd = get(server, sid, vdi, f"&format=vhd&base={base}")
    (entries,) = struct.unpack_from(">I", vhd, 512 + 28)
    bat = struct.unpack_from(f">{entries}I", vhd, 1536)
    assert [i for i, s in enumerate(bat) if s != 0xFFFFFFFF] == [0]
    _, raw = get(server, sid, vdi, f"&base={x.VDI.get_uuid(base)}")  # a UUID works too
    assert raw[:512] == b"b" * 512 and raw[512 : 2 * MiB] == b"a" * (2 * MiB - 512)
    assert not any(raw[2 * MiB :])  # unchanged since the base: zeroes
    for v in (base, vdi):
        x.VDI.destroy(v)


def test_http_client_reads_the_export(server: xapisim.SimServer, x: Any, sid: str) -> None:
    """http.client (as the vmctl driver reads it): no content-length, body to EOF."""
    vdi = new_vdi(x, MiB)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", f"/export_raw_vdi?session_id={sid}&vdi={vdi}")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-length") is None
    assert len(resp.read()) == MiB
    conn.close()
    x.VDI.destroy(vdi)
