"""Connection URIs: ``scheme[+transport]://[user@]host[:port][/path][?params]``.

Passwords never travel in a URI: one in the userinfo part is refused (without echoing it).
``str()`` of a URI is safe to log.

>>> URI.parse("qemu+ssh://admin@kvm1.example.com/system")
URI('qemu+ssh://admin@kvm1.example.com/system')
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from types import MappingProxyType

from attrs import field, frozen

from ._errors import ValidationError

_SCHEME = re.compile(r"^[a-z][a-z0-9-]*$")
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)$")
_USER = re.compile(r"^[A-Za-z0-9._~%!$&'()*+,;=@\\-]+$")
SECRET_PARAMS = frozenset({"password", "passwd", "pass", "pwd", "secret", "token", "key"})
#: Parts of parameter names that say the value is a secret (``pass``, ``db_password``...).
_SECRET_PARTS = ("pass", "pwd", "secret", "token", "credential", "apikey", "api_key")


def looks_secret(key: str) -> bool:
    """Whether a URI parameter named ``key`` would carry a secret."""
    low = key.lower()
    return low in SECRET_PARAMS or any(part in low for part in _SECRET_PARTS)


def _params(value: object) -> Mapping[str, str]:
    return MappingProxyType(dict(value))  # type: ignore[call-overload]


@frozen
class URI:
    """A parsed connection URI."""

    scheme: str
    transport: str | None = None
    user: str | None = None
    host: str = ""
    port: int | None = None
    path: str = ""
    params: Mapping[str, str] = field(factory=dict, converter=_params)

    @classmethod
    def parse(cls, text: str) -> URI:
        """Parse and check ``text``; raise ValidationError saying what is wrong.

        A refused URI may hold a password: the error is raised from a frame that no longer
        holds the text, so no traceback of vmctl's keeps it.
        """
        try:
            return cls._parse(text)
        except ValidationError as exc:
            error = exc
        del text
        raise error.with_traceback(None) from None

    @classmethod
    def _parse(cls, text: str) -> URI:
        if not isinstance(text, str):
            raise ValidationError(f"a URI must be a string, got {type(text).__name__}", field="uri")
        if not text or text != text.strip():
            raise ValidationError("a URI must not be empty or padded with spaces", field="uri")
        if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
            raise ValidationError(
                "a URI must not contain spaces or control characters", field="uri"
            )
        if "://" not in text:
            raise ValidationError(
                f"{_safe(text)!r} has no '://'; write scheme://host, e.g. sim:// or qemu:///system",
                field="uri",
            )
        head, rest = text.split("://", 1)
        scheme, plus, transport = head.lower().partition("+")
        if not _SCHEME.match(scheme) or (plus and not _SCHEME.match(transport)):
            raise ValidationError(f"{head!r} is not a valid scheme[+transport]", field="uri")
        try:
            parts = urllib.parse.urlsplit("x://" + rest)
            port = parts.port
        except ValueError as exc:
            raise ValidationError(f"{_safe(text)!r}: {exc}", field="uri") from None
        if parts.fragment:
            raise ValidationError("a URI must not have a #fragment", field="uri")
        user = None
        if "@" in parts.netloc:
            userinfo = parts.netloc.rsplit("@", 1)[0]
            if ":" in userinfo:
                raise ValidationError(
                    "the URI holds a password (user:password@host); vmctl never takes a "
                    "password from a URI: pass password=..., set VMCTL_PASSWORD, or give a "
                    "callback",
                    field="uri",
                )
            user = urllib.parse.unquote(userinfo)
            if not userinfo or not _USER.match(userinfo):
                raise ValidationError(f"user name {userinfo!r} is not valid", field="uri")
        host = parts.hostname or ""
        if host and not _HOST.match(host if ":" not in host else f"[{host}]"):
            raise ValidationError(f"host {host!r} is not a valid host name or address", field="uri")
        if port == 0:
            raise ValidationError("port 0 is not a valid port", field="uri")
        params: dict[str, str] = {}
        for key, val in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            if looks_secret(key):
                raise ValidationError(
                    f"the URI parameter {key!r} would carry a secret; pass it as an option or "
                    "environment variable instead",
                    field="uri",
                )
            if key in params:
                raise ValidationError(f"the URI parameter {key!r} is given twice", field="uri")
            params[key] = val
        return cls(
            scheme=scheme,
            transport=transport or None,
            user=user,
            host=host,
            port=port,
            path=urllib.parse.unquote(parts.path),
            params=params,
        )

    def __str__(self) -> str:
        head = self.scheme + (f"+{self.transport}" if self.transport else "")
        netloc = ""
        if self.user:
            netloc += urllib.parse.quote(self.user, safe="@.-_~") + "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        netloc += host
        if self.port is not None:
            netloc += f":{self.port}"
        query = (
            ("?" + urllib.parse.urlencode(sorted(self.params.items()), safe="/~"))
            if self.params
            else ""
        )
        return f"{head}://{netloc}{urllib.parse.quote(self.path)}{query}"

    def __repr__(self) -> str:
        return f"URI({str(self)!r})"


def _safe(text: str) -> str:
    """``text`` with any userinfo password masked, for error messages."""
    return re.sub(r"(://[^/@:]*):[^@/]*@", r"\1:***@", text)
