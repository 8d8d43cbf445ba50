"""A fault-injection proxy for tests: between a driver and a simulator, it forwards HTTP (or
HTTPS, terminating TLS with a certificate of the test harness and opening TLS to the
upstream) and, when a request's body names a given method, hangs or drops the connection,
before or after forwarding the request, or calls a hook (e.g. SIGSTOP the simulator).

    with FaultProxy("127.0.0.1", sim_port, server_context=srv_ctx, client_context=cli_ctx) as p:
        p.add("CreateVM_Task", "hang_reply")   # forward, let the host do it, withhold the reply
        driver talks to 127.0.0.1:p.port ...
        p.release()                            # hung connections are dropped now

Actions:
    "hang"        do not forward; hold the connection (the host never sees the request)
    "drop"        do not forward; close the connection
    "hang_reply"  forward; the host acts; hold the connection without its reply
    "drop_reply"  forward; the host acts; close the connection instead of replying
    "call"        call ``hook(method)`` first, then forward as usual (e.g. os.kill(pid, SIGSTOP))

A request's method is the first element of the body of a SOAP envelope or the
``<methodName>`` of an XML-RPC call. ``proxy.methods`` lists every method seen, in order.
Only the standard library is used; the proxy listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Literal

Action = Literal["hang", "drop", "hang_reply", "drop_reply", "call"]
Hook = Callable[[str], object]

_METHOD = re.compile(
    rb"<(?:\w+:)?Body>\s*<(?:\w+:)?(\w+)[\s>/]|<methodName>\s*([\w.]+)\s*</methodName>"
)


def method_of(body: bytes) -> str | None:
    """The SOAP or XML-RPC method a request body calls, or None."""
    m = _METHOD.search(body)
    if m is None:
        return None
    return (m.group(1) or m.group(2)).decode()


@dataclass
class Rule:
    method: str
    action: Action
    skip: int = 0  # let this many matching requests through first
    times: int = 1  # then act on this many (0 = every one)
    hook: Hook | None = None
    hits: int = 0
    seen: int = 0
    fired: threading.Event = field(default_factory=threading.Event)

    def wants(self, method: str | None) -> bool:
        if method != self.method:
            return False
        self.seen += 1
        if self.seen <= self.skip:
            return False
        if self.times and self.hits >= self.times:
            return False
        self.hits += 1
        return True


class FaultProxy:
    """See the module docstring."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        server_context: ssl.SSLContext | None = None,
        client_context: ssl.SSLContext | None = None,
        upstream_timeout: float = 120.0,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.server_context = server_context
        self.client_context = client_context
        self.upstream_timeout = upstream_timeout
        self.rules: list[Rule] = []
        self.methods: list[str] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self._thread.start()

    # -- control ------------------------------------------------------------------------

    def add(
        self,
        method: str,
        action: Action,
        *,
        skip: int = 0,
        times: int = 1,
        hook: Hook | None = None,
    ) -> Rule:
        rule = Rule(method, action, skip=skip, times=times, hook=hook)
        with self._lock:
            self.rules.append(rule)
            self._released.clear()
        return rule

    def clear(self) -> None:
        """Forget the rules (hung connections stay hung until ``release``)."""
        with self._lock:
            self.rules.clear()

    def release(self) -> None:
        """Drop every connection held by a hang rule."""
        self._released.set()

    def close(self) -> None:
        self._closed.set()
        self._released.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            socks = list(self._sockets)
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serving ------------------------------------------------------------------------

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.add(s)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        self._track(raw)
        client: socket.socket = raw
        upstream: socket.socket | None = None
        try:
            if self.server_context is not None:
                client = self.server_context.wrap_socket(raw, server_side=True)
                self._track(client)
            reader = client.makefile("rb")
            while not self._closed.is_set():
                request = _read_request(reader)
                if request is None:
                    return
                method = method_of(request)
                if method:
                    with self._lock:
                        self.methods.append(method)
                action: Action | None = None
                rule: Rule | None = None
                with self._lock:
                    for r in self.rules:
                        if r.wants(method):
                            action, rule = r.action, r
                            break
                if rule is not None:
                    rule.fired.set()
                if action == "hang":
                    self._released.wait()
                    return
                if action == "drop":
                    return
                if action == "call" and rule is not None and rule.hook is not None:
                    rule.hook(method or "")
                if upstream is None:
                    upstream = socket.create_connection(
                        self.upstream, timeout=self.upstream_timeout
                    )
                    if self.client_context is not None:
                        upstream = self.client_context.wrap_socket(
                            upstream, server_hostname=self.upstream[0]
                        )
                    self._track(upstream)
                upstream.sendall(request)
                reply = _read_reply(upstream)
                if action == "hang_reply":
                    self._released.wait()
                    return
                if action == "drop_reply":
                    return
                client.sendall(reply)
        except (OSError, http.client.HTTPException, ValueError):
            return
        finally:
            for s in (client, raw, upstream):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()


def _read_request(reader: BinaryIO) -> bytes | None:
    """One HTTP request (headers and Content-Length body) as raw bytes; None at EOF."""
    head = b""
    while True:
        line = reader.readline(65537)
        if not line:
            return None
        head += line
        if line in (b"\r\n", b"\n"):
            break
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = reader.read(length) if length else b""
    return head + body


def _read_reply(upstream: socket.socket) -> bytes:
    """One HTTP response, re-framed with a Content-Length (chunked bodies are joined)."""
    resp = http.client.HTTPResponse(upstream)
    resp.begin()
    body = resp.read()
    lines = [f"HTTP/1.1 {resp.status} {resp.reason}".encode()]
    for name, value in resp.getheaders():
        if name.lower() in ("transfer-encoding", "content-length"):
            continue
        lines.append(f"{name}: {value}".encode())
    lines.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@contextlib.contextmanager
def fault_proxy(
    upstream_host: str,
    upstream_port: int,
    *,
    server_context: ssl.SSLContext | None = None,
    client_context: ssl.SSLContext | None = None,
) -> Iterator[FaultProxy]:
    proxy = FaultProxy(
        upstream_host,
        upstream_port,
        server_context=server_context,
        client_context=client_context,
    )
    try:
        yield proxy
    finally:
        proxy.close()
