//! A small token endpoint for the registry's token auth (distribution's token spec): it signs
//! JWTs with an RSA key whose self-signed certificate the registry trusts (`rootcertbundle`),
//! the signature made by the openssl command line tool. Anonymous requests get pull access;
//! push needs the basic credentials bob:pw. Optionally it hands bob a refresh token (OAuth2
//! `offline_token`) and takes it back by POST (`grant_type=refresh_token`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use base64::Engine as _;

use super::registry::TestServer;
use super::run_ok;

pub const SERVICE: &str = "shalefs-registry";
pub const ISSUER: &str = "shalefs-test-issuer";

/// How the token endpoint answers.
#[derive(Clone, Copy)]
pub struct TokenOptions {
    /// `expires_in` of each token, in seconds.
    pub expires_in: u64,
    /// Hand an authenticated client that asks for `offline_token` a refresh token.
    pub refresh_tokens: bool,
}

impl Default for TokenOptions {
    fn default() -> Self {
        TokenOptions { expires_in: 300, refresh_tokens: false }
    }
}

/// The refresh token bob gets.
const BOB_REFRESH: &str = "refresh-token-of-bob";

pub struct TokenServer {
    pub cert: PathBuf,
    /// Its log: one line per token request, "<method> <anonymous|user> <scope>".
    server: TestServer,
}

impl TokenServer {
    pub fn start(dir: &Path) -> TokenServer {
        Self::start_with(dir, TokenOptions::default())
    }

    pub fn start_with(dir: &Path, options: TokenOptions) -> TokenServer {
        let key = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        run_ok(Command::new("openssl").args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=shalefs-token"])
            .arg("-keyout").arg(&key).arg("-out").arg(&cert));
        let der = Command::new("openssl").args(["x509", "-outform", "DER", "-in"]).arg(&cert).output().expect("openssl x509");
        let x5c = base64::engine::general_purpose::STANDARD.encode(der.stdout);
        // One request at a time: the signature goes through one scratch file.
        let server = TestServer::start(false, move |stream, log| {
            let _ = answer(stream, &key, &x5c, log, options);
        });
        TokenServer { cert, server }
    }

    pub fn realm(&self) -> String {
        format!("http://{}/token", self.server.host())
    }

    pub fn log(&self) -> Vec<String> {
        self.server.log()
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if let (b'%', Some(Ok(v))) = (b[i], s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16))) {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn answer(stream: std::net::TcpStream, key: &Path, x5c: &str, log: &Mutex<Vec<String>>, options: TokenOptions) -> std::io::Result<()> {
    use std::io::Read as _;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut user = None;
    let mut content_length = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("authorization: basic ").map(|_| line[21..].trim().to_string()) {
            let raw = base64::engine::general_purpose::STANDARD.decode(v).unwrap_or_default();
            user = Some(String::from_utf8_lossy(&raw).into_owned());
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; content_length.min(1 << 16)];
    reader.read_exact(&mut body)?;
    let method = request_line.split_whitespace().next().unwrap_or("").to_string();
    let target = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
    // GET takes its parameters in the query, POST (a refresh) in a form body.
    let params = if method == "POST" { String::from_utf8_lossy(&body).into_owned() } else { target.split_once('?').map(|(_, q)| q.to_string()).unwrap_or_default() };
    let param = |key: &str| params.split('&').find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(percent_decode));
    let scopes: Vec<String> = params.split('&').filter_map(|kv| kv.strip_prefix("scope=")).map(percent_decode).collect();
    let mut out = stream;
    let refreshed = method == "POST" && param("grant_type").as_deref() == Some("refresh_token");
    let who = match (user.as_deref(), refreshed) {
        (_, true) if param("refresh_token").as_deref() == Some(BOB_REFRESH) => "bob",
        (_, true) => {
            log.lock().map(|mut l| l.push(format!("refused refresh {}", scopes.join(" ")))).ok();
            return out.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
        (None, false) => "anonymous",
        (Some("bob:pw"), false) => "bob",
        (Some(_), false) => {
            log.lock().map(|mut l| l.push(format!("refused {}", scopes.join(" ")))).ok();
            return out.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    };
    let how = if refreshed { "POST refresh" } else { method.as_str() };
    log.lock().map(|mut l| l.push(format!("{how} {who} {}", scopes.join(" ")))).ok();
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            let allowed: Vec<&str> = actions.split(',').filter(|a| *a == "pull" || who == "bob").collect();
            Some(serde_json::json!({"type": kind, "name": name, "actions": allowed}))
        })
        .collect();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [x5c]});
    let claims = serde_json::json!({"iss": ISSUER, "sub": who, "aud": SERVICE, "exp": now + 300.max(options.expires_in), "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", std::process::id()), "access": access});
    let signing_input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
    let input_file = key.with_file_name("jwt-signing-input");
    std::fs::write(&input_file, &signing_input)?;
    let sig = Command::new("openssl").args(["dgst", "-sha256", "-sign"]).arg(key).arg(&input_file).output()?;
    let jwt = format!("{signing_input}.{}", b64url(&sig.stdout));
    let mut reply = serde_json::json!({"token": jwt, "access_token": jwt, "expires_in": options.expires_in});
    if options.refresh_tokens && who == "bob" && (refreshed || param("offline_token").as_deref() == Some("true")) {
        reply["refresh_token"] = BOB_REFRESH.into();
    }
    let body = reply.to_string();
    write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}
