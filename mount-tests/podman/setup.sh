# Shared by e2e.sh and scripts/bench-podman: a private podman/buildah configuration in a
# directory, and a small busybox image built without a registry.
#   podman_setup PROGRAM DIR   PROGRAM: a mount program, or "native" for podman's kernel overlay

podman_setup() {
local PROG=$1 T=$2
export CONTAINERS_STORAGE_CONF=$T/storage.conf CONTAINERS_CONF=$T/containers.conf
export HOME=$T/home XDG_RUNTIME_DIR=$T/xdg XDG_CONFIG_HOME=$T/home/.config XDG_DATA_HOME=$T/home/.local/share
mkdir -p "$HOME" "$XDG_RUNTIME_DIR" "$T/graph" "$T/run/overlay" "$T/img"
chmod 700 "$XDG_RUNTIME_DIR"
# Podman 4.3 idmap-mounts lowers itself for --uidmap when the kernel can; this says it cannot,
# so the mount program does the shifting alone.
touch "$T/run/overlay/idmapped-lower-dir-false"
cat > "$T/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$T/graph"
runroot = "$T/run"
rootless_storage_path = "$T/graph"
[storage.options.overlay]
$([ "$PROG" = native ] || echo "mount_program = \"$PROG\"")
CONF
# Podman asks for more open files and processes than this machine's hard limits allow.
hard=$(ulimit -Hn); [ "$hard" = unlimited ] && hard=65536
nproc=$(ulimit -Su); { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
cat > "$T/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$hard:$hard", "nproc=$nproc:$nproc"]
netns = "none"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
}
P() { podman --log-level=error "$@"; }
export -f P

# --- the image: two layers, the second adds a file and deletes one of the first ---
build_image() {
    local L=$T/img/layout R=$T/img/bundle
    umoci init --layout "$L" && umoci new --image "$L:bb" &&
    umoci unpack --rootless --image "$L:bb" "$R" >/dev/null &&
    mkdir -p "$R/rootfs/bin" "$R/rootfs/etc" "$R/rootfs/tmp" "$R/rootfs/data/dir" && cp /bin/busybox "$R/rootfs/bin/busybox" &&
    for a in sh ls cat echo stat touch rm mv mkdir sleep tar true test grep wc id seq find; do ln -sf busybox "$R/rootfs/bin/$a"; done &&
    echo layer1 > "$R/rootfs/data/one" && echo doomed > "$R/rootfs/data/gone" && echo d > "$R/rootfs/data/dir/f" &&
    echo 'root:x:0:0:root:/root:/bin/sh' > "$R/rootfs/etc/passwd" && echo 'root:x:0:' > "$R/rootfs/etc/group" &&
    umoci repack --image "$L:bb" "$R" >/dev/null && rm -rf "$R" &&
    umoci unpack --rootless --image "$L:bb" "$R" >/dev/null &&
    echo layer2 > "$R/rootfs/data/two" && rm "$R/rootfs/data/gone" &&
    umoci repack --image "$L:bb" "$R" >/dev/null &&
    umoci config --image "$L:bb" --config.cmd /bin/sh >/dev/null &&
    skopeo copy -q "oci:$L:bb" "oci-archive:$T/img/bb.tar:localhost/bb:1" && P load -q -i "$T/img/bb.tar" >/dev/null
}
