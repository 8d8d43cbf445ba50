"""vmctl's own maintenance flag: hosts that vmctl's planning treats as in maintenance,
whatever the backend says (a backend without a maintenance mode, or an operator who wants
a host left alone by vmctl only).

Kept in one small JSON file so that every process on this machine (scripts, the CLI) honours
it: ``$VMCTL_STATE_DIR/maintenance.json``, else ``$XDG_STATE_HOME/vmctl/maintenance.json``,
else ``~/.local/state/vmctl/maintenance.json``. Keyed by the host's id (its UUID), which the
backends keep stable. Writes hold an flock and replace the file atomically.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
from collections.abc import Iterator
from typing import Any

from ._errors import VmctlError


def state_dir() -> str:
    explicit = os.environ.get("VMCTL_STATE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "vmctl")


def _path() -> str:
    return os.path.join(state_dir(), "maintenance.json")


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise VmctlError(f"cannot read vmctl's maintenance flags in {path}: {exc}") from exc
    hosts = data.get("hosts", {}) if isinstance(data, dict) else {}
    return hosts if isinstance(hosts, dict) else {}


@contextlib.contextmanager
def _locked() -> Iterator[tuple[str, dict[str, Any]]]:
    path = _path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield path, _read(path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    except OSError as exc:
        raise VmctlError(f"cannot write vmctl's maintenance flags in {path}: {exc}") from exc


def _write(path: str, hosts: dict[str, Any]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"version": 1, "hosts": hosts}, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def flagged() -> dict[str, Any]:
    """The hosts flagged now: host id -> {"name", "uri", "since"}."""
    return _read(_path())


def is_flagged(host_id: str) -> bool:
    return host_id in flagged()


def set_flag(host_id: str, on: bool, *, name: str, uri: str) -> None:
    """Flag (``on``) or unflag a host. Idempotent."""
    with _locked() as (path, hosts):
        if on:
            if host_id in hosts:
                return
            hosts[host_id] = {
                "name": name,
                "uri": uri,
                "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
        elif hosts.pop(host_id, None) is None:
            return
        _write(path, hosts)
