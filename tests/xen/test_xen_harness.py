"""The driver against the simulator as `make host-xen` runs it: a separate process
(tests/hosts/xen.py), trust and credentials from the environment it writes."""

from __future__ import annotations

import pytest

import vmctl

harness = pytest.importorskip("tests.hosts.xen")


def test_driver_with_the_harness_environment() -> None:
    with harness.running_simulator(hosts=2, vms=3) as sim:
        env = {
            "VMCTL_URI": sim.uri,
            "VMCTL_PASSWORD": sim.password,
            "VMCTL_CAFILE": sim.cafile or "",
            "VMCTL_THUMBPRINT": sim.thumbprint or "",
        }
        with vmctl.connect(env=env) as pool:  # CA file and SHA-256 pin both checked
            assert len(pool.list_vms()) == 3
            assert pool.host_info().uuid
        with vmctl.connect(sim.other_uri, env=env) as other:  # .../?host=xenhost2
            assert other.host_info().name == sim.hosts[1]
            assert other.list_vms() == []  # nothing resident there or homed there
