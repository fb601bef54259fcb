//! The in-kernel network backstop: `cgroup/connect4`, `connect6`, `sendmsg4`, `sendmsg6`
//! attached to the session's own cgroup, refusing (`EPERM`) any destination the supervisor
//! has not allowed.
//!
//! The supervisor already decides every `connect`/`sendto`/`sendmsg` and makes the call
//! itself with its own copy of the address. The backstop makes the kernel check the address
//! it really uses against the same decisions, on the socket itself, whoever makes the call:
//!
//! ```text
//!  policy allow rules ──(ebpf::rules: only those no stricter rule overlaps)──▶ NET_RULES
//!  decision "allow" (rule, human, session memory)
//!      └─▶ NetworkMaps::before_connect(ip, port, proto) ──▶ NET_ALLOW ──▶ then the call
//!  kernel: connect/sendmsg on a socket of the session cgroup ──▶ program looks up ──▶ 1 / EPERM
//! ```
//!
//! A `cgroup_sock_addr` program runs for the socket's cgroup (the cgroup of the process that
//! created it), so the agent's sockets are checked even when the supervisor calls `connect`
//! on its `pidfd_getfd` duplicate; every other process on the host is unaffected. The maps
//! are keyed by the session's cgroup id, which each loaded copy of the programs gets as a
//! read-only global (`NET_SESSION_CGROUP`, see `agent_supervisor_common::NetAllowKey`).
//!
//! Ownership (STYLE principle 6): [`NetworkMaps`] is the only writer of the maps. It is a
//! mutex rather than an actor thread because every caller must wait for its write to land
//! before making the call: a thread hop would add a cross-CPU wake-up to each connect.
//!
//! Kernel: Linux 4.18+ (`sendmsg4/6`), cgroup v2, `CAP_BPF` + `CAP_NET_ADMIN` (root), BPF
//! links from 5.7 (older kernels get `BPF_PROG_ATTACH`). See
//! <https://docs.kernel.org/bpf/prog_cgroup_sockaddr.html> (program type) and
//! <https://docs.kernel.org/bpf/map_lpm_trie.html> (the CIDR map).
#![forbid(unsafe_code)]

use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use agent_supervisor_common::{
    names, NetAllowKey, NetRuleKey, NET_ANY_PORT, NET_MODE_ENFORCE, NET_RULE_FIXED_BITS,
    NET_VERDICT_ALLOW,
};
use agent_supervisor_policy::{IpNet, Policy};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData, MapError};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, ProgramError};
use aya::{Ebpf, EbpfError, EbpfLoader};

use super::rules::{kernel_address, kernel_allow_rules, kernel_prefixes};
use crate::cgroup::{CgroupError, SessionCgroup};

/// Why the backstop could not be set up (the session then runs on the supervisor's checks
/// alone, and says so).
#[derive(Debug, thiserror::Error)]
pub enum BackstopError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("loading the eBPF object (needs root: CAP_BPF)")]
    Load(#[source] EbpfError),
    #[error("the embedded eBPF object has no {0}")]
    Missing(&'static str),
    #[error("{step} the eBPF program {program}")]
    Program {
        step: &'static str,
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("{step} the eBPF map {map}")]
    Map {
        step: &'static str,
        map: &'static str,
        #[source]
        source: MapError,
    },
}

/// The network programs attached to one session's cgroup. Dropping it detaches the programs,
/// then removes the cgroup (which must be empty by then: drop it after the session's
/// processes are gone).
pub struct NetworkBackstop {
    // Field order is drop order: programs (and their links) before the cgroup.
    _ebpf: Ebpf,
    maps: Arc<NetworkMaps>,
    cgroup: SessionCgroup,
}

impl NetworkBackstop {
    /// Create the session's cgroup and attach the programs to it, in enforcing mode, with
    /// nothing allowed yet.
    pub fn start(session_id: &str) -> Result<NetworkBackstop, BackstopError> {
        Self::attach_to(SessionCgroup::create(session_id)?)
    }

    /// Load a copy of the programs for `cgroup` (its id as their `NET_SESSION_CGROUP`), put
    /// the cgroup in enforcing mode, and attach the four programs to it. On error the
    /// programs attached so far are detached and the cgroup removed.
    pub fn attach_to(cgroup: SessionCgroup) -> Result<NetworkBackstop, BackstopError> {
        let cgroup_id = cgroup.id();
        let mut ebpf = EbpfLoader::new()
            .override_global(names::NET_SESSION_CGROUP, &cgroup_id, true)
            .load(super::object())
            .map_err(BackstopError::Load)?;

        let map = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(BackstopError::Missing(name))
        };
        let map_err = |step, map| move |source| BackstopError::Map { step, map, source };
        let mut mode: HashMap<MapData, u64, u32> =
            HashMap::try_from(map(&mut ebpf, names::NET_MODE)?)
                .map_err(map_err("opening", names::NET_MODE))?;
        let allow = HashMap::try_from(map(&mut ebpf, names::NET_ALLOW)?)
            .map_err(map_err("opening", names::NET_ALLOW))?;
        let rules = LpmTrie::try_from(map(&mut ebpf, names::NET_RULES)?)
            .map_err(map_err("opening", names::NET_RULES))?;
        mode.insert(cgroup_id, NET_MODE_ENFORCE, 0)
            .map_err(map_err("writing the session's mode into", names::NET_MODE))?;

        for name in names::NETWORK_PROGRAMS {
            let program_err = |step| {
                move |source| BackstopError::Program {
                    step,
                    program: name,
                    source,
                }
            };
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(BackstopError::Missing(name))?
                .try_into()
                .map_err(program_err("finding"))?;
            program.load().map_err(program_err("loading"))?;
            // Single: no descendant cgroup can override it (a BPF link is always "multi",
            // where every attached program must agree, so nothing below can loosen it).
            program
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(program_err("attaching to the session cgroup"))?;
        }
        tracing::debug!(
            "network backstop attached to {} (cgroup id {cgroup_id})",
            cgroup.path().display()
        );
        Ok(NetworkBackstop {
            _ebpf: ebpf,
            maps: Arc::new(NetworkMaps {
                cgroup_id,
                allow: Mutex::new(allow),
                rules: Mutex::new(rules),
            }),
            cgroup,
        })
    }

    /// The session cgroup the programs are attached to.
    pub fn cgroup(&self) -> &SessionCgroup {
        &self.cgroup
    }

    /// The writer of this session's map entries.
    pub fn maps(&self) -> Arc<NetworkMaps> {
        Arc::clone(&self.maps)
    }

    /// Write the policy's allow rules that the kernel may apply on its own (see
    /// [`super::rules`]). Returns how many rules were written.
    pub fn allow_policy_rules(&self, policy: &Policy) -> io::Result<usize> {
        let rules = kernel_allow_rules(policy);
        for (net, port) in &rules {
            self.maps.allow_rule(*net, *port)?;
        }
        Ok(rules.len())
    }
}

/// The one writer of a session's entries in `NET_ALLOW` and `NET_RULES`.
pub struct NetworkMaps {
    cgroup_id: u64,
    allow: Mutex<HashMap<MapData, NetAllowKey, u8>>,
    rules: Mutex<LpmTrie<MapData, NetRuleKey, u8>>,
}

impl NetworkMaps {
    /// Call right before making a `connect`/`sendto`/`sendmsg` to `ip:port` that the
    /// supervisor allowed, on a socket of protocol `protocol` (`SO_PROTOCOL`): the kernel
    /// then lets exactly that destination through. An error means the kernel will refuse
    /// the call: answer it as refused.
    pub fn before_connect(&self, ip: IpAddr, port: u16, protocol: i32) -> io::Result<()> {
        let protocol = u8::try_from(protocol)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "protocol out of range"))?;
        self.allow_exact(ip, port, protocol)
    }

    /// Allow one exact destination (`protocol`: `IPPROTO_*`) for the rest of the session.
    pub fn allow_exact(&self, ip: IpAddr, port: u16, protocol: u8) -> io::Result<()> {
        let key = NetAllowKey {
            cgroup_id: self.cgroup_id,
            ip: kernel_address(ip).octets(),
            port,
            protocol,
            _padding: [0; 5],
        };
        self.allow
            .lock()
            .expect("NET_ALLOW lock")
            .insert(key, NET_VERDICT_ALLOW, 0)
            .map_err(|e| map_io_error(names::NET_ALLOW, e))
    }

    /// Allow every address of `net` on `port` (None: any port), any protocol. An IPv6
    /// network does not cover IPv4-mapped addresses (see [`kernel_prefixes`]), and the
    /// unspecified addresses (`0.0.0.0`, `::`) are only ever let through by exact entries.
    pub fn allow_rule(&self, net: IpNet, port: Option<u16>) -> io::Result<()> {
        let mut rules = self.rules.lock().expect("NET_RULES lock");
        for prefix in kernel_prefixes(net) {
            let key = Key::new(
                NET_RULE_FIXED_BITS + u32::from(prefix.prefix_len()),
                NetRuleKey {
                    cgroup_id: self.cgroup_id,
                    port: port.map_or(NET_ANY_PORT, u32::from),
                    ip: prefix.network().octets(),
                    _padding: 0,
                },
            );
            rules
                .insert(&key, NET_VERDICT_ALLOW, 0)
                .map_err(|e| map_io_error(names::NET_RULES, e))?;
        }
        Ok(())
    }
}

/// A map write error as an `io::Error` that keeps the kernel's errno (E2BIG: map full).
fn map_io_error(map: &str, error: MapError) -> io::Error {
    match error {
        MapError::SyscallError(e) => io::Error::new(
            e.io_error.kind(),
            format!("writing {map}: {}: {}", e.call, e.io_error),
        ),
        other => io::Error::other(format!("writing {map}: {other}")),
    }
}

/// Start the backstop for session `session_id` under `policy`, as `run` wants it: the
/// backstop, or the one line that says what is weaker without it (not root, no cgroup v2, a
/// kernel that refuses the programs). The policy's qualifying allow rules are written in; if
/// that fails the backstop still stands on the exact entries written before each call.
pub fn start_session(
    session_id: &str,
    policy: &Policy,
) -> (Option<NetworkBackstop>, Option<String>) {
    match NetworkBackstop::start(session_id) {
        Ok(backstop) => {
            match backstop.allow_policy_rules(policy) {
                Ok(n) => tracing::debug!("{n} policy network rules written to the kernel"),
                Err(e) => tracing::warn!(
                    "writing the policy's network rules to the kernel failed ({e}): each \
                     allowed destination is still written before its call"
                ),
            }
            (Some(backstop), None)
        }
        Err(e) => {
            let mut cause = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                cause.push_str(&format!(": {s}"));
                source = s.source();
            }
            (
                None,
                Some(format!(
                    "the in-kernel network backstop is off ({cause}): network destinations are \
                     checked by the supervisor only, not by the kernel"
                )),
            )
        }
    }
}
