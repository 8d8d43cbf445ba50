"""Harness for the vSphere API simulator (govmomi's ``simulator`` package).

The launcher ``tests/hosts/vcsim/`` (``main.go``; ``snapshots.go`` makes snapshot revert restore
the VM's configuration and power state as real vSphere does) is built in GOPATH mode against
Debian's packaged govmomi library (``tests/hosts/install-esx.sh`` installs it) into
``.cache/vcsim/``. It is rebuilt only when a ``.go`` file there (or the Go toolchain / govmomi
package version) changes.

Python API::

    from tests.hosts.esx import running_simulator

    with running_simulator(mode="vcenter", vms=10, idle_timeout=2.0) as srv:
        si = pyVim.connect.Connect(
            srv.host, srv.port, srv.username, srv.password,
            sslContext=ssl.create_default_context(cafile=str(srv.cafile)),
        )
        ...   # srv.uri == "vcenter://vmctl@127.0.0.1:PORT/DC0/DC0_C0"
        # srv.host_uris == ["vcenter://vmctl@127.0.0.1:PORT/DC0/DC0_C0/DC0_C0_H0", ...,
        #                   "vcenter://vmctl@127.0.0.1:PORT/DC0/DC0_H0"]

Command line (from the repository root)::

    python -m tests.hosts.esx start    # vCenter + standalone ESX, detached; writes .hosts/esx.env:
                                       # VMCTL_URI=vcenter://vmctl@127.0.0.1:P/DC0/DC0_C0/DC0_C0_H0
                                       # VMCTL_OTHER_URI=vcenter://.../DC0/DC0_C0/DC0_C0_H1
                                       # VMCTL_ESX_URI=esx://vmctl@127.0.0.1:Q
    python -m tests.hosts.esx status
    python -m tests.hosts.esx stop     # stops exactly the PIDs in .hosts/esx.pids

Only the standard library and the ``openssl`` command are used.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import secrets
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from ._files import kit_words, read_pids, shell_exports, shown, write_private

Mode = Literal["esx", "vcenter"]

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache" / "vcsim"
HOSTS_DIR = REPO_ROOT / ".hosts"
LAUNCHER_DIR = Path(__file__).resolve().parent / "vcsim"  # package main: main.go, snapshots.go
MAIN_GO = LAUNCHER_DIR / "main.go"
BINARY_NAME = "vmctl-vcsim"
SYSTEM_GOPATH = "/usr/share/gocode"
GOVMOMI_PACKAGE = "golang-github-vmware-govmomi-dev"
INSTALL_HINT = "run tests/hosts/install-esx.sh (installs golang-go and " + GOVMOMI_PACKAGE + ")"

DEFAULT_USERNAME = "vmctl"
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0

PIDS_FILE = HOSTS_DIR / "esx.pids"
ENV_FILE = HOSTS_DIR / "esx.env"
STATE_FILE = HOSTS_DIR / "esx.json"


class HarnessError(RuntimeError):
    """The simulator could not be built, started or stopped."""


# --------------------------------------------------------------------------- build


@dataclasses.dataclass(frozen=True)
class BuildResult:
    """Where the launcher binary is, and whether this call (re)built it."""

    binary: Path
    built: bool
    seconds: float


def _go_binary() -> str:
    found = shutil.which("go")
    if found is None and Path("/usr/lib/go/bin/go").exists():
        found = "/usr/lib/go/bin/go"
    if found is None:
        raise HarnessError(f"the Go toolchain is missing: {INSTALL_HINT}")
    if not Path(SYSTEM_GOPATH, "src/github.com/vmware/govmomi/simulator").is_dir():
        raise HarnessError(f"govmomi is missing under {SYSTEM_GOPATH}: {INSTALL_HINT}")
    return found


def _package_version(package: str) -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


#: vcsim's WaitForUpdatesEx hands out the changes it collected on a 250 ms ticker ("allow
#: for updates to accumulate", simulator/property_collector.go), which adds 125 ms on average
#: (up to 250 ms) to every change a client waits for: a task's end, a power state, an event.
#: vCenter answers a WaitForUpdatesEx as soon as a change is there. The launcher is built
#: against a copy of the simulator package whose tick is UPDATE_TICK_MS.
UPDATE_TICK_MS = 10
_TICK_LINE = "ticker := time.NewTicker(250 * time.Millisecond)"


def _overlay_simulator(cache_dir: Path) -> None:
    """govmomi under GOPATH's first entry (which wins): symbolic links to Debian's copy but
    for the simulator package, copied with the update tick shortened; HarnessError if the
    line to change is not there (another govmomi)."""
    root = Path(SYSTEM_GOPATH, "src/github.com/vmware/govmomi")
    overlay = cache_dir / "gopath/src/github.com/vmware/govmomi"
    overlay.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():
        link = overlay / entry.name
        if entry.name != "simulator" and not link.is_symlink():
            link.symlink_to(entry)
    src, dst = root / "simulator", overlay / "simulator"
    tmp = dst.with_name(f".simulator.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*_test.go", "testdata"))
    pc = tmp / "property_collector.go"
    text = pc.read_text()
    if text.count(_TICK_LINE) != 1:
        shutil.rmtree(tmp, ignore_errors=True)
        raise HarnessError(f"{src / 'property_collector.go'}: no {_TICK_LINE!r} to shorten")
    tick = f"ticker := time.NewTicker({UPDATE_TICK_MS} * time.Millisecond)"
    pc.write_text(text.replace(_TICK_LINE, tick + " // vmctl: was 250 ms"))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def _launcher_sources() -> list[Path]:
    """The launcher's Go files (GOPATH mode builds files, not a directory outside GOPATH)."""
    return sorted(p for p in LAUNCHER_DIR.glob("*.go") if not p.name.endswith("_test.go"))


def _build_key(go: str) -> str:
    digest = hashlib.sha256()
    for source in _launcher_sources():
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    go_version = subprocess.run(
        [go, "version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    digest.update(go_version.encode())
    digest.update(_package_version(GOVMOMI_PACKAGE).encode())
    digest.update(f"update tick {UPDATE_TICK_MS} ms".encode())
    return digest.hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def go_env(cache_dir: Path = CACHE_DIR) -> dict[str, str]:
    """The environment for ``go build`` in GOPATH mode against Debian's govmomi."""
    env = dict(os.environ)
    env.update(
        {
            "GOPATH": f"{cache_dir / 'gopath'}:{SYSTEM_GOPATH}",
            "GO111MODULE": "off",
            "GOCACHE": str(cache_dir / "gocache"),
            "GOFLAGS": "",
            "GOPROXY": "off",
            "CGO_ENABLED": "0",
        }
    )
    env.setdefault("HOME", str(cache_dir))
    return env


def build_launcher(force: bool = False, cache_dir: Path = CACHE_DIR) -> BuildResult:
    """Build the launcher into ``cache_dir`` unless an up-to-date binary is already there."""
    go = _go_binary()
    binary = cache_dir / BINARY_NAME
    stamp = cache_dir / f"{BINARY_NAME}.stamp"
    with _file_lock(cache_dir / "build.lock"):
        key = _build_key(go)
        if not force and binary.is_file() and stamp.is_file() and stamp.read_text() == key:
            return BuildResult(binary=binary, built=False, seconds=0.0)
        tmp = cache_dir / f".{BINARY_NAME}.{os.getpid()}.tmp"
        started = time.monotonic()
        _overlay_simulator(cache_dir)
        proc = subprocess.run(
            [go, "build", "-o", str(tmp), *map(str, _launcher_sources())],
            cwd=str(cache_dir),
            env=go_env(cache_dir),
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.monotonic() - started
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise HarnessError(f"go build failed ({proc.returncode}):\n{proc.stderr.strip()}")
        os.replace(tmp, binary)
        stamp.write_text(key)
        return BuildResult(binary=binary, built=True, seconds=seconds)


# --------------------------------------------------------------------------- TLS


@dataclasses.dataclass(frozen=True)
class CertPair:
    """A self-signed server certificate and its key, with VMware-style thumbprints."""

    cert: Path
    key: Path
    thumbprint: str  # SHA-256, "AA:BB:..." (what vSphere shows and pyVim's thumbprint= takes)
    thumbprint_sha1: str


def thumbprint_of(cert_pem: Path, algorithm: str = "sha256") -> str:
    """The colon-separated upper-case hex digest of a PEM certificate's DER bytes."""
    der = ssl.PEM_cert_to_DER_cert(cert_pem.read_text())
    digest = hashlib.new(algorithm, der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _cert_still_valid(cert: Path, seconds: int = 86400) -> bool:
    proc = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-checkend", str(seconds)],
        capture_output=True,
        check=False,
    )
    return proc.returncode == 0


def make_cert(directory: Path, common_name: str = "127.0.0.1", days: int = 365) -> CertPair:
    """Generate a new 2048-bit RSA self-signed cert (SAN IP:127.0.0.1, DNS:localhost)."""
    if shutil.which("openssl") is None:
        raise HarnessError(f"the openssl command is missing: {INSTALL_HINT}")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    tmp_cert = directory / f".cert.{os.getpid()}.tmp"
    tmp_key = directory / f".key.{os.getpid()}.tmp"
    extensions = [
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "basicConstraints=critical,CA:TRUE",
        "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
        "extendedKeyUsage=serverAuth",
    ]
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-sha256", "-nodes"]
    command += ["-keyout", str(tmp_key), "-out", str(tmp_cert), "-days", str(days)]
    command += ["-subj", f"/O=vmctl test/CN={common_name}"]
    for extension in extensions:
        command += ["-addext", extension]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise HarnessError(f"openssl req failed: {proc.stderr.strip()}")
    os.chmod(tmp_key, 0o600)
    os.replace(tmp_key, key)
    os.replace(tmp_cert, cert)
    return CertPair(cert, key, thumbprint_of(cert), thumbprint_of(cert, "sha1"))


def ensure_cert(directory: Path = CACHE_DIR / "tls") -> CertPair:
    """Reuse the cached certificate in ``directory`` or generate one (valid > 1 more day)."""
    with _file_lock(directory.parent / "tls.lock"):
        cert, key = directory / "cert.pem", directory / "key.pem"
        if cert.is_file() and key.is_file() and _cert_still_valid(cert):
            return CertPair(cert, key, thumbprint_of(cert), thumbprint_of(cert, "sha1"))
        return make_cert(directory)


# --------------------------------------------------------------------------- run


@dataclasses.dataclass
class VcsimServer:
    """A running simulator, as described by its ready line."""

    url: str  # https://127.0.0.1:PORT/sdk
    host: str
    port: int
    username: str
    password: str = dataclasses.field(repr=False)
    cafile: Path
    thumbprint: str  # SHA-256 of the served certificate, "AA:BB:..."
    thumbprint_sha1: str
    mode: Mode
    pid: int
    datacenters: list[str]
    clusters: list[str]  # datacenter-relative paths, e.g. "DC0/DC0_C0"
    hosts: list[str]
    vm_count: int
    idle_timeout: float | None
    start_seconds: float  # model creation + listen, measured inside the launcher
    ready_seconds: float  # from spawning the process to reading its ready line
    log_dir: Path
    process: subprocess.Popen[bytes] | None = dataclasses.field(default=None, repr=False)

    @property
    def uri(self) -> str:
        """The vmctl URI: ``vcenter://user@h:p/DC0/DC0_C0`` or ``esx://user@h:p``."""
        user = quote(self.username, safe="")
        if self.mode == "esx":
            return f"esx://{user}@{self.host}:{self.port}"
        paths = self.clusters or self.datacenters
        path = paths[0] if paths else ""
        return f"vcenter://{user}@{self.host}:{self.port}/{path}"

    @property
    def host_uris(self) -> list[str]:
        """vcenter mode: host-scoped URIs, what migration needs: the first cluster's hosts
        (``vcenter://user@h:p/DC0/DC0_C0/DC0_C0_H0``, ``.../DC0_C0_H1``, ...), then the
        standalone hosts (``vcenter://user@h:p/DC0/DC0_H0``). Empty in esx mode.

        The simulator names a cluster's hosts ``<cluster>_H<n>`` and a datacenter's standalone
        hosts ``<datacenter>_H<n>``; the ready line lists the host names only.
        """
        if self.mode == "esx":
            return []
        base = f"vcenter://{quote(self.username, safe='')}@{self.host}:{self.port}"
        uris: list[str] = []
        if self.clusters:
            cluster = self.clusters[0]
            prefix = cluster.rsplit("/", 1)[-1] + "_H"
            uris += [f"{base}/{cluster}/{h}" for h in self.hosts if h.startswith(prefix)]
        for dc in self.datacenters:
            uris += [f"{base}/{dc}/{h}" for h in self.hosts if h.startswith(f"{dc}_H")]
        return uris

    @property
    def stderr_log(self) -> Path:
        return self.log_dir / f"vcsim-{self.mode}.log"

    def alive(self) -> bool:
        return _pid_is_ours(self.pid)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        stop_pid(self.pid, timeout=timeout, process=self.process)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(dataclasses.replace(self, process=None))
        data.pop("process")
        data.pop("password")
        data["cafile"] = str(self.cafile)
        data["log_dir"] = str(self.log_dir)
        data["uri"] = self.uri
        return data


def _format_duration(seconds: float) -> str:
    return f"{max(0, round(seconds * 1000))}ms"


def launcher_args(
    binary: Path,
    cert: CertPair,
    *,
    mode: Mode,
    vms: int,
    username: str,
    idle_timeout: float | None,
    listen: str,
    hosts: int | None,
    clusters: int | None,
    datacenters: int | None,
    standalone_hosts: int | None,
    datastores: int | None,
    autostart: bool,
    method_delay: dict[str, int] | None = None,
) -> list[str]:
    args = [
        str(binary),
        f"-mode={mode}",
        f"-listen={listen}",
        f"-tlscert={cert.cert}",
        f"-tlskey={cert.key}",
        f"-username={username}",
        "-password-env=VCSIM_PASSWORD",
        f"-vm={vms}",
        f"-autostart={'true' if autostart else 'false'}",
    ]
    if idle_timeout:
        args.append(f"-idle-timeout={_format_duration(idle_timeout)}")
    if method_delay:
        args.append("-method-delay=" + ",".join(f"{m}:{ms}" for m, ms in method_delay.items()))
    optional = {
        "-host": hosts,
        "-cluster": clusters,
        "-dc": datacenters,
        "-standalone-host": standalone_hosts,
        "-ds": datastores,
    }
    if mode == "esx":
        given = [flag for flag, value in optional.items() if value is not None and flag != "-ds"]
        if given:
            raise ValueError(f"{', '.join(given)} only apply to mode='vcenter'")
    for flag, value in optional.items():
        if value is not None:
            args.append(f"{flag}={value}")
    return args


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start_simulator(
    mode: Mode = "vcenter",
    *,
    vms: int = 2,
    hosts: int | None = None,
    clusters: int | None = None,
    datacenters: int | None = None,
    standalone_hosts: int | None = None,
    datastores: int | None = None,
    username: str = DEFAULT_USERNAME,
    password: str | None = None,
    idle_timeout: float | None = None,
    listen: str = "127.0.0.1:0",
    autostart: bool = True,
    method_delay: dict[str, int] | None = None,
    cert: CertPair | None = None,
    detach: bool = False,
    log_dir: Path | None = None,
    ready_timeout: float = READY_TIMEOUT,
) -> VcsimServer:
    """Build if needed, start one simulator and wait for its ready line.

    ``vms`` is the number of VMs per resource pool (govmomi's ``Model.Machine``): in ``esx``
    mode that is the total; in ``vcenter`` mode there is one pool per standalone host and one
    per cluster, so the defaults (1 standalone host + 1 cluster of 3 hosts) give ``2 * vms``.
    ``hosts`` is hosts per cluster. ``password=None`` picks a random one (see the result).
    ``detach=True`` puts the process in its own session so it outlives this Python process.
    """
    if mode not in ("esx", "vcenter"):
        raise ValueError(f"mode must be 'esx' or 'vcenter', not {mode!r}")
    binary = build_launcher().binary
    cert = cert or ensure_cert()
    password = password if password is not None else secrets.token_urlsafe(12)
    args = launcher_args(
        binary, cert, mode=mode, vms=vms, username=username, idle_timeout=idle_timeout,
        listen=listen, hosts=hosts, clusters=clusters, datacenters=datacenters,
        standalone_hosts=standalone_hosts, datastores=datastores, autostart=autostart,
        method_delay=method_delay,
    )  # fmt: skip
    if log_dir is None:
        _prune_run_dirs(CACHE_DIR / "run")
        (CACHE_DIR / "run").mkdir(parents=True, exist_ok=True)
        log_dir = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=CACHE_DIR / "run"))
    log_dir.mkdir(parents=True, exist_ok=True)
    ready_file = log_dir / f"vcsim-{mode}.ready"
    log_file = log_dir / f"vcsim-{mode}.log"
    env = dict(os.environ)
    env["VCSIM_PASSWORD"] = password
    # The datastores' temporary directories go under the cache, not /tmp.
    env["TMPDIR"] = str(log_dir)
    started = time.monotonic()
    if not detach:
        # The launcher exits when this pipe closes, i.e. when this Python process dies.
        args.append("-exit-on-stdin-eof")
    with ready_file.open("wb") as out, log_file.open("ab") as err:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL if detach else subprocess.PIPE,
            stdout=out,
            stderr=err,
            env=env,
            cwd=str(log_dir),
            start_new_session=detach,
            close_fds=True,
        )
    try:
        ready = _wait_ready(proc, ready_file, log_file, ready_timeout)
    except BaseException:
        stop_pid(proc.pid, timeout=2.0, process=proc)
        raise
    return VcsimServer(
        url=ready["url"],
        host=ready["host"],
        port=int(ready["port"]),
        username=ready["username"],
        password=password,
        cafile=cert.cert,
        thumbprint=ready["thumbprint"],
        thumbprint_sha1=ready["thumbprint_sha1"],
        mode=mode,
        pid=proc.pid,
        datacenters=list(ready["datacenters"]),
        clusters=list(ready["clusters"]),
        hosts=list(ready["hosts"]),
        vm_count=int(ready["vm_count"]),
        idle_timeout=idle_timeout,
        start_seconds=float(ready["start_seconds"]),
        ready_seconds=time.monotonic() - started,
        log_dir=log_dir,
        process=proc,
    )


def _prune_run_dirs(run_dir: Path) -> None:
    """Remove run directories of launchers that exited after their Python parent died."""
    if not run_dir.is_dir():
        return
    for sub in run_dir.iterdir():
        for ready_file in sub.glob("vcsim-*.ready"):
            try:
                pid = int(json.loads(ready_file.read_text().split("\n", 1)[0])["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if not _pid_is_ours(pid):
                shutil.rmtree(sub, ignore_errors=True)


def _wait_ready(
    proc: subprocess.Popen[bytes], ready_file: Path, log_file: Path, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        data = ready_file.read_bytes()
        if b"\n" in data:
            line = data.split(b"\n", 1)[0]
            try:
                ready: dict[str, Any] = json.loads(line)
            except ValueError as exc:
                raise HarnessError(f"unexpected launcher output: {line[:200]!r}") from exc
            if ready.get("event") != "ready":
                raise HarnessError(f"unexpected launcher output: {line[:200]!r}")
            return ready
        code = proc.poll()
        if code is not None:
            raise HarnessError(f"simulator exited with {code} before ready:\n{_tail(log_file)}")
        if time.monotonic() > deadline:
            raise HarnessError(f"simulator not ready after {timeout:.0f}s:\n{_tail(log_file)}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def _pid_is_ours(pid: int) -> bool:
    """True when ``pid`` is a live (not zombie) process running our launcher binary."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    if state in ("Z", "X"):
        return False
    argv0 = cmdline.split(b"\0", 1)[0]
    return os.path.basename(argv0).decode(errors="replace") == BINARY_NAME


def stop_pid(
    pid: int,
    timeout: float = STOP_TIMEOUT,
    process: subprocess.Popen[bytes] | None = None,
) -> bool:
    """Stop one launcher by PID: SIGTERM, then SIGKILL after ``timeout``.

    Signals nothing unless the PID still runs our launcher binary (guards against PID reuse).
    Returns True when a process was signalled.
    """
    if process is not None and process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()  # harmless; the launcher also exits on stdin EOF
    if process is not None and process.poll() is not None:
        return False
    if not _pid_is_ours(pid):
        if process is not None:
            process.poll()
        return False
    os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, timeout, process):
        return True
    if _pid_is_ours(pid):
        os.kill(pid, signal.SIGKILL)
    _wait_gone(pid, 5.0, process)
    return True


def _wait_gone(pid: int, timeout: float, process: subprocess.Popen[bytes] | None) -> bool:
    if process is not None:
        try:
            process.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_is_ours(pid):
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def running_simulator(
    mode: Mode = "vcenter",
    *,
    vms: int = 2,
    hosts: int | None = None,
    clusters: int | None = None,
    datacenters: int | None = None,
    standalone_hosts: int | None = None,
    datastores: int | None = None,
    username: str = DEFAULT_USERNAME,
    password: str | None = None,
    idle_timeout: float | None = None,
    listen: str = "127.0.0.1:0",
    autostart: bool = True,
    method_delay: dict[str, int] | None = None,
    cert: CertPair | None = None,
    ready_timeout: float = READY_TIMEOUT,
) -> Iterator[VcsimServer]:
    """Start a simulator for the duration of the ``with`` block (see :func:`start_simulator`)."""
    server = start_simulator(
        mode, vms=vms, hosts=hosts, clusters=clusters, datacenters=datacenters,
        standalone_hosts=standalone_hosts, datastores=datastores, username=username,
        password=password, idle_timeout=idle_timeout, listen=listen, autostart=autostart,
        method_delay=method_delay, cert=cert, ready_timeout=ready_timeout,
    )  # fmt: skip
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.log_dir, ignore_errors=True)


# --------------------------------------------------------------------------- CLI


#: The conformance kit's options for the simulators, besides the network and datastore the
#: driver finds itself (``EsxDriver.kit_defaults``); the simulator has no guest OS to boot.
#: ``disk_mib``: the BACKUP clauses write and read whole disks, and over vSphere's datastore
#: HTTP access every write moves the whole disk twice (docs/esx.md): small disks keep the
#: run short. ``VMCTL_KIT_OPTIONS`` replaces any value from another env file sourced before.
KIT_OPTIONS: dict[str, str] = {"disk_mib": "16"}


#: The cluster host the kit may take down for RECOVER-EXEC-1 (the model's third: no VM of
#: the model runs there), with tests/hosts/vcsim_control.py.
FAIL_HOST = "DC0_C0_H2"


def host_kit_options(vcenter: VcsimServer) -> dict[str, str]:
    """Kit options for the HOST/EVAC/REBAL/RECOVER clauses: ``hosts_uri`` the cluster of the
    two host-scoped URIs, and the host the kit may disconnect and reconnect, and how."""
    hosts = vcenter.host_uris
    control = Path(__file__).with_name("vcsim_control.py")
    command = f'{{python}} {shlex.quote(str(control))} --url "$VMCTL_URI"'
    out = {"hosts_uri": hosts[0].rsplit("/", 1)[0]}
    if any(h.rsplit("/", 1)[1] == FAIL_HOST for h in hosts):
        out |= {
            "fail_host": FAIL_HOST,
            "fail_command": f"{command} fail {{host}}",
            "revive_command": f"{command} revive {{host}}",
        }
    return out


def env_values(vcenter: VcsimServer, esx: VcsimServer) -> dict[str, str]:
    """The variables of ``.hosts/esx.env`` (see :func:`env_lines`)."""
    hosts = vcenter.host_uris
    if len(hosts) < 2:
        raise HarnessError(f"the vCenter model has fewer than two hosts: {hosts}")
    return {
        "VMCTL_URI": hosts[0],
        "VMCTL_OTHER_URI": hosts[1],
        "VMCTL_ESX_URI": esx.uri,
        "VMCTL_PASSWORD": vcenter.password,
        "VMCTL_CAFILE": str(vcenter.cafile),
        "VMCTL_THUMBPRINT": vcenter.thumbprint,
        "VMCTL_KIT_OPTIONS": kit_words({**KIT_OPTIONS, **host_kit_options(vcenter)}),
        "VMCTL_VCENTER_URI": hosts[0],
        "VMCTL_VCENTER_OTHER_URI": hosts[1],
        "VMCTL_ESX_PASSWORD": vcenter.password,
        "VMCTL_ESX_CAFILE": str(vcenter.cafile),
        "VMCTL_ESX_THUMBPRINT": vcenter.thumbprint,
        "VMCTL_ESX_KIT_OPTIONS": kit_words(KIT_OPTIONS),
    }


def env_lines(vcenter: VcsimServer, esx: VcsimServer) -> list[str]:
    """The lines of ``.hosts/esx.env`` (POSIX shell, sourceable).

    ``VMCTL_URI`` and ``VMCTL_OTHER_URI`` are two hosts of the vCenter's cluster (host-scoped
    URIs, so that the kit's migration clauses run between them); ``VMCTL_ESX_URI`` is the
    standalone ESX simulator. Both simulators share the password and the certificate.

    The same values also come under names of their own (``VMCTL_VCENTER_URI``,
    ``VMCTL_VCENTER_OTHER_URI``, ``VMCTL_ESX_PASSWORD``, ``VMCTL_ESX_CAFILE``,
    ``VMCTL_ESX_THUMBPRINT``, ``VMCTL_ESX_KIT_OPTIONS``), which sourcing ``.hosts/xen.env``
    after this file does not overwrite.

    ``VMCTL_KIT_OPTIONS`` is what the conformance kit reads besides what the driver finds
    on the host (:data:`KIT_OPTIONS`): ``vmctl conformance "$VMCTL_URI" --other-uri
    "$VMCTL_OTHER_URI"`` runs as it is.
    """
    return shell_exports(env_values(vcenter, esx))


def cmd_start(args: argparse.Namespace) -> int:
    running = [pid for pid in read_pids(PIDS_FILE) if _pid_is_ours(pid)]
    if running:
        pids = " ".join(map(str, running))
        print(f"already running (PIDs {pids}); see {ENV_FILE}", file=sys.stderr)
        if ENV_FILE.is_file():
            print(shown(ENV_FILE.read_text()), end="")
        return 0
    if args.hosts is not None and args.hosts < 2:
        print("--hosts must be at least 2: the env names two hosts of the cluster", file=sys.stderr)
        return 2
    build = build_launcher()
    if build.built:
        print(f"built {build.binary} in {build.seconds:.1f}s", file=sys.stderr)
    password = args.password or os.environ.get("VMCTL_PASSWORD") or secrets.token_urlsafe(12)
    log_dir = HOSTS_DIR / "esx-logs"
    idle = args.idle_timeout or None
    vcenter = start_simulator(
        "vcenter", vms=args.vms, hosts=args.hosts, username=args.username, password=password,
        idle_timeout=idle, detach=True, log_dir=log_dir,
    )  # fmt: skip
    try:
        esx = start_simulator(
            "esx", vms=args.vms, username=args.username, password=password,
            idle_timeout=idle, detach=True, log_dir=log_dir,
        )  # fmt: skip
    except BaseException:
        vcenter.stop()
        raise
    HOSTS_DIR.mkdir(parents=True, exist_ok=True)
    PIDS_FILE.write_text(f"{vcenter.pid}\n{esx.pid}\n")
    lines = env_lines(vcenter, esx)
    write_private(ENV_FILE, "\n".join(lines) + "\n")
    state = {"vcenter": vcenter.to_json(), "esx": esx.to_json()}
    STATE_FILE.write_text(json.dumps(state, indent=2) + "\n")
    print(
        f"vcenter: pid {vcenter.pid} {vcenter.url} ({vcenter.vm_count} VMs, "
        f"ready in {vcenter.ready_seconds:.2f}s); esx: pid {esx.pid} {esx.url} "
        f"({esx.vm_count} VMs); env: {ENV_FILE}",
        file=sys.stderr,
    )
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
    shutil.rmtree(HOSTS_DIR / "esx-logs", ignore_errors=True)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    pids = read_pids(PIDS_FILE)
    if not pids:
        print("not started")
        return 3
    state: dict[str, Any] = {}
    if STATE_FILE.is_file():
        state = json.loads(STATE_FILE.read_text())
    by_pid = {int(info["pid"]): info for info in state.values()}
    alive = 0
    for pid in pids:
        ok = _pid_is_ours(pid)
        alive += ok
        info = by_pid.get(pid, {})
        print(f"{pid} {'running' if ok else 'dead'} {info.get('mode', '?')} {info.get('uri', '')}")
    return 0 if alive == len(pids) else 1


def cmd_build(args: argparse.Namespace) -> int:
    result = build_launcher(force=args.force)
    verb = f"built in {result.seconds:.1f}s" if result.built else "up to date"
    print(f"{result.binary}: {verb}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.hosts.esx", description="vSphere API simulator harness"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start a vCenter and an ESX simulator in the background")
    start.add_argument("--vms", type=int, default=2, help="VMs per resource pool (default 2)")
    start.add_argument("--hosts", type=int, default=None, help="vCenter: hosts per cluster (3)")
    start.add_argument("--username", default=DEFAULT_USERNAME)
    start.add_argument("--password", default=None, help="default: $VMCTL_PASSWORD or random")
    start.add_argument("--idle-timeout", type=float, default=0.0, help="seconds; 0 = never")
    start.set_defaults(func=cmd_start)
    stop = sub.add_parser("stop", help="stop the simulators listed in .hosts/esx.pids")
    stop.add_argument("--timeout", type=float, default=STOP_TIMEOUT)
    stop.set_defaults(func=cmd_stop)
    status = sub.add_parser("status", help="0 = all running, 1 = some dead, 3 = not started")
    status.set_defaults(func=cmd_status)
    build = sub.add_parser("build", help="build the launcher (only if its sources changed)")
    build.add_argument("--force", action="store_true")
    build.set_defaults(func=cmd_build)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
