"""Raw-byte checks of the HTTP exchange and the SOAP envelopes, plus WS-Enumeration paging,
filters and faults through pypsrp (HTTP, Basic)."""

from __future__ import annotations

import base64
import http.client
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from hypervsim_helpers import (
    NS_A,
    NS_N,
    NS_W,
    V2,
    enum_body,
    enumerate_all,
    get,
    invoke,
    pull_body,
    query,
    service,
    to_dict,
    vm_selectors,
    vms,
    wait_job,
)
from pypsrp.exceptions import WSManFaultError
from pypsrp.wsman import WSMan

import hypervsim
from hypervsim import tables as T

pytestmark = pytest.mark.hyperv

S = "http://www.w3.org/2003/05/soap-envelope"
PASSWORD = "pw-wire"


@pytest.fixture(scope="module")
def server() -> Iterator[hypervsim.SimServer]:
    with hypervsim.serve(hosts=2, vms=10, tls=False, password=PASSWORD, op_delay=0.02) as srv:
        yield srv


def envelope(
    action: str,
    uri: str,
    body: str = "",
    sels: dict[str, str] | None = None,
    message_id: str | None = "auto",
    max_env: int | None = 153600,
) -> bytes:
    mid = f"uuid:{uuid.uuid4()}" if message_id == "auto" else message_id
    head = (
        f"<a:Action s:mustUnderstand='true'>{action}</a:Action><w:ResourceURI>{uri}</w:ResourceURI>"
    )
    head += "<a:To>http://127.0.0.1/wsman</a:To><w:OperationTimeout>PT60S</w:OperationTimeout>"
    if mid is not None:
        head += f"<a:MessageID>{mid}</a:MessageID>"
    if max_env is not None:
        head += f"<w:MaxEnvelopeSize s:mustUnderstand='true'>{max_env}</w:MaxEnvelopeSize>"
    if sels:
        head += (
            "<w:SelectorSet>"
            + "".join(f"<w:Selector Name='{k}'>{v}</w:Selector>" for k, v in sels.items())
            + "</w:SelectorSet>"
        )
    return (
        f"<s:Envelope xmlns:s='{S}' xmlns:a='{NS_A}' xmlns:w='{NS_W}' xmlns:n='{NS_N}'>"
        f"<s:Header>{head}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def post(
    server: hypervsim.SimServer,
    data: bytes,
    auth: str | None = "basic",
    path: str = "/wsman",
    password: str = PASSWORD,
) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", server.ports[0], timeout=10)
    headers = {"Content-Type": "application/soap+xml;charset=UTF-8"}
    if auth == "basic":
        token = base64.b64encode(f"{server.username}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    conn.request("POST", path, body=data, headers=headers)
    resp = conn.getresponse()
    resp.read()
    return resp


def exchange(
    server: hypervsim.SimServer, data: bytes
) -> tuple[int, bytes, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", server.ports[0], timeout=10)
    token = base64.b64encode(f"{server.username}:{PASSWORD}".encode()).decode()
    conn.request(
        "POST",
        "/wsman",
        body=data,
        headers={
            "Content-Type": "application/soap+xml;charset=UTF-8",
            "Authorization": f"Basic {token}",
        },
    )
    resp = conn.getresponse()
    return resp.status, resp.read(), resp


def fault_parts(raw: bytes) -> tuple[str, str, ET.Element]:
    root = ET.fromstring(raw)
    fault = root.find(f"{{{S}}}Body/{{{S}}}Fault")
    assert fault is not None, raw
    code = fault.findtext(f"{{{S}}}Code/{{{S}}}Value") or ""
    sub = fault.findtext(f"{{{S}}}Code/{{{S}}}Subcode/{{{S}}}Value") or ""
    detail = fault.find(f"{{{S}}}Detail")
    assert detail is not None
    return code, sub, detail


def test_http_auth_challenge_and_paths(server: hypervsim.SimServer) -> None:
    data = envelope(T.A_GET, V2 + "Msvm_VirtualEthernetSwitch")
    resp = post(server, data, auth=None)
    assert resp.status == 401
    assert resp.headers.get_all("WWW-Authenticate") == ["Negotiate", 'Basic realm="WSMAN"']
    assert resp.headers["Content-Length"] == "0"
    assert post(server, data, password="wrong").status == 401
    assert post(server, data, path="/other").status == 404
    conn = http.client.HTTPConnection("127.0.0.1", server.ports[0], timeout=10)
    conn.request("GET", "/wsman")
    assert conn.getresponse().status == 405


def test_get_envelope_bytes(server: hypervsim.SimServer, w: WSMan) -> None:
    switch = to_dict(enumerate_all(w, "Msvm_VirtualEthernetSwitch")[0])
    mid = f"uuid:{str(uuid.uuid4()).upper()}"
    sels = {"CreationClassName": "Msvm_VirtualEthernetSwitch", "Name": switch["Name"]}
    status, raw, resp = exchange(
        server, envelope(T.A_GET, V2 + "Msvm_VirtualEthernetSwitch", sels=sels, message_id=mid)
    )
    assert status == 200 and resp.headers["Content-Type"] == "application/soap+xml;charset=UTF-8"
    text = raw.decode()
    for ns in (S, NS_A, NS_W, NS_N):
        assert f'"{ns}"' in text
    root = ET.fromstring(raw)
    head = root.find(f"{{{S}}}Header")
    assert head is not None
    assert head.findtext(f"{{{NS_A}}}Action") == T.A_GET + "Response"
    assert head.findtext(f"{{{NS_A}}}RelatesTo") == mid
    assert re.fullmatch(r"uuid:[0-9A-F-]{36}", head.findtext(f"{{{NS_A}}}MessageID") or "")
    inst = root.find(f"{{{S}}}Body/{{{V2}Msvm_VirtualEthernetSwitch}}Msvm_VirtualEthernetSwitch")
    assert inst is not None
    assert inst.get("{http://www.w3.org/2001/XMLSchema-instance}type") == (
        "p:Msvm_VirtualEthernetSwitch_Type"
    )
    assert b"<p:ElementName>vSwitch</p:ElementName>" in raw


def test_faults_as_winrm_sends_them(server: hypervsim.SimServer, w: WSMan) -> None:
    # instance not found: a:DestinationUnreachable, FaultDetail InvalidResourceURI, and a
    # WSManFault whose Message holds the WMI plug-in's ProviderFault with __ExtendedStatus
    status, raw, _ = exchange(
        server, envelope(T.A_GET, V2 + "Msvm_ComputerSystem", sels=vm_selectors("NOPE"))
    )
    code, sub, detail = fault_parts(raw)
    assert (status, code, sub) == (500, "s:Sender", "a:DestinationUnreachable")
    assert detail.findtext(f"{{{NS_W}}}FaultDetail") == T.FD_INVALID_RESOURCE_URI
    outer = detail.find(f"{{{T.NS_F}}}WSManFault")
    assert outer is not None and outer.get("Code") == "2150858752"
    assert outer.get("Machine") == "127.0.0.1"
    pf = outer.find(f"{{{T.NS_F}}}Message/{{{T.NS_F}}}ProviderFault")
    assert pf is not None and pf.get("provider") == "WMI Provider"
    inner = pf.find(f"{{{T.NS_F}}}WSManFault")
    assert inner is not None and inner.get("Machine") == server.hosts[0]
    es = pf.find(f"{{{T.NS_F}}}ExtendedError/{{{T.NS_EXTENDED_STATUS}}}__ExtendedStatus")
    assert es is not None
    assert es.findtext(f"{{{T.NS_EXTENDED_STATUS}}}ParameterInfo") == (
        'Msvm_ComputerSystem.CreationClassName="Msvm_ComputerSystem",Name="NOPE"'
    )
    assert es.findtext(f"{{{T.NS_EXTENDED_STATUS}}}ProviderName") == T.HYPERV_PROVIDER
    head = ET.fromstring(raw).find(f"{{{S}}}Header")
    assert head is not None and head.findtext(f"{{{NS_A}}}Action") == T.A_ADDR_FAULT
    with pytest.raises(WSManFaultError) as exc:  # pypsrp reads it as WinRM's
        get(w, "Msvm_ComputerSystem", **vm_selectors("NOPE"))
    assert exc.value.code == 0x80338000 and exc.value.provider == "WMI Provider"
    # an unknown class: the WMI error (MSFT_WmiError, WBEM_E_INVALID_CLASS)
    _, raw, _ = exchange(server, envelope(T.A_GET, V2 + "Msvm_Nope", sels={"InstanceID": "1"}))
    code, sub, detail = fault_parts(raw)
    err = detail.find(f"{{{T.NS_WMIERR}}}MSFT_WmiError")
    assert sub == "a:DestinationUnreachable" and err is not None
    assert err.findtext(f"{{{T.NS_WMIERR}}}error_Code") == str(T.WBEM_E_INVALID_CLASS)
    # missing key selector: w:InvalidSelectors, FaultDetail InsufficientSelectors, WSManFault
    status, raw, _ = exchange(
        server, envelope(T.A_GET, V2 + "Msvm_ComputerSystem", sels={"Name": "x"})
    )
    code, sub, detail = fault_parts(raw)
    assert (code, sub) == ("s:Sender", "w:InvalidSelectors")
    assert detail.findtext(f"{{{NS_W}}}FaultDetail") == T.FD_INSUFFICIENT_SELECTORS
    wf = detail.find(f"{{{T.NS_F}}}WSManFault")
    assert wf is not None and wf.get("Code") == str(0x8033803D) and wf.get("Machine")
    # the same through pypsrp's own fault parser
    with pytest.raises(WSManFaultError) as exc:
        get(w, "Msvm_ComputerSystem", Name="x", Bogus="y")
    assert exc.value.code == 0x8033803D
    # unsupported action, missing MessageID, unknown class, bad resource URI
    _, raw, _ = exchange(
        server,
        envelope("http://schemas.xmlsoap.org/ws/2004/09/transfer/Put", V2 + "Msvm_ComputerSystem"),
    )
    assert fault_parts(raw)[1] == "a:ActionNotSupported"
    _, raw, _ = exchange(server, envelope(T.A_GET, V2 + "Msvm_ComputerSystem", message_id=None))
    assert fault_parts(raw)[1] == "a:MessageInformationHeaderRequired"
    _, raw, _ = exchange(server, envelope(T.A_GET, "http://example.invalid/x"))
    assert fault_parts(raw)[1] == "w:InvalidResourceURI"
    _, raw, _ = exchange(server, b"<not xml")
    assert fault_parts(raw)[1] == "w:SchemaValidationError"


def test_invoke_faults(server: hypervsim.SimServer, w: WSMan) -> None:
    guid = vms(w)["vm-01"]["Name"]
    body = f"<p:Nope_INPUT xmlns:p='{V2}Msvm_ComputerSystem'/>"
    _, raw, _ = exchange(
        server,
        envelope(
            V2 + "Msvm_ComputerSystem/Nope", V2 + "Msvm_ComputerSystem", body, vm_selectors(guid)
        ),
    )
    assert fault_parts(raw)[1] == "a:ActionNotSupported"
    body = (
        f"<p:RequestStateChange_INPUT xmlns:p='{V2}Msvm_ComputerSystem'>"
        f"<p:Bogus>1</p:Bogus></p:RequestStateChange_INPUT>"
    )
    _, raw, _ = exchange(
        server,
        envelope(
            V2 + "Msvm_ComputerSystem/RequestStateChange",
            V2 + "Msvm_ComputerSystem",
            body,
            vm_selectors(guid),
        ),
    )
    _code, sub, detail = fault_parts(raw)
    assert sub == "w:InvalidParameter"
    assert detail.find(f"{{{T.NS_WMIERR}}}MSFT_WmiError") is not None


def test_invoke_output_bytes(server: hypervsim.SimServer, w: WSMan) -> None:
    guid = vms(w)["vm-03"]["Name"]
    body = (
        f"<p:RequestStateChange_INPUT xmlns:p='{V2}Msvm_ComputerSystem'>"
        f"<p:RequestedState>2</p:RequestedState></p:RequestStateChange_INPUT>"
    )
    action = V2 + "Msvm_ComputerSystem/RequestStateChange"
    status, raw, _ = exchange(
        server, envelope(action, V2 + "Msvm_ComputerSystem", body, vm_selectors(guid))
    )
    assert status == 200
    root = ET.fromstring(raw)
    assert root.findtext(f"{{{S}}}Header/{{{NS_A}}}Action") == action + "Response"
    out = root.find(f"{{{S}}}Body/{{{V2}Msvm_ComputerSystem}}RequestStateChange_OUTPUT")
    assert out is not None
    assert out.findtext(f"{{{V2}Msvm_ComputerSystem}}ReturnValue") == "4096"
    job = out.find(f"{{{V2}Msvm_ComputerSystem}}Job")
    assert job is not None
    assert job.findtext(f"{{{NS_A}}}Address") == T.ANONYMOUS
    ref = job.find(f"{{{NS_A}}}ReferenceParameters")
    assert ref is not None
    assert ref.findtext(f"{{{NS_W}}}ResourceURI") == V2 + "Msvm_ConcreteJob"
    names = [s.get("Name") for s in ref.iter(f"{{{NS_W}}}Selector")]
    assert names == ["InstanceID", "__cimnamespace"]
    wait_job(w, {"ReturnValue": "4096", "Job": job})
    wait_job(
        w,
        invoke(
            w,
            "Msvm_ComputerSystem",
            "RequestStateChange",
            vm_selectors(guid),
            [("RequestedState", 3)],
        ),
    )


def test_pull_paging_release_and_contexts(server: hypervsim.SimServer, w: WSMan) -> None:
    uri = V2 + "Msvm_ComputerSystem"
    ctx = w.enumerate(uri, enum_body()).findtext(f".//{{{NS_N}}}EnumerationContext")
    assert ctx and ctx.startswith("uuid:")
    sizes = []
    while True:
        pr = w.pull(uri, pull_body(ctx, 2)).find(f"{{{NS_N}}}PullResponse")
        assert pr is not None
        sizes.append(len(pr.find(f"{{{NS_N}}}Items") or []))
        if pr.find(f"{{{NS_N}}}EndOfSequence") is not None:
            assert pr.find(f"{{{NS_N}}}EnumerationContext") is None
            break
        ctx = pr.findtext(f"{{{NS_N}}}EnumerationContext") or ""
    assert sizes == [2, 2, 2]  # the host and its 5 VMs
    with pytest.raises(WSManFaultError) as exc:
        w.pull(uri, pull_body(ctx, 2))  # finished: the context is gone
    assert exc.value.code == 0x8033801B
    ctx = w.enumerate(uri, enum_body()).findtext(f".//{{{NS_N}}}EnumerationContext") or ""
    rel = ET.Element(f"{{{NS_N}}}Release")
    ET.SubElement(rel, f"{{{NS_N}}}EnumerationContext").text = ctx
    w.invoke(T.A_RELEASE, uri, rel)
    with pytest.raises(WSManFaultError):
        w.pull(uri, pull_body(ctx))
    # no MaxElements: one item per Pull (DSP0226 8.4)
    ctx = w.enumerate(uri, enum_body()).findtext(f".//{{{NS_N}}}EnumerationContext") or ""
    pr = w.pull(uri, pull_body(ctx)).find(f"{{{NS_N}}}PullResponse")
    assert pr is not None and len(pr.find(f"{{{NS_N}}}Items") or []) == 1


def test_optimized_enumeration_and_epr_mode(w: WSMan) -> None:
    uri = V2 + "Msvm_ComputerSystem"
    body = w.enumerate(uri, enum_body(optimize=True, max_elements=100))
    er = body.find(f"{{{NS_N}}}EnumerateResponse")
    assert er is not None
    assert len(er.find(f"{{{NS_W}}}Items") or []) == 6
    assert er.find(f"{{{NS_W}}}EndOfSequence") is not None
    body = w.enumerate(uri, enum_body(optimize=True, max_elements=2))
    er = body.find(f"{{{NS_N}}}EnumerateResponse")
    assert er is not None and er.find(f"{{{NS_W}}}EndOfSequence") is None
    ctx = er.findtext(f"{{{NS_N}}}EnumerationContext") or ""
    rest = w.pull(uri, pull_body(ctx, 10)).find(f".//{{{NS_N}}}Items")
    assert rest is not None and len(rest) == 4
    eprs = enumerate_all(w, "Msvm_VirtualSystemManagementService", mode="EnumerateEPR")
    assert eprs[0].tag == f"{{{NS_A}}}EndpointReference"
    sels = {s.get("Name"): s.text for s in eprs[0].iter(f"{{{NS_W}}}Selector")}
    assert sels["Name"] == "vmms" and sels["__cimnamespace"] == "root/virtualization/v2"
    items = enumerate_all(w, "Msvm_VirtualEthernetSwitch", mode="EnumerateObjectAndEPR")
    assert items[0].tag == f"{{{NS_W}}}Item" and len(items[0]) == 2


def test_max_envelope_size(server: hypervsim.SimServer, w: WSMan) -> None:
    uri = V2 + "Msvm_ComputerSystem"
    _, raw, _ = exchange(server, envelope(T.A_GET, uri, sels=vm_selectors("x"), max_env=1000))
    _code, sub, detail = fault_parts(raw)
    assert sub == "w:EncodingLimit"
    assert detail.findtext(f"{{{NS_W}}}FaultDetail") == T.FD_MIN_ENVELOPE_LIMIT
    ctx = w.enumerate(uri, enum_body()).findtext(f".//{{{NS_N}}}EnumerationContext") or ""
    pull = ET.tostring(pull_body(ctx, 100), encoding="unicode")
    status, raw, _ = exchange(server, envelope(T.A_PULL, uri, pull, max_env=8192))
    assert status == 200 and len(raw) <= 8192
    items = ET.fromstring(raw).find(f".//{{{NS_N}}}Items")
    assert items is not None and 1 <= len(items) < 6  # fewer items, not a fault


def test_wql_filters(w: WSMan) -> None:
    all_vms = query(w, "SELECT * FROM Msvm_ComputerSystem WHERE Caption = 'Virtual Machine'")
    assert len(all_vms) == 5
    one = query(
        w,
        "select * from Msvm_ComputerSystem where ElementName = 'VM-05' "
        'and Caption = "Virtual Machine"',
    )
    assert [r["ElementName"] for r in one] == ["vm-05"]  # WQL strings compare case-blind
    either = query(
        w, "SELECT * FROM Msvm_ComputerSystem WHERE ElementName = 'vm-01' OR ElementName = 'vm-03'"
    )
    assert sorted(r["ElementName"] for r in either) == ["vm-01", "vm-03"]
    off = query(
        w,
        "SELECT * FROM Msvm_ComputerSystem WHERE EnabledState = 3 AND "
        "Caption <> 'Hosting Computer System'",
    )
    assert len(off) == 5
    proj = query(
        w, "SELECT Name, ElementName FROM Msvm_ComputerSystem WHERE Caption = 'Virtual Machine'"
    )
    assert set(proj[0]) == {"Name", "ElementName"}
    none = query(w, "SELECT * FROM Msvm_ComputerSystem WHERE ProcessID IS NOT NULL")
    assert none == []
    with pytest.raises(WSManFaultError):
        query(w, "SELECT * FROM")
    with pytest.raises(WSManFaultError):
        query(w, "SELECT * FROM Msvm_NoSuchClass")
    with pytest.raises(WSManFaultError):
        w.enumerate(V2 + "*", enum_body())  # * needs a filter


def test_association_filter_dialect(w: WSMan) -> None:
    guid = vms(w)["vm-01"]["Name"]
    e = enum_body()
    f = ET.SubElement(e, f"{{{NS_W}}}Filter", Dialect=T.ASSOC_DIALECT)
    ai = ET.SubElement(f, f"{{{T.NS_B}}}AssociatedInstances")
    obj = ET.SubElement(ai, f"{{{T.NS_B}}}Object")
    ET.SubElement(obj, f"{{{NS_A}}}Address").text = T.ANONYMOUS
    ref = ET.SubElement(obj, f"{{{NS_A}}}ReferenceParameters")
    ET.SubElement(ref, f"{{{NS_W}}}ResourceURI").text = V2 + "Msvm_ComputerSystem"
    ss = ET.SubElement(ref, f"{{{NS_W}}}SelectorSet")
    for k, v in vm_selectors(guid).items():
        ET.SubElement(ss, f"{{{NS_W}}}Selector", Name=k).text = v
    ET.SubElement(ai, f"{{{T.NS_B}}}AssociationClassName").text = "Msvm_SettingsDefineState"
    ET.SubElement(ai, f"{{{T.NS_B}}}ResultClassName").text = "Msvm_VirtualSystemSettingData"
    uri = V2 + "*"
    ctx = w.enumerate(uri, e).findtext(f".//{{{NS_N}}}EnumerationContext") or ""
    items = w.pull(uri, pull_body(ctx, 10)).find(f".//{{{NS_N}}}Items")
    assert items is not None and len(items) == 1
    assert to_dict(items[0])["VirtualSystemIdentifier"] == guid


def test_embedded_instance_forms(w: WSMan) -> None:
    """DefineSystem's SystemSettings as escaped CIM-XML (done elsewhere), as a CDATA section,
    and in the WS-Man element form."""
    svc = service(w, "Msvm_VirtualSystemManagementService")
    uri = V2 + "Msvm_VirtualSystemManagementService"
    vssd_uri = V2 + "Msvm_VirtualSystemSettingData"
    for name, inner in (
        (
            "cdata-vm",
            '<![CDATA[<INSTANCE CLASSNAME="Msvm_VirtualSystemSettingData">'
            '<PROPERTY NAME="ElementName" TYPE="string"><VALUE>cdata-vm</VALUE>'
            "</PROPERTY></INSTANCE>]]>",
        ),
        (
            "element-vm",
            f"<q:Msvm_VirtualSystemSettingData xmlns:q='{vssd_uri}'>"
            f"<q:ElementName>element-vm</q:ElementName>"
            f"</q:Msvm_VirtualSystemSettingData>",
        ),
    ):
        body = (
            f"<p:DefineSystem_INPUT xmlns:p='{uri}'><p:SystemSettings>{inner}"
            f"</p:SystemSettings></p:DefineSystem_INPUT>"
        )
        status, raw, _ = exchange_w(w, uri + "/DefineSystem", uri, body, svc)
        assert status == 200, raw
        assert b"<p:ReturnValue>4096</p:ReturnValue>" in raw
        assert name in vms(w)


def exchange_w(
    w: WSMan, action: str, uri: str, body: str, sels: dict[str, str]
) -> tuple[int, bytes, None]:
    port = int(w.transport.endpoint.split(":")[2].split("/")[0])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    token = base64.b64encode(f"{w.transport.username}:{PASSWORD}".encode()).decode()
    conn.request(
        "POST",
        "/wsman",
        body=envelope(action, uri, body, sels),
        headers={
            "Content-Type": "application/soap+xml;charset=UTF-8",
            "Authorization": f"Basic {token}",
        },
    )
    resp = conn.getresponse()
    return resp.status, resp.read(), None


def test_wql_as_libvirt_sends_it(w: WSMan) -> None:
    """libvirt's hyperv_wmi_classes.h fragments: double-quoted strings, lower-case keywords,
    != and parentheses."""
    base = 'SELECT * FROM Msvm_ComputerSystem where Description = "Microsoft Virtual Machine" '
    active = "and (EnabledState != 0 and EnabledState != 3 and EnabledState != 32769) "
    inactive = "and (EnabledState = 0 or EnabledState = 3 or EnabledState = 32769) "
    assert query(w, base + active) == []
    assert len(query(w, base + inactive)) == len(vms(w))  # every VM here is off
    guid = vms(w)["vm-05"]["Name"]
    one = query(w, base + f'and Name = "{guid}"')
    assert [r["ElementName"] for r in one] == ["vm-05"]
    host = query(
        w,
        'SELECT * FROM Msvm_ComputerSystem WHERE Description = "Microsoft Hosting Computer System"',
    )
    assert len(host) == 1 and host[0]["Caption"] == "Hosting Computer System"
    like = query(
        w,
        "SELECT * FROM Msvm_ComputerSystem WHERE ElementName LIKE 'vm-0_' AND NOT "
        "(ElementName = 'vm-01' OR ElementName = 'vm-03')",
    )
    assert sorted(r["ElementName"] for r in like) == ["vm-05", "vm-07", "vm-09"]
    big = query(
        w,
        "SELECT * FROM Msvm_MemorySettingData WHERE VirtualQuantity >= 512 AND "
        "VirtualQuantity < 513",
    )
    assert len(big) == len(vms(w))  # all have the default 512 MiB


def test_identify(server: hypervsim.SimServer) -> None:
    wsmid = "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd"
    data = (
        f"<s:Envelope xmlns:s='{S}' xmlns:wsmid='{wsmid}'><s:Header/><s:Body>"
        f"<wsmid:Identify/></s:Body></s:Envelope>"
    ).encode()
    status, raw, _ = exchange(server, data)
    assert status == 200
    resp = ET.fromstring(raw).find(f"{{{S}}}Body/{{{wsmid}}}IdentifyResponse")
    assert resp is not None
    assert resp.findtext(f"{{{wsmid}}}ProtocolVersion") == NS_W
    assert resp.findtext(f"{{{wsmid}}}ProductVendor") == "Microsoft Corporation"


def test_chunked_request_body(server: hypervsim.SimServer) -> None:
    data = envelope(
        T.A_ENUMERATE,
        V2 + "Msvm_VirtualEthernetSwitch",
        ET.tostring(enum_body(), encoding="unicode"),
    )
    conn = http.client.HTTPConnection("127.0.0.1", server.ports[0], timeout=10)
    token = base64.b64encode(f"{server.username}:{PASSWORD}".encode()).decode()
    conn.request(
        "POST",
        "/wsman",
        body=iter([data[:100], data[100:]]),
        encode_chunked=True,
        headers={
            "Content-Type": "application/soap+xml;charset=UTF-8",
            "Authorization": f"Basic {token}",
            "Transfer-Encoding": "chunked",
        },
    )
    resp = conn.getresponse()
    assert resp.status == 200 and b"EnumerateResponse" in resp.read()
