"""vmctl's KVM/QEMU driver over libvirt-python: ``qemu:///system``, ``qemu+ssh://``,
``qemu+tcp://`` and libvirt's test driver ``test:///default``. See docs/kvm.md.

    import vmctl
    with vmctl.connect("qemu:///system?pool=default") as hv: ...
"""

from ._driver import KvmDriver, libvirt_uri

__all__ = ["KvmDriver", "libvirt_uri"]
