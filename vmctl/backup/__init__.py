"""Backup and restore of VMs, written once in the core over the drivers' disk primitives.

>>> import vmctl
>>> repo = vmctl.open_repo("/srv/backups")            # or "s3://bucket/vmctl", any fsspec URL
>>> info = vm.backup(repo)                             # incremental when it can be
>>> info.kind, info.reason, info.consistency
>>> repo.backups(vm)                                   # complete backups only
>>> repo.verify(info.id).ok
>>> new = repo.restore(info.id, hv, name="web-1-restored")
>>> repo.prune(keep_last=7, keep_daily=30)

The repository format is documented in docs/backup.md and specified by the BACKUP-FORMAT-*
clauses of spec/SPEC.md. Small modules, one job each: ``_store`` (fsspec, atomic writes,
retries, errors), ``_chunks`` (hash, compress, frame), ``_chunking`` (fixed-size chunks),
``_manifest`` (the manifest document), ``_locks``, ``_repo`` (the Repository), ``_backup``,
``_restore``, ``_verify``, ``_prune``, ``_diskio`` (direct disk reads and writes).
"""

from __future__ import annotations

from .._diskaccess import Consistency
from ._backup import backup_vm
from ._chunks import CorruptChunk
from ._diskio import disk_digests, read_disk, write_disk
from ._errors import RepositoryError
from ._model import (
    BackupDisk,
    BackupInfo,
    BackupKind,
    BackupProgress,
    PruneReport,
    VerifyProblem,
    VerifyReport,
)
from ._repo import DEFAULT_CHUNK_SIZE, Repository, open_repo

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "BackupDisk",
    "BackupInfo",
    "BackupKind",
    "BackupProgress",
    "Consistency",
    "CorruptChunk",
    "PruneReport",
    "Repository",
    "RepositoryError",
    "VerifyProblem",
    "VerifyReport",
    "backup_vm",
    "disk_digests",
    "open_repo",
    "read_disk",
    "write_disk",
]
