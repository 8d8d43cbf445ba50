"""Chunks: content-addressed, compressed blobs (the layout of restic's and Proxmox Backup
Server's chunk stores).

A chunk is named by the SHA-256 of its *uncompressed* content and stored once at
``chunks/<first two hex digits>/<64 hex digits>`` however many disks, VMs and backups hold
it. The stored object is a frame::

    b"VMCTLCK1" | codec (1 byte: 0 raw, 1 zstd) | payload

zstd is used where it makes the chunk smaller, else the content is stored raw. Reading a
chunk decompresses it and checks the hash, so a damaged chunk is never restored silently.
"""

from __future__ import annotations

import hashlib
import re
import threading

from ._errors import RepositoryError

MAGIC = b"VMCTLCK1"
RAW, ZSTD = 0, 1
ZSTD_LEVEL = 3
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_local = threading.local()


class CorruptChunk(RepositoryError):
    """A chunk whose frame, compression or hash is wrong."""


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_digest(text: object) -> bool:
    return isinstance(text, str) and _DIGEST.match(text) is not None


def chunk_path(digest: str) -> str:
    return f"chunks/{digest[:2]}/{digest}"


def _zstd() -> tuple[object, object]:
    codecs = getattr(_local, "codecs", None)
    if codecs is None:
        import zstandard

        codecs = (
            zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True),
            zstandard.ZstdDecompressor(),
        )
        _local.codecs = codecs
    return codecs


def encode(data: bytes) -> tuple[str, bytes]:
    """(digest, frame) of a chunk's content."""
    compressor, _ = _zstd()
    packed: bytes = compressor.compress(data)  # type: ignore[attr-defined]
    if len(packed) < len(data):
        return digest_of(data), MAGIC + bytes([ZSTD]) + packed
    return digest_of(data), MAGIC + bytes([RAW]) + data


def decode(frame: bytes, digest: str, max_size: int) -> bytes:
    """The content of a stored chunk; CorruptChunk if the frame or hash is wrong."""
    if len(frame) < len(MAGIC) + 1 or not frame.startswith(MAGIC):
        raise CorruptChunk("not a vmctl chunk (bad header)")
    codec, payload = frame[len(MAGIC)], frame[len(MAGIC) + 1 :]
    if codec == RAW:
        data = payload
    elif codec == ZSTD:
        _, decompressor = _zstd()
        try:
            data = decompressor.decompress(payload, max_output_size=max_size)  # type: ignore[attr-defined]
        except Exception as exc:  # zstandard.ZstdError
            raise CorruptChunk(f"cannot decompress: {exc}") from exc
    else:
        raise CorruptChunk(f"unknown codec {codec}")
    actual = digest_of(data)
    if actual != digest:
        raise CorruptChunk(f"content hash {actual[:16]}... does not match its name")
    return bytes(data)
