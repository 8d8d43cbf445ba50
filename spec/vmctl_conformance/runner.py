"""Run the kit in a subprocess and read its report back."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from .report import Report


def command(
    uri: str,
    *,
    other_uri: str | None = None,
    report: str | Path,
    options: Mapping[str, str] | None = None,
    prefix: str | None = None,
    pytest_args: Sequence[str] = (),
) -> list[str]:
    """The pytest command line that runs the kit."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "vmctl_conformance.plugin",
        "-p",
        "no:cacheprovider",
        "--pyargs",
        "vmctl_conformance.suite",
        "--vmctl-uri",
        uri,
        "--vmctl-report",
        str(report),
        "-o",
        "addopts=",
        "-o",
        "console_output_style=classic",
    ]
    if other_uri:
        cmd += ["--vmctl-other-uri", other_uri]
    if prefix:
        cmd += ["--vmctl-prefix", prefix]
    for key, value in (options or {}).items():
        cmd += ["--vmctl-opt", f"{key}={value}"]
    return cmd + list(pytest_args)


def run(
    uri: str,
    *,
    other_uri: str | None = None,
    report: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    options: Mapping[str, str] | None = None,
    prefix: str | None = None,
    pytest_args: Sequence[str] = (),
    quiet: bool = True,
    cwd: str | Path | None = None,
) -> Report:
    """Run the kit against ``uri`` and return its report (also written to ``report`` as
    .json or .md when given). ``env`` is added to this process's environment."""
    with tempfile.TemporaryDirectory(prefix="vmctl-kit-") as tmp:
        json_path = Path(tmp) / "report.json"
        args = list(pytest_args) + (["-q"] if quiet else ["-v"])
        cmd = command(
            uri,
            other_uri=other_uri,
            report=json_path,
            options=options,
            prefix=prefix,
            pytest_args=args,
        )
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run(
            cmd, env=full_env, cwd=str(cwd or tmp), text=True, capture_output=quiet
        )
        if not json_path.exists():
            out = (proc.stdout or "") + (proc.stderr or "")
            raise RuntimeError(
                f"the kit produced no report (exit {proc.returncode}):\n{out[-4000:]}"
            )
        result = Report.from_json(json_path.read_text())
        result.output = (proc.stdout or "") + (proc.stderr or "")
    if report is not None:
        result.write(report)
    return result
