"""Realistic sizes: more VMs than a page of the vendor's API."""

from __future__ import annotations

from vmctl import PowerState
from vmctl_conformance import clause
from vmctl_conformance._kit import Kit


@clause("INV-LIST-2")
def test_list_crosses_a_page(kit: Kit) -> None:
    vms = [kit.vm(f"page{i:02d}", disks=0, nics=0) for i in range(kit.inventory_vms)]
    listed = [i for i in kit.hv.list_vms() if i.uuid in {vm.uuid for vm in vms}]
    missing = sorted({vm.name for vm in vms} - {i.name for i in listed})
    assert not missing, f"list_vms() left out {len(missing)} of {len(vms)} VMs: {missing}"
    assert len(listed) == len(vms), "VMs listed more than once"
    assert all(i.state is PowerState.STOPPED for i in listed), "states of the listed VMs"
    last = vms[-1]
    assert kit.hv.vm(last.name).uuid == last.uuid, f"vm({last.name!r})"
