"""MOVE clauses: ``vmctl.move`` from the host under test to the hypervisor of --vmctl-move-to
($VMCTL_MOVE_TO; another vendor's), else to the second host. The target's network and
pool come from its driver's ``kit_defaults`` or the options ``move_network`` and
``move_pool``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

import vmctl
from vmctl import VM, Capability, Hypervisor, PowerState, VMSpec
from vmctl_conformance import clause, requires
from vmctl_conformance._defaults import from_host
from vmctl_conformance._kit import Kit

from .test_backup import disk_digests, expected_digest, written_vm

MIB = 1024 * 1024


class Target:
    def __init__(self, kit: Kit, hv: Hypervisor) -> None:
        self.kit = kit
        self.hv = hv
        same = hv is kit.other
        found = {} if same else from_host(hv)[0]
        self.network = kit.options.get("move_network") or (
            kit.network if same else found.get("network")
        )
        self.pool = kit.options.get("move_pool") or (kit.pool if same else found.get("pool"))

    def ready(self) -> None:
        """Skip when the target cannot take a moved VM (checked in the test, after the
        kit's own check of the source's capabilities)."""
        for cap in (Capability.CREATE, Capability.RESTORE, Capability.BACKUP):
            if cap not in self.hv.capabilities:
                pytest.skip(f"the move target {self.hv.uri} lacks the capability {cap.value!r}")

    def networks(self) -> dict[str, str] | None:
        if not self.network or self.network == self.kit.network:
            return None
        return {self.kit.network: self.network}

    def move(self, vm: VM, **kw: object) -> vmctl.MoveReport:
        # A name of its own: the target may share the source's name space (the second host
        # of a Xen pool or of a vCenter), where the source's name is taken.
        kw.setdefault("name", f"{vm.name}-mv")
        return vmctl.move(
            vm,
            self.hv,
            network_map=self.networks(),
            storage=self.pool,
            timeout=self.kit.timeout * 4,
            **kw,  # type: ignore[arg-type]
        )


@pytest.fixture
def target(kit: Kit, vmctl_move_to: Hypervisor | None) -> Iterator[Target]:
    hv = vmctl_move_to or kit.other
    if hv is None:
        pytest.skip("no move target given (--vmctl-move-to / VMCTL_MOVE_TO, or a second host)")
    before = {i.uuid for i in hv.list_vms()}
    yield Target(kit, hv)
    for info in hv.list_vms():  # what the clause made there, also after a failure
        if info.uuid not in before and info.name.startswith(kit.prefix):
            with contextlib.suppress(vmctl.NotFound):
                hv.vm(info.uuid).delete(force=True, timeout=kit.timeout)


@clause("MOVE-ROUNDTRIP-1")
@requires(Capability.BACKUP)
def test_move_roundtrip(kit: Kit, target: Target) -> None:
    target.ready()
    vm, history = written_vm(kit, "move")
    cfg = vm.config()
    sizes = [d.size_mib * MIB for d in cfg.disks]
    expected = [expected_digest(n, w) for n, w in zip(sizes, history, strict=True)]
    report = target.move(vm)
    assert report.verified is True
    assert [d.source_digest for d in report.disks] == [d.target_digest for d in report.disks]
    moved = target.hv.vm(report.target_uuid or "")
    got = moved.config()
    assert (got.vcpus, got.memory_mib, len(got.disks)) == (cfg.vcpus, cfg.memory_mib, 2)
    from vmctl.backup import disk_digests as digests_of

    assert digests_of(moved, lengths=sizes) == expected  # read back through the target
    assert vm.info().state is PowerState.STOPPED
    assert disk_digests(vm) == expected  # the source is as it was
    assert any(n.item == "nic 0 MAC" for n in report.mapping)


@clause("MOVE-DELETE-1")
@requires(Capability.BACKUP)
def test_move_deletes_the_source_after_verification(kit: Kit, target: Target) -> None:
    target.ready()
    vm, _ = written_vm(kit, "move-del", disks=1)
    report = target.move(vm, keep_source=False)
    assert report.verified is True and report.source_deleted is True
    assert vm.uuid not in {i.uuid for i in kit.hv.list_vms()}
    assert report.target_uuid in {i.uuid for i in target.hv.list_vms()}


@clause("MOVE-REFUSE-1")
@requires(Capability.BACKUP)
def test_move_refusals_touch_nothing(kit: Kit, target: Target) -> None:
    target.ready()
    vm = kit.vm("move-ref")
    taken = target.hv.create_vm(VMSpec(name=kit.name("move-taken"), memory_mib=128))
    before = sorted(i.uuid for i in target.hv.list_vms())
    with pytest.raises(vmctl.AlreadyExists):
        target.move(vm, name=taken.name)
    with pytest.raises(vmctl.ValidationError):
        vmctl.move(vm, target.hv, network_map={"vmctl-kit-no-such-network": "x"})
    report = target.move(vm, dry_run=True)
    assert report.dry_run is True and report.target_uuid is None
    assert sorted(i.uuid for i in target.hv.list_vms()) == before
    assert vm.info().state is PowerState.STOPPED
