//! HTTP requests to one repository of a registry, through its mirrors first.
//!
//! Redirects are followed by hand so that credentials never go to another host (blob
//! downloads are usually redirected to a storage service). 429 and 5xx answers and dropped
//! connections are retried with backoff; a mirror gets one short try and then the next source.
//! Push (`push.rs`) goes through the same requests, to the origin only, with a push scope.

use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use super::auth::{self, Challenge, Credentials, TokenCache, TokenReply};
use super::config::RegistriesConfig;
use crate::oci::manifest::{ACCEPT_MANIFESTS, MAX_MANIFEST_BYTES};
use crate::oci::{Digest, Reference};

const ATTEMPTS: u32 = 4;
const MAX_REDIRECTS: u32 = 5;

pub struct Client {
    agent: ureq::Agent,
    mirror_agent: ureq::Agent,
    conf: RegistriesConfig,
    insecure: bool,
    /// `--creds`, for the image's own registry only (never a mirror).
    creds: Option<Credentials>,
    tokens: Mutex<TokenCache>,
    /// How each host asked to be authenticated, so later requests authenticate up front.
    schemes: Mutex<std::collections::HashMap<String, Scheme>>,
}

#[derive(Clone, Debug)]
enum Scheme {
    Basic,
    Bearer { realm: String, service: String },
}

#[derive(Clone, Debug)]
struct Endpoint {
    /// `http://host:port`, no trailing slash.
    base: String,
    host: String,
    mirror: bool,
    creds: Option<Credentials>,
}

pub struct RepoClient<'a> {
    client: &'a Client,
    endpoints: Vec<Endpoint>,
    repo: String,
    /// The token scopes asked for, space-separated (`repository:NAME:pull`, and for a push
    /// `repository:NAME:pull,push` plus pull on each repository a blob may be mounted from).
    scope: String,
}

/// A blob body, from byte `start` (the offset the server agreed to resume at, else 0).
pub struct BlobStream {
    pub reader: Box<dyn Read + Send + Sync>,
    pub start: u64,
}

/// One request as `send_to` makes it.
struct Request<'a> {
    method: &'a str,
    url: &'a str,
    headers: &'a [(&'a str, String)],
    body: Option<&'a [u8]>,
    retry: bool,
}

/// An error from one source; from a mirror, the next source is tried.
#[derive(Debug)]
struct SourceError {
    err: anyhow::Error,
}

impl Client {
    pub fn new(conf: RegistriesConfig, insecure: bool, creds: Option<Credentials>) -> Client {
        let build = |connect: u64, read: u64| {
            ureq::AgentBuilder::new()
                .redirects(0)
                .timeout_connect(Duration::from_secs(connect))
                .timeout_read(Duration::from_secs(read))
                .user_agent(concat!("shalefs/", env!("CARGO_PKG_VERSION")))
                .build()
        };
        Client {
            agent: build(15, 60),
            mirror_agent: build(3, 15),
            conf,
            insecure,
            creds,
            tokens: Mutex::new(TokenCache::default()),
            schemes: Mutex::new(Default::default()),
        }
    }

    fn scheme_for(&self, host: &str) -> &'static str {
        let name = host.rsplit_once(':').map_or(host, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { host });
        let local = matches!(name, "localhost" | "127.0.0.1" | "[::1]" | "::1");
        if local || self.insecure || self.conf.insecure.iter().any(|h| h == host) { "http" } else { "https" }
    }

    /// A client for one repository: mirrors of its registry first, then the registry.
    pub fn repo(&self, r: &Reference) -> anyhow::Result<RepoClient<'_>> {
        let mut endpoints = Vec::new();
        for url in self.conf.mirrors.get(&r.registry).into_iter().flatten() {
            let base = url.trim_end_matches('/').to_string();
            let host = base.split("://").nth(1).unwrap_or(&base).split('/').next().unwrap_or("").to_string();
            // A mirror gets its own stored credentials, never the origin's.
            let creds = auth::stored_credentials(&host)?;
            endpoints.push(Endpoint { base, host, mirror: true, creds });
        }
        let host = r.api_host().to_string();
        let creds = match &self.creds {
            Some(c) => Some(c.clone()),
            None => auth::stored_credentials(&r.registry)?,
        };
        endpoints.push(Endpoint { base: format!("{}://{host}", self.scheme_for(&host)), host, mirror: false, creds });
        Ok(RepoClient { client: self, endpoints, repo: r.repository.clone(), scope: format!("repository:{}:pull", r.repository) })
    }

    /// A client for pushing to one repository: the registry itself (never a mirror), with a
    /// token scope of pull and push there and pull on each repository of `mount_from`.
    pub fn repo_for_push(&self, r: &Reference, mount_from: &[String]) -> anyhow::Result<RepoClient<'_>> {
        let host = r.api_host().to_string();
        let creds = match &self.creds {
            Some(c) => Some(c.clone()),
            None => auth::stored_credentials(&r.registry)?,
        };
        let endpoint = Endpoint { base: format!("{}://{host}", self.scheme_for(&host)), host, mirror: false, creds };
        let mut scope = format!("repository:{}:pull,push", r.repository);
        for from in mount_from.iter().filter(|f| **f != r.repository) {
            scope.push_str(&format!(" repository:{from}:pull"));
        }
        Ok(RepoClient { client: self, endpoints: vec![endpoint], repo: r.repository.clone(), scope })
    }
}

impl RepoClient<'_> {
    /// The digest a tag or digest currently resolves to (`HEAD`, one request when anonymous).
    pub fn head_manifest(&self, key: &str) -> anyhow::Result<Option<Digest>> {
        let resp = self.send("HEAD", &format!("manifests/{key}"), &[("Accept", ACCEPT_MANIFESTS.to_string())])?;
        Ok(resp.header("Docker-Content-Digest").and_then(|d| Digest::parse(d).ok()))
    }

    /// A manifest or index: its bytes, digest (of the bytes) and Content-Type.
    pub fn get_manifest(&self, key: &str) -> anyhow::Result<(Vec<u8>, Digest, Option<String>)> {
        let resp = self.send("GET", &format!("manifests/{key}"), &[("Accept", ACCEPT_MANIFESTS.to_string())])?;
        let content_type = resp.header("Content-Type").map(String::from);
        let bytes = read_bounded(resp, MAX_MANIFEST_BYTES).with_context(|| format!("manifest {key}"))?;
        let digest = Digest::of_bytes(&bytes);
        if let Ok(wanted) = Digest::parse(key)
            && wanted != digest {
                bail!("manifest {key}: the registry sent content whose digest is {digest}");
            }
        Ok((bytes, digest, content_type))
    }

    /// A small blob (a config), read whole and verified.
    pub fn get_small_blob(&self, digest: &Digest, max: u64) -> anyhow::Result<Vec<u8>> {
        let resp = self.send("GET", &format!("blobs/{digest}"), &[])?;
        let bytes = read_bounded(resp, max).with_context(|| format!("blob {digest}"))?;
        let got = Digest::of_bytes(&bytes);
        if &got != digest {
            bail!("blob {digest}: the registry sent content whose digest is {got}");
        }
        Ok(bytes)
    }

    /// A blob body, resumed at `offset` when the server honours the Range request.
    pub fn open_blob(&self, digest: &Digest, offset: u64) -> anyhow::Result<BlobStream> {
        let path = format!("blobs/{digest}");
        if offset == 0 {
            let resp = self.send("GET", &path, &[])?;
            return Ok(BlobStream { reader: Box::new(resp.into_reader()), start: 0 });
        }
        let resp = match self.send("GET", &path, &[("Range", format!("bytes={offset}-"))]) {
            Ok(r) => r,
            Err(e) if format!("{e:#}").contains("416") => {
                tracing::info!("blob {digest}: cannot resume at byte {offset}; starting again");
                return self.open_blob(digest, 0);
            }
            Err(e) => return Err(e),
        };
        // Only a 206 whose Content-Range starts where we asked is a resumption.
        let start = match (resp.status(), resp.header("Content-Range").and_then(content_range_start)) {
            (206, Some(s)) if s == offset => offset,
            (206, _) => bail!("blob {digest}: the registry answered a range request with a different range"),
            _ => 0,
        };
        Ok(BlobStream { reader: Box::new(resp.into_reader()), start })
    }

    fn send(&self, method: &str, path: &str, headers: &[(&str, String)]) -> anyhow::Result<ureq::Response> {
        let mut last = None;
        for ep in &self.endpoints {
            let url = format!("{}/v2/{}/{}", ep.base, self.repo, path);
            match self.send_to(ep, &Request { method, url: &url, headers, body: None, retry: true }) {
                Ok(resp) => return Ok(resp),
                Err(SourceError { err }) if ep.mirror => {
                    tracing::warn!("mirror {}: {err:#}; trying the next source", ep.base);
                    last = Some(err);
                }
                Err(SourceError { err }) => return Err(err),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no registry to ask")))
    }

    /// A request to the registry itself (not a mirror), for push: `target` is a path under
    /// this repository (`blobs/uploads/`), or an upload URL the registry gave in a Location
    /// header (absolute, or absolute-path on the registry's host). Without `retry`, a dropped
    /// connection or a 5xx is returned at once, for the caller to ask where an upload stands.
    pub(super) fn send_origin(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, String)],
        body: Option<&[u8]>,
        retry: bool,
    ) -> anyhow::Result<ureq::Response> {
        let ep = self.endpoints.iter().rfind(|e| !e.mirror).ok_or_else(|| anyhow!("no registry to ask"))?;
        let url = if target.starts_with("http://") || target.starts_with("https://") {
            target.to_string()
        } else if target.starts_with('/') {
            format!("{}{target}", ep.base)
        } else {
            format!("{}/v2/{}/{}", ep.base, self.repo, target)
        };
        if origin_of(&url) != origin_of(&format!("{}/", ep.base)) {
            // Upload URLs elsewhere would get our credentials; registries keep them on their host.
            bail!("{method} {url}: the registry sent an upload location on another host");
        }
        self.send_to(ep, &Request { method, url: &url, headers, body, retry }).map_err(|e| e.err)
    }

    /// The repository this client speaks to, without the registry.
    pub fn repository(&self) -> &str {
        &self.repo
    }

    fn send_to(&self, ep: &Endpoint, r: &Request<'_>) -> Result<ureq::Response, SourceError> {
        let (method, url, headers) = (r.method, r.url, r.headers);
        let agent = if ep.mirror { &self.client.mirror_agent } else { &self.client.agent };
        let attempts = if ep.mirror || !r.retry { 1 } else { ATTEMPTS };
        let fail = |err: anyhow::Error| SourceError { err };
        let mut authenticated = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = agent.request(method, url);
            for (k, v) in headers {
                req = req.set(k, v);
            }
            if let Some(a) = self.auth_header(ep).map_err(fail)? {
                req = req.set("Authorization", &a);
            }
            let sent = match r.body {
                Some(body) => req.send_bytes(body),
                None => req.call(),
            };
            let wait = match sent {
                Ok(resp) if (300..400).contains(&resp.status()) && matches!(method, "GET" | "HEAD") => {
                    return self.follow_redirect(ep, agent, url, resp, method, headers).map_err(fail);
                }
                Ok(resp) => return Ok(resp),
                Err(ureq::Error::Status(401, resp)) if !authenticated => {
                    authenticated = true;
                    let challenge = resp.header("WWW-Authenticate").and_then(auth::parse_challenge);
                    self.learn_scheme(ep, challenge).map_err(fail)?;
                    attempt -= 1;
                    continue;
                }
                Err(ureq::Error::Status(code, resp)) if (code == 429 || code >= 500) && attempt < attempts => {
                    retry_after(&resp).unwrap_or_else(|| backoff(attempt))
                }
                Err(ureq::Error::Status(code, resp)) => {
                    return Err(fail(status_error(method, url, code, resp, ep)));
                }
                Err(ureq::Error::Transport(t)) if attempt < attempts => {
                    tracing::debug!("{method} {}: {t}; retrying", shown_url(url));
                    backoff(attempt)
                }
                Err(ureq::Error::Transport(t)) => {
                    return Err(fail(anyhow::Error::new(TransportError(format!("{method} {}: {t}", shown_url(url))))));
                }
            };
            tracing::info!("{method} {}: retrying in {:?}", shown_url(url), wait);
            std::thread::sleep(wait);
        }
    }

    /// Follow a redirect; credentials go along only to the same scheme and host.
    fn follow_redirect(
        &self,
        ep: &Endpoint,
        agent: &ureq::Agent,
        from: &str,
        mut resp: ureq::Response,
        method: &str,
        headers: &[(&str, String)],
    ) -> anyhow::Result<ureq::Response> {
        let mut current = from.to_string();
        for _ in 0..MAX_REDIRECTS {
            let location = resp.header("Location").ok_or_else(|| anyhow!("{current}: redirect without a Location"))?;
            let next = resolve_location(&current, location)?;
            let same_origin = origin_of(&next) == origin_of(&format!("{}/", ep.base));
            let mut req = agent.request(method, &next);
            for (k, v) in headers {
                req = req.set(k, v);
            }
            if same_origin
                && let Some(a) = self.auth_header(ep)? {
                    req = req.set("Authorization", &a);
                }
            resp = match req.call() {
                Ok(r) => r,
                Err(ureq::Error::Status(code, r)) => return Err(status_error(method, &next, code, r, ep)),
                Err(ureq::Error::Transport(t)) => bail!("{method} {next}: {t}"),
            };
            if !(300..400).contains(&resp.status()) {
                return Ok(resp);
            }
            current = next;
        }
        bail!("{from}: more than {MAX_REDIRECTS} redirects")
    }

    fn learn_scheme(&self, ep: &Endpoint, challenge: Option<Challenge>) -> anyhow::Result<()> {
        let scheme = match challenge {
            Some(Challenge::Basic) => {
                if ep.creds.is_none() {
                    bail!("registry {} requires a username and password: give --creds USER:PASSWORD or log in with docker or podman", ep.host);
                }
                Scheme::Basic
            }
            Some(Challenge::Bearer { realm, service, .. }) => {
                if !(realm.starts_with("https://") || realm.starts_with("http://")) {
                    bail!("registry {}: token realm {realm:?} is not an http(s) URL", ep.host);
                }
                Scheme::Bearer { realm, service: service.unwrap_or_default() }
            }
            None => bail!("registry {} refused the request (401) without a usable WWW-Authenticate challenge", ep.host),
        };
        self.client.schemes.lock().map_err(|_| anyhow!("lock poisoned"))?.insert(ep.host.clone(), scheme);
        // Drop a cached token that was just refused.
        if let Ok(mut cache) = self.client.tokens.lock() {
            cache.tokens.retain(|(_, _, scope), _| scope != &self.scope);
        }
        Ok(())
    }

    fn auth_header(&self, ep: &Endpoint) -> anyhow::Result<Option<String>> {
        let scheme = self.client.schemes.lock().map_err(|_| anyhow!("lock poisoned"))?.get(&ep.host).cloned();
        match scheme {
            None => Ok(None),
            Some(Scheme::Basic) => Ok(ep.creds.as_ref().map(Credentials::basic_header)),
            Some(Scheme::Bearer { realm, service }) => Ok(Some(format!("Bearer {}", self.token(ep, &realm, &service)?))),
        }
    }

    /// A bearer token for this client's scopes: cached, else refreshed with a refresh
    /// token, else fetched (anonymously, or with basic credentials).
    fn token(&self, ep: &Endpoint, realm: &str, service: &str) -> anyhow::Result<String> {
        let key = (realm.to_string(), service.to_string(), self.scope.clone());
        let refresh = {
            let cache = self.client.tokens.lock().map_err(|_| anyhow!("lock poisoned"))?;
            if let Some(t) = cache.get(&key) {
                return Ok(t);
            }
            cache.refresh.get(&(realm.to_string(), service.to_string())).cloned()
        };
        let reply = match refresh.and_then(|r| self.refresh_token(realm, service, &r).ok()) {
            Some(r) => r,
            None => self.fetch_token(ep, realm, service)?,
        };
        let (token, refresh) = reply.into_token().ok_or_else(|| anyhow!("token server {realm} sent no token"))?;
        let mut cache = self.client.tokens.lock().map_err(|_| anyhow!("lock poisoned"))?;
        if let Some(r) = refresh {
            cache.refresh.insert((realm.to_string(), service.to_string()), r);
        }
        cache.tokens.insert(key, token.clone());
        Ok(token.value)
    }

    fn fetch_token(&self, ep: &Endpoint, realm: &str, service: &str) -> anyhow::Result<TokenReply> {
        let mut req = self.client.agent.get(realm);
        for scope in self.scope.split(' ') {
            req = req.query("scope", scope);
        }
        if !service.is_empty() {
            req = req.query("service", service);
        }
        if let Some(c) = &ep.creds {
            req = req.query("offline_token", "true").query("client_id", "shalefs").set("Authorization", &c.basic_header());
        }
        match req.call() {
            Ok(resp) => {
                let body = read_bounded(resp, 1 << 20).with_context(|| format!("token server {realm}"))?;
                serde_json::from_slice(&body).with_context(|| format!("token server {realm}: malformed reply"))
            }
            Err(ureq::Error::Status(code @ (401 | 403), _)) => {
                bail!("token server {realm} refused {} ({code}) for {}", if ep.creds.is_some() { "the credentials" } else { "anonymous access" }, self.scope)
            }
            Err(ureq::Error::Status(code, _)) => bail!("token server {realm}: HTTP {code}"),
            Err(ureq::Error::Transport(t)) => bail!("token server {realm}: {t}"),
        }
    }

    fn refresh_token(&self, realm: &str, service: &str, refresh: &str) -> anyhow::Result<TokenReply> {
        let resp = self
            .client
            .agent
            .post(realm)
            .send_form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh),
                ("service", service),
                ("scope", &self.scope),
                ("client_id", "shalefs"),
            ])
            .map_err(|e| anyhow!("refreshing a token at {realm}: {e}"))?;
        Ok(serde_json::from_slice(&read_bounded(resp, 1 << 20)?)?)
    }
}

fn status_error(method: &str, url: &str, code: u16, resp: ureq::Response, ep: &Endpoint) -> anyhow::Error {
    // The distribution spec's error body: {"errors":[{"code":"MANIFEST_UNKNOWN","message":…}]}
    let body = read_bounded(resp, 64 << 10).unwrap_or_default();
    let detail = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let e = v.get("errors")?.get(0)?;
            Some(format!("{}: {}", e.get("code")?.as_str()?, e.get("message").and_then(|m| m.as_str()).unwrap_or("")))
        })
        .unwrap_or_default();
    let hint = match code {
        401 => format!(" (authentication with {} failed)", ep.host),
        403 => " (access denied)".to_string(),
        404 => " (not found)".to_string(),
        _ => String::new(),
    };
    let url = shown_url(url);
    let text = format!("{method} {url}: HTTP {code}{hint}{}", if detail.is_empty() { String::new() } else { format!(": {detail}") });
    anyhow::Error::new(StatusError { code, text })
}

/// A registry's error answer: its status code (for callers that act on it) and the message.
#[derive(Debug)]
pub struct StatusError {
    pub code: u16,
    text: String,
}

impl std::fmt::Display for StatusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for StatusError {}

/// A request that got no answer (refused or dropped connection, timeout).
#[derive(Debug)]
pub struct TransportError(String);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TransportError {}

/// The HTTP status of a registry error, if it was one.
pub fn status_of(e: &anyhow::Error) -> Option<u16> {
    e.downcast_ref::<StatusError>().map(|s| s.code)
}

/// A URL as errors show it: without the query, where upload URLs carry long state tokens.
fn shown_url(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

pub(super) fn read_bounded(resp: ureq::Response, max: u64) -> anyhow::Result<Vec<u8>> {
    if let Some(len) = resp.header("Content-Length").and_then(|l| l.parse::<u64>().ok())
        && len > max {
            bail!("{len} bytes is larger than the {max}-byte limit");
        }
    let mut bytes = Vec::new();
    resp.into_reader().take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        bail!("larger than the {max}-byte limit");
    }
    Ok(bytes)
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250 << attempt.min(5))
}

fn retry_after(resp: &ureq::Response) -> Option<Duration> {
    let secs: u64 = resp.header("Retry-After")?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(30)))
}

fn content_range_start(h: &str) -> Option<u64> {
    h.trim().strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

fn origin_of(url: &str) -> &str {
    let after = url.find("://").map_or(0, |i| i + 3);
    let end = url[after..].find('/').map_or(url.len(), |i| after + i);
    &url[..end]
}

fn resolve_location(current: &str, location: &str) -> anyhow::Result<String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        Ok(location.to_string())
    } else if location.starts_with('/') {
        Ok(format!("{}{location}", origin_of(current)))
    } else {
        bail!("{current}: unsupported relative redirect to {location:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_and_origins_compare() {
        assert_eq!(resolve_location("http://a:5000/v2/x", "/blob/1").unwrap(), "http://a:5000/blob/1");
        assert_eq!(origin_of("http://a:5000/v2/x"), "http://a:5000");
        assert_ne!(origin_of("http://a:5000/x"), origin_of("http://b:5000/x"));
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
    }
}
