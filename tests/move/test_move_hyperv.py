"""Hyper-V has no disk data path over WS-Management: vmctl.move to or from a Hyper-V host
(hypervsim, a real child process speaking WS-Man) is refused before anything is read or
made, with that reason."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmctl
from vmctl import DiskSpec, VMSpec

pytest.importorskip("pypsrp")
pytest.importorskip("hypervsim")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hyperv"))
from hyperv_helpers import connect, name

pytestmark = pytest.mark.hyperv


@pytest.fixture(scope="module")
def hyperv_sim() -> Iterator[Any]:
    from tests.hosts.hyperv import running_simulator

    with running_simulator(hosts=1, vms=1) as s:
        yield s


@pytest.fixture
def hyperv(hyperv_sim: Any) -> Iterator[vmctl.Hypervisor]:
    with connect(hyperv_sim) as h:
        yield h


@pytest.fixture
def sim() -> Iterator[vmctl.Hypervisor]:
    with vmctl.connect("sim://move-hyperv") as h:
        yield h
        for info in h.list_vms():
            h.vm(info.uuid).delete(force=True)


def test_a_move_to_hyperv_is_refused_before_anything(
    hyperv: vmctl.Hypervisor, sim: vmctl.Hypervisor, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("VMCTL_STATE_DIR", str(tmp_path))
    vm = sim.create_vm(VMSpec(name="to-hv", disks=[DiskSpec(size_mib=8)]))
    before = sorted(i.uuid for i in hyperv.list_vms())
    for dry_run in (True, False):
        with pytest.raises(vmctl.NotSupported) as err:
            vmctl.move(vm, hyperv, keep_source=False, dry_run=dry_run)
        text = str(err.value)
        assert "no disk data path" in text and "WS-Management" in text
        assert "nothing was touched" in text
    assert sorted(i.uuid for i in hyperv.list_vms()) == before
    assert [i.name for i in sim.list_vms()] == ["to-hv"]


def test_a_move_from_hyperv_is_refused_before_anything(
    hyperv: vmctl.Hypervisor, sim: vmctl.Hypervisor, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("VMCTL_STATE_DIR", str(tmp_path))
    vm = hyperv.create_vm(VMSpec(name=name("mv"), memory_mib=512))
    try:
        with pytest.raises(vmctl.NotSupported, match=r"no disk data path.*WS-Management"):
            vmctl.move(vm, sim, keep_source=False)
        assert sim.list_vms() == []
        assert vm.info().state is vmctl.PowerState.STOPPED
    finally:
        vm.delete(force=True)


def test_hyperv_firmware_is_uefi_and_bios_is_refused(hyperv: vmctl.Hypervisor) -> None:
    before = sorted(i.uuid for i in hyperv.list_vms())
    with pytest.raises(vmctl.ValidationError) as err:
        hyperv.create_vm(VMSpec(name=name("bios"), memory_mib=512, firmware="bios"))
    assert err.value.field == "firmware" and "generation 2" in str(err.value)
    assert sorted(i.uuid for i in hyperv.list_vms()) == before
    vm = hyperv.create_vm(VMSpec(name=name("uefi"), memory_mib=512, firmware="uefi"))
    try:
        assert vm.config().firmware is vmctl.Firmware.UEFI
    finally:
        vm.delete(force=True)
