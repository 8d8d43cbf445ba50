"""HTTP(S) front end (POST /wsman, Basic and Negotiate/NTLM), certificates and ``serve``."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import tables as T
from .model import Config, World
from .ntlm import NtlmAcceptor, NtlmError, NtlmSession, SpnegoAcceptor, channel_bindings_hash
from .wsman import WsmanService

MAX_BODY = 16 * 1024 * 1024

#: WinRM's HTTP message encryption ([MS-WSMV] 2.2.9.1; the MIME layout pypsrp and pywinrm
#: build): a multipart/encrypted body whose second part is the 4-byte signature length,
#: the NTLM signature and the sealed SOAP envelope.
ENC_PROTOCOL = "application/HTTP-SPNEGO-session-encrypted"
ENC_BOUNDARY = "Encrypted Boundary"
ENC_CONTENT_TYPE = f'multipart/encrypted;protocol="{ENC_PROTOCOL}";boundary="{ENC_BOUNDARY}"'
_OCTETS = b"\tContent-Type: application/octet-stream\r\n"


def unwrap_body(session: NtlmSession, body: bytes) -> bytes:
    """The SOAP envelope inside an encrypted request (raises ValueError/NtlmError)."""
    length = re.search(rb"Length=(\d+)", body)
    start = body.find(_OCTETS)
    end = body.rfind(f"--{ENC_BOUNDARY}--".encode())
    if length is None or start < 0 or end < start:
        raise ValueError("not a WinRM encrypted message")
    data = body[start + len(_OCTETS) : end]
    sig_len = struct.unpack("<I", data[:4])[0]
    message = session.unwrap(data[4 : 4 + sig_len], data[4 + sig_len :])
    if len(message) != int(length.group(1)):
        raise ValueError("the decrypted length is not the announced one")
    return message


def wrap_body(session: NtlmSession, message: bytes) -> bytes:
    signature, sealed = session.wrap(message)
    head = (
        f"--{ENC_BOUNDARY}\r\n\tContent-Type: {ENC_PROTOCOL}\r\n"
        f"\tOriginalContent: type={T.CONTENT_TYPE};Length={len(message)}\r\n"
        f"--{ENC_BOUNDARY}\r\n"
    ).encode()
    tail = f"--{ENC_BOUNDARY}--\r\n".encode()
    return head + _OCTETS + struct.pack("<I", len(signature)) + signature + sealed + tail


def make_cert(directory: str) -> tuple[str, str]:
    """Generate a self-signed 2048-bit RSA certificate for 127.0.0.1 with the openssl CLI."""
    cert = os.path.join(directory, "hypervsim-cert.pem")
    key = os.path.join(directory, "hypervsim-key.pem")
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is needed to generate a certificate")
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "825",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ],
        check=True,
        capture_output=True,
    )
    os.chmod(key, 0o600)
    return cert, key


def _der(certfile: str) -> bytes:
    with open(certfile, encoding="ascii") as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def thumbprint(certfile: str) -> str:
    """SHA-256 of the DER certificate, as colon-separated upper-case hex."""
    digest = hashlib.sha256(_der(certfile)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    timeout = 300  # an idle keep-alive connection is dropped after this many seconds
    # Per-connection state: WinRM authenticates the connection (NTLM is connection-bound).
    authenticated = False
    ntlm: NtlmAcceptor | None = None
    spnego: SpnegoAcceptor | None = None
    session: NtlmSession | None = None  # sealing state once NTLM/SPNEGO authenticated
    _final_token: bytes | None = None

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def version_string(self) -> str:
        return "Microsoft-HTTPAPI/2.0"  # the HTTP.sys Server header WinRM answers with

    def _send(
        self,
        code: int,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        ctype: str = T.CONTENT_TYPE,
    ) -> None:
        self.send_response(code)
        for k, v in headers or []:
            self.send_header(k, v)
        if body:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(405, b"", [("Allow", "POST")])

    def _challenge(self, token: bytes | None = None, scheme: str = "Negotiate") -> None:
        if token is not None:
            hdrs = [("WWW-Authenticate", f"{scheme} {base64.b64encode(token).decode()}")]
        else:
            hdrs = [("WWW-Authenticate", s) for s in T.AUTH_SCHEMES]
        self._send(401, b"", hdrs)

    def _read_body(self) -> bytes | None:
        """The request body (Content-Length or chunked), always consumed so the connection
        stays in step; None when it cannot be read."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = b""
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    return None
                if size == 0:
                    while self.rfile.readline(1024).strip():
                        pass  # trailers
                    return out
                out += self.rfile.read(size)
                self.rfile.readline(8)
                if len(out) > MAX_BODY:
                    return None
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return None
        if length < 0 or length > MAX_BODY:
            return None
        return self.rfile.read(length)

    def do_POST(self) -> None:
        raw = self._read_body()
        if raw is None:
            self._send(400)
            self.close_connection = True
            return
        body = raw
        if self.path.split("?")[0].rstrip("/").lower() != T.WSMAN_PATH:
            self._send(404)
            return
        auth = self.headers.get("Authorization")
        if auth:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "basic":
                if not self._basic(value.strip()):
                    self._challenge()
                    return
                self.authenticated = False  # Basic authenticates each request, not the link
            elif scheme.lower() in ("negotiate", "ntlm"):
                try:
                    token = base64.b64decode(value.strip(), validate=True)
                except ValueError:
                    self._challenge()
                    return
                if not self._ntlm_step(token, scheme):
                    return
            else:
                self._challenge()
                return
        elif not self.authenticated:
            self._challenge()
            return
        ctype = self.headers.get("Content-Type", "")
        if not body:
            self._send(200 if self.authenticated else 400, b"", self._final_header())
            return
        encrypted = ctype.lower().startswith("multipart/encrypted")
        if encrypted:
            if self.session is None or ENC_PROTOCOL.lower() not in ctype.lower():
                self._send(400)  # encryption needs an NTLM/SPNEGO-authenticated connection
                return
            try:
                body = unwrap_body(self.session, body)
            except (ValueError, struct.error, NtlmError):
                self._send(400)
                self.close_connection = True
                return
        elif not ctype.lower().startswith("application/soap+xml"):
            self._send(415)
            return
        machine = (self.headers.get("Host") or "").rsplit(":", 1)[0] or None
        code, out = self.server.service.handle(self.server.host_name, body, machine)
        if encrypted:
            assert self.session is not None
            self._send(code, wrap_body(self.session, out), self._final_header(), ENC_CONTENT_TYPE)
        else:
            self._send(code, out, self._final_header())

    def _final_header(self) -> list[tuple[str, str]]:
        """The SPNEGO accept-completed token (with its mechListMIC) rides on the answer."""
        if self._final_token is None:
            return []
        final = base64.b64encode(self._final_token).decode()
        self._final_token = None
        return [("WWW-Authenticate", f"Negotiate {final}")]

    def _basic(self, value: str) -> bool:
        try:
            user, _, pw = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        want = self.server.world.cfg.username.split("\\")[-1]
        return hmac.compare_digest(user.split("\\")[-1].lower(), want.lower()) and (
            hmac.compare_digest(pw.encode(), self.server.world.cfg.password.encode())
        )

    def _acceptor(self) -> NtlmAcceptor:
        cfg = self.server.world.cfg
        return NtlmAcceptor(
            cfg.username, cfg.password, self.server.host_name, cfg.domain, self.server.cbt
        )

    def _ntlm_step(self, token: bytes, scheme: str) -> bool:
        """Advance the connection's NTLM (raw, or wrapped in SPNEGO) handshake; True once
        authenticated. Raw NTLMSSP tokens are accepted under ``Negotiate`` as WinRM does."""
        try:
            if token[:1] == b"\x60":  # SPNEGO NegTokenInit starts a new handshake
                self.spnego = SpnegoAcceptor(self._acceptor())
                self.ntlm = None
                self.authenticated = False
            if token[:1] in (b"\x60", b"\xa1"):
                if self.spnego is None:
                    raise NtlmError("no SPNEGO handshake in progress")
                reply, done = self.spnego.step(token)
                if not done:
                    self._challenge(reply, scheme)
                    return False
                self.session = self.spnego.ntlm.session(1 if self.spnego.mic_exchanged else 0)
                self.spnego = None
                self.authenticated = True
                self._final_token = reply
                return True
            if token.startswith(b"NTLMSSP\x00") and token[8:12] == b"\x01\x00\x00\x00":
                self.ntlm = self._acceptor()
                self.authenticated = False
            if self.ntlm is None:
                raise NtlmError("no NTLM handshake in progress")
            out = self.ntlm.step(token)
        except NtlmError:
            self.ntlm = None
            self.spnego = None
            self.session = None
            self.authenticated = False
            self._challenge()
            return False
        if out is not None:
            self._challenge(out, scheme)
            return False
        self.session = self.ntlm.session()
        self.ntlm = None
        self.authenticated = True
        return True


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        addr: tuple[str, int],
        host_name: str,
        world: World,
        service: WsmanService,
        ctx: ssl.SSLContext | None,
        cbt: bytes | None,
        verbose: bool,
    ) -> None:
        self.host_name = host_name
        self.world = world
        self.service = service
        self.ssl_ctx = ctx
        self.cbt = cbt
        self.verbose = verbose
        super().__init__(addr, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.ssl_ctx is not None:
            try:
                request.settimeout(30)
                request = self.ssl_ctx.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)


class SimServer:
    """A running simulated cluster: one WS-Man endpoint (port) per Hyper-V host."""

    def __init__(
        self,
        cfg: Config,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = True,
        certfile: str | None = None,
        keyfile: str | None = None,
        verbose: bool = False,
        http_too: bool = False,
        http_port: int = 0,
    ) -> None:
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError("hypervsim listens on 127.0.0.1 only")
        self.cfg = cfg
        self.world = World(cfg)
        self.service = WsmanService(self.world)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.cafile: str | None = None
        self.thumbprint: str | None = None
        ctx = None
        cbt = None
        if tls:
            if certfile is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="hypervsim-")
                certfile, keyfile = make_cert(self._tmp.name)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(certfile, keyfile)
            self.cafile = certfile
            self.thumbprint = thumbprint(certfile)
            cbt = channel_bindings_hash(_der(certfile))
        self.httpds: list[_HTTPServer] = []
        for i, name in enumerate(self.world.hosts):
            p = port + i if port else 0
            self.httpds.append(
                _HTTPServer(("127.0.0.1", p), name, self.world, self.service, ctx, cbt, verbose)
            )
        scheme = "https" if tls else "http"
        self.ports = [int(h.server_address[1]) for h in self.httpds]
        self.urls = [f"{scheme}://127.0.0.1:{p}{T.WSMAN_PATH}" for p in self.ports]
        self.port = self.ports[0]
        self.url = self.urls[0]
        self.tls = tls
        # A WinRM host usually has both listeners (5985 HTTP, 5986 HTTPS): with TLS,
        # http_too adds a plain-HTTP endpoint per host onto the same world.
        self.http_ports: list[int] = []
        self.http_urls: list[str] = []
        if tls and http_too:
            plain = [
                _HTTPServer(
                    ("127.0.0.1", http_port + i if http_port else 0),
                    name,
                    self.world,
                    self.service,
                    None,
                    None,
                    verbose,
                )
                for i, name in enumerate(self.world.hosts)
            ]
            self.httpds += plain
            self.http_ports = [int(h.server_address[1]) for h in plain]
            self.http_urls = [f"http://127.0.0.1:{p}{T.WSMAN_PATH}" for p in self.http_ports]
        self._threads = [
            threading.Thread(target=h.serve_forever, name=f"hypervsim-{h.host_name}", daemon=True)
            for h in self.httpds
        ]
        self._stopped = False

    @property
    def hosts(self) -> list[str]:
        return list(self.world.hosts)

    @property
    def username(self) -> str:
        return self.cfg.username

    @property
    def password(self) -> str:
        return self.cfg.password

    def url_of(self, host: str) -> str:
        return self.urls[self.world.hosts.index(host)]

    def start(self) -> SimServer:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for h, t in zip(self.httpds, self._threads, strict=True):
            if t.is_alive():
                h.shutdown()
            h.server_close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> SimServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serve(
    hosts: int = 2,
    vms: int = 4,
    running: int = 0,
    username: str = "Administrator",
    password: str = "hypervsim",
    tls: bool = True,
    port: int = 0,
    op_delay: float = 0.2,
    guest_delay: float = 0.3,
    host_memory_gib: int = 64,
    verbose: bool = False,
    http_too: bool = False,
) -> Iterator[SimServer]:
    """Run a simulated Hyper-V cluster on 127.0.0.1 for the duration of a ``with`` block."""
    cfg = Config(
        hosts=hosts,
        vms=vms,
        running=running,
        username=username,
        password=password,
        op_delay=op_delay,
        guest_delay=guest_delay,
        host_memory_gib=host_memory_gib,
    )
    srv = SimServer(cfg, port=port, tls=tls, verbose=verbose, http_too=http_too).start()
    try:
        yield srv
    finally:
        srv.stop()
