from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vmctl.cli import cli


def vmctl_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmctl.cli", *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **_pythonpath()},
    )


def _pythonpath() -> dict[str, str]:
    return {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}


@pytest.mark.parametrize("module", ["vmctl.cli", "vmctl"])
def test_python_dash_m_has_every_command(module: str) -> None:
    """`python -m vmctl.cli` (this file as __main__) and `python -m vmctl` offer the commands
    that other modules register (backup, move, hosts, recover), as the `vmctl` script does."""
    run = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **_pythonpath()},
    )
    assert run.returncode == 0, run.stderr
    listed = {line.split()[0] for line in run.stdout.splitlines() if line.startswith("  ")}
    assert {"backup", "restore", "move", "hosts", "evacuate", "recover", "list"} <= listed


def test_persistent_sim_across_invocations(tmp_path: Path) -> None:
    uri = f"sim://cli?state={tmp_path / 's.json'}"
    assert vmctl_cmd("-c", uri, "create", "web", "--disk", "64", "--nic", "default").returncode == 0
    assert vmctl_cmd("-c", uri, "start", "web").returncode == 0
    listed = json.loads(vmctl_cmd("-c", uri, "--json", "list").stdout)
    assert [(v["name"], v["state"]) for v in listed] == [("web", "running")]
    again = vmctl_cmd("-c", uri, "start", "web")
    assert again.returncode == 4
    assert "it is running" in again.stderr and "hint:" in again.stderr
    missing = vmctl_cmd("-c", uri, "info", "nope")
    assert missing.returncode == 3 and "no VM named 'nope'" in missing.stderr
    deleted = json.loads(vmctl_cmd("-c", uri, "--json", "delete", "web", "--force", "--yes").stdout)
    assert deleted["deleted"][0].startswith("vm web")


def test_errors_have_exit_codes_and_no_traceback() -> None:
    bad = vmctl_cmd("-c", "esx://root:pw-xyz@h", "list")
    assert bad.returncode == 8
    assert "pw-xyz" not in bad.stderr and "Traceback" not in bad.stderr
    nodriver = vmctl_cmd("-c", "nosuch://h", "list")
    assert nodriver.returncode == 5 and "no driver serves" in nodriver.stderr


@pytest.mark.parametrize("args", [["drivers"], ["info"], ["list"]])
def test_json_everywhere(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["-c", "sim://j", "--json", *args])
    assert result.exit_code == 0, result.output
    json.loads(result.output)


def test_snapshot_commands() -> None:
    runner = CliRunner()
    base = ["-c", "sim://snapcli"]
    assert runner.invoke(cli, [*base, "create", "v"]).exit_code == 0
    assert runner.invoke(cli, [*base, "snapshot", "create", "v", "s1"]).exit_code == 0
    tree = json.loads(runner.invoke(cli, [*base, "--json", "snapshot", "list", "v"]).output)
    assert tree[0]["snapshot"]["name"] == "s1"
    assert runner.invoke(cli, [*base, "snapshot", "revert", "v", "s1"]).exit_code == 0
    assert runner.invoke(cli, [*base, "snapshot", "delete", "v", "s1"]).exit_code == 0
    assert runner.invoke(cli, [*base, "clone", "v", "v2"]).exit_code == 0


def test_conformance_command(tmp_path: Path) -> None:
    out = vmctl_cmd(
        "conformance",
        "sim://clikit",
        "--opt",
        "boot_kernel=/k",
        "--report",
        str(tmp_path / "r.json"),
        "-k",
        "inventory",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert (
        json.loads((tmp_path / "r.json").read_text())["results"]["INV-LIST-1"]["status"] == "pass"
    )
