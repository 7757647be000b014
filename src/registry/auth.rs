//! Registry authentication: credentials from `--creds` and the files docker and podman write
//! (`auths`, `credHelpers`, `credsStore`), `WWW-Authenticate` challenges, and bearer tokens
//! (distribution's token spec: anonymous or with basic credentials, refresh tokens by the
//! OAuth2 form when a registry hands one out).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <hidden>)", self.username)
    }
}

impl Credentials {
    /// `user:password`, as `--creds` takes them.
    pub fn parse(s: &str) -> anyhow::Result<Credentials> {
        let (u, p) = s.split_once(':').ok_or_else(|| anyhow::anyhow!("--creds wants USER:PASSWORD"))?;
        Ok(Credentials { username: u.into(), password: p.into() })
    }

    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

/// The auth files to read, in podman's then docker's order.
fn auth_files() -> Vec<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut files = Vec::new();
    if let Some(p) = env("REGISTRY_AUTH_FILE") {
        files.push(p);
    }
    if let Some(run) = env("XDG_RUNTIME_DIR") {
        files.push(run.join("containers/auth.json"));
    }
    if let Some(home) = env("HOME") {
        files.push(home.join(".config/containers/auth.json"));
    }
    match env("DOCKER_CONFIG") {
        Some(d) => files.push(d.join("config.json")),
        None => {
            if let Some(home) = env("HOME") {
                files.push(home.join(".docker/config.json"));
            }
        }
    }
    files
}

#[derive(Deserialize, Default)]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The keys a registry may be stored under: `host`, `https://host`, and for Docker Hub the
/// legacy `https://index.docker.io/v1/`.
fn key_matches(key: &str, registry: &str) -> bool {
    let k = key.trim_start_matches("https://").trim_start_matches("http://");
    let k = k.split('/').next().unwrap_or(k);
    let hub = |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    k == registry || (hub(k) && hub(registry))
}

/// Credentials stored for `registry` (a host[:port]), if any.
pub fn stored_credentials(registry: &str) -> anyhow::Result<Option<Credentials>> {
    for path in auth_files() {
        let Ok(bytes) = std::fs::read(&path) else { continue };
        let file: AuthFile = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("parsing credentials file {}: {e}", path.display()))?;
        if let Some((key, helper)) = file.cred_helpers.iter().find(|(k, _)| key_matches(k, registry)) {
            return credential_helper(helper, key);
        }
        if let Some(entry) = file.auths.iter().find(|(k, _)| key_matches(k, registry)).map(|(_, v)| v)
            && let Some(c) = decode_entry(entry, &path)? {
                return Ok(Some(c));
            }
        if let Some(store) = &file.creds_store {
            let key = if key_matches("docker.io", registry) { "https://index.docker.io/v1/" } else { registry };
            if let Some(c) = credential_helper(store, key)? {
                return Ok(Some(c));
            }
        }
    }
    Ok(None)
}

fn decode_entry(entry: &AuthEntry, path: &std::path::Path) -> anyhow::Result<Option<Credentials>> {
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| anyhow::anyhow!("{}: an `auth` entry is not base64: {e}", path.display()))?;
        let text = String::from_utf8(raw).map_err(|_| anyhow::anyhow!("{}: an `auth` entry is not UTF-8", path.display()))?;
        return Credentials::parse(&text).map(Some).map_err(|_| anyhow::anyhow!("{}: an `auth` entry is not user:password", path.display()));
    }
    Ok(match (&entry.username, &entry.password) {
        (Some(u), Some(p)) => Some(Credentials { username: u.clone(), password: p.clone() }),
        _ => None,
    })
}

/// Ask `docker-credential-<helper> get` (the docker credential-helper protocol).
fn credential_helper(helper: &str, server: &str) -> anyhow::Result<Option<Credentials>> {
    let program = format!("docker-credential-{helper}");
    let mut child = match Command::new(&program).arg("get").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn() {
        Ok(c) => c,
        Err(e) => anyhow::bail!("running credential helper {program}: {e}"),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| anyhow::anyhow!("running credential helper {program}: {e}"))?;
    if !out.status.success() {
        // Helpers exit non-zero for "no credentials for this server".
        return Ok(None);
    }
    #[derive(Deserialize)]
    struct Reply {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let r: Reply = serde_json::from_slice(&out.stdout).map_err(|e| anyhow::anyhow!("credential helper {program}: bad reply: {e}"))?;
    Ok(Some(Credentials { username: r.username, password: r.secret }))
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => {
            let params = parse_params(rest);
            Some(Challenge::Bearer {
                realm: params.get("realm")?.clone(),
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
            })
        }
        _ => None,
    }
}

/// `key="value", key2=value2` (values may hold commas inside quotes).
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (q[..end].to_string(), &q[end + 1..]),
                None => (q.to_string(), ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (after[..end].trim().to_string(), &after[end..]),
                None => (after.trim().to_string(), ""),
            }
        };
        out.insert(key, value);
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

#[derive(Deserialize)]
pub struct TokenReply {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub refresh_token: Option<String>,
}

#[derive(Clone)]
pub struct Token {
    pub value: String,
    pub expires: Instant,
}

/// Tokens by (realm, service, scope); refresh tokens by (realm, service).
#[derive(Default)]
pub struct TokenCache {
    pub tokens: HashMap<(String, String, String), Token>,
    pub refresh: HashMap<(String, String), String>,
}

impl TokenCache {
    pub fn get(&self, key: &(String, String, String)) -> Option<String> {
        let t = self.tokens.get(key)?;
        // Leave a margin so a token does not expire between check and use.
        (t.expires > Instant::now() + Duration::from_secs(5)).then(|| t.value.clone())
    }
}

impl TokenReply {
    /// The token and when it expires (the spec's default lifetime is 60 s).
    pub fn into_token(self) -> Option<(Token, Option<String>)> {
        let value = self.token.filter(|t| !t.is_empty()).or(self.access_token)?;
        let life = Duration::from_secs(self.expires_in.unwrap_or(60).max(10));
        Some((Token { value, expires: Instant::now() + life }, self.refresh_token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_quoted_commas() {
        let c = parse_challenge(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#);
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge(r#"Basic realm="basic-realm""#), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn auth_keys_match_docker_hub_aliases() {
        assert!(key_matches("https://index.docker.io/v1/", "docker.io"));
        assert!(key_matches("localhost:5000", "localhost:5000"));
        assert!(key_matches("https://localhost:5000", "localhost:5000"));
        assert!(!key_matches("localhost:5001", "localhost:5000"));
    }
}
