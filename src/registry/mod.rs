//! The OCI distribution client: ping, auth challenges and a token cache, manifests by tag and
//! by digest, blobs with resume, mirrors tried before the origin, retries with backoff; and
//! push (`push`): blob checks, mounts, resumable uploads, manifests.

pub mod auth;
pub mod client;
pub mod config;
pub mod push;

pub use client::{BlobStream, Client, RepoClient};
pub use config::RegistriesConfig;
