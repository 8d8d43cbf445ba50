"""Constants and helpers shared by the Xen driver's tests (conftest.py has the fixtures)."""

from __future__ import annotations

import secrets
from typing import Any

import vmctl

PASSWORD = "xen-" + secrets.token_hex(8)
NETWORK = "Pool-wide network associated with eth0"
#: A direct-boot PV kernel: the VM has a guest OS (PV drivers, a guest agent). xapi refuses
#: suspend, checkpoint, live migration and hot-plug for an HVM guest without PV drivers
#: (xapi_vm_lifecycle.ml check_op_for_feature; xapi_vbd_helpers.ml), so tests of those
#: operations use it.
GUEST = vmctl.BootSource(kernel="/boot/guest/vmlinuz", cmdline="console=hvc0")


def connect(sim: Any, query: str = "", **kw: Any) -> vmctl.Hypervisor:
    kw.setdefault("password", PASSWORD)
    kw.setdefault("cafile", sim.cafile)
    return vmctl.connect(f"xen://root@127.0.0.1:{sim.port}{query}", env={}, **kw)


def name(hint: str) -> str:
    return f"xt-{hint}-{secrets.token_hex(3)}"


def connect_http(port: int, query: str = "") -> vmctl.Hypervisor:
    """A plain-HTTP connection to a xapisim pool on ``port`` (``query``: e.g. ?host=NAME)."""
    return vmctl.connect(f"xen+http://root@127.0.0.1:{port}{query}", password=PASSWORD, env={})
