"""The kit's BACKUP clauses: passed by sim, reported not-supported (never failed) by drivers
without the disk primitives (as the kvm, esx and xen drivers are today), clause by clause for
a driver with some of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import vmctl
from vmctl import Capability
from vmctl_conformance import run
from vmctl_sim import SimDriver

C = Capability
BACKUP_CAPS = {C.BACKUP, C.BACKUP_INCREMENTAL, C.BACKUP_QUIESCE, C.RESTORE}


class NoDiskAccess(SimDriver):
    name = "nodisk"

    def narrow_capabilities(self, offered: frozenset[Capability]) -> frozenset[Capability]:
        return offered - BACKUP_CAPS


class FullOnly(SimDriver):
    """Backup and restore, but no changed-block tracking and no quiesce."""

    name = "fullonly"

    def narrow_capabilities(self, offered: frozenset[Capability]) -> frozenset[Capability]:
        return offered - {C.BACKUP_INCREMENTAL, C.BACKUP_QUIESCE}


@pytest.fixture
def drivers() -> Iterator[None]:
    vmctl.register("nodisk", NoDiskAccess)
    vmctl.register("fullonly", FullOnly)
    try:
        yield
    finally:
        vmctl.unregister("nodisk")
        vmctl.unregister("fullonly")


def backup_results(uri: str, tmp_path: Path) -> dict[str, tuple[str, str]]:
    report = run(
        uri,
        report=tmp_path / "r.json",
        options={"boot_kernel": "/sim/vmlinuz"},
        clauses=["BACKUP"],
    )
    assert report.ok, report.output[-3000:]
    assert report.leaked == []
    return {c: (r.status, r.reason) for c, r in report.results.items() if c.startswith("BACKUP")}


def test_sim_passes_every_backup_clause(tmp_path: Path) -> None:
    results = backup_results(f"sim://bk?state={tmp_path / 's.json'}", tmp_path)
    assert len(results) == 9
    assert {s for s, _ in results.values()} == {"pass"}, results


def test_a_driver_without_disk_access_is_not_supported(drivers: None, tmp_path: Path) -> None:
    results = backup_results("nodisk://h", tmp_path)
    assert {s for s, _ in results.values()} == {"not-supported"}, results
    assert "'backup'" in results["BACKUP-ROUNDTRIP-1"][1]


def test_full_only_driver_clause_by_clause(drivers: None, tmp_path: Path) -> None:
    results = backup_results("fullonly://h", tmp_path)
    assert results["BACKUP-ROUNDTRIP-1"][0] == "pass"
    assert results["BACKUP-REPLACE-1"][0] == "pass"
    assert results["BACKUP-INCR-1"] == (
        "not-supported",
        "capability 'backup_incremental' not declared; NotSupported raised as required",
    )
    assert results["BACKUP-QUIESCE-1"][0] == "not-supported"


def test_toy_driver_reports_backup_not_supported() -> None:
    pytest.importorskip("vmctl_toy", reason="examples/vmctl-toy is installed by make test")
    report = run("toy://bk", clauses=["BACKUP"])
    assert report.ok, report.output[-3000:]
    statuses = {r.status for c, r in report.results.items() if c.startswith("BACKUP")}
    assert statuses == {"not-supported"}
