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

use agent_supervisor_policy::{Mask, MaskKind, Plan, Policy};

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
    // Rules that walk the same root share one walk (the built-in policies have four
    // `{workspace}/**/...` rules): each entry is tested against all of them.
    let mut walks: BTreeMap<&Path, Vec<&Mask>> = BTreeMap::new();
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
            walks.entry(&mask.root).or_default().push(mask);
        }
    }
    for (root, rules) in walks {
        walk(root, &mut |p, is_dir| {
            let mut descend = true;
            for mask in rules.iter().filter(|m| policy.file_rule_matches(m.rule, p)) {
                add(MaskMount {
                    path: p.to_path_buf(),
                    kind: mask.kind,
                    is_dir,
                    rule: Some(mask.rule),
                });
                // Nothing below a hidden directory is reachable: don't descend.
                descend &= mask.kind != MaskKind::Hide;
            }
            descend
        });
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

/// The masks a read-only view still needs (`writable`: the only trees it leaves writable): a
/// read-only mask elsewhere would bind read-only what the view already made read-only (or
/// left out), one mount for nothing on every session's start.
pub fn needed_in_read_only_view(masks: Vec<MaskMount>, writable: &[PathBuf]) -> Vec<MaskMount> {
    masks
        .into_iter()
        .filter(|m| m.kind != MaskKind::ReadOnly || writable.iter().any(|w| m.path.starts_with(w)))
        .collect()
}

/// Two masks on one path: equal kinds stay; read-only + noexec, or anything with hide, hides.
fn combine(a: MaskKind, b: MaskKind) -> MaskKind {
    if a == b {
        a
    } else {
        MaskKind::Hide
    }
}

/// Walk below `root` without following symlinks nor entering pseudo filesystems; `visit`
/// returns whether to descend into a directory. One thread: `ignore`'s parallel walker was
/// tried, and its cost per entry made a flat 50,000-file tree 1.7x slower to walk on 2 CPUs
/// (deep trees 1.3x faster).
fn walk(root: &Path, visit: &mut dyn FnMut(&Path, bool) -> bool) {
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if no_walk(&dir) {
            continue;
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_symlink() {
                continue;
            }
            let p = e.path();
            if visit(&p, ft.is_dir()) && ft.is_dir() {
                dirs.push(p);
            }
        }
    }
}

fn no_walk(dir: &Path) -> bool {
    NO_WALK.iter().any(|p| dir == Path::new(p))
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

    /// A workspace of 3,000 entries with three deny rules on one root (one walk): every match
    /// is found at every depth,
    /// nothing below a hidden directory or behind a symlink is, and a match both rules hit gets
    /// one mask of the stricter kind.
    #[test]
    fn one_walk_finds_every_match_of_every_rule_on_its_root() {
        let w = std::env::temp_dir().join(format!("as-masks-walk-{}", std::process::id()));
        let _ = fs::remove_dir_all(&w);
        let mut want: Vec<(PathBuf, MaskKind)> = Vec::new();
        for a in 0..40 {
            for b in 0..40 {
                let d = w.join(format!("a{a}/b{b}"));
                fs::create_dir_all(&d).unwrap();
                fs::write(d.join("main.rs"), "").unwrap();
                if (a * 40 + b) % 97 == 0 {
                    fs::write(d.join(".env"), "").unwrap();
                    want.push((d.join(".env"), MaskKind::Hide));
                }
                if (a * 40 + b) % 131 == 0 {
                    fs::write(d.join("server.key"), "").unwrap();
                    want.push((d.join("server.key"), MaskKind::ReadOnly));
                }
            }
        }
        // Both rules: hidden (read-only + hide).
        fs::write(w.join("a39/b39/both.key"), "").unwrap();
        // A hidden directory: its own mask only.
        fs::create_dir_all(w.join("a7/.env/deep")).unwrap();
        fs::write(w.join("a7/.env/deep/x.key"), "").unwrap();
        want.push((w.join("a7/.env"), MaskKind::Hide));
        // Behind a symlink: not followed.
        fs::create_dir_all(w.join("elsewhere")).unwrap();
        fs::write(w.join("elsewhere/.env"), "").unwrap();
        want.push((w.join("elsewhere/.env"), MaskKind::Hide));
        std::os::unix::fs::symlink(w.join("elsewhere"), w.join("a3/link")).unwrap();
        let ws = w.display();
        let text = format!(
            "version = 1\nextends = \"none\"\n[filesystem]\nread = [\"{ws}\"]\n\
             [[rule]]\ndecision = \"deny\"\nfile = \"{ws}/**/.env\"\naccess = [\"read\", \"write\", \"exec\"]\n\
             [[rule]]\ndecision = \"deny\"\nfile = \"{ws}/**/*.key\"\naccess = [\"write\"]\n\
             [[rule]]\ndecision = \"deny\"\nfile = \"{ws}/**/both.*\"\naccess = [\"read\"]\n"
        );
        let vars = agent_supervisor_policy::Vars {
            workspace: w.clone(),
            home: w.clone(),
            tmp: w.clone(),
        };
        let policy = Policy::parse("test.toml", &text, &w, &vars).unwrap();
        let plan = policy.plan();
        assert!(plan.masks.iter().all(|m| m.root == w && !m.whole_root));
        want.push((w.join("a39/b39/both.key"), MaskKind::Hide));
        want.sort_by(|a, b| a.0.cmp(&b.0));
        let got = plan_masks(&policy, &plan, &[]);
        let _ = fs::remove_dir_all(&w);
        let mut got: Vec<(PathBuf, MaskKind)> = got.into_iter().map(|m| (m.path, m.kind)).collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(
            want.len() > 30,
            "the tree has matches in both parts of the walk"
        );
        assert_eq!(got, want);
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

    #[test]
    fn a_read_only_view_needs_read_only_masks_only_inside_its_writable_trees() {
        let masks = vec![
            mask("/etc/agent-supervisor", MaskKind::ReadOnly, true),
            mask("/home/u/.config/agent-supervisor", MaskKind::ReadOnly, true),
            mask("/home/u/ws/.agent-supervisor", MaskKind::ReadOnly, true),
            mask("/home/u/ws", MaskKind::ReadOnly, true),
            mask("/home/u/.ssh", MaskKind::Hide, true),
            mask("/tmp", MaskKind::NoExec, true),
        ];
        let writable = [PathBuf::from("/home/u/ws"), PathBuf::from("/tmp")];
        let kept: Vec<String> = needed_in_read_only_view(masks, &writable)
            .iter()
            .map(|m| m.path.display().to_string())
            .collect();
        assert_eq!(
            kept,
            [
                "/home/u/ws/.agent-supervisor",
                "/home/u/ws",
                "/home/u/.ssh",
                "/tmp"
            ]
        );
    }
}
