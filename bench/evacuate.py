"""Evacuation wall time against the ideal (issue 14).

For each backend, ``--vms`` running VMs are put on one host, a plan is made to move them all
off it, and ``execute(plan, max_parallel=--parallel)`` is timed. The ideal is
``ceil(vms / parallel) x`` the slowest single move measured in the same run (``--singles``
moves of one VM alone, each timed end to end through ``execute``). Goal: wall <= 1.5 x ideal.

* sim: an in-process site of three hosts (moves are instant: this shows vmctl's own cost);
* xen: a xapisim process with a three-host pool (plain HTTP), VMs with a guest OS moved by
  ``VM.pool_migrate``;
* esx: the vCenter simulator's cluster DC0/DC0_C0, VMs moved by ``RelocateVM_Task``.
* kvm (not in the default list): a ``vmctl.Site`` of the KVM test host 1 and a third libvirtd
  of its own (tests/hosts/kvm.py), blank VMs moved live by ``virDomainMigrate3``.

Besides the times, each result says what a move costs this process: the connection's round
trips per move (where the driver counts them) and the client CPU per move
(``time.process_time`` over the whole evacuation, all threads). When a move is as quick as
the vCenter simulator's (about 20 ms), the evacuation is bound by that CPU (pyvmomi's SOAP
work runs under the GIL, on a machine whose cores other work shares), not by waiting: the
ideal assumes moves overlap perfectly.

    python bench/evacuate.py [--backend sim,xen,esx,kvm] [--vms 50] [--parallel 8] [--json FILE]
                             [--esx-move-ms 0,2000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import vmctl  # noqa: E402

GUEST = vmctl.BootSource(kernel="/boot/guest/vmlinuz", cmdline="console=hvc0")


def measure(
    hv: vmctl.Hypervisor, source: str, vms: int, parallel: int, singles: int
) -> dict[str, Any]:
    """Singles first (one VM each, to another host and back), then the whole evacuation."""
    host = hv.host(source)
    plan = vmctl.plan_evacuation(host)
    assert plan.ok and len(plan.moves) == vms, str(plan)
    single = []
    for move in plan.moves[:singles]:
        one = vmctl.Plan(
            source=plan.source,
            targets=plan.targets,
            moves=(move,),
            blockers=(),
            created=plan.created,
            hypervisor=hv,
        )
        t = time.perf_counter()
        report = vmctl.execute(one, max_parallel=1)
        single.append(time.perf_counter() - t)
        assert report.ok, str(report)
        back = vmctl.plan_evacuation(hv.host(move.target_id), [hv.host(source)])
        only = tuple(m for m in back.moves if m.vm_uuid == move.vm_uuid)
        again = vmctl.Plan(
            source=back.source,
            targets=back.targets,
            moves=only,
            blockers=(),
            created=back.created,
            hypervisor=hv,
        )
        assert vmctl.execute(again, max_parallel=1).ok
    plan = vmctl.plan_evacuation(hv.host(source))
    trips = getattr(hv._driver, "round_trips", None)  # type: ignore[attr-defined]
    cpu = time.process_time()
    t = time.perf_counter()
    report = vmctl.execute(plan, max_parallel=parallel)
    wall = time.perf_counter() - t
    cpu = time.process_time() - cpu
    assert report.ok, str(report)
    ideal = math.ceil(vms / parallel) * max(single)
    if trips is not None:
        trips = hv._driver.round_trips - trips  # type: ignore[attr-defined]
    return {
        "round_trips_per_move": round(trips / vms, 2) if trips is not None else None,
        "client_cpu_ms_per_move": round(1000 * cpu / vms, 2),
        "load_average": round(os.getloadavg()[0], 2),
        "vms": vms,
        "parallel": parallel,
        "single_s": [round(s, 4) for s in single],
        "slowest_single_s": round(max(single), 4),
        "ideal_s": round(ideal, 4),
        "wall_s": round(wall, 4),
        "ratio": round(wall / ideal, 2) if ideal else None,
    }


@contextlib.contextmanager
def sim_pool(vms: int) -> Iterator[tuple[vmctl.Hypervisor, str]]:
    site = f"bench-{secrets.token_hex(3)}"
    conns = [vmctl.connect(f"sim://{h}?site={site}") for h in ("h1", "h2", "h3")]
    try:
        for i in range(vms):
            conns[0].create_vm(
                vmctl.VMSpec(name=f"e{i:03d}", vcpus=1, memory_mib=256, boot=GUEST), start=True
            )
        yield conns[1], "h1"
    finally:
        for c in conns:
            c.close()


def _bulk_create(hv: vmctl.Hypervisor, vms: int, spec: Callable[[int], vmctl.VMSpec]) -> None:
    made = [hv.create_vm(spec(i)) for i in range(vms)]
    ops = [vm.start(wait=False) for vm in made]
    vmctl.wait_all(ops, timeout=600)


@contextlib.contextmanager
def xen_pool(vms: int) -> Iterator[tuple[vmctl.Hypervisor, str]]:
    from tests.hosts import xen as harness

    password = "bench-" + secrets.token_hex(6)
    sim = harness.start_simulator(hosts=3, vms=0, tls=False, password=password)
    try:
        uri = f"xen+http://root@127.0.0.1:{sim.port}"
        with vmctl.connect(uri + "?host=xenhost1", password=password, env={}) as one:
            _bulk_create(
                one,
                vms,
                lambda i: vmctl.VMSpec(name=f"e{i:03d}", vcpus=1, memory_mib=256, boot=GUEST),
            )
        with vmctl.connect(uri, password=password, env={}) as hv:
            yield hv, "xenhost1"
    finally:
        sim.stop()


@contextlib.contextmanager
def esx_pool(vms: int, move_ms: int = 0) -> Iterator[tuple[vmctl.Hypervisor, str]]:
    """The vCenter simulator's cluster; ``move_ms`` makes it take that long to serve each
    RelocateVM_Task (the launcher's -method-delay), as a real vMotion takes seconds."""
    from tests.hosts.esx import running_simulator

    delay = {"RelocateVM_Task": move_ms} if move_ms else None
    with running_simulator("vcenter", vms=0, method_delay=delay) as srv:
        base = f"vcenter://{srv.username}@{srv.host}:{srv.port}/DC0/DC0_C0"
        kw: dict[str, Any] = {"password": srv.password, "cafile": str(srv.cafile), "env": {}}
        with vmctl.connect(base + "/DC0_C0_H0", **kw) as one:
            _bulk_create(one, vms, lambda i: vmctl.VMSpec(name=f"e{i:03d}", vcpus=1, memory_mib=64))
        with vmctl.connect(base, **kw) as hv:
            yield hv, "DC0_C0_H0"


@contextlib.contextmanager
def kvm_site(vms: int) -> Iterator[tuple[vmctl.Hypervisor, str]]:
    """A vmctl.Site of the KVM test host 1 (qemu:///system, shared with others: only a
    target) and a third libvirtd of the bench's own (tests/hosts/kvm.py start_extra_host),
    the source: blank VMs (SeaBIOS, 48 MiB, an 8 MiB disk in the shared pool) moved live."""
    from tests.hosts import kvm

    extra = kvm.start_extra_host()
    try:
        kvm.ensure_network_and_pool(extra.uri)
        opts = f"?pool={kvm.POOL_NAME}"
        with (
            vmctl.connect(kvm.URI + opts) as h1,
            vmctl.connect(extra.uri + opts) as h3,
            vmctl.Site([h1, h3]) as site,
        ):
            uuids: list[str] = []
            try:
                for i in range(vms):
                    spec = vmctl.VMSpec(
                        name=f"vmctl-bench-site-{i:02d}",
                        vcpus=1,
                        memory_mib=48,
                        disks=[vmctl.DiskSpec(size_mib=8)],
                    )
                    uuids.append(h3.create_vm(spec, start=True).uuid)
                yield site, kvm.HOST3.netns
            finally:
                for uuid in uuids:
                    with contextlib.suppress(vmctl.NotFound):
                        site.vm(uuid).delete(force=True, timeout=120)
    finally:
        extra.stop()


POOLS = {"sim": sim_pool, "xen": xen_pool, "esx": esx_pool, "kvm": kvm_site}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="sim,xen,esx")
    ap.add_argument("--vms", type=int, default=50)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--singles", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--esx-move-ms",
        default="0",
        help="comma-separated: run esx once per value, the simulator taking that many ms to "
        "serve each RelocateVM_Task (0: its own ~15 ms, where client CPU is the floor)",
    )
    args = ap.parse_args()
    os.environ.setdefault("VMCTL_STATE_DIR", tempfile.mkdtemp(prefix="vmctl-bench-"))
    results: dict[str, Any] = {}
    runs: list[tuple[str, Any]] = []
    for backend in args.backend.split(","):
        if backend == "esx":
            for ms in (int(v) for v in args.esx_move_ms.split(",")):
                label = f"esx+{ms}ms" if ms else "esx"
                runs.append((label, lambda vms, ms=ms: esx_pool(vms, ms)))
        else:
            runs.append((backend, POOLS[backend]))
    for name, pool in runs:
        try:
            with pool(args.vms) as (hv, source):
                results[name] = measure(hv, source, args.vms, args.parallel, args.singles)
        except Exception as exc:  # a backend that cannot run here is reported, not fatal
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        r = results[name]
        if "error" in r:
            print(f"{name:4} error: {r['error']}")
        else:
            print(
                f"{name:4} {r['vms']} VMs, max_parallel={r['parallel']}: wall {r['wall_s']:.2f} s, "
                f"ideal {r['ideal_s']:.2f} s (ceil({r['vms']}/{r['parallel']}) x slowest single "
                f"{r['slowest_single_s']:.3f} s), ratio {r['ratio']}; per move: "
                f"{r['round_trips_per_move']} round trips, {r['client_cpu_ms_per_move']} ms "
                f"client CPU (load {r['load_average']})"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
