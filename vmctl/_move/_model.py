"""What ``vmctl.move`` hands back: the mapping report and the move's result, frozen."""

from __future__ import annotations

import enum
import json

from attrs import frozen

from .._diskaccess import Consistency
from .._model import to_dict


class MappingKind(enum.StrEnum):
    """What happened to one part of the VM's configuration on the way to the target."""

    KEPT = "kept"  # carried over as it was
    CHANGED = "changed"  # carried over in another form (a new MAC, another disk bus)
    DROPPED = "dropped"  # the target cannot hold it, or vmctl does not carry it
    UNKNOWN = "unknown"  # the neutral configuration does not say (e.g. the firmware)


@frozen
class MappingNote:
    """One item of the mapping report: ``item`` ("nic 1 MAC", "disk 0 bus", "cpu_shares",
    "snapshots", ...), what it was on the source and what it is (or will be) on the
    target, and why."""

    kind: MappingKind
    item: str
    source: str | None = None
    target: str | None = None
    detail: str = ""

    def __str__(self) -> str:
        change = ""
        if self.source is not None or self.target is not None:
            change = f": {self.source or '-'} -> {self.target or '-'}"
        detail = f" ({self.detail})" if self.detail else ""
        return f"[{self.kind.value}] {self.item}{change}{detail}"


@frozen
class MovedDisk:
    """One disk: its id on the source and the target, its size, the bytes copied (holes
    and pieces of zeroes are skipped) and the digest of its first ``size_bytes`` bytes as
    read from the source's point in time and as read back through the target (the SHA-256
    of the list of the SHA-256s of its 4 MiB pieces: ``vmctl.move_digest``). ``verified``
    when the two agree."""

    source_id: str
    size_bytes: int
    target_id: str | None = None
    copied_bytes: int = 0
    source_digest: str | None = None
    target_digest: str | None = None
    verified: bool = False


@frozen
class MoveReport:
    """The result of ``vmctl.move`` (or of its ``dry_run``: the plan, nothing touched).

    ``mapping`` says what could not be carried over or was changed, ``guest_needs`` what
    the guest may need on the target (drivers, tools, network configuration for new MACs).
    ``consistency`` is that of the source's point in time the disks were read at (the
    last one). A running source moved with ``keep_source=False`` was copied while it ran,
    then stopped and the pieces changed meanwhile copied (``final_sync_bytes``; where it
    tracks changes, else it was stopped first); ``downtime_s`` is from its stop to the end
    (the target started, if asked).
    """

    source_uri: str
    target_uri: str
    source_vm: str
    source_uuid: str
    target_name: str
    dry_run: bool
    mapping: tuple[MappingNote, ...]
    guest_needs: tuple[str, ...]
    disks: tuple[MovedDisk, ...]
    target_uuid: str | None = None
    consistency: Consistency | None = None
    powered_on: bool = False
    source_deleted: bool = False
    copied_bytes: int = 0
    duration_s: float = 0.0
    final_sync_bytes: int | None = None
    downtime_s: float | None = None

    @property
    def verified(self) -> bool:
        """Every disk read back from the target matches the source (False for a dry run)."""
        return not self.dry_run and all(d.verified for d in self.disks)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (enums as values), with ``verified``."""
        out: dict[str, object] = to_dict(self)
        out["verified"] = self.verified
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        head = "dry run: " if self.dry_run else ""
        lines = [
            f"{head}move VM {self.source_vm!r} ({self.source_uuid}) from {self.source_uri} "
            f"to {self.target_uri} as {self.target_name!r}"
            + (f" ({self.target_uuid})" if self.target_uuid else "")
        ]
        if not self.dry_run:
            state = "verified" if self.verified else "NOT verified"
            consistency = self.consistency.value if self.consistency else "-"
            lines.append(
                f"disks: {state}; {self.copied_bytes} bytes copied in {self.duration_s:.1f} s; "
                f"point in time: {consistency}; powered on: {'yes' if self.powered_on else 'no'}"
                f"; source deleted: {'yes' if self.source_deleted else 'no'}"
            )
            if self.downtime_s is not None:
                sync = (
                    f"{self.final_sync_bytes} bytes in the final sync; "
                    if self.final_sync_bytes is not None
                    else "stopped before the copy; "
                )
                lines.append(f"source stopped for the move: {sync}down {self.downtime_s:.1f} s")
        for d in self.disks:
            digest = f" digest {d.source_digest}" if d.source_digest else ""
            match = (
                ""
                if self.dry_run
                else (" = target" if d.verified else f" != target {d.target_digest}")
            )
            lines.append(
                f"  disk {d.source_id} -> {d.target_id or '(new)'}: {d.size_bytes} bytes, "
                f"{d.copied_bytes} copied{digest}{match}"
            )
        lines.append("mapping:")
        lines += [f"  {n}" for n in self.mapping] or ["  (nothing changed)"]
        if self.guest_needs:
            lines.append("the guest may need:")
            lines += [f"  - {g}" for g in self.guest_needs]
        return "\n".join(lines)
