"""What ties a VM to its ESX host, read from its devices (``config.hardware.device``), for
the placements the core plans evacuations and rebalancing from.

* ``live_blocker``: a CD/DVD drive, floppy drive, serial or parallel port that is connected
  and backed by a device of the host (its physical drive, ``/dev/cdrom``, a host serial
  port) or of a client computer (a remote drive). vSphere's "Virtual Machine Conditions
  and Limitations for vMotion": a VM using a device the destination host cannot reach, or
  one on the client computer, cannot move with vMotion; disconnect it first. Powered off,
  the device is not in use and a cold move takes the VM. A device backed by a file (an ISO
  on a datastore), a network URI or a pipe is not such a device.
* ``pinned``: a PCI device passed through to the VM (DirectPath I/O, also dynamic): it
  belongs to this host's hardware. A vGPU (``VmiopBackingInfo``), which vSphere moves
  from 6.7 U1, is not counted.

The devices are pyVmomi's typed data objects.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any


@functools.cache
def _vim() -> Any:
    """The pyVmomi types this module checks for; pyVmomi is imported on first use, as
    everywhere in the driver (a missing SDK is reported when connecting)."""
    from pyVmomi import vim

    dev = vim.vm.device
    return SimpleNamespace(
        # the kinds of device vMotion cannot take along when a host or client device backs them
        ports=(dev.VirtualCdrom, dev.VirtualFloppy, dev.VirtualSerialPort, dev.VirtualParallelPort),
        host_backing=dev.VirtualDevice.DeviceBackingInfo,
        client_backing=dev.VirtualDevice.RemoteDeviceBackingInfo,
        passthrough=dev.VirtualPCIPassthrough,
        # DirectPath I/O and dynamic DirectPath: the host's own PCI device
        host_pci=(
            dev.VirtualPCIPassthrough.DeviceBackingInfo,
            dev.VirtualPCIPassthrough.DynamicBackingInfo,
        ),
    )


def _label(device: Any) -> str:
    info = getattr(device, "deviceInfo", None)
    return str(getattr(info, "label", None) or f"device {getattr(device, 'key', '?')}")


def live_blocker(devices: Iterable[Any]) -> str | None:
    """Why vMotion would refuse the VM with these devices now, or None (see the module)."""
    t = _vim()
    found = []
    for d in devices:
        if not isinstance(d, t.ports):
            continue
        connectable = getattr(d, "connectable", None)
        if not getattr(connectable, "connected", False):
            continue
        backing = d.backing
        if isinstance(backing, t.client_backing):
            found.append(f"{_label(d)} is connected to a client computer's device")
        elif isinstance(backing, t.host_backing):
            name = getattr(backing, "deviceName", None) or "a device"
            found.append(f"{_label(d)} is connected to the host's {name}")
    if not found:
        return None
    return (
        f"{'; '.join(found)} (vMotion cannot take a device of the host or of a client "
        "along: disconnect it first)"
    )


def pinned(devices: Iterable[Any]) -> str | None:
    """Why the VM cannot leave its host at all, or None (see the module)."""
    t = _vim()
    found = [
        _label(d)
        for d in devices
        if isinstance(d, t.passthrough) and isinstance(d.backing, t.host_pci)
    ]
    if not found:
        return None
    return f"a PCI device of this host is passed through to it (DirectPath I/O: {', '.join(found)})"
