"""The sim's hosts: every host of the connection's site, as one vCenter cluster or xapi pool.

A mixin of ``SimDriver`` (``HostInventory``, ``HostMigration``, ``HostMaintenance``). A
sim connection names one host (``sim://a``) for its VM operations, but sees the whole site
here: the hosts, the VMs on each, and moves between any two of them. Sim disks live in the
site's pools, which every host of the site reaches (shared storage): no sim VM has local
disks. Load: a running sim VM keeps 5 % of each of its vCPUs busy (the same model as its
``get_stats`` counters) and its memory in use.
"""

from __future__ import annotations

import time

from vmctl import (
    EventKind,
    InsufficientResources,
    InvalidState,
    NotFound,
    PowerState,
    StateReason,
    VMInfo,
)
from vmctl.spi import (
    Deadline,
    HostInventory,
    HostMaintenance,
    HostMigration,
    HostRecord,
    HostState,
    MoveMode,
    Placement,
)

from ._site import HOST_CPU_MHZ, HOST_CPUS, HOST_MEMORY_MIB, SimHost, SimVM, Site

S = PowerState
R = StateReason
#: The share of each vCPU a running sim VM keeps busy (as ``SimDriver.get_stats``).
VCPU_LOAD = 0.05


class SimHosts(HostInventory, HostMigration, HostMaintenance):
    """Hosts of a sim site. Needs ``self.site`` (the ``Site``) from ``SimDriver``."""

    #: A restart move is one call here (a sim connection acts on its own host's VMs only).
    restarts_in_place = True

    site: Site

    def _site_host(self, host_id: str) -> SimHost:
        for host in self.site.hosts.values():
            if host.uuid == host_id or host.name == host_id:
                return host
        raise NotFound(f"no host {host_id!r} in sim site {self.site.name!r}")

    def _find(self, uuid: str) -> tuple[SimHost, SimVM]:
        for host in self.site.hosts.values():
            vm = host.vms.get(uuid)
            if vm is not None:
                return host, vm
        raise NotFound(f"no VM with UUID {uuid} in sim site {self.site.name!r}")

    @staticmethod
    def _vm_info(vm: SimVM, host_name: str) -> VMInfo:
        """What the sim tells of ``vm``, on the host named ``host_name``."""
        return VMInfo(
            uuid=vm.uuid,
            name=vm.name,
            state=vm.state,
            reason=vm.reason,
            vcpus=vm.vcpus,
            memory_mib=vm.memory_mib,
            host=host_name,
        )

    def list_hosts(self, *, deadline: Deadline) -> list[HostRecord]:
        with self.site.transaction(save=False):
            out = []
            for host in self.site.hosts.values():
                busy = sum(
                    vm.vcpus * VCPU_LOAD for vm in host.vms.values() if vm.state is S.RUNNING
                )
                out.append(
                    HostRecord(
                        id=host.uuid,
                        name=host.name,
                        state=HostState.UNREACHABLE
                        if host.failed
                        else HostState.MAINTENANCE
                        if host.maintenance
                        else HostState.CONNECTED,
                        cpus=HOST_CPUS,
                        cpu_mhz=HOST_CPU_MHZ,
                        memory_mib=HOST_MEMORY_MIB,
                        memory_used_mib=host.used_memory_mib(),
                        cpu_percent=round(min(100.0, 100.0 * busy / HOST_CPUS), 2),
                        vm_count=len(host.vms),
                    )
                )
            return sorted(out, key=lambda h: h.name)

    def list_placements(self, *, deadline: Deadline) -> list[Placement]:
        with self.site.transaction(save=False):
            return [
                Placement(
                    vm=self._vm_info(vm, host.name),
                    host_id=host.uuid,
                    memory_mib=vm.memory_mib,
                    live_blocker=None,
                )
                for host in self.site.hosts.values()
                for vm in host.vms.values()
            ]

    def locate_vm(self, uuid: str, *, deadline: Deadline) -> tuple[str | None, VMInfo]:
        with self.site.transaction(save=False):
            host, vm = self._find(uuid)
            return host.uuid, self._vm_info(vm, host.name)

    def set_maintenance(self, host_id: str, on: bool, *, deadline: Deadline) -> None:
        with self.site.transaction():
            self._site_host(host_id).maintenance = on

    def _put_state(self, host: SimHost, vm: SimVM, state: PowerState, reason: StateReason) -> None:
        """A state change of a VM on any host of the site (as ``SimDriver._set_state``)."""
        t = time.time()
        if vm.running_since is not None:
            vm.cpu_seconds += (t - vm.running_since) * vm.vcpus * VCPU_LOAD
            vm.running_since = None
        if state is S.RUNNING:
            vm.running_since = t
            vm.booted_at = t if reason is R.BOOTED and vm.has_os else vm.booted_at
        else:
            vm.booted_at = None
        vm.state, vm.reason = state, reason
        self.site.emit(host.name, EventKind.STATE_CHANGED, vm)

    def move_to_host(self, uuid: str, host_id: str, *, mode: MoveMode, deadline: Deadline) -> None:
        mode = MoveMode(mode)
        with self.site.transaction():
            source, vm = self._find(uuid)
            dest = self._site_host(host_id)
            want = S.STOPPED if mode is MoveMode.COLD else S.RUNNING
            if dest is source and vm.state is want:
                return  # already there
            if dest.failed or (source.failed and mode is not MoveMode.COLD):
                down = dest if dest.failed else source
                raise InvalidState(f"cannot move VM {vm.name!r}: sim host {down.name!r} is down")
            if dest.maintenance:
                raise InvalidState(
                    f"cannot move VM {vm.name!r} to sim host {dest.name!r}: it is in maintenance"
                )
            if vm.state is not want:
                raise InvalidState(
                    f"cannot move VM {vm.name!r} {mode.value}: it is {vm.state.value}",
                    current=vm.state,
                    allowed={want},
                )
            if mode is MoveMode.RESTART and not vm.has_os:
                raise InvalidState(
                    f"cannot restart VM {vm.name!r} on another host: it has no guest OS to "
                    "shut down cleanly",
                    current=vm.state,
                )
            if any(v.name == vm.name for v in dest.vms.values()):
                raise InvalidState(f"sim host {dest.name!r} already has a VM named {vm.name!r}")
            if mode is not MoveMode.COLD:
                free = HOST_MEMORY_MIB - dest.used_memory_mib()
                if vm.memory_mib > free:
                    raise InsufficientResources(
                        f"moving VM {vm.name!r} needs {vm.memory_mib} MiB but sim host "
                        f"{dest.name!r} has {free} MiB free"
                    )
            if mode is MoveMode.RESTART:
                self._put_state(source, vm, S.STOPPED, R.SHUTDOWN)
            del source.vms[uuid]
            dest.vms[uuid] = vm
            vm.reason = R.MIGRATED
            self.site.emit(source.name, EventKind.MIGRATED, vm, f"to {dest.name}")
            self.site.emit(dest.name, EventKind.MIGRATED, vm, f"from {source.name}")
            if mode is MoveMode.RESTART:
                self._put_state(dest, vm, S.RUNNING, R.BOOTED)
