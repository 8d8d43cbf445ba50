#!/bin/sh
# Install what the Xen tests need besides Python packages on Debian 12: libnbd's nbdinfo,
# an NBD client written to the protocol independently of vmctl's, with which
# tests/xen/test_xen_backup_nbd.py checks xapisim's NBD server (xapi-nbd's dialect).
# Idempotent: installs only packages that are missing; runs `apt-get update` only when
# something has to be installed. Needs root (or sudo).
set -eu

PKGS="libnbd-bin"

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
    echo "install-xen: all packages present"
else
    echo "install-xen: installing:$missing"
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -q
    # shellcheck disable=SC2086
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
        $missing
fi
