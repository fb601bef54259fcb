//! The BPF LSM programs: the kernel refuses the session's denied files and programs by inode.
//!
//! Mount masks hide a denied path and Landlock grants by tree, but both work on *paths*: a
//! hard link made before the session, an fd passed in and reopened through `/proc/self/fd`,
//! or `ld.so ./tool` (which maps a program without exec'ing it) reach the same file by
//! another way. Where BPF LSM is active (`bpf` in `/sys/kernel/security/lsm`), three
//! programs of the session's object check the *inode* the kernel really opens, executes or
//! maps executable against the session's `INODE_DENY` map:
//!
//! ```text
//!  policy deny rules ──▶ mask plan (sandbox::masks) ─┐
//!  deny command rules without args ──▶ PATH scan ────┴─▶ denied_files ──▶ INODE_DENY (dev, ino)
//!  session task: open / execve / mmap(PROT_EXEC) ──▶ lsm/file_open, bprm_check_security,
//!      mmap_file ──▶ inode denied? EACCES + PROC_EVENTS record : go on
//! ```
//!
//! `bprm_check_security` also refuses, when every exec of the session is decided
//! ([`ExecMode::Enforce`]), executing a file without a name (`i_nlink == 0`: memfd,
//! `O_TMPFILE`, a deleted file): nothing the supervisor approved can be one.
//!
//! The map is written before the agent starts and never changes: files created later are not
//! in it. So `lsm/file_open` also walks up the opened file's ancestors (`d_parent`, at most
//! `MAX_TREE_DEPTH` levels, offsets from the kernel's BTF in `TREE_OFFSETS`) and refuses a
//! file below a denied directory of `DENIED_TREES` (keyed by the session's cgroup id and the
//! directory's inode): a file the host creates in, or renames into, a denied directory after
//! the start is refused too, through whatever mount reaches it. Kernel: Linux 5.7+ with
//! `lsm=...,bpf` (see shared/KERNEL-FACTS.md: a BPF LSM program attaches even when `bpf` is
//! not active, and then never runs, so activity is checked first).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use agent_supervisor_common::{
    lsm_names, InodeKey, TreeKey, TreeOffsets, INODE_DENY_EXEC, INODE_DENY_READ, INODE_DENY_WRITE,
    MAX_DENIED_TREES, MAX_INODE_DENY,
};
use agent_supervisor_policy::{DecidedBy, Decision, MaskKind, Plan, Policy, Request, Target};
use aya::maps::{Array, HashMap};

use super::process::{kernel_file_id, KernelFileId};
use super::session::{error_chain, map_error, BackstopError, Session};
use crate::sandbox::masks::MaskMount;

/// Files under one hidden or read-only directory put in the map, at most (a deeper tree is
/// still masked by path; the rest of the map is left for other rules).
const MAX_FILES_PER_TREE: usize = 4096;

/// Why the LSM programs can't be used here, or Ok when `bpf` is an active LSM.
pub fn active() -> Result<(), String> {
    let path = "/sys/kernel/security/lsm";
    match std::fs::read_to_string(path) {
        Ok(list) if list.trim().split(',').any(|l| l == "bpf") => Ok(()),
        Ok(list) => Err(format!(
            "bpf is not in the active LSM list ({}); boot with lsm={},bpf",
            list.trim(),
            list.trim()
        )),
        Err(e) => Err(format!("cannot read {path} ({e}): is securityfs mounted?")),
    }
}

/// One file the session may not open, write or execute, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeniedFile {
    pub path: PathBuf,
    pub file: KernelFileId,
    /// `INODE_DENY_*` bits.
    pub deny: u32,
}

/// A directory every file below which the session may not open (or write, for a read-only
/// mask), whenever it got there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeniedTree {
    pub path: PathBuf,
    pub dir: KernelFileId,
    /// `INODE_DENY_*` bits.
    pub deny: u32,
}

/// The directories of the session's `masks` (hidden or read-only ones; `noexec` binds of
/// whole writable trees are left to the mount), by inode.
pub fn denied_trees(masks: &[MaskMount]) -> Vec<DeniedTree> {
    let mut out: BTreeMap<KernelFileId, DeniedTree> = BTreeMap::new();
    for mask in masks.iter().filter(|m| m.is_dir) {
        if mask.rule.is_none() && mask.kind == MaskKind::NoExec {
            continue;
        }
        let Some(dir) = file_id(&mask.path) else {
            continue;
        };
        let deny = deny_bits(mask.kind);
        out.entry(dir)
            .and_modify(|d| d.deny |= deny)
            .or_insert_with(|| DeniedTree {
                path: mask.path.clone(),
                dir,
                deny,
            });
    }
    out.into_values().collect()
}

/// Write `trees` into `DENIED_TREES` for the session's cgroup. Returns how many directories
/// are guarded. The walk's offsets (`TREE_OFFSETS`) are a host constant: the pinned set got
/// them when it was made ([`super::pinned`]); a private copy of the programs gets them here,
/// from the kernel's BTF. In the pinned set the session's entries are removed at its end.
pub fn attach_trees(session: &mut Session, trees: &[DeniedTree]) -> Result<usize, BackstopError> {
    if trees.is_empty() {
        return Ok(0);
    }
    let private_offsets = if session.pinned_set().is_none() {
        Some(tree_offsets()?)
    } else {
        None
    };
    let cgroup_id = session.cgroup().id();
    let mut map: HashMap<_, TreeKey, u32> =
        HashMap::try_from(session.take_map(lsm_names::DENIED_TREES)?)
            .map_err(map_error("opening", lsm_names::DENIED_TREES))?;
    let entries = trees.iter().take(MAX_DENIED_TREES as usize).map(|t| {
        let key = TreeKey {
            cgroup_id,
            ino: t.dir.1,
            dev: t.dir.0,
            _padding: 0,
        };
        (key, t.deny)
    });
    let keys = insert_all(&mut map, lsm_names::DENIED_TREES, entries)?;
    let written = keys.len();
    match private_offsets {
        Some(offsets) => {
            // Last: the walk starts only once every directory is in.
            let mut slot: Array<_, TreeOffsets> =
                Array::try_from(session.take_map(lsm_names::TREE_OFFSETS)?)
                    .map_err(map_error("opening", lsm_names::TREE_OFFSETS))?;
            slot.set(0, offsets, 0)
                .map_err(map_error("writing", lsm_names::TREE_OFFSETS))?;
        }
        None => session.on_end(move || {
            for key in &keys {
                let _ = map.remove(key);
            }
        }),
    }
    Ok(written)
}

/// The `dentry` offsets of `lsm/file_open`'s tree walk, from the running kernel's BTF.
pub fn tree_offsets() -> Result<TreeOffsets, BackstopError> {
    super::kernel_btf::KernelBtf::from_sys_fs()
        .and_then(|btf| btf.tree_offsets())
        .map_err(BackstopError::Offsets)
}

/// The `INODE_DENY` bits a mask of `kind` stands for.
fn deny_bits(kind: MaskKind) -> u32 {
    match kind {
        MaskKind::Hide => INODE_DENY_READ | INODE_DENY_WRITE | INODE_DENY_EXEC,
        MaskKind::ReadOnly => INODE_DENY_WRITE,
        MaskKind::NoExec => INODE_DENY_EXEC,
    }
}

/// Every file the session may not open/write/execute, by inode, from the session's `masks`
/// (the policy's denied files: a directory stands for the files under it) and the policy's
/// denied commands (deny rules without `args`) found in the directories of `path_var`.
/// `noexec` masks of whole writable trees (no rule) are left to the mount.
pub fn denied_files(
    masks: &[MaskMount],
    policy: &Policy,
    path_var: Option<&OsStr>,
) -> Vec<DeniedFile> {
    let mut out: BTreeMap<KernelFileId, DeniedFile> = BTreeMap::new();
    let mut add = |path: &Path, deny: u32| {
        let Some(file) = file_id(path) else { return };
        out.entry(file)
            .and_modify(|d| d.deny |= deny)
            .or_insert_with(|| DeniedFile {
                path: path.to_path_buf(),
                file,
                deny,
            });
    };
    for mask in masks {
        if mask.rule.is_none() && mask.kind == MaskKind::NoExec {
            continue;
        }
        let deny = deny_bits(mask.kind);
        add(&mask.path, deny);
        if mask.is_dir {
            let mut seen = 0;
            walk_files(&mask.path, &mut |p| {
                seen += 1;
                add(p, deny);
                seen < MAX_FILES_PER_TREE
            });
        }
    }
    let plain_denials = plain_command_denials(policy);
    if !plain_denials.is_empty() {
        for dir in std::env::split_paths(path_var.unwrap_or_default()) {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                // A name no such rule matches is not even looked at (a PATH directory holds
                // thousands of programs).
                let named = plain_denials
                    .iter()
                    .any(|&i| policy.command_rule_matches_program(i, &path));
                if named && command_denied(policy, &path) {
                    add(&path, INODE_DENY_EXEC);
                }
            }
        }
    }
    out.into_values().collect()
}

/// The rules that deny a command whatever its arguments.
fn plain_command_denials(policy: &Policy) -> Vec<usize> {
    (0..policy.rules.len())
        .filter(|&i| is_plain_command_denial(policy, i))
        .collect()
}

fn is_plain_command_denial(policy: &Policy, rule: usize) -> bool {
    policy.rules.get(rule).is_some_and(|r| {
        r.decision == Decision::Deny && matches!(&r.target, Target::Command { args: None, .. })
    })
}

/// Is running `path` (an executable file) denied by a command rule whatever the arguments?
fn command_denied(policy: &Policy, path: &Path) -> bool {
    let Ok(md) = std::fs::metadata(path) else {
        return false;
    };
    if !md.is_file() || md.permissions().mode() & 0o111 == 0 {
        return false;
    }
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let argv = [name];
    let verdict = policy.decide(&Request::Exec {
        path: &real,
        invoked: (real != path).then_some(path),
        argv: &argv,
    });
    match verdict.decided_by {
        DecidedBy::Rule(i) => is_plain_command_denial(policy, i),
        _ => false,
    }
}

/// The kernel's identity of `path` (symlinks followed), None when it doesn't exist. An
/// `O_PATH` open: a file we may not read (mode 000) still has one.
pub fn file_id(path: &Path) -> Option<KernelFileId> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let md = file.metadata().ok()?;
    Some(kernel_file_id(
        file.as_fd(),
        std::process::id() as i32,
        (md.dev(), md.ino()),
    ))
}

/// Regular files below `dir` (symlinks not followed, pseudo file systems not entered);
/// `visit` returns whether to go on.
fn walk_files(dir: &Path, visit: &mut dyn FnMut(&Path) -> bool) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return true;
    };
    for entry in entries.flatten() {
        let Ok(ft) = entry.file_type() else { continue };
        let path = entry.path();
        if ft.is_dir() {
            if !walk_files(&path, visit) {
                return false;
            }
        } else if ft.is_file() && !visit(&path) {
            return false;
        }
    }
    true
}

/// Write every (key, deny bits) of `entries` into `map` (named `name`), all or none: on a
/// failure the entries already written are removed again. Returns the keys written.
fn insert_all<K: aya::Pod>(
    map: &mut HashMap<aya::maps::MapData, K, u32>,
    name: &'static str,
    entries: impl Iterator<Item = (K, u32)>,
) -> Result<Vec<K>, BackstopError> {
    let mut keys = Vec::new();
    for (key, deny) in entries {
        if let Err(e) = map.insert(key, deny, 0) {
            for key in &keys {
                let _ = map.remove(key);
            }
            return Err(map_error("writing", name)(e));
        }
        keys.push(key);
    }
    Ok(keys)
}

/// Load and attach the LSM programs of `session` and write `denied` into its `INODE_DENY`.
/// Returns how many files the kernel now guards.
pub fn attach(session: &mut Session, denied: &[DeniedFile]) -> Result<usize, BackstopError> {
    session.offsets()?;
    session.ensure_lsm_programs()?;
    let cgroup_id = session.cgroup().id();
    let mut map: HashMap<_, InodeKey, u32> =
        HashMap::try_from(session.take_map(lsm_names::INODE_DENY)?)
            .map_err(map_error("opening", lsm_names::INODE_DENY))?;
    let entries = denied.iter().take(MAX_INODE_DENY as usize).map(|d| {
        let key = InodeKey {
            cgroup_id,
            ino: d.file.1,
            dev: d.file.0,
            _padding: 0,
        };
        (key, d.deny)
    });
    let keys = insert_all(&mut map, lsm_names::INODE_DENY, entries)?;
    let written = keys.len();
    if session.pinned_set().is_some() {
        session.on_end(move || {
            for key in &keys {
                let _ = map.remove(key);
            }
        });
    }
    tracing::debug!("BPF LSM programs serve cgroup {cgroup_id}: {written} denied files");
    Ok(written)
}

pub fn probe() -> Result<(), String> {
    super::session::probe(|ebpf, btf| super::session::load_lsm_programs(ebpf, btf, false))
}

/// The line `run` prints when the LSM programs are off although the policy denies files or
/// commands.
pub fn weaker_line(cause: &str) -> String {
    format!(
        "BPF LSM is off ({cause}): denied files and commands are refused by path (mount masks, \
         Landlock, the supervisor), not by inode: a hard link made before the session reaches \
         them, and so does another mount of a denied directory, with files created or renamed \
         into a denied directory after the start"
    )
}

/// Would the LSM programs guard anything in a session under `policy` (denied files or
/// commands, or execs decided one by one)? From the policy alone, so that `doctor` and `run`
/// agree.
pub fn relevant(policy: &Policy, plan: &Plan) -> bool {
    !plan.masks.is_empty() || !plain_command_denials(policy).is_empty() || plan.notify_exec
}

/// [`attach`] as `run` wants it: the programs on when BPF LSM is active, otherwise (when the
/// policy denies files or commands) the line saying what is weaker. `Ok(None)`: nothing to
/// guard, nothing loaded.
pub fn start_session(
    session: &mut Session,
    masks: &[MaskMount],
    policy: &Policy,
) -> Result<Option<usize>, String> {
    if !relevant(policy, &policy.plan()) {
        return Ok(None);
    }
    active().map_err(|why| weaker_line(&why))?;
    let denied = denied_files(masks, policy, std::env::var_os("PATH").as_deref());
    let files = attach(session, &denied).map_err(|e| weaker_line(&error_chain(&e)))?;
    // The programs are attached: without the tree walk only files present at start are
    // refused by inode, which the line says.
    attach_trees(session, &denied_trees(masks)).map_err(|e| {
        format!(
            "BPF LSM refuses denied files by inode, but not files created in or renamed into \
             a denied directory after the start ({})",
            error_chain(&e)
        )
    })?;
    Ok(Some(files))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(dir: &Path) -> agent_supervisor_policy::Vars {
        agent_supervisor_policy::Vars {
            workspace: dir.to_path_buf(),
            home: dir.join("home"),
            tmp: dir.join("tmp"),
        }
    }

    #[test]
    fn masks_and_plain_command_denials_become_inode_entries() {
        let dir = tempdir("lsm-denied");
        let secret_dir = dir.join("secrets");
        std::fs::create_dir_all(secret_dir.join("deep")).unwrap();
        std::fs::write(secret_dir.join("deep/key"), "k").unwrap();
        std::fs::write(dir.join("config"), "c").unwrap();
        let bin = dir.join("bin");
        std::fs::create_dir(&bin).unwrap();
        for name in ["forbidden-tool", "fine-tool", "chmod"] {
            let p = bin.join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let policy = Policy::parse(
            "test.toml",
            r#"version = 1

[[rule]]
decision = "deny"
command = "forbidden-*"

[[rule]]
decision = "deny"
command = "chmod"
args = "777 *"
"#,
            &dir,
            &vars(&dir),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let masks = vec![
            MaskMount {
                path: secret_dir.clone(),
                kind: MaskKind::Hide,
                is_dir: true,
                rule: Some(0),
            },
            MaskMount {
                path: dir.join("config"),
                kind: MaskKind::ReadOnly,
                is_dir: false,
                rule: None,
            },
            MaskMount {
                path: dir.join("tmp-tree"),
                kind: MaskKind::NoExec,
                is_dir: true,
                rule: None,
            },
        ];
        let denied = denied_files(&masks, &policy, Some(bin.as_os_str()));
        let deny_of = |p: &Path| {
            denied
                .iter()
                .find(|d| d.path == p)
                .map(|d| d.deny)
                .unwrap_or(0)
        };
        let all = INODE_DENY_READ | INODE_DENY_WRITE | INODE_DENY_EXEC;
        assert_eq!(deny_of(&secret_dir), all);
        assert_eq!(deny_of(&secret_dir.join("deep/key")), all, "{denied:?}");
        assert_eq!(deny_of(&dir.join("config")), INODE_DENY_WRITE);
        assert_eq!(deny_of(&bin.join("forbidden-tool")), INODE_DENY_EXEC);
        assert_eq!(deny_of(&bin.join("fine-tool")), 0, "not denied");
        assert_eq!(
            deny_of(&bin.join("chmod")),
            0,
            "denied only with some arguments"
        );
        // A hard link is the same inode: one entry.
        std::fs::hard_link(secret_dir.join("deep/key"), dir.join("link")).unwrap();
        assert_eq!(
            file_id(&dir.join("link")),
            file_id(&secret_dir.join("deep/key"))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn hidden_and_read_only_directories_become_denied_trees() {
        let dir = tempdir("lsm-trees");
        for d in ["hidden", "ro", "noexec", "file-parent"] {
            std::fs::create_dir(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("file-parent/f"), "f").unwrap();
        let mask = |p: &str, kind, is_dir, rule| MaskMount {
            path: dir.join(p),
            kind,
            is_dir,
            rule,
        };
        let trees = denied_trees(&[
            mask("hidden", MaskKind::Hide, true, Some(0)),
            mask("ro", MaskKind::ReadOnly, true, None),
            mask("noexec", MaskKind::NoExec, true, None),
            mask("file-parent/f", MaskKind::Hide, false, Some(1)),
            mask("missing", MaskKind::Hide, true, Some(2)),
        ]);
        let deny_of = |p: &str| {
            trees
                .iter()
                .find(|t| t.path == dir.join(p))
                .map(|t| (t.deny, t.dir))
        };
        assert_eq!(
            deny_of("hidden"),
            Some((
                INODE_DENY_READ | INODE_DENY_WRITE | INODE_DENY_EXEC,
                file_id(&dir.join("hidden")).unwrap()
            ))
        );
        assert_eq!(deny_of("ro").map(|d| d.0), Some(INODE_DENY_WRITE));
        assert_eq!(trees.len(), 2, "{trees:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn active_reads_the_lsm_list() {
        // Whatever this kernel runs, the answer agrees with the file.
        let list = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
        assert_eq!(
            active().is_ok(),
            list.trim().split(',').any(|l| l == "bpf"),
            "{:?}",
            active()
        );
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("as-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
