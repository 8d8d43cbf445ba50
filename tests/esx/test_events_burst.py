"""Issue 11 on ESX: the event source watches a small ``latestPage`` (the trigger) and, when a
page arrives full with nothing in it seen, reads what left the page with a catch-up
collector (ReadNextEvents from the last event seen). A burst larger than the page loses
nothing, repeats nothing and keeps its order: live, after a lost session, and in the
catch-up read itself. Against the launcher (vcsim), with a separate pyvmomi client making
the changes."""

from __future__ import annotations

import time
from typing import Any

from pyVmomi import vim

import vmctl
from tests.hosts.esx import VcsimServer, running_simulator
from vmctl import EventKind
from vmctl import PowerState as S
from vmctl.spi import ConnectParams, Deadline, Secret
from vmctl_esx import EsxDriver
from vmctl_esx._driver import _PAGE_SIZE

from .conftest import Admin

#: Changes in a burst: more than two pages, even per VM (both VMs end as they began).
BURST = 24
assert BURST > 2 * _PAGE_SIZE


def _wait_task(admin: Admin, task: Any) -> None:
    ends = time.monotonic() + 20
    while time.monotonic() < ends:
        state = str(admin.props(task, vim.Task, ["info.state"])["info.state"])
        if state in ("success", "error"):
            assert state == "success"
            return
        time.sleep(0.005)
    raise AssertionError("task did not end in 20 s")


def _burst(admin: Admin, uuids: list[str]) -> list[tuple[str, S]]:
    """``BURST`` power changes alternating over ``uuids``, back to back; the expected
    (uuid, state) sequence."""
    refs = {u: admin.vm(u) for u in uuids}
    state = {
        u: str(admin.props(r, vim.VirtualMachine, ["runtime.powerState"])["runtime.powerState"])
        for u, r in refs.items()
    }
    expected = []
    for n in range(BURST):
        u = uuids[n % len(uuids)]
        if state[u] == "poweredOn":
            _wait_task(admin, refs[u].PowerOffVM_Task())
            state[u] = "poweredOff"
            expected.append((u, S.STOPPED))
        else:
            _wait_task(admin, refs[u].PowerOnVM_Task())
            state[u] = "poweredOn"
            expected.append((u, S.RUNNING))
    return expected


def _collect(events: Any, uuids: list[str], want: int, limit: float) -> list[tuple[str, S]]:
    """STATE_CHANGED events of ``uuids`` until ``want`` came and a further second passed
    with no more (a duplicate would show), or ``limit`` seconds."""
    got: list[tuple[str, S]] = []
    ends = time.monotonic() + limit
    quiet_until: float | None = None
    while time.monotonic() < ends:
        if quiet_until is not None and time.monotonic() >= quiet_until:
            break
        e = events.next(timeout=0.5)
        if e is None or e.kind is not EventKind.STATE_CHANGED or e.vm_uuid not in uuids:
            continue
        assert e.state is not None
        got.append((e.vm_uuid, e.state))
        if len(got) >= want and quiet_until is None:
            quiet_until = time.monotonic() + 1.0
    return got


def test_burst_larger_than_page_live(target: tuple[VcsimServer, Admin, str]) -> None:
    srv, admin, uri = target
    with vmctl.connect(uri, password=srv.password, cafile=str(srv.cafile)) as hv:
        uuids = [i.uuid for i in hv.list_vms()][:2]
        assert len(uuids) == 2
        with hv.watch(timeout=60) as events:
            assert events.next(timeout=0.3) is None
            expected = _burst(admin, uuids)
            got = _collect(events, uuids, len(expected), 40)
    assert got == expected


def test_burst_after_lost_session() -> None:
    """The session expires, then a burst larger than the page is made: the new collector's
    first page is full of unseen events, the rest is caught up by time."""
    with (
        running_simulator("esx", vms=2, idle_timeout=1.0) as srv,
        vmctl.connect(srv.uri, password=srv.password, cafile=str(srv.cafile)) as hv,
    ):
        uuids = [i.uuid for i in hv.list_vms()][:2]
        with hv.watch(timeout=60) as events:
            assert events.next(timeout=0.3) is None
            time.sleep(2.6)  # idle: the session and its collectors expire
            admin = Admin(srv)
            try:
                expected = _burst(admin, uuids)
                got = _collect(events, uuids, len(expected), 40)
            finally:
                admin.close()
    assert got == expected


def test_catch_up_reads_what_left_the_page(vc_sim: VcsimServer, vc_admin: Admin) -> None:
    """The catch-up read alone, on a live source that has not polled since the burst:
    exactly the burst's events, in key order, none seen before."""
    params = ConnectParams(
        uri=vmctl.URI.parse(f"vcenter://{vc_sim.username}@{vc_sim.host}:{vc_sim.port}/DC0/DC0_C0"),
        username=vc_sim.username,
        password=Secret(vc_sim.password),
        cafile=str(vc_sim.cafile),
    )
    drv = EsxDriver.open(params, deadline=Deadline.after(20))
    try:
        uuids = [i.uuid for i in drv.list_vms(deadline=Deadline.after(20))][:2]
        src: Any = drv.subscribe(deadline=Deadline.after(20))
        try:
            seen = src.last_key
            expected = _burst(vc_admin, uuids)
            with drv.conn.within(Deadline.after(20)):
                caught = src._catch_up([], by_time=False)
            keys = [int(e.key) for e in caught]
            assert keys == sorted(set(keys)) and all(k > seen for k in keys)
            by_moid = {vc_admin.vm(u)._moId: u for u in uuids}
            states = {"VmPoweredOnEvent": S.RUNNING, "VmPoweredOffEvent": S.STOPPED}
            got = [
                (by_moid[e.vm.vm._moId], states[type(e).__name__.rsplit(".", 1)[-1]])
                for e in caught
                if e.vm is not None and e.vm.vm._moId in by_moid
            ]
            assert got == expected
            assert len(caught) == len(expected)
        finally:
            src.close()
    finally:
        drv.close()
