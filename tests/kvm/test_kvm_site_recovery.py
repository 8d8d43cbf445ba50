"""Recovering a failed libvirtd of a vmctl.Site on KVM: a third libvirtd of this test's own
(tests/hosts/kvm.py start_extra_host, its own network namespace; never the session's shared
hosts) runs two VMs and holds a stopped one, all with disks in the shared image directory,
and one with a disk only it sees. The test kills it by its PIDs (libvirtd, virtlogd and its
QEMU: a power cut), then recovers on host 1: refused without the fencing confirmation
(nothing defined), done with it (virsh on host 1 shows the VMs, on the same disk files),
the blocked VM left alone, and the same plan run again reports them already there.

Then host 3 comes back with its persistent domains (a reboot) and one of the recovered
VMs running there again (a copy of its definition without the disk, which host 1's QEMU
holds: a split brain): the next site operation undefines the recovered VMs that are
stopped on host 3 (disks kept), leaves the running one alone, warns, pins it in plans and
refuses to start it anywhere; once that copy is powered off, the next operation undefines
it too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmctl
from tests.kvm.kvm_helpers import virsh, vmctl_uri
from vmctl import BlockKind, DiskSpec, HostState, MoveMode, MoveOutcome, PowerState, VMSpec

REC = "vmctl-siterec-"
#: Where kit reports are kept for the support matrix (as in test_kvm_qemu).
REPORTS = Path(__file__).resolve().parents[2] / "reports"


# Connections of this module's own; this module's VMs have a prefix of their own and are
# removed by the tests themselves.
@pytest.fixture(scope="module")
def hv(hosts: Any) -> Iterator[vmctl.Hypervisor]:
    with vmctl.connect(vmctl_uri(hosts.uri, hosts)) as h:
        yield h


@pytest.fixture
def host3(kvm_harness: Any, hosts: Any) -> Iterator[Any]:
    """The third libvirtd, with the shared pool active and a pool of its own."""
    import libvirt

    extra = kvm_harness.start_extra_host()
    try:
        conn = libvirt.open(extra.uri)
        try:
            shared = conn.storagePoolLookupByName(hosts.pool)
            if not shared.isActive():
                shared.create(0)
            # freed now: a pool object freed later closes the connection then, when this
            # host may be gone (the close RPC then waits for TCP to give up: ~15 min)
            del shared
            # in host 3's mount namespace /var/lib/libvirt is a directory of its own
            conn.storagePoolCreateXML(
                f"<pool type='dir'><name>{REC}own</name>"
                "<target><path>/var/lib/libvirt/images</path></target></pool>",
                0,
            )
        finally:
            conn.close()
        yield extra
    finally:
        extra.stop()
        own = extra.host.dir / "lib" / "images"
        for f in own.glob(REC + "*"):
            f.unlink()


def _uuids(uri: str, *flags: str) -> set[str]:
    return set(virsh(uri, "list", "--uuid", *flags).split())


def _disk_paths(vm: vmctl.VM) -> list[str]:
    return [d.path for d in vm.config().disks if d.path]


def _recovered(state: Path) -> dict[str, Any]:
    """The recoveries the site records, of every member (VM UUID -> record)."""
    members = json.loads((state / "site-members.json").read_text())["members"]
    return {u: r for entry in members.values() for u, r in entry.get("recovered", {}).items()}


def _host3_returns(
    site: vmctl.Site,
    hv: vmctl.Hypervisor,
    hosts: Any,
    host3: Any,
    uris: list[str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    *,
    run: vmctl.VM,
    twin: vmctl.VM,
    off: vmctl.VM,
    own: vmctl.VM,
) -> None:
    """Host 3 is back with the recovered VMs still defined (shut off: its QEMUs died with
    it), ``twin`` running there again without its disk (split brain); see the module."""
    import libvirt

    recovered = {run.uuid, twin.uuid, off.uuid}
    assert recovered | {own.uuid} <= _uuids(host3.uri, "--all")
    assert not recovered & _uuids(host3.uri)  # none runs there yet
    run_disks, twin_disks, off_disks = _disk_paths(run), _disk_paths(twin), _disk_paths(off)
    conn = libvirt.open(host3.uri)
    try:
        root = ET.fromstring(
            conn.lookupByUUIDString(twin.uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        )
        devices = root.find("devices")
        assert devices is not None
        for disk in devices.findall("disk"):
            devices.remove(disk)
        conn.defineXML(ET.tostring(root, encoding="unicode")).create()
    finally:
        conn.close()
    assert twin.uuid in _uuids(host3.uri)

    caplog.set_level(logging.WARNING, logger="vmctl")
    # the site operation that finds host 3 back: the operator's next process, a new Site
    with vmctl.Site(uris) as fresh:
        names = [vm.name for vm in fresh.vms()]
    assert names.count(run.name) == names.count(off.name) == 1
    assert names.count(twin.name) == 2  # it does run twice
    assert _uuids(host3.uri, "--all") == {twin.uuid, own.uuid}
    assert twin.uuid in _uuids(host3.uri)  # untouched
    assert {run.uuid, twin.uuid} <= _uuids(hosts.uri) and off.uuid in _uuids(
        hosts.uri, "--inactive"
    )
    for path in run_disks + twin_disks + off_disks:
        assert Path(path).is_file(), path
    assert _disk_paths(hv.vm(run.uuid)) == run_disks
    assert _disk_paths(hv.vm(off.uuid)) == off_disks
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert f"VM {run.name!r} ({run.uuid}) was still defined there" in log, log
    assert f"VM {off.name!r} ({off.uuid}) was still defined there" in log, log
    assert f"split brain: VM {twin.name!r} ({twin.uuid}) runs on" in log, log
    assert set(_recovered(tmp_path / "state")) == {twin.uuid}  # kept until resolved

    # the split brain shows in the hosts and plans of the site that saw host 3 go down
    # (it reads host 3 again: the same split brain), and nothing starts the VM anywhere
    h3_id = next(h.id for h in site.hosts() if h.id != hv.hosts()[0].id)
    assert site.host(h3_id).vm_count == 2  # twin and own
    plan = vmctl.plan_evacuation(site.host(h3_id))
    assert plan.moves == ()
    blockers = {b.vm_name: b for b in plan.blockers}
    assert set(blockers) == {twin.name, own.name}
    assert blockers[twin.name].kind is BlockKind.PINNED
    assert "split brain" in blockers[twin.name].reason
    hv.vm(twin.uuid).power_off()  # host 1's copy
    with pytest.raises(vmctl.InvalidState, match="split brain"):
        site.vm(twin.uuid).start()
    assert twin.uuid not in _uuids(hosts.uri)

    # what the user does: power off the copy on the host that came back
    virsh(host3.uri, "destroy", twin.uuid)
    assert [vm.name for vm in site.vms()].count(twin.name) == 1
    assert _uuids(host3.uri, "--all") == {own.uuid}
    assert _recovered(tmp_path / "state") == {}
    site.vm(twin.uuid).start()
    assert twin.uuid in _uuids(hosts.uri)
    for path in twin_disks:
        assert Path(path).is_file(), path


def test_recover_a_killed_libvirtd_on_host_1(
    hv: vmctl.Hypervisor,
    hosts: Any,
    host3: Any,
    kvm_harness: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("VMCTL_STATE_DIR", str(tmp_path / "state"))
    t0 = time.monotonic()
    h3 = vmctl.connect(f"{host3.uri}?pool={hosts.pool}", timeouts=15)
    made: list[str] = []
    leftovers: list[str] = []
    try:

        def spec(name: str, **kw: Any) -> VMSpec:
            return VMSpec(name=REC + name, vcpus=1, memory_mib=64, **kw)

        run = h3.create_vm(spec("run", disks=[DiskSpec(size_mib=8)]), start=True)
        twin = h3.create_vm(spec("twin", disks=[DiskSpec(size_mib=8)]), start=True)
        off = h3.create_vm(spec("off", disks=[DiskSpec(size_mib=8)]))
        own = h3.create_vm(spec("own", disks=[DiskSpec(size_mib=8, pool=REC + "own")]))
        made += [run.uuid, twin.uuid, off.uuid, own.uuid]
        run_disks = _disk_paths(run)
        leftovers = run_disks + _disk_paths(twin) + _disk_paths(off)
        assert run_disks and all(p.startswith(str(hosts.image_dir)) for p in run_disks)
        assert len(host3.qemu_pids()) == 2

        site = vmctl.Site([hv, h3])
        failed = site.host(h3.hosts()[0].id)
        # the inventory the site keeps: a plan reads (and saves) every member's domains
        plan = vmctl.plan_evacuation(failed)
        assert {m.vm_name: m.mode for m in plan.moves} == {
            run.name: MoveMode.LIVE,
            twin.name: MoveMode.LIVE,
            off.name: MoveMode.COLD,
        }
        assert [b.kind for b in plan.blockers] == [BlockKind.LOCAL_STORAGE]

        host3.kill()  # the power cut: libvirtd, virtlogd and QEMU, by PID
        assert host3.qemu_pids() == []
        failed = failed.refresh()
        assert failed.state is HostState.UNREACHABLE
        with pytest.raises(vmctl.InvalidState, match="unreachable"):
            vmctl.plan_recovery(site.host(hv.hosts()[0].id))

        plan = vmctl.plan_recovery(failed)
        assert plan.fence_proof is None
        assert {m.vm_name: (m.mode, m.target_id) for m in plan.moves} == {
            run.name: (MoveMode.RESTART, hv.hosts()[0].id),
            twin.name: (MoveMode.RESTART, hv.hosts()[0].id),
            off.name: (MoveMode.COLD, hv.hosts()[0].id),
        }
        [blocked] = plan.blockers
        assert blocked.vm_name == own.name and blocked.kind is BlockKind.LOCAL_STORAGE
        assert "Fencing: not proven" in str(plan)

        # not confirmed: nothing is started, nothing defined on host 1
        with pytest.raises(vmctl.InvalidState, match="confirm_fenced"):
            vmctl.execute(plan)
        assert not {run.uuid, twin.uuid, off.uuid, own.uuid} & _uuids(hosts.uri, "--all")

        # the recovery itself as an operator runs it, in a new process's Site made of URIs:
        # host 3 does not answer, so the site shows it from what it saved before
        from click.testing import CliRunner

        from vmctl.cli import cli

        uris = [vmctl_uri(hosts.uri, hosts), f"{host3.uri}?pool={hosts.pool}"]
        site_args = [w for u in uris for w in ("--site", u)]
        env = {"VMCTL_STATE_DIR": str(tmp_path / "state"), "VMCTL_URI": ""}
        res = CliRunner().invoke(
            cli,
            [*site_args, "--json", "recover", failed.name, "--confirm-fenced", "--yes"],
            env=env,
        )
        assert res.exit_code == 0, res.output
        report = json.loads(res.stdout)["report"]
        assert report["ok"], report
        assert {r["vm"]: r["outcome"] for r in report["results"]} == {
            run.name: "moved",
            twin.name: "moved",
            off.name: "moved",
        }
        assert run.uuid in _uuids(hosts.uri)  # running, on host 1
        assert off.uuid in _uuids(hosts.uri, "--inactive")
        assert own.uuid not in _uuids(hosts.uri, "--all")
        back = hv.vm(run.uuid)
        assert back.info().state is PowerState.RUNNING
        assert _disk_paths(back) == run_disks  # the same disk files
        assert hv.vm(off.uuid).info().state is PowerState.STOPPED

        again = vmctl.execute(plan, confirm_fenced=True)
        assert {r.outcome for r in again.results} == {MoveOutcome.ALREADY}
        left = vmctl.plan_recovery(site.host(failed.id))
        assert left.moves == () and [b.vm_name for b in left.blockers] == [own.name]

        # each recovery is recorded with the failed member, until it comes back
        recovered = _recovered(tmp_path / "state")
        assert set(recovered) == {run.uuid, twin.uuid, off.uuid}
        assert {r["target"] for r in recovered.values()} == {str(hv.uri)}

        revived = kvm_harness.start_extra_host(keep_domains=True)  # a reboot
        try:
            _host3_returns(
                site,
                hv,
                hosts,
                revived,
                uris,
                tmp_path,
                caplog,
                run=run,
                twin=twin,
                off=off,
                own=own,
            )
        finally:
            revived.stop()
        site.close()
        elapsed = time.monotonic() - t0
        print(f"\nsite recovery test: {elapsed:.1f} s")
    finally:
        host3.kill()
        for uuid in made:
            with contextlib.suppress(vmctl.NotFound):
                hv.vm(uuid).delete(force=True, timeout=60)
        h3.close()
        for path in leftovers:  # a failure before the recovery: the files host 3 made
            Path(path).unlink(missing_ok=True)


def test_kit_recovers_a_failed_libvirtd(hosts: Any, tiny: Any, tmp_path: Path) -> None:
    """The kit's RECOVER- clauses over a Site of host 1 and the third libvirtd, which the kit
    takes down and brings back with the harness's commands (`python -m tests.hosts.kvm
    extra kill|start`, as an operator would name theirs)."""
    from tests.hosts.kvm import HOST3, REPO_ROOT
    from vmctl_conformance import Report

    harness = [sys.executable, "-m", "tests.hosts.kvm", "extra"]
    subprocess.run([*harness, "start"], cwd=REPO_ROOT, check=True, timeout=120)
    try:
        base = {k: v for k, v in os.environ.items() if not k.startswith("VMCTL_")}
        env = {
            **base,
            **hosts.env(tiny),
            "VMCTL_STATE_DIR": str(tmp_path / "state"),
            "PYTHONPATH": str(REPO_ROOT),  # the kit runs the commands elsewhere
        }
        report_path = tmp_path / "kit-recover.json"
        extra = "{python} -m tests.hosts.kvm extra"
        try:
            proc = subprocess.run(
                [
                    str(Path(sys.executable).with_name("vmctl")),
                    "conformance",
                    hosts.uri,
                    "--other-uri",
                    HOST3.uri,
                    "--prefix",
                    "vmctl-sitekit-",
                    "--clause",
                    "RECOVER-",
                    "--opt",
                    f"fail_host={HOST3.netns}",
                    "--opt",
                    f"fail_command={extra} kill",
                    "--opt",
                    f"revive_command={extra} start",
                    "--report",
                    str(report_path),
                ],
                cwd=REPO_ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:  # fail with what the kit printed so far

            def text(b: bytes | str | None) -> str:
                return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")

            pytest.fail(
                f"the kit did not finish in 300 s:\n{text(exc.stdout)[-3000:]}"
                f"{text(exc.stderr)[-3000:]}"
            )
        output = proc.stdout + proc.stderr
        assert report_path.is_file(), output
        report = Report.from_json(report_path.read_text())
        statuses = {c: r.status for c, r in report.results.items() if c.startswith("RECOVER-")}
        assert statuses == {"RECOVER-EXEC-1": "pass", "RECOVER-REFUSE-1": "pass"}, output[-4000:]
        assert not report.leaked, report.leaked
        # kept for the support matrix: joined with the main kit run's kvm-qemu.json there
        report.write(REPORTS / "kvm-qemu-recover.json")
    finally:
        subprocess.run([*harness, "stop"], cwd=REPO_ROOT, check=False, timeout=120)
        # a failed run may leave the kit's disks in the shared directory (their VMs were on
        # host 3): they would stop the next run with this prefix
        names = virsh(hosts.uri, "list", "--all", "--name") + virsh(
            hosts.other_uri, "list", "--all", "--name"
        )
        if "vmctl-sitekit-" not in names:
            for f in Path(hosts.image_dir).glob("vmctl-sitekit-*"):
                f.unlink()
