from __future__ import annotations

import pytest

import vmctl
from vmctl import Capability, PowerState
from vmctl_conformance import clause, requires
from vmctl_conformance._kit import Kit

S = PowerState


def _other(kit: Kit) -> vmctl.Hypervisor:
    if kit.other is None:
        pytest.skip("no second host given (--vmctl-other-uri / VMCTL_OTHER_URI)")
    return kit.other


@clause("MIG-LIVE-1")
@requires(Capability.MIGRATE_LIVE)
def test_live_migration(kit: Kit) -> None:
    other = _other(kit)
    vm = kit.vm("mig-live", state=S.RUNNING, os=kit.guest)
    moved = vm.migrate(other, timeout=kit.timeout)
    assert moved.uuid == vm.uuid
    assert moved.info().state is S.RUNNING
    kit.settled(moved, S.RUNNING, "migrate")
    assert vm.uuid in {i.uuid for i in other.list_vms()}
    assert vm.uuid not in {i.uuid for i in kit.hv.list_vms()}


@clause("MIG-COLD-1")
@requires(Capability.MIGRATE_COLD)
def test_cold_migration(kit: Kit) -> None:
    other = _other(kit)
    vm = kit.vm("mig-cold")
    moved = vm.migrate(other, timeout=kit.timeout)
    assert moved.uuid == vm.uuid
    assert moved.info().state is S.STOPPED
    kit.settled(moved, S.STOPPED, "migrate")
    assert vm.uuid not in {i.uuid for i in kit.hv.list_vms()}
