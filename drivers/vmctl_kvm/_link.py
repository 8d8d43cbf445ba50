"""The libvirt connection: opened with credentials, kept alive, re-opened when libvirtd
restarts; and libvirt's event loop, which delivers lifecycle events (no polling)."""

from __future__ import annotations

import contextlib
import importlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import vmctl
from vmctl import ConnectParams, Event, PowerState

from ._errors import CONNECTION, code_of, map_error
from ._state import EV_RESUMED, EV_UNDEFINED, event_of

log = logging.getLogger("vmctl.kvm")

libvirt: Any
try:
    libvirt = importlib.import_module("libvirt")
except ImportError:  # the driver module imports without libvirt-python; open() says so
    libvirt = None

KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3
RECONNECT_WINDOW_S = 30.0

_loop_lock = threading.Lock()
_loop_thread: threading.Thread | None = None


def require_libvirt() -> Any:
    if libvirt is None:
        raise vmctl.DriverError(
            "the kvm driver needs libvirt-python: pip install 'vmctl[kvm]' (libvirt-python)"
        )
    return libvirt


def ensure_event_loop() -> None:
    """Register libvirt's default event loop implementation once per process and run it in a
    daemon thread. Must happen before connections are opened (keepalive and events need it)."""
    global _loop_thread
    with _loop_lock:
        if _loop_thread is not None:
            return
        lv = require_libvirt()
        lv.virEventRegisterDefaultImpl()
        lv.registerErrorHandler(_quiet, None)  # errors are raised, not printed to stderr

        def run() -> None:
            while True:
                try:
                    lv.virEventRunDefaultImpl()
                except Exception:  # pragma: no cover - keep the loop alive
                    log.exception("libvirt event loop iteration failed")
                    time.sleep(0.1)

        _loop_thread = threading.Thread(target=run, name="vmctl-libvirt-events", daemon=True)
        _loop_thread.start()


def _quiet(_ctx: object, _err: object) -> None:
    return None


class Subscription:
    """One ``subscribe()``: a queue the event callback fills."""

    def __init__(self, hub: EventHub) -> None:
        self._hub = hub
        self._queue: queue.Queue[Event] = queue.Queue()

    def put(self, event: Event) -> None:
        self._queue.put(event)

    def next_event(self, timeout: float) -> Event | None:
        try:
            if timeout <= 0:
                return self._queue.get_nowait()
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._hub.remove(self)


class EventHub:
    """Fans libvirt's lifecycle callbacks out to subscriptions and state waiters."""

    def __init__(self, host: str) -> None:
        self.host = host
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []
        self.changed = threading.Condition()
        self.generation = 0  # bumped on every event and connection change
        #: the last state events (or a listing) said each domain is in, by UUID
        self.last: dict[str, PowerState] = {}

    def seed(self, states: dict[str, PowerState]) -> None:
        """What a listing says each domain is in (events then keep it current)."""
        for uuid, state in states.items():
            self.last.setdefault(uuid, state)

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        with self._lock:
            self._subs.append(sub)
        return sub

    def remove(self, sub: Subscription) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._subs.remove(sub)

    def bump(self) -> None:
        with self.changed:
            self.generation += 1
            self.changed.notify_all()

    def wait_change(self, seen: int, timeout: float) -> None:
        """Wait until the generation moves past ``seen`` (an event came), or ``timeout``."""
        with self.changed:
            self.changed.wait_for(lambda: self.generation != seen, timeout=timeout)

    def device_removed(self, _conn: Any, _dom: Any, _dev: str, _opaque: Any) -> None:
        self.bump()

    def lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        """libvirt's callback (on the event-loop thread): no RPC here, only local data."""
        try:
            mapped = event_of(event, detail)
            if mapped is None:
                return
            kind, state, reason, text = mapped
            uuid = dom.UUIDString()
            before = self.last.get(uuid)
            if event == EV_UNDEFINED:
                self.last.pop(uuid, None)
            elif state is not None:
                self.last[uuid] = state
            if event == EV_RESUMED and detail == 0 and before is not PowerState.PAUSED:
                # QEMU starts a domain's vCPUs paused, and libvirt reports "resumed" just
                # before "started": no paused VM was resumed, so it is not delivered.
                return
            ev = Event(
                kind=kind, vm_uuid=uuid, vm_name=dom.name(), state=state, reason=reason, detail=text
            )
            with self._lock:
                subs = list(self._subs)
            for sub in subs:
                sub.put(ev)
        finally:
            self.bump()


class Link:
    """A libvirt connection that re-opens itself after libvirtd went away and came back.

    ``get()`` returns a live virConnect. A connection is known dead when libvirt's close
    callback fired (socket EOF, keepalive timeout) or ``isAlive()`` says so; the next
    ``get()`` opens a new one (within RECONNECT_WINDOW_S), re-registering the event
    callbacks. Callers see ConnectionError only when no new connection can be made.
    """

    def __init__(self, libvirt_uri: str, params: ConnectParams, hub: EventHub) -> None:
        self.uri = libvirt_uri
        self._params = params
        self._hub = hub
        self._lock = threading.RLock()
        self._conn: Any = None
        self._dead = True
        self._closed = False
        self._callback_ids: list[int] = []
        self.reconnects = 0
        timeout = params.timeouts.connect_s
        self.connect_timeout = 60.0 if timeout is None else timeout

    # -- opening ----------------------------------------------------------------------

    def _auth(self) -> list[Any]:
        lv = libvirt
        username = self._params.username
        password = self._params.password

        def callback(creds: list[list[Any]], _data: object) -> int:
            for cred in creds:
                if cred[0] == lv.VIR_CRED_AUTHNAME:
                    cred[4] = username or cred[3] or ""
                elif cred[0] in (lv.VIR_CRED_PASSPHRASE, lv.VIR_CRED_NOECHOPROMPT):
                    if password is None:
                        return -1
                    cred[4] = password.reveal()
                else:
                    return -1
            return 0

        return [
            [lv.VIR_CRED_AUTHNAME, lv.VIR_CRED_PASSPHRASE, lv.VIR_CRED_NOECHOPROMPT],
            callback,
            None,
        ]

    def _open_once(self, timeout: float) -> Any:
        """virConnectOpenAuth in a helper thread, so that a host that never answers cannot
        hang the caller beyond ``timeout``."""
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["conn"] = libvirt.openAuth(self.uri, self._auth(), 0)
            except BaseException as exc:  # handed to the caller
                box["error"] = exc

        t = threading.Thread(target=work, name="vmctl-libvirt-open", daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            raise vmctl.ConnectionError(f"connecting to {self.uri}: no answer within {timeout:g} s")
        if "error" in box:
            exc = box["error"]
            if isinstance(exc, libvirt.libvirtError):
                raise map_error(exc, f"connect to {self.uri}", connecting=True) from exc
            raise exc
        return box["conn"]

    def open(self) -> None:
        """The first connection: fail fast, with the libvirt error mapped."""
        with self._lock:
            self._install(self._open_once(self.connect_timeout))

    def _install(self, conn: Any) -> None:
        self._conn = conn
        self._dead = False
        self._callback_ids = []
        with contextlib.suppress(libvirt.libvirtError):
            conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
        with contextlib.suppress(libvirt.libvirtError):
            conn.registerCloseCallback(self._on_close, None)
        try:
            cid = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._hub.lifecycle, None
            )
            self._callback_ids.append(cid)
        except libvirt.libvirtError as exc:
            log.warning("%s: no lifecycle events: %s", self.uri, exc)
        with contextlib.suppress(libvirt.libvirtError):
            cid = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, self._hub.device_removed, None
            )
            self._callback_ids.append(cid)
        self._hub.bump()

    def _on_close(self, _conn: Any, reason: int, _opaque: Any) -> None:
        log.info("%s: connection closed (reason %s); it is re-opened on next use", self.uri, reason)
        self._dead = True
        self._hub.bump()

    def _alive(self, conn: Any) -> bool:
        if self._dead:
            return False
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    def _reopen(self) -> Any:
        if self._closed:
            raise vmctl.ConnectionError(f"the connection to {self.uri} is closed")
        old = self._conn
        self._conn = None
        if old is not None:
            with contextlib.suppress(Exception):
                old.unregisterCloseCallback()
            with contextlib.suppress(Exception):
                old.close()
        window = min(self.connect_timeout, RECONNECT_WINDOW_S)
        deadline = time.monotonic() + window
        delay = 0.1
        last: BaseException | None = None
        while True:
            left = deadline - time.monotonic()
            try:
                conn = self._open_once(max(left, 1.0))
            except vmctl.AuthenticationError:
                raise
            except vmctl.VmctlError as exc:
                last = exc
                if time.monotonic() + delay > deadline:
                    raise vmctl.ConnectionError(
                        f"the connection to {self.uri} is gone and could not be re-opened "
                        f"within {window:g} s: {exc}"
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self.reconnects += 1
            log.info("%s: re-opened the connection (after %s)", self.uri, last)
            self._install(conn)
            return conn

    # -- using ------------------------------------------------------------------------

    def get(self) -> Any:
        with self._lock:
            conn = self._conn
            if conn is not None and self._alive(conn):
                return conn
            return self._reopen()

    def lost(self, conn: Any, exc: Any) -> bool:
        """Whether ``exc`` (raised by a call on ``conn``) means the connection broke."""
        if code_of(exc) not in CONNECTION:
            return False
        if not self._alive(conn):
            self._dead = True
            return True
        return False

    def call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        """``fn(conn)`` with libvirt errors mapped; retried once on a fresh connection when
        the connection turned out to be broken (libvirtd restarted)."""
        for attempt in (1, 2):
            conn = self.get()
            try:
                return fn(conn)
            except libvirt.libvirtError as exc:
                if attempt == 1 and self.lost(conn, exc):
                    log.info("%s: %s: connection lost (%s); retrying once", self.uri, what, exc)
                    continue
                raise map_error(exc, what) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is None:
                return
            for cid in self._callback_ids:
                with contextlib.suppress(Exception):
                    conn.domainEventDeregisterAny(cid)
            with contextlib.suppress(Exception):
                conn.unregisterCloseCallback()
            with contextlib.suppress(Exception):
                conn.close()
