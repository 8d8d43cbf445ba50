"""attrs validators that raise ValidationError with a message a person can act on."""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Callable
from typing import Any, TypeVar, cast

import attrs

from ._errors import ValidationError

NAME_MAX = 80
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def check_name(value: object, what: str = "name") -> str:
    """A VM, snapshot or disk name: 1..80 printable characters, no '/', no outer spaces."""
    if not isinstance(value, str):
        raise ValidationError(f"must be a string, got {type(value).__name__}", field=what)
    if not value:
        raise ValidationError("must not be empty", field=what)
    if len(value) > NAME_MAX:
        raise ValidationError(
            f"is {len(value)} characters long; the limit is {NAME_MAX}", field=what
        )
    if value != value.strip():
        raise ValidationError(f"{value!r} has leading or trailing white space", field=what)
    for ch in value:
        if unicodedata.category(ch)[0] in "CZ" and ch != " ":
            raise ValidationError(
                f"{value!r} contains the control or separator character "
                f"U+{ord(ch):04X}; use printable characters",
                field=what,
            )
    if "/" in value or "\\" in value:
        raise ValidationError(
            f"{value!r} contains a slash; names must not contain / or \\", field=what
        )
    return value


def name(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_name(value, attribute.name)


def optional_name(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        check_name(value, attribute.name)


def check_int(value: object, low: int, high: int, unit: str = "", field: str = "") -> int:
    """``value`` if it is an int (not a bool, not a float) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(
            f"must be a whole number{' of ' + unit if unit else ''}, got {value!r}", field=field
        )
    if not low <= value <= high:
        raise ValidationError(
            f"must be between {low} and {high}{' ' + unit if unit else ''}, got {value}",
            field=field,
        )
    return value


def int_range(low: int, high: int, unit: str = "", optional: bool = False) -> Validator:
    """An attrs validator: an int within [low, high] (or None when ``optional``)."""

    def check(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        check_int(value, low, high, unit, attribute.name)

    return check


def mac(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not _MAC.match(value):
        raise ValidationError(
            f"{value!r} is not a MAC address like 52:54:00:12:34:56", field=attribute.name
        )
    if int(value[:2], 16) & 1:
        raise ValidationError(
            f"{value} is a multicast address; a NIC needs a unicast MAC (first octet even)",
            field=attribute.name,
        )


def lower_str(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def instance_of(kind: type, optional: bool = False) -> Validator:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None and optional:
            return
        if not isinstance(value, kind):
            raise ValidationError(
                f"must be a {kind.__name__}, got {type(value).__name__}", field=attribute.name
            )

    return check


def tuple_of(kind: type) -> Validator:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        items = cast("tuple[object, ...]", value)
        for i, item in enumerate(items):
            if not isinstance(item, kind):
                raise ValidationError(
                    f"item {i} must be a {kind.__name__}, got {type(item).__name__}",
                    field=attribute.name,
                )

    return check


def to_tuple(value: object) -> object:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    if value is None:
        return ()
    raise ValidationError(f"expected a list or tuple, got {type(value).__name__}")


E = TypeVar("E", bound=enum.Enum)


def enum_of(kind: type[E], field: str) -> Callable[[object], E]:
    """A converter to the enum ``kind`` that refuses other values with ValidationError,
    naming the allowed ones."""

    def convert(value: object) -> E:
        try:
            return kind(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in kind)
            raise ValidationError(f"{value!r} is not one of {allowed}", field=field) from None

    return convert
