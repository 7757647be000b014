//! `shalefs mount`: check the arguments into a [`MountPlan`](crate::plan::MountPlan), then mount — in the foreground, or
//! (by default) in a background daemon, returning only once the mount is live.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::plan::container::{container_layers, new_container};
use crate::plan::{MountPlan, MountSpec, check_mountpoint, daemon, options};
use crate::store::Store;

use super::logging;

#[derive(Debug, Args)]
pub struct MountArgs {
    /// A read-only layer directory; repeat for more, top layer first
    #[arg(long = "lower", value_name = "DIR")]
    pub lowers: Vec<PathBuf>,
    /// The writable upper directory (needs --work on the same filesystem)
    #[arg(long, value_name = "DIR")]
    pub upper: Option<PathBuf>,
    /// An empty work directory on the upper's filesystem
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
    /// overlayfs-style options: lowerdir=A:B:C,upperdir=U,workdir=W,ro,nodev,...
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Stay in the foreground instead of serving from a background daemon
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// error, warn, info, debug or trace
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    pub log_level: String,
    /// Where the daemon logs (default: syslog; stderr with --foreground)
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Threads for slow requests (copy-ups, file I/O the daemon serves, syncs); one more
    /// answers the rest
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Serve file reads and writes in the daemon instead of FUSE passthrough (Linux ≥ 6.9,
    /// root), which is used when the kernel allows it
    #[arg(long)]
    pub no_passthrough: bool,
    /// Copy up only the metadata of a regular file for chmod, chown, utimes, xattr changes and
    /// renames; its data follows on the first write (as overlayfs' metacopy=on; same as
    /// `-o metacopy=on`). Kernel overlayfs can mount such an upper only with metacopy=on.
    #[arg(long)]
    pub metacopy: bool,
    /// Name the container made for IMAGE (default: from the image name and a random suffix)
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Mount an existing container (made by an earlier `mount IMAGE`) with its upper
    #[arg(long, value_name = "NAME", conflicts_with = "name")]
    pub container: Option<String>,
    /// `[IMAGE] MOUNTPOINT`: an image from the store gets a new container, mounted on the
    /// empty directory MOUNTPOINT; without IMAGE, the layers come from --lower/-o lowerdir=
    /// or --container
    #[arg(value_name = "[IMAGE] MOUNTPOINT", num_args = 1..=2, required = true)]
    pub targets: Vec<String>,
}

impl MountArgs {
    fn mountpoint(&self) -> PathBuf {
        PathBuf::from(self.targets.last().map(String::as_str).unwrap_or_default())
    }

    fn image(&self) -> Option<&str> {
        (self.targets.len() == 2).then(|| self.targets[0].as_str())
    }
}

/// Where the layers of a mount come from, once image and container names are resolved.
#[derive(Debug, Default)]
struct Source {
    lowers: Vec<PathBuf>,
    upper: Option<(PathBuf, PathBuf)>,
    fsname: Option<String>,
    label_records: std::collections::HashMap<PathBuf, PathBuf>,
}

/// Set by the parent for the daemon when the parent made the container for `mount IMAGE`.
const CONTAINER_ENV: &str = "SHALEFS_MOUNT_CONTAINER";

pub fn run(args: MountArgs, root: Option<PathBuf>) -> anyhow::Result<()> {
    let is_daemon_child = daemon::is_daemon_child();
    let made_by_parent = std::env::var(CONTAINER_ENV).ok().filter(|_| is_daemon_child);
    if !args.foreground && !is_daemon_child {
        // Check in the caller's process first, so that a mistake is reported at once.
        let created = match args.image() {
            Some(image) => Some(create_container(&args, image, root.as_deref())?),
            None => None,
        };
        let checked = resolve_source(&args, root.as_deref(), created.as_deref()).and_then(|src| plan(&args, src));
        let env: Vec<(&str, &str)> = created.iter().map(|name| (CONTAINER_ENV, name.as_str())).collect();
        let result = checked.and_then(|_| daemon::spawn(&env));
        if let Some(name) = &created {
            match &result {
                Ok(()) => println!("{name}"),
                // The container was made for this mount and holds nothing yet.
                Err(_) => {
                    let _ = open_store(root.as_deref()).and_then(|s| s.remove_container(name));
                }
            }
        }
        return result;
    }
    logging::init(&args.log_level, args.log_file.as_deref(), is_daemon_child)?;
    if is_daemon_child {
        daemon::detach();
    }
    daemon::plan_and_serve(is_daemon_child, || {
        let created = match (&made_by_parent, args.image()) {
            (Some(name), _) => Some(name.clone()),
            (None, Some(image)) => Some(create_container(&args, image, root.as_deref())?),
            (None, None) => None,
        };
        let src = resolve_source(&args, root.as_deref(), created.as_deref())?;
        plan(&args, src)
    })
}

fn open_store(root: Option<&Path>) -> anyhow::Result<Store> {
    Store::open(&Store::root_from(root))
}

/// `mount IMAGE`: a new container of the image, with an empty upper.
fn create_container(args: &MountArgs, image: &str, root: Option<&Path>) -> anyhow::Result<String> {
    check_mountpoint(&args.mountpoint())?;
    new_container(&open_store(root)?, image, args.name.as_deref())
}

fn resolve_source(args: &MountArgs, root: Option<&Path>, created: Option<&str>) -> anyhow::Result<Source> {
    let container = created.or(args.container.as_deref());
    let Some(name) = container else { return Ok(Source::default()) };
    if args.image().is_some() && args.container.is_some() {
        anyhow::bail!("give either IMAGE or --container, not both");
    }
    if !args.lowers.is_empty() || args.upper.is_some() || args.work.is_some() {
        anyhow::bail!("--lower, --upper and --work cannot be combined with an image or container");
    }
    super::containers::detach_dead_mounts(name)?;
    let mut mounted = super::containers::mountpoints_of(name);
    if let Some(mp) = mounted.pop() {
        anyhow::bail!("container {name} is already mounted on {mp}");
    }
    let store = open_store(root)?;
    if store.container_running(name) {
        anyhow::bail!("container {name} is in use by `shalefs run`");
    }
    let c = container_layers(&store, name)?;
    Ok(Source { lowers: c.lowers, upper: Some((c.upper, c.work)), fsname: Some(c.fsname), label_records: c.label_records })
}

fn plan(args: &MountArgs, source: Source) -> anyhow::Result<MountPlan> {
    let (opts, ignored) = options::parse(&args.options)?;
    for o in ignored {
        tracing::debug!("ignoring mount option {o}: shalefs has no use for it");
    }
    if !source.lowers.is_empty() && !opts.lowers.is_empty() {
        anyhow::bail!("lowerdir= cannot be combined with an image or container");
    }
    let mut lowers = source.lowers;
    lowers.extend(args.lowers.iter().cloned());
    lowers.extend(opts.lowers);
    let (source_upper, source_work) = source.upper.unzip();
    MountSpec {
        lowers,
        upper: source_upper.or(args.upper.clone()).or(opts.upper),
        work: source_work.or(args.work.clone()).or(opts.work),
        mountpoint: args.mountpoint(),
        fsname: source.fsname.or(opts.fsname),
        flags: opts.flags,
        threads: args.threads,
        no_passthrough: args.no_passthrough,
        metacopy: args.metacopy || opts.metacopy,
        userxattr: opts.userxattr,
        volatile: opts.volatile,
        ids: opts.ids,
        label_records: source.label_records,
    }
    .check()
}
