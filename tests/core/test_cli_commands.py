"""The CLI covers the API (reconfigure, resources, devices, boot sources), takes --json after
the command, shows tables, waits with a progress display only on a terminal, and its errors
name CLI flags and the right extra."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import vmctl
import vmctl.cli as cli_module
from vmctl.cli import cli, cli_words

BASE = ["-c", "sim://clicmd"]


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, [*BASE, *args])


def ok_json(*args: str) -> Any:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["info"],
        ["info", "v"],
        ["drivers"],
        ["snapshot", "list", "v"],
        ["disk", "list", "v"],
        ["nic", "list", "v"],
        ["resources", "v"],
    ],
)
def test_json_after_the_command(args: list[str]) -> None:
    assert invoke("create", "v", "--disk", "16", "--nic", "default").exit_code == 0
    before = invoke("--json", *args)
    after = invoke(*args, "--json")
    assert before.exit_code == after.exit_code == 0, after.output
    assert json.loads(after.output) == json.loads(before.output)


def test_info_is_a_table_not_a_repr() -> None:
    assert invoke("create", "v", "--disk", "16", "--nic", "default").exit_code == 0
    for args in (["info"], ["info", "v"]):
        text = invoke(*args).output
        assert "│" in text or "┃" in text, text
        assert "{'" not in text and "VMInfo(" not in text and "HostInfo(" not in text
    text = invoke("info", "v").output
    for word in ("vCPUs", "memory", "disks", "NICs", "default"):
        assert word in text


def test_reconfigure_and_resources() -> None:
    assert invoke("create", "v").exit_code == 0
    config = ok_json("reconfigure", "v", "--vcpus", "3", "--memory", "1024", "--json")
    assert (config["vcpus"], config["memory_mib"]) == (3, 1024)
    res = ok_json(
        "resources",
        "v",
        "--cpu-shares",
        "2048",
        "--cpu-reservation",
        "50",
        "--cpu-limit",
        "150",
        "--memory-shares",
        "3000",
        "--memory-reservation",
        "256",
        "--memory-limit",
        "2048",
        "--json",
    )
    assert res == {
        "cpu_shares": 2048,
        "cpu_reservation_percent": 50,
        "cpu_limit_percent": 150,
        "memory_shares": 3000,
        "memory_reservation_mib": 256,
        "memory_limit_mib": 2048,
    }
    assert ok_json("resources", "v", "--cpu-limit", "200", "--json")["cpu_shares"] == 2048
    empty = invoke("reconfigure", "v")
    assert empty.exit_code == 2 and "--vcpus" in empty.output


def test_disk_and_nic_add_remove() -> None:
    assert invoke("create", "v").exit_code == 0
    disk = ok_json("disk", "add", "v", "--size", "32", "--name", "data", "--json")
    assert disk["size_mib"] == 32 and disk["name"] == "data"
    assert [d["id"] for d in ok_json("disk", "list", "v", "--json")] == [disk["id"]]
    assert ok_json("disk", "remove", "v", disk["id"], "--json") == {"removed": disk["id"]}
    nic = ok_json("nic", "add", "v", "--network", "isolated", "--json")
    assert nic["network"] == "isolated"
    assert ok_json("nic", "remove", "v", nic["id"], "--json") == {"removed": nic["id"]}
    with vmctl.connect("sim://clicmd") as hv:
        config = hv.vm("v").config()
    assert config.disks == () and config.nics == ()
    missing = invoke("disk", "remove", "v", "nope")
    assert missing.exit_code == 3 and "vmctl" in missing.output


def test_create_with_a_boot_source_has_a_guest_that_shuts_down() -> None:
    made = ok_json(
        "create",
        "g",
        "--boot-kernel",
        "/boot/vmlinuz",
        "--boot-cmdline",
        "console=ttyS0",
        "--guest-os",
        "linux",
        "--start",
        "--json",
    )
    assert made["state"] == "running"
    down = ok_json("shutdown", "g", "--timeout", "10", "--json")
    assert down["state"] == "stopped" and down["reason"] == "shutdown"
    iso = ok_json("create", "i", "--boot-iso", "/iso/x.iso", "--json")
    assert iso["state"] == "stopped"
    both = invoke("create", "b", "--boot-kernel", "/k", "--boot-iso", "/i")
    assert both.exit_code == 8 and "--boot-iso" in both.output


def test_unanswerable_shutdown_fails_at_once_naming_the_flags() -> None:
    # no boot source: no guest OS to answer, which the driver reports as InvalidState
    assert invoke("create", "v", "--start").exit_code == 0
    started = time.monotonic()
    result = invoke("shutdown", "v")
    assert time.monotonic() - started < 30  # at once, not after the 300 s timeout
    assert result.exit_code == 4, result.output
    assert "--force-after" in result.output and "vmctl power-off" in result.output
    assert "force_after" not in result.output and "None s" not in result.output
    assert "power_off()" not in result.output
    forced = invoke("shutdown", "v", "--force-after", "1", "--json")
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.output)["state"] == "stopped"
    assert forced.stderr_bytes in (None, b"") or b"WARNING" not in forced.stderr_bytes


def test_shutdown_timeout_says_seconds_and_flags() -> None:
    assert invoke("create", "v", "--boot-kernel", "/k", "--start").exit_code == 0
    result = invoke("shutdown", "v", "--timeout", "0.05")  # the guest takes longer
    assert result.exit_code == 7, result.output
    assert "0.05 s" in result.output and "None" not in result.output
    assert "--force-after" in result.output and "force_after" not in result.output


def test_delete_hint_names_the_flag() -> None:
    assert invoke("create", "v", "--start").exit_code == 0
    result = invoke("delete", "v", "--yes")
    assert result.exit_code == 4
    assert "--force" in result.output and "force=True" not in result.output


def test_cli_words() -> None:
    assert cli_words("power it off first or pass force=True") == "power it off first or add --force"
    assert "--force-after" in cli_words("shutdown with force_after")
    assert "None" not in cli_words("start web: not finished after None s; it is still running")


def test_progress_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    assert invoke("create", "v").exit_code == 0
    plain = invoke("start", "v")  # CliRunner's stderr is not a terminal: silent
    assert plain.exit_code == 0 and plain.output == "v: running (booted)\n"
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100)
    monkeypatch.setattr(cli_module, "_progress_console", lambda: console)
    assert invoke("power-off", "v").exit_code == 0
    shown = buffer.getvalue()
    assert "power-off v" in shown and "timeout 300 s" in shown
    buffer.seek(0)
    buffer.truncate(0)
    assert invoke("clone", "v", "v2").exit_code == 0  # calls without wait= show it too
    assert "clone v as v2" in buffer.getvalue()
    buffer.seek(0)
    buffer.truncate(0)
    assert invoke("start", "v", "--json", "--timeout", "20").exit_code == 0
    assert invoke("create", "w", "--start", "--json").exit_code == 0
    assert buffer.getvalue() == ""  # --json: silent


BLOCK_SDKS = (
    "import sys\n"
    "for m in ('pyVmomi', 'XenAPI', 'libvirt'): sys.modules[m] = None\n"
    "from vmctl.cli import main\n"
)


@pytest.mark.parametrize(
    ("uri", "extra"),
    [
        ("esx://u@h", "esx"),
        ("vcenter://u@h/DC/C", "esx"),
        ("xen://u@h", "xen"),
        ("test:///default", "kvm"),
    ],
)
def test_missing_sdk_hint_names_the_right_extra(uri: str, extra: str) -> None:
    out = run_python(BLOCK_SDKS + f"sys.argv = ['vmctl', '-c', {uri!r}, 'list']\nmain()")
    assert out.returncode == 5, out.stderr
    assert f"vmctl[{extra}]" in out.stderr and "Traceback" not in out.stderr
    for other in {"kvm", "esx", "xen"} - {extra}:
        assert f"vmctl[{other}]" not in out.stderr


def test_drivers_says_when_the_sdk_is_missing() -> None:
    out = run_python(BLOCK_SDKS + "sys.argv = ['vmctl', 'drivers', '--json']\nmain()")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["sim"]["status"] == "installed"
    assert "vmctl[esx]" in data["esx"]["status"] and "vmctl[esx]" in data["vcenter"]["status"]
    assert "vmctl[xen]" in data["xen"]["status"]
    assert "vmctl[kvm]" in data["qemu"]["status"]


def test_conformance_without_pytest_says_what_to_install() -> None:
    out = run_python(
        "import sys\nsys.modules['pytest'] = None\nfrom vmctl.cli import main\n"
        "sys.argv = ['vmctl', 'conformance', 'sim://']\nmain()"
    )
    assert out.returncode == 2
    assert "vmctl[kit]" in out.stderr and "Traceback" not in out.stderr


def test_conformance_by_clause_id(tmp_path: Path) -> None:
    report = str(tmp_path / "r.json")
    result = CliRunner().invoke(
        cli, ["conformance", "sim://clausek", "-k", "LIFE-START", "--report", report]
    )
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert results["LIFE-START-1"]["status"] == "pass"
    assert results["LIFE-START-2"]["status"] == "pass"
    assert results["LIFE-OFF-1"]["reason"].startswith("not run")
    nothing = CliRunner().invoke(cli, ["conformance", "sim://clausek", "--clause", "NOPE-1"])
    assert nothing.exit_code == 1
    assert "no kit test matches" in nothing.output and "Traceback" not in nothing.output


def test_conformance_refusal_names_the_cli_option(tmp_path: Path) -> None:
    uri = f"sim://refuse?state={tmp_path / 's.json'}"
    with vmctl.connect(uri) as hv:
        hv.create_vm(vmctl.VMSpec(name="vmctl-kit-leftover"))
    result = CliRunner().invoke(cli, ["conformance", uri, "--clause", "LIFE-START-1"])
    assert result.exit_code == 9
    assert "vmctl-kit-leftover" in result.output and "--prefix" in result.output


@pytest.mark.slow
def test_watch_on_a_shared_sim_site_shows_other_calls(tmp_path: Path) -> None:
    """vmctl watch on a ?state=FILE site printed nothing while other calls changed VMs."""
    uri = f"sim://w?state={tmp_path / 's.json'}"
    watcher = subprocess.Popen(
        [sys.executable, "-m", "vmctl.cli", "-c", uri, "watch", "--timeout", "15", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for i in range(8):  # one a second: whenever the watcher has subscribed, it sees some
            time.sleep(1)
            made = CliRunner().invoke(cli, ["-c", uri, "create", f"seen-elsewhere-{i}"])
            assert made.exit_code == 0, made.output
        out, err = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert "seen-elsewhere" in out, err
    assert "do not show here" not in err


def test_the_cli_covers_the_api() -> None:
    import attrs
    import click

    def command(*path: str) -> click.Command:
        cmd: Any = cli
        for name in path:
            cmd = cmd.commands[name]
        return cmd  # type: ignore[no-any-return]

    def flags(*path: str) -> set[str]:
        return {o for p in command(*path).params for o in p.opts}

    for path in (
        ("reconfigure",),
        ("resources",),
        ("disk", "add"),
        ("disk", "remove"),
        ("nic", "add"),
        ("nic", "remove"),
        ("snapshot", "create"),
        ("clone",),
        ("migrate",),
        ("watch",),
    ):
        assert "--json" in flags(*path), path
    resource_flags = flags("resources")
    for f in attrs.fields(vmctl.Resources):
        wanted = "--" + f.name.removesuffix("_percent").removesuffix("_mib").replace("_", "-")
        assert wanted in resource_flags, f.name
    assert {"--boot-kernel", "--boot-initrd", "--boot-cmdline", "--boot-iso"} <= flags("create")
    assert {"--vcpus", "--memory"} <= flags("reconfigure")
    assert {"--size", "--name", "--bus", "--pool", "--source"} <= flags("disk", "add")
    assert {"--network", "--mac", "--model"} <= flags("nic", "add")


def test_outcome_unknown_says_to_look_before_repeating() -> None:
    from vmctl.cli import exit_code, hint_for

    exc = vmctl.OutcomeUnknown("connection lost after the request was sent", sent=True)
    assert exit_code(exc) == 6
    assert "vmctl list" in hint_for(exc, "create", "sim://")


def test_uri_after_the_command() -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["create", "v", "-c", "sim://after"]).exit_code == 0
    listed = runner.invoke(cli, ["list", "--json", "-c", "sim://after"])
    assert [v["name"] for v in json.loads(listed.output)] == ["v"]
    nothing = runner.invoke(cli, ["list"], env={"VMCTL_URI": ""})
    assert nothing.exit_code == 2 and "-c URI" in nothing.output
