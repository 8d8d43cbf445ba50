"""`.hosts/esx.env` and `.hosts/xen.env` set the generic VMCTL_* variables (what the kit and
the CLI read) and also names of their own, so sourcing both leaves each backend's values
reachable."""

from __future__ import annotations

import shlex
import subprocess
from types import SimpleNamespace

import pytest

from tests.hosts import esx, hyperv, xen
from tests.hosts._files import shell_exports, shown

GENERIC = {
    "VMCTL_URI",
    "VMCTL_OTHER_URI",
    "VMCTL_PASSWORD",
    "VMCTL_CAFILE",
    "VMCTL_THUMBPRINT",
    "VMCTL_KIT_OPTIONS",
}


def _esx_lines() -> list[str]:
    vcenter = SimpleNamespace(
        host_uris=["vcenter://vmctl@127.0.0.1:1/DC0/C/H0", "vcenter://vmctl@127.0.0.1:1/DC0/C/H1"],
        password="esx-pw",
        cafile="/esx/ca.pem",
        thumbprint="AA:AA",
    )
    standalone = SimpleNamespace(uri="esx://vmctl@127.0.0.1:2")
    return esx.env_lines(vcenter, standalone)  # type: ignore[arg-type]


def _xen_lines() -> list[str]:
    sim = SimpleNamespace(
        host_uri="xen://root@127.0.0.1:3/?host=xenhost1",
        other_uri="xen://root@127.0.0.1:3/?host=xenhost2",
        uri="xen://root@127.0.0.1:3",
        password="xen-pw",
        cafile="/xen/cert.pem",
        thumbprint="BB:BB",
    )
    return xen.env_lines(sim)  # type: ignore[arg-type]


def _hyperv_lines() -> list[str]:
    sim = hyperv.HypervSim(
        pid=0,
        urls=["https://127.0.0.1:4/wsman", "https://127.0.0.1:5/wsman"],
        ports=[4, 5],
        hosts=["HVHOST1", "HVHOST2"],
        cafile="/hv/cert.pem",
        thumbprint="CC:CC",
        username="Administrator",
        password="hv-pw",
        tls=True,
    )
    return hyperv.env_lines(sim)


def _names(lines: list[str]) -> set[str]:
    return {shlex.split(line)[1].split("=", 1)[0] for line in lines}


def test_each_backend_has_names_of_its_own() -> None:
    esx_names, xen_names = _names(_esx_lines()), _names(_xen_lines())
    assert esx_names >= GENERIC and xen_names >= GENERIC
    assert esx_names & xen_names == GENERIC
    assert {"VMCTL_VCENTER_URI", "VMCTL_ESX_URI", "VMCTL_ESX_PASSWORD"} <= esx_names
    assert {"VMCTL_XEN_URI", "VMCTL_XEN_POOL_URI", "VMCTL_XEN_PASSWORD"} <= xen_names
    hyperv_names = _names(_hyperv_lines())
    assert hyperv_names >= GENERIC
    assert hyperv_names & esx_names == hyperv_names & xen_names == GENERIC
    assert {"VMCTL_HYPERV_URI", "VMCTL_HYPERV_PASSWORD", "VMCTL_HYPERV_KIT_OPTIONS"} <= hyperv_names


def test_sourcing_both_keeps_each_backends_values() -> None:
    script = "\n".join([*_esx_lines(), *_xen_lines()]) + (
        '\necho "$VMCTL_VCENTER_URI|$VMCTL_ESX_PASSWORD|$VMCTL_XEN_URI|$VMCTL_XEN_PASSWORD'
        '|$VMCTL_URI"'
    )
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip().split("|") == [
        "vcenter://vmctl@127.0.0.1:1/DC0/C/H0",
        "esx-pw",
        "xen://root@127.0.0.1:3/?host=xenhost1",
        "xen-pw",
        "xen://root@127.0.0.1:3/?host=xenhost1",  # the generic one: the last file sourced
    ]


def test_passwords_are_masked_on_the_terminal() -> None:
    text = shown("\n".join(_esx_lines() + _xen_lines() + _hyperv_lines()))
    assert "esx-pw" not in text and "xen-pw" not in text and "hv-pw" not in text


def test_kit_options_do_not_carry_over_from_another_env_file() -> None:
    """Each file sets VMCTL_KIT_OPTIONS: a Xen guest kernel must not reach an ESX run; the
    Xen value stays under VMCTL_XEN_KIT_OPTIONS."""
    script = "\n".join([*_xen_lines(), *_esx_lines()]) + (
        '\necho "[$VMCTL_KIT_OPTIONS]|$VMCTL_XEN_KIT_OPTIONS"'
    )
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    kit, xen_kit = out.stdout.strip().split("|")
    words = dict(w.split("=", 1) for w in shlex.split(kit[1:-1]))
    # the ESX options, and the cluster of the two hosts for the kit's HOST/EVAC clauses
    assert words == {**esx.KIT_OPTIONS, "hosts_uri": "vcenter://vmctl@127.0.0.1:1/DC0/C"}
    assert "boot_kernel" not in kit
    assert shlex.split(xen_kit) == [f"{k}={v}" for k, v in xen.KIT_OPTIONS.items()]


def test_kvm_env_carries_the_shared_network_pool_and_tiny_guest() -> None:
    from pathlib import Path

    from vmctl_conformance._defaults import parse_words

    kvm = pytest.importorskip("tests.hosts.kvm")  # needs libvirt-python, not a libvirtd
    hosts = kvm.KvmHosts(
        uri=kvm.URI,
        other_uri=kvm.OTHER_URI,
        network=kvm.NETWORK_NAME,
        pool=kvm.POOL_NAME,
        image_dir=kvm.IMAGE_DIR,
        kvm_available=False,
        kvm_is_pvm=False,
        migrate_uri="",
        other_migrate_uri=None,
    )
    guest = kvm.TinyGuest(
        kernel=Path("/g/vmlinuz"),
        initrd=Path("/g/initrd.gz"),
        cmdline=kvm.GUEST_CMDLINE,
        versions={},
        has_agent=True,
    )
    script = "\n".join(shell_exports(hosts.env(guest))) + '\necho "$VMCTL_KIT_OPTIONS"'
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert parse_words(out.stdout.strip()) == {
        "network": kvm.NETWORK_NAME,
        "pool": kvm.POOL_NAME,
        "boot_kernel": "/g/vmlinuz",
        "boot_initrd": "/g/initrd.gz",
        "boot_cmdline": kvm.GUEST_CMDLINE,
    }
    assert "boot_kernel" not in hosts.env()["VMCTL_KIT_OPTIONS"]  # no guest built
