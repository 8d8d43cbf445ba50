"""The host commands of the ``vmctl`` CLI: hosts, maintenance, evacuate.

Registered onto the ``vmctl`` click group when ``vmctl.cli`` is imported. See docs/hosts.md.
"""

from __future__ import annotations

import sys
from typing import Any

import click

import vmctl

from .cli import Ctx, _table, cli, fail, out, pass_ctx, to_dict


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024:.1f} GiB"


def _hosts_table(hosts: list[vmctl.Host]) -> None:
    rows = []
    for h in hosts:
        marks = [
            m
            for m, on in (("backend", h.backend_maintenance), ("vmctl", h.vmctl_maintenance))
            if on
        ]
        state = h.state.value + (f" ({', '.join(marks)})" if marks else "")
        rows.append(
            [
                h.name,
                state,
                f"{h.cpus} x {h.cpu_mhz} MHz",
                "-" if h.cpu_percent is None else f"{h.cpu_percent:.1f} %",
                f"{_mib(h.memory_used_mib)} / {_mib(h.memory_mib)}",
                str(h.vm_count),
            ]
        )
    _table(None, ["host", "state", "CPUs", "CPU load", "memory used", "VMs"], rows)


@cli.command()
@pass_ctx
def hosts(ctx: Ctx) -> None:
    """List the hosts this connection manages: capacity, load, state."""
    with ctx.connect() as hv:
        found = hv.hosts()
    out(ctx, [h.to_json() for h in found], lambda: _hosts_table(found))


@cli.command()
@click.argument("host")
@click.argument("mode", type=click.Choice(["on", "off"]))
@click.option("--evacuate", is_flag=True, help="move its VMs off first (with 'on')")
@click.option("--max-parallel", type=int, default=4, show_default=True)
@pass_ctx
def maintenance(ctx: Ctx, host: str, mode: str, evacuate: bool, max_parallel: int) -> None:
    """Put HOST (name or id) in maintenance (vmctl's flag, and the backend's mode where it
    has one), or take it out."""
    if evacuate and mode == "off":
        fail("--evacuate goes with 'on'", 2)
    with ctx.connect() as hv:
        h = hv.host(host)
        if mode == "on":
            h = h.enter_maintenance(evacuate=evacuate, max_parallel=max_parallel)
        else:
            h = h.exit_maintenance()
    out(ctx, h.to_json(), lambda: _hosts_table([h]))


@cli.command()
@click.argument("host")
@click.option("--dry-run", is_flag=True, help="print the plan only; move nothing")
@click.option("--target", "targets", multiple=True, help="a host it may use (repeat; default all)")
@click.option("--max-parallel", type=int, default=4, show_default=True, help="moves at once")
@click.option(
    "--on-fail",
    type=click.Choice(["stop", "skip", "cold"]),
    default="stop",
    show_default=True,
    help="after a failed move: start no more / go on / restart a VM whose live move failed",
)
@click.option(
    "--retries", type=int, default=1, show_default=True, help="per move, when it may pass"
)
@click.option("--allow-restart", is_flag=True, help="plan restarts for VMs that cannot move live")
@click.option("--yes", is_flag=True, help="do not ask before moving")
@pass_ctx
def evacuate(
    ctx: Ctx,
    host: str,
    dry_run: bool,
    targets: tuple[str, ...],
    max_parallel: int,
    on_fail: str,
    retries: int,
    allow_restart: bool,
    yes: bool,
) -> None:
    """Move every VM off HOST: the plan first (VM, mode, target, or why it cannot move),
    then, unless --dry-run, the moves. Running it again after an interruption moves only
    what is left."""
    with ctx.connect() as hv:
        source = hv.host(host)
        chosen = [hv.host(t) for t in targets] if targets else None
        plan = vmctl.plan_evacuation(source, chosen, allow_restart=allow_restart)
        if dry_run:
            out(ctx, plan.to_json(), lambda: click.echo(str(plan)))
            return
        if not ctx.json:
            click.echo(str(plan))
        if not plan.moves:
            out(
                ctx, {"plan": plan.to_json(), "report": None}, lambda: click.echo("nothing to move")
            )
            sys.exit(0 if plan.ok else 1)
        if not yes and not ctx.json and sys.stdin.isatty():
            click.confirm(f"Move {len(plan.moves)} VM(s) off {plan.source.name}?", abort=True)

        def progress(p: vmctl.EvacuationProgress) -> None:
            if p.status not in ("started",) and not ctx.json:
                note = f": {p.message}" if p.message else ""
                click.echo(
                    f"[{p.done}/{p.total}] {p.move.vm_name} -> {p.move.target_name} "
                    f"{p.status}{note}",
                    err=True,
                )

        report = vmctl.execute(
            plan, max_parallel=max_parallel, on_fail=on_fail, retries=retries, progress=progress
        )
    out(ctx, {"plan": plan.to_json(), "report": report.to_json()}, lambda: click.echo(str(report)))
    if not report.ok:
        sys.exit(1)


@cli.command()
@click.option("--dry-run", is_flag=True, help="print the plan only; move nothing")
@click.option(
    "--threshold",
    type=float,
    default=10.0,
    show_default=True,
    help="stop when the hosts' load scores differ by at most this many percentage points",
)
@click.option("--max-moves", type=int, default=10, show_default=True)
@click.option("--max-parallel", type=int, default=4, show_default=True, help="moves at once")
@click.option(
    "--memory-only", is_flag=True, help="balance memory load only (not the measured CPU load)"
)
@click.option("--yes", is_flag=True, help="do not ask before moving")
@pass_ctx
def rebalance(
    ctx: Ctx,
    dry_run: bool,
    threshold: float,
    max_moves: int,
    max_parallel: int,
    memory_only: bool,
    yes: bool,
) -> None:
    """Even out the load of the connection's hosts with live moves (a host's score: the
    higher of its memory and CPU load, or memory only): the plan first (each move, each
    host's memory and CPU before and after), then, unless --dry-run, the moves."""
    with ctx.connect() as hv:
        plan = vmctl.plan_rebalance(
            hv, threshold=threshold, max_moves=max_moves, cpu=not memory_only
        )
        if dry_run or not plan.moves:
            out(ctx, plan.to_json(), lambda: click.echo(str(plan)))
            return
        if not ctx.json:
            click.echo(str(plan))
        if not yes and not ctx.json and sys.stdin.isatty():
            click.confirm(f"Make {len(plan.moves)} move(s)?", abort=True)
        report = vmctl.execute(plan, max_parallel=max_parallel)
    out(ctx, {"plan": plan.to_json(), "report": report.to_json()}, lambda: click.echo(str(report)))
    if not report.ok:
        sys.exit(1)


@cli.command()
@click.argument("members_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("what", type=click.Choice(["list", "hosts", "stats"]))
@pass_ctx
def fleet(ctx: Ctx, members_file: str, what: str) -> None:
    """Read every hypervisor named in MEMBERS_FILE (one URI a line; # comments) at once:
    their VMs, hosts or VM counters. A member that fails is reported and does not stop the
    others (exit status 1 if any failed). Credentials come from the environment."""
    with open(members_file) as f:
        uris = [line.split("#", 1)[0].strip() for line in f]
    uris = [u for u in uris if u]
    if not uris:
        fail(f"{members_file} names no URI", 2)
    with vmctl.Fleet(uris) as members:
        result: vmctl.FleetResult[Any]
        if what == "list":
            result = members.list_vms()
        elif what == "hosts":
            result = members.hosts()
        else:
            result = members.stats()

    def row_json(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: to_dict(v) for k, v in value.items()}
        return [v.to_json() if hasattr(v, "to_json") else to_dict(v) for v in value]

    data = {
        "values": {u: row_json(v) for u, v in result.values.items()},
        "errors": {u: str(e) for u, e in result.errors.items()},
        "seconds": round(result.seconds, 3),
    }

    def human() -> None:
        rows = []
        values: dict[str, Any] = dict(result.values)
        for uri, value in values.items():
            if what == "list":
                rows += [[uri, i.name, i.state.value, str(i.host or "-")] for i in value]
            elif what == "hosts":
                rows += [[uri, h.name, h.state.value, str(h.vm_count)] for h in value]
            else:
                rows += [[uri, u, f"{(s.cpu_time_ns or 0) / 1e9:.1f} s", str(s.memory_used_mib)]
                         for u, s in value.items()]  # fmt: skip
        columns = {
            "list": ["member", "VM", "state", "host"],
            "hosts": ["member", "host", "state", "VMs"],
            "stats": ["member", "VM", "CPU time", "memory MiB"],
        }[what]
        _table(None, columns, rows)
        for uri, err in result.errors.items():
            click.echo(f"failed: {uri}: {err}", err=True)

    out(ctx, data, human)
    if result.errors:
        sys.exit(1)
