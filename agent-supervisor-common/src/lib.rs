//! What the eBPF programs (`agent-supervisor-ebpf`) and the supervisor must agree on: the
//! names of maps and programs in the eBPF object, map sizes and values, and the `#[repr(C)]`
//! records that cross the kernel/user boundary.
//!
//! `no_std`, so the eBPF crate can use it. The `user` feature adds [`aya::Pod`] impls for the
//! supervisor side. Every record has explicit padding and a compile-time size assertion, so
//! both sides see the same layout (see STYLE.md, principle 5).
#![no_std]

/// Names of the programs and maps in the eBPF object, as the supervisor looks them up
/// (`Ebpf::program_mut`, `Ebpf::map_mut`). Each equals the Rust item name in
/// `agent-supervisor-ebpf`, which is what aya names them after.
pub mod names {
    /// `tp_btf/sched_process_exec` program: the exec backstop and the exec event (Linux 5.5+
    /// for `tp_btf`, 5.3+ for `bpf_send_signal`).
    pub const SCHED_PROCESS_EXEC: &str = "sched_process_exec";
    /// `tp_btf/sched_process_fork` program: fork events.
    pub const SCHED_PROCESS_FORK: &str = "sched_process_fork";
    /// `tp_btf/sched_process_exit` program: exit events.
    pub const SCHED_PROCESS_EXIT: &str = "sched_process_exit";
    /// The process programs, each attached to the tracepoint of the same name.
    pub const PROCESS_PROGRAMS: [&str; 3] =
        [SCHED_PROCESS_EXEC, SCHED_PROCESS_FORK, SCHED_PROCESS_EXIT];
    /// Read-only global ([`KernelOffsets`](crate::KernelOffsets), set at load time): where
    /// the fields the process programs read sit in this kernel's structs (a host constant:
    /// part of the pinned set's id).
    pub const KERNEL_OFFSETS: &str = "KERNEL_OFFSETS";
    /// `HashMap<u64, SessionEntry>`: cgroup v2 id → [`SessionEntry`](crate::SessionEntry).
    /// The process and LSM programs act only on tasks of a cgroup that has an entry.
    pub const SESSIONS: &str = "SESSIONS";
    /// `Array<SetIdent>` with one slot: the full id of the pinned set, written last when the
    /// set is made (see `agent-supervisor/src/ebpf/pinned.rs`).
    pub const SET_IDENT: &str = "SET_IDENT";
    /// `HashMap<ExecApprovalKey, u8>`: execs the supervisor let continue, consumed by
    /// `sched_process_exec`.
    pub const EXEC_APPROVALS: &str = "EXEC_APPROVALS";
    /// `ArrayOfMaps<RingBuf>`: a fixed pool of [`RING_SLOTS`](crate::RING_SLOTS) ring
    /// buffers of [`ProcEvent`](crate::ProcEvent)s (each
    /// [`PROC_EVENTS_BYTES`](crate::PROC_EVENTS_BYTES)), filled once when the set is made; a
    /// session writes into the slot its [`SessionEntry`](crate::SessionEntry) names.
    pub const PROC_EVENTS: &str = "PROC_EVENTS";
    /// `HashMap<u32, u64>`: ring slot → the cgroup v2 id of the session that owns it
    /// (claimed with `BPF_NOEXIST`; never read by the programs).
    pub const SLOT_OWNERS: &str = "SLOT_OWNERS";
    /// The bpffs name of ring slot `i` in a pinned set's `maps/` is this prefix and `i`.
    pub const RING_PIN_PREFIX: &str = "ring-";
    /// `PerCpuHashMap<u64, u64>`: cgroup v2 id → events that did not fit in its ring buffer.
    pub const PROC_EVENTS_LOST: &str = "PROC_EVENTS_LOST";

    /// `cgroup/connect4` program (`cgroup_sock_addr`, Linux 4.17+).
    pub const CONNECT4: &str = "connect4";
    /// `cgroup/connect6` program (`cgroup_sock_addr`, Linux 4.17+).
    pub const CONNECT6: &str = "connect6";
    /// `cgroup/sendmsg4` program (`cgroup_sock_addr`, Linux 4.18+).
    pub const SENDMSG4: &str = "sendmsg4";
    /// `cgroup/sendmsg6` program (`cgroup_sock_addr`, Linux 4.18+).
    pub const SENDMSG6: &str = "sendmsg6";
    /// The four network programs, in the order the supervisor attaches them.
    pub const NETWORK_PROGRAMS: [&str; 4] = [CONNECT4, CONNECT6, SENDMSG4, SENDMSG6];
    /// `HashMap<u64, u32>`: cgroup v2 id → network mode ([`NET_MODE_ENFORCE`](crate::NET_MODE_ENFORCE)).
    pub const NET_MODE: &str = "NET_MODE";
    /// `HashMap<NetAllowKey, u8>`: exact destinations → [`NET_VERDICT_ALLOW`](crate::NET_VERDICT_ALLOW).
    pub const NET_ALLOW: &str = "NET_ALLOW";
    /// `LpmTrie<NetRuleKey, u8>`: CIDR rules → [`NET_VERDICT_ALLOW`](crate::NET_VERDICT_ALLOW).
    pub const NET_RULES: &str = "NET_RULES";
    /// `CgroupStorage<u64>`: per attached cgroup (and attach type), the session's cgroup v2
    /// id, written by the supervisor after it attaches the network programs (see
    /// [`NetAllowKey`](crate::NetAllowKey)).
    pub const NET_SESSION: &str = "NET_SESSION";
}

/// Capacity of `SESSIONS` and `PROC_EVENTS_LOST` (sessions running at once on the host).
pub const MAX_SESSIONS: u32 = 1024;

/// Ring buffers in the pinned set's pool (`PROC_EVENTS`, `SLOT_OWNERS`): sessions at once
/// that join the process programs without a map-of-maps write; a session finding all of
/// them taken by live sessions loads a private copy of the object. 32 × 256 KiB = 8 MiB of
/// kernel memory for the host, made once per boot (each slot's write waits for an RCU grace
/// period, ~20 ms).
pub const RING_SLOTS: u32 = 32;

/// Value of `SESSIONS`: what the programs need to know about one session.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionEntry {
    /// [`EXEC_ENFORCE`]: kill the session's execs without an approval; [`EXEC_REPORT`]:
    /// only report them.
    pub exec_mode: u32,
    /// The session's ring buffer: its index in `PROC_EVENTS`.
    pub slot: u32,
}

const _: () = assert!(core::mem::size_of::<SessionEntry>() == 8);

/// Value of `SET_IDENT`: the full SHA-256 of what the pinned set was made from (the object,
/// the kernel offsets, the crate version).
pub type SetIdent = [u8; 32];

/// Network mode of a session cgroup in `NET_MODE`: destinations are looked up in `NET_ALLOW`
/// and `NET_RULES`, anything else is refused (`EPERM`). A session cgroup without a mode entry
/// has every connect and send refused (fail closed).
pub const NET_MODE_ENFORCE: u32 = 1;

/// Value of an allowing entry in `NET_ALLOW` and `NET_RULES`. Any other value refuses.
pub const NET_VERDICT_ALLOW: u8 = 1;

/// Capacity of `NET_MODE` (session cgroups).
pub const MAX_NET_SESSIONS: u32 = 1024;
/// Capacity of `NET_ALLOW`: exact destinations, all sessions together. Each destination the
/// supervisor allows takes one entry for the rest of the session.
pub const MAX_NET_ALLOW: u32 = 65536;
/// Capacity of `NET_RULES`: CIDR entries, all sessions together.
pub const MAX_NET_RULES: u32 = 4096;

/// `NetRuleKey::port` of a rule that matches any port.
pub const NET_ANY_PORT: u32 = u32::MAX;

/// Bits of a [`NetRuleKey`] before the address (`cgroup_id` and `port`): every LPM prefix
/// covers them whole, so a rule only ever matches its own session and port.
pub const NET_RULE_FIXED_BITS: u32 = 96;

/// Key of `NET_ALLOW`: one exact destination of one session.
///
/// Addresses are IPv6; an IPv4 address is stored IPv4-mapped (`::ffff:a.b.c.d`), which is also
/// what `connect6`/`sendmsg6` see for a v4-mapped destination, so both spellings hit the same
/// entry. `port` is in host byte order, `protocol` is the socket's (`IPPROTO_TCP`,
/// `IPPROTO_UDP`, ...).
///
/// Why `cgroup_id` comes from `NET_SESSION` and not from `bpf_get_current_cgroup_id`: a
/// `cgroup_sock_addr` program runs for the *socket's* cgroup, but that helper names the
/// *calling task's*, and the supervisor makes the connects it allowed itself, on a duplicate
/// of the agent's socket. The programs are attached to each session cgroup; the cgroup
/// storage map `NET_SESSION` (`bpf_get_local_storage`, one value per attachment, Linux 5.9+
/// for storage shared by several programs) holds the id of the cgroup they were attached to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NetAllowKey {
    /// cgroup v2 id of the session.
    pub cgroup_id: u64,
    /// Destination address, IPv6 or IPv4-mapped, network byte order.
    pub ip: [u8; 16],
    /// Destination port, host byte order.
    pub port: u16,
    /// `IPPROTO_*` of the socket.
    pub protocol: u8,
    /// Explicit padding; always zero.
    pub _padding: [u8; 5],
}

const _: () = assert!(core::mem::size_of::<NetAllowKey>() == 32);
const _: () = assert!(core::mem::align_of::<NetAllowKey>() == 8);

/// Data of a `NET_RULES` LPM key (after the kernel's `u32` prefix length): one CIDR rule of one
/// session. The prefix length of a stored rule is [`NET_RULE_FIXED_BITS`] plus the IPv6 prefix
/// length of `ip` (IPv4 rules are stored IPv4-mapped: `10.0.0.0/8` is `::ffff:10.0.0.0/104`).
/// `port` is a port in host byte order or [`NET_ANY_PORT`]; the programs look up both.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NetRuleKey {
    /// cgroup v2 id of the session.
    pub cgroup_id: u64,
    /// Destination port (host byte order) or [`NET_ANY_PORT`].
    pub port: u32,
    /// Network address, IPv6 or IPv4-mapped, network byte order.
    pub ip: [u8; 16],
    /// Explicit padding (never inside a prefix); always zero.
    pub _padding: u32,
}

const _: () = assert!(core::mem::size_of::<NetRuleKey>() == 32);
const _: () = assert!(core::mem::align_of::<NetRuleKey>() == 8);

/// [`SessionEntry::exec_mode`] value: kill a session exec that has no approval.
pub const EXEC_ENFORCE: u32 = 1;
/// [`SessionEntry::exec_mode`] value: report execs only (the policy lets every program run, so the
/// supervisor does not trap execs and writes no approvals).
pub const EXEC_REPORT: u32 = 0;

/// Capacity of `EXEC_APPROVALS` (all sessions together). An approval lives from the
/// supervisor's `CONTINUE` to the exec's tracepoint (or the exec's failure), so only execs in
/// flight at the same time take entries.
pub const MAX_EXEC_APPROVALS: u32 = 4096;
/// Value of an entry in `EXEC_APPROVALS`.
pub const EXEC_APPROVED: u8 = 1;
/// Size of each session's ring buffer in `PROC_EVENTS`, in bytes (a power of two, a
/// multiple of the page size).
pub const PROC_EVENTS_BYTES: u32 = 256 * 1024;

/// Where the fields the process programs read sit in the running kernel's structs, in bytes,
/// found in `/sys/kernel/btf/vmlinux` by the supervisor (rustc emits no CO-RE relocations, so
/// the programs can't be relocated by the loader) and passed as [`names::KERNEL_OFFSETS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct linux_binprm`: `file` (`struct file *`).
    pub binprm_file: u32,
    /// `struct linux_binprm`: `filename` (`const char *`).
    pub binprm_filename: u32,
    /// `struct file`: `f_inode`.
    pub file_inode: u32,
    /// `struct inode`: `i_ino` (`unsigned long`).
    pub inode_ino: u32,
    /// `struct inode`: `i_sb`.
    pub inode_sb: u32,
    /// `struct super_block`: `s_dev` (`dev_t`, the kernel's `MAJOR << 20 | MINOR`).
    pub sb_dev: u32,
    /// `struct task_struct`: `pid` (thread id).
    pub task_pid: u32,
    /// `struct task_struct`: `tgid`.
    pub task_tgid: u32,
    /// `struct task_struct`: `real_parent`.
    pub task_real_parent: u32,
    /// `struct task_struct`: `exit_code` (a wait status).
    pub task_exit_code: u32,
    /// `struct task_struct`: `comm` (16 bytes).
    pub task_comm: u32,
    /// `struct task_struct`: `thread_pid` (`struct pid *`).
    pub task_thread_pid: u32,
    /// `struct pid`: `level` (depth of the task's PID namespace).
    pub pid_level: u32,
    /// `struct pid`: `numbers` (`struct upid[]`, one per namespace level).
    pub pid_numbers: u32,
    /// `struct upid`: `nr`.
    pub upid_nr: u32,
    /// `sizeof(struct upid)`.
    pub upid_size: u32,
    /// `struct file`: `f_mode` (`fmode_t`, 4 bytes).
    pub file_mode: u32,
    /// `struct file`: `f_path.dentry` (the offset of `f_path` plus `path.dentry`).
    pub file_dentry: u32,
    /// `struct dentry`: `d_name.name` (the offset of `d_name` plus `qstr.name`).
    pub dentry_name: u32,
    /// `struct inode`: `i_nlink` (`unsigned int`; 0 for memfd, `O_TMPFILE` and deleted files).
    pub inode_nlink: u32,
}

const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 80);

impl KernelOffsets {
    /// How many offsets there are (every field is a `u32`).
    pub const COUNT: usize = 20;

    /// The offsets in field order (for caching them).
    pub fn to_array(&self) -> [u32; Self::COUNT] {
        [
            self.binprm_file,
            self.binprm_filename,
            self.file_inode,
            self.inode_ino,
            self.inode_sb,
            self.sb_dev,
            self.task_pid,
            self.task_tgid,
            self.task_real_parent,
            self.task_exit_code,
            self.task_comm,
            self.task_thread_pid,
            self.pid_level,
            self.pid_numbers,
            self.upid_nr,
            self.upid_size,
            self.file_mode,
            self.file_dentry,
            self.dentry_name,
            self.inode_nlink,
        ]
    }

    /// The inverse of [`KernelOffsets::to_array`].
    pub fn from_array(a: [u32; Self::COUNT]) -> KernelOffsets {
        let [binprm_file, binprm_filename, file_inode, inode_ino, inode_sb, sb_dev, task_pid, task_tgid, task_real_parent, task_exit_code, task_comm, task_thread_pid, pid_level, pid_numbers, upid_nr, upid_size, file_mode, file_dentry, dentry_name, inode_nlink] =
            a;
        KernelOffsets {
            binprm_file,
            binprm_filename,
            file_inode,
            inode_ino,
            inode_sb,
            sb_dev,
            task_pid,
            task_tgid,
            task_real_parent,
            task_exit_code,
            task_comm,
            task_thread_pid,
            pid_level,
            pid_numbers,
            upid_nr,
            upid_size,
            file_mode,
            file_dentry,
            dentry_name,
            inode_nlink,
        }
    }
}
const _: () = assert!(KernelOffsets::COUNT * 4 == core::mem::size_of::<KernelOffsets>());

/// Key of `EXEC_APPROVALS`: "thread `tid` may finish an exec of the file `(dev, ino)`".
///
/// `tid` is the thread that called `execve`, as the supervisor got it from the seccomp
/// notification, which is what the `sched_process_exec` tracepoint passes as `old_pid`: by the
/// time it fires, a non-leader thread's exec has gone through `de_thread` and the task already
/// carries the thread-group leader's pid. `dev` is the kernel's `dev_t` (`MAJOR << 20 |
/// MINOR`, as in `super_block::s_dev`), not the userspace `st_dev` encoding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExecApprovalKey {
    /// `inode::i_ino` of the executed file (for `#!` scripts: the final interpreter).
    pub ino: u64,
    /// `super_block::s_dev` of its filesystem, kernel encoding.
    pub dev: u32,
    /// The exec'ing thread (host PID namespace).
    pub tid: u32,
}

const _: () = assert!(core::mem::size_of::<ExecApprovalKey>() == 16);

/// [`ProcEvent::kind`]: a successful exec (`sched_process_exec`).
pub const PROC_EXEC: u32 = 1;
/// [`ProcEvent::kind`]: a new process (`sched_process_fork`; new threads are not reported).
pub const PROC_FORK: u32 = 2;
/// [`ProcEvent::kind`]: a process ended (`sched_process_exit` of its thread-group leader).
pub const PROC_EXIT: u32 = 3;
/// A BPF LSM program refused to open a file ([`INODE_DENY_READ`]/[`INODE_DENY_WRITE`]).
pub const PROC_LSM_OPEN: u32 = 4;
/// A BPF LSM program refused an exec (a denied inode, or a file without a name).
pub const PROC_LSM_EXEC: u32 = 5;
/// A BPF LSM program refused an executable mapping of a denied inode (`ld.so ./tool`).
pub const PROC_LSM_MMAP: u32 = 6;

/// [`ProcEvent::flags`]: the exec had no approval and was killed with `SIGKILL` before the
/// new image ran.
pub const PROC_FLAG_KILLED: u32 = 1;
/// [`ProcEvent::flags`]: the exec had an approval (consumed).
pub const PROC_FLAG_APPROVED: u32 = 2;
/// [`ProcEvent::flags`]: `bpf_send_signal` failed for an unapproved exec.
pub const PROC_FLAG_KILL_FAILED: u32 = 4;
/// An LSM refusal of an open for writing.
pub const PROC_FLAG_WRITE: u32 = 8;
/// An LSM refusal of an exec of a file without a name (memfd, `O_TMPFILE`, deleted).
pub const PROC_FLAG_UNNAMED: u32 = 16;

/// Length of [`ProcEvent::filename`].
/// Names of the BPF LSM programs and the map they read.
pub mod lsm_names {
    pub const FILE_OPEN: &str = "file_open";
    pub const BPRM_CHECK: &str = "bprm_check_security";
    pub const MMAP_FILE: &str = "mmap_file";
    /// (program name, LSM hook) of every BPF LSM program.
    pub const PROGRAMS: [(&str, &str); 3] = [
        (FILE_OPEN, "file_open"),
        (BPRM_CHECK, "bprm_check_security"),
        (MMAP_FILE, "mmap_file"),
    ];
    pub const INODE_DENY: &str = "INODE_DENY";
    /// Map: directories whose whole tree a session may not open ([`TreeKey`](crate::TreeKey)).
    pub const DENIED_TREES: &str = "DENIED_TREES";
    /// Map: one [`TreeOffsets`](crate::TreeOffsets), the `dentry` fields the tree walk reads.
    pub const TREE_OFFSETS: &str = "TREE_OFFSETS";
}

/// Entries of `DENIED_TREES` (directories, over every session sharing the programs).
pub const MAX_DENIED_TREES: u32 = 16384;
/// How many ancestors of an opened file `lsm/file_open` looks up in `DENIED_TREES` (a bounded
/// loop the verifier accepts): a file deeper than this below a denied directory is refused by
/// its mount mask (and its inode, when it existed at start) only.
pub const MAX_TREE_DEPTH: u32 = 16;

/// Key of `DENIED_TREES`: directory `(dev, ino)` denied to the session whose cgroup v2 id is
/// `cgroup_id` (as `bpf_get_current_cgroup_id` returns it), so that one copy of the programs
/// can serve several sessions. Value: `INODE_DENY_*` bits for every file below it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TreeKey {
    pub cgroup_id: u64,
    /// `inode::i_ino` of the directory.
    pub ino: u64,
    /// `super_block::s_dev` of its filesystem, kernel encoding.
    pub dev: u32,
    pub _padding: u32,
}

const _: () = assert!(core::mem::size_of::<TreeKey>() == 24);

/// Where `lsm/file_open`'s tree walk finds a dentry's parent and inode in the running kernel
/// (from its BTF, like [`KernelOffsets`]). All zero: no tree walk.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeOffsets {
    /// `struct dentry`: `d_parent`.
    pub dentry_parent: u32,
    /// `struct dentry`: `d_inode`.
    pub dentry_inode: u32,
}

const _: () = assert!(core::mem::size_of::<TreeOffsets>() == 8);

/// Entries of `INODE_DENY` (every session's files, by inode).
pub const MAX_INODE_DENY: u32 = 65536;
/// `INODE_DENY` value bits: opening the file at all is refused.
pub const INODE_DENY_READ: u32 = 1;
/// Opening the file for writing is refused.
pub const INODE_DENY_WRITE: u32 = 2;
/// Executing the file, or mapping it executable, is refused.
pub const INODE_DENY_EXEC: u32 = 4;

/// Key of `INODE_DENY`: a file of one session as the kernel knows it (the session's cgroup v2
/// id, `s_dev` in kernel encoding, `i_ino`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub cgroup_id: u64,
    pub ino: u64,
    pub dev: u32,
    pub _padding: u32,
}

const _: () = assert!(core::mem::size_of::<InodeKey>() == 24);

pub const PROC_FILENAME_LEN: usize = 256;

/// One process event of a session, written into `PROC_EVENTS` by the process programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcEvent {
    /// [`PROC_EXEC`], [`PROC_FORK`] or [`PROC_EXIT`].
    pub kind: u32,
    /// `PROC_FLAG_*` bits (exec only).
    pub flags: u32,
    /// cgroup v2 id of the task that fired the tracepoint.
    pub cgroup_id: u64,
    /// Process (thread-group) id, host PID namespace. Fork: the new process.
    pub pid: u32,
    /// Thread id, host PID namespace. Exec: the thread that called exec (`old_pid`).
    pub tid: u32,
    /// Parent process id, host PID namespace. Fork: the forking process.
    pub ppid: u32,
    /// The process id in its own (the sandbox's) PID namespace.
    pub ns_pid: u32,
    /// Exit: `task_struct::exit_code`, a wait status. Otherwise 0.
    pub exit_status: u32,
    /// Exec: `dev` of the executed file (kernel encoding). Otherwise 0.
    pub dev: u32,
    /// Exec: inode number of the executed file. Otherwise 0.
    pub ino: u64,
    /// `task_struct::comm`, NUL-padded.
    pub comm: [u8; 16],
    /// Exec: `linux_binprm::filename` (the path given to exec), NUL-terminated. Otherwise empty.
    pub filename: [u8; PROC_FILENAME_LEN],
}

const _: () = assert!(core::mem::size_of::<ProcEvent>() == 64 + PROC_FILENAME_LEN);
const _: () = assert!(core::mem::align_of::<ProcEvent>() == 8);

// SAFETY: `ProcEvent`, `ExecApprovalKey` and `KernelOffsets` are `#[repr(C)]`, `Copy`, made
// only of integers and byte arrays, with no implicit padding (the size assertions above pin
// it), so every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ProcEvent {}
// SAFETY: as for `ProcEvent`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ExecApprovalKey {}
// SAFETY: as for `ProcEvent`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for KernelOffsets {}

// SAFETY: `#[repr(C)]`, `Copy`, integers and byte arrays only, padding explicit (the size
// assertion pins the layout): every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for NetAllowKey {}

// SAFETY: as for `NetAllowKey`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for NetRuleKey {}

// SAFETY: as for `NetAllowKey`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for InodeKey {}

// SAFETY: as for `NetAllowKey`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for SessionEntry {}

// SAFETY: as for `NetAllowKey`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for TreeKey {}

// SAFETY: as for `NetAllowKey`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for TreeOffsets {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_records_have_no_hidden_padding() {
        assert_eq!(core::mem::offset_of!(ExecApprovalKey, dev), 8);
        assert_eq!(core::mem::offset_of!(ExecApprovalKey, tid), 12);
        assert_eq!(core::mem::offset_of!(ProcEvent, cgroup_id), 8);
        assert_eq!(core::mem::offset_of!(ProcEvent, ino), 40);
        assert_eq!(core::mem::offset_of!(ProcEvent, comm), 48);
        assert_eq!(core::mem::offset_of!(ProcEvent, filename), 64);
        assert_eq!(core::mem::offset_of!(KernelOffsets, upid_size), 60);
    }

    #[test]
    fn tree_keys_have_no_hidden_padding() {
        assert_eq!(core::mem::offset_of!(TreeKey, ino), 8);
        assert_eq!(core::mem::offset_of!(TreeKey, dev), 16);
        assert_eq!(core::mem::offset_of!(TreeKey, _padding), 20);
        assert_eq!(core::mem::offset_of!(TreeOffsets, dentry_inode), 4);
    }

    #[test]
    fn network_keys_have_no_hidden_padding() {
        assert_eq!(core::mem::offset_of!(NetAllowKey, ip), 8);
        assert_eq!(core::mem::offset_of!(NetAllowKey, port), 24);
        assert_eq!(core::mem::offset_of!(NetAllowKey, protocol), 26);
        assert_eq!(core::mem::offset_of!(NetAllowKey, _padding), 27);
        assert_eq!(core::mem::offset_of!(NetRuleKey, port), 8);
        assert_eq!(core::mem::offset_of!(NetRuleKey, ip), 12);
        assert_eq!(core::mem::offset_of!(NetRuleKey, _padding), 28);
        // The fixed part of an LPM prefix is exactly cgroup_id + port.
        assert_eq!(
            NET_RULE_FIXED_BITS as usize,
            8 * core::mem::offset_of!(NetRuleKey, ip)
        );
    }
}
