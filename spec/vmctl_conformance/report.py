"""The kit's report: clause by clause, from a live run; JSON and Markdown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from attrs import asdict, define, field

STATUSES = ("pass", "fail", "not-supported", "skip")


@define
class ClauseResult:
    status: str
    tests: list[str] = field(factory=list)
    reason: str = ""


@define
class Report:
    """What a kit run found. ``failed`` lists failing clauses, ``leaked`` leftover objects."""

    uri: str
    driver: str = ""
    capabilities: list[str] = field(factory=list)
    results: dict[str, ClauseResult] = field(factory=dict)
    leaked: list[str] = field(factory=list)
    refused: str = ""  # why the kit refused to run (e.g. leftovers found), if it did
    duration_s: float = 0.0
    options: dict[str, str] = field(factory=dict)  # the kit options the run used
    option_sources: dict[str, str] = field(factory=dict)  # where each came from
    output: str = field(default="", repr=False)  # what the kit's pytest run printed

    @property
    def failed(self) -> list[str]:
        return sorted(c for c, r in self.results.items() if r.status == "fail")

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for r in self.results.values():
            out[r.status] = out.get(r.status, 0) + 1
        return out

    @property
    def ok(self) -> bool:
        return not self.failed and not self.leaked and not self.refused and bool(self.results)

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("output")
        data["summary"] = self.counts()
        data["ok"] = self.ok
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Report:
        data: dict[str, Any] = json.loads(text)
        results = {k: ClauseResult(**v) for k, v in data.get("results", {}).items()}
        return cls(
            uri=data["uri"],
            driver=data.get("driver", ""),
            capabilities=data.get("capabilities", []),
            results=results,
            leaked=data.get("leaked", []),
            refused=data.get("refused", ""),
            duration_s=data.get("duration_s", 0.0),
            options=data.get("options", {}),
            option_sources=data.get("option_sources", {}),
        )

    def to_markdown(self) -> str:
        from ._clauses import load_clauses

        clauses = load_clauses()
        c = self.counts()
        lines = [
            f"# vmctl conformance: `{self.uri}` ({self.driver} driver)",
            "",
            f"{c['pass']} pass, {c['fail']} fail, {c['not-supported']} not-supported, "
            f"{c['skip']} skipped; leaked objects: {len(self.leaked)}; "
            f"{self.duration_s:.1f} s.",
            "",
        ]
        if self.options:
            used = ", ".join(
                f"`{k}={v}` ({self.option_sources.get(k, '?')})"
                for k, v in sorted(self.options.items())
            )
            lines += [f"Options: {used}.", ""]
        if self.refused:
            lines += [f"**Refused to run:** {self.refused}", ""]
        lines += ["| clause | capability | status | note |", "|---|---|---|---|"]
        for cid in sorted(set(clauses) | set(self.results)):
            r = self.results.get(cid, ClauseResult("skip", reason="not run"))
            cap = (clauses.get(cid) or {}).get("capability") or "-"
            note = r.reason.replace("|", "\\|").replace("\n", " ")
            note = note if r.status == "fail" else note[:160]  # a failure says how, whole
            lines.append(f"| {cid} | {cap} | {r.status} | {note} |")
        if self.leaked:
            lines += ["", "Leaked objects:", *[f"- {x}" for x in self.leaked]]
        return "\n".join(lines) + "\n"

    def write(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_markdown() if path.suffix == ".md" else self.to_json())
