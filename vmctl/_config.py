"""Connection parameters: credentials, trust and timeouts, resolved once by the core."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from types import MappingProxyType

from attrs import field, frozen

from ._errors import ValidationError
from ._uri import URI


class Secret:
    """A password that never shows itself in str(), repr(), logs or tracebacks' locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise ValidationError("a password must be a string", field="password")
        self._value = value

    def reveal(self) -> str:
        """The password itself, for handing to the vendor SDK and nothing else."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled")


PasswordSource = str | Secret | Callable[[], str] | None


def resolve_password(password: PasswordSource, env: Mapping[str, str]) -> Secret | None:
    """A password from the option, a callback, or VMCTL_PASSWORD, in that order."""
    if isinstance(password, Secret):
        return password
    if isinstance(password, str):
        return Secret(password)
    if callable(password):
        value = password()
        if not isinstance(value, str):
            raise ValidationError("the password callback must return a string", field="password")
        return Secret(value)
    if password is not None:
        raise ValidationError(
            "password must be a string or a callable returning one", field="password"
        )
    from_env = env.get("VMCTL_PASSWORD")
    return Secret(from_env) if from_env is not None else None


def _timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(
            f"a timeout must be a number of seconds or None, got {value!r}", field="timeout"
        )
    if not math.isfinite(value) or value <= 0:
        raise ValidationError(
            f"a timeout must be positive and finite, got {value}", field="timeout"
        )
    return float(value)


@frozen
class Timeouts:
    """How long vmctl waits, in seconds; ``None`` waits forever.

    One default with overrides per phase, as httpx's ``Timeout`` does:

    >>> Timeouts(300)                      # everything 300 s
    >>> Timeouts(300, connect=10)          # but give up connecting after 10 s
    >>> Timeouts(shutdown=600)             # slow guests get longer to shut down

    ``operation`` bounds one request (start, snapshot, migrate...) until its state is reached,
    ``shutdown`` the graceful shutdown of a guest, ``connect`` opening a connection, ``read``
    one read (info, config, listing, stats). Every call ends within its timeout: the driver
    bounds each vendor call it makes by what is left of it.
    """

    default: float | None = field(default=300.0, converter=_timeout)
    connect: float | None = field(default=None, converter=_timeout)
    operation: float | None = field(default=None, converter=_timeout)
    shutdown: float | None = field(default=None, converter=_timeout)
    read: float | None = field(default=None, converter=_timeout)

    @property
    def connect_s(self) -> float | None:
        return self.connect if self.connect is not None else self.default

    @property
    def operation_s(self) -> float | None:
        return self.operation if self.operation is not None else self.default

    @property
    def read_s(self) -> float | None:
        return self.read if self.read is not None else self.default

    @property
    def shutdown_s(self) -> float | None:
        return self.shutdown if self.shutdown is not None else self.operation_s


def _options(value: object) -> Mapping[str, str]:
    return MappingProxyType({str(k): str(v) for k, v in dict(value).items()})  # type: ignore


@frozen(repr=False)
class ConnectParams:
    """What a driver's ``open()`` gets: the URI, credentials, trust and timeouts, resolved.

    ``options`` holds the driver-specific options (URI query parameters merged with keyword
    options given to ``connect()``), all as strings.
    """

    uri: URI
    username: str | None = None
    password: Secret | None = None
    cafile: str | None = None
    thumbprint: str | None = None
    insecure: bool = False
    timeouts: Timeouts = Timeouts()
    options: Mapping[str, str] = field(factory=dict, converter=_options)

    def __repr__(self) -> str:
        return (
            f"ConnectParams(uri={self.uri!s}, username={self.username!r}, "
            f"password={'set' if self.password else 'unset'}, cafile={self.cafile!r}, "
            f"thumbprint={self.thumbprint!r}, insecure={self.insecure})"
        )


def env_flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def default_env() -> Mapping[str, str]:
    return os.environ
