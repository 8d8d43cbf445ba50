"""The documentation site builds with no warning (``mkdocs build --strict``, as ``make docs``):
every page of docs/, README.md and the spec, the API reference generated from the docstrings,
and no broken link or anchor between them."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    """A module of docs/_site (the site's MkDocs hooks and Griffe extension)."""
    spec = importlib.util.spec_from_file_location(
        f"_site_{name}", ROOT / "docs/_site" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _load("hooks")
doctest_blocks = _load("doctest_blocks")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.fail("mkdocs is not installed: pip install -e '.[docs]' (make test-venv does)")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stderr[-6000:]}"
    assert "WARNING" not in run.stderr, run.stderr[-6000:]
    return out


def test_every_page_is_built(site: Path) -> None:
    pages = [p.stem for p in (ROOT / "docs").glob("*.md")]
    assert "support-matrix" in pages
    for page in pages:
        assert (site / page / "index.html").is_file(), f"docs/{page}.md has no page"
    home = (site / "index.html").read_text()
    assert "One vendor-neutral Python API" in home  # README.md
    assert "LIFE-START-1" in (site / "spec" / "index.html").read_text()


def test_reference_comes_from_the_docstrings(site: Path) -> None:
    spi = (site / "reference" / "spi" / "index.html").read_text()
    for name in ("vmctl.spi.Driver", "vmctl.spi.Snapshots", "vmctl.spi.DiskAccess"):
        assert f'id="{name}"' in spi, name
    # a sentence that is only in Driver.create_vm's docstring
    assert "nothing of it is left behind" in spi
    api = (site / "reference" / "vmctl" / "index.html").read_text()
    for name in ("vmctl.connect", "vmctl.VM", "vmctl.VMSpec", "vmctl.PowerState"):
        assert f'id="{name}"' in api, name
    assert "&gt;&gt;&gt; " not in api.replace('<span class="gp">&gt;&gt;&gt; </span>', "")


def test_links_written_for_github_point_at_site_pages() -> None:
    class Page:
        def __init__(self, src_uri: str) -> None:
            self.file = type("F", (), {"src_uri": src_uri})()

    assert hooks._rewrite("docs/guide.md#events", Page("index.md")) == "guide.md#events"
    assert hooks._rewrite("spec/SPEC.md", Page("index.md")) == "spec.md"
    assert hooks._rewrite("../spec/SPEC.md", Page("conformance.md")) == "spec.md"
    assert hooks._rewrite("../vmctl/spi.py", Page("driver-authoring.md")) == "reference/spi.md"
    assert hooks._rewrite("../guide.md", Page("reference/vmctl.md")) == "../guide.md"
    assert hooks._rewrite("../drivers/vmctl_sim", Page("driver-authoring.md")) is None
    assert (
        hooks._rewrite("https://example.com/x.md", Page("guide.md")) == "https://example.com/x.md"
    )


def test_doctest_lines_become_code_blocks() -> None:
    text = "Connect.\n\n>>> import vmctl\n>>> vmctl.URI.parse('sim://')\nURI(...)\n\nAfter."
    assert doctest_blocks.fence_doctests(text) == (
        "Connect.\n\n```pycon\n>>> import vmctl\n>>> vmctl.URI.parse('sim://')\nURI(...)\n```"
        "\n\nAfter."
    )
    assert doctest_blocks.fence_doctests("Python::\n\n    run()") == "Python:\n\n    run()"


def test_nav_picks_up_pages_added_later(tmp_path: Path) -> None:
    from mkdocs.structure.files import File, Files

    names = ["index.md", "guide.md", "hyperv.md", "zeta.md", "alpha.md", "reference/vmctl.md",
             "reference/extra.md"]  # fmt: skip
    files = []
    for name in names:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {'A page' if name == 'zeta.md' else name}\n")
        files.append(File(name, str(tmp_path), str(tmp_path / "site"), True))
    nav = hooks._nav(Files(files))
    assert nav == [
        {"Using vmctl": ["index.md", "guide.md"]},
        {"Backends": ["hyperv.md"]},
        {"API reference": ["reference/vmctl.md", "reference/extra.md"]},
        {"More": ["zeta.md", "alpha.md"]},  # by title: "A page", "alpha.md"
    ]


def test_every_export_is_in_the_reference(site: Path) -> None:
    import vmctl
    import vmctl.backup
    import vmctl.spi

    ids: set[str] = set()
    for page in (site / "reference").glob("*/index.html"):
        ids.update(re.findall(r'<h\d id="([\w.]+)"', page.read_text()))
    documented = {i.rsplit(".", 1)[-1] for i in ids if i.count(".") == 1 or "spi." in i
                  or "backup." in i}  # fmt: skip
    for module in (vmctl, vmctl.spi, vmctl.backup):
        missing = sorted(set(module.__all__) - documented)
        assert not missing, f"{module.__name__} exports {missing}: add them to docs/reference/"
