"""Fixtures for the KVM driver's tests: the libvirt hosts from tests/hosts/kvm.py (started once
per session, stopped at the end if this session started them), connections through vmctl,
the tiny guest, and virsh as an independent second client."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

import vmctl
from tests.kvm.kvm_helpers import PREFIX, vmctl_uri


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/kvm/" in str(item.path):
            item.add_marker(pytest.mark.kvm)


def _libvirt_missing() -> str | None:
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not installed: pip install 'vmctl[kvm]'"
    return None


def _host_missing() -> str | None:
    missing = _libvirt_missing()
    if missing:
        return missing
    if os.geteuid() != 0:
        return "the libvirt test hosts need root"
    for exe in ("libvirtd", "virtlogd", "qemu-system-x86_64", "virsh"):
        if shutil.which(exe) is None:
            return f"{exe} is not installed: run tests/hosts/install-kvm.sh"
    return None


@pytest.fixture(scope="session")
def kvm_harness() -> Any:
    """The harness module (tests/hosts/kvm.py)."""
    reason = _host_missing()
    if reason:
        pytest.skip(reason)
    from tests.hosts import kvm

    return kvm


@pytest.fixture(scope="session")
def hosts(kvm_harness: Any) -> Iterator[Any]:
    """Both libvirt hosts (started here, or reused when already running)."""
    with kvm_harness.running_hosts(second_host=True) as h:
        yield h


@pytest.fixture(scope="session")
def hv(hosts: Any) -> Iterator[vmctl.Hypervisor]:
    with vmctl.connect(vmctl_uri(hosts.uri, hosts)) as h:
        yield h
        _cleanup(h)


@pytest.fixture(scope="session")
def other(hosts: Any) -> Iterator[vmctl.Hypervisor]:
    if not hosts.other_uri:
        pytest.skip("the harness started no second libvirt host")
    with vmctl.connect(vmctl_uri(hosts.other_uri, hosts)) as h:
        yield h
        _cleanup(h)


@pytest.fixture
def test_hv() -> Iterator[vmctl.Hypervisor]:
    """libvirt's own test driver (in-process fake hypervisor)."""
    reason = _libvirt_missing()
    if reason:
        pytest.skip(reason)
    with vmctl.connect("test:///default") as h:
        yield h
        _cleanup(h)


@pytest.fixture(scope="session")
def tiny(kvm_harness: Any) -> Any:
    try:
        return kvm_harness.tiny_guest()
    except kvm_harness.GuestBuildError as exc:
        pytest.skip(f"the tiny guest cannot be built here: {exc}")


def _cleanup(h: vmctl.Hypervisor) -> None:
    for info in h.list_vms():
        if info.name.startswith(PREFIX):
            try:
                h.vm(info.uuid).delete(force=True, timeout=60)
            except vmctl.VmctlError as exc:  # pragma: no cover - reported, not hidden
                print(f"cleanup of {info.name} on {h.uri} failed: {exc}")


def restart_libvirtd(harness: Any, hosts: Any, *, start: bool = True) -> None:
    """Stop host 1's libvirtd (by the PID this session started it with) and start it again.

    The harness has no restart of its own; this uses its Proc.stop() and its private
    _start_host1() (the same code running_hosts() starts it with), and swaps the new process
    into ``hosts.processes`` so that the session's teardown stops it.
    """
    procs = [p for p in hosts.processes if p.role == "libvirtd"]
    if not procs:
        pytest.skip(
            "libvirtd was not started by this test session (a running one was "
            "reused), so it is not ours to restart"
        )
    for p in procs:
        p.stop()
        hosts.processes.remove(p)
    if start:
        start_libvirtd(harness, hosts)


def start_libvirtd(harness: Any, hosts: Any) -> None:
    # _start_host1 refuses to start when a libvirtd it did not start runs: hand it the
    # session's processes (the second host's libvirtd among them) as its own.
    started: list[Any] = list(hosts.processes)
    harness._start_host1(started, {})
    hosts.processes.extend(p for p in started if p not in hosts.processes)
