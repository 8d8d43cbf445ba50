"""Moving a VM between hypervisors of any vendors: ``vmctl.move(vm, target, ...)``.

>>> report = vmctl.move(src.vm("web-1"), vmctl.connect("xen://root@xcp1"),
...                     network_map={"VM Network": "Pool-wide network"}, power_on=True)
>>> report.verified, report.disks[0].source_digest
>>> print(report)                      # the mapping report: what changed, what the guest needs

Built on the backup core's pieces: the source's disks are read through its ``DiskAccess``
point in time, the target VM's spec comes from the neutral configuration
(``spec_from_config``), the disks are written through the target's ``DiskWriter`` and read
back with ``disk_digests``. See docs/move.md and the MOVE-* clauses of spec/SPEC.md.
"""

from __future__ import annotations

from ._digest import digest_of as move_digest
from ._job import move
from ._model import MappingKind, MappingNote, MovedDisk, MoveReport

__all__ = ["MappingKind", "MappingNote", "MoveReport", "MovedDisk", "move", "move_digest"]
