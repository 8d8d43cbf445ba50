"""The kit's MOVE clauses with --vmctl-move-to another vendor's hypervisor: sim:// -> Xen
(xapisim) and Xen -> ESX (the vSphere simulator), the target's credentials and trust from
$VMCTL_TO_PASSWORD / $VMCTL_TO_CAFILE as ``vmctl conformance --move-to`` takes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.hosts.esx import VcsimServer
from vmctl_conformance import run

from .conftest import PASSWORD

pytestmark = [pytest.mark.xen, pytest.mark.esx]


def _check(report: Any) -> None:
    assert report.failed == [], report.output[-3000:]
    assert report.leaked == []
    statuses = {c: r.status for c, r in report.results.items() if c.startswith("MOVE-")}
    assert statuses == {c: "pass" for c in ("MOVE-ROUNDTRIP-1", "MOVE-DELETE-1", "MOVE-REFUSE-1")}


def test_kit_moves_sim_to_xen(tmp_path: Path, xen_sim: Any) -> None:
    report = run(
        f"sim://kit-move?state={tmp_path / 'site.json'}",
        clauses=["MOVE"],
        options={"disk_mib": "16"},
        env={
            "VMCTL_TO_PASSWORD": PASSWORD,
            "VMCTL_TO_CAFILE": str(xen_sim.cafile),
            "VMCTL_STATE_DIR": str(tmp_path / "state"),
        },
        pytest_args=["--vmctl-move-to", f"xen://root@127.0.0.1:{xen_sim.port}"],
    )
    _check(report)


def test_kit_moves_xen_to_esx(tmp_path: Path, xen_sim: Any, esx_sim: VcsimServer) -> None:
    report = run(
        f"xen://root@127.0.0.1:{xen_sim.port}",
        clauses=["MOVE"],
        options={"disk_mib": "16"},
        env={
            "VMCTL_PASSWORD": PASSWORD,
            "VMCTL_CAFILE": str(xen_sim.cafile),
            "VMCTL_TO_PASSWORD": esx_sim.password,
            "VMCTL_TO_CAFILE": str(esx_sim.cafile),
            "VMCTL_STATE_DIR": str(tmp_path / "state"),
        },
        pytest_args=["--vmctl-move-to", esx_sim.uri],
    )
    _check(report)
