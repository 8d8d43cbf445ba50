"""``vmctl recover HOST``: restart the VMs of a failed host on the others.

Registered onto the ``vmctl`` click group when ``vmctl.cli`` is imported. See docs/hosts.md.
"""

from __future__ import annotations

import sys

import click

import vmctl

from .cli import Ctx, cli, out, pass_ctx


@cli.command()
@click.argument("host")
@click.option("--dry-run", is_flag=True, help="print the plan only; restart nothing")
@click.option(
    "--confirm-fenced",
    "--confirm-down",
    "confirm",
    is_flag=True,
    help="you made sure HOST is down for good (powered off, cut from its storage): its VMs "
    "may be started elsewhere even if the backend cannot prove it",
)
@click.option("--target", "targets", multiple=True, help="a host it may use (repeat; default all)")
@click.option("--max-parallel", type=int, default=4, show_default=True, help="restarts at once")
@click.option("--retries", type=int, default=1, show_default=True, help="per VM, when it may pass")
@click.option("--yes", is_flag=True, help="do not ask before restarting")
@pass_ctx
def recover(
    ctx: Ctx,
    host: str,
    dry_run: bool,
    confirm: bool,
    targets: tuple[str, ...],
    max_parallel: int,
    retries: int,
    yes: bool,
) -> None:
    """Restart the VMs of the unreachable HOST on the other hosts: the plan first (VM, mode,
    target, or why it cannot; whether the backend proves the host is down), then, unless
    --dry-run, the restarts. Without the backend's proof, nothing starts unless
    --confirm-fenced says the host is down: a VM must never run twice."""
    with ctx.connect() as hv:
        source = hv.host(host)
        chosen = [hv.host(t) for t in targets] if targets else None
        plan = vmctl.plan_recovery(source, chosen)
        if dry_run:
            out(ctx, plan.to_json(), lambda: click.echo(str(plan)))
            return
        if not ctx.json:
            click.echo(str(plan))
        if not plan.moves:
            out(
                ctx,
                {"plan": plan.to_json(), "report": None},
                lambda: click.echo("nothing to restart"),
            )
            sys.exit(0 if plan.ok else 1)
        if not yes and not ctx.json and sys.stdin.isatty():
            click.confirm(
                f"Restart {len(plan.moves)} VM(s) of {plan.source.name} elsewhere?", abort=True
            )

        def progress(p: vmctl.EvacuationProgress) -> None:
            if p.status != "started" and not ctx.json:
                note = f": {p.message}" if p.message else ""
                click.echo(
                    f"[{p.done}/{p.total}] {p.move.vm_name} -> {p.move.target_name} "
                    f"{p.status}{note}",
                    err=True,
                )

        report = vmctl.execute(
            plan,
            max_parallel=max_parallel,
            retries=retries,
            progress=progress,
            confirm_fenced=confirm,
        )
    out(ctx, {"plan": plan.to_json(), "report": report.to_json()}, lambda: click.echo(str(report)))
    if not report.ok:
        sys.exit(1)
