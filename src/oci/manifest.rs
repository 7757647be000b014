//! Manifests, indexes and image configs (OCI image spec, and Docker's schema2 equivalents),
//! and the layer media types shalefs can unpack.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::platform::Platform;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The Accept header for a manifest request: every kind we can read.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Manifests and configs are small; anything bigger is refused before it is parsed
/// (containerd uses the same 4 MiB bound for manifests).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageManifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

/// What a manifest request returned.
#[derive(Debug)]
pub enum Manifest {
    Image(ImageManifest),
    Index(Index),
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("Docker schema1 manifests are not supported (deprecated since 2017); push the image again with a current tool")]
    Schema1,
    #[error("unsupported manifest media type {0:?}")]
    MediaType(String),
    #[error("malformed manifest: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest of {0} bytes is larger than the {MAX_MANIFEST_BYTES}-byte limit")]
    TooBig(u64),
}

impl Manifest {
    /// Parse by the `mediaType` field, else the Content-Type the registry gave, else the shape.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooBig(bytes.len() as u64));
        }
        #[derive(Deserialize)]
        struct Probe {
            #[serde(rename = "schemaVersion", default)]
            schema_version: u32,
            #[serde(rename = "mediaType", default)]
            media_type: Option<String>,
            manifests: Option<serde_json::Value>,
        }
        let probe: Probe = serde_json::from_slice(bytes)?;
        let header = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_string());
        let media_type = probe.media_type.or(header.filter(|h| !h.is_empty() && h != "application/json"));
        match media_type.as_deref() {
            Some(OCI_INDEX | DOCKER_LIST) => Ok(Manifest::Index(serde_json::from_slice(bytes)?)),
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => Ok(Manifest::Image(serde_json::from_slice(bytes)?)),
            Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED) => Err(ManifestError::Schema1),
            Some(other) if !other.is_empty() => Err(ManifestError::MediaType(other.to_string())),
            _ if probe.schema_version == 1 => Err(ManifestError::Schema1),
            _ if probe.manifests.is_some() => Ok(Manifest::Index(serde_json::from_slice(bytes)?)),
            _ => Ok(Manifest::Image(serde_json::from_slice(bytes)?)),
        }
    }
}

/// How a layer blob is compressed, from its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, thiserror::Error)]
pub enum LayerTypeError {
    #[error("layer {0} is encrypted ({1}); shalefs cannot decrypt layers")]
    Encrypted(Digest, String),
    #[error("layer {0} is a foreign (non-distributable) layer ({1}) that registries do not serve")]
    Foreign(Digest, String),
    #[error("layer {0} has unsupported media type {1:?}")]
    Unknown(Digest, String),
}

pub fn layer_compression(layer: &Descriptor) -> Result<Compression, LayerTypeError> {
    let mt = layer.media_type.as_str();
    let d = || layer.digest.clone();
    if mt.ends_with("+encrypted") {
        return Err(LayerTypeError::Encrypted(d(), mt.to_string()));
    }
    if mt.contains(".nondistributable.") || mt.contains(".foreign.") {
        return Err(LayerTypeError::Foreign(d(), mt.to_string()));
    }
    match mt {
        "application/vnd.oci.image.layer.v1.tar" | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip" | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            Ok(Compression::Gzip)
        }
        "application/vnd.oci.image.layer.v1.tar+zstd" | "application/vnd.docker.image.rootfs.diff.tar.zstd" => {
            Ok(Compression::Zstd)
        }
        _ => Err(LayerTypeError::Unknown(d(), mt.to_string())),
    }
}

/// The parts of an image config shalefs uses; the rest is kept as raw JSON for `inspect`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    pub rootfs: RootFs,
    #[serde(default)]
    pub history: Vec<History>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default)]
    pub empty_layer: bool,
}

impl ImageConfig {
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn manifests_parse_by_media_type_and_shape() {
        let image = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{D}","size":1}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{D}","size":3}}]}}"#
        );
        let Manifest::Image(m) = Manifest::parse(image.as_bytes(), Some(OCI_MANIFEST)).unwrap() else { panic!() };
        assert_eq!(layer_compression(&m.layers[0]).unwrap(), Compression::Zstd);
        let index = format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{D}","size":1}}]}}"#);
        assert!(matches!(Manifest::parse(index.as_bytes(), None).unwrap(), Manifest::Index(_)));
        assert!(matches!(Manifest::parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, None), Err(ManifestError::Schema1)));
        let huge = vec![b' '; (MAX_MANIFEST_BYTES + 1) as usize];
        assert!(matches!(Manifest::parse(&huge, None), Err(ManifestError::TooBig(_))));
    }

    #[test]
    fn encrypted_and_foreign_layers_are_named_in_the_error() {
        let desc = |mt: &str| Descriptor {
            media_type: mt.into(),
            digest: Digest::parse(D).unwrap(),
            size: 0,
            platform: None,
            annotations: Default::default(),
            urls: vec![],
        };
        let e = layer_compression(&desc("application/vnd.oci.image.layer.v1.tar+gzip+encrypted")).unwrap_err();
        assert!(e.to_string().contains("encrypted") && e.to_string().contains(D));
        assert!(matches!(
            layer_compression(&desc("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")),
            Err(LayerTypeError::Foreign(..))
        ));
    }
}
