"""Shared test setup. Backend fixtures live in tests/<backend>/conftest.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# tests.hosts.* (the host harnesses) import as a package from the repo root.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The kit and the CLI read these; a developer's own settings must not leak into tests.
for var in (
    "VMCTL_URI",
    "VMCTL_OTHER_URI",
    "VMCTL_PASSWORD",
    "VMCTL_CAFILE",
    "VMCTL_THUMBPRINT",
    "VMCTL_INSECURE",
    "VMCTL_USER",
):
    os.environ.pop(var, None)
