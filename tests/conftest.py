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
# leak into tests, which set what they need themselves.
for var in [name for name in os.environ if name.startswith("VMCTL_")]:
    os.environ.pop(var, None)
