#!/usr/bin/env bash
# End-to-end checks of a containers/storage mount program with real podman and buildah.
#   e2e.sh PROGRAM WORKDIR [rootless]
# PROGRAM is the mount program (the built shalefs, or /usr/bin/fuse-overlayfs). WORKDIR is an
# empty directory (for rootless, owned by the user this runs as). Each check prints
# "ok NAME (SECONDS)" or "FAIL NAME"; the script exits non-zero if any check failed.
# Driven by mount-tests/podman.rs, which makes the user, the directory and the cleanup.
set -uo pipefail
PROG=$1 T=$2 MODE=${3:-rootful}
source "$(dirname "$0")/setup.sh"
podman_setup "$PROG" "$T"
failed=0
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
check() {
    local name=$1; shift
    local t0=$EPOCHREALTIME out
    if out=$("$@" 2>&1); then
        printf 'ok   %-28s %5.1fs\n' "$name" "$(since "$t0")"
    else
        printf 'FAIL %-28s %5.1fs\n%s\n' "$name" "$(since "$t0")" "$(echo "$out" | tail -15 | sed 's/^/     | /')"
        failed=$((failed + 1))
    fi
}
expect() { # expect WANT CMD...: the command's output is WANT
    local want=$1; shift
    local got; got=$("$@") || return 1
    [ "$got" = "$want" ] || { echo "expected: $want"; echo "got:      $got"; return 1; }
}

T0=$EPOCHREALTIME
check "image (umoci → podman load)" build_image
IMG=localhost/bb:1

check "run: every layer, deletion" expect "layer1 layer2 absent" P run --rm $IMG sh -c 'echo $(cat /data/one /data/two) $(test -e /data/gone && echo present || echo absent)'
check "run: write, delete, rename" expect "new one f" P run --rm $IMG sh -c 'echo x > /data/new && rm /data/two && mv /data/dir /data/moved && echo $(ls /data | grep -v moved) $(ls /data/moved) && test ! -e /data/dir'
check "exec" bash -c "P run -d --name c1 $IMG sleep 1000 >/dev/null && [ \"\$(podman --log-level=error exec c1 cat /data/two)\" = layer2 ]"
# The container's root is the mount program's FUSE mount (as podman's own mount namespace sees it).
mounts() { if [ "$MODE" = rootful ]; then cat /proc/mounts; else podman unshare cat /proc/mounts; fi; }
export -f mounts; export MODE
check "root is a FUSE mount" bash -c "mounts | grep -Eq \" \$(podman --log-level=error inspect -f '{{.GraphDriver.Data.MergedDir}}' c1) fuse(\\.[^ ]+)? \""
check "stop/start keeps the upper" bash -c "podman --log-level=error exec c1 sh -c 'echo kept > /data/kept' && podman --log-level=error stop -t 0 c1 >/dev/null && podman --log-level=error start c1 >/dev/null && [ \"\$(podman --log-level=error exec c1 cat /data/kept)\" = kept ]"
check "commit, run the result" bash -c "P commit -q c1 localhost/committed:1 >/dev/null && [ \"\$(podman --log-level=error run --rm localhost/committed:1 sh -c 'cat /data/kept; test -e /data/gone || echo no-gone')\" = \"kept
no-gone\" ]"
P rm -f -t 0 c1 >/dev/null 2>&1

mkdir -p "$T/ctx" && echo copied > "$T/ctx/file.txt"
cat > "$T/ctx/Containerfile" <<CF
FROM $IMG
RUN mkdir -p /b/x && echo one > /b/x/1 && echo two > /b/2
COPY file.txt /b/copied
RUN rm /b/2 /data/one && mv /b/x /b/y
RUN echo \$(ls /b) \$(cat /b/y/1) > /b/summary
RUN rm -rf /data/dir && mkdir /data/dir && echo g > /data/dir/g
CF
check "build (RUN, COPY, deletes)" bash -c "P build -q --network none -t localhost/built:1 '$T/ctx' >/dev/null"
check "run the built image" expect "copied y one|copied|absent|g" P run --rm localhost/built:1 sh -c 'echo "$(cat /b/summary)|$(cat /b/copied)|$(test -e /data/one && echo present || echo absent)|$(ls /data/dir)"'
check "save, rmi, load, run" bash -c "P save -q -o '$T/built.tar' localhost/built:1 && P rmi -f localhost/built:1 >/dev/null && P load -q -i '$T/built.tar' >/dev/null && [ \"\$(podman --log-level=error run --rm localhost/built:1 cat /b/copied)\" = copied ]"

image_mount() {
    local mp; mp=$(P image mount $IMG) || return 1
    local r=0
    [ "$(cat "$mp/data/two")" = layer2 ] || { echo "image mount: /data/two unreadable"; r=1; }
    if touch "$mp/data/w" 2>/dev/null; then echo "image mount is writable"; r=1; fi
    P image unmount $IMG >/dev/null || r=1
    return $r
}
if [ "$MODE" = rootful ]; then
    check "image mount (read-only)" image_mount
else
    check "image mount (read-only)" podman unshare bash -c "$(declare -f image_mount P); IMG=$IMG; image_mount"
fi

three() {
    for i in 1 2 3; do P run -d --name t$i $IMG sh -c "echo c$i > /data/mine; sleep 1000" >/dev/null || return 1; done
    sleep 0.5
    for i in 1 2 3; do [ "$(P exec t$i cat /data/mine /data/one | tr '\n' ' ')" = "c$i layer1 " ] || { echo "t$i saw the wrong file"; return 1; }; done
    P rm -f -t 0 t1 t2 t3 >/dev/null
}
check "three containers at once" three

uidmap() {
    local host_id=$1
    P run --name cu --uidmap 0:$host_id:65536 --gidmap 0:$host_id:65536 $IMG sh -c 'touch /made; stat -c "%u:%g" /made /data/one' > "$T/inside" || return 1
    [ "$(tr '\n' ' ' < "$T/inside")" = "0:0 0:0 " ] || { echo "inside: $(cat "$T/inside")"; return 1; }
    local mp; mp=$(P mount cu) || return 1
    local outside; outside=$(stat -c %u:%g "$mp/made" "$mp/data/one" | tr '\n' ' ')
    local diff; diff=$(stat -c %u:%g "$(P inspect -f '{{.GraphDriver.Data.UpperDir}}' cu)/made")
    P umount cu >/dev/null; P rm -f cu >/dev/null
    [ "$outside" = "$host_id:$host_id $host_id:$host_id " ] || { echo "merged, outside: $outside"; return 1; }
    [ "$diff" = "0:0" ] || { echo "upper on disk: $diff"; return 1; }
}
if [ "$MODE" = rootful ]; then
    check "--uidmap 0:100000:65536" uidmap 100000
else
    # Rootless: ids are those of podman's user namespace, whose 1.. are the subordinate range.
    check "--uidmap 0:1:65536 (rootless)" podman unshare bash -c "$(declare -f uidmap P); T=$T IMG=$IMG; uidmap 1"
fi

buildah_steps() {
    local c; c=$(buildah --log-level=error from -q $IMG) || return 1
    buildah --log-level=error run --network none "$c" -- sh -c 'echo from-buildah > /data/b && rm /data/one' || return 1
    buildah --log-level=error commit -q "$c" localhost/buildah:1 >/dev/null || return 1
    buildah --log-level=error rm "$c" >/dev/null
    expect "from-buildah absent" P run --rm localhost/buildah:1 sh -c 'echo $(cat /data/b) $(test -e /data/one && echo present || echo absent)'
}
check "buildah from/run/commit" buildah_steps

P rm -af -t 0 >/dev/null 2>&1
P rmi -af >/dev/null 2>&1
# Rootful podman bind-mounts the graph's overlay/ on itself.
[ "$MODE" = rootful ] && umount "$T/graph/overlay" 2>/dev/null
printf 'total %.1fs, %d failed (%s, %s)\n' "$(since "$T0")" "$failed" "$MODE" "$PROG"
[ "$failed" -eq 0 ]
