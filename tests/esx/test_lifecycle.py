"""Inventory and lifecycle through the public API, on the simulator in ESX and vCenter mode:
batched listing (round trips counted), create/delete with disks and NICs, power requests,
graceful requests through VMware Tools, fault mapping."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from pyVmomi import vim

import vmctl
from tests.hosts.esx import VcsimServer
from vmctl import PowerState as S
from vmctl.spi import Deadline

from .conftest import DVPG, NETWORK, Admin, Target, vc_uri


def D() -> Deadline:
    return Deadline.after(10)


def name(hint: str) -> str:
    return f"t-{hint}-{secrets.token_hex(3)}"


def spec(hint: str, **kw: object) -> vmctl.VMSpec:
    kw.setdefault("disks", [vmctl.DiskSpec(size_mib=64, name="root")])
    kw.setdefault("nics", [vmctl.NicSpec(network=NETWORK)])
    return vmctl.VMSpec(name=name(hint), **kw)  # type: ignore[arg-type]


# -- inventory ------------------------------------------------------------------------------


def test_listing_is_one_round_trip_whatever_the_vm_count(hv: vmctl.Hypervisor) -> None:
    driver = hv._driver
    hv.list_vms()  # the session's ContainerView is made on first use
    before = driver.round_trips  # type: ignore[attr-defined]
    small = hv.list_vms()
    one = driver.round_trips - before  # type: ignore[attr-defined]
    for i in range(15):
        hv.create_vm(vmctl.VMSpec(name=name(f"bulk{i}")))
    before = driver.round_trips  # type: ignore[attr-defined]
    big = hv.list_vms()
    assert len(big) == len(small) + 15
    assert one == 1
    assert driver.round_trips - before == 1  # type: ignore[attr-defined]


def test_get_by_name_and_uuid(hv: vmctl.Hypervisor) -> None:
    info = hv.list_vms()[0]
    assert hv.vm(info.name).uuid == hv.vm(info.uuid).uuid == info.uuid
    with pytest.raises(vmctl.NotFound):
        hv.vm("00000000-0000-0000-0000-000000000000")
    with pytest.raises(vmctl.NotFound):
        hv._driver.get_vm("00000000-0000-0000-0000-000000000000", deadline=D())


# -- create and delete ----------------------------------------------------------------------


def test_create_with_disks_and_nics(hv: vmctl.Hypervisor, target: Target) -> None:
    nics = [vmctl.NicSpec(network=NETWORK), vmctl.NicSpec(network=NETWORK, mac="00:50:56:01:02:03")]
    if target[0].mode == "vcenter":
        nics.append(vmctl.NicSpec(network=DVPG, model="e1000e"))
    vm = hv.create_vm(
        spec(
            "create",
            vcpus=2,
            memory_mib=384,
            nics=nics,
            guest_os="linux",
            description="made by the esx tests",
            disks=[
                vmctl.DiskSpec(size_mib=64, name="root"),
                vmctl.DiskSpec(size_mib=32, bus="sata"),
                vmctl.DiskSpec(size_mib=16, bus="ide"),
            ],
        )
    )
    assert vm.info().state is S.STOPPED
    config = vm.config()
    assert (config.vcpus, config.memory_mib) == (2, 384)
    assert config.guest_os is vmctl.GuestOS.LINUX
    assert config.description == "made by the esx tests"
    assert [(d.size_mib, d.bus) for d in config.disks] == [(64, "scsi"), (32, "sata"), (16, "ide")]
    assert config.disks[0].name == "root" and config.disks[0].id == "scsi0:0"
    assert [n.network for n in config.nics] == [n.network for n in nics]
    assert config.nics[1].mac == "00:50:56:01:02:03"
    assert len({n.mac for n in config.nics}) == len(nics)
    if target[0].mode == "vcenter":
        assert config.nics[2].model == "e1000e"
    deleted = vm.delete()
    assert deleted[0].startswith(f"vm {vm.name} ")
    assert sum(line.startswith("disk [") for line in deleted) == 3
    with pytest.raises(vmctl.NotFound):
        vm.info()


def test_create_failures_leave_nothing(hv: vmctl.Hypervisor) -> None:
    before = {i.uuid for i in hv.list_vms()}
    rt = hv._driver.round_trips  # type: ignore[attr-defined]
    with pytest.raises(vmctl.NotFound, match="no network"):
        hv.create_vm(spec("badnet", nics=[vmctl.NicSpec(network="no-such-net")]))
    assert hv._driver.round_trips - rt == 1  # type: ignore[attr-defined]  # the name check
    with pytest.raises(vmctl.NotFound, match="no datastore"):
        hv.create_vm(spec("badds", disks=[vmctl.DiskSpec(size_mib=8, pool="nods")]))
    with pytest.raises(vmctl.ValidationError, match="virtio"):
        hv.create_vm(spec("virtio", disks=[vmctl.DiskSpec(size_mib=8, bus="virtio")]))
    with pytest.raises(vmctl.ValidationError, match="kernel"):
        hv.create_vm(spec("kernel", boot=vmctl.BootSource(kernel="/boot/vmlinuz")))
    assert {i.uuid for i in hv.list_vms()} == before


def test_duplicate_name_refused(hv: vmctl.Hypervisor) -> None:
    vm = hv.create_vm(spec("dup"))
    with pytest.raises(vmctl.AlreadyExists):
        hv.create_vm(vmctl.VMSpec(name=vm.name))
    # The simulator itself accepts a second VM with the same name in a folder (real vSphere
    # answers DuplicateName, mapped to AlreadyExists: see test_faults.py).


# -- power ----------------------------------------------------------------------------------


def test_power_cycle(hv: vmctl.Hypervisor) -> None:
    vm = hv.create_vm(spec("power"))
    assert vm.start().state is S.RUNNING
    assert vm.suspend().state is S.SUSPENDED
    assert [i.state for i in hv.list_vms() if i.uuid == vm.uuid] == [S.SUSPENDED]
    assert vm.resume().state is S.RUNNING
    assert vm.reset().state is S.RUNNING
    with pytest.raises(vmctl.NotSupported):
        vm.pause()
    assert vm.power_off().state is S.STOPPED
    vm.start()
    with pytest.raises(vmctl.InvalidState):
        vm.delete()
    vm.delete(force=True)


def test_invalid_power_state_fault_mapped(hv: vmctl.Hypervisor) -> None:
    vm = hv.create_vm(spec("ips"))
    with pytest.raises(vmctl.InvalidState) as err:
        task = hv._driver.power_off(vm.uuid, deadline=D())  # past the core's state check
        assert isinstance(task, vmctl.spi.Task)
        driver: Any = hv._driver
        (outcome,) = driver.wait_tasks([task], deadline=D())
        assert outcome.error is not None
        raise outcome.error
    assert err.value.vendor_code == "InvalidPowerState"
    assert isinstance(err.value.__cause__, vim.fault.InvalidPowerState)
    assert vm.info().state is S.STOPPED


def test_deleted_vm_is_not_found(hv: vmctl.Hypervisor) -> None:
    vm = hv.create_vm(spec("gone"))
    uuid = vm.uuid
    hv._driver.get_vm(uuid, deadline=D())  # cached moref
    hv._driver.delete_vm(uuid, deadline=D())
    with pytest.raises(vmctl.NotFound):
        hv._driver.get_vm(uuid, deadline=D())
    with pytest.raises(vmctl.NotFound):
        hv._driver.start(uuid, deadline=D())


def test_many_requests_at_once(hv: vmctl.Hypervisor) -> None:
    vms = [hv.create_vm(spec(f"async{i}")) for i in range(5)]
    ops = [vm.start(wait=False) for vm in vms]
    assert all(op.result(timeout=60).state is S.RUNNING for op in ops)
    ops = [vm.power_off(wait=False) for vm in vms]
    assert all(op.result(timeout=60).state is S.STOPPED for op in ops)


def test_graceful_requests_need_vmware_tools(hv: vmctl.Hypervisor) -> None:
    vm = hv.create_vm(spec("notools"))
    vm.start()
    with pytest.raises(vmctl.InvalidState, match="VMware Tools are not running") as err:
        vm.shutdown(timeout=5)
    assert err.value.vendor_code == "ToolsUnavailable"
    assert vm.info().state is S.RUNNING  # unlike the simulator's own ShutdownGuest
    with pytest.raises(vmctl.InvalidState, match="VMware Tools"):
        vm.reboot(timeout=5)
    assert vm.info().state is S.RUNNING
    info = vm.shutdown(timeout=10, force_after=1)
    assert info.state is S.STOPPED


def test_shutdown_through_tools(hv: vmctl.Hypervisor, target: Target) -> None:
    vm = hv.create_vm(spec("tools"))
    vm.start()
    target[1].set_props(vm.uuid, guest__toolsRunningStatus="guestToolsRunning")
    assert vm.guest_info().agent is vmctl.AgentState.RUNNING
    assert vm.shutdown(timeout=30).state is S.STOPPED  # ShutdownGuest was sent


def test_cluster_scope_hides_other_hosts(vc_sim: VcsimServer, vc_admin: Admin) -> None:
    kw = {"password": vc_sim.password, "cafile": str(vc_sim.cafile)}
    with (
        vmctl.connect(vc_uri(vc_sim, "DC0/DC0_H0"), **kw) as standalone,
        vmctl.connect(vc_uri(vc_sim, "DC0/DC0_C0"), **kw) as cluster,
    ):
        vm = standalone.create_vm(vmctl.VMSpec(name=name("scoped")))
        try:
            assert vm.info().host == "DC0_H0"
            with pytest.raises(vmctl.NotFound):
                cluster.vm(vm.uuid)
            assert vm.uuid not in {i.uuid for i in cluster.list_vms()}
        finally:
            vm.delete()
