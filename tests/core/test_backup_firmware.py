"""Backups record the VM's firmware (BIOS/UEFI) in the manifest's neutral configuration and
a restore into a new VM makes it with that firmware where the target can; where it cannot,
or the manifest does not say (one written before the field), the VM gets the target's
default and the restore logs the change as move's mapping report words it."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

import vmctl
from vmctl import DiskSpec, Firmware, VMSpec
from vmctl.backup import Repository, open_repo, read_disk, write_disk
from vmctl_sim import SimDriver

CS = 256 * 1024


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return open_repo(str(tmp_path / "repo"), chunk_size=CS)


def _manifest_file(tmp_path: Path, vm: vmctl.VM, backup_id: str) -> Path:
    return tmp_path / "repo" / "backups" / vm.uuid / f"{backup_id}.json"


def _rewrite(path: Path, edit: dict[str, object]) -> None:
    """Edit a manifest's config as another writer would, checksum recomputed by the
    format's rule (SHA-256 of the canonical JSON of everything but the checksum)."""
    doc = json.loads(path.read_text())
    del doc["checksum"]
    for key, value in edit.items():
        if value is None:
            doc["config"].pop(key, None)
        else:
            doc["config"][key] = value
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    doc["checksum"] = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    path.write_text(json.dumps(doc, indent=1))


@pytest.mark.parametrize("firmware", list(Firmware))
def test_firmware_recorded_and_restored(
    hv: vmctl.Hypervisor, repo: Repository, tmp_path: Path, firmware: Firmware
) -> None:
    vm = hv.create_vm(VMSpec(name="fw", disks=[DiskSpec(2)], firmware=firmware))
    write_disk(vm, vm.config().disks[0].id, 4096, b"firmware")
    info = vm.backup(repo)
    raw = json.loads(_manifest_file(tmp_path, vm, info.id).read_text())
    assert raw["config"]["firmware"] == firmware.value
    copy = repo.restore(info.id, hv, name="fw-copy")
    assert copy.config().firmware is firmware
    assert read_disk(copy, copy.config().disks[0].id, 4096, 8) == b"firmware"


def test_target_that_cannot_make_it_gets_its_default_and_says_so(
    hv: vmctl.Hypervisor,
    repo: Repository,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    vm = hv.create_vm(VMSpec(name="fw", disks=[DiskSpec(1)], firmware="uefi"))
    info = vm.backup(repo)
    monkeypatch.setattr(SimDriver, "firmwares", lambda self, **kw: frozenset({Firmware.BIOS}))
    with caplog.at_level(logging.WARNING, logger="vmctl.backup"):
        copy = repo.restore(info.id, hv, name="fw-copy")
    assert copy.config().firmware is Firmware.BIOS
    (msg,) = [r.getMessage() for r in caplog.records if "firmware" in r.getMessage()]
    assert "[changed] firmware (BIOS/UEFI): uefi -> bios" in msg, msg
    assert "cannot make uefi VMs" in msg and "does not boot" in msg, msg


def test_target_driver_without_a_firmware_choice(
    hv: vmctl.Hypervisor,
    repo: Repository,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    vm = hv.create_vm(VMSpec(name="fw", disks=[DiskSpec(1)], firmware="uefi"))
    info = vm.backup(repo)
    monkeypatch.setattr(SimDriver, "firmwares", lambda self, **kw: None)
    with caplog.at_level(logging.WARNING, logger="vmctl.backup"):
        copy = repo.restore(info.id, hv, name="fw-copy")
    assert copy.config().firmware is Firmware.BIOS  # the sim's default
    (msg,) = [r.getMessage() for r in caplog.records if "firmware" in r.getMessage()]
    assert msg.endswith(
        "[unknown] firmware (BIOS/UEFI): uefi -> bios (the sim driver does not take a firmware "
        "choice: the target made the VM with its default; a guest installed for UEFI does not "
        "boot on BIOS, nor the reverse)"
    ), msg


def test_kept_firmware_logs_nothing(
    hv: vmctl.Hypervisor, repo: Repository, caplog: pytest.LogCaptureFixture
) -> None:
    vm = hv.create_vm(VMSpec(name="fw", disks=[DiskSpec(1)], firmware="uefi"))
    info = vm.backup(repo)
    with caplog.at_level(logging.WARNING, logger="vmctl.backup"):
        repo.restore(info.id, hv, name="fw-copy")
    assert not [r for r in caplog.records if "firmware" in r.getMessage()]


@pytest.mark.parametrize("recorded", [None, "efi-secure-boot", 7])
def test_manifest_without_a_known_firmware_still_restores(
    hv: vmctl.Hypervisor,
    repo: Repository,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    recorded: object,
) -> None:
    """A manifest written before the field (None: the key is absent), or naming a firmware
    this vmctl does not know: the VM is made with the target's default, with a warning."""
    vm = hv.create_vm(VMSpec(name="fw", disks=[DiskSpec(1)], firmware="uefi"))
    write_disk(vm, vm.config().disks[0].id, 0, b"old")
    info = vm.backup(repo)
    path = _manifest_file(tmp_path, vm, info.id)
    _rewrite(path, {"firmware": recorded})
    assert ("firmware" in json.loads(path.read_text())["config"]) is (recorded is not None)
    with caplog.at_level(logging.WARNING, logger="vmctl.backup"):
        copy = repo.restore(info.id, hv, name="fw-copy")
    assert copy.config().firmware is Firmware.BIOS
    assert read_disk(copy, copy.config().disks[0].id, 0, 3) == b"old"
    (msg,) = [r.getMessage() for r in caplog.records if "firmware" in r.getMessage()]
    assert f"[unknown] firmware (BIOS/UEFI): - -> bios (backup {info.id} does not record" in msg
    assert repo.verify().ok


def test_checksum_guards_the_firmware(
    hv: vmctl.Hypervisor, repo: Repository, tmp_path: Path
) -> None:
    """The firmware is part of the checksummed document: edited without the checksum, the
    manifest is refused rather than restored with another firmware."""
    vm = hv.create_vm(VMSpec(name="fw", disks=[DiskSpec(1)], firmware="uefi"))
    info = vm.backup(repo)
    path = _manifest_file(tmp_path, vm, info.id)
    path.write_text(path.read_text().replace('"firmware": "uefi"', '"firmware": "bios"'))
    with pytest.raises(vmctl.VmctlError, match="checksum"):
        repo.restore(info.id, hv, name="fw-copy")
    assert [i.name for i in hv.list_vms()] == ["fw"]
