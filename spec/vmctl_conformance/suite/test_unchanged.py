"""Nothing else changed: a request that changes one thing leaves the rest of the VM as it was;
a revert restores all of it; CPU amounts are per VM on a VM with several vCPUs."""

from __future__ import annotations

import zlib
from typing import Any

import pytest

from vmctl import VM, Capability, DiskSpec, NicSpec, Resources, VMConfig
from vmctl._capabilities import RESOURCE_CAPABILITIES
from vmctl_conformance import clause, requires
from vmctl_conformance._kit import Kit


def _disks(config: VMConfig) -> list[tuple[Any, ...]]:
    return [(d.id, d.size_mib, d.path) for d in config.disks]


def _nics(config: VMConfig) -> list[tuple[Any, ...]]:
    return [(n.id, n.network, n.mac) for n in config.nics]


def _same_except(before: VMConfig, after: VMConfig, changed: str, *skip: str) -> None:
    """Everything of ``before`` but the fields in ``skip`` is in ``after``."""
    what = f"after {changed}"
    if "vcpus" not in skip:
        assert after.vcpus == before.vcpus, f"vCPUs {what}"
    if "memory" not in skip:
        assert after.memory_mib == before.memory_mib, f"memory {what}"
    if "disks" not in skip:
        assert _disks(after) == _disks(before), f"disks (id, MiB, path) {what}"
    if "nics" not in skip:
        assert _nics(after) == _nics(before), f"NICs (id, network, MAC) {what}"
    if "resources" not in skip:
        assert after.resources == before.resources, f"resource controls {what}"


def _controls(kit: Kit, memory_mib: int) -> list[Resources]:
    """One Resources per resource capability the driver declares, each setting one
    control, in an order where none contradicts an earlier one."""
    values: dict[str, int] = {
        "cpu_shares": 2048,
        "cpu_reservation_percent": 30,
        "cpu_limit_percent": 150,
        "memory_shares": 3000,
        "memory_reservation_mib": memory_mib // 2,
        "memory_limit_mib": memory_mib * 2,
    }
    return [
        Resources(**{field: value})  # type: ignore[arg-type]
        for field, value in values.items()
        if kit.has(Capability(RESOURCE_CAPABILITIES[field]))
    ]


def _roughly(actual: int | None, wanted: int, field: str) -> bool:
    """Within the rounding of a backend's unit: CPU amounts 5 % (MHz), memory 2 %."""
    slack = 0.05 if field.startswith("cpu_") else 0.02
    return actual is not None and abs(actual - wanted) <= max(1, wanted * slack)


def _check_controls(got: Resources, wanted: dict[str, int], when: str) -> None:
    for field, value in wanted.items():
        actual = getattr(got, field)
        assert _roughly(actual, value, field), (
            f"{field} {when}: expected {value}, got {actual} (all controls: {got})"
        )


def _pad(kit: Kit, hint: str, **kw: Any) -> VM:
    """A VM with 2 vCPUs, 2 disks and 2 NICs: something else to keep."""
    return kit.vm(hint, vcpus=2, disks=2, nics=2, **kw)


@clause("RECONF-ONLY-1")
@requires(Capability.SET_VCPUS)
def test_vcpus_and_memory_change_nothing_else(kit: Kit) -> None:
    vm = _pad(kit, "only-reconf")
    wanted: dict[str, int] = {}
    for r in _controls(kit, vm.config().memory_mib):
        if r.memory_reservation_mib is None and r.memory_limit_mib is None:
            vm.set_resources(r)
            wanted.update(r.set_fields())
    before = vm.config()
    after = vm.reconfigure(vcpus=3)
    assert after.vcpus == 3, "vCPUs after reconfigure(vcpus=3)"
    _same_except(before, after, "reconfigure(vcpus=3)", "vcpus")
    _same_except(before, vm.config(), "reconfigure(vcpus=3), read again", "vcpus")
    if kit.has(Capability.SET_MEMORY):
        before = vm.config()
        target = before.memory_mib * 2
        after = vm.reconfigure(memory_mib=target)
        assert after.memory_mib == target, f"memory after reconfigure(memory_mib={target})"
        # The controls set stay; a memory control left at the backend's default may follow
        # the memory (a Xen VM whose memory is pinned reserves all of it).
        after = vm.config()
        _same_except(before, after, f"reconfigure(memory_mib={target})", "memory", "resources")
        _check_controls(after.resources, wanted, f"after reconfigure(memory_mib={target})")


@clause("RES-ONLY-1")
def test_set_resources_changes_only_what_it_is_given(kit: Kit) -> None:
    vm = _pad(kit, "only-res")
    start = vm.config()
    controls = _controls(kit, start.memory_mib)
    if not controls:
        pytest.skip("the driver declares no resource control")
    wanted: dict[str, int] = {}
    for r in controls:
        vm.set_resources(r)
        field, value = next(iter(r.set_fields().items()))
        wanted[field] = value
        after = vm.config()
        _check_controls(after.resources, wanted, f"set_resources({field}={value})")
        _same_except(start, after, f"set_resources({field}={value})", "resources")
    # The same control twice: the second value wins, the others stay.
    first = controls[0]
    field, value = next(iter(first.set_fields().items()))
    again = value + 1 if field != "memory_reservation_mib" else value - 1
    vm.set_resources(Resources(**{field: again}))  # type: ignore[arg-type]
    wanted[field] = again
    _check_controls(vm.config().resources, wanted, f"set_resources({field}={again}) again")


@clause("RES-CPU-PERVM-1")
@requires(Capability.CPU_LIMIT)
def test_cpu_amounts_are_per_vm(kit: Kit) -> None:
    vm = kit.vm("cpu-pervm", vcpus=2)
    wanted = {"cpu_limit_percent": 150}
    if kit.has(Capability.CPU_RESERVATION):
        wanted["cpu_reservation_percent"] = 30
    got = vm.set_resources(Resources(**wanted)).resources  # type: ignore[arg-type]
    _check_controls(got, wanted, "set_resources on a VM with 2 vCPUs")
    _check_controls(vm.config().resources, wanted, "on a VM with 2 vCPUs, read again")


@clause("DEV-ONLY-1")
@requires(Capability.ADD_DISK)
def test_one_device_changes_only_that_device(kit: Kit) -> None:
    vm = _pad(kit, "only-dev")
    before = vm.config()
    disk = vm.add_disk(DiskSpec(size_mib=32, pool=kit.pool))
    after = vm.config()
    assert _disks(after)[: len(before.disks)] == _disks(before), "the other disks after add_disk"
    _same_except(before, after, "add_disk", "disks")
    if kit.has(Capability.REMOVE_DISK):
        vm.remove_disk(disk.id)
        _same_except(before, vm.config(), f"add_disk then remove_disk({disk.id!r})")
        gone = before.disks[0].id
        vm.remove_disk(gone)
        after = vm.config()
        assert _disks(after) == _disks(before)[1:], f"the other disks after remove_disk({gone!r})"
        _same_except(before, after, f"remove_disk({gone!r})", "disks")
        before = after
    if kit.has(Capability.ADD_NIC):
        mac = f"52:54:00:6b:{zlib.crc32(vm.uuid.encode()) % 200 + 16:02x}:07"
        nic = vm.add_nic(NicSpec(network=kit.network, mac=mac))
        after = vm.config()
        assert _nics(after)[: len(before.nics)] == _nics(before), "the other NICs after add_nic"
        _same_except(before, after, "add_nic", "nics")
        if kit.has(Capability.REMOVE_NIC):
            vm.remove_nic(nic.id)
            _same_except(before, vm.config(), f"add_nic then remove_nic({nic.id!r})")
            gone = before.nics[0].id
            vm.remove_nic(gone)
            after = vm.config()
            assert _nics(after) == _nics(before)[1:], f"the other NICs after remove_nic({gone!r})"
            _same_except(before, after, f"remove_nic({gone!r})", "nics")


@clause("SNAP-REVERT-2")
@requires(Capability.SNAPSHOT)
def test_revert_restores_everything(kit: Kit) -> None:
    vm = kit.vm("revert-all", vcpus=2, disks=1, nics=1)
    controls = _controls(kit, vm.config().memory_mib)
    for r in controls:
        vm.set_resources(r)
    before = vm.config()
    vm.snapshot("before")
    changed = []
    if kit.has(Capability.SET_VCPUS):
        vm.reconfigure(vcpus=3)
        changed.append("vcpus")
    if kit.has(Capability.SET_MEMORY):
        vm.reconfigure(memory_mib=before.memory_mib * 2)
        changed.append("memory")
    if kit.has(Capability.ADD_DISK):
        vm.add_disk(DiskSpec(size_mib=32, pool=kit.pool))
        changed.append("added disk")
    if kit.has(Capability.ADD_NIC):
        vm.add_nic(NicSpec(network=kit.network))
        changed.append("added NIC")
    if kit.has(Capability.REMOVE_NIC):
        vm.remove_nic(before.nics[0].id)
        changed.append("removed NIC")
    if controls:
        field, value = next(iter(controls[0].set_fields().items()))
        vm.set_resources(Resources(**{field: value + 1}))  # type: ignore[arg-type]
        changed.append(f"{field}")
    vm.revert("before", timeout=kit.timeout)
    after = vm.config()
    what = f"revert (after changing {', '.join(changed) or 'nothing'})"
    assert (after.vcpus, after.memory_mib) == (before.vcpus, before.memory_mib), (
        f"(vCPUs, memory) after {what}"
    )
    assert [(d.id, d.size_mib) for d in after.disks] == [
        (d.id, d.size_mib) for d in before.disks
    ], f"disks (id, MiB) after {what}"
    assert [(n.network, n.mac) for n in after.nics] == [(n.network, n.mac) for n in before.nics], (
        f"NICs (network, MAC) after {what}"
    )
    assert after.resources == before.resources, f"resource controls after {what}"


@clause("MIG-ONLY-1")
@requires(Capability.MIGRATE_COLD)
def test_migration_keeps_the_configuration(kit: Kit) -> None:
    if kit.other is None:
        pytest.skip("no second host given (--vmctl-other-uri / VMCTL_OTHER_URI)")
    vm = _pad(kit, "only-mig")
    wanted: dict[str, int] = {}
    for r in _controls(kit, vm.config().memory_mib):
        vm.set_resources(r)
        wanted.update(r.set_fields())
    before = vm.config()
    after = vm.migrate(kit.other, timeout=kit.timeout).config()
    what = "after a cold migration"
    assert (after.vcpus, after.memory_mib) == (before.vcpus, before.memory_mib), (
        f"(vCPUs, memory) {what}"
    )
    assert [(d.id, d.size_mib) for d in after.disks] == [
        (d.id, d.size_mib) for d in before.disks
    ], f"disks (id, MiB) {what}"
    assert [(n.network, n.mac) for n in after.nics] == [(n.network, n.mac) for n in before.nics], (
        f"NICs (network, MAC) {what}"
    )
    _check_controls(after.resources, wanted, what)
