//! A real registry for pull tests: Debian's `docker-registry` (the CNCF distribution server),
//! started per test on a free loopback port with its own config and storage, and killed by PID
//! when the guard drops. Beside it, a recording proxy that can cut a blob download short or
//! slow it down, and helpers that build images with umoci and skopeo or push hand-made blobs
//! through the registry's own upload API.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::Digest as _;

use super::run_ok;

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

pub enum Auth {
    None,
    /// An htpasswd file (bcrypt) for basic auth.
    Htpasswd(PathBuf),
    /// Token auth: (realm URL, service, issuer, root certificate bundle).
    Token { realm: String, service: String, issuer: String, cert: PathBuf },
}

pub struct Registry {
    child: Child,
    pub port: u16,
    pub data: PathBuf,
}

impl Registry {
    pub fn start(dir: &Path, auth: Auth) -> Registry {
        let port = free_port();
        let data = dir.join("registry-data");
        std::fs::create_dir_all(&data).expect("registry data dir");
        let auth_yaml = match auth {
            Auth::None => String::new(),
            Auth::Htpasswd(p) => format!("auth:\n  htpasswd:\n    realm: shalefs-test\n    path: {}\n", p.display()),
            Auth::Token { realm, service, issuer, cert } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                cert.display()
            ),
        };
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_yaml}",
                data.display()
            ),
        )
        .expect("write registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("registry.log")).expect("registry log"))
            .stderr(std::fs::File::create(dir.join("registry.err")).expect("registry log"))
            .spawn()
            .expect("start docker-registry (Debian package docker-registry)");
        let reg = Registry { child, port, data };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen on {port}: {}", std::fs::read_to_string(dir.join("registry.err")).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(20));
        }
        reg
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The file the registry keeps a blob's bytes in.
    pub fn blob_file(&self, hex: &str) -> PathBuf {
        self.data.join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a proxy does to the blob responses it forwards.
#[derive(Default)]
pub struct ProxyBehaviour {
    /// Close the connection of the first blob GET that reaches this many body bytes.
    pub cut_first_blob_after: Option<usize>,
    /// Before that cut, stall this long (the client waits for more of the body).
    pub stall_before_cut: Option<Duration>,
    /// Pause this long after every 64 KiB of a blob body.
    pub slow_blobs: Option<Duration>,
    /// Answer every request with a 503.
    pub always_503: bool,
    /// Answer the first N requests with 503 and 429 (alternately), then forward.
    pub fail_first: usize,
    /// Send `Retry-After: N` (seconds) with each 429.
    pub retry_after_secs: Option<u64>,
    /// Answer blob GETs with a 307 to the same path on this port of 127.0.0.1 (another origin).
    pub redirect_blobs_to: Option<u16>,
    /// Close the connection of the Nth blob upload PATCH (from 1) without forwarding it, as a
    /// connection dropped mid-upload: the registry keeps what the earlier chunks brought.
    pub drop_patch: Option<usize>,
}

/// A loopback TCP server a test runs: each connection goes to `handle` (on a thread of its own
/// when `concurrent`), with a log the handler appends to; it stops accepting when dropped.
pub struct TestServer {
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl TestServer {
    pub fn start(concurrent: bool, handle: impl Fn(TcpStream, &Mutex<Vec<String>>) + Send + Sync + 'static) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a test server");
        let port = listener.local_addr().expect("test server addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (reqs, stopping, handle) = (log.clone(), stop.clone(), Arc::new(handle));
        std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let (reqs, handle) = (reqs.clone(), handle.clone());
                        let work = move || handle(stream, &reqs);
                        if concurrent {
                            std::thread::spawn(work);
                        } else {
                            work();
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TestServer { port, log, stop }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A logging HTTP proxy in front of a registry: one request per connection (it asks both
/// sides for `Connection: close`), each request line and its Range and Authorization headers
/// recorded.
pub struct Proxy {
    pub port: u16,
    server: TestServer,
    arrivals: Arc<Mutex<Vec<std::time::Instant>>>,
}

impl Proxy {
    pub fn start(upstream: u16, behaviour: ProxyBehaviour) -> Proxy {
        let (cut_done, served, patches) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let seen = arrivals.clone();
        let server = TestServer::start(true, move |client, log| {
            let counters = Counters { cut: &cut_done, served: &served, patches: &patches };
            let _ = serve_one(client, upstream, log, &behaviour, &counters, &seen);
        });
        Proxy { port: server.port, server, arrivals }
    }

    /// When each request arrived, in the order of the log.
    pub fn arrivals(&self) -> Vec<std::time::Instant> {
        self.arrivals.lock().map(|a| a.clone()).unwrap_or_default()
    }

    pub fn host(&self) -> String {
        self.server.host()
    }

    pub fn log(&self) -> Vec<String> {
        self.server.log()
    }
}

/// What a proxy counts across connections.
struct Counters<'a> {
    cut: &'a AtomicUsize,
    served: &'a AtomicUsize,
    patches: &'a AtomicUsize,
}

fn serve_one(
    client: TcpStream,
    upstream: u16,
    log: &Mutex<Vec<String>>,
    b: &ProxyBehaviour,
    counters: &Counters<'_>,
    arrivals: &Mutex<Vec<std::time::Instant>>,
) -> std::io::Result<()> {
    let (cut, served) = (counters.cut, counters.served);
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    let mut line = String::new();
    let mut content_length = 0usize;
    let mut record = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if head.is_empty() {
            record = line.trim_end().to_string();
        } else if lower.starts_with("range:") || lower.starts_with("content-range:") {
            record.push_str(&format!(" [{}]", line.trim_end()));
        } else if lower.starts_with("authorization:") {
            record.push_str(" [auth]");
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        if !lower.starts_with("connection:") {
            head.extend_from_slice(line.as_bytes());
        }
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;
    if let (Ok(mut l), Ok(mut a)) = (log.lock(), arrivals.lock()) {
        l.push(record.clone());
        a.push(std::time::Instant::now());
    }
    let mut client = client;
    if record.starts_with("PATCH ") && b.drop_patch == Some(counters.patches.fetch_add(1, Ordering::SeqCst) + 1) {
        return client.shutdown(std::net::Shutdown::Both);
    }
    let nth = served.fetch_add(1, Ordering::SeqCst);
    if b.always_503 || nth < b.fail_first {
        let too_many = nth % 2 == 1 && !b.always_503;
        let status = if too_many { "429 Too Many Requests" } else { "503 Service Unavailable" };
        let wait = b.retry_after_secs.filter(|_| too_many).map(|s| format!("Retry-After: {s}\r\n")).unwrap_or_default();
        write!(client, "HTTP/1.1 {status}\r\n{wait}Content-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    }
    if let (Some(port), true) = (b.redirect_blobs_to, record.starts_with("GET ") && record.contains("/blobs/sha256:")) {
        let path = record.split_whitespace().nth(1).unwrap_or("/");
        write!(client, "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{port}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.write_all(&head)?;
    up.write_all(&body)?;
    let is_blob = record.starts_with("GET ") && record.contains("/blobs/sha256:");
    let mut upr = BufReader::new(up);
    // Response head, passed through as is.
    let mut header_bytes = 0;
    loop {
        line.clear();
        if upr.read_line(&mut line)? == 0 {
            return Ok(());
        }
        header_bytes += line.len();
        client.write_all(line.as_bytes())?;
        if line == "\r\n" {
            break;
        }
    }
    let _ = header_bytes;
    let cut_at = if is_blob { b.cut_first_blob_after } else { None };
    let mut sent = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = upr.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let n = match cut_at {
            Some(limit) if sent + n >= limit && cut.fetch_add(1, Ordering::SeqCst) == 0 => {
                client.write_all(&buf[..limit - sent])?;
                if let Some(d) = b.stall_before_cut {
                    std::thread::sleep(d);
                }
                return client.shutdown(std::net::Shutdown::Both);
            }
            _ => n,
        };
        client.write_all(&buf[..n])?;
        sent += n;
        if let (true, Some(d)) = (is_blob, b.slow_blobs) {
            std::thread::sleep(d);
        }
    }
    Ok(())
}

/// Push a hand-made image through the registry's upload API: each layer as (bytes, media type,
/// diff_id hex), then a config and an OCI manifest under `tag`. Returns the manifest digest.
pub fn push_image(host: &str, repo: &str, tag: &str, layers: &[(Vec<u8>, &str, String)], arch: &str) -> String {
    let mut descs = Vec::new();
    for (bytes, media_type, _) in layers {
        let hex = push_blob(host, repo, bytes);
        descs.push(serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()}));
    }
    let diff_ids: Vec<String> = layers.iter().map(|(_, _, d)| format!("sha256:{d}")).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": layers.iter().map(|_| serde_json::json!({"created_by": "push_image"})).collect::<Vec<_>>(),
    }))
    .expect("config json");
    let config_hex = push_blob(host, repo, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_hex}"), "size": config.len()},
        "layers": descs,
    }))
    .expect("manifest json");
    put_manifest(host, repo, tag, &manifest, "application/vnd.oci.image.manifest.v1+json")
}

pub fn push_blob(host: &str, repo: &str, bytes: &[u8]) -> String {
    let hex = sha256_hex(bytes);
    // Start an upload session, then finish it with the whole body in one PUT.
    let url = format!("http://{host}/v2/{repo}/blobs/uploads/");
    let session = ureq::post(&url).call().unwrap_or_else(|e| panic!("starting an upload at {url}: {e}"));
    let location = session.header("Location").expect("upload Location").to_string();
    let location = if location.starts_with("http") { location } else { format!("http://{host}{location}") };
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = format!("{location}{sep}digest=sha256:{hex}");
    match ureq::put(&put).set("Content-Type", "application/octet-stream").send_bytes(bytes) {
        Ok(r) => assert_eq!(r.status(), 201, "blob upload"),
        Err(e) => panic!("uploading blob to {put}: {e}"),
    }
    hex
}

pub fn put_manifest(host: &str, repo: &str, tag: &str, manifest: &[u8], media_type: &str) -> String {
    let url = format!("http://{host}/v2/{repo}/manifests/{tag}");
    if let Err(e) = ureq::put(&url).set("Content-Type", media_type).send_bytes(manifest) {
        panic!("putting manifest {url}: {e}");
    }
    format!("sha256:{}", sha256_hex(manifest))
}

/// A layer tar made by GNU tar from a directory (sorted, numeric owners), independent of
/// shalefs. Returns (tar bytes, diff_id hex).
pub fn gnu_tar(dir: &Path) -> (Vec<u8>, String) {
    let out = Command::new("tar")
        .args(["--sort=name", "--numeric-owner", "--xattrs", "-C"])
        .arg(dir)
        .args(["-cf", "-", "."])
        .output()
        .expect("run tar");
    assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
    let hex = sha256_hex(&out.stdout);
    (out.stdout, hex)
}

/// Compress with an external tool (`gzip`, `zstd`) reading stdin.
pub fn compress_with(tool: &str, args: &[&str], data: &[u8]) -> Vec<u8> {
    let mut child = Command::new(tool).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("run compressor");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("compressor output");
    writer.join().expect("writer").expect("write to compressor");
    assert!(out.status.success());
    out.stdout
}

/// An OCI layout image built by umoci: the first step gets an empty rootfs, each later step
/// the previous one; every step becomes one layer (umoci writes whiteouts for what a step
/// deleted). Then `skopeo copy` pushes it to `dest` (a docker:// reference).
pub struct UmociImage {
    pub layout: PathBuf,
    bundle: PathBuf,
    tag: String,
}

impl UmociImage {
    pub fn new(dir: &Path, tag: &str) -> UmociImage {
        let layout = dir.join("oci");
        if !layout.exists() {
            run_ok(Command::new("umoci").arg("init").arg("--layout").arg(&layout));
        }
        run_ok(Command::new("umoci").arg("new").arg("--image").arg(format!("{}:{tag}", layout.display())));
        UmociImage { layout, bundle: dir.join(format!("bundle-{tag}")), tag: tag.to_string() }
    }

    /// A second tag of this image (`umoci tag`): it shares every layer so far.
    pub fn tag_as(&self, tag: &str) -> UmociImage {
        run_ok(Command::new("umoci").args(["tag", "--image"]).arg(self.image()).arg(tag));
        UmociImage { layout: self.layout.clone(), bundle: self.bundle.with_file_name(format!("bundle-{tag}")), tag: tag.to_string() }
    }

    fn image(&self) -> String {
        format!("{}:{}", self.layout.display(), self.tag)
    }

    /// Add one layer: `change` edits the unpacked rootfs.
    pub fn layer(&self, change: impl FnOnce(&Path)) -> &Self {
        let _ = std::fs::remove_dir_all(&self.bundle);
        run_ok(Command::new("umoci").args(["unpack", "--image"]).arg(self.image()).arg(&self.bundle));
        change(&self.bundle.join("rootfs"));
        run_ok(Command::new("umoci").args(["repack", "--image"]).arg(self.image()).arg(&self.bundle));
        let _ = std::fs::remove_dir_all(&self.bundle);
        self
    }

    /// Add a layer from a tar file as is (`umoci raw add-layer`), e.g. one with an opaque marker.
    pub fn raw_layer(&self, tar: &Path) -> &Self {
        run_ok(Command::new("umoci").args(["raw", "add-layer", "--image"]).arg(self.image()).arg(tar));
        self
    }

    pub fn config(&self, args: &[&str]) -> &Self {
        run_ok(Command::new("umoci").args(["config", "--image"]).arg(self.image()).args(args));
        self
    }

    /// The image's rootfs as umoci itself unpacks it: the oracle for the merged view.
    pub fn unpack_to(&self, bundle: &Path) -> PathBuf {
        run_ok(Command::new("umoci").args(["unpack", "--image"]).arg(self.image()).arg(bundle));
        bundle.join("rootfs")
    }

    /// `skopeo copy` to the registry, with extra skopeo flags (e.g. compression).
    pub fn push(&self, dest: &str, extra: &[&str]) {
        run_ok(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--dest-tls-verify=false"])
                .args(extra)
                .arg(format!("oci:{}", self.image()))
                .arg(format!("docker://{dest}")),
        );
    }
}

/// Files and directories under `dir`, relative, sorted: the probe that nothing appeared where
/// it should not.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).map(|r| r.display().to_string()).unwrap_or_default());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(base, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}
