//! A real program in the merged tree: chroot into a busybox rootfs spread over layers.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{Encoding, LayerSpec, ShaleMount, TestDir, run_ok};

fn busybox() -> PathBuf {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("busybox-static is not installed (apt-get install busybox-static)");
}

#[test]
fn chroot_into_a_layered_busybox_rootfs_runs_a_shell() {
    let dir = TestDir::new("chroot");
    let base = dir.path().join("base");
    let mut spec = LayerSpec::new().file("etc/motd", "from the base layer\n").file("etc/removed", "gone\n");
    for applet in ["sh", "ls", "cat", "echo", "id"] {
        spec = spec.symlink(format!("bin/{applet}"), "busybox");
    }
    spec.build(&base, Encoding::Oci);
    std::fs::copy(busybox(), base.join("bin/busybox")).unwrap();
    let top = dir.path().join("top");
    LayerSpec::new().file("etc/motd", "from the top layer\n").whiteout("etc/removed").build(&top, Encoding::Oci);
    let mnt = dir.mkdir("mnt");
    let _m = ShaleMount::lowers(&[top.as_path(), base.as_path()], &mnt);
    let out = run_ok(Command::new("chroot").arg(&mnt).args(["/bin/sh", "-c", "cat /etc/motd; ls /etc; echo done"]));
    assert_eq!(out, "from the top layer\nmotd\ndone\n");
}
