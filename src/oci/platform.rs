//! Platforms (`linux/arm64/v8`) and choosing one manifest from an index the way containerd's
//! default matcher does: same os and architecture, a compatible variant (arm64 without a
//! variant is v8, amd64 without one is v1; an armv7 host also runs v6 and v5), exact variant
//! preferred. Attestation manifests and `unknown/unknown` entries are never chosen.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::manifest::Descriptor;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(rename = "os.version", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
}

impl Platform {
    /// `os/arch[/variant]`, with the same aliases containerd accepts (`x86_64`, `aarch64`).
    pub fn parse(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(format!("invalid platform {s:?}: expected os/architecture[/variant]"));
        }
        let (architecture, default_variant) = normalize_arch(&parts[1].to_lowercase());
        let variant = parts.get(2).map(|v| v.to_lowercase()).or(default_variant.map(String::from));
        Ok(Platform { os: parts[0].to_lowercase(), architecture, variant, os_version: None })
    }

    /// The platform this binary runs on.
    pub fn host() -> Platform {
        let (architecture, variant) = normalize_arch(std::env::consts::ARCH);
        Platform { os: "linux".into(), architecture, variant: variant.map(String::from), os_version: None }
    }

    fn normalized_variant(&self) -> Option<String> {
        let v = self.variant.as_deref().filter(|v| !v.is_empty());
        match (self.architecture.as_str(), v) {
            ("arm64", None) => Some("v8".into()),
            ("amd64", None) => Some("v1".into()),
            ("arm", None) => Some("v7".into()),
            (_, v) => v.map(String::from),
        }
    }

    /// How well `candidate` suits a host of this platform: None if it cannot run, else a
    /// rank where larger is better.
    fn rank(&self, candidate: &Platform) -> Option<u32> {
        if candidate.os != self.os || normalize_arch(&candidate.architecture).0 != self.architecture {
            return None;
        }
        let want = self.normalized_variant();
        let have = candidate.normalized_variant();
        if want == have {
            return Some(100);
        }
        // An armv7 host runs v6 and v5 images too, preferring the newest.
        let level = |v: &Option<String>| v.as_deref().and_then(|v| v.strip_prefix('v')).and_then(|n| n.parse::<u32>().ok());
        match (self.architecture.as_str(), level(&want), level(&have)) {
            ("arm", Some(w), Some(h)) if h < w => Some(h),
            _ => None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

fn normalize_arch(arch: &str) -> (String, Option<&'static str>) {
    match arch {
        "x86_64" | "x86-64" | "amd64" => ("amd64".into(), None),
        "aarch64" | "arm64" => ("arm64".into(), Some("v8")),
        "armhf" | "arm" => ("arm".into(), Some("v7")),
        "armel" => ("arm".into(), Some("v6")),
        "i386" | "i686" | "x86" | "386" => ("386".into(), None),
        "powerpc64" | "ppc64le" => ("ppc64le".into(), None),
        other => (other.into(), None),
    }
}

/// The manifest in an index that best suits `want`, or None.
pub fn choose<'a>(manifests: &'a [Descriptor], want: &Platform) -> Option<&'a Descriptor> {
    let is_attestation = |d: &Descriptor| {
        d.annotations.get("vnd.docker.reference.type").is_some_and(|t| t == "attestation-manifest")
    };
    manifests
        .iter()
        .filter(|d| !is_attestation(d))
        .filter_map(|d| {
            let p = d.platform.as_ref()?;
            if p.os == "unknown" || p.architecture == "unknown" {
                return None;
            }
            Some((want.rank(p)?, d))
        })
        // max_by_key keeps the last of equals; the index order breaks ties, first wins.
        .fold(None, |best: Option<(u32, &Descriptor)>, (r, d)| match best {
            Some((br, _)) if br >= r => best,
            _ => Some((r, d)),
        })
        .map(|(_, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;

    fn entry(n: u8, platform: &str, attestation: bool) -> Descriptor {
        let p = platform.split('/').collect::<Vec<_>>();
        let mut annotations = std::collections::BTreeMap::new();
        if attestation {
            annotations.insert("vnd.docker.reference.type".to_string(), "attestation-manifest".to_string());
        }
        Descriptor {
            media_type: String::new(),
            digest: Digest::from_hex(&format!("{:064x}", n)).unwrap(),
            size: 1,
            platform: Some(Platform {
                os: p[0].into(),
                architecture: p[1].into(),
                variant: p.get(2).map(|v| v.to_string()),
                os_version: None,
            }),
            annotations,
            urls: vec![],
        }
    }

    #[test]
    fn platforms_are_chosen_as_containerd_does() {
        let list = vec![
            entry(1, "unknown/unknown", false),
            entry(2, "linux/amd64", true),
            entry(3, "linux/amd64", false),
            entry(4, "linux/arm64/v8", false),
            entry(5, "linux/arm/v6", false),
            entry(6, "linux/arm/v7", false),
            entry(7, "linux/arm/v5", false),
        ];
        let pick = |p: &str| choose(&list, &Platform::parse(p).unwrap()).map(|d| d.digest.hex()[62..].to_string());
        assert_eq!(pick("linux/amd64").as_deref(), Some("03"));
        assert_eq!(pick("linux/x86_64").as_deref(), Some("03"));
        assert_eq!(pick("linux/arm64").as_deref(), Some("04"));
        assert_eq!(pick("linux/aarch64/v8").as_deref(), Some("04"));
        assert_eq!(pick("linux/arm/v7").as_deref(), Some("06"));
        assert_eq!(pick("linux/arm/v6").as_deref(), Some("05"));
        assert_eq!(pick("linux/s390x"), None);
        assert_eq!(pick("windows/amd64"), None);
        // An arm v7 host without v7 in the list takes the newest older variant.
        let old = vec![entry(7, "linux/arm/v5", false), entry(5, "linux/arm/v6", false)];
        assert_eq!(choose(&old, &Platform::parse("linux/arm/v7").unwrap()).map(|d| d.digest.hex()[62..].to_string()).as_deref(), Some("05"));
    }
}
