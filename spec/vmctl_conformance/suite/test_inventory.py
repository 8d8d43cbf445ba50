from __future__ import annotations

import uuid

import pytest

import vmctl
from vmctl import PowerState
from vmctl_conformance import clause
from vmctl_conformance._kit import Kit


@clause("INV-LIST-1")
def test_list_includes_created_vm_with_state(kit: Kit) -> None:
    stopped = kit.vm("list-a")
    running = kit.vm("list-b", state=PowerState.RUNNING)
    listed = {i.uuid: i for i in kit.hv.list_vms()}
    assert listed[stopped.uuid].state is PowerState.STOPPED
    assert listed[running.uuid].state is PowerState.RUNNING
    assert listed[stopped.uuid].name == stopped.name


@clause("INV-GET-1")
def test_get_by_name_and_uuid(kit: Kit) -> None:
    vm = kit.vm("get")
    assert kit.hv.vm(vm.name).uuid == vm.uuid
    assert kit.hv.vm(vm.uuid).name == vm.name
    with pytest.raises(vmctl.NotFound):
        kit.hv.vm(kit.name("absent"))
    with pytest.raises(vmctl.NotFound):
        kit.hv.vm(str(uuid.uuid4()))
