"""Command line: ``python -m xapisim --port 0 --hosts 2 --vms 10 --tls``.

Prints one JSON ready line (url, cafile, thumbprint, port, hosts, username; never the
password) on stdout, then serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from .model import Config
from .server import SimServer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xapisim", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="listen address (loopback only)")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--hosts", type=int, default=2, help="hosts in the pool")
    p.add_argument("--vms", type=int, default=4, help="ordinary VMs to create")
    p.add_argument("--running", type=int, default=0, help="how many of them start running")
    p.add_argument("--username", default="root")
    p.add_argument(
        "--password-env",
        default="XAPISIM_PASSWORD",
        help="environment variable holding the password (default %(default)s; unset, a "
        "built-in test password is used, which the ready line never shows)",
    )
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--tls", dest="tls", action="store_true", default=True)
    tls.add_argument("--no-tls", dest="tls", action="store_false")
    p.add_argument("--cert", help="PEM certificate (default: generate one)")
    p.add_argument("--key", help="PEM private key for --cert")
    p.add_argument("--session-timeout", type=float, default=3600.0)
    p.add_argument(
        "--op-delay", type=float, default=0.05, help="simulated seconds per lifecycle operation"
    )
    p.add_argument(
        "--guest-delay",
        type=float,
        default=0.3,
        help="seconds after start before guest metrics (IPs) appear",
    )
    p.add_argument("--host-memory", type=int, default=256, help="GiB of memory per host")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("xapisim listens on loopback only")
    cfg = Config(
        hosts=a.hosts,
        vms=a.vms,
        running=a.running,
        username=a.username,
        password=os.environ.get(a.password_env, "xenroot"),
        session_timeout=a.session_timeout,
        op_delay=a.op_delay,
        guest_delay=a.guest_delay,
        host_memory_gib=a.host_memory,
    )
    srv = SimServer(
        cfg, host=a.host, port=a.port, tls=a.tls, certfile=a.cert, keyfile=a.key, verbose=a.verbose
    )
    cafile = os.path.abspath(a.cert) if a.cert and srv.cafile else srv.cafile
    done = threading.Event()

    def stop(_sig: int, _frm: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    srv.start()
    ready = {
        "url": srv.url,
        "port": srv.port,
        "cafile": cafile,
        "thumbprint": srv.thumbprint,
        "username": a.username,
        "hosts": srv.host_names(),
        "pid": os.getpid(),
    }
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    done.wait()
    srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
