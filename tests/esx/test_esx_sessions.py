"""Issue 8 on ESX: sessions and secrets. An expired session is a ConnectionError(sent=False)
and the core reconnects (``Reconnectable.reconnect``); the event source survives a session
expiry and a host restart; a failed login leaves no password in the locals of vmctl's or
the driver's traceback frames; shutdown without VMware Tools is refused at once."""

from __future__ import annotations

import ssl
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pyVmomi import vim

import vmctl
from tests.faults import FaultProxy
from tests.hosts.esx import VcsimServer, ensure_cert, running_simulator
from vmctl import PowerState as S
from vmctl.spi import ConnectParams, Deadline, Secret
from vmctl_esx import EsxDriver

from .conftest import Admin

SECRET = "Wrong-pa55word-xyzzy-0815"


def _frames(exc: BaseException) -> Iterator[types.FrameType]:
    """Every frame of ``exc``'s traceback and of its causes/contexts."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        tb = e.__traceback__
        while tb is not None:
            yield tb.tb_frame
            tb = tb.tb_next
        todo += [e.__cause__, e.__context__]


def _holds(value: Any, secret: str, depth: int = 0) -> bool:
    if isinstance(value, str):
        return secret in value
    if isinstance(value, (bytes, bytearray)):
        return secret.encode() in value
    if depth < 3 and isinstance(value, (list, tuple, set, frozenset)):
        return any(_holds(v, secret, depth + 1) for v in value)
    if depth < 3 and isinstance(value, dict):
        return any(_holds(v, secret, depth + 1) for v in value.values())
    return False


def _ours(frame: types.FrameType) -> bool:
    module = str(frame.f_globals.get("__name__", ""))
    return module.split(".")[0] in ("vmctl", "vmctl_esx")


def _leaks(exc: BaseException, secret: str, *, allow: tuple[str, ...] = ()) -> list[str]:
    """The vmctl/driver frames whose locals hold ``secret``: 'module.function: name'."""
    out = []
    for frame in _frames(exc):
        if not _ours(frame):
            continue
        where = f"{frame.f_globals['__name__']}.{frame.f_code.co_name}"
        if where in allow:
            continue
        for name, value in frame.f_locals.items():
            if _holds(value, secret):
                out.append(f"{where}: {name}")
    return out


def _params(srv: VcsimServer, port: int | None = None, password: str = SECRET) -> ConnectParams:
    uri = vmctl.URI.parse(f"esx://{srv.username}@127.0.0.1:{port or srv.port}")
    return ConnectParams(
        uri=uri, username=srv.username, password=Secret(password), cafile=str(srv.cafile)
    )


def _proxy(srv: VcsimServer) -> FaultProxy:
    cert = ensure_cert()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(cert.cert), str(cert.key))
    client = ssl.create_default_context(cafile=str(srv.cafile))
    return FaultProxy(srv.host, srv.port, server_context=server, client_context=client)


# -- secrets --------------------------------------------------------------------------------


def test_refused_login_leaves_no_password_in_frames(esx_sim: VcsimServer) -> None:
    """Old code: vmctl_esx's InvokeMethod kept ``args`` (the password) and pyVmomi's frames
    the SOAP body, in the traceback of the AuthenticationError."""
    with pytest.raises(vmctl.AuthenticationError) as err:
        EsxDriver.open(_params(esx_sim), deadline=Deadline.after(20))
    assert _leaks(err.value, SECRET) == []
    # The same through vmctl.connect, a password given as a plain string.
    with pytest.raises(vmctl.AuthenticationError) as err2:
        vmctl.connect(
            f"esx://{esx_sim.username}@127.0.0.1:{esx_sim.port}",
            password=SECRET,
            cafile=str(esx_sim.cafile),
        )
    assert _leaks(err2.value, SECRET) == []


def test_transport_failure_at_login_leaves_no_password_in_frames(esx_sim: VcsimServer) -> None:
    """The connection is cut when the Login request arrives: pyVmomi's frames (the SOAP body
    with the password) are cleared too."""
    with _proxy(esx_sim) as proxy:
        proxy.add("Login", "drop")  # sent, then cut before the host saw it (no session made)
        with pytest.raises(vmctl.ConnectionError) as err:
            EsxDriver.open(
                _params(esx_sim, proxy.port, esx_sim.password), deadline=Deadline.after(20)
            )
        assert _leaks(err.value, esx_sim.password) == []
        # Every frame of the chain, pyVmomi's and http.client's included, is clean.
        for frame in _frames(err.value):
            assert not any(_holds(v, esx_sim.password) for v in frame.f_locals.values()), (
                frame.f_code.co_name
            )
        proxy.add("Login", "hang")
        started = time.monotonic()
        with pytest.raises((vmctl.ConnectionError, vmctl.OperationTimeout)) as err3:
            EsxDriver.open(
                _params(esx_sim, proxy.port, esx_sim.password), deadline=Deadline.after(3)
            )
        assert time.monotonic() - started < 3 + 3
        assert _leaks(err3.value, esx_sim.password) == []
        proxy.release()


# -- sessions -------------------------------------------------------------------------------


def test_expired_session_is_not_sent_and_reconnect_renews_it() -> None:
    with running_simulator("esx", vms=1, idle_timeout=1.0) as srv:
        driver = EsxDriver.open(_params(srv, password=srv.password), deadline=Deadline.after(20))
        try:
            uuid = driver.list_vms(deadline=Deadline.after(10))[0].uuid
            time.sleep(2.6)
            with pytest.raises(vmctl.ConnectionError) as err:
                driver.get_vm(uuid, deadline=Deadline.after(10))
            assert err.value.sent is False
            with pytest.raises(vmctl.ConnectionError) as err2:
                driver.start(uuid, deadline=Deadline.after(10))
            assert err2.value.sent is False  # the host refused it: safe to repeat
            driver.reconnect(deadline=Deadline.after(10))
            assert driver.get_vm(uuid, deadline=Deadline.after(10)).uuid == uuid
        finally:
            driver.close()
        # Through the core: reconnected and repeated (the expired session refused it).
        with vmctl.connect(srv.uri, password=srv.password, cafile=str(srv.cafile)) as hv:
            vm = hv.create_vm(vmctl.VMSpec(name="renew"))
            time.sleep(2.6)
            assert vm.start(timeout=20).state is S.RUNNING
            time.sleep(2.6)
            assert vm.power_off(timeout=20).state is S.STOPPED
            vm.delete()
        admin = Admin(srv)
        try:
            assert admin.other_sessions() == []
        finally:
            admin.close()


def test_watch_survives_session_expiry() -> None:
    """Old code: an idle watch() died with ManagedObjectNotFound PropertyCollector:session[...]
    once the session expired."""
    with (
        running_simulator("esx", vms=1, idle_timeout=1.0) as srv,
        vmctl.connect(srv.uri, password=srv.password, cafile=str(srv.cafile)) as hv,
    ):
        vm = hv.create_vm(vmctl.VMSpec(name="watch-expiry"))
        with hv.watch(timeout=20) as events:
            time.sleep(2.6)  # idle: the session and its collectors expire
            admin = Admin(srv)
            try:
                admin.vm(vm.uuid).PowerOnVM_Task()
                assert _first(events, vm.uuid, S.RUNNING, 15)
            finally:
                admin.close()


def _first(events: Any, uuid: str, state: S, limit: float) -> bool:
    ends = time.monotonic() + limit
    while time.monotonic() < ends:
        e = events.next(timeout=max(0.1, ends - time.monotonic()))
        if e is not None and e.vm_uuid == uuid and e.state is state:
            return True
    return False


def test_watch_survives_host_restart() -> None:
    cert = ensure_cert()
    with running_simulator("esx", vms=1, cert=cert) as first:
        port, password = first.port, first.password
        hv = vmctl.connect(first.uri, password=password, cafile=str(first.cafile))
        events = hv.watch(timeout=90)
        assert events.next(timeout=0.5) is None
    try:
        assert events.next(timeout=1.5) is None  # the host is gone: no event, no error
        # The simulator restarts on the same port: a new process, new sessions, new events.
        with running_simulator(
            "esx", vms=1, cert=cert, password=password, listen=f"127.0.0.1:{port}"
        ) as second:
            admin = Admin(second)
            try:
                uuid = hv.list_vms()[0].uuid  # the core reconnects for this read
                admin.vm(uuid).PowerOffVM_Task()
                assert _first(events, uuid, S.STOPPED, 20)
            finally:
                admin.close()
                events.close()
    finally:
        hv.close()


# -- graceful power -------------------------------------------------------------------------


def test_shutdown_without_tools_refused_at_once(esx_sim: VcsimServer, esx_admin: Admin) -> None:
    with vmctl.connect(esx_sim.uri, password=esx_sim.password, cafile=str(esx_sim.cafile)) as hv:
        vm = hv.create_vm(vmctl.VMSpec(name="no-tools"))
        try:
            vm.start()
            tools = esx_admin.props(
                esx_admin.vm(vm.uuid), vim.VirtualMachine, ["guest.toolsRunningStatus"]
            )
            assert tools["guest.toolsRunningStatus"] == "guestToolsNotRunning"
            asks: list[Callable[[], object]] = [
                lambda: vm.shutdown(timeout=60),
                lambda: vm.reboot(timeout=60),
            ]
            for ask in asks:
                started = time.monotonic()
                with pytest.raises(vmctl.InvalidState, match="VMware Tools are not running") as err:
                    ask()
                assert time.monotonic() - started < 2.0
                assert "power_off" in str(err.value) and "force_after" in str(err.value)
            assert vm.info().state is S.RUNNING
        finally:
            vm.delete(force=True)
