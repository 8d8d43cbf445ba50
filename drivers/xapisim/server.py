"""HTTP(S) front end (XML-RPC on any path, JSON-RPC at /jsonrpc), certificates, ``serve``."""

from __future__ import annotations

import contextlib
import hashlib
import html
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import xmlrpc.client
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .api import Api
from .datapath import DataPath
from .model import Config, Database
from .nbd import NbdServer, cert_subject
from .tables import (
    EXPORT_RAW_VDI,
    HTTP_500_BODY,
    HTTP_500_HEAD,
    IMPORT_RAW_VDI,
    JSONRPC_PATH,
    RPC_REPLY_HEADERS,
)
from .wire import (
    MalformedRequest,
    json_response,
    parse_json_call,
    xml_bare_response,
    xml_response,
)

MAX_BODY = 64 * 1024 * 1024


def make_cert(directory: str) -> tuple[str, str]:
    """Generate a self-signed 2048-bit RSA certificate for 127.0.0.1/localhost."""
    cert = os.path.join(directory, "xapisim-cert.pem")
    key = os.path.join(directory, "xapisim-key.pem")
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is needed to generate a certificate")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
         "-keyout", key, "-out", cert, "-days", "825", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-addext", "basicConstraints=critical,CA:TRUE"],
        check=True, capture_output=True,
    )  # fmt: skip
    os.chmod(key, 0o600)
    return cert, key


def thumbprint(certfile: str) -> str:
    """SHA-256 of the DER certificate, as colon-separated upper-case hex."""
    with open(certfile, encoding="ascii") as f:
        der = ssl.PEM_cert_to_DER_cert(f.read())
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Responses go out as headers + body writes: without TCP_NODELAY every call would
        # wait for the peer's delayed ACK (~40 ms).
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == EXPORT_RAW_VDI:
            DataPath(self).export_raw_vdi()
            return
        body = b"xapisim: XenAPI simulator; POST XML-RPC here, JSON-RPC to /jsonrpc\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        """Status line, content-length, then ``headers``, as xapi's http-lib writes a reply
        (http.ml: Response.to_header_list); no Date or Server header."""
        version = "HTTP/1.0" if self.request_version == "HTTP/1.0" else "HTTP/1.1"
        lines = [f"{version} {status}", f"content-length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if len(body) < 1 << 16:
            self.wfile.write(head + body)  # one segment
        else:
            self.wfile.write(head)  # no copy of a large body
            self.wfile.write(body)
        if self.server.verbose:
            self.log_request(status.split(" ", 1)[0], len(body))

    def _rpc_reply(self, content_type: str, body: bytes) -> None:
        # http_svr.ml: response_of_request -- connection as the request asked, cache-control;
        # api_server.ml: callback/jsoncallback -- content-type and the CORS headers.
        given = {
            "connection": "close" if self.close_connection else "keep-alive",
            "content-type": content_type,
        }
        self._send("200 OK", [(k, given.get(k, v)) for k, v in RPC_REPLY_HEADERS], body)

    def _internal_error(self, extra: str) -> None:
        """http_svr.ml: response_internal_error -- HTTP 500 with an HTML body, then close."""
        body = HTTP_500_BODY.format(extra=html.escape(extra)).encode("utf-8")
        self.close_connection = True
        self._send(
            HTTP_500_HEAD.split(" ", 1)[1],
            [
                ("content-type", "text/html"),
                ("connection", "close"),
                ("cache-control", "no-cache, no-store"),
            ],
            body,
        )

    def do_OPTIONS(self) -> None:
        """CORS preflight, as http_svr.ml: respond_to_options answers it on /, /json and
        /jsonrpc: 200, no body, the request's Access-Control-Request-Headers allowed."""
        asked = self.headers.get("Access-Control-Request-Headers")
        allow = f"{asked}, X-Requested-With" if asked else "X-Requested-With"
        self._send(
            "200 OK",
            [
                ("connection", "close" if self.close_connection else "keep-alive"),
                ("cache-control", "no-cache, no-store"),
                ("Access-Control-Allow-Origin", "*"),
                ("Access-Control-Allow-Headers", allow),
                ("Access-Control-Allow-Methods", "PUT"),
            ],
            b"",
        )

    def do_PUT(self) -> None:
        if self.path.split("?", 1)[0] == IMPORT_RAW_VDI:
            DataPath(self).import_raw_vdi()
            return
        self.close_connection = True
        self._send("404 Not Found", [("connection", "close")], b"")

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.send_error(400, "bad Content-Length")
            return
        data = self.rfile.read(length)
        api = self.server.api
        if self.server.jsonrpc and self.path.split("?", 1)[0] == JSONRPC_PATH:
            try:
                version, method, ident, params = parse_json_call(data)
            except MalformedRequest as e:
                self._internal_error(f'Jsonrpc.Malformed_method_request("{e}")')
                return
            if method == "system.listMethods":
                out = json_response(api.list_methods(), version, ident, bare=True)
            else:
                out = json_response(api.dispatch(method, tuple(params)), version, ident)
            self._rpc_reply("application/json", out)
            return
        try:
            if b"<params" not in data:  # xmlrpc.ml: a methodCall needs <params>
                raise ValueError("close_tag, open_tag")
            xparams, xmethod = xmlrpc.client.loads(data, use_datetime=False)
            if xmethod is None:
                raise ValueError("methodName")
        except Exception as e:
            self._internal_error(f'Xmlrpc.Parse_error("{e}")')
            return
        if xmethod == "system.listMethods":
            out = xml_bare_response(api.list_methods())
        else:
            out = xml_response(api.dispatch(xmethod, xparams))
        self._rpc_reply("text/xml", out)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, addr: tuple[str, int], api: Api, ctx: ssl.SSLContext | None, verbose: bool
    ) -> None:
        self.api = api
        self.ssl_ctx = ctx
        self.verbose = verbose
        self.jsonrpc = True  # False: a host older than XenServer 7 (XML-RPC on every path)
        super().__init__(addr, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS handshake in the connection's own thread, not the accept loop.
        if self.ssl_ctx is not None:
            try:
                request.settimeout(30)
                request = self.ssl_ctx.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)


class SimServer:
    """A running simulator. Use :func:`serve` to create one."""

    def __init__(
        self,
        cfg: Config,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = True,
        certfile: str | None = None,
        keyfile: str | None = None,
        verbose: bool = False,
    ) -> None:
        self.cfg = cfg
        self.db = Database(cfg)
        self.api = Api(self.db)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.cafile: str | None = None
        self.thumbprint: str | None = None
        ctx = None
        subject = "localhost"  # make_cert's DNS name
        if tls:
            if certfile is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="xapisim-")
                certfile, keyfile = make_cert(self._tmp.name)
            else:
                subject = cert_subject(certfile, "xenhost1")
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(certfile, keyfile)
            self.cafile = certfile
            self.thumbprint = thumbprint(certfile)
        # the hosts' NBD server (xapi-nbd): VDI.get_nbd_info names it; stops with the rest
        self.nbd = NbdServer(self.db, certfile if tls else None, keyfile, subject)
        self.api.nbd = self.nbd
        self.httpd = _HTTPServer((host, port), self.api, ctx, verbose)
        self.host = host
        self.port = int(self.httpd.server_address[1])
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://{host}:{self.port}/"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="xapisim", daemon=True
        )
        self._stopped = False

    @property
    def username(self) -> str:
        return self.cfg.username

    @property
    def password(self) -> str:
        return self.cfg.password

    def start(self) -> SimServer:
        self._thread.start()
        return self

    def open_sessions(self) -> int:
        """Number of live (logged-in, not expired) sessions."""
        self.db.expire_sessions()
        with self.db.lock:
            return len(self.db.sessions)

    def set_session_timeout(self, seconds: float) -> None:
        self.cfg.session_timeout = seconds

    def set_jsonrpc(self, offered: bool) -> None:
        """Whether ``/jsonrpc`` speaks JSON-RPC (xapi since XenServer 7); when not, the
        path is XML-RPC like any other, as on older hosts: a JSON body is an XML parse
        error (HTTP 500)."""
        self.httpd.jsonrpc = offered

    def fail_host(self, name: str, failed: bool = True) -> None:
        """Failed-host mode: the pool member named ``name`` stops answering (its
        host_metrics say not live) or, with ``failed=False``, comes back."""
        db = self.api.db
        with db.lock:
            refs = [r for r, h in db.objs["host"].items() if h["name_label"] == name]
        if not refs:
            raise KeyError(name)
        self.api.fail_host(refs[0], failed)

    def host_names(self) -> list[str]:
        with self.db.lock:
            return [str(self.db.objs["host"][h]["name_label"]) for h in self.db.hosts]

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        with self.db.lock:
            self.db.stopped = True
            self.db.cond.notify_all()
            for t in self.db.timers:
                t.cancel()
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
        self.nbd.stop()
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
    username: str = "root",
    password: str = "xenroot",
    tls: bool = True,
    port: int = 0,
    running: int = 0,
    session_timeout: float = 3600.0,
    op_delay: float = 0.05,
    guest_delay: float = 0.3,
    host_memory_gib: int = 256,
    verbose: bool = False,
) -> Iterator[SimServer]:
    """Run a simulator on 127.0.0.1 for the duration of a ``with`` block."""
    cfg = Config(
        hosts=hosts,
        vms=vms,
        running=running,
        username=username,
        password=password,
        session_timeout=session_timeout,
        op_delay=op_delay,
        guest_delay=guest_delay,
        host_memory_gib=host_memory_gib,
    )
    srv = SimServer(cfg, port=port, tls=tls, verbose=verbose).start()
    try:
        yield srv
    finally:
        srv.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
