"""The bytes xapi puts on the wire: compact XML-RPC as ocaml-rpc prints it, and JSON-RPC.

Values handed to the encoders are plain Python values, typed as ocaml-rpc's ``Rpc.t``
(``tables.WIRE_FORMS`` records each form and where it comes from):

========================  ================================  =========================
Python value              XML-RPC (``Xmlrpc.to_string``)    JSON (``Jsonrpc.to_string``)
========================  ================================  =========================
``str``                   ``<value>text</value>``           ``"text"``
``""``                    ``<value></value>``               ``""``
``int`` (API ``int``)     ``<value>42</value>``             ``42``
``I32`` (``Rpc.Int32``)   ``<value><i4>42</i4></value>``    ``42``
``bool``                  ``<value><boolean>1</boolean>``   ``true``
``float``                 ``<value><double>%.16g</double>`` ``0.5``
``xmlrpc.client.DateTime``  ``<value><dateTime.iso8601>..``  ``"20260101T00:00:00Z"``
``list``/``tuple``        ``<value><array><data>..``        ``[..]``
``dict``                  ``<value><struct><member>..``     ``{..}``
``Encoded``               its cached XML                    its value
========================  ================================  =========================

No whitespace is written between elements. ``Encoded`` wraps a value whose XML (and JSON)
is computed once and kept (the simulator caches each object's encoded record in one).
"""

from __future__ import annotations

import json
import re
import xmlrpc.client
from collections.abc import Callable
from typing import Any

from .tables import JSONRPC_ERROR_CODE, XML_RESPONSE_HEAD, XML_RESPONSE_TAIL

_RESPONSE_HEAD = XML_RESPONSE_HEAD
_RESPONSE_TAIL = XML_RESPONSE_TAIL


class I32(int):
    """An ``Rpc.Int32``: written ``<i4>`` in XML-RPC (``event.from``'s valid_ref_counts)."""

    __slots__ = ()


class Encoded:
    """A value whose XML-RPC and JSON forms are computed on first use and then reused."""

    __slots__ = ("_json", "_xml", "_xml_of", "value")

    def __init__(self, value: Any, xml_of: Callable[[Any], str] | None = None) -> None:
        self.value = value
        self._xml: str | None = None
        self._json: str | None = None
        self._xml_of = xml_of  # a faster writer of the same XML, if the caller has one

    @property
    def json(self) -> str:
        j = self._json
        if j is None:
            j = self._json = _JSON.encode(self.value)
        return j

    @property
    def xml(self) -> str:
        x = self._xml
        if x is None:
            x = self._xml = (self._xml_of or xml_value)(self.value)
        return x

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Encoded):
            return bool(self.value == other.value)
        return bool(self.value == other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Encoded({self.value!r})"


# ocaml-rpc xmlrpc.ml: encode_buf -- '>' '<' '&' '"' become entities; bytes outside
# 0x20..0xff other than tab, LF and CR are dropped (bytes >= 0x80 are UTF-8 and kept).
_SPECIAL = re.compile('[&<>"\x00-\x08\x0b\x0c\x0e-\x1f]')
_ENTITY = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}


def _entity(m: re.Match[str]) -> str:
    return _ENTITY.get(m.group(), "")


def escape(s: str) -> str:
    """Text content as ocaml-rpc's ``Xmlrpc.encode_buf`` writes it."""
    if _SPECIAL.search(s) is None:
        return s
    return _SPECIAL.sub(_entity, s)


def _emit(v: Any, add: Callable[[str], None]) -> None:
    t = type(v)
    if t is str:
        if v:
            if _SPECIAL.search(v) is not None:
                v = _SPECIAL.sub(_entity, v)
            add("<value>" + v + "</value>")
        else:
            add("<value></value>")
    elif t is dict:
        add("<value><struct>")
        for k, x in v.items():
            tk = type(x)
            if tk is str:  # the commonest member, inlined
                if x and _SPECIAL.search(x) is not None:
                    x = _SPECIAL.sub(_entity, x)
                add("<member><name>" + escape(k) + "</name><value>" + x + "</value></member>")
            else:
                add("<member><name>" + escape(k) + "</name>")
                _emit(x, add)
                add("</member>")
        add("</struct></value>")
    elif t is Encoded:
        add(v.xml)
    elif t is bool:
        add("<value><boolean>1</boolean></value>" if v else "<value><boolean>0</boolean></value>")
    elif t is int:
        add("<value>" + str(v) + "</value>")
    elif t is list or t is tuple:
        add("<value><array><data>")
        for x in v:
            _emit(x, add)
        add("</data></array></value>")
    elif t is float:
        add("<value><double>" + format(v, ".16g") + "</double></value>")
    elif t is xmlrpc.client.DateTime:
        add("<value><dateTime.iso8601>" + v.value + "</dateTime.iso8601></value>")
    elif t is I32:
        add("<value><i4>" + str(int(v)) + "</i4></value>")
    elif v is None:
        add("<value><nil/></value>")
    else:
        raise TypeError(f"cannot encode {t.__name__} for XML-RPC")


def xml_value(v: Any) -> str:
    """``<value>..</value>`` for ``v``, as ``Xmlrpc.to_string`` (non-strict) prints it."""
    out: list[str] = []
    _emit(v, out.append)
    return "".join(out)


def xml_response(resp: dict[str, Any]) -> bytes:
    """A methodResponse for ``{Status, Value}`` or ``{Status, ErrorDescription}``
    (``Xmlrpc.string_of_response``): the struct's members in that order."""
    out: list[str] = [_RESPONSE_HEAD]
    _emit(resp, out.append)
    out.append(_RESPONSE_TAIL)
    return "".join(out).encode("utf-8")


def xml_bare_response(value: Any) -> bytes:
    """A methodResponse holding ``value`` itself, without the Status struct (how xapi's
    api_server.ml answers ``system.listMethods``)."""
    return (_RESPONSE_HEAD + xml_value(value) + _RESPONSE_TAIL).encode("utf-8")


# ----------------------------------------------------------------------------- JSON


def _json_default(v: Any) -> Any:
    if isinstance(v, Encoded):
        return v.value
    if isinstance(v, xmlrpc.client.DateTime):
        return v.value
    raise TypeError(f"cannot encode {type(v).__name__} for JSON-RPC")


# Yojson.Safe.to_string: compact, UTF-8 unescaped, NaN/Infinity/-Infinity for non-finite.
_JSON = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=True, default=_json_default
)


def json_value(v: Any) -> str:
    """``v`` as ``Jsonrpc.to_string`` writes it; an ``Encoded`` value (a cached record) as
    its cached JSON, so that a reply of thousands of records is mostly joined, not encoded."""
    t = type(v)
    if t is Encoded:
        return str(v.json)
    if t is dict and any(type(x) in _CONTAINERS for x in v.values()):
        enc = _JSON.encode
        return "{" + ",".join(enc(k) + ":" + json_value(x) for k, x in v.items()) + "}"
    if (t is list or t is tuple) and any(type(x) in _CONTAINERS for x in v):
        return "[" + ",".join(json_value(x) for x in v) + "]"
    return _JSON.encode(v)


_CONTAINERS = frozenset({Encoded, dict, list, tuple})


ERROR_CODE = JSONRPC_ERROR_CODE  # api_server_common.ml: error_code_lit


def json_response(resp: Any, version: str, ident: Any, bare: bool = False) -> bytes:
    """A JSON-RPC response as ocaml-rpc's ``Jsonrpc.string_of_response`` frames it.

    ``version`` is ``"1.0"`` or ``"2.0"``; ``resp`` is the dispatcher's
    ``{Status, Value | ErrorDescription}``; ``bare`` marks ``system.listMethods``, whose
    value is the result itself. v1.0: ``{"result", "error", "id"}`` with ``null`` for the
    absent one and the error as ``[code, *params]``; v2.0: ``{"jsonrpc", "result" | "error",
    "id"}``, the error object ``{"code": 1, "message": code, "data": [params]}``
    (``api_server.ml: callback1``)."""
    if bare:
        ok, contents = True, resp
    else:
        ok = resp["Status"] == "Success"
        contents = resp["Value"] if ok else resp["ErrorDescription"]
    if ok:  # the result written by json_value (cached records), the frame around it
        if version == "2.0":
            text = '{"jsonrpc":"2.0","result":' + json_value(contents) + ',"id":'
        else:
            text = '{"result":' + json_value(contents) + ',"error":null,"id":'
        return (text + _JSON.encode(ident) + "}").encode("utf-8")
    body: dict[str, Any]
    if version == "2.0":
        if contents and isinstance(contents[0], str):
            message, data = contents[0], list(contents[1:])
        else:
            message, data = "", contents
        err = {"code": ERROR_CODE, "message": message, "data": data}
        body = {"jsonrpc": "2.0", "error": err, "id": ident}
    else:
        body = {"result": None, "error": contents, "id": ident}
    return _JSON.encode(body).encode("utf-8")


class MalformedRequest(Exception):
    """ocaml-rpc's Jsonrpc.Malformed_method_request: xapi answers HTTP 500."""


def parse_json_call(body: bytes) -> tuple[str, str, Any, list[Any]]:
    """(version, method, id, params) as ``Jsonrpc.version_id_and_call_of_string`` reads
    them: ``jsonrpc`` absent (1.0) or ``"2.0"``; ``params`` an array (required in 1.0; in
    2.0 absent/null is ``[]`` and an object is one parameter); ``id`` an integer or a
    string, never absent or null (xapi takes no notifications)."""
    try:
        d = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise MalformedRequest(f"Json parse error: {e}") from None
    if not isinstance(d, dict):
        raise MalformedRequest("Invalid request body")
    if "method" not in d:
        raise MalformedRequest("Required field method is missing")
    method = d["method"]
    if not isinstance(method, str):
        raise MalformedRequest("Invalid field 'method' in request body")
    if "jsonrpc" not in d:
        version = "1.0"
    elif d["jsonrpc"] == "2.0":
        version = "2.0"
    else:
        raise MalformedRequest("Invalid field 'jsonrpc' in request body")
    params = d.get("params")
    if version == "1.0":
        if "params" not in d:
            raise MalformedRequest("Required field params is missing")
        if not isinstance(params, list):
            raise MalformedRequest("Invalid field 'params' in request body")
    elif params is None:
        params = []
    elif isinstance(params, dict):
        params = [params]
    elif not isinstance(params, list):
        raise MalformedRequest("Invalid field 'params' in request body")
    ident = d.get("id")
    if ident is None or isinstance(ident, bool) or not isinstance(ident, (int, str)):
        raise MalformedRequest("Invalid field 'id' in request body")
    return version, method, ident, params
