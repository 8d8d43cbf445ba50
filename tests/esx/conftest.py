"""The vSphere API simulator (tests/hosts/esx.py) in ESX mode and in vCenter mode, started once
per session for the esx driver's tests. At the end no session of the test user may be left.

An "admin" pyvmomi connection (its own session, CA-verified) lets tests look behind the
driver: count sessions (SessionManager.sessionList), read raw properties, and set simulator
properties through its ``SET.<property>`` extraConfig hook (e.g. to make VMware Tools look
like they run, which the simulator otherwise never reports).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmctl
from tests.hosts.esx import VcsimServer, running_simulator

pytest.importorskip("pyVmomi")
from pyVim.connect import Connect, Disconnect
from pyVmomi import vim, vmodl

NETWORK = "VM Network"  # the standard port group of both simulator models
DVPG = "DC0_DVPG0"  # the vCenter model's distributed port group


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/esx/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.esx)


class Admin:
    """A plain pyvmomi session on a simulator, for looking behind the driver."""

    def __init__(self, srv: VcsimServer) -> None:
        self.srv = srv
        ctx = ssl.create_default_context(cafile=str(srv.cafile))
        self.si: Any = Connect(
            host=srv.host, port=srv.port, user=srv.username, pwd=srv.password, sslContext=ctx
        )
        self.content: Any = self.si.RetrieveContent()
        self.key = self.content.sessionManager.currentSession.key

    def close(self) -> None:
        Disconnect(self.si)

    def props(self, obj: Any, vim_type: Any, paths: list[str]) -> dict[str, Any]:
        pcq = vmodl.query.PropertyCollector
        spec = pcq.FilterSpec(
            objectSet=[pcq.ObjectSpec(obj=obj)],
            propSet=[pcq.PropertySpec(type=vim_type, pathSet=paths)],
        )
        result = self.content.propertyCollector.RetrievePropertiesEx(
            specSet=[spec], options=pcq.RetrieveOptions()
        )
        if result is None:
            return {}
        return {p.name: p.val for p in result.objects[0].propSet or ()}

    def other_sessions(self) -> list[str]:
        """Sessions of the test user other than this admin session."""
        sessions = (
            self.props(self.content.sessionManager, vim.SessionManager, ["sessionList"]).get(
                "sessionList"
            )
            or []
        )
        return [s.key for s in sessions if s.key != self.key]

    def vm(self, uuid: str) -> Any:
        ref = self.content.searchIndex.FindByUuid(uuid=uuid, vmSearch=True, instanceUuid=True)
        assert ref is not None, f"no VM {uuid}"
        return ref

    def set_props(self, uuid: str, **values: str) -> None:
        """Set VM properties in the simulator (its ``SET.<path>`` extraConfig hook)."""
        spec = vim.vm.ConfigSpec(
            extraConfig=[
                vim.option.OptionValue(key=f"SET.{k.replace('__', '.')}", value=v)
                for k, v in values.items()
            ]
        )
        task = self.vm(uuid).ReconfigVM_Task(spec=spec)
        info = self.props(task, vim.Task, ["info.state"])
        assert str(info["info.state"]) == "success"

    def _reconfigure(self, ref: Any, changes: list[Any]) -> None:
        task = ref.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=changes))
        info = self.props(task, vim.Task, ["info.state", "info.error"])
        assert str(info["info.state"]) == "success", info.get("info.error")

    def set_drives(self, ref: Any, *, connected: bool) -> None:
        """Connect or disconnect the VM's CD/DVD drives (as the vSphere client's "Connect")."""
        devices = self.props(ref, vim.VirtualMachine, ["config.hardware.device"])
        changes = []
        for d in devices["config.hardware.device"]:
            if isinstance(d, vim.vm.device.VirtualCdrom) and d.connectable.connected != connected:
                d.connectable.connected = connected
                changes.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=d))
        if changes:
            self._reconfigure(ref, changes)

    def pass_through_pci(self, ref: Any) -> None:
        """Give the VM a PCI device of its host (DirectPath I/O); ``remove_pci`` takes it."""
        backing = vim.vm.device.VirtualPCIPassthrough.DeviceBackingInfo(
            id="0000:3b:00.0", deviceId="10fb", systemId="5c4f7a6e", vendorId=0x10DE,
            deviceName="test NIC",
        )  # fmt: skip
        device = vim.vm.device.VirtualPCIPassthrough(key=-1, backing=backing)
        self._reconfigure(ref, [vim.vm.device.VirtualDeviceSpec(operation="add", device=device)])

    def remove_pci(self, ref: Any) -> None:
        devices = self.props(ref, vim.VirtualMachine, ["config.hardware.device"])
        self._reconfigure(
            ref,
            [
                vim.vm.device.VirtualDeviceSpec(operation="remove", device=d)
                for d in devices["config.hardware.device"]
                if isinstance(d, vim.vm.device.VirtualPCIPassthrough)
            ],
        )

    def all_vms(self) -> list[Any]:
        view = self.content.viewManager.CreateContainerView(
            self.content.rootFolder, [vim.VirtualMachine], True
        )
        try:
            return list(view.view)
        finally:
            view.DestroyView()

    def host_mhz(self, host_name: str) -> int:
        view = self.content.viewManager.CreateContainerView(
            self.content.rootFolder, [vim.HostSystem], True
        )
        try:
            for host in view.view:
                p = self.props(host, vim.HostSystem, ["name", "summary.hardware.cpuMhz"])
                if p["name"] == host_name:
                    return int(p["summary.hardware.cpuMhz"])
        finally:
            view.DestroyView()
        raise AssertionError(f"no host {host_name}")


def _session_end_check(admin: Admin) -> None:
    left = admin.other_sessions()
    assert not left, f"the esx tests left {len(left)} vSphere session(s) open"


@pytest.fixture(scope="session")
def esx_sim() -> Iterator[VcsimServer]:
    with running_simulator("esx", vms=2) as srv:
        yield srv


@pytest.fixture(scope="session")
def vc_sim() -> Iterator[VcsimServer]:
    with running_simulator("vcenter", vms=2) as srv:
        yield srv


@pytest.fixture(scope="session")
def esx_admin(esx_sim: VcsimServer) -> Iterator[Admin]:
    admin = Admin(esx_sim)
    yield admin
    try:
        _session_end_check(admin)
    finally:
        admin.close()


@pytest.fixture(scope="session")
def vc_admin(vc_sim: VcsimServer) -> Iterator[Admin]:
    admin = Admin(vc_sim)
    yield admin
    try:
        _session_end_check(admin)
    finally:
        admin.close()


def vc_uri(srv: VcsimServer, path: str) -> str:
    return f"vcenter://{srv.username}@{srv.host}:{srv.port}/{path}"


@pytest.fixture(params=["esx", "vcenter"])
def target(request: pytest.FixtureRequest) -> tuple[VcsimServer, Admin, str]:
    """(simulator, admin, URI) for each mode; vCenter scoped to the cluster DC0/DC0_C0."""
    if request.param == "esx":
        srv = request.getfixturevalue("esx_sim")
        return srv, request.getfixturevalue("esx_admin"), srv.uri
    srv = request.getfixturevalue("vc_sim")
    return srv, request.getfixturevalue("vc_admin"), vc_uri(srv, "DC0/DC0_C0")


Target = tuple[VcsimServer, Admin, str]


def _cleaned(uri: str, srv: VcsimServer) -> Iterator[vmctl.Hypervisor]:
    """A connection to ``uri``; the VMs made through it meanwhile are deleted afterwards."""
    with vmctl.connect(uri, password=srv.password, cafile=str(srv.cafile)) as conn:
        before = {i.uuid for i in conn.list_vms()}
        yield conn
        for info in conn.list_vms():
            if info.uuid not in before:
                conn.vm(info.uuid).delete(force=True)


@pytest.fixture
def hv(target: Target) -> Iterator[vmctl.Hypervisor]:
    """vmctl on each target (ESX and vCenter), cleaned up after the test."""
    srv, _, uri = target
    yield from _cleaned(uri, srv)


@pytest.fixture
def esx(esx_sim: VcsimServer) -> Iterator[vmctl.Hypervisor]:
    """vmctl on the standalone ESX simulator, cleaned up after the test."""
    yield from _cleaned(esx_sim.uri, esx_sim)


# -- a simulator of the module's own --------------------------------------------------------
# Modules that move VMs, change host modes or fail hosts run a vCenter simulator of their own
# (the shared ones stay as the other tests expect them): they use ``vc`` and ``admin`` below,
# shaped by the module's ``VCSIM`` (``running_simulator``'s keywords).

CLUSTER = "DC0/DC0_C0"


@pytest.fixture(scope="module")
def vc(request: pytest.FixtureRequest) -> Iterator[VcsimServer]:
    """The module's own vCenter simulator: ``VCSIM`` of the module, by default two VMs on
    each host of the model.

    The simulator's own VMs come with their CD/DVD drive connected to the host's drive,
    which vSphere does not move with vMotion (the plans say so: tests/esx/test_esx_hosts.py);
    they are disconnected here, as an operator does before migrating."""
    with running_simulator("vcenter", **getattr(request.module, "VCSIM", {"vms": 2})) as srv:
        admin = Admin(srv)
        try:
            for ref in admin.all_vms():
                admin.set_drives(ref, connected=False)
        finally:
            admin.close()
        yield srv


@pytest.fixture(scope="module")
def admin(vc: VcsimServer) -> Iterator[Admin]:
    """The admin connection to the module's own simulator."""
    a = Admin(vc)
    yield a
    a.close()


@pytest.fixture
def own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """vmctl's state (``VMCTL_STATE_DIR``) in the test's scratch directory."""
    state = tmp_path / "state"
    monkeypatch.setenv("VMCTL_STATE_DIR", str(state))
    return state


def connect(vc: VcsimServer, path: str = CLUSTER) -> vmctl.Hypervisor:
    """vmctl connected to ``path`` (the cluster) of ``vc``, with no environment read."""
    return vmctl.connect(vc_uri(vc, path), password=vc.password, cafile=str(vc.cafile), env={})


def spy(driver: Any) -> list[tuple[str, bytes, bytes]]:
    """Record each (method, request, reply) the ESX driver's fast paths (raw SOAP) send;
    the replies are handed on in 4 KiB pieces, as they come off the wire."""
    calls: list[tuple[str, bytes, bytes]] = []
    real = driver._fast._post

    def send(method: str, body: bytes) -> tuple[int, list[bytes]]:
        status, chunks = real(method, body)
        data = b"".join(chunks)
        calls.append((method, body, data))
        return status, [data[i : i + 4096] for i in range(0, len(data), 4096)]

    driver._fast.send = send
    return calls
