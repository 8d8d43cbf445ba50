"""Shared test setup. Backend fixtures live in tests/<backend>/conftest.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# tests.hosts.* (the host harnesses) import as a package from the repo root.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The kit, the CLI and the drivers read VMCTL_* variables (URIs, credentials, kit options,
# fast-path switches); a developer's own settings (e.g. a sourced .hosts/kvm.env) must not
# leak into tests, which set what they need themselves. Once per process: a kit run in this
# process (vmctl_conformance.run(..., env=...)) loads this file again under another name, and
# must keep the variables it was given.
if not getattr(sys, "_vmctl_tests_environ_cleared", False):
    for var in [name for name in os.environ if name.startswith("VMCTL_")]:
        os.environ.pop(var, None)
    sys._vmctl_tests_environ_cleared = True  # type: ignore[attr-defined]
