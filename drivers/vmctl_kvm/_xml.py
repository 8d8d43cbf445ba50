"""Domain, volume and device XML: built with xml.etree (names are never pasted into strings)
and parsed back into vmctl's values."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import NamedTuple

from vmctl import BootSource, DiskBus, Firmware, GuestOS, NicInfo, Resources, VMSpec

NS = "https://vmctl.dev/xmlns/libvirt/1"
NS_PREFIX = "vmctl"
META = f"{{{NS}}}vm"
ET.register_namespace(NS_PREFIX, NS)

#: The guest agent's virtio-serial port name.
AGENT_CHANNEL = "org.qemu.guest_agent.0"
CPU_PERIOD_US = 100_000  # the scheduler period the CPU limit is expressed against


def to_string(elem: ET.Element) -> str:
    return ET.tostring(elem, encoding="unicode")


def sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    child = ET.SubElement(parent, tag, attrib)
    if text is not None:
        child.text = text
    return child


# -- metadata: what vmctl created for the domain ------------------------------------------


class OwnedDisk(NamedTuple):
    """A volume vmctl created for a domain (deleted with it, and only these)."""

    path: str
    pool: str
    volume: str
    name: str | None  # the DiskSpec name, if one was given


class Metadata(NamedTuple):
    guest_os: GuestOS
    disks: tuple[OwnedDisk, ...]


def metadata_element(meta: Metadata) -> ET.Element:
    root = ET.Element(META, {"guest-os": meta.guest_os.value})
    for d in meta.disks:
        attrs = {"path": d.path, "pool": d.pool, "volume": d.volume}
        if d.name:
            attrs["name"] = d.name
        ET.SubElement(root, f"{{{NS}}}disk", attrs)
    return root


def metadata_xml(meta: Metadata) -> str:
    """The element for virDomainSetMetadata: without a namespace (libvirt puts it in the
    namespace given with the call)."""
    root = ET.Element("vm", {"guest-os": meta.guest_os.value})
    for d in meta.disks:
        attrs = {"path": d.path, "pool": d.pool, "volume": d.volume}
        if d.name:
            attrs["name"] = d.name
        ET.SubElement(root, "disk", attrs)
    return to_string(root)


def parse_metadata(dom: ET.Element) -> Metadata:
    node = dom.find(f"metadata/{META}")
    if node is None:
        return Metadata(GuestOS.OTHER, ())
    try:
        guest_os = GuestOS(node.get("guest-os", "other"))
    except ValueError:
        guest_os = GuestOS.OTHER
    disks = tuple(
        OwnedDisk(d.get("path", ""), d.get("pool", ""), d.get("volume", ""), d.get("name"))
        for d in node.findall(f"{{{NS}}}disk")
    )
    return Metadata(guest_os, disks)


def set_metadata(dom: ET.Element, meta: Metadata) -> None:
    """Replace vmctl's metadata in a domain element (other applications' metadata stays)."""
    md = dom.find("metadata")
    if md is None:
        md = ET.SubElement(dom, "metadata")
    for old in md.findall(META):
        md.remove(old)
    md.append(metadata_element(meta))


# -- building ---------------------------------------------------------------------------


class DiskPlan(NamedTuple):
    """A disk to put in the domain: its target and the volume behind it."""

    dev: str
    bus: str
    path: str
    fmt: str | None


PREFIX = {"virtio": "vd", "scsi": "sd", "sata": "sd", "ide": "hd"}


def free_target(bus: str, used: Iterable[str]) -> str:
    """The first free target name (vda, vdb, ... / sda ... / hda ...) for ``bus``."""
    taken = set(used)
    prefix = PREFIX.get(bus, "vd")
    for i in range(26 * 27):
        name = prefix + (_letters(i))
        if name not in taken:
            return name
    raise ValueError(f"no free disk target on bus {bus}")


def _letters(i: int) -> str:
    if i < 26:
        return chr(ord("a") + i)
    return chr(ord("a") + i // 26 - 1) + chr(ord("a") + i % 26)


def resolve_bus(bus: DiskBus, *, hotplug: bool) -> str:
    """The libvirt bus for a DiskBus. DEFAULT is virtio, or SCSI (virtio-scsi) for a disk
    hot-plugged into a running domain: SCSI devices are removed without the guest's consent,
    a virtio-blk PCI device only when the guest OS acknowledges the unplug."""
    if bus is DiskBus.DEFAULT:
        return "scsi" if hotplug else "virtio"
    return bus.value


def disk_element(plan: DiskPlan, *, test: bool) -> ET.Element:
    disk = ET.Element("disk", {"type": "file", "device": "disk"})
    if not test:
        drv = {"name": "qemu"}
        if plan.fmt:
            drv["type"] = plan.fmt
        sub(disk, "driver", **drv)
    sub(disk, "source", file=plan.path)
    sub(disk, "target", dev=plan.dev, bus=plan.bus)
    return disk


def nic_element(network: str, mac: str | None, model: str | None, *, test: bool) -> ET.Element:
    nic = ET.Element("interface", {"type": "network"})
    if mac:
        sub(nic, "mac", address=mac)
    sub(nic, "source", network=network)
    if not test:
        sub(nic, "model", type=model or "virtio")
    return nic


def domain_xml(
    spec: VMSpec,
    *,
    domain_type: str,
    disks: list[DiskPlan],
    networks: list[str],
    max_vcpus: int,
    meta: Metadata,
    arch: str,
    test: bool,
) -> str:
    """The domain XML for ``spec`` (disks already created as volumes)."""
    dom = ET.Element("domain", {"type": domain_type})
    sub(dom, "name", spec.name)
    if spec.description:
        sub(dom, "description", spec.description)
    md = sub(dom, "metadata")
    md.append(metadata_element(meta))
    kib = str(spec.memory_mib * 1024)
    sub(dom, "memory", kib, unit="KiB")
    sub(dom, "currentMemory", kib, unit="KiB")
    vcpu = sub(dom, "vcpu", str(max(max_vcpus, spec.vcpus)), placement="static")
    if max_vcpus > spec.vcpus:
        vcpu.set("current", str(spec.vcpus))
    res = spec.resources
    if res.cpu_shares is not None or res.cpu_limit_percent is not None:
        tune = sub(dom, "cputune")
        if res.cpu_shares is not None:
            sub(tune, "shares", str(res.cpu_shares))
        if res.cpu_limit_percent is not None:
            sub(tune, "global_period", str(CPU_PERIOD_US))
            sub(tune, "global_quota", str(res.cpu_limit_percent * CPU_PERIOD_US // 100))
    if res.memory_limit_mib is not None:
        mt = sub(dom, "memtune")
        sub(mt, "hard_limit", str(res.memory_limit_mib * 1024), unit="KiB")
    os_el = sub(dom, "os")
    if spec.firmware is Firmware.UEFI:
        os_el.set("firmware", "efi")  # libvirt picks OVMF from its firmware descriptors
    type_attrs = {"arch": arch}
    if not test:
        type_attrs["machine"] = "pc"
    sub(os_el, "type", "hvm", **type_attrs)
    boot: BootSource | None = spec.boot
    if boot is not None and boot.kernel:
        sub(os_el, "kernel", boot.kernel)
        if boot.initrd:
            sub(os_el, "initrd", boot.initrd)
        if boot.cmdline:
            sub(os_el, "cmdline", boot.cmdline)
    elif boot is not None and boot.iso:
        sub(os_el, "boot", dev="cdrom")
        sub(os_el, "boot", dev="hd")
    else:
        sub(os_el, "boot", dev="hd")
    if not test:
        feats = sub(dom, "features")
        sub(feats, "acpi")
        sub(feats, "apic")
    sub(dom, "on_poweroff", "destroy")
    sub(dom, "on_reboot", "restart")
    sub(dom, "on_crash", "destroy")
    devs = sub(dom, "devices")
    if not test:
        sub(devs, "controller", type="scsi", index="0", model="virtio-scsi")
    for plan in disks:
        devs.append(disk_element(plan, test=test))
    if boot is not None and boot.iso:
        cd = sub(devs, "disk", type="file", device="cdrom")
        if not test:
            sub(cd, "driver", name="qemu", type="raw")
        sub(cd, "source", file=boot.iso)
        sub(cd, "target", dev="hdc", bus="ide")
        sub(cd, "readonly")
    for nic, network in zip(spec.nics, networks, strict=True):
        devs.append(nic_element(network, nic.mac, nic.model, test=test))
    if not test:
        serial = sub(devs, "serial", type="pty")
        sub(serial, "target", port="0")
        console = sub(devs, "console", type="pty")
        sub(console, "target", type="serial", port="0")
        chan = sub(devs, "channel", type="unix")
        sub(chan, "target", type="virtio", name=AGENT_CHANNEL)
        sub(devs, "memballoon", model="virtio")
    return to_string(dom)


def volume_xml(name: str, size_mib: int, fmt: str | None) -> str:
    vol = ET.Element("volume")
    sub(vol, "name", name)
    sub(vol, "capacity", str(size_mib), unit="MiB")
    if fmt:
        tgt = sub(vol, "target")
        sub(tgt, "format", type=fmt)
        if fmt == "qcow2":
            sub(tgt, "compat", "1.1")  # v3: persistent dirty bitmaps (backup checkpoints)
    return to_string(vol)


def snapshot_xml(name: str, description: str) -> str:
    snap = ET.Element("domainsnapshot")
    sub(snap, "name", name)
    if description:
        sub(snap, "description", description)
    return to_string(snap)


# -- parsing ----------------------------------------------------------------------------


class ParsedDisk(NamedTuple):
    dev: str
    bus: str | None
    path: str | None
    element: ET.Element


def disks_of(dom: ET.Element) -> list[ParsedDisk]:
    out = []
    for d in dom.findall("devices/disk"):
        if d.get("device", "disk") != "disk":
            continue
        tgt = d.find("target")
        if tgt is None or not tgt.get("dev"):
            continue
        src = d.find("source")
        path = None
        if src is not None:
            path = src.get("file") or src.get("dev") or src.get("name")
        out.append(ParsedDisk(tgt.get("dev", ""), tgt.get("bus"), path, d))
    return out


def all_targets(dom: ET.Element) -> list[str]:
    return [t.get("dev", "") for t in dom.findall("devices/disk/target")]


def nics_of(dom: ET.Element) -> list[tuple[NicInfo, ET.Element]]:
    out = []
    for n in dom.findall("devices/interface"):
        mac_el = n.find("mac")
        src = n.find("source")
        model = n.find("model")
        mac = (mac_el.get("address", "") if mac_el is not None else "").lower()
        network = ""
        if src is not None:
            network = src.get("network") or src.get("bridge") or src.get("dev") or ""
        out.append(
            (
                NicInfo(
                    id=mac,
                    network=network,
                    mac=mac,
                    model=model.get("type") if model is not None else None,
                ),
                n,
            )
        )
    return out


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def kib_of(elem: ET.Element | None) -> int | None:
    """A memory element's value in KiB (libvirt writes KiB; other units are converted)."""
    if elem is None or elem.text is None:
        return None
    value = _int(elem.text.strip())
    if value is None:
        return None
    unit = (elem.get("unit") or "KiB").lower()
    factor = {
        "b": 1 / 1024,
        "bytes": 1 / 1024,
        "k": 1,
        "kib": 1,
        "kb": 1000 / 1024,
        "m": 1024,
        "mib": 1024,
        "mb": 1e6 / 1024,
        "g": 1024**2,
        "gib": 1024**2,
        "gb": 1e9 / 1024,
        "t": 1024**3,
        "tib": 1024**3,
    }.get(unit, 1)
    return int(value * factor)


def resources_of(dom: ET.Element) -> Resources:
    shares = _int(dom.findtext("cputune/shares"))
    period = _int(dom.findtext("cputune/global_period"))
    quota = _int(dom.findtext("cputune/global_quota"))
    limit = None
    if quota is not None and quota > 0:
        limit = max(1, round(quota * 100 / (period or CPU_PERIOD_US)))
    hard = kib_of(dom.find("memtune/hard_limit"))
    hard_mib = hard // 1024 if hard is not None and hard < 2**50 else None
    return Resources(
        cpu_shares=shares if shares and shares > 0 else None,
        cpu_limit_percent=limit,
        memory_limit_mib=hard_mib,
    )


def vcpus_of(dom: ET.Element) -> int:
    v = dom.find("vcpu")
    if v is None:
        return 1
    return _int(v.get("current")) or _int(v.text) or 1


def has_agent_channel(dom: ET.Element) -> bool:
    return any(t.get("name") == AGENT_CHANNEL for t in dom.findall("devices/channel/target"))


def parse(xml: str) -> ET.Element:
    return ET.fromstring(xml)


def firmware_of(root: ET.Element) -> Firmware:
    """UEFI for ``<os firmware='efi'>`` or a pflash loader (OVMF), else BIOS (SeaBIOS)."""
    os_el = root.find("os")
    if os_el is None:
        return Firmware.BIOS
    loader = os_el.find("loader")
    if os_el.get("firmware") == "efi" or (loader is not None and loader.get("type") == "pflash"):
        return Firmware.UEFI
    return Firmware.BIOS


def efi_available(domcaps: str) -> bool:
    """Whether libvirt's domain capabilities list ``efi`` firmware (OVMF installed, found
    through its firmware descriptors), so that ``<os firmware='efi'>`` can be defined."""
    root = parse(domcaps)
    values = root.findall("os/enum[@name='firmware']/value")
    return any((v.text or "").strip() == "efi" for v in values)
