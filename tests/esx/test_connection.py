"""Connecting: URIs and scopes, TLS trust (CA file, SHA-256 pin, insecure), credentials,
sessions (renewed when expired, logged out on close), secrets kept out of logs and errors."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from pyVmomi import vim

import vmctl
from tests.hosts.esx import VcsimServer, make_cert, running_simulator
from vmctl.spi import Deadline

from .conftest import Admin, vc_uri


def connect(srv: VcsimServer, uri: str | None = None, **kw: object) -> vmctl.Hypervisor:
    kw.setdefault("password", srv.password)
    if "thumbprint" not in kw and "insecure" not in kw:
        kw.setdefault("cafile", str(srv.cafile))
    return vmctl.connect(uri or srv.uri, **kw)  # type: ignore[arg-type]


# -- scopes ---------------------------------------------------------------------------------


def test_esx_host_info(esx_sim: VcsimServer, esx_admin: Admin) -> None:
    with connect(esx_sim) as hv:
        info = hv.host_info()
        assert hv.driver_name == "esx"
        assert info.hypervisor == "ESXi"
        assert info.name == "localhost.localdomain"
        assert info.cpus > 0 and info.memory_mib > 0 and info.cpu_mhz > 0
        assert info.vm_count == len(hv.list_vms()) >= 2


def test_vcenter_cluster_and_host_scopes(vc_sim: VcsimServer, vc_admin: Admin) -> None:
    with (
        connect(vc_sim, vc_uri(vc_sim, "DC0/DC0_C0")) as cluster,
        connect(vc_sim, vc_uri(vc_sim, "DC0/DC0_C0/DC0_C0_H1")) as host,
        connect(vc_sim, vc_uri(vc_sim, "DC0/DC0_H0")) as standalone,
    ):
        assert cluster.host_info().hypervisor == "vCenter"
        assert cluster.host_info().name == "DC0_C0"
        assert host.host_info().name == "DC0_C0_H1"
        assert standalone.host_info().name == "DC0_H0"
        in_cluster = {i.name for i in cluster.list_vms()}
        assert in_cluster and all(n.startswith("DC0_C0_") for n in in_cluster)
        assert {i.name for i in standalone.list_vms()} == {"DC0_H0_VM0", "DC0_H0_VM1"}
        on_host = host.list_vms()
        assert all(i.host == "DC0_C0_H1" for i in on_host)
        assert {i.uuid for i in on_host} <= {i.uuid for i in cluster.list_vms()}
        assert cluster.host_info().cpus > host.host_info().cpus


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("", vmctl.ValidationError),
        ("DC0", vmctl.ValidationError),
        ("NODC/DC0_C0", vmctl.NotFound),
        ("DC0/NOCLUSTER", vmctl.NotFound),
    ],
)
def test_vcenter_uri_errors(
    vc_sim: VcsimServer, vc_admin: Admin, path: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        connect(vc_sim, vc_uri(vc_sim, path))
    assert not vc_admin.other_sessions()


def test_esx_uri_errors(
    esx_sim: VcsimServer, vc_sim: VcsimServer, esx_admin: Admin, vc_admin: Admin
) -> None:
    with pytest.raises(vmctl.ValidationError, match="no path"):
        connect(esx_sim, esx_sim.uri + "/ha-datacenter")
    with pytest.raises(vmctl.ValidationError, match="is a vCenter"):
        connect(vc_sim, f"esx://{vc_sim.username}@{vc_sim.host}:{vc_sim.port}")
    with pytest.raises(vmctl.ValidationError, match="not a vCenter"):
        connect(esx_sim, vc_uri(esx_sim, "ha-datacenter/x"))
    with pytest.raises(vmctl.ValidationError, match="unknown esx option"):
        connect(esx_sim, esx_sim.uri + "?bogus=1")
    assert not vc_admin.other_sessions() and not esx_admin.other_sessions()


def test_datastore_option(esx_sim: VcsimServer, esx_admin: Admin) -> None:
    with connect(esx_sim, esx_sim.uri + "?datastore=LocalDS_0") as hv:
        vm = hv.create_vm(vmctl.VMSpec(name="ds-opt", disks=[vmctl.DiskSpec(size_mib=8)]))
        try:
            assert vm.config().disks[0].path.startswith("[LocalDS_0] ")  # type: ignore[union-attr]
        finally:
            vm.delete()
    with pytest.raises(vmctl.NotFound, match="no datastore 'nope'"):
        connect(esx_sim, esx_sim.uri + "?datastore=nope")
    assert not esx_admin.other_sessions()


# -- TLS trust ------------------------------------------------------------------------------


def test_thumbprint_pin_accepted(esx_sim: VcsimServer, esx_admin: Admin) -> None:
    with connect(esx_sim, thumbprint=esx_sim.thumbprint) as hv:
        assert hv.list_vms()
    plain = esx_sim.thumbprint.replace(":", "").lower()
    with connect(esx_sim, thumbprint=plain) as hv:
        assert hv.list_vms()


def test_wrong_thumbprint_refused(esx_sim: VcsimServer, esx_admin: Admin) -> None:
    wrong = ":".join(["AB"] * 32)
    with pytest.raises(vmctl.ConnectionError, match="thumbprint") as err:
        connect(esx_sim, thumbprint=wrong)
    assert err.value.vendor_code == "SSLError"
    # Pinned and CA-verified: both must hold.
    with pytest.raises(vmctl.ConnectionError, match="thumbprint"):
        connect(esx_sim, thumbprint=wrong, cafile=str(esx_sim.cafile))
    assert not esx_admin.other_sessions()


def test_sha1_thumbprint_refused_as_weak(esx_sim: VcsimServer) -> None:
    with pytest.raises(vmctl.ValidationError, match="SHA-256"):
        connect(esx_sim, thumbprint=esx_sim.thumbprint_sha1)


def test_unknown_ca_refused(esx_sim: VcsimServer, esx_admin: Admin, tmp_path: Path) -> None:
    other = make_cert(tmp_path / "other-ca")
    with pytest.raises(vmctl.ConnectionError, match="not trusted"):
        connect(esx_sim, cafile=str(other.cert))
    # No trust given at all: the system CA store does not know the simulator either.
    with pytest.raises(vmctl.ConnectionError, match="not trusted"):
        vmctl.connect(esx_sim.uri, password=esx_sim.password)
    assert not esx_admin.other_sessions()


def test_insecure_warns(esx_sim: VcsimServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="vmctl")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with connect(esx_sim, insecure=True) as hv:
            assert hv.list_vms()
    # The core warns once for every driver; the driver adds no second warning.
    assert [str(w.message) for w in seen if "verification is" in str(w.message)] == [
        f"TLS certificate verification is OFF for {hv.uri}: anyone on the path can "
        "impersonate the host. Trust it with cafile= or thumbprint= instead."
    ]
    assert any("verification is OFF" in r.getMessage() for r in caplog.records)


def test_trust_from_environment(esx_sim: VcsimServer) -> None:
    env = {"VMCTL_PASSWORD": esx_sim.password, "VMCTL_THUMBPRINT": esx_sim.thumbprint}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with vmctl.connect(esx_sim.uri, env=env) as hv:
            assert hv.list_vms()


# -- credentials and secrets ----------------------------------------------------------------


def test_wrong_password(
    esx_sim: VcsimServer, esx_admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "wrong-Pa55word-xyzzy"
    with pytest.raises(vmctl.AuthenticationError) as err:
        connect(esx_sim, password=secret)
    assert err.value.vendor_code == "InvalidLogin"
    assert isinstance(err.value.__cause__, vim.fault.InvalidLogin)
    assert secret not in str(err.value) and secret not in repr(err.value)
    assert secret not in caplog.text
    with pytest.raises(vmctl.AuthenticationError, match="password"):
        vmctl.connect(esx_sim.uri, cafile=str(esx_sim.cafile), env={})
    assert not esx_admin.other_sessions()


def test_no_password_in_logs_or_errors(
    vc_sim: VcsimServer, vc_admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    messages = []
    with connect(vc_sim, vc_uri(vc_sim, "DC0/DC0_C0")) as hv:
        vm = hv.create_vm(vmctl.VMSpec(name="secret-check"))
        try:
            vm.start()
            for bad in (
                lambda: vm.start(),
                lambda: vm.delete(),
                lambda: hv._driver.get_vm(
                    "00000000-0000-0000-0000-000000000000", deadline=Deadline.after(10)
                ),
            ):
                try:
                    bad()
                except vmctl.VmctlError as exc:
                    messages.append(f"{exc} {exc!r}")
            messages += [repr(hv), str(hv.uri), repr(hv._driver)]
        finally:
            vm.delete(force=True)
    assert len(messages) >= 3
    for text in [*messages, caplog.text]:
        assert vc_sim.password not in text


def test_sdk_missing_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['pyVmomi'] = None\n"
        "import vmctl, vmctl_esx\n"
        "try:\n"
        "    vmctl.connect('esx://root@127.0.0.1:1', password='x')\n"
        "except vmctl.DriverError as e:\n"
        "    print('DRIVERERROR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "DRIVERERROR" in out.stdout, out.stderr
    assert "pip install 'vmctl[esx]'" in out.stdout


def test_unreachable_host(esx_sim: VcsimServer) -> None:
    with pytest.raises(vmctl.ConnectionError):
        vmctl.connect(
            "esx://root@127.0.0.1:9",
            password="x",
            cafile=str(esx_sim.cafile),
            timeouts=vmctl.Timeouts(10),
        )


# -- sessions -------------------------------------------------------------------------------


def test_close_logs_out(esx_sim: VcsimServer, esx_admin: Admin) -> None:
    before = set(esx_admin.other_sessions())
    hv = connect(esx_sim)
    hv.list_vms()
    assert len(set(esx_admin.other_sessions()) - before) == 1
    hv.close()
    hv.close()
    assert set(esx_admin.other_sessions()) == before
    with pytest.raises(vmctl.VmctlError):
        hv.list_vms()


def test_expired_session_renewed_transparently(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vmctl")
    with running_simulator("esx", vms=2, idle_timeout=1.0) as srv:
        with connect(srv) as hv:
            first = hv.list_vms()
            vm = hv.create_vm(vmctl.VMSpec(name="renew"))
            # Idle longer than 2x the timeout: the simulator drops the session.
            time.sleep(2.6)
            assert {i.uuid for i in hv.list_vms()} == {i.uuid for i in first} | {vm.uuid}
            # The driver said the session had expired (not sent); the core reconnected.
            assert any(
                "session has expired" in r.getMessage() and "reconnecting" in r.getMessage()
                for r in caplog.records
            )
            time.sleep(2.6)
            vm.start()  # a task and a WaitForUpdatesEx wait after another expiry
            assert vm.info().state is vmctl.PowerState.RUNNING
            time.sleep(2.6)
            with hv.watch(timeout=3) as events:
                vm.power_off()
                kinds = {(e.kind, e.state) for e in events if e.vm_uuid == vm.uuid}
            assert (vmctl.EventKind.STATE_CHANGED, vmctl.PowerState.STOPPED) in kinds
            vm.delete()
        # Expired sessions are gone, the live one was logged out: none is left.
        admin = Admin(srv)
        try:
            assert admin.other_sessions() == []
        finally:
            admin.close()
