"""The sim driver: vmctl's SPI over the in-process sim world (see ``_site``).

URIs: ``sim://[HOST][?site=NAME][&state=FILE]``. Hosts of one site share a world, so VMs
migrate between ``sim://a`` and ``sim://b``. With ``state=FILE`` the site lives in a JSON
file, so separate processes (CLI calls) see the same VMs.

A VM created with a ``boot`` source has a guest OS: it acts on ACPI shutdown and reboot after
a short delay and reports an IP address. A VM without one has no OS, like a blank disk on a
real hypervisor: it ignores graceful requests (use ``force_after`` or ``power_off``).
"""

from __future__ import annotations

import copy
import datetime as dt
import random
import threading
import time
import uuid as uuidlib
from collections.abc import Mapping, Sequence

import attrs

from vmctl import (
    URI,
    AgentState,
    AlreadyExists,
    ConnectParams,
    DiskInfo,
    DiskSpec,
    EventKind,
    Firmware,
    GuestInfo,
    GuestOS,
    HostInfo,
    InsufficientResources,
    InvalidState,
    NicInfo,
    NicSpec,
    NotFound,
    PowerState,
    Resources,
    SnapshotInfo,
    StateReason,
    ValidationError,
    VMConfig,
    VMInfo,
    VMSpec,
    VMStats,
)
from vmctl.spi import (
    ChangedBlocks,
    ChangeWaiter,
    Cloning,
    Consistency,
    Deadline,
    Devices,
    DiskAccess,
    DiskWriter,
    Driver,
    Events,
    EventSource,
    Extent,
    ExtentData,
    GracefulPower,
    GuestAgent,
    Migration,
    Pausable,
    PointInTime,
    PointInTimeDisk,
    Reconfigurable,
    Resettable,
    ResourceControls,
    Snapshots,
    Statistics,
    StorageListing,
    Suspendable,
    Volume,
)

from ._disks import BLOCK, DiskFull, Overlay, SimPointInTime, blocks_of, runs
from ._hosts import SimHosts
from ._placement import SimPlacement
from ._recovery import SimRecovery
from ._site import (
    GUEST_DELAY,
    HOST_CPU_MHZ,
    HOST_CPUS,
    HOST_MEMORY_MIB,
    NETWORKS,
    POOL_CAPACITY_MIB,
    POOLS,
    SimDisk,
    SimHost,
    SimNic,
    SimSnapshot,
    SimVM,
    SimVolume,
    Site,
    Subscriber,
    get_site,
    now,
)

S = PowerState
R = StateReason
KNOWN_OPTIONS = {"site", "state"}


class SimDriver(
    Driver,
    ChangeWaiter,
    GracefulPower,
    Resettable,
    Pausable,
    Suspendable,
    Reconfigurable,
    ResourceControls,
    Devices,
    Snapshots,
    Cloning,
    Migration,
    Events,
    Statistics,
    GuestAgent,
    DiskAccess,
    ChangedBlocks,
    DiskWriter,
    StorageListing,
    SimHosts,
    SimRecovery,
    SimPlacement,
):
    """The reference driver: every capability, enforced as real hypervisors enforce it."""

    name = "sim"

    def __init__(self, site: Site, host: str) -> None:
        self.site = site
        self.host_name = host
        self._closed = False

    @classmethod
    def kit_options(cls, uri: URI) -> dict[str, str]:
        """Defaults for the conformance kit: a second host of the same site for the migration
        clauses, and a boot source (the sim's guests boot from any kernel path)."""
        parsed = uri
        peer = attrs.evolve(parsed, host=f"{parsed.host or 'default'}-peer")
        return {"other_uri": str(peer), "boot_kernel": "/sim/boot/vmlinuz"}

    def kit_defaults(self, *, deadline: Deadline) -> dict[str, str]:
        """The site's first network and pool (every sim host has them)."""
        return {"network": NETWORKS[0], "pool": POOLS[0]}

    @classmethod
    def open(cls, params: ConnectParams, *, deadline: Deadline) -> SimDriver:
        unknown = set(params.options) - KNOWN_OPTIONS
        if unknown:
            raise ValidationError(
                f"unknown sim option(s) {sorted(unknown)}; the sim knows {sorted(KNOWN_OPTIONS)}",
                field="uri",
            )
        if params.uri.path not in ("", "/"):
            raise ValidationError(
                f"sim URIs have no path (got {params.uri.path!r}); use "
                "sim://HOST?site=NAME&state=FILE",
                field="uri",
            )
        site = get_site(params.options.get("site", "default"), params.options.get("state"))
        host = params.uri.host or "default"
        with site.transaction():
            site.host(host)
        return cls(site, host)

    def close(self) -> None:
        self._closed = True

    # -- helpers --------------------------------------------------------------------------

    @property
    def _host(self) -> SimHost:
        return self.site.host(self.host_name)

    def _vm(self, uuid: str) -> SimVM:
        vm = self._host.vms.get(uuid)
        if vm is None:
            raise NotFound(f"no VM with UUID {uuid} on sim host {self.host_name!r}")
        return vm

    def _info(self, vm: SimVM) -> VMInfo:
        return self._vm_info(vm, self.host_name)

    def _set_state(self, vm: SimVM, state: PowerState, reason: StateReason) -> None:
        t = time.time()
        if vm.running_since is not None:
            vm.cpu_seconds += (t - vm.running_since) * vm.vcpus * 0.05
            vm.running_since = None
        if state is S.RUNNING:
            vm.running_since = t
        if state is S.RUNNING and reason in (R.BOOTED, R.RESTORED) and vm.has_os:
            vm.booted_at = t
        elif state in (S.STOPPED, S.SUSPENDED, S.CRASHED):
            vm.booted_at = None
        vm.state, vm.reason = state, reason
        self.site.emit(self.host_name, EventKind.STATE_CHANGED, vm)

    def _expect(self, vm: SimVM, *states: PowerState, verb: str) -> None:
        if vm.state not in states:
            raise InvalidState(
                f"cannot {verb} VM {vm.name!r}: it is {vm.state.value}",
                current=vm.state,
                allowed=states,
            )

    @staticmethod
    def _need_os(vm: SimVM, verb: str) -> None:
        """A VM with no OS cannot answer an ACPI request; the sim knows it, so it says so
        at once (a real host may only find out when the guest never reacts)."""
        if not vm.has_os:
            raise InvalidState(
                f"cannot {verb} VM {vm.name!r} gracefully: it has no guest OS to answer the "
                "ACPI request (it was created without a boot source)",
                current=vm.state,
            )

    def _check_memory(self, host: SimHost, extra_mib: int, what: str) -> None:
        free = HOST_MEMORY_MIB - host.used_memory_mib()
        if extra_mib > free:
            raise InsufficientResources(
                f"{what} needs {extra_mib} MiB but sim host {host.name!r} has {free} MiB free"
            )

    def _disk(self, vm: SimVM, spec: DiskSpec) -> SimDisk:
        pool = spec.pool or "default"
        if pool not in POOLS:
            raise NotFound(
                f"no storage pool {pool!r} on sim host {self.host_name!r} "
                f"(pools: {', '.join(POOLS)})"
            )
        disk_id = vm.device_id("disk")
        name = spec.name or f"{vm.name}-{disk_id}"
        return SimDisk(
            id=disk_id,
            size_mib=spec.size_mib,
            name=spec.name,
            bus=spec.bus.value,
            path=f"/sim/{self.site.name}/{pool}/{name}.img",
            pool=pool,
        )

    def _check_room(self, host: SimHost, disks: Sequence[SimDisk], what: str) -> None:
        """The pools of a host hold POOL_CAPACITY_MIB of provisioned disk each."""
        for pool in {d.pool for d in disks}:
            wanted = sum(d.size_mib for d in disks if d.pool == pool)
            free = POOL_CAPACITY_MIB - host.used_pool_mib(pool)
            if wanted > free:
                raise InsufficientResources(
                    f"{what} needs {wanted} MiB of disk in pool {pool!r} but sim host "
                    f"{host.name!r} has {free} MiB free there"
                )

    def _nic(self, vm: SimVM, spec: NicSpec) -> SimNic:
        if spec.network not in NETWORKS:
            raise NotFound(
                f"no network {spec.network!r} on sim host {self.host_name!r} "
                f"(networks: {', '.join(NETWORKS)})"
            )
        mac = spec.mac or "52:54:00:" + ":".join(f"{b:02x}" for b in random.randbytes(3))
        return SimNic(id=vm.device_id("nic"), network=spec.network, mac=mac, model=spec.model)

    def _keep_volumes(self, disks: Sequence[SimDisk]) -> None:
        """The disks' images now exist in their pools (``list_volumes``)."""
        for d in disks:
            self.site.volumes[d.path] = SimVolume(
                path=d.path, pool=d.pool, size_mib=d.size_mib, store=d.store
            )

    def _drop_volume(self, disk: SimDisk) -> None:
        """Delete a disk's image and its content."""
        self.site.volumes.pop(disk.path, None)
        self.site.disks.delete(disk.store, disk.size_bytes)

    @staticmethod
    def _held(vm: SimVM, path: str) -> bool:
        """Whether a snapshot of the VM still names the disk (its image must stay)."""
        return any(d["path"] == path for s in vm.snapshots.values() for d in s.config["disks"])

    def _name_free(self, host: SimHost, name: str) -> None:
        if any(v.name == name for v in host.vms.values()):
            raise AlreadyExists(f"a VM named {name!r} already exists on sim host {host.name!r}")

    def _later(self, uuid: str, action: str) -> None:
        """Let the simulated guest act on an ACPI request after a moment."""

        def act() -> None:
            with self.site.transaction():
                vm = self._host.vms.get(uuid)
                if vm is None or vm.state is not S.RUNNING:
                    return
                if action == "shutdown":
                    self._set_state(vm, S.STOPPED, R.SHUTDOWN)
                else:
                    self._set_state(vm, S.RUNNING, R.BOOTED)

        timer = threading.Timer(GUEST_DELAY, act)
        timer.daemon = True
        timer.start()

    # -- mandatory ------------------------------------------------------------------------

    def host_info(self, *, deadline: Deadline) -> HostInfo:
        with self.site.transaction():
            host = self._host
            return HostInfo(
                name=host.name,
                hypervisor="sim",
                version="1.0",
                cpus=HOST_CPUS,
                cpu_mhz=HOST_CPU_MHZ,
                memory_mib=HOST_MEMORY_MIB,
                free_memory_mib=HOST_MEMORY_MIB - host.used_memory_mib(),
                uuid=host.uuid,
                vm_count=len(host.vms),
            )

    def list_vms(self, *, deadline: Deadline) -> list[VMInfo]:
        with self.site.transaction():
            return [self._info(vm) for vm in self._host.vms.values()]

    def get_vm(self, uuid: str, *, deadline: Deadline) -> VMInfo:
        with self.site.transaction():
            return self._info(self._vm(uuid))

    def get_config(self, uuid: str, *, deadline: Deadline) -> VMConfig:
        with self.site.transaction():
            vm = self._vm(uuid)
            return VMConfig(
                uuid=vm.uuid,
                name=vm.name,
                vcpus=vm.vcpus,
                memory_mib=vm.memory_mib,
                disks=tuple(
                    DiskInfo(id=d.id, size_mib=d.size_mib, name=d.name, path=d.path, bus=d.bus)
                    for d in vm.disks
                ),
                nics=tuple(
                    NicInfo(id=n.id, network=n.network, mac=n.mac, model=n.model) for n in vm.nics
                ),
                resources=vm.resources,
                guest_os=GuestOS(vm.guest_os),
                description=vm.description,
                firmware=Firmware(vm.firmware),
            )

    def create_vm(self, spec: VMSpec, *, deadline: Deadline) -> VMInfo:
        with self.site.transaction():
            host = self._host
            self._name_free(host, spec.name)
            vm = SimVM(
                uuid=str(uuidlib.uuid4()),
                name=spec.name,
                vcpus=spec.vcpus,
                memory_mib=spec.memory_mib,
                guest_os=spec.guest_os.value,
                has_os=spec.boot is not None,
                description=spec.description,
                resources=spec.resources,
                firmware=(spec.firmware or Firmware.BIOS).value,
            )
            if spec.vcpus > HOST_CPUS:
                raise InsufficientResources(
                    f"{spec.vcpus} vCPUs exceed the {HOST_CPUS} CPUs of sim host {host.name!r}"
                )
            # Build every device before the VM becomes visible: nothing half-made is left.
            vm.disks = [self._disk(vm, d) for d in spec.disks]
            vm.nics = [self._nic(vm, n) for n in spec.nics]
            self._check_room(host, vm.disks, f"creating VM {spec.name!r}")
            host.vms[vm.uuid] = vm
            self._keep_volumes(vm.disks)
            self.site.emit(self.host_name, EventKind.CREATED, vm)
            return self._info(vm)

    def delete_vm(self, uuid: str, *, deadline: Deadline) -> list[str]:
        with self.site.transaction():
            vm = self._vm(uuid)
            self._expect(vm, S.STOPPED, S.SUSPENDED, S.CRASHED, verb="delete")
            del self._host.vms[uuid]
            gone = {d.path: d for d in vm.disks}
            for snap in vm.snapshots.values():  # disks only snapshots still held
                for raw in snap.config["disks"]:
                    gone.setdefault(raw["path"], SimDisk(**raw))
            for d in gone.values():
                self._drop_volume(d)
            self.site.emit(self.host_name, EventKind.DELETED, vm)
            return (
                [f"vm {vm.name} ({vm.uuid})"]
                + [f"disk {path}" for path in gone]
                + [f"snapshot {s.name}" for s in vm.snapshots.values()]
            )

    def start(self, uuid: str, *, deadline: Deadline) -> None:
        with self.site.transaction():
            vm = self._vm(uuid)
            self._expect(vm, S.STOPPED, S.CRASHED, verb="start")
            if vm.vcpus > HOST_CPUS:
                raise InsufficientResources(f"VM {vm.name!r} has more vCPUs than the host")
            self._check_memory(self._host, vm.memory_mib, f"starting VM {vm.name!r}")
            self._set_state(vm, S.RUNNING, R.BOOTED)

    def power_off(self, uuid: str, *, deadline: Deadline) -> None:
        with self.site.transaction():
            vm = self._vm(uuid)
            self._expect(vm, S.RUNNING, S.PAUSED, S.SUSPENDED, S.CRASHED, verb="power off")
            self._set_state(vm, S.STOPPED, R.POWERED_OFF)

    # -- graceful, reset, pause, suspend --------------------------------------------------

    def shutdown(self, uuid: str, *, deadline: Deadline) -> None:
        with self.site.transaction():
            vm = self._vm(uuid)
            self._expect(vm, S.RUNNING, verb="shut down")
            self._need_os(vm, "shut down")
            self._later(uuid, "shutdown")

    def reboot(self, uuid: str, *, deadline: Deadline) -> None:
        with self.site.transaction():
            vm = self._vm(uuid)
            self._expect(vm, S.RUNNING, verb="reboot")
            self._need_os(vm, "reboot")
            self._later(uuid, "reboot")

    def reset(self, uuid: str, *, deadline: Deadline) -> None:
        with self.site.transaction():
            vm = self._vm(uuid)
            self._expect(vm, S.RUNNING, verb="reset")
            self._set_state(vm, S.RUNNING, R.BOOTED)

    def pause(self, uuid: str, *, deadline: Deadline) -> None:
        with self.site.transaction():
            vm = self._vm(uuid)
            self._expect(vm, S.RUNNING, verb="pause")
            self._set_state(vm, S.PAUSED, R.USER)

    def unpause(self, uuid: str, *, deadline: Deadline) -> None:
        with self.site.transaction():
            vm = self._vm(uuid)
            self._expect(vm, S.PAUSED, verb="unpause")
            self._set_state(vm, S.RUNNING, R.RESUMED)

    def suspend(self, uuid: str, *, deadline: Deadline) -> None:
        with self.site.transaction():
            vm = self._vm(uuid)
            self._expect(vm, S.RUNNING, verb="suspend")
            self._set_state(vm, S.SUSPENDED, R.SAVED)

    def resume_suspended(self, uuid: str, *, deadline: Deadline) -> None:
        with self.site.transaction():
            vm = self._vm(uuid)
            self._expect(vm, S.SUSPENDED, verb="resume")
            self._check_memory(self._host, vm.memory_mib, f"resuming VM {vm.name!r}")
            self._set_state(vm, S.RUNNING, R.RESUMED)

    # -- reconfiguration ------------------------------------------------------------------

    def set_vcpus(self, uuid: str, vcpus: int, *, live: bool, deadline: Deadline) -> None:
        with self.site.transaction():
            vm = self._vm(uuid)
            if vcpus > HOST_CPUS:
                raise InsufficientResources(f"{vcpus} vCPUs exceed the host's {HOST_CPUS}")
            self._expect(vm, S.RUNNING if live else S.STOPPED, verb="set vCPUs of")
            vm.vcpus = vcpus
            self.site.emit(self.host_name, EventKind.RECONFIGURED, vm, f"vcpus={vcpus}")

    def set_memory(self, uuid: str, memory_mib: int, *, live: bool, deadline: Deadline) -> None:
        with self.site.transaction():
            vm = self._vm(uuid)
            self._expect(vm, S.RUNNING if live else S.STOPPED, verb="set memory of")
            if live and memory_mib > vm.memory_mib:
                self._check_memory(
                    self._host, memory_mib - vm.memory_mib, f"growing VM {vm.name!r}"
                )
            vm.memory_mib = memory_mib
            self.site.emit(self.host_name, EventKind.RECONFIGURED, vm, f"memory_mib={memory_mib}")

    def set_resources(self, uuid: str, resources: Resources, *, deadline: Deadline) -> None:
        with self.site.transaction():
            vm = self._vm(uuid)
            vm.resources = vm.resources.merged(resources)
            self.site.emit(self.host_name, EventKind.RECONFIGURED, vm, "resources")

    def add_disk(self, uuid: str, disk: DiskSpec, *, live: bool, deadline: Deadline) -> DiskInfo:
        with self.site.transaction():
            vm = self._vm(uuid)
            new = self._disk(vm, disk)
            self._check_room(self._host, [new], f"adding a disk to VM {vm.name!r}")
            vm.disks.append(new)
            self._keep_volumes([new])
            self.site.emit(self.host_name, EventKind.RECONFIGURED, vm, f"disk {new.id} added")
            return DiskInfo(
                id=new.id, size_mib=new.size_mib, name=new.name, path=new.path, bus=new.bus
            )

    def remove_disk(self, uuid: str, disk_id: str, *, live: bool, deadline: Deadline) -> None:
        with self.site.transaction():
            vm = self._vm(uuid)
            kept = [d for d in vm.disks if d.id != disk_id]
            if len(kept) == len(vm.disks):
                raise NotFound(f"VM {vm.name!r} has no disk {disk_id!r}")
            for d in vm.disks:
                if d.id == disk_id and not self._held(vm, d.path):
                    self._drop_volume(d)
            vm.disks = kept
            self.site.emit(self.host_name, EventKind.RECONFIGURED, vm, f"disk {disk_id} removed")

    def add_nic(self, uuid: str, nic: NicSpec, *, live: bool, deadline: Deadline) -> NicInfo:
        with self.site.transaction():
            vm = self._vm(uuid)
            new = self._nic(vm, nic)
            vm.nics.append(new)
            self.site.emit(self.host_name, EventKind.RECONFIGURED, vm, f"nic {new.id} added")
            return NicInfo(id=new.id, network=new.network, mac=new.mac, model=new.model)

    def remove_nic(self, uuid: str, nic_id: str, *, live: bool, deadline: Deadline) -> None:
        with self.site.transaction():
            vm = self._vm(uuid)
            kept = [n for n in vm.nics if n.id != nic_id]
            if len(kept) == len(vm.nics):
                raise NotFound(f"VM {vm.name!r} has no NIC {nic_id!r}")
            vm.nics = kept
            self.site.emit(self.host_name, EventKind.RECONFIGURED, vm, f"nic {nic_id} removed")

    # -- snapshots ------------------------------------------------------------------------

    @staticmethod
    def _snap_info(vm: SimVM, s: SimSnapshot) -> SnapshotInfo:
        return SnapshotInfo(
            id=s.id,
            name=s.name,
            created=s.created,
            parent=s.parent,
            with_memory=s.with_memory,
            state=s.state,
            description=s.description,
            current=vm.current_snapshot == s.id,
        )

    def create_snapshot(
        self, uuid: str, name: str, *, memory: bool, description: str, deadline: Deadline
    ) -> SnapshotInfo:
        with self.site.transaction():
            vm = self._vm(uuid)
            if memory:
                self._expect(vm, S.RUNNING, S.PAUSED, verb="snapshot with memory")
            snap = SimSnapshot(
                id=str(uuidlib.uuid4()),
                name=name,
                created=now(),
                parent=vm.current_snapshot,
                with_memory=memory,
                state=vm.state if memory else S.STOPPED,
                description=description,
                config={
                    "vcpus": vm.vcpus,
                    "memory_mib": vm.memory_mib,
                    "disks": [attrs.asdict(d) for d in vm.disks],
                    "nics": [attrs.asdict(n) for n in vm.nics],
                    "resources": attrs.asdict(vm.resources),
                },
            )
            vm.snapshots[snap.id] = snap
            vm.current_snapshot = snap.id
            self.site.emit(self.host_name, EventKind.SNAPSHOT, vm, f"taken {name}")
            return self._snap_info(vm, snap)

    def list_snapshots(self, uuid: str, *, deadline: Deadline) -> list[SnapshotInfo]:
        with self.site.transaction():
            vm = self._vm(uuid)
            return [self._snap_info(vm, s) for s in vm.snapshots.values()]

    def _snap(self, vm: SimVM, snapshot_id: str) -> SimSnapshot:
        snap = vm.snapshots.get(snapshot_id)
        if snap is None:
            raise NotFound(f"VM {vm.name!r} has no snapshot {snapshot_id!r}")
        return snap

    def revert_snapshot(self, uuid: str, snapshot_id: str, *, deadline: Deadline) -> None:
        with self.site.transaction():
            vm = self._vm(uuid)
            snap = self._snap(vm, snapshot_id)
            cfg = copy.deepcopy(snap.config)
            target = snap.state if snap.with_memory else S.STOPPED
            if target in (S.RUNNING, S.PAUSED) and vm.state not in (S.RUNNING, S.PAUSED):
                self._check_memory(self._host, cfg["memory_mib"], f"reverting {vm.name!r}")
            vm.vcpus, vm.memory_mib = cfg["vcpus"], cfg["memory_mib"]
            current = {d.store: d for d in vm.disks}
            vm.disks = [SimDisk(**d) for d in cfg["disks"]]
            for d in vm.disks:  # the content is not reverted, so neither is its tracking
                if d.store in current:
                    d.cbt_gen, d.cbt = current[d.store].cbt_gen, current[d.store].cbt
            for d in current.values():  # a disk added since: gone, unless a snapshot has it
                if d.path not in {n.path for n in vm.disks} and not self._held(vm, d.path):
                    self._drop_volume(d)
            vm.nics = [SimNic(**n) for n in cfg["nics"]]
            vm.resources = Resources(**cfg["resources"])
            vm.current_snapshot = snap.id
            self._set_state(vm, target, R.RESTORED)
            self.site.emit(self.host_name, EventKind.SNAPSHOT, vm, f"reverted {snap.name}")

    def delete_snapshot(self, uuid: str, snapshot_id: str, *, deadline: Deadline) -> None:
        with self.site.transaction():
            vm = self._vm(uuid)
            snap = self._snap(vm, snapshot_id)
            for child in vm.snapshots.values():
                if child.parent == snap.id:
                    child.parent = snap.parent
            if vm.current_snapshot == snap.id:
                vm.current_snapshot = snap.parent
            del vm.snapshots[snap.id]
            attached = {d.path for d in vm.disks}
            for raw in snap.config["disks"]:  # disks only this snapshot still held
                if raw["path"] not in attached and not self._held(vm, raw["path"]):
                    self._drop_volume(SimDisk(**raw))
            self.site.emit(self.host_name, EventKind.SNAPSHOT, vm, f"deleted {snap.name}")

    # -- clone and migrate ----------------------------------------------------------------

    def clone_vm(self, uuid: str, name: str, *, linked: bool, deadline: Deadline) -> VMInfo:
        with self.site.transaction():
            vm = self._vm(uuid)
            self._expect(vm, S.STOPPED, verb="clone")
            host = self._host
            self._name_free(host, name)
            twin = SimVM(
                uuid=str(uuidlib.uuid4()),
                name=name,
                vcpus=vm.vcpus,
                memory_mib=vm.memory_mib,
                guest_os=vm.guest_os,
                has_os=vm.has_os,
                description=vm.description,
                resources=vm.resources,
                firmware=vm.firmware,
            )
            for d in vm.disks:
                base = d.path.rsplit("/", 1)[0]
                twin.disks.append(
                    SimDisk(
                        id=twin.device_id("disk"),
                        size_mib=d.size_mib,
                        name=d.name,
                        bus=d.bus,
                        path=f"{base}/{name}-{d.id}{'.linked' if linked else ''}.img",
                        pool=d.pool,
                    )
                )
            self._check_room(host, twin.disks, f"cloning VM {vm.name!r}")
            for src, dst in zip(vm.disks, twin.disks, strict=True):
                self.site.disks.copy(src.store, dst.store, src.size_bytes)
            self._keep_volumes(twin.disks)
            for n in vm.nics:
                twin.nics.append(self._nic(twin, NicSpec(network=n.network, model=n.model)))
            host.vms[twin.uuid] = twin
            self.site.emit(self.host_name, EventKind.CREATED, twin, f"clone of {vm.name}")
            return self._info(twin)

    def migrate_vm(self, uuid: str, target: Driver, *, live: bool, deadline: Deadline) -> None:
        if not isinstance(target, SimDriver) or target.site is not self.site:
            raise ValidationError(
                "the target sim host must be in the same site (same ?site= and ?state=) to migrate",
                field="target",
            )
        if target.host_name == self.host_name:
            raise ValidationError("the target is this host", field="target")
        with self.site.transaction():
            vm = self._vm(uuid)
            self._expect(vm, S.RUNNING if live else S.STOPPED, verb="migrate")
            dest = target._host
            if dest.maintenance:
                raise InvalidState(f"sim host {dest.name!r} is in maintenance: it takes no VM")
            if uuid in dest.vms:
                raise AlreadyExists(f"sim host {dest.name!r} already has VM {uuid}")
            target._name_free(dest, vm.name)
            if live:
                target._check_memory(dest, vm.memory_mib, f"migrating {vm.name!r}")
            del self._host.vms[uuid]
            dest.vms[uuid] = vm
            vm.reason = R.MIGRATED
            self.site.emit(self.host_name, EventKind.MIGRATED, vm, f"to {dest.name}")
            self.site.emit(dest.name, EventKind.MIGRATED, vm, f"from {self.host_name}")

    # -- observation ----------------------------------------------------------------------

    def list_volumes(self, *, deadline: Deadline) -> list[Volume]:
        with self.site.transaction():
            return [
                Volume(
                    path=v.path,
                    name=v.path.rsplit("/", 1)[-1],
                    pool=v.pool,
                    size_mib=v.size_mib,
                )
                for v in self.site.volumes.values()
            ]

    def subscribe(self, *, deadline: Deadline) -> EventSource:
        sub = Subscriber(self.site, self.host_name)
        with self.site.lock:
            self.site.subscribers.append(sub)
        return sub

    def get_stats(self, uuids: Sequence[str], *, deadline: Deadline) -> dict[str, VMStats]:
        with self.site.transaction():
            out = {}
            t = time.time()
            for uuid in uuids:
                vm = self._vm(uuid)
                cpu = vm.cpu_seconds
                if vm.running_since is not None:
                    cpu += (t - vm.running_since) * vm.vcpus * 0.05
                active = vm.state in (S.RUNNING, S.PAUSED)
                io = int(cpu * 1_000_000)
                out[uuid] = VMStats(
                    uuid=uuid,
                    timestamp=dt.datetime.now(dt.UTC),
                    cpu_time_ns=int(cpu * 1e9),
                    memory_used_mib=vm.memory_mib // 2 if active else 0,
                    disk_read_bytes=io * len(vm.disks),
                    disk_write_bytes=io // 2 * len(vm.disks),
                    net_rx_bytes=io * len(vm.nics),
                    net_tx_bytes=io // 3 * len(vm.nics),
                )
            return out

    def guest_info(self, uuid: str, *, deadline: Deadline) -> GuestInfo:
        with self.site.transaction():
            vm = self._vm(uuid)
            up = (
                vm.has_os
                and vm.state is S.RUNNING
                and vm.booted_at is not None
                and time.time() - vm.booted_at >= GUEST_DELAY
            )
            if not up:
                return GuestInfo(agent=AgentState.NOT_RUNNING)
            ips = tuple(
                f"192.0.2.{(int(vm.uuid[:4], 16) + i) % 250 + 2}" for i, _ in enumerate(vm.nics)
            )
            return GuestInfo(
                ip_addresses=ips, agent=AgentState.RUNNING, hostname=vm.name, os_name=vm.guest_os
            )

    def wait_changes(
        self, known: Mapping[str, VMInfo], *, deadline: Deadline
    ) -> dict[str, VMInfo | None]:
        """Block on the site's change condition until a VM's state or reason differs from
        ``known``. A site kept in a state file is also changed by other processes, which
        cannot signal this one: there the wait is cut to a quarter second (the core asks
        again)."""
        site = self.site
        with site.changed:
            found = self._changed(known)
            if not found:
                cap = 0.25 if site.path else None
                site.changed.wait(timeout=deadline.bound(cap))
                found = self._changed(known)
        return found

    def _changed(self, known: Mapping[str, VMInfo]) -> dict[str, VMInfo | None]:
        with self.site.transaction():
            out: dict[str, VMInfo | None] = {}
            for uuid, info in known.items():
                vm = self._host.vms.get(uuid)
                if vm is None:
                    out[uuid] = None
                elif (vm.state, vm.reason) != (info.state, info.reason):
                    out[uuid] = self._info(vm)
            return out

    # -- disk access: points in time, changed blocks, writes (backup and restore) ---------

    @staticmethod
    def _guest_up(vm: SimVM) -> bool:
        return (
            vm.has_os
            and vm.state is S.RUNNING
            and vm.booted_at is not None
            and time.time() - vm.booted_at >= GUEST_DELAY
        )

    def open_point_in_time(self, uuid: str, *, quiesce: bool, deadline: Deadline) -> PointInTime:
        with self.site.transaction():
            vm = self._vm(uuid)
            if quiesce:
                if not self._guest_up(vm):
                    raise InvalidState(
                        f"cannot quiesce VM {vm.name!r}: no guest agent is answering (it is "
                        f"{vm.state.value}{'' if vm.has_os else ', without a guest OS'})",
                        current=vm.state,
                    )
                consistency = Consistency.QUIESCED
            elif vm.state is S.STOPPED:
                consistency = Consistency.STOPPED
            else:
                consistency = Consistency.CRASH
            overlays: dict[str, Overlay] = {}
            disks = []
            for d in vm.disks:
                # End the disk's current generation: writes from now on carry the next one.
                overlays[d.id] = Overlay(d.store, d.cbt_gen, d.size_bytes)
                disks.append(
                    PointInTimeDisk(
                        id=d.id,
                        size_bytes=d.size_bytes,
                        name=d.name,
                        bus=d.bus,
                        checkpoint=f"{d.store}:{d.cbt_gen}",
                    )
                )
                d.cbt_gen += 1
            pit = SimPointInTime(str(uuidlib.uuid4()), overlays)
            with self.site.disks.lock:
                self.site.disks.pits[pit.id] = pit
            return PointInTime(
                id=pit.id,
                vm_uuid=uuid,
                disks=tuple(disks),
                consistency=consistency,
                handle=pit,
            )

    def _overlay(self, pit: PointInTime, disk_id: str) -> Overlay:
        open_pit = self.site.disks.pits.get(pit.id)
        if open_pit is None:
            raise NotFound(f"the point in time {pit.id} is closed")
        overlay = open_pit.overlays.get(disk_id)
        if overlay is None:
            raise NotFound(f"the point in time {pit.id} has no disk {disk_id!r}")
        return overlay

    def allocated_extents(
        self, pit: PointInTime, disk_id: str, *, deadline: Deadline
    ) -> list[Extent]:
        world = self.site.disks
        with world.lock:
            ov = self._overlay(pit, disk_id)
            now_used = set(world.data(ov.store, ov.size).blocks())
            holes_then = {i for i, (old, _) in ov.saved.items() if old is None}
            data_then = {i for i, (old, _) in ov.saved.items() if old is not None}
            used = (now_used - holes_then) | data_then
        out = []
        for first, count in runs(used):
            start = first * BLOCK
            end = min((first + count) * BLOCK, ov.size)
            if end > start:
                out.append(Extent(start, end - start))
        return out

    def read_extent(
        self, pit: PointInTime, disk_id: str, offset: int, length: int, *, deadline: Deadline
    ) -> bytes:
        world = self.site.disks
        with world.lock:
            ov = self._overlay(pit, disk_id)
            if offset < 0 or length <= 0 or offset + length > ov.size:
                raise ValidationError(
                    f"cannot read {length} bytes at {offset} of a disk of {ov.size} bytes",
                    field="extent",
                )
            data = world.data(ov.store, ov.size)
            parts = []
            for index in blocks_of(offset, length):
                block = ov.saved[index][0] if index in ov.saved else data.read_block(index)
                parts.append(block or bytes(BLOCK))
        first = blocks_of(offset, length).start * BLOCK
        return b"".join(parts)[offset - first : offset - first + length]

    def close_point_in_time(self, pit: PointInTime, *, deadline: Deadline) -> None:
        with self.site.disks.lock:
            open_pit = self.site.disks.pits.pop(pit.id, None)
        if open_pit is not None:
            open_pit.open = False

    def changed_extents(
        self, pit: PointInTime, disk_id: str, since: str, *, deadline: Deadline
    ) -> list[Extent]:
        store, _, gen_text = since.rpartition(":")
        with self.site.transaction(), self.site.disks.lock:
            ov = self._overlay(pit, disk_id)
            if store != ov.store or not gen_text.isdigit() or int(gen_text) > ov.generation:
                raise NotFound(
                    f"disk {disk_id!r} has no checkpoint {since!r} (it was replaced, or its "
                    "changed-block tracking was reset)"
                )
            vm = self._vm(pit.vm_uuid)
            disk = next((d for d in vm.disks if d.store == ov.store), None)
            if disk is None:
                raise NotFound(f"VM {vm.name!r} no longer has disk {disk_id!r}")
            old = int(gen_text)
            marks = {int(i): m for i, m in disk.cbt.items()}
            for index, (_, mark) in ov.saved.items():  # as they were at the point in time
                if mark is None:
                    marks.pop(index, None)
                else:
                    marks[index] = mark
            changed = [i for i, m in marks.items() if old < m <= ov.generation]
        out = []
        for first, count in runs(changed):
            start = first * BLOCK
            end = min((first + count) * BLOCK, ov.size)
            out.append(Extent(start, end - start))
        return out

    def write_extents(
        self, uuid: str, disk_id: str, extents: Sequence[ExtentData], *, deadline: Deadline
    ) -> None:
        with self.site.transaction():
            vm = self._vm(uuid)
            self._expect(vm, S.STOPPED, verb="write to the disks of")
            self._write(vm, disk_id, extents)

    def guest_write(self, uuid: str, disk_id: str, offset: int, data: bytes) -> None:
        """Sim only, for tests: the guest of a VM in any state writes ``data`` at
        ``offset`` of one of its disks (as an application inside a running VM would)."""
        with self.site.transaction():
            self._write(self._vm(uuid), disk_id, [ExtentData(offset, len(data), data)])

    def _write(self, vm: SimVM, disk_id: str, extents: Sequence[ExtentData]) -> None:
        disk = next((d for d in vm.disks if d.id == disk_id), None)
        if disk is None:
            raise NotFound(f"VM {vm.name!r} has no disk {disk_id!r}")
        size = disk.size_bytes
        for e in extents:
            if e.offset + e.length > size:
                raise ValidationError(
                    f"an extent of {e.length} bytes at {e.offset} ends past the end of disk "
                    f"{disk_id!r} ({size} bytes)",
                    field="extents",
                )
        world = self.site.disks
        with world.lock:
            data = world.data(disk.store, size)
            try:
                for e in extents:
                    for index in blocks_of(e.offset, e.length):
                        start = index * BLOCK
                        lo, hi = max(e.offset, start), min(e.end, start + BLOCK)
                        old = data.read_block(index)
                        piece = None if e.data is None else e.data[lo - e.offset : hi - e.offset]
                        if lo == start and hi - lo == BLOCK:
                            new = piece
                        else:
                            buf = bytearray(old or bytes(BLOCK))
                            buf[lo - start : hi - start] = piece or bytes(hi - lo)
                            new = bytes(buf)
                        if new is not None and not any(new):
                            new = None
                        if old is None and new is None:
                            continue  # zeroes over a hole: nothing changes
                        for overlay in world.overlays_of(disk.store):  # copy-on-write
                            overlay.saved.setdefault(index, (old, disk.cbt.get(str(index))))
                        data.write_block(index, new)
                        disk.cbt[str(index)] = disk.cbt_gen
            except DiskFull as exc:
                raise InsufficientResources(
                    f"the storage of disk {disk_id!r} of VM {vm.name!r} is full: {exc}"
                ) from exc
