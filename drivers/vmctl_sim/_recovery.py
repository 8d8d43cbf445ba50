"""A failed sim host and the restart of its VMs elsewhere (a mixin of ``SimDriver``,
``HostRecovery``).

The sim's failure model: ``fail_host(name)`` marks a host of the site failed (powered off;
``hosts()`` shows it unreachable). Its VMs keep their recorded state, as a manager's
records do, until it is declared failed. The failed flag is the sim's proof of fencing
(the simulation knows the host runs nothing): ``declare_failed`` then records its VMs
stopped (reason ``failed``) and puts the host in maintenance (as xapi disables a host
declared dead); ``restart_on_host`` moves a stopped VM to another host and starts it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmctl import InsufficientResources, InvalidState, PowerState, StateReason
from vmctl.spi import Deadline, HostRecovery

from ._site import HOST_MEMORY_MIB, SimHost, SimVM, Site

S = PowerState
R = StateReason


class SimRecovery(HostRecovery):
    """See the module. Needs ``SimHosts`` (``_site_host``, ``_find``, ``_put_state``)."""

    site: Site

    if TYPE_CHECKING:

        def _site_host(self, host_id: str) -> SimHost: ...
        def _find(self, uuid: str) -> tuple[SimHost, SimVM]: ...
        def _put_state(
            self, host: SimHost, vm: SimVM, state: PowerState, reason: StateReason
        ) -> None: ...

    def fail_host(self, host: str, failed: bool = True) -> None:
        """The simulation: the host (name or id) fails (powered off) or comes back."""
        with self.site.transaction():
            self._site_host(host).failed = failed

    def fence_proof(self, host_id: str, *, deadline: Deadline) -> str | None:
        with self.site.transaction(save=False):
            host = self._site_host(host_id)
            if host.failed:
                return f"the sim host {host.name!r} is marked failed (powered off)"
            return None

    def declare_failed(self, host_id: str, *, deadline: Deadline) -> None:
        with self.site.transaction():
            host = self._site_host(host_id)
            if not host.failed:
                raise InvalidState(f"sim host {host.name!r} is up: it is not declared failed")
            for vm in host.vms.values():
                if vm.state is not S.STOPPED:
                    self._put_state(host, vm, S.STOPPED, R.FAILED)
            host.maintenance = True

    def restart_on_host(self, uuid: str, host_id: str, *, deadline: Deadline) -> None:
        with self.site.transaction():
            source, vm = self._find(uuid)
            dest = self._site_host(host_id)
            what = f"restart VM {vm.name!r} on sim host {dest.name!r}"
            if dest is source and vm.state is S.RUNNING:
                return
            if vm.state is not S.STOPPED:
                raise InvalidState(f"{what}: it is {vm.state.value}", current=vm.state)
            if dest.failed or dest.maintenance:
                raise InvalidState(f"{what}: that host is down or in maintenance")
            if dest is not source and any(v.name == vm.name for v in dest.vms.values()):
                raise InvalidState(f"{what}: that host already has a VM named {vm.name!r}")
            free = HOST_MEMORY_MIB - dest.used_memory_mib()
            if vm.memory_mib > free:
                raise InsufficientResources(f"{what}: it needs {vm.memory_mib} MiB, {free} free")
            if dest is not source:
                del source.vms[uuid]
                dest.vms[uuid] = vm
            self._put_state(dest, vm, S.RUNNING, R.BOOTED)
