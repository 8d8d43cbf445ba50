"""Prune (restic's forget + prune): decide per VM which backups a policy keeps, delete the
other manifests, then the chunks no remaining backup needs.

Manifests go first and chunks after, so a prune killed half-way leaves only unreferenced
chunks (removed by the next prune), never a listed backup with a chunk missing. It holds
the exclusive lock: no backup runs meanwhile (a backup reuses chunks it finds present).
Every backup's index is complete, so removing any backup never breaks another one.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from .._errors import ValidationError
from ._chunks import is_digest
from ._locks import PREFIX, acquire, others, stale
from ._model import PruneReport
from ._repo import chunk_ids
from ._store import TMP_MARK

if TYPE_CHECKING:
    from ._manifest import Manifest
    from ._repo import Repository


def _count(value: object, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(f"must be a whole number >= 0, got {value!r}", field=field)
    return value


def select(manifests: list[Manifest], keep_last: int | None, keep_daily: int | None) -> set[str]:
    """The ids a policy keeps, per VM: the ``keep_last`` newest, and the newest backup of
    each of the ``keep_daily`` most recent days (UTC) that have one."""
    by_vm: dict[str, list[Manifest]] = defaultdict(list)
    for m in manifests:
        by_vm[m.vm_uuid].append(m)
    keep: set[str] = set()
    for backups in by_vm.values():
        newest = sorted(backups, key=lambda m: (m.created, m.id), reverse=True)
        keep.update(m.id for m in newest[: keep_last or 0])
        days: set[object] = set()
        for m in newest:
            if keep_daily is None or len(days) >= keep_daily:
                break
            day = m.created.date()
            if day not in days:
                days.add(day)
                keep.add(m.id)
    return keep


def prune(
    repo: Repository, *, keep_last: int | None, keep_daily: int | None, dry_run: bool
) -> PruneReport:
    keep_last = _count(keep_last, "keep_last")
    keep_daily = _count(keep_daily, "keep_daily")
    if keep_last is None and keep_daily is None:
        raise ValidationError(
            "give a policy: keep_last=N and/or keep_daily=N (prune removes what no policy keeps)",
            field="keep_last",
        )
    if not isinstance(dry_run, bool):
        raise ValidationError("must be True or False", field="dry_run")
    store = repo._store
    lock = acquire(store, "prune", exclusive=True)
    try:
        manifests, bad = repo.manifests()
        keep = select(manifests, keep_last, keep_daily)
        kept = [m for m in manifests if m.id in keep]
        gone = [m for m in manifests if m.id not in keep]
        if not dry_run:
            for m in gone:
                store.delete(repo.manifest_path(m.vm_uuid, m.id))
        chunks_removed = bytes_freed = 0
        if not bad:  # an unreadable manifest may need any chunk: sweep nothing then
            needed = chunk_ids(kept)
            for rel, meta in store.list("chunks").items():
                name = rel.rsplit("/", 1)[-1]
                if TMP_MARK in name or (is_digest(name) and name not in needed):
                    chunks_removed += 0 if TMP_MARK in name else 1
                    bytes_freed += int(meta.get("size") or 0)
                    if not dry_run:
                        store.delete(rel)
            if not dry_run:
                for rel, info in others(store, lock.path).items():
                    if stale(info) and rel.startswith(PREFIX):
                        store.delete(rel)
    finally:
        lock.release()
    return PruneReport(
        kept=tuple(m.id for m in kept),
        removed=tuple(m.id for m in gone),
        chunks_removed=chunks_removed,
        bytes_freed=bytes_freed,
        dry_run=dry_run,
    )
