"""vmctl.move between two sim:// sites: disks byte for byte (read back through the target),
the mapping report, the refusals before anything is made, and faults mid-way (the target
full, unreachable, a disk that reads back wrong): nothing half-made left on the target and
the source untouched. The CLI's ``vmctl move``."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import vmctl
from vmctl import DiskSpec, MappingKind, NicSpec, PowerState, Resources, VMSpec
from vmctl.backup import disk_digests, write_disk
from vmctl.cli import cli
from vmctl_sim import SimDriver

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMCTL_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture
def site_b() -> Iterator[vmctl.Hypervisor]:
    with vmctl.connect("sim://site-b") as h:
        yield h


def names(hv: vmctl.Hypervisor) -> list[str]:
    return sorted(i.name for i in hv.list_vms())


def make_vm(hv: vmctl.Hypervisor, name: str = "web") -> tuple[vmctl.VM, list[bytes]]:
    """A VM with two disks holding known bytes (unaligned, in two extents, a hole between),
    one NIC and resource controls; returns the VM and each disk's whole content."""
    vm = hv.create_vm(
        VMSpec(
            name=name,
            vcpus=2,
            memory_mib=512,
            disks=[DiskSpec(size_mib=24), DiskSpec(size_mib=8, name="data")],
            nics=[NicSpec(network="default")],
            resources=Resources(cpu_shares=2000, memory_limit_mib=512),
            description="moved by the tests",
        )
    )
    disks = vm.config().disks
    images = [bytearray(d.size_mib * MIB) for d in disks]
    pieces = [
        (0, 7, os.urandom(3 * MIB + 5)),
        (0, 17 * MIB, os.urandom(MIB)),
        (1, 0, b"header" * 1000),
        (1, 8 * MIB - 4096, b"\xff" * 4096),  # the very end of the disk
    ]
    for index, offset, data in pieces:
        write_disk(vm, disks[index].id, offset, data)
        images[index][offset : offset + len(data)] = data
    return vm, [bytes(i) for i in images]


def target_bytes(vm: vmctl.VM, sizes: list[int]) -> list[bytes]:
    from vmctl.backup import read_disk

    return [read_disk(vm, d.id, 0, size) for d, size in zip(vm.config().disks, sizes, strict=True)]


def test_sim_to_sim_moves_the_disks_byte_for_byte(
    hv: vmctl.Hypervisor, site_b: vmctl.Hypervisor
) -> None:
    vm, images = make_vm(hv)
    before = disk_digests(vm)
    digests = [vmctl.move_digest(i) for i in images]
    seen: list[vmctl.backup.BackupProgress] = []
    report = vmctl.move(vm, site_b, network_map={"default": "isolated"}, progress=seen.append)
    assert report.verified and not report.dry_run
    moved = site_b.vm("web")
    assert report.target_uuid == moved.uuid
    assert target_bytes(moved, [len(i) for i in images]) == images
    assert [d.source_digest for d in report.disks] == digests
    assert [d.target_digest for d in report.disks] == digests
    # holes are not copied: of the 8 pieces of 4 MiB, those holding data (0 and 4 of disk 0,
    # 0 and 1 of disk 1)
    assert report.copied_bytes == 16 * MIB
    assert seen and seen[-1].done_bytes == seen[-1].total_bytes and seen[-1].phase == "move"
    # the configuration, mapped
    cfg = moved.config()
    assert (cfg.vcpus, cfg.memory_mib, cfg.description) == (2, 512, "moved by the tests")
    assert [n.network for n in cfg.nics] == ["isolated"]
    assert cfg.resources.cpu_shares == 2000 and cfg.resources.memory_limit_mib == 512
    src_mac = vm.config().nics[0].mac
    (mac,) = [n for n in report.mapping if n.item == "nic 0 MAC"]
    assert mac.kind is MappingKind.CHANGED and (mac.source, mac.target) == (
        src_mac,
        cfg.nics[0].mac,
    )
    (net,) = [n for n in report.mapping if n.item == "nic 0 network"]
    assert (net.kind, net.source, net.target) == (MappingKind.CHANGED, "default", "isolated")
    (fw,) = [n for n in report.mapping if n.item.startswith("firmware")]
    assert (fw.kind, fw.source, fw.target) == (MappingKind.KEPT, "bios", "bios")
    assert cfg.firmware is vmctl.Firmware.BIOS
    # the source is as it was: still there, stopped, same bytes; no power on
    assert vm.info().state is PowerState.STOPPED and disk_digests(vm) == before
    assert moved.info().state is PowerState.STOPPED and not report.powered_on
    # readable forms
    text = str(report)
    assert "verified" in text and "nic 0 MAC" in text and digests[0] in text
    data = json.loads(report.to_json())
    assert data["verified"] is True and data["mapping"][0]["kind"] == "kept"


def test_dry_run_touches_nothing(hv: vmctl.Hypervisor, site_b: vmctl.Hypervisor) -> None:
    vm, _ = make_vm(hv)
    vm.snapshot("before")
    report = vmctl.move(vm, site_b, dry_run=True)
    assert report.dry_run and not report.verified and report.target_uuid is None
    assert names(site_b) == [] and len(vm.snapshots()) == 1
    (snaps,) = [n for n in report.mapping if n.item == "snapshots"]
    assert snaps.kind is MappingKind.DROPPED and "1 snapshot" in (snaps.source or "")
    assert "dry run" in str(report)


def test_power_on_and_a_running_source(hv: vmctl.Hypervisor, site_b: vmctl.Hypervisor) -> None:
    vm, _ = make_vm(hv)
    vm.start()
    report = vmctl.move(vm, site_b, name="web-2")  # power_on=None: as the source
    assert report.powered_on and report.verified
    assert report.consistency is vmctl.backup.Consistency.CRASH
    assert site_b.vm("web-2").info().state is PowerState.RUNNING
    assert vm.info().state is PowerState.RUNNING  # the source goes on running
    vm.pause()
    with pytest.raises(vmctl.InvalidState, match="paused"):
        vmctl.move(vm, site_b, name="web-3", keep_source=False)
    assert names(site_b) == ["web-2"]


def _guest_writes_during_copy(hv: vmctl.Hypervisor, vm: vmctl.VM, images: list[bytes]) -> Any:
    """A progress callback: on the first call of the copy, the running guest writes into
    both disks (a new piece and over old data); ``images`` is updated to match."""
    driver = hv._conn.driver
    assert isinstance(driver, SimDriver)
    disks = vm.config().disks
    done: list[str] = []

    def progress(p: vmctl.backup.BackupProgress) -> None:
        done.append(p.phase)
        if done.count("move") == 1:
            for index, offset, data in ((0, 21 * MIB, b"late" * 999), (1, 100, b"new!")):
                driver.guest_write(vm.uuid, disks[index].id, offset, data)
                image = bytearray(images[index])
                image[offset : offset + len(data)] = data
                images[index] = bytes(image)

    return progress, done


def test_a_running_source_is_synced_after_it_stops(
    hv: vmctl.Hypervisor, site_b: vmctl.Hypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vmctl._move._job as job
    import vmctl.backup._backup as backup_job

    monkeypatch.setattr(backup_job, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(job, "STOP_GRACE_S", 0.5)  # the sim's VMs have no guest to ask
    vm, images = make_vm(hv)
    vm.start()
    progress, phases = _guest_writes_during_copy(hv, vm, images)
    report = vmctl.move(vm, site_b, keep_source=False, progress=progress)
    assert report.verified and report.source_deleted and report.powered_on
    assert "final sync" in phases
    # only the pieces the guest wrote meanwhile: one of each disk
    assert report.final_sync_bytes == 8 * MIB
    assert report.downtime_s is not None and report.downtime_s < report.duration_s
    moved = site_b.vm("web")
    assert moved.info().state is PowerState.RUNNING
    moved.power_off()
    assert target_bytes(moved, [len(i) for i in images]) == images
    assert [d.source_digest for d in report.disks] == [vmctl.move_digest(i) for i in images]
    assert "final sync" in str(report)


def test_a_running_source_without_tracking_is_stopped_first(
    hv: vmctl.Hypervisor, site_b: vmctl.Hypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vmctl._move._job as job

    monkeypatch.setattr(job, "STOP_GRACE_S", 0.5)
    vm, images = make_vm(hv)
    vm.start()
    caps = hv._conn.capabilities
    monkeypatch.setattr(hv._conn, "capabilities", caps - {vmctl.Capability.BACKUP_INCREMENTAL})
    report = vmctl.move(vm, site_b, keep_source=False, power_on=False)
    assert report.verified and report.final_sync_bytes is None and report.downtime_s is not None
    assert report.consistency is vmctl.backup.Consistency.STOPPED
    assert target_bytes(site_b.vm("web"), [len(i) for i in images]) == images


def test_a_failed_final_sync_starts_the_source_again(
    hv: vmctl.Hypervisor, site_b: vmctl.Hypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vmctl._move._job as job

    monkeypatch.setattr(job, "STOP_GRACE_S", 0.5)
    vm, images = make_vm(hv)
    vm.start()
    real = SimDriver.write_extents

    def full_when_stopped(self: SimDriver, uuid: str, *args: Any, **kw: Any) -> None:
        if uuid != vm.uuid and vm.info().state is PowerState.STOPPED:
            raise vmctl.InsufficientResources("the storage is full")
        real(self, uuid, *args, **kw)

    monkeypatch.setattr(SimDriver, "write_extents", full_when_stopped)
    progress, _ = _guest_writes_during_copy(hv, vm, images)
    with pytest.raises(vmctl.InsufficientResources, match="started again"):
        vmctl.move(vm, site_b, keep_source=False, progress=progress)
    assert names(site_b) == [] and names(hv) == ["web"]
    assert vm.info().state is PowerState.RUNNING


def test_keep_source_false_deletes_it_after_verification(
    hv: vmctl.Hypervisor, site_b: vmctl.Hypervisor
) -> None:
    vm, images = make_vm(hv)
    report = vmctl.move(vm, site_b, keep_source=False, power_on=False)
    assert report.source_deleted and report.verified
    assert names(hv) == [] and names(site_b) == ["web"]
    assert target_bytes(site_b.vm("web"), [len(i) for i in images]) == images


def test_refusals_come_before_anything_is_made(
    hv: vmctl.Hypervisor, site_b: vmctl.Hypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm, _ = make_vm(hv)
    site_b.create_vm(VMSpec(name="web"))
    with pytest.raises(vmctl.AlreadyExists, match="another name"):
        vmctl.move(vm, site_b)
    with pytest.raises(vmctl.ValidationError, match="no NIC on network 'lan'"):
        vmctl.move(vm, site_b, name="x", network_map={"lan": "default"})
    with pytest.raises(vmctl.NotFound, match="network_map"):  # no such network on the target
        vmctl.move(vm, site_b, name="x", network_map={"default": "dmz"})
    with pytest.raises(vmctl.ValidationError):
        vmctl.move(vm, "sim://site-b", name="x")  # type: ignore[arg-type]
    with pytest.raises(vmctl.ValidationError):
        vmctl.move(vm, site_b, name="a/b")
    with pytest.raises(vmctl.ValidationError):
        vmctl.move(vm, site_b, name="x", keep_source="no")  # type: ignore[arg-type]
    caps = site_b._conn.capabilities
    monkeypatch.setattr(site_b._conn, "capabilities", caps - {vmctl.Capability.RESTORE})
    with pytest.raises(vmctl.NotSupported, match="restore"):
        vmctl.move(vm, site_b, name="x")
    monkeypatch.setattr(site_b._conn, "capabilities", caps)
    # a target whose hosts have too little memory
    from vmctl import Host

    small = [
        Host(
            id="h", name="h", state=vmctl.HostState.CONNECTED, cpus=16, cpu_mhz=1, memory_mib=256,
            memory_used_mib=0, cpu_percent=None, vm_count=0,
        )
    ]  # fmt: skip
    monkeypatch.setattr(vmctl.Hypervisor, "hosts", lambda self: small)
    with pytest.raises(vmctl.InsufficientResources, match="512 MiB"):
        vmctl.move(vm, site_b, name="x")
    assert names(site_b) == ["web"]
    assert names(hv) == ["web"] and vm.info().state is PowerState.STOPPED


def test_a_vm_moved_twice_at_once_is_refused(
    hv: vmctl.Hypervisor, site_b: vmctl.Hypervisor
) -> None:
    vm, _ = make_vm(hv)
    errors: list[BaseException] = []

    def second_move(_p: Any) -> None:
        if not errors:
            try:
                vmctl.move(hv.vm("web"), site_b, name="web-twice")
            except vmctl.VmctlError as exc:
                errors.append(exc)

    report = vmctl.move(vm, site_b, progress=second_move)
    assert report.verified
    assert len(errors) == 1 and isinstance(errors[0], vmctl.Conflict)
    assert "being moved already" in str(errors[0])
    assert names(site_b) == ["web"]
    # from another thread too, and the lock is free again afterwards
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(vmctl.move(vm, site_b, name="again")))
    t.start()
    t.join()
    assert isinstance(out[0], vmctl.MoveReport)


@pytest.mark.parametrize(
    "fault",
    [
        vmctl.InsufficientResources("the storage of disk disk1 is full"),
        vmctl.ConnectionError("connection reset by the target", sent=True),
    ],
    ids=["target-full", "target-unreachable"],
)
def test_a_fault_mid_way_leaves_nothing_on_the_target(
    hv: vmctl.Hypervisor,
    site_b: vmctl.Hypervisor,
    monkeypatch: pytest.MonkeyPatch,
    fault: vmctl.VmctlError,
) -> None:
    vm, _ = make_vm(hv)
    before = disk_digests(vm)
    calls: list[object] = []
    real = SimDriver.write_extents

    def failing(self: SimDriver, uuid: str, *args: Any, **kw: Any) -> None:
        if uuid != vm.uuid:
            calls.append(args)
            if len(calls) >= 2:
                raise fault
        real(self, uuid, *args, **kw)

    monkeypatch.setattr(SimDriver, "write_extents", failing)
    with pytest.raises(type(fault)):
        vmctl.move(vm, site_b, keep_source=False)
    assert len(calls) >= 2
    assert names(site_b) == []
    assert names(hv) == ["web"] and disk_digests(vm) == before
    assert vm.info().state is PowerState.STOPPED


def test_a_disk_that_reads_back_wrong_fails_the_move(
    hv: vmctl.Hypervisor, site_b: vmctl.Hypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm, _ = make_vm(hv)
    real = SimDriver.write_extents

    def flipping(self: SimDriver, uuid: str, disk_id: str, extents: Any, **kw: Any) -> None:
        first = extents[0]
        data = bytes([first.data[0] ^ 1]) + first.data[1:]
        real(
            self, uuid, disk_id, [type(first)(first.offset, first.length, data), *extents[1:]], **kw
        )

    monkeypatch.setattr(SimDriver, "write_extents", flipping)
    with pytest.raises(vmctl.VmctlError, match="differ from the source"):
        vmctl.move(vm, site_b, keep_source=False)
    assert names(site_b) == [] and names(hv) == ["web"]


def test_a_target_vm_that_cannot_be_deleted_is_named(
    hv: vmctl.Hypervisor, site_b: vmctl.Hypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm, _ = make_vm(hv)

    def full(self: SimDriver, *args: Any, **kw: Any) -> None:
        raise vmctl.InsufficientResources("the storage is full")

    def undeletable(self: SimDriver, *args: Any, **kw: Any) -> None:
        raise vmctl.BackendError("the host refused to delete")

    monkeypatch.setattr(SimDriver, "write_extents", full)
    monkeypatch.setattr(SimDriver, "delete_vm", undeletable)
    with pytest.raises(vmctl.InsufficientResources) as err:
        vmctl.move(vm, site_b)
    (left,) = err.value.left_behind
    assert left[0] == "vm" and left[1] == site_b.vm("web").uuid
    assert "could not be deleted" in str(err.value)


def test_cli_move(tmp_path: Path) -> None:
    state = tmp_path / "site.json"
    src, dst = f"sim://a?state={state}", f"sim://b?state={state}"
    with vmctl.connect(src) as a:
        make_vm(a)
    runner = CliRunner()
    dry = runner.invoke(cli, ["-c", src, "move", "web", "--to", dst, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "dry run" in dry.output and "nic 0 MAC" in dry.output
    bad = runner.invoke(cli, ["-c", src, "move", "web", "--to", dst, "--network", "nope"])
    assert bad.exit_code == 2 and "SRC=DST" in bad.output
    done = runner.invoke(
        cli,
        ["-c", src, "--json", "move", "web", "--to", dst, "--network", "default=isolated",
         "--name", "web-b", "--start", "--delete-source"],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    data = json.loads(done.output)
    assert data["verified"] and data["powered_on"] and data["source_deleted"]
    assert data["target_name"] == "web-b"
    with vmctl.connect(src) as a, vmctl.connect(dst) as b:
        assert names(a) == [] and names(b) == ["web-b"]
        assert b.vm("web-b").info().state is PowerState.RUNNING
    again = runner.invoke(cli, ["-c", dst, "move", "web-b", "--to", dst])
    assert again.exit_code != 0 and "--name" in again.output


def test_a_source_that_cannot_be_deleted_keeps_the_moved_vm(
    hv: vmctl.Hypervisor, site_b: vmctl.Hypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm, _ = make_vm(hv)
    real = SimDriver.delete_vm

    def refuse_source(self: SimDriver, uuid: str, *args: Any, **kw: Any) -> Any:
        if uuid == vm.uuid:
            raise vmctl.BackendError("the host refused to delete")
        return real(self, uuid, *args, **kw)

    monkeypatch.setattr(SimDriver, "delete_vm", refuse_source)
    with pytest.raises(vmctl.BackendError, match="the move itself succeeded") as err:
        vmctl.move(vm, site_b, keep_source=False)
    assert site_b.vm("web").uuid in str(err.value)
    assert names(hv) == ["web"]


def test_a_running_guest_with_an_agent_is_moved_quiesced(
    hv: vmctl.Hypervisor, site_b: vmctl.Hypervisor
) -> None:
    import time

    booted = hv.create_vm(
        VMSpec(name="booted", disks=[DiskSpec(size_mib=4)], boot=vmctl.BootSource(kernel="/k")),
        start=True,
    )
    deadline = time.monotonic() + 10  # the sim's guest agent answers after GUEST_DELAY
    while booted.guest_info().agent is not vmctl.AgentState.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    report = vmctl.move(booted, site_b, power_on=False)
    assert report.consistency is vmctl.backup.Consistency.QUIESCED and report.verified


def test_cli_conformance_move_to(tmp_path: Path) -> None:
    """`vmctl conformance URI --move-to URI` runs the MOVE clauses against that target."""
    state = tmp_path / "site.json"
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["conformance", f"sim://kit-a?state={state}", "--move-to", f"sim://kit-b?state={state}",
         "--clause", "MOVE", "--report", str(tmp_path / "r.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert {c: r["status"] for c, r in results.items() if c.startswith("MOVE-")} == {
        "MOVE-DELETE-1": "pass",
        "MOVE-REFUSE-1": "pass",
        "MOVE-ROUNDTRIP-1": "pass",
    }
    # the URI reaches the kit: a target no driver serves fails the run
    bad = runner.invoke(
        cli,
        ["conformance", f"sim://kit-a?state={state}", "--move-to", "nosuch://host",
         "--clause", "MOVE-REFUSE"],
    )  # fmt: skip
    assert bad.exit_code != 0
