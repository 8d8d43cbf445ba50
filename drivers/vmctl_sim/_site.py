"""The sim's world: sites of hosts holding VMs, shared in-process, optionally persisted.

Everything here is plain data guarded by the site's lock; the driver translates SPI calls
into changes of it and enforces what real hypervisors enforce.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import queue
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from typing import Any

import attrs
from attrs import define, field

from vmctl import Event, EventKind, PowerState, Resources, StateReason

from ._disks import DiskWorld

HOST_CPUS = 16
HOST_CPU_MHZ = 2600
HOST_MEMORY_MIB = 64 * 1024
NETWORKS = ("default", "isolated")
POOLS = ("default",)
#: What each pool of a host can hold, in MiB of provisioned disk (4 TiB).
POOL_CAPACITY_MIB = 4 * 1024 * 1024
#: Seconds a guest with an OS takes to act on ACPI shutdown/reboot, and to get an IP.
GUEST_DELAY = 0.15


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@define
class SimDisk:
    id: str
    size_mib: int
    name: str | None
    bus: str
    path: str
    pool: str = "default"
    #: Where the content is (see ``_disks.DiskWorld``); a new disk is all holes.
    store: str = field(factory=lambda: uuidlib.uuid4().hex)
    #: Changed-block tracking: the current generation, and each written block's mark.
    cbt_gen: int = 0
    cbt: dict[str, int] = field(factory=dict)

    @property
    def size_bytes(self) -> int:
        return self.size_mib * 1024 * 1024


@define
class SimVolume:
    """An image in a pool of the site (shared storage: every host of the site sees it).
    Made with its disk, deleted with it; ``path`` is the disk's ``SimDisk.path``."""

    path: str
    pool: str
    size_mib: int
    store: str


@define
class SimNic:
    id: str
    network: str
    mac: str
    model: str | None


@define
class SimSnapshot:
    id: str
    name: str
    created: dt.datetime
    parent: str | None
    with_memory: bool
    state: PowerState
    description: str
    config: dict[str, Any]  # vcpus, memory_mib, disks, nics, resources at snapshot time


@define
class SimVM:
    uuid: str
    name: str
    vcpus: int
    memory_mib: int
    guest_os: str
    has_os: bool  # a boot source: the guest answers ACPI and gets an IP
    description: str
    disks: list[SimDisk] = field(factory=list)
    nics: list[SimNic] = field(factory=list)
    resources: Resources = field(factory=Resources)
    state: PowerState = PowerState.STOPPED
    reason: StateReason = StateReason.CREATED
    snapshots: dict[str, SimSnapshot] = field(factory=dict)
    current_snapshot: str | None = None
    running_since: float | None = None  # time.time() when it last started running
    cpu_seconds: float = 0.0
    booted_at: float | None = None
    next_device: int = 0
    firmware: str = "bios"  # vmctl.Firmware's value

    def device_id(self, prefix: str) -> str:
        self.next_device += 1
        return f"{prefix}{self.next_device}"


@define
class SimHost:
    name: str
    uuid: str
    vms: dict[str, SimVM] = field(factory=dict)
    #: The host's maintenance mode (``_hosts.SimHosts``): it takes no VM moved to it.
    maintenance: bool = False
    #: The host has failed (``_recovery.SimRecovery.fail_host``): down, unreachable; its
    #: VMs keep their recorded state until it is declared failed.
    failed: bool = False

    def used_pool_mib(self, pool: str) -> int:
        return sum(d.size_mib for vm in self.vms.values() for d in vm.disks if d.pool == pool)

    def used_memory_mib(self) -> int:
        return sum(
            vm.memory_mib
            for vm in self.vms.values()
            if vm.state in (PowerState.RUNNING, PowerState.PAUSED)
        )


#: How often a subscription to a site kept in a state file looks at the file (a stat; the
#: file is read only when its inode, mtime or size changed).
FILE_POLL_S = 0.02

_Seen = dict[str, tuple[str, PowerState, StateReason]]


class Subscriber:
    """One event subscription: a queue the site pushes to.

    A site kept in a state file is also changed by other processes, which cannot push to
    this one: there the subscription looks at the file (``os.stat``) when no event came for
    FILE_POLL_S, reads it when it changed and turns what changed into events (created,
    deleted, state changed). A change this process makes itself may then be reported twice.
    """

    def __init__(self, site: Site, host: str) -> None:
        self.site = site
        self.host = host
        self.queue: queue.Queue[Event] = queue.Queue()
        self._stamp: tuple[int, int, int] | None = None
        self.seen: _Seen = self._snapshot() if site.path else {}

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.site.path or "")
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _snapshot(self) -> _Seen:
        with self.site.transaction(save=False):
            host = self.site.hosts.get(self.host)
            vms = host.vms.values() if host is not None else ()
            # Under the file lock: no other process writes between this read and the stat.
            self._stamp = self._file_stamp()
            return {vm.uuid: (vm.name, vm.state, vm.reason) for vm in vms}

    def _note(self, event: Event) -> None:
        if event.kind is EventKind.DELETED or (
            event.kind is EventKind.MIGRATED and event.detail.startswith("to ")
        ):
            self.seen.pop(event.vm_uuid, None)
        elif event.state is not None and event.reason is not None:
            self.seen[event.vm_uuid] = (event.vm_name or "", event.state, event.reason)

    def _from_file(self) -> None:
        """Queue events for what other processes changed since we last looked."""
        now = self._snapshot()
        for uuid, (name, state, reason) in now.items():
            before = self.seen.get(uuid)
            if before is None:
                kind = EventKind.CREATED
            elif before[1:] != (state, reason):
                kind = EventKind.STATE_CHANGED
            else:
                continue
            self.queue.put(Event(kind=kind, vm_uuid=uuid, vm_name=name, state=state, reason=reason))
        for uuid, (name, state, _) in self.seen.items():
            if uuid not in now:
                self.queue.put(
                    Event(kind=EventKind.DELETED, vm_uuid=uuid, vm_name=name, state=state)
                )
        self.seen = now

    def next_event(self, timeout: float) -> Event | None:
        if self.site.path is None:
            try:
                return self.queue.get(timeout=timeout) if timeout > 0 else self.queue.get_nowait()
            except queue.Empty:
                return None
        ends = time.monotonic() + max(timeout, 0.0)
        while True:  # reads the queue until the caller's timeout; looks at the file between
            left = ends - time.monotonic()
            try:
                event = (
                    self.queue.get(timeout=min(left, FILE_POLL_S))
                    if left > 0
                    else self.queue.get_nowait()
                )
            except queue.Empty:
                if self._file_stamp() != self._stamp:
                    self._from_file()
                if self.queue.empty() and left <= 0:
                    return None
                continue
            self._note(event)
            return event

    def close(self) -> None:
        with self.site.lock:
            if self in self.site.subscribers:
                self.site.subscribers.remove(self)


class Site:
    """Hosts that can migrate VMs between each other (one sim "datacenter")."""

    def __init__(self, name: str, path: str | None) -> None:
        self.name = name
        self.path = path
        self.lock = threading.RLock()
        #: Notified on every event, so waiters block instead of polling.
        self.changed = threading.Condition(self.lock)
        self.hosts: dict[str, SimHost] = {}
        self.subscribers: list[Subscriber] = []
        #: The images in the site's pools, by path (see ``SimVolume``).
        self.volumes: dict[str, SimVolume] = {}
        #: Disk content and open points in time (sparse files beside the state file).
        self.disks = DiskWorld(path)
        self._loaded_mtime: float | None = None

    def host(self, name: str) -> SimHost:
        with self.lock:
            if name not in self.hosts:
                self.hosts[name] = SimHost(
                    name=name,
                    uuid=str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"sim://{self.name}/{name}")),
                )
            return self.hosts[name]

    def emit(self, host: str, kind: EventKind, vm: SimVM, detail: str = "") -> None:
        event = Event(
            kind=kind,
            vm_uuid=vm.uuid,
            vm_name=vm.name,
            state=vm.state,
            reason=vm.reason,
            detail=detail,
        )
        for sub in list(self.subscribers):
            if sub.host == host:
                sub.queue.put(event)
        with self.changed:
            self.changed.notify_all()

    # -- persistence ----------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, *, save: bool = True) -> Iterator[None]:
        """Hold the lock; with persistence, also the file lock, reloading before and saving
        after (unless ``save=False``: a read), so that several processes (CLI invocations)
        share the site."""
        with self.lock:
            if self.path is None:
                yield
                return
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            with open(self.path + ".lock", "a") as lockfile:
                fcntl.flock(lockfile, fcntl.LOCK_EX)
                try:
                    self._reload()
                    yield
                    if save:
                        self._save()
                finally:
                    fcntl.flock(lockfile, fcntl.LOCK_UN)

    def _reload(self) -> None:
        assert self.path
        try:
            mtime = os.stat(self.path).st_mtime
        except FileNotFoundError:
            return
        if mtime == self._loaded_mtime:
            return
        with open(self.path) as f:
            data = json.load(f)
        self.hosts = {h["name"]: _host_from(h) for h in data.get("hosts", [])}
        self.volumes = {v["path"]: SimVolume(**v) for v in data.get("volumes", [])}
        self._loaded_mtime = mtime

    def _save(self) -> None:
        assert self.path
        data = {
            "version": 1,
            "hosts": [_host_to(h) for h in self.hosts.values()],
            "volumes": [attrs.asdict(v) for v in self.volumes.values()],
        }
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, default=str)
        os.replace(tmp, self.path)
        self._loaded_mtime = os.stat(self.path).st_mtime


_sites: dict[str, Site] = {}
_sites_lock = threading.Lock()


def get_site(name: str, path: str | None) -> Site:
    key = f"file:{os.path.abspath(path)}" if path else name
    with _sites_lock:
        if key not in _sites:
            _sites[key] = Site(name, path)
        return _sites[key]


def reset_sites() -> None:
    """Forget every in-process site (for tests that want a clean world)."""
    with _sites_lock:
        _sites.clear()


# -- JSON round trip ----------------------------------------------------------------------


def _ser(_inst: Any, _a: Any, value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, (PowerState, StateReason)):
        return value.value
    if isinstance(value, Resources):
        return attrs.asdict(value)
    return value


def _host_to(host: SimHost) -> dict[str, Any]:
    return attrs.asdict(host, value_serializer=_ser, recurse=True)


def _host_from(data: dict[str, Any]) -> SimHost:
    host = SimHost(
        name=data["name"],
        uuid=data["uuid"],
        maintenance=data.get("maintenance", False),
        failed=data.get("failed", False),
    )
    for uuid, raw in data["vms"].items():
        vm = SimVM(
            **{
                k: raw[k]
                for k in (
                    "uuid",
                    "name",
                    "vcpus",
                    "memory_mib",
                    "guest_os",
                    "has_os",
                    "description",
                    "current_snapshot",
                    "running_since",
                    "cpu_seconds",
                    "booted_at",
                    "next_device",
                )
            }
        )
        vm.firmware = raw.get("firmware", "bios")
        vm.disks = [SimDisk(**d) for d in raw["disks"]]
        vm.nics = [SimNic(**n) for n in raw["nics"]]
        vm.resources = Resources(**raw["resources"])
        vm.state = PowerState(raw["state"])
        vm.reason = StateReason(raw["reason"])
        for sid, s in raw["snapshots"].items():
            vm.snapshots[sid] = SimSnapshot(
                id=s["id"],
                name=s["name"],
                created=dt.datetime.fromisoformat(s["created"]),
                parent=s["parent"],
                with_memory=s["with_memory"],
                state=PowerState(s["state"]),
                description=s["description"],
                config=s["config"],
            )
        host.vms[uuid] = vm
    return host


def monotonic() -> float:
    return time.monotonic()
