"""Restarting the VMs of a dead pool member for ``XenDriver`` (a mixin): ``HostRecovery``.

xapi's own way (ocaml/xapi/xapi_host.ml: declare_dead; xapi_vm.ml: power_state_reset):

* proof: xapi treats a host whose ``host_metrics.live`` is false as definitively dead
  (``is_host_alive``), but that alone says only that it stopped answering. vmctl counts it
  as the backend's proof only once the host has been declared dead: ``live`` false,
  ``enabled`` false and no VM recorded Running or Paused on it (``host.declare_dead`` reset
  them all);
* declaring: ``host.declare_dead`` (xapi refuses a live host or the master: HOST_IS_LIVE,
  mapped to InvalidState), which calls ``VM.power_state_reset`` on each of its VMs: they
  are Halted, their ``affinity`` still the dead host;
* restarting: the target reaches every disk (``_check_storage``), ``VM.set_affinity`` to
  it, then ``VM.start_on`` it (a task, waited for with the core's loop).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from vmctl import InvalidState, PowerState, VmctlError
from vmctl.spi import Deadline, HostRecovery

from ._errors import power_state
from ._session import NULL


class XenRecovery(HostRecovery):
    """A dead pool member's VMs started on the others (see the module)."""

    if TYPE_CHECKING:

        def _call(self, what: str, method: str, *args: Any, deadline: Deadline) -> Any: ...
        def _run(self, what: str, method: str, *args: Any, deadline: Deadline) -> Any: ...
        def _unchanged(self) -> contextlib.AbstractContextManager[None]: ...
        def _vm(self, uuid: str, deadline: Deadline) -> tuple[str, dict[str, Any]]: ...
        def _host_ref(self, host_id: str, deadline: Deadline) -> tuple[str, dict[str, Any]]: ...
        def _check_storage(
            self, rec: dict[str, Any], host: str, what: str, deadline: Deadline
        ) -> None: ...

    def fence_proof(self, host_id: str, *, deadline: Deadline) -> str | None:
        host, hrec = self._host_ref(host_id, deadline)
        what = f"read host {hrec['name_label']!r}"
        metrics = hrec.get("metrics", NULL)
        live = True
        if metrics not in ("", NULL):
            live = bool(self._call(what, "host_metrics.get_live", metrics, deadline=deadline))
        if live or hrec.get("enabled", True):
            return None
        vms = self._call(what, "VM.get_all_records", deadline=deadline)
        running = [
            r
            for r in vms.values()
            if r.get("resident_on") == host
            and not r.get("is_control_domain")
            and r.get("power_state") in ("Running", "Paused")
        ]
        if running:
            return None
        return (
            f"xapi: host {hrec['name_label']!r} is not live and was declared dead "
            "(host.declare_dead reset its VMs' power state)"
        )

    def declare_failed(self, host_id: str, *, deadline: Deadline) -> None:
        host, hrec = self._host_ref(host_id, deadline)
        what = f"declare host {hrec['name_label']!r} dead"
        self._call(what, "host.declare_dead", host, deadline=deadline)

    def restart_on_host(self, uuid: str, host_id: str, *, deadline: Deadline) -> None:
        with self._unchanged():
            ref, rec = self._vm(uuid, deadline)
            host, hrec = self._host_ref(host_id, deadline)
        what = f"restart VM {rec['name_label']!r} on host {hrec['name_label']!r}"
        state = power_state(str(rec.get("power_state", "")))
        if state is PowerState.RUNNING and rec.get("resident_on") == host:
            return
        if state is not PowerState.STOPPED:
            raise InvalidState(
                f"{what}: the VM is {state.value} (its host was not declared dead?)",
                current=state,
                allowed={PowerState.STOPPED},
            )
        self._check_storage(rec, host, what, deadline)
        self._call(what, "VM.set_affinity", ref, host, deadline=deadline)
        try:
            self._run(what, "VM.start_on", ref, host, False, False, deadline=deadline)
        except VmctlError as exc:
            exc.message = f"{exc.message}; the VM is halted with its home on the new host"
            exc.args = (exc.message,)
            raise
