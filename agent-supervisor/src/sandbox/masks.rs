//! Mount masks: kernel-enforced denials for paths *inside* allowed trees.
//!
//! Landlock can only grant, so a denied path under a readable tree (`{workspace}/**/.env`,
//! `~/.ssh`) is hidden by a bind mount in the agent's private mount namespace: an empty,
//! mode-000 file or directory from a detached tmpfs (deny read), the path itself bound
//! read-only (deny write) or `noexec` (deny exec). The matches are found by walking each
//! rule's literal prefix before the agent starts; the walk runs in the supervisor.
//! Writable trees that are not executable are bound `noexec`, so nothing written there can
//! run, not even through `ld.so` or an executable mapping.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use agent_supervisor_policy::{MaskKind, Plan, Policy};

/// One mount to place before the agent starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskMount {
    pub path: PathBuf,
    pub kind: MaskKind,
    pub is_dir: bool,
    /// Index of the rule it enforces (None: a `noexec` tree).
    pub rule: Option<usize>,
}

/// Pseudo filesystems a pattern walk never descends into.
const NO_WALK: &[&str] = &["/proc", "/sys", "/dev", "/run"];

/// Compute every mask mount for `policy` (walks the file system).
pub fn plan_masks(policy: &Policy, plan: &Plan, noexec_trees: &[PathBuf]) -> Vec<MaskMount> {
    // Keyed by path so a path matched by several rules gets one mount of the combined kind.
    let mut out: BTreeMap<PathBuf, MaskMount> = BTreeMap::new();
    let mut add = |m: MaskMount| match out.get_mut(&m.path) {
        Some(old) => old.kind = combine(old.kind, m.kind),
        None => {
            out.insert(m.path.clone(), m);
        }
    };
    for tree in noexec_trees {
        if let Ok(md) = fs::metadata(tree) {
            add(MaskMount {
                path: tree.clone(),
                kind: MaskKind::NoExec,
                is_dir: md.is_dir(),
                rule: None,
            });
        }
    }
    for mask in &plan.masks {
        let Ok(md) = fs::symlink_metadata(&mask.root) else {
            continue;
        };
        if md.file_type().is_symlink() {
            continue;
        }
        if mask.whole_root {
            add(MaskMount {
                path: mask.root.clone(),
                kind: mask.kind,
                is_dir: md.is_dir(),
                rule: Some(mask.rule),
            });
            continue;
        }
        if policy.file_rule_matches(mask.rule, &mask.root) {
            add(MaskMount {
                path: mask.root.clone(),
                kind: mask.kind,
                is_dir: md.is_dir(),
                rule: Some(mask.rule),
            });
            if mask.kind == MaskKind::Hide {
                continue;
            }
        }
        if md.is_dir() {
            walk(&mask.root, &mut |p, is_dir| {
                if policy.file_rule_matches(mask.rule, p) {
                    add(MaskMount {
                        path: p.to_path_buf(),
                        kind: mask.kind,
                        is_dir,
                        rule: Some(mask.rule),
                    });
                    // Nothing below a hidden directory is reachable: don't descend.
                    return mask.kind != MaskKind::Hide;
                }
                true
            });
        }
    }
    // Parents before children, so a child mask lands on top of its parent's mount.
    let mut v: Vec<MaskMount> = out.into_values().collect();
    v.sort_by_key(|m| m.path.components().count());
    v
}

/// Two masks on one path: equal kinds stay; read-only + noexec, or anything with hide, hides.
fn combine(a: MaskKind, b: MaskKind) -> MaskKind {
    if a == b {
        a
    } else {
        MaskKind::Hide
    }
}

/// Depth-first walk that does not follow symlinks nor enter pseudo filesystems.
/// `visit` returns whether to descend into a directory.
fn walk(dir: &Path, visit: &mut dyn FnMut(&Path, bool) -> bool) {
    if NO_WALK.iter().any(|p| dir == Path::new(p)) {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_symlink() {
            continue;
        }
        let p = e.path();
        let is_dir = ft.is_dir();
        if visit(&p, is_dir) && is_dir {
            walk(&p, visit);
        }
    }
}
