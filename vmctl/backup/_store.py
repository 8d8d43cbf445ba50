"""The repository's storage, reached through fsspec: a local directory or any fsspec URL
(``s3://bucket/prefix``, ``gs://``, ``memory://``...).

Policy kept here, once: every object is written atomically (a local file goes to a
temporary name, is flushed to disk and renamed; an object store's PUT is atomic), so a
reader never sees half an object under its final name; transient failures are retried;
and storage faults become vmctl errors that say what to do (unreachable: ConnectionError,
full: InsufficientResources, read-only or not allowed: RepositoryError, missing: NotFound).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .._errors import ConnectionError, InsufficientResources, NotFound, VmctlError
from ._errors import RepositoryError

log = logging.getLogger("vmctl.backup")
T = TypeVar("T")

#: Attempts of one storage call that failed for a reason that may pass (a dropped
#: connection, a throttled request), and the first pause between them (doubling).
ATTEMPTS, FIRST_PAUSE = 2, 0.2
TMP_MARK = ".tmp-"
FSYNC_THREADS = 8

_FULL = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
_UNREACHABLE_NAMES = (
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ConnectionClosedError",
    "ReadTimeoutError",
    "ClientOSError",
)


def redact(url: str) -> str:
    """The URL without credentials (``scheme://user:secret@host`` -> ``scheme://host``)."""
    return re.sub(r"^([a-zA-Z0-9+.-]+://)[^/@]*@", r"\1", url)


def _chain(exc: BaseException) -> list[BaseException]:
    out = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        out.append(cur)
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return out


def unreachable(exc: BaseException) -> bool:
    for e in _chain(exc):
        if type(e).__name__ in _UNREACHABLE_NAMES or isinstance(
            e, (ConnectionRefusedError, ConnectionResetError, TimeoutError)
        ):
            return True
        if isinstance(e, OSError) and e.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH):
            return True
    return False


class Store:
    """A directory of objects under one fsspec URL."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = redact(url)
        try:
            import fsspec
        except ImportError as exc:  # pragma: no cover - a dependency of vmctl
            raise RepositoryError("backup repositories need fsspec: pip install fsspec") from exc
        target = url if "://" in url else os.path.abspath(os.path.expanduser(url))
        try:
            fs, root = fsspec.core.url_to_fs(target, **(storage_options or {}))
        except (ImportError, ValueError) as exc:
            raise RepositoryError(
                f"cannot open the repository {self.url}: {exc} (an fsspec URL such as "
                "/path/to/dir, file:///dir or s3://bucket/prefix, with its package installed)"
            ) from exc
        self.fs = fs
        self.root = root.rstrip("/")
        from fsspec.implementations.local import LocalFileSystem

        self.local = isinstance(fs, LocalFileSystem)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def rel(self, full: str) -> str:
        full = full.rstrip("/")
        return full[len(self.root) :].lstrip("/") if full.startswith(self.root) else full

    # -- error mapping and retries ---------------------------------------------------------

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one storage call; retry what may pass; map what does not."""
        pause = FIRST_PAUSE
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return fn()
            except VmctlError:
                raise
            except FileNotFoundError as exc:
                raise NotFound(f"{what}: not found in the repository {self.url}") from exc
            except Exception as exc:
                if unreachable(exc) and attempt < ATTEMPTS:
                    log.info("%s on %s failed (%s); retrying in %.1f s", what, self.url, exc, pause)
                    time.sleep(pause)
                    pause *= 2
                    continue
                raise self.mapped(what, exc) from exc
        raise AssertionError("unreachable")

    def mapped(self, what: str, exc: BaseException) -> VmctlError:
        where = f"the backup repository {self.url}"
        for e in _chain(exc):
            if isinstance(e, OSError) and e.errno in _FULL:
                return InsufficientResources(f"{what}: {where} is full ({e.strerror or e})")
        if unreachable(exc):
            return ConnectionError(f"{what}: {where} cannot be reached ({exc})", sent=None)
        for e in _chain(exc):
            if isinstance(e, PermissionError) or (isinstance(e, OSError) and e.errno in _READ_ONLY):
                return RepositoryError(
                    f"{what}: {where} is read-only or not writable by this user ({e})"
                )
        return RepositoryError(f"{what}: {where} failed: {type(exc).__name__}: {exc}")

    # -- objects ---------------------------------------------------------------------------

    def put(self, rel: str, data: bytes) -> None:
        """Write an object atomically: it appears whole under its name, or not at all."""
        full = self.path(rel)

        def local() -> None:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            tmp = f"{full}{TMP_MARK}{secrets.token_hex(4)}"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, full)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

        if self.local:
            self.call(f"write {rel}", local)
        else:
            self.call(f"write {rel}", lambda: self.fs.pipe_file(full, data))

    def batch(self) -> Batch:
        """A batch of objects made durable and visible together (``Batch.commit``)."""
        return Batch(self)

    def get(self, rel: str) -> bytes:
        data = self.call(f"read {rel}", lambda: self.fs.cat_file(self.path(rel)))
        return bytes(data)

    def exists(self, rel: str) -> bool:
        return bool(self.call(f"look for {rel}", lambda: self.fs.exists(self.path(rel))))

    def delete(self, rel: str) -> None:
        with contextlib.suppress(NotFound):
            self.call(f"delete {rel}", lambda: self.fs.rm_file(self.path(rel)))

    def list(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Every object under ``prefix`` (recursively): relative path -> fsspec info."""

        def find() -> dict[str, dict[str, Any]]:
            base = self.path(prefix)
            if not self.fs.exists(base):
                return {}
            found = self.fs.find(base, detail=True)
            return {self.rel(k): v for k, v in found.items() if v.get("type") != "directory"}

        return self.call(f"list {prefix or 'the repository'}", find)

    def ensure_root(self) -> None:
        if self.local:
            self.call("create the repository", lambda: os.makedirs(self.root, exist_ok=True))
        else:
            try:
                self.call(
                    "create the repository", lambda: self.fs.makedirs(self.root, exist_ok=True)
                )
            except RepositoryError:
                if not self.fs.exists(self.root):
                    raise


class Batch:
    """Objects written now, made durable and visible under their names later, together.

    In a local directory each ``put`` writes a temporary file (no fsync) and asks the kernel
    to start writing it back; ``commit`` then fsyncs the files at once (the file system
    groups the flushes), renames each to its name and fsyncs the directories: one wait for
    the disk instead of one per object, and still no object under its name that a crash
    could leave half-written. An object store's PUT is atomic and durable, so there
    ``put`` writes at once. ``abort`` removes what was not committed (a killed process
    leaves temporary files, which prune removes). Thread-safe.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._staged: list[tuple[str, str]] = []  # (temporary path, final path)

    def __len__(self) -> int:
        return len(self._staged)

    def put(self, rel: str, *parts: bytes | bytearray | memoryview) -> None:
        store = self.store
        if not store.local:
            store.put(rel, b"".join(parts))
            return
        full = store.path(rel)

        def write() -> None:
            tmp = f"{full}{TMP_MARK}{secrets.token_hex(4)}"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(full), exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                try:
                    views = [memoryview(p).cast("B") for p in parts]
                    while views:
                        n = os.writev(fd, views)
                        while views and n >= len(views[0]):
                            n -= len(views[0])
                            views.pop(0)
                        if views:
                            views[0] = views[0][n:]
                    if hasattr(os, "posix_fadvise"):  # start the write-back now (Linux)
                        with contextlib.suppress(OSError):
                            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            with self._lock:
                self._staged.append((tmp, full))

        store.call(f"write {rel}", write)

    def commit(self) -> None:
        """Make what was put so far durable, then visible under its names."""
        with self._lock:
            staged, self._staged = self._staged, []
        if not staged:
            return
        try:
            self.store.call("flush the objects written", lambda: _fsync_all(t for t, _ in staged))

            def rename() -> None:
                for i, (tmp, full) in enumerate(staged):
                    os.replace(tmp, full)
                    staged[i] = ("", full)

            self.store.call("store the objects written", rename)
            dirs = {os.path.dirname(full) for _, full in staged}
            self.store.call("flush their directories", lambda: _fsync_all(dirs))
        except BaseException:
            _unlink(t for t, _ in staged if t)
            raise

    def abort(self) -> None:
        """Remove what was put and not committed."""
        with self._lock:
            staged, self._staged = self._staged, []
        _unlink(t for t, _ in staged)


def _fsync_all(paths: Iterable[str]) -> None:
    """fsync each file or directory, several at once (the file system groups the flushes)."""

    def one(path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    with ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="vmctl-fsync") as pool:
        for _ in pool.map(one, paths):
            pass


def _unlink(paths: Iterable[str]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)
