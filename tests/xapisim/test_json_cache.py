"""xapisim's JSON-RPC replies reuse each record's cached JSON (wire.Encoded.json): the bytes
are those of encoding the plain values in one go, in both JSON-RPC versions, after a change
too (the changed record's cache is dropped with its XML)."""

from __future__ import annotations

import json
from typing import Any

import pytest

import xapisim
from xapisim import wire


@pytest.fixture(scope="module")
def server() -> Any:
    with xapisim.serve(hosts=2, vms=6, running=2, op_delay=0.0) as srv:
        yield srv


def plain(v: Any) -> Any:
    """The value with every Encoded replaced by what it wraps."""
    if isinstance(v, wire.Encoded):
        return plain(v.value)
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def reference(resp: dict[str, Any], version: str, ident: Any) -> bytes:
    """The response as one json encoding of plain values (the frame json_response writes)."""
    if version == "2.0":
        body = {"jsonrpc": "2.0", "result": plain(resp["Value"]), "id": ident}
    else:
        body = {"result": plain(resp["Value"]), "error": None, "id": ident}
    return wire._JSON.encode(body).encode("utf-8")


@pytest.mark.parametrize("version", ["1.0", "2.0"])
@pytest.mark.parametrize("cls", ["VM", "host", "VDI", "SR", "network", "pool", "VBD"])
def test_cached_json_is_the_plain_encoding(
    server: xapisim.SimServer, version: str, cls: str
) -> None:
    api = server.api
    ref = api.dispatch("session.login_with_password", ("root", server.password, "2.21", "t"))
    session = ref["Value"]
    try:
        for _ in range(2):  # the second time from the cache
            resp = api.dispatch(f"{cls}.get_all_records", (session,))
            assert resp["Status"] == "Success" and resp["Value"]
            assert any(isinstance(v, wire.Encoded) for v in resp["Value"].values())
            got = wire.json_response(resp, version, 7)
            assert got == reference(resp, version, 7)
            assert json.loads(got)["id"] == 7
    finally:
        api.dispatch("session.logout", (session,))


def test_change_drops_the_cached_json(server: xapisim.SimServer) -> None:
    api = server.api
    session = api.dispatch("session.login_with_password", ("root", server.password, "2.21", "t"))[
        "Value"
    ]
    try:
        recs = api.dispatch("VM.get_all_records", (session,))["Value"]
        before = json.loads(wire.json_response({"Status": "Success", "Value": recs}, "2.0", 1))
        vm = next(r for r, v in before["result"].items() if not v["is_a_template"])
        api.dispatch("VM.set_name_label", (session, vm, "renamed-for-json"))
        recs = api.dispatch("VM.get_all_records", (session,))["Value"]
        after = json.loads(wire.json_response({"Status": "Success", "Value": recs}, "2.0", 2))
        assert after["result"][vm]["name_label"] == "renamed-for-json"
    finally:
        api.dispatch("session.logout", (session,))
