"""``Hypervisor``: one connection to a host, vCenter or pool, and what it manages."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._capabilities import RESOURCE_CAPABILITIES, Capability
from ._config import ConnectParams
from ._connection import Connection
from ._errors import AlreadyExists, Conflict, DriverError, NotFound, ValidationError
from ._events import EventStream
from ._model import EventKind, HostInfo, VMInfo, VMSpec, VMStats
from ._vm import VM
from .spi import INTERFACES, Driver, Events, Statistics, capabilities_of

if TYPE_CHECKING:
    from ._config import Timeouts
    from ._hosts import Host
    from ._uri import URI

log = logging.getLogger("vmctl")


def offered_capabilities(driver: Driver) -> frozenset[Capability]:
    """The capabilities of a connection: derived from the driver's interfaces, narrowed by
    its one hook, and never more than the interfaces give."""
    offered = capabilities_of(driver)
    narrowed = frozenset(Capability(c) for c in driver.narrow_capabilities(offered))
    extra = narrowed - offered
    if extra:
        names = ", ".join(sorted(c.value for c in extra))
        raise DriverError(
            f"driver {driver.name!r} claims {names} without implementing "
            + ", ".join(sorted({INTERFACES[c].__name__ for c in extra if c in INTERFACES}))
        )
    return narrowed


def _close_quietly(connection: Connection) -> None:
    connection.dispatcher.close()
    try:
        connection.driver.close()
    except Exception:  # close must not raise; the driver should not either
        log.warning("closing %s failed", connection.uri, exc_info=True)


class Hypervisor:
    """A connection to one host, vCenter or pool. Made by ``vmctl.connect()``.

    A Hypervisor may be shared between threads: requests from several threads run at once
    (serialized by the core only for drivers that say they are not thread-safe). One dropped
    without ``close()`` releases its session when it is garbage-collected.
    """

    def __init__(self, driver: Driver, params: ConnectParams, *, max_concurrency: int) -> None:
        self._conn = Connection(
            driver,
            params.uri,
            params.timeouts,
            offered_capabilities(driver),
            max_concurrency,
        )
        self._finalizer = weakref.finalize(self, _close_quietly, self._conn)

    # -- what it is -----------------------------------------------------------------------

    @property
    def uri(self) -> URI:
        return self._conn.uri

    @property
    def timeouts(self) -> Timeouts:
        return self._conn.timeouts

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self._conn.capabilities

    @property
    def driver_name(self) -> str:
        return self._conn.driver_name

    @property
    def _driver(self) -> Driver:
        """The driver (for tests and debugging; not an API)."""
        return self._conn.driver

    @property
    def max_concurrency(self) -> int:
        """How many background requests (``wait=False``) run at once."""
        return self._conn.dispatcher.max_concurrency

    def supports(self, capability: Capability | str) -> bool:
        """Whether this connection has ``capability``."""
        return Capability(capability) in self.capabilities

    def require(self, capability: Capability, what: str) -> None:
        """Raise NotSupported naming ``capability`` unless this connection has it."""
        self._conn.require(capability, what)

    # -- inventory ------------------------------------------------------------------------

    def host_info(self) -> HostInfo:
        """The host or cluster this connection manages."""
        conn = self._conn
        return conn.dispatcher.call(
            "host info", conn.driver.host_info, deadline=conn.read_deadline()
        )

    def list_vms(self) -> list[VMInfo]:
        """Every VM with its state, sorted by name, in one batched driver call."""
        conn = self._conn
        infos = conn.dispatcher.call(
            "list VMs", conn.driver.list_vms, deadline=conn.read_deadline()
        )
        return sorted(infos, key=lambda i: (i.name, i.uuid))

    def vms(self) -> list[VM]:
        """A handle for every VM."""
        return [VM(self, self._conn, info) for info in self.list_vms()]

    def vm(self, name_or_uuid: str) -> VM:
        """The VM with this UUID or name. NotFound if none; Conflict if the name is taken
        by several VMs (use the UUID then)."""
        if not isinstance(name_or_uuid, str) or not name_or_uuid:
            raise ValidationError("give a VM name or UUID", field="vm")
        infos = self.list_vms()
        key = name_or_uuid.lower()
        by_uuid = [i for i in infos if i.uuid.lower() == key]
        if by_uuid:
            return VM(self, self._conn, by_uuid[0])
        by_name = [i for i in infos if i.name == name_or_uuid]
        if len(by_name) > 1:
            raise Conflict(
                f"{len(by_name)} VMs are named {name_or_uuid!r} on {self.uri}: "
                f"{', '.join(i.uuid for i in by_name)}; use the UUID"
            )
        if not by_name:
            raise NotFound(f"no VM named {name_or_uuid!r} on {self.uri}")
        return VM(self, self._conn, by_name[0])

    def create_vm(self, spec: VMSpec, *, start: bool = False, timeout: float | None = None) -> VM:
        """Create a VM from ``spec`` (STOPPED, or RUNNING with ``start=True``).

        On failure nothing of the VM is left, or the error's ``left_behind`` names what is
        (when the host stopped answering half-way), so that it can be deleted.
        """
        conn = self._conn
        if not isinstance(spec, VMSpec):
            raise ValidationError(f"expected a VMSpec, got {type(spec).__name__}", field="spec")
        if not isinstance(start, bool):
            raise ValidationError("must be True or False", field="start")
        deadline = conn.deadline(timeout, conn.timeouts.operation_s)
        conn.require(Capability.CREATE, "create a VM")
        for name in spec.resources.set_fields():
            conn.require(RESOURCE_CAPABILITIES[name], f"creating a VM with {name}")
        if start:
            conn.require(Capability.START, "start after create")
        what = f"create VM {spec.name!r}"
        infos = conn.dispatcher.call(what, conn.driver.list_vms, deadline=deadline)
        if any(i.name == spec.name for i in infos):
            raise AlreadyExists(f"a VM named {spec.name!r} already exists on {self.uri}")
        log.info("create VM %r on %s", spec.name, self.uri)
        info = conn.dispatcher.call(
            what, conn.driver.create_vm, spec, deadline=deadline, idempotent=False
        )
        vm = VM(self, conn, info)
        if start:
            vm.start(timeout=max(deadline.remaining(), 0.001))
        return vm

    def hosts(self) -> list[Host]:
        """The hosts this connection manages (one for a standalone host), with capacity,
        load and state; sorted by name. See docs/hosts.md."""
        from ._hosts import list_hosts

        return list_hosts(self, self._conn, self._conn.read_deadline())

    def host(self, name_or_id: str) -> Host:
        """One of ``hosts()``, by name or id. NotFound if none."""
        from ._hosts import find_host

        return find_host(self.hosts(), name_or_id)

    # -- observation ----------------------------------------------------------------------

    def watch(
        self,
        *,
        kinds: Sequence[EventKind] | None = None,
        vm: VM | str | None = None,
        timeout: float | None = None,
    ) -> EventStream:
        """Subscribe to events from now on; iterate the stream to get them.

        ``kinds`` and ``vm`` filter; iteration ends after ``timeout`` seconds in all (None:
        never). The subscription starts at this call, not at the first ``next()``.
        """
        conn = self._conn
        conn.require(Capability.EVENTS, "watching events")
        stream_timeout = conn.deadline(timeout, None)
        driver = conn.driver
        assert isinstance(driver, Events)
        source = conn.dispatcher.call(
            "subscribe to events", driver.subscribe, deadline=conn.read_deadline()
        )
        vm_uuid = vm.uuid if isinstance(vm, VM) else vm
        return EventStream(source, frozenset(kinds) if kinds else None, vm_uuid, stream_timeout)

    def stats(self, vms: Sequence[VM] | None = None) -> dict[str, VMStats]:
        """Counters for the given VMs (default all), keyed by UUID, in one batched call."""
        conn = self._conn
        conn.require(Capability.STATS, "stats")
        driver = conn.driver
        assert isinstance(driver, Statistics)
        uuids = [v.uuid for v in vms] if vms is not None else [i.uuid for i in self.list_vms()]
        return conn.dispatcher.call("stats", driver.get_stats, uuids, deadline=conn.read_deadline())

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (and log out of any session). Idempotent."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Hypervisor {self.uri} driver={self.driver_name}>"
