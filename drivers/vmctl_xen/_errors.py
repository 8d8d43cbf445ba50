"""XenAPI failures mapped into vmctl's exception tree, by error code.

Codes and their parameters are xapi's (ocaml/idl/datamodel_errors.ml); the whole
ErrorDescription stays in the message and the XenAPI.Failure stays as ``__cause__``.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import xmlrpc.client
from collections.abc import Sequence

from vmctl import (
    AlreadyExists,
    AuthenticationError,
    BackendError,
    Conflict,
    ConnectionError,
    InsufficientResources,
    InvalidState,
    NotFound,
    NotSupported,
    OperationTimeout,
    PowerState,
    VmctlError,
)

from ._transport import was_sent

#: XenAPI power states (ocaml/idl/datamodel_vm.ml: vm_power_state) -> vmctl. Xen has no
#: crashed state: a crashed domain follows actions_after_crash (restart or destroy = halt).
POWER_STATES = {
    "running": PowerState.RUNNING,
    "paused": PowerState.PAUSED,
    "suspended": PowerState.SUSPENDED,
    "halted": PowerState.STOPPED,
}


def power_state(text: str) -> PowerState:
    return POWER_STATES.get(text.strip().lower(), PowerState.UNKNOWN)


_NOT_FOUND = {"HANDLE_INVALID", "UUID_INVALID", "VM_NOT_FOUND", "SR_NOT_FOUND"}
_AUTH = {
    "SESSION_AUTHENTICATION_FAILED",
    "RBAC_PERMISSION_DENIED",
    "PERMISSION_DENIED",
}
_INVALID_STATE = {
    # the request does not fit the VM's state or its guest (xapi_vm_lifecycle.ml)
    "VM_BAD_POWER_STATE",
    "VM_LACKS_FEATURE",
    "VM_LACKS_FEATURE_SHUTDOWN",
    "VM_LACKS_FEATURE_SUSPEND",
    "VM_LACKS_FEATURE_VCPU_HOTPLUG",
    "VM_MISSING_PV_DRIVERS",
    "VM_NON_SUSPENDABLE",
    "VM_OLD_PV_DRIVERS",
    "VM_FAILED_SHUTDOWN_ACKNOWLEDGMENT",
    "VM_SHUTDOWN_TIMEOUT",
    "VM_IS_TEMPLATE",
    "VM_IS_SNAPSHOT",
    "ONLY_REVERT_SNAPSHOT",
    "VM_HAS_NO_SUSPEND_VDI",
    "VM_IS_IMMOBILE",
    "VM_HAS_PCI_ATTACHED",
    "VM_HAS_VGPU",
    "VM_HAS_VUSBS",
    "DEVICE_ALREADY_ATTACHED",
    "DEVICE_ALREADY_DETACHED",
    "DEVICE_DETACH_REJECTED",
    "VBD_NOT_UNPLUGGABLE",
    "VIF_NOT_UNPLUGGABLE",
    "HOST_DISABLED",  # the target host is disabled (in maintenance): xapi_vm_helpers.ml
    "HOST_IS_LIVE",  # declare_dead / power_state_reset on a host xapi sees alive
    "DOMAIN_EXISTS",  # power_state_reset of a VM running on the master
    "CANNOT_RESET_CONTROL_DOMAIN",
}
_RESOURCES = {
    "HOST_NOT_ENOUGH_FREE_MEMORY",
    "SR_FULL",
    "HOST_NOT_ENOUGH_PCPUS",
    "VM_REQUIRES_SR",
    "VM_REQUIRES_NETWORK",
    "NO_HOSTS_AVAILABLE",
    "VM_MEMORY_SIZE_TOO_LOW",
    "VM_TOO_MANY_VCPUS",
}
_CONFLICT = {
    "OPERATION_NOT_ALLOWED",
    "OPERATION_BLOCKED",
    "OTHER_OPERATION_IN_PROGRESS",
    "VDI_IN_USE",
    "SR_HAS_NO_PBDS",
    "HOST_OFFLINE",
}
_EXISTS = {"DEVICE_ALREADY_EXISTS", "MAP_DUPLICATE_KEY"}
_UNSUPPORTED = {
    "MESSAGE_METHOD_UNKNOWN",
    "MESSAGE_REMOVED",
    "MESSAGE_DEPRECATED",
    "FEATURE_RESTRICTED",
    "LICENCE_RESTRICTION",
    "SR_OPERATION_NOT_SUPPORTED",
}


def details(exc: BaseException) -> list[str]:
    """A XenAPI.Failure's ErrorDescription (all strings)."""
    d = getattr(exc, "details", None)
    if isinstance(d, (list, tuple)) and d:
        return [str(x) for x in d]
    return []


def _states(text: str) -> set[PowerState]:
    # xapi joins the expected states with ", " (report_power_state_error) or ";"
    # (assert_initial_power_state_in).
    parts = [p for chunk in text.split(";") for p in chunk.split(",")]
    return {power_state(p) for p in parts if p.strip()} - {PowerState.UNKNOWN}


def from_failure(what: str, desc: Sequence[str]) -> VmctlError:
    """The vmctl exception for one ErrorDescription [code, *params]."""
    code = desc[0] if desc else "UNKNOWN"
    params = list(desc[1:])
    msg = f"{what}: XenAPI {code}" + (f" {params}" if params else "")
    if code == "VM_BAD_POWER_STATE" and len(params) >= 3:
        current = power_state(params[2])
        allowed = _states(params[1])
        return InvalidState(
            f"{what}: the VM is {current.value}; XenAPI allows it only when "
            f"{' or '.join(sorted(s.value for s in allowed)) or params[1]} "
            f"({code} {params})",
            current=current,
            allowed=allowed,
            vendor_code=code,
        )
    if code == "SESSION_INVALID":
        # The host refused the call before acting on it: safe to repeat once the core has
        # logged in again (Reconnectable.reconnect).
        return ConnectionError(
            f"{msg}: the XenAPI session has expired or was closed on the host",
            sent=False,
            vendor_code=code,
        )
    if code == "HOST_IS_SLAVE":
        return ConnectionError(f"{msg}: connect to the pool master instead", vendor_code=code)
    if code in _INVALID_STATE:
        return InvalidState(msg, vendor_code=code)
    if code in _NOT_FOUND:
        return NotFound(msg, vendor_code=code)
    if code in _AUTH:
        return AuthenticationError(msg, vendor_code=code)
    if code in _RESOURCES:
        return InsufficientResources(msg, vendor_code=code)
    if code in _CONFLICT:
        return Conflict(msg, vendor_code=code)
    if code in _EXISTS:
        return AlreadyExists(msg, vendor_code=code)
    if code in _UNSUPPORTED:
        err = NotSupported(msg)
        err.vendor_code = code
        return err
    if code == "TASK_CANCELLED":
        return OperationTimeout(msg, vendor_code=code)
    return BackendError(msg, vendor_code=code)


def from_exception(what: str, exc: BaseException) -> VmctlError:
    """The vmctl exception for anything the SDK or the socket raised."""
    desc = details(exc)
    if desc:
        return from_failure(what, desc)
    sent = was_sent(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectionError(
            f"{what}: the host's TLS certificate is not trusted ({exc.verify_message}); give "
            "cafile= (or VMCTL_CAFILE) or thumbprint= (VMCTL_THUMBPRINT, SHA-256), or "
            "insecure=True to skip the check",
            sent=False,
        )
    if isinstance(exc, ssl.SSLError):
        return ConnectionError(f"{what}: TLS failed: {exc}", sent=sent)
    if isinstance(exc, TimeoutError | socket.timeout):
        if sent is False:
            return ConnectionError(
                f"{what}: the host did not accept a connection in time ({exc})", sent=False
            )
        return OperationTimeout(
            f"{what}: the host did not answer in time ({exc}); the request was sent and may "
            "still be carried out"
        )
    if isinstance(exc, OSError | http.client.HTTPException):
        return ConnectionError(
            f"{what}: cannot reach the host: {type(exc).__name__}: {exc}"
            + ("" if sent is False else " (the request may have reached it)"),
            sent=sent,
        )
    if isinstance(exc, xmlrpc.client.ProtocolError):
        return ConnectionError(f"{what}: HTTP {exc.errcode} {exc.errmsg}", sent=None)
    if isinstance(exc, xmlrpc.client.Fault):
        return BackendError(f"{what}: XML-RPC fault {exc.faultCode}: {exc.faultString}")
    return BackendError(f"{what}: {type(exc).__name__}: {exc}")
