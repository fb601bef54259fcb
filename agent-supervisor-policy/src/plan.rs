//! [`Policy::plan`]: which kernel mechanism carries which part of the policy.
//!
//! The cheap mechanisms are Landlock (grants per tree, checked by the kernel on every
//! access) and mount masks (bound over the matches of deny rules at session start). Where
//! they cannot be exact (`ask`, catch-all denials, allow rules whose grant would be wider than
//! their pattern or that a mask would hide) the plan asks for seccomp user notification so
//! the supervisor decides with [`Policy::decide`].

use std::path::{Path, PathBuf};

use crate::decide::exec_grant_root;
use crate::paths::{minimal_cover, split_pattern, under_any};
use crate::{Access, Decision, Mask, MaskKind, Plan, Policy, Target};

const NOTIFY_OPEN: &str =
    "seccomp user notification on open* (the supervisor opens the file itself and injects the fd)";
const NOTIFY_EXEC: &str = "seccomp user notification on execve/execveat (exec checked by the supervisor, backed by Landlock execute rights)";
const NOTIFY_NETWORK: &str = "seccomp user notification on connect/sendto/sendmsg (the supervisor connects the agent's socket itself)";

/// The Landlock grant of an allow/ask file rule: its literal prefix (`/` for the catch-all);
/// None for patterns that may match anywhere (`**/x`), which would need a grant of `/`.
pub(crate) fn grant_root(pattern: &str, catch_all: bool) -> Option<PathBuf> {
    if catch_all {
        Some(PathBuf::from("/"))
    } else if pattern.starts_with('/') {
        Some(split_pattern(pattern).0)
    } else {
        None
    }
}

fn mask_kind(access: Access) -> MaskKind {
    if access.read || (access.write && access.exec) {
        MaskKind::Hide
    } else if access.write {
        MaskKind::ReadOnly
    } else {
        MaskKind::NoExec
    }
}

/// The kinds a mask blocks.
fn blocked_by(kind: MaskKind) -> Access {
    match kind {
        MaskKind::Hide => Access::ALL,
        MaskKind::ReadOnly => Access::WRITE,
        MaskKind::NoExec => Access::EXEC,
    }
}

fn nested(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

pub(crate) fn plan(policy: &Policy) -> Plan {
    let fs = &policy.filesystem;
    let mut plan = Plan {
        notify_network: true,
        notify_exec: policy.default != Decision::Allow,
        ..Plan::default()
    };
    let (mut read, mut write, mut exec) = (fs.read.clone(), fs.write.clone(), fs.exec.clone());

    // Masks first: allow rules are checked against them below.
    for (i, rule) in policy.rules.iter().enumerate() {
        if let (Decision::Deny, false, Target::File { pattern, access }) =
            (rule.decision, rule.catch_all, &rule.target)
        {
            let (root, rest) = split_pattern(pattern);
            let whole_root = rest.is_empty() || rest == "**";
            plan.masks.push(Mask {
                rule: i,
                root,
                kind: mask_kind(*access),
                whole_root,
            });
        }
    }

    for (i, rule) in policy.rules.iter().enumerate() {
        let mechanism = match &rule.target {
            Target::File { pattern, access } => {
                // A specific deny is carried by its mask (Hide and NoExec both stop exec);
                // anything else about exec needs the supervisor on execve.
                let exec_checked =
                    access.exec && (rule.decision != Decision::Deny || rule.catch_all);
                plan.notify_exec |= exec_checked;
                let mut line = match (rule.decision, rule.catch_all) {
                    (Decision::Deny, false) => {
                        let mask = plan
                            .masks
                            .iter()
                            .find(|m| m.rule == i)
                            .expect("every specific file deny rule has a mask");
                        let what = match mask.kind {
                            MaskKind::Hide => "empty file/dir bound",
                            MaskKind::ReadOnly => "read-only bind",
                            MaskKind::NoExec => "noexec bind",
                        };
                        let scope = if mask.whole_root {
                            format!("{} masked whole", mask.root.display())
                        } else {
                            format!("walk of {}", mask.root.display())
                        };
                        format!(
                            "mount mask ({what} over matches present at start; {scope}) + Landlock"
                        )
                    }
                    (Decision::Deny, true) => {
                        plan.notify_open = true;
                        format!("{NOTIFY_OPEN}; refuses what no specific file rule matches")
                    }
                    (Decision::Ask, _) => {
                        plan.notify_open = true;
                        match grant_root(pattern, rule.catch_all) {
                            Some(root) => {
                                grant(&mut read, &mut write, &mut exec, *access, &root);
                                format!(
                                    "{NOTIFY_OPEN}, backed by a Landlock {access} grant on {}",
                                    root.display()
                                )
                            }
                            None => NOTIFY_OPEN.to_string(),
                        }
                    }
                    (Decision::Allow, _) => allow_file(
                        policy, &mut plan, i, pattern, *access, &mut read, &mut write, &mut exec,
                    ),
                };
                if exec_checked {
                    line.push_str("; exec also checked by the supervisor on execve/execveat");
                }
                line
            }
            Target::Command { .. } => {
                plan.notify_exec = true;
                if let Some(root) = exec_grant_root(rule) {
                    exec.push(root);
                }
                NOTIFY_EXEC.to_string()
            }
            Target::Network { .. } => NOTIFY_NETWORK.to_string(),
        };
        plan.mechanisms.push(mechanism);
    }
    plan.landlock_read = minimal_cover(read);
    plan.landlock_write = minimal_cover(write);
    plan.landlock_exec = minimal_cover(exec);
    plan.writable_view = writable_view(policy, &plan);
    plan
}

/// Why the agent's mount view can't be read-only outside the Landlock write grants (see
/// [`Plan::writable_view`]); None when it can.
fn writable_view(policy: &Policy, plan: &Plan) -> Option<String> {
    if plan.landlock_write.iter().any(|w| w == Path::new("/")) {
        return Some("a write grant covers / (nothing is outside the write trees)".to_string());
    }
    if !plan.notify_open {
        return None;
    }
    // The supervisor opens trapped files itself in the agent's root, so a write it approves
    // outside the grants would meet the read-only view.
    let anywhere = policy.rules.iter().position(|rule| match &rule.target {
        Target::File { pattern, access } => {
            access.write
                && rule.decision != Decision::Deny
                && grant_root(pattern, rule.catch_all).is_none()
        }
        _ => false,
    });
    match (anywhere, policy.default) {
        (Some(i), _) => Some(format!(
            "{} may grant a write anywhere, and the supervisor opens trapped files in the \
             agent's view",
            policy.describe_rule(i)
        )),
        (None, Decision::Deny) => None,
        (None, default) => Some(format!(
            "opens are trapped and the default ({default}) may grant a write outside the write \
             trees, and the supervisor opens trapped files in the agent's view"
        )),
    }
}

fn grant(
    read: &mut Vec<PathBuf>,
    write: &mut Vec<PathBuf>,
    exec: &mut Vec<PathBuf>,
    access: Access,
    root: &Path,
) {
    for (on, list) in [
        (access.read, read),
        (access.write, write),
        (access.exec, exec),
    ] {
        if on {
            list.push(root.to_path_buf());
        }
    }
}

/// Plan an allow file rule; may turn on `notify_open`.
#[allow(clippy::too_many_arguments)]
fn allow_file(
    policy: &Policy,
    plan: &mut Plan,
    i: usize,
    pattern: &str,
    access: Access,
    read: &mut Vec<PathBuf>,
    write: &mut Vec<PathBuf>,
    exec: &mut Vec<PathBuf>,
) -> String {
    let fs = &policy.filesystem;
    let Some(root) = grant_root(pattern, policy.rules[i].catch_all) else {
        // `**/x`: a Landlock grant would have to be `/`.
        plan.notify_open = true;
        return format!("{NOTIFY_OPEN}; matches anywhere, so no Landlock grant");
    };
    let (_, rest) = split_pattern(pattern);
    let exact_grant = rest.is_empty() || rest == "**" || policy.rules[i].catch_all;
    let inside_trees = access.kinds().all(|kind| {
        under_any(
            &root,
            if kind.read {
                &fs.read
            } else if kind.write {
                &fs.write
            } else {
                &fs.exec
            },
        )
    });
    // A mask of a deny rule that blocks more kinds than the rule denies (an empty file bound
    // over a read-denied path also stops writes) would hide what this rule allows.
    let fights_mask = plan.masks.iter().any(|mask| {
        let denied = match &policy.rules[mask.rule].target {
            Target::File { access, .. } => *access,
            _ => Access::default(),
        };
        let over_blocked = blocked_by(mask.kind);
        let extra = Access {
            read: over_blocked.read && !denied.read,
            write: over_blocked.write && !denied.write,
            exec: over_blocked.exec && !denied.exec,
        };
        nested(&root, &mask.root) && access.kinds().any(|k| extra.contains(k))
    });
    grant(read, write, exec, access, &root);
    if inside_trees && !fights_mask {
        return format!("Landlock ({access} already granted by [filesystem])");
    }
    if exact_grant && !fights_mask {
        return format!("Landlock {access} grant on {}", root.display());
    }
    plan.notify_open = true;
    let why = if fights_mask {
        "a mount mask would hide it"
    } else {
        "the grant is wider than the pattern"
    };
    format!(
        "{NOTIFY_OPEN} ({why}) + Landlock {access} grant on {}",
        root.display()
    )
}
