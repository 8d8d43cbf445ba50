"""The kit's helpers for tests: making VMs with the prefix, and cleaning up after them."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import vmctl
from vmctl import (
    VM,
    BootSource,
    Capability,
    DiskSpec,
    Hypervisor,
    NicSpec,
    PowerState,
    Resources,
    VMSpec,
)
from vmctl.spi import Deadline, StorageListing

from ._expect import expect

if TYPE_CHECKING:
    from vmctl.backup import Repository

#: Chunk size of the repositories the kit makes (small: the kit's disks are small).
KIT_CHUNK_SIZE = 1024 * 1024
#: Default of the settle_s option: seconds after a request returned before the kit reads
#: the state again.
DEFAULT_SETTLE_S = "0.5"


class Kit:
    """What a kit test works with: the connections, the options, a VM factory."""

    #: Paths of every disk the kit's VMs had (for the leak report: disks left behind).
    disk_paths: ClassVar[set[str]] = set()

    def __init__(
        self, hv: Hypervisor, other: Hypervisor | None, prefix: str, options: Mapping[str, str]
    ) -> None:
        self.hv = hv
        self.other = other
        self.prefix = prefix
        self.options = dict(options)
        self.created: list[VM] = []
        self.timeout = float(self.options.get("op_timeout", "180"))
        #: How long after a request returned the kit looks at the state again (settle_s).
        self.settle = float(self.options.get("settle_s", DEFAULT_SETTLE_S))
        self._repos: list[str] = []

    # -- options --------------------------------------------------------------------------

    @property
    def network(self) -> str:
        return self.options.get("network", "default")

    @property
    def pool(self) -> str | None:
        return self.options.get("pool") or None

    @property
    def boot(self) -> BootSource | None:
        o = self.options
        if o.get("boot_iso"):
            return BootSource(iso=o["boot_iso"])
        if o.get("boot_kernel"):
            return BootSource(
                kernel=o["boot_kernel"],
                initrd=o.get("boot_initrd") or None,
                cmdline=o.get("boot_cmdline", ""),
            )
        return None

    @property
    def guest(self) -> bool:
        """Whether the kit can boot a guest OS here. Suspend, live migration, memory
        snapshots and hot-plug run on a guest with an OS when it can: real hypervisors may
        need the guest's cooperation for them (XenAPI: VM_LACKS_FEATURE without PV drivers)."""
        return self.boot is not None

    @property
    def inventory_vms(self) -> int:
        """How many VMs the inventory clause makes, to cross a driver's page size
        (``inventory_vms``, default 12)."""
        return int(self.options.get("inventory_vms", "12"))

    def has(self, cap: Capability) -> bool:
        return cap in self.hv.capabilities

    # -- storage --------------------------------------------------------------------------

    def storage(self, hv: Hypervisor | None = None) -> StorageListing | None:
        """The driver's storage listing (``vmctl.spi.StorageListing``), if it has one."""
        return storage_of(hv or self.hv)

    def volume_paths(self, hv: Hypervisor | None = None) -> set[str]:
        listing = self.storage(hv)
        assert listing is not None
        return {v.path for v in listing.list_volumes(deadline=Deadline.after(self.timeout))}

    # -- making things --------------------------------------------------------------------

    def name(self, hint: str = "vm") -> str:
        return f"{self.prefix}{hint}-{secrets.token_hex(3)}"

    def spec(
        self,
        hint: str = "vm",
        *,
        os: bool = False,
        disks: int = 1,
        nics: int = 1,
        memory_mib: int | None = None,
        vcpus: int = 1,
        **kw: Any,
    ) -> VMSpec:
        boot = self.boot if os else None
        return VMSpec(
            name=self.name(hint),
            vcpus=vcpus,
            memory_mib=memory_mib or int(self.options.get("memory_mib", "128")),
            disks=[
                DiskSpec(size_mib=int(self.options.get("disk_mib", "64")), pool=self.pool)
                for _ in range(disks)
            ],
            nics=[NicSpec(network=self.network) for _ in range(nics)],
            boot=boot,
            **kw,
        )  # type: ignore[arg-type]

    def vm(
        self,
        hint: str = "vm",
        *,
        state: PowerState = PowerState.STOPPED,
        os: bool = False,
        **kw: Any,
    ) -> VM:
        """A new VM with the prefix, brought to ``state`` (tracked for cleanup)."""
        vm = self.track(self.hv.create_vm(self.spec(hint, os=os, **kw)))  # type: ignore[arg-type]
        if state is not PowerState.STOPPED:
            vm.start(timeout=self.timeout)
        if state is PowerState.PAUSED:
            vm.pause(timeout=self.timeout)
        elif state is PowerState.SUSPENDED:
            vm.suspend(timeout=self.timeout)
        return vm

    def track(self, vm: VM) -> VM:
        self.created.append(vm)
        return vm

    def note_disks(self, vm: VM) -> None:
        """Remember the VM's disks, to report any the backend still has at the end."""
        with contextlib.suppress(vmctl.VmctlError):
            Kit.disk_paths.update(d.path for d in vm.config().disks if d.path)

    def repo_url(self) -> str:
        """A new, empty place for a backup repository: under the ``backup_repo`` option (an
        fsspec URL) when given, else a temporary directory; removed at cleanup."""
        base = self.options.get("backup_repo")
        url = (
            f"{base.rstrip('/')}/{self.name('repo')}"
            if base
            else tempfile.mkdtemp(prefix=self.prefix + "repo-")
        )
        self._repos.append(url)
        return url

    def repo(self) -> Repository:
        from vmctl.backup import open_repo

        return open_repo(self.repo_url(), chunk_size=KIT_CHUNK_SIZE)

    def settled(self, vms: VM | Sequence[VM], state: PowerState, request: str) -> None:
        """Each VM is still in ``state`` the settle time (option ``settle_s``) after
        ``request`` returned it there: a request must not return before the host is done
        (e.g. a reboot that returns RUNNING and halts the guest a moment later)."""
        time.sleep(self.settle)
        for vm in [vms] if isinstance(vms, VM) else vms:
            expect(
                vm.info().state,
                state,
                f"state of {vm.name} read again {self.settle:g} s after {request} returned",
            )

    def wait_until(
        self, check: Callable[[], bool], what: str, timeout: float | None = None
    ) -> None:
        """Wait for something the spec allows to take a while (e.g. a guest's IP)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        delay = 0.05
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    # -- cleaning up ----------------------------------------------------------------------

    def cleanup(self) -> list[str]:
        """Delete every VM this test made, on whichever host it is now; return failures."""
        problems = []
        for vm in reversed(self.created):
            for hv in filter(None, (self.hv, self.other)):
                try:
                    handle = hv.vm(vm.uuid)
                except vmctl.NotFound:
                    continue
                try:
                    self.note_disks(handle)
                    handle.delete(force=True, timeout=self.timeout)
                except vmctl.VmctlError as exc:
                    problems.append(f"{vm.name}: {exc}")
        self.created.clear()
        for url in self._repos:
            try:
                if "://" in url:
                    import fsspec

                    fs, path = fsspec.core.url_to_fs(url)
                    if fs.exists(path):
                        fs.rm(path, recursive=True)
                else:
                    shutil.rmtree(url, ignore_errors=True)
            except Exception as exc:  # the repository is the kit's own scratch space
                problems.append(f"repository {url}: {exc}")
        self._repos.clear()
        return problems


def storage_of(hv: Hypervisor) -> StorageListing | None:
    """The driver's storage listing, if it implements ``vmctl.spi.StorageListing``."""
    driver = hv._driver
    return driver if isinstance(driver, StorageListing) else None


def leftovers(hvs: list[Hypervisor], prefix: str) -> list[str]:
    """VMs with the kit's prefix on the given hosts and, where the driver lists its storage,
    disks and snapshot data left behind: objects named with the prefix, and disks the
    kit's VMs had (``Kit.disk_paths``)."""
    out = []
    seen: set[str] = set()
    for hv in hvs:
        out += [
            f"{hv.uri}: VM {i.name} ({i.uuid})" for i in hv.list_vms() if i.name.startswith(prefix)
        ]
        listing = storage_of(hv)
        if listing is None:
            continue
        for v in listing.list_volumes(deadline=Deadline.after(120.0)):
            named = prefix in v.path or prefix in (v.name or "")
            if (named or v.path in Kit.disk_paths) and v.path not in seen:
                seen.add(v.path)
                size = f", {v.size_mib} MiB" if v.size_mib is not None else ""
                out.append(f"{hv.uri}: {v.kind} {v.path}{size}")
    return out


# -- probes: how to ask for each capability, to check that a missing one says so ---------

Probe = Callable[[Kit], object]


def _running(kit: Kit) -> VM:
    return kit.vm("probe", state=PowerState.RUNNING)


def _stopped(kit: Kit) -> VM:
    return kit.vm("probe")


def _no_incremental(kit: Kit) -> None:
    """Without changed-block tracking no request fails: the core backs up in full and says
    why. Check that, then report the capability missing as the kit expects."""
    from vmctl.backup import BackupKind

    vm, repo = _stopped(kit), kit.repo()
    vm.backup(repo)
    second = vm.backup(repo)
    if second.kind is not BackupKind.FULL or "backup_incremental" not in second.reason:
        raise AssertionError(f"without backup_incremental the backup was {second.reason!r}")
    raise vmctl.NotSupported(
        "full backups only, as reported", capability=Capability.BACKUP_INCREMENTAL
    )


PROBES: dict[Capability, Probe] = {
    Capability.SHUTDOWN: lambda k: _running(k).shutdown(timeout=5),
    Capability.REBOOT: lambda k: _running(k).reboot(),
    Capability.RESET: lambda k: _running(k).reset(),
    Capability.PAUSE: lambda k: _running(k).pause(),
    Capability.SUSPEND: lambda k: _running(k).suspend(),
    Capability.SET_VCPUS: lambda k: _stopped(k).reconfigure(vcpus=2),
    Capability.SET_MEMORY: lambda k: _stopped(k).reconfigure(memory_mib=256),
    Capability.HOT_VCPUS: lambda k: _running(k).reconfigure(vcpus=2),
    Capability.HOT_MEMORY: lambda k: _running(k).reconfigure(memory_mib=256),
    Capability.CPU_SHARES: lambda k: _stopped(k).set_resources(Resources(cpu_shares=2048)),
    Capability.CPU_RESERVATION: lambda k: _stopped(k).set_resources(
        Resources(cpu_reservation_percent=10)
    ),
    Capability.CPU_LIMIT: lambda k: _stopped(k).set_resources(Resources(cpu_limit_percent=50)),
    Capability.MEMORY_SHARES: lambda k: _stopped(k).set_resources(Resources(memory_shares=2000)),
    Capability.MEMORY_RESERVATION: lambda k: _stopped(k).set_resources(
        Resources(memory_reservation_mib=64)
    ),
    Capability.MEMORY_LIMIT: lambda k: _stopped(k).set_resources(Resources(memory_limit_mib=1024)),
    Capability.ADD_DISK: lambda k: _stopped(k).add_disk(DiskSpec(size_mib=16, pool=k.pool)),
    Capability.REMOVE_DISK: lambda k: _stopped(k).remove_disk("none"),
    Capability.ADD_NIC: lambda k: _stopped(k).add_nic(NicSpec(network=k.network)),
    Capability.REMOVE_NIC: lambda k: _stopped(k).remove_nic("none"),
    Capability.HOTPLUG_DISK: lambda k: _running(k).add_disk(DiskSpec(size_mib=16, pool=k.pool)),
    Capability.HOTPLUG_NIC: lambda k: _running(k).add_nic(NicSpec(network=k.network)),
    Capability.SNAPSHOT: lambda k: _stopped(k).snapshot("probe"),
    Capability.SNAPSHOT_MEMORY: lambda k: _running(k).snapshot("probe", memory=True),
    Capability.CLONE: lambda k: _stopped(k).clone(k.name("clone")),
    Capability.LINKED_CLONE: lambda k: _stopped(k).clone(k.name("clone"), linked=True),
    Capability.MIGRATE_LIVE: lambda k: _running(k).migrate(k.other or k.hv),
    Capability.MIGRATE_COLD: lambda k: _stopped(k).migrate(k.other or k.hv),
    Capability.EVENTS: lambda k: k.hv.watch(timeout=1),
    Capability.STATS: lambda k: k.hv.stats(),
    Capability.GUEST_INFO: lambda k: _stopped(k).guest_info(),
    Capability.BACKUP: lambda k: _stopped(k).backup(k.repo_url()),
    Capability.BACKUP_INCREMENTAL: _no_incremental,
    Capability.BACKUP_QUIESCE: lambda k: _running(k).backup(k.repo_url(), quiesce=True),
    Capability.RESTORE: lambda k: k.repo().restore("none", k.hv),
}
