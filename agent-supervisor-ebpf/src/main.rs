//! The eBPF programs of agent-supervisor, built for `bpfel-unknown-none` by
//! `agent-supervisor/build.rs` (through `aya_build`) and embedded in the supervisor
//! (`agent-supervisor/src/ebpf.rs`).
//!
//! For now one program: [`sched_process_exec`], a tracepoint that counts the execs made in
//! agent sessions. It is the seed of the exec backstop: the tracepoint runs after every
//! successful `execve` and before the new image runs a single instruction.
//!
//! Kernel requirements: tracepoint programs and `bpf_get_current_cgroup_id` (Linux 4.18+).
//! The supervisor fills [`SESSION_CGROUPS`] with the cgroup v2 ids of its sessions.
//!
//! On the host this file compiles to an empty program (so `cargo clippy --workspace` works):
//! `no_main`, `no_std` and the panic handler apply only to the BPF target.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

use agent_supervisor_common::{EXEC_COUNT_SLOT, MAX_SESSION_CGROUPS};
use aya_ebpf::helpers::bpf_get_current_cgroup_id;
use aya_ebpf::macros::{map, tracepoint};
use aya_ebpf::maps::{HashMap, PerCpuArray};
use aya_ebpf::programs::TracePointContext;

/// cgroup v2 id → `SESSION_CGROUP_ACTIVE`, for every cgroup that holds an agent session.
/// Written by the supervisor; read here.
#[map]
static SESSION_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(MAX_SESSION_CGROUPS, 0);

/// Per-CPU count of execs in session cgroups (one slot, `EXEC_COUNT_SLOT`). The supervisor
/// sums the CPUs' values.
#[map]
static EXEC_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `sched/sched_process_exec`: counts the exec if the calling task is in a session cgroup.
#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    // SAFETY: a BPF helper without arguments, allowed in tracepoint programs since 4.18.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if SESSION_CGROUPS.get_ptr(cgroup_id).is_none() {
        return 0;
    }
    if let Some(count) = EXEC_COUNT.get_ptr_mut(EXEC_COUNT_SLOT) {
        // SAFETY: the pointer comes from a successful map lookup, so it points at this CPU's
        // u64 in EXEC_COUNT; a per-CPU slot is not written concurrently (the program runs
        // with migration disabled).
        unsafe { *count += 1 };
    }
    0
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
