"""The sim enforces what real hypervisors enforce, and persists across processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import vmctl
from vmctl import PowerState, VMSpec


def test_host_memory_is_enforced(hv: vmctl.Hypervisor) -> None:
    big = [hv.create_vm(VMSpec(name=f"big{i}", memory_mib=30 * 1024)) for i in range(3)]
    big[0].start()
    big[1].start()
    with pytest.raises(vmctl.InsufficientResources, match="MiB free"):
        big[2].start()
    assert big[2].state is PowerState.STOPPED
    big[0].suspend()  # a suspended VM gives its memory back
    big[2].start()
    with pytest.raises(vmctl.InsufficientResources):
        big[0].resume()


def test_vcpus_beyond_the_host_are_refused(hv: vmctl.Hypervisor) -> None:
    with pytest.raises(vmctl.InsufficientResources, match="vCPUs"):
        hv.create_vm(VMSpec(name="wide", vcpus=64))
    assert hv.list_vms() == []


def test_unknown_network_or_pool_leaves_nothing(hv: vmctl.Hypervisor) -> None:
    with pytest.raises(vmctl.NotFound, match="network"):
        hv.create_vm(VMSpec(name="n", nics=[vmctl.NicSpec(network="nope")]))
    with pytest.raises(vmctl.NotFound, match="pool"):
        hv.create_vm(VMSpec(name="p", disks=[vmctl.DiskSpec(size_mib=1, pool="nope")]))
    assert hv.list_vms() == []


def test_hosts_of_different_sites_cannot_migrate() -> None:
    with vmctl.connect("sim://a?site=one") as a, vmctl.connect("sim://b?site=two") as b:
        vm = a.create_vm(VMSpec(name="x"))
        with pytest.raises(vmctl.ValidationError, match="same site"):
            vm.migrate(b)


def test_state_file_is_shared_between_processes(tmp_path: Path) -> None:
    uri = f"sim://p?state={tmp_path / 'site.json'}"
    with vmctl.connect(uri) as hv:
        hv.create_vm(VMSpec(name="shared", vcpus=2)).start()
    code = (
        "import vmctl, sys; hv = vmctl.connect(sys.argv[1]); vm = hv.vm('shared'); "
        "print(vm.info().state.value, vm.info().vcpus); vm.power_off()"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, uri], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["running", "2"]
    with vmctl.connect(uri) as hv:
        assert hv.vm("shared").state is PowerState.STOPPED


def test_watch_sees_other_processes_changes(tmp_path: Path) -> None:
    """`vmctl watch` on a shared ?state=FILE site printed nothing while another process
    changed VMs (issue 9)."""
    uri = f"sim://w?state={tmp_path / 'site.json'}"
    make = "import vmctl, sys; vmctl.connect(sys.argv[1]).create_vm(vmctl.VMSpec(name='x'))"
    drop = "import vmctl, sys; vmctl.connect(sys.argv[1]).vm('x').delete()"
    seen: list[tuple[vmctl.EventKind, str | None]] = []
    with vmctl.connect(uri) as hv, hv.watch(timeout=30) as events:
        for code in (make, drop):
            subprocess.run([sys.executable, "-c", code, uri], check=True, timeout=60)
            event = events.next(timeout=10)
            assert event is not None
            seen.append((event.kind, event.vm_name))
    assert seen == [(vmctl.EventKind.CREATED, "x"), (vmctl.EventKind.DELETED, "x")]


def test_events_are_per_host(hv: vmctl.Hypervisor, other: vmctl.Hypervisor) -> None:
    with hv.watch() as here, other.watch() as there:
        vm = hv.create_vm(VMSpec(name="e"))
        assert [e.kind for e in here.drain()] == [vmctl.EventKind.CREATED]
        assert there.drain() == []
        vm.migrate(other)
        assert [e.kind for e in there.drain()] == [vmctl.EventKind.MIGRATED]


def test_reset_returns_the_state_after_the_request(hv: vmctl.Hypervisor) -> None:
    """A reset ends in the state it began in: what it returns is read afterwards, not the
    info from before the request (which would say why the VM last started)."""
    vm = hv.create_vm(VMSpec(name="rr"))
    vm.start()
    vm.pause()
    assert vm.resume().reason is vmctl.StateReason.RESUMED
    after_reset = vm.reset()
    assert after_reset.reason is not vmctl.StateReason.RESUMED
    assert after_reset == vm.info()


def test_start_during_a_start_waits_for_it(hv: vmctl.Hypervisor) -> None:
    """PAUSED with reason booted is a start under way (the host holds the vCPUs until its
    start job ends, e.g. after a start that timed out): start() waits for it instead of
    refusing "it is paused", and times out like any start if it never ends."""
    import threading

    vm = hv.create_vm(VMSpec(name="starting"))
    drv: Any = hv._driver

    def set_state(state: PowerState) -> None:
        with drv.site.transaction():
            drv._set_state(drv._host.vms[vm.uuid], state, vmctl.StateReason.BOOTED)

    set_state(PowerState.PAUSED)
    with pytest.raises(vmctl.OperationTimeout):
        vm.start(timeout=0.3)
    timer = threading.Timer(0.3, set_state, (PowerState.RUNNING,))
    timer.start()
    try:
        info = vm.start(timeout=10)
    finally:
        timer.join()
    assert (info.state, info.reason) == (PowerState.RUNNING, vmctl.StateReason.BOOTED)
    vm.pause()
    with pytest.raises(vmctl.InvalidState, match="paused"):  # paused by a user: refused
        vm.start()
