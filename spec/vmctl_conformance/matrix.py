"""Merge kit reports of several backends into one verified support matrix (Markdown).

    python -m vmctl_conformance.matrix --update docs/support-matrix.md reports/*.json
    python -m vmctl_conformance.matrix reports/*.json > matrix.md

With ``--update FILE`` the reports are merged into the matrix already in FILE: the column
of a backend with a new report is replaced, the columns of backends without one are kept
as they were. Without reports nothing is written.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from attrs import define, evolve, field

from ._clauses import load_clauses
from .report import STATUSES, Report

#: A cell says what the report says (the statuses of docs/conformance.md), fail in bold.
MARK = {"pass": "pass", "fail": "**FAIL**", "not-supported": "not-supported", "skip": "skip"}
#: Cells of matrices written before the statuses were spelt as in the reports.
_OLD = {"not supported": "not-supported", "**FAIL**": "**FAIL**"}

HEADER = [
    "# Verified support matrix",
    "",
    "Every cell comes from a live run of the conformance kit (`vmctl conformance`) against",
    "the backend named in the column; `make matrix` merges the reports `make test` writes to",
    "`reports/` into this page (`python -m vmctl_conformance.matrix --update",
    "docs/support-matrix.md reports/*.json`); a backend without a new report keeps its",
    "column. The statuses are those of the reports: pass, **FAIL**, not-supported, skip",
    "(see [conformance.md](conformance.md)).",
]


@define
class Column:
    """One backend's column: its cells by clause, its summary counts, its skip notes."""

    name: str
    cells: dict[str, str] = field(factory=dict)
    counts: list[str] = field(factory=list)  # pass, fail, not-supported, skip, leaked
    notes: list[str] = field(factory=list)  # "CLAUSE: reason", "CLAUSE: FAIL: how"

    @classmethod
    def from_report(cls, report: Report) -> Column:
        c = report.counts()
        return cls(
            name=column_name(report),
            cells={cid: MARK.get(r.status, r.status) for cid, r in report.results.items()},
            counts=[*(str(c[s]) for s in STATUSES), str(len(report.leaked))],
            notes=[
                f"{cid}: {r.reason}" if r.status == "skip" else f"{cid}: FAIL: {r.reason}"
                for cid, r in sorted(report.results.items())
                if r.status in ("skip", "fail")
            ],
        )


def column_name(report: Report) -> str:
    # Ports of test hosts change every run; the URI without them names the backend.
    uri = re.sub(r":[0-9]+(?=/|$)", "", report.uri.split("?")[0])
    return f"{report.driver} `{uri}`"


def _row(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse(text: str) -> list[Column]:
    """The columns of a matrix this module wrote."""
    columns: list[Column] = []
    by_name: dict[str, Column] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("| clause | capability |"):
            names = _row(line)[2:]
            columns = [Column(n) for n in names]
            by_name = {c.name: c for c in columns}
            section = "clauses"
        elif line.startswith("| backend |"):
            section = "summary"
        elif line.startswith("|---"):
            continue
        elif line.startswith("| ") and section == "clauses":
            cells = _row(line)
            for col, cell in zip(columns, cells[2:], strict=False):
                col.cells[cells[0]] = _OLD.get(cell, cell)
        elif line.startswith("| ") and section == "summary":
            cells = _row(line)
            if cells[0] in by_name:
                by_name[cells[0]].counts = cells[1:]
        elif line.startswith("- ") and ", " in line:
            for name, col in by_name.items():
                if line.startswith(f"- {name}, "):
                    col.notes.append(line[len(f"- {name}, ") :])
    return columns


def render(columns: list[Column]) -> str:
    clauses = load_clauses()
    names = [c.name for c in columns]
    lines = [
        *HEADER,
        "",
        "| clause | capability | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for cid, meta in clauses.items():
        cells = [c.cells.get(cid, "not run") for c in columns]
        lines.append(f"| {cid} | {meta['capability'] or '-'} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| backend | pass | fail | not-supported | skip | leaked |",
        "|---|---|---|---|---|---|",
    ]
    for c in columns:
        lines.append(f"| {c.name} | " + " | ".join(c.counts) + " |")
    notes = [f"- {c.name}, {note}" for c in columns for note in c.notes]
    if notes:
        lines += [
            "",
            "Skipped clauses could not be checked on that host, and say why; failed ones say "
            "how (the statement, the expected and the actual value):",
            *notes,
        ]
    return "\n".join(lines) + "\n"


#: When two reports of one backend name a clause, the status that says more wins: a
#: failure anywhere, else a pass, else "not-supported" (declared), else a skip.
_PRECEDENCE = {"fail": 0, "pass": 1, "not-supported": 2, "skip": 3}


def combine(reports: list[Report]) -> list[Report]:
    """One report per backend: reports of the same column (the main kit run and a run of
    some clauses that needs a host of its own, e.g. RECOVER- against a libvirtd the test
    may take down) are joined clause by clause, and their leaks added up."""
    by_column: dict[str, Report] = {}
    for report in reports:
        name = column_name(report)
        first = by_column.get(name)
        if first is None:
            by_column[name] = report
            continue
        results = dict(first.results)
        for cid, r in report.results.items():
            old = results.get(cid)
            if old is None or _PRECEDENCE.get(r.status, 9) < _PRECEDENCE.get(old.status, 9):
                results[cid] = r
        by_column[name] = evolve(first, results=results, leaked=[*first.leaked, *report.leaked])
    return list(by_column.values())


def merge(existing: list[Column], reports: list[Report]) -> list[Column]:
    """``existing`` with each backend's column replaced by its new reports (joined by
    ``combine``; new backends are appended)."""
    out = list(existing)
    for report in combine(reports):
        col = Column.from_report(report)
        for i, old in enumerate(out):
            if old.name == col.name:
                out[i] = col
                break
        else:
            out.append(col)
    return out


def matrix(reports: list[Report], existing: str | None = None) -> str:
    """The matrix of ``reports``, merged into the ``existing`` matrix text if given."""
    return render(merge(parse(existing) if existing else [], reports))


USAGE = "usage: python -m vmctl_conformance.matrix [--update MATRIX.md] REPORT.json..."


def main(argv: list[str]) -> int:
    target: Path | None = None
    if argv[:1] == ["--update"]:
        if len(argv) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        target, argv = Path(argv[1]), argv[2:]
    paths = [Path(p) for p in argv]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing or not paths:
        what = f"no such report: {', '.join(missing)}" if missing else "no reports given"
        print(
            f"{what}; nothing written. The kit writes reports with --report FILE.json "
            "(`make test` leaves them in reports/).\n" + USAGE,
            file=sys.stderr,
        )
        return 2
    reports = [Report.from_json(p.read_text()) for p in paths]
    if target is None:
        sys.stdout.write(matrix(reports))
        return 0
    existing = target.read_text() if target.is_file() else None
    text = matrix(reports, existing)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(target)
    kept = len(parse(text)) - len({column_name(r) for r in reports})
    print(f"{target}: {len(reports)} column(s) from reports, {kept} kept", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
