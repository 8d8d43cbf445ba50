"""Clause markers for kit tests, and the clause list read from SPEC.md."""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources
from typing import Any, TypeVar

import pytest

from vmctl import Capability

F = TypeVar("F", bound=Callable[..., Any])
_CLAUSE = re.compile(r"^- \*\*([A-Z]+(?:-[A-Z0-9]+)+)\*\*\s*(?:\[([a-z_]+)\])?\s*(.*)$")


def clause(*ids: str) -> Callable[[F], F]:
    """Name the SPEC.md clause(s) a test checks."""
    return pytest.mark.clause(*ids)  # type: ignore[return-value]


def requires(*caps: Capability) -> Callable[[F], F]:
    """The capabilities a test needs. Where the driver lacks one, the kit instead checks that
    the request raises NotSupported and reports the clause as not supported."""
    return pytest.mark.requires(*caps)  # type: ignore[return-value]


def load_clauses() -> dict[str, dict[str, str | None]]:
    """Every clause of SPEC.md: id -> {"capability": name or None, "text": first line}."""
    text = resources.files("vmctl_conformance").joinpath("SPEC.md").read_text()
    out: dict[str, dict[str, str | None]] = {}
    for line in text.splitlines():
        m = _CLAUSE.match(line)
        if m:
            out[m.group(1)] = {"capability": m.group(2), "text": m.group(3).strip()}
    return out
