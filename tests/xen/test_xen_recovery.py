"""Failed-host recovery on a 3-host xapisim pool in its own process (plain HTTP), read back
with the XenAPI SDK: xapisim's failed-host mode (host_metrics.live false, HOST_OFFLINE),
host.declare_dead and VM.power_state_reset with xapi's rules and errors, and
vmctl.plan_recovery / execute restarting a dead member's VMs on the others only after the
caller confirms the fencing (or xapi has already declared the host dead)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from xen_helpers import GUEST, NETWORK, PASSWORD, connect_http, name

import vmctl
from vmctl import BlockKind, DiskSpec, HostState, MoveMode, MoveOutcome, NicSpec, VMSpec

harness = pytest.importorskip("tests.hosts.xen")
XenAPI = pytest.importorskip("XenAPI")

NULL = "OpaqueRef:NULL"


pytestmark = pytest.mark.usefixtures("state_dir")


@pytest.fixture
def on_host2(pool: Any, sdk: Any) -> Iterator[vmctl.Hypervisor]:
    """VMs made here run on xenhost2; afterwards every host is live and enabled again and
    every VM deleted."""
    with connect_http(pool.port, "?host=xenhost2") as h:
        try:
            yield h
        finally:
            master = sdk.pool.get_master(sdk.pool.get_all()[0])
            for ref in sdk.host.get_all():
                if ref != master:
                    sdk.xapisim.revive_host(ref)
                sdk.host.enable(ref)
            with connect_http(pool.port) as whole:
                for vm in whole.vms():
                    vm.delete(force=True)


def spec(hint: str, **kw: Any) -> VMSpec:
    kw.setdefault("disks", [DiskSpec(size_mib=64)])
    kw.setdefault("nics", [NicSpec(network=NETWORK)])
    kw.setdefault("boot", GUEST)
    return VMSpec(name=name(hint), memory_mib=512, **kw)


def host_ref(sdk: Any, label: str) -> str:
    return str(sdk.host.get_by_name_label(label)[0])


def test_xapi_rules_for_a_live_host(on_host2: vmctl.Hypervisor, sdk: Any) -> None:
    vm = on_host2.create_vm(spec("live"), start=True)
    ref = sdk.VM.get_by_uuid(vm.uuid)
    h2 = host_ref(sdk, "xenhost2")
    master = sdk.pool.get_master(sdk.pool.get_all()[0])
    # xapi_vm.ml power_state_reset: resident on a host that is alive -> HOST_IS_LIVE [host].
    with pytest.raises(XenAPI.Failure) as err:
        sdk.VM.power_state_reset(ref)
    assert err.value.details == ["HOST_IS_LIVE", h2]
    # xapi_host.ml precheck_destroy_declare_dead: a live host, or the master.
    for h in (h2, master):
        with pytest.raises(XenAPI.Failure) as err:
            sdk.host.declare_dead(h)
        assert err.value.details == ["HOST_IS_LIVE", h]
    dom0 = sdk.host.get_control_domain(master)
    with pytest.raises(XenAPI.Failure) as err:
        sdk.VM.power_state_reset(dom0)
    assert err.value.details == ["CANNOT_RESET_CONTROL_DOMAIN", dom0]
    # A VM running on the master: xenopsd there reports its domain.
    sdk.VM.pool_migrate(ref, master, {"live": "true"})
    with pytest.raises(XenAPI.Failure) as err:
        sdk.VM.power_state_reset(ref)
    assert err.value.details == ["DOMAIN_EXISTS", ref]
    # The master cannot fail in the simulator (it serves the API).
    with pytest.raises(XenAPI.Failure, match="OPERATION_NOT_ALLOWED"):
        sdk.xapisim.fail_host(master)


def test_a_dead_member_is_recovered_only_once_fenced(
    on_host2: vmctl.Hypervisor, sdk: Any, pool: Any
) -> None:
    hv = on_host2
    shared = [hv.create_vm(spec(f"sh{i}"), start=True) for i in range(3)]
    halted = hv.create_vm(spec("halted"))
    sdk.VM.set_affinity(sdk.VM.get_by_uuid(halted.uuid), host_ref(sdk, "xenhost2"))
    h2 = host_ref(sdk, "xenhost2")
    local_sr = next(
        sdk.PBD.get_SR(p)
        for p in sdk.host.get_PBDs(h2)
        if sdk.SR.get_name_label(sdk.PBD.get_SR(p)) == "Local storage"
    )
    local = hv.create_vm(
        spec("local", disks=[DiskSpec(size_mib=64, pool=sdk.SR.get_uuid(local_sr))]),
        start=True,
    )
    sdk.xapisim.fail_host(h2)
    assert sdk.host_metrics.get_live(sdk.host.get_metrics(h2)) is False
    # xapi keeps the records as they were; operations forwarded to the host: HOST_OFFLINE.
    first = sdk.VM.get_by_uuid(shared[0].uuid)
    assert sdk.VM.get_power_state(first) == "Running" and sdk.VM.get_resident_on(first) == h2
    with pytest.raises(XenAPI.Failure) as err:
        sdk.VM.clean_shutdown(first)
    assert err.value.details == ["HOST_OFFLINE", h2]
    with pytest.raises(XenAPI.Failure) as err:
        sdk.VM.start_on(sdk.VM.get_by_uuid(halted.uuid), h2, False, False)
    assert err.value.details == ["HOST_OFFLINE", h2]

    with connect_http(pool.port) as whole:
        source = whole.host("xenhost2")
        assert source.state is HostState.UNREACHABLE
        evac = vmctl.plan_evacuation(source)  # evacuation cannot: every VM blocked
        assert evac.moves == () and {b.kind for b in evac.blockers} == {BlockKind.HOST_DOWN}
        plan = vmctl.plan_recovery(source)
        assert plan.fence_proof is None  # live false alone is not a declared death
        modes = {m.vm_name: m.mode for m in plan.moves}
        assert modes == {**{v.name: MoveMode.RESTART for v in shared}, halted.name: MoveMode.COLD}
        assert [(b.vm_name, b.kind) for b in plan.blockers] == [
            (local.name, BlockKind.LOCAL_STORAGE)
        ]
        with pytest.raises(vmctl.InvalidState, match="confirm_fenced"):
            vmctl.execute(plan)
        assert sdk.VM.get_power_state(first) == "Running"  # nothing was touched
        assert sdk.host.get_enabled(h2) is True
        report = vmctl.execute(plan, confirm_fenced=True, max_parallel=3)
        assert report.ok, str(report)
        assert report.count(MoveOutcome.MOVED) == 4
        for vm in shared:
            r = sdk.VM.get_by_uuid(vm.uuid)
            assert sdk.VM.get_power_state(r) == "Running"
            assert sdk.VM.get_resident_on(r) in (
                host_ref(sdk, "xenhost1"),
                host_ref(sdk, "xenhost3"),
            )
            assert sdk.VM.get_affinity(r) == sdk.VM.get_resident_on(r)
        assert sdk.VM.get_affinity(sdk.VM.get_by_uuid(halted.uuid)) != h2
        # host.declare_dead: the host disabled, its other VMs reset to Halted.
        assert sdk.host.get_enabled(h2) is False
        lref = sdk.VM.get_by_uuid(local.uuid)
        assert sdk.VM.get_power_state(lref) == "Halted"
        assert sdk.VM.get_resident_on(lref) == NULL
        # Now xapi itself proves it: the plan needs no confirmation, and has nothing to do.
        again = vmctl.plan_recovery(whole.host("xenhost2"))
        assert again.fence_proof and "declared dead" in again.fence_proof
        assert again.moves == ()
        assert vmctl.execute(again).results == ()


def test_cli_recover_needs_the_confirmation(
    on_host2: vmctl.Hypervisor, sdk: Any, pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from vmctl.cli import cli

    vm = on_host2.create_vm(spec("cli"), start=True)
    sdk.xapisim.fail_host(host_ref(sdk, "xenhost2"))
    monkeypatch.setenv("VMCTL_PASSWORD", PASSWORD)
    uri = f"xen+http://root@127.0.0.1:{pool.port}"
    refused = CliRunner().invoke(cli, ["-c", uri, "recover", "xenhost2", "--yes"])
    assert refused.exit_code != 0
    assert "confirm" in refused.output
    assert sdk.VM.get_power_state(sdk.VM.get_by_uuid(vm.uuid)) == "Running"
    done = CliRunner().invoke(cli, ["-c", uri, "recover", "xenhost2", "--confirm-fenced", "--yes"])
    assert done.exit_code == 0, done.output
    assert "1 moved" in done.output
    ref = sdk.VM.get_by_uuid(vm.uuid)
    assert sdk.VM.get_power_state(ref) == "Running"
    assert sdk.VM.get_resident_on(ref) != host_ref(sdk, "xenhost2")
