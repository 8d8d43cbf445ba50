"""Optional capabilities on the simulator: snapshots, clones, reconfiguration, resource
controls, devices, migration, events, stats, guest info; and the undeclared ones refused."""

from __future__ import annotations

import contextlib
import secrets
from typing import Any

import pytest
from pyVmomi import vim

import vmctl
from tests.hosts.esx import VcsimServer
from vmctl import Capability as C
from vmctl import EventKind
from vmctl import PowerState as S
from vmctl.spi import Deadline

from .conftest import NETWORK, Admin, Target, vc_uri


def make(hv: vmctl.Hypervisor, hint: str, **kw: object) -> vmctl.VM:
    kw.setdefault("disks", [vmctl.DiskSpec(size_mib=32)])
    kw.setdefault("nics", [vmctl.NicSpec(network=NETWORK)])
    return hv.create_vm(vmctl.VMSpec(name=f"f-{hint}-{secrets.token_hex(3)}", **kw))  # type: ignore[arg-type]


def test_declared_capabilities(hv: vmctl.Hypervisor, target: Target) -> None:
    caps = hv.capabilities
    migration = {C.MIGRATE_LIVE, C.MIGRATE_COLD}
    if target[0].mode == "esx":  # a standalone host cannot migrate: that takes a vCenter
        assert not migration & caps
        caps = caps | migration
    assert {
        C.SHUTDOWN,
        C.REBOOT,
        C.RESET,
        C.SUSPEND,
        C.SNAPSHOT,
        C.SNAPSHOT_MEMORY,
        C.CLONE,
        C.MIGRATE_LIVE,
        C.MIGRATE_COLD,
        C.EVENTS,
        C.STATS,
        C.GUEST_INFO,
    } <= caps
    assert (
        not {C.PAUSE, C.HOT_VCPUS, C.HOT_MEMORY, C.HOTPLUG_DISK, C.HOTPLUG_NIC, C.LINKED_CLONE}
        & caps
    )


def test_snapshot_tree(hv: vmctl.Hypervisor) -> None:
    vm = make(hv, "snap")
    first = vm.snapshot("one", description="first")
    assert (first.with_memory, first.state, first.current) == (False, S.STOPPED, True)
    vm.start()
    live = vm.snapshot("two", memory=True)
    assert live.with_memory and live.state is S.RUNNING and live.parent == first.id
    with pytest.raises(vmctl.AlreadyExists):
        vm.snapshot("one")
    tree = vm.snapshot_tree()
    assert [n.snapshot.name for n in tree] == ["one"]
    assert [c.snapshot.name for c in tree[0].children] == ["two"]
    assert [s.name for s in vm.snapshots() if s.current] == ["two"]
    vm.power_off()
    # Revert: the simulator moves the current snapshot but restores neither the config nor
    # the power state (real vSphere does both); check what it does do.
    vm.revert("one")
    assert [s.name for s in vm.snapshots() if s.current] == ["one"]
    vm.delete_snapshot("two")
    assert [s.name for s in vm.snapshots()] == ["one"]
    with pytest.raises(vmctl.NotFound):
        vm.delete_snapshot("two")


def test_full_clone(hv: vmctl.Hypervisor) -> None:
    vm = make(hv, "src", vcpus=2, nics=[vmctl.NicSpec(network=NETWORK, mac="00:50:56:0a:0b:0c")])
    clone = vm.clone(vm.name + "-c")
    assert clone.uuid != vm.uuid and clone.info().state is S.STOPPED
    a, b = vm.config(), clone.config()
    assert b.vcpus == 2 and len(b.disks) == len(a.disks)
    assert {n.mac for n in a.nics}.isdisjoint(n.mac for n in b.nics)
    with pytest.raises(vmctl.NotSupported):
        vm.clone(vm.name + "-l", linked=True)
    vm.start()
    with pytest.raises(vmctl.InvalidState):
        vm.clone(vm.name + "-r")
    clone.delete()
    assert vm.info().state is S.RUNNING


def test_reconfigure_cold_only(hv: vmctl.Hypervisor) -> None:
    vm = make(hv, "reconf")
    config = vm.reconfigure(vcpus=4, memory_mib=1024)
    assert (config.vcpus, config.memory_mib) == (4, 1024)
    assert (vm.info().vcpus, vm.info().memory_mib) == (4, 1024)
    vm.start()
    with pytest.raises(vmctl.NotSupported, match="hot_vcpus"):
        vm.reconfigure(vcpus=2)


def test_resource_controls_in_mhz(hv: vmctl.Hypervisor, target: Target) -> None:
    vm = make(hv, "res", memory_mib=512)
    res = vm.set_resources(
        vmctl.Resources(
            cpu_shares=3000,
            cpu_reservation_percent=50,
            cpu_limit_percent=150,
            memory_shares=700,
            memory_reservation_mib=256,
            memory_limit_mib=1024,
        )
    ).resources
    assert (res.cpu_shares, res.cpu_reservation_percent, res.cpu_limit_percent) == (3000, 50, 150)
    assert (res.memory_shares, res.memory_reservation_mib, res.memory_limit_mib) == (700, 256, 1024)
    admin = target[1]
    raw = admin.props(
        admin.vm(vm.uuid), vim.VirtualMachine, ["config.cpuAllocation", "config.memoryAllocation"]
    )
    mhz = admin.host_mhz(vm.info().host or "")
    cpu = raw["config.cpuAllocation"]
    assert cpu.reservation == round(mhz * 0.5) and cpu.limit == round(mhz * 1.5)
    assert (cpu.shares.level, cpu.shares.shares) == ("custom", 3000)
    # Only the fields given change.
    res = vm.set_resources(vmctl.Resources(memory_limit_mib=2048)).resources
    assert (res.cpu_shares, res.memory_limit_mib, res.memory_reservation_mib) == (3000, 2048, 256)
    made = hv.create_vm(
        vmctl.VMSpec(
            name=vm.name + "-r",
            resources=vmctl.Resources(cpu_shares=500, memory_reservation_mib=64),
        )
    )
    assert made.config().resources.cpu_shares == 500
    assert made.config().resources.memory_reservation_mib == 64


def test_disks_and_nics(hv: vmctl.Hypervisor) -> None:
    vm = make(hv, "dev", guest_os="linux")
    disk = vm.add_disk(vmctl.DiskSpec(size_mib=20, name="data"))
    assert (disk.id, disk.size_mib, disk.name) == ("scsi0:1", 20, "data")
    sata = vm.add_disk(vmctl.DiskSpec(size_mib=8, bus="sata"))
    assert sata.bus == "sata"
    with pytest.raises(vmctl.AlreadyExists):
        vm.add_disk(vmctl.DiskSpec(size_mib=8, name="data"))
    vm.remove_disk(disk.id)
    assert [d.id for d in vm.config().disks] == ["scsi0:0", sata.id]
    with pytest.raises(vmctl.NotFound):
        vm.remove_disk("scsi0:9")
    nic = vm.add_nic(vmctl.NicSpec(network=NETWORK, mac="00:50:56:3e:00:01", model="e1000"))
    assert (nic.network, nic.mac, nic.model) == (NETWORK, "00:50:56:3e:00:01", "e1000")
    vm.remove_nic(nic.id)
    assert nic.id not in [n.id for n in vm.config().nics]
    with pytest.raises(vmctl.NotFound):
        vm.add_nic(vmctl.NicSpec(network="nowhere"))
    vm.start()
    with pytest.raises(vmctl.NotSupported, match="hotplug_disk"):
        vm.add_disk(vmctl.DiskSpec(size_mib=8))


def test_guest_info(hv: vmctl.Hypervisor, target: Target) -> None:
    vm = make(hv, "guest")
    vm.start()
    info = vm.guest_info()
    assert info.ip_addresses == () and info.agent is not vmctl.AgentState.RUNNING
    target[1].set_props(
        vm.uuid,
        guest__toolsRunningStatus="guestToolsRunning",
        guest__ipAddress="192.0.2.10",
        guest__hostName="web-1",
    )
    info = vm.guest_info()
    assert info.agent is vmctl.AgentState.RUNNING
    assert "192.0.2.10" in info.ip_addresses and info.hostname == "web-1"


def test_stats_batched(hv: vmctl.Hypervisor) -> None:
    vms = [make(hv, f"stats{i}") for i in range(3)]
    for vm in vms:
        vm.start()
    hv.stats(vms[:1])  # reads the counter catalogue once
    rt = hv._driver.round_trips  # type: ignore[attr-defined]
    stats = hv.stats(vms)
    assert hv._driver.round_trips - rt == 1  # type: ignore[attr-defined]  # one QueryPerf
    assert set(stats) == {vm.uuid for vm in vms}
    assert all(s.memory_used_mib is not None and s.memory_used_mib >= 0 for s in stats.values())


def test_events(hv: vmctl.Hypervisor) -> None:
    with hv.watch(timeout=10) as events:
        vm = make(hv, "evt")
        vm.start()
        vm.power_off()
        vm.delete()
        seen = []
        for event in events:
            if event.vm_uuid == vm.uuid:
                seen.append((event.kind, event.state))
            if event.kind is EventKind.DELETED and event.vm_uuid == vm.uuid:
                break
    assert seen == [
        (EventKind.CREATED, None),
        (EventKind.STATE_CHANGED, S.RUNNING),
        (EventKind.STATE_CHANGED, S.STOPPED),
        (EventKind.DELETED, None),
    ]


def test_events_of_other_hosts_filtered(vc_sim: VcsimServer, vc_admin: Admin) -> None:
    kw = {"password": vc_sim.password, "cafile": str(vc_sim.cafile)}
    with (
        vmctl.connect(vc_uri(vc_sim, "DC0/DC0_C0/DC0_C0_H0"), **kw) as h0,
        vmctl.connect(vc_uri(vc_sim, "DC0/DC0_H0"), **kw) as other,
        h0.watch(timeout=3) as events,
    ):
        vm = other.create_vm(vmctl.VMSpec(name="f-elsewhere-" + secrets.token_hex(3)))
        vm.delete()
        assert [e for e in events if e.vm_uuid == vm.uuid] == []


def test_migration_between_hosts(vc_sim: VcsimServer, vc_admin: Admin) -> None:
    kw = {"password": vc_sim.password, "cafile": str(vc_sim.cafile)}
    with (
        vmctl.connect(vc_uri(vc_sim, "DC0/DC0_C0/DC0_C0_H0"), **kw) as h0,
        vmctl.connect(vc_uri(vc_sim, "DC0/DC0_C0/DC0_C0_H1"), **kw) as h1,
        vmctl.connect(vc_uri(vc_sim, "DC0/DC0_H0"), **kw) as standalone,
    ):
        vm = h0.create_vm(vmctl.VMSpec(name="f-mig-" + secrets.token_hex(3)))
        try:
            vm.start()
            moved = vm.migrate(h1)  # live: RelocateVM_Task to the host
            assert moved.uuid == vm.uuid and moved.info().state is S.RUNNING
            assert moved.info().host == "DC0_C0_H1"
            assert vm.uuid not in {i.uuid for i in h0.list_vms()}
            moved = moved.migrate(standalone)  # out of the cluster, to its resource pool
            assert moved.info().host == "DC0_H0"
            moved.power_off()
            back = moved.migrate(h0)  # cold
            assert back.info().state is S.STOPPED and back.info().host == "DC0_C0_H0"
        finally:
            for conn in (h0, h1, standalone):
                with contextlib.suppress(vmctl.NotFound):
                    conn.vm(vm.uuid).delete(force=True)


def test_migration_needs_the_same_vcenter(
    esx_sim: VcsimServer, esx_admin: Admin, vc_sim: VcsimServer, vc_admin: Admin
) -> None:
    with (
        vmctl.connect(esx_sim.uri, password=esx_sim.password, cafile=str(esx_sim.cafile)) as esx,
        vmctl.connect(
            vc_uri(vc_sim, "DC0/DC0_C0"), password=vc_sim.password, cafile=str(vc_sim.cafile)
        ) as vc,
    ):
        vm = vc.create_vm(vmctl.VMSpec(name="f-nomig-" + secrets.token_hex(3)))
        try:
            with pytest.raises(vmctl.NotSupported, match="migrate_cold"):
                vm.migrate(esx)  # the core: a standalone host declares no migration
            with pytest.raises(vmctl.ValidationError, match="same vCenter"):
                vc._driver.migrate_vm(vm.uuid, esx._driver, live=False, deadline=Deadline.after(10))
            assert vm.info().host is not None
        finally:
            vm.delete()


def test_event_burst_larger_than_the_default_page(hv: vmctl.Hypervisor) -> None:
    with hv.watch(kinds=[EventKind.CREATED], timeout=10) as events:
        made = {make(hv, f"burst{i}", disks=[], nics=[]).uuid for i in range(15)}
        seen: set[str] = set()
        for event in events:
            seen.add(event.vm_uuid)
            if made <= seen:
                break
    assert made <= seen


def test_start_many_in_one_task(vc_sim: VcsimServer, vc_admin: Admin, esx_sim: VcsimServer) -> None:
    """vCenter's Datacenter.PowerOnMultiVM_Task: starts submitted together (wait=False) go
    to the host in one request, and the core waits once for them all."""
    kw = {"password": vc_sim.password, "cafile": str(vc_sim.cafile)}
    with vmctl.connect(vc_uri(vc_sim, "DC0/DC0_C0"), **kw) as vc:  # type: ignore[arg-type]
        vms = [
            vc.create_vm(vmctl.VMSpec(name=f"f-multi{i}-" + secrets.token_hex(3))) for i in range(6)
        ]
        try:
            driver: Any = vc._driver
            bulk: list[int] = []
            real = driver.start_many

            def spy(uuids: Any, *, deadline: Deadline) -> Any:
                bulk.append(len(uuids))
                return real(uuids, deadline=deadline)

            driver.start_many = spy
            ops = [vm.start(wait=False, timeout=60) for vm in vms]
            vmctl.wait_all(ops, timeout=60)
            assert [op.result().state for op in ops] == [S.RUNNING] * 6
            assert bulk and min(bulk) >= 2  # batches of starts go in one task (a lone one alone)
            assert {vm.info().state for vm in vms} == {S.RUNNING}
        finally:
            for vm in vms:
                vm.delete(force=True)
    with vmctl.connect(esx_sim.uri, password=esx_sim.password, cafile=str(esx_sim.cafile)) as esx:
        driver = esx._driver
        # a standalone host has no PowerOnMultiVM_Task: the core starts each VM itself
        assert driver.start_many([esx.list_vms()[0].uuid], deadline=Deadline.after(10)) == {}
