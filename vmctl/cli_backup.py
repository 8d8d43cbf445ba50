"""The backup commands of the ``vmctl`` CLI: backup, backups, restore, verify, prune.

Registered onto the ``vmctl`` click group when ``vmctl.cli`` is imported. The repository is
``--repo URL`` (a directory or any fsspec URL; default ``$VMCTL_REPO``); fsspec reads its
own settings from the environment, e.g. ``FSSPEC_S3_ENDPOINT_URL`` and the usual
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` for an S3 endpoint. Progress bars (bytes,
rate, time left) are drawn on a terminal only, never with ``--json``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

import vmctl
from vmctl.backup import BackupInfo, BackupProgress, Repository, RepositoryError, open_repo

from . import cli as _cli
from .cli import Ctx, _fields, _table, cli, fail, out, pass_ctx, to_dict

REPO_HINT = (
    "check --repo (a directory, or an fsspec URL such as s3://bucket/prefix with its "
    "package installed), or $VMCTL_REPO"
)


def repo_option() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--repo",
        "repo_url",
        envvar="VMCTL_REPO",
        required=True,
        metavar="URL",
        help="backup repository: a directory or an fsspec URL (default $VMCTL_REPO)",
    )


@contextmanager
def _repository(url: str, *, create: bool = False) -> Iterator[Repository]:
    try:
        yield open_repo(url, create=create)
    except RepositoryError as exc:
        fail(str(exc), 1, REPO_HINT)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@contextmanager
def _progress(ctx: Ctx, what: str) -> Iterator[Callable[[BackupProgress], None] | None]:
    """A progress callback drawing a bar with bytes, rate and time left, on a terminal and
    without --json only; None otherwise."""
    console = None if ctx.json else _cli._progress_console()  # tests replace it there
    if console is None:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(what, total=None)

        def update(p: BackupProgress) -> None:
            label = f"{what} {p.disk_id}" if p.disk_id else what
            bar.update(task, completed=p.done_bytes, total=p.total_bytes, description=label)

        yield update


def _info_rows(info: BackupInfo) -> list[tuple[str, Any]]:
    return [
        ("id", info.id),
        ("VM", f"{info.vm_name} ({info.vm_uuid})"),
        ("created", info.created.isoformat(timespec="seconds")),
        ("kind", info.kind.value),
        ("reason", info.reason),
        ("consistency", info.consistency.value),
        ("parent", info.parent),
        ("disks", ", ".join(f"{d.id} {_size(d.size_bytes)}" for d in info.disks)),
        ("read", _size(info.read_bytes)),
        ("stored", _size(info.new_bytes)),
        ("duration", f"{info.duration_s:.1f} s"),
        ("repository", info.repo),
    ]


@cli.command()
@click.argument("vm")
@repo_option()
@click.option("--full", is_flag=True, help="read every allocated block, not only changed ones")
@click.option(
    "--quiesce/--no-quiesce",
    default=None,
    help="freeze the guest's file systems (default: when the host can and the VM runs)",
)
@click.option("--timeout", type=float, default=None, help="seconds for the whole backup")
@pass_ctx
def backup(
    ctx: Ctx, vm: str, repo_url: str, full: bool, quiesce: bool | None, timeout: float | None
) -> None:
    """Back up VM (name or UUID) into the repository: incremental when it can be."""
    with _repository(repo_url, create=True) as repo, ctx.connect() as hv:
        handle = hv.vm(vm)
        with _progress(ctx, f"backup {handle.name}") as progress:
            info = handle.backup(
                repo, full=full, quiesce=quiesce, progress=progress, timeout=timeout
            )
    out(ctx, to_dict(info), lambda: _fields(f"backup {info.id}", _info_rows(info)))


@cli.command()
@click.argument("vm", required=False)
@repo_option()
@pass_ctx
def backups(ctx: Ctx, repo_url: str, vm: str | None) -> None:
    """List the complete backups in the repository (of VM, by name or UUID, if given)."""
    with _repository(repo_url) as repo:
        found = repo.backups(vm)
    rows = [
        [
            i.id,
            i.vm_name,
            i.created.strftime("%Y-%m-%d %H:%M:%S"),
            i.kind.value,
            i.consistency.value,
            _size(i.size_bytes),
            _size(i.read_bytes),
            _size(i.new_bytes),
        ]
        for i in found
    ]
    out(
        ctx,
        [to_dict(i) for i in found],
        lambda: _backups_table(repo.url, rows),
    )


def _backups_table(title: str, rows: list[list[str]]) -> None:
    """The listing, with the ids (what users copy) never cut."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("id", no_wrap=True, min_width=len("20261202T084321Z-1a2b3c"))
    for name in ("VM", "created", "kind", "consistency", "size", "read", "stored"):
        table.add_column(name)
    for row in rows:
        table.add_row(*row)
    _cli._console().print(table)


@cli.command()
@click.argument("backup_id")
@repo_option()
@click.option("--name", default=None, help="name of the new VM (default: the original name)")
@click.option("--replace", is_flag=True, help="write back into the original, stopped VM")
@click.option("--pool", default=None, help="storage pool / datastore for the new disks")
@click.option("--timeout", type=float, default=None, help="seconds for the whole restore")
@pass_ctx
def restore(
    ctx: Ctx,
    backup_id: str,
    repo_url: str,
    name: str | None,
    replace: bool,
    pool: str | None,
    timeout: float | None,
) -> None:
    """Restore BACKUP_ID into a new VM on the host (-c URI), or into the original VM with
    --replace."""
    with _repository(repo_url) as repo, ctx.connect() as hv:
        with _progress(ctx, f"restore {backup_id}") as progress:
            try:
                vm = repo.restore(
                    backup_id,
                    hv,
                    name=name,
                    replace=replace,
                    pool=pool,
                    progress=progress,
                    timeout=timeout,
                )
            except vmctl.AlreadyExists as exc:
                fail(
                    str(exc).replace("name=...", "--name").replace("replace=True", "--replace"),
                    1,
                    "add --name NEW, or --replace to overwrite the original VM's disks",
                )
            except RepositoryError as exc:
                fail(str(exc), 1, "`vmctl verify --repo URL BACKUP_ID` shows what is damaged")
        info = vm.info()
    data = {"backup": backup_id, "vm": to_dict(info), "replaced": replace}
    out(
        ctx,
        data,
        lambda: click.echo(
            f"{'replaced the disks of' if replace else 'restored into'} VM {info.name} "
            f"({info.uuid}), {info.state.value}"
        ),
    )


@cli.command()
@click.argument("backup_id", required=False)
@repo_option()
@pass_ctx
def verify(ctx: Ctx, repo_url: str, backup_id: str | None) -> None:
    """Read back and check every chunk of BACKUP_ID (default: of every backup). Exits 1
    naming the backup, disk and offset of each damaged chunk."""
    with _repository(repo_url) as repo, _progress(ctx, "verify") as progress:
        report = repo.verify(backup_id, progress=progress)

    def human() -> None:
        if report.ok:
            click.echo(
                f"ok: {len(report.backups)} backup(s), {report.chunks_checked} chunks, "
                f"{_size(report.bytes_checked)} checked"
            )
            return
        _table(
            "damaged",
            ["backup", "disk", "offset", "problem"],
            [
                [p.backup_id, p.disk_id or "-", "-" if p.offset is None else str(p.offset), p.error]
                for p in report.problems
            ],
        )

    out(ctx, {**to_dict(report), "ok": report.ok}, human)
    if not report.ok:
        click.echo(
            f"error: {len(report.problems)} problem(s) in the repository {repo.url}", err=True
        )
        sys.exit(1)


@cli.command()
@repo_option()
@click.option("--keep-last", type=int, default=None, help="keep the N newest backups of each VM")
@click.option(
    "--keep-daily", type=int, default=None, help="keep the newest backup of each of N days"
)
@click.option("--dry-run", is_flag=True, help="say what would be removed, remove nothing")
@pass_ctx
def prune(
    ctx: Ctx, repo_url: str, keep_last: int | None, keep_daily: int | None, dry_run: bool
) -> None:
    """Remove the backups no policy keeps, then the chunks no kept backup needs."""
    if keep_last is None and keep_daily is None:
        fail("give a policy", 2, "add --keep-last N and/or --keep-daily N")
    with _repository(repo_url) as repo:
        report = repo.prune(keep_last=keep_last, keep_daily=keep_daily, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    out(
        ctx,
        to_dict(report),
        lambda: click.echo(
            f"{verb} {len(report.removed)} backup(s) and {report.chunks_removed} chunk(s) "
            f"({_size(report.bytes_freed)}); kept {len(report.kept)}"
        ),
    )
