"""HTTPS with certificate verification; Basic, NTLM and SPNEGO(NTLM) through pypsrp/pyspnego;
channel binding; the command line and the harness."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import spnego
from hypervsim_helpers import V2, client, enum_body, enumerate_all, selectors, to_dict
from pypsrp.exceptions import AuthenticationError
from pypsrp.wsman import WSMan

import hypervsim
from hypervsim.ntlm import md4
from tests.hosts import hyperv as harness

pytestmark = pytest.mark.hyperv

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server() -> Iterator[hypervsim.SimServer]:
    with hypervsim.serve(hosts=2, vms=2, tls=True, password="Pw-auth!1") as srv:
        yield srv


def _switch_names(w: WSMan) -> list[str]:
    return [to_dict(e)["ElementName"] for e in enumerate_all(w, "Msvm_VirtualEthernetSwitch")]


@pytest.mark.parametrize("auth", ["basic", "ntlm", "negotiate"])
def test_https_with_verified_certificate(server: hypervsim.SimServer, auth: str) -> None:
    w = client(server, auth=auth)
    assert _switch_names(w) == ["vSwitch"]
    assert _switch_names(w) == ["vSwitch"]  # the authenticated connection is reused
    w.close()
    w2 = client(server, host=1, auth=auth)
    assert _switch_names(w2) == ["vSwitch"]
    w2.close()


@pytest.mark.parametrize("auth", ["basic", "ntlm", "negotiate"])
def test_wrong_password_is_401(server: hypervsim.SimServer, auth: str) -> None:
    w = WSMan(
        "127.0.0.1",
        port=server.ports[0],
        username=server.username,
        password="nope",
        ssl=True,
        auth=auth,
        cert_validation=server.cafile,
        path="wsman",
    )
    with pytest.raises(AuthenticationError):
        w.enumerate(V2 + "Msvm_VirtualEthernetSwitch", enum_body())
    w.close()


def test_certificate(server: hypervsim.SimServer) -> None:
    w = WSMan(
        "127.0.0.1",
        port=server.ports[0],
        username=server.username,
        password=server.password,
        ssl=True,
        auth="ntlm",
        cert_validation=True,
        path="wsman",
        reconnection_retries=0,
    )
    with pytest.raises(requests.exceptions.SSLError):
        w.enumerate(V2 + "Msvm_VirtualEthernetSwitch", enum_body())
    w.close()
    pem = ssl.get_server_certificate(("127.0.0.1", server.ports[0]))
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    assert server.thumbprint == ":".join(digest[i : i + 2] for i in range(0, 64, 2))
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(server.cafile)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "IP Address:127.0.0.1" in out and "Public-Key: (2048 bit)" in out


def _handshake(
    server: hypervsim.SimServer, ctx: spnego.ContextProxy, header: str = "Negotiate"
) -> tuple[int, str]:
    """Run a client context against the server by hand; (final status, final auth header)."""
    tls = ssl.create_default_context(cafile=server.cafile)
    conn = http.client.HTTPSConnection("127.0.0.1", server.ports[0], context=tls, timeout=10)
    body = ET.tostring(_enum_envelope())
    token = ctx.step()
    while True:
        assert token is not None
        conn.request(
            "POST",
            "/wsman",
            body=body,
            headers={
                "Content-Type": "application/soap+xml;charset=UTF-8",
                "Authorization": f"{header} {base64.b64encode(token).decode()}",
            },
        )
        resp = conn.getresponse()
        resp.read()
        www = resp.headers.get("WWW-Authenticate", "")
        if resp.status != 401 or not www.startswith(header + " "):
            return resp.status, www
        token = ctx.step(base64.b64decode(www.split(" ", 1)[1]))


def _enum_envelope() -> ET.Element:
    s, a, w = (
        "http://www.w3.org/2003/05/soap-envelope",
        "http://schemas.xmlsoap.org/ws/2004/08/addressing",
        "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    )
    env = ET.Element(f"{{{s}}}Envelope")
    head = ET.SubElement(env, f"{{{s}}}Header")
    ET.SubElement(
        head, f"{{{a}}}Action"
    ).text = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Enumerate"
    ET.SubElement(head, f"{{{a}}}MessageID").text = "uuid:00000000-0000-0000-0000-000000000001"
    ET.SubElement(head, f"{{{w}}}ResourceURI").text = V2 + "Msvm_VirtualEthernetSwitch"
    ET.SubElement(env, f"{{{s}}}Body").append(enum_body())
    return env


def _cbt(data: bytes) -> spnego.channel_bindings.GssChannelBindings:
    return spnego.channel_bindings.GssChannelBindings(
        application_data=b"tls-server-end-point:" + data
    )


def test_channel_binding(server: hypervsim.SimServer) -> None:
    pem = ssl.get_server_certificate(("127.0.0.1", server.ports[0]))
    good = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).digest()
    for data, want in ((good, 200), (b"\x00" * 32, 401)):
        ctx = spnego.client(
            server.username,
            server.password,
            hostname="127.0.0.1",
            service="HTTP",
            protocol="ntlm",
            channel_bindings=_cbt(data),
        )
        status, _ = _handshake(server, ctx)
        assert status == want


def test_spnego_mech_list_mic(server: hypervsim.SimServer) -> None:
    ctx = spnego.client(
        server.username, server.password, hostname="127.0.0.1", service="HTTP", protocol="negotiate"
    )
    status, www = _handshake(server, ctx)
    assert status == 200 and www.startswith("Negotiate ")
    final = base64.b64decode(www.split(" ", 1)[1])
    assert final[0] == 0xA1 and b"\xa3" in final  # NegTokenResp with a mechListMIC
    ctx.step(final)  # pyspnego verifies the server's mechListMIC
    assert ctx.complete


def test_md4_vectors() -> None:
    # RFC 1320 appendix A.5
    assert md4(b"").hex() == "31d6cfe0d16ae931b73c59d7e0c089c0"
    assert md4(b"abc").hex() == "a448017aaf21d8525fc10ae87aa6729d"
    assert md4(b"1234567890" * 8).hex() == "e33b4ddc9c38f2199c3e7b164fcc0536"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "drivers")
    return env


def test_command_line_ready_line_and_help() -> None:
    env = _env()
    env["HYPERVSIM_PASSWORD"] = "cli-secret-value"
    help_text = subprocess.run(
        [sys.executable, "-m", "hypervsim", "--help"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "cli-secret-value" not in help_text and "HYPERVSIM_PASSWORD" in help_text
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hypervsim",
            "--port",
            "0",
            "--hosts",
            "2",
            "--vms",
            "3",
            "--no-tls",
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["pid"] == proc.pid and len(ready["urls"]) == 2
        assert ready["hosts"] == ["HVHOST1", "HVHOST2"] and ready["cafile"] is None
        assert "cli-secret-value" not in json.dumps(ready)
        w = WSMan(
            "127.0.0.1",
            port=ready["ports"][1],
            username="Administrator",
            password="cli-secret-value",
            ssl=False,
            auth="basic",
            encryption="never",
            path="wsman",
        )
        assert len(enumerate_all(w, "Msvm_ComputerSystem")) == 2  # host 2 and vm-02
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    env.pop("HYPERVSIM_PASSWORD")
    bad = subprocess.run(
        [sys.executable, "-m", "hypervsim"], env=env, capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2 and "HYPERVSIM_PASSWORD" in bad.stderr


def test_harness_child_process_and_env_lines() -> None:
    with harness.running_simulator(hosts=2, vms=1, tls=True, password="harness-pw") as sim:
        lines = harness.env_lines(sim)
        names = [line.split("=", 1)[0].removeprefix("export ") for line in lines]
        # the kit's generic names (vmctl conformance "$VMCTL_URI" ...) and VMCTL_HYPERV_*
        generic = {"VMCTL_URI", "VMCTL_OTHER_URI", "VMCTL_PASSWORD", "VMCTL_CAFILE"}
        generic |= {"VMCTL_THUMBPRINT", "VMCTL_KIT_OPTIONS"}
        assert generic <= set(names), names
        assert all(n.startswith("VMCTL_HYPERV_") for n in set(names) - generic), names
        text = "\n".join(lines)
        assert "harness-pw" in text and "harness-pw" not in harness.masked(text)
        assert sim.uri.startswith("hyperv://Administrator@127.0.0.1:")
        assert sim.cafile and Path(sim.cafile).is_file()
        w = WSMan(
            "127.0.0.1",
            port=sim.ports[1],
            username=sim.username,
            password=sim.password,
            ssl=True,
            auth="ntlm",
            cert_validation=sim.cafile,
            path="wsman",
        )
        assert _switch_names(w) == ["vSwitch"]
        pid = sim.pid
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not harness._pid_is_ours(pid)


@pytest.fixture(scope="module")
def http_server() -> Iterator[hypervsim.SimServer]:
    with hypervsim.serve(hosts=1, vms=1, tls=False, password="Pw-http!2") as srv:
        yield srv


@pytest.mark.parametrize("auth", ["ntlm", "negotiate"])
def test_message_encryption_over_http(http_server: hypervsim.SimServer, auth: str) -> None:
    """pypsrp's default over HTTP: NTLM/SPNEGO then multipart/encrypted (sealed) messages."""
    w = WSMan(
        "127.0.0.1",
        port=http_server.ports[0],
        username=http_server.username,
        password=http_server.password,
        ssl=False,
        auth=auth,
        path="wsman",
    )
    for _ in range(3):  # the RC4 streams and sequence numbers carry on across messages
        assert _switch_names(w) == ["vSwitch"]
    w.close()
    w = client(http_server, auth=auth)  # encryption="never": plain SOAP on that connection
    assert _switch_names(w) == ["vSwitch"]
    w.close()


def _wrapped(ctx: spnego.ContextProxy, body: bytes) -> bytes:
    res = ctx.wrap_winrm(body)
    return (
        b"--Encrypted Boundary\r\n\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n"
        b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length="
        + str(len(body)).encode()
        + b"\r\n--Encrypted Boundary\r\n\tContent-Type: application/octet-stream\r\n"
        + len(res.header).to_bytes(4, "little")
        + res.header
        + res.data
        + b"--Encrypted Boundary--\r\n"
    )


def test_encrypted_message_bytes(http_server: hypervsim.SimServer) -> None:
    ctype = (
        'multipart/encrypted;protocol="application/HTTP-SPNEGO-session-encrypted";'
        'boundary="Encrypted Boundary"'
    )
    ctx = spnego.client(
        http_server.username,
        http_server.password,
        hostname="127.0.0.1",
        service="HTTP",
        protocol="ntlm",
    )
    conn = http.client.HTTPConnection("127.0.0.1", http_server.ports[0], timeout=10)
    token = ctx.step()
    while token is not None:
        conn.request(
            "POST",
            "/wsman",
            body=b"",
            headers={"Authorization": f"Negotiate {base64.b64encode(token).decode()}"},
        )
        resp = conn.getresponse()
        resp.read()
        www = resp.headers.get("WWW-Authenticate", "")
        token = ctx.step(base64.b64decode(www.split(" ", 1)[1])) if resp.status == 401 else None
    assert resp.status == 200 and ctx.complete
    body = ET.tostring(_enum_envelope())
    conn.request("POST", "/wsman", body=_wrapped(ctx, body), headers={"Content-Type": ctype})
    resp = conn.getresponse()
    raw = resp.read()
    assert resp.status == 200 and resp.headers["Content-Type"] == ctype
    assert b"Length=" in raw and b"EnumerateResponse" not in raw  # sealed
    part = raw.split(b"\tContent-Type: application/octet-stream\r\n", 1)[1]
    part = part.rsplit(b"--Encrypted Boundary--\r\n", 1)[0]
    n = int.from_bytes(part[:4], "little")
    plain = ctx.unwrap_winrm(part[4 : 4 + n], part[4 + n :])
    assert b"EnumerateResponse" in plain
    tampered = bytearray(_wrapped(ctx, body))
    tampered[-40] ^= 0xFF
    conn.request("POST", "/wsman", body=bytes(tampered), headers={"Content-Type": ctype})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 400
    # an encrypted body on a Basic-authenticated request: there is no session key
    basic = base64.b64encode(f"{http_server.username}:{http_server.password}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", http_server.ports[0], timeout=10)
    conn.request(
        "POST",
        "/wsman",
        body=b"x",
        headers={"Content-Type": ctype, "Authorization": f"Basic {basic}"},
    )
    assert conn.getresponse().status == 400


def test_harness_start_status_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PIDS_FILE", "ENV_FILE", "STATE_FILE", "LOG_FILE"):
        monkeypatch.setattr(harness, name, tmp_path / getattr(harness, name).name)
    monkeypatch.setattr(harness, "HOSTS_DIR", tmp_path)
    monkeypatch.setattr(harness, "TLS_DIR", tmp_path / "tls")
    assert harness.main(["status"]) == 3
    assert harness.main(["start", "--vms", "1", "--password", "start-pw"]) == 0
    try:
        env = harness.ENV_FILE.read_text()
        assert "export VMCTL_HYPERV_PASSWORD=start-pw" in env
        assert (harness.ENV_FILE.stat().st_mode & 0o777) == 0o600
        pid = int(harness.PIDS_FILE.read_text())
        assert harness._pid_is_ours(pid)
        assert harness.main(["status"]) == 0
        assert harness.main(["start"]) == 0  # already running: nothing new
        assert int(harness.PIDS_FILE.read_text()) == pid
    finally:
        assert harness.main(["stop"]) == 0
    assert not harness.PIDS_FILE.exists() and not harness.ENV_FILE.exists()
    deadline = time.monotonic() + 5
    while harness._pid_is_ours(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not harness._pid_is_ours(pid)
    assert harness.main(["status"]) == 3


def test_both_listeners_share_the_world() -> None:
    with hypervsim.serve(hosts=1, vms=1, tls=True, http_too=True, password="both-pw") as srv:
        assert srv.http_urls and srv.http_urls[0].startswith("http://")
        tls_client = client(srv, auth="ntlm")
        plain = WSMan(
            "127.0.0.1",
            port=srv.http_ports[0],
            username=srv.username,
            password=srv.password,
            ssl=False,
            auth="basic",
            encryption="never",
            path="wsman",
        )
        guid = vms_of(tls_client)["vm-01"]
        body = (
            f"<p:RequestStateChange_INPUT xmlns:p='{V2}Msvm_ComputerSystem'>"
            f"<p:RequestedState>2</p:RequestedState></p:RequestStateChange_INPUT>"
        )
        uri = V2 + "Msvm_ComputerSystem"
        sels = selectors(CreationClassName="Msvm_ComputerSystem", Name=guid)
        plain.invoke(uri + "/RequestStateChange", uri, ET.fromstring(body), selector_set=sels)
        states = [
            to_dict(e)["EnabledState"] for e in enumerate_all(tls_client, "Msvm_ComputerSystem")
        ]
        assert states[1] in ("10", "2")  # the HTTPS endpoint sees the start the HTTP one asked


def vms_of(w: WSMan) -> dict[str, str]:
    return {
        d["ElementName"]: d["Name"]
        for d in (to_dict(e) for e in enumerate_all(w, "Msvm_ComputerSystem"))
        if d["Caption"] == "Virtual Machine"
    }


def test_enumerate_pull_get_invoke_over_https_ntlm(server: hypervsim.SimServer) -> None:
    """The whole client path once more on HTTPS with NTLM and a verified certificate."""
    w = client(server, auth="ntlm")
    guid = vms_of(w)["vm-01"]  # Enumerate + Pull
    cs = to_dict(
        w.get(
            V2 + "Msvm_ComputerSystem",
            selector_set=selectors(CreationClassName="Msvm_ComputerSystem", Name=guid),
        )[0]
    )
    assert cs["EnabledState"] == "3"
    uri = V2 + "Msvm_ComputerSystem"
    body = ET.fromstring(
        f"<p:RequestStateChange_INPUT xmlns:p='{uri}'><p:RequestedState>2</p:RequestedState>"
        f"</p:RequestStateChange_INPUT>"
    )
    resp = w.invoke(
        uri + "/RequestStateChange",
        uri,
        body,
        selector_set=selectors(CreationClassName="Msvm_ComputerSystem", Name=guid),
    )
    out = resp.find(f".//{{{uri}}}RequestStateChange_OUTPUT")
    assert out is not None and out.findtext(f"{{{uri}}}ReturnValue") == "4096"
    deadline = time.monotonic() + 10
    while True:
        cs = to_dict(
            w.get(uri, selector_set=selectors(CreationClassName="Msvm_ComputerSystem", Name=guid))[
                0
            ]
        )
        if cs["EnabledState"] == "2":
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    w.close()
