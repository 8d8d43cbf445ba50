"""Files the host harnesses share: the sourceable .hosts/<name>.env and the PID list."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path


def shell_exports(values: Mapping[str, str]) -> list[str]:
    """``export NAME=value`` lines, quoted for a POSIX shell."""
    return [f"export {name}={shlex.quote(value)}" for name, value in values.items()]


def kit_words(options: Mapping[str, str]) -> str:
    """The value of ``VMCTL_KIT_OPTIONS``: ``KEY=VALUE`` words, quoted for a shell."""
    return " ".join(shlex.quote(f"{key}={value}") for key, value in options.items())


def read_pids(path: Path) -> list[int]:
    """The PIDs listed in ``path`` (whitespace-separated), or none if it is missing."""
    if not path.is_file():
        return []
    return [int(word) for word in path.read_text().split() if word.isdigit()]


def write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by the owner only (env files hold passwords), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def shown(env_text: str) -> str:
    """The env file's text for a terminal: the password masked (it stays in the file)."""
    out = []
    for line in env_text.splitlines():
        name = line.removeprefix("export ").split("=", 1)[0]
        if name.startswith("VMCTL_") and name.endswith("PASSWORD"):
            line = line.split("=", 1)[0] + "=*** (in the env file)"
        out.append(line)
    return "\n".join(out) + ("\n" if env_text.endswith("\n") else "")
