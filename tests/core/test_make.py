"""What the Makefile's targets run (make -n: nothing is executed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def dry(*targets: str) -> str:
    out = subprocess.run(
        ["make", "-n", "-B", *targets], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_demo_installs_the_kit() -> None:
    text = dry("demo")
    assert 'install -e ".[kit]"' in text
    assert "vmctl.demo" in text  # which ends by saying how to reach vmctl


def test_host_esx_and_xen_do_not_install_kvm() -> None:
    for target in ("host-esx", "host-xen"):
        text = dry(target)
        assert "install-kvm.sh" not in text, target
    assert "install-esx.sh" in dry("host-esx")


def test_matrix_merges_into_the_page() -> None:
    assert "--update docs/support-matrix.md" in dry("matrix")
