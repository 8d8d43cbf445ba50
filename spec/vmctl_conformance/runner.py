"""Run the kit (in a subprocess, or in this process) and read its report back.

A driver installed through the ``vmctl.drivers`` entry points is tested in a subprocess (a
crash or a hang of the driver cannot take the caller down). A driver added with
``vmctl.register()`` exists only in this process, so the kit runs here, with pytest's
``pytest.main``: registering a driver and certifying it go together.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from .report import Report

#: pytest's exit code when no test was selected.
NO_TESTS = 5


def kit_args(
    uri: str,
    *,
    other_uri: str | None = None,
    report: str | Path,
    options: Mapping[str, str] | None = None,
    prefix: str | None = None,
    clauses: Sequence[str] = (),
    inifile: str | Path | None = None,
    pytest_args: Sequence[str] = (),
) -> list[str]:
    """The pytest arguments that run the kit."""
    args = [
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
    if inifile is not None:
        # the kit's own settings, not those of the project it is started from
        args += ["-c", str(inifile), "--rootdir", str(Path(inifile).parent)]
    if other_uri:
        args += ["--vmctl-other-uri", other_uri]
    if prefix:
        args += ["--vmctl-prefix", prefix]
    for cid in clauses:
        args += ["--vmctl-clause", cid]
    for key, value in (options or {}).items():
        args += ["--vmctl-opt", f"{key}={value}"]
    return args + list(pytest_args)


def command(
    uri: str,
    *,
    other_uri: str | None = None,
    report: str | Path,
    options: Mapping[str, str] | None = None,
    prefix: str | None = None,
    clauses: Sequence[str] = (),
    inifile: str | Path | None = None,
    pytest_args: Sequence[str] = (),
) -> list[str]:
    """The command line that runs the kit in a subprocess."""
    return [
        sys.executable,
        "-m",
        "pytest",
        *kit_args(
            uri,
            other_uri=other_uri,
            report=report,
            options=options,
            prefix=prefix,
            clauses=clauses,
            inifile=inifile,
            pytest_args=pytest_args,
        ),
    ]


def registered_here(uri: str) -> bool:
    """Whether ``uri``'s scheme is served by a driver added with ``vmctl.register()`` in this
    process (which a subprocess would not see)."""
    from vmctl import URI, _registry

    try:
        scheme = URI.parse(uri).scheme
    except Exception:
        return False
    return scheme in _registry._runtime


@contextlib.contextmanager
def _environ(extra: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _in_process(args: list[str], env: Mapping[str, str], quiet: bool) -> tuple[int, str]:
    import pytest

    buffer = io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_environ(env))
        if quiet:
            stack.enter_context(contextlib.redirect_stdout(buffer))
            stack.enter_context(contextlib.redirect_stderr(buffer))
        code = pytest.main(args, plugins=[])
    return int(code), buffer.getvalue()


def run(
    uri: str,
    *,
    other_uri: str | None = None,
    report: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    options: Mapping[str, str] | None = None,
    prefix: str | None = None,
    clauses: Sequence[str] = (),
    pytest_args: Sequence[str] = (),
    quiet: bool = True,
    cwd: str | Path | None = None,
    in_process: bool | None = None,
) -> Report:
    """Run the kit against ``uri`` and return its report (also written to ``report`` as
    .json or .md when given). ``env`` is added to this process's environment.

    ``clauses`` keeps only the kit tests naming a clause with one of these ids or id
    prefixes (``"LIFE-START"``). ``in_process`` runs pytest in this process; by default it
    does so exactly when the URI's scheme was added with ``vmctl.register()``.
    """
    if in_process is None:
        in_process = registered_here(uri)
    with tempfile.TemporaryDirectory(prefix="vmctl-kit-") as tmp:
        json_path = Path(tmp) / "report.json"
        inifile = Path(tmp) / "pytest.ini"
        inifile.write_text("[pytest]\n")
        args = kit_args(
            uri,
            other_uri=other_uri,
            report=json_path,
            options=options,
            prefix=prefix,
            clauses=clauses,
            inifile=inifile,
            pytest_args=[*pytest_args, "-q" if quiet else "-v"],
        )
        if in_process:
            code, output = _in_process(args, env or {}, quiet)
        else:
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", *args],
                env={**os.environ, **(env or {})},
                cwd=str(cwd or tmp),
                text=True,
                capture_output=quiet,
            )
            code, output = proc.returncode, (proc.stdout or "") + (proc.stderr or "")
        if not json_path.exists():
            if code == NO_TESTS:
                wanted = ", ".join(clauses) or " ".join(pytest_args) or "(everything)"
                raise RuntimeError(
                    f"no kit test matches {wanted}; clause ids are listed in spec/SPEC.md "
                    "(e.g. LIFE-START-1, or a prefix such as LIFE-START)"
                )
            raise RuntimeError(f"the kit produced no report (exit {code}):\n{output[-4000:]}")
        result = Report.from_json(json_path.read_text())
        result.output = output
    if report is not None:
        result.write(report)
    return result
