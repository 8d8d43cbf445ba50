"""Helpers for the xapisim fidelity tests: an SDK session and wire-type checks."""

from __future__ import annotations

import re
import ssl
import time
import xmlrpc.client
from collections.abc import Callable
from typing import Any

import XenAPI

from xapisim import SimServer
from xapisim.tables import ERRORS

REF_RE = re.compile(r"^OpaqueRef:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
NULL = "OpaqueRef:NULL"


def transport(server: SimServer) -> xmlrpc.client.Transport:
    if server.cafile:
        ctx = ssl.create_default_context(cafile=server.cafile)
        return xmlrpc.client.SafeTransport(context=ctx)
    return xmlrpc.client.Transport()


def login(server: SimServer, originator: str = "xapisim-tests") -> Any:
    s = XenAPI.Session(server.url, transport=transport(server))
    s.xenapi.login_with_password(server.username, server.password, "2.21", originator)
    return s


def raw(server: SimServer) -> Any:
    """A plain XML-RPC proxy (no SDK re-login), for wire-level checks."""
    return xmlrpc.client.ServerProxy(server.url, transport=transport(server))


def failure(fn: Callable[..., Any], *args: Any) -> list[str]:
    """Call through the SDK; return the Failure details (and check the parameter count)."""
    try:
        fn(*args)
    except XenAPI.Failure as f:
        details = list(f.details)
        assert all(isinstance(d, str) for d in details), details
        spec = ERRORS.get(details[0])
        assert spec is not None, f"error code not in the tables: {details}"
        assert len(details) == 1 + len(spec.params), (details, spec.params)
        return details
    raise AssertionError(f"expected a XenAPI.Failure from {args}")


def check_wire(value: Any, ty: str, where: str) -> None:
    """Assert that ``value`` (as the SDK decoded it) has datamodel wire type ``ty``."""
    kind = ty.split(" ", 1)[0]
    if kind == "int":
        assert isinstance(value, str) and re.fullmatch(r"-?\d+", value), (where, value)
    elif kind == "float":
        assert isinstance(value, float), (where, value)
    elif kind == "bool":
        assert isinstance(value, bool), (where, value)
    elif kind == "datetime":
        assert isinstance(value, xmlrpc.client.DateTime), (where, value)
        assert re.fullmatch(r"\d{8}T\d\d:\d\d:\d\dZ", value.value), (where, value.value)
    elif kind == "ref":
        assert isinstance(value, str), (where, value)
        assert value == NULL or REF_RE.match(value), (where, value)
    elif kind == "set":
        assert isinstance(value, list), (where, value)
        for v in value:
            check_wire(v, ty[4:], where)
    elif kind == "map":
        assert isinstance(value, dict), (where, value)
        rest = ty[4:]
        if rest.startswith(("enum ", "ref ")):
            parts = rest.split(" ", 2)
            kty, vty = f"{parts[0]} {parts[1]}", parts[2]
        else:
            kty, _, vty = rest.partition(" ")
        for k, v in value.items():
            assert isinstance(k, str), (where, k)
            if kty == "int":
                assert re.fullmatch(r"-?\d+", k), (where, k)
            check_wire(v, vty, f"{where}[{k}]")
    elif kind == "enum":
        assert isinstance(value, str) and value, (where, value)
    else:
        assert isinstance(value, str), (where, value)


def wait_for(pred: Callable[[], Any], timeout: float = 5.0, step: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(step)
