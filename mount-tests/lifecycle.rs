//! A mount's life around its daemon: `umount` frees the layers' filesystem at once (issue 14.7),
//! and a container whose daemon was killed is seen as dead and mounted again (issue 14.8).

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::util::loopfs::LoopFs;
use crate::util::mounts::DaemonMount;
use crate::util::{ShaleMount, TestDir, is_mounted, run, run_ok, shalefs_bin};

/// The PID the daemon serving `mnt` tells on its root.
fn daemon_pid(mnt: &Path) -> u32 {
    let out = run_ok(Command::new("getfattr").args(["--only-values", "-n", "trusted.shalefs.daemon-pid"]).arg(mnt));
    out.split(' ').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("daemon pid {out:?}"))
}

/// Gone, or a zombie not yet reaped by whoever inherited it (its files are closed either way).
fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Issue 14.7: `umount MERGED && umount /lower` got EBUSY now and then, the daemon still holding
/// its layers open for a moment after the unmount.
#[test]
fn unmounting_the_layers_filesystem_right_after_umount_is_never_busy() {
    let dir = TestDir::new("umount-frees");
    let fs = LoopFs::ext4(&dir.path().join("lower.img"), &dir.path().join("lowerfs"), 64, "");
    let lower = fs.mnt.join("lower");
    std::fs::create_dir_all(lower.join("d")).expect("lower");
    for i in 0..20 {
        std::fs::write(lower.join(format!("d/f{i}")), format!("file {i}\n")).expect("lower file");
    }
    let (upper, work, mnt) = (dir.mkdir("upper"), dir.mkdir("work"), dir.mkdir("mnt"));
    let opts = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
    for round in 0..40 {
        let plain = round % 2 == 1;
        run_ok(Command::new(shalefs_bin()).args(["mount", "-o", &opts]).arg(&mnt));
        let guard = DaemonMount { mnt: mnt.clone() };
        // Open files and directories of the lower, and copy one up, so the daemon holds some.
        for i in 0..20 {
            assert!(std::fs::read_to_string(mnt.join(format!("d/f{i}"))).expect("read").starts_with(&format!("file {i}\n")));
        }
        let mut f = std::fs::OpenOptions::new().append(true).open(mnt.join(format!("d/f{}", round % 20))).expect("copy-up");
        std::io::Write::write_all(&mut f, b"more\n").expect("append");
        drop(f);
        let pid = daemon_pid(&mnt);
        if plain {
            run_ok(Command::new("umount").arg(&mnt));
        } else {
            run_ok(Command::new(shalefs_bin()).arg("umount").arg(&mnt));
            assert!(has_exited(pid), "shalefs umount returned before daemon {pid} exited");
        }
        drop(guard);
        if let Err(e) = fs.umount_keeping_device() {
            panic!("round {round} ({}): {e}", if plain { "umount" } else { "shalefs umount" });
        }
        fs.mount_again();
    }
}

/// Issue 14.8: after kill -9 of a container mount's daemon, `ps` still said mounted and
/// `mount --container` refused with "already mounted" over a mountpoint answering ENOTCONN.
#[test]
fn a_container_mount_whose_daemon_was_killed_is_shown_dead_and_mounts_again() {
    let dir = TestDir::new("dead-daemon");
    let store = dir.path().join("store");
    let hex = "ab".repeat(32);
    let layer = store.join("layers").join(&hex);
    std::fs::create_dir_all(&layer).expect("layer");
    std::fs::write(layer.join("hello"), "hello\n").expect("layer file");
    let c = store.join("containers/c1");
    std::fs::create_dir_all(c.join("upper")).expect("upper");
    std::fs::create_dir_all(c.join("work")).expect("work");
    let record = serde_json::json!({
        "name": "c1", "image": format!("sha256:{hex}"), "image_name": "test:1",
        "layers": [format!("sha256:{hex}")], "created_at": 0
    });
    std::fs::write(c.join("container.json"), record.to_string()).expect("record");
    let mnt = dir.mkdir("mnt");
    let args: Vec<OsString> = vec!["--root".into(), store.clone().into(), "--container".into(), "c1".into()];

    let mut first = ShaleMount::foreground(&args, &mnt).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(mnt.join("mine"), "kept\n").expect("write");
    let pid = first.pid().expect("pid");
    run_ok(Command::new("kill").args(["-9", &pid.to_string()]));
    assert!(first.wait_exit(Duration::from_secs(10)).is_some(), "the killed daemon did not exit");
    let dead = std::fs::metadata(&mnt).map(drop).map_err(|e| e.raw_os_error());
    assert_eq!(dead, Err(Some(libc::ENOTCONN)));
    assert!(is_mounted(&mnt));

    let ps = run_ok(Command::new(shalefs_bin()).arg("--root").arg(&store).arg("ps"));
    assert!(ps.lines().any(|l| l.starts_with("c1 ") && l.contains("(dead: daemon gone)")), "{ps}");

    let second = ShaleMount::foreground(&args, &mnt).unwrap_or_else(|e| panic!("{e}"));
    // The dead mount counts as mounted until the new process has detached it and mounted anew.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(mnt.join("hello")).is_err() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(std::fs::read_to_string(mnt.join("hello")).expect("read"), "hello\n");
    assert_eq!(std::fs::read_to_string(mnt.join("mine")).expect("read"), "kept\n");
    let log = std::fs::read_to_string(&second.log).unwrap_or_default();
    assert!(log.contains("detached its dead mount"), "{log}");
    let ps = run_ok(Command::new(shalefs_bin()).arg("--root").arg(&store).arg("ps"));
    assert!(ps.lines().any(|l| l.starts_with("c1 ") && l.contains(mnt.to_str().unwrap_or("?")) && !l.contains("(dead")), "{ps}");
    drop(second);
    // Nothing is left mounted there, dead or alive.
    let out = run(Command::new("umount").arg(&mnt));
    assert!(!out.status.success() && !is_mounted(&mnt));
}
