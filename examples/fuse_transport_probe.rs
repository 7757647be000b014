//! What one FUSE request costs, on /dev/fuse and on FUSE-over-io_uring (issue 13, section 2).
//!
//! `probe --transport classic|ring --mountpoint DIR` mounts shalefs' transport probe (the root
//! and one file, see `shalefs::fuse::probe`) and times N `lgetxattr(file, "security.selinux")`
//! (one GETXATTR each, answered ENODATA) and N `stat(file)` (one GETATTR each: attributes are
//! never cached) on 1 and on 2 client threads. `client --path FILE --label NAME` times the
//! same getxattr loop on any mounted file (a shalefs mount, kernel overlayfs).
//!
//! Prints one JSON object per measurement on stdout, and for the probe which opcodes arrived
//! on /dev/fuse and which on the ring. Needs root. scripts/bench-transport runs it interleaved.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use shalefs::fuse::probe::{Placement, Probe, Transport, Via, opcode_name};
use shalefs::fuse::uring::{EnableUring, kernel_has_uring};
use shalefs::sys;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount the probe on a transport and time getxattr and stat on it.
    Probe {
        #[arg(long, value_enum)]
        transport: Kind,
        #[arg(long)]
        mountpoint: PathBuf,
        #[arg(long, default_value_t = 20000)]
        iterations: usize,
        /// Client thread counts to run, e.g. 1,2.
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        threads: Vec<usize>,
        /// Leave the ring's queue threads free to run on any CPU (they are pinned to their
        /// queue's CPU otherwise), to see what that locality is worth.
        #[arg(long)]
        no_pin: bool,
        /// Run the /dev/fuse readers on this CPU only.
        #[arg(long)]
        server_cpu: Option<usize>,
        /// Run the client threads on this CPU only.
        #[arg(long)]
        client_cpu: Option<usize>,
        /// The name of this target in the output (default: the transport).
        #[arg(long)]
        label: Option<String>,
    },
    /// Time the getxattr loop on a file of a mount made elsewhere.
    Client {
        #[arg(long)]
        path: PathBuf,
        #[arg(long)]
        label: String,
        #[arg(long, default_value_t = 20000)]
        iterations: usize,
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        threads: Vec<usize>,
        /// Also time stat (only a round trip where attributes are not cached).
        #[arg(long)]
        stat: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Classic,
    Ring,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Getxattr,
    Stat,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Getxattr => "getxattr",
            Op::Stat => "stat",
        }
    }
}

fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Probe { transport, mountpoint, iterations, threads, no_pin, server_cpu, client_cpu, label } => {
            let transport = match transport {
                Kind::Classic => Transport::Classic,
                Kind::Ring => Transport::Ring,
            };
            let label = label.unwrap_or_else(|| transport.name().to_string());
            let place = Placement { dev_threads: 2, dev_cpu: server_cpu, pin_queues: !no_pin };
            probe(transport, &place, client_cpu, &label, &mountpoint, iterations, &threads)
        }
        Cmd::Client { path, label, iterations, threads, stat } => {
            let ops: &[Op] = if stat { &[Op::Getxattr, Op::Stat] } else { &[Op::Getxattr] };
            for &op in ops {
                for &t in &threads {
                    report(&label, op, t, &measure(&path, op, t, iterations)?);
                }
            }
            Ok(())
        }
    }
}

fn probe(
    transport: Transport,
    place: &Placement,
    client_cpu: Option<usize>,
    label: &str,
    mountpoint: &Path,
    iterations: usize,
    threads: &[usize],
) -> anyhow::Result<()> {
    // The ring needs enable_uring on while the connection is set up; the guard puts the value
    // it found back on every path out of here.
    let _param = match transport {
        Transport::Ring if !kernel_has_uring() => bail!("this kernel has no FUSE over io_uring"),
        Transport::Ring => Some(EnableUring::set(true).context("setting enable_uring")?),
        Transport::Classic => None,
    };
    let probe = Probe::mount_with(mountpoint, transport, place)?;
    if let Some(cpu) = client_cpu {
        // Client threads inherit the affinity of the thread that spawns them.
        sys::uring::pin_to_cpu(cpu).context("pinning the client")?;
    }
    let file = probe.file();
    for op in [Op::Getxattr, Op::Stat] {
        for &t in threads {
            report(label, op, t, &measure(&file, op, t, iterations)?);
        }
    }
    let counts = probe.unmount()?;
    let arrivals: Vec<String> = counts
        .table()
        .into_iter()
        .map(|(op, dev, ring)| format!("\"{}\": {{\"dev\": {dev}, \"ring\": {ring}}}", opcode_name(op)))
        .collect();
    println!("{{\"target\": \"{label}\", \"arrivals\": {{{}}}}}", arrivals.join(", "));
    if transport == Transport::Ring && counts.get(Via::Ring, shalefs::fuse::wire::FUSE_GETXATTR) == 0 {
        bail!("no GETXATTR arrived on the ring: the kernel served the probe over /dev/fuse");
    }
    Ok(())
}

struct Stats {
    mean_ns: f64,
    p50_ns: u64,
    p99_ns: u64,
    ops_per_s: f64,
    n: usize,
}

/// `iterations` timed calls on each of `threads` threads (after a tenth as many untimed).
fn measure(path: &Path, op: Op, threads: usize, iterations: usize) -> anyhow::Result<Stats> {
    let cpath = CString::new(path.as_os_str().as_bytes()).context("path with a NUL byte")?;
    let start = Arc::new(Barrier::new(threads));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (cpath, start, path) = (cpath.clone(), start.clone(), path.to_path_buf());
            std::thread::spawn(move || -> anyhow::Result<(Vec<u64>, f64)> {
                for _ in 0..iterations / 10 {
                    one(&cpath, &path, op)?;
                }
                start.wait();
                let mut lat = Vec::with_capacity(iterations);
                let began = Instant::now();
                for _ in 0..iterations {
                    let t = Instant::now();
                    one(&cpath, &path, op)?;
                    lat.push(t.elapsed().as_nanos() as u64);
                }
                Ok((lat, began.elapsed().as_secs_f64()))
            })
        })
        .collect();
    let mut all = Vec::with_capacity(threads * iterations);
    let mut wall: f64 = 0.0;
    for w in workers {
        let (lat, secs) = w.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        all.extend(lat);
        wall = wall.max(secs);
    }
    all.sort_unstable();
    let n = all.len();
    if n == 0 {
        bail!("no iterations");
    }
    Ok(Stats {
        mean_ns: all.iter().sum::<u64>() as f64 / n as f64,
        p50_ns: all[n / 2],
        p99_ns: all[(n * 99 / 100).min(n - 1)],
        ops_per_s: n as f64 / wall,
        n,
    })
}

/// One call, which must be one round trip to the filesystem.
fn one(cpath: &CString, path: &Path, op: Op) -> anyhow::Result<()> {
    match op {
        Op::Getxattr => {
            let mut buf = [0u8; 256];
            match sys::lgetxattr_once(cpath, c"security.selinux", &mut buf) {
                Ok(_) | Err(sys::Errno(libc::ENODATA | libc::ENOTSUP)) => Ok(()),
                Err(e) => bail!("lgetxattr {}: {e}", path.display()),
            }
        }
        Op::Stat => {
            std::fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
            Ok(())
        }
    }
}

fn report(target: &str, op: Op, threads: usize, s: &Stats) {
    println!(
        "{{\"target\": \"{target}\", \"op\": \"{}\", \"threads\": {threads}, \"n\": {}, \"mean_us\": {:.2}, \"p50_us\": {:.2}, \"p99_us\": {:.2}, \"ops_per_s\": {:.0}}}",
        op.name(),
        s.n,
        s.mean_ns / 1e3,
        s.p50_ns as f64 / 1e3,
        s.p99_ns as f64 / 1e3,
        s.ops_per_s
    );
}
