"""Smoke tests of the vSphere API simulator harness, through pyVmomi directly (no vmctl).

They prove the launcher builds and serves both modes and show the calling patterns a driver
needs: TLS verification with a CA file, thumbprint pinning, one-round-trip listing through a
ContainerView, tasks awaited through the PropertyCollector, session expiry and re-login,
RelocateVM_Task between hosts, and snapshot revert restoring the configuration and power state
(the launcher's snapshots.go; the library's simulator alone only moves currentSnapshot).
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import shutil
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .esx import (
    CACHE_DIR,
    SYSTEM_GOPATH,
    VcsimServer,
    build_launcher,
    env_lines,
    make_cert,
    running_simulator,
    start_simulator,
    stop_pid,
    thumbprint_of,
)

pytestmark = pytest.mark.esx

# pyVmomi ships py.typed but its functions are untyped: bind them as Any for mypy --strict.
_pyvmomi: Any = pytest.importorskip("pyVmomi", reason="pip install pyvmomi")
_connect: Any = pytest.importorskip("pyVim.connect", reason="pip install pyvmomi")
vim: Any = _pyvmomi.vim
vmodl: Any = _pyvmomi.vmodl
Connect: Any = _connect.Connect
Disconnect: Any = _connect.Disconnect

if shutil.which("go") is None or not Path(SYSTEM_GOPATH, "src/github.com/vmware").is_dir():
    pytest.skip("Go/govmomi missing: run tests/hosts/install-esx.sh", allow_module_level=True)

MEASUREMENTS = CACHE_DIR / "measurements.json"


def _record(key: str, value: Any) -> None:
    """Keep the numbers ESX.md quotes in .cache/vcsim/measurements.json."""
    data: dict[str, Any] = {}
    if MEASUREMENTS.is_file():
        data = json.loads(MEASUREMENTS.read_text())
    data[key] = value
    MEASUREMENTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def connect(srv: VcsimServer, **kwargs: Any) -> Any:
    """Log in with certificate verification against the simulator's own cert."""
    kwargs.setdefault("sslContext", ssl.create_default_context(cafile=str(srv.cafile)))
    return Connect(srv.host, srv.port, srv.username, srv.password, **kwargs)


class RoundTrips:
    """Counts HTTP requests sent by http.client (pyVmomi's transport) while active."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original: Callable[..., Any] = http.client.HTTPConnection.request

        def counting(conn: http.client.HTTPConnection, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return original(conn, *args, **kwargs)

        monkeypatch.setattr(http.client.HTTPConnection, "request", counting)

    def reset(self) -> None:
        self.count = 0


def list_vms(content: Any, props: list[str]) -> list[dict[str, Any]]:
    """All VMs with ``props``: ONE ContainerView + ONE RetrievePropertiesEx (+ DestroyView).

    ``content`` is ``si.RetrieveContent()``, fetched once (``si.content`` is a round trip).
    """
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[
                vmodl.query.PropertyCollector.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[
                        vmodl.query.PropertyCollector.TraversalSpec(
                            name="view", type=vim.view.ContainerView, path="view", skip=False
                        )
                    ],
                )
            ],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=props)
            ],
        )
        result = content.propertyCollector.RetrievePropertiesEx(
            [spec], vmodl.query.PropertyCollector.RetrieveOptions()
        )
        rows: list[dict[str, Any]] = []
        while result is not None:
            for obj in result.objects:
                row = {prop.name: prop.val for prop in obj.propSet}
                row["_moid"] = obj.obj._moId
                rows.append(row)
            if not result.token:
                break
            result = content.propertyCollector.ContinueRetrievePropertiesEx(result.token)
        return rows
    finally:
        view.DestroyView()


def wait_task(content: Any, task: Any, timeout: float = 30.0) -> Any:
    """Wait for a task through the PropertyCollector (WaitForUpdatesEx), not pyVim.WaitForTask.

    Returns ``info.result``; raises ``info.error`` (a vim fault) when the task failed. Only
    ``info.state``/``result``/``error`` are read: the simulator's snapshot tasks carry the
    snapshot as ``info.entity``, which pyVmomi refuses to deserialize (HOSTS.md).
    """
    pc = content.propertyCollector.CreatePropertyCollector()
    try:
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=task, skip=False)],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(
                    type=vim.Task, pathSet=["info.state", "info.result", "info.error"]
                )
            ],
        )
        pc.CreateFilter(spec, True)
        deadline = time.monotonic() + timeout
        version = ""
        info: dict[str, Any] = {}
        while time.monotonic() < deadline:
            options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=5)
            update = pc.WaitForUpdatesEx(version, options)
            if update is None:
                continue
            version = update.version
            for filter_set in update.filterSet:
                for obj in filter_set.objectSet:
                    info.update({change.name: change.val for change in obj.changeSet})
            if info.get("info.state") == vim.TaskInfo.State.success:
                return info.get("info.result")
            if info.get("info.state") == vim.TaskInfo.State.error:
                raise info["info.error"]
        raise TimeoutError(f"task {task._moId} not done after {timeout}s")
    finally:
        pc.DestroyPropertyCollector()


def get_props(content: Any, obj: Any, props: list[str]) -> dict[str, Any]:
    """Read properties through the PropertyCollector (never attribute access: see ESX.md)."""
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=obj, skip=False)],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=type(obj), pathSet=props)],
    )
    result = content.propertyCollector.RetrievePropertiesEx(
        [spec], vmodl.query.PropertyCollector.RetrieveOptions()
    )
    return {prop.name: prop.val for prop in result.objects[0].propSet}


def list_hosts(content: Any) -> list[Any]:
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
    try:
        return list(view.view)
    finally:
        view.DestroyView()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def vcenter() -> Iterator[VcsimServer]:
    with running_simulator("vcenter", vms=3) as srv:
        yield srv


@pytest.fixture(scope="module")
def esx() -> Iterator[VcsimServer]:
    with running_simulator("esx", vms=2) as srv:
        yield srv


# --------------------------------------------------------------------------- tests


def test_build_is_cached() -> None:
    first = build_launcher()
    assert first.binary.is_file()
    if first.built:
        _record("build_seconds", round(first.seconds, 1))
    again = build_launcher()
    assert not again.built, "second build_launcher() call must reuse the binary"


def test_launcher_built_with_the_short_update_tick() -> None:
    """The simulator package the launcher is built against is Debian's with only the
    WaitForUpdatesEx tick changed (tests/hosts/ESX.md)."""
    from . import esx as harness

    build_launcher()
    ours = harness.CACHE_DIR / "gopath/src/github.com/vmware/govmomi/simulator"
    theirs = Path(harness.SYSTEM_GOPATH, "src/github.com/vmware/govmomi/simulator")
    text = (ours / "property_collector.go").read_text()
    assert f"time.NewTicker({harness.UPDATE_TICK_MS} * time.Millisecond)" in text
    assert harness._TICK_LINE not in text
    assert (
        text.replace(
            f"ticker := time.NewTicker({harness.UPDATE_TICK_MS} * time.Millisecond)"
            " // vmctl: was 250 ms",
            harness._TICK_LINE,
        )
        == (theirs / "property_collector.go").read_text()
    )
    for go in theirs.glob("*.go"):
        if not go.name.endswith("_test.go") and go.name != "property_collector.go":
            assert (ours / go.name).read_bytes() == go.read_bytes(), go.name
    assert (ours.parent / "vim25").resolve() == (theirs.parent / "vim25").resolve()


def test_both_modes_start(vcenter: VcsimServer, esx: VcsimServer) -> None:
    assert vcenter.mode == "vcenter" and esx.mode == "esx"
    for srv in (vcenter, esx):
        assert srv.host == "127.0.0.1"
        assert srv.url == f"https://127.0.0.1:{srv.port}/sdk"
        assert srv.thumbprint == thumbprint_of(srv.cafile)
        assert srv.alive()
    assert vcenter.datacenters == ["DC0"]
    assert vcenter.clusters == ["DC0/DC0_C0"]
    assert vcenter.hosts == ["DC0_C0_H0", "DC0_C0_H1", "DC0_C0_H2", "DC0_H0"]
    assert vcenter.vm_count == 6  # 3 per pool: standalone host DC0_H0 + cluster DC0_C0
    assert vcenter.uri == f"vcenter://vmctl@127.0.0.1:{vcenter.port}/DC0/DC0_C0"
    assert esx.vm_count == 2
    assert esx.uri == f"esx://vmctl@127.0.0.1:{esx.port}"


def test_connect_with_cafile_and_about(vcenter: VcsimServer, esx: VcsimServer) -> None:
    for srv, api_type in ((vcenter, "VirtualCenter"), (esx, "HostAgent")):
        si = connect(srv)
        try:
            assert si.content.about.apiType == api_type
        finally:
            Disconnect(si)


def test_wrong_password_is_invalid_login(esx: VcsimServer) -> None:
    with pytest.raises(vim.fault.InvalidLogin):
        Connect(
            esx.host, esx.port, esx.username, esx.password + "x",
            sslContext=ssl.create_default_context(cafile=str(esx.cafile)),
        )  # fmt: skip


def test_list_all_vms_in_one_round_trip(
    vcenter: VcsimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    si = connect(vcenter)
    try:
        content = si.RetrieveContent()
        trips = RoundTrips(monkeypatch)
        rows = list_vms(content, ["name", "runtime.powerState", "runtime.host"])
        # CreateContainerView + RetrievePropertiesEx + DestroyView
        assert trips.count == 3
        assert len(rows) == vcenter.vm_count
        assert {row["runtime.powerState"] for row in rows} == {"poweredOn"}
        assert all(row["name"].startswith("DC0_") for row in rows)
    finally:
        Disconnect(si)


def test_pinned_thumbprint(esx: VcsimServer) -> None:
    """Without a trusted CA, pyVmomi falls back to the pinned thumbprint (SHA-256 or SHA-1)."""
    system_ctx = ssl.create_default_context()  # the system store does not know our cert
    for pin in (esx.thumbprint, esx.thumbprint_sha1):
        Disconnect(connect(esx, sslContext=ssl.create_default_context(), thumbprint=pin))
    wrong = ":".join(["AB"] * 32)
    with pytest.raises(vim.fault.HostConnectFault):
        connect(esx, sslContext=system_ctx, thumbprint=wrong)


def test_unknown_ca_is_refused(esx: VcsimServer, tmp_path: Path) -> None:
    other = make_cert(tmp_path)
    assert other.thumbprint != esx.thumbprint
    with pytest.raises((vim.fault.HostConnectFault, ssl.SSLError)):
        connect(esx, sslContext=ssl.create_default_context(cafile=str(other.cert)))
    with pytest.raises((vim.fault.HostConnectFault, ssl.SSLError)):
        connect(esx, sslContext=ssl.create_default_context())


def test_pyvmomi_ignores_thumbprint_when_ca_verifies(esx: VcsimServer) -> None:
    """pyVmomi quirk: the pin is only checked after a CA verification failure."""
    wrong = ":".join(["AB"] * 32)
    Disconnect(connect(esx, thumbprint=wrong))  # accepted: the driver must compare itself


def test_pyvmomi_disarms_a_reused_context_after_pinning(esx: VcsimServer) -> None:
    """pyVmomi quirk: the pin fallback sets CERT_NONE on the caller's SSLContext, so a context
    reused for the next Connect verifies nothing and the (wrong) pin is never checked.
    Drivers must build a fresh SSLContext for every Connect."""
    ctx = ssl.create_default_context()
    Disconnect(connect(esx, sslContext=ctx, thumbprint=esx.thumbprint))
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    wrong = ":".join(["AB"] * 32)
    Disconnect(connect(esx, sslContext=ctx, thumbprint=wrong))  # accepted!


def test_power_off_on_through_property_collector(esx: VcsimServer) -> None:
    si = connect(esx)
    try:
        content = si.RetrieveContent()
        rows = list_vms(content, ["name", "runtime.powerState"])
        vm = vim.VirtualMachine(rows[0]["_moid"], si._stub)
        assert get_props(content, vm, ["runtime.powerState"])["runtime.powerState"] == "poweredOn"
        wait_task(content, vm.PowerOffVM_Task())
        assert get_props(content, vm, ["runtime.powerState"])["runtime.powerState"] == "poweredOff"
        with pytest.raises(vim.fault.InvalidPowerState):
            wait_task(content, vm.PowerOffVM_Task())
        wait_task(content, vm.PowerOnVM_Task())
        assert get_props(content, vm, ["runtime.powerState"])["runtime.powerState"] == "poweredOn"
    finally:
        Disconnect(si)


def test_session_idle_timeout_and_relogin() -> None:
    with running_simulator("esx", vms=1, idle_timeout=1.0) as srv:
        si = connect(srv)
        content = si.RetrieveContent()
        for _ in range(3):  # activity keeps the session alive past the timeout
            time.sleep(0.5)
            content.viewManager.CreateContainerView(
                content.rootFolder, [vim.VirtualMachine], True
            ).DestroyView()
        # Idle for > 2 x timeout: the simulator checks once per timeout interval.
        time.sleep(2.2)
        with pytest.raises(vim.fault.NotAuthenticated):
            content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        content.sessionManager.Login(srv.username, srv.password)
        assert len(list_vms(content, ["name"])) == 1
        # Simulator quirk: Login on a still-valid session is refused with InvalidLogin.
        with pytest.raises(vim.fault.InvalidLogin):
            content.sessionManager.Login(srv.username, srv.password)
        content.sessionManager.Logout()
        with pytest.raises(vim.fault.NotAuthenticated):
            list_vms(content, ["name"])


def test_relocate_between_hosts(vcenter: VcsimServer) -> None:
    si = connect(vcenter)
    try:
        content = si.RetrieveContent()
        rows = list_vms(content, ["name", "runtime.host", "runtime.powerState"])
        row = next(r for r in rows if r["name"].startswith("DC0_C0_"))
        vm = vim.VirtualMachine(row["_moid"], si._stub)
        source = row["runtime.host"]
        cluster_hosts = get_props(content, source, ["parent"])["parent"]
        hosts = get_props(content, cluster_hosts, ["host"])["host"]
        target = next(h for h in hosts if h._moId != source._moId)
        spec = vim.vm.RelocateSpec(host=target)
        wait_task(content, vm.RelocateVM_Task(spec))
        after = get_props(content, vm, ["runtime.host", "runtime.powerState"])
        assert after["runtime.host"]._moId == target._moId
        assert after["runtime.powerState"] == "poweredOn"
        # to the standalone host: give its compute resource's pool as well
        standalone = next(h for h in list_hosts(content) if h.name == "DC0_H0")
        pool = get_props(content, standalone.parent, ["resourcePool"])["resourcePool"]
        wait_task(content, vm.RelocateVM_Task(vim.vm.RelocateSpec(host=standalone, pool=pool)))
        assert get_props(content, vm, ["runtime.host"])["runtime.host"]._moId == standalone._moId
    finally:
        Disconnect(si)


def test_detached_start_and_stop_by_pid(tmp_path: Path) -> None:
    """What ``python -m tests.hosts.esx start/stop`` does: own session, stop by PID only."""
    srv = start_simulator("esx", vms=1, detach=True, log_dir=tmp_path)
    try:
        assert os.getsid(srv.pid) == srv.pid
        assert srv.alive()
        assert stop_pid(srv.pid, timeout=5.0)  # by PID, without the Popen handle
        assert not srv.alive()
        assert not stop_pid(srv.pid)  # a dead (or reused) PID is never signalled
        assert "stopped" in srv.stderr_log.read_text()
    finally:
        srv.stop()
        if srv.process is not None:
            srv.process.wait(timeout=5)


def test_listing_2000_vms(monkeypatch: pytest.MonkeyPatch) -> None:
    # 1000 VMs per pool x (standalone host DC0_H0 + cluster DC0_C0) = 2000 VMs
    with running_simulator("vcenter", vms=1000) as srv:
        assert srv.vm_count == 2000
        si = connect(srv)
        try:
            content = si.RetrieveContent()
            trips = RoundTrips(monkeypatch)
            started = time.monotonic()
            rows = list_vms(content, ["name", "runtime.powerState", "config.uuid"])
            seconds = time.monotonic() - started
            requests = trips.count
            assert len(rows) == 2000
            assert requests == 3
        finally:
            Disconnect(si)
    _record(
        "vcenter_2000_vms",
        {
            "ready_seconds": round(srv.ready_seconds, 2),
            "model_create_seconds": round(srv.start_seconds, 2),
            "list_seconds": round(seconds, 2),
            "list_http_requests": requests,
        },
    )


def test_env_names_two_cluster_hosts_and_the_esx_host(
    vcenter: VcsimServer, esx: VcsimServer
) -> None:
    """``.hosts/esx.env``: host-scoped vCenter URIs (what migration needs) + the ESX simulator."""
    base = f"vcenter://vmctl@127.0.0.1:{vcenter.port}/DC0"
    assert vcenter.host_uris == [
        f"{base}/DC0_C0/DC0_C0_H0",
        f"{base}/DC0_C0/DC0_C0_H1",
        f"{base}/DC0_C0/DC0_C0_H2",
        f"{base}/DC0_H0",
    ]
    assert esx.host_uris == []
    env = dict(shlex.split(line)[1].split("=", 1) for line in env_lines(vcenter, esx))
    assert env["VMCTL_URI"] == f"{base}/DC0_C0/DC0_C0_H0"
    assert env["VMCTL_OTHER_URI"] == f"{base}/DC0_C0/DC0_C0_H1"
    assert env["VMCTL_ESX_URI"] == f"esx://vmctl@127.0.0.1:{esx.port}"
    assert env["VMCTL_PASSWORD"] == vcenter.password
    assert env["VMCTL_CAFILE"] == str(vcenter.cafile)
    assert env["VMCTL_THUMBPRINT"] == vcenter.thumbprint


# --------------------------------------------------------------------------- snapshot revert

#: A VM per mode that the other tests leave alone (they use the first VM / a cluster VM).
SNAPSHOT_VM = {"esx": "ha-host_VM1", "vcenter": "DC0_H0_VM2"}
HW = ["config.hardware.numCPU", "config.hardware.memoryMB", "config.hardware.device"]


def _vm_named(si: Any, content: Any, name: str) -> Any:
    row = next(r for r in list_vms(content, ["name"]) if r["name"] == name)
    return vim.VirtualMachine(row["_moid"], si._stub)


def _power(content: Any, vm: Any) -> str:
    return str(get_props(content, vm, ["runtime.powerState"])["runtime.powerState"])


def _hardware(content: Any, vm: Any) -> tuple[int, int, list[int]]:
    props = get_props(content, vm, HW)
    keys = sorted(d.key for d in props["config.hardware.device"])
    return props["config.hardware.numCPU"], props["config.hardware.memoryMB"], keys


def _tree_state(content: Any, vm: Any, snapshot: Any) -> str:
    def walk(trees: Any) -> Any:
        for tree in trees or ():
            if tree.snapshot._moId == snapshot._moId:
                return tree
            found = walk(tree.childSnapshotList)
            if found is not None:
                return found
        return None

    tree = walk(get_props(content, vm, ["snapshot.rootSnapshotList"])["snapshot.rootSnapshotList"])
    assert tree is not None, f"snapshot {snapshot._moId} is not in the tree"
    return str(tree.state)


def _power_events(content: Any, vm: Any) -> list[str]:
    spec = vim.event.EventFilterSpec(
        entity=vim.event.EventFilterSpec.ByEntity(entity=vm, recursion="self")
    )
    kinds = (vim.event.VmPoweredOnEvent, vim.event.VmPoweredOffEvent, vim.event.VmSuspendedEvent)
    events = content.eventManager.QueryEvents(spec)
    return [type(e).__name__.rsplit(".", 1)[-1] for e in events if isinstance(e, kinds)]


@pytest.fixture(params=["esx", "vcenter"])
def snapshot_vm(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any, Any]]:
    """(mode, content, vm): a powered-on VM without snapshots; left powered on, without them."""
    srv: VcsimServer = request.getfixturevalue(request.param)
    si = connect(srv)
    try:
        content = si.RetrieveContent()
        vm = _vm_named(si, content, SNAPSHOT_VM[request.param])
        assert _power(content, vm) == "poweredOn"
        yield request.param, content, vm
        wait_task(content, vm.RemoveAllSnapshots_Task())
        if _power(content, vm) != "poweredOn":
            wait_task(content, vm.PowerOnVM_Task())
    finally:
        Disconnect(si)


def test_revert_restores_configuration_and_powered_off_state(
    snapshot_vm: tuple[str, Any, Any],
) -> None:
    """Snapshot of a powered-off VM; CPUs, memory and a NIC changed; revert brings back the
    old hardware, powered off, and a PropertyCollector waiting on the VM sees the change."""
    _, content, vm = snapshot_vm
    wait_task(content, vm.PowerOffVM_Task())
    cpus, memory, devices = _hardware(content, vm)
    snap = wait_task(
        content, vm.CreateSnapshot_Task(name="before", description="", memory=False, quiesce=False)
    )
    assert _tree_state(content, vm, snap) == "poweredOff"
    nic = vim.vm.device.VirtualDeviceSpec(
        operation="add",
        device=vim.vm.device.VirtualE1000(
            key=-1,
            backing=vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName="VM Network"),
        ),
    )
    spec = vim.vm.ConfigSpec(numCPUs=cpus + 2, memoryMB=memory + 512, deviceChange=[nic])
    wait_task(content, vm.ReconfigVM_Task(spec))
    changed = _hardware(content, vm)
    assert changed[:2] == (cpus + 2, memory + 512) and len(changed[2]) == len(devices) + 1
    # A second reconfiguration must not reach into the snapshot's copy of the devices.
    wait_task(content, vm.ReconfigVM_Task(vim.vm.ConfigSpec(numCPUs=cpus + 3)))

    pc = content.propertyCollector.CreatePropertyCollector()
    try:
        pcq = vmodl.query.PropertyCollector
        pc.CreateFilter(
            pcq.FilterSpec(
                objectSet=[pcq.ObjectSpec(obj=vm, skip=False)],
                propSet=[pcq.PropertySpec(type=vim.VirtualMachine, pathSet=HW[:2])],
            ),
            True,
        )
        version = pc.WaitForUpdatesEx("", pcq.WaitOptions(maxWaitSeconds=0)).version

        wait_task(content, snap.RevertToSnapshot_Task(suppressPowerOn=False))

        assert _hardware(content, vm) == (cpus, memory, devices)
        assert _power(content, vm) == "poweredOff"
        summary = get_props(content, vm, ["summary.config.numCpu", "summary.config.memorySizeMB"])
        assert summary == {"summary.config.numCpu": cpus, "summary.config.memorySizeMB": memory}
        seen: dict[str, Any] = {}
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            update = pc.WaitForUpdatesEx(version, pcq.WaitOptions(maxWaitSeconds=5))
            if update is None:
                continue
            version = update.version
            for filter_set in update.filterSet:
                for obj in filter_set.objectSet:
                    seen.update({change.name: change.val for change in obj.changeSet})
        assert seen == {HW[0]: cpus, HW[1]: memory}
    finally:
        pc.DestroyPropertyCollector()

    # Revert to the current snapshot (the VM's own method) restores it as well.
    wait_task(content, vm.ReconfigVM_Task(vim.vm.ConfigSpec(numCPUs=cpus + 1)))
    wait_task(content, vm.PowerOnVM_Task())
    wait_task(content, vm.RevertToCurrentSnapshot_Task())
    assert _hardware(content, vm) == (cpus, memory, devices)
    assert _power(content, vm) == "poweredOff"


def test_revert_to_memory_snapshot_powers_on(snapshot_vm: tuple[str, Any, Any]) -> None:
    """A snapshot with memory of a powered-on VM comes back powered on; one without memory
    comes back powered off (its tree state says poweredOff, as vSphere records it)."""
    mode, content, vm = snapshot_vm
    live = wait_task(
        content, vm.CreateSnapshot_Task(name="live", description="", memory=True, quiesce=False)
    )
    assert _tree_state(content, vm, live) == "poweredOn"
    disk_only = wait_task(
        content, vm.CreateSnapshot_Task(name="disk", description="", memory=False, quiesce=False)
    )
    assert _tree_state(content, vm, disk_only) == "poweredOff"
    assert _power(content, vm) == "poweredOn"

    wait_task(content, vm.PowerOffVM_Task())
    events = _power_events(content, vm) if mode == "vcenter" else []
    wait_task(content, live.RevertToSnapshot_Task(suppressPowerOn=False))
    assert _power(content, vm) == "poweredOn"
    if mode == "vcenter":  # QueryEvents is not implemented in ESX mode
        after = _power_events(content, vm)
        assert after.count("VmPoweredOnEvent") == events.count("VmPoweredOnEvent") + 1

    wait_task(content, disk_only.RevertToSnapshot_Task(suppressPowerOn=False))
    assert _power(content, vm) == "poweredOff"

    # suppressPowerOn: "will not be powered on" -- the memory image is kept, suspended.
    wait_task(content, live.RevertToSnapshot_Task(suppressPowerOn=True))
    assert _power(content, vm) == "suspended"
    wait_task(content, vm.PowerOnVM_Task())
    wait_task(content, vm.PowerOffVM_Task())
    wait_task(content, vm.RevertToCurrentSnapshot_Task())  # current: "live"
    assert _power(content, vm) == "poweredOn"
