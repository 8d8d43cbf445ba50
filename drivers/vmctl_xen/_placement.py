"""Xen's ``PlacementChecks`` (a mixin of ``XenDriver``): an SR's free space (its
``physical_size`` less its ``physical_utilisation``, as xapi reports them) and the pool's
networks, resolved as ``create_vm`` resolves them (the pool's default SR when no SR is
named; a network by name, UUID or bridge), for ``vmctl.move`` to check before it creates
anything. xapi takes any unicast MAC for a VIF (the default ``mac_refusal``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vmctl import Firmware
from vmctl.spi import Deadline, PlacementChecks, StorageSpace


class XenPlacement(PlacementChecks):
    if TYPE_CHECKING:

        def _sr(self, name: str | None, deadline: Deadline) -> str: ...
        def _call(self, what: str, method: str, *args: Any, deadline: Deadline) -> Any: ...
        def _network(self, name: str, deadline: Deadline) -> tuple[str, dict[str, Any]]: ...

    def storage_space(self, pool: str | None, *, deadline: Deadline) -> StorageSpace:
        ref = self._sr(pool, deadline)
        rec = self._call("read the SR's space", "SR.get_record", ref, deadline=deadline)
        size = int(rec.get("physical_size") or 0)
        used = int(rec.get("physical_utilisation") or 0)
        return StorageSpace(
            name=str(rec.get("name_label") or rec.get("uuid")),
            free_bytes=max(size - used, 0),
            capacity_bytes=size,
        )

    def firmwares(self, *, deadline: Deadline) -> frozenset[Firmware]:
        """An HVM guest boots BIOS or, with HVM-boot-params:firmware=uefi, UEFI."""
        return frozenset(Firmware)

    def check_network(self, network: str, *, deadline: Deadline) -> None:
        self._network(network, deadline)
