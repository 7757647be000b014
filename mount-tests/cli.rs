//! The command line as a user meets it: daemon mode, unmounting, signals, option spellings,
//! permissions for other users, and one-line errors.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::util::mounts::DaemonMount;
use crate::util::{Encoding, LayerSpec, ShaleMount, TestDir, is_mounted, mount_options, run, run_ok, shalefs_bin};

fn simple_layer(dir: &TestDir, name: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    LayerSpec::new()
        .file("etc/passwd", "root:x:0:0::/root:/bin/sh\n")
        .file("secret", "root only\n")
        .chmod("secret", 0o600)
        .chardev("dev/zero", 1, 5)
        .build(&p, Encoding::Overlay);
    p
}

/// Run shalefs with a deadline; the output pipes must close when the command returns, which is
/// how we know a daemon let go of them.
fn shalefs_with_deadline(args: &[OsString]) -> std::process::Output {
    let (tx, rx) = mpsc::channel();
    let mut cmd = Command::new(shalefs_bin());
    cmd.args(args).stdin(Stdio::null());
    std::thread::spawn(move || {
        let _ = tx.send(cmd.output());
    });
    rx.recv_timeout(Duration::from_secs(30)).expect("shalefs kept its output open, or hung").expect("run shalefs")
}

#[test]
fn daemon_mode_returns_once_live_and_lets_go_of_the_terminal() {
    let dir = TestDir::new("daemon");
    let lower = simple_layer(&dir, "l");
    let mnt = dir.mkdir("mnt");
    let out = shalefs_with_deadline(&["mount".into(), "--lower".into(), lower.into(), mnt.clone().into()]);
    let _guard = DaemonMount { mnt: mnt.clone() };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(is_mounted(&mnt), "the command returned before the mount was live");
    assert_eq!(std::fs::read_to_string(mnt.join("etc/passwd")).unwrap(), "root:x:0:0::/root:/bin/sh\n");
    run_ok(Command::new(shalefs_bin()).arg("umount").arg(&mnt));
    assert!(!is_mounted(&mnt));
}

#[test]
fn sigterm_unmounts_cleanly() {
    let dir = TestDir::new("sigterm");
    let lower = simple_layer(&dir, "l");
    let mnt = dir.mkdir("mnt");
    let mut m = ShaleMount::lowers(&[lower.as_path()], &mnt);
    let pid = m.pid().expect("pid of the process we started") as i32;
    // SAFETY: signalling a child this test started, by its PID.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = m.wait_exit(Duration::from_secs(10)).expect("shalefs did not exit on SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(!is_mounted(&mnt));
}

#[test]
fn plain_umount_ends_the_daemon() {
    let dir = TestDir::new("umount");
    let lower = simple_layer(&dir, "l");
    let mnt = dir.mkdir("mnt");
    let mut m = ShaleMount::lowers(&[lower.as_path()], &mnt);
    run_ok(Command::new("umount").arg(&mnt));
    let status = m.wait_exit(Duration::from_secs(10)).expect("shalefs did not exit after umount");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn overlay_option_spelling_and_symlinked_layers() {
    let dir = TestDir::new("ospell");
    let a = simple_layer(&dir, "a");
    let b = dir.path().join("b");
    LayerSpec::new().file("etc/hostname", "b\n").whiteout("secret").build(&b, Encoding::Overlay);
    let link = dir.path().join("b-link");
    std::os::unix::fs::symlink(&b, &link).unwrap();
    let mnt = dir.mkdir("mnt");
    let opt = format!("lowerdir={}:{},index=on,redirect_dir=on", link.display(), a.display());
    let _m = ShaleMount::foreground(&["-o".into(), opt.into()], &mnt).unwrap();
    assert_eq!(std::fs::read_to_string(mnt.join("etc/hostname")).unwrap(), "b\n");
    assert!(mnt.join("etc/passwd").exists());
    assert!(!mnt.join("secret").exists());
}

#[test]
fn root_mount_is_usable_by_every_user_with_normal_permission_checks() {
    let dir = TestDir::new("perm");
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let lower = simple_layer(&dir, "l");
    let mnt = dir.mkdir("mnt");
    let _m = ShaleMount::lowers(&[lower.as_path()], &mnt);
    let as_nobody = |path: &Path| {
        run(Command::new("setpriv").args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"]).arg(path))
    };
    let ok = as_nobody(&mnt.join("etc/passwd"));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let denied = as_nobody(&mnt.join("secret"));
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("Permission denied"));
    let opts = mount_options(&mnt).unwrap();
    assert!(!opts.contains("nosuid") && !opts.contains("nodev"), "{opts}");
    let zeros = run_ok(Command::new("head").args(["-c", "4"]).arg(mnt.join("dev/zero")));
    assert_eq!(zeros.as_bytes(), &[0, 0, 0, 0], "device nodes must work");
}

fn expect_error(args: &[OsString], must_mention: &str) {
    let out = shalefs_with_deadline(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line, got: {err}");
    assert!(err.starts_with("shalefs: "), "{err}");
    assert!(err.contains(must_mention), "{err:?} should mention {must_mention:?}");
}

#[test]
fn bad_input_gets_a_clear_one_line_error() {
    let dir = TestDir::new("errors");
    let lower = simple_layer(&dir, "l");
    let mnt = dir.mkdir("mnt");
    let missing = dir.path().join("no-such-layer");
    let m = |v: &Path| -> OsString { v.as_os_str().to_owned() };
    expect_error(&["mount".into(), "--lower".into(), m(&missing), m(&mnt)], "no-such-layer");
    expect_error(&["mount".into(), "--lower".into(), m(&lower.join("etc/passwd")), m(&mnt)], "not a directory");
    expect_error(&["mount".into(), "--lower".into(), m(&lower), m(&lower)], "not an empty directory");
    expect_error(&["mount".into(), "--lower".into(), m(&lower), "--upper".into(), m(&dir.mkdir("u")), m(&mnt)], "work directory");
    expect_error(&["mount".into(), "-o".into(), format!("lowerdir={},bogus=1", lower.display()).into(), m(&mnt)], "bogus");
    expect_error(&["mount".into(), m(&mnt)], "no lower layer");
    expect_error(&["umount".into(), m(&mnt)], "not a mount point");
    assert!(!is_mounted(&mnt));
}
