"""Defining a VM of a failed libvirtd on this one, for ``vmctl.Site`` recovery (a mixin of
``KvmDriver``: ``SiteMember.restore_vm``).

The definition is the domain XML the site saved from the failed host's last inventory
(``XMLDesc`` with ``VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_MIGRATABLE``, so no
passwords). Before defining it, every disk file must be visible here as a storage volume
(``virStorageVolLookupByPath`` after refreshing the pools on the disks' directories: the
shared-storage probe); a host that does not see them is refused with ValidationError and
nothing is defined. A start that fails undefines what this call defined.

libvirt itself proves nothing about the failed host here: only a lock manager does
(virtlockd or sanlock leases on the disks, configured on every host with a lockspace on the
shared storage: then ``virDomainCreate`` fails while the failed host's QEMU, and with it the
lease, is alive). Such a refusal, or QEMU's own image lock, is raised as InvalidState naming
the VM and the holder, with nothing left defined here. vmctl cannot verify that every host
runs with leases, so its core still asks the caller to confirm the fencing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmctl import InvalidState, ValidationError
from vmctl.spi import Deadline

from . import _errors as E
from . import _xml as X

_ACTIVE_POOLS = 2  # VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE


def reached_paths(c: Any, paths: Sequence[str]) -> set[str]:
    """Which of ``paths`` the libvirtd behind ``c`` knows as storage volumes, after
    refreshing its active pools on those paths' directories (another host may have made
    the files since the pool was last read)."""
    dirs = {str(Path(p).parent) for p in paths}
    for pool in c.listAllStoragePools(_ACTIVE_POOLS):
        if X.parse(pool.XMLDesc(0)).findtext("target/path") in dirs:
            with contextlib.suppress(Exception):  # busy (a volume streaming): use what it has
                pool.refresh(0)
    out = set()
    for path in paths:
        try:
            c.storageVolLookupByPath(path)
        except Exception as exc:
            if E.code_of(exc) == E.NO_STORAGE_VOL:
                continue
            raise
        out.add(path)
    return out


class KvmRestore:
    """``restore_vm`` (see the module)."""

    if TYPE_CHECKING:
        _link: Any

        def _call(
            self, what: str, fn: Callable[[Any], Any], deadline: Deadline, *, change: bool = False
        ) -> Any: ...

    def restore_vm(self, definition: str, *, start: bool, deadline: Deadline) -> None:
        root = X.parse(definition)
        uuid = root.findtext("uuid") or ""
        name = root.findtext("name") or uuid
        what = f"define VM {name!r} on {self._link.uri}"
        paths = [d.path for d in X.disks_of(root) if d.path]

        def started(dom: Any, *, undefine: bool) -> None:
            """``dom`` started; on failure undefined again when this call defined it, and
            a disk lock held elsewhere raised as InvalidState."""
            try:
                dom.create()
            except Exception as exc:
                if undefine:
                    with contextlib.suppress(Exception):
                        dom.undefine()
                holder = E.disk_lock_holder(exc)
                if holder is None:
                    raise
                left = "Nothing is left defined here" if undefine else "It stays defined here"
                raise InvalidState(
                    f"VM {name!r} was not started on {self._link.uri}: {holder}, so it may "
                    f"still be running there ({E.message_of(exc)}). {left}: stop it there or "
                    "fence that host (power it off, cut it from the storage), then recover "
                    "again",
                    vendor_code=str(E.code_of(exc)) or None,
                ) from exc

        def restore(c: Any) -> None:
            try:
                dom = c.lookupByUUIDString(uuid)
            except Exception as exc:
                if E.code_of(exc) != E.NO_DOMAIN:
                    raise
                dom = None
            if dom is not None:  # defined here already (an earlier try): start it only
                if start and not dom.isActive():
                    started(dom, undefine=False)
                return
            missing = sorted(set(paths) - reached_paths(c, paths))
            if missing:
                raise ValidationError(
                    f"{what}: this host does not reach its disk(s) {', '.join(missing)} "
                    "(no storage pool here holds them: not shared storage)",
                    field="host",
                )
            dom = c.defineXML(definition)
            if start:
                started(dom, undefine=True)

        self._call(what, restore, deadline, change=True)
