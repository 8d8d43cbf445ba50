"""Harness for the Hyper-V WS-Management simulator (``hypervsim``, in ``drivers/hypervsim``).

Command line (from the repository root)::

    python -m tests.hosts.hyperv start    # detached; writes .hosts/hyperv.pids, .hosts/hyperv.env
    python -m tests.hosts.hyperv status   # 0 running, 1 dead, 3 not started
    python -m tests.hosts.hyperv stop     # stops exactly the PID in .hosts/hyperv.pids

``.hosts/hyperv.env`` (POSIX shell, sourceable). Like the other env files it sets the generic
names the CLI and the kit read (``VMCTL_URI``, ``VMCTL_OTHER_URI``, ``VMCTL_PASSWORD``,
``VMCTL_CAFILE``, ``VMCTL_THUMBPRINT``, ``VMCTL_KIT_OPTIONS``: the guest ISO, which WMI cannot
discover), so ``vmctl conformance "$VMCTL_URI" --other-uri "$VMCTL_OTHER_URI"`` runs the kit
as it is, and the same values under names of its own, which sourcing another file keeps::

    VMCTL_HYPERV_URI=hyperv://Administrator@127.0.0.1:PORT1      # the cluster's first host
    VMCTL_HYPERV_OTHER_URI=hyperv://Administrator@127.0.0.1:PORT2  # its second host
    VMCTL_HYPERV_URL=https://127.0.0.1:PORT1/wsman   VMCTL_HYPERV_OTHER_URL=...
    VMCTL_HYPERV_HOSTS=HVHOST1,HVHOST2   # the names MigrateVirtualSystemToHost takes
    VMCTL_HYPERV_USER=Administrator  VMCTL_HYPERV_PASSWORD=...
    VMCTL_HYPERV_CAFILE=.hosts/hyperv-tls/cert.pem  VMCTL_HYPERV_THUMBPRINT=AA:BB:...
    VMCTL_HYPERV_HTTP_URL=http://127.0.0.1:PORT3/wsman  VMCTL_HYPERV_OTHER_HTTP_URL=...
                                     # the same hosts' plain-HTTP listeners (TLS runs only)
    VMCTL_HYPERV_KIT_OPTIONS='boot_iso=...'

With ``--no-tls`` the URIs are ``hyperv+http://...`` and the URLs ``http://``.

Python API::

    from tests.hosts.hyperv import running_simulator
    with running_simulator(vms=4) as sim:   # a child process, stopped on exit
        sim.urls, sim.cafile, sim.thumbprint, sim.password, sim.uri, sim.other_uri
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
PIDS_FILE = HOSTS_DIR / "hyperv.pids"
ENV_FILE = HOSTS_DIR / "hyperv.env"
STATE_FILE = HOSTS_DIR / "hyperv.json"
LOG_FILE = HOSTS_DIR / "hyperv.log"
TLS_DIR = HOSTS_DIR / "hyperv-tls"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
DEFAULT_USERNAME = "Administrator"
PASSWORD_ENV = "HYPERVSIM_PASSWORD"


class HarnessError(RuntimeError):
    """The simulator could not be started or stopped."""


@dataclasses.dataclass
class HypervSim:
    pid: int
    urls: list[str]
    ports: list[int]
    hosts: list[str]
    cafile: str | None
    thumbprint: str | None
    username: str
    password: str
    tls: bool
    http_urls: list[str] = dataclasses.field(default_factory=list)
    process: subprocess.Popen[bytes] | None = dataclasses.field(default=None, repr=False)

    def _uri(self, i: int) -> str:
        scheme = "hyperv" if self.tls else "hyperv+http"
        return f"{scheme}://{self.username}@127.0.0.1:{self.ports[i]}"

    @property
    def uri(self) -> str:
        """A vmctl URI for the cluster's first host."""
        return self._uri(0)

    @property
    def other_uri(self) -> str:
        """The second host (the first again for a one-host cluster)."""
        return self._uri(1 if len(self.ports) > 1 else 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "urls": self.urls,
            "ports": self.ports,
            "hosts": self.hosts,
            "cafile": self.cafile,
            "thumbprint": self.thumbprint,
            "username": self.username,
            "uri": self.uri,
            "other_uri": self.other_uri,
            "http_urls": self.http_urls,
        }

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        stop_pid(self.pid, timeout, self.process)


def _env(password: str) -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = f"{DRIVERS}{os.pathsep}{path}" if path else str(DRIVERS)
    env[PASSWORD_ENV] = password
    return env


def ensure_cert(directory: Path | None = None) -> tuple[Path, Path]:
    """A self-signed 2048-bit certificate for 127.0.0.1, generated once and kept."""
    directory = TLS_DIR if directory is None else directory
    cert, key = directory / "cert.pem", directory / "key.pem"
    if cert.is_file() and key.is_file():
        check = subprocess.run(
            ["openssl", "x509", "-checkend", "86400", "-noout", "-in", str(cert)],
            capture_output=True,
            check=False,
        )
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
    op_delay: float | None = None,
    detach: bool = False,
    log_file: Path | None = None,
) -> HypervSim:
    """Start ``python -m hypervsim`` and wait for its JSON ready line."""
    password = password or secrets.token_urlsafe(12)
    args = [sys.executable, "-m", "hypervsim", "--port", str(port), "--hosts", str(hosts),
            "--vms", str(vms), "--running", str(running), "--username", username]  # fmt: skip
    if op_delay is not None:
        args += ["--op-delay", str(op_delay)]
    if tls:
        cert, key = ensure_cert()
        # Both listeners, as a WinRM host has (5986 HTTPS and 5985 HTTP).
        args += ["--tls", "--http-too", "--cert", str(cert), "--key", str(key)]
    else:
        args += ["--no-tls"]
    out_path = log_file or (HOSTS_DIR / f"hyperv-{os.getpid()}-{time.monotonic_ns()}.out")
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
            raise HarnessError(f"hypervsim exited with {proc.returncode}:\n{text[-2000:]}")
        time.sleep(0.05)
    if ready is None:
        stop_pid(proc.pid, STOP_TIMEOUT, proc)
        raise HarnessError(f"hypervsim gave no ready line in {READY_TIMEOUT}s")
    if log_file is None:
        out_path.unlink(missing_ok=True)
    return HypervSim(
        pid=proc.pid, urls=list(ready["urls"]), ports=[int(p) for p in ready["ports"]],
        hosts=list(ready["hosts"]), cafile=ready["cafile"], thumbprint=ready["thumbprint"],
        username=username, password=password, tls=tls,
        http_urls=list(ready.get("http_urls", [])), process=proc,
    )  # fmt: skip


def _pid_is_ours(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"hypervsim" in cmdline


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
def running_simulator(**kwargs: Any) -> Iterator[HypervSim]:
    sim = start_simulator(**kwargs)
    try:
        yield sim
    finally:
        sim.stop()


#: What the kit cannot discover on hypervsim's hosts: its bootable guest image (the network,
#: a virtual switch, comes from HypervDriver.kit_defaults).
KIT_OPTIONS = {"boot_iso": "C:\\Hyper-V\\Images\\guest-os.iso"}


def env_values(sim: HypervSim) -> dict[str, str]:
    """The variables of ``.hosts/hyperv.env`` (see the module's docstring)."""
    other_url = sim.urls[1] if len(sim.urls) > 1 else sim.urls[0]
    kit = kit_words(KIT_OPTIONS)
    values = {
        "VMCTL_URI": sim.uri,
        "VMCTL_OTHER_URI": sim.other_uri,
        "VMCTL_PASSWORD": sim.password,
        "VMCTL_CAFILE": sim.cafile or "",
        "VMCTL_THUMBPRINT": sim.thumbprint or "",
        "VMCTL_KIT_OPTIONS": kit,
        "VMCTL_HYPERV_URI": sim.uri,
        "VMCTL_HYPERV_OTHER_URI": sim.other_uri,
        "VMCTL_HYPERV_URL": sim.urls[0],
        "VMCTL_HYPERV_OTHER_URL": other_url,
        "VMCTL_HYPERV_HOSTS": ",".join(sim.hosts),
        "VMCTL_HYPERV_USER": sim.username,
        "VMCTL_HYPERV_PASSWORD": sim.password,
        "VMCTL_HYPERV_CAFILE": sim.cafile or "",
        "VMCTL_HYPERV_THUMBPRINT": sim.thumbprint or "",
        "VMCTL_HYPERV_KIT_OPTIONS": kit,
    }
    if sim.http_urls:  # the same hosts' plain-HTTP listeners
        values["VMCTL_HYPERV_HTTP_URL"] = sim.http_urls[0]
        values["VMCTL_HYPERV_OTHER_HTTP_URL"] = sim.http_urls[min(1, len(sim.http_urls) - 1)]
    return values


def env_lines(sim: HypervSim) -> list[str]:
    """The lines of ``.hosts/hyperv.env`` (POSIX shell, sourceable)."""
    return shell_exports(env_values(sim))


def masked(env_text: str) -> str:
    """The env file's text for a terminal: the password masked (it stays in the file)."""
    return shown(env_text)


def cmd_start(args: argparse.Namespace) -> int:
    running = [pid for pid in read_pids(PIDS_FILE) if _pid_is_ours(pid)]
    if running:
        print(f"already running (PID {running[0]}); see {ENV_FILE}", file=sys.stderr)
        if ENV_FILE.is_file():
            print(masked(ENV_FILE.read_text()), end="")
        return 0
    password = args.password or os.environ.get("VMCTL_HYPERV_PASSWORD") or secrets.token_urlsafe(12)
    sim = start_simulator(
        hosts=args.hosts, vms=args.vms, running=args.running, username=args.username,
        password=password, tls=not args.no_tls, port=args.port, op_delay=args.op_delay,
        detach=True, log_file=LOG_FILE,
    )  # fmt: skip
    HOSTS_DIR.mkdir(parents=True, exist_ok=True)
    PIDS_FILE.write_text(f"{sim.pid}\n")
    lines = env_lines(sim)
    write_private(ENV_FILE, "\n".join(lines) + "\n")
    STATE_FILE.write_text(json.dumps(sim.to_json(), indent=2) + "\n")
    print(
        f"hypervsim: pid {sim.pid} {' '.join(sim.urls)} hosts {', '.join(sim.hosts)}; "
        f"env: {ENV_FILE}",
        file=sys.stderr,
    )
    print(masked("\n".join(lines)))
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
        prog="python -m tests.hosts.hyperv", description="Hyper-V simulator (hypervsim) harness"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start the simulator in the background")
    start.add_argument("--hosts", type=int, default=2, help="hosts in the cluster (default 2)")
    start.add_argument("--vms", type=int, default=4, help="VMs (default 4)")
    start.add_argument("--running", type=int, default=0, help="of which running (default 0)")
    start.add_argument("--username", default=DEFAULT_USERNAME)
    start.add_argument(
        "--password", default=None, help="default: $VMCTL_HYPERV_PASSWORD or a random one"
    )
    start.add_argument("--port", type=int, default=0, help="first host's port (default: free)")
    start.add_argument("--no-tls", action="store_true", help="plain HTTP")
    start.add_argument("--op-delay", type=float, default=None, help="seconds a job runs")
    start.set_defaults(func=cmd_start)
    stop = sub.add_parser("stop", help="stop the simulator listed in .hosts/hyperv.pids")
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
