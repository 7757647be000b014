//! Mirrors and insecure registries. Two formats are read:
//!
//! - shalefs' own JSON (`/etc/shalefs/registries.json`):
//!   `{ "mirrors": { "docker.io": ["http://127.0.0.1:5001", "https://mirror.example.com"] },
//!      "insecure": ["registry.lan:5000"] }`
//! - containers-registries.conf(5) version 2, the TOML file podman, skopeo and buildah read
//!   (`/etc/containers/registries.conf`): `[[registry]]` tables with `location`, `insecure`
//!   and `[[registry.mirror]]` entries (`location`, `insecure`). Other keys are ignored.
//!
//! The file is `--registries-conf`, else `$SHALEFS_REGISTRIES_CONF`, else
//! `$CONTAINERS_REGISTRIES_CONF`, else the first of the two default paths that exists; a name
//! ending in `.json` is JSON, anything else TOML. Mirrors of a registry are tried in order
//! before the registry itself; each serves the same repository paths (a pull-through cache
//! does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/shalefs/registries.json";
pub const CONTAINERS_PATH: &str = "/etc/containers/registries.conf";

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RegistriesConfig {
    /// Registry → mirror base URLs (`http://host:port`), in the order to try them.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Registries that may be reached over plain HTTP.
    #[serde(default)]
    pub insecure: Vec<String>,
}

/// The parts of containers-registries.conf(5) that shalefs uses.
#[derive(Deserialize)]
struct ContainersConf {
    #[serde(default)]
    registry: Vec<ContainersRegistry>,
}

#[derive(Deserialize)]
struct ContainersRegistry {
    #[serde(default)]
    location: String,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    mirror: Vec<ContainersMirror>,
}

#[derive(Deserialize)]
struct ContainersMirror {
    location: String,
    #[serde(default)]
    insecure: bool,
}

impl RegistriesConfig {
    pub fn load(arg: Option<&Path>) -> anyhow::Result<RegistriesConfig> {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let explicit = arg.map(Path::to_path_buf).or_else(|| env("SHALEFS_REGISTRIES_CONF")).or_else(|| env("CONTAINERS_REGISTRIES_CONF"));
        let path = match explicit {
            Some(p) => p,
            None => match [DEFAULT_PATH, CONTAINERS_PATH].into_iter().map(PathBuf::from).find(|p| p.exists()) {
                Some(p) => p,
                None => return Ok(RegistriesConfig::default()),
            },
        };
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading registries config {}", path.display()))?;
        let conf = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).with_context(|| format!("parsing registries config {}", path.display()))?
        } else {
            let parsed: ContainersConf =
                toml::from_str(&text).with_context(|| format!("parsing registries config {} (TOML)", path.display()))?;
            Self::from_containers(parsed)
        };
        Self::check(&conf, &path)?;
        Ok(conf)
    }

    /// A mirror `location` has no scheme: HTTPS, or HTTP when marked insecure.
    fn from_containers(c: ContainersConf) -> RegistriesConfig {
        let mut conf = RegistriesConfig::default();
        for r in c.registry {
            let name = r.prefix.filter(|p| !p.is_empty()).unwrap_or(r.location);
            if name.is_empty() {
                continue;
            }
            if r.insecure {
                conf.insecure.push(name.clone());
            }
            let urls = r
                .mirror
                .into_iter()
                .map(|m| {
                    let loc = m.location.trim_end_matches('/');
                    if loc.starts_with("http://") || loc.starts_with("https://") {
                        loc.to_string()
                    } else {
                        format!("{}://{loc}", if m.insecure { "http" } else { "https" })
                    }
                })
                .collect::<Vec<_>>();
            if !urls.is_empty() {
                conf.mirrors.insert(name, urls);
            }
        }
        conf
    }

    fn check(conf: &RegistriesConfig, path: &Path) -> anyhow::Result<()> {
        for (registry, urls) in &conf.mirrors {
            for url in urls {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    anyhow::bail!("{}: mirror {url:?} of {registry} must start with http:// or https://", path.display());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_registries_conf_mirrors_are_read() {
        let text = r#"
unqualified-search-registries = ["docker.io"]

[[registry]]
location = "docker.io"
[[registry.mirror]]
location = "cache.lan:5000"
insecure = true
[[registry.mirror]]
location = "mirror.example.com"

[[registry]]
location = "registry.lan:5000"
insecure = true
"#;
        let conf = RegistriesConfig::from_containers(toml::from_str(text).unwrap());
        assert_eq!(conf.mirrors["docker.io"], vec!["http://cache.lan:5000", "https://mirror.example.com"]);
        assert_eq!(conf.insecure, vec!["registry.lan:5000"]);
    }
}
