"""``vmctl.Site``: several connections of one vendor planned over as one set of hosts.

A libvirtd manages one host, so a KVM connection alone has nowhere to move its VMs. A
``Site`` joins several connections of the same driver (many libvirtds) into one
``Hypervisor`` whose hosts are the members' hosts: ``site.hosts()``, ``plan_evacuation``,
``plan_rebalance``, ``plan_recovery`` and ``execute`` work on it as on a vCenter cluster or
a xapi pool, and a target may be a host of another connection.

The site's driver (``_SiteDriver``) implements the host interfaces of ``vmctl.spi`` over
the members' drivers, each called through its own connection's dispatcher (its deadlines,
reconnects). What crosses connections is the member driver's ``SiteMember``: moving a VM
to a peer connection (live or cold), the disks each VM uses and which of them a host
reaches (the shared-storage probe), and defining a VM from a saved definition.

For recovery, the site keeps what the last inventory read of each member (its host record,
and each VM's definition, disks and state) in vmctl's state directory
(``$VMCTL_STATE_DIR/site-members.json``, mode 0600; see ``_maintenance.state_dir``), so
the VMs of a member that stopped answering can be defined and started on another one.
Each recovery is recorded there too, with the failed member: when that member answers
again, the site reconciles it before using it (``_SiteDriver._reconcile``): the recovered
VMs it still defines are undefined there when stopped, reported as a split brain (and
never started or moved) when running; docs/hosts.md says what the user does then.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import json
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from . import _maintenance
from ._capabilities import Capability
from ._config import Timeouts
from ._connection import Connection
from ._deadline import Deadline
from ._errors import (
    ConnectionError,
    InvalidState,
    NotFound,
    NotSupported,
    OperationTimeout,
    ValidationError,
    VmctlError,
)
from ._hostspi import (
    HostInventory,
    HostMigration,
    HostRecord,
    HostRecovery,
    HostState,
    MoveMode,
    Placement,
)
from ._hypervisor import Hypervisor, offered_capabilities
from ._model import HostInfo, VMConfig, VMInfo, VMSpec
from ._sitespi import SiteMember, SiteVM
from ._state import PowerState, StateReason
from ._tasks import Task
from ._uri import URI
from .spi import Driver, GracefulPower, Migration

log = logging.getLogger("vmctl")

T = TypeVar("T")

#: Failures that make a member count as unreachable (its connection is gone and a
#: reconnect did not bring it back, or it did not answer in time).
_DOWN = (ConnectionError, OperationTimeout)


# -- the state store ------------------------------------------------------------------


def _store_path() -> str:
    return os.path.join(_maintenance.state_dir(), "site-members.json")


@contextlib.contextmanager
def _store(write: bool) -> Iterator[dict[str, Any]]:
    """The saved members (URI -> record), under an flock; written back with ``write``."""
    path = _store_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                try:
                    with open(path) as f:
                        data = json.load(f)
                except FileNotFoundError:
                    data = {}
                members = data.get("members", {}) if isinstance(data, dict) else {}
                if not isinstance(members, dict):
                    members = {}
                yield members
                if write:
                    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(fd, "w") as f:
                        json.dump({"version": 1, "members": members}, f, indent=1, sort_keys=True)
                    os.replace(tmp, path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    except (OSError, ValueError) as exc:
        raise VmctlError(f"cannot use vmctl's site records in {path}: {exc}") from exc


def _record_json(r: HostRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "name": r.name,
        "cpus": r.cpus,
        "cpu_mhz": r.cpu_mhz,
        "memory_mib": r.memory_mib,
    }


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# -- the site's driver ----------------------------------------------------------------


class _Absent(Driver, SiteMember):
    """A member that did not answer when the site was made: every call fails as its
    connection did (ConnectionError, sent=False), so the site lists it unreachable from
    its saved record and can recover its VMs."""

    name = "absent"

    def __init__(self, uri: str, why: str) -> None:
        self.uri = uri
        self.why = why

    def _gone(self) -> ConnectionError:
        return ConnectionError(
            f"site member {self.uri} did not answer when the site was made ({self.why})",
            sent=False,
        )

    @classmethod
    def open(cls, params: Any, *, deadline: Deadline) -> _Absent:
        raise NotSupported("an absent site member is not opened")

    def close(self) -> None:
        return None

    def host_info(self, *, deadline: Deadline) -> HostInfo:
        raise self._gone()

    def list_vms(self, *, deadline: Deadline) -> list[VMInfo]:
        raise self._gone()

    def get_vm(self, uuid: str, *, deadline: Deadline) -> VMInfo:
        raise self._gone()

    def get_config(self, uuid: str, *, deadline: Deadline) -> VMConfig:
        raise self._gone()

    def create_vm(self, spec: VMSpec, *, deadline: Deadline) -> VMInfo:
        raise self._gone()

    def delete_vm(self, uuid: str, *, deadline: Deadline) -> list[str]:
        raise self._gone()

    def start(self, uuid: str, *, deadline: Deadline) -> None:
        raise self._gone()

    def power_off(self, uuid: str, *, deadline: Deadline) -> None:
        raise self._gone()

    def site_inventory(
        self, uuids: Sequence[str] | None = None, *, deadline: Deadline
    ) -> dict[str, SiteVM]:
        raise self._gone()

    def reaches(self, locations: Sequence[str], *, deadline: Deadline) -> set[str]:
        raise self._gone()

    def move_to_peer(
        self, uuid: str, peer: Driver, *, mode: MoveMode, deadline: Deadline
    ) -> Task | None:
        raise self._gone()

    def restore_vm(self, definition: str, *, start: bool, deadline: Deadline) -> None:
        raise self._gone()

    def forget_vm(self, uuid: str, *, deadline: Deadline) -> None:
        raise self._gone()


class _Member:
    """One connection of the site, and what was last read of its host.

    Every read or change of the member goes through ``use`` (``call`` is its shorthand):
    a member not checked yet, or seen not answering since, is first reconciled with what
    the site recovered from it while it was down (``reconcile``: ``_SiteDriver._reconcile``),
    so no caller sees, starts or moves a VM there that now lives on another host.
    """

    def __init__(self, conn: Connection, reconcile: Callable[[_Member, Deadline], None]) -> None:
        self.uri = str(conn.uri)
        self.conn = conn
        driver = conn.driver
        assert isinstance(driver, SiteMember)
        self.member: SiteMember = driver
        self.record: HostRecord | None = None
        self.reconcile = reconcile
        #: Reconcile before the next use (set at first, and when a call finds it down).
        self.unsettled = True
        self._settling = threading.Lock()
        #: Recovered VMs that run here too (split brain): UUID -> what the user must do.
        self.split: dict[str, str] = {}
        self.warned: set[str] = set()

    def use(self, fn: Callable[..., T], *args: Any, deadline: Deadline) -> T:
        if self.unsettled:
            with self._settling:
                if self.unsettled:
                    try:
                        self.reconcile(self, deadline)
                    except _DOWN:
                        raise  # still down: the call itself would have failed so
                    except VmctlError as exc:  # tried again at the next use
                        log.warning("site member %s: could not reconcile (%s)", self.uri, exc)
        try:
            return fn(*args)
        except _DOWN:
            self.unsettled = True
            raise

    def call(self, what: str, fn: Callable[..., T], *args: Any, deadline: Deadline, **kw: Any) -> T:
        return self.use(
            functools.partial(self.raw, what, fn, *args, deadline=deadline, **kw),
            deadline=deadline,
        )

    def raw(self, what: str, fn: Callable[..., T], *args: Any, deadline: Deadline, **kw: Any) -> T:
        """A call without reconciling first (the reconciliation's own calls)."""
        return self.conn.dispatcher.call(what, fn, *args, deadline=deadline, **kw)

    @property
    def host_id(self) -> str:
        assert self.record is not None
        return self.record.id


class _SiteDriver(Driver, Migration, GracefulPower, HostInventory, HostMigration, HostRecovery):
    """The host interfaces over several member connections (see the module)."""

    name = "site"
    thread_safe = True

    def __init__(self, members: Sequence[Connection], owned: Sequence[Hypervisor]) -> None:
        self.members = [_Member(conn, self._reconcile) for conn in members]
        self._owned = list(owned)

    # -- opening: a site is made by vmctl.Site, never by connect() -------------------------

    @classmethod
    def open(cls, params: Any, *, deadline: Deadline) -> _SiteDriver:
        raise NotSupported("a site is made with vmctl.Site([...]), not vmctl.connect()")

    def close(self) -> None:
        for hv in self._owned:
            with contextlib.suppress(Exception):
                hv.close()

    def narrow_capabilities(self, offered: frozenset[Capability]) -> frozenset[Capability]:
        """A live or cold move between members, and asking a guest (the core's restart
        moves), need every member to do it."""
        moves = {
            Capability.MIGRATE_LIVE,
            Capability.MIGRATE_COLD,
            Capability.SHUTDOWN,
            Capability.REBOOT,
        }
        keep = {c for c in offered if c not in moves}
        live = [m for m in self.members if not isinstance(m.conn.driver, _Absent)]
        keep |= {c for c in moves & offered if all(c in m.conn.capabilities for m in live)}
        return frozenset(keep)

    # -- members and hosts -----------------------------------------------------------------

    def prime(self, deadline: Deadline) -> None:
        """Read every member's host, or take the saved record of one that does not answer
        (ValidationError for two members that are the same host)."""
        with _store(write=False) as saved:
            hosts = {m.uri: saved.get(m.uri, {}).get("host") for m in self.members}
        for m in self.members:  # without the lock: reading a member may reconcile it
            try:
                m.record = self._read_record(m, deadline)
            except _DOWN as exc:
                old = hosts[m.uri]
                if not old:
                    raise
                log.warning("site member %s does not answer (%s): its saved host", m.uri, exc)
                m.record = HostRecord(state=HostState.UNREACHABLE, **old)
        ids = [m.host_id for m in self.members]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            uris = [m.uri for m in self.members if m.host_id in dup]
            raise ValidationError(
                f"site members {', '.join(uris)} are the same host ({', '.join(sorted(dup))})",
                field="members",
            )

    def _read_record(self, m: _Member, deadline: Deadline) -> HostRecord:
        from ._hosts import read_records

        records = m.use(read_records, m.conn, deadline, deadline=deadline)
        if len(records) != 1:
            raise NotSupported(
                f"site member {m.uri} manages {len(records)} hosts: a site joins "
                "connections of one host each"
            )
        return records[0]

    def _by_host(self, host_id: str) -> _Member:
        for m in self.members:
            if m.host_id == host_id:
                return m
        raise NotFound(f"no host {host_id!r} in this site")

    def _names(self) -> dict[str, str]:
        """Host id -> the name shown: the host's own, or with its URI where two members
        share one (two libvirtds on one machine report one hostname)."""
        raw = {m.host_id: (m.record.name if m.record else m.uri) for m in self.members}
        values = list(raw.values())
        out = {}
        for m in self.members:
            name = raw[m.host_id]
            if values.count(name) > 1:
                name = f"{name}@{m.conn.uri.host or 'local'}"
            out[m.host_id] = name
        return out

    def list_hosts(self, *, deadline: Deadline) -> list[HostRecord]:
        names = self._names()
        read: dict[str, HostRecord | None] = {}
        for m in self.members:  # no lock held meanwhile: a member may take its time
            try:
                r = self._read_record(m, deadline)
            except _DOWN as exc:
                log.info("site member %s does not answer: %s", m.uri, exc)
                read[m.uri] = None
                continue
            if r.id != m.host_id:
                raise VmctlError(
                    f"site member {m.uri} is another host now ({r.id}, was {m.host_id}): "
                    "make a new Site"
                )
            m.record = read[m.uri] = r
        out = []
        with _store(write=True) as saved:
            for m in self.members:
                found = read[m.uri]
                entry = saved.setdefault(m.uri, {})
                if found is None:
                    assert m.record is not None
                    r = HostRecord(
                        id=m.record.id,
                        name=m.record.name,
                        state=HostState.UNREACHABLE,
                        cpus=m.record.cpus,
                        cpu_mhz=m.record.cpu_mhz,
                        memory_mib=m.record.memory_mib,
                        vm_count=len(entry.get("vms", {})),
                    )
                else:
                    r = found
                    entry["host"] = _record_json(r)
                    entry.pop("failed", None)  # it answers: not failed (any more)
                out.append(
                    HostRecord(
                        id=r.id,
                        name=names[r.id],
                        state=r.state,
                        cpus=r.cpus,
                        cpu_mhz=r.cpu_mhz,
                        memory_mib=r.memory_mib,
                        memory_used_mib=r.memory_used_mib,
                        cpu_percent=r.cpu_percent,
                        vm_count=r.vm_count,
                    )
                )
        return out

    def _live_inventory(
        self, deadline: Deadline
    ) -> tuple[dict[str, list[Placement]], dict[str, dict[str, SiteVM]], set[str]]:
        """Placements and site inventory of each member that answers (by host id), and
        the ids of those that do not."""
        from ._hosts import read_placements

        placements: dict[str, list[Placement]] = {}
        inventory: dict[str, dict[str, SiteVM]] = {}
        down: set[str] = set()
        for m in self.members:
            try:
                placements[m.host_id] = m.use(read_placements, m.conn, deadline, deadline=deadline)
                inventory[m.host_id] = m.call(
                    f"site inventory of {m.uri}", m.member.site_inventory, deadline=deadline
                )
            except _DOWN as exc:
                log.info("site member %s does not answer: %s", m.uri, exc)
                placements.pop(m.host_id, None)
                down.add(m.host_id)
        return placements, inventory, down

    def _save(
        self, inventory: Mapping[str, Mapping[str, SiteVM]], infos: dict[str, VMInfo]
    ) -> None:
        with _store(write=True) as saved:
            for m in self.members:
                vms = inventory.get(m.host_id)
                if vms is None:
                    continue
                entry = saved.setdefault(m.uri, {})
                entry["host"] = _record_json(m.record) if m.record else entry.get("host")
                entry["saved"] = _now()
                entry["vms"] = {
                    uuid: self._vm_json(infos[uuid], vm)
                    for uuid, vm in vms.items()
                    if uuid in infos
                }

    @staticmethod
    def _vm_json(info: VMInfo, vm: SiteVM) -> dict[str, Any]:
        return {
            "name": info.name,
            "state": info.state.value,
            "vcpus": info.vcpus,
            "memory_mib": info.memory_mib,
            "definition": vm.definition,
            "disks": list(vm.disks),
            "pinned": vm.pinned,
        }

    def _resave(self, uuid: str, m: _Member, deadline: Deadline) -> None:
        """Record that the VM is on ``m`` now (after a move or a restart there), so that a
        failure of ``m`` before the next plan still finds it. A failure to read it back is
        logged: the next plan reads every member again."""
        try:
            info = m.call(f"read VM {uuid}", m.conn.driver.get_vm, uuid, deadline=deadline)
            vms = m.call(
                f"site inventory of {m.uri}", m.member.site_inventory, [uuid], deadline=deadline
            )
        except VmctlError as exc:
            log.warning("the site could not record VM %s on %s (%s)", uuid, m.uri, exc)
            return
        with _store(write=True) as saved:
            for other in self.members:
                saved.get(other.uri, {}).get("vms", {}).pop(uuid, None)
            if uuid in vms:
                entry = saved.setdefault(m.uri, {})
                entry.setdefault("vms", {})[uuid] = self._vm_json(info, vms[uuid])

    @staticmethod
    def _saved_info(uuid: str, rec: Mapping[str, Any], failed: bool, host: str) -> VMInfo:
        state = PowerState(rec["state"])
        reason = StateReason.UNKNOWN
        if failed and state is not PowerState.STOPPED:
            state, reason = PowerState.STOPPED, StateReason.FAILED
        return VMInfo(
            uuid=uuid,
            name=rec["name"],
            state=state,
            reason=reason,
            vcpus=int(rec["vcpus"]),
            memory_mib=int(rec["memory_mib"]),
            host=host,
        )

    def list_placements(self, *, deadline: Deadline) -> list[Placement]:
        placements, inventory, down = self._live_inventory(deadline)
        infos = {p.vm.uuid: p.vm for ps in placements.values() for p in ps}
        self._save(inventory, infos)
        names = self._names()
        # What each answering member reaches of the others' disks (the shared-storage probe).
        disks: dict[str, tuple[str, ...]] = {}
        pinned: dict[str, str | None] = {}
        no_live: dict[str, str | None] = {}  # a VM of a member that is down runs nowhere
        owner: dict[str, str] = {}
        for host_id, vms in inventory.items():
            for uuid, vm in vms.items():
                disks[uuid], pinned[uuid], owner[uuid] = vm.disks, vm.pinned, host_id
                no_live[uuid] = vm.live_blocker
        with _store(write=False) as saved:
            for m in self.members:
                if m.host_id not in down:
                    continue
                entry = saved.get(m.uri, {})
                failed = bool(entry.get("failed"))
                for uuid, rec in entry.get("vms", {}).items():
                    if uuid in infos:
                        continue  # it runs elsewhere now (recovered, or moved)
                    info = self._saved_info(uuid, rec, failed, names[m.host_id])
                    infos[uuid] = info
                    disks[uuid] = tuple(rec.get("disks", ()))
                    pinned[uuid] = rec.get("pinned")
                    owner[uuid] = m.host_id
        reached: dict[str, set[str]] = {}
        for m in self.members:
            if m.host_id in down:
                continue
            theirs = sorted({d for u, ds in disks.items() if owner[u] != m.host_id for d in ds})
            try:
                reached[m.host_id] = (
                    m.call(f"storage probe on {m.uri}", m.member.reaches, theirs, deadline=deadline)
                    if theirs
                    else set()
                )
            except _DOWN as exc:  # gone since its inventory: it reaches nothing now
                log.info("site member %s does not answer: %s", m.uri, exc)
        split = {u: why for m in self.members for u, why in m.split.items()}
        out = []
        for uuid, info in sorted(infos.items()):
            if uuid in split:  # on every host that has it, pinned there: nothing moves it
                out += [
                    Placement(vm=p.vm, host_id=h, memory_mib=p.memory_mib, pinned=split[uuid])
                    for h, ps in placements.items()
                    for p in ps
                    if p.vm.uuid == uuid
                ]
                continue
            home = owner.get(uuid)
            if home is None:  # listed but not in the site inventory (defined meanwhile)
                continue
            others = [h for h in reached if h != home]
            local = tuple(
                d for d in disks[uuid] if not others or any(d not in reached[h] for h in others)
            )
            out.append(
                Placement(
                    vm=info,
                    host_id=home,
                    memory_mib=info.memory_mib,
                    local_disks=local,
                    pinned=pinned[uuid],
                    live_blocker=no_live.get(uuid),
                )
            )
        return out

    def locate_vm(self, uuid: str, *, deadline: Deadline) -> tuple[str | None, VMInfo]:
        m, info, _saved = self._locate(uuid, deadline)
        return m.host_id, info

    def _locate(
        self, uuid: str, deadline: Deadline
    ) -> tuple[_Member, VMInfo, tuple[_Member, Mapping[str, Any], bool] | None]:
        """Where the VM is: a member that answers and has it, else the saved record of a
        member that does not answer (then also returned). NotFound otherwise."""
        self._settle(deadline)
        for m in self.members:
            try:
                info = m.call(f"locate VM {uuid}", m.conn.driver.get_vm, uuid, deadline=deadline)
            except (NotFound, *_DOWN):
                continue
            return m, info, None
        found = self._saved(uuid)
        if found is None:
            raise NotFound(f"no VM with UUID {uuid} on the site's hosts")
        m, rec, failed = found
        return m, self._saved_info(uuid, rec, failed, self._names()[m.host_id]), found

    def _saved(self, uuid: str) -> tuple[_Member, Mapping[str, Any], bool] | None:
        """The saved record of a VM of a member that does not answer, if any."""
        with _store(write=False) as saved:
            candidates = [
                (m, rec, bool(entry.get("failed")))
                for m in self.members
                for entry in [saved.get(m.uri, {})]
                for rec in [entry.get("vms", {}).get(uuid)]
                if rec is not None
            ]
        for m, rec, failed in candidates:  # asked without the lock held
            if not self._answers(m):
                return m, rec, failed
        return None

    def _answers(self, m: _Member) -> bool:
        try:
            self._read_record(m, Deadline.after(m.conn.timeouts.read_s))
        except _DOWN:
            return False
        return True

    def move_to_host(
        self, uuid: str, host_id: str, *, mode: MoveMode, deadline: Deadline
    ) -> Task | None:
        target = self._by_host(host_id)
        source, info, found = self._locate(uuid, deadline)
        self._refuse_split(uuid)
        if source is target:
            return None
        if found is not None:  # its host is down: only a recovery moves it
            if mode is not MoveMode.COLD or not found[2]:
                raise InvalidState(
                    f"VM {info.name!r}: its host {source.uri} does not answer (recover it "
                    "with plan_recovery)"
                )
            self._restore(uuid, found, target, start=False, deadline=deadline)
            return None
        what = f"move VM {info.name!r} from {source.uri} to {target.uri} ({mode.value})"
        task = source.call(
            what,
            source.member.move_to_peer,
            uuid,
            target.conn.driver,
            mode=mode,
            deadline=deadline,
            idempotent=False,
        )
        if task is None:  # done: the site's records say where it is now
            self._resave(uuid, target, deadline)
        return task

    # -- recovery ------------------------------------------------------------------------

    def fence_proof(self, host_id: str, *, deadline: Deadline) -> str | None:
        # A member that stopped answering proves nothing about its VMs (a cut management
        # network leaves them running); see docs/hosts.md for what a lock manager could.
        return None

    def declare_failed(self, host_id: str, *, deadline: Deadline) -> None:
        m = self._by_host(host_id)
        if self._answers(m):
            raise InvalidState(f"site member {m.uri} answers: it is not declared failed")
        with _store(write=True) as saved:
            entry = saved.setdefault(m.uri, {})
            entry["failed"] = _now()
        log.warning("site member %s declared failed: its VMs count as stopped", m.uri)

    def restart_on_host(self, uuid: str, host_id: str, *, deadline: Deadline) -> None:
        target = self._by_host(host_id)
        found = self._saved(uuid)
        if found is None:
            where, info = self.locate_vm(uuid, deadline=deadline)
            if where == host_id and info.state is PowerState.RUNNING:
                return
            raise InvalidState(f"VM {info.name!r} is not on a failed host of this site")
        if not found[2]:
            raise InvalidState(f"VM {uuid}: its host {found[0].uri} was not declared failed")
        self._restore(uuid, found, target, start=True, deadline=deadline)

    def _restore(
        self,
        uuid: str,
        found: tuple[_Member, Mapping[str, Any], bool],
        target: _Member,
        *,
        start: bool,
        deadline: Deadline,
    ) -> None:
        source, rec, _failed = found
        what = f"define VM {rec['name']!r} of failed host {source.uri} on {target.uri}"
        # Recorded first: if the host comes back, its copy is removed only once another
        # member is found to have the VM (a define that failed leaves it where it was).
        with _store(write=True) as saved:
            recovered = saved.setdefault(source.uri, {}).setdefault("recovered", {})
            recovered[uuid] = {"name": rec["name"], "target": target.uri, "at": _now()}
        target.call(
            what,
            target.member.restore_vm,
            rec["definition"],
            start=start,
            deadline=deadline,
            idempotent=False,
        )
        self._resave(uuid, target, deadline)

    # -- a failed member that answers again ------------------------------------------------

    def _reconcile(self, m: _Member, deadline: Deadline) -> None:
        """Before ``m`` is used again after it did not answer: each VM the site recovered
        from it that it still defines is undefined there when it is stopped there and
        defined on another member (``SiteMember.forget_vm``: disks kept); one that runs
        there too is left alone, warned about and refused to every start and move (a split
        brain: ``m.split``) until one copy is gone. Records done with are dropped; ConnectionError
        when ``m`` does not answer (then nothing is done)."""
        with _store(write=False) as saved:
            recovered = dict(saved.get(m.uri, {}).get("recovered", {}))
        split: dict[str, str] = {}
        done = []
        pending = False
        for uuid, rec in recovered.items():
            outcome = self._reconcile_vm(m, uuid, rec, deadline)
            if outcome is None:
                done.append(uuid)
            elif outcome == "":
                pending = True
            else:
                split[uuid] = outcome
        if done:
            with _store(write=True) as saved:
                entry = saved.get(m.uri, {})
                left = entry.get("recovered", {})
                for uuid in done:
                    left.pop(uuid, None)
                if not left:
                    entry.pop("recovered", None)
        m.split = split
        m.unsettled = bool(split)  # checked at every use until resolved
        if pending:
            log.warning(
                "site member %s answers again, but not every other member does: the VMs "
                "recovered from it are checked again by the next Site",
                m.uri,
            )

    def _reconcile_vm(
        self, m: _Member, uuid: str, rec: Mapping[str, Any], deadline: Deadline
    ) -> str | None:
        """One recovered VM on the returning member ``m``: None when done with (gone from
        ``m``, or undefined there now), "" when it must wait (another member does not
        answer), else why it is a split brain."""
        try:
            here = m.raw(f"read VM {uuid}", m.conn.driver.get_vm, uuid, deadline=deadline)
        except NotFound:
            return None
        name = rec.get("name", uuid)
        others = sorted(
            (o for o in self.members if o is not m), key=lambda o: o.uri != rec.get("target")
        )
        elsewhere = None
        unanswered = False
        for o in others:
            try:
                o.raw(f"locate VM {uuid}", o.conn.driver.get_vm, uuid, deadline=deadline)
            except NotFound:
                continue
            except _DOWN:
                unanswered = True
                continue
            elsewhere = o
            break
        if elsewhere is None:
            if unanswered:
                return ""
            log.warning(
                "site member %s answers again: VM %r (%s), whose recovery from it began at "
                "%s, is on no other member now (the recovery failed, or it was deleted "
                "since): left defined there",
                m.uri,
                name,
                uuid,
                rec.get("at"),
            )
            return None
        if here.state not in (PowerState.RUNNING, PowerState.PAUSED):
            try:
                m.raw(f"undefine VM {uuid}", m.member.forget_vm, uuid, deadline=deadline)
            except InvalidState:
                pass  # it runs there after all (an active suspended state)
            else:
                log.warning(
                    "site member %s answers again: VM %r (%s) was still defined there "
                    "(%s); it runs from %s since its recovery at %s: undefined on %s (its "
                    "disks kept, autostart off)",
                    m.uri,
                    name,
                    uuid,
                    here.state.value,
                    elsewhere.uri,
                    rec.get("at"),
                    m.uri,
                )
                return None
        why = (
            f"split brain: VM {name!r} ({uuid}) runs on {m.uri}, a member that was declared "
            f"failed, and is also defined on {elsewhere.uri}, where it was recovered at "
            f"{rec.get('at')}; both may have written its disks. vmctl starts and moves it "
            f"nowhere until one copy is gone: power off the copy on {m.uri} (check the "
            f"disks from the copy you keep), and the next site operation undefines it there"
        )
        if uuid not in m.warned:
            m.warned.add(uuid)
            log.warning("%s", why)
        return why

    def _settle(self, deadline: Deadline) -> None:
        """Reconcile every member that needs it (those that do not answer stay as they are)."""
        for m in self.members:
            if m.unsettled:
                with contextlib.suppress(*_DOWN):
                    m.use(lambda: None, deadline=deadline)

    def _refuse_split(self, uuid: str) -> None:
        for m in self.members:
            if uuid in m.split:
                raise InvalidState(m.split[uuid])

    # -- a Driver: the VMs of every member ------------------------------------------------

    def _owner(self, uuid: str, deadline: Deadline) -> _Member:
        self._settle(deadline)
        for m in self.members:
            try:
                m.call(f"locate VM {uuid}", m.conn.driver.get_vm, uuid, deadline=deadline)
            except (NotFound, *_DOWN):
                continue
            return m
        raise NotFound(f"no VM with UUID {uuid} on the site's hosts that answer")

    def host_info(self, *, deadline: Deadline) -> HostInfo:
        infos = [
            m.call("host info", m.conn.driver.host_info, deadline=deadline) for m in self.members
        ]
        free = [i.free_memory_mib for i in infos]
        return HostInfo(
            name="site of " + ", ".join(m.uri for m in self.members),
            hypervisor=infos[0].hypervisor,
            version=infos[0].version,
            cpus=sum(i.cpus for i in infos),
            cpu_mhz=min(i.cpu_mhz for i in infos),
            memory_mib=sum(i.memory_mib for i in infos),
            free_memory_mib=None if None in free else sum(f or 0 for f in free),
            vm_count=sum(i.vm_count or 0 for i in infos),
        )

    def list_vms(self, *, deadline: Deadline) -> list[VMInfo]:
        out: list[VMInfo] = []
        for m in self.members:
            try:
                out += m.call("list VMs", m.conn.driver.list_vms, deadline=deadline)
            except _DOWN as exc:
                log.warning(
                    "site member %s does not answer, its VMs are not listed: %s", m.uri, exc
                )
        return out

    def get_vm(self, uuid: str, *, deadline: Deadline) -> VMInfo:
        return self.locate_vm(uuid, deadline=deadline)[1]

    def get_config(self, uuid: str, *, deadline: Deadline) -> VMConfig:
        m = self._owner(uuid, deadline)
        return m.call("get config", m.conn.driver.get_config, uuid, deadline=deadline)

    def create_vm(self, spec: VMSpec, *, deadline: Deadline) -> VMInfo:
        raise NotSupported("create a VM on one of the site's connections (site.members)")

    def delete_vm(self, uuid: str, *, deadline: Deadline) -> list[str]:
        m = self._owner(uuid, deadline)
        return m.call("delete VM", m.conn.driver.delete_vm, uuid, deadline=deadline)

    def start(self, uuid: str, *, deadline: Deadline) -> Any:
        m = self._owner(uuid, deadline)
        self._refuse_split(uuid)
        return m.call("start VM", m.conn.driver.start, uuid, deadline=deadline)

    def power_off(self, uuid: str, *, deadline: Deadline) -> Any:
        m = self._owner(uuid, deadline)
        return m.call("power off VM", m.conn.driver.power_off, uuid, deadline=deadline)

    def shutdown(self, uuid: str, *, deadline: Deadline) -> Any:
        m = self._owner(uuid, deadline)
        driver = m.conn.driver
        assert isinstance(driver, GracefulPower)
        return m.call("shut down VM", driver.shutdown, uuid, deadline=deadline)

    def reboot(self, uuid: str, *, deadline: Deadline) -> Any:
        m = self._owner(uuid, deadline)
        driver = m.conn.driver
        assert isinstance(driver, GracefulPower)
        return m.call("reboot VM", driver.reboot, uuid, deadline=deadline)

    def migrate_vm(self, uuid: str, target: Driver, *, live: bool, deadline: Deadline) -> Any:
        m = self._owner(uuid, deadline)
        self._refuse_split(uuid)
        driver = m.conn.driver
        assert isinstance(driver, Migration)
        return m.call("migrate VM", driver.migrate_vm, uuid, target, live=live, deadline=deadline)


def _close_site(connection: Connection) -> None:
    connection.dispatcher.close()
    with contextlib.suppress(Exception):
        connection.driver.close()


class Site(Hypervisor):
    """Several connections of one driver (e.g. many libvirtds) as one set of hosts.

    ``members``: URIs (connected here with ``connect_options``, closed with the site) or
    ``Hypervisor`` objects (the caller's: left open). Every member must be of the same
    driver, one that can form a site (KVM), and each a different host. ``site.hosts()``
    lists every member's host; ``vmctl.plan_evacuation``, ``plan_rebalance``,
    ``plan_recovery`` and ``execute`` take the site or its hosts, and move VMs between the
    members (for KVM: a live migration, or define on the target + undefine on the source
    for a stopped VM). A member that does not answer is shown unreachable, from the host
    record saved when it last answered (the site reads each member when it is made; a
    member that has never answered is an error).
    """

    def __init__(
        self,
        members: Sequence[str | Hypervisor],
        *,
        max_concurrency: int = 8,
        **connect_options: Any,
    ) -> None:
        from ._connect import connect

        if isinstance(members, (str, bytes)) or not isinstance(members, Sequence) or not members:
            raise ValidationError("give a list of URIs or connections", field="members")
        if not all(isinstance(m, (str, Hypervisor)) for m in members):
            raise ValidationError("give a list of URIs or connections", field="members")
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
            raise ValidationError("must be an integer >= 1", field="max_concurrency")
        if max_concurrency < 1:
            raise ValidationError("must be an integer >= 1", field="max_concurrency")
        hvs: list[Hypervisor] = []
        owned: list[Hypervisor] = []
        slots: list[Connection | None] = []
        absent: list[tuple[int, str, VmctlError]] = []
        try:
            for m in members:
                if isinstance(m, Hypervisor):
                    hvs.append(m)
                    slots.append(m._conn)
                    continue
                try:
                    hv = connect(m, **connect_options)
                except _DOWN as exc:  # recovering it needs what was saved of it
                    absent.append((len(slots), str(URI.parse(m)), exc))
                    slots.append(None)  # filled in below
                    continue
                owned.append(hv)
                hvs.append(hv)
                slots.append(hv._conn)
            if not hvs:
                raise absent[0][2]  # no member answers
            drivers = {hv.driver_name for hv in hvs}
            if len(drivers) != 1:
                raise ValidationError(
                    f"a site joins connections of one driver, got {', '.join(sorted(drivers))}",
                    field="members",
                )
            for hv in hvs:
                if not isinstance(hv._conn.driver, SiteMember):
                    raise ValidationError(
                        f"the {hv.driver_name} driver cannot form a site (its connections "
                        "already manage their hosts together, or it has no site support)",
                        field="members",
                    )
            timeouts = hvs[0].timeouts if hvs else Timeouts()
            with _store(write=False) as saved:
                for index, uri_text, err in absent:
                    if not saved.get(uri_text, {}).get("host"):
                        raise err  # never read: nothing to show or recover of it
                    log.warning("site member %s does not answer (%s)", uri_text, err)
                    slots[index] = Connection(
                        _Absent(uri_text, str(err)),
                        URI.parse(uri_text),
                        timeouts,
                        frozenset(),
                        1,
                    )
            conns = [c for c in slots if c is not None]
            uris = [str(c.uri) for c in conns]
            if len(set(uris)) != len(uris):
                raise ValidationError("a connection is named twice", field="members")
            driver = _SiteDriver(conns, owned)
            driver.prime(Deadline.after(timeouts.read_s))
            uri = URI(scheme="site", params={"members": " ".join(uris)})
            self._conn = Connection(
                driver, uri, timeouts, offered_capabilities(driver), max_concurrency
            )
        except BaseException:
            for hv in owned:
                hv.close()
            raise
        self._members = tuple(hvs)
        self._finalizer = weakref.finalize(self, _close_site, self._conn)

    @property
    def members(self) -> tuple[Hypervisor, ...]:
        """The connections of the site, in the order given (without a member that did not
        answer when the site was made: it is listed unreachable, from its saved record)."""
        return self._members

    def __enter__(self) -> Site:
        return self

    def __repr__(self) -> str:
        return f"<Site {' '.join(str(m.uri) for m in self._members)}>"
