"""The conformance kit against hypervsim (HVHOST1, with HVHOST2 for migration), run as an
operator runs it after `make host-hyperv` and sourcing .hosts/hyperv.env:
``vmctl conformance "$VMCTL_URI" --other-uri "$VMCTL_OTHER_URI"`` with the env file's
variables (tests/hosts/hyperv.py: env_values), no option given by hand. The network comes from
the driver (HypervDriver.kit_defaults), the guest ISO from VMCTL_KIT_OPTIONS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.hosts import hyperv as harness
from tests.hosts.kitrun import run_kit

vmctl_conformance = pytest.importorskip("vmctl_conformance")


#: Where kit reports are kept for the support matrix (python -m vmctl_conformance.matrix).
REPORTS = Path(__file__).resolve().parents[2] / "reports"


def test_kit_against_the_simulator(sim: Any, tmp_path: Path) -> None:
    report = run_kit(harness.env_values(sim), tmp_path / "hyperv-kit.json")
    report.write(tmp_path / "hyperv-kit.md")
    assert not report.refused, report.refused
    assert report.option_sources["network"] == "host"
    assert report.option_sources["boot_iso"] == "VMCTL_KIT_OPTIONS"
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
        "STOR-DELETE-1",  # StorageListing: root/cimv2 CIM_DataFile over disk_dir
        "STOR-CREATE-1",
        "DEV-HOTPLUG-DISK-1",  # SCSI storage and generation-2 NICs while running
        "DEV-HOTPLUG-NIC-1",
    ):
        assert results[clause].status == "pass", (clause, results[clause])
    for clause in ("STATS-1", "CLONE-FULL-1", "RECONF-HOT-VCPUS-1", "RECONF-HOT-MEMORY-1"):
        assert results[clause].status == "not-supported", (clause, results[clause])
