"""vmctl.move's checks before create on the real libvirtd (KVM's PlacementChecks): the
pool's free space as virStoragePoolGetInfo reports it (compared with virsh pool-info, a
second client), the libvirt networks, and a VM too big for the pool refused before
anything is made."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmctl
from tests.kvm.kvm_helpers import PREFIX, virsh
from vmctl import DiskSpec, NicSpec, VMSpec
from vmctl.spi import Deadline, PlacementChecks

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def _state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMCTL_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture
def sim() -> Iterator[vmctl.Hypervisor]:
    import vmctl_sim

    vmctl_sim.reset_sites()
    with vmctl.connect("sim://kvm-placement") as hv:
        yield hv
    vmctl_sim.reset_sites()


def checks(hv: vmctl.Hypervisor) -> PlacementChecks:
    driver = hv._conn.driver
    assert isinstance(driver, PlacementChecks)
    return driver


def pool_info(hosts: Any) -> dict[str, str]:
    out = virsh(hosts.uri, "pool-info", "--bytes", hosts.pool)
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def test_pool_space_is_libvirts(hv: vmctl.Hypervisor, hosts: Any) -> None:
    space = checks(hv).storage_space(hosts.pool, deadline=Deadline.after(30))
    info = pool_info(hosts)
    assert space.name == hosts.pool
    assert space.capacity_bytes == int(info["Capacity"].split()[0])
    # the pool's files may grow between the two reads (other tests): within 256 MiB
    assert abs(space.free_bytes - int(info["Available"].split()[0])) < 256 * MIB
    with pytest.raises(vmctl.NotFound):
        checks(hv).storage_space("no-such-pool", deadline=Deadline.after(30))
    checks(hv).check_network(hosts.network, deadline=Deadline.after(30))
    with pytest.raises(vmctl.NotFound, match="no libvirt network 'no-such-net'"):
        checks(hv).check_network("no-such-net", deadline=Deadline.after(30))


def test_a_vm_too_big_for_the_pool_is_refused(
    hv: vmctl.Hypervisor, hosts: Any, sim: vmctl.Hypervisor
) -> None:
    space = checks(hv).storage_space(hosts.pool, deadline=Deadline.after(30))
    too_big = space.free_bytes // MIB + 4096
    name = f"{PREFIX}mv-huge"
    vm = sim.create_vm(
        VMSpec(name=name, disks=[DiskSpec(size_mib=too_big)], nics=[NicSpec("default")])
    )
    net = {"default": hosts.network}
    with pytest.raises(vmctl.InsufficientResources) as err:
        vmctl.move(vm, hv, network_map=net, storage=hosts.pool)
    assert f"{too_big} MiB" in str(err.value) and "nothing was made" in str(err.value)
    assert name not in virsh(hosts.uri, "list", "--all", "--name").split()
    with pytest.raises(vmctl.NotFound, match="no libvirt network 'no-such-net'"):
        vmctl.move(vm, hv, network_map={"default": "no-such-net"}, dry_run=True)


def test_firmware_kvm_can_make_is_libvirts(
    hv: vmctl.Hypervisor, hosts: Any, sim: vmctl.Hypervisor
) -> None:
    from vmctl import Firmware, MappingKind

    caps = virsh(hosts.uri, "domcapabilities")
    efi = "<value>efi</value>" in caps
    made = checks(hv).firmwares(deadline=Deadline.after(30))
    assert made == (frozenset(Firmware) if efi else frozenset({Firmware.BIOS}))
    name = f"{PREFIX}mv-uefi"
    vm = sim.create_vm(
        VMSpec(name=name, disks=[DiskSpec(size_mib=8)], nics=[NicSpec("default")], firmware="uefi")
    )
    report = vmctl.move(vm, hv, network_map={"default": hosts.network}, storage=hosts.pool)
    try:
        note = next(n for n in report.mapping if n.item.startswith("firmware"))
        xml = virsh(hosts.uri, "dumpxml", name)
        if efi:
            assert note.kind is MappingKind.KEPT and "firmware='efi'" in xml
        else:  # no OVMF here: the VM is made with SeaBIOS and the report says so
            assert (note.kind, note.source, note.target) == (MappingKind.CHANGED, "uefi", "bios")
            assert "cannot make uefi" in note.detail and "firmware='efi'" not in xml
        assert hv.vm(name).config().firmware is (Firmware.UEFI if efi else Firmware.BIOS)
    finally:
        hv.vm(name).delete(force=True)
