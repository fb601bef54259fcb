//! Where the agent's `read` trees are enforced: by its mount view, or by Landlock.
//!
//! Landlock checks a read on every open: it walks the opened file's path up to the root,
//! looking for a rule at each step. On an open-heavy workload that walk costs more than the
//! open itself (+48% on an open+close of a workspace file here). When the view already holds
//! nothing but the read trees, there is nothing for Landlock to refuse, and reads cost what
//! they cost bare. That is what bwrap does, and what [`plan`] builds when the policy allows it:
//! the agent's `/` is a read-only tmpfs holding
//! - each read tree, bound at its own path (read-only, or read-write where a write tree covers
//!   it), with its submounts;
//! - each write tree inside a read tree, bound read-write on top of it;
//! - the directories on the way to them, and the symlinks found in those directories (`/bin`
//!   → `usr/bin`, `/lib64` → `usr/lib64`...), so that paths work as on the host;
//! - the sandbox's own `/proc` and `/dev`.
//!
//! Everything else does not exist for the agent (ENOENT, where Landlock said EACCES). Landlock
//! still checks every write and exec, on the same trees as before; it no longer handles
//! `ReadFile`, `ReadDir` and `Truncate` (truncating needs a writable mount: only the write
//! trees are).
//!
//! The view is not used (Landlock checks reads, on the host's tree made read-only, as before)
//! when a write tree lies outside every read tree (the view can't show it without making it
//! readable), when `/proc` or `/dev` is not readable, when the view is not read-only (see
//! `Plan::writable_view`), or on a kernel without `mount_setattr` (Linux < 5.12). A read tree
//! of `/` leaves the host's tree as it is, and Landlock handles no read either.
//!
//! An exec tree outside every read tree is not in the view. Landlock gave it little more: an
//! `execve` opens the file for reading too (Landlock asks `ReadFile` of it as well as
//! `Execute`), and the dynamic loader and the libraries it maps are read, so only a static
//! binary could have run from there.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// How the agent's reads are enforced.
#[derive(Debug, Clone)]
pub enum Reads {
    /// By Landlock, in the host's tree (why the view can't do it).
    Landlock(String),
    /// By the mount view: only the read trees exist.
    View(View),
    /// A read tree covers `/`: every file is readable, nothing to check.
    All,
}

impl Reads {
    /// Whether Landlock must handle reads.
    pub fn by_landlock(&self) -> bool {
        matches!(self, Reads::Landlock(_))
    }
}

/// One tree bound into the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Its path, absolute, on the host and in the view alike.
    pub path: PathBuf,
    pub writable: bool,
    pub is_dir: bool,
    /// Its mount point is made in the view's tmpfs (false: it lies inside a tree bound before
    /// it, which already has it).
    pub in_skeleton: bool,
}

/// The agent's root: a tmpfs with these directories, symlinks and binds (paths absolute).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Directories made in the tmpfs, parents first.
    pub dirs: Vec<PathBuf>,
    /// Symlinks made in the tmpfs: (path, target as on the host).
    pub links: Vec<(PathBuf, PathBuf)>,
    /// Trees bound, parents first.
    pub binds: Vec<Bind>,
}

/// Where the sandbox makes its own mounts, whatever the trees say.
const OWN: [&str; 2] = ["/proc", "/dev"];

/// Decide how reads are enforced for these trees (canonical, minimal covers), reading the host
/// for what the view needs (which trees exist, the symlinks on their way). `view_read_only`:
/// the view is read-only outside the write trees (and the kernel can make it so).
pub fn plan(read: &[PathBuf], write: &[PathBuf], view_read_only: bool) -> Reads {
    match why_landlock(read, write, view_read_only) {
        Some(why) => Reads::Landlock(why),
        None if read.iter().any(|r| r == Path::new("/")) => Reads::All,
        None => Reads::View(view(read, write, |p| {
            std::fs::metadata(p).ok().map(|m| m.is_dir())
        })),
    }
}

/// Why Landlock must check reads for these trees (None: the view, or nothing, does).
fn why_landlock(read: &[PathBuf], write: &[PathBuf], view_read_only: bool) -> Option<String> {
    if !view_read_only {
        return Some("the view is not read-only outside the write trees".into());
    }
    if read.iter().any(|r| r == Path::new("/")) {
        return None;
    }
    if let Some(own) = OWN.iter().find(|o| !read.iter().any(|r| r == Path::new(o))) {
        return Some(format!("{own} is not a read tree"));
    }
    let covered = |p: &Path| read.iter().any(|r| p.starts_with(r));
    write
        .iter()
        .find(|w| !covered(w))
        .map(|w| format!("the write tree {} is outside the read trees", w.display()))
}

/// Whether a session of `plan` on this host would have its reads enforced by the mount view
/// (for `policy explain` and `doctor`; `run` decides with [`plan`] itself, which also reads
/// the host for the view).
pub fn reads_by_view(plan: &agent_supervisor_policy::Plan) -> bool {
    let read_only = plan.writable_view.is_none() && crate::sys::has_mount_setattr();
    why_landlock(&plan.landlock_read, &plan.landlock_write, read_only).is_none()
}

/// The view of these trees; `kind` says whether a path is a directory (None: it doesn't exist).
fn view(read: &[PathBuf], write: &[PathBuf], kind: impl Fn(&Path) -> Option<bool>) -> View {
    let own = |p: &Path| OWN.iter().any(|o| p.starts_with(o));
    let mut paths: Vec<&PathBuf> = read
        .iter()
        .chain(write.iter().filter(|w| !read.contains(w)))
        .filter(|p| !own(p))
        .collect();
    // Parents before what lies inside them (paths compare component by component).
    paths.sort();
    paths.dedup();
    let mut binds: Vec<Bind> = Vec::new();
    for path in paths {
        let Some(is_dir) = kind(path) else { continue };
        let in_skeleton = read.contains(path);
        if !in_skeleton && !binds.iter().any(|b| path.starts_with(&b.path)) {
            // Inside a read tree that doesn't exist (nor, then, does this).
            continue;
        }
        binds.push(Bind {
            path: path.clone(),
            writable: write.iter().any(|w| path.starts_with(w)),
            is_dir,
            in_skeleton,
        });
    }
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for b in binds.iter().filter(|b| b.in_skeleton) {
        for a in b.path.ancestors().skip(1) {
            if a != Path::new("/") {
                dirs.insert(a.to_path_buf());
            }
        }
    }
    dirs.extend(OWN.iter().map(PathBuf::from));
    // Parents first: a set of paths is ordered component by component.
    let dirs: Vec<PathBuf> = dirs.into_iter().collect();
    let taken = |p: &Path| dirs.iter().any(|d| d == p) || binds.iter().any(|b| b.path == p);
    let mut links = Vec::new();
    for dir in std::iter::once(Path::new("/")).chain(dirs.iter().map(PathBuf::as_path)) {
        if OWN.iter().any(|o| Path::new(o) == dir) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_symlink()) {
                continue;
            }
            let path = entry.path();
            if taken(&path) {
                continue;
            }
            if let Ok(target) = std::fs::read_link(&path) {
                links.push((path, target));
            }
        }
    }
    links.sort();
    View { dirs, links, binds }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn paths(v: &[&str]) -> Vec<PathBuf> {
        v.iter().map(|s| p(s)).collect()
    }

    #[test]
    fn reads_stay_with_landlock_when_the_view_cannot_show_only_them() {
        let read = paths(&["/usr", "/etc", "/proc", "/dev", "/work/ws"]);
        match plan(&read, &paths(&["/work/ws", "/srv/out"]), true) {
            Reads::Landlock(w) => assert!(w.contains("write tree /srv/out"), "{w}"),
            other => panic!("{other:?}"),
        }
        let no_proc = paths(&["/usr", "/dev", "/work/ws"]);
        assert!(matches!(plan(&no_proc, &[], true), Reads::Landlock(w) if w.contains("/proc")));
        assert!(matches!(plan(&read, &[], false), Reads::Landlock(_)));
        assert!(matches!(plan(&paths(&["/"]), &[], true), Reads::All));
        assert!(matches!(
            plan(&read, &paths(&["/work/ws", "/dev/null"]), true),
            Reads::View(_)
        ));
        assert!(!Reads::All.by_landlock());
    }

    #[test]
    fn the_view_binds_each_tree_once_parents_first_and_writable_where_a_write_tree_covers_it() {
        let read = paths(&[
            "/usr", "/proc", "/dev", "/home/me", "/work/ws", "/etc", "/gone",
        ]);
        let write = paths(&["/work/ws", "/home/me/.cache", "/dev/null", "/home/me/gone"]);
        let v = view(&read, &write, |path| match path.to_str().unwrap() {
            "/gone" | "/home/me/gone" => None,
            "/etc" => Some(true),
            _ => Some(true),
        });
        let binds: Vec<(&str, bool, bool)> = v
            .binds
            .iter()
            .map(|b| (b.path.to_str().unwrap(), b.writable, b.in_skeleton))
            .collect();
        assert_eq!(
            binds,
            [
                ("/etc", false, true),
                ("/home/me", false, true),
                ("/home/me/.cache", true, false),
                ("/usr", false, true),
                ("/work/ws", true, true),
            ]
        );
        assert_eq!(v.dirs, paths(&["/dev", "/home", "/proc", "/work"]));
    }

    #[test]
    fn a_write_tree_inside_a_read_tree_that_does_not_exist_is_not_bound() {
        let read = paths(&["/proc", "/dev", "/nothere"]);
        let write = paths(&["/nothere/sub"]);
        let v = view(&read, &write, |path| {
            (!path.starts_with("/nothere")).then_some(true)
        });
        assert!(v.binds.is_empty(), "{v:?}");
        assert_eq!(v.dirs, paths(&["/dev", "/proc"]));
    }

    #[test]
    fn the_symlinks_of_the_root_are_made_in_the_view() {
        // This host's own root: whatever symlinks it has (/bin, /lib... on merged-/usr
        // systems) are in the view, with their targets.
        let read = paths(&["/usr", "/proc", "/dev"]);
        let v = view(&read, &[], |_| Some(true));
        let expected: Vec<(PathBuf, PathBuf)> = std::fs::read_dir("/")
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_symlink())
            .map(|e| (e.path(), std::fs::read_link(e.path()).unwrap()))
            .collect();
        let mut expected = expected;
        expected.sort();
        assert_eq!(v.links, expected);
    }
}
