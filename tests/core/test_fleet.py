"""vmctl.Fleet on sim sites: one operation on every member at once, values and errors per
member (a member that cannot connect or fails is reported, not fatal), given connections
left open, and a process pool executor (members as URIs, each task connecting itself)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

import vmctl


def _seed(uri: str, vms: int) -> None:
    with vmctl.connect(uri) as hv:
        for i in range(vms):
            hv.create_vm(vmctl.VMSpec(name=f"vm{i}", vcpus=1, memory_mib=256), start=i % 2 == 0)


def test_fleet_lists_every_member_and_reports_failures() -> None:
    uris = [f"sim://h{i}?site=fleet{i}" for i in range(4)]
    for n, uri in enumerate(uris):
        _seed(uri, n + 1)
    bad = "sim://x?site=fleetbad&bogus=1"  # refused at connect: an unknown option
    with vmctl.Fleet([*uris, bad]) as fleet:
        assert fleet.members == [*uris, bad]
        listed = fleet.list_vms()
        assert {u: len(v) for u, v in listed.values.items()} == {
            u: n + 1 for n, u in enumerate(uris)
        }
        assert list(listed.errors) == [bad] and isinstance(listed.errors[bad], vmctl.VmctlError)
        assert not listed.ok and "1 failed" in str(listed)
        hosts = fleet.hosts()
        assert {u: h[0].vm_count for u, h in hosts.values.items()} == {
            u: n + 1 for n, u in enumerate(uris)
        }
        stats = fleet.stats()
        assert all(len(s) == n + 1 for n, s in enumerate(stats.values.values()))
        missing = fleet.run(lambda hv: hv.vm("nope"))
        assert set(missing.errors) == {*uris, bad}
        assert all(isinstance(missing.errors[u], vmctl.NotFound) for u in uris)
        assert "unreachable" in repr(fleet)


def test_given_connections_stay_open() -> None:
    hv = vmctl.connect("sim://given?site=fleetgiven")
    try:
        with vmctl.Fleet([hv]) as fleet:
            assert fleet.list_vms().values == {str(hv.uri): []}
        assert not hv.closed
    finally:
        hv.close()
    for bad in ([], "sim://a", [""], [1]):
        with pytest.raises(vmctl.ValidationError):
            vmctl.Fleet(bad)  # type: ignore[arg-type]
    with pytest.raises(vmctl.ValidationError):
        vmctl.Fleet(["sim://a", "sim://a"])


def test_process_pool_members_connect_in_the_workers(tmp_path: Path) -> None:
    uris = [f"sim://p{i}?state={tmp_path / f's{i}.json'}" for i in range(3)]
    for n, uri in enumerate(uris):
        _seed(uri, n + 2)
    spawn = multiprocessing.get_context("spawn")  # no fork of a process with threads
    with ProcessPoolExecutor(max_workers=2, mp_context=spawn) as pool:
        fleet = vmctl.Fleet(uris, executor=pool)
        listed = fleet.list_vms()
        assert listed.ok, str(listed)
        assert {u: len(v) for u, v in listed.values.items()} == {
            u: n + 2 for n, u in enumerate(uris)
        }
        with pytest.raises(vmctl.ValidationError):
            vmctl.Fleet([vmctl.connect("sim://q")], executor=pool)
        fleet.close()


def test_a_dask_local_cluster_runs_the_fleet(tmp_path: Path) -> None:
    """Dask's distributed (the 'fleet' extra): a real LocalCluster of two worker processes;
    each task connects to its member's URI on a worker."""
    distributed = pytest.importorskip("distributed")
    uris = [f"sim://k{i}?state={tmp_path / f'k{i}.json'}" for i in range(3)]
    for n, uri in enumerate(uris):
        _seed(uri, n + 1)
    bad = "sim://k9?site=s&bogus=1"
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        with vmctl.Fleet([*uris, bad], executor=client.get_executor()) as fleet:
            listed = fleet.list_vms()
        assert {u: len(v) for u, v in listed.values.items()} == {
            u: n + 1 for n, u in enumerate(uris)
        }
        assert list(listed.errors) == [bad]
        assert isinstance(listed.errors[bad], vmctl.ValidationError)
