"""``StorageListing`` for ``KvmDriver`` (a mixin): the volumes of the host's active storage
pools (``virConnectListAllStoragePools``, then ``virStoragePoolListAllVolumes`` per pool).

A disk's path is its volume's path (``virStorageVolGetPath``), as the domain XML's
``<source file=>`` gives it and ``config().disks`` reports it. Sizes are not read (one more
round trip per volume); internal qcow2 snapshots live inside their volume and are not listed
separately.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vmctl.spi import Deadline, StorageListing, Volume

#: virConnectListAllStoragePools flag: active pools only (an inactive one cannot be read).
_ACTIVE = 2


class KvmStorage(StorageListing):
    """The volumes of the active pools (see the module)."""

    if TYPE_CHECKING:

        def _call(
            self, what: str, fn: Callable[[Any], Any], deadline: Deadline, *, change: bool = False
        ) -> Any: ...

    def list_volumes(self, *, deadline: Deadline) -> list[Volume]:
        def read(c: Any) -> list[Volume]:
            out = []
            for pool in c.listAllStoragePools(_ACTIVE):
                name = str(pool.name())
                # another host sharing the directory may have made or deleted files there
                # (a VM migrated away and deleted: stale entries were listed as leaks);
                # libvirt refuses a refresh while a volume streams: then list what it has
                with contextlib.suppress(Exception):
                    pool.refresh(0)
                for vol in pool.listAllVolumes(0):
                    out.append(Volume(path=str(vol.path()), name=str(vol.name()), pool=name))
            return out

        volumes: list[Volume] = self._call("list the storage pools' volumes", read, deadline)
        return volumes
