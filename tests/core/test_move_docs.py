"""docs/move.md holds to the code: its Python blocks run on sim://, its CLI lines parse,
and what it names (the clauses, the report's fields) exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import attrs
import pytest

import vmctl
from vmctl.cli import cli
from vmctl_conformance import load_clauses

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "move.md").read_text()


def test_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMCTL_STATE_DIR", str(tmp_path))
    blocks = re.findall(r"^```python\n(.*?)^```", PAGE, flags=re.S | re.M)
    assert blocks
    for code in blocks:
        exec(compile(code, "docs/move.md", "exec"), {})


def test_named_things_exist() -> None:
    for cid in load_clauses():
        if cid.startswith("MOVE-"):
            assert cid in PAGE, cid
    for name in [f.name for f in attrs.fields(vmctl.MoveReport)] + ["verified"]:
        assert f"`{name}`" in PAGE or f"{name}=" in PAGE or f".{name}" in PAGE, name
    for kind in vmctl.MappingKind:
        assert f"`{kind.value}`" in PAGE, kind
    options = {p.opts[0] for p in cli.commands["move"].params if hasattr(p, "opts")}
    for line in re.findall(r"^vmctl .*move .*$", PAGE, flags=re.M):
        for word in shlex.split(line):
            if word.startswith("--") and word not in ("--json",):
                assert word in options, word
