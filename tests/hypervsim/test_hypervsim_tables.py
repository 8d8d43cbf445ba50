"""The tables are whole and the model keeps to them: every class, method, fault and property
the simulator serves is in drivers/hypervsim/tables.py with its source."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import hypervsim
from hypervsim import model
from hypervsim import tables as T

pytestmark = pytest.mark.hyperv

SRC = Path(hypervsim.__file__).parent


def test_classes_have_sources_and_keys() -> None:
    for name, spec in T.CLASSES.items():
        assert spec.source, name
        assert set(spec.keys) <= set(spec.props), name
        for ty in spec.props.values():
            base = ty.removesuffix("[]")
            assert base in {"string", "boolean", "datetime", "object"} or re.fullmatch(
                r"[us]int(8|16|32|64)", base
            ), (name, ty)


def test_methods_match_the_model() -> None:
    implemented = {n.removeprefix("_m_") for n in dir(model.World) if n.startswith("_m_")}
    assert implemented == {m for (_cls, m) in T.METHODS}
    for spec in T.METHODS.values():
        assert spec.cls in T.CLASSES and spec.source.startswith("HV2/")


def test_every_fault_raised_is_in_the_table() -> None:
    text = "".join(p.read_text() for p in SRC.glob("*.py"))
    raised = set(re.findall(r'(?:Fault|WmiFault)\(\s*"(\w+)"', text))
    assert raised and raised <= set(T.FAULTS), raised - set(T.FAULTS)
    for kind, f in T.FAULTS.items():
        assert f.code in ("s:Sender", "s:Receiver") and f.subcode[:2] in ("a:", "w:", "n:")
        assert f.source and f.wsman_code >> 16 == 0x8033, kind


def test_state_tables() -> None:
    for (frm, rs), to in T.TRANSITIONS.items():
        assert frm in T.ENABLED_STATES and to in T.ENABLED_STATES and rs in T.REQUESTED_STATES
    assert set(T.RETURN_CODES) >= {0, 4096, 32775} and set(T.JOB_STATES) >= {4, 7, 10}
    for code, field in T.SUMMARY_FIELDS.items():
        assert field in T.CLASSES["Msvm_SummaryInformation"].props, code


def test_served_instances_keep_to_their_class() -> None:
    """No property the model sets is dropped on the wire for want of a table entry."""
    cfg = model.Config(hosts=2, vms=3, running=2, guest_delay=0.0)
    world = model.World(cfg)
    vm = next(iter(world.vms.values()))
    world.vms[vm.guid].snapshots.append(
        model.Snapshot(vm.vssd.copy(), [r.copy() for r in vm.rasds], saved=False)
    )
    world._job(world.hosts[0], "test", lambda: None)
    for host in world.hosts:
        for cls in T.CLASSES:
            for inst in world.instances(host, cls):
                assert inst.cls == cls
                extra = set(inst.props) - set(T.CLASSES[cls].props)
                assert not extra, (cls, extra)
                assert all(inst.props.get(k) not in (None, "") for k in T.CLASSES[cls].keys)
    vsms = next(
        x for x in world.services[world.hosts[0]] if x.cls == "Msvm_VirtualSystemManagementService"
    )
    args = {"RequestedInformation": list(T.SUMMARY_FIELDS)}
    rc, out = world.invoke(world.hosts[0], vsms, "GetSummaryInformation", args)
    assert rc == 0
    for info in out["SummaryInformation"]:
        assert set(info.props) <= set(T.CLASSES["Msvm_SummaryInformation"].props)
