"""Recovery of a failed host on sim:// (a site of three hosts): plan_recovery's moves and
blockers, the fencing rule (the sim's failed flag is its proof; a host that comes back is
not recovered), execute restarting the VMs elsewhere, and resuming."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmctl
from vmctl import BlockKind, HostState, MoveMode, MoveOutcome, PowerState

GUEST = vmctl.BootSource(kernel="/boot/vmlinuz")


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMCTL_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture
def site() -> Iterator[dict[str, vmctl.Hypervisor]]:
    conns = {n: vmctl.connect(f"sim://{n}?site=recovery") for n in ("h1", "h2", "h3")}
    yield conns
    for c in conns.values():
        c.close()


def make(hv: vmctl.Hypervisor, name: str, mib: int, *, start: bool = True) -> vmctl.VM:
    spec = vmctl.VMSpec(name=name, vcpus=1, memory_mib=mib, boot=GUEST)
    return hv.create_vm(spec, start=start)


def fail(hv: vmctl.Hypervisor, host: str, failed: bool = True) -> None:
    hv._driver.fail_host(host, failed)  # type: ignore[attr-defined]


def where(hv: vmctl.Hypervisor) -> dict[str, tuple[str | None, PowerState]]:
    return {
        v.name: (v.host, v.state)
        for v in (p.vm for p in hv._driver.list_placements(deadline=vmctl.spi.Deadline.after(5)))
    }  # type: ignore[attr-defined]


def test_a_live_host_is_not_recovered(site: dict[str, Any]) -> None:
    with pytest.raises(vmctl.InvalidState, match="only an unreachable host"):
        vmctl.plan_recovery(site["h1"].host("h2"))


def test_failed_host_vms_restart_elsewhere(site: dict[str, Any]) -> None:
    h1 = site["h1"]
    make(site["h2"], "db", 4096)
    make(site["h2"], "web", 1024)
    make(site["h2"], "cold", 512, start=False)
    fail(h1, "h2")
    source = h1.host("h2")
    assert source.state is HostState.UNREACHABLE
    plan = source.plan_recovery()
    assert isinstance(plan, vmctl.RecoveryPlan)
    modes = {m.vm_name: m.mode for m in plan.moves}
    assert modes == {"db": MoveMode.RESTART, "web": MoveMode.RESTART, "cold": MoveMode.COLD}
    assert plan.fence_proof and "failed" in plan.fence_proof
    assert "Recovery plan" in str(plan) and plan.to_json()["kind"] == "recovery"
    # Nothing moved yet: the records still say running on the failed host.
    assert where(h1)["db"] == ("h2", PowerState.RUNNING)
    report = vmctl.execute(plan, max_parallel=2)
    assert report.ok, str(report)
    assert report.count(MoveOutcome.MOVED) == 3
    now = where(h1)
    assert now["db"][1] is PowerState.RUNNING and now["db"][0] in ("h1", "h3")
    assert now["web"][1] is PowerState.RUNNING and now["web"][0] in ("h1", "h3")
    assert now["cold"][1] is PowerState.STOPPED and now["cold"][0] in ("h1", "h3")
    # Nothing is left on the failed host; once back, it stays in maintenance (declared).
    assert h1.host("h2").vm_count == 0
    fail(h1, "h2", False)
    assert h1.host("h2").state is HostState.MAINTENANCE
    fail(h1, "h2")
    again = vmctl.execute(plan)
    assert again.ok and again.count(MoveOutcome.ALREADY) == 3
    assert vmctl.plan_recovery(h1.host("h2")).moves == ()


def test_no_proof_no_restart_and_a_host_back_is_left_alone(site: dict[str, Any]) -> None:
    h1 = site["h1"]
    make(site["h3"], "app", 1024)
    fail(h1, "h3")
    plan = vmctl.plan_recovery(h1.host("h3"))
    fail(h1, "h3", False)  # it came back before the plan was executed
    with pytest.raises(vmctl.InvalidState, match="nothing was restarted"):
        vmctl.execute(plan, confirm_fenced=True)
    assert where(h1)["app"] == ("h3", PowerState.RUNNING)
    with pytest.raises(vmctl.ValidationError):
        vmctl.execute(plan, confirm_fenced="yes")  # type: ignore[arg-type]


def test_memory_blocker_names_the_vm(site: dict[str, Any]) -> None:
    h1 = site["h1"]
    make(site["h1"], "big1", 60 * 1024)
    make(site["h3"], "big3", 60 * 1024)
    make(site["h2"], "huge", 8 * 1024)
    fail(h1, "h2")
    plan = vmctl.plan_recovery(h1.host("h2"))
    assert [b.kind for b in plan.blockers] == [BlockKind.MEMORY]
    assert "needs 8192 MiB" in plan.blockers[0].reason
    assert vmctl.execute(plan).results == ()


# -- the CLI (a site in a state file: each invocation a fresh connection) -----------------


def test_cli_recover(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from vmctl.cli import cli

    state = tmp_path / "site.json"
    for host in ("h1", "h2"):
        with vmctl.connect(f"sim://{host}?state={state}") as hv:
            if host == "h2":
                make(hv, "app", 1024)
                fail(hv, "h2")
    uri = f"sim://h1?state={state}"
    dry = CliRunner().invoke(cli, ["-c", uri, "recover", "h2", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "Recovery plan for host h2" in dry.output and "restart" in dry.output
    assert "proven by the backend" in dry.output
    done = CliRunner().invoke(cli, ["-c", uri, "--json", "recover", "h2", "--yes"])
    assert done.exit_code == 0, done.output
    data = json.loads(done.output)
    assert [r["outcome"] for r in data["report"]["results"]] == ["moved"]
    with vmctl.connect(uri) as hv:
        assert where(hv)["app"] == ("h1", PowerState.RUNNING)
