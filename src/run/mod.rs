//! `shalefs run`: a command in a container, as `docker run` starts one, on the container's
//! merged tree.
//!
//! The shape (`run` is chroot with namespaces, not a security sandbox):
//! - this process takes a private mount namespace first (before any thread exists, so every
//!   thread shares it), mounts the container there and serves the FUSE session from its own
//!   threads: the host never sees the mount, and when this process ends — even by `kill -9` —
//!   the mount goes with it;
//! - it starts a helper (`shalefs run-init`, [`init`]) as PID 1 of a new PID namespace, with
//!   SIGKILL as parent-death signal; the helper takes new mount, UTS and IPC namespaces, mounts
//!   /proc, /sys and /dev and binds resolv.conf/hosts ([`rootfs`]), pivots into the tree,
//!   resolves the user in the image's own files ([`user`]) and execs Entrypoint + Cmd as docker
//!   combines them ([`spec`]);
//! - this process stays as the parent: it forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT, passes
//!   a terminal through with `-t` ([`pty`]), reaps, and returns the command's exit status
//!   (128 + N for a signal).

pub mod init;
pub mod init_layer;
pub mod pty;
pub mod rootfs;
pub mod spec;
pub mod user;

use std::io::Write;
use std::os::fd::AsFd;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGWINCH};
use signal_hook::iterator::Signals;

use crate::plan::{MountPlan, serve};
use crate::sys::process as sysproc;

pub use init::{InitFailure, InitSpec};

/// Everything `run` needs, checked: the filesystem to serve and where, and the helper's spec.
pub struct RunPlan {
    /// The container's mount, on a directory of its own in the store.
    pub mount: MountPlan,
    pub init: InitSpec,
    /// `-i`: the command reads this process's stdin (else /dev/null).
    pub interactive: bool,
}

/// How the command ended before or after its exec.
pub enum Outcome {
    /// The command ran; its exit status as a shell reports it.
    Exited(u8),
    /// The helper stopped before the exec.
    NotStarted(InitFailure),
}

/// A private mount namespace for this process: mounts made here never propagate to the host
/// (MS_SLAVE: the host's later mounts still show here). Must run before any thread starts.
pub fn enter_private_mount_namespace() -> anyhow::Result<()> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).context("a new mount namespace (run needs root)")?;
    nix::mount::mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .context("making the mount namespace a slave of the host's")?;
    Ok(())
}

pub fn run(plan: RunPlan) -> anyhow::Result<Outcome> {
    let bg = serve::mount(&plan.mount)?.spawn().context("starting the FUSE session")?;
    let outcome = run_mounted(&plan.init, plan.interactive);
    finish_session(bg);
    crate::plan::labels::finish();
    outcome
}

/// Unmount and wait (briefly) for the session threads; the process exit ends them anyway.
fn finish_session(bg: fuser::BackgroundSession) {
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = std::thread::Builder::new().name("unmount".into()).spawn(move || {
        let _ = tx.send(bg.umount_and_join());
    });
    if let Ok(Err(e)) = rx.recv_timeout(Duration::from_secs(5)) {
        tracing::warn!("ending the FUSE session: {e}");
    }
}

fn run_mounted(init: &InitSpec, interactive: bool) -> anyhow::Result<Outcome> {
    // Registered before the child exists, so a signal that arrives meanwhile is forwarded.
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH]).context("installing signal handlers")?;
    let raw = init.tty.then(pty::RawMode::enter);
    let exe = std::env::current_exe().context("finding the shalefs executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("run-init");
    if !interactive || init.tty {
        cmd.stdin(Stdio::null());
    }
    let (mut control, theirs) = UnixStream::pair().context("a control socket for the helper")?;
    let child = Parent::start(cmd, theirs.into())?;
    control.write_all(&serde_json::to_vec(init)?).context("sending the run spec")?;
    control.shutdown(std::net::Shutdown::Write).context("sending the run spec")?;
    // Until the exec closes the helper's end: the terminal's master, or why it failed.
    let (mut report, fds) = sysproc::recv_all_with_fds(control.as_fd()).context("reading from the container's init")?;
    if report.first() == Some(&init::TTY_TAG) {
        report.remove(0);
    }
    let master = fds.into_iter().next();
    let copier = match &master {
        Some(m) => Some(pty::start_copying(m, interactive)?),
        None => None,
    };
    if !report.is_empty() {
        let _ = child.wait();
        drop(raw);
        let failure = serde_json::from_slice(&report).unwrap_or(InitFailure { code: init::CODE_OTHER, message: "the container's init failed".into() });
        return Ok(Outcome::NotStarted(failure));
    }
    let pid = child.pid;
    let handle = signals.handle();
    let forwarder = std::thread::Builder::new().name("signals".into()).spawn(move || {
        for sig in signals.forever() {
            match (sig, &master) {
                (SIGWINCH, Some(m)) => pty::resize(m),
                (SIGWINCH, None) => {}
                _ => {
                    if let Ok(s) = Signal::try_from(sig) {
                        let _ = nix::sys::signal::kill(pid, s);
                    }
                }
            }
        }
    })?;
    let status = child.wait().context("waiting for the command")?;
    handle.close();
    let _ = forwarder.join();
    if let Some(c) = copier {
        let _ = c.join();
    }
    drop(raw);
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(s)) => 128u8.wrapping_add(s as u8),
        (None, None) => init::CODE_OTHER,
    };
    Ok(Outcome::Exited(code))
}

/// The thread that is the helper's parent. A thread that has taken a new PID namespace for
/// its children may start no threads, and the helper's parent-death signal fires when the
/// thread that started it ends: so one thread starts it and waits for it, and nothing else.
struct Parent {
    pid: Pid,
    status: std::sync::mpsc::Receiver<std::io::Result<std::process::ExitStatus>>,
}

impl Parent {
    fn start(mut cmd: Command, control: OwnedFd) -> anyhow::Result<Parent> {
        let (pid_tx, pid_rx) = std::sync::mpsc::channel();
        let (status_tx, status_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("container".into()).spawn(move || {
            let spawned = nix::sched::unshare(CloneFlags::CLONE_NEWPID)
                .map_err(|e| anyhow::anyhow!("a new PID namespace: {e}"))
                .and_then(|()| sysproc::spawn_helper(&mut cmd, control).context("starting the container's init"));
            drop(cmd);
            match spawned {
                Ok(mut child) => {
                    let _ = pid_tx.send(Ok(child.id()));
                    let _ = status_tx.send(child.wait());
                }
                Err(e) => {
                    let _ = pid_tx.send(Err(e));
                }
            }
        })?;
        let pid = pid_rx.recv().context("the container thread ended")??;
        Ok(Parent { pid: Pid::from_raw(pid as i32), status: status_rx })
    }

    fn wait(&self) -> anyhow::Result<std::process::ExitStatus> {
        Ok(self.status.recv().context("the container thread ended")??)
    }
}

