"""``Repository``: a backup repository reached through fsspec, and ``open_repo``.

Layout (clause BACKUP-FORMAT-1)::

    vmctl-repo.json                       the repository's config, written once
    chunks/<2 hex>/<sha256 hex>           chunks, shared by every backup and VM
    backups/<vm uuid>/<backup id>.json    one manifest per complete backup, written last
    locks/<kind>-<random>.json            backup (shared) and prune (exclusive) locks
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import uuid as uuidlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .._errors import NotFound, ValidationError
from . import _chunks
from ._errors import RepositoryError
from ._manifest import Manifest, decode, encode
from ._model import BackupDisk, BackupInfo, BackupProgress, PruneReport, VerifyReport
from ._store import Batch, Store

if TYPE_CHECKING:
    from .._hypervisor import Hypervisor
    from .._vm import VM

CONFIG = "vmctl-repo.json"
FORMAT = "vmctl-backup-repository"
VERSION = 1
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
MIN_CHUNK_SIZE, MAX_CHUNK_SIZE = 64 * 1024, 64 * 1024 * 1024

Progress = Callable[[BackupProgress], None]


def _check_chunk_size(value: object) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not MIN_CHUNK_SIZE <= value <= MAX_CHUNK_SIZE
        or value & (value - 1)
    ):
        raise ValidationError(
            f"must be a power of two from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes, got "
            f"{value!r}",
            field="chunk_size",
        )
    return value


def new_backup_id(now: dt.datetime) -> str:
    """Sortable by time, unique: 20261202T084321Z-1a2b3c."""
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


class Repository:
    """A backup repository. Made by ``vmctl.open_repo(url)``.

    Lists complete backups (``backups()``), checks them (``verify()``), thins them out
    (``prune()``) and restores them (``restore()``). Backups are made by
    ``vm.backup(repo)``. Safe to share between threads.
    """

    def __init__(self, store: Store, config: dict[str, Any]) -> None:
        self._store = store
        self.id: str = config["id"]
        self.chunk_size: int = config["chunk_size"]

    @property
    def url(self) -> str:
        """The repository's URL (without credentials)."""
        return self._store.url

    def __repr__(self) -> str:
        return f"<Repository {self.url} chunk_size={self.chunk_size}>"

    # -- opening ----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str,
        *,
        create: bool = True,
        chunk_size: int | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> Repository:
        if not isinstance(url, str) or not url:
            raise ValidationError("give the repository's path or fsspec URL", field="url")
        if chunk_size is not None:
            _check_chunk_size(chunk_size)
        store = Store(url, storage_options)
        try:
            raw = store.get(CONFIG)
        except NotFound:
            raw = None
        if raw is not None:
            config = cls._parse_config(raw, store.url)
            if chunk_size is not None and chunk_size != config["chunk_size"]:
                raise ValidationError(
                    f"the repository {store.url} has chunks of {config['chunk_size']} bytes; "
                    "the chunk size is set when a repository is made",
                    field="chunk_size",
                )
            return cls(store, config)
        if store.list(""):
            raise RepositoryError(
                f"{store.url} is not a vmctl backup repository ({CONFIG} is missing) and is "
                "not empty: give an empty or new location"
            )
        if not create:
            raise NotFound(f"no vmctl backup repository at {store.url} ({CONFIG} is missing)")
        store.ensure_root()
        config = {
            "format": FORMAT,
            "version": VERSION,
            "id": str(uuidlib.uuid4()),
            "created": dt.datetime.now(dt.UTC).isoformat(),
            "chunk_size": chunk_size or DEFAULT_CHUNK_SIZE,
            "hash": "sha256",
            "compression": "zstd",
        }
        store.put(CONFIG, json.dumps(config, indent=1).encode() + b"\n")
        return cls(store, config)

    @staticmethod
    def _parse_config(raw: bytes, url: str) -> dict[str, Any]:
        try:
            config = json.loads(raw)
        except ValueError as exc:
            raise RepositoryError(f"{url}/{CONFIG} is not JSON: {exc}") from exc
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise RepositoryError(f"{url}/{CONFIG} is not a vmctl repository config")
        version = config.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise RepositoryError(
                f"the repository {url} has format version {version}; this vmctl reads up to "
                f"{VERSION}: upgrade vmctl"
            )
        if config.get("hash") != "sha256" or not isinstance(config.get("id"), str):
            raise RepositoryError(f"{url}/{CONFIG} names an unknown hash or no id")
        try:
            _check_chunk_size(config.get("chunk_size"))
        except ValidationError as exc:
            raise RepositoryError(f"{url}/{CONFIG}: {exc}") from exc
        return config

    # -- manifests --------------------------------------------------------------------------

    @staticmethod
    def manifest_path(vm_uuid: str, backup_id: str) -> str:
        return f"backups/{vm_uuid}/{backup_id}.json"

    def _manifest_paths(self) -> dict[str, str]:
        """backup id -> manifest path, for every complete backup."""
        out = {}
        for rel in self._store.list("backups"):
            name = rel.rsplit("/", 1)[-1]
            if rel.count("/") == 2 and name.endswith(".json") and ".tmp-" not in name:
                out[name[: -len(".json")]] = rel
        return out

    def _load(self, rel: str) -> Manifest:
        return decode(self._store.get(rel), f"{self.url}/{rel}")

    def manifest(self, backup_id: str) -> Manifest:
        """The manifest of one backup; NotFound if the repository has no such backup."""
        if not isinstance(backup_id, str) or not backup_id or "/" in backup_id:
            raise ValidationError(f"not a backup id: {backup_id!r}", field="backup_id")
        rel = self._manifest_paths().get(backup_id)
        if rel is None:
            raise NotFound(f"the repository {self.url} has no backup {backup_id!r}")
        return self._load(rel)

    def manifests(self) -> tuple[list[Manifest], list[tuple[str, RepositoryError]]]:
        """Every readable manifest (oldest first), and the unreadable ones with why."""
        good, bad = [], []
        for backup_id, rel in sorted(self._manifest_paths().items()):
            try:
                good.append(self._load(rel))
            except RepositoryError as exc:
                bad.append((backup_id, exc))
        good.sort(key=lambda m: (m.created, m.id))
        return good, bad

    def write_manifest(self, m: Manifest) -> None:
        self._store.put(self.manifest_path(m.vm_uuid, m.id), encode(m))

    # -- chunks -----------------------------------------------------------------------------

    def has_chunk(self, digest: str) -> bool:
        return self._store.exists(_chunks.chunk_path(digest))

    def put_chunk(self, digest: str, frame: bytes) -> None:
        self._store.put(_chunks.chunk_path(digest), frame)

    def chunk_batch(self) -> Batch:
        """For chunks put with ``Batch.put(chunk_path(digest), header, payload)``: durable
        and visible together at ``commit``, which a backup calls before its manifest."""
        return self._store.batch()

    def read_chunk(self, digest: str) -> bytes:
        """A chunk's content, checked against its hash (CorruptChunk, NotFound)."""
        frame = self._store.get(_chunks.chunk_path(digest))
        return _chunks.decode(frame, digest, self.chunk_size)

    # -- what users call --------------------------------------------------------------------

    def backups(self, vm: VM | str | None = None) -> list[BackupInfo]:
        """The complete backups, oldest first; of one VM (a handle, UUID or name) if given.
        A backup killed half-way has no manifest, so it is never listed."""
        wanted = None if vm is None else _vm_key(vm)
        good, _bad = self.manifests()
        return [
            info(m, self.url)
            for m in good
            if wanted is None or wanted in (m.vm_uuid.lower(), m.vm_name.lower())
        ]

    def get(self, backup_id: str) -> BackupInfo:
        """One backup by id (NotFound if there is none)."""
        return info(self.manifest(backup_id), self.url)

    def verify(
        self, backup_id: str | None = None, *, progress: Progress | None = None
    ) -> VerifyReport:
        """Read back every chunk of one backup (or of all), decompress it and check its hash.
        Problems name the backup, the disk and the byte offset of each bad chunk."""
        from ._verify import verify

        return verify(self, backup_id, progress)

    def prune(
        self,
        *,
        keep_last: int | None = None,
        keep_daily: int | None = None,
        dry_run: bool = False,
    ) -> PruneReport:
        """Forget the backups no policy keeps, per VM, then delete the chunks no kept backup
        needs. ``keep_last=N``: the N newest; ``keep_daily=N``: the newest of each of the
        last N days that have a backup. Refused (Conflict) while a backup is running."""
        from ._prune import prune

        return prune(self, keep_last=keep_last, keep_daily=keep_daily, dry_run=dry_run)

    def restore(
        self,
        backup_id: str,
        hypervisor: Hypervisor,
        *,
        name: str | None = None,
        replace: bool = False,
        pool: str | None = None,
        progress: Progress | None = None,
        timeout: float | None = None,
    ) -> VM:
        """A new STOPPED VM on ``hypervisor`` with the backup's configuration and disk
        content (named ``name``, default the original name; new MAC addresses; disks in
        ``pool``). With ``replace=True`` the content is written back into the original VM's
        disks instead, which must be STOPPED. On failure nothing is left behind (or the
        error's ``left_behind`` says what is)."""
        from ._restore import restore

        return restore(
            self,
            backup_id,
            hypervisor,
            name=name,
            replace=replace,
            pool=pool,
            progress=progress,
            timeout=timeout,
        )


def _vm_key(vm: object) -> str:
    from .._vm import VM

    if isinstance(vm, VM):
        return vm.uuid.lower()
    if isinstance(vm, str) and vm:
        return vm.lower()
    raise ValidationError("give a VM handle, UUID or name", field="vm")


def info(m: Manifest, repo_url: str) -> BackupInfo:
    return BackupInfo(
        id=m.id,
        vm_uuid=m.vm_uuid,
        vm_name=m.vm_name,
        created=m.created,
        kind=m.kind,
        reason=m.reason,
        consistency=m.consistency,
        parent=m.parent,
        disks=tuple(
            BackupDisk(
                id=d.id,
                size_bytes=d.size_bytes,
                chunks=len(d.chunks),
                data_chunks=sum(1 for c in d.chunks if c is not None),
                read_chunks=d.read_chunks,
                new_chunks=d.new_chunks,
                name=d.name,
                note=d.note,
            )
            for d in m.disks
        ),
        size_bytes=sum(d.size_bytes for d in m.disks),
        read_bytes=int(m.stats.get("read_bytes", 0)),
        new_bytes=int(m.stats.get("new_bytes", 0)),
        duration_s=(m.completed - m.created).total_seconds(),
        source=m.source,
        repo=repo_url,
    )


def open_repo(
    url: str,
    *,
    create: bool = True,
    chunk_size: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Repository:
    """Open the backup repository at ``url``: a local directory, or any fsspec URL
    (``s3://bucket/prefix``; ``storage_options`` go to fsspec, e.g. an S3 ``endpoint_url``
    under ``client_kwargs``). An empty or missing location becomes a new repository
    (``create=False`` refuses) with chunks of ``chunk_size`` bytes (default 4 MiB)."""
    return Repository.open(
        url, create=create, chunk_size=chunk_size, storage_options=storage_options
    )


def chunk_ids(manifests: Iterable[Manifest]) -> set[str]:
    out: set[str] = set()
    for m in manifests:
        out |= m.chunk_digests()
    return out
