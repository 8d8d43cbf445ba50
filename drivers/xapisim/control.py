"""Command line to fail a pool member of a running xapisim and bring it back, for a test in
another process (e.g. the conformance kit's ``fail_command``/``revive_command``)::

    VMCTL_PASSWORD=... python -m xapisim.control --url "$VMCTL_POOL_URI" fail xenhost2
    VMCTL_PASSWORD=... python -m xapisim.control --url "$VMCTL_POOL_URI" revive xenhost2

``--url`` is the simulator's address (``https://`` or ``http://``) or a vmctl URI of it
(``xen://root@127.0.0.1:PORT``, ``xen+http://...``); the password comes from the
environment variable named by ``--password-env`` (default ``VMCTL_PASSWORD``), the CA file
from ``--cafile`` or ``$VMCTL_CAFILE``. It logs in, sends the simulator's own message
``xapisim.fail_host``/``xapisim.revive_host`` for the host of that name, and logs out.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import xmlrpc.client
from urllib.parse import urlsplit


def _endpoint(url: str) -> tuple[str, str]:
    """(the XML-RPC URL, the user name) of ``url``."""
    parts = urlsplit(url)
    scheme = {"xen": "https", "xen+https": "https", "xen+http": "http"}.get(
        parts.scheme, parts.scheme
    )
    if scheme not in ("http", "https") or not parts.hostname:
        raise SystemExit(f"--url: not an http(s) or xen URL: {url!r}")
    port = f":{parts.port}" if parts.port else ""
    return f"{scheme}://{parts.hostname}{port}/", parts.username or "root"


def _value(reply: dict[str, object], what: str) -> object:
    if reply.get("Status") != "Success":
        raise SystemExit(f"{what}: {reply.get('ErrorDescription')}")
    return reply.get("Value")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xapisim.control", description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--password-env", default="VMCTL_PASSWORD")
    p.add_argument("--cafile", default=os.environ.get("VMCTL_CAFILE") or None)
    p.add_argument("action", choices=("fail", "revive"))
    p.add_argument("host", help="the pool member's name_label")
    a = p.parse_args(argv)
    url, user = _endpoint(a.url)
    password = os.environ.get(a.password_env)
    if password is None:
        raise SystemExit(f"${a.password_env} is not set")
    context = ssl.create_default_context(cafile=a.cafile) if url.startswith("https") else None
    proxy = xmlrpc.client.ServerProxy(url, context=context, allow_none=True)
    session = str(
        _value(
            proxy.session.login_with_password(user, password, "2.21", "xapisim.control"),  # type: ignore[arg-type]
            "login",
        )
    )
    try:
        refs = _value(proxy.host.get_by_name_label(session, a.host), "host.get_by_name_label")  # type: ignore[arg-type]
        if not isinstance(refs, list) or not refs:
            raise SystemExit(f"no host named {a.host!r} in the pool")
        message = "fail_host" if a.action == "fail" else "revive_host"
        _value(getattr(proxy.xapisim, message)(session, refs[0]), f"xapisim.{message}")
    finally:
        proxy.session.logout(session)
    print(f"{a.action}: {a.host}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
