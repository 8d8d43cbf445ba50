"""Vendor tasks as the core sees them: a handle the driver gives back, and how it ended."""

from __future__ import annotations

from typing import Any

from attrs import field, frozen

from ._errors import VmctlError


@frozen(eq=False)
class Task:
    """A job the host runs on its own after a request was accepted: a vSphere Task, a xapi
    task, a Hyper-V ``Msvm_ConcreteJob``, a libvirt job.

    ``id`` is the vendor's id, shown to users when the task outlives its request;
    ``description`` says what it does; ``handle`` is the driver's own (a managed object, a
    ref); the core never looks inside it.
    """

    id: str
    description: str
    handle: Any = field(default=None, repr=False)


@frozen(eq=False)
class TaskOutcome:
    """How a task ended: ``error`` (already mapped into vmctl's tree) or success, with the
    vendor's ``result`` where it has one (e.g. the ref of a created object)."""

    task: Task
    error: VmctlError | None = None
    result: Any = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None
