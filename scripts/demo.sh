#!/usr/bin/env bash
# The main job, with no registry needed: build a three-layer busybox rootfs from Debian's
# busybox-static (OCI-style whiteouts in one layer, overlayfs-style in another), mount it with
# shalefs, list it, chroot into it, and unmount.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --quiet
bin="$PWD/target/release/shalefs"
busybox=$(command -v busybox)

work=$(mktemp -d /tmp/shalefs-demo.XXXXXX)
mnt="$work/rootfs"
cleanup() {
    mountpoint -q "$mnt" 2>/dev/null && "$bin" umount "$mnt"
    rm -rf "$work"
}
trap cleanup EXIT

echo "== building layers in $work"
base="$work/layer-base"; app="$work/layer-app"; conf="$work/layer-conf"
mkdir -p "$base/bin" "$base/etc/conf.d" "$base/tmp" "$base/root" "$app/etc" "$app/app" "$conf/etc/conf.d" "$mnt"
cp "$busybox" "$base/bin/busybox"
for applet in $("$busybox" --list); do [ "$applet" = busybox ] || ln -s busybox "$base/bin/$applet"; done
echo "root:x:0:0:root:/root:/bin/sh" > "$base/etc/passwd"
echo "base layer" > "$base/etc/motd"
echo "debug=1" > "$base/etc/conf.d/debug"
echo "remove me" > "$base/etc/obsolete"
# The app layer, written as an OCI image layer would be: .wh. files delete.
echo "app layer" > "$app/etc/motd"
printf '#!/bin/sh\necho "hello from a layered rootfs, running as $(id -un)"\n' > "$app/app/hello"
chmod 755 "$app/app/hello"
touch "$app/etc/.wh.obsolete"
# The config layer, in overlayfs format: an opaque directory replaces conf.d wholesale.
echo "production=1" > "$conf/etc/conf.d/prod"
setfattr -n trusted.overlay.opaque -v y "$conf/etc/conf.d"

echo "== shalefs mount --lower conf --lower app --lower base $mnt"
"$bin" mount --lower "$conf" --lower "$app" --lower "$base" "$mnt"
grep " $mnt " /proc/mounts
echo "== ls -l $mnt"
ls -l "$mnt"
echo "== ls $mnt/etc $mnt/etc/conf.d"
ls "$mnt/etc" "$mnt/etc/conf.d"
echo "== chroot $mnt /bin/sh"
chroot "$mnt" /bin/sh -c 'cat /etc/motd; /app/hello; ls /bin | wc -l | sed "s/^/applets: /"'
echo "== shalefs umount $mnt"
"$bin" umount "$mnt"
echo "demo done"
