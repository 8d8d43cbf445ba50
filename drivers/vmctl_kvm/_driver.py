"""The KVM/QEMU driver: vmctl's SPI over libvirt-python.

URIs are libvirt's: ``qemu:///system``, ``qemu+ssh://user@host/system``,
``qemu+tcp://host/system``, ``test:///default`` (libvirt's in-process test driver). Query
parameters that libvirt understands (``keyfile``, ``no_verify``, ``socket``, ...) are passed
on to libvirt; vmctl's own options are not:

* ``pool``: storage pool for new disks (default ``default``, else the only active pool);
* ``network``: the libvirt network a NicSpec on network ``default`` is put on;
* ``type``: domain type for new VMs (``kvm`` or ``qemu``; default: kvm when the host has it,
  qemu/TCG for VMs that boot an OS on a nested-PVM /dev/kvm, see docs/kvm.md);
* ``shared_storage``: ``yes`` says the image directory is shared with migration targets
  (libvirt cannot see that on a local file system and would refuse the migration as unsafe);
* ``memory_limit``: ``yes``/``no`` overrides whether memory hard limits are offered;
* ``rpc_timeout``: seconds after which a libvirtd that stopped answering is given up (the
  connection's keepalive), and the time a failed create gets to remove what it made
  (default 20).

Every libvirt call runs under the request's deadline (see ``_link``); the driver has no
wait or retry loop of its own: the core waits with ``wait_changes`` (lifecycle events) and
reconnects with ``reconnect``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import re
import secrets
import threading
import urllib.parse
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import vmctl
from vmctl import (
    AgentState,
    AlreadyExists,
    Capability,
    ConnectParams,
    DiskInfo,
    DiskSpec,
    GuestInfo,
    HostInfo,
    InvalidState,
    NicInfo,
    NicSpec,
    NotFound,
    NotSupported,
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
    Pausable,
    Reconfigurable,
    Reconnectable,
    Resettable,
    ResourceControls,
    Snapshots,
    Statistics,
    Suspendable,
)

from . import _errors as E
from . import _xml as X
from ._backup import KvmDiskAccess
from ._hosts import KvmSiteMember
from ._link import (
    RPC_TIMEOUT_S,
    EventHub,
    Link,
    ensure_event_loop,
    pending_of,
    require_libvirt,
)
from ._placement import KvmPlacement
from ._state import CRASHED, PMSUSPENDED, SHUTOFF, to_power_state
from ._storage import KvmStorage

S = PowerState
C = Capability

VMCTL_OPTIONS = frozenset(
    {"pool", "network", "type", "shared_storage", "memory_limit", "rpc_timeout"}
)
#: URI query parameters libvirt itself understands (passed on unchanged).
LIBVIRT_PARAMS = frozenset(
    {
        "name",
        "command",
        "socket",
        "netcat",
        "keyfile",
        "no_verify",
        "no_tty",
        "pkipath",
        "known_hosts",
        "known_hosts_verify",
        "sshauth",
        "mode",
        "proxy",
        "tls_priority",
        "tls",
        "transport",
    }
)
SCHEMES = frozenset({"qemu", "test"})
MAX_DEFAULT_VCPUS = 16  # the vCPU ceiling a new domain gets for hot-plug, if the host has it

_NOWAIT = 1 << 29  # VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT (libvirt >= 4.5)
# libvirt flag values used below (stable ABI; named for readability)
AFFECT_LIVE, AFFECT_CONFIG = 1, 2
XML_SECURE, XML_INACTIVE, XML_MIGRATABLE = 1, 2, 8


def libvirt_uri(params: ConnectParams) -> str:
    """The libvirt URI for a vmctl URI: vmctl's own options removed, libvirt's kept."""
    uri = params.uri
    if uri.scheme not in SCHEMES:
        raise ValidationError(
            f"the kvm driver serves qemu:// and test:// URIs, not {uri.scheme}://", field="uri"
        )
    unknown = set(params.options) - VMCTL_OPTIONS - LIBVIRT_PARAMS
    if unknown:
        raise ValidationError(
            f"unknown kvm option(s) {sorted(unknown)}; vmctl's are {sorted(VMCTL_OPTIONS)}, "
            f"libvirt's URI parameters are {sorted(LIBVIRT_PARAMS)}",
            field="uri",
        )
    head = uri.scheme + (f"+{uri.transport}" if uri.transport else "")
    netloc = ""
    user = uri.user or (params.username if uri.host else None)
    if user:
        netloc += urllib.parse.quote(user, safe="@.-_~") + "@"
    netloc += f"[{uri.host}]" if ":" in uri.host else uri.host
    if uri.port is not None:
        netloc += f":{uri.port}"
    query = {k: v for k, v in params.options.items() if k in LIBVIRT_PARAMS}
    qs = ("?" + urllib.parse.urlencode(sorted(query.items()))) if query else ""
    return f"{head}://{netloc}{urllib.parse.quote(uri.path or '/', safe='/:._-~')}{qs}"


def _yes(value: str | None) -> bool | None:
    if value is None:
        return None
    v = value.strip().lower()
    if v in {"1", "yes", "true", "on"}:
        return True
    if v in {"0", "no", "false", "off"}:
        return False
    raise ValidationError(f"expected yes or no, got {value!r}", field="uri")


def _can_raise_memlock() -> bool:
    """Whether libvirtd on this machine can raise a QEMU process's locked-memory limit (it
    sets it to the memory hard limit): unlimited RLIMIT_MEMLOCK or CAP_SYS_RESOURCE."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if hard == resource.RLIM_INFINITY:
        return True
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 24))
    except OSError:
        pass
    return False


def _rpc_timeout(value: str | None) -> float:
    if value is None:
        return RPC_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 1:
        raise ValidationError(
            f"rpc_timeout must be a number of seconds >= 1, got {value!r}", field="uri"
        )
    return seconds


class KvmDriver(
    Driver,
    Reconnectable,
    ChangeWaiter,
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
    Statistics,
    GuestAgent,
    KvmDiskAccess,
    KvmStorage,
    KvmSiteMember,
    KvmPlacement,
):
    """libvirt (QEMU/KVM, or libvirt's test driver) through libvirt-python."""

    name = "kvm"
    thread_safe = True

    def __init__(
        self, params: ConnectParams, link: Link, hub: EventHub, deadline: Deadline
    ) -> None:
        self._params = params
        self._link = link
        self._hub = hub
        self._lock = threading.Lock()
        opts = params.options
        self._pool_opt = opts.get("pool") or None
        self._network_opt = opts.get("network") or None
        self._type_opt = opts.get("type") or None
        if self._type_opt not in (None, "kvm", "qemu", "test"):
            raise ValidationError(f"type must be kvm or qemu, got {self._type_opt!r}", field="uri")
        self._shared_storage = _yes(opts.get("shared_storage"))
        self._memory_limit_opt = _yes(opts.get("memory_limit"))
        info = link.run(
            "host info", lambda c: (c.getType(), c.getInfo(), c.getHostname()), deadline
        )
        self._hv_type: str = info[0]
        self.is_test = self._hv_type.upper() == "TEST"
        self._node = info[1]
        self._hostname: str = info[2]
        self._local = not params.uri.host
        self._kvm_ok = False
        self._arch = "x86_64"
        if not self.is_test:
            caps = X.parse(link.run("capabilities", lambda c: c.getCapabilities(), deadline))
            self._kvm_ok = any(d.get("type") == "kvm" for d in caps.findall("guest/arch/domain"))
            self._arch = caps.findtext("host/cpu/arch") or "x86_64"
        else:
            self._arch = self._node[0] if self._node[0] in ("i686", "x86_64") else "i686"
        self._pvm = self._local and Path("/sys/module/kvm_pvm").exists()
        self._caps = self._capabilities()

    # -- opening ------------------------------------------------------------------------

    @classmethod
    def open(cls, params: ConnectParams, *, deadline: Deadline) -> KvmDriver:
        require_libvirt()
        uri = libvirt_uri(params)
        rpc = _rpc_timeout(params.options.get("rpc_timeout"))
        ensure_event_loop()
        hub = EventHub(params.uri.host or "localhost")
        link = Link(uri, params, hub, rpc_timeout=rpc)
        link.open(deadline)
        try:
            return cls(params, link, hub, deadline)
        except BaseException:
            link.close()
            raise

    def reconnect(self, *, deadline: Deadline) -> None:
        """A new libvirt connection: one attempt, bounded by ``deadline`` and the connect
        timeout; event callbacks are registered on it again."""
        self._link.reopen(deadline)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._link.close()

    def kit_defaults(self, *, deadline: Deadline) -> Mapping[str, str]:
        """An active network and storage pool for the kit's VMs (see _kitdefaults)."""
        from ._kitdefaults import kit_defaults

        return kit_defaults(self, deadline)

    @property
    def libvirt_uri(self) -> str:
        return self._link.uri

    def narrow_capabilities(self, offered: frozenset[Capability]) -> frozenset[Capability]:
        return offered & self._caps

    def _capabilities(self) -> frozenset[Capability]:
        """What this host can do (the interfaces offer more: see docs/kvm.md)."""
        caps = {
            C.CREATE,
            C.DELETE,
            C.START,
            C.POWER_OFF,
            C.RESET,
            C.PAUSE,
            C.SUSPEND,
            C.SET_VCPUS,
            C.SET_MEMORY,
            C.HOT_VCPUS,
            C.SNAPSHOT,
            C.SNAPSHOT_MEMORY,
            C.CLONE,
            C.EVENTS,
            C.STATS,
            C.ADD_DISK,
            C.REMOVE_DISK,
            C.ADD_NIC,
            C.REMOVE_NIC,
            C.REBOOT,
        }
        if self.is_test:
            # libvirt's test driver: every guest obeys shutdown at once (so a guest that
            # does not answer cannot be shown), reports made-up IP addresses for any
            # domain, and has no scheduler tunables or device hot-plug.
            caps |= {C.MEMORY_LIMIT}
        else:
            # Not HOTPLUG_NIC: a virtio NIC is a PCI device, and QEMU releases a PCI device
            # only when the guest OS acknowledges the unplug (ACPI eject); a guest without an
            # OS never does. Hot-plugged disks go on virtio-scsi, which needs no guest consent.
            caps |= {
                C.SHUTDOWN,
                C.CPU_SHARES,
                C.CPU_LIMIT,
                C.HOTPLUG_DISK,
                C.GUEST_INFO,
                C.MIGRATE_LIVE,
                C.MIGRATE_COLD,
                # backup and restore: see _backup.py and docs/kvm.md#backup
                C.BACKUP,
                C.BACKUP_QUIESCE,
                C.BACKUP_INCREMENTAL,
                C.RESTORE,
            }
            mem_limit = self._memory_limit_opt
            if mem_limit is None:
                mem_limit = not self._local or _can_raise_memlock()
            if mem_limit:
                caps.add(C.MEMORY_LIMIT)
        return frozenset(caps)

    # -- helpers ------------------------------------------------------------------------

    def _call(
        self, what: str, fn: Callable[[Any], Any], deadline: Deadline, *, change: bool = False
    ) -> Any:
        return self._link.run(what, fn, deadline, change=change)

    def _dom(self, conn: Any, uuid: str) -> Any:
        try:
            return conn.lookupByUUIDString(uuid)
        except Exception as exc:
            if E.code_of(exc) == E.NO_DOMAIN:
                raise NotFound(
                    f"no VM with UUID {uuid} on {self._link.uri}", vendor_code=str(E.NO_DOMAIN)
                ) from exc
            raise

    def _on_dom(
        self,
        uuid: str,
        what: str,
        fn: Callable[[Any], Any],
        deadline: Deadline,
        *,
        change: bool = False,
    ) -> Any:
        return self._call(what, lambda c: fn(self._dom(c, uuid)), deadline, change=change)

    def _info_of(self, dom: Any) -> VMInfo:
        state, reason = dom.state()
        saved = state == SHUTOFF and bool(dom.hasManagedSaveImage(0))
        ps, pr = to_power_state(state, reason, saved)
        _, max_kib, _, vcpus, _ = dom.info()
        return VMInfo(
            uuid=dom.UUIDString(),
            name=dom.name(),
            state=ps,
            reason=pr,
            vcpus=int(vcpus),
            memory_mib=int(max_kib) // 1024,
            host=self._hostname,
        )

    def _xml(self, dom: Any, *, inactive: bool = False) -> ET.Element:
        flags = XML_SECURE | (XML_INACTIVE if inactive else 0)
        return X.parse(dom.XMLDesc(flags))

    def _flags(self, dom: Any) -> int:
        return AFFECT_CONFIG | (AFFECT_LIVE if dom.isActive() else 0)

    def _pool(self, conn: Any, name: str | None) -> Any:
        name = name or self._pool_opt
        if name:
            return conn.storagePoolLookupByName(name)
        try:
            return conn.storagePoolLookupByName("default")
        except Exception as exc:
            if E.code_of(exc) != E.NO_STORAGE_POOL:
                raise
            active = conn.listAllStoragePools(2)  # VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE
            if len(active) == 1:
                return active[0]
            raise NotFound(
                f"no storage pool named 'default' on {self._link.uri}; give one "
                "with ?pool=NAME or DiskSpec(pool=...)"
            ) from exc

    def _vol_format(self, pool: Any) -> str | None:
        ptype = X.parse(pool.XMLDesc(0)).get("type", "dir")
        if self.is_test:
            return None
        return "qcow2" if ptype in ("dir", "fs", "netfs") else None

    def _delete_volume(self, conn: Any, path: str, pool_name: str | None = None) -> bool:
        """Delete the volume at ``path``; False if there is none. A pool this host has not
        refreshed since another host made the file there (after a migration, on shared
        storage) is refreshed first."""
        try:
            vol = conn.storageVolLookupByPath(path)
        except Exception as exc:
            if E.code_of(exc) != E.NO_STORAGE_VOL or not pool_name:
                if E.code_of(exc) == E.NO_STORAGE_VOL:
                    return False
                raise
            try:
                conn.storagePoolLookupByName(pool_name).refresh(0)
                vol = conn.storageVolLookupByPath(path)
            except Exception as exc2:
                if E.code_of(exc2) in (E.NO_STORAGE_VOL, E.NO_STORAGE_POOL):
                    return False
                raise
        vol.delete(0)
        return True

    def _network(self, conn: Any, name: str) -> str:
        if name == "default" and self._network_opt:
            name = self._network_opt
        try:
            conn.networkLookupByName(name)
        except Exception as exc:
            if E.code_of(exc) == E.NO_NETWORK:
                raise NotFound(
                    f"no libvirt network {name!r} on {self._link.uri}",
                    vendor_code=str(E.NO_NETWORK),
                ) from exc
            raise
        return name

    def _domain_type(self, spec: VMSpec) -> str:
        if self.is_test:
            return "test"
        if self._type_opt:
            return self._type_opt
        if not self._kvm_ok:
            return "qemu"
        if spec.boot is not None and self._pvm:
            return "qemu"  # a guest OS does not boot in usable time on nested PVM
        return "kvm"

    # -- inventory ------------------------------------------------------------------------

    def host_info(self, *, deadline: Deadline) -> HostInfo:
        def read(c: Any) -> HostInfo:
            _model, mem_mib, cpus, mhz, *_ = c.getInfo()
            free = None
            with contextlib.suppress(Exception):
                free = int(c.getFreeMemory()) // (1024 * 1024)
            host_uuid = None
            with contextlib.suppress(Exception):
                host_uuid = X.parse(c.getCapabilities()).findtext("host/uuid")
            version = c.getVersion()
            ver = f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"
            count = len(c.listAllDomains(0))
            hv = "libvirt test" if self.is_test else ("QEMU/KVM" if self._kvm_ok else "QEMU (TCG)")
            return HostInfo(
                name=c.getHostname(),
                hypervisor=hv,
                version=ver,
                cpus=int(cpus),
                cpu_mhz=int(mhz),
                memory_mib=int(mem_mib),
                free_memory_mib=free,
                uuid=host_uuid,
                vm_count=count,
            )

        return self._call("host info", read, deadline)  # type: ignore[no-any-return]

    def list_vms(self, *, deadline: Deadline) -> list[VMInfo]:
        """Two libvirt calls however many domains: getAllDomainStats (state, vCPUs, balloon)
        and listAllDomains(MANAGEDSAVE) (which shut-off domains are SUSPENDED).

        libvirt's test driver answers getAllDomainStats with the state only (no vcpu or
        balloon group): there the vCPUs and memory come from each domain's ``info()``.
        """
        lv = require_libvirt()
        stats_kind = (
            lv.VIR_DOMAIN_STATS_STATE | lv.VIR_DOMAIN_STATS_VCPU | lv.VIR_DOMAIN_STATS_BALLOON
        )

        def read(c: Any) -> list[VMInfo]:
            # NOWAIT: a domain busy with a job (migration, save) answers from what libvirt
            # has without waiting for that job, so listing never blocks on it.
            records = c.getAllDomainStats(stats_kind, 0 if self.is_test else _NOWAIT)
            saved = {
                d.UUIDString() for d in c.listAllDomains(lv.VIR_CONNECT_LIST_DOMAINS_MANAGEDSAVE)
            }
            # The loop runs once per domain: keep it lean (5000 domains in ~20 ms).
            state_of = _STATE_MEMO.get
            host = self._hostname
            out: list[VMInfo] = []
            append = out.append
            for dom, st in records:
                uuid = dom.UUIDString()
                key = (st.get("state.state", 0), st.get("state.reason", 0), uuid in saved)
                ps_pr = state_of(key)
                if ps_pr is None:
                    ps_pr = _STATE_MEMO[key] = to_power_state(*key)
                vcpus = st.get("vcpu.current")
                max_kib = st.get("balloon.maximum")
                if vcpus is None or max_kib is None:  # the test driver's stats lack them
                    _, max_kib, _, vcpus, _ = dom.info()
                append(VMInfo(uuid, dom.name(), ps_pr[0], ps_pr[1], vcpus, max_kib // 1024, host))
            return out

        return self._call("list VMs", read, deadline)  # type: ignore[no-any-return]

    def get_vm(self, uuid: str, *, deadline: Deadline) -> VMInfo:
        return self._on_dom(uuid, f"get VM {uuid}", self._info_of, deadline)  # type: ignore

    def _read_infos(self, uuids: Sequence[str], deadline: Deadline) -> dict[str, VMInfo | None]:
        """The current info of these VMs (None for one that is gone): one get_vm for one VM,
        one listing for several."""
        if len(uuids) == 1:
            try:
                return {uuids[0]: self.get_vm(uuids[0], deadline=deadline)}
            except NotFound:
                return {uuids[0]: None}
        infos = {i.uuid: i for i in self.list_vms(deadline=deadline)}
        return {u: infos.get(u) for u in uuids}

    def wait_changes(
        self, known: Mapping[str, VMInfo], *, deadline: Deadline
    ) -> dict[str, VMInfo | None]:
        """Read the VMs once; if none differs from ``known`` (state or reason), block once on
        libvirt's events (any lifecycle event, or the connection changing), up to the
        deadline, and return {} (the core calls again and this reads again)."""
        hub = self._hub
        seen = hub.current()  # before the read: an event after it is not missed
        fresh = self._read_infos(list(known), deadline)
        changed = {
            u: i
            for u, i in fresh.items()
            if i is None or (i.state, i.reason) != (known[u].state, known[u].reason)
        }
        if not changed:
            # 10 s at most: an event lost while a connection was replaced is not waited for
            hub.wait_change(seen, min(deadline.remaining(), 10.0))
        return changed

    def get_config(self, uuid: str, *, deadline: Deadline) -> VMConfig:
        def read(c: Any) -> VMConfig:
            dom = self._dom(c, uuid)
            root = self._xml(dom)
            meta = X.parse_metadata(root)
            names = {d.path: d.name for d in meta.disks}
            disks = []
            for d in X.disks_of(root):
                size = 0
                if d.path:
                    try:
                        size = int(c.storageVolLookupByPath(d.path).info()[1]) // (1024 * 1024)
                    except Exception:
                        with contextlib.suppress(Exception):
                            size = int(dom.blockInfo(d.path)[0]) // (1024 * 1024)
                disks.append(
                    DiskInfo(
                        id=d.dev,
                        size_mib=size,
                        name=names.get(d.path or ""),
                        path=d.path,
                        bus=d.bus,
                    )
                )
            mem_kib = X.kib_of(root.find("memory")) or 0
            return VMConfig(
                uuid=dom.UUIDString(),
                name=dom.name(),
                vcpus=X.vcpus_of(root),
                memory_mib=mem_kib // 1024,
                disks=tuple(disks),
                nics=tuple(n for n, _ in X.nics_of(root)),
                resources=X.resources_of(root),
                guest_os=meta.guest_os,
                description=root.findtext("description") or "",
                firmware=X.firmware_of(root),
            )

        return self._call(f"get config of {uuid}", read, deadline)  # type: ignore[no-any-return]

    # -- create and delete ----------------------------------------------------------------

    def _pool_plan(self, c: Any, name: str | None) -> tuple[Any, str | None, str]:
        """(pool, volume format, target directory) of the pool new volumes go to."""
        pool = self._pool(c, name)
        root = X.parse(pool.XMLDesc(0))
        fmt = (
            None
            if self.is_test
            else ("qcow2" if root.get("type", "dir") in ("dir", "fs", "netfs") else None)
        )
        return pool, fmt, (root.findtext("target/path") or "").rstrip("/")

    def create_vm(self, spec: VMSpec, *, deadline: Deadline) -> VMInfo:
        """Define the domain first (under a UUID chosen here, listing the volumes it will
        own), then create its volumes: whatever is cut short, the domain names all of it, so
        ``left_behind`` can say ("vm", uuid) and ``delete`` removes it with its disks."""
        what = f"create VM {spec.name!r}"

        def prepare(c: Any) -> tuple[list[str], list[tuple[Any, str | None, str, Any]]]:
            networks = [self._network(c, n.network) for n in spec.nics]
            pools = []
            for d in spec.disks:  # unknown pools and sources fail before anything is made
                pool, fmt, target = self._pool_plan(c, d.pool)
                src = self._source_volume(c, d.source) if d.source else None
                pools.append((pool, fmt, target, src))
            return networks, pools

        networks, pools = self._prepared(what, prepare, deadline)
        used: list[str] = []
        owned: list[X.OwnedDisk] = []
        plans: list[X.DiskPlan] = []
        jobs: list[tuple[Any, str, Any]] = []
        for d, (pool, fmt, target, src) in zip(spec.disks, pools, strict=True):
            bus = X.resolve_bus(d.bus, hotplug=False)
            dev = X.free_target(bus, used)
            used.append(dev)
            vol_name = (
                f"{spec.name}-{dev}-{secrets.token_hex(3)}{'.qcow2' if fmt == 'qcow2' else '.img'}"
            )
            path = f"{target}/{vol_name}"
            owned.append(X.OwnedDisk(path, pool.name(), vol_name, d.name))
            plans.append(X.DiskPlan(dev, bus, path, fmt))
            jobs.append((pool, X.volume_xml(vol_name, d.size_mib, fmt), src))
        host_cpus = int(self._node[2])
        root = X.parse(
            X.domain_xml(
                spec,
                domain_type=self._domain_type(spec),
                disks=plans,
                networks=networks,
                max_vcpus=max(spec.vcpus, min(host_cpus, MAX_DEFAULT_VCPUS)),
                meta=X.Metadata(spec.guest_os, tuple(owned)),
                arch=self._arch,
                test=self.is_test,
            )
        )
        vm_uuid = self._make(what, root, owned, jobs, deadline)
        return VMInfo(
            uuid=vm_uuid,
            name=spec.name,
            state=S.STOPPED,
            reason=StateReason.UNKNOWN,  # what libvirt says of a domain just defined
            vcpus=spec.vcpus,
            memory_mib=spec.memory_mib,
            host=self._hostname,
        )

    def _prepared(self, what: str, fn: Callable[[Any], Any], deadline: Deadline) -> Any:
        """The reads before a create: a lost connection there changed nothing on the host, so
        the request was not sent (the core may reconnect and repeat it)."""
        try:
            return self._call(what, fn, deadline)
        except vmctl.ConnectionError as exc:
            exc.sent = False
            raise

    def _source_volume(self, c: Any, path: str) -> Any:
        try:
            return c.storageVolLookupByPath(path)
        except Exception as exc:
            if E.code_of(exc) == E.NO_STORAGE_VOL:
                raise NotFound(
                    f"no storage volume at {path!r} to copy from "
                    "(the source must be a volume of a libvirt pool)"
                ) from exc
            raise

    def _make(
        self,
        what: str,
        root: ET.Element,
        owned: list[X.OwnedDisk],
        jobs: list[tuple[Any, str, Any]],
        deadline: Deadline,
    ) -> str:
        """Define the domain ``root`` (given a new UUID), then create the volumes ``jobs``
        (pool, volume XML, source volume or None) at the paths ``owned`` predicts. On failure
        remove what was made, or name it in ``left_behind``. Returns the UUID."""
        vm_uuid = str(uuidlib.uuid4())
        for el in root.findall("uuid"):
            root.remove(el)
        X.sub(root, "uuid", vm_uuid)
        made: list[tuple[str, str]] = [("vm", vm_uuid)]
        xml = X.to_string(root)
        try:
            self._call(
                f"{what}: define the domain", lambda c: c.defineXML(xml), deadline, change=True
            )
        except (vmctl.ConnectionError, OperationTimeout) as exc:
            err = self._undo(what, exc, made, owned)
            if err is exc:
                raise
            raise err from exc
        # anything else: libvirt refused the definition (a taken name...): nothing was made
        moved: dict[str, str] = {}
        try:
            for (pool, vol_xml, src), disk in zip(jobs, owned, strict=True):
                made.append(("disk", disk.path))

                def create(
                    _c: Any, pool: Any = pool, vol_xml: str = vol_xml, src: Any = src
                ) -> str:
                    vol = (
                        pool.createXMLFrom(vol_xml, src, 0)
                        if src is not None
                        else pool.createXML(vol_xml, 0)
                    )
                    return str(vol.path())

                try:
                    path = self._call(
                        f"{what}: create volume {disk.volume}", create, deadline, change=True
                    )
                except (vmctl.ConnectionError, OperationTimeout):
                    raise
                except VmctlError:
                    made.pop()  # refused by libvirt: this volume was not made
                    raise
                if path != disk.path:
                    moved[disk.path] = path
            if moved:  # the pool put a volume elsewhere than predicted: say where
                for d in X.disks_of(root):
                    src_el = d.element.find("source")
                    if d.path in moved and src_el is not None:
                        src_el.set("file", moved[d.path])
                meta = X.parse_metadata(root)
                X.set_metadata(
                    root,
                    meta._replace(
                        disks=tuple(o._replace(path=moved.get(o.path, o.path)) for o in meta.disks)
                    ),
                )
                fixed = X.to_string(root)
                self._call(
                    f"{what}: record volume paths",
                    lambda c: c.defineXML(fixed),
                    deadline,
                    change=True,
                )
        except VmctlError as exc:
            made = [(k, moved.get(i, i)) for k, i in made]
            err = self._undo(what, exc, made, owned)
            if err is exc:
                raise
            raise err from exc
        return vm_uuid

    def _undo(
        self,
        what: str,
        exc: VmctlError,
        made: list[tuple[str, str]],
        owned: Sequence[X.OwnedDisk],
    ) -> VmctlError:
        """Remove what a failed ``what`` made (newest first), within one RPC timeout after
        its deadline. The error to raise: ``exc`` itself when all is removed (or nothing
        remains but disks after a refusal), else with ``left_behind`` set and said; an
        OutcomeUnknown when the VM may remain or the connection failed.

        A step that timed out may still be running in libvirtd: its call is waited for first
        (within the same budget). If it still runs, what it works on (the newest object) and
        the VM are left in place and named, so that the VM's deletion later removes what
        the late call makes; removing them now could race with it.
        """
        budget = Deadline.after(self._link.rpc_timeout)
        pools = {o.path: o.pool for o in owned}
        lv = require_libvirt()
        left: list[tuple[str, str]] = []
        keep: set[tuple[str, str]] = set()
        pending = pending_of(exc)
        if pending is not None and not pending.wait(budget.remaining()):
            keep = {made[-1], *(m for m in made if m[0] == "vm")} if made else set()

        def undefine(c: Any, uuid: str) -> None:
            try:
                dom = c.lookupByUUIDString(uuid)
            except Exception as exc2:
                if E.code_of(exc2) == E.NO_DOMAIN:
                    return
                raise
            with contextlib.suppress(Exception):
                if dom.isActive():
                    dom.destroy()
            dom.undefineFlags(lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)

        def remover(kind: str, ident: str) -> Callable[[Any], Any]:
            if kind == "vm":
                return lambda c: undefine(c, ident)
            return lambda c: self._delete_volume(c, ident, pools.get(ident))

        for kind, ident in reversed(made):
            if (kind, ident) in keep:
                left.append((kind, ident))
                continue
            step = remover(kind, ident)
            try:
                self._call(f"{what}: remove {kind} {ident}", step, budget, change=True)
            except VmctlError:
                left.append((kind, ident))
        if not left:
            return exc
        left.reverse()
        names = ", ".join(f"{k} {i}" for k, i in left)
        vm_left = any(k == "vm" for k, _ in left)
        msg = (
            f"{exc.message}; what it made could not be removed (libvirtd did not answer) and "
            f"may remain: {names}"
            + (" (deleting the VM removes it with its disks)" if vm_left else "")
        )
        if vm_left or isinstance(exc, vmctl.ConnectionError):
            err: VmctlError = OutcomeUnknown(msg, sent=None, vendor_code=exc.vendor_code)
        else:
            err = exc
            err.message = msg
            err.args = (msg,)
        err.left_behind = tuple(left)
        return err

    def delete_vm(self, uuid: str, *, deadline: Deadline) -> list[str]:
        lv = require_libvirt()

        def delete(c: Any) -> list[str]:
            dom = self._dom(c, uuid)
            name = dom.name()
            meta = X.parse_metadata(self._xml(dom, inactive=True))
            snaps = [s.getName() for s in dom.listAllSnapshots(0)]
            owned = {d.path: d for d in meta.disks}
            for d in self._snapshot_disks(dom):  # removed or reverted away since a snapshot
                owned.setdefault(d.path, d)
            done = [f"vm {name} ({uuid})"]
            if dom.hasManagedSaveImage(0):
                done.append("managed save image")
            done += [f"snapshot {s}" for s in snaps]
            flags = lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | lv.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            if not self.is_test:
                flags |= lv.VIR_DOMAIN_UNDEFINE_NVRAM | lv.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
            dom.undefineFlags(flags)
            for d in owned.values():
                if self._delete_volume(c, d.path, d.pool):
                    done.append(f"disk {d.path}")
            return done

        return self._call(f"delete VM {uuid}", delete, deadline, change=True)  # type: ignore[no-any-return]

    # -- power --------------------------------------------------------------------------

    def start(self, uuid: str, *, deadline: Deadline) -> None:
        def start(dom: Any) -> None:
            if dom.state()[0] == CRASHED:  # on_crash=preserve: still active, off first
                dom.destroy()
            dom.create()

        self._on_dom(uuid, f"start VM {uuid}", start, deadline, change=True)

    def power_off(self, uuid: str, *, deadline: Deadline) -> None:
        def off(dom: Any) -> None:
            if dom.isActive():
                dom.destroy()  # "domain is not running" (stopped meanwhile): InvalidState
            if dom.hasManagedSaveImage(0):
                dom.managedSaveRemove(0)

        self._on_dom(uuid, f"power off VM {uuid}", off, deadline, change=True)

    def _graceful_flags(self, dom: Any, verb: str) -> int:
        """How to ask the guest: the ACPI power button, and the guest agent when its channel
        is connected. InvalidState at once when the domain has neither (no ``<acpi/>``
        feature and no connected agent): nothing in the guest could hear the request."""
        lv = require_libvirt()
        if self.is_test:
            return 0
        root = self._xml(dom)
        flags = 0
        if root.find("features/acpi") is not None:
            flags |= lv.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN
        if X.has_agent_channel(root) and self._agent_up(dom, root):
            flags |= lv.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT
        if not flags:
            raise InvalidState(
                f"cannot {verb} VM {dom.name()!r} gracefully: it has no ACPI and no connected "
                "guest agent, so the guest cannot be asked; use power_off (or force_after)",
                current=S.RUNNING,
            )
        return int(flags)

    def _agent_up(self, dom: Any, root: ET.Element | None = None) -> bool:
        """Whether the guest agent's channel is connected (read from the live XML)."""
        if root is None:
            root = self._xml(dom)
        for ch in root.findall("devices/channel"):
            tgt = ch.find("target")
            if tgt is not None and tgt.get("name") == X.AGENT_CHANNEL:
                return tgt.get("state") == "connected"
        return False

    def shutdown(self, uuid: str, *, deadline: Deadline) -> None:
        self._on_dom(
            uuid,
            f"shut down VM {uuid}",
            lambda d: d.shutdownFlags(self._graceful_flags(d, "shut down")),
            deadline,
            change=True,
        )

    def reboot(self, uuid: str, *, deadline: Deadline) -> None:
        self._on_dom(
            uuid,
            f"reboot VM {uuid}",
            lambda d: d.reboot(self._graceful_flags(d, "reboot")),
            deadline,
            change=True,
        )

    def reset(self, uuid: str, *, deadline: Deadline) -> None:
        self._on_dom(uuid, f"reset VM {uuid}", lambda d: d.reset(0), deadline, change=True)

    def pause(self, uuid: str, *, deadline: Deadline) -> None:
        self._on_dom(uuid, f"pause VM {uuid}", lambda d: d.suspend(), deadline, change=True)

    def unpause(self, uuid: str, *, deadline: Deadline) -> None:
        self._on_dom(uuid, f"resume VM {uuid}", lambda d: d.resume(), deadline, change=True)

    def suspend(self, uuid: str, *, deadline: Deadline) -> None:
        self._on_dom(uuid, f"suspend VM {uuid}", lambda d: d.managedSave(0), deadline, change=True)

    def resume_suspended(self, uuid: str, *, deadline: Deadline) -> None:
        def resume(dom: Any) -> None:
            if dom.state()[0] == PMSUSPENDED:
                dom.pMWakeup(0)
            else:
                dom.create()  # restores the managed-save image

        self._on_dom(uuid, f"resume VM {uuid}", resume, deadline, change=True)

    # -- reconfiguration ------------------------------------------------------------------

    def set_vcpus(self, uuid: str, vcpus: int, *, live: bool, deadline: Deadline) -> None:
        lv = require_libvirt()

        def apply(dom: Any) -> None:
            if live:
                dom.setVcpusFlags(vcpus, AFFECT_LIVE | AFFECT_CONFIG)
                return
            maximum = dom.vcpusFlags(AFFECT_CONFIG | lv.VIR_DOMAIN_VCPU_MAXIMUM)
            if vcpus > maximum:
                dom.setVcpusFlags(vcpus, AFFECT_CONFIG | lv.VIR_DOMAIN_VCPU_MAXIMUM)
            dom.setVcpusFlags(vcpus, AFFECT_CONFIG)

        self._on_dom(uuid, f"set vCPUs of VM {uuid}", apply, deadline, change=True)

    def set_memory(self, uuid: str, memory_mib: int, *, live: bool, deadline: Deadline) -> None:
        if live:
            raise NotSupported(
                "changing the memory of a running domain is not offered by the kvm driver",
                capability=C.HOT_MEMORY,
            )
        kib = memory_mib * 1024

        def apply(dom: Any) -> None:
            current_max = int(dom.maxMemory())
            if kib > current_max:
                dom.setMaxMemory(kib)
                dom.setMemoryFlags(kib, AFFECT_CONFIG)
            else:
                dom.setMemoryFlags(kib, AFFECT_CONFIG)
                dom.setMaxMemory(kib)

        self._on_dom(uuid, f"set memory of VM {uuid}", apply, deadline, change=True)

    def set_resources(self, uuid: str, resources: Resources, *, deadline: Deadline) -> None:
        sched: dict[str, int] = {}
        if resources.cpu_shares is not None:
            sched["cpu_shares"] = resources.cpu_shares
        if resources.cpu_limit_percent is not None:
            sched["global_period"] = X.CPU_PERIOD_US
            sched["global_quota"] = resources.cpu_limit_percent * X.CPU_PERIOD_US // 100
        mem: dict[str, int] = {}
        if resources.memory_limit_mib is not None:
            mem["hard_limit"] = resources.memory_limit_mib * 1024

        def apply(dom: Any) -> None:
            # libvirt takes LIVE and CONFIG in separate calls for these tunables.
            scopes = ([AFFECT_LIVE] if dom.isActive() else []) + [AFFECT_CONFIG]
            for scope in scopes:
                if sched:
                    dom.setSchedulerParametersFlags(sched, scope)
                if mem:
                    dom.setMemoryParameters(mem, scope)

        self._on_dom(uuid, f"set resources of VM {uuid}", apply, deadline, change=True)

    # -- devices --------------------------------------------------------------------------

    def _attach(self, dom: Any, xml: str, *, live: bool) -> None:
        try:
            dom.attachDeviceFlags(xml, AFFECT_CONFIG | (AFFECT_LIVE if live else 0))
        except Exception as exc:
            if live or E.code_of(exc) != E.NO_SUPPORT:
                raise
            root = self._xml(dom, inactive=True)
            devs = root.find("devices")
            assert devs is not None
            devs.append(X.parse(xml))
            dom.connect().defineXML(X.to_string(root))

    def _detach(self, dom: Any, elem: ET.Element, *, live: bool) -> None:
        xml = X.to_string(elem)
        try:
            dom.detachDeviceFlags(xml, AFFECT_CONFIG | (AFFECT_LIVE if live else 0))
        except Exception as exc:
            if live or E.code_of(exc) != E.NO_SUPPORT:
                raise
            self._redefine_without(dom, elem)

    def _redefine_without(self, dom: Any, elem: ET.Element) -> None:
        root = self._xml(dom, inactive=True)
        devs = root.find("devices")
        assert devs is not None
        for child in list(devs):
            if child.tag == elem.tag and ET.tostring(child) == ET.tostring(elem):
                devs.remove(child)
        dom.connect().defineXML(X.to_string(root))

    def _set_meta(self, dom: Any, meta: X.Metadata, *, live: bool) -> None:
        lv = require_libvirt()
        flags = AFFECT_CONFIG | (AFFECT_LIVE if live else 0)
        dom.setMetadata(
            lv.VIR_DOMAIN_METADATA_ELEMENT, X.metadata_xml(meta), X.NS_PREFIX, X.NS, flags
        )

    def add_disk(self, uuid: str, disk: DiskSpec, *, live: bool, deadline: Deadline) -> DiskInfo:
        what = f"add disk to VM {uuid}"

        def plan(c: Any) -> tuple[str, str, str, Any, str | None, str, Any]:
            dom = self._dom(c, uuid)
            root = self._xml(dom, inactive=True)
            used = X.all_targets(root)
            if live:
                used += X.all_targets(self._xml(dom))
            bus = X.resolve_bus(disk.bus, hotplug=live and not self.is_test)
            dev = X.free_target(bus, used)
            pool, fmt, target = self._pool_plan(c, disk.pool)
            src = self._source_volume(c, disk.source) if disk.source else None
            return dom.name(), dev, bus, pool, fmt, target, src

        vm_name, dev, bus, pool, fmt, target, src = self._prepared(what, plan, deadline)
        vol_name = f"{vm_name}-{dev}-{secrets.token_hex(3)}{'.qcow2' if fmt == 'qcow2' else '.img'}"
        owned = X.OwnedDisk(f"{target}/{vol_name}", pool.name(), vol_name, disk.name)
        vol_xml = X.volume_xml(vol_name, disk.size_mib, fmt)

        def create(_c: Any) -> str:
            vol = (
                pool.createXMLFrom(vol_xml, src, 0)
                if src is not None
                else pool.createXML(vol_xml, 0)
            )
            return str(vol.path())

        made: list[tuple[str, str]] = [("disk", owned.path)]
        try:
            path = self._call(f"{what}: create volume {vol_name}", create, deadline, change=True)
        except (vmctl.ConnectionError, OperationTimeout) as exc:
            err = self._undo(what, exc, made, [owned])
            if err is exc:
                raise
            raise err from exc
        made = [("disk", path)]
        owned = owned._replace(path=path)

        def attach(c: Any) -> None:
            dom = self._dom(c, uuid)
            disk_plan = X.DiskPlan(dev, bus, path, fmt)
            self._attach(dom, X.to_string(X.disk_element(disk_plan, test=self.is_test)), live=live)
            meta = X.parse_metadata(self._xml(dom, inactive=True))
            self._set_meta(dom, meta._replace(disks=(*meta.disks, owned)), live=live)

        try:
            self._call(f"{what}: attach {path}", attach, deadline, change=True)
        except VmctlError as exc:
            err = self._undo(what, exc, made, [owned])
            if err is exc:
                raise
            raise err from exc
        return DiskInfo(id=dev, size_mib=disk.size_mib, name=disk.name, path=path, bus=bus)

    def _detach_live(
        self,
        uuid: str,
        what: str,
        find: Callable[[ET.Element], ET.Element | None],
        label: str,
        deadline: Deadline,
    ) -> None:
        """Detach a device from the running domain and its config, then block once on
        libvirt's DEVICE_REMOVED event for its alias until ``deadline`` (QEMU releases some
        devices only when the guest acknowledges the unplug)."""
        hub = self._hub

        def detach(c: Any) -> tuple[str, str | None]:
            dom = self._dom(c, uuid)
            elem = find(self._xml(dom))
            if elem is None:
                raise NotFound(f"VM {dom.name()!r} has no {label}")
            alias_el = elem.find("alias")
            alias = alias_el.get("name") if alias_el is not None else None
            if alias:
                hub.forget_removed(uuid, alias)
            self._detach(dom, elem, live=True)
            return dom.name(), alias

        seen = hub.current()
        vm_name, alias = self._call(what, detach, deadline, change=True)

        def present(c: Any) -> bool:
            return find(self._xml(self._dom(c, uuid))) is not None

        if not self._call(f"{what}: check", present, deadline):
            return
        link = self._link
        if alias:
            got = hub.wait_removed(uuid, alias, deadline.remaining(), lambda: link.dead)
            if got and not link.dead:
                return
        else:
            hub.wait_change(seen, deadline.remaining())
        # no event by the deadline (or the connection changed): look once more
        if self._call(f"{what}: check", present, Deadline.after(min(link.rpc_timeout, 2.0))):
            raise OperationTimeout(
                f"{what}: {label} of VM {vm_name!r} is still attached "
                f"{deadline.seconds:g} s after the unplug request (the guest did not release "
                "it); libvirtd may still remove it"
            )

    def remove_disk(self, uuid: str, disk_id: str, *, live: bool, deadline: Deadline) -> None:
        what = f"remove disk {disk_id} from VM {uuid}"

        def find(root: ET.Element) -> ET.Element | None:
            return next((d.element for d in X.disks_of(root) if d.dev == disk_id), None)

        def path_of(c: Any) -> str | None:
            dom = self._dom(c, uuid)
            root = self._xml(dom) if live else self._xml(dom, inactive=True)
            found = [d for d in X.disks_of(root) if d.dev == disk_id]
            if not found:
                raise NotFound(f"VM {dom.name()!r} has no disk {disk_id!r}")
            if not live:
                self._detach(dom, found[0].element, live=False)
            return found[0].path

        path = self._call(what, path_of, deadline, change=not live)
        if live:
            self._detach_live(uuid, what, find, f"disk {disk_id!r}", deadline)

        def forget(c: Any) -> None:
            dom = self._dom(c, uuid)
            meta = X.parse_metadata(self._xml(dom, inactive=True))
            mine = [d for d in meta.disks if d.path == path]
            if mine:
                self._set_meta(
                    dom,
                    meta._replace(disks=tuple(d for d in meta.disks if d.path != path)),
                    live=live,
                )
                self._delete_volume(c, path or "", mine[0].pool)

        self._call(f"{what}: delete its volume", forget, deadline, change=True)

    def add_nic(self, uuid: str, nic: NicSpec, *, live: bool, deadline: Deadline) -> NicInfo:
        def add(c: Any) -> NicInfo:
            dom = self._dom(c, uuid)
            network = self._network(c, nic.network)
            before = {n.mac for n, _ in X.nics_of(self._xml(dom, inactive=True))}
            elem = X.nic_element(network, nic.mac, nic.model, test=self.is_test)
            self._attach(dom, X.to_string(elem), live=live)
            after = X.nics_of(self._xml(dom, inactive=True))
            new = [n for n, _ in after if n.mac not in before]
            if not new:
                raise AlreadyExists(f"VM {dom.name()!r} already has a NIC with MAC {nic.mac}")
            return new[-1]

        return self._call(f"add NIC to VM {uuid}", add, deadline, change=True)  # type: ignore[no-any-return]

    def remove_nic(self, uuid: str, nic_id: str, *, live: bool, deadline: Deadline) -> None:
        key = nic_id.lower()
        what = f"remove NIC {nic_id} from VM {uuid}"

        def find(root: ET.Element) -> ET.Element | None:
            return next((e for n, e in X.nics_of(root) if n.id == key), None)

        if live:
            self._detach_live(uuid, what, find, f"NIC {nic_id!r}", deadline)
            return

        def remove(c: Any) -> None:
            dom = self._dom(c, uuid)
            elem = find(self._xml(dom, inactive=True))
            if elem is None:
                raise NotFound(f"VM {dom.name()!r} has no NIC {nic_id!r}")
            self._detach(dom, elem, live=False)

        self._call(what, remove, deadline, change=True)

    # -- snapshots ------------------------------------------------------------------------

    def _snap_info(self, snap: Any) -> SnapshotInfo:
        root = X.parse(snap.getXMLDesc(0))
        state = root.findtext("state") or "shutoff"
        created = dt.datetime.fromtimestamp(int(root.findtext("creationTime") or 0), dt.UTC)
        memory = root.find("memory")
        with_memory = state in ("running", "paused", "blocked") and (
            memory is None or memory.get("snapshot") != "no"
        )
        ps = (
            {"running": S.RUNNING, "blocked": S.RUNNING, "paused": S.PAUSED}.get(state, S.STOPPED)
            if with_memory
            else S.STOPPED
        )
        current = False
        with contextlib.suppress(Exception):
            current = bool(snap.isCurrent(0))
        name = root.findtext("name") or snap.getName()
        return SnapshotInfo(
            id=name,
            name=name,
            created=created,
            parent=root.findtext("parent/name"),
            with_memory=with_memory,
            state=ps,
            description=root.findtext("description") or "",
            current=current,
        )

    def create_snapshot(
        self, uuid: str, name: str, *, memory: bool, description: str, deadline: Deadline
    ) -> SnapshotInfo:
        def take(dom: Any) -> SnapshotInfo:
            if dom.isActive() and not memory:
                raise InvalidState(
                    f"VM {dom.name()!r} is running: libvirt's internal snapshots of a "
                    "running domain always include its memory; take it with memory=True, or "
                    "stop the VM for a disk-only snapshot",
                    current=S.RUNNING,
                    allowed={S.STOPPED},
                )
            try:
                dom.snapshotLookupByName(name, 0)
            except Exception as exc:
                if E.code_of(exc) != E.NO_DOMAIN_SNAPSHOT:
                    raise
            else:
                raise AlreadyExists(f"VM {dom.name()!r} already has a snapshot named {name!r}")
            self._forget_checkpoints(dom.connect(), dom)  # libvirt: no snapshot with checkpoints
            snap = dom.snapshotCreateXML(X.snapshot_xml(name, description), 0)
            return self._snap_info(snap)

        return self._on_dom(  # type: ignore[no-any-return]
            uuid, f"snapshot VM {uuid}", take, deadline, change=True
        )

    def list_snapshots(self, uuid: str, *, deadline: Deadline) -> list[SnapshotInfo]:
        snaps: list[SnapshotInfo] = self._on_dom(
            uuid,
            f"list snapshots of VM {uuid}",
            lambda d: [self._snap_info(s) for s in d.listAllSnapshots(0)],
            deadline,
        )
        return snaps

    def _snapshot(self, dom: Any, snapshot_id: str) -> Any:
        try:
            return dom.snapshotLookupByName(snapshot_id, 0)
        except Exception as exc:
            if E.code_of(exc) == E.NO_DOMAIN_SNAPSHOT:
                raise NotFound(
                    f"VM {dom.name()!r} has no snapshot {snapshot_id!r}",
                    vendor_code=str(E.NO_DOMAIN_SNAPSHOT),
                ) from exc
            raise

    def revert_snapshot(self, uuid: str, snapshot_id: str, *, deadline: Deadline) -> None:
        lv = require_libvirt()

        def revert(dom: Any) -> None:
            snap = self._snapshot(dom, snapshot_id)
            self._forget_checkpoints(dom.connect(), dom)  # the content jumps back: bitmaps lie
            owned = X.parse_metadata(self._xml(dom, inactive=True)).disks
            try:
                dom.revertToSnapshot(snap, 0)
            except Exception as exc:
                if E.code_of(exc) != E.SNAPSHOT_REVERT_RISKY:
                    raise
                dom.revertToSnapshot(snap, lv.VIR_DOMAIN_SNAPSHOT_REVERT_FORCE)
            # The definition (vmctl's metadata included) is the snapshot's again: a volume
            # vmctl made for a disk added since is named by nothing any more. Delete it,
            # unless another snapshot's definition still has it.
            kept = {d.path for d in X.parse_metadata(self._xml(dom, inactive=True)).disks}
            kept |= {d.path for d in self._snapshot_disks(dom)}
            for d in owned:
                if d.path not in kept:
                    self._delete_volume(dom.connect(), d.path, d.pool)

        self._on_dom(
            uuid, f"revert VM {uuid} to snapshot {snapshot_id!r}", revert, deadline, change=True
        )

    @staticmethod
    def _snapshot_disks(dom: Any) -> list[X.OwnedDisk]:
        """The volumes vmctl made that the snapshots' domain definitions name."""
        out: list[X.OwnedDisk] = []
        for snap in dom.listAllSnapshots(0):
            domain = X.parse(snap.getXMLDesc(0)).find("domain")
            if domain is not None:
                out += X.parse_metadata(domain).disks
        return out

    def delete_snapshot(self, uuid: str, snapshot_id: str, *, deadline: Deadline) -> None:
        self._on_dom(
            uuid,
            f"delete snapshot {snapshot_id!r} of VM {uuid}",
            lambda d: self._snapshot(d, snapshot_id).delete(0),
            deadline,
            change=True,
        )

    # -- clone and migrate ----------------------------------------------------------------

    def clone_vm(self, uuid: str, name: str, *, linked: bool, deadline: Deadline) -> VMInfo:
        if linked:
            raise NotSupported(
                "linked clones are not offered by the kvm driver", capability=C.LINKED_CLONE
            )
        what = f"clone VM {uuid} as {name!r}"

        def prepare(
            c: Any,
        ) -> tuple[ET.Element, list[X.OwnedDisk], list[tuple[Any, str, Any]], tuple[int, int]]:
            dom = self._dom(c, uuid)
            if dom.isActive():
                raise InvalidState(
                    f"cannot clone VM {dom.name()!r} while it runs",
                    current=S.RUNNING,
                    allowed={S.STOPPED},
                )
            try:
                c.lookupByName(name)
            except Exception as exc:
                if E.code_of(exc) != E.NO_DOMAIN:
                    raise
            else:
                raise AlreadyExists(f"a VM named {name!r} already exists on {self._link.uri}")
            root = self._xml(dom, inactive=True)
            _, max_kib, _, vcpus, _ = dom.info()
            meta = X.parse_metadata(root)
            name_el = root.find("name")
            assert name_el is not None
            name_el.text = name
            for tag in ("uuid", "title"):
                for el in root.findall(tag):
                    root.remove(el)
            for nic in root.findall("devices/interface"):
                for el in nic.findall("mac") + nic.findall("target"):
                    nic.remove(el)
            owned: list[X.OwnedDisk] = []
            jobs: list[tuple[Any, str, Any]] = []
            for d in X.disks_of(root):
                if not d.path:
                    continue
                try:
                    src = c.storageVolLookupByPath(d.path)
                except Exception as exc:
                    if E.code_of(exc) == E.NO_STORAGE_VOL:
                        raise NotSupported(
                            f"disk {d.dev} of VM {dom.name()!r} ({d.path}) is not a "
                            "volume of a libvirt storage pool; it cannot be copied",
                            capability=C.CLONE,
                        ) from exc
                    raise
                pool = src.storagePoolLookupByVolume()
                proot = X.parse(pool.XMLDesc(0))
                fmt = self._vol_format(pool)
                target = (proot.findtext("target/path") or "").rstrip("/")
                vol_name = (
                    f"{name}-{d.dev}-{secrets.token_hex(3)}{'.qcow2' if fmt == 'qcow2' else '.img'}"
                )
                size_mib = -(-int(src.info()[1]) // (1024 * 1024))
                old_name = next((o.name for o in meta.disks if o.path == d.path), None)
                path = f"{target}/{vol_name}"
                owned.append(X.OwnedDisk(path, pool.name(), vol_name, old_name))
                jobs.append((pool, X.volume_xml(vol_name, size_mib, fmt), src))
                src_el = d.element.find("source")
                assert src_el is not None
                src_el.attrib.clear()
                src_el.set("file", path)
            X.set_metadata(root, meta._replace(disks=tuple(owned)))
            return root, owned, jobs, (int(vcpus), int(max_kib) // 1024)

        root, owned, jobs, (vcpus, memory_mib) = self._prepared(what, prepare, deadline)
        vm_uuid = self._make(what, root, owned, jobs, deadline)
        return VMInfo(
            uuid=vm_uuid,
            name=name,
            state=S.STOPPED,
            reason=StateReason.UNKNOWN,
            vcpus=vcpus,
            memory_mib=memory_mib,
            host=self._hostname,
        )

    def migrate_vm(self, uuid: str, target: Driver, *, live: bool, deadline: Deadline) -> None:
        """``migrate3`` (client-managed, direct), waited for until ``deadline``; then the job
        is aborted (``abortJob``, within one RPC timeout) and OperationTimeout raised."""
        lv = require_libvirt()
        if not isinstance(target, KvmDriver):
            raise ValidationError("the target must be a kvm connection", field="target")
        if target.is_test or self.is_test:
            raise NotSupported(
                "libvirt's test driver cannot migrate",
                capability=C.MIGRATE_LIVE if live else C.MIGRATE_COLD,
            )
        what = f"migrate VM {uuid} to {target.libvirt_uri}"
        flags = lv.VIR_MIGRATE_PERSIST_DEST | lv.VIR_MIGRATE_UNDEFINE_SOURCE
        flags |= lv.VIR_MIGRATE_LIVE if live else lv.VIR_MIGRATE_OFFLINE
        dconn = target._link.connection(f"{what}: the target")
        shared = self._shared_storage
        if shared is None and live:
            shared = self._call(
                f"check the storage of VM {uuid} is shared with {target.libvirt_uri}",
                lambda c: self._storage_shared(c, self._dom(c, uuid), dconn),
                deadline,
            )
        if shared:
            # libvirt cannot tell a shared directory on a local file system from a private
            # one and calls the migration unsafe; it is shared (said, or proven above).
            flags |= lv.VIR_MIGRATE_UNSAFE

        def run(c: Any) -> None:
            dom = self._dom(c, uuid)
            xml = dom.XMLDesc(XML_SECURE | XML_MIGRATABLE | (0 if live else XML_INACTIVE))
            dom.migrate3(dconn, {lv.VIR_MIGRATE_PARAM_DEST_XML: xml}, flags)

        try:
            self._call(what, run, deadline, change=True)
        except OperationTimeout as exc:
            with contextlib.suppress(VmctlError):
                self._on_dom(
                    uuid,
                    f"{what}: abort",
                    lambda d: d.abortJob(),
                    Deadline.after(self._link.rpc_timeout),
                    change=True,
                )
            raise OperationTimeout(
                f"{what}: did not finish within {deadline.seconds:g} s; the migration job was "
                "aborted (if libvirtd answered)"
            ) from exc
        except ValidationError:
            raise
        except VmctlError as exc:
            cause = exc.__cause__
            if cause is not None and E.code_of(cause) == E.MIGRATE_UNSAFE:
                raise InvalidState(
                    f"{exc} (the target does not see the disks' files; if the image "
                    "directory is shared with the target, connect with ?shared_storage=yes)",
                    vendor_code=str(E.MIGRATE_UNSAFE),
                ) from cause
            raise

    def _storage_shared(self, c: Any, dom: Any, dconn: Any) -> bool:
        """Whether the target host sees this domain's disk files as the same files.

        For each directory holding a disk, a probe volume is created in the source pool
        there; the storage is shared when the target, after refreshing its pools on that
        directory, finds the probe at the same path. The probe is deleted again.
        """
        dirs = {str(Path(d.path).parent) for d in X.disks_of(self._xml(dom)) if d.path}
        for directory in sorted(dirs):
            pool = next(
                (
                    p
                    for p in c.listAllStoragePools(2)
                    if X.parse(p.XMLDesc(0)).findtext("target/path") == directory
                ),
                None,
            )
            if pool is None:
                return False
            probe = pool.createXML(
                X.volume_xml(f".vmctl-shared-probe-{secrets.token_hex(6)}", 1, None), 0
            )
            try:
                path = probe.path()
                for tpool in dconn.listAllStoragePools(2):
                    if X.parse(tpool.XMLDesc(0)).findtext("target/path") == directory:
                        tpool.refresh(0)
                try:
                    dconn.storageVolLookupByPath(path)
                except Exception as exc:
                    if E.code_of(exc) == E.NO_STORAGE_VOL:
                        return False
                    raise
            finally:
                probe.delete(0)
                for tpool in dconn.listAllStoragePools(2):
                    if X.parse(tpool.XMLDesc(0)).findtext("target/path") == directory:
                        with contextlib.suppress(Exception):
                            tpool.refresh(0)
        return True

    # -- observation ----------------------------------------------------------------------

    def subscribe(self, *, deadline: Deadline) -> EventSource:
        sub = self._hub.subscribe()  # first: nothing after this call is missed
        try:
            self._hub.seed({i.uuid: i.state for i in self.list_vms(deadline=deadline)})
        except BaseException:
            sub.close()
            raise
        return sub

    def get_stats(self, uuids: Sequence[str], *, deadline: Deadline) -> dict[str, VMStats]:
        lv = require_libvirt()
        kinds = lv.VIR_DOMAIN_STATS_STATE
        if not self.is_test:
            kinds |= (
                lv.VIR_DOMAIN_STATS_CPU_TOTAL
                | lv.VIR_DOMAIN_STATS_BALLOON
                | lv.VIR_DOMAIN_STATS_INTERFACE
                | lv.VIR_DOMAIN_STATS_BLOCK
            )
        wanted = {u.lower() for u in uuids}

        def read(c: Any) -> dict[str, VMStats]:
            now = dt.datetime.now(dt.UTC)
            out: dict[str, VMStats] = {}
            for dom, st in c.getAllDomainStats(kinds, 0 if self.is_test else _NOWAIT):
                uuid = dom.UUIDString()
                if uuid not in wanted:
                    continue
                out[uuid] = _stats(uuid, now, st)
            missing = wanted - set(out)
            if missing:
                raise NotFound(f"no VM with UUID {', '.join(sorted(missing))} on {self._link.uri}")
            return out

        return self._call("stats", read, deadline)  # type: ignore[no-any-return]

    def guest_info(self, uuid: str, *, deadline: Deadline) -> GuestInfo:
        lv = require_libvirt()

        def read(dom: Any) -> GuestInfo:
            if not dom.isActive() or dom.state()[0] != 1:
                return GuestInfo(agent=AgentState.NOT_RUNNING)
            ips: list[str] = []
            agent = AgentState.NOT_RUNNING
            hostname = os_name = None
            if self._agent_up(dom):
                try:
                    ifaces = dom.interfaceAddresses(lv.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, 0)
                    agent = AgentState.RUNNING
                    ips += _addresses(ifaces)
                except Exception as exc:
                    if E.code_of(exc) not in E.INVALID_STATE | E.NOT_SUPPORTED:
                        raise
                if agent is AgentState.RUNNING:
                    with contextlib.suppress(Exception):
                        hostname = dom.hostname(lv.VIR_DOMAIN_GET_HOSTNAME_AGENT)
                    with contextlib.suppress(Exception):
                        info = dom.guestInfo(lv.VIR_DOMAIN_GUEST_INFO_OS, 0)
                        os_name = info.get("os.pretty-name") or info.get("os.name")
            try:
                leases = dom.interfaceAddresses(lv.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0)
                ips += [ip for ip in _addresses(leases) if ip not in ips]
            except Exception as exc:
                if E.code_of(exc) not in E.INVALID_STATE | E.NOT_SUPPORTED:
                    raise
            return GuestInfo(
                ip_addresses=tuple(ips), agent=agent, hostname=hostname, os_name=os_name
            )

        return self._on_dom(uuid, f"guest info of VM {uuid}", read, deadline)  # type: ignore


#: (state, reason, managed save) -> (PowerState, StateReason), filled as seen
_STATE_MEMO: dict[tuple[int, int, bool], tuple[PowerState, StateReason]] = {}

_LINK_LOCAL = re.compile(r"^(127\.|169\.254\.|::1$|fe80:)", re.I)


def _addresses(ifaces: dict[str, Any]) -> list[str]:
    out = []
    for name, data in (ifaces or {}).items():
        if name == "lo":
            continue
        for a in data.get("addrs") or []:
            addr = a.get("addr")
            if addr and not _LINK_LOCAL.match(addr) and addr not in out:
                out.append(addr)
    return out


def _stats(uuid: str, now: dt.datetime, st: dict[str, Any]) -> VMStats:
    def total(prefix: str, count_key: str, field: str) -> int | None:
        n = st.get(count_key)
        if n is None:
            return None
        return sum(int(st.get(f"{prefix}.{i}.{field}", 0)) for i in range(int(n)))

    mem = None
    if "balloon.rss" in st:
        mem = int(st["balloon.rss"]) // 1024
    elif "balloon.current" in st and "balloon.unused" in st:
        mem = (int(st["balloon.current"]) - int(st["balloon.unused"])) // 1024
    cpu = st.get("cpu.time")
    return VMStats(
        uuid=uuid,
        timestamp=now,
        cpu_time_ns=int(cpu) if cpu is not None else None,
        memory_used_mib=mem,
        disk_read_bytes=total("block", "block.count", "rd.bytes"),
        disk_write_bytes=total("block", "block.count", "wr.bytes"),
        net_rx_bytes=total("net", "net.count", "rx.bytes"),
        net_tx_bytes=total("net", "net.count", "tx.bytes"),
    )
