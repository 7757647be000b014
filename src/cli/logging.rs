//! Where log lines go: stderr in the foreground, a file when asked, syslog for a daemon.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::sys;

/// Each formatted event goes to syslog as one message.
struct Syslog;

impl Write for Syslog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = buf.strip_suffix(b"\n").unwrap_or(buf);
        if !line.is_empty() {
            sys::syslog(libc::LOG_INFO, line);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = Syslog;
    fn make_writer(&'a self) -> Syslog {
        Syslog
    }
}

pub fn init(level: &str, file: Option<&Path>, daemon: bool) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(level).with_context(|| format!("--log-level {level:?}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    // A second init (tests calling twice) is harmless: the first subscriber stays.
    match (file, daemon) {
        (Some(path), _) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("log file {}", path.display()))?;
            let _ = builder.with_ansi(false).with_writer(std::sync::Mutex::new(f)).try_init();
        }
        (None, true) => {
            let _ = builder.with_ansi(false).without_time().with_writer(Syslog).try_init();
        }
        (None, false) => {
            let _ = builder.with_writer(std::io::stderr).try_init();
        }
    }
    Ok(())
}
