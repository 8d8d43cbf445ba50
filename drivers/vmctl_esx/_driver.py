"""The esx driver: vmctl's SPI over the vSphere API (pyvmomi), for ESX hosts and vCenter.

URIs:

* ``esx://[user@]host[:port]`` - a standalone ESX(i) host.
* ``vcenter://[user@]host[:port]/DATACENTER/CLUSTER`` - the VMs of one cluster.
* ``vcenter://[user@]host[:port]/DATACENTER/CLUSTER/HOST`` - the VMs of one host of a
  cluster (a migration target: ``vm.migrate(other)`` relocates the VM to that host).
* ``vcenter://[user@]host[:port]/DATACENTER/HOST`` - a standalone host in a vCenter.

The path after the datacenter is the inventory path below the datacenter's host folder
(folders included). Trust: ``cafile=``, ``thumbprint=`` (SHA-256), or ``insecure=True``.

All reads go through the PropertyCollector; a listing is one RetrievePropertiesEx on a
ContainerView kept for the session, however many VMs there are. Tasks and state changes are
awaited with WaitForUpdatesEx on a private PropertyCollector.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import queue
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

from vmctl import (
    AgentState,
    AuthenticationError,
    Capability,
    ConnectionError,
    ConnectParams,
    DiskBus,
    DiskInfo,
    DiskSpec,
    Event,
    EventKind,
    Firmware,
    GuestInfo,
    GuestOS,
    HostInfo,
    InvalidState,
    NicInfo,
    NicSpec,
    NotFound,
    OperationTimeout,
    OutcomeUnknown,
    PowerState,
    Resources,
    SnapshotInfo,
    StateReason,
    ValidationError,
    VMConfig,
    VmctlError,
    VMInfo,
    VMSpec,
    VMStats,
)
from vmctl.spi import (
    URI,
    BulkPower,
    ChangeWaiter,
    Cloning,
    Deadline,
    Devices,
    Driver,
    Events,
    EventSource,
    GracefulPower,
    GuestAgent,
    Migration,
    Pending,
    Reconfigurable,
    Reconnectable,
    Resettable,
    ResourceControls,
    Snapshots,
    Statistics,
    Suspendable,
    Task,
    TaskOutcome,
    TaskWaiter,
    finish_task,
)

from ._backup import EsxBackup
from ._conn import MAX_POLL_S, Connection, apply_update
from ._fastlist import FastLister
from ._fastmove import FastMove, MoveNotes
from ._faststats import FastStats, sdk_metrics
from ._faults import is_fault, map_fault, reraise
from ._hosts import _LOCATE_PATHS, EsxHosts
from ._placement import EsxPlacement, vsphere_mac_refusal
from ._storage import EsxStorage
from ._vmprops import LIST_PATHS as _LIST_PATHS
from ._vmprops import moid as _moid

log = logging.getLogger("vmctl.esx")

S = PowerState
DEFAULT_PORT = 443
#: Move tasks remembered for their wait at most (more: tasks nobody waited for).
_MOVES_KEPT = 4096
KNOWN_OPTIONS = frozenset({"datastore"})

_POWER = {"poweredOn": S.RUNNING, "poweredOff": S.STOPPED, "suspended": S.SUSPENDED}
_GUEST_IDS = {
    GuestOS.LINUX: "otherLinux64Guest",
    GuestOS.WINDOWS: "windows9_64Guest",
    GuestOS.OTHER: "otherGuest64",
}
_GUEST_OS = {v: k for k, v in _GUEST_IDS.items()}
_CONFIG_PATHS = (
    "name",
    "config.instanceUuid",
    "config.hardware.numCPU",
    "config.hardware.memoryMB",
    "config.hardware.device",
    "config.cpuAllocation",
    "config.memoryAllocation",
    "config.guestId",
    "config.annotation",
    "config.extraConfig",
    "runtime.host",
    "config.template",
    "config.firmware",
)
#: vim.vm.GuestOsDescriptor.FirmwareType values (config.firmware) as vmctl's Firmware.
_FIRMWARE = {"bios": Firmware.BIOS, "efi": Firmware.UEFI}
_DISK_NAME_KEY = "vmctl.disk.{}.name"
_NIC_MODELS = ("vmxnet3", "e1000", "e1000e")

CAPABILITIES = frozenset(
    {
        Capability.CREATE,
        Capability.DELETE,
        Capability.START,
        Capability.POWER_OFF,
        Capability.SHUTDOWN,
        Capability.REBOOT,
        Capability.RESET,
        Capability.SUSPEND,
        Capability.SET_VCPUS,
        Capability.SET_MEMORY,
        Capability.CPU_SHARES,
        Capability.CPU_RESERVATION,
        Capability.CPU_LIMIT,
        Capability.MEMORY_SHARES,
        Capability.MEMORY_RESERVATION,
        Capability.MEMORY_LIMIT,
        Capability.ADD_DISK,
        Capability.REMOVE_DISK,
        Capability.ADD_NIC,
        Capability.REMOVE_NIC,
        Capability.SNAPSHOT,
        Capability.SNAPSHOT_MEMORY,
        Capability.CLONE,
        Capability.MIGRATE_LIVE,
        Capability.MIGRATE_COLD,
        Capability.EVENTS,
        Capability.STATS,
        Capability.GUEST_INFO,
        Capability.BACKUP,  # _backup.py: a snapshot read over the datastore's HTTP access
        Capability.BACKUP_QUIESCE,  # through VMware Tools (InvalidState where they do not run)
        Capability.BACKUP_INCREMENTAL,  # changeTrackingEnabled + QueryChangedDiskAreas
        Capability.RESTORE,  # an upload to the datastore's HTTP access
    }
)


F = TypeVar("F", bound=Callable[..., Any])
#: Driver methods that change nothing (the others make MoveNotes forget their VMs).
_READS = frozenset(
    {
        "reconnect",
        "host_info",
        "list_vms",
        "get_vm",
        "get_config",
        "list_snapshots",
        "wait_tasks",
        "wait_changes",
        "subscribe",
        "get_stats",
        "guest_info",
    }
)


def _bounded(fn: F) -> F:
    """Run a driver method with every SOAP call it makes bounded by its ``deadline``."""

    changes = fn.__name__ not in _READS

    @functools.wraps(fn)
    def run(self: EsxDriver, *args: Any, **kwargs: Any) -> Any:
        if changes and args:  # what a move's steps noted of these VMs is stale now
            first = args[0]
            many = first if isinstance(first, (list, tuple)) else (first,)
            for uuid in many:
                if isinstance(uuid, str):
                    self._notes.changed(uuid)
        with self.conn.within(kwargs["deadline"]):
            return fn(self, *args, **kwargs)

    return cast(F, run)


def _left_behind(exc: VmctlError, what: str, left: tuple[tuple[str, str], ...]) -> VmctlError:
    """``exc`` as an OutcomeUnknown (unless it says more already) naming what may remain."""
    names = ", ".join(f"{kind} {ident}" for kind, ident in left)
    message = (
        f"{what}: {exc}; the outcome is unknown, so these may have been left behind on the "
        f"host: {names} (delete the VM by its UUID to remove them)"
    )
    out = OutcomeUnknown(message, sent=getattr(exc, "sent", None), vendor_code=exc.vendor_code)
    out.left_behind = left
    return out


def _state(props: dict[str, Any]) -> PowerState:
    if str(props.get("runtime.connectionState", "connected")) != "connected":
        return S.UNKNOWN
    return _POWER.get(str(props.get("runtime.powerState")), S.UNKNOWN)


class _Scope:
    """What a connection manages: hosts, their resource pool, datacenter, networks, storage."""

    def __init__(self) -> None:
        self.kind = "host"  # "host" or "cluster"
        self.name = ""
        self.entity: Any = None
        self.datacenter: Any = None
        self.vm_folder: Any = None
        self.view_root: Any = None
        self.pool: Any = None
        self.hosts: dict[str, str] = {}  # moid -> name
        self.host_refs: dict[str, Any] = {}
        self.host_props: dict[str, dict[str, Any]] = {}
        self.networks: dict[str, Any] = {}  # name -> moref
        self.dvpg: dict[str, tuple[str, str]] = {}  # name -> (switch uuid, portgroup key)
        self.dvpg_names: dict[str, str] = {}  # portgroup key -> name
        self.datastores: dict[str, tuple[Any, int, bool]] = {}  # name -> (moref, free, ok)


class EsxDriver(
    EsxBackup,
    EsxStorage,
    EsxHosts,
    Driver,
    BulkPower,
    TaskWaiter,
    ChangeWaiter,
    Reconnectable,
    GracefulPower,
    Resettable,
    Suspendable,
    Reconfigurable,
    ResourceControls,
    Devices,
    Snapshots,
    Cloning,
    Migration,
    Events,
    Statistics,
    GuestAgent,
    EsxPlacement,
):
    """vSphere over pyvmomi: a standalone ESX host, or a cluster/host of a vCenter."""

    name = "esx"
    thread_safe = True

    def __init__(self, conn: Connection, scope: _Scope, params: ConnectParams) -> None:
        self.conn = conn
        self.scope = scope
        self.uri = params.uri
        self.default_datastore = params.options.get("datastore")
        self._refs: dict[str, Any] = {}  # uuid -> VirtualMachine moref
        self._seen: dict[str, str] = {}  # moid -> uuid of every VM seen (kept after delete)
        self._refs_lock = threading.Lock()
        self._view: Any = None
        self._view_lock = threading.Lock()
        self._view_generation = -1
        self._perf: dict[str, int] | None = None
        self._fast = FastLister(conn)  # listings read with lxml (pyvmomi on any surprise)
        self._fast_stats = FastStats(self._fast)  # QueryPerf read the same way
        self._fast_move = FastMove(self._fast)  # a host move's requests, the same way
        self._notes = MoveNotes()  # what one step of a move read, for the next
        self._moves: dict[str, tuple[str, Any, str]] = {}  # task moid -> (uuid, VM, host)
        self._moves_lock = threading.Lock()

    # -- connection -------------------------------------------------------------------------

    @classmethod
    def open(cls, params: ConnectParams, *, deadline: Deadline) -> EsxDriver:
        uri = params.uri
        scheme = uri.scheme
        unknown = set(params.options) - KNOWN_OPTIONS
        if unknown:
            raise ValidationError(
                f"unknown esx option(s) {sorted(unknown)}; the esx driver "
                f"knows {sorted(KNOWN_OPTIONS)}",
                field="uri",
            )
        if uri.transport:
            raise ValidationError(
                f"{scheme}+{uri.transport}:// is not supported; use {scheme}://host", field="uri"
            )
        if not uri.host:
            raise ValidationError(
                f"{scheme}:// needs a host, e.g. {scheme}://root@esx1", field="uri"
            )
        parts = [p for p in uri.path.split("/") if p]
        if scheme == "esx" and parts:
            raise ValidationError(
                "esx:// URIs have no path; for a vCenter use "
                "vcenter://host/DATACENTER/CLUSTER[/HOST]",
                field="uri",
            )
        if scheme == "vcenter" and len(parts) < 2:
            raise ValidationError(
                "vcenter:// URIs name a datacenter and a cluster (or host): "
                "vcenter://host/DATACENTER/CLUSTER[/HOST]",
                field="uri",
            )
        conn = Connection(params, uri.host, uri.port or DEFAULT_PORT, deadline)
        try:
            if scheme == "esx" and conn.is_vcenter:
                raise ValidationError(
                    f"{uri.host} is a vCenter; connect with "
                    "vcenter://host/DATACENTER/CLUSTER[/HOST]",
                    field="uri",
                )
            if scheme == "vcenter" and not conn.is_vcenter:
                raise ValidationError(
                    f"{uri.host} is a standalone ESX host, not a vCenter; connect with esx://host",
                    field="uri",
                )
            with conn.within(deadline):
                scope = _resolve_scope(conn, parts)
            driver = cls(conn, scope, params)
            if driver.default_datastore and driver.default_datastore not in scope.datastores:
                raise NotFound(
                    f"no datastore {driver.default_datastore!r} on {scope.name} "
                    f"(datastores: {', '.join(sorted(scope.datastores))})"
                )
            return driver
        except BaseException:
            conn.close(deadline)
            raise

    @classmethod
    def kit_options(cls, uri: URI) -> Mapping[str, str]:
        """Defaults for the conformance kit: the port group every ESXi host starts with.
        (Migration needs ``--other-uri``: another host of the same vCenter.)"""
        return {"network": "VM Network"}

    def kit_defaults(self, *, deadline: Deadline) -> Mapping[str, str]:
        """What this connection's hosts have for the conformance kit: "VM Network" where
        it exists, else their first network by name (standard, then distributed port
        groups); the datastore new disks go to (``?datastore=``, else the accessible one
        with the most free space). Read at connect; no round trip."""
        sc = self.scope
        out: dict[str, str] = {}
        names = [*sorted(sc.networks), *sorted(sc.dvpg)]
        if names:
            out["network"] = "VM Network" if "VM Network" in names else names[0]
        with contextlib.suppress(NotFound):
            out["pool"] = self._datastore(None)
        return out

    def close(self) -> None:
        self.conn.close()

    def narrow_capabilities(self, offered: frozenset[Capability]) -> frozenset[Capability]:
        # Hot-plug, hot vCPU/memory and linked clones come with the interfaces but are not
        # offered (see docs/esx.md).
        if self.conn.is_vcenter:
            return offered & CAPABILITIES
        # A standalone ESX host cannot move VMs anywhere: that takes a vCenter.
        return offered & (CAPABILITIES - {Capability.MIGRATE_LIVE, Capability.MIGRATE_COLD})

    @_bounded
    def reconnect(self, *, deadline: Deadline) -> None:
        """A new session on the same stub (the old one expired, or the host restarted)."""
        self.conn.login(deadline, self.conn.generation)

    @property
    def round_trips(self) -> int:
        """HTTP requests made on this connection so far (for tests and benchmarks)."""
        return self.conn.round_trips

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            reraise(exc, what)

    # -- VM lookup --------------------------------------------------------------------------

    def _vm_view(self) -> Any:
        """The session's ContainerView of every VM of the datacenter (made once)."""
        with self._view_lock:
            if self._view is None or self._view_generation != self.conn.generation:
                generation = self.conn.generation
                self._view = self.conn.content.viewManager.CreateContainerView(
                    container=self.scope.view_root,
                    type=[self.conn.vim.VirtualMachine],
                    recursive=True,
                )
                self._view_generation = generation
            return self._view

    def _view_rows(self, paths: Sequence[str]) -> list[tuple[Any, dict[str, Any]]]:
        view, vm = [self._vm_view()], self.conn.vim.VirtualMachine
        rows = self._fast.retrieve(view, vm, paths, through_view=True)
        if rows is None:
            rows = self.conn.retrieve(view, vm, paths, through_view=True)
        return rows

    def _list_rows(self, paths: Sequence[str]) -> list[tuple[Any, dict[str, Any]]]:
        try:
            try:
                return self._view_rows(paths)
            except Exception as exc:
                if not is_fault(exc, "ManagedObjectNotFound"):
                    raise
                self._view = None  # the session was renewed: the view went with it
                return self._view_rows(paths)
        except Exception as exc:
            reraise(exc, f"list VMs on {self.scope.name}")

    def _in_scope(self, props: dict[str, Any]) -> bool:
        host = props.get("runtime.host")
        return host is not None and _moid(host) in self.scope.hosts

    def _info(self, props: dict[str, Any]) -> VMInfo:
        host = props.get("runtime.host")
        return VMInfo(
            uuid=str(props.get("config.instanceUuid", "")),
            name=str(props.get("name", "")),
            state=_state(props),
            reason=StateReason.UNKNOWN,
            vcpus=int(props.get("config.hardware.numCPU") or 0),
            memory_mib=int(props.get("config.hardware.memoryMB") or 0),
            host=self.scope.hosts.get(_moid(host)) if host is not None else None,
        )

    def _remember(self, uuid: str, ref: Any) -> None:
        with self._refs_lock:
            self._refs[uuid] = ref
            self._seen[_moid(ref)] = uuid

    def _ref(self, uuid: str) -> Any:
        """The VirtualMachine moref for ``uuid`` (cached; else SearchIndex.FindByUuid)."""
        with self._refs_lock:
            ref = self._refs.get(uuid)
        if ref is not None:
            return ref
        ref = self._call(
            f"find VM {uuid}",
            self.conn.content.searchIndex.FindByUuid,
            datacenter=self.scope.datacenter,
            uuid=uuid,
            vmSearch=True,
            instanceUuid=True,
        )
        if ref is None:
            raise NotFound(f"no VM with UUID {uuid} on {self.scope.name}")
        self._remember(uuid, ref)
        return ref

    def _props(self, uuid: str, paths: Sequence[str]) -> tuple[Any, dict[str, Any]]:
        """One VM's properties (one round trip), NotFound if gone or outside the scope."""
        paths = tuple(dict.fromkeys((*paths, "runtime.host", "config.template")))
        for attempt in range(2):
            ref = self._ref(uuid)
            try:
                props = self.conn.retrieve_one(ref, self.conn.vim.VirtualMachine, paths)
            except Exception as exc:
                if is_fault(exc, "ManagedObjectNotFound") and attempt == 0:
                    with self._refs_lock:
                        self._refs.pop(uuid, None)
                    continue
                reraise(exc, f"read VM {uuid}")
            if not props or props.get("config.template") or not self._in_scope(props):
                raise NotFound(f"no VM with UUID {uuid} on {self.scope.name}")
            return ref, props
        raise NotFound(f"no VM with UUID {uuid} on {self.scope.name}")

    # -- mandatory --------------------------------------------------------------------------

    @_bounded
    def host_info(self, *, deadline: Deadline) -> HostInfo:
        sc = self.scope
        paths = (
            "name",
            "summary.hardware.cpuMhz",
            "summary.hardware.numCpuThreads",
            "summary.hardware.memorySize",
            "summary.quickStats.overallMemoryUsage",
            "hardware.systemInfo.uuid",
        )
        rows = self._call(
            "read host info",
            self.conn.retrieve,
            list(sc.host_refs.values()),
            self.conn.vim.HostSystem,
            paths,
        )
        cpus = sum(int(p.get("summary.hardware.numCpuThreads") or 0) for _, p in rows)
        mhz = min((int(p.get("summary.hardware.cpuMhz") or 0) for _, p in rows), default=0)
        mem = sum(int(p.get("summary.hardware.memorySize") or 0) for _, p in rows) // 2**20
        used = sum(int(p.get("summary.quickStats.overallMemoryUsage") or 0) for _, p in rows)
        uuid = None
        if sc.kind == "host" and rows:
            uuid = rows[0][1].get("hardware.systemInfo.uuid")
        about = self.conn.about
        return HostInfo(
            name=sc.name,
            hypervisor="vCenter" if self.conn.is_vcenter else "ESXi",
            version=f"{about.version} (build {about.build})",
            cpus=cpus,
            cpu_mhz=mhz,
            memory_mib=mem,
            free_memory_mib=max(mem - used, 0),
            uuid=str(uuid) if uuid else _moid(sc.entity),
            vm_count=len(self.list_vms(deadline=deadline)),
        )

    @_bounded
    def list_vms(self, *, deadline: Deadline) -> list[VMInfo]:
        out = []
        for ref, props in self._list_rows(_LIST_PATHS):
            if props.get("config.template") or not self._in_scope(props):
                continue
            uuid = props.get("config.instanceUuid")
            if not uuid:
                continue
            self._remember(str(uuid), ref)
            out.append(self._info(props))
        return out

    @_bounded
    def get_vm(self, uuid: str, *, deadline: Deadline) -> VMInfo:
        _, props = self._props(uuid, _LIST_PATHS)
        return self._info(props)

    @_bounded
    def get_config(self, uuid: str, *, deadline: Deadline) -> VMConfig:
        _, props = self._props(uuid, _CONFIG_PATHS)
        devices = list(props.get("config.hardware.device") or ())
        extra = {str(o.key): str(o.value) for o in props.get("config.extraConfig") or ()}
        disks = tuple(
            self._disk_info(d, devices, extra)
            for d in devices
            if isinstance(d, self.conn.vim.vm.device.VirtualDisk)
        )
        nics = tuple(
            self._nic_info(d)
            for d in devices
            if isinstance(d, self.conn.vim.vm.device.VirtualEthernetCard)
        )
        return VMConfig(
            uuid=str(props.get("config.instanceUuid")),
            name=str(props["name"]),
            vcpus=int(props.get("config.hardware.numCPU") or 0),
            memory_mib=int(props.get("config.hardware.memoryMB") or 0),
            disks=disks,
            nics=nics,
            resources=self._resources(
                props.get("config.cpuAllocation"), props.get("config.memoryAllocation")
            ),
            guest_os=_GUEST_OS.get(str(props.get("config.guestId")), GuestOS.OTHER),
            description=str(props.get("config.annotation") or ""),
            firmware=_FIRMWARE.get(str(props.get("config.firmware") or "bios")),
        )

    @_bounded
    def create_vm(self, spec: VMSpec, *, deadline: Deadline) -> VMInfo:
        vim = self.conn.vim
        # The instance UUID is chosen here, so that a VM the host may have made although it
        # did not answer can be named (``left_behind``) and deleted.
        new_uuid = str(uuidlib.uuid4())
        # The VM's home (config, logs) goes where its first disk goes.
        datastore = self._datastore(spec.disks[0].pool if spec.disks else None)
        devices: list[Any] = []
        extra: list[Any] = []
        controllers: dict[str, tuple[int, int]] = {}  # bus -> (key, busNumber)
        used: set[tuple[int, int]] = set()
        disk_ids: list[str] = []
        for i, disk in enumerate(spec.disks):
            dev_spec, disk_id, ctl = self._new_disk(
                disk, -200 - i, controllers, used, spec.guest_os, existing=[], vm_name=spec.name
            )
            if ctl is not None:
                devices.append(ctl)
            devices.append(dev_spec)
            disk_ids.append(disk_id)
            if disk.name:
                extra.append(
                    vim.option.OptionValue(key=_DISK_NAME_KEY.format(disk_id), value=disk.name)
                )
        for i, nic in enumerate(spec.nics):
            devices.append(self._new_nic(nic, -300 - i))
        config = vim.vm.ConfigSpec(
            name=spec.name,
            instanceUuid=new_uuid,
            numCPUs=spec.vcpus,
            memoryMB=spec.memory_mib,
            guestId=_GUEST_IDS[spec.guest_os],
            annotation=spec.description,
            files=vim.vm.FileInfo(vmPathName=f"[{datastore}]"),
            deviceChange=devices,
            extraConfig=extra,
        )
        if spec.firmware is not None:
            config.firmware = "efi" if spec.firmware is Firmware.UEFI else "bios"
        if spec.boot is not None:
            self._boot(config, spec)
        cpu, mem = self._allocations(spec.resources, None, None)
        if cpu is not None:
            config.cpuAllocation = cpu
        if mem is not None:
            config.memoryAllocation = mem
        host = None
        if self.scope.kind == "host":
            host = next(iter(self.scope.host_refs.values()))
        what = f"create VM {spec.name!r} on {self.scope.name}"
        log.debug(
            "%s: datastore %s, %d disk(s), %d NIC(s)",
            what,
            datastore,
            len(spec.disks),
            len(spec.nics),
        )
        left = (("vm", new_uuid), *(("disk", f"{new_uuid}/{d}") for d in disk_ids))
        folder = self.conn.ref(vim.Folder, _moid(self.scope.vm_folder))
        ref = self._make(
            lambda: folder.CreateVM_Task(config=config, pool=self.scope.pool, host=host),
            what,
            left,
            deadline,
        )
        try:
            props = self.conn.retrieve_one(ref, vim.VirtualMachine, _LIST_PATHS)
            info = self._info(props)
            self._remember(info.uuid, ref)
            return info
        except VmctlError as exc:
            raise self._undo(ref, exc, what, left, deadline) from exc
        except Exception as exc:
            raise self._undo(ref, map_fault(exc, what), what, left, deadline) from exc

    def _make(
        self,
        start: Callable[[], Any],
        what: str,
        left: tuple[tuple[str, str], ...],
        deadline: Deadline,
    ) -> Any:
        """Run a task that makes something (``start()`` returns it) to its end; its result.
        When the host stops answering before the task is known to have ended, raise
        OutcomeUnknown with ``left`` as ``left_behind``."""
        try:
            task = self.conn.start_task(start, what)
        except OutcomeUnknown as exc:
            raise _left_behind(exc, what, left) from exc
        try:
            outcome = finish_task(self, self._task(task, what), deadline=deadline, what=what)
        except (OperationTimeout, ConnectionError) as exc:
            raise _left_behind(exc, what, left) from exc
        return outcome.result

    def _undo(
        self,
        ref: Any,
        exc: VmctlError,
        what: str,
        left: tuple[tuple[str, str], ...],
        deadline: Deadline,
    ) -> VmctlError:
        """Remove a VM just made after a later step failed; the error to raise."""
        try:
            task = self.conn.start_task(ref.Destroy_Task, f"remove the half-made VM ({what})")
            finish_task(self, self._task(task, "remove the half-made VM"), deadline=deadline,
                        what=f"remove the half-made VM ({what})")  # fmt: skip
        except VmctlError as cleanup:
            log.warning("%s: removing the half-made VM failed: %s", what, cleanup)
            return _left_behind(exc, what, left)
        return exc

    def _task(self, task: Any, description: str) -> Task:
        return Task(id=_moid(task), description=description, handle=task)

    def _request(self, uuid: str, method: str, verb: str) -> Task:
        """Start a lifecycle task on a VM; the Task for the core to wait on."""
        ref, props = self._props(uuid, ("name",))
        what = f"{verb} VM {props['name']!r}"
        return self._task(self.conn.start_task(getattr(ref, method), what), what)

    def _boot(self, config: Any, spec: VMSpec) -> None:
        vim = self.conn.vim
        boot = spec.boot
        assert boot is not None
        if not boot.iso:
            raise ValidationError(
                "the esx driver boots from an ISO on a datastore "
                "(boot=BootSource(iso='[datastore] path.iso')); "
                "kernel/initrd boot is not available on vSphere",
                field="boot",
            )
        cdrom = vim.vm.device.VirtualCdrom(
            key=-400,
            controllerKey=201,
            unitNumber=0,
            backing=vim.vm.device.VirtualCdrom.IsoBackingInfo(fileName=boot.iso),
            connectable=vim.vm.device.VirtualDevice.ConnectInfo(
                startConnected=True, connected=True
            ),
        )
        config.deviceChange.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=cdrom))

    @_bounded
    def delete_vm(self, uuid: str, *, deadline: Deadline) -> list[str]:
        ref, props = self._props(
            uuid, ("name", "config.instanceUuid", "config.hardware.device", "runtime.powerState")
        )
        name = str(props.get("name"))
        files = [
            d.backing.fileName
            for d in props.get("config.hardware.device") or ()
            if isinstance(d, self.conn.vim.vm.device.VirtualDisk)
            and getattr(d.backing, "fileName", None)
        ]
        what = f"delete VM {name!r}"
        task = self.conn.start_task(ref.Destroy_Task, what)
        finish_task(self, self._task(task, what), deadline=deadline, what=what)
        with self._refs_lock:
            self._refs.pop(uuid, None)
        return [f"vm {name} ({uuid})"] + [f"disk {f}" for f in files]

    @_bounded
    def start(self, uuid: str, *, deadline: Deadline) -> Pending:
        return self._request(uuid, "PowerOnVM_Task", "start")

    @_bounded
    def start_many(
        self, uuids: Sequence[str], *, deadline: Deadline
    ) -> Mapping[str, Task | VmctlError | None]:
        """Power on several VMs with one vCenter task (``Datacenter.PowerOnMultiVM_Task``):
        one request instead of one per VM; the core waits once for the task and the VMs'
        states (``BulkPower``). A standalone ESX host has no such call: {} sends each VM the
        ordinary way."""
        if not self.conn.is_vcenter:
            return {}
        refs = [self._ref(uuid) for uuid in uuids]
        dc = self.conn.ref(self.conn.vim.Datacenter, _moid(self.scope.datacenter))
        what = f"start {len(refs)} VMs on {self.scope.name}"
        task = self._task(self.conn.start_task(lambda: dc.PowerOnMultiVM_Task(vm=refs), what), what)
        return dict.fromkeys(uuids, task)

    def power_off_many(
        self, uuids: Sequence[str], *, deadline: Deadline
    ) -> Mapping[str, Task | VmctlError | None]:
        """vSphere has no bulk power-off: each VM goes the ordinary way."""
        return {}

    @_bounded
    def power_off(self, uuid: str, *, deadline: Deadline) -> Pending:
        return self._request(uuid, "PowerOffVM_Task", "power off")

    # -- graceful, reset, suspend -----------------------------------------------------------

    def _ask_guest(self, uuid: str, verb: str, method: str) -> None:
        """Ask the guest through VMware Tools (no task: the core waits for the state)."""
        ref, props = self._props(uuid, ("name", "runtime.powerState", "guest.toolsRunningStatus"))
        name = props["name"]
        tools = str(props.get("guest.toolsRunningStatus", "guestToolsNotRunning"))
        if tools not in ("guestToolsRunning", "guestToolsExecutingScripts"):
            # Real vSphere answers ToolsUnavailable here; ask first so that the answer is the
            # same everywhere (the simulator would power the VM off instead).
            raise InvalidState(
                f"cannot ask the guest of VM {name!r} to {verb}: VMware Tools "
                f"are not running in it ({tools}); use power_off, or "
                "force_after",
                current=_state(props),
                vendor_code="ToolsUnavailable",
            )
        self._call(f"{verb} VM {name!r}", getattr(ref, method))

    @_bounded
    def shutdown(self, uuid: str, *, deadline: Deadline) -> Pending:
        self._ask_guest(uuid, "shut down", "ShutdownGuest")
        return None

    @_bounded
    def reboot(self, uuid: str, *, deadline: Deadline) -> Pending:
        self._ask_guest(uuid, "reboot", "RebootGuest")
        return None

    @_bounded
    def reset(self, uuid: str, *, deadline: Deadline) -> Pending:
        return self._request(uuid, "ResetVM_Task", "reset")

    @_bounded
    def suspend(self, uuid: str, *, deadline: Deadline) -> Pending:
        return self._request(uuid, "SuspendVM_Task", "suspend")

    @_bounded
    def resume_suspended(self, uuid: str, *, deadline: Deadline) -> Pending:
        return self._request(uuid, "PowerOnVM_Task", "resume")

    # -- reconfiguration --------------------------------------------------------------------

    def _reconfigure(self, uuid: str, what: str, **fields: Any) -> Task:
        ref, props = self._props(uuid, ("name",))
        spec = self.conn.vim.vm.ConfigSpec(**fields)
        what = f"{what} of VM {props['name']!r}"
        return self._task(self.conn.start_task(lambda: ref.ReconfigVM_Task(spec=spec), what), what)

    def _apply_config(self, ref: Any, config: Any, what: str, deadline: Deadline) -> None:
        task = self.conn.start_task(lambda: ref.ReconfigVM_Task(spec=config), what)
        finish_task(self, self._task(task, what), deadline=deadline, what=what)

    @_bounded
    def set_vcpus(self, uuid: str, vcpus: int, *, live: bool, deadline: Deadline) -> Pending:
        return self._reconfigure(uuid, f"set vCPUs to {vcpus}", numCPUs=vcpus)

    @_bounded
    def set_memory(self, uuid: str, memory_mib: int, *, live: bool, deadline: Deadline) -> Pending:
        return self._reconfigure(uuid, f"set memory to {memory_mib} MiB", memoryMB=memory_mib)

    def _cpu_mhz(self) -> int:
        mhz = [int(p.get("summary.hardware.cpuMhz") or 0) for p in self.scope.host_props.values()]
        return max(min(mhz, default=0), 1)

    def _resources(self, cpu: Any, mem: Any) -> Resources:
        mhz = self._cpu_mhz()

        # vSphere's "nothing set" is reservation 0, limit -1 and shares at level normal: those
        # read as None, so a move or a backup does not carry a control the VM never had.
        def shares(alloc: Any) -> int | None:
            info = getattr(alloc, "shares", None) if alloc is not None else None
            value = getattr(info, "shares", None)
            if not value or getattr(info, "level", None) == "normal":
                return None
            return int(value)

        def num(alloc: Any, field: str) -> int | None:
            value = getattr(alloc, field, None) if alloc is not None else None
            return None if value is None or int(value) <= 0 else int(value)

        cpu_res, cpu_lim = num(cpu, "reservation"), num(cpu, "limit")
        mem_lim = num(mem, "limit")
        return Resources(
            cpu_shares=shares(cpu),
            cpu_reservation_percent=None if cpu_res is None else round(cpu_res * 100 / mhz),
            cpu_limit_percent=None if not cpu_lim else max(round(cpu_lim * 100 / mhz), 1),
            memory_shares=shares(mem),
            memory_reservation_mib=num(mem, "reservation"),
            memory_limit_mib=mem_lim if mem_lim else None,
        )

    def _allocations(self, res: Resources, cpu: Any, mem: Any) -> tuple[Any, Any]:
        """Allocation infos with ``res``'s set fields over the current ``cpu``/``mem``.

        Sent whole (not just the changed fields): some servers replace the allocation."""
        vim = self.conn.vim
        mhz = self._cpu_mhz()

        def build(
            current: Any, shares: int | None, reservation: int | None, limit: int | None
        ) -> Any:
            if shares is None and reservation is None and limit is None:
                return None
            out = vim.ResourceAllocationInfo()
            if current is not None:
                out.reservation = current.reservation
                out.limit = current.limit
                out.expandableReservation = current.expandableReservation
                out.shares = current.shares
            if shares is not None:
                out.shares = vim.SharesInfo(level="custom", shares=shares)
            if reservation is not None:
                out.reservation = reservation
            if limit is not None:
                out.limit = limit
            return out

        def to_mhz(percent: int | None) -> int | None:
            return None if percent is None else round(percent * mhz / 100)

        return (
            build(
                cpu,
                res.cpu_shares,
                to_mhz(res.cpu_reservation_percent),
                to_mhz(res.cpu_limit_percent),
            ),
            build(mem, res.memory_shares, res.memory_reservation_mib, res.memory_limit_mib),
        )

    @_bounded
    def set_resources(self, uuid: str, resources: Resources, *, deadline: Deadline) -> Pending:
        ref, props = self._props(uuid, ("name", "config.cpuAllocation", "config.memoryAllocation"))
        cpu, mem = self._allocations(
            resources, props.get("config.cpuAllocation"), props.get("config.memoryAllocation")
        )
        spec = self.conn.vim.vm.ConfigSpec()
        if cpu is not None:
            spec.cpuAllocation = cpu
        if mem is not None:
            spec.memoryAllocation = mem
        what = f"set resources of VM {props['name']!r}"
        return self._task(self.conn.start_task(lambda: ref.ReconfigVM_Task(spec=spec), what), what)

    # -- devices ----------------------------------------------------------------------------

    def _datastore(self, pool: str | None) -> str:
        sc = self.scope
        name = pool or self.default_datastore
        if name:
            if name not in sc.datastores:
                raise NotFound(
                    f"no datastore {name!r} on {sc.name} (datastores: "
                    f"{', '.join(sorted(sc.datastores))})"
                )
            return name
        usable = [(free, n) for n, (_, free, ok) in sc.datastores.items() if ok]
        if not usable:
            raise NotFound(f"no accessible datastore on {sc.name}")
        return str(max(usable)[1])

    def _controller_kind(self, bus: DiskBus, guest_os: GuestOS) -> str:
        if bus is DiskBus.VIRTIO:
            raise ValidationError("vSphere has no virtio disks; use scsi, sata or ide", field="bus")
        if bus in (DiskBus.DEFAULT, DiskBus.SCSI):
            return "scsi"
        return bus.value

    def _new_disk(
        self,
        disk: DiskSpec,
        key: int,
        controllers: dict[str, tuple[int, int]],
        used: set[tuple[int, int]],
        guest_os: GuestOS,
        existing: list[Any],
        vm_name: str,
    ) -> tuple[Any, str, Any]:
        """A device spec adding ``disk`` (and a controller spec when one is needed)."""
        vim = self.conn.vim
        dev = vim.vm.device
        if disk.source:
            raise ValidationError(
                "the esx driver creates blank disks only (source= is not supported)", field="source"
            )
        kind = self._controller_kind(disk.bus, guest_os)
        ctl_spec = None
        if kind not in controllers:
            if kind == "ide":
                ide = [d for d in existing if isinstance(d, dev.VirtualIDEController)]
                controllers["ide"] = (ide[0].key, ide[0].busNumber) if ide else (200, 0)
            else:
                cls = {
                    "scsi": dev.ParaVirtualSCSIController
                    if guest_os is GuestOS.LINUX
                    else dev.VirtualLsiLogicSASController,
                    "sata": dev.VirtualAHCIController,
                }[kind]
                ctl_key = -100 if kind == "scsi" else -101
                ctl = cls(key=ctl_key, busNumber=0)
                if kind == "scsi":
                    ctl.sharedBus = "noSharing"
                ctl_spec = dev.VirtualDeviceSpec(operation="add", device=ctl)
                controllers[kind] = (ctl_key, 0)
        ctl_key, bus_number = controllers[kind]
        limit = {"scsi": 16, "sata": 30, "ide": 2}[kind]
        unit = next(
            (
                u
                for u in range(limit)
                if (ctl_key, u) not in used and not (kind == "scsi" and u == 7)
            ),
            None,
        )
        if unit is None:
            raise ValidationError(f"no free unit on the {kind} controller", field="disks")
        used.add((ctl_key, unit))
        datastore = self._datastore(disk.pool)
        backing = dev.VirtualDisk.FlatVer2BackingInfo(
            fileName=f"[{datastore}]", diskMode="persistent", thinProvisioned=True
        )
        new = dev.VirtualDisk(
            key=key,
            controllerKey=ctl_key,
            unitNumber=unit,
            capacityInKB=disk.size_mib * 1024,
            backing=backing,
        )
        spec = dev.VirtualDeviceSpec(operation="add", fileOperation="create", device=new)
        return spec, f"{kind}{bus_number}:{unit}", ctl_spec

    def _disk_id(self, disk: Any, devices: Sequence[Any]) -> tuple[str, str]:
        dev = self.conn.vim.vm.device
        ctl = next((d for d in devices if d.key == disk.controllerKey), None)
        kind = "disk"
        if isinstance(ctl, dev.VirtualSCSIController):
            kind = "scsi"
        elif isinstance(ctl, dev.VirtualSATAController):
            kind = "sata"
        elif isinstance(ctl, dev.VirtualIDEController):
            kind = "ide"
        elif isinstance(ctl, dev.VirtualNVMEController):
            kind = "nvme"
        bus = getattr(ctl, "busNumber", 0) if ctl is not None else 0
        return f"{kind}{bus}:{disk.unitNumber}", kind

    def _disk_info(self, disk: Any, devices: Sequence[Any], extra: dict[str, str]) -> DiskInfo:
        disk_id, kind = self._disk_id(disk, devices)
        size_kb = disk.capacityInKB or (disk.capacityInBytes or 0) // 1024
        return DiskInfo(
            id=disk_id,
            size_mib=int(size_kb) // 1024,
            name=extra.get(_DISK_NAME_KEY.format(disk_id)),
            path=getattr(disk.backing, "fileName", None),
            bus=kind,
        )

    def _network_backing(self, network: str) -> Any:
        vim = self.conn.vim
        sc = self.scope
        if network in sc.dvpg:
            switch, key = sc.dvpg[network]
            return vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
                port=vim.dvs.PortConnection(switchUuid=switch, portgroupKey=key)
            )
        if network in sc.networks:
            return vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
                deviceName=network, network=sc.networks[network]
            )
        raise NotFound(
            f"no network (port group) {network!r} on {sc.name} (networks: "
            f"{', '.join(sorted({*sc.networks, *sc.dvpg}))})"
        )

    def _new_nic(self, nic: NicSpec, key: int) -> Any:
        dev = self.conn.vim.vm.device
        model = (nic.model or "vmxnet3").lower()
        classes = {
            "vmxnet3": dev.VirtualVmxnet3,
            "e1000": dev.VirtualE1000,
            "e1000e": dev.VirtualE1000e,
        }
        if model not in classes:
            raise ValidationError(
                f"unknown NIC model {nic.model!r} for vSphere; use one of {', '.join(_NIC_MODELS)}",
                field="model",
            )
        card = classes[model](key=key, backing=self._network_backing(nic.network))
        card.connectable = dev.VirtualDevice.ConnectInfo(
            startConnected=True, allowGuestControl=True
        )
        if nic.mac:
            refusal = vsphere_mac_refusal(nic.mac)
            if refusal:
                raise ValidationError(refusal, field="mac")
            card.addressType = "manual"
            card.macAddress = nic.mac
        else:
            card.addressType = "generated"
        return dev.VirtualDeviceSpec(operation="add", device=card)

    def _nic_info(self, card: Any) -> NicInfo:
        dev = self.conn.vim.vm.device
        backing = card.backing
        network = ""
        if isinstance(backing, dev.VirtualEthernetCard.NetworkBackingInfo):
            network = backing.deviceName or ""
        elif isinstance(backing, dev.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
            key = backing.port.portgroupKey
            network = self.scope.dvpg_names.get(key, key)
        model = (
            "vmxnet3"
            if isinstance(card, dev.VirtualVmxnet3)
            else "e1000e"
            if isinstance(card, dev.VirtualE1000e)
            else "e1000"
            if isinstance(card, dev.VirtualE1000)
            else type(card).__name__
        )
        return NicInfo(
            id=f"nic-{card.key}",
            network=network,
            mac=str(card.macAddress or "").lower(),
            model=model,
        )

    @_bounded
    def add_disk(self, uuid: str, disk: DiskSpec, *, live: bool, deadline: Deadline) -> DiskInfo:
        ref, props = self._props(uuid, ("name", "config.hardware.device", "config.guestId"))
        devices = list(props.get("config.hardware.device") or ())
        dev = self.conn.vim.vm.device
        controllers: dict[str, tuple[int, int]] = {}
        used: set[tuple[int, int]] = set()
        for d in devices:
            if getattr(d, "controllerKey", None) is not None and d.unitNumber is not None:
                used.add((d.controllerKey, d.unitNumber))
        for d in devices:
            if isinstance(d, dev.VirtualSCSIController) and "scsi" not in controllers:
                controllers["scsi"] = (d.key, d.busNumber)
            elif isinstance(d, dev.VirtualSATAController) and "sata" not in controllers:
                controllers["sata"] = (d.key, d.busNumber)
            elif (
                isinstance(d, dev.VirtualIDEController)
                and "ide" not in controllers
                and sum(1 for u in used if u[0] == d.key) < 2
            ):
                controllers["ide"] = (d.key, d.busNumber)
        guest = _GUEST_OS.get(str(props.get("config.guestId")), GuestOS.OTHER)
        if live and disk.bus is DiskBus.IDE:
            raise InvalidState(
                f"IDE disks cannot be added to running VM {props['name']!r}; "
                "use scsi or power it off",
                current=S.RUNNING,
            )
        spec, disk_id, ctl = self._new_disk(
            disk, -1, controllers, used, guest, devices, str(props["name"])
        )
        changes = [c for c in (ctl, spec) if c is not None]
        config = self.conn.vim.vm.ConfigSpec(deviceChange=changes)
        if disk.name:
            config.extraConfig = [
                self.conn.vim.option.OptionValue(
                    key=_DISK_NAME_KEY.format(disk_id), value=disk.name
                )
            ]
        what = f"add a disk to VM {props['name']!r}"
        self._make(
            lambda: ref.ReconfigVM_Task(spec=config),
            what,
            (("disk", f"{uuid}/{disk_id}"),),
            deadline,
        )
        config_after = self.get_config(uuid, deadline=deadline)
        for info in config_after.disks:
            if info.id == disk_id:
                return info
        raise NotFound(f"the new disk {disk_id} of VM {props['name']!r} did not appear")

    @_bounded
    def remove_disk(self, uuid: str, disk_id: str, *, live: bool, deadline: Deadline) -> None:
        ref, props = self._props(uuid, ("name", "config.hardware.device"))
        devices = list(props.get("config.hardware.device") or ())
        dev = self.conn.vim.vm.device
        for d in devices:
            if isinstance(d, dev.VirtualDisk) and self._disk_id(d, devices)[0] == disk_id:
                spec = dev.VirtualDeviceSpec(operation="remove", fileOperation="destroy", device=d)
                config = self.conn.vim.vm.ConfigSpec(
                    deviceChange=[spec],
                    extraConfig=[
                        self.conn.vim.option.OptionValue(
                            key=_DISK_NAME_KEY.format(disk_id), value=""
                        )
                    ],
                )
                self._apply_config(
                    ref, config, f"remove disk {disk_id} of VM {props['name']!r}", deadline
                )
                return
        raise NotFound(f"VM {props['name']!r} has no disk {disk_id!r}")

    @_bounded
    def add_nic(self, uuid: str, nic: NicSpec, *, live: bool, deadline: Deadline) -> NicInfo:
        ref, props = self._props(uuid, ("name", "config.hardware.device"))
        dev = self.conn.vim.vm.device
        before = {
            d.key
            for d in props.get("config.hardware.device") or ()
            if isinstance(d, dev.VirtualEthernetCard)
        }
        spec = self._new_nic(nic, -1)
        config = self.conn.vim.vm.ConfigSpec(deviceChange=[spec])
        self._apply_config(ref, config, f"add a NIC to VM {props['name']!r}", deadline)
        _, after = self._props(uuid, ("config.hardware.device",))
        new = [
            d
            for d in after.get("config.hardware.device") or ()
            if isinstance(d, dev.VirtualEthernetCard) and d.key not in before
        ]
        if not new:
            raise NotFound(f"the new NIC of VM {props['name']!r} did not appear")
        return self._nic_info(new[0])

    @_bounded
    def remove_nic(self, uuid: str, nic_id: str, *, live: bool, deadline: Deadline) -> None:
        ref, props = self._props(uuid, ("name", "config.hardware.device"))
        dev = self.conn.vim.vm.device
        for d in props.get("config.hardware.device") or ():
            if isinstance(d, dev.VirtualEthernetCard) and f"nic-{d.key}" == nic_id:
                spec = dev.VirtualDeviceSpec(operation="remove", device=d)
                config = self.conn.vim.vm.ConfigSpec(deviceChange=[spec])
                self._apply_config(
                    ref, config, f"remove NIC {nic_id} of VM {props['name']!r}", deadline
                )
                return
        raise NotFound(f"VM {props['name']!r} has no NIC {nic_id!r}")

    # -- snapshots --------------------------------------------------------------------------

    def _snapshots(self, uuid: str) -> tuple[Any, str, list[tuple[Any, SnapshotInfo]]]:
        ref, props = self._props(
            uuid, ("name", "snapshot.rootSnapshotList", "snapshot.currentSnapshot")
        )
        current = props.get("snapshot.currentSnapshot")
        current_id = _moid(current) if current is not None else None
        out: list[tuple[Any, SnapshotInfo]] = []

        def walk(trees: Iterable[Any], parent: str | None) -> None:
            for tree in trees:
                sid = _moid(tree.snapshot)
                state = _POWER.get(str(tree.state), S.STOPPED)
                created = tree.createTime
                if created.tzinfo is None:
                    created = created.replace(tzinfo=dt.UTC)
                out.append(
                    (
                        tree.snapshot,
                        SnapshotInfo(
                            id=sid,
                            name=str(tree.name),
                            created=created,
                            parent=parent,
                            with_memory=state is not S.STOPPED,
                            state=state,
                            description=str(tree.description or ""),
                            current=sid == current_id,
                        ),
                    )
                )
                walk(tree.childSnapshotList or (), sid)

        walk(props.get("snapshot.rootSnapshotList") or (), None)
        return ref, str(props["name"]), out

    @_bounded
    def create_snapshot(
        self, uuid: str, name: str, *, memory: bool, description: str, deadline: Deadline
    ) -> SnapshotInfo:
        ref, props = self._props(uuid, ("name",))
        what = f"snapshot VM {props['name']!r}"
        task = self.conn.start_task(
            lambda: ref.CreateSnapshot_Task(
                name=name, description=description, memory=memory, quiesce=False
            ),
            what,
        )
        snap = finish_task(self, self._task(task, what), deadline=deadline, what=what).result
        for obj, info in self._snapshots(uuid)[2]:
            if _moid(obj) == _moid(snap):
                return info
        raise NotFound(f"the new snapshot {name!r} of VM {props['name']!r} did not appear")

    @_bounded
    def list_snapshots(self, uuid: str, *, deadline: Deadline) -> list[SnapshotInfo]:
        return [info for _, info in self._snapshots(uuid)[2]]

    def _snapshot(self, uuid: str, snapshot_id: str) -> tuple[Any, str, SnapshotInfo]:
        _, vm_name, snaps = self._snapshots(uuid)
        for obj, info in snaps:
            if info.id == snapshot_id:
                return obj, vm_name, info
        raise NotFound(f"VM {vm_name!r} has no snapshot {snapshot_id!r}")

    @_bounded
    def revert_snapshot(self, uuid: str, snapshot_id: str, *, deadline: Deadline) -> Pending:
        obj, vm_name, info = self._snapshot(uuid, snapshot_id)
        what = f"revert VM {vm_name!r} to {info.name!r}"
        task = self.conn.start_task(lambda: obj.RevertToSnapshot_Task(suppressPowerOn=False), what)
        return self._task(task, what)

    @_bounded
    def delete_snapshot(self, uuid: str, snapshot_id: str, *, deadline: Deadline) -> Pending:
        obj, vm_name, info = self._snapshot(uuid, snapshot_id)
        what = f"delete snapshot {info.name!r} of VM {vm_name!r}"
        task = self.conn.start_task(lambda: obj.RemoveSnapshot_Task(removeChildren=False), what)
        return self._task(task, what)

    # -- clone and migrate ------------------------------------------------------------------

    @_bounded
    def clone_vm(self, uuid: str, name: str, *, linked: bool, deadline: Deadline) -> VMInfo:
        vim = self.conn.vim
        ref, props = self._props(uuid, ("name", "config.hardware.device"))
        if linked:
            raise ValidationError(
                "linked clones are not declared by the esx driver", field="linked"
            )
        # Ask for new generated MACs (vSphere does so for generated ones; manual ones would
        # otherwise be copied).
        changes = []
        for d in props.get("config.hardware.device") or ():
            if isinstance(d, vim.vm.device.VirtualEthernetCard):
                d.addressType = "generated"
                d.macAddress = None
                changes.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=d))
        location = vim.vm.RelocateSpec(pool=self.scope.pool)
        if self.scope.kind == "host":
            location.host = next(iter(self.scope.host_refs.values()))
        new_uuid = str(uuidlib.uuid4())
        spec = vim.vm.CloneSpec(
            location=location,
            powerOn=False,
            template=False,
            config=vim.vm.ConfigSpec(deviceChange=changes, instanceUuid=new_uuid),
        )
        folder = self.conn.ref(vim.Folder, _moid(self.scope.vm_folder))
        what = f"clone VM {props['name']!r} as {name!r}"
        new = self._make(
            lambda: ref.CloneVM_Task(folder=folder, name=name, spec=spec),
            what,
            (("vm", new_uuid),),
            deadline,
        )
        try:
            info = self._info(self.conn.retrieve_one(new, vim.VirtualMachine, _LIST_PATHS))
        except VmctlError as exc:
            raise self._undo(new, exc, what, (("vm", new_uuid),), deadline) from exc
        except Exception as exc:
            raise self._undo(
                new, map_fault(exc, what), what, (("vm", new_uuid),), deadline
            ) from exc
        self._remember(info.uuid, new)
        return info

    @_bounded
    def migrate_vm(self, uuid: str, target: Driver, *, live: bool, deadline: Deadline) -> Pending:
        if not isinstance(target, EsxDriver):
            raise ValidationError("the target must be an esx/vcenter connection", field="target")
        if (
            not self.conn.is_vcenter
            or not target.conn.is_vcenter
            or str(self.conn.about.instanceUuid) != str(target.conn.about.instanceUuid)
        ):
            raise ValidationError(
                "migration needs both connections on the same vCenter "
                "(vcenter://host/DC/CLUSTER[/HOST])",
                field="target",
            )
        if set(target.scope.hosts) == set(self.scope.hosts):
            raise ValidationError("the target manages the same hosts as the source", field="target")
        vim = self.conn.vim
        ref, props = self._props(uuid, ("name", "datastore"))
        dest = target.scope
        spec = vim.vm.RelocateSpec(pool=self.conn.ref(vim.ResourcePool, _moid(dest.pool)))
        if dest.kind == "host":
            spec.host = self.conn.ref(vim.HostSystem, next(iter(dest.hosts)))
        reachable = {_moid(ds) for ds, _, ok in dest.datastores.values() if ok}
        if not all(_moid(ds) in reachable for ds in props.get("datastore") or ()):
            spec.datastore = self.conn.ref(
                vim.Datastore, _moid(dest.datastores[target._datastore(None)][0])
            )
        what = f"migrate VM {props['name']!r} to {dest.name}"
        task = self.conn.start_task(
            lambda: ref.RelocateVM_Task(spec=spec, priority="defaultPriority"), what
        )
        target._remember(uuid, ref)
        return self._task(task, what)

    # -- observation ------------------------------------------------------------------------

    @_bounded
    def wait_tasks(self, tasks: Sequence[Task], *, deadline: Deadline) -> list[TaskOutcome]:
        """One RetrievePropertiesEx of the tasks' ``info.state``; if none has ended, one
        WaitForUpdatesEx long poll on a private PropertyCollector, bounded by ``deadline``."""
        if not tasks:
            return []
        vim = self.conn.vim
        paths = ("info.state", "info.error", "info.result")
        refs = [t.handle for t in tasks]
        by_moid = {_moid(t.handle): t for t in tasks}

        def ended(state: dict[str, dict[str, Any]]) -> list[TaskOutcome]:
            out = []
            for moid, props in state.items():
                task = by_moid.get(moid)
                if task is None:
                    continue
                if props.get("__gone__"):
                    out.append(
                        TaskOutcome(task, error=NotFound(f"{task.description}: the task is gone"))
                    )
                    continue
                status = str(props.get("info.state"))
                if status == "success":
                    out.append(TaskOutcome(task, result=props.get("info.result")))
                elif status == "error":
                    fault = props.get("info.error")
                    if isinstance(fault, BaseException):
                        error = map_fault(fault, task.description)
                        error.__cause__ = fault
                    else:
                        error = map_fault(RuntimeError(f"task failed: {fault!r}"), task.description)
                    out.append(TaskOutcome(task, error=error))
            return out

        try:
            state = self._move_states(tasks)
            if state is None:
                rows = self.conn.retrieve(refs, vim.Task, paths)
                state = {_moid(obj): props for obj, props in rows}
            done = ended(state)
            if done or deadline.expired():
                self._moved(done)
                return done
            changed = self.conn.wait_update(
                refs, vim.Task, paths, deadline, lambda st: bool(ended(st))
            )
        except OperationTimeout:
            if deadline.expired():
                return []
            raise
        except Exception as exc:
            reraise(exc, f"wait for {', '.join(t.description for t in tasks)}")
        done = ended(changed) if changed is not None else []
        self._moved(done)
        return done

    def _moving(self, task: Any, uuid: str, ref: Any, host: Any) -> None:
        """``move_to_host`` started ``task``: VM ``uuid`` (``ref``) to ``host``."""
        with self._moves_lock:
            if len(self._moves) > _MOVES_KEPT:  # tasks nobody waited for
                self._moves.clear()
            self._moves[_moid(task)] = (uuid, ref, _moid(host))

    def _moved(self, done: Sequence[TaskOutcome]) -> None:
        if done:
            with self._moves_lock:
                for outcome in done:
                    self._moves.pop(_moid(outcome.task.handle), None)

    def _move_states(self, tasks: Sequence[Task]) -> dict[str, dict[str, Any]] | None:
        """The ``info.state`` of tasks that are all ``move_to_host``'s, read with their VMs
        in one fast read (``_fastmove``): a VM its ended move shows on the target is noted
        for the ``locate_vm`` that checks the move next. None when the SDK path must read
        them (the fast path is off or answered nothing, a task is not a move, one failed:
        its fault is read by pyvmomi)."""
        with self._moves_lock:
            moves = [self._moves.get(_moid(t.handle)) for t in tasks]
        if not self._fast_move.enabled:
            return None
        known = [m for m in moves if m is not None]
        if len(known) != len(moves):
            return None
        vim = self.conn.vim
        vms = list({_moid(m[1]): m[1] for m in known}.values())
        rows = self._fast_move.retrieve(
            [
                ([t.handle for t in tasks], vim.Task, ("info.state",)),
                (vms, vim.VirtualMachine, _LOCATE_PATHS),
            ]
        )
        if rows is None:
            return None
        state = {_moid(r): p for r, p in rows if isinstance(r, vim.Task)}
        found = {_moid(r): p for r, p in rows if isinstance(r, vim.VirtualMachine)}
        for task, (uuid, ref, host_id) in zip(tasks, known, strict=True):
            status = str(state.get(_moid(task.handle), {}).get("info.state"))
            if status == "error" or _moid(task.handle) not in state:
                return None
            props = found.get(_moid(ref))
            at = props.get("runtime.host") if props else None
            if (
                status == "success"
                and props
                and at is not None
                and _moid(at) == host_id
                and not props.get("config.template")
                and self._in_scope(props)
            ):
                self._notes.ended(uuid, props)
        return state

    @_bounded
    def wait_changes(
        self, known: Mapping[str, VMInfo], *, deadline: Deadline
    ) -> dict[str, VMInfo | None]:
        """One read of the VMs' power states; if none differs from ``known``, one
        WaitForUpdatesEx long poll on ``runtime.powerState`` (and ``connectionState``),
        bounded by ``deadline``. Only the state is compared (vSphere reports no reason)."""
        vim = self.conn.vim
        refs: dict[str, Any] = {}
        out: dict[str, VMInfo | None] = {}
        for uuid in known:
            try:
                refs[uuid] = self._ref(uuid)
            except NotFound:
                out[uuid] = None
        if out:
            return out
        moids = {_moid(r): u for u, r in refs.items()}

        def differ(state: dict[str, dict[str, Any]]) -> list[str]:
            return [
                moids[m]
                for m, p in state.items()
                if m in moids and (p.get("__gone__") or _state(p) is not known[moids[m]].state)
            ]

        paths = ("runtime.powerState", "runtime.connectionState")
        try:
            state = {
                _moid(o): p
                for o, p in self.conn.retrieve(list(refs.values()), vim.VirtualMachine, paths)
            }
            for uuid, ref in refs.items():
                if _moid(ref) not in state:
                    out[uuid] = None  # gone
            changed = differ(state)
            if not changed and not out and not deadline.expired():
                after = self.conn.wait_update(
                    list(refs.values()),
                    vim.VirtualMachine,
                    paths,
                    deadline,
                    lambda st: bool(differ(st)),
                )
                changed = differ(after) if after is not None else []
        except OperationTimeout:
            if deadline.expired():
                return out
            raise
        except Exception as exc:
            if is_fault(exc, "ManagedObjectNotFound"):
                return self._infos_or_none(list(known), deadline)
            reraise(exc, "wait for VM state changes")
        if changed:
            out.update(self._infos_or_none(changed, deadline))
        return out

    def _infos_or_none(self, uuids: Sequence[str], deadline: Deadline) -> dict[str, VMInfo | None]:
        out: dict[str, VMInfo | None] = {}
        for uuid in uuids:
            try:
                out[uuid] = self.get_vm(uuid, deadline=deadline)
            except NotFound:
                out[uuid] = None
        return out

    @_bounded
    def subscribe(self, *, deadline: Deadline) -> EventSource:
        try:
            return _EventSource(self)
        except Exception as exc:
            reraise(exc, f"subscribe to events of {self.scope.name}")

    def _uuids_by_moid(self) -> dict[str, str]:
        with self._refs_lock:
            return dict(self._seen)

    def _uuid_of(self, ref: Any) -> str | None:
        """The instance UUID of a VM moref (one round trip), None if it is gone."""
        try:
            props = self.conn.retrieve_one(
                ref, self.conn.vim.VirtualMachine, ("config.instanceUuid",)
            )
        except Exception:
            return None
        uuid = props.get("config.instanceUuid")
        if not uuid:
            return None
        self._remember(str(uuid), ref)
        return str(uuid)

    def _perf_counters(self) -> dict[str, int]:
        if self._perf is None:
            pm = self.conn.content.perfManager
            props = self._call(
                "read performance counters",
                self.conn.retrieve_one,
                pm,
                self.conn.vim.PerformanceManager,
                ("perfCounter",),
            )
            out = {}
            for c in props.get("perfCounter") or ():
                out[f"{c.groupInfo.key}.{c.nameInfo.key}.{c.rollupType}"] = int(c.key)
            self._perf = out
        return self._perf

    @_bounded
    def get_stats(self, uuids: Sequence[str], *, deadline: Deadline) -> dict[str, VMStats]:
        counters = self._perf_counters()
        wanted = {"mem.consumed.average": "memory_used_mib"}
        ids = {counters[k]: v for k, v in wanted.items() if k in counters}
        refs = {uuid: self._ref(uuid) for uuid in uuids}
        now = dt.datetime.now(dt.UTC)
        out = {uuid: VMStats(uuid=uuid, timestamp=now) for uuid in uuids}
        if not refs or not ids:
            return out
        pm, fast = self.conn.content.perfManager, self._fast_stats
        entities, counter_ids = list(refs.values()), list(ids)
        metrics = self._call(
            "query performance counters", fast.latest, pm, entities, counter_ids, 20
        )
        if metrics is None:
            specs = fast.specs(entities, counter_ids, 20)
            result = self._call("query performance counters", pm.QueryPerf, querySpec=specs)
            metrics = sdk_metrics(result)
        by_moid = {_moid(ref): uuid for uuid, ref in refs.items()}
        for moid, stamp, series in metrics:
            uuid = by_moid.get(moid)
            if uuid is None:
                continue
            values = {name: series[c] for c, name in ids.items() if c in series}
            mem_kb = values.get("memory_used_mib")
            out[uuid] = VMStats(
                uuid=uuid,
                timestamp=stamp or now,
                memory_used_mib=None if mem_kb is None else mem_kb // 1024,
            )
        return out

    @_bounded
    def guest_info(self, uuid: str, *, deadline: Deadline) -> GuestInfo:
        _, props = self._props(
            uuid,
            (
                "guest.toolsRunningStatus",
                "guest.ipAddress",
                "guest.net",
                "guest.hostName",
                "guest.guestFullName",
                "runtime.powerState",
            ),
        )
        running = str(props.get("guest.toolsRunningStatus")) == "guestToolsRunning"
        ips: list[str] = []
        for nic in props.get("guest.net") or ():
            for ip in nic.ipAddress or ():
                if ip not in ips:
                    ips.append(str(ip))
        primary = props.get("guest.ipAddress")
        if primary and str(primary) not in ips:
            ips.insert(0, str(primary))
        if _state(props) is not S.RUNNING:
            ips = []
        return GuestInfo(
            ip_addresses=tuple(ips),
            agent=AgentState.RUNNING if running else AgentState.NOT_RUNNING,
            hostname=props.get("guest.hostName") or None,
            os_name=props.get("guest.guestFullName") or None,
        )


# -- events ---------------------------------------------------------------------------------

_EVENT_KINDS: dict[str, tuple[EventKind, PowerState | None, StateReason | None]] = {
    "VmCreatedEvent": (EventKind.CREATED, None, None),
    "VmClonedEvent": (EventKind.CREATED, None, None),
    "VmRegisteredEvent": (EventKind.CREATED, None, None),
    "VmDeployedEvent": (EventKind.CREATED, None, None),
    "VmRemovedEvent": (EventKind.DELETED, None, None),
    "VmPoweredOnEvent": (EventKind.STATE_CHANGED, S.RUNNING, StateReason.BOOTED),
    "VmPoweredOffEvent": (EventKind.STATE_CHANGED, S.STOPPED, StateReason.POWERED_OFF),
    "VmSuspendedEvent": (EventKind.STATE_CHANGED, S.SUSPENDED, StateReason.SAVED),
    "VmResettingEvent": (EventKind.STATE_CHANGED, S.RUNNING, StateReason.BOOTED),
    "VmReconfiguredEvent": (EventKind.RECONFIGURED, None, None),
    "VmMigratedEvent": (EventKind.MIGRATED, None, StateReason.MIGRATED),
    "VmRelocatedEvent": (EventKind.MIGRATED, None, StateReason.MIGRATED),
    "DrsVmMigratedEvent": (EventKind.MIGRATED, None, StateReason.MIGRATED),
}
#: The watched ``latestPage``: small, for every update carries the whole page (the simulator
#: once per change in it) and pyVmomi rebuilds each event each time. A page that arrives full
#: with nothing seen in it may have pushed out events: those are read by ``_catch_up``.
_PAGE_SIZE = 10
#: Events per ReadNextEvents of the catch-up, the most read in one catch-up, and the page of
#: its collector (the simulator reads only that page and ignores the time filter; 1000 is
#: the largest page the API accepts).
_CATCH_UP_READ = 100
_CATCH_UP_MAX = 10_000
_CATCH_UP_PAGE = 1000
#: The catch-up's time filter starts this much before the last event seen (the server's
#: clock is not ours; events are then told apart by key, or by time after a restart).
_CATCH_UP_MARGIN = dt.timedelta(minutes=5)


class _EventSource:
    """VM events from the host's event log: an EventHistoryCollector whose ``latestPage`` is
    watched with WaitForUpdatesEx on a private PropertyCollector (no polling). The page is
    small (``_PAGE_SIZE``), a trigger: when it arrives full with no event in it seen, a
    catch-up collector of the events since the last one seen is read with ReadNextEvents
    (``_catch_up``), so a burst larger than the page loses nothing. Events are taken in key
    order, each once, none logged before the subscription (the server's clock); only those
    of this connection's hosts are kept.

    The collectors belong to the session. When the session expires or the host restarts,
    the next ``next_event`` logs in again (unless the core already did) and makes them
    again; events logged meanwhile are delivered from the new collector's first page (those
    created after the last event seen). While the host does not answer, ``next_event``
    returns None; only refused credentials end the subscription."""

    def __init__(self, driver: EsxDriver) -> None:
        self.d = driver
        self.queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.collector: Any = None
        self.pc: Any = None
        self.closed = False
        self.broken = False
        self.version = ""
        self.last_key = -1
        self.since: dt.datetime | None = None  # createdTime of the last event seen
        # The server's time at the subscription: nothing older is new (the simulator's
        # first page of a collector is not the latest events, so its keys cannot tell).
        self.floor: dt.datetime | None = None
        self.generation = driver.conn.generation
        self._open(resume=False)

    def _filter(self, page: int, since: dt.datetime | None = None) -> Any:
        """This source's EventFilterSpec: VM events of the scope, ``since`` onwards if given."""
        conn = self.d.conn
        vim = conn.vim
        entity = self.d.scope.datacenter if conn.is_vcenter else conn.content.rootFolder
        spec = vim.event.EventFilterSpec(
            entity=vim.event.EventFilterSpec.ByEntity(entity=entity, recursion="all"),
            eventTypeId=list(_EVENT_KINDS),
            maxCount=page,
        )
        if since is not None:
            spec.time = vim.event.EventFilterSpec.ByTime(beginTime=since)
        return spec

    def _open(self, *, resume: bool) -> None:
        conn = self.d.conn
        self.generation = conn.generation
        self.collector = self.pc = None
        try:
            self.collector = conn.content.eventManager.CreateCollectorForEvents(
                filter=self._filter(_PAGE_SIZE)
            )
            # The trigger: a change of latestPage wakes the poll; a burst larger than the
            # page between two polls is read by _catch_up.
            self.collector.SetCollectorPageSize(maxCount=_PAGE_SIZE)
            self.pc = conn.pc.CreatePropertyCollector()
            self.pc.CreateFilter(
                conn.filter_spec(
                    [self.collector], conn.vim.event.EventHistoryCollector, ("latestPage",)
                ),
                partialUpdates=False,
            )
            self.version = ""
            if not resume:
                now = conn.vim.ServiceInstance("ServiceInstance", conn.stub).CurrentTime()
                self.floor = _aware(now)
            self._poll(0, resume=resume)  # the baseline (or, resuming, what was missed)
        except BaseException:
            self._destroy()
            raise
        self.broken = False

    def _poll(self, wait: int, *, resume: bool = False) -> None:
        pcq = self.d.conn.vmodl.query.PropertyCollector
        update = self.pc.WaitForUpdatesEx(
            version=self.version, options=pcq.WaitOptions(maxWaitSeconds=wait)
        )
        baseline = not self.version
        if update is None:
            if baseline:
                self.version = "-"
                if self.since is None:
                    self.since = dt.datetime.now(dt.UTC)
            return
        self.version = update.version
        events: list[Any] = []
        for _, _, changes in apply_update(update):
            events.extend(changes.get("latestPage") or ())
        # An update may carry the page several times (one per change): each key once.
        unique = {int(e.key): e for e in events}
        ordered = [unique[k] for k in sorted(unique)]
        by_time = baseline and resume
        if by_time:
            # A new collector (new session, or a restarted host whose keys start again):
            # what was logged after the last event seen.
            since = self.since
            fresh = [e for e in ordered if since is None or _created(e) > since]
        else:
            fresh = [e for e in ordered if self._unseen(e)]
        if by_time or (not baseline and len(ordered) >= _PAGE_SIZE and len(fresh) == len(ordered)):
            # A full page and nothing in it seen: older unseen events may have left it.
            # A new collector is always caught up (its first page need not hold the latest
            # events: the simulator's holds the oldest it has).
            fresh = self._catch_up(fresh, by_time=by_time)
            ordered = fresh
        if ordered:
            self.last_key = int(ordered[-1].key)
        for e in fresh or ordered[-1:]:
            created = _created(e)
            if self.since is None or created > self.since:
                self.since = created
        if baseline and not resume:
            floor = self.floor or dt.datetime.now(dt.UTC)
            if self.since is None or self.since < floor:
                self.since = floor
            return
        self._deliver(fresh)

    def _catch_up(self, fresh: list[Any], *, by_time: bool) -> list[Any]:
        """``fresh`` with the unseen events that left the page before it was read, in key
        order, each once: a collector of the events since the last one seen (less a margin)
        read from its oldest item with ReadNextEvents to its end, then destroyed. Unseen
        means a key above the last seen, or after a restart (``by_time``) a later time."""
        since = self.since
        begin = None if since is None else since - _CATCH_UP_MARGIN
        collector = self.d.conn.content.eventManager.CreateCollectorForEvents(
            filter=self._filter(_CATCH_UP_PAGE, begin)
        )
        unique = {int(e.key): e for e in fresh}
        read = 0
        try:
            # The simulator reads only the latest page, of 10 events unless set.
            collector.SetCollectorPageSize(maxCount=_CATCH_UP_PAGE)
            collector.RewindCollector()
            while read < _CATCH_UP_MAX:
                batch = collector.ReadNextEvents(maxCount=_CATCH_UP_READ) or ()
                if not batch:
                    break
                read += len(batch)
                for e in batch:
                    if by_time:
                        if since is None or _created(e) > since:
                            unique[int(e.key)] = e
                    elif self._unseen(e):
                        unique[int(e.key)] = e
        finally:
            try:
                collector.DestroyCollector()
            except Exception as exc:
                log.debug("destroying the catch-up event collector failed: %s", exc)
        if read >= _CATCH_UP_MAX:
            log.warning(
                "events of %s: catch-up stopped after %d events; later ones may be missing",
                self.d.scope.name,
                read,
            )
        log.debug(
            "events of %s: page full, %d read to catch up, %d new",
            self.d.scope.name,
            read,
            len(unique) - len(fresh),
        )
        return [unique[k] for k in sorted(unique)]

    def _unseen(self, e: Any) -> bool:
        """Not delivered yet: a key above the last seen, logged after the subscription."""
        floor = self.floor
        return int(e.key) > self.last_key and (floor is None or _created(e) >= floor)

    def _deliver(self, events: list[Any]) -> None:
        scope = self.d.scope
        by_ref = self.d._uuids_by_moid()
        for ev in events:
            kind = _EVENT_KINDS.get(type(ev).__name__.rsplit(".", 1)[-1])
            if kind is None or ev.vm is None:
                continue
            hosts = {
                _moid(a.host)
                for a in (ev.host, getattr(ev, "sourceHost", None))
                if a is not None and a.host is not None
            }
            if not hosts & set(scope.hosts):
                continue
            moid = _moid(ev.vm.vm)
            uuid = by_ref.get(moid) or self.d._uuid_of(ev.vm.vm)
            if uuid is None:
                log.debug("event %s for unknown VM %s skipped", type(ev).__name__, moid)
                continue
            event_kind, state, reason = kind
            self.queue.put(
                Event(
                    kind=event_kind,
                    vm_uuid=uuid,
                    vm_name=ev.vm.name,
                    timestamp=_created(ev),
                    state=state,
                    reason=reason,
                    detail=str(ev.fullFormattedMessage or type(ev).__name__),
                )
            )

    def _repair(self) -> None:
        """New collectors after the session or the host was lost (a new session first,
        unless the core has made one since these collectors were)."""
        conn = self.d.conn
        self._destroy()
        try:
            self._open(resume=True)
            return
        except ConnectionError as exc:
            if exc.sent is not False and exc.vendor_code != "NotAuthenticated":
                raise
        except NotFound:
            pass  # a restarted host does not know the old session's objects
        conn.login(conn.deadline, self.generation)
        self._open(resume=True)

    def next_event(self, timeout: float) -> Event | None:
        deadline = time.monotonic() + max(timeout, 0.0)
        # Each SOAP call: the poll's own wait (whole seconds, rounded up) plus a margin.
        with self.d.conn.within(Deadline.after(max(timeout, 0.0) + 1.5)):
            while not self.closed:  # reads the queue until the deadline (one try to repair)
                try:
                    return self.queue.get_nowait()
                except queue.Empty:
                    pass
                left = deadline - time.monotonic()
                try:
                    if self.broken:
                        self._repair()
                    else:
                        self._poll(0 if left <= 0 else max(1, min(MAX_POLL_S, int(left + 0.999))))
                except AuthenticationError:
                    raise
                except (VmctlError, Exception) as exc:
                    # The session expired, the host restarted or does not answer: make the
                    # collectors again on a later call.
                    err = map_fault(exc, "read events")
                    if not isinstance(err, (ConnectionError, NotFound, OperationTimeout)):
                        raise err from exc
                    log.info("events of %s: %s; subscribing again", self.d.scope.name, err)
                    self.broken = True
                    # Nothing can come before the timeout: the next call tries again.
                    time.sleep(max(0.0, deadline - time.monotonic()))
                if time.monotonic() >= deadline:
                    try:
                        return self.queue.get_nowait()
                    except queue.Empty:
                        return None
        return None

    def _destroy(self) -> None:
        for what, obj, method in (
            ("property collector", self.pc, "DestroyPropertyCollector"),
            ("event collector", self.collector, "DestroyCollector"),
        ):
            if obj is None:
                continue
            try:
                getattr(obj, method)()
            except Exception as exc:
                log.debug("destroying the %s failed: %s", what, exc)
        self.pc = self.collector = None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with self.d.conn.within(Deadline.after(10)):
            self._destroy()


def _created(ev: Any) -> dt.datetime:
    created = ev.createdTime
    if created is None:
        return dt.datetime.now(dt.UTC)
    return _aware(created)


def _aware(when: Any) -> dt.datetime:
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when  # type: ignore[no-any-return]


# -- scope ----------------------------------------------------------------------------------


def _resolve_scope(conn: Connection, parts: list[str]) -> _Scope:
    vim = conn.vim
    sc = _Scope()
    what = f"find {'/'.join(parts) or 'the host'} on {conn.where}"
    try:
        if parts:
            index = conn.content.searchIndex
            dc = index.FindByInventoryPath(inventoryPath=parts[0])
            if dc is None or not isinstance(dc, vim.Datacenter):
                raise NotFound(f"no datacenter {parts[0]!r} on {conn.where}")
            entity = index.FindByInventoryPath(
                inventoryPath="/".join([parts[0], "host", *parts[1:]])
            )
            if entity is None:
                raise NotFound(
                    f"no cluster or host {'/'.join(parts[1:])!r} in datacenter "
                    f"{parts[0]!r} on {conn.where}"
                )
        else:
            root = conn.retrieve_one(conn.content.rootFolder, vim.Folder, ("childEntity",))
            dcs = [e for e in root.get("childEntity") or () if isinstance(e, vim.Datacenter)]
            if not dcs:
                raise NotFound(f"no datacenter on {conn.where}")
            dc = dcs[0]
            hf = conn.retrieve_one(dc, vim.Datacenter, ("hostFolder",))["hostFolder"]
            kids = conn.retrieve_one(hf, vim.Folder, ("childEntity",)).get("childEntity") or ()
            crs = [k for k in kids if isinstance(k, vim.ComputeResource)]
            if not crs:
                raise NotFound(f"no host on {conn.where}")
            entity = crs[0]
        dcp = conn.retrieve_one(dc, vim.Datacenter, ("vmFolder", "name"))
        sc.datacenter = dc
        sc.vm_folder = dcp["vmFolder"]
        sc.view_root = dc if parts else conn.content.rootFolder
        sc.entity = entity
        if isinstance(entity, vim.HostSystem):
            hp = conn.retrieve_one(entity, vim.HostSystem, ("name", "parent"))
            cr = conn.retrieve_one(hp["parent"], vim.ComputeResource, ("resourcePool",))
            sc.kind, sc.name, sc.pool = "host", str(hp["name"]), cr["resourcePool"]
            hosts = [entity]
        elif isinstance(entity, vim.ComputeResource):
            cp = conn.retrieve_one(entity, vim.ComputeResource, ("name", "host", "resourcePool"))
            hosts = list(cp.get("host") or ())
            sc.pool = cp["resourcePool"]
            is_cluster = isinstance(entity, vim.ClusterComputeResource)
            sc.kind = "cluster" if is_cluster else "host"
            sc.name = str(cp["name"])
        else:
            raise ValidationError(
                f"{'/'.join(parts)!r} is a {type(entity).__name__}, not a cluster or host",
                field="uri",
            )
        host_paths = ("name", "summary.hardware.cpuMhz", "network", "datastore")
        networks: dict[str, Any] = {}
        datastores: dict[str, Any] = {}
        for ref, props in conn.retrieve(hosts, vim.HostSystem, host_paths):
            sc.hosts[_moid(ref)] = str(props.get("name"))
            sc.host_refs[_moid(ref)] = ref
            sc.host_props[_moid(ref)] = props
            for n in props.get("network") or ():
                networks[_moid(n)] = n
            for d in props.get("datastore") or ():
                datastores[_moid(d)] = d
        if sc.kind == "host" and len(sc.hosts) == 1 and not isinstance(entity, vim.HostSystem):
            sc.name = next(iter(sc.hosts.values()))
        for ref, props in conn.retrieve(list(networks.values()), vim.Network, ("name",)):
            if isinstance(ref, vim.dvs.DistributedVirtualPortgroup):
                continue
            sc.networks[str(props.get("name"))] = ref
        pgs = [n for n in networks.values() if isinstance(n, vim.dvs.DistributedVirtualPortgroup)]
        rows = conn.retrieve(
            pgs,
            vim.dvs.DistributedVirtualPortgroup,
            ("name", "key", "config.distributedVirtualSwitch"),
        )
        switches = {
            _moid(p["config.distributedVirtualSwitch"]): p["config.distributedVirtualSwitch"]
            for _, p in rows
            if p.get("config.distributedVirtualSwitch") is not None
        }
        uuids = {
            _moid(r): str(p.get("uuid"))
            for r, p in conn.retrieve(
                list(switches.values()), vim.DistributedVirtualSwitch, ("uuid",)
            )
        }
        for _, p in rows:
            switch = p.get("config.distributedVirtualSwitch")
            if switch is None:
                continue
            sc.dvpg[str(p["name"])] = (uuids.get(_moid(switch), ""), str(p["key"]))
            sc.dvpg_names[str(p["key"])] = str(p["name"])
        for ref, props in conn.retrieve(
            list(datastores.values()),
            vim.Datastore,
            ("name", "summary.freeSpace", "summary.accessible"),
        ):
            sc.datastores[str(props.get("name"))] = (
                ref,
                int(props.get("summary.freeSpace") or 0),
                bool(props.get("summary.accessible", True)),
            )
        return sc
    except (NotFound, ValidationError):
        raise
    except Exception as exc:
        reraise(exc, what)
