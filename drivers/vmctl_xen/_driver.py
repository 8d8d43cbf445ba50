"""The Xen driver: vmctl's SPI over XenAPI (XenServer, XCP-ng, any xapi pool).

URIs: ``xen://[user@]host[:port][?host=NAME]`` (HTTPS; ``xen+http://`` for plain HTTP when
asked, ``xen+https://`` is the default spelled out). The host is the pool master. Without
``?host=`` the connection manages the whole pool; with it, one member: its inventory is the
VMs resident on it or, when not running, with affinity to it; VMs created there get that
affinity and start there. Two such connections are what ``vm.migrate(target)`` moves
between (``VM.pool_migrate`` live, an affinity change cold).

Every XenAPI call is one XML-RPC round trip through the XenAPI SDK over our own transport
(timeouts, TLS verified by CA file or SHA-256 pin). Long operations are ``Async.*`` tasks
awaited with ``event.from`` on the task; state waits use ``event.from`` on the VM.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from vmctl import (
    URI,
    AgentState,
    AlreadyExists,
    Capability,
    ConnectParams,
    DiskInfo,
    DiskSpec,
    DriverError,
    GuestInfo,
    GuestOS,
    HostInfo,
    InvalidState,
    NicInfo,
    NicSpec,
    NotFound,
    OperationTimeout,
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
    Cloning,
    Devices,
    Driver,
    Events,
    EventSource,
    GracefulPower,
    GuestAgent,
    Migration,
    Pausable,
    Reconfigurable,
    Resettable,
    ResourceControls,
    Snapshots,
    Suspendable,
)

from . import _errors
from ._errors import power_state
from ._session import NULL, Connection
from ._transport import parse_thumbprint, tls_context

log = logging.getLogger("vmctl.xen")

MiB = 1024 * 1024
S = PowerState
KNOWN_OPTIONS = {"host", "rpc_timeout"}
OWNER_KEY = "owner"  # VBD other_config key xapi and XenCenter use for disks a VM owns
GUEST_OS_KEY = "vmctl-guest-os"
#: Xen credit scheduler weight range (VCPUs_params:weight; xen sched_credit.c).
WEIGHT_MIN, WEIGHT_MAX = 1, 65535
#: How long shutdown() waits for a clean_shutdown task to fail fast before returning.
SHUTDOWN_ASK_S = 1.0

#: Why each capability vmctl knows is absent (reported by ``unsupported()``, docs/xen.md).
ABSENT = {
    Capability.HOT_VCPUS: "VM.set_VCPUs_number_live needs VCPUs_max headroom and guest "
    "support (feature-vcpu-hotplug); not proven on the simulator",
    Capability.HOT_MEMORY: "static_max cannot change while a VM runs; only the dynamic range "
    "can, which is a reservation, not the VM's memory",
    Capability.CPU_RESERVATION: "the Xen credit scheduler has no CPU reservation",
    Capability.MEMORY_SHARES: "Xen has no memory shares",
    Capability.MEMORY_LIMIT: "memory_dynamic_max cannot exceed static_max (the VM's memory), "
    "so a limit at or above the memory has no Xen equivalent",
    Capability.STATS: "XenAPI's counters are served as RRDs over HTTP (/rrd_updates), not "
    "over XML-RPC; not implemented",
}


def _int(value: Any) -> int:
    return int(value) if value not in (None, "") else 0


def _mib(value: Any) -> int:
    return _int(value) // MiB


def _when(value: Any) -> dt.datetime:
    text = str(value)
    for fmt in ("%Y%m%dT%H:%M:%SZ", "%Y%m%dT%H:%M:%S"):
        try:
            return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC)
        except ValueError:
            pass
    return dt.datetime.fromtimestamp(0, dt.UTC)


def _is_vm(rec: dict[str, Any]) -> bool:
    """A real VM: not a template, not a snapshot, not a control domain."""
    return not (
        rec.get("is_a_template") or rec.get("is_a_snapshot") or rec.get("is_control_domain")
    )


def _reason(state: PowerState) -> StateReason:
    # XenAPI records no reason for a power state; these two follow from the state itself.
    return {S.PAUSED: StateReason.USER, S.SUSPENDED: StateReason.SAVED}.get(
        state, StateReason.UNKNOWN
    )


def _disk_id(userdevice: str) -> str:
    if userdevice.isdigit() and int(userdevice) < 26:
        return "xvd" + chr(ord("a") + int(userdevice))
    return f"vbd{userdevice}"


def _nic_id(device: str) -> str:
    return f"vif{device}"


class XenDriver(
    Driver,
    GracefulPower,
    Resettable,
    Pausable,
    Suspendable,
    Reconfigurable,
    ResourceControls,
    Devices,
    Snapshots,
    Cloning,
    Migration,
    Events,
    GuestAgent,
):
    """vmctl over XenAPI. See the module docstring and docs/xen.md."""

    name = "xen"

    def __init__(self, conn: Connection, uri: URI, params: ConnectParams) -> None:
        self._c = conn
        self.uri = uri
        self._op_timeout = params.timeouts.operation_s or float("inf")
        self._lock = threading.Lock()
        self._vm_refs: dict[str, str] = {}
        self._hosts: dict[str, dict[str, Any]] = {}
        self._networks: dict[str, dict[str, Any]] = {}
        self.pool_ref = ""
        self.pool_uuid = ""
        self.scope: str | None = None  # host ref of ?host=NAME
        self.scope_name: str | None = None
        self._default_sr = NULL
        self._detached: list[str] = []  # shutdown tasks left running; destroyed on close

    def __repr__(self) -> str:
        return f"<XenDriver {self.uri}>"

    # -- connection -----------------------------------------------------------------------

    @classmethod
    def open(cls, params: ConnectParams) -> XenDriver:
        try:
            import XenAPI  # noqa: F401
        except ImportError as exc:
            raise DriverError(
                "the xen driver needs the XenAPI SDK: pip install 'vmctl[xen]'"
            ) from exc
        uri = params.uri
        unknown = set(params.options) - KNOWN_OPTIONS
        if unknown:
            raise ValidationError(
                f"unknown xen option(s) {sorted(unknown)}; the xen driver "
                f"knows {sorted(KNOWN_OPTIONS)}",
                field="uri",
            )
        if uri.transport not in (None, "https", "http"):
            raise ValidationError(
                f"xen+{uri.transport}:// is not a transport; use xen:// (HTTPS) or xen+http://",
                field="uri",
            )
        if not uri.host:
            raise ValidationError("a xen URI names the pool master: xen://host[:port]", field="uri")
        if uri.path not in ("", "/"):
            raise ValidationError(f"xen URIs have no path (got {uri.path!r})", field="uri")
        try:
            rpc_timeout = float(params.options.get("rpc_timeout", "60"))
            if not 0 < rpc_timeout < float("inf"):
                raise ValueError
        except ValueError:
            raise ValidationError(
                "rpc_timeout must be a positive number of seconds", field="rpc_timeout"
            ) from None
        if params.timeouts.connect_s is not None:
            rpc_timeout = min(rpc_timeout, params.timeouts.connect_s)
        secure = uri.transport != "http"
        pin = parse_thumbprint(params.thumbprint) if params.thumbprint else None
        tls = None
        if secure:
            # insecure=True: the core has warned already (vmctl.connect).
            tls = tls_context(cafile=params.cafile, pin=pin, insecure=params.insecure)
        host = f"[{uri.host}]" if ":" in uri.host else uri.host
        port = uri.port or (443 if secure else 80)
        url = f"{'https' if secure else 'http'}://{host}:{port}/"
        conn = Connection(
            url,
            tls=tls,
            pin=pin,
            rpc_timeout=rpc_timeout,
            username=params.username or "root",
            password=params.password,
        )
        try:
            cls._login(conn, url)
        except VmctlError:
            conn.logout()
            raise
        except Exception as exc:
            conn.logout()
            raise _errors.from_exception(f"connect to {uri}", exc) from exc
        driver = cls(conn, uri, params)
        try:
            driver._load_pool(params.options.get("host"))
        except BaseException:
            driver.close()
            raise
        return driver

    @staticmethod
    def _login(conn: Connection, url: str) -> None:
        try:
            conn.login()
        except Exception as exc:
            desc = _errors.details(exc)
            if desc[:1] == ["HOST_IS_SLAVE"] and len(desc) > 1:
                # A pool member answers with its master's address: follow it once.
                scheme, _, rest = url.partition("://")
                port = rest.rsplit(":", 1)[1]
                master = f"[{desc[1]}]" if ":" in desc[1] else desc[1]
                log.info("%s is a pool member; its master is %s", url, desc[1])
                conn.retarget(f"{scheme}://{master}:{port}")
                conn.login()
                return
            raise

    def _load_pool(self, host_name: str | None) -> None:
        with self._mapped("read the pool"):
            pools = self._c.call("pool.get_all_records")
            self.pool_ref, pool = next(iter(pools.items()))
            self.pool_uuid = str(pool["uuid"])
            self._default_sr = str(pool.get("default_SR", NULL))
            self._refresh_hosts()
        if host_name is not None:
            for ref, rec in self._hosts.items():
                if host_name in (
                    rec["name_label"],
                    rec["uuid"],
                    rec.get("hostname"),
                    rec.get("address"),
                ):
                    self.scope, self.scope_name = ref, str(rec["name_label"])
                    break
            else:
                names = sorted(str(r["name_label"]) for r in self._hosts.values())
                raise NotFound(
                    f"the pool at {self.uri.host} has no host {host_name!r} "
                    f"(hosts: {', '.join(names)})"
                )

    def _refresh_hosts(self) -> None:
        hosts = self._c.call("host.get_all_records")
        with self._lock:
            self._hosts = hosts

    def close(self) -> None:
        with self._lock:
            tasks, self._detached = self._detached, []
        if not self._c.closed:
            for task in tasks:
                self._c.destroy_task(task)
        self._c.logout()

    def capabilities(self) -> frozenset[Capability]:
        caps = set(Capability) - set(ABSENT)
        if len(self._hosts) < 2:
            caps -= {Capability.MIGRATE_LIVE, Capability.MIGRATE_COLD}
        return frozenset(caps)

    @classmethod
    def unsupported(cls) -> dict[Capability, str]:
        """Capabilities this driver never declares, and why."""
        return dict(ABSENT)

    @property
    def round_trips(self) -> int:
        """XML-RPC round trips made by this connection so far (for benchmarks)."""
        return self._c.round_trips

    # -- helpers --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        """Map whatever the SDK raises inside into vmctl's tree (vendor error kept)."""
        try:
            yield
        except VmctlError:
            raise
        except Exception as exc:
            raise _errors.from_exception(what, exc) from exc

    def _call(self, what: str, method: str, *args: Any) -> Any:
        with self._mapped(what):
            return self._c.call(method, *args)

    def _run(self, what: str, method: str, *args: Any, timeout: float | None = None) -> Any:
        with self._mapped(what):
            return self._c.run(
                method,
                *args,
                what=what,
                timeout=timeout if timeout is not None else self._op_timeout,
            )

    def _ref(self, uuid: str) -> str:
        with self._lock:
            ref = self._vm_refs.get(uuid)
        if ref is None:
            try:
                ref = str(self._c.call("VM.get_by_uuid", uuid))
            except Exception as exc:
                if _errors.details(exc)[:1] in (["UUID_INVALID"], ["HANDLE_INVALID"]):
                    raise NotFound(
                        f"no VM with UUID {uuid} in the pool at {self.uri.host}",
                        vendor_code=_errors.details(exc)[0],
                    ) from exc
                raise _errors.from_exception(f"find VM {uuid}", exc) from exc
            with self._lock:
                self._vm_refs[uuid] = ref
        return ref

    def _vm(self, uuid: str) -> tuple[str, dict[str, Any]]:
        """The VM's ref and record; NotFound for templates, snapshots and dom0."""
        ref = self._ref(uuid)
        try:
            rec = self._c.call("VM.get_record", ref)
        except Exception as exc:
            if _errors.details(exc)[:1] == ["HANDLE_INVALID"]:
                with self._lock:
                    self._vm_refs.pop(uuid, None)
                raise NotFound(
                    f"no VM with UUID {uuid} in the pool at {self.uri.host}",
                    vendor_code="HANDLE_INVALID",
                ) from exc
            raise _errors.from_exception(f"get VM {uuid}", exc) from exc
        if not _is_vm(rec):
            raise NotFound(f"{uuid} is a template, snapshot or control domain, not a VM")
        return ref, rec

    def _host_name(self, ref: str) -> str | None:
        if ref in ("", NULL):
            return None
        rec = self._hosts.get(ref)
        if rec is None:
            with self._mapped("read the pool's hosts"):
                self._refresh_hosts()
            rec = self._hosts.get(ref)
        return str(rec["name_label"]) if rec else None

    def _in_scope(self, rec: dict[str, Any]) -> bool:
        if self.scope is None:
            return True
        resident = rec.get("resident_on", NULL)
        if resident != NULL:
            return bool(resident == self.scope)
        return bool(rec.get("affinity") == self.scope)

    def _info(self, rec: dict[str, Any]) -> VMInfo:
        state = power_state(str(rec.get("power_state", "")))
        host = rec.get("resident_on", NULL)
        if host in ("", NULL):
            host = rec.get("affinity", NULL)
        return VMInfo(
            uuid=str(rec["uuid"]),
            name=str(rec["name_label"]),
            state=state,
            reason=_reason(state),
            vcpus=_int(rec.get("VCPUs_at_startup")),
            memory_mib=_mib(rec.get("memory_static_max")),
            host=self._host_name(str(host)),
        )

    def _networks_by(self, refresh: bool = False) -> dict[str, dict[str, Any]]:
        if refresh or not self._networks:
            nets = self._call("read the networks", "network.get_all_records")
            with self._lock:
                self._networks = nets
        return self._networks

    def _network(self, name: str) -> tuple[str, dict[str, Any]]:
        for refresh in (False, True):
            for ref, rec in self._networks_by(refresh).items():
                if name in (rec.get("name_label"), rec.get("uuid"), rec.get("bridge")):
                    return ref, rec
        names = sorted(str(r.get("name_label")) for r in self._networks.values())
        raise NotFound(
            f"no network {name!r} in the pool at {self.uri.host} (name, UUID or "
            f"bridge; networks: {', '.join(names)})"
        )

    def _sr(self, name: str | None) -> str:
        if name is None:
            if self._default_sr in ("", NULL):
                raise NotFound("the pool has no default SR; give the disk a pool (SR name)")
            return self._default_sr
        srs = self._call("read the SRs", "SR.get_all_records")
        for ref, rec in srs.items():
            if (
                name in (rec.get("name_label"), rec.get("uuid"))
                and rec.get("content_type") != "iso"
            ):
                return str(ref)
        names = sorted(
            str(r.get("name_label")) for r in srs.values() if r.get("content_type") != "iso"
        )
        raise NotFound(f"no SR {name!r} in the pool at {self.uri.host} (SRs: {', '.join(names)})")

    def _check_weight(self, shares: int) -> None:
        if not WEIGHT_MIN <= shares <= WEIGHT_MAX:
            raise ValidationError(
                f"Xen's scheduler weight is {WEIGHT_MIN}..{WEIGHT_MAX}, got {shares}",
                field="cpu_shares",
            )

    @staticmethod
    def _vcpus_params(base: dict[str, str], res: Resources) -> dict[str, str]:
        params = dict(base)
        if res.cpu_shares is not None:
            params["weight"] = str(res.cpu_shares)
        if res.cpu_limit_percent is not None:
            params["cap"] = str(res.cpu_limit_percent)
        return params

    # -- mandatory ------------------------------------------------------------------------

    def host_info(self) -> HostInfo:
        with self._mapped("read host info"):
            self._refresh_hosts()
            metrics = self._c.call("host_metrics.get_all_records")
            pools = self._c.call("pool.get_all_records")
        hosts = {r: h for r, h in self._hosts.items() if self.scope in (None, r)}
        cpus = mhz = total = free = 0
        for h in hosts.values():
            info = h.get("cpu_info", {})
            cpus += _int(info.get("cpu_count"))
            mhz = max(mhz, int(float(info.get("speed", "0") or 0)))
            m = metrics.get(h.get("metrics"), {})
            total += _int(m.get("memory_total"))
            free += _int(m.get("memory_free"))
        first = next(iter(hosts.values()))
        sw = first.get("software_version", {})
        version = (
            sw.get("product_version")
            or sw.get("platform_version")
            or f"{first.get('API_version_major')}.{first.get('API_version_minor')}"
        )
        if sw.get("xen"):
            version += f" (Xen {sw['xen']})"
        if self.scope is not None:
            name, uuid = str(first["name_label"]), str(first["uuid"])
        else:
            pool = pools.get(self.pool_ref, {})
            master = self._hosts.get(pool.get("master"), first)
            name = str(pool.get("name_label") or master["name_label"])
            uuid = self.pool_uuid
        brand = sw.get("product_brand") or "Xen"
        return HostInfo(
            name=name,
            hypervisor=f"Xen ({brand})" if brand != "Xen" else "Xen",
            version=str(version),
            cpus=cpus,
            cpu_mhz=mhz,
            memory_mib=total // MiB,
            free_memory_mib=free // MiB,
            uuid=uuid,
            vm_count=len(self.list_vms()),
        )

    def list_vms(self) -> list[VMInfo]:
        recs = self._call("list VMs", "VM.get_all_records")
        out = []
        refs = {}
        for ref, rec in recs.items():
            if _is_vm(rec) and self._in_scope(rec):
                out.append(self._info(rec))
                refs[str(rec["uuid"])] = ref
        with self._lock:
            self._vm_refs.update(refs)
        return out

    def get_vm(self, uuid: str) -> VMInfo:
        return self._info(self._vm(uuid)[1])

    def _devices(
        self, rec: dict[str, Any]
    ) -> tuple[
        list[tuple[str, dict[str, Any], dict[str, Any] | None]], list[tuple[str, dict[str, Any]]]
    ]:
        """(VBD ref, VBD, VDI or None) for the VM's disks and (VIF ref, VIF) for its NICs."""
        disks = []
        nics = []
        with self._mapped(f"read the devices of VM {rec.get('name_label')!r}"):
            for vbd in rec.get("VBDs", []):
                b = self._c.call("VBD.get_record", vbd)
                if b.get("type") != "Disk":
                    continue
                vdi = (
                    None if b.get("VDI") in ("", NULL) else self._c.call("VDI.get_record", b["VDI"])
                )
                disks.append((str(vbd), b, vdi))
            for vif in rec.get("VIFs", []):
                nics.append((str(vif), self._c.call("VIF.get_record", vif)))
        disks.sort(
            key=lambda d: (
                _int(d[1].get("userdevice")) if str(d[1].get("userdevice")).isdigit() else 99
            )
        )
        nics.sort(key=lambda n: _int(n[1].get("device")))
        return disks, nics

    def _disk_info(self, b: dict[str, Any], vdi: dict[str, Any] | None) -> DiskInfo:
        if vdi is None:
            return DiskInfo(id=_disk_id(str(b.get("userdevice"))), size_mib=0)
        return DiskInfo(
            id=_disk_id(str(b.get("userdevice"))),
            size_mib=_mib(vdi.get("virtual_size")),
            name=str(vdi.get("name_label")) or None,
            path=f"vdi:{vdi.get('uuid')}",
            bus=None,
        )

    def _nic_info(self, v: dict[str, Any]) -> NicInfo:
        net = self._networks_by().get(v.get("network", ""))
        if net is None:
            net = self._networks_by(refresh=True).get(v.get("network", ""), {})
        return NicInfo(
            id=_nic_id(str(v.get("device"))),
            network=str(net.get("name_label", "")),
            mac=str(v.get("MAC", "")).lower(),
        )

    def get_config(self, uuid: str) -> VMConfig:
        _ref, rec = self._vm(uuid)
        disks, nics = self._devices(rec)
        params = rec.get("VCPUs_params", {})
        res = Resources(
            cpu_shares=_int(params["weight"]) if params.get("weight") else None,
            cpu_limit_percent=_int(params["cap"]) if _int(params.get("cap")) > 0 else None,
            memory_reservation_mib=_mib(rec.get("memory_dynamic_min")),
        )
        try:
            guest = GuestOS(rec.get("other_config", {}).get(GUEST_OS_KEY, "other"))
        except ValueError:
            guest = GuestOS.OTHER
        return VMConfig(
            uuid=uuid,
            name=str(rec["name_label"]),
            vcpus=_int(rec.get("VCPUs_at_startup")),
            memory_mib=_mib(rec.get("memory_static_max")),
            disks=tuple(self._disk_info(b, v) for _r, b, v in disks),
            nics=tuple(self._nic_info(v) for _r, v in nics),
            resources=res,
            guest_os=guest,
            description=str(rec.get("name_description", "")),
        )

    def _name_taken(self, name: str) -> bool:
        refs = self._call(f"look up VM name {name!r}", "VM.get_by_name_label", name)
        for ref in refs:
            rec = self._call(f"look up VM name {name!r}", "VM.get_record", ref)
            if _is_vm(rec):
                return True
        return False

    def create_vm(self, spec: VMSpec) -> VMInfo:
        res = spec.resources
        if res.cpu_shares is not None:
            self._check_weight(res.cpu_shares)
        if any(d.source for d in spec.disks):
            raise ValidationError(
                "the xen driver creates blank disks only (DiskSpec.source is not supported)",
                field="disks",
            )
        # Resolve everything that can be missing before anything is created.
        nets = [self._network(n.network) for n in spec.nics]
        srs = [self._sr(d.pool) for d in spec.disks]
        iso = self._iso(spec.boot.iso) if spec.boot and spec.boot.iso else None
        if self._name_taken(spec.name):
            raise AlreadyExists(
                f"a VM named {spec.name!r} already exists in the pool at {self.uri.host}"
            )
        mem = spec.memory_mib * MiB
        dmin = res.memory_reservation_mib * MiB if res.memory_reservation_mib is not None else mem
        kernel = spec.boot.kernel if spec.boot else None
        platform = {
            "acpi": "1",
            "apic": "true",
            "pae": "true",
            "nx": "true",
            "viridian": "true" if spec.guest_os is GuestOS.WINDOWS else "false",
            "device-model": "qemu-upstream-compat",
        }
        record: dict[str, Any] = {
            "name_label": spec.name,
            "name_description": spec.description,
            "user_version": "1",
            "is_a_template": False,
            "affinity": self.scope or NULL,
            "memory_target": str(dmin),
            "memory_static_max": str(mem),
            "memory_dynamic_max": str(mem),
            "memory_dynamic_min": str(dmin),
            "memory_static_min": str(min(dmin, mem)),
            "VCPUs_params": self._vcpus_params({}, res),
            "VCPUs_max": str(spec.vcpus),
            "VCPUs_at_startup": str(spec.vcpus),
            # "crashed VMs halt": Xen has no crashed state to report, so a crash destroys
            # the domain and the VM is Halted (not silently restarted).
            "actions_after_shutdown": "destroy",
            "actions_after_reboot": "restart",
            "actions_after_crash": "destroy",
            "PV_bootloader": "",
            "PV_kernel": kernel or "",
            "PV_ramdisk": (spec.boot.initrd or "") if spec.boot else "",
            "PV_args": spec.boot.cmdline if spec.boot else "",
            "PV_bootloader_args": "",
            "PV_legacy_args": "",
            "HVM_boot_policy": "" if kernel else "BIOS order",
            "HVM_boot_params": {} if kernel else {"order": "dc" if iso else "cd"},
            "platform": {} if kernel else platform,
            "PCI_bus": "",
            "other_config": {GUEST_OS_KEY: spec.guest_os.value},
            "recommendations": "",
        }
        what = f"create VM {spec.name!r}"
        vm = str(self._call(what, "VM.create", record))
        made_vdis: list[str] = []
        try:
            for i, (disk, sr) in enumerate(zip(spec.disks, srs, strict=True)):
                made_vdis.append(
                    self._new_disk(
                        vm, spec.name, disk, sr, str(i), bootable=i == 0 and not kernel and not iso
                    )
                )
            if iso is not None:
                self._call(
                    what, "VBD.create", self._vbd_record(vm, iso, str(len(spec.disks)), cd=True)
                )
            for i, (nic, (net, netrec)) in enumerate(zip(spec.nics, nets, strict=True)):
                self._call(what, "VIF.create", self._vif_record(vm, net, netrec, str(i), nic.mac))
            rec = self._call(what, "VM.get_record", vm)
        except BaseException:
            self._undo_create(vm, made_vdis)
            raise
        with self._lock:
            self._vm_refs[str(rec["uuid"])] = vm
        log.info("created VM %r (%s)", spec.name, rec["uuid"])
        return self._info(rec)

    def _undo_create(self, vm: str, vdis: list[str]) -> None:
        for method, ref in [("VM.destroy", vm)] + [("VDI.destroy", v) for v in vdis]:
            try:
                self._c.call(method, ref)
            except Exception as exc:
                log.warning("cleaning up after a failed create: %s %s failed: %s", method, ref, exc)

    def _iso(self, name: str) -> str:
        vdis = self._call("find the ISO", "VDI.get_all_records")
        srs = self._call("find the ISO", "SR.get_all_records")
        for ref, rec in vdis.items():
            sr = srs.get(rec.get("SR"), {})
            if sr.get("content_type") == "iso" and name in (
                rec.get("name_label"),
                rec.get("uuid"),
                rec.get("location"),
            ):
                return str(ref)
        raise NotFound(f"no ISO {name!r} in an ISO SR of the pool at {self.uri.host}")

    @staticmethod
    def _vbd_record(
        vm: str, vdi: str, userdevice: str, *, cd: bool = False, bootable: bool = False
    ) -> dict[str, Any]:
        return {
            "VM": vm,
            "VDI": vdi,
            "userdevice": userdevice,
            "bootable": bootable or cd,
            "mode": "RO" if cd else "RW",
            "type": "CD" if cd else "Disk",
            "unpluggable": True,
            "empty": False,
            "other_config": {} if cd else {OWNER_KEY: "true"},
            "qos_algorithm_type": "",
            "qos_algorithm_params": {},
        }

    @staticmethod
    def _vif_record(
        vm: str, net: str, netrec: dict[str, Any], device: str, mac: str | None
    ) -> dict[str, Any]:
        return {
            "device": device,
            "network": net,
            "VM": vm,
            "MAC": mac or "",
            "MTU": str(netrec.get("MTU") or 1500),
            "other_config": {},
            "qos_algorithm_type": "",
            "qos_algorithm_params": {},
        }

    def _new_disk(
        self,
        vm: str,
        vm_name: str,
        disk: DiskSpec,
        sr: str,
        userdevice: str,
        *,
        bootable: bool = False,
    ) -> str:
        what = f"add a disk to VM {vm_name!r}"
        vdi = str(
            self._call(
                what,
                "VDI.create",
                {
                    "name_label": disk.name or f"{vm_name} {_disk_id(userdevice)}",
                    "name_description": f"created by vmctl for {vm_name}",
                    "SR": sr,
                    "virtual_size": str(disk.size_mib * MiB),
                    "type": "user",
                    "sharable": False,
                    "read_only": False,
                    "other_config": {},
                    "sm_config": {},
                    "xenstore_data": {},
                    "tags": [],
                },
            )
        )
        try:
            self._call(what, "VBD.create", self._vbd_record(vm, vdi, userdevice, bootable=bootable))
        except BaseException:
            with contextlib.suppress(Exception):
                self._c.call("VDI.destroy", vdi)
            raise
        return vdi

    def _owned_vdis(self, rec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The VDIs a VM (or snapshot) owns: disks whose VBD carries the owner key, or, for
        a snapshot, its snapshot VDIs; plus a suspend image."""
        out = []
        with self._mapped(f"read the disks of {rec.get('name_label')!r}"):
            for vbd in rec.get("VBDs", []):
                b = self._c.call("VBD.get_record", vbd)
                if b.get("type") != "Disk" or b.get("VDI") in ("", NULL):
                    continue
                vdi = self._c.call("VDI.get_record", b["VDI"])
                owned = OWNER_KEY in b.get("other_config", {}) or (
                    rec.get("is_a_snapshot") and vdi.get("is_a_snapshot")
                )
                if owned:
                    out.append((str(b["VDI"]), vdi))
            if rec.get("suspend_VDI") not in (None, "", NULL):
                out.append(
                    (str(rec["suspend_VDI"]), self._c.call("VDI.get_record", rec["suspend_VDI"]))
                )
        return out

    def _destroy_vm(self, ref: str, rec: dict[str, Any], what: str) -> list[str]:
        """VM.destroy (which keeps VDIs), then the VDIs it owned."""
        vdis = self._owned_vdis(rec)
        self._run(what, "VM.destroy", ref)
        gone = [
            f"{'snapshot' if rec.get('is_a_snapshot') else 'vm'} {rec['name_label']} "
            f"({rec['uuid']})"
        ]
        for vdi, vrec in vdis:
            try:
                self._run(what, "VDI.destroy", vdi)
                gone.append(f"disk {vrec.get('name_label')} (vdi {vrec.get('uuid')})")
            except NotFound:
                pass
        return gone

    def delete_vm(self, uuid: str) -> list[str]:
        ref, rec = self._vm(uuid)
        what = f"delete VM {rec['name_label']!r}"
        if rec.get("power_state") == "Suspended":
            # Discard the saved state first, so its suspend image goes too.
            self._run(what, "VM.hard_shutdown", ref)
            rec = self._call(what, "VM.get_record", ref)
        gone = []
        for snap in rec.get("snapshots", []):
            srec = self._call(what, "VM.get_record", snap)
            gone += self._destroy_vm(str(snap), srec, what)
        gone = self._destroy_vm(ref, rec, what) + gone
        with self._lock:
            self._vm_refs.pop(uuid, None)
        return gone

    def start(self, uuid: str) -> None:
        ref, rec = self._vm(uuid)
        what = f"start VM {rec['name_label']!r}"
        if self.scope is not None:
            self._run(what, "VM.start_on", ref, self.scope, False, False)
        else:
            self._run(what, "VM.start", ref, False, False)

    def power_off(self, uuid: str) -> None:
        ref, rec = self._vm(uuid)
        self._run(f"power off VM {rec['name_label']!r}", "VM.hard_shutdown", ref)

    # -- graceful, reset, pause, suspend --------------------------------------------------

    def _assert_guest_can(self, ref: str, rec: dict[str, Any], op: str, verb: str) -> None:
        """xapi lists an operation in allowed_operations only when the guest can do it (for
        HVM guests: PV drivers or the feature flag; xapi_vm_lifecycle.ml check_op_for_feature
        with strict=true). If it is missing, ask xapi why and raise InvalidState."""
        if rec.get("power_state") != "Running" or op in rec.get("allowed_operations", []):
            return
        try:
            self._c.call("VM.assert_operation_valid", ref, op)
        except Exception as exc:
            err = _errors.from_exception(f"{verb} VM {rec['name_label']!r}", exc)
            why = {"OPERATION_BLOCKED": f"{op} is blocked on this VM (blocked_operations)"}.get(
                str(err.vendor_code), "no PV drivers or guest agent"
            )
            if isinstance(err, InvalidState) or err.vendor_code == "OPERATION_BLOCKED":
                err = InvalidState(
                    f"{err}: the guest cannot be asked to {verb} ({why})",
                    current=S.RUNNING,
                    allowed={S.RUNNING},
                    vendor_code=err.vendor_code,
                )
            raise err from exc

    def shutdown(self, uuid: str) -> None:
        ref, rec = self._vm(uuid)
        what = f"shut down VM {rec['name_label']!r}"
        self._assert_guest_can(ref, rec, "clean_shutdown", "shut down")
        with self._mapped(what):
            task = str(self._c.call("Async.VM.clean_shutdown", ref))
        # A guest that cannot be asked fails at once: say so (the core then forces, if
        # told to). One that was asked takes its time: the core waits for Halted.
        try:
            self._run_task(task, what, SHUTDOWN_ASK_S)
        except OperationTimeout:
            log.debug("%s: asked the guest; the task %s runs on", what, task)
            with self._lock:
                self._detached.append(task)

    def _run_task(self, task: str, what: str, wait_s: float) -> None:
        """Wait up to ``wait_s`` for a task; if it still runs, leave it (not cancelled)."""
        deadline = time.monotonic() + wait_s
        token = ""
        with self._mapped(what):
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OperationTimeout(f"{what}: still running")
                resp = self._c.event_from([f"task/{task}"], token, left)
                token = str(resp["token"])
                for ev in resp.get("events", []):
                    status = (ev.get("snapshot") or {}).get("status")
                    if ev.get("ref") == task and status not in (None, "pending", "cancelling"):
                        self._c.wait_task(task, what, 1.0)  # result or failure; destroys it
                        return

    def reboot(self, uuid: str) -> None:
        ref, rec = self._vm(uuid)
        self._assert_guest_can(ref, rec, "clean_reboot", "reboot")
        self._run(f"reboot VM {rec['name_label']!r}", "VM.clean_reboot", ref)

    def reset(self, uuid: str) -> None:
        ref, rec = self._vm(uuid)
        self._run(f"reset VM {rec['name_label']!r}", "VM.hard_reboot", ref)

    def pause(self, uuid: str) -> None:
        ref, rec = self._vm(uuid)
        self._run(f"pause VM {rec['name_label']!r}", "VM.pause", ref)

    def unpause(self, uuid: str) -> None:
        ref, rec = self._vm(uuid)
        self._run(f"unpause VM {rec['name_label']!r}", "VM.unpause", ref)

    def suspend(self, uuid: str) -> None:
        ref, rec = self._vm(uuid)
        what = f"suspend VM {rec['name_label']!r}"
        if self.scope is not None and rec.get("affinity") != self.scope:
            # A suspended VM is resident nowhere: its affinity keeps it in this host's
            # inventory and resumes it here.
            self._call(what, "VM.set_affinity", ref, self.scope)
        self._run(what, "VM.suspend", ref)

    def resume_suspended(self, uuid: str) -> None:
        ref, rec = self._vm(uuid)
        what = f"resume VM {rec['name_label']!r}"
        self._resume(ref, what, paused=False)

    def _resume(self, ref: str, what: str, *, paused: bool) -> None:
        if self.scope is not None:
            self._run(what, "VM.resume_on", ref, self.scope, paused, False)
        else:
            self._run(what, "VM.resume", ref, paused, False)

    # -- reconfiguration ------------------------------------------------------------------

    def set_vcpus(self, uuid: str, vcpus: int, *, live: bool) -> None:
        ref, rec = self._vm(uuid)
        what = f"set vCPUs of VM {rec['name_label']!r}"
        if live:
            raise InvalidState(
                f"{what}: the xen driver changes vCPUs only while stopped",
                current=S.RUNNING,
                allowed={S.STOPPED},
            )
        # xapi keeps 0 < VCPUs_at_startup <= VCPUs_max at every step.
        if vcpus >= _int(rec.get("VCPUs_max")):
            self._call(what, "VM.set_VCPUs_max", ref, str(vcpus))
            self._call(what, "VM.set_VCPUs_at_startup", ref, str(vcpus))
        else:
            self._call(what, "VM.set_VCPUs_at_startup", ref, str(vcpus))
            self._call(what, "VM.set_VCPUs_max", ref, str(vcpus))

    def set_memory(self, uuid: str, memory_mib: int, *, live: bool) -> None:
        ref, rec = self._vm(uuid)
        what = f"set memory of VM {rec['name_label']!r}"
        if live:
            raise InvalidState(
                f"{what}: the xen driver changes memory only while stopped",
                current=S.RUNNING,
                allowed={S.STOPPED},
            )
        new = memory_mib * MiB
        smax, dmin = _int(rec.get("memory_static_max")), _int(rec.get("memory_dynamic_min"))
        # A VM without a reservation (pinned: dynamic_min = static_max) stays pinned.
        dmin = new if dmin >= smax else min(dmin, new)
        smin = min(_int(rec.get("memory_static_min")), dmin)
        self._call(what, "VM.set_memory_limits", ref, str(smin), str(new), str(dmin), str(new))

    def set_resources(self, uuid: str, resources: Resources) -> None:
        ref, rec = self._vm(uuid)
        what = f"set resources of VM {rec['name_label']!r}"
        if resources.cpu_shares is not None:
            self._check_weight(resources.cpu_shares)
        running = rec.get("power_state") == "Running"
        if resources.cpu_shares is not None or resources.cpu_limit_percent is not None:
            if rec.get("power_state") != "Halted":
                # The domain gets VCPUs_params when it is built; xapi has no live setter
                # (xapi_vm.ml: add_to_VCPUs_params_live raises NOT_IMPLEMENTED).
                state = power_state(str(rec.get("power_state")))
                raise InvalidState(
                    f"{what}: Xen applies the CPU weight and cap when the VM "
                    f"starts; stop it first (it is {state.value})",
                    current=state,
                    allowed={S.STOPPED},
                )
            params = self._vcpus_params(rec.get("VCPUs_params", {}), resources)
            self._call(what, "VM.set_VCPUs_params", ref, params)
        if resources.memory_reservation_mib is not None:
            dmin = resources.memory_reservation_mib * MiB
            smin, smax = _int(rec.get("memory_static_min")), _int(rec.get("memory_static_max"))
            dmax = _int(rec.get("memory_dynamic_max"))
            if dmin >= smin:
                self._call(what, "VM.set_memory_dynamic_range", ref, str(dmin), str(dmax))
            elif not running and rec.get("power_state") == "Halted":
                self._call(
                    what, "VM.set_memory_limits", ref, str(dmin), str(smax), str(dmin), str(dmax)
                )
            else:
                raise InvalidState(
                    f"{what}: a reservation below the VM's static minimum "
                    f"({smin // MiB} MiB) needs it stopped",
                    current=power_state(str(rec.get("power_state"))),
                    allowed={S.STOPPED},
                )

    # -- devices --------------------------------------------------------------------------

    def add_disk(self, uuid: str, disk: DiskSpec, *, live: bool) -> DiskInfo:
        ref, rec = self._vm(uuid)
        what = f"add a disk to VM {rec['name_label']!r}"
        if disk.source:
            raise ValidationError("the xen driver creates blank disks only", field="source")
        sr = self._sr(disk.pool)
        free = self._call(what, "VM.get_allowed_VBD_devices", ref)
        if not free:
            raise InvalidState(f"{what}: no free disk slot")
        userdevice = sorted(free, key=lambda d: int(d) if d.isdigit() else 99)[0]
        vdi = self._new_disk(ref, str(rec["name_label"]), disk, sr, userdevice)
        if live:
            vbd = self._vbd_of(ref, userdevice)
            try:
                self._run(what, "VBD.plug", vbd)
            except BaseException:
                with contextlib.suppress(Exception):
                    self._c.call("VBD.destroy", vbd)
                    self._c.call("VDI.destroy", vdi)
                raise
        vrec = self._call(what, "VDI.get_record", vdi)
        return self._disk_info({"userdevice": userdevice}, vrec)

    def _vbd_of(self, ref: str, userdevice: str) -> str:
        for vbd in self._call("find the disk", "VM.get_VBDs", ref):
            if self._call("find the disk", "VBD.get_userdevice", vbd) == userdevice:
                return str(vbd)
        raise NotFound(f"no disk in slot {userdevice}")

    def remove_disk(self, uuid: str, disk_id: str, *, live: bool) -> None:
        _ref, rec = self._vm(uuid)
        what = f"remove disk {disk_id} from VM {rec['name_label']!r}"
        disks, _nics = self._devices(rec)
        hit = [d for d in disks if _disk_id(str(d[1].get("userdevice"))) == disk_id]
        if not hit:
            raise NotFound(f"VM {rec['name_label']!r} has no disk {disk_id!r}")
        vbd, b, vdi = hit[0]
        if b.get("currently_attached"):
            self._run(what, "VBD.unplug", vbd)
        self._call(what, "VBD.destroy", vbd)
        if vdi is not None and OWNER_KEY in b.get("other_config", {}):
            self._run(what, "VDI.destroy", b["VDI"])

    def add_nic(self, uuid: str, nic: NicSpec, *, live: bool) -> NicInfo:
        ref, rec = self._vm(uuid)
        what = f"add a NIC to VM {rec['name_label']!r}"
        net, netrec = self._network(nic.network)
        free = self._call(what, "VM.get_allowed_VIF_devices", ref)
        if not free:
            raise InvalidState(f"{what}: no free NIC slot")
        device = sorted(free, key=lambda d: int(d) if d.isdigit() else 99)[0]
        vif = str(
            self._call(what, "VIF.create", self._vif_record(ref, net, netrec, device, nic.mac))
        )
        if live:
            try:
                self._run(what, "VIF.plug", vif)
            except BaseException:
                with contextlib.suppress(Exception):
                    self._c.call("VIF.destroy", vif)
                raise
        return self._nic_info(self._call(what, "VIF.get_record", vif))

    def remove_nic(self, uuid: str, nic_id: str, *, live: bool) -> None:
        _ref, rec = self._vm(uuid)
        what = f"remove NIC {nic_id} from VM {rec['name_label']!r}"
        _disks, nics = self._devices(rec)
        hits = [n for n in nics if _nic_id(str(n[1].get("device"))) == nic_id]
        if not hits:
            raise NotFound(f"VM {rec['name_label']!r} has no NIC {nic_id!r}")
        vif, v = hits[0]
        if v.get("currently_attached"):
            self._run(what, "VIF.unplug", vif)
        self._call(what, "VIF.destroy", vif)

    # -- snapshots ------------------------------------------------------------------------

    @staticmethod
    def _parent(rec: dict[str, Any]) -> str:
        """xapi's parent field: a snapshot's is the snapshot it was taken after, the VM's is
        its current snapshot (xapi_vm_clone.ml copy_vm_record; xapi_vm_snapshot.ml revert
        update_parent); VM.destroy re-parents the children (xapi_vm.ml destroy)."""
        return str(rec.get("parent", NULL))

    def _snapshots(self, ref: str, rec: dict[str, Any]) -> list[SnapshotInfo]:
        recs = {}
        for snap in rec.get("snapshots", []):
            with contextlib.suppress(NotFound):
                recs[str(snap)] = self._call("list snapshots", "VM.get_record", snap)

        def resolve(parent: str) -> str | None:
            return parent if parent in recs else None

        current = resolve(self._parent(rec))
        out = []
        for sref, s in recs.items():
            parent = resolve(self._parent(s))
            memory = s.get("power_state") == "Suspended" or s.get("suspend_VDI") not in (
                None,
                "",
                NULL,
            )
            at = power_state(str(s.get("snapshot_info", {}).get("power-state-at-snapshot", "")))
            out.append(
                SnapshotInfo(
                    id=str(s["uuid"]),
                    name=str(s["name_label"]),
                    created=_when(s.get("snapshot_time")),
                    parent=str(recs[parent]["uuid"]) if parent else None,
                    with_memory=memory,
                    state=at if memory and at is not S.UNKNOWN else S.STOPPED,
                    description=str(s.get("name_description", "")),
                    current=sref == current,
                )
            )
        return out

    def create_snapshot(
        self, uuid: str, name: str, *, memory: bool, description: str
    ) -> SnapshotInfo:
        ref, rec = self._vm(uuid)
        what = f"snapshot VM {rec['name_label']!r}"
        if memory and rec.get("power_state") != "Running":
            # xapi_vm_clone.ml: a checkpoint keeps memory only of a Running (or Suspended) VM;
            # of a Paused one it is a disk-only snapshot.
            state = power_state(str(rec.get("power_state")))
            raise InvalidState(
                f"{what}: XenAPI saves memory (VM.checkpoint) only from a "
                f"running VM; this one is {state.value}",
                current=state,
                allowed={S.RUNNING},
            )
        method = "VM.checkpoint" if memory else "VM.snapshot"
        snap = str(self._run(what, method, ref, name))
        if description:
            self._call(what, "VM.set_name_description", snap, description)
        _ref, rec = self._vm(uuid)
        for info in self._snapshots(ref, rec):
            if info.id == self._call(what, "VM.get_uuid", snap):
                return info
        raise NotFound(f"{what}: the new snapshot {name!r} is not among the VM's snapshots")

    def list_snapshots(self, uuid: str) -> list[SnapshotInfo]:
        ref, rec = self._vm(uuid)
        return self._snapshots(ref, rec)

    def _snapshot_ref(self, rec: dict[str, Any], snapshot_id: str) -> tuple[str, dict[str, Any]]:
        for snap in rec.get("snapshots", []):
            s = self._call("find the snapshot", "VM.get_record", snap)
            if s.get("uuid") == snapshot_id:
                return str(snap), s
        raise NotFound(f"VM {rec['name_label']!r} has no snapshot {snapshot_id!r}")

    def revert_snapshot(self, uuid: str, snapshot_id: str) -> None:
        ref, rec = self._vm(uuid)
        sref, snap = self._snapshot_ref(rec, snapshot_id)
        what = f"revert VM {rec['name_label']!r} to {snap['name_label']!r}"
        self._run(what, "VM.revert", sref)
        # A checkpoint reverts to Suspended (xapi_vm_snapshot.ml); resume it to the state
        # it was in when taken.
        state = self._call(what, "VM.get_power_state", ref)
        if state == "Suspended" and snap.get("power_state") == "Suspended":
            at = str(snap.get("snapshot_info", {}).get("power-state-at-snapshot", "Running"))
            self._resume(ref, what, paused=at == "Paused")

    def delete_snapshot(self, uuid: str, snapshot_id: str) -> None:
        _ref, rec = self._vm(uuid)
        sref, snap = self._snapshot_ref(rec, snapshot_id)
        what = f"delete snapshot {snap['name_label']!r} of VM {rec['name_label']!r}"
        self._destroy_vm(sref, snap, what)

    # -- clone and migrate ----------------------------------------------------------------

    def clone_vm(self, uuid: str, name: str, *, linked: bool) -> VMInfo:
        ref, rec = self._vm(uuid)
        if self._name_taken(name):
            raise AlreadyExists(
                f"a VM named {name!r} already exists in the pool at {self.uri.host}"
            )
        what = f"clone VM {rec['name_label']!r} as {name!r}"
        if linked:
            new = str(self._run(what, "VM.clone", ref, name))
        else:
            new = str(self._run(what, "VM.copy", ref, name, NULL))
        try:
            nrec = self._call(what, "VM.get_record", new)
            # The copy owns its disks (xapi_vm_clone.ml marks them so; make sure).
            for vbd in nrec.get("VBDs", []):
                b = self._call(what, "VBD.get_record", vbd)
                if b.get("type") == "Disk" and OWNER_KEY not in b.get("other_config", {}):
                    self._call(what, "VBD.add_to_other_config", vbd, OWNER_KEY, "true")
            if nrec.get("is_a_template"):
                self._call(what, "VM.set_is_a_template", new, False)
                nrec = self._call(what, "VM.get_record", new)
        except BaseException:
            with contextlib.suppress(Exception):
                self._destroy_vm(new, self._c.call("VM.get_record", new), what)
            raise
        with self._lock:
            self._vm_refs[str(nrec["uuid"])] = new
        return self._info(nrec)

    def migrate_vm(self, uuid: str, target: Driver, *, live: bool, timeout: float) -> None:
        if not isinstance(target, XenDriver) or target.pool_uuid != self.pool_uuid:
            raise ValidationError(
                "the target must be a host of the same pool (a xen:// "
                "connection to this pool's master with ?host=NAME)",
                field="target",
            )
        if target.scope is None:
            raise ValidationError(
                "the target names no host: connect to it with xen://master?host=NAME",
                field="target",
            )
        ref, rec = self._vm(uuid)
        what = f"migrate VM {rec['name_label']!r} to {target.scope_name}"
        if live:
            self._run(what, "VM.pool_migrate", ref, target.scope, {"live": "true"}, timeout=timeout)
        else:
            self._check_storage(rec, target.scope, what)
        # The VM's home moves too: it stays in the target's inventory when it stops.
        self._call(what, "VM.set_affinity", ref, target.scope)

    def _check_storage(self, rec: dict[str, Any], host: str, what: str) -> None:
        """A halted VM can move only if the target host sees all its disks."""
        srs = self._call(what, "SR.get_all_records")
        pbds = self._call(what, "PBD.get_all_records")
        for _vdi, vrec in self._owned_vdis(rec):
            sr = srs.get(vrec.get("SR"), {})
            if sr.get("shared"):
                continue
            if not any(
                p.get("SR") == vrec.get("SR") and p.get("host") == host for p in pbds.values()
            ):
                raise ValidationError(
                    f"{what}: disk {vrec.get('name_label')!r} is on SR "
                    f"{sr.get('name_label')!r}, which the target host "
                    "cannot reach",
                    field="target",
                )

    # -- observation ----------------------------------------------------------------------

    def guest_info(self, uuid: str) -> GuestInfo:
        _ref, rec = self._vm(uuid)
        gm = rec.get("guest_metrics", NULL)
        if rec.get("power_state") != "Running" or gm in ("", NULL):
            return GuestInfo(agent=AgentState.NOT_RUNNING)
        try:
            g = self._c.call("VM_guest_metrics.get_record", gm)
        except Exception as exc:
            if _errors.details(exc)[:1] == ["HANDLE_INVALID"]:
                return GuestInfo(agent=AgentState.NOT_RUNNING)
            raise _errors.from_exception(f"guest info of VM {rec['name_label']!r}", exc) from exc
        ips: list[str] = []
        for key, value in sorted(g.get("networks", {}).items()):
            # "0/ip" (legacy), "0/ipv4/0", "0/ipv6/0" (xapi_guest_agent.ml)
            parts = key.split("/")
            if (
                len(parts) >= 2
                and parts[1] in ("ip", "ipv4", "ipv6")
                and value
                and value not in ips
            ):
                ips.append(str(value))
        os_version = g.get("os_version", {})
        return GuestInfo(
            ip_addresses=tuple(ips),
            agent=AgentState.RUNNING if g.get("live", True) else AgentState.NOT_RUNNING,
            hostname=os_version.get("hostname") or None,
            os_name=os_version.get("name") or None,
        )

    def wait_for_state(self, uuid: str, states: Iterable[PowerState], *, timeout: float) -> VMInfo:
        """Wait with event.from on the VM object (the first call returns its current record,
        then each call blocks until it changes)."""
        wanted = frozenset(states)
        ref = self._ref(uuid)
        deadline = time.monotonic() + timeout
        token = ""
        last: VMInfo | None = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0 and token:
                name = last.name if last else uuid
                state = last.state.value if last else "unknown"
                raise OperationTimeout(
                    f"VM {name!r} is still {state} after {timeout:g} s "
                    f"(waiting for {'/'.join(sorted(wanted))})"
                )
            with self._mapped(f"wait for VM {uuid}"):
                resp = self._c.event_from([f"VM/{ref}"], token, max(0.0, min(left, 30.0)))
            first, token = not token, str(resp["token"])
            events = [ev for ev in resp.get("events", []) if ev.get("ref") == ref]
            if first and not events:
                # The first call (empty token) returns the object if it exists.
                with self._lock:
                    self._vm_refs.pop(uuid, None)
                raise NotFound(f"no VM with UUID {uuid} in the pool at {self.uri.host}")
            for ev in events:
                if ev.get("operation") == "del":
                    raise NotFound(f"VM {uuid} was deleted while waiting for it")
                last = self._info(ev["snapshot"])
                if last.state in wanted:
                    return last

    def subscribe(self) -> EventSource:
        from ._events import XenEvents

        with self._mapped("subscribe to events"):
            return XenEvents(self)

    # used by _events
    def in_scope(self, rec: dict[str, Any]) -> bool:
        return self._in_scope(rec)

    def vm_info(self, rec: dict[str, Any]) -> VMInfo:
        return self._info(rec)

    @property
    def connection(self) -> Connection:
        return self._c
