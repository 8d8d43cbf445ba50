"""A restart move composed by the core, for a driver that does not restart in place
(``HostMigration.restarts_in_place`` False: the KVM site, ESX/vCenter).

A restart move takes a running VM to another host of the connection by three requests, each
through the same path as the public call (``VM.shutdown``, ``move_to_host(COLD)``,
``VM.start``) and so through the dispatcher, which owns all waiting:

1. a clean shutdown on the source, waiting up to the connection's shutdown timeout. A guest
   that cannot be asked fails at once (InvalidState), one that does not stop in time fails
   (OperationTimeout); in both cases nothing was moved and the VM runs where it was;
2. a cold move to the target;
3. a start on the target, waiting for RUNNING.

``ComposedRestart`` keeps one VM's progress across the executor's attempts: every attempt
first locates the VM and goes on from there, so a retry after a lost reply neither shuts the
VM down again nor starts it twice. A STOPPED VM counts as the move's own only when this
move asked its guest to shut down. ``give_up`` is called when the executor stops trying:
a VM this move stopped that is still on its source is started there again (nothing lost),
one stopped on the target is left there and the error says to start it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._capabilities import Capability
from ._errors import InvalidState, OperationTimeout, VmctlError
from ._hostspi import HostInventory, HostMigration, MoveMode
from ._state import PowerState

if TYPE_CHECKING:
    from ._connection import Connection
    from ._evacuate import Move
    from ._hypervisor import Hypervisor
    from ._model import VMInfo
    from ._vm import VM

log = logging.getLogger("vmctl")
S = PowerState


class ShutdownTimedOut(OperationTimeout):
    """The guest did not stop within the shutdown timeout: nothing was moved. Final (a
    retry would only wait as long again)."""


def composes_restart(driver: object) -> bool:
    """Whether the core composes a restart move for ``driver`` (it does not do it itself)."""
    return isinstance(driver, HostMigration) and not type(driver).restarts_in_place


def can_compose(conn: Connection) -> bool:
    """Whether the connection has what a composed restart move uses."""
    caps = conn.capabilities
    return Capability.MIGRATE_COLD in caps and Capability.SHUTDOWN in caps


def _restated(exc: VmctlError, message: str) -> VmctlError:
    """``exc``'s kind (so the executor still tells final from passing) with ``message``."""
    try:
        return type(exc)(message)
    except TypeError:  # a subclass that takes other arguments
        return VmctlError(message)


def run_move(
    conn: Connection,
    mover: HostMigration,
    move: Move,
    mode: MoveMode,
    timeout: float | None,
    what: str,
) -> None:
    """Ask the driver once for ``move``'s VM on its target in ``mode`` and wait for the task,
    within ``timeout`` (else the connection's operation timeout). Never retried here: a
    move is not idempotent, its callers locate the VM before any second attempt."""
    deadline = conn.deadline(timeout, conn.timeouts.operation_s)
    log.info("%s", what)
    task = conn.dispatcher.call(
        what,
        mover.move_to_host,
        move.vm_uuid,
        move.target_id,
        mode=mode,
        deadline=deadline,
        idempotent=False,
    )
    if task is not None:
        conn.dispatcher.await_task(task, deadline, what)


class ComposedRestart:
    """One VM's restart move, step by step (see the module)."""

    def __init__(
        self,
        hv: Hypervisor,
        conn: Connection,
        move: Move,
        *,
        source_id: str,
        source_name: str,
        timeout: float | None,
    ) -> None:
        driver = conn.driver
        assert isinstance(driver, HostMigration) and isinstance(driver, HostInventory)
        self.hv = hv
        self.conn = conn
        self.mover: HostMigration = driver
        self.inventory: HostInventory = driver
        self.move = move
        self.source_id = source_id
        self.source_name = source_name
        self.timeout = timeout
        #: This move asked the guest to shut down: a STOPPED VM is then its own to move and
        #: start (also when the answer was lost, or the guest stopped after the timeout).
        self.stopped_here = False
        self.what = f"restart VM {move.vm_name!r} on host {move.target_name!r}"

    def waits_on_target(self, host_id: str | None, state: PowerState) -> bool:
        """The VM is on the target but this move has not started it yet."""
        return host_id == self.move.target_id and self.stopped_here and state is S.STOPPED

    def _locate(self) -> tuple[str | None, VMInfo]:
        conn = self.conn
        where: tuple[str | None, VMInfo] = conn.dispatcher.call(
            f"locate VM {self.move.vm_name!r}",
            self.inventory.locate_vm,
            self.move.vm_uuid,
            deadline=conn.read_deadline(),
        )
        return where

    def _vm(self, info: VMInfo) -> VM:
        from ._vm import VM  # not at the top: _vm imports the modules that import this one

        return VM(self.hv, self.conn, info)

    def run(self) -> None:
        """One attempt, from where the VM is now; returns with it RUNNING on the target."""
        move = self.move
        host_id, info = self._locate()
        if host_id == move.target_id:
            if info.state is S.RUNNING:
                return
            if not self.waits_on_target(host_id, info.state):
                raise InvalidState(
                    f"{self.what}: it is {info.state.value} there, and this move did not stop "
                    "it: start it yourself if it should run",
                    current=info.state,
                )
            self._start(info)
            return
        if host_id != self.source_id:
            raise VmctlError(f"{self.what}: it is no longer on {self.source_name}")
        if info.state is S.RUNNING:
            self._shutdown(info)
        elif not (info.state is S.STOPPED and self.stopped_here):
            raise InvalidState(
                f"{self.what}: it is {info.state.value} on {self.source_name}; a restart move "
                "takes a running VM (re-plan: a stopped VM moves cold)",
                current=info.state,
                allowed={S.RUNNING},
            )
        self._move_cold()
        host_id, info = self._locate()
        if host_id != move.target_id or info.state is not S.STOPPED:
            raise VmctlError(
                f"{self.what}: the cold move was reported done, but the VM is on "
                f"{host_id or 'no host'} and {info.state.value}"
            )
        self._start(info)

    def _shutdown(self, info: VMInfo) -> None:
        vm = self._vm(info)
        seconds = self.conn.timeouts.shutdown_s
        log.info("%s: shutting it down on %s", self.what, self.source_name)
        self.stopped_here = True
        try:
            vm.shutdown(timeout=seconds)
        except InvalidState as exc:
            self.stopped_here = False  # not asked: nothing in the guest heard it
            raise InvalidState(
                f"{self.what}: the guest cannot be asked to shut down, so nothing was moved: "
                f"it still runs on {self.source_name} ({exc})",
                current=exc.current,
                vendor_code=exc.vendor_code,
            ) from exc
        except OperationTimeout as exc:
            raise ShutdownTimedOut(
                f"{self.what}: the guest did not shut down within {seconds:g} s (the "
                "connection's shutdown timeout), so nothing was moved: it keeps running on "
                f"{self.source_name} (it was asked: should it stop later, start it again)"
            ) from exc

    def _move_cold(self) -> None:
        move = self.move
        what = f"move VM {move.vm_name!r} to host {move.target_name!r} (cold, for a restart)"
        run_move(self.conn, self.mover, move, MoveMode.COLD, self.timeout, what)

    def _start(self, info: VMInfo) -> None:
        vm = self._vm(info)
        log.info("%s: starting it there", self.what)
        try:
            vm.start(timeout=self.timeout)
        except VmctlError as exc:
            raise _restated(
                exc,
                f"{self.what}: it is stopped with its home on {self.move.target_name}, and "
                f"starting it there failed: {exc}",
            ) from exc
        host_id, now = self._locate()
        if host_id != self.move.target_id or now.state is not S.RUNNING:
            raise VmctlError(
                f"{self.what}: the start was reported done, but the VM is on "
                f"{host_id or 'no host'} and {now.state.value}"
            )

    def give_up(self) -> str:
        """The executor stops trying: leave the VM as little changed as possible and say
        where it is (the text to add to the error)."""
        if not self.stopped_here:
            return ""
        move = self.move
        try:
            host_id, info = self._locate()
        except VmctlError as exc:
            return (
                f"; where the VM is now could not be read ({exc}): it may be stopped, check "
                "it and start it"
            )
        if info.state is S.RUNNING:  # it never stopped (the errors say so), or runs there
            return "; it runs on the target" if host_id == move.target_id else ""
        if host_id == move.target_id:
            return (
                f"; the VM is stopped with its home on {move.target_name}: start it there "
                "(vm.start())"
            )
        if host_id != self.source_id:
            return f"; the VM is {info.state.value} on {host_id or 'no host'}"
        vm = self._vm(info)
        try:
            vm.start(timeout=self.timeout)
        except VmctlError as exc:
            return (
                f"; it is stopped on {self.source_name} and starting it again there failed "
                f"({exc}): start it"
            )
        self.stopped_here = False
        log.info("%s failed: VM started again on %s", self.what, self.source_name)
        return f"; nothing was moved: it was started again on {self.source_name}"
