//! The session's own cgroup v2 directory: `<cgroup2 root>/agent-supervisor/<session id>`.
//!
//! Every root session creates it (see [`crate::limits`], which also writes the session's
//! resource limits into it). The eBPF network programs are attached to this directory and nowhere else, so they only
//! ever see the sockets of the session's processes: everything else on the host is untouched.
//! The sandbox's init is written into its `cgroup.procs` before it starts the agent, so every
//! process and socket of the session lives in it.
//!
//! Layout: the cgroup2 root is `/sys/fs/cgroup` on pure cgroup v2 hosts and
//! `/sys/fs/cgroup/unified` on hybrid (v1 + v2) ones; it is found in `/proc/mounts`. Only the
//! v2 hierarchy is used: BPF cgroup programs attach to v2 directories, and a process's v2
//! membership does not change its v1 ones. The shared parent `agent-supervisor/` is created
//! when missing and never removed (other sessions may be using it). The session directory is
//! removed on drop, once the session's processes are gone; nothing else is ever moved,
//! changed or removed. A supervisor killed with SIGKILL can't remove it: the empty directory
//! stays behind (harmless, but not cleaned up by anyone yet).
//!
//! Needs root (or a delegated cgroup2 subtree) and Linux 4.5+ (cgroup v2); the cgroup id is
//! the directory's inode number, which is what `bpf_get_current_cgroup_id` returns.
//! Docs: <https://docs.kernel.org/admin-guide/cgroup-v2.html>.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Name of the directory under the cgroup2 root that holds the sessions' cgroups.
pub const PARENT_DIR: &str = "agent-supervisor";

/// How long drop waits for a just-emptied cgroup to become removable (the kernel updates a
/// cgroup's "populated" state shortly after its last task exits).
const REMOVE_WAIT: Duration = Duration::from_secs(2);

/// Why the session cgroup could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted (looked for a cgroup2 mount in /proc/mounts)")]
    NoCgroup2,
    #[error("reading /proc/mounts to find the cgroup v2 hierarchy")]
    Mounts(#[source] io::Error),
    #[error("`{0}` is not a usable session id for a cgroup directory name")]
    BadSessionId(String),
    #[error("creating the session cgroup {}{}", path.display(), needs_root(source))]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening the session cgroup {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn needs_root(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
            " (creating cgroups needs root or a delegated cgroup v2 subtree)"
        }
        _ => "",
    }
}

/// The cgroup v2 directory of one session, removed on drop.
#[derive(Debug)]
pub struct SessionCgroup {
    dir: PathBuf,
    id: u64,
    /// The directory, open: what BPF programs are attached to.
    fd: File,
}

impl SessionCgroup {
    /// Create `<cgroup2 root>/agent-supervisor/<session_id>` (the cgroup2 root found in
    /// `/proc/mounts`). Fails if the directory already exists: a session never adopts a
    /// cgroup it did not create.
    pub fn create(session_id: &str) -> Result<SessionCgroup, CgroupError> {
        Self::create_under(&cgroup2_root()?, session_id)
    }

    /// [`Self::create`] with `/proc/mounts` already read (`mounts`).
    pub fn create_in(mounts: &str, session_id: &str) -> Result<SessionCgroup, CgroupError> {
        Self::create_under(
            &cgroup2_root_in(mounts).ok_or(CgroupError::NoCgroup2)?,
            session_id,
        )
    }

    /// A session directory with no process in it for this long was left by a supervisor that was
    /// killed before it could remove it (a live session always holds its init process).
    pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

    /// Remove session directories under our own `agent-supervisor/` parent that are empty (no
    /// process: `populated 0`) and older than `age`. Only directories named like a session id, only
    /// empty ones (rmdir refuses anything else), never anything outside the parent we create.
    pub fn sweep_abandoned(parent: &Path, age: std::time::Duration) {
        Self::sweep_abandoned_where(parent, age, |name| {
            name.len() == 12 && name.bytes().all(|b| b.is_ascii_hexdigit())
        })
    }

    /// [`Self::sweep_abandoned`] for the directories whose names `select` accepts.
    fn sweep_abandoned_where(
        parent: &Path,
        age: std::time::Duration,
        select: impl Fn(&str) -> bool,
    ) {
        let Ok(entries) = std::fs::read_dir(parent) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let session_like = select(&name.to_string_lossy());
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|d| d > age));
            let empty = std::fs::read_to_string(e.path().join("cgroup.events"))
                .is_ok_and(|ev| ev.lines().any(|l| l == "populated 0"));
            if session_like && old && empty {
                match std::fs::remove_dir(e.path()) {
                    Ok(()) => tracing::info!(
                        "removed the abandoned session cgroup {}",
                        e.path().display()
                    ),
                    Err(err) => tracing::debug!("could not remove {}: {err}", e.path().display()),
                }
            }
        }
    }

    /// Create `<root>/agent-supervisor/<session_id>`; `root` must be a cgroup2 mount.
    pub fn create_under(root: &Path, session_id: &str) -> Result<SessionCgroup, CgroupError> {
        let plain = !session_id.is_empty()
            && session_id != "."
            && session_id != ".."
            && !session_id.contains(['/', '\0', '\n']);
        if !plain {
            return Err(CgroupError::BadSessionId(session_id.to_string()));
        }
        let parent = root.join(PARENT_DIR);
        match std::fs::create_dir(&parent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(CgroupError::Create {
                    path: parent,
                    source,
                })
            }
        }
        if sweep_due(&parent) {
            Self::sweep_abandoned(&parent, Self::STALE_AFTER);
        }
        let dir = parent.join(session_id);
        std::fs::create_dir(&dir).map_err(|source| CgroupError::Create {
            path: dir.clone(),
            source,
        })?;
        // From here on the directory is ours: a failure removes it again.
        let opened = File::open(&dir).and_then(|fd| {
            let id = fd.metadata()?.ino();
            Ok((fd, id))
        });
        match opened {
            Ok((fd, id)) => Ok(SessionCgroup { dir, id, fd }),
            Err(source) => {
                let _ = std::fs::remove_dir(&dir);
                Err(CgroupError::Open { path: dir, source })
            }
        }
    }

    /// The cgroup v2 id (inode number of the directory), as BPF programs see it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Its `cgroup.procs`: writing a pid there moves that whole process into the cgroup.
    pub fn procs_path(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Move process `pid` (all its threads) into the cgroup. Its children forked afterwards
    /// are born in it; children it already has stay where they are.
    pub fn add_process(&self, pid: libc::pid_t) -> io::Result<()> {
        move_into(&self.procs_path(), pid)
    }

    /// A read-only bind of the whole cgroup2 hierarchy for the sandbox: its processes keep
    /// reading cgroupfs, but none can write `cgroup.procs` to leave the session cgroup (which
    /// file permissions alone would let an agent running as host uid 0 do).
    pub fn read_only_root_mask(&self) -> crate::sandbox::masks::MaskMount {
        let root = self
            .dir
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("/"))
            .to_path_buf();
        crate::sandbox::masks::MaskMount {
            path: root,
            kind: agent_supervisor_policy::MaskKind::ReadOnly,
            is_dir: true,
            rule: None,
        }
    }

    /// The pids in the cgroup (not in its descendants).
    pub fn processes(&self) -> io::Result<Vec<libc::pid_t>> {
        Ok(crate::sys::read_proc(self.procs_path())?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }
}

/// Where the time of the last sweep of abandoned session cgroups is kept (the file's mtime).
const SWEEP_STAMP_DIR: &str = "/run/agent-supervisor";

/// Is a sweep of the abandoned session cgroups under `parent` due? At most one session per
/// [`SessionCgroup::STALE_AFTER`] sweeps a parent (a directory can't be abandoned for longer
/// than that before it is swept), so starting a session costs one `stat`, not a read of every
/// session directory. The stamp is a file in `/run/agent-supervisor/` named after the parent;
/// when it can't be kept (no `/run`), every session sweeps, as before.
pub(crate) fn sweep_due(parent: &Path) -> bool {
    let name: String = parent
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let stamp = Path::new(SWEEP_STAMP_DIR).join(format!("swept{name}"));
    let recent = std::fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .is_ok_and(|t| {
            t.elapsed()
                .is_ok_and(|age| age < SessionCgroup::STALE_AFTER)
        });
    if recent {
        return false;
    }
    let _ = std::fs::create_dir_all(SWEEP_STAMP_DIR);
    if let Ok(f) = std::fs::File::create(&stamp) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
    true
}

/// Write `pid` into a `cgroup.procs` file.
pub fn move_into(procs: &Path, pid: libc::pid_t) -> io::Result<()> {
    std::fs::write(procs, pid.to_string())
}

impl AsFd for SessionCgroup {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for SessionCgroup {
    /// Remove the directory once it is empty. Only this directory, and only if it is still the
    /// one we created (same inode); never the shared parent.
    fn drop(&mut self) {
        remove_own_dir(&self.dir, self.id);
    }
}

/// Remove the cgroup directory `dir` if it is still the one we created (inode `ino`), waiting
/// up to [`REMOVE_WAIT`] for its last processes to be gone (the kernel reports a just-emptied
/// cgroup busy for a moment). Anything else is left alone, with a warning.
pub fn remove_own_dir(dir: &Path, ino: u64) {
    let deadline = Instant::now() + REMOVE_WAIT;
    loop {
        match std::fs::metadata(dir) {
            Ok(md) if md.ino() == ino => {}
            _ => return,
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                tracing::warn!("could not remove the cgroup {}: {e}", dir.display());
                return;
            }
        }
    }
}

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup` (pure v2), or
/// `/sys/fs/cgroup/unified` (hybrid), or else the first cgroup2 mount.
pub fn cgroup2_root() -> Result<PathBuf, CgroupError> {
    let mounts = crate::sys::read_proc("/proc/mounts").map_err(CgroupError::Mounts)?;
    cgroup2_root_in(&mounts).ok_or(CgroupError::NoCgroup2)
}

/// [`cgroup2_root`] over the text of `/proc/mounts`.
pub fn cgroup2_root_in(mounts: &str) -> Option<PathBuf> {
    let cgroup2: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(target)))
        })
        .collect();
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .find_map(|preferred| cgroup2.iter().find(|m| m.as_path() == Path::new(preferred)))
        .or(cgroup2.first())
        .cloned()
}

/// `/proc/mounts` writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
";
    const PURE: &str = "\
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
";

    #[test]
    fn finds_the_cgroup2_root_on_hybrid_and_pure_hosts() {
        assert_eq!(
            cgroup2_root_in(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_root_in(PURE), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(
            cgroup2_root_in("none /mnt/my\\040cg cgroup2 rw 0 0\n"),
            Some(PathBuf::from("/mnt/my cg"))
        );
        assert_eq!(
            cgroup2_root_in("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"),
            None
        );
    }

    #[test]
    fn session_ids_must_be_plain_names() {
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(matches!(
                SessionCgroup::create_under(Path::new("/nonexistent"), bad),
                Err(CgroupError::BadSessionId(_))
            ));
        }
    }

    /// A session directory left by a killed supervisor (empty, old) is swept; one with a
    /// process in it is not.
    #[test]
    fn abandoned_empty_session_cgroups_are_swept_populated_ones_are_not() {
        let root = match cgroup2_root() {
            Ok(root) => root,
            Err(e) => {
                eprintln!("skipping: {e}");
                return;
            }
        };
        let suffix = format!("{:06x}", std::process::id() & 0xff_ffff);
        let abandoned = match SessionCgroup::create_under(&root, &format!("aaaaaa{suffix}")) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("skipping: {e}");
                return;
            }
        };
        let busy =
            SessionCgroup::create_under(&root, &format!("bbbbbb{suffix}")).expect("second cgroup");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        busy.add_process(child.id() as libc::pid_t)
            .expect("move child");
        let (abandoned_dir, busy_dir) = (abandoned.path().to_path_buf(), busy.path().to_path_buf());
        std::mem::forget(abandoned); // as if its supervisor had been killed
                                     // Only our two: other tests in this binary may be creating session cgroups right now.
        let ours = |n: &str| n == format!("aaaaaa{suffix}") || n == format!("bbbbbb{suffix}");
        SessionCgroup::sweep_abandoned_where(
            &root.join(PARENT_DIR),
            std::time::Duration::ZERO,
            ours,
        );
        let swept = !abandoned_dir.exists();
        let kept = busy_dir.exists();
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir(&abandoned_dir);
        drop(busy);
        assert!(swept, "the abandoned empty session cgroup was not removed");
        assert!(kept, "a session cgroup with a process in it was removed");
    }

    /// Privileged: the directory is created with the right id, takes a process, and is
    /// removed on drop once the process is gone.
    #[test]
    fn creates_moves_into_and_removes_a_session_cgroup() {
        let root = match cgroup2_root() {
            Ok(root) => root,
            Err(e) => {
                eprintln!("skipping: {e}");
                return;
            }
        };
        let name = format!("unit-test-{}", std::process::id());
        let cgroup = match SessionCgroup::create_under(&root, &name) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("skipping: {e}");
                return;
            }
        };
        let dir = cgroup.path().to_path_buf();
        assert_eq!(dir, root.join(PARENT_DIR).join(&name));
        assert_eq!(std::fs::metadata(&dir).expect("dir").ino(), cgroup.id());
        assert!(matches!(
            SessionCgroup::create_under(&root, &name),
            Err(CgroupError::Create { .. })
        ));

        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let moved = cgroup.add_process(child.id() as libc::pid_t);
        let listed = cgroup.processes();
        let _ = child.kill();
        let _ = child.wait();
        moved.expect("write cgroup.procs");
        assert_eq!(listed.expect("read cgroup.procs"), vec![child.id() as i32]);
        drop(cgroup);
        assert!(!dir.exists(), "{} is still there", dir.display());
        assert!(root.join(PARENT_DIR).is_dir(), "the shared parent stays");
    }
}
