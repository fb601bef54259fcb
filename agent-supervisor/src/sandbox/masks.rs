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
    compose(out.into_values().collect())
}

/// Put masks from several sources (the policy's rules, protected paths, the session's own
/// files) into an order that mounts whatever order the rules were written in:
///
/// - masks on one path become one mask of the combined kind ([`combine`]);
/// - a mask under a hidden directory is dropped: the empty directory bound over its
///   ancestor already denies everything below, and the path no longer exists once that
///   ancestor is mounted (mounting it would fail with `ENOENT`);
/// - a mask under a read-only or `noexec` directory is kept (it denies more) and mounted
///   after it: parents before children, so a child lands on top of its parent's mount.
pub fn compose(masks: Vec<MaskMount>) -> Vec<MaskMount> {
    let mut by_path: BTreeMap<PathBuf, MaskMount> = BTreeMap::new();
    for m in masks {
        match by_path.get_mut(&m.path) {
            Some(old) => {
                old.kind = combine(old.kind, m.kind);
                old.rule = old.rule.or(m.rule);
            }
            None => {
                by_path.insert(m.path.clone(), m);
            }
        }
    }
    let hidden: Vec<PathBuf> = by_path
        .values()
        .filter(|m| m.kind == MaskKind::Hide && m.is_dir)
        .map(|m| m.path.clone())
        .collect();
    let mut v: Vec<MaskMount> = by_path
        .into_values()
        .filter(|m| !hidden.iter().any(|h| m.path != *h && m.path.starts_with(h)))
        .collect();
    // Stable: paths of one depth stay in path order.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(path: &str, kind: MaskKind, is_dir: bool) -> MaskMount {
        MaskMount {
            path: PathBuf::from(path),
            kind,
            is_dir,
            rule: Some(0),
        }
    }

    fn paths(v: &[MaskMount]) -> Vec<(&str, MaskKind)> {
        v.iter()
            .map(|m| (m.path.to_str().unwrap(), m.kind))
            .collect()
    }

    #[test]
    fn a_mask_under_a_hidden_directory_is_dropped_whatever_the_order() {
        let dir = mask("/srv/x/secret", MaskKind::Hide, true);
        let file = mask("/srv/x/secret/token.txt", MaskKind::Hide, false);
        let nested = mask("/srv/x/secret/inner", MaskKind::Hide, true);
        let ro = mask("/srv/x/secret/inner/ro", MaskKind::ReadOnly, false);
        let sibling = mask("/srv/x/secretive", MaskKind::Hide, false);
        let all = [dir, file, nested, ro, sibling];
        // Every rotation and its reverse: the result is the same.
        for start in 0..all.len() {
            let mut order: Vec<MaskMount> =
                all[start..].iter().chain(&all[..start]).cloned().collect();
            for _ in 0..2 {
                assert_eq!(
                    paths(&compose(order.clone())),
                    vec![
                        ("/srv/x/secret", MaskKind::Hide),
                        ("/srv/x/secretive", MaskKind::Hide)
                    ],
                    "{order:?}"
                );
                order.reverse();
            }
        }
    }

    #[test]
    fn a_stricter_mask_under_a_read_only_or_noexec_directory_is_kept_and_mounted_after_it() {
        let got = compose(vec![
            mask("/w/tmp/x/key", MaskKind::Hide, false),
            mask("/w/conf/secret", MaskKind::Hide, true),
            mask("/w/conf", MaskKind::ReadOnly, true),
            mask("/w/tmp", MaskKind::NoExec, true),
        ]);
        assert_eq!(
            paths(&got),
            vec![
                ("/w/conf", MaskKind::ReadOnly),
                ("/w/tmp", MaskKind::NoExec),
                ("/w/conf/secret", MaskKind::Hide),
                ("/w/tmp/x/key", MaskKind::Hide),
            ]
        );
    }

    #[test]
    fn masks_on_one_path_merge_into_the_stricter_kind() {
        let mut protected = mask("/p", MaskKind::ReadOnly, true);
        protected.rule = None;
        let got = compose(vec![
            protected,
            mask("/p", MaskKind::Hide, true),
            mask("/q", MaskKind::ReadOnly, false),
            mask("/q", MaskKind::ReadOnly, false),
            mask("/r", MaskKind::ReadOnly, true),
            mask("/r", MaskKind::NoExec, true),
        ]);
        assert_eq!(
            paths(&got),
            vec![
                ("/p", MaskKind::Hide),
                ("/q", MaskKind::ReadOnly),
                ("/r", MaskKind::Hide)
            ]
        );
        assert_eq!(got[0].rule, Some(0), "the rule behind the mask is kept");
    }
}
