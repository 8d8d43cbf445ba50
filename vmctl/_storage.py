"""What a driver's storage listing gives back (``vmctl.spi.StorageListing``)."""

from __future__ import annotations

from attrs import frozen


@frozen
class Volume:
    """One storage object holding VM disk content: a volume in a libvirt pool, a file on a
    datastore, a VDI in a storage repository, a sim pool's image.

    ``path`` is the same string ``DiskInfo.path`` gives for a disk kept in this object, so
    that the disks of a VM's ``config()`` can be found in the listing. ``kind`` is "disk",
    or "snapshot" for an object that holds a snapshot's data (a snapshot VDI, a delta file).
    """

    path: str
    name: str | None = None
    pool: str | None = None
    size_mib: int | None = None
    kind: str = "disk"
