"""Disk leases (libvirt's lockd lock manager) keep a half-dead KVM host's VMs from being
started twice, even when the caller wrongly confirms the fencing.

Two libvirtds of this test's own (tests/hosts/kvm.py HOST4 and HOST5: network namespaces of
their own, never the session's shared hosts), each with ``lock_manager = "lockd"`` and a
virtlockd of its own, hold their leases in one lockspace directory (indirect: a file per disk,
named by the SHA-256 of its path) and share the disk directory. Host 4 runs two VMs; then its
libvirtd alone is killed by PID (a cut management network): its QEMUs, and the leases
virtlockd holds for them, stay. A recovery onto host 5 with ``confirm_fenced=True`` must start
neither: one VM runs its QEMU without QEMU's own image locking, so only the lease refuses it
(on one machine QEMU's image locks refuse before libvirt asks virtlockd:
``qemu_without_image_locks``); the other is refused by QEMU's image lock. Both are reported as
InvalidState naming the VM and the holder, and nothing is left defined on host 5. Once host
4's QEMUs are killed too, the leases go with them and the same plan restarts both VMs on host
5 from the same disk files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmctl
from vmctl import DiskSpec, HostState, MoveMode, MoveOutcome, PowerState, VMSpec

pytestmark = pytest.mark.kvm

LEASE = "vmctl-leases-"
WAIT_S = 120.0  # generous: the machine is shared by several sessions


@pytest.fixture
def lease_hosts(kvm_harness: Any) -> Iterator[tuple[Any, Any]]:
    """Host 4 and host 5 (disk leases on), the shared pool active on both; stopped by PID,
    their namespaces, this test's disks and the lockspace removed, also on a failure."""
    started: list[Any] = []
    try:
        for h in (kvm_harness.HOST4, kvm_harness.HOST5):
            started.append(kvm_harness.start_extra_host(h))
            kvm_harness.ensure_pool(started[-1].uri)
        yield started[0], started[1]
    finally:
        for extra in started:
            extra.stop()  # libvirtd, virtlogd, virtlockd and every QEMU of its namespace
        for f in Path(kvm_harness.IMAGE_DIR).glob(LEASE + "*"):
            f.unlink()
        shutil.rmtree(kvm_harness.LEASES_DIR, ignore_errors=True)
        kvm_harness.QEMU_NO_IMAGE_LOCKS.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # its directory, when nothing else is in it
            kvm_harness.QEMU_NO_IMAGE_LOCKS.parent.rmdir()


def _lease_file(leases_dir: Path, disk: str) -> Path:
    """The indirect lockspace's file for ``disk`` (qemu-lockd.conf file_lockspace_dir)."""
    return leases_dir / hashlib.sha256(disk.encode()).hexdigest()


def _lease_held(leases_dir: Path, disk: str) -> bool:
    """Whether some virtlockd holds the lease on ``disk``: an exclusive fcntl lock of our
    own on its lockspace file is refused (released at once when it is not)."""
    path = _lease_file(leases_dir, disk)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # drops our lock, if we got it
    return False


def _wait(what: str, check: Any) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S:.0f} s: {what}")
        time.sleep(0.2)


def _defined(uri: str) -> set[str]:
    import libvirt

    conn = libvirt.open(uri)
    try:
        return {d.UUIDString() for d in conn.listAllDomains(0)}
    finally:
        conn.close()


def _set_emulator(uri: str, uuid: str, emulator: Path) -> None:
    """Redefine the (stopped) domain with ``emulator`` as its QEMU."""
    import libvirt

    conn = libvirt.open(uri)
    try:
        xml = conn.lookupByUUIDString(uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        xml, n = re.subn(r"<emulator>[^<]*</emulator>", f"<emulator>{emulator}</emulator>", xml)
        assert n == 1, xml
        conn.defineXML(xml)
    finally:
        conn.close()


def test_a_held_disk_lease_refuses_a_wrongly_confirmed_recovery(
    kvm_harness: Any,
    lease_hosts: tuple[Any, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VMCTL_STATE_DIR", str(tmp_path / "state"))
    host4, host5 = lease_hosts
    leases = Path(kvm_harness.LEASES_DIR)
    pool = kvm_harness.POOL_NAME
    h4 = vmctl.connect(f"{host4.uri}?pool={pool}", timeouts=30)
    h5 = vmctl.connect(f"{host5.uri}?pool={pool}", timeouts=30)
    site = vmctl.Site([h5, h4])
    try:

        def spec(name: str) -> VMSpec:
            return VMSpec(name=LEASE + name, vcpus=1, memory_mib=64, disks=[DiskSpec(size_mib=8)])

        leased = h4.create_vm(spec("leased"))  # only its lease guards it (see the module)
        _set_emulator(host4.uri, leased.uuid, kvm_harness.qemu_without_image_locks())
        leased.start()
        locked = h4.create_vm(spec("locked"), start=True)  # QEMU's image lock guards it too
        disks = {vm.uuid: [d.path for d in vm.config().disks if d.path] for vm in (leased, locked)}
        assert all(len(paths) == 1 for paths in disks.values()), disks
        for paths in disks.values():  # host 4's virtlockd holds a lease on each disk
            assert _lease_held(leases, paths[0])
        qemus = sorted(host4.qemu_pids())
        assert len(qemus) == 2

        failed = site.host(h4.hosts()[0].id)
        target = h5.hosts()[0].id
        vmctl.plan_evacuation(failed)  # the site reads (and keeps) host 4's definitions

        host4.cut_management()  # libvirtd killed by PID; QEMUs, virtlogd, virtlockd stay
        assert sorted(host4.qemu_pids()) == qemus
        failed = failed.refresh()
        assert failed.state is HostState.UNREACHABLE
        plan = vmctl.plan_recovery(failed)
        assert plan.fence_proof is None
        assert {m.vm_name: (m.mode, m.target_id) for m in plan.moves} == {
            leased.name: (MoveMode.RESTART, target),
            locked.name: (MoveMode.RESTART, target),
        }

        # the caller wrongly confirms that host 4 is fenced: host 5 refuses both starts
        report = vmctl.execute(plan, confirm_fenced=True, on_fail="skip")
        assert not report.ok
        results = {r.move.vm_name: r for r in report.results}
        assert {n: r.outcome for n, r in results.items()} == {
            leased.name: MoveOutcome.FAILED,
            locked.name: MoveOutcome.FAILED,
        }, report
        for vm in (leased, locked):
            assert results[vm.name].attempts == 1  # refused for good, not retried
            error = results[vm.name].error or ""
            assert f"VM {vm.name!r} was not started on {host5.uri}" in error, error
            assert "may still be running there" in error, error
            assert "Nothing is left defined here" in error, error
        lease_error = results[leased.name].error or ""
        assert "another host still holds its disk lease (virtlockd)" in lease_error
        assert "Lockspace resource" in lease_error
        assert "write lock" in (results[locked.name].error or "")
        assert not {leased.uuid, locked.uuid} & _defined(host5.uri)
        assert host5.qemu_pids() == []
        assert sorted(host4.qemu_pids()) == qemus  # still running on the half-dead host
        for paths in disks.values():
            assert _lease_held(leases, paths[0])

        # host 4 really goes down: its QEMUs die, and virtlockd drops their leases
        for pid in qemus:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait("host 4's QEMUs gone", lambda: host4.qemu_pids() == [])
        for paths in disks.values():
            disk = paths[0]
            _wait(f"the lease on {disk} released", lambda d=disk: not _lease_held(leases, d))

        report = vmctl.execute(plan, confirm_fenced=True, on_fail="skip")
        assert report.ok, report
        assert {r.move.vm_name: r.outcome for r in report.results} == {
            leased.name: MoveOutcome.MOVED,
            locked.name: MoveOutcome.MOVED,
        }
        for vm in (leased, locked):
            back = h5.vm(vm.uuid)
            assert back.info().state is PowerState.RUNNING
            assert [d.path for d in back.config().disks if d.path] == disks[vm.uuid]
            assert _lease_held(leases, disks[vm.uuid][0])  # now host 5's virtlockd holds it
        assert len(host5.qemu_pids()) == 2
    finally:
        site.close()
        h4.close()
        h5.close()
