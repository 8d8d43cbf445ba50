"""The libvirt connection, and libvirt's event loop, which delivers lifecycle and
device-removed events (no polling).

libvirt calls block and cannot be interrupted. ``Link.run`` makes each call on a worker
thread and stops waiting for it at the request's deadline (OperationTimeout; the call may
still be carried out by libvirtd later, and the message says so). The connection's keepalive
(``rpc_timeout`` / 4 seconds x 3) closes a connection to a libvirtd that stopped answering
after about one RPC timeout; a call on a lost connection raises ``ConnectionError`` saying
whether the request was sent. The link never reconnects or repeats by itself: the core calls
``KvmDriver.reconnect`` (one bounded attempt, ``Link.reopen``) and repeats what is safe.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import vmctl
from vmctl import ConnectParams, Event, PowerState
from vmctl.spi import Deadline

from ._errors import INTERNAL_ERROR, code_of, map_error, message_of
from ._state import EV_RESUMED, EV_UNDEFINED, event_of

log = logging.getLogger("vmctl.kvm")

libvirt: Any
try:
    libvirt = importlib.import_module("libvirt")
except ImportError:  # the driver module imports without libvirt-python; open() says so
    libvirt = None

#: Default bound of one libvirt RPC when libvirtd stops answering (URI option rpc_timeout):
#: the keepalive closes the connection after about this long, and a failed create_vm gets
#: this long (after its deadline) to remove what it made.
RPC_TIMEOUT_S = 20.0
KEEPALIVE_COUNT = 3

_loop_lock = threading.Lock()
_loop_thread: threading.Thread | None = None


def require_libvirt() -> Any:
    if libvirt is None:
        raise vmctl.DriverError(
            "the kvm driver needs libvirt-python: pip install 'vmctl[kvm]' (libvirt-python)"
        )
    return libvirt


def keepalive_for(rpc_timeout: float) -> tuple[int, int]:
    """libvirt keepalive (interval s, count) that declares a silent libvirtd dead after about
    ``rpc_timeout`` seconds (interval x (count + 1))."""
    interval = max(1, round(rpc_timeout / (KEEPALIVE_COUNT + 1)))
    return interval, KEEPALIVE_COUNT


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
    """Fans libvirt's callbacks out to subscriptions and waiters (the core's wait_changes,
    device removal)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []
        self.changed = threading.Condition()
        self.generation = 0  # bumped on every event and connection change
        #: the last state events (or a listing) said each domain is in, by UUID
        self.last: dict[str, PowerState] = {}
        #: (domain UUID, device alias) -> generation at which DEVICE_REMOVED came
        self.removed: dict[tuple[str, str], int] = {}

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

    def current(self) -> int:
        with self.changed:
            return self.generation

    def wait_change(self, seen: int, timeout: float) -> bool:
        """One wait until the generation moves past ``seen`` (an event came, or the connection
        changed), or ``timeout``. Whether it moved."""
        with self.changed:
            return self.changed.wait_for(lambda: self.generation != seen, timeout=waitable(timeout))

    def wait_removed(self, uuid: str, alias: str, timeout: float, gone: Callable[[], bool]) -> bool:
        """One wait for libvirt's DEVICE_REMOVED event of ``alias`` on domain ``uuid`` (or for
        ``gone()``, checked when the connection changed), up to ``timeout``."""
        key = (uuid, alias)
        with self.changed:
            return self.changed.wait_for(
                lambda: key in self.removed or gone(), timeout=waitable(timeout)
            )

    def device_removed(self, _conn: Any, dom: Any, dev: str, _opaque: Any) -> None:
        try:
            with self.changed:
                if len(self.removed) > 1024:
                    self.removed.clear()
                self.removed[(dom.UUIDString(), dev)] = self.generation
        finally:
            self.bump()

    def forget_removed(self, uuid: str, alias: str) -> None:
        with self.changed:
            self.removed.pop((uuid, alias), None)

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


def waitable(seconds: float) -> float | None:
    """A timeout for threading waits: None for a deadline that never passes (``inf``)."""
    return None if math.isinf(seconds) else seconds


class PendingCall:
    """A libvirt call the caller stopped waiting for (its deadline passed); it still runs."""

    def __init__(self, thread: threading.Thread, box: dict[str, Any]) -> None:
        self._thread = thread
        self._box = box

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the call to end; whether it has."""
        self._thread.join(waitable(timeout))
        return not self._thread.is_alive()

    @property
    def failed(self) -> bool:
        """It ended with an error (so it made nothing, for a create call)."""
        return not self._thread.is_alive() and "error" in self._box


def pending_of(exc: BaseException) -> PendingCall | None:
    """The call still running behind an OperationTimeout raised by ``Link.run``."""
    pending = getattr(exc, "kvm_pending", None)
    return pending if isinstance(pending, PendingCall) else None


def _on_worker(name: str, fn: Callable[[], Any], timeout: float) -> tuple[bool, Any, Any]:
    """Run ``fn()`` on a daemon thread and wait up to ``timeout``: (done, result, error);
    when not done, ``result`` is the PendingCall."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    t = threading.Thread(target=work, name=name, daemon=True)
    t.start()
    t.join(waitable(timeout))
    if t.is_alive():
        return False, PendingCall(t, box), None
    return True, box.get("result"), box.get("error")


class Link:
    """One libvirt connection (replaced only by ``reopen``) and its bounded calls."""

    def __init__(
        self,
        libvirt_uri: str,
        params: ConnectParams,
        hub: EventHub,
        *,
        rpc_timeout: float = RPC_TIMEOUT_S,
    ) -> None:
        self.uri = libvirt_uri
        self._params = params
        self._hub = hub
        self._lock = threading.Lock()
        self._conn: Any = None
        self._dead = True
        self._closed = False
        self._callback_ids: list[int] = []
        self.reconnects = 0
        self.rpc_timeout = rpc_timeout
        timeout = params.timeouts.connect_s
        self.connect_timeout = 60.0 if timeout is None else timeout

    # -- opening ----------------------------------------------------------------------

    def _auth(self) -> list[Any]:
        lv = libvirt
        username = self._params.username
        password = self._params.password  # a Secret: revealed only into libvirt's slot

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

    def _open_and_install(self) -> Any:
        """On a worker thread: virConnectOpenAuth, keepalive, close callback and event
        callbacks (all RPCs, so all under the caller's bound)."""
        conn = libvirt.openAuth(self.uri, self._auth(), 0)
        ids: list[int] = []
        try:
            with contextlib.suppress(libvirt.libvirtError):
                conn.setKeepAlive(*keepalive_for(self.rpc_timeout))
            with contextlib.suppress(libvirt.libvirtError):
                conn.registerCloseCallback(self._on_close, None)
            try:
                ids.append(
                    conn.domainEventRegisterAny(
                        None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._hub.lifecycle, None
                    )
                )
            except libvirt.libvirtError as exc:
                log.warning("%s: no lifecycle events: %s", self.uri, exc)
            with contextlib.suppress(libvirt.libvirtError):
                ids.append(
                    conn.domainEventRegisterAny(
                        None,
                        libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
                        self._hub.device_removed,
                        None,
                    )
                )
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        return conn, ids

    def _open_once(self, deadline: Deadline) -> tuple[Any, list[int]]:
        """One connection attempt, bounded by the connect timeout and ``deadline``."""
        timeout = deadline.bound(self.connect_timeout)
        done, result, error = _on_worker("vmctl-libvirt-open", self._open_and_install, timeout)
        if not done:
            raise vmctl.ConnectionError(
                f"connecting to {self.uri}: no answer within {timeout:.3g} s", sent=False
            )
        if error is not None:
            if isinstance(error, libvirt.libvirtError):
                err = map_error(error, f"connect to {self.uri}", connecting=True)
                if isinstance(err, vmctl.ConnectionError):
                    err.sent = False
                raise err from error
            raise error
        conn, ids = result
        return conn, ids

    def open(self, deadline: Deadline) -> None:
        """The first connection: fail fast, with the libvirt error mapped."""
        conn, ids = self._open_once(deadline)
        with self._lock:
            self._conn, self._callback_ids, self._dead = conn, ids, False
        self._hub.bump()

    def reopen(self, deadline: Deadline) -> None:
        """Replace the connection: one attempt, bounded by ``deadline`` (the core repeats).
        The old connection is dropped without waiting for it (its libvirtd may be stalled)."""
        if self._closed:
            raise vmctl.ConnectionError(f"the connection to {self.uri} is closed", sent=False)
        conn, ids = self._open_once(deadline)
        with self._lock:
            old, old_ids = self._conn, self._callback_ids
            self._conn, self._callback_ids, self._dead = conn, ids, False
            self.reconnects += 1
        log.info("%s: opened a new connection", self.uri)
        self._hub.bump()
        if old is not None:
            self._drop(old, old_ids)

    def _drop(self, conn: Any, ids: list[int]) -> None:
        def close() -> None:
            for cid in ids:
                with contextlib.suppress(Exception):
                    conn.domainEventDeregisterAny(cid)
            with contextlib.suppress(Exception):
                conn.unregisterCloseCallback()
            with contextlib.suppress(Exception):
                conn.close()

        threading.Thread(target=close, name="vmctl-libvirt-close", daemon=True).start()

    def _on_close(self, conn: Any, reason: int, _opaque: Any) -> None:
        log.info("%s: connection closed (reason %s)", self.uri, reason)
        if conn is self._conn or self._conn is None:
            self._dead = True
        self._hub.bump()

    # -- using ------------------------------------------------------------------------

    @property
    def dead(self) -> bool:
        return self._dead or self._conn is None

    def connection(self, what: str) -> Any:
        """The live connection, or ConnectionError(sent=False)."""
        conn = self._conn
        if self._closed:
            raise vmctl.ConnectionError(
                f"{what}: the connection to {self.uri} is closed", sent=False
            )
        if conn is None or self._dead or not _alive(conn):
            self._dead = True
            raise vmctl.ConnectionError(
                f"{what}: the connection to {self.uri} is lost (libvirtd went away or stopped "
                "answering); nothing was sent",
                sent=False,
            )
        return conn

    def run(
        self, what: str, fn: Callable[[Any], Any], deadline: Deadline, *, change: bool = False
    ) -> Any:
        """``fn(conn)`` on a worker thread, waited for until ``deadline``; libvirt errors mapped.

        ``change`` says ``fn`` asks libvirtd to change something (for the messages).
        OperationTimeout at the deadline (the call stays pending in libvirtd); ConnectionError
        when the connection is lost (``sent=False`` when libvirt refused to send on a closed
        socket, else None).
        """
        conn = self.connection(what)
        if deadline.expired():
            raise vmctl.OperationTimeout(f"{what}: no time left (timeout {deadline.seconds:g} s)")
        done, result, error = _on_worker(
            "vmctl-libvirt-call", lambda: fn(conn), deadline.remaining()
        )
        if not done:
            pending = "; the request was sent and libvirtd may still carry it out" if change else ""
            timeout = vmctl.OperationTimeout(
                f"{what}: libvirtd at {self.uri} did not answer within {deadline.seconds:g} s"
                f"{pending}"
            )
            timeout.kvm_pending = result  # type: ignore[attr-defined]
            raise timeout
        if error is None:
            return result
        if libvirt is not None and isinstance(error, libvirt.libvirtError):
            raise self.mapped(error, what, conn) from error
        raise error

    def mapped(self, exc: Any, what: str, conn: Any) -> vmctl.VmctlError:
        """The vmctl error for libvirtError ``exc`` raised by a call on ``conn``: a lost
        connection is a ConnectionError, anything else is mapped by its number."""
        if self._dead or not _alive(conn):
            if conn is self._conn:
                self._dead = True
            not_sent = code_of(exc) == INTERNAL_ERROR and "client socket is closed" in message_of(
                exc
            )
            return vmctl.ConnectionError(
                f"{what}: the connection to {self.uri} was lost ({message_of(exc)})"
                + ("; the request was not sent" if not_sent else ""),
                sent=False if not_sent else None,
                vendor_code=str(code_of(exc)) or None,
            )
        return map_error(exc, what)

    def close(self) -> None:
        """Close the connection; waits at most 2 s (a stalled libvirtd never answers the
        close RPC: the connection is then dropped in the background)."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
            ids, self._callback_ids = self._callback_ids, []
        if conn is None:
            return

        def close() -> None:
            for cid in ids:
                with contextlib.suppress(Exception):
                    conn.domainEventDeregisterAny(cid)
            with contextlib.suppress(Exception):
                conn.unregisterCloseCallback()
            with contextlib.suppress(Exception):
                conn.close()

        _on_worker("vmctl-libvirt-close", close, 2.0)


def _alive(conn: Any) -> bool:
    try:
        return bool(conn.isAlive())  # the client's own socket state: no RPC
    except Exception:
        return False
