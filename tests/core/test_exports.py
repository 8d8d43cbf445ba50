"""The public surface: complete, importable, and free of vendor SDKs."""

from __future__ import annotations

import subprocess
import sys

import vmctl


def test_all_is_complete_and_unique() -> None:
    assert set(vmctl.__all__) == set(vmctl._EXPORTS)
    assert len(vmctl.__all__) == len(set(vmctl.__all__))
    for name in vmctl.__all__:
        assert getattr(vmctl, name) is not None
    assert vmctl.VMSpec.__module__ == "vmctl._model"


def test_unknown_attribute_is_an_attribute_error() -> None:
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vmctl.nope  # type: ignore[attr-defined]  # noqa: B018


def test_import_loads_no_vendor_sdk_and_no_driver() -> None:
    code = (
        "import sys, vmctl; bad = [m for m in ('libvirt', 'pyVmomi', 'pyVim', 'XenAPI', "
        "'vmctl_kvm', 'vmctl_esx', 'vmctl_xen', 'vmctl_sim', 'click', 'rich') "
        "if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_typed_marker_ships() -> None:
    from importlib import resources

    assert resources.files("vmctl").joinpath("py.typed").is_file()
