//! The session's resource limits (`[limits]`) and the end of the session.
//!
//! Every root session gets its cgroup v2 directory ([`SessionCgroup`], where the eBPF
//! programs attach too) whether or not eBPF loads. The limits are written there with the v2
//! controllers (`memory.max` + `memory.swap.max = 0` + `memory.oom.group`, `pids.max`,
//! `cpu.max`), which are first enabled in the `cgroup.subtree_control` of our own
//! `agent-supervisor/` parent (and of the root when the root has them but does not pass them
//! down, as in freshly booted guests). On hybrid hosts, where those controllers belong to
//! cgroup v1 hierarchies, the limits go into v1 directories under the supervisor's own v1
//! cgroups instead ([`v1`]). The sandbox's init is written into all of them before it forks
//! the agent, so nothing of the session runs outside its limits.
//!
//! `file_size` is RLIMIT_FSIZE set in the agent before its exec (see
//! [`crate::sandbox::SandboxSpec::file_size`]); `timeout` is kept by the [`Watch`] thread.
//!
//! The watch thread also ends the session when a limit is hit: memory (an OOM kill in the
//! session: `oom_kill` in `memory.events` / `memory.oom_control`) or processes (`max` in
//! `pids.events`: a fork was refused). Ending means SIGKILL to the sandbox's init (its PID
//! namespace dies with it) and `cgroup.kill` (or SIGKILL to every pid listed in the
//! session's cgroups) as a backstop. The timeout first sends SIGTERM to the agent and
//! SIGKILL after [`TIMEOUT_GRACE`].
//!
//! A limit that cannot be enforced here (not root, no such controller) refuses the session
//! when the policy (or a `run` flag) set it, and is one warning line when it is a default.
#![forbid(unsafe_code)]

pub mod v1;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_supervisor_policy::{format_size, Limits, Memory};

use crate::cgroup::SessionCgroup;
use crate::sys;
use v1::V1Cgroup;

/// How long the agent has between SIGTERM and SIGKILL when the timeout hits.
pub const TIMEOUT_GRACE: Duration = Duration::from_secs(5);

/// Exit code of a session ended by `[limits] timeout` (like timeout(1)).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit code of a session killed because it hit `[limits] memory`.
pub const EXIT_MEMORY_LIMIT: i32 = 122;
/// Exit code of a session killed because it hit `[limits] processes`.
pub const EXIT_PROCESS_LIMIT: i32 = 123;

/// Why the limits could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("reading /proc (mounts, our cgroups, meminfo)")]
    Proc(#[source] io::Error),
    #[error("creating the cgroup {}{}", path.display(), needs_root(source))]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing `{value}` to {}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
}

fn needs_root(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => " (needs root)",
        _ => "",
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EndReason {
    /// The agent exited (or was killed by a signal not from us).
    Exit,
    /// `[limits] timeout` passed.
    Timeout(Duration),
    /// An OOM kill under `[limits] memory` (bytes).
    MemoryLimit(u64),
    /// A fork refused by `[limits] processes`.
    ProcessLimit(u64),
}

impl EndReason {
    /// `exit`, `timeout`, `memory-limit` or `process-limit`: the audit's `ended_by`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Exit => "exit",
            EndReason::Timeout(_) => "timeout",
            EndReason::MemoryLimit(_) => "memory-limit",
            EndReason::ProcessLimit(_) => "process-limit",
        }
    }
    /// The limit that was hit, as written in `[limits]` (`30m`, `2G`, `4096`).
    pub fn limit(self) -> Option<String> {
        match self {
            EndReason::Exit => None,
            EndReason::Timeout(d) => Some(humantime::format_duration(d).to_string()),
            EndReason::MemoryLimit(b) => Some(format_size(b)),
            EndReason::ProcessLimit(n) => Some(n.to_string()),
        }
    }
    /// The supervisor's exit code for this end (None: the agent's own).
    pub fn exit_code(self) -> Option<i32> {
        match self {
            EndReason::Exit => None,
            EndReason::Timeout(_) => Some(EXIT_TIMEOUT),
            EndReason::MemoryLimit(_) => Some(EXIT_MEMORY_LIMIT),
            EndReason::ProcessLimit(_) => Some(EXIT_PROCESS_LIMIT),
        }
    }
    /// The stderr line.
    pub fn message(self) -> Option<String> {
        let limit = self.limit()?;
        Some(match self {
            EndReason::Timeout(_) => format!(
                "the session reached its timeout ({limit}): the agent and all its processes were stopped (exit code {EXIT_TIMEOUT})"
            ),
            EndReason::MemoryLimit(_) => format!(
                "the session hit its memory limit ({limit}): the agent and all its processes were killed (exit code {EXIT_MEMORY_LIMIT})"
            ),
            EndReason::ProcessLimit(_) => format!(
                "the session hit its process limit ({limit} processes and threads): the agent and all its processes were killed (exit code {EXIT_PROCESS_LIMIT})"
            ),
            EndReason::Exit => return None,
        })
    }
}

/// A limit the host cannot enforce.
#[derive(Debug, Clone)]
pub struct Unenforced {
    /// `memory = 2G`.
    pub what: String,
    /// Where it was set (`policy.toml:5:10`, `--memory`); None: a built-in default.
    pub origin: Option<String>,
    /// Why not.
    pub why: String,
}

/// The cgroups that carry one session's limits, removed on drop (v1 ones, and the v2 one once
/// eBPF let go of it too).
#[derive(Debug)]
pub struct SessionLimits {
    /// The v2 session cgroup (eBPF attaches here). Err: why there is none.
    v2: Result<Arc<SessionCgroup>, String>,
    /// Limits were written into the v2 cgroup.
    v2_limits: bool,
    v1: Vec<V1Cgroup>,
    memory: Option<u64>,
    processes: Option<u64>,
    /// What could not be enforced.
    pub unenforced: Vec<Unenforced>,
}

/// Write one cgroup control file.
pub(crate) fn write_control(path: &Path, value: &str) -> Result<(), LimitsError> {
    std::fs::write(path, value).map_err(|source| LimitsError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

/// `key N` in a flat-keyed cgroup file (0 when absent or unreadable).
pub(crate) fn counter(path: &Path, key: &str) -> u64 {
    sys::read_proc(path)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
        })
        .unwrap_or(0)
}

/// The host's RAM (`MemTotal` of /proc/meminfo), bytes.
pub fn host_memory() -> io::Result<u64> {
    let text = sys::read_proc("/proc/meminfo")?;
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix("MemTotal:")?;
            rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::other("no MemTotal in /proc/meminfo"))
}

/// The controllers of `[limits]`: (policy key, cgroup controller).
const CONTROLLERS: [(&str, &str); 3] =
    [("memory", "memory"), ("processes", "pids"), ("cpu", "cpu")];

/// Does the cgroup v2 controller list `file` (`cgroup.controllers`, `cgroup.subtree_control`)
/// name `controller`? (An unreadable file names none.)
fn lists_controller(file: &Path, controller: &str) -> bool {
    sys::read_proc(file)
        .unwrap_or_default()
        .split_whitespace()
        .any(|c| c == controller)
}

/// Does the cgroup v2 hierarchy at `root` have `controller`?
fn v2_has_controller(root: &Path, controller: &str) -> bool {
    lists_controller(&root.join("cgroup.controllers"), controller)
}

/// Make `controller` available in `<root>/agent-supervisor/`'s children: enable it in the
/// root's `cgroup.subtree_control` when the root has it but does not pass it down (only that
/// controller is added), then in our parent's.
fn enable_v2_controller(root: &Path, controller: &str) -> Result<(), String> {
    if !v2_has_controller(root, controller) {
        return Err(format!(
            "the cgroup v2 hierarchy at {} has no {controller} controller",
            root.display()
        ));
    }
    let plus = format!("+{controller}");
    for dir in [root.to_path_buf(), root.join(crate::cgroup::PARENT_DIR)] {
        if !lists_controller(&dir.join("cgroup.subtree_control"), controller) {
            write_control(&dir.join("cgroup.subtree_control"), &plus)
                .map_err(|e| crate::ebpf::session::error_chain(&e))?;
        }
    }
    Ok(())
}

/// The session's cgroups made before its limits are known: `run` makes them while it reads the
/// policy (see [`SessionLimits::prepare`]).
pub struct Prepared {
    tables: Result<v1::HostTables, String>,
    v2: Result<Arc<SessionCgroup>, String>,
    host: io::Result<u64>,
    /// The v1 cgroups of the controllers the built-in limits use, where the v2 hierarchy
    /// lacks them (hybrid hosts). One the policy leaves without a limit is removed.
    v1: Vec<V1Cgroup>,
}

impl SessionLimits {
    /// The session's cgroups, before the limits are known: read the host's tables, create
    /// the v2 session cgroup, and the v1 cgroups the built-in limits would use. Never fails:
    /// [`Self::apply`] reports what is missing.
    pub fn prepare(session_id: &str) -> Prepared {
        let tables = v1::HostTables::read().map_err(|e| crate::ebpf::session::error_chain(&e));
        let v2 = match &tables {
            Ok(t) => SessionCgroup::create_in(&t.mounts, session_id)
                .map(Arc::new)
                .map_err(|e| crate::ebpf::session::error_chain(&e)),
            Err(e) => Err(e.clone()),
        };
        let mut v1 = Vec::new();
        if let Ok(t) = &tables {
            let v2_root = v2.as_ref().ok().and_then(|c| c.path().parent()?.parent());
            let defaults = Limits::default();
            for (key, controller) in CONTROLLERS {
                let used = match key {
                    "memory" => defaults.memory.value.is_some(),
                    "processes" => defaults.processes.value.is_some(),
                    _ => defaults.cpu.value.is_some(),
                };
                if used && !v2_root.is_some_and(|root| v2_has_controller(root, controller)) {
                    // A failure is met again, and reported, when the limit is applied.
                    if let Ok(Some(c)) = V1Cgroup::create(t, controller, session_id) {
                        v1.push(c);
                    }
                }
            }
        }
        Prepared {
            tables,
            v2,
            host: host_memory(),
            v1,
        }
    }

    /// Write `limits` into the cgroups `prepared` made (and make those it did not). Never
    /// fails: what cannot be enforced is listed in [`Self::unenforced`] (the caller refuses or
    /// warns).
    pub fn apply(prepared: Prepared, session_id: &str, limits: &Limits) -> SessionLimits {
        let Prepared {
            tables,
            v2,
            host,
            v1: mut made,
        } = prepared;
        let memory = limits
            .memory
            .value
            .map(|m| m.bytes(*host.as_ref().unwrap_or(&u64::MAX)));
        let mut out = SessionLimits {
            v2,
            v2_limits: false,
            v1: Vec::new(),
            memory,
            processes: limits.processes.value,
            unenforced: Vec::new(),
        };
        for (key, controller) in CONTROLLERS {
            let (shown, origin) = match key {
                "memory" => (
                    limits.memory.value.map(|m| m.to_string()),
                    &limits.memory.origin,
                ),
                "processes" => (
                    limits.processes.value.map(|n| n.to_string()),
                    &limits.processes.origin,
                ),
                _ => (limits.cpu.value.map(|c| c.to_string()), &limits.cpu.origin),
            };
            let Some(shown) = shown else { continue };
            // The value written: bytes, a count, or `quota period` (microseconds) for cpu.
            let value = match key {
                "memory" => match (limits.memory.value, &host) {
                    (Some(Memory::HostPercent(_)), Err(e)) => {
                        out.unenforced.push(Unenforced {
                            what: format!("memory = {shown}"),
                            origin: origin.as_ref().map(origin_text),
                            why: format!("the host's RAM is unknown ({e})"),
                        });
                        continue;
                    }
                    (Some(m), host) => m.bytes(*host.as_ref().unwrap_or(&0)).to_string(),
                    (None, _) => continue,
                },
                "processes" => limits.processes.value.unwrap_or(0).to_string(),
                _ => {
                    let quota = (limits.cpu.value.unwrap_or(1.0) * 100_000.0).round() as u64;
                    format!("{quota} 100000")
                }
            };
            let v2_result = out.apply_v2(controller, &value);
            let result = match v2_result {
                Ok(()) => {
                    out.v2_limits = true;
                    Ok(())
                }
                Err(v2_why) => tables
                    .as_ref()
                    .map_err(Clone::clone)
                    .and_then(|t| out.apply_v1(t, &mut made, session_id, controller, &value))
                    .map_err(|v1_why| format!("{v2_why}; {v1_why}")),
            };
            if let Err(why) = result {
                out.unenforced.push(Unenforced {
                    what: format!("{key} = {shown}"),
                    origin: origin.as_ref().map(origin_text),
                    why,
                });
            }
        }
        out
    }

    fn apply_v2(&self, controller: &str, value: &str) -> Result<(), String> {
        let cgroup = self.v2.as_ref().map_err(Clone::clone)?;
        let dir = cgroup.path();
        let root = dir
            .parent()
            .and_then(Path::parent)
            .ok_or_else(|| "the session cgroup has no root".to_string())?;
        enable_v2_controller(root, controller)?;
        let file = |name: &str| dir.join(format!("{controller}.{name}"));
        let show = |e: LimitsError| crate::ebpf::session::error_chain(&e);
        match controller {
            "memory" => {
                write_control(&file("max"), value).map_err(show)?;
                // No swap beyond the limit (a hog swapping would slow the host down instead).
                if file("swap.max").exists() {
                    if let Err(e) = write_control(&file("swap.max"), "0") {
                        tracing::debug!("{}", show(e));
                    }
                }
                // The whole session goes on OOM, not one of its processes.
                if let Err(e) = write_control(&file("oom.group"), "1") {
                    tracing::debug!("{}", show(e));
                }
            }
            _ => write_control(&file("max"), value).map_err(show)?,
        }
        Ok(())
    }

    fn apply_v1(
        &mut self,
        tables: &v1::HostTables,
        made: &mut Vec<V1Cgroup>,
        session_id: &str,
        controller: &'static str,
        value: &str,
    ) -> Result<(), String> {
        let show = |e: LimitsError| crate::ebpf::session::error_chain(&e);
        let cgroup = match made.iter().position(|c| c.controller == controller) {
            Some(i) => made.swap_remove(i),
            None => V1Cgroup::create(tables, controller, session_id)
                .map_err(show)?
                .ok_or_else(|| format!("no cgroup v1 {controller} hierarchy is mounted either"))?,
        };
        match controller {
            "memory" => {
                cgroup.write("memory.limit_in_bytes", value).map_err(show)?;
                if cgroup.path().join("memory.memsw.limit_in_bytes").exists() {
                    if let Err(e) = cgroup.write("memory.memsw.limit_in_bytes", value) {
                        tracing::debug!("{}", show(e));
                    }
                }
            }
            "pids" => cgroup.write("pids.max", value).map_err(show)?,
            _ => {
                let quota = value.split(' ').next().unwrap_or("-1");
                cgroup.write("cpu.cfs_period_us", "100000").map_err(show)?;
                cgroup.write("cpu.cfs_quota_us", quota).map_err(show)?;
            }
        }
        self.v1.push(cgroup);
        Ok(())
    }

    /// The v2 session cgroup for eBPF, or why there is none.
    pub fn v2_cgroup(&self) -> Result<Arc<SessionCgroup>, String> {
        self.v2.clone()
    }

    /// The `cgroup.procs` of the v2 cgroup when it enforces limits: init must be in it before
    /// the agent starts (it is born there, or moved by the supervisor).
    pub fn limit_procs(&self) -> Vec<PathBuf> {
        match (&self.v2, self.v2_limits) {
            (Ok(c), true) => vec![c.procs_path()],
            _ => Vec::new(),
        }
    }

    /// The `tasks` files of the v1 cgroups (hybrid hosts): init, still single-threaded,
    /// writes `0` into each to move itself before it starts anything. Moving a single thread
    /// that is the writer itself skips the global threadgroup lock (Linux 6.0+), whose
    /// `cgroup.procs` writers wait for a whole RCU grace period (6-17 ms measured here).
    pub fn v1_tasks(&self) -> Vec<PathBuf> {
        self.v1.iter().map(V1Cgroup::tasks_path).collect()
    }

    /// Read-only binds of the cgroup hierarchies the session is in, for the sandbox: its
    /// processes (host uid 0 when we are root) must not move themselves out of their cgroups.
    pub fn masks(&self) -> Vec<crate::sandbox::masks::MaskMount> {
        let mut out: Vec<crate::sandbox::masks::MaskMount> = Vec::new();
        if let Ok(c) = &self.v2 {
            out.push(c.read_only_root_mask());
        }
        for c in &self.v1 {
            if !out.iter().any(|m| m.path == c.mount) {
                out.push(crate::sandbox::masks::MaskMount {
                    path: c.mount.clone(),
                    kind: agent_supervisor_policy::MaskKind::ReadOnly,
                    is_dir: true,
                    rule: None,
                });
            }
        }
        out
    }

    /// A limit that was hit, if any (the cgroups' event counters are not zero).
    pub fn breach(&self) -> Option<EndReason> {
        let mut oom = 0;
        let mut pids_max = 0;
        if let (Ok(c), true) = (&self.v2, self.v2_limits) {
            oom += counter(&c.path().join("memory.events"), "oom_kill");
            oom += counter(&c.path().join("memory.events"), "oom_group_kill");
            pids_max += counter(&c.path().join("pids.events"), "max");
        }
        for c in &self.v1 {
            match c.controller {
                "memory" => oom += c.event_count(),
                "pids" => pids_max += c.event_count(),
                _ => {}
            }
        }
        if oom > 0 {
            return Some(EndReason::MemoryLimit(self.memory.unwrap_or(0)));
        }
        if pids_max > 0 {
            return Some(EndReason::ProcessLimit(self.processes.unwrap_or(0)));
        }
        None
    }

    /// Kill every process in the session's cgroups: `cgroup.kill` (Linux 5.14+) where it
    /// exists, else SIGKILL to each listed pid. A backstop: the processes of the session die
    /// with its init (PID namespace), this catches anything that did not.
    pub fn kill_all(&self) {
        if let Ok(c) = &self.v2 {
            let kill = c.path().join("cgroup.kill");
            if !(kill.exists() && std::fs::write(&kill, "1").is_ok()) {
                kill_listed(&c.procs_path());
            }
        }
        for c in &self.v1 {
            kill_listed(&c.procs_path());
        }
    }
}

/// SIGKILL every process listed in a `cgroup.procs`. Each pid is pinned with a pidfd first,
/// then signalled only if the file still lists it: a pid that was reused meanwhile by a process
/// outside the cgroup is never signalled.
fn kill_listed(procs: &Path) {
    let listed = || -> Vec<libc::pid_t> {
        sys::read_proc(procs)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let pinned: Vec<(libc::pid_t, OwnedFd)> = listed()
        .into_iter()
        .filter_map(|pid| sys::pidfd_open(pid).ok().map(|fd| (pid, fd)))
        .collect();
    if pinned.is_empty() {
        // The usual end: the cgroup emptied with init.
        return;
    }
    let still = listed();
    for (pid, fd) in pinned {
        if still.contains(&pid) {
            let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
        }
    }
}

/// `file:line:column`, or the flag name for limits given on the command line.
fn origin_text(o: &agent_supervisor_policy::Origin) -> String {
    if o.line == 0 {
        o.file.clone()
    } else {
        o.to_string()
    }
}

/// The thread that ends the session on timeout or when a limit is hit.
///
/// It sleeps in `poll(2)` until something happens, never on a clock of its own:
/// - the kernel's notification that a limit was hit: an inotify `IN_MODIFY` on the v2
///   `memory.events` / `pids.events` (the kernel notifies every change of those files), and the
///   v1 memory controller's OOM eventfd (`cgroup.event_control` on `memory.oom_control`);
/// - the session's deadline, as the poll's timeout;
/// - [`Watch::finish`]'s eventfd, so a session that ends costs no wait;
/// - the signals the supervisor forwards to the sandbox (a `signalfd`): the session's one
///   thread for everything that is not a system call of the agent.
///
/// One exception, measured on 6.18: the v1 pids controller's `pids.events` sends no
/// notification, and the v1 OOM eventfd fires before the kill is counted, so on a host whose
/// limits sit in cgroup v1 the counters are also read every [`V1_RECHECK`]. Pure cgroup v2
/// hosts never wake up for nothing.
pub struct Watch {
    stop: Arc<nix::sys::eventfd::EventFd>,
    /// What ended the session, sent once the thread has stopped watching (not joined: the
    /// session's tear-down need not wait for the thread's own exit).
    ended: std::sync::mpsc::Receiver<Option<EndReason>>,
}

/// How often the v1 counters are read (see [`Watch`]): only on hosts with v1 limits.
const V1_RECHECK: Duration = Duration::from_millis(250);

/// What wakes the watch thread, besides its stop eventfd and the deadline.
struct Wakers {
    /// IN_MODIFY on the v2 event files.
    inotify: Option<nix::sys::inotify::Inotify>,
    /// The v1 memory OOM eventfd, with the `memory.oom_control` fd it is registered on.
    oom: Option<(nix::sys::eventfd::EventFd, std::fs::File)>,
    /// Re-read the counters this often (v1 limits: see [`Watch`]).
    recheck: Option<Duration>,
}

impl Wakers {
    /// Set up the notifications of `limits`' cgroups (before the agent can hit a limit: the
    /// watch is spawned before the agent's first exec is allowed).
    fn new(limits: &SessionLimits) -> io::Result<Wakers> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let mut files = Vec::new();
        if let (Ok(c), true) = (&limits.v2, limits.v2_limits) {
            for f in ["memory.events", "pids.events"] {
                let path = c.path().join(f);
                if path.exists() {
                    files.push(path);
                }
            }
        }
        let inotify = if files.is_empty() {
            None
        } else {
            let ino = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
            for f in &files {
                ino.add_watch(f.as_path(), AddWatchFlags::IN_MODIFY)?;
            }
            Some(ino)
        };
        let mut oom = None;
        for c in limits.v1.iter().filter(|c| c.controller == "memory") {
            // Without it the v1 recheck still sees the OOM kill, later.
            match c.oom_eventfd() {
                Ok(e) => oom = Some(e),
                Err(e) => tracing::debug!(
                    "no v1 OOM notification ({e}): counters read every {V1_RECHECK:?}"
                ),
            }
        }
        Ok(Wakers {
            inotify,
            oom,
            recheck: (!limits.v1.is_empty()).then_some(V1_RECHECK),
        })
    }

    /// Read what woke us (the fds are non-blocking).
    fn drain(&self) {
        if let Some(ino) = &self.inotify {
            while ino.read_events().is_ok_and(|e| !e.is_empty()) {}
        }
        if let Some((efd, _)) = &self.oom {
            let _ = efd.read();
        }
    }
}

impl Watch {
    /// Start watching `limits` and the clock (`timeout`) for the sandbox whose init is `init`,
    /// and forwarding `forward` (blocked in every thread of the supervisor) to init.
    pub fn spawn(
        limits: Arc<SessionLimits>,
        init: Arc<OwnedFd>,
        timeout: Option<Duration>,
        forward: &[i32],
    ) -> io::Result<Watch> {
        use nix::sys::eventfd::{EfdFlags, EventFd};
        let stop = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        let wakers = Wakers::new(&limits)?;
        let signals = Forwarder::new(forward)?;
        let (ended_tx, ended) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new().name("limits".into()).spawn({
            let stop = Arc::clone(&stop);
            move || {
                let ended = watch(&limits, &init, timeout, &wakers, &signals, &stop);
                let _ = ended_tx.send(ended);
            }
        })?;
        Ok(Watch { stop, ended })
    }

    /// Stop the thread (the agent is gone) and say what ended the session, if it was us: its
    /// answer comes once it has stopped watching (a limit it was acting on is seen through),
    /// without waiting for the thread itself to exit.
    pub fn finish(self) -> Option<EndReason> {
        let _ = self.stop.write(1);
        self.ended.recv().ok().flatten()
    }
}

/// Wait until one of `fds` is readable or `until` passes (None: no deadline). True when an fd
/// is readable, false on the deadline.
fn wait_readable(fds: &[std::os::fd::BorrowedFd<'_>], until: Option<Instant>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let timeout = match until {
            None => PollTimeout::NONE,
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                // Rounded up: waking a little early would spin until the deadline.
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut pfds: Vec<PollFd<'_>> = fds
            .iter()
            .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
            .collect();
        match poll(&mut pfds, timeout) {
            Ok(0) => continue,
            Ok(_) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            // Can't wait: treat as woken, the caller re-reads the counters and the clock.
            Err(_) => return true,
        }
    }
}

/// The signals sent to the supervisor that go on to the sandbox's init (which forwards them
/// to the agent), read from a `signalfd`.
struct Forwarder(nix::sys::signalfd::SignalFd);

impl Forwarder {
    fn new(signals: &[i32]) -> io::Result<Forwarder> {
        use nix::sys::signal::{SigSet, Signal};
        use nix::sys::signalfd::{SfdFlags, SignalFd};
        let mut set = SigSet::empty();
        for &s in signals {
            set.add(Signal::try_from(s).map_err(io::Error::from)?);
        }
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        Ok(Forwarder(fd))
    }

    /// Forward what arrived (the fd is non-blocking).
    fn forward(&self, init: &OwnedFd) {
        while let Ok(Some(info)) = self.0.read_signal() {
            let (sig, code) = (info.ssi_signo as i32, info.ssi_code);
            // Terminal-generated SIGINT/SIGQUIT already reached the agent (same process
            // group); only what was sent to us with kill() is forwarded.
            if (sig == libc::SIGINT || sig == libc::SIGQUIT) && code != libc::SI_USER {
                continue;
            }
            let _ = sys::pidfd_send_signal(init.as_fd(), sig);
        }
    }
}

fn watch(
    limits: &SessionLimits,
    init: &OwnedFd,
    timeout: Option<Duration>,
    wakers: &Wakers,
    signals: &Forwarder,
    stop: &nix::sys::eventfd::EventFd,
) -> Option<EndReason> {
    let deadline = timeout.map(|t| (Instant::now() + t, t));
    let kill = || {
        let _ = sys::pidfd_send_signal(init.as_fd(), libc::SIGKILL);
        limits.kill_all();
    };
    let mut fds = vec![stop.as_fd(), signals.0.as_fd()];
    fds.extend(wakers.inotify.as_ref().map(|i| i.as_fd()));
    fds.extend(wakers.oom.as_ref().map(|(e, _)| e.as_fd()));
    let stopped = || stop.read().is_ok();
    loop {
        if let Some(r) = limits.breach() {
            tracing::info!("{}", r.message().unwrap_or_default());
            kill();
            return Some(r);
        }
        let recheck = wakers.recheck.map(|d| Instant::now() + d);
        let until = match (deadline.map(|(d, _)| d), recheck) {
            (Some(d), Some(r)) => Some(d.min(r)),
            (d, r) => d.or(r),
        };
        let woken = wait_readable(&fds, until);
        if woken {
            if stopped() {
                return None;
            }
            signals.forward(init);
            wakers.drain();
            continue;
        }
        if let Some((at, t)) = deadline {
            if Instant::now() >= at {
                // init forwards SIGTERM to the agent; when the agent exits, init does, and the
                // PID namespace with it.
                let _ = sys::pidfd_send_signal(init.as_fd(), libc::SIGTERM);
                let grace_end = Instant::now() + TIMEOUT_GRACE;
                // Signals still go on during the grace (a second SIGTERM, SIGINT sent with
                // kill()), as they did before the deadline.
                while wait_readable(&[stop.as_fd(), signals.0.as_fd()], Some(grace_end)) {
                    if stopped() {
                        break;
                    }
                    signals.forward(init);
                }
                kill();
                return Some(EndReason::Timeout(t));
            }
        }
    }
}

/// Can this host enforce `limits`' memory, processes and cpu (root, and each controller they
/// need in cgroup v2 or v1)? For `doctor`; `run` finds out by creating the cgroups.
pub fn host_can_enforce(limits: &Limits) -> Result<(), String> {
    let needed: Vec<&str> = [
        ("memory", limits.memory.value.is_some()),
        ("pids", limits.processes.value.is_some()),
        ("cpu", limits.cpu.value.is_some()),
    ]
    .into_iter()
    .filter_map(|(c, on)| on.then_some(c))
    .collect();
    if needed.is_empty() {
        return Ok(());
    }
    if sys::euid_egid().0 != 0 {
        return Err("not root: the session's cgroups cannot be created".into());
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let v2 = crate::cgroup::cgroup2_root_in(&mounts)
        .map(|r| std::fs::read_to_string(r.join("cgroup.controllers")).unwrap_or_default())
        .unwrap_or_default();
    let missing: Vec<&str> = needed
        .into_iter()
        .filter(|c| !v2.split_whitespace().any(|x| x == *c) && v1::mount_of(&mounts, c).is_none())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "no {} controller in cgroup v2 or v1",
            missing.join(", ")
        ))
    }
}

/// What this host can enforce, for `doctor`: one line.
pub fn doctor_line() -> (bool, String) {
    let root = sys::euid_egid().0 == 0;
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let v2 = crate::cgroup::cgroup2_root_in(&mounts)
        .map(|r| std::fs::read_to_string(r.join("cgroup.controllers")).unwrap_or_default())
        .unwrap_or_default();
    let mut parts = Vec::new();
    let mut all = true;
    for (key, controller) in CONTROLLERS {
        let place = if v2.split_whitespace().any(|c| c == controller) {
            "cgroup v2"
        } else if v1::mount_of(&mounts, controller).is_some() {
            "cgroup v1"
        } else {
            all = false;
            "no controller"
        };
        parts.push(format!("{key}: {place}"));
    }
    let ok = root && all;
    let v1_used = parts.iter().any(|p| p.ends_with("cgroup v1"));
    let text = format!(
        "{}{}; timeout and file_size: always{}",
        parts.join(", "),
        if root {
            ""
        } else {
            " (not root: cgroups cannot be created, these limits are not enforced)"
        },
        if v1_used && root {
            "; start-up: moving each session into its v1 cgroups waits for an RCU grace period \
             (10-15 ms for a session started after a pause), where on a cgroup v2 host sessions \
             are born in their cgroup"
        } else {
            ""
        }
    );
    (ok, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_end_reasons() {
        let dir = std::env::temp_dir().join(format!("limits-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("memory.events");
        std::fs::write(&f, "low 0\nhigh 0\nmax 12\noom 1\noom_kill 2\n").unwrap();
        assert_eq!(counter(&f, "oom_kill"), 2);
        assert_eq!(counter(&f, "max"), 12);
        assert_eq!(counter(&f, "absent"), 0);
        assert_eq!(counter(&dir.join("nope"), "max"), 0);
        std::fs::remove_dir_all(&dir).unwrap();

        assert_eq!(
            EndReason::Timeout(Duration::from_secs(90))
                .limit()
                .as_deref(),
            Some("1m 30s")
        );
        assert_eq!(EndReason::Timeout(Duration::ZERO).exit_code(), Some(124));
        assert_eq!(
            EndReason::MemoryLimit(64 << 20).limit().as_deref(),
            Some("64M")
        );
        assert_eq!(EndReason::MemoryLimit(1).as_str(), "memory-limit");
        assert_eq!(EndReason::ProcessLimit(1).exit_code(), Some(123));
        assert_eq!(EndReason::Exit.exit_code(), None);
        assert!(EndReason::Exit.message().is_none());
    }

    /// The parent gets the controller; the root only when it does not pass it down already
    /// (plain files stand in for cgroupfs: a write replaces the content).
    #[test]
    fn v2_controllers_are_enabled_in_the_root_only_where_missing() {
        let root = std::env::temp_dir().join(format!("limits-v2-{}", std::process::id()));
        let parent = root.join(crate::cgroup::PARENT_DIR);
        std::fs::create_dir_all(&parent).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::write(root.join("cgroup.subtree_control"), "memory\n").unwrap();
        std::fs::write(parent.join("cgroup.subtree_control"), "").unwrap();
        enable_v2_controller(&root, "memory").unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "memory\n"
        );
        assert_eq!(
            std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap(),
            "+memory"
        );
        enable_v2_controller(&root, "pids").unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
        let err = enable_v2_controller(&root, "io").unwrap_err();
        assert!(err.contains("has no io controller"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn host_memory_is_read() {
        assert!(host_memory().unwrap() > 1 << 20);
    }
}
