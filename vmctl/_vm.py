"""``VM``: a handle on one VM, and the requests it takes.

Every request is checked here (arguments, capability, power state) and then runs through
the connection's dispatcher under one deadline: the driver call, the vendor's task, the
wait for the target state. ``wait=False`` hands the same request to the dispatcher to run in
the background; the caller does no round trip to the host.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, TypeVar, overload

from ._capabilities import RESOURCE_CAPABILITIES, Capability
from ._connection import Connection
from ._deadline import Deadline, check_seconds
from ._dispatch import Issued
from ._errors import (
    AlreadyExists,
    Conflict,
    InvalidState,
    NotFound,
    NotSupported,
    OperationTimeout,
    OutcomeUnknown,
    ValidationError,
)
from ._model import (
    DiskInfo,
    DiskSpec,
    GuestInfo,
    NicInfo,
    NicSpec,
    Resources,
    SnapshotInfo,
    SnapshotNode,
    VMConfig,
    VMInfo,
    VMStats,
)
from ._operations import Operation
from ._state import (
    DELETABLE,
    QUIESCENT,
    REQUEST_CAPABILITY,
    PowerState,
    Request,
    StateReason,
    allowed_from,
    target_of,
)
from ._tasks import Task
from ._validate import check_name
from .spi import (
    ChangeWaiter,
    Cloning,
    Devices,
    GuestAgent,
    Migration,
    Pausable,
    Reconfigurable,
    ResourceControls,
    Snapshots,
    Suspendable,
)

if TYPE_CHECKING:
    from ._hypervisor import Hypervisor
    from .backup import BackupInfo, BackupProgress, Repository

log = logging.getLogger("vmctl")
T = TypeVar("T")
S = PowerState
R = StateReason


class VM:
    """A handle on one VM of a ``Hypervisor``. Cheap; holds the UUID and the last info."""

    def __init__(self, hv: Hypervisor, conn: Connection, info: VMInfo) -> None:
        self._hv = hv
        self._conn = conn
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

    def _what(self, verb: str) -> str:
        return f"{verb} VM {self.name!r}"

    def _read(self, deadline: Deadline | None = None) -> VMInfo:
        conn = self._conn
        self._info = conn.dispatcher.call(
            f"get VM {self.name!r}",
            conn.driver.get_vm,
            self.uuid,
            deadline=deadline or conn.read_deadline(),
        )
        return self._info

    def info(self) -> VMInfo:
        """The VM's current info, fresh from the host."""
        return self._read()

    @property
    def state(self) -> PowerState:
        """The current power state, fresh from the host."""
        return self.info().state

    def config(self) -> VMConfig:
        """vCPUs, memory, disks, NICs and resource controls."""
        conn = self._conn
        return conn.dispatcher.call(
            f"get config of {self.name!r}",
            conn.driver.get_config,
            self.uuid,
            deadline=conn.read_deadline(),
        )

    # -- state requests: one path for all of them -----------------------------------------

    def _check_state(self, request: Request, info: VMInfo) -> None:
        allowed = allowed_from(request)
        if info.state not in allowed:
            raise InvalidState(
                f"cannot {request.value} VM {info.name!r}: it is {info.state.value}; "
                f"{request.value} is allowed when it is "
                f"{' or '.join(sorted(s.value for s in allowed))}",
                current=info.state,
                allowed=allowed,
            )

    def _driver_call(self, request: Request, info: VMInfo) -> Callable[..., Task | None]:
        """The driver method for ``request`` from ``info``'s state (capability checked)."""
        driver = self._conn.driver
        if request is Request.RESUME:
            if info.state is S.PAUSED:
                self._conn.require(Capability.PAUSE, self._what("resume"))
                assert isinstance(driver, Pausable)
                return driver.unpause
            self._conn.require(Capability.SUSPEND, self._what("resume"))
            assert isinstance(driver, Suspendable)
            return driver.resume_suspended
        call: Callable[..., Task | None] = getattr(driver, request.value)  # the SPI's names
        return call

    def _issue(
        self, request: Request, info: VMInfo, deadline: Deadline, what: str
    ) -> tuple[VMInfo | None, Task | None]:
        """Send the request. Returns (info, None) when the VM turned out to be in the
        target state already (reached by another path), else (None, the vendor's task)."""
        dispatcher = self._conn.dispatcher
        target = target_of(request)
        call = self._driver_call(request, info)
        for attempt in (1, 2):
            try:
                return None, dispatcher.call(
                    what, call, self.uuid, deadline=deadline, idempotent=False
                )
            except OutcomeUnknown:
                # The connection was lost after sending, and is back: look where the VM is
                # (no time left to look: the caller gets the unknown outcome as it is).
                if deadline.expired():
                    raise
                fresh = self._read(deadline)
                if fresh.state is target and request not in (Request.REBOOT, Request.RESET):
                    return fresh, None
                if attempt == 2 or fresh.state not in allowed_from(request):
                    raise
                call = self._driver_call(request, fresh)
            except InvalidState:
                # The host refused because the VM changed meanwhile: success if it is where
                # the request would have taken it.
                fresh = self._read(deadline)
                if fresh.state is target and request not in (Request.REBOOT, Request.RESET):
                    return fresh, None
                raise
        raise AssertionError("unreachable")

    def _finish(
        self,
        request: Request,
        task: Task | None,
        deadline: Deadline,
        what: str,
        before: VMInfo | None = None,
    ) -> VMInfo:
        """Wait for the vendor's task, then for the target state. A driver that waits for
        changes is handed the info from before the request (no extra read)."""
        dispatcher = self._conn.dispatcher
        target = target_of(request)
        if task is not None:
            try:
                dispatcher.await_task(task, deadline, what)
            except InvalidState:
                fresh = self._read(deadline)
                if fresh.state is not target:
                    raise
                return fresh
        known = None
        # A reboot or reset ends in the state it started from: the info from before the
        # request would satisfy the wait at once and hand back stale values, so read anew.
        same_state = request in (Request.REBOOT, Request.RESET)
        if before is not None and not same_state and isinstance(self._conn.driver, ChangeWaiter):
            known = {self.uuid: before}
        states = dispatcher.await_states(
            {self.uuid: frozenset({target})}, deadline, what, known=known
        )
        self._info = states[self.uuid]
        return self._info

    def _run(
        self,
        request: Request,
        deadline: Deadline,
        known: VMInfo | None,
        issued: Issued | None = None,
    ) -> VMInfo:
        what = self._what(request.value)
        info = known if known is not None else self._read(deadline)
        if request is Request.START and (info.state, info.reason) == (S.PAUSED, R.BOOTED):
            # A start is under way (the host holds the vCPUs until it ends, e.g. after a start
            # that timed out): wait for it to end rather than refuse "it is paused".
            log.info("%s on %s: a start is under way, waiting for it", what, self._conn.uri)
            return self._finish(request, None, deadline, what)
        self._check_state(request, info)
        log.info("%s on %s", what, self._conn.uri)
        if issued is not None:  # sent and waited for by a bulk call for several VMs
            self._info = issued.result(self.uuid)
            return self._info
        reached, task = self._issue(request, info, deadline, what)
        if reached is not None:
            self._info = reached
            return reached
        try:
            return self._finish(request, task, deadline, what, info)
        except OperationTimeout as exc:
            self._resumable(exc, request, task, what)
            raise

    def _resumable(
        self, exc: OperationTimeout, request: Request, task: Task | None, what: str
    ) -> None:
        """Let the caller go on waiting for a request that timed out (``exc.operation``)."""
        conn = self._conn

        def resume() -> Operation[VMInfo]:
            deadline = Deadline.after(conn.timeouts.operation_s)
            pending = task if exc.running else None
            future = conn.dispatcher.run_in_background(
                lambda: self._finish(request, pending, deadline, what)
            )
            return Operation(f"{what} (still waiting)", future)

        exc.can_resume(resume)

    def _run_shutdown(
        self, deadline: Deadline, force_after: float | None, known: VMInfo | None
    ) -> VMInfo:
        what = self._what("shut down")
        info = known if known is not None else self._read(deadline)
        self._check_state(Request.SHUTDOWN, info)
        log.info("%s on %s", what, self._conn.uri)
        grace = deadline if force_after is None else deadline.sooner(force_after)
        try:
            reached, task = self._issue(Request.SHUTDOWN, info, grace, what)
            if reached is not None:
                self._info = reached
                return reached
            return self._finish(Request.SHUTDOWN, task, grace, what, info)
        except InvalidState as exc:
            if force_after is None:
                raise InvalidState(
                    f"{exc}; to stop it anyway give force_after= (power off after asking) "
                    "or use power_off()",
                    current=exc.current,
                    allowed=exc.allowed,
                    vendor_code=exc.vendor_code,
                ) from exc
            log.warning("%s: the guest cannot be asked (%s); powering off", what, exc)
        except OperationTimeout:
            if force_after is None or deadline.expired():
                raise
            log.warning("%s: the guest did not stop within %g s; powering off", what, force_after)
        info = self._read(deadline)
        if info.state is S.STOPPED:  # it stopped meanwhile: done, by the guest after all
            return info
        return self._run(Request.POWER_OFF, deadline, info)

    def _submit(
        self,
        verb: str,
        run: Callable[[VMInfo | None, Issued | None], VMInfo],
        deadline: Deadline,
        wait: bool,
        *,
        bulk: Request | None = None,
    ) -> VMInfo | Operation[VMInfo]:
        if wait:
            return run(None, None)
        what = f"{verb} {self.name}"
        future = self._conn.dispatcher.submit(self.uuid, run, deadline, what, bulk=bulk)
        return Operation(what, future)

    def _request(
        self, request: Request, timeout: object, wait: object
    ) -> VMInfo | Operation[VMInfo]:
        if not isinstance(wait, bool):
            raise ValidationError("must be True or False", field="wait")
        conn = self._conn
        cap = REQUEST_CAPABILITY.get(request)  # RESUME: checked against the state it is in
        if cap is not None:
            conn.require(cap, self._what(request.value))
        deadline = conn.deadline(timeout, conn.timeouts.operation_s)
        return self._submit(
            request.value,
            lambda known, issued: self._run(request, deadline, known, issued),
            deadline,
            wait,
            bulk=request if request in (Request.START, Request.POWER_OFF) else None,
        )

    # -- the public requests: wait=True returns the VMInfo once the state is reached,
    #    wait=False returns an Operation at once.

    @overload
    def start(self, *, timeout: float | None = None, wait: Literal[True] = True) -> VMInfo: ...
    @overload
    def start(self, *, timeout: float | None = None, wait: Literal[False]) -> Operation[VMInfo]: ...
    def start(
        self, *, timeout: float | None = None, wait: bool = True
    ) -> VMInfo | Operation[VMInfo]:
        """Power on; returns the info once RUNNING."""
        return self._request(Request.START, timeout, wait)

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
        return self._request(Request.POWER_OFF, timeout, wait)

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

        Waits up to ``timeout`` seconds in all (default: the connection's shutdown timeout).
        With ``force_after``, a guest still running after that many seconds, or one the host
        knows cannot be asked, is powered off within what is left of ``timeout``, and the
        info's reason says POWERED_OFF. Without it, a guest that does not stop in time raises
        OperationTimeout and keeps running, and one that cannot be asked raises InvalidState
        at once.
        """
        if not isinstance(wait, bool):
            raise ValidationError("must be True or False", field="wait")
        conn = self._conn
        conn.require(Capability.SHUTDOWN, self._what("shut down"))
        deadline = conn.deadline(timeout, conn.timeouts.shutdown_s)
        grace = check_seconds(force_after, "force_after")
        if grace is not None:
            if grace >= deadline.seconds:
                raise ValidationError(
                    f"force_after ({grace:g} s) must be shorter than the timeout "
                    f"({deadline.seconds:g} s), which also bounds the power-off",
                    field="force_after",
                )
            conn.require(Capability.POWER_OFF, "shutdown with force_after")
        return self._submit(
            "shutdown",
            lambda known, _: self._run_shutdown(deadline, grace, known),
            deadline,
            wait,
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
        return self._request(Request.REBOOT, timeout, wait)

    @overload
    def reset(self, *, timeout: float | None = None, wait: Literal[True] = True) -> VMInfo: ...
    @overload
    def reset(self, *, timeout: float | None = None, wait: Literal[False]) -> Operation[VMInfo]: ...
    def reset(
        self, *, timeout: float | None = None, wait: bool = True
    ) -> VMInfo | Operation[VMInfo]:
        """Forced restart (press the reset button); returns once RUNNING."""
        return self._request(Request.RESET, timeout, wait)

    @overload
    def pause(self, *, timeout: float | None = None, wait: Literal[True] = True) -> VMInfo: ...
    @overload
    def pause(self, *, timeout: float | None = None, wait: Literal[False]) -> Operation[VMInfo]: ...
    def pause(
        self, *, timeout: float | None = None, wait: bool = True
    ) -> VMInfo | Operation[VMInfo]:
        """Stop execution, keeping memory in RAM; returns once PAUSED."""
        return self._request(Request.PAUSE, timeout, wait)

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
        return self._request(Request.SUSPEND, timeout, wait)

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
        return self._request(Request.RESUME, timeout, wait)

    def delete(self, *, force: bool = False, timeout: float | None = None) -> list[str]:
        """Delete the VM and the disks it owns; returns what was deleted.

        A RUNNING or PAUSED VM is refused with InvalidState unless ``force=True``, which
        powers it off first.
        """
        conn = self._conn
        if not isinstance(force, bool):
            raise ValidationError("must be True or False", field="force")
        conn.require(Capability.DELETE, self._what("delete"))
        deadline = conn.deadline(timeout, conn.timeouts.operation_s)
        info = self._read(deadline)
        if info.state not in DELETABLE:
            if not force:
                raise InvalidState(
                    f"VM {info.name!r} is {info.state.value}; power it off first or pass "
                    "force=True",
                    current=info.state,
                    allowed=DELETABLE,
                )
            self._run(Request.POWER_OFF, deadline, info)
        what = self._what("delete")
        log.info("%s on %s", what, conn.uri)
        deleted = conn.dispatcher.call(
            what, conn.driver.delete_vm, self.uuid, deadline=deadline, idempotent=False
        )
        log.info("deleted: %s", "; ".join(deleted))
        return deleted

    # -- changes that are not power requests ----------------------------------------------

    def _change(self, what: str, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """A configuration change: the driver call, then its task if it returned one."""
        conn = self._conn
        deadline = Deadline.after(conn.timeouts.operation_s)
        result = conn.dispatcher.call(
            what, fn, *args, deadline=deadline, idempotent=False, **kwargs
        )
        if isinstance(result, Task):
            conn.dispatcher.await_task(result, deadline, what)
            return None  # type: ignore[return-value]  # a task stands for None
        return result

    def _cold_or_hot(self, cold: Capability, hot: Capability, what: str) -> bool:
        """Check the state allows a change needing ``cold``/``hot``; True if live."""
        info = self.info()
        conn = self._conn
        if info.state is PowerState.STOPPED:
            conn.require(cold, what)
            return False
        if info.state is PowerState.RUNNING:
            if hot not in conn.capabilities:
                hint = " (power it off first)" if cold in conn.capabilities else ""
                raise NotSupported(
                    f"{what} while running needs {hot.value!r}, which the "
                    f"{conn.driver_name} driver does not have{hint}",
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
        from ._validate import check_int

        if vcpus is None and memory_mib is None:
            raise ValidationError("give vcpus and/or memory_mib", field="reconfigure")
        if vcpus is not None:
            check_int(vcpus, 1, MAX_VCPUS, "vCPUs", "vcpus")
        if memory_mib is not None:
            check_int(memory_mib, MIN_MEMORY_MIB, MAX_MEMORY_MIB, "MiB", "memory_mib")
        driver = self._conn.driver
        if vcpus is not None:
            live = self._cold_or_hot(Capability.SET_VCPUS, Capability.HOT_VCPUS, "change vCPUs")
            assert isinstance(driver, Reconfigurable)
            self._change(self._what("set vCPUs of"), driver.set_vcpus, self.uuid, vcpus, live=live)
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
            self._change(
                self._what("set memory of"), driver.set_memory, self.uuid, memory_mib, live=live
            )
        return self.config()

    def set_resources(self, resources: Resources) -> VMConfig:
        """Change resource controls: only the fields set in ``resources`` change."""
        conn = self._conn
        if not isinstance(resources, Resources):
            raise ValidationError("expected a Resources value", field="resources")
        fields = resources.set_fields()
        if not fields:
            raise ValidationError("set at least one control", field="resources")
        for name in fields:
            conn.require(RESOURCE_CAPABILITIES[name], f"setting {name}")
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
        driver = conn.driver
        assert isinstance(driver, ResourceControls)
        self._change(self._what("set resources of"), driver.set_resources, self.uuid, resources)
        return self.config()

    def _devices(self, add: Capability, hot: Capability, what: str) -> tuple[Devices, bool]:
        self._conn.require(add, what)
        live = self._cold_or_hot(add, hot, what)
        driver = self._conn.driver
        assert isinstance(driver, Devices)
        return driver, live

    def add_disk(self, disk: DiskSpec) -> DiskInfo:
        """Attach a new disk (hot-plugged if the VM runs and the driver can)."""
        if not isinstance(disk, DiskSpec):
            raise ValidationError("expected a DiskSpec", field="disk")
        driver, live = self._devices(Capability.ADD_DISK, Capability.HOTPLUG_DISK, "add a disk")
        if disk.name and any(d.name == disk.name for d in self.config().disks):
            raise AlreadyExists(f"VM {self.name!r} already has a disk named {disk.name!r}")
        return self._change(self._what("add disk to"), driver.add_disk, self.uuid, disk, live=live)

    def remove_disk(self, disk_id: str) -> None:
        """Detach and delete the disk with this id (see ``config().disks``)."""
        driver, live = self._devices(
            Capability.REMOVE_DISK, Capability.HOTPLUG_DISK, "remove a disk"
        )
        if not any(d.id == disk_id for d in self.config().disks):
            raise NotFound(f"VM {self.name!r} has no disk {disk_id!r}")
        self._change(
            self._what("remove disk from"), driver.remove_disk, self.uuid, disk_id, live=live
        )

    def add_nic(self, nic: NicSpec) -> NicInfo:
        """Attach a new NIC (hot-plugged if the VM runs and the driver can)."""
        if not isinstance(nic, NicSpec):
            raise ValidationError("expected a NicSpec", field="nic")
        driver, live = self._devices(Capability.ADD_NIC, Capability.HOTPLUG_NIC, "add a NIC")
        if nic.mac and any(n.mac == nic.mac for n in self.config().nics):
            raise AlreadyExists(f"VM {self.name!r} already has a NIC with MAC {nic.mac}")
        return self._change(self._what("add NIC to"), driver.add_nic, self.uuid, nic, live=live)

    def remove_nic(self, nic_id: str) -> None:
        """Detach the NIC with this id (see ``config().nics``)."""
        driver, live = self._devices(Capability.REMOVE_NIC, Capability.HOTPLUG_NIC, "remove a NIC")
        if not any(n.id == nic_id for n in self.config().nics):
            raise NotFound(f"VM {self.name!r} has no NIC {nic_id!r}")
        self._change(self._what("remove NIC from"), driver.remove_nic, self.uuid, nic_id, live=live)

    # -- snapshots, clones, migration -----------------------------------------------------

    def _snapshot_driver(self) -> Snapshots:
        self._conn.require(Capability.SNAPSHOT, self._what("snapshot"))
        driver = self._conn.driver
        assert isinstance(driver, Snapshots)
        return driver

    def snapshot(self, name: str, *, memory: bool = False, description: str = "") -> SnapshotInfo:
        """Take a snapshot named ``name`` (unique per VM); with ``memory`` the running
        guest's RAM is kept so a revert brings it back running."""
        check_name(name, "snapshot name")
        if not isinstance(memory, bool):
            raise ValidationError("must be True or False", field="memory")
        if not isinstance(description, str):
            raise ValidationError("must be a string", field="description")
        driver = self._snapshot_driver()
        info = self.info()
        if info.state in (PowerState.CRASHED, PowerState.UNKNOWN):
            raise InvalidState(
                f"cannot snapshot VM {info.name!r}: it is {info.state.value}", current=info.state
            )
        if memory:
            self._conn.require(Capability.SNAPSHOT_MEMORY, "a snapshot with memory")
            if info.state not in (PowerState.RUNNING, PowerState.PAUSED):
                raise InvalidState(
                    f"a snapshot with memory needs a running or paused VM; "
                    f"{info.name!r} is {info.state.value}",
                    current=info.state,
                    allowed={PowerState.RUNNING, PowerState.PAUSED},
                )
        if any(s.name == name for s in self.snapshots()):
            raise AlreadyExists(f"VM {self.name!r} already has a snapshot named {name!r}")
        return self._change(
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
        conn = self._conn
        snaps = conn.dispatcher.call(
            self._what("list snapshots of"),
            driver.list_snapshots,
            self.uuid,
            deadline=conn.read_deadline(),
        )
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
        conn = self._conn
        deadline = conn.deadline(timeout, conn.timeouts.operation_s)
        driver = self._snapshot_driver()
        snap = self._find_snapshot(snapshot.id if isinstance(snapshot, SnapshotInfo) else snapshot)
        info = self._read(deadline)
        if info.state is PowerState.UNKNOWN:
            raise InvalidState(
                f"cannot revert VM {info.name!r}: its state is unknown", current=info.state
            )
        what = self._what(f"revert to {snap.name!r}")
        task = conn.dispatcher.call(
            what, driver.revert_snapshot, self.uuid, snap.id, deadline=deadline, idempotent=False
        )
        if task is not None:
            conn.dispatcher.await_task(task, deadline, what)
        target = snap.state if snap.with_memory else PowerState.STOPPED
        self._info = conn.dispatcher.await_states({self.uuid: frozenset({target})}, deadline, what)[
            self.uuid
        ]
        return self._info

    def delete_snapshot(self, snapshot: str | SnapshotInfo) -> None:
        """Delete one snapshot; the VM and the other snapshots stay."""
        driver = self._snapshot_driver()
        snap = self._find_snapshot(snapshot.id if isinstance(snapshot, SnapshotInfo) else snapshot)
        self._change(
            self._what(f"delete snapshot {snap.name!r} of"),
            driver.delete_snapshot,
            self.uuid,
            snap.id,
        )

    def clone(self, name: str, *, linked: bool = False) -> VM:
        """A full copy (or a linked clone) of this stopped VM under ``name``."""
        check_name(name)
        if not isinstance(linked, bool):
            raise ValidationError("must be True or False", field="linked")
        conn = self._conn
        conn.require(Capability.LINKED_CLONE if linked else Capability.CLONE, self._what("clone"))
        info = self.info()
        if info.state not in QUIESCENT:
            raise InvalidState(
                f"cannot clone VM {info.name!r}: it is {info.state.value}; clone a stopped VM",
                current=info.state,
                allowed=QUIESCENT,
            )
        if any(i.name == name for i in self._hv.list_vms()):
            raise AlreadyExists(f"a VM named {name!r} already exists on {conn.uri}")
        driver = conn.driver
        assert isinstance(driver, Cloning)
        clone = self._change(
            self._what(f"clone as {name!r}"), driver.clone_vm, self.uuid, name, linked=linked
        )
        return VM(self._hv, conn, clone)

    def migrate(
        self, target: Hypervisor, *, live: bool | None = None, timeout: float | None = None
    ) -> VM:
        """Move the VM to the host ``target`` (same driver); returns its handle there.

        A RUNNING VM moves live (capability MIGRATE_LIVE); a STOPPED one moves cold
        (MIGRATE_COLD). ``live=False`` on a running VM is refused: shut it down first.
        """
        from ._hypervisor import Hypervisor

        conn = self._conn
        deadline = conn.deadline(timeout, conn.timeouts.operation_s)
        if live is not None and not isinstance(live, bool):
            raise ValidationError("must be True, False or None", field="live")
        if not isinstance(target, Hypervisor):
            raise ValidationError(
                "the target must be a Hypervisor from vmctl.connect()", field="target"
            )
        info = self._read(deadline)
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
        conn.require(cap, self._what("migrate"))
        if live != running:
            raise InvalidState(
                f"VM {info.name!r} is {info.state.value}: a "
                f"{'live' if live else 'cold'} migration needs it "
                f"{'running' if live else 'stopped'}",
                current=info.state,
            )
        other = target._conn
        if type(other.driver) is not type(conn.driver):
            raise ValidationError(
                f"cannot migrate from a {conn.driver_name} host to a {other.driver_name} host",
                field="target",
            )
        if target is self._hv or other.uri == conn.uri:
            raise ValidationError(f"the VM is already on {other.uri}", field="target")
        other.require(cap, self._what("migrate"))
        there = other.dispatcher.call(
            self._what("migrate"), other.driver.list_vms, deadline=deadline
        )
        if any(i.uuid == self.uuid or i.name == info.name for i in there):
            raise AlreadyExists(
                f"{other.uri} already has a VM named {info.name!r} or with UUID {self.uuid}"
            )
        driver = conn.driver
        assert isinstance(driver, Migration)
        what = self._what(f"migrate to {other.uri}")
        log.info("%s", what)
        task = conn.dispatcher.call(
            what,
            driver.migrate_vm,
            self.uuid,
            other.driver,
            live=live,
            deadline=deadline,
            idempotent=False,
        )
        if task is not None:
            conn.dispatcher.await_task(task, deadline, what)
        arrived = other.dispatcher.await_states(
            {self.uuid: frozenset({info.state})}, deadline, what
        )
        return VM(target, other, arrived[self.uuid])

    # -- observation ----------------------------------------------------------------------

    def stats(self) -> VMStats:
        """This VM's counters."""
        return self._hv.stats([self])[self.uuid]

    def guest_info(self) -> GuestInfo:
        """IP addresses and agent state, as the guest reports them."""
        conn = self._conn
        conn.require(Capability.GUEST_INFO, self._what("guest info of"))
        driver = conn.driver
        assert isinstance(driver, GuestAgent)
        return conn.dispatcher.call(
            self._what("guest info of"), driver.guest_info, self.uuid, deadline=conn.read_deadline()
        )

    # -- backup ---------------------------------------------------------------------------

    def backup(
        self,
        repo: Repository | str,
        *,
        full: bool = False,
        quiesce: bool | None = None,
        progress: Callable[[BackupProgress], None] | None = None,
        timeout: float | None = None,
    ) -> BackupInfo:
        """Back up the VM's configuration and disks into ``repo`` (a ``vmctl.open_repo()``
        repository or its URL), in any power state.

        Incremental (only the extents changed since this VM's last backup in ``repo`` are
        read) when the host tracks changed blocks and such a backup exists, else full;
        ``full=True`` forces a full read. ``quiesce``: True asks the guest to freeze its file
        systems (NotSupported without the capability), False never, None when the host can
        and the VM runs. The result says which kind, why, and the consistency reached. An
        interrupted backup is never listed. See docs/backup.md.
        """
        from .backup import backup_vm

        return backup_vm(self, repo, full=full, quiesce=quiesce, progress=progress, timeout=timeout)

    def __repr__(self) -> str:
        return f"<VM {self.name!r} {self.uuid} on {self._conn.uri}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VM) and other.uuid == self.uuid and other._conn is self._conn

    def __hash__(self) -> int:
        return hash(self.uuid)
