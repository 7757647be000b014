//! Mirrors and insecure registries, from a small JSON file (`--registries-conf`,
//! `$SHALEFS_REGISTRIES_CONF`, else `/etc/shalefs/registries.json` when it exists):
//!
//! ```json
//! { "mirrors": { "docker.io": ["http://127.0.0.1:5001", "https://mirror.example.com"] },
//!   "insecure": ["registry.lan:5000"] }
//! ```
//!
//! Mirrors of a registry are tried in order before the registry itself; each URL names the
//! scheme and host, and serves the same repository paths (a pull-through cache does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/shalefs/registries.json";

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RegistriesConfig {
    #[serde(default)]
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Registries that may be reached over plain HTTP.
    #[serde(default)]
    pub insecure: Vec<String>,
}

impl RegistriesConfig {
    pub fn load(arg: Option<&Path>) -> anyhow::Result<RegistriesConfig> {
        let explicit = arg
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("SHALEFS_REGISTRIES_CONF").filter(|v| !v.is_empty()).map(PathBuf::from));
        let path = match explicit {
            Some(p) => p,
            None if Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
            None => return Ok(RegistriesConfig::default()),
        };
        let bytes = std::fs::read(&path).with_context(|| format!("reading registries config {}", path.display()))?;
        let conf: RegistriesConfig =
            serde_json::from_slice(&bytes).with_context(|| format!("parsing registries config {}", path.display()))?;
        for (registry, urls) in &conf.mirrors {
            for url in urls {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    anyhow::bail!("{}: mirror {url:?} of {registry} must start with http:// or https://", path.display());
                }
            }
        }
        Ok(conf)
    }
}
