"""root/cimv2 CIM_DataFile (Win32/cim-datafile) as a WS-Man client of a real Windows host
lists a directory: WQL over ``.../wmi/root/cimv2/*`` by Drive and Path, sent with pypsrp's
independent WS-Man client (HTTP, Basic), Enumerate and Pull as DSP0226 has them."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest
from hypervsim_helpers import (
    NS_W,
    V2,
    enum_body,
    enumerate_all,
    make_vhd,
    selectors,
    to_dict,
)
from pypsrp.exceptions import WSManFaultError
from pypsrp.wsman import WSMan

import hypervsim
from hypervsim import tables as T

pytestmark = pytest.mark.hyperv

CIMV2 = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/"
DATAFILE = CIMV2 + "CIM_DataFile"
DIR = "C:\\Hyper-V\\DataFile Test"
#: The page's own escaping rule: "the backslash delimiters must be escaped with another
#: backslash" inside a WQL string.
DIR_WQL = "\\\\Hyper-V\\\\DataFile Test\\\\"


@pytest.fixture(scope="module")
def server() -> Iterator[hypervsim.SimServer]:
    with hypervsim.serve(hosts=2, vms=2, tls=False, password="pw-df", op_delay=0.02) as srv:
        yield srv


def cimv2_query(w: WSMan, wql: str, max_elements: int = 2) -> list[ET.Element]:
    """Enumerate root/cimv2 with a WQL filter, then Pull (small pages) to the end."""
    return enumerate_all(w, "*", wql, max_elements, namespace=CIMV2)


def delete(w: WSMan, name: str) -> str | None:
    resp = w.invoke(
        f"{DATAFILE}/Delete",
        DATAFILE,
        ET.Element(f"{{{DATAFILE}}}Delete_INPUT"),
        selector_set=selectors(Name=name),
    )
    return resp.findtext(f".//{{{DATAFILE}}}ReturnValue")


def listing(w: WSMan, where: str = f"Drive = 'C:' AND Path = '{DIR_WQL}'") -> list[dict[str, Any]]:
    wql = f"SELECT Name, FileName, Extension, FileSize, Drive, Path FROM CIM_DataFile WHERE {where}"
    return [to_dict(e) for e in cimv2_query(w, wql)]


def test_a_directory_lists_its_files(w: WSMan) -> None:
    dynamic, fixed = f"{DIR}\\Dyn-Disk.vhdx", f"{DIR}\\fixed.vhdx"
    make_vhd(w, dynamic)
    make_vhd(w, fixed, typ=2, size=32 << 20)
    wql = (
        "SELECT Name, FileName, Extension, FileSize, Drive, Path FROM CIM_DataFile "
        f"WHERE Drive = 'C:' AND Path = '{DIR_WQL}'"
    )
    elems = cimv2_query(w, wql)
    # each item is the class's element in its root/cimv2 resource URI namespace, projected
    assert {e.tag for e in elems} == {f"{{{DATAFILE}}}CIM_DataFile"}
    rows = {r["Name"]: r for r in (to_dict(e) for e in elems)}
    assert set(rows) == {dynamic.lower(), fixed.lower()}
    dyn = rows[dynamic.lower()]
    assert dyn == {
        "Drive": "c:",
        "Extension": "vhdx",
        "FileName": "dyn-disk",
        "FileSize": str(T.VHDX_EMPTY_FILE_BYTES),  # dynamic: no data written, 4 MiB
        "Name": "c:\\hyper-v\\datafile test\\dyn-disk.vhdx",
        "Path": "\\hyper-v\\datafile test\\",
    }
    assert rows[fixed.lower()]["FileSize"] == str(T.VHDX_EMPTY_FILE_BYTES + (32 << 20))
    # a file in a subdirectory or a sibling directory is not in Path's listing
    make_vhd(w, f"{DIR}\\sub\\deeper.vhdx")
    make_vhd(w, f"{DIR} 2\\other.vhdx")
    assert {r["Name"] for r in listing(w)} == set(rows)
    # Delete takes the file out of the listing
    assert delete(w, fixed) == "0"
    assert [r["Name"] for r in listing(w)] == [dynamic.lower()]
    for path in (dynamic, f"{DIR}\\sub\\deeper.vhdx", f"{DIR} 2\\other.vhdx"):
        assert delete(w, path) == "0"
    assert listing(w) == []


def test_wql_forms_a_client_may_send(w: WSMan) -> None:
    path = f"{DIR}\\forms.vhdx"
    make_vhd(w, path)
    try:
        # double quotes (the page's VBS sample), lower-case property names, LIKE, OR
        for where in (
            f'Drive = "c:" AND Path = "{DIR_WQL}"',
            f"drive = 'C:' and path = '{DIR_WQL}' and extension = 'VHDX'",
            "Name LIKE '%\\\\datafile test\\\\forms.%'",
            f"Path = '{DIR_WQL}' AND (Extension = 'vhd' OR Extension = 'vhdx')",
        ):
            assert [r["Name"] for r in listing(w, where)] == [path.lower()], where
        assert listing(w, f"Path = '{DIR_WQL}' AND Extension = 'avhdx'") == []
        # SELECT * gives the whole class; the instance is also a Get by its key, Name
        name_wql = path.lower().replace("\\", "\\\\")
        rows = cimv2_query(w, f"SELECT * FROM CIM_DataFile WHERE Name = '{name_wql}'")
        (full,) = [to_dict(e) for e in rows]
        assert set(full) == set(T.CLASSES["CIM_DataFile"].props)
        assert full["CSName"] == "HVHOST1" and full["FSName"] == "NTFS"
        assert full["CreationDate"] and full["Hidden"] == "false"
        got = to_dict(w.get(DATAFILE, selector_set=selectors(Name=path))[0])
        assert got["Name"] == path.lower() and got["Extension"] == "vhdx"
    finally:
        delete(w, path)


def test_epr_mode_names_the_cimv2_namespace(w: WSMan) -> None:
    path = f"{DIR}\\epr.vhdx"
    make_vhd(w, path)
    try:
        body = w.enumerate(
            CIMV2 + "*",
            enum_body(
                f"SELECT * FROM CIM_DataFile WHERE Path = '{DIR_WQL}'",
                optimize=True,
                max_elements=10,
                mode="EnumerateEPR",
            ),
        )
        sels = {s.get("Name"): s.text for s in body.iter(f"{{{NS_W}}}Selector")}
        assert sels == {"Name": path.lower(), "__cimnamespace": "root/cimv2"}
        assert body.findtext(f".//{{{NS_W}}}ResourceURI") == DATAFILE
    finally:
        delete(w, path)


def test_a_class_outside_its_namespace_is_invalid(w: WSMan) -> None:
    """WMI answers an unknown class with the provider's invalid-class error: CIM_DataFile is
    not in root/virtualization/v2, Msvm_ComputerSystem not in root/cimv2."""
    for uri, wql in (
        (V2 + "*", "SELECT * FROM CIM_DataFile WHERE Drive = 'c:'"),
        (CIMV2 + "*", "SELECT * FROM Msvm_ComputerSystem"),
    ):
        with pytest.raises(WSManFaultError) as err:
            w.enumerate(uri, enum_body(wql))
        assert "Invalid class" in str(err.value), err.value
    with pytest.raises(WSManFaultError):
        w.get(V2 + "CIM_DataFile", selector_set=selectors(Name="c:\\x.vhdx"))
