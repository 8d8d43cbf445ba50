"""KVM's ``PlacementChecks`` (a mixin of ``KvmDriver``): a storage pool's free space
(``virStoragePoolGetInfo``: capacity, allocation, available) and the libvirt networks, both
resolved as ``create_vm`` resolves them (``?pool=``/``?network=`` and the ``default``
fallbacks), for ``vmctl.move`` to check before it creates anything. libvirt takes any
unicast MAC for an interface (the default ``mac_refusal``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vmctl import Firmware
from vmctl.spi import Deadline, PlacementChecks, StorageSpace

from ._xml import efi_available


class KvmPlacement(PlacementChecks):
    if TYPE_CHECKING:
        is_test: bool

        def _call(
            self, what: str, fn: Callable[[Any], Any], deadline: Deadline, *, change: bool = False
        ) -> Any: ...
        def _pool(self, conn: Any, name: str | None) -> Any: ...
        def _network(self, conn: Any, name: str) -> str: ...

    def storage_space(self, pool: str | None, *, deadline: Deadline) -> StorageSpace:
        def read(c: Any) -> StorageSpace:
            found = self._pool(c, pool)
            _state, capacity, _allocation, available = found.info()
            return StorageSpace(
                name=str(found.name()), free_bytes=int(available), capacity_bytes=int(capacity)
            )

        result: StorageSpace = self._call(
            f"read the free space of storage pool {pool or '(default)'!r}", read, deadline
        )
        return result

    def firmwares(self, *, deadline: Deadline) -> frozenset[Firmware]:
        """BIOS (SeaBIOS) always; UEFI where libvirt's domain capabilities list ``efi``
        firmware (OVMF installed), as ``<os firmware='efi'>`` needs."""
        if self.is_test:  # libvirt's test driver models no firmware
            return frozenset({Firmware.BIOS})
        caps: str = self._call(
            "read the domain capabilities", lambda c: c.getDomainCapabilities(), deadline
        )
        if efi_available(caps):
            return frozenset(Firmware)
        return frozenset({Firmware.BIOS})

    def check_network(self, network: str, *, deadline: Deadline) -> None:
        self._call(f"look up network {network!r}", lambda c: self._network(c, network), deadline)
