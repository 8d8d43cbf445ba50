"""No frame of vmctl or the kvm driver in a failed login's traceback holds the password.

Two failures: at the transport level (nothing listens: a real libvirt error) and at the
authentication level (libvirt's openAuth asks the credential callback for the passphrase,
then the host refuses it; simulated, as no SASL-protected libvirtd runs here).
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

import pytest

import vmctl

PASSWORD = "kvm-s3cret-Pa55"


def _tracebacks(exc: BaseException) -> Iterator[types.TracebackType]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if e.__traceback__ is not None:
            yield e.__traceback__
        todo += [e.__cause__, e.__context__]


def _holds(value: Any, depth: int = 0) -> bool:
    if isinstance(value, vmctl.Secret) or depth > 4:
        return False  # a Secret holds it by design; its repr and str do not show it
    if isinstance(value, str):
        return PASSWORD in value
    if isinstance(value, bytes | bytearray):
        return PASSWORD.encode() in value
    if isinstance(value, dict):
        return any(_holds(k, depth + 1) or _holds(v, depth + 1) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return any(_holds(v, depth + 1) for v in value)
    if isinstance(value, types.FunctionType | types.ModuleType | type):
        return False
    attrs = getattr(value, "__dict__", None)
    return isinstance(attrs, dict) and _holds(attrs, depth + 1)


def _leaks(exc: BaseException) -> list[str]:
    found = []
    frames = 0
    for tb in _tracebacks(exc):
        t: types.TracebackType | None = tb
        while t is not None:
            module = str(t.tb_frame.f_globals.get("__name__", ""))
            if module.startswith("vmctl"):  # vmctl and vmctl_kvm
                frames += 1
                for name, value in t.tb_frame.f_locals.items():
                    if _holds(value):
                        found.append(f"{module}:{t.tb_frame.f_code.co_name}:{name}")
            t = t.tb_next
    assert frames, "no vmctl frame in the traceback: the check would prove nothing"
    return found


def test_transport_failure_frames_hold_no_password() -> None:
    pytest.importorskip("libvirt")
    with pytest.raises(vmctl.ConnectionError) as err:
        vmctl.connect(
            "qemu+tcp://admin@127.0.0.1:9/system",
            password=PASSWORD,
            timeouts=vmctl.Timeouts(connect=10),
        )
    assert PASSWORD not in f"{err.value} {err.value!r} {err.value.__cause__}"
    assert _leaks(err.value) == []


def test_auth_failure_frames_hold_no_password(monkeypatch: pytest.MonkeyPatch) -> None:
    libvirt = pytest.importorskip("libvirt")
    from vmctl_kvm import _link

    class AuthFailed(libvirt.libvirtError):  # type: ignore[misc,name-defined]
        def get_error_code(self) -> int:
            return int(libvirt.VIR_ERR_AUTH_FAILED)

        def get_error_message(self) -> str:
            return "authentication failed: SASL(-13): user not found: Password verification failed"

    asked: list[bool] = []

    def open_auth(uri: str, auth: list[Any], flags: int) -> Any:
        # What libvirt's C code does: fill a credential list through the callback, send the
        # answers, drop the list; the host refuses them.
        creds = [
            [libvirt.VIR_CRED_AUTHNAME, "user", "root", None, None],
            [libvirt.VIR_CRED_PASSPHRASE, "password", None, None, None],
        ]
        assert auth[1](creds, auth[2]) == 0
        asked.append(creds[1][4] == PASSWORD)
        del creds
        raise AuthFailed("authentication failed")

    monkeypatch.setattr(_link.libvirt, "openAuth", open_auth)
    with pytest.raises(vmctl.AuthenticationError) as err:
        vmctl.connect(
            "qemu+tcp://admin@127.0.0.1:9/system",
            password=PASSWORD,
            timeouts=vmctl.Timeouts(connect=10),
        )
    assert asked == [True]  # the callback did hand the password to "libvirt"
    assert PASSWORD not in f"{err.value} {err.value!r} {err.value.__cause__}"
    assert _leaks(err.value) == []
