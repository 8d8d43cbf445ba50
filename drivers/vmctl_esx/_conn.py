"""The pyvmomi connection: stub, login, transparent re-login, round-trip count, PC helpers.

Everything that reads goes through the PropertyCollector (``RetrievePropertiesEx``, continued
with ``ContinueRetrievePropertiesEx`` while the server pages). Waiting goes through a private
PropertyCollector with ``WaitForUpdatesEx`` (long poll, never sleep-and-poll).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from vmctl import AuthenticationError, ConnectParams, DriverError, OperationTimeout

from ._faults import is_fault, map_fault, reraise
from ._tls import make_context

log = logging.getLogger("vmctl.esx")

#: Longest single WaitForUpdatesEx long poll, seconds (each is one HTTP request).
MAX_POLL_S = 10
#: Page size asked of RetrievePropertiesEx.
PAGE = 1000
_NO_RETRY = frozenset({"Login", "Logout", "LoginByToken", "SessionIsActive"})


def sdk() -> tuple[Any, Any]:
    """``(vim, vmodl)`` from pyVmomi, or DriverError naming the extra to install."""
    try:
        from pyVmomi import vim, vmodl
    except ImportError as exc:  # pragma: no cover - exercised without pyvmomi
        raise DriverError("the esx driver needs pyvmomi: pip install 'vmctl[esx]'") from exc
    return vim, vmodl


def _make_stub(params: ConnectParams, host: str, port: int, timeout: float) -> Any:
    from pyVmomi.SoapAdapter import SoapStubAdapter

    vim, _ = sdk()
    where = f"{host}:{port}"
    ctx = make_context(
        cafile=params.cafile, thumbprint=params.thumbprint, insecure=params.insecure, where=where
    )

    class Stub(SoapStubAdapter):  # type: ignore[misc]
        """Counts HTTP round trips; logs in again once on NotAuthenticated and retries."""

        def __init__(self) -> None:
            super().__init__(  # type: ignore[no-untyped-call]
                host=host,
                port=port,
                sslContext=ctx,
                thumbprint=None,
                httpConnectionTimeout=timeout,
                connectionPoolTimeout=60,
                poolSize=8,
            )
            self.round_trips = 0
            self.generation = 0
            self.relogin: Callable[[int], None] | None = None
            self._count_lock = threading.Lock()

        def InvokeMethod(
            self,
            mo: Any,
            info: Any,
            args: Any,
            outerStub: Any = None,
        ) -> Any:
            with self._count_lock:
                self.round_trips += 1
            generation = self.generation
            try:
                return super().InvokeMethod(mo, info, args, outerStub)  # type: ignore[no-untyped-call]
            except vim.fault.NotAuthenticated:
                if self.relogin is None or info.wsdlName in _NO_RETRY:
                    raise
                log.info("vSphere session expired during %s; logging in again", info.wsdlName)
                self.relogin(generation)
                with self._count_lock:
                    self.round_trips += 1
                return super().InvokeMethod(mo, info, args, outerStub)  # type: ignore[no-untyped-call]

    return Stub()


class Connection:
    """One logged-in session to an ESX host or a vCenter."""

    def __init__(self, params: ConnectParams, host: str, port: int) -> None:
        self.vim, self.vmodl = sdk()
        self.where = f"{host}:{port}"
        self._username = params.username or ""
        self._password = params.password  # a Secret; revealed only to Login
        connect_s = float(params.timeouts.connect_s or 300.0)
        # Opening the connection is bounded by the connect timeout...
        self.stub = _make_stub(params, host, port, connect_s)
        self._login_lock = threading.Lock()
        self._closed = False
        si = self.vim.ServiceInstance("ServiceInstance", self.stub)
        try:
            self.content = si.RetrieveContent()
        except Exception as exc:
            self.stub.DropConnections()
            reraise(exc, f"connect to {self.where}")
        self.pc = self.content.propertyCollector
        self.about = self.content.about
        self._login()
        self.stub.relogin = self._relogin
        # ...afterwards the socket timeout bounds every read, so it must outlast a long poll.
        self.stub.schemeArgs["timeout"] = max(connect_s, MAX_POLL_S + 20.0)
        self.stub.DropConnections()

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
            if is_fault(exc, "InvalidLogin"):
                self.stub.DropConnections()
                raise AuthenticationError(
                    f"log in to {self.where} as {self._username!r}: the user name or password "
                    "was refused",
                    vendor_code="InvalidLogin",
                ) from exc
            reraise(exc, f"log in to {self.where}")
        log.debug("logged in to %s as %r", self.where, self._username)

    def _relogin(self, generation: int) -> None:
        with self._login_lock:
            if self._closed:
                raise AuthenticationError(f"the connection to {self.where} is closed")
            if self.stub.generation != generation:
                return  # another thread already logged in again
            self.stub.cookie = ""
            self._login()
            self.stub.generation += 1

    def close(self) -> None:
        with self._login_lock:
            if self._closed:
                return
            self._closed = True
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

    def _filter_spec(
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
    ) -> list[tuple[Any, dict[str, Any]]]:
        """``[(moref, {path: value})]`` for ``objects`` (or the objects of a view), in one
        RetrievePropertiesEx plus one ContinueRetrievePropertiesEx per further page. Unset
        properties are absent from the dict.

        The same request also reads ``SessionManager.currentSession``: a server may answer a
        read from an expired session with empty results (or NotAuthenticated per property)
        instead of a fault; then the session is renewed and the read done again, once."""
        if not objects:
            return []
        for attempt in range(2):
            generation = self.stub.generation
            rows, session_ok = self._retrieve(objects, vim_type, paths, through_view)
            if session_ok or attempt or self.stub.relogin is None:
                if not session_ok:
                    raise AuthenticationError(
                        f"read from {self.where}: the session was "
                        "refused even after logging in again"
                    )
                return rows
            log.info("vSphere session expired (seen in a property read); logging in again")
            self.stub.relogin(generation)
        raise AssertionError("unreachable")

    def _retrieve(
        self, objects: Sequence[Any], vim_type: Any, paths: Sequence[str], through_view: bool
    ) -> tuple[list[tuple[Any, dict[str, Any]]], bool]:
        pcq = self.vmodl.query.PropertyCollector
        manager = self.content.sessionManager
        probe = pcq.FilterSpec(
            objectSet=[pcq.ObjectSpec(obj=manager)],
            propSet=[pcq.PropertySpec(type=self.vim.SessionManager, pathSet=["currentSession"])],
        )
        spec = self._filter_spec(objects, vim_type, paths, through_view=through_view)
        options = pcq.RetrieveOptions(maxObjects=PAGE)
        out: list[tuple[Any, dict[str, Any]]] = []
        session_ok = False
        result = self.pc.RetrievePropertiesEx(specSet=[spec, probe], options=options)
        while result is not None:
            for oc in result.objects or ():
                props = {p.name: p.val for p in oc.propSet or ()}
                if any(is_fault(m.fault, "NotAuthenticated") for m in oc.missingSet or ()):
                    return [], False
                if isinstance(oc.obj, self.vim.SessionManager):
                    session_ok = props.pop("currentSession", None) is not None
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

    def wait_for(
        self,
        objects: Sequence[Any],
        vim_type: Any,
        paths: Sequence[str],
        done: Callable[[dict[str, dict[str, Any]]], bool],
        timeout: float,
        what: str,
    ) -> dict[str, dict[str, Any]]:
        """Long-poll ``paths`` of ``objects`` until ``done(state)`` holds; ``state`` maps each
        object's moid to its current properties. One private PropertyCollector per wait, so
        that several waits (threads) run at once. OperationTimeout after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._wait_once(objects, vim_type, paths, done, deadline, what)
            except Exception as exc:
                # The session was renewed under us: the private collector died with the old
                # session; start again with a new one.
                if is_fault(exc, "ManagedObjectNotFound") and time.monotonic() < deadline:
                    log.debug("%s: collector lost (%s); waiting again", what, exc)
                    continue
                raise

    def _wait_once(
        self,
        objects: Sequence[Any],
        vim_type: Any,
        paths: Sequence[str],
        done: Callable[[dict[str, dict[str, Any]]], bool],
        deadline: float,
        what: str,
    ) -> dict[str, dict[str, Any]]:
        pcq = self.vmodl.query.PropertyCollector
        collector = self.pc.CreatePropertyCollector()
        try:
            collector.CreateFilter(
                self._filter_spec(objects, vim_type, paths), partialUpdates=False
            )
            state: dict[str, dict[str, Any]] = {o._moId: {} for o in objects}
            version = ""
            while True:
                left = deadline - time.monotonic()
                if version and done(state):
                    return state
                if left <= 0:
                    raise OperationTimeout(f"{what}: not done after the timeout")
                wait = 0 if not version else max(1, min(MAX_POLL_S, math.ceil(left)))
                update = collector.WaitForUpdatesEx(
                    version=version, options=pcq.WaitOptions(maxWaitSeconds=wait)
                )
                if update is None:
                    if not version:
                        version = "-"
                    continue
                version = update.version
                _apply(state, update)
        finally:
            try:
                collector.DestroyPropertyCollector()
            except Exception as exc:
                log.debug("destroying a property collector failed: %s", exc)

    def wait_tasks(self, tasks: Sequence[Any], timeout: float, what: str) -> list[Any]:
        """Wait for every task (one check, then a long poll on TaskInfo.state/error/result);
        return their results; raise the mapped fault of the first that failed."""
        if not tasks:
            return []
        paths = ("info.state", "info.error", "info.result")

        def finished(state: dict[str, dict[str, Any]]) -> bool:
            return all(str(p.get("info.state")) in ("success", "error") for p in state.values())

        rows = self.retrieve(tasks, self.vim.Task, paths)
        state = {obj._moId: props for obj, props in rows}
        if not finished(state):
            state = self.wait_for(tasks, self.vim.Task, paths, finished, timeout, what)
        results = []
        for task in tasks:
            props = state[task._moId]
            if str(props.get("info.state")) == "error":
                fault = props.get("info.error")
                if not isinstance(fault, BaseException):
                    raise map_fault(RuntimeError(f"task failed: {fault!r}"), what)
                raise map_fault(fault, what) from fault
            results.append(props.get("info.result"))
        return results

    def run_task(self, start: Callable[[], Any], timeout: float, what: str) -> Any:
        """Start a task (``start()`` returns it) and wait for its result, faults mapped."""
        try:
            task = start()
            return self.wait_tasks([task], timeout, what)[0]
        except OperationTimeout:
            raise
        except Exception as exc:
            reraise(exc, what)


def _apply(state: dict[str, dict[str, Any]], update: Any) -> None:
    for fs in update.filterSet or ():
        for ou in fs.objectSet or ():
            props = state.setdefault(ou.obj._moId, {})
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
