"""The mutation harness (tests/mutants, `make mutants`): the conformance kit catches every
realistic driver bug of the catalogue, or the catalogue says why the bug cannot be seen.

The whole catalogue runs here (each mutant on the clauses it names, two at a time: about
70 s on two idle cores, 2-3 minutes on a loaded machine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tests" / "mutants" / "harness.py"

sys.path.insert(0, str(HARNESS.parent))
import harness  # type: ignore[import-not-found]  # noqa: E402


def test_catalogue_is_large_and_covers_every_kind() -> None:
    mutants = harness.load()
    assert len(mutants) >= 30
    assert {m.kind for m in mutants} == harness.KINDS
    explained = [m for m in mutants if m.equivalent]
    assert len(explained) <= len(mutants) // 5, "most mutants must be killed, not explained"


def test_every_mutant_still_applies_to_the_driver() -> None:
    """A mutant whose text is no longer in the driver tests nothing: update it."""
    sim = harness.SIM
    stale = [m.id for m in harness.load() if (sim / m.file).read_text().count(m.find) != 1]
    assert stale == []


def test_a_mutant_is_killed_and_an_unchanged_driver_is_not(tmp_path: Path) -> None:
    """The harness sees a kill (a mutant the kit must catch) and a pass (the driver as it
    is), so that a harness that always says "killed" or never does would fail here."""
    (mutant,) = [m for m in harness.load() if m.id == "remove-disk-detaches-all"]
    assert harness.run_one(mutant, mutant.clauses).by[:1] == ["DEV-ONLY-1"]
    assert not harness.run_one(None, mutant.clauses).killed


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_kit_kills_every_mutant_or_explains_it() -> None:
    proc = subprocess.run(
        [sys.executable, str(HARNESS), "-j", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    summary = [line for line in out.splitlines() if line.startswith("killed ")]
    assert summary, out[-2000:]
    killed, total = summary[-1].split()[1].rstrip(";").split("/")
    assert int(total) >= 30
    equivalent = sum(1 for m in harness.load() if m.equivalent)
    assert int(killed) >= int(total) - equivalent, summary[-1]
