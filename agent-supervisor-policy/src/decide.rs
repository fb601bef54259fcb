//! [`Policy::decide`]: which rule, tree or default decides a request.
//!
//! The order of precedence is documented in the crate docs ("Deciding"); this module is
//! its literal implementation and must stay free of I/O.

use std::net::IpAddr;
use std::path::Path;

use crate::matcher::RuleMatcher;
use crate::paths::{split_pattern, tree_holding, under_any};
use crate::{Access, DecidedBy, Decision, NameVerdict, Policy, Request, Target, Verdict};

pub(crate) fn decide(policy: &Policy, request: &Request<'_>) -> Verdict {
    match *request {
        Request::Exec {
            path,
            invoked,
            argv,
        } => decide_exec(policy, path, invoked, argv),
        Request::Open { path, access } => decide_open(policy, path, access),
        Request::Connect { ip, port, host } => decide_connect(policy, ip, port, host),
    }
}

/// The winner among matching rules: the strictest specific rule, else the strictest
/// catch-all; the first of equally strict rules.
fn pick(policy: &Policy, matching: impl Iterator<Item = usize>) -> Option<usize> {
    let (mut specific, mut catch_all): (Option<usize>, Option<usize>) = (None, None);
    for i in matching {
        let slot = if policy.rules[i].catch_all {
            &mut catch_all
        } else {
            &mut specific
        };
        if slot.is_none_or(|best| policy.rules[i].decision > policy.rules[best].decision) {
            *slot = Some(i);
        }
    }
    specific.or(catch_all)
}

fn by_rule(policy: &Policy, i: usize) -> Verdict {
    let rule = &policy.rules[i];
    Verdict {
        decision: rule.decision,
        decided_by: DecidedBy::Rule(i),
        reason: Some(
            rule.reason
                .clone()
                .unwrap_or_else(|| policy.describe_rule(i)),
        ),
    }
}

fn by_filesystem(decision: Decision, reason: String) -> Verdict {
    Verdict {
        decision,
        decided_by: DecidedBy::Filesystem,
        reason: Some(reason),
    }
}

fn by_default(policy: &Policy, what: &str) -> Verdict {
    Verdict {
        decision: policy.default,
        decided_by: DecidedBy::Default,
        reason: Some(format!(
            "no rule matched {what}; default = \"{}\"",
            policy.default
        )),
    }
}

fn kind_name(kind: Access) -> &'static str {
    if kind.read {
        "read"
    } else if kind.write {
        "write"
    } else {
        "exec"
    }
}

fn trees_of(policy: &Policy, kind: Access) -> &[std::path::PathBuf] {
    if kind.read {
        &policy.filesystem.read
    } else if kind.write {
        &policy.filesystem.write
    } else {
        &policy.filesystem.exec
    }
}

fn decide_open(policy: &Policy, path: &Path, access: Access) -> Verdict {
    let mut verdict: Option<Verdict> = None;
    for kind in access.kinds() {
        let v = decide_open_kind(policy, path, kind);
        if verdict
            .as_ref()
            .is_none_or(|best| v.decision > best.decision)
        {
            verdict = Some(v);
        }
    }
    verdict
        .unwrap_or_else(|| by_filesystem(Decision::Allow, "no access kind requested".to_string()))
}

fn decide_open_kind(policy: &Policy, path: &Path, kind: Access) -> Verdict {
    let matching = policy
        .rules
        .iter()
        .zip(&policy.matchers)
        .enumerate()
        .filter_map(|(i, (rule, m))| {
            let hit = match (&rule.target, m) {
                (Target::File { access, .. }, RuleMatcher::File(m)) => {
                    access.contains(kind) && m.is_match(path)
                }
                _ => false,
            };
            hit.then_some(i)
        });
    if let Some(i) = pick(policy, matching) {
        return by_rule(policy, i);
    }
    let name = kind_name(kind);
    match tree_holding(path, trees_of(policy, kind)) {
        Some(tree) => by_filesystem(
            Decision::Allow,
            format!("inside the [filesystem] {name} tree {}", tree.display()),
        ),
        None => by_filesystem(
            Decision::Deny,
            format!("outside the [filesystem] {name} trees"),
        ),
    }
}

fn decide_exec(policy: &Policy, path: &Path, invoked: Option<&Path>, argv: &[String]) -> Verdict {
    let args = argv.get(1..).unwrap_or_default().join(" ");
    // An allow rule may match through the invoked path only if the agent could not have made
    // it (its directory is not writable), else a symlink would borrow the rule.
    let invoked_trusted = invoked.is_some_and(|inv| {
        !inv.parent()
            .is_some_and(|dir| under_any(dir, &policy.filesystem.write))
    });
    let matching = policy
        .rules
        .iter()
        .zip(&policy.matchers)
        .enumerate()
        .filter_map(|(i, (rule, m))| {
            let via_invoked =
                invoked.filter(|_| rule.decision != Decision::Allow || invoked_trusted);
            let candidates = std::iter::once(path).chain(via_invoked);
            let hit = match (&rule.target, m) {
                (Target::Command { .. }, RuleMatcher::Command(c)) => {
                    candidates.into_iter().any(|p| c.program_matches(p)) && c.args_match(&args)
                }
                (Target::File { access, .. }, RuleMatcher::File(m)) => {
                    access.exec && candidates.into_iter().any(|p| m.is_match(p))
                }
                _ => false,
            };
            hit.then_some(i)
        });
    let winner = pick(policy, matching);
    let landlock_refuses = || {
        by_filesystem(
            Decision::Deny,
            format!(
                "{} is outside the [filesystem] exec trees (Landlock refuses to execute it)",
                path.display()
            ),
        )
    };
    match winner {
        Some(i) if policy.rules[i].decision == Decision::Deny => by_rule(policy, i),
        Some(i) if exec_granted(policy, path) => by_rule(policy, i),
        Some(_) => landlock_refuses(),
        None if under_any(path, &policy.filesystem.exec) => by_default(policy, "this program"),
        None => landlock_refuses(),
    }
}

/// Would Landlock let `path` be executed? The exec trees plus the literal prefixes of
/// absolute allow/ask rules that grant exec (see `plan`).
pub(crate) fn exec_granted(policy: &Policy, path: &Path) -> bool {
    under_any(path, &policy.filesystem.exec)
        || policy
            .rules
            .iter()
            .filter_map(exec_grant_root)
            .any(|root| path.starts_with(root))
}

/// The Landlock exec grant a rule adds, if any.
pub(crate) fn exec_grant_root(rule: &crate::Rule) -> Option<std::path::PathBuf> {
    if rule.decision == Decision::Deny {
        return None;
    }
    match &rule.target {
        Target::Command { program, .. } if program.starts_with('/') => {
            Some(split_pattern(program).0)
        }
        Target::File { pattern, access } if access.exec => {
            crate::plan::grant_root(pattern, rule.catch_all)
        }
        _ => None,
    }
}

/// See [`Policy::decide_name`].
pub(crate) fn decide_name(policy: &Policy, name: &str) -> NameVerdict {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let matching: Vec<usize> = policy
        .matchers
        .iter()
        .enumerate()
        .filter(|(_, m)| matches!(m, RuleMatcher::Network(n) if n.is_name_match(&name)))
        .map(|(i, _)| i)
        .collect();
    let verdict = match pick(policy, matching.iter().copied()) {
        Some(i) => by_rule(policy, i),
        None => by_default(policy, "this host name"),
    };
    // The ports of the host-name rules that decide as the winner does: what an answer's
    // addresses are good for in the kernel maps.
    let mut ports = Vec::new();
    if !matches!(verdict.decided_by, DecidedBy::Rule(i) if policy.rules[i].catch_all) {
        for &i in &matching {
            if let RuleMatcher::Network(n) = &policy.matchers[i] {
                if n.is_host_name()
                    && !policy.rules[i].catch_all
                    && policy.rules[i].decision == verdict.decision
                    && !ports.contains(&n.port())
                {
                    ports.push(n.port());
                }
            }
        }
    }
    NameVerdict { verdict, ports }
}

fn decide_connect(policy: &Policy, ip: IpAddr, port: u16, host: Option<&str>) -> Verdict {
    let matching = policy
        .rules
        .iter()
        .zip(&policy.matchers)
        .enumerate()
        .filter_map(|(i, (_, m))| {
            let hit = matches!(m, RuleMatcher::Network(n) if n.is_match(ip, port, host));
            hit.then_some(i)
        });
    match pick(policy, matching) {
        Some(i) => by_rule(policy, i),
        None => by_default(policy, "this connection"),
    }
}
