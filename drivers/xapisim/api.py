"""XenAPI message dispatch: parameter counts, sessions, Async tasks, and every message."""

from __future__ import annotations

import re
import threading
import time
import xmlrpc.client
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .model import (
    NULL,
    Ctx,
    Database,
    Fault,
    Rec,
    Session,
    check_memory,
    encode,
    wire_datetime,
    xmlrpc_value_string,
)
from .tables import (
    CBT_ERROR,
    CBT_SAME,
    CBT_UNRELATED,
    CLASSES,
    DATA_DESTROY_WAIT,
    MESSAGES,
    MIGRATE_FORCE_KEY,
    MIGRATE_FORCE_TRUE,
    RESULT_STATE,
)
from .wire import Encoded

if TYPE_CHECKING:
    from .nbd import NbdServer

Impl = Callable[..., Any]


def success(value: Any) -> Rec:
    return {"Status": "Success", "Value": value}


def failure(f: Fault) -> Rec:
    return {"Status": "Failure", "ErrorDescription": f.description}


_RECORD_REQUIRED: dict[str, list[str]] = {
    # Fields a <Class>.create record must carry (those without a default in the datamodel).
    "VBD": [
        "VM",
        "VDI",
        "userdevice",
        "bootable",
        "mode",
        "type",
        "unpluggable",
        "empty",
        "other_config",
        "qos_algorithm_type",
        "qos_algorithm_params",
    ],
    "VDI": [
        "name_label",
        "name_description",
        "SR",
        "virtual_size",
        "type",
        "sharable",
        "read_only",
        "other_config",
    ],
    "VIF": [
        "device",
        "network",
        "VM",
        "MAC",
        "MTU",
        "other_config",
        "qos_algorithm_type",
        "qos_algorithm_params",
    ],
    "VM": [
        "name_label",
        "name_description",
        "user_version",
        "is_a_template",
        "affinity",
        "memory_target",
        "memory_static_max",
        "memory_dynamic_max",
        "memory_dynamic_min",
        "memory_static_min",
        "VCPUs_params",
        "VCPUs_max",
        "VCPUs_at_startup",
        "actions_after_shutdown",
        "actions_after_reboot",
        "actions_after_crash",
        "PV_bootloader",
        "PV_kernel",
        "PV_ramdisk",
        "PV_args",
        "PV_bootloader_args",
        "PV_legacy_args",
        "HVM_boot_policy",
        "HVM_boot_params",
        "platform",
        "PCI_bus",
        "other_config",
        "recommendations",
    ],
}


# Messages that have an Async.<Class>.<message> form: in the datamodel, the constructors,
# destructors and the messages declared with ~flags:[`Session; `Async] (lifecycle and
# device messages); field getters/setters, session.* and event.* have none.
_NO_ASYNC = {"VM.get_guest_metrics", "pool.get_master", "host.get_servertime",
             "host.get_server_localtime", "event.from", "event.next",
             "event.register", "event.unregister", "event.get_current_id", "event.inject",
             "VM.set_VCPUs_max", "VM.set_VCPUs_at_startup"}  # fmt: skip


def _async_allowed(name: str) -> bool:
    return name in MESSAGES and not name.startswith("session.") and name not in _NO_ASYNC


_TOKEN = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|[A-Za-z_]+|=|<>)')


def _both(a: Callable[[Rec], bool], b: Callable[[Rec], bool]) -> Callable[[Rec], bool]:
    return lambda r: a(r) and b(r)


def _either(a: Callable[[Rec], bool], b: Callable[[Rec], bool]) -> Callable[[Rec], bool]:
    return lambda r: a(r) or b(r)


def parse_where(expr: str) -> Callable[[Rec], bool]:
    """The db query language of get_all_records_where (ocaml/database/db_filter.ml):
    ``field "name" = "value"``, ``<>``, ``and``, ``or``, ``not``, ``true``, ``false``,
    parentheses. Values are compared with the field's string form."""
    toks: list[str] = []
    pos = 0
    while pos < len(expr):
        if expr[pos:].strip() == "":
            break
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise Fault("INVALID_VALUE", "expr", expr)
        toks.append(m.group(1))
        pos = m.end()
    i = 0

    def peek() -> str:
        return toks[i].lower() if i < len(toks) else ""

    def take() -> str:
        nonlocal i
        if i >= len(toks):
            raise Fault("INVALID_VALUE", "expr", expr)
        i += 1
        return toks[i - 1]

    def literal() -> str:
        t = take()
        if not t.startswith('"'):
            raise Fault("INVALID_VALUE", "expr", expr)
        return t[1:-1].replace('\\"', '"')

    def atom() -> Callable[[Rec], bool]:
        t = take().lower()
        if t == "(":
            e = disj()
            if take() != ")":
                raise Fault("INVALID_VALUE", "expr", expr)
            return e
        if t == "not":
            inner = atom()
            return lambda r: not inner(r)
        if t in ("true", "false"):
            return lambda r: t == "true"
        if t == "field":
            name = literal()
            op = take()
            value = literal()
            if op not in ("=", "<>"):
                raise Fault("INVALID_VALUE", "expr", expr)

            def cmp(r: Rec) -> bool:
                v = r.get(name)
                sv = str(v).lower() if isinstance(v, bool) else str(v)
                return (sv == value) == (op == "=")

            return cmp
        raise Fault("INVALID_VALUE", "expr", expr)

    def conj() -> Callable[[Rec], bool]:
        e = atom()
        while peek() == "and":
            take()
            e = _both(e, atom())
        return e

    def disj() -> Callable[[Rec], bool]:
        e = conj()
        while peek() == "or":
            take()
            e = _either(e, conj())
        return e

    result = disj()
    if i != len(toks):
        raise Fault("INVALID_VALUE", "expr", expr)
    return result


class Api:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.nbd: NbdServer | None = None  # set by the server (xapisim/nbd.py)
        self.impl: dict[str, Impl] = {}
        for name in MESSAGES:
            fn = getattr(self, "m_" + name.replace(".", "_"), None)
            if fn is not None:
                self.impl[name] = fn

    # ------------------------------------------------------------------ dispatch
    def dispatch(self, method: str, params: tuple[Any, ...]) -> Rec:
        try:
            return success(self._dispatch(method, list(params)))
        except Fault as f:
            return failure(f)
        except Exception as e:
            return failure(Fault("INTERNAL_ERROR", f"{type(e).__name__}: {e}"))

    def _resolve(self, name: str) -> tuple[list[tuple[str, str]], int, Impl] | None:
        spec = MESSAGES.get(name)
        if spec is not None and name in self.impl:
            return spec.params, spec.optional, self.impl[name]
        generic = self._generic(name)
        if generic is None:
            return None
        sig, optional, fn = generic
        lock = self.db.lock

        def locked(*args: Any) -> Any:
            with lock:  # getters/setters are quick: run them under the database lock
                return fn(*args)

        return sig, optional, locked

    def _dispatch(self, method: str, params: list[Any]) -> Any:
        is_async = method.startswith("Async.")
        name = method[len("Async.") :] if is_async else method
        if name == "session.login_with_password" and not is_async:
            if not 2 <= len(params) <= 4:
                raise Fault("MESSAGE_PARAMETER_COUNT_MISMATCH", method, "2", str(len(params)))
            p = [str(x) for x in params] + [""] * (4 - len(params))
            return self.db.login(p[0], p[1], p[3])
        if name in ("session.logout", "session.local_logout") and not is_async:
            if len(params) != 1:
                raise Fault(
                    "MESSAGE_PARAMETER_COUNT_MISMATCH", method, "0", str(max(0, len(params) - 1))
                )
            self.db.check_session(params[0])
            self.db.logout(params[0])
            return ""
        if name in ("xapisim.fail_host", "xapisim.revive_host") and not is_async:
            # The simulator's own control (not XenAPI, not in system.listMethods): a test in
            # another process fails a pool member, with a valid session.
            if len(params) != 2:
                raise Fault("MESSAGE_PARAMETER_COUNT_MISMATCH", method, "1", str(len(params) - 1))
            self.db.check_session(params[0])
            self.fail_host(str(params[1]), failed=name == "xapisim.fail_host")
            return ""
        res = self._resolve(name)
        if res is None or (is_async and not _async_allowed(name)):
            raise Fault("MESSAGE_METHOD_UNKNOWN", method)
        sig, optional, fn = res
        received = len(params) - 1
        required = len(sig) - optional
        if not required <= received <= len(sig):
            raise Fault(
                "MESSAGE_PARAMETER_COUNT_MISMATCH", method, str(required), str(max(received, 0))
            )
        sess = self.db.check_session(params[0])
        args = [self._decode(v, ty, pname) for (ty, pname), v in zip(sig, params[1:], strict=False)]
        if not is_async:
            return fn(Ctx(sess), *args)
        return self._spawn(method, sess, fn, args)

    @staticmethod
    def _decode(value: Any, ty: str, name: str) -> Any:
        from .model import decode

        if ty.endswith(" record"):
            if not isinstance(value, dict):
                raise Fault("FIELD_TYPE_ERROR", name)
            return value
        return decode(value, ty, name)

    # ------------------------------------------------------------------ tasks
    def _spawn(self, method: str, sess: Any, fn: Impl, args: list[Any]) -> str:
        db = self.db
        task = db.new_task(method)
        ctx = Ctx(sess, task)

        def run() -> None:
            try:
                value = fn(ctx, *args)
                with db.lock:
                    if db.valid("task", task):
                        db.set(
                            "task",
                            task,
                            status="success",
                            progress=1.0,
                            result=xmlrpc_value_string(value or None),
                            finished=time.time(),
                            allowed_operations=[],
                        )
            except Fault as f:
                self._task_failed(task, f)
            except Exception as e:
                self._task_failed(task, Fault("INTERNAL_ERROR", f"{type(e).__name__}: {e}"))

        threading.Thread(target=run, name=f"xapisim-{method}", daemon=True).start()
        return task

    def _task_failed(self, task: str, f: Fault) -> None:
        with self.db.lock:
            if self.db.valid("task", task):
                status = "cancelled" if f.code == "TASK_CANCELLED" else "failure"
                self.db.set(
                    "task",
                    task,
                    status=status,
                    progress=1.0,
                    error_info=f.description,
                    finished=time.time(),
                    allowed_operations=[],
                )

    def _work(self, ctx: Ctx, scale: float = 1.0) -> None:
        """Simulated work: a few steps of op_delay, updating task progress, honouring cancel."""
        delay = self.db.cfg.op_delay * scale
        steps = 4
        for i in range(steps):
            self._check_cancel(ctx)
            if delay > 0:
                time.sleep(delay / steps)
            if ctx.task is not None:
                with self.db.lock:
                    if self.db.valid("task", ctx.task):
                        self.db.set("task", ctx.task, progress=round((i + 1) / (steps + 1), 3))
        self._check_cancel(ctx)

    def _check_cancel(self, ctx: Ctx) -> None:
        if ctx.task is None:
            return
        with self.db.lock:
            t = self.db.objs["task"].get(ctx.task)
            if t is not None and t["status"] == "cancelling":
                raise Fault("TASK_CANCELLED", ctx.task)

    # ------------------------------------------------------------------ generic messages
    def _generic(self, name: str) -> tuple[list[tuple[str, str]], int, Impl] | None:
        cls, _, verb = name.partition(".")
        spec = CLASSES.get(cls)
        if spec is None or cls == "session" or not verb:
            return None
        db = self.db
        ref_t = f"ref {cls}"
        if verb == "get_all":
            return [], 0, lambda ctx: list(db.objs[cls])
        if verb == "get_all_records":
            return [], 0, lambda ctx: {r: db.record_value(cls, r) for r in db.objs[cls]}
        if verb == "get_record":

            def get_record(ctx: Ctx, r: str) -> Encoded:
                db.get(cls, r)
                return db.record_value(cls, r)

            return [(ref_t, "self")], 0, get_record
        if verb == "get_all_records_where":

            def where(ctx: Ctx, expr: str) -> Rec:
                pred = parse_where(expr)
                out: Rec = {}
                for r in db.objs[cls]:
                    enc = db.record_value(cls, r)
                    if pred(enc.value):
                        out[r] = enc
                return out

            return [("string", "expr")], 0, where

        if verb == "get_by_uuid":

            def by_uuid(ctx: Ctx, u: str) -> str:
                for r, rec in db.objs[cls].items():
                    if rec["uuid"] == u:
                        return r
                raise Fault("UUID_INVALID", cls, u)

            return [("string", "uuid")], 0, by_uuid
        if verb == "get_by_name_label" and "name_label" in spec.fields:
            return (
                [("string", "label")],
                0,
                lambda ctx, lbl: [r for r, rec in db.objs[cls].items() if rec["name_label"] == lbl],
            )
        if verb.startswith("get_") and verb[4:] in spec.fields:
            f = verb[4:]
            return [(ref_t, "self")], 0, lambda ctx, r: encode(db.get(cls, r)[f], spec.fields[f])
        if verb.startswith("set_") and verb[4:] in spec.writable:
            f = verb[4:]
            ty = spec.fields[f]

            def setter(ctx: Ctx, r: str, v: Any) -> str:
                with db.lock:
                    db.get(cls, r)
                    self._validate_set(cls, r, f, v)
                    db.set(cls, r, **{f: v})
                return ""

            return [(ref_t, "self"), (ty, "value")], 0, setter
        for prefix, add in (("add_to_", True), ("remove_from_", False)):
            f = verb[len(prefix) :]
            if verb.startswith(prefix) and f in spec.writable and spec.fields[f].startswith("map "):
                return self._map_op(cls, f, add)
        if verb in ("add_tags", "remove_tags") and "tags" in spec.fields:
            add = verb == "add_tags"

            def tags(ctx: Ctx, r: str, v: str) -> str:
                with db.lock:
                    rec = db.get(cls, r)
                    if add and v not in rec["tags"]:
                        rec["tags"].append(v)
                    elif not add and v in rec["tags"]:
                        rec["tags"].remove(v)
                    db.touch(cls, r)
                return ""

            return [(ref_t, "self"), ("string", "value")], 0, tags
        return None

    def _map_op(self, cls: str, f: str, add: bool) -> tuple[list[tuple[str, str]], int, Impl]:
        db = self.db
        ref_t = f"ref {cls}"
        if add:

            def add_fn(ctx: Ctx, r: str, k: str, v: str) -> str:
                with db.lock:
                    rec = db.get(cls, r)
                    if k in rec[f]:
                        raise Fault("MAP_DUPLICATE_KEY", cls, f, rec["uuid"], k)
                    rec[f][k] = v
                    db.touch(cls, r)
                return ""

            return [(ref_t, "self"), ("string", "key"), ("string", "value")], 0, add_fn

        def rm_fn(ctx: Ctx, r: str, k: str) -> str:
            with db.lock:
                rec = db.get(cls, r)
                rec[f].pop(k, None)
                db.touch(cls, r)
            return ""

        return [(ref_t, "self"), ("string", "key")], 0, rm_fn

    def _validate_set(self, cls: str, r: str, f: str, v: Any) -> None:
        db = self.db
        if cls == "VM" and f == "is_a_template" and v is False:
            rec = db.objs["VM"][r]
            if rec["is_default_template"]:
                raise Fault("VM_CANNOT_DELETE_DEFAULT_TEMPLATE", r)
        if cls == "VM" and f == "affinity" and v != NULL and not db.valid("host", v):
            raise Fault("HANDLE_INVALID", "host", v)
        if (
            cls == "VM"
            and f in ("actions_after_shutdown", "actions_after_reboot")
            and v not in ("destroy", "restart")
        ):
            raise Fault("INVALID_VALUE", f, v)
        if cls == "VM" and f == "VCPUs_params":
            for k in ("weight", "cap"):
                if k in v and not str(v[k]).isdigit():
                    raise Fault("INVALID_VALUE", f"VCPUs_params:{k}", v[k])

    # ------------------------------------------------------------------ helpers
    def _vm_op(
        self,
        ctx: Ctx,
        vm: str,
        op: str,
        body: Callable[[], Any],
        scale: float = 1.0,
        strict: bool = True,
    ) -> Any:
        """Run a VM operation: power-state and concurrency checks, simulated time
        (ocaml/xapi/xapi_vm_helpers.ml: with_vm_operation, ?strict defaults to true)."""
        db = self.db
        opref = ctx.task or f"OpaqueRef:sync-{id(ctx)}"
        with db.lock:
            db.get("VM", vm)
            if op != "power_state_reset":
                db.assert_live(db.objs["VM"][vm]["resident_on"])  # tables.HOST_OFFLINE_REF
            err = db.op_error(vm, op, strict)
            if err is not None:
                raise err
            db.objs["VM"][vm]["current_operations"][opref] = op
            db.touch("VM", vm)
        try:
            self._work(ctx, scale)
            with db.lock:
                db.get("VM", vm)
                return body()
        finally:
            with db.lock:
                if db.valid("VM", vm):
                    db.objs["VM"][vm]["current_operations"].pop(opref, None)
                    db.touch("VM", vm)

    def _host(self, host: str) -> str:
        self.db.get("host", host)
        return host

    # ------------------------------------------------------------------ session / pool
    def m_session_get_this_host(self, ctx: Ctx, s: str) -> str:
        return self._sess(ctx, s).host

    def m_session_get_this_user(self, ctx: Ctx, s: str) -> str:
        self._sess(ctx, s)
        return NULL

    def m_session_get_uuid(self, ctx: Ctx, s: str) -> str:
        return self._sess(ctx, s).uuid

    def m_session_get_record(self, ctx: Ctx, s: str) -> Rec:
        return self.db.session_record(self._sess(ctx, s))

    def _sess(self, ctx: Ctx, s: str) -> Session:
        sess = self.db.sessions.get(s)
        if sess is None:
            raise Fault("HANDLE_INVALID", "session", s)
        return sess

    def m_host_get_servertime(self, ctx: Ctx, host: str) -> Any:
        self.db.get("host", host)
        return wire_datetime(time.time())

    def m_host_get_server_localtime(self, ctx: Ctx, host: str) -> Any:
        self.db.get("host", host)
        return xmlrpc.client.DateTime(time.strftime("%Y%m%dT%H:%M:%S", time.localtime()))

    def m_host_disable(self, ctx: Ctx, host: str) -> str:
        """xapi_host.ml: the host starts and receives no VM (HOST_DISABLED); running VMs
        stay."""
        with self.db.lock:
            self._host(host)
            self.db.set("host", host, enabled=False)
        return ""

    def m_host_enable(self, ctx: Ctx, host: str) -> str:
        with self.db.lock:
            self._host(host)
            self.db.set("host", host, enabled=True)
        return ""

    # ------------------------------------------------------------------ failed hosts
    def fail_host(self, host: str, failed: bool = True) -> None:
        """The simulator's failed-host mode (not a XenAPI message): the host stops
        answering and the master marks it not live (tables.FAILED_HOST_REF); its VMs'
        records stay as they were (Running, resident_on it). ``failed=False`` brings it
        back (live again). The pool master cannot fail: its xapi serves this API."""
        db = self.db
        with db.lock:
            self._host(host)
            if host == db.master():
                why = "xapisim: the pool master cannot fail (it serves the API)"
                raise Fault("OPERATION_NOT_ALLOWED", why)
            m = db.objs["host"][host]["metrics"]
            db.set("host_metrics", m, live=not failed, last_updated=time.time())

    def m_host_declare_dead(self, ctx: Ctx, host: str) -> str:
        """tables.DECLARE_DEAD_REF."""
        db = self.db
        with db.lock:
            self._host(host)
            if host == db.master() or db.host_live(host):
                raise Fault("HOST_IS_LIVE", host)
            vms = [
                ref
                for ref, rec in db.objs["VM"].items()
                if rec["resident_on"] == host and not rec["is_control_domain"]
            ]
            for vm in vms:
                self._reset_power_state(vm)
            db.set("host", host, enabled=False)
        return ""

    def m_VM_power_state_reset(self, ctx: Ctx, vm: str) -> str:
        """tables.POWER_STATE_RESET_REF."""
        with self.db.lock:
            self.db.get("VM", vm)
            self._reset_power_state(vm)
        return ""

    def _reset_power_state(self, vm: str) -> None:
        db = self.db
        rec = db.objs["VM"][vm]
        if rec["is_control_domain"]:
            raise Fault("CANNOT_RESET_CONTROL_DOMAIN", vm)
        if rec["power_state"] in ("Running", "Paused"):
            resident = rec["resident_on"]
            if resident == db.master():
                raise Fault("DOMAIN_EXISTS", vm)  # xenopsd (the simulator) runs it
            if db.valid("host", resident) and db.host_live(resident):
                raise Fault("HOST_IS_LIVE", resident)
        rec["current_operations"].clear()
        # force_state_reset keeps the record's suspend_VDI (it does not destroy the image).
        kept, rec["suspend_VDI"] = rec["suspend_VDI"], NULL
        db._halt(vm)
        db.set("VM", vm, suspend_VDI=kept)

    def m_pool_get_master(self, ctx: Ctx, p: str) -> str:
        return str(self.db.get("pool", p)["master"])

    # ------------------------------------------------------------------ VM lifecycle
    def _power(
        self, ctx: Ctx, vm: str, op: str, host: str | None = None, paused: bool = False
    ) -> str:
        db = self.db

        def body() -> str:
            rec = db.objs["VM"][vm]
            if op in ("start", "start_on", "resume", "resume_on"):
                home = rec["affinity"]
                usable = db.valid("host", home) and db.objs["host"][home]["enabled"]
                usable = usable and db.host_live(home)
                target = host or (home if usable else db._free_host())
                db.assert_live(target)  # tables.HOST_OFFLINE_REF
                # xapi_vm_helpers.ml assert_can_boot_here: assert_host_is_enabled.
                db.assert_enabled(target)
                if op.startswith("resume"):
                    sv = rec["suspend_VDI"]
                    rec["suspend_VDI"] = NULL
                    db._destroy_vdi(sv)
                db._start(vm, target, paused)
            elif op in ("clean_shutdown", "hard_shutdown", "shutdown"):
                db._halt(vm)
            elif op in ("clean_reboot", "hard_reboot"):
                h = rec["resident_on"]
                db._halt(vm)
                db._start(vm, h, False)
            elif op == "pause":
                rec["power_state"] = "Paused"
                db.set("VM_metrics", rec["metrics"], state=["paused"])
                db.touch("VM", vm)
            elif op == "unpause":
                rec["power_state"] = "Running"
                db.set("VM_metrics", rec["metrics"], state=["running"])
                db.touch("VM", vm)
                if rec["guest_metrics"] == NULL:
                    db._schedule_guest(vm, rec["domid"])
            elif op == "suspend":
                sr = db.objs["pool"][next(iter(db.objs["pool"]))]["suspend_image_SR"]
                sv = db._new_vdi(
                    f"Suspend image for {rec['name_label']}",
                    sr,
                    rec["memory_dynamic_max"],
                    type="suspend",
                )
                h = rec["resident_on"]
                gm = rec["guest_metrics"]
                rec.update(
                    power_state="Suspended",
                    resident_on=NULL,
                    domid=-1,
                    suspend_VDI=sv,
                    guest_metrics=NULL,
                )
                if gm != NULL:
                    db.delete("VM_guest_metrics", gm)
                db.link("host", h, "resident_VMs", vm, add=False)
                db.update_host_free(h)
                db._detach_devices(vm)
                db.set("VM_metrics", rec["metrics"], state=[], memory_actual=0)
                db.touch("VM", vm)
            assert rec["power_state"] == (
                "Paused"
                if paused and op in ("start", "start_on", "resume", "resume_on")
                else RESULT_STATE[op]
            )
            return ""

        return str(self._vm_op(ctx, vm, op, body))

    def m_VM_start(self, ctx: Ctx, vm: str, paused: bool, force: bool) -> str:
        return self._power(ctx, vm, "start", paused=paused)

    def m_VM_start_on(self, ctx: Ctx, vm: str, host: str, paused: bool, force: bool) -> str:
        self.db.get("VM", vm)
        return self._power(ctx, vm, "start_on", host=self._host(host), paused=paused)

    def m_VM_resume(self, ctx: Ctx, vm: str, paused: bool, force: bool) -> str:
        return self._power(ctx, vm, "resume", paused=paused)

    def m_VM_resume_on(self, ctx: Ctx, vm: str, host: str, paused: bool, force: bool) -> str:
        self.db.get("VM", vm)
        return self._power(ctx, vm, "resume_on", host=self._host(host), paused=paused)

    def m_VM_clean_shutdown(self, ctx: Ctx, vm: str) -> str:
        return self._power(ctx, vm, "clean_shutdown")

    def m_VM_hard_shutdown(self, ctx: Ctx, vm: str) -> str:
        return self._power(ctx, vm, "hard_shutdown")

    def m_VM_shutdown(self, ctx: Ctx, vm: str) -> str:
        return self._power(ctx, vm, "shutdown")

    def m_VM_clean_reboot(self, ctx: Ctx, vm: str) -> str:
        return self._power(ctx, vm, "clean_reboot")

    def m_VM_hard_reboot(self, ctx: Ctx, vm: str) -> str:
        return self._power(ctx, vm, "hard_reboot")

    def m_VM_pause(self, ctx: Ctx, vm: str) -> str:
        return self._power(ctx, vm, "pause")

    def m_VM_unpause(self, ctx: Ctx, vm: str) -> str:
        return self._power(ctx, vm, "unpause")

    def m_VM_suspend(self, ctx: Ctx, vm: str) -> str:
        return self._power(ctx, vm, "suspend")

    def m_VM_pool_migrate(self, ctx: Ctx, vm: str, host: str, options: dict[str, str]) -> str:
        db = self.db
        db.get("VM", vm)
        self._host(host)

        def body() -> str:
            rec = db.objs["VM"][vm]
            old = rec["resident_on"]
            if host != old:
                db.assert_live(host)  # tables.HOST_OFFLINE_REF
                db.assert_enabled(host)  # xapi_vm_migrate.ml pool_migrate: destination enabled
                db.assert_fits(vm, host)
            db.link("host", old, "resident_VMs", vm, add=False)
            rec["resident_on"] = host
            db.link("host", host, "resident_VMs", vm)
            db.update_host_free(old)
            db.update_host_free(host)
            db.touch("VM", vm)
            return ""

        # message_forwarding.ml: VM.pool_migrate -- with_vm_operation ~strict:(not force).
        force = options.get(MIGRATE_FORCE_KEY) == MIGRATE_FORCE_TRUE
        return str(self._vm_op(ctx, vm, "pool_migrate", body, scale=2.0, strict=not force))

    def _snap(
        self, ctx: Ctx, vm: str, new_name: str, op: str, ignore_vdis: list[str] | None = None
    ) -> str:
        """xapi_vm_clone.ml: snapshots are templates, Halted, or Suspended for a checkpoint
        of a Running/Suspended VM; snapshot_info records the power state."""
        db = self.db

        def body() -> str:
            rec = db.objs["VM"][vm]
            extra: Rec = dict(
                is_a_snapshot=True,
                snapshot_of=vm,
                snapshot_time=time.time(),
                is_a_template=True,
                snapshot_info={
                    "disk-snapshot-type": "crash_consistent",
                    "power-state-at-snapshot": rec["power_state"],
                },
            )
            snap = db._copy_vm(vm, new_name, None, ignore_vdis=ignore_vdis or [], **extra)
            if op == "checkpoint" and rec["power_state"] in ("Running", "Suspended"):
                pool = db.objs["pool"][next(iter(db.objs["pool"]))]
                sv = db._new_vdi(
                    f"Suspend image for {new_name}",
                    pool["suspend_image_SR"],
                    rec["memory_dynamic_max"],
                    type="suspend",
                )
                db.set("VM", snap, power_state="Suspended", suspend_VDI=sv)
            db.link("VM", vm, "snapshots", snap)
            return snap

        return str(self._vm_op(ctx, vm, op, body))

    def m_VM_snapshot(
        self, ctx: Ctx, vm: str, new_name: str, ignore_vdis: list[str] | None = None
    ) -> str:
        return self._snap(ctx, vm, new_name, "snapshot", ignore_vdis)

    def m_VM_snapshot_with_quiesce(self, ctx: Ctx, vm: str, new_name: str) -> str:
        return self._snap(ctx, vm, new_name, "snapshot_with_quiesce")

    def m_VM_checkpoint(self, ctx: Ctx, vm: str, new_name: str) -> str:
        return self._snap(ctx, vm, new_name, "checkpoint")

    def m_VM_revert(self, ctx: Ctx, snap: str) -> str:
        db = self.db

        def body() -> str:
            s = db.objs["VM"][snap]
            vm = s["snapshot_of"]
            if not db.valid("VM", vm):
                raise Fault("VM_REVERT_FAILED", vm, snap)
            rec = db.objs["VM"][vm]
            if rec["power_state"] != "Halted":
                db._halt(vm)
            for f in (
                "memory_static_max",
                "memory_dynamic_max",
                "memory_dynamic_min",
                "memory_static_min",
                "memory_target",
                "VCPUs_max",
                "VCPUs_at_startup",
                "VCPUs_params",
                "platform",
                "other_config",
                "name_description",
            ):
                v = s[f]
                rec[f] = dict(v) if isinstance(v, dict) else v
            if s["power_state"] == "Suspended":
                pool = db.objs["pool"][next(iter(db.objs["pool"]))]
                sv = db._new_vdi(
                    f"Suspend image for {rec['name_label']}",
                    pool["suspend_image_SR"],
                    rec["memory_dynamic_max"],
                    type="suspend",
                )
                rec.update(power_state="Suspended", suspend_VDI=sv)
            db.revert_devices(vm, snap)
            # ocaml/xapi/xapi_vm_snapshot.ml: revert -> update_parent: the VM's parent
            # becomes the snapshot it was reverted to.
            db.set_parent(vm, snap)
            db.touch("VM", vm)
            return ""

        return str(self._vm_op(ctx, snap, "revert", body))

    def m_VM_clone(self, ctx: Ctx, vm: str, new_name: str) -> str:
        return str(self._vm_op(ctx, vm, "clone", lambda: self.db._copy_vm(vm, new_name, None)))

    def m_VM_copy(self, ctx: Ctx, vm: str, new_name: str, sr: str) -> str:
        if sr != NULL:
            self.db.get("SR", sr)
        return str(
            self._vm_op(ctx, vm, "copy", lambda: self.db._copy_vm(vm, new_name, sr), scale=2.0)
        )

    def m_VM_provision(self, ctx: Ctx, vm: str) -> str:
        self._vm_op(ctx, vm, "provision", lambda: self.db._provision(vm))
        return ""

    def m_VM_destroy(self, ctx: Ctx, vm: str) -> str:
        db = self.db

        def body() -> str:
            rec = db.objs["VM"][vm]
            for vbd in list(rec["VBDs"]):
                db._destroy_vbd(vbd)
            for vif in list(rec["VIFs"]):
                db._destroy_vif(vif)
            if rec["suspend_VDI"] != NULL:
                db._destroy_vdi(rec["suspend_VDI"])
            for f, cls in (("metrics", "VM_metrics"), ("guest_metrics", "VM_guest_metrics")):
                if rec[f] != NULL:
                    db.delete(cls, rec[f])
            if rec["snapshot_of"] != NULL:
                db.link("VM", rec["snapshot_of"], "snapshots", vm, add=False)
            # ocaml/xapi/xapi_vm.ml: destroy, "rebase the children": every child of the
            # destroyed VM (snapshot or not) takes its parent.
            for child in list(rec["children"]):
                if db.valid("VM", child):
                    db.set_parent(child, rec["parent"])
            if rec["parent"] != NULL:
                db.link("VM", rec["parent"], "children", vm, add=False)
            db.booted_os.discard(vm)
            db.guest_xs.pop(vm, None)
            db.delete("VM", vm)
            return ""

        self._vm_op(ctx, vm, "destroy", body, scale=0.5)
        return ""

    def m_VM_create(self, ctx: Ctx, args: Rec) -> str:
        db = self.db
        spec = CLASSES["VM"]
        for f in _RECORD_REQUIRED["VM"]:
            if f not in args:
                raise Fault("FIELD_TYPE_ERROR", f)
        vals = self._decode_record("VM", args)
        vals.pop("power_state", None)
        check_memory(
            vals["memory_static_min"],
            vals["memory_dynamic_min"],
            vals["memory_dynamic_max"],
            vals["memory_static_max"],
        )
        with db.lock:
            metrics = db.new(
                "VM_metrics",
                install_time=time.time(),
                last_updated=time.time(),
                current_domain_type="unspecified",
            )
            base: Rec = dict(
                power_state="Halted",
                domid=-1,
                metrics=metrics,
                domain_type="hvm" if vals.get("HVM_boot_policy") else "pv",
                HVM_shadow_multiplier=1.0,
            )
            base.update({k: v for k, v in vals.items() if k in spec.fields})
            vm = db.new("VM", **base)
            db.touch("VM", vm)
        return vm

    def _decode_record(self, cls: str, args: Rec) -> Rec:
        spec = CLASSES[cls]
        from .model import decode

        out: Rec = {}
        for k, v in args.items():
            if k in spec.fields and k not in ("uuid", "allowed_operations", "current_operations"):
                out[k] = decode(v, spec.fields[k], k)
        return out

    # ------------------------------------------------------------------ VM settings
    def _vcpus(self, ctx: Ctx, vm: str, f: str, value: int) -> str:
        db = self.db

        def body() -> str:
            rec = db.objs["VM"][vm]
            if f == "VCPUs_max" and (value < 1 or value < rec["VCPUs_at_startup"]):
                raise Fault(
                    "INVALID_VALUE",
                    "VCPU values must satisfy: 0 < VCPUs_at_startup ≤ VCPUs_max",
                    value,
                )
            if f == "VCPUs_at_startup" and (value < 1 or value > rec["VCPUs_max"]):
                raise Fault(
                    "INVALID_VALUE",
                    "VCPU values must satisfy: 0 < VCPUs_at_startup ≤ VCPUs_max",
                    value,
                )
            db.set("VM", vm, **{f: value})
            return ""

        db.get("VM", vm)
        if db.objs["VM"][vm]["is_control_domain"]:
            raise Fault("OPERATION_NOT_ALLOWED", f"set_{f} is not allowed on dom0")
        self._vm_op(ctx, vm, "changing_VCPUs", body, scale=0.0)
        return ""

    def m_VM_set_VCPUs_max(self, ctx: Ctx, vm: str, value: int) -> str:
        return self._vcpus(ctx, vm, "VCPUs_max", value)

    def m_VM_set_VCPUs_at_startup(self, ctx: Ctx, vm: str, value: int) -> str:
        return self._vcpus(ctx, vm, "VCPUs_at_startup", value)

    def _memory(
        self,
        ctx: Ctx,
        vm: str,
        op: str,
        smin: int | None,
        smax: int | None,
        dmin: int | None,
        dmax: int | None,
    ) -> str:
        db = self.db

        def body() -> str:
            rec = db.objs["VM"][vm]
            a = rec["memory_static_min"] if smin is None else smin
            b = rec["memory_dynamic_min"] if dmin is None else dmin
            c = rec["memory_dynamic_max"] if dmax is None else dmax
            d = rec["memory_static_max"] if smax is None else smax
            check_memory(a, b, c, d)
            db.set(
                "VM",
                vm,
                memory_static_min=a,
                memory_dynamic_min=b,
                memory_target=b,
                memory_dynamic_max=c,
                memory_static_max=d,
            )
            if rec["power_state"] == "Running":
                db.set("VM_metrics", rec["metrics"], memory_actual=c)
            return ""

        self._vm_op(ctx, vm, op, body, scale=0.0)
        return ""

    def m_VM_set_memory_limits(
        self, ctx: Ctx, vm: str, smin: int, smax: int, dmin: int, dmax: int
    ) -> str:
        return self._memory(ctx, vm, "changing_memory_limits", smin, smax, dmin, dmax)

    def m_VM_set_memory_dynamic_range(self, ctx: Ctx, vm: str, lo: int, hi: int) -> str:
        return self._memory(ctx, vm, "changing_dynamic_range", None, None, lo, hi)

    def m_VM_set_memory_static_range(self, ctx: Ctx, vm: str, lo: int, hi: int) -> str:
        return self._memory(ctx, vm, "changing_static_range", lo, hi, None, None)

    def m_VM_set_memory(self, ctx: Ctx, vm: str, value: int) -> str:
        # ocaml/xapi/xapi_vm.ml set_memory: static_max = dynamic_max = dynamic_min = value
        db = self.db
        db.get("VM", vm)
        smin = min(db.objs["VM"][vm]["memory_static_min"], value)
        return self._memory(ctx, vm, "changing_memory_limits", smin, value, value, value)

    def m_VM_get_guest_metrics(self, ctx: Ctx, vm: str) -> str:
        return str(self.db.get("VM", vm)["guest_metrics"])

    def m_VM_get_allowed_VBD_devices(self, ctx: Ctx, vm: str) -> list[str]:
        rec = self.db.get("VM", vm)
        used = {self.db.objs["VBD"][b]["userdevice"] for b in rec["VBDs"]}
        return [str(i) for i in range(16) if str(i) not in used]

    def m_VM_get_allowed_VIF_devices(self, ctx: Ctx, vm: str) -> list[str]:
        rec = self.db.get("VM", vm)
        used = {self.db.objs["VIF"][v]["device"] for v in rec["VIFs"]}
        return [str(i) for i in range(7) if str(i) not in used]

    def m_VM_get_possible_hosts(self, ctx: Ctx, vm: str) -> list[str]:
        self.db.get("VM", vm)
        return list(self.db.hosts)

    def m_VM_assert_operation_valid(self, ctx: Ctx, vm: str, op: str) -> str:
        with self.db.lock:
            self.db.get("VM", vm)
            err = self.db.op_error(vm, op)
        if err is not None:
            raise err
        return ""

    # ------------------------------------------------------------------ devices
    def m_VBD_create(self, ctx: Ctx, args: Rec) -> str:
        db = self.db
        for f in _RECORD_REQUIRED["VBD"]:
            if f not in args:
                raise Fault("FIELD_TYPE_ERROR", f)
        v = self._decode_record("VBD", args)
        with db.lock:
            vm = db.get("VM", v["VM"])
            empty = bool(v["empty"])
            if not empty:
                db.get("VDI", v["VDI"])
            elif v["type"] != "CD":
                raise Fault("VBD_NOT_REMOVABLE_MEDIA", NULL)
            ud = v["userdevice"]
            used = {db.objs["VBD"][b]["userdevice"] for b in vm["VBDs"]}
            if ud == "autodetect":
                ud = next(str(i) for i in range(16) if str(i) not in used)
            elif ud in used:
                raise Fault("DEVICE_ALREADY_EXISTS", ud)
            extra = {
                k: v[k]
                for k in ("other_config", "qos_algorithm_type", "qos_algorithm_params")
                if k in v
            }
            return db._new_vbd(
                v["VM"],
                NULL if empty else v["VDI"],
                ud,
                bootable=v["bootable"],
                kind=v["type"],
                mode=v["mode"],
                unpluggable=v["unpluggable"],
                **extra,
            )

    def m_VBD_destroy(self, ctx: Ctx, vbd: str) -> str:
        db = self.db
        with db.lock:
            rec = db.get("VBD", vbd)
            if rec["currently_attached"]:
                raise Fault(
                    "OPERATION_NOT_ALLOWED", f"VBD '{rec['uuid']}' still attached to '{rec['VM']}'"
                )
            db._destroy_vbd(vbd)
        return ""

    def _plug(self, ctx: Ctx, cls: str, ref: str, plug: bool) -> str:
        db = self.db
        with db.lock:
            rec = db.get(cls, ref)
            vm = db.get("VM", rec["VM"])
            # ocaml/xapi/xapi_vbd_helpers.ml: valid_operations sets VBD_NOT_UNPLUGGABLE
            # before the power-state errors (the first error set for an op wins).
            if cls == "VBD" and not plug and not rec["unpluggable"]:
                raise Fault("VBD_NOT_UNPLUGGABLE", ref)
            if vm["power_state"] != "Running":
                raise Fault("VM_BAD_POWER_STATE", rec["VM"], "running", vm["power_state"].lower())
            if plug and rec["currently_attached"]:
                raise Fault("DEVICE_ALREADY_ATTACHED", ref)
            if not plug and not rec["currently_attached"]:
                raise Fault("DEVICE_ALREADY_DETACHED", ref)
            # xapi_vbd_helpers.ml / xapi_vif_helpers.ml: PV drivers for HVM hot-plug.
            err = db.hotplug_error(cls, ref)
            if err is not None:
                raise err
            if cls == "VBD" and rec["type"] == "CD" and db.live_domain_type(rec["VM"]) == "hvm":
                raise Fault(
                    "OPERATION_NOT_ALLOWED",
                    "HVM CDROMs cannot be hotplugged/unplugged, only inserted or ejected",
                )
        self._work(ctx, 0.5)
        with db.lock:
            db.set(
                cls,
                ref,
                currently_attached=plug,
                allowed_operations=["unplug", "unplug_force"] if plug else ["attach"],
            )
        return ""

    def m_VBD_plug(self, ctx: Ctx, vbd: str) -> str:
        return self._plug(ctx, "VBD", vbd, True)

    def m_VBD_unplug(self, ctx: Ctx, vbd: str) -> str:
        return self._plug(ctx, "VBD", vbd, False)

    def m_VBD_insert(self, ctx: Ctx, vbd: str, vdi: str) -> str:
        db = self.db
        with db.lock:
            rec = db.get("VBD", vbd)
            db.get("VDI", vdi)
            if not rec["empty"]:
                raise Fault("VBD_NOT_EMPTY", vbd)
            db.set("VBD", vbd, VDI=vdi, empty=False)
            db.link("VDI", vdi, "VBDs", vbd)
        return ""

    def m_VBD_eject(self, ctx: Ctx, vbd: str) -> str:
        db = self.db
        with db.lock:
            rec = db.get("VBD", vbd)
            if rec["empty"]:
                raise Fault("VBD_IS_EMPTY", vbd)
            if rec["type"] != "CD":
                raise Fault("VBD_NOT_REMOVABLE_MEDIA", vbd)
            db.link("VDI", rec["VDI"], "VBDs", vbd, add=False)
            db.set("VBD", vbd, VDI=NULL, empty=True)
        return ""

    def m_VDI_create(self, ctx: Ctx, args: Rec) -> str:
        db = self.db
        for f in _RECORD_REQUIRED["VDI"]:
            if f not in args:
                raise Fault("FIELD_TYPE_ERROR", f)
        v = self._decode_record("VDI", args)
        self._work(ctx, 0.5)
        with db.lock:
            sr = db.get("SR", v["SR"])
            size = v["virtual_size"]
            if size < 0:
                raise Fault("INVALID_VALUE", "virtual_size", size)
            free = sr["physical_size"] - sr["physical_utilisation"]
            if sr["type"] != "iso" and size > free:
                raise Fault("SR_FULL", size, free)
            extra = {
                k: v[k]
                for k in (
                    "other_config",
                    "sharable",
                    "read_only",
                    "xenstore_data",
                    "sm_config",
                    "tags",
                )
                if k in v
            }
            return db._new_vdi(
                v["name_label"],
                v["SR"],
                size,
                name_description=v["name_description"],
                type=v["type"],
                **extra,
            )

    def m_VDI_destroy(self, ctx: Ctx, vdi: str) -> str:
        db = self.db
        with db.lock:
            rec = db.get("VDI", vdi)
            for vbd in rec["VBDs"]:
                if db.valid("VBD", vbd) and db.objs["VBD"][vbd]["currently_attached"]:
                    raise Fault("VDI_IN_USE", vdi, "destroy")
        self._work(ctx, 0.5)
        with db.lock:
            db._destroy_vdi(vdi)
        return ""

    # -- VDI snapshots and changed-block tracking (ocaml/xapi/xapi_vdi.ml) ---------------
    def _vdi_check(self, vdi: str, op: str) -> Rec:
        """xapi_vdi.ml: check_operation_error, in its order, for the VDI operations
        simulated here (snapshot and the CBT ones)."""
        db = self.db
        rec = db.get("VDI", vdi)
        if op == "list_changed_blocks":
            # Blocked while attached to a VM that is not a snapshot.
            for vbd in rec["VBDs"]:
                b = db.objs["VBD"].get(vbd)
                if b is not None and b["currently_attached"]:
                    vm = db.objs["VM"].get(b["VM"])
                    if vm is None or not vm["is_a_snapshot"]:
                        raise Fault("VDI_IN_USE", vdi, op)
        if rec["type"] == "cbt_metadata" and op in ("snapshot", "enable_cbt", "disable_cbt"):
            raise Fault("VDI_INCOMPATIBLE_TYPE", vdi, "cbt_metadata")
        if op == "data_destroy":
            if not rec["is_a_snapshot"]:
                raise Fault("OPERATION_NOT_ALLOWED", f"VDI is not a snapshot: {vdi}")
            if not rec["cbt_enabled"]:
                raise Fault("VDI_NO_CBT_METADATA", vdi)
        elif op in ("enable_cbt", "disable_cbt"):
            if rec["is_a_snapshot"]:
                raise Fault("OPERATION_NOT_ALLOWED", f"VDI is a snapshot: {vdi}")
            if rec["type"] not in ("user", "system"):
                raise Fault("VDI_INCOMPATIBLE_TYPE", vdi, rec["type"])
            if rec["on_boot"] == "reset":
                raise Fault("VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION")
        elif op == "snapshot" and rec["sharable"]:
            raise Fault("VDI_IS_SHARABLE", vdi)
        return rec

    def m_VDI_snapshot(
        self, ctx: Ctx, vdi: str, driver_params: dict[str, str] | None = None
    ) -> str:
        db = self.db
        with db.lock:
            self._vdi_check(vdi, "snapshot")
        self._work(ctx, 0.5)
        with db.lock:
            d = self._vdi_check(vdi, "snapshot")
            snap = db._new_vdi(
                d["name_label"],
                d["SR"],
                d["virtual_size"],
                name_description=d["name_description"],
                type=d["type"],
                is_a_snapshot=True,
                snapshot_of=vdi,
                snapshot_time=time.time(),
            )
            db.vdata.copy(vdi, snap)
            db.snapshot_vdi_cbt(vdi, snap)
            db.link("VDI", vdi, "snapshots", snap)
            if vdi in db.os_vdis:
                db.os_vdis.add(snap)
            return snap

    def _cbt(self, ctx: Ctx, vdi: str, enable: bool) -> str:
        db = self.db
        op = "enable_cbt" if enable else "disable_cbt"
        with db.lock:
            self._vdi_check(vdi, op)
        self._work(ctx, 0.2)
        with db.lock:
            rec = self._vdi_check(vdi, op)
            # xapi_vdi.ml: change_cbt_status -- a no-op when already in that state.
            if rec["cbt_enabled"] != enable:
                if enable:
                    db.vdata.enable_cbt(vdi)
                else:
                    db.vdata.disable_cbt(vdi)
                db.set("VDI", vdi, cbt_enabled=enable)
        return ""

    def m_VDI_enable_cbt(self, ctx: Ctx, vdi: str) -> str:
        return self._cbt(ctx, vdi, True)

    def m_VDI_disable_cbt(self, ctx: Ctx, vdi: str) -> str:
        return self._cbt(ctx, vdi, False)

    def m_VDI_list_changed_blocks(self, ctx: Ctx, vdi_from: str, vdi_to: str) -> str:
        from .vdidata import bitmap_b64

        db = self.db
        with db.lock:
            db.get("VDI", vdi_from)
            to = self._vdi_check(vdi_to, "list_changed_blocks")
            # sm drivers/VDI.py: list_changed_blocks, XE_SR_ERRORCODES CBTChangedBlocksError
            if vdi_from == vdi_to:
                raise Fault("SR_BACKEND_FAILURE_460", "", f"{CBT_ERROR}{CBT_SAME}]", "")
            blocks = db.vdata.changed(vdi_from, vdi_to)
            if blocks is None:
                raise Fault("SR_BACKEND_FAILURE_460", "", f"{CBT_ERROR}{CBT_UNRELATED}]", "")
            return bitmap_b64(blocks, int(to["virtual_size"]))

    # -- NBD (xapisim/nbd.py) ---------------------------------------------------------
    def _nbd(self) -> NbdServer:
        if self.nbd is None:
            raise Fault("INTERNAL_ERROR", "the simulator runs no NBD server")
        return self.nbd

    def m_network_add_purpose(self, ctx: Ctx, net: str, value: str) -> str:
        self._nbd().add_purpose(net, value)
        return ""

    def m_network_remove_purpose(self, ctx: Ctx, net: str, value: str) -> str:
        self._nbd().remove_purpose(net, value)
        return ""

    def m_VDI_get_nbd_info(self, ctx: Ctx, vdi: str) -> list[dict[str, Any]]:
        return self._nbd().nbd_info(ctx, vdi)

    def m_host_get_server_certificate(self, ctx: Ctx, host: str) -> str:
        with self.db.lock:
            self.db.get("host", host)
        return self._nbd().cert_pem()

    def m_VDI_data_destroy(self, ctx: Ctx, vdi: str) -> str:
        db = self.db
        with db.lock:
            rec = self._vdi_check(vdi, "data_destroy")
            if rec["type"] == "cbt_metadata":
                return ""  # idempotent (datamodel.ml: VDI.data_destroy)
            # xapi_vdi.ml: _data_destroy marks the VDI cbt_metadata at once, then waits up
            # to 4 s for its VBDs to disappear (wait_for_vbds_to_be_unplugged_and_destroyed).
            db.set("VDI", vdi, type="cbt_metadata")
            end = time.monotonic() + DATA_DESTROY_WAIT
            while any(db.valid("VBD", b) for b in db.objs["VDI"][vdi]["VBDs"]):
                left = end - time.monotonic()
                if left <= 0 or db.stopped:
                    db.set("VDI", vdi, type=rec["type"])
                    raise Fault("VDI_IN_USE", vdi, "data_destroy")
                db.cond.wait(min(left, 0.1))
        self._work(ctx, 0.2)
        with db.lock:
            if db.valid("VDI", vdi):
                db.vdata.drop_data(vdi)
                sr = db.objs["SR"].get(db.objs["VDI"][vdi]["SR"])
                if sr is not None:
                    used = db.objs["VDI"][vdi]["physical_utilisation"]
                    sr["physical_utilisation"] = max(0, sr["physical_utilisation"] - used)
                db.set("VDI", vdi, physical_utilisation=0)
        return ""

    def m_VIF_create(self, ctx: Ctx, args: Rec) -> str:
        db = self.db
        for f in _RECORD_REQUIRED["VIF"]:
            if f not in args:
                raise Fault("FIELD_TYPE_ERROR", f)
        v = self._decode_record("VIF", args)
        with db.lock:
            vm = db.get("VM", v["VM"])
            db.get("network", v["network"])
            used = {db.objs["VIF"][x]["device"] for x in vm["VIFs"]}
            if v["device"] in used:
                raise Fault("DEVICE_ALREADY_EXISTS", v["device"])
            extra = {
                k: v[k]
                for k in (
                    "other_config",
                    "qos_algorithm_type",
                    "qos_algorithm_params",
                    "locking_mode",
                    "ipv4_allowed",
                    "ipv6_allowed",
                )
                if k in v
            }
            return db._new_vif(
                v["VM"], v["network"], v["device"], mac=v["MAC"], mtu=v["MTU"] or 1500, **extra
            )

    def m_VIF_destroy(self, ctx: Ctx, vif: str) -> str:
        db = self.db
        with db.lock:
            rec = db.get("VIF", vif)
            if rec["currently_attached"]:
                raise Fault(
                    "OPERATION_NOT_ALLOWED", f"VIF '{rec['uuid']}' still attached to '{rec['VM']}'"
                )
            db._destroy_vif(vif)
        return ""

    def m_VIF_plug(self, ctx: Ctx, vif: str) -> str:
        return self._plug(ctx, "VIF", vif, True)

    def m_VIF_unplug(self, ctx: Ctx, vif: str) -> str:
        return self._plug(ctx, "VIF", vif, False)

    # ------------------------------------------------------------------ tasks / events
    def m_task_create(self, ctx: Ctx, label: str, description: str) -> str:
        return self.db.new_task(label, description)

    def m_task_cancel(self, ctx: Ctx, task: str) -> str:
        db = self.db
        with db.lock:
            rec = db.get("task", task)
            if rec["status"] != "pending":
                raise Fault("OPERATION_NOT_ALLOWED", f"task {task} is not pending")
            db.set("task", task, status="cancelling", allowed_operations=[])
        return ""

    def m_task_destroy(self, ctx: Ctx, task: str) -> str:
        with self.db.lock:
            self.db.get("task", task)
            self.db.delete("task", task)
        return ""

    def m_event_from(self, ctx: Ctx, classes: list[str], token: str, timeout: float) -> Rec:
        return self.db.event_from(classes, token, timeout)

    def m_event_register(self, ctx: Ctx, classes: list[str]) -> str:
        with self.db.lock:
            s = ctx.session
            if s.subs is None:
                # xapi_event.ml: get_subscription -- a session's subscription starts at the
                # current event id when it is first registered (event snapshots are kept
                # only while a session is registered: Database.event_listeners).
                s.next_gen = self.db.gen
            s.subs = sorted(set((s.subs or []) + classes))
        return ""

    def m_event_unregister(self, ctx: Ctx, classes: list[str]) -> str:
        with self.db.lock:
            s = ctx.session
            if s.subs is not None:
                s.subs = [c for c in s.subs if c not in classes]
        return ""

    def m_event_next(self, ctx: Ctx) -> list[Rec]:
        return self.db.event_next(ctx.session)

    def m_event_get_current_id(self, ctx: Ctx) -> int:
        return self.db.gen

    def m_event_inject(self, ctx: Ctx, cls: str, ref: str) -> str:
        """xapi_event.ml: inject -- the ref must be a row of table ``class`` (exact name,
        as the database spells it: "VM", "host", ...), else HANDLE_INVALID [class, ref];
        the row is touched (a "mod" event) and the token is (generation before - 1, 0)."""
        db = self.db
        with db.lock:
            if cls not in db.objs or ref not in db.objs[cls]:
                raise Fault("HANDLE_INVALID", cls, ref)
            generation = db.gen
            db.touch(cls, ref)
        return f"{generation - 1:020d},{0:020d}"

    def list_methods(self) -> list[str]:
        """system.listMethods: every message's wire name (gen_server.ml: the
        "system.listMethods" case lists DU.wire_name ~sync:true of every message of every
        object, generated getters and setters included; no session, no Async names)."""
        names = list(MESSAGES)
        for cls, spec in CLASSES.items():
            if cls == "session":
                continue
            verbs = ["get_all", "get_all_records", "get_record", "get_all_records_where",
                     "get_by_uuid"]  # fmt: skip
            if "name_label" in spec.fields:
                verbs.append("get_by_name_label")
            verbs += [f"get_{f}" for f in spec.fields]
            verbs += [f"set_{f}" for f in spec.fields if f in spec.writable]
            for f in spec.fields:
                if f in spec.writable and spec.fields[f].startswith("map "):
                    verbs += [f"add_to_{f}", f"remove_from_{f}"]
            if "tags" in spec.fields:
                verbs += ["add_tags", "remove_tags"]
            names += [f"{cls}.{v}" for v in verbs]
        names.append("session.local_logout")
        seen: set[str] = set()
        out = []
        for n in names:
            if n not in seen and self._resolve_any(n):
                seen.add(n)
                out.append(n)
        return out

    def _resolve_any(self, name: str) -> bool:
        return name in ("session.login_with_password", "session.logout",
                        "session.local_logout") or self._resolve(name) is not None  # fmt: skip
