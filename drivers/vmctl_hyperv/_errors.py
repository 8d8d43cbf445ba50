"""Hyper-V's answers mapped into vmctl's exception tree (the original kept as __cause__).

Return codes of the Msvm_* methods (HV2 method pages, e.g. requeststatechange-msvm-
computersystem, definesystem-msvm-virtualsystemmanagementservice): 0 Completed with No
Error, 4096 Method Parameters Checked - Job Started, 32768 Failed, 32769 Access Denied,
32770 Not Supported, 32771 Status is unknown, 32772 Timeout, 32773 Invalid parameter,
32774 System is in use, 32775 Invalid state for this operation, 32776 Incorrect data type,
32777 System is not available, 32778 Out of memory, 32779 File not found, 32780 The system
is not ready (InitiateShutdown), 32782 Shutdown in progress. A failed job
(Msvm_ConcreteJob JobState 8/9/10) carries the same codes in ErrorCode with
ErrorDescription.
"""

from __future__ import annotations

from vmctl import (
    AuthenticationError,
    BackendError,
    Conflict,
    ConnectionError,
    InsufficientResources,
    InvalidState,
    NotFound,
    NotSupported,
    OperationTimeout,
    VmctlError,
)
from vmctl.spi import Deadline

from ._wsman import WsmanFault, describe_tls, was_sent

RC_OK = 0
RC_JOB = 4096

RETURN_CODES = {
    32768: "Failed",
    32769: "Access Denied",
    32770: "Not Supported",
    32771: "Status is unknown",
    32772: "Timeout",
    32773: "Invalid parameter",
    32774: "System is in use",
    32775: "Invalid state for this operation",
    32776: "Incorrect data type",
    32777: "System is not available",
    32778: "Out of memory",
    32779: "File not found",
    32780: "The system is not ready",
    32782: "Shutdown in progress",
}

#: The WSManFault code WinRM sends when the WMI provider finds no such instance
#: (0x80338000, ERROR_WSMAN_... "The WS-Management service cannot process the request
#: because the resource does not exist"), with the subcode a:DestinationUnreachable.
NO_INSTANCE_CODE = "2150858752"


class HyperVError(Exception):
    """A method's return code or a job's error, as Hyper-V gave it (the __cause__ of the
    mapped vmctl error)."""

    def __init__(self, what: str, code: int, description: str = "") -> None:
        text = RETURN_CODES.get(code, "unknown return code")
        super().__init__(f"{what}: {code} ({text})" + (f": {description}" if description else ""))
        self.what = what
        self.code = code
        self.description = description


def from_code(what: str, code: int, description: str = "") -> tuple[VmctlError, HyperVError]:
    """The vmctl error for a return code or job ErrorCode, and the original to chain."""
    orig = HyperVError(what, code, description)
    msg = str(orig)
    vc = str(code)
    err: VmctlError
    if code in (32775, 32777, 32780, 32782):
        err = InvalidState(msg, vendor_code=vc)
    elif code == 32778:
        err = InsufficientResources(msg, vendor_code=vc)
    elif code == 32779:
        err = NotFound(msg, vendor_code=vc)
    elif code == 32770:
        err = NotSupported(msg)
        err.vendor_code = vc
    elif code == 32774:
        err = Conflict(msg, vendor_code=vc)
    elif code == 32772:
        err = OperationTimeout(msg, vendor_code=vc)
    elif code == 32769:
        err = AuthenticationError(msg, vendor_code=vc)
    else:
        err = BackendError(msg, vendor_code=vc)
    return err, orig


def from_exception(what: str, exc: BaseException, deadline: Deadline | None = None) -> VmctlError:
    """The vmctl error for anything the WS-Man client raised."""
    if isinstance(exc, VmctlError):
        return exc
    if isinstance(exc, WsmanFault):
        if exc.subcode == "DestinationUnreachable" or exc.code == NO_INSTANCE_CODE:
            return NotFound(f"{what}: {exc.reason or 'no such object'}", vendor_code=exc.subcode)
        if exc.subcode == "AccessDenied":
            return AuthenticationError(f"{what}: {exc.reason}", vendor_code=exc.subcode)
        return BackendError(f"{what}: {exc}", vendor_code=exc.subcode or exc.code or None)
    try:
        import requests
        from pypsrp.exceptions import AuthenticationError as PsrpAuth
        from pypsrp.exceptions import WinRMTransportError
    except ImportError:  # pragma: no cover - the driver cannot run without them
        return BackendError(f"{what}: {exc}")
    if isinstance(exc, PsrpAuth):
        return AuthenticationError(
            f"{what}: the host refused the credentials", vendor_code="HTTP 401"
        )
    if isinstance(exc, requests.exceptions.SSLError):
        return ConnectionError(f"{what}: {describe_tls(exc)}", sent=False)
    if isinstance(exc, requests.exceptions.Timeout):
        sent = was_sent(exc)
        if deadline is not None and deadline.expired():
            return OperationTimeout(f"{what}: no answer within the timeout")
        return ConnectionError(f"{what}: no answer from the host ({type(exc).__name__})", sent=sent)
    if isinstance(exc, requests.exceptions.ConnectionError | OSError):
        return ConnectionError(f"{what}: {_short(exc)}", sent=was_sent(exc))
    if isinstance(exc, WinRMTransportError):
        return BackendError(
            f"{what}: HTTP {exc.code} from the host", vendor_code=f"HTTP {exc.code}"
        )
    return BackendError(f"{what}: {type(exc).__name__}: {exc}")


def _short(exc: BaseException) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if "RemoteDisconnected" in text or "Connection aborted" in text:
        return "the host closed the connection"
    return f"{type(exc).__name__}: {text[:200]}"
