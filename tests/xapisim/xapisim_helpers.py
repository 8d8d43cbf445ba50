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


class _Strict:
    """Transport mix-in: every reply is first read with the strict reader (parse_strict),
    so each call any test makes through the SDK also checks xapi's byte forms."""

    replies = 0

    def parse_response(self, response: Any) -> Any:
        body = response.read()
        value = parse_strict(body, bare=True)
        if isinstance(value, dict) and "Status" in value:
            parse_strict(body)  # the Status struct's shape too
        _Strict.replies += 1
        p, u = self.getparser()  # type: ignore[attr-defined]
        p.feed(body)
        p.close()
        return u.close()


class StrictTransport(_Strict, xmlrpc.client.Transport):
    pass


class StrictSafeTransport(_Strict, xmlrpc.client.SafeTransport):
    pass


def transport(server: SimServer) -> xmlrpc.client.Transport:
    if server.cafile:
        ctx = ssl.create_default_context(cafile=server.cafile)
        return StrictSafeTransport(context=ctx)
    return StrictTransport()


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


# ------------------------------------------------------------------------------------
# A strict XML-RPC reader for xapi's replies (the forms mirage/ocaml-rpc's xmlrpc.ml
# writes, tables.WIRE_FORMS): no whitespace between elements, <value>text</value> for
# strings (never <string>), <value></value> for "", <i4> for Int32, <boolean>0|1</boolean>,
# <double> as %.16g, <dateTime.iso8601> as YYYYMMDDTHH:MM:SSZ, <array><data>, <struct>.
# Anything else fails with WireError.
# ------------------------------------------------------------------------------------


class WireError(AssertionError):
    pass


class I4(int):
    """A value that came as <i4>."""


class Stamp(str):
    """A value that came as <dateTime.iso8601>."""


_ENTITIES = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"'}
_TEXT_RE = re.compile(r"[^<]*")
_DOUBLE_RE = re.compile(r"-?(?:\d+(?:\.\d+)?(?:e[+-]\d\d+)?|nan|inf)")
_STAMP_RE = re.compile(r"\d{8}T\d\d:\d\d:\d\dZ")
XML_HEAD = '<?xml version="1.0"?><methodResponse><params><param>'
XML_TAIL = "</param></params></methodResponse>"


def _unescape(text: str, at: int) -> str:
    out = []
    i = 0
    while True:
        j = text.find("&", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        k = text.find(";", j)
        ent = text[j : k + 1]
        if k < 0 or ent not in _ENTITIES:
            raise WireError(f"unknown entity at {at + j}: {text[j : j + 8]!r}")
        out.append(_ENTITIES[ent])
        i = k + 1
    s = "".join(out)
    for ch in '>"':  # ocaml-rpc escapes these too
        if ch in text:
            raise WireError(f"unescaped {ch!r} at {at}")
    if any(ord(c) < 0x20 and c not in "\t\n\r" for c in s):
        raise WireError(f"control character in text at {at}")
    return s


class StrictReader:
    def __init__(self, doc: str) -> None:
        self.doc = doc
        self.pos = 0

    def expect(self, token: str) -> None:
        if not self.doc.startswith(token, self.pos):
            got = self.doc[self.pos : self.pos + len(token) + 10]
            raise WireError(f"expected {token!r} at {self.pos}, got {got!r}")
        self.pos += len(token)

    def peek(self, token: str) -> bool:
        return self.doc.startswith(token, self.pos)

    def text_until(self, close: str) -> str:
        m = _TEXT_RE.match(self.doc, self.pos)
        assert m is not None
        raw_text = m.group()
        start = self.pos
        self.pos = m.end()
        self.expect(close)
        return _unescape(raw_text, start)

    def value(self) -> Any:
        self.expect("<value>")
        if self.peek("</value>"):
            self.pos += len("</value>")
            return ""
        if not self.peek("<"):
            return self.text_until("</value>")
        if self.peek("<boolean>"):
            self.pos += len("<boolean>")
            t = self.text_until("</boolean>")
            if t not in ("0", "1"):
                raise WireError(f"boolean {t!r}")
            v: Any = t == "1"
        elif self.peek("<i4>"):  # Rpc.Int32; ocaml-rpc never writes <int> or <i8>
            self.pos += len("<i4>")
            t = self.text_until("</i4>")
            if not re.fullmatch(r"-?(0|[1-9]\d*)", t):
                raise WireError(f"i4 {t!r}")
            v = I4(int(t))
        elif self.peek("<double>"):
            self.pos += len("<double>")
            t = self.text_until("</double>")
            if not _DOUBLE_RE.fullmatch(t) or format(float(t), ".16g") != t:
                raise WireError(f"double {t!r} is not %.16g")
            v = float(t)
        elif self.peek("<dateTime.iso8601>"):
            self.pos += len("<dateTime.iso8601>")
            t = self.text_until("</dateTime.iso8601>")
            if not _STAMP_RE.fullmatch(t):
                raise WireError(f"dateTime {t!r}")
            v = Stamp(t)
        elif self.peek("<array><data>"):
            self.pos += len("<array><data>")
            items = []
            while not self.peek("</data></array>"):
                items.append(self.value())
            self.pos += len("</data></array>")
            v = items
        elif self.peek("<struct>"):
            self.pos += len("<struct>")
            members: dict[str, Any] = {}
            while not self.peek("</struct>"):
                self.expect("<member><name>")
                name = self.text_until("</name>")
                if name in members:
                    raise WireError(f"duplicate member {name!r}")
                members[name] = self.value()
                self.expect("</member>")
            self.pos += len("</struct>")
            v = members
        else:
            raise WireError(
                f"unexpected element at {self.pos}: {self.doc[self.pos : self.pos + 30]!r}"
            )
        self.expect("</value>")
        return v


def parse_strict(body: bytes, bare: bool = False) -> Any:
    """The value of a xapi XML-RPC reply, read strictly. Unless ``bare`` (how
    system.listMethods is answered), it must be the {Status, Value|ErrorDescription}
    struct with its members in that order, the error description an array of strings."""
    doc = body.decode("utf-8")
    if not doc.startswith(XML_HEAD) or not doc.endswith(XML_TAIL):
        raise WireError(f"envelope: {doc[:80]!r} ... {doc[-60:]!r}")
    r = StrictReader(doc)
    r.pos = len(XML_HEAD)
    v = r.value()
    if r.pos != len(doc) - len(XML_TAIL):
        raise WireError(f"trailing data at {r.pos}")
    if bare:
        return v
    if not isinstance(v, dict) or list(v)[:1] != ["Status"] or len(v) != 2:
        raise WireError(f"not a Status struct: {str(v)[:100]}")
    if v["Status"] == "Success":
        if list(v) != ["Status", "Value"]:
            raise WireError(f"success members {list(v)}")
    elif v["Status"] == "Failure":
        if list(v) != ["Status", "ErrorDescription"]:
            raise WireError(f"failure members {list(v)}")
        desc = v["ErrorDescription"]
        if not isinstance(desc, list) or not all(type(d) is str for d in desc):
            raise WireError(f"ErrorDescription {desc!r}")
    else:
        raise WireError(f"Status {v['Status']!r}")
    return v


def strict_check(value: Any, ty: str, where: str) -> None:
    """Assert a strictly parsed value has datamodel type ``ty`` in xapi's byte forms: int
    as plain decimal text, float as <double>, bool as <boolean>, datetime as
    <dateTime.iso8601>, refs/strings/enums as plain text."""
    kind = ty.split(" ", 1)[0]
    if kind == "int":
        assert type(value) is str and re.fullmatch(r"-?(0|[1-9]\d*)", value), (where, value)
    elif kind == "float":
        assert type(value) is float, (where, value)
    elif kind == "bool":
        assert type(value) is bool, (where, value)
    elif kind == "datetime":
        assert type(value) is Stamp, (where, value)
    elif kind == "set":
        assert type(value) is list, (where, value)
        for v in value:
            strict_check(v, ty[4:], where)
    elif kind == "map":
        assert type(value) is dict, (where, value)
        rest = ty[4:]
        vty = (
            rest.split(" ", 2)[2] if rest.startswith(("enum ", "ref ")) else rest.partition(" ")[2]
        )
        for k, v in value.items():
            strict_check(v, vty, f"{where}[{k}]")
    else:
        assert type(value) is str, (where, value)
