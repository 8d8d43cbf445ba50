"""A failing clause's note says how it failed: the statement, the expected and the actual
values (or the error the driver raised), in the report and in the matrix. Checked with a
deliberately broken driver (the sim with three bugs) run through the kit, and a state read
again after the settle time catches a request that returns before the host is done."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import vmctl
from vmctl.spi import Deadline
from vmctl_conformance import run
from vmctl_conformance._expect import Mismatch, compare_note, expect, show
from vmctl_conformance.matrix import matrix
from vmctl_sim import SimDriver


class BrokenSim(SimDriver):
    """The sim with bugs a driver author could make."""

    name = "brokensim"

    def set_vcpus(self, uuid: str, vcpus: int, *, live: bool, deadline: Deadline) -> None:
        return None  # the request is accepted and ignored

    def reset(self, uuid: str, *, deadline: Deadline) -> None:
        super().reset(uuid, deadline=deadline)
        # returns RUNNING, and the VM stops a moment later (before the kit's settle time)
        timer = threading.Timer(0.1, self._halt, (uuid,))
        timer.daemon = True
        timer.start()

    def _halt(self, uuid: str) -> None:
        self.power_off(uuid, deadline=Deadline.after(5))

    def delete_snapshot(self, uuid: str, snapshot_id: str, *, deadline: Deadline) -> None:
        raise vmctl.BackendError("snapshot store unavailable")

    def delete_vm(self, uuid: str, *, deadline: Deadline) -> list[str]:
        return super().delete_vm(uuid, deadline=deadline)[:1]  # the disks go unreported


@pytest.fixture
def broken() -> Iterator[str]:
    vmctl.register("brokensim", BrokenSim)
    try:
        yield "brokensim://notes"
    finally:
        vmctl.unregister("brokensim")


def test_failure_notes_name_the_statement_and_the_values(broken: str, tmp_path: Path) -> None:
    report = run(
        broken,
        report=tmp_path / "r.json",
        clauses=[
            "RECONF-VCPUS-1",
            "LIFE-RESET-1",
            "SNAP-DELETE-1",
            "LIFE-START-1",
            "LIFE-DELETE-1",
        ],
        options={"settle_s": "0.5"},
    )
    failed = ["LIFE-DELETE-1", "LIFE-RESET-1", "RECONF-VCPUS-1", "SNAP-DELETE-1"]
    assert report.failed == failed, report.output
    assert report.results["LIFE-START-1"].status == "pass"
    notes = {cid: report.results[cid].reason for cid in report.failed}
    # a plain comparison: the statement, then expected and actual
    vcpus = notes["RECONF-VCPUS-1"]
    assert vcpus.startswith("test_cold_vcpus: `assert vm.reconfigure(vcpus=2).vcpus == 2`"), vcpus
    assert "expected 2, got 1" in vcpus, vcpus
    # the state read again after the settle time
    reset = notes["LIFE-RESET-1"]
    assert 'kit.settled(vm, S.RUNNING, "reset")' in reset, reset
    assert "0.5 s after reset returned: expected running, got stopped" in reset, reset
    # an error the driver raised: which statement, which error
    snap = notes["SNAP-DELETE-1"]
    assert '`vm.delete_snapshot("b")`' in snap, snap
    assert "raised BackendError" in snap and "snapshot store unavailable" in snap, snap
    # a clause's own message, then the comparison
    deleted = notes["LIFE-DELETE-1"]
    assert "the VM's disk is not among what was deleted" in deleted, deleted
    assert deleted.endswith("expected a value >= 2, got 1"), deleted
    for note in notes.values():
        assert "AssertionError" not in note and ".py:" not in note, note
    # the markdown report and the matrix carry the same notes
    md = report.to_markdown()
    assert "expected 2, got 1" in md
    page = matrix([report])
    assert "RECONF-VCPUS-1: FAIL: test_cold_vcpus" in page, page
    assert "expected running, got stopped" in page


def test_a_correct_driver_passes_the_settle_checks(tmp_path: Path) -> None:
    report = run("sim://", clauses=["LIFE-RESET-1", "LIFE-PAUSE-1"], options={"settle_s": "0.2"})
    assert report.ok, report.output[-3000:]


def test_expect_and_compare_notes() -> None:
    expect(vmctl.PowerState.RUNNING, vmctl.PowerState.RUNNING, "state")
    with pytest.raises(Mismatch) as err:
        expect(vmctl.PowerState.STOPPED, vmctl.PowerState.RUNNING, "state after start")
    assert str(err.value) == "state after start: expected running, got stopped"
    assert (err.value.expected, err.value.actual) == (
        vmctl.PowerState.RUNNING,
        vmctl.PowerState.STOPPED,
    )
    assert compare_note("==", 1, 2) == "expected 2, got 1"
    assert compare_note("in", "x", ["a"]) == "expected 'x' to be among ['a']"
    assert show({"b", "a"}) == "{'a', 'b'}"
    assert len(show("x" * 1000)) <= 160
