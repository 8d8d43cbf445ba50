"""The backend's storage, not only what the driver says: deleted disks are gone from it, and
a failed create leaves none. Needs the driver's ``vmctl.spi.StorageListing``."""

from __future__ import annotations

import pytest

import vmctl
from vmctl import Capability, DiskSpec, NicSpec, VMSpec
from vmctl_conformance import clause
from vmctl_conformance._kit import Kit


def _need_listing(kit: Kit) -> None:
    if kit.storage() is None:
        pytest.skip("the driver does not list its storage (vmctl.spi.StorageListing)")


@clause("STOR-DELETE-1")
def test_deleted_disks_are_gone_from_the_backend(kit: Kit) -> None:
    _need_listing(kit)
    vm = kit.vm("stor-del", disks=2)
    config = vm.config()
    paths = [d.path for d in config.disks if d.path]
    assert len(paths) == len(config.disks), f"disks without a path in config(): {config.disks}"
    listed = kit.volume_paths()
    assert not set(paths) - listed, (
        f"disks of {vm.name} missing from the storage listing: {sorted(set(paths) - listed)}"
    )
    if kit.has(Capability.ADD_DISK) and kit.has(Capability.REMOVE_DISK):
        disk = vm.add_disk(DiskSpec(size_mib=16, pool=kit.pool))
        added = next(d.path or "" for d in vm.config().disks if d.id == disk.id)
        assert added in kit.volume_paths(), f"the added disk {added} is not in the listing"
        vm.remove_disk(disk.id)
        assert added not in kit.volume_paths(), (
            f"remove_disk({disk.id!r}) left its image {added} in the backend's storage"
        )
    deleted = vm.delete()
    left = sorted(set(paths) & kit.volume_paths())
    assert not left, f"delete() reported {deleted} but the backend still has {left}"


@clause("STOR-CREATE-1")
def test_failed_create_leaves_no_disk(kit: Kit) -> None:
    _need_listing(kit)
    spec = kit.spec("stor-badnet", disks=2)
    spec = VMSpec(
        name=spec.name,
        memory_mib=spec.memory_mib,
        disks=spec.disks,
        nics=[NicSpec(network="vmctl-kit-no-such-network")],
    )
    before = kit.volume_paths()
    with pytest.raises((vmctl.NotFound, vmctl.ValidationError)):
        kit.track(kit.hv.create_vm(spec))
    new = sorted(p for p in kit.volume_paths() - before if spec.name in p)
    assert not new, f"the failed create_vm left {new} in the backend's storage"
