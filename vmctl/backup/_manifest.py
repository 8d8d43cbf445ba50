"""Manifests: one JSON document per backup, written last (clauses BACKUP-FORMAT-* of
spec/SPEC.md; docs/backup.md shows one).

A manifest holds the neutral VM configuration, per disk its size and its complete ordered
chunk list (a SHA-256 per chunk, ``null`` for a chunk of zeroes), the consistency level
reached and, for an incremental backup, its parent. The ``checksum`` is the SHA-256 of the
canonical JSON (sorted keys, no spaces) of the document without it, so a damaged manifest
is refused rather than restored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from attrs import field, frozen

from .._diskaccess import Consistency
from ._chunking import chunk_count
from ._chunks import is_digest
from ._errors import RepositoryError
from ._model import BackupKind

FORMAT = "vmctl-backup-manifest"
VERSION = 1


@frozen
class DiskIndex:
    """One disk of a backup: its size and the digest of each chunk (None: zeroes)."""

    id: str
    size_bytes: int
    chunks: tuple[str | None, ...]
    name: str | None = None
    bus: str | None = None
    checkpoint: str | None = None
    read_chunks: int = 0
    new_chunks: int = 0
    note: str = ""


@frozen
class Manifest:
    id: str
    vm_uuid: str
    vm_name: str
    source: str
    driver: str
    created: dt.datetime
    completed: dt.datetime
    kind: BackupKind
    reason: str
    parent: str | None
    consistency: Consistency
    chunk_size: int
    config: Mapping[str, Any]
    disks: tuple[DiskIndex, ...]
    stats: Mapping[str, int] = field(factory=dict)

    def chunk_digests(self) -> set[str]:
        return {c for d in self.disks for c in d.chunks if c is not None}


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def encode(m: Manifest) -> bytes:
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "id": m.id,
        "vm": {"uuid": m.vm_uuid, "name": m.vm_name, "source": m.source, "driver": m.driver},
        "created": m.created.isoformat(),
        "completed": m.completed.isoformat(),
        "kind": m.kind.value,
        "reason": m.reason,
        "parent": m.parent,
        "consistency": m.consistency.value,
        "chunk_size": m.chunk_size,
        "hash": "sha256",
        "config": dict(m.config),
        "disks": [
            {
                "id": d.id,
                "name": d.name,
                "bus": d.bus,
                "size": d.size_bytes,
                "checkpoint": d.checkpoint,
                "read_chunks": d.read_chunks,
                "new_chunks": d.new_chunks,
                "note": d.note,
                "chunks": list(d.chunks),
            }
            for d in m.disks
        ],
        "stats": dict(m.stats),
    }
    doc["checksum"] = "sha256:" + hashlib.sha256(_canonical(doc)).hexdigest()
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


class _Reader:
    def __init__(self, where: str) -> None:
        self.where = where

    def bad(self, why: str) -> RepositoryError:
        return RepositoryError(f"the manifest {self.where} is damaged or not a manifest: {why}")

    def get(self, doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
        if key not in doc:
            raise self.bad(f"no {key!r}")
        value = doc[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            raise self.bad(f"{key!r} is {type(value).__name__}")
        return value

    def count(self, doc: Mapping[str, Any], key: str, low: int = 0) -> int:
        value: int = self.get(doc, key, int)
        if value < low:
            raise self.bad(f"{key!r} is {value}")
        return value

    def time(self, doc: Mapping[str, Any], key: str) -> dt.datetime:
        try:
            return dt.datetime.fromisoformat(self.get(doc, key, str))
        except ValueError as exc:
            raise self.bad(f"{key!r} is not a time") from exc


def decode(data: bytes, where: str) -> Manifest:
    """The manifest in ``data``; RepositoryError naming ``where`` if it is not one, is of a
    newer version, or fails its checksum."""
    r = _Reader(where)
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise r.bad(f"not JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise r.bad(f"its format is not {FORMAT!r}")
    version = r.get(doc, "version", int)
    if version > VERSION:
        raise RepositoryError(
            f"the manifest {where} has format version {version}; this vmctl reads up to "
            f"{VERSION}: upgrade vmctl"
        )
    checksum = r.get(doc, "checksum", str)
    body = {k: v for k, v in doc.items() if k != "checksum"}
    if checksum != "sha256:" + hashlib.sha256(_canonical(body)).hexdigest():
        raise r.bad("its checksum does not match its content")
    if doc.get("hash") != "sha256":
        raise r.bad(f"unknown hash {doc.get('hash')!r}")
    chunk_size = r.count(doc, "chunk_size", 1)
    vm = r.get(doc, "vm", dict)
    disks = []
    for raw in r.get(doc, "disks", list):
        if not isinstance(raw, dict):
            raise r.bad("a disk is not an object")
        size = r.count(raw, "size")
        chunks = r.get(raw, "chunks", list)
        if len(chunks) != chunk_count(size, chunk_size):
            raise r.bad(f"disk {raw.get('id')!r} lists {len(chunks)} chunks for {size} bytes")
        if not all(c is None or is_digest(c) for c in chunks):
            raise r.bad(f"disk {raw.get('id')!r} has a chunk that is not a SHA-256")
        disks.append(
            DiskIndex(
                id=r.get(raw, "id", str),
                size_bytes=size,
                chunks=tuple(chunks),
                name=r.get(raw, "name", (str, type(None))),
                bus=r.get(raw, "bus", (str, type(None))),
                checkpoint=r.get(raw, "checkpoint", (str, type(None))),
                read_chunks=r.count(raw, "read_chunks"),
                new_chunks=r.count(raw, "new_chunks"),
                note=r.get(raw, "note", str),
            )
        )
    try:
        kind = BackupKind(r.get(doc, "kind", str))
        consistency = Consistency(r.get(doc, "consistency", str))
    except ValueError as exc:
        raise r.bad(str(exc)) from exc
    stats = r.get(doc, "stats", dict)
    return Manifest(
        id=r.get(doc, "id", str),
        vm_uuid=r.get(vm, "uuid", str),
        vm_name=r.get(vm, "name", str),
        source=r.get(vm, "source", str),
        driver=r.get(vm, "driver", str),
        created=r.time(doc, "created"),
        completed=r.time(doc, "completed"),
        kind=kind,
        reason=r.get(doc, "reason", str),
        parent=r.get(doc, "parent", (str, type(None))),
        consistency=consistency,
        chunk_size=chunk_size,
        config=r.get(doc, "config", dict),
        disks=tuple(disks),
        stats={str(k): int(v) for k, v in stats.items() if isinstance(v, (int, float))},
    )
