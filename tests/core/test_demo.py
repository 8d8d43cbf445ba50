import subprocess
import sys


def test_demo_runs_to_the_end() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vmctl.demo"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for step in (
        "Create a VM from a spec",
        "Migrate live",
        "Evacuate a host",
        "1 moved",
        "Graceful shutdown",
        "Events that happened",
        "Back up and restore",
        "generation 2 not in it: True",
        "VMs left: []",
        "vmctl conformance sim://",
    ):
        assert step in out.stdout


def test_demo_says_how_to_reach_vmctl() -> None:
    from vmctl.demo import where_is_vmctl

    text = where_is_vmctl()
    assert "on your PATH" in text
