from __future__ import annotations

import pytest

import vmctl
from vmctl import Capability, PowerState, Resources
from vmctl_conformance import clause, requires
from vmctl_conformance._kit import Kit

S = PowerState


@clause("RECONF-VCPUS-1")
@requires(Capability.SET_VCPUS)
def test_cold_vcpus(kit: Kit) -> None:
    vm = kit.vm("vcpus")
    assert vm.reconfigure(vcpus=2).vcpus == 2
    assert vm.info().vcpus == 2


@clause("RECONF-MEMORY-1")
@requires(Capability.SET_MEMORY)
def test_cold_memory(kit: Kit) -> None:
    vm = kit.vm("memory")
    target = vm.config().memory_mib * 2
    assert vm.reconfigure(memory_mib=target).memory_mib == target
    assert vm.info().memory_mib == target


@clause("RECONF-HOT-VCPUS-1")
@requires(Capability.HOT_VCPUS)
def test_hot_vcpus(kit: Kit) -> None:
    vm = kit.vm("hot-vcpus", state=S.RUNNING)
    vm.reconfigure(vcpus=2)
    info = vm.info()
    assert info.vcpus == 2
    assert info.state is S.RUNNING
    kit.settled(vm, S.RUNNING, "reconfigure(vcpus=2)")


@clause("RECONF-HOT-MEMORY-1")
@requires(Capability.HOT_MEMORY)
def test_hot_memory(kit: Kit) -> None:
    vm = kit.vm("hot-mem", state=S.RUNNING)
    target = vm.config().memory_mib // 2
    vm.reconfigure(memory_mib=target)
    info = vm.info()
    assert info.memory_mib == target
    assert info.state is S.RUNNING
    kit.settled(vm, S.RUNNING, "reconfigure(memory_mib=...)")


def _roughly(actual: int | None, wanted: int, slack: float = 0.05) -> bool:
    return actual is not None and abs(actual - wanted) <= max(1, wanted * slack)


@clause("RES-CPU-SHARES-1")
@requires(Capability.CPU_SHARES)
def test_cpu_shares(kit: Kit) -> None:
    vm = kit.vm("cpu-shares")
    assert vm.set_resources(Resources(cpu_shares=2048)).resources.cpu_shares == 2048


@clause("RES-CPU-RESERVATION-1")
@requires(Capability.CPU_RESERVATION)
def test_cpu_reservation(kit: Kit) -> None:
    vm = kit.vm("cpu-res")
    got = vm.set_resources(Resources(cpu_reservation_percent=20)).resources
    assert _roughly(got.cpu_reservation_percent, 20), got


@clause("RES-CPU-LIMIT-1")
@requires(Capability.CPU_LIMIT)
def test_cpu_limit(kit: Kit) -> None:
    vm = kit.vm("cpu-limit")
    got = vm.set_resources(Resources(cpu_limit_percent=50)).resources
    assert _roughly(got.cpu_limit_percent, 50), got


@clause("RES-MEMORY-SHARES-1")
@requires(Capability.MEMORY_SHARES)
def test_memory_shares(kit: Kit) -> None:
    vm = kit.vm("mem-shares")
    assert vm.set_resources(Resources(memory_shares=3000)).resources.memory_shares == 3000


@clause("RES-MEMORY-RESERVATION-1")
@requires(Capability.MEMORY_RESERVATION)
def test_memory_reservation(kit: Kit) -> None:
    vm = kit.vm("mem-res")
    want = vm.config().memory_mib // 2
    got = vm.set_resources(Resources(memory_reservation_mib=want)).resources
    assert _roughly(got.memory_reservation_mib, want), got


@clause("RES-MEMORY-LIMIT-1")
@requires(Capability.MEMORY_LIMIT)
def test_memory_limit(kit: Kit) -> None:
    vm = kit.vm("mem-limit")
    want = vm.config().memory_mib * 2
    got = vm.set_resources(Resources(memory_limit_mib=want)).resources
    assert _roughly(got.memory_limit_mib, want), got


@clause("RES-VALID-1")
def test_contradictory_controls_refused(kit: Kit) -> None:
    vm = kit.vm("res-valid")
    before = vm.config()
    with pytest.raises(vmctl.ValidationError):
        Resources(memory_reservation_mib=512, memory_limit_mib=256)
    if kit.has(Capability.MEMORY_LIMIT):
        with pytest.raises(vmctl.ValidationError):
            vm.set_resources(Resources(memory_limit_mib=max(16, before.memory_mib // 2)))
    if kit.has(Capability.MEMORY_RESERVATION):
        with pytest.raises(vmctl.ValidationError):
            vm.set_resources(Resources(memory_reservation_mib=before.memory_mib * 2))
    assert vm.config() == before
