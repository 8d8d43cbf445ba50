"""The ``vmctl move`` command: a VM to a hypervisor of any vendor (``vmctl.move``).

Registered onto the ``vmctl`` click group when ``vmctl.cli`` is imported. The source is the
host of ``-c URI`` ($VMCTL_URI), the target ``--to URI``. The target's credentials and trust
come from $VMCTL_TO_PASSWORD, $VMCTL_TO_USER, $VMCTL_TO_CAFILE, $VMCTL_TO_THUMBPRINT and
$VMCTL_TO_INSECURE, each falling back to the source's variable ($VMCTL_PASSWORD, ...);
``--ask-password-to`` prompts for it. A progress bar (bytes, rate, time left) is drawn on a
terminal, never with ``--json``.
"""

from __future__ import annotations

import os

import click

import vmctl

from .cli import Ctx, cli, exit_code, fail, out, pass_ctx

#: The connection settings a target may have of its own: $VMCTL_TO_X replaces $VMCTL_X.
TARGET_VARIABLES = ("PASSWORD", "USER", "CAFILE", "THUMBPRINT", "INSECURE")


def target_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the target is connected with: $VMCTL_TO_X over $VMCTL_X."""
    env = dict(os.environ if environ is None else environ)
    for name in TARGET_VARIABLES:
        own = env.get(f"VMCTL_TO_{name}")
        if own is not None:
            env[f"VMCTL_{name}"] = own
    return env


def _network_map(values: tuple[str, ...]) -> dict[str, str] | None:
    if not values:
        return None
    out: dict[str, str] = {}
    for value in values:
        src, sep, dst = value.partition("=")
        if not sep or not src or not dst:
            fail(f"--network {value!r}: give SRC=DST (a source network = a target network)", 2)
        out[src] = dst
    return out


@cli.command()
@click.argument("vm")
@click.option("--to", "to_uri", required=True, metavar="URI", help="the target hypervisor")
@click.option("--name", default=None, help="name on the target (default: the VM's name)")
@click.option(
    "--network",
    "networks",
    multiple=True,
    metavar="SRC=DST",
    help="put the NICs on source network SRC on target network DST (repeatable; "
    "networks not named keep their name)",
)
@click.option("--storage", default=None, help="the target's pool / SR / datastore for the disks")
@click.option(
    "--start/--no-start",
    "start",
    default=None,
    help="power the moved VM on (default: if the source was running)",
)
@click.option(
    "--delete-source",
    is_flag=True,
    help="delete the source VM once the target's disks are verified (it must be stopped)",
)
@click.option(
    "--keep-macs",
    is_flag=True,
    help="give the moved VM's NICs the source's MAC addresses (default: new ones); refused "
    "before anything is made when the target's rules reject one",
)
@click.option("--dry-run", is_flag=True, help="print the mapping report only; touch nothing")
@click.option("--ask-password-to", is_flag=True, help="prompt for the target's password")
@click.option("--timeout", type=float, default=None, help="seconds for the whole move")
@click.option(
    "--shutdown-timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    help="with --delete-source and a running source: seconds its guest has to shut down "
    "before it is powered off (default 120; 0: power off at once)",
)
@pass_ctx
def move(
    ctx: Ctx,
    vm: str,
    to_uri: str,
    name: str | None,
    networks: tuple[str, ...],
    storage: str | None,
    start: bool | None,
    delete_source: bool,
    keep_macs: bool,
    dry_run: bool,
    ask_password_to: bool,
    timeout: float | None,
    shutdown_timeout: float | None,
) -> None:
    """Move VM (name or UUID) from the host of -c URI to the hypervisor --to URI, of any
    vendor: its configuration mapped, its disks copied at one point in time and verified
    on the target. Prints the mapping report: what changed, what the guest may need."""
    from .cli_backup import _progress  # here: vmctl.cli imports both modules at its end

    network_map = _network_map(networks)
    password = click.prompt("Target password", hide_input=True) if ask_password_to else None
    with ctx.connect() as source, vmctl.connect(to_uri, password=password, env=target_env()) as hv:
        handle = source.vm(vm)
        with _progress(ctx, f"move {handle.name}") as progress:
            try:
                report = vmctl.move(
                    handle,
                    hv,
                    name=name,
                    network_map=network_map,
                    storage=storage,
                    power_on=start,
                    keep_source=not delete_source,
                    progress=progress,
                    dry_run=dry_run,
                    timeout=timeout,
                    shutdown_timeout=shutdown_timeout,
                    keep_macs=keep_macs,
                )
            except vmctl.AlreadyExists as exc:
                fail(str(exc).replace("name=..., ", ""), 1, "give the moved VM --name NEW")
            except vmctl.NotFound as exc:
                text = str(exc).replace("network_map={source: target}, ", "")
                fail(
                    text.replace("storage=..., ", ""),
                    exit_code(exc),
                    "map networks with --network SRC=DST",
                )
    out(ctx, report.to_dict(), lambda: click.echo(str(report)))
    if not dry_run and not report.verified:
        raise SystemExit(1)
