//! `shalefs mount`: check the arguments into a [`MountPlan`], then mount — in the foreground, or
//! (by default) in a background daemon, returning only once the mount is live.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use clap::Args;

use crate::fuse::ShaleFs;
use crate::fuse::session::{self, MountFlags, SessionOptions};
use crate::store::{Container, Store};
use crate::sys;
use crate::union::Union;
use crate::union::layer::{Formats, Layer, LayerStack, Role};

use super::{logging, mount_opts};

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
    /// Worker threads serving requests
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
}

/// A checked mount: every path exists and has the right kind; nothing later sees raw flags.
#[derive(Debug)]
pub struct MountPlan {
    pub lowers: Vec<PathBuf>,
    pub upper: Option<UpperPlan>,
    pub mountpoint: PathBuf,
    pub fsname: String,
    pub flags: MountFlags,
    pub threads: usize,
    pub passthrough: bool,
    pub metacopy: bool,
    /// Write the upper's overlay xattrs as `user.overlay.*` even when `trusted.*` would work.
    pub userxattr: bool,
    /// `-o volatile`: copy-ups are not made durable.
    pub volatile: bool,
}

#[derive(Debug)]
pub struct UpperPlan {
    pub upper: PathBuf,
    pub work: PathBuf,
}

/// Set by the parent in the daemon it starts: report readiness on stdout, then let go of it.
const DAEMON_ENV: &str = "SHALEFS_DAEMON_NOTIFY";

/// Set by the parent for the daemon when the parent made the container for `mount IMAGE`.
const CONTAINER_ENV: &str = "SHALEFS_MOUNT_CONTAINER";

pub fn run(args: MountArgs, root: Option<PathBuf>) -> anyhow::Result<()> {
    let is_daemon_child = std::env::var_os(DAEMON_ENV).is_some();
    let made_by_parent = std::env::var(CONTAINER_ENV).ok().filter(|_| is_daemon_child);
    if !args.foreground && !is_daemon_child {
        // Check in the caller's process first, so that a mistake is reported at once.
        let created = match args.image() {
            Some(image) => Some(new_container(&args, image, root.as_deref())?),
            None => None,
        };
        let checked = resolve_source(&args, root.as_deref(), created.as_deref()).and_then(|src| plan(&args, src));
        let result = checked.and_then(|_| spawn_daemon(created.as_deref()));
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
        let _ = sys::setsid();
    }
    let result = (|| {
        let created = match (&made_by_parent, args.image()) {
            (Some(name), _) => Some(name.clone()),
            (None, Some(image)) => Some(new_container(&args, image, root.as_deref())?),
            (None, None) => None,
        };
        let src = resolve_source(&args, root.as_deref(), created.as_deref())?;
        mount_and_serve(plan(&args, src)?, is_daemon_child)
    })();
    if let Err(e) = &result {
        tracing::error!("{e:#}");
        if is_daemon_child {
            report_to_parent(&format!("error: {e:#}"));
        }
    }
    result
}

fn open_store(root: Option<&Path>) -> anyhow::Result<Store> {
    Store::open(&Store::root_from(root))
}

/// `mount IMAGE`: a new container of the image, with an empty upper, under the records lock.
fn new_container(args: &MountArgs, image: &str, root: Option<&Path>) -> anyhow::Result<String> {
    check_mountpoint(&args.mountpoint())?;
    let store = open_store(root)?;
    let _lock = store.lock_records()?;
    let id = store.resolve_image(image)?;
    let rec = store.load_image(&id)?;
    if let Some(missing) = rec.layers.iter().find(|l| !store.has_layer(&l.diff_id)) {
        anyhow::bail!("image {image}: layer {} is missing from the store; pull the image again", missing.diff_id);
    }
    let name = match &args.name {
        Some(n) => n.clone(),
        None => generated_name(image),
    };
    store.create_container(&Container {
        name: name.clone(),
        image: id,
        image_name: image.to_string(),
        layers: rec.layers.iter().map(|l| l.diff_id.clone()).collect(),
        created_at: crate::store::pull::now(),
    })?;
    Ok(name)
}

/// `alpine-3f9a1c`: the image's last path component and a random suffix.
fn generated_name(image: &str) -> String {
    let base = image.rsplit('/').next().unwrap_or(image);
    let base: String = base.split([':', '@']).next().unwrap_or("c").chars().filter(|c| c.is_ascii_alphanumeric() || "_.-".contains(*c)).collect();
    let mut seed = [0u8; 3];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed));
    let base = if base.is_empty() { "container".to_string() } else { base };
    format!("{base}-{:02x}{:02x}{:02x}", seed[0], seed[1], seed[2])
}

/// The layers of a container (top first), its upper and work, and its mount source name.
fn container_source(store: &Store, name: &str) -> anyhow::Result<Source> {
    let c = store.load_container(name)?;
    let lowers = c.layers.iter().rev().map(|d| {
        let dir = store.layer_dir(d);
        if !dir.is_dir() {
            anyhow::bail!("container {name}: layer {d} is missing from the store");
        }
        Ok(dir)
    });
    Ok(Source {
        lowers: lowers.collect::<anyhow::Result<_>>()?,
        upper: Some((store.container_upper(name), store.container_work(name))),
        fsname: Some(super::containers::fsname_of(name)),
    })
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
    container_source(&open_store(root)?, name)
}

fn plan(args: &MountArgs, source: Source) -> anyhow::Result<MountPlan> {
    let (opts, ignored) = mount_opts::parse(&args.options)?;
    for o in ignored {
        tracing::debug!("ignoring mount option {o}: shalefs has no use for it");
    }
    if !source.lowers.is_empty() && !opts.lowers.is_empty() {
        anyhow::bail!("lowerdir= cannot be combined with an image or container");
    }
    let mut lowers = source.lowers;
    lowers.extend(args.lowers.iter().cloned());
    lowers.extend(opts.lowers);
    if lowers.is_empty() {
        anyhow::bail!("no lower layer: give IMAGE, --container NAME, --lower DIR or -o lowerdir=DIR[:DIR...]");
    }
    let (source_upper, source_work) = source.upper.unzip();
    let upper = source_upper.or(args.upper.clone()).or(opts.upper);
    let work = source_work.or(args.work.clone()).or(opts.work);
    let upper = match (upper, work) {
        (None, None) => None,
        (Some(_), None) => anyhow::bail!("an upper directory needs a work directory (--work or workdir=)"),
        (None, Some(_)) => anyhow::bail!("a work directory was given without an upper directory"),
        (Some(upper), Some(work)) => Some(check_upper(&upper, &work)?),
    };
    for lower in &lowers {
        check_dir("lower layer", lower)?;
    }
    let mountpoint = args.mountpoint();
    check_mountpoint(&mountpoint)?;
    sys::check_dev_fuse().map_err(|e| anyhow::anyhow!("cannot open /dev/fuse: {e} (is the fuse module loaded?)"))?;
    let mut flags = opts.flags;
    if upper.is_none() {
        flags.read_only = true;
    }
    Ok(MountPlan {
        lowers,
        upper,
        mountpoint,
        fsname: source.fsname.or(opts.fsname).unwrap_or_else(|| "shalefs".into()),
        flags,
        threads: args.threads.unwrap_or_else(session::default_threads),
        passthrough: !args.no_passthrough,
        metacopy: args.metacopy || opts.metacopy,
        userxattr: opts.userxattr,
        volatile: opts.volatile,
    })
}

fn check_dir(what: &str, path: &Path) -> anyhow::Result<std::fs::Metadata> {
    let meta = std::fs::metadata(path).map_err(|e| anyhow::anyhow!("{what} {}: {e}", path.display()))?;
    if !meta.is_dir() {
        anyhow::bail!("{what} {}: not a directory", path.display());
    }
    Ok(meta)
}

fn check_mountpoint(path: &Path) -> anyhow::Result<()> {
    check_dir("mountpoint", path)?;
    let mut entries = std::fs::read_dir(path).map_err(|e| anyhow::anyhow!("mountpoint {}: {e}", path.display()))?;
    if entries.next().is_some() {
        anyhow::bail!("mountpoint {}: not an empty directory", path.display());
    }
    Ok(())
}

/// The upper and work directories must be on one filesystem (copy-up renames from one to the
/// other), neither inside the other, and the filesystem must hold whiteouts.
fn check_upper(upper: &Path, work: &Path) -> anyhow::Result<UpperPlan> {
    use std::os::unix::fs::MetadataExt;
    let u = check_dir("upper directory", upper)?;
    let w = check_dir("work directory", work)?;
    if u.dev() != w.dev() {
        anyhow::bail!("upper {} and work {} are on different filesystems", upper.display(), work.display());
    }
    let (cu, cw) = (upper.canonicalize()?, work.canonicalize()?);
    if cu.starts_with(&cw) || cw.starts_with(&cu) {
        anyhow::bail!("upper {} and work {} must not contain each other", upper.display(), work.display());
    }
    Ok(UpperPlan { upper: upper.to_path_buf(), work: work.to_path_buf() })
}

/// Which xattr namespace the upper can hold the overlay format in: `trusted.` when privileged
/// (unless `userxattr` asks for `user.`), else `user.` (as overlayfs' `userxattr`); an error
/// when neither works.
fn probe_upper_format(work: &Path, userxattr: bool) -> anyhow::Result<Formats> {
    let dir = sys::open_dir(work).map_err(|e| anyhow::anyhow!("work directory {}: {e}", work.display()))?;
    use std::os::fd::AsFd;
    let probe = c"shalefs-probe";
    let _ = sys::unlinkat(dir.as_fd(), probe, 0);
    sys::mknodat(dir.as_fd(), probe, libc::S_IFREG | 0o600, 0)
        .map_err(|e| anyhow::anyhow!("work directory {}: cannot create files: {e}", work.display()))?;
    let path = sys::fd_relative_path(dir.as_fd(), probe.to_bytes())?;
    let trusted = if userxattr { Err(sys::Errno(libc::EPERM)) } else { sys::lsetxattr(&path, c"trusted.overlay.shalefs-probe", b"y") };
    let user = trusted.is_err().then(|| sys::lsetxattr(&path, c"user.overlay.shalefs-probe", b"y"));
    let _ = sys::unlinkat(dir.as_fd(), probe, 0);
    match (trusted, user) {
        (Ok(()), _) => Ok(Formats::UPPER_TRUSTED),
        (Err(_), Some(Ok(()))) if userxattr => Ok(Formats::UPPER_USER),
        (Err(_), Some(Ok(()))) => {
            tracing::warn!("no privilege for trusted.* xattrs on {}: the upper uses user.overlay.* (as overlayfs' userxattr)", work.display());
            Ok(Formats::UPPER_USER)
        }
        (Err(e), _) => anyhow::bail!(
            "upper filesystem of {} cannot hold whiteouts and opaque directories: setting an xattr failed: {e}",
            work.display()
        ),
    }
}

/// shalefs' own corner of the work directory. Kernel overlayfs keeps its `work` and `index`
/// beside it, so the same upper and work directories can be mounted by either.
const WORK_SUBDIR: &str = "shalefs";

fn open_work(work: &Path) -> anyhow::Result<Layer> {
    let dir = work.join(WORK_SUBDIR);
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => anyhow::bail!("work directory {}: {e}", dir.display()),
    }
    let layer = Layer::open(&dir, Role::Work, Formats::UPPER_TRUSTED)?;
    // Anything left here is from a crash: half-built copies, removed trees. None is visible.
    crate::union::util::clean_work_dir(&layer);
    Ok(layer)
}

fn build_union(plan: &MountPlan) -> anyhow::Result<Union> {
    let (upper, work) = match &plan.upper {
        Some(u) => (Some(Layer::open(&u.upper, Role::Upper, probe_upper_format(&u.work, plan.userxattr)?)?), Some(open_work(&u.work)?)),
        None => (None, None),
    };
    let lowers = plan.lowers.iter().map(|p| Layer::open(p, Role::Lower, Formats::LOWER)).collect::<anyhow::Result<Vec<_>>>()?;
    if plan.metacopy && upper.as_ref().is_some_and(|u| !u.formats.trusted_xattrs) {
        anyhow::bail!("metacopy=on needs the upper in trusted.overlay.* form (overlayfs refuses metacopy with userxattr, which a mount without that privilege implies)");
    }
    let stack = LayerStack::with_work(upper, work, lowers)?;
    let mut union = Union::new(stack).map_err(|e| anyhow::anyhow!("reading the root of the layers: {e}"))?;
    union.set_metacopy(plan.metacopy);
    if plan.volatile {
        union.set_volatile();
    }
    log_durability(&union);
    Ok(union)
}

fn log_durability(union: &Union) {
    use crate::union::copy_up::Durability;
    match union.durability() {
        _ if union.is_read_only() => {}
        Durability::Volatile => tracing::warn!("volatile: copy-ups are not synced; a crash or power cut can leave copies that hide their lower data"),
        Durability::Ordered => tracing::info!("copy-ups are written out before they become visible; the upper's journal orders the rest"),
        Durability::Synced => tracing::info!("copy-ups are fsynced before they become visible"),
    }
}

/// How long the kernel may cache entries and attributes. Lowers never change under a mount, and
/// every change to the upper goes through this daemon, whose replies carry the new attributes
/// (and the kernel invalidates what a change makes stale), so nothing expires by time: a day.
fn cache_ttl(_plan: &MountPlan) -> std::time::Duration {
    std::time::Duration::from_secs(86400)
}

fn mount_and_serve(plan: MountPlan, is_daemon_child: bool) -> anyhow::Result<()> {
    // The kernel applies the caller's umask before a create reaches us; ours must not apply
    // a second time.
    sys::set_umask(0);
    let union = build_union(&plan)?;
    let mut fs = ShaleFs::new(union, cache_ttl(&plan), plan.passthrough);
    // A store container can be committed while mounted: its changes pass a gate a commit
    // may close (`commit --pause`), asked for over a socket in its work directory.
    let control = plan.upper.as_ref().filter(|_| plan.fsname.starts_with("shalefs:")).map(|u| crate::freeze::socket_path(&u.work));
    let gate = crate::freeze::Gate::default();
    if control.is_some() {
        fs = fs.with_gate(gate.clone());
    }
    let opts = SessionOptions {
        mountpoint: plan.mountpoint.clone(),
        fsname: plan.fsname.clone(),
        threads: plan.threads,
        flags: plan.flags.clone(),
    };
    let session = session::mount(fs, &opts)?;
    // Without it the mount still works; `commit --pause` then refuses a mounted container.
    if let Some(path) = &control
        && let Err(e) = crate::freeze::serve(path, gate)
    {
        tracing::warn!("no control socket for commit --pause: {e:#}");
    }
    tracing::info!(
        lowers = plan.lowers.len(),
        upper = plan.upper.is_some(),
        "mounted on {}",
        plan.mountpoint.display()
    );
    let mountpoint = std::fs::canonicalize(&plan.mountpoint).unwrap_or_else(|_| plan.mountpoint.clone());
    if is_daemon_child {
        report_to_parent("ready");
        let _ = sys::redirect_to_dev_null(1);
        // Not to keep the caller's directory (maybe on a layer's filesystem) busy.
        let _ = std::env::set_current_dir("/");
    }
    session::serve(session, &mountpoint)
}

fn report_to_parent(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Start this same command as a daemon (stdin and stderr on /dev/null, stdout a pipe to us) and
/// wait until it says the mount is live, or why it is not.
fn spawn_daemon(container: Option<&str>) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the shalefs executable")?;
    let mut cmd = Command::new(exe);
    if let Some(name) = container {
        cmd.env(CONTAINER_ENV, name);
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
