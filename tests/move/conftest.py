"""The hosts vmctl.move's cross-vendor tests move between: a sim:// site, the XenAPI
simulator (xapisim, one host over HTTPS) and the vSphere simulator in ESX mode, each
started once for the session. The move lock lives in a temporary state directory."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmctl

xapisim = pytest.importorskip("xapisim")
pytest.importorskip("XenAPI")
pytest.importorskip("pyVmomi")

from tests.hosts.esx import VcsimServer, running_simulator  # noqa: E402

PASSWORD = "xen-" + secrets.token_hex(8)
XEN_NETWORK = "Pool-wide network associated with eth0"
ESX_NETWORK = "VM Network"


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMCTL_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture(scope="session")
def xen_sim() -> Iterator[Any]:
    with xapisim.serve(hosts=1, vms=0, username="root", password=PASSWORD, tls=True) as server:
        yield server
        assert server.open_sessions() == 0, "the move tests left XenAPI sessions open"


@pytest.fixture(scope="session")
def esx_sim() -> Iterator[VcsimServer]:
    with running_simulator("esx", vms=0) as srv:
        yield srv


def _cleaned(hv: vmctl.Hypervisor) -> Iterator[vmctl.Hypervisor]:
    """``hv``; the VMs a test made are deleted afterwards."""
    before = {i.uuid for i in hv.list_vms()}
    try:
        yield hv
    finally:
        for info in hv.list_vms():
            if info.uuid not in before:
                hv.vm(info.uuid).delete(force=True)
        hv.close()


@pytest.fixture
def xen(xen_sim: Any) -> Iterator[vmctl.Hypervisor]:
    uri = f"xen://root@127.0.0.1:{xen_sim.port}"
    yield from _cleaned(vmctl.connect(uri, password=PASSWORD, cafile=xen_sim.cafile, env={}))


@pytest.fixture
def esx(esx_sim: VcsimServer) -> Iterator[vmctl.Hypervisor]:
    conn = vmctl.connect(esx_sim.uri, password=esx_sim.password, cafile=str(esx_sim.cafile), env={})
    yield from _cleaned(conn)


@pytest.fixture
def sim() -> Iterator[vmctl.Hypervisor]:
    import vmctl_sim

    vmctl_sim.reset_sites()
    with vmctl.connect("sim://move-site") as hv:
        yield hv
    vmctl_sim.reset_sites()
