"""The HTTP data path of a VDI: ``GET /export_raw_vdi`` and ``PUT /import_raw_vdi``.

As ocaml/xapi/export_raw_vdi.ml and import_raw_vdi.ml serve them (query arguments as
importexport.ml reads them from the query string or cookies): ``session_id`` (or HTTP
Basic credentials, xapi_http.ml: assert_credentials_ok), ``vdi`` (a ref or a UUID),
``format`` (``raw``, the default, or ``vhd``), ``base`` (export: a VDI the output is the
difference from), ``task_id`` (the task the transfer reports to; otherwise one is made),
``sr_id``/``sr_uuid`` (import of raw data into a new VDI). Both handlers answer 200 with
``task-id:`` before any data moves, then close the connection; a failure after that is
only seen in the task (and, for an export, in a short body).
"""

from __future__ import annotations

import base64
import html
import time
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .model import Fault, xmlrpc_value_string
from .tables import (
    DISK_FORMATS,
    EXPORT_HEADERS,
    HTTP_400,
    HTTP_401_BODY,
    HTTP_404,
    HTTP_500_BODY,
    HTTP_500_HEAD,
    IMPORT_HEADERS,
)
from .vdidata import BLOCK, VHD_BLOCK, VHD_MAX_SIZE, VhdError, vhd_read, vhd_stream

if TYPE_CHECKING:
    from .server import _Handler

_PIECE = 1024 * 1024
_PER_VHD = VHD_BLOCK // BLOCK


class _Refused(Exception):
    """Answer with these header lines (and fail the task with ``fault``)."""

    def __init__(self, lines: list[str], fault: Fault | None = None) -> None:
        super().__init__(lines)
        self.lines = lines
        self.fault = fault


class DataPath:
    def __init__(self, handler: _Handler) -> None:
        self.h = handler
        self.db = handler.server.api.db
        url = urllib.parse.urlsplit(handler.path)
        self.query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        cookies: dict[str, str] = {}
        for part in (handler.headers.get("Cookie") or "").split(";"):
            k, sep, v = part.strip().partition("=")
            if sep:
                cookies[k] = v
        # importexport.ml: query @ cookie (the query wins)
        self.args = {**cookies, **self.query}
        self.task: str | None = None
        self.own_task = False  # made here: destroyed when the request ends

    # -- plumbing ------------------------------------------------------------------------
    def _write_lines(self, lines: list[str], body: bytes = b"") -> None:
        self.h.close_connection = True
        self.h.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        self.h.wfile.flush()

    def _unauthorised(self, realm: str) -> None:
        """http_svr.ml: response_unauthorised."""
        body = HTTP_401_BODY.encode()
        self.h.close_connection = True
        self.h._send(
            "401 Unauthorised",
            [
                ("content-type", "text/html"),
                ("connection", "close"),
                ("cache-control", "no-cache, no-store"),
                ("WWW-Authenticate", f'Basic realm="{realm}"'),
            ],
            body,
        )

    def _internal_error(self, extra: str) -> None:
        body = HTTP_500_BODY.format(extra=html.escape(extra)).encode("utf-8")
        self.h.close_connection = True
        self.h._send(
            HTTP_500_HEAD.split(" ", 1)[1],
            [
                ("content-type", "text/html"),
                ("connection", "close"),
                ("cache-control", "no-cache, no-store"),
            ],
            body,
        )

    def _authorised(self, realm: str) -> bool:
        """xapi_http.ml: assert_credentials_ok -- a valid session_id, or Basic credentials
        (a session for the request, logged out after it)."""
        sid = self.args.get("session_id")
        if sid is not None:
            try:
                self.db.check_session(sid)
            except Fault:
                self._unauthorised(realm)
                return False
            return True
        auth = self.h.headers.get("Authorization") or ""
        if auth.lower().startswith("basic "):
            try:
                user, _, pwd = base64.b64decode(auth[6:].strip()).decode().partition(":")
                ref = self.db.login(user, pwd, "HTTP Basic auth")
            except (Fault, ValueError, UnicodeDecodeError):
                self._unauthorised(realm)
                return False
            self.db.logout(ref)
            return True
        self._unauthorised(realm)
        return False

    def _vdi(self, key: str) -> str | None:
        """importexport.ml: vdi_of_req / base_vdi_of_req -- a valid ref, else a UUID."""
        value = self.args.get(key)
        if value is None:
            return None
        with self.db.lock:
            if self.db.valid("VDI", value):
                return value
            found = self.db.find("VDI", uuid=value)
            if not found:
                raise Fault("UUID_INVALID", "VDI", value)
            return found[0]

    def _start_task(self, label: str) -> str:
        """Xapi_http.with_context: the request's task_id, or a new task."""
        db = self.db
        with db.lock:
            given = self.args.get("task_id")
            if given and db.valid("task", given):
                self.task = given
            else:
                self.own_task = True
                self.task = db.new_task(label)
            return self.task

    def _progress(self, fraction: float) -> None:
        with self.db.lock:
            if self.task and self.db.valid("task", self.task):
                self.db.set("task", self.task, progress=round(min(fraction, 0.99), 3))

    def _finish(self, result: Any = None, fault: Fault | None = None) -> None:
        db = self.db
        with db.lock:
            if not self.task or not db.valid("task", self.task):
                return
            if self.own_task:
                # Server_helpers.exec_with_new_task: the handler's own task goes with it.
                db.delete("task", self.task)
                return
            if fault is None:
                db.set(
                    "task",
                    self.task,
                    status="success",
                    progress=1.0,
                    result=xmlrpc_value_string(result),
                    finished=time.time(),
                    allowed_operations=[],
                )
            else:
                db.set(
                    "task",
                    self.task,
                    status="failure",
                    progress=1.0,
                    error_info=fault.description,
                    finished=time.time(),
                    allowed_operations=[],
                )

    def _attached_rw(self, vdi: str) -> bool:
        with self.db.lock:
            for vbd in self.db.objs["VDI"][vdi]["VBDs"]:
                b = self.db.objs["VBD"].get(vbd)
                if b is not None and b["currently_attached"] and b["mode"] == "RW":
                    return True
        return False

    # -- export --------------------------------------------------------------------------
    def export_raw_vdi(self) -> None:
        if not self._authorised("VDI.export_raw"):
            return
        try:
            vdi = self._vdi("vdi")
            base = self._vdi("base")
        except Fault as f:
            self._internal_error(f"Api_errors.Server_error({f.code}, {f.params})")
            return
        if vdi is None:
            self._internal_error('Failure("Missing vdi query parameter")')
            return
        self._start_task("VDI.export_raw_vdi")
        fmt = self.args.get("format", "raw").lower()
        if fmt not in DISK_FORMATS:
            self._finish(fault=Fault("INTERNAL_ERROR", f"Unknown format {self.args['format']}"))
            self._write_lines(HTTP_404)
            return
        with self.db.lock:
            rec = dict(self.db.objs["VDI"][vdi])
        size = int(rec["virtual_size"])
        headers = [
            line.format(
                task=self.task, content_type=DISK_FORMATS[fmt], filename=f"{rec['uuid']}.{fmt}"
            )
            for line in EXPORT_HEADERS
        ]
        self._write_lines(headers)
        try:
            fault = None
            if fmt == "vhd" and size > VHD_MAX_SIZE:
                fault = Fault("VDI_TOO_LARGE", vdi, VHD_MAX_SIZE)
            for ref in (vdi, base):
                if ref is not None and self.db.objs["VDI"][ref]["type"] == "cbt_metadata":
                    # Sm_fs_ops.with_block_attached_device: a metadata-only VDI cannot be
                    # attached (xapi_vdi.ml: check_operation_error, cbt_metadata).
                    fault = Fault("VDI_INCOMPATIBLE_TYPE", ref, "cbt_metadata")
            if fault is not None:
                self._finish(fault=fault)
                return
            for piece in self._export(vdi, base, size, fmt):
                self.h.wfile.write(piece)
            self.h.wfile.flush()
            self._finish()
        except OSError as exc:  # the client went away
            self._finish(fault=Fault("VDI_IO_ERROR", f"Device I/O errors ({exc})"))

    def _export(self, vdi: str, base: str | None, size: int, fmt: str) -> Iterator[bytes]:
        store = self.db.vdata
        with store.lock:
            table = dict(store.table(vdi))
            base_table = dict(store.table(base)) if base is not None else None
        if base_table is not None:
            # vhd-tool --relative-to: the blocks that differ from the base in the VHD
            # chain; here the 64 KiB blocks not shared with the base, by 2 MiB VHD block.
            changed = {i for i, b in table.items() if base_table.get(i) is not b}
            changed |= {i for i in base_table if i not in table}
        else:
            changed = set(table)
        present = sorted({i // _PER_VHD for i in changed})

        def read(offset: int, length: int) -> bytes:
            out = bytearray(length)
            for index in range(offset // BLOCK, -(-(offset + length) // BLOCK)):
                block = table.get(index)
                if block is not None:
                    lo = index * BLOCK - offset
                    piece = block[: max(0, min(BLOCK, length - lo))]
                    out[lo : lo + len(piece)] = piece
            return bytes(out)

        total = max(1, len(present) if fmt == "vhd" else -(-size // _PIECE))
        if fmt == "vhd":
            parent = None
            if base is not None:
                parent = str(self.db.objs["VDI"][base]["uuid"])
            for n, piece in enumerate(vhd_stream(size, self._uuid(vdi), read, present, parent)):
                if n % 2 == 0:
                    self._progress(n / 2 / total)
                yield piece
            return
        wanted = {i for i in present} if base_table is not None else None
        for n, offset in enumerate(range(0, size, _PIECE)):
            length = min(_PIECE, size - offset)
            if wanted is not None and offset // VHD_BLOCK not in wanted:
                yield bytes(length)  # unchanged since the base: zeroes
            else:
                yield read(offset, length)
            self._progress(n / total)

    def _uuid(self, vdi: str) -> str:
        with self.db.lock:
            return str(self.db.objs["VDI"][vdi]["uuid"])

    # -- import --------------------------------------------------------------------------
    def import_raw_vdi(self) -> None:
        if not self._authorised("VDI.import"):
            return
        self._start_task("VDI.import")
        try:
            vdi = self._vdi("vdi")
            sr = self.args.get("sr_id")
            if vdi is None and sr is None and "sr_uuid" in self.args:
                found = self.db.find("SR", uuid=self.args["sr_uuid"])
                sr = found[0] if found else None
            if vdi is None and sr is None:
                raise _Refused(HTTP_400, Fault("VDI_MISSING", "", ""))
            fmt = self.args.get("format", "raw").lower()
            chunked = "chunked" in self.args
            if fmt not in DISK_FORMATS:
                raise _Refused(
                    HTTP_404, Fault("INTERNAL_ERROR", f"Unknown format {self.args['format']}")
                )
            if fmt != "raw" and chunked:
                raise _Refused(HTTP_404, Fault("INTERNAL_ERROR", "Cannot handle chunked VHD"))
            encoding = self.h.headers.get("Transfer-Encoding")
            if encoding is not None:
                raise _Refused(
                    HTTP_404, Fault("INTERNAL_ERROR", f"Cannot handle encoding: {encoding}")
                )
            length_text = self.h.headers.get("Content-Length")
            length = int(length_text) if length_text and length_text.isdigit() else None
            if vdi is None:
                if fmt != "raw":
                    raise _Refused(
                        HTTP_400,
                        Fault(
                            "INTERNAL_ERROR",
                            "Importing a VHD directly into an SR not yet supported",
                        ),
                    )
                if length is None or sr is None or not self.db.valid("SR", sr):
                    raise _Refused(
                        HTTP_400, Fault("INTERNAL_ERROR", "Not enough info supplied to import")
                    )
                with self.db.lock:
                    vdi = self.db._new_vdi("Imported VDI", sr, length, name_description="")
        except _Refused as r:
            self._finish(fault=r.fault)
            self._write_lines(r.lines)
            return
        except Fault as f:
            self._finish(fault=f)
            self._write_lines(HTTP_400)
            return
        self._write_lines([line.format(task=self.task) for line in IMPORT_HEADERS])
        try:
            self._receive(vdi, fmt, length)
        except Fault as f:
            self._finish(fault=f)
            return
        except (OSError, VhdError) as exc:
            self._finish(fault=Fault("VDI_IO_ERROR", f"Device I/O errors ({exc})"))
            return
        self._finish(result=vdi)

    def _receive(self, vdi: str, fmt: str, length: int | None) -> None:
        with self.db.lock:
            rec = self.db.objs["VDI"][vdi]
            size = int(rec["virtual_size"])
            kind = rec["type"]
        if kind == "cbt_metadata":
            raise Fault("VDI_INCOMPATIBLE_TYPE", vdi, "cbt_metadata")
        if self._attached_rw(vdi):
            # Sm_fs_ops.with_block_attached_device `RW on a VDI a running VM has attached.
            raise Fault("VDI_IN_USE", vdi, "attach")
        store = self.db.vdata
        rfile = self.h.rfile
        if length is None:
            raise OSError("no Content-Length")
        if fmt == "raw":
            if length > size:
                raise OSError(f"{length} bytes do not fit a VDI of {size}")
            pos = 0
            while pos < length:
                data = rfile.read(min(_PIECE, length - pos))
                if not data:
                    raise OSError("the upload ended early")
                store.write(vdi, pos, data)
                pos += len(data)
                self._progress(pos / max(1, length))
            return
        vhd_read(rfile.read, length, lambda off, data: store.write(vdi, off, data), size)
