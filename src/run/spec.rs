//! From an image config and `run`'s flags to the process to start, by docker's rules: the
//! Entrypoint × Cmd table, `--entrypoint` clearing the image's Cmd, the environment's order of
//! precedence and defaults, the working directory. Pure logic: nothing here touches the system.

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// docker's PATH for a Linux container whose image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The `config` object of an OCI/docker image config: what a container runs by default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExecConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

impl ExecConfig {
    /// The `config` of an image config blob (absent or null: nothing set).
    pub fn from_image_config(bytes: &[u8]) -> anyhow::Result<ExecConfig> {
        #[derive(Deserialize)]
        struct Outer {
            #[serde(default)]
            config: Option<ExecConfig>,
        }
        let outer: Outer = serde_json::from_slice(bytes).map_err(|e| anyhow::anyhow!("image config: {e}"))?;
        Ok(outer.config.unwrap_or_default())
    }
}

/// What the user asked for on the command line, already split into fields.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// COMMAND [ARG...] after the image (replaces Cmd).
    pub command: Vec<String>,
    /// `--entrypoint`: `Some("")` clears the image's Entrypoint.
    pub entrypoint: Option<String>,
    /// `--env-file` lines, then `-e` values, in order: `KEY=VALUE`, or `KEY` for the host's value.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: String,
    pub tty: bool,
}

/// The process `run` starts, handed to the helper inside the namespaces. `user` is resolved
/// there, through the image's own /etc/passwd and /etc/group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessSpec {
    pub argv: Vec<String>,
    /// `KEY=VALUE`, in docker's order; HOME is added by the helper when missing.
    pub env: Vec<String>,
    pub cwd: String,
    /// `USER[:GROUP]`, names or numeric ids; empty means root.
    pub user: String,
}

/// Entrypoint + Cmd as docker combines them: `--entrypoint` replaces the image's Entrypoint and
/// clears its Cmd; COMMAND replaces Cmd. Shell forms are already `["/bin/sh", "-c", "…"]` in
/// the config, so the table's shell rows fall out of the concatenation.
pub fn argv(config: &ExecConfig, o: &Overrides) -> anyhow::Result<Vec<String>> {
    let (entrypoint, cmd) = match &o.entrypoint {
        Some(e) if e.is_empty() => (Vec::new(), Vec::new()),
        Some(e) => (vec![e.clone()], Vec::new()),
        None => (config.entrypoint.clone().unwrap_or_default(), config.cmd.clone().unwrap_or_default()),
    };
    let cmd = if o.command.is_empty() { cmd } else { o.command.clone() };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        bail!("no command specified: the image has neither Entrypoint nor Cmd; give COMMAND");
    }
    Ok(argv)
}

/// docker's environment: PATH (its default) and HOSTNAME, TERM=xterm with a terminal, then the
/// image's Env, then the user's, each replacing an earlier value of the same key.
pub fn environment(config: &ExecConfig, o: &Overrides, host: impl Fn(&str) -> Option<String>) -> anyhow::Result<Vec<String>> {
    let mut env: Vec<(String, String)> = vec![("PATH".into(), DEFAULT_PATH.into()), ("HOSTNAME".into(), o.hostname.clone())];
    if o.tty {
        env.push(("TERM".into(), "xterm".into()));
    }
    let mut set = |key: String, value: String| match env.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => env.push((key, value)),
    };
    for e in config.env.iter().flatten() {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        set(k.to_string(), v.to_string());
    }
    for e in &o.env {
        match e.split_once('=') {
            Some(("", _)) => bail!("invalid environment variable {e:?}: the name is empty"),
            Some((k, v)) => set(k.to_string(), v.to_string()),
            // `-e KEY`: the host's value, or nothing when the host has none (as docker).
            None => {
                if let Some(v) = host(e) {
                    set(e.clone(), v);
                }
            }
        }
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// `--env-file`: one `KEY=VALUE` or `KEY` a line; blank lines and `#` comments skipped.
pub fn parse_env_file(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim_start())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect()
}

/// `-w` must be absolute (docker refuses a relative one); the image's WorkingDir is taken from
/// the root when relative; "/" when neither says.
pub fn working_dir(config: &ExecConfig, o: &Overrides) -> anyhow::Result<String> {
    if let Some(w) = &o.workdir {
        if !w.starts_with('/') {
            bail!("the working directory {w:?} is invalid: it needs to be an absolute path");
        }
        return Ok(w.clone());
    }
    match config.working_dir.as_deref() {
        None | Some("") => Ok("/".into()),
        Some(w) if w.starts_with('/') => Ok(w.to_string()),
        Some(w) => Ok(format!("/{w}")),
    }
}

pub fn process(config: &ExecConfig, o: &Overrides, host: impl Fn(&str) -> Option<String>) -> anyhow::Result<ProcessSpec> {
    Ok(ProcessSpec {
        argv: argv(config, o)?,
        env: environment(config, o, host)?,
        cwd: working_dir(config, o)?,
        user: o.user.clone().or_else(|| config.user.clone()).unwrap_or_default(),
    })
}

/// The value of `key` in a `KEY=VALUE` list.
pub fn env_value<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter().find_map(|e| e.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Option<Vec<String>> {
        Some(s.iter().map(|x| x.to_string()).collect())
    }

    fn cfg(entrypoint: Option<Vec<String>>, cmd: Option<Vec<String>>) -> ExecConfig {
        ExecConfig { entrypoint, cmd, ..Default::default() }
    }

    fn argv_of(c: &ExecConfig, command: &[&str], entrypoint: Option<&str>) -> Result<Vec<String>, String> {
        let o = Overrides { command: command.iter().map(|s| s.to_string()).collect(), entrypoint: entrypoint.map(String::from), ..Default::default() };
        argv(c, &o).map_err(|e| e.to_string())
    }

    /// docker's table "Understand how CMD and ENTRYPOINT interact", row by row; the shell forms
    /// as a builder writes them into the config.
    #[test]
    fn entrypoint_and_cmd_combine_as_dockers_table() {
        let sh_entry = v(&["/bin/sh", "-c", "exec_entry p1_entry"]);
        let exec_entry = v(&["exec_entry", "p1_entry"]);
        let exec_cmd = v(&["exec_cmd", "p1_cmd"]);
        let sh_cmd = v(&["/bin/sh", "-c", "exec_cmd p1_cmd"]);
        assert!(argv_of(&cfg(None, None), &[], None).unwrap_err().contains("no command"));
        assert_eq!(argv_of(&cfg(sh_entry.clone(), None), &[], None).unwrap(), ["/bin/sh", "-c", "exec_entry p1_entry"]);
        assert_eq!(argv_of(&cfg(exec_entry.clone(), None), &[], None).unwrap(), ["exec_entry", "p1_entry"]);
        assert_eq!(argv_of(&cfg(None, exec_cmd.clone()), &[], None).unwrap(), ["exec_cmd", "p1_cmd"]);
        assert_eq!(argv_of(&cfg(sh_entry.clone(), exec_cmd.clone()), &[], None).unwrap(), ["/bin/sh", "-c", "exec_entry p1_entry", "exec_cmd", "p1_cmd"]);
        assert_eq!(argv_of(&cfg(exec_entry.clone(), exec_cmd.clone()), &[], None).unwrap(), ["exec_entry", "p1_entry", "exec_cmd", "p1_cmd"]);
        assert_eq!(argv_of(&cfg(None, sh_cmd.clone()), &[], None).unwrap(), ["/bin/sh", "-c", "exec_cmd p1_cmd"]);
        assert_eq!(argv_of(&cfg(exec_entry.clone(), sh_cmd.clone()), &[], None).unwrap(), ["exec_entry", "p1_entry", "/bin/sh", "-c", "exec_cmd p1_cmd"]);
        // COMMAND replaces Cmd, never the Entrypoint.
        assert_eq!(argv_of(&cfg(exec_entry.clone(), exec_cmd.clone()), &["x", "y"], None).unwrap(), ["exec_entry", "p1_entry", "x", "y"]);
        // --entrypoint replaces the Entrypoint and clears the image's Cmd; "" clears both.
        assert_eq!(argv_of(&cfg(exec_entry.clone(), exec_cmd.clone()), &[], Some("/bin/e")).unwrap(), ["/bin/e"]);
        assert_eq!(argv_of(&cfg(exec_entry.clone(), exec_cmd.clone()), &["a"], Some("/bin/e")).unwrap(), ["/bin/e", "a"]);
        assert_eq!(argv_of(&cfg(exec_entry, exec_cmd), &["a"], Some("")).unwrap(), ["a"]);
    }

    #[test]
    fn environment_defaults_image_then_user_values_and_host_values_for_bare_keys() {
        let c = ExecConfig { env: v(&["A=image", "B=image", "EMPTY"]), ..Default::default() };
        let o = Overrides { env: vec!["B=user".into(), "FROMHOST".into(), "NOTONHOST".into()], hostname: "h1".into(), tty: true, ..Default::default() };
        let env = environment(&c, &o, |k| (k == "FROMHOST").then(|| "hv".to_string())).unwrap();
        assert_eq!(env, ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=h1", "TERM=xterm", "A=image", "B=user", "EMPTY=", "FROMHOST=hv"]);
        // An image's PATH replaces the default in place.
        let c = ExecConfig { env: v(&["PATH=/only"]), ..Default::default() };
        let env = environment(&c, &Overrides::default(), |_| None).unwrap();
        assert_eq!(env_value(&env, "PATH"), Some("/only"));
        assert!(env_value(&env, "TERM").is_none());
        assert!(environment(&c, &Overrides { env: vec!["=x".into()], ..Default::default() }, |_| None).is_err());
    }

    #[test]
    fn working_dir_and_user_precedence() {
        let c = ExecConfig { working_dir: Some("srv".into()), user: Some("app".into()), cmd: v(&["x"]), ..Default::default() };
        let p = process(&c, &Overrides::default(), |_| None).unwrap();
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/srv", "app"));
        let o = Overrides { workdir: Some("/w".into()), user: Some("0:0".into()), ..Default::default() };
        let p = process(&c, &o, |_| None).unwrap();
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/w", "0:0"));
        assert!(working_dir(&c, &Overrides { workdir: Some("rel".into()), ..Default::default() }).is_err());
        assert_eq!(working_dir(&ExecConfig::default(), &Overrides::default()).unwrap(), "/");
    }

    #[test]
    fn image_config_parses_with_or_without_a_config_object() {
        let c = ExecConfig::from_image_config(br#"{"config":{"Entrypoint":null,"Cmd":["/bin/sh"],"Env":["A=1"],"WorkingDir":"/w","User":"1:2"}}"#).unwrap();
        assert_eq!(c.cmd, v(&["/bin/sh"]));
        assert_eq!(c.entrypoint, None);
        assert_eq!(c.user.as_deref(), Some("1:2"));
        assert!(ExecConfig::from_image_config(b"{}").unwrap().cmd.is_none());
        assert_eq!(parse_env_file("# c\n\nA=1\n  B\r\n"), ["A=1", "B"]);
    }
}
