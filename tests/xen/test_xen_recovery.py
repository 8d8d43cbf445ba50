"""Failed-host recovery on a 3-host xapisim pool in its own process (plain HTTP), read back
with the XenAPI SDK: xapisim's failed-host mode (host_metrics.live false, HOST_OFFLINE),
host.declare_dead and VM.power_state_reset with xapi's rules and errors, and
vmctl.plan_recovery / execute restarting a dead member's VMs on the others only after the
caller confirms the fencing (or xapi has already declared the host dead)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from xen_helpers import GUEST, NETWORK, PASSWORD, name

import vmctl
from vmctl import BlockKind, DiskSpec, HostState, MoveMode, MoveOutcome, NicSpec, VMSpec

harness = pytest.importorskip("tests.hosts.xen")
XenAPI = pytest.importorskip("XenAPI")

NULL = "OpaqueRef:NULL"


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMCTL_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture(scope="module")
def pool() -> Iterator[Any]:
    sim = harness.start_simulator(hosts=3, vms=0, tls=False, password=PASSWORD)
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def raw(pool: Any) -> Iterator[Any]:
    session = XenAPI.Session(f"http://127.0.0.1:{pool.port}/")
    session.xenapi.login_with_password("root", PASSWORD, "2.21", "vmctl-tests")
    try:
        yield session.xenapi
    finally:
        session.xenapi.session.logout()


def connect(port: int, query: str = "") -> vmctl.Hypervisor:
    return vmctl.connect(f"xen+http://root@127.0.0.1:{port}{query}", password=PASSWORD, env={})


@pytest.fixture
def on_host2(pool: Any, raw: Any) -> Iterator[vmctl.Hypervisor]:
    """VMs made here run on xenhost2; afterwards every host is live and enabled again and
    every VM deleted."""
    with connect(pool.port, "?host=xenhost2") as h:
        try:
            yield h
        finally:
            master = raw.pool.get_master(raw.pool.get_all()[0])
            for ref in raw.host.get_all():
                if ref != master:
                    raw.xapisim.revive_host(ref)
                raw.host.enable(ref)
            with connect(pool.port) as whole:
                for vm in whole.vms():
                    vm.delete(force=True)


def spec(hint: str, **kw: Any) -> VMSpec:
    kw.setdefault("disks", [DiskSpec(size_mib=64)])
    kw.setdefault("nics", [NicSpec(network=NETWORK)])
    kw.setdefault("boot", GUEST)
    return VMSpec(name=name(hint), memory_mib=512, **kw)


def host_ref(raw: Any, label: str) -> str:
    return str(raw.host.get_by_name_label(label)[0])


def test_xapi_rules_for_a_live_host(on_host2: vmctl.Hypervisor, raw: Any) -> None:
    vm = on_host2.create_vm(spec("live"), start=True)
    ref = raw.VM.get_by_uuid(vm.uuid)
    h2 = host_ref(raw, "xenhost2")
    master = raw.pool.get_master(raw.pool.get_all()[0])
    # xapi_vm.ml power_state_reset: resident on a host that is alive -> HOST_IS_LIVE [host].
    with pytest.raises(XenAPI.Failure) as err:
        raw.VM.power_state_reset(ref)
    assert err.value.details == ["HOST_IS_LIVE", h2]
    # xapi_host.ml precheck_destroy_declare_dead: a live host, or the master.
    for h in (h2, master):
        with pytest.raises(XenAPI.Failure) as err:
            raw.host.declare_dead(h)
        assert err.value.details == ["HOST_IS_LIVE", h]
    dom0 = raw.host.get_control_domain(master)
    with pytest.raises(XenAPI.Failure) as err:
        raw.VM.power_state_reset(dom0)
    assert err.value.details == ["CANNOT_RESET_CONTROL_DOMAIN", dom0]
    # A VM running on the master: xenopsd there reports its domain.
    raw.VM.pool_migrate(ref, master, {"live": "true"})
    with pytest.raises(XenAPI.Failure) as err:
        raw.VM.power_state_reset(ref)
    assert err.value.details == ["DOMAIN_EXISTS", ref]
    # The master cannot fail in the simulator (it serves the API).
    with pytest.raises(XenAPI.Failure, match="OPERATION_NOT_ALLOWED"):
        raw.xapisim.fail_host(master)


def test_a_dead_member_is_recovered_only_once_fenced(
    on_host2: vmctl.Hypervisor, raw: Any, pool: Any
) -> None:
    hv = on_host2
    shared = [hv.create_vm(spec(f"sh{i}"), start=True) for i in range(3)]
    halted = hv.create_vm(spec("halted"))
    raw.VM.set_affinity(raw.VM.get_by_uuid(halted.uuid), host_ref(raw, "xenhost2"))
    h2 = host_ref(raw, "xenhost2")
    local_sr = next(
        raw.PBD.get_SR(p)
        for p in raw.host.get_PBDs(h2)
        if raw.SR.get_name_label(raw.PBD.get_SR(p)) == "Local storage"
    )
    local = hv.create_vm(
        spec("local", disks=[DiskSpec(size_mib=64, pool=raw.SR.get_uuid(local_sr))]), start=True
    )
    raw.xapisim.fail_host(h2)
    assert raw.host_metrics.get_live(raw.host.get_metrics(h2)) is False
    # xapi keeps the records as they were; operations forwarded to the host: HOST_OFFLINE.
    first = raw.VM.get_by_uuid(shared[0].uuid)
    assert raw.VM.get_power_state(first) == "Running" and raw.VM.get_resident_on(first) == h2
    with pytest.raises(XenAPI.Failure) as err:
        raw.VM.clean_shutdown(first)
    assert err.value.details == ["HOST_OFFLINE", h2]
    with pytest.raises(XenAPI.Failure) as err:
        raw.VM.start_on(raw.VM.get_by_uuid(halted.uuid), h2, False, False)
    assert err.value.details == ["HOST_OFFLINE", h2]

    with connect(pool.port) as whole:
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
        assert raw.VM.get_power_state(first) == "Running"  # nothing was touched
        assert raw.host.get_enabled(h2) is True
        report = vmctl.execute(plan, confirm_fenced=True, max_parallel=3)
        assert report.ok, str(report)
        assert report.count(MoveOutcome.MOVED) == 4
        for vm in shared:
            r = raw.VM.get_by_uuid(vm.uuid)
            assert raw.VM.get_power_state(r) == "Running"
            assert raw.VM.get_resident_on(r) in (
                host_ref(raw, "xenhost1"),
                host_ref(raw, "xenhost3"),
            )
            assert raw.VM.get_affinity(r) == raw.VM.get_resident_on(r)
        assert raw.VM.get_affinity(raw.VM.get_by_uuid(halted.uuid)) != h2
        # host.declare_dead: the host disabled, its other VMs reset to Halted.
        assert raw.host.get_enabled(h2) is False
        lref = raw.VM.get_by_uuid(local.uuid)
        assert raw.VM.get_power_state(lref) == "Halted"
        assert raw.VM.get_resident_on(lref) == NULL
        # Now xapi itself proves it: the plan needs no confirmation, and has nothing to do.
        again = vmctl.plan_recovery(whole.host("xenhost2"))
        assert again.fence_proof and "declared dead" in again.fence_proof
        assert again.moves == ()
        assert vmctl.execute(again).results == ()


def test_cli_recover_needs_the_confirmation(
    on_host2: vmctl.Hypervisor, raw: Any, pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from vmctl.cli import cli

    vm = on_host2.create_vm(spec("cli"), start=True)
    raw.xapisim.fail_host(host_ref(raw, "xenhost2"))
    monkeypatch.setenv("VMCTL_PASSWORD", PASSWORD)
    uri = f"xen+http://root@127.0.0.1:{pool.port}"
    refused = CliRunner().invoke(cli, ["-c", uri, "recover", "xenhost2", "--yes"])
    assert refused.exit_code != 0
    assert "confirm" in refused.output
    assert raw.VM.get_power_state(raw.VM.get_by_uuid(vm.uuid)) == "Running"
    done = CliRunner().invoke(cli, ["-c", uri, "recover", "xenhost2", "--confirm-fenced", "--yes"])
    assert done.exit_code == 0, done.output
    assert "1 moved" in done.output
    ref = raw.VM.get_by_uuid(vm.uuid)
    assert raw.VM.get_power_state(ref) == "Running"
    assert raw.VM.get_resident_on(ref) != host_ref(raw, "xenhost2")
