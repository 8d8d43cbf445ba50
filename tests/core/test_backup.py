"""Backup and restore on sim:// into a local directory: full and incremental, dedup across
backups and VMs, consistency levels, restore into a new VM and in place, verify, prune,
listing, and the checks the core makes before any driver call."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import vmctl
from vmctl import DiskSpec, NicSpec, PowerState, Resources, VMSpec
from vmctl.backup import (
    BackupKind,
    BackupProgress,
    Consistency,
    Repository,
    open_repo,
    read_disk,
    write_disk,
)
from vmctl_sim import SimDriver

MIB = 1024 * 1024
CS = 256 * 1024  # small chunks keep the tests quick


def pattern(seed: int, n: int) -> bytes:
    """n bytes no other seed produces (so chunks do not deduplicate by accident)."""
    block = seed.to_bytes(4, "big") * 16 + bytes(range(256))
    return (block * (n // len(block) + 1))[:n]


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return open_repo(str(tmp_path / "repo"), chunk_size=CS)


def make(hv: vmctl.Hypervisor, name: str = "src", sizes: tuple[int, ...] = (4, 2)) -> vmctl.VM:
    return hv.create_vm(
        VMSpec(
            name=name,
            vcpus=2,
            memory_mib=256,
            disks=[DiskSpec(size_mib=s) for s in sizes],
            nics=[NicSpec(network="default")],
            resources=Resources(cpu_shares=2048),
            description="backed up",
        )
    )


def disk_ids(vm: vmctl.VM) -> list[str]:
    return [d.id for d in vm.config().disks]


def content(vm: vmctl.VM) -> list[bytes]:
    return [read_disk(vm, d.id, 0, d.size_mib * MIB) for d in vm.config().disks]


def test_full_then_incremental_restore_both_byte_for_byte(
    hv: vmctl.Hypervisor, repo: Repository
) -> None:
    vm = make(hv)
    d0, d1 = disk_ids(vm)
    write_disk(vm, d0, 0, pattern(1, 3 * CS + 100))
    write_disk(vm, d1, MIB, pattern(2, 5000))
    gen1 = content(vm)
    first = vm.backup(repo)
    assert first.kind is BackupKind.FULL
    assert "no earlier backup" in first.reason
    assert first.consistency is Consistency.STOPPED
    assert first.parent is None
    assert first.read_bytes == 4 * CS + CS  # 4 chunks of disk 0, 1 of disk 1: holes not read

    write_disk(vm, d0, 2 * CS + 7, b"changed")
    gen2 = content(vm)
    second = vm.backup(repo)
    assert second.kind is BackupKind.INCREMENTAL
    assert second.parent == first.id
    assert second.read_bytes == CS  # only the changed chunk
    assert second.disks[0].read_chunks == 1 and second.disks[1].read_chunks == 0
    assert second.disks[0].new_chunks == 1

    one = repo.restore(first.id, hv, name="gen1")
    two = repo.restore(second.id, hv, name="gen2")
    assert content(one) == gen1
    assert content(two) == gen2
    assert gen1 != gen2
    cfg = two.config()
    assert (cfg.vcpus, cfg.memory_mib, cfg.description) == (2, 256, "backed up")
    assert cfg.resources.cpu_shares == 2048
    assert [n.network for n in cfg.nics] == ["default"]
    assert cfg.nics[0].mac != vm.config().nics[0].mac  # a new VM gets new MACs
    assert one.info().state is PowerState.STOPPED


def test_full_true_reads_everything_again_and_says_why(
    hv: vmctl.Hypervisor, repo: Repository
) -> None:
    vm = make(hv)
    write_disk(vm, disk_ids(vm)[0], 0, pattern(3, CS))
    vm.backup(repo)
    again = vm.backup(repo, full=True)
    assert again.kind is BackupKind.FULL and "full=True" in again.reason
    assert again.read_bytes == CS
    assert again.disks[0].new_chunks == 0  # the same content is stored once


def test_identical_data_is_stored_once_across_vms(hv: vmctl.Hypervisor, repo: Repository) -> None:
    a, b = make(hv, "a"), make(hv, "b")
    for vm in (a, b):
        write_disk(vm, disk_ids(vm)[0], 0, pattern(9, 2 * CS))
    first = a.backup(repo)
    second = b.backup(repo)
    assert first.disks[0].new_chunks == 2
    assert second.disks[0].new_chunks == 0
    assert second.new_bytes == 0
    chunks = list((Path(repo.url) / "chunks").rglob("*"))
    assert len([c for c in chunks if c.is_file()]) == 2


def test_zero_chunks_are_not_stored(hv: vmctl.Hypervisor, repo: Repository) -> None:
    vm = make(hv, sizes=(4,))
    write_disk(vm, disk_ids(vm)[0], CS, bytes(CS))  # zeroes written: still nothing to keep
    info = vm.backup(repo)
    assert info.disks[0].data_chunks == 0
    assert info.new_bytes == 0


def test_running_vm_is_crash_consistent_or_quiesced(hv: vmctl.Hypervisor, repo: Repository) -> None:
    plain = make(hv, "plain")
    plain.start()
    info = plain.backup(repo)
    assert info.consistency is Consistency.CRASH
    assert "not quiesced" in info.reason  # asked by default, the guest has no agent
    with pytest.raises(vmctl.InvalidState, match="no guest agent"):
        plain.backup(repo, quiesce=True)
    booted = hv.create_vm(
        VMSpec(
            name="booted",
            disks=[DiskSpec(size_mib=1)],
            boot=vmctl.BootSource(kernel="/sim/vmlinuz"),
        ),
        start=True,
    )
    import time

    deadline = time.monotonic() + 10  # the sim's guest agent answers after GUEST_DELAY
    while booted.guest_info().agent is not vmctl.AgentState.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert booted.backup(repo).consistency is Consistency.QUIESCED
    assert booted.backup(repo, quiesce=False).consistency is Consistency.CRASH


def test_point_in_time_is_kept_while_the_guest_writes(
    hv: vmctl.Hypervisor, repo: Repository
) -> None:
    """Writes during a backup do not reach it (copy-on-write), and the next incremental
    backup has them."""
    vm = make(hv, sizes=(2,))
    disk = disk_ids(vm)[0]
    write_disk(vm, disk, 0, pattern(4, 2 * CS))
    before = content(vm)
    vm.start()
    driver = hv._driver
    assert isinstance(driver, SimDriver)
    calls = []

    def progress(p: BackupProgress) -> None:
        calls.append(p)
        if len(calls) == 1:
            driver.guest_write(vm.uuid, disk, 10, b"during the backup")

    import vmctl.backup._backup as job

    old = job.PROGRESS_EVERY_S
    job.PROGRESS_EVERY_S = 0.0
    try:
        first = vm.backup(repo, progress=progress)
    finally:
        job.PROGRESS_EVERY_S = old
    assert calls and calls[-1].done_bytes == calls[-1].total_bytes
    restored = repo.restore(first.id, hv, name="pit")
    assert content(restored) == before
    second = vm.backup(repo)
    assert second.kind is BackupKind.INCREMENTAL and second.read_bytes == CS
    vm.power_off()
    assert content(repo.restore(second.id, hv, name="after")) == content(vm)


def test_replace_writes_back_into_the_stopped_original(
    hv: vmctl.Hypervisor, repo: Repository
) -> None:
    vm = make(hv)
    d0, d1 = disk_ids(vm)
    write_disk(vm, d0, 0, pattern(5, CS))
    saved = content(vm)
    info = vm.backup(repo)
    write_disk(vm, d0, 0, pattern(6, 2 * CS))  # overwrite, and more
    write_disk(vm, d1, 0, pattern(7, 10))
    vm.start()
    with pytest.raises(vmctl.InvalidState, match="stop it first"):
        repo.restore(info.id, hv, replace=True)
    vm.power_off()
    same = repo.restore(info.id, hv, replace=True)
    assert same.uuid == vm.uuid
    assert content(vm) == saved
    with pytest.raises(vmctl.ValidationError, match="replace"):
        repo.restore(info.id, hv, replace=True, name="x")


def test_restore_defaults_to_the_original_name(hv: vmctl.Hypervisor, repo: Repository) -> None:
    vm = make(hv)
    info = vm.backup(repo)
    with pytest.raises(vmctl.AlreadyExists):
        repo.restore(info.id, hv)
    vm.delete()
    back = repo.restore(info.id, hv)
    assert back.name == "src" and back.uuid != vm.uuid


def test_listing_per_vm_and_get(hv: vmctl.Hypervisor, repo: Repository) -> None:
    a, b = make(hv, "a"), make(hv, "b")
    ia = a.backup(repo)
    ib = b.backup(repo)
    ia2 = a.backup(repo)
    assert [i.id for i in repo.backups()] == [ia.id, ib.id, ia2.id]
    assert [i.id for i in repo.backups(a)] == [ia.id, ia2.id]
    assert [i.id for i in repo.backups("b")] == [ib.id]
    assert [i.id for i in repo.backups(b.uuid)] == [ib.id]
    assert repo.get(ia2.id) == ia2
    with pytest.raises(vmctl.NotFound):
        repo.get("20000101T000000Z-000000")
    again = open_repo(repo.url)
    assert again.chunk_size == CS and again.id == repo.id


def test_verify_and_prune(hv: vmctl.Hypervisor, repo: Repository) -> None:
    vm = make(hv, sizes=(2,))
    disk = disk_ids(vm)[0]
    ids = []
    for i in range(4):
        write_disk(vm, disk, i * CS, pattern(20 + i, CS))
        ids.append(vm.backup(repo).id)
    report = repo.verify()
    assert report.ok and report.chunks_checked == 4 and len(report.backups) == 4
    dry = repo.prune(keep_last=2, dry_run=True)
    assert dry.removed == tuple(ids[:2]) and len(repo.backups()) == 4
    result = repo.prune(keep_last=2)
    assert result.kept == tuple(ids[2:]) and result.removed == tuple(ids[:2])
    assert result.chunks_removed == 0  # every chunk is still in the newest backups
    assert [i.id for i in repo.backups()] == ids[2:]
    assert repo.verify().ok
    write_disk(vm, disk, 0, pattern(99, 2 * CS))
    ids.append(vm.backup(repo).id)
    result = repo.prune(keep_last=1)
    assert result.chunks_removed == 2  # the old chunks 0 and 1, overwritten in the newest
    assert repo.verify().ok
    vm2 = repo.restore(ids[-1], hv, name="latest")
    assert content(vm2) == content(vm)
    with pytest.raises(vmctl.ValidationError, match="policy"):
        repo.prune()


def test_keep_daily(hv: vmctl.Hypervisor, repo: Repository) -> None:
    import datetime as dt

    from vmctl.backup._prune import select

    vm = make(hv, sizes=(1,))
    ms = []
    for _ in range(3):
        vm.backup(repo)
    ms = repo.manifests()[0]
    import attrs

    day = dt.timedelta(days=1)
    shifted = [attrs.evolve(m, created=m.created - day * (2 - i // 2)) for i, m in enumerate(ms)]
    # days: -2, -2, -1 -> the newest of each of the last 2 days
    assert select(shifted, None, 2) == {shifted[1].id, shifted[2].id}
    assert select(shifted, 1, None) == {shifted[2].id}
    assert select(shifted, 1, 1) == {shifted[2].id}


def test_checks_before_any_driver_call(hv: vmctl.Hypervisor, repo: Repository) -> None:
    vm = make(hv)
    with pytest.raises(vmctl.ValidationError, match="full"):
        vm.backup(repo, full="yes")  # type: ignore[arg-type]
    with pytest.raises(vmctl.ValidationError, match="quiesce"):
        vm.backup(repo, quiesce=1)  # type: ignore[arg-type]
    with pytest.raises(vmctl.ValidationError, match="progress"):
        vm.backup(repo, progress=3)  # type: ignore[arg-type]
    with pytest.raises(vmctl.ValidationError, match="timeout"):
        vm.backup(repo, timeout=float("nan"))
    with pytest.raises(vmctl.ValidationError, match="chunk_size"):
        open_repo(repo.url + "-x", chunk_size=1000)
    with pytest.raises(vmctl.ValidationError, match="chunk size is set"):
        open_repo(repo.url, chunk_size=CS * 2)
    assert repo.backups() == []


class NoBackup(SimDriver):
    """The sim without any disk access: as the kvm/esx/xen drivers are today."""

    def narrow_capabilities(
        self, offered: frozenset[vmctl.Capability]
    ) -> frozenset[vmctl.Capability]:
        C = vmctl.Capability
        return offered - {C.BACKUP, C.BACKUP_INCREMENTAL, C.BACKUP_QUIESCE, C.RESTORE}


class NoTracking(SimDriver):
    def narrow_capabilities(
        self, offered: frozenset[vmctl.Capability]
    ) -> frozenset[vmctl.Capability]:
        C = vmctl.Capability
        return offered - {C.BACKUP_INCREMENTAL, C.BACKUP_QUIESCE}


def test_capabilities_are_checked_first(repo: Repository) -> None:
    vmctl.register("nobackup", NoBackup)
    vmctl.register("notrack", NoTracking)
    try:
        with vmctl.connect("nobackup://h") as hv:
            vm = make(hv)
            with pytest.raises(vmctl.NotSupported) as err:
                vm.backup(repo)
            assert err.value.capability is vmctl.Capability.BACKUP
            with pytest.raises(vmctl.NotSupported) as err:
                repo.restore("any", hv)
            assert err.value.capability is vmctl.Capability.RESTORE
            with pytest.raises(vmctl.NotSupported):
                write_disk(vm, "disk1", 0, b"x")
        with vmctl.connect("notrack://h2") as hv:
            vm = make(hv)
            with pytest.raises(vmctl.NotSupported) as err:
                vm.backup(repo, quiesce=True)
            assert err.value.capability is vmctl.Capability.BACKUP_QUIESCE
            vm.backup(repo)
            second = vm.backup(repo)
            assert second.kind is BackupKind.FULL
            assert "does not track changed blocks" in second.reason
            vm.start()
            assert vm.backup(repo).consistency is Consistency.CRASH  # no quiesce asked
    finally:
        vmctl.unregister("nobackup")
        vmctl.unregister("notrack")
    assert repo.backups() and not repo.backups("nothing")


def test_lost_checkpoint_reads_the_disk_whole(hv: vmctl.Hypervisor, repo: Repository) -> None:
    vm = make(hv, sizes=(1, 1))
    vm.backup(repo)
    driver = hv._driver
    assert isinstance(driver, SimDriver)
    with driver.site.transaction():  # the host forgets its tracking of the first disk
        driver._vm(vm.uuid).disks[0].store = "replaced"
    second = vm.backup(repo)
    assert second.kind is BackupKind.INCREMENTAL  # the second disk still was
    assert "has no checkpoint" in second.disks[0].note
    assert second.disks[1].note == ""


def test_manifest_on_disk_is_the_documented_format(hv: vmctl.Hypervisor, repo: Repository) -> None:
    vm = make(hv, sizes=(1,))
    write_disk(vm, disk_ids(vm)[0], 0, pattern(8, 10))
    info = vm.backup(repo)
    root = Path(repo.url)
    doc = json.loads((root / "backups" / vm.uuid / f"{info.id}.json").read_text())
    assert doc["format"] == "vmctl-backup-manifest" and doc["version"] == 1
    assert doc["hash"] == "sha256" and doc["chunk_size"] == CS
    assert doc["consistency"] == "stopped" and doc["kind"] == "full"
    assert doc["config"]["vcpus"] == 2
    (chunk,) = [c for c in doc["disks"][0]["chunks"] if c]
    frame = (root / "chunks" / chunk[:2] / chunk).read_bytes()
    assert frame[:8] == b"VMCTLCK1" and frame[8] in (0, 1)
    config = json.loads((root / "vmctl-repo.json").read_text())
    assert config["format"] == "vmctl-backup-repository" and config["chunk_size"] == CS
    assert not list(root.rglob("*.tmp-*"))
    assert os.listdir(root / "locks") == []


def test_state_file_disks_are_sparse_files(tmp_path: Path) -> None:
    uri = f"sim://files?state={tmp_path / 'site.json'}"
    with vmctl.connect(uri) as hv:
        vm = make(hv, sizes=(8,))
        write_disk(vm, disk_ids(vm)[0], 3 * MIB, pattern(11, 1000))
        repo = open_repo(str(tmp_path / "repo"), chunk_size=CS)
        info = vm.backup(repo)
        assert info.read_bytes == CS
    files = list((tmp_path / "site.json.disks").iterdir())
    assert len(files) == 1 and files[0].stat().st_size == 8 * MIB
    assert files[0].stat().st_blocks * 512 < MIB  # sparse
    with vmctl.connect(uri) as hv:  # another connection (as another CLI call) sees the data
        vm = hv.vm("src")
        assert read_disk(vm, disk_ids(vm)[0], 3 * MIB, 1000) == pattern(11, 1000)
        second = vm.backup(repo)
        assert second.kind is BackupKind.INCREMENTAL and second.read_bytes == 0
        vm.delete()
    assert list((tmp_path / "site.json.disks").iterdir()) == []


def test_spec_from_a_foreign_manifest(hv: vmctl.Hypervisor, repo: Repository) -> None:
    """A backup made on another backend restores with what this host can take: odd disk
    names and buses left to the host, resource controls it lacks dropped."""
    import attrs

    from vmctl.backup._restore import spec_from

    vm = make(hv, sizes=(1,))
    m = repo.manifest(vm.backup(repo).id)
    disk = attrs.evolve(m.disks[0], name="[datastore1] web/web.vmdk", bus="nvme", size_bytes=5)
    foreign = attrs.evolve(m, disks=(disk,), config={**m.config, "guest_os": "solaris"})
    spec = spec_from(foreign, "copy", "default", frozenset())
    (d,) = spec.disks
    assert (d.name, d.bus.value, d.size_mib, d.pool) == (None, "default", 1, "default")
    assert spec.resources == Resources() and spec.guest_os.value == "other"


class Spy(SimDriver):
    """The sim without the disk capabilities (or with backup only), logging every call."""

    name = "bkspy"
    drop: frozenset[vmctl.Capability] = frozenset()
    calls: list[str] = []

    def narrow_capabilities(
        self, offered: frozenset[vmctl.Capability]
    ) -> frozenset[vmctl.Capability]:
        return offered - self.drop

    def __getattribute__(self, attr: str) -> object:
        value = super().__getattribute__(attr)
        if callable(value) and not attr.startswith("_") and attr != "narrow_capabilities":
            Spy.calls.append(attr)
        return value


@pytest.mark.parametrize(
    ("drop", "request_", "cap"),
    [
        ("all", lambda vm, repo: vm.backup(repo), "backup"),
        ("all", lambda vm, repo: vm.backup(repo.url), "backup"),
        ("all", lambda vm, repo: read_disk(vm, "disk1", 0, 1), "backup"),
        ("all", lambda vm, repo: write_disk(vm, "disk1", 0, b"x"), "restore"),
        ("all", lambda vm, repo: repo.restore("x", vm.hypervisor), "restore"),
        ("quiesce", lambda vm, repo: vm.backup(repo, quiesce=True), "backup_quiesce"),
    ],
)
def test_no_driver_call_before_the_capability_check(
    repo: Repository, drop: str, request_: object, cap: str
) -> None:
    C = vmctl.Capability
    Spy.drop = (
        frozenset({C.BACKUP, C.BACKUP_INCREMENTAL, C.BACKUP_QUIESCE, C.RESTORE})
        if drop == "all"
        else frozenset({C.BACKUP_QUIESCE})
    )
    vmctl.register("bkspy", Spy, clobber=True)
    try:
        with vmctl.connect("bkspy://h") as hv:
            vm = make(hv)
            Spy.calls = []
            with pytest.raises(vmctl.NotSupported) as err:
                request_(vm, repo)  # type: ignore[operator]
            assert err.value.capability is C(cap)
            assert Spy.calls == []
            assert repo.backups() == []
            if drop == "quiesce":  # the spy does see the calls of a backup that may run
                vm.backup(repo)
                assert "open_point_in_time" in Spy.calls and "close_point_in_time" in Spy.calls
    finally:
        vmctl.unregister("bkspy")


def test_disk_digests_read_all_disks_at_one_point_in_time(hv: vmctl.Hypervisor) -> None:
    import hashlib

    from vmctl.backup import disk_digests

    vm = make(hv, "dg", sizes=(4, 2))
    first, second = disk_ids(vm)
    write_disk(vm, first, MIB - 3, pattern(7, 5 * MIB // 2))
    write_disk(vm, second, 2 * MIB - 10, pattern(8, 10))
    want = [hashlib.sha256(c).hexdigest() for c in content(vm)]
    assert disk_digests(vm) == want
    prefixes = [hashlib.sha256(c[: 3 * MIB]).hexdigest() for c in content(vm)]
    assert disk_digests(vm, lengths=[3 * MIB, 3 * MIB]) == prefixes  # 3 MiB > disk 2's size
    with pytest.raises(vmctl.ValidationError, match="one length"):
        disk_digests(vm, lengths=[MIB])
    with pytest.raises(vmctl.ValidationError, match="one length"):
        disk_digests(vm, lengths=[MIB, -1])
