//! `shalefs run`: docker's flags onto a [`RunPlan`](crate::run::RunPlan) — the container made
//! (or found), its mount planned, the process spec from the image config — then [`crate::run`]
//! does the rest. Exit codes as docker's: the command's own, 125 when shalefs fails, 126/127
//! when the command cannot be executed or is not found.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::plan::container::{container_layers, new_container};
use crate::plan::MountSpec;
use crate::run::init::{CODE_OTHER, InitSpec};
use crate::run::spec::{self, ExecConfig, Overrides};
use crate::run::{self as runner, Outcome, RunPlan, init_layer};
use crate::store::Store;

use super::{Exit, logging};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Name the new container (default: from the image name and a random suffix)
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Run in an existing container, with its changes, instead of a new one from IMAGE
    #[arg(long, value_name = "NAME", conflicts_with = "name")]
    pub container: Option<String>,
    /// Remove the container when the command ends
    #[arg(long)]
    pub rm: bool,
    /// Keep stdin open for the command (else it reads /dev/null)
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the command a pseudo-terminal
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to take the host's value)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines)
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container (absolute)
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// User to run as: USER[:GROUP], names from the image's /etc/passwd and /etc/group, or ids
    #[arg(short = 'u', long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Replace the image's Entrypoint (and drop its Cmd); "" clears it
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,
    /// The container's hostname (default: the container's name)
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Mount the container's root read-only
    #[arg(long)]
    pub read_only: bool,
    /// `IMAGE [COMMAND [ARG...]]`, or with --container only `[COMMAND [ARG...]]`
    #[arg(value_name = "IMAGE [COMMAND [ARG...]]", trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(args: RunArgs, root: Option<PathBuf>) -> anyhow::Result<()> {
    logging::init("warn", None, false)?;
    match execute(args, root.as_deref()) {
        Ok(0) => Ok(()),
        Ok(code) => Err(Exit { code, message: None }.into()),
        Err(e) => match e.downcast::<Exit>() {
            Ok(exit) => Err(exit.into()),
            Err(e) => Err(Exit { code: CODE_OTHER, message: Some(format!("{e:#}")) }.into()),
        },
    }
}

/// The helper's entry (`shalefs run-init`): it returns only when the command could not start.
pub fn init() -> anyhow::Result<()> {
    Err(Exit { code: crate::run::init::main(), message: None }.into())
}

fn execute(args: RunArgs, root: Option<&Path>) -> anyhow::Result<u8> {
    let store = Store::open(&Store::root_from(root))?;
    let (image, command) = match (&args.container, args.args.split_first()) {
        (Some(_), _) => (None, args.args.clone()),
        (None, Some((image, command))) => (Some(image.clone()), command.to_vec()),
        (None, None) => anyhow::bail!("give IMAGE [COMMAND...] or --container NAME [COMMAND...]"),
    };
    let config = match (&image, &args.container) {
        (Some(image), _) => image_config(&store, &store.resolve_image(image)?)?,
        (None, Some(name)) => image_config(&store, &store.load_container(name)?.image)?,
        (None, None) => ExecConfig::default(),
    };
    let mut env = Vec::new();
    for file in &args.env_file {
        let text = std::fs::read_to_string(file).with_context(|| format!("--env-file {}", file.display()))?;
        env.extend(spec::parse_env_file(&text));
    }
    env.extend(args.env.iter().cloned());
    let mut overrides = Overrides {
        command,
        entrypoint: args.entrypoint.clone(),
        env,
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        hostname: String::new(),
        tty: args.tty,
    };
    // Checked before a container is made for it.
    spec::argv(&config, &overrides)?;
    spec::working_dir(&config, &overrides)?;
    let name = match (&image, &args.container) {
        (Some(image), _) => new_container(&store, image, args.name.as_deref())?,
        (None, Some(name)) => name.clone(),
        (None, None) => unreachable!("checked above"),
    };
    overrides.hostname = args.hostname.clone().unwrap_or_else(|| hostname_of(&name));
    let result = run_in(&store, &name, &config, &overrides, &args);
    if args.rm {
        let _lock = store.lock_records()?;
        store.remove_container(&name)?;
    }
    result
}

/// The image's own config (Entrypoint, Cmd, Env, WorkingDir, User).
fn image_config(store: &Store, id: &crate::oci::Digest) -> anyhow::Result<ExecConfig> {
    let bytes = store.read_blob(id).with_context(|| format!("the config of image {}", id.short()))?;
    ExecConfig::from_image_config(&bytes)
}

/// A hostname is at most 63 bytes; the container's name fits docker's character set.
fn hostname_of(name: &str) -> String {
    name.chars().take(63).collect()
}

fn run_in(store: &Store, name: &str, config: &ExecConfig, overrides: &Overrides, args: &RunArgs) -> anyhow::Result<u8> {
    let mounted = super::containers::mountpoints_of(name);
    if !mounted.is_empty() {
        anyhow::bail!("container {name} is mounted on {}: unmount it first", mounted.join(", "));
    }
    let rootfs = store.container_rootfs(name);
    let _running = store.lock_container_run(name)?;
    let c = container_layers(store, name)?;
    let init_dir = store.container_init(name);
    let mut probe = vec![c.upper.clone()];
    probe.extend(c.lowers.iter().cloned());
    let mut lowers = Vec::new();
    if init_layer::build(&init_dir, &probe)? {
        lowers.push(init_dir);
    }
    lowers.extend(c.lowers);
    let mount = MountSpec { lowers, upper: Some(c.upper), work: Some(c.work), mountpoint: rootfs.clone(), fsname: Some(c.fsname), label_records: c.label_records, ..Default::default() }.check()?;
    let process = spec::process(config, overrides, |k| std::env::var(k).ok())?;
    let init = InitSpec { process, root: rootfs, hostname: overrides.hostname.clone(), read_only: args.read_only, tty: args.tty, window: args.tty.then(crate::run::pty::host_window).flatten() };
    // Before any thread starts: every thread of this process shares the private namespace.
    runner::enter_private_mount_namespace()?;
    match runner::run(RunPlan { mount, init, interactive: args.interactive })? {
        Outcome::Exited(code) => Ok(code),
        Outcome::NotStarted(f) => Err(Exit { code: f.code, message: Some(f.message) }.into()),
    }
}
