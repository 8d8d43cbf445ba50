"""The conformance kit against the simulator's pool: xenhost1, with xenhost2 for migration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from xen_helpers import PASSWORD

vmctl_conformance = pytest.importorskip("vmctl_conformance")


#: Where kit reports are kept for the support matrix (python -m vmctl_conformance.matrix).
REPORTS = Path(__file__).resolve().parents[2] / "reports"


def test_kit_against_the_simulator(sim: Any, tmp_path: Path) -> None:
    base = f"xen://root@127.0.0.1:{sim.port}"
    report = vmctl_conformance.run(
        f"{base}?host=xenhost1",
        other_uri=f"{base}?host=xenhost2",
        env={"VMCTL_PASSWORD": PASSWORD, "VMCTL_CAFILE": sim.cafile},
        options={
            "network": "xenbr0",  # as docs/xen.md documents the kit command
            "boot_kernel": "/boot/guest/vmlinuz",
            "boot_cmdline": "console=hvc0",
        },
        report=tmp_path / "xen-kit.md",
    )
    print((tmp_path / "xen-kit.md").read_text())
    REPORTS.mkdir(exist_ok=True)
    report.write(REPORTS / "xen.json")
    assert not report.leaked, report.leaked
    assert not report.failed, f"{report.failed}\n{report.output[-5000:]}"
    results = report.results
    for clause in (
        "MIG-LIVE-1",
        "MIG-COLD-1",
        "EVT-STATE-1",
        "EVT-LIFE-1",
        "SNAP-MEMORY-1",
        "LIFE-SHUTDOWN-1",
        "GUEST-IP-1",
        "DEV-HOTPLUG-DISK-1",
        "CLONE-LINKED-1",
        "BACKUP-ROUNDTRIP-1",
        "BACKUP-INCR-1",
        "BACKUP-REPLACE-1",
        "BACKUP-INTERRUPT-1",
        "BACKUP-FORMAT-1",
    ):
        assert results[clause].status == "pass", (clause, results[clause])
    for clause in ("STATS-1", "RES-MEMORY-LIMIT-1", "RECONF-HOT-VCPUS-1", "BACKUP-QUIESCE-1"):
        assert results[clause].status == "not-supported", (clause, results[clause])
