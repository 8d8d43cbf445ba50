"""XML-RPC transports for XenAPI: socket timeouts, and TLS verified by CA file or pinned
SHA-256 thumbprint (checked against the peer certificate before any byte of a request,
so a password never reaches an unverified server)."""

from __future__ import annotations

import hashlib
import http.client
import re
import ssl
import xmlrpc.client
from typing import Any

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


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


class ThumbprintMismatch(ssl.SSLError):
    """The server's certificate does not have the pinned SHA-256 thumbprint."""


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(
        self, host: str, *, timeout: float, context: ssl.SSLContext, pin: str | None
    ) -> None:
        super().__init__(host, timeout=timeout, context=context)
        self._pin = pin

    def connect(self) -> None:
        super().connect()
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


class Transport(xmlrpc.client.Transport):
    """One HTTP(S) connection (kept alive) with a settable socket timeout.

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

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        if self._connection and host == self._connection[0]:
            cached = self._connection[1]
            assert cached is not None
            return cached
        chost, self._extra_headers, _x509 = self.get_host_info(host)
        conn: http.client.HTTPConnection
        if self._tls is not None:
            conn = _PinnedHTTPSConnection(
                chost, timeout=self.timeout, context=self._tls, pin=self._pin
            )
        else:
            conn = http.client.HTTPConnection(chost, timeout=self.timeout)
        self._connection = host, conn
        return conn


def tls_context(*, cafile: str | None, pin: str | None, insecure: bool) -> ssl.SSLContext:
    """The TLS context: a CA file (hostname checked), else a pin (checked after the
    handshake, by the connection), else insecure, else the system's CAs."""
    if cafile:
        ctx = ssl.create_default_context(cafile=cafile)
    elif pin or insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
