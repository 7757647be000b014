//! Image references as docker and podman accept them: `alpine`, `library/alpine:3.20`,
//! `docker.io/library/alpine@sha256:…`, `localhost:5000/app:1`, `ghcr.io/org/img:tag`.
//!
//! The rules are docker's (distribution/reference): the first path component is a registry
//! host only if it has a `.` or a `:` or is `localhost`; otherwise the registry is Docker Hub,
//! where a one-component name lives under `library/`. No tag and no digest means `:latest`.

use std::fmt;

use super::digest::Digest;

pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's API host: `docker.io` itself does not serve the registry API.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `docker.io`, `localhost:5000`, `ghcr.io`…
    pub registry: String,
    /// `library/alpine`, `org/img`…
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {input:?}: {why}")]
pub struct ReferenceError {
    input: String,
    why: String,
}

impl Reference {
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        let err = |why: &str| ReferenceError { input: input.to_string(), why: why.to_string() };
        if input.is_empty() || input.len() > 4096 {
            return Err(err("empty or longer than 4096 bytes"));
        }
        let (name_tag, digest) = match input.split_once('@') {
            Some((n, d)) => (n, Some(Digest::parse(d).map_err(|e| err(&e.to_string()))?)),
            None => (input, None),
        };
        // A tag is after the last ':' that comes after the last '/' (a ':' before that is a port).
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => (&name_tag[..last_slash + i], Some(&name_tag[last_slash + i + 1..])),
            None => (name_tag, None),
        };
        if let Some(tag) = tag {
            check_tag(tag).map_err(&err)?;
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        check_registry(&registry).map_err(&err)?;
        let registry = if registry == "index.docker.io" { DOCKER_HUB.to_string() } else { registry };
        let repository =
            if registry == DOCKER_HUB && !repository.contains('/') { format!("library/{repository}") } else { repository };
        check_repository(&repository).map_err(err)?;
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// The host to send API requests to.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB { DOCKER_HUB_API } else { &self.registry }
    }

    /// What a manifest request asks for: the digest when there is one, else the tag.
    pub fn manifest_key(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// `registry/repository`, as stored with tags.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The short form docker shows: `alpine` for `docker.io/library/alpine`.
    pub fn familiar_name(&self) -> String {
        familiar(&self.registry, &self.repository)
    }
}

pub fn familiar(registry: &str, repository: &str) -> String {
    if registry == DOCKER_HUB {
        repository.strip_prefix("library/").unwrap_or(repository).to_string()
    } else {
        format!("{registry}/{repository}")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn check_tag(tag: &str) -> Result<(), &'static str> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok { Ok(()) } else { Err("a tag is 1 to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'") }
}

fn check_registry(host: &str) -> Result<(), &'static str> {
    let ok = !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        && host.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'[')
        && !host.contains("..");
    if ok { Ok(()) } else { Err("bad registry host") }
}

fn check_repository(repo: &str) -> Result<(), &'static str> {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    if repo.split('/').all(component_ok) {
        Ok(())
    } else {
        Err("a repository is lowercase [a-z0-9._-] components separated by '/'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = Reference::parse(s).unwrap();
        (r.registry, r.repository, r.tag, r.digest.map(|d| d.to_string()))
    }

    #[test]
    fn references_parse_as_docker_does() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let s = |x: &str| Some(x.to_string());
        assert_eq!(parts("alpine"), ("docker.io".into(), "library/alpine".into(), s("latest"), None));
        assert_eq!(parts("library/alpine:3.20"), ("docker.io".into(), "library/alpine".into(), s("3.20"), None));
        assert_eq!(parts(&format!("docker.io/library/alpine@{d}")), ("docker.io".into(), "library/alpine".into(), None, s(d)));
        assert_eq!(parts("localhost:5000/app:1"), ("localhost:5000".into(), "app".into(), s("1"), None));
        assert_eq!(parts("localhost/app"), ("localhost".into(), "app".into(), s("latest"), None));
        assert_eq!(parts("ghcr.io/org/img:tag"), ("ghcr.io".into(), "org/img".into(), s("tag"), None));
        assert_eq!(parts("127.0.0.1:5000/a/b:c"), ("127.0.0.1:5000".into(), "a/b".into(), s("c"), None));
        assert_eq!(parts("index.docker.io/user/x"), ("docker.io".into(), "user/x".into(), s("latest"), None));
        assert_eq!(Reference::parse("alpine").unwrap().familiar_name(), "alpine");
        assert_eq!(Reference::parse("alpine").unwrap().api_host(), "registry-1.docker.io");
    }

    #[test]
    fn bad_references_are_refused() {
        for bad in ["", "Alpine", "a::b", "alpine:", "alpine@sha256:123", "a//b", "../x", "x/..", "alpine:-x", "a b"] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
