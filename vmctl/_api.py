"""The public API: ``connect()``, ``Hypervisor`` and ``VM``. All policy lives here, once.

Every request goes through the same steps before a driver sees it: validate arguments, check
the capability, check the power state against the transition table, then call the driver,
map any stray vendor exception, and wait until the target state is reached.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Literal, ParamSpec, TypeVar, cast, overload

from . import _registry
from ._capabilities import REQUIRED_CAPABILITIES, RESOURCE_CAPABILITIES, Capability
from ._config import ConnectParams, PasswordSource, Timeouts, env_flag, resolve_password
from ._errors import (
    AlreadyExists,
    BackendError,
    Conflict,
    DriverError,
    InvalidState,
    NotFound,
    NotSupported,
    OperationTimeout,
    ValidationError,
    VmctlError,
)
from ._model import (
    DiskInfo,
    DiskSpec,
    Event,
    EventKind,
    GuestInfo,
    HostInfo,
    NicInfo,
    NicSpec,
    Resources,
    SnapshotInfo,
    SnapshotNode,
    VMConfig,
    VMInfo,
    VMSpec,
    VMStats,
)
from ._operations import Operation
from ._state import (
    DELETABLE,
    QUIESCENT,
    REQUEST_CAPABILITY,
    PowerState,
    Request,
    allowed_from,
    target_of,
)
from ._uri import URI
from ._validate import check_int, check_name
from .spi import INTERFACES, Driver, EventSource, Snapshots, StateWaiter

if TYPE_CHECKING:
    import concurrent.futures as cf

log = logging.getLogger("vmctl")
log.addHandler(logging.NullHandler())
P = ParamSpec("P")
T = TypeVar("T")

_POLL_START, _POLL_MAX = 0.02, 1.0


def connect(
    uri: str | URI | None = None,
    *,
    username: str | None = None,
    password: PasswordSource = None,
    cafile: str | None = None,
    thumbprint: str | None = None,
    insecure: bool | None = None,
    timeouts: Timeouts | float | None = None,
    env: Mapping[str, str] | None = None,
    **options: str,
) -> Hypervisor:
    """Connect to a hypervisor and return a ``Hypervisor``; use it as a context manager.

    ``uri`` defaults to $VMCTL_URI. The password comes from ``password`` (a string or a
    callback), else $VMCTL_PASSWORD; never from the URI. Trust for TLS hosts: ``cafile``
    ($VMCTL_CAFILE), ``thumbprint`` ($VMCTL_THUMBPRINT, SHA-256), or ``insecure=True``
    ($VMCTL_INSECURE=1), which warns. Other keyword options go to the driver.

    >>> with vmctl.connect("sim://") as hv:
    ...     print(hv.host_info().name)
    """
    env = os.environ if env is None else env
    if uri is None:
        uri = env.get("VMCTL_URI")
        if not uri:
            raise ValidationError(
                "no URI given and VMCTL_URI is not set; e.g. connect('sim://')", field="uri"
            )
    parsed = uri if isinstance(uri, URI) else URI.parse(uri)
    if isinstance(timeouts, (int, float)) and not isinstance(timeouts, bool):
        timeouts = Timeouts(timeouts)
    elif timeouts is None:
        timeouts = Timeouts()
    elif not isinstance(timeouts, Timeouts):
        raise ValidationError(
            "timeouts must be a Timeouts or a number of seconds", field="timeouts"
        )
    if username is not None and (
        not isinstance(username, str)
        or not username
        or any(ord(c) < 0x20 or c in "@/" for c in username)
    ):
        raise ValidationError(
            "must be a non-empty string without control characters, '@' or '/'",
            field="username",
        )
    for key, value in options.items():
        if not isinstance(value, str):
            raise ValidationError(
                f"driver option {key!r} must be a string, got {type(value).__name__}", field=key
            )
    params = ConnectParams(
        uri=parsed,
        username=username if username is not None else (parsed.user or env.get("VMCTL_USER")),
        password=resolve_password(password, env),
        cafile=cafile if cafile is not None else env.get("VMCTL_CAFILE") or None,
        thumbprint=thumbprint if thumbprint is not None else env.get("VMCTL_THUMBPRINT") or None,
        insecure=insecure if insecure is not None else env_flag(env, "VMCTL_INSECURE"),
        timeouts=timeouts,
        options={**parsed.params, **options},
    )
    if params.insecure:
        message = (
            f"TLS certificate verification is OFF for {parsed}: anyone on the path can "
            "impersonate the host. Trust it with cafile= or thumbprint= instead."
        )
        warnings.warn(message, stacklevel=2)
        log.warning("%s", message)
    driver_cls = _registry.load(parsed.scheme)
    log.debug("connecting to %s with driver %s", parsed, driver_cls.__name__)
    driver = _guarded(f"connect to {parsed}", driver_cls.open, params)
    try:
        return Hypervisor(driver, params)
    except BaseException:
        driver.close()
        raise


def _guarded(what: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call a driver; any exception outside vmctl's tree becomes BackendError (cause kept)."""
    try:
        return fn(*args, **kwargs)
    except VmctlError:
        raise
    except Exception as exc:
        raise BackendError(f"{what}: {type(exc).__name__}: {exc}") from exc


class Hypervisor:
    """A connection to one host, vCenter or pool. Made by ``vmctl.connect()``."""

    def __init__(self, driver: Driver, params: ConnectParams) -> None:
        self._driver = driver
        self.uri = params.uri
        self.timeouts = params.timeouts
        caps = frozenset(Capability(c) for c in driver.capabilities())
        missing = REQUIRED_CAPABILITIES - caps
        if missing:
            raise DriverError(
                f"driver {driver.name!r} lacks required capabilities {sorted(missing)}"
            )
        for cap in caps:
            iface = INTERFACES.get(cap)
            if iface is not None and not isinstance(driver, iface):
                raise DriverError(
                    f"driver {driver.name!r} declares {cap.value!r} but does "
                    f"not implement {iface.__name__}"
                )
        self.capabilities: frozenset[Capability] = caps
        self._lock: threading.RLock | None = None if driver.thread_safe else threading.RLock()
        self._executor: cf.ThreadPoolExecutor | None = None
        self._closed = False

    # -- plumbing -------------------------------------------------------------------------

    @property
    def driver_name(self) -> str:
        return self._driver.name

    def _call(self, what: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._closed:
            raise VmctlError(f"{what}: the connection to {self.uri} is closed")
        if self._lock is None:
            return _guarded(what, fn, *args, **kwargs)
        with self._lock:
            return _guarded(what, fn, *args, **kwargs)

    def supports(self, capability: Capability | str) -> bool:
        """Whether this connection has ``capability``."""
        return Capability(capability) in self.capabilities

    def require(self, capability: Capability, what: str) -> None:
        """Raise NotSupported naming ``capability`` unless this connection has it."""
        if capability not in self.capabilities:
            raise NotSupported(
                f"{what} needs the capability {capability.value!r}, which the "
                f"{self.driver_name} driver does not have on {self.uri}",
                capability=capability,
            )

    def _submit(self, description: str, fn: Callable[[], T]) -> Operation[T]:
        if self._executor is None:
            import concurrent.futures as cf

            self._executor = cf.ThreadPoolExecutor(max_workers=8, thread_name_prefix="vmctl-op")
        return Operation(description, self._executor.submit(fn))

    def _timeout(self, timeout: float | None, default: float | None) -> float:
        value = default if timeout is None else timeout
        if value is None:
            return float("inf")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValidationError(
                f"must be a positive number of seconds, got {value!r}", field="timeout"
            )
        return float(value)

    def wait_for_state(
        self, uuid: str, states: frozenset[PowerState], timeout: float, what: str
    ) -> VMInfo:
        """Return the VM's info once its state is in ``states``; OperationTimeout otherwise."""
        driver = self._driver
        if isinstance(driver, StateWaiter):
            try:
                return self._call(what, driver.wait_for_state, uuid, states, timeout=timeout)
            except OperationTimeout as exc:
                raise OperationTimeout(f"{what}: {exc}") from exc
        deadline = time.monotonic() + timeout
        delay = _POLL_START
        while True:
            info = self._call(what, driver.get_vm, uuid)
            if info.state in states:
                return info
            left = deadline - time.monotonic()
            if left <= 0:
                want = "/".join(sorted(s.value for s in states))
                raise OperationTimeout(
                    f"{what}: VM {info.name!r} is still {info.state.value} "
                    f"after {timeout:g} s (waiting for {want})"
                )
            time.sleep(min(delay, left))
            delay = min(delay * 1.5, _POLL_MAX)

    # -- inventory ------------------------------------------------------------------------

    def host_info(self) -> HostInfo:
        """The host or cluster this connection manages."""
        return self._call("host info", self._driver.host_info)

    def list_vms(self) -> list[VMInfo]:
        """Every VM with its state, sorted by name, in one batched driver call."""
        return sorted(self._call("list VMs", self._driver.list_vms), key=lambda i: (i.name, i.uuid))

    def vms(self) -> list[VM]:
        """A handle for every VM."""
        return [VM(self, info) for info in self.list_vms()]

    def vm(self, name_or_uuid: str) -> VM:
        """The VM with this UUID or name. NotFound if none; Conflict if the name is taken
        by several VMs (use the UUID then)."""
        if not isinstance(name_or_uuid, str) or not name_or_uuid:
            raise ValidationError("give a VM name or UUID", field="vm")
        infos = self.list_vms()
        key = name_or_uuid.lower()
        by_uuid = [i for i in infos if i.uuid.lower() == key]
        if by_uuid:
            return VM(self, by_uuid[0])
        by_name = [i for i in infos if i.name == name_or_uuid]
        if len(by_name) > 1:
            raise Conflict(
                f"{len(by_name)} VMs are named {name_or_uuid!r} on {self.uri}: "
                f"{', '.join(i.uuid for i in by_name)}; use the UUID"
            )
        if not by_name:
            raise NotFound(f"no VM named {name_or_uuid!r} on {self.uri}")
        return VM(self, by_name[0])

    def create_vm(self, spec: VMSpec, *, start: bool = False) -> VM:
        """Create a VM from ``spec`` (STOPPED, or RUNNING with ``start=True``)."""
        if not isinstance(spec, VMSpec):
            raise ValidationError(f"expected a VMSpec, got {type(spec).__name__}", field="spec")
        self.require(Capability.CREATE, "create a VM")
        for name in spec.resources.set_fields():
            self.require(RESOURCE_CAPABILITIES[name], f"creating a VM with {name}")
        if start:
            self.require(Capability.START, "start after create")
        if any(i.name == spec.name for i in self.list_vms()):
            raise AlreadyExists(f"a VM named {spec.name!r} already exists on {self.uri}")
        log.info("create VM %r on %s", spec.name, self.uri)
        info = self._call(f"create VM {spec.name!r}", self._driver.create_vm, spec)
        vm = VM(self, info)
        if start:
            vm.start()
        return vm

    # -- observation ----------------------------------------------------------------------

    def watch(
        self,
        *,
        kinds: Sequence[EventKind] | None = None,
        vm: VM | str | None = None,
        timeout: float | None = None,
    ) -> EventStream:
        """Subscribe to events from now on; iterate the stream to get them.

        ``kinds`` and ``vm`` filter; iteration ends after ``timeout`` seconds in all (None:
        never). The subscription starts at this call, not at the first ``next()``.
        """
        self.require(Capability.EVENTS, "watching events")
        from .spi import Events

        assert isinstance(self._driver, Events)
        source = self._call("subscribe to events", self._driver.subscribe)
        vm_uuid = vm.uuid if isinstance(vm, VM) else vm
        return EventStream(source, frozenset(kinds) if kinds else None, vm_uuid, timeout)

    def stats(self, vms: Sequence[VM] | None = None) -> dict[str, VMStats]:
        """Counters for the given VMs (default all), keyed by UUID, in one batched call."""
        self.require(Capability.STATS, "stats")
        from .spi import Statistics

        assert isinstance(self._driver, Statistics)
        uuids = [v.uuid for v in vms] if vms is not None else [i.uuid for i in self.list_vms()]
        return self._call("stats", self._driver.get_stats, uuids)

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (and log out of any session). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        try:
            self._driver.close()
        except Exception:  # close must not raise; the driver should not either
            log.warning("closing %s failed", self.uri, exc_info=True)

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Hypervisor {self.uri} driver={self.driver_name}>"


class EventStream:
    """An iterator of events from a subscription, with filters and an overall timeout."""

    def __init__(
        self,
        source: EventSource,
        kinds: frozenset[EventKind] | None,
        vm_uuid: str | None,
        timeout: float | None,
    ) -> None:
        self._source = source
        self._kinds = kinds
        self._vm = vm_uuid.lower() if vm_uuid else None
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._closed = False

    def _wanted(self, event: Event) -> bool:
        return (self._kinds is None or event.kind in self._kinds) and (
            self._vm is None or event.vm_uuid.lower() == self._vm
        )

    def next(self, timeout: float | None = None) -> Event | None:
        """The next matching event within ``timeout`` seconds (and the stream's own
        timeout), or None."""
        limit = time.monotonic() + timeout if timeout is not None else None
        while not self._closed:
            ends = [t for t in (limit, self._deadline) if t is not None]
            left = min(ends) - time.monotonic() if ends else 1.0
            if left <= 0:
                return None
            event = _guarded("next event", self._source.next_event, min(left, 1.0))
            if event is not None and self._wanted(event):
                return event
        return None

    def drain(self) -> list[Event]:
        """Every matching event already delivered, without waiting."""
        out: list[Event] = []
        while True:
            event = _guarded("next event", self._source.next_event, 0.0)
            if event is None:
                return out
            if self._wanted(event):
                out.append(event)

    def __iter__(self) -> Iterator[Event]:
        while not self._closed:
            if self._deadline is not None and time.monotonic() >= self._deadline:
                return
            event = self.next(1.0)
            if event is not None:
                yield event

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._source.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VM:
    """A handle on one VM of a ``Hypervisor``. Cheap; holds the UUID and the last info."""

    def __init__(self, hv: Hypervisor, info: VMInfo) -> None:
        self._hv = hv
        self.uuid = info.uuid
        self._info = info

    @property
    def hypervisor(self) -> Hypervisor:
        return self._hv

    @property
    def name(self) -> str:
        return self._info.name

    @property
    def last_info(self) -> VMInfo:
        """The info as last seen, without asking the host."""
        return self._info

    def info(self) -> VMInfo:
        """The VM's current info, fresh from the host."""
        self._info = self._hv._call(f"get VM {self.name!r}", self._hv._driver.get_vm, self.uuid)
        return self._info

    @property
    def state(self) -> PowerState:
        """The current power state, fresh from the host."""
        return self.info().state

    def config(self) -> VMConfig:
        """vCPUs, memory, disks, NICs and resource controls."""
        return self._hv._call(
            f"get config of {self.name!r}", self._hv._driver.get_config, self.uuid
        )

    def _what(self, verb: str) -> str:
        return f"{verb} VM {self.name!r}"

    def _check(self, request: Request, info: VMInfo | None = None) -> VMInfo:
        cap = REQUEST_CAPABILITY.get(request)  # RESUME has none: the state says which it needs
        if cap is not None:
            self._hv.require(cap, self._what(request.value))
        info = info or self.info()
        allowed = allowed_from(request)
        if info.state not in allowed:
            raise InvalidState(
                f"cannot {request.value} VM {info.name!r}: it is {info.state.value}; "
                f"{request.value} is allowed when it is "
                f"{' or '.join(sorted(s.value for s in allowed))}",
                current=info.state,
                allowed=allowed,
            )
        if request is Request.RESUME:
            needed = Capability.PAUSE if info.state is PowerState.PAUSED else Capability.SUSPEND
            self._hv.require(needed, self._what("resume"))
        return info

    def _request(
        self, request: Request, call: Callable[[str], None], timeout: float | None
    ) -> Callable[[], VMInfo]:
        self._check(request)
        limit = self._hv._timeout(timeout, self._hv.timeouts.operation_s)
        what = self._what(request.value)

        def run() -> VMInfo:
            log.info("%s on %s", what, self._hv.uri)
            self._hv._call(what, call, self.uuid)
            self._info = self._hv.wait_for_state(
                self.uuid, frozenset({target_of(request)}), limit, what
            )
            return self._info

        return run

    # -- lifecycle ------------------------------------------------------------------------

    def _plan_start(self, *, timeout: float | None = None) -> Callable[[], VMInfo]:
        """Power on; returns the info once RUNNING."""
        return self._request(Request.START, self._hv._driver.start, timeout)

    def _plan_power_off(self, *, timeout: float | None = None) -> Callable[[], VMInfo]:
        """Forced power-off (pull the plug); returns once STOPPED."""
        return self._request(Request.POWER_OFF, self._hv._driver.power_off, timeout)

    def _plan_shutdown(
        self, *, timeout: float | None = None, force_after: float | None = None
    ) -> Callable[[], VMInfo]:
        """Ask the guest to shut down; returns once STOPPED.

        Waits up to ``timeout`` seconds (default: the connection's shutdown timeout). With
        ``force_after``, a guest still running after that many seconds is powered off, and
        the info's reason says POWERED_OFF. Without it, a guest that does not stop in time
        raises OperationTimeout and keeps running.
        """
        from .spi import GracefulPower

        self._check(Request.SHUTDOWN)
        limit = self._hv._timeout(timeout, self._hv.timeouts.shutdown_s)
        if force_after is not None:
            force_after = float(self._hv._timeout(force_after, None))
            if force_after > limit:
                raise ValidationError(
                    f"force_after ({force_after:g} s) is longer than the timeout ({limit:g} s)",
                    field="force_after",
                )
            self._hv.require(Capability.POWER_OFF, "shutdown with force_after")
        driver = self._hv._driver
        assert isinstance(driver, GracefulPower)
        what = self._what("shut down")

        def run() -> VMInfo:
            started = time.monotonic()
            log.info("%s on %s", what, self._hv.uri)
            try:
                self._hv._call(what, driver.shutdown, self.uuid)
            except InvalidState:
                if force_after is None:
                    raise
                log.warning("%s: the guest cannot be asked; powering off", what)
            else:
                grace = force_after if force_after is not None else limit
                try:
                    self._info = self._hv.wait_for_state(
                        self.uuid, frozenset({PowerState.STOPPED}), grace, what
                    )
                    return self._info
                except OperationTimeout:
                    if force_after is None:
                        raise
                log.warning(
                    "%s: the guest did not stop within %g s; powering off", what, force_after
                )
            info = self.info()
            if info.state is not PowerState.STOPPED:
                self._hv._call(self._what("power off"), driver.power_off, self.uuid)
            left = max(limit - (time.monotonic() - started), 5.0)
            self._info = self._hv.wait_for_state(
                self.uuid, frozenset({PowerState.STOPPED}), left, what
            )
            return self._info

        return run

    def _plan_reboot(self, *, timeout: float | None = None) -> Callable[[], VMInfo]:
        """Ask the guest to reboot; returns once the request is taken and it is RUNNING."""
        from .spi import GracefulPower

        driver = cast(GracefulPower, self._hv._driver)  # the capability check comes first
        call = lambda uuid: driver.reboot(uuid)  # noqa: E731 - bound only once checked
        return self._request(Request.REBOOT, call, timeout)

    def _plan_reset(self, *, timeout: float | None = None) -> Callable[[], VMInfo]:
        """Forced restart (press the reset button)."""
        from .spi import Resettable

        driver = cast(Resettable, self._hv._driver)  # the capability check comes first
        call = lambda uuid: driver.reset(uuid)  # noqa: E731 - bound only once checked
        return self._request(Request.RESET, call, timeout)

    def _plan_pause(self, *, timeout: float | None = None) -> Callable[[], VMInfo]:
        """Stop execution, keeping memory in RAM; returns once PAUSED."""
        from .spi import Pausable

        driver = cast(Pausable, self._hv._driver)  # the capability check comes first
        call = lambda uuid: driver.pause(uuid)  # noqa: E731 - bound only once checked
        return self._request(Request.PAUSE, call, timeout)

    def _plan_suspend(self, *, timeout: float | None = None) -> Callable[[], VMInfo]:
        """Save memory to disk and stop; returns once SUSPENDED."""
        from .spi import Suspendable

        driver = cast(Suspendable, self._hv._driver)  # the capability check comes first
        call = lambda uuid: driver.suspend(uuid)  # noqa: E731 - bound only once checked
        return self._request(Request.SUSPEND, call, timeout)

    def _plan_resume(self, *, timeout: float | None = None) -> Callable[[], VMInfo]:
        """Continue a PAUSED VM or restore a SUSPENDED one; returns once RUNNING."""
        from .spi import Pausable, Suspendable

        info = self._check(Request.RESUME)
        driver = self._hv._driver
        if info.state is PowerState.PAUSED:
            assert isinstance(driver, Pausable)
            call = driver.unpause
        else:
            assert isinstance(driver, Suspendable)
            call = driver.resume_suspended
        limit = self._hv._timeout(timeout, self._hv.timeouts.operation_s)
        what = self._what("resume")

        def run() -> VMInfo:
            self._hv._call(what, call, self.uuid)
            self._info = self._hv.wait_for_state(
                self.uuid, frozenset({PowerState.RUNNING}), limit, what
            )
            return self._info

        return run

    # -- the public requests: wait=True returns the VMInfo once the state is reached,
    #    wait=False returns an Operation at once (its checks have already run).

    def _dispatch(
        self, verb: str, run: Callable[[], VMInfo], wait: bool
    ) -> VMInfo | Operation[VMInfo]:
        if wait:
            return run()
        return self._hv._submit(f"{verb} {self.name}", run)

    @overload
    def start(self, *, timeout: float | None = None, wait: Literal[True] = True) -> VMInfo: ...
    @overload
    def start(self, *, timeout: float | None = None, wait: Literal[False]) -> Operation[VMInfo]: ...
    def start(
        self, *, timeout: float | None = None, wait: bool = True
    ) -> VMInfo | Operation[VMInfo]:
        """Power on; returns the info once RUNNING."""
        return self._dispatch("start", self._plan_start(timeout=timeout), wait)

    @overload
    def power_off(self, *, timeout: float | None = None, wait: Literal[True] = True) -> VMInfo: ...
    @overload
    def power_off(
        self, *, timeout: float | None = None, wait: Literal[False]
    ) -> Operation[VMInfo]: ...
    def power_off(
        self, *, timeout: float | None = None, wait: bool = True
    ) -> VMInfo | Operation[VMInfo]:
        """Forced power-off (pull the plug); returns once STOPPED."""
        return self._dispatch("power_off", self._plan_power_off(timeout=timeout), wait)

    @overload
    def shutdown(
        self,
        *,
        timeout: float | None = None,
        force_after: float | None = None,
        wait: Literal[True] = True,
    ) -> VMInfo: ...
    @overload
    def shutdown(
        self,
        *,
        timeout: float | None = None,
        force_after: float | None = None,
        wait: Literal[False],
    ) -> Operation[VMInfo]: ...
    def shutdown(
        self,
        *,
        timeout: float | None = None,
        force_after: float | None = None,
        wait: bool = True,
    ) -> VMInfo | Operation[VMInfo]:
        """Ask the guest to shut down; returns once STOPPED.

        Waits up to ``timeout`` seconds (default: the connection's shutdown timeout). With
        ``force_after``, a guest still running after that many seconds is powered off, and
        the info's reason says POWERED_OFF. Without it, a guest that does not stop in time
        raises OperationTimeout and keeps running.
        """
        return self._dispatch(
            "shutdown", self._plan_shutdown(timeout=timeout, force_after=force_after), wait
        )

    @overload
    def reboot(self, *, timeout: float | None = None, wait: Literal[True] = True) -> VMInfo: ...
    @overload
    def reboot(
        self, *, timeout: float | None = None, wait: Literal[False]
    ) -> Operation[VMInfo]: ...
    def reboot(
        self, *, timeout: float | None = None, wait: bool = True
    ) -> VMInfo | Operation[VMInfo]:
        """Ask the guest to reboot; returns once the request is taken and it is RUNNING."""
        return self._dispatch("reboot", self._plan_reboot(timeout=timeout), wait)

    @overload
    def reset(self, *, timeout: float | None = None, wait: Literal[True] = True) -> VMInfo: ...
    @overload
    def reset(self, *, timeout: float | None = None, wait: Literal[False]) -> Operation[VMInfo]: ...
    def reset(
        self, *, timeout: float | None = None, wait: bool = True
    ) -> VMInfo | Operation[VMInfo]:
        """Forced restart (press the reset button); returns once RUNNING."""
        return self._dispatch("reset", self._plan_reset(timeout=timeout), wait)

    @overload
    def pause(self, *, timeout: float | None = None, wait: Literal[True] = True) -> VMInfo: ...
    @overload
    def pause(self, *, timeout: float | None = None, wait: Literal[False]) -> Operation[VMInfo]: ...
    def pause(
        self, *, timeout: float | None = None, wait: bool = True
    ) -> VMInfo | Operation[VMInfo]:
        """Stop execution, keeping memory in RAM; returns once PAUSED."""
        return self._dispatch("pause", self._plan_pause(timeout=timeout), wait)

    @overload
    def suspend(self, *, timeout: float | None = None, wait: Literal[True] = True) -> VMInfo: ...
    @overload
    def suspend(
        self, *, timeout: float | None = None, wait: Literal[False]
    ) -> Operation[VMInfo]: ...
    def suspend(
        self, *, timeout: float | None = None, wait: bool = True
    ) -> VMInfo | Operation[VMInfo]:
        """Save memory to disk and stop; returns once SUSPENDED."""
        return self._dispatch("suspend", self._plan_suspend(timeout=timeout), wait)

    @overload
    def resume(self, *, timeout: float | None = None, wait: Literal[True] = True) -> VMInfo: ...
    @overload
    def resume(
        self, *, timeout: float | None = None, wait: Literal[False]
    ) -> Operation[VMInfo]: ...
    def resume(
        self, *, timeout: float | None = None, wait: bool = True
    ) -> VMInfo | Operation[VMInfo]:
        """Continue a PAUSED VM or restore a SUSPENDED one; returns once RUNNING."""
        return self._dispatch("resume", self._plan_resume(timeout=timeout), wait)

    def delete(self, *, force: bool = False, timeout: float | None = None) -> list[str]:
        """Delete the VM and the disks it owns; returns what was deleted.

        A RUNNING or PAUSED VM is refused with InvalidState unless ``force=True``, which
        powers it off first.
        """
        self._hv.require(Capability.DELETE, self._what("delete"))
        info = self.info()
        if info.state not in DELETABLE:
            if not force:
                raise InvalidState(
                    f"VM {info.name!r} is {info.state.value}; power it off first or pass "
                    "force=True",
                    current=info.state,
                    allowed=DELETABLE,
                )
            self.power_off(timeout=timeout)
        what = self._what("delete")
        log.info("%s on %s", what, self._hv.uri)
        deleted = self._hv._call(what, self._hv._driver.delete_vm, self.uuid)
        log.info("deleted: %s", "; ".join(deleted))
        return deleted

    # -- reconfiguration ------------------------------------------------------------------

    def _cold_or_hot(self, cold: Capability, hot: Capability, what: str) -> bool:
        """Check the state allows a change needing ``cold``/``hot``; True if live."""
        info = self.info()
        if info.state is PowerState.STOPPED:
            self._hv.require(cold, what)
            return False
        if info.state is PowerState.RUNNING:
            if hot not in self._hv.capabilities:
                hint = " (power it off first)" if cold in self._hv.capabilities else ""
                raise NotSupported(
                    f"{what} while running needs {hot.value!r}, which the "
                    f"{self._hv.driver_name} driver does not have{hint}",
                    capability=hot,
                )
            return True
        raise InvalidState(
            f"cannot {what}: VM {info.name!r} is {info.state.value}; it must "
            "be stopped (or running, where hot changes are supported)",
            current=info.state,
            allowed={PowerState.STOPPED, PowerState.RUNNING},
        )

    def reconfigure(self, *, vcpus: int | None = None, memory_mib: int | None = None) -> VMConfig:
        """Change vCPUs and/or memory: while stopped, or live where the driver can."""
        from ._model import MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB
        from .spi import Reconfigurable

        if vcpus is None and memory_mib is None:
            raise ValidationError("give vcpus and/or memory_mib", field="reconfigure")
        if vcpus is not None:
            check_int(vcpus, 1, MAX_VCPUS, "vCPUs", "vcpus")
        if memory_mib is not None:
            check_int(memory_mib, MIN_MEMORY_MIB, MAX_MEMORY_MIB, "MiB", "memory_mib")
        driver = self._hv._driver
        if vcpus is not None:
            live = self._cold_or_hot(Capability.SET_VCPUS, Capability.HOT_VCPUS, "change vCPUs")
            assert isinstance(driver, Reconfigurable)
            self._hv._call(
                self._what("set vCPUs of"), driver.set_vcpus, self.uuid, vcpus, live=live
            )
        if memory_mib is not None:
            live = self._cold_or_hot(Capability.SET_MEMORY, Capability.HOT_MEMORY, "change memory")
            limit = self.config().resources.memory_limit_mib
            if limit is not None and memory_mib > limit:
                raise ValidationError(
                    f"memory_mib ({memory_mib}) exceeds the VM's memory "
                    f"limit ({limit} MiB); raise the limit first",
                    field="memory_mib",
                )
            assert isinstance(driver, Reconfigurable)
            self._hv._call(
                self._what("set memory of"), driver.set_memory, self.uuid, memory_mib, live=live
            )
        return self.config()

    def set_resources(self, resources: Resources) -> VMConfig:
        """Change resource controls: only the fields set in ``resources`` change."""
        from .spi import ResourceControls

        if not isinstance(resources, Resources):
            raise ValidationError("expected a Resources value", field="resources")
        fields = resources.set_fields()
        if not fields:
            raise ValidationError("set at least one control", field="resources")
        for name in fields:
            self._hv.require(RESOURCE_CAPABILITIES[name], f"setting {name}")
        config = self.config()
        try:
            merged = config.resources.merged(resources)
        except ValidationError as exc:
            raise ValidationError(
                f"with the VM's current controls: {exc}", field="resources"
            ) from None
        if merged.memory_limit_mib is not None and merged.memory_limit_mib < config.memory_mib:
            raise ValidationError(
                f"memory_limit_mib ({merged.memory_limit_mib}) is below the "
                f"VM's memory ({config.memory_mib} MiB)",
                field="resources",
            )
        if (
            merged.memory_reservation_mib is not None
            and merged.memory_reservation_mib > config.memory_mib
        ):
            raise ValidationError(
                f"memory_reservation_mib ({merged.memory_reservation_mib}) "
                f"exceeds the VM's memory ({config.memory_mib} MiB)",
                field="resources",
            )
        driver = self._hv._driver
        assert isinstance(driver, ResourceControls)
        self._hv._call(self._what("set resources of"), driver.set_resources, self.uuid, resources)
        return self.config()

    def _device_live(self, add: Capability, hot: Capability, what: str) -> bool:
        self._hv.require(add, what)
        return self._cold_or_hot(add, hot, what)

    def add_disk(self, disk: DiskSpec) -> DiskInfo:
        """Attach a new disk (hot-plugged if the VM runs and the driver can)."""
        from .spi import Devices

        if not isinstance(disk, DiskSpec):
            raise ValidationError("expected a DiskSpec", field="disk")
        live = self._device_live(Capability.ADD_DISK, Capability.HOTPLUG_DISK, "add a disk")
        if disk.name and any(d.name == disk.name for d in self.config().disks):
            raise AlreadyExists(f"VM {self.name!r} already has a disk named {disk.name!r}")
        driver = self._hv._driver
        assert isinstance(driver, Devices)
        return self._hv._call(
            self._what("add disk to"), driver.add_disk, self.uuid, disk, live=live
        )

    def remove_disk(self, disk_id: str) -> None:
        """Detach and delete the disk with this id (see ``config().disks``)."""
        from .spi import Devices

        live = self._device_live(Capability.REMOVE_DISK, Capability.HOTPLUG_DISK, "remove a disk")
        if not any(d.id == disk_id for d in self.config().disks):
            raise NotFound(f"VM {self.name!r} has no disk {disk_id!r}")
        driver = self._hv._driver
        assert isinstance(driver, Devices)
        self._hv._call(
            self._what("remove disk from"), driver.remove_disk, self.uuid, disk_id, live=live
        )

    def add_nic(self, nic: NicSpec) -> NicInfo:
        """Attach a new NIC (hot-plugged if the VM runs and the driver can)."""
        from .spi import Devices

        if not isinstance(nic, NicSpec):
            raise ValidationError("expected a NicSpec", field="nic")
        live = self._device_live(Capability.ADD_NIC, Capability.HOTPLUG_NIC, "add a NIC")
        if nic.mac and any(n.mac == nic.mac for n in self.config().nics):
            raise AlreadyExists(f"VM {self.name!r} already has a NIC with MAC {nic.mac}")
        driver = self._hv._driver
        assert isinstance(driver, Devices)
        return self._hv._call(self._what("add NIC to"), driver.add_nic, self.uuid, nic, live=live)

    def remove_nic(self, nic_id: str) -> None:
        """Detach the NIC with this id (see ``config().nics``)."""
        from .spi import Devices

        live = self._device_live(Capability.REMOVE_NIC, Capability.HOTPLUG_NIC, "remove a NIC")
        if not any(n.id == nic_id for n in self.config().nics):
            raise NotFound(f"VM {self.name!r} has no NIC {nic_id!r}")
        driver = self._hv._driver
        assert isinstance(driver, Devices)
        self._hv._call(
            self._what("remove NIC from"), driver.remove_nic, self.uuid, nic_id, live=live
        )

    # -- snapshots, clones, migration -----------------------------------------------------

    def _snapshot_driver(self) -> Snapshots:

        self._hv.require(Capability.SNAPSHOT, self._what("snapshot"))
        assert isinstance(self._hv._driver, Snapshots)
        return self._hv._driver

    def snapshot(self, name: str, *, memory: bool = False, description: str = "") -> SnapshotInfo:
        """Take a snapshot named ``name`` (unique per VM); with ``memory`` the running
        guest's RAM is kept so a revert brings it back running."""
        check_name(name, "snapshot name")
        driver = self._snapshot_driver()
        info = self.info()
        if info.state in (PowerState.CRASHED, PowerState.UNKNOWN):
            raise InvalidState(
                f"cannot snapshot VM {info.name!r}: it is {info.state.value}", current=info.state
            )
        if memory:
            self._hv.require(Capability.SNAPSHOT_MEMORY, "a snapshot with memory")
            if info.state not in (PowerState.RUNNING, PowerState.PAUSED):
                raise InvalidState(
                    f"a snapshot with memory needs a running or paused VM; "
                    f"{info.name!r} is {info.state.value}",
                    current=info.state,
                    allowed={PowerState.RUNNING, PowerState.PAUSED},
                )
        if any(s.name == name for s in self.snapshots()):
            raise AlreadyExists(f"VM {self.name!r} already has a snapshot named {name!r}")
        return self._hv._call(
            self._what("snapshot"),
            driver.create_snapshot,
            self.uuid,
            name,
            memory=memory,
            description=description,
        )

    def snapshots(self) -> list[SnapshotInfo]:
        """All snapshots, oldest first."""
        driver = self._snapshot_driver()
        snaps = self._hv._call(self._what("list snapshots of"), driver.list_snapshots, self.uuid)
        return sorted(snaps, key=lambda s: (s.created, s.name))

    def snapshot_tree(self) -> list[SnapshotNode]:
        """The snapshots as a forest: the roots, each with its children."""
        snaps = self.snapshots()
        ids = {s.id for s in snaps}

        def node(s: SnapshotInfo) -> SnapshotNode:
            kids = tuple(node(c) for c in snaps if c.parent == s.id)
            return SnapshotNode(s, kids)

        return [node(s) for s in snaps if s.parent is None or s.parent not in ids]

    def _find_snapshot(self, name_or_id: str) -> SnapshotInfo:
        snaps = self.snapshots()
        hit = [s for s in snaps if s.id == name_or_id] or [s for s in snaps if s.name == name_or_id]
        if not hit:
            raise NotFound(f"VM {self.name!r} has no snapshot {name_or_id!r}")
        if len(hit) > 1:
            raise Conflict(
                f"VM {self.name!r} has {len(hit)} snapshots named {name_or_id!r}; use the id"
            )
        return hit[0]

    def revert(self, snapshot: str | SnapshotInfo, *, timeout: float | None = None) -> VMInfo:
        """Return to a snapshot (by name, id or info); returns the VM's info in the
        snapshot's state: RUNNING/PAUSED for one with memory, else STOPPED."""
        driver = self._snapshot_driver()
        snap = self._find_snapshot(snapshot.id if isinstance(snapshot, SnapshotInfo) else snapshot)
        info = self.info()
        if info.state is PowerState.UNKNOWN:
            raise InvalidState(
                f"cannot revert VM {info.name!r}: its state is unknown", current=info.state
            )
        limit = self._hv._timeout(timeout, self._hv.timeouts.operation_s)
        what = self._what(f"revert to {snap.name!r}")
        self._hv._call(what, driver.revert_snapshot, self.uuid, snap.id)
        target = snap.state if snap.with_memory else PowerState.STOPPED
        self._info = self._hv.wait_for_state(self.uuid, frozenset({target}), limit, what)
        return self._info

    def delete_snapshot(self, snapshot: str | SnapshotInfo) -> None:
        """Delete one snapshot; the VM and the other snapshots stay."""
        driver = self._snapshot_driver()
        snap = self._find_snapshot(snapshot.id if isinstance(snapshot, SnapshotInfo) else snapshot)
        self._hv._call(
            self._what(f"delete snapshot {snap.name!r} of"),
            driver.delete_snapshot,
            self.uuid,
            snap.id,
        )

    def clone(self, name: str, *, linked: bool = False) -> VM:
        """A full copy (or a linked clone) of this stopped VM under ``name``."""
        from .spi import Cloning

        check_name(name)
        self._hv.require(
            Capability.LINKED_CLONE if linked else Capability.CLONE, self._what("clone")
        )
        info = self.info()
        if info.state not in QUIESCENT:
            raise InvalidState(
                f"cannot clone VM {info.name!r}: it is {info.state.value}; clone a stopped VM",
                current=info.state,
                allowed=QUIESCENT,
            )
        if any(i.name == name for i in self._hv.list_vms()):
            raise AlreadyExists(f"a VM named {name!r} already exists on {self._hv.uri}")
        driver = self._hv._driver
        assert isinstance(driver, Cloning)
        clone = self._hv._call(
            self._what(f"clone as {name!r}"), driver.clone_vm, self.uuid, name, linked=linked
        )
        return VM(self._hv, clone)

    def migrate(
        self, target: Hypervisor, *, live: bool | None = None, timeout: float | None = None
    ) -> VM:
        """Move the VM to the host ``target`` (same driver); returns its handle there.

        A RUNNING VM moves live (capability MIGRATE_LIVE); a STOPPED one moves cold
        (MIGRATE_COLD). ``live=False`` on a running VM is refused: shut it down first.
        """
        from .spi import Migration

        info = self.info()
        running = info.state is PowerState.RUNNING
        if info.state not in (PowerState.RUNNING, PowerState.STOPPED):
            raise InvalidState(
                f"cannot migrate VM {info.name!r} while {info.state.value}",
                current=info.state,
                allowed={PowerState.RUNNING, PowerState.STOPPED},
            )
        if live is None:
            live = running
        cap = Capability.MIGRATE_LIVE if live else Capability.MIGRATE_COLD
        self._hv.require(cap, self._what("migrate"))
        if live != running:
            raise InvalidState(
                f"VM {info.name!r} is {info.state.value}: a "
                f"{'live' if live else 'cold'} migration needs it "
                f"{'running' if live else 'stopped'}",
                current=info.state,
            )
        if not isinstance(target, Hypervisor):
            raise ValidationError(
                "the target must be a Hypervisor from vmctl.connect()", field="target"
            )
        if type(target._driver) is not type(self._hv._driver):
            raise ValidationError(
                f"cannot migrate from a {self._hv.driver_name} host to a {target.driver_name} host",
                field="target",
            )
        if target is self._hv or target.uri == self._hv.uri:
            raise ValidationError(f"the VM is already on {target.uri}", field="target")
        target.require(cap, self._what("migrate"))
        if any(i.uuid == self.uuid or i.name == info.name for i in target.list_vms()):
            raise AlreadyExists(
                f"{target.uri} already has a VM named {info.name!r} or with UUID {self.uuid}"
            )
        limit = self._hv._timeout(timeout, self._hv.timeouts.operation_s)
        driver = self._hv._driver
        assert isinstance(driver, Migration)
        what = self._what(f"migrate to {target.uri}")
        log.info("%s", what)
        self._hv._call(what, driver.migrate_vm, self.uuid, target._driver, live=live, timeout=limit)
        moved = VM(target, target._call(what, target._driver.get_vm, self.uuid))
        moved._info = target.wait_for_state(self.uuid, frozenset({info.state}), limit, what)
        return moved

    # -- observation ----------------------------------------------------------------------

    def stats(self) -> VMStats:
        """This VM's counters."""
        return self._hv.stats([self])[self.uuid]

    def guest_info(self) -> GuestInfo:
        """IP addresses and agent state, as the guest reports them."""
        from .spi import GuestAgent

        self._hv.require(Capability.GUEST_INFO, self._what("guest info of"))
        assert isinstance(self._hv._driver, GuestAgent)
        return self._hv._call(self._what("guest info of"), self._hv._driver.guest_info, self.uuid)

    def __repr__(self) -> str:
        return f"<VM {self.name!r} {self.uuid} on {self._hv.uri}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VM) and other.uuid == self.uuid and other._hv is self._hv

    def __hash__(self) -> int:
        return hash(self.uuid)
