"""Real KVM/QEMU libvirt hosts on this machine, for tests and developers.

Runs Debian 12's monolithic ``libvirtd`` without systemd and, optionally, a second libvirt
host in its own network + mount namespace so that live migration can be tested on one machine.
Run ``tests/hosts/install-kvm.sh`` first (installs the Debian packages). Needs root.

Python API (stdlib + libvirt-python only)::

    from tests.hosts.kvm import running_hosts, tiny_guest, tiny_guest_xml, blank_domain_xml

    with running_hosts(second_host=True) as hosts:      # -> KvmHosts
        hosts.uri            # "qemu:///system" (host 1, the machine's own libvirtd)
        hosts.other_uri      # "qemu+tcp://10.213.77.2/system" (host 2) or None
        hosts.network        # "vmctl-test": isolated network (no <forward>, DHCP) on both hosts
        hosts.pool           # "vmctl-test": dir pool on both hosts, same directory
        hosts.image_dir      # Path("/var/lib/vmctl-test/images"), shared by both hosts
        hosts.kvm_available  # /dev/kvm usable (domain type 'kvm' for no-OS domains)
        hosts.kvm_is_pvm     # /dev/kvm is nested PVM (a guest OS does not boot under it)
        hosts.migrate_uri    # "tcp://10.213.77.1": migration URI *into* host 1
        hosts.other_migrate_uri  # "tcp://10.213.77.2": migration URI *into* host 2
        guest = tiny_guest()                              # -> TinyGuest (built + cached)
        xml = tiny_guest_xml("g1", guest, network=hosts.network)    # type='qemu' (TCG)
        xml = blank_domain_xml("d1", kvm=hosts.kvm_available)       # no OS, SeaBIOS only

``running_hosts`` reuses daemons that already answer (e.g. started by the CLI below or by
someone else; a libvirtd this harness did not start is reported and never killed) and stops,
at exit, only the processes it started itself.

Command line (run from the repository root)::

    python -m tests.hosts.kvm start [--no-second-host]   # detached; writes .hosts/kvm.pids
    python -m tests.hosts.kvm status                     # and a sourceable .hosts/kvm.env:
    python -m tests.hosts.kvm stop                       #   VMCTL_URI=qemu:///system
    python -m tests.hosts.kvm guest                      #   VMCTL_OTHER_URI=qemu+tcp://...
                                                         #   VMCTL_KIT_OPTIONS='network=...
                                                         #     pool=... boot_kernel=...'

The tiny guest (``tiny_guest()``) is built from Debian packages only (``apt-get download`` of
the kernel, busybox-static and qemu-guest-agent) into an initramfs whose busybox ``/init``
loads the virtio modules, gets an address with udhcpc, powers off on the ACPI power button,
runs qemu-ga on the virtio-serial channel ``org.qemu.guest_agent.0`` and prints
``VMCTL-TINY-READY ip=<address>`` on the serial console (ttyS0). It is cached under
``.cache/guest/<key>/`` keyed by the package versions.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import grp
import gzip
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import libvirt

from ._files import kit_words, shell_exports, write_private

REPO_ROOT = Path(__file__).resolve().parents[2]
STATE_DIR = REPO_ROOT / ".hosts"
PIDS_FILE = STATE_DIR / "kvm.pids"
ENV_FILE = STATE_DIR / "kvm.env"
GUEST_CACHE_DIR = REPO_ROOT / ".cache" / "guest"

URI = "qemu:///system"
NETWORK_NAME = "vmctl-test"
POOL_NAME = "vmctl-test"
BASE_DIR = Path("/var/lib/vmctl-test")
IMAGE_DIR = BASE_DIR / "images"
GUEST_DIR = BASE_DIR / "guest"  # kernel/initrd copies readable by QEMU on both hosts
CONSOLE_DIR = BASE_DIR / "console"  # serial console logs written by virtlogd
HOST2_DIR = BASE_DIR / "host2"  # the second host's private /etc, /var/lib, ... libvirt

NETNS = "vmctl-kvm2"
VETH_HOST = "vmctl-h1"  # stays in the root namespace
VETH_NS = "vmctl-h2"  # moved into NETNS
HOST1_ADDR = "10.213.77.1"
HOST2_ADDR = "10.213.77.2"
VETH_PREFIX = 30
OTHER_URI = f"qemu+tcp://{HOST2_ADDR}/system"
HOST2_UUID = str(uuid.uuid5(uuid.NAMESPACE_DNS, "host2.vmctl-test.invalid"))

GUEST_NET_ADDR = "10.213.78.1"  # the isolated network (same on both hosts, separate netns)
GUEST_NET_BRIDGE = "vmctltest0"
READY_MARKER = "VMCTL-TINY-READY"

START_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0


class HostError(RuntimeError):
    """The hosts could not be started, reached or stopped."""


class GuestBuildError(RuntimeError):
    """The tiny guest could not be built (e.g. no apt package lists, no network)."""


def _quiet_libvirt_errors() -> None:
    def _ignore(_ctx: object, _err: object) -> None:
        return None

    libvirt.registerErrorHandler(_ignore, None)


_quiet_libvirt_errors()


# --------------------------------------------------------------------------- processes


@dataclasses.dataclass(frozen=True)
class Proc:
    """A process this harness started; ``start_time`` (from /proc) guards against PID reuse."""

    role: str
    pid: int
    start_time: str

    @classmethod
    def of(cls, role: str, pid: int) -> Proc:
        return cls(role, pid, _proc_start_time(pid) or "")

    def alive(self) -> bool:
        st = _proc_start_time(self.pid)
        return st is not None and st == self.start_time

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; only if it is still the same process."""
        if not self.alive():
            return
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _reap(self.pid)
            if not self.alive():
                return
            time.sleep(0.05)
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            _reap(self.pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _proc_start_time(pid: int) -> str | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def _pids_of(exe_name: str) -> list[int]:
    """PIDs whose executable is named ``exe_name`` (read-only lookup; never used to kill)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            target = os.readlink(d / "exe")
        except OSError:
            continue
        if Path(target.removesuffix(" (deleted)")).name == exe_name:
            found.append(int(d.name))
    return found


def _run(args: Sequence[str], *, check: bool = True, timeout: float = 120) -> str:
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise HostError(f"{' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def _spawn(role: str, args: Sequence[str], log: Path) -> tuple[Proc, subprocess.Popen[bytes]]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the CLI; no Ctrl-C from the test terminal
        )
    time.sleep(0.02)
    return Proc.of(role, popen.pid), popen


# --------------------------------------------------------------------------- libvirt helpers


def _answers(uri: str) -> bool:
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return False
    try:
        conn.getLibVersion()
        return True
    except libvirt.libvirtError:
        return False
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


def _wait_answers(uri: str, proc: Proc | None, timeout: float, log: Path | None) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if _answers(uri):
            return time.monotonic() - t0
        if proc is not None and not proc.alive():
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise HostError(f"{proc.role} (pid {proc.pid}) exited before answering:\n{tail}")
        time.sleep(0.1)
    raise HostError(f"{uri} did not answer within {timeout:.0f} s")


def kvm_usable() -> bool:
    """/dev/kvm exists and can be opened read-write."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def fix_dev_kvm_permissions() -> None:
    """Give /dev/kvm the mode udev's Debian rule would (root:kvm 0660); no udev here.

    QEMU runs as libvirt-qemu (group kvm). Without this, type='kvm' domains fail with
    "Could not access KVM kernel module: Permission denied" and libvirtd re-probes QEMU's
    capabilities (~8 s) on every getCapabilities() call.
    """
    dev = Path("/dev/kvm")
    if not dev.exists():
        return
    try:
        kvm_gid = grp.getgrnam("kvm").gr_gid
    except KeyError:
        return
    st = dev.stat()
    if st.st_gid != kvm_gid or (st.st_mode & 0o060) != 0o060:
        os.chown(dev, -1, kvm_gid)
        os.chmod(dev, (st.st_mode & 0o7777) | 0o060)


def kvm_is_pvm() -> bool:
    """/dev/kvm is nested PVM (kvm_pvm): fine for no-OS domains, too slow to boot Linux."""
    return Path("/sys/module/kvm_pvm").exists()


def _network_xml() -> str:
    return f"""<network>
  <name>{NETWORK_NAME}</name>
  <bridge name='{GUEST_NET_BRIDGE}' stp='off' delay='0'/>
  <ip address='{GUEST_NET_ADDR}' netmask='255.255.255.0'>
    <dhcp><range start='10.213.78.10' end='10.213.78.250'/></dhcp>
  </ip>
</network>"""


def _pool_xml() -> str:
    return f"""<pool type='dir'>
  <name>{POOL_NAME}</name>
  <target><path>{IMAGE_DIR}</path></target>
</pool>"""


def ensure_network_and_pool(uri: str) -> None:
    """Define, start and autostart the ``vmctl-test`` network and pool on ``uri`` (idempotent)."""
    conn = libvirt.open(uri)
    try:
        try:
            net = conn.networkLookupByName(NETWORK_NAME)
        except libvirt.libvirtError:
            net = conn.networkDefineXML(_network_xml())
        if not net.isActive():
            net.create()
        net.setAutostart(True)
    finally:
        conn.close()
    ensure_pool(uri, autostart=True)


def ensure_pool(uri: str, *, autostart: bool = False) -> None:
    """Define (when missing) and start the ``vmctl-test`` pool on ``uri``; no network."""
    IMAGE_DIR.mkdir(parents=True, exist_ok=True)
    conn = libvirt.open(uri)
    try:
        try:
            pool = conn.storagePoolLookupByName(POOL_NAME)
        except libvirt.libvirtError:
            pool = conn.storagePoolDefineXML(_pool_xml(), 0)
        if not pool.isActive():
            pool.create(0)
        if autostart:
            pool.setAutostart(True)
        pool.refresh(0)
    finally:
        conn.close()


def _quiesce_host(uri: str) -> list[str]:
    """Destroy running domains and stop the test network (kills its dnsmasq) on ``uri``.

    Only for hosts this harness started: QEMU and dnsmasq outlive libvirtd otherwise.
    The network and pool stay defined (autostart) for the next start.
    """
    names: list[str] = []
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return names
    try:
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            with contextlib.suppress(libvirt.libvirtError):
                names.append(dom.name())
                dom.destroy()
        for net in conn.listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_ACTIVE):
            with contextlib.suppress(libvirt.libvirtError):
                net.destroy()
    finally:
        conn.close()
    return names


# --------------------------------------------------------------------------- host 1


def _start_host1(started: list[Proc], timings: dict[str, float]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    foreign = [p for p in _pids_of("libvirtd") if not any(s.pid == p for s in started)]
    if foreign:
        cli = {p.pid for p in _read_state()[0] if p.alive()}
        who = (
            "started by `python -m tests.hosts.kvm start`"
            if set(foreign) <= cli
            else "this harness did not start"
        )
        if _answers(URI):
            print(
                f"kvm hosts: reusing a libvirtd {who} (pid {', '.join(map(str, foreign))}); "
                "it is left running",
                file=sys.stderr,
            )
            return
        raise HostError(
            f"a libvirtd {who} is running (pid {foreign}) but {URI} does not answer; stop it first"
        )
    if not _pids_of("virtlogd") or not Path("/run/libvirt/virtlogd-sock").exists():
        vlog, _ = _spawn("virtlogd", ["virtlogd"], STATE_DIR / "virtlogd.log")
        started.append(vlog)
        deadline = time.monotonic() + 10
        while not Path("/run/libvirt/virtlogd-sock").exists():
            if time.monotonic() > deadline or not vlog.alive():
                raise HostError("virtlogd did not create /run/libvirt/virtlogd-sock")
            time.sleep(0.05)
    log = STATE_DIR / "libvirtd.log"
    t0 = time.monotonic()
    proc, _ = _spawn("libvirtd", ["libvirtd"], log)
    started.append(proc)
    _wait_answers(URI, proc, START_TIMEOUT, log)
    timings["libvirtd_start_s"] = round(time.monotonic() - t0, 2)


# --------------------------------------------------------------------------- host 2 (and 3)


@dataclasses.dataclass(frozen=True)
class NsHost:
    """A libvirtd in a network namespace of its own, reached over a veth pair."""

    netns: str
    veth_host: str  # stays in the root namespace
    veth_ns: str  # moved into netns
    root_addr: str  # the root namespace's end (host 1 as the namespace sees it)
    addr: str  # the namespace's end: libvirtd listens here
    dir: Path  # its private /etc, /var/lib, ... libvirt
    host_uuid: str
    role: str  # the Proc role of its libvirtd ("virtlogdN" for its virtlogd)
    #: Disk leases: ``lock_manager = "lockd"`` with a virtlockd of its own ("virtlockdN"),
    #: its leases held in this directory (an indirect lockspace, shared by the hosts that
    #: share disks). None: no lock manager.
    lockspace: Path | None = None

    @property
    def uri(self) -> str:
        return f"qemu+tcp://{self.addr}/system"


HOST2 = NsHost(
    NETNS, VETH_HOST, VETH_NS, HOST1_ADDR, HOST2_ADDR, HOST2_DIR, HOST2_UUID, "libvirtd2"
)
#: A third host, started and killed by a test of its own (tests/kvm/test_kvm_site_recovery.py):
#: never started by ``start``.
HOST3 = NsHost(
    "vmctl-kvm3",
    "vmctl-h3a",
    "vmctl-h3b",
    "10.213.77.5",
    "10.213.77.6",
    BASE_DIR / "host3",
    str(uuid.uuid5(uuid.NAMESPACE_DNS, "host3.vmctl-test.invalid")),
    "libvirtd3",
)
#: Where the lease hosts below hold their disk leases (their shared lockspace).
LEASES_DIR = BASE_DIR / "leases"
#: Two hosts with disk leases (virtlockd), started and killed by a test of their own
#: (tests/kvm/test_kvm_site_leases.py): never started by ``start``.
HOST4 = NsHost(
    "vmctl-kvm4",
    "vmctl-h4a",
    "vmctl-h4b",
    "10.213.77.9",
    "10.213.77.10",
    BASE_DIR / "host4",
    str(uuid.uuid5(uuid.NAMESPACE_DNS, "host4.vmctl-test.invalid")),
    "libvirtd4",
    lockspace=LEASES_DIR,
)
HOST5 = NsHost(
    "vmctl-kvm5",
    "vmctl-h5a",
    "vmctl-h5b",
    "10.213.77.13",
    "10.213.77.14",
    BASE_DIR / "host5",
    str(uuid.uuid5(uuid.NAMESPACE_DNS, "host5.vmctl-test.invalid")),
    "libvirtd5",
    lockspace=LEASES_DIR,
)


#: An emulator for ``<emulator>``: QEMU with its own image locking off (see
#: :func:`qemu_without_image_locks`).
QEMU_NO_IMAGE_LOCKS = BASE_DIR / "bin" / "qemu-no-image-locks"
_QEMU_NO_IMAGE_LOCKS = """#!/usr/bin/python3
# Written by tests/hosts/kvm.py: qemu-system-x86_64 with "locking": "off" on every file
# -blockdev (QEMU's own image locks), for tests of libvirt's disk leases on one machine.
import json, os, sys
args = sys.argv[1:]
for i in range(len(args) - 1):
    if args[i] == "-blockdev" and args[i + 1].startswith("{"):
        node = json.loads(args[i + 1])
        if node.get("driver") == "file":
            node["locking"] = "off"
            args[i + 1] = json.dumps(node)
os.execv("/usr/bin/qemu-system-x86_64", ["qemu-system-x86_64", *args])
"""


def qemu_without_image_locks() -> Path:
    """Write (once) and return :data:`QEMU_NO_IMAGE_LOCKS`.

    QEMU locks the images it opens (OFD locks: on one machine they bind every QEMU of every
    test host) and libvirt takes a lock manager's leases only as the CPUs start, after QEMU
    opened the disks; so on one machine a second start on a disk in use is refused by QEMU
    before virtlockd is asked. A domain run by this emulator shows what the leases alone do.
    """
    target = QEMU_NO_IMAGE_LOCKS
    if not target.exists() or target.read_text() != _QEMU_NO_IMAGE_LOCKS:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.parent.chmod(0o755)
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        tmp.write_text(_QEMU_NO_IMAGE_LOCKS)
        tmp.chmod(0o755)
        tmp.replace(target)
    return target


def _host2_script(h: NsHost = HOST2) -> str:
    """Shell run by ``ip netns exec`` (already a private mount namespace): mounts, daemons."""
    binds = {
        "etc": "/etc/libvirt",
        "lib": "/var/lib/libvirt",
        "cache": "/var/cache/libvirt",
        "log": "/var/log/libvirt",
    }
    lines = [
        "set -e",
        # a UTS namespace of its own (unshare --uts): libvirt reports the host's name, and
        # VMInfo.host / vmctl's hosts() would not tell it from host 1 under the same one
        f"hostname {h.netns}",
        "mount --make-rprivate /",
        "mount -t tmpfs -o mode=0755 tmpfs /run",
        "mkdir -p /run/libvirt /run/lock",
    ]
    for src, dst in binds.items():
        lines.append(f"mount --rbind {h.dir / src} {dst}")
    lines += [
        f"mount --bind {h.dir / 'hosts'} /etc/hosts",
        f"virtlogd > {h.dir / 'virtlogd.log'} 2>&1 &",
        f"echo $! > {h.dir / 'virtlogd.pid'}",
    ]
    if h.lockspace is not None:
        # its own virtlockd: the lockd plugin of this libvirtd connects to
        # /run/libvirt/virtlockd-sock, and /run is this namespace's own tmpfs
        lines += [
            f"virtlockd > {h.dir / 'virtlockd.log'} 2>&1 &",
            f"echo $! > {h.dir / 'virtlockd.pid'}",
            "i=0; while [ ! -S /run/libvirt/virtlockd-sock ] && [ $i -lt 600 ]; do",
            "  sleep 0.1; i=$((i + 1)); done",
        ]
    lines.append("exec libvirtd --listen")
    return "\n".join(lines) + "\n"


def _prepare_host2_dirs(h: NsHost = HOST2) -> None:
    for sub in ("etc", "lib", "cache", "log"):
        (h.dir / sub).mkdir(parents=True, exist_ok=True)
    etc = h.dir / "etc"
    if not (etc / "qemu.conf.orig").exists():
        # Start from the packaged configuration (qemu.conf, network/ defaults, ...).
        shutil.copytree("/etc/libvirt", etc, dirs_exist_ok=True, symlinks=True)
        shutil.copy2("/etc/libvirt/qemu.conf", etc / "qemu.conf.orig")
        # Networks/pools autostarted by host 1 are not host 2's business.
        for p in (etc / "qemu" / "networks" / "autostart", etc / "storage" / "autostart"):
            shutil.rmtree(p, ignore_errors=True)
        # Nor are the domains host 1 had defined when its configuration was copied.
        for p in (etc / "qemu").glob("*.xml"):
            p.unlink()
    for sub in ("qemu", "network", "dnsmasq", "images", "boot", "sanlock", "swtpm"):
        (h.dir / "lib" / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("qemu",):
        (h.dir / "log" / sub).mkdir(parents=True, exist_ok=True)
    (etc / "libvirtd.conf").write_text(
        "# written by tests/hosts/kvm.py: a test host in the network namespace "
        f"{h.netns}\n"
        "listen_tls = 0\n"
        "listen_tcp = 1\n"
        f'listen_addr = "{h.addr}"\n'
        'auth_tcp = "none"\n'
        f'host_uuid = "{h.host_uuid}"\n'
        'log_outputs = "3:stderr"\n'
    )
    qemu_conf = (etc / "qemu.conf.orig").read_text()
    leases = ""
    if h.lockspace is not None:
        leases = '# tests/hosts/kvm.py: disk leases held by virtlockd\nlock_manager = "lockd"\n'
        h.lockspace.mkdir(parents=True, exist_ok=True)
        (etc / "qemu-lockd.conf").write_text(
            "# written by tests/hosts/kvm.py: a lease on every disk, held in a lockspace\n"
            "# directory the hosts sharing the disks share (indirect: files named by the\n"
            "# SHA-256 of the disk path)\n"
            "auto_disk_leases = 1\n"
            "require_lease_for_disks = 1\n"
            f'file_lockspace_dir = "{h.lockspace}"\n'
        )
    (etc / "qemu.conf").write_text(
        qemu_conf + "\n# tests/hosts/kvm.py: incoming migrations connect here\n"
        f'migration_host = "{h.addr}"\n' + leases
    )
    # Inside the namespace the machine's host name must resolve to host 1's veth address:
    # host 1 advertises `tcp://<hostname>:<port>` as the URI for incoming migrations.
    hostname = os.uname().nodename
    (h.dir / "hosts").write_text(
        f"127.0.0.1 localhost\n{h.root_addr} {hostname}\n{h.addr} {h.netns}\n"
    )


def _setup_netns(h: NsHost = HOST2) -> None:
    if h.netns not in _run(["ip", "netns", "list"]).split():
        _run(["ip", "netns", "add", h.netns])
    links = _run(["ip", "-o", "link", "show"])
    if f" {h.veth_host}@" not in links and f" {h.veth_host}:" not in links:
        _run(["ip", "link", "add", h.veth_host, "type", "veth", "peer", "name", h.veth_ns])
        _run(["ip", "link", "set", h.veth_ns, "netns", h.netns])
    addrs = _run(["ip", "-o", "addr", "show", "dev", h.veth_host])
    if f"{h.root_addr}/" not in addrs:
        _run(["ip", "addr", "add", f"{h.root_addr}/{VETH_PREFIX}", "dev", h.veth_host])
    _run(["ip", "link", "set", h.veth_host, "up"])
    nsx = ["ip", "netns", "exec", h.netns]
    addrs = _run([*nsx, "ip", "-o", "addr", "show", "dev", h.veth_ns])
    if f"{h.addr}/" not in addrs:
        _run([*nsx, "ip", "addr", "add", f"{h.addr}/{VETH_PREFIX}", "dev", h.veth_ns])
    _run([*nsx, "ip", "link", "set", h.veth_ns, "up"])
    _run([*nsx, "ip", "link", "set", "lo", "up"])


def _netns_pids(netns: str, exe_name: str | None = None) -> list[int]:
    """The processes in the network namespace ``netns``, or those whose executable is
    ``exe_name``."""
    try:
        ns = os.stat(f"/run/netns/{netns}").st_ino
    except OSError:
        return []
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.stat(d / "ns" / "net").st_ino != ns:
                continue
            if exe_name and Path(os.readlink(d / "exe")).name != exe_name:
                continue
            out.append(int(d.name))
    return out


#: What a libvirtd of this harness starts in its namespace (and may leave behind there).
_NS_DAEMONS = {"libvirtd", "virtlogd", "virtlockd", "dnsmasq", "qemu-system-x86_64"}


def _clear_stale_netns(h: NsHost) -> None:
    """Remove ``h``'s namespace when an earlier run left it behind (its libvirtd killed with
    the session that started it, so nothing answers at ``h.uri``).

    That libvirtd's /run was a tmpfs of its own mount namespace and went with it, but the
    network namespace outlives it with the guest network's bridge in it: a new libvirtd
    there finds its network inactive and cannot start it ("Network is already in use by
    interface vmctltest0"). What that run left running in the namespace (dnsmasq, QEMU)
    only this harness ever starts there; anything else is not ours, and we stop.
    """
    if h.netns not in _run(["ip", "netns", "list"], check=False).split():
        return
    pids = _netns_pids(h.netns)
    foreign = []
    for pid in pids:
        with contextlib.suppress(OSError):
            exe = Path(os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")).name
            if exe not in _NS_DAEMONS:
                foreign.append(f"{pid} ({exe})")
    if foreign:
        raise HostError(
            f"the namespace {h.netns} left by an earlier run holds processes this harness "
            f"does not start there: {', '.join(foreign)}; end them or `ip netns del {h.netns}`"
        )
    if pids:
        print(
            f"kvm hosts: ending what an earlier run left in {h.netns}: pids "
            f"{', '.join(map(str, pids))}",
            file=sys.stderr,
        )
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _netns_pids(h.netns) and time.monotonic() < deadline:
        time.sleep(0.05)
    _teardown_netns(h)


def _teardown_netns(h: NsHost = HOST2) -> None:
    with contextlib.suppress(HostError):
        _run(["ip", "link", "del", h.veth_host])
    if h.netns in _run(["ip", "netns", "list"], check=False).split():
        _run(["ip", "netns", "del", h.netns], check=False)


def _start_host2(started: list[Proc], timings: dict[str, float], h: NsHost = HOST2) -> None:
    if _answers(h.uri):
        print(f"kvm hosts: reusing the host already answering at {h.uri}", file=sys.stderr)
        return
    _prepare_host2_dirs(h)
    _clear_stale_netns(h)
    _setup_netns(h)
    script = h.dir / "start.sh"
    script.write_text(_host2_script(h))
    (h.dir / "virtlogd.pid").unlink(missing_ok=True)
    (h.dir / "virtlockd.pid").unlink(missing_ok=True)
    log = STATE_DIR / f"{h.role}.log"
    t0 = time.monotonic()
    proc, _ = _spawn(
        h.role, ["ip", "netns", "exec", h.netns, "unshare", "--uts", "sh", str(script)], log
    )
    started.append(proc)
    pidfile = h.dir / "virtlogd.pid"
    deadline = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text().strip()):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if pidfile.exists() and pidfile.read_text().strip():
        started.append(
            Proc.of(h.role.replace("libvirtd", "virtlogd"), int(pidfile.read_text().strip()))
        )
    lockd_pidfile = h.dir / "virtlockd.pid"
    if h.lockspace is not None:
        deadline = time.monotonic() + START_TIMEOUT
        while not (lockd_pidfile.exists() and lockd_pidfile.read_text().strip()):
            if time.monotonic() > deadline:
                raise HostError(f"{h.netns}: virtlockd did not start (see {log})")
            time.sleep(0.05)
        started.append(
            Proc.of(h.role.replace("libvirtd", "virtlockd"), int(lockd_pidfile.read_text()))
        )
    _wait_answers(h.uri, proc, START_TIMEOUT, log)
    timings[f"{h.role}_start_s"] = round(time.monotonic() - t0, 2)


def _check_migration_paths(libvirtd2: Proc | None) -> None:
    """Host 1 reaches host 2 (libvirt answered over tcp); check the way back too.

    Incoming migrations into host 1 connect to ``tcp://<hostname>:<port>``: inside host 2's
    namespaces that name must resolve to host 1's veth address and be reachable.
    """
    if libvirtd2 is None:
        return
    hostname = os.uname().nodename
    with socket.create_server((HOST1_ADDR, 0)) as srv:
        srv.settimeout(10)
        port = srv.getsockname()[1]
        probe = (
            "import socket,sys; a=socket.gethostbyname(sys.argv[1]); "
            "socket.create_connection((a, int(sys.argv[2])), timeout=5).close(); print(a)"
        )
        child = subprocess.Popen(
            [
                "nsenter",
                "-t",
                str(libvirtd2.pid),
                "-m",
                "-n",
                sys.executable,
                "-c",
                probe,
                hostname,
                str(port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            conn, _ = srv.accept()
            conn.close()
        except OSError as exc:
            child.kill()
            raise HostError(f"host 2 cannot connect back to {HOST1_ADDR}:{port}: {exc}") from exc
        out, err = child.communicate(timeout=10)
    if child.returncode != 0 or out.strip() != HOST1_ADDR:
        raise HostError(
            f"inside host 2, {hostname!r} resolves to {out.strip()!r} (want {HOST1_ADDR}): {err}"
        )


# --------------------------------------------------------------------------- public API


@dataclasses.dataclass
class KvmHosts:
    """What ``running_hosts`` gives you. URIs are libvirt connection URIs."""

    uri: str
    other_uri: str | None
    network: str
    pool: str
    image_dir: Path
    kvm_available: bool
    kvm_is_pvm: bool
    migrate_uri: str  # pass as VIR_MIGRATE_PARAM_URI / migrate(uri=) when migrating *to* host 1
    other_migrate_uri: str | None  # ... when migrating *to* host 2
    processes: list[Proc] = dataclasses.field(default_factory=list)  # what *we* started
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def migrate_params(self, *, to_other: bool) -> dict[str, str]:
        """virDomainMigrate3 params for a migration to host 2 (``to_other``) or to host 1.

        Sets the migration URI and the address the destination QEMU listens on, so that
        incoming migration listens on the private veth address only (without it, host 1's
        QEMU listens on all addresses and is reached via the host name).
        """
        addr = HOST2_ADDR if to_other else HOST1_ADDR
        return {
            libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{addr}",
            libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: addr,
        }

    def kit_options(self, guest: TinyGuest | None = None) -> dict[str, str]:
        """What the conformance kit is told on these hosts (``VMCTL_KIT_OPTIONS``): the
        network and pool both hosts have (migration needs them on both, and the driver
        finds one per host: on a machine whose ``default`` network is active it would pick
        that one, which host 2 lacks), and the tiny guest to boot, which libvirt cannot
        find."""
        options = {"network": self.network, "pool": self.pool}
        if guest is not None:
            options.update(
                boot_kernel=str(guest.kernel),
                boot_initrd=str(guest.initrd),
                boot_cmdline=guest.cmdline,
            )
        return options

    def env(self, guest: TinyGuest | None = None) -> dict[str, str]:
        """The variables of ``.hosts/kvm.env``: ``vmctl conformance "$VMCTL_URI"
        --other-uri "$VMCTL_OTHER_URI"`` runs the kit as it is."""
        kit = kit_words(self.kit_options(guest))
        env = {"VMCTL_URI": self.uri}
        if self.other_uri:
            env["VMCTL_OTHER_URI"] = self.other_uri
        env["VMCTL_KIT_OPTIONS"] = kit
        env["VMCTL_KVM_KIT_OPTIONS"] = kit
        return env


def start_hosts(*, second_host: bool = True) -> KvmHosts:
    """Start (or reuse) the hosts and return them; call :func:`stop_hosts` with the result."""
    if os.geteuid() != 0:
        raise HostError("the KVM test hosts need root")
    for exe in ("libvirtd", "virtlogd", "qemu-system-x86_64"):
        if shutil.which(exe) is None:
            raise HostError(f"{exe} not found: run tests/hosts/install-kvm.sh")
    fix_dev_kvm_permissions()
    started: list[Proc] = []
    timings: dict[str, float] = {}
    try:
        _start_host1(started, timings)
        ensure_network_and_pool(URI)
        if second_host:
            _start_host2(started, timings)
            ensure_network_and_pool(OTHER_URI)
            _check_migration_paths(next((p for p in started if p.role == "libvirtd2"), None))
    except BaseException:
        _stop(started, second_host=second_host)
        raise
    for d in (GUEST_DIR, CONSOLE_DIR):
        d.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    _warm_capabilities([URI, OTHER_URI] if second_host else [URI])
    timings["capabilities_s"] = round(time.monotonic() - t0, 2)
    return KvmHosts(
        uri=URI,
        other_uri=OTHER_URI if second_host else None,
        network=NETWORK_NAME,
        pool=POOL_NAME,
        image_dir=IMAGE_DIR,
        kvm_available=kvm_usable(),
        kvm_is_pvm=kvm_is_pvm(),
        migrate_uri=f"tcp://{HOST1_ADDR}",
        other_migrate_uri=f"tcp://{HOST2_ADDR}" if second_host else None,
        processes=started,
        timings=timings,
    )


def _warm_capabilities(uris: Sequence[str]) -> None:
    """Make each daemon probe QEMU now, in parallel (~8 s the first time, then cached)."""

    def probe(uri: str) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            conn = libvirt.open(uri)
            try:
                conn.getCapabilities()
            finally:
                conn.close()

    threads = [threading.Thread(target=probe, args=(u,), daemon=True) for u in uris]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=START_TIMEOUT)


def _stop(procs: Sequence[Proc], *, second_host: bool) -> None:
    roles = {p.role for p in procs}
    for role, uri in (("libvirtd2", OTHER_URI), ("libvirtd", URI)):
        if role in roles:
            destroyed = _quiesce_host(uri)
            if destroyed:
                print(f"kvm hosts: destroyed on {uri}: {', '.join(destroyed)}", file=sys.stderr)
    order = ["libvirtd2", "virtlogd2", "libvirtd", "virtlogd"]
    for role in order:
        for p in procs:
            if p.role == role:
                p.stop()
    if "libvirtd2" in roles:
        _teardown_netns()


def stop_hosts(hosts: KvmHosts) -> None:
    """Stop exactly the processes ``start_hosts`` started (by PID) and remove the netns.

    Running domains on a host we started are destroyed first (QEMU outlives libvirtd).
    """
    _stop(hosts.processes, second_host=hosts.other_uri is not None)
    hosts.processes.clear()


@contextlib.contextmanager
def running_hosts(*, second_host: bool = True) -> Iterator[KvmHosts]:
    """Context manager: hosts up inside, stopped (only what it started) on exit."""
    hosts = start_hosts(second_host=second_host)
    try:
        yield hosts
    finally:
        stop_hosts(hosts)


@dataclasses.dataclass
class ExtraHost:
    """A third libvirtd (``HOST3``) that a test starts, kills (a host failing) and removes:
    :func:`start_extra_host`. Never one of the session's shared hosts."""

    uri: str
    host: NsHost
    processes: list[Proc]

    def _ns_pids(self, exe_name: str | None = None) -> list[int]:
        """The processes in this host's network namespace (all of them were started by
        its libvirtd: QEMU, dnsmasq...), or those whose executable is ``exe_name``."""
        return _netns_pids(self.host.netns, exe_name)

    def qemu_pids(self) -> list[int]:
        """The QEMU processes of this host (its running domains)."""
        return self._ns_pids("qemu-system-x86_64")

    def daemon(self, role: str) -> Proc:
        """The process of ``role`` (e.g. "libvirtd4", "virtlockd4") this host started."""
        found = [p for p in self.processes if p.role == role]
        if not found:
            raise HostError(f"{self.host.netns}: no {role} was started")
        return found[0]

    def cut_management(self) -> None:
        """The host goes half dead (a cut management network): SIGKILL its libvirtd, by
        the PID started, and wait until it is gone; its QEMUs, virtlogd and virtlockd (and
        the leases it holds for them) keep running."""
        libvirtd = self.daemon(self.host.role)
        if libvirtd.alive():
            os.kill(libvirtd.pid, signal.SIGKILL)
        deadline = time.monotonic() + STOP_TIMEOUT
        while libvirtd.alive() and time.monotonic() < deadline:
            _reap(libvirtd.pid)
            time.sleep(0.05)
        if libvirtd.alive():
            raise HostError(f"{self.host.netns}: libvirtd (pid {libvirtd.pid}) did not die")

    def kill(self) -> None:
        """The host fails (a power cut): SIGKILL its libvirtd and virtlogd (by the PIDs
        started) and every process in its network namespace (its QEMUs, dnsmasq), then
        remove the namespace (its bridge and veth go with it)."""
        for p in self.processes:
            if p.alive():
                os.kill(p.pid, signal.SIGKILL)
                _reap(p.pid)
        for pid in self._ns_pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + STOP_TIMEOUT
        while (self._ns_pids() or any(p.alive() for p in self.processes)) and (
            time.monotonic() < deadline
        ):
            for p in self.processes:
                _reap(p.pid)
            time.sleep(0.05)
        _teardown_netns(self.host)

    def stop(self) -> None:
        """Kill what is left and remove the namespace and its veth."""
        self.kill()


def start_extra_host(h: NsHost = HOST3, *, keep_domains: bool = False) -> ExtraHost:
    """Start a libvirtd of its own in ``h``'s network namespace, with no domains defined
    (those of an earlier run are removed first; ``keep_domains``: kept, as a host that
    reboots after a failure finds its persistent domains) and the QEMU capability cache of
    host 2 when it has none (saves the ~8 s probe). Only pools and networks its caller
    defines. ``stop()`` it when done."""
    if os.geteuid() != 0:
        raise HostError("the KVM test hosts need root")
    if _answers(h.uri):
        raise HostError(f"{h.uri} answers already: not ours to start")
    _prepare_host2_dirs(h)
    for p in [] if keep_domains else (h.dir / "etc" / "qemu").glob("*.xml"):
        p.unlink()  # the domains an earlier (killed) run left defined
    cache = h.dir / "cache" / "qemu"
    if not cache.exists() and (HOST2_DIR / "cache" / "qemu").exists():
        shutil.copytree(HOST2_DIR / "cache" / "qemu", cache, symlinks=True)
    started: list[Proc] = []
    try:
        _start_host2(started, {}, h)
    except BaseException:
        ExtraHost(h.uri, h, started).stop()
        raise
    return ExtraHost(h.uri, h, started)


# --------------------------------------------------------------------------- tiny guest

GUEST_BUILDER_VERSION = "5"  # bump when the initramfs layout / init script changes
GUEST_MODULES = (
    "virtio_pci",
    "virtio_net",
    "virtio_console",
    "virtio_balloon",
    "virtio_blk",
    "button",
    "evdev",
)
GUEST_CMDLINE = "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off"


@dataclasses.dataclass(frozen=True)
class TinyGuest:
    """A bootable kernel + initramfs; paths are readable by QEMU on both hosts."""

    kernel: Path
    initrd: Path
    cmdline: str
    versions: dict[str, str]
    has_agent: bool
    ready_marker: str = READY_MARKER


_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mkdir -p /proc /sys /dev /run /tmp /var/run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /etc/modules.order); do insmod /lib/modules/$m.ko 2>/dev/null; done
hostname vmctl-tiny
ip link set lo up
# ACPI power button -> poweroff -f (any event from the "Power Button" input device).
for ev in /sys/class/input/event*; do
    if grep -q "Power Button" "$ev/device/name" 2>/dev/null; then
        dev=/dev/input/$(basename $ev)
        (while :; do
            if [ -c $dev ] && [ -n "$(dd if=$dev bs=24 count=1 2>/dev/null | head -c 1)" ]; then
                echo "vmctl-tiny: power button" > /dev/ttyS0; poweroff -f
            fi
            sleep 0.5
        done) &
    fi
done
# qemu-ga on the virtio-serial port named org.qemu.guest_agent.0, if both are present.
if [ -x /usr/sbin/qemu-ga ]; then
    for p in /sys/class/virtio-ports/*; do
        if [ "$(cat $p/name 2>/dev/null)" = "org.qemu.guest_agent.0" ]; then
            /usr/sbin/qemu-ga -d -m virtio-serial -p /dev/$(basename $p) \
                -f /run/qemu-ga.pid -t /run
        fi
    done
fi
n=0
while ! ip link show eth0 >/dev/null 2>&1 && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
udhcpc -i eth0 -s /etc/udhcpc.script -t 1000 -T 1 -b -x hostname:vmctl-tiny >/dev/null 2>&1
while true; do sleep 3600; done
"""

_UDHCPC_SCRIPT = r"""#!/bin/sh
case "$1" in
    deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        [ -n "$router" ] && ip route add default via ${router%% *} dev "$interface"
        if [ "$1" = bound ]; then
            echo "@MARKER@ ip=$ip uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0
        fi ;;
esac
exit 0
""".replace("@MARKER@", READY_MARKER)

# qemu-ga runs `/sbin/shutdown -r|-P|-H +0 "hypervisor initiated ..."`: -r reboots.
_SHUTDOWN = (
    '#!/bin/sh\necho "vmctl-tiny: shutdown $*" > /dev/ttyS0\n'
    'case " $* " in *" -r "*) reboot -f ;; *) poweroff -f ;; esac\n'
)


def _apt_candidate(pkg: str) -> str:
    out = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", pkg],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in out.stdout.splitlines():
        if line.startswith("Version: "):
            return line.split(": ", 1)[1].strip()
    raise GuestBuildError(
        f"apt knows no package {pkg!r}: run `apt-get update` (tests/hosts/install-kvm.sh)"
    )


def _kernel_package() -> str:
    out = subprocess.run(
        ["apt-cache", "depends", "linux-image-amd64"],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in out.stdout.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-") and "<" not in line:
            return line.split(": ", 1)[1].strip()
    raise GuestBuildError("cannot resolve linux-image-amd64: run `apt-get update`")


def _guest_versions() -> dict[str, str]:
    pkgs = [_kernel_package(), "busybox-static", "qemu-guest-agent"]
    return {p: _apt_candidate(p) for p in pkgs}


def _module_deps(ko: Path) -> list[str]:
    data = ko.read_bytes()
    i = data.find(b"\0depends=")
    if i < 0:
        return []
    end = data.index(b"\0", i + 1)
    value = data[i + len(b"\0depends=") : end].decode()
    return [d for d in value.split(",") if d]


def _module_order(moddir: Path, wanted: Sequence[str]) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for ko in moddir.rglob("*.ko"):
        index.setdefault(ko.stem.replace("-", "_"), ko)
    order: dict[str, Path] = {}

    def visit(name: str) -> None:
        if name in order:
            return
        ko = index.get(name)
        if ko is None:
            return  # built in
        for dep in _module_deps(ko):
            visit(dep)
        order[name] = ko

    for name in wanted:
        visit(name)
    return order


def _shared_libs(binary: Path) -> list[Path] | None:
    """Host libraries ``binary`` needs (via ldd); None if any is missing."""
    res = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        return None
    libs: list[Path] = []
    for line in res.stdout.splitlines():
        line = line.strip()
        if "not found" in line:
            return None
        if "=>" in line:
            target = line.split("=>", 1)[1].split("(")[0].strip()
            if target:
                libs.append(Path(target))
        elif line.startswith("/"):
            libs.append(Path(line.split("(")[0].strip()))
    return libs


def _cpio_newc(root: Path) -> bytes:
    """An uncompressed newc cpio archive of ``root`` (dirs, files, symlinks), owned by root."""
    out = bytearray()
    ino = 1

    def entry(name: str, mode: int, data: bytes, nlink: int = 1) -> None:
        nonlocal ino
        namez = name.encode() + b"\0"
        hdr = "070701" + "".join(
            f"{v:08x}" for v in (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(namez), 0)
        )
        ino += 1
        out.extend(hdr.encode())
        out.extend(namez)
        out.extend(b"\0" * ((-(110 + len(namez))) % 4))
        out.extend(data)
        out.extend(b"\0" * ((-len(data)) % 4))

    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        rel = base.relative_to(root).as_posix()
        if rel != ".":
            entry(rel, 0o040755, b"", 2)
        for name in sorted(filenames) + [d for d in dirnames if (base / d).is_symlink()]:
            p = base / name
            arc = (p.relative_to(root)).as_posix()
            st = p.lstat()
            if p.is_symlink():
                entry(arc, 0o120777, os.readlink(p).encode())
            else:
                entry(arc, 0o100000 | (st.st_mode & 0o7777), p.read_bytes())
    entry("TRAILER!!!", 0, b"")
    return bytes(out)


def _build_guest(dest: Path, versions: dict[str, str]) -> None:
    kernel_pkg = next(p for p in versions if p.startswith("linux-image-"))
    with tempfile.TemporaryDirectory(prefix="vmctl-guest-") as tmp_s:
        tmp = Path(tmp_s)
        dl = tmp / "debs"
        dl.mkdir()
        os.chmod(dl, 0o777)  # lets apt's _apt user write there (no "unsandboxed" warning)
        res = subprocess.run(
            ["apt-get", "download", *[f"{p}={v}" for p, v in versions.items()]],
            cwd=dl,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if res.returncode != 0:
            raise GuestBuildError(f"apt-get download failed: {res.stderr.strip()[-1000:]}")
        x = tmp / "x"
        for deb in dl.glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(x)], check=True)
        root = tmp / "root"
        for d in (
            "bin",
            "sbin",
            "etc",
            "proc",
            "sys",
            "dev",
            "run",
            "tmp",
            "lib/modules",
            "usr/sbin",
            "var",
        ):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(x / "bin" / "busybox", root / "bin" / "busybox")
        (root / "bin" / "sh").symlink_to("busybox")
        (root / "sbin" / "shutdown").write_text(_SHUTDOWN)
        (root / "sbin" / "shutdown").chmod(0o755)
        mod_root = next((x / "lib" / "modules").iterdir())
        order = _module_order(mod_root, GUEST_MODULES)
        for name, ko in order.items():
            shutil.copy2(ko, root / "lib" / "modules" / f"{name}.ko")
        (root / "etc" / "modules.order").write_text("\n".join(order) + "\n")
        (root / "init").write_text(_INIT)
        (root / "init").chmod(0o755)
        (root / "etc" / "udhcpc.script").write_text(_UDHCPC_SCRIPT)
        (root / "etc" / "udhcpc.script").chmod(0o755)
        has_agent = False
        qga = x / "usr" / "sbin" / "qemu-ga"
        libs = _shared_libs(qga) if qga.exists() else None
        if qga.exists() and libs is not None:
            shutil.copy2(qga, root / "usr" / "sbin" / "qemu-ga")
            for lib in libs:
                target = root / str(lib).lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(lib.resolve(), target)
            lib64 = root / "lib64"
            if (root / "usr" / "lib64").exists() and not lib64.exists():
                lib64.symlink_to("usr/lib64")
            has_agent = True
        kernel = next((x / "boot").glob("vmlinuz-*"))
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(kernel, dest / "vmlinuz")
        with gzip.open(dest / "initrd.gz", "wb", compresslevel=6) as gz:
            gz.write(_cpio_newc(root))
        (dest / "guest.json").write_text(
            json.dumps(
                {
                    "versions": versions,
                    "kernel_package": kernel_pkg,
                    "has_agent": has_agent,
                    "modules": list(order),
                    "builder": GUEST_BUILDER_VERSION,
                },
                indent=2,
            )
        )


def tiny_guest() -> TinyGuest:
    """Build (once; cached under .cache/guest/<key>/) and return the tiny guest.

    The returned kernel/initrd are copies under /var/lib/vmctl-test/guest/ so QEMU (user
    libvirt-qemu) on either host can read them without relabelling files in the repository.
    """
    versions = _guest_versions()
    key_src = json.dumps([GUEST_BUILDER_VERSION, sorted(versions.items())])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    cache = GUEST_CACHE_DIR / key
    GUEST_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(GUEST_CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time (parallel test sessions)
        if not (cache / "guest.json").exists():
            tmp_dest = GUEST_CACHE_DIR / f".{key}.tmp{os.getpid()}"
            shutil.rmtree(tmp_dest, ignore_errors=True)
            _build_guest(tmp_dest, versions)
            shutil.rmtree(cache, ignore_errors=True)
            tmp_dest.rename(cache)
    meta = json.loads((cache / "guest.json").read_text())
    GUEST_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(BASE_DIR, 0o755)
    os.chmod(GUEST_DIR, 0o755)
    out: dict[str, Path] = {}
    for name in ("vmlinuz", "initrd.gz"):
        target = GUEST_DIR / f"{key}-{name}"
        if not target.exists():
            shutil.copyfile(cache / name, target)
            target.chmod(0o644)
        out[name] = target
    return TinyGuest(
        kernel=out["vmlinuz"],
        initrd=out["initrd.gz"],
        cmdline=GUEST_CMDLINE,
        versions=dict(meta["versions"]),
        has_agent=bool(meta["has_agent"]),
    )


def console_log_path(name: str) -> Path:
    """Where ``tiny_guest_xml`` makes virtlogd write the serial console of domain ``name``."""
    return CONSOLE_DIR / f"{name}.log"


def tiny_guest_xml(
    name: str,
    guest: TinyGuest,
    *,
    network: str = NETWORK_NAME,
    memory_mib: int = 192,
    vcpus: int = 1,
    agent: bool = True,
    mac: str | None = None,
    extra_devices: str = "",
) -> str:
    """Domain XML booting the tiny guest under TCG (``type='qemu'``), no <cpu> element.

    The serial console is logged to :func:`console_log_path` (``name``); wait there for
    ``guest.ready_marker`` (``VMCTL-TINY-READY ip=...``).
    """
    CONSOLE_DIR.mkdir(parents=True, exist_ok=True)
    mac_xml = f"<mac address='{escape(mac)}'/>" if mac else ""
    agent_xml = (
        "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
        if agent
        else ""
    )
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>{vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(guest.kernel))}</kernel>
    <initrd>{escape(str(guest.initrd))}</initrd>
    <cmdline>{escape(guest.cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <interface type='network'>{mac_xml}<source network='{escape(network)}'/>
      <model type='virtio'/></interface>
    <serial type='pty'><log file='{console_log_path(name)}' append='off'/>
      <target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    {agent_xml}
    <memballoon model='virtio'/>
    {extra_devices}
  </devices>
</domain>"""


def blank_domain_xml(
    name: str,
    *,
    kvm: bool | None = None,
    memory_mib: int = 128,
    vcpus: int = 1,
    max_vcpus: int | None = None,
    network: str | None = None,
) -> str:
    """A domain with no OS (SeaBIOS only): ``type='kvm'`` when /dev/kvm works, else TCG.

    Good for lifecycle, suspend/resume, snapshots, migration. Never has a <cpu> element.
    """
    use_kvm = kvm_usable() if kvm is None else kvm
    vcpu_xml = (
        f"<vcpu current='{vcpus}'>{max_vcpus}</vcpu>" if max_vcpus else f"<vcpu>{vcpus}</vcpu>"
    )
    nic = (
        f"<interface type='network'><source network='{escape(network)}'/>"
        "<model type='virtio'/></interface>"
        if network
        else ""
    )
    return f"""<domain type='{"kvm" if use_kvm else "qemu"}'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  {vcpu_xml}
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <devices>{nic}<memballoon model='none'/></devices>
</domain>"""


def wait_console(name: str, marker: str, timeout: float) -> str:
    """Wait for ``marker`` in domain ``name``'s console log; return that line, whole.

    The serial port reaches virtlogd a few bytes at a time, so a read can end in the
    middle of a line: only lines already ended by their newline count."""
    path = console_log_path(name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            ended = path.read_text(errors="replace").rpartition("\n")[0]
            for line in ended.splitlines():
                if marker in line:
                    return line.strip()
        time.sleep(0.1)
    raise TimeoutError(f"{marker!r} not seen on the console of {name} within {timeout} s")


# --------------------------------------------------------------------------- CLI


def _write_state(hosts: KvmHosts) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    PIDS_FILE.write_text(
        json.dumps(
            {
                "processes": [dataclasses.asdict(p) for p in hosts.processes],
                "second_host": hosts.other_uri is not None,
                "timings": hosts.timings,
            },
            indent=2,
        )
        + "\n"
    )
    try:
        guest: TinyGuest | None = tiny_guest()  # built once, cached under .cache/guest
    except GuestBuildError as exc:
        print(f"kvm hosts: no tiny guest ({exc}); the kit will run without one", file=sys.stderr)
        guest = None
    write_private(ENV_FILE, "\n".join(shell_exports(hosts.env(guest))) + "\n")


def _read_state() -> tuple[list[Proc], bool]:
    if not PIDS_FILE.exists():
        return [], False
    data = json.loads(PIDS_FILE.read_text())
    return [Proc(**p) for p in data["processes"]], bool(data.get("second_host"))


def _cmd_start(args: argparse.Namespace) -> int:
    procs, _ = _read_state()
    if procs and all(p.alive() for p in procs) and ENV_FILE.exists():
        print("kvm hosts: already started (see `status`)", file=sys.stderr)
        print(ENV_FILE.read_text().replace("export ", "#export "), end="")
        return 0
    if any(p.alive() for p in procs):
        print("kvm hosts: partly running; run `stop` first (see `status`)", file=sys.stderr)
        return 1
    hosts = start_hosts(second_host=not args.no_second_host)
    _write_state(hosts)
    print(f"VMCTL_URI={hosts.uri}")
    if hosts.other_uri:
        print(f"VMCTL_OTHER_URI={hosts.other_uri}")
    print(f"# pids in {PIDS_FILE}; `. {ENV_FILE}`; timings {hosts.timings}", file=sys.stderr)
    return 0


def _cmd_stop(_args: argparse.Namespace) -> int:
    procs, second = _read_state()
    if not procs and not PIDS_FILE.exists():
        print("kvm hosts: nothing started by `start` (no .hosts/kvm.pids)")
    _stop(procs, second_host=second)
    for f in (PIDS_FILE, ENV_FILE):
        f.unlink(missing_ok=True)
    print("kvm hosts: stopped")
    return 0


def _cmd_status(_args: argparse.Namespace) -> int:
    procs, second = _read_state()
    for p in procs:
        print(f"{p.role:10} pid {p.pid:7} {'running' if p.alive() else 'gone'}")
    ok = True
    for uri in [URI] + ([OTHER_URI] if second else []):
        up = _answers(uri)
        ok &= up
        print(f"{uri:35} {'answers' if up else 'DOES NOT ANSWER'}")
    foreign = [p for p in _pids_of("libvirtd") if p not in {q.pid for q in procs}]
    if foreign:
        print(f"libvirtd not started by this harness: pid {foreign}")
    return 0 if ok else 1


def _cmd_guest(_args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    g = tiny_guest()
    print(
        json.dumps(
            {
                "kernel": str(g.kernel),
                "initrd": str(g.initrd),
                "cmdline": g.cmdline,
                "versions": g.versions,
                "has_agent": g.has_agent,
                "seconds": round(time.monotonic() - t0, 1),
            },
            indent=2,
        )
    )
    return 0


EXTRA_PIDS_FILE = STATE_DIR / "kvm3.pids"


def _read_extra() -> ExtraHost:
    procs = []
    if EXTRA_PIDS_FILE.exists():
        procs = [Proc(**p) for p in json.loads(EXTRA_PIDS_FILE.read_text())["processes"]]
    return ExtraHost(HOST3.uri, HOST3, procs)


def _cmd_extra(args: argparse.Namespace) -> int:
    """The third host from the shell (the kit's fail_command / revive_command): ``start``
    (with the test network and pool; its PIDs in .hosts/kvm3.pids), ``kill`` (a power cut:
    ``start`` brings it back), ``stop`` (the same, and the PID file removed)."""
    if args.action == "start":
        extra = start_extra_host()
        try:
            ensure_network_and_pool(extra.uri)
        except BaseException:
            extra.stop()
            raise
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        EXTRA_PIDS_FILE.write_text(
            json.dumps({"processes": [dataclasses.asdict(p) for p in extra.processes]}) + "\n"
        )
        print(extra.uri)
        return 0
    extra = _read_extra()
    if args.action == "kill":
        extra.kill()
    else:
        extra.stop()
        EXTRA_PIDS_FILE.unlink(missing_ok=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.hosts.kvm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_start = sub.add_parser("start", help="start the hosts detached; write .hosts/kvm.*")
    p_start.add_argument("--no-second-host", action="store_true")
    p_start.set_defaults(func=_cmd_start)
    sub.add_parser("stop", help="stop what `start` started").set_defaults(func=_cmd_stop)
    sub.add_parser("status", help="show PIDs and whether the URIs answer").set_defaults(
        func=_cmd_status
    )
    sub.add_parser("guest", help="build/cache the tiny guest, print paths").set_defaults(
        func=_cmd_guest
    )
    p_extra = sub.add_parser("extra", help="the third host: start, kill (a power cut), stop")
    p_extra.add_argument("action", choices=("start", "kill", "stop"))
    p_extra.set_defaults(func=_cmd_extra)
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except (HostError, GuestBuildError) as exc:
        print(f"kvm hosts: {exc}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
