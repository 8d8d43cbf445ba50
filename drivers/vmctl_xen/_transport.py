"""XML-RPC transports for XenAPI: a socket timeout per call, one attempt per request, the
"was it sent?" answer for every failure, and TLS verified by CA file or pinned SHA-256
thumbprint (checked against the peer certificate before any byte of a request, so a password
never reaches an unverified server)."""

from __future__ import annotations

import hashlib
import http.client
import re
import select
import ssl
import xmlrpc.client
from typing import Any

_HEX64 = re.compile(r"^[0-9a-f]{64}$")

#: Set (True) on an exception raised while connecting: the request never left this process.
NOT_SENT = "vmctl_xen_not_sent"


def parse_thumbprint(text: str) -> str:
    """A SHA-256 thumbprint as 64 lower-case hex digits ('AB:CD:..' or 'abcd..' accepted)."""
    digits = re.sub(r"[:\s-]", "", text).lower()
    if not _HEX64.match(digits):
        from vmctl import ValidationError

        raise ValidationError(
            "a thumbprint must be the SHA-256 of the host's certificate: 64 hex digits, "
            "optionally colon-separated (a 40-digit SHA-1 thumbprint is not accepted)",
            field="thumbprint",
        )
    return digits


def fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate as colon-separated upper-case hex."""
    h = hashlib.sha256(der).hexdigest().upper()
    return ":".join(h[i : i + 2] for i in range(0, 64, 2))


def was_sent(exc: BaseException) -> bool | None:
    """False when ``exc`` was raised before the request left (connect, TLS handshake, pin);
    None (unknown) otherwise."""
    return False if getattr(exc, NOT_SENT, False) else None


class ThumbprintMismatch(ssl.SSLError):
    """The server's certificate does not have the pinned SHA-256 thumbprint."""


class _HTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        try:
            super().connect()
        except Exception as exc:
            setattr(exc, NOT_SENT, True)
            raise


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(
        self, host: str, *, timeout: float, context: ssl.SSLContext, pin: str | None
    ) -> None:
        super().__init__(host, timeout=timeout, context=context)
        self._pin = pin

    def connect(self) -> None:
        try:
            super().connect()
            self._check_pin()
        except Exception as exc:
            setattr(exc, NOT_SENT, True)
            raise

    def _check_pin(self) -> None:
        if self._pin is None:
            return
        assert isinstance(self.sock, ssl.SSLSocket)
        der = self.sock.getpeercert(binary_form=True) or b""
        got = hashlib.sha256(der).hexdigest()
        if got != self._pin:
            self.sock.close()
            self.sock = None  # type: ignore[assignment]
            raise ThumbprintMismatch(
                f"the server's certificate has SHA-256 thumbprint {fingerprint(der)}, not the "
                "pinned one; refusing to talk to it"
            )


class Once:
    """A request body handed over once: ``take()`` returns it and forgets it, so that no
    frame of the driver keeps a body that carries a password (see Transport.request)."""

    __slots__ = ("_body",)

    def __init__(self, body: bytes) -> None:
        self._body: bytes | None = body

    def take(self) -> bytes:
        body, self._body = self._body, None
        if body is None:
            raise RuntimeError("a request body can be sent once")
        return body

    def __repr__(self) -> str:
        return "<request body>"


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether the server has closed an idle kept-alive connection (it is readable: EOF or
    a reset is waiting), so that the next request must open a new one."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class Transport(xmlrpc.client.Transport):
    """One HTTP(S) connection (kept alive) with a settable socket timeout.

    Each request is made once: xmlrpc's own Transport.request sends it a second time when
    a kept-alive connection turns out to be closed, which would repeat a request the host
    may have acted on. Instead a connection the server has closed is replaced *before* the
    request is sent, and a failure afterwards is the caller's to classify (``was_sent``).
    Not thread-safe (neither is xmlrpc's): the driver gives each thread its own.
    """

    def __init__(self, *, tls: ssl.SSLContext | None, pin: str | None, timeout: float) -> None:
        super().__init__(use_datetime=False)
        self._tls = tls
        self._pin = pin
        self.timeout = timeout

    def set_timeout(self, seconds: float) -> None:
        """Socket timeout for the next requests (the open connection too)."""
        self.timeout = seconds
        conn = self._connection[1] if self._connection else None
        if conn is not None:
            conn.timeout = seconds
            if conn.sock is not None:
                conn.sock.settimeout(seconds)

    def request(self, host: Any, handler: str, request_body: Any, verbose: bool = False) -> Any:
        # ``request_body`` may be a ``Once`` (a login): unwrapped inside the call expression,
        # so this frame holds the emptied box, not the body.
        try:
            return self.single_request(
                host,
                handler,
                request_body.take() if isinstance(request_body, Once) else request_body,
                verbose,
            )
        except BaseException:
            self.close()
            raise

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        if self._connection and host == self._connection[0]:
            cached = self._connection[1]
            assert cached is not None
            if not _dropped(cached):
                cached.timeout = self.timeout
                if cached.sock is not None:
                    cached.sock.settimeout(self.timeout)
                return cached
            self.close()
        chost, self._extra_headers, _x509 = self.get_host_info(host)
        conn: http.client.HTTPConnection
        if self._tls is not None:
            conn = _PinnedHTTPSConnection(
                chost, timeout=self.timeout, context=self._tls, pin=self._pin
            )
        else:
            conn = _HTTPConnection(chost, timeout=self.timeout)
        self._connection = host, conn
        return conn


def tls_context(*, cafile: str | None, pin: str | None, insecure: bool) -> ssl.SSLContext:
    """The TLS context: a CA file (hostname checked), else a pin (checked after the
    handshake, by the connection), else insecure, else the system's CAs."""
    if cafile:
        try:
            ctx = ssl.create_default_context(cafile=cafile)
        except FileNotFoundError:
            from vmctl import ValidationError

            raise ValidationError(
                f"the CA file {cafile!r} does not exist", field="cafile"
            ) from None
        except (ssl.SSLError, OSError) as exc:
            from vmctl import ValidationError

            raise ValidationError(
                f"the CA file {cafile!r} cannot be used: {exc}", field="cafile"
            ) from None
    elif pin or insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
