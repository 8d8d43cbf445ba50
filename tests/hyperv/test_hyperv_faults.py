"""Faults: deadlines on jobs that run too long, connections dropped by the network, and
the reconnect after them, on an in-process hypervsim behind a TCP proxy that can drop."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hyperv_helpers import name

import vmctl
from vmctl import PowerState, VMSpec

hypervsim = pytest.importorskip("hypervsim")
PASSWORD = "faults-pw"


class DroppingProxy:
    """127.0.0.1 TCP proxy to ``port``; while ``drop`` is set it closes every connection as
    soon as the client sends anything (the request was sent, no answer comes)."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.drop = False
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream))
            self._conns += [client, up]
            threading.Thread(target=self._pipe, args=(client, up, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client and self.drop:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for s in self._conns:
            s.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    with hypervsim.serve(hosts=1, vms=1, tls=False, password=PASSWORD, op_delay=0.05) as s:
        yield s


@pytest.fixture()
def proxy(server: Any) -> Iterator[DroppingProxy]:
    p = DroppingProxy(server.ports[0])
    yield p
    p.close()


def _connect(port: int) -> vmctl.Hypervisor:
    return vmctl.connect(
        f"hyperv+http://Administrator@127.0.0.1:{port}?auth=ntlm&rpc_timeout=5",
        password=PASSWORD,
        env={},
        timeouts=vmctl.Timeouts(20),
    )


def test_job_past_the_deadline_names_the_job(server: Any) -> None:
    with _connect(server.ports[0]) as hv:
        vm = hv.create_vm(VMSpec(name=name("slow"), memory_mib=128))
        server.world.cfg.op_delay = 5.0
        try:
            t0 = time.monotonic()
            with pytest.raises(vmctl.OperationTimeout) as err:
                vm.start(timeout=0.8)
            assert time.monotonic() - t0 < 4.0  # the timeout, not the job's end
            assert err.value.running and "start" in err.value.running[0]
        finally:
            server.world.cfg.op_delay = 0.05
        # the job goes on: the core's Operation waits for it and the state
        op = err.value.operation
        assert op is not None
        assert op.result(timeout=15).state is PowerState.RUNNING
        vm.delete(force=True)


def test_dropped_connection_then_reconnect(server: Any, proxy: DroppingProxy) -> None:
    with _connect(proxy.port) as hv:
        vm = hv.create_vm(VMSpec(name=name("drop"), memory_mib=128))
        proxy.drop = True
        with pytest.raises(vmctl.ConnectionError) as err:
            hv.list_vms()
        assert err.value.sent is not False or err.value.__cause__ is not None
        with pytest.raises(vmctl.ConnectionError) as err2:
            vm.start()
        # the start may have reached the host: never reported as "not sent"
        assert isinstance(err2.value, vmctl.OutcomeUnknown) or err2.value.sent is not False
        proxy.drop = False
        assert vm.uuid in {i.uuid for i in hv.list_vms()}  # a new connection is made
        vm.delete(force=True)
