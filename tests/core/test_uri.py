from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import vmctl
from vmctl import URI

GOOD = [
    ("sim://", URI(scheme="sim")),
    ("qemu:///system", URI(scheme="qemu", path="/system")),
    (
        "qemu+ssh://admin@kvm1.example.com/system",
        URI(scheme="qemu", transport="ssh", user="admin", host="kvm1.example.com", path="/system"),
    ),
    ("esx://root@127.0.0.1:8443", URI(scheme="esx", user="root", host="127.0.0.1", port=8443)),
    (
        "vcenter://vc.example.com/DC0/C0",
        URI(scheme="vcenter", host="vc.example.com", path="/DC0/C0"),
    ),
    (
        "xen://[::1]:443/?host=xs2",
        URI(scheme="xen", host="::1", port=443, path="/", params={"host": "xs2"}),
    ),
]


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_parse(text: str, expected: URI) -> None:
    assert URI.parse(text) == expected
    assert URI.parse(str(URI.parse(text))) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " sim://",
        "sim",
        "no scheme",
        "1abc://x",
        "qemu+://x",
        "esx://h:99999",
        "esx://h:0",
        "esx://bad host",
        "esx://h#frag",
        "esx://h/?a=1&a=2",
        "esx://h\n",
    ],
)
def test_bad_uris_are_validation_errors(text: str) -> None:
    with pytest.raises(vmctl.ValidationError):
        URI.parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "esx://root:S3cr3t-pw@host",
        "xen://host/?password=S3cr3t-pw",
        "esx://h/?token=S3cr3t-pw",
    ],
)
def test_secrets_in_uri_refused_without_echo(text: str) -> None:
    with pytest.raises(vmctl.ValidationError) as err:
        URI.parse(text)
    assert "S3cr3t-pw" not in str(err.value)
    assert "password" in str(err.value) or "secret" in str(err.value)


@given(st.text(max_size=60))
def test_any_text_parses_or_is_a_validation_error(text: str) -> None:
    try:
        uri = URI.parse(text)
    except vmctl.ValidationError as exc:
        assert str(exc)
    else:
        assert URI.parse(str(uri)) == uri


hosts = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9]{0,6}){0,2}", fullmatch=True).filter(
    lambda h: not h.endswith("-")
)


@given(
    scheme=st.sampled_from(["sim", "qemu", "esx", "xen", "vcenter"]),
    user=st.none() | st.from_regex(r"[a-z][a-z0-9._]{0,8}", fullmatch=True),
    host=hosts,
    port=st.none() | st.integers(1, 65535),
    path=st.sampled_from(["", "/system", "/DC0/C0"]),
)
def test_round_trip(scheme: str, user: str | None, host: str, port: int | None, path: str) -> None:
    uri = URI(scheme=scheme, user=user, host=host, port=port, path=path)
    assert URI.parse(str(uri)) == uri
