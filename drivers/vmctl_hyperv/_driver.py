"""The Hyper-V driver: vmctl's SPI over WS-Management to Hyper-V's WMI provider
(``root/virtualization/v2``), without PowerShell.

URIs: ``hyperv://[user@]host[:5986]`` (HTTPS) and ``hyperv+http://[user@]host[:5985]``
(HTTP with WinRM message encryption after NTLM/Negotiate). One connection is one Hyper-V
host (each host has its own WinRM service and WMI); ``vm.migrate(target)`` moves a VM to
another host's connection with ``MigrateVirtualSystemToHost``.

Requests return the ``Msvm_ConcreteJob`` of a method that answered 4096 as a ``Task``; the
core waits with ``wait_tasks`` (one WQL query of the jobs, then one bounded pause: WS-Man has
no blocking wait on a job). Return codes 32768+ and failed jobs are mapped into vmctl's
errors (``_errors``). See docs/hyperv.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import queue
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from vmctl import (
    URI,
    AgentState,
    AlreadyExists,
    BackendError,
    Capability,
    ConnectParams,
    DiskInfo,
    DiskSpec,
    DriverError,
    Event,
    EventKind,
    Firmware,
    GuestInfo,
    HostInfo,
    InvalidState,
    NicInfo,
    NicSpec,
    NotFound,
    PowerState,
    Resources,
    SnapshotInfo,
    StateReason,
    ValidationError,
    VMConfig,
    VmctlError,
    VMInfo,
    VMSpec,
)
from vmctl.spi import (
    Deadline,
    Devices,
    Driver,
    Events,
    GracefulPower,
    GuestAgent,
    Migration,
    OutcomeUnknown,
    Pausable,
    Reconfigurable,
    Reconnectable,
    Resettable,
    ResourceControls,
    Snapshots,
    Suspendable,
    Task,
    TaskOutcome,
    TaskWaiter,
    finish_task,
)

from . import _errors
from ._errors import RC_JOB, RC_OK
from ._storage import HyperVStorage
from ._wsman import (
    V2,
    Client,
    Embedded,
    Ref,
    as_list,
    parse_cimxml,
    parse_thumbprint,
    wmi_path,
    wql_string,
)

log = logging.getLogger("vmctl.hyperv")

S = PowerState
KNOWN_OPTIONS = {"auth", "rpc_timeout", "disk_dir", "transport", "poll_s"}
AUTHS = ("negotiate", "ntlm", "basic")
DEFAULT_RPC_TIMEOUT = 60.0
DEFAULT_DISK_DIR = "C:\\ProgramData\\Microsoft\\Windows\\Virtual Hard Disks"
#: Microsoft's fixed InstanceID suffixes of a VM's processor and memory settings
#: (HV2/msvm-processorsettingdata, msvm-memorysettingdata; libvirt hyperv_driver.c).
PROC_SUFFIX = "b637f346-6a0e-4dec-af52-bd70cb80a21d\\0"
MEM_SUFFIX = "4764334d-e001-4176-82ee-5594ec9b530e"
VM_FILTER = "Description = 'Microsoft Virtual Machine'"  # as libvirt selects VMs
#: ElementName of the virtual hard disk settings of disks vmctl made: the VM owns them
#: (delete_vm and remove_disk delete their files; other disks are only detached).
OWNED = "Hard Disk Image (vmctl)"
SUB = "Microsoft:Hyper-V:"
VHD = "Virtual Hard Disk"  # the ResourceSubType of a disk image (after SUB)
#: The longest pause of one wait_tasks call (WS-Man cannot block on a job).
POLL_MAX_S = 1.0
#: Msvm_ProcessorSettingData.Limit/Reservation scale: 100000 = all of the VM's processors.
LIMIT_MAX = 100000
POLL_FIRST_S = 0.05

#: Msvm_ComputerSystem.EnabledState (HV2/msvm-computersystem) -> vmctl state.
STATES: dict[int, PowerState] = {
    2: S.RUNNING,  # Enabled
    3: S.STOPPED,  # Disabled
    4: S.RUNNING,  # Shutting Down (still running until it is Off)
    6: S.SUSPENDED,  # Enabled but Offline = Saved
    9: S.PAUSED,  # Quiesce = Paused
    10: S.RUNNING,  # Starting
    32768: S.PAUSED,  # v1 Paused
    32769: S.SUSPENDED,  # v1 Suspended (saved)
    32770: S.RUNNING,  # Starting
    32773: S.RUNNING,  # Saving
    32774: S.RUNNING,  # Stopping
    32776: S.RUNNING,  # Pausing
    32777: S.PAUSED,  # Resuming
}
REASONS = {S.PAUSED: StateReason.USER, S.SUSPENDED: StateReason.SAVED}

#: Why each capability vmctl knows is absent (docs/hyperv.md).
ABSENT = {
    Capability.HOT_VCPUS: "Hyper-V changes a VM's processor count only while it is off",
    Capability.HOT_MEMORY: "runtime memory resize (Windows Server 2016+) needs the guest's "
    "part, which hypervsim does not model; not proven",
    Capability.MEMORY_SHARES: "memory weight applies to dynamic memory only; not mapped",
    Capability.MEMORY_RESERVATION: "memory reservation is dynamic memory's minimum; not mapped",
    Capability.MEMORY_LIMIT: "memory limit is dynamic memory's maximum; not mapped",
    Capability.STATS: "Msvm_AggregationMetricValue metrics are not served by hypervsim",
    Capability.CLONE: "Hyper-V has no clone method (Export/ImportSystemDefinition are not "
    "served by hypervsim)",
    Capability.LINKED_CLONE: "as clone",
}


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _guid(uuid: str) -> str:
    u = uuid.strip().strip("{}").upper()
    if not re.fullmatch(r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}", u):
        raise NotFound(f"no VM {uuid!r} (a Hyper-V VM id is a GUID)")
    return u


def _vm_keys(guid: str) -> dict[str, str]:
    return {"CreationClassName": "Msvm_ComputerSystem", "Name": guid}


def _when(text: Any) -> dt.datetime:
    s = str(text or "")
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%f%z"):
        with contextlib.suppress(ValueError):
            d = dt.datetime.strptime(s, fmt)
            return d if d.tzinfo else d.replace(tzinfo=dt.UTC)
    with contextlib.suppress(ValueError):
        d = dt.datetime.fromisoformat(s)
        return d if d.tzinfo else d.replace(tzinfo=dt.UTC)
    return dt.datetime.fromtimestamp(0, dt.UTC)


def _path_id(path: Any) -> str:
    """The InstanceID key out of a WMI path (``...InstanceID="Microsoft:X\\\\Y"``)."""
    m = re.search(r'InstanceID="((?:[^"\\]|\\.)*)"', str(path or ""))
    return re.sub(r"\\(.)", r"\1", m.group(1)) if m else ""


def _suffix(instance_id: str, guid: str) -> str:
    prefix = f"Microsoft:{guid}\\"
    return instance_id[len(prefix) :] if instance_id.upper().startswith(prefix.upper()) else ""


def _props(inst: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """An instance's properties to send back (embedded), with ``changes``."""
    out = {k: v for k, v in inst.items() if k != "__class__" and v is not None}
    out = {k: v for k, v in out.items() if not isinstance(v, dict | Ref)}
    out.update(changes)
    return out


class _Job:
    """A Task's handle: the job's InstanceID, what it does, and how often it was polled."""

    __slots__ = ("polls", "what")

    def __init__(self, what: str) -> None:
        self.what = what
        self.polls = 0


class _PollEvents:
    """Events by a bounded poll of the host's VMs: one WQL query of Msvm_ComputerSystem
    every ``interval`` seconds on a thread of its own, from ``subscribe`` on. WinRM's WMI
    event subscriptions (WS-Eventing on __InstanceModificationEvent) are not served by
    hypervsim, so they cannot be proven here. VMs created and deleted through this
    connection are reported at once (``note``); other changes that cancel out between two
    polls (a VM made and deleted elsewhere within one interval, off and on again) are not
    seen."""

    def __init__(self, driver: HyperVDriver, interval: float, deadline: Deadline) -> None:
        self._d = driver
        self._interval = interval
        self._known = self._read(deadline)
        self._queue: queue.Queue[Event] = queue.Queue()
        self._lock = threading.Lock()
        self._noted: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vmctl-hyperv-events", daemon=True)
        self._thread.start()

    def _read(self, deadline: Deadline) -> dict[str, tuple[str, PowerState]]:
        rows = self._d._query(
            "poll VMs",
            f"SELECT Name, ElementName, EnabledState, HealthState FROM Msvm_ComputerSystem "
            f"WHERE {VM_FILTER}",
            deadline,
        )
        out = {}
        for r in rows:
            info = self._d._info(r, 0, 0)
            out[info.uuid] = (info.name, info.state)
        return out

    def note(self, kind: EventKind, uuid: str, name: str, state: PowerState | None) -> None:
        """A change made through this connection: reported at once, not left to the poll."""
        with self._lock:
            self._noted[uuid] = time.monotonic()
            if kind is EventKind.CREATED:
                if uuid in self._known:
                    return
                self._known[uuid] = (name, state or S.STOPPED)
            elif kind is EventKind.DELETED and self._known.pop(uuid, None) is None:
                return
            self._queue.put(Event(kind, uuid, name, state=state))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            started = time.monotonic()
            try:
                now = self._read(Deadline.after(self._d.client.rpc_timeout))
            except VmctlError as exc:
                log.warning("hyperv events: poll failed: %s", exc)
                continue
            with self._lock:
                self._diff(now, started)

    def _diff(self, now: dict[str, tuple[str, PowerState]], started: float) -> None:
        # A VM noted (created or deleted here) after this poll's read began: the read may
        # predate the change, so it decides nothing about that VM.
        fresh = {u for u, when in self._noted.items() if when >= started}
        self._noted = {u: w for u, w in self._noted.items() if u in fresh}
        for uuid in fresh:
            if uuid in self._known:
                now[uuid] = self._known[uuid]
            else:
                now.pop(uuid, None)
        for uuid, (name, state) in now.items():
            old = self._known.get(uuid)
            if old is None:
                self._queue.put(Event(EventKind.CREATED, uuid, name, state=state))
            elif old[1] is not state:
                self._queue.put(
                    Event(
                        EventKind.STATE_CHANGED,
                        uuid,
                        name,
                        state=state,
                        reason=REASONS.get(state, StateReason.UNKNOWN),
                    )
                )
            elif old[0] != name:
                self._queue.put(Event(EventKind.RECONFIGURED, uuid, name, detail="renamed"))
        for uuid, (name, _state) in self._known.items():
            if uuid not in now:
                self._queue.put(Event(EventKind.DELETED, uuid, name))
        self._known = now

    def next_event(self, timeout: float) -> Event | None:
        try:
            return (
                self._queue.get(timeout=max(0.0, timeout))
                if timeout > 0
                else self._queue.get_nowait()
            )
        except queue.Empty:
            return None

    def close(self) -> None:
        self._stop.set()
        self._d._unsubscribe(self)
        self._thread.join(timeout=self._d.client.rpc_timeout)


class HyperVDriver(
    Driver,
    TaskWaiter,
    Reconnectable,
    GracefulPower,
    Resettable,
    Pausable,
    Suspendable,
    Reconfigurable,
    ResourceControls,
    Devices,
    Snapshots,
    Migration,
    Events,
    GuestAgent,
    HyperVStorage,
):
    """vmctl over WS-Man to Hyper-V's WMI v2 provider. See docs/hyperv.md."""

    name = "hyperv"

    def __init__(self, client: Client, uri: URI, disk_dir: str, poll_s: float) -> None:
        self.client = client
        self.uri = uri
        self.disk_dir = disk_dir.rstrip("\\")
        self.poll_s = poll_s
        self.host_name = ""
        self._services: dict[str, dict[str, str]] = {}
        self._memory_snaps: set[str] = set()
        self._lock = threading.Lock()
        self._subscriptions: list[_PollEvents] = []

    def __repr__(self) -> str:
        return f"<HyperVDriver {self.uri}>"

    # -- connection -----------------------------------------------------------------------

    @classmethod
    def open(cls, params: ConnectParams, *, deadline: Deadline) -> HyperVDriver:
        try:
            import pypsrp.wsman  # noqa: F401
        except ImportError as exc:
            raise DriverError(
                "the hyperv driver needs pypsrp: pip install 'vmctl[hyperv]'"
            ) from exc
        uri = params.uri
        opts = dict(params.options)
        unknown = set(opts) - KNOWN_OPTIONS
        if unknown:
            raise ValidationError(
                f"unknown hyperv option(s) {sorted(unknown)}; the hyperv driver knows "
                f"{sorted(KNOWN_OPTIONS)}",
                field="uri",
            )
        transport = uri.transport or opts.get("transport") or "https"
        if transport not in ("https", "http"):
            raise ValidationError(
                f"{transport!r} is not a transport; use hyperv:// (HTTPS) or hyperv+http://",
                field="uri",
            )
        if not uri.host:
            raise ValidationError("a hyperv URI names the host: hyperv://host[:port]", field="uri")
        if uri.path not in ("", "/"):
            raise ValidationError(f"hyperv URIs have no path (got {uri.path!r})", field="uri")
        auth = opts.get("auth", "negotiate").lower()
        if auth not in AUTHS:
            raise ValidationError(f"auth must be one of {', '.join(AUTHS)}", field="auth")
        secure = transport == "https"
        if auth == "basic" and not secure:
            raise ValidationError(
                "Basic authentication over plain HTTP would send the password in clear; "
                "use HTTPS (hyperv://) or auth=negotiate/ntlm",
                field="auth",
            )
        rpc_timeout = _positive(opts.get("rpc_timeout", DEFAULT_RPC_TIMEOUT), "rpc_timeout")
        poll_s = _positive(opts.get("poll_s", 0.25), "poll_s")
        pin = parse_thumbprint(params.thumbprint) if params.thumbprint else None
        if params.cafile and secure:
            import os

            if not os.path.isfile(params.cafile):
                raise ValidationError(
                    f"the CA file {params.cafile!r} does not exist", field="cafile"
                )
        if params.password is None:
            from vmctl import AuthenticationError

            raise AuthenticationError(
                f"no password for {params.username or uri.user or 'Administrator'!r} on "
                f"{uri.host}: pass password=... or set VMCTL_PASSWORD"
            )
        client = Client(
            uri.host,
            uri.port or (5986 if secure else 5985),
            ssl=secure,
            auth=auth,
            username=params.username or uri.user or "Administrator",
            password=params.password,
            cafile=params.cafile,
            pin=pin,
            insecure=params.insecure,
            rpc_timeout=rpc_timeout,
        )
        driver = cls(client, uri, opts.get("disk_dir", DEFAULT_DISK_DIR), poll_s)
        try:
            driver._load(deadline)
        except BaseException:
            driver.close()
            raise
        return driver

    def kit_defaults(self, *, deadline: Deadline) -> Mapping[str, str]:
        """The host's first virtual switch as the kit's network. A bootable ISO cannot be
        found by WMI (it is a file path on the host): give ``boot_iso=`` in
        VMCTL_KIT_OPTIONS (.hosts/hyperv.env does, for hypervsim's guest image)."""
        names = sorted(str(s.get("ElementName") or s["Name"]) for s in self._switches(deadline))
        return {"network": names[0]} if names else {}

    def _load(self, deadline: Deadline) -> None:
        with self._mapped(f"connect to {self.uri}"):
            hosts = self.client.query(
                "SELECT Name, ElementName FROM Msvm_ComputerSystem "
                "WHERE Caption = 'Hosting Computer System'",
                deadline=deadline,
            )
            if not hosts:
                raise NotFound(f"{self.uri.host} serves no Hyper-V host computer system")
            self.host_name = str(hosts[0]["Name"])
            for cls in (
                "Msvm_VirtualSystemManagementService",
                "Msvm_ImageManagementService",
                "Msvm_VirtualSystemSnapshotService",
                "Msvm_VirtualSystemMigrationService",
            ):
                rows = self.client.query(
                    "SELECT CreationClassName, Name, SystemCreationClassName, SystemName "
                    f"FROM {cls}",
                    deadline=deadline,
                )
                if rows:
                    self._services[cls] = {
                        k: str(rows[0][k])
                        for k in (
                            "CreationClassName",
                            "Name",
                            "SystemCreationClassName",
                            "SystemName",
                        )
                    }

    def reconnect(self, *, deadline: Deadline) -> None:
        self.client.reset()
        with self._mapped(f"reconnect to {self.uri}"):
            self.client.query(
                "SELECT Name FROM Msvm_ComputerSystem WHERE Caption = 'Hosting Computer System'",
                deadline=deadline,
            )

    def close(self) -> None:
        self.client.close()

    def narrow_capabilities(self, offered: frozenset[Capability]) -> frozenset[Capability]:
        caps = set(offered) - set(ABSENT)
        if "Msvm_VirtualSystemMigrationService" not in self._services:
            caps -= {Capability.MIGRATE_LIVE, Capability.MIGRATE_COLD}
        if "Msvm_VirtualSystemSnapshotService" not in self._services:
            caps -= {Capability.SNAPSHOT, Capability.SNAPSHOT_MEMORY}
        return frozenset(caps)

    @classmethod
    def unsupported(cls) -> dict[Capability, str]:
        return dict(ABSENT)

    @property
    def round_trips(self) -> int:
        """WS-Man round trips made by this connection so far (for benchmarks)."""
        return self.client.round_trips

    # -- plumbing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _mapped(self, what: str, deadline: Deadline | None = None) -> Iterator[None]:
        try:
            yield
        except VmctlError:
            raise
        except Exception as exc:
            raise _errors.from_exception(what, exc, deadline) from exc

    def _svc(self, cls: str) -> dict[str, str]:
        try:
            return self._services[cls]
        except KeyError:
            raise NotFound(f"{self.host_name} has no {cls}") from None

    def _invoke(
        self,
        what: str,
        cls: str,
        method: str,
        keys: Mapping[str, str],
        params: Sequence[tuple[str, Any]],
        deadline: Deadline,
    ) -> tuple[Task | None, dict[str, Any]]:
        """Invoke a method: (the job's Task when it answered 4096, else None; the output).
        A return code other than 0/4096 raises the mapped error."""
        with self._mapped(what, deadline):
            out = self.client.invoke(cls, method, keys, params, deadline=deadline)
        rc = out["ReturnValue"]
        if rc == RC_OK:
            return None, out
        if rc == RC_JOB:
            job = out.get("Job")
            if not isinstance(job, Ref) or "InstanceID" not in job.keys:
                raise BackendError(f"{what}: {method} answered 4096 without a Job")
            return Task(job.keys["InstanceID"], what, _Job(what)), out
        err, orig = _errors.from_code(what, rc)
        raise err from orig

    def _run(
        self,
        what: str,
        cls: str,
        method: str,
        keys: Mapping[str, str],
        params: Sequence[tuple[str, Any]],
        deadline: Deadline,
    ) -> dict[str, Any]:
        """Invoke and wait for the job (inside a method that must return a value)."""
        task, out = self._invoke(what, cls, method, keys, params, deadline)
        if task is not None:
            finish_task(self, task, deadline=deadline, what=what)
        return out

    def _vsms(
        self, what: str, method: str, params: Sequence[tuple[str, Any]], deadline: Deadline
    ) -> dict[str, Any]:
        svc = "Msvm_VirtualSystemManagementService"
        return self._run(what, svc, method, self._svc(svc), params, deadline)

    def _query(
        self, what: str, wql: str, deadline: Deadline, namespace: str = V2
    ) -> list[dict[str, Any]]:
        with self._mapped(what, deadline):
            return self.client.query(wql, deadline=deadline, namespace=namespace)

    def _cs(self, uuid: str, deadline: Deadline) -> dict[str, Any]:
        guid = _guid(uuid)
        with self._mapped(f"read VM {uuid}", deadline):
            try:
                return self.client.get("Msvm_ComputerSystem", _vm_keys(guid), deadline=deadline)
            except Exception as exc:
                err = _errors.from_exception(f"read VM {uuid}", exc, deadline)
                if isinstance(err, NotFound):
                    raise NotFound(f"no VM {uuid} on {self.host_name}") from exc
                raise

    def _info(self, cs: Mapping[str, Any], cpu: int, mem: int) -> VMInfo:
        state = STATES.get(_int(cs.get("EnabledState")), S.UNKNOWN)
        health = _int(cs.get("HealthState"))
        if state is S.STOPPED and health in (20, 25):  # Major / Critical failure
            state = S.CRASHED
        return VMInfo(
            uuid=str(cs["Name"]),
            name=str(cs.get("ElementName") or ""),
            state=state,
            reason=StateReason.CRASHED
            if state is S.CRASHED
            else REASONS.get(state, StateReason.UNKNOWN),
            vcpus=cpu,
            memory_mib=mem,
            host=self.host_name,
        )

    # -- inventory ------------------------------------------------------------------------

    def host_info(self, *, deadline: Deadline) -> HostInfo:
        host = wql_string(self.host_name)
        cpus = self._query(
            "read the host's processors",
            f"SELECT DeviceID, MaxClockSpeed FROM Msvm_Processor WHERE SystemName = {host}",
            deadline,
        )
        mems = self._query(
            "read the host's memory",
            "SELECT BlockSize, NumberOfBlocks, ConsumableBlocks FROM Msvm_Memory "
            f"WHERE SystemName = {host}",
            deadline,
        )
        vms = self._query(
            "count VMs", f"SELECT Name FROM Msvm_ComputerSystem WHERE {VM_FILTER}", deadline
        )
        mib = 1024 * 1024
        total = sum(_int(m.get("BlockSize")) * _int(m.get("NumberOfBlocks")) for m in mems)
        free = sum(_int(m.get("BlockSize")) * _int(m.get("ConsumableBlocks")) for m in mems)
        return HostInfo(
            name=self.host_name,
            hypervisor="Hyper-V",
            version="WMI v2 (root/virtualization/v2)",
            cpus=len(cpus),
            cpu_mhz=max((_int(c.get("MaxClockSpeed")) for c in cpus), default=0),
            memory_mib=total // mib,
            free_memory_mib=free // mib if mems else None,
            vm_count=len(vms),
        )

    def list_vms(self, *, deadline: Deadline) -> list[VMInfo]:
        # Three WQL enumerations (one page each up to 1000 items, more pages as the
        # envelope size demands), whatever the number of VMs.
        css = self._query(
            "list VMs",
            "SELECT Name, ElementName, EnabledState, HealthState FROM Msvm_ComputerSystem "
            f"WHERE {VM_FILTER}",
            deadline,
        )
        cpus = self._query(
            "list processors",
            "SELECT InstanceID, VirtualQuantity FROM Msvm_ProcessorSettingData",
            deadline,
        )
        mems = self._query(
            "list memory",
            "SELECT InstanceID, VirtualQuantity FROM Msvm_MemorySettingData",
            deadline,
        )
        cpu_of = {str(r["InstanceID"]).upper(): _int(r.get("VirtualQuantity")) for r in cpus}
        mem_of = {str(r["InstanceID"]).upper(): _int(r.get("VirtualQuantity")) for r in mems}
        out = []
        for cs in css:
            g = str(cs["Name"]).upper()
            out.append(
                self._info(
                    cs,
                    cpu_of.get(f"MICROSOFT:{g}\\{PROC_SUFFIX}".upper(), 0),
                    mem_of.get(f"MICROSOFT:{g}\\{MEM_SUFFIX}".upper(), 0),
                )
            )
        return out

    def _rasd(self, guid: str, cls: str, deadline: Deadline) -> list[dict[str, Any]]:
        return self._query(
            f"read {cls} of {guid}",
            f"ASSOCIATORS OF {{Msvm_VirtualSystemSettingData.InstanceID='Microsoft:{guid}'}} "
            f"WHERE AssocClass = Msvm_VirtualSystemSettingDataComponent ResultClass = {cls}",
            deadline,
        )

    def _one(self, cls: str, instance_id: str, deadline: Deadline) -> dict[str, Any]:
        with self._mapped(f"read {cls}", deadline):
            return self.client.get(cls, {"InstanceID": instance_id}, deadline=deadline)

    def _cpu(self, guid: str, deadline: Deadline) -> dict[str, Any]:
        return self._one("Msvm_ProcessorSettingData", f"Microsoft:{guid}\\{PROC_SUFFIX}", deadline)

    def _mem(self, guid: str, deadline: Deadline) -> dict[str, Any]:
        return self._one("Msvm_MemorySettingData", f"Microsoft:{guid}\\{MEM_SUFFIX}", deadline)

    def get_vm(self, uuid: str, *, deadline: Deadline) -> VMInfo:
        cs = self._cs(uuid, deadline)
        g = str(cs["Name"])
        return self._info(
            cs,
            _int(self._cpu(g, deadline).get("VirtualQuantity")),
            _int(self._mem(g, deadline).get("VirtualQuantity")),
        )

    def get_config(self, uuid: str, *, deadline: Deadline) -> VMConfig:
        cs = self._cs(uuid, deadline)
        g = str(cs["Name"])
        cpu = self._cpu(g, deadline)
        mem = self._mem(g, deadline)
        vssd = self._one("Msvm_VirtualSystemSettingData", f"Microsoft:{g}", deadline)
        disks = self._disks(g, deadline)
        nics = self._nics(g, deadline)
        n = max(1, _int(cpu.get("VirtualQuantity")))
        limit = _int(cpu.get("Limit"))
        res = Resources(
            cpu_shares=_int(cpu.get("Weight")) or None,
            cpu_reservation_percent=round(_int(cpu.get("Reservation")) * n / 1000),
            # 100000 (100 % of the VM's processors) is Hyper-V's "no limit"
            cpu_limit_percent=max(1, round(limit * n / 1000)) if 0 < limit < LIMIT_MAX else None,
        )
        notes = as_list(vssd.get("Notes"))
        return VMConfig(
            uuid=g,
            name=str(cs.get("ElementName") or ""),
            vcpus=_int(cpu.get("VirtualQuantity")),
            memory_mib=_int(mem.get("VirtualQuantity")),
            disks=tuple(d for d, _ in disks),
            nics=tuple(nics),
            resources=res,
            description=str(notes[0]) if notes else "",
            # generation 1 (Microsoft:Hyper-V:SubType:1) boots BIOS, generation 2 UEFI
            firmware=Firmware.BIOS
            if str(vssd.get("VirtualSystemSubType", "")).endswith("SubType:1")
            else Firmware.UEFI,
        )

    def _disks(
        self, guid: str, deadline: Deadline, *, sizes: bool = True
    ) -> list[tuple[DiskInfo, dict[str, Any]]]:
        """The VM's virtual hard disks: (DiskInfo, the drive's settings)."""
        drives = {
            str(r["InstanceID"]).upper(): r
            for r in self._rasd(guid, "Msvm_ResourceAllocationSettingData", deadline)
        }
        ctrls = sorted(
            (k for k, r in drives.items() if _int(r.get("ResourceType")) == 6),
        )
        out = []
        for sasd in self._rasd(guid, "Msvm_StorageAllocationSettingData", deadline):
            if sasd.get("ResourceSubType") != SUB + "Virtual Hard Disk":
                continue
            drive = drives.get(_path_id(sasd.get("Parent")).upper())
            if drive is None:
                continue
            path = str((as_list(sasd.get("HostResource")) or [""])[0])
            size = self._vhd_size(path, deadline) if sizes else 0
            ctrl = _path_id(drive.get("Parent")).upper()
            idx = ctrls.index(ctrl) if ctrl in ctrls else 0
            drive = dict(drive, __owned__=sasd.get("ElementName") == OWNED)
            out.append(
                (
                    DiskInfo(
                        id=_suffix(str(drive["InstanceID"]), guid),
                        size_mib=size,
                        name=path.rpartition("\\")[2] or None,
                        path=path,
                        bus=f"scsi{idx}:{drive.get('AddressOnParent') or 0}",
                    ),
                    drive,
                )
            )
        return out

    def _vhd_size(self, path: str, deadline: Deadline) -> int:
        svc = "Msvm_ImageManagementService"
        if not path or svc not in self._services:
            return 0
        task, out = self._invoke(
            f"read the disk {path}",
            svc,
            "GetVirtualHardDiskSettingData",
            self._svc(svc),
            [("Path", path)],
            deadline,
        )
        if task is not None:
            finish_task(self, task, deadline=deadline, what=f"read the disk {path}")
        sd = out.get("SettingData")
        if isinstance(sd, str) and sd.strip().startswith("<"):
            sd = parse_cimxml(sd)
        if isinstance(sd, dict):
            return _int(sd.get("MaxInternalSize")) // (1024 * 1024)
        return 0

    def _nics(self, guid: str, deadline: Deadline) -> list[NicInfo]:
        ports = self._rasd(guid, "Msvm_SyntheticEthernetPortSettingData", deadline)
        conns = self._rasd(guid, "Msvm_EthernetPortAllocationSettingData", deadline)
        switches = {
            str(s["Name"]).upper(): str(s.get("ElementName") or s["Name"])
            for s in self._switches(deadline)
        }
        by_port: dict[str, str] = {}
        for c in conns:
            sw = str((as_list(c.get("HostResource")) or [""])[0])
            m = re.search(r'[.,]Name="([^"]*)"', sw)
            by_port[_path_id(c.get("Parent")).upper()] = switches.get(
                (m.group(1) if m else "").upper(), ""
            )
        out = []
        for p in ports:
            mac = str(p.get("Address") or "").lower()
            mac = ":".join(mac[i : i + 2] for i in range(0, 12, 2)) if len(mac) == 12 else mac
            out.append(
                NicInfo(
                    id=_suffix(str(p["InstanceID"]), guid),
                    network=by_port.get(str(p["InstanceID"]).upper(), ""),
                    mac=mac,
                    model="synthetic",
                )
            )
        return out

    def _switches(self, deadline: Deadline) -> list[dict[str, Any]]:
        return self._query(
            "list switches", "SELECT Name, ElementName FROM Msvm_VirtualEthernetSwitch", deadline
        )

    def _switch(self, network: str, deadline: Deadline) -> dict[str, Any]:
        for s in self._switches(deadline):
            if network.lower() in (str(s.get("ElementName")).lower(), str(s["Name"]).lower()):
                return s
        raise NotFound(f"{self.host_name} has no virtual switch {network!r}")

    # -- create / delete ------------------------------------------------------------------

    def _check_memory(self, mib: int) -> None:
        if mib % 2 or mib < 32:
            raise ValidationError(
                f"Hyper-V takes memory in even MiB, at least 32 (got {mib})", field="memory_mib"
            )

    def create_vm(self, spec: VMSpec, *, deadline: Deadline) -> VMInfo:
        self._check_memory(spec.memory_mib)
        if spec.boot is not None and spec.boot.kernel:
            raise ValidationError(
                "Hyper-V boots from a disk or an ISO image, not a kernel", field="boot"
            )
        if spec.firmware is Firmware.BIOS:
            raise ValidationError(
                "the hyperv driver makes generation 2 VMs, which boot UEFI; BIOS needs a "
                "generation 1 VM, which it does not make",
                field="firmware",
            )
        for d in spec.disks:
            if d.pool is not None:
                raise NotFound(
                    f"no pool {d.pool!r}: the hyperv driver keeps disks in {self.disk_dir} "
                    "(URI option disk_dir)"
                )
        cpu_props = self._cpu_props(spec.resources, spec.vcpus)
        taken = self._query(
            "look for the name",
            f"SELECT Name FROM Msvm_ComputerSystem WHERE {VM_FILTER} "
            f"AND ElementName = {wql_string(spec.name)}",
            deadline,
        )
        if taken:
            raise AlreadyExists(f"{self.host_name} already has a VM named {spec.name!r}")
        switches = [self._switch(n.network, deadline) for n in spec.nics]
        iso = spec.boot.iso if spec.boot is not None else None
        made_disks: list[str] = []
        guid = ""
        what = f"create VM {spec.name}"
        try:
            # The images first, their jobs running side by side.
            paths = [self._new_disk_path(spec.name, i) for i in range(len(spec.disks))]
            jobs = []
            for d, path in zip(spec.disks, paths, strict=True):
                made_disks.append(path)
                jobs.append(self._start_vhd(path, d, deadline))
            for job in jobs:
                if job is not None:
                    finish_task(self, job, deadline=deadline, what=job.description)
            # The VM with its processor, memory and (for drives) SCSI controller...
            devices = [
                Embedded(
                    "Msvm_ProcessorSettingData", {"ResourceSubType": SUB + "Processor", **cpu_props}
                ),
                Embedded(
                    "Msvm_MemorySettingData",
                    {
                        "ResourceSubType": SUB + "Memory",
                        "VirtualQuantity": spec.memory_mib,
                        "Reservation": spec.memory_mib,
                    },
                ),
            ]
            if paths or iso:
                devices.append(
                    Embedded(
                        "Msvm_ResourceAllocationSettingData",
                        {"ResourceSubType": SUB + "Synthetic SCSI Controller"},
                    )
                )
            out = self._vsms(
                what,
                "DefineSystem",
                [
                    (
                        "SystemSettings",
                        Embedded(
                            "Msvm_VirtualSystemSettingData",
                            {
                                "ElementName": spec.name,
                                "VirtualSystemSubType": SUB + "SubType:2",
                                "Notes": [spec.description] if spec.description else None,
                            },
                        ),
                    ),
                    ("ResourceSettings", devices),
                ],
                deadline,
            )
            system = out.get("ResultingSystem")
            if not isinstance(system, Ref):
                raise BackendError(f"{what}: DefineSystem returned no ResultingSystem")
            guid = system.keys["Name"].upper()
            # ... then every drive and port in one call, every image and connection in one.
            parents: list[Embedded] = []
            if paths or iso:
                ctrl = self._add_controller(guid, deadline)
                kinds = ["Synthetic Disk Drive"] * len(paths) + (
                    ["Synthetic DVD Drive"] if iso else []
                )
                parents += [
                    Embedded(
                        "Msvm_ResourceAllocationSettingData",
                        {
                            "ResourceSubType": SUB + kind,
                            "Parent": self._path("Msvm_ResourceAllocationSettingData", ctrl),
                            "AddressOnParent": str(slot),
                        },
                    )
                    for slot, kind in enumerate(kinds)
                ]
            parents += [self._port(nic) for nic in spec.nics]
            if parents:
                made = self._add(guid, f"add devices to {spec.name}", parents, deadline)
                if len(made) != len(parents):
                    raise BackendError(
                        f"{what}: AddResourceSettings made {len(made)} of {len(parents)} devices"
                    )
                drives, ports = (
                    made[: len(parents) - len(spec.nics)],
                    made[len(parents) - len(spec.nics) :],
                )
                children = [
                    self._image(drive, path, "Virtual Hard Disk")
                    for drive, path in zip(drives, paths, strict=False)
                ]
                if iso:
                    children.append(self._image(drives[-1], iso, "Virtual CD/DVD Disk"))
                children += [
                    self._connection(port, sw) for port, sw in zip(ports, switches, strict=True)
                ]
                self._add(guid, f"attach images and connect {spec.name}", children, deadline)
        except BaseException as exc:
            self._undo_create(guid, made_disks, exc, deadline)
            raise
        self._notify(EventKind.CREATED, guid, spec.name, S.STOPPED)
        return self.get_vm(guid, deadline=deadline)

    def _undo_create(
        self, guid: str, disks: list[str], exc: BaseException, deadline: Deadline
    ) -> None:
        left: list[tuple[str, str]] = []
        if guid:
            try:
                self._destroy(guid, Deadline.after(min(60.0, max(5.0, deadline.remaining()))))
            except VmctlError as undo:
                log.warning("could not remove the half-made VM %s: %s", guid, undo)
                left.append(("vm", guid))
        later = Deadline.after(min(60.0, max(5.0, deadline.remaining())))
        left += [("disk", p) for p in disks if not self._delete_file(p, later)]
        if left and isinstance(exc, VmctlError):
            exc.left_behind = tuple(left)
            exc.message += " (left behind: " + ", ".join(f"{k} {v}" for k, v in left) + ")"

    def _new_disk_path(self, vm_name: str, n: int) -> str:
        # lower case: WMI's CIM_DataFile reports file names so (list_volumes must give the
        # same path as DiskInfo.path); Windows file names are case-insensitive
        safe = re.sub(r"[^a-z0-9._-]", "_", vm_name.lower())
        return f"{self.disk_dir}\\{safe}-{n}-{secrets.token_hex(3)}.vhdx"

    def _start_vhd(self, path: str, disk: DiskSpec, deadline: Deadline) -> Task | None:
        props: dict[str, Any] = {"Path": path, "Format": 3}
        if disk.source:
            props.update(Type=4, ParentPath=disk.source)
        else:
            props.update(Type=3, MaxInternalSize=disk.size_mib * 1024 * 1024)
        svc = "Msvm_ImageManagementService"
        task, _ = self._invoke(
            f"create the disk {path}",
            svc,
            "CreateVirtualHardDisk",
            self._svc(svc),
            [("VirtualDiskSettingData", Embedded("Msvm_VirtualHardDiskSettingData", props))],
            deadline,
        )
        return task

    def _create_vhd(self, path: str, disk: DiskSpec, deadline: Deadline) -> None:
        task = self._start_vhd(path, disk, deadline)
        if task is not None:
            finish_task(self, task, deadline=deadline, what=task.description)

    def _image(self, drive: str, path: str, kind: str) -> Embedded:
        props = {
            "ResourceSubType": SUB + kind,
            "Parent": self._path("Msvm_ResourceAllocationSettingData", drive),
            "HostResource": [path],
        }
        if kind == "Virtual Hard Disk":
            props["ElementName"] = OWNED
        return Embedded("Msvm_StorageAllocationSettingData", props)

    @staticmethod
    def _port(nic: NicSpec) -> Embedded:
        props: dict[str, Any] = {
            "ResourceSubType": SUB + "Synthetic Ethernet Port",
            "ElementName": "Network Adapter",
        }
        if nic.mac:
            props.update(Address=nic.mac.replace(":", "").upper(), StaticMacAddress=True)
        return Embedded("Msvm_SyntheticEthernetPortSettingData", props)

    def _connection(self, port: str, switch: Mapping[str, Any]) -> Embedded:
        sw_path = wmi_path(
            self.host_name,
            "Msvm_VirtualEthernetSwitch",
            {"CreationClassName": "Msvm_VirtualEthernetSwitch", "Name": str(switch["Name"])},
        )
        return Embedded(
            "Msvm_EthernetPortAllocationSettingData",
            {
                "ResourceSubType": SUB + "Ethernet Connection",
                "Parent": self._path("Msvm_SyntheticEthernetPortSettingData", port),
                "HostResource": [sw_path],
            },
        )

    def _vssd_ref(self, guid: str) -> Ref:
        return Ref("Msvm_VirtualSystemSettingData", {"InstanceID": f"Microsoft:{guid}"})

    def _add(self, guid: str, what: str, settings: list[Embedded], deadline: Deadline) -> list[str]:
        out = self._vsms(
            what,
            "AddResourceSettings",
            [("AffectedConfiguration", self._vssd_ref(guid)), ("ResourceSettings", settings)],
            deadline,
        )
        return [r.keys.get("InstanceID", "") for r in as_list(out.get("ResultingResourceSettings"))]

    def _path(self, cls: str, instance_id: str) -> str:
        return wmi_path(self.host_name, cls, {"InstanceID": instance_id})

    def _add_controller(self, guid: str, deadline: Deadline) -> str:
        for r in self._rasd(guid, "Msvm_ResourceAllocationSettingData", deadline):
            if _int(r.get("ResourceType")) == 6:
                return str(r["InstanceID"])
        (ctrl,) = self._add(
            guid,
            "add a SCSI controller",
            [
                Embedded(
                    "Msvm_ResourceAllocationSettingData",
                    {"ResourceSubType": SUB + "Synthetic SCSI Controller"},
                )
            ],
            deadline,
        )
        return ctrl

    def _add_drive(self, guid: str, ctrl: str, slot: int, kind: str, deadline: Deadline) -> str:
        (drive,) = self._add(
            guid,
            f"add a {kind}",
            [
                Embedded(
                    "Msvm_ResourceAllocationSettingData",
                    {
                        "ResourceSubType": SUB + kind,
                        "Parent": self._path("Msvm_ResourceAllocationSettingData", ctrl),
                        "AddressOnParent": str(slot),
                    },
                )
            ],
            deadline,
        )
        return drive

    def _attach_vhd(self, guid: str, ctrl: str, slot: int, path: str, deadline: Deadline) -> str:
        drive = self._add_drive(guid, ctrl, slot, "Synthetic Disk Drive", deadline)
        self._add(guid, f"attach {path}", [self._image(drive, path, "Virtual Hard Disk")], deadline)
        return drive

    def _attach_nic(
        self, guid: str, nic: NicSpec, switch: Mapping[str, Any], deadline: Deadline
    ) -> str:
        (port,) = self._add(guid, "add a network adapter", [self._port(nic)], deadline)
        self._add(
            guid,
            f"connect the adapter to {switch.get('ElementName')}",
            [self._connection(port, switch)],
            deadline,
        )
        return port

    def _destroy(self, guid: str, deadline: Deadline) -> None:
        self._vsms(
            f"delete VM {guid}",
            "DestroySystem",
            [("AffectedSystem", Ref("Msvm_ComputerSystem", _vm_keys(guid)))],
            deadline,
        )

    def delete_vm(self, uuid: str, *, deadline: Deadline) -> list[str]:
        cs = self._cs(uuid, deadline)
        g = str(cs["Name"])
        owned = self._owned(g, deadline)
        for snap in self._snapshots(g, deadline):  # disks only a checkpoint still holds
            sguid = str(snap["InstanceID"]).removeprefix("Microsoft:")
            owned += [p for p in self._owned(sguid, deadline) if p not in owned]
        self._destroy(g, deadline)
        self._notify(EventKind.DELETED, g, str(cs.get("ElementName") or ""), None)
        # DestroySystem keeps the image files: the VM's own are deleted one by one (not
        # one another VM has attached).
        done = [f"vm {cs.get('ElementName')} ({g})"]
        deleted, left = self._delete_unheld(owned, deadline)
        done += [f"disk {p}" for p in deleted]
        if left:
            err = BackendError(
                f"VM {uuid} was deleted but not its disk(s) {', '.join(left)}",
                vendor_code="CIM_DataFile.Delete",
            )
            err.left_behind = tuple(("disk", p) for p in left)
            raise err
        return done

    def _owned(self, guid: str, deadline: Deadline) -> list[str]:
        """The image files vmctl made that the settings ``guid`` (a VM's or a checkpoint's)
        have attached."""
        return [
            str(p)
            for r in self._rasd(guid, "Msvm_StorageAllocationSettingData", deadline)
            if r.get("ElementName") == OWNED and r.get("ResourceSubType") == SUB + VHD
            for p in as_list(r.get("HostResource"))[:1]
            if p
        ]

    def _held(self, deadline: Deadline) -> set[str]:
        """The image files (lower case) any VM or checkpoint on this host has attached: one
        WQL query of every Msvm_StorageAllocationSettingData (checkpoints' included)."""
        rows = self._query(
            "read the attached disk images",
            "SELECT HostResource FROM Msvm_StorageAllocationSettingData "
            f"WHERE ResourceSubType = {wql_string(SUB + VHD)}",
            deadline,
        )
        return {str(p).lower() for r in rows for p in as_list(r.get("HostResource"))}

    def _delete_unheld(self, paths: list[str], deadline: Deadline) -> tuple[list[str], list[str]]:
        """Delete those of vmctl's image files ``paths`` that no VM or checkpoint holds any
        more: (deleted, could not be deleted). A held one stays for its holder."""
        if not paths:
            return [], []
        held = self._held(deadline)
        deleted: list[str] = []
        left: list[str] = []
        for path in paths:
            if path.lower() in held:
                continue
            (deleted if self._delete_file(path, deadline) else left).append(path)
        return deleted, left

    def _delete_file(self, path: str, deadline: Deadline) -> bool:
        """Delete an image file (root/cimv2 CIM_DataFile.Delete); whether it is gone."""
        try:
            with self._mapped(f"delete {path}", deadline):
                rc = self.client.delete_file(path, deadline=deadline)
        except NotFound:
            return True
        except VmctlError as exc:
            log.warning("could not delete %s: %s", path, exc)
            return False
        if rc != 0:
            log.warning("could not delete %s: CIM_DataFile.Delete returned %s", path, rc)
        return rc == 0

    # -- power ----------------------------------------------------------------------------

    def _state_change(self, uuid: str, rs: int, what: str, deadline: Deadline) -> Task | None:
        guid = _guid(uuid)
        task, _ = self._invoke(
            f"{what} VM {uuid}",
            "Msvm_ComputerSystem",
            "RequestStateChange",
            _vm_keys(guid),
            [("RequestedState", rs)],
            deadline,
        )
        return task

    def start(self, uuid: str, *, deadline: Deadline) -> Task | None:
        return self._state_change(uuid, 2, "start", deadline)

    def power_off(self, uuid: str, *, deadline: Deadline) -> Task | None:
        return self._state_change(uuid, 3, "power off", deadline)

    def reboot(self, uuid: str, *, deadline: Deadline) -> Task | None:
        return self._state_change(uuid, 10, "reboot", deadline)

    def reset(self, uuid: str, *, deadline: Deadline) -> Task | None:
        return self._state_change(uuid, 11, "reset", deadline)

    def pause(self, uuid: str, *, deadline: Deadline) -> Task | None:
        return self._state_change(uuid, 9, "pause", deadline)

    def unpause(self, uuid: str, *, deadline: Deadline) -> Task | None:
        return self._state_change(uuid, 2, "resume", deadline)

    def suspend(self, uuid: str, *, deadline: Deadline) -> Task | None:
        return self._state_change(uuid, 6, "save", deadline)

    def resume_suspended(self, uuid: str, *, deadline: Deadline) -> Task | None:
        return self._state_change(uuid, 2, "restore", deadline)

    def _component(self, cls: str, guid: str, deadline: Deadline) -> dict[str, Any] | None:
        rows = self._query(
            f"read the {cls} of {guid}",
            f"SELECT * FROM {cls} WHERE SystemName = {wql_string(guid)}",
            deadline,
        )
        return rows[0] if rows else None

    def shutdown(self, uuid: str, *, deadline: Deadline) -> Task | None:
        guid = _guid(uuid)
        comp = self._component("Msvm_ShutdownComponent", guid, deadline)
        status = as_list(comp.get("OperationalStatus")) if comp else []
        if comp is None or _int(status[0] if status else 0) != 2:
            raise InvalidState(
                f"the guest of VM {uuid} cannot be asked to shut down: its shutdown "
                "integration service does not answer (no guest OS, not booted yet, or not "
                "installed)",
                vendor_code="12" if comp else None,
            )
        keys = {
            k: str(comp[k])
            for k in ("CreationClassName", "DeviceID", "SystemCreationClassName", "SystemName")
        }
        task, _ = self._invoke(
            f"shut down VM {uuid}",
            "Msvm_ShutdownComponent",
            "InitiateShutdown",
            keys,
            [("Force", True), ("Reason", "vmctl")],
            deadline,
        )
        return task

    # -- tasks ----------------------------------------------------------------------------

    def wait_tasks(self, tasks: Sequence[Task], *, deadline: Deadline) -> list[TaskOutcome]:
        """One pause (50 ms, doubling with each call for the same jobs up to 1 s, never past
        the deadline: a job that was just started is not done at once), then one WQL query
        of the jobs; [] to the core's loop when none has ended."""
        if not tasks:
            return []
        polls = max(getattr(t.handle, "polls", 0) for t in tasks)
        for t in tasks:
            if isinstance(t.handle, _Job):
                t.handle.polls += 1
        time.sleep(max(0.0, min(POLL_MAX_S, POLL_FIRST_S * (2**polls), deadline.remaining())))
        if deadline.expired():
            return []
        cond = " OR ".join(f"InstanceID = {wql_string(t.id)}" for t in tasks)
        rows = self._query(
            "read jobs",
            "SELECT InstanceID, JobState, ErrorCode, ErrorDescription, "
            f"ErrorSummaryDescription FROM Msvm_ConcreteJob WHERE {cond}",
            deadline,
        )
        by_id = {str(r["InstanceID"]).upper(): r for r in rows}
        out: list[TaskOutcome] = []
        for t in tasks:
            row = by_id.get(t.id.upper())
            if row is None:
                gone = OutcomeUnknown(
                    f"{t.description}: the host no longer knows job {t.id}", sent=True
                )
                out.append(TaskOutcome(t, error=gone))
                continue
            state = _int(row.get("JobState"))
            if state in (2, 3, 4, 5, 6, 11):
                continue
            if state == 7:
                out.append(TaskOutcome(t))
                continue
            code = _int(row.get("ErrorCode")) or 32768
            desc = str(row.get("ErrorDescription") or row.get("ErrorSummaryDescription") or "")
            err, orig = _errors.from_code(t.description, code, desc)
            err.__cause__ = orig
            out.append(TaskOutcome(t, error=err))
        return out

    # -- reconfigure ----------------------------------------------------------------------

    def _modify(
        self, what: str, cls: str, inst: Mapping[str, Any], deadline: Deadline, **changes: Any
    ) -> Task | None:
        svc = "Msvm_VirtualSystemManagementService"
        task, _ = self._invoke(
            what,
            svc,
            "ModifyResourceSettings",
            self._svc(svc),
            [("ResourceSettings", [Embedded(cls, _props(inst, **changes))])],
            deadline,
        )
        return task

    def set_vcpus(self, uuid: str, vcpus: int, *, live: bool, deadline: Deadline) -> Task | None:
        guid = _guid(uuid)
        cpu = self._cpu(guid, deadline)
        # Reservation and Limit are shares of the VM's own processors: rescale them so that
        # the reservation and limit in cores (vmctl's unit) stay what they were.
        old = max(1, _int(cpu.get("VirtualQuantity")))
        changes: dict[str, Any] = {"VirtualQuantity": vcpus}
        for key in ("Reservation", "Limit"):
            value = _int(cpu.get(key))
            if 0 < value < LIMIT_MAX or (key == "Reservation" and value):
                changes[key] = min(LIMIT_MAX, round(value * old / vcpus))
        return self._modify(
            f"set {vcpus} vCPUs on VM {uuid}",
            "Msvm_ProcessorSettingData",
            cpu,
            deadline,
            **changes,
        )

    def set_memory(
        self, uuid: str, memory_mib: int, *, live: bool, deadline: Deadline
    ) -> Task | None:
        self._check_memory(memory_mib)
        guid = _guid(uuid)
        mem = self._mem(guid, deadline)
        changes: dict[str, Any] = {"VirtualQuantity": memory_mib}
        if str(mem.get("DynamicMemoryEnabled")).lower() != "true":
            changes["Reservation"] = memory_mib
            changes["Limit"] = max(memory_mib, _int(mem.get("Limit")))
        return self._modify(
            f"set {memory_mib} MiB on VM {uuid}", "Msvm_MemorySettingData", mem, deadline, **changes
        )

    @staticmethod
    def _cpu_props(res: Resources, vcpus: int) -> dict[str, Any]:
        """Msvm_ProcessorSettingData from vmctl's controls: Weight 1-10000; Reservation and
        Limit in thousandths of a percent of the VM's own processors (0-100000), vmctl's in
        percent of one core."""
        out: dict[str, Any] = {"VirtualQuantity": vcpus}
        if res.cpu_shares is not None:
            if res.cpu_shares > 10000:
                raise ValidationError(
                    f"Hyper-V's processor weight is 1-10000 (got {res.cpu_shares})",
                    field="cpu_shares",
                )
            out["Weight"] = res.cpu_shares
        for name, value in (
            ("Reservation", res.cpu_reservation_percent),
            ("Limit", res.cpu_limit_percent),
        ):
            if value is None:
                continue
            if value > 100 * vcpus:
                raise ValidationError(
                    f"a CPU {name.lower()} of {value}% exceeds the VM's {vcpus} vCPU(s) "
                    f"({100 * vcpus}%)",
                    field=f"cpu_{name.lower()}_percent",
                )
            out[name] = round(value * 1000 / vcpus)
        return out

    def set_resources(self, uuid: str, resources: Resources, *, deadline: Deadline) -> Task | None:
        guid = _guid(uuid)
        cpu = self._cpu(guid, deadline)
        n = max(1, _int(cpu.get("VirtualQuantity")))
        props = self._cpu_props(resources, n)
        props.pop("VirtualQuantity")
        if (
            "Reservation" in props
            and "Limit" not in props
            and props["Reservation"] > _int(cpu.get("Limit"))
        ):
            raise ValidationError(
                "the CPU reservation would exceed the VM's CPU limit", field="resources"
            )
        if (
            "Limit" in props
            and "Reservation" not in props
            and props["Limit"] < _int(cpu.get("Reservation"))
        ):
            raise ValidationError(
                "the CPU limit would be below the VM's CPU reservation", field="resources"
            )
        if not props:
            return None
        return self._modify(
            f"set resources of VM {uuid}", "Msvm_ProcessorSettingData", cpu, deadline, **props
        )

    # -- devices --------------------------------------------------------------------------

    def add_disk(self, uuid: str, disk: DiskSpec, *, live: bool, deadline: Deadline) -> DiskInfo:
        cs = self._cs(uuid, deadline)
        guid = str(cs["Name"])
        if disk.pool is not None:
            raise NotFound(f"no pool {disk.pool!r}: disks are kept in {self.disk_dir}")
        path = self._new_disk_path(
            str(cs.get("ElementName")), len(self._disks(guid, deadline, sizes=False))
        )
        self._create_vhd(path, disk, deadline)
        try:
            ctrl = self._add_controller(guid, deadline)
            used = {
                _int(r.get("AddressOnParent"))
                for r in self._rasd(guid, "Msvm_ResourceAllocationSettingData", deadline)
                if _path_id(r.get("Parent")).upper() == ctrl.upper()
            }
            slot = next(i for i in range(64) if i not in used)
            drive = self._attach_vhd(guid, ctrl, slot, path, deadline)
        except VmctlError as exc:
            if not self._delete_file(
                path, Deadline.after(min(60.0, max(5.0, deadline.remaining())))
            ):
                exc.left_behind = (("disk", path),)
                exc.message += f" (left behind: disk {path})"
            raise
        for info, d in self._disks(guid, deadline):
            if str(d["InstanceID"]).upper() == drive.upper():
                return info
        raise NotFound(f"the disk added to VM {uuid} is not in its configuration")

    def remove_disk(self, uuid: str, disk_id: str, *, live: bool, deadline: Deadline) -> None:
        guid = _guid(uuid)
        for info, drive in self._disks(guid, deadline):
            if info.id == disk_id:
                self._vsms(
                    f"remove disk {disk_id} from VM {uuid}",
                    "RemoveResourceSettings",
                    [
                        (
                            "ResourceSettings",
                            [
                                Ref(
                                    "Msvm_ResourceAllocationSettingData",
                                    {"InstanceID": str(drive["InstanceID"])},
                                )
                            ],
                        )
                    ],
                    deadline,
                )
                # vmctl's image goes with it, unless a checkpoint still holds it (then it
                # goes when the last holder does: delete_snapshot, revert or delete_vm)
                if drive["__owned__"] and info.path:
                    _, left = self._delete_unheld([info.path], deadline)
                    if left:
                        err = BackendError(
                            f"disk {disk_id} was detached from VM {uuid} but {info.path} "
                            "could not be deleted"
                        )
                        err.left_behind = (("disk", info.path),)
                        raise err
                return
        raise NotFound(f"VM {uuid} has no disk {disk_id!r}")

    def add_nic(self, uuid: str, nic: NicSpec, *, live: bool, deadline: Deadline) -> NicInfo:
        guid = _guid(uuid)
        sw = self._switch(nic.network, deadline)
        port = self._attach_nic(guid, nic, sw, deadline)
        for n in self._nics(guid, deadline):
            if n.id == _suffix(port, guid):
                return n
        raise NotFound(f"the NIC added to VM {uuid} is not in its configuration")

    def remove_nic(self, uuid: str, nic_id: str, *, live: bool, deadline: Deadline) -> None:
        guid = _guid(uuid)
        if not any(n.id == nic_id for n in self._nics(guid, deadline)):
            raise NotFound(f"VM {uuid} has no NIC {nic_id!r}")
        self._vsms(
            f"remove NIC {nic_id} from VM {uuid}",
            "RemoveResourceSettings",
            [
                (
                    "ResourceSettings",
                    [
                        Ref(
                            "Msvm_SyntheticEthernetPortSettingData",
                            {"InstanceID": f"Microsoft:{guid}\\{nic_id}"},
                        )
                    ],
                )
            ],
            deadline,
        )

    # -- snapshots ------------------------------------------------------------------------

    def _snapshots(self, guid: str, deadline: Deadline) -> list[dict[str, Any]]:
        return self._query(
            f"list checkpoints of {guid}",
            f"ASSOCIATORS OF {{Msvm_ComputerSystem.CreationClassName='Msvm_ComputerSystem',"
            f"Name='{guid}'}} WHERE AssocClass = Msvm_SnapshotOfVirtualSystem "
            "ResultClass = Msvm_VirtualSystemSettingData",
            deadline,
        )

    def _snapshot_info(self, row: Mapping[str, Any], current: str) -> SnapshotInfo:
        sid = str(row["InstanceID"])
        notes = as_list(row.get("Notes"))
        parent = _path_id(row.get("Parent")) or None
        return SnapshotInfo(
            id=sid,
            name=str(row.get("ElementName") or ""),
            created=_when(row.get("CreationTime")),
            parent=parent,
            with_memory=sid in self._memory_snaps,
            state=S.RUNNING if sid in self._memory_snaps else S.STOPPED,
            description=str(notes[0]) if notes else "",
            current=sid.upper() == current.upper(),
        )

    def list_snapshots(self, uuid: str, *, deadline: Deadline) -> list[SnapshotInfo]:
        guid = _guid(uuid)
        self._cs(uuid, deadline)
        vssd = self._one("Msvm_VirtualSystemSettingData", f"Microsoft:{guid}", deadline)
        current = _path_id(vssd.get("Parent"))
        return [self._snapshot_info(r, current) for r in self._snapshots(guid, deadline)]

    def create_snapshot(
        self, uuid: str, name: str, *, memory: bool, description: str, deadline: Deadline
    ) -> SnapshotInfo:
        cs = self._cs(uuid, deadline)
        guid = str(cs["Name"])
        if any(str(r.get("ElementName")) == name for r in self._snapshots(guid, deadline)):
            raise AlreadyExists(f"VM {uuid} already has a checkpoint named {name!r}")
        running = STATES.get(_int(cs.get("EnabledState"))) in (S.RUNNING, S.PAUSED)
        svc = "Msvm_VirtualSystemSnapshotService"
        out = self._run(
            f"checkpoint VM {uuid}",
            svc,
            "CreateSnapshot",
            self._svc(svc),
            [("AffectedSystem", Ref("Msvm_ComputerSystem", _vm_keys(guid))), ("SnapshotType", 2)],
            deadline,
        )
        snap = out.get("ResultingSnapshot")
        if not isinstance(snap, Ref):
            raise BackendError(f"checkpoint VM {uuid}: no ResultingSnapshot")
        sid = snap.keys["InstanceID"]
        if running:
            # A standard checkpoint of a running VM holds its memory (saved state).
            self._memory_snaps.add(sid)
        self._vsms(
            f"name checkpoint {sid}",
            "ModifySystemSettings",
            [
                (
                    "SystemSettings",
                    Embedded(
                        "Msvm_VirtualSystemSettingData",
                        {
                            "InstanceID": sid,
                            "ElementName": name,
                            "Notes": [description] if description else None,
                        },
                    ),
                )
            ],
            deadline,
        )
        for s in self.list_snapshots(guid, deadline=deadline):
            if s.id == sid:
                return s
        raise NotFound(f"the checkpoint of VM {uuid} is gone")

    def _snap_ref(self, guid: str, snapshot_id: str, deadline: Deadline) -> Ref:
        for r in self._snapshots(guid, deadline):
            if str(r["InstanceID"]).upper() == snapshot_id.upper():
                return Ref("Msvm_VirtualSystemSettingData", {"InstanceID": str(r["InstanceID"])})
        raise NotFound(f"VM {guid} has no checkpoint {snapshot_id!r}")

    def revert_snapshot(self, uuid: str, snapshot_id: str, *, deadline: Deadline) -> Task | None:
        cs = self._cs(uuid, deadline)
        guid = str(cs["Name"])
        ref = self._snap_ref(guid, snapshot_id, deadline)
        if STATES.get(_int(cs.get("EnabledState"))) in (S.RUNNING, S.PAUSED):
            # ApplySnapshot needs the VM Off or Saved (Hyper-V Manager turns it off too).
            task = self._state_change(guid, 3, "turn off (to apply a checkpoint)", deadline)
            if task is not None:
                finish_task(self, task, deadline=deadline, what=f"turn off VM {uuid}")
        owned = self._owned(guid, deadline)
        svc = "Msvm_VirtualSystemSnapshotService"
        self._run(
            f"apply checkpoint {snapshot_id} to VM {uuid}",
            svc,
            "ApplySnapshot",
            self._svc(svc),
            [("Snapshot", ref)],
            deadline,
        )
        # A disk vmctl added after the checkpoint is detached by ApplySnapshot but its file
        # stays: it goes now unless another checkpoint holds it.
        _, left = self._delete_unheld(owned, deadline)
        if left:
            log.warning("reverted VM %s; could not delete the disk(s) %s", uuid, left)
        after = self._cs(guid, deadline)
        if _int(after.get("EnabledState")) == 6:
            # A checkpoint with memory leaves the VM Saved; restoring it makes it RUNNING.
            return self._state_change(guid, 2, "restore", deadline)
        return None

    def delete_snapshot(self, uuid: str, snapshot_id: str, *, deadline: Deadline) -> Task | None:
        guid = _guid(uuid)
        ref = self._snap_ref(guid, snapshot_id, deadline)
        owned = self._owned(ref.keys["InstanceID"].removeprefix("Microsoft:"), deadline)
        svc = "Msvm_VirtualSystemSnapshotService"
        what = f"delete checkpoint {snapshot_id} of VM {uuid}"
        self._run(
            what, svc, "DestroySnapshot", self._svc(svc), [("AffectedSnapshot", ref)], deadline
        )
        # the checkpoint may have been the last holder of a disk vmctl made and removed
        _, left = self._delete_unheld(owned, deadline)
        if left:
            log.warning("deleted checkpoint %s; could not delete the disk(s) %s", snapshot_id, left)
        return None

    # -- migration ------------------------------------------------------------------------

    def migrate_vm(
        self, uuid: str, target: Driver, *, live: bool, deadline: Deadline
    ) -> Task | None:
        if not isinstance(target, HyperVDriver):
            raise ValidationError(
                "the target of a migration must be a hyperv connection", field="target"
            )
        if target.host_name.upper() == self.host_name.upper():
            raise ValidationError(f"the VM is already on {self.host_name}", field="target")
        guid = _guid(uuid)
        svc = "Msvm_VirtualSystemMigrationService"
        task, _ = self._invoke(
            f"migrate VM {uuid} to {target.host_name}",
            svc,
            "MigrateVirtualSystemToHost",
            self._svc(svc),
            [
                ("ComputerSystem", Ref("Msvm_ComputerSystem", _vm_keys(guid))),
                ("DestinationHost", target.host_name),
                (
                    "MigrationSettingData",
                    # 32768: VirtualSystem (the VM moves; live while it runs).
                    Embedded("Msvm_VirtualSystemMigrationSettingData", {"MigrationType": 32768}),
                ),
            ],
            deadline,
        )
        return task

    # -- guest ----------------------------------------------------------------------------

    def guest_info(self, uuid: str, *, deadline: Deadline) -> GuestInfo:
        guid = _guid(uuid)
        self._cs(uuid, deadline)
        comp = self._component("Msvm_KvpExchangeComponent", guid, deadline)
        if comp is None:
            return GuestInfo(agent=AgentState.NOT_RUNNING)
        status = as_list(comp.get("OperationalStatus"))
        items: dict[str, str] = {}
        for text in as_list(comp.get("GuestIntrinsicExchangeItems")):
            with contextlib.suppress(Exception):
                item = parse_cimxml(str(text)) if isinstance(text, str) else dict(text)
                items[str(item.get("Name"))] = str(item.get("Data") or "")
        ips: list[str] = []
        for key in ("NetworkAddressIPv4", "NetworkAddressIPv6"):
            ips += [a for a in items.get(key, "").split(";") if a]
        up = bool(status) and _int(status[0]) == 2
        return GuestInfo(
            ip_addresses=tuple(ips),
            agent=AgentState.RUNNING if up else AgentState.NOT_RUNNING,
            hostname=items.get("FullyQualifiedDomainName") or None,
            os_name=items.get("OSName") or None,
        )

    # -- events ---------------------------------------------------------------------------

    def subscribe(self, *, deadline: Deadline) -> _PollEvents:
        sub = _PollEvents(self, self.poll_s, deadline)
        with self._lock:
            self._subscriptions.append(sub)
        return sub

    def _unsubscribe(self, sub: _PollEvents) -> None:
        with self._lock:
            if sub in self._subscriptions:
                self._subscriptions.remove(sub)

    def _notify(self, kind: EventKind, uuid: str, name: str, state: PowerState | None) -> None:
        with self._lock:
            subs = list(self._subscriptions)
        for sub in subs:
            sub.note(kind, uuid, name, state)


def _positive(value: Any, name: str) -> float:
    try:
        f = float(value)
        if not 0 < f < float("inf"):
            raise ValueError
    except ValueError:
        raise ValidationError(f"{name} must be a positive number of seconds", field=name) from None
    return f
