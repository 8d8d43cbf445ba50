"""The event stream: XenAPI event.from on the VM class, translated into vmctl events.

The subscription starts with one event.from call with an empty token, which returns every
VM record and a token (xapi_event.ml: "from" with token "" lists the current objects): that
gives the prior state of each VM, so a later change is told apart exactly (power state,
placement, configuration). Then each next_event call long-polls event.from from the token.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING, Any

from vmctl import ConnectionError, Event, EventKind, VmctlError
from vmctl.spi import Deadline

from . import _errors
from ._errors import power_state
from ._records import is_vm

if TYPE_CHECKING:
    from ._driver import XenDriver

log = logging.getLogger("vmctl.xen")

#: How long one event.from call of the reader thread blocks (bounds how long a closed
#: subscription's thread lingers).
POLL_S = 5.0

#: Fields whose change is a reconfiguration (the rest change on every operation).
CONFIG_FIELDS = (
    "name_label",
    "name_description",
    "VCPUs_max",
    "VCPUs_at_startup",
    "VCPUs_params",
    "memory_static_max",
    "memory_static_min",
    "memory_dynamic_max",
    "memory_dynamic_min",
    "VBDs",
    "VIFs",
)


class _Seen:
    __slots__ = ("config", "in_scope", "is_vm", "name", "resident", "snapshot_of", "state", "uuid")

    def __init__(self, rec: dict[str, Any], in_scope: bool) -> None:
        self.uuid = str(rec.get("uuid", ""))
        self.name = str(rec.get("name_label", ""))
        self.is_vm = is_vm(rec)
        self.in_scope = in_scope
        self.state = str(rec.get("power_state", ""))
        self.resident = str(rec.get("resident_on", ""))
        self.snapshot_of = str(rec.get("snapshot_of", "")) if rec.get("is_a_snapshot") else ""
        self.config = tuple(repr(rec.get(f)) for f in CONFIG_FIELDS)


class XenEvents:
    """An EventSource over event.from."""

    def __init__(self, driver: XenDriver, deadline: Deadline) -> None:
        self._d = driver
        self._c = driver.connection
        self._queue: queue.Queue[Event | BaseException] = queue.Queue()
        self._seen: dict[str, _Seen] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._token = ""
        self._sync(deadline)
        self._thread = threading.Thread(target=self._pump, name="vmctl-xen-events", daemon=True)
        self._thread.start()

    def _sync(self, deadline: Deadline) -> None:
        resp = self._c.event_from(["VM"], "", 0.0, deadline)
        self._seen = {}
        for ev in resp.get("events", []):
            rec = ev.get("snapshot")
            if rec is not None:
                self._seen[str(ev["ref"])] = _Seen(rec, self._d.in_scope(rec))
        self._token = str(resp["token"])

    def _resync(self, deadline: Deadline) -> None:
        """Read every VM again (after EVENTS_LOST or a new session) and queue what changed
        meanwhile, as the events it would have been: each record compared with the last one
        seen, and a VM no longer there deleted."""
        resp = self._c.event_from(["VM"], "", 0.0, deadline)
        now = {str(ev["ref"]): ev for ev in resp.get("events", []) if ev.get("snapshot")}
        for ref in [r for r in self._seen if r not in now]:
            for item in self._translate({"ref": ref, "operation": "del"}):
                self._queue.put(item)
        for ev in now.values():
            for item in self._translate({**ev, "operation": "mod"}):
                self._queue.put(item)
        self._token = str(resp["token"])

    def _vm_uuid(self, ref: str) -> tuple[str, str, bool] | None:
        seen = self._seen.get(ref)
        if seen is None or not seen.is_vm:
            return None
        return seen.uuid, seen.name, seen.in_scope

    def _translate(self, ev: dict[str, Any]) -> list[Event]:
        ref = str(ev.get("ref"))
        op = ev.get("operation")
        prev = self._seen.get(ref)
        out: list[Event] = []
        if op == "del":
            self._seen.pop(ref, None)
            if prev is None:
                return out
            if prev.is_vm and prev.in_scope:
                out.append(Event(EventKind.DELETED, prev.uuid, prev.name))
            elif prev.snapshot_of:
                owner = self._vm_uuid(prev.snapshot_of)
                if owner and owner[2]:
                    out.append(
                        Event(EventKind.SNAPSHOT, owner[0], owner[1], detail=f"deleted {prev.name}")
                    )
            return out
        rec = ev.get("snapshot")
        if rec is None:
            return out
        now = _Seen(rec, self._d.in_scope(rec))
        self._seen[ref] = now
        if now.snapshot_of:
            if prev is None:
                owner = self._vm_uuid(now.snapshot_of)
                if owner and owner[2]:
                    out.append(
                        Event(EventKind.SNAPSHOT, owner[0], owner[1], detail=f"taken {now.name}")
                    )
            return out
        if not now.is_vm:
            return out
        state = power_state(now.state)
        if prev is None or not prev.is_vm:
            if now.in_scope:
                out.append(Event(EventKind.CREATED, now.uuid, now.name, state=state))
            return out
        if now.in_scope != prev.in_scope:
            detail = "arrived" if now.in_scope else "left"
            out.append(Event(EventKind.MIGRATED, now.uuid, now.name, state=state, detail=detail))
            return out
        if not now.in_scope:
            return out
        if now.state != prev.state:
            out.append(
                Event(
                    EventKind.STATE_CHANGED, now.uuid, now.name, state=state, reason=_reason(state)
                )
            )
        elif (
            now.resident != prev.resident
            and now.resident != "OpaqueRef:NULL"
            and prev.resident != "OpaqueRef:NULL"
        ):
            out.append(
                Event(
                    EventKind.MIGRATED,
                    now.uuid,
                    now.name,
                    state=state,
                    detail=f"to {self._d.host_name(now.resident)}",
                )
            )
        elif now.config != prev.config:
            out.append(Event(EventKind.RECONFIGURED, now.uuid, now.name, state=state))
        return out

    def _pump(self) -> None:
        """The reader thread: long-poll event.from and queue what it says, so that nothing
        is coalesced away while the consumer is busy (event.from reports each object's
        latest state: one created and deleted between two calls would never be seen)."""
        while not self._closed:
            session = self._c.ref
            try:
                resp = self._c.event_from(
                    ["VM"], self._token, POLL_S, Deadline.after(POLL_S + self._c.rpc_timeout)
                )
            except Exception as exc:
                if self._closed:
                    return
                lost = _errors.details(exc)[:1] == ["EVENTS_LOST"]
                err = exc if isinstance(exc, VmctlError) else _errors.from_exception("events", exc)
                if not (lost or isinstance(err, ConnectionError)):
                    self._queue.put(exc)
                    return
                # A subscription is a long-lived reader of its own, not a request the core
                # can repeat: it renews the session itself (the driver's reconnect, once
                # per failure) and reads every VM again, so that nothing is missed.
                log.info("XenAPI events: %s; reading every VM again", err)
                try:
                    deadline = Deadline.after(self._c.rpc_timeout)
                    if not lost:
                        self._c.relogin(deadline, stale=session)
                    self._resync(deadline)
                except Exception as exc2:
                    self._queue.put(exc2)
                    return
                continue
            self._token = str(resp["token"])
            for ev in resp.get("events", []):
                for item in self._translate(ev):
                    self._queue.put(item)

    def next_event(self, timeout: float) -> Event | None:
        try:
            item = (
                self._queue.get(timeout=max(0.0, timeout))
                if timeout > 0
                else self._queue.get_nowait()
            )
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            self._closed = True
            if isinstance(item, VmctlError):
                raise item
            raise _errors.from_exception("read events", item) from item
        return item

    def close(self) -> None:
        self._closed = True


def _reason(state: Any) -> Any:
    from ._driver import _reason as reason

    return reason(state)
