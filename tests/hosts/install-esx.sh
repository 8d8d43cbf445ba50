#!/bin/sh
# Install what the VMware vSphere API simulator harness (tests/hosts/esx.py) needs:
# the Go toolchain, Debian's packaged govmomi library (simulator included) and openssl.
# Idempotent: installs only packages that are missing; runs `apt-get update` at most once.
set -eu

PACKAGES="golang-go golang-github-vmware-govmomi-dev golang-github-google-uuid-dev openssl"

missing=""
for pkg in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    case "$status" in
        *"install ok installed"*) ;;
        *) missing="$missing $pkg" ;;
    esac
done

if [ -z "$missing" ]; then
    echo "install-esx: all present:$(printf ' %s' $PACKAGES)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

echo "install-esx: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
# shellcheck disable=SC2086
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
echo "install-esx: done"
