"""What the conformance kit can use on a libvirt host (``KvmDriver.kit_defaults``): an active
network and an active storage pool, found in one round of libvirt reads. A bootable guest
cannot be found this way (libvirt does not know which kernel on the host boots), so the
operator gives one (``boot_kernel``/``boot_initrd``/``boot_cmdline`` or ``boot_iso``)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from vmctl.spi import Deadline

if TYPE_CHECKING:
    from ._driver import KvmDriver

#: virConnectListAllNetworks / virConnectListAllStoragePools: active ones only.
LIST_ACTIVE = 2
#: Pool types in which the driver makes volumes of any size on demand.
VOLUME_POOLS = ("dir", "fs", "netfs", "logical", "rbd", "zfs", "mock")


def pick(names: Sequence[str], given: str | None) -> str | None:
    """``given`` (the URI's ``?network=``/``?pool=``) when set, else ``default`` when it is
    among ``names``, else the first of ``names`` by name."""
    if given:
        return given
    if "default" in names:
        return "default"
    return sorted(names)[0] if names else None


def _pools(conn: Any) -> list[str]:
    """Active pools the driver can make volumes in, the one with most space first."""
    found = []
    for pool in conn.listAllStoragePools(LIST_ACTIVE):
        kind = ET.fromstring(pool.XMLDesc(0)).get("type", "dir")
        if kind in VOLUME_POOLS:
            found.append((-int(pool.info()[3]), pool.name()))
    return [name for _free, name in sorted(found)]


def kit_defaults(driver: KvmDriver, deadline: Deadline) -> dict[str, str]:
    def read(conn: Any) -> tuple[list[str], list[str]]:
        nets = [n.name() for n in conn.listAllNetworks(LIST_ACTIVE)]
        return nets, _pools(conn)

    nets, pools = driver._call("find a network and a pool for the kit", read, deadline)
    out: dict[str, str] = {}
    network = pick(nets, driver._network_opt)
    if network:
        out["network"] = network
    if driver._pool_opt:
        out["pool"] = driver._pool_opt
    elif pools:
        out["pool"] = "default" if "default" in pools else pools[0]
    return out
