"""Repository locks (as restic's): a backup holds a shared lock, prune an exclusive one.

Each lock is an object ``locks/<kind>-<random>.json`` naming its host, process and the time
it was last refreshed. Whoever takes a lock writes it first and then looks at the others,
so of a backup and a prune starting together at least one sees the other and gives way
(Conflict). A lock not refreshed for ``STALE_S`` seconds, or held by a process of this host
that no longer runs (a backup killed half-way), is stale and ignored; prune removes it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import socket
import time
from typing import Any

from .._errors import Conflict, NotFound
from ._store import Store

STALE_S = 30 * 60
REFRESH_S = 5 * 60
PREFIX = "locks/"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale(info: dict[str, Any], now: float | None = None) -> bool:
    now = time.time() if now is None else now
    if now - float(info.get("time", 0)) > STALE_S:
        return True
    pid = info.get("pid")
    return info.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid)


class Lock:
    def __init__(self, store: Store, kind: str) -> None:
        self.store = store
        self.kind = kind
        self.path = f"{PREFIX}{kind}-{secrets.token_hex(8)}.json"
        self.refreshed = 0.0

    def _write(self) -> None:
        self.refreshed = time.time()
        info = {
            "kind": self.kind,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "time": self.refreshed,
            "written": dt.datetime.now(dt.UTC).isoformat(),
        }
        self.store.put(self.path, json.dumps(info).encode())

    def refresh(self) -> None:
        """Rewrite the lock if it is getting old (called as the job goes on)."""
        if time.time() - self.refreshed > REFRESH_S:
            self._write()

    def release(self) -> None:
        self.store.delete(self.path)


def others(store: Store, mine: str | None = None) -> dict[str, dict[str, Any]]:
    """The locks in the repository (but ``mine``), by path."""
    out = {}
    for rel in store.list(PREFIX.rstrip("/")):
        if rel == mine or not rel.endswith(".json"):
            continue
        try:
            info = json.loads(store.get(rel))
        except (NotFound, ValueError):
            continue
        if isinstance(info, dict):
            out[rel] = info
    return out


def acquire(store: Store, kind: str, *, exclusive: bool) -> Lock:
    """Take a lock; Conflict (and no lock left) if a live one stands in the way."""
    lock = Lock(store, kind)
    lock._write()
    try:
        for rel, info in others(store, lock.path).items():
            if stale(info):
                continue
            if exclusive or info.get("kind") == "prune":
                raise Conflict(
                    f"the repository {store.url} is in use: a {info.get('kind')} is running "
                    f"(process {info.get('pid')} on {info.get('host')}, lock {rel}); try again "
                    "when it has ended"
                )
    except BaseException:
        lock.release()
        raise
    return lock
