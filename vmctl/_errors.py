"""The one exception tree of vmctl.

    VmctlError
    ├── ValidationError      bad input, caught before any call to a hypervisor (also a ValueError)
    ├── DriverError          no driver for a URI scheme, or a driver cannot load (missing SDK)
    ├── NotSupported         the backend does not have the capability asked for
    ├── NotFound             no such VM, snapshot, disk, ... (also a LookupError)
    ├── AlreadyExists        a name that must be unique is taken
    ├── Conflict             ambiguous name, object in use, concurrent change
    ├── InvalidState         the request is not legal in the VM's current power state
    ├── InsufficientResources the host lacks the memory/CPU/disk the request needs
    ├── AuthenticationError  credentials refused, or the session could not be renewed
    ├── ConnectionError      the host is unreachable or the connection is gone
    │   │                    (also the builtin ConnectionError)
    │   └── OutcomeUnknown   the connection failed after a change was sent: it may or may
    │                        not have happened (``left_behind`` names what may exist)
    ├── OperationTimeout     a request did not reach its state in time (also a TimeoutError)
    └── BackendError         any other vendor fault; the original stays as ``__cause__``

Drivers map vendor faults to the most specific class and raise it ``from`` the original,
so ``err.__cause__`` is always the vendor's own exception. ``vendor_code`` carries the
vendor's error code where there is one (libvirt error number, vSphere fault name, XenAPI code).
No message, repr or attribute of these classes ever holds a password.

Every error may carry ``left_behind``: the objects a failed request made and could not
remove, as (kind, id) pairs (``("vm", uuid)``, ``("disk", path)``), so that the caller can
delete them; the message names them too.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ._capabilities import Capability
    from ._operations import Operation
    from ._state import PowerState


class VmctlError(Exception):
    """Base of every error vmctl raises."""

    #: Objects a failed request made and could not remove: (kind, id) pairs.
    left_behind: tuple[tuple[str, str], ...] = ()

    def __init__(self, message: str, *, vendor_code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.vendor_code = vendor_code

    def __str__(self) -> str:
        return self.message


# -- misuse -------------------------------------------------------------------------------


class ValidationError(VmctlError, ValueError):
    """Bad input: a spec, URI, name or size that cannot be right. Raised before any backend call."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class DriverError(VmctlError):
    """No driver serves a URI scheme, or a driver cannot be loaded."""


# -- what the backend can and cannot do ---------------------------------------------------


class NotSupported(VmctlError):
    """The driver does not declare the capability a request needs."""

    def __init__(self, message: str, *, capability: Capability | None = None) -> None:
        super().__init__(message)
        self.capability = capability


# -- objects ------------------------------------------------------------------------------


class NotFound(VmctlError, LookupError):
    """No object by that name, UUID or id."""


class AlreadyExists(VmctlError):
    """An object with that name already exists where names must be unique."""


class Conflict(VmctlError):
    """The request conflicts with another object or change (e.g. an ambiguous name)."""


class InvalidState(VmctlError):
    """The request is not legal in the VM's current power state."""

    def __init__(
        self,
        message: str,
        *,
        current: PowerState | None = None,
        allowed: Iterable[PowerState] = (),
        vendor_code: str | None = None,
    ) -> None:
        super().__init__(message, vendor_code=vendor_code)
        self.current = current
        self.allowed = frozenset(allowed)


class InsufficientResources(VmctlError):
    """The host cannot give the memory, CPU or storage the request needs."""


# -- talking to the host ------------------------------------------------------------------


class AuthenticationError(VmctlError):
    """The host refused the credentials, or an expired session could not be renewed."""


class ConnectionError(VmctlError, builtins.ConnectionError):
    """The host cannot be reached, or the connection to it is gone.

    ``sent`` is what the driver knows of the request that failed: False when it never
    reached the host (refused before sending, an expired session the host rejected), so it
    is safe to repeat; True or None (unknown) when the host may have acted on it. The core
    reconnects and repeats a request only when that cannot do it twice.
    """

    def __init__(
        self, message: str, *, sent: bool | None = None, vendor_code: str | None = None
    ) -> None:
        super().__init__(message, vendor_code=vendor_code)
        self.sent = sent


class OutcomeUnknown(ConnectionError):
    """The connection failed after a change was sent: the host may or may not have made it.

    Look before repeating: ``left_behind`` names objects that may now exist.
    """


class OperationTimeout(VmctlError, TimeoutError):
    """A request did not reach its state within its timeout; the VM may still get there.

    ``running`` names what is still running on the host (vendor task ids and what they do),
    where the driver handed the core a task. ``operation`` (for a VM request) is an
    ``Operation`` that goes on waiting for it, under the connection's operation timeout.
    """

    def __init__(
        self,
        message: str,
        *,
        running: tuple[str, ...] = (),
        vendor_code: str | None = None,
    ) -> None:
        super().__init__(message, vendor_code=vendor_code)
        self.running = running
        self._resume: Callable[[], Operation[Any]] | None = None
        self._operation: Operation[Any] | None = None

    def can_resume(self, resume: Callable[[], Operation[Any]]) -> None:
        """Set by the core: how to go on waiting for what timed out."""
        self._resume = resume

    @property
    def operation(self) -> Operation[Any] | None:
        """An Operation that goes on waiting for the request (started on first use), or
        None where there is nothing to wait for."""
        if self._operation is None and self._resume is not None:
            self._operation = self._resume()
        return self._operation


class BackendError(VmctlError):
    """A vendor fault with no more specific mapping; the vendor's exception is ``__cause__``."""
