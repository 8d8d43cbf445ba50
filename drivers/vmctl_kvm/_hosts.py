"""``SiteMember`` for ``KvmDriver`` (a mixin): libvirtds joined as one ``vmctl.Site``.

* inventory: every domain (``virConnectListAllDomains``) with its persistent definition
  (``XMLDesc(INACTIVE | MIGRATABLE)``, without ``SECURE``: no passwords are saved), its disk
  files, and what ties it to this host (``_ties``): ``pinned`` when it has a ``<hostdev>``
  (a passthrough device no other host has) in either its persistent or, running, its live
  definition, a ``live_blocker`` for a device libvirt does not migrate live, read from the
  live definition of a running domain (a device hot-plugged since its start counts);
* reach: a disk path another libvirtd knows as a storage volume after refreshing its pools
  on that directory (``virStorageVolLookupByPath``); the live migration itself probes
  again with a file it creates (``KvmDriver._storage_shared``) unless the URI says
  ``shared_storage=yes``;
* moves: LIVE is ``migrate_vm(live=True)`` (``virDomainMigrate3``, ``VIR_MIGRATE_LIVE |
  PERSIST_DEST | UNDEFINE_SOURCE``); COLD is ``migrate_vm(live=False)`` (``VIR_MIGRATE_OFFLINE``:
  libvirt defines the domain on the target and undefines it here); a RESTART move is the
  core's (the site's driver does not restart in place: ACPI shutdown through the member, this
  COLD move, a start there), handed here it is refused (NotSupported) before anything changes;
* recovery: ``restore_vm`` (``_recovery``);
* a failed host back after its VMs were recovered elsewhere: ``forget_vm`` turns the
  domain's autostart off and undefines it (``virDomainUndefineFlags``: its managed-save image
  and snapshot/checkpoint metadata go, its NVRAM and TPM state stay, no disk is touched);
  a running domain is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from vmctl import InvalidState, NotSupported
from vmctl.spi import Deadline, Driver, MoveMode, SiteMember, SiteVM, Task

from . import _errors as E
from . import _ties
from . import _xml as X
from ._link import require_libvirt
from ._recovery import KvmRestore, reached_paths

_INACTIVE_MIGRATABLE = 2 | 8  # VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_MIGRATABLE


class KvmSiteMember(KvmRestore, SiteMember):
    """See the module."""

    if TYPE_CHECKING:
        is_test: bool

        def migrate_vm(
            self, uuid: str, target: Driver, *, live: bool, deadline: Deadline
        ) -> None: ...

    def site_inventory(
        self, uuids: Sequence[str] | None = None, *, deadline: Deadline
    ) -> dict[str, SiteVM]:
        def domains(c: Any) -> list[Any]:
            if uuids is None:
                return list(c.listAllDomains(0))
            found = []
            for uuid in uuids:
                try:
                    found.append(c.lookupByUUIDString(uuid))
                except Exception as exc:
                    if E.code_of(exc) != E.NO_DOMAIN:
                        raise
            return found

        def read(c: Any) -> dict[str, SiteVM]:
            out = {}
            for dom in domains(c):
                xml = dom.XMLDesc(_INACTIVE_MIGRATABLE)
                root = X.parse(xml)
                disks = tuple(d.path for d in X.disks_of(root) if d.path)
                # A running guest moves live with what it runs with, devices hot-plugged
                # since its start included; its restart takes the persistent definition.
                live = X.parse(dom.XMLDesc(0)) if dom.isActive() else root
                out[dom.UUIDString()] = SiteVM(
                    definition=xml,
                    disks=disks,
                    pinned=_ties.pinned(live) or _ties.pinned(root),
                    live_blocker=_ties.live_blocker(live),
                )
            return out

        inventory: dict[str, SiteVM] = self._call(
            f"read the domains of {self._link.uri}", read, deadline
        )
        return inventory

    def reaches(self, locations: Sequence[str], *, deadline: Deadline) -> set[str]:
        found: set[str] = self._call(
            f"look up disk paths on {self._link.uri}",
            lambda c: reached_paths(c, list(locations)),
            deadline,
        )
        return found

    def move_to_peer(
        self, uuid: str, peer: Driver, *, mode: MoveMode, deadline: Deadline
    ) -> Task | None:
        if mode is MoveMode.RESTART:
            raise NotSupported(
                "a restart move is not done in one call between libvirtds (vmctl.execute "
                "composes it: shut down, move cold, start)"
            )
        self.migrate_vm(uuid, peer, live=mode is MoveMode.LIVE, deadline=deadline)
        return None

    def forget_vm(self, uuid: str, *, deadline: Deadline) -> None:
        lv = require_libvirt()
        flags = lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | lv.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        if not self.is_test:  # the test driver knows neither NVRAM nor checkpoints
            flags |= lv.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM | lv.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA

        def forget(c: Any) -> None:
            try:
                dom = c.lookupByUUIDString(uuid)
            except Exception as exc:
                if E.code_of(exc) != E.NO_DOMAIN:
                    raise
                return  # not defined here (an earlier try, or never)
            if dom.isActive():
                raise InvalidState(
                    f"VM {dom.name()!r} ({uuid}) runs on {self._link.uri}: its definition "
                    "there is left alone"
                )
            keep_tpm = 0
            if not self.is_test and c.getLibVersion() >= 8_009_000:  # KEEP_TPM: libvirt 8.9
                keep_tpm = lv.VIR_DOMAIN_UNDEFINE_KEEP_TPM
            dom.setAutostart(0)  # before the undefine: never started here by libvirtd again
            dom.undefineFlags(flags | keep_tpm)

        self._call(f"undefine VM {uuid} on {self._link.uri}", forget, deadline, change=True)
