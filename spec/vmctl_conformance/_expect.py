"""Failure notes that say how: what was checked, the expected value and the actual one.

Clauses check with plain ``assert actual == expected`` (or ``is``, ``in``...): the kit's
plugin rewrites such a comparison's message to ``expected X, got Y`` and puts the statement
in the note. Where the statement alone would not say what was looked at, a clause calls
:func:`expect` with a description instead.
"""

from __future__ import annotations

import enum
from typing import Any

#: How long a value shown in a note may be.
MAX_SHOWN = 160


class Mismatch(AssertionError):
    """A checked value differs from the expected one (raised by :func:`expect`)."""

    def __init__(self, what: str, expected: Any, actual: Any, detail: str = "") -> None:
        self.what = what
        self.expected = expected
        self.actual = actual
        self.detail = detail
        text = f"{what}: expected {show(expected)}, got {show(actual)}"
        super().__init__(f"{text} ({detail})" if detail else text)


def show(value: Any) -> str:
    """A short, readable spelling of a value for a note (an enum member by its value)."""
    if isinstance(value, enum.Enum):
        text = str(value.value)
    elif isinstance(value, (set, frozenset)):
        text = "{" + ", ".join(sorted(show(v) for v in value)) + "}" if value else "{}"
    else:
        text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def expect(actual: Any, expected: Any, what: str, detail: str = "") -> None:
    """Raise :class:`Mismatch` unless ``actual == expected`` (``is`` for enum members)."""
    same = actual is expected if isinstance(expected, enum.Enum) else actual == expected
    if not same:
        raise Mismatch(what, expected, actual, detail)


def compare_note(op: str, left: Any, right: Any) -> str | None:
    """The note for a failed ``assert left OP right`` (left the actual value, right the
    expected one, as the kit's clauses write them), or None to keep pytest's own."""
    if op in ("==", "is"):
        return f"expected {show(right)}, got {show(left)}"
    if op in ("!=", "is not"):
        return f"expected anything but {show(right)}, got it"
    if op == "in":
        return f"expected {show(left)} to be among {show(right)}"
    if op == "not in":
        return f"expected {show(left)} not to be among {show(right)}, but it is"
    if op in ("<", "<=", ">", ">="):
        return f"expected a value {op} {show(right)}, got {show(left)}"
    return None


#: How long a failure's note may be (the report keeps it whole up to here).
MAX_NOTE = 600


def _where(item: Any, excinfo: Any) -> str:
    """The statement of the clause's test that failed (the innermost frame in its module)."""
    path = getattr(item, "path", None)
    for entry in reversed(list(excinfo.traceback)):
        if path is not None and entry.path == path:
            try:
                statement = " ".join(str(entry.statement).split())
            except Exception:  # no source (e.g. a frozen module): the line number will do
                statement = ""
            line = f"line {entry.lineno + 1}"
            return f"`{statement}` ({line})" if statement else line
    return ""


def _detail(exc: BaseException) -> str:
    if isinstance(exc, Mismatch):
        return str(exc)
    text = str(exc).strip()
    if isinstance(exc, AssertionError):
        lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
        if not lines:
            return "assertion failed"
        first = lines[0].removeprefix("assert ").strip()
        # pytest's "+ where" lines say what a bare value (False, None...) was made of; after
        # a clause's own message comes the comparison ("assert expected X, got Y")
        extra = [
            line.removeprefix("assert ").strip()
            for line in lines[1:3]
            if line.startswith(("+", "where", "assert "))
        ]
        return "; ".join([first, *extra])
    if type(exc).__name__ == "Failed" and text.startswith("DID NOT RAISE"):
        return f"expected {text.removeprefix('DID NOT RAISE').strip()} to be raised, nothing was"
    return f"raised {type(exc).__name__}: {' '.join(text.split())}"


def failure_note(item: Any, excinfo: Any, longrepr: str = "") -> str:
    """The note of a failed kit test: its name, the statement that failed, and how (the
    expected and actual values of a comparison, or the exception the driver raised)."""
    if excinfo is None:
        last = longrepr.strip().splitlines()[-1] if longrepr.strip() else ""
        return f"{item.name}: {last}"[:MAX_NOTE]
    where = _where(item, excinfo)
    note = f"{item.name}: {where + ': ' if where else ''}{_detail(excinfo.value)}"
    return note if len(note) <= MAX_NOTE else note[: MAX_NOTE - 3] + "..."
