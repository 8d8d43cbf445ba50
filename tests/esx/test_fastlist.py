"""The listing fast path (drivers/vmctl_esx/_fastlist.py): RetrievePropertiesEx sent on the
pyvmomi session and read with lxml gives the same VMInfo values as pyvmomi's deserializer;
pages are followed (a real simulator reply split into pages, since the simulator ignores
maxObjects); a fault or a reply of an unexpected shape falls back to pyvmomi, logged once."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import vmctl
from tests.hosts.esx import VcsimServer

from .conftest import Admin, spy, vc_uri

pytest.importorskip("lxml")
from lxml import etree

NS = "urn:vim25"


def connect(srv: VcsimServer, uri: str) -> vmctl.Hypervisor:
    return vmctl.connect(uri, password=srv.password, cafile=str(srv.cafile))


def sdk_listing(hv: vmctl.Hypervisor) -> list[vmctl.VMInfo]:
    fast = hv._driver._fast  # type: ignore[attr-defined]
    fast.enabled = False
    try:
        return hv.list_vms()
    finally:
        fast.enabled = True


@pytest.mark.parametrize("path", ["", "DC0/DC0_C0", "DC0/DC0_C0/DC0_C0_H1", "DC0/DC0_H0"])
def test_fast_path_equals_sdk_path(
    esx_sim: VcsimServer, vc_sim: VcsimServer, vc_admin: Admin, path: str
) -> None:
    srv, uri = (esx_sim, esx_sim.uri) if not path else (vc_sim, vc_uri(vc_sim, path))
    with connect(srv, uri) as hv:
        driver: Any = hv._driver
        calls = spy(driver)
        fast = hv.list_vms()
        assert [c[0] for c in calls] == ["RetrievePropertiesEx"]
        assert driver._fast.enabled
        slow = sdk_listing(hv)
        assert len(calls) == 1  # the SDK path did not go through the fast sender
        assert fast and sorted(fast, key=lambda i: i.uuid) == sorted(slow, key=lambda i: i.uuid)
        # And the lookups the listing primes (uuid -> moref) work as after an SDK listing.
        one = fast[0]
        assert hv.vm(one.uuid).info() == one


def test_fast_path_reads_changed_values(vc_sim: VcsimServer, vc_admin: Admin) -> None:
    """VMs in other states than the simulator's default (suspended, stopped) read the same
    both ways."""
    with connect(vc_sim, vc_uri(vc_sim, "DC0/DC0_C0")) as hv:
        infos = hv.list_vms()
        sleeper, stopped = hv.vm(infos[-1].uuid), hv.vm(infos[-2].uuid)
        sleeper.suspend()
        stopped.power_off()
        try:
            fast = {i.uuid: i for i in hv.list_vms()}
            slow = {i.uuid: i for i in sdk_listing(hv)}
            assert fast == slow
            assert fast[sleeper.uuid].state is vmctl.PowerState.SUSPENDED
            assert fast[stopped.uuid].state is vmctl.PowerState.STOPPED
        finally:
            sleeper.resume()
            stopped.start()


def _split(reply: bytes, per_page: int) -> list[bytes]:
    """A real RetrievePropertiesEx reply cut into pages of ``per_page`` objects, each but the
    last with a token, the later ones as ContinueRetrievePropertiesExResponse."""
    root = etree.fromstring(reply)
    response = root[0][0]
    returnval = response[0]
    objects = list(returnval)
    assert all(o.tag == f"{{{NS}}}objects" for o in objects)
    chunks = [objects[i : i + per_page] for i in range(0, len(objects), per_page)]
    pages = []
    for n, chunk in enumerate(chunks):
        for child in list(returnval):
            returnval.remove(child)
        if n + 1 < len(chunks):
            token = etree.SubElement(returnval, f"{{{NS}}}token")
            token.text = f"page-{n + 1}"
        for o in chunk:
            returnval.append(o)
        response.tag = f"{{{NS}}}" + (
            "RetrievePropertiesExResponse" if n == 0 else "ContinueRetrievePropertiesExResponse"
        )
        pages.append(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
    return pages


def test_pages_are_followed(vc_sim: VcsimServer, vc_admin: Admin) -> None:
    with connect(vc_sim, vc_uri(vc_sim, "DC0/DC0_C0")) as hv:
        driver: Any = hv._driver
        calls = spy(driver)
        whole = hv.list_vms()
        reply = calls[0][2]
        pages = _split(reply, 2)
        assert len(pages) >= 3
        sent: list[tuple[str, bytes]] = []

        def paged(method: str, body: bytes) -> tuple[int, list[bytes]]:
            sent.append((method, body))
            return 200, [pages[len(sent) - 1]]

        driver._fast.send = paged
        before = driver.round_trips
        assert hv.list_vms() == whole
        assert driver._fast.enabled
        assert driver.round_trips == before  # the pages came from the fake sender
        assert [m for m, _ in sent] == ["RetrievePropertiesEx"] + [
            "ContinueRetrievePropertiesEx"
        ] * (len(pages) - 1)
        assert b"<maxObjects>1000</maxObjects>" in sent[0][1]
        for n, (_, body) in enumerate(sent[1:], start=1):
            request = etree.fromstring(body)[0][0]
            assert request.tag == f"{{{NS}}}ContinueRetrievePropertiesEx"
            assert request.findtext(f"{{{NS}}}token") == f"page-{n}"
            assert request.findtext(f"{{{NS}}}_this") == "propertyCollector"


def test_fault_falls_back_to_sdk(
    vc_sim: VcsimServer, vc_admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    """The session's view destroyed behind the driver's back: the fast path gets a real
    ManagedObjectNotFound fault, pyvmomi reads it again and the driver makes a new view."""
    with connect(vc_sim, vc_uri(vc_sim, "DC0/DC0_C0")) as hv:
        driver: Any = hv._driver
        whole = hv.list_vms()
        calls = spy(driver)
        with caplog.at_level(logging.INFO, logger="vmctl.esx"):
            for _ in range(2):
                driver._vm_view().DestroyView()
                assert hv.list_vms() == whole
        faults = [r for r in caplog.records if "answered a fault" in r.getMessage()]
        assert len(faults) == 1  # logged once
        assert b"ManagedObjectNotFound" in calls[0][2]
        assert driver._fast.enabled  # a fault does not turn the fast path off
        calls.clear()
        assert hv.list_vms() == whole
        assert [c[0] for c in calls] == ["RetrievePropertiesEx"]


def test_unexpected_shape_falls_back_for_good(
    vc_sim: VcsimServer, vc_admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    with connect(vc_sim, vc_uri(vc_sim, "DC0/DC0_C0")) as hv:
        driver: Any = hv._driver
        calls = spy(driver)
        whole = hv.list_vms()
        real = calls[0][2]
        odd = real.replace(b'type="xsd:int"', b'type="xsd:decimal"', 1)
        assert odd != real
        sent: list[str] = []

        def strange(method: str, body: bytes) -> tuple[int, list[bytes]]:
            sent.append(method)
            return 200, [odd]

        driver._fast.send = strange
        with caplog.at_level(logging.INFO, logger="vmctl.esx"):
            assert hv.list_vms() == whole
            assert hv.list_vms() == whole
        assert sent == ["RetrievePropertiesEx"]  # off for this connection after the first
        assert not driver._fast.enabled
        warnings = [r for r in caplog.records if "unexpected reply" in r.getMessage()]
        assert len(warnings) == 1 and "xsd:decimal" in warnings[0].getMessage()


def test_expired_session_is_renewed(vc_sim: VcsimServer, vc_admin: Admin) -> None:
    """A session ended on the server: the fast path's read reports it as the SDK path does
    (not sent), the core logs in again and the listing succeeds."""
    with connect(vc_sim, vc_uri(vc_sim, "DC0/DC0_C0")) as hv:
        driver: Any = hv._driver
        whole = hv.list_vms()
        key = driver.conn.content.sessionManager.currentSession.key
        vc_admin.content.sessionManager.TerminateSession(sessionId=[key])
        calls = spy(driver)
        assert hv.list_vms() == whole
        assert calls and calls[-1][0] == "RetrievePropertiesEx"
        assert driver._fast.enabled
