"""Connecting: TLS trust (CA file, SHA-256 pin, refusals), credentials, sessions, secrets."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from xen_helpers import PASSWORD, connect

import vmctl
from vmctl import Capability
from vmctl.spi import Deadline


def test_https_with_cafile_and_host_info(sim: Any) -> None:
    before = sim.open_sessions()
    with connect(sim) as hv:
        assert hv.driver_name == "xen"
        info = hv.host_info()
        assert info.hypervisor.startswith("Xen")
        assert info.cpus > 0 and info.memory_mib > 0 and info.free_memory_mib
        assert sim.open_sessions() == before + 1
        assert Capability.MIGRATE_LIVE in hv.capabilities  # a 2-host pool
        assert Capability.STATS not in hv.capabilities
    assert sim.open_sessions() == before


def test_session_carries_originator(sim: Any) -> None:
    with connect(sim), sim.db.lock:
        originators = [s.originator for s in sim.db.sessions.values()]
    assert "vmctl" in originators


def test_thumbprint_pinning(sim: Any) -> None:
    with connect(sim, cafile=None, thumbprint=sim.thumbprint) as hv:
        assert hv.list_vms() is not None
    with connect(sim, cafile=None, thumbprint=sim.thumbprint.replace(":", "").lower()) as hv:
        assert hv.host_info().cpus > 0


def test_wrong_thumbprint_refused_before_login(sim: Any) -> None:
    before = sim.open_sessions()
    wrong = "AB:" * 31 + "AB"
    with pytest.raises(vmctl.ConnectionError) as err:
        connect(sim, cafile=None, thumbprint=wrong)
    assert "thumbprint" in str(err.value)
    assert sim.open_sessions() == before


def test_sha1_thumbprint_is_a_validation_error(sim: Any) -> None:
    with pytest.raises(vmctl.ValidationError):
        connect(sim, cafile=None, thumbprint="AB:" * 19 + "AB")


def test_unknown_ca_refused(sim: Any) -> None:
    before = sim.open_sessions()
    with pytest.raises(vmctl.ConnectionError) as err:
        connect(sim, cafile=None)  # the system CAs do not know the simulator's certificate
    assert "not trusted" in str(err.value)
    assert sim.open_sessions() == before


def test_insecure_warns(sim: Any) -> None:
    with (
        pytest.warns(UserWarning, match="(?i)verification is off"),
        connect(sim, cafile=None, insecure=True) as hv,
    ):
        assert hv.host_info().cpus > 0


def test_plain_http_refused_by_a_tls_server(sim: Any) -> None:
    with pytest.raises(vmctl.ConnectionError):
        vmctl.connect(
            f"xen+http://root@127.0.0.1:{sim.port}",
            password=PASSWORD,
            env={},
            timeouts=vmctl.Timeouts(10),
        )


def test_wrong_password(sim: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "not-the-password-" + PASSWORD[::-1]
    with pytest.raises(vmctl.AuthenticationError) as err:
        connect(sim, password=secret)
    assert err.value.vendor_code == "SESSION_AUTHENTICATION_FAILED"
    assert type(err.value.__cause__).__name__ == "Failure"
    assert secret not in str(err.value) and secret not in repr(err.value)
    assert secret not in caplog.text


def test_no_password_in_logs_reprs_or_errors(sim: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with connect(sim) as hv:
        hv.list_vms()
        with pytest.raises(vmctl.NotFound) as err:
            hv.vm("no-such-vm")
        texts = [
            repr(hv),
            str(hv.uri),
            repr(hv._driver),
            repr(hv._driver.connection),
            str(err.value),
        ]
    assert all(PASSWORD not in t for t in texts)
    assert PASSWORD not in caplog.text


def test_unknown_option_and_host(sim: Any) -> None:
    with pytest.raises(vmctl.ValidationError):
        connect(sim, "?colour=blue")
    with pytest.raises(vmctl.NotFound, match="xenhost1"):
        connect(sim, "?host=nohost")
    with pytest.raises(vmctl.ValidationError):
        vmctl.connect("xen+ssh://root@127.0.0.1", password=PASSWORD, env={})


def test_expired_session_is_renewed_once(sim: Any) -> None:
    with connect(sim) as hv:
        hv.list_vms()
        old = hv._driver.connection.ref
        with sim.db.lock:
            sim.db.sessions.pop(old)  # as xapi does when a session expires
        assert hv.list_vms()  # the core reconnects (Reconnectable.reconnect) and repeats
        assert hv._driver.connection.ref != old


def test_session_invalid_is_a_connection_error_not_sent(sim: Any) -> None:
    # The driver no longer logs in again by itself: SESSION_INVALID means the host refused
    # the call before acting on it, so it is a ConnectionError with sent=False, which the
    # core meets with reconnect() and a repeat.
    with connect(sim) as hv:
        drv = hv._driver
        old = drv.connection.ref
        with sim.db.lock:
            sim.db.sessions.pop(old)
        before = drv.round_trips
        with pytest.raises(vmctl.ConnectionError) as err:
            drv.list_vms(deadline=Deadline.after(10))
        assert err.value.sent is False and err.value.vendor_code == "SESSION_INVALID"
        assert drv.round_trips - before == 1  # no re-login, no second try
        assert drv.connection.ref == old
        drv.reconnect(deadline=Deadline.after(10))
        assert drv.connection.ref != old
        assert drv.list_vms(deadline=Deadline.after(10))


def test_session_invalid_then_login_refused_is_authentication_error(sim: Any) -> None:
    with connect(sim) as hv:
        ref = hv._driver.connection.ref
        sim.cfg.password = "changed"
        try:
            with sim.db.lock:
                sim.db.sessions.pop(ref)
            with pytest.raises(vmctl.AuthenticationError):
                hv.list_vms()
        finally:
            sim.cfg.password = PASSWORD


def test_concurrent_calls_from_threads(sim: Any) -> None:
    import concurrent.futures as cf

    with connect(sim) as hv:
        with cf.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: len(hv.list_vms()), range(32)))
        assert len(set(results)) == 1


def test_close_is_idempotent(sim: Any) -> None:
    hv = connect(sim)
    hv.close()
    hv.close()
    with pytest.raises(vmctl.VmctlError):
        hv.list_vms()


def test_module_imports_without_sdk() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['XenAPI'] = None\n"
        "import vmctl, vmctl_xen\n"
        "try:\n    vmctl.connect('xen://h', password='x', env={})\n"
        "except vmctl.DriverError as e:\n    print('DRIVER', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "DRIVER" in out.stdout and "vmctl[xen]" in out.stdout, out.stderr


@pytest.mark.filterwarnings("ignore:TLS certificate verification")
def test_connect_timeout_to_silent_host() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)  # accepts TCP but never speaks TLS
        port = s.getsockname()[1]
        t = time.monotonic()
        with pytest.raises((vmctl.OperationTimeout, vmctl.ConnectionError)):
            vmctl.connect(
                f"xen://root@127.0.0.1:{port}",
                password="x",
                env={},
                insecure=True,
                timeouts=vmctl.Timeouts(2),
            )
        assert time.monotonic() - t < 10


def test_plain_http_when_asked() -> None:
    import xapisim

    with xapisim.serve(hosts=1, vms=2, password=PASSWORD, tls=False) as plain:
        with vmctl.connect(
            f"xen+http://root@127.0.0.1:{plain.port}", password=PASSWORD, env={}
        ) as hv:
            assert len(hv.list_vms()) == 2
            assert Capability.MIGRATE_LIVE not in hv.capabilities  # a single host
        assert plain.open_sessions() == 0


def test_wait_for_a_deleted_vm_says_none(sim: Any) -> None:
    with connect(sim) as hv:
        vm = hv.create_vm(vmctl.VMSpec(name=f"xt-gone-{time.monotonic_ns()}"))
        info = hv._driver.get_vm(vm.uuid, deadline=Deadline.after(10))  # caches its ref
        vm.delete()
        t = time.monotonic()
        assert hv._driver.wait_changes({vm.uuid: info}, deadline=Deadline.after(10)) == {
            vm.uuid: None
        }
        assert time.monotonic() - t < 5
