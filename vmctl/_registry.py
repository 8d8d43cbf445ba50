"""Which driver serves which URI scheme.

Drivers are found through the entry-point group ``vmctl.drivers`` (name = URI scheme,
value = ``module:Class``); vmctl's own drivers register there the same way a third party's
do. ``register()`` adds one at runtime (tests, plugins). Nothing is imported until a scheme
is used, so ``import vmctl`` stays light.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from types import MappingProxyType

from ._errors import DriverError, ValidationError
from .spi import Driver

GROUP = "vmctl.drivers"

#: What to install for each built-in driver, for the error when its module cannot import.
INSTALL_HINTS = {
    "vmctl_kvm": "pip install 'vmctl[kvm]' (libvirt-python)",
    "vmctl_esx": "pip install 'vmctl[esx]' (pyvmomi)",
    "vmctl_xen": "pip install 'vmctl[xen]' (XenAPI)",
}

_lock = threading.Lock()
_runtime: dict[str, str | type[Driver]] = {}
_loaded: dict[str, type[Driver]] = {}


def _entry_point_targets() -> dict[str, str]:
    from importlib.metadata import entry_points  # costly: only when a driver is looked up

    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def available() -> Mapping[str, str]:
    """Every known scheme and the ``module:Class`` (or class) serving it, read-only."""
    targets: dict[str, str] = _entry_point_targets()
    for scheme, target in _runtime.items():
        targets[scheme] = (
            target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"
        )
    return MappingProxyType(dict(sorted(targets.items())))


def register(scheme: str, driver: str | type[Driver], *, clobber: bool = False) -> None:
    """Serve ``scheme`` with ``driver`` (a Driver subclass or a ``"module:Class"`` string).

    Refuses to replace an existing scheme unless ``clobber=True``.
    """
    if (
        not isinstance(scheme, str)
        or not scheme.isascii()
        or not scheme.replace("-", "").isalnum()
        or not scheme[:1].isalpha()
        or scheme != scheme.lower()
    ):
        raise ValidationError(
            f"{scheme!r} is not a valid URI scheme (lowercase letters, "
            "digits and '-', starting with a letter)",
            field="scheme",
        )
    if isinstance(driver, type) and not issubclass(driver, Driver):
        raise ValidationError(f"{driver!r} is not a vmctl.spi.Driver subclass", field="driver")
    with _lock:
        if not clobber and scheme in available():
            raise ValidationError(
                f"scheme {scheme!r} is already served by "
                f"{available()[scheme]}; pass clobber=True to replace it",
                field="scheme",
            )
        _runtime[scheme] = driver
        _loaded.pop(scheme, None)


def unregister(scheme: str) -> None:
    """Forget a scheme added with ``register()``."""
    with _lock:
        _runtime.pop(scheme, None)
        _loaded.pop(scheme, None)


def load(scheme: str) -> type[Driver]:
    """The driver class serving ``scheme``; DriverError saying what to install if none."""
    with _lock:
        if scheme in _loaded:
            return _loaded[scheme]
        target: str | type[Driver] | None = _runtime.get(scheme)
        if target is None:
            target = _entry_point_targets().get(scheme)
        if target is None:
            known = ", ".join(available()) or "none"
            raise DriverError(
                f"no driver serves URI scheme {scheme!r} (known schemes: "
                f"{known}); install the driver package that provides it"
            )
        if isinstance(target, str):
            module_name, _, attr = target.partition(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                hint = INSTALL_HINTS.get(module_name.split(".")[0], f"install {module_name}")
                raise DriverError(
                    f"the driver for {scheme!r} cannot be loaded ({exc}); {hint}"
                ) from exc
            cls = getattr(module, attr, None)
            if not (isinstance(cls, type) and issubclass(cls, Driver)):
                raise DriverError(
                    f"{target} (the driver for {scheme!r}) is not a vmctl.spi.Driver subclass"
                )
            target = cls
        _loaded[scheme] = target
        return target
