"""``EventStream``: events from a subscription, filtered, with an overall timeout."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from ._deadline import Deadline, check_seconds
from ._errors import BackendError, VmctlError
from ._model import Event, EventKind
from .spi import EventSource

T = TypeVar("T")


def _guarded(what: str, fn: Callable[[float], T], arg: float) -> T:
    """Read the event source; an exception outside vmctl's tree becomes BackendError."""
    try:
        return fn(arg)
    except VmctlError:
        raise
    except Exception as exc:
        raise BackendError(f"{what}: {type(exc).__name__}: {exc}") from exc


class EventStream:
    """An iterator of events from a subscription, with filters and an overall timeout."""

    def __init__(
        self,
        source: EventSource,
        kinds: frozenset[EventKind] | None,
        vm_uuid: str | None,
        timeout: Deadline,
    ) -> None:
        self._source = source
        self._kinds = kinds
        self._vm = vm_uuid.lower() if vm_uuid else None
        self._deadline = None if timeout.at == math.inf else timeout.at
        self._closed = False

    def _wanted(self, event: Event) -> bool:
        return (self._kinds is None or event.kind in self._kinds) and (
            self._vm is None or event.vm_uuid.lower() == self._vm
        )

    def next(self, timeout: float | None = None) -> Event | None:
        """The next matching event within ``timeout`` seconds (and the stream's own
        timeout), or None."""
        if timeout is not None and timeout != 0:
            check_seconds(timeout, "timeout")
        limit = None if timeout is None else time.monotonic() + timeout
        while not self._closed:
            ends = [t for t in (limit, self._deadline) if t is not None]
            left = min(ends) - time.monotonic() if ends else 1.0
            if left <= 0:
                return None
            event = _guarded("next event", self._source.next_event, min(left, 1.0))
            if event is not None and self._wanted(event):
                return event
        return None

    def drain(self) -> list[Event]:
        """Every matching event already delivered, without waiting."""
        out: list[Event] = []
        while True:
            event = _guarded("next event", self._source.next_event, 0.0)
            if event is None:
                return out
            if self._wanted(event):
                out.append(event)

    def __iter__(self) -> Iterator[Event]:
        while not self._closed:
            if self._deadline is not None and time.monotonic() >= self._deadline:
                return
            event = self.next(1.0)
            if event is not None:
                yield event

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._source.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
