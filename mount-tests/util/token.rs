//! A small token endpoint for the registry's token auth (distribution's token spec): it signs
//! JWTs with an RSA key whose self-signed certificate the registry trusts (`rootcertbundle`),
//! the signature made by the openssl command line tool. Anonymous requests get pull access;
//! push needs the basic credentials bob:pw.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use base64::Engine as _;

use super::registry::TestServer;
use super::run_ok;

pub const SERVICE: &str = "shalefs-registry";
pub const ISSUER: &str = "shalefs-test-issuer";

pub struct TokenServer {
    pub cert: PathBuf,
    /// Its log: one line per token request, "<method> <anonymous|user> <scope>".
    server: TestServer,
}

impl TokenServer {
    pub fn start(dir: &Path) -> TokenServer {
        let key = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        run_ok(Command::new("openssl").args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=shalefs-token"])
            .arg("-keyout").arg(&key).arg("-out").arg(&cert));
        let der = Command::new("openssl").args(["x509", "-outform", "DER", "-in"]).arg(&cert).output().expect("openssl x509");
        let x5c = base64::engine::general_purpose::STANDARD.encode(der.stdout);
        // One request at a time: the signature goes through one scratch file.
        let server = TestServer::start(false, move |stream, log| {
            let _ = answer(stream, &key, &x5c, log);
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

fn answer(stream: std::net::TcpStream, key: &Path, x5c: &str, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut user = None;
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
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let scopes: Vec<String> =
        query.split('&').filter_map(|kv| kv.strip_prefix("scope=")).map(percent_decode).collect();
    let mut out = stream;
    let who = match user.as_deref() {
        None => "anonymous",
        Some("bob:pw") => "bob",
        Some(_) => {
            log.lock().map(|mut l| l.push(format!("refused {}", scopes.join(" ")))).ok();
            return out.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    };
    log.lock().map(|mut l| l.push(format!("{} {who} {}", request_line.split_whitespace().next().unwrap_or(""), scopes.join(" ")))).ok();
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
    let claims = serde_json::json!({"iss": ISSUER, "sub": who, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", std::process::id()), "access": access});
    let signing_input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
    let input_file = key.with_file_name("jwt-signing-input");
    std::fs::write(&input_file, &signing_input)?;
    let sig = Command::new("openssl").args(["dgst", "-sha256", "-sign"]).arg(key).arg(&input_file).output()?;
    let jwt = format!("{signing_input}.{}", b64url(&sig.stdout));
    let body = serde_json::json!({"token": jwt, "access_token": jwt, "expires_in": 300}).to_string();
    write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}
