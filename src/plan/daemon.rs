//! Serving a mount from a background process: the caller re-executes its own command line with
//! [`DAEMON_ENV`] set, the child checks and mounts, says `ready` (or `error: WHY`) on the pipe
//! that is its stdout, and lets go of it; the caller returns only then, so its exit 0 means the
//! mount is live.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use anyhow::Context;

use crate::sys;

/// Set by the parent in the daemon it starts: report readiness on stdout, then let go of it.
pub const DAEMON_ENV: &str = "SHALEFS_DAEMON_NOTIFY";

/// This process is a daemon started by [`spawn`].
pub fn is_daemon_child() -> bool {
    std::env::var_os(DAEMON_ENV).is_some()
}

/// In the daemon: leave the caller's session, so its terminal's signals and its end do not
/// reach us.
pub fn detach() {
    let _ = sys::setsid();
}

/// In the daemon: the mount is live; tell the parent and let go of the pipe.
pub fn report_ready() {
    report_to_parent("ready");
    let _ = sys::redirect_to_dev_null(1);
    // Not to keep the caller's directory (maybe on a layer's filesystem) busy.
    let _ = std::env::set_current_dir("/");
}

/// In the daemon: why the mount failed, for the parent to print.
pub fn report_error(e: &anyhow::Error) {
    report_to_parent(&format!("error: {e:#}"));
}

/// Check a mount (`plan`) and serve it here until it is unmounted; a daemon tells its parent
/// `ready` once the mount is live, or why it failed. The error is logged either way.
pub fn plan_and_serve(is_daemon_child: bool, plan: impl FnOnce() -> anyhow::Result<super::MountPlan>) -> anyhow::Result<()> {
    let result = plan().and_then(|plan| {
        super::serve::mount_and_serve(&plan, || {
            if is_daemon_child {
                report_ready();
            }
        })
    });
    if let Err(e) = &result {
        tracing::error!("{e:#}");
        if is_daemon_child {
            report_error(e);
        }
    }
    result
}

fn report_to_parent(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Start this same command line as a daemon (stdin and stderr on /dev/null, stdout a pipe to
/// us), with `env` added, and wait until it says the mount is live, or why it is not.
pub fn spawn(env: &[(&str, &str)]) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the shalefs executable")?;
    let mut cmd = Command::new(exe);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .args(std::env::args_os().skip(1))
        .env(DAEMON_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the mount daemon")?;
    let stdout = child.stdout.take().context("no pipe to the mount daemon")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).context("reading from the mount daemon")?;
    match line.trim_end() {
        "ready" => Ok(()),
        msg => {
            let status = child.wait().context("waiting for the mount daemon")?;
            match msg.strip_prefix("error: ") {
                Some(reason) => anyhow::bail!("{reason}"),
                None => anyhow::bail!("the mount daemon exited ({status}) before the mount was live"),
            }
        }
    }
}
