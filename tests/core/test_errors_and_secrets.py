from __future__ import annotations

import logging
import pickle

import pytest

import vmctl
from vmctl import Secret
from vmctl._config import ConnectParams, resolve_password


def test_tree() -> None:
    for cls in (
        vmctl.ValidationError,
        vmctl.NotFound,
        vmctl.AlreadyExists,
        vmctl.Conflict,
        vmctl.InvalidState,
        vmctl.NotSupported,
        vmctl.AuthenticationError,
        vmctl.ConnectionError,
        vmctl.OperationTimeout,
        vmctl.BackendError,
        vmctl.DriverError,
        vmctl.InsufficientResources,
    ):
        assert issubclass(cls, vmctl.VmctlError)
    assert issubclass(vmctl.ValidationError, ValueError)
    assert issubclass(vmctl.NotFound, LookupError)
    assert issubclass(vmctl.OperationTimeout, TimeoutError)
    assert issubclass(vmctl.ConnectionError, ConnectionError)


def test_secret_never_shows() -> None:
    s = Secret("hunter2-very-secret")
    for text in (str(s), repr(s), f"{s}", repr([s]), repr({"p": s})):
        assert "hunter2" not in text
    assert s.reveal() == "hunter2-very-secret"
    with pytest.raises(TypeError):
        pickle.dumps(s)


def test_password_sources() -> None:
    assert resolve_password("a", {}) == Secret("a")
    assert resolve_password(lambda: "b", {}) == Secret("b")
    assert resolve_password(None, {"VMCTL_PASSWORD": "c"}) == Secret("c")
    assert resolve_password(None, {}) is None
    with pytest.raises(vmctl.ValidationError):
        resolve_password(lambda: 42, {})  # type: ignore[arg-type, return-value]


def test_connect_params_repr_hides_password() -> None:
    params = ConnectParams(uri=vmctl.URI.parse("esx://root@h"), password=Secret("pw-123"))
    assert "pw-123" not in repr(params)
    assert "password=set" in repr(params)


def test_no_password_in_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with vmctl.connect("sim://logs", password="pw-in-logs-42") as hv:
        vm = hv.create_vm(vmctl.VMSpec(name="x"))
        vm.start()
        with pytest.raises(vmctl.InvalidState) as err:
            vm.start()
        assert "pw-in-logs-42" not in repr(hv) + str(err.value)
    assert caplog.records
    assert "pw-in-logs-42" not in caplog.text


def test_insecure_mode_warns() -> None:
    with (
        pytest.warns(UserWarning, match="verification is OFF"),
        vmctl.connect("sim://insecure", insecure=True),
    ):
        pass


@pytest.mark.parametrize("name", ["", "a@b", "a/b", "tab\tx"])
def test_bad_usernames(name: str) -> None:
    with pytest.raises(vmctl.ValidationError, match="username"):
        vmctl.connect("sim://u", username=name)
