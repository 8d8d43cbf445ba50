"""The simulated cluster: hosts, virtual machines, their settings, jobs and CIM methods."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from . import tables as T
from .cim import Epr, Instance, Interval, Query, cimxml_instance, epr_of

#: "File not found" (32779, HV2/createvirtualharddisk-... return values): how the simulator
#: reports a disk or CD image path that names no file, as the failing job's ErrorCode.
RC_FILE_NOT_FOUND = 32779

_PARENT_ID = re.compile(r'InstanceID="((?:[^"\\]|\\.)*)"')

#: What the simulated guest OS calls itself (KVP OSName, GetSummaryInformation).
GUEST_OS = "Ubuntu 22.04.4 LTS"


@dataclasses.dataclass
class Config:
    hosts: int = 2
    vms: int = 4
    running: int = 0
    username: str = "Administrator"
    password: str = "hypervsim"
    domain: str = "HVSIM"
    op_delay: float = 0.2
    guest_delay: float = 0.3
    host_memory_gib: int = 64
    host_prefix: str = "HVHOST"


class WmiFault(Exception):
    """A fault from the WMI provider: carried as MSFT_WmiError in the SOAP fault, or - with
    ``relpath``, an instance the provider did not find - as a WSManFault holding the WMI
    plug-in's ProviderFault and __ExtendedStatus."""

    def __init__(
        self, kind: str, message: str, cim_status: int, hresult: int, relpath: str | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.cim_status = cim_status
        self.hresult = hresult
        self.relpath = relpath


def not_found(what: str) -> WmiFault:
    return WmiFault(
        "DestinationUnreachable", f"Not found: {what}", T.CIM_ERR_NOT_FOUND, T.WBEM_E_NOT_FOUND
    )


def invalid_param(what: str) -> WmiFault:
    return WmiFault(
        "InvalidParameter",
        f"Invalid parameter: {what}",
        T.CIM_ERR_INVALID_PARAMETER,
        T.WBEM_E_INVALID_PARAMETER,
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _guid() -> str:
    return str(uuid.uuid4()).upper()


@dataclasses.dataclass
class Snapshot:
    vssd: Instance
    rasds: list[Instance]
    saved: bool  # taken while the VM ran: applying it leaves the VM Saved (6)


@dataclasses.dataclass
class VM:
    guid: str
    host: str
    index: int
    vssd: Instance
    rasds: list[Instance]
    state: int = T.ES_DISABLED
    requested: int = T.RS_NO_CHANGE
    busy: str | None = None  # InstanceID of the job changing the state
    snapshots: list[Snapshot] = dataclasses.field(default_factory=list)
    created: dt.datetime = dataclasses.field(default_factory=_now)
    state_changed: dt.datetime = dataclasses.field(default_factory=_now)
    run_since: float | None = None  # monotonic time of the last start/reset/resume
    run_accum: float = 0.0  # seconds run before the last pause
    guest_os: bool = False  # decided at start from the boot media
    guest_ready_at: float = 0.0

    @property
    def name(self) -> str:
        return str(self.vssd["ElementName"])


@dataclasses.dataclass
class Job:
    inst: Instance
    host: str
    start: float
    done_at: float
    effect: Callable[[], tuple[int, str] | None]
    finished: float | None = None
    hidden: bool = False  # internal timers (guest shutdown) that WMI shows no job for


class World:
    """Everything the endpoints serve; one lock guards it all."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.lock = threading.RLock()
        self.hosts = [f"{cfg.host_prefix}{i + 1}" for i in range(cfg.hosts)]
        self.vms: dict[str, VM] = {}
        self.jobs: dict[str, Job] = {}
        self.host_cs: dict[str, Instance] = {}
        self.services: dict[str, list[Instance]] = {}
        self.switches: dict[str, Instance] = {}
        self.switch_guid = _guid()
        self.os_images: set[str] = {
            "c:\\hyper-v\\images\\guest-os.vhdx",
            "c:\\hyper-v\\images\\guest-os.iso",
        }
        # The virtual hard disk files (shared storage: every host sees them), lower-case
        # path -> size in bytes.
        self.disks: dict[str, int] = {p: 16 << 30 for p in self.os_images}
        #: VHD type (2 fixed, 3 dynamic, 4 differencing) and parent of made images.
        self.disk_kinds: dict[str, tuple[int, str | None]] = {}
        #: When each file was made (CIM_DataFile CreationDate/LastModified).
        self.disk_times: dict[str, dt.datetime] = dict.fromkeys(self.disks, _now())
        for host in self.hosts:
            self._make_host(host)
        for n in range(cfg.vms):
            vm = self._new_vm(self.hosts[n % len(self.hosts)], f"vm-{n + 1:02d}")
            disk = f"C:\\ProgramData\\Microsoft\\Windows\\Virtual Hard Disks\\{vm.name}.vhdx"
            self.os_images.add(disk.lower())
            self.disks[disk.lower()] = 16 << 30
            self.disk_times[disk.lower()] = _now()
            self._add_devices(vm, disk)
            if n < cfg.running:
                self._power_on(vm)
                vm.guest_ready_at = 0.0

    # --- construction -----------------------------------------------------------------
    def _make_host(self, host: str) -> None:
        self.host_cs[host] = Instance(
            "Msvm_ComputerSystem",
            {
                "Caption": T.HOST_CAPTION,
                "Description": T.HOST_DESCRIPTION,
                "ElementName": host,
                "CreationClassName": "Msvm_ComputerSystem",
                "Name": host,
                "EnabledState": T.ES_ENABLED,
                "RequestedState": T.RS_NOT_APPLICABLE,
                "EnabledDefault": T.ES_ENABLED,
                "HealthState": T.HEALTH_OK,
                "OperationalStatus": [2],
                "ResetCapability": 1,
                "NumberOfNumaNodes": 1,
            },
        )
        base = {
            "SystemCreationClassName": "Msvm_ComputerSystem",
            "SystemName": host,
            "EnabledState": T.ES_ENABLED,
            "HealthState": T.HEALTH_OK,
            "OperationalStatus": [2],
            "Started": True,
        }
        self.services[host] = [
            Instance(
                cls,
                dict(
                    base,
                    CreationClassName=cls,
                    Name=name,
                    ElementName=label,
                    Caption=label,
                    StartMode="Automatic",
                ),
            )
            for cls, name, label in (
                (
                    "Msvm_ImageManagementService",
                    T.SERVICE_NAMES["Msvm_ImageManagementService"],
                    "Image Management Service",
                ),
                (
                    "Msvm_VirtualSystemManagementService",
                    T.SERVICE_NAMES["Msvm_VirtualSystemManagementService"],
                    "Virtual Machine Management Service",
                ),
                (
                    "Msvm_VirtualSystemSnapshotService",
                    T.SERVICE_NAMES["Msvm_VirtualSystemSnapshotService"],
                    "Virtual System Snapshot",
                ),
                (
                    "Msvm_VirtualSystemMigrationService",
                    T.SERVICE_NAMES["Msvm_VirtualSystemMigrationService"],
                    "Virtual System Migration Service",
                ),
            )
        ]
        self.switches[host] = Instance(
            "Msvm_VirtualEthernetSwitch",
            {
                "Caption": "Virtual Ethernet Switch",
                "Description": "Microsoft Virtual Ethernet Switch",
                "ElementName": "vSwitch",
                "CreationClassName": "Msvm_VirtualEthernetSwitch",
                "Name": self.switch_guid,
                "EnabledState": T.ES_ENABLED,
                "HealthState": T.HEALTH_OK,
                "OperationalStatus": [2],
            },
        )

    def _new_vm(self, host: str, name: str, settings: Instance | None = None) -> VM:
        guid = _guid()
        now = _now()
        vssd = Instance(
            "Msvm_VirtualSystemSettingData",
            {
                "InstanceID": f"Microsoft:{guid}",
                "Caption": "Virtual Machine Settings",
                "Description": "Active settings for the virtual machine.",
                "ElementName": name,
                "VirtualSystemIdentifier": guid,
                "VirtualSystemType": "Microsoft:Hyper-V:System:Realized",
                "VirtualSystemSubType": "Microsoft:Hyper-V:SubType:2",
                "Version": "10.0",
                "CreationTime": now,
                "ConfigurationID": guid,
                "ConfigurationDataRoot": "C:\\ProgramData\\Microsoft\\Windows\\Hyper-V",
                "SnapshotDataRoot": "C:\\ProgramData\\Microsoft\\Windows\\Hyper-V",
                "AutomaticStartupAction": 2,
                "AutomaticShutdownAction": 3,
                "AutomaticRecoveryAction": 3,
                "BIOSGUID": "{" + _guid() + "}",
                "SecureBootEnabled": True,
                "IsSaved": False,
                "Notes": [""],
            },
        )
        if settings is not None:
            for k in (
                "ElementName",
                "Notes",
                "VirtualSystemSubType",
                "SecureBootEnabled",
                "AutomaticStartupAction",
                "AutomaticShutdownAction",
                "BootOrder",
                "BootSourceOrder",
                "ConfigurationDataRoot",
                "Version",
            ):
                if settings.get(k) is not None:
                    vssd[k] = settings[k]
        vm = VM(guid, host, len(self.vms) + 1, vssd, [])
        vm.rasds = [self._processor(vm, T.DEFAULT_VCPUS), self._memory(vm, T.DEFAULT_MEMORY_MB)]
        self.vms[guid] = vm
        return vm

    def _rasd(self, vm: VM, subtype: str, **props: Any) -> Instance:
        rtype, cls = T.SUBTYPES[subtype]
        base: dict[str, Any] = {
            "InstanceID": f"Microsoft:{vm.guid}\\{_guid()}",
            "ResourceType": rtype,
            "ResourceSubType": subtype,
            "ElementName": subtype.rpartition(":")[2],
            "Caption": subtype.rpartition(":")[2],
            "AutomaticAllocation": True,
            "AutomaticDeallocation": True,
        }
        base.update(props)
        return Instance(cls, base)

    def _processor(self, vm: VM, count: int) -> Instance:
        return self._rasd(
            vm,
            "Microsoft:Hyper-V:Processor",
            InstanceID=f"Microsoft:{vm.guid}\\{T.PROCESSOR_ID_SUFFIX}",
            ElementName="Processor",
            VirtualQuantity=count,
            Reservation=0,
            Limit=T.PROCESSOR_LIMIT_MAX,
            Weight=T.PROCESSOR_WEIGHT_DEFAULT,
            AllocationUnits="count",
            VirtualQuantityUnits="count",
        )

    def _memory(self, vm: VM, mb: int) -> Instance:
        return self._rasd(
            vm,
            "Microsoft:Hyper-V:Memory",
            InstanceID=f"Microsoft:{vm.guid}\\{T.MEMORY_ID_SUFFIX}",
            ElementName="Memory",
            VirtualQuantity=mb,
            Reservation=mb,
            Limit=1048576,
            Weight=5000,
            DynamicMemoryEnabled=False,
            TargetMemoryBuffer=20,
            AllocationUnits="byte * 2^20",
            VirtualQuantityUnits="byte * 2^20",
        )

    def _add_devices(self, vm: VM, disk: str | None) -> None:
        scsi = self._rasd(
            vm, "Microsoft:Hyper-V:Synthetic SCSI Controller", ElementName="SCSI Controller"
        )
        vm.rasds.append(scsi)
        if disk is not None:
            drive = self._rasd(
                vm,
                "Microsoft:Hyper-V:Synthetic Disk Drive",
                ElementName="Hard Drive",
                Parent=scsi.path(vm.host),
                AddressOnParent="0",
            )
            vhd = self._rasd(
                vm,
                "Microsoft:Hyper-V:Virtual Hard Disk",
                ElementName="Hard Disk Image",
                Parent=drive.path(vm.host),
                HostResource=[disk],
            )
            vm.rasds += [drive, vhd]
        port = self._rasd(
            vm,
            "Microsoft:Hyper-V:Synthetic Ethernet Port",
            ElementName="Network Adapter",
            Address=self._mac(vm, 0),
            StaticMacAddress=False,
            VirtualSystemIdentifiers=["{" + _guid() + "}"],
        )
        conn = self._rasd(
            vm,
            "Microsoft:Hyper-V:Ethernet Connection",
            ElementName="Dynamic Ethernet Switch Port",
            Parent=port.path(vm.host),
            EnabledState=T.ES_ENABLED,
            HostResource=[self.switches[vm.host].path(vm.host)],
        )
        vm.rasds += [port, conn]

    def _mac(self, vm: VM, n: int) -> str:
        # Hyper-V's dynamic MAC pool is 00-15-5D-xx-xx-xx (OUI of Microsoft Hyper-V).
        return f"00155D{(vm.index >> 8) & 0xFF:02X}{vm.index & 0xFF:02X}{n & 0xFF:02X}"

    # --- time ------------------------------------------------------------------------------
    def tick(self) -> None:
        """Complete the jobs whose time has come (called before every request)."""
        now = time.monotonic()
        with self.lock:
            for job in sorted(self.jobs.values(), key=lambda j: j.done_at):
                if job.finished is None and job.done_at <= now:
                    self._finish(job, now)
            for jid in [
                j
                for j, job in self.jobs.items()
                if job.finished is not None and now - job.finished > 300
            ]:
                del self.jobs[jid]

    def _finish(self, job: Job, now: float) -> None:
        try:
            err = job.effect()
        except Exception as exc:  # a bug in an effect must not kill the server
            err = (T.RC_FAILED, f"Internal simulator error: {exc}")
        job.finished = now
        inst = job.inst
        inst["PercentComplete"] = 100
        inst["ElapsedTime"] = Interval(now - job.start)
        inst["TimeOfLastStateChange"] = _now()
        if err is None:
            inst["JobState"] = T.JOB_COMPLETED
            inst["ErrorCode"] = 0
            inst["JobStatus"] = "Job completed successfully"
            inst["OperationalStatus"] = [2, 17]  # OK, Completed
            inst["Status"] = "OK"
        else:
            inst["JobState"] = T.JOB_EXCEPTION
            inst["ErrorCode"] = err[0]
            inst["ErrorDescription"] = err[1]
            inst["ErrorSummaryDescription"] = err[1]
            inst["JobStatus"] = "Job failed"
            inst["OperationalStatus"] = [6, 17]  # Error, Completed
            inst["Status"] = "Error"

    def _job(
        self,
        host: str,
        name: str,
        effect: Callable[[], tuple[int, str] | None],
        delay: float | None = None,
        hidden: bool = False,
    ) -> Instance:
        jid = _guid()
        now = time.monotonic()
        inst = Instance(
            "Msvm_ConcreteJob",
            {
                "InstanceID": jid,
                "Caption": name,
                "Description": name,
                "ElementName": name,
                "Name": name,
                "JobState": T.JOB_RUNNING,
                "JobStatus": "Job is running",
                "PercentComplete": 0,
                "ErrorCode": 0,
                "TimeSubmitted": _now(),
                "StartTime": _now(),
                "ElapsedTime": Interval(0),
                "TimeOfLastStateChange": _now(),
                "TimeBeforeRemoval": None,
                "DeleteOnCompletion": True,
                "Cancellable": False,
                "OperationalStatus": [2],
                "HealthState": T.HEALTH_OK,
                "JobRunTimes": 1,
                "Priority": 0,
                "Owner": f"{self.cfg.domain}\\{self.cfg.username}",
            },
        )
        done = now + (self.cfg.op_delay if delay is None else delay)
        job = Job(inst, host, now, done, effect, hidden=hidden)
        self.jobs[jid] = job
        if job.done_at <= now:
            self._finish(job, now)
        return inst

    def job_view(self, job: Job) -> Instance:
        inst = job.inst.copy()
        if job.finished is None:
            now = time.monotonic()
            span = max(job.done_at - job.start, 1e-6)
            inst["PercentComplete"] = min(99, int(100 * (now - job.start) / span))
            inst["ElapsedTime"] = Interval(now - job.start)
        return inst

    # --- views -----------------------------------------------------------------------------
    def vm_on(self, host: str) -> list[VM]:
        return [vm for vm in self.vms.values() if vm.host == host]

    def _on_ms(self, vm: VM) -> int:
        run = vm.run_accum
        if vm.run_since is not None:
            run += time.monotonic() - vm.run_since
        return int(run * 1000)

    def computer_system(self, vm: VM) -> Instance:
        es = vm.state
        avail = sorted({rs for (frm, rs) in T.TRANSITIONS if frm == es}) if vm.busy is None else []
        return Instance(
            "Msvm_ComputerSystem",
            {
                "Caption": T.VM_CAPTION,
                "Description": T.VM_DESCRIPTION,
                "ElementName": vm.name,
                "InstallDate": vm.created,
                "CreationClassName": "Msvm_ComputerSystem",
                "Name": vm.guid,
                "EnabledState": es,
                "OtherEnabledState": None,
                "RequestedState": vm.requested,
                "EnabledDefault": T.ES_ENABLED,
                "HealthState": T.HEALTH_OK,
                "OperationalStatus": [2],
                "AvailableRequestedStates": avail,
                "TransitioningToState": None,
                "TimeOfLastStateChange": vm.state_changed,
                "TimeOfLastConfigurationChange": vm.state_changed,
                "OnTimeInMilliseconds": self._on_ms(vm),
                "ProcessID": (4000 + vm.index) if es in (T.ES_ENABLED, T.ES_QUIESCE) else None,
                "NumberOfNumaNodes": 1,
                "ResetCapability": 1,
                "Dedicated": [0],
                "PrimaryOwnerName": f"{self.cfg.domain}\\{self.cfg.username}",
                "ReplicationState": 0,
                "ReplicationHealth": 0,
                "ReplicationMode": 0,
                "EnhancedSessionModeState": 3,
            },
        )

    def _guest_up(self, vm: VM) -> bool:
        return (
            vm.state in (T.ES_ENABLED,)
            and vm.busy is None
            and vm.guest_os
            and time.monotonic() >= vm.guest_ready_at
        )

    def _device(self, vm: VM, cls: str, suffix: str, label: str) -> Instance:
        up = self._guest_up(vm)
        return Instance(
            cls,
            {
                "Caption": label,
                "Description": label,
                "ElementName": label,
                "CreationClassName": cls,
                "DeviceID": f"Microsoft:{vm.guid}\\{suffix}",
                "SystemCreationClassName": "Msvm_ComputerSystem",
                "SystemName": vm.guid,
                "EnabledState": T.ES_ENABLED,
                "HealthState": T.HEALTH_OK,
                "OperationalStatus": [T.OPSTATUS_OK if up else T.OPSTATUS_NO_CONTACT],
                "StatusDescriptions": ["OK" if up else "No Contact"],
            },
        )

    def shutdown_component(self, vm: VM) -> Instance:
        return self._device(
            vm, "Msvm_ShutdownComponent", "9F8233AC-BE49-4C79-8EE3-E7E1985B2077", "Shutdown"
        )

    def kvp_component(self, vm: VM) -> Instance:
        inst = self._device(
            vm,
            "Msvm_KvpExchangeComponent",
            "7A4F3E1C-1D6D-4BD4-9F2C-0A3C6B1E4A51",
            "Key-Value Pair Exchange",
        )
        items: list[str] = []
        if self._guest_up(vm):
            v4, v6 = self.guest_ips(vm)
            data = {
                "FullyQualifiedDomainName": f"{vm.name}.{self.cfg.domain.lower()}.test",
                "IntegrationServicesVersion": "3.1",
                "NetworkAddressIPv4": ";".join(v4),
                "NetworkAddressIPv6": ";".join(v6),
                "OSBuildNumber": "5.15.0-105-generic",
                "OSName": GUEST_OS,
                "OSMajorVersion": "5",
                "OSMinorVersion": "15",
                "OSVersion": "22.04",
                "ProcessorArchitecture": "x86_64",
            }
            for name in T.KVP_ITEMS:
                items.append(
                    cimxml_instance(
                        Instance(
                            "Msvm_KvpExchangeDataItem",
                            {
                                "Caption": None,
                                "Data": data[name],
                                "Description": None,
                                "ElementName": None,
                                "Name": name,
                                "Source": T.KVP_SOURCE_GUEST_INTRINSIC,
                            },
                        )
                    )
                )
        inst["GuestIntrinsicExchangeItems"] = items
        inst["GuestExchangeItems"] = []
        return inst

    def guest_ips(self, vm: VM) -> tuple[list[str], list[str]]:
        v4: list[str] = []
        v6: list[str] = []
        n = 0
        for port in [r for r in vm.rasds if r.cls == "Msvm_SyntheticEthernetPortSettingData"]:
            path = port.path(vm.host)
            if not any(
                r.cls == "Msvm_EthernetPortAllocationSettingData"
                and r["Parent"] == path
                and r["HostResource"]
                for r in vm.rasds
            ):
                continue
            v4.append(f"10.{20 + n}.{vm.index // 250}.{vm.index % 250 + 2}")
            mac = str(port["Address"] or "00155D000000")
            v6.append(f"fe80::215:5dff:fe{mac[6:8].lower()}:{mac[8:12].lower()}")
            n += 1
        return v4, v6

    def instances(self, host: str, cls: str) -> list[Instance]:
        """Every instance of ``cls`` the endpoint of ``host`` serves (WMI is per host)."""
        vms = self.vm_on(host)
        if cls == "Msvm_ComputerSystem":
            return [self.host_cs[host]] + [self.computer_system(vm) for vm in vms]
        if cls == "Msvm_VirtualSystemSettingData":
            out = []
            for vm in vms:
                out.append(vm.vssd)
                out += [s.vssd for s in vm.snapshots]
            return out
        if cls in (
            "Msvm_ImageManagementService",
            "Msvm_VirtualSystemManagementService",
            "Msvm_VirtualSystemSnapshotService",
            "Msvm_VirtualSystemMigrationService",
        ):
            return [s for s in self.services[host] if s.cls == cls]
        if cls == "Msvm_VirtualEthernetSwitch":
            return [self.switches[host]]
        if cls == "Msvm_Processor":
            return [
                self._host_device(host, cls, f"Microsoft:LP_{n}")
                for n in range(T.HOST_LOGICAL_PROCESSORS)
            ]
        if cls == "Msvm_Memory":
            return [self._host_device(host, cls, "Microsoft:Host_Memory")]
        if cls == "Msvm_ConcreteJob":
            return [self.job_view(j) for j in self.jobs.values() if j.host == host and not j.hidden]
        if cls == "Msvm_ShutdownComponent":
            return [self.shutdown_component(vm) for vm in vms if self._live(vm)]
        if cls == "Msvm_KvpExchangeComponent":
            return [self.kvp_component(vm) for vm in vms if self._live(vm)]
        if cls == "CIM_DataFile":
            return [self.data_file(host, path) for path in sorted(self.disks)]
        if cls in T.CLASSES and "ResourceType" in T.CLASSES[cls].props:
            out = []
            for vm in vms:
                out += [r for r in vm.rasds if r.cls == cls]
                for s in vm.snapshots:
                    out += [r for r in s.rasds if r.cls == cls]
            return out
        return []

    def _host_device(self, host: str, cls: str, device_id: str) -> Instance:
        props: dict[str, Any] = {
            "CreationClassName": cls,
            "DeviceID": device_id,
            "SystemCreationClassName": "Msvm_ComputerSystem",
            "SystemName": host,
            "ElementName": device_id.partition(":")[2],
            "EnabledState": T.ES_ENABLED,
            "HealthState": T.HEALTH_OK,
            "OperationalStatus": [2],
        }
        if cls == "Msvm_Processor":
            props.update(
                Role="Central Processor",
                MaxClockSpeed=T.HOST_CPU_MHZ,
                CurrentClockSpeed=T.HOST_CPU_MHZ,
                DataWidth=64,
                AddressWidth=64,
                LoadPercentage=3,
                CPUStatus=1,
            )
        else:
            props.update(
                BlockSize=1 << 20,
                NumberOfBlocks=self.cfg.host_memory_gib * 1024,
                ConsumableBlocks=max(0, self.free_mb(host)),
                Volatile=True,
            )
        return Instance(cls, props)

    @staticmethod
    def _live(vm: VM) -> bool:
        # Integration-service devices exist while the VM's worker runs (Running or Paused).
        return vm.state in (T.ES_ENABLED, T.ES_QUIESCE, T.ES_STARTING, T.ES_SHUTTING_DOWN)

    def find(self, host: str, cls: str, selectors: dict[str, str]) -> Instance | None:
        for inst in self.instances(host, cls):
            keys = inst.keys()
            if all(keys.get(k, "").lower() == v.lower() for k, v in selectors.items()):
                return inst
        return None

    def vm_of_cs(self, host: str, epr: Epr | None) -> VM | None:
        if epr is None or epr.cls != "Msvm_ComputerSystem":
            return None
        vm = self.vms.get(epr.selectors.get("Name", "").upper())
        return vm if vm is not None and vm.host == host else None

    def _vssd_owner(self, host: str, instance_id: str) -> tuple[VM, Snapshot | None] | None:
        for vm in self.vm_on(host):
            if vm.vssd["InstanceID"].lower() == instance_id.lower():
                return vm, None
            for s in vm.snapshots:
                if s.vssd["InstanceID"].lower() == instance_id.lower():
                    return vm, s
        return None

    def _rasd_owner(self, host: str, instance_id: str) -> tuple[VM, Instance, bool] | None:
        for vm in self.vm_on(host):
            for r in vm.rasds:
                if r["InstanceID"].lower() == instance_id.lower():
                    return vm, r, False
            for s in vm.snapshots:
                for r in s.rasds:
                    if r["InstanceID"].lower() == instance_id.lower():
                        return vm, r, True
        return None

    # --- associations (WQL ASSOCIATORS OF) ---------------------------------------------------
    def associators(self, host: str, q: Query) -> list[Instance]:
        assert q.assoc_of is not None
        src_cls, sels = q.assoc_of
        src = self.find(host, src_cls, sels)
        if src is None:
            raise not_found(f"{src_cls} {sels}")
        out: list[tuple[str, Instance]] = []
        if src_cls == "Msvm_ComputerSystem" and src["Caption"] == T.VM_CAPTION:
            vm = self.vms[str(src["Name"])]
            out.append(("Msvm_SettingsDefineState", vm.vssd))
            out += [("Msvm_SnapshotOfVirtualSystem", s.vssd) for s in vm.snapshots]
            if self._live(vm):
                out.append(("Msvm_SystemDevice", self.shutdown_component(vm)))
                out.append(("Msvm_SystemDevice", self.kvp_component(vm)))
        elif src_cls == "Msvm_VirtualSystemSettingData":
            owner = self._vssd_owner(host, str(src["InstanceID"]))
            if owner is not None:
                vm, snap = owner
                rasds = vm.rasds if snap is None else snap.rasds
                out += [("Msvm_VirtualSystemSettingDataComponent", r) for r in rasds]
                kind = (
                    "Msvm_SettingsDefineState" if snap is None else "Msvm_SnapshotOfVirtualSystem"
                )
                out.append((kind, self.computer_system(vm)))
        elif "ResourceType" in T.CLASSES.get(src_cls, T.CLASSES["Msvm_ConcreteJob"]).props:
            found = self._rasd_owner(host, str(src["InstanceID"]))
            if found is not None:
                vm, r, in_snap = found
                vssd = vm.vssd
                if in_snap:
                    for s in vm.snapshots:
                        if any(x is r for x in s.rasds):
                            vssd = s.vssd
                out.append(("Msvm_VirtualSystemSettingDataComponent", vssd))
        elif src_cls in ("Msvm_ShutdownComponent", "Msvm_KvpExchangeComponent"):
            vm_g = str(src["SystemName"])
            if vm_g in self.vms:
                out.append(("Msvm_SystemDevice", self.computer_system(self.vms[vm_g])))
        res = []
        for assoc, inst in out:
            if q.assoc_class and q.assoc_class.lower() != assoc.lower():
                continue
            if q.result_class and q.result_class.lower() != inst.cls.lower():
                continue
            res.append(inst)
        return res

    # --- state ---------------------------------------------------------------------------
    def _mem_mb(self, rasds: list[Instance]) -> int:
        for r in rasds:
            if r.cls == "Msvm_MemorySettingData":
                return int(r["VirtualQuantity"] or 0)
        return 0

    def free_mb(self, host: str, excluding: VM | None = None) -> int:
        used = sum(
            self._mem_mb(vm.rasds)
            for vm in self.vm_on(host)
            if vm is not excluding
            and vm.state in (T.ES_ENABLED, T.ES_QUIESCE, T.ES_STARTING, T.ES_SHUTTING_DOWN)
        )
        return self.cfg.host_memory_gib * 1024 - used

    def _boots_os(self, vm: VM) -> bool:
        for r in vm.rasds:
            if r.cls == "Msvm_StorageAllocationSettingData":
                for path in r["HostResource"] or []:
                    if str(path).lower() in self.os_images:
                        return True
        return False

    def _set_state(self, vm: VM, state: int) -> None:
        now = time.monotonic()
        was_running = vm.state == T.ES_ENABLED and vm.run_since is not None
        if was_running and state != T.ES_ENABLED and vm.run_since is not None:
            vm.run_accum += now - vm.run_since
            vm.run_since = None
        if state in (T.ES_DISABLED, T.ES_OFFLINE):
            vm.run_accum = 0.0
            vm.run_since = None
        vm.state = state
        vm.state_changed = _now()

    def _power_on(self, vm: VM) -> None:
        self._set_state(vm, T.ES_ENABLED)
        vm.run_accum = 0.0
        vm.run_since = time.monotonic()
        vm.guest_os = self._boots_os(vm)
        vm.guest_ready_at = time.monotonic() + self.cfg.guest_delay

    # --- methods -------------------------------------------------------------------------
    def invoke(
        self, host: str, target: Instance, method: str, args: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        fn = getattr(self, f"_m_{method}", None)
        spec = T.METHODS.get((target.cls, method))
        if fn is None or spec is None:
            raise WmiFault(
                "ActionNotSupported",
                f"{target.cls} has no method {method}",
                T.CIM_ERR_METHOD_NOT_FOUND,
                T.WBEM_E_INVALID_METHOD,
            )
        with self.lock:
            result: tuple[int, dict[str, Any]] = fn(host, target, args)
            return result

    def _job_out(
        self,
        host: str,
        name: str,
        effect: Callable[[], tuple[int, str] | None],
        extra: dict[str, Any] | None = None,
        delay: float | None = None,
    ) -> tuple[int, dict[str, Any]]:
        job = self._job(host, name, effect, delay)
        out: dict[str, Any] = {"Job": epr_of(job)}
        out.update(extra or {})
        return T.RC_JOB, out

    # Msvm_ComputerSystem.RequestStateChange
    def _m_RequestStateChange(
        self, host: str, target: Instance, args: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        if target["Caption"] != T.VM_CAPTION:
            return T.RC_NOT_SUPPORTED, {}
        vm = self.vms[str(target["Name"])]
        try:
            rs = int(args.get("RequestedState"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return T.RC_INVALID_PARAMETER, {}
        if rs not in T.REQUESTED_STATES:
            return T.RC_INVALID_PARAMETER, {}
        if vm.busy is not None or (vm.state, rs) not in T.TRANSITIONS:
            return T.RC_INVALID_STATE, {}
        target_state = T.TRANSITIONS[(vm.state, rs)]
        starting = rs == 2 and vm.state in (T.ES_DISABLED, T.ES_OFFLINE)
        need = self._mem_mb(vm.rasds)
        vm.requested = rs
        old = vm.state
        if rs in (2, 3) and target_state != old:
            self._set_state(vm, T.TRANSITIONAL[target_state])
        label = {
            2: "Starting",
            3: "Turning Off",
            6: "Saving",
            9: "Pausing",
            10: "Rebooting",
            11: "Resetting",
        }.get(rs, "Changing state")
        if old == T.ES_QUIESCE and rs == 2:
            label = "Resuming"
        if old == T.ES_OFFLINE and rs == 2:
            label = "Restoring"

        def effect() -> tuple[int, str] | None:
            vm.busy = None
            if starting and self.free_mb(vm.host, excluding=vm) < need:
                self._set_state(vm, old)
                return (
                    32778,
                    f"'{vm.name}' could not initialize. Not enough "
                    f"memory in the system to start the virtual machine {vm.name}.",
                )
            if starting and old == T.ES_DISABLED:
                self._power_on(vm)
            elif rs == 2 and old == T.ES_OFFLINE:
                self._power_on(vm)  # restore from saved state: the guest resumes as it was
                vm.guest_ready_at = 0.0
            elif rs == 2 and old == T.ES_QUIESCE:
                self._set_state(vm, T.ES_ENABLED)
                vm.run_since = time.monotonic()
            elif rs in (10, 11):
                vm.run_accum = 0.0
                vm.run_since = time.monotonic()
                vm.guest_ready_at = time.monotonic() + self.cfg.guest_delay
                vm.state_changed = _now()
            else:
                self._set_state(vm, target_state)
            vm.vssd["IsSaved"] = vm.state == T.ES_OFFLINE
            return None

        out = self._job_out(host, label, effect)
        if (
            vm.requested == rs
            and self.jobs[str(out[1]["Job"].selectors["InstanceID"])].finished is None
        ):
            vm.busy = str(out[1]["Job"].selectors["InstanceID"])
        return out

    # Msvm_ShutdownComponent.InitiateShutdown: no Job parameter; 0 means "initiated" and the
    # guest then shuts down on its own (EnabledState 4 Shutting Down, then 3).
    def _m_InitiateShutdown(
        self, host: str, target: Instance, args: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        vm = self.vms.get(str(target["SystemName"]))
        if vm is None:
            return T.RC_NOT_AVAILABLE, {}
        if vm.state == T.ES_SHUTTING_DOWN:
            return T.RC_SHUTDOWN_IN_PROGRESS, {}
        if vm.busy is not None or vm.state != T.ES_ENABLED:
            return T.RC_INVALID_STATE, {}
        if not vm.guest_os:
            return T.RC_NOT_AVAILABLE, {}  # no guest shutdown service will ever answer
        if not self._guest_up(vm):
            return T.RC_NOT_READY, {}  # the guest has not booted far enough yet
        vm.requested = 3
        self._set_state(vm, T.ES_SHUTTING_DOWN)

        def effect() -> tuple[int, str] | None:
            vm.busy = None
            self._set_state(vm, T.ES_DISABLED)
            return None

        job = self._job(host, "Guest shutdown", effect, hidden=True)
        if self.jobs[str(job["InstanceID"])].finished is None:
            vm.busy = str(job["InstanceID"])
        return T.RC_OK, {}

    # Msvm_VirtualSystemManagementService
    def _m_DefineSystem(
        self, host: str, target: Instance, args: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        settings = args.get("SystemSettings")
        if not isinstance(settings, Instance) or settings.cls != "Msvm_VirtualSystemSettingData":
            return T.RC_INVALID_PARAMETER, {}
        name = str(settings.get("ElementName") or "New Virtual Machine")
        rasds = args.get("ResourceSettings") or []
        ref = args.get("ReferenceConfiguration")
        reference: list[Instance] | None = None
        if ref is not None:
            owner = (
                self._vssd_owner(host, ref.selectors.get("InstanceID", ""))
                if isinstance(ref, Epr)
                else None
            )
            if owner is None:
                return T.RC_INVALID_PARAMETER, {}
            reference = owner[0].rasds if owner[1] is None else owner[1].rasds
        vm = self._new_vm(host, name, settings)
        vm.vssd["ElementName"] = name
        if reference is not None:
            self._copy_config(vm, reference)
        for r in rasds:
            rc = self._add_rasd(vm, r)
            if rc == RC_FILE_NOT_FOUND:
                del self.vms[vm.guid]
                return self._missing_file_job(host, "Defining virtual machine", r)
            if rc != T.RC_OK:
                del self.vms[vm.guid]
                return rc, {}
        return self._job_out(
            host,
            "Defining virtual machine",
            lambda: None,
            {
                "ResultingSystem": Epr(
                    "Msvm_ComputerSystem",
                    {"CreationClassName": "Msvm_ComputerSystem", "Name": vm.guid},
                )
            },
        )

    def _m_DestroySystem(
        self, host: str, target: Instance, args: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        vm = self.vm_of_cs(host, args.get("AffectedSystem"))
        if vm is None:
            return T.RC_INVALID_PARAMETER, {}
        if vm.busy is not None or vm.state not in (T.ES_DISABLED, T.ES_OFFLINE):
            return T.RC_INVALID_STATE, {}
        del self.vms[vm.guid]
        return self._job_out(host, "Deleting virtual machine", lambda: None)

    def _m_ModifySystemSettings(
        self, host: str, target: Instance, args: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        settings = args.get("SystemSettings")
        if not isinstance(settings, Instance) or settings.cls != "Msvm_VirtualSystemSettingData":
            return T.RC_INVALID_PARAMETER, {}
        owner = self._vssd_owner(host, str(settings.get("InstanceID") or ""))
        if owner is None:
            return T.RC_INVALID_PARAMETER, {}
        vm, snap = owner
        vssd = vm.vssd if snap is None else snap.vssd
        for k in (
            "ElementName",
            "Notes",
            "AutomaticStartupAction",
            "AutomaticShutdownAction",
            "AutomaticRecoveryAction",
            "BootOrder",
            "BootSourceOrder",
            "SecureBootEnabled",
            "BIOSNumLock",
        ):
            if k in settings.props and settings[k] is not None:
                vssd[k] = settings[k]
        return self._job_out(host, "Modifying system settings", lambda: None)

    def _parent_of(self, vm: VM, parent: str) -> Instance | None:
        """The VM's resource settings a Parent path names (by its InstanceID key, however
        the rest of the path is spelled)."""
        m = _PARENT_ID.search(parent)
        if m is None:
            return None
        iid = re.sub(r"\\(.)", r"\1", m.group(1)).lower()
        return next((r for r in vm.rasds if str(r["InstanceID"]).lower() == iid), None)

    def _hot_pluggable(self, vm: VM, r: Instance) -> bool:
        """Whether ``r`` may be added to or removed from ``vm`` while it is not Off
        (tables.HOT_PLUG): only while it runs, only SCSI storage, NICs and DVD media."""
        if vm.state != T.ES_ENABLED:
            return False
        sub = str(r["ResourceSubType"] or "")
        if sub not in T.HOT_PLUG:
            return False
        if sub in ("Microsoft:Hyper-V:Synthetic Disk Drive", "Microsoft:Hyper-V:Virtual Hard Disk"):
            node: Instance | None = r
            while node is not None and node["ResourceType"] != T.RT_SCSI:
                node = self._parent_of(vm, str(node["Parent"] or ""))
            return node is not None
        return True

    def _add_rasd(self, vm: VM, r: Any) -> int:
        if not isinstance(r, Instance):
            return T.RC_INVALID_PARAMETER
        sub = str(r.get("ResourceSubType") or "")
        if sub not in T.SUBTYPES or T.SUBTYPES[sub][1] != r.cls:
            return T.RC_INVALID_PARAMETER
        if sub in ("Microsoft:Hyper-V:Processor", "Microsoft:Hyper-V:Memory"):
            # A VM has exactly one of each; DefineSystem's copies modify the defaults.
            cur = next(x for x in vm.rasds if x.cls == r.cls)
            return self._modify_rasd(vm, cur, r)
        props = {k: v for k, v in r.props.items() if v is not None and k != "InstanceID"}
        new = self._rasd(vm, sub, **props)
        parent_types = T.PARENT_TYPES.get(sub)
        if parent_types is not None:
            # A drive hangs off a controller, a disk image off a drive, a connection off a
            # port: Parent must name one of the VM's settings of that kind.
            parent = self._parent_of(vm, str(new["Parent"] or ""))
            if parent is None or parent["ResourceType"] not in parent_types:
                return T.RC_INVALID_PARAMETER
            new["Parent"] = parent.path(vm.host)
        if vm.state != T.ES_DISABLED and not self._hot_pluggable(vm, new):
            return T.RC_INVALID_STATE
        if r.cls == "Msvm_StorageAllocationSettingData":
            if not new["HostResource"]:
                return T.RC_INVALID_PARAMETER
            if any(str(p).lower() not in self.disks for p in new["HostResource"]):
                return RC_FILE_NOT_FOUND
        if r.cls == "Msvm_SyntheticEthernetPortSettingData" and not new["Address"]:
            new["Address"] = self._mac(vm, sum(1 for x in vm.rasds if x.cls == r.cls))
            new["StaticMacAddress"] = False
        vm.rasds.append(new)
        return T.RC_OK

    def _missing_file_job(self, host: str, name: str, r: Instance) -> tuple[int, dict[str, Any]]:
        """The job of a method that attaches an image that does not exist: it fails, as
        Hyper-V's does, with the Win32 "file not found" in its description."""
        path = (r["HostResource"] or [""])[0]
        msg = (
            f"Failed to add device 'Virtual Hard Disk'. '{path}': The system cannot find the "
            f"file specified. (0x{T.ERROR_FILE_NOT_FOUND:08X})"
        )
        return self._job_out(host, name, lambda: (RC_FILE_NOT_FOUND, msg))

    def _copy_config(self, vm: VM, rasds: list[Instance]) -> None:
        """DefineSystem's ReferenceConfiguration: the reference's resources, re-keyed."""
        paths: dict[str, str] = {}
        out: list[Instance] = []
        for r in rasds:
            c = r.copy()
            if c.cls == "Msvm_ProcessorSettingData":
                c["InstanceID"] = f"Microsoft:{vm.guid}\\{T.PROCESSOR_ID_SUFFIX}"
            elif c.cls == "Msvm_MemorySettingData":
                c["InstanceID"] = f"Microsoft:{vm.guid}\\{T.MEMORY_ID_SUFFIX}"
            else:
                c["InstanceID"] = f"Microsoft:{vm.guid}\\{_guid()}"
            if c.cls == "Msvm_SyntheticEthernetPortSettingData" and not c["StaticMacAddress"]:
                c["Address"] = self._mac(vm, len(out))
            paths[r.path(vm.host)] = c.path(vm.host)
            out.append(c)
        for c in out:
            if c["Parent"] in paths:
                c["Parent"] = paths[c["Parent"]]
        vm.rasds = out

    def _m_AddResourceSettings(
        self, host: str, target: Instance, args: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        ref = args.get("AffectedConfiguration")
        owner = (
            self._vssd_owner(host, ref.selectors.get("InstanceID", ""))
            if isinstance(ref, Epr)
            else None
        )
        rasds = args.get("ResourceSettings") or []
        if owner is None or owner[1] is not None or not rasds:
            return T.RC_INVALID_PARAMETER, {}
        vm = owner[0]
        before = len(vm.rasds)
        for r in rasds:
            if isinstance(r, Instance) and r.get("ResourceSubType") in (
                "Microsoft:Hyper-V:Processor",
                "Microsoft:Hyper-V:Memory",
            ):
                del vm.rasds[before:]
                return T.RC_INVALID_PARAMETER, {}
            rc = self._add_rasd(vm, r)
            if rc == RC_FILE_NOT_FOUND:
                del vm.rasds[before:]
                return self._missing_file_job(host, "Adding resources", r)
            if rc != T.RC_OK:
                del vm.rasds[before:]
                return rc, {}
        added = [epr_of(r) for r in vm.rasds[before:]]
        return self._job_out(
            host, "Adding resources", lambda: None, {"ResultingResourceSettings": added}
        )

    def _modify_rasd(self, vm: VM, cur: Instance, new: Instance) -> int:
        live = vm.state != T.ES_DISABLED
        merged = cur.copy()
        for k, v in new.props.items():
            if k in ("InstanceID", "ResourceType", "ResourceSubType") or v is None:
                continue
            merged[k] = v
        if cur.cls == "Msvm_ProcessorSettingData":
            q, res, lim, w = (
                int(merged[k] or 0) for k in ("VirtualQuantity", "Reservation", "Limit", "Weight")
            )
            if q < 1 or not 0 <= res <= lim <= T.PROCESSOR_LIMIT_MAX or not 0 <= w <= 10000:
                return T.RC_INVALID_PARAMETER
            if live and q != int(cur["VirtualQuantity"] or 0):
                return T.RC_INVALID_STATE  # the vCPU count changes only while Off
        if cur.cls == "Msvm_MemorySettingData":
            q, res, lim = (int(merged[k] or 0) for k in ("VirtualQuantity", "Reservation", "Limit"))
            if q < 32 or q % 2:
                return T.RC_INVALID_PARAMETER  # Hyper-V wants an even number of MiB
            if merged["DynamicMemoryEnabled"] and not res <= q <= lim:
                return T.RC_INVALID_PARAMETER
            if not merged["DynamicMemoryEnabled"]:
                merged["Reservation"] = q
                merged["Limit"] = q if merged["Limit"] is None else merged["Limit"]
            if live and bool(merged["DynamicMemoryEnabled"]) != bool(cur["DynamicMemoryEnabled"]):
                return T.RC_INVALID_STATE
        cur.props.update(merged.props)
        return T.RC_OK

    def _m_ModifyResourceSettings(
        self, host: str, target: Instance, args: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        rasds = args.get("ResourceSettings") or []
        if not rasds:
            return T.RC_INVALID_PARAMETER, {}
        results = []
        for r in rasds:
            if not isinstance(r, Instance):
                return T.RC_INVALID_PARAMETER, {}
            found = self._rasd_owner(host, str(r.get("InstanceID") or ""))
            if found is None or found[1].cls != r.cls:
                return T.RC_INVALID_PARAMETER, {}
            vm, cur, in_snap = found
            if in_snap:
                return T.RC_INVALID_STATE, {}  # snapshot settings are read-only
            rc = self._modify_rasd(vm, cur, r)
            if rc != T.RC_OK:
                return rc, {}
            results.append(epr_of(cur))
        return self._job_out(
            host, "Modifying resources", lambda: None, {"ResultingResourceSettings": results}
        )

    def _m_RemoveResourceSettings(
        self, host: str, target: Instance, args: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        refs = args.get("ResourceSettings") or []
        if not refs:
            return T.RC_INVALID_PARAMETER, {}
        for ref in refs:
            found = (
                self._rasd_owner(host, ref.selectors.get("InstanceID", ""))
                if isinstance(ref, Epr)
                else None
            )
            if found is None or found[2]:
                return T.RC_INVALID_PARAMETER, {}
            vm, cur, _ = found
            if cur.cls in ("Msvm_ProcessorSettingData", "Msvm_MemorySettingData"):
                return T.RC_INVALID_PARAMETER, {}
            if vm.state != T.ES_DISABLED and not self._hot_pluggable(vm, cur):
                return T.RC_INVALID_STATE, {}
            gone = {cur.path(vm.host)}
            changed = True
            while changed:  # children (a drive's disk, a port's connection) go with it
                changed = False
                for r in list(vm.rasds):
                    if r is cur or r["Parent"] in gone:
                        vm.rasds.remove(r)
                        gone.add(r.path(vm.host))
                        changed = True
        return self._job_out(host, "Removing resources", lambda: None)

    def _m_GetSummaryInformation(
        self, host: str, target: Instance, args: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        wanted = [int(x) for x in args.get("RequestedInformation") or []]
        refs = args.get("SettingData")
        if refs is None:
            owners: list[tuple[VM, Snapshot | None]] = [(vm, None) for vm in self.vm_on(host)]
        else:
            owners = []
            for ref in refs:
                o = (
                    self._vssd_owner(host, ref.selectors.get("InstanceID", ""))
                    if isinstance(ref, Epr)
                    else None
                )
                if o is None:
                    return T.RC_INVALID_PARAMETER, {}
                owners.append(o)
        infos = []
        for vm, snap in owners:
            vssd = vm.vssd if snap is None else snap.vssd
            cpu = next((r for r in vm.rasds if r.cls == "Msvm_ProcessorSettingData"), None)
            live = snap is None and self._live(vm)
            full: dict[str, Any] = {
                "InstanceID": vssd["InstanceID"],
                "Name": vm.guid if snap is None else str(vssd["ConfigurationID"]),
                "ElementName": vssd["ElementName"],
                "CreationTime": vssd["CreationTime"],
                "Notes": (vssd["Notes"] or [""])[0],
                "NumberOfProcessors": int(cpu["VirtualQuantity"]) if cpu else 0,
                "HealthState": T.HEALTH_OK,
                "EnabledState": vm.state if snap is None else T.ES_DISABLED,
                "ProcessorLoad": 3 if live and vm.state == T.ES_ENABLED else 0,
                "MemoryUsage": self._mem_mb(vm.rasds) if live else 0,
                "Heartbeat": (T.HEARTBEAT_OK if self._guest_up(vm) else T.HEARTBEAT_NO_CONTACT)
                if live
                else None,
                "UpTime": self._on_ms(vm) if snap is None else 0,
                "GuestOperatingSystem": GUEST_OS if self._guest_up(vm) else None,
                "Snapshots": [s.vssd for s in vm.snapshots] if snap is None else [],
            }
            props = {"InstanceID": full["InstanceID"]}
            for code in wanted:
                field = T.SUMMARY_FIELDS.get(code)
                if field is not None:
                    props[field] = full[field]
            infos.append(Instance("Msvm_SummaryInformation", props))
        return T.RC_OK, {"SummaryInformation": infos}

    # Msvm_ImageManagementService.CreateVirtualHardDisk: the file appears when the job ends.
    def _m_CreateVirtualHardDisk(
        self, host: str, target: Instance, args: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        sd = args.get("VirtualDiskSettingData")
        if not isinstance(sd, Instance) or sd.cls != "Msvm_VirtualHardDiskSettingData":
            return T.RC_INVALID_PARAMETER, {}
        path = str(sd.get("Path") or "")
        fmt, typ = sd.get("Format"), sd.get("Type")
        parent = str(sd.get("ParentPath") or "")
        size = int(sd.get("MaxInternalSize") or 0)
        if not path or fmt not in T.VHD_FORMATS or typ not in T.VHD_TYPES:
            return T.RC_INVALID_PARAMETER, {}
        if not path.lower().endswith(T.VHD_FORMATS[fmt]):
            return T.RC_INVALID_PARAMETER, {}
        if (typ == 4 and not parent) or (typ != 4 and size <= 0):
            return T.RC_INVALID_PARAMETER, {}

        def effect() -> tuple[int, str] | None:
            key = path.lower()
            if key in self.disks:
                return (
                    T.RC_FAILED,
                    f"Failed to create the virtual hard disk. The system "
                    f"failed to create '{path}': The file exists. "
                    f"(0x{T.ERROR_FILE_EXISTS:08X})",
                )
            nonlocal size
            if typ == 4:
                if parent.lower() not in self.disks:
                    return (
                        RC_FILE_NOT_FOUND,
                        f"Failed to create the virtual hard disk. "
                        f"'{parent}': The system cannot find the file specified. "
                        f"(0x{T.ERROR_FILE_NOT_FOUND:08X})",
                    )
                size = self.disks[parent.lower()]
                if parent.lower() in self.os_images:
                    self.os_images.add(key)  # a differencing child sees its parent's OS
            self.disks[key] = size
            self.disk_kinds[key] = (int(typ), parent or None)
            self.disk_times[key] = _now()
            return None

        return self._job_out(host, "Creating virtual hard disk", effect)

    def file_size(self, key: str) -> int:
        """The bytes an image file takes (tables.VHDX_EMPTY_FILE_BYTES: no guest data is
        written; the seed OS images hold SEED_IMAGE_DATA_BYTES; an ISO is its size)."""
        if not key.endswith((".vhdx", ".vhd", ".avhdx", ".avhd")):
            return self.disks[key]
        typ, _parent = self.disk_kinds.get(key, (3, None))
        if key not in self.disk_kinds:  # a seed image, with its guest OS
            return T.VHDX_EMPTY_FILE_BYTES + T.SEED_IMAGE_DATA_BYTES
        if typ == 2:
            return T.VHDX_EMPTY_FILE_BYTES + self.disks[key]
        return T.VHDX_EMPTY_FILE_BYTES

    def data_file(self, host: str, key: str) -> Instance:
        """root/cimv2 CIM_DataFile of an image file, as ``host``'s WMI serves it (tables:
        Win32/cim-datafile): lower-case names, Drive with its colon, Path with leading and
        trailing backslashes, FileName without and Extension without the dot."""
        drive, _, rest = key.partition(":")
        folder, _, leaf = rest.rpartition("\\")
        stem, dot, ext = leaf.rpartition(".")
        if not dot:
            stem, ext = leaf, ""
        when = self.disk_times.get(key)
        fs_class, fs_name = T.DATAFILE_FS
        return Instance(
            "CIM_DataFile",
            {
                "Caption": key,
                "Compressed": False,
                "CreationClassName": T.DATAFILE_CREATION_CLASS,
                "CreationDate": when,
                "CSCreationClassName": T.DATAFILE_CS_CLASS,
                "CSName": host,
                "Description": key,
                "Drive": f"{drive}:",
                "Encrypted": False,
                "Extension": ext,
                "FileName": stem,
                "FileSize": self.file_size(key),
                "FSCreationClassName": fs_class,
                "FSName": fs_name,
                "Hidden": False,
                "LastModified": when,
                "Name": key,
                "Path": f"{folder}\\",
                "Readable": True,
                "System": False,
                "Writeable": True,
            },
        )

    def delete_file(self, path: str) -> int | None:
        """root/cimv2 CIM_DataFile.Delete of an image file: None when there is no such
        file; 15 (sharing violation) while a live (running, paused or saved) VM holds it."""
        key = path.lower()
        if not key:
            return T.DATAFILE_INVALID_PARAMETER
        with self.lock:
            if key not in self.disks:
                return None
            for vm in self.vms.values():
                if vm.state == T.ES_DISABLED:
                    continue
                for r in vm.rasds:
                    if r.cls == "Msvm_StorageAllocationSettingData" and key in (
                        str(p).lower() for p in (r["HostResource"] or [])
                    ):
                        return T.DATAFILE_SHARING_VIOLATION
            del self.disks[key]
            self.disk_kinds.pop(key, None)
            self.disk_times.pop(key, None)
            self.os_images.discard(key)
            return T.DATAFILE_OK

    # Msvm_ImageManagementService.GetVirtualHardDiskSettingData: answered at once (0), as
    # the method's documented return codes allow; the settings of an existing image file.
    def _m_GetVirtualHardDiskSettingData(
        self, host: str, target: Instance, args: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        path = str(args.get("Path") or "")
        if not path:
            return T.RC_INVALID_PARAMETER, {}
        key = path.lower()
        if key not in self.disks:
            return RC_FILE_NOT_FOUND, {}
        typ, parent = self.disk_kinds.get(key, (3, None))
        fmt = 2 if key.endswith(".vhd") else 3
        sd = Instance(
            "Msvm_VirtualHardDiskSettingData",
            {
                "InstanceID": f"Microsoft:{_guid()}",
                "Type": typ,
                "Format": fmt,
                "Path": path,
                "ParentPath": parent,
                "MaxInternalSize": self.disks[key],
                "BlockSize": 33554432 if fmt == 3 else 2097152,
                "LogicalSectorSize": 512,
                "PhysicalSectorSize": 4096 if fmt == 3 else 512,
            },
        )
        return T.RC_OK, {"SettingData": sd}

    # Msvm_VirtualSystemSnapshotService
    def _m_CreateSnapshot(
        self, host: str, target: Instance, args: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        vm = self.vm_of_cs(host, args.get("AffectedSystem"))
        if vm is None:
            return T.RC_INVALID_PARAMETER, {}
        stype = args.get("SnapshotType")
        if stype is not None and int(stype) not in T.SNAPSHOT_TYPES:
            return T.RC_INVALID_PARAMETER, {}
        if vm.busy is not None:
            return T.RC_INVALID_STATE, {}
        sguid = _guid()
        vssd = vm.vssd.copy()
        stamp = dt.datetime.now().strftime("%m/%d/%Y - %I:%M:%S %p").lstrip("0")
        vssd.props.update(
            {
                "InstanceID": f"Microsoft:{sguid}",
                "VirtualSystemType": "Microsoft:Hyper-V:Snapshot:Realized",
                "ElementName": f"{vm.name} - ({stamp})",
                "ConfigurationID": sguid,
                "CreationTime": _now(),
                "Caption": "Virtual Machine Settings",
                "Description": "Snapshot settings for the virtual machine.",
                "IsSaved": vm.state in (T.ES_ENABLED, T.ES_QUIESCE, T.ES_OFFLINE),
            }
        )
        rasds = []
        for r in vm.rasds:
            c = r.copy()
            c["InstanceID"] = str(r["InstanceID"]).replace(vm.guid, sguid, 1)
            if c["Parent"]:  # a snapshot's drive hangs off the snapshot's own controller
                c["Parent"] = str(c["Parent"]).replace(vm.guid, sguid)
            rasds.append(c)
        snap = Snapshot(vssd, rasds, saved=bool(vssd["IsSaved"]))
        vm.snapshots.append(snap)
        vm.vssd["Parent"] = vssd.path(vm.host)
        return self._job_out(
            host, "Creating checkpoint", lambda: None, {"ResultingSnapshot": epr_of(vssd)}
        )

    def _snapshot_ref(self, host: str, ref: Any) -> tuple[VM, Snapshot] | None:
        if not isinstance(ref, Epr) or ref.cls != "Msvm_VirtualSystemSettingData":
            return None
        o = self._vssd_owner(host, ref.selectors.get("InstanceID", ""))
        if o is None or o[1] is None:
            return None
        return o[0], o[1]

    def _m_ApplySnapshot(
        self, host: str, target: Instance, args: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        found = self._snapshot_ref(host, args.get("Snapshot"))
        if found is None:
            return T.RC_INVALID_PARAMETER, {}
        vm, snap = found
        if vm.busy is not None or vm.state not in (T.ES_DISABLED, T.ES_OFFLINE):
            return T.RC_INVALID_STATE, {}  # a running VM must be turned off or saved first
        rasds = []
        sguid = str(snap.vssd["InstanceID"]).partition(":")[2]
        for r in snap.rasds:
            c = r.copy()
            c["InstanceID"] = str(r["InstanceID"]).replace(sguid, vm.guid, 1)
            if c["Parent"]:
                c["Parent"] = str(c["Parent"]).replace(sguid, vm.guid)
            rasds.append(c)

        def effect() -> tuple[int, str] | None:
            vm.rasds = rasds
            vm.vssd["Parent"] = snap.vssd.path(vm.host)
            self._set_state(vm, T.ES_OFFLINE if snap.saved else T.ES_DISABLED)
            vm.vssd["IsSaved"] = snap.saved
            return None

        return self._job_out(host, "Applying checkpoint", effect)

    def _m_DestroySnapshot(
        self, host: str, target: Instance, args: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        found = self._snapshot_ref(host, args.get("AffectedSnapshot"))
        if found is None:
            return T.RC_INVALID_PARAMETER, {}
        vm, snap = found
        path = snap.vssd.path(vm.host)
        parent = snap.vssd["Parent"]
        vm.snapshots.remove(snap)
        for s in vm.snapshots:
            if s.vssd["Parent"] == path:
                s.vssd["Parent"] = parent
        if vm.vssd["Parent"] == path:
            vm.vssd["Parent"] = parent
        return self._job_out(host, "Deleting checkpoint", lambda: None)

    # Msvm_VirtualSystemMigrationService
    def _m_MigrateVirtualSystemToHost(
        self, host: str, target: Instance, args: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        vm = self.vm_of_cs(host, args.get("ComputerSystem"))
        dest_raw = str(args.get("DestinationHost") or "")
        if vm is None or not dest_raw:
            return T.RC_INVALID_PARAMETER, {}
        msd = args.get("MigrationSettingData")
        mtype = 32768
        if isinstance(msd, Instance) and msd.get("MigrationType") is not None:
            mtype = int(msd["MigrationType"])
        if mtype not in T.MIGRATION_TYPES:
            return T.RC_INVALID_PARAMETER, {}
        if mtype == 32770:
            return T.RC_NOT_SUPPORTED, {}
        if vm.busy is not None:
            return T.RC_INVALID_STATE, {}
        dest = next((h for h in self.hosts if h.lower() == dest_raw.split(".")[0].lower()), None)
        if dest is not None and dest == host:
            return T.RC_INVALID_PARAMETER, {}
        need = self._mem_mb(vm.rasds) if self._live(vm) else 0

        def effect() -> tuple[int, str] | None:
            vm.busy = None
            if dest is None:
                return (
                    T.RC_FAILED,
                    f"Virtual machine migration operation for '{vm.name}' "
                    f"failed at migration source '{host}'. The Virtual Machine Management "
                    f"Service failed to establish a connection for a Virtual Machine "
                    f"migration with host '{dest_raw}'.",
                )
            if mtype in (32769, 32772):
                return None  # storage only / a storage check: the VM stays on its host
            if self.free_mb(dest) < need:
                return (
                    32778,
                    f"Virtual machine migration operation for '{vm.name}' failed: "
                    f"not enough memory on '{dest}'.",
                )
            src = vm.host
            vm.host = dest
            # WMI paths name the host: the settings now live under the destination's.
            for r in vm.rasds + [r for snap in vm.snapshots for r in snap.rasds]:
                if r["Parent"]:
                    r["Parent"] = str(r["Parent"]).replace(f"\\\\{src}\\", f"\\\\{dest}\\", 1)
                if r.cls == "Msvm_EthernetPortAllocationSettingData" and r["HostResource"]:
                    r["HostResource"] = [self.switches[dest].path(dest)]
            for v in [vm.vssd] + [snap.vssd for snap in vm.snapshots]:
                if v["Parent"]:
                    v["Parent"] = str(v["Parent"]).replace(f"\\\\{src}\\", f"\\\\{dest}\\", 1)
            return None

        out = self._job_out(host, "Migrating virtual machine", effect, delay=self.cfg.op_delay * 2)
        jid = str(out[1]["Job"].selectors["InstanceID"])
        if self.jobs[jid].finished is None:
            vm.busy = jid
        return out
