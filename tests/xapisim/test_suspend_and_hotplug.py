"""Fidelity tests: which live guests can be suspended, checkpointed and migrated, and which
take VBD/VIF hot-plug, through the real XenAPI SDK.

xen-api references (commit in ``xapisim.tables``):

- ``ocaml/xapi/xapi_vm_lifecycle.ml: check_op_for_feature``, first branch: for a live
  (Running or Paused) VM, ``suspend`` / ``checkpoint`` / ``pool_migrate`` give
  ``VM_NON_SUSPENDABLE [vm, reason]`` when the guest metrics' ``other`` holds
  ``data-cant-suspend-reason`` (whatever ``strict``, even for PV guests or with PV drivers),
  else ``VM_LACKS_FEATURE [vm]`` when ``strict`` and the guest has neither booted PV, nor PV
  drivers, nor ``feature-suspend`` = "1". ``update_allowed_operations`` and
  ``VM.assert_operation_valid`` are strict; ``message_forwarding.ml``: ``VM.suspend`` and
  ``VM.checkpoint`` are strict (``with_vm_operation``), ``VM.pool_migrate`` passes
  ``~strict:(not force)`` with ``force = bool_of_string options["force"]``.
- ``ocaml/xapi/xapi_guest_agent.ml: get_initial_guest_metrics``: ``other`` has one key per
  ``control/*`` xenstore key; ``data/cant_suspend_reason`` turns ``control/feature-suspend``
  into ``data-cant-suspend-reason``.
- ``ocaml/xapi/xapi_vbd_helpers.ml`` / ``xapi_vif_helpers.ml: valid_operations``: plug and
  unplug in a running HVM guest need PV drivers (``VM_MISSING_PV_DRIVERS [vm]``, from
  ``xapi_pv_driver_version.ml: make_error_opt``) unless ``can_use_hotplug_vbd/vif`` says
  ``yes`` (``no``: ``OPERATION_NOT_ALLOWED``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from xapisim_helpers import (
    NULL,
    clone_of_vm01,
    discard,
    failure,
    new_vm,
    vbd_record,
    wait_for,
)

import xapisim
from xapisim.tables import (
    CANT_SUSPEND_KEY,
    ERRORS,
    GUEST_CANT_SUSPEND_XS,
    GUEST_CONTROL_KEYS,
    HOTPLUG_OPS,
    HOTPLUG_REFUSED,
    MIGRATE_FORCE_KEY,
    MIGRATE_FORCE_TRUE,
    SUSPEND_FEATURE,
    SUSPEND_FEATURE_OPS,
)

pytestmark = pytest.mark.xen

PASSWORD = secrets.token_hex(8)
GUEST_DELAY = 0.3
MiB = 1024**2
SUSPEND_OPS = sorted(SUSPEND_FEATURE_OPS)


@pytest.fixture(scope="module")
def server() -> Iterator[xapisim.SimServer]:
    with xapisim.serve(
        hosts=2, vms=1, password=PASSWORD, tls=False, op_delay=0.01, guest_delay=GUEST_DELAY
    ) as srv:
        yield srv


def other_host(x: Any, vm: str) -> str:
    here = x.VM.get_resident_on(vm)
    return str(next(h for h in x.host.get_all() if h != here))


def call(x: Any, op: str, vm: str, options: dict[str, str] | None = None) -> list[Any]:
    """The arguments of a suspend-like message."""
    if op == "suspend":
        return [x.VM.suspend, vm]
    if op == "checkpoint":
        return [x.VM.checkpoint, vm, f"cp-{secrets.token_hex(3)}"]
    return [x.VM.pool_migrate, vm, other_host(x, vm), options or {}]


def assert_refused(x: Any, vm: str, expected: list[str]) -> None:
    """allowed_operations, assert_operation_valid and the messages agree; the VM stays."""
    state = x.VM.get_power_state(vm)
    host = x.VM.get_resident_on(vm)
    ops = x.VM.get_allowed_operations(vm)
    for op in SUSPEND_OPS:
        assert op not in ops, op
        assert failure(x.VM.assert_operation_valid, vm, op) == expected, op
        fn, *args = call(x, op, vm)
        assert failure(fn, *args) == expected, op
    assert x.VM.get_power_state(vm) == state and x.VM.get_resident_on(vm) == host
    assert x.VM.get_snapshots(vm) == []


# --------------------------------------------------------------------------- tables


def test_tables_record_the_rules() -> None:
    assert {"suspend", "checkpoint", "pool_migrate"} == SUSPEND_FEATURE_OPS
    assert SUSPEND_FEATURE == "feature-suspend"
    assert CANT_SUSPEND_KEY == "data-cant-suspend-reason"
    assert GUEST_CANT_SUSPEND_XS == "data/cant_suspend_reason"
    assert (MIGRATE_FORCE_KEY, MIGRATE_FORCE_TRUE) == ("force", "true")
    assert ERRORS["VM_LACKS_FEATURE"].params == ["vm"]
    assert ERRORS["VM_NON_SUSPENDABLE"].params == ["vm", "reason"]
    assert ERRORS["VM_MISSING_PV_DRIVERS"].params == ["vm"]
    assert GUEST_CONTROL_KEYS["feature-suspend"] == "1"
    assert {
        "VBD": {"plug", "unplug", "unplug_force"},
        "VIF": {"plug", "unplug"},
    } == HOTPLUG_OPS
    assert HOTPLUG_REFUSED["VBD"] == "VM states it does not support VBD hotplug."


# --------------------------------------------------------------------------- suspend-like


def test_hvm_guest_without_drivers_cannot_suspend_checkpoint_or_migrate(x: Any) -> None:
    vm = new_vm(x, "noos-hvm")
    x.VM.start(vm, False, False)
    time.sleep(GUEST_DELAY * 2.5)
    assert x.VM.get_guest_metrics(vm) == NULL
    assert_refused(x, vm, ["VM_LACKS_FEATURE", vm])
    # Async: the task fails with the same description.
    task = x.Async.VM.suspend(vm)
    rec = wait_for(lambda: (r := x.task.get_record(task))["status"] != "pending" and r)
    assert rec["status"] == "failure" and rec["error_info"] == ["VM_LACKS_FEATURE", vm]
    # A disk-only snapshot needs nothing from the guest.
    assert "snapshot" in x.VM.get_allowed_operations(vm)
    snap = x.VM.snapshot(vm, "disk-only")
    # pool_migrate: only options force = "true" (OCaml bool_of_string) skip the check.
    for options in ({}, {"live": "true"}, {"force": "True"}, {"force": "1"}, {"force": "x"}):
        fn, *args = call(x, "pool_migrate", vm, options)
        assert failure(fn, *args) == ["VM_LACKS_FEATURE", vm], options
    target = other_host(x, vm)
    x.VM.pool_migrate(vm, target, {"live": "true", "force": "true"})
    assert x.VM.get_resident_on(vm) == target and x.VM.get_power_state(vm) == "Running"
    assert "pool_migrate" not in x.VM.get_allowed_operations(vm)  # still strict
    # Paused is live too.
    x.VM.pause(vm)
    assert "checkpoint" not in x.VM.get_allowed_operations(vm)
    assert failure(x.VM.checkpoint, vm, "p") == ["VM_LACKS_FEATURE", vm]
    x.VM.hard_shutdown(vm)
    x.VM.destroy(snap)
    discard(x, vm)


def test_hvm_guest_with_an_os_suspends_once_its_agent_reports(x: Any) -> None:
    vm = clone_of_vm01(x, "hvm-os")
    x.VM.start(vm, True, False)  # paused: the guest has not run, no agent yet
    assert x.VM.get_guest_metrics(vm) == NULL
    assert failure(x.VM.assert_operation_valid, vm, "checkpoint") == ["VM_LACKS_FEATURE", vm]
    x.VM.unpause(vm)
    gm = wait_for(lambda: (g := x.VM.get_guest_metrics(vm)) != NULL and g)
    rec = x.VM_guest_metrics.get_record(gm)
    # What the agent reports: one key per control/* key (toolstack and guest kernel).
    assert rec["other"] == {**GUEST_CONTROL_KEYS, "has-vendor-device": "0"}
    assert rec["PV_drivers_detected"] is True
    ops = x.VM.get_allowed_operations(vm)
    assert set(SUSPEND_OPS) <= set(ops)
    for op in SUSPEND_OPS:
        x.VM.assert_operation_valid(vm, op)
    x.VM.pool_migrate(vm, other_host(x, vm), {"live": "true"})
    cp = x.VM.checkpoint(vm, "cp")
    assert x.VM.get_power_state(cp) == "Suspended"
    x.VM.suspend(vm)
    assert x.VM.get_power_state(vm) == "Suspended"
    x.VM.resume(vm, False, False)
    wait_for(lambda: x.VM.get_guest_metrics(vm) != NULL)
    x.VM.destroy(cp)
    discard(x, vm)


def test_pv_guests_suspend_without_an_agent(x: Any) -> None:
    """has_definitely_booted_pv: a PV domain is exempt at once, agent or not."""
    vm = new_vm(x, "pv-kernel", kernel="/boot/guest/vmlinuz")
    x.VM.start(vm, False, False)
    assert x.VM_metrics.get_current_domain_type(x.VM.get_metrics(vm)) == "pv"
    assert x.VM.get_guest_metrics(vm) == NULL
    assert set(SUSPEND_OPS) <= set(x.VM.get_allowed_operations(vm))
    for op in SUSPEND_OPS:
        x.VM.assert_operation_valid(vm, op)
    x.VM.pool_migrate(vm, other_host(x, vm), {})
    x.VM.suspend(vm)
    x.VM.resume(vm, False, False)
    discard(x, vm)
    # A PV VM from a default template boots nothing (blank disk) and never reports.
    tpl = x.VM.get_by_name_label("Debian Bookworm 12")[0]
    pv = x.VM.clone(tpl, "pv-blank")
    x.VM.provision(pv)
    x.VM.set_is_a_template(pv, False)
    x.VM.start(pv, False, False)
    assert x.VM_metrics.get_current_domain_type(x.VM.get_metrics(pv)) == "pv"
    time.sleep(GUEST_DELAY * 2.5)
    assert x.VM.get_guest_metrics(pv) == NULL
    assert set(SUSPEND_OPS) <= set(x.VM.get_allowed_operations(pv))
    x.VM.suspend(pv)
    assert x.VM.get_power_state(pv) == "Suspended"
    discard(x, pv)


def test_cant_suspend_reason_gives_vm_non_suspendable(server: xapisim.SimServer, x: Any) -> None:
    vm = clone_of_vm01(x, "uefi")
    x.VM.start(vm, False, False)
    gm = wait_for(lambda: (g := x.VM.get_guest_metrics(vm)) != NULL and g)
    reason = "UEFI variables in use"
    server.db.guest_xenstore_write(vm, GUEST_CANT_SUSPEND_XS, reason)
    other = x.VM_guest_metrics.get_other(gm)
    assert other[CANT_SUSPEND_KEY] == reason and SUSPEND_FEATURE not in other
    expected = ["VM_NON_SUSPENDABLE", vm, reason]
    assert_refused(x, vm, expected)
    # Not skipped by a forced migration (the branch does not depend on strict).
    fn, *args = call(x, "pool_migrate", vm, {"force": "true"})
    assert failure(fn, *args) == expected
    # The other operations are unaffected.
    assert {"clean_shutdown", "snapshot"} <= set(x.VM.get_allowed_operations(vm))
    # Without control/feature-suspend the agent does not report the reason; with PV
    # drivers the guest then suspends (implicit support).
    server.db.guest_xenstore_write(vm, f"control/{SUSPEND_FEATURE}", None)
    other = x.VM_guest_metrics.get_other(gm)
    assert CANT_SUSPEND_KEY not in other and SUSPEND_FEATURE not in other
    assert set(SUSPEND_OPS) <= set(x.VM.get_allowed_operations(vm))
    server.db.guest_xenstore_write(vm, f"control/{SUSPEND_FEATURE}", "1")
    assert "suspend" not in x.VM.get_allowed_operations(vm)
    server.db.guest_xenstore_write(vm, GUEST_CANT_SUSPEND_XS, None)
    assert x.VM_guest_metrics.get_other(gm)[SUSPEND_FEATURE] == "1"
    x.VM.suspend(vm)
    discard(x, vm)


def test_cant_suspend_reason_applies_to_pv_guests(server: xapisim.SimServer, x: Any) -> None:
    vm = new_vm(x, "pv-cant", kernel="/boot/guest/vmlinuz")
    x.VM.start(vm, False, False)
    wait_for(lambda: x.VM.get_guest_metrics(vm) != NULL)
    server.db.guest_xenstore_write(vm, GUEST_CANT_SUSPEND_XS, "no")
    assert_refused(x, vm, ["VM_NON_SUSPENDABLE", vm, "no"])
    discard(x, vm)


def test_hvm_guest_without_pv_drivers_but_feature_suspend(
    server: xapisim.SimServer, x: Any
) -> None:
    """An agent that reports feature-suspend without PV driver versions: allowed; without
    feature-suspend either: VM_LACKS_FEATURE."""
    vm = clone_of_vm01(x, "old-agent")
    x.VM.start(vm, False, False)
    gm = wait_for(lambda: (g := x.VM.get_guest_metrics(vm)) != NULL and g)
    with server.db.lock:
        server.db.set("VM_guest_metrics", gm, PV_drivers_version={})
        server.db.touch("VM", vm)
    assert set(SUSPEND_OPS) <= set(x.VM.get_allowed_operations(vm))
    server.db.guest_xenstore_write(vm, f"control/{SUSPEND_FEATURE}", "0")
    assert_refused(x, vm, ["VM_LACKS_FEATURE", vm])
    discard(x, vm)


# --------------------------------------------------------------------------- hot-plug


def blank_disk(x: Any, vm: str, name: str) -> str:
    sr = x.pool.get_default_SR(x.pool.get_all()[0])
    vdi = x.VDI.create(
        {
            "name_label": name,
            "name_description": "",
            "SR": sr,
            "virtual_size": str(64 * MiB),
            "type": "user",
            "sharable": False,
            "read_only": False,
            "other_config": {},
        }
    )
    return str(x.VBD.create(vbd_record(vm, vdi, "autodetect")))


def new_vif(x: Any, vm: str, device: str) -> str:
    rec = {
        "device": device,
        "network": x.network.get_all()[0],
        "VM": vm,
        "MAC": "",
        "MTU": "1500",
        "other_config": {},
        "qos_algorithm_type": "",
        "qos_algorithm_params": {},
    }
    return str(x.VIF.create(rec))


def test_hotplug_into_an_hvm_guest_needs_pv_drivers(x: Any) -> None:
    vm = new_vm(x, "noos-plug", iso="guest-tools.iso")
    x.VM.start(vm, False, False)
    time.sleep(GUEST_DELAY * 2.5)
    assert x.VM.get_guest_metrics(vm) == NULL
    missing = ["VM_MISSING_PV_DRIVERS", vm]
    vbd = blank_disk(x, vm, "extra")
    assert failure(x.VBD.plug, vbd) == missing
    attached = next(b for b in x.VM.get_VBDs(vm) if x.VBD.get_type(b) == "Disk" and b != vbd)
    assert failure(x.VBD.unplug, attached) == missing
    # The PV-driver check comes before the HVM CD rule.
    cd = next(b for b in x.VM.get_VBDs(vm) if x.VBD.get_type(b) == "CD")
    assert failure(x.VBD.unplug, cd) == missing
    vif = new_vif(x, vm, "1")
    assert failure(x.VIF.plug, vif) == missing
    assert failure(x.VIF.unplug, x.VM.get_VIFs(vm)[0]) == missing
    assert x.VBD.get_currently_attached(vbd) is False
    assert x.VIF.get_currently_attached(vif) is False
    # DEVICE_ALREADY_* come first.
    assert failure(x.VBD.plug, attached) == ["DEVICE_ALREADY_ATTACHED", attached]
    discard(x, vm)


def test_hotplug_with_drivers_pv_or_an_explicit_claim(server: xapisim.SimServer, x: Any) -> None:
    pv = new_vm(x, "pv-plug", kernel="/boot/guest/vmlinuz")
    x.VM.start(pv, False, False)
    vbd = blank_disk(x, pv, "pv-extra")
    x.VBD.plug(vbd)  # PV: no driver check, before any agent
    x.VBD.unplug(vbd)
    discard(x, pv)

    vm = clone_of_vm01(x, "hvm-plug")
    x.VM.start(vm, False, False)
    vbd = blank_disk(x, vm, "hvm-extra")
    assert failure(x.VBD.plug, vbd) == ["VM_MISSING_PV_DRIVERS", vm]  # agent not up yet
    gm = wait_for(lambda: (g := x.VM.get_guest_metrics(vm)) != NULL and g)
    x.VBD.plug(vbd)
    x.VBD.unplug(vbd)
    vif = new_vif(x, vm, "1")
    x.VIF.plug(vif)
    x.VIF.unplug(vif)
    cd = next(b for b in x.VM.get_VBDs(vm) if x.VBD.get_type(b) == "CD")
    assert failure(x.VBD.unplug, cd) == [
        "OPERATION_NOT_ALLOWED",
        "HVM CDROMs cannot be hotplugged/unplugged, only inserted or ejected",
    ]
    db = server.db
    for claim, drivers, detected, expected in (
        ("no", {"major": "9", "minor": "3"}, True, ["OPERATION_NOT_ALLOWED"]),
        ("yes", {}, False, None),
        ("unspecified", {}, True, None),
        ("unspecified", {"major": "9", "minor": "3"}, False, None),
        ("unspecified", {}, False, ["VM_MISSING_PV_DRIVERS", vm]),
    ):
        with db.lock:
            db.set(
                "VM_guest_metrics",
                gm,
                can_use_hotplug_vbd=claim,
                can_use_hotplug_vif=claim,
                PV_drivers_version=drivers,
                PV_drivers_detected=detected,
            )
        for cls, dev in (("VBD", vbd), ("VIF", vif)):
            api = getattr(x, cls)
            if expected is None:
                api.plug(dev)
                api.unplug(dev)
            elif expected[0] == "OPERATION_NOT_ALLOWED":
                assert failure(api.plug, dev) == [expected[0], HOTPLUG_REFUSED[cls]]
            else:
                assert failure(api.plug, dev) == expected
    discard(x, vm)


def test_vbd_not_unpluggable_comes_before_the_power_state(x: Any) -> None:
    vm = new_vm(x, "fixed-disk")
    vdi = x.VDI.create(
        {
            "name_label": "fixed",
            "name_description": "",
            "SR": x.pool.get_default_SR(x.pool.get_all()[0]),
            "virtual_size": str(64 * MiB),
            "type": "user",
            "sharable": False,
            "read_only": False,
            "other_config": {},
        }
    )
    rec = vbd_record(vm, vdi, "autodetect")
    rec["unpluggable"] = False
    vbd = x.VBD.create(rec)
    assert failure(x.VBD.unplug, vbd) == ["VBD_NOT_UNPLUGGABLE", vbd]
    assert failure(x.VBD.plug, vbd) == ["VM_BAD_POWER_STATE", vm, "running", "halted"]
    discard(x, vm)
