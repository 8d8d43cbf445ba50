"""The kit's options come from the driver (``kit_options`` for the URI, ``kit_defaults`` found
on the connected host), then $VMCTL_KIT_OPTIONS, then the command line; a prerequisite that
does not work stops the run once, before any clause, naming the option to give."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import vmctl
from vmctl.cli import cli
from vmctl.spi import Deadline
from vmctl_conformance import run
from vmctl_conformance._defaults import OptionsError, parse_words
from vmctl_sim import SimDriver


class FindsIsolated(SimDriver):
    """Finds the sim's second network on the host."""

    name = "findsim"

    def kit_defaults(self, *, deadline: Deadline) -> dict[str, str]:
        return {"network": "isolated", "pool": "default"}


class FindsNothing(SimDriver):
    """A driver that cannot look (its discovery fails), on a host without the network the
    kit falls back to."""

    name = "blindsim"

    def kit_defaults(self, *, deadline: Deadline) -> dict[str, str]:
        raise vmctl.BackendError("the host's network list is unreadable")


class PeerLacksIt(FindsIsolated):
    """The network found on the first host is missing on the second (sim's peer host)."""

    name = "peersim"

    def create_vm(self, spec: vmctl.VMSpec, *, deadline: Deadline) -> vmctl.VMInfo:
        if self.host_name.endswith("-peer") and any(n.network == "isolated" for n in spec.nics):
            raise vmctl.NotFound(f"no network 'isolated' on sim host {self.host_name!r}")
        return super().create_vm(spec, deadline=deadline)


@pytest.fixture
def drivers() -> Iterator[None]:
    vmctl.register("findsim", FindsIsolated)
    vmctl.register("blindsim", FindsNothing)
    vmctl.register("peersim", PeerLacksIt)
    try:
        yield
    finally:
        vmctl.unregister("findsim")
        vmctl.unregister("blindsim")
        vmctl.unregister("peersim")


CLAUSES = ["LIFE-CREATE-1", "LIFE-START-1"]


def test_found_on_the_host_then_env_then_command_line(drivers: None, tmp_path: Path) -> None:
    report = run("findsim://a", clauses=CLAUSES, report=tmp_path / "r.md")
    assert report.ok, report.output[-3000:]
    assert report.options["network"] == "isolated"
    assert report.option_sources["network"] == "host"
    assert report.option_sources["boot_kernel"] == "driver"  # kit_options(uri) still counts
    assert "`network=isolated` (host)" in (tmp_path / "r.md").read_text()

    env = {"VMCTL_KIT_OPTIONS": "network=default boot_cmdline='console=ttyS0 quiet'"}
    report = run("findsim://b", clauses=CLAUSES, env=env)
    assert report.ok, report.output[-3000:]
    assert report.options["network"] == "default"
    assert report.options["boot_cmdline"] == "console=ttyS0 quiet"
    assert report.option_sources["network"] == "VMCTL_KIT_OPTIONS"

    report = run("findsim://c", clauses=CLAUSES, env=env, options={"network": "isolated"})
    assert report.ok and report.options["network"] == "isolated"
    assert report.option_sources["network"] == "command line"


def test_a_missing_prerequisite_stops_the_run_before_any_clause(
    drivers: None, tmp_path: Path
) -> None:
    report = run(
        "blindsim://a",
        env={"VMCTL_KIT_OPTIONS": "network=no-such-net"},
        report=tmp_path / "r.json",
    )
    assert not report.ok
    assert report.counts()["pass"] == report.counts()["fail"] == 0
    refused = report.refused
    assert "network=no-such-net (from VMCTL_KIT_OPTIONS) does not work" in refused, refused
    assert "--opt network=NAME" in refused and "VMCTL_KIT_OPTIONS" in refused
    assert "pool" not in refused.split("does not work")[0]
    # why the driver found nothing is said too
    assert "the host's network list is unreadable" in refused
    # nothing is left of the check
    with vmctl.connect("blindsim://a") as hv:
        assert not [i for i in hv.list_vms() if i.name.startswith("vmctl-kit-")]


def test_a_pool_that_does_not_exist_names_pool(drivers: None) -> None:
    report = run("findsim://d", clauses=CLAUSES, options={"pool": "nopool"})
    assert report.refused.startswith("pool=nopool (from command line) does not work")
    assert "--opt pool=NAME" in report.refused


def test_the_second_host_needs_the_network_too(drivers: None) -> None:
    report = run("peersim://a", clauses=CLAUSES)
    assert report.refused.startswith(
        "network=isolated (found on the host by the driver) does not work on "
        "peersim://a-peer (the second host, for migration)"
    ), report.refused
    with vmctl.connect("peersim://a") as hv, vmctl.connect("peersim://a-peer") as peer:
        for h in (hv, peer):
            assert not [i for i in h.list_vms() if i.name.startswith("vmctl-kit-")]


def test_the_cli_says_it_once_and_fails(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["conformance", "sim://", "--opt", "network=nope", "--clause", "LIFE-START"]
    )
    assert result.exit_code == 9
    assert result.output.count("does not work") == 1, result.output
    assert "--opt network=NAME" in result.output
    assert "LIFE-START-1" not in result.output  # no clause ran, no table


def test_env_words() -> None:
    assert parse_words("a=1 b='x y' c=") == {"a": "1", "b": "x y", "c": ""}
    assert parse_words("") == {}
    with pytest.raises(OptionsError, match="KEY=VALUE"):
        parse_words("network")
    with pytest.raises(OptionsError, match="quotation"):
        parse_words("a='x")


def test_the_report_masks_credentials_in_options() -> None:
    from vmctl_conformance._defaults import redacted

    assert redacted("s3://KEY:SECRET@bucket/x") == "s3://***@bucket/x"
    assert redacted("/tmp/repo") == "/tmp/repo"
    report = run("sim://", clauses=["LIFE-START-1"], options={"backup_repo": "memory://u:pw@r"})
    assert report.options["backup_repo"] == "memory://***@r"
    assert "pw" not in report.to_json()
