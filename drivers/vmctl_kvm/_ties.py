"""What ties a domain to its libvirtd, read from its definition, for a site's placements.

* ``pinned``: a ``<hostdev>`` (a device of this host passed through to the guest);
* ``live_blocker``: what libvirt's QEMU driver refuses to migrate live
  (``qemuMigrationSrcIsAllowed``): a ``<shmem>`` without ``role='master'``, a virtiofs
  ``<filesystem>``, a vDPA ``<interface>``, a ``<transient/>`` disk, and the ``invtsc`` CPU
  feature without a TSC frequency (QEMU blocks that migration). Stopped, such a domain
  moves offline; running, only a restart (shut down, moved, started) takes it.

What libvirt checks only while migrating (an active block job, a paused-on-I/O-error
guest) is not read here: that refusal comes from the move itself.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET


def pinned(dom: ET.Element) -> str | None:
    if dom.find("devices/hostdev") is not None:
        return "a host device is passed through to it (<hostdev>)"
    return None


def _invtsc_without_frequency(dom: ET.Element) -> bool:
    wanted = any(
        f.get("name") == "invtsc" and f.get("policy", "require") in ("require", "force")
        for f in dom.findall("cpu/feature")
    )
    frequency = any(
        t.get("name") == "tsc" and (t.get("frequency") or "0").strip("0") != ""
        for t in dom.findall("clock/timer")
    )
    return wanted and not frequency


def live_blocker(dom: ET.Element) -> str | None:
    found = [
        f"shared memory device {s.get('name')!r} (<shmem> without role='master')"
        for s in dom.findall("devices/shmem")
        if s.get("role") != "master"
    ]
    for fs in dom.findall("devices/filesystem"):
        driver = fs.find("driver")
        if driver is not None and driver.get("type") == "virtiofs":
            target = fs.find("target")
            tag = target.get("dir") if target is not None else None
            found.append(f"virtiofs filesystem {tag!r}")
    if dom.find("devices/interface[@type='vdpa']") is not None:
        found.append("a vDPA network interface")
    for disk in dom.findall("devices/disk"):
        if disk.find("transient") is not None:
            target = disk.find("target")
            dev = target.get("dev") if target is not None else "?"
            found.append(f"transient disk {dev!r}")
    if _invtsc_without_frequency(dom):
        found.append("the invtsc CPU feature and no TSC frequency (<timer name='tsc'>)")
    if not found:
        return None
    return f"libvirt does not migrate it live: {'; '.join(found)}"
