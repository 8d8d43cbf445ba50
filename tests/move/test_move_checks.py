"""vmctl.move's refusals and options on sim:// (fast, no other host): the shutdown grace
(``shutdown_timeout``, ``--shutdown-timeout``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import vmctl
from vmctl import BootSource, DiskSpec, MappingKind, NicSpec, PowerState, VMSpec
from vmctl.backup import write_disk
from vmctl.cli import cli
from vmctl_sim import SimDriver

MIB = 1024 * 1024


@pytest.fixture
def sites() -> Iterator[tuple[vmctl.Hypervisor, vmctl.Hypervisor]]:
    import vmctl_sim

    vmctl_sim.reset_sites()
    with vmctl.connect("sim://chk-a") as a, vmctl.connect("sim://chk-b") as b:
        yield a, b
    vmctl_sim.reset_sites()


def running_vm(hv: vmctl.Hypervisor, name: str = "grace") -> vmctl.VM:
    """A running VM with a guest OS (it answers shutdown requests after a moment)."""
    vm = hv.create_vm(
        VMSpec(
            name=name,
            disks=[DiskSpec(size_mib=8)],
            nics=[NicSpec(network="default")],
            boot=BootSource(iso="/isos/guest.iso"),
        )
    )
    write_disk(vm, vm.config().disks[0].id, 4096, b"moved" * 100)
    vm.start()
    return vm


def test_shutdown_timeout_is_the_grace_before_power_off(
    sites: tuple[vmctl.Hypervisor, vmctl.Hypervisor], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = sites
    vm = running_vm(a)
    # a guest that hangs: the request is taken, nothing happens
    monkeypatch.setattr(SimDriver, "shutdown", lambda self, uuid, **kw: None)
    report = vmctl.move(vm, b, keep_source=False, power_on=False, shutdown_timeout=1.5)
    assert report.verified and report.source_deleted
    # the source was down for the whole grace, then powered off
    assert report.downtime_s is not None and report.downtime_s >= 1.5


def test_a_guest_that_answers_is_not_kept_waiting(
    sites: tuple[vmctl.Hypervisor, vmctl.Hypervisor],
) -> None:
    a, b = sites
    vm = running_vm(a)
    report = vmctl.move(vm, b, keep_source=False, power_on=False, shutdown_timeout=60)
    assert report.verified and report.source_deleted
    assert report.downtime_s is not None and report.downtime_s < 60


def test_shutdown_timeout_zero_powers_off_without_asking(
    sites: tuple[vmctl.Hypervisor, vmctl.Hypervisor], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = sites
    asked: list[str] = []
    real = SimDriver.shutdown

    def shutdown(self: SimDriver, uuid: str, **kw: Any) -> Any:
        asked.append(uuid)
        return real(self, uuid, **kw)

    monkeypatch.setattr(SimDriver, "shutdown", shutdown)
    vm = running_vm(a)
    report = vmctl.move(vm, b, keep_source=False, power_on=False, shutdown_timeout=0)
    assert report.verified and report.source_deleted and asked == []


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), True, "10"])
def test_a_bad_shutdown_timeout_is_refused_before_anything(
    sites: tuple[vmctl.Hypervisor, vmctl.Hypervisor], bad: object
) -> None:
    a, b = sites
    vm = running_vm(a)
    with pytest.raises(vmctl.ValidationError) as err:
        vmctl.move(vm, b, keep_source=False, shutdown_timeout=bad)  # type: ignore[arg-type]
    assert err.value.field == "shutdown_timeout"
    assert b.list_vms() == [] and vm.info().state is PowerState.RUNNING


def test_a_grace_longer_than_the_timeout_is_refused(
    sites: tuple[vmctl.Hypervisor, vmctl.Hypervisor],
) -> None:
    a, b = sites
    vm = running_vm(a)
    with pytest.raises(vmctl.ValidationError, match="shorter than the move's timeout"):
        vmctl.move(vm, b, keep_source=False, shutdown_timeout=60, timeout=30)
    assert b.list_vms() == [] and vm.info().state is PowerState.RUNNING
    # a stopped source is not shut down: the default grace (120 s) does not matter
    vm.power_off()
    assert vmctl.move(vm, b, keep_source=False, timeout=30).source_deleted


def test_cli_shutdown_timeout(tmp_path: Path) -> None:
    state = tmp_path / "site.json"
    src, dst = f"sim://a?state={state}", f"sim://b?state={state}"
    with vmctl.connect(src) as a:
        running_vm(a)
    runner = CliRunner()
    bad = runner.invoke(
        cli, ["-c", src, "move", "grace", "--to", dst, "--delete-source",
              "--shutdown-timeout", "-3"],
    )  # fmt: skip
    assert bad.exit_code != 0 and "shutdown_timeout" in bad.output
    done = runner.invoke(
        cli, ["-c", src, "--json", "move", "grace", "--to", dst, "--delete-source",
              "--no-start", "--shutdown-timeout", "0.5"],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert '"source_deleted": true' in done.output


# -- checks before create: networks, storage, MACs --------------------------------------------


def made_nothing(b: vmctl.Hypervisor) -> bool:
    return b.list_vms() == []


def stopped_vm(hv: vmctl.Hypervisor, name: str = "chk", size_mib: int = 8) -> vmctl.VM:
    return hv.create_vm(
        VMSpec(
            name=name,
            disks=[DiskSpec(size_mib=size_mib)],
            nics=[NicSpec(network="default", mac="52:54:00:aa:bb:01"),
                  NicSpec(network="isolated", mac="02:00:00:00:00:02")],
        )
    )  # fmt: skip


def test_a_missing_target_network_is_refused_before_anything(
    sites: tuple[vmctl.Hypervisor, vmctl.Hypervisor], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = sites
    vm = stopped_vm(a)
    made: list[str] = []
    real = SimDriver.create_vm

    def create_vm(self: SimDriver, spec: VMSpec, **kw: Any) -> Any:
        made.append(spec.name)
        return real(self, spec, **kw)

    monkeypatch.setattr(SimDriver, "create_vm", create_vm)
    for dry_run in (True, False):
        with pytest.raises(vmctl.NotFound) as err:
            vmctl.move(vm, b, network_map={"isolated": "dmz"}, dry_run=dry_run)
        text = str(err.value)
        assert "no network 'dmz'" in text and "networks: default, isolated" in text
        assert "nothing was made" in text
    assert made == [] and made_nothing(b)


def test_storage_too_small_is_refused_before_anything(
    sites: tuple[vmctl.Hypervisor, vmctl.Hypervisor],
) -> None:
    from vmctl_sim._site import POOL_CAPACITY_MIB

    a, b = sites
    # the target's pool holds POOL_CAPACITY_MIB of provisioned disk; most of it is taken
    taken = b.create_vm(VMSpec(name="big", disks=[DiskSpec(size_mib=POOL_CAPACITY_MIB - 1024)]))
    vm = stopped_vm(a, size_mib=2048)
    with pytest.raises(vmctl.InsufficientResources) as err:
        vmctl.move(vm, b)
    text = str(err.value)
    assert "2048 MiB" in text and "1024 MiB free" in text and "'default'" in text
    assert [i.name for i in b.list_vms()] == ["big"]
    with pytest.raises(vmctl.NotFound, match=r"no storage 'fast'.*pools: default"):
        vmctl.move(vm, b, storage="fast")
    taken.delete(force=True)
    report = vmctl.move(vm, b)  # room again
    assert report.verified
    note = next(n for n in report.mapping if n.item == "target storage")
    assert note.source == "2048 MiB of disks" and "default" in (note.target or "")


def test_macs_renewed_by_default_and_kept_on_request(
    sites: tuple[vmctl.Hypervisor, vmctl.Hypervisor],
) -> None:
    a, b = sites
    vm = stopped_vm(a)
    renewed = vmctl.move(vm, b, name="renewed")
    notes = {n.item: n for n in renewed.mapping}
    assert notes["nic 0 MAC"].kind is MappingKind.CHANGED
    assert notes["nic 0 MAC"].source == "52:54:00:aa:bb:01"
    assert notes["nic 0 MAC"].target != "52:54:00:aa:bb:01"
    macs = [n.mac for n in b.vm("renewed").config().nics]
    assert "52:54:00:aa:bb:01" not in macs and "02:00:00:00:00:02" not in macs
    assert any("MAC" in g for g in renewed.guest_needs)

    kept = vmctl.move(vm, b, name="kept", keep_macs=True, keep_source=False)
    notes = {n.item: n for n in kept.mapping}
    for i, mac in enumerate(("52:54:00:aa:bb:01", "02:00:00:00:00:02")):
        assert notes[f"nic {i} MAC"].kind is MappingKind.KEPT
        assert notes[f"nic {i} MAC"].source == notes[f"nic {i} MAC"].target == mac
    assert [n.mac for n in b.vm("kept").config().nics] == [
        "52:54:00:aa:bb:01",
        "02:00:00:00:00:02",
    ]
    assert not any("MAC" in g for g in kept.guest_needs)


def test_keep_macs_with_the_source_kept_warns(
    sites: tuple[vmctl.Hypervisor, vmctl.Hypervisor],
) -> None:
    a, b = sites
    vm = stopped_vm(a)
    plan = vmctl.move(vm, b, keep_macs=True, dry_run=True)
    note = next(n for n in plan.mapping if n.item == "nic 0 MAC")
    assert note.kind is MappingKind.KEPT and "do not run both" in note.detail
    with pytest.raises(vmctl.ValidationError) as err:
        vmctl.move(vm, b, keep_macs="yes")  # type: ignore[arg-type]
    assert err.value.field == "keep_macs"


def test_a_mac_the_target_refuses_is_refused_before_anything(
    sites: tuple[vmctl.Hypervisor, vmctl.Hypervisor], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = sites
    vm = stopped_vm(a)
    monkeypatch.setattr(
        SimDriver,
        "mac_refusal",
        lambda self, mac: "not ours" if mac.startswith("52:54:00") else None,
    )
    with pytest.raises(vmctl.ValidationError) as err:
        vmctl.move(vm, b, keep_macs=True)
    assert err.value.field == "keep_macs" and "52:54:00:aa:bb:01" in str(err.value)
    assert "not ours" in str(err.value) and made_nothing(b)
    assert vmctl.move(vm, b).verified  # new MACs: nothing to refuse


def test_cli_keep_macs(tmp_path: Path) -> None:
    state = tmp_path / "site.json"
    src, dst = f"sim://a?state={state}", f"sim://b?state={state}"
    with vmctl.connect(src) as a:
        stopped_vm(a)
    runner = CliRunner()
    done = runner.invoke(cli, ["-c", src, "--json", "move", "chk", "--to", dst, "--keep-macs"])
    assert done.exit_code == 0, done.output
    with vmctl.connect(dst) as b:
        assert b.vm("chk").config().nics[0].mac == "52:54:00:aa:bb:01"


# -- firmware -----------------------------------------------------------------------------------


@pytest.mark.parametrize("firmware", [vmctl.Firmware.BIOS, vmctl.Firmware.UEFI])
def test_firmware_is_carried(
    sites: tuple[vmctl.Hypervisor, vmctl.Hypervisor], firmware: vmctl.Firmware
) -> None:
    a, b = sites
    vm = a.create_vm(VMSpec(name="fw", disks=[DiskSpec(8)], firmware=firmware))
    assert vm.config().firmware is firmware
    report = vmctl.move(vm, b)
    note = next(n for n in report.mapping if n.item.startswith("firmware"))
    assert (note.kind, note.source, note.target) == (MappingKind.KEPT, firmware, firmware)
    assert b.vm("fw").config().firmware is firmware


def test_firmware_the_target_cannot_make_is_noted(
    sites: tuple[vmctl.Hypervisor, vmctl.Hypervisor], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = sites
    vm = a.create_vm(VMSpec(name="fw", disks=[DiskSpec(8)], firmware="uefi"))
    monkeypatch.setattr(SimDriver, "firmwares", lambda self, **kw: frozenset({vmctl.Firmware.BIOS}))
    plan = vmctl.move(vm, b, dry_run=True)
    note = next(n for n in plan.mapping if n.item.startswith("firmware"))
    assert note.kind is MappingKind.CHANGED and "cannot make uefi" in note.detail
    report = vmctl.move(vm, b)
    note = next(n for n in report.mapping if n.item.startswith("firmware"))
    assert (note.kind, note.source, note.target) == (MappingKind.CHANGED, "uefi", "bios")
    assert "does not boot" in note.detail
