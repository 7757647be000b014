//! The push half of the distribution client (OCI distribution spec, "Pushing blobs" and
//! "Pushing manifests"): a HEAD per blob, cross-repository mounts, uploads as POST + PUT for
//! small blobs and PATCH chunks for large ones, resumed from the offset the registry reports
//! after a dropped connection, and the manifest PUT. Requests go through the pull client's
//! `send_origin` (auth, token scopes, retries, TLS), never to a mirror.

use std::io;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use super::client::{RepoClient, StatusError, TransportError, read_bounded, status_of};
use crate::oci::Digest;

/// How many times one upload is resumed (or started over) after a dropped connection.
const RESUMES: u32 = 5;

/// Blob content that can be read at any offset: a file in the store, or bytes in memory.
pub trait BlobBytes: Sync {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl BlobBytes for std::fs::File {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }
}

impl BlobBytes for &[u8] {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let src = self.get(start..start + buf.len()).ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// What an upload reports as it goes.
pub enum UploadEvent<'a> {
    /// Sending from this byte (0, or where the registry said it stood after a dropped connection).
    Sending(u64),
    /// This many bytes of the blob are with the registry.
    Sent(u64),
    /// The connection dropped; the upload goes on (why).
    Resuming(&'a str),
}

/// What a mount request got: the blob, or an upload session to send it in ourselves.
pub enum Mount {
    Mounted,
    Session(String),
}

/// A blob to upload.
pub struct Upload<'a> {
    pub digest: &'a Digest,
    pub size: u64,
    pub bytes: &'a dyn BlobBytes,
    /// Blobs up to this size go in one PUT; larger ones in PATCH chunks of this size.
    pub chunk_size: u64,
    /// An upload session already open (from a mount the registry declined).
    pub session: Option<String>,
}

impl RepoClient<'_> {
    /// `HEAD blobs/<digest>`: whether this repository has the blob.
    pub fn has_blob(&self, digest: &Digest) -> anyhow::Result<bool> {
        match self.send_origin("HEAD", &format!("blobs/{digest}"), &[], None, true) {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Ask the registry to link a blob another of its repositories holds
    /// (`POST blobs/uploads/?mount=DIGEST&from=REPO`): 201 is a mount, 202 an upload session.
    pub fn mount_blob(&self, digest: &Digest, from: &str) -> anyhow::Result<Mount> {
        let resp = self.send_origin("POST", &format!("blobs/uploads/?mount={digest}&from={from}"), &[], Some(&[]), true)?;
        match resp.status() {
            201 => Ok(Mount::Mounted),
            202 => Ok(Mount::Session(location(&resp)?)),
            code => bail!("mounting {digest} from {from}: unexpected HTTP {code}"),
        }
    }

    /// Drop an upload session we will not use (best effort: registries expire them anyway).
    pub fn cancel_upload(&self, session: &str) {
        if let Err(e) = self.send_origin("DELETE", session, &[], None, false) {
            tracing::debug!("cancelling an upload session: {e:#}");
        }
    }

    /// Upload a blob: one PUT for a small one, PATCH chunks for a large one. A dropped
    /// connection (or a 5xx) during a chunk asks the registry where the upload stands
    /// (`GET` on the session, its `Range` header) and goes on from there; a session the
    /// registry no longer knows is started over.
    pub fn upload_blob(&self, up: Upload<'_>, report: &(dyn Fn(UploadEvent<'_>) + Sync)) -> anyhow::Result<()> {
        let mut session = match up.session.clone() {
            Some(s) => s,
            None => self.start_upload()?,
        };
        let mut offset = 0u64;
        let mut resumes = 0;
        report(UploadEvent::Sending(0));
        loop {
            let step = if up.size <= up.chunk_size {
                self.put_whole(&session, &up).map(|()| None)
            } else if offset < up.size {
                self.patch_chunk(&session, &up, offset).map(Some)
            } else {
                self.finish_upload(&session, up.digest, None).map(|()| None)
            };
            match step {
                Ok(None) => {
                    report(UploadEvent::Sent(up.size));
                    return Ok(());
                }
                Ok(Some((next_session, next_offset))) => {
                    session = next_session;
                    offset = next_offset;
                    report(UploadEvent::Sent(offset));
                }
                Err(e) if resumable(&e) && resumes < RESUMES => {
                    resumes += 1;
                    let why = format!("{e:#}");
                    tracing::info!("blob {}: {why}; asking the registry where the upload stands", up.digest);
                    report(UploadEvent::Resuming(&why));
                    std::thread::sleep(Duration::from_millis(250 << resumes));
                    // The last request may have completed the upload before its answer was lost.
                    if self.has_blob(up.digest).unwrap_or(false) {
                        report(UploadEvent::Sent(up.size));
                        return Ok(());
                    }
                    (session, offset) = match self.upload_status(&session) {
                        Ok((s, at)) if at <= up.size && up.size > up.chunk_size => (s, at),
                        Ok((s, _)) => (s, 0),
                        Err(e) => {
                            tracing::info!("blob {}: {e:#}; starting the upload again", up.digest);
                            (self.start_upload()?, 0)
                        }
                    };
                    report(UploadEvent::Sending(offset));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `POST blobs/uploads/`: a new upload session's URL. A refusal here is the registry
    /// saying we may not push, so it is said plainly.
    fn start_upload(&self) -> anyhow::Result<String> {
        match self.send_origin("POST", "blobs/uploads/", &[], Some(&[]), true) {
            Ok(resp) if resp.status() == 202 => location(&resp),
            Ok(resp) => bail!("starting an upload: unexpected HTTP {}", resp.status()),
            Err(e) if matches!(status_of(&e), Some(401 | 403)) => Err(anyhow!(
                "the registry refused to let us push to {} ({}): give --creds USER:PASSWORD or log in with docker or podman",
                self.repository(),
                e.downcast_ref::<StatusError>().map(ToString::to_string).unwrap_or_default()
            )),
            Err(e) => Err(e),
        }
    }

    /// A small blob in one request: `PUT <session>&digest=…` with the whole body.
    fn put_whole(&self, session: &str, up: &Upload<'_>) -> anyhow::Result<()> {
        let mut body = vec![0u8; usize::try_from(up.size)?];
        up.bytes.read_at(0, &mut body).with_context(|| format!("reading blob {}", up.digest))?;
        self.finish_upload(session, up.digest, Some(&body))
    }

    /// One chunk from `offset`: returns the next session URL and the offset the registry now has.
    fn patch_chunk(&self, session: &str, up: &Upload<'_>, offset: u64) -> anyhow::Result<(String, u64)> {
        let len = up.chunk_size.min(up.size - offset);
        let mut body = vec![0u8; usize::try_from(len)?];
        up.bytes.read_at(offset, &mut body).with_context(|| format!("reading blob {}", up.digest))?;
        let headers = [
            ("Content-Type", "application/octet-stream".to_string()),
            ("Content-Range", format!("{offset}-{}", offset + len - 1)),
        ];
        let resp = self.send_origin("PATCH", session, &headers, Some(&body), false)?;
        let next = location(&resp)?;
        // The registry says how much it has; trust it over our own count.
        let have = resp.header("Range").and_then(range_end).unwrap_or(offset + len);
        Ok((next, have))
    }

    /// `PUT <session>&digest=…`, with the last bytes or none: the registry checks the digest.
    fn finish_upload(&self, session: &str, digest: &Digest, body: Option<&[u8]>) -> anyhow::Result<()> {
        let sep = if session.contains('?') { '&' } else { '?' };
        let url = format!("{session}{sep}digest={digest}");
        let headers = [("Content-Type", "application/octet-stream".to_string())];
        let resp = self.send_origin("PUT", &url, &headers, Some(body.unwrap_or(&[])), false)?;
        if resp.status() != 201 {
            bail!("finishing the upload of {digest}: unexpected HTTP {}", resp.status());
        }
        if let Some(got) = resp.header("Docker-Content-Digest").and_then(|d| Digest::parse(d).ok())
            && &got != digest {
                bail!("the registry stored blob {digest} as {got}");
            }
        Ok(())
    }

    /// `GET <session>`: the session's current URL and how many bytes the registry holds.
    fn upload_status(&self, session: &str) -> anyhow::Result<(String, u64)> {
        let resp = self.send_origin("GET", session, &[], None, true)?;
        let next = location(&resp).unwrap_or_else(|_| session.to_string());
        Ok((next, resp.header("Range").and_then(range_end).unwrap_or(0)))
    }

    /// `PUT manifests/<tag>`: returns the digest the registry gives (checked against ours).
    pub fn put_manifest(&self, tag: &str, bytes: &[u8], media_type: &str) -> anyhow::Result<Digest> {
        let ours = Digest::of_bytes(bytes);
        let resp = self.send_origin("PUT", &format!("manifests/{tag}"), &[("Content-Type", media_type.to_string())], Some(bytes), true)?;
        let theirs = resp.header("Docker-Content-Digest").and_then(|d| Digest::parse(d).ok());
        let _ = read_bounded(resp, 1 << 16);
        match theirs {
            Some(d) if d != ours => bail!("the registry stored the manifest as {d}, not {ours}"),
            _ => Ok(ours),
        }
    }
}

/// A dropped connection or a server error: worth asking where the upload stands.
fn resumable(e: &anyhow::Error) -> bool {
    match status_of(e) {
        Some(code) => code >= 500 || code == 416,
        None => e.downcast_ref::<TransportError>().is_some(),
    }
}

fn location(resp: &ureq::Response) -> anyhow::Result<String> {
    resp.header("Location").map(String::from).ok_or_else(|| anyhow!("the registry gave no Location for the upload"))
}

/// The byte count a `Range: 0-N` header reports (N + 1; `0-0` read as nothing yet, as
/// distribution writes it for an empty session).
fn range_end(h: &str) -> Option<u64> {
    let h = h.trim().trim_start_matches("bytes=");
    let (start, end) = h.split_once('-')?;
    let (start, end): (u64, u64) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    if start != 0 {
        return None;
    }
    Some(if end == 0 { 0 } else { end + 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ranges_give_the_bytes_held() {
        assert_eq!(range_end("0-65535"), Some(65536));
        assert_eq!(range_end("0-0"), Some(0));
        assert_eq!(range_end("bytes=0-9"), Some(10));
        assert_eq!(range_end("5-9"), None);
        assert_eq!(range_end("junk"), None);
    }

    #[test]
    fn blob_bytes_read_at_any_offset() {
        let data: &[u8] = b"0123456789";
        let data = &data;
        let mut buf = [0u8; 3];
        data.read_at(4, &mut buf).unwrap();
        assert_eq!(&buf, b"456");
        assert!(data.read_at(8, &mut buf).is_err());
    }
}
