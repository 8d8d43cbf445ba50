from __future__ import annotations

import pytest

import vmctl
from vmctl import Capability, PowerState
from vmctl_conformance import clause, requires
from vmctl_conformance._kit import Kit

S = PowerState


@clause("CLONE-FULL-1")
@requires(Capability.CLONE)
def test_full_clone(kit: Kit) -> None:
    source = kit.vm("src", disks=1, nics=1)
    clone = kit.track(source.clone(kit.name("clone")))
    a, b = source.config(), clone.config()
    assert clone.uuid != source.uuid
    assert clone.info().state is S.STOPPED
    kit.settled([clone, source], S.STOPPED, "clone")
    assert (b.vcpus, b.memory_mib, len(b.disks)) == (a.vcpus, a.memory_mib, len(a.disks))
    assert not {n.mac for n in a.nics} & {n.mac for n in b.nics}
    clone.delete()
    assert source.config().disks == a.disks


@clause("CLONE-STATE-1")
@requires(Capability.CLONE)
def test_clone_running_refused(kit: Kit) -> None:
    source = kit.vm("src-run", state=S.RUNNING)
    with pytest.raises(vmctl.InvalidState):
        kit.track(source.clone(kit.name("clone")))


@clause("CLONE-LINKED-1")
@requires(Capability.LINKED_CLONE)
def test_linked_clone(kit: Kit) -> None:
    source = kit.vm("src-linked")
    clone = kit.track(source.clone(kit.name("linked"), linked=True))
    assert clone.info().state is S.STOPPED
    kit.settled([clone, source], S.STOPPED, "clone(linked=True)")
    clone.delete()
    assert source.info().state is S.STOPPED
    assert len(source.config().disks) == 1
