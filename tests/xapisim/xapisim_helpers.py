"""Helpers for the xapisim fidelity tests: an SDK session and wire-type checks."""

from __future__ import annotations

import re
import ssl
import time
import xmlrpc.client
from collections.abc import Callable
from typing import Any

import XenAPI

from xapisim import SimServer
from xapisim.tables import EMPTY_REF_FIELDS, ERRORS

REF_RE = re.compile(r"^OpaqueRef:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
NULL = "OpaqueRef:NULL"
MiB = 1024**2


def transport(server: SimServer) -> xmlrpc.client.Transport:
    if server.cafile:
        ctx = ssl.create_default_context(cafile=server.cafile)
        return xmlrpc.client.SafeTransport(context=ctx)
    return xmlrpc.client.Transport()


def login(server: SimServer, originator: str = "xapisim-tests") -> Any:
    s = XenAPI.Session(server.url, transport=transport(server))
    s.xenapi.login_with_password(server.username, server.password, "2.21", originator)
    return s


def raw(server: SimServer) -> Any:
    """A plain XML-RPC proxy (no SDK re-login), for wire-level checks."""
    return xmlrpc.client.ServerProxy(server.url, transport=transport(server))


def failure(fn: Callable[..., Any], *args: Any) -> list[str]:
    """Call through the SDK; return the Failure details (and check the parameter count)."""
    try:
        fn(*args)
    except XenAPI.Failure as f:
        details = list(f.details)
        assert all(isinstance(d, str) for d in details), details
        spec = ERRORS.get(details[0])
        assert spec is not None, f"error code not in the tables: {details}"
        assert len(details) == 1 + len(spec.params), (details, spec.params)
        return details
    raise AssertionError(f"expected a XenAPI.Failure from {args}")


def check_wire(value: Any, ty: str, where: str) -> None:
    """Assert that ``value`` (as the SDK decoded it) has datamodel wire type ``ty``."""
    kind = ty.split(" ", 1)[0]
    if kind == "int":
        assert isinstance(value, str) and re.fullmatch(r"-?\d+", value), (where, value)
    elif kind == "float":
        assert isinstance(value, float), (where, value)
    elif kind == "bool":
        assert isinstance(value, bool), (where, value)
    elif kind == "datetime":
        assert isinstance(value, xmlrpc.client.DateTime), (where, value)
        assert re.fullmatch(r"\d{8}T\d\d:\d\d:\d\dZ", value.value), (where, value.value)
    elif kind == "ref":
        assert isinstance(value, str), (where, value)
        # "" only where xapi stores Ref.of_string "" (tables.EMPTY_REF_FIELDS)
        cls, _, field = where.partition(".")
        empty_ok = (cls, field.removeprefix("get_")) in EMPTY_REF_FIELDS
        assert value == NULL or REF_RE.match(value) or (value == "" and empty_ok), (where, value)
    elif kind == "set":
        assert isinstance(value, list), (where, value)
        for v in value:
            check_wire(v, ty[4:], where)
    elif kind == "map":
        assert isinstance(value, dict), (where, value)
        rest = ty[4:]
        if rest.startswith(("enum ", "ref ")):
            parts = rest.split(" ", 2)
            kty, vty = f"{parts[0]} {parts[1]}", parts[2]
        else:
            kty, _, vty = rest.partition(" ")
        for k, v in value.items():
            assert isinstance(k, str), (where, k)
            if kty == "int":
                assert re.fullmatch(r"-?\d+", k), (where, k)
            check_wire(v, vty, f"{where}[{k}]")
    elif kind == "enum":
        assert isinstance(value, str) and value, (where, value)
    else:
        assert isinstance(value, str), (where, value)


def wait_for(pred: Callable[[], Any], timeout: float = 5.0, step: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(step)


# VMs as the vmctl Xen driver makes them, and clones of a VM with an installed guest.


def new_vm(x: Any, name: str, *, kernel: str = "", disk: bool = True, iso: str = "") -> str:
    """A VM as the vmctl Xen driver creates one (drivers/vmctl_xen create_vm): a kernel
    BootSource gives PV direct boot (HVM_boot_policy "", PV_kernel); otherwise HVM "BIOS
    order" with a blank bootable disk (VDI.create), and an ISO in a CD drive if given."""
    mem = str(512 * MiB)
    vm = x.VM.create(
        {
            "name_label": name,
            "name_description": "",
            "user_version": "1",
            "is_a_template": False,
            "affinity": NULL,
            "memory_target": mem,
            "memory_static_max": mem,
            "memory_dynamic_max": mem,
            "memory_dynamic_min": mem,
            "memory_static_min": mem,
            "VCPUs_params": {},
            "VCPUs_max": "1",
            "VCPUs_at_startup": "1",
            "actions_after_shutdown": "destroy",
            "actions_after_reboot": "restart",
            "actions_after_crash": "destroy",
            "PV_bootloader": "",
            "PV_kernel": kernel,
            "PV_ramdisk": "",
            "PV_args": "console=hvc0" if kernel else "",
            "PV_bootloader_args": "",
            "PV_legacy_args": "",
            "HVM_boot_policy": "" if kernel else "BIOS order",
            "HVM_boot_params": {} if kernel else {"order": "dc" if iso else "cd"},
            "platform": {} if kernel else {"acpi": "1"},
            "PCI_bus": "",
            "other_config": {},
            "recommendations": "",
        }
    )
    sr = x.pool.get_default_SR(x.pool.get_all()[0])
    if disk:
        vdi = x.VDI.create(
            {
                "name_label": f"{name} disk",
                "name_description": "",
                "SR": sr,
                "virtual_size": str(64 * MiB),
                "type": "user",
                "sharable": False,
                "read_only": False,
                "other_config": {},
            }
        )
        x.VBD.create(vbd_record(vm, vdi, "0", bootable=not kernel and not iso))
    if iso:
        cd = x.VDI.get_by_name_label(iso)[0]
        x.VBD.create(vbd_record(vm, cd, "3", cd=True))
    net = x.network.get_all()[0]
    x.VIF.create(
        {
            "device": "0",
            "network": net,
            "VM": vm,
            "MAC": "",
            "MTU": "1500",
            "other_config": {},
            "qos_algorithm_type": "",
            "qos_algorithm_params": {},
        }
    )
    return str(vm)


def vbd_record(vm: str, vdi: str, dev: str, *, cd: bool = False, bootable: bool = False) -> Any:
    return {
        "VM": vm,
        "VDI": vdi,
        "userdevice": dev,
        "bootable": bootable or cd,
        "mode": "RO" if cd else "RW",
        "type": "CD" if cd else "Disk",
        "unpluggable": True,
        "empty": False,
        "other_config": {},
        "qos_algorithm_type": "",
        "qos_algorithm_params": {},
    }


def clone_of_vm01(x: Any, name: str) -> str:
    """vm-01 has an installed guest (HVM, its disk holds an OS with PV drivers)."""
    return str(x.VM.clone(x.VM.get_by_name_label("vm-01")[0], name))


def discard(x: Any, vm: str) -> None:
    if x.VM.get_power_state(vm) != "Halted":
        x.VM.hard_shutdown(vm)
    for vbd in x.VM.get_VBDs(vm):
        vdi = x.VBD.get_VDI(vbd)
        if x.VBD.get_type(vbd) == "Disk" and vdi != NULL:
            x.VBD.destroy(vbd)
            x.VDI.destroy(vdi)
    x.VM.destroy(vm)
