"""Facts the docs state about the harnesses match the code."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import attrs

import vmctl
from tests.hosts import xen

ROOT = Path(__file__).resolve().parents[2]


def test_xapisim_page_lists_what_xen_env_sets() -> None:
    sim = SimpleNamespace(
        host_uri="xen://root@127.0.0.1:9/?host=xenhost1",
        other_uri="xen://root@127.0.0.1:9/?host=xenhost2",
        uri="xen://root@127.0.0.1:9",
        password="pw",
        cafile="/c.pem",
        thumbprint="AA",
    )
    lines = xen.env_lines(sim)  # type: ignore[arg-type]
    names = {re.match(r"export (\w+)=", line).group(1) for line in lines}  # type: ignore[union-attr]
    page = (ROOT / "docs" / "xapisim.md").read_text()
    for name in names:
        assert f"`{name}`" in page, name
    assert "`VMCTL_URI` | `xen://root@127.0.0.1:PORT/?host=xenhost1`" in page
    assert "the pool master |" not in page.split("`VMCTL_URI`")[1].split("\n")[0]


def test_no_page_copies_the_matrix_by_hand() -> None:
    for page in ("esx.md", "kvm.md", "xen.md"):
        text = (ROOT / "docs" / page).read_text()
        assert "support-matrix.md" in text, page
        assert "| LIFE-START-1" not in text and "| CONN-OPEN-1" not in text, page


def test_the_guide_documents_every_spec_field_and_public_member() -> None:
    guide = (ROOT / "docs" / "guide.md").read_text()
    for cls in (vmctl.VMSpec, vmctl.DiskSpec, vmctl.NicSpec, vmctl.BootSource, vmctl.Resources):
        for f in attrs.fields(cls):
            assert f"| `{f.name}` |" in guide, f"{cls.__name__}.{f.name} is not in the guide"
    for cls in (vmctl.VM, vmctl.Hypervisor, vmctl.EventStream, vmctl.Operation):
        for name in dir(cls):
            if not name.startswith("_"):
                assert re.search(rf"\b{re.escape(name)}\b", guide), f"{cls.__name__}.{name}"


def test_the_guide_names_every_error() -> None:
    guide = (ROOT / "docs" / "guide.md").read_text()
    for name in vmctl.__all__:
        value = getattr(vmctl, name)
        if isinstance(value, type) and issubclass(value, vmctl.VmctlError):
            assert name in guide, name
