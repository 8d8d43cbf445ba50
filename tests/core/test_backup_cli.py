"""The backup commands: backup, backups, restore, verify, prune; --json; progress bars on a
terminal only; errors with hints and exit codes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import vmctl
import vmctl.cli as cli_module
from vmctl.backup import read_disk, write_disk
from vmctl.cli import cli


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    uri = f"sim://clibk?state={tmp_path / 'site.json'}"
    with vmctl.connect(uri) as hv:
        vm = hv.create_vm(vmctl.VMSpec(name="web", disks=[vmctl.DiskSpec(size_mib=8)]))
        write_disk(vm, vm.config().disks[0].id, 0, b"hello backup" * 50_000)
    return {"uri": uri, "repo": str(tmp_path / "repo")}


def invoke(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(
        cli, ["-c", env["uri"], *args], env={"VMCTL_REPO": env["repo"], "COLUMNS": "200"}
    )


def ok_json(env: dict[str, str], *args: str) -> Any:
    result = invoke(env, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_backup_list_restore_verify_prune(env: dict[str, str]) -> None:
    first = ok_json(env, "backup", "web")
    assert first["kind"] == "full" and first["consistency"] == "stopped"
    with vmctl.connect(env["uri"]) as hv:
        vm = hv.vm("web")
        write_disk(vm, vm.config().disks[0].id, 4 * 1024 * 1024, b"changed")
    second = ok_json(env, "backup", "web", "--repo", env["repo"])
    assert second["kind"] == "incremental" and second["parent"] == first["id"]
    listed = ok_json(env, "backups")
    assert [b["id"] for b in listed] == [first["id"], second["id"]]
    assert ok_json(env, "backups", "nothing") == []
    human = invoke(env, "backups", "web")
    assert human.exit_code == 0 and first["id"] in human.output and "incremental" in human.output
    restored = ok_json(env, "restore", second["id"], "--name", "web-restored")
    assert restored["vm"]["name"] == "web-restored" and restored["vm"]["state"] == "stopped"
    with vmctl.connect(env["uri"]) as hv:
        a, b = hv.vm("web"), hv.vm("web-restored")
        size = 8 * 1024 * 1024
        assert read_disk(a, "disk1", 0, size) == read_disk(b, "disk1", 0, size)
    text = invoke(env, "verify")
    assert text.exit_code == 0 and text.output.startswith("ok: 2 backup(s)")
    assert ok_json(env, "verify", first["id"])["ok"] is True
    full = ok_json(env, "backup", "web", "--full")
    assert full["kind"] == "full" and "full=True" in full["reason"]
    pruned = ok_json(env, "prune", "--keep-last", "1", "--dry-run")
    assert pruned["dry_run"] and len(pruned["removed"]) == 2
    done = invoke(env, "prune", "--keep-last", "1")
    assert done.exit_code == 0 and done.output.startswith("removed 2 backup(s)")
    assert [b["id"] for b in ok_json(env, "backups")] == [full["id"]]
    again = invoke(env, "restore", full["id"], "--replace")
    assert again.exit_code == 0 and "replaced the disks of VM web" in again.output


def test_errors_say_what_to_do(env: dict[str, str], tmp_path: Path) -> None:
    info = ok_json(env, "backup", "web")
    taken = invoke(env, "restore", info["id"])
    assert taken.exit_code == 1
    assert "--name" in taken.output and "--replace" in taken.output
    assert "name=" not in taken.output
    missing = invoke(env, "restore", "20000101T000000Z-000000")
    assert missing.exit_code == 3 and "has no backup" in missing.output
    nopolicy = invoke(env, "prune")
    assert nopolicy.exit_code == 2 and "--keep-last" in nopolicy.output
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file").write_text("x")
    notrepo = invoke(env, "backups", "--repo", str(tmp_path / "junk"))
    assert notrepo.exit_code == 1 and "hint: check --repo" in notrepo.output
    norepo = CliRunner().invoke(cli, ["-c", env["uri"], "backups"], env={"VMCTL_REPO": None})
    assert norepo.exit_code == 2 and "--repo" in norepo.output
    never = invoke(env, "backups", "--repo", str(tmp_path / "never"))
    assert never.exit_code == 3  # listing does not create a repository
    chunk = next(p for p in Path(env["repo"], "chunks").rglob("*") if p.is_file())
    chunk.write_bytes(b"VMCTLCK1\x00garbage")
    bad = invoke(env, "verify")
    assert bad.exit_code == 1 and "disk1" in bad.output and "offset" in bad.output
    assert ok_json_fails(env, "verify")["ok"] is False
    broken = invoke(env, "restore", info["id"], "--name", "x")
    assert broken.exit_code == 1 and "offset" in broken.output


def ok_json_fails(env: dict[str, str], *args: str) -> Any:
    result = invoke(env, *args, "--json")
    assert result.exit_code == 1
    return json.loads(result.stdout)


def test_progress_bars_on_a_terminal_only(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    plain = invoke(env, "backup", "web")
    assert plain.exit_code == 0 and "MiB/s" not in plain.output
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    monkeypatch.setattr(cli_module, "_progress_console", lambda: console)
    assert invoke(env, "backup", "web", "--full").exit_code == 0
    shown = buffer.getvalue()
    assert "backup web" in shown and "4.0/4.0 MiB" in shown  # bytes done of total
    buffer.seek(0)
    buffer.truncate(0)
    assert invoke(env, "backup", "web", "--json").exit_code == 0
    assert buffer.getvalue() == ""
