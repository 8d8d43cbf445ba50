"""The host-move fast path (drivers/vmctl_esx/_fastmove.py) on the vCenter simulator's cluster:
a move costs 3 round trips (5 through pyvmomi) and ends the same; its requests are the bytes
pyvmomi would send and its replies read to the same values pyvmomi reads from them; faults
(a target in maintenance, a VM deleted, a relocate refused) are the same exceptions with the
same messages both ways; a note one step took is not used once the VM changed."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmctl
from tests.esx.conftest import Admin, connect, spy, vc_uri
from tests.hosts.esx import VcsimServer
from vmctl import MoveMode
from vmctl.spi import Deadline
from vmctl_esx import _fastmove
from vmctl_esx._hosts import _LOCATE_PATHS, _TARGET_PATHS

pytest.importorskip("pyVmomi")
pytest.importorskip("lxml")
from pyVmomi import vim, vmodl
from pyVmomi.SoapAdapter import SoapResponseDeserializer
from pyVmomi.VmomiSupport import ManagedObject


@pytest.fixture(autouse=True)
def _state_dir(own_state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A note lives NOTE_S (0.5 s): long enough between two steps of a move, but a loaded
    # machine may pause a test's thread longer; the counts here are about what is read.
    monkeypatch.setattr(_fastmove, "NOTE_S", 60.0)


@pytest.fixture
def hv(vc: VcsimServer) -> Iterator[vmctl.Hypervisor]:
    with connect(vc) as h:
        yield h


def deadline() -> Deadline:
    return Deadline.after(60)


def host_of(admin: Admin, uuid: str) -> str:
    props = admin.props(admin.vm(uuid), vim.VirtualMachine, ["runtime.host"])
    return str(props["runtime.host"]._moId)


def elsewhere(hv: vmctl.Hypervisor, admin: Admin, uuid: str) -> str:
    here = host_of(admin, uuid)
    return next(h.id for h in hv.hosts() if h.id != here)


def one_move(hv: vmctl.Hypervisor, uuid: str, target: str, mode: MoveMode = MoveMode.LIVE) -> Any:
    """What the core's executor does for one move: locate, move, wait, locate."""
    driver: Any = hv._driver
    driver.locate_vm(uuid, deadline=deadline())
    task = driver.move_to_host(uuid, target, mode=mode, deadline=deadline())
    assert task is not None
    hv._conn.dispatcher.await_task(task, deadline(), "move")
    return driver.locate_vm(uuid, deadline=deadline())


def test_a_move_costs_three_round_trips_and_ends_as_through_pyvmomi(
    hv: vmctl.Hypervisor, admin: Admin
) -> None:
    driver: Any = hv._driver
    uuid = hv.list_vms()[0].uuid
    target = elsewhere(hv, admin, uuid)
    before = driver.round_trips
    where, info = one_move(hv, uuid, target)
    assert driver.round_trips - before == 3
    assert where == target == host_of(admin, uuid)
    assert info == hv.vm(uuid).info() and info.state is vmctl.PowerState.RUNNING
    # The same through pyvmomi (the fast path off): 5 round trips, the same answer.
    driver._fast_move.enabled = False
    back = elsewhere(hv, admin, uuid)
    before = driver.round_trips
    where, info = one_move(hv, uuid, back)
    assert driver.round_trips - before == 5
    assert where == back == host_of(admin, uuid)
    assert info == hv.vm(uuid).info()


@pytest.fixture
def crowded(vc: VcsimServer) -> Iterator[str]:
    """Six more running VMs on the cluster's first host (its name), deleted afterwards."""
    uri = vc_uri(vc, "DC0/DC0_C0/DC0_C0_H0")
    with vmctl.connect(uri, password=vc.password, cafile=str(vc.cafile), env={}) as one:
        made = [
            one.create_vm(vmctl.VMSpec(name=f"vmctl-fastmove-{i}", vcpus=1, memory_mib=64))
            for i in range(6)
        ]
        vmctl.wait_all([vm.start(wait=False) for vm in made], timeout=120)
    yield "DC0_C0_H0"
    with vmctl.connect(
        vc_uri(vc, "DC0/DC0_C0"), password=vc.password, cafile=str(vc.cafile), env={}
    ) as hv:
        for vm in made:
            hv.vm(vm.uuid).delete(force=True)


def test_an_evacuation_moves_every_vm_at_three_round_trips_each(
    hv: vmctl.Hypervisor, admin: Admin, crowded: str
) -> None:
    busy = hv.host(crowded)
    plan = vmctl.plan_evacuation(busy)
    assert plan.ok and len(plan.moves) >= 6
    driver: Any = hv._driver
    before = driver.round_trips
    report = vmctl.execute(plan, max_parallel=4)
    trips = driver.round_trips - before
    assert report.ok, str(report)
    assert {r.outcome for r in report.results} == {vmctl.MoveOutcome.MOVED}
    for m in plan.moves:
        assert host_of(admin, m.vm_uuid) == m.target_id
    # 3 per move, plus execute's one read of the hosts (hosts and the VM listing).
    assert trips <= 3 * len(plan.moves) + 2, trips
    assert driver._fast_move.enabled


def _pyvmomi_rows(stub: Any, reply: bytes) -> dict[str, dict[str, Any]]:
    """A RetrievePropertiesEx reply as pyvmomi reads it: moid -> {path: plain value}."""
    info = vmodl.query.PropertyCollector.RetrievePropertiesEx.info
    result = SoapResponseDeserializer(stub).Deserialize(io.BytesIO(reply), info.result)
    return {
        str(oc.obj._moId): {p.name: _plain(p.val) for p in oc.propSet or ()}
        for oc in result.objects
    }


def _plain(value: Any) -> Any:
    return str(value._moId) if isinstance(value, ManagedObject) else value


def test_fast_requests_and_replies_are_pyvmomis(hv: vmctl.Hypervisor, admin: Admin) -> None:
    """Each request is byte for byte pyvmomi's serialization of the same call, and each
    reply read with lxml gives what pyvmomi's deserializer gives from the same bytes."""
    driver: Any = hv._driver
    conn = driver.conn
    stub = conn.stub
    uuid = hv.list_vms()[0].uuid
    target = elsewhere(hv, admin, uuid)
    calls = spy(driver)
    one_move(hv, uuid, target)
    methods = [c[0] for c in calls]
    assert methods == ["RetrievePropertiesEx", "RelocateVM_Task", "RetrievePropertiesEx"]
    (_, locate_req, locate_reply), (_, move_req, move_reply), (_, wait_req, wait_reply) = calls
    ref = driver._refs[uuid]
    hosts = list(driver.scope.host_refs.values())
    # The requests.
    pcq = vmodl.query.PropertyCollector

    def read(specs: list[tuple[list[Any], Any, tuple[str, ...]]]) -> bytes:
        probe = pcq.FilterSpec(
            objectSet=[pcq.ObjectSpec(obj=conn.content.sessionManager)],
            propSet=[pcq.PropertySpec(type=vim.SessionManager, pathSet=["currentSession.key"])],
        )
        filters = [conn.filter_spec(o, t, p) for o, t, p in specs]
        info = pcq.RetrievePropertiesEx.info
        return bytes(
            stub.SerializeRequest(
                conn.pc, info, [[*filters, probe], pcq.RetrieveOptions(maxObjects=1000)]
            )
        )

    assert locate_req == read(
        [([ref], vim.VirtualMachine, _LOCATE_PATHS), (hosts, vim.HostSystem, _TARGET_PATHS)]
    )
    spec = vim.vm.RelocateSpec(host=driver.scope.host_refs[target], pool=driver.scope.pool)
    relocate = vim.VirtualMachine.RelocateVM_Task.info
    assert move_req == bytes(stub.SerializeRequest(ref, relocate, [spec, "defaultPriority"]))
    task = SoapResponseDeserializer(stub).Deserialize(io.BytesIO(move_reply), relocate.result)
    assert isinstance(task, vim.Task)
    assert wait_req == read(
        [([task], vim.Task, ("info.state",)), ([ref], vim.VirtualMachine, _LOCATE_PATHS)]
    )
    # The replies: the fast reader's rows against pyvmomi's from the same bytes.
    for req, reply in ((locate_req, locate_reply), (wait_req, wait_reply)):
        driver._fast.send = lambda method, body, reply=reply: (200, [reply])
        specs = (
            [([ref], vim.VirtualMachine, _LOCATE_PATHS), (hosts, vim.HostSystem, _TARGET_PATHS)]
            if req == locate_req
            else [([task], vim.Task, ("info.state",)), ([ref], vim.VirtualMachine, _LOCATE_PATHS)]
        )
        fast = {
            str(r._moId): {k: _plain(v) for k, v in p.items()}
            for r, p in driver._fast_move.retrieve(specs)
        }
        sdk = _pyvmomi_rows(stub, reply)
        sdk.pop("SessionManager")
        assert fast == sdk
    assert str(sdk[task._moId]["info.state"]) == "success"
    assert sdk[ref._moId]["runtime.host"] == target
    # The relocate reply: the same Task.
    driver._fast.send = lambda method, body: (200, [move_reply])
    got = driver._fast_move.relocate(ref, driver.scope.host_refs[target], driver.scope.pool, "x")
    assert got._moId == task._moId and isinstance(got, vim.Task)


def test_a_target_in_maintenance_is_refused_the_same_way(
    hv: vmctl.Hypervisor, admin: Admin
) -> None:
    driver: Any = hv._driver
    uuid = hv.list_vms()[0].uuid
    target = elsewhere(hv, admin, uuid)
    here = host_of(admin, uuid)
    assert hv.host(target).enter_maintenance().state is vmctl.HostState.MAINTENANCE
    try:
        errors = []
        for fast in (True, False):
            driver._fast_move.enabled = fast
            before = driver.round_trips
            driver.locate_vm(uuid, deadline=deadline())
            with pytest.raises(vmctl.InvalidState) as caught:
                driver.move_to_host(uuid, target, mode=MoveMode.LIVE, deadline=deadline())
            errors.append((str(caught.value), caught.value.vendor_code))
            # A refusal is decided on a fresh read, never on the locate's note.
            assert driver.round_trips - before == 2
        assert errors[0] == errors[1]
        assert "is in maintenance mode" in errors[0][0]
        assert host_of(admin, uuid) == here
    finally:
        driver._fast_move.enabled = True
        hv.host(target).exit_maintenance()


def test_a_vm_deleted_meanwhile_is_not_found_the_same_way(
    hv: vmctl.Hypervisor, admin: Admin, vc: VcsimServer
) -> None:
    driver: Any = hv._driver
    spec = vmctl.VMSpec(name="vmctl-fastmove-gone", vcpus=1, memory_mib=64)
    vm = hv.create_vm(spec, start=True)
    target = elsewhere(hv, admin, vm.uuid)
    ref = driver._ref(vm.uuid)
    task = admin.vm(vm.uuid).PowerOffVM_Task()
    assert str(admin.props(task, vim.Task, ["info.state"])["info.state"]) == "success"
    task = admin.vm(vm.uuid).Destroy_Task()
    assert str(admin.props(task, vim.Task, ["info.state"])["info.state"]) == "success"
    errors = []
    for fast in (True, False):
        driver._fast_move.enabled = fast
        driver._remember(vm.uuid, ref)  # the driver still knows its moref
        with pytest.raises(vmctl.NotFound) as located:
            driver.locate_vm(vm.uuid, deadline=deadline())
        driver._remember(vm.uuid, ref)
        with pytest.raises(vmctl.NotFound) as moved:
            driver.move_to_host(vm.uuid, target, mode=MoveMode.LIVE, deadline=deadline())
        errors.append((str(located.value), str(moved.value)))
    driver._fast_move.enabled = True
    assert errors[0] == errors[1]
    assert errors[0][0] == f"no VM with UUID {vm.uuid} on DC0_C0"
    # RelocateVM_Task itself refused (the VM is gone): the fault is the one pyvmomi raises
    # (deserialized from the same reply), mapped as Connection.start_task maps it.
    host, pool = driver.scope.host_refs[target], driver.scope.pool
    what = "move VM 'vmctl-fastmove-gone' to host 'x' (live)"
    with pytest.raises(vmctl.NotFound) as fast_fault:
        driver._fast_move.relocate(ref, host, pool, what)
    spec_ = vim.vm.RelocateSpec(host=host, pool=pool)
    with pytest.raises(vmctl.NotFound) as sdk_fault:
        driver.conn.start_task(
            lambda: ref.RelocateVM_Task(spec=spec_, priority="defaultPriority"), what
        )
    assert str(fast_fault.value) == str(sdk_fault.value)
    assert fast_fault.value.vendor_code == sdk_fault.value.vendor_code == "ManagedObjectNotFound"
    assert type(fast_fault.value.__cause__) is type(sdk_fault.value.__cause__)
    assert driver._fast_move.enabled  # a fault is an answer, not a surprise


def test_a_note_is_not_used_once_the_vm_changed(hv: vmctl.Hypervisor, admin: Admin) -> None:
    """locate_vm, then the VM powered off through the driver: a live move reads afresh
    and refuses (as a restart move's shutdown between its locate and its cold move)."""
    driver: Any = hv._driver
    vm = hv.vms()[0]
    target = elsewhere(hv, admin, vm.uuid)
    here = host_of(admin, vm.uuid)
    driver.locate_vm(vm.uuid, deadline=deadline())
    vm.power_off()
    try:
        with pytest.raises(vmctl.InvalidState, match="the VM is stopped"):
            driver.move_to_host(vm.uuid, target, mode=MoveMode.LIVE, deadline=deadline())
        assert host_of(admin, vm.uuid) == here
        # A note that does not clear the move (a cold move of a VM noted running) is not
        # used either: the move reads afresh and goes (the VM is stopped now).
        vm.start()
        driver.locate_vm(vm.uuid, deadline=deadline())
        vm.power_off()
        where, info = one_move(hv, vm.uuid, target, MoveMode.COLD)
        assert where == target and info.state is vmctl.PowerState.STOPPED
    finally:
        vm.start()


def test_old_notes_are_not_used(
    hv: vmctl.Hypervisor, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_fastmove, "NOTE_S", -1.0)
    driver: Any = hv._driver
    uuid = hv.list_vms()[0].uuid
    target = elsewhere(hv, admin, uuid)
    before = driver.round_trips
    where, _info = one_move(hv, uuid, target)
    assert driver.round_trips - before == 5  # move_to_host and the last locate read again
    assert where == target == host_of(admin, uuid)


def test_an_unexpected_reply_falls_back_to_pyvmomi_once(
    hv: vmctl.Hypervisor, admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    driver: Any = hv._driver
    uuid = hv.list_vms()[0].uuid
    real = driver._fast._post

    def odd(method: str, body: bytes) -> tuple[int, list[bytes]]:
        status, chunks = real(method, body)
        data = b"".join(chunks).replace(b"</returnval>", b"<surprise/></returnval>")
        return status, [data]

    driver._fast.send = odd
    with caplog.at_level(logging.WARNING, logger="vmctl.esx"):
        where, info = driver.locate_vm(uuid, deadline=deadline())
        assert not driver._fast_move.enabled
        again = driver.locate_vm(uuid, deadline=deadline())
    driver._fast.send = real
    assert where == host_of(admin, uuid) and (where, info) == again
    assert info == hv.vm(uuid).info()
    warnings = [r for r in caplog.records if "fast moves" in r.getMessage()]
    assert len(warnings) == 1
    # The listing's own fast path is left as it was.
    assert driver._fast.enabled


def test_an_unexpected_relocate_reply_is_read_by_pyvmomi_not_sent_again(
    hv: vmctl.Hypervisor, admin: Admin
) -> None:
    """The relocate was done: a reply lxml does not know (here a comment in the returnval,
    which pyvmomi's parser skips) is read by pyvmomi from the same bytes; one request."""
    driver: Any = hv._driver
    uuid = hv.list_vms()[0].uuid
    target = elsewhere(hv, admin, uuid)
    real = driver._fast._post
    sent: list[str] = []

    def odd(method: str, body: bytes) -> tuple[int, list[bytes]]:
        sent.append(method)
        status, chunks = real(method, body)
        data = b"".join(chunks)
        if method == "RelocateVM_Task":
            data = data.replace(b"</returnval>", b"<!-- a surprise --></returnval>")
        return status, [data]

    driver._fast.send = odd
    before = driver.round_trips
    task = driver.move_to_host(uuid, target, mode=MoveMode.LIVE, deadline=deadline())
    driver._fast.send = real
    assert sent == ["RetrievePropertiesEx", "RelocateVM_Task"]
    assert driver.round_trips - before == 2  # the checks' read, the relocate: nothing again
    assert isinstance(task.handle, vim.Task) and task.id == task.handle._moId
    assert not driver._fast_move.enabled
    hv._conn.dispatcher.await_task(task, deadline(), "move")
    assert driver.locate_vm(uuid, deadline=deadline())[0] == target == host_of(admin, uuid)
