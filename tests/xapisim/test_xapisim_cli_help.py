"""`python -m xapisim --help` must not show the built-in password (issue 9)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_help_does_not_show_the_password() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "drivers")}
    env.pop("XAPISIM_PASSWORD", None)
    out = subprocess.run(
        [sys.executable, "-m", "xapisim", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    ).stdout
    assert "XAPISIM_PASSWORD" in out
    assert "xenroot" not in out
