"""The target's VMSpec from the source's neutral configuration, and the mapping report.

The spec is built by the restore's ``spec_from_config`` (vCPUs, memory, guest OS,
description, disks at least as large, the resource controls the target has, NICs with new
MACs); on top of it: the network map, the storage pool, and, between drivers of different
vendors, the NIC model and disk bus left to the target (a vendor's device name means
nothing to another). What changed is written down as ``MappingNote``s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .._capabilities import RESOURCE_CAPABILITIES
from .._diskaccess import PointInTimeDisk
from .._model import DiskBus, Firmware, VMConfig, VMSpec, to_dict
from ..backup._restore import spec_from_config
from ._model import MappingKind, MappingNote

K = MappingKind

#: What a guest may need when it arrives on a target of this driver (by driver name).
_TARGET_NEEDS = {
    "kvm": "virtio drivers for the disk and NIC (built into Linux; virtio-win for Windows); "
    "qemu-guest-agent for quiesce and guest info",
    "xen": "Xen PV drivers (built into Linux; the XenServer VM Tools for Windows) and "
    "xe-guest-utilities for guest metrics",
    "esx": "drivers for the VMware devices (pvscsi, vmxnet3: in Linux; VMware Tools for "
    "Windows) and VMware Tools (open-vm-tools) for shutdown, quiesce and guest info",
    "hyperv": "the Hyper-V integration services (hv_vmbus, hv_storvsc, hv_netvsc: built into "
    "Linux and Windows)",
}
_SOURCE_LEFTOVERS = {
    "esx": "VMware Tools can be removed (they do nothing off VMware)",
    "xen": "the Xen guest tools can be removed",
    "hyperv": "the Hyper-V integration services can stay (inert elsewhere)",
    "kvm": "qemu-guest-agent can stay (inert without a virtio-serial channel)",
}


def check_network_map(config: VMConfig, network_map: Mapping[str, str] | None) -> dict[str, str]:
    """The map as a dict; each key must be a network a NIC of the VM is on (a typo is
    caught before anything is touched)."""
    from .._errors import ValidationError
    from .._validate import check_name

    if network_map is None:
        return {}
    if not isinstance(network_map, Mapping):
        raise ValidationError(
            "give a mapping {source network: target network}", field="network_map"
        )
    on = {n.network for n in config.nics}
    out: dict[str, str] = {}
    for src, dst in network_map.items():
        if not isinstance(src, str) or not isinstance(dst, str):
            raise ValidationError("names of networks must be strings", field="network_map")
        check_name(dst, "network")
        if src not in on:
            raise ValidationError(
                f"VM {config.name!r} has no NIC on network {src!r} "
                f"(its networks: {', '.join(sorted(on)) or 'none'})",
                field="network_map",
            )
        out[src] = dst
    return out


def target_spec(
    config: VMConfig,
    disks: Sequence[PointInTimeDisk],
    *,
    name: str,
    pool: str | None,
    target_caps: frozenset[Any],
    networks: Mapping[str, str],
    cross_vendor: bool,
    keep_macs: bool = False,
    firmwares: frozenset[Firmware] | None = None,
) -> VMSpec:
    spec = spec_from_config(
        to_dict(config), disks, name, pool, target_caps, f"move of {config.name!r}"
    )
    nics = tuple(
        attrs.evolve(
            n,
            network=networks.get(n.network, n.network),
            model=None if cross_vendor else n.model,
            mac=config.nics[i].mac if keep_macs and i < len(config.nics) else n.mac,
        )
        for i, n in enumerate(spec.nics)
    )
    spec_disks = tuple(
        attrs.evolve(d, bus=DiskBus.DEFAULT) if cross_vendor else d for d in spec.disks
    )
    return attrs.evolve(
        spec, nics=nics, disks=spec_disks, firmware=carried_firmware(config.firmware, firmwares)
    )


def carried_firmware(
    source: Firmware | None, firmwares: frozenset[Firmware] | None
) -> Firmware | None:
    """The firmware the target VM is made with: the source's where the target can make it
    (``PlacementChecks.firmwares``), else None (the target's default). Restore uses it too."""
    if source is None or firmwares is None or source not in firmwares:
        return None
    return source


_FIRMWARE_RISK = "a guest installed for UEFI does not boot on BIOS, nor the reverse"


def firmware_note(
    source: Firmware | None,
    spec: VMSpec,
    made: VMConfig | None,
    firmwares: frozenset[Firmware] | None,
    source_driver: str,
    target_driver: str,
    source_unknown: str | None = None,
) -> MappingNote:
    """How the firmware fared; ``source_unknown`` says why the source's is not known (by
    default: its driver does not report it)."""
    item = "firmware (BIOS/UEFI)"
    before = source.value if source else None
    after = made.firmware if made is not None else spec.firmware
    now = after.value if after else None
    if source is None:
        why = source_unknown or f"the {source_driver} driver does not report the source's firmware"
        return MappingNote(
            K.UNKNOWN,
            item,
            None,
            now,
            f"{why}: the target made the VM with its default; {_FIRMWARE_RISK}",
        )
    if firmwares is None:
        return MappingNote(
            K.UNKNOWN,
            item,
            before,
            now,
            f"the {target_driver} driver does not take a firmware choice: the target made the "
            f"VM with its default; {_FIRMWARE_RISK}",
        )
    if source not in firmwares:
        return MappingNote(
            K.CHANGED,
            item,
            before,
            now or "(the target's default)",
            f"the target cannot make {before} VMs (it makes "
            f"{', '.join(sorted(f.value for f in firmwares))}): {_FIRMWARE_RISK}",
        )
    if made is not None and made.firmware not in (None, source):
        detail = f"the target did not keep it; {_FIRMWARE_RISK}"
        return MappingNote(K.CHANGED, item, before, now, detail)
    return MappingNote(K.KEPT, item, before, before)


def mapping(
    config: VMConfig,
    spec: VMSpec,
    made: VMConfig | None,
    *,
    snapshots: int | None,
    source_driver: str,
    target_driver: str,
    keep_source: bool | None = None,
    checks: Sequence[MappingNote] = (),
    firmwares: frozenset[Firmware] | None = None,
) -> tuple[tuple[MappingNote, ...], tuple[str, ...]]:
    """The notes and the guest's needs; ``made`` is the target VM's configuration as read
    back after it was created (None for a dry run: "the target's choice")."""
    notes: list[MappingNote] = [
        MappingNote(
            K.KEPT,
            "vCPUs, memory, guest OS, description",
            f"{config.vcpus} vCPUs, {config.memory_mib} MiB, {config.guest_os.value}",
            f"{spec.vcpus} vCPUs, {spec.memory_mib} MiB, {spec.guest_os.value}",
        ),
        firmware_note(config.firmware, spec, made, firmwares, source_driver, target_driver),
    ]
    guest: list[str] = []
    cross = source_driver != target_driver
    for i, disk in enumerate(config.disks):
        after = made.disks[i] if made is not None and i < len(made.disks) else None
        new_bus = (after.bus if after else None) or (
            "(the target's default)" if cross else spec.disks[i].bus.value
        )
        kind = K.KEPT if (disk.bus or "default") == new_bus else K.CHANGED
        notes.append(
            MappingNote(
                kind,
                f"disk {i} ({disk.id}) bus",
                disk.bus or "default",
                new_bus,
                "another vendor's bus: the target picks its own" if cross else "",
            )
        )
        if after is not None and after.size_mib * 1024 * 1024 > disk.size_mib * 1024 * 1024:
            notes.append(
                MappingNote(
                    K.CHANGED,
                    f"disk {i} size",
                    f"{disk.size_mib} MiB",
                    f"{after.size_mib} MiB",
                    "rounded up by the target; the extra space reads as zeroes",
                )
            )
    for i, nic in enumerate(config.nics):
        after_nic = made.nics[i] if made is not None and i < len(made.nics) else None
        target_net = spec.nics[i].network if i < len(spec.nics) else None
        notes.append(
            MappingNote(
                K.KEPT if target_net == nic.network else K.CHANGED,
                f"nic {i} network",
                nic.network,
                target_net,
            )
        )
        new_model = (after_nic.model if after_nic else None) or (
            "(the target's default)" if cross else (nic.model or "default")
        )
        if cross or (nic.model or "default") != new_model:
            notes.append(
                MappingNote(
                    K.CHANGED if (nic.model or "default") != new_model else K.KEPT,
                    f"nic {i} model",
                    nic.model or "default",
                    new_model,
                    "another vendor's NIC model: the target picks its own" if cross else "",
                )
            )
        wanted = spec.nics[i].mac if i < len(spec.nics) else None
        if wanted:
            now = after_nic.mac if after_nic else wanted
            notes.append(
                MappingNote(
                    K.KEPT if now == nic.mac else K.CHANGED,
                    f"nic {i} MAC",
                    nic.mac,
                    now,
                    "kept (keep_macs)"
                    + (
                        ""
                        if keep_source is False
                        else ": the source keeps it too, so do not run both on one network"
                    )
                    if now == nic.mac
                    else "the target did not keep it",
                )
            )
        else:
            notes.append(
                MappingNote(
                    K.CHANGED,
                    f"nic {i} MAC",
                    nic.mac,
                    after_nic.mac if after_nic else "(new, from the target)",
                    "renewed: the source's MAC comes from its vendor's range and may still be "
                    "in use there (keep_macs=True keeps it)",
                )
            )
    if config.nics and not all(n.mac for n in spec.nics):
        guest.append(
            "network configuration bound to the old MAC addresses (udev/netplan rules, DHCP "
            "reservations, licences) must follow the new ones; interface names may change"
        )
    for key in RESOURCE_CAPABILITIES:
        before = getattr(config.resources, key)
        if before is None:
            continue
        after_value = getattr(spec.resources, key)
        if after_value is None:
            notes.append(
                MappingNote(
                    K.DROPPED,
                    key,
                    str(before),
                    None,
                    f"the {target_driver} driver cannot set it "
                    f"(capability {RESOURCE_CAPABILITIES[key].value})",
                )
            )
        else:
            notes.append(MappingNote(K.KEPT, key, str(before), str(after_value)))
    if snapshots:
        notes.append(
            MappingNote(
                K.DROPPED,
                "snapshots",
                f"{snapshots} snapshot(s)",
                None,
                "not carried: only the disks' content at the point in time moves",
            )
        )
    if cross:
        if target_driver in _TARGET_NEEDS:
            guest.append(_TARGET_NEEDS[target_driver])
        if source_driver in _SOURCE_LEFTOVERS:
            guest.append(_SOURCE_LEFTOVERS[source_driver])
        if config.disks:
            guest.append(
                "file systems mounted by device name (/dev/sda1, /dev/xvda1, /dev/vda1) must be "
                "mounted by UUID or label, as the disk bus changes the device names"
            )
    notes += checks
    return tuple(notes), tuple(guest)
