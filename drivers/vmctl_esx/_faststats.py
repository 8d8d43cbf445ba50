"""The stats fast path: ``PerformanceManager.QueryPerf`` sent on the pyvmomi session, its
reply read with lxml.

``get_stats`` asks QueryPerf for the latest real-time sample of a few counters of every VM
at once; for thousands of VMs pyvmomi's deserializer is again most of the time (a
``PerfEntityMetric`` object, its ``sampleInfo`` and ``PerfMetricIntSeries`` objects per VM).
Here the request is serialized by pyvmomi (the same bytes it would send) and sent through
the listing's sender (:meth:`FastLister.exchange`: the stub's connections, its cookie, the
thread's deadline, one round trip); the reply is read into what the driver uses of it, one
:data:`Metric` per entity: its moid, the time of its last sample (pyvmomi's own ISO 8601
parser, so the value is the one the SDK path gives), and the last value of each counter
series. :func:`sdk_metrics` makes the same from pyvmomi's objects: the driver turns either
into ``VMStats`` with the same code.

A SOAP fault falls back to the SDK path (which repeats the call and maps the fault); a reply
of another shape (``PerfEntityMetricCSV``, a series that is not ``PerfMetricIntSeries``, an
unknown element) turns the stats fast path off for the connection. Each is logged once per
connection. ``VMCTL_ESX_FASTPATH=0`` turns it off with the listing's.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
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
    from pyVmomi.Iso8601 import ParseISO8601

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
                stamp = ParseISO8601(last)  # type: ignore[no-untyped-call]
                if stamp is None:
                    raise Unexpected(f"not an xsd:dateTime: {last!r}")
                if len(cache) > 1000:
                    cache.clear()
                cache[last] = stamp
        out.append((moid, stamp, values))
    return out


def _number(text: str | None) -> int:
    try:
        return int(text or "")
    except ValueError as exc:
        raise Unexpected(f"not an integer: {text!r}") from exc


class FastStats:
    """QueryPerf through lxml for one connection, on the listing's sender."""

    def __init__(self, lister: FastLister) -> None:
        self.lister = lister
        self.enabled = lister.enabled  # off when the listing's is off from the start
        self._stamps: dict[str, dt.datetime] = {}

    def query(self, manager: Any, specs: Sequence[Any]) -> list[Metric] | None:
        """QueryPerf's answer for ``specs`` as Metrics, or None when the SDK path must ask."""
        if not self.enabled or not specs:
            return None
        lister = self.lister
        stub = lister.conn.stub
        info = lister.conn.vim.PerformanceManager.QueryPerf.info
        body = stub.SerializeRequest(manager, info, [list(specs)])
        try:
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
