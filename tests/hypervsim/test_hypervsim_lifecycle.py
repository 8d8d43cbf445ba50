"""VM lifecycle, settings, jobs, guest, snapshots and migration through pypsrp (HTTP, Basic)."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest
from hypervsim_helpers import (
    cimxml,
    client,
    enumerate_all,
    epr,
    epr_selector,
    get,
    invoke,
    make_vhd,
    query,
    selectors,
    service,
    to_dict,
    vm_selectors,
    vms,
    wait_job,
)
from pypsrp.exceptions import WSManFaultError
from pypsrp.wsman import WSMan

import hypervsim
from hypervsim import tables as T

pytestmark = pytest.mark.hyperv

VSMS = "Msvm_VirtualSystemManagementService"


@pytest.fixture(scope="module")
def server() -> Iterator[hypervsim.SimServer]:
    with hypervsim.serve(
        hosts=2,
        vms=4,
        running=1,
        tls=False,
        password="pw-lifecycle",
        op_delay=0.05,
        guest_delay=0.1,
        host_memory_gib=8,
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def w2(server: hypervsim.SimServer) -> Iterator[WSMan]:
    c = client(server, host=1)
    yield c
    c.close()


def _define(w: WSMan, name: str, *resources: str, **vssd: Any) -> str:
    params: list[tuple[str, Any]] = [
        ("SystemSettings", cimxml("Msvm_VirtualSystemSettingData", ElementName=name, **vssd))
    ]
    params += [("ResourceSettings", r) for r in resources]
    out = invoke(w, VSMS, "DefineSystem", service(w, VSMS), params)
    assert wait_job(w, out)["JobState"] == "7"
    return epr_selector(out["ResultingSystem"], "Name")


def _state(w: WSMan, guid: str) -> int:
    return int(get(w, "Msvm_ComputerSystem", **vm_selectors(guid))["EnabledState"])


def _rsc(w: WSMan, guid: str, rs: int) -> dict[str, Any]:
    return invoke(
        w, "Msvm_ComputerSystem", "RequestStateChange", vm_selectors(guid), [("RequestedState", rs)]
    )


def _vssd_id(guid: str) -> str:
    return f"Microsoft:{guid}"


def test_initial_world(w: WSMan, w2: WSMan, server: hypervsim.SimServer) -> None:
    one, two = vms(w), vms(w2)
    assert sorted(one) == ["vm-01", "vm-03"] and sorted(two) == ["vm-02", "vm-04"]
    assert one["vm-01"]["EnabledState"] == "2" and one["vm-03"]["EnabledState"] == "3"
    host = to_dict(enumerate_all(w, "Msvm_ComputerSystem")[0])
    assert host["Caption"] == "Hosting Computer System" and host["Name"] == server.hosts[0]
    vm = one["vm-03"]
    assert vm["Description"] == "Microsoft Virtual Machine"
    assert vm["AvailableRequestedStates"] == "2"  # Off: only start (one value, not a list)
    assert len(vm["Name"]) == 36 and vm["Name"] == vm["Name"].upper()


def test_request_state_change_matrix(w: WSMan) -> None:
    """Every RequestedState from Off, Running, Paused and Saved: done (job to the table's
    state) or 32775, as in the tables."""
    guid = _define(w, "matrix")
    path = {T.ES_DISABLED: [], T.ES_ENABLED: [2], T.ES_QUIESCE: [2, 9], T.ES_OFFLINE: [2, 6]}
    for start, steps in path.items():
        for rs in T.REQUESTED_STATES:
            # bring the VM to `start`
            if _state(w, guid) != T.ES_DISABLED:
                assert wait_job(w, _rsc(w, guid, 3))["JobState"] == "7"
            for step in steps:
                assert wait_job(w, _rsc(w, guid, step))["JobState"] == "7"
            assert _state(w, guid) == start
            out = _rsc(w, guid, rs)
            want = T.TRANSITIONS.get((start, rs))
            if want is None:
                assert int(out["ReturnValue"]) == T.RC_INVALID_STATE, (start, rs)
                assert _state(w, guid) == start
            else:
                assert int(out["ReturnValue"]) == T.RC_JOB, (start, rs)
                assert wait_job(w, out)["JobState"] == "7"
                assert _state(w, guid) == want, (start, rs)
    wait_job(w, _rsc(w, guid, 3))
    assert int(_rsc(w, guid, 12)["ReturnValue"]) == T.RC_INVALID_PARAMETER  # not a state


def test_job_progress_and_transitional_state(server: hypervsim.SimServer, w: WSMan) -> None:
    guid = _define(w, "slow")
    server.world.cfg.op_delay = 2.0  # long enough to be seen running on a busy machine
    try:
        out = _rsc(w, guid, 2)
        jid = epr_selector(out["Job"], "InstanceID")
        job = get(w, "Msvm_ConcreteJob", InstanceID=jid)
        assert job["JobState"] == "4" and int(job["PercentComplete"]) < 100
        cs = get(w, "Msvm_ComputerSystem", **vm_selectors(guid))
        assert cs["EnabledState"] == "10" and cs["RequestedState"] == "2"  # Starting
        assert cs["AvailableRequestedStates"] is None
        assert int(_rsc(w, guid, 3)["ReturnValue"]) == T.RC_INVALID_STATE  # busy
        rows = query(w, f"SELECT * FROM Msvm_ConcreteJob WHERE InstanceID = '{jid}'")
        assert len(rows) == 1 and rows[0]["JobState"] == "4"
        done = wait_job(w, out)
        assert done["JobState"] == "7" and done["PercentComplete"] == "100"
        assert done["ErrorCode"] == "0" and done["ElapsedTime"].startswith("P0DT0H0M")
    finally:
        server.world.cfg.op_delay = 0.05
    wait_job(w, _rsc(w, guid, 3))


def test_job_exception_when_host_memory_is_short(w: WSMan) -> None:
    big = cimxml(
        "Msvm_MemorySettingData", ResourceSubType="Microsoft:Hyper-V:Memory", VirtualQuantity=16384
    )
    guid = _define(w, "too-big", big)
    out = _rsc(w, guid, 2)
    job = wait_job(w, out)
    assert job["JobState"] == "10" and job["ErrorCode"] == "32778"
    assert "Not enough memory" in job["ErrorDescription"]
    assert _state(w, guid) == T.ES_DISABLED
    wait_job(
        w,
        invoke(
            w,
            VSMS,
            "DestroySystem",
            service(w, VSMS),
            [("AffectedSystem", epr("Msvm_ComputerSystem", **vm_selectors(guid)))],
        ),
    )


def _kvp(w: WSMan, guid: str) -> dict[str, str]:
    rows = query(w, f"SELECT * FROM Msvm_KvpExchangeComponent WHERE SystemName = '{guid}'")
    if not rows:
        return {}
    items = rows[0]["GuestIntrinsicExchangeItems"]
    items = [] if items is None else items if isinstance(items, list) else [items]
    out = {}
    for text in items:
        inst = ET.fromstring(text)
        props = {p.get("NAME"): p.findtext("VALUE") for p in inst.findall("PROPERTY")}
        out[str(props["Name"])] = str(props["Data"])
    return out


def _shutdown(w: WSMan, guid: str) -> dict[str, Any]:
    comp = query(w, f"SELECT * FROM Msvm_ShutdownComponent WHERE SystemName = '{guid}'")
    assert len(comp) == 1
    sels = {k: comp[0][k] for k in T.CLASSES["Msvm_ShutdownComponent"].keys}
    return invoke(
        w,
        "Msvm_ShutdownComponent",
        "InitiateShutdown",
        sels,
        [("Force", "true"), ("Reason", "tests")],
    )


def test_guest_with_os_reports_ips_and_shuts_down(server: hypervsim.SimServer, w: WSMan) -> None:
    disk = "C:\\Hyper-V\\Images\\guest-os.vhdx"
    guid = _define(w, "with-os")
    vssd = epr("Msvm_VirtualSystemSettingData", InstanceID=_vssd_id(guid))
    scsi = cimxml(
        "Msvm_ResourceAllocationSettingData",
        ResourceSubType="Microsoft:Hyper-V:Synthetic SCSI Controller",
    )
    out = invoke(
        w,
        VSMS,
        "AddResourceSettings",
        service(w, VSMS),
        [("AffectedConfiguration", vssd), ("ResourceSettings", scsi)],
    )
    wait_job(w, out)
    scsi_id = epr_selector(out["ResultingResourceSettings"], "InstanceID")
    # Parent takes the controller's WMI path; the disk the drive's.
    ctrl = query(
        w,
        f"SELECT * FROM Msvm_ResourceAllocationSettingData WHERE "
        f"InstanceID = '{scsi_id.replace(chr(92), chr(92) * 2)}'",
    )
    assert ctrl and ctrl[0]["ResourceType"] == "6"
    srv_host = service(w, VSMS)["SystemName"]
    ctrl_path = (
        f"\\\\{srv_host}\\root\\virtualization\\v2:Msvm_ResourceAllocationSettingData."
        f'InstanceID="{scsi_id.replace(chr(92), chr(92) * 2)}"'
    )
    drive = cimxml(
        "Msvm_ResourceAllocationSettingData",
        Parent=ctrl_path,
        ResourceSubType="Microsoft:Hyper-V:Synthetic Disk Drive",
        AddressOnParent="0",
    )
    out = invoke(
        w,
        VSMS,
        "AddResourceSettings",
        service(w, VSMS),
        [("AffectedConfiguration", vssd), ("ResourceSettings", drive)],
    )
    drive_id = epr_selector(out["ResultingResourceSettings"], "InstanceID")
    drive_path = ctrl_path.replace(scsi_id.replace("\\", "\\\\"), drive_id.replace("\\", "\\\\"))
    vhd = cimxml(
        "Msvm_StorageAllocationSettingData",
        Parent=drive_path,
        HostResource=[disk],
        ResourceSubType="Microsoft:Hyper-V:Virtual Hard Disk",
    )
    nic = cimxml(
        "Msvm_SyntheticEthernetPortSettingData",
        ElementName="nic0",
        ResourceSubType="Microsoft:Hyper-V:Synthetic Ethernet Port",
    )
    out = invoke(
        w,
        VSMS,
        "AddResourceSettings",
        service(w, VSMS),
        [("AffectedConfiguration", vssd), ("ResourceSettings", vhd), ("ResourceSettings", nic)],
    )
    assert wait_job(w, out)["JobState"] == "7"
    nic_id = epr_selector(out["ResultingResourceSettings"][1], "InstanceID")
    switch = to_dict(enumerate_all(w, "Msvm_VirtualEthernetSwitch")[0])
    sw_path = (
        f"\\\\{srv_host}\\root\\virtualization\\v2:Msvm_VirtualEthernetSwitch."
        f'CreationClassName="Msvm_VirtualEthernetSwitch",Name="{switch["Name"]}"'
    )
    conn = cimxml(
        "Msvm_EthernetPortAllocationSettingData",
        HostResource=[sw_path],
        Parent=drive_path.replace(
            "Msvm_ResourceAllocationSettingData", "Msvm_SyntheticEthernetPortSettingData"
        ).replace(drive_id.replace("\\", "\\\\"), nic_id.replace("\\", "\\\\")),
        ResourceSubType="Microsoft:Hyper-V:Ethernet Connection",
    )
    wait_job(
        w,
        invoke(
            w,
            VSMS,
            "AddResourceSettings",
            service(w, VSMS),
            [("AffectedConfiguration", vssd), ("ResourceSettings", conn)],
        ),
    )
    wait_job(w, _rsc(w, guid, 2))
    deadline = time.monotonic() + 5
    while not _kvp(w, guid).get("NetworkAddressIPv4"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    kvp = _kvp(w, guid)
    assert kvp["NetworkAddressIPv4"].count(".") == 3 and kvp["NetworkAddressIPv6"].startswith(
        "fe80"
    )
    server.world.cfg.op_delay = 2.0  # the guest takes its time to shut down
    try:
        out = _shutdown(w, guid)
        assert int(out["ReturnValue"]) == T.RC_OK and "Job" not in out  # no Job parameter
        assert _state(w, guid) == T.ES_SHUTTING_DOWN
        assert int(_shutdown(w, guid)["ReturnValue"]) == T.RC_SHUTDOWN_IN_PROGRESS
    finally:
        server.world.cfg.op_delay = 0.05
    deadline = time.monotonic() + 5
    while _state(w, guid) != T.ES_DISABLED:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert _kvp(w, guid) == {}  # the component goes with the running VM
    rows = query(w, "SELECT * FROM Msvm_ConcreteJob WHERE ElementName = 'Guest shutdown'")
    assert rows == []  # WMI shows no job for it


def test_guest_not_booted_yet_is_not_ready(server: hypervsim.SimServer, w: WSMan) -> None:
    guid = vms(w)["vm-03"]["Name"]  # its disk holds an OS
    server.world.cfg.guest_delay = 30
    try:
        wait_job(w, _rsc(w, guid, 2))
        assert int(_shutdown(w, guid)["ReturnValue"]) == T.RC_NOT_READY
        assert _kvp(w, guid) == {}
    finally:
        server.world.cfg.guest_delay = 0.1
    wait_job(w, _rsc(w, guid, 3))


def test_guest_without_os_does_not_answer(w: WSMan) -> None:
    guid = _define(w, "no-os")
    wait_job(w, _rsc(w, guid, 2))
    time.sleep(0.2)
    assert _kvp(w, guid) == {}
    assert int(_shutdown(w, guid)["ReturnValue"]) == T.RC_NOT_AVAILABLE
    comp = query(w, f"SELECT * FROM Msvm_ShutdownComponent WHERE SystemName = '{guid}'")[0]
    assert comp["OperationalStatus"] == str(T.OPSTATUS_NO_CONTACT)
    assert _state(w, guid) == T.ES_ENABLED
    wait_job(w, _rsc(w, guid, 3))


def test_settings_define_modify_remove_destroy(w: WSMan) -> None:
    cpu = cimxml(
        "Msvm_ProcessorSettingData",
        ResourceSubType="Microsoft:Hyper-V:Processor",
        VirtualQuantity=4,
    )
    mem = cimxml(
        "Msvm_MemorySettingData", ResourceSubType="Microsoft:Hyper-V:Memory", VirtualQuantity=2048
    )
    guid = _define(w, "settings", cpu, mem, Notes=["hello"])
    assoc = (
        "ASSOCIATORS OF {{Msvm_VirtualSystemSettingData.InstanceID='Microsoft:{}'}} "
        "WHERE AssocClass = Msvm_VirtualSystemSettingDataComponent "
        "ResultClass = {}"
    )
    p = query(w, assoc.format(guid, "Msvm_ProcessorSettingData"))
    m = query(w, assoc.format(guid, "Msvm_MemorySettingData"))
    assert p[0]["VirtualQuantity"] == "4" and m[0]["VirtualQuantity"] == "2048"
    assert p[0]["InstanceID"] == f"Microsoft:{guid}\\{T.PROCESSOR_ID_SUFFIX}"
    vssd = query(
        w,
        f"ASSOCIATORS OF {{Msvm_ComputerSystem.CreationClassName="
        f"'Msvm_ComputerSystem',Name='{guid}'}} WHERE AssocClass = "
        f"Msvm_SettingsDefineState ResultClass = Msvm_VirtualSystemSettingData",
    )
    assert vssd[0]["ElementName"] == "settings" and vssd[0]["Notes"] == "hello"
    # ModifyResourceSettings: limits, weight; a bad reservation is 32773
    mod = cimxml(
        "Msvm_ProcessorSettingData",
        InstanceID=p[0]["InstanceID"],
        Limit=50000,
        Reservation=10000,
        Weight=200,
    )
    wait_job(
        w, invoke(w, VSMS, "ModifyResourceSettings", service(w, VSMS), [("ResourceSettings", mod)])
    )
    p = query(w, assoc.format(guid, "Msvm_ProcessorSettingData"))
    assert (p[0]["Limit"], p[0]["Reservation"], p[0]["Weight"]) == ("50000", "10000", "200")
    bad = cimxml("Msvm_ProcessorSettingData", InstanceID=p[0]["InstanceID"], Reservation=60000)
    out = invoke(w, VSMS, "ModifyResourceSettings", service(w, VSMS), [("ResourceSettings", bad)])
    assert int(out["ReturnValue"]) == T.RC_INVALID_PARAMETER
    # vCPU count changes only while Off
    wait_job(w, _rsc(w, guid, 2))
    two = cimxml("Msvm_ProcessorSettingData", InstanceID=p[0]["InstanceID"], VirtualQuantity=2)
    out = invoke(w, VSMS, "ModifyResourceSettings", service(w, VSMS), [("ResourceSettings", two)])
    assert int(out["ReturnValue"]) == T.RC_INVALID_STATE
    out = invoke(
        w,
        VSMS,
        "DestroySystem",
        service(w, VSMS),
        [("AffectedSystem", epr("Msvm_ComputerSystem", **vm_selectors(guid)))],
    )
    assert int(out["ReturnValue"]) == T.RC_INVALID_STATE  # running
    wait_job(w, _rsc(w, guid, 3))
    # ModifySystemSettings renames
    ren = cimxml("Msvm_VirtualSystemSettingData", InstanceID=_vssd_id(guid), ElementName="renamed")
    wait_job(
        w, invoke(w, VSMS, "ModifySystemSettings", service(w, VSMS), [("SystemSettings", ren)])
    )
    assert get(w, "Msvm_ComputerSystem", **vm_selectors(guid))["ElementName"] == "renamed"
    # RemoveResourceSettings: a NIC goes with its connection; processor cannot go
    nic = query(w, assoc.format(guid, "Msvm_SyntheticEthernetPortSettingData"))
    assert nic == []  # DefineSystem made none
    cpu_ref = epr("Msvm_ProcessorSettingData", InstanceID=p[0]["InstanceID"])
    out = invoke(
        w, VSMS, "RemoveResourceSettings", service(w, VSMS), [("ResourceSettings", cpu_ref)]
    )
    assert int(out["ReturnValue"]) == T.RC_INVALID_PARAMETER
    # GetSummaryInformation
    out = invoke(
        w,
        VSMS,
        "GetSummaryInformation",
        service(w, VSMS),
        [
            ("RequestedInformation", 1),
            ("RequestedInformation", 4),
            ("RequestedInformation", 100),
            ("RequestedInformation", 104),
            ("RequestedInformation", 107),
            ("SettingData", epr("Msvm_VirtualSystemSettingData", InstanceID=_vssd_id(guid))),
        ],
    )
    assert int(out["ReturnValue"]) == 0
    info = to_dict(out["SummaryInformation"][0])
    assert info["ElementName"] == "renamed" and info["NumberOfProcessors"] == "4"
    assert info["EnabledState"] == "3" and info["Heartbeat"] is None  # off: no heartbeat
    assert info["Snapshots"] is None and info["UpTime"] is None  # UpTime not requested: NULL
    out = invoke(
        w,
        VSMS,
        "DestroySystem",
        service(w, VSMS),
        [("AffectedSystem", epr("Msvm_ComputerSystem", **vm_selectors(guid)))],
    )
    assert wait_job(w, out)["JobState"] == "7"
    assert "renamed" not in vms(w)


def test_snapshots_create_apply_destroy(w: WSMan) -> None:
    guid = _define(w, "snappy")
    snap_svc = service(w, "Msvm_VirtualSystemSnapshotService")
    vm_ref = epr("Msvm_ComputerSystem", **vm_selectors(guid))
    out = invoke(
        w,
        "Msvm_VirtualSystemSnapshotService",
        "CreateSnapshot",
        snap_svc,
        [("AffectedSystem", vm_ref), ("SnapshotType", 2)],
    )
    assert wait_job(w, out)["JobState"] == "7"
    s1 = epr_selector(out["ResultingSnapshot"], "InstanceID")
    wait_job(w, _rsc(w, guid, 2))
    out = invoke(
        w,
        "Msvm_VirtualSystemSnapshotService",
        "CreateSnapshot",
        snap_svc,
        [("AffectedSystem", epr("Msvm_ComputerSystem", **vm_selectors(guid))), ("SnapshotType", 2)],
    )
    s2 = epr_selector(out["ResultingSnapshot"], "InstanceID")
    wait_job(w, out)
    snaps = query(
        w,
        f"ASSOCIATORS OF {{Msvm_ComputerSystem.CreationClassName="
        f"'Msvm_ComputerSystem',Name='{guid}'}} WHERE AssocClass = "
        f"Msvm_SnapshotOfVirtualSystem ResultClass = Msvm_VirtualSystemSettingData",
    )
    by_id = {s["InstanceID"]: s for s in snaps}
    assert set(by_id) == {s1, s2}
    assert by_id[s2]["Parent"].endswith(f'InstanceID="{s1}"')
    assert by_id[s1]["VirtualSystemType"] == "Microsoft:Hyper-V:Snapshot:Realized"
    # applying needs the VM off or saved
    apply = [("Snapshot", epr("Msvm_VirtualSystemSettingData", InstanceID=s2))]
    out = invoke(w, "Msvm_VirtualSystemSnapshotService", "ApplySnapshot", snap_svc, apply)
    assert int(out["ReturnValue"]) == T.RC_INVALID_STATE
    wait_job(w, _rsc(w, guid, 3))
    out = invoke(w, "Msvm_VirtualSystemSnapshotService", "ApplySnapshot", snap_svc, apply)
    assert wait_job(w, out)["JobState"] == "7"
    assert _state(w, guid) == T.ES_OFFLINE  # s2 was taken running: the VM comes back Saved
    out = invoke(
        w,
        "Msvm_VirtualSystemSnapshotService",
        "DestroySnapshot",
        snap_svc,
        [("AffectedSnapshot", epr("Msvm_VirtualSystemSettingData", InstanceID=s1))],
    )
    assert wait_job(w, out)["JobState"] == "7"
    left = query(w, f"SELECT * FROM Msvm_VirtualSystemSettingData WHERE InstanceID = '{s2}'")
    assert left[0]["Parent"] is None  # rebased onto the destroyed one's parent
    wait_job(w, _rsc(w, guid, 3))


def test_live_migration_between_hosts(w: WSMan, w2: WSMan, server: hypervsim.SimServer) -> None:
    guid = vms(w)["vm-01"]["Name"]
    assert _state(w, guid) == T.ES_ENABLED
    mig = service(w, "Msvm_VirtualSystemMigrationService")
    msd = cimxml("Msvm_VirtualSystemMigrationSettingData", MigrationType=32768)
    out = invoke(
        w,
        "Msvm_VirtualSystemMigrationService",
        "MigrateVirtualSystemToHost",
        mig,
        [
            ("ComputerSystem", epr("Msvm_ComputerSystem", **vm_selectors(guid))),
            ("DestinationHost", server.hosts[1]),
            ("MigrationSettingData", msd),
        ],
    )
    assert wait_job(w, out)["JobState"] == "7"
    assert "vm-01" not in vms(w) and vms(w2)["vm-01"]["EnabledState"] == "2"
    # the connection now points at the destination's switch
    conns = query(w2, "SELECT * FROM Msvm_EthernetPortAllocationSettingData")
    mine = [c for c in conns if guid in c["InstanceID"]]
    assert mine and server.hosts[1] in mine[0]["HostResource"]
    disks = [
        d
        for d in query(w2, "SELECT * FROM Msvm_StorageAllocationSettingData")
        if guid in d["InstanceID"]
    ]
    assert disks and disks[0]["Parent"].startswith(f"\\\\{server.hosts[1]}\\root")
    # unknown destination: the job fails; same host: 32773
    mig2 = service(w2, "Msvm_VirtualSystemMigrationService")
    ref = epr("Msvm_ComputerSystem", **vm_selectors(guid))
    out = invoke(
        w2,
        "Msvm_VirtualSystemMigrationService",
        "MigrateVirtualSystemToHost",
        mig2,
        [("ComputerSystem", ref), ("DestinationHost", "nohost")],
    )
    job = wait_job(w2, out)
    assert job["JobState"] == "10" and "nohost" in job["ErrorDescription"]
    out = invoke(
        w2,
        "Msvm_VirtualSystemMigrationService",
        "MigrateVirtualSystemToHost",
        mig2,
        [("ComputerSystem", ref), ("DestinationHost", server.hosts[1])],
    )
    assert int(out["ReturnValue"]) == T.RC_INVALID_PARAMETER


def test_parent_rules_and_reference_configuration(w: WSMan) -> None:
    guid = _define(w, "orphans")
    vssd = epr("Msvm_VirtualSystemSettingData", InstanceID=_vssd_id(guid))
    orphan = cimxml(
        "Msvm_StorageAllocationSettingData",
        HostResource=["C:\\x.vhdx"],
        ResourceSubType="Microsoft:Hyper-V:Virtual Hard Disk",
        Parent="\\\\H\\root\\virtualization\\v2:Msvm_ResourceAllocationSettingData."
        'InstanceID="Microsoft:nope"',
    )
    out = invoke(
        w,
        VSMS,
        "AddResourceSettings",
        service(w, VSMS),
        [("AffectedConfiguration", vssd), ("ResourceSettings", orphan)],
    )
    assert int(out["ReturnValue"]) == T.RC_INVALID_PARAMETER
    conn = cimxml(
        "Msvm_EthernetPortAllocationSettingData",
        ResourceSubType="Microsoft:Hyper-V:Ethernet Connection",
    )  # no Parent
    out = invoke(
        w,
        VSMS,
        "AddResourceSettings",
        service(w, VSMS),
        [("AffectedConfiguration", vssd), ("ResourceSettings", conn)],
    )
    assert int(out["ReturnValue"]) == T.RC_INVALID_PARAMETER
    # a new VM from vm-03's configuration: its disk, a NIC of its own, re-keyed parents
    ref_guid = vms(w)["vm-03"]["Name"]
    clone = _define_from(w, "from-ref", ref_guid)
    assoc = (
        "ASSOCIATORS OF {{Msvm_VirtualSystemSettingData.InstanceID='Microsoft:{}'}} "
        "WHERE AssocClass = Msvm_VirtualSystemSettingDataComponent ResultClass = {}"
    )
    disks = query(w, assoc.format(clone, "Msvm_StorageAllocationSettingData"))
    ref_disks = query(w, assoc.format(ref_guid, "Msvm_StorageAllocationSettingData"))
    assert disks[0]["HostResource"] == ref_disks[0]["HostResource"]
    assert clone in disks[0]["Parent"] and ref_guid not in disks[0]["Parent"]
    nics = query(w, assoc.format(clone, "Msvm_SyntheticEthernetPortSettingData"))
    ref_nics = query(w, assoc.format(ref_guid, "Msvm_SyntheticEthernetPortSettingData"))
    assert nics[0]["Address"] != ref_nics[0]["Address"]
    conns = query(w, assoc.format(clone, "Msvm_EthernetPortAllocationSettingData"))
    assert conns[0]["Parent"].endswith(
        f'InstanceID="{nics[0]["InstanceID"]}"'.replace("\\", "\\\\")
    )


def _define_from(w: WSMan, name: str, ref_guid: str) -> str:
    params: list[tuple[str, Any]] = [
        ("SystemSettings", cimxml("Msvm_VirtualSystemSettingData", ElementName=name)),
        (
            "ReferenceConfiguration",
            epr("Msvm_VirtualSystemSettingData", InstanceID=_vssd_id(ref_guid)),
        ),
    ]
    out = invoke(w, VSMS, "DefineSystem", service(w, VSMS), params)
    assert wait_job(w, out)["JobState"] == "7"
    return epr_selector(out["ResultingSystem"], "Name")


def test_create_virtual_hard_disk_and_attach(w: WSMan) -> None:
    ims = service(w, "Msvm_ImageManagementService")

    def create(**props: Any) -> dict[str, Any]:
        sd = cimxml("Msvm_VirtualHardDiskSettingData", **props)
        return invoke(
            w,
            "Msvm_ImageManagementService",
            "CreateVirtualHardDisk",
            ims,
            [("VirtualDiskSettingData", sd)],
        )

    path = "C:\\Hyper-V\\new-disk.vhdx"
    assert (
        wait_job(w, create(Path=path, Format=3, Type=3, MaxInternalSize=1 << 30))["JobState"] == "7"
    )
    again = wait_job(w, create(Path=path, Format=3, Type=3, MaxInternalSize=1 << 30))
    assert again["JobState"] == "10" and "0x80070050" in again["ErrorDescription"]
    assert int(create(Path="C:\\x.vhd", Format=3, Type=3, MaxInternalSize=1)["ReturnValue"]) == (
        T.RC_INVALID_PARAMETER
    )  # the extension says VHD, Format says VHDX
    diff = "C:\\Hyper-V\\child.vhdx"
    assert (
        wait_job(
            w, create(Path=diff, Format=3, Type=4, ParentPath="C:\\Hyper-V\\Images\\guest-os.vhdx")
        )["JobState"]
        == "7"
    )
    # attaching: an existing file works, a missing one fails the job and adds nothing
    guid = _define(w, "disks")
    vssd = epr("Msvm_VirtualSystemSettingData", InstanceID=_vssd_id(guid))
    host = service(w, VSMS)["SystemName"]
    scsi = cimxml(
        "Msvm_ResourceAllocationSettingData",
        ResourceSubType="Microsoft:Hyper-V:Synthetic SCSI Controller",
    )
    out = invoke(
        w,
        VSMS,
        "AddResourceSettings",
        service(w, VSMS),
        [("AffectedConfiguration", vssd), ("ResourceSettings", scsi)],
    )
    scsi_id = epr_selector(out["ResultingResourceSettings"], "InstanceID")
    ctrl_path = (
        f"\\\\{host}\\root\\virtualization\\v2:Msvm_ResourceAllocationSettingData."
        f'InstanceID="{scsi_id.replace(chr(92), chr(92) * 2)}"'
    )
    drive = cimxml(
        "Msvm_ResourceAllocationSettingData",
        Parent=ctrl_path,
        ResourceSubType="Microsoft:Hyper-V:Synthetic Disk Drive",
    )
    out = invoke(
        w,
        VSMS,
        "AddResourceSettings",
        service(w, VSMS),
        [("AffectedConfiguration", vssd), ("ResourceSettings", drive)],
    )
    drive_id = epr_selector(out["ResultingResourceSettings"], "InstanceID")
    drive_path = ctrl_path.replace(scsi_id.replace("\\", "\\\\"), drive_id.replace("\\", "\\\\"))
    for disk, state in ((path, "7"), ("C:\\Hyper-V\\missing.vhdx", "10")):
        vhd = cimxml(
            "Msvm_StorageAllocationSettingData",
            Parent=drive_path,
            HostResource=[disk],
            ResourceSubType="Microsoft:Hyper-V:Virtual Hard Disk",
        )
        job = wait_job(
            w,
            invoke(
                w,
                VSMS,
                "AddResourceSettings",
                service(w, VSMS),
                [("AffectedConfiguration", vssd), ("ResourceSettings", vhd)],
            ),
        )
        assert job["JobState"] == state
    assert "0x80070002" in job["ErrorDescription"] and job["ErrorCode"] == "32779"
    disks = query(
        w,
        f"SELECT * FROM Msvm_StorageAllocationSettingData WHERE "
        f"InstanceID LIKE 'Microsoft:{guid}%'",
    )
    assert [d["HostResource"] for d in disks] == [path]


def test_get_virtual_hard_disk_setting_data(w: WSMan) -> None:
    """HV2/getvirtualharddisksettingdata-msvm-imagemanagementservice: the image's settings
    as an embedded Msvm_VirtualHardDiskSettingData; 32779 for a file that does not exist."""
    ims = service(w, "Msvm_ImageManagementService")
    path = "C:\\Hyper-V\\sized.vhdx"
    make_vhd(w, path, size=3 << 30)
    out = invoke(
        w, "Msvm_ImageManagementService", "GetVirtualHardDiskSettingData", ims, [("Path", path)]
    )
    assert int(out["ReturnValue"]) == T.RC_OK
    got = to_dict(out["SettingData"][0])
    assert got["Path"] == path and got["MaxInternalSize"] == str(3 << 30)
    assert got["Format"] == "3" and got["Type"] == "3" and got["ParentPath"] is None
    missing = invoke(
        w,
        "Msvm_ImageManagementService",
        "GetVirtualHardDiskSettingData",
        ims,
        [("Path", "C:\\Hyper-V\\nope.vhdx")],
    )
    assert int(missing["ReturnValue"]) == 32779


def test_cim_datafile_delete(w: WSMan) -> None:
    """root/cimv2 CIM_DataFile.Delete (Win32/delete-method-in-class-cim-datafile): an image
    file goes; a missing one is the provider's not-found fault."""
    ims = service(w, "Msvm_ImageManagementService")
    path = "C:\\Hyper-V\\doomed.vhdx"
    make_vhd(w, path, size=1 << 20)
    uri = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/CIM_DataFile"
    resp = w.invoke(
        f"{uri}/Delete",
        uri,
        ET.Element(f"{{{uri}}}Delete_INPUT"),
        selector_set=selectors(Name=path),
    )
    assert resp.findtext(f".//{{{uri}}}ReturnValue") == "0"
    gone = invoke(
        w, "Msvm_ImageManagementService", "GetVirtualHardDiskSettingData", ims, [("Path", path)]
    )
    assert int(gone["ReturnValue"]) == 32779
    with pytest.raises(WSManFaultError):
        w.invoke(
            f"{uri}/Delete",
            uri,
            ET.Element(f"{{{uri}}}Delete_INPUT"),
            selector_set=selectors(Name=path),
        )


def test_host_processors_and_memory(w: WSMan, server: hypervsim.SimServer) -> None:
    """HV2/msvm-processor and msvm-memory: the host's logical processors and its memory."""
    host = server.hosts[0]
    cpus = query(
        w, f"SELECT DeviceID, MaxClockSpeed FROM Msvm_Processor WHERE SystemName = '{host}'"
    )
    assert len(cpus) == T.HOST_LOGICAL_PROCESSORS and cpus[0]["MaxClockSpeed"] == str(
        T.HOST_CPU_MHZ
    )
    (mem,) = query(w, f"SELECT * FROM Msvm_Memory WHERE SystemName = '{host}'")
    assert int(mem["BlockSize"]) * int(mem["NumberOfBlocks"]) == 8 << 30  # host_memory_gib=8
    assert 0 < int(mem["ConsumableBlocks"]) <= int(mem["NumberOfBlocks"])
