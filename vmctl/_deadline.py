"""Deadlines: the one clock every request runs under.

The core turns a request's timeout into a ``Deadline`` once, when the request is made, and
hands that same deadline to every driver call the request makes (the checks, the vendor call,
the waiting). A driver bounds each vendor call it makes by ``deadline.remaining()`` (a socket
timeout, a task wait, a long poll), so a request ends within its timeout whatever the host
does.
"""

from __future__ import annotations

import math
import time

from ._errors import OperationTimeout, ValidationError

_NEVER = math.inf


def check_seconds(value: object, field: str, *, allow_none: bool = True) -> float | None:
    """A timeout given by a user: a positive, finite number of seconds (or None).

    NaN, infinities, booleans, zero and negative numbers are refused with ValidationError:
    ``float("nan") <= 0`` is False, so a plain comparison lets NaN through and a wait on it
    never ends.
    """
    if value is None:
        if allow_none:
            return None
        raise ValidationError("a number of seconds is required", field=field)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(
            f"must be a number of seconds, got {type(value).__name__} {value!r}", field=field
        )
    if not math.isfinite(value) or value <= 0:
        raise ValidationError(
            f"must be a positive, finite number of seconds, got {value}", field=field
        )
    return float(value)


class Deadline:
    """A point in time (``time.monotonic()``) by which a request must end.

    >>> d = Deadline.after(30)
    >>> sock.settimeout(d.bound(60))     # one vendor call: at most 60 s, never past the deadline
    >>> d.remaining()                    # seconds left, 0.0 once passed
    """

    __slots__ = ("at", "seconds")

    def __init__(self, at: float, seconds: float) -> None:
        self.at = at
        self.seconds = seconds

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        """The deadline ``seconds`` from now; ``None`` never passes."""
        if seconds is None:
            return cls(_NEVER, _NEVER)
        return cls(time.monotonic() + seconds, seconds)

    @classmethod
    def never(cls) -> Deadline:
        return cls(_NEVER, _NEVER)

    def remaining(self) -> float:
        """Seconds left (``inf`` for a deadline that never passes, 0.0 once passed)."""
        if self.at == _NEVER:
            return _NEVER
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return self.at != _NEVER and time.monotonic() >= self.at

    def bound(self, seconds: float | None) -> float:
        """``seconds`` (e.g. an RPC timeout), cut to what is left; at least 1 ms so a socket
        timeout of 0 (non-blocking) is never produced."""
        left = self.remaining()
        if seconds is not None:
            left = min(left, seconds)
        return max(left, 0.001)

    def sooner(self, seconds: float | None) -> Deadline:
        """This deadline or ``seconds`` from now, whichever comes first."""
        other = Deadline.after(seconds)
        return other if other.at < self.at else self

    def check(self, what: str) -> None:
        """Raise OperationTimeout if the deadline has passed."""
        if self.expired():
            raise OperationTimeout(f"{what}: no time left (timeout {self.seconds:g} s)")

    def __repr__(self) -> str:
        if self.at == _NEVER:
            return "Deadline(never)"
        return f"Deadline({self.remaining():.3f} s left of {self.seconds:g} s)"
