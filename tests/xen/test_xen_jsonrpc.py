"""Bulk reads over xapi's JSON-RPC (drivers/vmctl_xen/_jsonrpc.py), against xapisim's
/jsonrpc: the same VMInfo values as over XML-RPC, probed once per connection, a host without
JSON-RPC (as before XenServer 7) read over XML-RPC, XenAPI failures mapped alike."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from xen_helpers import PASSWORD, connect

import vmctl

xapisim = pytest.importorskip("xapisim")


@pytest.fixture
def own_sim() -> Iterator[Any]:
    """A pool of its own (the tests switch its JSON-RPC off, expire its sessions)."""
    with xapisim.serve(hosts=2, vms=12, running=5, password=PASSWORD, op_delay=0.0) as srv:
        yield srv


def by_uuid(infos: list[vmctl.VMInfo]) -> dict[str, vmctl.VMInfo]:
    return {i.uuid: i for i in infos}


def test_json_listing_equals_xmlrpc_listing(own_sim: Any) -> None:
    with connect(own_sim) as hv:
        driver: Any = hv._driver
        rpc = driver._c.jsonrpc
        assert rpc.offered is None  # not probed before the first bulk read
        before = driver.round_trips
        fast = hv.list_vms()
        assert rpc.offered is True
        assert driver.round_trips - before == 1
        rpc.offered = False  # the same connection, over XML-RPC
        slow = hv.list_vms()
        assert by_uuid(fast) == by_uuid(slow)
        states = {i.state for i in fast}
        assert {vmctl.PowerState.RUNNING, vmctl.PowerState.STOPPED} <= states
        assert len(fast) == 12 and all(i.host for i in fast if i.state is vmctl.PowerState.RUNNING)


def test_host_without_jsonrpc(own_sim: Any, caplog: pytest.LogCaptureFixture) -> None:
    own_sim.set_jsonrpc(False)
    with caplog.at_level(logging.INFO, logger="vmctl.xen"), connect(own_sim) as hv:
        driver: Any = hv._driver
        before = driver.round_trips
        first = hv.list_vms()
        assert driver.round_trips - before == 2  # the probe, then the XML-RPC call
        assert driver._c.jsonrpc.offered is False
        before = driver.round_trips
        assert hv.list_vms() == first
        assert driver.round_trips - before == 1  # probed once
    notes = [r for r in caplog.records if "no JSON-RPC" in r.getMessage()]
    assert len(notes) == 1
    own_sim.set_jsonrpc(True)
    with connect(own_sim) as hv:
        assert by_uuid(hv.list_vms()) == by_uuid(first)
        assert hv._driver._c.jsonrpc.offered is True  # type: ignore[attr-defined]


def test_expired_session_over_jsonrpc(own_sim: Any) -> None:
    """SESSION_INVALID in a JSON-RPC error reads as over XML-RPC: the core logs in again."""
    with connect(own_sim) as hv:
        driver: Any = hv._driver
        first = hv.list_vms()
        old = driver._c.ref
        own_sim.set_session_timeout(0.2)
        time.sleep(0.5)
        assert own_sim.open_sessions() == 0  # expired (open_sessions expires them)
        own_sim.set_session_timeout(3600)
        assert hv.list_vms() == first
        assert driver._c.ref != old
        assert driver._c.jsonrpc.offered is True


def test_jsonrpc_failure_maps_like_xmlrpc(own_sim: Any) -> None:
    """A XenAPI failure carried in a JSON-RPC 2.0 error object becomes the same
    ErrorDescription (code first, then its parameters) as over XML-RPC."""
    import xmlrpc.client

    from vmctl_xen._session import unwrap

    with connect(own_sim) as hv:
        conn: Any = hv._driver._c  # type: ignore[attr-defined]
        proxy, transport = conn._proxy()
        transport.set_timeout(10)
        host = proxy._ServerProxy__host
        bad = "OpaqueRef:not-a-session"
        over_json = conn.jsonrpc.call(transport, host, "VM.get_all_records", [bad])
        over_xml = xmlrpc.client.ServerProxy.__getattr__(proxy, "VM.get_all_records")(bad)
        assert over_json == over_xml
        assert over_json["Status"] == "Failure"
        assert over_json["ErrorDescription"][0] == "SESSION_INVALID"
        with pytest.raises(Exception, match="SESSION_INVALID"):
            unwrap(over_json)
