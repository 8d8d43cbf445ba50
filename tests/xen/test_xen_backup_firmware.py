"""A backup of a UEFI VM on xapisim restores as a UEFI VM: the restored VM's
HVM_boot_params firmware, read through a plain XenAPI session, is "uefi"."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from xen_helpers import name

import vmctl
from vmctl import DiskSpec, Firmware, VMSpec

MiB = 1024 * 1024


def test_uefi_backup_restores_as_uefi(hv: vmctl.Hypervisor, raw: Any, tmp_path: Path) -> None:
    vm = hv.create_vm(
        VMSpec(name=name("fw"), memory_mib=256, disks=[DiskSpec(size_mib=4)], firmware="uefi")
    )
    copy = None
    try:
        repo = vmctl.open_repo(str(tmp_path / "repo"), chunk_size=MiB)
        info = vm.backup(repo)
        assert repo.manifest(info.id).config["firmware"] == "uefi"
        copy = repo.restore(info.id, hv, name=name("fw-copy"))
        assert copy.config().firmware is Firmware.UEFI
        rec = raw.VM.get_record(raw.VM.get_by_uuid(copy.uuid))
        assert rec["HVM_boot_params"].get("firmware") == "uefi", rec["HVM_boot_params"]
    finally:
        for v in (vm, copy):
            if v is not None:
                with contextlib.suppress(vmctl.NotFound):
                    v.delete(force=True)
