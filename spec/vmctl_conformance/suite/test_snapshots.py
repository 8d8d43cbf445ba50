from __future__ import annotations

import pytest

import vmctl
from vmctl import Capability, PowerState
from vmctl_conformance import clause, requires
from vmctl_conformance._kit import Kit

S = PowerState


@clause("SNAP-CREATE-1")
@requires(Capability.SNAPSHOT)
def test_snapshot_tree(kit: Kit) -> None:
    vm = kit.vm("snap")
    first = vm.snapshot("first")
    second = vm.snapshot("second", description="after first")
    names = [s.name for s in vm.snapshots()]
    assert set(names) == {"first", "second"}
    (root,) = vm.snapshot_tree()
    assert root.snapshot.id == first.id
    assert [c.snapshot.id for c in root.children] == [second.id]


@clause("SNAP-REVERT-1")
@requires(Capability.SNAPSHOT, Capability.SET_VCPUS)
def test_revert_restores_config(kit: Kit) -> None:
    vm = kit.vm("revert")
    vm.snapshot("one-vcpu")
    vm.reconfigure(vcpus=2)
    assert vm.info().vcpus == 2
    info = vm.revert("one-vcpu", timeout=kit.timeout)
    assert info.state is S.STOPPED
    kit.settled(vm, S.STOPPED, "revert")
    assert vm.info().vcpus == 1


@clause("SNAP-DELETE-1")
@requires(Capability.SNAPSHOT)
def test_delete_snapshot(kit: Kit) -> None:
    vm = kit.vm("snap-del")
    vm.snapshot("a")
    vm.snapshot("b")
    vm.snapshot("c")
    vm.delete_snapshot("b")
    assert sorted(s.name for s in vm.snapshots()) == ["a", "c"]
    assert vm.info().state is S.STOPPED


@clause("SNAP-DUPLICATE-1")
@requires(Capability.SNAPSHOT)
def test_duplicate_snapshot_name(kit: Kit) -> None:
    vm = kit.vm("snap-dup")
    vm.snapshot("same")
    with pytest.raises(vmctl.AlreadyExists):
        vm.snapshot("same")
    assert [s.name for s in vm.snapshots()] == ["same"]


@clause("SNAP-MEMORY-1")
@requires(Capability.SNAPSHOT, Capability.SNAPSHOT_MEMORY)
def test_memory_snapshot_reverts_running(kit: Kit) -> None:
    vm = kit.vm("snap-mem", state=S.RUNNING, os=kit.guest)
    snap = vm.snapshot("live", memory=True)
    assert snap.with_memory
    vm.power_off(timeout=kit.timeout)
    info = vm.revert(snap, timeout=kit.timeout)
    assert info.state is S.RUNNING
    kit.settled(vm, S.RUNNING, "revert")
