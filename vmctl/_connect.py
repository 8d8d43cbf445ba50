"""``vmctl.connect()``: from a URI and options to a ``Hypervisor``."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping

from . import _registry
from ._config import ConnectParams, PasswordSource, Timeouts, env_flag, resolve_password
from ._deadline import Deadline
from ._dispatch import DEFAULT_MAX_CONCURRENCY
from ._errors import BackendError, ValidationError, VmctlError
from ._hypervisor import Hypervisor
from ._uri import URI, looks_secret
from ._validate import check_int

log = logging.getLogger("vmctl")


def connect(
    uri: str | URI | None = None,
    *,
    username: str | None = None,
    password: PasswordSource = None,
    cafile: str | None = None,
    thumbprint: str | None = None,
    insecure: bool | None = None,
    timeouts: Timeouts | float | None = None,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    env: Mapping[str, str] | None = None,
    **options: str,
) -> Hypervisor:
    """Connect to a hypervisor and return a ``Hypervisor``; use it as a context manager.

    ``uri`` defaults to $VMCTL_URI. The password comes from ``password`` (a string, a
    ``vmctl.Secret`` or a callback), else $VMCTL_PASSWORD; never from the URI. Trust for TLS
    hosts: ``cafile`` ($VMCTL_CAFILE), ``thumbprint`` ($VMCTL_THUMBPRINT, SHA-256), or
    ``insecure=True`` ($VMCTL_INSECURE=1), which warns. ``max_concurrency`` bounds the
    requests that run at once in the background (``wait=False``). Other keyword options go
    to the driver.

    >>> with vmctl.connect("sim://") as hv:
    ...     print(hv.host_info().name)
    """
    # The plain password goes into a Secret at once, so no frame of vmctl's holds it.
    error: ValidationError | None = None
    try:
        secret = resolve_password(password, os.environ if env is None else env)
    except ValidationError as exc:
        error = exc
    del password
    if error is not None:
        raise error.with_traceback(None) from None
    env = os.environ if env is None else env
    if uri is None:
        uri = env.get("VMCTL_URI")
        if not uri:
            raise ValidationError(
                "no URI given and VMCTL_URI is not set; e.g. connect('sim://')", field="uri"
            )
    try:
        parsed = uri if isinstance(uri, URI) else URI.parse(uri)
    except ValidationError as exc:  # a refused URI may hold a password: drop it first
        error = exc
    del uri
    if error is not None:
        raise error.with_traceback(None) from None
    if isinstance(timeouts, (int, float)) and not isinstance(timeouts, bool):
        timeouts = Timeouts(timeouts)
    elif timeouts is None:
        timeouts = Timeouts()
    elif not isinstance(timeouts, Timeouts):
        raise ValidationError(
            "timeouts must be a Timeouts or a number of seconds", field="timeouts"
        )
    check_int(max_concurrency, 1, 4096, "requests", "max_concurrency")
    if username is not None and (
        not isinstance(username, str)
        or not username
        or any(ord(c) < 0x20 or c in "@/" for c in username)
    ):
        raise ValidationError(
            "must be a non-empty string without control characters, '@' or '/'",
            field="username",
        )
    for key, value in options.items():
        if looks_secret(key):
            raise ValidationError(
                f"the driver option {key!r} would carry a secret; give the password with "
                "password= or VMCTL_PASSWORD",
                field=key,
            )
        if not isinstance(value, str):
            raise ValidationError(
                f"driver option {key!r} must be a string, got {type(value).__name__}", field=key
            )
    if insecure is not None and not isinstance(insecure, bool):
        raise ValidationError("must be True, False or None", field="insecure")
    params = ConnectParams(
        uri=parsed,
        username=username if username is not None else (parsed.user or env.get("VMCTL_USER")),
        password=secret,
        cafile=cafile if cafile is not None else env.get("VMCTL_CAFILE") or None,
        thumbprint=thumbprint if thumbprint is not None else env.get("VMCTL_THUMBPRINT") or None,
        insecure=insecure if insecure is not None else env_flag(env, "VMCTL_INSECURE"),
        timeouts=timeouts,
        options={**parsed.params, **options},
    )
    if params.insecure:
        message = (
            f"TLS certificate verification is OFF for {parsed}: anyone on the path can "
            "impersonate the host. Trust it with cafile= or thumbprint= instead."
        )
        warnings.warn(message, stacklevel=2)
        log.warning("%s", message)
    driver_cls = _registry.load(parsed.scheme)
    log.debug("connecting to %s with driver %s", parsed, driver_cls.__name__)
    deadline = Deadline.after(timeouts.connect_s)
    try:
        driver = driver_cls.open(params, deadline=deadline)
    except VmctlError:
        raise
    except Exception as exc:
        raise BackendError(f"connect to {parsed}: {type(exc).__name__}: {exc}") from exc
    try:
        return Hypervisor(driver, params, max_concurrency=max_concurrency)
    except BaseException:
        driver.close()
        raise
