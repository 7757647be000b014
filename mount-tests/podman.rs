//! shalefs as podman's and buildah's mount program (`mount_program` in storage.conf), rootful
//! and rootless, through real podman, buildah and runc: mount-tests/podman/e2e.sh runs the
//! checks (run, exec, stop/start, commit, build, save/load, image mount, three containers,
//! --uidmap, buildah) and prints each with its time; these tests make the test user, the
//! /dev/fuse mode and the cleanup around it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{TestDir, run, run_ok, shalefs_bin};

fn e2e_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-tests/podman/e2e.sh")
}

/// Run the checks, in an environment of their own (only PATH kept); panics with their report
/// unless all passed.
fn run_checks(mut cmd: Command) {
    cmd.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()));
    let out = run(&mut cmd);
    let report = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("{report}");
    assert!(out.status.success(), "podman end-to-end checks failed:\n{report}");
}

/// Unmounts whatever is still mounted under a directory (podman bind-mounts its graph's
/// overlay/ on itself; a failed check may leave a container mounted), deepest first.
struct UnmountBelow(PathBuf);

impl Drop for UnmountBelow {
    fn drop(&mut self) {
        let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else { return };
        let mut below: Vec<&str> = mounts.lines().filter_map(|l| l.split(' ').nth(1)).filter(|m| Path::new(m).starts_with(&self.0)).collect();
        below.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in below {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

#[test]
fn podman_and_buildah_run_on_shalefs_as_root() {
    let dir = TestDir::new("pf");
    let _unmount = UnmountBelow(dir.path().to_path_buf());
    let mut cmd = Command::new(e2e_script());
    cmd.arg(shalefs_bin()).arg(dir.path()).arg("rootful");
    run_checks(cmd);
}

/// A user with a subordinate id range of 65536 (so `--uidmap 0:1:65536` fits its namespace),
/// removed with its processes (podman's pause process) when dropped.
struct TestUser {
    name: String,
}

impl TestUser {
    fn new(home: &Path) -> TestUser {
        let name = format!("shalefs-pm{}", std::process::id());
        let ok = Command::new("useradd")
            .args(["-M", "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", "-d"])
            .arg(home)
            .arg(&name)
            .status()
            .expect("run useradd");
        assert!(ok.success(), "useradd {name} failed");
        let user = TestUser { name };
        let ok = Command::new("usermod")
            .args(["--add-subuids", "300000-365535", "--add-subgids", "300000-365535", &user.name])
            .status()
            .expect("run usermod");
        assert!(ok.success(), "usermod --add-subuids failed");
        user
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // Only this user's processes: podman's rootless pause process outlives the commands.
        let pids = || Command::new("pgrep").arg("-u").arg(&self.name).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        for _ in 0..50 {
            let left = pids();
            if left.trim().is_empty() {
                break;
            }
            for pid in left.split_whitespace() {
                let _ = Command::new("kill").arg("-KILL").arg(pid).status();
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // userdel also removes the user's /etc/subuid and /etc/subgid ranges.
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

/// /dev/fuse open to every user for the test (udev's 0666 on a normal host), its mode put back
/// when dropped.
struct DevFuseMode(u32);

impl DevFuseMode {
    fn open_to_all() -> DevFuseMode {
        let old = std::fs::metadata("/dev/fuse").expect("stat /dev/fuse").permissions().mode() & 0o7777;
        std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).expect("chmod /dev/fuse");
        DevFuseMode(old)
    }
}

impl Drop for DevFuseMode {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(self.0));
    }
}

#[test]
fn podman_and_buildah_run_on_shalefs_rootless() {
    // A short path: with a test directory of 40 characters, rootless `podman run` waits 20 s for
    // each container's exit (its runtime paths pass a limit, likely the 108 of a socket address).
    let dir = TestDir::new("pm");
    let _unmount = UnmountBelow(dir.path().to_path_buf());
    let work = dir.mkdir("w");
    let user = TestUser::new(&work.join("home"));
    let _fuse = DevFuseMode::open_to_all();
    // The user needs to reach its work directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod test dir");
    assert!(run(Command::new("chown").arg(format!("{0}:{0}", user.name)).arg(&work)).status.success());
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", &user.name, "--"]).arg(e2e_script()).arg(shalefs_bin()).arg(&work).arg("rootless").current_dir("/");
    run_checks(cmd);
}

/// The form containers/storage runs, without podman: `shalefs -o OPTS MERGED` from the graph's
/// overlay/ with relative `l/` symlinks, fuse-overlayfs' extras, an id mapping; exit 0 means
/// live, `fusermount3 -u` ends the daemon.
#[test]
fn mount_program_form_mounts_live_shifts_owners_and_warns_about_unknown_options() {
    use crate::util::mounts::DaemonMount;
    use std::os::unix::fs::MetadataExt;
    let dir = TestDir::new("mpform");
    let layer = dir.mkdir("layer/diff");
    std::fs::write(layer.join("f"), "from the layer").unwrap();
    std::os::unix::fs::chown(layer.join("f"), Some(7), Some(8)).unwrap();
    let overlay = dir.mkdir("overlay");
    std::fs::create_dir(overlay.join("l")).unwrap();
    std::os::unix::fs::symlink("../../layer/diff", overlay.join("l/AAA")).unwrap();
    let (upper, work, merged) = (dir.mkdir("c/diff"), dir.mkdir("c/work"), dir.mkdir("c/merged"));
    let opts = format!(
        r#"lowerdir=l/AAA,upperdir={},workdir={},,volatile,context="system_u:object_r:container_file_t:s0:c1,c2",uidmapping=:0:100000:65536,gidmapping=:0:100000:65536,frobnicate,nodev"#,
        upper.display(),
        work.display()
    );
    let out = run(Command::new(shalefs_bin()).arg("-o").arg(&opts).arg(&merged).current_dir(&overlay).stdin(std::process::Stdio::null()));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "mount program form failed: {stderr}");
    let _mount = DaemonMount { mnt: merged.clone() };
    assert_eq!(stderr.trim(), "unknown argument ignored: frobnicate");
    // Live at exit, owners shifted: disk 7:8 shows as 100007:100008.
    let meta = std::fs::metadata(merged.join("f")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (100007, 100008));
    assert_eq!(std::fs::read_to_string(merged.join("f")).unwrap(), "from the layer");
    // A chown through the mount lands unshifted on disk; an unmapped id is EINVAL.
    std::os::unix::fs::chown(merged.join("f"), Some(100001), Some(100002)).unwrap();
    let up = std::fs::metadata(upper.join("f")).unwrap();
    assert_eq!((up.uid(), up.gid()), (1, 2));
    let err = std::os::unix::fs::chown(merged.join("f"), Some(5), None).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    // POSIX ACL entries are ids too: written through the mount they land unshifted, and read
    // back shifted (getfacl -n: numeric ids).
    assert!(run(Command::new("setfacl").args(["-m", "u:100005:r,g:100006:r"]).arg(merged.join("f"))).status.success());
    let on_disk = run_ok(Command::new("getfacl").args(["-n", "-c"]).arg(upper.join("f")));
    assert!(on_disk.contains("user:5:r--") && on_disk.contains("group:6:r--"), "upper's ACL: {on_disk}");
    let through = run_ok(Command::new("getfacl").args(["-n", "-c"]).arg(merged.join("f")));
    assert!(through.contains("user:100005:r--") && through.contains("group:100006:r--"), "merged ACL: {through}");
    let refused = run(Command::new("setfacl").args(["-m", "u:5:r"]).arg(merged.join("f")));
    assert!(!refused.status.success(), "an ACL entry for an unmapped id was accepted");
    // fusermount3 -u (podman's first choice) unmounts, and the daemon goes with it.
    assert!(run(Command::new("fusermount3").arg("-u").arg(&merged)).status.success());
    assert!(!crate::util::is_mounted(&merged));
}

#[test]
fn mount_program_form_prints_a_version_and_fails_with_one_line() {
    let out = run(Command::new(shalefs_bin()).arg("--version"));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("shalefs "));
    let dir = TestDir::new("mpfail");
    let out = run(Command::new(shalefs_bin()).arg("-o").arg("lowerdir=l/missing").arg(dir.path()).current_dir(dir.path()));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("lower layer l/missing"), "{stderr}");
}

/// With the mount-program form's MERGED positional at the top level, `--root DIR pull REF`
/// was taken for a mountpoint and a stray subcommand.
#[test]
fn a_global_root_before_a_subcommand_is_not_taken_for_the_mount_program_form() {
    let dir = TestDir::new("mproot");
    let out = run(Command::new(shalefs_bin()).arg("--root").arg(dir.path()).arg("images"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("REPOSITORY"));
}
