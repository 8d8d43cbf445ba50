"""The repository's batched writes (``Store.batch``): objects are flushed to disk before they
appear under their names, appear only at ``commit``, and leave nothing behind when aborted
or when the commit fails. The flush itself is observed (recorded), not replaced."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

import pytest

from vmctl import InsufficientResources
from vmctl.backup import _store
from vmctl.backup._store import TMP_MARK, Store


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_commit_flushes_then_renames_then_flushes_the_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(str(tmp_path))
    seen: list[tuple[list[str], list[str]]] = []  # (paths flushed, files present then)
    real = _store._fsync_all

    def record(paths: Iterable[str]) -> None:
        got = list(paths)
        seen.append((got, files(tmp_path)))
        real(got)

    monkeypatch.setattr(_store, "_fsync_all", record)
    batch = store.batch()
    batch.put("chunks/ab/one", b"head-", bytearray(b"payload"), memoryview(b"!"))
    batch.put("chunks/cd/two", b"x" * 100_000)
    assert len(batch) == 2
    assert not store.exists("chunks/ab/one") and not store.exists("chunks/cd/two")
    assert all(TMP_MARK in f for f in files(tmp_path))
    batch.commit()
    assert store.get("chunks/ab/one") == b"head-payload!"
    assert store.get("chunks/cd/two") == b"x" * 100_000
    assert files(tmp_path) == ["chunks/ab/one", "chunks/cd/two"]
    (flushed, present), (dirs, _) = seen
    assert sorted(os.path.basename(p).split(TMP_MARK)[0] for p in flushed) == ["one", "two"]
    assert all(TMP_MARK in f for f in present)  # flushed while still under temporary names
    assert sorted(dirs) == [str(tmp_path / "chunks/ab"), str(tmp_path / "chunks/cd")]
    assert len(batch) == 0
    batch.commit()  # nothing staged: nothing done
    assert len(seen) == 2


def test_abort_and_a_failed_commit_leave_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(str(tmp_path))
    batch = store.batch()
    batch.put("chunks/ab/one", b"1")
    batch.abort()
    assert files(tmp_path) == []
    batch.put("chunks/ab/two", b"2")

    def full(paths: Iterable[str]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_store, "_fsync_all", full)
    with pytest.raises(InsufficientResources, match="is full"):
        batch.commit()
    assert files(tmp_path) == []
