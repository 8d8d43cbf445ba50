"""Merge kit reports of several backends into one verified support matrix (Markdown).

python -m vmctl_conformance.matrix reports/*.json > docs/support-matrix.md
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from ._clauses import load_clauses
from .report import Report

MARK = {"pass": "pass", "fail": "**FAIL**", "not-supported": "not supported", "skip": "skip"}


def matrix(reports: list[Report]) -> str:
    clauses = load_clauses()
    # Ports of test hosts change every run; the URI without them names the backend.
    names = [f"{r.driver} `{re.sub(r':[0-9]+(?=/|$)', '', r.uri.split('?')[0])}`" for r in reports]
    lines = [
        "# Verified support matrix",
        "",
        "Every cell comes from a live run of the conformance kit (`vmctl conformance`) against",
        "the backend named in the column; it is regenerated from the reports `make test` writes",
        "to `reports/` with `python -m vmctl_conformance.matrix reports/*.json`.",
        "",
        "| clause | capability | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(reports),
    ]
    for cid, meta in clauses.items():
        cells = []
        for r in reports:
            res = r.results.get(cid)
            cells.append(MARK.get(res.status, res.status) if res else "not run")
        lines.append(f"| {cid} | {meta['capability'] or '-'} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| backend | pass | fail | not supported | skip | leaked |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in zip(names, reports, strict=True):
        c = r.counts()
        lines.append(
            f"| {name} | {c['pass']} | {c['fail']} | {c['not-supported']} | "
            f"{c['skip']} | {len(r.leaked)} |"
        )
    notes = [
        f"- {name}, {cid}: {res.reason}"
        for name, r in zip(names, reports, strict=True)
        for cid, res in sorted(r.results.items())
        if res.status == "skip"
    ]
    if notes:
        lines += ["", "Skipped clauses could not be checked on that host, and say why:", *notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    reports = [Report.from_json(Path(p).read_text()) for p in argv]
    if not reports:
        print("usage: python -m vmctl_conformance.matrix REPORT.json...", file=sys.stderr)
        return 2
    sys.stdout.write(matrix(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
