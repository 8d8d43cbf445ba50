"""The Xen driver: vmctl's SPI over XenAPI (XenServer, XCP-ng, any xapi pool).

URIs: ``xen://[user@]host[:port][?host=NAME]`` (HTTPS; ``xen+http://`` for plain HTTP when
asked, ``xen+https://`` is the default spelled out). The host is the pool master. Without
``?host=`` the connection manages the whole pool; with it, one member: its inventory is the
VMs resident on it or, when not running, with affinity to it; VMs created there get that
affinity and start there. Two such connections are what ``vm.migrate(target)`` moves
between (``VM.pool_migrate`` live, an affinity change cold).

Every XenAPI call is one XML-RPC round trip over our own transport, bounded by the
request's deadline (``deadline.bound(rpc_timeout)``). Long operations are ``Async.*`` tasks
handed to the core as ``Task``; the core waits with ``wait_tasks`` (one ``event.from`` on
the tasks) and ``wait_changes`` (one ``event.from`` on the VMs). The driver has no wait or
retry loop of its own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn

from vmctl import (
    URI,
    AgentState,
    AlreadyExists,
    Capability,
    ConnectionError,
    ConnectParams,
    DiskInfo,
    DiskSpec,
    DriverError,
    Firmware,
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
from ._backup import XenBackup
from ._errors import power_state
from ._hosts import XenHosts
from ._placement import XenPlacement
from ._records import as_int as _int
from ._records import is_vm as _is_vm
from ._recovery import XenRecovery
from ._session import EVENT_SLICE_S, NULL, Connection, task_result
from ._storage import XenStorage
from ._transport import NOT_SENT, parse_thumbprint, tls_context

log = logging.getLogger("vmctl.xen")

MiB = 1024 * 1024
S = PowerState
KNOWN_OPTIONS = {"host", "rpc_timeout"}
DEFAULT_RPC_TIMEOUT = 60.0
OWNER_KEY = "owner"  # VBD other_config key xapi and XenCenter use for disks a VM owns
GUEST_OS_KEY = "vmctl-guest-os"
#: VIF other_config: the network as the user named it (name_label, UUID or bridge).
NETWORK_KEY = "vmctl-network"
#: VM and VDI other_config: the token of a create_vm not known to have finished. A VM that
#: still carries it when deleted also takes the VDIs carrying the same token (made for it by
#: a create the host did not confirm).
CREATING_KEY = "vmctl-creating"
#: Xen credit scheduler weight range (VCPUs_params:weight; xen sched_credit.c).
WEIGHT_MIN, WEIGHT_MAX = 1, 65535

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
    Capability.BACKUP_QUIESCE: "xapi removed VM.snapshot_with_quiesce (VSS) in release "
    "quebec; no other quiesced snapshot exists",
}

#: How a task that ended is told apart (xapi task_status_type).
_RUNNING_TASK = ("pending", "cancelling", None)


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


def _uncertain(exc: BaseException) -> bool:
    """Whether the failed call may have been carried out by the host (or still may be): a
    timeout, or a connection lost after the request was sent."""
    if getattr(exc, NOT_SENT, False):
        return False
    if isinstance(exc, OperationTimeout):
        return exc.vendor_code != "TASK_CANCELLED"
    return isinstance(exc, ConnectionError) and exc.sent is not False


class _TaskRef:
    """A Task's handle: the xapi task ref and the event.from token it was last seen at."""

    __slots__ = ("ref", "token")

    def __init__(self, ref: str) -> None:
        self.ref = ref
        self.token = ""


class _Made:
    """What a create has made so far, for undoing it or naming it in ``left_behind``."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.vm: str | None = None  # ref
        self.vm_id: str = ""  # UUID, or the name until it is known
        self.vdis: list[tuple[str, str]] = []  # (ref, uuid)
        self.pending = ""  # the call in flight when it failed

    def left(self) -> tuple[tuple[str, str], ...]:
        out = [("vm", self.vm_id)] if self.vm_id else []
        return tuple(out + [("disk", f"vdi:{u}" if u else f"ref:{r}") for r, u in self.vdis])


def _boot_params(spec: VMSpec, iso: bool) -> dict[str, str]:
    """An HVM guest's HVM-boot-params: the boot order and, for UEFI, ``firmware=uefi``
    (xapi's key; BIOS is its default)."""
    params = {"order": "dc" if iso else "cd"}
    if spec.firmware is Firmware.UEFI:
        params["firmware"] = "uefi"
    return params


def _firmware_of(rec: dict[str, Any]) -> Firmware | None:
    """An HVM guest's firmware (HVM-boot-params:firmware, BIOS when absent); None for a PV
    guest (a kernel booted directly, no firmware)."""
    if not rec.get("HVM_boot_policy"):
        return None
    value = str(rec.get("HVM_boot_params", {}).get("firmware", "bios")).lower()
    return Firmware.UEFI if value == "uefi" else Firmware.BIOS


class XenDriver(
    Driver,
    BulkPower,
    TaskWaiter,
    ChangeWaiter,
    Reconnectable,
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
    XenBackup,
    XenStorage,
    XenHosts,
    XenRecovery,
    XenPlacement,
):
    """vmctl over XenAPI. See the module docstring and docs/xen.md."""

    name = "xen"

    def __init__(self, conn: Connection, uri: URI) -> None:
        self._c = conn
        self.uri = uri
        self._lock = threading.Lock()
        self._vm_refs: dict[str, str] = {}
        self._hosts: dict[str, dict[str, Any]] = {}
        self._networks: dict[str, dict[str, Any]] = {}
        self._tokens: dict[frozenset[str], str] = {}  # wait_changes: event.from tokens
        self.pool_ref = ""
        self.pool_uuid = ""
        self.scope: str | None = None  # host ref of ?host=NAME
        self.scope_name: str | None = None
        self._default_sr = NULL

    def __repr__(self) -> str:
        return f"<XenDriver {self.uri}>"

    # -- connection -----------------------------------------------------------------------

    @classmethod
    def open(cls, params: ConnectParams, *, deadline: Deadline) -> XenDriver:
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
            rpc_timeout = float(params.options.get("rpc_timeout", DEFAULT_RPC_TIMEOUT))
            if not 0 < rpc_timeout < float("inf"):
                raise ValueError
        except ValueError:
            raise ValidationError(
                "rpc_timeout must be a positive number of seconds", field="rpc_timeout"
            ) from None
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
            cls._login(conn, url, deadline)
        except VmctlError:
            conn.logout(deadline)
            raise
        except Exception as exc:
            conn.logout(deadline)
            err = _errors.from_exception(f"connect to {uri}", exc)
            if isinstance(err, OperationTimeout):
                err = ConnectionError(f"connect to {uri}: {err.message}", sent=None)
            raise err from exc
        driver = cls(conn, uri)
        try:
            driver._load_pool(params.options.get("host"), deadline)
        except BaseException:
            driver.close()
            raise
        return driver

    @classmethod
    def kit_options(cls, uri: URI) -> Mapping[str, str]:
        # xenbr0 is the bridge of a XenServer/XCP-ng host's first NIC (and xapisim's).
        return {"network": "xenbr0"}

    def kit_defaults(self, *, deadline: Deadline) -> Mapping[str, str]:
        """A network (its bridge) and an SR the kit's VMs can use (see _kitdefaults)."""
        from ._kitdefaults import kit_defaults

        return kit_defaults(self, deadline)

    @staticmethod
    def _login(conn: Connection, url: str, deadline: Deadline) -> None:
        try:
            conn.login(deadline)
        except Exception as exc:
            desc = _errors.details(exc)
            if desc[:1] == ["HOST_IS_SLAVE"] and len(desc) > 1:
                # A pool member answers with its master's address: follow it once.
                scheme, _, rest = url.partition("://")
                port = rest.rsplit(":", 1)[1]
                master = f"[{desc[1]}]" if ":" in desc[1] else desc[1]
                log.info("%s is a pool member; its master is %s", url, desc[1])
                conn.retarget(f"{scheme}://{master}:{port}")
                conn.login(deadline)
                return
            raise

    def reconnect(self, *, deadline: Deadline) -> None:
        """A new session (the core calls this after a ConnectionError: a lost connection,
        or SESSION_INVALID when xapi expired the session)."""
        with self._mapped(f"log in to {self.uri} again"):
            self._c.relogin(deadline)

    def _load_pool(self, host_name: str | None, deadline: Deadline) -> None:
        with self._mapped("read the pool"):
            pools = self._c.call("pool.get_all_records", deadline=deadline)
            self.pool_ref, pool = next(iter(pools.items()))
            self.pool_uuid = str(pool["uuid"])
            self._default_sr = str(pool.get("default_SR", NULL))
            self._refresh_hosts(deadline)
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

    def _refresh_hosts(self, deadline: Deadline) -> None:
        hosts = self._c.call("host.get_all_records", deadline=deadline)
        with self._lock:
            self._hosts = hosts

    def close(self) -> None:
        self._c.logout()

    def narrow_capabilities(self, offered: frozenset[Capability]) -> frozenset[Capability]:
        caps = set(offered) - set(ABSENT)
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

    @contextlib.contextmanager
    def _unchanged(self) -> Iterator[None]:
        """The reads a request makes before it changes anything: a connection lost there
        left nothing done, so the request is safe to repeat (``sent=False`` for it, though
        the read itself may have reached the host)."""
        try:
            yield
        except OutcomeUnknown:
            raise
        except ConnectionError as exc:
            if exc.sent is False:
                raise
            err = ConnectionError(
                f"{exc.message} (before anything was changed)",
                sent=False,
                vendor_code=exc.vendor_code,
            )
            raise err from exc

    def _call(self, what: str, method: str, *args: Any, deadline: Deadline) -> Any:
        with self._mapped(what):
            return self._c.call(method, *args, deadline=deadline)

    def _task(self, what: str, method: str, *args: Any, deadline: Deadline) -> Task:
        """``Async.<method>(*args)``: the xapi task, handed to the core to wait on."""
        ref = str(self._call(what, f"Async.{method}", *args, deadline=deadline))
        return Task(id=ref, description=f"{what} ({method})", handle=_TaskRef(ref))

    def _run(self, what: str, method: str, *args: Any, deadline: Deadline) -> Any:
        """``Async.<method>(*args)`` awaited with the core's loop; the task's result."""
        task = self._task(what, method, *args, deadline=deadline)
        return finish_task(self, task, deadline=deadline, what=what).result

    def _ref(self, uuid: str, deadline: Deadline) -> str:
        with self._lock:
            ref = self._vm_refs.get(uuid)
        if ref is None:
            try:
                ref = str(self._c.call("VM.get_by_uuid", uuid, deadline=deadline))
            except Exception as exc:
                if _errors.details(exc)[:1] in (["UUID_INVALID"], ["HANDLE_INVALID"]):
                    raise NotFound(
                        f"no VM with UUID {uuid} in the pool at {self.uri.host}",
                        vendor_code=_errors.details(exc)[0],
                    ) from exc
                if isinstance(exc, VmctlError):
                    raise
                raise _errors.from_exception(f"find VM {uuid}", exc) from exc
            with self._lock:
                self._vm_refs[uuid] = ref
        return ref

    def _vm(self, uuid: str, deadline: Deadline) -> tuple[str, dict[str, Any]]:
        """The VM's ref and record; NotFound for templates, snapshots and dom0."""
        ref = self._ref(uuid, deadline)
        try:
            rec = self._c.call("VM.get_record", ref, deadline=deadline)
        except Exception as exc:
            if _errors.details(exc)[:1] == ["HANDLE_INVALID"]:
                with self._lock:
                    self._vm_refs.pop(uuid, None)
                raise NotFound(
                    f"no VM with UUID {uuid} in the pool at {self.uri.host}",
                    vendor_code="HANDLE_INVALID",
                ) from exc
            if isinstance(exc, VmctlError):
                raise
            raise _errors.from_exception(f"get VM {uuid}", exc) from exc
        if not _is_vm(rec):
            raise NotFound(f"{uuid} is a template, snapshot or control domain, not a VM")
        return ref, rec

    def _host_name(self, ref: str, deadline: Deadline) -> str | None:
        if ref in ("", NULL):
            return None
        rec = self._hosts.get(ref)
        if rec is None:
            with self._mapped("read the pool's hosts"):
                self._refresh_hosts(deadline)
            rec = self._hosts.get(ref)
        return str(rec["name_label"]) if rec else None

    def _in_scope(self, rec: dict[str, Any]) -> bool:
        if self.scope is None:
            return True
        resident = rec.get("resident_on", NULL)
        if resident != NULL:
            return bool(resident == self.scope)
        return bool(rec.get("affinity") == self.scope)

    def _info(self, rec: dict[str, Any], deadline: Deadline) -> VMInfo:
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
            host=self._host_name(str(host), deadline),
        )

    def _networks_by(self, deadline: Deadline, refresh: bool = False) -> dict[str, dict[str, Any]]:
        if refresh or not self._networks:
            nets = self._call("read the networks", "network.get_all_records", deadline=deadline)
            with self._lock:
                self._networks = nets
        return self._networks

    def _network(self, name: str, deadline: Deadline) -> tuple[str, dict[str, Any]]:
        for refresh in (False, True):
            for ref, rec in self._networks_by(deadline, refresh).items():
                if name in (rec.get("name_label"), rec.get("uuid"), rec.get("bridge")):
                    return ref, rec
        names = sorted(
            f"{r.get('name_label')} (bridge {r.get('bridge')})" for r in self._networks.values()
        )
        raise NotFound(
            f"no network {name!r} in the pool at {self.uri.host} (name, UUID or "
            f"bridge; networks: {', '.join(names)})"
        )

    def _sr(self, name: str | None, deadline: Deadline) -> str:
        if name is None:
            if self._default_sr in ("", NULL):
                raise NotFound("the pool has no default SR; give the disk a pool (SR name)")
            return self._default_sr
        srs = self._call("read the SRs", "SR.get_all_records", deadline=deadline)
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

    # -- the primitives the core waits with -----------------------------------------------

    def wait_tasks(self, tasks: Sequence[Task], *, deadline: Deadline) -> list[TaskOutcome]:
        """One event.from on the tasks (``task/<ref>``): a first call with no token reads
        their records; then one long poll from the token until one of them changes."""
        handles: dict[str, Task] = {}
        for t in tasks:
            assert isinstance(t.handle, _TaskRef)
            handles[t.handle.ref] = t
        classes = [f"task/{ref}" for ref in handles]
        tokens = {t.handle.token for t in tasks}
        what = f"wait for {', '.join(t.description for t in tasks)}"
        try:
            with self._mapped(what):
                if len(tokens) != 1 or "" in tokens:
                    resp = self._c.event_from(classes, "", 0.0, deadline)
                    ended = self._ended(resp, handles, what, first=True, deadline=deadline)
                    if ended:
                        return ended
                    tokens = {str(resp["token"])}
                resp = self._c.event_from(classes, tokens.pop(), EVENT_SLICE_S, deadline)
                return self._ended(resp, handles, what, first=False, deadline=deadline)
        except OperationTimeout as exc:
            if deadline.expired():
                return []
            running = tuple(f"{t.description} (task {t.id})" for t in tasks)
            raise OperationTimeout(
                f"{exc.message}; still running on the host: {', '.join(running)}",
                running=running,
            ) from exc

    def _ended(
        self,
        resp: dict[str, Any],
        handles: dict[str, Task],
        what: str,
        *,
        first: bool,
        deadline: Deadline,
    ) -> list[TaskOutcome]:
        token = str(resp["token"])
        for t in handles.values():
            t.handle.token = token
        out: dict[str, TaskOutcome] = {}
        seen = set()
        for ev in resp.get("events", []):
            ref = str(ev.get("ref"))
            task = handles.get(ref)
            if task is None or ref in out:
                continue
            seen.add(ref)
            if ev.get("operation") == "del":
                out[ref] = TaskOutcome(
                    task, error=VmctlError(f"{what}: the XenAPI task {ref} was destroyed")
                )
                continue
            rec = ev.get("snapshot") or {}
            status = rec.get("status")
            if status in _RUNNING_TASK:
                continue
            if status == "success":
                out[ref] = TaskOutcome(task, result=task_result(str(rec.get("result", ""))))
            else:
                desc = [
                    str(x) for x in rec.get("error_info") or ["TASK_" + str(status).upper(), ref]
                ]
                err = _errors.from_failure(task.description, desc)
                import XenAPI

                err.__cause__ = XenAPI.Failure(desc)
                out[ref] = TaskOutcome(task, error=err)
        if first:
            for ref, task in handles.items():
                if ref not in seen:  # the first call lists every object that exists
                    out[ref] = TaskOutcome(
                        task, error=VmctlError(f"{what}: the XenAPI task {ref} does not exist")
                    )
        for ref in out:  # an ended task is ours to destroy (xapi keeps it otherwise)
            if deadline.expired():
                break
            try:
                self._c.call("task.destroy", ref, deadline=deadline)
            except Exception as exc:
                log.debug("destroying task %s failed: %s", ref, exc)
        return list(out.values())

    def wait_changes(
        self, known: Mapping[str, VMInfo], *, deadline: Deadline
    ) -> dict[str, VMInfo | None]:
        """One event.from on the VMs (``VM/<ref>``) until one's state or reason differs
        from ``known``: a first call with no token reads their records, then one long poll
        from the token (kept per set of VMs for the next call)."""
        refs: dict[str, str] = {}
        for uuid in known:
            try:
                refs[self._ref(uuid, deadline)] = uuid
            except NotFound:
                return {uuid: None}
        key = frozenset(refs)
        classes = [f"VM/{ref}" for ref in refs]
        with self._lock:
            token = self._tokens.get(key, "")
        try:
            with self._mapped(f"wait for VM {', '.join(i.name for i in known.values())}"):
                if not token:
                    resp = self._c.event_from(classes, "", 0.0, deadline)
                    token = str(resp["token"])
                    changed = self._changed(resp, refs, known, deadline, first=True)
                    if changed:
                        self._keep_token(key, token)
                        return changed
                resp = self._c.event_from(classes, token, EVENT_SLICE_S, deadline)
                self._keep_token(key, str(resp["token"]))
                return self._changed(resp, refs, known, deadline, first=False)
        except OperationTimeout:
            if deadline.expired():
                return {}
            raise

    def _keep_token(self, key: frozenset[str], token: str) -> None:
        with self._lock:
            self._tokens.pop(key, None)
            self._tokens[key] = token
            while len(self._tokens) > 256:
                self._tokens.pop(next(iter(self._tokens)))

    def _changed(
        self,
        resp: dict[str, Any],
        refs: dict[str, str],
        known: Mapping[str, VMInfo],
        deadline: Deadline,
        *,
        first: bool,
    ) -> dict[str, VMInfo | None]:
        out: dict[str, VMInfo | None] = {}
        seen = set()
        for ev in resp.get("events", []):
            ref = str(ev.get("ref"))
            uuid = refs.get(ref)
            if uuid is None:
                continue
            seen.add(ref)
            if ev.get("operation") == "del":
                out[uuid] = None
                with self._lock:
                    self._vm_refs.pop(uuid, None)
                continue
            info = self._info(ev["snapshot"], deadline)
            was = known[uuid]
            if (info.state, info.reason) != (was.state, was.reason):
                out[uuid] = info
        if first:
            for ref, uuid in refs.items():
                if ref not in seen:  # the first call lists every object that exists
                    out[uuid] = None
                    with self._lock:
                        self._vm_refs.pop(uuid, None)
        return out

    # -- mandatory ------------------------------------------------------------------------

    def host_info(self, *, deadline: Deadline) -> HostInfo:
        with self._mapped("read host info"):
            self._refresh_hosts(deadline)
            metrics = self._c.call("host_metrics.get_all_records", deadline=deadline)
            pools = self._c.call("pool.get_all_records", deadline=deadline)
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
            vm_count=len(self.list_vms(deadline=deadline)),
        )

    def list_vms(self, *, deadline: Deadline) -> list[VMInfo]:
        recs = self._call("list VMs", "VM.get_all_records", deadline=deadline)
        out = []
        refs = {}
        for ref, rec in recs.items():
            if _is_vm(rec) and self._in_scope(rec):
                out.append(self._info(rec, deadline))
                refs[str(rec["uuid"])] = ref
        with self._lock:
            self._vm_refs.update(refs)
        return out

    def get_vm(self, uuid: str, *, deadline: Deadline) -> VMInfo:
        return self._info(self._vm(uuid, deadline)[1], deadline)

    def _devices(
        self, rec: dict[str, Any], deadline: Deadline
    ) -> tuple[
        list[tuple[str, dict[str, Any], dict[str, Any] | None]], list[tuple[str, dict[str, Any]]]
    ]:
        """(VBD ref, VBD, VDI or None) for the VM's disks and (VIF ref, VIF) for its NICs."""
        disks = []
        nics = []
        with self._mapped(f"read the devices of VM {rec.get('name_label')!r}"):
            for vbd in rec.get("VBDs", []):
                b = self._c.call("VBD.get_record", vbd, deadline=deadline)
                if b.get("type") != "Disk":
                    continue
                vdi = (
                    None
                    if b.get("VDI") in ("", NULL)
                    else self._c.call("VDI.get_record", b["VDI"], deadline=deadline)
                )
                disks.append((str(vbd), b, vdi))
            for vif in rec.get("VIFs", []):
                nics.append((str(vif), self._c.call("VIF.get_record", vif, deadline=deadline)))
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

    def _nic_info(self, v: dict[str, Any], deadline: Deadline) -> NicInfo:
        net = self._networks_by(deadline).get(v.get("network", ""))
        if net is None:
            net = self._networks_by(deadline, refresh=True).get(v.get("network", ""), {})
        # The network as the user named it when that name still means this network (so
        # that config() gives back what create_vm/add_nic got), else its name_label.
        given = str(v.get("other_config", {}).get(NETWORK_KEY, ""))
        names = (net.get("name_label"), net.get("uuid"), net.get("bridge"))
        return NicInfo(
            id=_nic_id(str(v.get("device"))),
            network=given if given and given in names else str(net.get("name_label", "")),
            mac=str(v.get("MAC", "")).lower(),
        )

    def get_config(self, uuid: str, *, deadline: Deadline) -> VMConfig:
        _ref, rec = self._vm(uuid, deadline)
        disks, nics = self._devices(rec, deadline)
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
            nics=tuple(self._nic_info(v, deadline) for _r, v in nics),
            resources=res,
            guest_os=guest,
            description=str(rec.get("name_description", "")),
            firmware=_firmware_of(rec),
        )

    def _name_taken(self, name: str, deadline: Deadline) -> bool:
        what = f"look up VM name {name!r}"
        refs = self._call(what, "VM.get_by_name_label", name, deadline=deadline)
        for ref in refs:
            rec = self._call(what, "VM.get_record", ref, deadline=deadline)
            if _is_vm(rec):
                return True
        return False

    def create_vm(self, spec: VMSpec, *, deadline: Deadline) -> VMInfo:
        res = spec.resources
        if res.cpu_shares is not None:
            self._check_weight(res.cpu_shares)
        if any(d.source for d in spec.disks):
            raise ValidationError(
                "the xen driver creates blank disks only (DiskSpec.source is not supported)",
                field="disks",
            )
        if spec.firmware is not None and spec.boot is not None and spec.boot.kernel:
            raise ValidationError(
                "a Xen guest booted from a kernel (PV) has no firmware: leave firmware None",
                field="firmware",
            )
        # Resolve everything that can be missing before anything is created.
        with self._unchanged():
            nets = [self._network(n.network, deadline) for n in spec.nics]
            srs = [self._sr(d.pool, deadline) for d in spec.disks]
            iso = self._iso(spec.boot.iso, deadline) if spec.boot and spec.boot.iso else None
            taken = self._name_taken(spec.name, deadline)
        if taken:
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
        token = secrets.token_hex(8)
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
            "HVM_boot_params": {} if kernel else _boot_params(spec, bool(iso)),
            "platform": {} if kernel else platform,
            "PCI_bus": "",
            "other_config": {GUEST_OS_KEY: spec.guest_os.value, CREATING_KEY: token},
            "recommendations": "",
        }
        what = f"create VM {spec.name!r}"
        made = _Made(what)
        made.vm_id = spec.name  # until its UUID is known (hv.vm() takes either)
        try:
            made.pending = "VM.create"
            vm = made.vm = str(self._call(what, "VM.create", record, deadline=deadline))
            made.pending = "VM.get_uuid"
            made.vm_id = str(self._call(what, "VM.get_uuid", vm, deadline=deadline))
            for i, (disk, sr) in enumerate(zip(spec.disks, srs, strict=True)):
                self._new_disk(
                    vm,
                    spec.name,
                    disk,
                    sr,
                    str(i),
                    made,
                    token,
                    deadline,
                    bootable=i == 0 and not kernel and not iso,
                )
            if iso is not None:
                made.pending = "VBD.create"
                self._call(
                    what,
                    "VBD.create",
                    self._vbd_record(vm, iso, str(len(spec.disks)), cd=True),
                    deadline=deadline,
                )
            for i, (nic, (net, netrec)) in enumerate(zip(spec.nics, nets, strict=True)):
                made.pending = "VIF.create"
                self._call(
                    what,
                    "VIF.create",
                    self._vif_record(vm, net, netrec, str(i), nic),
                    deadline=deadline,
                )
            made.pending = "VM.remove_from_other_config"
            self._call(what, "VM.remove_from_other_config", vm, CREATING_KEY, deadline=deadline)
            made.pending = "VM.get_record"
            rec = self._call(what, "VM.get_record", vm, deadline=deadline)
        except VmctlError as exc:
            self._undo(made, exc, token, deadline)
        with self._lock:
            self._vm_refs[str(rec["uuid"])] = vm
        log.info("created VM %r (%s)", spec.name, rec["uuid"])
        return self._info(rec, deadline)

    def _undo(self, made: _Made, exc: VmctlError, token: str, deadline: Deadline) -> NoReturn:
        """Remove what a failed create made, then raise: ``exc`` when all is gone, else an
        error naming what is left (``left_behind``).

        After a timeout nothing more is sent: the host may be stopped, and what was sent
        (the call that timed out) may still be carried out when it runs again; undoing then
        could race it. The VM (and VDIs tagged with the create's token, which ``delete``
        also removes) is left and named. After a lost connection or a refusal the host is
        asked to undo, within the request's deadline or one RPC timeout, whichever ends
        later.
        """
        timed_out = isinstance(exc, OperationTimeout) and _uncertain(exc)
        if made.vm is None and not _uncertain(exc):
            raise exc  # nothing was made
        failed: BaseException | None = exc if timed_out else None
        if not timed_out:
            budget = (
                deadline
                if deadline.remaining() > self._c.rpc_timeout
                else Deadline.after(self._c.rpc_timeout)
            )
            try:
                if made.vm is None:  # VM.create may have been done: look for it
                    made.vm = self._created_vm(made.vm_id, token, budget)
                    if made.vm is not None:
                        made.vm_id = str(
                            self._call(made.what, "VM.get_uuid", made.vm, deadline=budget)
                        )
                if made.vm is not None:
                    self._call(made.what, "VM.destroy", made.vm, deadline=budget)
                    made.vm, made.vm_id = None, ""
                while made.vdis:
                    self._call(made.what, "VDI.destroy", made.vdis[-1][0], deadline=budget)
                    made.vdis.pop()
                if made.pending == "VDI.create" and _uncertain(exc):
                    for ref, uuid in self._tagged_vdis(token, budget):
                        self._call(made.what, "VDI.destroy", ref, deadline=budget)
                        log.info("%s: removed VDI %s made by a lost VDI.create", made.what, uuid)
            except VmctlError as cleanup:
                failed = cleanup
                log.warning("%s: cleaning up failed: %s", made.what, cleanup)
        if failed is None:
            if _uncertain(exc):
                # Everything made is gone: nothing of the request remains, it can be repeated.
                err: VmctlError = ConnectionError(
                    f"{exc.message}; everything made was removed again", sent=False
                )
                raise err from exc
            raise exc
        left = made.left()
        names = ", ".join(f"{kind} {ident}" for kind, ident in left) or "nothing known"
        undo = (
            "nothing was undone (after a timeout the driver sends nothing more: the host may "
            "be stopped, and what it was sent may still be carried out)"
            if timed_out
            else f"undoing it failed ({failed})"
        )
        in_flight = (
            f"; {made.pending} was in flight and may still be carried out"
            + (
                " (its VDI is tagged for this VM: delete removes it)"
                if made.pending == "VDI.create"
                else ""
            )
            if _uncertain(exc)
            else ""
        )
        err = OutcomeUnknown(
            f"{made.what}: {exc.message}; {undo}, so these may be left behind: "
            f"{names}{in_flight}. Delete the VM to remove them.",
            sent=None,
        )
        err.left_behind = left
        err.vendor_code = exc.vendor_code
        raise err from exc

    def _created_vm(self, name: str, token: str, deadline: Deadline) -> str | None:
        """The VM a create whose VM.create was not answered made, if it exists."""
        refs = self._call(f"look up VM {name!r}", "VM.get_by_name_label", name, deadline=deadline)
        for ref in refs:
            oc = self._call(f"look up VM {name!r}", "VM.get_other_config", ref, deadline=deadline)
            if oc.get(CREATING_KEY) == token:
                return str(ref)
        return None

    def _tagged_vdis(self, token: str, deadline: Deadline) -> list[tuple[str, str]]:
        vdis = self._call("find the disks of a create", "VDI.get_all_records", deadline=deadline)
        return [
            (str(ref), str(rec.get("uuid")))
            for ref, rec in vdis.items()
            if rec.get("other_config", {}).get(CREATING_KEY) == token
        ]

    def _iso(self, name: str, deadline: Deadline) -> str:
        vdis = self._call("find the ISO", "VDI.get_all_records", deadline=deadline)
        srs = self._call("find the ISO", "SR.get_all_records", deadline=deadline)
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
        vm: str, net: str, netrec: dict[str, Any], device: str, nic: NicSpec
    ) -> dict[str, Any]:
        return {
            "device": device,
            "network": net,
            "VM": vm,
            "MAC": nic.mac or "",
            "MTU": str(netrec.get("MTU") or 1500),
            "other_config": {NETWORK_KEY: nic.network},
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
        made: _Made,
        token: str,
        deadline: Deadline,
        *,
        bootable: bool = False,
    ) -> str:
        """VDI.create + VBD.create; the VDI is recorded in ``made`` as soon as it exists."""
        what = made.what
        made.pending = "VDI.create"
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
                    "other_config": {CREATING_KEY: token} if token else {},
                    "sm_config": {},
                    "xenstore_data": {},
                    "tags": [],
                },
                deadline=deadline,
            )
        )
        made.pending = "VDI.get_uuid"
        made.vdis.append((vdi, ""))
        made.vdis[-1] = (vdi, str(self._call(what, "VDI.get_uuid", vdi, deadline=deadline)))
        made.pending = "VBD.create"
        self._call(
            what,
            "VBD.create",
            self._vbd_record(vm, vdi, userdevice, bootable=bootable),
            deadline=deadline,
        )
        return vdi

    def _owned_vdis(
        self, rec: dict[str, Any], deadline: Deadline
    ) -> list[tuple[str, dict[str, Any]]]:
        """The VDIs a VM (or snapshot) owns: disks whose VBD carries the owner key, or, for
        a snapshot, its snapshot VDIs; plus a suspend image."""
        out = []
        with self._mapped(f"read the disks of {rec.get('name_label')!r}"):
            for vbd in rec.get("VBDs", []):
                b = self._c.call("VBD.get_record", vbd, deadline=deadline)
                if b.get("type") != "Disk" or b.get("VDI") in ("", NULL):
                    continue
                vdi = self._c.call("VDI.get_record", b["VDI"], deadline=deadline)
                owned = OWNER_KEY in b.get("other_config", {}) or (
                    rec.get("is_a_snapshot") and vdi.get("is_a_snapshot")
                )
                if owned:
                    out.append((str(b["VDI"]), vdi))
            if rec.get("suspend_VDI") not in (None, "", NULL):
                out.append(
                    (
                        str(rec["suspend_VDI"]),
                        self._c.call("VDI.get_record", rec["suspend_VDI"], deadline=deadline),
                    )
                )
            token = rec.get("other_config", {}).get(CREATING_KEY)
            if token:  # a create the host did not confirm: its VDIs, attached or not
                have = {ref for ref, _v in out}
                vdis = self._c.call("VDI.get_all_records", deadline=deadline)
                out += [
                    (str(ref), v)
                    for ref, v in vdis.items()
                    if v.get("other_config", {}).get(CREATING_KEY) == token and ref not in have
                ]
        return out

    def _destroy_vm(
        self, ref: str, rec: dict[str, Any], what: str, deadline: Deadline
    ) -> list[str]:
        """VM.destroy (which keeps VDIs), then the VDIs it owned."""
        vdis = self._owned_vdis(rec, deadline)
        # The backup checkpoints (CBT metadata) of its disks go with them (_backup.py).
        vdis += self.backup_leftovers([v for v, _r in vdis], deadline)
        self._call(what, "VM.destroy", ref, deadline=deadline)
        gone = [
            f"{'snapshot' if rec.get('is_a_snapshot') else 'vm'} {rec['name_label']} "
            f"({rec['uuid']})"
        ]
        for vdi, vrec in vdis:
            try:
                self._call(what, "VDI.destroy", vdi, deadline=deadline)
                gone.append(f"disk {vrec.get('name_label')} (vdi {vrec.get('uuid')})")
            except NotFound:
                pass
        return gone

    def delete_vm(self, uuid: str, *, deadline: Deadline) -> list[str]:
        with self._unchanged():
            ref, rec = self._vm(uuid, deadline)
        what = f"delete VM {rec['name_label']!r}"
        if rec.get("power_state") == "Suspended":
            # Discard the saved state first, so its suspend image goes too.
            self._call(what, "VM.hard_shutdown", ref, deadline=deadline)
            rec = self._call(what, "VM.get_record", ref, deadline=deadline)
        gone = []
        for snap in rec.get("snapshots", []):
            srec = self._call(what, "VM.get_record", snap, deadline=deadline)
            gone += self._destroy_vm(str(snap), srec, what, deadline)
        gone = self._destroy_vm(ref, rec, what, deadline) + gone
        with self._lock:
            self._vm_refs.pop(uuid, None)
        return gone

    def start(self, uuid: str, *, deadline: Deadline) -> Task:
        with self._unchanged():
            ref, rec = self._vm(uuid, deadline)
        what = f"start VM {rec['name_label']!r}"
        if self.scope is not None:
            return self._task(what, "VM.start_on", ref, self.scope, False, False, deadline=deadline)
        return self._task(what, "VM.start", ref, False, False, deadline=deadline)

    def start_many(
        self, uuids: Sequence[str], *, deadline: Deadline
    ) -> dict[str, Task | VmctlError | None]:
        """Many starts from one thread: each an ``Async.VM.start``; the core then waits for
        all their tasks with one ``event.from`` (``BulkPower``), not one poll per VM."""
        return self._many(self.start, uuids, deadline)

    def power_off_many(
        self, uuids: Sequence[str], *, deadline: Deadline
    ) -> dict[str, Task | VmctlError | None]:
        """As ``start_many``, with ``Async.VM.hard_shutdown``."""
        return self._many(self.power_off, uuids, deadline)

    @staticmethod
    def _many(
        one: Callable[..., Task], uuids: Sequence[str], deadline: Deadline
    ) -> dict[str, Task | VmctlError | None]:
        out: dict[str, Task | VmctlError | None] = {}
        for uuid in uuids:
            try:
                out[uuid] = one(uuid, deadline=deadline)
            except OutcomeUnknown:
                raise  # the connection failed: the core decides
            except VmctlError as exc:
                out[uuid] = exc
        return out

    def power_off(self, uuid: str, *, deadline: Deadline) -> Task:
        with self._unchanged():
            ref, rec = self._vm(uuid, deadline)
        return self._task(
            f"power off VM {rec['name_label']!r}", "VM.hard_shutdown", ref, deadline=deadline
        )

    # -- graceful, reset, pause, suspend --------------------------------------------------

    def _assert_guest_can(
        self, ref: str, rec: dict[str, Any], op: str, verb: str, deadline: Deadline
    ) -> None:
        """xapi lists an operation in allowed_operations only when the guest can do it (for
        HVM guests: PV drivers or the feature flag in the guest metrics; xapi_vm_lifecycle.ml
        check_op_for_feature, strict). If it is missing, ask xapi why (one call) and raise
        InvalidState at once, naming the remedy."""
        if rec.get("power_state") != "Running" or op in rec.get("allowed_operations", []):
            return
        what = f"{verb} VM {rec['name_label']!r}"
        try:
            self._c.call("VM.assert_operation_valid", ref, op, deadline=deadline)
        except Exception as exc:
            err = _errors.from_exception(what, exc)
            code = str(err.vendor_code)
            if not (isinstance(err, InvalidState) or code == "OPERATION_BLOCKED"):
                raise err from exc
            why = {
                "OPERATION_BLOCKED": f"{op} is blocked on this VM (blocked_operations)",
                "VM_LACKS_FEATURE": "the guest has no PV drivers and has not announced "
                f"feature-{'shutdown' if op == 'clean_shutdown' else 'reboot'} (no OS "
                "booted, or its guest tools are not running)",
                "VM_MISSING_PV_DRIVERS": "the guest has no PV drivers",
            }.get(code, "the guest cannot act on it")
            remedy = (
                "shutdown(force_after=...) or power_off() to force it"
                if op == "clean_shutdown"
                else "reset() to force a restart"
            )
            raise InvalidState(
                f"{what}: the guest cannot be asked ({why}; XenAPI {code}); use {remedy}",
                current=S.RUNNING,
                allowed={S.RUNNING},
                vendor_code=code,
            ) from exc
        # xapi says it is valid after all (allowed_operations was stale): go on.

    def shutdown(self, uuid: str, *, deadline: Deadline) -> Task:
        with self._unchanged():
            ref, rec = self._vm(uuid, deadline)
            self._assert_guest_can(ref, rec, "clean_shutdown", "shut down", deadline)
        what = f"shut down VM {rec['name_label']!r}"
        return self._task(what, "VM.clean_shutdown", ref, deadline=deadline)

    def reboot(self, uuid: str, *, deadline: Deadline) -> Task:
        with self._unchanged():
            ref, rec = self._vm(uuid, deadline)
            self._assert_guest_can(ref, rec, "clean_reboot", "reboot", deadline)
        return self._task(
            f"reboot VM {rec['name_label']!r}", "VM.clean_reboot", ref, deadline=deadline
        )

    def reset(self, uuid: str, *, deadline: Deadline) -> Task:
        with self._unchanged():
            ref, rec = self._vm(uuid, deadline)
        return self._task(
            f"reset VM {rec['name_label']!r}", "VM.hard_reboot", ref, deadline=deadline
        )

    def pause(self, uuid: str, *, deadline: Deadline) -> Task:
        with self._unchanged():
            ref, rec = self._vm(uuid, deadline)
        return self._task(f"pause VM {rec['name_label']!r}", "VM.pause", ref, deadline=deadline)

    def unpause(self, uuid: str, *, deadline: Deadline) -> Task:
        with self._unchanged():
            ref, rec = self._vm(uuid, deadline)
        return self._task(f"unpause VM {rec['name_label']!r}", "VM.unpause", ref, deadline=deadline)

    def suspend(self, uuid: str, *, deadline: Deadline) -> Task:
        with self._unchanged():
            ref, rec = self._vm(uuid, deadline)
        what = f"suspend VM {rec['name_label']!r}"
        if self.scope is not None and rec.get("affinity") != self.scope:
            # A suspended VM is resident nowhere: its affinity keeps it in this host's
            # inventory and resumes it here.
            self._call(what, "VM.set_affinity", ref, self.scope, deadline=deadline)
        return self._task(what, "VM.suspend", ref, deadline=deadline)

    def resume_suspended(self, uuid: str, *, deadline: Deadline) -> Task:
        with self._unchanged():
            ref, rec = self._vm(uuid, deadline)
        return self._resume(
            ref, f"resume VM {rec['name_label']!r}", paused=False, deadline=deadline
        )

    def _resume(self, ref: str, what: str, *, paused: bool, deadline: Deadline) -> Task:
        if self.scope is not None:
            return self._task(
                what, "VM.resume_on", ref, self.scope, paused, False, deadline=deadline
            )
        return self._task(what, "VM.resume", ref, paused, False, deadline=deadline)

    # -- reconfiguration ------------------------------------------------------------------

    def set_vcpus(self, uuid: str, vcpus: int, *, live: bool, deadline: Deadline) -> None:
        with self._unchanged():
            ref, rec = self._vm(uuid, deadline)
        what = f"set vCPUs of VM {rec['name_label']!r}"
        if live:
            raise InvalidState(
                f"{what}: the xen driver changes vCPUs only while stopped",
                current=S.RUNNING,
                allowed={S.STOPPED},
            )
        # xapi keeps 0 < VCPUs_at_startup <= VCPUs_max at every step.
        order = ["VM.set_VCPUs_max", "VM.set_VCPUs_at_startup"]
        if vcpus < _int(rec.get("VCPUs_max")):
            order.reverse()
        for method in order:
            self._call(what, method, ref, str(vcpus), deadline=deadline)

    def set_memory(self, uuid: str, memory_mib: int, *, live: bool, deadline: Deadline) -> None:
        with self._unchanged():
            ref, rec = self._vm(uuid, deadline)
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
        self._call(
            what,
            "VM.set_memory_limits",
            ref,
            str(smin),
            str(new),
            str(dmin),
            str(new),
            deadline=deadline,
        )

    def set_resources(self, uuid: str, resources: Resources, *, deadline: Deadline) -> None:
        with self._unchanged():
            ref, rec = self._vm(uuid, deadline)
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
            self._call(what, "VM.set_VCPUs_params", ref, params, deadline=deadline)
        if resources.memory_reservation_mib is not None:
            dmin = resources.memory_reservation_mib * MiB
            smin, smax = _int(rec.get("memory_static_min")), _int(rec.get("memory_static_max"))
            dmax = _int(rec.get("memory_dynamic_max"))
            if dmin >= smin:
                self._call(
                    what,
                    "VM.set_memory_dynamic_range",
                    ref,
                    str(dmin),
                    str(dmax),
                    deadline=deadline,
                )
            elif not running and rec.get("power_state") == "Halted":
                self._call(
                    what,
                    "VM.set_memory_limits",
                    ref,
                    str(dmin),
                    str(smax),
                    str(dmin),
                    str(dmax),
                    deadline=deadline,
                )
            else:
                raise InvalidState(
                    f"{what}: a reservation below the VM's static minimum "
                    f"({smin // MiB} MiB) needs it stopped",
                    current=power_state(str(rec.get("power_state"))),
                    allowed={S.STOPPED},
                )

    # -- devices --------------------------------------------------------------------------

    def add_disk(self, uuid: str, disk: DiskSpec, *, live: bool, deadline: Deadline) -> DiskInfo:
        with self._unchanged():
            ref, rec = self._vm(uuid, deadline)
        what = f"add a disk to VM {rec['name_label']!r}"
        if disk.source:
            raise ValidationError("the xen driver creates blank disks only", field="source")
        with self._unchanged():
            sr = self._sr(disk.pool, deadline)
            free = self._call(what, "VM.get_allowed_VBD_devices", ref, deadline=deadline)
        if not free:
            raise InvalidState(f"{what}: no free disk slot")
        userdevice = sorted(free, key=lambda d: int(d) if d.isdigit() else 99)[0]
        made = _Made(what)
        try:
            vdi = self._new_disk(
                ref, str(rec["name_label"]), disk, sr, userdevice, made, "", deadline
            )
            if live:
                vbd = self._vbd_of(ref, userdevice, deadline)
                made.pending = "VBD.plug"
                self._run(what, "VBD.plug", vbd, deadline=deadline)
            made.pending = "VDI.get_record"
            vrec = self._call(what, "VDI.get_record", vdi, deadline=deadline)
        except VmctlError as exc:
            self._undo_disk(made, exc, deadline)
        return self._disk_info({"userdevice": userdevice}, vrec)

    def _undo_disk(self, made: _Made, exc: VmctlError, deadline: Deadline) -> NoReturn:
        """As ``_undo`` for a disk of an existing VM: VDI.destroy (its VBD goes with it
        once unplugged), or ``left_behind`` naming the disk."""
        if not made.vdis:
            raise exc
        failed: BaseException | None = exc if isinstance(exc, OperationTimeout) else None
        if failed is None:
            budget = (
                deadline
                if deadline.remaining() > self._c.rpc_timeout
                else Deadline.after(self._c.rpc_timeout)
            )
            try:
                for vdi, _u in made.vdis:
                    with contextlib.suppress(NotFound):
                        vbds = self._call(made.what, "VDI.get_VBDs", vdi, deadline=budget)
                        for vbd in vbds:
                            self._call(made.what, "VBD.destroy", vbd, deadline=budget)
                    self._call(made.what, "VDI.destroy", vdi, deadline=budget)
            except VmctlError as cleanup:
                failed = cleanup
            else:
                raise exc
        left = tuple(("disk", f"vdi:{u}" if u else r) for r, u in made.vdis)
        err = OutcomeUnknown(
            f"{made.what}: {exc.message}; the disk could not be removed again "
            f"({', '.join(i for _k, i in left)}): remove it with remove_disk",
            sent=None,
        )
        err.left_behind = left
        raise err from exc

    def _vbd_of(self, ref: str, userdevice: str, deadline: Deadline) -> str:
        for vbd in self._call("find the disk", "VM.get_VBDs", ref, deadline=deadline):
            if (
                self._call("find the disk", "VBD.get_userdevice", vbd, deadline=deadline)
                == userdevice
            ):
                return str(vbd)
        raise NotFound(f"no disk in slot {userdevice}")

    def remove_disk(self, uuid: str, disk_id: str, *, live: bool, deadline: Deadline) -> None:
        with self._unchanged():
            _ref, rec = self._vm(uuid, deadline)
            disks, _nics = self._devices(rec, deadline)
        what = f"remove disk {disk_id} from VM {rec['name_label']!r}"
        hit = [d for d in disks if _disk_id(str(d[1].get("userdevice"))) == disk_id]
        if not hit:
            raise NotFound(f"VM {rec['name_label']!r} has no disk {disk_id!r}")
        vbd, b, vdi = hit[0]
        if b.get("currently_attached"):
            self._run(what, "VBD.unplug", vbd, deadline=deadline)
        self._call(what, "VBD.destroy", vbd, deadline=deadline)
        if vdi is not None and OWNER_KEY in b.get("other_config", {}):
            self._call(what, "VDI.destroy", b["VDI"], deadline=deadline)

    def add_nic(self, uuid: str, nic: NicSpec, *, live: bool, deadline: Deadline) -> NicInfo:
        with self._unchanged():
            ref, rec = self._vm(uuid, deadline)
            what = f"add a NIC to VM {rec['name_label']!r}"
            net, netrec = self._network(nic.network, deadline)
            free = self._call(what, "VM.get_allowed_VIF_devices", ref, deadline=deadline)
        if not free:
            raise InvalidState(f"{what}: no free NIC slot")
        device = sorted(free, key=lambda d: int(d) if d.isdigit() else 99)[0]
        vif = str(
            self._call(
                what,
                "VIF.create",
                self._vif_record(ref, net, netrec, device, nic),
                deadline=deadline,
            )
        )
        if live:
            try:
                self._run(what, "VIF.plug", vif, deadline=deadline)
            except VmctlError as exc:
                try:
                    self._call(
                        what, "VIF.destroy", vif, deadline=Deadline.after(self._c.rpc_timeout)
                    )
                except VmctlError:
                    exc.left_behind = (("nic", vif),)
                raise
        return self._nic_info(self._call(what, "VIF.get_record", vif, deadline=deadline), deadline)

    def remove_nic(self, uuid: str, nic_id: str, *, live: bool, deadline: Deadline) -> None:
        with self._unchanged():
            _ref, rec = self._vm(uuid, deadline)
            _disks, nics = self._devices(rec, deadline)
        what = f"remove NIC {nic_id} from VM {rec['name_label']!r}"
        hits = [n for n in nics if _nic_id(str(n[1].get("device"))) == nic_id]
        if not hits:
            raise NotFound(f"VM {rec['name_label']!r} has no NIC {nic_id!r}")
        vif, v = hits[0]
        if v.get("currently_attached"):
            self._run(what, "VIF.unplug", vif, deadline=deadline)
        self._call(what, "VIF.destroy", vif, deadline=deadline)

    # -- snapshots ------------------------------------------------------------------------

    @staticmethod
    def _parent(rec: dict[str, Any]) -> str:
        """xapi's parent field: a snapshot's is the snapshot it was taken after, the VM's is
        its current snapshot (xapi_vm_clone.ml copy_vm_record; xapi_vm_snapshot.ml revert
        update_parent); VM.destroy re-parents the children (xapi_vm.ml destroy)."""
        return str(rec.get("parent", NULL))

    def _snapshots(self, rec: dict[str, Any], deadline: Deadline) -> list[SnapshotInfo]:
        recs = {}
        for snap in rec.get("snapshots", []):
            with contextlib.suppress(NotFound):
                recs[str(snap)] = self._call(
                    "list snapshots", "VM.get_record", snap, deadline=deadline
                )

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
        self, uuid: str, name: str, *, memory: bool, description: str, deadline: Deadline
    ) -> SnapshotInfo:
        with self._unchanged():
            ref, rec = self._vm(uuid, deadline)
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
        snap = str(self._run(what, method, ref, name, deadline=deadline))
        if description:
            self._call(what, "VM.set_name_description", snap, description, deadline=deadline)
        snap_uuid = self._call(what, "VM.get_uuid", snap, deadline=deadline)
        _ref, rec = self._vm(uuid, deadline)
        for info in self._snapshots(rec, deadline):
            if info.id == snap_uuid:
                return info
        raise NotFound(f"{what}: the new snapshot {name!r} is not among the VM's snapshots")

    def list_snapshots(self, uuid: str, *, deadline: Deadline) -> list[SnapshotInfo]:
        _ref, rec = self._vm(uuid, deadline)
        return self._snapshots(rec, deadline)

    def _snapshot_ref(
        self, rec: dict[str, Any], snapshot_id: str, deadline: Deadline
    ) -> tuple[str, dict[str, Any]]:
        for snap in rec.get("snapshots", []):
            s = self._call("find the snapshot", "VM.get_record", snap, deadline=deadline)
            if s.get("uuid") == snapshot_id:
                return str(snap), s
        raise NotFound(f"VM {rec['name_label']!r} has no snapshot {snapshot_id!r}")

    def revert_snapshot(self, uuid: str, snapshot_id: str, *, deadline: Deadline) -> Task | None:
        with self._unchanged():
            ref, rec = self._vm(uuid, deadline)
            sref, snap = self._snapshot_ref(rec, snapshot_id, deadline)
        what = f"revert VM {rec['name_label']!r} to {snap['name_label']!r}"
        added = self._disks_added_since(rec, snap, what, deadline)
        self._run(what, "VM.revert", sref, deadline=deadline)
        # xapi leaves the VM's disks the snapshot has no copy of unattached
        # (xapi_vm_snapshot.ml: update_vifs_vbds_and_vgpus): disks added since the
        # snapshot. The VM owned them; remove those nothing else uses, so none is left behind.
        for vdi in added:
            if not self._call(what, "VDI.get_VBDs", vdi, deadline=deadline):
                self._call(what, "VDI.destroy", vdi, deadline=deadline)
        # A checkpoint reverts to Suspended (xapi_vm_snapshot.ml); resume it to the state
        # it was in when taken: that is the task the core waits on.
        state = self._call(what, "VM.get_power_state", ref, deadline=deadline)
        if state == "Suspended" and snap.get("power_state") == "Suspended":
            at = str(snap.get("snapshot_info", {}).get("power-state-at-snapshot", "Running"))
            return self._resume(ref, what, paused=at == "Paused", deadline=deadline)
        return None

    def _disks_added_since(
        self, rec: dict[str, Any], snap: dict[str, Any], what: str, deadline: Deadline
    ) -> list[str]:
        """The VDIs of the VM's disks that the snapshot has no copy of (VDI.snapshot_of)."""

        def disks(vbds: Sequence[str]) -> list[str]:
            out = []
            for vbd in vbds:
                b = self._call(what, "VBD.get_record", vbd, deadline=deadline)
                if b.get("type") == "Disk" and b.get("VDI") not in ("", NULL):
                    out.append(str(b["VDI"]))
            return out

        copied = {
            str(self._call(what, "VDI.get_snapshot_of", v, deadline=deadline))
            for v in disks(snap.get("VBDs", []))
        }
        return [v for v in disks(rec.get("VBDs", [])) if v not in copied]

    def delete_snapshot(self, uuid: str, snapshot_id: str, *, deadline: Deadline) -> None:
        with self._unchanged():
            _ref, rec = self._vm(uuid, deadline)
            sref, snap = self._snapshot_ref(rec, snapshot_id, deadline)
        what = f"delete snapshot {snap['name_label']!r} of VM {rec['name_label']!r}"
        self._destroy_vm(sref, snap, what, deadline)

    # -- clone and migrate ----------------------------------------------------------------

    def clone_vm(self, uuid: str, name: str, *, linked: bool, deadline: Deadline) -> VMInfo:
        with self._unchanged():
            ref, rec = self._vm(uuid, deadline)
            taken = self._name_taken(name, deadline)
        if taken:
            raise AlreadyExists(
                f"a VM named {name!r} already exists in the pool at {self.uri.host}"
            )
        what = f"clone VM {rec['name_label']!r} as {name!r}"
        if linked:
            task = self._task(what, "VM.clone", ref, name, deadline=deadline)
        else:
            task = self._task(what, "VM.copy", ref, name, NULL, deadline=deadline)
        try:
            new = str(finish_task(self, task, deadline=deadline, what=what).result)
        except OperationTimeout as exc:
            late = OperationTimeout(
                f"{exc.message}; the copy may still finish on the host as a VM named {name!r} "
                "(delete it when it appears)",
                running=exc.running,
            )
            late.left_behind = (("vm", name),)
            raise late from exc
        try:
            nrec = self._call(what, "VM.get_record", new, deadline=deadline)
            # The copy owns its disks (xapi_vm_clone.ml marks them so; make sure).
            for vbd in nrec.get("VBDs", []):
                b = self._call(what, "VBD.get_record", vbd, deadline=deadline)
                if b.get("type") == "Disk" and OWNER_KEY not in b.get("other_config", {}):
                    self._call(
                        what, "VBD.add_to_other_config", vbd, OWNER_KEY, "true", deadline=deadline
                    )
            if nrec.get("is_a_template"):
                self._call(what, "VM.set_is_a_template", new, False, deadline=deadline)
                nrec = self._call(what, "VM.get_record", new, deadline=deadline)
        except VmctlError as exc:
            budget = Deadline.after(self._c.rpc_timeout)
            try:
                self._destroy_vm(
                    new, self._call(what, "VM.get_record", new, deadline=budget), what, budget
                )
            except VmctlError:
                exc.left_behind = (("vm", name),)
            raise
        with self._lock:
            self._vm_refs[str(nrec["uuid"])] = new
        return self._info(nrec, deadline)

    def migrate_vm(self, uuid: str, target: Driver, *, live: bool, deadline: Deadline) -> None:
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
        with self._unchanged():
            ref, rec = self._vm(uuid, deadline)
        what = f"migrate VM {rec['name_label']!r} to {target.scope_name}"
        if live:
            self._run(
                what, "VM.pool_migrate", ref, target.scope, {"live": "true"}, deadline=deadline
            )
        else:
            self._check_storage(rec, target.scope, what, deadline)
        # The VM's home moves too: it stays in the target's inventory when it stops.
        self._call(what, "VM.set_affinity", ref, target.scope, deadline=deadline)

    def _check_storage(self, rec: dict[str, Any], host: str, what: str, deadline: Deadline) -> None:
        """A halted VM can move only if the target host sees all its disks."""
        srs = self._call(what, "SR.get_all_records", deadline=deadline)
        pbds = self._call(what, "PBD.get_all_records", deadline=deadline)
        for _vdi, vrec in self._owned_vdis(rec, deadline):
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

    def guest_info(self, uuid: str, *, deadline: Deadline) -> GuestInfo:
        _ref, rec = self._vm(uuid, deadline)
        gm = rec.get("guest_metrics", NULL)
        if rec.get("power_state") != "Running" or gm in ("", NULL):
            return GuestInfo(agent=AgentState.NOT_RUNNING)
        try:
            g = self._c.call("VM_guest_metrics.get_record", gm, deadline=deadline)
        except Exception as exc:
            if _errors.details(exc)[:1] == ["HANDLE_INVALID"]:
                return GuestInfo(agent=AgentState.NOT_RUNNING)
            if isinstance(exc, VmctlError):
                raise
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

    def subscribe(self, *, deadline: Deadline) -> EventSource:
        from ._events import XenEvents

        with self._mapped("subscribe to events"):
            return XenEvents(self, deadline)

    # used by _events
    def in_scope(self, rec: dict[str, Any]) -> bool:
        return self._in_scope(rec)

    def host_name(self, ref: str) -> str | None:
        return self._host_name(ref, Deadline.after(self._c.rpc_timeout))

    @property
    def connection(self) -> Connection:
        return self._c
