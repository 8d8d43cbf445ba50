"""vmctl hosts / maintenance / evacuate on a sim site kept in a state file (each invocation a
fresh connection, as separate CLI processes would be)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import vmctl
from vmctl.cli import cli


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("VMCTL_STATE_DIR", str(tmp_path / "state"))
    state = tmp_path / "site.json"
    boot = vmctl.BootSource(kernel="/boot/vmlinuz")
    for host in ("h1", "h2", "h3"):
        with vmctl.connect(f"sim://{host}?state={state}") as hv:
            if host == "h2":
                for i in range(3):
                    spec = vmctl.VMSpec(name=f"v{i}", vcpus=1, memory_mib=1024, boot=boot)
                    hv.create_vm(spec, start=i != 2)
    return f"sim://h1?state={state}"


def run(uri: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["-c", uri, *args])


def test_hosts_lists_the_site(site: str) -> None:
    text = run(site, "hosts")
    assert text.exit_code == 0, text.output
    assert "h1" in text.output and "h3" in text.output and "connected" in text.output
    data = json.loads(run(site, "hosts", "--json").output)
    assert [h["name"] for h in data] == ["h1", "h2", "h3"]
    assert data[1]["vm_count"] == 3 and data[1]["memory_used_mib"] == 2048


def test_evacuate_dry_run_then_for_real(site: str) -> None:
    dry = run(site, "evacuate", "h2", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "Evacuation plan for host h2" in dry.output and "live" in dry.output
    assert "cold" in dry.output
    plan = json.loads(run(site, "evacuate", "h2", "--dry-run", "--json").output)
    assert len(plan["moves"]) == 3 and not plan["blockers"]
    hosts = json.loads(run(site, "hosts", "--json").output)
    assert hosts[1]["vm_count"] == 3  # the dry run moved nothing
    done = run(site, "evacuate", "h2", "--yes", "--max-parallel", "2")
    assert done.exit_code == 0, done.output
    assert "3 moved" in done.output
    again = run(site, "evacuate", "h2", "--yes")
    assert again.exit_code == 0 and "nothing to move" in again.output
    hosts = json.loads(run(site, "hosts", "--json").output)
    assert hosts[1]["vm_count"] == 0 and hosts[0]["vm_count"] + hosts[2]["vm_count"] == 3


def test_maintenance_on_off_and_its_effect_on_plans(site: str) -> None:
    on = run(site, "maintenance", "h3", "on", "--json")
    assert on.exit_code == 0, on.output
    h3 = json.loads(on.output)
    assert h3["state"] == "maintenance" and h3["backend_maintenance"] and h3["vmctl_maintenance"]
    assert "maintenance" in run(site, "hosts").output
    plan = json.loads(run(site, "evacuate", "h2", "--dry-run", "--json").output)
    assert {m["target"] for m in plan["moves"]} == {"h1"}
    refused = run(site, "evacuate", "h2", "--dry-run", "--target", "h3")
    assert refused.exit_code != 0 and "maintenance" in refused.output
    off = run(site, "maintenance", "h3", "off", "--json")
    assert json.loads(off.output)["state"] == "connected"
    evac = run(site, "maintenance", "h2", "on", "--evacuate")
    assert evac.exit_code == 0, evac.output
    h2 = json.loads(run(site, "hosts", "--json").output)[1]
    assert h2["state"] == "maintenance" and h2["vm_count"] == 0


def test_rebalance_dry_run_then_for_real(site: str) -> None:
    state = site.split("state=")[1]
    with vmctl.connect(f"sim://h2?state={state}") as h2:
        for i in range(3):
            spec = vmctl.VMSpec(name=f"big{i}", vcpus=1, memory_mib=12 * 1024)
            h2.create_vm(spec, start=True)
    dry = run(site, "rebalance", "--dry-run", "--threshold", "20")
    assert dry.exit_code == 0, dry.output
    assert "BEFORE" in dry.output and "AFTER" in dry.output
    plan = json.loads(run(site, "rebalance", "--dry-run", "--threshold", "20", "--json").output)
    assert plan["moves"] and plan["spread_after"] <= 20 < plan["spread_before"]
    done = run(site, "rebalance", "--threshold", "20", "--yes")
    assert done.exit_code == 0, done.output
    again = json.loads(run(site, "rebalance", "--dry-run", "--threshold", "20", "--json").output)
    assert not again["moves"]


def test_fleet_file_list_and_a_failing_member(tmp_path: Path) -> None:
    uris = [f"sim://f{i}?state={tmp_path / f'f{i}.json'}" for i in range(3)]
    for i, uri in enumerate(uris):
        with vmctl.connect(uri) as hv:
            hv.create_vm(vmctl.VMSpec(name=f"web{i}", vcpus=1, memory_mib=256))
    members = tmp_path / "fleet.txt"
    members.write_text("# three sims\n" + "\n".join(uris) + "\n")
    listed = CliRunner().invoke(cli, ["fleet", str(members), "list", "--json"])
    assert listed.exit_code == 0, listed.output
    data = json.loads(listed.output)
    assert {u: [v["name"] for v in vms] for u, vms in data["values"].items()} == {
        u: [f"web{i}"] for i, u in enumerate(uris)
    }
    members.write_text("\n".join([*uris, "sim://x?site=y&bogus=1"]))
    hosts = CliRunner().invoke(cli, ["fleet", str(members), "hosts"])
    assert hosts.exit_code == 1 and "failed: sim://x?site=y&bogus=1" in hosts.output
    stats = CliRunner().invoke(cli, ["fleet", str(members), "stats", "--json"])
    assert set(json.loads(stats.output)["errors"]) == {"sim://x?site=y&bogus=1"}
