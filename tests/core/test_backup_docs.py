"""docs/backup.md holds to the code: its Python blocks run on sim://, and what it names (the
format clauses, the SPI methods, the CLI commands, the capabilities) exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import vmctl
import vmctl.spi as spi
from vmctl.cli import cli
from vmctl_conformance import load_clauses

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "backup.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", PAGE, flags=re.S | re.M)


def test_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks()
    assert blocks
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, "docs/backup.md", "exec"), {})


def test_every_backup_clause_and_capability_is_named() -> None:
    for cid in load_clauses():
        if cid.startswith("BACKUP-FORMAT"):
            assert cid in PAGE, cid
    for cap in ("backup", "backup_incremental", "backup_quiesce", "restore"):
        assert vmctl.Capability(cap) in spi.INTERFACES
        assert f"`{cap}`" in PAGE or f" {cap}" in PAGE, cap


def test_spi_methods_and_commands_exist() -> None:
    for iface, methods in {
        spi.DiskAccess: ["open_point_in_time", "allocated_extents", "read_extent",
                         "close_point_in_time"],
        spi.ChangedBlocks: ["changed_extents"],
        spi.DiskWriter: ["write_extents"],
    }.items():  # fmt: skip
        for name in methods:
            assert hasattr(iface, name) and f"`{name}(" in PAGE, name
    for command in ("backup", "backups", "restore", "verify", "prune"):
        assert command in cli.commands
        assert re.search(rf"^vmctl (-c \S+ )?{command} ", PAGE, flags=re.M), command
