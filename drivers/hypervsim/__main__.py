"""Command line: ``python -m hypervsim --port 0 --hosts 2 --vms 4 --tls``.

Prints one JSON ready line (urls, hosts, cafile, thumbprint, username, pid; never the
password) on stdout, then serves until SIGTERM or SIGINT. The password is read from the
environment variable named by --password-env (HYPERVSIM_PASSWORD unless told otherwise).
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
    p = argparse.ArgumentParser(
        prog="python -m hypervsim",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--port",
        type=int,
        default=0,
        help="first host's port; host N listens on port+N-1 (0: free ports)",
    )
    p.add_argument("--hosts", type=int, default=2, help="simulated Hyper-V hosts")
    p.add_argument("--vms", type=int, default=4, help="VMs to create (spread over the hosts)")
    p.add_argument("--running", type=int, default=0, help="how many of them start running")
    p.add_argument("--username", default="Administrator")
    p.add_argument(
        "--password-env",
        default="HYPERVSIM_PASSWORD",
        help="environment variable holding the password (required)",
    )
    tls = p.add_mutually_exclusive_group()
    tls.add_argument(
        "--tls",
        dest="tls",
        action="store_true",
        default=True,
        help="HTTPS with a generated self-signed certificate (the default)",
    )
    tls.add_argument("--no-tls", dest="tls", action="store_false", help="plain HTTP")
    p.add_argument(
        "--http-too",
        action="store_true",
        help="with --tls, also a plain-HTTP endpoint per host (as WinRM's 5985 beside 5986)",
    )
    p.add_argument("--http-port", type=int, default=0, help="first host's HTTP port for --http-too")
    p.add_argument("--cert", help="PEM certificate (default: generate one)")
    p.add_argument("--key", help="PEM private key for --cert")
    p.add_argument(
        "--op-delay",
        type=float,
        default=0.2,
        help="simulated seconds a job (Msvm_ConcreteJob) runs",
    )
    p.add_argument(
        "--guest-delay",
        type=float,
        default=0.3,
        help="seconds after a start before the guest OS answers (KVP, shutdown)",
    )
    p.add_argument("--host-memory", type=int, default=64, help="GiB of memory per host")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    password = os.environ.get(a.password_env)
    if not password:
        p.error(f"set the password in ${a.password_env}")
    if a.hosts < 1 or a.vms < 0 or a.running < 0:
        p.error("--hosts must be at least 1, --vms and --running not negative")
    cfg = Config(
        hosts=a.hosts,
        vms=a.vms,
        running=a.running,
        username=a.username,
        password=password,
        op_delay=a.op_delay,
        guest_delay=a.guest_delay,
        host_memory_gib=a.host_memory,
    )
    srv = SimServer(
        cfg,
        port=a.port,
        tls=a.tls,
        certfile=a.cert,
        keyfile=a.key,
        verbose=a.verbose,
        http_too=a.http_too,
        http_port=a.http_port,
    )
    cafile = os.path.abspath(a.cert) if a.cert and srv.cafile else srv.cafile
    done = threading.Event()

    def stop(_sig: int, _frm: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    srv.start()
    ready: dict[str, object] = {
        "url": srv.url,
        "urls": srv.urls,
        "ports": srv.ports,
        "hosts": srv.hosts,
        "cafile": cafile,
        "thumbprint": srv.thumbprint,
        "username": a.username,
        "pid": os.getpid(),
    }
    if srv.http_urls:
        ready["http_urls"] = srv.http_urls
        ready["http_ports"] = srv.http_ports
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    done.wait()
    srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
