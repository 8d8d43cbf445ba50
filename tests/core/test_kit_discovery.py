"""How the xen and kvm drivers choose the kit's network and pool from what the host lists
(their kit_defaults read the host, then decide with these functions). The choices on live
hosts are checked by the kit tests (tests/xen, tests/esx, tests/kvm: option_sources)."""

from __future__ import annotations

import pytest

xen = pytest.importorskip("vmctl_xen._kitdefaults")
kvm = pytest.importorskip("vmctl_kvm._kitdefaults")


def _net(bridge: str, pifs: bool = True, **other: str) -> dict[str, object]:
    return {"bridge": bridge, "PIFs": ["OpaqueRef:p"] if pifs else [], "other_config": other}


def test_xen_prefers_xenbr0_then_an_external_network() -> None:
    internal = _net("xenapi", pifs=False, is_host_internal_management_network="true")
    assert xen.network({"a": _net("xenbr1"), "b": _net("xenbr0"), "c": internal}) == "xenbr0"
    assert xen.network({"a": _net("br-int", pifs=False), "b": _net("xenbr1")}) == "xenbr1"
    assert xen.network({"a": _net("br-int", pifs=False)}) == "br-int"
    assert xen.network({"c": internal}) is None


def _sr(label: str, *, shared: bool = False, content: str = "user", free: int = 0) -> dict:
    return {
        "name_label": label,
        "uuid": f"uuid-{label}-{free}",
        "shared": shared,
        "content_type": content,
        "allowed_operations": ["vdi_create"],
        "physical_size": free,
        "physical_utilisation": 0,
    }


def test_xen_takes_the_default_sr_else_the_roomiest_shared_one() -> None:
    srs = {
        "local1": _sr("Local storage", free=500),
        "local2": _sr("Local storage", free=900),
        "nfs": _sr("NFS", shared=True, free=100),
        "big": _sr("Big NFS", shared=True, free=200),
        "iso": _sr("ISOs", shared=True, content="iso", free=10_000),
    }
    pbds = {
        "p1": {"SR": "local1", "host": "h1", "currently_attached": True},
        "p2": {"SR": "local2", "host": "h2", "currently_attached": True},
    }
    assert xen.storage(srs, pbds, "nfs", "h1") == "NFS"
    assert xen.storage(srs, pbds, "OpaqueRef:NULL", "h1") == "Big NFS"
    only_local = {k: v for k, v in srs.items() if k.startswith("local")}
    # the host's own local SR (not the other host's), by UUID: the name is not unique
    assert xen.storage(only_local, pbds, "", "h1") == "uuid-Local storage-500"
    assert xen.storage({"iso": srs["iso"]}, pbds, "", "h1") is None


def test_kvm_takes_the_uri_option_then_default_then_the_first() -> None:
    assert kvm.pick(["b", "a"], None) == "a"
    assert kvm.pick(["b", "default"], None) == "default"
    assert kvm.pick(["b"], "given") == "given"
    assert kvm.pick([], None) is None
