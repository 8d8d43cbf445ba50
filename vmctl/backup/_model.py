"""What backup, restore, verify and prune hand back: frozen value classes."""

from __future__ import annotations

import datetime as dt
import enum

from attrs import frozen

from .._diskaccess import Consistency


class BackupKind(enum.StrEnum):
    FULL = "full"  # every allocated chunk read from the host
    INCREMENTAL = "incremental"  # only the chunks changed since the parent backup read


@frozen
class BackupDisk:
    """One disk in a backup."""

    id: str
    size_bytes: int
    chunks: int  # chunks in the disk's index
    data_chunks: int  # of which hold data (the others are all zeroes, stored as none)
    read_chunks: int  # chunks read from the host by this backup
    new_chunks: int  # chunks this backup added to the repository (the others deduplicated)
    name: str | None = None
    note: str = ""  # why this disk was read whole in an incremental backup


@frozen
class BackupInfo:
    """One complete backup in a repository.

    ``kind`` says whether only changed extents were read, ``reason`` why (e.g. "full: no
    earlier backup of this VM in the repository"); ``consistency`` the level the point in
    time reached; ``parent`` the backup whose chunk lists an incremental backup started
    from. Each backup's index is complete: it restores without its parent.
    """

    id: str
    vm_uuid: str
    vm_name: str
    created: dt.datetime
    kind: BackupKind
    reason: str
    consistency: Consistency
    parent: str | None
    disks: tuple[BackupDisk, ...]
    size_bytes: int  # the disks' sizes added up
    read_bytes: int  # read from the host
    new_bytes: int  # stored in the repository (compressed) by this backup
    duration_s: float
    source: str  # the URI of the host the VM was on
    repo: str  # the repository's URL


@frozen
class BackupProgress:
    """Progress of a long job, handed to ``progress=`` callbacks (a few times a second at
    most): ``phase`` is "backup", "restore" or "verify"."""

    phase: str
    done_bytes: int
    total_bytes: int
    disk_id: str | None = None


@frozen
class VerifyProblem:
    """A chunk or manifest that failed verification: where in which disk of which backup."""

    backup_id: str
    error: str
    disk_id: str | None = None
    offset: int | None = None  # byte offset of the chunk in the disk
    length: int | None = None
    chunk: str | None = None  # the chunk's SHA-256


@frozen
class VerifyReport:
    backups: tuple[str, ...]
    chunks_checked: int
    bytes_checked: int
    problems: tuple[VerifyProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


@frozen
class PruneReport:
    kept: tuple[str, ...]
    removed: tuple[str, ...]
    chunks_removed: int
    bytes_freed: int
    dry_run: bool
