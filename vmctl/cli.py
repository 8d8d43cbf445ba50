"""The ``vmctl`` command line: every command takes ``--json``; errors say what to do.

Exit codes: 0 ok, 1 other vmctl error, 2 usage, 3 not found, 4 invalid state, 5 not
supported, 6 authentication or connection, 7 timeout, 8 validation, 9 conformance failures.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click

import vmctl
from vmctl import VM, Hypervisor, Operation
from vmctl._model import to_dict

EXIT = [
    (vmctl.ValidationError, 8, "fix the input and try again"),
    (vmctl.NotFound, 3, "check the name or UUID with `vmctl list`"),
    (vmctl.InvalidState, 4, "check the VM's state with `vmctl info`"),
    (vmctl.NotSupported, 5, "see `vmctl drivers` and the driver's page in docs/"),
    (vmctl.AuthenticationError, 6, "check the user name and VMCTL_PASSWORD"),
    (vmctl.ConnectionError, 6, "check that the host is up and the URI is right"),
    (vmctl.OperationTimeout, 7, "try again with a longer --timeout"),
    (vmctl.DriverError, 5, "install the driver's extra, e.g. pip install 'vmctl[kvm]'"),
]


class Ctx:
    def __init__(self, uri: str | None, as_json: bool, ask_password: bool) -> None:
        self.uri = uri
        self.json = as_json
        self.ask_password = ask_password

    @contextmanager
    def connect(self) -> Iterator[Hypervisor]:
        password = click.prompt("Password", hide_input=True) if self.ask_password else None
        with vmctl.connect(self.uri, password=password) as hv:
            yield hv


def fail(message: str, code: int = 1, hint: str = "") -> NoReturn:
    click.echo(f"error: {message}", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    sys.exit(code)


def out(ctx: Ctx, data: Any, human: Callable[[], None]) -> None:
    if ctx.json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        human()


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def _wait(ctx: Ctx, op: Operation[Any], what: str) -> Any:
    """Wait for an operation, with a spinner on a terminal."""
    if ctx.json or not sys.stderr.isatty():
        return op.result()
    from rich.console import Console

    with Console(stderr=True).status(f"{what}..."):
        while not op.done():
            time.sleep(0.1)
    return op.result()


@click.group()
@click.option("--uri", "-c", envvar="VMCTL_URI", help="host URI (default $VMCTL_URI)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--ask-password", is_flag=True, help="prompt for the password (else $VMCTL_PASSWORD)")
@click.version_option(vmctl.__version__)
@click.pass_context
def cli(click_ctx: click.Context, uri: str | None, as_json: bool, ask_password: bool) -> None:
    """Control virtual machines on KVM/QEMU, VMware ESX/vCenter, Xen or the sim."""
    click_ctx.obj = Ctx(uri, as_json, ask_password)


pass_ctx = click.make_pass_decorator(Ctx)


@cli.command()
@pass_ctx
def drivers(ctx: Ctx) -> None:
    """List the installed drivers and their URI schemes."""
    found = dict(vmctl.available_drivers())
    out(
        ctx,
        found,
        lambda: _table("drivers", ["scheme", "driver"], [[k, v] for k, v in found.items()]),
    )


@cli.command("list")
@pass_ctx
def list_(ctx: Ctx) -> None:
    """List VMs with their state."""
    with ctx.connect() as hv:
        infos = hv.list_vms()
    out(
        ctx,
        [to_dict(i) for i in infos],
        lambda: _table(
            str(hv.uri),
            ["name", "state", "reason", "vCPUs", "MiB", "uuid"],
            [
                [i.name, i.state.value, i.reason.value, str(i.vcpus), str(i.memory_mib), i.uuid]
                for i in infos
            ],
        ),
    )


@cli.command()
@click.argument("vm", required=False)
@pass_ctx
def info(ctx: Ctx, vm: str | None) -> None:
    """Show the host, or one VM's state and configuration."""
    with ctx.connect() as hv:
        if vm is None:
            host = hv.host_info()
            data = {
                "host": to_dict(host),
                "driver": hv.driver_name,
                "capabilities": sorted(c.value for c in hv.capabilities),
            }
        else:
            handle = hv.vm(vm)
            data = {"info": to_dict(handle.info()), "config": to_dict(handle.config())}

    def human() -> None:
        from rich.console import Console
        from rich.pretty import Pretty

        Console().print(Pretty(data))

    out(ctx, data, human)


def _state_command(name: str, method: str, doc: str, **extra: Any) -> None:
    @cli.command(name, help=doc)
    @click.argument("vm")
    @click.option("--timeout", type=float, default=None, help="seconds to wait")
    @pass_ctx
    def command(ctx: Ctx, /, vm: str, timeout: float | None, **kw: Any) -> None:
        with ctx.connect() as hv:
            handle = hv.vm(vm)
            op = getattr(handle, method)(wait=False, timeout=timeout, **kw)
            result = _wait(ctx, op, f"{name} {handle.name}")
        out(
            ctx,
            to_dict(result),
            lambda: click.echo(f"{result.name}: {result.state.value} ({result.reason.value})"),
        )

    for opt in extra.get("options", []):
        command = opt(command)


_state_command("start", "start", "Power a VM on; returns once it runs.")
_state_command("power-off", "power_off", "Force a VM off (pull the plug).")
_state_command("reboot", "reboot", "Ask the guest to reboot.")
_state_command("reset", "reset", "Force a restart.")
_state_command("pause", "pause", "Pause a VM (memory kept in RAM).")
_state_command("resume", "resume", "Resume a paused or suspended VM.")
_state_command("suspend", "suspend", "Suspend a VM to disk.")
_state_command(
    "shutdown",
    "shutdown",
    "Ask the guest to shut down; returns once it is off.",
    options=[
        click.option(
            "--force-after",
            type=float,
            default=None,
            help="power off if still running after this many s",
        )
    ],
)


@cli.command()
@click.argument("vm")
@click.option("--force", is_flag=True, help="power it off first if it runs")
@click.option("--yes", is_flag=True, help="do not ask")
@pass_ctx
def delete(ctx: Ctx, vm: str, force: bool, yes: bool) -> None:
    """Delete a VM and the disks it owns."""
    with ctx.connect() as hv:
        handle = hv.vm(vm)
        if not yes and not ctx.json and sys.stdin.isatty():
            click.confirm(f"Delete VM {handle.name!r} ({handle.uuid}) and its disks?", abort=True)
        deleted = handle.delete(force=force)
    out(ctx, {"deleted": deleted}, lambda: click.echo("deleted:\n  " + "\n  ".join(deleted)))


@cli.command()
@click.argument("name")
@click.option("--vcpus", type=int, default=1)
@click.option("--memory", "memory_mib", type=int, default=512, help="MiB")
@click.option("--disk", "disks", type=int, multiple=True, help="disk size in MiB (repeat)")
@click.option("--nic", "nics", multiple=True, help="network name (repeat)")
@click.option("--start", is_flag=True)
@pass_ctx
def create(
    ctx: Ctx,
    name: str,
    vcpus: int,
    memory_mib: int,
    disks: tuple[int, ...],
    nics: tuple[str, ...],
    start: bool,
) -> None:
    """Create a VM."""
    spec = vmctl.VMSpec(
        name=name,
        vcpus=vcpus,
        memory_mib=memory_mib,
        disks=[vmctl.DiskSpec(size_mib=d) for d in disks],
        nics=[vmctl.NicSpec(network=n) for n in nics],
    )
    with ctx.connect() as hv:
        info_ = hv.create_vm(spec, start=start).info()
    out(
        ctx,
        to_dict(info_),
        lambda: click.echo(f"created {info_.name} ({info_.uuid}), {info_.state.value}"),
    )


@cli.group()
def snapshot() -> None:
    """Create, list, revert and delete snapshots."""


@snapshot.command("create")
@click.argument("vm")
@click.argument("name")
@click.option("--memory", is_flag=True, help="include the running guest's memory")
@click.option("--description", default="")
@pass_ctx
def snapshot_create(ctx: Ctx, vm: str, name: str, memory: bool, description: str) -> None:
    """Take a snapshot."""
    with ctx.connect() as hv:
        snap = hv.vm(vm).snapshot(name, memory=memory, description=description)
    out(ctx, to_dict(snap), lambda: click.echo(f"snapshot {snap.name} ({snap.id})"))


@snapshot.command("list")
@click.argument("vm")
@pass_ctx
def snapshot_list(ctx: Ctx, vm: str) -> None:
    """List a VM's snapshots as a tree."""
    with ctx.connect() as hv:
        tree = hv.vm(vm).snapshot_tree()

    def human() -> None:
        from rich.console import Console
        from rich.tree import Tree

        root = Tree(vm)

        def add(parent: Tree, node: vmctl.SnapshotNode) -> None:
            s = node.snapshot
            mark = " (current)" if s.current else ""
            branch = parent.add(
                f"{s.name}{mark}  {s.created:%Y-%m-%d %H:%M:%S}"
                f"{'  +memory' if s.with_memory else ''}"
            )
            for child in node.children:
                add(branch, child)

        for node in tree:
            add(root, node)
        Console().print(root)

    out(ctx, [to_dict(n) for n in tree], human)


@snapshot.command("revert")
@click.argument("vm")
@click.argument("snapshot_name")
@pass_ctx
def snapshot_revert(ctx: Ctx, vm: str, snapshot_name: str) -> None:
    """Revert a VM to a snapshot."""
    with ctx.connect() as hv:
        result = hv.vm(vm).revert(snapshot_name)
    out(ctx, to_dict(result), lambda: click.echo(f"{result.name}: {result.state.value}"))


@snapshot.command("delete")
@click.argument("vm")
@click.argument("snapshot_name")
@pass_ctx
def snapshot_delete(ctx: Ctx, vm: str, snapshot_name: str) -> None:
    """Delete a snapshot."""
    with ctx.connect() as hv:
        hv.vm(vm).delete_snapshot(snapshot_name)
    out(ctx, {"deleted": snapshot_name}, lambda: click.echo(f"deleted {snapshot_name}"))


@cli.command()
@click.argument("vm")
@click.argument("name")
@click.option("--linked", is_flag=True)
@pass_ctx
def clone(ctx: Ctx, vm: str, name: str, linked: bool) -> None:
    """Clone a stopped VM."""
    with ctx.connect() as hv:
        new = hv.vm(vm).clone(name, linked=linked).info()
    out(ctx, to_dict(new), lambda: click.echo(f"cloned as {new.name} ({new.uuid})"))


@cli.command()
@click.argument("vm")
@click.argument("target_uri")
@click.option("--timeout", type=float, default=None)
@pass_ctx
def migrate(ctx: Ctx, vm: str, target_uri: str, timeout: float | None) -> None:
    """Move a VM to another host of the same backend (live if it runs)."""
    with ctx.connect() as hv, vmctl.connect(target_uri) as target:
        handle = hv.vm(vm)
        moved: VM = handle.migrate(target, timeout=timeout)
        result = moved.info()
    out(
        ctx,
        to_dict(result),
        lambda: click.echo(f"{result.name} is now on {target_uri}, {result.state.value}"),
    )


@cli.command()
@click.option("--vm", default=None, help="only this VM")
@click.option("--timeout", type=float, default=None, help="stop after this many seconds")
@pass_ctx
def watch(ctx: Ctx, vm: str | None, timeout: float | None) -> None:
    """Print events as they happen."""
    with ctx.connect() as hv:
        target = hv.vm(vm) if vm else None
        with hv.watch(vm=target, timeout=timeout) as events:
            for event in events:
                if ctx.json:
                    click.echo(json.dumps(to_dict(event), default=str))
                else:
                    state = f" {event.state.value}" if event.state else ""
                    click.echo(
                        f"{event.timestamp:%H:%M:%S} {event.kind.value:<14} "
                        f"{event.vm_name or event.vm_uuid}{state} {event.detail}"
                    )


@cli.command()
@click.argument("uri", required=False, envvar="VMCTL_URI")
@click.option("--other-uri", envvar="VMCTL_OTHER_URI", help="second host, for migration")
@click.option("--report", type=click.Path(dir_okay=False), help="write FILE.json or FILE.md")
@click.option(
    "--opt",
    "opts",
    multiple=True,
    metavar="KEY=VALUE",
    help="backend option: network, pool, boot_kernel, boot_initrd, boot_cmdline, "
    "boot_iso, memory_mib, disk_mib, op_timeout",
)
@click.option("--prefix", default=None, help="prefix of the kit's objects")
@click.option("-k", "keyword", default=None, help="only tests matching this expression")
@pass_ctx
def conformance(
    ctx: Ctx,
    uri: str | None,
    other_uri: str | None,
    report: str | None,
    opts: tuple[str, ...],
    prefix: str | None,
    keyword: str | None,
) -> None:
    """Run the conformance kit against a host; prints the verified support matrix."""
    from vmctl_conformance import run

    if not uri:
        fail("give a URI (or set VMCTL_URI)", 2)
    options = {}
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep:
            fail(f"--opt wants KEY=VALUE, got {opt!r}", 2)
        options[key] = value
    result = run(
        uri,
        other_uri=other_uri,
        report=report,
        options=options,
        prefix=prefix,
        pytest_args=["-k", keyword] if keyword else (),
    )
    if ctx.json:
        click.echo(result.to_json())
    else:
        counts = result.counts()
        rows = [[cid, r.status, r.reason[:90]] for cid, r in sorted(result.results.items())]
        _table(f"{uri} ({result.driver})", ["clause", "status", "note"], rows)
        click.echo(
            f"{counts['pass']} pass, {counts['fail']} fail, {counts['not-supported']} "
            f"not supported, {counts['skip']} skipped; leaked: {len(result.leaked)}"
        )
        if result.refused:
            click.echo(f"refused: {result.refused}", err=True)
        for leak in result.leaked:
            click.echo(f"leaked: {leak}", err=True)
    if not result.ok:
        sys.exit(9)


def main() -> None:
    """Entry point: run the CLI, turning vmctl errors into messages and exit codes."""
    try:
        cli(standalone_mode=True)
    except vmctl.VmctlError as exc:
        for kind, code, hint in EXIT:
            if isinstance(exc, kind):
                fail(str(exc), code, hint)
        fail(str(exc), 1)


if __name__ == "__main__":
    main()
