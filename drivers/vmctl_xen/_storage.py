"""``StorageListing`` for ``XenDriver`` (a mixin): the VDIs of the pool's disk SRs, from one
``SR.get_all_records`` and one ``VDI.get_all_records``.

A disk's path is ``vdi:<VDI uuid>``, as ``config().disks`` gives it. VDIs of ISO SRs are not
listed; a snapshot's VDI (``is_a_snapshot``) is listed with kind "snapshot", a suspended
VM's memory image (type ``suspend``) with kind "suspend".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vmctl.spi import Deadline, StorageListing, Volume


class XenStorage(StorageListing):
    """The VDIs of the pool's SRs (see the module)."""

    if TYPE_CHECKING:

        def _call(self, what: str, method: str, *args: Any, deadline: Deadline) -> Any: ...

    def list_volumes(self, *, deadline: Deadline) -> list[Volume]:
        srs = self._call("read the SRs", "SR.get_all_records", deadline=deadline)
        vdis = self._call("read the VDIs", "VDI.get_all_records", deadline=deadline)
        out = []
        for rec in vdis.values():
            sr = srs.get(rec.get("SR"), {})
            if not sr or sr.get("content_type") == "iso":
                continue
            if rec.get("is_a_snapshot"):
                kind = "snapshot"
            elif rec.get("type") == "suspend":
                kind = "suspend"
            else:
                kind = "disk"
            out.append(
                Volume(
                    path=f"vdi:{rec.get('uuid')}",
                    name=str(rec.get("name_label") or "") or None,
                    pool=str(sr.get("name_label") or "") or None,
                    size_mib=int(rec.get("virtual_size") or 0) // (1024 * 1024),
                    kind=kind,
                )
            )
        return out
