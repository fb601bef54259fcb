//! The eBPF programs of agent-supervisor, built for `bpfel-unknown-none` by
//! `agent-supervisor/build.rs` (through `aya_build`) and embedded in the supervisor
//! (`agent-supervisor/src/ebpf/mod.rs`). The supervisor loads them once per host (a set pinned
//! under bpffs, see `agent-supervisor/src/ebpf/pinned.rs`) and every session joins by writing
//! map entries keyed by its cgroup v2 id: [`SESSIONS`] says which cgroups are sessions.
//!
//! - [`sched_process_exec`], [`sched_process_fork`], [`sched_process_exit`]: `tp_btf` programs
//!   (Linux 5.5+) on the scheduler's process tracepoints. For tasks of a session cgroup only
//!   (an entry in [`SESSIONS`]), they write a [`ProcEvent`] into that session's ring buffer
//!   (Linux 5.8+): the slot of the array of maps [`PROC_EVENTS`] its entry names, counting in
//!   the session's [`PROC_EVENTS_LOST`] entry what does not fit. `sched_process_exec` is also the exec backstop: when
//!   the session's exec mode is `EXEC_ENFORCE`, an exec whose (thread, file) is not in
//!   [`EXEC_APPROVALS`] gets `SIGKILL` (`bpf_send_signal`, Linux 5.3+) before the new image
//!   runs a single instruction; an approval is consumed by the exec it allows. The tracepoint
//!   fires after the new image is set up (`exec_binprm`), before `PTRACE_EVENT_EXEC` and
//!   before the return to user space. Struct fields are read with `bpf_probe_read_kernel` at
//!   the offsets in [`KERNEL_OFFSETS`], which the supervisor found in the running kernel's BTF
//!   (rustc emits no CO-RE relocations).
//! - [`connect4`], [`connect6`], [`sendmsg4`], [`sendmsg6`]: `cgroup_sock_addr` programs
//!   (Linux 4.17 for connect, 4.18 for sendmsg) attached to each session's cgroup v2 directory
//!   (never to the root). The session is the id in [`NET_SESSION`], the cgroup storage of the
//!   attachment (Linux 5.9+). They see the address the kernel is about to use and return 1 (go
//!   on) only when it is in the session's `NET_ALLOW` (exact destination) or `NET_RULES` (CIDR
//!   rule) map;
//!   0 makes the call fail with `EPERM`. TCP/UDP port 53 passes only through an exact entry
//!   (the session's DNS resolver). They only look up: the supervisor writes every entry
//!   (see `agent-supervisor/src/ebpf/network.rs`).
//!
//! - [`file_open`], [`bprm_check_security`], [`mmap_file`]: BPF LSM programs (Linux 5.7+,
//!   `bpf` in the active LSMs) for the sessions' tasks. They refuse with `EACCES` what the
//!   session's entries in [`INODE_DENY`] (filled by the supervisor from the policy's denied files and
//!   commands) says about the inode really opened, executed or mapped executable, so no path
//!   trick (hard link, `/proc/self/fd`, rename, `ld.so ./tool`) gets around them; in
//!   `EXEC_ENFORCE` mode an exec of a file without a name (memfd, `O_TMPFILE`) is refused too.
//!   `file_open` also walks up to `MAX_TREE_DEPTH` ancestors (`d_parent`, offsets in
//!   [`TREE_OFFSETS`]) and refuses a file below a directory of [`DENIED_TREES`], so a file
//!   created in or renamed into a denied directory after the start is refused too.
//!   Each refusal is reported in the session's ring buffer.
//!
//! On the host this file compiles to an empty program (so `cargo clippy --workspace` works):
//! `no_main`, `no_std` and the panic handler apply only to the BPF target.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

use core::ffi::c_void;

use agent_supervisor_common::{
    ExecApprovalKey, InodeKey, KernelOffsets, NetAllowKey, NetRuleKey, ProcEvent, SessionEntry,
    SetIdent, TreeKey, TreeOffsets, EXEC_ENFORCE, INODE_DENY_EXEC, INODE_DENY_READ,
    INODE_DENY_WRITE, MAX_DENIED_TREES, MAX_EXEC_APPROVALS, MAX_INODE_DENY, MAX_NET_ALLOW,
    MAX_NET_RULES, MAX_NET_SESSIONS, MAX_SESSIONS, MAX_TREE_DEPTH, NET_ANY_PORT, NET_MODE_ENFORCE,
    NET_RULE_FIXED_BITS, NET_VERDICT_ALLOW, PROC_EVENTS_BYTES, PROC_EXEC, PROC_EXIT,
    PROC_FILENAME_LEN, PROC_FLAG_APPROVED, PROC_FLAG_KILLED, PROC_FLAG_KILL_FAILED,
    PROC_FLAG_UNNAMED, PROC_FLAG_WRITE, PROC_FORK, PROC_LSM_EXEC, PROC_LSM_MMAP, PROC_LSM_OPEN,
    RING_SLOTS,
};
#[allow(deprecated)]
use aya_ebpf::btf_maps::CgroupStorage;
use aya_ebpf::btf_maps::{ArrayOfMaps, RingBuf};
use aya_ebpf::helpers::generated::{bpf_probe_read_kernel, bpf_probe_read_kernel_str};
use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_send_signal};
use aya_ebpf::macros::{btf_map, btf_tracepoint, cgroup_sock_addr, lsm, map};
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::maps::{Array, HashMap, LpmTrie, PerCpuHashMap};
use aya_ebpf::programs::{BtfTracePointContext, LsmContext, SockAddrContext};

/// The sessions: cgroup v2 id → exec mode and ring slot. Written by each supervisor for its
/// own session (after it claimed its slot in `SLOT_OWNERS`), removed at its end.
#[map]
static SESSIONS: HashMap<u64, SessionEntry> = HashMap::with_max_entries(MAX_SESSIONS, 0);

/// The full id of the pinned set (never read by the programs): a set whose slot does not
/// hold what the supervisor expects is stale or foreign and is never used.
#[map]
static SET_IDENT: Array<SetIdent> = Array::with_max_entries(1, 0);

/// Field offsets in this kernel's structs, set at load time from its BTF.
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    binprm_file: 0,
    binprm_filename: 0,
    file_inode: 0,
    inode_ino: 0,
    inode_sb: 0,
    sb_dev: 0,
    task_pid: 0,
    task_tgid: 0,
    task_real_parent: 0,
    task_exit_code: 0,
    task_comm: 0,
    task_thread_pid: 0,
    pid_level: 0,
    pid_numbers: 0,
    upid_nr: 0,
    upid_size: 0,
    file_mode: 0,
    file_dentry: 0,
    dentry_name: 0,
    inode_nlink: 0,
};

/// Execs the supervisor let continue (thread, file) → `EXEC_APPROVED`; deleted by the exec
/// they allow.
#[map]
static EXEC_APPROVALS: HashMap<ExecApprovalKey, u8> =
    HashMap::with_max_entries(MAX_EXEC_APPROVALS, 0);

/// The pool of ring buffers, one per slot, filled once when the set is made (a private copy
/// fills slot 0). A session's `SESSIONS` entry names its slot; records carry the cgroup id,
/// so a reader drops whatever another session (a previous owner of the slot) left there.
#[btf_map]
static PROC_EVENTS: ArrayOfMaps<
    RingBuf<ProcEvent, { PROC_EVENTS_BYTES as usize }>,
    { RING_SLOTS as usize },
> = ArrayOfMaps::new();

/// Ring slot → the cgroup v2 id of the session owning it. Only the supervisors use it (they
/// claim a slot with `BPF_NOEXIST`); it lives here so it is pinned with the set.
#[map]
static SLOT_OWNERS: HashMap<u32, u64> = HashMap::with_max_entries(RING_SLOTS, 0);

/// Per session (cgroup v2 id), per CPU: events that found the session's ring buffer full.
/// The supervisor writes the zero entry with the session's `SESSIONS` entry.
#[map]
static PROC_EVENTS_LOST: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(MAX_SESSIONS, 0);

const SIGKILL: u32 = 9;

/// The current task's session: its cgroup id and its `SESSIONS` entry, when it has one.
#[inline(always)]
fn session_cgroup() -> Option<(u64, *mut SessionEntry)> {
    // SAFETY: a BPF helper without arguments, allowed in tracing programs since 4.18.
    let current = unsafe { bpf_get_current_cgroup_id() };
    SESSIONS.get_ptr_mut(current).map(|entry| (current, entry))
}

#[inline(always)]
fn offsets() -> KernelOffsets {
    // SAFETY: a read of a global the loader sets before the program is loaded (it lives in
    // .rodata: volatile so the compiler doesn't fold the placeholder zeros).
    unsafe { core::ptr::read_volatile(&KERNEL_OFFSETS) }
}

/// The session's exec mode (`EXEC_ENFORCE` or `EXEC_REPORT`).
#[inline(always)]
fn exec_mode(session: *mut SessionEntry) -> u32 {
    // SAFETY: `session` comes from a successful lookup in SESSIONS (a map value the verifier
    // knows the size of); the supervisor writes it before the session's first task runs.
    unsafe { (*session).exec_mode }
}

/// Read a `T` at kernel address `base + offset`; zero when it can't be read (a null pointer
/// along a chain of reads ends as zeros, which never match an approval).
#[inline(always)]
fn read<T: Copy + Default>(base: u64, offset: u32) -> T {
    if base == 0 {
        return T::default();
    }
    let mut value = T::default();
    // SAFETY: bpf_probe_read_kernel copies size_of::<T>() bytes from any kernel address into
    // `value` (a local of that size), failing cleanly on a bad address.
    let r = unsafe {
        bpf_probe_read_kernel(
            (&mut value as *mut T).cast::<c_void>(),
            core::mem::size_of::<T>() as u32,
            (base + offset as u64) as *const c_void,
        )
    };
    if r < 0 {
        T::default()
    } else {
        value
    }
}

/// The process id of `task` in its own (innermost) PID namespace.
#[inline(always)]
fn ns_pid(o: &KernelOffsets, task: u64) -> u32 {
    let pid: u64 = read(task, o.task_thread_pid);
    let level: u32 = read(pid, o.pid_level);
    // Bounded so the multiplication stays small (PID namespaces nest at most 32 deep).
    let level = (level & 63) as u64;
    let upid = pid + o.pid_numbers as u64 + level * o.upid_size as u64;
    read::<i32>(upid, o.upid_nr) as u32
}

/// Reserve an event in the session's ring buffer and fill the fields common to all kinds;
/// None (and the session's lost counter incremented) when the buffer is full or missing.
// Inlined, like every helper here: Linux 6.1's verifier cannot follow a ring-buffer
// reservation through a subprogram's return value (the caller's null check of the returned
// entry is not pruned, so it sees an "unreleased reference" on that path) and does not take
// pointers to the stack as subprogram arguments.
#[inline(always)]
fn start_event(
    o: &KernelOffsets,
    kind: u32,
    (cgroup_id, session): (u64, *mut SessionEntry),
    task: u64,
) -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<ProcEvent>> {
    // SAFETY: `session` comes from a successful lookup in SESSIONS (see `exec_mode`).
    let slot = unsafe { (*session).slot };
    let ring = PROC_EVENTS.get(slot);
    let reserved = match ring {
        Some(ring) => ring.reserve(0),
        None => None,
    };
    let Some(mut entry) = reserved else {
        if let Some(lost) = PROC_EVENTS_LOST.get_ptr_mut(cgroup_id) {
            // SAFETY: the pointer comes from a successful lookup of this CPU's u64 value; a
            // per-CPU value is not written concurrently (the program runs with migration
            // disabled).
            unsafe { *lost += 1 };
        }
        return None;
    };
    let parent: u64 = read(task, o.task_real_parent);
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at the reserved, writable ProcEvent-sized record; every field is
    // written through raw pointers (never read) before the record is submitted.
    unsafe {
        (*event).kind = kind;
        (*event).flags = 0;
        (*event).cgroup_id = cgroup_id;
        (*event).pid = read::<i32>(task, o.task_tgid) as u32;
        (*event).tid = read::<i32>(task, o.task_pid) as u32;
        (*event).ppid = read::<i32>(parent, o.task_tgid) as u32;
        (*event).ns_pid = ns_pid(o, task);
        (*event).exit_status = 0;
        (*event).dev = 0;
        (*event).ino = 0;
        (*event).comm = read::<[u8; 16]>(task, o.task_comm);
        (*event).filename[0] = 0;
    }
    Some(entry)
}

/// `sched_process_exec(task, old_pid, bprm)`: the exec backstop and the exec event.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> u32 {
    let Some(session) = session_cgroup() else {
        return 0;
    };
    let o = offsets();
    let task = ctx.arg::<*const c_void>(0) as u64;
    let old_pid: i32 = ctx.arg(1);
    let bprm = ctx.arg::<*const c_void>(2) as u64;
    let file: u64 = read(bprm, o.binprm_file);
    let (ino, dev) = inode_id(&o, read(file, o.file_inode));
    let key = ExecApprovalKey {
        ino,
        dev,
        tid: old_pid as u32,
    };
    let mut flags = 0;
    if exec_mode(session.1) == EXEC_ENFORCE {
        if EXEC_APPROVALS.get_ptr(key).is_some() {
            let _ = EXEC_APPROVALS.remove(key);
            flags = PROC_FLAG_APPROVED;
        } else {
            // SAFETY: a helper taking a signal number; allowed in tracing programs (5.3+). It
            // signals the current task's whole process: the one that just exec'd.
            let sent = unsafe { bpf_send_signal(SIGKILL) };
            flags = if sent == 0 {
                PROC_FLAG_KILLED
            } else {
                PROC_FLAG_KILLED | PROC_FLAG_KILL_FAILED
            };
        }
    }
    let Some(mut entry) = start_event(&o, PROC_EXEC, session, task) else {
        return 0;
    };
    let event = entry.as_mut_ptr();
    let filename: u64 = read(bprm, o.binprm_filename);
    // SAFETY: as in `start_event`; bpf_probe_read_kernel_str writes at most
    // PROC_FILENAME_LEN bytes (NUL included) into the record's filename array.
    unsafe {
        (*event).flags = flags;
        (*event).tid = old_pid as u32;
        (*event).dev = dev;
        (*event).ino = ino;
        let dst = core::ptr::addr_of_mut!((*event).filename).cast::<c_void>();
        if bpf_probe_read_kernel_str(dst, PROC_FILENAME_LEN as u32, filename as *const c_void) < 0 {
            (*event).filename[0] = 0;
        }
    }
    entry.submit(0);
    0
}

/// `sched_process_fork(parent, child)`: a new process (threads are not reported).
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> u32 {
    let Some(session) = session_cgroup() else {
        return 0;
    };
    let o = offsets();
    let child = ctx.arg::<*const c_void>(1) as u64;
    if read::<i32>(child, o.task_pid) != read::<i32>(child, o.task_tgid) {
        return 0;
    }
    if let Some(entry) = start_event(&o, PROC_FORK, session, child) {
        entry.submit(0);
    }
    0
}

/// `sched_process_exit(task, ...)`: a process ended (its thread-group leader exits).
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> u32 {
    let Some(session) = session_cgroup() else {
        return 0;
    };
    let o = offsets();
    let task = ctx.arg::<*const c_void>(0) as u64;
    if read::<i32>(task, o.task_pid) != read::<i32>(task, o.task_tgid) {
        return 0;
    }
    let status: i32 = read(task, o.task_exit_code);
    if let Some(mut entry) = start_event(&o, PROC_EXIT, session, task) {
        // SAFETY: as in `start_event`.
        unsafe { (*entry.as_mut_ptr()).exit_status = status as u32 };
        entry.submit(0);
    }
    0
}

/// The sessions' files by (session, inode) (`InodeKey`) → `INODE_DENY_*` bits, written by
/// each supervisor before its agent starts (`agent-supervisor/src/ebpf/lsm.rs`).
#[map]
static INODE_DENY: HashMap<InodeKey, u32> = HashMap::with_max_entries(MAX_INODE_DENY, 0);

/// Directories whose whole tree a session may not open (`TreeKey`: session cgroup, dev, ino)
/// → `INODE_DENY_*` bits, written by the supervisor before the agent starts. Unlike
/// `INODE_DENY` this covers files created in, or renamed into, such a directory later.
/// Not preallocated: most sessions write a handful of entries, and every load would otherwise
/// allocate all of them.
#[map]
static DENIED_TREES: HashMap<TreeKey, u32> =
    HashMap::with_max_entries(MAX_DENIED_TREES, BPF_F_NO_PREALLOC);

/// `BPF_F_NO_PREALLOC` (include/uapi/linux/bpf.h).
const BPF_F_NO_PREALLOC: u32 = 1;

/// The `dentry` offsets of the tree walk (slot 0), from the running kernel's BTF; zero until
/// the supervisor writes them, and then no walk happens.
#[map]
static TREE_OFFSETS: Array<TreeOffsets> = Array::with_max_entries(1, 0);

/// `fmode_t` bits (include/linux/fs.h).
const FMODE_WRITE: u32 = 0x2;
const FMODE_EXEC: u32 = 0x20;
/// `PROT_EXEC` (mmap protection).
const PROT_EXEC: u64 = 0x4;
/// What an LSM hook returns to refuse (`-EACCES`, as a permission check does).
const EACCES: i32 = 13;

/// An inode as the kernel names it: (`i_ino`, its filesystem's `s_dev`).
#[inline(always)]
fn inode_id(o: &KernelOffsets, inode: u64) -> (u64, u32) {
    let sb: u64 = read(inode, o.inode_sb);
    (read(inode, o.inode_ino), read(sb, o.sb_dev))
}

/// The file behind `file` as the kernel names it: (`s_dev`, `i_ino`), and its link count.
#[inline(always)]
fn inode_of(o: &KernelOffsets, cgroup_id: u64, file: u64) -> (InodeKey, u32) {
    let inode: u64 = read(file, o.file_inode);
    let (ino, dev) = inode_id(o, inode);
    let key = InodeKey {
        cgroup_id,
        ino,
        dev,
        _padding: 0,
    };
    (key, read(inode, o.inode_nlink))
}

#[inline(always)]
fn inode_deny(key: &InodeKey) -> u32 {
    match INODE_DENY.get_ptr(key) {
        // SAFETY: the pointer comes from a successful lookup of a u32 value.
        Some(bits) => unsafe { *bits },
        None => 0,
    }
}

/// Report a refusal of an LSM program: `kind`, the file, and `name` (a kernel string: the
/// dentry's name or the exec's filename).
#[inline(always)]
fn report_denial(
    o: &KernelOffsets,
    kind: u32,
    session: (u64, *mut SessionEntry),
    key: &InodeKey,
    flags: u32,
    name: u64,
) {
    // SAFETY: a helper without arguments returning the current task_struct's address.
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() };
    let Some(mut entry) = start_event(o, kind, session, task) else {
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: as in `start_event`; the string copy is bounded by the filename array.
    unsafe {
        (*event).flags = flags;
        (*event).dev = key.dev;
        (*event).ino = key.ino;
        let dst = core::ptr::addr_of_mut!((*event).filename).cast::<c_void>();
        if bpf_probe_read_kernel_str(dst, PROC_FILENAME_LEN as u32, name as *const c_void) < 0 {
            (*event).filename[0] = 0;
        }
    }
    entry.submit(0);
}

/// The `INODE_DENY_*` bits of the nearest ancestor directory of `file` (up to
/// `MAX_TREE_DEPTH` levels of `d_parent`, within its mount's filesystem) that is in
/// `DENIED_TREES` for session `cgroup_id`; 0 when none is.
#[inline(always)]
fn tree_deny(o: &KernelOffsets, cgroup_id: u64, file: u64) -> u32 {
    let Some(t) = TREE_OFFSETS.get(0) else {
        return 0;
    };
    let (parent_at, inode_at) = (t.dentry_parent, t.dentry_inode);
    if parent_at == 0 || inode_at == 0 {
        return 0;
    }
    let mut dentry: u64 = read(file, o.file_dentry);
    for _ in 0..MAX_TREE_DEPTH {
        let parent: u64 = read(dentry, parent_at);
        // The root of a filesystem is its own parent.
        if parent == 0 || parent == dentry {
            return 0;
        }
        let (ino, dev) = inode_id(o, read(parent, inode_at));
        let key = TreeKey {
            cgroup_id,
            ino,
            dev,
            _padding: 0,
        };
        if let Some(bits) = DENIED_TREES.get_ptr(&key) {
            // SAFETY: the pointer comes from a successful lookup of a u32 value.
            return unsafe { *bits };
        }
        dentry = parent;
    }
    0
}

/// The last component of `file`'s path (its dentry's name).
#[inline(always)]
fn dentry_name(o: &KernelOffsets, file: u64) -> u64 {
    let dentry: u64 = read(file, o.file_dentry);
    read(dentry, o.dentry_name)
}

/// `lsm/file_open(file)`: a session task opening a file the session may not read (or, for a
/// write open, write; for an exec open, execute) gets `EACCES`, whatever path, hard link or
/// `/proc/self/fd` reopen it came through.
#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(1);
    if earlier != 0 {
        return earlier;
    }
    let Some(session) = session_cgroup() else {
        return 0;
    };
    let o = offsets();
    let file = ctx.arg::<*const c_void>(0) as u64;
    let (key, _) = inode_of(&o, session.0, file);
    let mut deny = inode_deny(&key);
    if deny & INODE_DENY_READ == 0 {
        // Below a denied directory, even if it got there after the start.
        deny |= tree_deny(&o, session.0, file);
    }
    if deny == 0 {
        return 0;
    }
    let mode: u32 = read(file, o.file_mode);
    let exec = deny & INODE_DENY_EXEC != 0 && mode & FMODE_EXEC != 0;
    let write = deny & INODE_DENY_WRITE != 0 && mode & FMODE_WRITE != 0;
    if !exec && !write && deny & INODE_DENY_READ == 0 {
        return 0;
    }
    // The kernel opens a program for exec (and an ELF interpreter) with FMODE_EXEC, before
    // bprm_check_security: reported as the exec it stops.
    let (kind, flags) = if exec {
        (PROC_LSM_EXEC, 0)
    } else if mode & FMODE_WRITE != 0 {
        (PROC_LSM_OPEN, PROC_FLAG_WRITE)
    } else {
        (PROC_LSM_OPEN, 0)
    };
    report_denial(&o, kind, session, &key, flags, dentry_name(&o, file));
    -EACCES
}

/// `lsm/bprm_check_security(bprm)`: a session task executing a denied inode, or (when every
/// exec is decided) a file without a name (`i_nlink == 0`: memfd, `O_TMPFILE`, deleted)
/// gets `EACCES`. Runs for each stage of a `#!` chain.
#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(1);
    if earlier != 0 {
        return earlier;
    }
    let Some(session) = session_cgroup() else {
        return 0;
    };
    let o = offsets();
    let bprm = ctx.arg::<*const c_void>(0) as u64;
    let file: u64 = read(bprm, o.binprm_file);
    let (key, nlink) = inode_of(&o, session.0, file);
    let denied = inode_deny(&key) & INODE_DENY_EXEC != 0;
    let unnamed = nlink == 0 && exec_mode(session.1) == EXEC_ENFORCE;
    if !denied && !unnamed {
        return 0;
    }
    let name: u64 = read(bprm, o.binprm_filename);
    let flags = if denied { 0 } else { PROC_FLAG_UNNAMED };
    report_denial(&o, PROC_LSM_EXEC, session, &key, flags, name);
    -EACCES
}

/// `lsm/mmap_file(file, reqprot, prot, flags)`: an executable mapping of a denied inode (how
/// `ld.so ./tool` runs a program without exec'ing it) gets `EACCES`.
#[lsm(hook = "mmap_file")]
pub fn mmap_file(ctx: LsmContext) -> i32 {
    let earlier: i32 = ctx.arg(4);
    if earlier != 0 {
        return earlier;
    }
    let prot: u64 = ctx.arg(2);
    if prot & PROT_EXEC == 0 {
        return 0;
    }
    let file = ctx.arg::<*const c_void>(0) as u64;
    if file == 0 {
        return 0;
    }
    let Some(session) = session_cgroup() else {
        return 0;
    };
    let o = offsets();
    let (key, _) = inode_of(&o, session.0, file);
    if inode_deny(&key) & INODE_DENY_EXEC == 0 {
        return 0;
    }
    report_denial(&o, PROC_LSM_MMAP, session, &key, 0, dentry_name(&o, file));
    -EACCES
}

/// cgroup v2 id → network mode (`NET_MODE_ENFORCE`). No entry: everything refused.
#[map]
static NET_MODE: HashMap<u64, u32> = HashMap::with_max_entries(MAX_NET_SESSIONS, 0);

/// Exact destinations the supervisor allowed (by rule, a human or session memory) →
/// `NET_VERDICT_ALLOW`.
#[map]
static NET_ALLOW: HashMap<NetAllowKey, u8> = HashMap::with_max_entries(MAX_NET_ALLOW, 0);

/// CIDR allow rules of the policy (cgroup id + port + network prefix) → `NET_VERDICT_ALLOW`.
/// Only allowing entries exist, so "the longest prefix that matches allows" is the same as
/// "some rule allows".
#[map]
static NET_RULES: LpmTrie<NetRuleKey, u8> = LpmTrie::with_max_entries(MAX_NET_RULES, 0);

/// The session a network program's attachment serves: the cgroup v2 id the supervisor wrote
/// into the storage of each attachment (0, refusing everything, until it has).
#[btf_map]
#[allow(deprecated)]
static NET_SESSION: CgroupStorage<u64> = CgroupStorage::new();

/// `connect()` on an IPv4 socket (TCP, UDP, ICMP ping).
#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    decide(&ctx, ipv4_destination(&ctx))
}

/// `connect()` on an IPv6 socket, v4-mapped destinations included.
#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    decide(&ctx, ipv6_destination(&ctx))
}

/// `sendto()`/`sendmsg()` with a destination on an unconnected IPv4 UDP socket (and on an
/// IPv6 one sending to an `AF_INET` or v4-mapped address: the kernel hands those to IPv4).
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    decide(&ctx, ipv4_destination(&ctx))
}

/// `sendto()`/`sendmsg()` with a destination on an unconnected IPv6 UDP socket.
#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    decide(&ctx, ipv6_destination(&ctx))
}

/// 1: the kernel goes on; 0: the call fails with EPERM.
const PROCEED: i32 = 1;
const REFUSE: i32 = 0;

/// The destination an IPv4 hook sees, as an IPv4-mapped IPv6 address (network byte order).
/// The family field is not checked: IPv4 UDP reads an `AF_UNSPEC` address as `AF_INET`.
fn ipv4_destination(ctx: &SockAddrContext) -> [u8; 16] {
    // SAFETY: `sock_addr` is the context pointer the kernel passed to this program;
    // `user_ip4` is a readable 4-byte field of `struct bpf_sock_addr` in every
    // cgroup_sock_addr program (the verifier checks and rewrites context loads).
    let ip4 = unsafe { (*ctx.sock_addr).user_ip4 }.to_ne_bytes();
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ip4[0], ip4[1], ip4[2], ip4[3],
    ]
}

/// The destination an IPv6 hook sees (network byte order); a v4-mapped address stays mapped,
/// which is how IPv4 destinations are stored.
fn ipv6_destination(ctx: &SockAddrContext) -> [u8; 16] {
    let mut ip = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        // SAFETY: as in `ipv4_destination`; `user_ip6` is read one 4-byte word at a time,
        // the access size the verifier allows for it.
        let word = unsafe { (*ctx.sock_addr).user_ip6[i] }.to_ne_bytes();
        ip[i * 4] = word[0];
        ip[i * 4 + 1] = word[1];
        ip[i * 4 + 2] = word[2];
        ip[i * 4 + 3] = word[3];
        i += 1;
    }
    ip
}

/// `0.0.0.0`, `::` and `::ffff:0.0.0.0` reach this host; the supervisor decides them as
/// loopback, so only an exact entry it wrote lets them through, never a CIDR rule.
fn is_unspecified(ip: &[u8; 16]) -> bool {
    let v4_mapped_any = ip[..10].iter().all(|&b| b == 0)
        && ip[10] == 0xff
        && ip[11] == 0xff
        && ip[12..].iter().all(|&b| b == 0);
    v4_mapped_any || ip.iter().all(|&b| b == 0)
}

/// TCP and UDP port 53 is DNS, which goes to the session's resolver only: only an exact
/// entry (the supervisor writes one for its resolver) lets it through, never a CIDR rule, so
/// no `allow *` carries queries (and data in their labels) to another server.
fn is_dns(port: u16, protocol: u32) -> bool {
    const IPPROTO_TCP: u32 = 6;
    const IPPROTO_UDP: u32 = 17;
    port == 53 && (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP)
}

fn decide(ctx: &SockAddrContext, ip: [u8; 16]) -> i32 {
    #[allow(deprecated)]
    let storage = NET_SESSION.get_ptr_mut();
    // SAFETY: bpf_get_local_storage never fails for a program attached to a cgroup: the
    // pointer is this attachment's u64.
    let cgroup_id = unsafe { *storage };
    if cgroup_id == 0 {
        return REFUSE;
    }
    match NET_MODE.get_ptr(cgroup_id) {
        // SAFETY: the pointer comes from a successful lookup of a u32 value.
        Some(mode) if unsafe { *mode } == NET_MODE_ENFORCE => {}
        _ => return REFUSE,
    }
    // SAFETY: as above, context fields readable with 4-byte loads.
    let (user_port, protocol) = unsafe { ((*ctx.sock_addr).user_port, (*ctx.sock_addr).protocol) };
    // The port is in network byte order in the low 16 bits.
    let port = u16::from_be(user_port as u16);
    let exact = NetAllowKey {
        cgroup_id,
        ip,
        port,
        protocol: protocol as u8,
        _padding: [0; 5],
    };
    if allows(NET_ALLOW.get_ptr(exact)) {
        return PROCEED;
    }
    if is_unspecified(&ip) || is_dns(port, protocol) {
        return REFUSE;
    }
    for rule_port in [port as u32, NET_ANY_PORT] {
        let key = Key::new(
            NET_RULE_FIXED_BITS + 128,
            NetRuleKey {
                cgroup_id,
                port: rule_port,
                ip,
                _padding: 0,
            },
        );
        if NET_RULES.get(&key) == Some(&NET_VERDICT_ALLOW) {
            return PROCEED;
        }
    }
    REFUSE
}

fn allows(value: Option<*const u8>) -> bool {
    // SAFETY: the pointer comes from a successful map lookup of a u8 value.
    value.is_some_and(|v| unsafe { *v } == NET_VERDICT_ALLOW)
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects programs that can reach a real panic; this is never called.
    loop {}
}

/// The kernel only lets GPL-compatible programs call some helpers.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
