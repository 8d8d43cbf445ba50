"""The docs are tested: every fenced Python and shell block of the pages below runs here, so a
page cannot drift from the code.

Each ``python``/``sh`` block must be preceded by a marker line saying where it runs::

    <!-- doctest: sim -->                  run against a fresh sim:// site
    <!-- doctest: sim esx xen kvm-test -->  run once against each of these backends
    <!-- doctest: sim prelude=vm -->       with `hv` (a connection) and `vm` (a new VM) defined
    <!-- doctest: sim slow -->             marked slow: left out of `make check`'s fast lane
    <!-- doctest: skip: REASON -->         not run (say why)

For each backend run, ``$VMCTL_URI``, ``$VMCTL_PASSWORD``, ``$VMCTL_CAFILE`` (and
``$VMCTL_OTHER_URI`` where there is a second host) name that backend's test host, and the
placeholders of a Python block (top-level lines ``URI = ...``, ``NETWORK = ...``,
``BOOT = ...``, ``CAFILE = ...``) get that host's values: the rest of the block runs as
written. Backends: ``sim`` (always), ``xen`` (xapisim, in this process), ``esx`` (the vSphere
simulator from tests/hosts/esx.py, vCenter mode), ``kvm-test`` (libvirt's test driver,
``test:///default``). Shell blocks run with bash (``set -eo pipefail``) in a scratch
directory whose ``.venv/bin`` leads to this interpreter's environment and whose ``$HOME``
is scratch.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["README.md", "docs/guide.md", "docs/conformance.md", "docs/hosts.md"]
RUNNABLE = {"python", "py", "sh", "bash", "shell", "console"}
MARKER = re.compile(r"^<!--\s*doctest:\s*(.*?)\s*-->\s*$")
BACKENDS = ("sim", "xen", "esx", "kvm-test")
TIMEOUT = 240

IMPORTS = "import vmctl\nfrom vmctl import BootSource, DiskSpec, NicSpec, Resources, VMSpec\n"
PRELUDES = {
    "hv": "hv = vmctl.connect()  # $VMCTL_URI\n",
    "vm": (
        "hv = vmctl.connect()  # $VMCTL_URI\n"
        "vm = hv.create_vm(VMSpec(name='doc-vm', disks=[DiskSpec(size_mib=64)],\n"
        "                         nics=[NicSpec(network=NETWORK)], boot=BOOT))\n"
    ),
}


@dataclass
class Block:
    page: str
    line: int
    lang: str
    code: str
    backends: list[str] = field(default_factory=list)
    skip: str = ""
    prelude: str = ""
    slow: bool = False

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: str) -> list[Block]:
    """The fenced blocks of a page with a runnable language, with their markers."""
    lines = (ROOT / page).read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w+)?\s*$", lines[i])
        if not m:
            i += 1
            continue
        lang = (m.group(1) or "").lower()
        start = i
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        if lang not in RUNNABLE:
            continue
        block = Block(page, start + 1, lang, "\n".join(body) + "\n")
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        marker = MARKER.match(lines[before]) if before >= 0 else None
        if marker:
            spec = marker.group(1)
            if spec.startswith("skip"):
                block.skip = spec.partition(":")[2].strip() or "marked skip"
            else:
                for word in spec.split():
                    if word.startswith("prelude="):
                        block.prelude = word.partition("=")[2]
                    elif word == "slow":
                        block.slow = True
                    else:
                        block.backends.append(word)
        found.append(block)
    return found


ALL = [b for page in PAGES for b in blocks(page)]


def test_every_runnable_block_says_where_it_runs() -> None:
    unmarked = [b.id for b in ALL if not b.skip and not b.backends]
    assert not unmarked, f"blocks without a <!-- doctest: ... --> marker: {unmarked}"
    for b in ALL:
        assert set(b.backends) <= set(BACKENDS), f"{b.id}: unknown backend in {b.backends}"
        assert b.prelude in ("", *PRELUDES), f"{b.id}: unknown prelude {b.prelude!r}"
        if b.skip:
            assert len(b.skip) > 8, f"{b.id}: a skipped block says why"
    assert sum(1 for b in ALL if not b.skip) >= 8  # the pages really are tested


# -- backends -----------------------------------------------------------------------------


@dataclass
class Backend:
    name: str
    env: dict[str, str]
    values: dict[str, str]  # placeholder -> Python expression


@pytest.fixture(scope="session")
def xen_backend() -> Iterator[Backend]:
    xapisim = pytest.importorskip("xapisim")
    pytest.importorskip("XenAPI")
    password = "doc-" + secrets.token_hex(6)
    with xapisim.serve(hosts=2, vms=0, username="root", password=password, tls=True) as srv:
        base = f"xen://root@127.0.0.1:{srv.port}"
        uri = f"{base}/?host=xenhost1"
        yield Backend(
            "xen",
            {
                "VMCTL_URI": uri,
                "VMCTL_OTHER_URI": f"{base}/?host=xenhost2",
                "VMCTL_PASSWORD": password,
                "VMCTL_CAFILE": srv.cafile,
            },
            {
                "URI": repr(uri),
                "CAFILE": repr(srv.cafile),
                "NETWORK": repr("Pool-wide network associated with eth0"),
                "BOOT": 'BootSource(kernel="/boot/guest/vmlinuz", cmdline="console=hvc0")',
            },
        )


@pytest.fixture(scope="session")
def esx_backend() -> Iterator[Backend]:
    pytest.importorskip("pyVmomi")
    from tests.hosts import esx

    try:
        cm = esx.running_simulator("vcenter", vms=0)
        srv = cm.__enter__()
    except esx.HarnessError as exc:
        pytest.skip(f"the vSphere simulator cannot start here: {exc}")
    try:
        uri, other = srv.host_uris[0], srv.host_uris[1]
        yield Backend(
            "esx",
            {
                "VMCTL_URI": uri,
                "VMCTL_OTHER_URI": other,
                "VMCTL_PASSWORD": srv.password,
                "VMCTL_CAFILE": str(srv.cafile),
            },
            {
                "URI": repr(uri),
                "CAFILE": repr(str(srv.cafile)),
                "NETWORK": repr("VM Network"),
                "BOOT": 'BootSource(iso="[LocalDS_0] images/linux.iso")',
            },
        )
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    name = request.param
    if name == "sim":
        uri = f"sim://docs?state={tmp_path / 'sim-site.json'}"
        return Backend(
            "sim",
            {"VMCTL_URI": uri, "VMCTL_PASSWORD": "the sim takes any"},
            {
                "URI": repr(uri),
                "CAFILE": "None",
                "NETWORK": repr("default"),
                "BOOT": 'BootSource(kernel="/boot/vmlinuz", cmdline="console=ttyS0")',
            },
        )
    if name == "kvm-test":
        pytest.importorskip("libvirt")
        return Backend(
            "kvm-test",
            {"VMCTL_URI": "test:///default"},
            {
                "URI": repr("test:///default"),
                "NETWORK": repr("default"),
                "BOOT": 'BootSource(kernel="/boot/vmlinuz", cmdline="console=ttyS0")',
            },
        )
    fixture: Any = request.getfixturevalue(f"{name}_backend")
    assert isinstance(fixture, Backend)
    return fixture


# -- running a block ----------------------------------------------------------------------

PLACEHOLDER = re.compile(r"^([A-Z][A-Z_]*) = .*?(\s+#.*)?$")


def substitute(code: str, values: dict[str, str]) -> str:
    """Top-level ``NAME = ...`` placeholder lines with the backend's values."""
    out = []
    for line in code.splitlines():
        m = PLACEHOLDER.match(line)
        if m and m.group(1) in values:
            line = f"{m.group(1)} = {values[m.group(1)]}"
        out.append(line)
    return "\n".join(out) + "\n"


def _env(tmp: Path, backend: Backend) -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    env = {
        "PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp),
        "LANG": "C.UTF-8",
        "COLUMNS": "120",
        **backend.env,
    }
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def _venv(tmp: Path) -> None:
    """A scratch ``.venv`` for the pages' `. .venv/bin/activate` and `.venv/bin/vmctl`: the
    environment running these tests (whether or not it is a virtualenv)."""
    bindir = Path(sys.executable).parent
    venv_bin = tmp / ".venv" / "bin"
    if venv_bin.exists():
        return
    venv_bin.mkdir(parents=True)
    (venv_bin / "activate").write_text(f'export PATH="{bindir}:$PATH"\n')
    if (bindir / "vmctl").exists():
        (venv_bin / "vmctl").symlink_to(bindir / "vmctl")


def run_block(block: Block, backend: Backend, tmp: Path) -> subprocess.CompletedProcess[str]:
    _venv(tmp)
    env = _env(tmp, backend)
    if block.lang in ("python", "py"):
        prelude = ""
        if block.prelude:
            prelude = IMPORTS + substitute("NETWORK = None\nBOOT = None\n", backend.values)
            prelude += PRELUDES[block.prelude]
        code = prelude + substitute(block.code, backend.values)
        script = tmp / "block.py"
        script.write_text(code)
        cmd = [sys.executable, str(script)]
    else:
        cmd = ["bash", "-c", "set -eo pipefail\n" + block.code]
    return subprocess.run(
        cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


MARKS = {"sim": pytest.mark.sim, "xen": pytest.mark.xen, "esx": pytest.mark.esx,
         "kvm-test": pytest.mark.kvm}  # fmt: skip
CASES = [
    pytest.param(
        b, name, id=f"{b.id}:{name}", marks=[MARKS[name], *([pytest.mark.slow] if b.slow else [])]
    )
    for b in ALL
    if not b.skip
    for name in b.backends
    if name in MARKS
]


@pytest.mark.parametrize(("block", "backend"), CASES, indirect=["backend"])
def test_block_runs(block: Block, backend: Backend, tmp_path: Path) -> None:
    out = run_block(block, backend, tmp_path)
    assert out.returncode == 0, (
        f"{block.id} on {backend.name} failed ({out.returncode}):\n"
        f"--- stdout\n{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-3000:]}"
    )
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
