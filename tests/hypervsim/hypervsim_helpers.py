"""A thin Hyper-V WMI client over pypsrp's independent WS-Man client, for the hypervsim tests.

pypsrp (``pypsrp.wsman.WSMan``) builds the envelopes, headers, selectors and authentication
(Basic, NTLM with channel binding) itself; these helpers only build the bodies (n:Enumerate,
n:Pull, <Method>_INPUT) the way DSP0226/DSP0227 and libvirt's Hyper-V driver do.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

from pypsrp.wsman import NAMESPACES, SelectorSet, WSMan

from hypervsim import SimServer

V2 = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2/"
NS_N = "http://schemas.xmlsoap.org/ws/2004/09/enumeration"
NS_W = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
NS_A = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"
WQL = "http://schemas.microsoft.com/wbem/wsman/1/WQL"


def client(server: SimServer, host: int = 0, auth: str = "basic", **kw: Any) -> WSMan:
    port = server.ports[host]
    if server.tls:
        return WSMan(
            "127.0.0.1",
            port=port,
            username=server.username,
            password=server.password,
            ssl=True,
            auth=auth,
            cert_validation=server.cafile,
            path="wsman",
            **kw,
        )
    return WSMan(
        "127.0.0.1",
        port=port,
        username=server.username,
        password=server.password,
        ssl=False,
        auth=auth,
        encryption="never",
        path="wsman",
        **kw,
    )


def local(tag: str) -> str:
    return tag.rpartition("}")[2]


def to_dict(elem: ET.Element) -> dict[str, Any]:
    """An instance element as {property: text | [texts] | None}; arrays come back as lists."""
    out: dict[str, Any] = {}
    for child in elem:
        name = local(child.tag)
        if child.get(f"{{{NS_XSI}}}nil") == "true":
            value: Any = None
        elif len(child):
            inner = child[0]
            value = inner.text if local(inner.tag) in ("Datetime", "Interval") else child
        else:
            value = child.text or ""
        if name in out:
            prev = out[name]
            out[name] = (prev if isinstance(prev, list) else [prev]) + [value]
        else:
            out[name] = value
    return out


def enum_body(
    wql: str | None = None,
    *,
    optimize: bool = False,
    max_elements: int | None = None,
    mode: str | None = None,
) -> ET.Element:
    e = ET.Element(f"{{{NS_N}}}Enumerate")
    if optimize:
        ET.SubElement(e, f"{{{NS_W}}}OptimizeEnumeration")
    if max_elements is not None:
        ET.SubElement(e, f"{{{NS_W}}}MaxElements").text = str(max_elements)
    if mode is not None:
        ET.SubElement(e, f"{{{NS_W}}}EnumerationMode").text = mode
    if wql is not None:
        ET.SubElement(e, f"{{{NS_W}}}Filter", Dialect=WQL).text = wql
    return e


def pull_body(ctx: str, max_elements: int | None = None) -> ET.Element:
    p = ET.Element(f"{{{NS_N}}}Pull")
    ET.SubElement(p, f"{{{NS_N}}}EnumerationContext").text = ctx
    if max_elements is not None:
        ET.SubElement(p, f"{{{NS_N}}}MaxElements").text = str(max_elements)
    return p


def enumerate_all(
    w: WSMan,
    cls: str,
    wql: str | None = None,
    max_elements: int = 20,
    mode: str | None = None,
    namespace: str = V2,
) -> list[ET.Element]:
    """Enumerate + Pull until EndOfSequence; the item elements. ``namespace``: the WMI
    namespace's resource URI prefix (root/virtualization/v2 unless told)."""
    uri = namespace + ("*" if wql and cls == "*" else cls)
    body = w.enumerate(uri, enum_body(wql, mode=mode))
    ctx = body.findtext(f".//{{{NS_N}}}EnumerationContext")
    items: list[ET.Element] = []
    while ctx:
        resp = w.pull(namespace + cls if cls != "*" else uri, pull_body(ctx, max_elements))
        pr = resp.find(f"{{{NS_N}}}PullResponse")
        assert pr is not None
        its = pr.find(f"{{{NS_N}}}Items")
        items += list(its) if its is not None else []
        if pr.find(f"{{{NS_N}}}EndOfSequence") is not None:
            break
        ctx = pr.findtext(f"{{{NS_N}}}EnumerationContext")
    return items


def query(w: WSMan, wql: str) -> list[dict[str, Any]]:
    return [to_dict(e) for e in enumerate_all(w, "*", wql)]


def selectors(**kv: str) -> SelectorSet:
    ss = SelectorSet()
    for k, v in kv.items():
        ss.add_option(k, v)
    return ss


def get(w: WSMan, cls: str, **keys: str) -> dict[str, Any]:
    body = w.get(V2 + cls, selector_set=selectors(**keys))
    return to_dict(body[0])


def vm_selectors(name: str) -> dict[str, str]:
    return {"CreationClassName": "Msvm_ComputerSystem", "Name": name}


def epr(cls: str, **keys: str) -> ET.Element:
    """An EPR parameter value (a:Address + a:ReferenceParameters), as libvirt sends it."""
    holder = ET.Element("holder")
    ET.SubElement(
        holder, f"{{{NS_A}}}Address"
    ).text = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
    ref = ET.SubElement(holder, f"{{{NS_A}}}ReferenceParameters")
    ET.SubElement(ref, f"{{{NS_W}}}ResourceURI").text = V2 + cls
    ss = ET.SubElement(ref, f"{{{NS_W}}}SelectorSet")
    for k, v in keys.items():
        ET.SubElement(ss, f"{{{NS_W}}}Selector", Name=k).text = v
    return holder


def cimxml(cls: str, **props: Any) -> str:
    """An embedded instance as CIM-XML text (DSP0201 INSTANCE), as the HV2 samples'
    GetText(CimXml) and libvirt send it; the text goes into the parameter escaped."""
    parts = [f'<INSTANCE CLASSNAME="{cls}">']
    for name, value in props.items():
        if isinstance(value, list):
            vals = "".join(f"<VALUE>{v}</VALUE>" for v in value)
            parts.append(
                f'<PROPERTY.ARRAY NAME="{name}" TYPE="string">'
                f"<VALUE.ARRAY>{vals}</VALUE.ARRAY></PROPERTY.ARRAY>"
            )
        else:
            ty = (
                "boolean"
                if isinstance(value, bool)
                else ("uint64" if isinstance(value, int) else "string")
            )
            text = str(value).lower() if isinstance(value, bool) else str(value)
            parts.append(f'<PROPERTY NAME="{name}" TYPE="{ty}"><VALUE>{text}</VALUE></PROPERTY>')
    parts.append("</INSTANCE>")
    return "".join(parts)


def invoke(
    w: WSMan, cls: str, method: str, sels: dict[str, str], params: Iterable[tuple[str, Any]] = ()
) -> dict[str, Any]:
    """Invoke a CIM method; params are (name, str | EPR holder element); the OUTPUT as a dict
    (EPR outputs come back as their ET element)."""
    uri = V2 + cls
    inp = ET.Element(f"{{{uri}}}{method}_INPUT")
    for name, value in params:
        el = ET.SubElement(inp, f"{{{uri}}}{name}")
        if isinstance(value, ET.Element):
            el.extend(list(value))
        else:
            el.text = str(value)
    resp = w.invoke(f"{uri}/{method}", uri, inp, selector_set=selectors(**sels))
    out = resp.find(f"s:Body/{{{uri}}}{method}_OUTPUT", NAMESPACES)
    assert out is not None, ET.tostring(resp)
    return to_dict(out)


def epr_selector(value: Any, name: str) -> str:
    """A selector's value out of an EPR output parameter."""
    assert isinstance(value, ET.Element), value
    for sel in value.iter(f"{{{NS_W}}}Selector"):
        if sel.get("Name") == name:
            return sel.text or ""
    raise AssertionError(f"no selector {name}")


def wait_job(w: WSMan, out: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Poll the output's Job (as libvirt does, every 100 ms... here 20 ms) until it ends."""
    if int(out["ReturnValue"]) == 0:
        return {"JobState": "7"}
    assert int(out["ReturnValue"]) == 4096, out
    jid = epr_selector(out["Job"], "InstanceID")
    deadline = time.monotonic() + timeout
    while True:
        job = get(w, "Msvm_ConcreteJob", InstanceID=jid)
        if job["JobState"] not in ("2", "3", "4", "5", "6"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.02)


def service(w: WSMan, cls: str) -> dict[str, str]:
    """The key selectors of a host's (only) instance of a service class."""
    inst = to_dict(enumerate_all(w, cls)[0])
    return {
        k: inst[k] for k in ("CreationClassName", "Name", "SystemCreationClassName", "SystemName")
    }


def vms(w: WSMan) -> dict[str, dict[str, Any]]:
    """ElementName -> Msvm_ComputerSystem of the VMs the endpoint serves."""
    rows = query(w, "SELECT * FROM Msvm_ComputerSystem WHERE Caption = 'Virtual Machine'")
    return {r["ElementName"]: r for r in rows}


def make_vhd(w: WSMan, path: str, typ: int = 3, size: int = 64 << 20) -> None:
    """Msvm_ImageManagementService.CreateVirtualHardDisk of a VHDX at ``path`` (``typ``
    3 dynamic, 2 fixed; ``size`` bytes); the job must complete."""
    ims = service(w, "Msvm_ImageManagementService")
    sd = cimxml(
        "Msvm_VirtualHardDiskSettingData", Path=path, Format=3, Type=typ, MaxInternalSize=size
    )
    out = invoke(
        w,
        "Msvm_ImageManagementService",
        "CreateVirtualHardDisk",
        ims,
        [("VirtualDiskSettingData", sd)],
    )
    assert wait_job(w, out)["JobState"] == "7"
