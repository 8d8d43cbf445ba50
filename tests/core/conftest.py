from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import vmctl
import vmctl_sim


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/core/" in str(item.path):
            item.add_marker(pytest.mark.sim)


@pytest.fixture(autouse=True)
def _fresh_sim() -> Iterator[None]:
    vmctl_sim.reset_sites()
    yield
    vmctl_sim.reset_sites()


@pytest.fixture
def hv() -> Iterator[vmctl.Hypervisor]:
    with vmctl.connect("sim://test") as h:
        yield h


@pytest.fixture
def other() -> Iterator[vmctl.Hypervisor]:
    with vmctl.connect("sim://test-peer") as h:
        yield h


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, vmctl.Hypervisor]]:
    """Connections to the three hosts h1, h2, h3 of sim site "hosts" (one vCenter cluster or
    xapi pool), vmctl's state (maintenance flags) in the test's ``tmp_path / "state"``."""
    monkeypatch.setenv("VMCTL_STATE_DIR", str(tmp_path / "state"))
    conns = {n: vmctl.connect(f"sim://{n}?site=hosts") for n in ("h1", "h2", "h3")}
    yield conns
    for c in conns.values():
        c.close()
