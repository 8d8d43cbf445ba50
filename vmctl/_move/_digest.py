"""The digest a move compares: the SHA-256 of the list of the SHA-256s of a disk's 4 MiB
pieces (piece ``i`` covers ``[i * PIECE, min((i + 1) * PIECE, size))``; the last may be
shorter), each a raw 32-byte digest, in order.

A piece of zeroes has a known digest, so neither side hashes or reads a hole: the source
hashes the pieces it copies, the target the pieces its ``allocated_extents`` name (a
driver that cannot tell names the whole disk). Any byte that differs anywhere in the disk
changes the digest, as with the SHA-256 of the whole disk; ``digest_of(content)`` gives it
for bytes at hand (tests, the kit).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping

from ..backup._chunking import chunk_count, chunk_span

MIB = 1024 * 1024
PIECE = 4 * MIB


@functools.lru_cache(maxsize=4)
def _zero_piece(length: int) -> bytes:
    return hashlib.sha256(bytes(length)).digest()


def is_zero(digest: bytes, length: int) -> bool:
    """Whether the piece of ``length`` bytes with this digest is all zeroes (SHA-256 tells:
    no scan of the data besides the hash)."""
    return digest == _zero_piece(length)


def piece_hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def combine(size: int, pieces: Mapping[int, bytes]) -> str:
    """The disk's digest from the digests of the pieces that may hold data (by index); every
    other piece is zeroes."""
    h = hashlib.sha256()
    for i in range(chunk_count(size, PIECE)):
        got = pieces.get(i)
        h.update(got if got is not None else _zero_piece(chunk_span(i, size, PIECE)[1]))
    return h.hexdigest()


def digest_of(content: bytes) -> str:
    """The digest of a disk holding ``content`` (its whole size)."""
    size = len(content)
    return combine(
        size,
        {
            i: piece_hash(content[o : o + n])
            for i in range(chunk_count(size, PIECE))
            for o, n in [chunk_span(i, size, PIECE)]
        },
    )
