"""The kit's options: where each comes from, and the check that they work before any clause.

In increasing precedence: what the driver knows from the URI (``Driver.kit_options``), what
it finds on the connected host (``Driver.kit_defaults``: a network, a pool, a bootable
guest), ``$VMCTL_KIT_OPTIONS`` (what a host's env file carries: what cannot be found, e.g. a
guest kernel), and the options given on the command line (``--opt``/``--vmctl-opt``).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping

import vmctl
from vmctl import URI, Capability, Hypervisor, _registry

from ._kit import Kit

#: The environment variable with kit options: ``KEY=VALUE`` words, quoted as in a shell.
ENV_VAR = "VMCTL_KIT_OPTIONS"

#: Where an option came from, weakest first (the report says which one each option has).
SOURCES = ("driver", "host", ENV_VAR, "command line", "kit")


class OptionsError(ValueError):
    """Kit options that cannot be read."""


def redacted(value: str) -> str:
    """An option's value for the report: a URL's user information (which may carry a
    password, e.g. in a ``backup_repo`` URL) masked."""
    return re.sub(r"(://)[^/@\s]*@", r"\1***@", value)


def parse_words(text: str, where: str = ENV_VAR) -> dict[str, str]:
    """``KEY=VALUE`` words, quoted as in a POSIX shell: ``network=br0 boot_cmdline='a b'``."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise OptionsError(f"{where}: {exc} in {text!r}") from exc
    out = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key.strip():
            raise OptionsError(
                f"{where} wants KEY=VALUE words (e.g. \"network=default boot_cmdline='a b'\"),"
                f" got {word!r}"
            )
        out[key.strip()] = value
    return out


def from_uri(uri: str) -> dict[str, str]:
    """``Driver.kit_options``: what the driver knows from the URI alone (including, under
    ``other_uri``, a second host)."""
    parsed = URI.parse(uri)
    driver = _registry.load(parsed.scheme)
    return {str(k): str(v) for k, v in driver.kit_options(parsed).items()}


def from_host(hv: Hypervisor) -> tuple[dict[str, str], str]:
    """``Driver.kit_defaults`` of the connected driver (through the core, under a read
    deadline), and why it found nothing if it failed."""
    conn = hv._conn
    try:
        found = conn.dispatcher.call(
            "find the kit's defaults", conn.driver.kit_defaults, deadline=conn.read_deadline()
        )
    except vmctl.VmctlError as exc:
        return {}, f"the driver's kit_defaults failed: {type(exc).__name__}: {exc}"
    return {str(k): str(v) for k, v in found.items() if v is not None}, ""


def merge(
    layers: Mapping[str, Mapping[str, str]],
) -> tuple[dict[str, str], dict[str, str]]:
    """The options and, for each, the layer it came from (later layers win)."""
    options: dict[str, str] = {}
    sources: dict[str, str] = {}
    for source, values in layers.items():
        for key, value in values.items():
            options[key] = value
            sources[key] = source
    return options, sources


def env_options() -> dict[str, str]:
    return parse_words(os.environ.get(ENV_VAR, ""))


def _how_to_give(key: str, example: str) -> str:
    return (
        f"give it with `vmctl conformance --opt {key}={example}` (pytest: --vmctl-opt "
        f"{key}={example}; Python: run(options={{'{key}': ...}})) or in ${ENV_VAR} "
        f"(e.g. {ENV_VAR}='{key}={example}')"
    )


def preflight(kit: Kit, sources: Mapping[str, str], discovery_error: str = "") -> str:
    """Check, before any clause, that the kit can make its VMs here: one VM with a disk
    and a NIC as the clauses make them (deleted again), on the host and on the second host
    (the migration clauses need the network and pool on both). When that fails, a VM with
    only the NIC and one with only the disk tell which option to give. Returns the problem,
    or "" when there is none (or the driver cannot create VMs: the clauses then say so)."""
    problem = _preflight_on(kit, sources, discovery_error, "")
    if problem or kit.other is None:
        return problem
    there = Kit(kit.other, None, kit.prefix, kit.options)
    return _preflight_on(there, sources, discovery_error, " (the second host, for migration)")


def _preflight_on(kit: Kit, sources: Mapping[str, str], discovery_error: str, role: str) -> str:
    if Capability.CREATE not in kit.hv.capabilities:
        return ""
    try:
        try:
            kit.vm("preflight")
            return ""
        except vmctl.VmctlError as err:
            first = err
        suspects: list[tuple[str, vmctl.VmctlError]] = []
        for key, disks, nics in (("network", 0, 1), ("pool", 1, 0)):
            try:
                kit.vm("preflight", disks=disks, nics=nics)
            except vmctl.VmctlError as err:
                suspects.append((key, err))
    finally:
        kit.cleanup()
    host = f"{kit.hv.uri}{role}"
    why = f" ({discovery_error})" if discovery_error else ""
    if not suspects:
        return (
            f"the kit cannot create a VM on {host} as its clauses do "
            f"({_described(kit, sources)}): {type(first).__name__}: {first}{why}"
        )
    problems = []
    for key, exc in suspects:
        if key == "network":
            value, example = kit.network, "NAME"
            what = "a network that exists there"
        else:
            value, example = kit.pool or "(the driver's default)", "NAME"
            what = "a storage pool (libvirt pool, XenAPI SR, vSphere datastore) that exists there"
        problems.append(
            f"{key}={value} ({_source(key, sources)}) does not work on {host}: "
            f"{type(exc).__name__}: {exc}. The kit needs {what}: {_how_to_give(key, example)}"
        )
    return "; ".join(problems) + why


def _source(key: str, sources: Mapping[str, str]) -> str:
    where = sources.get(key)
    if where is None:
        return "no option given, the kit's fallback"
    if where == "host":
        return "found on the host by the driver"
    if where == "driver":
        return "the driver's default"
    return f"from {where}"


def _described(kit: Kit, sources: Mapping[str, str]) -> str:
    keys = ("network", "pool", "memory_mib", "disk_mib")
    return (
        ", ".join(f"{k}={kit.options[k]} ({_source(k, sources)})" for k in keys if k in kit.options)
        or f"network={kit.network}"
    )
