"""The answers docs/driver-authoring.md and the spec's reason table give driver authors are
what sim://, the reference driver, does: each is checked here, so the guide cannot drift
from the driver it points to."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import vmctl
from vmctl import BootSource, DiskSpec, EventKind, NicSpec, PowerState, StateReason, VMSpec
from vmctl.spi import Deadline, StorageListing

pytestmark = pytest.mark.sim

ROOT = Path(__file__).resolve().parents[2]
S, R = PowerState, StateReason
BOOT = BootSource(kernel="/boot/vmlinuz")


@pytest.fixture
def site() -> str:
    return f"guide-{secrets.token_hex(4)}"


@pytest.fixture
def hv(site: str) -> Iterator[vmctl.Hypervisor]:
    with vmctl.connect(f"sim://a?site={site}") as conn:
        yield conn


def _vm(hv: vmctl.Hypervisor, name: str, *, os: bool = False, disks: int = 1) -> vmctl.VM:
    return hv.create_vm(
        VMSpec(
            name=name,
            disks=[DiskSpec(size_mib=16) for _ in range(disks)],
            nics=[NicSpec(network="default")],
            boot=BOOT if os else None,
        )
    )


def _volumes(hv: vmctl.Hypervisor) -> set[str]:
    driver = hv._driver
    assert isinstance(driver, StorageListing)
    return {v.path for v in driver.list_volumes(deadline=Deadline.after(5))}


def _spec_tables() -> tuple[set[tuple[str, str]], dict[str, set[str]]]:
    """(state, reason) pairs of the spec's transition table; reasons per state of the other."""
    text = (ROOT / "spec" / "SPEC.md").read_text()
    pairs: set[tuple[str, str]] = set()
    allowed: dict[str, set[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[2].startswith("`"):
            reason = re.match(r"`(\w+)`", cells[2])
            assert reason, line
            for state in re.findall(r"\b(running|paused|suspended|stopped|crashed)\b", cells[1]):
                pairs.add((state, reason.group(1)))
        elif len(cells) == 2 and cells[0] in {s.value for s in S}:
            allowed[cells[0]] = set(re.findall(r"`(\w+)`", cells[1]))
    return pairs, allowed


def test_each_transition_reports_the_reason_of_the_spec_table(
    hv: vmctl.Hypervisor, site: str
) -> None:
    pairs, allowed = _spec_tables()
    assert len(pairs) >= 12 and set(allowed) == {"running", "paused", "suspended", "stopped",
                                                 "crashed"}  # fmt: skip
    seen: list[tuple[str, vmctl.VMInfo]] = []
    vm = _vm(hv, "reasons", os=True)

    def step(what: str, request: Callable[[], object]) -> None:
        request()
        seen.append((what, vm.info()))  # read afresh: what the driver reports now

    step("create", lambda: None)
    step("start", vm.start)
    step("pause", vm.pause)
    step("resume from pause", vm.resume)
    step("suspend", vm.suspend)
    step("resume from suspend", vm.resume)
    vm.reboot()  # the guest reboots a moment after it was asked
    ends = time.monotonic() + 10
    while vm.info().reason is R.RESUMED and time.monotonic() < ends:
        time.sleep(0.05)
    seen.append(("reboot", vm.info()))
    vm.pause()
    vm.resume()
    step("reset", vm.reset)
    mem = vm.snapshot("mem", memory=True)
    step("shutdown", lambda: vm.shutdown(timeout=30))
    disk = vm.snapshot("disk")
    step("revert disk-only", lambda: vm.revert(disk))
    step("revert with memory", lambda: vm.revert(mem))
    step("power_off", vm.power_off)
    with vmctl.connect(f"sim://b?site={site}") as other:
        moved = vm.migrate(other)
        seen.append(("migrate", moved.info()))
        moved.delete()
    expected = {
        "create": (S.STOPPED, R.CREATED),
        "start": (S.RUNNING, R.BOOTED),
        "pause": (S.PAUSED, R.USER),
        "resume from pause": (S.RUNNING, R.RESUMED),
        "suspend": (S.SUSPENDED, R.SAVED),
        "resume from suspend": (S.RUNNING, R.RESUMED),
        "reset": (S.RUNNING, R.BOOTED),
        "reboot": (S.RUNNING, R.BOOTED),
        "shutdown": (S.STOPPED, R.SHUTDOWN),
        "revert disk-only": (S.STOPPED, R.RESTORED),
        "revert with memory": (S.RUNNING, R.RESTORED),
        "power_off": (S.STOPPED, R.POWERED_OFF),
        "migrate": (S.STOPPED, R.MIGRATED),
    }
    got = {what: (info.state, info.reason) for what, info in seen}
    assert got == expected
    for what, (state, reason) in got.items():
        assert (state.value, reason.value) in pairs, f"{what}: the spec's table lacks it"
        assert reason.value in allowed[state.value], f"{what}: contradicts the second table"


def test_snapshot_state_current_and_parent(hv: vmctl.Hypervisor) -> None:
    vm = _vm(hv, "snaps")
    vm.start()
    a = vm.snapshot("a")  # disk-only, of a running VM: sim:// takes it
    assert (a.state, a.with_memory, a.current, a.parent) == (S.STOPPED, False, True, None)
    b = vm.snapshot("b", memory=True)
    assert (b.state, b.with_memory, b.current, b.parent) == (S.RUNNING, True, True, a.id)
    vm.revert(a)
    assert {s.name: s.current for s in vm.snapshots()} == {"a": True, "b": False}
    vm.delete_snapshot(a)  # the current one: its parent (none) becomes current
    assert [(s.name, s.current, s.parent) for s in vm.snapshots()] == [("b", False, None)]
    with pytest.raises(vmctl.InvalidState) as exc:  # the VM is stopped after the revert
        vm.snapshot("c", memory=True)
    assert exc.value.allowed == {S.RUNNING, S.PAUSED}
    vm.delete()


def test_reboot_and_shutdown_without_an_os_refused_at_once(hv: vmctl.Hypervisor) -> None:
    vm = _vm(hv, "no-os")
    vm.start()
    with pytest.raises(vmctl.InvalidState, match="no guest OS"):
        vm.reboot(timeout=5)
    with pytest.raises(vmctl.InvalidState, match="no guest OS"):
        vm.shutdown(timeout=5)
    assert vm.info().state is S.RUNNING
    vm.delete(force=True)


def test_disks_held_by_snapshots(hv: vmctl.Hypervisor) -> None:
    vm = _vm(hv, "held")
    extra = vm.add_disk(DiskSpec(size_mib=8))
    path = next(d.path for d in vm.config().disks if d.id == extra.id)
    assert path
    snap = vm.snapshot("with-extra")
    vm.remove_disk(extra.id)
    assert path in _volumes(hv)  # the snapshot still holds it
    vm.revert(snap)
    assert path in {d.path for d in vm.config().disks}  # attached again
    vm.remove_disk(extra.id)
    vm.delete_snapshot(snap)  # the last holder: the image goes with it
    assert path not in _volumes(hv)

    extra = vm.add_disk(DiskSpec(size_mib=8))
    path = next(d.path for d in vm.config().disks if d.id == extra.id)
    vm.snapshot("again")
    vm.remove_disk(extra.id)
    deleted = vm.delete()
    assert f"disk {path}" in deleted and "snapshot again" in deleted
    assert not {p for p in _volumes(hv) if "/held-" in p}


def test_linked_clone_and_its_source_are_deleted_independently(hv: vmctl.Hypervisor) -> None:
    src = _vm(hv, "src")
    clone = src.clone("linked", linked=True)
    disks = clone.config().disks
    src.delete()
    assert clone.config().disks == disks
    assert {d.path for d in disks} <= _volumes(hv)
    clone.delete()


def test_sim_emits_every_event_kind(hv: vmctl.Hypervisor, site: str) -> None:
    with hv.watch(timeout=10) as events:
        vm = _vm(hv, "events")
        vm.set_resources(vmctl.Resources(cpu_shares=500))
        vm.snapshot("s")
        vm.start()
        with vmctl.connect(f"sim://b?site={site}") as other:
            moved = vm.migrate(other)
            moved.delete(force=True)
        kinds = set()
        for event in events:
            assert event.vm_uuid == vm.uuid
            kinds.add(event.kind)
            if event.kind is EventKind.MIGRATED:
                break
    assert kinds == set(EventKind) - {EventKind.DELETED}
