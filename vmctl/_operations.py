"""Operations: requests running in the background (``wait=False``) and waiting on many."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._errors import OperationTimeout, ValidationError

if TYPE_CHECKING:
    import concurrent.futures as cf

T = TypeVar("T")


def _seconds(timeout: float | None) -> float | None:
    """A wait's timeout: None (no limit) or a finite number >= 0 (NaN would never end)."""
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or timeout < 0
    ):
        raise ValidationError(
            f"must be None or a finite number of seconds >= 0, got {timeout!r}", field="timeout"
        )
    return float(timeout)


class Operation(Generic[T]):
    """A request that was started and may still be running.

    >>> op = vm.start(wait=False)
    >>> info = op.result(timeout=60)   # the VMInfo once RUNNING, or the request's error
    """

    def __init__(self, description: str, future: cf.Future[T]) -> None:
        self.description = description
        self._future = future

    def done(self) -> bool:
        """True once the request has finished, well or not."""
        return self._future.done()

    def result(self, timeout: float | None = None) -> T:
        """The request's result; re-raises its error. OperationTimeout if not done in time
        (the request keeps going)."""
        import concurrent.futures as cf

        timeout = _seconds(timeout)
        try:
            return self._future.result(timeout)
        except cf.TimeoutError:
            if self._future.done():  # the request's own OperationTimeout (a TimeoutError)
                raise
            raise OperationTimeout(
                f"{self.description}: not finished after {timeout} s; it is still running"
            ) from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The request's error, or None if it succeeded."""
        import concurrent.futures as cf

        timeout = _seconds(timeout)
        try:
            return self._future.exception(timeout)
        except cf.TimeoutError:
            if self._future.done():
                raise
            raise OperationTimeout(f"{self.description}: not finished after {timeout} s") from None

    def __repr__(self) -> str:
        return f"<Operation {self.description!r} {'done' if self.done() else 'running'}>"


def wait_all(
    operations: Iterable[Operation[Any]], timeout: float | None = None
) -> list[Operation[Any]]:
    """Wait until every operation has finished and return them (check each one's
    ``exception()``). Raises OperationTimeout naming those still running after ``timeout``."""
    import concurrent.futures as cf

    timeout = _seconds(timeout)
    ops = list(operations)
    _, pending = cf.wait([op._future for op in ops], timeout=timeout)
    if pending:
        still = [op.description for op in ops if op._future in pending]
        raise OperationTimeout(
            f"{len(still)} of {len(ops)} operations still running after "
            f"{timeout} s: {', '.join(still)}"
        )
    return ops


def as_completed(
    operations: Iterable[Operation[Any]], timeout: float | None = None
) -> Iterator[Operation[Any]]:
    """Yield operations as they finish; OperationTimeout if some are still running after
    ``timeout``."""
    import concurrent.futures as cf

    timeout = _seconds(timeout)
    ops = {op._future: op for op in operations}
    try:
        for fut in cf.as_completed(ops, timeout=timeout):
            yield ops[fut]
    except cf.TimeoutError:
        still = [op.description for f, op in ops.items() if not f.done()]
        raise OperationTimeout(f"still running after {timeout} s: {', '.join(still)}") from None
