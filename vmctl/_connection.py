"""What a ``Hypervisor`` and its ``VM`` handles share: the dispatcher, capabilities, timeouts.

Kept apart so that a VM handle never reaches into the Hypervisor's private attributes.
"""

from __future__ import annotations

from ._capabilities import Capability
from ._config import Timeouts
from ._deadline import Deadline, check_seconds
from ._dispatch import Dispatcher
from ._errors import NotSupported
from ._uri import URI
from .spi import Driver


class Connection:
    """The driver behind one ``vmctl.connect()``, with the policy state around it."""

    def __init__(
        self,
        driver: Driver,
        uri: URI,
        timeouts: Timeouts,
        capabilities: frozenset[Capability],
        max_concurrency: int,
    ) -> None:
        self.driver = driver
        self.uri = uri
        self.timeouts = timeouts
        self.capabilities = capabilities
        self.dispatcher = Dispatcher(driver, str(uri), max_concurrency=max_concurrency)

    @property
    def driver_name(self) -> str:
        return self.driver.name

    def require(self, capability: Capability, what: str) -> None:
        """Raise NotSupported naming ``capability`` unless this connection has it."""
        if capability not in self.capabilities:
            raise NotSupported(
                f"{what} needs the capability {capability.value!r}, which the "
                f"{self.driver_name} driver does not have on {self.uri}",
                capability=capability,
            )

    def deadline(self, timeout: object, default: float | None, field: str = "timeout") -> Deadline:
        """The deadline of a request made now: ``timeout`` (checked) or the default."""
        seconds = check_seconds(timeout, field)
        return Deadline.after(default if seconds is None else seconds)

    def read_deadline(self) -> Deadline:
        """The deadline of a read (info, config, listing) made now."""
        return Deadline.after(self.timeouts.read_s)
