#!/usr/bin/env bash
# Run every test: unit tests of the union rules, then the mount tests (real FUSE mounts compared
# with kernel overlayfs). Needs root, /dev/fuse and kernel overlayfs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: the mount tests need root (kernel overlayfs, mknod, trusted.* xattrs)" >&2
    exit 1
fi
# pjdfstest, the POSIX suite the mount tests run inside shalefs and kernel overlayfs.
command -v pjdfstest >/dev/null || [ -x "$HOME/.cargo/bin/pjdfstest" ] || cargo install --quiet pjdfstest --version 0.2.2
cargo test --release --lib
# The transport probe scripts/bench-transport runs: it must keep building.
cargo build --release --quiet --example fuse_transport_probe
cargo test --release --test mount -- --test-threads "${SHALEFS_TEST_THREADS:-4}"
