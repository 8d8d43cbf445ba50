"""libvirt errors mapped into vmctl's exception tree, by libvirt error number.

The numbers are libvirt's stable ABI (``virErrorNumber``); they are spelled out here so that
this module imports without libvirt-python. The libvirtError stays as ``__cause__`` and its
number goes into ``vendor_code``.
"""

from __future__ import annotations

from typing import Any

import vmctl

# virErrorNumber values (libvirt/virterror.h)
INTERNAL_ERROR = 1
NO_SUPPORT = 3
NO_CONNECT = 5
INVALID_CONN = 6
INVALID_ARG = 8
OPERATION_FAILED = 9
XML_ERROR = 27
DOM_EXIST = 28
XML_DETAIL = 35
SYSTEM_ERROR = 38
RPC = 39
NO_DOMAIN = 42
NO_NETWORK = 43
AUTH_FAILED = 45
NO_STORAGE_POOL = 49
NO_STORAGE_VOL = 50
OPERATION_INVALID = 55
NO_INTERFACE = 57
NO_NODE_DEVICE = 60
OPERATION_TIMEOUT = 68
NO_DOMAIN_SNAPSHOT = 72
ARGUMENT_UNSUPPORTED = 74
NO_NWFILTER = 76
OPERATION_ABORTED = 78
AUTH_CANCELLED = 79
MIGRATE_UNSAFE = 81
OPERATION_UNSUPPORTED = 84
AGENT_UNRESPONSIVE = 86
RESOURCE_BUSY = 87
ACCESS_DENIED = 88
STORAGE_VOL_EXIST = 90
AUTH_UNAVAILABLE = 94
NO_SERVER = 95
AGENT_UNSYNCED = 97
DEVICE_MISSING = 99
NO_DOMAIN_CHECKPOINT = 103
NO_NETWORK_PORT = 107
CONFIG_UNSUPPORTED = 67
SNAPSHOT_REVERT_RISKY = 77

NOT_FOUND = frozenset(
    {
        NO_DOMAIN,
        NO_NETWORK,
        NO_STORAGE_POOL,
        NO_STORAGE_VOL,
        NO_INTERFACE,
        NO_NODE_DEVICE,
        NO_DOMAIN_SNAPSHOT,
        NO_NWFILTER,
        NO_SERVER,
        NO_DOMAIN_CHECKPOINT,
        NO_NETWORK_PORT,
        DEVICE_MISSING,
    }
)
NOT_SUPPORTED = frozenset(
    {NO_SUPPORT, ARGUMENT_UNSUPPORTED, OPERATION_UNSUPPORTED, CONFIG_UNSUPPORTED}
)
AUTH = frozenset({AUTH_FAILED, AUTH_CANCELLED, AUTH_UNAVAILABLE, ACCESS_DENIED})
#: Errors that mean the connection (socket, RPC) failed rather than the request.
CONNECTION = frozenset({SYSTEM_ERROR, RPC, NO_CONNECT, INVALID_CONN})
EXISTS = frozenset({DOM_EXIST, STORAGE_VOL_EXIST})
INVALID_STATE = frozenset({OPERATION_INVALID, AGENT_UNRESPONSIVE, AGENT_UNSYNCED, RESOURCE_BUSY})


def code_of(exc: Any) -> int:
    """The libvirt error number of a libvirtError (0 if it has none)."""
    try:
        code = exc.get_error_code()
    except Exception:  # pragma: no cover - not a libvirtError
        return 0
    return int(code) if code is not None else 0


def message_of(exc: Any) -> str:
    try:
        msg = exc.get_error_message()
    except Exception:  # pragma: no cover
        msg = None
    return str(msg or exc)


def disk_lock_holder(exc: Any) -> str | None:
    """Who holds the disk lock that made a domain start fail, or None when ``exc`` is not
    such a failure.

    Two layers refuse a second writer of a disk: the lock manager (``lock_manager =
    "lockd"``: virtlockd reports the lease's lockspace resource as locked, RESOURCE_BUSY;
    libvirt takes the leases as the CPUs start, after QEMU opened the disks) and QEMU's own
    image locking (``Failed to get "write" lock`` as it opens the image).
    """
    msg = message_of(exc)
    if code_of(exc) == RESOURCE_BUSY and "Lockspace resource" in msg:
        return "another host still holds its disk lease (virtlockd)"
    if 'Failed to get "write" lock' in msg:
        return "another QEMU process, maybe on another host, holds its disk image's write lock"
    return None


def map_error(exc: Any, what: str, *, connecting: bool = False) -> vmctl.VmctlError:
    """The vmctl exception for libvirtError ``exc`` raised while doing ``what``.

    The caller raises it ``from exc``. ``connecting`` says the error came from opening the
    connection, where system and RPC errors mean the host cannot be reached.
    """
    code = code_of(exc)
    msg = f"{what}: {message_of(exc)}"
    vendor = str(code) if code else None
    err: vmctl.VmctlError
    if code in NOT_FOUND:
        err = vmctl.NotFound(msg, vendor_code=vendor)
    elif code in AUTH:
        err = vmctl.AuthenticationError(msg, vendor_code=vendor)
    elif (code in CONNECTION and connecting) or code in (NO_CONNECT, INVALID_CONN):
        err = vmctl.ConnectionError(msg, vendor_code=vendor)
    elif code in NOT_SUPPORTED:
        err = vmctl.NotSupported(msg)
        err.vendor_code = vendor
    elif code in INVALID_STATE:
        err = vmctl.InvalidState(msg, vendor_code=vendor)
    elif code == OPERATION_TIMEOUT:
        err = vmctl.OperationTimeout(msg, vendor_code=vendor)
    elif code in EXISTS or (code == OPERATION_FAILED and "already exists" in msg):
        err = vmctl.AlreadyExists(msg, vendor_code=vendor)
    elif code in (INVALID_ARG, XML_ERROR, XML_DETAIL):
        err = vmctl.ValidationError(msg)
        err.vendor_code = vendor
    elif code == SYSTEM_ERROR and ("No space left" in msg or "Cannot allocate memory" in msg):
        err = vmctl.InsufficientResources(msg, vendor_code=vendor)
    else:
        err = vmctl.BackendError(msg, vendor_code=vendor)
    return err
