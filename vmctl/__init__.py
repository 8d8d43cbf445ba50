"""vmctl: one vendor-neutral API to control virtual machines.

>>> import vmctl
>>> with vmctl.connect("sim://") as hv:
...     vm = hv.create_vm(vmctl.VMSpec(name="web-1", vcpus=2, memory_mib=1024))
...     vm.start()
"""

from ._api import VM, EventStream, Hypervisor, connect
from ._capabilities import REQUIRED_CAPABILITIES, Capability
from ._config import ConnectParams, Secret, Timeouts
from ._errors import (
    AlreadyExists,
    AuthenticationError,
    BackendError,
    Conflict,
    ConnectionError,
    DriverError,
    InsufficientResources,
    InvalidState,
    NotFound,
    NotSupported,
    OperationTimeout,
    ValidationError,
    VmctlError,
)
from ._model import (
    AgentState,
    BootSource,
    DiskBus,
    DiskInfo,
    DiskSpec,
    Event,
    EventKind,
    GuestInfo,
    GuestOS,
    HostInfo,
    NicInfo,
    NicSpec,
    Resources,
    SnapshotInfo,
    SnapshotNode,
    VMConfig,
    VMInfo,
    VMSpec,
    VMStats,
)
from ._operations import Operation, as_completed, wait_all
from ._registry import available as available_drivers
from ._registry import register, unregister
from ._state import PowerState, Request, StateReason
from ._uri import URI

__version__ = "0.1.0"

__all__ = [
    "REQUIRED_CAPABILITIES",
    "URI",
    "VM",
    "AgentState",
    "AlreadyExists",
    "AuthenticationError",
    "BackendError",
    "BootSource",
    "Capability",
    "Conflict",
    "ConnectParams",
    "ConnectionError",
    "DiskBus",
    "DiskInfo",
    "DiskSpec",
    "DriverError",
    "Event",
    "EventKind",
    "EventStream",
    "GuestInfo",
    "GuestOS",
    "HostInfo",
    "Hypervisor",
    "InsufficientResources",
    "InvalidState",
    "NicInfo",
    "NicSpec",
    "NotFound",
    "NotSupported",
    "Operation",
    "OperationTimeout",
    "PowerState",
    "Request",
    "Resources",
    "Secret",
    "SnapshotInfo",
    "SnapshotNode",
    "StateReason",
    "Timeouts",
    "VMConfig",
    "VMInfo",
    "VMSpec",
    "VMStats",
    "ValidationError",
    "VmctlError",
    "as_completed",
    "available_drivers",
    "connect",
    "register",
    "unregister",
    "wait_all",
]
