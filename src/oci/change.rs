//! Docker's `--change` instructions (`commit -c`, `import -c`): the Dockerfile instructions
//! that only edit an image config — CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, VOLUME,
//! WORKDIR, STOPSIGNAL — in JSON (exec) or shell form, parsed once and applied to the
//! config's `config` object.

use anyhow::{anyhow, bail};
use serde_json::{Map, Value, json};

#[derive(Debug, Clone, PartialEq)]
pub enum ConfigChange {
    Cmd(Vec<String>),
    Entrypoint(Vec<String>),
    Env(Vec<(String, String)>),
    Expose(Vec<String>),
    Label(Vec<(String, String)>),
    User(String),
    Volume(Vec<String>),
    Workdir(String),
    StopSignal(String),
}

const SUPPORTED: &str = "CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, VOLUME, WORKDIR, STOPSIGNAL";

impl ConfigChange {
    pub fn parse(text: &str) -> anyhow::Result<ConfigChange> {
        let text = text.trim();
        let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
        let rest = rest.trim();
        let need = |what: &str| if rest.is_empty() { Err(anyhow!("--change {text:?}: {what} needs an argument")) } else { Ok(()) };
        Ok(match word.to_ascii_uppercase().as_str() {
            "CMD" => {
                need("CMD")?;
                ConfigChange::Cmd(exec_or_shell(rest)?)
            }
            "ENTRYPOINT" => {
                need("ENTRYPOINT")?;
                ConfigChange::Entrypoint(exec_or_shell(rest)?)
            }
            "ENV" => {
                need("ENV")?;
                ConfigChange::Env(pairs(rest, "ENV")?)
            }
            "LABEL" => {
                need("LABEL")?;
                ConfigChange::Label(pairs(rest, "LABEL")?)
            }
            "EXPOSE" => {
                need("EXPOSE")?;
                let ports = words(rest)?
                    .into_iter()
                    .map(|p| if p.contains('/') { p.to_ascii_lowercase() } else { format!("{p}/tcp") })
                    .collect::<Vec<_>>();
                for p in &ports {
                    let (num, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                    let ok_num = num.split('-').all(|n| n.parse::<u16>().is_ok());
                    if !ok_num || !["tcp", "udp", "sctp"].contains(&proto) {
                        bail!("--change {text:?}: invalid port {p:?}");
                    }
                }
                ConfigChange::Expose(ports)
            }
            "USER" => {
                need("USER")?;
                ConfigChange::User(single(rest)?)
            }
            "WORKDIR" => {
                need("WORKDIR")?;
                ConfigChange::Workdir(single(rest)?)
            }
            "STOPSIGNAL" => {
                need("STOPSIGNAL")?;
                ConfigChange::StopSignal(single(rest)?)
            }
            "VOLUME" => {
                need("VOLUME")?;
                let vols = if rest.starts_with('[') { json_array(rest)? } else { words(rest)? };
                ConfigChange::Volume(vols)
            }
            "" => bail!("--change: empty instruction (supported: {SUPPORTED})"),
            other => bail!("--change {text:?}: unknown instruction {other} (supported: {SUPPORTED})"),
        })
    }

    /// Apply to the `config` object of an image config.
    pub fn apply(&self, config: &mut Map<String, Value>) {
        let strings = |v: &[String]| Value::Array(v.iter().map(|s| json!(s)).collect());
        match self {
            // As in a Dockerfile, a new ENTRYPOINT clears an inherited CMD.
            ConfigChange::Cmd(v) => {
                config.insert("Cmd".into(), strings(v));
            }
            ConfigChange::Entrypoint(v) => {
                config.insert("Entrypoint".into(), strings(v));
            }
            ConfigChange::Env(pairs) => {
                let mut env: Vec<String> = config
                    .get("Env")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                for (k, v) in pairs {
                    let entry = format!("{k}={v}");
                    match env.iter_mut().find(|e| e.split_once('=').map_or(e.as_str(), |p| p.0) == k) {
                        Some(e) => *e = entry,
                        None => env.push(entry),
                    }
                }
                config.insert("Env".into(), strings(&env));
            }
            ConfigChange::Label(pairs) => {
                let labels = object(config, "Labels");
                for (k, v) in pairs {
                    labels.insert(k.clone(), json!(v));
                }
            }
            ConfigChange::Expose(ports) => {
                let exposed = object(config, "ExposedPorts");
                for p in ports {
                    exposed.insert(p.clone(), json!({}));
                }
            }
            ConfigChange::Volume(vols) => {
                let volumes = object(config, "Volumes");
                for v in vols {
                    volumes.insert(v.clone(), json!({}));
                }
            }
            ConfigChange::User(u) => {
                config.insert("User".into(), json!(u));
            }
            ConfigChange::Workdir(w) => {
                // A relative WORKDIR is taken from the current one, as in a Dockerfile.
                let dir = if w.starts_with('/') {
                    w.clone()
                } else {
                    let cur = config.get("WorkingDir").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("/");
                    format!("{}/{w}", cur.trim_end_matches('/'))
                };
                config.insert("WorkingDir".into(), json!(dir));
            }
            ConfigChange::StopSignal(s) => {
                config.insert("StopSignal".into(), json!(s));
            }
        }
    }
}

fn object<'a>(config: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = config.entry(key.to_string()).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    match slot {
        Value::Object(m) => m,
        _ => unreachable!("set to an object just above"),
    }
}

/// `["a","b"]` (exec form) or `a b` (shell form → `/bin/sh -c "a b"`).
fn exec_or_shell(rest: &str) -> anyhow::Result<Vec<String>> {
    if rest.starts_with('[')
        && let Ok(v) = json_array(rest)
    {
        return Ok(v);
    }
    Ok(vec!["/bin/sh".into(), "-c".into(), rest.to_string()])
}

fn json_array(rest: &str) -> anyhow::Result<Vec<String>> {
    serde_json::from_str::<Vec<String>>(rest).map_err(|e| anyhow!("--change: {rest:?} is not a JSON array of strings: {e}"))
}

fn single(rest: &str) -> anyhow::Result<String> {
    let w = words(rest)?;
    match w.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("--change: expected one value, got {rest:?}"),
    }
}

/// `K=V K2="v 2"`, or the old one-pair form `K some value`.
fn pairs(rest: &str, what: &str) -> anyhow::Result<Vec<(String, String)>> {
    let first = rest.split_whitespace().next().unwrap_or("");
    if !first.contains('=') {
        let (k, v) = rest.split_once(char::is_whitespace).ok_or_else(|| anyhow!("--change {what} {rest:?}: expected KEY=VALUE"))?;
        return Ok(vec![(k.to_string(), unquote_all(v.trim())?)]);
    }
    words(rest)?
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--change {what} {rest:?}: {w:?} is not KEY=VALUE"),
        })
        .collect()
}

fn unquote_all(s: &str) -> anyhow::Result<String> {
    Ok(words(s)?.join(" "))
}

/// Split on blanks, honouring "double" and 'single' quotes and backslash escapes.
fn words(s: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => cur.push(c),
            (_, '\\') => {
                in_word = true;
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (_, c) => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if quote.is_some() {
        bail!("--change: unterminated quote in {s:?}");
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_parse_in_both_forms() {
        assert_eq!(ConfigChange::parse(r#"CMD ["/bin/echo","hi"]"#).unwrap(), ConfigChange::Cmd(vec!["/bin/echo".into(), "hi".into()]));
        assert_eq!(ConfigChange::parse("cmd echo hi").unwrap(), ConfigChange::Cmd(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()]));
        assert_eq!(
            ConfigChange::parse(r#"ENV A=1 B="two words""#).unwrap(),
            ConfigChange::Env(vec![("A".into(), "1".into()), ("B".into(), "two words".into())])
        );
        assert_eq!(ConfigChange::parse("ENV A one two").unwrap(), ConfigChange::Env(vec![("A".into(), "one two".into())]));
        assert_eq!(ConfigChange::parse("EXPOSE 80 53/udp").unwrap(), ConfigChange::Expose(vec!["80/tcp".into(), "53/udp".into()]));
        let e = ConfigChange::parse("RUN apt-get update").unwrap_err().to_string();
        assert!(e.contains("unknown instruction RUN") && !e.contains('\n'), "{e}");
        assert!(ConfigChange::parse("EXPOSE http").is_err());
    }

    #[test]
    fn changes_apply_to_the_config() {
        let mut c = Map::new();
        c.insert("Env".into(), json!(["PATH=/bin", "A=0"]));
        for t in ["ENV A=1", "WORKDIR /srv", "WORKDIR app", "LABEL k=v", "USER 1000:1000", "VOLUME /data", "STOPSIGNAL SIGINT"] {
            ConfigChange::parse(t).unwrap().apply(&mut c);
        }
        assert_eq!(c["Env"], json!(["PATH=/bin", "A=1"]));
        assert_eq!(c["WorkingDir"], json!("/srv/app"));
        assert_eq!(c["Labels"], json!({"k": "v"}));
        assert_eq!(c["User"], json!("1000:1000"));
        assert_eq!(c["Volumes"], json!({"/data": {}}));
        assert_eq!(c["StopSignal"], json!("SIGINT"));
    }
}
