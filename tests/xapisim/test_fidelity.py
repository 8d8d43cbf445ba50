"""Fidelity tests: the real XenAPI SDK against xapisim, checked against xapisim's tables.

The tables (``xapisim.tables``) carry the facts from xapi-project/xen-api; these tests check
that what the simulator says on the wire matches them.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from typing import Any

import pytest
import XenAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xapisim_helpers import NULL, REF_RE, check_wire, failure, login, raw, wait_for

import xapisim
from xapisim.tables import (
    ALLOWED_POWER_STATES,
    CLASSES,
    ERRORS,
    EVENT_CLASSES,
    GUEST_FEATURE_OPS,
    MESSAGES,
    POWER_STATES,
    RESULT_STATE,
    SUSPEND_FEATURE_OPS,
)

pytestmark = pytest.mark.xen

PASSWORD = secrets.token_hex(8)


@pytest.fixture(scope="module")
def server() -> Iterator[xapisim.SimServer]:
    with xapisim.serve(
        hosts=2, vms=4, password=PASSWORD, tls=True, op_delay=0.02, guest_delay=0.1
    ) as srv:
        yield srv


def event_from(x: Any, classes: list[str], token: str, timeout: float) -> Any:
    return getattr(x.event, "from")(classes, token, timeout)


def fresh_vm(x: Any, name: str) -> str:
    base = x.VM.get_by_name_label("vm-01")[0]
    return str(x.VM.clone(base, name))


def put_in_state(x: Any, vm: str, state: str) -> None:
    if state == "Halted":
        return
    x.VM.start(vm, state == "Paused", False)
    if state in ("Running", "Suspended"):
        # An HVM guest can be asked to shut down cleanly, and be suspended, checkpointed or
        # migrated, once its agent reports (xapi_vm_lifecycle.ml check_op_for_feature):
        # wait for the guest metrics.
        wait_guest(x, vm)
    if state == "Suspended":
        x.VM.suspend(vm)
    assert x.VM.get_power_state(vm) == state


def wait_guest(x: Any, vm: str) -> str:
    """Wait until the simulated guest agent of a started VM reports (PV drivers)."""
    return str(wait_for(lambda: (g := x.VM.get_guest_metrics(vm)) != NULL and g))


def hosts(x: Any) -> list[str]:
    return sorted(x.host.get_all(), key=lambda h: x.host.get_name_label(h))


# --------------------------------------------------------------------------- sessions


def test_login_api_version_and_this_host(server: xapisim.SimServer, x: Any) -> None:
    s = login(server)
    assert s.API_version == "2.21"  # SDK: pool.get_all -> get_master -> host.get_API_version_*
    pool = x.pool.get_all()[0]
    assert s.xenapi.session.get_this_host(s.handle) == x.pool.get_master(pool)
    assert REF_RE.match(s.handle)
    rec = s.xenapi.session.get_record(s.handle)
    assert set(rec) == set(CLASSES["session"].fields)
    for f, ty in CLASSES["session"].fields.items():
        check_wire(rec[f], ty, f"session.{f}")
    s.xenapi.session.logout()


def test_login_two_arg_form_and_bad_password(server: xapisim.SimServer) -> None:
    p = raw(server)
    r = p.session.login_with_password(server.username, server.password)
    assert r["Status"] == "Success" and REF_RE.match(r["Value"])
    p.session.logout(r["Value"])
    s = XenAPI.Session(server.url, transport=login(server).transport)
    d = failure(s.xenapi.login_with_password, "root", "wrong", "2.21", "t")
    assert d[:2] == ["SESSION_AUTHENTICATION_FAILED", "root"]


def test_logout_and_open_session_count(server: xapisim.SimServer) -> None:
    before = server.open_sessions()
    sessions = [login(server) for _ in range(3)]
    assert server.open_sessions() == before + 3
    for s in sessions:
        s.xenapi.session.logout()
    assert server.open_sessions() == before
    p = raw(server)
    r = p.VM.get_all(sessions[0].handle or "OpaqueRef:gone")
    assert r == {
        "Status": "Failure",
        "ErrorDescription": ["SESSION_INVALID", r["ErrorDescription"][1]],
    }


def test_session_idle_expiry() -> None:
    with xapisim.serve(hosts=1, vms=1, password="pw", tls=False, session_timeout=0.3) as srv:
        p = raw(srv)
        ref = p.session.login_with_password("root", "pw", "2.21", "t")["Value"]
        assert p.VM.get_all(ref)["Status"] == "Success"
        assert srv.open_sessions() == 1
        time.sleep(0.5)
        assert srv.open_sessions() == 0
        r = p.VM.get_all(ref)
        assert r == {"Status": "Failure", "ErrorDescription": ["SESSION_INVALID", ref]}
        # The SDK logs in again on SESSION_INVALID and retries, transparently.
        s = login(srv)
        time.sleep(0.5)
        assert s.xenapi.VM.get_all()
        assert srv.open_sessions() == 1


# --------------------------------------------------------------------------- protocol


def test_method_unknown_and_parameter_count(x: Any, server: xapisim.SimServer) -> None:
    assert failure(x.VM.frobnicate, "a") == ["MESSAGE_METHOD_UNKNOWN", "VM.frobnicate"]
    assert failure(x.Nonsense.get_all) == ["MESSAGE_METHOD_UNKNOWN", "Nonsense.get_all"]
    assert failure(x.VM.get_no_such_field, NULL)[0] == "MESSAGE_METHOD_UNKNOWN"
    vm = x.VM.get_by_name_label("vm-02")[0]
    for name, spec in MESSAGES.items():
        if name.startswith("session."):
            continue
        cls, meth = name.split(".")
        fn = getattr(getattr(x, cls), meth)
        too_many = [NULL] * (len(spec.params) + 1)
        d = failure(fn, *too_many)
        required = len(spec.params) - spec.optional
        assert d == ["MESSAGE_PARAMETER_COUNT_MISMATCH", name, str(required),
                     str(len(too_many))], d  # fmt: skip
    assert failure(x.VM.start, vm) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.start", "3", "1"]
    assert failure(x.Async.VM.start, vm) == [
        "MESSAGE_PARAMETER_COUNT_MISMATCH", "Async.VM.start", "3", "1"]  # fmt: skip


def test_wire_envelope_and_types(server: xapisim.SimServer, x: Any) -> None:
    p = raw(server)
    ref = p.session.login_with_password("root", PASSWORD, "2.21", "t")["Value"]
    vm = x.VM.get_by_name_label("vm-01")[0]
    r = p.VM.get_memory_static_max(ref, vm)
    assert set(r) == {"Status", "Value"} and isinstance(r["Value"], str)
    int(r["Value"])
    r = p.VM.get_power_state(ref, "OpaqueRef:nope")
    assert r == {"Status": "Failure", "ErrorDescription": ["HANDLE_INVALID", "VM",
                                                            "OpaqueRef:nope"]}  # fmt: skip
    # ints are accepted as XML-RPC <int> or as decimal strings
    v = x.VM.clone(vm, "wire-int")
    assert p.VM.set_VCPUs_max(ref, v, "3")["Status"] == "Success"
    assert p.VM.set_VCPUs_max(ref, v, 4)["Status"] == "Success"
    assert x.VM.get_VCPUs_max(v) == "4"
    p.session.logout(ref)


def test_every_record_has_the_datamodel_fields_and_wire_types(x: Any) -> None:
    for cls, spec in CLASSES.items():
        if cls == "session":
            continue
        api = getattr(x, cls)
        records = api.get_all_records()
        assert sorted(records) == sorted(api.get_all())
        for ref, rec in records.items():
            assert REF_RE.match(ref)
            assert set(rec) == set(spec.fields), (cls, set(rec) ^ set(spec.fields))
            for f, ty in spec.fields.items():
                check_wire(rec[f], ty, f"{cls}.{f}")
            assert api.get_record(ref) == rec or cls in ("task", "VM", "VM_metrics")
            assert api.get_by_uuid(rec["uuid"]) == ref
        if records:
            ref = next(iter(records))
            for f, ty in spec.fields.items():
                check_wire(getattr(api, f"get_{f}")(ref), ty, f"{cls}.get_{f}")


def test_lookups_and_setters(x: Any) -> None:
    vm = x.VM.get_by_name_label("vm-03")[0]
    assert failure(x.VM.get_by_uuid, "no-such") == ["UUID_INVALID", "VM", "no-such"]
    assert x.VM.get_by_name_label("no such vm") == []
    x.VM.set_name_description(vm, "described")
    assert x.VM.get_name_description(vm) == "described"
    x.VM.add_to_other_config(vm, "k", "v")
    assert x.VM.get_other_config(vm)["k"] == "v"
    uuid = x.VM.get_uuid(vm)
    assert failure(x.VM.add_to_other_config, vm, "k", "w") == [
        "MAP_DUPLICATE_KEY", "VM", "other_config", uuid, "k"]  # fmt: skip
    x.VM.remove_from_other_config(vm, "k")
    assert "k" not in x.VM.get_other_config(vm)
    x.VM.add_tags(vm, "blue")
    assert x.VM.get_tags(vm) == ["blue"]
    x.VM.remove_tags(vm, "blue")
    x.VM.set_VCPUs_params(vm, {"weight": "256", "cap": "50"})
    x.VM.add_to_VCPUs_params(vm, "mask", "0,1")
    assert x.VM.get_VCPUs_params(vm) == {"weight": "256", "cap": "50", "mask": "0,1"}
    assert failure(x.VM.set_power_state, vm, "Running")[0] == "MESSAGE_METHOD_UNKNOWN"
    assert failure(x.VM.set_VCPUs_max, vm, "x") == ["FIELD_TYPE_ERROR", "value"]


# --------------------------------------------------------------------------- the world


def test_pool_hosts_dom0_and_templates(x: Any) -> None:
    pool = x.pool.get_all()
    assert len(pool) == 1
    hs = hosts(x)
    assert len(hs) == 2
    assert x.pool.get_master(pool[0]) in hs
    recs = x.VM.get_all_records()
    dom0s = [r for r, v in recs.items() if v["is_control_domain"]]
    assert len(dom0s) == len(hs)
    for h in hs:
        d = x.host.get_control_domain(h)
        assert recs[d]["resident_on"] == h and recs[d]["power_state"] == "Running"
        assert recs[d]["domid"] == "0" and d in x.host.get_resident_VMs(h)
        m = x.host.get_metrics(h)
        assert x.host_metrics.get_live(m) is True
    templates = {v["name_label"] for v in recs.values() if v["is_a_template"]}
    assert "Other install media" in templates
    for v in recs.values():
        if v["is_a_template"]:
            assert v["power_state"] == "Halted" and "start" not in v["allowed_operations"]


def test_template_rules_and_provision(x: Any) -> None:
    t = x.VM.get_by_name_label("Other install media")[0]
    assert failure(x.VM.start, t, False, False) == ["VM_IS_TEMPLATE", t, "start"]
    assert failure(x.VM.destroy, t) == ["VM_IS_TEMPLATE", t, "destroy"]
    assert failure(x.VM.set_is_a_template, t, False) == [
        "VM_CANNOT_DELETE_DEFAULT_TEMPLATE", t]  # fmt: skip
    new = x.VM.clone(t, "from-template")
    assert x.VM.get_is_a_template(new) is True
    assert x.VM.get_is_default_template(new) is False
    assert x.VM.get_VBDs(new) == []
    x.VM.provision(new)
    vbds = x.VM.get_VBDs(new)
    assert len(vbds) == 1 and x.VBD.get_bootable(vbds[0]) is True
    x.VM.set_is_a_template(new, False)
    vm = x.VM.get_by_name_label("vm-04")[0]
    assert failure(x.VM.provision, vm) == ["ONLY_PROVISION_TEMPLATE"]
    x.VM.start(new, False, False)
    assert x.VM.get_power_state(new) == "Running"
    x.VM.hard_shutdown(new)
    x.VM.destroy(new)
    assert failure(x.VM.get_record, new) == ["HANDLE_INVALID", "VM", new]


def test_dom0_cannot_be_stopped(x: Any) -> None:
    d = x.host.get_control_domain(hosts(x)[0])
    assert failure(x.VM.hard_shutdown, d)[0] == "OPERATION_NOT_ALLOWED"
    assert failure(x.VM.start, d, False, False) == ["VM_BAD_POWER_STATE", d, "halted",
                                                     "running"]  # fmt: skip


# --------------------------------------------------------------------------- lifecycle

LIFECYCLE = [
    "start", "start_on", "clean_shutdown", "hard_shutdown", "clean_reboot", "hard_reboot",
    "pause", "unpause", "suspend", "resume", "resume_on", "pool_migrate",
]  # fmt: skip


@pytest.mark.parametrize("state", POWER_STATES)
def test_power_state_matrix(x: Any, state: str) -> None:
    """Every lifecycle message from every power state: works, or VM_BAD_POWER_STATE."""
    hs = hosts(x)
    vm = fresh_vm(x, f"matrix-{state}")
    for op in LIFECYCLE:
        put_in_state(x, vm, state)
        rec = x.VM.get_record(vm)
        allowed = ALLOWED_POWER_STATES[op]
        assert (op in rec["allowed_operations"]) == (state in allowed), (op, state)
        args: list[Any] = [vm]
        if op in ("start", "resume"):
            args += [False, False]
        elif op in ("start_on", "resume_on"):
            args += [hs[1], False, False]
        elif op == "pool_migrate":
            target = hs[0] if rec["resident_on"] == hs[1] else hs[1]
            args += [target, {"live": "true"}]
        if state in allowed:
            getattr(x.VM, op)(*args)
            after = x.VM.get_record(vm)
            assert after["power_state"] == RESULT_STATE.get(op, state), (op, state)
            if op in ("start_on", "resume_on", "pool_migrate"):
                assert after["resident_on"] == args[1]
            if after["power_state"] in ("Running", "Paused"):
                assert after["resident_on"] in hs and after["domid"] != "-1"
            else:
                assert after["resident_on"] == NULL
        else:
            d = failure(getattr(x.VM, op), *args)
            expected = ", ".join(s.lower() for s in allowed)
            assert d == ["VM_BAD_POWER_STATE", vm, expected, state.lower()], (op, d)
        if x.VM.get_power_state(vm) != "Halted":
            x.VM.hard_shutdown(vm)
    x.VM.destroy(vm)


def test_pool_migrate_moves_resident_on(x: Any) -> None:
    hs = hosts(x)
    vm = fresh_vm(x, "migrant")
    x.VM.start_on(vm, hs[0], False, False)
    assert vm in x.host.get_resident_VMs(hs[0])
    wait_guest(x, vm)  # an HVM guest migrates with PV drivers (check_op_for_feature)
    x.VM.pool_migrate(vm, hs[1], {"live": "true"})
    assert x.VM.get_resident_on(vm) == hs[1]
    assert vm in x.host.get_resident_VMs(hs[1]) and vm not in x.host.get_resident_VMs(hs[0])
    assert failure(x.VM.pool_migrate, vm, "OpaqueRef:bad", {}) == [
        "HANDLE_INVALID", "host", "OpaqueRef:bad"]  # fmt: skip
    x.VM.hard_shutdown(vm)
    x.VM.destroy(vm)


def test_guest_metrics_appear_after_start(x: Any) -> None:
    vm = fresh_vm(x, "guest")
    assert x.VM.get_guest_metrics(vm) == NULL
    x.VM.start(vm, False, False)
    gm = wait_for(lambda: (g := x.VM.get_guest_metrics(vm)) != NULL and g)
    nets = x.VM_guest_metrics.get_networks(gm)
    assert set(nets) >= {"0/ip", "0/ipv4/0", "0/ipv6/0"}
    assert nets["0/ip"].count(".") == 3
    x.VM.clean_shutdown(vm)
    assert x.VM.get_guest_metrics(vm) == NULL
    assert failure(x.VM_guest_metrics.get_networks, gm) == ["HANDLE_INVALID",
                                                            "VM_guest_metrics", gm]  # fmt: skip
    x.VM.destroy(vm)


def test_snapshot_checkpoint_revert_clone_copy(x: Any) -> None:
    vm = fresh_vm(x, "snappy")
    x.VM.start(vm, False, False)
    snap = x.VM.snapshot(vm, "s1")
    srec = x.VM.get_record(snap)
    assert srec["is_a_snapshot"] and srec["snapshot_of"] == vm and srec["is_a_template"]
    assert srec["power_state"] == "Halted" and snap in x.VM.get_snapshots(vm)
    assert failure(x.VM.start, snap, False, False)[0] == "VM_IS_SNAPSHOT"
    wait_guest(x, vm)  # an HVM guest checkpoints with PV drivers (check_op_for_feature)
    cp = x.VM.checkpoint(vm, "c1")
    assert x.VM.get_power_state(cp) == "Suspended"
    assert x.VM.get_suspend_VDI(cp) != NULL
    x.VM.revert(snap)
    assert x.VM.get_power_state(vm) == "Halted"
    x.VM.revert(cp)
    assert x.VM.get_power_state(vm) == "Suspended"
    assert failure(x.VM.revert, vm) == ["ONLY_REVERT_SNAPSHOT"]
    x.VM.resume(vm, False, False)
    assert failure(x.VM.clone, vm, "nope") == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    x.VM.hard_shutdown(vm)
    c = x.VM.clone(vm, "snappy-clone")
    assert x.VM.get_name_label(c) == "snappy-clone" and x.VM.get_power_state(c) == "Halted"
    srs = [s for s in x.SR.get_all() if x.SR.get_type(s) == "lvm"]
    cp2 = x.VM.copy(vm, "snappy-copy", srs[0])
    disks = [x.VBD.get_VDI(b) for b in x.VM.get_VBDs(cp2) if x.VBD.get_type(b) == "Disk"]
    assert disks and all(x.VDI.get_SR(d) == srs[0] for d in disks)
    for v in (c, cp2, snap, cp, vm):
        x.VM.destroy(v)


def test_vcpus_and_memory_rules(x: Any) -> None:
    vm = fresh_vm(x, "sizing")
    x.VM.set_VCPUs_max(vm, "4")
    x.VM.set_VCPUs_at_startup(vm, "3")
    assert failure(x.VM.set_VCPUs_at_startup, vm, "5")[0] == "INVALID_VALUE"
    assert failure(x.VM.set_VCPUs_max, vm, "2")[0] == "INVALID_VALUE"
    g = str(1024**3)
    x.VM.set_memory_limits(vm, g, str(2 * 1024**3), g, str(2 * 1024**3))
    assert x.VM.get_memory_static_max(vm) == str(2 * 1024**3)
    assert failure(x.VM.set_memory_limits, vm, g, g, str(2 * 1024**3), g) == [
        "MEMORY_CONSTRAINT_VIOLATION_ORDER"]  # fmt: skip
    x.VM.set_memory_dynamic_range(vm, g, g)
    x.VM.start(vm, False, False)
    assert failure(x.VM.set_VCPUs_max, vm, "2") == ["VM_BAD_POWER_STATE", vm, "halted",
                                                     "running"]  # fmt: skip
    assert failure(x.VM.set_memory_limits, vm, g, g, g, g) == [
        "VM_BAD_POWER_STATE", vm, "halted", "running"]  # fmt: skip
    x.VM.set_memory_dynamic_range(vm, g, g)  # allowed while running
    x.VM.hard_shutdown(vm)
    x.VM.destroy(vm)


def test_devices_vbd_vdi_vif(x: Any) -> None:
    vm = fresh_vm(x, "devices")
    sr = x.pool.get_default_SR(x.pool.get_all()[0])
    vdi = x.VDI.create({"name_label": "extra", "name_description": "", "SR": sr,
                        "virtual_size": str(1024**3), "type": "user", "sharable": False,
                        "read_only": False, "other_config": {}})  # fmt: skip
    assert x.VDI.get_virtual_size(vdi) == str(1024**3) and vdi in x.SR.get_VDIs(sr)
    vbd = x.VBD.create({"VM": vm, "VDI": vdi, "userdevice": "autodetect", "bootable": False,
                        "mode": "RW", "type": "Disk", "unpluggable": True, "empty": False,
                        "other_config": {}, "qos_algorithm_type": "",
                        "qos_algorithm_params": {}})  # fmt: skip
    assert vbd in x.VM.get_VBDs(vm) and x.VBD.get_userdevice(vbd) not in ("", "autodetect")
    assert failure(x.VBD.plug, vbd) == ["VM_BAD_POWER_STATE", vm, "running", "halted"]
    assert failure(x.VBD.create, {"VM": vm})[0] == "FIELD_TYPE_ERROR"
    x.VM.start(vm, False, False)
    assert x.VBD.get_currently_attached(vbd) is True
    wait_guest(x, vm)  # HVM hot-plug needs PV drivers (xapi_vbd_helpers.ml)
    assert failure(x.VBD.plug, vbd) == ["DEVICE_ALREADY_ATTACHED", vbd]
    assert failure(x.VDI.destroy, vdi) == ["VDI_IN_USE", vdi, "destroy"]
    x.VBD.unplug(vbd)
    assert failure(x.VBD.unplug, vbd) == ["DEVICE_ALREADY_DETACHED", vbd]
    x.VBD.plug(vbd)
    net = x.network.get_all()[0]
    vif = x.VIF.create({"device": "1", "network": net, "VM": vm, "MAC": "", "MTU": "1500",
                        "other_config": {}, "qos_algorithm_type": "",
                        "qos_algorithm_params": {}})  # fmt: skip
    assert x.VIF.get_MAC(vif) and x.VIF.get_MAC_autogenerated(vif) is True
    x.VIF.plug(vif)
    assert x.VIF.get_currently_attached(vif) is True
    assert failure(x.VIF.destroy, vif)[0] == "OPERATION_NOT_ALLOWED"
    x.VIF.unplug(vif)
    x.VIF.destroy(vif)
    x.VM.hard_shutdown(vm)
    x.VBD.destroy(vbd)
    x.VDI.destroy(vdi)
    assert failure(x.VDI.get_record, vdi) == ["HANDLE_INVALID", "VDI", vdi]
    x.VM.destroy(vm)


# --------------------------------------------------------------------------- tasks


def wait_task(x: Any, task: str) -> dict[str, Any]:
    return dict(wait_for(lambda: (r := x.task.get_record(task))["status"] != "pending" and r))


def test_async_tasks(server: xapisim.SimServer, x: Any) -> None:
    vm = fresh_vm(x, "async")
    server.cfg.op_delay = 0.3
    try:
        task = x.Async.VM.start(vm, False, False)
        rec = x.task.get_record(task)
    finally:
        server.cfg.op_delay = 0.02
    assert REF_RE.match(task)
    assert rec["status"] == "pending" and 0.0 <= rec["progress"] < 1.0
    for f, ty in CLASSES["task"].fields.items():
        check_wire(rec[f], ty, f"task.{f}")
    done = wait_task(x, task)
    assert done["status"] == "success" and done["progress"] == 1.0 and done["result"] == ""
    assert done["error_info"] == [] and done["finished"].value >= done["created"].value
    bad = wait_task(x, x.Async.VM.start(vm, False, False))
    assert bad["status"] == "failure"
    assert bad["error_info"] == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    x.VM.hard_shutdown(vm)
    c = wait_task(x, x.Async.VM.clone(vm, "async-clone"))
    ref = xmlrpc.client.loads(
        "<methodResponse><params><param>" + c["result"] + "</param></params></methodResponse>"
    )[0][0]
    assert c["result"].startswith("<value>") and x.VM.get_name_label(ref) == "async-clone"
    x.task.destroy(task)
    assert failure(x.task.get_record, task) == ["HANDLE_INVALID", "task", task]
    # cancel: make the operation slow enough to catch it pending
    server.cfg.op_delay = 1.0
    try:
        t = x.Async.VM.start(vm, False, False)
        x.task.cancel(t)
        r = wait_task(x, t)
        assert r["status"] in ("cancelled", "cancelling") or wait_task(x, t)
        r = wait_for(lambda: (q := x.task.get_record(t))["status"] == "cancelled" and q)
        assert r["error_info"] == ["TASK_CANCELLED", t]
    finally:
        server.cfg.op_delay = 0.02
    assert x.VM.get_power_state(vm) == "Halted"
    x.VM.destroy(ref)
    x.VM.destroy(vm)


# --------------------------------------------------------------------------- events


def test_event_from_token_timeout_and_filters(server: xapisim.SimServer, x: Any) -> None:
    first = event_from(x, ["*"], "", 0.0)
    assert set(first) == {"events", "valid_ref_counts", "token"}
    assert first["events"] and all(e["operation"] == "add" for e in first["events"])
    counts = first["valid_ref_counts"]
    assert set(counts) == {c.lower() for c in EVENT_CLASSES}
    assert all(isinstance(v, int) for v in counts.values())
    assert counts["vm"] == len(x.VM.get_all())
    ev = first["events"][0]
    assert set(ev) == {"id", "timestamp", "class", "operation", "ref", "snapshot"}
    assert ev["timestamp"] == "0.0" and ev["id"].isdigit()  # xapi_event.ml: event_of
    token = first["token"]
    t0 = time.monotonic()
    empty = event_from(x, ["vm"], token, 0.3)
    assert empty["events"] == [] and 0.25 <= time.monotonic() - t0 < 3
    vm = x.VM.get_by_name_label("vm-02")[0]

    other = login(server)

    def later() -> None:
        time.sleep(0.2)
        other.xenapi.VM.set_name_description(vm, "evented")
        other.xenapi.session.logout()

    threading.Thread(target=later).start()
    t0 = time.monotonic()
    got = event_from(x, [f"VM/{vm}"], token, 5.0)
    assert time.monotonic() - t0 < 4
    assert [(e["class"], e["operation"], e["ref"]) for e in got["events"]] == [("vm", "mod", vm)]
    snap = got["events"][0]["snapshot"]
    assert snap["name_description"] == "evented" and set(snap) == set(CLASSES["VM"].fields)
    assert got["token"] > token
    # a created-then-destroyed object is reported add then del
    tok = got["token"]
    c = x.VM.clone(vm, "ephemeral")
    adds = event_from(x, ["vm"], tok, 1.0)
    assert ("add", c) in [(e["operation"], e["ref"]) for e in adds["events"]]
    x.VM.destroy(c)
    dels = event_from(x, ["vm"], adds["token"], 1.0)
    d = [e for e in dels["events"] if e["ref"] == c]
    assert d and d[-1]["operation"] == "del" and "snapshot" not in d[-1]
    # task events for Async calls
    tasks = event_from(x, ["task"], dels["token"], 0.0)
    task = x.Async.VM.clone(vm, "ev-clone")
    seen = event_from(x, ["task"], tasks["token"], 2.0)
    assert task in [e["ref"] for e in seen["events"]]
    r = wait_task(x, task)
    x.VM.destroy(xmlrpc.client.loads(
        "<methodResponse><params><param>" + r["result"] + "</param></params></methodResponse>"
    )[0][0])  # fmt: skip
    assert failure(event_from, x, ["vm"], "garbage", 0.0) == [
        "EVENT_FROM_TOKEN_PARSE_FAILURE", "garbage"]  # fmt: skip


def test_event_register_next(server: xapisim.SimServer) -> None:
    s = login(server)
    s.xenapi.event.register(["vm"])
    vm = s.xenapi.VM.get_by_name_label("vm-03")[0]
    s.xenapi.VM.set_name_description(vm, "next")
    evs = s.xenapi.event.next()
    assert any(e["ref"] == vm and e["class"] == "vm" for e in evs)
    s.xenapi.session.logout()


# --------------------------------------------------------------------------- tables


def test_tables_are_referenced() -> None:
    for name, spec in CLASSES.items():
        assert spec.ref.startswith("ocaml/"), name
        assert spec.writable <= set(spec.fields), name
    for name, m in MESSAGES.items():
        assert m.ref.startswith("ocaml/"), name
        assert m.op is None or m.op in ALLOWED_POWER_STATES, name
    for name, e in ERRORS.items():
        assert e.ref.startswith("ocaml/") and name.isupper(), name


def test_command_line_ready_line() -> None:
    import json
    import os

    env = dict(os.environ, XAPISIM_PASSWORD="clipw")
    proc = subprocess.Popen(
        [sys.executable, "-m", "xapisim", "--port", "0", "--hosts", "2", "--vms", "1", "--tls"],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["url"].startswith("https://127.0.0.1:") and ready["thumbprint"]
        assert "clipw" not in json.dumps(ready) and os.path.exists(ready["cafile"])
        assert len(ready["hosts"]) == 2
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_harness_start_stop() -> None:
    from tests.hosts.xen import env_lines, running_simulator

    with running_simulator(hosts=2, vms=2, password="harness-pw") as sim:
        assert sim.uri == f"xen://root@127.0.0.1:{sim.port}"
        assert sim.other_uri.endswith(f"/?host={sim.hosts[1]}")
        lines = env_lines(sim)
        assert any(line.startswith("export VMCTL_THUMBPRINT=") for line in lines)

        class Srv:
            url, cafile, username, password = sim.url, sim.cafile, "root", "harness-pw"

        s = login(Srv())  # type: ignore[arg-type]
        assert len(s.xenapi.host.get_all()) == 2
        s.xenapi.session.logout()
    assert sim.process is not None and sim.process.poll() is not None


def test_every_error_the_simulator_raises_is_in_the_tables() -> None:
    import re
    from pathlib import Path

    src = Path(xapisim.__file__).parent
    codes: set[str] = set()
    for f in src.glob("*.py"):
        codes |= set(re.findall(r'Fault\(\s*"([A-Z_]+)"', f.read_text()))
    assert codes and codes <= set(ERRORS), codes - set(ERRORS)


def test_concurrent_operations_and_current_operations(server: xapisim.SimServer, x: Any) -> None:
    vm = fresh_vm(x, "busy")
    server.cfg.op_delay = 0.6
    try:
        task = x.Async.VM.start(vm, False, False)
        ops = wait_for(lambda: x.VM.get_current_operations(vm))
        assert ops == {task: "start"}
        assert "start" not in x.VM.get_allowed_operations(vm)
        d = failure(x.VM.clone, vm, "while-busy")
        assert d == ["OTHER_OPERATION_IN_PROGRESS", "VM", vm, "start", task]
        assert wait_task(x, task)["status"] == "success"
    finally:
        server.cfg.op_delay = 0.02
    assert x.VM.get_current_operations(vm) == {}
    x.VM.hard_shutdown(vm)
    x.VM.destroy(vm)


def test_snapshot_ignore_vdis_and_cd_rules(x: Any) -> None:
    vm = fresh_vm(x, "ignore")
    disks = [x.VBD.get_VDI(b) for b in x.VM.get_VBDs(vm) if x.VBD.get_type(b) == "Disk"]
    snap = x.VM.snapshot(vm, "no-disks", disks)
    types = [x.VBD.get_type(b) for b in x.VM.get_VBDs(snap)]
    assert "Disk" not in types
    info = x.VM.get_snapshot_info(snap)
    assert info == {"disk-snapshot-type": "crash_consistent", "power-state-at-snapshot": "Halted"}
    x.VM.start(vm, False, False)
    wait_guest(x, vm)  # with PV drivers, the HVM CD rule is the one that refuses
    cd = next(b for b in x.VM.get_VBDs(vm) if x.VBD.get_type(b) == "CD")
    assert failure(x.VBD.unplug, cd)[0] == "OPERATION_NOT_ALLOWED"
    x.VM.hard_shutdown(vm)
    x.VM.destroy(snap)
    x.VM.destroy(vm)


@given(ops=st.lists(st.sampled_from(LIFECYCLE[:11]), min_size=1, max_size=12))
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
def test_random_lifecycle_sequences_keep_invariants(x: Any, ops: list[str]) -> None:
    """Any sequence of lifecycle calls: each works iff the table allows it, and the
    record stays consistent (resident_on, domid, host.resident_VMs, allowed_operations)."""
    hs = hosts(x)
    vm = fresh_vm(x, "hypo")
    try:
        for op in ops:
            state = x.VM.get_power_state(vm)
            if state == "Running":
                # clean_shutdown/clean_reboot/suspend need the guest agent
                # (check_op_for_feature).
                wait_for(lambda: x.VM.get_guest_metrics(vm) != NULL)
            args: list[Any] = [vm]
            if op in ("start", "resume"):
                args += [False, False]
            elif op in ("start_on", "resume_on"):
                args += [hs[0], False, False]
            if state in ALLOWED_POWER_STATES[op]:
                getattr(x.VM, op)(*args)
                assert x.VM.get_power_state(vm) == RESULT_STATE[op]
            else:
                assert failure(getattr(x.VM, op), *args)[0] == "VM_BAD_POWER_STATE"
            rec = x.VM.get_record(vm)
            live = rec["power_state"] in ("Running", "Paused")
            assert (rec["resident_on"] in hs) == live
            assert (rec["domid"] != "-1") == live
            assert any(vm in x.host.get_resident_VMs(h) for h in hs) == live
            for o in LIFECYCLE[:11]:
                needs_agent = o in GUEST_FEATURE_OPS or o in SUSPEND_FEATURE_OPS
                agent = not needs_agent or rec["guest_metrics"] != NULL
                assert (o in rec["allowed_operations"]) == (
                    rec["power_state"] in ALLOWED_POWER_STATES[o] and agent
                ), (o, rec["power_state"], rec["guest_metrics"])
    finally:
        if x.VM.get_power_state(vm) != "Halted":
            x.VM.hard_shutdown(vm)
        x.VM.destroy(vm)


def test_get_all_records_where_servertime_and_async_forms(x: Any) -> None:
    recs = x.VM.get_all_records_where('field "is_a_template" = "false" and not '
                                      'field "is_control_domain" = "true"')  # fmt: skip
    names = {r["name_label"] for r in recs.values()}
    assert {"vm-01", "vm-02"} <= names and not any(n.startswith("Control") for n in names)
    assert x.VM.get_all_records_where("true").keys() == x.VM.get_all_records().keys()
    assert failure(x.VM.get_all_records_where, 'field "x" ==')[0] == "INVALID_VALUE"
    h = hosts(x)[0]
    t = x.host.get_servertime(h)
    check_wire(t, "datetime", "host.get_servertime")
    assert failure(x.Async.VM.get_record, NULL) == [
        "MESSAGE_METHOD_UNKNOWN", "Async.VM.get_record"]  # fmt: skip
    assert failure(x.Async.session.get_uuid, NULL)[0] == "MESSAGE_METHOD_UNKNOWN"


def test_certificate(server: xapisim.SimServer) -> None:
    import hashlib
    import ssl

    assert server.cafile is not None and server.url.startswith("https://127.0.0.1:")
    info = ssl._ssl._test_decode_cert(server.cafile)  # type: ignore[attr-defined]
    assert ("IP Address", "127.0.0.1") in info["subjectAltName"]
    assert ("DNS", "localhost") in info["subjectAltName"]
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", server.cafile],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "2048 bit" in out
    with open(server.cafile) as f:
        der = ssl.PEM_cert_to_DER_cert(f.read())
    assert server.thumbprint == ":".join(
        f"{b:02X}" for b in hashlib.sha256(der).digest()
    )  # fmt: skip
    p = raw(server)
    r = p.session.login_with_password("root")
    assert r["ErrorDescription"] == [
        "MESSAGE_PARAMETER_COUNT_MISMATCH", "session.login_with_password", "2", "1"]  # fmt: skip


def test_host_memory_accounting() -> None:
    with xapisim.serve(hosts=2, vms=1, password="pw", tls=False, host_memory_gib=8,
                       op_delay=0.0) as srv:  # fmt: skip
        x = login(srv).xenapi
        hs = hosts(x)
        m = x.host.get_metrics(hs[0])
        free0 = int(x.host_metrics.get_memory_free(m))
        assert free0 < 8 * 1024**3  # dom0 takes its share
        vm = x.VM.get_by_name_label("vm-01")[0]
        x.VM.start_on(vm, hs[0], False, False)
        need = int(x.VM.get_memory_dynamic_max(vm)) + int(x.VM.get_memory_overhead(vm))
        assert int(x.host_metrics.get_memory_free(m)) == free0 - need
        x.VM.hard_shutdown(vm)
        big = str(16 * 1024**3)
        x.VM.set_memory_limits(vm, big, big, big, big)
        d = failure(x.VM.start_on, vm, hs[0], False, False)
        assert d[0] == "HOST_NOT_ENOUGH_FREE_MEMORY" and int(d[1]) > int(d[2])
        x.session.logout()
