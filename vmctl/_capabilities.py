"""What a driver can do: one flag per request that a backend may or may not have.

A driver declares the set it supports; the core raises NotSupported naming the capability
before it calls the driver for anything else. The conformance kit checks both directions.
"""

from __future__ import annotations

import enum


class Capability(enum.StrEnum):
    """One optional feature of a backend. The value is the stable name used in reports."""

    # lifecycle
    CREATE = "create"
    DELETE = "delete"
    START = "start"
    SHUTDOWN = "shutdown"  # graceful, the guest is asked
    POWER_OFF = "power_off"  # forced
    REBOOT = "reboot"  # graceful
    RESET = "reset"  # forced
    PAUSE = "pause"  # in memory; resume with resume()
    SUSPEND = "suspend"  # to disk; resume with resume()
    # reconfiguration
    SET_VCPUS = "set_vcpus"  # while stopped
    SET_MEMORY = "set_memory"  # while stopped
    HOT_VCPUS = "hot_vcpus"  # while running
    HOT_MEMORY = "hot_memory"  # while running
    CPU_SHARES = "cpu_shares"
    CPU_RESERVATION = "cpu_reservation"
    CPU_LIMIT = "cpu_limit"
    MEMORY_SHARES = "memory_shares"
    MEMORY_RESERVATION = "memory_reservation"
    MEMORY_LIMIT = "memory_limit"
    # devices
    ADD_DISK = "add_disk"
    REMOVE_DISK = "remove_disk"
    ADD_NIC = "add_nic"
    REMOVE_NIC = "remove_nic"
    HOTPLUG_DISK = "hotplug_disk"  # add/remove disks while running
    HOTPLUG_NIC = "hotplug_nic"  # add/remove NICs while running
    # data protection and placement
    SNAPSHOT = "snapshot"
    SNAPSHOT_MEMORY = "snapshot_memory"
    CLONE = "clone"
    LINKED_CLONE = "linked_clone"
    MIGRATE_LIVE = "migrate_live"
    MIGRATE_COLD = "migrate_cold"
    BACKUP = "backup"  # read the disks at one point in time (vm.backup)
    BACKUP_INCREMENTAL = "backup_incremental"  # list the extents changed since a checkpoint
    BACKUP_QUIESCE = "backup_quiesce"  # the guest's file systems frozen for the point in time
    RESTORE = "restore"  # write extents into the disks of a new or stopped VM
    # observation
    EVENTS = "events"
    STATS = "stats"
    GUEST_INFO = "guest_info"


#: The capabilities every driver must have: without them there is nothing to manage.
REQUIRED_CAPABILITIES = frozenset(
    {Capability.CREATE, Capability.DELETE, Capability.START, Capability.POWER_OFF}
)

RESOURCE_CAPABILITIES = {
    "cpu_shares": Capability.CPU_SHARES,
    "cpu_reservation_percent": Capability.CPU_RESERVATION,
    "cpu_limit_percent": Capability.CPU_LIMIT,
    "memory_shares": Capability.MEMORY_SHARES,
    "memory_reservation_mib": Capability.MEMORY_RESERVATION,
    "memory_limit_mib": Capability.MEMORY_LIMIT,
}
