"""What Add/RemoveResourceSettings may change while a VM runs (tables.HOT_PLUG): SCSI storage
and synthetic NICs, not controllers; nothing while Paused. Through pypsrp's WSMan."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypervsim_helpers import (
    cimxml,
    epr,
    epr_selector,
    invoke,
    query,
    service,
    vm_selectors,
    vms,
    wait_job,
)
from pypsrp.wsman import WSMan

import hypervsim
from hypervsim import tables as T

pytestmark = pytest.mark.hyperv

VSMS = "Msvm_VirtualSystemManagementService"


@pytest.fixture(scope="module")
def server() -> Iterator[hypervsim.SimServer]:
    with hypervsim.serve(
        hosts=1, vms=1, running=1, tls=False, password="pw-hot", op_delay=0.02
    ) as srv:
        yield srv


def _path(host: str, instance_id: str) -> str:
    escaped = instance_id.replace("\\", "\\\\")
    return (
        f'\\\\{host}\\root\\virtualization\\v2:Msvm_ResourceAllocationSettingData.InstanceID="'
        f'{escaped}"'
    )


def _add(w: WSMan, guid: str, setting: str) -> dict[str, Any]:
    vssd = epr("Msvm_VirtualSystemSettingData", InstanceID=f"Microsoft:{guid}")
    return invoke(
        w,
        VSMS,
        "AddResourceSettings",
        service(w, VSMS),
        [("AffectedConfiguration", vssd), ("ResourceSettings", setting)],
    )


def _remove(w: WSMan, cls: str, instance_id: str) -> dict[str, Any]:
    ref = epr(cls, InstanceID=instance_id)
    return invoke(w, VSMS, "RemoveResourceSettings", service(w, VSMS), [("ResourceSettings", ref)])


def _rsc(w: WSMan, guid: str, rs: int) -> None:
    out = invoke(
        w, "Msvm_ComputerSystem", "RequestStateChange", vm_selectors(guid), [("RequestedState", rs)]
    )
    assert wait_job(w, out)["JobState"] == "7"


def test_scsi_storage_and_nics_while_running(server: hypervsim.SimServer, w: WSMan) -> None:
    vm = vms(w)["vm-01"]
    guid, host = vm["Name"], server.hosts[0]
    assert vm["EnabledState"] == "2"
    rasds = query(
        w,
        f"ASSOCIATORS OF {{Msvm_VirtualSystemSettingData.InstanceID='Microsoft:{guid}'}} "
        "WHERE AssocClass = Msvm_VirtualSystemSettingDataComponent "
        "ResultClass = Msvm_ResourceAllocationSettingData",
    )
    scsi = next(r for r in rasds if r["ResourceType"] == str(T.RT_SCSI))
    # a disk drive on the SCSI controller, then its virtual hard disk: both while running
    drive = cimxml(
        "Msvm_ResourceAllocationSettingData",
        Parent=_path(host, scsi["InstanceID"]),
        ResourceSubType="Microsoft:Hyper-V:Synthetic Disk Drive",
        AddressOnParent="1",
    )
    out = _add(w, guid, drive)
    assert wait_job(w, out)["JobState"] == "7"
    drive_id = epr_selector(out["ResultingResourceSettings"], "InstanceID")
    vhd = cimxml(
        "Msvm_StorageAllocationSettingData",
        Parent=_path(host, drive_id),
        HostResource=["C:\\Hyper-V\\Images\\guest-os.vhdx"],
        ResourceSubType="Microsoft:Hyper-V:Virtual Hard Disk",
    )
    assert wait_job(w, _add(w, guid, vhd))["JobState"] == "7"
    # a controller needs the VM Off
    ctrl = cimxml(
        "Msvm_ResourceAllocationSettingData",
        ResourceSubType="Microsoft:Hyper-V:Synthetic SCSI Controller",
    )
    assert int(_add(w, guid, ctrl)["ReturnValue"]) == T.RC_INVALID_STATE
    assert (
        int(_remove(w, "Msvm_ResourceAllocationSettingData", scsi["InstanceID"])["ReturnValue"])
        == T.RC_INVALID_STATE
    )
    # the drive goes (with its disk) while running
    out = _remove(w, "Msvm_ResourceAllocationSettingData", drive_id)
    assert wait_job(w, out)["JobState"] == "7"
    # a synthetic NIC (generation 2) comes and goes while running
    nic = cimxml(
        "Msvm_SyntheticEthernetPortSettingData",
        ElementName="hot",
        ResourceSubType="Microsoft:Hyper-V:Synthetic Ethernet Port",
    )
    out = _add(w, guid, nic)
    assert wait_job(w, out)["JobState"] == "7"
    port_id = epr_selector(out["ResultingResourceSettings"], "InstanceID")
    # paused: nothing changes
    _rsc(w, guid, 9)
    try:
        out = _remove(w, "Msvm_SyntheticEthernetPortSettingData", port_id)
        assert int(out["ReturnValue"]) == T.RC_INVALID_STATE
        assert int(_add(w, guid, nic)["ReturnValue"]) == T.RC_INVALID_STATE
    finally:
        _rsc(w, guid, 2)
    out = _remove(w, "Msvm_SyntheticEthernetPortSettingData", port_id)
    assert wait_job(w, out)["JobState"] == "7"
    # Off: a controller may be added
    _rsc(w, guid, 3)
    assert wait_job(w, _add(w, guid, ctrl))["JobState"] == "7"
