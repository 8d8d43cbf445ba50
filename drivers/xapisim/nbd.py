"""The host's NBD server, as xapi-nbd serves VDIs (xapi-project/xapi-nbd src/main.ml, with
the ocaml-nbd server of xapi-project/nbd lib/server.ml), and what the API says about it:
network purposes and ``VDI.get_nbd_info`` (ocaml/xapi/xapi_network.ml, xapi_vdi.ml).

Per connection, as xapi-nbd does:

* at most ``NBD_CONNECTION_LIMIT`` at once (more are closed at once);
* TLS or not from the pool's network purposes, asked per connection (``nbd``: FORCEDTLS,
  ``insecure_nbd``: NOTLS, both or neither: the connection is closed before the greeting);
* the fixed newstyle greeting (global flags: fixed newstyle only), then options:
  NBD_OPT_EXPORT_NAME, NBD_OPT_ABORT, NBD_OPT_LIST (ERR_POLICY: no export list is
  offered), NBD_OPT_STARTTLS (in FORCEDTLS mode the only option before TLS; others get
  ERR_TLS_REQD, an export name closes the connection), any other option ERR_UNSUP (so no
  NBD_OPT_GO, no structured replies, no block status);
* the export name is ``/<vdi uuid>?session_id=<ref>``: the session is checked once
  (``Session.get_uuid``), the VDI looked up by UUID; any failure closes the connection;
* the export is read-only (xapi-nbd plugs the VDI into dom0 read-only): export info is
  the size, HAS_FLAGS|READ_ONLY and 124 zero bytes; READ (512-byte aligned, else EINVAL)
  answers with a simple reply and the data; WRITE gets EPERM; DISC ends; other commands
  get EINVAL. A read past the end of the VDI fails after its reply header: the connection
  is dropped, as ocaml-nbd does on a failed block read.

While an export is served, the VDI is plugged into the control domain read-only, as
xapi-nbd's Cleanup.VBD.with_vbd does (VBD.create on dom0, userdevice autodetect, mode RO,
then VBD.plug; VBD.unplug and VBD.destroy when the connection ends): so a
``VDI.data_destroy`` meanwhile waits for it, and ``VDI.destroy`` sees the VDI in use.

Deviation: one server for the whole simulated pool, on 127.0.0.1 and a free port (xapi
serves port 10809 on each host's NBD networks); ``VDI.get_nbd_info`` names it; the VBD is
on the master's control domain. ``stats`` counts what clients read, for tests and
benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
import tempfile
import threading
import urllib.parse
from typing import TYPE_CHECKING, Any

from .model import Fault, encode
from .tables import (
    NBD_CMD_DISC,
    NBD_CMD_READ,
    NBD_CMD_WRITE,
    NBD_CONNECTION_LIMIT,
    NBD_EINVAL,
    NBD_EPERM,
    NBD_EXPORTNAME,
    NBD_FLAG_HAS_FLAGS,
    NBD_FLAG_READ_ONLY,
    NBD_GLOBAL_FLAGS,
    NBD_OPT_ABORT,
    NBD_OPT_EXPORT_NAME,
    NBD_OPT_LIST,
    NBD_OPT_STARTTLS,
    NBD_READ_ONLY,
    NBD_REP_ACK,
    NBD_REP_ERR_INVALID,
    NBD_REP_ERR_POLICY,
    NBD_REP_ERR_TLS_REQD,
    NBD_REP_ERR_UNSUP,
    NBD_SECTOR,
    NETWORK_PURPOSES,
    PURPOSE_CONFLICTS,
)

if TYPE_CHECKING:
    from .model import Ctx, Database

IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
_PIECE = 512 * 1024  # ocaml-nbd copies through a 128-page buffer


class _Closed(Exception):
    """End this connection (a hard disconnect, as xapi-nbd's exceptions do)."""


class NbdServer:
    """One accept loop on 127.0.0.1, a thread per connection; ``stop`` ends them all."""

    def __init__(
        self, db: Database, certfile: str | None, keyfile: str | None, subject: str
    ) -> None:
        self.db = db
        self._certfile, self._keyfile = certfile, keyfile
        self.subject = subject
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._ctx: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self.stats = {"connections": 0, "refused": 0, "reads": 0, "bytes_read": 0}
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.address = "127.0.0.1"
        self.port = int(self._sock.getsockname()[1])
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, name="xapisim-nbd", daemon=True)
        self._thread.start()

    # -- certificate ---------------------------------------------------------------------
    def cert_pem(self) -> str:
        """The host's server certificate (Host.get_server_certificate), made on first use
        when the simulator serves plain HTTP."""
        with self._lock:
            if self._certfile is None:
                from .server import make_cert

                self._tmp = tempfile.TemporaryDirectory(prefix="xapisim-nbd-")
                self._certfile, self._keyfile = make_cert(self._tmp.name)
            with open(self._certfile, encoding="ascii") as f:
                return f.read()

    def _tls(self) -> ssl.SSLContext:
        self.cert_pem()
        with self._lock:
            if self._ctx is None:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                assert self._certfile is not None
                ctx.load_cert_chain(self._certfile, self._keyfile)
                self._ctx = ctx
            return self._ctx

    # -- the API side --------------------------------------------------------------------
    def add_purpose(self, net: str, value: str) -> None:
        db = self.db
        if value not in NETWORK_PURPOSES:
            raise Fault("FIELD_TYPE_ERROR", "value")
        with db.lock:
            current = list(db.get("network", net)["purpose"])
            if value in current:
                return
            bad = PURPOSE_CONFLICTS[value]
            for rec in db.objs["network"].values():
                if bad in rec["purpose"]:
                    raise Fault("NETWORK_INCOMPATIBLE_PURPOSES", value, bad)
            db.set("network", net, purpose=[value, *current])

    def remove_purpose(self, net: str, value: str) -> None:
        db = self.db
        if value not in NETWORK_PURPOSES:
            raise Fault("FIELD_TYPE_ERROR", "value")
        with db.lock:
            current = list(db.get("network", net)["purpose"])
            if value in current:
                db.set("network", net, purpose=[p for p in current if p != value])

    def nbd_info(self, ctx: Ctx, vdi: str) -> list[dict[str, Any]]:
        """xapi_vdi.ml: _get_nbd_info."""
        db = self.db
        with db.lock:
            rec = db.get("VDI", vdi)
            if rec["type"] == "cbt_metadata":
                raise Fault("VDI_INCOMPATIBLE_TYPE", vdi, "cbt_metadata")
            sr = rec["SR"]
            hosts = [
                p["host"]
                for p in db.objs["PBD"].values()
                if p["SR"] == sr and p["currently_attached"]
            ]
            nets = {
                n
                for n, r in db.objs["network"].items()
                if any(p in NETWORK_PURPOSES for p in r["purpose"])
            }
            per_host: list[list[str]] = []
            for h in hosts:
                ips: list[str] = []
                for pif in db.objs["PIF"].values():
                    if pif["host"] == h and pif["currently_attached"] and pif["network"] in nets:
                        ips += [pif["IP"]] if pif["IP"] else []
                        ips += [a for a in pif["IPv6"] if a]
                per_host.append(ips)
            uuid = rec["uuid"]
        if not any(per_host):
            return []
        cert = self.cert_pem()
        name = NBD_EXPORTNAME.format(uuid=uuid, session=ctx.session.ref)
        out = []
        for ips in per_host:
            for _ip in ips:
                # deviation: the address where this server listens, not the PIF's IP
                out.append(
                    {
                        "exportname": name,
                        "address": self.address,
                        "port": encode(self.port, "int"),
                        "cert": cert,
                        "subject": self.subject,
                    }
                )
        return out

    # -- connections ---------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _addr = self._sock.accept()
            except OSError:
                return
            with self._lock:
                if self._stopped or len(self._conns) >= NBD_CONNECTION_LIMIT:
                    self.stats["refused"] += 1
                    conn.close()
                    continue
                self._conns.add(conn)
                self.stats["connections"] += 1
                t = threading.Thread(
                    target=self._serve, args=(conn,), name="xapisim-nbd-conn", daemon=True
                )
                self._threads.add(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        c = _Connection(self, conn)
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.run()
        except (_Closed, OSError, ssl.SSLError, struct.error):
            pass
        finally:
            c.unplug()
            with contextlib.suppress(OSError):
                conn.close()
            with self._lock:
                self._conns.discard(conn)
                self._threads.discard(threading.current_thread())

    def use_tls(self) -> bool:
        """xapi-nbd main.ml: xapi_says_use_tls."""
        with self.db.lock:
            purposes = {p for r in self.db.objs["network"].values() for p in r["purpose"]}
        tls, plain = "nbd" in purposes, "insecure_nbd" in purposes
        if tls == plain:
            raise _Closed("no network has purpose nbd or insecure_nbd, or both are set")
        return tls

    def count_read(self, n: int) -> None:
        with self._lock:
            self.stats["reads"] += 1
            self.stats["bytes_read"] += n

    def stop(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes accept() (close alone does not)
        with contextlib.suppress(OSError):
            self._sock.close()
        with self._lock:
            conns = list(self._conns)
            threads = list(self._threads)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(5)
        self._thread.join(5)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class _Connection:
    def __init__(self, server: NbdServer, sock: socket.socket) -> None:
        self.server = server
        self.sock: socket.socket = sock
        self.is_tls = False
        self.vbd: str | None = None  # the export's VBD on dom0, while it is served

    def recv(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:])
            if not k:
                raise _Closed("the client closed the connection")
            got += k
        return bytes(buf)

    def respond(self, opt: int, rtype: int, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">QIII", REPLY_MAGIC, opt, rtype, len(data)) + data)

    def option(self) -> tuple[int, bytes]:
        magic, opt, length = struct.unpack(">QII", self.recv(16))
        if magic != IHAVEOPT:
            raise _Closed("bad option magic")
        return opt, self.recv(length)

    def run(self) -> None:
        tls = self.server.use_tls()
        self.sock.sendall(b"NBDMAGIC" + struct.pack(">QH", IHAVEOPT, NBD_GLOBAL_FLAGS))
        (client_flags,) = struct.unpack(">I", self.recv(4))
        if tls:
            if not client_flags & 1:
                raise _Closed("FORCEDTLS and the client is not fixed newstyle")
            self._negotiate_tls()
        name = self._options()
        self._serve_export(name)

    def _negotiate_tls(self) -> None:
        while True:
            opt, _data = self.option()
            if opt in (NBD_OPT_EXPORT_NAME, NBD_OPT_ABORT):
                raise _Closed("an export over cleartext in FORCEDTLS mode, or an abort")
            if opt == NBD_OPT_STARTTLS:
                self.respond(opt, NBD_REP_ACK)
                self.sock = self.server._tls().wrap_socket(self.sock, server_side=True)
                self.is_tls = True
                return
            self.respond(opt, NBD_REP_ERR_TLS_REQD)

    def _options(self) -> str:
        while True:
            opt, data = self.option()
            if opt == NBD_OPT_STARTTLS:
                self.respond(opt, NBD_REP_ERR_INVALID if self.is_tls else NBD_REP_ERR_POLICY)
            elif opt == NBD_OPT_EXPORT_NAME:
                return data.decode("utf-8", "replace")
            elif opt == NBD_OPT_ABORT:
                with contextlib.suppress(OSError):
                    self.respond(opt, NBD_REP_ACK)
                raise _Closed("the client aborted")
            elif opt == NBD_OPT_LIST:
                self.respond(opt, NBD_REP_ERR_POLICY)
            else:
                self.respond(opt, NBD_REP_ERR_UNSUP)

    def _serve_export(self, name: str) -> None:
        db = self.server.db
        url = urllib.parse.urlsplit(name)
        session = dict(urllib.parse.parse_qsl(url.query)).get("session_id")
        if not session:
            raise _Closed("no session_id parameter provided")
        try:
            db.check_session(session)  # Session.get_uuid ~self:session_id
        except Fault as exc:
            raise _Closed("invalid session") from exc
        uuid = url.path[1:] if url.path else url.path
        with db.lock:
            found = [r for r, v in db.objs["VDI"].items() if v["uuid"] == uuid]
            if not found:
                raise _Closed("VDI.get_by_uuid: UUID_INVALID")
            vdi = found[0]
            rec = db.objs["VDI"][vdi]
            if rec["type"] == "cbt_metadata":
                raise _Closed("the VDI has no data to attach")
            size = int(rec["virtual_size"])
            self.vbd = self._plug_into_dom0(vdi)
        flags = NBD_FLAG_HAS_FLAGS | (NBD_FLAG_READ_ONLY if NBD_READ_ONLY else 0)
        self.sock.sendall(struct.pack(">QH", size, flags) + bytes(124))
        while True:
            magic, cmd, handle, offset, length = struct.unpack(">IIQQI", self.recv(28))
            if magic != REQUEST_MAGIC:
                raise _Closed("bad request magic")
            cmd &= 0xFFFF  # the upper half holds command flags
            if cmd == NBD_CMD_DISC:
                return
            if cmd == NBD_CMD_READ:
                if offset % NBD_SECTOR or length % NBD_SECTOR:
                    self._reply(handle, NBD_EINVAL)
                    continue
                self._reply(handle, 0)
                if offset + length > size or not db.valid("VDI", vdi):
                    raise _Closed("partial failure during a block read")
                pos = offset
                while pos < offset + length:
                    n = min(_PIECE, offset + length - pos)
                    self.sock.sendall(db.vdata.read(vdi, pos, n))
                    pos += n
                self.server.count_read(length)
            elif cmd == NBD_CMD_WRITE:
                # read-only: EPERM, the payload is not read (ocaml-nbd Server.serve)
                self._reply(handle, NBD_EPERM if NBD_READ_ONLY else NBD_EINVAL)
            else:
                self._reply(handle, NBD_EINVAL)

    def _plug_into_dom0(self, vdi: str) -> str:
        """xapi-nbd Cleanup.VBD.with_vbd: a read-only VBD of the VDI on the control domain,
        plugged (call with the database lock held)."""
        db = self.server.db
        dom0 = str(db.objs["host"][db.master()]["control_domain"])
        used = {db.objs["VBD"][b]["userdevice"] for b in db.objs["VM"][dom0]["VBDs"]}
        ud = next(str(i) for i in range(1, 1 << 16) if str(i) not in used)
        return db._new_vbd(
            dom0,
            vdi,
            ud,
            mode="RO",
            currently_attached=True,
            device=f"xvd{chr(ord('a') + int(ud) % 26)}",
            allowed_operations=["unplug", "unplug_force"],
        )

    def unplug(self) -> None:
        """VBD.unplug and VBD.destroy of the export's dom0 VBD, when the connection ends."""
        if self.vbd is None:
            return
        db = self.server.db
        with db.lock:
            if db.valid("VBD", self.vbd):
                db._destroy_vbd(self.vbd)
            db.cond.notify_all()
        self.vbd = None

    def _reply(self, handle: int, error: int) -> None:
        self.sock.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, error, handle))


def cert_subject(certfile: str | None, fallback: str) -> str:
    """xapi_vdi.ml: the first DNS name of the certificate that is not a wildcard (the last
    one if all are), else ``fallback`` (the host's hostname)."""
    if certfile is None or not os.path.exists(certfile):
        return fallback
    try:
        decoded = ssl._ssl._test_decode_cert(certfile)  # type: ignore[attr-defined]
    except Exception:
        return fallback
    names = [v for k, v in decoded.get("subjectAltName", ()) if k == "DNS"]
    if not names:
        return fallback
    for n in names:
        if "*" not in n:
            return str(n)
    return str(names[-1])
