"""A narrated walkthrough of vmctl on the embedded ``sim://`` backend (``make demo``).

Every step uses the public API exactly as it would against KVM, ESX or Xen; only the URI
differs. Run: ``python -m vmctl.demo``.
"""

from __future__ import annotations

import sys
import time

import vmctl
from vmctl import BootSource, DiskSpec, NicSpec, Resources, VMSpec


def say(step: str, detail: str = "") -> None:
    print(f"\n== {step}")
    if detail:
        print(f"   {detail}")


def show(label: str, value: object) -> None:
    print(f"   {label}: {value}")


def main() -> int:
    say(
        "Connect",
        'vmctl.connect("sim://rack1") opens the embedded reference hypervisor; '
        "swap the URI for qemu:///system, esx://host or xen://host.",
    )
    with vmctl.connect("sim://rack1") as hv, vmctl.connect("sim://rack2") as spare:
        host = hv.host_info()
        show(
            "host",
            f"{host.name}: {host.hypervisor} {host.version}, {host.cpus} CPUs, "
            f"{host.memory_mib} MiB",
        )
        show("capabilities", ", ".join(sorted(c.value for c in hv.capabilities)))

        events = hv.watch()  # subscribe now; we read what happened at the end

        say("Create a VM from a spec", "validated before anything reaches the hypervisor")
        spec = VMSpec(
            name="demo-web",
            vcpus=2,
            memory_mib=2048,
            disks=[DiskSpec(size_mib=10 * 1024, name="root")],
            nics=[NicSpec(network="default")],
            boot=BootSource(kernel="/boot/vmlinuz", cmdline="console=ttyS0"),
            guest_os="linux",
            resources=Resources(cpu_shares=1024),
        )
        vm = hv.create_vm(spec)
        show("created", vm.info())
        try:
            VMSpec(name="bad/name", vcpus=0)
        except vmctl.ValidationError as exc:
            show("bad input is refused early", exc)

        say("Start", "returns when the VM is RUNNING, not when the request was sent")
        show("state", vm.start().state.value)

        say("Pause and resume")
        show("after pause", vm.pause().state.value)
        show("after resume", vm.resume().state.value)
        try:
            vm.resume()
        except vmctl.InvalidState as exc:
            show("illegal request, refused before any backend call", exc)

        say("Snapshot and revert")
        vm.snapshot("before-upgrade", memory=True, description="running, with memory")
        vm.power_off()
        show("powered off", vm.info().state.value)
        show("revert brings it back", vm.revert("before-upgrade").state.value)

        say(
            "Reconfigure and set resource limits", "vCPUs and memory while stopped; limits any time"
        )
        vm.shutdown(timeout=30)
        config = vm.reconfigure(vcpus=4, memory_mib=4096)
        show("now", f"{config.vcpus} vCPUs, {config.memory_mib} MiB")
        limits = vm.set_resources(
            Resources(cpu_limit_percent=200, memory_limit_mib=6144, memory_reservation_mib=1024)
        ).resources
        show("resources", limits)

        say("Clone", "a full copy with new MAC addresses")
        twin = vm.clone("demo-web-clone")
        show("clone", f"{twin.name} ({twin.uuid}), NICs {[n.mac for n in twin.config().nics]}")

        say("Start both at once and wait on both", "wait=False returns Operation handles")
        ops = [vm.start(wait=False), twin.start(wait=False)]
        for op in vmctl.wait_all(ops, timeout=30):
            show(op.description, op.result().state.value)

        say("Migrate live to a second host", f"{hv.uri} -> {spare.uri}")
        moved = vm.migrate(spare)
        show("on the spare host", f"{moved.info().state.value}, reason {moved.info().reason.value}")
        time.sleep(0.2)  # let the simulated guest finish booting and report an IP
        show("guest", moved.guest_info())

        say(
            "Evacuate a host",
            "hv.hosts() sees the site's hosts; a plan a person reads first, then the moves "
            "(docs/hosts.md)",
        )
        for h in hv.hosts():
            show(h.name, f"{h.state.value}, {h.vm_count} VMs, {h.memory_free_mib} MiB free")
        plan = vmctl.plan_evacuation(hv.host(hv.host_info().name))
        print("   " + str(plan).replace("\n", "\n   "))
        report = vmctl.execute(plan, max_parallel=2)
        print("   " + str(report).replace("\n", "\n   "))
        twin = spare.vm(twin.uuid)  # it runs on the spare host now

        say("Graceful shutdown", "the guest is asked; the call returns when it is off")
        show("spare host", moved.shutdown(timeout=30))
        show("original host", twin.shutdown(timeout=30, force_after=10))

        say(
            "Back up and restore",
            "core code over three driver primitives: read a point in time, list changed "
            "extents, write extents (docs/backup.md)",
        )
        backup_and_restore(moved, spare)

        say("Events that happened on the first host")
        for event in events.drain():
            state = event.state.value if event.state else ""
            print(f"   {event.kind.value:<14} {event.vm_name:<16} {state:<10} {event.detail}")
        events.close()

        say("Delete", "says what it deletes")
        for line in moved.delete() + twin.delete():
            print(f"   deleted {line}")
        show("VMs left", [i.name for i in hv.list_vms() + spare.list_vms()])
    print("\nDone. Next: `vmctl --help`, docs/guide.md, and `vmctl conformance sim://`.")
    print(where_is_vmctl())
    return 0


def backup_and_restore(vm: vmctl.VM, hv: vmctl.Hypervisor) -> None:
    """Back up a stopped VM twice (full, then incremental), restore the first backup into a
    new VM, compare the bytes, verify and prune the repository."""
    import shutil
    import tempfile

    from vmctl.backup import read_disk, write_disk

    root = tempfile.mkdtemp(prefix="vmctl-demo-")
    try:
        repo = vmctl.open_repo(f"{root}/repo")  # any fsspec URL works: s3://bucket/prefix
        show("repository", repo)
        disk = vm.config().disks[0].id
        write_disk(vm, disk, 0, b"vmctl demo, generation 1\n" * 40_000)
        first = vm.backup(repo)
        show("first backup", f"{first.id}: {first.kind.value} ({first.reason})")
        show(
            "  reached", f"{first.consistency.value}-consistent, read {first.read_bytes >> 20} MiB"
        )
        write_disk(vm, disk, 8 << 20, b"generation 2")
        second = vm.backup(repo)
        show("second backup", f"{second.id}: {second.kind.value}, parent {second.parent}")
        show("  read", f"{second.read_bytes >> 20} MiB, stored {second.new_bytes} new bytes")
        show("listed", [b.id for b in repo.backups(vm)])
        copy = repo.restore(first.id, hv, name="demo-web-restored")
        new_disk = copy.config().disks[0].id
        same = read_disk(copy, new_disk, 0, 1 << 20) == read_disk(vm, disk, 0, 1 << 20)
        older = read_disk(copy, new_disk, 8 << 20, 12) == bytes(12)
        show("restored the first", f"{copy.name}, {copy.info().state.value}")
        show("  content", f"first MiB identical: {same}; generation 2 not in it: {older}")
        show("verify", "ok" if repo.verify().ok else "damaged")
        pruned = repo.prune(keep_last=1)
        show("prune keep_last=1", f"removed {list(pruned.removed)}, kept {list(pruned.kept)}")
        copy.delete()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def where_is_vmctl() -> str:
    """How to run the ``vmctl`` command from here: it is on PATH, or where it is."""
    import os
    import shutil

    if shutil.which("vmctl"):
        return "`vmctl` is on your PATH."
    bindir = os.path.join(sys.prefix, "bin")
    activate = os.path.join(bindir, "activate")
    if os.path.exists(activate):
        rel = os.path.relpath(bindir)
        shown = rel if not rel.startswith("..") else bindir
        return (
            f"`vmctl` is installed in {shown}, which is not on your PATH: run "
            f"`. {shown}/activate` first (or call {shown}/vmctl)."
        )
    return f"`vmctl` is installed in {bindir}; add it to your PATH."


if __name__ == "__main__":
    sys.exit(main())
