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
    /// Tracepoint program on `sched/sched_process_exec` (kernel 4.18+ for
    /// `bpf_get_current_cgroup_id`).
    pub const SCHED_PROCESS_EXEC: &str = "sched_process_exec";
    /// `HashMap<u64, u8>`: cgroup v2 id → [`SESSION_CGROUP_ACTIVE`](crate::SESSION_CGROUP_ACTIVE).
    pub const SESSION_CGROUPS: &str = "SESSION_CGROUPS";
    /// `PerCpuArray<u64>` with one slot ([`EXEC_COUNT_SLOT`](crate::EXEC_COUNT_SLOT)).
    pub const EXEC_COUNT: &str = "EXEC_COUNT";
}

/// The tracepoint [`names::SCHED_PROCESS_EXEC`] attaches to: (category, name).
pub const SCHED_PROCESS_EXEC_TRACEPOINT: (&str, &str) = ("sched", "sched_process_exec");

/// Capacity of `SESSION_CGROUPS`: how many session cgroups can be watched at once.
pub const MAX_SESSION_CGROUPS: u32 = 1024;

/// Value stored in `SESSION_CGROUPS` for a cgroup that belongs to a live agent session.
/// (The key is the cgroup v2 id, which is the inode number of the cgroup's directory and what
/// `bpf_get_current_cgroup_id` returns.)
pub const SESSION_CGROUP_ACTIVE: u8 = 1;

/// The only slot of the per-CPU `EXEC_COUNT` array: execs seen in session cgroups.
pub const EXEC_COUNT_SLOT: u32 = 0;

/// One exec seen in a session cgroup, as the exec backstop will report it to the supervisor
/// (the ring buffer that carries it comes with that backstop; the layout is fixed here first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecEvent {
    /// cgroup v2 id of the process (inode number of its cgroup directory).
    pub cgroup_id: u64,
    /// Thread-group id (the userspace "pid") of the process that exec'd.
    pub tgid: u32,
    /// Explicit padding to 8-byte alignment; always zero.
    pub _padding: u32,
}

const _: () = assert!(core::mem::size_of::<ExecEvent>() == 16);
const _: () = assert!(core::mem::align_of::<ExecEvent>() == 8);

// SAFETY: `ExecEvent` is `#[repr(C)]`, `Copy`, made only of integers, and has no implicit
// padding (the size assertion above pins it), so every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ExecEvent {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_event_fields_sit_where_the_ebpf_side_writes_them() {
        assert_eq!(core::mem::offset_of!(ExecEvent, cgroup_id), 0);
        assert_eq!(core::mem::offset_of!(ExecEvent, tgid), 8);
        assert_eq!(core::mem::offset_of!(ExecEvent, _padding), 12);
    }
}
