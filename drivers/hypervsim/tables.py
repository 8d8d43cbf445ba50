"""The simulator's tables: namespaces, classes and properties, methods, states, codes, faults.

Every fact carries the Microsoft document (or libvirt source file) it comes from. Sources:

- ``HV2/<page>``: the Hyper-V WMI provider (V2) reference, ``learn.microsoft.com/windows/win32/
  hyperv_v2/<page>`` (source files ``desktop-src/HyperV_v2/<page>.md`` of MicrosoftDocs/win32).
- ``DSP0226``: DMTF WS-Management 1.x (faults §14, enumeration §8, transfer §7, selectors §5.1,
  OperationTimeout/MaxEnvelopeSize §6).
- ``DSP0227``/``DSP0230``: WS-Management CIM binding / WS-CIM mapping (instances as XML, EPRs,
  ``cim:Datetime``, method ``_INPUT``/``_OUTPUT`` elements, embedded instances).
- ``MS-WSMV``: Web Services Management Protocol Extensions for Windows Vista (WinRM's use of
  WS-Man: namespaces, WQL filter dialect, ``__cimnamespace`` selector, faults with
  ``WSManFault``/``MSFT_WmiError``, ``Negotiate``/``Basic`` over HTTP).
- ``wsmerror.h``: the Windows SDK header with the ``ERROR_WSMAN_*`` codes and their SOAP subcodes.
- ``libvirt:<file>``: libvirt ``src/hyperv/`` (a WS-Man client of real Hyper-V hosts): WQL and
  ``ASSOCIATORS OF`` queries, embedded-instance and EPR parameters, job polling.
"""

from __future__ import annotations

from typing import NamedTuple

# --- namespaces (MS-WSMV 2.2.1; DSP0226 Annex A) ------------------------------------------
NS_S = "http://www.w3.org/2003/05/soap-envelope"
NS_A = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
NS_W = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
NS_N = "http://schemas.xmlsoap.org/ws/2004/09/enumeration"
NS_X = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
NS_P = "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd"  # MS-WSMV extensions (wsmv)
NS_B = "http://schemas.dmtf.org/wbem/wsman/1/cimbinding.xsd"
NS_CIM = "http://schemas.dmtf.org/wbem/wscim/1/common"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"
NS_F = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"
NS_WMIERR = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/MSFT_WmiError"
ANONYMOUS = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"

#: WMI namespace of the Hyper-V V2 provider (HV2/about-the-virtualization-wmi-provider:
#: "root\\virtualization\\v2") and its WS-Man resource URI prefix (MS-WSMV 2.2.4.x: WMI
#: classes are addressed as ``.../wmi/<namespace>/<class>``; libvirt:hyperv_wmi_classes.h
#: ROOT_VIRTUALIZATION_V2).
CIM_NAMESPACE = "root/virtualization/v2"
RESOURCE_PREFIX = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2/"
#: The one class served outside root/virtualization/v2: root/cimv2's CIM_DataFile, for its
#: Delete method (Win32 docs, "Delete method of the CIM_DataFile class": no parameters; key
#: Name = the full path; 0 Success, 2 Access denied, 15 Sharing violation, 21 Invalid
#: parameter). WMI v2 has no method that deletes an image file; WinRM clients delete a
#: VHDX this way (the WMI plug-in serves every namespace under .../wmi/<namespace>/<Class>).
DATAFILE_URI = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/CIM_DataFile"
DATAFILE_SOURCE = "Win32/delete-method-in-class-cim-datafile"
#: root/cimv2 is addressed like root/virtualization/v2 (MS-WSMV: ``.../wmi/<namespace>/
#: <Class>``, ``*`` with a WQL filter); its one class served is CIM_DataFile (Win32/
#: cim-datafile: "Namespace Root\\CIMV2"), enumerated with WQL over a directory.
CIMV2_NAMESPACE = "root/cimv2"
CIMV2_PREFIX = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/"
#: The namespace of each class outside root/virtualization/v2 (every other is in it).
CLASS_NAMESPACES = {"CIM_DataFile": CIMV2_NAMESPACE}
DATAFILE_OK, DATAFILE_SHARING_VIOLATION, DATAFILE_INVALID_PARAMETER = 0, 15, 21
#: "All classes" resource URI used with a WQL filter (libvirt:hyperv_wmi.c hypervEnumAndPull
#: enumerates ``rootUri`` = ``.../v2/*``; MS-WSMV 3.1.4.8 enumeration with filters).
RESOURCE_ALL = RESOURCE_PREFIX + "*"
WQL_DIALECT = "http://schemas.microsoft.com/wbem/wsman/1/WQL"  # MS-WSMV 2.2.4.x, libvirt
ASSOC_DIALECT = "http://schemas.dmtf.org/wbem/wsman/1/cimbinding/associationFilter"  # DSP0227 8.2
SELECTOR_DIALECT = "http://schemas.dmtf.org/wbem/wsman/1/wsman/SelectorFilter"  # DSP0226 8.3
#: DSP0226 14.6 fault details used.
FD_INSUFFICIENT_SELECTORS = (
    "http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/InsufficientSelectors"
)
FD_UNEXPECTED_SELECTORS = (
    "http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/UnexpectedSelectors"
)
FD_INVALID_RESOURCE_URI = (
    "http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/InvalidResourceURI"
)
FD_MAX_ENVELOPE_SIZE = "http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/MaxEnvelopeSize"
FD_MIN_ENVELOPE_LIMIT = (
    "http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/MinimumEnvelopeLimit"
)
FD_FILTER_DIALECT = "http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/FilteringRequired"

#: DSP0226 11 (Identify): an envelope whose Body holds wsmid:Identify and no addressing
#: headers; the answer names the protocol and product. WinRM answers "Microsoft
#: Corporation" and "OS: <version> SP: <sp> Stack: <winrm version>" (MS-WSMV 3.1.4.x); the
#: version here is Windows Server 2022's (10.0.20348) with WinRM stack 3.0.
NS_WSMID = "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd"
IDENTIFY_VENDOR = "Microsoft Corporation"
IDENTIFY_VERSION = "OS: 10.0.20348 SP: 0.0 Stack: 3.0"

# --- actions (DSP0226 7, 8; DSP0227 9.1 custom actions = resource URI + "/" + method) ------
A_GET = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get"
A_ENUMERATE = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Enumerate"
A_PULL = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Pull"
A_RELEASE = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Release"
A_FAULT = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"  # DSP0226 14.5
A_ADDR_FAULT = "http://schemas.xmlsoap.org/ws/2004/08/addressing/fault"  # DSP0226 14.5
RESPONSE_SUFFIX = "Response"  # DSP0226 7.1/8.2: <action>Response; DSP0227 9.1 for methods

#: DSP0226 8.2.3 / MS-WSMV: ``w:EnumerationMode`` values.
ENUM_MODE_EPR = "EnumerateEPR"
ENUM_MODE_OBJECT_AND_EPR = "EnumerateObjectAndEPR"

#: WinRM's service default MaxEnvelopeSizekb is 500 (``winrm get winrm/config``;
#: WSMAN_DEFAULT_MAX_ENVELOPE_SIZE_KB_V3 = 500 in the PowerShell remoting sources) - the limit
#: when a request names none. MaxElements when absent is 1 (DSP0226 8.4: a Pull without
#: MaxElements returns one item).
DEFAULT_MAX_ENVELOPE = 512000
MIN_MAX_ENVELOPE = 8192  # DSP0226 6.2: a service must accept MaxEnvelopeSize 8192 and up
DEFAULT_MAX_ELEMENTS = 1
#: An enumeration context not pulled for this many seconds is dropped (a simulator choice;
#: DSP0226 8.2 leaves expiry to the service when the client sends no n:Expires).
ENUM_CONTEXT_TTL = 600.0


class ClassSpec(NamedTuple):
    name: str
    keys: tuple[str, ...]
    props: dict[str, str]  # name -> CIM type ("uint16[]" for arrays)
    source: str


def _props(spec: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in spec.strip().splitlines():
        if not line.strip():
            continue
        ty, name = line.split()
        out[name] = ty
    return out


_MANAGED = """
string InstanceID
string Caption
string Description
string ElementName
"""

_RASD = (
    _MANAGED
    + """
uint16 ResourceType
string OtherResourceType
string ResourceSubType
string PoolID
uint16 ConsumerVisibility
string[] HostResource
string AllocationUnits
uint64 VirtualQuantity
uint64 Reservation
uint64 Limit
uint32 Weight
boolean AutomaticAllocation
boolean AutomaticDeallocation
string Parent
string[] Connection
string Address
uint16 MappingBehavior
string AddressOnParent
string VirtualQuantityUnits
"""
)

_ENABLED = """
uint16[] OperationalStatus
string[] StatusDescriptions
uint16 HealthState
uint16 EnabledState
string OtherEnabledState
uint16 RequestedState
uint16 EnabledDefault
datetime TimeOfLastStateChange
"""

_DEVICE_KEYS = ("CreationClassName", "DeviceID", "SystemCreationClassName", "SystemName")
_SERVICE_KEYS = ("CreationClassName", "Name", "SystemCreationClassName", "SystemName")

CLASSES: dict[str, ClassSpec] = {}


def _add(name: str, keys: tuple[str, ...], spec: str, source: str) -> None:
    CLASSES[name] = ClassSpec(name, keys, _props(spec), source)


_add(
    "Msvm_ComputerSystem",
    ("CreationClassName", "Name"),
    _MANAGED
    + _ENABLED
    + """
datetime InstallDate
uint16[] AvailableRequestedStates
uint16 TransitioningToState
string CreationClassName
string Name
string PrimaryOwnerName
string PrimaryOwnerContact
string NameFormat
uint16[] Dedicated
uint16 ResetCapability
uint64 OnTimeInMilliseconds
uint32 ProcessID
datetime TimeOfLastConfigurationChange
uint16 NumberOfNumaNodes
uint16 ReplicationState
uint16 ReplicationHealth
uint16 ReplicationMode
uint16 EnhancedSessionModeState
""",
    "HV2/msvm-computersystem (MOF syntax; keys from CIM_System: CreationClassName, Name)",
)
_add(
    "Msvm_VirtualSystemSettingData",
    ("InstanceID",),
    _MANAGED
    + """
string VirtualSystemIdentifier
string VirtualSystemType
string[] Notes
datetime CreationTime
string ConfigurationID
string ConfigurationDataRoot
string ConfigurationFile
string SnapshotDataRoot
string SuspendDataRoot
string SwapFileDataRoot
string LogDataRoot
uint16 AutomaticStartupAction
uint16 AutomaticShutdownAction
uint16 AutomaticRecoveryAction
string BIOSGUID
boolean BIOSNumLock
uint16[] BootOrder
string Parent
boolean IsSaved
string Version
string VirtualSystemSubType
string[] BootSourceOrder
boolean SecureBootEnabled
""",
    "HV2/msvm-virtualsystemsettingdata; libvirt:hyperv_wmi_generator.input",
)
_add(
    "Msvm_ProcessorSettingData",
    ("InstanceID",),
    _RASD
    + """
boolean LimitCPUID
boolean LimitProcessorFeatures
uint64 MaxProcessorsPerNumaNode
uint64 MaxNumaNodesPerSocket
""",
    "HV2/msvm-processorsettingdata; libvirt:hyperv_wmi_generator.input",
)
_add(
    "Msvm_MemorySettingData",
    ("InstanceID",),
    _RASD
    + """
boolean DynamicMemoryEnabled
uint32 TargetMemoryBuffer
boolean IsVirtualized
uint64 MaxMemoryBlocksPerNumaNode
""",
    "HV2/msvm-memorysettingdata; libvirt:hyperv_wmi_generator.input",
)
_add(
    "Msvm_ResourceAllocationSettingData",
    ("InstanceID",),
    _RASD,
    "HV2/msvm-resourceallocationsettingdata (controllers, disk and DVD drives)",
)
_add(
    "Msvm_StorageAllocationSettingData",
    ("InstanceID",),
    _RASD
    + """
uint64 VirtualResourceBlockSize
uint64 VirtualQuantity
string[] HostExtentName
uint64 HostExtentStartingAddress
uint16 Access
uint32 HostResourceBlockSize
""",
    "HV2/msvm-storageallocationsettingdata (HostResource = VHD/VHDX or ISO path)",
)
_add(
    "Msvm_SyntheticEthernetPortSettingData",
    ("InstanceID",),
    _RASD
    + """
boolean StaticMacAddress
string[] VirtualSystemIdentifiers
""",
    "HV2/msvm-syntheticethernetportsettingdata (Address = MAC, 12 hex digits)",
)
_add(
    "Msvm_EthernetPortAllocationSettingData",
    ("InstanceID",),
    _RASD
    + """
uint16 EnabledState
string[] RequiredFeatures
""",
    "HV2/msvm-ethernetportallocationsettingdata (Parent = port, HostResource = switch)",
)
_add(
    "Msvm_VirtualEthernetSwitch",
    ("CreationClassName", "Name"),
    _MANAGED
    + _ENABLED
    + """
string CreationClassName
string Name
uint32 MaxVMQOffloads
uint32 MaxChimneyOffloads
""",
    "HV2/msvm-virtualethernetswitch (Name = switch GUID, ElementName = friendly name)",
)
_add(
    "Msvm_VirtualSystemManagementService",
    _SERVICE_KEYS,
    _MANAGED
    + _ENABLED
    + """
string SystemCreationClassName
string SystemName
string CreationClassName
string Name
string StartMode
boolean Started
""",
    "HV2/msvm-virtualsystemmanagementservice; libvirt:hyperv_wmi_generator.input",
)
_add(
    "Msvm_VirtualSystemSnapshotService",
    _SERVICE_KEYS,
    _MANAGED
    + _ENABLED
    + """
string SystemCreationClassName
string SystemName
string CreationClassName
string Name
string StartMode
boolean Started
""",
    "HV2/msvm-virtualsystemsnapshotservice",
)
_add(
    "Msvm_VirtualSystemMigrationService",
    _SERVICE_KEYS,
    _MANAGED
    + _ENABLED
    + """
string SystemCreationClassName
string SystemName
string CreationClassName
string Name
string StartMode
boolean Started
string[] MigrationServiceListenerIPAddressList
""",
    "HV2/msvm-virtualsystemmigrationservice",
)
_add(
    "Msvm_ImageManagementService",
    _SERVICE_KEYS,
    _MANAGED
    + _ENABLED
    + """
string SystemCreationClassName
string SystemName
string CreationClassName
string Name
string StartMode
boolean Started
""",
    "HV2/msvm-imagemanagementservice",
)
_add(
    "Msvm_VirtualHardDiskSettingData",
    ("InstanceID",),
    _MANAGED
    + """
uint16 Type
uint16 Format
string Path
string ParentPath
uint64 MaxInternalSize
uint32 BlockSize
uint32 LogicalSectorSize
uint32 PhysicalSectorSize
string VirtualDiskId
""",
    "HV2/msvm-virtualharddisksettingdata (CreateVirtualHardDisk input, "
    "GetVirtualHardDiskSettingData output; only ever embedded)",
)
_add(
    "Msvm_Processor",
    _DEVICE_KEYS,
    _MANAGED
    + _ENABLED
    + """
string SystemCreationClassName
string SystemName
string CreationClassName
string DeviceID
string Role
uint16 Family
uint32 MaxClockSpeed
uint32 CurrentClockSpeed
uint16 DataWidth
uint16 AddressWidth
uint16 LoadPercentage
uint16 CPUStatus
""",
    "HV2/msvm-processor (a host's logical processors: SystemName = the host; a choice here: "
    "only the host's are served, not the VMs' virtual processors; DeviceID 'Microsoft:LP_n')",
)
_add(
    "Msvm_Memory",
    _DEVICE_KEYS,
    _MANAGED
    + _ENABLED
    + """
string SystemCreationClassName
string SystemName
string CreationClassName
string DeviceID
uint64 BlockSize
uint64 NumberOfBlocks
uint64 ConsumableBlocks
boolean Volatile
""",
    "HV2/msvm-memory (the host's memory: BlockSize x NumberOfBlocks bytes; ConsumableBlocks "
    "the blocks VMs can still take; only the host's instance is served)",
)
_add(
    "CIM_DataFile",
    ("Name",),
    """
uint32 AccessMask
boolean Archive
string Caption
boolean Compressed
string CompressionMethod
string CreationClassName
datetime CreationDate
string CSCreationClassName
string CSName
string Description
string Drive
string EightDotThreeFileName
boolean Encrypted
string EncryptionMethod
string Extension
string FileName
uint64 FileSize
string FileType
string FSCreationClassName
string FSName
boolean Hidden
datetime InstallDate
uint64 InUseCount
datetime LastAccessed
datetime LastModified
string Manufacturer
string Name
string Path
boolean Readable
string Status
boolean System
string Version
boolean Writeable
""",
    "Win32/cim-datafile (learn.microsoft.com/windows/win32/cimwin32prov/cim-datafile; "
    "root/cimv2, key Name 'full path names'; Drive 'including the colon', example 'c:'; "
    "Path 'including the leading and trailing backslashes', example '\\windows\\system\\'; "
    "FileName 'without the file name extension'; Extension 'without the preceding "
    "period'; FileSize uint64 bytes; properties in the page's alphabetical order). "
    "Served: one instance per image file of the simulated storage, names in lower case "
    "(the page's Drive and Path examples; WMI's CIMWin32 provider reports file paths "
    "lower-cased); CSName the host; FSName NTFS; what is not modelled is NULL",
)
#: Files' sizes on disk (CIM_DataFile.FileSize). [MS-VHDX] 2.2: a VHDX starts with a 1 MiB
#: header section and keeps its BAT and metadata regions in 1 MiB-aligned regions; Windows
#: makes a new empty dynamic or differencing VHDX 4 MiB long (observed: New-VHD), and a
#: fixed one that much plus its virtual size. No guest data is written (no data path), so
#: a made dynamic/differencing image stays 4 MiB; the seed OS images (a simulator choice)
#: hold 2 GiB; an ISO's file size is its size.
VHDX_EMPTY_FILE_BYTES = 4 << 20
SEED_IMAGE_DATA_BYTES = 2 << 30
#: The class and system names a CIM_DataFile carries (Win32/cim-datafile: CreationClassName
#: "Name of the class", propagated CSCreationClassName/FSCreationClassName/FSName; the values
#: Windows hosts report, CIMWin32 naming its classes Win32_*): Caption and Description are
#: the full path, as the provider fills them.
DATAFILE_CREATION_CLASS = "CIM_LogicalFile"
DATAFILE_FS = ("Win32_FileSystem", "NTFS")  # CIM_DataFile FSCreationClassName, FSName
DATAFILE_CS_CLASS = "Win32_ComputerSystem"  # CIM_DataFile CSCreationClassName

#: The host's logical processors and their clock (a choice: a 16-thread 2.4 GHz host).
HOST_LOGICAL_PROCESSORS = 16
HOST_CPU_MHZ = 2400
_add(
    "Msvm_ShutdownComponent",
    _DEVICE_KEYS,
    _MANAGED
    + _ENABLED
    + """
string SystemCreationClassName
string SystemName
string CreationClassName
string DeviceID
""",
    "HV2/msvm-shutdowncomponent; libvirt:hyperv_wmi_generator.input",
)
_add(
    "Msvm_KvpExchangeComponent",
    _DEVICE_KEYS,
    _MANAGED
    + _ENABLED
    + """
string SystemCreationClassName
string SystemName
string CreationClassName
string DeviceID
string[] GuestIntrinsicExchangeItems
string[] GuestExchangeItems
""",
    "HV2/msvm-kvpexchangecomponent (items are embedded Msvm_KvpExchangeDataItem CIM-XML)",
)
_add(
    "Msvm_ConcreteJob",
    ("InstanceID",),
    _MANAGED
    + """
string Name
uint16[] OperationalStatus
string Status
uint16 HealthState
string JobStatus
datetime TimeSubmitted
datetime StartTime
datetime ElapsedTime
uint32 JobRunTimes
datetime UntilTime
string Owner
uint32 Priority
uint16 PercentComplete
boolean DeleteOnCompletion
uint16 ErrorCode
string ErrorDescription
string ErrorSummaryDescription
uint16 JobState
datetime TimeOfLastStateChange
datetime TimeBeforeRemoval
boolean Cancellable
uint16 JobType
""",
    "HV2/msvm-concretejob; libvirt:hyperv_wmi_generator.input",
)
_add(
    "Msvm_KvpExchangeDataItem",
    (),
    """
string Caption
string Data
string Description
string ElementName
string Name
uint16 Source
""",
    "HV2/msvm-kvpexchangedataitem (only ever embedded, as CIM-XML text)",
)
_add(
    "Msvm_VirtualSystemMigrationSettingData",
    ("InstanceID",),
    _MANAGED
    + """
uint16 MigrationType
uint16 TransportType
uint16 Priority
string[] DestinationIPAddressList
string DestinationPlannedVirtualSystemId
""",
    "HV2/msvm-virtualsystemmigrationsettingdata (MigrateVirtualSystemToHost input)",
)
_add(
    "Msvm_VirtualSystemSnapshotSettingData",
    ("InstanceID",),
    _MANAGED
    + """
uint16 ConsistencyLevel
uint16 GuestBackupType
boolean IgnoreNonSnapshottableDisks
""",
    "HV2/msvm-virtualsystemsnapshotsettingdata (CreateSnapshot input)",
)
_add(
    "Msvm_SummaryInformation",
    ("InstanceID",),
    """
string InstanceID
datetime CreationTime
string ElementName
uint16 EnabledState
string OtherEnabledState
string GuestOperatingSystem
uint16 HealthState
uint16 Heartbeat
uint64 MemoryUsage
string Name
string Notes
string Version
uint16 NumberOfProcessors
uint16[] OperationalStatus
uint16 ProcessorLoad
object[] Snapshots
uint64 UpTime
string VirtualSystemSubType
string HostComputerSystemName
""",
    "HV2/msvm-summaryinformation (MOF order; returned embedded by GetSummaryInformation; "
    "Snapshots are embedded CIM_VirtualSystemSettingData instances)",
)

#: Msvm_ComputerSystem Caption/Description (HV2/msvm-computersystem: Caption "Virtual
#: Machine" / "Hosting Computer System"; Description "Microsoft Hosting Computer System" for
#: the host. For a VM the page says "Microsoft Virtual Computer System" but libvirt's
#: hyperv_wmi_classes.h MSVM_COMPUTERSYSTEM_WQL_VIRTUAL, used against real hosts, selects
#: VMs by "Microsoft Virtual Machine": served as libvirt finds it).
VM_CAPTION, VM_DESCRIPTION = "Virtual Machine", "Microsoft Virtual Machine"
HOST_CAPTION, HOST_DESCRIPTION = "Hosting Computer System", "Microsoft Hosting Computer System"
#: Service instance Names: "vmms" is the Virtual Machine Management Service's; the others
#: are the simulator's picks (clients find services by enumerating their class).
SERVICE_NAMES = {
    "Msvm_ImageManagementService": "vhdsvc",
    "Msvm_VirtualSystemManagementService": "vmms",
    "Msvm_VirtualSystemSnapshotService": "vssnapsvc",
    "Msvm_VirtualSystemMigrationService": "vsmigrationsvc",
}

#: Associations answered by ``ASSOCIATORS OF {...} WHERE AssocClass = X ResultClass = Y``
#: (WQL, as libvirt:hyperv_wmi.c issues them) and by the DSP0227 8.2 association filter.
ASSOCIATIONS: dict[str, str] = {
    "Msvm_SettingsDefineState": "Msvm_ComputerSystem <-> its realized "
    "Msvm_VirtualSystemSettingData (HV2/msvm-settingsdefinestate)",
    "Msvm_SnapshotOfVirtualSystem": "Msvm_ComputerSystem <-> its snapshot "
    "Msvm_VirtualSystemSettingData (HV2/msvm-snapshotofvirtualsystem)",
    "Msvm_VirtualSystemSettingDataComponent": "Msvm_VirtualSystemSettingData <-> its "
    "resource allocation setting data (HV2/msvm-virtualsystemsettingdatacomponent)",
    "Msvm_SystemDevice": "Msvm_ComputerSystem <-> its Msvm_ShutdownComponent / "
    "Msvm_KvpExchangeComponent (HV2/msvm-systemdevice)",
}

# --- states -------------------------------------------------------------------------------
#: HV2/msvm-computersystem, EnabledState.
ENABLED_STATES: dict[int, str] = {
    0: "Unknown",
    1: "Other",
    2: "Enabled",
    3: "Disabled",
    4: "Shutting Down",
    5: "Not Applicable",
    6: "Enabled but Offline",
    7: "In Test",
    8: "Deferred",
    9: "Quiesce",
    10: "Starting",
}
ES_ENABLED, ES_DISABLED, ES_SHUTTING_DOWN, ES_OFFLINE, ES_QUIESCE, ES_STARTING = 2, 3, 4, 6, 9, 10
HEALTH_OK = 5  # HV2/msvm-computersystem HealthState "OK" (5)

#: HV2/requeststatechange-msvm-computersystem, RequestedState values.
REQUESTED_STATES: dict[int, str] = {
    2: "Enabled",
    3: "Disabled",
    4: "Shut Down",
    6: "Offline",
    7: "Test",
    8: "Defer",
    9: "Quiesce",
    10: "Reboot",
    11: "Reset",
}
RS_NO_CHANGE = 5  # CIM_EnabledLogicalElement RequestedState "No Change"
RS_NOT_APPLICABLE = 12  # CIM_EnabledLogicalElement RequestedState "Not Applicable"

#: Which RequestedState is valid from which EnabledState, and the state it ends in. (The
#: RequestStateChange page describes Reboot (10) as "State transition from Off or Saved to
#: Running"; read here as CIM's Reboot of a running VM, refused from Off/Saved.) The
#: Hyper-V state diagram (HV2/msvm-computersystem, Remarks): Off (3) -> Running (2); Running
#: -> Off (turn off), Saved (6, save), Paused (9, pause), Running (10 reboot / 11 reset);
#: Paused -> Running (2, resume), Off (3), Saved (6); Saved -> Running (2, restore) and Off
#: (3, delete the saved state). "Shut Down" (4) "valid in version 1 of Hyper-V only"
#: (HV2/requeststatechange-msvm-computersystem) - V2 answers it with 32775 and the guest
#: shutdown goes through Msvm_ShutdownComponent.InitiateShutdown. Any pair not listed ->
#: 32775 "Invalid state for this operation".
TRANSITIONS: dict[tuple[int, int], int] = {
    (ES_DISABLED, 2): ES_ENABLED,
    (ES_ENABLED, 3): ES_DISABLED,
    (ES_ENABLED, 6): ES_OFFLINE,
    (ES_ENABLED, 9): ES_QUIESCE,
    (ES_ENABLED, 10): ES_ENABLED,
    (ES_ENABLED, 11): ES_ENABLED,
    (ES_QUIESCE, 2): ES_ENABLED,
    (ES_QUIESCE, 3): ES_DISABLED,
    (ES_QUIESCE, 6): ES_OFFLINE,
    (ES_OFFLINE, 2): ES_ENABLED,
    (ES_OFFLINE, 3): ES_DISABLED,
}
#: The transitional EnabledState shown while the job runs (HV2/msvm-computersystem:
#: Starting (10) "in the process of going to an Enabled state", Shutting Down (4) "in the
#: process of going to a Disabled state"); other transitions keep the old state until done.
TRANSITIONAL: dict[int, int] = {ES_ENABLED: ES_STARTING, ES_DISABLED: ES_SHUTTING_DOWN}

#: HV2/msvm-concretejob, JobState.
JOB_STATES: dict[int, str] = {
    2: "New",
    3: "Starting",
    4: "Running",
    5: "Suspended",
    6: "Shutting Down",
    7: "Completed",
    8: "Terminated",
    9: "Killed",
    10: "Exception",
    11: "Service",
}
JOB_RUNNING, JOB_COMPLETED, JOB_EXCEPTION = 4, 7, 10

# --- method return codes ------------------------------------------------------------------
#: HV2/requeststatechange-msvm-computersystem "Return value" (the same set is documented
#: for the Msvm_VirtualSystemManagementService, snapshot and migration service methods and
#: Msvm_ShutdownComponent.InitiateShutdown); names as libvirt:hyperv_wmi.c
#: hypervReturnCodeToString.
RETURN_CODES: dict[int, str] = {
    0: "Completed with No Error",
    4096: "Method Parameters Checked - Job Started",
    32768: "Failed",
    32769: "Access Denied",
    32770: "Not Supported",
    32771: "Status is unknown",
    32772: "Timeout",
    32773: "Invalid parameter",
    32774: "System is in use",
    32775: "Invalid state for this operation",
    32776: "Incorrect data type",
    32777: "System is not available",
    32778: "Out of memory",
}
RC_OK, RC_JOB, RC_FAILED, RC_NOT_SUPPORTED = 0, 4096, 32768, 32770
RC_INVALID_PARAMETER, RC_IN_USE, RC_INVALID_STATE, RC_NOT_AVAILABLE = 32773, 32774, 32775, 32777
#: Msvm_ShutdownComponent.InitiateShutdown adds (HV2/msvm-shutdowncomponent-initiateshutdown):
SHUTDOWN_RETURN_CODES: dict[int, str] = {
    32779: "File not found",
    32780: "The system is not ready",
    32781: "The machine is locked and cannot be shut down without the force option",
    32782: "A system shutdown is in progress",
}
RC_NOT_READY, RC_SHUTDOWN_IN_PROGRESS = 32780, 32782

# --- methods ------------------------------------------------------------------------------


class Param(NamedTuple):
    name: str
    type: str  # "uint16", "string", "string[]", "ref", "ref[]", "embedded", "embedded[]"
    direction: str  # "in" / "out"


class MethodSpec(NamedTuple):
    cls: str
    name: str
    params: tuple[Param, ...]
    source: str


def _m(cls: str, name: str, params: str, source: str) -> MethodSpec:
    out = []
    for item in params.split(","):
        d, ty, nm = item.split()
        out.append(Param(nm, ty, d))
    return MethodSpec(cls, name, tuple(out), source)


_VSMS = "Msvm_VirtualSystemManagementService"
METHODS: dict[tuple[str, str], MethodSpec] = {
    (m.cls, m.name): m
    for m in (
        _m(
            "Msvm_ComputerSystem",
            "RequestStateChange",
            "in uint16 RequestedState, in datetime TimeoutPeriod, out ref Job",
            "HV2/requeststatechange-msvm-computersystem",
        ),
        _m(
            "Msvm_ShutdownComponent",
            "InitiateShutdown",
            "in boolean Force, in string Reason",
            "HV2/msvm-shutdowncomponent-initiateshutdown (no Job: 0 = shutdown initiated)",
        ),
        _m(
            _VSMS,
            "DefineSystem",
            "in embedded SystemSettings, in embedded[] ResourceSettings, "
            "in ref ReferenceConfiguration, out ref ResultingSystem, out ref Job",
            "HV2/definesystem-msvm-virtualsystemmanagementservice",
        ),
        _m(
            _VSMS,
            "DestroySystem",
            "in ref AffectedSystem, out ref Job",
            "HV2/destroysystem-msvm-virtualsystemmanagementservice",
        ),
        _m(
            _VSMS,
            "ModifySystemSettings",
            "in embedded SystemSettings, out ref Job",
            "HV2/modifysystemsettings-msvm-virtualsystemmanagementservice",
        ),
        _m(
            _VSMS,
            "AddResourceSettings",
            "in ref AffectedConfiguration, in embedded[] ResourceSettings, "
            "out ref[] ResultingResourceSettings, out ref Job",
            "HV2/addresourcesettings-msvm-virtualsystemmanagementservice",
        ),
        _m(
            _VSMS,
            "ModifyResourceSettings",
            "in embedded[] ResourceSettings, out ref[] ResultingResourceSettings, out ref Job",
            "HV2/modifyresourcesettings-msvm-virtualsystemmanagementservice",
        ),
        _m(
            _VSMS,
            "RemoveResourceSettings",
            "in ref[] ResourceSettings, out ref Job",
            "HV2/removeresourcesettings-msvm-virtualsystemmanagementservice",
        ),
        _m(
            _VSMS,
            "GetSummaryInformation",
            "in ref[] SettingData, in uint32[] RequestedInformation, "
            "out embedded[] SummaryInformation",
            "HV2/getsummaryinformation-msvm-virtualsystemmanagementservice",
        ),
        _m(
            "Msvm_ImageManagementService",
            "CreateVirtualHardDisk",
            "in embedded VirtualDiskSettingData, out ref Job",
            "HV2/createvirtualharddisk-msvm-imagemanagementservice",
        ),
        _m(
            "Msvm_ImageManagementService",
            "GetVirtualHardDiskSettingData",
            "in string Path, out embedded SettingData, out ref Job",
            "HV2/getvirtualharddisksettingdata-msvm-imagemanagementservice (SettingData is "
            "an EmbeddedInstance Msvm_VirtualHardDiskSettingData; 0 or 4096; 32779 File "
            "not found)",
        ),
        _m(
            "Msvm_VirtualSystemSnapshotService",
            "CreateSnapshot",
            "in ref AffectedSystem, in embedded SnapshotSettings, in uint16 SnapshotType, "
            "out ref ResultingSnapshot, out ref Job",
            "HV2/createsnapshot-msvm-virtualsystemsnapshotservice",
        ),
        _m(
            "Msvm_VirtualSystemSnapshotService",
            "ApplySnapshot",
            "in ref Snapshot, out ref Job",
            "HV2/applysnapshot-msvm-virtualsystemsnapshotservice",
        ),
        _m(
            "Msvm_VirtualSystemSnapshotService",
            "DestroySnapshot",
            "in ref AffectedSnapshot, out ref Job",
            "HV2/destroysnapshot-msvm-virtualsystemsnapshotservice",
        ),
        _m(
            "Msvm_VirtualSystemMigrationService",
            "MigrateVirtualSystemToHost",
            "in ref ComputerSystem, in string DestinationHost, "
            "in embedded MigrationSettingData, in embedded NewSystemSettingData, "
            "in embedded[] NewResourceSettingData, out ref Job",
            "HV2/migratevirtualsystemtohost-msvm-virtualsystemmigrationservice",
        ),
    )
}

#: GetSummaryInformation RequestedInformation codes served, and the Msvm_SummaryInformation
#: property each fills (HV2/getsummaryinformation-msvm-virtualsystemmanagementservice,
#: RequestedInformation table). Other codes (thumbnails, replication, ...) leave the instance
#: without that property.
SUMMARY_FIELDS: dict[int, str] = {
    0: "Name",
    1: "ElementName",
    2: "CreationTime",
    3: "Notes",
    4: "NumberOfProcessors",
    100: "EnabledState",
    101: "ProcessorLoad",
    103: "MemoryUsage",
    104: "Heartbeat",
    105: "UpTime",
    106: "GuestOperatingSystem",
    107: "Snapshots",
    109: "HealthState",
}
#: Msvm_SummaryInformation.Heartbeat (HV2/msvm-summaryinformation): 2 OK, 6 Error,
#: 12 No Contact, 13 Lost Communication.
HEARTBEAT_OK, HEARTBEAT_NO_CONTACT = 2, 12

#: Msvm_VirtualSystemMigrationSettingData.MigrationType (HV2/msvm-virtualsystemmigration
#: settingdata): 32768 VirtualSystem ("Migrates the virtual system to the destination host";
#: live when it runs), 32769 Storage, 32770 Staged (a planned VM at the destination),
#: 32771 VirtualSystemAndStorage, 32772 StorageDeepCheck. The simulator moves the VM for
#: 32768 and 32771, completes 32769 and 32772 without moving it, and answers 32770 with
#: 32770 Not Supported.
MIGRATION_TYPES: dict[int, str] = {
    32768: "VirtualSystem",
    32769: "Storage",
    32770: "Staged",
    32771: "VirtualSystemAndStorage",
    32772: "StorageDeepCheck",
}

#: CreateSnapshot SnapshotType (HV2/createsnapshot-msvm-virtualsystemsnapshotservice):
#: 2 Full Snapshot, 3 Disk Snapshot ("This must be one of the following values"); the
#: SnapshotSettings parameter "is optional and may be an empty string".
SNAPSHOT_TYPES: dict[int, str] = {2: "Full Snapshot", 3: "Disk Snapshot"}

# --- resource types (HV2/msvm-resourceallocationsettingdata ResourceType / ResourceSubType)
RT_PROCESSOR, RT_MEMORY, RT_ETHERNET_PORT, RT_DVD, RT_DISK, RT_SCSI = 3, 4, 10, 16, 17, 6
RT_LOGICAL_DISK, RT_ETHERNET_CONNECTION = 31, 33
SUBTYPES: dict[str, tuple[int, str]] = {
    "Microsoft:Hyper-V:Processor": (RT_PROCESSOR, "Msvm_ProcessorSettingData"),
    "Microsoft:Hyper-V:Memory": (RT_MEMORY, "Msvm_MemorySettingData"),
    "Microsoft:Hyper-V:Synthetic SCSI Controller": (RT_SCSI, "Msvm_ResourceAllocationSettingData"),
    "Microsoft:Hyper-V:Synthetic Disk Drive": (RT_DISK, "Msvm_ResourceAllocationSettingData"),
    "Microsoft:Hyper-V:Synthetic DVD Drive": (RT_DVD, "Msvm_ResourceAllocationSettingData"),
    "Microsoft:Hyper-V:Virtual Hard Disk": (RT_LOGICAL_DISK, "Msvm_StorageAllocationSettingData"),
    "Microsoft:Hyper-V:Virtual CD/DVD Disk": (RT_LOGICAL_DISK, "Msvm_StorageAllocationSettingData"),
    "Microsoft:Hyper-V:Synthetic Ethernet Port": (
        RT_ETHERNET_PORT,
        "Msvm_SyntheticEthernetPortSettingData",
    ),
    "Microsoft:Hyper-V:Ethernet Connection": (
        RT_ETHERNET_CONNECTION,
        "Msvm_EthernetPortAllocationSettingData",
    ),
}
#: What Add/RemoveResourceSettings may change while a VM runs (EnabledState 2); on a VM that
#: is not Off otherwise, and for every other resource, they answer 32775 (Invalid state):
#: - storage on a SCSI controller: "Configure a virtual machine with a SCSI controller to be
#:   able to hot plug and hot unplug storage" (windowsserverdocs, Hyper-V Best Practices
#:   Analyzer: "Virtual machines without SCSI controllers must be shut down before you can
#:   add or remove storage") - a disk drive on a SCSI controller and its virtual hard disk;
#: - network adapters: "What's new in Hyper-V on Windows Server" (2016), "Hot add and remove
#:   for network adapters and memory": "add or remove a network adapter while the virtual
#:   machine is running ... generation 2 virtual machines" - every VM here is generation 2;
#: - a CD/DVD image in an existing DVD drive (a media change; a simulator choice).
#: Adding or removing a controller or a DVD drive needs the VM Off.
HOT_PLUG: dict[str, str] = {
    "Microsoft:Hyper-V:Synthetic Disk Drive": "on a SCSI controller",
    "Microsoft:Hyper-V:Virtual Hard Disk": "in a disk drive on a SCSI controller",
    "Microsoft:Hyper-V:Synthetic Ethernet Port": "generation 2",
    "Microsoft:Hyper-V:Ethernet Connection": "of a synthetic port",
    "Microsoft:Hyper-V:Virtual CD/DVD Disk": "media change",
}

#: Which ResourceType a setting's Parent must name (HV2/msvm-resourceallocationsettingdata,
#: Parent: "the parent of the resource"; the HV2 samples attach a drive to a controller, a
#: virtual hard disk to a drive, an ethernet connection to a port): drives on an IDE (5) or
#: SCSI (6) controller, disk/CD images on a disk (17) or DVD (16) drive, connections on a
#: port (10).
PARENT_TYPES: dict[str, tuple[int, ...]] = {
    "Microsoft:Hyper-V:Synthetic Disk Drive": (5, RT_SCSI),
    "Microsoft:Hyper-V:Synthetic DVD Drive": (5, RT_SCSI),
    "Microsoft:Hyper-V:Virtual Hard Disk": (RT_DISK, RT_DVD),
    "Microsoft:Hyper-V:Virtual CD/DVD Disk": (RT_DISK, RT_DVD),
    "Microsoft:Hyper-V:Ethernet Connection": (RT_ETHERNET_PORT,),
}
#: Msvm_VirtualHardDiskSettingData (HV2/msvm-virtualharddisksettingdata): Type 2 Fixed,
#: 3 Dynamic, 4 Differencing; Format 2 VHD, 3 VHDX, 4 VHDSet (the simulator takes 2 and 3,
#: with the file extension .vhd / .vhdx matching).
VHD_TYPES = {2: "Fixed", 3: "Dynamic", 4: "Differencing"}
VHD_FORMATS = {2: ".vhd", 3: ".vhdx"}
#: Win32 errors Hyper-V puts in job error descriptions (winerror.h).
ERROR_FILE_NOT_FOUND, ERROR_FILE_EXISTS = 0x80070002, 0x80070050

#: The fixed InstanceID suffixes Hyper-V gives a VM's processor and memory settings
#: (``Microsoft:<VM GUID>\\<id>``; observed on hosts and used in the HV2 samples).
PROCESSOR_ID_SUFFIX = "b637f346-6a0e-4dec-af52-bd70cb80a21d\\0"
MEMORY_ID_SUFFIX = "4764334d-e001-4176-82ee-5594ec9b530e"

#: Defaults DefineSystem fills in when the settings do not say (HV2/definesystem-...:
#: "processor and memory are automatically created and configured with default values";
#: New-VM defaults: 1 processor, 512 MiB memory, Limit 100000, Weight 100).
DEFAULT_VCPUS = 1
DEFAULT_MEMORY_MB = 512
PROCESSOR_LIMIT_MAX = 100000  # HV2/msvm-processorsettingdata: Limit/Reservation in 1/1000 %
PROCESSOR_WEIGHT_DEFAULT = 100

#: KVP exchange items a Linux guest's integration services report (the key_index list of the
#: Linux kernel's tools/hv/hv_kvp_daemon.c; described in "Data Exchange: Using key-value
#: pairs to share information between the host and guest on Hyper-V" (learn.microsoft.com,
#: virtualization docs): NetworkAddressIPv4 / NetworkAddressIPv6 are ";"-separated lists of
#: the addresses assigned in the guest). Each is an embedded Msvm_KvpExchangeDataItem
#: (HV2/msvm-kvpexchangedataitem: Name, Data, Source) in
#: Msvm_KvpExchangeComponent.GuestIntrinsicExchangeItems; Source 2 = guest intrinsic.
KVP_ITEMS = (
    "FullyQualifiedDomainName",
    "IntegrationServicesVersion",
    "NetworkAddressIPv4",
    "NetworkAddressIPv6",
    "OSBuildNumber",
    "OSName",
    "OSMajorVersion",
    "OSMinorVersion",
    "OSVersion",
    "ProcessorArchitecture",
)
KVP_SOURCE_GUEST_INTRINSIC = 2

#: Msvm_ShutdownComponent / Msvm_KvpExchangeComponent OperationalStatus[0]: 2 OK ("operating
#: normally"), 12 No Contact ("The guest service is not installed or has not yet been
#: contacted") (HV2/msvm-shutdowncomponent, OperationalStatus).
OPSTATUS_OK, OPSTATUS_NO_CONTACT = 2, 12

# --- faults (DSP0226 14.6 fault table; wsmerror.h codes; MS-WSMV 3.1.4.1.x) --------------


class FaultSpec(NamedTuple):
    code: str  # s:Sender / s:Receiver
    subcode: str  # qualified with the prefixes of the fault envelope (a:, w:, n:)
    reason: str
    wsman_code: int  # ERROR_WSMAN_* (wsmerror.h)
    http_status: int
    source: str


FAULTS: dict[str, FaultSpec] = {
    "DestinationUnreachable": FaultSpec(
        "s:Sender",
        "a:DestinationUnreachable",
        "The WS-Management service cannot process the request. The service cannot find "
        "the resource identified by the resource URI and selectors. ",
        0x80338000,  # ERROR_WSMAN_RESOURCE_NOT_FOUND
        500,
        "DSP0226 14.6.x wsa:DestinationUnreachable; wsmerror.h ERROR_WSMAN_RESOURCE_NOT_FOUND",
    ),
    "ActionNotSupported": FaultSpec(
        "s:Sender",
        "a:ActionNotSupported",
        "The WS-Management service does not support the specified action.",
        0x80338013,  # ERROR_WSMAN_ACTION_NOT_SUPPORTED
        500,
        "DSP0226 14.6.x wsa:ActionNotSupported; wsmerror.h ERROR_WSMAN_ACTION_NOT_SUPPORTED",
    ),
    "InvalidSelectors": FaultSpec(
        "s:Sender",
        "w:InvalidSelectors",
        "The WS-Management service cannot process the request because the request "
        "contained invalid selectors for the resource.",
        0x8033803D,  # ERROR_WSMAN_INVALID_SELECTORS
        500,
        "DSP0226 14.6.x wsman:InvalidSelectors (details InsufficientSelectors, "
        "UnexpectedSelectors, TypeMismatch); wsmerror.h ERROR_WSMAN_INVALID_SELECTORS",
    ),
    "InvalidResourceURI": FaultSpec(
        "s:Sender",
        "w:InvalidResourceURI",
        "The WS-Management service cannot process the request. The resource URI is "
        "missing or it has an incorrect format.",
        0x8033803B,  # ERROR_WSMAN_INVALID_RESOURCE_URI
        500,
        "DSP0226 14.6.x wsman:InvalidResourceURI; wsmerror.h ERROR_WSMAN_INVALID_RESOURCE_URI",
    ),
    "InvalidParameter": FaultSpec(
        "s:Sender",
        "w:InvalidParameter",
        "The WS-Management service cannot process the request because a parameter of "
        "the method is not valid.",
        0x8033803A,  # ERROR_WSMAN_INVALID_PARAMETER
        500,
        "DSP0226 14.6.x wsman:InvalidParameter; wsmerror.h ERROR_WSMAN_INVALID_PARAMETER",
    ),
    "CannotProcessFilter": FaultSpec(
        "s:Sender",
        "w:CannotProcessFilter",
        "The data source could not process the filter. The filter might be missing, "
        "invalid or too complex to process.",
        0x80338122,  # ERROR_WSMAN_CANNOT_PROCESS_FILTER
        500,
        "DSP0226 14.6.x wsman:CannotProcessFilter; wsmerror.h ERROR_WSMAN_CANNOT_PROCESS_FILTER",
    ),
    "InvalidEnumerationContext": FaultSpec(
        "s:Receiver",
        "n:InvalidEnumerationContext",
        "The WS-Enumeration context in the enumeration is not valid. Enumeration may have "
        "been completed or canceled.",
        0x8033801B,  # ERROR_WSMAN_ENUMERATE_INVALID_ENUMERATION_CONTEXT
        500,
        "DSP0226 14.6.x wsen:InvalidEnumerationContext; wsmerror.h "
        "ERROR_WSMAN_ENUMERATE_INVALID_ENUMERATION_CONTEXT",
    ),
    "EncodingLimit": FaultSpec(
        "s:Sender",
        "w:EncodingLimit",
        "The WS-Management service cannot process the request because the encoding of "
        "the request exceeds an internal encoding limit.",
        0x80338035,  # ERROR_WSMAN_ENCODING_LIMIT
        500,
        "DSP0226 6.2 / 14.6.x wsman:EncodingLimit (detail MaxEnvelopeSize); wsmerror.h "
        "ERROR_WSMAN_ENCODING_LIMIT",
    ),
    "SchemaValidationError": FaultSpec(
        "s:Sender",
        "w:SchemaValidationError",
        "The SOAP XML in the message does not match the corresponding XML schema definition.",
        0x80338041,  # ERROR_WSMAN_SCHEMA_VALIDATION_ERROR
        500,
        "DSP0226 14.6.x wsman:SchemaValidationError; wsmerror.h",
    ),
    "MessageInformationHeaderRequired": FaultSpec(
        "s:Sender",
        "a:MessageInformationHeaderRequired",
        "The WS-Management service cannot process the request. The request does not have "
        "all the expected SOAP headers.",
        0x80338011,  # ERROR_WSMAN_MESSAGE_INFORMATION_HEADER_REQUIRED
        500,
        "DSP0226 14.6.x wsa:MessageInformationHeaderRequired; wsmerror.h "
        "ERROR_WSMAN_MESSAGE_INFORMATION_HEADER_REQUIRED",
    ),
    "InternalError": FaultSpec(
        "s:Receiver",
        "w:InternalError",
        "The WS-Management service cannot process the request. The WMI provider returned an error.",
        0x803381A6,  # the HRESULT of the MS-WSMV-shaped WMI fault example (pywinrm tests)
        500,
        "DSP0226 14.6.x wsman:InternalError; MS-WSMV (WMI errors carried as MSFT_WmiError, "
        "error_Code = the WMI HRESULT)",
    ),
}

#: CIM status codes used in MSFT_WmiError (DSP0200 / CIM_Error.CIMStatusCode).
CIM_ERR_FAILED, CIM_ERR_INVALID_PARAMETER, CIM_ERR_NOT_FOUND = 1, 4, 6
CIM_ERR_METHOD_NOT_FOUND = 17
CIM_ERR_INVALID_CLASS, CIM_ERR_INVALID_QUERY = 5, 15
#: WMI HRESULTs (WbemCli.h): WBEM_E_NOT_FOUND, WBEM_E_INVALID_PARAMETER,
#: WBEM_E_INVALID_METHOD, WBEM_E_INVALID_QUERY.
WBEM_E_NOT_FOUND = 0x80041002
WBEM_E_INVALID_PARAMETER = 0x80041008
WBEM_E_INVALID_METHOD = 0x8004102E
WBEM_E_INVALID_QUERY = 0x80041017
WBEM_E_INVALID_CLASS = 0x80041010

#: An instance the WMI provider does not find (Get, or the target of an Invoke): WinRM answers
#: a:DestinationUnreachable with w:FaultDetail .../InvalidResourceURI and a WSManFault (Code
#: ERROR_WSMAN_RESOURCE_NOT_FOUND) whose Message holds the WMI plug-in's ProviderFault (an
#: inner WSManFault from the host and an __ExtendedStatus naming the operation, the object
#: path and the provider) - as in a Windows Server 2012 R2 answer captured in Microsoft OMI's
#: WS-Man client tests (TestInnerMessageFaultResponse). The reason text ends in a space there.
WMI_PLUGIN = ("WMI Provider", "C:\\Windows\\system32\\WsmWmiPl.dll")
NS_EXTENDED_STATUS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/__ExtendedStatus"
#: The Hyper-V classes' WMI provider (HV2/msvm-computersystem MOF:
#: Provider("VmmsWmiInstanceAndMethodProvider")).
HYPERV_PROVIDER = "VmmsWmiInstanceAndMethodProvider"

# --- HTTP (MS-WSMV 2.1: HTTP(S) POST to /wsman, "application/soap+xml;charset=UTF-8") ----
WSMAN_PATH = "/wsman"
CONTENT_TYPE = "application/soap+xml;charset=UTF-8"
#: WinRM offers Negotiate (SPNEGO/NTLM/Kerberos) and Basic (MS-WSMV 2.1.x, winrm
#: config Service/Auth); Basic realm "WSMAN".
AUTH_SCHEMES = ("Negotiate", 'Basic realm="WSMAN"')
