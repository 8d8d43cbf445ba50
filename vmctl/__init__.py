"""vmctl: one vendor-neutral API to control virtual machines.

>>> import vmctl
>>> with vmctl.connect("sim://") as hv:
...     vm = hv.create_vm(vmctl.VMSpec(name="web-1", vcpus=2, memory_mib=1024))
...     vm.start()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Exports load on first use (PEP 562): `import vmctl` stays cheap for tools that only need
# the name, and the attrs models are built when something first touches them.
_EXPORTS: dict[str, tuple[str, str]] = {
    "VM": ("._vm", "VM"),
    "EventStream": ("._events", "EventStream"),
    "Hypervisor": ("._hypervisor", "Hypervisor"),
    "connect": ("._connect", "connect"),
    "REQUIRED_CAPABILITIES": ("._capabilities", "REQUIRED_CAPABILITIES"),
    "Capability": ("._capabilities", "Capability"),
    "ConnectParams": ("._config", "ConnectParams"),
    "Secret": ("._config", "Secret"),
    "Timeouts": ("._config", "Timeouts"),
    "AlreadyExists": ("._errors", "AlreadyExists"),
    "AuthenticationError": ("._errors", "AuthenticationError"),
    "BackendError": ("._errors", "BackendError"),
    "Conflict": ("._errors", "Conflict"),
    "ConnectionError": ("._errors", "ConnectionError"),
    "DriverError": ("._errors", "DriverError"),
    "InsufficientResources": ("._errors", "InsufficientResources"),
    "InvalidState": ("._errors", "InvalidState"),
    "NotFound": ("._errors", "NotFound"),
    "NotSupported": ("._errors", "NotSupported"),
    "OperationTimeout": ("._errors", "OperationTimeout"),
    "OutcomeUnknown": ("._errors", "OutcomeUnknown"),
    "ValidationError": ("._errors", "ValidationError"),
    "VmctlError": ("._errors", "VmctlError"),
    "AgentState": ("._model", "AgentState"),
    "BootSource": ("._model", "BootSource"),
    "DiskBus": ("._model", "DiskBus"),
    "DiskInfo": ("._model", "DiskInfo"),
    "DiskSpec": ("._model", "DiskSpec"),
    "Event": ("._model", "Event"),
    "EventKind": ("._model", "EventKind"),
    "Firmware": ("._model", "Firmware"),
    "GuestInfo": ("._model", "GuestInfo"),
    "GuestOS": ("._model", "GuestOS"),
    "HostInfo": ("._model", "HostInfo"),
    "NicInfo": ("._model", "NicInfo"),
    "NicSpec": ("._model", "NicSpec"),
    "Resources": ("._model", "Resources"),
    "SnapshotInfo": ("._model", "SnapshotInfo"),
    "SnapshotNode": ("._model", "SnapshotNode"),
    "VMConfig": ("._model", "VMConfig"),
    "VMInfo": ("._model", "VMInfo"),
    "VMSpec": ("._model", "VMSpec"),
    "VMStats": ("._model", "VMStats"),
    "Operation": ("._operations", "Operation"),
    "as_completed": ("._operations", "as_completed"),
    "wait_all": ("._operations", "wait_all"),
    "available_drivers": ("._registry", "available"),
    "register": ("._registry", "register"),
    "unregister": ("._registry", "unregister"),
    "PowerState": ("._state", "PowerState"),
    "Request": ("._state", "Request"),
    "StateReason": ("._state", "StateReason"),
    "URI": ("._uri", "URI"),
    "Host": ("._hosts", "Host"),
    "HostState": ("._hostspi", "HostState"),
    "MoveMode": ("._hostspi", "MoveMode"),
    "Plan": ("._evacuate", "Plan"),
    "Move": ("._evacuate", "Move"),
    "Blocker": ("._evacuate", "Blocker"),
    "BlockKind": ("._evacuate", "BlockKind"),
    "EvacuationReport": ("._evacuate", "EvacuationReport"),
    "MoveResult": ("._evacuate", "MoveResult"),
    "MoveOutcome": ("._evacuate", "MoveOutcome"),
    "EvacuationProgress": ("._evacuate", "EvacuationProgress"),
    "plan_evacuation": ("._evacuate", "plan_evacuation"),
    "execute": ("._evacuate", "execute"),
    "HostLoad": ("._rebalance", "HostLoad"),
    "RebalancePlan": ("._rebalance", "RebalancePlan"),
    "plan_rebalance": ("._rebalance", "plan_rebalance"),
    "RecoveryPlan": ("._recover", "RecoveryPlan"),
    "plan_recovery": ("._recover", "plan_recovery"),
    "Fleet": ("._fleet", "Fleet"),
    "FleetResult": ("._fleet", "FleetResult"),
    "Site": ("._site", "Site"),
    "BackupInfo": (".backup", "BackupInfo"),
    "Repository": (".backup", "Repository"),
    "RepositoryError": (".backup", "RepositoryError"),
    "open_repo": (".backup", "open_repo"),
    "move": ("._move", "move"),
    "move_digest": ("._move", "move_digest"),
    "MoveReport": ("._move", "MoveReport"),
    "MovedDisk": ("._move", "MovedDisk"),
    "MappingNote": ("._move", "MappingNote"),
    "MappingKind": ("._move", "MappingKind"),
}

if TYPE_CHECKING:
    from ._capabilities import (
        REQUIRED_CAPABILITIES,
        Capability,
    )
    from ._config import (
        ConnectParams,
        Secret,
        Timeouts,
    )
    from ._connect import connect
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
        OutcomeUnknown,
        ValidationError,
        VmctlError,
    )
    from ._evacuate import (
        Blocker,
        BlockKind,
        EvacuationProgress,
        EvacuationReport,
        Move,
        MoveOutcome,
        MoveResult,
        Plan,
        execute,
        plan_evacuation,
    )
    from ._events import EventStream
    from ._fleet import Fleet, FleetResult
    from ._hosts import Host
    from ._hostspi import HostState, MoveMode
    from ._hypervisor import Hypervisor
    from ._model import (
        AgentState,
        BootSource,
        DiskBus,
        DiskInfo,
        DiskSpec,
        Event,
        EventKind,
        Firmware,
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
    from ._move import MappingKind, MappingNote, MovedDisk, MoveReport, move, move_digest
    from ._operations import (
        Operation,
        as_completed,
        wait_all,
    )
    from ._rebalance import HostLoad, RebalancePlan, plan_rebalance
    from ._recover import RecoveryPlan, plan_recovery
    from ._registry import (
        available as available_drivers,
    )
    from ._registry import (
        register,
        unregister,
    )
    from ._site import Site
    from ._state import (
        PowerState,
        Request,
        StateReason,
    )
    from ._uri import (
        URI,
    )
    from ._vm import VM
    from .backup import BackupInfo, Repository, RepositoryError, open_repo

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'vmctl' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "REQUIRED_CAPABILITIES",
    "URI",
    "VM",
    "AgentState",
    "AlreadyExists",
    "AuthenticationError",
    "BackendError",
    "BackupInfo",
    "BlockKind",
    "Blocker",
    "BootSource",
    "Capability",
    "Conflict",
    "ConnectParams",
    "ConnectionError",
    "DiskBus",
    "DiskInfo",
    "DiskSpec",
    "DriverError",
    "EvacuationProgress",
    "EvacuationReport",
    "Event",
    "EventKind",
    "EventStream",
    "Firmware",
    "Fleet",
    "FleetResult",
    "GuestInfo",
    "GuestOS",
    "Host",
    "HostInfo",
    "HostLoad",
    "HostState",
    "Hypervisor",
    "InsufficientResources",
    "InvalidState",
    "MappingKind",
    "MappingNote",
    "Move",
    "MoveMode",
    "MoveOutcome",
    "MoveReport",
    "MoveResult",
    "MovedDisk",
    "NicInfo",
    "NicSpec",
    "NotFound",
    "NotSupported",
    "Operation",
    "OperationTimeout",
    "OutcomeUnknown",
    "Plan",
    "PowerState",
    "RebalancePlan",
    "RecoveryPlan",
    "Repository",
    "RepositoryError",
    "Request",
    "Resources",
    "Secret",
    "Site",
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
    "execute",
    "move",
    "move_digest",
    "open_repo",
    "plan_evacuation",
    "plan_rebalance",
    "plan_recovery",
    "register",
    "unregister",
    "wait_all",
]
