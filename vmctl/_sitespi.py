"""The driver side of ``vmctl.Site`` (re-exported by ``vmctl.spi``): a driver whose
connections each manage one host (a libvirtd) lets vmctl plan over several of them
together by implementing ``SiteMember``. The site (``vmctl._site``) does the rest: the
host interfaces over the members, the saved definitions for recovery.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING

from attrs import frozen

from ._deadline import Deadline
from ._hostspi import MoveMode
from ._tasks import Task

if TYPE_CHECKING:
    from .spi import Driver


@frozen
class SiteVM:
    """What a member driver says about one of its VMs for the site: ``definition`` is the
    backend's own text to define it again elsewhere (libvirt domain XML, without secrets),
    ``disks`` the locations of its disks (file paths), ``pinned`` why it cannot leave its
    host (a passthrough device), or None, ``live_blocker`` why the backend would refuse to
    move it live (a device it cannot migrate), or None."""

    definition: str
    disks: tuple[str, ...] = ()
    pinned: str | None = None
    live_blocker: str | None = None


class SiteMember(abc.ABC):
    """The driver side of ``vmctl.Site``: connections of this driver form a site."""

    @abc.abstractmethod
    def site_inventory(
        self, uuids: Sequence[str] | None = None, *, deadline: Deadline
    ) -> dict[str, SiteVM]:
        """Every VM of this host (by UUID), or those of ``uuids`` it has, with its
        definition, disks and pin; a bounded number of round trips per VM."""

    @abc.abstractmethod
    def reaches(self, locations: Sequence[str], *, deadline: Deadline) -> set[str]:
        """Which of these disk locations (``SiteVM.disks`` of another member) this host
        sees as the same storage (the shared-storage probe)."""

    @abc.abstractmethod
    def move_to_peer(
        self, uuid: str, peer: Driver, *, mode: MoveMode, deadline: Deadline
    ) -> Task | None:
        """Move the VM to ``peer`` (a connection of the same driver): LIVE (a running VM
        migrates running), COLD (a stopped VM is defined there and removed here).
        NotSupported for a mode the driver cannot do."""

    @abc.abstractmethod
    def restore_vm(self, definition: str, *, start: bool, deadline: Deadline) -> None:
        """Define a VM on this host from ``SiteVM.definition`` saved from another (failed)
        host, after checking that this host reaches its disks (ValidationError otherwise),
        and start it with ``start``. Nothing to do when it is already defined here (and
        running, with ``start``)."""

    @abc.abstractmethod
    def forget_vm(self, uuid: str, *, deadline: Deadline) -> None:
        """Remove this host's definition of a VM that was recovered on another host while
        this one was down, and turn its autostart off first; its disks (and firmware
        variables) stay: the VM runs from them elsewhere now. InvalidState when the VM
        runs here (nothing is changed); nothing to do when it is not defined here."""
