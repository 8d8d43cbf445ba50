"""The dispatcher: one deadline per request, the only wait loops, retries only when safe,
bulk requests without round trips in the caller. Each test here failed on the core before
the dispatcher (issue 8)."""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

import vmctl
from vmctl import PowerState, VMSpec
from vmctl.spi import BulkPower, Deadline, Reconnectable, Task, TaskOutcome, TaskWaiter
from vmctl_sim import SimDriver

S = PowerState


@pytest.fixture
def registered() -> Iterator[Any]:
    names: list[str] = []

    def register(name: str, cls: type) -> str:
        vmctl.register(name, cls, clobber=True)
        names.append(name)
        return f"{name}://h"

    yield register
    for name in names:
        vmctl.unregister(name)


# -- a driver whose start is a slow vendor task --------------------------------------------


class SlowTasks(SimDriver, TaskWaiter):
    """start() returns a task the 'host' finishes after ``task_s`` seconds."""

    name = "slowtasks"
    task_s = 4.0

    def start(self, uuid: str, *, deadline: Deadline) -> Task | None:
        done = threading.Event()

        def finish() -> None:
            SimDriver.start(self, uuid, deadline=Deadline.never())
            done.set()

        threading.Timer(self.task_s, finish).start()
        return Task(id=f"task-{uuid[:8]}", description=f"power on {uuid[:8]}", handle=done)

    def wait_tasks(self, tasks: Sequence[Task], *, deadline: Deadline) -> list[TaskOutcome]:
        first = tasks[0].handle
        first.wait(deadline.remaining())
        return [TaskOutcome(t) for t in tasks if t.handle.is_set()]


@pytest.mark.slow
def test_request_timeout_bounds_the_vendor_task(registered: Any) -> None:
    """On Xen a start(timeout=1) with a 4 s host task returned RUNNING after 4.1 s."""
    with vmctl.connect(registered("slowtasks", SlowTasks)) as hv:
        vm = hv.create_vm(VMSpec(name="v"))
        started = time.monotonic()
        with pytest.raises(vmctl.OperationTimeout) as err:
            vm.start(timeout=1)
        assert 0.9 < time.monotonic() - started < 2.5
        assert err.value.running and "task-" in err.value.running[0]
        assert "still running on the host" in str(err.value)
        # ...and the caller can go on waiting for it.
        op = err.value.operation
        assert op is not None
        assert op.result(timeout=10).state is S.RUNNING
        # The same with wait=False: the operation's own deadline.
        vm.power_off()
        started = time.monotonic()
        later = vm.start(timeout=1, wait=False)
        assert isinstance(later.exception(timeout=10), vmctl.OperationTimeout)
        assert time.monotonic() - started < 2.5
        time.sleep(SlowTasks.task_s)  # let the host's timer finish before the site goes


# -- timeouts are checked ------------------------------------------------------------------


BAD_SECONDS = [math.nan, math.inf, -math.inf, -1, 0, True, "5"]


@pytest.mark.parametrize("bad", BAD_SECONDS, ids=repr)
def test_bad_timeouts_are_refused(hv: vmctl.Hypervisor, bad: Any) -> None:
    vm = hv.create_vm(VMSpec(name="v", boot=vmctl.BootSource(kernel="/k")))
    vm.start()
    for call in (
        lambda: vm.shutdown(timeout=bad),
        lambda: vm.shutdown(force_after=bad),
        lambda: vm.pause(timeout=bad),
        lambda: vm.reboot(timeout=bad, wait=False),
        lambda: vm.delete(force=True, timeout=bad),
        lambda: vm.revert("x", timeout=bad),
        lambda: vm.migrate(hv, timeout=bad),
        lambda: hv.watch(timeout=bad),
        lambda: hv.create_vm(VMSpec(name="w"), timeout=bad),
    ):
        with pytest.raises(vmctl.ValidationError):
            call()
    assert vm.state is S.RUNNING  # nothing was done


def test_nan_waits_are_refused(hv: vmctl.Hypervisor) -> None:
    vm = hv.create_vm(VMSpec(name="v"))
    op = vm.start(wait=False)
    for bad in (math.nan, math.inf, -1, True):
        with pytest.raises(vmctl.ValidationError):
            op.result(timeout=bad)
        with pytest.raises(vmctl.ValidationError):
            vmctl.wait_all([op], timeout=bad)
    assert op.result(timeout=10).state is S.RUNNING


def test_an_operation_reraises_the_requests_own_timeout(hv: vmctl.Hypervisor) -> None:
    """op.result() said "not finished after None s; it is still running" for a request
    that had itself timed out (OperationTimeout is a TimeoutError)."""
    vm = hv.create_vm(VMSpec(name="v", boot=vmctl.BootSource(kernel="/k")))
    vm.start()
    op = vm.shutdown(wait=False, timeout=0.05)  # the guest takes 0.15 s
    with pytest.raises(vmctl.OperationTimeout) as err:
        op.result()
    assert "None s" not in str(err.value) and "not finished" not in str(err.value)
    assert op.done()


def test_enum_values_are_validation_errors() -> None:
    with pytest.raises(vmctl.ValidationError, match="'virtio'"):
        vmctl.DiskSpec(size_mib=10, bus="bogus")
    with pytest.raises(vmctl.ValidationError, match="'linux'"):
        VMSpec(name="a", guest_os=5)  # type: ignore[arg-type]


# -- the deadline reaches the driver; the power-off phase stays within the timeout ----------


class Deaf(SimDriver):
    """A guest that never acts on a shutdown request (the host cannot tell)."""

    name = "deaf"
    seen: list[float] = []

    def shutdown(self, uuid: str, *, deadline: Deadline) -> None:
        Deaf.seen.append(deadline.remaining())


def test_shutdown_with_force_after_ends_within_its_timeout(registered: Any) -> None:
    """shutdown(timeout=1, force_after=0.5) took 2.5 s: the power-off phase got 5 s."""
    Deaf.seen = []
    with vmctl.connect(registered("deaf", Deaf)) as hv:
        vm = hv.create_vm(VMSpec(name="v"))
        vm.start()
        started = time.monotonic()
        info = vm.shutdown(timeout=1, force_after=0.5)
        assert time.monotonic() - started < 1.2
        assert (info.state, info.reason) == (S.STOPPED, vmctl.StateReason.POWERED_OFF)
        assert Deaf.seen and 0.3 < Deaf.seen[0] <= 0.5  # the ask ran under the grace deadline
        vm.start()
        with pytest.raises(vmctl.OperationTimeout, match="still running"):
            vm.shutdown(timeout=0.3)


# -- reaching the requested state by another path is success ------------------------------


class Racy(SimDriver):
    """power_off finds the VM already stopped (it shut down meanwhile), as libvirt says
    'domain is not running'."""

    name = "racy"

    def power_off(self, uuid: str, *, deadline: Deadline) -> None:
        SimDriver.power_off(self, uuid, deadline=deadline)
        raise vmctl.InvalidState("domain is not running", current=S.STOPPED)


def test_reaching_the_state_by_another_path_is_success(registered: Any) -> None:
    with vmctl.connect(registered("racy", Racy)) as hv:
        vm = hv.create_vm(VMSpec(name="v"))
        vm.start()
        assert vm.power_off().state is S.STOPPED
        vm.start()
        assert any("vm v" in line for line in vm.delete(force=True))


# -- retries: the core reconnects, and repeats only what cannot happen twice ----------------


class Flaky(SimDriver, Reconnectable):
    """Loses its connection on chosen calls, before or after doing the work."""

    name = "flaky"
    fail: dict[str, str] = {}  # method -> "before" (sent=False), "after" (sent=None)
    calls: list[str] = []
    reconnects = 0

    host_down = False

    def reconnect(self, *, deadline: Deadline) -> None:
        Flaky.reconnects += 1
        if Flaky.host_down:
            raise vmctl.ConnectionError("connection refused", sent=False)

    def _maybe(self, method: str, phase: str) -> None:
        if Flaky.fail.get(method) == phase:
            del Flaky.fail[method]
            raise vmctl.ConnectionError(
                f"lost during {method}", sent=False if phase == "before" else None
            )

    def get_vm(self, uuid: str, *, deadline: Deadline) -> vmctl.VMInfo:
        Flaky.calls.append("get_vm")
        self._maybe("get_vm", "before")
        return SimDriver.get_vm(self, uuid, deadline=deadline)

    def create_vm(self, spec: VMSpec, *, deadline: Deadline) -> vmctl.VMInfo:
        Flaky.calls.append("create_vm")
        self._maybe("create_vm", "before")
        info = SimDriver.create_vm(self, spec, deadline=deadline)
        self._maybe("create_vm", "after")
        return info

    def start(self, uuid: str, *, deadline: Deadline) -> None:
        Flaky.calls.append("start")
        self._maybe("start", "before")
        SimDriver.start(self, uuid, deadline=deadline)
        self._maybe("start", "after")


@pytest.fixture
def flaky(registered: Any) -> Iterator[vmctl.Hypervisor]:
    Flaky.fail, Flaky.calls, Flaky.reconnects, Flaky.host_down = {}, [], 0, False
    with vmctl.connect(registered("flaky", Flaky)) as hv:
        yield hv


def test_reads_are_repeated_after_a_reconnect(flaky: vmctl.Hypervisor) -> None:
    vm = flaky.create_vm(VMSpec(name="v"))
    Flaky.fail = {"get_vm": "before"}
    assert vm.info().name == "v"
    assert Flaky.reconnects == 1


def test_a_create_that_may_have_happened_is_not_repeated(flaky: vmctl.Hypervisor) -> None:
    Flaky.fail = {"create_vm": "after"}
    with pytest.raises(vmctl.OutcomeUnknown, match="may or may not"):
        flaky.create_vm(VMSpec(name="v"))
    assert Flaky.calls.count("create_vm") == 1 and Flaky.reconnects == 1
    assert [i.name for i in flaky.list_vms()] == ["v"]  # it did happen: look before repeating


def test_a_failed_reconnect_still_says_the_outcome_is_unknown(flaky: vmctl.Hypervisor) -> None:
    Flaky.fail, Flaky.host_down = {"create_vm": "after"}, True
    with pytest.raises(vmctl.OutcomeUnknown, match="reconnecting failed too") as err:
        flaky.create_vm(VMSpec(name="v"))
    assert "create VM 'v'" in str(err.value)
    Flaky.fail = {"get_vm": "before"}
    vm = flaky.vm("v")
    with pytest.raises(vmctl.ConnectionError, match="connection refused") as err:
        vm.info()  # a read: what is wrong now, with the lost call as its cause
    assert "lost during get_vm" in str(err.value.__cause__)


def test_a_create_that_never_reached_the_host_is_repeated(flaky: vmctl.Hypervisor) -> None:
    Flaky.fail = {"create_vm": "before"}
    assert flaky.create_vm(VMSpec(name="v")).name == "v"
    assert Flaky.calls.count("create_vm") == 2 and Flaky.reconnects == 1


def test_a_start_that_may_have_happened_looks_before_repeating(flaky: vmctl.Hypervisor) -> None:
    vm = flaky.create_vm(VMSpec(name="v"))
    Flaky.fail = {"start": "after"}
    assert vm.start().state is S.RUNNING
    assert Flaky.calls.count("start") == 1  # it had started: not sent again


def test_without_reconnect_the_error_stands(hv: vmctl.Hypervisor, monkeypatch: Any) -> None:
    vm = hv.create_vm(VMSpec(name="v"))

    def lost(uuid: str, *, deadline: Deadline) -> None:
        raise vmctl.ConnectionError("gone", sent=False)

    monkeypatch.setattr(hv._driver, "start", lost)
    with pytest.raises(vmctl.ConnectionError, match="gone"):
        vm.start()


# -- bulk: no round trip in the caller, states read in one call, bounded concurrency --------


class Counting(SimDriver):
    """Records which thread calls what, and how many starts run at once."""

    name = "counting"
    calls: list[tuple[str, str]] = []
    running = 0
    peak = 0
    lock = threading.Lock()

    def get_vm(self, uuid: str, *, deadline: Deadline) -> vmctl.VMInfo:
        Counting.calls.append(("get_vm", threading.current_thread().name))
        return SimDriver.get_vm(self, uuid, deadline=deadline)

    def list_vms(self, *, deadline: Deadline) -> list[vmctl.VMInfo]:
        Counting.calls.append(("list_vms", threading.current_thread().name))
        return SimDriver.list_vms(self, deadline=deadline)

    def start(self, uuid: str, *, deadline: Deadline) -> None:
        Counting.calls.append(("start", threading.current_thread().name))
        with Counting.lock:
            Counting.running += 1
            Counting.peak = max(Counting.peak, Counting.running)
        time.sleep(0.05)
        with Counting.lock:
            Counting.running -= 1
        SimDriver.start(self, uuid, deadline=deadline)


def test_bulk_requests(registered: Any) -> None:
    with vmctl.connect(registered("counting", Counting), max_concurrency=4) as hv:
        assert hv.max_concurrency == 4
        vms = [hv.create_vm(VMSpec(name=f"v{i:02}", memory_mib=128)) for i in range(24)]
        Counting.calls, Counting.peak = [], 0
        caller = threading.current_thread().name
        ops = [vm.start(wait=False) for vm in vms]
        assert not [c for c in Counting.calls if c[1] == caller]  # nothing in the caller
        vmctl.wait_all(ops, timeout=30)
        assert all(op.result().state is S.RUNNING for op in ops)
        assert Counting.peak == 4  # bounded by the setting, and used
        reads = [c[0] for c in Counting.calls if c[0] in ("get_vm", "list_vms")]
        assert "list_vms" in reads
        assert reads.count("get_vm") < 24  # the checks' reads were batched
    with pytest.raises(vmctl.ValidationError):
        vmctl.connect("sim://x", max_concurrency=0)


# -- a Hypervisor shared between threads; one dropped without close() --------------------


def test_a_hypervisor_may_be_shared_between_threads(hv: vmctl.Hypervisor) -> None:
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            vm = hv.create_vm(VMSpec(name=f"t{i}", memory_mib=128))
            vm.start()
            vm.pause()
            vm.resume()
            vm.power_off()
            vm.delete()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and hv.list_vms() == []


class Closing(SimDriver):
    name = "closing"
    closed = 0

    def close(self) -> None:
        Closing.closed += 1
        SimDriver.close(self)


def test_a_dropped_hypervisor_releases_its_session(registered: Any) -> None:
    Closing.closed = 0
    hv = vmctl.connect(registered("closing", Closing))
    hv.list_vms()
    del hv
    gc.collect()
    assert Closing.closed == 1
    with vmctl.connect("closing://h") as hv2:
        hv2.close()
    assert Closing.closed == 2  # close() and the finalizer do it once


# -- secrets ---------------------------------------------------------------------------------

PLAIN = "pw-Plain-4711"


def _vmctl_frames_holding(tb: Any, needle: str) -> list[str]:
    found = []
    while tb is not None:
        frame = tb.tb_frame
        module = frame.f_globals.get("__name__", "")
        if module.startswith(("vmctl", "vmctl_")):
            for name, value in frame.f_locals.items():
                if isinstance(value, str) and needle in value:
                    found.append(f"{module}:{frame.f_code.co_name}:{name}")
        tb = tb.tb_next
    return found


class Refusing(SimDriver):
    name = "refusing"

    @classmethod
    def open(cls, params: vmctl.ConnectParams, *, deadline: Deadline) -> SimDriver:
        raise vmctl.AuthenticationError("credentials refused")


def test_no_vmctl_frame_holds_a_plaintext_password(
    registered: Any, caplog: pytest.LogCaptureFixture
) -> None:
    uri = registered("refusing", Refusing)
    for password in (PLAIN, vmctl.Secret(PLAIN), lambda: PLAIN):
        with pytest.raises(vmctl.AuthenticationError) as err:
            vmctl.connect(uri, password=password)
        assert _vmctl_frames_holding(err.value.__traceback__, PLAIN) == []
    caplog.set_level(logging.DEBUG, logger="vmctl")
    for bad in (f"xen://root@h?pass={PLAIN}", f"sim://h?db_password={PLAIN}", f"x://u:{PLAIN}@h"):
        with pytest.raises(vmctl.ValidationError) as verr:
            vmctl.connect(bad)
        assert PLAIN not in str(verr.value)
        assert _vmctl_frames_holding(verr.value.__traceback__, PLAIN) == []
    with pytest.raises(vmctl.ValidationError, match="secret"):
        vmctl.connect("sim://h", api_token=PLAIN)
    assert PLAIN not in caplog.text


class Bulky(SimDriver, BulkPower):
    """Starts many VMs in one call, as vCenter's PowerOnMultiVM_Task does."""

    name = "bulky"
    bulk_calls: list[int] = []
    single_starts = 0

    def start_many(
        self, uuids: Sequence[str], *, deadline: Deadline
    ) -> dict[str, Task | vmctl.VmctlError | None]:
        Bulky.bulk_calls.append(len(uuids))
        out: dict[str, Task | vmctl.VmctlError | None] = {}
        for uuid in uuids:
            try:
                SimDriver.start(self, uuid, deadline=deadline)
                out[uuid] = None
            except vmctl.VmctlError as exc:
                out[uuid] = exc
        return out

    def power_off_many(
        self, uuids: Sequence[str], *, deadline: Deadline
    ) -> dict[str, Task | vmctl.VmctlError | None]:
        return {}  # power-offs go the ordinary way

    def start(self, uuid: str, *, deadline: Deadline) -> None:
        Bulky.single_starts += 1
        SimDriver.start(self, uuid, deadline=deadline)


def test_starts_submitted_together_use_the_bulk_primitive(registered: Any) -> None:
    Bulky.bulk_calls, Bulky.single_starts = [], 0
    with vmctl.connect(registered("bulky", Bulky)) as hv:
        vms = [hv.create_vm(VMSpec(name=f"b{i:02}", memory_mib=128)) for i in range(30)]
        ops = [vm.start(wait=False) for vm in vms]
        vmctl.wait_all(ops, timeout=30)
        assert all(op.result().state is S.RUNNING for op in ops)
        assert sum(Bulky.bulk_calls) + Bulky.single_starts == 30
        assert Bulky.bulk_calls and min(Bulky.bulk_calls) >= 2  # a lone start goes alone
        assert vms[0].start(wait=False).exception(timeout=10) is not None  # checked still
