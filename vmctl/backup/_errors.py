"""The backup package's one error of its own; everything else is vmctl's tree.

An unreachable repository is a ``vmctl.ConnectionError``, a full one
``vmctl.InsufficientResources``, an unknown backup ``vmctl.NotFound``.
"""

from __future__ import annotations

from .._errors import VmctlError


class RepositoryError(VmctlError):
    """The repository cannot be used as asked: not a vmctl repository, read-only, a newer
    format, or damaged (a manifest or chunk that fails its checksum)."""
