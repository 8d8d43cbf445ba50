"""Fidelity tests: which guests can be asked to shut down or reboot cleanly, and the
snapshot parent chain, through the real XenAPI SDK.

xen-api references (commit in ``xapisim.tables``):

- ``ocaml/xapi/xapi_vm_lifecycle.ml: check_op_for_feature`` (strict, as used by
  ``update_allowed_operations``, ``VM.assert_operation_valid`` and ``with_vm_operation``):
  a live guest that has not booted PV, has no PV drivers and does not advertise
  ``feature-shutdown`` (or ``feature-poweroff`` / ``feature-reboot``) gets
  ``VM_LACKS_FEATURE [vm]`` for clean_shutdown / clean_reboot.
- ``ocaml/xapi/xapi_vm_clone.ml: copy_vm_record`` ("compute the parent VM"),
  ``ocaml/xapi/xapi_vm_snapshot.ml: revert / update_parent``,
  ``ocaml/xapi/xapi_vm.ml: destroy`` ("rebase the children").
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from xapisim_helpers import NULL, clone_of_vm01, discard, failure, new_vm, wait_for

import xapisim
from xapisim.tables import ERRORS, GUEST_FEATURE_OPS, PV_DOMAIN_TYPES

pytestmark = pytest.mark.xen

PASSWORD = secrets.token_hex(8)
GUEST_DELAY = 0.4


@pytest.fixture(scope="module")
def server() -> Iterator[xapisim.SimServer]:
    with xapisim.serve(
        hosts=2, vms=2, password=PASSWORD, tls=False, op_delay=0.01, guest_delay=GUEST_DELAY
    ) as srv:
        yield srv


def assert_lacks_feature(x: Any, vm: str) -> None:
    """The clean operations fail as xapi fails them; the VM keeps running."""
    rec = x.VM.get_record(vm)
    assert rec["power_state"] == "Running"
    for op in GUEST_FEATURE_OPS:
        assert op not in rec["allowed_operations"], op
        assert failure(x.VM.assert_operation_valid, vm, op) == ["VM_LACKS_FEATURE", vm]
        assert failure(getattr(x.VM, op), vm) == ["VM_LACKS_FEATURE", vm]
    assert {"hard_shutdown", "hard_reboot"} <= set(rec["allowed_operations"])
    assert x.VM.get_power_state(vm) == "Running"


# --------------------------------------------------------------------------- guest features


def test_tables_record_the_feature_rule() -> None:
    assert ERRORS["VM_LACKS_FEATURE"].params == ["vm"]
    assert GUEST_FEATURE_OPS == {
        "clean_shutdown": ("feature-shutdown", "feature-poweroff"),
        "clean_reboot": ("feature-shutdown", "feature-reboot"),
    }
    assert {"pv", "pv_in_pvh", "pvh"} == PV_DOMAIN_TYPES


def test_hvm_vm_with_a_blank_disk_has_no_agent(x: Any) -> None:
    vm = new_vm(x, "noos-hvm")
    x.VM.start(vm, False, False)
    assert x.VM_metrics.get_current_domain_type(x.VM.get_metrics(vm)) == "hvm"
    time.sleep(GUEST_DELAY * 2.5)
    assert x.VM.get_guest_metrics(vm) == NULL
    assert_lacks_feature(x, vm)
    # Through Async: the task fails with the same error description.
    task = x.Async.VM.clean_shutdown(vm)
    rec = wait_for(lambda: (r := x.task.get_record(task))["status"] != "pending" and r)
    assert rec["status"] == "failure" and rec["error_info"] == ["VM_LACKS_FEATURE", vm]
    # The hard operations always work.
    x.VM.hard_reboot(vm)
    assert x.VM.get_power_state(vm) == "Running"
    time.sleep(GUEST_DELAY * 2.5)
    assert_lacks_feature(x, vm)
    x.VM.pause(vm)
    x.VM.unpause(vm)
    time.sleep(GUEST_DELAY * 2.5)
    assert x.VM.get_guest_metrics(vm) == NULL
    x.VM.hard_shutdown(vm)
    assert x.VM.get_power_state(vm) == "Halted"
    discard(x, vm)


def test_hvm_vm_booting_the_tools_iso_has_no_agent(x: Any) -> None:
    vm = new_vm(x, "noos-iso", disk=False, iso="guest-tools.iso")
    x.VM.start(vm, False, False)
    time.sleep(GUEST_DELAY * 2.5)
    assert x.VM.get_guest_metrics(vm) == NULL
    assert_lacks_feature(x, vm)
    discard(x, vm)


def test_pv_kernel_boot_has_implicit_support_and_an_agent(x: Any) -> None:
    vm = new_vm(x, "pv-kernel", kernel="/boot/guest/vmlinuz")
    assert x.VM.get_domain_type(vm) == "pv"
    x.VM.start(vm, False, False)
    assert x.VM_metrics.get_current_domain_type(x.VM.get_metrics(vm)) == "pv"
    # has_definitely_booted_pv: allowed at once, before the guest agent reports.
    ops = x.VM.get_allowed_operations(vm)
    assert "clean_shutdown" in ops and "clean_reboot" in ops
    x.VM.assert_operation_valid(vm, "clean_shutdown")
    gm = wait_for(lambda: (g := x.VM.get_guest_metrics(vm)) != NULL and g)
    rec = x.VM_guest_metrics.get_record(gm)
    assert rec["networks"]["0/ip"].count(".") == 3 and "0/ipv6/0" in rec["networks"]
    assert {"major", "minor"} <= set(rec["PV_drivers_version"])
    assert rec["other"]["feature-poweroff"] == rec["other"]["feature-reboot"] == "1"
    x.VM.clean_reboot(vm)
    assert x.VM.get_power_state(vm) == "Running"
    x.VM.clean_shutdown(vm)
    assert x.VM.get_power_state(vm) == "Halted"
    discard(x, vm)


def test_hvm_guest_with_an_os_is_asked_once_its_agent_reports(x: Any) -> None:
    vm = clone_of_vm01(x, "hvm-os")
    x.VM.start(vm, False, False)
    # Before the agent reports it is an HVM guest without PV drivers or features.
    rec = x.VM.get_record(vm)
    if rec["guest_metrics"] == NULL:  # (GUEST_DELAY leaves ample time to see it)
        assert "clean_shutdown" not in rec["allowed_operations"]
        assert failure(x.VM.assert_operation_valid, vm, "clean_shutdown")[0] in ("VM_LACKS_FEATURE")
    gm = wait_for(lambda: (g := x.VM.get_guest_metrics(vm)) != NULL and g)
    assert x.VM_guest_metrics.get_PV_drivers_detected(gm) is True
    ops = x.VM.get_allowed_operations(vm)
    assert "clean_shutdown" in ops and "clean_reboot" in ops
    x.VM.assert_operation_valid(vm, "clean_reboot")
    x.VM.clean_reboot(vm)
    assert x.VM.get_guest_metrics(vm) == NULL  # the rebooted guest reports again later
    wait_for(lambda: x.VM.get_guest_metrics(vm) != NULL)
    x.VM.clean_shutdown(vm)
    assert x.VM.get_power_state(vm) == "Halted"
    x.VM.destroy(vm)


def test_hvm_boot_order_decides_what_boots(x: Any) -> None:
    vm = clone_of_vm01(x, "hvm-cd-only")
    x.VM.set_HVM_boot_params(vm, {"order": "d"})  # the CD drive (empty) only
    x.VM.start(vm, False, False)
    time.sleep(GUEST_DELAY * 2.5)
    assert x.VM.get_guest_metrics(vm) == NULL
    assert_lacks_feature(x, vm)
    x.VM.hard_shutdown(vm)
    x.VM.destroy(vm)


def test_vms_provisioned_from_default_templates_have_blank_disks(x: Any) -> None:
    for label, domain_type in (("Other install media", "hvm"), ("Debian Bookworm 12", "pv")):
        t = x.VM.get_by_name_label(label)[0]
        vm = x.VM.clone(t, f"from {label}")
        x.VM.provision(vm)
        x.VM.set_is_a_template(vm, False)
        x.VM.start(vm, False, False)
        assert x.VM_metrics.get_current_domain_type(x.VM.get_metrics(vm)) == domain_type
        time.sleep(GUEST_DELAY * 2.5)
        assert x.VM.get_guest_metrics(vm) == NULL
        if domain_type == "hvm":
            assert_lacks_feature(x, vm)
        else:  # a PV domain: implicit support (has_definitely_booted_pv), but no agent
            assert "clean_shutdown" in x.VM.get_allowed_operations(vm)
        discard(x, vm)


def test_snapshots_and_clones_of_an_os_disk_keep_the_os(x: Any) -> None:
    vm = clone_of_vm01(x, "os-lineage")
    snap = x.VM.snapshot(vm, "os-snap")
    c = x.VM.clone(snap, "from-snap")  # a template, as the snapshot is one
    x.VM.set_is_a_template(c, False)
    x.VM.start(c, False, False)
    wait_for(lambda: x.VM.get_guest_metrics(c) != NULL)
    x.VM.clean_shutdown(c)
    for v in (c, snap):
        discard(x, v)
    x.VM.destroy(vm)


# --------------------------------------------------------------------------- parent chain


def parents(x: Any, *vms: str) -> list[str]:
    return [x.VM.get_parent(v) for v in vms]


def children(x: Any, vm: str) -> set[str]:
    return set(x.VM.get_children(vm))


def test_snapshots_form_a_chain(x: Any) -> None:
    vm = clone_of_vm01(x, "chain")
    assert x.VM.get_parent(vm) == NULL  # CA-52668: a clone is a top-level VM
    a = x.VM.snapshot(vm, "a")
    assert parents(x, a, vm) == [NULL, a]
    assert children(x, a) == {vm}
    b = x.VM.snapshot(vm, "b")
    assert parents(x, a, b, vm) == [NULL, a, b]
    assert children(x, a) == {b} and children(x, b) == {vm}
    x.VM.start(vm, False, False)
    wait_for(lambda: x.VM.get_guest_metrics(vm) != NULL)  # HVM: checkpoint needs the agent
    c = x.VM.checkpoint(vm, "c")
    assert parents(x, c, vm) == [b, c]
    assert children(x, b) == {c} and children(x, c) == {vm}
    x.VM.hard_shutdown(vm)
    # Clones and copies, of the VM or of a snapshot, are top-level: parent null, and
    # they are nobody's child.
    k1 = x.VM.clone(vm, "k1")
    k2 = x.VM.clone(b, "k2")
    k3 = x.VM.copy(a, "k3", NULL)
    assert parents(x, k1, k2, k3) == [NULL, NULL, NULL]
    assert children(x, vm) == set() and children(x, b) == {c} and children(x, a) == {b}
    assert x.VM.get_parent(vm) == c  # cloning does not move the VM
    for k in (k1, k2, k3):
        discard(x, k)
    for s in (c, b, a):
        discard(x, s)
    discard(x, vm)


def test_revert_makes_the_snapshot_the_parent(x: Any) -> None:
    vm = clone_of_vm01(x, "reverter")
    a = x.VM.snapshot(vm, "a")
    b = x.VM.snapshot(vm, "b")
    x.VM.revert(a)
    assert parents(x, vm, b, a) == [a, a, NULL]
    assert children(x, a) == {b, vm} and children(x, b) == set()
    # A snapshot taken now branches off a: the tree has two children under a.
    c = x.VM.snapshot(vm, "c")
    assert parents(x, c, vm) == [a, c]
    assert children(x, a) == {b, c}
    for s in (c, b, a):
        discard(x, s)
    discard(x, vm)


def test_destroying_a_snapshot_rebases_its_children(x: Any) -> None:
    vm = clone_of_vm01(x, "rebase")
    a = x.VM.snapshot(vm, "a")
    b = x.VM.snapshot(vm, "b")
    c = x.VM.snapshot(vm, "c")
    assert parents(x, a, b, c, vm) == [NULL, a, b, c]
    x.VM.destroy(b)  # the middle of the chain: c takes b's parent
    assert parents(x, a, c, vm) == [NULL, a, c]
    assert children(x, a) == {c}
    x.VM.destroy(c)  # the VM's parent: the VM takes c's parent
    assert x.VM.get_parent(vm) == a and children(x, a) == {vm}
    x.VM.destroy(a)  # the root: the VM is top-level again
    assert x.VM.get_parent(vm) == NULL
    assert x.VM.get_snapshots(vm) == []
    discard(x, vm)


def test_destroying_a_vm_rebases_its_snapshots(x: Any) -> None:
    """xapi_vm.ml destroy rebases the children of any VM, snapshots included: a snapshot
    whose child was the destroyed VM keeps its own parent; the VM's own parent loses it."""
    vm = clone_of_vm01(x, "doomed")
    a = x.VM.snapshot(vm, "a")
    b = x.VM.snapshot(vm, "b")
    discard(x, vm)
    assert parents(x, a, b) == [NULL, a]
    assert children(x, b) == set() and children(x, a) == {b}
    for s in (b, a):
        discard(x, s)
