"""Helpers for the KVM driver's tests and bench: virsh as a second client, the vmctl URIs of
the harness's hosts, counting libvirt-python calls, test-driver node files with many domains.

Shared by tests/kvm and bench/kvm_list.py. A "call" is a method of virConnect or virDomain
that asks the hypervisor (the remote driver sends an RPC for each); the getters libvirt
answers from the client-side object (name, UUID, connect) are not counted.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import uuid as uuidlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

#: This test session's tag, in the names of its VMs and volumes: the end-of-session cleanup
#: (tests/kvm/conftest.py) deletes only this session's VMs, not those of another session
#: sharing the hosts. Subprocesses of the session inherit it.
SESSION = os.environ.setdefault("TESTS_KVM_SESSION", f"{os.getpid():x}")
PREFIX = f"vmctl-kvmtest-{SESSION}-"


def vmctl_uri(base: str, hosts: Any, **extra: str) -> str:
    """The vmctl URI for a libvirt host of the harness: its pool and network as defaults.
    (The image directory is shared by both hosts; the driver finds that out itself.)"""
    sep = "&" if "?" in base else "?"
    opts = {"pool": hosts.pool, "network": hosts.network, **extra}
    return base + sep + "&".join(f"{k}={v}" for k, v in opts.items())


def virsh(uri: str, *args: str) -> str:
    """Run virsh (a separate libvirt client, not vmctl) and return its output."""
    res = subprocess.run(
        ["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=60, check=False
    )
    if res.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout


# isAlive reads the client's own socket state (virNetClientIsOpen); no RPC.
LOCAL = frozenset({"name", "UUIDString", "UUID", "connect", "ID", "isAlive", "c_pointer"})


@contextlib.contextmanager
def count_calls() -> Iterator[Counter[str]]:
    """Count calls to libvirt.virConnect / virDomain methods while inside."""
    import libvirt

    counts: Counter[str] = Counter()
    saved: list[tuple[type, str, Any]] = []
    for cls in (libvirt.virConnect, libvirt.virDomain):
        for attr, fn in list(vars(cls).items()):
            if attr in LOCAL or attr.startswith("_") or not callable(fn):
                continue

            def wrap(f: Any, key: str) -> Any:
                @functools.wraps(f)
                def counted(*a: Any, **kw: Any) -> Any:
                    counts[key] += 1
                    return f(*a, **kw)

                return counted

            saved.append((cls, attr, fn))
            setattr(cls, attr, wrap(fn, f"{cls.__name__}.{attr}"))
    try:
        yield counts
    finally:
        for cls, attr, fn in saved:
            setattr(cls, attr, fn)


RUNSTATES = (1, 3, 5)  # running, paused, shut off


def write_node_xml(path: Path, count: int, *, prefix: str = "bench-") -> Path:
    """A libvirt test-driver node file with ``count`` domains in mixed run states."""
    parts = ["<node>"]
    for i in range(count):
        state = RUNSTATES[i % len(RUNSTATES)]
        uid = uuidlib.uuid5(uuidlib.NAMESPACE_DNS, f"{prefix}{i}.vmctl.invalid")
        parts.append(
            "<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>"
            f"<name>{escape(prefix)}{i:05d}</name><uuid>{uid}</uuid>"
            "<memory unit='MiB'>128</memory><vcpu>1</vcpu>"
            "<os><type arch='i686'>hvm</type></os>"
            f"<test:runstate>{state}</test:runstate></domain>"
        )
    parts.append("</node>")
    path.write_text("\n".join(parts))
    return path
