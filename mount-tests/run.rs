//! `shalefs run` for real: images built by umoci (busybox-static, a passwd and group file, and
//! tags that differ only in their config), pushed to a docker-registry and pulled into one store
//! shared by these tests (each test its own containers); every run a real process in real
//! namespaces on a real FUSE mount.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::util::registry::{Auth, Registry, UmociImage, listing};
use crate::util::{TestDir, run, run_ok, shalefs_bin};

/// The tags, each a config over the same one layer.
const TAGS: &[(&str, &[&str])] = &[
    ("base", &["--config.cmd", "/bin/sh"]),
    // Env, WorkingDir, User and an exec-form Entrypoint + Cmd.
    ("cfg", &["--config.env", "A=image", "--config.env", "B=image", "--config.workingdir", "/srv/app", "--config.user", "app", "--config.entrypoint", "/bin/echo", "--config.entrypoint", "entry", "--config.cmd", "cmd"]),
    ("cmd-only", &["--config.cmd", "/bin/echo", "--config.cmd", "cmd", "--config.cmd", "p1"]),
    ("shell-entry", &["--config.entrypoint", "/bin/sh", "--config.entrypoint", "-c", "--config.entrypoint", "echo shell-entry $0", "--config.cmd", "ignored"]),
    ("shell-cmd", &["--config.entrypoint", "/bin/echo", "--config.entrypoint", "entry", "--config.cmd", "/bin/sh", "--config.cmd", "-c", "--config.cmd", "echo cmd"]),
    ("nothing", &["--clear=config.cmd"]),
];

struct Fixture {
    store: PathBuf,
    registry_host: String,
}

fn busybox() -> PathBuf {
    ["/bin/busybox", "/usr/bin/busybox"].iter().map(PathBuf::from).find(|p| p.exists()).expect("busybox-static is installed")
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("run-fixture");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("fixture dir");
        let image = UmociImage::new(&dir, "base");
        image.layer(|root| {
            for d in ["bin", "etc", "home/app"] {
                std::fs::create_dir_all(root.join(d)).unwrap();
            }
            std::fs::copy(busybox(), root.join("bin/busybox")).unwrap();
            for applet in ["sh", "ls", "cat", "echo", "id", "sleep", "env", "pwd", "hostname", "stat", "test", "touch", "tty", "stty", "ps", "grep", "readlink", "tr", "["] {
                std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
            }
            std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n").unwrap();
            std::fs::write(root.join("etc/group"), "root:x:0:\napp:x:1000:\nwheel:x:10:root,app\naudio:x:29:app\nstaff:x:50:nobody\n").unwrap();
            std::fs::write(root.join("bin/not-executable"), "#!/bin/sh\necho never\n").unwrap();
        });
        let registry = Registry::start(&dir, Auth::None);
        let host = registry.host();
        let store = dir.join("store");
        let others: Vec<UmociImage> = TAGS.iter().skip(1).map(|(tag, _)| image.tag_as(tag)).collect();
        for ((tag, config), t) in TAGS.iter().zip(std::iter::once(&image).chain(others.iter())) {
            t.config(config);
            t.push(&format!("{host}/run/img:{tag}"), &[]);
            run_ok(Command::new(shalefs_bin()).arg("--root").arg(&store).args(["pull", "--quiet"]).arg(format!("{host}/run/img:{tag}")));
        }
        // The store holds what the tests need; the registry is not needed any more.
        drop(registry);
        Fixture { store, registry_host: host }
    })
}

fn image(tag: &str) -> String {
    format!("{}/run/img:{tag}", fixture().registry_host)
}

fn shalefs() -> Command {
    let mut c = Command::new(shalefs_bin());
    c.arg("--root").arg(&fixture().store);
    c
}

/// `shalefs run ARGS`, its output.
fn run_args(args: &[&str]) -> Output {
    run(shalefs().arg("run").args(args).stdin(Stdio::null()))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A `run` whose command must succeed; its stdout.
fn run_out(args: &[&str]) -> String {
    let o = run_args(args);
    assert!(o.status.success(), "run {args:?} failed ({}): {}{}", o.status, stdout(&o), stderr(&o));
    stdout(&o)
}

fn container_exists(name: &str) -> bool {
    fixture().store.join("containers").join(name).exists()
}

/// Removes a test's container, whatever happened.
struct ContainerGuard(&'static str);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if container_exists(self.0) {
            let _ = shalefs().args(["rm", self.0]).output();
        }
    }
}

fn host_mounts_of(name: &str) -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts.lines().filter(|l| l.starts_with(&format!("shalefs:{name} "))).map(String::from).collect()
}

/// The `sleep` processes whose command line is `marker` (never shalefs, whose arguments hold it).
fn processes_with(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).replace('\0', " ").trim_end() == marker {
                out.push(pid);
            }
    }
    out
}

/// A `run` in the background, killed (by its PID) if the test ends before it does.
struct Running(Option<Child>);

impl Running {
    fn start(args: &[&str]) -> Running {
        let child = shalefs().arg("run").args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start shalefs run");
        Running(Some(child))
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("running")
    }

    /// Poll `cond` until it holds; the run must not end meanwhile.
    fn wait_for(&mut self, cond: impl Fn() -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            if let Ok(Some(s)) = self.child().try_wait() {
                panic!("shalefs run ended ({s}) before {what}");
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&mut self) -> i32 {
        self.child().id() as i32
    }

    fn kill(&mut self, sig: i32) {
        let pid = self.pid();
        // SAFETY: kill(2) of the process this guard started, still unreaped.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {pid}");
    }

    fn wait(mut self) -> std::process::ExitStatus {
        self.child().wait().expect("wait for shalefs run")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut()
            && let Ok(None) = c.try_wait() {
                let _ = c.kill();
                let _ = c.wait();
            }
    }
}

#[test]
fn run_passes_the_exit_status_on_127_for_a_missing_command_126_for_a_non_executable() {
    let img = image("base");
    assert_eq!(run_args(&["--rm", &img, "sh", "-c", "exit 7"]).status.code(), Some(7));
    let missing = run_args(&["--rm", &img, "no-such-command"]);
    assert_eq!(missing.status.code(), Some(127), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("executable file not found in $PATH"), "{}", stderr(&missing));
    assert_eq!(run_args(&["--rm", &img, "/bin/no-such"]).status.code(), Some(127));
    // A command killed by a signal: 128 + N (SIGKILL from the host, as `docker kill`).
    let sleeper = "sleep 987652.5";
    let mut r = Running::start(&["--rm", &img, "sh", "-c", &format!("exec {sleeper}")]);
    r.wait_for(|| !processes_with(sleeper).is_empty(), "the command to start");
    for pid in processes_with(sleeper) {
        // SAFETY: kill(2) of the container process this test's run started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    assert_eq!(r.wait().code(), Some(137));
    let denied = run_args(&["--rm", &img, "/bin/not-executable"]);
    assert_eq!(denied.status.code(), Some(126), "{}", stderr(&denied));
    assert!(stderr(&denied).contains("permission denied"), "{}", stderr(&denied));
    // shalefs' own failures are 125, with one line naming what was wrong.
    let nothing = run_args(&["--rm", &image("nothing")]);
    assert_eq!(nothing.status.code(), Some(125));
    assert!(stderr(&nothing).contains("no command specified"), "{}", stderr(&nothing));
    let no_image = run_args(&["--rm", "no-such-image:1", "true"]);
    assert_eq!(no_image.status.code(), Some(125));
    assert!(stderr(&no_image).contains("no such image: no-such-image:1"), "{}", stderr(&no_image));
}

#[test]
fn env_workdir_user_and_entrypoint_follow_the_image_config_and_dockers_overrides() {
    let img = image("cfg");
    // Entrypoint + Cmd from the config, as User in WorkingDir.
    assert_eq!(run_out(&["--rm", &img]), "entry cmd\n");
    let out = run_out(&["--rm", "--entrypoint", "/bin/sh", "--hostname", "h-cfg", &img, "-c", "id -u; pwd; env"]);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("1000"));
    assert_eq!(lines.next(), Some("/srv/app"), "WorkingDir is made when the image lacks it");
    let env: Vec<&str> = lines.collect();
    for want in ["A=image", "B=image", "HOSTNAME=h-cfg", "HOME=/home/app", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] {
        assert!(env.contains(&want), "{want} missing from {env:?}");
    }
    assert!(!env.iter().any(|e| e.starts_with("TERM=")), "TERM without -t: {env:?}");
    // -e, --env-file, -w and -u override; `-e KEY` takes the host's value.
    let dir = TestDir::new("run-env");
    let env_file = dir.path().join("env");
    std::fs::write(&env_file, "# comment\nB=file\nC=file\n").unwrap();
    let out = run(shalefs()
        .args(["run", "--rm", "--env-file"])
        .arg(&env_file)
        .args(["-e", "C=flag", "-e", "FROM_HOST", "-e", "PATH=/bin", "-w", "/tmp/w", "-u", "0:50", "--entrypoint", "/bin/sh", &img, "-c", "echo $A $B $C $FROM_HOST $PATH $HOME; pwd; id -u; id -g"])
        .env("FROM_HOST", "hostvalue")
        .stdin(Stdio::null()));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "image file flag hostvalue /bin /root\n/tmp/w\n0\n50\n");
    assert_eq!(run_args(&["--rm", "-w", "relative", &img]).status.code(), Some(125));
}

#[test]
fn entrypoint_and_cmd_combine_as_in_dockers_table() {
    let echo = |tag: &str, extra: &[&str]| {
        let img = image(tag);
        let mut args = vec!["--rm"];
        args.extend_from_slice(&extra[..extra.iter().position(|a| *a == "IMG").unwrap_or(extra.len())]);
        args.push(&img);
        if let Some(p) = extra.iter().position(|a| *a == "IMG") {
            args.extend_from_slice(&extra[p + 1..]);
        }
        run_out(&args)
    };
    // No ENTRYPOINT, exec CMD.
    assert_eq!(echo("cmd-only", &[]), "cmd p1\n");
    // Shell-form ENTRYPOINT ignores CMD (it becomes $0 at most).
    assert_eq!(echo("shell-entry", &[]), "shell-entry ignored\n");
    // Exec ENTRYPOINT + exec CMD; COMMAND replaces CMD only.
    assert_eq!(echo("cfg", &["-u", "0"]), "entry cmd\n");
    assert_eq!(echo("cfg", &["-u", "0", "IMG", "x", "y"]), "entry x y\n");
    // Exec ENTRYPOINT + shell-form CMD: the shell words are arguments.
    assert_eq!(echo("shell-cmd", &[]), "entry /bin/sh -c echo cmd\n");
    // --entrypoint replaces ENTRYPOINT and drops the image's CMD; "" clears it.
    assert_eq!(echo("cfg", &["-u", "0", "--entrypoint", "/bin/echo"]), "\n");
    assert_eq!(echo("cfg", &["-u", "0", "--entrypoint", "/bin/echo", "IMG", "z"]), "z\n");
    assert_eq!(echo("cfg", &["-u", "0", "--entrypoint", "", "IMG", "/bin/echo", "only"]), "only\n");
}

#[test]
fn a_user_name_resolves_through_the_images_passwd_and_group() {
    let img = image("base");
    let id = |user: &str| run_out(&["--rm", "-u", user, &img, "sh", "-c", "id; echo $HOME"]);
    // The primary group and the groups that list the user (as docker sets them; the kernel
    // keeps them sorted).
    assert_eq!(id("app"), "uid=1000(app) gid=1000(app) groups=10(wheel),29(audio),1000(app)\n/home/app\n");
    // An explicit group replaces the primary one and drops the membership groups (runc).
    assert_eq!(id("app:audio"), "uid=1000(app) gid=29(audio) groups=29(audio)\n/home/app\n");
    // Numbers are taken as they are; root gets its membership from the image's group file.
    assert_eq!(id("4242:77"), "uid=4242 gid=77 groups=77\n/\n");
    assert_eq!(id("0"), "uid=0(root) gid=0(root) groups=0(root),10(wheel)\n/root\n");
    let ghost = run_args(&["--rm", "-u", "ghost", &img, "id"]);
    assert_eq!(ghost.status.code(), Some(125));
    assert!(stderr(&ghost).contains("unable to find user ghost"), "{}", stderr(&ghost));
}

#[test]
fn sigterm_sent_to_shalefs_reaches_the_command() {
    let _guard = ContainerGuard("run-sigterm");
    let mut r = Running::start(&["--rm", "--name", "run-sigterm", &image("base"), "sh", "-c", "trap 'exit 42' TERM; touch /ready; i=0; while [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; exit 9"]);
    let ready = fixture().store.join("containers/run-sigterm/upper/ready");
    r.wait_for(|| ready.exists(), "the command to set its trap");
    r.kill(libc::SIGTERM);
    assert_eq!(r.wait().code(), Some(42));
    assert!(!container_exists("run-sigterm"), "--rm left the container");
}

#[test]
fn kill_9_of_shalefs_leaves_no_mount_on_the_host_and_no_container_process() {
    let _guard = ContainerGuard("run-kill9");
    let sleeper = "sleep 987654.25";
    let mut r = Running::start(&["--name", "run-kill9", &image("base"), "sh", "-c", &format!("touch /started; {sleeper}")]);
    let started = fixture().store.join("containers/run-kill9/upper/started");
    r.wait_for(|| started.exists() && !processes_with(sleeper).is_empty(), "the command to start");
    // The host never sees the mount, not even while it lives.
    assert_eq!(host_mounts_of("run-kill9"), Vec::<String>::new());
    r.kill(libc::SIGKILL);
    let status = r.wait();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_with(sleeper).is_empty() {
        assert!(Instant::now() < deadline, "the container process outlived shalefs: {:?}", processes_with(sleeper));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!std::fs::read_to_string("/proc/mounts").unwrap().contains("run-kill9"), "a mount was left on the host");
    // The container outlives its killed run and can be entered again, with its changes.
    assert_eq!(run_out(&["--container", "run-kill9", "ls", "/started"]), "/started\n");
}

#[test]
fn rm_removes_the_container_and_without_it_run_container_sees_the_earlier_changes() {
    let _guard = ContainerGuard("run-keep");
    run_out(&["--rm", "--name", "run-gone", &image("base"), "sh", "-c", "echo x > /f"]);
    assert!(!container_exists("run-gone"), "--rm left the container");
    run_out(&["--name", "run-keep", &image("base"), "sh", "-c", "echo kept > /etc/mark; rm /etc/group"]);
    assert!(container_exists("run-keep"));
    assert_eq!(run_out(&["--container", "run-keep", "sh", "-c", "cat /etc/mark; test -e /etc/group || echo gone"]), "kept\ngone\n");
    // The mount points run needs (/proc, /sys, /dev, /etc/hosts, /etc/resolv.conf, missing from
    // the image) are not in the upper: diff and commit never see them.
    let upper = fixture().store.join("containers/run-keep/upper");
    assert_eq!(listing(&upper), ["etc", "etc/group", "etc/mark"]);
    // While a run holds it, the container can be neither run again nor removed.
    let mut r = Running::start(&["--container", "run-keep", "sh", "-c", "touch /busy; sleep 987653.5"]);
    r.wait_for(|| upper.join("busy").exists(), "the command to start");
    let again = run_args(&["--container", "run-keep", "true"]);
    assert_eq!(again.status.code(), Some(125));
    assert!(stderr(&again).contains("in use"), "{}", stderr(&again));
    let ps = run_ok(shalefs().arg("ps"));
    assert!(ps.lines().any(|l| l.starts_with("run-keep ") && l.ends_with("(shalefs run)")), "{ps}");
    let rm = run(shalefs().args(["rm", "run-keep"]));
    assert!(!rm.status.success() && stderr(&rm).contains("in use"), "{}", stderr(&rm));
    let dir = TestDir::new("run-busy");
    let mount = run(shalefs().args(["mount", "--container", "run-keep"]).arg(dir.mkdir("mnt")));
    assert!(!mount.status.success() && stderr(&mount).contains("in use"), "{}", stderr(&mount));
    r.kill(libc::SIGKILL);
    r.wait();
    run_ok(shalefs().args(["rm", "run-keep"]));
    assert!(!container_exists("run-keep"));
}

#[test]
fn with_t_the_command_sees_a_terminal_and_the_window_size() {
    // `script` runs it on a pseudo-terminal of 33 rows and 101 columns.
    let cmd = format!(
        "stty rows 33 cols 101; {} --root {} run --rm -t {} sh -c 'tty; stty size; echo $TERM; test -t 0 && echo stdin-is-a-tty; exit 5'",
        shalefs_bin(),
        fixture().store.display(),
        image("base")
    );
    let out = run(Command::new("script").args(["-q", "-e", "-c", &cmd, "/dev/null"]).stdin(Stdio::null()));
    let text = stdout(&out).replace("\r\n", "\n");
    assert!(text.contains("/dev/pts/0\n33 101\nxterm\nstdin-is-a-tty\n"), "{text:?}");
    assert_eq!(out.status.code(), Some(5), "{text:?}");
    // Without -t: no terminal, no TERM.
    assert_eq!(run_out(&["--rm", &image("base"), "sh", "-c", "tty; echo ${TERM:-none}"]), "not a tty\nnone\n");
}

fn ns_of(path: &str) -> String {
    std::fs::read_link(path).map(|p| p.display().to_string()).unwrap_or_default()
}

#[test]
fn the_container_has_proc_sys_dev_its_hostname_its_namespaces_and_is_pid_1() {
    let script = "echo $$; hostname; ls /dev | tr '\\n' ' '; echo; stat -c '%F %t,%T %a' /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty; \
        readlink /dev/ptmx; readlink /dev/stdin; readlink /dev/fd; ls /proc | grep -c '^[0-9]'; touch /sys/x 2>/dev/null || echo sys-ro; \
        (echo x >> /etc/hosts) 2>/dev/null || echo hosts-ro; cat /etc/hosts; for n in uts ipc pid mnt net; do readlink /proc/1/ns/$n; done";
    let out = run_out(&["--rm", "--hostname", "box1", &image("base"), "sh", "-c", script]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1", "the command is PID 1 of its namespace: {out}");
    assert_eq!(lines[1], "box1");
    assert_eq!(lines[2], "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero ");
    assert_eq!(
        &lines[3..9],
        ["character special file 1,3 666", "character special file 1,5 666", "character special file 1,7 666", "character special file 1,8 666", "character special file 1,9 666", "character special file 5,0 666"]
    );
    assert_eq!(&lines[9..12], ["pts/ptmx", "/proc/self/fd/0", "/proc/self/fd"]);
    let pids: usize = lines[12].parse().unwrap();
    assert!(pids <= 4, "the container's /proc shows only its own processes: {pids}");
    assert_eq!(&lines[13..15], ["sys-ro", "hosts-ro"]);
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap();
    let ns_start = 15 + hosts.lines().count();
    assert_eq!(lines[15..ns_start].join("\n"), hosts.trim_end());
    let theirs = &lines[ns_start..];
    for (i, n) in ["uts", "ipc", "pid", "mnt"].iter().enumerate() {
        assert_ne!(theirs[i], ns_of(&format!("/proc/self/ns/{n}")), "{n} namespace shared with the host");
    }
    assert_eq!(theirs[4], ns_of("/proc/self/ns/net"), "the host network is kept");
}

fn set_window(fd: &std::os::fd::OwnedFd, rows: u16, cols: u16) {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
    assert_eq!(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) }, 0);
}

#[test]
fn with_t_a_sigwinch_passes_the_new_window_size_on() {
    let _guard = ContainerGuard("run-winch");
    // shalefs' terminal is a pty of this test's, 20×70; then it becomes 40×120 and shalefs gets
    // the SIGWINCH a terminal emulator would send.
    let pty = nix::pty::openpty(None, None).expect("openpty");
    set_window(&pty.master, 20, 70);
    let slave = || Stdio::from(pty.slave.try_clone().expect("dup"));
    let child = shalefs()
        .args(["run", "--rm", "-t", "--name", "run-winch", &image("base"), "sh", "-c", "trap 'stty size; exit 3' WINCH; stty size; touch /ready; i=0; while [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; exit 9"])
        .stdin(slave())
        .stdout(slave())
        .stderr(slave())
        .spawn()
        .expect("start shalefs run");
    let mut r = Running(Some(child));
    let mut output = std::fs::File::from(pty.master.try_clone().expect("dup"));
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut output, &mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&all).contains("40 120") {
                break;
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    let ready = fixture().store.join("containers/run-winch/upper/ready");
    r.wait_for(|| ready.exists(), "the command to set its trap");
    set_window(&pty.master, 40, 120);
    r.kill(libc::SIGWINCH);
    assert_eq!(r.wait().code(), Some(3));
    drop(pty.slave);
    let text = reader.join().expect("reader").replace("\r\n", "\n");
    assert!(text.contains("20 70\n") && text.contains("40 120\n"), "{text:?}");
}

#[test]
fn stdin_reaches_the_command_only_with_i_and_read_only_keeps_the_root_unwritten() {
    let img = image("base");
    let with_i = run(Command::new("sh").arg("-c").arg(format!(
        "echo piped | {} --root {} run --rm -i {img} cat; echo piped | {} --root {} run --rm {img} cat; echo end",
        shalefs_bin(),
        fixture().store.display(),
        shalefs_bin(),
        fixture().store.display()
    )));
    assert_eq!(stdout(&with_i), "piped\nend\n", "{}", stderr(&with_i));
    let _guard = ContainerGuard("run-ro");
    let out = run_out(&["--name", "run-ro", "--read-only", &img, "sh", "-c", "touch /x 2>/dev/null || echo root-ro; touch /dev/shm/y && echo shm-rw"]);
    assert_eq!(out, "root-ro\nshm-rw\n");
    assert_eq!(listing(&fixture().store.join("containers/run-ro/upper")), Vec::<String>::new());
}
