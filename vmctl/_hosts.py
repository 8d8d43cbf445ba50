"""Hosts as first-class objects: ``Hypervisor.hosts()`` and ``Host``.

A connection manages one host (a libvirtd, a standalone ESX host) or several (a vCenter
cluster, a xapi pool, a sim site). Drivers with ``HostInventory`` list them; for any other
driver the connection is one host, built from ``host_info`` and ``list_vms``. Every driver
call goes through the connection's dispatcher under a deadline.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from attrs import field, frozen

from . import _maintenance
from ._errors import InvalidState, NotFound, ValidationError
from ._hostspi import HostInventory, HostMaintenance, HostRecord, HostState, Placement

if TYPE_CHECKING:
    from ._connection import Connection
    from ._deadline import Deadline
    from ._evacuate import EvacuationReport, Plan
    from ._hypervisor import Hypervisor
    from ._recover import RecoveryPlan

log = logging.getLogger("vmctl")


@frozen
class Host:
    """One host a connection manages, read at one moment: capacity, load and state.

    ``state`` is MAINTENANCE when the backend's maintenance mode is on
    (``backend_maintenance``) or vmctl's own flag is set (``vmctl_maintenance``); vmctl's
    planning moves no VM to such a host. ``memory_used_mib`` and ``cpu_percent`` are None
    where the backend does not say. ``hypervisor`` is the connection it was read through.
    """

    id: str
    name: str
    state: HostState
    cpus: int
    cpu_mhz: int
    memory_mib: int
    memory_used_mib: int | None
    cpu_percent: float | None
    vm_count: int
    backend_maintenance: bool = False
    vmctl_maintenance: bool = False
    hypervisor: Hypervisor | None = field(default=None, eq=False, repr=False)

    @property
    def memory_free_mib(self) -> int | None:
        if self.memory_used_mib is None:
            return None
        return max(0, self.memory_mib - self.memory_used_mib)

    @property
    def in_maintenance(self) -> bool:
        return self.state is HostState.MAINTENANCE

    @property
    def takes_vms(self) -> bool:
        """Whether vmctl may move a VM here: connected and not in maintenance."""
        return self.state is HostState.CONNECTED

    def _hv(self) -> Hypervisor:
        if self.hypervisor is None:
            raise ValidationError("this Host was not read through a connection", field="host")
        return self.hypervisor

    def refresh(self) -> Host:
        """This host read again."""
        return self._hv().host(self.id)

    def enter_maintenance(
        self,
        *,
        evacuate: bool = False,
        max_parallel: int = 4,
        on_fail: str = "stop",
        timeout: float | None = None,
    ) -> Host:
        """Set vmctl's maintenance flag and the backend's maintenance mode where it has one
        (xapi host.disable, the sim's host mode). With ``evacuate`` its VMs are moved
        first (``plan_evacuation`` + ``execute``): the flag is set before planning, so no
        plan made meanwhile sends a VM here; InvalidState if a VM cannot be moved (the
        plan's blockers) or a move failed, and the backend's mode is then not set.
        Returns the host read again."""
        hv = self._hv()
        set_maintenance(hv, self, True, timeout=timeout)
        if evacuate:
            from ._evacuate import execute, plan_evacuation

            plan = plan_evacuation(self.refresh())
            if plan.blockers:
                raise InvalidState(
                    f"cannot evacuate host {self.name!r}: {len(plan.blockers)} VM(s) cannot "
                    f"be moved (vmctl's maintenance flag is set):\n{plan}"
                )
            report = execute(plan, max_parallel=max_parallel, on_fail=on_fail, timeout=timeout)
            if not report.ok:
                raise InvalidState(
                    f"evacuating host {self.name!r} did not finish (vmctl's maintenance flag "
                    f"is set; re-plan to move what is left):\n{report}"
                )
        set_maintenance(hv, self, True, timeout=timeout, backend=True)
        return self.refresh()

    def exit_maintenance(self, *, timeout: float | None = None) -> Host:
        """Leave the backend's maintenance mode and clear vmctl's flag. Returns the host
        read again."""
        hv = self._hv()
        set_maintenance(hv, self, False, timeout=timeout, backend=True)
        set_maintenance(hv, self, False, timeout=timeout)
        return self.refresh()

    def plan_evacuation(
        self, targets: list[Host] | None = None, *, allow_restart: bool = False
    ) -> Plan:
        """``vmctl.plan_evacuation(self, ...)``."""
        from ._evacuate import plan_evacuation

        return plan_evacuation(self, targets, allow_restart=allow_restart)

    def plan_recovery(self, targets: list[Host] | None = None) -> RecoveryPlan:
        """``vmctl.plan_recovery(self, ...)``: restarting the VMs of this failed host."""
        from ._recover import plan_recovery

        return plan_recovery(self, targets)

    def evacuate(self, *, max_parallel: int = 4, on_fail: str = "stop") -> EvacuationReport:
        """Plan and execute in one go (``execute(plan_evacuation(self))``); VMs the plan
        cannot move stay and are in the report's blockers."""
        from ._evacuate import execute, plan_evacuation

        return execute(plan_evacuation(self), max_parallel=max_parallel, on_fail=on_fail)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state.value,
            "cpus": self.cpus,
            "cpu_mhz": self.cpu_mhz,
            "memory_mib": self.memory_mib,
            "memory_used_mib": self.memory_used_mib,
            "memory_free_mib": self.memory_free_mib,
            "cpu_percent": self.cpu_percent,
            "vm_count": self.vm_count,
            "backend_maintenance": self.backend_maintenance,
            "vmctl_maintenance": self.vmctl_maintenance,
        }


# -- reading hosts ------------------------------------------------------------------------


def _single(conn: Connection, deadline: Deadline) -> tuple[list[HostRecord], list[Placement]]:
    """A driver without HostInventory: the connection is one host."""
    info = conn.dispatcher.call("host info", conn.driver.host_info, deadline=deadline)
    vms = conn.dispatcher.call("list VMs", conn.driver.list_vms, deadline=deadline)
    host_id = info.uuid or f"{conn.driver_name}:{conn.uri}"
    used = None if info.free_memory_mib is None else info.memory_mib - info.free_memory_mib
    record = HostRecord(
        id=host_id,
        name=info.name,
        state=HostState.CONNECTED,
        cpus=info.cpus,
        cpu_mhz=info.cpu_mhz,
        memory_mib=info.memory_mib,
        memory_used_mib=used,
        cpu_percent=None,
        vm_count=len(vms),
    )
    return [record], [Placement(vm=i, host_id=host_id, memory_mib=i.memory_mib) for i in vms]


def read_records(conn: Connection, deadline: Deadline) -> list[HostRecord]:
    driver = conn.driver
    if isinstance(driver, HostInventory):
        return conn.dispatcher.call("list hosts", driver.list_hosts, deadline=deadline)
    return _single(conn, deadline)[0]


def read_placements(conn: Connection, deadline: Deadline) -> list[Placement]:
    driver = conn.driver
    if isinstance(driver, HostInventory):
        return conn.dispatcher.call("list VM placements", driver.list_placements, deadline=deadline)
    return _single(conn, deadline)[1]


def to_host(record: HostRecord, hv: Hypervisor, flags: dict[str, Any]) -> Host:
    backend = record.state is HostState.MAINTENANCE
    ours = record.id in flags
    state = record.state
    if ours and state is HostState.CONNECTED:
        state = HostState.MAINTENANCE
    return Host(
        id=record.id,
        name=record.name,
        state=state,
        cpus=record.cpus,
        cpu_mhz=record.cpu_mhz,
        memory_mib=record.memory_mib,
        memory_used_mib=record.memory_used_mib,
        cpu_percent=record.cpu_percent,
        vm_count=record.vm_count,
        backend_maintenance=backend,
        vmctl_maintenance=ours,
        hypervisor=hv,
    )


def list_hosts(hv: Hypervisor, conn: Connection, deadline: Deadline) -> list[Host]:
    records = read_records(conn, deadline)
    flags = _maintenance.flagged()
    return sorted((to_host(r, hv, flags) for r in records), key=lambda h: h.name)


def find_host(hosts: list[Host], name_or_id: str) -> Host:
    if not isinstance(name_or_id, str) or not name_or_id:
        raise ValidationError("give a host name or id", field="host")
    for h in hosts:
        if h.id == name_or_id:
            return h
    named = [h for h in hosts if h.name == name_or_id]
    if len(named) == 1:
        return named[0]
    if named:
        raise ValidationError(
            f"{len(named)} hosts are named {name_or_id!r}: use the id", field="host"
        )
    raise NotFound(
        f"no host {name_or_id!r} here (hosts: {', '.join(h.name for h in hosts) or 'none'})"
    )


def set_maintenance(
    hv: Hypervisor, host: Host, on: bool, *, timeout: float | None, backend: bool = False
) -> None:
    """vmctl's flag (``backend=False``) or the backend's mode (``backend=True``, where the
    driver has one; nothing otherwise)."""
    conn = hv._conn
    if not backend:
        log.info("vmctl maintenance %s for host %s (%s)", "on" if on else "off", host.name, host.id)
        _maintenance.set_flag(host.id, on, name=host.name, uri=str(conn.uri))
        return
    driver = conn.driver
    if not isinstance(driver, HostMaintenance):
        return
    deadline = conn.deadline(timeout, conn.timeouts.operation_s)
    what = f"{'enter' if on else 'exit'} maintenance on host {host.name!r}"
    log.info("%s", what)
    task = conn.dispatcher.call(what, driver.set_maintenance, host.id, on, deadline=deadline)
    if task is not None:
        conn.dispatcher.await_task(task, deadline, what)
