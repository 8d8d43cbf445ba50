"""Helpers shared by the Hyper-V driver's tests (conftest.py has the fixtures)."""

from __future__ import annotations

import secrets
from typing import Any

import vmctl

#: hypervsim's bootable image (docs/hypervsim.md, "The simulated guest").
GUEST_ISO = "C:\\Hyper-V\\Images\\guest-os.iso"
SWITCH = "vSwitch"


def uri(sim: Any, host: int = 0, query: str = "") -> str:
    return f"hyperv://{sim.username}@127.0.0.1:{sim.ports[host]}{query}"


def connect(sim: Any, query: str = "", host: int = 0, **kw: Any) -> vmctl.Hypervisor:
    kw.setdefault("password", sim.password)
    kw.setdefault("cafile", sim.cafile)
    kw.setdefault("timeouts", vmctl.Timeouts(60))
    return vmctl.connect(uri(sim, host, query), env={}, **kw)


def name(hint: str) -> str:
    return f"ht-{hint}-{secrets.token_hex(3)}"
