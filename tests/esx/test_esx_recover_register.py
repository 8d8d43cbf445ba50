"""A vCenter recovery whose RegisterVM_Task fails after the stale entry was unregistered, on
the vSphere simulator (its own: a host is taken down). The failure is real: the VM's .vmx
file is removed from the simulator's datastore directory after the plan, so the simulator
answers the registration NotFound, as vCenter does for a .vmx it cannot read. The VM is then
in no inventory: the move fails saying where its .vmx is and what to do, and so does every
later try (a second execute), instead of counting it as gone (skipped)."""

from __future__ import annotations

from pathlib import Path

import pytest

import vmctl
from tests.esx.conftest import Admin, connect
from tests.esx.test_esx_recover import host_ref, make_vms, vm_props, wait
from tests.hosts.esx import VcsimServer
from vmctl import MoveOutcome, PowerState

pytest.importorskip("pyVmomi")
from pyVmomi import vim

VCSIM = {"vms": 0, "hosts": 3}
pytestmark = pytest.mark.usefixtures("own_state_dir")


def _vmx_file(admin: Admin, uuid: str) -> tuple[str, Path]:
    """The VM's .vmx as vSphere names it, and that file in the simulator's datastore."""
    p = vm_props(admin, uuid, ["summary.config.vmPathName", "datastore"])
    path = p["summary.config.vmPathName"]
    [ds] = p["datastore"]
    url = admin.props(ds, vim.Datastore, ["summary.url"])["summary.url"]
    relative = path.split("] ", 1)[1]
    return path, Path(url) / relative


def test_a_failed_registration_is_reported_failed_with_where_the_vmx_is(
    vc: VcsimServer, admin: Admin
) -> None:
    up, down = make_vms(vc, "DC0_C0_H1", "reg")
    path, vmx = _vmx_file(admin, up)
    assert vmx.is_file(), vmx
    assert str(wait(admin, host_ref(admin, "DC0_C0_H1").ShutdownHost_Task(force=True)).state) == (
        "success"
    )
    with connect(vc) as hv:
        plan = vmctl.plan_recovery(hv.host("DC0_C0_H1"))
        assert {m.vm_uuid for m in plan.moves} == {up, down}
        vmx.unlink()  # the registration of `up` will find no .vmx
        report = vmctl.execute(plan, retries=1)
        results = {r.move.vm_uuid: r for r in report.results}
        assert results[down].outcome is MoveOutcome.MOVED, str(report)
        failed = results[up]
        assert failed.outcome is MoveOutcome.FAILED, str(report)
        assert path in (failed.error or "") and "register" in (failed.error or "")
        assert hv.vm(down).info().state is PowerState.STOPPED
        # Executed again (or retried): still failed, saying what happened; not skipped.
        again = vmctl.execute(plan, retries=0)
        [result] = [r for r in again.results if r.move.vm_uuid == up]
        assert result.outcome is MoveOutcome.FAILED, str(again)
        error = result.error or ""
        assert "is in no inventory" in error and path in error, error
        assert "Register VM" in error
