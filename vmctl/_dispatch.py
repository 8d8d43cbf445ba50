"""The dispatcher: the one place where a request meets its driver.

Every driver call goes through ``Dispatcher.call`` (the deadline, the lock of a driver that is
not thread-safe, mapping of stray exceptions, reconnecting and repeating when that is safe);
every wait goes through ``await_tasks`` and ``await_states`` (the only wait loops in vmctl);
``submit`` runs requests in the background with their states read in one batched call and a
bounded number of workers.

An asyncio facade would sit on this same object: it would ``submit`` (which never blocks the
caller) and await the returned future with ``asyncio.wrap_future``; the policy stays here.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from ._deadline import Deadline
from ._errors import (
    BackendError,
    ConnectionError,
    NotFound,
    OperationTimeout,
    OutcomeUnknown,
    VmctlError,
)
from ._model import VMInfo
from ._state import PowerState, Request, allowed_from, target_of
from ._tasks import Task, TaskOutcome
from .spi import BulkPower, ChangeWaiter, Driver, Reconnectable, TaskWaiter

log = logging.getLogger("vmctl")
T = TypeVar("T")

#: How often the core reconnects within one driver call before it gives up.
MAX_RECONNECTS = 2
#: Polling back-off for drivers without ``ChangeWaiter``.
POLL_START, POLL_MAX = 0.02, 1.0
#: Background requests running at once per Hypervisor (``connect(max_concurrency=)``).
DEFAULT_MAX_CONCURRENCY = 64
#: How long the dispatcher waits for more background requests to batch with a lone one.
GATHER_S = 0.002


def _describe(tasks: Iterable[Task]) -> str:
    return ", ".join(f"{t.description} (task {t.id})" for t in tasks)


def _unknown(what: str, exc: ConnectionError, more: str) -> OutcomeUnknown:
    """The OutcomeUnknown for a request whose connection failed after it was sent."""
    unknown = OutcomeUnknown(
        f"{what}: the connection failed after the request was sent ({exc}){more}; it may "
        "or may not have been done: look before repeating it",
        sent=exc.sent,
        vendor_code=exc.vendor_code,
    )
    unknown.left_behind = exc.left_behind
    return unknown


def _direct(what: str, fn: Callable[..., T], *args: Any, deadline: Deadline, **kw: Any) -> T:
    return fn(*args, deadline=deadline, **kw)


def wait_tasks(
    driver: Driver,
    tasks: Sequence[Task],
    deadline: Deadline,
    what: str,
    *,
    call: Callable[..., Any] = _direct,
) -> list[TaskOutcome]:
    """The one task wait loop: ``driver.wait_tasks`` until every task has ended.

    OperationTimeout names the tasks still running on the host when ``deadline`` passes.
    """
    pending = list(tasks)
    outcomes: list[TaskOutcome] = []
    if pending and not isinstance(driver, TaskWaiter):
        raise BackendError(
            f"{what}: driver {driver.name!r} returned a task but does not implement TaskWaiter"
        )
    while pending:
        if deadline.expired():
            raise OperationTimeout(
                f"{what}: still running on the host after {deadline.seconds:g} s: "
                f"{_describe(pending)}",
                running=tuple(f"{t.description} (task {t.id})" for t in pending),
            )
        assert isinstance(driver, TaskWaiter)
        ended: list[TaskOutcome] = call(what, driver.wait_tasks, pending, deadline=deadline)
        if not ended:
            time.sleep(min(0.005, deadline.remaining()))  # a driver that woke for nothing
        for outcome in ended:
            if outcome.task in pending:
                pending.remove(outcome.task)
                outcomes.append(outcome)
    return outcomes


def wait_task(
    driver: Driver,
    task: Task,
    deadline: Deadline,
    what: str,
    *,
    call: Callable[..., Any] = _direct,
) -> TaskOutcome:
    """Wait for one task with the loop above; raise its error if it failed."""
    (outcome,) = wait_tasks(driver, [task], deadline, what, call=call)
    if outcome.error is not None:
        raise outcome.error
    return outcome


class Dispatcher:
    """Calls one driver under deadlines; owns waiting, retries and background requests."""

    def __init__(self, driver: Driver, uri: str, *, max_concurrency: int) -> None:
        self.driver = driver
        self.uri = uri
        self.max_concurrency = max_concurrency
        self._lock: threading.RLock | None = None if driver.thread_safe else threading.RLock()
        self._reconnect_lock = threading.Lock()
        self.generation = 0  # bumped by every reconnect
        self._executor: ThreadPoolExecutor | None = None
        self._queue: queue.SimpleQueue[_Submitted | None] = queue.SimpleQueue()
        self._feeder: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.closed = False

    # -- calling the driver ---------------------------------------------------------------

    def call(
        self,
        what: str,
        fn: Callable[..., T],
        *args: Any,
        deadline: Deadline,
        idempotent: bool = True,
        **kwargs: Any,
    ) -> T:
        """Call a driver method with ``deadline``; the only place vmctl calls a driver.

        A ConnectionError is met by reconnecting (where the driver can) and repeating the
        call if that cannot do it twice: the request never reached the host (``sent=False``)
        or it is ``idempotent``. Otherwise OutcomeUnknown is raised after the reconnect.
        """
        if self.closed:
            raise VmctlError(f"{what}: the connection to {self.uri} is closed")
        reconnects = 0
        while True:
            if deadline.expired():
                raise OperationTimeout(f"{what}: not done within {deadline.seconds:g} s")
            generation = self.generation
            try:
                return self._invoke(what, fn, args, kwargs, deadline)
            except OutcomeUnknown:
                raise
            except ConnectionError as exc:
                if not isinstance(self.driver, Reconnectable) or reconnects >= MAX_RECONNECTS:
                    raise
                safe = exc.sent is False or idempotent
                reconnects += 1
                log.info("%s: %s; reconnecting to %s", what, exc, self.uri)
                try:
                    self._reconnect(generation, what, deadline)
                except VmctlError as again:
                    # Nothing happened twice: what is wrong now (refused credentials, a host
                    # still gone) is the answer. A change that may have happened must say so.
                    if safe:
                        raise again from exc
                    raise _unknown(what, exc, f"; reconnecting failed too: {again}") from exc
                if not safe:
                    raise _unknown(what, exc, "") from exc

    def _invoke(
        self,
        what: str,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        deadline: Deadline,
    ) -> T:
        try:
            if self._lock is None:
                return fn(*args, deadline=deadline, **kwargs)
            with self._lock:
                return fn(*args, deadline=deadline, **kwargs)
        except VmctlError:
            raise
        except TimeoutError as exc:  # a socket timeout the driver did not map
            raise OperationTimeout(f"{what}: the host did not answer in time ({exc})") from exc
        except Exception as exc:
            raise BackendError(f"{what}: {type(exc).__name__}: {exc}") from exc

    def _reconnect(self, generation: int, what: str, deadline: Deadline) -> None:
        driver = self.driver
        assert isinstance(driver, Reconnectable)
        with self._reconnect_lock:
            if self.generation != generation:
                return  # another thread has reconnected meanwhile
            self._invoke(f"{what}: reconnect", driver.reconnect, (), {}, deadline)
            self.generation += 1

    # -- the only wait loops --------------------------------------------------------------

    def await_tasks(
        self, tasks: Sequence[Task], deadline: Deadline, what: str
    ) -> list[TaskOutcome]:
        """Wait until every task has ended; their outcomes, in the order they ended.
        OperationTimeout naming the tasks still running when the deadline passes."""
        return wait_tasks(self.driver, tasks, deadline, what, call=self.call)

    def await_task(self, task: Task, deadline: Deadline, what: str) -> TaskOutcome:
        """Wait for one task; raise its error if it failed."""
        return wait_task(self.driver, task, deadline, what, call=self.call)

    def read_states(self, uuids: Sequence[str], deadline: Deadline, what: str) -> dict[str, VMInfo]:
        """The current info of these VMs: one get_vm for one VM, one list_vms for several."""
        if len(uuids) == 1:
            return {uuids[0]: self.call(what, self.driver.get_vm, uuids[0], deadline=deadline)}
        wanted = set(uuids)
        infos = self.call(what, self.driver.list_vms, deadline=deadline)
        return {i.uuid: i for i in infos if i.uuid in wanted}

    def await_states(
        self,
        wanted: Mapping[str, frozenset[PowerState]],
        deadline: Deadline,
        what: str,
        known: Mapping[str, VMInfo] | None = None,
    ) -> dict[str, VMInfo]:
        """Wait until each VM (by UUID) is in one of its wanted states; their infos.

        Blocks on the driver's ``wait_changes`` where it has one, else reads the states with
        a back-off. OperationTimeout names the VMs not there when the deadline passes.
        """
        driver = self.driver
        current = dict(known or {})
        unread = [u for u in wanted if u not in current]
        if unread:
            current.update(self.read_states(unread, deadline, what))
        delay = POLL_START
        while True:
            missing = [u for u in wanted if u not in current]
            if missing:
                raise NotFound(f"{what}: VM {', '.join(missing)} no longer exists")
            left = {u: current[u] for u, states in wanted.items() if current[u].state not in states}
            if not left:
                return {u: current[u] for u in wanted}
            if deadline.expired():
                detail = "; ".join(
                    f"VM {i.name!r} is still {i.state.value} (waiting for "
                    f"{'/'.join(sorted(s.value for s in wanted[u]))})"
                    for u, i in left.items()
                )
                raise OperationTimeout(f"{what}: {detail} after {deadline.seconds:g} s")
            if isinstance(driver, ChangeWaiter):
                changed = self.call(what, driver.wait_changes, left, deadline=deadline)
                for uuid, info in changed.items():
                    if uuid not in wanted:
                        continue
                    if info is None:
                        raise NotFound(
                            f"{what}: VM {current[uuid].name!r} was deleted while waiting for it"
                        )
                    current[uuid] = info
                if not changed:
                    time.sleep(min(0.005, deadline.remaining()))
            else:
                time.sleep(min(delay, deadline.remaining()))
                delay = min(delay * 1.5, POLL_MAX)
                fresh = self.read_states(list(left), deadline, what)
                for uuid in left:
                    if uuid in fresh:
                        current[uuid] = fresh[uuid]
                    else:
                        current.pop(uuid, None)

    # -- background requests --------------------------------------------------------------

    def submit(
        self,
        uuid: str,
        run: Callable[[VMInfo | None, Issued | None], T],
        deadline: Deadline,
        what: str,
        *,
        bulk: Request | None = None,
    ) -> Future[T]:
        """Run ``run(known_info, issued)`` in the background; never blocks the caller on
        the host.

        Requests submitted together have their VMs' states read in one batched call (handed
        to ``run`` as ``known_info``); at most ``max_concurrency`` run at once. Starts and
        power-offs (``bulk=``) submitted together go to the driver's ``BulkPower`` in one
        call where it has one; ``issued`` is then that call's result for the VM.
        """
        if self.closed:
            raise VmctlError(f"{what}: the connection to {self.uri} is closed")
        future: Future[T] = Future()
        self._ensure_started()
        self._queue.put(_Submitted(uuid, run, deadline, what, future, bulk))
        return future

    def run_in_background(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on a worker (for continuations that need no batching)."""
        self._ensure_started()
        assert self._executor is not None
        return self._executor.submit(fn)

    def _ensure_started(self) -> None:
        if self._feeder is not None:
            return
        with self._start_lock:
            if self._feeder is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self.max_concurrency, thread_name_prefix="vmctl-op"
                )
                self._feeder = threading.Thread(
                    target=self._feed, name="vmctl-dispatch", daemon=True
                )
                self._feeder.start()

    def _feed(self) -> None:
        """Take what was submitted, in batches: read the batch's states once, then hand each
        request to a worker."""
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            try:  # requests submitted in a loop come microseconds apart: let them gather
                more = self._queue.get(timeout=GATHER_S)
            except queue.Empty:
                more = None
            else:
                if more is None:
                    self._queue.put(None)
                else:
                    batch.append(more)
            while more is not None:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            try:
                self._dispatch(batch)
            except BaseException as exc:  # a bug here must not strand the callers
                log.exception("dispatching %d requests failed", len(batch))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)

    def _dispatch(self, batch: list[_Submitted]) -> None:
        """Read the batch's states in one call, issue a bulk start where the driver has
        one, and hand each request to a worker."""
        known: dict[str, VMInfo] = {}
        issued: dict[str, Issued] = {}
        if len(batch) > 1:
            deadline = min((b.deadline for b in batch), key=lambda d: d.at)
            try:
                known = self.read_states(
                    [b.uuid for b in batch], deadline, f"read the states of {len(batch)} VMs"
                )
                for request in (Request.START, Request.POWER_OFF):
                    issued.update(self._bulk(request, batch, known, deadline))
            except VmctlError as exc:  # each request reads its own state instead
                log.debug("batched state read failed: %s", exc)
        assert self._executor is not None
        for item in batch:
            if item.future.set_running_or_notify_cancel():
                self._executor.submit(item.execute, known.get(item.uuid), issued.get(item.uuid))

    def _bulk(
        self,
        request: Request,
        batch: list[_Submitted],
        known: Mapping[str, VMInfo],
        deadline: Deadline,
    ) -> dict[str, Issued]:
        """One bulk call for the batch's requests of this kind that their states allow,
        where the driver has one. The VMs it covers get its result and one shared wait; the
        others go the ordinary way."""
        driver = self.driver
        if not isinstance(driver, BulkPower):
            return {}
        allowed = allowed_from(request)
        uuids = [
            b.uuid
            for b in batch
            if b.bulk is request and b.uuid in known and known[b.uuid].state in allowed
        ]
        if len(uuids) < 2:
            return {}
        what = f"{request.value} {len(uuids)} VMs"
        many = driver.start_many if request is Request.START else driver.power_off_many
        results = self.call(what, many, uuids, deadline=deadline, idempotent=False)
        covered = {u: results[u] for u in uuids if u in results}
        sent = [u for u, r in covered.items() if not isinstance(r, VmctlError)]
        tasks = list({id(r): r for r in covered.values() if isinstance(r, Task)}.values())
        target = frozenset({target_of(request)})
        assert self._executor is not None

        def wait_together() -> BulkResult:
            """One wait for the bulk's tasks and then for all its VMs' states, so that 200
            requests do not make 200 waits."""
            outcomes = self.await_tasks(tasks, deadline, what) if tasks else []
            failed = {id(o.task): o.error for o in outcomes if o.error is not None}
            wanted = {u: target for u in sent if id(covered[u]) not in failed}
            before = {u: known[u] for u in wanted} if isinstance(driver, ChangeWaiter) else None
            infos = self.await_states(wanted, deadline, what, known=before) if wanted else {}
            return BulkResult(infos, failed)

        waiter = self._executor.submit(wait_together) if sent else None
        return {
            u: Issued(r, None if isinstance(r, VmctlError) else waiter) for u, r in covered.items()
        }

    def close(self) -> None:
        """Stop taking requests; wait for the running ones to end."""
        if self.closed:
            return
        self.closed = True
        # Closed from one of our own threads (a finalizer run there): do not join ourselves.
        own = threading.current_thread().name.startswith(("vmctl-op", "vmctl-dispatch"))
        if self._feeder is not None:
            self._queue.put(None)
            if not own:
                self._feeder.join()
        if self._executor is not None:
            self._executor.shutdown(wait=not own)


class BulkResult:
    """What the one wait of a bulk call found: the VMs' infos, and the failed tasks' errors
    (by the task's id())."""

    __slots__ = ("failed", "infos")

    def __init__(self, infos: dict[str, VMInfo], failed: dict[int, VmctlError]) -> None:
        self.infos = infos
        self.failed = failed


class Issued:
    """What a bulk call did for one VM: a task, None (taken) or the error for that VM, and
    the shared wait that ends when all the bulk's VMs are there."""

    __slots__ = ("outcome", "waiter")

    def __init__(
        self, outcome: Task | VmctlError | None, waiter: Future[BulkResult] | None = None
    ) -> None:
        self.outcome = outcome
        self.waiter = waiter

    def result(self, uuid: str) -> VMInfo:
        """This VM's info once the bulk's shared wait is done; its error if it failed."""
        if isinstance(self.outcome, VmctlError):
            raise self.outcome
        assert self.waiter is not None
        done = self.waiter.result()
        error = done.failed.get(id(self.outcome))
        if error is not None:
            raise error
        return done.infos[uuid]


class _Submitted:
    __slots__ = ("bulk", "deadline", "future", "run", "uuid", "what")

    def __init__(
        self,
        uuid: str,
        run: Callable[[VMInfo | None, Issued | None], Any],
        deadline: Deadline,
        what: str,
        future: Future[Any],
        bulk: Request | None,
    ) -> None:
        self.uuid = uuid
        self.run = run
        self.deadline = deadline
        self.what = what
        self.future = future
        self.bulk = bulk

    def execute(self, known: VMInfo | None, issued: Issued | None) -> None:
        try:
            result = self.run(known, issued)
        except BaseException as exc:
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)
