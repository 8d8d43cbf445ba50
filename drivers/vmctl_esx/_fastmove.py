"""The host-move fast path: the few requests an evacuation makes per VM, sent on the
pyvmomi session with bodies made from templates and replies read with lxml.

A move costs ``locate_vm``, ``move_to_host`` (its checks and ``RelocateVM_Task``), the task
wait and ``locate_vm`` again. With moves as quick as the vCenter simulator's (~15 ms) the
client's CPU is the floor of an evacuation: pyvmomi serializes each request from typed
objects and builds a typed object for each element of each reply, about 1.1 ms of CPU per
round trip under the GIL. Here:

* :class:`Template`: a request body serialized by pyvmomi once per shape, with marker moids
  where the managed object ids go, checked against pyvmomi's serialization of the same shape
  with other markers; each request fills in the ids (byte for byte what pyvmomi would send);
* :meth:`FastMove.retrieve`: one ``RetrievePropertiesEx`` of a few objects' simple properties
  (plus the session probe ``Connection.retrieve`` reads), read with the listing's parser;
* :meth:`FastMove.relocate`: ``RelocateVM_Task``; its reply read with lxml. A SOAP fault is
  deserialized by pyvmomi from the same reply and mapped as the SDK path maps it (the request
  is never sent twice); a reply lxml does not know is read by pyvmomi too.

A read that gets a SOAP fault returns None: the SDK path repeats it and maps the fault (a VM
deleted meanwhile: ``ManagedObjectNotFound``). A reply of an unexpected shape turns the move
fast path off for the connection. Each is logged once per connection. Transport failures are
classified as the stub classifies them (``OutcomeUnknown`` for a relocate sent without an
answer). ``VMCTL_ESX_FASTPATH=0`` turns it off with the listing's.

:class:`MoveNotes` keeps, per thread, what a read already returned for the next step of the
same move (see ``EsxHosts.locate_vm``), so that no step reads what the one before it has
just read.
"""

from __future__ import annotations

import http.client
import io
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from vmctl import BackendError, ConnectionError

from ._conn import PAGE, _transport_error
from ._fastlist import FastLister, Fault, Page, Unexpected, parse_reply, response_of
from ._faults import is_fault, reraise

log = logging.getLogger("vmctl.esx")

#: A marker no host uses as a managed object id, to find where ids go in a request.
_MARK = "vmctl-move-mark-"
#: (objects, vSphere type, property paths): one FilterSpec of a read.
Spec = tuple[Sequence[Any], Any, Sequence[str]]
Row = tuple[Any, dict[str, Any]]
#: A note older than this is not used (its step reads afresh), seconds.
NOTE_S = 0.5
#: MoveNotes' keys for a change of any host, and for its forgetting of older changes.
_HOSTS, _EPOCH = "\0hosts", "\0epoch"
#: VMs whose last change MoveNotes keeps at most.
_CHANGES_KEPT = 100_000


class Template:
    """A request body with slots for managed object ids (see the module)."""

    def __init__(self, serialize: Callable[[Sequence[str]], bytes], slots: int) -> None:
        from pyVmomi.SoapAdapter import XmlEscape

        self._escape: Callable[[str], str] = XmlEscape
        text = bytes(serialize([f"{_MARK}{i}-" for i in range(slots)])).decode()
        found = sorted((text.find(f"{_MARK}{i}-"), i) for i in range(slots))
        if any(at < 0 or text.count(f"{_MARK}{i}-") != 1 for at, i in found):
            raise Unexpected("pyvmomi serializes a request in an unknown way")
        self._order = [i for _, i in found]
        self._pieces: list[str] = []
        start = 0
        for at, i in found:
            self._pieces.append(text[start:at])
            start = at + len(f"{_MARK}{i}-")
        self._pieces.append(text[start:])
        check = [f"vmctl-check-{i}" for i in range(slots)]
        if self.fill(check) != bytes(serialize(check)):
            raise Unexpected("pyvmomi serializes a request in an unknown way")

    def fill(self, moids: Sequence[str]) -> bytes:
        """The request with ``moids`` in its slots (in the order the template was made)."""
        escape = self._escape
        out = [self._pieces[0]]
        for slot, piece in zip(self._order, self._pieces[1:], strict=True):
            out.append(escape(moids[slot]))
            out.append(piece)
        return "".join(out).encode()


class _RelocateFault(Exception):
    """A SOAP fault answered to RelocateVM_Task, deserialized by pyvmomi."""

    def __init__(self, fault: BaseException) -> None:
        super().__init__(str(fault))
        self.fault = fault


class FastMove:
    """The move's requests through lxml for one connection, on the listing's sender."""

    def __init__(self, lister: FastLister) -> None:
        self.lister = lister
        self.enabled = lister.enabled  # off when the listing's is off from the start
        self._templates: dict[tuple[Any, ...], Template] = {}

    # -- reads ----------------------------------------------------------------------------

    def retrieve(self, specs: Sequence[Spec]) -> list[Row] | None:
        """``Connection.retrieve``'s rows for ``specs`` (one FilterSpec each, in one
        RetrievePropertiesEx with the session probe) as ``[(moref, {path: value})]``, or
        None when the SDK path must read them (off, a SOAP fault, a reply of another shape)."""
        specs = [s for s in specs if s[0]]
        if not self.enabled or not specs:
            return None
        lister = self.lister
        try:
            objects = [o for objs, _t, _p in specs for o in objs]
            if any(getattr(o, "_serverGuid", None) for o in objects):
                return None  # pyvmomi writes a serverGuid attribute the template has not
            key = ("read", *((len(o), t, tuple(p)) for o, t, p in specs))
            template = self._templates.get(key)
            if template is None:
                template = self._templates[key] = Template(
                    lambda moids: self._serialize_read(specs, moids), len(objects)
                )
            body = template.fill([o._moId for o in objects])
            page = lister.exchange("RetrievePropertiesEx", body, self._parse_read)
        except Fault as exc:
            lister._log_once(
                "move-fault",
                logging.INFO,
                "fast move reads on %s: the host answered a fault (%s); read with pyvmomi",
                lister.conn.where,
                exc,
            )
            return None
        except Unexpected as exc:
            self._off(exc)
            return None
        if page is None:
            return lister._expired()  # not even the session probe: an expired session
        if page.expired:
            return lister._expired()
        if page.token:  # a few objects are never paged (PAGE per page)
            self._off(Unexpected("a paged reply"))
            return None
        wanted = {t._wsdlName for _o, t, _p in specs}
        out: list[Row] = []
        session_ok = False
        for obj_type, moid, props in page.rows:
            if obj_type == "SessionManager":
                session_ok = props.pop("currentSession.key", None) is not None
                continue
            if obj_type not in wanted:
                self._off(Unexpected(f"an object of type {obj_type}"))
                return None
            out.append((lister._ref(obj_type, moid), props))
        if not session_ok:
            return lister._expired()
        return out

    def _parse_read(self, chunks: Iterator[bytes]) -> Page | None:
        return parse_reply(chunks, "RetrievePropertiesEx", self.lister._ref, self.lister._refs)

    def _serialize_read(self, specs: Sequence[Spec], moids: Sequence[str]) -> bytes:
        """pyvmomi's RetrievePropertiesEx for ``specs`` with their objects' ids replaced by
        ``moids`` (in order): what ``Connection.retrieve`` sends."""
        conn = self.lister.conn
        pcq = conn.vmodl.query.PropertyCollector
        stub = conn.stub
        filters = []
        it = iter(moids)
        for objs, vim_type, paths in specs:
            refs = [type(o)(next(it), stub) for o in objs]
            filters.append(conn.filter_spec(refs, vim_type, paths))
        probe = pcq.FilterSpec(
            objectSet=[pcq.ObjectSpec(obj=conn.content.sessionManager)],
            propSet=[
                pcq.PropertySpec(type=conn.vim.SessionManager, pathSet=["currentSession.key"])
            ],
        )
        info = pcq._GetMethodInfo("RetrievePropertiesEx")
        options = pcq.RetrieveOptions(maxObjects=PAGE)
        return bytes(stub.SerializeRequest(conn.pc, info, [[*filters, probe], options]))

    # -- the move -------------------------------------------------------------------------

    def relocate(self, vm: Any, host: Any, pool: Any, what: str) -> Any | None:
        """``vm.RelocateVM_Task(spec=RelocateSpec(host=host, pool=pool),
        priority="defaultPriority")``: the Task moref, or None when the SDK path must send it
        (nothing was sent). A fault is mapped as ``Connection.start_task`` maps it."""
        if not self.enabled or any(getattr(o, "_serverGuid", None) for o in (vm, host, pool)):
            return None
        lister = self.lister
        conn = lister.conn
        info = type(vm).RelocateVM_Task.info
        key = ("relocate", type(vm), type(host), type(pool))
        try:
            template = self._templates.get(key)
            if template is None:
                template = self._templates[key] = Template(
                    lambda moids: self._serialize_relocate(vm, host, pool, moids), 3
                )
        except Unexpected as exc:
            self._off(exc)
            return None
        body = template.fill([vm._moId, host._moId, pool._moId])
        stub = conn.stub
        method = "RelocateVM_Task"
        try:
            status, chunks = lister.send(method, body)
            data = b"".join(chunks)
            if status not in (200, 500):
                bad = http.client.HTTPException(f"HTTP status {status}")
                raise _transport_error(bad, method, conn.where, conn.deadline, stub.local)
            try:
                return self._task(data)
            except Fault:
                raise _RelocateFault(self._sdk_reply(data, info)) from None
            except Unexpected as exc:
                self._off(exc)
                result = self._sdk_reply(data, info)  # the same reply, read by pyvmomi
                if isinstance(result, BaseException):
                    raise _RelocateFault(result) from None
                if status != 200 or not isinstance(result, conn.vim.Task):
                    raise BackendError(
                        f"{what}: RelocateVM_Task answered HTTP {status} without a task "
                        "or a fault; the host may or may not move the VM"
                    ) from exc
                return result
        except _RelocateFault as refused:
            fault = refused.fault
            if is_fault(fault, "NotAuthenticated"):
                raise ConnectionError(
                    f"RelocateVM_Task on {conn.where}: the session has expired "
                    "(NotAuthenticated); the request was not done",
                    sent=False,
                    vendor_code="NotAuthenticated",
                ) from fault
            reraise(fault, what)

    def _serialize_relocate(self, vm: Any, host: Any, pool: Any, moids: Sequence[str]) -> bytes:
        conn = self.lister.conn
        stub = conn.stub
        spec = conn.vim.vm.RelocateSpec(
            host=type(host)(moids[1], stub), pool=type(pool)(moids[2], stub)
        )
        info = type(vm).RelocateVM_Task.info
        target = type(vm)(moids[0], stub)
        return bytes(stub.SerializeRequest(target, info, [spec, "defaultPriority"]))

    def _task(self, data: bytes) -> Any:
        """The Task moref of a RelocateVM_Task reply; Fault, or Unexpected for another shape."""
        response = response_of([data], "RelocateVM_Task")
        if len(response) != 1 or response[0].tag != "{urn:vim25}returnval":
            raise Unexpected("not one returnval")
        ret = response[0]
        if ret.get("type") != "Task" or not ret.text or len(ret):
            raise Unexpected(f"a returnval of type {ret.get('type')}")
        return self.lister._ref("Task", ret.text)

    def _sdk_reply(self, data: bytes, info: Any) -> Any:
        """The reply as pyvmomi reads it: its result, or the fault object (not raised)."""
        from pyVmomi.SoapAdapter import SoapResponseDeserializer

        stub = self.lister.conn.stub
        reader = SoapResponseDeserializer(stub)  # type: ignore[no-untyped-call]
        return reader.Deserialize(io.BytesIO(data), info.result)  # type: ignore[no-untyped-call]

    def _off(self, exc: Exception) -> None:
        self.enabled = False
        self.lister._log_once(
            "move-shape",
            logging.WARNING,
            "fast moves on %s: unexpected reply (%s); pyvmomi sends moves from now on",
            self.lister.conn.where,
            exc,
        )


class MoveNotes:
    """What one step of a move read, for the next step in the same thread (see the
    module): taken once, only while younger than NOTE_S, and only if nothing this driver
    did since (in any thread) changed that VM (``changed``) or any host (``hosts_changed``)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._stamp = itertools.count(1)
        self._changes: dict[str, int] = {}  # uuid (or _HOSTS) -> stamp of its last change

    def changed(self, uuid: str) -> None:
        """This driver was asked to do something to VM ``uuid``: notes on it are stale."""
        if len(self._changes) > _CHANGES_KEPT:
            self._changes.clear()  # all notes taken before are dropped with it (see _valid)
            self._changes[_EPOCH] = next(self._stamp)
        self._changes[uuid] = next(self._stamp)

    def hosts_changed(self) -> None:
        """A host's maintenance mode was changed: notes on hosts are stale."""
        self._changes[_HOSTS] = next(self._stamp)

    def _now(self, uuid: str) -> tuple[float, int, int, int]:
        get = self._changes.get
        return time.monotonic(), get(uuid, 0), get(_HOSTS, 0), get(_EPOCH, 0)

    def _valid(self, noted: tuple[float, int, int, int], uuid: str) -> bool:
        now = self._now(uuid)
        return now[0] - noted[0] <= NOTE_S and now[1:] == noted[1:]

    def located(self, uuid: str, ref: Any, props: dict[str, Any], hosts: list[Row]) -> None:
        """``locate_vm`` read the VM and the scope's hosts (for ``move_to_host``'s checks)."""
        by_moid = {str(h._moId): (h, p) for h, p in hosts}
        self._local.located = (uuid, self._now(uuid), ref, props, by_moid)

    def take_located(self, uuid: str, host_id: str) -> tuple[Any, dict[str, Any], Row] | None:
        noted = getattr(self._local, "located", None)
        self._local.located = None
        if noted is None or noted[0] != uuid or not self._valid(noted[1], uuid):
            return None
        host = noted[4].get(host_id)
        return None if host is None else (noted[2], noted[3], host)

    def ended(self, uuid: str, props: dict[str, Any]) -> None:
        """The VM's properties read with its move's end (for ``locate_vm`` after it)."""
        self._local.ended = (uuid, self._now(uuid), props)

    def take_ended(self, uuid: str) -> dict[str, Any] | None:
        noted = getattr(self._local, "ended", None)
        self._local.ended = None
        if noted is None or noted[0] != uuid or not self._valid(noted[1], uuid):
            return None
        props: dict[str, Any] = noted[2]
        return props
