"""vSphere faults -> vmctl's exception tree.

``map_fault`` returns the vmctl exception for a vmodl fault (or a transport error); callers
``raise map_fault(exc, what) from exc`` so the vendor fault stays as ``__cause__``. The fault's
vmodl name goes into ``vendor_code``. Messages come from the server's fault text, which never
holds the password.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from typing import Any, NoReturn

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
    ValidationError,
    VmctlError,
)

from ._tls import describe_tls_error

# (vmodl fault name, vmctl class) - matched against the fault's class and its bases, so the
# most specific vmodl class decides (e.g. InvalidPowerState before InvalidState).
_TABLE: dict[str, type[VmctlError]] = {
    "InvalidLogin": AuthenticationError,
    "NotAuthenticated": AuthenticationError,
    "NoPermission": AuthenticationError,
    "InvalidPowerState": InvalidState,
    "ToolsUnavailable": InvalidState,
    "InvalidState": InvalidState,
    "InvalidHostState": InvalidState,
    "DisallowedOperationOnFailoverHostFault": InvalidState,
    "ManagedObjectNotFound": NotFound,
    "NotFound": NotFound,
    "FileNotFound": NotFound,
    "InvalidDatastore": NotFound,
    "DuplicateName": AlreadyExists,
    "AlreadyExists": AlreadyExists,
    "FileAlreadyExists": AlreadyExists,
    "NotSupported": NotSupported,
    "NotImplemented": NotSupported,
    "InsufficientResourcesFault": InsufficientResources,
    "InsufficientHostCapacityFault": InsufficientResources,
    "OutOfBounds": InsufficientResources,
    "NoDiskSpace": InsufficientResources,
    "HostConnectFault": ConnectionError,
    "HostCommunication": ConnectionError,
    "HostNotConnected": ConnectionError,
    "TaskInProgress": Conflict,
    "ResourceInUse": Conflict,
    "ConcurrentAccess": Conflict,
    "Timedout": OperationTimeout,
    "InvalidArgument": ValidationError,
    "InvalidRequest": ValidationError,
    "InvalidDeviceSpec": ValidationError,
    "InvalidName": ValidationError,
}


def fault_name(exc: BaseException) -> str:
    """The vmodl name of a fault (``InvalidPowerState``), or the Python class name."""
    return type(exc).__name__.rsplit(".", 1)[-1]


def fault_message(exc: BaseException) -> str:
    msg = getattr(exc, "msg", None) or ""
    if not msg:
        for item in getattr(exc, "faultMessage", None) or ():
            msg = getattr(item, "message", "") or ""
            if msg:
                break
    return str(msg).strip()


def is_fault(exc: BaseException, name: str) -> bool:
    """Whether ``exc`` is the vmodl fault ``name`` or a subclass of it."""
    return any(cls.__name__.rsplit(".", 1)[-1] == name for cls in type(exc).__mro__)


def map_fault(exc: BaseException, what: str, **extra: Any) -> VmctlError:
    """The vmctl error for ``exc`` raised while doing ``what``."""
    if isinstance(exc, VmctlError):
        return exc
    tls = describe_tls_error(exc)
    if tls is not None:
        return ConnectionError(f"{what}: {tls}", vendor_code="SSLError")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return ConnectionError(
            f"{what}: the host did not answer in time ({exc})", vendor_code="timeout"
        )
    if isinstance(exc, (OSError, http.client.HTTPException, ssl.SSLError)):
        return ConnectionError(
            f"{what}: {type(exc).__name__}: {exc}", vendor_code=type(exc).__name__
        )
    name = fault_name(exc)
    msg = fault_message(exc)
    cls: type[VmctlError] = BackendError
    for base in type(exc).__mro__:
        hit = _TABLE.get(base.__name__.rsplit(".", 1)[-1])
        if hit is not None:
            cls = hit
            break
    text = f"{what}: {name}" + (f": {msg}" if msg else "")
    if name == "ToolsUnavailable" or is_fault(exc, "ToolsUnavailable"):
        text = (
            f"{what}: VMware Tools are not running in the guest, so it cannot be asked "
            f"({name}{': ' + msg if msg else ''})"
        )
    if cls is ValidationError:
        return ValidationError(text)
    if cls is NotSupported:
        err = NotSupported(text)
        err.vendor_code = name
        return err
    if cls is InvalidState:
        return InvalidState(text, vendor_code=name, **extra)
    return cls(text, vendor_code=name)


def reraise(exc: BaseException, what: str) -> NoReturn:
    """Raise the vmctl error for ``exc`` (itself if it already is one), vendor fault as cause."""
    if isinstance(exc, VmctlError):
        raise exc
    raise map_fault(exc, what) from exc
