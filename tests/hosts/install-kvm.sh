#!/bin/sh
# Install what the KVM/QEMU test hosts (tests/hosts/kvm.py) need on Debian 12.
# Idempotent: installs only packages that are missing; runs `apt-get update` at most once,
# and only when something has to be installed. Needs root (or sudo).
set -eu

PKGS="libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils libvirt-dev pkg-config
dnsmasq-base iproute2 ipxe-qemu libvirt-daemon-driver-qemu cpio gzip kmod gcc python3-dev"
# python3-dev/gcc: only needed to build libvirt-python from source with the system Python;
# harmless with pyenv Pythons (they bring their own headers).

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

missing=""
for p in $PKGS; do
    st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    if [ "$st" != "installed" ]; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    echo "install-kvm: all packages present"
else
    echo "install-kvm: installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -q
    # shellcheck disable=SC2086
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
        $missing
fi

# The tiny guest is built at test time with `apt-get download` (linux-image, busybox-static,
# qemu-guest-agent); that needs package lists. Fetch them once if they are absent.
if ! apt-cache show busybox-static >/dev/null 2>&1; then
    echo "install-kvm: package lists missing, running apt-get update"
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -q
fi
