"""What the HOST, EVAC, REBAL and RECOVER clauses work with: the hosts in scope (the
connection under test when it manages several hosts; else the connection of the option
``hosts_uri``, one that manages the host under test and others, e.g. the vCenter cluster
of a host-scoped URI; else a ``vmctl.Site`` of the kit's two connections), where a
VM is, vmctl's maintenance flag set for a while, plans cut down to the kit's own VMs, and
taking a host down where the kit may.

Safety on real hosts: the kit executes only the moves of VMs it made (``only``), sets only
vmctl's maintenance flag and clears it (``flagged``), and takes a host down only where the
driver is a simulation with a ``fail_host(name, failed)`` control (the sim) or the operator
names the host and the commands that take it down and bring it back (options
``fail_host``, ``fail_command``, ``revive_command``: shell commands, in which ``{host}`` is
the host's name and ``{python}`` the Python running the kit).
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import attrs
import pytest

import vmctl
from vmctl import VM, Host, Hypervisor, PowerState
from vmctl.spi import HostInventory

from ._kit import Kit

P = TypeVar("P", bound="vmctl.Plan")

#: Why a backend with one host reports these clauses not supported.
NEED_TWO = "the HOST, EVAC, REBAL and RECOVER clauses need two or more hosts"


class Scope:
    """The hosts the clauses plan over: ``source`` (a connection, or a ``vmctl.Site``) and
    the kit's connections (to find VMs)."""

    def __init__(self, source: Any, connections: list[Hypervisor], how: str) -> None:
        self.source = source
        self.connections = connections
        self.how = how

    def hosts(self) -> list[Host]:
        return list(self.source.hosts())

    def host(self, host_id: str) -> Host:
        for h in self.hosts():
            if h.id == host_id:
                return h
        raise AssertionError(f"host {host_id} is no longer listed by hosts()")

    def connection_of(self, host: Host) -> Hypervisor:
        assert host.hypervisor is not None, f"host {host.name} has no connection"
        return host.hypervisor

    def host_of(self, vm: VM) -> Host | None:
        """The host a VM is on, as the scope locates it (None: tied to no host)."""
        host_id, _ = locate(self, vm)
        if host_id is None:
            return None
        for h in self.hosts():
            if h.id == host_id:
                return h
        raise AssertionError(f"{vm.name} is located on host {host_id}, none of the hosts")

    def plan_rebalance(self, **kw: Any) -> vmctl.RebalancePlan:
        return vmctl.plan_rebalance(self.source, **kw)


def scope_of(kit: Kit, request: pytest.FixtureRequest) -> Scope | None:
    """The hosts in scope, or None after noting the clause not supported and why (one
    host only)."""
    connections = [h for h in (kit.hv, kit.other) if h is not None]
    hosts = kit.hv.hosts()
    if len(hosts) >= 2:
        return Scope(kit.hv, connections, f"the {len(hosts)} hosts of {kit.hv.uri}")
    reason = f"{kit.hv.uri} manages one host ({hosts[0].name if hosts else 'none'})"
    wider = kit.options.get("hosts_uri")
    if wider:  # a connection that manages the host under test and others (a cluster, a pool)
        try:
            hv = vmctl.connect(wider)
        except vmctl.VmctlError as exc:
            reason += f"; the hosts_uri connection failed: {type(exc).__name__}: {exc}"
        else:
            request.addfinalizer(hv.close)
            wide = hv.hosts()
            here = hosts[0] if hosts else None
            if here is None or not any(here.id == h.id or here.name == h.name for h in wide):
                reason += f"; hosts_uri {hv.uri} does not manage it"
            elif len(wide) < 2:
                reason += f"; hosts_uri {hv.uri} manages {len(wide)} host(s)"
            else:
                return Scope(hv, [hv, *connections], f"the {len(wide)} hosts of {hv.uri}")
    elif kit.other is None:
        reason += " and no second host was given (--other-uri)"
    else:
        site_cls = getattr(vmctl, "Site", None)
        if site_cls is None:
            reason += "; this vmctl has no Site to plan over two connections"
        else:
            try:
                site = site_cls([kit.hv, kit.other])
                request.addfinalizer(site.close)
                hosts = site.hosts()
            except (TypeError, ValueError, vmctl.VmctlError) as exc:
                reason += f"; a Site of it and {kit.other.uri} cannot be made: {exc}"
            else:
                if len(hosts) >= 2:
                    return Scope(site, [site, *connections], f"a Site of {len(hosts)} hosts")
                reason += f"; a Site of it and {kit.other.uri} has {len(hosts)} host(s)"
    request.node.user_properties.append(("not_supported", "hosts"))
    request.node.user_properties.append(("not_supported_reason", f"{reason}: {NEED_TWO}"))
    return None


def locate(scope: Scope, vm: VM | str) -> tuple[str | None, PowerState]:
    """The id of the host a VM is on (None: tied to no host) and its state, read now."""
    uuid = vm if isinstance(vm, str) else vm.uuid
    for hv in scope.connections:
        conn = hv._conn
        driver = conn.driver
        try:
            if isinstance(driver, HostInventory):
                host_id, info = conn.dispatcher.call(
                    "locate a VM", driver.locate_vm, uuid, deadline=conn.read_deadline()
                )
                return host_id, info.state
            info = hv.vm(uuid).info()
        except vmctl.NotFound:
            continue
        ids = {h.name: h.id for h in hv.hosts()}
        return (ids.get(info.host, info.host) if info.host else None), info.state
    raise AssertionError(f"VM {uuid} is on none of the kit's connections")


def only(plan: P, uuids: Iterable[str]) -> P:
    """The plan cut down to the given VMs (the kit's own): the moves and blockers of the
    others dropped, so that executing it moves nothing the kit did not make."""
    keep = set(uuids)
    return attrs.evolve(  # type: ignore[misc]
        plan,
        moves=tuple(m for m in plan.moves if m.vm_uuid in keep),
        blockers=tuple(b for b in plan.blockers if b.vm_uuid in keep),
    )


def bring_back(kit: Kit, scope: Scope, plan: vmctl.Plan) -> None:
    """Move the kit's VMs that ``plan`` moved back to its source, so that the kit's
    connections find them at cleanup: by an evacuation plan of their host cut down to
    them, else (the plan blocks one) by ``VM.migrate`` to the kit's connection. Best
    effort: the kit's cleanup reports what it cannot delete."""
    by_target: dict[str, set[str]] = {}
    for m in plan.moves:
        with contextlib.suppress(vmctl.VmctlError, AssertionError):
            host_id, _ = locate(scope, m.vm_uuid)
            if host_id == m.target_id:
                by_target.setdefault(host_id, set()).add(m.vm_uuid)
    for host_id, uuids in by_target.items():
        with contextlib.suppress(vmctl.VmctlError, AssertionError):
            back = only(
                vmctl.plan_evacuation(scope.host(host_id), [scope.host(plan.source.id)]), uuids
            )
            if back.moves:
                vmctl.execute(back, max_parallel=2, timeout=kit.timeout)
    for m in plan.moves:
        with contextlib.suppress(vmctl.VmctlError, AssertionError):
            if locate(scope, m.vm_uuid)[0] not in (m.target_id, None):
                continue  # back home (or elsewhere, where the cleanup looks)
            for hv in scope.connections:
                with contextlib.suppress(vmctl.NotFound):
                    hv.vm(m.vm_uuid).migrate(kit.hv, timeout=kit.timeout)
                    break


@contextlib.contextmanager
def flagged(host: Host) -> Iterator[None]:
    """vmctl's maintenance flag on ``host`` for the block (never the backend's mode); left
    as it was found."""
    from vmctl._hosts import set_maintenance

    hv = host.hypervisor
    assert hv is not None
    if host.vmctl_maintenance:
        yield
        return
    set_maintenance(hv, host, True, timeout=None)
    try:
        yield
    finally:
        set_maintenance(hv, host, False, timeout=None)


class Failer:
    """Takes the chosen host down and brings it back."""

    def __init__(
        self,
        scope: Scope,
        name: str | None,
        down: Callable[[Host], None],
        up: Callable[[Host], None],
    ) -> None:
        self.scope = scope
        self.name = name
        self._down = down
        self._up = up
        self._failed: set[str] = set()

    def victim(self, src: Host) -> Host:
        """The host the kit may take down: the one named (option ``fail_host``), else
        another host than ``src`` that takes VMs."""
        hosts = self.scope.hosts()
        if self.name:
            named = [h for h in hosts if self.name in (h.name, h.id)]
            if not named:
                raise AssertionError(f"fail_host={self.name}: no such host here")
            if not named[0].takes_vms:
                pytest.skip(f"fail_host={self.name} is {named[0].state.value}")
            return named[0]
        others = [h for h in hosts if h.id != src.id and h.takes_vms]
        if not others:
            pytest.skip(f"no host besides {src.name} takes VMs to fail")
        return others[0]

    def down(self, host: Host) -> None:
        self._failed.add(host.id)
        self._down(host)

    def up(self, host: Host) -> None:
        if host.id in self._failed:
            self._failed.discard(host.id)
            self._up(host)


def _command(kit: Kit, key: str) -> Callable[[Host], None]:
    template = kit.options[key]

    def run(host: Host) -> None:
        cmd = template.replace("{host}", shlex.quote(host.name)).replace(
            "{python}", shlex.quote(sys.executable)
        )
        proc = subprocess.run(
            ["bash", "-c", cmd],
            capture_output=True,
            text=True,
            timeout=kit.timeout,
            check=False,
        )
        if proc.returncode:
            raise AssertionError(
                f"{key} `{cmd}` failed (exit {proc.returncode}): {proc.stderr[-500:]}"
            )

    return run


def failer_for(kit: Kit, scope: Scope) -> tuple[Failer | None, str]:
    """How the kit may take a host down here, or None and why not."""
    named = kit.options.get("fail_host") or None
    if kit.options.get("fail_command"):
        if not named or not kit.options.get("revive_command"):
            return None, "fail_command needs fail_host=NAME and revive_command too"
        return Failer(
            scope, named, _command(kit, "fail_command"), _command(kit, "revive_command")
        ), ""
    control = getattr(scope.connections[0]._driver, "fail_host", None)
    if callable(control):  # a simulation (the sim): failing one of its hosts harms nothing

        def down(host: Host) -> None:
            control(host.name, True)

        def up(host: Host) -> None:
            control(host.name, False)

        return Failer(scope, named, down, up), ""
    return None, (
        "the kit takes a host down only when the operator names it and says how: options "
        "fail_host=NAME, fail_command=CMD and revive_command=CMD ({host} is the host's name)"
    )
