"""The conformance kit against hypervsim: HVHOST1, with HVHOST2 for migration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hyperv_helpers import GUEST_ISO, SWITCH, uri

vmctl_conformance = pytest.importorskip("vmctl_conformance")


#: Where kit reports are kept for the support matrix (python -m vmctl_conformance.matrix).
REPORTS = Path(__file__).resolve().parents[2] / "reports"


def test_kit_against_the_simulator(sim: Any, tmp_path: Path) -> None:
    report = vmctl_conformance.run(
        uri(sim, 0),
        other_uri=uri(sim, 1),
        env={"VMCTL_PASSWORD": sim.password, "VMCTL_CAFILE": sim.cafile},
        options={
            "network": SWITCH,  # as docs/hyperv.md documents the kit command
            "boot_iso": GUEST_ISO,
        },
        report=tmp_path / "hyperv-kit.md",
    )
    print((tmp_path / "hyperv-kit.md").read_text())
    REPORTS.mkdir(exist_ok=True)
    report.write(REPORTS / "hyperv.json")
    assert not report.leaked, report.leaked
    assert not report.failed, f"{report.failed}\n{report.output[-5000:]}"
    results = report.results
    for clause in (
        "MIG-LIVE-1",
        "MIG-COLD-1",
        "SNAP-MEMORY-1",
        "LIFE-SHUTDOWN-1",
        "GUEST-IP-1",
        "EVT-LIFE-1",
        "LIFE-DELETE-1",
        "RES-CPU-LIMIT-1",
    ):
        assert results[clause].status == "pass", (clause, results[clause])
    for clause in ("STATS-1", "CLONE-FULL-1", "RECONF-HOT-VCPUS-1", "DEV-HOTPLUG-DISK-1"):
        assert results[clause].status == "not-supported", (clause, results[clause])
