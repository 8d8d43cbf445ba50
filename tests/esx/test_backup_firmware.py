"""A backup of a UEFI VM on the vSphere simulator restores as a UEFI VM (config.firmware
"efi", read by a plain pyVmomi session), and carries no resource control the VM never had:
the restored VM's allocation is vSphere's "nothing set" again."""

from __future__ import annotations

import secrets

from pyVmomi import vim

import vmctl
from vmctl import Firmware, VMSpec

from .conftest import Admin

MIB = 1024 * 1024


def test_uefi_backup_restores_as_uefi(esx: vmctl.Hypervisor, esx_admin: Admin) -> None:
    name = f"fw-{secrets.token_hex(3)}"
    vm = esx.create_vm(VMSpec(name=name, disks=[vmctl.DiskSpec(size_mib=4)], firmware="uefi"))
    repo = vmctl.open_repo(f"memory://esx-fw-{secrets.token_hex(4)}", chunk_size=MIB)
    info = vm.backup(repo)
    assert repo.manifest(info.id).config["firmware"] == "uefi"
    copy = repo.restore(info.id, esx, name=f"{name}-r")
    assert copy.config().firmware is Firmware.UEFI
    raw = esx_admin.props(
        esx_admin.vm(copy.uuid),
        vim.VirtualMachine,
        ["config.firmware", "config.cpuAllocation", "config.memoryAllocation"],
    )
    assert raw["config.firmware"] == "efi"
    for alloc in (raw["config.cpuAllocation"], raw["config.memoryAllocation"]):
        assert (alloc.reservation, alloc.limit, alloc.shares.level) == (0, -1, "normal"), alloc


def test_backup_records_no_reservation(esx: vmctl.Hypervisor) -> None:
    vm = esx.create_vm(
        VMSpec(name=f"res-{secrets.token_hex(3)}", disks=[vmctl.DiskSpec(size_mib=4)])
    )
    repo = vmctl.open_repo(f"memory://esx-res-{secrets.token_hex(4)}", chunk_size=MIB)
    config = repo.manifest(vm.backup(repo).id).config
    assert config["resources"] == {k: None for k in config["resources"]}, config["resources"]
