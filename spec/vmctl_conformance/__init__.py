"""The vmctl conformance kit: run it against a real host to learn, clause by clause, what a
driver really does there. Its report is the verified support matrix.

Command line::

    vmctl conformance qemu:///system --other-uri qemu+tcp://10.0.0.2/system --report r.md

Python::

    report = vmctl_conformance.run("sim://", report="r.json")
    assert not report.failed and not report.leaked

Plain pytest (e.g. in a third-party driver's test suite)::

    pytest -p vmctl_conformance.plugin --pyargs vmctl_conformance.suite --vmctl-uri toy://

Every object the kit makes carries a prefix (``--vmctl-prefix``, default ``vmctl-kit-``); the
kit refuses to start on a host that already has objects with it, cleans up after each test
even when it fails, and reports anything left behind.
"""

from ._clauses import clause, load_clauses, requires
from ._expect import Mismatch, expect
from .report import ClauseResult, Report
from .runner import run

__all__ = [
    "ClauseResult",
    "Mismatch",
    "Report",
    "clause",
    "expect",
    "load_clauses",
    "requires",
    "run",
]
