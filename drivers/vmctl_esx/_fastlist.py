"""The listing fast path: RetrievePropertiesEx sent on the pyvmomi session, its reply parsed
with lxml.

pyvmomi's SOAP deserializer builds a typed Python object for every element of a reply; for
a listing of thousands of VMs that is most of the time (2000 VMs: a 3 MB reply, fetched in
0.14 s, deserialized in 1.3 s). Here the request is serialized by pyvmomi itself (the same
bytes it would send), sent on the stub's own HTTP connection pool with the session cookie,
bounded by the calling thread's deadline and counted as a round trip like every SDK call;
the reply is read with lxml, taking only what a listing needs: each object's moref and its
``propSet`` values of simple types (``xsd:string``, ``xsd:int``/``long``/``short``,
``xsd:boolean``, enumerations, ``ManagedObjectReference``). Pages are followed with
``ContinueRetrievePropertiesEx`` while the reply carries a ``token`` (vCenter pages at
``maxObjects``).

Anything else falls back to the SDK path, which then reports what it finds the way every
other call does: a SOAP fault (HTTP 500: the SDK path repeats the request and maps the
fault), or a reply of an unexpected shape (an unknown element or value type: the fast path
is then off for this connection). Each kind is logged once per connection. Transport
failures are not retried: they are classified as the stub classifies them.

``VMCTL_ESX_FASTPATH=0`` in the environment turns the fast path off (for comparisons).
"""

from __future__ import annotations

import functools
import http.client
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from vmctl import OperationTimeout
from vmctl.spi import Deadline

from ._conn import PAGE, RPC_TIMEOUT_S, Connection, _transport_error

log = logging.getLogger("vmctl.esx")

_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
_SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
_NS = "urn:vim25"

#: A sender: (method name, request body) -> (HTTP status, the reply body's chunks).
Sender = Callable[[str, bytes], tuple[int, Iterable[bytes]]]
Row = tuple[Any, dict[str, Any]]
T = TypeVar("T")
#: How much of a reply is read (and handed to the parser) at a time.
_CHUNK = 256 * 1024


class Unexpected(Exception):
    """The reply is not shaped as this parser expects (the SDK path reads it instead)."""


class Fault(Exception):
    """The host answered with a SOAP fault (the SDK path repeats the request and maps it)."""


def enabled_by_default() -> bool:
    return os.environ.get("VMCTL_ESX_FASTPATH", "1") != "0"


def _int(text: str | None) -> int:
    return int(text or "")


def _bool(text: str | None) -> bool:
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise Unexpected(f"not an xsd:boolean: {text!r}")


_SCALARS: dict[str, Callable[[str | None], Any]] = {
    "string": lambda t: t or "",
    "int": _int,
    "long": _int,
    "short": _int,
    "byte": _int,
    "boolean": _bool,
}
#: Enumerations a listing reads (their values are strings on the wire).
_ENUMS = frozenset({"VirtualMachinePowerState", "VirtualMachineConnectionState"})


class Page:
    """One parsed RetrievePropertiesEx / ContinueRetrievePropertiesEx reply."""

    __slots__ = ("expired", "rows", "session_ok", "token")

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, dict[str, Any]]] = []  # (type, moid, props)
        self.session_ok = False
        self.expired = False  # a missingSet said NotAuthenticated
        self.token: str | None = None


def response_of(chunks: Iterable[bytes], method: str) -> Any:
    """The ``<method>Response`` element of a SOAP reply (its body in chunks), parsed with
    lxml; Fault for a SOAP fault, Unexpected for anything not shaped as a vim25 reply.

    The chunks are fed to the parser as they come (no copy of the whole body). The vCenter
    simulator writes its reply only once it is complete, so little parsing overlaps the
    transfer there; a host that streams its reply is parsed while it arrives."""
    from lxml import etree

    parser = _parser()
    try:
        for chunk in chunks:
            parser.feed(chunk)
        root = parser.close()
    except BaseException as exc:
        _PARSERS.parser = None  # a reply read in part: the next one gets a fresh parser
        if isinstance(exc, etree.XMLSyntaxError):
            raise Unexpected(f"not XML: {exc}") from exc
        raise
    if root.tag != f"{{{_SOAP_NS}}}Envelope":
        raise Unexpected(f"root element {root.tag}")
    body = root.find(f"{{{_SOAP_NS}}}Body")
    if body is None or len(body) != 1:
        raise Unexpected("no single element in the SOAP body")
    response = body[0]
    if response.tag == f"{{{_SOAP_NS}}}Fault":
        detail = response.find("detail")
        kind = detail[0].get(_XSI_TYPE) if detail is not None and len(detail) else None
        text = response.findtext("faultstring") or ""
        raise Fault(" ".join(t for t in (kind, text) if t) or "SOAP fault")
    if response.tag != f"{{{_NS}}}{method}Response":
        raise Unexpected(f"reply element {response.tag}")
    return response


def parse_reply(
    chunks: Iterable[bytes],
    method: str,
    moref: Callable[[str | None, str | None], Any] = lambda t, v: (t, v),
    cache: dict[tuple[str | None, str | None], Any] | None = None,
) -> Page | None:
    """The reply of ``method`` (RetrievePropertiesEx or ContinueRetrievePropertiesEx, its
    body in chunks); None for an empty result (no ``returnval``); Unexpected for anything
    this parser does not know, Fault for a SOAP fault. A ManagedObjectReference value is
    ``cache[(type, value)]`` if there, else ``moref(type, value)``."""
    response = response_of(chunks, method)
    ns = _NS
    if len(response) == 0:
        return None
    if len(response) != 1 or response[0].tag != f"{{{ns}}}returnval":
        raise Unexpected("not one returnval")
    page = Page()
    t_objects, t_token = f"{{{ns}}}objects", f"{{{ns}}}token"
    try:
        for part in response[0]:
            tag = part.tag
            if tag == t_objects:
                _object(part, page, ns, moref, {} if cache is None else cache)
            elif tag == t_token:
                page.token = part.text or ""
            elif isinstance(tag, str):
                raise Unexpected(f"element {tag} in returnval")
    except (ValueError, TypeError) as exc:  # a propSet not of two, a number that is not
        raise Unexpected(f"malformed objects: {exc}") from exc
    return page


#: One feed parser per thread (a feed parser holds the state of the reply it reads).
_PARSERS = threading.local()


def _parser() -> Any:
    parser = getattr(_PARSERS, "parser", None)
    if parser is None:
        from lxml import etree

        # No entities, no network, no DTDs: a reply is data, never instructions to fetch.
        parser = _PARSERS.parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            huge_tree=True,
            collect_ids=False,
        )
    return parser


def _object(
    part: Any, page: Page, ns: str, moref: Callable[..., Any], cache: dict[Any, Any]
) -> None:
    """One ``objects`` element (ObjectContent): its moref and propSet values."""
    t_obj, t_prop, t_missing = f"{{{ns}}}obj", f"{{{ns}}}propSet", f"{{{ns}}}missingSet"
    kinds, xsi_type = _KINDS, _XSI_TYPE
    obj_type = moid = None
    props: dict[str, Any] = {}
    for child in part:
        ctag = child.tag
        if ctag == t_prop:
            if len(child) != 2:
                raise Unexpected("a propSet not of one name and one val")
            val = child[1]
            name = child[0].text or ""
            kind = kinds.get(val.get(xsi_type))
            if kind == 0:
                props[name] = val.text or ""
            elif kind == 1:
                props[name] = int(val.text)
            elif kind == 2:
                props[name] = _bool(val.text)
            elif kind == 3:
                key = (val.get("type"), val.text)
                ref = cache.get(key)
                props[name] = ref if ref is not None else moref(*key)
            elif name == "currentSession":  # the session probe: only its presence matters
                props[name] = True
                continue
            else:
                props[name] = _value(val, moref)  # other spellings, or Unexpected
                continue
            if len(val):
                raise Unexpected(f"a {val.get(xsi_type)} value with child elements")
        elif ctag == t_obj:
            obj_type, moid = child.get("type"), child.text
        elif ctag == t_missing:
            fault = child.find(f"{{{ns}}}fault/{{{ns}}}fault")
            fkind = "" if fault is None else (fault.get(xsi_type) or "")
            if fkind.rpartition(":")[2] == "NotAuthenticated":
                page.expired = True
        elif isinstance(ctag, str):
            raise Unexpected(f"element {ctag} in objects")
    if not obj_type or not moid:
        raise Unexpected("an object without its moref")
    page.rows.append((obj_type, moid, props))


#: The xsi:type spellings vCenter and the simulator write, to a kind: 0 text, 1 integer,
#: 2 boolean, 3 moref (anything else goes through _value).
_KINDS: dict[str | None, int] = {
    "xsd:string": 0,
    "VirtualMachinePowerState": 0,
    "VirtualMachineConnectionState": 0,
    "TaskInfoState": 0,  # a move's task (_fastmove)
    "xsd:int": 1,
    "xsd:long": 1,
    "xsd:short": 1,
    "xsd:boolean": 2,
    "ManagedObjectReference": 3,
}


def _value(val: Any, moref: Callable[..., Any]) -> Any:
    kind = val.get(_XSI_TYPE)
    if kind is None:
        raise Unexpected("a val without xsi:type")
    local = kind.rpartition(":")[2]
    if local == "ManagedObjectReference":
        if len(val):
            raise Unexpected("a moref with child elements")
        return moref(val.get("type"), val.text)
    scalar = _SCALARS.get(local)
    if scalar is not None:
        if len(val):
            raise Unexpected(f"{kind} with child elements")
        try:
            return scalar(val.text)
        except ValueError as exc:
            raise Unexpected(f"bad {kind}: {val.text!r}") from exc
    if local in _ENUMS:
        return val.text or ""
    raise Unexpected(f"value of type {kind}")


class FastLister:
    """RetrievePropertiesEx through lxml for one connection (see the module docstring)."""

    def __init__(self, conn: Connection, *, enabled: bool | None = None) -> None:
        self.conn = conn
        self.enabled = enabled_by_default() if enabled is None else enabled
        if self.enabled:
            try:
                import lxml.etree  # noqa: F401
            except ImportError:
                log.info("lxml is not installed: VM listings go through pyvmomi's deserializer")
                self.enabled = False
        self._logged: set[str] = set()
        self._refs: dict[tuple[str | None, str | None], Any] = {}
        self.send: Sender = self._post

    def _log_once(self, kind: str, level: int, message: str, *args: Any) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            log.log(level, message, *args)

    def retrieve(
        self, objects: Sequence[Any], vim_type: Any, paths: Sequence[str], *, through_view: bool
    ) -> list[Row] | None:
        """``Connection.retrieve``'s answer, or None when the SDK path must read it."""
        if not self.enabled or not objects:
            return None
        try:
            return self._retrieve(objects, vim_type, paths, through_view)
        except Fault as exc:
            self._log_once(
                "fault",
                logging.INFO,
                "fast listing on %s: the host answered a fault (%s); read with pyvmomi",
                self.conn.where,
                exc,
            )
            return None
        except Unexpected as exc:
            self.enabled = False
            self._log_once(
                "shape",
                logging.WARNING,
                "fast listing on %s: unexpected reply (%s); pyvmomi reads listings from now on",
                self.conn.where,
                exc,
            )
            return None

    def _retrieve(
        self, objects: Sequence[Any], vim_type: Any, paths: Sequence[str], through_view: bool
    ) -> list[Row]:
        conn = self.conn
        pcq = conn.vmodl.query.PropertyCollector
        stub = conn.stub
        probe = pcq.FilterSpec(
            objectSet=[pcq.ObjectSpec(obj=conn.content.sessionManager)],
            propSet=[pcq.PropertySpec(type=conn.vim.SessionManager, pathSet=["currentSession"])],
        )
        spec = conn.filter_spec(objects, vim_type, paths, through_view=through_view)
        first = pcq._GetMethodInfo("RetrievePropertiesEx")
        body = stub.SerializeRequest(
            conn.pc, first, [[spec, probe], pcq.RetrieveOptions(maxObjects=PAGE)]
        )
        want = vim_type._wsdlName
        out: list[Row] = []
        session_ok = False
        method = "RetrievePropertiesEx"
        while True:  # pages of one result, not a retry
            page = self.exchange(method, body, functools.partial(self._page, method))
            if page is None:
                break
            if page.expired:
                return self._expired()
            for obj_type, moid, props in page.rows:
                if obj_type == "SessionManager":
                    session_ok = props.pop("currentSession", None) is not None
                    if want != "SessionManager":
                        continue
                elif obj_type != want:
                    raise Unexpected(f"an object of type {obj_type}")
                ref = self._refs.get((obj_type, moid))
                out.append((ref if ref is not None else self._ref(obj_type, moid), props))
            if not page.token:
                break
            method = "ContinueRetrievePropertiesEx"
            body = stub.SerializeRequest(conn.pc, pcq._GetMethodInfo(method), [page.token])
        if not session_ok:
            return self._expired()
        return out

    def _page(self, method: str, chunks: Iterator[bytes]) -> Page | None:
        return parse_reply(chunks, method, self._ref, self._refs)

    def exchange(self, method: str, body: bytes, parse: Callable[[Iterator[bytes]], T]) -> T:
        """Send one request and read its reply with ``parse`` (given the body's chunks): its
        answer, Fault for a SOAP fault, Unexpected for another HTTP status or a reply
        ``parse`` does not know. A reply not read to the end closes its connection."""
        status, chunks = self.send(method, body)
        stream = iter(chunks)
        try:
            if status not in (200, 500):
                raise Unexpected(f"HTTP status {status}")
            result = parse(stream)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        if status == 500:
            raise Unexpected("HTTP 500 without a SOAP fault")
        return result

    def _expired(self) -> list[Row]:
        from vmctl import ConnectionError

        raise ConnectionError(
            f"read from {self.conn.where}: the session has expired (the host answered "
            "without a current session)",
            sent=False,
            vendor_code="NotAuthenticated",
        )

    def _ref(self, wsdl_type: str | None, moid: str | None) -> Any:
        """The pyvmomi moref (cached: the stub, and so every moref, lives as long as the
        connection)."""
        ref = self._refs.get((wsdl_type, moid))
        if ref is None:
            if not wsdl_type or not moid:
                raise Unexpected("a moref without type or value")
            try:
                cls = getattr(self.conn.vim, wsdl_type)
            except AttributeError as exc:
                raise Unexpected(f"unknown managed object type {wsdl_type}") from exc
            ref = cls(moid, self.conn.stub)
            if len(self._refs) > 100_000:
                self._refs.clear()
            self._refs[(wsdl_type, moid)] = ref
        return ref

    def _post(self, method: str, body: bytes) -> tuple[int, Iterator[bytes]]:
        """One SOAP request on the stub's connection pool, as the stub sends SDK calls:
        the session cookie, the thread's deadline, counted as a round trip. The reply body
        is read as the returned iterator is advanced, in pieces of up to ``_CHUNK`` bytes;
        the connection goes back to the pool once it is read to the end (closed if the
        reader stops before)."""
        stub = self.conn.stub
        local = stub.local
        where = self.conn.where
        deadline = local.deadline or Deadline.after(RPC_TIMEOUT_S)
        if deadline.expired():
            raise OperationTimeout(
                f"{method} on {where}: not sent, no time left (timeout {deadline.seconds:g} s)"
            )
        local.timeout = deadline.bound(RPC_TIMEOUT_S)
        local.connected = False
        with stub._count_lock:
            stub.round_trips += 1
        headers = {
            "Cookie": stub.cookie,
            "SOAPAction": stub.versionId,
            "Content-Type": "text/xml; charset=UTF-8",
            "User-Agent": "vmctl-esx",
        }
        http_conn = stub.GetConnection()
        try:
            http_conn.request("POST", stub.path, body, headers)
            resp = http_conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            http_conn.close()
            stub.DropConnections()
            raise _transport_error(exc, method, where, deadline, local) from exc
        if resp.getheader("Content-Encoding", "identity").lower() != "identity":
            http_conn.close()
            raise Unexpected("a compressed reply")

        def chunks() -> Iterator[bytes]:
            done = False
            try:
                while True:
                    try:
                        data = resp.read(_CHUNK)
                    except (OSError, http.client.HTTPException) as exc:
                        stub.DropConnections()
                        raise _transport_error(exc, method, where, deadline, local) from exc
                    if not data:
                        break
                    yield data
                done = True
            finally:
                if done:
                    stub.ReturnConnection(http_conn)
                else:
                    http_conn.close()

        return resp.status, chunks()
