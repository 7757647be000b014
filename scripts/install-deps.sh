#!/usr/bin/env bash
# Install the Debian packages shalefs' demo and tests need. Safe to run again.
#   fuse3          fusermount3 and the FUSE userspace bits
#   busybox-static the payload of the demo and chroot tests
#   attr, acl      setfattr/getfattr and setfacl/getfacl, used by tests to build layers independently of shalefs
#   fuse-overlayfs the peer the benchmarks compare against
#   docker-registry, umoci, skopeo  the local registry and the independent image tools of the pull tests
#   xfsprogs       xfs_io, whose shutdown cuts the power on the power-cut test's ext4
#   podman, buildah, runc, uidmap  the mount-program tests (containers/storage calling shalefs, rootful and
#                  rootless) and podman load/run of saved archives
#   rsync          rsync -aX out of a mount, compared with kernel overlayfs (labels tests)
set -euo pipefail
packages=(fuse3 busybox-static attr fuse-overlayfs util-linux coreutils findutils docker-registry umoci skopeo python3 zstd gzip tar apache2-utils openssl acl xfsprogs podman buildah runc uidmap rsync)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -e /dev/fuse ] || { echo "install-deps: /dev/fuse is missing and the fuse module could not be loaded" >&2; exit 1; }
