"""A driver added with ``vmctl.register()`` can be certified with ``vmctl_conformance.run()``
(docs/driver-authoring.md presents them together): the kit runs in this process, where the
registration exists."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import vmctl
from vmctl_conformance import run
from vmctl_conformance.runner import registered_here
from vmctl_sim import SimDriver


class MySim(SimDriver):
    """A "third-party" driver, known only through vmctl.register() in this process."""

    name = "mysim"


@pytest.fixture
def registered() -> Iterator[str]:
    vmctl.register("mysim", MySim)
    try:
        yield "mysim://certify"
    finally:
        vmctl.unregister("mysim")


@pytest.mark.slow
def test_a_registered_driver_is_certified_in_process(registered: str, tmp_path: Path) -> None:
    assert registered_here(registered) and not registered_here("sim://")
    report = run(registered, report=tmp_path / "r.json", clauses=["LIFE", "INV", "CONN"])
    assert report.ok, report.output[-3000:]
    assert report.driver == "mysim"
    assert report.results["LIFE-START-1"].status == "pass"
    assert report.results["INV-LIST-1"].status == "pass"
    assert report.results["SNAP-CREATE-1"].reason.startswith("not run")
    # twice in one process: the plugin's state starts afresh
    again = run(registered, clauses=["LIFE-START-1"])
    assert again.ok and again.results["LIFE-START-1"].status == "pass"


def test_the_subprocess_cannot_see_it_so_it_is_not_used(registered: str) -> None:
    with pytest.raises(RuntimeError, match="no driver serves"):
        run(registered, clauses=["LIFE-START-1"], in_process=False)
