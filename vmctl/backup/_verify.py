"""Verification (as Proxmox Backup Server's verify jobs): read back every chunk a backup
needs, decompress it, check its SHA-256; each distinct chunk once however many backups
share it. A problem names the backup, the disk and the byte offset of the chunk."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from .._errors import NotFound
from ._backup import Reporter, check_progress
from ._chunking import chunk_span
from ._chunks import CorruptChunk
from ._errors import RepositoryError
from ._model import VerifyProblem, VerifyReport

if TYPE_CHECKING:
    from ._manifest import Manifest
    from ._repo import Progress, Repository

WORKERS = 4


def verify(repo: Repository, backup_id: str | None, progress: Progress | None) -> VerifyReport:
    check_progress(progress)
    problems: list[VerifyProblem] = []
    manifests: list[Manifest]
    if backup_id is not None:
        try:
            manifests = [repo.manifest(backup_id)]
        except RepositoryError as exc:
            return VerifyReport((backup_id,), 0, 0, (VerifyProblem(backup_id, str(exc)),))
    else:
        manifests, bad = repo.manifests()
        problems += [VerifyProblem(bid, str(exc)) for bid, exc in bad]
    sizes: dict[str, int] = {}
    for m in manifests:
        for d in m.disks:
            for i, c in enumerate(d.chunks):
                if c is not None:
                    sizes[c] = chunk_span(i, d.size_bytes, m.chunk_size)[1]
    reporter = Reporter(progress, "verify", sum(sizes.values()))

    def check(digest: str) -> str | None:
        try:
            data = repo.read_chunk(digest)
        except NotFound:
            return "the chunk is missing"
        except CorruptChunk as exc:
            return str(exc)
        if len(data) != sizes[digest]:
            return f"the chunk holds {len(data)} bytes, the index says {sizes[digest]}"
        return None

    errors: dict[str, str | None] = {}
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="vmctl-verify") as pool:
        for digest, error in zip(sizes, pool.map(check, sizes), strict=True):
            errors[digest] = error
            reporter.add(sizes[digest], None)
    reporter.add(0, None, final=True)
    for m in manifests:
        for d in m.disks:
            for i, c in enumerate(d.chunks):
                if c is not None and errors.get(c):
                    offset, length = chunk_span(i, d.size_bytes, m.chunk_size)
                    problems.append(
                        VerifyProblem(
                            backup_id=m.id,
                            error=f"disk {d.id} at offset {offset}: {errors[c]}",
                            disk_id=d.id,
                            offset=offset,
                            length=length,
                            chunk=c,
                        )
                    )
    ids = tuple(m.id for m in manifests) if backup_id is None else (backup_id,)
    return VerifyReport(
        backups=ids,
        chunks_checked=len(sizes),
        bytes_checked=sum(sizes.values()),
        problems=tuple(problems),
    )
