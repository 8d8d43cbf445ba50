"""``StorageListing`` for ``EsxDriver`` (a mixin): the virtual disk files on the datastores
this connection's host or cluster reaches, found with the datastore browser
(``HostDatastoreBrowser.SearchDatastoreSubFolders_Task``, one task per datastore).

A disk's path is the descriptor's datastore path, as ``VirtualDisk.backing.fileName`` gives
it (``[datastore1] web-1/web-1.vmdk``). Extent and tracking files (``-flat``, ``-delta``,
``-sesparse``, ``-ctk``) belong to their descriptor and are not listed; a snapshot's redo
log (``web-1-000001.vmdk``) is listed with kind "snapshot".
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

from vmctl.spi import Deadline, Driver, StorageListing, Task, Volume, finish_task

if TYPE_CHECKING:
    from ._conn import Connection

#: Files that are part of a disk whose descriptor is listed.
_PARTS = re.compile(r"-(flat|delta|sesparse|ctk|rdm|rdmp)\.vmdk$")
#: A snapshot's redo log: the descriptor of the disk's delta after a snapshot.
_REDO = re.compile(r"-\d{6}\.vmdk$")


class EsxStorage(StorageListing):
    """The datastore browser's view of the disk files (see the module)."""

    if TYPE_CHECKING:
        conn: Connection
        scope: Any

        def _task(self, task: Any, description: str) -> Task: ...

    def list_volumes(self, *, deadline: Deadline) -> list[Volume]:
        vim = self.conn.vim
        browser_spec = vim.host.DatastoreBrowser.SearchSpec(
            matchPattern=["*.vmdk"],
            details=vim.host.DatastoreBrowser.FileInfo.Details(fileSize=True, fileType=True),
        )
        out: list[Volume] = []
        with self.conn.within(deadline):
            usable = [(n, ref) for n, (ref, _, ok) in sorted(self.scope.datastores.items()) if ok]
            for name, ref in usable:
                browser = self.conn.retrieve_one(ref, vim.Datastore, ["browser"]).get("browser")
                if browser is None:
                    continue
                what = f"list the disk files of datastore {name!r}"
                task = self.conn.start_task(
                    lambda b=browser, n=name: b.SearchDatastoreSubFolders_Task(
                        datastorePath=f"[{n}]", searchSpec=browser_spec
                    ),
                    what,
                )
                outcome = finish_task(
                    cast(Driver, self), self._task(task, what), deadline=deadline, what=what
                )
                for folder in outcome.result or ():
                    out += _volumes(name, folder)
        return out


def _volumes(datastore: str, folder: Any) -> list[Volume]:
    """The disks of one folder of the search's result. ESX spells a folder
    ``[ds] dir/``, the simulator ``[ds]/dir``: both become ``[ds] dir/file.vmdk``."""
    text = str(folder.folderPath or f"[{datastore}]").strip()
    rest = text.partition("]")[2] if text.startswith("[") else text
    rest = rest.strip().strip("/")
    base = f"[{datastore}] {rest}/" if rest else f"[{datastore}] "
    out = []
    for f in folder.file or ():
        name = str(f.path)
        if _PARTS.search(name):
            continue
        size = getattr(f, "fileSize", None)
        out.append(
            Volume(
                path=f"{base}{name}",
                name=name,
                pool=datastore,
                size_mib=int(size) // (1024 * 1024) if size is not None else None,
                kind="snapshot" if _REDO.search(name) else "disk",
            )
        )
    return out
