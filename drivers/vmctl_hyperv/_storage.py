"""``StorageListing`` for ``HyperVDriver`` (a mixin): the virtual hard disk files in the
connection's ``disk_dir``, from one WQL enumeration of root/cimv2 ``CIM_DataFile``.

WMI v2 (root/virtualization/v2) has no class that lists a directory's files; WinRM serves
every WMI namespace, and root/cimv2's ``CIM_DataFile`` (Win32 docs, "CIM_DataFile class")
is one instance per file on the host's local fixed disks, selected by ``Drive`` ("c:", with
its colon) and ``Path`` (the directory with its leading and trailing backslashes; in a WQL
string each backslash is written twice). The query is paged like any enumeration.

A file's path is ``<disk_dir>\\<FileName>.<Extension>``: the directory spelled as the URI
option gives it (as the driver attaches disks, so as ``DiskInfo.path`` says), the file part
as WMI reports it (the CIMWin32 provider reports names in lower case; the driver names the
files it makes in lower case, so both agree). ``.vhdx``/``.vhd`` files are disks,
``.avhdx``/``.avhd`` (a checkpoint's differencing files) are "snapshot"; ``size_mib`` is
the file's size on the host's disk (``FileSize``), not the disk's virtual size.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from vmctl import NotSupported
from vmctl.spi import Deadline, StorageListing, Volume

from ._wsman import CIMV2, wql_string

#: File extensions listed, and the kind of each.
KINDS = {"vhdx": "disk", "vhd": "disk", "avhdx": "snapshot", "avhd": "snapshot"}
_LOCAL_DIR = re.compile(r"^(?P<drive>[A-Za-z]:)(?P<path>\\.*)?$")


def datafile_query(disk_dir: str) -> str:
    """The WQL that selects the image files of ``disk_dir`` (a local ``X:\\dir`` path)."""
    m = _LOCAL_DIR.match(disk_dir.rstrip("\\"))
    if m is None:
        raise NotSupported(
            f"cannot list the disks in {disk_dir!r}: CIM_DataFile lists files on the host's "
            "local fixed disks only (a disk_dir of the form X:\\dir)"
        )
    folder = (m.group("path") or "") + "\\"
    exts = " OR ".join(f"Extension = {wql_string(e)}" for e in KINDS)
    return (
        "SELECT Name, FileName, Extension, FileSize FROM CIM_DataFile "
        f"WHERE Drive = {wql_string(m.group('drive'))} AND Path = {wql_string(folder)} "
        f"AND ({exts})"
    )


class HyperVStorage(StorageListing):
    """The image files of ``disk_dir`` (see the module)."""

    if TYPE_CHECKING:
        disk_dir: str

        def _query(
            self, what: str, wql: str, deadline: Deadline, namespace: str = ...
        ) -> list[dict[str, Any]]: ...

    def list_volumes(self, *, deadline: Deadline) -> list[Volume]:
        wql = datafile_query(self.disk_dir)
        rows = self._query(f"list the files in {self.disk_dir}", wql, deadline, CIMV2)
        out = []
        for row in rows:
            ext = str(row.get("Extension") or "")
            kind = KINDS.get(ext.lower())
            if kind is None:  # the query selects these only; a server may answer more
                continue
            leaf = f"{row.get('FileName') or ''}.{ext}"
            size = row.get("FileSize")
            out.append(
                Volume(
                    path=f"{self.disk_dir}\\{leaf}",
                    name=leaf,
                    pool=self.disk_dir,
                    size_mib=int(size) // (1024 * 1024) if size not in (None, "") else None,
                    kind=kind,
                )
            )
        return out
