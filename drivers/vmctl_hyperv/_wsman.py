"""The WS-Management client the driver talks to Hyper-V's WMI provider with.

pypsrp's ``pypsrp.wsman.WSMan`` carries the envelopes, the addressing headers, selectors,
HTTP(S), Basic/NTLM/Negotiate authentication (pyspnego) with channel binding and WinRM
message encryption over plain HTTP. What this module adds on top (DSP0226/DSP0227/DSP0230,
as Microsoft's WMI plug-in answers them):

* the bodies: ``n:Enumerate`` with a WQL filter and optimized enumeration, ``n:Pull``,
  ``<Method>_INPUT`` with endpoint references and embedded instances (CIM-XML, as libvirt's
  ``hyperv_wmi.c`` and the HV2 samples send them);
* reading instances, EPRs and ``<Method>_OUTPUT`` back into plain dicts;
* one HTTP attempt per call, its socket timeout bounded by the request's deadline (pypsrp's
  own retries are off), and every failure told apart: never sent (connect, TLS, pin) or
  maybe sent;
* TLS that fails closed: a CA file (host name checked), or a pinned SHA-256 thumbprint
  checked by urllib3 right after the handshake, before any byte of a request (and so
  before any credential) is sent.

One ``WSMan`` per thread (its requests session and NTLM sealing state are not shared).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from typing import Any
from xml.sax.saxutils import escape

from vmctl import OperationTimeout, Secret, ValidationError
from vmctl.spi import Deadline

V2 = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2/"
NAMESPACE = "root/virtualization/v2"
NS_N = "http://schemas.xmlsoap.org/ws/2004/09/enumeration"
NS_W = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
NS_A = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
NS_S = "http://www.w3.org/2003/05/soap-envelope"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"
WQL = "http://schemas.microsoft.com/wbem/wsman/1/WQL"
ANONYMOUS = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
ENUMERATE = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Enumerate"
PULL = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Pull"
GET = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get"
CIMV2 = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/"
DATAFILE = CIMV2 + "CIM_DataFile"
#: Items asked for per Pull (the server sends fewer when they would not fit the envelope).
PAGE = 1000
#: The MaxEnvelopeSize asked for: WinRM's default MaxEnvelopeSizekb is 500 (Windows Server
#: 2012 and later); a Pull then returns as many items as fit.
MAX_ENVELOPE = 512000

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def parse_thumbprint(text: str) -> str:
    """A SHA-256 thumbprint as 64 lower-case hex digits ('AB:CD:..' or 'abcd..')."""
    digits = re.sub(r"[:\s-]", "", text).lower()
    if not _HEX64.match(digits):
        raise ValidationError(
            "a thumbprint must be the SHA-256 of the host's certificate: 64 hex digits, "
            "optionally colon-separated (a 40-digit SHA-1 thumbprint is not accepted)",
            field="thumbprint",
        )
    return digits


def fingerprint(der: bytes) -> str:
    h = hashlib.sha256(der).hexdigest().upper()
    return ":".join(h[i : i + 2] for i in range(0, 64, 2))


# -- values ---------------------------------------------------------------------------------


class Ref:
    """An endpoint reference: a class and its key selectors."""

    __slots__ = ("cls", "keys")

    def __init__(self, cls: str, keys: Mapping[str, str]) -> None:
        self.cls = cls
        self.keys = dict(keys)

    def __repr__(self) -> str:
        return f"Ref({self.cls}, {self.keys})"


class Embedded:
    """An embedded-instance parameter: sent as escaped CIM-XML (DSP0201 INSTANCE)."""

    __slots__ = ("cls", "props")

    def __init__(self, cls: str, props: Mapping[str, Any]) -> None:
        self.cls = cls
        self.props = dict(props)

    def cimxml(self) -> str:
        parts = [f'<INSTANCE CLASSNAME="{self.cls}">']
        for name, value in self.props.items():
            if value is None:
                continue
            if isinstance(value, list | tuple):
                vals = "".join(f"<VALUE>{escape(_text(v))}</VALUE>" for v in value)
                parts.append(
                    f'<PROPERTY.ARRAY NAME="{name}" TYPE="{_cimtype(value[0] if value else "")}">'
                    f"<VALUE.ARRAY>{vals}</VALUE.ARRAY></PROPERTY.ARRAY>"
                )
            else:
                parts.append(
                    f'<PROPERTY NAME="{name}" TYPE="{_cimtype(value)}">'
                    f"<VALUE>{escape(_text(value))}</VALUE></PROPERTY>"
                )
        parts.append("</INSTANCE>")
        return "".join(parts)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _cimtype(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "uint64"
    return "string"


def wmi_path(host: str, cls: str, keys: Mapping[str, str]) -> str:
    """A WMI object path (``\\\\HOST\\root\\virtualization\\v2:Class.Key="v"``), as Hyper-V
    writes ``Parent`` and ``HostResource``: backslashes and quotes in values escaped."""
    body = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in keys.items()
    )
    return f"\\\\{host}\\root\\virtualization\\v2:{cls}.{body}"


def wql_string(value: str) -> str:
    """A WQL string literal: WMI takes backslash escapes inside quotes."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _value(child: ET.Element) -> Any:
    if child.get(f"{{{NS_XSI}}}nil") == "true":
        return None
    if len(child) == 0:
        return child.text or ""
    first = child[0]
    name = _local(first.tag)
    if name in ("Datetime", "Interval", "Date", "Time"):
        return first.text or ""
    if (
        first.tag == f"{{{NS_A}}}Address"
        or child.find(f"{{{NS_A}}}ReferenceParameters") is not None
    ):
        return read_ref(child)
    return read_instance(first)


def read_instance(elem: ET.Element) -> dict[str, Any]:
    """An instance element (or an _OUTPUT element) as {property: value}; repeated elements
    (arrays) become lists, EPRs ``Ref``, embedded instances dicts (with ``__class__``)."""
    out: dict[str, Any] = {"__class__": _local(elem.tag)}
    for child in elem:
        name = _local(child.tag)
        value = _value(child)
        if name in out:
            prev = out[name]
            out[name] = (prev if isinstance(prev, list) else [prev]) + [value]
        else:
            out[name] = value
    return out


def read_ref(elem: ET.Element) -> Ref:
    uri = elem.findtext(f".//{{{NS_W}}}ResourceURI") or ""
    keys = {
        s.get("Name", ""): s.text or ""
        for s in elem.iter(f"{{{NS_W}}}Selector")
        if s.get("Name") != "__cimnamespace"
    }
    return Ref(uri.rpartition("/")[2], keys)


def as_list(value: Any) -> list[Any]:
    """An array property: [] for NULL, a list for one value or more."""
    if value is None or value == "":
        return []
    return value if isinstance(value, list) else [value]


def parse_cimxml(text: str) -> dict[str, Any]:
    """An embedded instance served as CIM-XML text (KVP items): {property: value}."""
    root = ET.fromstring(text)
    out: dict[str, Any] = {"__class__": root.get("CLASSNAME", "")}
    for prop in root:
        name = prop.get("NAME", "")
        if prop.tag == "PROPERTY.ARRAY":
            out[name] = [v.text or "" for v in prop.iter("VALUE")]
        else:
            v = prop.find("VALUE")
            out[name] = None if v is None else (v.text or "")
    return out


# -- errors ---------------------------------------------------------------------------------


class NotSent(Exception):
    """Marker base: the request never left this process (connect, TLS handshake, pin)."""


class WsmanFault(Exception):
    """A WS-Man SOAP fault: subcode (``w:InvalidSelectors``...), the WSManFault code, the
    reason and the WMI error detail where the host sent one."""

    def __init__(self, action: str, subcode: str, code: str, reason: str, wmi: str) -> None:
        super().__init__(f"{action}: {subcode or code}: {reason}")
        self.action = action
        self.subcode = subcode
        self.code = code
        self.reason = reason
        self.wmi = wmi


def _fault_from(action: str, text: str) -> WsmanFault | None:
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return None
    fault = root.find(f".//{{{NS_S}}}Fault")
    if fault is None:
        return None
    sub = fault.findtext(f"{{{NS_S}}}Code/{{{NS_S}}}Subcode/{{{NS_S}}}Value") or ""
    reason = (fault.findtext(f"{{{NS_S}}}Reason/{{{NS_S}}}Text") or "").strip()
    code = ""
    wmi = ""
    for el in fault.iter():
        if _local(el.tag) == "WSManFault" and not code:
            code = el.get("Code", "")
            msg = "".join(el.itertext()).strip()
            reason = msg or reason
        if _local(el.tag) == "error_Code" and not wmi:
            wmi = el.text or ""
        if (
            _local(el.tag) == "Message"
            and el.tag.endswith("}Message")
            and "MSFT_WmiError" in el.tag
        ):
            reason = el.text or reason
    return WsmanFault(action, sub.rpartition(":")[2], code, " ".join(reason.split()), wmi)


# -- the client -----------------------------------------------------------------------------


class Client:
    """A WS-Man endpoint of one Hyper-V host, shared by threads."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl: bool,
        auth: str,
        username: str,
        password: Secret | None,
        cafile: str | None,
        pin: str | None,
        insecure: bool,
        rpc_timeout: float,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl
        self.auth = auth
        self.username = username
        self._password = password
        self.cafile = cafile
        self.pin = pin
        self.insecure = insecure
        self.rpc_timeout = rpc_timeout
        self.url = f"{'https' if ssl else 'http'}://{host}:{port}/wsman"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clients: list[Any] = []
        self.round_trips = 0
        self.closed = False

    def __repr__(self) -> str:
        return f"<hyperv Client {self.url} user={self.username!r} auth={self.auth}>"

    # -- plumbing ---------------------------------------------------------------------------

    def _new(self) -> Any:
        from pypsrp.wsman import WSMan

        if self.ssl:
            verify: bool | str = False if (self.pin or self.insecure) else (self.cafile or True)
        else:
            verify = True
        w = WSMan(
            self.host,
            port=self.port,
            username=self.username,
            # the only place the password is revealed: into pypsrp's transport
            password=self._password.reveal() if self._password is not None else None,
            ssl=self.ssl,
            path="wsman",
            auth=self.auth,
            cert_validation=verify,  # type: ignore[arg-type]  # a CA path works too
            encryption="auto" if self.auth != "basic" else "never",
            max_envelope_size=MAX_ENVELOPE,
            operation_timeout=max(1, int(self.rpc_timeout)),
            connection_timeout=self.rpc_timeout,  # type: ignore[arg-type]
            read_timeout=self.rpc_timeout,  # type: ignore[arg-type]
            no_proxy=True,
            reconnection_retries=0,
        )
        session = w.transport._build_session()
        if self.ssl and self.pin:
            session.mount("https://", _pinned_adapter(self.pin))
        w.transport.session = session
        return w

    def _wsman(self) -> Any:
        w = getattr(self._local, "w", None)
        if w is None:
            w = self._new()
            self._local.w = w
            with self._lock:
                self._clients.append(w)
        return w

    def reset(self) -> None:
        """Drop every connection: the next call of each thread opens (and authenticates)
        a new one."""
        with self._lock:
            clients, self._clients = self._clients, []
        for w in clients:
            _close(w)
        self._local = threading.local()

    def close(self) -> None:
        self.closed = True
        self.reset()

    def _send(
        self, action: str, uri: str, body: ET.Element | None, keys: Any, deadline: Deadline
    ) -> ET.Element:
        """One round trip. Raises WsmanFault, OperationTimeout, or the transport's error
        with ``NotSent`` mixed in when it certainly never reached the host."""
        if self.closed:
            raise ConnectionResetError(f"the connection to {self.url} is closed")
        if deadline.expired():
            late = _not_sent(
                OperationTimeout(
                    f"{action}: not sent, no time left (timeout {deadline.seconds:g} s)"
                )
            )
            raise late
        w = self._wsman()
        timeout = deadline.bound(self.rpc_timeout)
        w.transport.connection_timeout = timeout
        w.transport.read_timeout = timeout
        selectors = None
        if keys is not None:
            from pypsrp.wsman import SelectorSet

            selectors = SelectorSet()
            for k, v in keys.items():
                selectors.add_option(k, v)
        with self._lock:
            self.round_trips += 1
        try:
            return w.invoke(action, uri, body, selector_set=selectors)  # type: ignore[no-any-return]
        except Exception as exc:
            raise _classify(action, exc) from exc

    # -- operations -------------------------------------------------------------------------

    def get(self, cls: str, keys: Mapping[str, str], *, deadline: Deadline) -> dict[str, Any]:
        resp = self._send(GET, V2 + cls, None, keys, deadline)
        body = resp.find(f"{{{NS_S}}}Body")
        if body is None or len(body) == 0:
            raise WsmanFault("Get", "EmptyResponse", "", f"no {cls} in the response", "")
        return read_instance(body[0])

    def query(self, wql: str, *, deadline: Deadline, namespace: str = V2) -> list[dict[str, Any]]:
        """A WQL query (in root/virtualization/v2, or ``namespace``'s resource URI prefix,
        e.g. ``CIMV2``): Enumerate (optimized, first page in the answer) then Pull until
        the end of sequence. One round trip per page of up to PAGE items."""
        e = ET.Element(f"{{{NS_N}}}Enumerate")
        ET.SubElement(e, f"{{{NS_W}}}OptimizeEnumeration")
        ET.SubElement(e, f"{{{NS_W}}}MaxElements").text = str(PAGE)
        ET.SubElement(e, f"{{{NS_W}}}Filter", Dialect=WQL).text = wql
        uri = namespace + "*"
        resp = self._send(ENUMERATE, uri, e, None, deadline)
        node = resp.find(f"{{{NS_S}}}Body/{{{NS_N}}}EnumerateResponse")
        items: list[dict[str, Any]] = []
        while node is not None:
            for holder in (f"{{{NS_W}}}Items", f"{{{NS_N}}}Items"):
                its = node.find(holder)
                if its is not None:
                    items += [read_instance(i) for i in its]
            ended = (
                node.find(f"{{{NS_W}}}EndOfSequence") is not None
                or node.find(f"{{{NS_N}}}EndOfSequence") is not None
            )
            ctx = node.findtext(f"{{{NS_N}}}EnumerationContext")
            if ended or not ctx:
                break
            p = ET.Element(f"{{{NS_N}}}Pull")
            ET.SubElement(p, f"{{{NS_N}}}EnumerationContext").text = ctx
            ET.SubElement(p, f"{{{NS_N}}}MaxElements").text = str(PAGE)
            resp = self._send(PULL, uri, p, None, deadline)
            node = resp.find(f"{{{NS_S}}}Body/{{{NS_N}}}PullResponse")
        return items

    def delete_file(self, path: str, *, deadline: Deadline) -> int:
        """root/cimv2 ``CIM_DataFile.Delete`` of a file on the host (WMI v2 has no method
        that deletes an image file); its return code (0 deleted)."""
        uri = DATAFILE
        resp = self._send(
            f"{uri}/Delete", uri, ET.Element(f"{{{uri}}}Delete_INPUT"), {"Name": path}, deadline
        )
        return int(resp.findtext(f".//{{{uri}}}ReturnValue") or 8)

    def invoke(
        self,
        cls: str,
        method: str,
        keys: Mapping[str, str],
        params: Iterable[tuple[str, Any]],
        *,
        deadline: Deadline,
    ) -> dict[str, Any]:
        """Invoke ``cls.method`` on the instance ``keys``; the ``_OUTPUT`` as a dict (with
        ``ReturnValue`` an int)."""
        uri = V2 + cls
        inp = ET.Element(f"{{{uri}}}{method}_INPUT")
        for name, value in params:
            for one in value if isinstance(value, list) else [value]:
                el = ET.SubElement(inp, f"{{{uri}}}{name}")
                if isinstance(one, Ref):
                    _epr_into(el, one)
                elif isinstance(one, Embedded):
                    el.text = one.cimxml()
                else:
                    el.text = _text(one)
        resp = self._send(f"{uri}/{method}", uri, inp, keys, deadline)
        out = resp.find(f"{{{NS_S}}}Body/{{{uri}}}{method}_OUTPUT")
        if out is None:
            raise WsmanFault(method, "EmptyResponse", "", f"no {method}_OUTPUT in the response", "")
        result = read_instance(out)
        result["ReturnValue"] = int(result.get("ReturnValue") or 0)
        return result


def _epr_into(el: ET.Element, ref: Ref) -> None:
    ET.SubElement(el, f"{{{NS_A}}}Address").text = ANONYMOUS
    rp = ET.SubElement(el, f"{{{NS_A}}}ReferenceParameters")
    ET.SubElement(rp, f"{{{NS_W}}}ResourceURI").text = V2 + ref.cls
    ss = ET.SubElement(rp, f"{{{NS_W}}}SelectorSet")
    for k, v in ref.keys.items():
        ET.SubElement(ss, f"{{{NS_W}}}Selector", Name=k).text = v
    ET.SubElement(ss, f"{{{NS_W}}}Selector", Name="__cimnamespace").text = NAMESPACE


def _close(w: Any) -> None:
    with contextlib.suppress(Exception):  # closing a dead connection
        w.close()


def _pinned_adapter(pin: str) -> Any:
    """A requests adapter whose pools check the certificate's SHA-256 (urllib3's
    ``assert_fingerprint``, right after the handshake and before the request is sent)."""
    import requests.adapters

    class _Pinned(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            kwargs["assert_fingerprint"] = pin
            kwargs["cert_reqs"] = "CERT_NONE"
            super().init_poolmanager(*args, **kwargs)

    return _Pinned(max_retries=0)


def _not_sent(exc: BaseException) -> BaseException:
    exc.vmctl_hyperv_not_sent = True  # type: ignore[attr-defined]
    return exc


def was_sent(exc: BaseException) -> bool | None:
    return False if getattr(exc, "vmctl_hyperv_not_sent", False) else None


def _classify(action: str, exc: Exception) -> BaseException:
    """The transport's exception, marked when the request never left; a SOAP fault parsed."""
    import requests
    from pypsrp.exceptions import WinRMTransportError, WSManFaultError

    if isinstance(exc, WSManFaultError):
        ctx = exc.__context__
        text = ctx.response_text if isinstance(ctx, WinRMTransportError) else ""
        fault = _fault_from(action.rpartition("/")[2], text or "")
        if fault is not None:
            return fault
        return WsmanFault(action, "", str(exc.code or ""), str(exc.reason or exc), "")
    if isinstance(exc, requests.exceptions.ConnectTimeout | requests.exceptions.SSLError):
        return _not_sent(exc)
    if isinstance(exc, requests.exceptions.ConnectionError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        import urllib3.exceptions as u3

        if isinstance(reason, u3.NewConnectionError | u3.ConnectTimeoutError | u3.SSLError):
            return _not_sent(exc)
        return exc
    return exc


def describe_tls(exc: BaseException) -> str:
    text = str(exc)
    if "fingerprint" in text.lower():
        return (
            "the server's certificate does not have the pinned SHA-256 thumbprint; "
            "refusing to talk to it"
        )
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return "the server's TLS certificate is not trusted (give cafile= or thumbprint=)"
    if "match" in text.lower() and "hostname" in text.lower():
        return "the server's TLS certificate does not name this host"
    return f"TLS failed: {text}"
