from __future__ import annotations

import pytest

from vmctl import AgentState, Capability, PowerState
from vmctl_conformance import clause, requires
from vmctl_conformance._kit import Kit

S = PowerState
COUNTERS = ("cpu_time_ns", "disk_read_bytes", "disk_write_bytes", "net_rx_bytes", "net_tx_bytes")


@clause("STATS-1")
@requires(Capability.STATS)
def test_stats_counters_do_not_decrease(kit: Kit) -> None:
    vm = kit.vm("stats", state=S.RUNNING)
    first = kit.hv.stats([vm])[vm.uuid]
    second = vm.stats()
    assert first.uuid == second.uuid == vm.uuid
    for name in COUNTERS:
        a, b = getattr(first, name), getattr(second, name)
        if a is not None and b is not None:
            assert b >= a, f"{name} went down: {a} -> {b}"


@clause("GUEST-IP-1")
@requires(Capability.GUEST_INFO)
def test_guest_reports_ip(kit: Kit) -> None:
    if kit.boot is None:
        pytest.skip("no bootable guest given (kit options boot_kernel/boot_initrd or boot_iso)")
    vm = kit.vm("guest-ip", state=S.RUNNING, os=True)
    kit.wait_until(lambda: bool(vm.guest_info().ip_addresses), "the guest's IP address")


@clause("GUEST-NOOS-1")
@requires(Capability.GUEST_INFO)
def test_no_os_reports_no_ip(kit: Kit) -> None:
    vm = kit.vm("guest-noos", state=S.RUNNING)
    info = vm.guest_info()
    assert info.ip_addresses == ()
    assert info.agent is not AgentState.RUNNING
