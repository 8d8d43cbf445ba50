"""Certify the toy driver with vmctl's kit, as a third party would."""

from vmctl_conformance import run


def test_toy_passes_every_declared_clause(tmp_path):
    report = run("toy://lab", report=tmp_path / "toy.md")
    assert report.ok, report.output
    assert report.results["LIFE-PAUSE-1"].status == "pass"
    assert report.results["SNAP-CREATE-1"].status == "not-supported"
