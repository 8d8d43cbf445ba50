"""CIM instances as WS-Management XML (DSP0230/DSP0227), embedded instances, EPRs and WQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import xml.etree.ElementTree as ET
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from . import tables as T


class Interval:
    """A CIM interval (``cim:Interval``, an xs:duration): Msvm_ConcreteJob.ElapsedTime."""

    def __init__(self, seconds: float) -> None:
        self.seconds = max(0.0, seconds)

    def iso(self) -> str:
        s = self.seconds
        days, s = divmod(s, 86400)
        hours, s = divmod(s, 3600)
        minutes, s = divmod(s, 60)
        return f"P{int(days)}DT{int(hours)}H{int(minutes)}M{s:.3f}S"


@dataclasses.dataclass
class Instance:
    cls: str
    props: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.props.get(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self.props[key] = value

    def get(self, key: str, default: Any = None) -> Any:
        return self.props.get(key, default)

    def keys(self) -> dict[str, str]:
        return {k: str(self.props.get(k, "")) for k in T.CLASSES[self.cls].keys}

    def copy(self) -> Instance:
        return Instance(
            self.cls, {k: (list(v) if isinstance(v, list) else v) for k, v in self.props.items()}
        )

    def path(self, host: str) -> str:
        """The WMI object path (``\\\\HOST\\root\\virtualization\\v2:Class.Key="v",...``) as
        Hyper-V puts it in Parent / HostResource (HV2/msvm-resourceallocationsettingdata)."""
        keys = ",".join(
            f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
            for k, v in sorted(self.keys().items())
        )
        return f"\\\\{host}\\root\\virtualization\\v2:{self.cls}.{keys}"


def local(tag: str) -> str:
    """The local part of an ElementTree ``{namespace}name`` tag."""
    return tag.rpartition("}")[2]


def namespace_of(cls: str) -> str:
    """The WMI namespace a served class lives in (tables.CLASS_NAMESPACES, else v2)."""
    return T.CLASS_NAMESPACES.get(cls, T.CIM_NAMESPACE)


def resource_uri(cls: str) -> str:
    if namespace_of(cls) == T.CIMV2_NAMESPACE:
        return T.CIMV2_PREFIX + cls
    return T.RESOURCE_PREFIX + cls


def uri_namespace(uri: str) -> str | None:
    """The WMI namespace a resource URI addresses (MS-WSMV: ``.../wmi/<namespace>/``)."""
    if uri.startswith(T.RESOURCE_PREFIX):
        return T.CIM_NAMESPACE
    if uri.startswith(T.CIMV2_PREFIX):
        return T.CIMV2_NAMESPACE
    return None


def class_of_uri(uri: str) -> str | None:
    for prefix in (T.RESOURCE_PREFIX, T.CIMV2_PREFIX):
        if uri.startswith(prefix):
            return uri[len(prefix) :]
    return None


def served_in(cls: str, namespace: str | None) -> bool:
    """Whether ``cls`` is a class the simulator serves in ``namespace``."""
    return cls in T.CLASSES and namespace_of(cls) == namespace


def cim_datetime(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return escape(str(value))


def prop_xml(prefix: str, name: str, value: Any) -> str:
    """One property as DSP0230 renders it: repeated elements for arrays, ``xsi:nil`` for
    NULL, ``cim:Datetime``/``cim:Interval`` content for datetimes."""
    if value is None or (isinstance(value, list) and not value):
        return f'<{prefix}:{name} xsi:nil="true"/>'
    if isinstance(value, list):
        return "".join(prop_xml(prefix, name, v) for v in value)
    if isinstance(value, dt.datetime):
        return (
            f"<{prefix}:{name}><cim:Datetime>{cim_datetime(value)}</cim:Datetime></{prefix}:{name}>"
        )
    if isinstance(value, Interval):
        return f"<{prefix}:{name}><cim:Interval>{value.iso()}</cim:Interval></{prefix}:{name}>"
    if isinstance(value, Epr):
        return f"<{prefix}:{name}>{value.xml()}</{prefix}:{name}>"
    if isinstance(value, Instance):
        return f"<{prefix}:{name}>{instance_xml(value, 'q')}</{prefix}:{name}>"
    return f"<{prefix}:{name}>{_scalar(value)}</{prefix}:{name}>"


def instance_xml(inst: Instance, prefix: str = "p", only: set[str] | None = None) -> str:
    """An instance as WinRM's WMI plugin renders it (DSP0230 7; MS-WSMV): element named
    after the class in the class's resource URI namespace, ``xsi:type`` ``<Class>_Type``,
    properties in the class's order."""
    spec = T.CLASSES[inst.cls]
    wanted = None if only is None else {n.lower() for n in only}  # WQL: case-insensitive
    body = "".join(
        prop_xml(prefix, name, inst.props.get(name))
        for name in spec.props
        if wanted is None or name.lower() in wanted
    )
    return (
        f'<{prefix}:{inst.cls} xmlns:{prefix}="{resource_uri(inst.cls)}" '
        f'xmlns:cim="{T.NS_CIM}" xmlns:xsi="{T.NS_XSI}" '
        f'xsi:type="{prefix}:{inst.cls}_Type">{body}</{prefix}:{inst.cls}>'
    )


@dataclasses.dataclass
class Epr:
    """A WS-Addressing endpoint reference to a WMI instance (DSP0227 7; MS-WSMV: WinRM adds
    the ``__cimnamespace`` selector)."""

    cls: str
    selectors: dict[str, str]

    def xml(self) -> str:
        sels = "".join(
            f"<w:Selector Name={quoteattr(k)}>{escape(v)}</w:Selector>"
            for k, v in self.selectors.items()
        )
        sels += f'<w:Selector Name="__cimnamespace">{namespace_of(self.cls)}</w:Selector>'
        return (
            f'<a:Address xmlns:a="{T.NS_A}">{T.ANONYMOUS}</a:Address>'
            f'<a:ReferenceParameters xmlns:a="{T.NS_A}" xmlns:w="{T.NS_W}">'
            f"<w:ResourceURI>{resource_uri(self.cls)}</w:ResourceURI>"
            f"<w:SelectorSet>{sels}</w:SelectorSet></a:ReferenceParameters>"
        )


def epr_of(inst: Instance) -> Epr:
    return Epr(inst.cls, inst.keys())


def parse_epr(elem: ET.Element) -> Epr | None:
    """An EPR parameter: ``a:ReferenceParameters`` (or ``a:EndpointReference`` wrapping it)
    with ``w:ResourceURI`` and ``w:SelectorSet``."""
    ref = elem.find(f".//{{{T.NS_A}}}ReferenceParameters")
    if ref is None:
        return None
    uri = (ref.findtext(f"{{{T.NS_W}}}ResourceURI") or "").strip()
    cls = class_of_uri(uri)
    if cls is None:
        return None
    sels: dict[str, str] = {}
    for sel in ref.iter(f"{{{T.NS_W}}}Selector"):
        name = sel.get("Name", "")
        if name and name != "__cimnamespace":
            sels[name] = (sel.text or "").strip()
    return Epr(cls, sels)


class EmbeddedError(ValueError):
    """An embedded instance that cannot be read."""


_CIMXML_TYPES = {"boolean", "string", "datetime", "char16", "real32", "real64"}


def _typed(ty: str, text: str) -> Any:
    base = ty.rstrip("[]")
    if base == "boolean":
        return text.strip().lower() == "true"
    if base.startswith(("uint", "sint")):
        try:
            return int(text.strip())
        except ValueError as exc:
            raise EmbeddedError(f"not an integer: {text!r}") from exc
    return text


def parse_cimxml_instance(text: str) -> Instance:
    """A CIM-XML ``<INSTANCE CLASSNAME=...>`` (DSP0201), as libvirt:hyperv_wmi.c
    hypervSerializeEmbeddedParam and the HV2 samples (GetText(CimXml)) send it."""
    try:
        root = ET.fromstring(text.strip())
    except ET.ParseError as exc:
        raise EmbeddedError(f"embedded instance is not XML: {exc}") from exc
    if root.tag != "INSTANCE":
        inner = root.find(".//INSTANCE")
        if inner is None:
            raise EmbeddedError("no INSTANCE element")
        root = inner
    cls = root.get("CLASSNAME", "")
    if cls not in T.CLASSES:
        raise EmbeddedError(f"unknown class {cls!r}")
    spec = T.CLASSES[cls]
    props: dict[str, Any] = {}
    for prop in root:
        name = prop.get("NAME", "")
        if name not in spec.props:
            continue  # WMI ignores properties the class does not have; so do we
        ty = spec.props[name]
        if prop.tag == "PROPERTY.ARRAY":
            arr = prop.find("VALUE.ARRAY")
            props[name] = (
                [] if arr is None else [_typed(ty, v.text or "") for v in arr.findall("VALUE")]
            )
        elif prop.tag == "PROPERTY":
            val = prop.find("VALUE")
            if val is None:
                props[name] = None
            elif ty.endswith("[]"):
                props[name] = [_typed(ty, val.text or "")]
            else:
                props[name] = _typed(ty, val.text or "")
    return Instance(cls, props)


def cimxml_instance(inst: Instance, only: tuple[str, ...] | None = None) -> str:
    """An instance as CIM-XML text (for string-typed embedded values such as
    Msvm_KvpExchangeComponent.GuestIntrinsicExchangeItems)."""
    parts = [f'<INSTANCE CLASSNAME="{inst.cls}">']
    for name, value in inst.props.items():
        if only is not None and name not in only:
            continue
        ty = "uint16" if isinstance(value, int) and not isinstance(value, bool) else "string"
        if isinstance(value, bool):
            ty = "boolean"
        parts.append(
            f'<PROPERTY NAME="{name}" TYPE="{ty}"><VALUE>{_scalar(value)}</VALUE></PROPERTY>'
        )
    parts.append("</INSTANCE>")
    return "".join(parts)


def parse_wsman_instance(elem: ET.Element) -> Instance:
    """An embedded instance in the WS-Man element form: ``<q:Class xmlns:q=".../Class">``
    with one child per property (DSP0230), or the parameter element itself typed with
    ``xsi:type="...Class_Type"``."""
    cls = local(elem.tag)
    if cls not in T.CLASSES:
        xsi_type = elem.get(f"{{{T.NS_XSI}}}type", "")
        cls = xsi_type.rpartition(":")[2].removesuffix("_Type")
    if cls not in T.CLASSES:
        raise EmbeddedError(f"unknown embedded class {cls!r}")
    spec = T.CLASSES[cls]
    props: dict[str, Any] = {}
    for child in elem:
        name = local(child.tag)
        if name not in spec.props:
            continue
        ty = spec.props[name]
        if child.get(f"{{{T.NS_XSI}}}nil") == "true":
            props.setdefault(name, [] if ty.endswith("[]") else None)
            continue
        val = _typed(ty, child.text or "")
        if ty.endswith("[]"):
            props.setdefault(name, []).append(val)
        else:
            props[name] = val
    return Instance(cls, props)


def parse_embedded(elem: ET.Element) -> Instance:
    """An embedded-instance parameter in any of the forms WinRM accepts: escaped or CDATA
    CIM-XML text, an ``INSTANCE`` child, a WS-Man instance child, or an ``xsi:type``d
    parameter element."""
    children = list(elem)
    if children:
        child = children[0]
        if child.tag == "INSTANCE":
            return parse_cimxml_instance(ET.tostring(child, encoding="unicode"))
        if elem.get(f"{{{T.NS_XSI}}}type") and len(children) > 1:
            return parse_wsman_instance(elem)
        return parse_wsman_instance(child)
    text = (elem.text or "").strip()
    if not text:
        raise EmbeddedError("empty embedded instance")
    return parse_cimxml_instance(text)


# --- WQL (MS-WSMV 2.2.4.x WQL dialect; the subset libvirt:hyperv_wmi.c sends) ---------------


class WqlError(ValueError):
    """A query the simulator (or WMI) cannot process."""


@dataclasses.dataclass
class Cond:
    prop: str
    op: str  # "=", "<>", "<", ">", "<=", ">=", "is null", "is not null", "like"
    value: Any


#: A WHERE clause: a Cond, or ("and" | "or", [nodes]), or ("not", node).
Node = Any


@dataclasses.dataclass
class Query:
    cls: str
    props: tuple[str, ...] | None  # None = *
    where: Node = None
    # ASSOCIATORS OF
    assoc_of: tuple[str, dict[str, str]] | None = None
    assoc_class: str | None = None
    result_class: str | None = None

    def matches(self, inst: Instance) -> bool:
        return self.where is None or _eval(inst, self.where)


def _eval(inst: Instance, node: Node) -> bool:
    if isinstance(node, Cond):
        return _match(inst, node)
    kind, arg = node
    if kind == "not":
        return not _eval(inst, arg)
    if kind == "and":
        return all(_eval(inst, n) for n in arg)
    return any(_eval(inst, n) for n in arg)


def _like(pattern: str) -> re.Pattern[str]:
    out = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    return re.compile(f"^{out}$", re.IGNORECASE | re.DOTALL)


def _match(inst: Instance, c: Cond) -> bool:
    """WMI's comparison semantics: NULL matches nothing but IS NULL; strings compare
    case-insensitively; numbers numerically."""
    have = inst.props.get(c.prop)
    if have is None and c.prop not in inst.props:  # WQL names are case-insensitive
        have = next((v for k, v in inst.props.items() if k.lower() == c.prop.lower()), None)
    if c.op == "is null":
        return have is None
    if c.op == "is not null":
        return have is not None
    if have is None or isinstance(have, list):
        return False
    if c.op == "like":
        return bool(_like(str(c.value)).match(str(have)))
    a: Any
    b: Any
    if isinstance(have, bool) or isinstance(c.value, bool):
        a, b = bool(have), bool(c.value)
    elif isinstance(have, int):
        try:
            a, b = have, int(c.value)
        except (TypeError, ValueError):
            return False
    else:
        a, b = str(have).lower(), str(c.value).lower()
    ops: dict[str, bool] = {
        "=": a == b,
        "<>": a != b,
        "<": a < b,
        ">": a > b,
        "<=": a <= b,
        ">=": a >= b,
    }
    return ops[c.op]


_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")|(?P<op><>|!=|<=|>=|=|<|>)|"
    r"(?P<num>-?\d+)|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[(),*]))"
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise WqlError(f"unexpected text at {pos}: {text[pos : pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        val = m.group(kind)
        if kind == "str":
            val = re.sub(r"\\(.)", r"\1", val[1:-1])
        elif kind == "op" and val == "!=":
            val = "<>"
        out.append((kind, val))
    return out


class _Parser:
    """``SELECT * | Prop, ... FROM Class [WHERE expr]``; expr with AND, OR, NOT,
    parentheses, = <> != < > <= >=, IS [NOT] NULL and LIKE (WQL, as WMI takes it)."""

    def __init__(self, toks: list[tuple[str, str]]) -> None:
        self.toks = toks
        self.i = 0

    def peek_word(self) -> str:
        if self.i < len(self.toks) and self.toks[self.i][0] == "word":
            return self.toks[self.i][1].upper()
        return ""

    def take(self) -> tuple[str, str]:
        if self.i >= len(self.toks):
            raise WqlError("unexpected end of query")
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect_word(self, word: str) -> None:
        kind, val = self.take()
        if kind != "word" or val.upper() != word:
            raise WqlError(f"expected {word}, got {val!r}")

    def expr(self) -> Node:
        terms = [self.term()]
        while self.peek_word() == "OR":
            self.i += 1
            terms.append(self.term())
        return terms[0] if len(terms) == 1 else ("or", terms)

    def term(self) -> Node:
        factors = [self.factor()]
        while self.peek_word() == "AND":
            self.i += 1
            factors.append(self.factor())
        return factors[0] if len(factors) == 1 else ("and", factors)

    def factor(self) -> Node:
        if self.peek_word() == "NOT":
            self.i += 1
            return ("not", self.factor())
        kind, val = self.take()
        if kind == "punct" and val == "(":
            node = self.expr()
            kind, val = self.take()
            if (kind, val) != ("punct", ")"):
                raise WqlError("expected )")
            return node
        if kind != "word":
            raise WqlError(f"expected a property, got {val!r}")
        prop = val
        if self.peek_word() == "IS":
            self.i += 1
            neg = self.peek_word() == "NOT"
            if neg:
                self.i += 1
            self.expect_word("NULL")
            return Cond(prop, "is not null" if neg else "is null", None)
        if self.peek_word() == "LIKE":
            self.i += 1
            kind, raw = self.take()
            if kind != "str":
                raise WqlError("LIKE takes a string")
            return Cond(prop, "like", raw)
        kind, op = self.take()
        if kind != "op":
            raise WqlError(f"expected an operator after {prop}")
        kind, raw = self.take()
        value: Any
        if kind == "str":
            value = raw
        elif kind == "num":
            value = int(raw)
        elif kind == "word" and raw.upper() in ("TRUE", "FALSE"):
            value = raw.upper() == "TRUE"
        else:
            raise WqlError(f"unsupported value {raw!r}")
        return Cond(prop, op, value)


def parse_wql(text: str) -> Query:
    text = text.strip()
    m = re.match(r"(?is)^ASSOCIATORS\s+OF\s*\{(?P<path>[^}]*)\}\s*(?:WHERE\s+(?P<w>.*))?$", text)
    if m:
        return _parse_associators(m.group("path"), m.group("w") or "")
    p = _Parser(_tokens(text))
    p.expect_word("SELECT")
    props: list[str] = []
    star = False
    while True:
        kind, val = p.take()
        if kind == "punct" and val == "*":
            star = True
        elif kind == "word" and val.upper() != "FROM":
            props.append(val)
        elif kind == "word":
            break
        elif not (kind == "punct" and val == ","):
            raise WqlError(f"unexpected {val!r} in the select list")
    kind, cls = p.take()
    if kind != "word":
        raise WqlError("expected a class name")
    where: Node = None
    if p.i < len(p.toks):
        p.expect_word("WHERE")
        where = p.expr()
        if p.i < len(p.toks):
            raise WqlError(f"unexpected {p.toks[p.i][1]!r}")
    return Query(cls, None if star or not props else tuple(props), where)


def _parse_associators(path: str, where: str) -> Query:
    cls, _, keys = path.strip().partition(".")
    sels: dict[str, str] = {}
    for m in re.finditer(
        r"([A-Za-z_]\w*)\s*=\s*(?:'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\")", keys
    ):
        raw = m.group(2) if m.group(2) is not None else m.group(3)
        sels[m.group(1)] = re.sub(r"\\(.)", r"\1", raw)
    assoc = result = None
    for m in re.finditer(r"(?i)\b(AssocClass|ResultClass)\s*=\s*([A-Za-z_]\w*)", where):
        if m.group(1).lower() == "assocclass":
            assoc = m.group(2)
        else:
            result = m.group(2)
    if not cls or not sels:
        raise WqlError("ASSOCIATORS OF needs {Class.Key='value'}")
    return Query(result or "*", None, None, (cls.strip(), sels), assoc, result)
