"""The pool's hosts for ``XenDriver`` (a mixin): ``HostInventory``, ``HostMigration`` and
``HostMaintenance`` over XenAPI.

* hosts: ``host.get_all_records`` and ``host_metrics.get_all_records`` (memory_total /
  memory_free, ``live``), ``host_cpu.get_all_records`` (``utilisation``) only when a host
  lists its CPUs, and one ``VM.get_all_records`` for the VM counts. A host whose metrics say
  not ``live`` is unreachable; a disabled host (``enabled`` false) is in maintenance;
* placements: one ``VM.get_all_records``, ``VBD.get_all_records``, ``VDI.get_all_records``
  and ``SR.get_all_records``. A VM is on its ``resident_on`` host, or for a halted VM its
  ``affinity`` (its home: where vmctl and xapi start it); the memory it takes is xapi's
  footprint (``memory_dynamic_max + memory_overhead``, memory_check.ml); a disk on an SR that
  is not ``shared`` is local; a VM with PCI passthrough, a vGPU, or migration in its
  ``blocked_operations`` is pinned; a running VM whose ``allowed_operations`` lack
  ``pool_migrate`` cannot move live now (xapi_vm_lifecycle.ml: an HVM guest without PV
  drivers);
* moves: live ``VM.pool_migrate`` (then ``VM.set_affinity``), cold ``VM.set_affinity``
  after checking the target reaches the disks, restart ``VM.clean_shutdown``,
  ``VM.set_affinity``, ``VM.start_on``; each task waited for with the core's loop
  (``finish_task``);
* maintenance: ``host.disable`` / ``host.enable`` (xapi then refuses to start or migrate a
  VM there: HOST_DISABLED).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from vmctl import InvalidState, NotFound, PowerState, VmctlError, VMInfo
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
    finish_task,
)

from ._errors import power_state
from ._records import as_int as _int
from ._records import is_vm as _is_vm
from ._session import NULL

MiB = 1024 * 1024
#: blocked_operations that keep a VM on its host.
_MIGRATIONS = ("pool_migrate", "migrate_send")


class XenHosts(HostInventory, HostMigration, HostMaintenance):
    """The pool's hosts (see the module)."""

    #: A restart move is one call here (clean_shutdown, set_affinity, start_on).
    restarts_in_place = True

    if TYPE_CHECKING:
        _hosts: dict[str, dict[str, Any]]

        def _call(self, what: str, method: str, *args: Any, deadline: Deadline) -> Any: ...
        def _run(self, what: str, method: str, *args: Any, deadline: Deadline) -> Any: ...
        def _refresh_hosts(self, deadline: Deadline) -> None: ...
        def _mapped(self, what: str) -> contextlib.AbstractContextManager[None]: ...
        def _unchanged(self) -> contextlib.AbstractContextManager[None]: ...
        def _vm(self, uuid: str, deadline: Deadline) -> tuple[str, dict[str, Any]]: ...
        def _info(self, rec: dict[str, Any], deadline: Deadline) -> VMInfo: ...
        def _check_storage(
            self, rec: dict[str, Any], host: str, what: str, deadline: Deadline
        ) -> None: ...
        def _assert_guest_can(
            self, ref: str, rec: dict[str, Any], op: str, verb: str, deadline: Deadline
        ) -> None: ...

    # -- inventory ------------------------------------------------------------------------

    @staticmethod
    def _home(rec: dict[str, Any], hosts: dict[str, Any]) -> str | None:
        """The host ref a VM is on: where it runs, else its affinity."""
        for key in ("resident_on", "affinity"):
            ref = rec.get(key, NULL)
            if ref not in ("", NULL) and ref in hosts:
                return str(ref)
        return None

    def list_hosts(self, *, deadline: Deadline) -> list[HostRecord]:
        what = "list the pool's hosts"
        hosts = self._call(what, "host.get_all_records", deadline=deadline)
        metrics = self._call(what, "host_metrics.get_all_records", deadline=deadline)
        vms = self._call(what, "VM.get_all_records", deadline=deadline)
        cpus: dict[str, Any] = {}
        if any(h.get("host_CPUs") for h in hosts.values()):
            cpus = self._call(what, "host_cpu.get_all_records", deadline=deadline)
        counts: dict[str, int] = {}
        for rec in vms.values():
            if _is_vm(rec):
                home = self._home(rec, hosts)
                if home is not None:
                    counts[home] = counts.get(home, 0) + 1
        out = []
        for ref, h in hosts.items():
            m = metrics.get(h.get("metrics"), {})
            total, free = _int(m.get("memory_total")), _int(m.get("memory_free"))
            if m and not m.get("live", True):
                state = HostState.UNREACHABLE
            elif not h.get("enabled", True):
                state = HostState.MAINTENANCE
            else:
                state = HostState.CONNECTED
            loads = [
                float(cpus[c].get("utilisation", 0.0)) for c in h.get("host_CPUs", []) if c in cpus
            ]
            info = h.get("cpu_info", {})
            out.append(
                HostRecord(
                    id=str(h["uuid"]),
                    name=str(h["name_label"]),
                    state=state,
                    cpus=_int(info.get("cpu_count")) or len(h.get("host_CPUs", [])),
                    cpu_mhz=int(float(info.get("speed", "0") or 0)),
                    memory_mib=total // MiB,
                    memory_used_mib=(total - free) // MiB if m else None,
                    cpu_percent=round(100.0 * sum(loads) / len(loads), 2) if loads else None,
                    vm_count=counts.get(ref, 0),
                )
            )
        return out

    def list_placements(self, *, deadline: Deadline) -> list[Placement]:
        what = "list the VMs' placements"
        hosts = self._call(what, "host.get_all_records", deadline=deadline)
        vms = self._call(what, "VM.get_all_records", deadline=deadline)
        vbds = self._call(what, "VBD.get_all_records", deadline=deadline)
        vdis = self._call(what, "VDI.get_all_records", deadline=deadline)
        srs = self._call(what, "SR.get_all_records", deadline=deadline)
        out = []
        for rec in vms.values():
            if not _is_vm(rec):
                continue
            home = self._home(rec, hosts)
            local = []
            for vbd in rec.get("VBDs", []):
                b = vbds.get(vbd, {})
                vdi = vdis.get(b.get("VDI"), {})
                if b.get("type") != "Disk" or not vdi:
                    continue
                sr = srs.get(vdi.get("SR"), {})
                if not sr.get("shared"):
                    local.append(
                        f"{b.get('userdevice', '?')} ({vdi.get('name_label')!r} on SR "
                        f"{sr.get('name_label')!r})"
                    )
            pinned = None
            if rec.get("attached_PCIs"):
                pinned = f"{len(rec['attached_PCIs'])} PCI passthrough device(s) attached"
            elif rec.get("VGPUs"):
                pinned = "a vGPU"
            else:
                blocked = [op for op in _MIGRATIONS if op in rec.get("blocked_operations", {})]
                if blocked:
                    pinned = f"blocked_operations forbids {', '.join(blocked)}"
            live_blocker = None
            running = rec.get("power_state") == "Running"
            if running and "pool_migrate" not in rec.get("allowed_operations", []):
                live_blocker = (
                    "xapi does not allow pool_migrate now (an HVM guest without PV drivers, "
                    "or another operation in progress)"
                )
            out.append(
                Placement(
                    vm=self._vm_info(rec, hosts),
                    host_id=str(hosts[home]["uuid"]) if home else None,
                    memory_mib=-(
                        -(_int(rec.get("memory_dynamic_max")) + _int(rec.get("memory_overhead")))
                        // MiB
                    ),
                    local_disks=tuple(local),
                    pinned=pinned,
                    live_blocker=live_blocker,
                )
            )
        return out

    @staticmethod
    def _vm_info(rec: dict[str, Any], hosts: dict[str, Any]) -> VMInfo:
        state = power_state(str(rec.get("power_state", "")))
        home = XenHosts._home(rec, hosts)
        return VMInfo(
            uuid=str(rec["uuid"]),
            name=str(rec["name_label"]),
            state=state,
            vcpus=_int(rec.get("VCPUs_at_startup")),
            memory_mib=_int(rec.get("memory_static_max")) // MiB,
            host=str(hosts[home]["name_label"]) if home else None,
        )

    def locate_vm(self, uuid: str, *, deadline: Deadline) -> tuple[str | None, VMInfo]:
        _ref, rec = self._vm(uuid, deadline)
        info = self._info(rec, deadline)
        home = self._home(rec, self._hosts)
        known = (rec.get(k, NULL) for k in ("resident_on", "affinity"))
        if any(r not in ("", NULL) and r not in self._hosts for r in known):
            with self._mapped("read the pool's hosts"):
                self._refresh_hosts(deadline)
            home = self._home(rec, self._hosts)
        return (str(self._hosts[home]["uuid"]) if home else None), info

    # -- moves and maintenance ------------------------------------------------------------

    def _host_ref(self, host_id: str, deadline: Deadline) -> tuple[str, dict[str, Any]]:
        """The host's ref and its record read now (its ``enabled`` flag is current)."""
        with self._mapped("read the pool's hosts"):
            self._refresh_hosts(deadline)
        for ref, rec in self._hosts.items():
            if host_id in (rec.get("uuid"), rec.get("name_label")):
                return ref, rec
        raise NotFound(f"no host {host_id!r} in the pool")

    def move_to_host(self, uuid: str, host_id: str, *, mode: MoveMode, deadline: Deadline) -> None:
        mode = MoveMode(mode)
        with self._unchanged():
            ref, rec = self._vm(uuid, deadline)
            host, hrec = self._host_ref(host_id, deadline)
        name, hname = rec["name_label"], hrec["name_label"]
        what = f"move VM {name!r} to host {hname!r} ({mode.value})"
        want = PowerState.STOPPED if mode is MoveMode.COLD else PowerState.RUNNING
        state = power_state(str(rec.get("power_state", "")))
        on = rec.get("resident_on") if state is PowerState.RUNNING else rec.get("affinity")
        if on == host and state is want:
            return  # already there (an earlier request whose reply was lost did it)
        if state is not want:
            raise InvalidState(f"{what}: the VM is {state.value}", current=state, allowed={want})
        if not hrec.get("enabled", True):
            # xapi refuses a start or pool_migrate there (HOST_DISABLED); a cold move is
            # only an affinity change, which it would take: refuse it the same way.
            raise InvalidState(
                f"{what}: host {hname!r} is disabled (in maintenance)", vendor_code="HOST_DISABLED"
            )
        if mode is MoveMode.LIVE:
            if not self._finish_under_way(ref, rec, host, what, deadline):
                self._run(what, "VM.pool_migrate", ref, host, {"live": "true"}, deadline=deadline)
        elif mode is MoveMode.COLD:
            self._check_storage(rec, host, what, deadline)
        else:
            with self._unchanged():
                self._assert_guest_can(ref, rec, "clean_shutdown", "shut down", deadline)
                self._check_storage(rec, host, what, deadline)
            self._run(what, "VM.clean_shutdown", ref, deadline=deadline)
        # The VM's home moves too: it stays on the target when it stops.
        self._call(what, "VM.set_affinity", ref, host, deadline=deadline)
        if mode is MoveMode.RESTART:
            try:
                self._run(what, "VM.start_on", ref, host, False, False, deadline=deadline)
            except VmctlError as exc:
                exc.message = (
                    f"{exc.message}; the VM was shut down and is now halted with its home "
                    f"on {hname!r}: start it again"
                )
                exc.args = (exc.message,)
                raise

    def _finish_under_way(
        self, ref: str, rec: dict[str, Any], host: str, what: str, deadline: Deadline
    ) -> bool:
        """A migration already under way (an earlier request whose reply was lost: xapi's
        ``current_operations`` names its task): wait for that task with the core's loop
        instead of asking again (xapi would refuse: OTHER_OPERATION_IN_PROGRESS). True when
        the VM is on ``host`` afterwards."""
        from ._driver import _TaskRef

        ops = rec.get("current_operations", {})
        under_way = [t for t, op in ops.items() if op in _MIGRATIONS]
        if not under_way:
            return False
        task = Task(
            id=under_way[0],
            description=f"{what} (a VM.pool_migrate already under way)",
            handle=_TaskRef(under_way[0]),
        )
        finish_task(self, task, deadline=deadline, what=what)  # type: ignore[arg-type]
        now = self._call(what, "VM.get_resident_on", ref, deadline=deadline)
        return bool(now == host)

    def set_maintenance(self, host_id: str, on: bool, *, deadline: Deadline) -> None:
        host, hrec = self._host_ref(host_id, deadline)
        verb = "disable" if on else "enable"
        self._call(f"{verb} host {hrec['name_label']!r}", f"host.{verb}", host, deadline=deadline)
