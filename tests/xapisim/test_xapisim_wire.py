"""xapisim's bytes: compact XML-RPC as ocaml-rpc writes it (read back with the strict reader
of xapisim_helpers), xapi's HTTP framing, JSON-RPC 1.0/2.0 at /jsonrpc (plain urllib and
json), system.listMethods, event.inject, and the host/VDI facts real hosts report."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import xmlrpc.client
from collections.abc import Iterator
from typing import Any

import pytest
import XenAPI
from xapisim_helpers import (
    I4,
    NULL,
    REF_RE,
    XML_HEAD,
    XML_TAIL,
    WireError,
    login,
    parse_strict,
    strict_check,
    wait_for,
)

import xapisim
from xapisim.tables import (
    CLASSES,
    EMPTY_REF_FIELDS,
    HTTP_500_HEAD,
    JSONRPC_ERROR_CODE,
    MESSAGES,
    RPC_REPLY_HEADERS,
    SOFTWARE_VERSION,
)

pytestmark = pytest.mark.xen

PASSWORD = "wire-secret"


@pytest.fixture(scope="module")
def server() -> Iterator[xapisim.SimServer]:
    with xapisim.serve(hosts=2, vms=3, running=1, password=PASSWORD, tls=False,
                       op_delay=0.01, guest_delay=0.05) as srv:  # fmt: skip
        yield srv


# ------------------------------------------------------------------------------ clients


def raw_http(server: xapisim.SimServer, path: str, body: bytes, ctype: str = "text/xml",
             close: bool = False) -> tuple[str, list[tuple[str, str]], bytes]:  # fmt: skip
    """POST over a plain socket; the status line, the headers in order, the body."""
    req = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            assert chunk, buf
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = [tuple(x.split(": ", 1)) for x in lines[1:]]
        length = int(dict((k.lower(), v) for k, v in headers)["content-length"])
        while len(rest) < length:
            chunk = s.recv(65536)
            assert chunk
            rest += chunk
    return lines[0], headers, rest[:length]  # type: ignore[return-value]


def xml_call(method: str, *values: str) -> bytes:
    """A methodCall whose parameters are given as ready <value> elements."""
    params = "".join(f"<param>{v}</param>" for v in values)
    return (
        f'<?xml version="1.0"?><methodCall><methodName>{method}</methodName>'
        f"<params>{params}</params></methodCall>"
    ).encode()


def v(text: str) -> str:
    return f"<value>{text}</value>"


def call(server: xapisim.SimServer, method: str, *values: str) -> Any:
    status, _, body = raw_http(server, "/", xml_call(method, *values))
    assert status == "HTTP/1.1 200 OK"
    return parse_strict(body)


@pytest.fixture(scope="module")
def sess(server: xapisim.SimServer) -> Iterator[str]:
    r = call(server, "session.login_with_password", v("root"), v(PASSWORD), v("2.21"), v("t"))
    yield r["Value"]
    call(server, "session.logout", v(r["Value"]))


def value(server: xapisim.SimServer, sess: str, method: str, *values: str) -> Any:
    r = call(server, method, v(sess), *values)
    assert r["Status"] == "Success", r
    return r["Value"]


def jsonrpc(server: xapisim.SimServer, body: Any, raw_body: bytes | None = None) -> Any:
    data = raw_body if raw_body is not None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/jsonrpc", data=data,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.headers["content-type"] == "application/json"
        text = r.read()
    doc = json.loads(text)
    # compact, UTF-8 unescaped, as Yojson.Safe.to_string writes
    assert json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() == text
    return doc


def j2(server: xapisim.SimServer, method: str, *params: Any, ident: Any = 7) -> Any:
    return jsonrpc(server, {"jsonrpc": "2.0", "method": method, "params": list(params),
                            "id": ident})  # fmt: skip


def j1(server: xapisim.SimServer, method: str, *params: Any, ident: Any = "x1") -> Any:
    return jsonrpc(server, {"method": method, "params": list(params), "id": ident})


# ------------------------------------------------------------------------------ the reader


def test_strict_reader_rejects_what_xapi_never_writes() -> None:
    def doc(val: str) -> bytes:
        inner = "<value><struct><member><name>Status</name><value>Success</value></member>"
        return (XML_HEAD + inner + f"<member><name>Value</name>{val}</member></struct></value>"
                + XML_TAIL).encode()  # fmt: skip

    assert parse_strict(doc("<value>a&amp;b</value>"))["Value"] == "a&b"
    assert parse_strict(doc("<value></value>"))["Value"] == ""
    assert parse_strict(doc("<value><i4>5</i4></value>"))["Value"] == I4(5)
    assert parse_strict(doc("<value><double>0.5</double></value>"))["Value"] == 0.5
    for bad in ("<value><string>a</string></value>", "<value> <i4>5</i4></value>",
                "<value><array>\n<data></data></array></value>", "<value><i8>5</i8></value>",
                "<value><int>5</int></value>", "<value><i4>05</i4></value>",
                "<value><double>0.50</double></value>", "<value><boolean>true</boolean></value>",
                "<value><dateTime.iso8601>2026-01-01T00:00:00Z</dateTime.iso8601></value>",
                "<value>a>b</value>", "<value>&apos;</value>"):  # fmt: skip
        with pytest.raises(WireError):
            parse_strict(doc(bad))
    with pytest.raises(WireError):
        parse_strict(b"<?xml version='1.0'?>\n" + doc("<value></value>")[len(XML_HEAD) :])


# ------------------------------------------------------------------------------ XML-RPC bytes


def test_login_reply_bytes_and_headers(server: xapisim.SimServer) -> None:
    status, headers, body = raw_http(
        server, "/", xml_call("session.login_with_password", v("root"), v(PASSWORD))
    )
    assert status == "HTTP/1.1 200 OK"
    names = [k for k, _ in headers]
    assert names == ["content-length"] + [k for k, _ in RPC_REPLY_HEADERS]
    assert dict(headers) == {"content-length": str(len(body)), **dict(RPC_REPLY_HEADERS)}
    m = re.fullmatch(
        rb'<\?xml version="1.0"\?><methodResponse><params><param><value><struct>'
        rb"<member><name>Status</name><value>Success</value></member>"
        rb"<member><name>Value</name><value>(OpaqueRef:[0-9a-f-]{36})</value></member>"
        rb"</struct></value></param></params></methodResponse>",
        body,
    )
    assert m, body
    call(server, "session.logout", v(m.group(1).decode()))
    # Connection: close is answered with connection: close
    _, headers, _ = raw_http(server, "/", xml_call("system.listMethods"), close=True)
    assert dict(headers)["connection"] == "close"


def test_failure_reply_bytes(server: xapisim.SimServer, sess: str) -> None:
    _, _, body = raw_http(server, "/", xml_call("VM.get_power_state", v(sess), v("OpaqueRef:x")))
    assert body == (
        b'<?xml version="1.0"?><methodResponse><params><param><value><struct>'
        b"<member><name>Status</name><value>Failure</value></member>"
        b"<member><name>ErrorDescription</name><value><array><data>"
        b"<value>HANDLE_INVALID</value><value>VM</value><value>OpaqueRef:x</value>"
        b"</data></array></value></member></struct></value></param></params></methodResponse>"
    )


def test_every_record_in_xapis_byte_forms(server: xapisim.SimServer, sess: str) -> None:
    vm = value(server, sess, "VM.get_by_name_label", v("vm-01"))[0]  # running
    wait_for(lambda: value(server, sess, "VM.get_guest_metrics", v(vm)) != NULL)
    value(server, sess, "Async.VM.hard_shutdown", v(vm))  # a task
    wait_for(lambda: not value(server, sess, "VM.get_current_operations", v(vm)))
    value(server, sess, "VM.start", v(vm), "<value><boolean>0</boolean></value>",
          "<value><boolean>0</boolean></value>")  # fmt: skip
    wait_for(lambda: value(server, sess, "VM.get_guest_metrics", v(vm)) != NULL)
    for cls, spec in CLASSES.items():
        if cls == "session":
            continue
        _, _, body = raw_http(server, "/", xml_call(f"{cls}.get_all_records", v(sess)))
        assert b"<string>" not in body and b"<value><value>" not in body
        assert b"\n" not in body  # no data here holds a newline
        records = parse_strict(body)["Value"]
        assert records, cls
        for ref, rec in records.items():
            assert REF_RE.match(ref)
            assert list(rec) == list(spec.fields), cls  # every field, datamodel order
            for f, ty in spec.fields.items():
                if (cls, f) in EMPTY_REF_FIELDS:
                    assert rec[f] == "", (cls, f)
                    continue
                strict_check(rec[f], ty, f"{cls}.{f}")
    # single getters, and an empty string is <value></value>
    _, _, body = raw_http(server, "/", xml_call("VM.get_PV_kernel", v(sess), v(vm)))
    assert b"<member><name>Value</name><value></value></member>" in body
    _, _, body = raw_http(server, "/", xml_call("VM.get_VCPUs_max", v(sess), v(vm)))
    assert b"<member><name>Value</name><value>2</value></member>" in body
    _, _, body = raw_http(server, "/", xml_call("VM.get_HVM_shadow_multiplier", v(sess), v(vm)))
    assert b"<member><name>Value</name><value><double>1</double></value></member>" in body
    _, _, body = raw_http(server, "/", xml_call("VM.get_is_a_template", v(sess), v(vm)))
    assert b"<member><name>Value</name><value><boolean>0</boolean></value></member>" in body
    host = value(server, sess, "host.get_all")[0]
    t = value(server, sess, "host.get_servertime", v(host))
    assert re.fullmatch(r"\d{8}T\d\d:\d\d:\d\dZ", t)


def test_event_from_counts_are_i4(server: xapisim.SimServer, sess: str) -> None:
    r = value(server, sess, "event.from", "<value><array><data><value>host</value></data>"
              "</array></value>", v(""), "<value><double>0</double></value>")  # fmt: skip
    assert set(r) == {"events", "valid_ref_counts", "token"}
    assert all(type(n) is I4 for n in r["valid_ref_counts"].values())
    assert r["valid_ref_counts"]["host"] == 2
    assert re.fullmatch(r"\d{20},\d{20}", r["token"])
    for ev in r["events"]:
        assert list(ev) == ["id", "timestamp", "class", "operation", "ref", "snapshot"]
        assert ev["class"] == "host" and ev["operation"] == "add"
        strict_check(ev["snapshot"]["memory_overhead"], "int", "host.memory_overhead")


def test_requests_in_every_form_clients_send(server: xapisim.SimServer, sess: str) -> None:
    # <string> and bare text for strings, <i4>/<int>/<i8>/decimal string for ints,
    # <boolean>, whitespace and newlines between elements as Python's xmlrpc.client writes.
    vm = value(server, sess, "VM.get_by_name_label", "<value><string>vm-02</string></value>")[0]
    clone = value(server, sess, "VM.clone", v(vm), "<value><string>wire-req</string></value>")
    for n, form in ((2, "<value><i4>2</i4></value>"), (3, "<value><int>3</int></value>"),
                    (4, "<value><i8>4</i8></value>"), (5, "<value>5</value>"),
                    (3, "<value><string>3</string></value>")):  # fmt: skip
        assert value(server, sess, "VM.set_VCPUs_max", v(clone), form) == ""
        assert value(server, sess, "VM.get_VCPUs_max", v(clone)) == str(n)
    body = xmlrpc.client.dumps((sess, clone, "pretty"), "VM.set_name_label").encode()
    assert b"\n" in body and b"<string>" in body
    _, _, out = raw_http(server, "/", body)
    assert parse_strict(out) == {"Status": "Success", "Value": ""}
    assert value(server, sess, "VM.get_name_label", v(clone)) == "pretty"
    value(server, sess, "VM.destroy", v(clone))


def test_text_is_escaped_as_ocaml_rpc_does(server: xapisim.SimServer, sess: str) -> None:
    vm = value(server, sess, "VM.get_by_name_label", v("vm-03"))[0]
    # (\x01 cannot travel in XML; JSON-RPC carries it)
    assert j2(server, "VM.set_name_description", sess, vm, 'a<b>&"c"\x01\td\u00e9')["result"] == ""
    _, _, out = raw_http(server, "/", xml_call("VM.get_name_description", v(sess), v(vm)))
    assert "<value>a&lt;b&gt;&amp;&quot;c&quot;\td\u00e9</value>".encode() in out
    assert parse_strict(out)["Value"] == 'a<b>&"c"\td\u00e9'  # \x01 dropped, as encode_buf


def test_unparsable_requests_get_http_500(server: xapisim.SimServer) -> None:
    for body in (b"<methodCall><methodName>session.logout</methodName></methodCall>",
                 b"not xml at all"):  # fmt: skip
        status, headers, out = raw_http(server, "/", body)
        assert status == HTTP_500_HEAD
        assert [k for k, _ in headers] == ["content-length", "content-type", "connection",
                                           "cache-control"]  # fmt: skip
        assert dict(headers)["content-type"] == "text/html"
        assert out.startswith(b"<html><body><h1>HTTP 500 internal server error</h1>")
        assert b"Xmlrpc.Parse_error" in out


# ------------------------------------------------------------------------------ listMethods


def test_system_list_methods(server: xapisim.SimServer, sess: str) -> None:
    _, _, body = raw_http(server, "/", xml_call("system.listMethods"))  # no session
    names = parse_strict(body, bare=True)
    assert body.startswith(XML_HEAD.encode() + b"<value><array><data><value>")
    assert isinstance(names, list) and all(type(n) is str for n in names)
    assert len(names) == len(set(names)) > 500
    for n in ("session.login_with_password", "session.logout", "VM.start", "VM.get_record",
              "VM.get_all_records_where", "VM.get_power_state", "VM.set_name_label",
              "VM.add_to_other_config", "VM.add_tags", "event.from", "event.inject",
              "host.get_software_version", "task.cancel"):  # fmt: skip
        assert n in names, n
    assert not any(n.startswith(("Async.", "system.")) for n in names)
    assert set(MESSAGES) <= set(names)
    # every listed method is known to the dispatcher (no MESSAGE_METHOD_UNKNOWN)
    for n in names:
        r = call(server, n, v("OpaqueRef:not-a-session"))
        assert r["Status"] == "Failure" and r["ErrorDescription"][0] != "MESSAGE_METHOD_UNKNOWN"
    assert j1(server, "system.listMethods") == {"result": names, "error": None, "id": "x1"}
    assert j2(server, "system.listMethods") == {"jsonrpc": "2.0", "result": names, "id": 7}


# ------------------------------------------------------------------------------ event.inject


def test_event_inject_wakes_event_from(server: xapisim.SimServer, sess: str) -> None:
    x = login(server, "inject").xenapi
    y = login(server, "inject-waiter").xenapi  # one connection per thread
    try:
        vm = x.VM.get_by_name_label("vm-02")[0]
        token = getattr(x.event, "from")(["vm"], "", 0.0)["token"]
        got: dict[str, Any] = {}

        def wait() -> None:
            got["r"] = getattr(y.event, "from")(["vm"], token, 10.0)

        t = threading.Thread(target=wait)
        start = time.monotonic()
        t.start()
        time.sleep(0.3)
        assert t.is_alive()  # blocked: nothing changed
        itoken = x.event.inject("VM", vm)
        t.join(5.0)
        assert not t.is_alive() and time.monotonic() - start < 5.0
        evs = got["r"]["events"]
        assert [(e["class"], e["operation"], e["ref"]) for e in evs] == [("vm", "mod", vm)]
        assert evs[0]["snapshot"]["uuid"] == x.VM.get_uuid(vm)
        # xapi_event.ml: inject -- "%020Ld,%020Ld" (generation - 1, 0); later event.from
        # tokens compare greater as strings
        assert re.fullmatch(r"\d{20},0{20}", itoken)
        assert got["r"]["token"] > itoken
        assert int(itoken.split(",")[0]) == int(token.split(",")[0]) - 1  # nothing in between
        # from the inject token, the injected event is seen
        again = getattr(x.event, "from")(["vm"], itoken, 0.0)
        assert vm in [e["ref"] for e in again["events"]]
        # the class must be the table's name as xapi spells it
        for cls, ref in (("vm", vm), ("host", vm), ("VM", "OpaqueRef:nope"), ("nope", vm)):
            with pytest.raises(XenAPI.Failure) as e:
                x.event.inject(cls, ref)
            assert e.value.details == ["HANDLE_INVALID", cls, ref]
        with pytest.raises(XenAPI.Failure) as e:
            x.Async.event.inject("VM", vm)
        assert e.value.details[0] == "MESSAGE_METHOD_UNKNOWN"
    finally:
        x.session.logout()
        y.session.logout()


# ------------------------------------------------------------------------------ JSON-RPC


def test_jsonrpc_v1_and_v2_shapes(server: xapisim.SimServer) -> None:
    r = j1(server, "session.login_with_password", "root", PASSWORD, "2.21", "json1")
    assert list(r) == ["result", "error", "id"] and r["error"] is None and r["id"] == "x1"
    s1 = r["result"]
    assert REF_RE.match(s1)
    r = j2(server, "session.login_with_password", "root", PASSWORD, "2.21", "json2", ident=3)
    assert list(r) == ["jsonrpc", "result", "id"] and r["jsonrpc"] == "2.0" and r["id"] == 3
    s2 = r["result"]
    # errors: v1 [code, *params]; v2 {"code": 1, "message": code, "data": params}
    assert j1(server, "VM.get_power_state", s1, "OpaqueRef:x", ident=5) == {
        "result": None, "error": ["HANDLE_INVALID", "VM", "OpaqueRef:x"], "id": 5}  # fmt: skip
    assert j2(server, "VM.get_power_state", s2, "OpaqueRef:x", ident="s") == {
        "jsonrpc": "2.0", "id": "s",
        "error": {"code": JSONRPC_ERROR_CODE, "message": "HANDLE_INVALID",
                  "data": ["VM", "OpaqueRef:x"]}}  # fmt: skip
    assert j2(server, "session.login_with_password", "root", "wrong")["error"] == {
        "code": 1, "message": "SESSION_AUTHENTICATION_FAILED",
        "data": ["root", "Authentication failure"]}  # fmt: skip
    assert j2(server, "VM.no_such_message", s2)["error"]["message"] == "MESSAGE_METHOD_UNKNOWN"
    # v2 without params: [] (jsonrpc.ml), so a count mismatch, not a malformed request
    r = jsonrpc(server, {"jsonrpc": "2.0", "method": "session.login_with_password", "id": 0})
    assert r["error"]["message"] == "MESSAGE_PARAMETER_COUNT_MISMATCH"
    # logout through JSON ends the session for both protocols
    assert j2(server, "session.logout", s2) == {"jsonrpc": "2.0", "result": "", "id": 7}
    assert j2(server, "VM.get_all", s2)["error"] == {
        "code": 1, "message": "SESSION_INVALID", "data": [s2]}  # fmt: skip
    assert call(server, "VM.get_all", v(s2))["ErrorDescription"] == ["SESSION_INVALID", s2]
    j1(server, "session.logout", s1)


def test_jsonrpc_types_and_shared_sessions(server: xapisim.SimServer, sess: str) -> None:
    # a session from XML-RPC works over JSON-RPC and the reverse (wire-protocol.md)
    vm = j2(server, "VM.get_by_name_label", sess, "vm-01")["result"][0]
    rec = j2(server, "VM.get_record", sess, vm)["result"]
    fields = CLASSES["VM"].fields
    assert list(rec) == list(fields)
    for f, ty in fields.items():
        kind = ty.split(" ", 1)[0]
        want = {"int": int, "float": float, "bool": bool, "datetime": str, "set": list,
                "map": dict}.get(kind, str)  # fmt: skip
        assert type(rec[f]) is want, (f, rec[f])
    assert rec["memory_static_max"] == 1024**3 and rec["VCPUs_max"] == 2
    assert re.fullmatch(r"\d{8}T\d\d:\d\d:\d\dZ", rec["snapshot_time"])
    # the same record over XML-RPC, ints as decimal text
    xml_rec = value(server, sess, "VM.get_record", v(vm))
    for f, ty in fields.items():
        if ty == "int":
            assert xml_rec[f] == str(rec[f])
    # parameters as JSON sends them: numbers for ints, true/false, objects for records
    s = j1(server, "session.login_with_password", "root", PASSWORD)["result"]
    halted = j2(server, "VM.get_by_name_label", s, "vm-02")["result"][0]
    clone = j1(server, "VM.clone", s, halted, "json-clone")["result"]
    assert REF_RE.match(clone)
    assert j1(server, "VM.set_VCPUs_max", s, clone, 3)["error"] is None
    assert j1(server, "VM.set_VCPUs_max", s, clone, "4")["error"] is None
    assert value(server, sess, "VM.get_VCPUs_max", v(clone)) == "4"
    assert j2(server, "VM.set_is_a_template", sess, clone, True)["result"] == ""
    assert j2(server, "VM.get_is_a_template", sess, clone)["result"] is True
    assert j2(server, "VM.set_is_a_template", sess, clone, False)["result"] == ""
    assert j2(server, "VM.add_to_other_config", s, clone, "k", "v")["result"] == ""
    assert j2(server, "VM.get_other_config", sess, clone)["result"] == {"k": "v"}
    ev = j2(server, "event.from", s, ["vm"], "", 0)["result"]
    assert all(type(n) is int for n in ev["valid_ref_counts"].values())
    assert j2(server, "event.get_current_id", s)["result"] > 0
    assert re.fullmatch(r"\d{20},0{20}", j2(server, "event.inject", s, "VM", clone)["result"])
    task = j2(server, "Async.VM.hard_shutdown", s, clone)["result"]
    assert task.startswith("OpaqueRef:")
    deadline = time.monotonic() + 5
    while j2(server, "task.get_status", s, task)["result"] == "pending":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert j2(server, "task.get_record", s, task)["result"]["error_info"][0] == (
        "VM_BAD_POWER_STATE")  # fmt: skip
    assert j2(server, "VM.destroy", s, clone)["result"] == ""
    j2(server, "session.logout", s)


def test_jsonrpc_malformed_requests_get_http_500(server: xapisim.SimServer) -> None:
    for body in (b'{"method": "session.logout", "params": []}',  # no id (a notification)
                 b'{"jsonrpc": "2.0", "method": "x", "params": [], "id": null}',
                 b'{"jsonrpc": "1.0", "method": "x", "params": [], "id": 1}',
                 b'{"method": "x", "id": 1}',  # 1.0 needs params
                 b'{"params": [], "id": 1}', b"[1, 2]", b"{not json"):  # fmt: skip
        status, headers, out = raw_http(server, "/jsonrpc", body, "application/json")
        assert status == HTTP_500_HEAD, body
        assert dict(headers)["content-type"] == "text/html"
        assert b"Jsonrpc.Malformed_method_request" in out
        with pytest.raises(urllib.error.HTTPError) as e:
            jsonrpc(server, None, raw_body=body)
        assert e.value.code == 500
    # a v2.0 params object is the one parameter
    r = jsonrpc(server, {"jsonrpc": "2.0", "method": "VM.get_all", "params": {"a": 1}, "id": 1})
    assert r["error"]["message"] == "SESSION_INVALID"
    status, headers, _ = raw_http(server, "/jsonrpc", b'{"method":"system.listMethods",'
                                  b'"params":[],"id":1}', "application/json")  # fmt: skip
    assert status == "HTTP/1.1 200 OK"
    assert [k for k, _ in headers] == ["content-length"] + [k for k, _ in RPC_REPLY_HEADERS]


# ------------------------------------------------------------------------------ host facts


def test_software_version_and_metadata_of_pool(server: xapisim.SimServer, sess: str) -> None:
    for host in value(server, sess, "host.get_all"):
        sv = value(server, sess, "host.get_software_version", v(host))
        assert sv == SOFTWARE_VERSION and list(sv) == list(SOFTWARE_VERSION)
        for key in ("product_version", "product_version_text", "product_version_text_short",
                    "platform_name", "platform_version", "product_brand", "build_number",
                    "xapi", "hostname", "date", "xen", "linux", "xencenter_min",
                    "xencenter_max", "network_backend", "db_schema", "dbv"):  # fmt: skip
            assert sv[key], key
        assert sv["xencenter_min"] == "{}.{}".format(
            value(server, sess, "host.get_API_version_major", v(host)),
            value(server, sess, "host.get_API_version_minor", v(host)),
        )
    vdis = value(server, sess, "VDI.get_all_records")
    assert vdis and all(r["metadata_of_pool"] == "" for r in vdis.values())
    sr = value(server, sess, "pool.get_default_SR", v(value(server, sess, "pool.get_all")[0]))
    new = j2(server, "VDI.create", sess, {
        "name_label": "wire-vdi", "name_description": "", "SR": sr, "virtual_size": 1 << 20,
        "type": "user", "sharable": False, "read_only": False, "other_config": {}})  # fmt: skip
    ref = new["result"]
    assert value(server, sess, "VDI.get_metadata_of_pool", v(ref)) == ""
    assert j2(server, "VDI.get_metadata_of_pool", sess, ref)["result"] == ""
    assert value(server, sess, "VDI.get_record", v(ref))["metadata_of_pool"] == ""
    value(server, sess, "VDI.destroy", v(ref))
    assert NULL not in [r["metadata_of_pool"] for r in vdis.values()]


def test_cached_records_follow_changes(server: xapisim.SimServer, sess: str) -> None:
    """Encoded records are cached; every change must show in the next read, whichever
    protocol reads it (the suite also runs with XAPISIM_CHECK_CACHE=1)."""
    assert server.db.check_cache
    vm = value(server, sess, "VM.get_by_name_label", v("vm-03"))[0]
    before = value(server, sess, "VM.get_all_records")[vm]
    value(server, sess, "VM.add_tags", v(vm), v("cached"))
    assert value(server, sess, "VM.get_all_records")[vm]["tags"] == before["tags"] + ["cached"]
    assert j2(server, "VM.get_record", sess, vm)["result"]["tags"][-1] == "cached"
    value(server, sess, "VM.start", v(vm), "<value><boolean>0</boolean></value>",
          "<value><boolean>0</boolean></value>")  # fmt: skip
    recs = value(server, sess, "VM.get_all_records_where", v('field "power_state" = "Running"'))
    assert vm in recs and recs[vm]["power_state"] == "Running"
    metrics = recs[vm]["metrics"]
    assert value(server, sess, "VM_metrics.get_record", v(metrics))["VCPUs_number"] == "2"
    value(server, sess, "VM.hard_shutdown", v(vm))
    assert value(server, sess, "VM.get_record", v(vm))["power_state"] == "Halted"
    assert j1(server, "VM.get_power_state", sess, vm)["result"] == "Halted"
    value(server, sess, "VM.remove_tags", v(vm), v("cached"))
    # a stale entry is caught by the check
    assert value(server, sess, "VM.get_record", v(vm))["tags"] == before["tags"]  # cached
    server.db.wire_cache["VM"][vm].value["name_label"] = "stale"
    r = call(server, "VM.get_record", v(sess), v(vm))
    assert r["Status"] == "Failure" and r["ErrorDescription"][0] == "INTERNAL_ERROR"
    assert "stale wire cache" in r["ErrorDescription"][1]
    server.db.wire_cache["VM"].pop(vm)
    assert value(server, sess, "VM.get_record", v(vm))["name_label"] == "vm-03"


def test_cors_preflight(server: xapisim.SimServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"OPTIONS /jsonrpc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  b"Access-Control-Request-Headers: content-type\r\n\r\n")  # fmt: skip
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.decode() == (
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n"
        "cache-control: no-cache, no-store\r\nAccess-Control-Allow-Origin: *\r\n"
        "Access-Control-Allow-Headers: content-type, X-Requested-With\r\n"
        "Access-Control-Allow-Methods: PUT\r\n\r\n"
    )


def test_event_next_snapshots_start_at_registration(server: xapisim.SimServer) -> None:
    """Event snapshots are kept only while a session is registered (event.next reports the
    record as it was at each event); the subscription starts at registration
    (xapi_event.ml: get_subscription)."""
    s = login(server, "next").xenapi
    try:
        vm = s.VM.get_by_name_label("vm-03")[0]
        s.VM.set_name_description(vm, "before")  # before registering: not reported
        s.event.register(["vm"])
        s.VM.set_name_description(vm, "one")
        s.VM.set_name_description(vm, "two")
        evs = [e for e in s.event.next() if e["ref"] == vm]
        assert [e["snapshot"]["name_description"] for e in evs] == ["one", "two"]
        assert all(e["operation"] == "mod" and e["class"] == "vm" for e in evs)
        s.event.unregister(["vm"])
    finally:
        s.session.logout()


def test_sdk_replies_are_read_strictly(server: xapisim.SimServer) -> None:
    """The helpers' transport reads every reply of every SDK call in the suite strictly."""
    from xapisim_helpers import _Strict

    before = _Strict.replies
    s = login(server, "strict")
    s.xenapi.VM.get_all_records()
    s.xenapi.session.logout()
    assert _Strict.replies >= before + 3


def test_encoder_writes_the_tables_forms() -> None:
    """wire.py writes each Rpc.t form exactly as tables.WIRE_FORMS records it."""
    from xapisim.tables import WIRE_FORMS, XML_RESPONSE_HEAD, XML_RESPONSE_TAIL
    from xapisim.wire import I32, xml_response, xml_value

    forms = WIRE_FORMS
    assert xml_value("a<b") == forms["String"].replace("TEXT", "a&lt;b")
    assert xml_value("") == forms["String (empty)"]
    assert xml_value(-42) == forms["Int"].replace("DECIMAL", "-42")
    assert xml_value(I32(7)) == forms["Int32"].replace("DECIMAL", "7")
    assert xml_value(True) == forms["Bool"].replace("1|0", "1")
    assert xml_value(False) == forms["Bool"].replace("1|0", "0")
    assert xml_value(0.1) == forms["Float"].replace("%.16g", "0.1")
    assert xml_value(1e16) == forms["Float"].replace("%.16g", "1e+16")
    stamp = xmlrpc.client.DateTime("20260101T12:00:00Z")
    assert xml_value(stamp) == forms["DateTime"]
    assert xml_value(["x"]) == forms["Enum"].replace("VALUE...", "<value>x</value>")
    assert xml_value({"k": ""}) == forms["Dict"].replace("NAME", "k").replace(
        "VALUE</member>...", "<value></value></member>")  # fmt: skip
    assert xml_value(None) == forms["Null"]
    out = xml_response({"Status": "Success", "Value": ""}).decode()
    assert out.startswith(XML_RESPONSE_HEAD) and out.endswith(XML_RESPONSE_TAIL)


def test_jsonrpc_as_the_sdks_frame_requests(server: xapisim.SimServer) -> None:
    """The C# SDK's default (JsonRpc.cs: JsonRequestV1, indented, no "jsonrpc", int id)
    and the Go SDK's (jsonrpc_client.go: "jsonrpc": "2.0", "id": 0)."""
    csharp = json.dumps({"id": 1, "method": "session.login_with_password",
                         "params": ["root", PASSWORD, "2.21", "csharp"]}, indent=2)  # fmt: skip
    r = jsonrpc(server, None, raw_body=csharp.encode())
    assert list(r) == ["result", "error", "id"] and r["id"] == 1 and r["error"] is None
    go = json.dumps({"jsonrpc": "2.0", "method": "session.logout", "params": [r["result"]],
                     "id": 0})  # fmt: skip
    assert jsonrpc(server, None, raw_body=go.encode()) == {"jsonrpc": "2.0", "result": "",
                                                            "id": 0}  # fmt: skip
