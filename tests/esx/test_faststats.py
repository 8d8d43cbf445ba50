"""The stats fast path (drivers/vmctl_esx/_faststats.py): QueryPerf sent on the pyvmomi
session and read with lxml gives the same VMStats as pyvmomi's deserializer reading the same
reply (the simulator's counters change on every call, so both read one recorded reply); a
fault falls back to pyvmomi, logged once; a reply of another shape turns the fast path off."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest

import vmctl
from tests.hosts.esx import VcsimServer

from .conftest import Admin, spy, vc_uri

pytest.importorskip("lxml")
from lxml import etree

from vmctl_esx._faststats import parse_perf, sdk_metrics

NS = "urn:vim25"


def connect(srv: VcsimServer, uri: str) -> vmctl.Hypervisor:
    return vmctl.connect(uri, password=srv.password, cafile=str(srv.cafile))


def sdk_reads(driver: Any, reply: bytes) -> list[Any]:
    """Make the SDK path's QueryPerf answer pyvmomi's deserialization of ``reply`` (the
    stub's own deserializer, as if the host had sent those bytes); returns the answers."""
    from pyVmomi.SoapAdapter import SoapResponseDeserializer

    stub = driver.conn.stub
    real = stub.InvokeMethod
    answers: list[Any] = []

    def invoke(mo: Any, info: Any, args: Any, *rest: Any) -> Any:
        if info.wsdlName != "QueryPerf":
            return real(mo, info, args, *rest)
        answer = SoapResponseDeserializer(stub).Deserialize(io.BytesIO(reply), info.result)
        answers.append(answer)
        return answer

    stub.InvokeMethod = invoke
    return answers


@pytest.mark.parametrize("path", ["", "DC0/DC0_C0"])
def test_fast_stats_equal_sdk_stats(
    esx_sim: VcsimServer, vc_sim: VcsimServer, vc_admin: Admin, path: str
) -> None:
    srv, uri = (esx_sim, esx_sim.uri) if not path else (vc_sim, vc_uri(vc_sim, path))
    with connect(srv, uri) as hv:
        driver: Any = hv._driver
        vms = [hv.vm(i.uuid) for i in hv.list_vms()]
        assert len(vms) >= 2
        calls = spy(driver)
        fast = hv.stats(vms)
        assert [c[0] for c in calls] == ["QueryPerf"]
        assert driver._fast_stats.enabled
        reply = calls[0][2]
        assert b"PerfMetricIntSeries" in reply
        answers = sdk_reads(driver, reply)
        driver._fast_stats.enabled = False
        slow = hv.stats(vms)
        assert len(answers) == 1 and len(calls) == 1  # the SDK path read the same bytes
        assert fast == slow
        assert set(fast) == {vm.uuid for vm in vms}
        assert all(s.memory_used_mib is not None and s.memory_used_mib > 0 for s in fast.values())
        # And the intermediate form: every entity, its sample time and counter values.
        assert parse_perf([reply]) == sdk_metrics(answers[0])


def test_stats_fault_falls_back_to_sdk(
    vc_sim: VcsimServer, vc_admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    """The fast path's request names a folder where a VM belongs: the host answers a real
    InvalidArgument fault, the SDK path asks again (its own request, unchanged) and the
    stats arrive; logged once, the fast path stays on."""
    with connect(vc_sim, vc_uri(vc_sim, "DC0/DC0_C0")) as hv:
        driver: Any = hv._driver
        vms = [hv.vm(i.uuid) for i in hv.list_vms()]
        calls = spy(driver)
        spied = driver._fast.send

        def wrong(method: str, body: bytes) -> tuple[int, list[bytes]]:
            return spied(method, body.replace(b'type="VirtualMachine"', b'type="Folder"', 1))

        driver._fast.send = wrong
        with caplog.at_level(logging.INFO, logger="vmctl.esx"):
            for _ in range(2):
                stats = hv.stats(vms)
                assert set(stats) == {vm.uuid for vm in vms}
                assert all(s.memory_used_mib for s in stats.values())
        assert [c[0] for c in calls] == ["QueryPerf"] * 2
        assert all(b"InvalidArgument" in c[2] for c in calls)
        faults = [r for r in caplog.records if "fast stats" in r.getMessage()]
        assert len(faults) == 1 and "answered a fault (InvalidArgument)" in faults[0].getMessage()
        assert driver._fast_stats.enabled  # a fault does not turn the fast path off
        driver._fast.send = spied
        calls.clear()
        assert set(hv.stats(vms)) == {vm.uuid for vm in vms}
        assert [c[0] for c in calls] == ["QueryPerf"]
        assert b"PerfMetricIntSeries" in calls[0][2]


def test_stats_after_the_session_ended(vc_sim: VcsimServer, vc_admin: Admin) -> None:
    with connect(vc_sim, vc_uri(vc_sim, "DC0/DC0_C0")) as hv:
        driver: Any = hv._driver
        vms = [hv.vm(i.uuid) for i in hv.list_vms()]
        key = driver.conn.content.sessionManager.currentSession.key
        vc_admin.content.sessionManager.TerminateSession(sessionId=[key])
        stats = hv.stats(vms)
        assert set(stats) == {vm.uuid for vm in vms}
        assert all(s.memory_used_mib for s in stats.values())
        assert driver._fast_stats.enabled


def test_stats_unexpected_shape_falls_back_for_good(
    vc_sim: VcsimServer, vc_admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    with connect(vc_sim, vc_uri(vc_sim, "DC0/DC0_C0")) as hv:
        driver: Any = hv._driver
        vms = [hv.vm(i.uuid) for i in hv.list_vms()]
        calls = spy(driver)
        hv.stats(vms)
        real = calls[0][2]
        odd = real.replace(b':type="PerfMetricIntSeries"', b':type="PerfMetricSeriesCSV"', 1)
        assert odd != real
        sent: list[str] = []

        def strange(method: str, body: bytes) -> tuple[int, list[bytes]]:
            sent.append(method)
            return 200, [odd]

        driver._fast.send = strange
        with caplog.at_level(logging.INFO, logger="vmctl.esx"):
            for _ in range(2):
                stats = hv.stats(vms)
                assert set(stats) == {vm.uuid for vm in vms}
                assert all(s.memory_used_mib for s in stats.values())
        assert sent == ["QueryPerf"]  # off for this connection after the first
        assert not driver._fast_stats.enabled
        assert driver._fast.enabled  # the listing's fast path is its own
        warnings = [r for r in caplog.records if "unexpected reply" in r.getMessage()]
        assert len(warnings) == 1 and "PerfMetricSeriesCSV" in warnings[0].getMessage()


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda r: r.replace(b"</QueryPerfResponse>", b"<x/></QueryPerfResponse>"),
                     id="unknown-element"),
        pytest.param(lambda r: r.replace(b"<counterId>", b"<counterId>x", 1), id="bad-number"),
        pytest.param(lambda r: r[: len(r) // 2], id="truncated"),
        pytest.param(lambda r: r.replace(b"QueryPerfResponse", b"QueryPerfResponseX"),
                     id="other-response"),
    ],
)  # fmt: skip
def test_parser_refuses_what_it_does_not_know(
    vc_sim: VcsimServer, vc_admin: Admin, mangle: Any
) -> None:
    from vmctl_esx._fastlist import Unexpected

    with connect(vc_sim, vc_uri(vc_sim, "DC0/DC0_C0")) as hv:
        driver: Any = hv._driver
        vms = [hv.vm(i.uuid) for i in hv.list_vms()]
        calls = spy(driver)
        hv.stats(vms)
        reply = calls[0][2]
        assert parse_perf([reply])
        with pytest.raises(Unexpected):
            parse_perf([mangle(reply)])
        # A reply parsed in part does not spoil the next parse on this thread, nor does one
        # whose transfer broke off (the feed parser is made anew).
        assert parse_perf([reply]) == parse_perf([reply[:100], reply[100:]])

        def cut_off() -> Iterator[bytes]:
            yield reply[: len(reply) // 2]
            raise OSError("connection reset")

        with pytest.raises(OSError):
            parse_perf(cut_off())
        assert parse_perf([reply]) == parse_perf([reply[:100], reply[100:]])


def test_request_is_pyvmomis_bytes(vc_sim: VcsimServer, vc_admin: Admin) -> None:
    """The request made from pyvmomi's serialized template is the request pyvmomi would
    send, byte for byte (one or several counters, other intervals, mixed types)."""
    with connect(vc_sim, vc_uri(vc_sim, "DC0/DC0_C0")) as hv:
        driver: Any = hv._driver
        conn = driver.conn
        refs = [driver._ref(i.uuid) for i in hv.list_vms()]
        fast = driver._fast_stats
        pm = conn.content.perfManager
        info = conn.vim.PerformanceManager.QueryPerf.info
        unusual = conn.vim.VirtualMachine("vm-1_x.y-Z", conn.stub)
        host = conn.vim.HostSystem("host-1", conn.stub)
        for entities, counters, interval in (
            (refs, [98], 20),
            (refs, [98, 2, 6], 20),
            (refs[:1], [98], 300),
            ([*refs, unusual], [98], 20),
            ([*refs[:2], host], [98], 20),
        ):
            sdk = conn.stub.SerializeRequest(pm, info, [fast.specs(entities, counters, interval)])
            assert fast.body(pm, entities, counters, interval) == sdk
        # pyvmomi writes a moid's text unescaped (``<entity ...>vm-<&></entity>``, not XML);
        # the template escapes it.
        odd = conn.vim.VirtualMachine("vm-<&>", conn.stub)
        request = etree.fromstring(fast.body(pm, [refs[0], odd], [98], 20))
        entities = request.findall(f".//{{{NS}}}entity")
        assert [e.text for e in entities] == [refs[0]._moId, "vm-<&>"]


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-02T15:21:18.04953709Z",  # the simulator's nanoseconds
        "2026-12-02T15:21:18.049537999Z",
        "2026-12-02T15:21:18Z",
        "2026-12-02T15:21:20.123+02:00",
        "2026-12-02T15:21:20-05:30",
        "2026-12-02T15:21:20",  # no zone: pyvmomi's reading
        "2026-12-02T24:00:00Z",  # xsd's end of day: fromisoformat refuses it
    ],
)
def test_sample_times_read_as_pyvmomi_reads_them(text: str) -> None:
    from pyVmomi.Iso8601 import ParseISO8601

    from vmctl_esx._faststats import _datetime

    ours, theirs = _datetime(text), ParseISO8601(text)
    assert ours == theirs
    assert (ours.tzinfo is None) == (theirs.tzinfo is None)
