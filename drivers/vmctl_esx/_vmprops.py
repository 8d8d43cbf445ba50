"""What the ESX driver and its hosts mixin read of a VirtualMachine to make its ``VMInfo``
(the driver's listing, the hosts' placements, ``locate_vm``), and a managed object's id."""

from __future__ import annotations

from typing import Any

#: The VirtualMachine properties ``EsxDriver._info`` reads.
LIST_PATHS = (
    "name",
    "config.instanceUuid",
    "config.template",
    "runtime.powerState",
    "runtime.connectionState",
    "runtime.host",
    "config.hardware.numCPU",
    "config.hardware.memoryMB",
)


def moid(obj: Any) -> str:
    """A managed object reference's id (``vm-42``, ``host-7``)."""
    return str(obj._moId)
