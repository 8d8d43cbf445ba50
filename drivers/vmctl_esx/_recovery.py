"""Restarting the VMs of a failed vCenter cluster host on the others, for ``EsxDriver`` (a
mixin of ``EsxHosts``): ``HostRecovery``.

A host that vCenter no longer reaches (``runtime.connectionState`` ``notResponding``, or
``disconnected``) keeps its VMs in the inventory, ``runtime.connectionState``
``disconnected``, their power state the last one vCenter knew: vCenter cannot tell whether
they still run there. vSphere HA restarts them itself when it is on; vmctl does what an
administrator does without HA (VMware: "Remove from Inventory", then "Register VM" from the
datastore):

* proof (``fence_proof``): what the vSphere API can prove about a host it cannot reach:
  ``runtime.powerState`` ``poweredOff`` or ``standBy``: vCenter itself powered the host off
  (``ShutdownHost_Task``, DPM standby; HostSystemPowerState says "not a certain state": the
  host may crash or kill all its processes instead, which stops the VMs as well), or
  ``runtime.dasHostState.state`` ``hostDown``: vSphere HA's verdict from the loss of both
  network and datastore heartbeats. A host merely ``notResponding`` or ``disconnected``
  proves nothing (its VMs may run and hold their disks' locks): then only the caller's
  confirmation counts. The VMFS/NFS file locks that a running VM holds are not readable
  through the API;
* declaring (``declare_failed``): ``DisconnectHost_Task`` on a host that does not respond,
  so that vCenter stops reconnecting it by itself (it comes back only when an administrator
  reconnects it, after its VMs run elsewhere): InvalidState for a connected host;
* restarting (``restart_on_host``): the target mounts every datastore of the VM
  (ValidationError otherwise), ``UnregisterVM`` of the stale entry, ``Folder.RegisterVM_Task``
  of its ``.vmx`` (``summary.config.vmPathName``) in the same folder, with the target host
  and the cluster's resource pool (vCenter keeps the instance UUID, ``vc.uuid`` in the
  .vmx), then ``PowerOnVM_Task`` (the task goes to the core). A "cold" recovery move of a
  VM last known powered off is the same without the power-on (``move_to_host`` sends it
  here). When the registration fails after the unregistering, the VM is in no inventory:
  the connection remembers it (``_unregistered``), and every later look-up of it (the
  executor's retry, a second ``execute``) fails with where its .vmx is and what to do,
  not NotFound (which would count it as gone: skipped).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from vmctl import InvalidState, NotFound, PowerState, ValidationError, VmctlError
from vmctl.spi import Deadline, Driver, HostRecovery, Task, finish_task

from ._vmprops import moid as _moid

if TYPE_CHECKING:
    from ._conn import Connection

#: What ``restart_on_host`` reads of the VM.
_VM_PATHS = (
    "name",
    "runtime.host",
    "runtime.powerState",
    "runtime.connectionState",
    "summary.config.vmPathName",
    "datastore",
    "parent",
)


class EsxRecovery(HostRecovery):
    """A failed cluster host's VMs registered and started on the others (see the module)."""

    def _unregistered(self) -> dict[str, str]:
        """VMs this connection took out of the inventory and could not register again, by
        UUID: what to tell whoever looks for them."""
        lost: dict[str, str] = vars(self).setdefault("_unregistered_vms", {})
        return lost

    def _check_unregistered(self, uuid: str) -> None:
        """Raise what happened to the VM ``uuid`` when a recovery left it out of the
        inventory (called where a look-up found no VM)."""
        why = self._unregistered().get(uuid)
        if why is not None:
            raise VmctlError(why)

    if TYPE_CHECKING:
        conn: Connection
        scope: Any

        def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any: ...
        def _props(self, uuid: str, paths: Any) -> tuple[Any, dict[str, Any]]: ...
        def _host(self, host_id: str) -> tuple[Any, dict[str, Any]]: ...
        def _remember(self, uuid: str, ref: Any) -> None: ...
        def _task(self, task: Any, description: str) -> Task: ...

    def _host_health(self, host_id: str) -> tuple[Any, dict[str, Any]]:
        ref, _ = self._host(host_id)
        props = self._call(
            "read the host's state",
            self.conn.retrieve_one,
            ref,
            self.conn.vim.HostSystem,
            ("name", "runtime.connectionState", "runtime.powerState", "runtime.dasHostState"),
        )
        return ref, props

    def fence_proof(self, host_id: str, *, deadline: Deadline) -> str | None:
        with self.conn.within(deadline):
            _ref, p = self._host_health(host_id)
        name = p.get("name", host_id)
        connection = str(p.get("runtime.connectionState", "connected"))
        if connection == "connected":
            return None
        power = str(p.get("runtime.powerState", "unknown"))
        if power in ("poweredOff", "standBy"):
            return (
                f"vCenter: host {name!r} is {connection} and vCenter powered it off "
                f"(runtime.powerState {power})"
            )
        das = p.get("runtime.dasHostState")
        if das is not None and str(getattr(das, "state", "")) == "hostDown":
            return (
                f"vSphere HA: host {name!r} is down (no network and no datastore heartbeats; "
                "runtime.dasHostState hostDown)"
            )
        return None

    def declare_failed(self, host_id: str, *, deadline: Deadline) -> Task | None:
        with self.conn.within(deadline):
            ref, p = self._host_health(host_id)
            name = p.get("name", host_id)
            connection = str(p.get("runtime.connectionState", "connected"))
            if connection == "connected":
                raise InvalidState(f"host {name!r} is connected: it is not declared failed")
            if connection == "disconnected":
                return None
            what = f"disconnect the failed host {name!r}"
            task = self.conn.start_task(ref.DisconnectHost_Task, what)
        return self._task(task, what)

    def restart_on_host(self, uuid: str, host_id: str, *, deadline: Deadline) -> Task | None:
        return self._recover_vm(uuid, host_id, start=True, deadline=deadline)

    def _recover_vm(
        self, uuid: str, host_id: str, *, start: bool, deadline: Deadline
    ) -> Task | None:
        """Register the VM of a failed host on ``host_id`` and (``start``) power it on."""
        with self.conn.within(deadline):
            try:
                ref, props = self._props(uuid, _VM_PATHS)
            except NotFound:
                self._check_unregistered(uuid)
                raise
            host, hprops = self._host(host_id)
            name, hname = props["name"], hprops.get("name", host_id)
            what = f"{'restart' if start else 'register'} VM {name!r} on host {hname!r}"
            here = _moid(props["runtime.host"]) == _moid(host)
            connected = str(props.get("runtime.connectionState")) == "connected"
            power = str(props.get("runtime.powerState"))
            if here and connected:
                if power == "poweredOn" or not start:
                    return None  # done (an earlier, interrupted run)
                task = self.conn.start_task(ref.PowerOnVM_Task, what)
                return self._task(task, what)
            if connected:
                raise InvalidState(
                    f"{what}: its host is connected (not a failed host's VM)",
                    current=PowerState.RUNNING if power == "poweredOn" else PowerState.STOPPED,
                )
            if hprops.get("runtime.inMaintenanceMode"):
                raise InvalidState(f"{what}: host {hname!r} is in maintenance mode")
            path = props.get("summary.config.vmPathName")
            if not path:
                raise VmctlError(f"{what}: vCenter does not say where its .vmx file is")
            self._check_storage(props, host, what)
            folder = props.get("parent") or self.scope.vm_folder
            self._call(f"{what}: unregister the stale entry", ref.UnregisterVM)
            try:
                task = self.conn.start_task(
                    lambda: folder.RegisterVM_Task(
                        path=path, name=name, asTemplate=False, pool=self.scope.pool, host=host
                    ),
                    what,
                )
                outcome = finish_task(
                    cast(Driver, self), self._task(task, what), deadline=deadline, what=what
                )
            except VmctlError as exc:
                todo = (
                    f"its files are on the datastore: register {path} by hand (the vSphere "
                    "Client's datastore browser, Register VM; or Folder.RegisterVM_Task) on "
                    "a host that mounts its datastores, then start it"
                )
                self._unregistered()[uuid] = (
                    f"VM {name!r} ({uuid}) is in no inventory: a recovery removed it from "
                    f"its failed host and registering it on host {hname!r} failed "
                    f"({exc.message}); {todo}"
                )
                exc.message = f"{exc.message}; the VM was removed from the inventory: {todo}"
                exc.args = (exc.message,)
                raise
            self._unregistered().pop(uuid, None)
            new = outcome.result
            if new is None:
                raise NotFound(f"{what}: vCenter registered it but returned no VM")
            self._remember(uuid, new)
            if not start:
                return None
            task = self.conn.start_task(new.PowerOnVM_Task, what)
        return self._task(task, what)

    def _check_storage(self, props: dict[str, Any], host: Any, what: str) -> None:
        """ValidationError unless ``host`` mounts every datastore of the VM."""
        stores = list(props.get("datastore") or ())
        if not stores:
            return
        mounted = self._call(
            f"{what}: read the host's datastores",
            self.conn.retrieve_one,
            host,
            self.conn.vim.HostSystem,
            ("datastore",),
        )
        have = {_moid(ds) for ds in mounted.get("datastore") or ()}
        missing = [ds for ds in stores if _moid(ds) not in have]
        if missing:
            names = self._call(
                f"{what}: read the datastores",
                self.conn.retrieve,
                missing,
                self.conn.vim.Datastore,
                ("name",),
            )
            raise ValidationError(
                f"{what}: the host does not mount datastore(s) "
                + ", ".join(repr(p.get("name", _moid(r))) for r, p in names),
                field="host_id",
            )
