from __future__ import annotations

import os

import pytest

import vmctl
from vmctl import REQUIRED_CAPABILITIES
from vmctl_conformance import clause
from vmctl_conformance._kit import Kit


@clause("CONN-OPEN-1")
def test_connect_declares_required_capabilities(kit: Kit) -> None:
    assert kit.hv.capabilities >= REQUIRED_CAPABILITIES


@clause("CONN-HOST-1")
def test_host_info(kit: Kit) -> None:
    info = kit.hv.host_info()
    assert info.name
    assert info.hypervisor
    assert info.cpus > 0
    assert info.memory_mib > 0


@clause("CONN-CLOSE-1")
def test_close_is_idempotent_and_final(vmctl_uri: str) -> None:
    hv = vmctl.connect(vmctl_uri)
    hv.close()
    hv.close()
    with pytest.raises(vmctl.VmctlError):
        hv.list_vms()


@clause("CONN-SECRET-1")
def test_no_password_in_repr_or_errors(kit: Kit, vmctl_uri: str) -> None:
    password = os.environ.get("VMCTL_PASSWORD") or "kit-canary-password-7f3a"
    hv = vmctl.connect(vmctl_uri, password=password)
    try:
        shown = [str(hv), repr(hv), str(hv.uri), repr(hv.uri)]
        with pytest.raises(vmctl.NotFound) as err:
            hv.vm(kit.name("missing"))
        shown += [str(err.value), repr(err.value)]
        for text in shown:
            assert password not in text
    finally:
        hv.close()
