"""One XenAPI session, shared by threads: each thread gets its own XenAPI.Session proxy
and transport (XenAPI.Session, an xmlrpc ServerProxy, is not thread-safe), all carrying the
same session reference. Login with an originator, logout on close, one re-login on
SESSION_INVALID, Async tasks awaited with event.from (never by sleeping)."""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
import xmlrpc.client
from typing import Any

from vmctl import AuthenticationError, BackendError, OperationTimeout, Secret

from ._transport import Transport

log = logging.getLogger("vmctl.xen")

NULL = "OpaqueRef:NULL"
ORIGINATOR = "vmctl"
API_VERSION = "1.2"
#: The longest single event.from wait; a longer wait is several calls (each a long poll).
EVENT_SLICE_S = 30.0


def _failure(desc: list[str]) -> Exception:
    import XenAPI

    return XenAPI.Failure(desc)  # type: ignore[no-any-return]


def unwrap(resp: Any) -> Any:
    """The Value of a XenAPI reply, or raise XenAPI.Failure(ErrorDescription)."""
    if not isinstance(resp, dict) or "Status" not in resp:
        raise BackendError(f"malformed XenAPI reply: {type(resp).__name__}")
    if resp["Status"] == "Success":
        return resp.get("Value")
    raise _failure([str(x) for x in resp.get("ErrorDescription") or ["UNKNOWN"]])


def task_result(text: str) -> Any:
    """A task's result: the XML-RPC encoding of the value, as xapi stores it."""
    if not text:
        return None
    doc = f"<methodResponse><params><param>{text}</param></params></methodResponse>"
    return xmlrpc.client.loads(doc)[0][0]


class Connection:
    """A logged-in XenAPI session on ``url``."""

    def __init__(
        self,
        url: str,
        *,
        tls: ssl.SSLContext | None,
        pin: str | None,
        rpc_timeout: float,
        username: str,
        password: Secret | None,
    ) -> None:
        self.url = url
        self._tls = tls
        self._pin = pin
        self.rpc_timeout = rpc_timeout
        self.username = username
        self._password = password
        self._local = threading.local()
        self._lock = threading.Lock()
        self._proxies: list[Any] = []
        self.ref: str | None = None
        self.round_trips = 0
        self.closed = False

    def __repr__(self) -> str:
        return f"<xen Connection {self.url} user={self.username!r}>"

    # -- plumbing -------------------------------------------------------------------------

    def _proxy(self) -> Any:
        proxy = getattr(self._local, "proxy", None)
        if proxy is None:
            import XenAPI

            transport = Transport(tls=self._tls, pin=self._pin, timeout=self.rpc_timeout)
            proxy = XenAPI.Session(self.url, transport=transport)
            self._local.proxy = proxy
            self._local.transport = transport
            with self._lock:
                self._proxies.append(proxy)
        return proxy

    def raw(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """One XML-RPC round trip; the reply dict, not unwrapped."""
        proxy = self._proxy()
        transport: Transport = self._local.transport
        if timeout is not None:
            transport.set_timeout(timeout)
        try:
            with self._lock:
                self.round_trips += 1
            return getattr(proxy, method)(*args)
        finally:
            if timeout is not None:
                transport.set_timeout(self.rpc_timeout)

    # -- session --------------------------------------------------------------------------

    def login(self) -> None:
        if self._password is None:
            raise AuthenticationError(
                f"no password for {self.username!r} on {self.url}: pass "
                "password=... or set VMCTL_PASSWORD"
            )
        ref = unwrap(
            self.raw(
                "session.login_with_password",
                self.username,
                self._password.reveal(),
                API_VERSION,
                ORIGINATOR,
            )
        )
        self.ref = str(ref)
        log.debug("logged in to %s as %r", self.url, self.username)

    def _relogin(self, stale: str | None) -> None:
        with self._lock:
            if self.closed:
                raise AuthenticationError(f"the connection to {self.url} is closed")
            if self.ref != stale:
                return  # another thread has renewed it already
        log.info("XenAPI session on %s expired; logging in again", self.url)
        self.login()

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """``method(session, *args)``; re-logs in once on SESSION_INVALID."""
        if self.closed:
            raise BackendError(f"the connection to {self.url} is closed")
        for attempt in (1, 2):
            ref = self.ref
            resp = self.raw(method, ref, *args, timeout=timeout)
            failed = isinstance(resp, dict) and resp.get("Status") == "Failure"
            desc = resp.get("ErrorDescription") if failed else None
            if desc and desc[0] == "SESSION_INVALID":
                if attempt == 1:
                    self._relogin(ref)
                    continue
                raise AuthenticationError(
                    f"{method}: the XenAPI session is invalid even after logging in again",
                    vendor_code="SESSION_INVALID",
                )
            return unwrap(resp)
        raise AssertionError("unreachable")

    def retarget(self, url: str) -> None:
        """Talk to ``url`` from now on (a pool member named its master): new transports."""
        with self._lock:
            proxies, self._proxies = self._proxies, []
        for proxy in proxies:
            with contextlib.suppress(Exception):
                proxy("close")()
        self._local = threading.local()
        self.url = url
        self.ref = None

    def logout(self) -> None:
        """Log out and close every transport. Never raises."""
        if self.closed:
            return
        self.closed = True
        if self.ref is not None:
            try:
                unwrap(self.raw("session.logout", self.ref, timeout=min(self.rpc_timeout, 10)))
            except Exception as exc:  # best effort: the session expires on the host anyway
                log.debug("logout from %s failed: %s", self.url, exc)
            self.ref = None
        with self._lock:
            proxies, self._proxies = self._proxies, []
        for proxy in proxies:
            with contextlib.suppress(Exception):
                proxy("close")()

    # -- events and tasks ----------------------------------------------------------------

    def event_from(self, classes: list[str], token: str, timeout: float) -> dict[str, Any]:
        """event.from: the events since ``token`` (blocks up to ``timeout`` seconds)."""
        result = self.call(
            "event.from",
            classes,
            token,
            float(max(0.0, timeout)),
            timeout=timeout + self.rpc_timeout,
        )
        assert isinstance(result, dict)
        return result

    def current_token(self) -> str:
        """A token for "now", without fetching any object (no subscription matches)."""
        return str(self.event_from([], "", 0.0)["token"])

    def wait_task(self, task: str, what: str, timeout: float) -> Any:
        """Wait for an Async task with event.from, destroy it, and return its result (or
        raise XenAPI.Failure with its error_info). Cancels it after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        token = ""
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._cancel(task)
                    raise OperationTimeout(
                        f"{what}: the XenAPI task did not finish within {timeout:g} s (cancelled)"
                    )
                resp = self.event_from([f"task/{task}"], token, min(left, EVENT_SLICE_S))
                token = str(resp["token"])
                for ev in resp.get("events", []):
                    if ev.get("ref") != task:
                        continue
                    if ev.get("operation") == "del":
                        raise BackendError(f"{what}: the XenAPI task {task} vanished")
                    rec = ev.get("snapshot") or {}
                    status = rec.get("status")
                    if status in ("pending", "cancelling", None):
                        continue
                    if status == "success":
                        return task_result(str(rec.get("result", "")))
                    raise _failure(
                        [
                            str(x)
                            for x in rec.get("error_info") or ["TASK_" + str(status).upper(), task]
                        ]
                    )
        finally:
            self.destroy_task(task)

    def _cancel(self, task: str) -> None:
        try:
            self.call("task.cancel", task)
        except Exception as exc:
            log.debug("cancelling task %s failed: %s", task, exc)

    def destroy_task(self, task: str) -> None:
        try:
            self.call("task.destroy", task)
        except Exception as exc:
            log.debug("destroying task %s failed: %s", task, exc)

    def run(self, method: str, *args: Any, what: str, timeout: float) -> Any:
        """``Async.<method>(*args)``, awaited."""
        task = str(self.call(f"Async.{method}", *args))
        return self.wait_task(task, what, timeout)
