from __future__ import annotations

from vmctl import Capability, EventKind, PowerState
from vmctl_conformance import clause, requires
from vmctl_conformance._kit import Kit


@clause("EVT-STATE-1")
@requires(Capability.EVENTS)
def test_state_change_event(kit: Kit) -> None:
    vm = kit.vm("evt-state")
    with kit.hv.watch(vm=vm, kinds=[EventKind.STATE_CHANGED], timeout=kit.timeout) as events:
        vm.start(timeout=kit.timeout)
        for event in events:
            if event.state is PowerState.RUNNING:
                break
        else:
            raise AssertionError("no state_changed event with state running arrived")


@clause("EVT-LIFE-1")
@requires(Capability.EVENTS)
def test_created_and_deleted_events(kit: Kit) -> None:
    with kit.hv.watch(kinds=[EventKind.CREATED, EventKind.DELETED], timeout=kit.timeout) as events:
        vm = kit.vm("evt-life")
        vm.delete()
        seen = set()
        for event in events:
            if event.vm_uuid == vm.uuid:
                seen.add(event.kind)
            if seen == {EventKind.CREATED, EventKind.DELETED}:
                break
        assert seen == {EventKind.CREATED, EventKind.DELETED}
