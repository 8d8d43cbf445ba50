"""Chunks: content-addressed, compressed blobs (the layout of restic's and Proxmox Backup
Server's chunk stores).

A chunk is named by the SHA-256 of its *uncompressed* content and stored once at
``chunks/<first two hex digits>/<64 hex digits>`` however many disks, VMs and backups hold
it. The stored object is a frame::

    b"VMCTLCK1" | codec (1 byte: 0 raw, 1 zstd) | payload

zstd is used where it makes the chunk smaller, else the content is stored raw. Whether zstd
is worth trying is decided on samples first (as borg's ``auto`` compression decides with a
fast trial): a chunk whose samples zstd cannot shrink (encrypted or already compressed
data) is stored raw without compressing it whole. Reading a chunk decompresses it and
checks the hash, so a damaged chunk is never restored silently.
"""

from __future__ import annotations

import hashlib
import re
import threading
from typing import Any, TypeAlias

from ._errors import RepositoryError

MAGIC = b"VMCTLCK1"
RAW, ZSTD = 0, 1
ZSTD_LEVEL = 3
#: The trial: SAMPLES pieces of SAMPLE bytes spread over the chunk, compressed at level 1;
#: if they shrink by less than 1/SAVES_AT_LEAST of their size the chunk is stored raw.
SAMPLES, SAMPLE, SAVES_AT_LEAST = 8, 8192, 32
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_local = threading.local()
Buffer: TypeAlias = bytes | bytearray | memoryview


class CorruptChunk(RepositoryError):
    """A chunk whose frame, compression or hash is wrong."""


def digest_of(data: Buffer) -> str:
    return hashlib.sha256(data).hexdigest()


def is_digest(text: object) -> bool:
    return isinstance(text, str) and _DIGEST.match(text) is not None


def chunk_path(digest: str) -> str:
    return f"chunks/{digest[:2]}/{digest}"


def _zstd() -> tuple[Any, Any, Any]:
    """This thread's (compressor, decompressor, trial compressor)."""
    codecs = getattr(_local, "codecs", None)
    if codecs is None:
        import zstandard

        codecs = (
            zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True),
            zstandard.ZstdDecompressor(),
            zstandard.ZstdCompressor(level=1),
        )
        _local.codecs = codecs
    return codecs


_zeros: dict[int, bytes] = {}  # by length: the chunk size and a last chunk or two


def is_zero(data: Buffer) -> bool:
    """Whether ``data`` is all zero bytes (a memcmp against a kept block of zeroes)."""
    if isinstance(data, memoryview):
        data = data.tobytes()
    n = len(data)
    zeros = _zeros.get(n)
    if zeros is None:
        if len(_zeros) >= 4:
            _zeros.clear()
        zeros = _zeros[n] = bytes(n)
    return data == zeros


def worth_compressing(data: Buffer) -> bool:
    """The trial: whether zstd shrinks samples of ``data`` enough to try it whole."""
    view = memoryview(data).cast("B")
    n = len(view)
    if n <= SAMPLES * SAMPLE * 2:
        return True
    _, _, trial = _zstd()
    step = (n - SAMPLE) // (SAMPLES - 1)
    packed = sum(len(trial.compress(view[i * step : i * step + SAMPLE])) for i in range(SAMPLES))
    return packed < SAMPLES * SAMPLE * (SAVES_AT_LEAST - 1) // SAVES_AT_LEAST


def pack(data: Buffer) -> tuple[bytes, Buffer]:
    """(header, payload) of a chunk's frame: kept apart so that a raw chunk is written
    without copying it."""
    if worth_compressing(data):
        compressor, _, _ = _zstd()
        packed: bytes = compressor.compress(data)
        if len(packed) < len(memoryview(data)):
            return MAGIC + bytes([ZSTD]), packed
    return MAGIC + bytes([RAW]), data


def encode(data: Buffer) -> tuple[str, bytes]:
    """(digest, frame) of a chunk's content."""
    header, payload = pack(data)
    return digest_of(data), header + bytes(payload)


def decode(frame: bytes, digest: str, max_size: int) -> bytes:
    """The content of a stored chunk; CorruptChunk if the frame or hash is wrong."""
    if len(frame) < len(MAGIC) + 1 or not frame.startswith(MAGIC):
        raise CorruptChunk("not a vmctl chunk (bad header)")
    codec, payload = frame[len(MAGIC)], frame[len(MAGIC) + 1 :]
    if codec == RAW:
        data = payload
    elif codec == ZSTD:
        _, decompressor, _ = _zstd()
        try:
            data = decompressor.decompress(payload, max_output_size=max_size)
        except Exception as exc:  # zstandard.ZstdError
            raise CorruptChunk(f"cannot decompress: {exc}") from exc
    else:
        raise CorruptChunk(f"unknown codec {codec}")
    actual = digest_of(data)
    if actual != digest:
        raise CorruptChunk(f"content hash {actual[:16]}... does not match its name")
    return bytes(data)
