"""One XenAPI session, shared by threads: each thread gets its own XML-RPC proxy and
transport (XenAPI.Session, an xmlrpc ServerProxy, is not thread-safe), all carrying the same
session reference.

Every call is one round trip, bounded by the request's deadline: the socket timeout is
``deadline.bound(rpc_timeout)`` (plus the wait of an ``event.from`` long poll). Calls go
straight to the XML-RPC method (``proxy("VM.start")``), never through the SDK's
``session.xenapi`` path, which re-logs in and repeats a call up to three times on
SESSION_INVALID: here SESSION_INVALID surfaces (the driver maps it to a ConnectionError that
was not sent) and the core reconnects (``login`` again) and repeats what is safe.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import ssl
import threading
import xmlrpc.client
from typing import Any

from vmctl import AuthenticationError, BackendError, OperationTimeout, Secret
from vmctl.spi import Deadline

from ._jsonrpc import JsonRpc, NotOffered
from ._transport import NOT_SENT, Once, Transport

log = logging.getLogger("vmctl.xen")

NULL = "OpaqueRef:NULL"
ORIGINATOR = "vmctl"
API_VERSION = "1.2"
#: The longest single event.from wait (a longer wait is the core's next call).
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
    if not text.lstrip().startswith("<"):
        return text  # a bare ref (some xapi versions)
    doc = f"<methodResponse><params><param>{text}</param></params></methodResponse>"
    return xmlrpc.client.loads(doc)[0][0]


def _login_body(username: str, password: Secret) -> Once:
    # The only place the password is revealed: straight into the encoded request, which is
    # handed over in a box the transport empties (no frame of the driver keeps it).
    return Once(
        xmlrpc.client.dumps(
            (username, password.reveal(), API_VERSION, ORIGINATOR),
            "session.login_with_password",
            allow_none=True,
        ).encode("utf-8")
    )


def _scrub(exc: BaseException) -> None:
    """Clear the locals of the finished frames in ``exc``'s traceback (and its causes'):
    the standard library's frames below a failed login (xmlrpc.client's
    ``single_request(request_body)``, http.client's ``send(data)``...) hold the encoded
    request, password included, for as long as the traceback lives."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        todo += [e.__cause__, e.__context__]
        tb = e.__traceback__
        while tb is not None:
            # not a generator's frame (clear() would finalize the generator)
            if not tb.tb_frame.f_code.co_flags & (inspect.CO_GENERATOR | inspect.CO_COROUTINE):
                with contextlib.suppress(RuntimeError):  # a frame still running (ours)
                    tb.tb_frame.clear()
            tb = tb.tb_next


class Connection:
    """A XenAPI session on ``url``."""

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
        self._relogin_lock = threading.Lock()
        self._proxies: list[Any] = []
        self.ref: str | None = None
        self.round_trips = 0
        self.closed = False
        self.jsonrpc = JsonRpc(url)  # bulk reads over /jsonrpc where the host offers it

    def __repr__(self) -> str:
        return f"<xen Connection {self.url} user={self.username!r}>"

    # -- plumbing -------------------------------------------------------------------------

    def _proxy(self) -> tuple[Any, Transport]:
        proxy = getattr(self._local, "proxy", None)
        if proxy is None:
            import XenAPI

            transport = Transport(tls=self._tls, pin=self._pin, timeout=self.rpc_timeout)
            proxy = XenAPI.Session(self.url, transport=transport)
            self._local.proxy = proxy
            self._local.transport = transport
            with self._lock:
                self._proxies.append(proxy)
        return proxy, self._local.transport

    def _count(self) -> None:
        with self._lock:
            self.round_trips += 1

    def raw(self, method: str, *args: Any, timeout: float) -> Any:
        """One XML-RPC round trip with a socket timeout of ``timeout`` s; the reply dict."""
        proxy, transport = self._proxy()
        transport.set_timeout(timeout)
        self._count()
        if self.jsonrpc.wanted(method):
            try:
                host = proxy._ServerProxy__host
                return self.jsonrpc.call(transport, host, method, list(args))
            except NotOffered:
                self._count()  # probed once: this call goes over XML-RPC
        # xmlrpc.client.ServerProxy.__getattr__: the plain XML-RPC method, not the SDK's
        # retrying session.xenapi dispatcher.
        return xmlrpc.client.ServerProxy.__getattr__(proxy, method)(*args)

    def call(self, method: str, *args: Any, deadline: Deadline, wait: float = 0.0) -> Any:
        """``method(session, *args)``, one round trip within ``deadline`` (``wait``: how long
        the host itself may block, for event.from). Raises XenAPI.Failure, OSError..."""
        if self.closed:
            raise BackendError(f"the connection to {self.url} is closed")
        if deadline.expired():
            late = OperationTimeout(
                f"{method}: not sent, no time left (timeout {deadline.seconds:g} s)"
            )
            setattr(late, NOT_SENT, True)
            raise late
        return unwrap(
            self.raw(method, self.ref, *args, timeout=deadline.bound(wait + self.rpc_timeout))
        )

    # -- session --------------------------------------------------------------------------

    def login(self, deadline: Deadline) -> None:
        """session.login_with_password, the password revealed only into the request body."""
        if self._password is None:
            raise AuthenticationError(
                f"no password for {self.username!r} on {self.url}: pass "
                "password=... or set VMCTL_PASSWORD"
            )
        proxy, transport = self._proxy()
        transport.set_timeout(deadline.bound(self.rpc_timeout))
        self._count()
        host, handler = proxy._ServerProxy__host, proxy._ServerProxy__handler
        try:
            resp = transport.request(host, handler, _login_body(self.username, self._password))
        except BaseException as exc:
            _scrub(exc)
            raise
        self.ref = str(unwrap(resp[0] if isinstance(resp, tuple) else resp))
        log.debug("logged in to %s as %r", self.url, self.username)

    def retarget(self, url: str) -> None:
        """Talk to ``url`` from now on (a pool member named its master): new transports."""
        self._close_transports()
        self._local = threading.local()
        self.url = url
        self.ref = None
        self.jsonrpc = JsonRpc(url)

    def _close_transports(self) -> None:
        with self._lock:
            proxies, self._proxies = self._proxies, []
        for proxy in proxies:
            with contextlib.suppress(Exception):
                proxy("close")()

    def relogin(self, deadline: Deadline, *, stale: str | None = None) -> None:
        """A new session (after a lost connection or an expired session); the old one is
        logged out, best effort, so that it does not linger on the host. With ``stale``:
        only if the session is still that one (another thread may have renewed it)."""
        with self._relogin_lock:
            if stale is not None and self.ref != stale:
                return
            self._relogin(deadline)

    def _relogin(self, deadline: Deadline) -> None:
        old = self.ref
        self.login(deadline)
        if old is not None and old != self.ref and not deadline.expired():
            try:
                unwrap(self.raw("session.logout", old, timeout=deadline.bound(self.rpc_timeout)))
            except Exception as exc:  # expired already, as a rule
                log.debug("logout of the old session failed: %s", exc)

    def logout(self, deadline: Deadline | None = None) -> None:
        """Log out and close every transport. Never raises."""
        if self.closed:
            return
        self.closed = True
        if self.ref is not None:
            timeout = (deadline or Deadline.after(min(self.rpc_timeout, 10))).bound(
                self.rpc_timeout
            )
            try:
                unwrap(self.raw("session.logout", self.ref, timeout=timeout))
            except Exception as exc:  # best effort: the session expires on the host anyway
                log.debug("logout from %s failed: %s", self.url, exc)
            self.ref = None
        self._close_transports()

    # -- events ---------------------------------------------------------------------------

    def event_from(
        self, classes: list[str], token: str, wait: float, deadline: Deadline
    ) -> dict[str, Any]:
        """event.from: the events since ``token``; the host blocks up to ``wait`` seconds
        (cut so that its answer comes before ``deadline``)."""
        left = deadline.remaining()
        wait = max(0.0, min(wait, left - min(0.25, left / 10)))
        result = self.call("event.from", classes, token, float(wait), deadline=deadline, wait=wait)
        assert isinstance(result, dict)
        return result
