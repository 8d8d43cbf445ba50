"""TLS trust for vSphere connections: CA file, SHA-256 thumbprint pinning, or insecure.

pyvmomi is always handed an explicit ``ssl.SSLContext`` built here (without one, pyVim
silently disables verification for localhost). pyvmomi's own ``thumbprint=`` check only runs
after a verification *failure* and then switches the shared context to CERT_NONE for every
later connection of the pool, so vmctl pins the certificate itself: the context's socket class
checks the peer certificate's SHA-256 on every handshake.
"""

from __future__ import annotations

import hashlib
import logging
import re
import ssl
from typing import Any

from vmctl import ValidationError

log = logging.getLogger("vmctl.esx")

_HEX = re.compile(r"^[0-9a-f]{64}$")


class ThumbprintMismatch(ssl.SSLError):
    """The server's certificate does not have the pinned SHA-256 thumbprint."""


def normalize_thumbprint(value: str) -> bytes:
    """``AA:BB:...`` (or plain hex) SHA-256 thumbprint -> the 32 digest bytes."""
    text = value.strip().lower().replace(":", "").replace(" ", "")
    if text.startswith("sha256:"):
        text = text[7:]
    if len(text) == 40:
        raise ValidationError(
            "a SHA-1 thumbprint is not accepted; give the certificate's "
            "SHA-256 thumbprint (64 hex digits)",
            field="thumbprint",
        )
    if not _HEX.match(text):
        raise ValidationError(
            "expected a SHA-256 thumbprint: 32 hex bytes, e.g. AA:BB:...", field="thumbprint"
        )
    return bytes.fromhex(text)


def format_thumbprint(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


def _pinned_socket_class(pin: bytes) -> type[ssl.SSLSocket]:
    class PinnedSSLSocket(ssl.SSLSocket):
        """Checks the peer certificate's SHA-256 right after every handshake."""

        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            der = self.getpeercert(binary_form=True)
            got = hashlib.sha256(der).digest() if der else b""
            if got != pin:
                self.close()
                raise ThumbprintMismatch(
                    f"the server certificate's SHA-256 thumbprint "
                    f"{format_thumbprint(got) if got else '(none)'} does not match the pinned "
                    f"thumbprint {format_thumbprint(pin)}"
                )

    return PinnedSSLSocket


def make_context(
    *, cafile: str | None, thumbprint: str | None, insecure: bool, where: str
) -> ssl.SSLContext:
    """The SSL context for a connection to ``where``.

    * ``thumbprint``: the certificate must have this SHA-256 digest (checked on every
      connection); with ``cafile`` too, the chain and host name are verified as well.
    * ``cafile``: the chain must lead to a CA in this file, and the host name must match.
    * neither: the system's CA store.
    * ``insecure``: no verification at all (``vmctl.connect`` has already warned).
    """
    if insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    pin = normalize_thumbprint(thumbprint) if thumbprint else None
    try:
        ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise ValidationError(f"cannot load CA file {cafile!r}: {exc}", field="cafile") from exc
    if pin is not None:
        if not cafile:
            # The pin is the trust anchor: no chain or name check, the digest must match.
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.sslsocket_class = _pinned_socket_class(pin)
    return ctx


def describe_tls_error(exc: BaseException) -> str | None:
    """A user-facing sentence for a TLS failure, or None if ``exc`` is not one."""
    seen: set[int] = set()
    cur: Any = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ThumbprintMismatch):
            return str(cur)
        if isinstance(cur, ssl.SSLCertVerificationError):
            reason = getattr(cur, "verify_message", None) or cur
            return (
                f"the server's TLS certificate was not trusted ({reason}); "
                "give its CA with cafile= / $VMCTL_CAFILE or pin its SHA-256 thumbprint "
                "with thumbprint= / $VMCTL_THUMBPRINT"
            )
        if isinstance(cur, ssl.SSLError):
            return f"TLS failed: {cur}"
        cur = cur.__cause__ or cur.__context__
    return None
