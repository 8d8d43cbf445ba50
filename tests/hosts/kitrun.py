"""Run the conformance kit on a test host the way an operator does after sourcing the host's
env file: ``vmctl conformance "$VMCTL_URI" --other-uri "$VMCTL_OTHER_URI"``, with the
variables of ``.hosts/<name>.env`` (``VMCTL_KIT_OPTIONS`` included) and no option passed by
hand. The kit tests of every backend use it, so CI runs the kit exactly as the README says.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from vmctl_conformance import Report

#: The CLI of the environment the tests run in.
VMCTL = Path(sys.executable).with_name("vmctl")


def run_kit(
    env: Mapping[str, str],
    report: Path,
    *,
    uri_var: str = "VMCTL_URI",
    other_var: str | None = "VMCTL_OTHER_URI",
    timeout: float = 3600,
) -> Report:
    """``vmctl conformance "$<uri_var>" [--other-uri "$<other_var>"] --report <report>``
    (without ``other_var``: ``VMCTL_OTHER_URI= vmctl conformance "$<uri_var>" ...``)
    in bash, with ``env`` (an env file's variables) over this environment without its own
    VMCTL_* variables. Returns the report (its ``output`` is what the CLI printed)."""
    command = f'"$VMCTL_CLI" conformance "${uri_var}"'
    if other_var:
        command += f' --other-uri "${other_var}"'
    else:  # no second host, whatever the env file says (its other URI is another host's)
        command = "VMCTL_OTHER_URI= " + command
    command += ' --report "$VMCTL_KIT_REPORT"'
    base = {k: v for k, v in os.environ.items() if not k.startswith("VMCTL_")}
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", "-c", command],
        env={**base, **env, "VMCTL_CLI": str(VMCTL), "VMCTL_KIT_REPORT": str(report)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = proc.stdout + proc.stderr
    if not report.is_file():
        raise AssertionError(f"`{command}` wrote no report (exit {proc.returncode}):\n{output}")
    result = Report.from_json(report.read_text())
    result.output = output + f"\n(exit {proc.returncode}, {time.monotonic() - t0:.1f} s)"
    return result
