"""A two-host hypervsim cluster (a real child process, HTTPS and HTTP listeners) for the
Hyper-V driver's tests, started once per session by the harness in tests/hosts/hyperv.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hyperv_helpers import connect

import vmctl

pytest.importorskip("pypsrp")
pytest.importorskip("hypervsim")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/hyperv/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.hyperv)


@pytest.fixture(scope="session")
def sim() -> Iterator[Any]:
    from tests.hosts.hyperv import running_simulator

    with running_simulator(hosts=2, vms=4, running=1, op_delay=0.05) as s:
        yield s


@pytest.fixture(scope="module")
def hv(sim: Any) -> Iterator[vmctl.Hypervisor]:
    with connect(sim) as h:
        yield h


@pytest.fixture(scope="module")
def hv2(sim: Any) -> Iterator[vmctl.Hypervisor]:
    with connect(sim, host=1) as h:
        yield h
