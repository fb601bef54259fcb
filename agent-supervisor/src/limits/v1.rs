//! Hybrid hosts: the session's cgroup v1 directories (memory, pids, cpu).
//!
//! On a host whose controllers are bound to cgroup v1 hierarchies (`/sys/fs/cgroup/memory`,
//! ...), cgroup v2 has none of them, so the limits are written in v1 directories instead. Each
//! is created **under the supervisor's own v1 cgroup** (from `/proc/self/cgroup`), as
//! `<own>/agent-supervisor/<session id>`, so that whatever limits the host put on the
//! supervisor still bind the session (v1 limits are hierarchical). Only the session directory
//! is removed at the end (checked by inode, like [`crate::cgroup::SessionCgroup`]); the shared
//! `agent-supervisor/` parent stays.
//!
//! Docs: <https://docs.kernel.org/admin-guide/cgroup-v1/memory.html>,
//! <https://docs.kernel.org/admin-guide/cgroup-v1/pids.html>.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::LimitsError;

/// One session directory in one v1 hierarchy, removed on drop.
#[derive(Debug)]
pub struct V1Cgroup {
    /// The controller this directory enforces (`memory`, `pids` or `cpu`).
    pub controller: &'static str,
    /// The hierarchy's mount point (made read-only in the sandbox).
    pub mount: PathBuf,
    dir: PathBuf,
    ino: u64,
}

/// The tables a session's cgroups are found in, read once per session: which hierarchies are
/// mounted where (`/proc/mounts`) and, only when a v1 hierarchy is used, where this process
/// sits in each (`/proc/self/cgroup`).
pub struct HostTables {
    pub mounts: String,
    own: std::cell::OnceCell<Result<String, String>>,
}

impl HostTables {
    pub fn read() -> Result<HostTables, LimitsError> {
        Ok(HostTables {
            mounts: crate::sys::read_proc("/proc/mounts").map_err(LimitsError::Proc)?,
            own: std::cell::OnceCell::new(),
        })
    }

    fn own(&self) -> Result<&str, LimitsError> {
        self.own
            .get_or_init(|| crate::sys::read_proc("/proc/self/cgroup").map_err(|e| e.to_string()))
            .as_deref()
            .map_err(|e| LimitsError::Proc(io::Error::other(format!("/proc/self/cgroup: {e}"))))
    }
}

impl V1Cgroup {
    /// Create the session directory for `controller` if the host has that v1 hierarchy.
    /// `Ok(None)`: no such hierarchy mounted.
    /// `tables`: this process's `/proc/mounts` and `/proc/self/cgroup` ([`HostTables`]).
    pub fn create(
        tables: &HostTables,
        controller: &'static str,
        session_id: &str,
    ) -> Result<Option<V1Cgroup>, LimitsError> {
        let Some(mount) = mount_of(&tables.mounts, controller) else {
            return Ok(None);
        };
        let Some(own) = own_cgroup(tables.own()?, controller) else {
            return Ok(None);
        };
        let parent = mount
            .join(own.trim_start_matches('/'))
            .join(crate::cgroup::PARENT_DIR);
        match std::fs::create_dir(&parent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(LimitsError::Create {
                    path: parent,
                    source,
                })
            }
        }
        if crate::cgroup::sweep_due(&parent) {
            sweep_abandoned(&parent);
        }
        let dir = parent.join(session_id);
        std::fs::create_dir(&dir).map_err(|source| LimitsError::Create {
            path: dir.clone(),
            source,
        })?;
        match File::open(&dir).and_then(|f| f.metadata()) {
            Ok(md) => Ok(Some(V1Cgroup {
                controller,
                mount,
                dir,
                ino: md.ino(),
            })),
            Err(source) => {
                let _ = std::fs::remove_dir(&dir);
                Err(LimitsError::Create { path: dir, source })
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Write `value` into the directory's `file`.
    pub fn write(&self, file: &str, value: &str) -> Result<(), LimitsError> {
        super::write_control(&self.dir.join(file), value)
    }

    /// Its `cgroup.procs`.
    pub fn procs_path(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Its `tasks`: a thread writing `0` there moves itself (see
    /// [`super::SessionLimits::v1_tasks`]).
    pub fn tasks_path(&self) -> PathBuf {
        self.dir.join("tasks")
    }

    /// The counter `key` of the events file of this controller: `oom_kill` in
    /// `memory.oom_control` (Linux 4.13+), `max` in `pids.events`.
    /// An eventfd the kernel signals when the session hits its memory limit (the v1 memory
    /// controller's OOM notification: `cgroup.event_control` on `memory.oom_control`), with
    /// the control file it is registered on (kept open for as long as the eventfd is used).
    pub fn oom_eventfd(&self) -> io::Result<(nix::sys::eventfd::EventFd, File)> {
        use nix::sys::eventfd::{EfdFlags, EventFd};
        use std::os::fd::AsRawFd;
        let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        let control = File::open(self.dir.join("memory.oom_control"))?;
        std::fs::write(
            self.dir.join("cgroup.event_control"),
            format!("{} {}", efd.as_fd().as_raw_fd(), control.as_raw_fd()),
        )?;
        Ok((efd, control))
    }

    pub fn event_count(&self) -> u64 {
        let (file, key) = match self.controller {
            "memory" => ("memory.oom_control", "oom_kill"),
            "pids" => ("pids.events", "max"),
            _ => return 0,
        };
        super::counter(&self.dir.join(file), key)
    }
}

impl Drop for V1Cgroup {
    /// Remove the directory once its processes are gone; only if it is still ours (inode).
    fn drop(&mut self) {
        crate::cgroup::remove_own_dir(&self.dir, self.ino);
    }
}

/// Remove session-named directories under our parent that have no task and are older than a
/// minute: left by a supervisor that was killed before it could remove them.
fn sweep_abandoned(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let session_like = name.len() == 12 && name.bytes().all(|b| b.is_ascii_hexdigit());
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|d| d > Duration::from_secs(60)));
        let empty = std::fs::read_to_string(e.path().join("tasks")).is_ok_and(|t| t.is_empty());
        if session_like && old && empty {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// The mount point of the v1 hierarchy that has `controller` (an exact item of its options).
pub fn mount_of(mounts: &str, controller: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() >= 4 && f[2] == "cgroup" && f[3].split(',').any(|o| o == controller))
            .then(|| PathBuf::from(f[1]))
    })
}

/// This process's cgroup in the v1 hierarchy of `controller`, from `/proc/self/cgroup`
/// (`ID:controller[,controller]:/path`).
pub fn own_cgroup(proc_self_cgroup: &str, controller: &str) -> Option<String> {
    proc_self_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_v1_mounts_and_our_own_cgroup() {
        let mounts = "\
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,name=systemd 0 0
";
        assert_eq!(
            mount_of(mounts, "cpu"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(
            mount_of(mounts, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(mount_of(mounts, "pids"), None);
        let own = "9:name=systemd:/\n4:memory:/a/b\n3:cpu,cpuacct:/c\n0::/x\n";
        assert_eq!(own_cgroup(own, "memory").as_deref(), Some("/a/b"));
        assert_eq!(own_cgroup(own, "cpu").as_deref(), Some("/c"));
        assert_eq!(own_cgroup(own, "pids"), None);
    }
}
