"""In-memory XenAPI object database, sessions, events and the message implementations."""

from __future__ import annotations

import calendar
import functools
import os
import threading
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .tables import (
    ALLOWED_POWER_STATES,
    API_VERSION,
    CANT_SUSPEND_KEY,
    CLASSES,
    EVENT_CLASSES,
    FIELD_DEFAULTS,
    GUEST_CANT_SUSPEND_XS,
    GUEST_CONTROL_KEYS,
    GUEST_FEATURE_OPS,
    HOTPLUG_REFUSED,
    LISTED_VM_OPS,
    PV_DOMAIN_TYPES,
    RESULT_STATE,
    SNAPSHOT_ALLOWED_OPS,
    SOFTWARE_VERSION,
    SUSPEND_FEATURE,
    SUSPEND_FEATURE_OPS,
    TEMPLATE_ALLOWED_OPS,
)
from .vdidata import Store
from .wire import I32, Encoded, escape, xml_value

NULL = "OpaqueRef:NULL"
GiB = 1024**3
MiB = 1024**2

Rec = dict[str, Any]


class Fault(Exception):
    """A XenAPI failure: ErrorDescription [code, *params] (all strings)."""

    def __init__(self, code: str, *params: object) -> None:
        super().__init__(code, *params)
        self.code = code
        self.params = [str(p) for p in params]

    @property
    def description(self) -> list[str]:
        return [self.code, *self.params]


def new_ref() -> str:
    return f"OpaqueRef:{uuidlib.uuid4()}"


def default_value(ty: str) -> Any:
    kind = ty.split(" ", 1)[0]
    return {
        "string": "",
        "int": 0,
        "float": 0.0,
        "bool": False,
        "datetime": 0.0,
        "ref": NULL,
        "set": [],
        "map": {},
        "enum": "",
    }[kind]


def _split_map(ty: str) -> tuple[str, str]:
    # "map K V" where K is one word or "enum X" / "ref X"
    rest = ty[4:]
    if rest.startswith(("enum ", "ref ")):
        parts = rest.split(" ", 2)
        return f"{parts[0]} {parts[1]}", parts[2]
    k, _, v = rest.partition(" ")
    return k, v


_DATETIMES: dict[float, xmlrpc.client.DateTime] = {}


def wire_datetime(t: float) -> xmlrpc.client.DateTime:
    d = _DATETIMES.get(t)
    if d is None:
        d = xmlrpc.client.DateTime(time.strftime("%Y%m%dT%H:%M:%SZ", time.gmtime(t)))
        if len(_DATETIMES) > 100_000:
            _DATETIMES.clear()
        _DATETIMES[t] = d
    return d


Conv = Callable[[Any], Any]
XmlOf = Callable[[Any], str]


@functools.cache
def converter(ty: str) -> Conv:
    """The function that turns an internal value of datamodel type ``ty`` into its wire
    value (see wire.py for the Python forms): int -> int (Rpc.Int), float, bool, datetime ->
    DateTime, set -> list, map -> dict with string keys, the rest -> str."""
    kind = ty.split(" ", 1)[0]
    if kind == "int":
        return int
    if kind == "float":
        return float
    if kind == "bool":
        return bool
    if kind == "datetime":
        return lambda v: wire_datetime(float(v))
    if kind == "set":
        inner = converter(ty[4:])
        return lambda v: list(map(inner, v)) if v else []
    if kind == "map":
        kty, vty = _split_map(ty)
        kc, vc = converter(kty), converter(vty)
        if kc is str:
            return lambda v: {str(k): vc(x) for k, x in v.items()} if v else {}
        return lambda v: {str(kc(k)): vc(x) for k, x in v.items()} if v else {}
    return str  # string, ref, enum (str() of a str is the str itself)


def encode(value: Any, ty: str) -> Any:
    """Encode an internal value of datamodel type ``ty`` for the wire."""
    return converter(ty)(value)


@functools.cache
def xml_of(ty: str) -> XmlOf:
    """The XML-RPC text of a wire value of datamodel type ``ty`` (what wire.xml_value
    writes for it, specialised by type: the encoded-record cache's cold path)."""
    kind = ty.split(" ", 1)[0]
    if kind in ("string", "ref", "enum"):

        def text(v: str) -> str:
            if not v:
                return "<value></value>"
            return "<value>" + escape(v) + "</value>"

        return text
    if kind == "set":
        inner = xml_of(ty[4:])
        return lambda v: "<value><array><data>" + "".join(map(inner, v)) + "</data></array></value>"
    if kind == "map":
        vx = xml_of(_split_map(ty)[1])
        return lambda v: (
            "<value><struct>"
            + "".join(
                "<member><name>" + escape(k) + "</name>" + vx(x) + "</member>" for k, x in v.items()
            )
            + "</struct></value>"
        )
    if kind == "int":
        return lambda v: "<value>" + str(v) + "</value>"
    if kind == "bool":
        return lambda v: "<value><boolean>1</boolean></value>" if v else _FALSE
    if kind == "datetime":
        return lambda v: "<value><dateTime.iso8601>" + v.value + "</dateTime.iso8601></value>"
    return xml_value  # float: wire.xml_value's own form


_FALSE = "<value><boolean>0</boolean></value>"


@functools.cache
def record_codec(cls: str) -> tuple[Callable[[Rec], Rec], Callable[[Rec], str]]:
    """(internal record -> wire record, wire record -> XML) for class ``cls``."""
    fields = list(CLASSES[cls].fields.items())
    convs = [(f, converter(t)) for f, t in fields]
    parts = [(f, "<member><name>" + escape(f) + "</name>", xml_of(t)) for f, t in fields]

    def to_wire(rec: Rec) -> Rec:
        return {f: conv(rec[f]) for f, conv in convs}

    def to_xml(w: Rec) -> str:
        return (
            "<value><struct>"
            + "".join([head + xml(w[f]) + "</member>" for f, head, xml in parts])
            + "</struct></value>"
        )

    return to_wire, to_xml


def decode(value: Any, ty: str, name: str) -> Any:
    """Decode a wire parameter of type ``ty`` (lenient as ocaml-rpc is)."""
    kind = ty.split(" ", 1)[0]
    try:
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ValueError
        if kind == "set":
            if not isinstance(value, list):
                raise ValueError
            return [decode(v, ty[4:], name) for v in value]
        if kind == "map":
            if not isinstance(value, dict):
                raise ValueError
            kty, vty = _split_map(ty)
            return {decode(k, kty, name): decode(v, vty, name) for k, v in value.items()}
        if kind == "datetime":
            if isinstance(value, xmlrpc.client.DateTime):
                return time.mktime(value.timetuple()) - time.timezone
            if isinstance(value, str):  # JSON-RPC sends datetimes as strings
                return parse_datetime(value)
            raise ValueError
        if not isinstance(value, str):
            raise ValueError
        return value
    except (ValueError, TypeError):
        raise Fault("FIELD_TYPE_ERROR", name) from None


def parse_datetime(s: str) -> float:
    """An ISO 8601 datetime as xapi reads one (ocaml/libs/clock/date.ml: of_iso8601):
    ``20260101T12:00:00Z`` or with dashes; no time zone means UTC."""
    s = s.strip()
    if s.endswith("Z"):
        s = s[:-1]
    s = s.replace("-", "") if len(s) >= 10 and s[4] == "-" else s
    t = time.strptime(s[:17], "%Y%m%dT%H:%M:%S")
    return float(calendar.timegm(t))


def xmlrpc_value_string(value: Any) -> str:
    """Task.result: the XML-RPC encoding of the result value, as xapi stores it
    (ocaml/xapi/taskHelper.ml: Xmlrpc.to_string of the result), e.g. <value>OpaqueRef:..</value>."""
    if value is None:
        return ""
    return xml_value(value)


@dataclass
class Session:
    ref: str
    uuid: str
    user: str
    originator: str
    host: str
    created: float
    last_active: float
    subs: list[str] | None = None  # event.register subscriptions
    next_gen: int = 0


@dataclass
class Event:
    gen: int
    cls: str
    op: str
    ref: str
    ts: float
    snapshot: Rec | Encoded | None = None


@dataclass
class Ctx:
    """Per-call context: the task when the call runs as Async."""

    session: Session
    task: str | None = None


@dataclass
class Config:
    hosts: int = 2
    vms: int = 4
    running: int = 0
    username: str = "root"
    password: str = "xenroot"
    session_timeout: float = 3600.0
    op_delay: float = 0.05
    guest_delay: float = 0.3
    host_memory_gib: int = 256
    extra: dict[str, Any] = field(default_factory=dict)


# Operations refused on a control domain (ocaml/xapi/xapi_vm_lifecycle.ml blocks most of
# them for dom0 via check_operation_error; the simulator refuses them all the same way).
_DOM0_BLOCKED = frozenset(
    [
        "destroy",
        "clone",
        "copy",
        "checkpoint",
        "snapshot",
        "pool_migrate",
        "provision",
        "make_into_template",
        "export",
        "revert",
    ]
)


def _sub_parse(s: str) -> tuple[str, str | None]:
    if s == "*":
        return ("*", None)
    parts = s.split("/", 1)
    if len(parts) == 1:
        return (parts[0].lower(), None)
    return (parts[0].lower(), parts[1])


def _sub_match(subs: list[tuple[str, str | None]], cls: str, ref: str) -> bool:
    c = cls.lower()
    return any(sc == "*" or (sc == c and (sr is None or sr == ref)) for sc, sr in subs)


class Database:
    """All objects, sessions, tasks and the event log. One lock guards everything."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.objs: dict[str, dict[str, Rec]] = {c: {} for c in CLASSES if c != "session"}
        self.sessions: dict[str, Session] = {}
        self.gen = 0
        self.log: list[Event] = []
        self.log_floor = 0  # generations <= floor were trimmed
        self.domid = 0
        self.macs = 0
        self.timers: list[threading.Timer] = []
        self.stopped = False
        # Simulator-only state, not in any record: the VDIs that hold an installed guest OS
        # (the disks of the initial vm-NN VMs and copies of them), and the VMs whose running
        # domain booted one (decided at start; see has_os).
        self.os_vdis: set[str] = set()
        self.booted_os: set[str] = set()
        # The guest-written part of each booted guest's xenstore (relative paths such as
        # "control/feature-suspend" or "data/cant_suspend_reason"), from which the simulated
        # guest agent derives VM_guest_metrics.other (see guest_other).
        self.guest_xs: dict[str, dict[str, str]] = {}
        # Each object's encoded record (wire.Encoded: the wire value and, once asked for,
        # its XML), built when first read and dropped at the object's next event; every
        # change to an object is followed by an event for it (touch/set/link/delete).
        # With check_cache (XAPISIM_CHECK_CACHE=1, set by the tests) every cache hit is
        # compared with a fresh encoding, and a stale entry fails the call.
        self.wire_cache: dict[str, dict[str, Encoded]] = {c: {} for c in self.objs}
        self.check_cache = os.environ.get("XAPISIM_CHECK_CACHE", "") not in ("", "0")
        # The bytes of every VDI and their changed-block tracking (vdidata.py).
        self.vdata = Store()
        self._populate()

    # ------------------------------------------------------------------ objects
    def new(self, cls: str, **values: Any) -> str:
        spec = CLASSES[cls]
        rec: Rec = {f: default_value(t) for f, t in spec.fields.items()}
        rec.update(FIELD_DEFAULTS.get(cls, {}))
        rec["uuid"] = str(uuidlib.uuid4())
        for k, v in values.items():
            if k not in spec.fields:
                raise KeyError(f"{cls}.{k}")
            rec[k] = v
        ref = new_ref()
        with self.lock:
            self.objs[cls][ref] = rec
            self._event(cls, "add", ref)
        return ref

    def get(self, cls: str, ref: str) -> Rec:
        rec = self.objs[cls].get(ref)
        if rec is None:
            raise Fault("HANDLE_INVALID", cls, ref)
        return rec

    def valid(self, cls: str, ref: str) -> bool:
        return ref in self.objs[cls]

    def touch(self, cls: str, ref: str) -> None:
        if cls == "VM" and ref in self.objs["VM"]:
            self._update_allowed_ops(ref)
        self._event(cls, "mod", ref)

    def set(self, cls: str, ref: str, **values: Any) -> None:
        rec = self.get(cls, ref)
        rec.update(values)
        self.touch(cls, ref)

    def delete(self, cls: str, ref: str) -> None:
        if self.objs[cls].pop(ref, None) is not None:
            self._event(cls, "del", ref)

    def link(self, cls: str, ref: str, fld: str, target: str, add: bool = True) -> None:
        if not self.valid(cls, ref):
            return
        lst = self.objs[cls][ref][fld]
        if add and target not in lst:
            lst.append(target)
        elif not add and target in lst:
            lst.remove(target)
        self.touch(cls, ref)

    def encode_record(self, cls: str, rec: Rec) -> Rec:
        return record_codec(cls)[0](rec)

    def record_value(self, cls: str, ref: str) -> Encoded:
        """The object's record for the wire, from the cache (call with the lock held)."""
        cache = self.wire_cache[cls]
        enc = cache.get(ref)
        if enc is None:
            to_wire, to_xml = record_codec(cls)
            enc = cache[ref] = Encoded(to_wire(self.objs[cls][ref]), to_xml)
        elif self.check_cache:
            fresh = self.encode_record(cls, self.objs[cls][ref])
            if enc.value != fresh:
                diff = sorted(k for k in fresh if fresh[k] != enc.value.get(k))
                raise AssertionError(f"stale wire cache for {cls} {ref}: {diff}")
        return enc

    def event_listeners(self) -> bool:
        """Whether a session is registered for event.next (which needs event snapshots)."""
        return any(s.subs is not None for s in self.sessions.values())

    def find(self, cls: str, **match: Any) -> list[str]:
        return [
            r for r, rec in self.objs[cls].items() if all(rec.get(k) == v for k, v in match.items())
        ]

    # ------------------------------------------------------------------ events
    def _event(self, cls: str, op: str, ref: str) -> None:
        with self.lock:
            self._event_locked(cls, op, ref)

    def _event_locked(self, cls: str, op: str, ref: str) -> None:
        self.gen += 1
        self.wire_cache[cls].pop(ref, None)
        snap = None
        # Only event.next reports the record as it was at the event; event.from reads the
        # current one. Without a registered session nobody can ask for these snapshots.
        if op != "del" and self.event_listeners():
            snap = self.encode_record(cls, self.objs[cls][ref])
        self.log.append(Event(self.gen, cls, op, ref, time.time(), snap))
        if len(self.log) > 100_000:
            drop = self.log[:50_000]
            self.log = self.log[50_000:]
            self.log_floor = drop[-1].gen
        self.cond.notify_all()

    def event_from(self, classes: list[str], token: str, timeout: float) -> Rec:
        if token == "":
            since = 0
        else:
            parts = token.split(",")
            try:
                if len(parts) != 2:
                    raise ValueError
                since = int(parts[0])
                int(parts[1])
            except ValueError:
                raise Fault("EVENT_FROM_TOKEN_PARSE_FAILURE", token) from None
        subs = [_sub_parse(c) for c in classes]
        deadline = time.monotonic() + max(0.0, timeout)
        with self.lock:
            while True:
                events = self._collect(subs, since)
                remaining = deadline - time.monotonic()
                if events or remaining <= 0 or self.stopped:
                    break
                self.cond.wait(min(remaining, 1.0))
            last = self.gen
            # event_types.ml: rpc_of_event_from -- valid_ref_counts values are Rpc.Int32
            counts = {c.lower(): I32(len(self.objs[c])) for c in EVENT_CLASSES}
            return {
                "events": events,
                "valid_ref_counts": counts,
                "token": f"{last:020d},{0:020d}",
            }

    def _collect(self, subs: list[tuple[str, str | None]], since: int) -> list[Rec]:
        if since == 0:
            # A fresh token: every live object, as an "add" (xapi_event.ml: creates since 0).
            out = []
            for cls in EVENT_CLASSES:
                for ref in self.objs[cls]:
                    if _sub_match(subs, cls, ref):
                        out.append(
                            self._wire_event(
                                self.gen, cls, "add", ref, -1.0, self.record_value(cls, ref)
                            )
                        )
            return out
        if since < self.log_floor:
            raise Fault("EVENTS_LOST")
        latest: dict[tuple[str, str], Event] = {}
        created: set[tuple[str, str]] = set()
        for ev in self.log:
            if ev.gen <= since or not _sub_match(subs, ev.cls, ev.ref):
                continue
            key = (ev.cls, ev.ref)
            if ev.op == "add":
                created.add(key)
            latest.pop(key, None)
            latest[key] = ev
        out = []
        for key, ev in latest.items():
            if ev.op == "del":
                if key in created:
                    continue  # created and deleted within the window: nothing to see
                out.append(self._wire_event(ev.gen, ev.cls, "del", ev.ref, -1.0, None))
                continue
            op = "add" if key in created else "mod"
            cur = self.objs[ev.cls].get(ev.ref)
            snap = self.record_value(ev.cls, ev.ref) if cur is not None else ev.snapshot
            out.append(self._wire_event(ev.gen, ev.cls, op, ev.ref, -1.0, snap))
        return out

    @staticmethod
    def _wire_event(
        gen: int, cls: str, op: str, ref: str, ts: float, snap: Rec | Encoded | None
    ) -> Rec:
        # event.from events carry timestamp "0.0" (xapi_event.ml: from_inner, event_of);
        # event.next ones (ts >= 0) the time of the change.
        ev: Rec = {
            "id": str(gen),
            "timestamp": "0.0" if ts < 0 else f"{ts:.6f}",
            "class": cls.lower(),
            "operation": op,
            "ref": ref,
        }
        if snap is not None:
            ev["snapshot"] = snap
        return ev

    def event_next(self, sess: Session) -> list[Rec]:
        if sess.subs is None:
            raise Fault("SESSION_NOT_REGISTERED", sess.ref)
        subs = [_sub_parse(c) for c in sess.subs]
        deadline = time.monotonic() + 30.0
        with self.lock:
            while True:
                evs = [
                    e for e in self.log if e.gen > sess.next_gen and _sub_match(subs, e.cls, e.ref)
                ]
                if evs or time.monotonic() >= deadline or self.stopped:
                    break
                self.cond.wait(1.0)
            sess.next_gen = self.gen
            return [self._wire_event(e.gen, e.cls, e.op, e.ref, e.ts, e.snapshot) for e in evs]

    # ------------------------------------------------------------------ sessions
    def login(self, uname: str, pwd: str, originator: str) -> str:
        if uname != self.cfg.username or pwd != self.cfg.password:
            raise Fault("SESSION_AUTHENTICATION_FAILED", uname, "Authentication failure")
        now = time.time()
        ref = new_ref()
        master = self.master()
        with self.lock:
            self.sessions[ref] = Session(
                ref, str(uuidlib.uuid4()), uname, originator, master, now, now, next_gen=self.gen
            )
        return ref

    def check_session(self, ref: Any) -> Session:
        with self.lock:
            self.expire_sessions()
            sess = self.sessions.get(ref) if isinstance(ref, str) else None
            if sess is None:
                raise Fault("SESSION_INVALID", ref)
            sess.last_active = time.time()
            return sess

    def expire_sessions(self) -> None:
        now = time.time()
        with self.lock:
            for ref, s in list(self.sessions.items()):
                if now - s.last_active > self.cfg.session_timeout:
                    del self.sessions[ref]

    def logout(self, ref: str) -> None:
        with self.lock:
            self.sessions.pop(ref, None)

    def session_record(self, s: Session) -> Rec:
        rec: Rec = {f: default_value(t) for f, t in CLASSES["session"].fields.items()}
        rec.update(
            uuid=s.uuid,
            this_host=s.host,
            last_active=s.last_active,
            originator=s.originator,
            is_local_superuser=True,
            auth_user_name=s.user,
            validation_time=s.created,
        )
        return self.encode_record("session", rec)

    def new_task(self, label: str, description: str = "") -> str:
        """A pending task record, resident on the pool master (as Task.create makes)."""
        with self.lock:
            return self.new(
                "task",
                name_label=label,
                name_description=description,
                status="pending",
                created=time.time(),
                finished=0.0,
                progress=0.0,
                resident_on=self.master(),
                allowed_operations=["cancel"],
            )

    # ------------------------------------------------------------------ initial world
    def master(self) -> str:
        pool = next(iter(self.objs["pool"].values()))
        return str(pool["master"])

    def _populate(self) -> None:
        cfg = self.cfg
        now = time.time()
        net = self.new(
            "network",
            name_label="Pool-wide network associated with eth0",
            MTU=1500,
            bridge="xenbr0",
            managed=True,
            default_locking_mode="unlocked",
        )
        shared = self.new(
            "SR",
            name_label="Shared storage",
            name_description="NFS SR",
            type="nfs",
            content_type="user",
            shared=True,
            physical_size=2048 * GiB,
            allowed_operations=["vdi_create", "vdi_destroy", "scan"],
        )
        tools = self.new(
            "SR",
            name_label="XenServer Tools",
            type="iso",
            content_type="iso",
            shared=True,
            is_tools_sr=True,
        )
        self.new(
            "VDI",
            name_label="guest-tools.iso",
            SR=tools,
            type="user",
            read_only=True,
            is_tools_iso=True,
            virtual_size=100 * MiB,
            location="guest-tools.iso",
            managed=True,
            on_boot="persist",
        )
        hosts = []
        for i in range(1, max(1, cfg.hosts) + 1):
            name = f"xenhost{i}"
            metrics = self.new(
                "host_metrics",
                memory_total=cfg.host_memory_gib * GiB,
                memory_free=cfg.host_memory_gib * GiB,
                live=True,
                last_updated=now,
            )
            h = self.new(
                "host",
                name_label=name,
                name_description="Simulated host",
                hostname=name,
                address=f"127.0.0.{i + 1}",
                enabled=True,
                metrics=metrics,
                API_version_major=API_VERSION[0],
                API_version_minor=API_VERSION[1],
                API_version_vendor="XenSource",
                software_version=dict(SOFTWARE_VERSION),
                capabilities=["xen-3.0-x86_64", "hvm-3.0-x86_32", "hvm-3.0-x86_64"],
                cpu_info={
                    "cpu_count": "16",
                    "socket_count": "2",
                    "vendor": "GenuineIntel",
                    "speed": "2600.000",
                    "modelname": "Simulated CPU",
                },
                sched_policy="credit",
                supported_bootloaders=["pygrub", "eliloader"],
                edition="xcp-ng",
                display="enabled",
                power_on_mode="",
                virtual_hardware_platform_versions=[0, 1, 2],
                multipathing=False,
                allowed_operations=[
                    "provision",
                    "evacuate",
                    "reboot",
                    "shutdown",
                    "vm_start",
                    "vm_resume",
                    "vm_migrate",
                ],
            )
            local = self.new(
                "SR",
                name_label="Local storage",
                type="lvm",
                content_type="user",
                physical_size=500 * GiB,
                allowed_operations=["vdi_create", "vdi_destroy", "scan"],
            )
            for sr in (local, shared, tools):
                pbd = self.new(
                    "PBD",
                    host=h,
                    SR=sr,
                    currently_attached=True,
                    device_config={"device": "/dev/sda3"} if sr == local else {},
                )
                self.link("SR", sr, "PBDs", pbd)
                self.link("host", h, "PBDs", pbd)
            dom0 = self._make_vm(
                f"Control domain on host: {name}",
                memory=4 * GiB,
                vcpus=8,
                is_control_domain=True,
                power_state="Running",
                resident_on=h,
                domid=0,
                domain_type="pv",
                with_disk=None,
                net=None,
            )
            self.set(
                "host",
                h,
                control_domain=dom0,
                suspend_image_sr=local,
                crash_dump_sr=local,
                local_cache_sr=local,
            )
            self.link("host", h, "resident_VMs", dom0)
            # the management PIF on the pool network (VDI.get_nbd_info looks for these)
            pif = self.new(
                "PIF",
                device="eth0",
                network=net,
                host=h,
                MAC=f"02:00:00:00:00:{i:02x}",
                MTU=1500,
                VLAN=-1,
                physical=True,
                currently_attached=True,
                ip_configuration_mode="DHCP",
                IP=f"127.0.0.{i + 1}",
                netmask="255.0.0.0",
                management=True,
                ipv6_configuration_mode="None",
                primary_address_type="IPv4",
                managed=True,
            )
            self.link("network", net, "PIFs", pif)
            self.link("host", h, "PIFs", pif)
            self.update_host_free(h)
            hosts.append(h)
        self.new(
            "pool",
            name_label="",
            master=hosts[0],
            default_SR=shared,
            suspend_image_SR=shared,
            crash_dump_SR=shared,
            cpu_info={"cpu_count": "16"},
            restrictions={"restrict_pool_size": "false"},
            migration_compression=False,
        )
        self.hosts = hosts
        self.net = net
        self.shared_sr = shared
        # Templates as a fresh host has them (a few of the default set).
        for label, hvm in (
            ("Other install media", True),
            ("Debian Bookworm 12", False),
            ("Ubuntu Jammy Jellyfish 22.04", False),
        ):
            t = self._make_vm(
                label,
                memory=2 * GiB,
                vcpus=1,
                with_disk=None,
                net=None,
                is_a_template=True,
                is_default_template=True,
                hvm=hvm,
            )
            rec = self.objs["VM"][t]
            rec["other_config"] = {
                "default_template": "true",
                "disks": f'<provision><disk device="0" size="{32 * GiB}" sr="" bootable="true" '
                'type="system"/></provision>',
                "install-methods": "cdrom" if hvm else "cdrom,nfs,http,ftp",
            }
            rec["name_description"] = f"Template for {label}"
            self.touch("VM", t)
        for i in range(1, cfg.vms + 1):
            vm = self._make_vm(f"vm-{i:02d}", memory=1 * GiB, vcpus=2, with_disk=shared, net=net)
            if i <= cfg.running:
                self._start(vm, self.hosts[(i - 1) % len(self.hosts)], False)

    def _make_vm(
        self,
        label: str,
        *,
        memory: int,
        vcpus: int,
        with_disk: str | None,
        net: str | None,
        hvm: bool = True,
        **extra: Any,
    ) -> str:
        now = time.time()
        metrics = self.new(
            "VM_metrics",
            memory_actual=0,
            VCPUs_number=0,
            install_time=now,
            last_updated=now,
            current_domain_type="unspecified",
            hvm=hvm,
        )
        fields: Rec = dict(
            name_label=label,
            power_state="Halted",
            memory_static_max=memory,
            memory_dynamic_max=memory,
            memory_dynamic_min=memory,
            memory_static_min=memory,
            memory_target=memory,
            memory_overhead=11 * MiB,
            VCPUs_max=vcpus,
            VCPUs_at_startup=vcpus,
            actions_after_shutdown="destroy",
            actions_after_reboot="restart",
            actions_after_crash="restart",
            actions_after_softreboot="soft_reboot",
            HVM_boot_policy="BIOS order" if hvm else "",
            HVM_boot_params={"order": "cdn"} if hvm else {},
            PV_bootloader="" if hvm else "pygrub",
            HVM_shadow_multiplier=1.0,
            platform={"acpi": "1", "apic": "true", "pae": "true", "viridian": "false", "nx": "true"}
            if hvm
            else {},
            metrics=metrics,
            domid=-1,
            user_version=1,
            ha_restart_priority="",
            domain_type="hvm" if hvm else "pv",
            hardware_platform_version=0,
            snapshot_time=0.0,
            secureboot_certificates_state="ok",
            generation_id="",
            order=0,
        )
        fields.update(extra)
        vm = self.new("VM", **fields)
        if with_disk is not None:
            vdi = self._new_vdi(f"{label} disk 0", with_disk, 16 * GiB)
            self.os_vdis.add(vdi)  # an installed guest with PV drivers
            self._new_vbd(vm, vdi, "0", bootable=True)
            self._new_vbd(vm, NULL, "3", kind="CD")
        if net is not None:
            self._new_vif(vm, net, "0")
        self.touch("VM", vm)
        return vm

    def _new_vdi(self, label: str, sr: str, size: int, **extra: Any) -> str:
        srr = self.get("SR", sr)
        u = str(uuidlib.uuid4())
        vals: Rec = dict(
            uuid=u,
            location=u,
            name_label=label,
            SR=sr,
            virtual_size=size,
            physical_utilisation=size // 4,
            type="user",
            managed=True,
            on_boot="persist",
            allowed_operations=[
                "clone",
                "copy",
                "snapshot",
                "destroy",
                "resize",
                "update",
                "forget",
            ],
        )
        vals.update(extra)
        vdi = self.new("VDI", **vals)
        srr["virtual_allocation"] += size
        srr["physical_utilisation"] += size // 4
        self.link("SR", sr, "VDIs", vdi)
        return vdi

    def _new_vbd(
        self,
        vm: str,
        vdi: str,
        userdevice: str,
        *,
        bootable: bool = False,
        kind: str = "Disk",
        mode: str | None = None,
        **extra: Any,
    ) -> str:
        empty = vdi == NULL
        vals: Rec = dict(
            VM=vm,
            VDI=vdi,
            userdevice=userdevice,
            device="",
            bootable=bootable,
            mode=mode or ("RO" if kind == "CD" else "RW"),
            type=kind,
            unpluggable=True,
            empty=empty,
            qos_supported_algorithms=[],
            allowed_operations=["attach"] + (["insert"] if empty and kind == "CD" else []),
        )
        vals.update(extra)
        vbd = self.new("VBD", **vals)
        self.link("VM", vm, "VBDs", vbd)
        if not empty:
            self.link("VDI", vdi, "VBDs", vbd)
        return vbd

    def _copy_vbd(self, vm: str, vdi: str, b: Rec) -> str:
        """A copy of VBD record ``b`` for ``vm``, on ``vdi`` (Xapi_vbd_helpers.copy: the
        record's other_config included)."""
        return self._new_vbd(
            vm,
            vdi,
            b["userdevice"],
            bootable=b["bootable"],
            kind=b["type"],
            mode=b["mode"],
            other_config=dict(b.get("other_config") or {}),
        )

    def _copy_vif(self, vm: str, v: Rec, *, keep_mac: bool) -> str:
        """A copy of VIF record ``v`` for ``vm`` (Xapi_vif_helpers.copy), with its MAC or
        a new one."""
        return self._new_vif(
            vm,
            v["network"],
            v["device"],
            mac=v["MAC"] if keep_mac else "",
            mtu=v["MTU"],
            other_config=dict(v.get("other_config") or {}),
        )

    def _new_mac(self) -> str:
        self.macs += 1
        n = self.macs
        return f"aa:bb:cc:{(n >> 16) & 255:02x}:{(n >> 8) & 255:02x}:{n & 255:02x}"

    def _new_vif(
        self, vm: str, net: str, device: str, mac: str = "", mtu: int = 1500, **extra: Any
    ) -> str:
        vals: Rec = dict(
            VM=vm,
            network=net,
            device=device,
            MAC=mac or self._new_mac(),
            MAC_autogenerated=not mac,
            MTU=mtu,
            locking_mode="network_default",
            ipv4_configuration_mode="None",
            ipv6_configuration_mode="None",
            allowed_operations=["attach"],
        )
        vals.update(extra)
        vif = self.new("VIF", **vals)
        self.link("VM", vm, "VIFs", vif)
        self.link("network", net, "VIFs", vif)
        return vif

    # ------------------------------------------------------------------ VM rules
    def op_error(self, ref: str, op: str, strict: bool = True) -> Fault | None:
        """LIFECYCLE: check_operation_error (the checks this simulator models). `strict` as
        xapi's: true for allowed_operations, VM.assert_operation_valid and most messages;
        VM.pool_migrate passes not force."""
        vm = self.objs["VM"][ref]
        ps = vm["power_state"]
        allowed = list(ALLOWED_POWER_STATES.get(op, ["Halted", "Paused", "Suspended", "Running"]))
        if op in ("clone", "copy") and vm["is_a_snapshot"]:
            allowed.append("Suspended")
        if vm["is_control_domain"] and op in (
            "changing_VCPUs",
            "changing_static_range",
            "changing_memory_limits",
        ):
            allowed.append("Running")
        if op in vm["blocked_operations"]:
            return Fault("OPERATION_BLOCKED", ref, vm["blocked_operations"][op])
        if ps not in allowed:
            return Fault(
                "VM_BAD_POWER_STATE", ref, ", ".join(s.lower() for s in allowed), ps.lower()
            )
        cur = list(vm["current_operations"].items())
        if cur:
            busy = [o for _, o in cur]
            ok = (op == "hard_shutdown" and "hard_shutdown" not in busy) or (
                op == "hard_reboot" and not ({"hard_shutdown", "hard_reboot"} & set(busy))
            )
            if not ok:
                return Fault("OTHER_OPERATION_IN_PROGRESS", "VM", ref, cur[0][1], cur[0][0])
        if vm["is_a_template"] and not vm["is_a_snapshot"]:
            default = vm["is_default_template"] or vm["other_config"].get("default_template") in (
                "true",
                "1",
            )
            if op not in TEMPLATE_ALLOWED_OPS or (op == "destroy" and default):
                return Fault("VM_IS_TEMPLATE", ref, op)
        if vm["is_a_snapshot"] and op not in SNAPSHOT_ALLOWED_OPS:
            return Fault("VM_IS_SNAPSHOT", ref, op)
        if op == "provision" and not vm["is_a_template"]:
            return Fault("ONLY_PROVISION_TEMPLATE")
        if op == "revert" and not vm["is_a_snapshot"]:
            return Fault("ONLY_REVERT_SNAPSHOT")
        if vm["is_control_domain"] and (op in RESULT_STATE or op in _DOM0_BLOCKED):
            return Fault("OPERATION_NOT_ALLOWED", f"{op} is not allowed on a control domain")
        return self._feature_error(ref, op, strict)

    def _feature_error(self, ref: str, op: str, strict: bool) -> Fault | None:
        """LIFECYCLE: check_op_for_feature, for SUSPEND_FEATURE_OPS (VM_NON_SUSPENDABLE
        whatever the mode, VM_LACKS_FEATURE when strict) and GUEST_FEATURE_OPS (strict)."""
        needs = GUEST_FEATURE_OPS.get(op)
        if needs is None and op not in SUSPEND_FEATURE_OPS:
            return None
        vm = self.objs["VM"][ref]
        if vm["power_state"] not in ("Running", "Paused"):  # not is_live: implicit support
            return None
        gm = self.objs["VM_guest_metrics"].get(vm["guest_metrics"])
        other: dict[str, str] = gm["other"] if gm is not None else {}
        if op in SUSPEND_FEATURE_OPS and CANT_SUSPEND_KEY in other:
            return Fault("VM_NON_SUSPENDABLE", ref, other[CANT_SUSPEND_KEY])
        metrics = self.objs["VM_metrics"].get(vm["metrics"])
        if metrics is not None and metrics["current_domain_type"] in PV_DOMAIN_TYPES:
            return None  # has_definitely_booted_pv
        if gm is not None and has_pv_drivers(gm["PV_drivers_version"]):
            return None  # full PV drivers imply all features
        if not strict:
            return None
        if any(other.get(f) == "1" for f in needs or (SUSPEND_FEATURE,)):
            return None
        return Fault("VM_LACKS_FEATURE", ref)

    def live_domain_type(self, ref: str) -> str:
        """ocaml/xapi/helpers.ml: domain_type -- VM_metrics.current_domain_type while the VM
        is Paused, Running or Suspended, VM.domain_type when Halted."""
        vm = self.objs["VM"][ref]
        metrics = self.objs["VM_metrics"].get(vm["metrics"])
        if vm["power_state"] != "Halted" and metrics is not None:
            return str(metrics["current_domain_type"])
        return str(vm["domain_type"])

    def hotplug_error(self, cls: str, ref: str) -> Fault | None:
        """xapi_vbd_helpers.ml / xapi_vif_helpers.ml: valid_operations -- plug/unplug into a
        running HVM guest needs PV drivers or an explicit can_use_hotplug_<vbd|vif> "yes"
        (tables.HOTPLUG_OPS)."""
        vm_ref = self.objs[cls][ref]["VM"]
        vm = self.objs["VM"][vm_ref]
        if vm["power_state"] != "Running" or self.live_domain_type(vm_ref) != "hvm":
            return None
        gm = self.objs["VM_guest_metrics"].get(vm["guest_metrics"])
        if gm is not None:
            claim = gm[f"can_use_hotplug_{cls.lower()}"]
            if claim == "yes":
                return None
            if claim == "no":
                return Fault("OPERATION_NOT_ALLOWED", HOTPLUG_REFUSED[cls])
            if gm["PV_drivers_detected"]:
                return None
        if gm is not None and has_pv_drivers(gm["PV_drivers_version"]):
            return None
        return Fault("VM_MISSING_PV_DRIVERS", vm_ref)

    def has_os(self, vm: str) -> bool:
        """Whether starting the VM now boots a guest OS (with the simulated guest agent and
        PV drivers). PV/PVH with direct boot (PV_bootloader ""): a PV_kernel is given. PV/PVH
        with a bootloader (pygrub): a bootable, non-empty VBD holds an OS. HVM: a non-empty
        VBD (disk or CD) in the boot order holds an OS. Only the initial vm-NN disks (and
        snapshots, clones and copies of them) hold an OS: blank VDIs (VDI.create, provision
        from a template) and the tools ISO do not."""
        rec = self.objs["VM"][vm]
        if rec["is_control_domain"]:
            return True
        vbds = [self.objs["VBD"][b] for b in rec["VBDs"] if b in self.objs["VBD"]]
        full = [b for b in vbds if not b["empty"] and b["VDI"] in self.os_vdis]
        if rec["domain_type"] in PV_DOMAIN_TYPES:
            if rec["PV_bootloader"] == "":
                return bool(rec["PV_kernel"])
            return any(b["bootable"] for b in full)
        order = str(rec["HVM_boot_params"].get("order", "cd"))
        kinds = {"c": "Disk", "d": "CD"}
        return any(b["type"] in {kinds[c] for c in order if c in kinds} for b in full)

    def _update_allowed_ops(self, ref: str) -> None:
        vm = self.objs["VM"][ref]
        vm["allowed_operations"] = [op for op in LISTED_VM_OPS if self.op_error(ref, op) is None]

    # ------------------------------------------------------------------ lifecycle
    @staticmethod
    def footprint(rec: Rec) -> int:
        """Host memory a live VM takes (memory_dynamic_max + memory_overhead)."""
        return int(rec["memory_dynamic_max"]) + int(rec["memory_overhead"])

    def host_free(self, host: str) -> int:
        total = int(self.objs["host_metrics"][self.objs["host"][host]["metrics"]]["memory_total"])
        used = sum(
            self.footprint(v)
            for v in self.objs["VM"].values()
            if v["resident_on"] == host and v["power_state"] in ("Running", "Paused")
        )
        return total - used

    def update_host_free(self, host: str) -> None:
        if self.valid("host", host):
            m = self.objs["host"][host]["metrics"]
            self.set("host_metrics", m, memory_free=self.host_free(host), last_updated=time.time())

    def assert_fits(self, vm: str, host: str) -> None:
        """ocaml/xapi/memory_check.ml: HOST_NOT_ENOUGH_FREE_MEMORY [needed, available]."""
        needed = self.footprint(self.objs["VM"][vm])
        free = self.host_free(host)
        if needed > free:
            raise Fault("HOST_NOT_ENOUGH_FREE_MEMORY", needed, free)

    def assert_enabled(self, host: str) -> None:
        """xapi_vm_helpers.ml assert_host_is_enabled: HOST_DISABLED [host]."""
        if not self.objs["host"][host]["enabled"]:
            raise Fault("HOST_DISABLED", host)

    def host_live(self, host: str) -> bool:
        """host_metrics.live (tables.FAILED_HOST_REF): false once the host has failed."""
        m = self.objs["host"][host]["metrics"]
        return bool(self.objs["host_metrics"].get(m, {}).get("live", True))

    def assert_live(self, host: str) -> None:
        """tables.HOST_OFFLINE_REF: an operation forwarded to a host that is not live."""
        if self.valid("host", host) and not self.host_live(host):
            raise Fault("HOST_OFFLINE", host)

    def _free_host(self) -> str:
        def load(h: str) -> tuple[int, int]:
            return (-self.host_free(h), len(self.objs["host"][h]["resident_VMs"]))

        enabled = [h for h in self.hosts if self.objs["host"][h]["enabled"] and self.host_live(h)]
        return min(enabled or self.hosts, key=load)

    def _start(self, vm: str, host: str, paused: bool) -> None:
        rec = self.objs["VM"][vm]
        if rec["VCPUs_at_startup"] < 1:
            raise Fault("VM_NO_VCPUS", vm)
        if not rec["is_control_domain"]:
            self.assert_fits(vm, host)
        self.domid += 1
        now = time.time()
        rec.update(
            power_state="Paused" if paused else "Running",
            resident_on=host,
            domid=self.domid,
            scheduled_to_be_resident_on=NULL,
            last_boot_CPU_flags={"vendor": "GenuineIntel", "features": "1fcbfbff"},
        )
        self.set(
            "VM_metrics",
            rec["metrics"],
            memory_actual=rec["memory_dynamic_max"],
            VCPUs_number=rec["VCPUs_at_startup"],
            start_time=now,
            last_updated=now,
            state=["paused"] if paused else ["running"],
            VCPUs_utilisation={i: 0.0 for i in range(rec["VCPUs_at_startup"])},
            current_domain_type=rec["domain_type"],
        )
        self.link("host", host, "resident_VMs", vm)
        self.update_host_free(host)
        for dev in rec["VBDs"] + rec["VIFs"]:
            cls = "VBD" if dev in self.objs["VBD"] else "VIF"
            self.set(
                cls,
                dev,
                currently_attached=True,
                device=f"xvd{chr(ord('a') + int(self.objs[cls][dev]['userdevice']))}"
                if cls == "VBD" and self.objs[cls][dev]["userdevice"].isdigit()
                else self.objs[cls][dev]["device"],
                allowed_operations=["unplug", "unplug_force"],
            )
        if self.has_os(vm):
            self.booted_os.add(vm)
            self.guest_xs[vm] = {f"control/{k}": v for k, v in GUEST_CONTROL_KEYS.items()}
            self.guest_xs[vm]["control/has-vendor-device"] = (
                "1" if rec["has_vendor_device"] else "0"
            )
        else:
            self.booted_os.discard(vm)
            self.guest_xs.pop(vm, None)
        self.touch("VM", vm)
        if not paused:
            self._schedule_guest(vm, rec["domid"])

    def _schedule_guest(self, vm: str, domid: int) -> None:
        def boot() -> None:
            with self.lock:
                rec = self.objs["VM"].get(vm)
                if rec is None or rec["domid"] != domid or rec["power_state"] != "Running":
                    return
                self._guest_up(vm)

        if vm not in self.booted_os:
            return  # nothing booted: no guest agent, no PV drivers, no guest metrics

        t = threading.Timer(self.cfg.guest_delay, boot)
        t.daemon = True
        self.timers = [x for x in self.timers if x.is_alive()] + [t]
        t.start()

    def _guest_up(self, vm: str) -> None:
        rec = self.objs["VM"][vm]
        networks: dict[str, str] = {}
        for vif in rec["VIFs"]:
            v = self.objs["VIF"][vif]
            dev = v["device"]
            n = int(rec["uuid"][:4], 16)
            ip = f"10.{(n >> 8) & 255}.{n & 255}.{10 + int(dev) if dev.isdigit() else 10}"
            networks[f"{dev}/ip"] = ip
            networks[f"{dev}/ipv4/0"] = ip
            networks[f"{dev}/ipv6/0"] = f"fe80::a8bb:ccff:fe{n & 255:02x}:{int(dev or 0):04x}"
        now = time.time()
        gm = self.new(
            "VM_guest_metrics",
            os_version={"name": "Simulated Linux", "distro": "debian", "major": "12", "minor": "0"},
            PV_drivers_version={"major": "9", "minor": "3", "micro": "3", "build": "1"},
            PV_drivers_up_to_date=True,
            PV_drivers_detected=True,
            networks=networks,
            memory={},
            disks={},
            other=self.guest_other(vm),
            last_updated=now,
            live=True,
            can_use_hotplug_vbd="yes",
            can_use_hotplug_vif="yes",
        )
        old = rec["guest_metrics"]
        self.set("VM", vm, guest_metrics=gm)
        if old != NULL:
            self.delete("VM_guest_metrics", old)

    def guest_other(self, vm: str) -> dict[str, str]:
        """VM_guest_metrics.other as xapi_guest_agent.ml: get_initial_guest_metrics derives
        it from the guest's xenstore (tables.GUEST_CANT_SUSPEND_XS)."""
        xs = self.guest_xs.get(vm, {})
        reason = xs.get(GUEST_CANT_SUSPEND_XS)
        other: dict[str, str] = {}
        for path, value in xs.items():
            if not path.startswith("control/") or "/" in path[len("control/") :]:
                continue
            key = path[len("control/") :]
            if key == SUSPEND_FEATURE and reason is not None:
                other[CANT_SUSPEND_KEY] = reason
            else:
                other[key] = value
        if "data/ts" in xs:
            other["data-ts"] = xs["data/ts"]
        return other

    def guest_xenstore_write(self, vm: str, path: str, value: str | None) -> None:
        """Simulate the guest writing (value None: removing) a key of its own xenstore
        directory, e.g. "data/cant_suspend_reason"; the guest agent's report
        (VM_guest_metrics.other) follows at once. For tests, through `server.db`."""
        with self.lock:
            if vm not in self.booted_os:
                raise ValueError(f"{vm} has no running guest OS")
            xs = self.guest_xs.setdefault(vm, {})
            if value is None:
                xs.pop(path, None)
            else:
                xs[path] = value
            gm = self.objs["VM"][vm]["guest_metrics"]
            if gm in self.objs["VM_guest_metrics"]:
                self.set("VM_guest_metrics", gm, other=self.guest_other(vm))
                self._update_allowed_ops(vm)
                self.touch("VM", vm)

    def _halt(self, vm: str) -> None:
        rec = self.objs["VM"][vm]
        host = rec["resident_on"]
        gm = rec["guest_metrics"]
        rec.update(power_state="Halted", resident_on=NULL, domid=-1, guest_metrics=NULL)
        self.booted_os.discard(vm)
        self.guest_xs.pop(vm, None)
        if gm != NULL:
            self.delete("VM_guest_metrics", gm)
        if rec["suspend_VDI"] != NULL:
            self._destroy_vdi(rec["suspend_VDI"])
            rec["suspend_VDI"] = NULL
        self.set(
            "VM_metrics",
            rec["metrics"],
            memory_actual=0,
            VCPUs_number=0,
            state=[],
            VCPUs_utilisation={},
            last_updated=time.time(),
        )
        if host != NULL:
            self.link("host", host, "resident_VMs", vm, add=False)
            self.update_host_free(host)
        self._detach_devices(vm)
        self.touch("VM", vm)

    def _detach_devices(self, vm: str) -> None:
        rec = self.objs["VM"][vm]
        for dev in rec["VBDs"] + rec["VIFs"]:
            cls = "VBD" if dev in self.objs["VBD"] else "VIF"
            if self.objs[cls][dev]["currently_attached"]:
                self.set(cls, dev, currently_attached=False, allowed_operations=["attach"])

    def _destroy_vdi(self, vdi: str) -> None:
        if not self.valid("VDI", vdi):
            return
        rec = self.objs["VDI"][vdi]
        sr = rec["SR"]
        for vbd in list(rec["VBDs"]):
            if self.valid("VBD", vbd):
                self._destroy_vbd(vbd)
        if self.valid("SR", sr):
            srr = self.objs["SR"][sr]
            srr["virtual_allocation"] = max(0, srr["virtual_allocation"] - rec["virtual_size"])
            srr["physical_utilisation"] = max(
                0, srr["physical_utilisation"] - rec["physical_utilisation"]
            )
            self.link("SR", sr, "VDIs", vdi, add=False)
        # VDI.snapshots is the reverse of snapshot_of (datamodel.ml relation
        # (_vdi, "snapshot_of"), (_vdi, "snapshots")): a destroyed snapshot leaves it.
        if rec["snapshot_of"] != NULL and self.valid("VDI", rec["snapshot_of"]):
            self.link("VDI", rec["snapshot_of"], "snapshots", vdi, add=False)
        self.os_vdis.discard(vdi)
        self.vdata.drop(vdi)
        self.delete("VDI", vdi)

    def _destroy_vbd(self, vbd: str) -> None:
        rec = self.objs["VBD"][vbd]
        self.link("VM", rec["VM"], "VBDs", vbd, add=False)
        if rec["VDI"] != NULL:
            self.link("VDI", rec["VDI"], "VBDs", vbd, add=False)
        self.delete("VBD", vbd)

    def _destroy_vif(self, vif: str) -> None:
        rec = self.objs["VIF"][vif]
        self.link("VM", rec["VM"], "VIFs", vif, add=False)
        self.link("network", rec["network"], "VIFs", vif, add=False)
        self.delete("VIF", vif)

    def _copy_vm(
        self,
        src: str,
        new_name: str,
        sr: str | None,
        ignore_vdis: list[str] | None = None,
        **overrides: Any,
    ) -> str:
        """clone/copy/snapshot: a new VM record with copies of its disks and VIFs."""
        s = self.objs["VM"][src]
        skip = {
            "uuid",
            "allowed_operations",
            "current_operations",
            "VBDs",
            "VIFs",
            "metrics",
            "guest_metrics",
            "resident_on",
            "snapshots",
            "children",
            "consoles",
            "suspend_VDI",
            "domid",
            "VUSBs",
            "crash_dumps",
            "VTPMs",
            "VGPUs",
            "attached_PCIs",
            "is_default_template",
            "snapshot_of",
            "is_a_snapshot",
            "snapshot_time",
            "parent",
            "power_state",
            "blocked_operations",
        }
        vals: Rec = {
            k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
            for k, v in s.items()
            if k not in skip
        }
        vals["name_label"] = new_name
        vals["other_config"].pop("default_template", None)
        vals["power_state"] = "Halted"
        vals["domid"] = -1
        # ocaml/xapi/xapi_vm_clone.ml: copy_vm_record, "compute the parent VM": clone and
        # copy make top-level VMs (CA-52668, parent null); a snapshot or checkpoint takes
        # the source's parent, and the source's parent becomes the new snapshot.
        snapshot = bool(overrides.get("is_a_snapshot"))
        vals["parent"] = s["parent"] if snapshot and self.valid("VM", s["parent"]) else NULL
        vals.update(overrides)
        metrics = self.new(
            "VM_metrics",
            install_time=time.time(),
            last_updated=time.time(),
            current_domain_type="unspecified",
            hvm=s["domain_type"] == "hvm",
        )
        vals["metrics"] = metrics
        vm = self.new("VM", **vals)
        if vals["parent"] != NULL:
            self.link("VM", vals["parent"], "children", vm)
        for vbd in s["VBDs"]:
            b = self.objs["VBD"][vbd]
            vdi = b["VDI"]
            if ignore_vdis and vdi in ignore_vdis:
                continue
            if vdi != NULL and b["type"] == "Disk":
                d = self.objs["VDI"][vdi]
                target = sr if sr and sr != NULL else d["SR"]
                extra: Rec = {}
                if snapshot:
                    extra = dict(is_a_snapshot=True, snapshot_of=vdi, snapshot_time=time.time())
                new_vdi = self._new_vdi(
                    d["name_label"],
                    target,
                    d["virtual_size"],
                    name_description=d["name_description"],
                    type=d["type"],
                    **extra,
                )
                self.vdata.copy(vdi, new_vdi)
                if snapshot:
                    self.snapshot_vdi_cbt(vdi, new_vdi)
                    self.link("VDI", vdi, "snapshots", new_vdi)
                if vdi in self.os_vdis:
                    self.os_vdis.add(new_vdi)
                vdi = new_vdi
            # Xapi_vbd_helpers.copy / Xapi_vif_helpers.copy copy the records, other_config
            # included (where clients keep what a device is for, e.g. the owner key).
            self._copy_vbd(vm, vdi, b)
        for vif in s["VIFs"]:
            self._copy_vif(vm, self.objs["VIF"][vif], keep_mac=snapshot)
        if snapshot:
            self.set_parent(src, vm)
        return vm

    def revert_devices(self, vm: str, snap: str) -> None:
        """VM.revert's devices (ocaml/xapi/xapi_vm_snapshot.ml, update_vifs_vbds_and_vgpus):
        the VM's VBDs are destroyed, with those of its disks the snapshot has a copy of; the
        snapshot's disks are cloned (new VDIs, VDI.snapshot_of of the disk's snapshots moved
        to the clone) and attached by copies of the snapshot's VBDs; the VM's VIFs are
        replaced by copies of the snapshot's, MACs kept. A disk of the VM the snapshot has
        no copy of (added since) is left unattached, as xapi leaves it."""
        rec, s = self.objs["VM"][vm], self.objs["VM"][snap]
        vbds, vdis = self.objs["VBD"], self.objs["VDI"]
        snap_disks = [b for b in s["VBDs"] if vbds[b]["type"] == "Disk" and vbds[b]["VDI"] != NULL]
        copied = {vdis[vbds[b]["VDI"]]["snapshot_of"] for b in snap_disks}
        vm_disks = [
            vbds[b]["VDI"]
            for b in rec["VBDs"]
            if vbds[b]["type"] == "Disk" and vbds[b]["VDI"] != NULL
        ]
        for vbd in list(rec["VBDs"]):
            self._destroy_vbd(vbd)
        for vdi in vm_disks:
            if vdi in copied:
                self._destroy_vdi(vdi)
        for vbd in s["VBDs"]:
            b = vbds[vbd]
            vdi = b["VDI"]
            if vdi != NULL and b["type"] == "Disk":
                d = vdis[vdi]
                clone = self._new_vdi(
                    d["name_label"],
                    d["SR"],
                    d["virtual_size"],
                    name_description=d["name_description"],
                    type=d["type"],
                )
                self.vdata.copy(vdi, clone)
                if vdi in self.os_vdis:
                    self.os_vdis.add(clone)
                of = d["snapshot_of"]
                for other, o in list(vdis.items()):
                    if o["snapshot_of"] == of and of != NULL:
                        o["snapshot_of"] = clone
                        self.link("VDI", clone, "snapshots", other)
                        self.touch("VDI", other)
                vdi = clone
            self._copy_vbd(vm, vdi, b)
        for vif in list(rec["VIFs"]):
            self._destroy_vif(vif)
        for vif in s["VIFs"]:
            self._copy_vif(vm, self.objs["VIF"][vif], keep_mac=True)

    def snapshot_vdi_cbt(self, vdi: str, snap: str) -> None:
        """A snapshot of a VDI with CBT enabled takes its CBT log over and is itself
        cbt_enabled (sm drivers/VDI.py: _cbt_snapshot; the snapshot's record comes from the
        SM's vdi_info, cbt_enabled included)."""
        if self.objs["VDI"][vdi]["cbt_enabled"]:
            self.vdata.snapshot_cbt(vdi, snap)
            self.set("VDI", snap, cbt_enabled=True)

    def set_parent(self, vm: str, parent: str) -> None:
        """VM.parent := parent, keeping the reverse field VM.children in step (the
        datamodel relation ((_vm, "parent"), (_vm, "children")) in ocaml/idl/datamodel.ml)."""
        rec = self.objs["VM"][vm]
        old = rec["parent"]
        if old != NULL:
            self.link("VM", old, "children", vm, add=False)
        rec["parent"] = parent
        if parent != NULL and self.valid("VM", parent):
            self.link("VM", parent, "children", vm)
        self.touch("VM", vm)

    def _provision(self, vm: str) -> None:
        rec = self.objs["VM"][vm]
        spec = rec["other_config"].get("disks", "")
        if not spec:
            return
        try:
            root = ET.fromstring(spec)
        except ET.ParseError as e:
            raise Fault("INTERNAL_ERROR", f"cannot parse other_config:disks: {e}") from None
        for disk in root.findall("disk"):
            sr = disk.get("sr") or ""
            if not sr or not any(r["uuid"] == sr for r in self.objs["SR"].values()):
                sr_ref = self.objs["pool"][next(iter(self.objs["pool"]))]["default_SR"]
            else:
                sr_ref = next(r for r, x in self.objs["SR"].items() if x["uuid"] == sr)
            size = int(disk.get("size", str(8 * GiB)))
            vdi = self._new_vdi(
                f"{rec['name_label']} {disk.get('device', '0')}",
                sr_ref,
                size,
                type=disk.get("type", "system"),
            )
            self._new_vbd(
                vm, vdi, disk.get("device", "0"), bootable=disk.get("bootable", "false") == "true"
            )
        rec["other_config"].pop("disks", None)
        self.touch("VM", vm)


def has_pv_drivers(version: dict[str, str]) -> bool:
    """ocaml/xapi/xapi_pv_driver_version.ml: get_drivers_version is not Unknown iff
    PV_drivers_version has integer "major" and "minor" (and integer micro/build if given)."""
    try:
        for key in ("major", "minor"):
            int(version[key])
        for key in ("micro", "build"):
            if key in version:
                int(version[key])
    except (KeyError, ValueError):
        return False
    return True


def check_memory(static_min: int, dyn_min: int, dyn_max: int, static_max: int) -> None:
    """ocaml/xapi/xapi_vm_memory_constraints.ml: assert_valid (DMC enabled)."""
    if not (0 <= static_min <= dyn_min <= dyn_max <= static_max):
        raise Fault("MEMORY_CONSTRAINT_VIOLATION_ORDER")
