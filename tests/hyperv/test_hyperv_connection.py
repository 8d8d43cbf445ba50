"""Connecting: TLS trust (CA file, SHA-256 pin, refusals), HTTP with message encryption,
credentials, bad input, and no password anywhere it could leak."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest
from hyperv_helpers import connect, uri

import vmctl
from vmctl import Capability


def test_https_with_cafile_and_host_info(sim: Any) -> None:
    with connect(sim) as hv:
        assert hv.driver_name == "hyperv"
        info = hv.host_info()
        assert info.name == sim.hosts[0] and info.hypervisor == "Hyper-V"
        assert info.cpus == 16 and info.cpu_mhz == 2400 and info.memory_mib == 64 * 1024
        assert Capability.MIGRATE_LIVE in hv.capabilities
        assert Capability.STATS not in hv.capabilities
        assert Capability.CLONE not in hv.capabilities


def test_thumbprint_pinning(sim: Any) -> None:
    with connect(sim, cafile=None, thumbprint=sim.thumbprint) as hv:
        assert hv.list_vms() is not None
    bare = sim.thumbprint.replace(":", "").lower()
    with connect(sim, cafile=None, thumbprint=bare) as hv:
        assert hv.host_info().cpus > 0


def test_wrong_thumbprint_refused_before_credentials(sim: Any) -> None:
    with pytest.raises(vmctl.ConnectionError) as err:
        connect(sim, cafile=None, thumbprint="AB:" * 31 + "AB")
    assert "thumbprint" in str(err.value)
    assert err.value.sent is False


def test_sha1_thumbprint_is_a_validation_error(sim: Any) -> None:
    with pytest.raises(vmctl.ValidationError):
        connect(sim, cafile=None, thumbprint="AB:" * 19 + "AB")


def test_unknown_ca_refused(sim: Any) -> None:
    with pytest.raises(vmctl.ConnectionError) as err:
        connect(sim, cafile=None)  # the system CAs do not know the simulator's certificate
    assert "not trusted" in str(err.value)


def test_missing_cafile_is_a_validation_error(sim: Any, tmp_path: Any) -> None:
    with pytest.raises(vmctl.ValidationError):
        connect(sim, cafile=str(tmp_path / "nope.pem"))


def test_insecure_warns(sim: Any) -> None:
    with (
        pytest.warns(UserWarning, match="(?i)verification is off"),
        connect(sim, cafile=None, insecure=True) as hv,
    ):
        assert hv.host_info().cpus > 0


@pytest.mark.parametrize("auth", ["negotiate", "ntlm"])
def test_http_with_message_encryption(sim: Any, auth: str) -> None:
    port = int(sim.http_urls[0].rsplit(":", 1)[1].split("/")[0])
    with vmctl.connect(
        f"hyperv+http://{sim.username}@127.0.0.1:{port}?auth={auth}",
        password=sim.password,
        env={},
    ) as hv:
        assert {i.name for i in hv.list_vms()} >= {"vm-01", "vm-03"}


def test_basic_over_https_and_refused_over_http(sim: Any) -> None:
    with connect(sim, "?auth=basic") as hv:
        assert hv.host_info().name == sim.hosts[0]
    port = int(sim.http_urls[0].rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(vmctl.ValidationError, match="clear"):
        vmctl.connect(
            f"hyperv+http://{sim.username}@127.0.0.1:{port}?auth=basic",
            password=sim.password,
            env={},
        )


def test_plain_http_to_the_tls_port_fails(sim: Any) -> None:
    with pytest.raises(vmctl.ConnectionError):
        vmctl.connect(
            f"hyperv+http://{sim.username}@127.0.0.1:{sim.ports[0]}",
            password=sim.password,
            env={},
            timeouts=vmctl.Timeouts(10),
        )


def test_wrong_password(sim: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "not-the-password-" + sim.password[::-1]
    with pytest.raises(vmctl.AuthenticationError) as err:
        connect(sim, password=secret)
    assert err.value.__cause__ is not None
    assert type(err.value.__cause__).__module__.startswith("pypsrp")
    assert secret not in str(err.value) and secret not in repr(err.value)
    assert secret not in caplog.text


def test_no_password_is_an_authentication_error(sim: Any) -> None:
    with pytest.raises(vmctl.AuthenticationError):
        vmctl.connect(uri(sim), cafile=sim.cafile, env={})


def test_no_password_in_logs_reprs_or_errors(sim: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with connect(sim) as hv:
        hv.list_vms()
        with pytest.raises(vmctl.NotFound) as err:
            hv.vm("no-such-vm")
        texts = [repr(hv), str(hv.uri), repr(hv._driver), repr(hv._driver.client), str(err.value)]
    assert all(sim.password not in t for t in texts)
    assert sim.password not in caplog.text


def test_bad_uris_and_options(sim: Any) -> None:
    with pytest.raises(vmctl.ValidationError):
        connect(sim, "?colour=blue")
    with pytest.raises(vmctl.ValidationError):
        connect(sim, "?auth=kerberos")
    with pytest.raises(vmctl.ValidationError):
        connect(sim, "?rpc_timeout=-1")
    with pytest.raises(vmctl.ValidationError):
        vmctl.connect("hyperv+ssh://a@127.0.0.1", password="x", env={})
    with pytest.raises(vmctl.ValidationError):
        vmctl.connect("hyperv://a@127.0.0.1/some/path", password="x", env={})


@pytest.mark.filterwarnings("ignore:TLS certificate verification")
def test_refused_connection_was_not_sent() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the connect: nobody listens
    with pytest.raises(vmctl.ConnectionError) as err:
        vmctl.connect(
            f"hyperv://a@127.0.0.1:{port}", password="x", insecure=True, env={},
            timeouts=vmctl.Timeouts(5),
        )  # fmt: skip
    assert err.value.sent is False


def test_unknown_vm_is_not_found(hv: vmctl.Hypervisor) -> None:
    with pytest.raises(vmctl.NotFound):
        hv.vm("00000000-0000-0000-0000-000000000000").info()
    with pytest.raises(vmctl.NotFound):
        hv.vm("not-a-guid-nor-a-name").info()
