"""What the conformance kit can use on a Xen pool (``XenDriver.kit_defaults``): a network
and an SR, found with three XenAPI reads (networks, SRs, PBDs). A bootable guest cannot be
found this way (a PV kernel lives in the control domain's file system), so the operator
gives one (``boot_kernel`` or ``boot_iso``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from vmctl.spi import Deadline

if TYPE_CHECKING:
    from ._driver import XenDriver

NULL = "OpaqueRef:NULL"


def _internal(rec: Mapping[str, Any]) -> bool:
    """xapi's host-internal management and guest installer networks, which no VM should use."""
    other = rec.get("other_config") or {}
    return any(
        str(other.get(flag, "")).lower() == "true"
        for flag in ("is_host_internal_management_network", "is_guest_installer_network")
    )


def network(nets: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The network's bridge: ``xenbr0`` (the first NIC's, on XenServer and XCP-ng) where it
    exists, else the first network with a physical interface, else the first other one."""
    usable = [r for r in nets.values() if not _internal(r) and r.get("bridge")]
    bridges = sorted(str(r["bridge"]) for r in usable)
    if "xenbr0" in bridges:
        return "xenbr0"
    external = sorted(str(r["bridge"]) for r in usable if r.get("PIFs"))
    found = external or bridges
    return found[0] if found else None


def storage(
    srs: Mapping[str, Mapping[str, Any]],
    pbds: Mapping[str, Mapping[str, Any]],
    default_sr: str,
    host: str | None,
) -> str | None:
    """An SR new disks can go to and this connection's host(s) can reach: the pool's default
    SR when it qualifies, else the shared SR with the most free space (migration needs
    shared storage), else a local one. Named by name_label when that is unique, else by
    UUID."""

    def reachable(ref: str) -> bool:
        return any(
            p.get("SR") == ref
            and p.get("currently_attached", True)
            and (host is None or p.get("host") == host)
            for p in pbds.values()
        )

    def usable(ref: str, rec: Mapping[str, Any]) -> bool:
        ops = rec.get("allowed_operations")
        return (
            rec.get("content_type") != "iso"
            and (ops is None or "vdi_create" in ops)
            and (bool(rec.get("shared")) or reachable(ref))
        )

    def free(rec: Mapping[str, Any]) -> int:
        return int(rec.get("physical_size") or 0) - int(rec.get("physical_utilisation") or 0)

    candidates = {ref: rec for ref, rec in srs.items() if usable(ref, rec)}
    if not candidates:
        return None
    if default_sr not in ("", NULL) and default_sr in candidates:
        chosen = candidates[default_sr]
    else:
        chosen = max(
            candidates.values(),
            key=lambda r: (bool(r.get("shared")), free(r), str(r.get("name_label"))),
        )
    label = str(chosen.get("name_label") or "")
    labels = [str(r.get("name_label")) for r in srs.values() if r.get("content_type") != "iso"]
    return label if label and labels.count(label) == 1 else str(chosen.get("uuid"))


def kit_defaults(driver: XenDriver, deadline: Deadline) -> dict[str, str]:
    what = "find a network and an SR for the conformance kit"
    nets = driver._call(what, "network.get_all_records", deadline=deadline)
    srs = driver._call(what, "SR.get_all_records", deadline=deadline)
    pbds = driver._call(what, "PBD.get_all_records", deadline=deadline)
    out: dict[str, str] = {}
    net = network(nets)
    if net:
        out["network"] = net
    sr = storage(srs, pbds, driver._default_sr, driver.scope)
    if sr:
        out["pool"] = sr
    return out
