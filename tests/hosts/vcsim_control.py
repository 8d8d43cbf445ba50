"""Command line to take a host of the vSphere simulator's cluster down and bring it back, as
an administrator would (the conformance kit's ``fail_command``/``revive_command``)::

    VMCTL_PASSWORD=... python tests/hosts/vcsim_control.py --url "$VMCTL_URI" fail DC0_C0_H2
    VMCTL_PASSWORD=... python tests/hosts/vcsim_control.py --url "$VMCTL_URI" revive DC0_C0_H2

``fail`` is ``HostSystem.DisconnectHost_Task`` (vCenter stops managing the host: it shows
``runtime.connectionState`` disconnected, which proves nothing about its VMs), ``revive``
``ReconnectHost_Task``; both through the launcher's failed-host model
(tests/hosts/vcsim/hostfailure.go). ``--url`` is a vmctl URI of the vCenter (its user, host
and port are used); the password comes from ``$VMCTL_PASSWORD``, the CA file from
``--cafile`` or ``$VMCTL_CAFILE``. The session is logged out at the end.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import time
from typing import Any
from urllib.parse import unquote, urlsplit


def _wait(task: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = str(task.info.state)
        if state == "success":
            return
        if state == "error":
            raise SystemExit(f"{what}: {task.info.error.msg if task.info.error else 'error'}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: still {state} after {timeout:g} s")
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vcsim_control", description=__doc__)
    p.add_argument("--url", required=True, help="a vcenter:// or esx:// URI of the simulator")
    p.add_argument("--cafile", default=os.environ.get("VMCTL_CAFILE") or None)
    p.add_argument("action", choices=("fail", "revive"))
    p.add_argument("host", help="the cluster host's name")
    a = p.parse_args(argv)
    from pyVim.connect import Connect, Disconnect
    from pyVmomi import vim

    parts = urlsplit(a.url)
    password = os.environ.get("VMCTL_PASSWORD")
    if password is None:
        raise SystemExit("$VMCTL_PASSWORD is not set")
    ctx = ssl.create_default_context(cafile=a.cafile)
    si = Connect(  # type: ignore[no-untyped-call]
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 443,
        user=unquote(parts.username or "root"),
        pwd=password,
        sslContext=ctx,
    )
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
        try:
            hosts = [h for h in view.view if h.name == a.host]
        finally:
            view.DestroyView()
        if not hosts:
            raise SystemExit(f"no host named {a.host!r}")
        if a.action == "fail":
            _wait(hosts[0].DisconnectHost_Task(), f"disconnect {a.host}")
        else:
            _wait(hosts[0].ReconnectHost_Task(), f"reconnect {a.host}")
    finally:
        Disconnect(si)  # type: ignore[no-untyped-call]
    print(f"{a.action}: {a.host}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
