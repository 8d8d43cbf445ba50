"""The pool's hosts, maintenance (host.disable/enable) and evacuation on a 3-host xapisim
pool in its own process (plain HTTP), read back with the XenAPI SDK; a lost reply to
``Async.VM.pool_migrate`` (the fault proxy) is resolved by locating the VM, not by moving
it twice."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from xen_helpers import GUEST, NETWORK, connect_http, name

import vmctl
from vmctl import BlockKind, DiskSpec, HostState, MoveMode, MoveOutcome, NicSpec, VMSpec

harness = pytest.importorskip("tests.hosts.xen")
faults = pytest.importorskip("tests.faults")
XenAPI = pytest.importorskip("XenAPI")


pytestmark = pytest.mark.usefixtures("state_dir")


@pytest.fixture
def hv(pool: Any) -> Iterator[vmctl.Hypervisor]:
    with connect_http(pool.port) as h:
        yield h


@pytest.fixture
def on_host1(pool: Any, sdk: Any) -> Iterator[vmctl.Hypervisor]:
    """A connection scoped to xenhost1: VMs made there have their home there; every VM
    left at the end is deleted and every host enabled again."""
    with connect_http(pool.port, "?host=xenhost1") as h:
        try:
            yield h
        finally:
            with connect_http(pool.port) as whole:
                for vm in whole.vms():
                    vm.delete(force=True)
            for ref in sdk.host.get_all():
                sdk.host.enable(ref)


def spec(hint: str, **kw: Any) -> VMSpec:
    kw.setdefault("disks", [DiskSpec(size_mib=64)])
    kw.setdefault("nics", [NicSpec(network=NETWORK)])
    kw.setdefault("boot", GUEST)
    return VMSpec(name=name(hint), memory_mib=512, **kw)


def resident(sdk: Any, vm: vmctl.VM) -> str:
    ref = sdk.VM.get_by_uuid(vm.uuid)
    host = sdk.VM.get_resident_on(ref)
    if host == "OpaqueRef:NULL":
        host = sdk.VM.get_affinity(ref)
    return str(sdk.host.get_name_label(host))


def test_hosts_are_the_pools_with_metrics(hv: vmctl.Hypervisor, sdk: Any) -> None:
    hosts = hv.hosts()
    assert [h.name for h in hosts] == ["xenhost1", "xenhost2", "xenhost3"]
    for h in hosts:
        ref = sdk.host.get_by_uuid(h.id)
        metrics = sdk.host_metrics.get_record(sdk.host.get_metrics(ref))
        assert h.memory_mib == int(metrics["memory_total"]) // 2**20
        used = (int(metrics["memory_total"]) - int(metrics["memory_free"])) // 2**20
        assert h.memory_used_mib == used > 0  # the control domain
        assert (h.cpus, h.cpu_mhz, h.state) == (16, 2600, HostState.CONNECTED)
        assert h.cpu_percent is None  # xapisim lists no host_cpu objects
    # A host-scoped connection sees the same pool.
    with connect_http(int(hv.uri.port or 0), "?host=xenhost2") as one:
        assert [h.id for h in one.hosts()] == [h.id for h in hosts]


def test_maintenance_is_host_disable(on_host1: vmctl.Hypervisor, sdk: Any, pool: Any) -> None:
    hv = on_host1
    vm = hv.create_vm(spec("mnt"), start=True)
    h2 = hv.host("xenhost2").enter_maintenance()
    ref = sdk.host.get_by_uuid(h2.id)
    assert sdk.host.get_enabled(ref) is False
    assert h2.state is HostState.MAINTENANCE and h2.backend_maintenance and h2.vmctl_maintenance
    # xapi itself refuses the disabled host: pool_migrate there is HOST_DISABLED.
    with pytest.raises(XenAPI.Failure, match="HOST_DISABLED"):
        sdk.VM.pool_migrate(sdk.VM.get_by_uuid(vm.uuid), ref, {"live": "true"})
    with pytest.raises(vmctl.InvalidState, match="disabled"):
        hv._driver.move_to_host(  # type: ignore[attr-defined]
            vm.uuid, h2.id, mode=MoveMode.LIVE, deadline=vmctl.spi.Deadline.after(30)
        )
    plan = vmctl.plan_evacuation(hv.host("xenhost1"))
    assert [m.target_name for m in plan.moves] == ["xenhost3"]
    back = h2.exit_maintenance()
    assert sdk.host.get_enabled(ref) is True and back.state is HostState.CONNECTED


def test_evacuation_plan_and_execute(on_host1: vmctl.Hypervisor, sdk: Any, pool: Any) -> None:
    hv = on_host1
    running = [hv.create_vm(spec(f"run{i}"), start=True) for i in range(4)]
    halted = hv.create_vm(spec("halted"))
    hvm = hv.create_vm(spec("hvm", boot=None), start=True)  # no PV drivers: no live move
    pinned = hv.create_vm(spec("pinned"), start=True)
    sdk.VM.add_to_blocked_operations(
        sdk.VM.get_by_uuid(pinned.uuid), "pool_migrate", "licence bound to this host"
    )
    host1 = sdk.host.get_by_name_label("xenhost1")[0]
    local_sr = next(
        sdk.PBD.get_SR(p)
        for p in sdk.host.get_PBDs(host1)
        if sdk.SR.get_name_label(sdk.PBD.get_SR(p)) == "Local storage"
    )
    local = hv.create_vm(
        spec("local", disks=[DiskSpec(size_mib=64, pool=sdk.SR.get_uuid(local_sr))]),
        start=True,
    )
    plan = vmctl.plan_evacuation(hv.host("xenhost1"))
    moves = {m.vm_name: m for m in plan.moves}
    assert {moves[v.name].mode for v in running} == {MoveMode.LIVE}
    assert moves[halted.name].mode is MoveMode.COLD
    blocked = {b.vm_name: b for b in plan.blockers}
    assert blocked[hvm.name].kind is BlockKind.CAPABILITY
    assert "pool_migrate" in blocked[hvm.name].reason
    assert blocked[pinned.name].kind is BlockKind.PINNED
    assert "blocked_operations" in blocked[pinned.name].reason
    assert blocked[local.name].kind is BlockKind.LOCAL_STORAGE
    assert "Local storage" in blocked[local.name].reason
    assert set(moves) | set(blocked) == {v.name for v in [*running, halted, hvm, pinned, local]}
    # Spread by free memory: both other hosts get some.
    assert {m.target_name for m in plan.moves} == {"xenhost2", "xenhost3"}
    report = vmctl.execute(plan, max_parallel=3)
    assert report.ok, str(report)
    for v in [*running, halted]:
        assert resident(sdk, v) == moves[v.name].target_name
    ref = sdk.VM.get_by_uuid(halted.uuid)
    assert sdk.VM.get_power_state(ref) == "Halted"
    assert sdk.host.get_name_label(sdk.VM.get_affinity(ref)) == moves[halted.name].target_name
    for v in running:
        assert sdk.VM.get_power_state(sdk.VM.get_by_uuid(v.uuid)) == "Running"
    again = vmctl.plan_evacuation(hv.host("xenhost1"))
    assert not again.moves and {b.vm_name for b in again.blockers} == set(blocked)


def test_restart_mode_for_a_vm_that_cannot_move_live(on_host1: vmctl.Hypervisor, sdk: Any) -> None:
    """allow_restart: a guest that cannot move live but can shut down is restarted."""
    hv = on_host1
    vm = hv.create_vm(spec("rst"), start=True)
    ref = sdk.VM.get_by_uuid(vm.uuid)
    sdk.VM.add_to_blocked_operations(ref, "pool_migrate", "test: no live moves")
    plan = vmctl.plan_evacuation(hv.host("xenhost1"), allow_restart=True)
    assert plan.blockers[0].kind is BlockKind.PINNED  # blocked migration pins it: no restart
    sdk.VM.remove_from_blocked_operations(ref, "pool_migrate")
    # A move the connection lacks live migration for: the driver's restart path itself.
    target = hv.host("xenhost3")
    hv._driver.move_to_host(  # type: ignore[attr-defined]
        vm.uuid, target.id, mode=MoveMode.RESTART, deadline=vmctl.spi.Deadline.after(60)
    )
    assert resident(sdk, vm) == "xenhost3"
    assert sdk.VM.get_power_state(ref) == "Running"


def test_a_lost_migrate_reply_is_not_a_second_move(pool: Any, sdk: Any) -> None:
    with faults.fault_proxy("127.0.0.1", pool.port) as proxy:
        try:
            with connect_http(proxy.port, "?host=xenhost1") as hv:
                try:
                    vm = hv.create_vm(spec("lost"), start=True)
                    plan = vmctl.plan_evacuation(hv.host("xenhost1"))
                    (move,) = plan.moves
                    proxy.add("Async.VM.pool_migrate", "drop_reply")
                    seen: list[str] = []
                    report = vmctl.execute(plan, progress=lambda p: seen.append(p.status))
                    (r,) = report.results
                    assert r.outcome is MoveOutcome.MOVED, str(report)
                    assert "retrying" in seen  # the unknown outcome, then the VM was found
                    assert proxy.methods.count("Async.VM.pool_migrate") == 1
                    assert resident(sdk, vm) == move.target_name
                finally:
                    for v in hv.vms():
                        v.delete(force=True)
        finally:
            proxy.release()
            proxy._closed.set()  # wake the accept thread (see test_xen_deadlines.py)
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()


def test_rebalance_on_the_pool(on_host1: vmctl.Hypervisor, sdk: Any, pool: Any) -> None:
    hv = on_host1
    vms = [hv.create_vm(spec(f"bal{i}"), start=True) for i in range(4)]
    with connect_http(pool.port) as whole:
        plan = vmctl.plan_rebalance(whole, threshold=0.1)
        assert plan.moves and {m.source_name for m in plan.moves} == {"xenhost1"}
        assert plan.spread(plan.after) < plan.spread(plan.before)
        report = plan.execute(max_parallel=2)
        assert report.ok, str(report)
        for m in plan.moves:
            assert resident(sdk, next(v for v in vms if v.uuid == m.vm_uuid)) == m.target_name
        after = {h.name: h.memory_used_mib or 0 for h in whole.hosts()}
        planned = {h.name: h.memory_used_mib for h in plan.after}
        assert all(abs(after[n] - planned[n]) <= 2 for n in planned), (after, planned)
