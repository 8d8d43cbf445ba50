"""Hot-plug on Hyper-V (hypervsim's HOT_PLUG table): a SCSI disk and a NIC added to and
removed from a running VM; a paused VM refuses (InvalidState, Hyper-V's 32775)."""

from __future__ import annotations

import pytest
from hyperv_helpers import GUEST_ISO, SWITCH, name

import vmctl
from vmctl import BootSource, Capability, DiskSpec, NicSpec, PowerState, VMSpec


def test_disk_and_nic_while_running(hv: vmctl.Hypervisor) -> None:
    assert {Capability.HOTPLUG_DISK, Capability.HOTPLUG_NIC} <= hv.capabilities
    vm = hv.create_vm(
        VMSpec(
            name=name("hot"),
            memory_mib=256,
            disks=[DiskSpec(size_mib=16)],
            nics=[NicSpec(network=SWITCH)],
            boot=BootSource(iso=GUEST_ISO),
        )
    )
    try:
        vm.start()
        disk = vm.add_disk(DiskSpec(size_mib=32))
        assert disk.id in {d.id for d in vm.config().disks} and disk.size_mib == 32
        nic = vm.add_nic(NicSpec(network=SWITCH))
        assert nic.id in {n.id for n in vm.config().nics}
        assert vm.info().state is PowerState.RUNNING
        vm.remove_disk(disk.id)
        vm.remove_nic(nic.id)
        cfg = vm.config()
        assert disk.id not in {d.id for d in cfg.disks} and nic.id not in {n.id for n in cfg.nics}
        assert vm.info().state is PowerState.RUNNING
        vm.pause()
        with pytest.raises(vmctl.InvalidState):
            vm.add_nic(NicSpec(network=SWITCH))
        assert len(vm.config().nics) == 1
    finally:
        vm.delete(force=True)
