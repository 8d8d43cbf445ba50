"""Hosts on the KVM driver, checked on libvirt's test driver (test:///default, no libvirtd):
one connection is one host, built by the core from host_info (virNodeGetInfo,
virNodeGetFreeMemory, the capabilities' host UUID) and list_vms; its VMs have nowhere to go
and vmctl's maintenance flag is the only maintenance mark. Not run here: a libvirtd host
(tests that start libvirtd belong to the KVM session)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import vmctl
from tests.kvm.kvm_helpers import PREFIX
from vmctl import BlockKind, HostState, VMSpec


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMCTL_STATE_DIR", str(tmp_path / "state"))


def test_one_host_from_node_info(test_hv: vmctl.Hypervisor) -> None:
    libvirt = pytest.importorskip("libvirt")
    raw: Any = libvirt.open("test:///default")
    try:
        _model, mem_mib, cpus, mhz, *_ = raw.getInfo()
        free_mib = raw.getFreeMemory() // 2**20
        hostname = raw.getHostname()
    finally:
        raw.close()
    (host,) = test_hv.hosts()
    assert (host.name, host.cpus, host.cpu_mhz, host.memory_mib) == (hostname, cpus, mhz, mem_mib)
    assert host.memory_used_mib == mem_mib - free_mib
    assert host.cpu_percent is None and host.state is HostState.CONNECTED
    assert host.vm_count == len(test_hv.list_vms())
    assert test_hv.host(host.id) == host


def test_nowhere_to_move_and_the_vmctl_flag(test_hv: vmctl.Hypervisor) -> None:
    test_hv.create_vm(VMSpec(name=PREFIX + "hosts", vcpus=1, memory_mib=128))
    (host,) = test_hv.hosts()
    plan = vmctl.plan_evacuation(host)
    assert not plan.moves and len(plan.blockers) == host.vm_count
    assert {b.kind for b in plan.blockers} == {BlockKind.NO_TARGET}
    assert "one host" in plan.blockers[0].reason
    entered = host.enter_maintenance()
    assert entered.vmctl_maintenance and not entered.backend_maintenance
    assert entered.state is HostState.MAINTENANCE
    assert host.exit_maintenance().state is HostState.CONNECTED
