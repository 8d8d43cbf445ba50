"""The kit as a pytest plugin: ``pytest -p vmctl_conformance.plugin``.

Options: ``--vmctl-uri`` (default $VMCTL_URI), ``--vmctl-other-uri`` (a second host of the
same backend, for migration; default $VMCTL_OTHER_URI), ``--vmctl-prefix``, ``--vmctl-opt
KEY=VALUE`` (backend options: network, pool, boot_kernel, boot_initrd, boot_cmdline, boot_iso,
memory_mib, disk_mib, op_timeout, backup_repo, hosts_uri, fail_host, fail_command,
revive_command), ``--vmctl-report FILE.json|FILE.md``.
Credentials come from the environment that ``vmctl.connect()`` reads (VMCTL_PASSWORD, ...).
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Iterator
from typing import Any

import pytest

import vmctl
from vmctl import Capability, Hypervisor

from . import _defaults
from ._clauses import load_clauses
from ._expect import compare_note, failure_note
from ._kit import PROBES, Kit, leftovers
from .report import ClauseResult, Report

_STATE: dict[str, Any] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vmctl", "vmctl conformance kit")
    group.addoption("--vmctl-uri", default=None, help="the host to test (default $VMCTL_URI)")
    group.addoption(
        "--vmctl-other-uri",
        default=None,
        help="a second host of the same backend, for migration (default $VMCTL_OTHER_URI)",
    )
    group.addoption(
        "--vmctl-move-to",
        default=None,
        help="a hypervisor of another vendor to move VMs to, for the MOVE clauses (default "
        "$VMCTL_MOVE_TO; without it they move to the second host)",
    )
    group.addoption(
        "--vmctl-prefix", default="vmctl-kit-", help="prefix of every object the kit creates"
    )
    group.addoption(
        "--vmctl-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="backend option (network, pool, boot_kernel, boot_initrd, "
        "boot_cmdline, boot_iso, memory_mib, disk_mib, op_timeout, backup_repo, hosts_uri, "
        "fail_host, fail_command, revive_command)",
    )
    group.addoption("--vmctl-report", default=None, help="write the report (.json or .md)")
    group.addoption(
        "--vmctl-clause",
        action="append",
        default=[],
        metavar="ID",
        help="only tests naming a clause with this id or id prefix, e.g. LIFE-START (repeat)",
    )


def _clause_matches(cid: str, wanted: str) -> bool:
    wanted = wanted.rstrip("-")
    return cid == wanted or cid.startswith(wanted + "-")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """--vmctl-clause: keep the tests naming one of the given clauses (by id or prefix)."""
    wanted = config.getoption("--vmctl-clause") or []
    if not wanted:
        return
    keep, drop = [], []
    for item in items:
        ids = _marker_args(item, "clause")
        if any(_clause_matches(cid, w) for cid in ids for w in wanted):
            keep.append(item)
        else:
            drop.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "clause(*ids): SPEC.md clauses a kit test checks")
    config.addinivalue_line("markers", "requires(*caps): capabilities a kit test needs")
    _STATE.clear()
    _STATE["results"] = {}
    _STATE["started"] = time.monotonic()


def _kit_options(config: pytest.Config) -> dict[str, str]:
    opts = {}
    for item in config.getoption("--vmctl-opt") or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise pytest.UsageError(f"--vmctl-opt wants KEY=VALUE, got {item!r}")
        opts[key.strip()] = value
    return opts


@pytest.fixture(scope="session")
def vmctl_uri(pytestconfig: pytest.Config) -> str:
    """The URI under test; override this fixture to point the kit at your driver."""
    uri = pytestconfig.getoption("--vmctl-uri") or os.environ.get("VMCTL_URI")
    if not uri:
        pytest.exit("the kit needs a URI: --vmctl-uri or VMCTL_URI", returncode=4)
    return str(uri)


def _driver_defaults(uri: str | None) -> dict[str, str]:
    """Kit defaults a driver knows from the URI (``Driver.kit_options``): options and, under
    "other_uri", a second host (the sim offers both)."""
    return _defaults.from_uri(uri) if uri else {}


@pytest.fixture(scope="session")
def vmctl_options(
    pytestconfig: pytest.Config,
    vmctl_uri: str,
    _connections: tuple[Hypervisor, Hypervisor | None],
) -> dict[str, str]:
    """Backend options: the driver's defaults for the URI, what it finds on the host
    (``Driver.kit_defaults``), $VMCTL_KIT_OPTIONS, then --vmctl-opt, each overriding the
    one before. Checked once, before any clause: when the kit cannot make its VMs with
    them, the run stops with a message naming the option to give."""
    hv, other = _connections
    static = _driver_defaults(vmctl_uri)
    static.pop("other_uri", None)
    found, discovery_error = _defaults.from_host(hv)
    try:
        env = _defaults.env_options()
    except _defaults.OptionsError as exc:
        _STATE["refused"] = str(exc)
        pytest.exit(str(exc), returncode=3)
    options, sources = _defaults.merge(
        {
            "driver": static,
            "host": found,
            _defaults.ENV_VAR: env,
            "command line": _kit_options(pytestconfig),
        }
    )
    _STATE["options"] = {k: _defaults.redacted(v) for k, v in options.items()}
    _STATE["option_sources"] = dict(sources)
    problem = _defaults.preflight(
        Kit(hv, other, pytestconfig.getoption("--vmctl-prefix"), options),
        sources,
        discovery_error,
    )
    if problem:
        _STATE["refused"] = problem
        pytest.exit(problem, returncode=3)
    return options


@pytest.fixture(scope="session")
def vmctl_other_uri(pytestconfig: pytest.Config, vmctl_uri: str) -> str | None:
    """A second host for migration: --vmctl-other-uri, $VMCTL_OTHER_URI, or the driver's
    suggestion; None if there is none."""
    other = pytestconfig.getoption("--vmctl-other-uri") or os.environ.get("VMCTL_OTHER_URI")
    return str(other) if other else _driver_defaults(vmctl_uri).get("other_uri")


@pytest.fixture(scope="session")
def vmctl_move_to(pytestconfig: pytest.Config) -> Iterator[Hypervisor | None]:
    """The target of the MOVE clauses: --vmctl-move-to or $VMCTL_MOVE_TO, connected with
    $VMCTL_TO_PASSWORD, $VMCTL_TO_CAFILE, ... over $VMCTL_PASSWORD, ... (as ``vmctl move``);
    None if not given."""
    uri = pytestconfig.getoption("--vmctl-move-to") or os.environ.get("VMCTL_MOVE_TO")
    if not uri:
        yield None
        return
    from vmctl.cli_move import target_env

    hv = vmctl.connect(str(uri), env=target_env())
    try:
        yield hv
    finally:
        hv.close()


@pytest.fixture(scope="session")
def _connections(
    pytestconfig: pytest.Config, vmctl_uri: str, vmctl_other_uri: str | None
) -> Iterator[tuple[Hypervisor, Hypervisor | None]]:
    hv = vmctl.connect(vmctl_uri)
    other = vmctl.connect(vmctl_other_uri) if vmctl_other_uri else None
    prefix = pytestconfig.getoption("--vmctl-prefix")
    hosts = [h for h in (hv, other) if h is not None]
    _STATE.update(
        uri=str(hv.uri),
        driver=hv.driver_name,
        capabilities=sorted(c.value for c in hv.capabilities),
        connections=hosts,
        prefix=prefix,
    )
    found = leftovers(hosts, prefix)
    if found:
        _STATE["refused"] = (
            f"the host already has {len(found)} object(s) with the prefix "
            f"{prefix!r}: {'; '.join(found)}. Remove them, or choose another prefix "
            "(`vmctl conformance --prefix`, pytest's --vmctl-prefix, run(prefix=...))."
        )
        pytest.exit(_STATE["refused"], returncode=3)
    try:
        yield hv, other
    finally:
        _STATE["leaked"] = leftovers(hosts, prefix)
        for h in hosts:
            h.close()


@pytest.fixture
def kit(
    pytestconfig: pytest.Config,
    vmctl_options: dict[str, str],
    _connections: tuple[Hypervisor, Hypervisor | None],
) -> Iterator[Kit]:
    """The connections, options and a VM factory; deletes what the test made afterwards."""
    hv, other = _connections
    k = Kit(hv, other, pytestconfig.getoption("--vmctl-prefix"), vmctl_options)
    yield k
    problems = k.cleanup()
    if problems:
        raise AssertionError(f"cleanup failed: {'; '.join(problems)}")


def pytest_assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    """A failed comparison in a clause says ``expected X, got Y`` (clauses write
    ``assert actual OP expected``); the report's note adds the statement."""
    note = compare_note(op, left, right)
    return [note] if note else None


def _marker_args(item: pytest.Item, name: str) -> list[Any]:
    return [a for m in item.iter_markers(name) for a in m.args]


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Where the driver lacks a capability the test needs, check it says so instead."""
    needed = [Capability(c) for c in _marker_args(pyfuncitem, "requires")]
    k = pyfuncitem.funcargs.get("kit")
    if not needed or not isinstance(k, Kit):
        return None
    missing = [c for c in needed if c not in k.hv.capabilities]
    if not missing:
        return None
    cap = missing[0]
    try:
        PROBES[cap](k)
    except vmctl.NotSupported as exc:
        if exc.capability not in (None, cap) and exc.capability in missing:
            cap = exc.capability
        pyfuncitem.user_properties.append(("not_supported", cap.value))
        return True
    raise AssertionError(
        f"the driver does not declare {cap.value!r}, but the request did not raise NotSupported"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()
    clauses = _marker_args(item, "clause")
    if not clauses:
        return
    results: dict[str, ClauseResult] = _STATE["results"]
    if (
        rep.when == "call"
        or (rep.when == "setup" and not rep.passed)
        or (rep.when == "teardown" and rep.failed)
    ):
        props = dict(item.user_properties)
        ns = props.get("not_supported")
        if rep.failed:
            status = "fail"
            reason = failure_note(item, call.excinfo, rep.longreprtext)
        elif rep.skipped:
            status = "skip"
            lr = rep.longrepr
            reason = str(lr[2]) if isinstance(lr, tuple) else str(lr)
        elif ns:
            status, reason = (
                "not-supported",
                str(props.get("not_supported_reason") or "")
                or f"capability {ns!r} not declared; NotSupported raised as required",
            )
        else:
            status, reason = "pass", ""
        for cid in clauses:
            prev = results.get(cid)
            if prev is None:
                results[cid] = ClauseResult(status, [item.name], reason)
                continue
            prev.tests.append(item.name)
            rank = {"fail": 3, "pass": 2, "not-supported": 1, "skip": 0}
            if rank[status] > rank[prev.status]:
                prev.status, prev.reason = status, reason


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = session.config.getoption("--vmctl-report")
    if not path or ("uri" not in _STATE and "refused" not in _STATE):
        return
    report = Report(
        uri=_STATE.get("uri", ""),
        driver=_STATE.get("driver", ""),
        capabilities=_STATE.get("capabilities", []),
        results=_STATE["results"],
        leaked=_STATE.get("leaked", []),
        refused=_STATE.get("refused", ""),
        duration_s=time.monotonic() - _STATE["started"],
        options=_STATE.get("options", {}),
        option_sources=_STATE.get("option_sources", {}),
    )
    known = load_clauses()
    for cid in known:
        report.results.setdefault(cid, ClauseResult("skip", reason="not run (deselected)"))
    report.write(path)
