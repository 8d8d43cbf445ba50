"""Specs are validated at construction: bad input is a ValidationError naming the field."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

import vmctl
from vmctl import BootSource, DiskSpec, NicSpec, Resources, VMSpec

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True),
    st.text(max_size=100),
    st.lists(st.integers(), max_size=3),
)


@given(name=anything, vcpus=anything, memory_mib=anything)
def test_vmspec_is_valid_or_a_validation_error(
    name: object, vcpus: object, memory_mib: object
) -> None:
    try:
        spec = VMSpec(name=name, vcpus=vcpus, memory_mib=memory_mib)  # type: ignore[arg-type]
    except vmctl.ValidationError as exc:
        assert exc.field in {"name", "vcpus", "memory_mib"}
        assert str(exc).startswith(exc.field)
    else:
        assert isinstance(spec.name, str) and 1 <= len(spec.name) <= 80
        assert isinstance(spec.vcpus, int) and spec.vcpus >= 1
        assert isinstance(spec.memory_mib, int) and spec.memory_mib >= 16


@given(size=anything, mac=anything)
def test_devices_valid_or_validation_error(size: object, mac: object) -> None:
    for build in (
        lambda: DiskSpec(size_mib=size),  # type: ignore[arg-type]
        lambda: NicSpec(network="n", mac=mac),
    ):  # type: ignore[arg-type]
        with contextlib.suppress(vmctl.ValidationError):
            build()


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "cpu_shares",
                "cpu_reservation_percent",
                "cpu_limit_percent",
                "memory_shares",
                "memory_reservation_mib",
                "memory_limit_mib",
            ]
        ),
        st.integers(-5, 10**7),
    )
)
def test_resources_valid_or_validation_error(fields: dict[str, int]) -> None:
    try:
        res = Resources(**fields)
    except vmctl.ValidationError as exc:
        assert exc.field in fields
    else:
        assert res.set_fields() == fields


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"name": ""}, "must not be empty"),
        ({"name": "a/b"}, "slash"),
        ({"name": " web"}, "white space"),
        ({"name": "x" * 81}, "limit is 80"),
        ({"name": "tab\there"}, "control"),
        ({"name": "x", "vcpus": 0}, "between 1 and"),
        ({"name": "x", "vcpus": True}, "whole number"),
        ({"name": "x", "memory_mib": 1.5}, "whole number"),
        (
            {"name": "x", "memory_mib": 512, "resources": Resources(memory_limit_mib=256)},
            "below memory_mib",
        ),
        (
            {
                "name": "x",
                "nics": [
                    NicSpec(network="a", mac="52:54:00:00:00:01"),
                    NicSpec(network="b", mac="52:54:00:00:00:01"),
                ],
            },
            "unique",
        ),
        ({"name": "x", "disks": ["10G"]}, "must be a DiskSpec"),
    ],
)
def test_messages_say_what_is_wrong(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(vmctl.ValidationError, match=words):
        VMSpec(**kwargs)  # type: ignore[arg-type]


def test_mac_rules() -> None:
    assert NicSpec(network="n", mac="52:54:00:AA:bb:01").mac == "52:54:00:aa:bb:01"
    with pytest.raises(vmctl.ValidationError, match="multicast"):
        NicSpec(network="n", mac="01:00:5e:00:00:01")


def test_boot_source_rules() -> None:
    with pytest.raises(vmctl.ValidationError):
        BootSource()
    with pytest.raises(vmctl.ValidationError):
        BootSource(kernel="/k", iso="/i.iso")
    with pytest.raises(vmctl.ValidationError):
        BootSource(iso="/i.iso", initrd="/initrd")


def test_specs_are_frozen_and_lists_become_tuples() -> None:
    spec = VMSpec(name="x", disks=[DiskSpec(size_mib=1)])
    assert isinstance(spec.disks, tuple)
    with pytest.raises(AttributeError):
        spec.name = "y"  # type: ignore[misc]


def test_timeouts() -> None:
    t = vmctl.Timeouts(60, connect=5)
    assert (t.connect_s, t.operation_s, t.shutdown_s) == (5, 60, 60)
    assert vmctl.Timeouts(None).operation_s is None
    for bad in (0, -1, float("inf"), "10", True):
        with pytest.raises(vmctl.ValidationError):
            vmctl.Timeouts(bad)  # type: ignore[arg-type]
