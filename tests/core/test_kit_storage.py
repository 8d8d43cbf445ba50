"""The kit looks at the backend's storage (``vmctl.spi.StorageListing``): a driver whose
delete reports its disks deleted while their images stay fails STOR-DELETE-1, and the leak
report names the images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import vmctl
from vmctl_conformance import run
from vmctl_sim import SimDriver
from vmctl_sim._site import SimDisk


class LeakySim(SimDriver):
    """delete_vm and remove_disk say the disks went; their images stay in the pool."""

    name = "leakysim"

    def _drop_volume(self, disk: SimDisk) -> None:
        self.site.disks.delete(disk.store, disk.size_bytes)  # the content, not the image


@pytest.fixture
def drivers() -> Iterator[None]:
    vmctl.register("leakysim", LeakySim)
    try:
        yield
    finally:
        vmctl.unregister("leakysim")


def test_leaked_disk_images_fail_the_clause_and_are_reported(drivers: None, tmp_path: Path) -> None:
    report = run("leakysim://kit", report=tmp_path / "r.json", clauses=["STOR", "LIFE-DELETE"])
    assert report.results["STOR-DELETE-1"].status == "fail"
    assert "/sim/default/default/vmctl-kit-" in report.results["STOR-DELETE-1"].reason
    assert report.results["LIFE-DELETE-1"].status == "pass"  # what delete says looks right
    disks = [line for line in report.leaked if ": disk /sim/" in line]
    assert disks and all("vmctl-kit-" in line for line in disks), report.leaked
    assert not report.ok
