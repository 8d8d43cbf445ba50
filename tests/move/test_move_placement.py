"""vmctl.move's checks before create on real simulators (PlacementChecks): the free space
of a Xen SR (xapisim: physical_size less physical_utilisation) and of an ESX datastore (the
vSphere simulator's summary.freeSpace), the target's networks, and vSphere's rule for a
static MAC with the VMware OUI; each refusal comes before anything is made."""

from __future__ import annotations

from typing import Any

import pytest

import vmctl
from vmctl import DiskSpec, MappingKind, NicSpec, VMSpec
from vmctl.spi import Deadline, PlacementChecks

from .conftest import ESX_NETWORK, XEN_NETWORK

pytestmark = [pytest.mark.xen, pytest.mark.esx]

MIB = 1024 * 1024


def checks(hv: vmctl.Hypervisor) -> PlacementChecks:
    driver = hv._conn.driver
    assert isinstance(driver, PlacementChecks)
    return driver


def uuids(hv: vmctl.Hypervisor) -> set[str]:
    return {i.uuid for i in hv.list_vms()}


def test_xen_sr_space_is_read_and_a_vm_too_big_is_refused(
    sim: vmctl.Hypervisor, xen: vmctl.Hypervisor
) -> None:
    space = checks(xen).storage_space(None, deadline=Deadline.after(30))
    assert space.capacity_bytes and 0 < space.free_bytes <= space.capacity_bytes
    too_big = space.free_bytes // MIB + 1024
    vm = sim.create_vm(
        VMSpec(name="huge", disks=[DiskSpec(size_mib=too_big)], nics=[NicSpec("default")])
    )
    before = uuids(xen)
    for dry_run in (True, False):
        with pytest.raises(vmctl.InsufficientResources) as err:
            vmctl.move(vm, xen, network_map={"default": XEN_NETWORK}, dry_run=dry_run)
        text = str(err.value)
        assert f"{too_big} MiB" in text and f"{space.name!r}" in text
        assert f"{space.free_bytes // MIB} MiB free" in text and "nothing was made" in text
    with pytest.raises(vmctl.NotFound, match="no SR 'nope'"):
        vmctl.move(vm, xen, network_map={"default": XEN_NETWORK}, storage="nope")
    assert uuids(xen) == before


def test_xen_missing_network_is_refused_before_anything(
    sim: vmctl.Hypervisor, xen: vmctl.Hypervisor
) -> None:
    vm = sim.create_vm(VMSpec(name="nonet", disks=[DiskSpec(8)], nics=[NicSpec("default")]))
    before = uuids(xen)
    with pytest.raises(vmctl.NotFound) as err:
        vmctl.move(vm, xen, dry_run=True)
    assert "no network 'default'" in str(err.value) and XEN_NETWORK in str(err.value)
    assert "nothing was made" in str(err.value) and uuids(xen) == before
    plan = vmctl.move(vm, xen, network_map={"default": XEN_NETWORK}, dry_run=True)
    assert any(n.item == "target storage" for n in plan.mapping)


def test_esx_datastore_space_and_network(esx: vmctl.Hypervisor) -> None:
    c = checks(esx)
    space = c.storage_space(None, deadline=Deadline.after(30))
    assert space.free_bytes > 0 and space.name
    c.check_network(ESX_NETWORK, deadline=Deadline.after(30))
    with pytest.raises(vmctl.NotFound, match="VM Network"):
        c.check_network("no-such-portgroup", deadline=Deadline.after(30))
    with pytest.raises(vmctl.NotFound, match="no datastore 'nope'"):
        c.storage_space("nope", deadline=Deadline.after(30))


def test_esx_refuses_a_kept_mac_outside_vsphere_static_range(
    sim: vmctl.Hypervisor, esx: vmctl.Hypervisor
) -> None:
    bad = "00:50:56:80:12:34"  # vCenter's generated range
    vm = sim.create_vm(
        VMSpec(name="mac-bad", disks=[DiskSpec(8)], nics=[NicSpec("default", mac=bad)])
    )
    before = uuids(esx)
    with pytest.raises(vmctl.ValidationError) as err:
        vmctl.move(vm, esx, network_map={"default": ESX_NETWORK}, keep_macs=True)
    assert err.value.field == "keep_macs"
    assert bad in str(err.value) and "00:50:56:3f:ff:ff" in str(err.value)
    assert uuids(esx) == before
    # the driver's own create refuses it too, before any call
    with pytest.raises(vmctl.ValidationError, match="00:50:56:3f:ff:ff"):
        esx.create_vm(VMSpec(name="mac-bad", nics=[NicSpec(ESX_NETWORK, mac=bad)]))
    assert uuids(esx) == before
    # without keep_macs the NIC gets a MAC of vSphere's
    report = vmctl.move(vm, esx, network_map={"default": ESX_NETWORK})
    assert report.verified
    note = next(n for n in report.mapping if n.item == "nic 0 MAC")
    assert note.kind is MappingKind.CHANGED and note.target != bad


def test_esx_keeps_a_mac_in_the_static_range(sim: vmctl.Hypervisor, esx: vmctl.Hypervisor) -> None:
    good = "00:50:56:01:02:03"
    vm = sim.create_vm(
        VMSpec(name="mac-ok", disks=[DiskSpec(8)], nics=[NicSpec("default", mac=good)])
    )
    report = vmctl.move(vm, esx, network_map={"default": ESX_NETWORK}, keep_macs=True)
    assert report.verified
    note = next(n for n in report.mapping if n.item == "nic 0 MAC")
    assert note.kind is MappingKind.KEPT and note.target == good
    moved = esx.vm(report.target_uuid or "")
    assert [n.mac for n in moved.config().nics] == [good]


def test_uefi_is_carried_sim_xen_esx(
    sim: vmctl.Hypervisor, xen: vmctl.Hypervisor, esx: vmctl.Hypervisor, xen_sim: Any
) -> None:
    from vmctl import Firmware

    vm = sim.create_vm(
        VMSpec(name="fw-uefi", disks=[DiskSpec(8)], nics=[NicSpec("default")], firmware="uefi")
    )
    for target, net in ((xen, {"default": XEN_NETWORK}), (esx, {XEN_NETWORK: ESX_NETWORK})):
        report = vmctl.move(vm, target, network_map=net, keep_source=False)
        note = next(n for n in report.mapping if n.item.startswith("firmware"))
        assert (note.kind, note.target) == (MappingKind.KEPT, "uefi"), str(report)
        vm = target.vm(report.target_uuid or "")
        assert vm.config().firmware is Firmware.UEFI
        if target is xen:  # the field xapi boots by, in the host's own database
            with xen_sim.db.lock:
                (rec,) = [r for r in xen_sim.db.objs["VM"].values() if r["uuid"] == vm.uuid]
            assert rec["HVM_boot_params"].get("firmware") == "uefi"
            assert rec["HVM_boot_policy"] == "BIOS order"
    # an independent read of the vendor's own field: vSphere's config.firmware
    driver = esx._conn.driver
    ref = driver._ref(vm.uuid)  # type: ignore[attr-defined]
    assert ref.config.firmware == "efi"
