"""Harness for the XenAPI simulator (``xapisim``, in ``drivers/xapisim``).

Command line (from the repository root)::

    python -m tests.hosts.xen start    # detached; writes .hosts/xen.pids and .hosts/xen.env
    python -m tests.hosts.xen status   # 0 running, 1 dead, 3 not started
    python -m tests.hosts.xen stop     # stops exactly the PID in .hosts/xen.pids

``.hosts/xen.env`` (POSIX shell, sourceable)::

    VMCTL_URI=xen://root@127.0.0.1:PORT/?host=xenhost1   # the pool's first host
    VMCTL_OTHER_URI=xen://root@127.0.0.1:PORT/?host=xenhost2
                                    # same pool, naming its second host by name_label
    VMCTL_POOL_URI=xen://root@127.0.0.1:PORT             # the whole pool, via its master

    VMCTL_PASSWORD=...  VMCTL_CAFILE=...  VMCTL_THUMBPRINT=AA:BB:...  (SHA-256 of the cert)
    VMCTL_KIT_OPTIONS='boot_kernel=/boot/guest/vmlinuz boot_cmdline=console=hvc0 ...'
                                    # what the conformance kit cannot find on the host, and
                                    # the pool member it may fail for RECOVER-EXEC-1
                                    # (fail_host, fail_command, revive_command: xapisim.control)

Host-scoped URIs are what migration needs: a pool-wide connection still lists a VM that
moved to another host of the pool. The same values also come as ``VMCTL_XEN_URI``,
``VMCTL_XEN_OTHER_URI``, ``VMCTL_XEN_POOL_URI``, ``VMCTL_XEN_PASSWORD``, ``VMCTL_XEN_CAFILE``,
``VMCTL_XEN_THUMBPRINT`` and ``VMCTL_XEN_KIT_OPTIONS``, which sourcing ``.hosts/esx.env``
after this file does not overwrite.

Python API::

    from tests.hosts.xen import running_simulator
    with running_simulator(vms=4) as sim:   # a child process, stopped on exit
        sim.url, sim.cafile, sim.thumbprint, sim.password, sim.uri, sim.other_uri

Only the standard library and the ``openssl`` command are used.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ._files import kit_words, read_pids, shell_exports, shown, write_private

REPO_ROOT = Path(__file__).resolve().parents[2]
DRIVERS = REPO_ROOT / "drivers"
HOSTS_DIR = REPO_ROOT / ".hosts"
PIDS_FILE = HOSTS_DIR / "xen.pids"
ENV_FILE = HOSTS_DIR / "xen.env"
STATE_FILE = HOSTS_DIR / "xen.json"
LOG_FILE = HOSTS_DIR / "xen.log"
TLS_DIR = HOSTS_DIR / "xen-tls"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
DEFAULT_USERNAME = "root"


class HarnessError(RuntimeError):
    """The simulator could not be started or stopped."""


@dataclasses.dataclass
class XenSim:
    pid: int
    url: str
    port: int
    cafile: str | None
    thumbprint: str | None
    username: str
    password: str
    hosts: list[str]
    process: subprocess.Popen[bytes] | None = dataclasses.field(default=None, repr=False)

    @property
    def uri(self) -> str:
        """A vmctl URI for the pool master."""
        return f"xen://{self.username}@127.0.0.1:{self.port}"

    @property
    def host_uri(self) -> str:
        """A vmctl URI scoped to the pool's first host."""
        return f"xen://{self.username}@127.0.0.1:{self.port}/?host={self.hosts[0]}"

    @property
    def other_uri(self) -> str:
        """The same pool, naming its second host (by name_label) as the target host."""
        other = self.hosts[1] if len(self.hosts) > 1 else self.hosts[0]
        return f"xen://{self.username}@127.0.0.1:{self.port}/?host={other}"

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid, "url": self.url, "port": self.port, "cafile": self.cafile,
            "thumbprint": self.thumbprint, "username": self.username, "hosts": self.hosts,
            "uri": self.uri, "other_uri": self.other_uri,
        }  # fmt: skip

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        stop_pid(self.pid, timeout, self.process)


def _env(password: str) -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = f"{DRIVERS}{os.pathsep}{path}" if path else str(DRIVERS)
    env["XAPISIM_PASSWORD"] = password
    return env


def ensure_cert(directory: Path = TLS_DIR) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost, generated once and kept."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    if cert.is_file() and key.is_file():
        check = subprocess.run(
            ["openssl", "x509", "-checkend", "86400", "-noout", "-in", str(cert)],
            capture_output=True, check=False,
        )  # fmt: skip
        if check.returncode == 0:
            return cert, key
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
         "-keyout", str(key), "-out", str(cert), "-days", "825", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-addext", "basicConstraints=critical,CA:TRUE"],
        check=True, capture_output=True,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


def start_simulator(
    *,
    hosts: int = 2,
    vms: int = 4,
    running: int = 0,
    username: str = DEFAULT_USERNAME,
    password: str | None = None,
    tls: bool = True,
    port: int = 0,
    session_timeout: float = 3600.0,
    detach: bool = False,
    log_file: Path | None = None,
) -> XenSim:
    """Start ``python -m xapisim`` and wait for its JSON ready line."""
    password = password or secrets.token_urlsafe(12)
    args = [sys.executable, "-m", "xapisim", "--port", str(port), "--hosts", str(hosts),
            "--vms", str(vms), "--running", str(running), "--username", username,
            "--session-timeout", str(session_timeout)]  # fmt: skip
    if tls:
        cert, key = ensure_cert()
        args += ["--tls", "--cert", str(cert), "--key", str(key)]
    else:
        args += ["--no-tls"]
    out_path = log_file or (HOSTS_DIR / f"xen-{os.getpid()}-{time.monotonic_ns()}.out")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=_env(password), cwd=REPO_ROOT, start_new_session=detach,
        )  # fmt: skip
    deadline = time.monotonic() + READY_TIMEOUT
    ready: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        text = out_path.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    ready = json.loads(line)
        if ready is not None:
            break
        if proc.poll() is not None:
            raise HarnessError(f"xapisim exited with {proc.returncode}:\n{text[-2000:]}")
        time.sleep(0.05)
    if ready is None:
        stop_pid(proc.pid, STOP_TIMEOUT, proc)
        raise HarnessError(f"xapisim gave no ready line in {READY_TIMEOUT}s")
    if log_file is None:
        out_path.unlink(missing_ok=True)
    return XenSim(
        pid=proc.pid, url=ready["url"], port=int(ready["port"]), cafile=ready["cafile"],
        thumbprint=ready["thumbprint"], username=username, password=password,
        hosts=list(ready["hosts"]), process=proc,
    )  # fmt: skip


def _pid_is_ours(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"xapisim" in cmdline


def stop_pid(
    pid: int, timeout: float = STOP_TIMEOUT, process: subprocess.Popen[bytes] | None = None
) -> bool:
    """SIGTERM the simulator with this PID (only if it is one), then SIGKILL after timeout."""
    if not _pid_is_ours(pid):
        if process is not None:
            process.poll()
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return True
        if process is None and not _pid_is_ours(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if process is not None:
        process.wait(5)
    return True


@contextlib.contextmanager
def running_simulator(**kwargs: Any) -> Iterator[XenSim]:
    sim = start_simulator(**kwargs)
    try:
        yield sim
    finally:
        sim.stop()


#: What the conformance kit needs on xapisim besides what the driver finds there (a
#: network and an SR, ``XenDriver.kit_defaults``): a guest that boots. A PV kernel lives in
#: the control domain's file system, which XenAPI does not list; xapisim boots any path.
KIT_OPTIONS = {
    "boot_kernel": "/boot/guest/vmlinuz",
    "boot_cmdline": "console=hvc0",
    # RECOVER-EXEC-1: the kit may fail xenhost2 (xapisim's failed-host mode) and revive it
    "fail_host": "xenhost2",
    "fail_command": '{python} -m xapisim.control --url "$VMCTL_POOL_URI" fail {host}',
    "revive_command": '{python} -m xapisim.control --url "$VMCTL_POOL_URI" revive {host}',
}


def env_values(sim: XenSim) -> dict[str, str]:
    """The variables of ``.hosts/xen.env``: ``vmctl conformance "$VMCTL_URI" --other-uri
    "$VMCTL_OTHER_URI"`` runs the kit as it is (``VMCTL_KIT_OPTIONS``: :data:`KIT_OPTIONS`)."""
    kit = kit_words(KIT_OPTIONS)
    return {
        "VMCTL_URI": sim.host_uri,
        "VMCTL_OTHER_URI": sim.other_uri,
        "VMCTL_POOL_URI": sim.uri,
        "VMCTL_PASSWORD": sim.password,
        "VMCTL_CAFILE": sim.cafile or "",
        "VMCTL_THUMBPRINT": sim.thumbprint or "",
        "VMCTL_KIT_OPTIONS": kit,
        "VMCTL_XEN_URI": sim.host_uri,
        "VMCTL_XEN_OTHER_URI": sim.other_uri,
        "VMCTL_XEN_POOL_URI": sim.uri,
        "VMCTL_XEN_PASSWORD": sim.password,
        "VMCTL_XEN_CAFILE": sim.cafile or "",
        "VMCTL_XEN_THUMBPRINT": sim.thumbprint or "",
        "VMCTL_XEN_KIT_OPTIONS": kit,
    }


def env_lines(sim: XenSim) -> list[str]:
    """The lines of ``.hosts/xen.env`` (POSIX shell, sourceable)."""
    return shell_exports(env_values(sim))


def cmd_start(args: argparse.Namespace) -> int:
    running = [pid for pid in read_pids(PIDS_FILE) if _pid_is_ours(pid)]
    if running:
        print(f"already running (PID {running[0]}); see {ENV_FILE}", file=sys.stderr)
        if ENV_FILE.is_file():
            print(shown(ENV_FILE.read_text()), end="")
        return 0
    password = args.password or os.environ.get("VMCTL_PASSWORD") or secrets.token_urlsafe(12)
    sim = start_simulator(
        hosts=args.hosts, vms=args.vms, running=args.running, username=args.username,
        password=password, tls=not args.no_tls, port=args.port,
        session_timeout=args.session_timeout, detach=True, log_file=LOG_FILE,
    )  # fmt: skip
    HOSTS_DIR.mkdir(parents=True, exist_ok=True)
    PIDS_FILE.write_text(f"{sim.pid}\n")
    lines = env_lines(sim)
    write_private(ENV_FILE, "\n".join(lines) + "\n")
    STATE_FILE.write_text(json.dumps(sim.to_json(), indent=2) + "\n")
    print(f"xapisim: pid {sim.pid} {sim.url} hosts {', '.join(sim.hosts)}; env: {ENV_FILE}",
          file=sys.stderr)  # fmt: skip
    print(shown("\n".join(lines)))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    pids = read_pids(PIDS_FILE)
    if not pids:
        print(f"nothing to stop ({PIDS_FILE} missing or empty)", file=sys.stderr)
        return 0
    for pid in pids:
        stopped = stop_pid(pid, timeout=args.timeout)
        print(f"{pid}: {'stopped' if stopped else 'was not running'}", file=sys.stderr)
    for path in (PIDS_FILE, ENV_FILE, STATE_FILE):
        path.unlink(missing_ok=True)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    pids = read_pids(PIDS_FILE)
    if not pids:
        print("not started")
        return 3
    state: dict[str, Any] = {}
    if STATE_FILE.is_file():
        state = json.loads(STATE_FILE.read_text())
    alive = 0
    for pid in pids:
        ok = _pid_is_ours(pid)
        alive += ok
        print(f"{pid} {'running' if ok else 'dead'} {state.get('uri', '')}")
    return 0 if alive == len(pids) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.hosts.xen", description="XenAPI simulator (xapisim) harness"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start the simulator in the background")
    start.add_argument("--hosts", type=int, default=2, help="hosts in the pool (default 2)")
    start.add_argument("--vms", type=int, default=4, help="ordinary VMs (default 4)")
    start.add_argument("--running", type=int, default=0, help="of which running (default 0)")
    start.add_argument("--username", default=DEFAULT_USERNAME)
    start.add_argument("--password", default=None, help="default: $VMCTL_PASSWORD or random")
    start.add_argument("--port", type=int, default=0, help="default: a free port")
    start.add_argument("--no-tls", action="store_true", help="plain HTTP")
    start.add_argument("--session-timeout", type=float, default=3600.0, help="idle seconds")
    start.set_defaults(func=cmd_start)
    stop = sub.add_parser("stop", help="stop the simulator listed in .hosts/xen.pids")
    stop.add_argument("--timeout", type=float, default=STOP_TIMEOUT)
    stop.set_defaults(func=cmd_stop)
    status = sub.add_parser("status", help="0 = running, 1 = dead, 3 = not started")
    status.set_defaults(func=cmd_status)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except (HarnessError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
