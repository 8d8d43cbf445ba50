"""Waiting without polling: wait_for_state long-polls WaitForUpdatesEx on a private
PropertyCollector, several at once; and the pinned TLS context checks every handshake."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from pyVmomi import vim

import vmctl
from tests.hosts.esx import VcsimServer
from vmctl import PowerState as S
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


def test_wait_for_state_long_polls(esx_sim: VcsimServer, esx_admin: Admin) -> None:
    with vmctl.connect(esx_sim.uri, password=esx_sim.password, cafile=str(esx_sim.cafile)) as hv:
        vms = [hv.create_vm(vmctl.VMSpec(name=f"w-{i}-{time.monotonic_ns()}")) for i in range(3)]
        try:
            driver = hv._driver
            before = driver.round_trips  # type: ignore[attr-defined]
            started = time.monotonic()
            thread = _power_on_later(esx_admin, [vm.uuid for vm in vms], 2.0)
            with ThreadPoolExecutor(3) as pool:
                infos = list(
                    pool.map(
                        lambda vm: driver.wait_for_state(  # type: ignore[attr-defined]
                            vm.uuid, {S.RUNNING}, timeout=20
                        ),
                        vms,
                    )
                )
            elapsed = time.monotonic() - started
            thread.join()
            assert [i.state for i in infos] == [S.RUNNING] * 3
            assert 2.0 <= elapsed < 6.0
            # Per waiter: get_vm, create collector + filter, 1-2 long polls, destroy, get_vm.
            # A sleep-and-poll loop would have made dozens over those 2 s.
            assert driver.round_trips - before <= 3 * 9  # type: ignore[attr-defined]
        finally:
            for vm in vms:
                vm.delete(force=True)


def test_wait_for_state_times_out(esx_sim: VcsimServer, esx_admin: Admin) -> None:
    with vmctl.connect(esx_sim.uri, password=esx_sim.password, cafile=str(esx_sim.cafile)) as hv:
        vm = hv.create_vm(vmctl.VMSpec(name=f"w-timeout-{time.monotonic_ns()}"))
        try:
            started = time.monotonic()
            with pytest.raises(vmctl.OperationTimeout, match="still stopped"):
                hv._driver.wait_for_state(vm.uuid, {S.RUNNING}, timeout=2)  # type: ignore[attr-defined]
            assert 1.5 < time.monotonic() - started < 6
        finally:
            vm.delete()
        # Its private collector was destroyed: only the session's own objects remain.


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
            conn = hv._driver.conn  # type: ignore[attr-defined]
            ref = hv._driver._ref(vm.uuid)  # type: ignore[attr-defined]
            with pytest.raises(vmctl.InvalidState) as err:
                conn.run_task(ref.PowerOffVM_Task, 10, "power off")
            assert isinstance(err.value.__cause__, vim.fault.InvalidPowerState)
        finally:
            vm.delete()
