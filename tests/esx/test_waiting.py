"""Waiting without polling: the core's waits run on the driver's primitives, wait_tasks and
wait_changes, each one WaitForUpdatesEx long poll on a private PropertyCollector (several at
once), bounded by the request's deadline; and the pinned TLS context checks every handshake."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pyVmomi import vim

import vmctl
from tests.hosts.esx import VcsimServer
from vmctl import PowerState as S
from vmctl.spi import Deadline
from vmctl_esx._tls import ThumbprintMismatch, make_context

from .conftest import Admin


def _power_on_later(admin: Admin, uuids: list[str], delay: float) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        for uuid in uuids:
            admin.vm(uuid).PowerOnVM_Task()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_wait_changes_long_polls(esx_sim: VcsimServer, esx_admin: Admin) -> None:
    with vmctl.connect(esx_sim.uri, password=esx_sim.password, cafile=str(esx_sim.cafile)) as hv:
        vms = [hv.create_vm(vmctl.VMSpec(name=f"w-{i}-{time.monotonic_ns()}")) for i in range(3)]
        try:
            driver: Any = hv._driver
            known = {vm.uuid: vm.info() for vm in vms}
            before = driver.round_trips
            started = time.monotonic()
            thread = _power_on_later(esx_admin, [vm.uuid for vm in vms], 2.0)
            with ThreadPoolExecutor(3) as pool:
                changed = list(
                    pool.map(
                        lambda vm: driver.wait_changes(
                            {vm.uuid: known[vm.uuid]}, deadline=Deadline.after(20)
                        ),
                        vms,
                    )
                )
            elapsed = time.monotonic() - started
            thread.join()
            assert [c[vm.uuid].state for c, vm in zip(changed, vms, strict=True)] == [S.RUNNING] * 3
            assert 1.5 <= elapsed < 8.0
            # Per waiter: a read, create collector + filter, the initial update, one long
            # poll, destroy, the changed VM's read. A sleep-and-poll loop would make dozens.
            assert driver.round_trips - before <= 3 * 8
        finally:
            for vm in vms:
                vm.delete(force=True)


def test_wait_changes_ends_at_the_deadline(esx_sim: VcsimServer, esx_admin: Admin) -> None:
    with vmctl.connect(esx_sim.uri, password=esx_sim.password, cafile=str(esx_sim.cafile)) as hv:
        vm = hv.create_vm(vmctl.VMSpec(name=f"w-timeout-{time.monotonic_ns()}"))
        try:
            driver: Any = hv._driver
            for seconds in (2.0, 0.5):
                started = time.monotonic()
                while time.monotonic() - started < seconds:  # may return early: call again
                    left = seconds - (time.monotonic() - started)
                    assert (
                        driver.wait_changes({vm.uuid: vm.info()}, deadline=Deadline.after(left))
                        == {}
                    )
                assert time.monotonic() - started < seconds + 1.0
            # Through the core: the wait for RUNNING ends at the request's timeout.
            started = time.monotonic()
            with pytest.raises(vmctl.OperationTimeout):
                hv._conn.dispatcher.await_states(  # type: ignore[attr-defined]
                    {vm.uuid: frozenset({S.RUNNING})}, Deadline.after(2), "wait"
                )
            assert 1.5 < time.monotonic() - started < 4
        finally:
            vm.delete()


def test_pin_checked_on_every_handshake(esx_sim: VcsimServer) -> None:
    right = make_context(cafile=None, thumbprint=esx_sim.thumbprint, insecure=False, where="test")
    wrong = make_context(
        cafile=None, thumbprint=":".join(["01"] * 32), insecure=False, where="test"
    )
    for _ in range(3):  # the same context, again and again: never loosened
        address = (esx_sim.host, esx_sim.port)
        with (
            socket.create_connection(address, timeout=10) as raw,
            right.wrap_socket(raw, server_hostname=esx_sim.host) as tls,
        ):
            assert tls.version()
        with (
            socket.create_connection(address, timeout=10) as raw,
            pytest.raises(ThumbprintMismatch),
        ):
            wrong.wrap_socket(raw, server_hostname=esx_sim.host)
    assert wrong.verify_mode is ssl.CERT_NONE  # the pin is the anchor, and it held


def test_task_fault_from_task_info(esx_sim: VcsimServer, esx_admin: Admin) -> None:
    """A fault reported in TaskInfo.error (not by the call) is mapped, cause kept."""
    with vmctl.connect(esx_sim.uri, password=esx_sim.password, cafile=str(esx_sim.cafile)) as hv:
        vm = hv.create_vm(vmctl.VMSpec(name=f"w-taskfault-{time.monotonic_ns()}"))
        try:
            driver: Any = hv._driver
            task = driver.power_off(vm.uuid, deadline=Deadline.after(10))
            (outcome,) = driver.wait_tasks([task], deadline=Deadline.after(10))
            assert isinstance(outcome.error, vmctl.InvalidState)
            assert isinstance(outcome.error.__cause__, vim.fault.InvalidPowerState)
        finally:
            vm.delete()


def test_waits_without_a_deadline(esx_sim: VcsimServer, esx_admin: Admin) -> None:
    """A request with no timeout (Deadline.never(), remaining() is inf) waits in bounded
    long polls."""
    with vmctl.connect(esx_sim.uri, password=esx_sim.password, cafile=str(esx_sim.cafile)) as hv:
        vm = hv.create_vm(vmctl.VMSpec(name=f"w-never-{time.monotonic_ns()}"))
        try:
            driver: Any = hv._driver
            thread = _power_on_later(esx_admin, [vm.uuid], 1.0)
            changed: dict[str, Any] = {}
            while not changed:  # a long poll may end with nothing: call again
                changed = driver.wait_changes({vm.uuid: vm.info()}, deadline=Deadline.never())
            thread.join()
            assert changed[vm.uuid].state is S.RUNNING
            assert vm.power_off(timeout=None).state is S.STOPPED
        finally:
            vm.delete(force=True)
