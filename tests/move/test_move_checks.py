"""vmctl.move's refusals and options on sim:// (fast, no other host): the shutdown grace
(``shutdown_timeout``, ``--shutdown-timeout``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import vmctl
from vmctl import BootSource, DiskSpec, NicSpec, PowerState, VMSpec
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
