"""`make matrix` merges new kit reports into docs/support-matrix.md: backends without a new
report keep their column; with no report at all nothing is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vmctl_conformance import ClauseResult, Report
from vmctl_conformance.matrix import main, matrix, parse

ROOT = Path(__file__).resolve().parents[2]


def _report(uri: str, driver: str, status: str) -> Report:
    return Report(
        uri=uri,
        driver=driver,
        results={
            "LIFE-START-1": ClauseResult("pass"),
            "LIFE-PAUSE-1": ClauseResult(status, reason="r"),
            "GUEST-IP-1": ClauseResult("skip", reason="no guest"),
        },
    )


def test_the_checked_in_matrix_parses_to_every_backend() -> None:
    columns = parse((ROOT / "docs" / "support-matrix.md").read_text())
    assert len(columns) >= 6
    assert all(c.cells.get("LIFE-START-1") == "pass" for c in columns)
    assert all("not supported" not in c.cells.values() for c in columns)


def test_one_report_replaces_its_column_and_keeps_the_others(tmp_path: Path) -> None:
    first = matrix([_report("a://h", "a", "pass"), _report("b://h:123", "b", "not-supported")])
    assert "| LIFE-PAUSE-1 | pause | pass | not-supported |" in first
    assert "b `b://h`" in first  # ports dropped: they change every run
    (tmp_path / "m.md").write_text(first)
    (tmp_path / "b.json").write_text(_report("b://h:999", "b", "fail").to_json())
    code = main(["--update", str(tmp_path / "m.md"), str(tmp_path / "b.json")])
    assert code == 0
    merged = (tmp_path / "m.md").read_text()
    assert "| LIFE-PAUSE-1 | pause | pass | **FAIL** |" in merged
    assert "- a `a://h`, GUEST-IP-1: no guest" in merged
    assert [c.name for c in parse(merged)] == ["a `a://h`", "b `b://h`"]
    assert parse(merged)[0].counts == parse(first)[0].counts


def test_no_report_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "m.md"
    target.write_text("kept\n")
    out = subprocess.run(
        [sys.executable, "-m", "vmctl_conformance.matrix", "--update", str(target),
         str(tmp_path / "reports" / "*.json")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 2 and "nothing written" in out.stderr
    assert target.read_text() == "kept\n"


def test_reports_of_one_backend_are_joined_clause_by_clause() -> None:
    """The KVM kit runs RECOVER-EXEC-1 in a run of its own (against a libvirtd it may take
    down): the main run's skip and that run's pass make one column that says pass."""
    main_run = _report("qemu:///system", "kvm", "pass")
    main_run.results["RECOVER-EXEC-1"] = ClauseResult("skip", reason="no host to fail")
    main_run.leaked = ["vm a"]
    own = Report(
        uri="qemu:///system",
        driver="kvm",
        results={
            "RECOVER-EXEC-1": ClauseResult("pass"),
            "LIFE-START-1": ClauseResult("skip", reason="not selected"),
            "LIFE-PAUSE-1": ClauseResult("fail", reason="broke"),
        },
        leaked=["vm b"],
    )
    (column,) = parse(matrix([main_run, own]))
    assert column.cells["RECOVER-EXEC-1"] == "pass"
    assert column.cells["LIFE-START-1"] == "pass"  # a skip does not hide a pass
    assert column.cells["LIFE-PAUSE-1"] == "**FAIL**"  # a failure anywhere shows
    assert column.cells["GUEST-IP-1"] == "skip"
    assert column.counts == ["2", "1", "0", "1", "2"]
