"""Fleets: many connections, of any vendors, read and driven together (issue 14, first cut).

``vmctl.Fleet(members, executor=None)`` takes URIs and/or ``Hypervisor`` objects. Each
operation runs once per member, concurrently on the executor, and returns a ``FleetResult``:
the value for each member that answered and the error for each that did not: a member that
is down or refuses is reported, never fatal to the others.

Executors: any ``concurrent.futures.Executor``. With the default (threads) or a
``ThreadPoolExecutor``, the fleet connects once per URI and keeps the connections. With any
other executor (a ``ProcessPoolExecutor``, a Dask ``Client.get_executor()``), a connection
cannot travel to the worker: each task connects to its URI there, runs the function and
closes; the function must then be picklable (a module-level function) and only URIs can be
members. Credentials are never sent to workers: they come from the worker's environment
(``VMCTL_PASSWORD``...) as for ``vmctl.connect``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Generic, TypeVar

from attrs import frozen

from ._errors import ValidationError, VmctlError

if TYPE_CHECKING:
    from ._hosts import Host
    from ._hypervisor import Hypervisor
    from ._model import VMInfo, VMStats

T = TypeVar("T")
#: Threads of the default executor at most.
MAX_THREADS = 32


@frozen
class FleetResult(Generic[T]):
    """What one fleet operation gave: ``values`` by member (its URI), ``errors`` by member
    for those that failed, and the wall time."""

    values: Mapping[str, T]
    errors: Mapping[str, VmctlError]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.errors

    def __str__(self) -> str:
        head = f"{len(self.values)} answered, {len(self.errors)} failed in {self.seconds:.2f} s"
        return "\n".join([head, *(f"  {uri}: {err}" for uri, err in sorted(self.errors.items()))])


def _remote(uri: str, fn: Callable[[Hypervisor], T]) -> T:
    """Run in a worker: connect, call, close."""
    from ._connect import connect

    with connect(uri) as hv:
        return fn(hv)


def _as_error(exc: BaseException) -> VmctlError:
    if isinstance(exc, VmctlError):
        return exc
    err = VmctlError(f"{type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def _list_vms(hv: Hypervisor) -> list[VMInfo]:
    return hv.list_vms()


def _hosts(hv: Hypervisor) -> list[Host]:
    return hv.hosts()


def _stats(hv: Hypervisor) -> dict[str, VMStats]:
    return hv.stats()


class Fleet:
    """Many connections read and driven together. A context manager; ``close()`` closes
    the connections it made (not the ``Hypervisor`` objects it was given)."""

    def __init__(
        self,
        members: Sequence[str | Hypervisor],
        *,
        executor: Executor | None = None,
        connect: Callable[[str], Hypervisor] | None = None,
    ) -> None:
        from ._connect import connect as vmctl_connect
        from ._hypervisor import Hypervisor

        if isinstance(members, (str, bytes)) or not isinstance(members, Sequence) or not members:
            raise ValidationError("give a list of URIs or Hypervisor objects", field="members")
        if not all(isinstance(m, (str, Hypervisor)) and m for m in members):
            raise ValidationError("give a list of URIs or Hypervisor objects", field="members")
        if executor is not None and not isinstance(executor, Executor):
            raise ValidationError("expected a concurrent.futures.Executor", field="executor")
        keys = [m if isinstance(m, str) else str(m.uri) for m in members]
        if len(set(keys)) != len(keys):
            raise ValidationError("a member is given twice", field="members")
        self._own_executor = executor is None
        self._executor: Executor = executor or ThreadPoolExecutor(
            max_workers=min(MAX_THREADS, len(members)), thread_name_prefix="vmctl-fleet"
        )
        self._local = isinstance(self._executor, ThreadPoolExecutor)
        if not self._local and not all(isinstance(m, str) for m in members):
            raise ValidationError(
                "with a non-thread executor the members must be URIs (a connection cannot "
                "be sent to another process)",
                field="members",
            )
        self._connect = connect or vmctl_connect
        self._members = keys
        self._given: dict[str, Hypervisor] = {
            str(m.uri): m for m in members if isinstance(m, Hypervisor)
        }
        self._made: dict[str, Hypervisor] = {}
        self._refused: dict[str, VmctlError] = {}
        if self._local:
            self._connect_all()

    @property
    def members(self) -> list[str]:
        return list(self._members)

    def _connect_all(self) -> None:
        todo = [u for u in self._members if u not in self._given]
        futures = {u: self._executor.submit(self._connect, u) for u in todo}
        for uri, future in futures.items():
            try:
                self._made[uri] = future.result()
            except BaseException as exc:
                self._refused[uri] = _as_error(exc)

    def _hv(self, uri: str) -> Hypervisor:
        hv = self._given.get(uri) or self._made.get(uri)
        if hv is None:
            raise self._refused[uri]
        return hv

    def run(self, fn: Callable[[Hypervisor], T]) -> FleetResult[T]:
        """``fn(hv)`` on every member at once; each member's value or error."""
        if not callable(fn):
            raise ValidationError("must be callable", field="fn")
        started = time.monotonic()
        futures: dict[str, Future[T]] = {}
        errors: dict[str, VmctlError] = {}
        for uri in self._members:
            if self._local:
                if uri in self._refused:
                    errors[uri] = self._refused[uri]
                    continue
                futures[uri] = self._executor.submit(fn, self._hv(uri))
            else:
                futures[uri] = self._executor.submit(_remote, uri, fn)
        values: dict[str, T] = {}
        for uri, future in futures.items():
            try:
                values[uri] = future.result()
            except BaseException as exc:
                errors[uri] = _as_error(exc)
        return FleetResult(values, errors, time.monotonic() - started)

    def list_vms(self) -> FleetResult[list[VMInfo]]:
        """Every member's VMs (one batched listing each)."""
        return self.run(_list_vms)

    def hosts(self) -> FleetResult[list[Host]]:
        """Every member's hosts (``Hypervisor.hosts``)."""
        return self.run(_hosts)

    def stats(self) -> FleetResult[dict[str, VMStats]]:
        """Every member's VM counters (members without the capability report NotSupported)."""
        return self.run(_stats)

    def close(self) -> None:
        """Close the connections the fleet made, and its own executor."""
        for hv in self._made.values():
            hv.close()
        self._made.clear()
        if self._own_executor:
            self._executor.shutdown(wait=True)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def __repr__(self) -> str:
        return f"<Fleet {len(self._members)} members, {len(self._refused)} unreachable>"
