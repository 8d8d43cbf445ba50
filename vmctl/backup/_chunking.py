"""Fixed-size chunking of disk images (as Proxmox Backup Server's fixed index does).

A disk of ``size`` bytes is cut at multiples of ``chunk_size``; chunk ``i`` covers
``[i * chunk_size, min((i + 1) * chunk_size, size))``, so the last one may be shorter. A
block changed in place changes exactly the chunks it falls in, which is what changed-block
tracking reports: no content-defined chunking is needed for disk images.
"""

from __future__ import annotations

from collections.abc import Iterable

from .._diskaccess import Extent


def chunk_count(size: int, chunk_size: int) -> int:
    return (size + chunk_size - 1) // chunk_size


def chunk_span(index: int, size: int, chunk_size: int) -> tuple[int, int]:
    """(offset, length) of chunk ``index`` of a disk of ``size`` bytes."""
    offset = index * chunk_size
    return offset, min(chunk_size, size - offset)


def chunks_touching(extents: Iterable[Extent], size: int, chunk_size: int) -> list[int]:
    """The indexes of the chunks that any of ``extents`` overlaps (clipped to the disk), in
    order, each once."""
    found: set[int] = set()
    last = chunk_count(size, chunk_size)
    for e in extents:
        end = min(e.offset + e.length, size)
        if end <= e.offset:
            continue
        found.update(range(e.offset // chunk_size, min((end - 1) // chunk_size + 1, last)))
    return sorted(found)


def coalesce(indexes: Iterable[int], max_run: int) -> list[tuple[int, int]]:
    """Sorted chunk indexes as (first, count) runs of at most ``max_run`` chunks."""
    out: list[tuple[int, int]] = []
    for i in sorted(set(indexes)):
        if out and out[-1][0] + out[-1][1] == i and out[-1][1] < max_run:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out
