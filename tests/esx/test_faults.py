"""The fault table, on real pyVmomi fault objects (a support test: the simulator cannot
produce every fault; the ones it can are also checked end to end in the other modules)."""

from __future__ import annotations

import ssl

import pytest
from pyVmomi import vim, vmodl

import vmctl
from vmctl_esx._faults import map_fault


@pytest.mark.parametrize(
    ("fault", "expected", "code"),
    [
        (vim.fault.InvalidLogin(), vmctl.AuthenticationError, "InvalidLogin"),
        (vim.fault.NotAuthenticated(), vmctl.AuthenticationError, "NotAuthenticated"),
        (vim.fault.InvalidPowerState(), vmctl.InvalidState, "InvalidPowerState"),
        (vim.fault.ToolsUnavailable(), vmctl.InvalidState, "ToolsUnavailable"),
        (vmodl.fault.ManagedObjectNotFound(), vmctl.NotFound, "ManagedObjectNotFound"),
        (vim.fault.DuplicateName(name="x"), vmctl.AlreadyExists, "DuplicateName"),
        (vmodl.fault.NotSupported(), vmctl.NotSupported, "NotSupported"),
        (
            vim.fault.InsufficientResourcesFault(),
            vmctl.InsufficientResources,
            "InsufficientResourcesFault",
        ),
        (
            vim.fault.InsufficientMemoryResourcesFault(),
            vmctl.InsufficientResources,
            "InsufficientMemoryResourcesFault",
        ),
        (vim.fault.HostConnectFault(), vmctl.ConnectionError, "HostConnectFault"),
        (vim.fault.TaskInProgress(), vmctl.Conflict, "TaskInProgress"),
        (vim.fault.FileNotFound(), vmctl.NotFound, "FileNotFound"),
        (vmodl.fault.InvalidArgument(), vmctl.ValidationError, None),
        (vmodl.fault.SystemError(reason="boom"), vmctl.BackendError, "SystemError"),
    ],
)
def test_fault_table(fault: Exception, expected: type[Exception], code: str | None) -> None:
    fault.msg = "server text"  # type: ignore[attr-defined]
    err = map_fault(fault, "do a thing")
    assert type(err) is expected
    assert err.vendor_code == code
    assert "do a thing" in str(err) and "server text" in str(err)


def test_tools_unavailable_says_why() -> None:
    err = map_fault(vim.fault.ToolsUnavailable(), "shut down VM 'x'")
    assert "VMware Tools are not running" in str(err)


def test_tls_failures_are_connection_errors() -> None:
    err = map_fault(ssl.SSLCertVerificationError(1, "certificate verify failed"), "connect")
    assert isinstance(err, vmctl.ConnectionError) and "cafile" in str(err)
    assert isinstance(
        map_fault(ConnectionRefusedError(111, "refused"), "connect"), vmctl.ConnectionError
    )
