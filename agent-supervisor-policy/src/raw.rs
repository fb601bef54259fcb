//! One policy file as written: TOML → a [`Layer`] of checked but unexpanded values.
//!
//! serde (with `deny_unknown_fields`) refuses unknown keys and wrong types; everything whose
//! message we want to word ourselves (decisions, access kinds, durations, the shape of a
//! rule) is read as a spanned string and checked here. Variables are not expanded yet:
//! that happens after the `extends` chain is merged (see `compile`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::source::{Pos, Source, Str};
use crate::{Access, Decision, PolicyError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    version: Option<Spanned<toml::Value>>,
    extends: Option<Spanned<String>>,
    default: Option<Spanned<String>>,
    approval_timeout: Option<Spanned<String>>,
    vars: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    filesystem: Option<RawFilesystem>,
    network: Option<RawNetwork>,
    limits: Option<crate::limits::RawLimits>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

/// `[network]`: `allow = [...]`, `deny = [...]`, one network rule per entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    allow: Option<Vec<Spanned<String>>>,
    deny: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilesystem {
    read: Option<Vec<Spanned<String>>>,
    write: Option<Vec<Spanned<String>>>,
    exec: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    decision: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
    command: Option<Spanned<String>>,
    args: Option<Spanned<String>>,
    network: Option<Spanned<String>>,
    access: Option<Spanned<Vec<Spanned<String>>>>,
    reason: Option<String>,
}

/// One file of an `extends` chain, checked, variables not yet expanded.
#[derive(Debug)]
pub(crate) struct Layer {
    pub extends: Option<Str>,
    pub default: Option<Decision>,
    pub approval_timeout: Option<Duration>,
    /// `(name, value)`.
    pub vars: Vec<(Str, Str)>,
    pub read: Option<Vec<Str>>,
    pub write: Option<Vec<Str>>,
    pub exec: Option<Vec<Str>>,
    pub rules: Vec<LayerRule>,
    /// `[limits]`, key by key.
    pub limits: crate::limits::LayerLimits,
}

#[derive(Debug)]
pub(crate) struct LayerRule {
    pub decision: Decision,
    /// The `[[rule]]` header.
    pub header: Pos,
    pub target: LayerTarget,
    pub reason: Option<String>,
}

#[derive(Debug)]
pub(crate) enum LayerTarget {
    File { pattern: Str, access: Access },
    Command { program: Str, args: Option<Str> },
    Network { spec: Str },
}

/// Parse and check one policy text.
pub(crate) fn parse_layer(src: &Arc<Source>) -> Result<Layer, PolicyError> {
    let raw: RawFile = toml::from_str(&src.text).map_err(|e| {
        let message = e.message().trim_end().to_string();
        match e.span() {
            Some(span) => src.pos(span).error(message),
            None => src.file_error(message),
        }
    })?;
    check_version(src, raw.version.as_ref())?;
    let str_of = |s: Spanned<String>| Str::new(src, s);
    let list = |v: Option<Vec<Spanned<String>>>| v.map(|v| v.into_iter().map(str_of).collect());

    let default = match raw.default {
        Some(d) => Some(decision(&str_of(d))?),
        None => None,
    };
    let approval_timeout = match raw.approval_timeout {
        Some(t) => Some(duration(&str_of(t))?),
        None => None,
    };
    let vars = raw
        .vars
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| {
            let name = str_of(name);
            if !is_identifier(&name.value) {
                return Err(name.pos.error(format!(
                    "bad variable name `{}`, expected letters, digits and `_`, not starting with a digit",
                    name.value
                )));
            }
            Ok((name, str_of(value)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (read, write, exec) = match raw.filesystem {
        Some(fs) => (list(fs.read), list(fs.write), list(fs.exec)),
        None => (None, None, None),
    };
    let mut rules = raw
        .rule
        .into_iter()
        .map(|rule| {
            let header = src.pos(rule.span());
            layer_rule(src, header, rule.into_inner())
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(network) = raw.network {
        for (decision, list) in [
            (Decision::Allow, network.allow),
            (Decision::Deny, network.deny),
        ] {
            for entry in list.unwrap_or_default() {
                rules.push(shorthand_rule(str_of(entry), decision));
            }
        }
    }
    let limits = match raw.limits {
        Some(l) => crate::limits::parse(src, l)?,
        None => Default::default(),
    };
    Ok(Layer {
        extends: raw.extends.map(str_of),
        limits,
        default,
        approval_timeout,
        vars,
        read,
        write,
        exec,
        rules,
    })
}

fn check_version(
    src: &Arc<Source>,
    version: Option<&Spanned<toml::Value>>,
) -> Result<(), PolicyError> {
    match version {
        None => Err(src
            .pos(0..0)
            .error("missing `version = 1` (the policy schema version) at the top of the file")),
        Some(v) if v.get_ref().as_integer() == Some(1) => Ok(()),
        Some(v) => Err(src.pos(v.span()).error(format!(
            "unsupported policy version {}, expected `version = 1`",
            v.get_ref()
        ))),
    }
}

fn layer_rule(src: &Arc<Source>, header: Pos, raw: RawRule) -> Result<LayerRule, PolicyError> {
    let str_of = |s: Spanned<String>| Str::new(src, s);
    let decision = match raw.decision {
        Some(d) => decision(&str_of(d))?,
        None => {
            return Err(header.error(
                "rule has no `decision`, expected decision = \"allow\", \"deny\" or \"ask\"",
            ))
        }
    };
    // The targets in the order written, to name the second one when there are several.
    let mut targets: Vec<(&str, Spanned<String>)> = [
        ("file", raw.file),
        ("command", raw.command),
        ("network", raw.network),
    ]
    .into_iter()
    .filter_map(|(key, v)| v.map(|v| (key, v)))
    .collect();
    targets.sort_by_key(|(_, v)| v.span().start);
    if targets.len() > 1 {
        let (first, _) = targets[0];
        let (second, ref value) = targets[1];
        return Err(src.pos(value.span()).error(format!(
            "rule has both `{first}` and `{second}`, expected exactly one of file, command or network per rule"
        )));
    }
    let Some((key, value)) = targets.pop() else {
        return Err(
            header.error("rule has none of `file`, `command` or `network`, expected exactly one")
        );
    };
    if key != "command" {
        if let Some(args) = &raw.args {
            return Err(src
                .pos(args.span())
                .error("`args` is only allowed in a rule with `command`"));
        }
    }
    if key != "file" {
        if let Some(access) = &raw.access {
            return Err(src
                .pos(access.span())
                .error("`access` is only allowed in a rule with `file`"));
        }
    }
    let target = match key {
        "file" => LayerTarget::File {
            pattern: str_of(value),
            access: match raw.access {
                Some(list) => access(src, list)?,
                None => Access::ALL,
            },
        },
        "command" => LayerTarget::Command {
            program: str_of(value),
            args: raw.args.map(str_of),
        },
        _ => LayerTarget::Network {
            spec: str_of(value),
        },
    };
    Ok(LayerRule {
        decision,
        header,
        target,
        reason: raw.reason,
    })
}

/// One entry of `[network] allow`/`deny` as a rule; without a port it means any port.
fn shorthand_rule(mut spec: Str, decision: Decision) -> LayerRule {
    let trimmed = spec.value.trim();
    let has_port = match trimmed.rfind(']') {
        Some(close) => trimmed[close..].contains(':'),
        // A bare IPv6 address is left alone: the spec parser says to bracket it.
        None => trimmed.contains(':'),
    };
    if !has_port && trimmed != "*" {
        spec.value = format!("{trimmed}:*");
    }
    LayerRule {
        decision,
        header: spec.pos.clone(),
        target: LayerTarget::Network { spec },
        reason: None,
    }
}

fn decision(s: &Str) -> Result<Decision, PolicyError> {
    s.value
        .parse()
        .map_err(|e: crate::ParseDecisionError| s.pos.error(e.to_string()))
}

fn access(src: &Arc<Source>, list: Spanned<Vec<Spanned<String>>>) -> Result<Access, PolicyError> {
    let span = list.span();
    let mut access = Access::default();
    for kind in list.into_inner() {
        let kind = Str::new(src, kind);
        match kind.value.as_str() {
            "read" => access.read = true,
            "write" => access.write = true,
            "exec" => access.exec = true,
            other => {
                return Err(kind.pos.error(format!(
                    "unknown access kind `{other}`, expected read, write or exec"
                )))
            }
        }
    }
    if access.is_empty() {
        return Err(src
            .pos(span)
            .error("empty `access`, expected one or more of read, write, exec (or leave it out for all three)"));
    }
    Ok(access)
}

fn duration(s: &Str) -> Result<Duration, PolicyError> {
    match humantime::parse_duration(&s.value) {
        Ok(d) if d.is_zero() => Err(s.pos.error(format!(
            "approval_timeout `{}` must be greater than zero",
            s.value
        ))),
        Ok(d) => Ok(d),
        Err(e) => Err(s.pos.error(format!(
            "bad duration `{}` ({e}), expected e.g. \"120s\", \"2m\" or \"1h 30m\"",
            s.value
        ))),
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`
pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
