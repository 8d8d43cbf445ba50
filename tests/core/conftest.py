from __future__ import annotations

from collections.abc import Iterator

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
