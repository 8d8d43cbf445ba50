"""The hosts of an ESX/vCenter connection for ``EsxDriver`` (a mixin): ``HostInventory``,
``HostMigration`` and ``HostMaintenance`` over the vSphere API.

* hosts: the ``HostSystem``s of the connection's scope (the standalone host, or the
  cluster's hosts on vCenter), one ``RetrievePropertiesEx``: ``summary.hardware``
  (threads, cores, MHz, memory), ``summary.quickStats`` (``overallCpuUsage`` in MHz over
  cores x MHz, ``overallMemoryUsage``), ``runtime.connectionState`` (not ``connected``:
  unreachable) and ``runtime.inMaintenanceMode``. The id is the host's managed object id;
* placements: the VMs of the scope (the driver's batched listing) with their
  ``datastore``s; a datastore mounted on no other host of the scope (its ``host`` mounts)
  holds local disks. A VM takes ``config.hardware.memoryMB`` plus vSphere's memory overhead
  for it: the larger of ``config.initialOverhead.initialMemoryReservation`` (what powering it
  on reserves on a host) and ``summary.quickStats.consumedOverheadMemory`` (what it uses
  now), read with the datastores. A VM of a host that is not connected is placed with the
  power state vCenter last knew when that was poweredOff (STOPPED: its recovery is cold),
  else UNKNOWN. Its devices say what ties it to its host (``_ties``): a connected drive or
  port backed by a host or client device blocks vMotion (``live_blocker``), a PCI
  passthrough device pins it;
* moves: ``RelocateVM_Task`` with the target host and the scope's resource pool, live for
  a powered-on VM (vMotion), cold for a powered-off one; the task goes to the core. A
  restart move is the core's (``restarts_in_place`` is False): ``ShutdownGuest`` through
  ``shutdown`` and the core's wait for STOPPED, this cold move, then ``start``; handed
  RESTART itself, the driver refuses it (NotSupported) before changing anything.
  A cold move of a VM of a host that is not connected is a recovery's: it is registered on
  the target (``_recovery``). An evacuation's move is 3 round trips (``_fastmove``: what
  ``locate_vm`` read serves the move's checks, what the task's wait read serves the
  ``locate_vm`` after it);
* maintenance: ``EnterMaintenanceMode_Task(timeout=0, evacuatePoweredOffVms=False)`` and
  ``ExitMaintenanceMode_Task(timeout=0)``. vCenter ends the first only when no VM runs on
  the host (DRS, or vmctl's evacuation, moves them first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from vmctl import InvalidState, NotFound, NotSupported, PowerState, VMInfo
from vmctl.spi import (
    Deadline,
    HostInventory,
    HostMaintenance,
    HostMigration,
    HostRecord,
    HostState,
    MoveMode,
    Placement,
    Task,
)

from . import _ties
from ._faults import is_fault, reraise
from ._recovery import EsxRecovery
from ._vmprops import LIST_PATHS as _LIST_PATHS
from ._vmprops import moid as _moid

if TYPE_CHECKING:
    from ._conn import Connection
    from ._fastmove import FastMove, MoveNotes

_HOST_PATHS = (
    "name",
    "summary.hardware.numCpuThreads",
    "summary.hardware.numCpuCores",
    "summary.hardware.cpuMhz",
    "summary.hardware.memorySize",
    "summary.quickStats.overallCpuUsage",
    "summary.quickStats.overallMemoryUsage",
    "runtime.connectionState",
    "runtime.inMaintenanceMode",
)


#: What a move checks of its target host.
_TARGET_PATHS = ("name", "runtime.inMaintenanceMode")
#: What ``locate_vm`` reads of a VM (what ``_props`` adds to the listing's paths).
_LOCATE_PATHS = tuple(dict.fromkeys((*_LIST_PATHS, "runtime.host", "config.template")))
#: ``locate_vm`` reads the hosts of a cluster of at most this many hosts with the VM.
_NOTED_HOSTS = 64

#: VM properties read apart for the placements: the datastores, the memory overhead and
#: the devices (what ties the VM to its host: ``_ties``).
_PLACEMENT_PATHS = (
    "datastore",
    "config.initialOverhead",
    "summary.quickStats.consumedOverheadMemory",
    "config.hardware.device",
)


def _overhead_mib(props: dict[str, Any]) -> int:
    """vSphere's memory overhead of a VM in MiB (see the module), 0 when not reported."""
    initial = getattr(props.get("config.initialOverhead"), "initialMemoryReservation", 0)
    consumed = props.get("summary.quickStats.consumedOverheadMemory") or 0
    return max(-(-int(initial or 0) // 2**20), int(consumed))


class EsxHosts(EsxRecovery, HostInventory, HostMigration, HostMaintenance):
    """The scope's hosts (see the module)."""

    if TYPE_CHECKING:
        conn: Connection
        scope: Any

        def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any: ...
        def _list_rows(self, paths: Any) -> list[tuple[Any, dict[str, Any]]]: ...
        def _props(self, uuid: str, paths: Any) -> tuple[Any, dict[str, Any]]: ...
        def _info(self, props: dict[str, Any]) -> VMInfo: ...
        def _in_scope(self, props: dict[str, Any]) -> bool: ...
        def _remember(self, uuid: str, ref: Any) -> None: ...

        _refs: dict[str, Any]
        _refs_lock: Any

        def _task(self, task: Any, description: str) -> Task: ...
        def _moving(self, task: Any, uuid: str, ref: Any, host: Any) -> None: ...

        _fast_move: FastMove
        _notes: MoveNotes

    def _host_rows(self) -> list[tuple[Any, dict[str, Any]]]:
        refs = list(self.scope.host_refs.values())
        vim = self.conn.vim
        rows: list[tuple[Any, dict[str, Any]]] = self._call(
            "read the hosts", self.conn.retrieve, refs, vim.HostSystem, _HOST_PATHS
        )
        return rows

    def list_hosts(self, *, deadline: Deadline) -> list[HostRecord]:
        with self.conn.within(deadline):
            rows = self._host_rows()
            vms = self._list_rows(_LIST_PATHS)
        counts: dict[str, int] = {}
        for _ref, props in vms:
            host = props.get("runtime.host")
            if host is not None and not props.get("config.template"):
                counts[_moid(host)] = counts.get(_moid(host), 0) + 1
        out = []
        for ref, p in rows:
            connected = str(p.get("runtime.connectionState", "connected")) == "connected"
            if not connected:
                state = HostState.UNREACHABLE
            elif p.get("runtime.inMaintenanceMode"):
                state = HostState.MAINTENANCE
            else:
                state = HostState.CONNECTED
            cores = int(p.get("summary.hardware.numCpuCores") or 0)
            mhz = int(p.get("summary.hardware.cpuMhz") or 0)
            used_mhz = p.get("summary.quickStats.overallCpuUsage")
            used_mib = p.get("summary.quickStats.overallMemoryUsage")
            out.append(
                HostRecord(
                    id=_moid(ref),
                    name=str(p.get("name", _moid(ref))),
                    state=state,
                    cpus=int(p.get("summary.hardware.numCpuThreads") or 0) or cores,
                    cpu_mhz=mhz,
                    memory_mib=int(p.get("summary.hardware.memorySize") or 0) // 2**20,
                    memory_used_mib=int(used_mib) if used_mib is not None and connected else None,
                    cpu_percent=(
                        round(min(100.0, 100.0 * int(used_mhz) / (cores * mhz)), 2)
                        if used_mhz is not None and cores and mhz and connected
                        else None
                    ),
                    vm_count=counts.get(_moid(ref), 0),
                )
            )
        return out

    def list_placements(self, *, deadline: Deadline) -> list[Placement]:
        vim = self.conn.vim
        with self.conn.within(deadline):
            rows = [
                (ref, props)
                for ref, props in self._list_rows(_LIST_PATHS)
                if not props.get("config.template") and self._in_scope(props)
            ]
            # VM.datastore, the overhead and the devices read apart, through pyvmomi (the
            # driver's fast listing reads scalar properties only): one more round trip.
            held = self._call(
                "read the VMs' datastores, memory overhead and devices",
                self.conn.retrieve,
                [ref for ref, _ in rows],
                vim.VirtualMachine,
                _PLACEMENT_PATHS,
            )
            by_vm = {_moid(ref): list(p.get("datastore") or ()) for ref, p in held}
            overhead = {_moid(ref): _overhead_mib(p) for ref, p in held}
            devices = {_moid(ref): list(p.get("config.hardware.device") or ()) for ref, p in held}
            stores = {_moid(ds): ds for dss in by_vm.values() for ds in dss}
            mounts = self._call(
                "read the datastores",
                self.conn.retrieve,
                list(stores.values()),
                vim.Datastore,
                ("name", "host"),
            )
        in_scope = set(self.scope.hosts)
        seen_by: dict[str, tuple[str, set[str]]] = {
            _moid(ds): (str(p.get("name", _moid(ds))), {_moid(m.key) for m in p.get("host") or ()})
            for ds, p in mounts
        }
        out = []
        for ref, props in rows:
            uuid = props.get("config.instanceUuid")
            if not uuid:
                continue
            self._remember(str(uuid), ref)
            host = _moid(props["runtime.host"])
            local = []
            for ds in by_vm.get(_moid(ref), ()):
                name, hosts = seen_by.get(_moid(ds), (_moid(ds), set()))
                if not (hosts & in_scope) - {host}:
                    local.append(f"datastore {name!r} (mounted on this host only)")
            info = self._info(props)
            if (
                str(props.get("runtime.connectionState")) != "connected"
                and str(props.get("runtime.powerState")) == "poweredOff"
            ):
                info = attrs.evolve(info, state=PowerState.STOPPED)  # last known
            extra = overhead.get(_moid(ref), 0)
            out.append(
                Placement(
                    vm=info,
                    host_id=host,
                    memory_mib=int(props.get("config.hardware.memoryMB") or 0) + extra,
                    local_disks=tuple(local),
                    pinned=_ties.pinned(devices.get(_moid(ref), ())),
                    live_blocker=_ties.live_blocker(devices.get(_moid(ref), ())),
                    overhead_mib=extra,
                )
            )
        return out

    def locate_vm(self, uuid: str, *, deadline: Deadline) -> tuple[str | None, VMInfo]:
        """Where the VM is: what its move's end read with the task (``wait_tasks``, in this
        thread, just now), else one read, of the VM and (on a cluster) its hosts' names and
        maintenance modes too, kept for a ``move_to_host`` that follows (its checks)."""
        props = self._notes.take_ended(uuid)
        if props is None:
            with self.conn.within(deadline):
                try:
                    props = self._locate(uuid)
                except NotFound:
                    self._check_unregistered(uuid)  # a recovery's, not gone: say so
                    raise
        host = props.get("runtime.host")
        return (_moid(host) if host is not None else None), self._info(props)

    def _locate(self, uuid: str) -> dict[str, Any]:
        with self._refs_lock:
            ref = self._refs.get(uuid)
        hosts = list(self.scope.host_refs.values())
        if ref is not None and 2 <= len(hosts) <= _NOTED_HOSTS:
            vim = self.conn.vim
            rows = self._fast_move.retrieve(
                [([ref], vim.VirtualMachine, _LOCATE_PATHS), (hosts, vim.HostSystem, _TARGET_PATHS)]
            )
            if rows is not None:
                mine = _moid(ref)
                props = next(
                    (p for r, p in rows if isinstance(r, vim.VirtualMachine) and _moid(r) == mine),
                    None,
                )
                if props:
                    if props.get("config.template") or not self._in_scope(props):
                        raise NotFound(f"no VM with UUID {uuid} on {self.scope.name}")
                    hrows = [(r, p) for r, p in rows if isinstance(r, vim.HostSystem)]
                    self._notes.located(uuid, ref, props, hrows)
                    return props
        _ref, props = self._props(uuid, _LIST_PATHS)
        return props

    def _host(self, host_id: str) -> tuple[Any, dict[str, Any]]:
        for ref, props in self._host_rows():
            if host_id in (_moid(ref), props.get("name")):
                return ref, props
        raise NotFound(f"no host {host_id!r} in {self.scope.name}")

    def _target(self, host_id: str) -> tuple[Any, dict[str, Any]]:
        """A host of the scope by id with its name and maintenance mode: one read of that
        host (a move's check; ``_host`` reads them all, and finds one by name too)."""
        ref = self.scope.host_refs.get(host_id)
        if ref is None:
            return self._host(host_id)
        props = self._call(
            f"read host {host_id!r}",
            self.conn.retrieve_one,
            ref,
            self.conn.vim.HostSystem,
            ("name", "runtime.inMaintenanceMode"),
        )
        return ref, props

    def _vm_and_target(
        self, uuid: str, paths: tuple[str, ...], host_id: str
    ) -> tuple[Any, dict[str, Any], Any, dict[str, Any]]:
        """The VM's ``paths`` (as ``_props``) and the target host's name and maintenance
        mode in ONE RetrievePropertiesEx (a move's checks; the VM and host refs are known);
        ``_props`` and ``_target`` apart when a ref is not known or no longer valid."""
        host = self.scope.host_refs.get(host_id)
        with self._refs_lock:
            ref = self._refs.get(uuid)
        if host is not None and ref is not None:
            vim = self.conn.vim
            want = tuple(dict.fromkeys((*paths, "runtime.host", "config.template")))
            specs = [([ref], vim.VirtualMachine, want), ([host], vim.HostSystem, _TARGET_PATHS)]
            try:
                rows = self._fast_move.retrieve(specs)
                if rows is None:
                    rows = self.conn.retrieve(*specs[0], also=specs[1:])
            except Exception as exc:
                if not is_fault(exc, "ManagedObjectNotFound"):
                    reraise(exc, f"read VM {uuid} and host {host_id!r}")
            else:
                props = next((p for r, p in rows if _moid(r) == _moid(ref)), None)
                hprops = next((p for r, p in rows if _moid(r) == _moid(host)), None)
                if props and hprops is not None:
                    if props.get("config.template") or not self._in_scope(props):
                        raise NotFound(f"no VM with UUID {uuid} on {self.scope.name}")
                    return ref, props, host, hprops
        ref, props = self._props(uuid, paths)
        host, hprops = self._target(host_id)
        return ref, props, host, hprops

    def _noted_or_read(
        self, uuid: str, host_id: str, mode: MoveMode
    ) -> tuple[Any, dict[str, Any], Any, dict[str, Any]]:
        """A move's checks' data: what ``locate_vm`` just read in this thread (the VM and
        the cluster's hosts) when it clears the move (the VM connected, in the mode's power
        state, not on the target yet, the target not in maintenance), else one read now
        (anything else, a refusal included, is decided on what is there now)."""
        noted = self._notes.take_located(uuid, host_id)
        if noted is not None and mode is not MoveMode.RESTART:
            ref, props, (host, hprops) = noted
            want = "poweredOn" if mode is MoveMode.LIVE else "poweredOff"
            at = props.get("runtime.host")
            if (
                str(props.get("runtime.connectionState")) == "connected"
                and str(props.get("runtime.powerState")) == want
                and at is not None
                and _moid(at) != _moid(host)
                and hprops.get("runtime.inMaintenanceMode") is False
                and "name" in props
            ):
                return ref, props, host, hprops
        return self._vm_and_target(
            uuid, ("name", "runtime.powerState", "runtime.connectionState"), host_id
        )

    def move_to_host(
        self, uuid: str, host_id: str, *, mode: MoveMode, deadline: Deadline
    ) -> Task | None:
        mode = MoveMode(mode)
        vim = self.conn.vim
        with self.conn.within(deadline):
            ref, props, host, hprops = self._noted_or_read(uuid, host_id, mode)
            if str(props.get("runtime.connectionState")) != "connected":
                if mode is MoveMode.COLD:  # a recovery's (its host failed)
                    return self._recover_vm(uuid, host_id, start=False, deadline=deadline)
                raise InvalidState(
                    f"move VM {props['name']!r}: its host does not respond (recover it)"
                )
            name, hname = props["name"], hprops.get("name", host_id)
            what = f"move VM {name!r} to host {hname!r} ({mode.value})"
            if mode is MoveMode.RESTART:
                raise NotSupported(
                    f"{what}: the ESX driver does not restart in place (vmctl.execute "
                    "composes a restart move: shut down, move cold, start)"
                )
            state = {"poweredOn": PowerState.RUNNING, "poweredOff": PowerState.STOPPED}.get(
                str(props.get("runtime.powerState")), PowerState.UNKNOWN
            )
            want = PowerState.RUNNING if mode is MoveMode.LIVE else PowerState.STOPPED
            if _moid(props["runtime.host"]) == _moid(host) and state is want:
                return None  # already there
            if state is not want:
                raise InvalidState(f"{what}: the VM is {state.value}", current=state)
            if hprops.get("runtime.inMaintenanceMode"):
                raise InvalidState(f"{what}: host {hname!r} is in maintenance mode")
            pool = self.scope.pool
            self._notes.changed(uuid)
            task = self._fast_move.relocate(ref, host, pool, what)
            if task is None:
                spec = vim.vm.RelocateSpec(host=host, pool=pool)
                task = self.conn.start_task(
                    lambda: ref.RelocateVM_Task(spec=spec, priority="defaultPriority"), what
                )
            self._moving(task, uuid, ref, host)
        return self._task(task, what)

    def set_maintenance(self, host_id: str, on: bool, *, deadline: Deadline) -> Task | None:
        self._notes.hosts_changed()
        with self.conn.within(deadline):
            host, hprops = self._host(host_id)
            if bool(hprops.get("runtime.inMaintenanceMode")) == on:
                return None
            name = hprops.get("name", host_id)
            if on:
                what = f"enter maintenance mode on host {name!r}"
                task = self.conn.start_task(
                    lambda: host.EnterMaintenanceMode_Task(timeout=0, evacuatePoweredOffVms=False),
                    what,
                )
            else:
                what = f"exit maintenance mode on host {name!r}"
                task = self.conn.start_task(lambda: host.ExitMaintenanceMode_Task(timeout=0), what)
        return self._task(task, what)
