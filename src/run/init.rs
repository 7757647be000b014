//! The helper: `shalefs run-init`, started by `run` as PID 1 of the new PID namespace. It reads
//! its [`InitSpec`] from the control socket, takes new mount, UTS and IPC namespaces, sets up the
//! container's mounts and enters its root, resolves the user through the image's own files,
//! drops to it and execs the command. A failure before the exec goes back over the socket as
//! an exit code (126 cannot exec, 127 not found, 125 anything else, as docker) and a message;
//! a successful exec closes the socket (close-on-exec), which the parent reads as "running".

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::unistd::{Gid, Uid};
use serde::{Deserialize, Serialize};

use super::rootfs::{self, RootfsSpec};
use super::spec::{self, ProcessSpec};
use super::user;
use crate::sys::process as sysproc;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitSpec {
    pub process: ProcessSpec,
    /// The merged tree, as mounted in the parent's namespace.
    pub root: PathBuf,
    pub hostname: String,
    pub read_only: bool,
    /// Give the command a pseudo-terminal of the container's own devpts (its master goes back
    /// to the parent over the control socket), of this size (rows, columns).
    pub tty: bool,
    pub window: Option<(u16, u16)>,
}

/// The byte that comes with the pseudo-terminal's master on the control socket.
pub const TTY_TAG: u8 = b'T';

/// Why the helper stopped before the command ran: the exit code `run` passes on, and why.
#[derive(Debug, Serialize, Deserialize)]
pub struct InitFailure {
    pub code: u8,
    pub message: String,
}

pub const CODE_OTHER: u8 = 125;
pub const CODE_CANNOT_EXEC: u8 = 126;
pub const CODE_NOT_FOUND: u8 = 127;

fn fail(code: u8, message: String) -> InitFailure {
    InitFailure { code, message }
}

/// The helper's whole life; it returns only on failure (the exit code to use).
pub fn main() -> u8 {
    let Some(fd) = sysproc::take_control_fd() else {
        eprintln!("shalefs: run-init is started by `shalefs run`, not by hand");
        return CODE_OTHER;
    };
    let mut control = UnixStream::from(fd);
    let failure = match read_spec(&mut control) {
        Ok(spec) => start(&spec, &control),
        Err(e) => fail(CODE_OTHER, format!("{e:#}")),
    };
    let _ = control.write_all(&serde_json::to_vec(&failure).unwrap_or_default());
    failure.code
}

fn read_spec(control: &mut UnixStream) -> anyhow::Result<InitSpec> {
    let mut bytes = Vec::new();
    control.read_to_end(&mut bytes).context("reading the run spec")?;
    serde_json::from_slice(&bytes).context("parsing the run spec")
}

fn start(spec: &InitSpec, control: &UnixStream) -> InitFailure {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let prepared = (|| {
        nix::sched::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC).context("new mount, UTS and IPC namespaces")?;
        nix::unistd::sethostname(&spec.hostname).with_context(|| format!("setting the hostname {:?}", spec.hostname))?;
        rootfs::setup(&RootfsSpec { root: &spec.root, read_only: spec.read_only })?;
        let u = user::resolve(&spec.process.user, read_text("/etc/passwd").as_deref(), read_text("/etc/group").as_deref())?;
        let env = with_home(&spec.process.env, &u.home);
        make_workdir(&spec.process.cwd);
        // Its own session, as in docker: the host terminal's ^C reaches `run`, which forwards it
        // once.
        nix::unistd::setsid().context("setsid")?;
        if spec.tty {
            terminal(control, spec.window, u.uid)?;
        }
        set_user(&u)?;
        nix::unistd::chdir(spec.process.cwd.as_str()).with_context(|| format!("working directory {}", spec.process.cwd))?;
        Ok::<_, anyhow::Error>(env)
    })();
    let env = match prepared {
        Ok(env) => env,
        Err(e) => return fail(CODE_OTHER, format!("{e:#}")),
    };
    exec(&spec.process.argv, &env)
}

/// A pseudo-terminal from the container's /dev/ptmx (so the command's tty is its own
/// /dev/pts/0), owned by the user; the master goes to the parent, the slave becomes stdin,
/// stdout, stderr and the controlling terminal.
fn terminal(control: &UnixStream, window: Option<(u16, u16)>, uid: u32) -> anyhow::Result<()> {
    let ws = window.map(|(rows, cols)| nix::pty::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 });
    let pty = nix::pty::openpty(ws.as_ref(), None).context("opening a pseudo-terminal in the container")?;
    nix::unistd::fchown(&pty.slave, Some(Uid::from_raw(uid)), None).context("giving the terminal to the user")?;
    sysproc::send_fd(control.as_fd(), pty.master.as_fd(), TTY_TAG).context("handing the terminal to shalefs")?;
    drop(pty.master);
    nix::unistd::dup2_stdin(&pty.slave)?;
    nix::unistd::dup2_stdout(&pty.slave)?;
    nix::unistd::dup2_stderr(&pty.slave)?;
    drop(pty.slave);
    sysproc::set_controlling_terminal(std::io::stdin().as_fd()).context("making the terminal the controlling one")
}

fn read_text(path: &str) -> Option<String> {
    std::fs::read(path).ok().map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// HOME from the user's passwd entry unless the environment sets it (as runc).
fn with_home(env: &[String], home: &str) -> Vec<String> {
    let mut env = env.to_vec();
    if spec::env_value(&env, "HOME").is_none() {
        env.push(format!("HOME={home}"));
    }
    env
}

/// A working directory the image lacks is made (as docker does), owned by root.
fn make_workdir(cwd: &str) {
    if !Path::new(cwd).exists() {
        let _ = std::fs::create_dir_all(cwd);
    }
}

fn set_user(u: &user::ExecUser) -> anyhow::Result<()> {
    let groups: Vec<Gid> = u.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    nix::unistd::setgroups(&groups).context("setgroups")?;
    nix::unistd::setgid(Gid::from_raw(u.gid)).with_context(|| format!("setgid {}", u.gid))?;
    nix::unistd::setuid(Uid::from_raw(u.uid)).with_context(|| format!("setuid {}", u.uid))?;
    // A change of credentials clears the parent-death signal: set it again.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).context("parent-death signal")?;
    Ok(())
}

/// The executable for `argv[0]`: as given when it holds a `/`, else the first match in the
/// container's PATH that is an executable regular file (a match that is not executable is
/// remembered, for "permission denied", as Go's LookPath in docker).
fn find_executable(name: &str, env: &[String]) -> Result<PathBuf, InitFailure> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let path = spec::env_value(env, "PATH").unwrap_or(spec::DEFAULT_PATH);
    let mut not_executable = None;
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(name);
        if let Ok(meta) = std::fs::metadata(&candidate)
            && meta.is_file() {
                if meta.permissions().mode() & 0o111 != 0 {
                    return Ok(candidate);
                }
                not_executable.get_or_insert(candidate);
            }
    }
    match not_executable {
        Some(p) => Err(fail(CODE_CANNOT_EXEC, format!("exec: {:?}: permission denied", p.display().to_string()))),
        None => Err(fail(CODE_NOT_FOUND, format!("exec: {name:?}: executable file not found in $PATH"))),
    }
}

fn cstrings(v: &[String]) -> Result<Vec<CString>, InitFailure> {
    v.iter().map(|s| CString::new(s.as_bytes()).map_err(|_| fail(CODE_OTHER, format!("{s:?}: contains a NUL byte")))).collect()
}

fn exec(argv: &[String], env: &[String]) -> InitFailure {
    let Some(name) = argv.first() else { return fail(CODE_OTHER, "no command".into()) };
    let path = match find_executable(name, env) {
        Ok(p) => p,
        Err(f) => return f,
    };
    let (Ok(args), Ok(envs)) = (cstrings(argv), cstrings(env)) else { return fail(CODE_OTHER, "an argument or variable holds a NUL byte".into()) };
    let Ok(cpath) = CString::new(path.as_os_str().as_encoded_bytes()) else { return fail(CODE_OTHER, "path holds a NUL byte".into()) };
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    sysproc::default_sigpipe();
    let err = match nix::unistd::execve(&cpath, &args, &envs) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    let code = if err == Errno::ENOENT { CODE_NOT_FOUND } else { CODE_CANNOT_EXEC };
    fail(code, format!("exec {}: {}", path.display(), err.desc().to_lowercase()))
}
