//! The process programs: the in-kernel exec backstop and the session's process events.
//!
//! ```text
//!  exec decided "allow" (supervise/exec.rs) ──▶ guard: ExecApprovals::approve(tid, dev, ino)
//!      ──▶ EXEC_APPROVALS ──▶ CONTINUE ──▶ kernel execs ──▶ tp_btf/sched_process_exec
//!            (tid, bprm->file's dev+ino) approved? consume it : SIGKILL before the new image runs
//!  sched_process_{exec,fork,exit} of session tasks (SESSIONS[cgid]) ──▶ the ring buffer of
//!      the session's slot (PROC_EVENTS[slot]) ──▶ EventReader thread (drops other cgroups'
//!      records) ──▶ audit records
//!      {"source": "ebpf", "kind": "proc-exec", ...}
//!  ring buffer full ──▶ PROC_EVENTS_LOST[cgid] (per CPU) ──▶ session-end "ebpf_events_lost"
//! ```
//!
//! The userspace exec guard checks the new image through `/proc` at `PTRACE_EVENT_EXEC`; this
//! makes the kernel check the file it really executes, keyed by the thread the supervisor let
//! continue, so a raced path or a bypassed guard still can't run anything unapproved. Every
//! exec of a session is trapped when the backstop enforces (the policy has exec rules or a
//! non-allow default), including the agent's first one; with a policy that lets every
//! program run, nothing is trapped and the program only reports ([`ExecMode::Report`]).
//!
//! Identity: the kernel compares `super_block::s_dev` (kernel `dev_t`, `MAJOR << 20 | MINOR`)
//! and `inode::i_ino`. `stat`'s `st_dev` is not always `s_dev` (btrfs subvolumes, some
//! overlayfs setups), so [`kernel_file_id`] takes both from the kernel's own view of the
//! supervisor's fd: `mnt_id` and `ino` from `/proc/self/fdinfo`, the mount's `s_dev` from the
//! agent's `mountinfo`.
//!
//! Kernel: `tp_btf` (5.5+), `bpf_send_signal` (5.3+), ring buffer (5.8+), BTF in
//! `/sys/kernel/btf/vmlinux`; tracefs is not needed. The supervisor must be in the initial
//! PID namespace (the tracepoint reports global thread ids).
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use agent_supervisor_common::{
    names, ExecApprovalKey, ProcEvent, SessionEntry, EXEC_APPROVED, EXEC_ENFORCE, EXEC_REPORT,
    PROC_EXEC, PROC_EXIT, PROC_FLAG_APPROVED, PROC_FLAG_KILLED, PROC_FLAG_KILL_FAILED,
    PROC_FLAG_UNNAMED, PROC_FLAG_WRITE, PROC_FORK, PROC_LSM_EXEC, PROC_LSM_MMAP, PROC_LSM_OPEN,
};
use aya::maps::{HashMap, Map, MapData, PerCpuHashMap, PerCpuValues, RingBuf};

use super::session::{error_chain, map_error, BackstopError, ExecMode, Session};
use crate::audit::{Audit, Record};

/// A file as the exec tracepoint sees it: (`s_dev` in kernel encoding, `i_ino`).
pub type KernelFileId = (u32, u64);

/// The kernel's `dev_t` for a userspace `st_dev` (the inverse of `sys::userspace_dev`).
pub fn kernel_dev(st_dev: u64) -> u32 {
    let (major, minor) = (libc::major(st_dev), libc::minor(st_dev));
    (major << 20) | (minor & 0xf_ffff)
}

/// The kernel's identity of the file open at `fd` in this process, a file of the mount
/// namespace of process `tgid`. Falls back to `stat`'s `(st_dev, st_ino)` where `/proc`
/// doesn't say (then the two agree on every common filesystem).
pub fn kernel_file_id(fd: BorrowedFd<'_>, tgid: i32, stat: (u64, u64)) -> KernelFileId {
    KernelFileIds::default().of(fd, tgid, stat)
}

/// [`kernel_file_id`] for every exec of a session, with each mount's `s_dev` remembered: the
/// agent's mount table is read once, not at every exec. (Mount ids are not reused while the
/// mount exists; a stale entry after the host replaces a mount can only make the kernel
/// refuse an exec, never approve another file: the guard checks the file itself too.)
#[derive(Debug, Default)]
pub struct KernelFileIds {
    devs: std::collections::HashMap<u64, u32>,
}

impl KernelFileIds {
    /// The kernel's identity of the file open at `fd`, a file of the mount namespace of
    /// process `tgid` (see [`kernel_file_id`]).
    pub fn of(&mut self, fd: BorrowedFd<'_>, tgid: i32, stat: (u64, u64)) -> KernelFileId {
        let fallback = (kernel_dev(stat.0), stat.1);
        let Some((mnt_id, ino)) = fd_mount_and_inode(fd) else {
            return fallback;
        };
        let ino = ino.unwrap_or(stat.1);
        if let Some(&dev) = self.devs.get(&mnt_id) {
            return (dev, ino);
        }
        for path in [
            format!("/proc/{tgid}/mountinfo"),
            "/proc/self/mountinfo".into(),
        ] {
            let Ok(text) = std::fs::read_to_string(path) else {
                continue;
            };
            self.devs.extend(mount_devs(&text));
            if let Some(&dev) = self.devs.get(&mnt_id) {
                return (dev, ino);
            }
        }
        (fallback.0, ino)
    }
}

/// The mount id and inode number of the file open at `fd` (`/proc/self/fdinfo`).
fn fd_mount_and_inode(fd: BorrowedFd<'_>) -> Option<(u64, Option<u64>)> {
    let fdinfo = crate::sys::read_proc(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    let field = |name: &str| {
        fdinfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((field("mnt_id:")?, field("ino:")))
}

/// Every mount's id and `s_dev` (kernel encoding) in a `mountinfo` text.
fn mount_devs(mountinfo: &str) -> impl Iterator<Item = (u64, u32)> + '_ {
    mountinfo.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let id = fields.next()?.parse::<u64>().ok()?;
        let (major, minor) = fields.nth(1)?.split_once(':')?;
        Some((
            id,
            (major.parse::<u32>().ok()? << 20) | minor.parse::<u32>().ok()?,
        ))
    })
}

/// The `s_dev` (kernel encoding) of mount `mnt_id` in a `mountinfo` text.
#[cfg(test)]
fn mount_dev(mountinfo: &str, mnt_id: u64) -> Option<u32> {
    mount_devs(mountinfo).find_map(|(id, dev)| (id == mnt_id).then_some(dev))
}

/// The one writer of the session's exec approvals (the exec guard thread owns it).
pub struct ExecApprovals {
    map: HashMap<MapData, ExecApprovalKey, u8>,
}

impl ExecApprovals {
    fn key(tid: u32, (dev, ino): KernelFileId) -> ExecApprovalKey {
        ExecApprovalKey { ino, dev, tid }
    }

    /// Call right before letting thread `tid` (host PID namespace, as in the seccomp
    /// notification) continue an exec of `file`. An error means the kernel would kill the
    /// exec: refuse it instead.
    pub fn approve(&mut self, tid: u32, file: KernelFileId) -> io::Result<()> {
        self.map
            .insert(Self::key(tid, file), EXEC_APPROVED, 0)
            .map_err(|e| io::Error::other(format!("writing {}: {e}", names::EXEC_APPROVALS)))
    }

    /// Remove an approval the exec did not use (it failed, or the thread died first).
    pub fn withdraw(&mut self, tid: u32, file: KernelFileId) {
        let _ = self.map.remove(&Self::key(tid, file));
    }

    /// Is an approval still there (not consumed by an exec)?
    pub fn is_pending(&self, tid: u32, file: KernelFileId) -> bool {
        self.map.get(&Self::key(tid, file), 0).is_ok()
    }
}

/// The session's event ring buffer and lost-event counter, before its reader starts.
pub struct ProcEvents {
    ring: RingBuf<MapData>,
    lost: PerCpuHashMap<MapData, u64, u64>,
    cgroup_id: u64,
}

/// Is this process in the initial PID namespace (one level in `NSpid`)?
fn in_initial_pid_namespace() -> bool {
    crate::sys::read_proc("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .is_some_and(|ids| ids.split_whitespace().count() == 1)
    })
}

/// Join the session to the process programs (exec backstop in the session's [`ExecMode`]):
/// the ring buffer of its slot is opened and emptied, a zero lost counter goes into
/// `PROC_EVENTS_LOST`, then its `SESSIONS` entry with the slot (from which moment the
/// programs act on its cgroup). The entries are removed when the session ends (the slot is
/// freed after them, see [`Session`]). The approvals writer is `None` in report mode.
pub fn attach(session: &mut Session) -> Result<(Option<ExecApprovals>, ProcEvents), BackstopError> {
    let enforce = session.exec_mode() == ExecMode::Enforce;
    if enforce && !in_initial_pid_namespace() {
        return Err(BackstopError::NestedPidNamespace);
    }
    session.offsets()?;
    session.ensure_process_programs()?;
    let cgroup_id = session.cgroup().id();
    let approvals = HashMap::try_from(session.take_map(names::EXEC_APPROVALS)?)
        .map_err(map_error("opening", names::EXEC_APPROVALS))?;

    // The session's ring: its slot in the pinned pool (emptied of what a previous owner of
    // the slot left: the reader would drop it anyway, as it drops any record of another
    // cgroup), or a private copy's own.
    let (slot, ring) = session.ring()?;
    let mut ring =
        RingBuf::try_from(Map::RingBuf(ring)).map_err(map_error("opening", names::PROC_EVENTS))?;
    let mut stale = 0usize;
    while ring.next().is_some() {
        stale += 1;
    }
    if stale > 0 {
        tracing::debug!("ebpf: dropped {stale} records a previous owner left in ring slot {slot}");
    }
    let mut lost: PerCpuHashMap<MapData, u64, u64> =
        PerCpuHashMap::try_from(session.take_map(names::PROC_EVENTS_LOST)?)
            .map_err(map_error("opening", names::PROC_EVENTS_LOST))?;
    let zeros = PerCpuValues::try_from(vec![
        0u64;
        aya::util::nr_cpus().map_err(|(_, e)| {
            BackstopError::Map {
                step: "counting CPUs for",
                map: names::PROC_EVENTS_LOST,
                source: aya::maps::MapError::IoError(e),
            }
        })?
    ])
    .map_err(|e| BackstopError::Map {
        step: "making the zero counters of",
        map: names::PROC_EVENTS_LOST,
        source: aya::maps::MapError::IoError(e),
    })?;
    lost.insert(cgroup_id, zeros, 0).map_err(map_error(
        "writing the session's counter into",
        names::PROC_EVENTS_LOST,
    ))?;
    let mut sessions: HashMap<MapData, u64, SessionEntry> =
        HashMap::try_from(session.take_map(names::SESSIONS)?)
            .map_err(map_error("opening", names::SESSIONS))?;
    let entry = SessionEntry {
        exec_mode: if enforce { EXEC_ENFORCE } else { EXEC_REPORT },
        slot,
    };
    sessions.insert(cgroup_id, entry, 0).map_err(map_error(
        "writing the session's entry into",
        names::SESSIONS,
    ))?;
    if let Some(lost_map) = session.shared_map(names::PROC_EVENTS_LOST)? {
        session.on_end(move || {
            // SESSIONS first: from then on the programs ignore the cgroup.
            let _ = sessions.remove(&cgroup_id);
            if let Ok(mut lost) = PerCpuHashMap::<MapData, u64, u64>::try_from(lost_map) {
                let _ = lost.remove(&cgroup_id);
            }
        });
    }
    tracing::debug!(
        "process programs serve cgroup {cgroup_id} (exec {:?})",
        session.exec_mode()
    );
    Ok((
        enforce.then_some(ExecApprovals { map: approvals }),
        ProcEvents {
            ring,
            lost,
            cgroup_id,
        },
    ))
}

/// Does this kernel's verifier accept the process programs (the exec backstop among them)?
/// Loads them in a copy of the object for no session, attaches nothing (`doctor`).
pub fn probe() -> Result<(), String> {
    super::session::probe(|ebpf, btf| super::session::load_process_programs(ebpf, btf, false))
}

/// The line `run` prints when the exec backstop is off although execs are checked.
pub fn weaker_line(cause: &str) -> String {
    format!(
        "the in-kernel exec backstop is off ({cause}): executed files are checked by the \
         supervisor's exec guard only, not by the kernel"
    )
}

/// [`attach`] as `run` wants it: the parts, or the line saying what is weaker.
pub fn start_session(session: &mut Session) -> Result<(Option<ExecApprovals>, ProcEvents), String> {
    attach(session).map_err(|e| weaker_line(&error_chain(&e)))
}

/// A decoded [`ProcEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcRecord {
    /// `proc-exec`, `proc-fork` or `proc-exit`.
    pub kind: &'static str,
    pub event: ProcEvent,
}

impl ProcRecord {
    /// Decode one ring-buffer record (None for a short or unknown one).
    pub fn decode(bytes: &[u8]) -> Option<ProcRecord> {
        if bytes.len() < std::mem::size_of::<ProcEvent>() {
            return None;
        }
        // Field by field: the ring buffer gives no alignment guarantee to rely on here.
        let u32_at = |o: usize| u32::from_ne_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_ne_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let event = ProcEvent {
            kind: u32_at(0),
            flags: u32_at(4),
            cgroup_id: u64_at(8),
            pid: u32_at(16),
            tid: u32_at(20),
            ppid: u32_at(24),
            ns_pid: u32_at(28),
            exit_status: u32_at(32),
            dev: u32_at(36),
            ino: u64_at(40),
            comm: bytes[48..64].try_into().expect("16 bytes"),
            filename: bytes[64..64 + agent_supervisor_common::PROC_FILENAME_LEN]
                .try_into()
                .expect("filename bytes"),
        };
        let kind = match event.kind {
            PROC_EXEC => "proc-exec",
            PROC_FORK => "proc-fork",
            PROC_EXIT => "proc-exit",
            PROC_LSM_OPEN => "file-open",
            PROC_LSM_EXEC => "exec",
            PROC_LSM_MMAP => "mmap-exec",
            _ => return None,
        };
        Some(ProcRecord { kind, event })
    }

    /// A refusal of a BPF LSM program?
    pub fn lsm_denial(&self) -> bool {
        matches!(
            self.event.kind,
            PROC_LSM_OPEN | PROC_LSM_EXEC | PROC_LSM_MMAP
        )
    }

    /// Killed by the exec backstop?
    pub fn killed(&self) -> bool {
        self.event.kind == PROC_EXEC && self.event.flags & PROC_FLAG_KILLED != 0
    }

    /// The audit record for session `session`.
    pub fn to_audit(&self, session: &str) -> Record {
        let e = &self.event;
        let text = |b: &[u8]| {
            String::from_utf8_lossy(&b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())])
                .into_owned()
        };
        let mut action = serde_json::json!({
            "pid": e.pid,
            "tid": e.tid,
            "ppid": e.ppid,
            "ns_pid": e.ns_pid,
            "cgroup_id": e.cgroup_id,
            "comm": text(&e.comm),
        });
        let fields = action.as_object_mut().expect("object");
        match e.kind {
            PROC_EXEC => {
                fields.insert("filename".into(), text(&e.filename).into());
                fields.insert(
                    "dev".into(),
                    format!("{}:{}", e.dev >> 20, e.dev & 0xf_ffff).into(),
                );
                fields.insert("ino".into(), e.ino.into());
                if e.flags & (PROC_FLAG_APPROVED | PROC_FLAG_KILLED) != 0 {
                    fields.insert("approved".into(), (!self.killed()).into());
                }
            }
            PROC_LSM_OPEN | PROC_LSM_EXEC | PROC_LSM_MMAP => {
                // The file's name: the dentry's (open, mmap) or the exec's filename.
                fields.insert("name".into(), text(&e.filename).into());
                fields.insert(
                    "dev".into(),
                    format!("{}:{}", e.dev >> 20, e.dev & 0xf_ffff).into(),
                );
                fields.insert("ino".into(), e.ino.into());
                match e.kind {
                    PROC_LSM_OPEN => {
                        fields.insert("write".into(), (e.flags & PROC_FLAG_WRITE != 0).into());
                    }
                    PROC_LSM_EXEC => {
                        fields.insert("unnamed".into(), (e.flags & PROC_FLAG_UNNAMED != 0).into());
                    }
                    _ => {}
                }
            }
            PROC_EXIT => {
                let status = e.exit_status as i32;
                if libc::WIFSIGNALED(status) {
                    fields.insert("signal".into(), libc::WTERMSIG(status).into());
                } else {
                    fields.insert("exit_code".into(), libc::WEXITSTATUS(status).into());
                }
            }
            _ => {}
        }
        let mut record = Record::session(session, e.pid as i32, self.kind, action);
        record.source = Some("ebpf".into());
        if self.lsm_denial() {
            record.decision = Some("deny".into());
            record.decided_by = Some("ebpf-lsm".into());
            record.reason = Some(match e.kind {
                PROC_LSM_EXEC if e.flags & PROC_FLAG_UNNAMED != 0 => {
                    "executed a file without a name (memfd, O_TMPFILE or deleted): refused by the kernel".into()
                }
                PROC_LSM_EXEC => "executed a denied file: refused by the kernel (BPF LSM)".into(),
                PROC_LSM_MMAP => {
                    "mapped a denied program executable: refused by the kernel (BPF LSM)".into()
                }
                _ => "opened a denied file: refused by the kernel (BPF LSM)".into(),
            });
        }
        if self.killed() {
            record.decision = Some("deny".into());
            record.decided_by = Some("ebpf-exec-backstop".into());
            record.reason = Some(if e.flags & PROC_FLAG_KILL_FAILED != 0 {
                "executed a file without an approval; bpf_send_signal(SIGKILL) failed".into()
            } else {
                "executed a file without an approval: killed before its first instruction".into()
            });
        }
        record
    }
}

/// The reader thread of a session's events; [`EventReader::finish`] stops it.
pub struct EventReader {
    stop: Arc<AtomicBool>,
    /// Written by `finish` to wake the thread out of its poll at once (session end is on
    /// every run's critical path).
    wake: std::fs::File,
    /// The count of lost events, sent once the thread has read the last record (not joined:
    /// the tear-down need not wait for the thread to unmap the ring and exit).
    lost: std::sync::mpsc::Receiver<u64>,
}

impl ProcEvents {
    /// Start the thread that writes every event into `audit` as a record of `session`.
    pub fn spawn(self, session: String, audit: Audit) -> io::Result<EventReader> {
        self.spawn_with(move |record| {
            if record.killed() {
                let e = &record.event;
                let what = String::from_utf8_lossy(
                    &e.filename[..e.filename.iter().position(|&c| c == 0).unwrap_or(0)],
                )
                .into_owned();
                tracing::warn!("the exec backstop killed pid {}: {what}", e.pid);
                eprintln!(
                    "agent-supervisor: the kernel killed the agent process {}: it executed {what} \
                     without an approval",
                    e.pid
                );
            }
            if record.lsm_denial() {
                let e = &record.event;
                let name = String::from_utf8_lossy(
                    &e.filename[..e.filename.iter().position(|&c| c == 0).unwrap_or(0)],
                )
                .into_owned();
                eprintln!(
                    "agent-supervisor: denied by the kernel (BPF LSM): {} of {name} (inode {}) by pid {}",
                    record.kind, e.ino, e.pid
                );
            }
            audit.record(record.to_audit(&session));
        })
    }

    /// Start the reader thread, handing each decoded event to `sink`.
    pub fn spawn_with(
        mut self,
        mut sink: impl FnMut(ProcRecord) + Send + 'static,
    ) -> io::Result<EventReader> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let (woken, wake) = crate::sys::pipe()?;
        let (lost_tx, lost) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("ebpf-events".into())
            .spawn(move || {
                // Each event wakes this thread: it must not take the CPU from the agent.
                crate::sys::batch_scheduling_this_thread();
                let _ = lost_tx.send(self.read_until_stopped(&mut sink, &stopping, &woken));
            })?;
        Ok(EventReader {
            stop,
            wake: wake.into(),
            lost,
        })
    }

    /// The reader thread's loop: every record to `sink` until `stopping` is set and the ring
    /// is empty; returns the count of lost events.
    fn read_until_stopped(
        &mut self,
        sink: &mut impl FnMut(ProcRecord),
        stopping: &AtomicBool,
        woken: &OwnedFd,
    ) -> u64 {
        loop {
            let last = stopping.load(Ordering::SeqCst);
            while let Some(item) = self.ring.next() {
                match ProcRecord::decode(&item) {
                    // A record of another cgroup: left by a previous owner of the slot.
                    Some(record) if record.event.cgroup_id != self.cgroup_id => {}
                    Some(record) => sink(record),
                    None => tracing::warn!("undecodable eBPF event ({} bytes)", item.len()),
                }
            }
            if last {
                return self.lost();
            }
            // Records are submitted with the kernel's default wake-up (when the reader has
            // caught up), and the ring is polled for what is already there: sleeping until
            // a record or the stop loses nothing.
            let _ = crate::sys::poll_fds(
                &[
                    (self.ring.as_fd(), libc::POLLIN),
                    (woken.as_fd(), libc::POLLIN),
                ],
                -1,
            );
        }
    }

    /// Events the programs could not write (all CPUs).
    fn lost(&self) -> u64 {
        self.lost
            .get(&self.cgroup_id, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}

impl EventReader {
    /// Read what is left in the ring buffer and stop; returns how many events were lost
    /// (did not fit in the ring buffer) over the session.
    pub fn finish(self) -> u64 {
        use std::io::Write as _;
        self.stop.store(true, Ordering::SeqCst);
        // The pipe stays readable once written: the thread drains the ring and returns.
        let _ = (&self.wake).write_all(b"x");
        self.lost.recv().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dev_is_major_shifted_by_20() {
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(0, 300)), 300);
        assert_eq!(
            crate::sys::userspace_dev(kernel_dev(libc::makedev(259, 70000))),
            libc::makedev(259, 70000)
        );
    }

    #[test]
    fn mount_dev_reads_major_minor_of_the_mount() {
        let mi = "22 1 0:21 / /proc rw - proc proc rw\n24 1 254:0 / / rw - ext4 /dev/vda rw\n";
        assert_eq!(mount_dev(mi, 24), Some(254 << 20));
        assert_eq!(mount_dev(mi, 22), Some(21));
        assert_eq!(mount_dev(mi, 99), None);
    }

    #[test]
    fn kernel_file_id_of_an_open_file_matches_stat_on_ordinary_filesystems() {
        let f = std::fs::File::open("/proc/self/exe").expect("open");
        let md = f.metadata().expect("stat");
        use std::os::unix::fs::MetadataExt as _;
        let id = kernel_file_id(f.as_fd(), std::process::id() as i32, (md.dev(), md.ino()));
        assert_eq!(id.1, md.ino());
        assert_eq!(crate::sys::userspace_dev(id.0), md.dev());
    }

    #[test]
    fn events_decode_into_audit_records() {
        let mut event = ProcEvent {
            kind: PROC_EXEC,
            flags: PROC_FLAG_KILLED,
            cgroup_id: 7,
            pid: 10,
            tid: 11,
            ppid: 9,
            ns_pid: 2,
            exit_status: 0,
            dev: (8 << 20) | 1,
            ino: 42,
            comm: [0; 16],
            filename: [0; agent_supervisor_common::PROC_FILENAME_LEN],
        };
        event.comm[..2].copy_from_slice(b"sh");
        event.filename[..7].copy_from_slice(b"/bin/sh");
        let mut bytes = Vec::new();
        for v in [event.kind, event.flags] {
            bytes.extend_from_slice(&v.to_ne_bytes());
        }
        bytes.extend_from_slice(&event.cgroup_id.to_ne_bytes());
        for v in [
            event.pid,
            event.tid,
            event.ppid,
            event.ns_pid,
            event.exit_status,
            event.dev,
        ] {
            bytes.extend_from_slice(&v.to_ne_bytes());
        }
        bytes.extend_from_slice(&event.ino.to_ne_bytes());
        bytes.extend_from_slice(&event.comm);
        bytes.extend_from_slice(&event.filename);
        let record = ProcRecord::decode(&bytes).expect("decodes");
        assert_eq!(record.event, event);
        let audit = serde_json::to_value(record.to_audit("s1")).expect("json");
        assert_eq!(audit["source"], "ebpf");
        assert_eq!(audit["kind"], "proc-exec");
        assert_eq!(audit["pid"], 10);
        assert_eq!(audit["action"]["filename"], "/bin/sh");
        assert_eq!(audit["action"]["dev"], "8:1");
        assert_eq!(audit["action"]["approved"], false);
        assert_eq!(audit["decision"], "deny");

        event.kind = PROC_EXIT;
        event.exit_status = 3 << 8;
        let exit = ProcRecord {
            kind: "proc-exit",
            event,
        };
        let audit = serde_json::to_value(exit.to_audit("s1")).expect("json");
        assert_eq!(audit["action"]["exit_code"], 3);
        assert!(ProcRecord::decode(&bytes[..10]).is_none());
    }
}
