"""The stats fast path: ``PerformanceManager.QueryPerf`` sent on the pyvmomi session, its
reply read with lxml.

``get_stats`` asks QueryPerf for the latest real-time sample of a few counters of every VM
at once; for thousands of VMs pyvmomi's deserializer is again most of the time (a
``PerfEntityMetric`` object, its ``sampleInfo`` and ``PerfMetricIntSeries`` objects per VM).
Here the request is made from pyvmomi's serialization of one query spec (byte for byte the
request pyvmomi would send: :meth:`FastStats.body`) and sent through the listing's sender
(:meth:`FastLister.exchange`: the stub's connections, its cookie, the thread's deadline,
one round trip); the reply is read into what the driver uses of it, one :data:`Metric` per
entity: its moid, the time of its last sample (the instant pyvmomi's ISO 8601 parser
reads), and the last value of each counter series. :func:`sdk_metrics` makes the same from
pyvmomi's objects: the driver turns either into ``VMStats`` with the same code.

A SOAP fault falls back to the SDK path (which repeats the call and maps the fault); a reply
of another shape (``PerfEntityMetricCSV``, a series that is not ``PerfMetricIntSeries``, an
unknown element) turns the stats fast path off for the connection. Each is logged once per
connection. ``VMCTL_ESX_FASTPATH=0`` turns it off with the listing's.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ._fastlist import _NS, _XSI_TYPE, FastLister, Fault, Unexpected, response_of

log = logging.getLogger("vmctl.esx")

#: (entity moid, time of the entity's last sample or None, {counter id: last value}).
Metric = tuple[str, dt.datetime | None, dict[int, int]]


def sdk_metrics(result: Iterable[Any] | None) -> list[Metric]:
    """The same from pyvmomi's QueryPerf answer (``PerfEntityMetric`` objects)."""
    out: list[Metric] = []
    for metric in result or ():
        values: dict[int, int] = {}
        for series in metric.value or ():
            if series.value:
                values[int(series.id.counterId)] = int(series.value[-1])
        stamp = metric.sampleInfo[-1].timestamp if metric.sampleInfo else None
        out.append((str(metric.entity._moId), stamp, values))
    return out


def _local(kind: str | None) -> str:
    return (kind or "").rpartition(":")[2]


def parse_perf(
    chunks: Iterable[bytes], stamps: dict[str, dt.datetime] | None = None
) -> list[Metric]:
    """A QueryPerf reply (its body in chunks) as Metrics; Fault for a SOAP fault, Unexpected
    for any other shape. ``stamps`` caches parsed timestamps (a host samples every VM at
    the same moments, so a few distinct values repeat across the entities)."""
    response = response_of(chunks, "QueryPerf")
    ns = _NS
    t_ret, t_entity = f"{{{ns}}}returnval", f"{{{ns}}}entity"
    t_sample, t_value = f"{{{ns}}}sampleInfo", f"{{{ns}}}value"
    t_stamp, t_interval = f"{{{ns}}}timestamp", f"{{{ns}}}interval"
    t_id, t_counter, t_instance = f"{{{ns}}}id", f"{{{ns}}}counterId", f"{{{ns}}}instance"
    cache: dict[str, dt.datetime] = {} if stamps is None else stamps
    out: list[Metric] = []
    for ret in response:
        if ret.tag != t_ret:
            if isinstance(ret.tag, str):
                raise Unexpected(f"element {ret.tag} in QueryPerfResponse")
            continue
        if _local(ret.get(_XSI_TYPE)) != "PerfEntityMetric":
            raise Unexpected(f"a returnval of type {ret.get(_XSI_TYPE)}")
        moid: str | None = None
        last: str | None = None
        values: dict[int, int] = {}
        for el in ret:
            tag = el.tag
            if tag == t_value:
                if _local(el.get(_XSI_TYPE)) != "PerfMetricIntSeries":
                    raise Unexpected(f"a series of type {el.get(_XSI_TYPE)}")
                counter: int | None = None
                sample: str | None = None
                for part in el:
                    ptag = part.tag
                    if ptag == t_value:
                        sample = part.text
                    elif ptag == t_id:
                        for key in part:
                            if key.tag == t_counter:
                                counter = _number(key.text)
                            elif key.tag != t_instance and isinstance(key.tag, str):
                                raise Unexpected(f"element {key.tag} in a series id")
                    elif isinstance(ptag, str):
                        raise Unexpected(f"element {ptag} in a series")
                if counter is None:
                    raise Unexpected("a series without its counter id")
                if sample is not None:
                    values[counter] = _number(sample)
            elif tag == t_sample:
                for part in el:
                    if part.tag == t_stamp:
                        last = part.text
                    elif part.tag != t_interval and isinstance(part.tag, str):
                        raise Unexpected(f"element {part.tag} in sampleInfo")
            elif tag == t_entity:
                moid = el.text
            elif isinstance(tag, str):
                raise Unexpected(f"element {tag} in a PerfEntityMetric")
        if not moid:
            raise Unexpected("a PerfEntityMetric without its entity")
        stamp = None
        if last is not None:
            stamp = cache.get(last)
            if stamp is None:
                stamp = _datetime(last)
                if len(cache) > 1000:
                    cache.clear()
                cache[last] = stamp
        out.append((moid, stamp, values))
    return out


def _datetime(text: str) -> dt.datetime:
    """An xsd:dateTime as pyvmomi reads it (its ISO 8601 parser: fractions of a second
    beyond microseconds cut off). ``datetime.fromisoformat`` reads the forms hosts write
    (``2026-12-02T15:21:18.04953709Z``, offsets) to the same instant 30 times faster; a
    time without a zone, or a form it refuses, goes to pyvmomi's parser."""
    from pyVmomi.Iso8601 import ParseISO8601

    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError:
        stamp = None
    if stamp is None or stamp.tzinfo is None:
        stamp = ParseISO8601(text)  # type: ignore[no-untyped-call]
        if stamp is None:
            raise Unexpected(f"not an xsd:dateTime: {text!r}")
    return stamp


def _number(text: str | None) -> int:
    try:
        return int(text or "")
    except ValueError as exc:
        raise Unexpected(f"not an integer: {text!r}") from exc


#: A moid no host uses, to find where an entity's moid goes in a serialized query spec.
_MARK = "vmctl-entity-mark"


class FastStats:
    """QueryPerf through lxml for one connection, on the listing's sender."""

    def __init__(self, lister: FastLister) -> None:
        self.lister = lister
        self.enabled = lister.enabled  # off when the listing's is off from the start
        self._stamps: dict[str, dt.datetime] = {}
        self._templates: dict[tuple[Any, ...], tuple[str, str, str, str]] = {}

    def specs(self, refs: Sequence[Any], counters: Sequence[int], interval: int) -> list[Any]:
        """The QuerySpecs of the latest sample of ``counters`` for each of ``refs`` (what
        the SDK path sends, and what :meth:`body` writes)."""
        pm = self.lister.conn.vim.PerformanceManager
        metric = [pm.MetricId(counterId=c, instance="") for c in counters]
        return [
            pm.QuerySpec(entity=ref, maxSample=1, intervalId=interval, metricId=metric)
            for ref in refs
        ]

    def body(
        self, manager: Any, refs: Sequence[Any], counters: Sequence[int], interval: int
    ) -> bytes:
        """The QueryPerf request of :meth:`specs`, byte for byte as pyvmomi serializes it,
        without making and serializing one QuerySpec object per VM (at 2000 VMs that took
        longer than the host's answer): pyvmomi serializes the request once with one spec
        for a marker moid (per manager, entity type, counters and interval), checked
        against its serialization of two specs; each VM's spec is that one with its moid
        in place of the marker. Entities of mixed types are serialized by pyvmomi."""
        from pyVmomi.SoapAdapter import XmlEscape

        stub = self.lister.conn.stub
        info = self.lister.conn.vim.PerformanceManager.QueryPerf.info
        kind = refs[0]._wsdlName if refs else ""
        if any(ref._wsdlName != kind for ref in refs):
            whole: bytes = stub.SerializeRequest(
                manager, info, [self.specs(refs, counters, interval)]
            )
            return whole
        key = (manager._moId, kind, tuple(counters), interval)
        template = self._templates.get(key)
        if template is None:
            template = self._templates[key] = self._template(
                manager, type(refs[0]), counters, interval
            )
        head, before, after, tail = template
        escape: Callable[[str], str] = XmlEscape
        specs = "".join(f"{before}{escape(ref._moId)}{after}" for ref in refs)
        return f"{head}{specs}{tail}".encode()

    def _template(
        self, manager: Any, cls: Any, counters: Sequence[int], interval: int
    ) -> tuple[str, str, str, str]:
        """(head, spec before the moid, spec after it, tail) of pyvmomi's serialization,
        checked against pyvmomi's serialization of two specs."""
        stub = self.lister.conn.stub
        info = self.lister.conn.vim.PerformanceManager.QueryPerf.info

        def serialized(moids: list[str]) -> str:
            specs = self.specs([cls(m, stub) for m in moids], counters, interval)
            return bytes(stub.SerializeRequest(manager, info, [specs])).decode()

        one = serialized([_MARK])
        start, end = one.find("<querySpec>"), one.rfind("</querySpec>") + len("</querySpec>")
        spec = one[start:end]
        if start < 0 or spec.count(_MARK) != 1:
            raise Unexpected("pyvmomi serializes a query spec in an unknown way")
        head, tail = one[:start], one[end:]
        before, after = spec.split(_MARK)
        two = serialized([f"{_MARK}-1", f"{_MARK}-2"])
        built = "".join((head, before, f"{_MARK}-1", after, before, f"{_MARK}-2", after, tail))
        if built != two:
            raise Unexpected("pyvmomi serializes query specs in an unknown way")
        return head, before, after, tail

    def latest(
        self, manager: Any, refs: Sequence[Any], counters: Sequence[int], interval: int
    ) -> list[Metric] | None:
        """QueryPerf's answer for the latest sample of ``counters`` of ``refs`` as Metrics,
        or None when the SDK path must ask."""
        if not self.enabled or not refs:
            return None
        lister = self.lister
        try:
            body = self.body(manager, refs, counters, interval)
            return lister.exchange(
                "QueryPerf", body, lambda chunks: parse_perf(chunks, self._stamps)
            )
        except Fault as exc:
            lister._log_once(
                "stats-fault",
                logging.INFO,
                "fast stats on %s: the host answered a fault (%s); read with pyvmomi",
                lister.conn.where,
                exc,
            )
            return None
        except Unexpected as exc:
            self.enabled = False
            lister._log_once(
                "stats-shape",
                logging.WARNING,
                "fast stats on %s: unexpected reply (%s); pyvmomi reads stats from now on",
                lister.conn.where,
                exc,
            )
            return None
