"""The ``vmctl`` command line: every command takes ``--json``; errors say what to do.

``--json`` may come before the command (``vmctl --json list``) or after it (``vmctl list
--json``). Errors print ``error:`` and a ``hint:`` naming the command-line flag or command
that helps (never a Python keyword).

Exit codes: 0 ok, 1 other vmctl error, 2 usage, 3 not found, 4 invalid state, 5 not
supported, 6 authentication or connection, 7 timeout, 8 validation, 9 conformance failures.
"""

from __future__ import annotations

import enum
import importlib.util
import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import attrs
import click

import vmctl
from vmctl import VM, Hypervisor, Operation

T = TypeVar("T")

# -- errors and hints ---------------------------------------------------------------------

#: The pip extra that brings each built-in driver's SDK, by URI scheme.
EXTRAS = {
    "qemu": "kvm",
    "test": "kvm",
    "esx": "esx",
    "vcenter": "esx",
    "xen": "xen",
    "xen+http": "xen",
    "xen+https": "xen",
}
#: The SDK module each built-in driver module needs, and the extra that installs it.
SDKS = {
    "vmctl_kvm": ("libvirt", "kvm", "libvirt-python"),
    "vmctl_esx": ("pyVmomi", "esx", "pyvmomi"),
    "vmctl_xen": ("XenAPI", "xen", "XenAPI"),
}

EXIT: list[tuple[type[vmctl.VmctlError], int, str]] = [
    (vmctl.ValidationError, 8, "fix the input and try again (`vmctl COMMAND --help`)"),
    (vmctl.NotFound, 3, "check the name or UUID with `vmctl list`"),
    (vmctl.InvalidState, 4, "check the VM's state with `vmctl info VM`"),
    (vmctl.NotSupported, 5, "see `vmctl info` (capabilities) and the driver's page in docs/"),
    (vmctl.AuthenticationError, 6, "check the user name and VMCTL_PASSWORD (or --ask-password)"),
    (
        vmctl.OutcomeUnknown,
        6,
        "the host may or may not have made the change: look with `vmctl list` / "
        "`vmctl info VM` before repeating it",
    ),
    (vmctl.ConnectionError, 6, "check that the host is up and the URI (-c/--uri) is right"),
    (vmctl.OperationTimeout, 7, "try again with a longer --timeout"),
    (vmctl.DriverError, 5, "see `vmctl drivers`"),
]

#: Python keywords in core messages, and the flags the CLI has for them.
_CLI_WORDS = [
    (re.compile(r"\bpass force=True\b"), "add --force"),
    (re.compile(r"\bforce=True\b"), "--force"),
    (re.compile(r"\bforce_after(=\S*)?"), "--force-after SECONDS"),
    (re.compile(r"\bpower_off\(\)"), "`vmctl power-off VM`"),
    (re.compile(r"\btimeout=(\S+)"), r"--timeout \1"),
    (re.compile(r"\bmemory=True\b"), "--memory"),
    (re.compile(r"\blinked=True\b"), "--linked"),
    (re.compile(r"\bclobber=True\b"), "clobber"),
    # an unbounded wait has no number of seconds to report
    (re.compile(r" (?:not finished |still running )?after None s"), " (no time limit)"),
]


def cli_words(text: str) -> str:
    """A core message with Python keyword arguments replaced by the CLI's flags."""
    for pattern, repl in _CLI_WORDS:
        text = pattern.sub(repl, text)
    return text


def _driver_hint(uri: str | None, message: str) -> str:
    if "no driver serves" in message:
        return "`vmctl drivers` lists the URI schemes this installation knows"
    scheme = (uri or "").partition(":")[0].lower()
    extra = EXTRAS.get(scheme)
    if extra:
        return f"pip install 'vmctl[{extra}]' (or .venv/bin/pip install -e '.[{extra}]' in a clone)"
    return "install the package that provides the driver; `vmctl drivers` shows what is there"


def hint_for(exc: vmctl.VmctlError, command: str, uri: str | None) -> str:
    """The hint printed under an error of ``command`` (e.g. "shutdown", "disk add")."""
    if isinstance(exc, vmctl.DriverError):
        return _driver_hint(uri, str(exc))
    if isinstance(exc, vmctl.InvalidState):
        illegal = bool(exc.allowed) and exc.current is not None and exc.current not in exc.allowed
        if command == "delete" and not illegal:
            return "add --force to power it off first, or `vmctl power-off VM` first"
        if command == "delete":
            return "add --force to power it off first"
        if command == "shutdown" and not illegal:
            return (
                "the guest cannot be asked to shut down (no OS, agent or tools answering): "
                "add --force-after SECONDS to power it off when it does not stop, or use "
                "`vmctl power-off VM`"
            )
        if command == "reboot" and not illegal:
            return "the guest cannot be asked to reboot: `vmctl reset VM` forces a restart"
    if isinstance(exc, vmctl.OperationTimeout) and command == "shutdown":
        return (
            "the guest did not stop in time: add --force-after SECONDS (power it off after "
            "that long), a longer --timeout, or use `vmctl power-off VM`"
        )
    if isinstance(exc, vmctl.NotSupported) and exc.capability is not None:
        return (
            f"this host lacks {exc.capability.value!r}: `vmctl info` lists its capabilities; "
            "docs/support-matrix.md shows each backend's"
        )
    for kind, _code, hint in EXIT:
        if isinstance(exc, kind):
            return hint
    return ""


def exit_code(exc: vmctl.VmctlError) -> int:
    for kind, code, _hint in EXIT:
        if isinstance(exc, kind):
            return code
    return 1


def fail(message: str, code: int = 1, hint: str = "") -> NoReturn:
    click.echo(f"error: {cli_words(message)}", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    sys.exit(code)


# -- context, output ----------------------------------------------------------------------


class Ctx:
    def __init__(
        self, uri: str | None, as_json: bool, ask_password: bool, site: Sequence[str] = ()
    ) -> None:
        self.uri = uri
        self.json = as_json
        self.ask_password = ask_password
        self.site = tuple(site)

    @contextmanager
    def connect(self) -> Iterator[Hypervisor]:
        if self.site:  # several connections of one driver as one set of hosts
            password = click.prompt("Password", hide_input=True) if self.ask_password else None
            with vmctl.Site(list(self.site), password=password) as site:
                yield site
            return
        if not self.uri:
            fail(
                "no host URI given",
                2,
                "give -c URI, or export VMCTL_URI, e.g. "
                "VMCTL_URI='sim://lab?state=$HOME/.vmctl-sim.json'",
            )
        password = click.prompt("Password", hide_input=True) if self.ask_password else None
        with vmctl.connect(self.uri, password=password) as hv:
            yield hv


def to_dict(value: Any) -> Any:
    """A JSON-ready dict of a vmctl value (enums as their values, datetimes ISO)."""

    def ser(_inst: Any, _a: Any, val: Any) -> Any:
        if isinstance(val, enum.Enum):
            return val.value
        if hasattr(val, "isoformat"):
            return val.isoformat()
        return val

    return attrs.asdict(value, value_serializer=ser)


def _set_json(click_ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        obj = click_ctx.find_object(Ctx)
        if obj is not None:
            obj.json = True


def json_option() -> click.Option:
    return click.Option(
        ["--json"],
        is_flag=True,
        expose_value=False,
        callback=_set_json,
        help="machine-readable output (also accepted before the command)",
    )


def _set_uri(click_ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        obj = click_ctx.find_object(Ctx)
        if obj is not None:
            obj.uri = value


def uri_option() -> click.Option:
    return click.Option(
        ["--uri", "-c"],
        expose_value=False,
        callback=_set_uri,
        help="host URI (also accepted before the command; default $VMCTL_URI)",
    )


class VmctlCommand(click.Command):
    """A command that takes ``--json`` and ``-c URI`` (also after its name) and turns vmctl
    errors into a message, a hint naming CLI flags, and an exit code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(json_option())
        if self.name != "conformance":  # which takes the URI as its argument
            self.params.append(uri_option())

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except vmctl.VmctlError as exc:
            obj = ctx.find_object(Ctx)
            name = " ".join(ctx.command_path.split()[1:])
            left = getattr(exc, "left_behind", None)
            if left:
                click.echo(
                    "left behind on the host: " + ", ".join(f"{k} {i}" for k, i in left), err=True
                )
            fail(str(exc), exit_code(exc), hint_for(exc, name, obj.uri if obj else None))


class VmctlGroup(click.Group):
    command_class = VmctlCommand
    group_class = type  # subgroups (snapshot, disk, nic) are VmctlGroups too


def out(ctx: Ctx, data: Any, human: Callable[[], None]) -> None:
    if ctx.json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        human()


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


def _table(title: str | None, columns: list[str], rows: list[list[str]]) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    _console().print(table)


def _fields(title: str, pairs: list[tuple[str, Any]]) -> None:
    """A two-column table of named values."""
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in pairs:
        table.add_row(key, "-" if value is None or value == "" else str(value))
    _console().print(table)


def _limit(timeout: float | None, default: float | None) -> float | None:
    return timeout if timeout is not None else default


def _progress_console() -> Any:
    """The console for the progress display, or None when it must stay silent (not a
    terminal). Tests replace this."""
    if not sys.stderr.isatty():
        return None
    return _console(stderr=True)


def _finish(op: Operation[Any]) -> Any:
    """The result of a finished operation, or its own error. (Not ``op.result()`` alone: an
    OperationTimeout raised by the request is also a ``TimeoutError``, which the Operation
    would report as "not finished after None s".)"""
    error = op.exception()
    if error is not None:
        raise error
    return op.result()


def _wait(ctx: Ctx, op: Operation[Any], what: str, limit: float | None) -> Any:
    """Wait for an operation; on a terminal (and without --json) show what is waited for,
    the time elapsed and the timeout."""
    if ctx.json or _progress_console() is None:
        while not op.done():
            time.sleep(0.05)
    else:
        _show_progress(what, limit, op.done)
    return _finish(op)


def _show_progress(what: str, limit: float | None, done: Callable[[], bool]) -> None:
    """What is waited for, the time elapsed and the timeout, until ``done()``."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    shown = f"timeout {limit:g} s" if limit is not None else "no timeout"
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        TextColumn(f"({shown})"),
        console=_progress_console(),
        transient=True,
    ) as progress:
        progress.add_task(what, total=None)
        while not done():
            time.sleep(0.1)


def _busy(ctx: Ctx, what: str, limit: float | None, call: Callable[[], T]) -> T:
    """Run a blocking call, with the same progress display as ``_wait`` on a terminal."""
    if ctx.json or _progress_console() is None:
        return call()
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vmctl-cli") as pool:
        future = pool.submit(call)
        _show_progress(what, limit, future.done)
        return future.result()


# -- the commands -------------------------------------------------------------------------


@click.group(
    cls=VmctlGroup,
    epilog="Exit codes: 0 ok, 1 other error, 2 usage, 3 not found, 4 invalid state, "
    "5 not supported or driver missing, 6 authentication or connection, 7 timeout, "
    "8 validation, 9 conformance failures.",
)
@click.option("--uri", "-c", envvar="VMCTL_URI", help="host URI (default $VMCTL_URI)")
@click.option(
    "--site",
    "site",
    multiple=True,
    help="a member URI of a vmctl.Site (repeat; instead of -c: e.g. several libvirtds)",
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--ask-password", is_flag=True, help="prompt for the password (else $VMCTL_PASSWORD)")
@click.option("--verbose", "-v", is_flag=True, help="log what vmctl does to stderr")
@click.version_option(vmctl.__version__)
@click.pass_context
def cli(
    click_ctx: click.Context,
    uri: str | None,
    site: tuple[str, ...],
    as_json: bool,
    ask_password: bool,
    verbose: bool,
) -> None:
    """Control virtual machines on KVM/QEMU, VMware ESX/vCenter, Xen or the sim.

    Every command takes --json. The host is -c URI or $VMCTL_URI; try
    VMCTL_URI='sim://lab?state=$HOME/.vmctl-sim.json' without any hypervisor.
    """
    _logging(verbose)
    click_ctx.obj = Ctx(uri, as_json, ask_password, site)


_log_handler: list[Any] = []  # the handler this CLI put on the "vmctl" logger


def _logging(verbose: bool) -> None:
    """vmctl's log goes to stderr with --verbose; otherwise the CLI's own messages say what
    happened (and Python's last-resort handler must not print the library's warnings)."""
    import logging

    logger = logging.getLogger("vmctl")
    while _log_handler:
        logger.removeHandler(_log_handler.pop())
    handler: logging.Handler
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.setLevel(logging.INFO)
    else:
        handler = logging.NullHandler()
    logger.addHandler(handler)
    _log_handler.append(handler)


pass_ctx = click.make_pass_decorator(Ctx)


def driver_status(target: str) -> str:
    """Whether the driver behind ``module:Class`` can load here, and if not what to install."""
    module = target.partition(":")[0]
    top = module.split(".")[0]
    try:
        found = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return f"missing: install the package providing {module}"
    if top in SDKS:
        sdk, extra, dist = SDKS[top]
        try:
            sdk_found = importlib.util.find_spec(sdk) is not None
        except (ImportError, ValueError):
            sdk_found = False
        if not sdk_found:
            return f"SDK missing: pip install 'vmctl[{extra}]' ({dist})"
    return "installed"


@cli.command()
@pass_ctx
def drivers(ctx: Ctx) -> None:
    """List the known drivers, their URI schemes, and whether they can load here."""
    found = dict(vmctl.available_drivers())
    data = {k: {"driver": v, "status": driver_status(v)} for k, v in found.items()}
    out(
        ctx,
        data,
        lambda: _table(
            "drivers",
            ["scheme", "driver", "status"],
            [[k, v["driver"], v["status"]] for k, v in data.items()],
        ),
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


def _disks(title: str, disks: tuple[vmctl.DiskInfo, ...]) -> None:
    _table(
        title,
        ["id", "name", "MiB", "bus", "path"],
        [[d.id, d.name or "-", str(d.size_mib), d.bus or "-", d.path or "-"] for d in disks],
    )


def _show_config(config: vmctl.VMConfig, info: vmctl.VMInfo | None = None) -> None:
    pairs: list[tuple[str, Any]] = [("name", config.name), ("uuid", config.uuid)]
    if info is not None:
        pairs += [("state", f"{info.state.value} ({info.reason.value})"), ("host", info.host)]
    pairs += [
        ("vCPUs", config.vcpus),
        ("memory", f"{config.memory_mib} MiB"),
        ("guest OS", config.guest_os.value),
        ("description", config.description),
    ]
    for key, value in config.resources.set_fields().items():
        pairs.append((key, value))
    _fields(config.name, pairs)
    if config.disks:
        _disks("disks", config.disks)
    if config.nics:
        _table(
            "NICs",
            ["id", "network", "MAC", "model"],
            [[n.id, n.network, n.mac, n.model or "-"] for n in config.nics],
        )


@cli.command()
@click.argument("vm", required=False)
@pass_ctx
def info(ctx: Ctx, vm: str | None) -> None:
    """Show the host (no VM given), or one VM's state and configuration."""
    with ctx.connect() as hv:
        if vm is None:
            host = hv.host_info()
            caps = sorted(c.value for c in hv.capabilities)
            data: dict[str, Any] = {
                "host": to_dict(host),
                "driver": hv.driver_name,
                "uri": str(hv.uri),
                "capabilities": caps,
            }

            def human() -> None:
                pairs = [("uri", str(hv.uri)), ("driver", hv.driver_name)]
                pairs += [(k, v) for k, v in to_dict(host).items()]
                _fields(host.name, pairs)
                _table("capabilities", ["capability"], [[c] for c in caps])

        else:
            handle = hv.vm(vm)
            vm_info, config = handle.info(), handle.config()
            data = {"info": to_dict(vm_info), "config": to_dict(config)}

            def human() -> None:
                _show_config(config, vm_info)

    out(ctx, data, human)


def _state_command(name: str, method: str, doc: str, *, options: list[Any] | None = None) -> None:
    def command(
        ctx: Ctx, /, vm: str, timeout: float | None, force_after: float | None = None
    ) -> None:
        with ctx.connect() as hv:
            handle = hv.vm(vm)
            default = hv.timeouts.shutdown_s if method == "shutdown" else hv.timeouts.operation_s
            limit = _limit(timeout, default)
            kw: dict[str, Any] = {"wait": False, "timeout": limit}
            if method == "shutdown":
                kw["force_after"] = force_after
            op = getattr(handle, method)(**kw)
            result = _wait(ctx, op, f"{name} {handle.name}", limit)
        out(
            ctx,
            to_dict(result),
            lambda: click.echo(f"{result.name}: {result.state.value} ({result.reason.value})"),
        )

    command.__doc__ = doc
    decorated: Any = pass_ctx(command)
    for opt in options or []:
        decorated = opt(decorated)
    decorated = click.option(
        "--timeout", type=float, default=None, help="seconds to wait (default: the connection's)"
    )(decorated)
    decorated = click.argument("vm")(decorated)
    cli.command(name, help=doc)(decorated)


_state_command("start", "start", "Power a VM on; returns once it runs.")
_state_command("power-off", "power_off", "Force a VM off (pull the plug).")
_state_command("reboot", "reboot", "Ask the guest to reboot (`vmctl reset` forces it).")
_state_command("reset", "reset", "Force a restart.")
_state_command("pause", "pause", "Pause a VM (memory kept in RAM).")
_state_command("resume", "resume", "Resume a paused or suspended VM.")
_state_command("suspend", "suspend", "Suspend a VM to disk.")
_state_command(
    "shutdown",
    "shutdown",
    "Ask the guest to shut down; returns once it is off. A guest that cannot be asked "
    "fails at once: add --force-after, or use `vmctl power-off`.",
    options=[
        click.option(
            "--force-after",
            type=float,
            default=None,
            metavar="SECONDS",
            help="power it off if still running after this many seconds",
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
        limit = hv.timeouts.operation_s
        deleted = _busy(ctx, f"delete {handle.name}", limit, lambda: handle.delete(force=force))
    out(ctx, {"deleted": deleted}, lambda: click.echo("deleted:\n  " + "\n  ".join(deleted)))


@cli.command()
@click.argument("name")
@click.option("--vcpus", type=int, default=1, show_default=True)
@click.option("--memory", "memory_mib", type=int, default=512, show_default=True, help="MiB")
@click.option("--disk", "disks", type=int, multiple=True, help="a new disk of N MiB (repeat)")
@click.option("--pool", default=None, help="storage pool / datastore for the disks")
@click.option("--nic", "nics", multiple=True, help="a NIC on this network (repeat)")
@click.option(
    "--guest-os",
    type=click.Choice([g.value for g in vmctl.GuestOS]),
    default="other",
    show_default=True,
)
@click.option("--boot-kernel", default=None, metavar="PATH", help="boot this kernel (host path)")
@click.option("--boot-initrd", default=None, metavar="PATH", help="with this initrd")
@click.option("--boot-cmdline", default="", metavar="TEXT", help="kernel command line")
@click.option("--boot-iso", default=None, metavar="PATH", help="boot this ISO image instead")
@click.option("--description", default="")
@click.option("--start", is_flag=True, help="start it once created")
@pass_ctx
def create(
    ctx: Ctx,
    name: str,
    vcpus: int,
    memory_mib: int,
    disks: tuple[int, ...],
    pool: str | None,
    nics: tuple[str, ...],
    guest_os: str,
    boot_kernel: str | None,
    boot_initrd: str | None,
    boot_cmdline: str,
    boot_iso: str | None,
    description: str,
    start: bool,
) -> None:
    """Create a VM (stopped, or running with --start).

    Without --boot-kernel or --boot-iso the VM has nothing to boot: it runs, but no guest
    answers a shutdown (use `vmctl power-off`, or `shutdown --force-after`).
    """
    boot = None
    if boot_kernel or boot_iso or boot_initrd or boot_cmdline:
        try:
            boot = vmctl.BootSource(
                kernel=boot_kernel, initrd=boot_initrd, cmdline=boot_cmdline, iso=boot_iso
            )
        except vmctl.ValidationError as exc:
            fail(
                str(exc),
                8,
                "give --boot-kernel PATH [--boot-initrd PATH] [--boot-cmdline TEXT], "
                "or --boot-iso PATH",
            )
    spec = vmctl.VMSpec(
        name=name,
        vcpus=vcpus,
        memory_mib=memory_mib,
        disks=[vmctl.DiskSpec(size_mib=d, pool=pool) for d in disks],
        nics=[vmctl.NicSpec(network=n) for n in nics],
        guest_os=vmctl.GuestOS(guest_os),
        boot=boot,
        description=description,
    )
    with ctx.connect() as hv:
        limit = hv.timeouts.operation_s
        made = _busy(ctx, f"create {name}", limit, lambda: hv.create_vm(spec, start=start))
        info_ = made.info()
    out(
        ctx,
        to_dict(info_),
        lambda: click.echo(f"created {info_.name} ({info_.uuid}), {info_.state.value}"),
    )


@cli.command()
@click.argument("vm")
@click.option("--vcpus", type=int, default=None, help="number of vCPUs")
@click.option("--memory", "memory_mib", type=int, default=None, help="memory in MiB")
@pass_ctx
def reconfigure(ctx: Ctx, vm: str, vcpus: int | None, memory_mib: int | None) -> None:
    """Change a VM's vCPUs and/or memory (while stopped, or live where the host can)."""
    if vcpus is None and memory_mib is None:
        fail("nothing to change", 2, "give --vcpus N and/or --memory MiB")
    with ctx.connect() as hv:
        config = hv.vm(vm).reconfigure(vcpus=vcpus, memory_mib=memory_mib)
    out(ctx, to_dict(config), lambda: _show_config(config))


RESOURCE_OPTIONS = [
    ("cpu_shares", "--cpu-shares", "relative CPU weight between VMs"),
    ("cpu_reservation_percent", "--cpu-reservation", "guaranteed CPU, percent of one core"),
    ("cpu_limit_percent", "--cpu-limit", "CPU cap, percent of one core (200 = two cores)"),
    ("memory_shares", "--memory-shares", "relative memory weight between VMs"),
    ("memory_reservation_mib", "--memory-reservation", "guaranteed memory, MiB"),
    ("memory_limit_mib", "--memory-limit", "memory cap, MiB"),
]


def _resource_options(fn: Any) -> Any:
    for dest, flag, help_ in reversed(RESOURCE_OPTIONS):
        fn = click.option(flag, dest, type=int, default=None, help=help_)(fn)
    return fn


@cli.command()
@click.argument("vm")
@_resource_options
@pass_ctx
def resources(ctx: Ctx, /, vm: str, **controls: int | None) -> None:
    """Show or set a VM's resource controls (shares, reservations, limits).

    Only the controls given change; with none given, shows the current ones.
    """
    wanted = {k: v for k, v in controls.items() if v is not None}
    with ctx.connect() as hv:
        handle = hv.vm(vm)
        config = handle.set_resources(vmctl.Resources(**wanted)) if wanted else handle.config()
    data = to_dict(config.resources)

    def human() -> None:
        flags = {dest: flag for dest, flag, _ in RESOURCE_OPTIONS}
        _table(
            f"{config.name}: resources",
            ["control", "flag", "value"],
            [[k, flags[k], "-" if v is None else str(v)] for k, v in data.items()],
        )

    out(ctx, data, human)


@cli.group()
def disk() -> None:
    """List, add and remove a VM's disks."""


@disk.command("list")
@click.argument("vm")
@pass_ctx
def disk_list(ctx: Ctx, vm: str) -> None:
    """List a VM's disks (their ids are what `disk remove` takes)."""
    with ctx.connect() as hv:
        disks = hv.vm(vm).config().disks
    out(
        ctx,
        [to_dict(d) for d in disks],
        lambda: _disks(f"{vm}: disks", disks),
    )


@disk.command("add")
@click.argument("vm")
@click.option("--size", "size_mib", type=int, required=True, help="MiB")
@click.option("--name", default=None)
@click.option("--bus", type=click.Choice([b.value for b in vmctl.DiskBus]), default="default")
@click.option("--pool", default=None, help="storage pool / datastore")
@click.option("--source", default=None, help="an existing image to copy onto the disk")
@pass_ctx
def disk_add(
    ctx: Ctx,
    vm: str,
    size_mib: int,
    name: str | None,
    bus: str,
    pool: str | None,
    source: str | None,
) -> None:
    """Add a new disk (hot-plugged if the VM runs and the host can)."""
    spec = vmctl.DiskSpec(
        size_mib=size_mib, name=name, bus=vmctl.DiskBus(bus), pool=pool, source=source
    )
    with ctx.connect() as hv:
        new = hv.vm(vm).add_disk(spec)
    out(ctx, to_dict(new), lambda: click.echo(f"added disk {new.id} ({new.size_mib} MiB)"))


@disk.command("remove")
@click.argument("vm")
@click.argument("disk_id")
@pass_ctx
def disk_remove(ctx: Ctx, vm: str, disk_id: str) -> None:
    """Detach and delete a disk (its id from `vmctl disk list VM`)."""
    with ctx.connect() as hv:
        hv.vm(vm).remove_disk(disk_id)
    out(ctx, {"removed": disk_id}, lambda: click.echo(f"removed disk {disk_id}"))


@cli.group()
def nic() -> None:
    """List, add and remove a VM's NICs."""


@nic.command("list")
@click.argument("vm")
@pass_ctx
def nic_list(ctx: Ctx, vm: str) -> None:
    """List a VM's NICs (their ids are what `nic remove` takes)."""
    with ctx.connect() as hv:
        nics = hv.vm(vm).config().nics
    out(
        ctx,
        [to_dict(n) for n in nics],
        lambda: _table(
            f"{vm}: NICs",
            ["id", "network", "MAC", "model"],
            [[n.id, n.network, n.mac, n.model or "-"] for n in nics],
        ),
    )


@nic.command("add")
@click.argument("vm")
@click.option("--network", required=True, help="network / port group name")
@click.option("--mac", default=None)
@click.option("--model", default=None, help="e.g. virtio, e1000, vmxnet3")
@pass_ctx
def nic_add(ctx: Ctx, vm: str, network: str, mac: str | None, model: str | None) -> None:
    """Add a NIC (hot-plugged if the VM runs and the host can)."""
    spec = vmctl.NicSpec(network=network, mac=mac, model=model)
    with ctx.connect() as hv:
        new = hv.vm(vm).add_nic(spec)
    out(ctx, to_dict(new), lambda: click.echo(f"added NIC {new.id} on {new.network} ({new.mac})"))


@nic.command("remove")
@click.argument("vm")
@click.argument("nic_id")
@pass_ctx
def nic_remove(ctx: Ctx, vm: str, nic_id: str) -> None:
    """Detach a NIC (its id from `vmctl nic list VM`)."""
    with ctx.connect() as hv:
        hv.vm(vm).remove_nic(nic_id)
    out(ctx, {"removed": nic_id}, lambda: click.echo(f"removed NIC {nic_id}"))


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
        handle = hv.vm(vm)
        snap = _busy(
            ctx,
            f"snapshot {handle.name}",
            hv.timeouts.operation_s,
            lambda: handle.snapshot(name, memory=memory, description=description),
        )
    out(ctx, to_dict(snap), lambda: click.echo(f"snapshot {snap.name} ({snap.id})"))


@snapshot.command("list")
@click.argument("vm")
@pass_ctx
def snapshot_list(ctx: Ctx, vm: str) -> None:
    """List a VM's snapshots as a tree."""
    with ctx.connect() as hv:
        tree = hv.vm(vm).snapshot_tree()

    def human() -> None:
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
        _console().print(root)

    out(ctx, [to_dict(n) for n in tree], human)


@snapshot.command("revert")
@click.argument("vm")
@click.argument("snapshot_name")
@pass_ctx
def snapshot_revert(ctx: Ctx, vm: str, snapshot_name: str) -> None:
    """Revert a VM to a snapshot."""
    with ctx.connect() as hv:
        handle = hv.vm(vm)
        result = _busy(
            ctx,
            f"revert {handle.name} to {snapshot_name}",
            hv.timeouts.operation_s,
            lambda: handle.revert(snapshot_name),
        )
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
        handle = hv.vm(vm)
        made = _busy(
            ctx,
            f"clone {handle.name} as {name}",
            hv.timeouts.operation_s,
            lambda: handle.clone(name, linked=linked),
        )
        new = made.info()
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
        limit = _limit(timeout, hv.timeouts.operation_s)
        moved: VM = _busy(
            ctx,
            f"migrate {handle.name} to {target_uri}",
            limit,
            lambda: handle.migrate(target, timeout=limit),
        )
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


_CLAUSE_ID = re.compile(r"^[A-Z]+(?:-[A-Z0-9]+)*-?$")


@cli.command()
@click.argument("uri", required=False, envvar="VMCTL_URI")
@click.option("--other-uri", envvar="VMCTL_OTHER_URI", help="second host, for migration")
@click.option("--report", type=click.Path(dir_okay=False), help="write FILE.json or FILE.md")
@click.option(
    "--opt",
    "opts",
    multiple=True,
    metavar="KEY=VALUE",
    help="kit option: network, pool, boot_kernel, boot_initrd, boot_cmdline, boot_iso, "
    "memory_mib, disk_mib, op_timeout, settle_s, backup_repo, hosts_uri, fail_host, "
    "fail_command, revive_command (over $VMCTL_KIT_OPTIONS and what the driver finds on "
    "the host)",
)
@click.option("--prefix", default=None, help="prefix of the kit's objects (default vmctl-kit-)")
@click.option(
    "--move-to",
    default=None,
    metavar="URI",
    help="another vendor's hypervisor for the MOVE clauses (credentials from $VMCTL_TO_*)",
)
@click.option(
    "--clause",
    "clauses",
    multiple=True,
    metavar="ID",
    help="only the clauses with this id or id prefix, e.g. LIFE-START (repeat)",
)
@click.option(
    "-k",
    "keyword",
    default=None,
    help="only kit tests matching this pytest expression (a clause id works too)",
)
@pass_ctx
def conformance(
    ctx: Ctx,
    uri: str | None,
    other_uri: str | None,
    report: str | None,
    opts: tuple[str, ...],
    prefix: str | None,
    clauses: tuple[str, ...],
    keyword: str | None,
    move_to: str | None,
) -> None:
    """Run the conformance kit against a host; prints the verified support matrix."""
    if importlib.util.find_spec("pytest") is None:
        fail(
            "the conformance kit needs pytest, which is not installed",
            2,
            "pip install 'vmctl[kit]' (in a clone: .venv/bin/pip install -e '.[kit]'; "
            "`make demo` installs it)",
        )
    from vmctl_conformance import run

    if not uri:
        fail("give a URI", 2, "vmctl conformance URI, or set VMCTL_URI")
    options = {}
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep:
            fail(f"--opt wants KEY=VALUE, got {opt!r}", 2, "e.g. --opt network=default")
        options[key] = value
    selected = list(clauses)
    pytest_args: list[str] = []
    if keyword and _CLAUSE_ID.match(keyword):
        selected.append(keyword)  # kit tests are named after what they do, not clause ids
    elif keyword:
        pytest_args = ["-k", keyword]
    if move_to:
        pytest_args += ["--vmctl-move-to", move_to]
    try:
        result = run(
            uri,
            other_uri=other_uri,
            report=report,
            options=options,
            prefix=prefix,
            clauses=selected,
            pytest_args=pytest_args,
        )
    except RuntimeError as exc:
        fail(
            str(exc).strip(),
            1,
            "check the URI and options; --clause takes clause ids (e.g. LIFE-START), -k a "
            "pytest expression over kit test names",
        )
    if ctx.json:
        click.echo(result.to_json())
    elif result.refused:
        click.echo(f"the kit did not run on {uri}: {result.refused}", err=True)
    else:
        counts = result.counts()
        filtered = bool(selected or pytest_args)
        rows = [
            [cid, r.status, r.reason[: 400 if r.status == "fail" else 90]]
            for cid, r in sorted(result.results.items())
            if not (filtered and r.reason.startswith("not run"))
        ]
        _table(f"{uri} ({result.driver})", ["clause", "status", "note"], rows)
        unselected = sum(
            1
            for r in result.results.values()
            if r.status == "skip" and r.reason.startswith("not run")
        )
        click.echo(
            f"{counts['pass']} pass, {counts['fail']} fail, {counts['not-supported']} "
            f"not-supported, {counts['skip'] - unselected} skip"
            + (f" ({unselected} clauses not selected)" if unselected else "")
            + f"; leaked: {len(result.leaked)}"
        )
        for leak in result.leaked:
            click.echo(f"leaked: {leak}", err=True)
    if not result.ok:
        sys.exit(9)


from . import cli_backup as _cli_backup  # noqa: E402, F401  (registers backup, restore, ...)
from . import cli_hosts as _cli_hosts  # noqa: E402, F401  (registers hosts, evacuate, ...)
from . import cli_move as _cli_move  # noqa: E402, F401  (registers move)
from . import cli_recover as _cli_recover  # noqa: E402, F401  (registers recover)


def main() -> None:
    """Entry point: run the CLI, turning vmctl errors into messages and exit codes."""
    try:
        cli(standalone_mode=True)
    except vmctl.VmctlError as exc:  # raised outside a command (e.g. while parsing)
        fail(str(exc), exit_code(exc), hint_for(exc, "", None))


if __name__ == "__main__":
    # `python -m vmctl.cli` runs this file as __main__, a second copy of the module: the
    # command modules above registered their commands on the imported vmctl.cli's group.
    from vmctl.cli import main as _main

    _main()
