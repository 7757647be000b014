//! The OCI distribution client: ping, auth challenges and a token cache, manifests by tag and
//! by digest, blobs with resume, mirrors tried before the origin, retries with backoff.

pub mod auth;
pub mod client;
pub mod config;

pub use client::{BlobStream, Client, RepoClient};
pub use config::RegistriesConfig;
