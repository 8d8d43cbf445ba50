from __future__ import annotations

import pytest

import vmctl
from vmctl import Capability, NicSpec, Resources, VMSpec
from vmctl._capabilities import RESOURCE_CAPABILITIES
from vmctl_conformance import clause
from vmctl_conformance._kit import Kit


@clause("VAL-SPEC-1")
@pytest.mark.parametrize(
    "bad",
    [
        {"name": ""},
        {"name": "x", "vcpus": 0},
        {"name": "x", "memory_mib": -512},
        {"name": "x", "nics": [{"network": "n", "mac": "not-a-mac"}]},
    ],
)
def test_invalid_spec_rejected_before_backend(kit: Kit, bad: dict[str, object]) -> None:
    before = {i.uuid for i in kit.hv.list_vms()}
    args = dict(bad)
    with pytest.raises(vmctl.ValidationError):
        nics = [NicSpec(**n) for n in args.pop("nics", [])]  # type: ignore[attr-defined]
        kit.hv.create_vm(VMSpec(nics=nics, **args))  # type: ignore[arg-type]
    assert {i.uuid for i in kit.hv.list_vms()} == before


@clause("CAP-NEG-1")
@pytest.mark.parametrize("field", sorted(RESOURCE_CAPABILITIES))
def test_spec_resource_controls_applied_or_refused(kit: Kit, field: str) -> None:
    memory = int(kit.options.get("memory_mib", "128"))
    value = {
        "cpu_shares": 1000,
        "cpu_reservation_percent": 10,
        "cpu_limit_percent": 50,
        "memory_shares": 1000,
        "memory_reservation_mib": memory // 2,
        "memory_limit_mib": memory * 4,
    }[field]
    spec = kit.spec("capneg", resources=Resources(**{field: value}))
    cap = Capability(RESOURCE_CAPABILITIES[field])
    if cap in kit.hv.capabilities:
        vm = kit.track(kit.hv.create_vm(spec))
        got = getattr(vm.config().resources, field)
        assert got is not None and abs(got - value) <= max(1, value * 0.05), (field, got)
        return
    with pytest.raises(vmctl.NotSupported) as err:
        kit.track(kit.hv.create_vm(spec))
    assert err.value.capability is cap
    assert spec.name not in {i.name for i in kit.hv.list_vms()}
