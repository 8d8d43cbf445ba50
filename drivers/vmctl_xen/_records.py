"""Small readers of XenAPI records shared by the driver and its mixins."""

from __future__ import annotations

from typing import Any


def as_int(value: Any) -> int:
    """An int field of a record (XenAPI sends int64 as strings); "" or None is 0."""
    return int(value) if value not in (None, "") else 0


def is_vm(rec: dict[str, Any]) -> bool:
    """A real VM: not a template, not a snapshot, not a control domain."""
    return not (
        rec.get("is_a_template") or rec.get("is_a_snapshot") or rec.get("is_control_domain")
    )
