"""The repository format's pure parts, with hypothesis: fixed-size chunking, the chunk
frame, and manifests (round trip, checksum, strict parsing)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmctl.backup import Consistency, CorruptChunk, RepositoryError
from vmctl.backup._chunking import chunk_count, chunk_span, chunks_touching, coalesce
from vmctl.backup._chunks import (
    MAGIC,
    RAW,
    ZSTD,
    decode,
    digest_of,
    encode,
    is_zero,
    pack,
    worth_compressing,
)
from vmctl.backup._manifest import DiskIndex, Manifest
from vmctl.backup._manifest import decode as decode_manifest
from vmctl.backup._manifest import encode as encode_manifest
from vmctl.backup._model import BackupKind
from vmctl.spi import Extent

sizes = st.integers(min_value=0, max_value=10_000)
chunk_sizes = st.sampled_from([1, 2, 7, 64, 100, 512])


@given(size=sizes, cs=chunk_sizes)
def test_chunks_tile_the_disk(size: int, cs: int) -> None:
    spans = [chunk_span(i, size, cs) for i in range(chunk_count(size, cs))]
    pos = 0
    for offset, length in spans:
        assert offset == pos and 0 < length <= cs
        pos += length
    assert pos == size


@given(
    size=sizes,
    cs=chunk_sizes,
    extents=st.lists(st.tuples(st.integers(0, 12_000), st.integers(1, 3_000)), max_size=8),
)
def test_chunks_touching_is_exactly_the_overlap(
    size: int, cs: int, extents: list[tuple[int, int]]
) -> None:
    got = chunks_touching([Extent(o, n) for o, n in extents], size, cs)
    want = set()
    for i in range(chunk_count(size, cs)):
        off, length = chunk_span(i, size, cs)
        if any(o < off + length and off < o + n for o, n in extents):
            want.add(i)
    assert got == sorted(want)


@given(st.lists(st.integers(0, 200), max_size=50), st.integers(1, 9))
def test_coalesce_covers_each_index_once(indexes: list[int], max_run: int) -> None:
    runs = coalesce(indexes, max_run)
    covered = [i for first, n in runs for i in range(first, first + n)]
    assert covered == sorted(set(indexes))
    assert all(1 <= n <= max_run for _, n in runs)


@given(st.binary(max_size=5000) | st.builds(lambda n: b"ab" * n, st.integers(0, 4000)))
def test_chunk_frame_round_trip(data: bytes) -> None:
    digest, frame = encode(data)
    assert digest == digest_of(data)
    assert frame.startswith(MAGIC) and frame[len(MAGIC)] in (0, 1)
    assert len(frame) <= len(data) + len(MAGIC) + 1  # never bigger than raw
    assert decode(frame, digest, 1 << 20) == data


@given(st.integers(0, 300_000), st.integers(-1, 299_999), st.sampled_from([bytes, bytearray]))
def test_is_zero_is_exactly_all_zero_bytes(n: int, pos: int, kind: type) -> None:
    data = bytearray(n)
    if 0 <= pos < n:
        data[pos] = 1
    buf = kind(data)
    assert is_zero(buf) == is_zero(memoryview(buf)) == (data.count(0) == n)


def test_the_trial_stores_incompressible_chunks_raw_and_compresses_the_rest() -> None:
    """A chunk zstd cannot shrink goes raw without being compressed whole (the same bytes
    object: no copy); one with a compressible part is compressed; both round-trip."""
    import random

    rnd = random.Random(5)
    noise = rnd.randbytes(4 << 20)
    assert not worth_compressing(noise)
    header, payload = pack(noise)
    assert header == MAGIC + bytes([RAW]) and payload is noise
    text = (b"the quick brown fox jumps over the lazy dog " * 100_000)[: 4 << 20]
    half = noise[: 2 << 20] + bytes(2 << 20)  # half noise, half zeroes
    sparse = bytearray(noise)
    sparse[1 << 20 : 3 << 20] = text[: 2 << 20]
    for data in (text, half, bytes(sparse)):
        assert worth_compressing(data)
        header, payload = pack(data)
        assert header == MAGIC + bytes([ZSTD]) and len(payload) < len(data) * 0.8
    for data in (noise, text, half):
        digest, frame = encode(data)
        assert decode(frame, digest, 4 << 20) == data


@given(st.binary(min_size=1, max_size=2000), st.data())
def test_any_damage_to_a_chunk_is_caught(data: bytes, draw: st.DataObject) -> None:
    digest, frame = encode(data)
    pos = draw.draw(st.integers(0, len(frame) - 1))
    damaged = bytearray(frame)
    damaged[pos] ^= draw.draw(st.integers(1, 255))
    with pytest.raises(CorruptChunk):
        decode(bytes(damaged), digest, 1 << 20)
    with pytest.raises(CorruptChunk):
        decode(frame[:-1] if len(frame) > len(MAGIC) + 1 else b"", digest, 1 << 20)


digests = st.one_of(st.none(), st.binary(min_size=1, max_size=8).map(digest_of))
names = st.text(st.characters(codec="utf-8"), max_size=20)


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    cs = draw(st.sampled_from([64, 4096]))
    disks = []
    for i in range(draw(st.integers(0, 3))):
        size = draw(st.integers(0, 20 * cs))
        n = -(-size // cs)
        disks.append(
            DiskIndex(
                id=f"disk{i}",
                size_bytes=size,
                chunks=tuple(draw(st.lists(digests, min_size=n, max_size=n))),
                name=draw(st.none() | names),
                bus=draw(st.none() | st.just("virtio")),
                checkpoint=draw(st.none() | names),
                read_chunks=draw(st.integers(0, n)),
                new_chunks=draw(st.integers(0, n)),
                note=draw(names),
            )
        )
    created = draw(st.datetimes(timezones=st.just(dt.UTC)))
    return Manifest(
        id=draw(names),
        vm_uuid=draw(names),
        vm_name=draw(names),
        source="sim://x",
        driver="sim",
        created=created,
        completed=created + dt.timedelta(seconds=draw(st.integers(0, 10**6))),
        kind=draw(st.sampled_from(list(BackupKind))),
        reason=draw(names),
        parent=draw(st.none() | names),
        consistency=draw(st.sampled_from(list(Consistency))),
        chunk_size=cs,
        config={"vcpus": draw(st.integers(1, 8)), "name": draw(names)},
        disks=tuple(disks),
        stats={"read_bytes": draw(st.integers(0, 10**12))},
    )


@settings(max_examples=60)
@given(manifests())
def test_manifest_round_trip(m: Manifest) -> None:
    assert decode_manifest(encode_manifest(m), "m.json") == m


@settings(max_examples=60)
@given(manifests(), st.data())
def test_any_edit_of_a_manifest_is_refused(m: Manifest, data: st.DataObject) -> None:
    doc = json.loads(encode_manifest(m))
    key = data.draw(st.sampled_from(sorted(k for k in doc if k != "checksum")))
    doc[key] = "edited" if doc[key] != "edited" else "again"
    with pytest.raises(RepositoryError, match=r"m\.json"):
        decode_manifest(json.dumps(doc).encode(), "m.json")


@pytest.mark.parametrize(
    "text",
    [b"", b"not json", b"[]", b'{"format": "other"}', b'{"format": "vmctl-backup-manifest"}'],
)
def test_not_a_manifest(text: bytes) -> None:
    with pytest.raises(RepositoryError, match="damaged or not a manifest"):
        decode_manifest(text, "x.json")


def test_newer_manifest_version_says_upgrade() -> None:
    with pytest.raises(RepositoryError, match="upgrade vmctl"):
        decode_manifest(b'{"format": "vmctl-backup-manifest", "version": 2}', "x.json")


def test_wrong_chunk_count_is_refused_even_with_a_good_checksum() -> None:
    import hashlib

    from vmctl.backup._manifest import _canonical

    m = Manifest(
        id="b",
        vm_uuid="u",
        vm_name="n",
        source="sim://",
        driver="sim",
        created=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        completed=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        kind=BackupKind.FULL,
        reason="r",
        parent=None,
        consistency=Consistency.STOPPED,
        chunk_size=64,
        config={},
        disks=(DiskIndex(id="d", size_bytes=128, chunks=(None, None)),),
    )
    doc = json.loads(encode_manifest(m))
    doc["disks"][0]["chunks"] = [None]
    del doc["checksum"]
    doc["checksum"] = "sha256:" + hashlib.sha256(_canonical(doc)).hexdigest()
    with pytest.raises(RepositoryError, match="lists 1 chunks for 128 bytes"):
        decode_manifest(json.dumps(doc).encode(), "x.json")
