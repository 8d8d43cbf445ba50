"""vmctl.Site over the two libvirt test hosts (qemu:///system and the second libvirtd in its
network namespace): the site's hosts, an evacuation of a few small VMs from host 1 to host 2
and back (live for the running ones, offline define/undefine for the stopped one), a disk
that only host 1 reaches blocking its VM, the rebalance plan. virsh checks where each VM
ended. Other sessions' VMs share these hosts: the plans are executed for this test's VMs
only.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import vmctl
from tests.kvm.kvm_helpers import virsh, vmctl_uri
from vmctl import BlockKind, DiskSpec, HostState, MoveMode, MoveOutcome, NicSpec, VMSpec

SITE = "vmctl-site-"
#: a directory only host 1 sees (host 2's /var/lib/libvirt is a directory of its own)
LOCAL_DIR = Path("/var/lib/libvirt") / (SITE + "local")


# Connections of this module's own; this module's VMs have a prefix of their own and are
# removed by the tests themselves.
@pytest.fixture(scope="module")
def hv(hosts: Any) -> Iterator[vmctl.Hypervisor]:
    with vmctl.connect(vmctl_uri(hosts.uri, hosts)) as h:
        yield h


@pytest.fixture(scope="module")
def other(hosts: Any) -> Iterator[vmctl.Hypervisor]:
    if not hosts.other_uri:
        pytest.skip("the harness started no second libvirt host")
    with vmctl.connect(vmctl_uri(hosts.other_uri, hosts)) as h:
        yield h


@pytest.fixture
def site(
    hv: vmctl.Hypervisor,
    other: vmctl.Hypervisor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[vmctl.Site]:
    monkeypatch.setenv("VMCTL_STATE_DIR", str(tmp_path / "state"))
    with vmctl.Site([hv, other]) as s:
        yield s


def _mine(plan: Any) -> Any:
    """The plan restricted to this test's VMs (the shared hosts run others' VMs too)."""
    return attrs.evolve(
        plan,
        moves=tuple(m for m in plan.moves if m.vm_name.startswith(SITE)),
        blockers=tuple(b for b in plan.blockers if b.vm_name.startswith(SITE)),
    )


def _uuids(uri: str, *flags: str) -> set[str]:
    return set(virsh(uri, "list", "--uuid", *flags).split())


def _host_of(site: vmctl.Site, hv: vmctl.Hypervisor) -> vmctl.Host:
    return site.host(hv.hosts()[0].id)


def test_site_hosts_are_the_members_hosts(
    site: vmctl.Site, hv: vmctl.Hypervisor, other: vmctl.Hypervisor
) -> None:
    hosts = site.hosts()
    assert {h.id for h in hosts} == {hv.hosts()[0].id, other.hosts()[0].id}
    assert len({h.name for h in hosts}) == 2  # one machine: names told apart by the URI
    assert all(h.state is HostState.CONNECTED and h.hypervisor is site for h in hosts)
    assert site.members == (hv, other)
    assert site.supports("migrate_live") and site.supports("migrate_cold")
    # the site's VMs are the members' VMs (others make and delete VMs meanwhile: no counts)
    assert all(isinstance(i, vmctl.VMInfo) and i.host for i in site.list_vms())
    with pytest.raises(vmctl.NotSupported, match="one of the site's connections"):
        site.create_vm(VMSpec(name=SITE + "nope", vcpus=1, memory_mib=64))


def test_a_host_of_another_connection_needs_a_site(
    hv: vmctl.Hypervisor, other: vmctl.Hypervisor
) -> None:
    with pytest.raises(vmctl.ValidationError, match=r"vmctl\.Site"):
        vmctl.plan_evacuation(hv.hosts()[0], [other.hosts()[0]])


def test_site_refuses_bad_members(hv: vmctl.Hypervisor, test_hv: vmctl.Hypervisor) -> None:
    with pytest.raises(vmctl.ValidationError, match="one driver"):
        vmctl.Site([hv, vmctl.connect("sim://")])
    with pytest.raises(vmctl.ValidationError, match="named twice"):
        vmctl.Site([hv, hv])
    with pytest.raises(vmctl.ValidationError, match="cannot form a site"):
        vmctl.Site([vmctl.connect("sim://a?site=x"), vmctl.connect("sim://b?site=x")])
    with pytest.raises(vmctl.ValidationError, match="list of URIs"):
        vmctl.Site("qemu:///system")  # type: ignore[arg-type]
    with pytest.raises(vmctl.ValidationError, match="list of URIs"):
        vmctl.Site([])


@pytest.fixture
def local_pool(hosts: Any) -> Iterator[str]:
    """A transient dir pool on host 1 only, in a directory host 2 does not see."""
    import libvirt

    LOCAL_DIR.mkdir(exist_ok=True)
    name = SITE + "local"
    conn = libvirt.open(hosts.uri)
    try:
        with contextlib.suppress(libvirt.libvirtError):
            conn.storagePoolLookupByName(name).destroy()
        pool = conn.storagePoolCreateXML(
            f"<pool type='dir'><name>{name}</name><target><path>{LOCAL_DIR}</path></target></pool>",
            0,
        )
        try:
            yield name
        finally:
            for vol in pool.listAllVolumes(0):
                with contextlib.suppress(libvirt.libvirtError):
                    vol.delete(0)
            pool.destroy()
    finally:
        conn.close()
        with contextlib.suppress(OSError):
            LOCAL_DIR.rmdir()


def test_evacuate_to_the_other_libvirtd_and_back(
    site: vmctl.Site,
    hv: vmctl.Hypervisor,
    other: vmctl.Hypervisor,
    hosts: Any,
    local_pool: str,
) -> None:
    def spec(name: str, **kw: Any) -> VMSpec:
        base: dict[str, Any] = {
            "name": SITE + name,
            "vcpus": 1,
            "memory_mib": 96,
            "disks": [DiskSpec(size_mib=16)],
            "nics": [NicSpec(network=hosts.network)],
        }
        return VMSpec(**{**base, **kw})

    made: list[vmctl.VM] = []
    try:
        for name in ("run1", "run2"):
            made.append(hv.create_vm(spec(name), start=True))
        made.append(hv.create_vm(spec("off")))
        made.append(hv.create_vm(spec("local", disks=[DiskSpec(size_mib=16, pool=local_pool)])))
        run1, run2, off, local = made
        h1, h2 = _host_of(site, hv), _host_of(site, other)

        plan = _mine(vmctl.plan_evacuation(h1))
        modes = {m.vm_name: (m.mode, m.target_id) for m in plan.moves}
        assert modes == {
            run1.name: (MoveMode.LIVE, h2.id),
            run2.name: (MoveMode.LIVE, h2.id),
            off.name: (MoveMode.COLD, h2.id),
        }
        [blocked] = plan.blockers
        assert blocked.vm_name == local.name and blocked.kind is BlockKind.LOCAL_STORAGE
        assert str(LOCAL_DIR) in blocked.reason

        t0 = time.monotonic()
        report = vmctl.execute(plan, max_parallel=2)
        there = time.monotonic() - t0
        assert report.ok, str(report)
        assert {r.outcome for r in report.results} == {MoveOutcome.MOVED}
        # libvirt's own view (virsh, another client): running on host 2, defined there only
        on2 = _uuids(hosts.other_uri)
        assert {run1.uuid, run2.uuid} <= on2
        assert off.uuid in _uuids(hosts.other_uri, "--inactive")
        assert not {run1.uuid, run2.uuid, off.uuid} & _uuids(hosts.uri, "--all")
        assert local.uuid in _uuids(hosts.uri, "--all")  # blocked: stayed
        # the same plan again: each VM is on its target already
        again = vmctl.execute(plan, max_parallel=2)
        assert {r.outcome for r in again.results} == {MoveOutcome.ALREADY}

        back = _mine(vmctl.plan_evacuation(h2))
        assert {m.vm_name for m in back.moves} == {run1.name, run2.name, off.name}
        assert all(m.target_id == h1.id for m in back.moves)
        t0 = time.monotonic()
        report = vmctl.execute(back, max_parallel=2)
        assert report.ok, str(report)
        assert {run1.uuid, run2.uuid} <= _uuids(hosts.uri)
        assert off.uuid in _uuids(hosts.uri, "--inactive")
        assert not {run1.uuid, run2.uuid, off.uuid} & _uuids(hosts.other_uri, "--all")
        assert hv.vm(run1.uuid).info().state is vmctl.PowerState.RUNNING
        print(f"\nsite evacuation: {there:.1f} s there, {time.monotonic() - t0:.1f} s back")
    finally:
        for vm in made:
            for h in (hv, other):
                with contextlib.suppress(vmctl.NotFound):
                    h.vm(vm.uuid).delete(force=True, timeout=60)


def test_vmctl_maintenance_flag_keeps_vms_off_a_member(
    site: vmctl.Site, hv: vmctl.Hypervisor, other: vmctl.Hypervisor
) -> None:
    h2 = _host_of(site, other)
    flagged = h2.enter_maintenance()
    try:
        assert flagged.state is HostState.MAINTENANCE and flagged.vmctl_maintenance
        plan = vmctl.plan_evacuation(_host_of(site, hv))
        assert plan.targets == ()
        assert all(b.kind is BlockKind.NO_TARGET for b in plan.blockers)
    finally:
        assert h2.exit_maintenance().state is HostState.CONNECTED


def test_rebalance_plan_over_the_site(site: vmctl.Site, tmp_path: Path) -> None:
    plan = vmctl.plan_rebalance(site, threshold=50)
    # the inventory the plan read is kept for recovery: private, every member's host and VMs
    saved = tmp_path / "state" / "site-members.json"
    assert saved.stat().st_mode & 0o777 == 0o600
    members = json.loads(saved.read_text())["members"]
    assert set(members) == {str(m.uri) for m in site.members}
    for m in site.members:  # (other clients make and delete VMs meanwhile: no counts)
        for uuid, rec in members[str(m.uri)]["vms"].items():
            assert f"<uuid>{uuid}</uuid>" in rec["definition"], rec
            assert rec["state"] in {s.value for s in vmctl.PowerState}
    assert {h.name for h in plan.before} == {h.name for h in site.hosts()}
    assert len(plan.before) == len(plan.after) == 2
    assert all(0 < h.memory_percent < 100 for h in plan.before)
    assert plan.moves == ()  # both libvirtds run on one machine: the same memory load
    assert "HOST" in str(plan)
    hosts = site.hosts()
    assert vmctl.plan_rebalance(hosts, max_moves=0).moves == ()


def test_cli_over_a_site(hosts: Any, hv: vmctl.Hypervisor, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from vmctl.cli import cli

    uris = [vmctl_uri(hosts.uri, hosts), vmctl_uri(hosts.other_uri, hosts)]
    site = [w for u in uris for w in ("--site", u)]
    env = {"VMCTL_STATE_DIR": str(tmp_path / "state"), "VMCTL_URI": ""}
    res = CliRunner().invoke(cli, [*site, "--json", "hosts"], env=env)
    assert res.exit_code == 0, res.output
    listed = json.loads(res.output)
    assert len(listed) == 2 and all(h["state"] == "connected" for h in listed)
    host1 = hv.hosts()[0].id
    res = CliRunner().invoke(cli, [*site, "--json", "evacuate", host1, "--dry-run"], env=env)
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    others = {h["id"] for h in listed} - {host1}
    assert {t["id"] for t in plan["targets"]} == others
