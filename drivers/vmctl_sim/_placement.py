"""The sim's ``PlacementChecks`` (a mixin of ``SimDriver``): the free space of a pool (each
host's pools hold POOL_CAPACITY_MIB of provisioned disk, as ``create_vm`` counts it) and
its networks, read the way ``create_vm`` reads them, for ``vmctl.move`` to check before it
creates anything."""

from __future__ import annotations

from vmctl import Firmware, NotFound
from vmctl.spi import Deadline, PlacementChecks, StorageSpace

from ._site import NETWORKS, POOL_CAPACITY_MIB, POOLS, Site

MIB = 1024 * 1024


class SimPlacement(PlacementChecks):
    site: Site
    host_name: str

    def storage_space(self, pool: str | None, *, deadline: Deadline) -> StorageSpace:
        name = pool or "default"
        if name not in POOLS:
            raise NotFound(
                f"no storage pool {name!r} on sim host {self.host_name!r} "
                f"(pools: {', '.join(POOLS)})"
            )
        with self.site.transaction(save=False):
            used = self.site.host(self.host_name).used_pool_mib(name)
        return StorageSpace(
            name=name,
            free_bytes=max(POOL_CAPACITY_MIB - used, 0) * MIB,
            capacity_bytes=POOL_CAPACITY_MIB * MIB,
        )

    def firmwares(self, *, deadline: Deadline) -> frozenset[Firmware]:
        return frozenset(Firmware)

    def check_network(self, network: str, *, deadline: Deadline) -> None:
        if network not in NETWORKS:
            raise NotFound(
                f"no network {network!r} on sim host {self.host_name!r} "
                f"(networks: {', '.join(NETWORKS)})"
            )
