"""vSphere's "nothing set" resource allocation (reservation 0, limit -1, shares at level
normal) reads as None in the neutral model, so a backup or a move of an ESX VM does not
carry a control the VM never had; a control that is set still reads as set."""

from __future__ import annotations

import secrets

from pyVmomi import vim

import vmctl

from .conftest import Admin, Target


def _raw(admin: Admin, uuid: str) -> tuple[object, object]:
    raw = admin.props(
        admin.vm(uuid), vim.VirtualMachine, ["config.cpuAllocation", "config.memoryAllocation"]
    )
    return raw["config.cpuAllocation"], raw["config.memoryAllocation"]


def test_unset_allocation_reads_as_none(hv: vmctl.Hypervisor, target: Target) -> None:
    vm = hv.create_vm(
        vmctl.VMSpec(
            name=f"res0-{secrets.token_hex(3)}", disks=[vmctl.DiskSpec(size_mib=8)], memory_mib=256
        )
    )
    cpu, mem = _raw(target[1], vm.uuid)
    # What the server reports for a VM made without resource controls.
    for alloc in (cpu, mem):
        assert alloc.reservation == 0, alloc  # type: ignore[attr-defined]
        assert alloc.limit == -1, alloc  # type: ignore[attr-defined]
        assert alloc.shares.level == "normal", alloc  # type: ignore[attr-defined]
    assert vm.config().resources == vmctl.Resources()


def test_set_then_default_again(hv: vmctl.Hypervisor, target: Target) -> None:
    vm = hv.create_vm(
        vmctl.VMSpec(name=f"res1-{secrets.token_hex(3)}", disks=[vmctl.DiskSpec(size_mib=8)])
    )
    res = vm.set_resources(
        vmctl.Resources(cpu_shares=1000, memory_reservation_mib=64, cpu_reservation_percent=10)
    ).resources
    # Shares given are level custom: set, even at the value level normal would give.
    assert (res.cpu_shares, res.memory_reservation_mib) == (1000, 64)
    assert res.cpu_reservation_percent is not None and res.cpu_reservation_percent > 0
    cpu, _ = _raw(target[1], vm.uuid)
    assert cpu.shares.level == "custom"  # type: ignore[attr-defined]
    # A reservation set back to 0 is vSphere's "none": it reads as not set.
    res = vm.set_resources(vmctl.Resources(memory_reservation_mib=0)).resources
    assert res.memory_reservation_mib is None
    assert res.cpu_shares == 1000
