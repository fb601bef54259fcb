//! The eBPF programs of agent-supervisor, built for `bpfel-unknown-none` by
//! `agent-supervisor/build.rs` (through `aya_build`) and embedded in the supervisor
//! (`agent-supervisor/src/ebpf.rs`).
//!
//! - [`sched_process_exec`], a tracepoint that counts the execs made in agent sessions. It is
//!   the seed of the exec backstop: the tracepoint runs after every successful `execve` and
//!   before the new image runs a single instruction. Kernel requirements: tracepoint programs
//!   and `bpf_get_current_cgroup_id` (Linux 4.18+). The supervisor fills [`SESSION_CGROUPS`]
//!   with the cgroup v2 ids of its sessions.
//! - [`connect4`], [`connect6`], [`sendmsg4`], [`sendmsg6`]: `cgroup_sock_addr` programs
//!   (Linux 4.17 for connect, 4.18 for sendmsg) attached to one session's cgroup v2 directory
//!   only. They see the address the kernel is about to use and return 1 (go on) only when it
//!   is in the session's `NET_ALLOW` (exact destination) or `NET_RULES` (CIDR rule) map;
//!   0 makes the call fail with `EPERM`. They only look up: the supervisor writes every entry
//!   (see `agent-supervisor/src/ebpf/network.rs`).
//!
//! On the host this file compiles to an empty program (so `cargo clippy --workspace` works):
//! `no_main`, `no_std` and the panic handler apply only to the BPF target.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

use agent_supervisor_common::{
    NetAllowKey, NetRuleKey, EXEC_COUNT_SLOT, MAX_NET_ALLOW, MAX_NET_RULES, MAX_NET_SESSIONS,
    MAX_SESSION_CGROUPS, NET_ANY_PORT, NET_MODE_ENFORCE, NET_RULE_FIXED_BITS, NET_VERDICT_ALLOW,
};
use aya_ebpf::helpers::bpf_get_current_cgroup_id;
use aya_ebpf::macros::{cgroup_sock_addr, map, tracepoint};
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::maps::{HashMap, LpmTrie, PerCpuArray};
use aya_ebpf::programs::{SockAddrContext, TracePointContext};

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

/// The cgroup v2 id of the session this copy of the network programs is attached to, set by
/// the supervisor at load time (read-only to the programs). See `NetAllowKey` in
/// `agent-supervisor-common` for why it can't come from `bpf_get_current_cgroup_id`.
#[unsafe(no_mangle)]
static NET_SESSION_CGROUP: u64 = 0;

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

fn decide(ctx: &SockAddrContext, ip: [u8; 16]) -> i32 {
    // SAFETY: a read of a global the loader sets before the program is loaded (it lives in
    // .rodata: volatile so the compiler doesn't fold the placeholder 0).
    let cgroup_id = unsafe { core::ptr::read_volatile(&NET_SESSION_CGROUP) };
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
    if is_unspecified(&ip) {
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
