"""The conformance kit itself: the spec is covered, sim passes every clause, the safety rules
(prefix, refusal on leftovers, cleanup, leak report) hold, and a partial driver is reported
clause by clause."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import vmctl
import vmctl_conformance.suite
from vmctl import VMSpec
from vmctl_conformance import Report, load_clauses, run

ROOT = Path(__file__).resolve().parents[2]


def _suite_clauses() -> dict[str, list[str]]:
    """clause id -> the kit tests that name it."""
    found: dict[str, list[str]] = {}
    for mod in pkgutil.iter_modules(vmctl_conformance.suite.__path__):
        module = importlib.import_module(f"vmctl_conformance.suite.{mod.name}")
        for name, fn in vars(module).items():
            if not name.startswith("test_"):
                continue
            marks = [m for m in getattr(fn, "pytestmark", []) if m.name == "clause"]
            assert marks, f"{mod.name}.{name} names no clause"
            for mark in marks:
                for cid in mark.args:
                    found.setdefault(cid, []).append(f"{mod.name}.{name}")
    return found


def test_every_clause_has_a_test_and_every_test_an_existing_clause() -> None:
    spec = load_clauses()
    assert len(spec) >= 50
    covered = _suite_clauses()
    assert sorted(set(spec) - set(covered)) == [], "clauses without a test"
    assert sorted(set(covered) - set(spec)) == [], "tests naming unknown clauses"
    # One copy of the spec: the package's (shipped with the kit), spec/SPEC.md a link to it.
    link = ROOT / "spec" / "SPEC.md"
    assert link.is_symlink()
    assert link.resolve() == (ROOT / "spec" / "vmctl_conformance" / "SPEC.md").resolve()
    assert not (ROOT / "spec" / "vmctl_conformance" / "SPEC.md").is_symlink()


def test_clause_capabilities_are_real() -> None:
    for meta in load_clauses().values():
        if meta["capability"]:
            vmctl.Capability(meta["capability"])  # raises for a typo in SPEC.md


@pytest.mark.slow
def test_sim_passes_every_clause_twice_without_leftovers(tmp_path: Path) -> None:
    uri = f"sim://kit?state={tmp_path / 'site.json'}"
    opts = {"boot_kernel": "/sim/vmlinuz"}
    for i in range(2):
        report = run(uri, report=tmp_path / f"r{i}.json", options=opts)
        assert report.failed == [], report.output[-3000:]
        assert report.leaked == []
        assert report.refused == ""
        statuses = {r.status for r in report.results.values()}
        assert statuses == {"pass"}, {c: r for c, r in report.results.items() if r.status != "pass"}
    again = Report.from_json((tmp_path / "r1.json").read_text())
    assert again.ok and again.driver == "sim"


def test_refuses_a_host_with_leftovers(tmp_path: Path) -> None:
    uri = f"sim://kit?state={tmp_path / 'site.json'}"
    with vmctl.connect(uri) as hv:
        hv.create_vm(VMSpec(name="vmctl-kit-left-over"))
    report = run(uri, report=tmp_path / "r.md")
    assert "vmctl-kit-left-over" in report.refused
    assert not report.ok
    assert "Refused to run" in (tmp_path / "r.md").read_text()
    with vmctl.connect(uri) as hv:  # the kit touched nothing
        assert [i.name for i in hv.list_vms()] == ["vmctl-kit-left-over"]


@pytest.mark.slow
def test_partial_driver_is_reported_not_supported() -> None:
    pytest.importorskip("vmctl_toy", reason="examples/vmctl-toy is installed by make test")
    report = run("toy://kit")
    assert report.ok, report.output[-3000:]
    assert report.results["LIFE-PAUSE-1"].status == "pass"
    for cid in ("LIFE-SUSPEND-1", "SNAP-CREATE-1", "MIG-LIVE-1", "EVT-STATE-1"):
        assert report.results[cid].status == "not-supported", cid
    assert "not declared" in report.results["SNAP-CREATE-1"].reason


@pytest.mark.slow
def test_markdown_report_is_the_matrix(tmp_path: Path) -> None:
    run(
        "sim://md",
        report=tmp_path / "r.md",
        options={"boot_kernel": "/k"},
        pytest_args=["-k", "lifecycle"],
    )
    text = (tmp_path / "r.md").read_text()
    assert "| LIFE-START-1 | - | pass |" in text
    assert "| SNAP-CREATE-1 | snapshot | skip | not run (deselected) |" in text


@pytest.mark.slow
def test_conformance_sim_needs_no_options(tmp_path: Path) -> None:
    """`vmctl conformance sim://` passes every clause: the sim offers its own defaults."""
    from vmctl_conformance.matrix import matrix

    report = run("sim://", report=tmp_path / "sim.json")
    assert report.ok, report.output[-3000:]
    assert {r.status for r in report.results.values()} == {"pass"}
    reports_dir = ROOT / "reports"
    reports_dir.mkdir(exist_ok=True)
    report.write(reports_dir / "sim.json")
    table = matrix([report])
    assert "| LIFE-START-1 | - | pass |" in table
