"""SOAP 1.2 / WS-Management message handling: Get, Enumerate, Pull, Release, Invoke, faults."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from typing import Any
from xml.sax.saxutils import escape

from . import tables as T
from .cim import (
    EmbeddedError,
    Epr,
    Instance,
    Query,
    WqlError,
    class_of_uri,
    epr_of,
    instance_xml,
    local,
    parse_embedded,
    parse_epr,
    parse_wql,
    prop_xml,
    resource_uri,
    served_in,
    uri_namespace,
)
from .model import WmiFault, World

S, A, W, N = T.NS_S, T.NS_A, T.NS_W, T.NS_N


class Fault(Exception):
    """A WS-Management fault (DSP0226 14) to send back."""

    def __init__(
        self,
        kind: str,
        message: str | None = None,
        detail_uri: str | None = None,
        wmi: WmiFault | None = None,
    ) -> None:
        spec = T.FAULTS[kind]
        super().__init__(message or spec.reason)
        self.kind = kind
        self.spec = spec
        self.message = message or spec.reason
        self.detail_uri = detail_uri
        self.wmi = wmi


@dataclasses.dataclass
class EnumContext:
    host: str
    items: list[Instance]
    mode: str | None
    only: set[str] | None
    expires: float
    pos: int = 0


@dataclasses.dataclass
class Request:
    action: str
    message_id: str
    resource_uri: str
    selectors: dict[str, str]
    max_envelope: int
    timeout: float | None
    body: ET.Element | None


_DURATION = re.compile(
    r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> float | None:
    m = _DURATION.match(text.strip())
    if not m or text.strip() in ("P", "PT"):
        return None
    d, h, mi, s = (m.group(g) for g in "dhms")
    return int(d or 0) * 86400 + int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0)


class WsmanService:
    """Answers WS-Man envelopes for one host's endpoint of the world."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.enums: dict[str, EnumContext] = {}
        self._lock = threading.Lock()

    # --- entry point -------------------------------------------------------------------
    def handle(self, host: str, body: bytes, machine: str | None = None) -> tuple[int, bytes]:
        """Answer one envelope for ``host``'s endpoint; ``machine`` is the name the client
        addressed (the Host header), which WinRM puts in WSManFault's Machine."""
        machine = machine or host
        self.world.tick()
        req: Request | None = None
        try:
            req = self._parse(body)
            if req.action == "identify":
                return 200, self._identify()
            out_action, payload = self._dispatch(host, req)
            data = self._envelope(out_action, req.message_id, payload)
            if len(data) > req.max_envelope:
                raise Fault("EncodingLimit", detail_uri=T.FD_MAX_ENVELOPE_SIZE)
            return 200, data
        except Fault as fault:
            return fault.spec.http_status, self._fault(
                host, fault, req.message_id if req else None, machine
            )
        except WmiFault as wf:
            wfault = Fault(wf.kind if wf.kind in T.FAULTS else "InternalError", wf.message, wmi=wf)
            rel = req.message_id if req else None
            return wfault.spec.http_status, self._fault(host, wfault, rel, machine)
        except Exception as exc:  # a simulator bug answers w:InternalError, not a dead link
            ifault = Fault("InternalError", f"Internal simulator error: {exc!r}")
            rel = req.message_id if req else None
            return ifault.spec.http_status, self._fault(host, ifault, rel, machine)

    # --- parsing -------------------------------------------------------------------------
    def _parse(self, body: bytes) -> Request:
        if b"<!DOCTYPE" in body[:4096].upper() or b"<!ENTITY" in body.upper():
            raise Fault("SchemaValidationError", "DTDs are not allowed in SOAP messages.")
        try:
            root = ET.fromstring(body)
        except ET.ParseError as exc:
            raise Fault(
                "SchemaValidationError", f"The message is not well-formed XML: {exc}"
            ) from exc
        if root.tag != f"{{{S}}}Envelope":
            raise Fault("SchemaValidationError", "The message is not a SOAP 1.2 envelope.")
        header = root.find(f"{{{S}}}Header")
        sbody = root.find(f"{{{S}}}Body")
        if sbody is not None and sbody.find(f"{{{T.NS_WSMID}}}Identify") is not None:
            return Request("identify", "", "", {}, T.DEFAULT_MAX_ENVELOPE, None, None)
        if header is None or sbody is None:
            raise Fault("SchemaValidationError", "The envelope has no Header or no Body.")
        action = (header.findtext(f"{{{A}}}Action") or "").strip()
        message_id = (header.findtext(f"{{{A}}}MessageID") or "").strip()
        ruri = (header.findtext(f"{{{W}}}ResourceURI") or "").strip()
        if not action or not message_id:
            raise Fault("MessageInformationHeaderRequired")
        sels: dict[str, str] = {}
        sset = header.find(f"{{{W}}}SelectorSet")
        if sset is not None:
            for sel in sset.findall(f"{{{W}}}Selector"):
                name = sel.get("Name", "")
                if name and name != "__cimnamespace":
                    sels[name] = (sel.text or "").strip()
        max_env = T.DEFAULT_MAX_ENVELOPE
        mes = header.findtext(f"{{{W}}}MaxEnvelopeSize")
        if mes is not None:
            try:
                max_env = int(mes.strip())
            except ValueError:
                raise Fault("SchemaValidationError", "MaxEnvelopeSize is not an integer.") from None
            if max_env < T.MIN_MAX_ENVELOPE:
                raise Fault("EncodingLimit", detail_uri=T.FD_MIN_ENVELOPE_LIMIT)
        timeout = None
        ot = header.findtext(f"{{{W}}}OperationTimeout")
        if ot is not None:
            timeout = parse_duration(ot)
            if timeout is None:
                raise Fault(
                    "SchemaValidationError", f"OperationTimeout {ot!r} is not an xs:duration."
                )
        children = list(sbody)
        return Request(
            action, message_id, ruri, sels, max_env, timeout, children[0] if children else None
        )

    # --- dispatch ------------------------------------------------------------------------
    def _dispatch(self, host: str, req: Request) -> tuple[str, str]:
        if not req.resource_uri:
            raise Fault("InvalidResourceURI")
        if req.action == T.A_GET:
            return T.A_GET + T.RESPONSE_SUFFIX, self._get(host, req)
        if req.action == T.A_ENUMERATE:
            return T.A_ENUMERATE + T.RESPONSE_SUFFIX, self._enumerate(host, req)
        if req.action == T.A_PULL:
            return T.A_PULL + T.RESPONSE_SUFFIX, self._pull(host, req)
        if req.action == T.A_RELEASE:
            return T.A_RELEASE + T.RESPONSE_SUFFIX, self._release(req)
        if req.resource_uri == T.DATAFILE_URI and req.action == T.DATAFILE_URI + "/Delete":
            return req.action + T.RESPONSE_SUFFIX, self._delete_file(req)
        cls = self._class(req.resource_uri)
        prefix = resource_uri(cls) + "/"
        if req.action.startswith(prefix):
            method = req.action[len(prefix) :]
            return req.action + T.RESPONSE_SUFFIX, self._invoke(host, req, cls, method)
        raise Fault(
            "ActionNotSupported",
            f"The WS-Management service does not support the action {req.action}.",
        )

    def _class(self, uri: str, allow_all: bool = False) -> str:
        cls = class_of_uri(uri)
        if cls is None:
            raise Fault("InvalidResourceURI")
        if cls == "*" and allow_all:
            return cls
        if not served_in(cls, uri_namespace(uri)):
            raise WmiFault(
                "DestinationUnreachable",
                f"Invalid class {cls}",
                T.CIM_ERR_INVALID_CLASS,
                T.WBEM_E_INVALID_CLASS,
            )
        return cls

    def _lookup(self, host: str, cls: str, sels: dict[str, str]) -> Instance:
        keys = T.CLASSES[cls].keys
        unexpected = [k for k in sels if k not in keys]
        if unexpected:
            raise Fault("InvalidSelectors", detail_uri=T.FD_UNEXPECTED_SELECTORS)
        if any(k not in sels for k in keys):
            raise Fault("InvalidSelectors", detail_uri=T.FD_INSUFFICIENT_SELECTORS)
        with self.world.lock:
            inst = self.world.find(host, cls, sels)
        if inst is None:
            keys_text = ",".join(
                f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                for k, v in sorted(sels.items())
            )
            raise WmiFault(
                "DestinationUnreachable",
                T.FAULTS["DestinationUnreachable"].reason,
                T.CIM_ERR_NOT_FOUND,
                T.WBEM_E_NOT_FOUND,
                relpath=f"{cls}.{keys_text}",
            )
        return inst

    # Get (DSP0226 7.3)
    def _get(self, host: str, req: Request) -> str:
        cls = self._class(req.resource_uri)
        return instance_xml(self._lookup(host, cls, req.selectors))

    # Enumerate (DSP0226 8.2; MS-WSMV WQL)
    def _enumerate(self, host: str, req: Request) -> str:
        cls = self._class(req.resource_uri, allow_all=True)
        body = req.body
        if body is None or body.tag != f"{{{N}}}Enumerate":
            raise Fault("SchemaValidationError", "The Body must hold an n:Enumerate element.")
        optimize = body.find(f"{{{W}}}OptimizeEnumeration") is not None
        max_el = self._max_elements(body.findtext(f"{{{W}}}MaxElements"))
        mode = (body.findtext(f"{{{W}}}EnumerationMode") or "").strip() or None
        if mode not in (None, T.ENUM_MODE_EPR, T.ENUM_MODE_OBJECT_AND_EPR):
            raise Fault("SchemaValidationError", f"Unknown EnumerationMode {mode}.")
        flt = body.find(f"{{{W}}}Filter")
        query: Query | None = None
        if flt is not None:
            query = self._filter(cls, flt, uri_namespace(req.resource_uri))
        elif cls == "*":
            raise Fault(
                "CannotProcessFilter",
                "Enumerating the * resource needs a WQL filter.",
                detail_uri=T.FD_FILTER_DIALECT,
            )
        with self.world.lock:
            if query is not None and query.assoc_of is not None:
                items = self.world.associators(host, query)
            else:
                target = query.cls if query is not None else cls
                if target not in T.CLASSES:
                    raise WmiFault(
                        "DestinationUnreachable",
                        f"Invalid class {target}",
                        T.CIM_ERR_INVALID_CLASS,
                        T.WBEM_E_INVALID_CLASS,
                    )
                items = [
                    i
                    for i in self.world.instances(host, target)
                    if query is None or query.matches(i)
                ]
            items = [i.copy() for i in items]
        only = set(query.props) if query is not None and query.props else None
        ctx_id = f"uuid:{str(uuid.uuid4()).upper()}"
        ctx = EnumContext(host, items, mode, only, time.monotonic() + T.ENUM_CONTEXT_TTL)
        parts = [f"<n:EnumerateResponse><n:EnumerationContext>{ctx_id}</n:EnumerationContext>"]
        if optimize:
            chunk, end = self._take(ctx, max_el, req.max_envelope)
            parts.append(f"<w:Items>{chunk}</w:Items>")
            if end:
                parts.append("<w:EndOfSequence/>")
            else:
                self._store(ctx_id, ctx)
        else:
            self._store(ctx_id, ctx)
        parts.append("</n:EnumerateResponse>")
        return "".join(parts)

    def _filter(self, cls: str, flt: ET.Element, namespace: str | None) -> Query:
        dialect = flt.get("Dialect", T.WQL_DIALECT)
        if dialect == T.WQL_DIALECT:
            try:
                q = parse_wql(flt.text or "")
            except WqlError as exc:
                raise WmiFault(
                    "CannotProcessFilter",
                    f"Invalid query: {exc}",
                    T.CIM_ERR_INVALID_QUERY,
                    T.WBEM_E_INVALID_QUERY,
                ) from exc
            if q.assoc_of is None and cls not in ("*", q.cls):
                raise Fault(
                    "CannotProcessFilter",
                    f"The WQL class {q.cls} is not the resource URI's class {cls}.",
                )
            if q.assoc_of is None and not served_in(q.cls, namespace):
                raise WmiFault(
                    "DestinationUnreachable",
                    f"Invalid class {q.cls}",
                    T.CIM_ERR_INVALID_CLASS,
                    T.WBEM_E_INVALID_CLASS,
                )
            return q
        if dialect == T.SELECTOR_DIALECT and cls != "*":
            sset = flt.find(f"{{{W}}}SelectorSet")
            conds = []
            if sset is not None:
                from .cim import Cond

                for sel in sset.findall(f"{{{W}}}Selector"):
                    if sel.get("Name") and sel.get("Name") != "__cimnamespace":
                        conds.append(Cond(sel.get("Name", ""), "=", (sel.text or "").strip()))
            return Query(cls, None, ("and", conds) if conds else None)
        if dialect == T.ASSOC_DIALECT:
            ai = flt.find(f"{{{T.NS_B}}}AssociatedInstances")
            obj = ai.find(f"{{{T.NS_B}}}Object") if ai is not None else None
            epr = parse_epr(obj) if obj is not None else None
            if ai is None or epr is None:
                raise Fault("CannotProcessFilter", "The association filter has no b:Object EPR.")
            assoc = (ai.findtext(f"{{{T.NS_B}}}AssociationClassName") or "").strip() or None
            result = (ai.findtext(f"{{{T.NS_B}}}ResultClassName") or "").strip() or None
            return Query(result or "*", None, None, (epr.cls, epr.selectors), assoc, result)
        raise Fault(
            "CannotProcessFilter",
            f"Filter dialect {dialect} is not supported.",
            detail_uri=T.FD_FILTER_DIALECT,
        )

    @staticmethod
    def _max_elements(text: str | None) -> int:
        if text is None:
            return T.DEFAULT_MAX_ELEMENTS
        try:
            n = int(text.strip())
        except ValueError:
            raise Fault("SchemaValidationError", "MaxElements is not an integer.") from None
        if n < 1:
            raise Fault("SchemaValidationError", "MaxElements must be positive.")
        return n

    def _item(self, ctx: EnumContext, inst: Instance) -> str:
        if ctx.mode == T.ENUM_MODE_EPR:
            return f"<a:EndpointReference>{epr_of(inst).xml()}</a:EndpointReference>"
        obj = instance_xml(inst, only=ctx.only)
        if ctx.mode == T.ENUM_MODE_OBJECT_AND_EPR:
            epr = epr_of(inst).xml()
            return f"<w:Item>{obj}<a:EndpointReference>{epr}</a:EndpointReference></w:Item>"
        return obj

    def _take(self, ctx: EnumContext, max_el: int, max_env: int) -> tuple[str, bool]:
        """The next items that fit in ``max_el`` and the envelope (DSP0226 8.4: a service
        returns fewer items rather than exceed MaxEnvelopeSize; none fit -> EncodingLimit)."""
        budget = max_env - 1500  # room for the envelope and headers around the items
        parts: list[str] = []
        size = 0
        while ctx.pos < len(ctx.items) and len(parts) < max_el:
            item = self._item(ctx, ctx.items[ctx.pos])
            if size + len(item.encode()) > budget:
                if not parts:
                    raise Fault("EncodingLimit", detail_uri=T.FD_MAX_ENVELOPE_SIZE)
                break
            parts.append(item)
            size += len(item.encode())
            ctx.pos += 1
        return "".join(parts), ctx.pos >= len(ctx.items)

    def _store(self, ctx_id: str, ctx: EnumContext) -> None:
        now = time.monotonic()
        with self._lock:
            for k in [k for k, c in self.enums.items() if c.expires < now]:
                del self.enums[k]
            self.enums[ctx_id] = ctx

    def _context(self, host: str, body: ET.Element | None, tag: str) -> tuple[str, EnumContext]:
        if body is None or body.tag != f"{{{N}}}{tag}":
            raise Fault("SchemaValidationError", f"The Body must hold an n:{tag} element.")
        ctx_id = (body.findtext(f"{{{N}}}EnumerationContext") or "").strip()
        with self._lock:
            ctx = self.enums.get(ctx_id)
            if ctx is None or ctx.host != host or ctx.expires < time.monotonic():
                self.enums.pop(ctx_id, None)
                raise Fault("InvalidEnumerationContext")
        return ctx_id, ctx

    # Pull (DSP0226 8.4)
    def _pull(self, host: str, req: Request) -> str:
        ctx_id, ctx = self._context(host, req.body, "Pull")
        assert req.body is not None
        max_el = self._max_elements(req.body.findtext(f"{{{N}}}MaxElements"))
        with self._lock:
            chunk, end = self._take(ctx, max_el, req.max_envelope)
            ctx.expires = time.monotonic() + T.ENUM_CONTEXT_TTL
            if end:
                self.enums.pop(ctx_id, None)
        head = "" if end else f"<n:EnumerationContext>{ctx_id}</n:EnumerationContext>"
        tail = "<n:EndOfSequence/>" if end else ""
        return f"<n:PullResponse>{head}<n:Items>{chunk}</n:Items>{tail}</n:PullResponse>"

    # Release (DSP0226 8.5)
    def _release(self, req: Request) -> str:
        if req.body is None or req.body.tag != f"{{{N}}}Release":
            raise Fault("SchemaValidationError", "The Body must hold an n:Release element.")
        ctx_id = (req.body.findtext(f"{{{N}}}EnumerationContext") or "").strip()
        with self._lock:
            if self.enums.pop(ctx_id, None) is None:
                raise Fault("InvalidEnumerationContext")
        return ""

    # root/cimv2 CIM_DataFile.Delete (tables.DATAFILE_URI): an image file of the cluster
    # storage; a missing file is the WMI provider's "not found", as for any instance.
    def _delete_file(self, req: Request) -> str:
        body = req.body
        if body is None or local(body.tag) != "Delete_INPUT" or len(body):
            raise Fault("SchemaValidationError", "The Body must hold an empty Delete_INPUT.")
        name = next((v for k, v in req.selectors.items() if k.lower() == "name"), "")
        rc = self.world.delete_file(name)
        if rc is None:
            raise Fault("DestinationUnreachable", f"No CIM_DataFile {name!r}")
        return (
            f'<p:Delete_OUTPUT xmlns:p="{T.DATAFILE_URI}">'
            f"<p:ReturnValue>{rc}</p:ReturnValue></p:Delete_OUTPUT>"
        )

    # Invoke (DSP0227 9: <Method>_INPUT / <Method>_OUTPUT)
    def _invoke(self, host: str, req: Request, cls: str, method: str) -> str:
        spec = T.METHODS.get((cls, method))
        if spec is None:
            raise Fault(
                "ActionNotSupported",
                f"The WS-Management service does not support the action {req.action}.",
            )
        target = self._lookup(host, cls, req.selectors)
        body = req.body
        if body is None or local(body.tag) != f"{method}_INPUT":
            raise Fault("SchemaValidationError", f"The Body must hold a {method}_INPUT element.")
        args = self._in_params(spec, body)
        rc, out = self.world.invoke(host, target, method, args)
        uri = resource_uri(cls)
        parts = [f'<p:{method}_OUTPUT xmlns:p="{uri}">']
        for param in spec.params:
            if param.direction != "out" or param.name not in out:
                continue
            value = out[param.name]
            values = value if isinstance(value, list) else [value]
            for v in values:
                if isinstance(v, Epr):
                    parts.append(f"<p:{param.name}>{v.xml()}</p:{param.name}>")
                else:
                    parts.append(prop_xml("p", param.name, v))
        parts.append(f"<p:ReturnValue>{rc}</p:ReturnValue></p:{method}_OUTPUT>")
        return "".join(parts)

    @staticmethod
    def _in_params(spec: T.MethodSpec, body: ET.Element) -> dict[str, Any]:
        by_name = {p.name.lower(): p for p in spec.params if p.direction == "in"}
        args: dict[str, Any] = {}
        for child in body:
            name = local(child.tag)
            param = by_name.get(name.lower())
            if param is None:
                raise WmiFault(
                    "InvalidParameter",
                    f"{spec.name} has no input parameter {name}",
                    T.CIM_ERR_INVALID_PARAMETER,
                    T.WBEM_E_INVALID_PARAMETER,
                )
            if child.get(f"{{{T.NS_XSI}}}nil") == "true":
                args.setdefault(param.name, [] if param.type.endswith("[]") else None)
                continue
            base = param.type.rstrip("[]")
            value: Any
            if base == "ref":
                value = parse_epr(child)
                if value is None:
                    raise WmiFault(
                        "InvalidParameter",
                        f"{name} is not an endpoint reference",
                        T.CIM_ERR_INVALID_PARAMETER,
                        T.WBEM_E_INVALID_PARAMETER,
                    )
            elif base == "embedded" and not len(child) and not (child.text or "").strip():
                value = None  # an empty string: "optional and may be an empty string"
            elif base == "embedded":
                try:
                    value = parse_embedded(child)
                except EmbeddedError as exc:
                    raise WmiFault(
                        "InvalidParameter",
                        f"{name}: {exc}",
                        T.CIM_ERR_INVALID_PARAMETER,
                        T.WBEM_E_INVALID_PARAMETER,
                    ) from exc
            elif base in ("uint16", "uint32"):
                try:
                    value = int((child.text or "").strip())
                except ValueError as exc:
                    raise WmiFault(
                        "InvalidParameter",
                        f"{name} is not an integer",
                        T.CIM_ERR_INVALID_PARAMETER,
                        T.WBEM_E_INVALID_PARAMETER,
                    ) from exc
            elif base == "boolean":
                value = (child.text or "").strip().lower() == "true"
            else:
                value = child.text or ""
            if param.type.endswith("[]"):
                args.setdefault(param.name, []).append(value)
            else:
                args[param.name] = value
        return args

    @staticmethod
    def _identify() -> bytes:
        return (
            f'<s:Envelope xmlns:s="{S}" xmlns:wsmid="{T.NS_WSMID}"><s:Header/><s:Body>'
            f"<wsmid:IdentifyResponse><wsmid:ProtocolVersion>{W}</wsmid:ProtocolVersion>"
            f"<wsmid:ProductVendor>{T.IDENTIFY_VENDOR}</wsmid:ProductVendor>"
            f"<wsmid:ProductVersion>{T.IDENTIFY_VERSION}</wsmid:ProductVersion>"
            f"<wsmid:SecurityProfiles><wsmid:SecurityProfileName>"
            f"http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/http/spnego-kerberos"
            f"</wsmid:SecurityProfileName></wsmid:SecurityProfiles>"
            f"</wsmid:IdentifyResponse></s:Body></s:Envelope>"
        ).encode()

    # --- output ---------------------------------------------------------------------------
    @staticmethod
    def _envelope(action: str, relates_to: str | None, body: str) -> bytes:
        relates = f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo>" if relates_to else ""
        text = (
            f'<s:Envelope xml:lang="en-US" xmlns:s="{S}" xmlns:a="{A}" xmlns:x="{T.NS_X}" '
            f'xmlns:w="{W}" xmlns:n="{N}" xmlns:b="{T.NS_B}" xmlns:p="{T.NS_P}">'
            f"<s:Header><a:Action>{escape(action)}</a:Action>"
            f"<a:MessageID>uuid:{str(uuid.uuid4()).upper()}</a:MessageID>"
            f"<a:To>{T.ANONYMOUS}</a:To>{relates}</s:Header>"
            f"<s:Body>{body}</s:Body></s:Envelope>"
        )
        return text.encode("utf-8")

    def _fault(self, host: str, f: Fault, relates_to: str | None, machine: str) -> bytes:
        spec = f.spec
        detail = ""
        if f.detail_uri:
            detail += f"<w:FaultDetail>{f.detail_uri}</w:FaultDetail>"
        if f.wmi is not None and f.wmi.relpath is not None:
            if spec.subcode == "a:DestinationUnreachable":
                detail = f"<w:FaultDetail>{T.FD_INVALID_RESOURCE_URI}</w:FaultDetail>"
            provider, path = T.WMI_PLUGIN
            inner = (
                f'<f:WSManFault xmlns:f="{T.NS_F}" Code="{spec.wsman_code}" '
                f'Machine="{escape(host)}"><f:Message>{escape(f.message)}</f:Message>'
                f"</f:WSManFault>"
            )
            status = (
                f'<p:__ExtendedStatus xmlns:xsi="{T.NS_XSI}" xmlns:p="{T.NS_EXTENDED_STATUS}" '
                f'xmlns:cim="{T.NS_CIM}" xsi:type="p:__ExtendedStatus_Type">'
                f'<p:Description xsi:nil="true" xsi:type="cim:cimString"/>'
                f'<p:Operation xsi:type="cim:cimString">GetObject</p:Operation>'
                f'<p:ParameterInfo xsi:type="cim:cimString">{escape(f.wmi.relpath)}'
                f"</p:ParameterInfo>"
                f'<p:ProviderName xsi:type="cim:cimString">{T.HYPERV_PROVIDER}</p:ProviderName>'
                f'<p:StatusCode xsi:nil="true" xsi:type="cim:cimUnsignedInt"/>'
                f"</p:__ExtendedStatus>"
            )
            detail += (
                f'<f:WSManFault xmlns:f="{T.NS_F}" Code="{spec.wsman_code}" '
                f'Machine="{escape(machine)}"><f:Message>'
                f'<f:ProviderFault provider="{provider}" path="{escape(path)}">{inner}'
                f"<f:ExtendedError>{status}</f:ExtendedError></f:ProviderFault>"
                f"</f:Message></f:WSManFault>"
            )
        elif f.wmi is not None:
            w = f.wmi
            detail += (
                f'<p:MSFT_WmiError b:IsCIM_Error="true" xmlns:xsi="{T.NS_XSI}" '
                f'xmlns:b="{T.NS_B}" xmlns:p="{T.NS_WMIERR}" xmlns:cim="{T.NS_CIM}" '
                f'xsi:type="p:MSFT_WmiError_Type">'
                f'<p:CIMStatusCode xsi:type="cim:cimUnsignedInt">{w.cim_status}</p:CIMStatusCode>'
                f'<p:CIMStatusCodeDescription xsi:type="cim:cimString" xsi:nil="true"/>'
                f'<p:ErrorSource xsi:type="cim:cimString" xsi:nil="true"/>'
                f'<p:ErrorSourceFormat xsi:type="cim:cimUnsignedShort">0</p:ErrorSourceFormat>'
                f'<p:ErrorType xsi:type="cim:cimUnsignedShort">0</p:ErrorType>'
                f'<p:Message xsi:type="cim:cimString">{escape(w.message)}</p:Message>'
                f'<p:MessageID xsi:type="cim:cimString">HRESULT 0x{w.hresult:08x}</p:MessageID>'
                f'<p:OtherErrorSourceFormat xsi:type="cim:cimString" xsi:nil="true"/>'
                f'<p:OtherErrorType xsi:type="cim:cimString" xsi:nil="true"/>'
                f'<p:OwningEntity xsi:type="cim:cimString" xsi:nil="true"/>'
                f'<p:PerceivedSeverity xsi:type="cim:cimUnsignedShort">0</p:PerceivedSeverity>'
                f'<p:ProbableCause xsi:type="cim:cimUnsignedShort">0</p:ProbableCause>'
                f'<p:ProbableCauseDescription xsi:type="cim:cimString" xsi:nil="true"/>'
                f'<p:error_Category xsi:type="cim:cimUnsignedInt">0</p:error_Category>'
                f'<p:error_Code xsi:type="cim:cimUnsignedInt">{w.hresult}</p:error_Code>'
                f'<p:error_Type xsi:type="cim:cimString">HRESULT</p:error_Type>'
                f'<p:error_WindowsErrorMessage xsi:type="cim:cimString">{escape(w.message)}'
                f"</p:error_WindowsErrorMessage></p:MSFT_WmiError>"
            )
        else:
            detail += (
                f'<f:WSManFault xmlns:f="{T.NS_F}" Code="{spec.wsman_code}" '
                f'Machine="{escape(host)}"><f:Message>{escape(f.message)}</f:Message>'
                f"</f:WSManFault>"
            )
        action = T.A_ADDR_FAULT if spec.subcode.startswith("a:") else T.A_FAULT
        body = (
            f"<s:Fault><s:Code><s:Value>{spec.code}</s:Value><s:Subcode>"
            f"<s:Value>{spec.subcode}</s:Value></s:Subcode></s:Code>"
            f'<s:Reason><s:Text xml:lang="en-US">{escape(f.message)}</s:Text></s:Reason>'
            f"<s:Detail>{detail}</s:Detail></s:Fault>"
        )
        return self._envelope(action, relates_to, body)
