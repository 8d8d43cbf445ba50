"""The pyvmomi connection: stub, login, per-call socket timeouts, round-trip count, PC helpers.

Every SOAP call is bounded by the deadline of the request that makes it: the driver sets the
request's ``Deadline`` for the calling thread (``Connection.within``) and the stub gives the
HTTP connection it takes from pyvmomi's pool that thread's socket timeout
(``deadline.bound(RPC_TIMEOUT_S)``) before it sends, on new and on pooled connections alike.

The stub does not retry. It classifies what failed: ``ConnectionError(sent=False)`` when the
request never reached the host (no connection could be made, or the host rejected an
expired session with NotAuthenticated), ``OutcomeUnknown`` when a request that changes
something (a ``*_Task`` method, ShutdownGuest, RebootGuest) got no answer, and
``OperationTimeout`` / ``ConnectionError(sent=None)`` for reads. The core reconnects
(``Connection.login``) and repeats what is safe to repeat.

Everything that reads goes through the PropertyCollector (``RetrievePropertiesEx``, continued
with ``ContinueRetrievePropertiesEx`` while the server pages). Waiting goes through a private
PropertyCollector with one ``WaitForUpdatesEx`` long poll per call, never a loop.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import math
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from vmctl import (
    AuthenticationError,
    ConnectionError,
    ConnectParams,
    DriverError,
    OperationTimeout,
    OutcomeUnknown,
)
from vmctl.spi import Deadline

from ._faults import is_fault, map_fault, reraise
from ._tls import make_context

log = logging.getLogger("vmctl.esx")

#: Longest single WaitForUpdatesEx long poll, seconds (each is one HTTP request).
MAX_POLL_S = 10
#: Longest single SOAP call (other than a long poll, which gets its wait plus this), seconds;
#: always cut to what is left of the request's deadline.
RPC_TIMEOUT_S = 60.0
#: A long poll's socket timeout is its maxWaitSeconds plus this.
POLL_GRACE_S = 10.0
#: Page size asked of RetrievePropertiesEx.
PAGE = 1000
#: The session probe's property path (see ``Connection.retrieve``).
_SESSION_KEY = "currentSession.key"
#: Calls that change something on the host: no answer means the outcome is unknown.
_CHANGES = frozenset({"ShutdownGuest", "RebootGuest", "StandbyGuest"})


def sdk() -> tuple[Any, Any]:
    """``(vim, vmodl)`` from pyVmomi, or DriverError naming the extra to install."""
    try:
        from pyVmomi import vim, vmodl
    except ImportError as exc:  # pragma: no cover - exercised without pyvmomi
        raise DriverError("the esx driver needs pyvmomi: pip install 'vmctl[esx]'") from exc
    return vim, vmodl


def changes_something(method: str) -> bool:
    return method.endswith("_Task") or method in _CHANGES


def scrub(exc: BaseException) -> None:
    """Clear the locals of the finished frames of ``exc``'s traceback (and of its causes):
    after a failed Login they hold the request arguments and the SOAP body, password included.
    Frames still running (the caller's) cannot be cleared and are skipped."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        tb = e.__traceback__
        while tb is not None:
            with contextlib.suppress(RuntimeError):  # an executing frame
                tb.tb_frame.clear()
            tb = tb.tb_next
        todo += [e.__cause__, e.__context__]


class _Local(threading.local):
    deadline: Deadline | None = None
    timeout: float = RPC_TIMEOUT_S
    connected: bool = False


def _make_stub(params: ConnectParams, host: str, port: int) -> Any:
    from pyVmomi.SoapAdapter import SoapStubAdapter

    vim, _ = sdk()
    where = f"{host}:{port}"
    ctx = make_context(
        cafile=params.cafile, thumbprint=params.thumbprint, insecure=params.insecure, where=where
    )

    class Stub(SoapStubAdapter):  # type: ignore[misc]
        """Counts HTTP round trips; bounds each call by the calling thread's deadline;
        classifies transport failures (see the module docstring)."""

        def __init__(self) -> None:
            super().__init__(  # type: ignore[no-untyped-call]
                host=host,
                port=port,
                sslContext=ctx,
                thumbprint=None,
                connectionPoolTimeout=60,
                poolSize=8,
            )
            self.round_trips = 0
            self.local = _Local()
            self._count_lock = threading.Lock()
            self._https: Any = self.scheme
            # pyvmomi makes new connections with ``self.scheme(host=, port=, **schemeArgs)``:
            # give each the calling thread's socket timeout (it bounds connect + handshake).
            self.scheme: Any = self._new_connection

        def _new_connection(self, **kw: Any) -> Any:
            kw["timeout"] = self.local.timeout
            return self._https(**kw)

        def GetConnection(self) -> Any:
            conn = super().GetConnection()  # type: ignore[no-untyped-call]
            # A pooled connection keeps the timeout of the call that made it: set this one's.
            conn.timeout = self.local.timeout
            if conn.sock is not None:
                conn.sock.settimeout(self.local.timeout)
            self.local.connected = True
            return conn

        def InvokeMethod(self, mo: Any, info: Any, args: Any, outerStub: Any = None) -> Any:
            local = self.local
            method = str(info.wsdlName)
            deadline = local.deadline or Deadline.after(RPC_TIMEOUT_S)
            if deadline.expired():
                del args
                raise OperationTimeout(
                    f"{method} on {where}: not sent, no time left (timeout {deadline.seconds:g} s)"
                )
            rpc = RPC_TIMEOUT_S
            if method == "WaitForUpdatesEx":
                wait = getattr(args[-1], "maxWaitSeconds", None) if args else None
                rpc = float(wait or 0) + POLL_GRACE_S
            local.timeout = deadline.bound(rpc)
            local.connected = False
            with self._count_lock:
                self.round_trips += 1
            try:
                return super().InvokeMethod(mo, info, args, outerStub)  # type: ignore[no-untyped-call]
            except vim.fault.NotAuthenticated as exc:
                raise ConnectionError(
                    f"{method} on {where}: the session has expired (NotAuthenticated); "
                    "the request was not done",
                    sent=False,
                    vendor_code="NotAuthenticated",
                ) from exc
            except (OSError, http.client.HTTPException) as exc:
                raise _transport_error(exc, method, where, deadline, local) from exc
            finally:
                del args  # no request arguments (Login's password) stay in this frame

    return Stub()


def _transport_error(
    exc: BaseException, method: str, where: str, deadline: Deadline, local: _Local
) -> Exception:
    timed_out = isinstance(exc, (socket.timeout, TimeoutError))
    if not local.connected:
        if timed_out and deadline.expired():
            return OperationTimeout(
                f"{method} on {where}: could not connect before the deadline "
                f"({deadline.seconds:g} s); the request was not sent"
            )
        err = map_fault(exc, f"{method} on {where} (not sent)")
        return ConnectionError(str(err), sent=False, vendor_code=err.vendor_code)
    why = (
        f"no answer within {local.timeout:.3g} s"
        if timed_out
        else f"the connection failed ({type(exc).__name__}: {exc})"
    )
    if changes_something(method):
        return OutcomeUnknown(
            f"{method} on {where}: {why} after the request was sent; the host may or may "
            "not have done it",
            sent=None,
            vendor_code="timeout" if timed_out else type(exc).__name__,
        )
    if timed_out and deadline.expired():
        return OperationTimeout(
            f"{method} on {where}: {why}, and the request's timeout "
            f"({deadline.seconds:g} s) has passed"
        )
    return ConnectionError(
        f"{method} on {where}: {why}",
        sent=None,
        vendor_code="timeout" if timed_out else type(exc).__name__,
    )


class Connection:
    """One logged-in session to an ESX host or a vCenter."""

    def __init__(self, params: ConnectParams, host: str, port: int, deadline: Deadline) -> None:
        self.vim, self.vmodl = sdk()
        self.where = f"{host}:{port}"
        self._username = params.username or ""
        self._password = params.password  # a Secret; revealed only to Login
        self.stub = _make_stub(params, host, port)
        self.generation = 0  # bumped by every new session
        self._login_lock = threading.Lock()
        self._closed = False
        self._garbage: list[Any] = []  # private collectors to destroy when there is time
        self._garbage_lock = threading.Lock()
        with self.within(deadline):
            si = self.vim.ServiceInstance("ServiceInstance", self.stub)
            try:
                self.content = si.RetrieveContent()
            except Exception as exc:
                self.stub.DropConnections()
                reraise(exc, f"connect to {self.where}")
            self.pc = self.content.propertyCollector
            self.about = self.content.about
            self._login()

    # -- deadlines ------------------------------------------------------------------------

    @contextlib.contextmanager
    def within(self, deadline: Deadline) -> Iterator[None]:
        """Bound every SOAP call this thread makes inside the block by ``deadline``."""
        local = self.stub.local
        before = local.deadline
        local.deadline = deadline
        try:
            yield
        finally:
            local.deadline = before

    @property
    def deadline(self) -> Deadline:
        return self.stub.local.deadline or Deadline.after(RPC_TIMEOUT_S)

    # -- session --------------------------------------------------------------------------

    def _login(self) -> None:
        if not self._username or self._password is None:
            self.stub.DropConnections()
            raise AuthenticationError(
                f"connect to {self.where}: a user name (in the URI or "
                "username=) and a password (password= or "
                "$VMCTL_PASSWORD) are needed"
            )
        try:
            self.content.sessionManager.Login(
                userName=self._username, password=self._password.reveal()
            )
        except Exception as exc:
            scrub(exc)  # pyvmomi's frames hold the password (arguments, SOAP body)
            if is_fault(exc, "InvalidLogin"):
                self.stub.DropConnections()
                raise AuthenticationError(
                    f"log in to {self.where} as {self._username!r}: the user name or password "
                    "was refused",
                    vendor_code="InvalidLogin",
                ) from exc
            reraise(exc, f"log in to {self.where}")
        log.debug("logged in to %s as %r", self.where, self._username)

    def login(self, deadline: Deadline, generation: int) -> None:
        """A new session (the core's reconnect), unless another thread made one since
        ``generation``."""
        with self._login_lock, self.within(deadline):
            if self._closed:
                raise AuthenticationError(f"the connection to {self.where} is closed")
            if self.generation != generation:
                return
            self.stub.cookie = ""
            self.stub.DropConnections()
            self._login()
            self.generation += 1
            with self._garbage_lock:
                self._garbage.clear()  # they died with the old session

    def close(self, deadline: Deadline | None = None) -> None:
        """Log out (within ``deadline``, at most 10 s) and drop the connections; never
        raises. A Logout that cannot be sent in time leaves the session to expire."""
        with self._login_lock:
            if self._closed:
                return
            self._closed = True
        with self.within((deadline or Deadline.never()).sooner(10)):
            try:
                self.content.sessionManager.Logout()
                log.debug("logged out of %s", self.where)
            except Exception as exc:  # never raise from close
                log.debug("logout from %s failed: %s", self.where, exc)
            finally:
                self.stub.DropConnections()

    @property
    def round_trips(self) -> int:
        """HTTP requests made so far on this connection."""
        return int(self.stub.round_trips)

    @property
    def is_vcenter(self) -> bool:
        return str(self.about.apiType) == "VirtualCenter"

    # -- reading --------------------------------------------------------------------------

    def ref(self, vim_type: Any, moid: str) -> Any:
        return vim_type(moid, self.stub)

    def filter_spec(
        self,
        objects: Sequence[Any],
        vim_type: Any,
        paths: Sequence[str],
        *,
        through_view: bool = False,
    ) -> Any:
        pcq = self.vmodl.query.PropertyCollector
        select = []
        if through_view:
            select = [
                pcq.TraversalSpec(
                    name="view", path="view", skip=False, type=self.vim.view.ContainerView
                )
            ]
        return pcq.FilterSpec(
            objectSet=[pcq.ObjectSpec(obj=o, skip=through_view, selectSet=select) for o in objects],
            propSet=[pcq.PropertySpec(type=vim_type, all=False, pathSet=list(paths))],
        )

    def retrieve(
        self,
        objects: Sequence[Any],
        vim_type: Any,
        paths: Sequence[str],
        *,
        through_view: bool = False,
        also: Sequence[tuple[Sequence[Any], Any, Sequence[str]]] = (),
    ) -> list[tuple[Any, dict[str, Any]]]:
        """``[(moref, {path: value})]`` for ``objects`` (or the objects of a view), in one
        RetrievePropertiesEx plus one ContinueRetrievePropertiesEx per further page. Unset
        properties are absent from the dict. ``also``: more ``(objects, type, paths)`` read
        in the same request (their rows too, in no set order).

        The same request also reads ``SessionManager.currentSession.key``: a server may
        answer a read from an expired session with empty results (or NotAuthenticated per
        property) instead of a fault; that is a ``ConnectionError(sent=False)`` too. (The key
        alone: pyvmomi spends about 0.3 ms of CPU decoding a whole UserSession, a quarter of
        a one-VM read.)"""
        if not objects:
            return []
        rows, session_ok = self._retrieve(objects, vim_type, paths, through_view, also)
        if not session_ok:
            raise ConnectionError(
                f"read from {self.where}: the session has expired (the host answered "
                "without a current session)",
                sent=False,
                vendor_code="NotAuthenticated",
            )
        return rows

    def _retrieve(
        self,
        objects: Sequence[Any],
        vim_type: Any,
        paths: Sequence[str],
        through_view: bool,
        also: Sequence[tuple[Sequence[Any], Any, Sequence[str]]] = (),
    ) -> tuple[list[tuple[Any, dict[str, Any]]], bool]:
        pcq = self.vmodl.query.PropertyCollector
        manager = self.content.sessionManager
        probe = pcq.FilterSpec(
            objectSet=[pcq.ObjectSpec(obj=manager)],
            propSet=[pcq.PropertySpec(type=self.vim.SessionManager, pathSet=[_SESSION_KEY])],
        )
        spec = self.filter_spec(objects, vim_type, paths, through_view=through_view)
        more = [self.filter_spec(o, t, p) for o, t, p in also if o]
        options = pcq.RetrieveOptions(maxObjects=PAGE)
        out: list[tuple[Any, dict[str, Any]]] = []
        session_ok = False
        result = self.pc.RetrievePropertiesEx(specSet=[spec, *more, probe], options=options)
        while result is not None:  # pages of one result, not a retry
            for oc in result.objects or ():
                props = {p.name: p.val for p in oc.propSet or ()}
                if any(is_fault(m.fault, "NotAuthenticated") for m in oc.missingSet or ()):
                    return [], False
                if isinstance(oc.obj, self.vim.SessionManager):
                    session_ok = props.pop(_SESSION_KEY, None) is not None
                    if vim_type is not self.vim.SessionManager:
                        continue
                out.append((oc.obj, props))
            token = result.token
            result = self.pc.ContinueRetrievePropertiesEx(token=token) if token else None
        return out, session_ok

    def retrieve_one(self, obj: Any, vim_type: Any, paths: Sequence[str]) -> dict[str, Any]:
        rows = self.retrieve([obj], vim_type, paths)
        return rows[0][1] if rows else {}

    # -- waiting --------------------------------------------------------------------------

    def wait_update(
        self,
        objects: Sequence[Any],
        vim_type: Any,
        paths: Sequence[str],
        deadline: Deadline,
        done: Callable[[dict[str, dict[str, Any]]], bool],
    ) -> dict[str, dict[str, Any]] | None:
        """One long poll: the current ``paths`` of ``objects`` (moid -> properties) once
        ``done(state)`` holds for the state first read or after the first change, or None if
        nothing changed before ``deadline`` (or the longest poll, MAX_POLL_S). A private
        PropertyCollector per call, so that several waits (threads) run at once; it is
        destroyed afterwards, or later when no time is left for that now."""
        pcq = self.vmodl.query.PropertyCollector
        self._collect_garbage(deadline)
        collector = self.pc.CreatePropertyCollector()
        try:
            collector.CreateFilter(self.filter_spec(objects, vim_type, paths), partialUpdates=False)
            state: dict[str, dict[str, Any]] = {o._moId: {} for o in objects}
            first = collector.WaitForUpdatesEx(
                version="", options=pcq.WaitOptions(maxWaitSeconds=0)
            )
            if first is None:
                return None
            _apply(state, first)
            if done(state):
                return state
            wait = max(1, math.floor(min(MAX_POLL_S, deadline.remaining())))  # inf: never
            try:
                update = collector.WaitForUpdatesEx(
                    version=first.version, options=pcq.WaitOptions(maxWaitSeconds=wait)
                )
            except OperationTimeout:
                return None  # the deadline passed during the poll: nothing changed in time
            if update is None:
                return None
            _apply(state, update)
            return state
        finally:
            self._destroy(collector, deadline)

    def _destroy(self, collector: Any, deadline: Deadline) -> None:
        if deadline.remaining() > 0.05:
            try:
                collector.DestroyPropertyCollector()
                return
            except (OperationTimeout, OutcomeUnknown, ConnectionError):
                pass
            except Exception as exc:
                log.debug("destroying a property collector failed: %s", exc)
                return
        with self._garbage_lock:
            self._garbage.append((self.generation, collector))

    def _collect_garbage(self, deadline: Deadline) -> None:
        with self._garbage_lock:
            garbage, self._garbage = self._garbage, []
        for generation, collector in garbage:
            if generation != self.generation or deadline.remaining() < 1:
                continue
            try:
                collector.DestroyPropertyCollector()
            except Exception as exc:
                log.debug("destroying a left-over property collector failed: %s", exc)

    def start_task(self, start: Any, what: str) -> Any:
        """Call ``start()`` (a ``*_Task`` method); the task moref, faults mapped."""
        try:
            return start()
        except Exception as exc:
            reraise(exc, what)


def _apply(state: dict[str, dict[str, Any]], update: Any) -> None:
    for fs in update.filterSet or ():
        for ou in fs.objectSet or ():
            props = state.setdefault(ou.obj._moId, {})
            if str(ou.kind) == "leave":
                props["__gone__"] = True
            for change in ou.changeSet or ():
                if str(change.op) in ("remove", "indirectRemove"):
                    props.pop(change.name, None)
                else:
                    props[change.name] = change.val


def apply_update(update: Any) -> Iterable[tuple[Any, str, dict[str, Any]]]:
    """``(moref, kind, {path: value})`` for each object in a WaitForUpdatesEx result."""
    for fs in update.filterSet or ():
        for ou in fs.objectSet or ():
            changes: dict[str, Any] = {}
            for change in ou.changeSet or ():
                if str(change.op) not in ("remove", "indirectRemove"):
                    changes[change.name] = change.val
                else:
                    changes[change.name] = None
            yield ou.obj, str(ou.kind), changes
