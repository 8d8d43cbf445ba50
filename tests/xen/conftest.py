"""The XenAPI simulator (xapisim, a 2-host pool over HTTPS with a generated certificate) for
the Xen driver's tests, started once per session; it must have no open session at the end."""

from __future__ import annotations

import ssl
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from xen_helpers import PASSWORD, connect

import vmctl

xapisim = pytest.importorskip("xapisim")
XenAPI = pytest.importorskip("XenAPI")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/xen/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.xen)


@pytest.fixture(scope="session")
def sim() -> Iterator[Any]:
    with xapisim.serve(hosts=2, vms=4, username="root", password=PASSWORD, tls=True) as server:
        yield server
        leaked = server.open_sessions()
        assert leaked == 0, f"the xen tests left {leaked} XenAPI session(s) open"


@pytest.fixture(scope="session")
def base_uri(sim: Any) -> str:
    return f"xen://root@127.0.0.1:{sim.port}"


@pytest.fixture(scope="module")
def hv(sim: Any) -> Iterator[vmctl.Hypervisor]:
    with connect(sim) as h:
        yield h


@pytest.fixture(scope="module")
def raw(sim: Any) -> Iterator[Any]:
    """A plain XenAPI SDK session, to look at what the driver did."""
    ctx = ssl.create_default_context(cafile=sim.cafile)
    session = XenAPI.Session(sim.url, transport=xmlrpc.client.SafeTransport(context=ctx))
    session.xenapi.login_with_password("root", PASSWORD, "2.21", "vmctl-tests")
    try:
        yield session.xenapi
    finally:
        session.xenapi.session.logout()


# -- a 3-host pool of one's own (plain HTTP, its own process): the hosts/evacuation and the
#    failed-host recovery tests use these, with ``pytestmark = usefixtures("state_dir")``.


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """vmctl's own state (maintenance flags, move locks) per test."""
    monkeypatch.setenv("VMCTL_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture(scope="module")
def pool() -> Iterator[Any]:
    from tests.hosts import xen as harness

    sim = harness.start_simulator(hosts=3, vms=0, tls=False, password=PASSWORD)
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def sdk(pool: Any) -> Iterator[Any]:
    """The XenAPI SDK logged in to that pool, to read back what vmctl did."""
    session = XenAPI.Session(f"http://127.0.0.1:{pool.port}/")
    session.xenapi.login_with_password("root", PASSWORD, "2.21", "vmctl-tests")
    try:
        yield session.xenapi
    finally:
        session.xenapi.session.logout()
