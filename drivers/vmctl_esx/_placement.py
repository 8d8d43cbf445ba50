"""vSphere's ``PlacementChecks`` (a mixin of ``EsxDriver``): a datastore's free space
(``summary.freeSpace`` and ``summary.capacity``, read now), the port groups a NIC can be
put on (standard and distributed, as ``create_vm`` finds them), and vSphere's rule for a
static MAC address with VMware's OUI, for ``vmctl.move`` to check before it creates
anything.

vSphere's static MAC rule (vSphere Networking, "VMware OUI in static MAC addresses"): a
manually set MAC with the VMware OUI 00:50:56 must be in 00:50:56:00:00:00 -
00:50:56:3F:FF:FF; the rest of that OUI is vCenter's generated range and the hosts'
VMkernel adapters'. Other unique unicast MACs are supported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vmctl import Firmware, VmctlError
from vmctl.spi import Deadline, PlacementChecks, StorageSpace

from ._faults import reraise

if TYPE_CHECKING:
    from ._conn import Connection

VMWARE_OUI = "00:50:56"
#: The highest fourth octet of a static MAC with the VMware OUI.
STATIC_MAX = 0x3F


def vsphere_mac_refusal(mac: str) -> str | None:
    """Why vSphere refuses ``mac`` as a static (manual) MAC address, or None."""
    mac = mac.lower()
    if mac.startswith(VMWARE_OUI + ":") and int(mac[9:11], 16) > STATIC_MAX:
        return (
            f"vSphere takes a static MAC with VMware's OUI {VMWARE_OUI} only in "
            f"{VMWARE_OUI}:00:00:00-{VMWARE_OUI}:3f:ff:ff ({mac} is in the range vCenter and the "
            "hosts generate addresses from)"
        )
    return None


class EsxPlacement(PlacementChecks):
    if TYPE_CHECKING:
        conn: Connection
        scope: Any

        def _datastore(self, pool: str | None) -> str: ...
        def _network_backing(self, network: str) -> Any: ...

    def storage_space(self, pool: str | None, *, deadline: Deadline) -> StorageSpace:
        name = self._datastore(pool)
        ref = self.scope.datastores[name][0]
        try:
            with self.conn.within(deadline):
                props = self.conn.retrieve_one(
                    ref, self.conn.vim.Datastore, ("summary.freeSpace", "summary.capacity")
                )
        except VmctlError:
            raise
        except Exception as exc:
            reraise(exc, f"read the free space of datastore {name!r}")
        capacity = props.get("summary.capacity")
        return StorageSpace(
            name=name,
            free_bytes=int(props.get("summary.freeSpace") or 0),
            capacity_bytes=None if capacity is None else int(capacity),
        )

    def firmwares(self, *, deadline: Deadline) -> frozenset[Firmware]:
        """config.firmware: bios or efi."""
        return frozenset(Firmware)

    def check_network(self, network: str, *, deadline: Deadline) -> None:
        self._network_backing(network)  # NotFound naming the port groups there are

    def mac_refusal(self, mac: str) -> str | None:
        return vsphere_mac_refusal(mac)
