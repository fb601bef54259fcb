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
//!  DNS answer for an allowed name (crate::dns) ──▶ NET_ALLOW / NET_RULES for the rule's
//!      ports ──▶ remove_exact / remove_rule when the answer expires
//!  kernel: connect/sendmsg on a socket of the session cgroup ──▶ program looks up ──▶ 1 / EPERM
//! ```
//!
//! A `cgroup_sock_addr` program runs for the socket's cgroup (the cgroup of the process that
//! created it), so the agent's sockets are checked even when the supervisor calls `connect`
//! on its `pidfd_getfd` duplicate; every other process on the host is unaffected. The maps
//! are keyed by the session's cgroup id, which the programs read from the cgroup storage of
//! their attachment (`NET_SESSION`, written right after the attach; see
//! `agent_supervisor_common::NetAllowKey`). Every entry a session wrote is removed when it
//! ends.
//!
//! Ownership (STYLE principle 6): [`NetworkMaps`] is the only writer of the maps. It is a
//! mutex rather than an actor thread because every caller must wait for its write to land
//! before making the call: a thread hop would add a cross-CPU wake-up to each connect.
//!
//! Kernel: Linux 5.9+ (`sendmsg4/6` 4.18, cgroup storage shared by several programs 5.9), cgroup v2, `CAP_BPF` + `CAP_NET_ADMIN` (root), BPF
//! links from 5.7 (older kernels get `BPF_PROG_ATTACH`). See
//! <https://docs.kernel.org/bpf/prog_cgroup_sockaddr.html> (program type) and
//! <https://docs.kernel.org/bpf/map_lpm_trie.html> (the CIDR map).
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use agent_supervisor_common::{
    names, NetAllowKey, NetRuleKey, NET_ANY_PORT, NET_MODE_ENFORCE, NET_RULE_FIXED_BITS,
    NET_VERDICT_ALLOW,
};
use agent_supervisor_policy::{IpNet, Policy};
use aya::maps::lpm_trie::{Key, LpmTrie};
#[allow(deprecated)]
// BPF_MAP_TYPE_CGROUP_STORAGE: the CGRP_STORAGE successor (6.2) is per cgroup, not per attachment
use aya::maps::{CgroupStorage, CgroupStorageKey, HashMap, MapData, MapError};

use super::rules::{kernel_address, kernel_allow_rules, kernel_prefixes};
pub use super::session::BackstopError;
use super::session::{error_chain, map_error, ExecMode, Session};
use crate::cgroup::SessionCgroup;

/// The network programs attached to one session's cgroup, without the process programs (the
/// hook-alone tests use it; `run` attaches them to its [`Session`] with [`attach`]). Dropping it detaches the programs, then removes the cgroup (which must be
/// empty by then: drop it after the session's processes are gone).
pub struct NetworkBackstop {
    session: Session,
    maps: Arc<NetworkMaps>,
}

impl NetworkBackstop {
    /// Create the session's cgroup and attach the programs to it, in enforcing mode, with
    /// nothing allowed yet.
    pub fn start(session_id: &str) -> Result<NetworkBackstop, BackstopError> {
        Self::attach_to(SessionCgroup::create(session_id)?)
    }

    /// Open the programs for `cgroup` (see [`Session::load`]) and [`attach`] them. On error the programs
    /// attached so far are detached and the cgroup removed.
    pub fn attach_to(cgroup: SessionCgroup) -> Result<NetworkBackstop, BackstopError> {
        let mut session = Session::load(cgroup, ExecMode::Report)?;
        let maps = attach(&mut session)?;
        Ok(NetworkBackstop { session, maps })
    }

    /// The session cgroup the programs are attached to.
    pub fn cgroup(&self) -> &SessionCgroup {
        self.session.cgroup()
    }

    /// The writer of this session's map entries.
    pub fn maps(&self) -> Arc<NetworkMaps> {
        Arc::clone(&self.maps)
    }

    /// Write the policy's allow rules that the kernel may apply on its own (see
    /// [`super::rules`]). Returns how many rules were written.
    pub fn allow_policy_rules(&self, policy: &Policy) -> io::Result<usize> {
        self.maps.allow_policy_rules(policy)
    }
}

/// `bpf_attach_type` of each network program, in [`names::NETWORK_PROGRAMS`] order (the
/// kernel keys the cgroup storage `NET_SESSION` by cgroup id and attach type).
const ATTACH_TYPES: [u32; 4] = [
    10, // BPF_CGROUP_INET4_CONNECT
    11, // BPF_CGROUP_INET6_CONNECT
    14, // BPF_CGROUP_UDP4_SENDMSG
    15, // BPF_CGROUP_UDP6_SENDMSG
];

/// Put the session cgroup in enforcing mode, attach the four network programs to it and tell
/// each attachment its session (`NET_SESSION`); returns the writer of the session's map
/// entries (nothing allowed yet). Every entry is removed when the session ends.
pub fn attach(session: &mut Session) -> Result<Arc<NetworkMaps>, BackstopError> {
    let cgroup_id = session.cgroup().id();
    let mut mode: HashMap<MapData, u64, u32> =
        HashMap::try_from(session.take_map(names::NET_MODE)?)
            .map_err(map_error("opening", names::NET_MODE))?;
    let allow = HashMap::try_from(session.take_map(names::NET_ALLOW)?)
        .map_err(map_error("opening", names::NET_ALLOW))?;
    let rules = LpmTrie::try_from(session.take_map(names::NET_RULES)?)
        .map_err(map_error("opening", names::NET_RULES))?;
    #[allow(deprecated)]
    let mut storage: CgroupStorage<MapData, u64> =
        CgroupStorage::try_from(session.take_map(names::NET_SESSION)?)
            .map_err(map_error("opening", names::NET_SESSION))?;
    mode.insert(cgroup_id, NET_MODE_ENFORCE, 0)
        .map_err(map_error(
            "writing the session's mode into",
            names::NET_MODE,
        ))?;
    let maps = Arc::new(NetworkMaps {
        cgroup_id,
        allow: Mutex::new(allow),
        rules: Mutex::new(rules),
        written: Mutex::new(Written::default()),
    });
    if session.pinned_set().is_some() {
        let maps = Arc::clone(&maps);
        session.on_end(move || {
            let _ = mode.remove(&cgroup_id);
            maps.remove_all();
        });
    }
    session.attach_network_programs()?;
    for attach_type in ATTACH_TYPES {
        storage
            .insert(CgroupStorageKey::new(cgroup_id, attach_type), cgroup_id, 0)
            .map_err(map_error(
                "writing the session's cgroup id into",
                names::NET_SESSION,
            ))?;
    }
    tracing::debug!(
        "network backstop attached to {} (cgroup id {cgroup_id})",
        session.cgroup().path().display()
    );
    Ok(maps)
}

/// The keys a session wrote into `NET_ALLOW` and `NET_RULES` (and has not taken back).
#[derive(Default)]
struct Written {
    exact: HashSet<NetAllowKey>,
    /// (LPM prefix length, key data).
    rules: HashSet<(u32, NetRuleKey)>,
}

/// The one writer of a session's entries in `NET_ALLOW` and `NET_RULES`.
pub struct NetworkMaps {
    cgroup_id: u64,
    allow: Mutex<HashMap<MapData, NetAllowKey, u8>>,
    rules: Mutex<LpmTrie<MapData, NetRuleKey, u8>>,
    written: Mutex<Written>,
}

impl NetworkMaps {
    /// Write the policy's allow rules that the kernel may apply on its own (see
    /// [`super::rules`]). Returns how many rules were written.
    pub fn allow_policy_rules(&self, policy: &Policy) -> io::Result<usize> {
        let rules = kernel_allow_rules(policy);
        for (net, port) in &rules {
            self.allow_rule(*net, *port)?;
        }
        Ok(rules.len())
    }

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
            .map_err(|e| map_io_error(names::NET_ALLOW, e))?;
        self.written.lock().expect("written lock").exact.insert(key);
        Ok(())
    }

    /// Remove every entry this session wrote (at its end; a shared map outlives it).
    pub fn remove_all(&self) {
        let written = std::mem::take(&mut *self.written.lock().expect("written lock"));
        let mut allow = self.allow.lock().expect("NET_ALLOW lock");
        for key in &written.exact {
            let _ = allow.remove(key);
        }
        drop(allow);
        let mut rules = self.rules.lock().expect("NET_RULES lock");
        for (prefix_len, key) in written.rules {
            let _ = rules.remove(&Key::new(prefix_len, key));
        }
    }

    /// Take back what [`Self::allow_exact`] allowed (a DNS answer expired). Absent: no error.
    pub fn remove_exact(&self, ip: IpAddr, port: u16, protocol: u8) -> io::Result<()> {
        let key = NetAllowKey {
            cgroup_id: self.cgroup_id,
            ip: kernel_address(ip).octets(),
            port,
            protocol,
            _padding: [0; 5],
        };
        self.written
            .lock()
            .expect("written lock")
            .exact
            .remove(&key);
        match self.allow.lock().expect("NET_ALLOW lock").remove(&key) {
            Ok(()) => Ok(()),
            Err(e) => absent_is_fine(names::NET_ALLOW, e),
        }
    }

    /// The `NET_RULES` keys of `net` on `port` (None: any port) for this session.
    fn rule_keys(&self, net: IpNet, port: Option<u16>) -> impl Iterator<Item = Key<NetRuleKey>> {
        let cgroup_id = self.cgroup_id;
        kernel_prefixes(net).into_iter().map(move |prefix| {
            Key::new(
                NET_RULE_FIXED_BITS + u32::from(prefix.prefix_len()),
                NetRuleKey {
                    cgroup_id,
                    port: port.map_or(NET_ANY_PORT, u32::from),
                    ip: prefix.network().octets(),
                    _padding: 0,
                },
            )
        })
    }

    /// Take back what [`Self::allow_rule`] allowed (a DNS answer expired). Absent: no error.
    pub fn remove_rule(&self, net: IpNet, port: Option<u16>) -> io::Result<()> {
        let mut rules = self.rules.lock().expect("NET_RULES lock");
        for key in self.rule_keys(net, port) {
            let written = (key.prefix_len(), key.data());
            self.written
                .lock()
                .expect("written lock")
                .rules
                .remove(&written);
            if let Err(e) = rules.remove(&key) {
                absent_is_fine(names::NET_RULES, e)?;
            }
        }
        Ok(())
    }

    /// Allow every address of `net` on `port` (None: any port), any protocol. An IPv6
    /// network does not cover IPv4-mapped addresses (see [`kernel_prefixes`]), and the
    /// unspecified addresses (`0.0.0.0`, `::`) are only ever let through by exact entries.
    pub fn allow_rule(&self, net: IpNet, port: Option<u16>) -> io::Result<()> {
        let mut rules = self.rules.lock().expect("NET_RULES lock");
        for key in self.rule_keys(net, port) {
            rules
                .insert(&key, NET_VERDICT_ALLOW, 0)
                .map_err(|e| map_io_error(names::NET_RULES, e))?;
            let written = (key.prefix_len(), key.data());
            self.written
                .lock()
                .expect("written lock")
                .rules
                .insert(written);
        }
        Ok(())
    }
}

/// A removal of an entry that is not there (ENOENT) is no error.
fn absent_is_fine(map: &str, error: MapError) -> io::Result<()> {
    match &error {
        MapError::KeyNotFound => Ok(()),
        MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        _ => Err(map_io_error(map, error)),
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

/// The line `run` prints when the network backstop is off, `cause` saying why.
pub fn weaker_line(cause: &str) -> String {
    format!(
        "the in-kernel network backstop is off ({cause}): network destinations are checked by \
         the supervisor only, not by the kernel"
    )
}

/// Attach the network backstop to `session` under `policy`, as `run` wants it: the map
/// writer, or the one line that says what is weaker without it. The policy's qualifying allow
/// rules are written in; if that fails the backstop still stands on the exact entries written
/// before each call.
pub fn start_session(session: &mut Session, policy: &Policy) -> Result<Arc<NetworkMaps>, String> {
    match attach(session) {
        Ok(maps) => {
            match maps.allow_policy_rules(policy) {
                Ok(n) => tracing::debug!("{n} policy network rules written to the kernel"),
                Err(e) => tracing::warn!(
                    "writing the policy's network rules to the kernel failed ({e}): each \
                     allowed destination is still written before its call"
                ),
            }
            Ok(maps)
        }
        Err(e) => Err(weaker_line(&error_chain(&e))),
    }
}
