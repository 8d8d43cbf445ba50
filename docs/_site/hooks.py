"""MkDocs hooks for the vmctl site (``hooks:`` in mkdocs.yml).

* Pages that live outside docs/ join the site: README.md as the home page, spec/SPEC.md as
  ``spec.md``.
* Links are written for reading on GitHub (``docs/guide.md`` from README.md,
  ``../spec/SPEC.md`` and ``../vmctl/spi.py`` from a docs/ page): they are rewritten to the
  site's pages; a link to a source file or folder with no page becomes its repository path in
  code font, so ``mkdocs build --strict`` finds no broken link.
* The nav: the pages of ``ORDER`` first, in that order, then every other docs/*.md page by
  title, so a page added later appears without editing mkdocs.yml.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[2]

#: Site page -> the repository file it is made from (pages outside docs/).
OUTSIDE = {"index.md": "README.md", "spec.md": "spec/SPEC.md"}
#: Repository paths (files or folders) outside docs/ that have a page of their own.
PAGE_OF = {
    "README.md": "index.md",
    "spec/SPEC.md": "spec.md",
    "spec/vmctl_conformance/SPEC.md": "spec.md",
    "vmctl/spi.py": "reference/spi.md",
    "vmctl/backup": "reference/backup.md",
    "spec/vmctl_conformance": "reference/conformance.md",
}

#: The nav's sections and the known pages in each, in order. Pages not named here go to
#: "More" (docs/*.md) or "API reference" (docs/reference/*.md), by title.
ORDER: list[tuple[str, list[str]]] = [
    ("Using vmctl", ["index.md", "guide.md", "backup.md"]),
    (
        "Drivers and conformance",
        ["driver-authoring.md", "spec.md", "conformance.md", "support-matrix.md"],
    ),
    ("Backends", ["kvm.md", "esx.md", "xen.md", "hyperv.md"]),
    ("Simulators", ["xapisim.md", "hypervsim.md"]),
    (
        "API reference",
        [
            "reference/vmctl.md",
            "reference/backup.md",
            "reference/spi.md",
            "reference/conformance.md",
        ],
    ),
]

LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for page, source in OUTSIDE.items():
        files.append(File.generated(config, page, abs_src_path=str(ROOT / source)))
    config.nav = _nav(files)
    return files


def _title(file: File) -> str:
    for line in Path(file.abs_src_path or "").read_text().splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return file.src_uri


def _nav(files: Files) -> list[Any]:
    pages = {f.src_uri for f in files.documentation_pages()}
    placed: set[str] = set()
    nav: list[Any] = []
    for section, names in ORDER:
        entries: list[Any] = [n for n in names if n in pages]
        placed.update(entries)
        if section == "API reference":
            rest = sorted(p for p in pages - placed if p.startswith("reference/"))
            entries += rest
            placed.update(rest)
        if entries:
            nav.append({section: entries})
    rest = sorted(pages - placed, key=lambda p: _title(files.get_file_from_path(p)).lower())  # type: ignore[arg-type]
    if rest:
        nav.append({"More": rest})
    return nav


def _repo_path(page: Page) -> str:
    """Where the page's source lives in the repository (posix, relative to the root)."""
    src = page.file.src_uri
    return OUTSIDE.get(src, f"docs/{src}")


def _rewrite(target: str, page: Page) -> str | None:
    """The site link for a link written for the repository; None: no page (a source path)."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
        return target
    path, _, anchor = target.partition("#")
    here = posixpath.dirname(_repo_path(page))
    repo = posixpath.normpath(posixpath.join(here, path)).rstrip("/")
    if repo in PAGE_OF:
        site = PAGE_OF[repo]
    elif repo.startswith("docs/") and repo.endswith(".md"):
        site = repo[len("docs/") :]
    else:
        return None
    rel = posixpath.relpath(site, posixpath.dirname(page.file.src_uri) or ".")
    return rel + (f"#{anchor}" if anchor else "")


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    out: list[str] = []
    fenced = False
    for line in markdown.splitlines(keepends=True):
        if FENCE.match(line):
            fenced = not fenced
        if not fenced:
            line = LINK.sub(lambda m: _link(m, page), line)
        out.append(line)
    return "".join(out)


def _link(m: re.Match[str], page: Page) -> str:
    text, target = m.group("text"), m.group("target")
    site = _rewrite(target, page)
    if site is not None:
        return f"[{text}]({site})"
    here = posixpath.dirname(_repo_path(page))
    repo = posixpath.normpath(posixpath.join(here, target.partition("#")[0]))
    if repo.rsplit("/", 1)[-1] in text:
        return text
    return f"{text} (`{repo}`)"
