"""How long ``import vmctl`` takes, and what it drags in (goal: under 50 ms, no vendor SDK).

Each sample is a fresh interpreter; we report the median of the in-process time
(perf_counter around the import). vmctl's exports load on first use (PEP 562), so we also
time the import plus a first touch of the API, beside ``import attrs`` alone: the floor any
attrs-based library pays once its models exist.

    python bench/import_time.py [--runs 21]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

PROBE = (
    "import time, sys; t = time.perf_counter(); import {mod}; "
    "dt = time.perf_counter() - t; "
    "vendor = [m for m in ('libvirt', 'pyVmomi', 'pyVim', 'XenAPI', 'vmctl_kvm', 'vmctl_esx', "
    "'vmctl_xen', 'click', 'rich', 'importlib.metadata', 'concurrent.futures') "
    "if m in sys.modules]; "
    "import json; print(json.dumps([dt, vendor]))"
)


def sample(mod: str, runs: int) -> tuple[float, list[str]]:
    times = []
    loaded: list[str] = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(mod=mod)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        dt, loaded = json.loads(out)
        times.append(dt)
    return statistics.median(times), loaded


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    vmctl_s, loaded = sample("vmctl", args.runs)
    used_s, _ = sample("vmctl; vmctl.connect; vmctl.VMSpec", args.runs)
    attrs_s, _ = sample("attrs", args.runs)
    print(f"import vmctl : {vmctl_s * 1000:6.1f} ms (median of {args.runs})")
    print(f"+ first use  : {used_s * 1000:6.1f} ms (import vmctl, then touch connect/VMSpec:")
    print("               the API and the attrs models load on first use)")
    print(f"import attrs : {attrs_s * 1000:6.1f} ms (the floor for an attrs-based library)")
    print(f"also loaded  : {', '.join(loaded) or 'nothing heavy (no vendor SDK, no CLI libs)'}")
    goal = vmctl_s < 0.050
    print(f"goal < 50 ms : {'met' if goal else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
