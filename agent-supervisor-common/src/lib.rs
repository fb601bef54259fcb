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
    /// Read-only global (`u64`, set at load time): the cgroup v2 id of the session whose
    /// cgroup this copy of the network programs is attached to. See
    /// [`NetAllowKey`](crate::NetAllowKey) for why the programs can't ask the kernel.
    pub const NET_SESSION_CGROUP: &str = "NET_SESSION_CGROUP";
    /// `HashMap<u64, u32>`: cgroup v2 id → network mode ([`NET_MODE_ENFORCE`](crate::NET_MODE_ENFORCE)).
    pub const NET_MODE: &str = "NET_MODE";
    /// `HashMap<NetAllowKey, u8>`: exact destinations → [`NET_VERDICT_ALLOW`](crate::NET_VERDICT_ALLOW).
    pub const NET_ALLOW: &str = "NET_ALLOW";
    /// `LpmTrie<NetRuleKey, u8>`: CIDR rules → [`NET_VERDICT_ALLOW`](crate::NET_VERDICT_ALLOW).
    pub const NET_RULES: &str = "NET_RULES";
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
/// Why `cgroup_id` comes from `NET_SESSION_CGROUP` and not from the kernel: a `cgroup_sock_addr`
/// program runs for the *socket's* cgroup, but the only cgroup helper it has,
/// `bpf_get_current_cgroup_id`, names the *calling task's*, and the supervisor makes the
/// connects it allowed itself, on a duplicate of the agent's socket. Each loaded copy of the
/// programs is attached to one session cgroup and told its id at load time.
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

// SAFETY: `#[repr(C)]`, `Copy`, integers and byte arrays only, padding explicit (the size
// assertion pins the layout): every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for NetAllowKey {}

// SAFETY: as for `NetAllowKey`.
#[cfg(feature = "user")]
unsafe impl aya::Pod for NetRuleKey {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_event_fields_sit_where_the_ebpf_side_writes_them() {
        assert_eq!(core::mem::offset_of!(ExecEvent, cgroup_id), 0);
        assert_eq!(core::mem::offset_of!(ExecEvent, tgid), 8);
        assert_eq!(core::mem::offset_of!(ExecEvent, _padding), 12);
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
