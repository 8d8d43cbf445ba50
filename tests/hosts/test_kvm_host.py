"""Smoke tests for the KVM/QEMU host harness (tests/hosts/kvm.py), through libvirt-python only.

Run as root after tests/hosts/install-kvm.sh:
    pytest -p no:cacheprovider -m kvm tests/hosts/test_kvm_host.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed")

try:
    from tests.hosts import kvm
except ModuleNotFoundError:  # pytest imported us as `hosts.test_kvm_host` (no tests/__init__)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.hosts import kvm

pytestmark = pytest.mark.kvm


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (starts libvirtd)"
    for exe in ("libvirtd", "virtlogd", "qemu-system-x86_64", "virsh"):
        if shutil.which(exe) is None:
            return f"{exe} not installed: run tests/hosts/install-kvm.sh"
    return None


@pytest.fixture(scope="module")
def hosts() -> Iterator[kvm.KvmHosts]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    with kvm.running_hosts(second_host=True) as h:
        yield h


def _virsh(uri: str, *args: str) -> str:
    res = subprocess.run(
        ["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=60, check=True
    )
    return res.stdout


def _cleanup(conn: Any, name: str) -> None:
    try:
        dom = conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            dom.undefine()
    except libvirt.libvirtError as exc:
        # A transient domain may vanish between any two of these calls (its QEMU just ended).
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise


def test_hosts_answer(hosts: kvm.KvmHosts) -> None:
    assert hosts.other_uri is not None
    c1 = libvirt.open(hosts.uri)
    c2 = libvirt.open(hosts.other_uri)
    try:
        assert c1.getCapabilities() != c2.getCapabilities()
        assert c1.networkLookupByName(hosts.network).isActive()
        assert c2.networkLookupByName(hosts.network).isActive()
        assert c1.storagePoolLookupByName(hosts.pool).isActive()
        assert c2.storagePoolLookupByName(hosts.pool).isActive()
    finally:
        c1.close()
        c2.close()
    assert "vmctl-test" in _virsh(hosts.other_uri, "net-list", "--name")


def test_blank_domain_live_migration(hosts: kvm.KvmHosts) -> None:
    assert hosts.other_uri is not None and hosts.other_migrate_uri is not None
    name = "vmctl-harness-blank"
    c1 = libvirt.open(hosts.uri)
    c2 = libvirt.open(hosts.other_uri)
    try:
        _cleanup(c1, name)
        _cleanup(c2, name)
        dom = c1.defineXML(kvm.blank_domain_xml(name, kvm=hosts.kvm_available))
        t0 = time.monotonic()
        dom.create()
        start_s = time.monotonic() - t0
        assert dom.isActive()
        assert "running" in _virsh(hosts.uri, "domstate", name)

        flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST
        flags |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        t0 = time.monotonic()
        dom2 = dom.migrate3(c2, hosts.migrate_params(to_other=True), flags)
        there_s = time.monotonic() - t0
        assert dom2.isActive()
        assert "running" in _virsh(hosts.other_uri, "domstate", name)
        with pytest.raises(libvirt.libvirtError):
            c1.lookupByName(name)

        t0 = time.monotonic()
        dom1 = dom2.migrate3(c1, hosts.migrate_params(to_other=False), flags)
        back_s = time.monotonic() - t0
        assert dom1.isActive()
        assert "running" in _virsh(hosts.uri, "domstate", name)
        print(
            f"\nblank domain ({'kvm' if hosts.kvm_available else 'tcg'}): start "
            f"{start_s:.2f} s, migrate to host 2 {there_s:.2f} s, back {back_s:.2f} s"
        )
    finally:
        _cleanup(c1, name)
        _cleanup(c2, name)
        c1.close()
        c2.close()


def test_a_console_line_counts_once_its_newline_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # virtlogd gets the serial port a few bytes at a time: a half-written marker line once
    # reached the test below without its address.
    monkeypatch.setattr(kvm, "CONSOLE_DIR", tmp_path)
    log = kvm.console_log_path("g")
    log.write_text("boot\r\nVMCTL-TINY-READY ip=10.0")
    with pytest.raises(TimeoutError):
        kvm.wait_console("g", "VMCTL-TINY-READY", timeout=0.3)
    log.write_text("boot\r\nVMCTL-TINY-READY ip=10.0.0.7 uptime=1.0\r\n")
    assert kvm.wait_console("g", "VMCTL-TINY-READY", 1) == "VMCTL-TINY-READY ip=10.0.0.7 uptime=1.0"


def test_tiny_guest_dhcp_and_acpi_shutdown(hosts: kvm.KvmHosts) -> None:
    try:
        guest = kvm.tiny_guest()
    except kvm.GuestBuildError as exc:
        pytest.skip(f"cannot build the tiny guest: {exc}")
    name = "vmctl-harness-tiny"
    conn = libvirt.open(hosts.uri)
    try:
        _cleanup(conn, name)
        dom = conn.createXML(kvm.tiny_guest_xml(name, guest, network=hosts.network), 0)
        t0 = time.monotonic()
        line = kvm.wait_console(name, guest.ready_marker, timeout=60)
        boot_s = time.monotonic() - t0
        ip = line.split("ip=", 1)[1].split()[0]

        addrs: dict[str, object] = {}
        deadline = time.monotonic() + 10
        while not addrs and time.monotonic() < deadline:
            addrs = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE)
            time.sleep(0.2)
        lease_ips = [
            a["addr"]
            for iface in addrs.values()
            for a in iface["addrs"]  # type: ignore
        ]
        assert ip in lease_ips
        assert ip in _virsh(hosts.uri, "domifaddr", name, "--source", "lease")

        agent_ok = False
        if guest.has_agent:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not agent_ok:
                try:
                    agent = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT)
                    agent_ok = any(
                        a["addr"] == ip for i in agent.values() for a in i["addrs"] or []
                    )
                except libvirt.libvirtError:
                    time.sleep(0.5)

        t0 = time.monotonic()
        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        deadline = time.monotonic() + 30
        gone = False
        while time.monotonic() < deadline and not gone:
            # A transient domain is first inactive, then removed once libvirtd has
            # cleaned up after QEMU: wait for the removal, not only the stop.
            try:
                conn.lookupByName(name)
            except libvirt.libvirtError:
                gone = True
            else:
                time.sleep(0.1)
        shutdown_s = time.monotonic() - t0
        assert gone, "the transient guest did not go away after its ACPI shutdown"
        print(
            f"\ntiny guest (TCG): DHCP address {ip} after {boot_s:.1f} s, agent "
            f"{'answers' if agent_ok else 'not seen'}, ACPI shutdown {shutdown_s:.1f} s"
        )
        if guest.has_agent:
            assert agent_ok, "qemu-ga in the tiny guest did not answer"
    finally:
        _cleanup(conn, name)
        conn.close()
