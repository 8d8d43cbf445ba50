"""A Griffe extension for the vmctl site (mkdocs.yml, mkdocstrings ``extensions:``).

vmctl's docstrings show examples as bare doctest lines (``>>> ...``) and reST literal blocks
(``Python::`` and an indented block), which read well in ``help()`` and in the code. Markdown
would render ``>>>`` as nested quotes, so each run of doctest lines (with the output lines
that follow it) becomes a fenced ``pycon`` block, and a paragraph ending in ``::`` ends in
``:`` (its indented block is already a code block in Markdown). The docstrings stay as
they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

PROMPT = re.compile(r"^(\s*)>>> ")


def fence_doctests(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = PROMPT.match(lines[i])
        if not m:
            line = lines[i]
            if line.rstrip().endswith("::") and line.strip() != "::":
                line = line.rstrip()[:-1]
            out.append(line)
            i += 1
            continue
        indent = m.group(1)
        block: list[str] = []
        while i < len(lines) and lines[i].strip():
            block.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        if out and out[-1].strip():
            out.append("")
        out += [f"{indent}```pycon", *(indent + b for b in block), f"{indent}```"]
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and (
            ">>> " in obj.docstring.value or "::" in obj.docstring.value
        ):
            obj.docstring.value = fence_doctests(obj.docstring.value)
