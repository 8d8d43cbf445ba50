"""Inventory and lifecycle through the public API, checked against what xapi holds."""

from __future__ import annotations

import time
import uuid as uuidlib
from typing import Any

import pytest
from xen_helpers import GUEST, NETWORK, name

import vmctl
from vmctl import DiskSpec, NicSpec, PowerState, Resources, VMSpec
from vmctl.spi import Deadline, Task, finish_task

S = PowerState
MiB = 1024 * 1024


def spec(hint: str, **kw: Any) -> VMSpec:
    kw.setdefault("disks", [DiskSpec(size_mib=64)])
    kw.setdefault("nics", [NicSpec(network=NETWORK)])
    return VMSpec(name=name(hint), memory_mib=kw.pop("memory_mib", 256), **kw)


def test_list_is_one_round_trip_and_excludes_templates(hv: vmctl.Hypervisor, raw: Any) -> None:
    drv = hv._driver
    before = drv.round_trips
    infos = hv.list_vms()
    assert drv.round_trips - before == 1
    recs = raw.VM.get_all_records()
    real = {
        r["uuid"]
        for r in recs.values()
        if not (r["is_a_template"] or r["is_a_snapshot"] or r["is_control_domain"])
    }
    assert {i.uuid for i in infos} == real
    assert any(r["is_a_template"] for r in recs.values())  # there were templates to leave out
    assert any(r["is_control_domain"] for r in recs.values())


def test_create_matches_xapi_records(hv: vmctl.Hypervisor, raw: Any) -> None:
    s = spec(
        "create",
        vcpus=2,
        disks=[DiskSpec(size_mib=64), DiskSpec(size_mib=32, name="d2")],
        nics=[NicSpec(network=NETWORK, mac="52:54:00:aa:bb:01")],
    )
    vm = hv.create_vm(s)
    try:
        assert vm.info().state is S.STOPPED
        ref = raw.VM.get_by_uuid(vm.uuid)
        rec = raw.VM.get_record(ref)
        assert rec["name_label"] == s.name
        assert (rec["VCPUs_max"], rec["VCPUs_at_startup"]) == ("2", "2")
        assert rec["memory_static_max"] == str(256 * MiB)
        assert rec["actions_after_crash"] == "destroy"
        cfg = vm.config()
        assert [(d.id, d.size_mib) for d in cfg.disks] == [("xvda", 64), ("xvdb", 32)]
        assert cfg.disks[1].name == "d2"
        assert [(n.network, n.mac) for n in cfg.nics] == [(NETWORK, "52:54:00:aa:bb:01")]
        owners = [raw.VBD.get_other_config(b).get("owner") for b in rec["VBDs"]]
        assert owners == ["true", "true"]
    finally:
        vm.delete()


def test_create_failure_leaves_nothing(hv: vmctl.Hypervisor, raw: Any) -> None:
    vdis = len(raw.VDI.get_all())
    vms = len(raw.VM.get_all())
    s = spec("badnet", nics=[NicSpec(network="no-such-network")])
    with pytest.raises(vmctl.NotFound):
        hv.create_vm(s)
    s2 = spec("badsr", disks=[DiskSpec(size_mib=64), DiskSpec(size_mib=64, pool="no-sr")])
    with pytest.raises(vmctl.NotFound):
        hv.create_vm(s2)
    # A failure after VM.create (a disk larger than the SR): the VM and its first disk go.
    s3 = spec("toobig", disks=[DiskSpec(size_mib=64), DiskSpec(size_mib=60 * 1024 * 1024)])
    with pytest.raises(vmctl.InsufficientResources) as err:
        hv.create_vm(s3)
    assert err.value.vendor_code == "SR_FULL"
    assert (len(raw.VDI.get_all()), len(raw.VM.get_all())) == (vdis, vms)
    assert not raw.VM.get_by_name_label(s3.name)


def test_duplicate_name(hv: vmctl.Hypervisor) -> None:
    vm = hv.create_vm(spec("dup"))
    try:
        with pytest.raises(vmctl.AlreadyExists):
            # the driver checks the pool too
            hv._driver.create_vm(VMSpec(name=vm.name), deadline=Deadline.after(10))
    finally:
        vm.delete()


def test_power_cycle_exact_states(hv: vmctl.Hypervisor, raw: Any) -> None:
    vm = hv.create_vm(spec("power", boot=GUEST))
    ref = raw.VM.get_by_uuid(vm.uuid)
    try:
        assert vm.start().state is S.RUNNING
        assert raw.VM.get_power_state(ref) == "Running"
        assert vm.pause().state is S.PAUSED
        assert {i.uuid: i.state for i in hv.list_vms()}[vm.uuid] is S.PAUSED
        assert vm.resume().state is S.RUNNING
        assert vm.suspend().state is S.SUSPENDED
        assert raw.VM.get_power_state(ref) == "Suspended"
        assert vm.resume().state is S.RUNNING
        assert vm.reset().state is S.RUNNING
        assert vm.reboot().state is S.RUNNING
        info = vm.power_off()
        assert info.state is S.STOPPED and info.reason is vmctl.StateReason.UNKNOWN
        assert raw.VM.get_power_state(ref) == "Halted"
        vm.start()
        assert vm.shutdown(timeout=30).state is S.STOPPED  # the simulated guest has drivers
    finally:
        vm.delete(force=True)


def test_bad_power_state_maps_to_invalid_state(hv: vmctl.Hypervisor) -> None:
    vm = hv.create_vm(spec("badstate"))
    try:
        drv, deadline = hv._driver, Deadline.after(10)
        with pytest.raises(vmctl.InvalidState) as err:  # past the core's own check: xapi refuses
            task = drv.pause(vm.uuid, deadline=deadline)
            if task is not None:
                finish_task(drv, task, deadline=deadline, what="pause")
        e = err.value
        assert e.vendor_code == "VM_BAD_POWER_STATE"
        assert e.current is S.STOPPED and e.allowed == {S.RUNNING}
        assert type(e.__cause__).__name__ == "Failure"
        assert e.__cause__.details[0] == "VM_BAD_POWER_STATE"  # type: ignore[union-attr]
    finally:
        vm.delete()


def test_unknown_uuid_not_found(hv: vmctl.Hypervisor) -> None:
    with pytest.raises(vmctl.NotFound) as err:
        hv._driver.get_vm(str(uuidlib.uuid4()), deadline=Deadline.after(10))
    assert err.value.vendor_code == "UUID_INVALID"


def test_delete_removes_owned_disks_and_snapshots(hv: vmctl.Hypervisor, raw: Any) -> None:
    vdis = set(raw.VDI.get_all())
    vm = hv.create_vm(spec("del", boot=GUEST, disks=[DiskSpec(size_mib=64), DiskSpec(size_mib=16)]))
    vm.snapshot("s1")
    vm.start()
    vm.suspend()
    deleted = vm.delete()
    assert deleted[0].startswith(f"vm {vm.name}")
    assert sum(line.startswith("disk") for line in deleted) >= 4
    assert any(line.startswith("snapshot s1") for line in deleted)
    assert set(raw.VDI.get_all()) == vdis
    with pytest.raises(vmctl.NotFound):
        vm.info()


def test_wait_false_and_wait_all(hv: vmctl.Hypervisor) -> None:
    vms = [hv.create_vm(spec(f"async{i}")) for i in range(4)]
    try:
        ops = [vm.start(wait=False) for vm in vms]
        vmctl.wait_all(ops, timeout=60)
        assert all(op.result().state is S.RUNNING for op in ops)
    finally:
        for vm in vms:
            vm.delete(force=True)


def test_wait_changes_long_polls(hv: vmctl.Hypervisor) -> None:
    vm = hv.create_vm(spec("wait"))
    try:
        drv = hv._driver
        info = vm.info()
        before, t = drv.round_trips, time.monotonic()
        deadline = Deadline.after(2.0)
        calls = 0
        while not deadline.expired():  # as the core's await_states calls it
            assert drv.wait_changes({vm.uuid: info}, deadline=deadline) == {}
            calls += 1
        assert 2.0 <= time.monotonic() - t < 3.0
        assert drv.round_trips - before <= 6  # event.from blocks; no polling loop
    finally:
        vm.delete()


def test_start_hands_the_xapi_task_to_the_core(hv: vmctl.Hypervisor) -> None:
    vm = hv.create_vm(spec("waittask", boot=GUEST))
    try:
        drv = hv._driver
        task = drv.start(vm.uuid, deadline=Deadline.after(10))
        assert isinstance(task, Task) and task.id.startswith("OpaqueRef:")
        outcome = finish_task(drv, task, deadline=Deadline.after(30), what="start")
        assert outcome.ok and vm.info().state is S.RUNNING
    finally:
        vm.delete(force=True)


def test_resources_map_to_vcpus_params_and_dynamic_min(hv: vmctl.Hypervisor, raw: Any) -> None:
    s = spec(
        "res",
        memory_mib=512,
        resources=Resources(cpu_shares=512, cpu_limit_percent=150, memory_reservation_mib=256),
    )
    vm = hv.create_vm(s)
    ref = raw.VM.get_by_uuid(vm.uuid)
    try:
        assert raw.VM.get_VCPUs_params(ref) == {"weight": "512", "cap": "150"}
        assert raw.VM.get_memory_dynamic_min(ref) == str(256 * MiB)
        assert raw.VM.get_memory_dynamic_max(ref) == str(512 * MiB)
        res = vm.set_resources(Resources(cpu_shares=1024, memory_reservation_mib=128)).resources
        assert (res.cpu_shares, res.cpu_limit_percent, res.memory_reservation_mib) == (
            1024,
            150,
            128,
        )
        assert raw.VM.get_memory_dynamic_min(ref) == str(128 * MiB)
        with pytest.raises(vmctl.ValidationError):
            vm.set_resources(Resources(cpu_shares=70000))  # beyond Xen's weight range
        with pytest.raises(vmctl.NotSupported):
            vm.set_resources(Resources(memory_limit_mib=1024))
        cfg = vm.reconfigure(vcpus=3, memory_mib=1024)
        assert (cfg.vcpus, cfg.memory_mib, cfg.resources.memory_reservation_mib) == (3, 1024, 128)
        cfg = vm.reconfigure(vcpus=1)
        assert raw.VM.get_VCPUs_max(ref) == "1"
        vm.start()
        with pytest.raises(vmctl.NotSupported):
            vm.reconfigure(vcpus=2)
        with pytest.raises(vmctl.InvalidState):  # no live setter for weight/cap in xapi
            vm.set_resources(Resources(cpu_shares=256))
        res = vm.set_resources(Resources(memory_reservation_mib=192)).resources  # live range
        assert res.memory_reservation_mib == 192
    finally:
        vm.delete(force=True)


def test_guest_info_from_guest_metrics(hv: vmctl.Hypervisor) -> None:
    vm = hv.create_vm(
        spec("guest", boot=GUEST, nics=[NicSpec(network=NETWORK), NicSpec(network=NETWORK)])
    )
    try:
        assert vm.guest_info().agent is vmctl.AgentState.NOT_RUNNING
        vm.start()
        deadline = time.monotonic() + 20
        while not vm.guest_info().ip_addresses and time.monotonic() < deadline:
            time.sleep(0.1)
        info = vm.guest_info()
        assert info.agent is vmctl.AgentState.RUNNING
        assert len([ip for ip in info.ip_addresses if "." in ip]) == 2
        assert info.os_name
    finally:
        vm.delete(force=True)


def test_guest_that_cannot_be_asked_then_force(sim: Any, hv: vmctl.Hypervisor, raw: Any) -> None:
    # xapi leaves clean_shutdown out of allowed_operations when the guest cannot do it; a
    # blocked operation is the way to get that on the simulator (its guests all have PV
    # drivers). The driver asks xapi why and raises InvalidState; force_after powers off.
    # (VM.add_to_blocked_operations is RW in datamodel_vm.ml but not served by xapisim, so
    # the test sets the field in the simulator's database.)
    vm = hv.create_vm(spec("blocked", boot=GUEST))
    ref = raw.VM.get_by_uuid(vm.uuid)
    try:
        vm.start()
        with sim.db.lock:
            sim.db.objs["VM"][ref]["blocked_operations"]["clean_shutdown"] = "test"
            sim.db.touch("VM", ref)
        assert "clean_shutdown" not in raw.VM.get_allowed_operations(ref)
        with pytest.raises(vmctl.InvalidState) as err:
            vm.shutdown(timeout=3)
        assert err.value.vendor_code == "OPERATION_BLOCKED"
        assert vm.info().state is S.RUNNING
        t = time.monotonic()
        assert vm.shutdown(timeout=30, force_after=10).state is S.STOPPED
        assert time.monotonic() - t < 5  # forced at once: the guest could not be asked
    finally:
        vm.delete(force=True)


def test_no_os_cannot_be_asked(hv: vmctl.Hypervisor, raw: Any) -> None:
    # Blank disks, nothing bootable: no guest agent, no PV drivers. xapi leaves
    # clean_shutdown/clean_reboot out of allowed_operations (check_op_for_feature) and
    # VM.assert_operation_valid says VM_LACKS_FEATURE: the driver raises InvalidState.
    vm = hv.create_vm(spec("noos"))
    try:
        vm.start()
        ref = raw.VM.get_by_uuid(vm.uuid)
        assert "clean_shutdown" not in raw.VM.get_allowed_operations(ref)
        with pytest.raises(vmctl.InvalidState) as err:
            vm.shutdown(timeout=3)
        assert err.value.vendor_code == "VM_LACKS_FEATURE"
        with pytest.raises(vmctl.InvalidState):
            vm.reboot()
        time.sleep(0.5)  # longer than the simulated guest takes to come up
        info = vm.guest_info()
        assert info.ip_addresses == () and info.agent is not vmctl.AgentState.RUNNING
        assert vm.info().state is S.RUNNING
        t = time.monotonic()
        assert vm.shutdown(timeout=30, force_after=10).state is S.STOPPED
        assert time.monotonic() - t < 5
    finally:
        vm.delete(force=True)


def test_many_starts_and_power_offs_go_in_bulk(hv: vmctl.Hypervisor) -> None:
    """Requests submitted together: one thread sends the Async calls, one event.from loop
    waits for all their tasks (BulkPower), and every VM gets there."""
    driver: Any = hv._driver
    calls: list[tuple[str, int]] = []
    for verb in ("start_many", "power_off_many"):
        real = getattr(driver, verb)

        def spy(uuids: Any, *, deadline: Deadline, _real: Any = real, _verb: str = verb) -> Any:
            calls.append((_verb, len(uuids)))
            return _real(uuids, deadline=deadline)

        setattr(driver, verb, spy)
    vms = [hv.create_vm(VMSpec(name=name(f"bulk{i}"), memory_mib=64)) for i in range(6)]
    try:
        ops = [vm.start(wait=False, timeout=60) for vm in vms]
        vmctl.wait_all(ops, timeout=90)
        assert [op.result().state for op in ops] == [S.RUNNING] * 6
        ops = [vm.power_off(wait=False, timeout=60) for vm in vms]
        vmctl.wait_all(ops, timeout=90)
        assert [op.result().state for op in ops] == [S.STOPPED] * 6
        assert {verb for verb, n in calls if n >= 2} == {"start_many", "power_off_many"}
    finally:
        for verb in ("start_many", "power_off_many"):
            delattr(driver, verb)
        for vm in vms:
            vm.delete(force=True)
