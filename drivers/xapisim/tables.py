"""The simulator's tables: classes, fields and wire types, messages, power-state rules, errors.

Every fact carries a reference to where it comes from in the xapi-project/xen-api
repository (``file: name``), as of commit e2ee48d6883e0b98c4d219d3f0778a10c6655607
(2026-08-21). The tables drive the server (record encoding, parameter counts,
power-state checks, error parameters) and the fidelity tests in ``tests/xapisim``.

Type notation (as in the datamodel): ``string``, ``int`` (64-bit, a decimal string on the
wire), ``float``, ``bool``, ``datetime`` (XML-RPC dateTime.iso8601), ``enum <name>``
(string), ``ref <Class>`` ("OpaqueRef:<uuid>", null "OpaqueRef:NULL"), ``set <type>``
(array), ``map <ktype> <vtype>`` (struct; keys are stringified).
"""

from __future__ import annotations

from typing import NamedTuple

DM = "ocaml/idl/datamodel.ml"
DM_VM = "ocaml/idl/datamodel_vm.ml"
DM_HOST = "ocaml/idl/datamodel_host.ml"
DM_POOL = "ocaml/idl/datamodel_pool.ml"
DM_ERR = "ocaml/idl/datamodel_errors.ml"
XAPI_HOST = "ocaml/xapi/xapi_host.ml"
XAPI_VM = "ocaml/xapi/xapi_vm.ml"
LIFECYCLE = "ocaml/xapi/xapi_vm_lifecycle.ml"
EVENT = "ocaml/xapi/xapi_event.ml"
XAPI_VDI = "ocaml/xapi/xapi_vdi.ml"
WIRE = "doc/content/xen-api/wire-protocol.md"


class ClassSpec(NamedTuple):
    name: str
    fields: dict[str, str]  # field name -> type
    writable: frozenset[str]  # fields that have set_<field> (qualifier RW)
    ref: str


def _fields(spec: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in spec.strip().splitlines():
        name, _, ty = line.strip().partition(" ")
        out[name] = ty.strip()
    return out


_OPS = "set enum vm_operations"
_CUR = "map string enum vm_operations"
_MSS = "map string string"

CLASSES: dict[str, ClassSpec] = {}


def _add(name: str, spec: str, writable: str, ref: str) -> None:
    CLASSES[name] = ClassSpec(name, _fields(spec), frozenset(writable.split()), ref)


_add(
    "session",
    """
    uuid string
    this_host ref host
    this_user ref user
    last_active datetime
    pool bool
    other_config map string string
    is_local_superuser bool
    subject ref subject
    validation_time datetime
    auth_user_sid string
    auth_user_name string
    rbac_permissions set string
    tasks set ref task
    parent ref session
    originator string
    client_certificate bool
    """,
    "other_config",
    f"{DM}: module Session (session_t, fields uuid..client_certificate)",
)

_add(
    "pool",
    """
    uuid string
    name_label string
    name_description string
    master ref host
    default_SR ref SR
    suspend_image_SR ref SR
    crash_dump_SR ref SR
    other_config map string string
    ha_enabled bool
    ha_configuration map string string
    ha_statefiles set string
    ha_host_failures_to_tolerate int
    ha_plan_exists_for int
    ha_allow_overcommit bool
    ha_overcommitted bool
    blobs map string ref blob
    tags set string
    gui_config map string string
    wlb_url string
    wlb_username string
    wlb_enabled bool
    wlb_verify_cert bool
    redo_log_enabled bool
    redo_log_vdi ref VDI
    vswitch_controller string
    restrictions map string string
    metadata_VDIs set ref VDI
    cpu_info map string string
    policy_no_vendor_device bool
    live_patching_disabled bool
    is_psr_pending bool
    migration_compression bool
    """,
    "name_label name_description default_SR suspend_image_SR crash_dump_SR other_config tags"
    " gui_config wlb_enabled wlb_verify_cert policy_no_vendor_device live_patching_disabled"
    " migration_compression",
    f"{DM_POOL}: let t (pool fields; subset)",
)

_add(
    "host",
    """
    uuid string
    name_label string
    name_description string
    memory_overhead int
    allowed_operations set enum host_allowed_operations
    current_operations map string enum host_allowed_operations
    API_version_major int
    API_version_minor int
    API_version_vendor string
    API_version_vendor_implementation map string string
    enabled bool
    software_version map string string
    other_config map string string
    capabilities set string
    cpu_configuration map string string
    sched_policy string
    supported_bootloaders set string
    resident_VMs set ref VM
    logging map string string
    PIFs set ref PIF
    suspend_image_sr ref SR
    crash_dump_sr ref SR
    crashdumps set ref host_crashdump
    patches set ref host_patch
    updates set ref pool_update
    PBDs set ref PBD
    host_CPUs set ref host_cpu
    cpu_info map string string
    hostname string
    address string
    metrics ref host_metrics
    license_params map string string
    ha_statefiles set string
    ha_network_peers set string
    blobs map string ref blob
    tags set string
    external_auth_type string
    external_auth_service_name string
    external_auth_configuration map string string
    edition string
    license_server map string string
    bios_strings map string string
    power_on_mode string
    power_on_config map string string
    local_cache_sr ref SR
    chipset_info map string string
    PCIs set ref PCI
    PGPUs set ref PGPU
    PUSBs set ref PUSB
    ssl_legacy bool
    guest_VCPUs_params map string string
    display enum host_display
    virtual_hardware_platform_versions set int
    control_domain ref VM
    updates_requiring_reboot set ref pool_update
    features set ref Feature
    iscsi_iqn string
    multipathing bool
    uefi_certificates string
    certificates set ref Certificate
    editions set string
    tls_verification_enabled bool
    https_only bool
    """,
    "name_label name_description other_config logging suspend_image_sr crash_dump_sr hostname"
    " address tags license_server guest_VCPUs_params display",
    f"{DM_HOST}: let t (host fields; subset)",
)

_add(
    "host_metrics",
    """
    uuid string
    memory_total int
    memory_free int
    live bool
    last_updated datetime
    other_config map string string
    """,
    "other_config",
    f"{DM}: module Host_metrics",
)

_add(
    "VM",
    f"""
    uuid string
    allowed_operations {_OPS}
    current_operations {_CUR}
    name_label string
    name_description string
    power_state enum vm_power_state
    user_version int
    is_a_template bool
    is_default_template bool
    suspend_VDI ref VDI
    resident_on ref host
    scheduled_to_be_resident_on ref host
    affinity ref host
    memory_overhead int
    memory_target int
    memory_static_max int
    memory_dynamic_max int
    memory_dynamic_min int
    memory_static_min int
    VCPUs_params {_MSS}
    VCPUs_max int
    VCPUs_at_startup int
    actions_after_softreboot enum on_softreboot_behavior
    actions_after_shutdown enum on_normal_exit
    actions_after_reboot enum on_normal_exit
    actions_after_crash enum on_crash_behaviour
    consoles set ref console
    VIFs set ref VIF
    VBDs set ref VBD
    VUSBs set ref VUSB
    crash_dumps set ref crashdump
    VTPMs set ref VTPM
    PV_bootloader string
    PV_kernel string
    PV_ramdisk string
    PV_args string
    PV_bootloader_args string
    PV_legacy_args string
    HVM_boot_policy string
    HVM_boot_params {_MSS}
    HVM_shadow_multiplier float
    platform {_MSS}
    PCI_bus string
    other_config {_MSS}
    domid int
    domarch string
    last_boot_CPU_flags {_MSS}
    is_control_domain bool
    metrics ref VM_metrics
    guest_metrics ref VM_guest_metrics
    last_booted_record string
    recommendations string
    xenstore_data {_MSS}
    ha_always_run bool
    ha_restart_priority string
    is_a_snapshot bool
    snapshot_of ref VM
    snapshots set ref VM
    snapshot_time datetime
    transportable_snapshot_id string
    blobs map string ref blob
    tags set string
    blocked_operations map enum vm_operations string
    snapshot_info {_MSS}
    snapshot_metadata string
    parent ref VM
    children set ref VM
    bios_strings {_MSS}
    protection_policy ref VMPP
    is_snapshot_from_vmpp bool
    snapshot_schedule ref VMSS
    is_vmss_snapshot bool
    appliance ref VM_appliance
    start_delay int
    shutdown_delay int
    order int
    VGPUs set ref VGPU
    attached_PCIs set ref PCI
    suspend_SR ref SR
    version int
    generation_id string
    hardware_platform_version int
    has_vendor_device bool
    requires_reboot bool
    reference_label string
    domain_type enum domain_type
    NVRAM {_MSS}
    pending_guidances set enum update_guidances
    pending_guidances_recommended set enum update_guidances
    pending_guidances_full set enum update_guidances
    groups set ref VM_group
    secureboot_certificates_state enum vm_secureboot_certificates_state
    """,
    "name_label name_description user_version is_a_template affinity VCPUs_params"
    " actions_after_shutdown actions_after_reboot PV_bootloader PV_kernel PV_ramdisk PV_args"
    " PV_bootloader_args PV_legacy_args HVM_boot_params platform PCI_bus other_config"
    " recommendations xenstore_data tags suspend_SR hardware_platform_version blocked_operations",
    f"{DM_VM}: let t (VM contents, namespaces name/memory/VCPUs/actions/PV/HVM)",
)

_add(
    "VM_metrics",
    """
    uuid string
    memory_actual int
    VCPUs_number int
    VCPUs_utilisation map int float
    VCPUs_CPU map int int
    VCPUs_params map string string
    VCPUs_flags map int set string
    state set string
    start_time datetime
    install_time datetime
    last_updated datetime
    other_config map string string
    hvm bool
    nested_virt bool
    nomigrate bool
    current_domain_type enum domain_type
    numa_optimised bool
    numa_nodes int
    numa_node_memory map int int
    """,
    "other_config",
    f"{DM}: module VM_metrics",
)

_add(
    "VM_guest_metrics",
    """
    uuid string
    os_version map string string
    netbios_name map string string
    PV_drivers_version map string string
    PV_drivers_up_to_date bool
    memory map string string
    disks map string string
    networks map string string
    other map string string
    last_updated datetime
    other_config map string string
    live bool
    can_use_hotplug_vbd enum tristate_type
    can_use_hotplug_vif enum tristate_type
    PV_drivers_detected bool
    services map string string
    """,
    "other_config",
    f"{DM}: module VM_guest_metrics",
)

_add(
    "VBD",
    """
    uuid string
    allowed_operations set enum vbd_operations
    current_operations map string enum vbd_operations
    VM ref VM
    VDI ref VDI
    device string
    userdevice string
    bootable bool
    mode enum vbd_mode
    type enum vbd_type
    unpluggable bool
    storage_lock bool
    empty bool
    other_config map string string
    currently_attached bool
    status_code int
    status_detail string
    runtime_properties map string string
    qos_algorithm_type string
    qos_algorithm_params map string string
    qos_supported_algorithms set string
    metrics ref VBD_metrics
    """,
    "userdevice bootable mode type unpluggable other_config qos_algorithm_type"
    " qos_algorithm_params",
    f"{DM}: module VBD",
)

_add(
    "VDI",
    """
    uuid string
    name_label string
    name_description string
    allowed_operations set enum vdi_operations
    current_operations map string enum vdi_operations
    SR ref SR
    VBDs set ref VBD
    crash_dumps set ref crashdump
    virtual_size int
    physical_utilisation int
    type enum vdi_type
    sharable bool
    read_only bool
    other_config map string string
    storage_lock bool
    location string
    managed bool
    missing bool
    parent ref VDI
    xenstore_data map string string
    sm_config map string string
    is_a_snapshot bool
    snapshot_of ref VDI
    snapshots set ref VDI
    snapshot_time datetime
    tags set string
    allow_caching bool
    on_boot enum on_boot
    metadata_of_pool ref pool
    metadata_latest bool
    is_tools_iso bool
    cbt_enabled bool
    """,
    "name_label name_description other_config xenstore_data sm_config tags",
    f"{DM}: module VDI",
)

_add(
    "SR",
    """
    uuid string
    name_label string
    name_description string
    allowed_operations set enum storage_operations
    current_operations map string enum storage_operations
    VDIs set ref VDI
    PBDs set ref PBD
    virtual_allocation int
    physical_utilisation int
    physical_size int
    type string
    content_type string
    shared bool
    other_config map string string
    tags set string
    sm_config map string string
    blobs map string ref blob
    local_cache_enabled bool
    introduced_by ref DR_task
    clustered bool
    is_tools_sr bool
    """,
    "name_label name_description other_config tags sm_config",
    f"{DM}: module SR",
)

_add(
    "PBD",
    """
    uuid string
    host ref host
    SR ref SR
    device_config map string string
    currently_attached bool
    other_config map string string
    """,
    "other_config",
    f"{DM}: module PBD",
)

_add(
    "VIF",
    """
    uuid string
    allowed_operations set enum vif_operations
    current_operations map string enum vif_operations
    device string
    network ref network
    VM ref VM
    MAC string
    MTU int
    other_config map string string
    currently_attached bool
    status_code int
    status_detail string
    runtime_properties map string string
    qos_algorithm_type string
    qos_algorithm_params map string string
    qos_supported_algorithms set string
    metrics ref VIF_metrics
    MAC_autogenerated bool
    locking_mode enum vif_locking_mode
    ipv4_allowed set string
    ipv6_allowed set string
    ipv4_configuration_mode enum vif_ipv4_configuration_mode
    ipv4_addresses set string
    ipv4_gateway string
    ipv6_configuration_mode enum vif_ipv6_configuration_mode
    ipv6_addresses set string
    ipv6_gateway string
    trunks set int
    """,
    "other_config qos_algorithm_type qos_algorithm_params",
    f"{DM}: module VIF",
)

_add(
    "network",
    """
    uuid string
    name_label string
    name_description string
    allowed_operations set enum network_operations
    current_operations map string enum network_operations
    VIFs set ref VIF
    PIFs set ref PIF
    MTU int
    other_config map string string
    bridge string
    managed bool
    blobs map string ref blob
    tags set string
    default_locking_mode enum network_default_locking_mode
    assigned_ips map ref VIF string
    purpose set enum network_purpose
    """,
    "name_label name_description MTU other_config tags",
    f"{DM}: module Network (purpose: ocaml/xapi/xapi_network.ml add_purpose/remove_purpose)",
)

# A subset of PIF's fields (no metrics, bond, tunnel, SR-IOV or PCI): the management PIF
# of each host on the pool network, so that VDI.get_nbd_info finds the hosts' addresses.
_add(
    "PIF",
    """
    uuid string
    device string
    network ref network
    host ref host
    MAC string
    MTU int
    VLAN int
    physical bool
    currently_attached bool
    ip_configuration_mode enum ip_configuration_mode
    IP string
    netmask string
    gateway string
    DNS string
    management bool
    other_config map string string
    disallow_unplug bool
    ipv6_configuration_mode enum ipv6_configuration_mode
    IPv6 set string
    ipv6_gateway string
    primary_address_type enum primary_address_type
    managed bool
    properties map string string
    """,
    "other_config disallow_unplug",
    f"{DM}: module PIF (fields uuid..properties; subset)",
)

_add(
    "task",
    """
    uuid string
    name_label string
    name_description string
    allowed_operations set enum task_allowed_operations
    current_operations map string enum task_allowed_operations
    created datetime
    finished datetime
    status enum task_status_type
    resident_on ref host
    progress float
    type string
    result string
    error_info set string
    other_config map string string
    subtask_of ref task
    subtasks set ref task
    backtrace string
    """,
    "other_config",
    f"{DM}: module Task (task status pending/success/failure/cancelling/cancelled)",
)

# Classes whose objects generate events (gen_events:true in the datamodel); event.from
# reports these, class names lowercased (EVENT: from_inner, event_of ty=lowercase table).
EVENT_CLASSES = [c for c in CLASSES if c != "session"]

# --------------------------------------------------------------------------------------
# Power states and lifecycle rules
# --------------------------------------------------------------------------------------

POWER_STATES = ["Halted", "Paused", "Running", "Suspended"]  # DM: vm_power_state enum

# LIFECYCLE: allowed_power_states (op -> states in which it is allowed), for a VM that is
# not a control domain and not a snapshot (clone/copy also allow Suspended for snapshots).
ALLOWED_POWER_STATES: dict[str, list[str]] = {
    "changing_VCPUs": ["Halted"],
    "changing_static_range": ["Halted"],
    "changing_memory_limits": ["Halted"],
    "make_into_template": ["Halted"],
    "provision": ["Halted"],
    "start": ["Halted"],
    "start_on": ["Halted"],
    "unpause": ["Paused"],
    "resume": ["Suspended"],
    "resume_on": ["Suspended"],
    "clean_reboot": ["Running"],
    "clean_shutdown": ["Running"],
    "changing_VCPUs_live": ["Running"],
    "pause": ["Running"],
    "pool_migrate": ["Running"],
    "snapshot_with_quiesce": ["Running"],
    "suspend": ["Running"],
    "changing_dynamic_range": ["Halted", "Running"],
    "clone": ["Halted"],
    "copy": ["Halted"],
    "destroy": ["Halted", "Suspended"],
    "export": ["Halted", "Suspended"],
    "hard_reboot": ["Paused", "Running"],
    "checkpoint": ["Paused", "Suspended", "Running"],
    "hard_shutdown": ["Paused", "Suspended", "Running"],
    "shutdown": ["Paused", "Suspended", "Running"],
    "revert": ["Halted", "Paused", "Suspended", "Running"],
    "snapshot": ["Halted", "Paused", "Suspended", "Running"],
}

# LIFECYCLE: check_template -- operations a (non-default) template still allows.
TEMPLATE_ALLOWED_OPS = frozenset(
    [
        "changing_dynamic_range",
        "changing_static_range",
        "changing_memory_limits",
        "changing_VCPUs",
        "clone",
        "copy",
        "export",
        "provision",
        "destroy",
    ]
)
# LIFECYCLE: check_snapshot -- operations a snapshot allows.
SNAPSHOT_ALLOWED_OPS = frozenset(["revert", "clone", "copy", "export", "destroy", "hard_shutdown"])

# Operations listed in VM.allowed_operations (LIFECYCLE: allowable_ops minus ignored_ops;
# the subset this simulator implements).
LISTED_VM_OPS = [
    "start", "start_on", "clean_shutdown", "hard_shutdown", "clean_reboot", "hard_reboot",
    "pause", "unpause", "suspend", "resume", "resume_on", "snapshot", "checkpoint",
    "clone", "copy", "provision", "destroy", "pool_migrate", "revert", "export",
    "changing_dynamic_range", "changing_static_range", "make_into_template",
]  # fmt: skip

# LIFECYCLE: check_op_for_feature -- operations a live (Running or Paused) guest must
# support, with the guest-metrics "other" features any one of which (value "1") is enough.
# The check applies only when strict (update_allowed_operations, VM.assert_operation_valid
# via ocaml/xapi/xapi_vm.ml: assert_operation_valid ~strict:true, and
# ocaml/xapi/xapi_vm_helpers.ml: with_vm_operation, whose ?strict defaults to true and which
# message_forwarding.ml uses without ~strict for VM.clean_shutdown and VM.clean_reboot), and
# only without implicit support: implicit_support = not is_live
# (ocaml/xapi/xapi_vm_lifecycle_helpers.ml: is_live = Running || Paused)
# || has_definitely_booted_pv (VM_metrics.current_domain_type in PV_DOMAIN_TYPES)
# || Xapi_pv_driver_version.has_pv_drivers (ocaml/xapi/xapi_pv_driver_version.ml:
# VM_guest_metrics.PV_drivers_version has integer "major" and "minor"). The failure is
# VM_LACKS_FEATURE [vm]. (At the commit read there is no VM_LACKS_FEATURE_SHUTDOWN or
# _SUSPEND code and no check_drivers; VM_MISSING_PV_DRIVERS [vm] is raised only for VBD/VIF
# hotplug, via xapi_pv_driver_version.ml: make_error_opt from xapi_vbd_helpers.ml and
# xapi_vif_helpers.ml, not for VM operations.)
# The suspend-like branch is SUSPEND_FEATURE_OPS below. Not modelled: changing_VCPUs_live
# ("feature-vcpu-hotplug"); see docs/xapisim.md.
GUEST_FEATURE_OPS: dict[str, tuple[str, ...]] = {
    "clean_shutdown": ("feature-shutdown", "feature-poweroff"),
    "clean_reboot": ("feature-shutdown", "feature-reboot"),
}
# LIFECYCLE: check_op_for_feature, first branch (`suspend | `checkpoint | `pool_migrate |
# `migrate_send when is_live; migrate_send is not simulated). Checked before implicit
# support, in this order:
#   1. VM_guest_metrics.other has CANT_SUSPEND_KEY (get_feature, any value) ->
#      VM_NON_SUSPENDABLE [vm; reason] -- whatever `strict`, even with PV boot or PV drivers;
#   2. not implicit_support && strict && other lacks SUSPEND_FEATURE = "1" (has_feature) ->
#      VM_LACKS_FEATURE [vm];
#   3. otherwise allowed.
# strict: update_allowed_operations and VM.assert_operation_valid (true);
# ocaml/xapi/message_forwarding.ml: VM.suspend and VM.checkpoint use with_vm_operation
# without ~strict (true, ocaml/xapi/xapi_vm_helpers.ml: with_vm_operation ?(strict = true));
# VM.pool_migrate passes ~strict:(not force), force = bool_of_string (List.assoc "force"
# options) with any exception -> false (OCaml bool_of_string accepts exactly "true" and
# "false"; see MIGRATE_FORCE_TRUE).
SUSPEND_FEATURE_OPS = frozenset(["suspend", "checkpoint", "pool_migrate"])
SUSPEND_FEATURE = "feature-suspend"
CANT_SUSPEND_KEY = "data-cant-suspend-reason"
# ocaml/xapi/message_forwarding.ml: VM.pool_migrate -- the options value that is a forced
# migration (bool_of_string: only "true" is true; "1", "True", "yes" raise -> false).
MIGRATE_FORCE_KEY = "force"
MIGRATE_FORCE_TRUE = "true"

# What lands in VM_guest_metrics.other (ocaml/xapi/xapi_guest_agent.ml:
# get_initial_guest_metrics): one (x, value) pair per key control/x in the guest's
# xenstore directory (`other all_control`, "catches keys like feature-shutdown
# feature-hibernate feature-reboot feature-sysrq"), plus ("data-ts", v) for data/ts; and
# when data/cant_suspend_reason is set, control/feature-suspend is reported as
# ("data-cant-suspend-reason", reason) instead of ("feature-suspend", ...) (and the reason
# is not reported without control/feature-suspend).
GUEST_CANT_SUSPEND_XS = "data/cant_suspend_reason"
# The control/ keys of a simulated guest that boots an OS (a Linux guest with PV drivers):
# written by the toolstack at domain build (ocaml/xenopsd/xc/domain.ml: make --
# control/platform-feature-multiprocessor-suspend "1",
# control/platform-feature-xs_reset_watches "1", control/has-vendor-device "0"/"1" from
# VM.has_vendor_device) and by the guest kernel's shutdown watcher (Linux
# drivers/xen/manage.c: setup_shutdown_watcher writes control/feature-<cmd> = "1" for
# poweroff, reboot and, with CONFIG_HIBERNATE_CALLBACKS, suspend; outside xen-api, not read
# at a recorded commit). has-vendor-device is filled in per VM.
GUEST_CONTROL_KEYS: dict[str, str] = {
    "platform-feature-multiprocessor-suspend": "1",
    "platform-feature-xs_reset_watches": "1",
    "feature-poweroff": "1",
    "feature-reboot": "1",
    "feature-suspend": "1",
}

# VBD/VIF hot-plug into a running HVM guest (ocaml/xapi/xapi_vbd_helpers.ml and
# xapi_vif_helpers.ml: valid_operations, "HVM guests MAY support plug/unplug IF they have
# PV drivers"): when the VM is Running and Helpers.domain_type (ocaml/xapi/helpers.ml:
# VM_metrics.current_domain_type while Running/Paused/Suspended, VM.domain_type when Halted)
# is hvm, for the ops HOTPLUG_OPS[cls]:
#   no guest metrics -> fallback; can_use_hotplug_<vbd|vif> "yes" -> allowed; "no" ->
#   OPERATION_NOT_ALLOWED [HOTPLUG_REFUSED[cls]]; "unspecified" with PV_drivers_detected ->
#   allowed; else fallback. fallback = xapi_pv_driver_version.ml: make_error_opt:
#   VM_MISSING_PV_DRIVERS [vm] unless has_pv_drivers.
# The first error set for an op wins: for a VBD this comes after VBD_NOT_UNPLUGGABLE and
# the power-state / DEVICE_ALREADY_* checks and before the HVM CD rule ("HVM CDROMs cannot
# be hotplugged/unplugged, only inserted or ejected").
HOTPLUG_OPS: dict[str, frozenset[str]] = {
    "VBD": frozenset(["plug", "unplug", "unplug_force"]),
    "VIF": frozenset(["plug", "unplug"]),
}
HOTPLUG_REFUSED: dict[str, str] = {
    "VBD": "VM states it does not support VBD hotplug.",
    "VIF": "VM states it does not support VIF hotplug.",
}
# LIFECYCLE: has_definitely_booted_pv (`pv | `pv_in_pvh | `pvh -> true); also the domain
# types that boot directly from PV_kernel/PV_bootloader (ocaml/xapi/helpers.ml:
# boot_method_of_vm) rather than through hvmloader.
PV_DOMAIN_TYPES = frozenset(["pv", "pv_in_pvh", "pvh"])

# Power state a lifecycle operation leaves the VM in (ocaml/xapi/xapi_vm.ml).
RESULT_STATE: dict[str, str] = {
    "start": "Running",
    "start_on": "Running",
    "clean_shutdown": "Halted",
    "hard_shutdown": "Halted",
    "shutdown": "Halted",
    "clean_reboot": "Running",
    "hard_reboot": "Running",
    "pause": "Paused",
    "unpause": "Running",
    "suspend": "Suspended",
    "resume": "Running",
    "resume_on": "Running",
}

# --------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------


class MessageSpec(NamedTuple):
    params: list[tuple[str, str]]  # (type, name), session excluded
    result: str  # result type, "void" for none
    op: str | None  # vm_operations checked against ALLOWED_POWER_STATES, if any
    ref: str
    optional: int = 0  # trailing parameters with default values (may be omitted)


_VM = ("ref VM", "vm")
_SELF = ("ref VM", "self")

MESSAGES: dict[str, MessageSpec] = {
    "session.login_with_password": MessageSpec(
        [("string", "uname"), ("string", "pwd"), ("string", "version"),
         ("string", "originator")],
        "ref session", None, f"{DM}: Session.login (login_with_password)", optional=2,
    ),
    "session.logout": MessageSpec([], "void", None, f"{DM}: Session.logout"),
    "session.get_this_host": MessageSpec(
        [("ref session", "self")], "ref host", None, f"{DM}: session field this_host"),
    "session.get_this_user": MessageSpec(
        [("ref session", "self")], "ref user", None, f"{DM}: session field this_user"),
    "session.get_uuid": MessageSpec(
        [("ref session", "self")], "string", None, f"{DM}: session field uuid"),
    "session.get_record": MessageSpec(
        [("ref session", "self")], "session record", None, f"{DM}: session get_record"),
    "VM.start": MessageSpec(
        [_VM, ("bool", "start_paused"), ("bool", "force")], "void", "start",
        f"{DM_VM}: start"),
    "VM.start_on": MessageSpec(
        [_VM, ("ref host", "host"), ("bool", "start_paused"), ("bool", "force")], "void",
        "start_on", f"{DM_VM}: start_on"),
    "VM.clean_shutdown": MessageSpec([_VM], "void", "clean_shutdown",
                                     f"{DM_VM}: cleanShutdown"),
    "VM.hard_shutdown": MessageSpec([_VM], "void", "hard_shutdown",
                                    f"{DM_VM}: hardShutdown"),
    "VM.shutdown": MessageSpec([_VM], "void", "shutdown", f"{DM_VM}: shutdown"),
    "VM.clean_reboot": MessageSpec([_VM], "void", "clean_reboot", f"{DM_VM}: cleanReboot"),
    "VM.hard_reboot": MessageSpec([_VM], "void", "hard_reboot", f"{DM_VM}: hardReboot"),
    "VM.pause": MessageSpec([_VM], "void", "pause", f"{DM_VM}: pause"),
    "VM.unpause": MessageSpec([_VM], "void", "unpause", f"{DM_VM}: unpause"),
    "VM.suspend": MessageSpec([_VM], "void", "suspend", f"{DM_VM}: suspend"),
    "VM.resume": MessageSpec(
        [_VM, ("bool", "start_paused"), ("bool", "force")], "void", "resume",
        f"{DM_VM}: resume"),
    "VM.resume_on": MessageSpec(
        [_VM, ("ref host", "host"), ("bool", "start_paused"), ("bool", "force")], "void",
        "resume_on", f"{DM_VM}: resume_on"),
    "VM.snapshot": MessageSpec(
        [_VM, ("string", "new_name"), ("set ref VDI", "ignore_vdis")], "ref VM", "snapshot",
        f"{DM_VM}: snapshot (ignore_vdis has a default)", optional=1),
    "VM.snapshot_with_quiesce": MessageSpec(
        [_VM, ("string", "new_name")], "ref VM", "snapshot_with_quiesce",
        f"{DM_VM}: snapshot_with_quiesce"),
    "VM.checkpoint": MessageSpec(
        [_VM, ("string", "new_name")], "ref VM", "checkpoint", f"{DM_VM}: checkpoint"),
    "VM.revert": MessageSpec([("ref VM", "snapshot")], "void", "revert",
                             f"{DM_VM}: revert"),
    "VM.clone": MessageSpec([_VM, ("string", "new_name")], "ref VM", "clone",
                            f"{DM_VM}: clone"),
    "VM.copy": MessageSpec(
        [_VM, ("string", "new_name"), ("ref SR", "sr")], "ref VM", "copy", f"{DM_VM}: copy"),
    "VM.provision": MessageSpec([_VM], "void", "provision", f"{DM_VM}: provision"),
    "VM.destroy": MessageSpec([("ref VM", "self")], "void", "destroy",
                              f"{DM_VM}: let t (gen_constructor_destructor)"),
    "VM.pool_migrate": MessageSpec(
        [_VM, ("ref host", "host"), ("map string string", "options")], "void",
        "pool_migrate", f"{DM_VM}: pool_migrate"),
    "VM.set_VCPUs_max": MessageSpec([_SELF, ("int", "value")], "void", "changing_VCPUs",
                                    f"{DM_VM}: set_VCPUs_max"),
    "VM.set_VCPUs_at_startup": MessageSpec(
        [_SELF, ("int", "value")], "void", "changing_VCPUs", f"{DM_VM}: set_VCPUs_at_startup"),
    "VM.set_memory_limits": MessageSpec(
        [_SELF, ("int", "static_min"), ("int", "static_max"), ("int", "dynamic_min"),
         ("int", "dynamic_max")], "void", "changing_memory_limits",
        f"{DM_VM}: set_memory_limits"),
    "VM.set_memory_dynamic_range": MessageSpec(
        [_SELF, ("int", "min"), ("int", "max")], "void", "changing_dynamic_range",
        f"{DM_VM}: set_memory_dynamic_range"),
    "VM.set_memory_static_range": MessageSpec(
        [_SELF, ("int", "min"), ("int", "max")], "void", "changing_static_range",
        f"{DM_VM}: set_memory_static_range"),
    "VM.set_memory": MessageSpec([_SELF, ("int", "value")], "void", "changing_memory_limits",
                                 f"{DM_VM}: set_memory"),
    "VM.create": MessageSpec([("VM record", "args")], "ref VM", None,
                             f"{DM_VM}: let t (gen_constructor_destructor)"),
    "VM.get_guest_metrics": MessageSpec(
        [_SELF], "ref VM_guest_metrics", None, f"{DM_VM}: field guest_metrics"),
    "VM.get_allowed_VBD_devices": MessageSpec(
        [_VM], "set string", None, f"{DM_VM}: get_allowed_VBD_devices"),
    "VM.get_allowed_VIF_devices": MessageSpec(
        [_VM], "set string", None, f"{DM_VM}: get_allowed_VIF_devices"),
    "VM.get_possible_hosts": MessageSpec([_VM], "set ref host", None,
                                         f"{DM_VM}: get_possible_hosts"),
    "VM.assert_operation_valid": MessageSpec(
        [_SELF, ("enum vm_operations", "op")], "void", None,
        f"{DM_VM}: assert_operation_valid"),
    "VBD.create": MessageSpec([("VBD record", "args")], "ref VBD", None, f"{DM}: module VBD"),
    "VBD.destroy": MessageSpec([("ref VBD", "self")], "void", None, f"{DM}: module VBD"),
    "VBD.plug": MessageSpec([("ref VBD", "self")], "void", None, f"{DM}: VBD plug"),
    "VBD.unplug": MessageSpec([("ref VBD", "self")], "void", None, f"{DM}: VBD unplug"),
    "VBD.eject": MessageSpec([("ref VBD", "vbd")], "void", None, f"{DM}: VBD eject"),
    "VBD.insert": MessageSpec([("ref VBD", "vbd"), ("ref VDI", "vdi")], "void", None,
                              f"{DM}: VBD insert"),
    "VDI.create": MessageSpec([("VDI record", "args")], "ref VDI", None, f"{DM}: module VDI"),
    "VDI.destroy": MessageSpec([("ref VDI", "self")], "void", None, f"{DM}: module VDI"),
    "VDI.snapshot": MessageSpec(
        [("ref VDI", "vdi"), ("map string string", "driver_params")], "ref VDI", None,
        f"{DM}: VDI snapshot (driver_params defaults to {{}})", optional=1),
    "VDI.enable_cbt": MessageSpec([("ref VDI", "self")], "void", None,
                                  f"{DM}: VDI enable_cbt; {XAPI_VDI}: change_cbt_status"),
    "VDI.disable_cbt": MessageSpec([("ref VDI", "self")], "void", None,
                                   f"{DM}: VDI disable_cbt (idempotent)"),
    "VDI.data_destroy": MessageSpec([("ref VDI", "self")], "void", None,
                                    f"{DM}: VDI data_destroy; {XAPI_VDI}: _data_destroy"),
    "VDI.get_nbd_info": MessageSpec(
        [("ref VDI", "self")], "set vdi_nbd_server_info record", None,
        f"{DM}: VDI get_nbd_info; {XAPI_VDI}: _get_nbd_info"),
    "network.add_purpose": MessageSpec(
        [("ref network", "self"), ("enum network_purpose", "value")], "void", None,
        f"{DM}: Network add_purpose; ocaml/xapi/xapi_network.ml: add_purpose"),
    "network.remove_purpose": MessageSpec(
        [("ref network", "self"), ("enum network_purpose", "value")], "void", None,
        f"{DM}: Network remove_purpose; ocaml/xapi/xapi_network.ml: remove_purpose"),
    "host.get_server_certificate": MessageSpec(
        [("ref host", "host")], "string", None,
        f"{DM_HOST}: get_server_certificate (the host's TLS certificate, PEM)"),
    "VDI.list_changed_blocks": MessageSpec(
        [("ref VDI", "vdi_from"), ("ref VDI", "vdi_to")], "string", None,
        f"{DM}: VDI list_changed_blocks (a base64 bitmap of 64k blocks)"),
    "VIF.create": MessageSpec([("VIF record", "args")], "ref VIF", None, f"{DM}: module VIF"),
    "VIF.destroy": MessageSpec([("ref VIF", "self")], "void", None, f"{DM}: module VIF"),
    "VIF.plug": MessageSpec([("ref VIF", "self")], "void", None, f"{DM}: VIF plug"),
    "VIF.unplug": MessageSpec([("ref VIF", "self")], "void", None, f"{DM}: VIF unplug"),
    "task.create": MessageSpec([("string", "label"), ("string", "description")], "ref task",
                               None, f"{DM}: Task create (a task for a client's own work,"
                               " e.g. an HTTP transfer's task_id)"),
    "task.cancel": MessageSpec([("ref task", "task")], "void", None, f"{DM}: Task cancel"),
    "task.destroy": MessageSpec([("ref task", "self")], "void", None, f"{DM}: Task destroy"),
    "event.from": MessageSpec(
        [("set string", "classes"), ("string", "token"), ("float", "timeout")],
        "event_from", None, f"{DM}: module Event (from); {EVENT}: from"),
    "event.register": MessageSpec([("set string", "classes")], "void", None,
                                  f"{DM}: Event register"),
    "event.unregister": MessageSpec([("set string", "classes")], "void", None,
                                    f"{DM}: Event unregister"),
    "event.next": MessageSpec([], "set event", None, f"{DM}: Event next"),
    "event.get_current_id": MessageSpec([], "int", None, f"{DM}: Event get_current_id"),
    "event.inject": MessageSpec(
        [("string", "class"), ("string", "ref")], "string", None,
        f"{DM}: Event inject (flags [`Session], no Async); {EVENT}: inject"),
    "host.get_servertime": MessageSpec(
        [("ref host", "host")], "datetime", None, f"{DM_HOST}: get_servertime"),
    "host.get_server_localtime": MessageSpec(
        [("ref host", "host")], "datetime", None, f"{DM_HOST}: get_server_localtime"),
    "host.disable": MessageSpec(
        [("ref host", "host")], "void", None, f"{DM_HOST}: disable (xapi_host.ml disable)"),
    "host.enable": MessageSpec(
        [("ref host", "host")], "void", None, f"{DM_HOST}: enable (xapi_host.ml enable)"),
    "host.declare_dead": MessageSpec(
        [("ref host", "host")], "void", None,
        f"{DM_HOST}: declare_dead (rel_clearwater, _R_POOL_OP; {XAPI_HOST}: declare_dead)"),
    "VM.power_state_reset": MessageSpec(
        [_VM], "void", None,
        f"{DM_VM}: power_state_reset; {XAPI_VM}: power_state_reset; message_forwarding.ml: "
        "not forwarded (\"the whole point is that this can be performed when a host is "
        "down\")"),
    "pool.get_master": MessageSpec([("ref pool", "self")], "ref host", None,
                                   f"{DM_POOL}: field master"),
}  # fmt: skip

# Generic per-class messages (gen_constructor_destructor / field getters and setters,
# ocaml/idl/datamodel_utils.ml): get_all, get_all_records, get_record, get_by_uuid,
# get_by_name_label (classes with name_label), get_<field>, set_<field> (RW fields),
# add_to_/remove_from_<map field>, add_<set field>/remove_<set field> (tags).

# --------------------------------------------------------------------------------------
# Errors (DM_ERR: error Api_errors.<name> [params]); the parameter *values* the simulator
# sends follow where xapi raises them (file given).
# --------------------------------------------------------------------------------------


class ErrorSpec(NamedTuple):
    params: list[str]
    ref: str


ERRORS: dict[str, ErrorSpec] = {
    "INTERNAL_ERROR": ErrorSpec(["message"], f"{DM_ERR}: internal_error"),
    "UUID_INVALID": ErrorSpec(["type", "uuid"], f"{DM_ERR}: uuid_invalid"),
    "MAP_DUPLICATE_KEY": ErrorSpec(["type", "param_name", "uuid", "key"],
                                   f"{DM_ERR}: map_duplicate_key"),
    "MESSAGE_METHOD_UNKNOWN": ErrorSpec(["method"], f"{DM_ERR}: message_method_unknown;"
                                        " ocaml/xapi/server_helpers.ml: unknown_rpc_failure"),
    "MESSAGE_PARAMETER_COUNT_MISMATCH": ErrorSpec(
        ["method", "expected", "received"],
        f"{DM_ERR}: message_parameter_count_mismatch; ocaml/idl/ocaml_backend/gen_server.ml"
        " (counts exclude the session)"),
    "VALUE_NOT_SUPPORTED": ErrorSpec(["field", "value", "reason"],
                                     f"{DM_ERR}: value_not_supported"),
    "INVALID_VALUE": ErrorSpec(["field", "value"], f"{DM_ERR}: invalid_value"),
    "FIELD_TYPE_ERROR": ErrorSpec(["field"], f"{DM_ERR}: field_type_error"),
    "OPERATION_NOT_ALLOWED": ErrorSpec(["reason"], f"{DM_ERR}: operation_not_allowed"),
    "HANDLE_INVALID": ErrorSpec(["class", "handle"], f"{DM_ERR}: handle_invalid"),
    "MEMORY_CONSTRAINT_VIOLATION_ORDER": ErrorSpec(
        [], f"{DM_ERR}: memory_constraint_violation_order;"
        " ocaml/xapi/xapi_vm_memory_constraints.ml: assert_valid"),
    "MEMORY_CONSTRAINT_VIOLATION": ErrorSpec(["constraint"],
                                             f"{DM_ERR}: memory_constraint_violation"),
    "SESSION_AUTHENTICATION_FAILED": ErrorSpec(
        ["uname", "msg"], f"{DM_ERR}: session_authentication_failed (declared []);"
        " ocaml/xapi/xapi_session.ml raises [uname; msg]"),
    "SESSION_INVALID": ErrorSpec(["handle"], f"{DM_ERR}: session_invalid"),
    "VM_BAD_POWER_STATE": ErrorSpec(
        ["vm", "expected", "actual"],
        f"{DM_ERR}: vm_bad_power_state; {LIFECYCLE}: report_power_state_error"
        " (lowercase, expected joined with ', ')"),
    "VM_IS_TEMPLATE": ErrorSpec(
        ["vm", "operation"], f"{DM_ERR}: vm_is_template (declared [vm]);"
        f" {LIFECYCLE}: check_template raises [ref; op]"),
    "VM_IS_SNAPSHOT": ErrorSpec(["vm", "operation"], f"{LIFECYCLE}: check_snapshot"),
    "ONLY_PROVISION_TEMPLATE": ErrorSpec([], f"{DM_ERR}: only_provision_template"),
    "ONLY_REVERT_SNAPSHOT": ErrorSpec([], f"{LIFECYCLE}: check_operation_error"),
    "VM_CANNOT_DELETE_DEFAULT_TEMPLATE": ErrorSpec(
        ["vm"], f"{DM_ERR}: vm_cannot_delete_default_template"),
    "OTHER_OPERATION_IN_PROGRESS": ErrorSpec(
        ["class", "object", "operation_type", "operation_ref"],
        f"{DM_ERR}: other_operation_in_progress"),
    "HOST_NOT_ENOUGH_FREE_MEMORY": ErrorSpec(["needed", "available"],
                                             f"{DM_ERR}: host_not_enough_free_memory"),
    "VM_NO_VCPUS": ErrorSpec(["vm"], f"{DM_ERR}: vm_no_vcpus"),
    "DEVICE_ALREADY_ATTACHED": ErrorSpec(["device"], f"{DM_ERR}: device_already_attached"),
    "DEVICE_ALREADY_DETACHED": ErrorSpec(["device"], f"{DM_ERR}: device_already_detached"),
    "DEVICE_ALREADY_EXISTS": ErrorSpec(["device"], f"{DM_ERR}: device_already_exists"),
    "VDI_IN_USE": ErrorSpec(["vdi", "operation"], f"{DM_ERR}: vdi_in_use"),
    "SR_FULL": ErrorSpec(["requested", "maximum"], f"{DM_ERR}: sr_full"),
    "VM_MIGRATE_FAILED": ErrorSpec(["vm", "source", "destination", "msg"],
                                   f"{DM_ERR}: vm_migrate_failed"),
    "HOST_OFFLINE": ErrorSpec(["host"], f"{DM_ERR}: host_offline"),
    "HOST_IS_LIVE": ErrorSpec(["host"], f"{DM_ERR}: host_is_live; raised by {XAPI_HOST}: "
                              f"precheck_destroy_declare_dead and {XAPI_VM}: power_state_reset"),
    "DOMAIN_EXISTS": ErrorSpec(["vm"], f"{DM_ERR}: domain_exists; {XAPI_VM}: power_state_reset"
                               " "
                               "(resident on the master and xenopsd reports it running)"),
    "CANNOT_RESET_CONTROL_DOMAIN": ErrorSpec(
        ["vm"], f"{DM_ERR}: cannot_reset_control_domain; {XAPI_VM}: power_state_reset"
        " (CA-31428)"),
    "HOST_DISABLED": ErrorSpec(["host"], f"{DM_ERR}: host_disabled"),
    "TASK_CANCELLED": ErrorSpec(["task"], f"{DM_ERR}: task_cancelled"),
    "EVENTS_LOST": ErrorSpec([], f"{DM_ERR}: events_lost"),
    "EVENT_SUBSCRIPTION_PARSE_FAILURE": ErrorSpec(
        ["subscription"], f"{DM_ERR}: event_subscription_parse_failure"),
    "EVENT_FROM_TOKEN_PARSE_FAILURE": ErrorSpec(["token"],
                                                f"{DM_ERR}: event_from_token_parse_failure"),
    "SESSION_NOT_REGISTERED": ErrorSpec(["handle"], f"{DM_ERR}: session_not_registered"),
    "OPERATION_BLOCKED": ErrorSpec(["ref", "code"], f"{DM_ERR}: operation_blocked"),
    "VBD_NOT_REMOVABLE_MEDIA": ErrorSpec(["vbd"], f"{DM_ERR}: vbd_not_removable_media"),
    "VBD_NOT_UNPLUGGABLE": ErrorSpec(["vbd"], f"{DM_ERR}: vbd_not_unpluggable"),
    "VBD_NOT_EMPTY": ErrorSpec(["vbd"], f"{DM_ERR}: vbd_not_empty"),
    "VBD_IS_EMPTY": ErrorSpec(["vbd"], f"{DM_ERR}: vbd_is_empty"),
    "VM_REVERT_FAILED": ErrorSpec(["vm", "snapshot"], f"{DM_ERR}: vm_revert_failed"),
    "XMLRPC_UNMARSHAL_FAILURE": ErrorSpec(
        ["expected", "received"], f"{DM_ERR}: xmlrpc_unmarshal_failure"
    ),
    "VM_HAS_NO_SUSPEND_VDI": ErrorSpec(["vm"], f"{DM_ERR}: vm_has_no_suspend_vdi"),
    "VM_LACKS_FEATURE": ErrorSpec(
        ["vm"], f"{DM_ERR}: vm_lacks_feature; ocaml/xapi-consts/api_errors.ml:"
        f' vm_lacks_feature = "VM_LACKS_FEATURE"; {LIFECYCLE}: check_op_for_feature'
        " raises [ref]"),
    "VM_NON_SUSPENDABLE": ErrorSpec(
        ["vm", "reason"], f"{DM_ERR}: vm_non_suspendable; ocaml/xapi-consts/api_errors.ml:"
        f' vm_non_suspendable = "VM_NON_SUSPENDABLE"; {LIFECYCLE}: check_op_for_feature'
        " raises [ref; reason] (reason = guest metrics other:data-cant-suspend-reason)"),
    "VDI_INCOMPATIBLE_TYPE": ErrorSpec(["vdi", "type"], f"{DM_ERR}: vdi_incompatible_type;"
                                       f" {XAPI_VDI}: check_operation_error (cbt_metadata)"),
    "NETWORK_INCOMPATIBLE_PURPOSES": ErrorSpec(
        ["new_purpose", "conflicting_purpose"], f"{DM_ERR}: network_incompatible_purposes;"
        " ocaml/xapi/xapi_network.ml: assert_can_add_purpose"),
    "VDI_NO_CBT_METADATA": ErrorSpec(["vdi"], f"{DM_ERR}: vdi_no_cbt_metadata;"
                                     f" {XAPI_VDI}: check_operation_error (data_destroy)"),
    "VDI_CBT_ENABLED": ErrorSpec(["vdi"], f"{DM_ERR}: vdi_cbt_enabled (mirror, set_on_boot:"
                                 " not simulated)"),
    "VDI_IS_SHARABLE": ErrorSpec(["vdi"], f"{DM_ERR}: vdi_is_sharable;"
                                 f" {XAPI_VDI}: check_operation_error (snapshot)"),
    "VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION": ErrorSpec(
        [], f"{DM_ERR}: vdi_on_boot_mode_incompatible_with_operation"),
    "VDI_IO_ERROR": ErrorSpec(["reason"], f"{DM_ERR}: vdi_io_error;"
                              " ocaml/xapi/vhd_tool_wrapper.ml: run_vhd_tool"),
    "VDI_TOO_LARGE": ErrorSpec(["vdi", "maximum size"], f"{DM_ERR}: vdi_too_large;"
                               " ocaml/xapi/export_raw_vdi.ml (vhd past max_vhd_size)"),
    "VDI_MISSING": ErrorSpec(["sr", "vdi"], f"{DM_ERR}: vdi_missing;"
                             " ocaml/xapi/import_raw_vdi.ml: import (neither vdi nor sr)"),
    "SR_BACKEND_FAILURE_460": ErrorSpec(
        ["status", "stdout", "stderr"],
        f"{DM_ERR}: sr_backend_failure; xapi-project/sm drivers/VDI.py:"
        " list_changed_blocks raises XenError('CBTChangedBlocksError', opterr) (errno 460);"
        " ocaml/xapi/sm_exec.ml: an SM XMLRPC.Fault (code, reason) becomes"
        " SR_BACKEND_FAILURE_<code> [\"\"; reason; stderr] (stderr empty here)"),
    "VM_MISSING_PV_DRIVERS": ErrorSpec(
        ["vm"], f"{DM_ERR}: vm_missing_pv_drivers; ocaml/xapi-consts/api_errors.ml:"
        ' vm_missing_pv_drivers = "VM_MISSING_PV_DRIVERS";'
        " ocaml/xapi/xapi_pv_driver_version.ml: make_error_opt raises [vm]"),
}  # fmt: skip

#: xapi-project/sm drivers/XE_SR_ERRORCODES.xml: CBTChangedBlocksError's description
#: (value 460), then " [opterr=%s]" (drivers/xs_errors.py: XenError); the opterr and "]"
#: are appended where raised.
CBT_ERROR = "Failed to calculate changed blocks for given VDIs. [opterr="
CBT_SAME = "Source and target VDI are same"  # sm drivers/VDI.py: list_changed_blocks
CBT_UNRELATED = "Source and target VDI are unrelated"  # ditto, no chain from -> to
#: ocaml/xapi/xapi_vdi.ml: data_destroy = _data_destroy ~timeout:4 (seconds to wait for the
#: VDI's VBDs to be destroyed before VDI_IN_USE).
DATA_DESTROY_WAIT = 4.0

# --------------------------------------------------------------------------------------
# The HTTP data path (ocaml/xapi/export_raw_vdi.ml, import_raw_vdi.ml, importexport.ml,
# xapi_http.ml, ocaml/libs/http-lib/http.ml, http_svr.ml)
# --------------------------------------------------------------------------------------

EXPORT_RAW_VDI = "/export_raw_vdi"  # ocaml/xapi-consts/constants.ml: export_raw_vdi_uri (GET)
IMPORT_RAW_VDI = "/import_raw_vdi"  # constants.ml: import_raw_vdi_uri (PUT)
#: importexport.ml: Format.of_string (case-insensitive; "raw" when absent) and
#: Format.content_type; tar and qcow2 are not simulated.
DISK_FORMATS: dict[str, str] = {"raw": "application/octet-stream", "vhd": "application/vhd"}
#: export_raw_vdi.ml: localhost_handler -- http_200_ok ~keep_alive:false, then these
#: three lines exactly as written ("task-id:" and "content-type:" without a space).
EXPORT_HEADERS = [
    "HTTP/1.1 200 OK",
    "Connection: close",
    "Cache-Control: no-cache, no-store",
    "task-id:{task}",
    "content-type:{content_type}",
    'content-disposition: attachment; filename="{filename}"',
]
#: import_raw_vdi.ml: localhost_handler -- http_200_ok ~keep_alive:false, task-id, and
#: importexport.ml: content_type ("content-type: application/octet-stream"), sent before
#: the body is read.
IMPORT_HEADERS = [
    "HTTP/1.1 200 OK",
    "Connection: close",
    "Cache-Control: no-cache, no-store",
    "task-id:{task}",
    "content-type: application/octet-stream",
]
#: http.ml: http_404_missing / http_400_badrequest (version "1.0" where the handler asks).
HTTP_404 = ["HTTP/1.0 404 Not Found", "Connection: close", "Cache-Control: no-cache, no-store"]
HTTP_400 = ["HTTP/1.1 400 Bad Request", "Connection: close", "Cache-Control: no-cache, no-store"]
#: http_svr.ml: response_unauthorised (realm: the handler's, e.g. "VDI.export_raw").
HTTP_401_BODY = (
    "<html><body><h1>HTTP 401 unauthorised</h1>Please check your credentials and retry."
    "</body></html>"
)

API_VERSION = (2, 21)  # host.API_version_major/minor reported (a recent xapi)

# --------------------------------------------------------------------------------------
# Host facts and field defaults
# --------------------------------------------------------------------------------------

XAPI_GLOBS = "ocaml/xapi/xapi_globs.ml"
CREATE_MISC = "ocaml/xapi/create_misc.ml"

# host.software_version, key by key in the order xapi builds the list
# (CREATE_MISC: make_software_version = Xapi_globs.software_version () @ v6d's version @
# [xapi_build; xen; linux; xencenter_min; xencenter_max; network_backend; db_schema]
# @ oem/livepatch/pack entries, none of which a plain host has). The values are those of
# an XCP-ng 8.3 host running the xapi of the recorded commit (tag v26.17.0).
SOFTWARE_VERSION: dict[str, str] = {
    # XAPI_GLOBS: software_version () -- empty values are filtered out; the product_*
    # and platform_* values are the host's /etc/xensource-inventory lines, read by
    # ocaml/util/xapi_version.ml (PRODUCT_VERSION, PRODUCT_VERSION_TEXT,
    # PRODUCT_VERSION_TEXT_SHORT, PLATFORM_NAME, PLATFORM_VERSION, PRODUCT_BRAND,
    # BUILD_NUMBER).
    "product_version": "8.3.0",
    "product_version_text": "8.3",
    "product_version_text_short": "8.3",
    "platform_name": "XCP",
    "platform_version": "3.4.0",
    "product_brand": "XCP-ng",
    # xapi_version.ml: "%d.%d" xapi_version_major xapi_version_minor, parsed from the
    # dune build-info version "26.17.0" (parse_xapi_version "%d.%d.%s").
    "xapi": "26.17",
    "build_number": "cloud",
    # xapi_version.ml: git_id = the "%s" rest of parse_xapi_version ("26.17.0" -> "0").
    "git_id": "0",
    # xapi_version.ml: let hostname = "localhost" (a constant, not the host's name).
    "hostname": "localhost",
    # xapi_version.ml: date = Xapi_build_info.date, generated by ocaml/util/dune as
    # $(date +%Y%m%dT%H:%M:%SZ) at build time.
    "date": "20260821T02:00:23Z",
    # CREATE_MISC: V6_client.get_version (the licensing daemon's list; key
    # Xapi_globs._dbv = "dbv"; the value is the daemon's, outside xen-api).
    "dbv": "0.0.1",
    # CREATE_MISC: make_software_version -- ("xapi_build", Xapi_version.version)
    "xapi_build": "26.17.0",
    # CREATE_MISC: host_info.xen_verstring (xenopsd's Xen version) and
    # host_info.linux_verstring (dom0's kernel release, uname -r).
    "xen": "4.17.5-15",
    "linux": "4.19.0+1",
    # XAPI_GLOBS: xencenter_min_verstring / xencenter_max_verstring = "%Ld.%Ld"
    # Datamodel.api_version_major api_version_minor (the API version reported, 2.21).
    "xencenter_min": "2.21",
    "xencenter_max": "2.21",
    # CREATE_MISC: Network_interface.string_of_kind (Net.Bridge.get_kind ()):
    # "openvswitch" | "bridge" (ocaml/xapi-idl/network/network_interface.ml).
    "network_backend": "openvswitch",
    # CREATE_MISC: (Xapi_globs._db_schema = "db_schema", "%d.%d" schema_major_vsn
    # schema_minor_vsn) -- ocaml/idl/datamodel_common.ml: 5 and 909.
    "db_schema": "5.909",
}

# Field values a new object gets that differ from the type's zero value
# (Database.new applies them before the creator's own values).
FIELD_DEFAULTS: dict[str, dict[str, str]] = {
    # VDI.metadata_of_pool is "" (not "OpaqueRef:NULL") for every VDI an SR scan or
    # VDI.create records: ocaml/xapi/xapi_sr.ml: update_vdis creates the row with
    # ~metadata_of_pool:(Ref.of_string vdi.metadata_of_pool), and the SM's vdi_info
    # leaves it at its default, ocaml/xapi-idl/storage/storage_interface.ml: vdi_info
    # metadata_of_pool: string [@default ""]; Xapi_vdi.create goes through update_vdi_db
    # -> Xapi_sr.update_vdis. Only metadata VDIs of a pool (DR) name a pool there.
    "VDI": {"metadata_of_pool": ""},
}
# Ref fields that may hold "" on the wire (Ref.of_string "" of the above), besides
# "OpaqueRef:NULL".
EMPTY_REF_FIELDS = frozenset([("VDI", "metadata_of_pool")])

# --------------------------------------------------------------------------------------
# Wire protocol: the bytes (mirage/ocaml-rpc src/lib/xmlrpc.ml and jsonrpc.ml, as read at
# commit 6fe5b650928de1c196002f103c7c657f8af998e9, 2026-04-04; xapi's use of them in
# ocaml/xapi/api_server.ml)
# --------------------------------------------------------------------------------------

RPC_XML = "mirage/ocaml-rpc src/lib/xmlrpc.ml"
RPC_JSON = "mirage/ocaml-rpc src/lib/jsonrpc.ml"
API_SERVER = "ocaml/xapi/api_server.ml"

# Rpc.t value -> its XML-RPC form (RPC_XML: add_value, with strict=false as xapi calls
# Xmlrpc.string_of_response / Xmlrpc.to_string). No whitespace anywhere. TEXT is the
# value with > < & " as entities and bytes outside 0x20..0xff other than \t \n \r dropped
# (encode_buf). API types map to Rpc.t as: string/ref/enum/uuid -> String, int -> Int
# (int64, ppx_deriving_rpc's rpc_of_int64), float -> Float, bool -> Bool, datetime ->
# DateTime (ocaml/libs/clock/date.ml: to_rfc3339, "%04i%02i%02iT%02i:%02i:%02i" + "Z"),
# set -> Enum, map -> Dict; event.from's valid_ref_counts -> Int32
# (ocaml/xapi-types/event_types.ml: rpc_of_event_from).
WIRE_FORMS: dict[str, str] = {
    "String": "<value>TEXT</value>",
    "String (empty)": "<value></value>",
    "Int": "<value>DECIMAL</value>",
    "Int32": "<value><i4>DECIMAL</i4></value>",
    "Bool": "<value><boolean>1|0</boolean></value>",
    "Float": "<value><double>%.16g</double></value>",
    "DateTime": "<value><dateTime.iso8601>20260101T12:00:00Z</dateTime.iso8601></value>",
    "Enum": "<value><array><data>VALUE...</data></array></value>",
    "Dict": "<value><struct><member><name>NAME</name>VALUE</member>...</struct></value>",
    "Null": "<value><nil/></value>",
}
# RPC_XML: add_response -- the reply around the value (no newline after the declaration).
XML_RESPONSE_HEAD = '<?xml version="1.0"?><methodResponse><params><param>'
XML_RESPONSE_TAIL = "</param></params></methodResponse>"
# API_SERVER: callback -- system.listMethods is answered with the bare value
# (Xmlrpc.to_string response.contents, no Status/Value struct); every other call with
# {Status: "Success", Value} or {Status: "Failure", ErrorDescription} in that order.

# HTTP framing of an RPC reply: ocaml/libs/http-lib/http_svr.ml: response_of_request
# (connection keep-alive or close as the request asked, cache-control) and
# http.ml: Response.to_header_list (status line, content-length first), then the
# handler's headers (API_SERVER: callback / jsoncallback). Header names as xapi writes
# them (ocaml/libs/http-lib/http.ml: module Hdr is lower case).
RPC_REPLY_HEADERS: list[tuple[str, str]] = [
    ("connection", "keep-alive"),
    ("cache-control", "no-cache, no-store"),
    ("content-type", "text/xml"),  # "application/json" for /jsonrpc
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Headers", "X-Requested-With"),
]
# OPTIONS (CORS preflight) on any path: http_svr.ml: respond_to_options -- 200, no body,
# Access-Control-Allow-Origin "*", Access-Control-Allow-Headers the request's
# Access-Control-Request-Headers + ", X-Requested-With", Access-Control-Allow-Methods "PUT".
# http_svr.ml: response_internal_error / response_error_html -- what a request that
# cannot be parsed (xmlrpc.ml Parse_error, jsonrpc.ml Malformed_method_request) gets.
HTTP_500_HEAD = "HTTP/1.1 500 Internal Error"
HTTP_500_BODY = (
    "<html><body><h1>HTTP 500 internal server error</h1>An unexpected error occurred;"
    " please wait a while and try again. If the problem persists, please contact your"
    " support representative.<h1> Additional information </h1>{extra}</body></html>"
)

# JSON-RPC at JSONRPC_PATH (ocaml/xapi-consts/constants.ml: jsonrpc_uri; API_SERVER:
# jsoncallback). Requests (RPC_JSON: version_id_and_call_of_string): "jsonrpc" absent ->
# 1.0, "2.0" -> 2.0, anything else malformed; "method" a string; "params" an array
# (required in 1.0; in 2.0 absent or null is [] and an object is one parameter); "id" an
# integer or string, never absent or null (xapi takes no notifications). Replies
# (RPC_JSON: json_of_response, Yojson.Safe.to_string -- compact, no spaces):
#   1.0 {"result": VALUE, "error": null, "id": ID} / {"result": null, "error": [CODE,
#       *PARAMS], "id": ID}
#   2.0 {"jsonrpc": "2.0", "result": VALUE, "id": ID} / {"jsonrpc": "2.0", "error":
#       {"code": 1, "message": CODE, "data": [PARAMS]}, "id": ID}
# (API_SERVER: callback1 turns a v2.0 failure's [CODE; *PARAMS] into the error object with
# api_server_common.ml: error_code_lit = 1 -- except for system.listMethods.) Int is a
# JSON number (RPC_JSON: rpc_to_json Int -> `Intlit), DateTime a string, Float a number.
JSONRPC_PATH = "/jsonrpc"
JSONRPC_ERROR_CODE = 1


# --------------------------------------------------------------------------------------
# Failed hosts (xapisim's failed-host mode: ``xapisim.fail_host``, a simulator control)
# --------------------------------------------------------------------------------------
# A pool member that stops answering is marked not live by the master: host_metrics.live
# false (ocaml/xapi/db_gc.ml: check_host_liveness, after the heartbeat timeout). xapi keeps
# its VMs' records as they were (power_state Running, resident_on the dead host) until
# VM.power_state_reset or host.declare_dead.
# is_host_alive (ocaml/xapi/xapi_host.ml): host_metrics.live false is "treated as
# definitive" (dead); live true -> the master asks the host (Pool.is_slave), and a
# failure to answer means dead.
# The simulator's failed host is live=false and does not answer, so both agree.
FAILED_HOST_REF = f"{XAPI_HOST}: is_host_alive; ocaml/xapi/db_gc.ml: check_host_liveness"
# Forwarded operations (message_forwarding.ml: do_op_on -> check_live) on a VM resident
# on a host that is not live, or a start/resume/pool_migrate to it: HOST_OFFLINE [host].
HOST_OFFLINE_REF = "ocaml/xapi/message_forwarding.ml: do_op_on / check_live"
# host.declare_dead (ocaml/xapi/xapi_host.ml: declare_dead):
#   precheck_destroy_declare_dead: is_host_alive -> HOST_IS_LIVE [host]; the master itself
#   -> HOST_IS_LIVE [host];
#   then VM.power_state_reset on each regular VM resident_on the host (get_resident_vms:
#   control domains excluded); then Host.set_enabled false.
DECLARE_DEAD_REF = f"{XAPI_HOST}: declare_dead, precheck_destroy_declare_dead, get_resident_vms"
# VM.power_state_reset (ocaml/xapi/xapi_vm.ml: power_state_reset):
#   is_control_domain -> CANNOT_RESET_CONTROL_DOMAIN [vm];
#   is_live (Running or Paused): resident_on the master (localhost) and xenopsd reports
#   it running -> DOMAIN_EXISTS [vm]; resident_on another host that is_host_alive ->
#   HOST_IS_LIVE [resident_on];
#   then Xapi_vm_lifecycle.force_state_reset ~value:`Halted (any state, Suspended too:
#   current_operations cleared, devices marked detached, resident_on null, domid -1,
#   power_state Halted; the suspend_VDI field is left as it was).
POWER_STATE_RESET_REF = f"{XAPI_VM}: power_state_reset; {LIFECYCLE}: force_state_reset"

# --------------------------------------------------------------------------------------
# NBD: network purposes, VDI.get_nbd_info and the xapi-nbd server
# --------------------------------------------------------------------------------------

XAPI_NETWORK = "ocaml/xapi/xapi_network.ml"
#: xapi-project/xapi-nbd src/main.ml (the NBD server of a XenServer host) and the ocaml-nbd
#: library it serves with, xapi-project/nbd lib/server.ml and lib/protocol.ml.
XAPI_NBD = "xapi-project/xapi-nbd src/main.ml"
OCAML_NBD = "xapi-project/nbd lib/server.ml"
NETWORK_REF = f"{XAPI_NETWORK}: assert_can_add_purpose, add_purpose (prepends), remove_purpose"
#: datamodel.ml: network_purpose enum. add_purpose refuses a purpose whose opposite is on
#: any network of the pool (NETWORK_INCOMPATIBLE_PURPOSES [new, conflicting]); adding a
#: purpose the network has, or removing one it has not, is a no-op.
NETWORK_PURPOSES = ("nbd", "insecure_nbd")
PURPOSE_CONFLICTS = {"nbd": "insecure_nbd", "insecure_nbd": "nbd"}
#: xapi_vdi.ml: _get_nbd_info -- VDI_INCOMPATIBLE_TYPE for cbt_metadata; one record per
#: (host with a currently attached PBD of the VDI's SR) x (IP of an attached PIF of that
#: host on a network whose purpose has nbd or insecure_nbd); exportname
#: "/<vdi uuid>?session_id=<the caller's session ref>"; port 10809; cert the host's
#: server certificate (PEM); subject its first non-wildcard DNS name.
NBD_EXPORTNAME = "/{uuid}?session_id={session}"
NBD_PORT = 10809  # xapi_vdi.ml (port = 10809L); xapi-nbd lib/consts.ml standard_nbd_port
NBD_INFO_FIELDS = ("exportname", "address", "port", "cert", "subject")  # DM vdi_nbd_server_info
#: xapi-nbd main.ml: xapi_says_use_tls -- per connection, from all networks' purposes:
#: nbd -> FORCEDTLS, insecure_nbd -> NOTLS, both or neither -> the connection is refused
#: (closed before the greeting). consts.ml: connection_limit = 16 (more are closed).
NBD_CONNECTION_LIMIT = 16
#: xapi-nbd main.ml: serve ... ~read_only:true (the VDI is plugged into dom0 read-only:
#: Cleanup.VBD.with_vbd ~mode:`RO); a session is checked once, with Session.get_uuid.
NBD_READ_ONLY = True
#: ocaml-nbd protocol.ml / server.ml: the greeting "NBDMAGIC" + IHAVEOPT + global flags
#: (Fixed_newstyle only: no NO_ZEROES); the options it knows (others: ERR_UNSUP), the
#: option reply codes; export info = size (u64) + transmission flags (u16: HAS_FLAGS |
#: READ_ONLY) + 124 zero bytes; simple replies only; READ and WRITE need 512-byte
#: aligned offset and length (EINVAL); WRITE on a read-only export EPERM (its payload is
#: not read); any other command but DISC EINVAL.
NBD_GLOBAL_FLAGS = 1
NBD_OPT_EXPORT_NAME, NBD_OPT_ABORT, NBD_OPT_LIST, NBD_OPT_STARTTLS = 1, 2, 3, 5
NBD_REP_ACK = 1
NBD_REP_ERR_UNSUP, NBD_REP_ERR_POLICY = 0x80000001, 0x80000002
NBD_REP_ERR_INVALID, NBD_REP_ERR_TLS_REQD = 0x80000003, 0x80000005
NBD_FLAG_HAS_FLAGS, NBD_FLAG_READ_ONLY = 1, 2
NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_DISC = 0, 1, 2
NBD_EPERM, NBD_EIO, NBD_EINVAL = 1, 5, 22
NBD_SECTOR = 512
