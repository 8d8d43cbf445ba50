"""Mutation testing of the conformance kit: does it catch realistic driver bugs?

Each mutant of ``catalogue.toml`` is put, alone, into a copy of the reference driver
(drivers/vmctl_sim), which shadows the installed one on PYTHONPATH in a kit run on sim://.
The mutant is *killed* when the run fails a clause or reports something leaked; it
*survives* otherwise. A survivor the catalogue explains as equivalent is accepted; any other
fails the harness (exit status 1), as does a stale mutant (its ``find`` text no longer in
the driver) or a reference driver that does not pass the clauses the mutants are run on.

    python tests/mutants/harness.py [-j JOBS] [--all-clauses] [--only ID]... [--list]

Prints one line per mutant and ``killed K/N``, naming the survivors.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIM = ROOT / "drivers" / "vmctl_sim"
CATALOGUE = Path(__file__).with_name("catalogue.toml")
#: Kit options for mutant runs: the sim answers at once, so a mutant that makes the core
#: wait for a state that never comes fails in seconds, not minutes; settle_s above the sim
#: guest's reaction time (GUEST_DELAY, 0.15 s) catches bugs that strike after a return.
KIT_OPTIONS = {"op_timeout": "5", "settle_s": "0.3"}
#: A survivor is run once more with this settle time before it counts: on a loaded machine
#: the sim's delayed guest action may come after a 0.3 s settle.
RETRY_SETTLE_S = "2"
#: A kit run that takes longer than this is stopped and counts as killed (it hung).
RUN_TIMEOUT_S = 240.0
KINDS = {
    "state-folding",
    "early-return",
    "ignored-argument",
    "partial-restore",
    "wrong-unit",
    "paging",
    "leak",
    "events",
    "identity",
    "race",
    "isolation",
    "validation",
}


@dataclass
class Mutant:
    id: str
    kind: str
    file: str
    find: str
    replace: str
    clauses: list[str]
    bug: str
    equivalent: str = ""


@dataclass
class Outcome:
    mutant: Mutant | None  # None: the reference driver itself
    killed: bool = False
    stale: str = ""
    by: list[str] = field(default_factory=list)  # failing clauses, or "leaked", "hung"
    note: str = ""
    seconds: float = 0.0


def load(path: Path = CATALOGUE) -> list[Mutant]:
    raw = tomllib.loads(path.read_text())
    mutants = [Mutant(**m) for m in raw["mutant"]]
    ids = [m.id for m in mutants]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise SystemExit(f"duplicate mutant ids in {path.name}: {dupes}")
    for m in mutants:
        if m.kind not in KINDS:
            raise SystemExit(f"mutant {m.id}: unknown kind {m.kind!r} (kinds: {sorted(KINDS)})")
        if not m.clauses:
            raise SystemExit(f"mutant {m.id}: no clauses to run")
    return mutants


def _copy_driver(dest: Path, mutant: Mutant | None) -> str:
    """A copy of the sim driver under ``dest``/vmctl_sim, with the mutant applied; returns
    a reason when the mutant is stale, else ""."""
    target = dest / "vmctl_sim"
    shutil.copytree(SIM, target, ignore=shutil.ignore_patterns("__pycache__"))
    if mutant is None:
        return ""
    module = target / mutant.file
    text = module.read_text()
    count = text.count(mutant.find)
    if count != 1:
        return f"its find text occurs {count} times in {mutant.file} (expected once)"
    module.write_text(text.replace(mutant.find, mutant.replace))
    return ""


def _kit_command(
    report: Path, clauses: Sequence[str], options: dict[str, str] | None = None
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "vmctl_conformance.plugin",
        "--pyargs",
        "vmctl_conformance.suite",
        "--vmctl-uri",
        "sim://mutant",
        "--vmctl-report",
        str(report),
        "-q",
        "-x",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
    ]
    for key, value in (options or KIT_OPTIONS).items():
        cmd += ["--vmctl-opt", f"{key}={value}"]
    for c in clauses:
        cmd += ["--vmctl-clause", c]
    return cmd


def run_one(
    mutant: Mutant | None, clauses: Sequence[str], options: dict[str, str] | None = None
) -> Outcome:
    """Run the kit on the sim driver with ``mutant`` applied (None: unchanged)."""
    out = Outcome(mutant)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vmctl-mutant-") as tmp:
        work = Path(tmp)
        out.stale = _copy_driver(work, mutant)
        if out.stale:
            return out
        report = work / "report.json"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(work), env.get("PYTHONPATH")]))
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("VMCTL_URI", None)
        env.pop("VMCTL_OTHER_URI", None)
        try:
            proc = subprocess.run(
                _kit_command(report, clauses, options),
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            out.killed, out.by, out.note = True, ["hung"], f"no end in {RUN_TIMEOUT_S:g} s"
            out.seconds = time.monotonic() - started
            return out
        out.seconds = time.monotonic() - started
        data = json.loads(report.read_text()) if report.exists() else {}
        results = data.get("results", {})
        failed = sorted(c for c, r in results.items() if r.get("status") == "fail")
        leaked = data.get("leaked", [])
        out.by = failed + (["leaked"] if leaked else [])
        if failed:
            out.note = results[failed[0]].get("reason", "")
        elif leaked:
            out.note = f"leaked: {'; '.join(leaked)[:200]}"
        out.killed = bool(out.by) or proc.returncode != 0
        if out.killed and not out.by:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            out.by, out.note = [f"exit {proc.returncode}"], " / ".join(tail)[:300]
        if mutant is None and out.killed:
            out.note = (proc.stdout + proc.stderr)[-3000:]
    return out


def _check_shadowing() -> None:
    """The copy on PYTHONPATH must win over the installed (editable) driver."""
    with tempfile.TemporaryDirectory(prefix="vmctl-mutant-") as tmp:
        _copy_driver(Path(tmp), None)
        env = dict(os.environ, PYTHONPATH=tmp, PYTHONDONTWRITEBYTECODE="1")
        found = subprocess.run(
            [sys.executable, "-c", "import vmctl_sim; print(vmctl_sim.__file__)"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not found.startswith(tmp):
            raise SystemExit(f"the driver copy does not shadow the installed one: {found}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-j", "--jobs", type=int, default=2, help="kit runs at once (default 2)")
    ap.add_argument(
        "--all-clauses",
        action="store_true",
        help="run the whole kit on every mutant, not only the clauses it names",
    )
    ap.add_argument("--only", action="append", default=[], metavar="ID", help="run these")
    ap.add_argument("--list", action="store_true", help="list the catalogue and exit")
    args = ap.parse_args(argv)

    mutants = load()
    if args.only:
        unknown = sorted(set(args.only) - {m.id for m in mutants})
        if unknown:
            raise SystemExit(f"no such mutant(s): {unknown}")
        mutants = [m for m in mutants if m.id in args.only]
    if args.list:
        for m in mutants:
            mark = " (equivalent)" if m.equivalent else ""
            print(f"{m.id:40} {m.kind:17} {m.bug}{mark}")
        return 0

    started = time.monotonic()
    _check_shadowing()
    every = sorted({c for m in mutants for c in m.clauses})
    base_clauses: Sequence[str] = () if args.all_clauses else every
    base = run_one(None, base_clauses)
    if base.killed:
        print(f"the reference driver fails the kit ({', '.join(base.by)}):\n{base.note}")
        return 1
    print(f"reference driver: passes ({base.seconds:.1f} s)", flush=True)

    def job(m: Mutant) -> Outcome:
        clauses = () if args.all_clauses else m.clauses
        out = run_one(m, clauses)
        if not out.killed and not out.stale and not m.equivalent:
            again = run_one(m, clauses, {**KIT_OPTIONS, "settle_s": RETRY_SETTLE_S})
            if again.killed:
                again.note = f"killed on a second run with settle_s={RETRY_SETTLE_S}"
                again.by.append(f"(settle_s={RETRY_SETTLE_S})")
            out = again
        return out

    outcomes: list[Outcome] = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for o in pool.map(job, mutants):
            outcomes.append(o)
            m = o.mutant or Mutant("reference", "", "", "", "", [], "")
            if o.stale:
                line = f"STALE     {m.id}: {o.stale}"
            elif o.killed:
                line = f"killed    {m.id} by {', '.join(o.by)} ({o.seconds:.1f} s)"
                if m.equivalent:
                    line += "  [marked equivalent, but killed: update the catalogue]"
            elif m.equivalent:
                line = f"survived  {m.id} (equivalent: {m.equivalent})"
            else:
                line = f"SURVIVED  {m.id}: {m.bug}"
            print(line, flush=True)

    killed = [o for o in outcomes if o.killed]
    stale = [o.mutant.id for o in outcomes if o.stale and o.mutant]
    survivors = [o.mutant for o in outcomes if not o.killed and not o.stale and o.mutant]
    unexplained = [m.id for m in survivors if not m.equivalent]
    explained = [m.id for m in survivors if m.equivalent]
    print(
        f"killed {len(killed)}/{len(outcomes)}"
        + (f"; survivors: {', '.join(m.id for m in survivors)}" if survivors else "")
        + f" ({time.monotonic() - started:.0f} s)"
    )
    if explained:
        print(f"equivalent (explained in {CATALOGUE.name}): {', '.join(explained)}")
    if unexplained:
        print(f"UNEXPLAINED survivors: {', '.join(unexplained)}")
    if stale:
        print(f"STALE mutants (update {CATALOGUE.name}): {', '.join(stale)}")
    return 1 if unexplained or stale else 0


if __name__ == "__main__":
    sys.exit(main())
