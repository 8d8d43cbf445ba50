from __future__ import annotations

import pytest

import vmctl
from vmctl import VM, Capability, DiskSpec, NicSpec, PowerState
from vmctl_conformance import clause, requires
from vmctl_conformance._kit import Kit

S = PowerState


def _add_disk(kit: Kit, vm: VM) -> str:
    before = {d.id for d in vm.config().disks}
    disk = vm.add_disk(DiskSpec(size_mib=32, pool=kit.pool))
    after = vm.config().disks
    assert disk.id in {d.id for d in after} - before
    assert next(d for d in after if d.id == disk.id).size_mib >= 32
    return disk.id


def _add_nic(kit: Kit, vm: VM) -> str:
    mac = "52:54:00:6a:0c:%02x" % (hash(vm.uuid) % 200 + 16)
    nic = vm.add_nic(NicSpec(network=kit.network, mac=mac))
    found = [n for n in vm.config().nics if n.id == nic.id]
    assert found and (found[0].network, found[0].mac) == (kit.network, mac)
    return nic.id


@clause("DEV-DISK-ADD-1")
@requires(Capability.ADD_DISK)
def test_add_disk(kit: Kit) -> None:
    _add_disk(kit, kit.vm("add-disk"))


@clause("DEV-DISK-REMOVE-1")
@requires(Capability.ADD_DISK, Capability.REMOVE_DISK)
def test_remove_disk(kit: Kit) -> None:
    vm = kit.vm("rm-disk")
    disk_id = _add_disk(kit, vm)
    vm.remove_disk(disk_id)
    assert disk_id not in {d.id for d in vm.config().disks}
    with pytest.raises(vmctl.NotFound):
        vm.remove_disk("vmctl-kit-no-such-disk")


@clause("DEV-NIC-ADD-1")
@requires(Capability.ADD_NIC)
def test_add_nic(kit: Kit) -> None:
    _add_nic(kit, kit.vm("add-nic", nics=0))


@clause("DEV-NIC-REMOVE-1")
@requires(Capability.ADD_NIC, Capability.REMOVE_NIC)
def test_remove_nic(kit: Kit) -> None:
    vm = kit.vm("rm-nic", nics=0)
    nic_id = _add_nic(kit, vm)
    vm.remove_nic(nic_id)
    assert nic_id not in {n.id for n in vm.config().nics}


@clause("DEV-HOTPLUG-DISK-1")
@requires(Capability.ADD_DISK, Capability.REMOVE_DISK, Capability.HOTPLUG_DISK)
def test_hotplug_disk(kit: Kit) -> None:
    vm = kit.vm("hot-disk", state=S.RUNNING, os=kit.guest)
    disk_id = _add_disk(kit, vm)
    vm.remove_disk(disk_id)
    assert disk_id not in {d.id for d in vm.config().disks}
    assert vm.info().state is S.RUNNING
    kit.settled(vm, S.RUNNING, "remove_disk")


@clause("DEV-HOTPLUG-NIC-1")
@requires(Capability.ADD_NIC, Capability.REMOVE_NIC, Capability.HOTPLUG_NIC)
def test_hotplug_nic(kit: Kit) -> None:
    vm = kit.vm("hot-nic", state=S.RUNNING, os=kit.guest)
    nic_id = _add_nic(kit, vm)
    vm.remove_nic(nic_id)
    assert nic_id not in {n.id for n in vm.config().nics}
    assert vm.info().state is S.RUNNING
    kit.settled(vm, S.RUNNING, "remove_nic")
