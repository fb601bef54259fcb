//! What the session resolved: address → the names it answered for, until when, and the
//! in-kernel allow entries each answer holds.
//!
//! One owner (STYLE principle 6): [`Answers`] is a mutex-guarded table written by the
//! resolver's threads (one write per answer) and read by the connect path (one lookup per
//! connect); the sweeper takes expired answers out and their kernel entries with them.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agent_supervisor_policy::{DecidedBy, IpNet};

use crate::ebpf::network::NetworkMaps;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// One in-kernel allow entry an answer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelEntry {
    /// `NET_ALLOW` (address, port, protocol).
    Exact { port: u16, protocol: u8 },
    /// `NET_RULES` the address alone, any port.
    AnyPort,
}

/// A name the session resolved to an address, still valid.
#[derive(Debug, Clone)]
pub struct Known {
    /// The name as asked (lower case, no trailing dot).
    pub name: String,
    /// Who allowed the name: its rule (or the default).
    pub decided_by: DecidedBy,
    /// The name's rule says ask and a human (or session memory) said yes.
    pub approved: bool,
}

#[derive(Debug)]
struct Entry {
    known: Known,
    expires: Instant,
    kernel: Vec<KernelEntry>,
}

/// The session's resolved addresses (keys: canonical addresses, IPv4 as IPv4).
#[derive(Default)]
pub struct Answers {
    by_ip: Mutex<HashMap<IpAddr, Vec<Entry>>>,
    /// Notified when an answer is recorded (it may expire before the ones waited for).
    recorded: std::sync::Condvar,
}

impl Answers {
    /// Record that `known.name` resolved to `ip`, valid until `expires`, and write the kernel
    /// entries for `ports` (None: any port; both TCP and UDP). A kernel write that fails is
    /// logged: the supervisor still decides and writes the exact entry before each call.
    pub fn record(
        &self,
        maps: Option<&NetworkMaps>,
        ip: IpAddr,
        known: Known,
        expires: Instant,
        ports: &[Option<u16>],
    ) {
        let ip = ip.to_canonical();
        let mut kernel = Vec::new();
        for port in ports {
            match port {
                Some(port) => {
                    for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
                        kernel.push(KernelEntry::Exact {
                            port: *port,
                            protocol,
                        });
                    }
                }
                None => kernel.push(KernelEntry::AnyPort),
            }
        }
        if let Some(maps) = maps {
            for entry in &kernel {
                if let Err(e) = write(maps, ip, *entry) {
                    tracing::warn!(
                        "the kernel backstop could not take {ip} ({}): {e}",
                        known.name
                    );
                }
            }
        }
        let mut table = self.by_ip.lock().expect("answers lock");
        let entries = table.entry(ip).or_default();
        match entries.iter_mut().find(|e| e.known.name == known.name) {
            Some(old) => {
                old.expires = old.expires.max(expires);
                old.known.approved |= known.approved;
                for k in kernel {
                    if !old.kernel.contains(&k) {
                        old.kernel.push(k);
                    }
                }
            }
            None => entries.push(Entry {
                known,
                expires,
                kernel,
            }),
        }
        drop(table);
        self.recorded.notify_all();
    }

    /// Sleep until the earliest answer expires, or until an answer is recorded (which may
    /// expire sooner); then the caller sweeps. No answers: sleep until one is recorded.
    pub fn wait_for_expiry(&self) {
        let table = self.by_ip.lock().expect("answers lock");
        let next = table.values().flatten().map(|e| e.expires).min();
        match next {
            None => drop(self.recorded.wait(table)),
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                if !left.is_zero() {
                    drop(self.recorded.wait_timeout(table, left));
                }
            }
        }
    }

    /// The names `ip` was resolved from that are still valid at `now`.
    pub fn names_for(&self, ip: IpAddr, now: Instant) -> Vec<Known> {
        let table = self.by_ip.lock().expect("answers lock");
        table
            .get(&ip.to_canonical())
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| e.expires > now)
                    .map(|e| e.known.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The connect path let `ip:port` through because of name `name`: the exact entry it
    /// writes before the call belongs to that answer and goes when it expires.
    pub fn tie(&self, ip: IpAddr, name: &str, port: u16, protocol: u8) {
        let mut table = self.by_ip.lock().expect("answers lock");
        if let Some(e) = table
            .get_mut(&ip.to_canonical())
            .and_then(|entries| entries.iter_mut().find(|e| e.known.name == name))
        {
            let k = KernelEntry::Exact { port, protocol };
            if !e.kernel.contains(&k) {
                e.kernel.push(k);
            }
        }
    }

    /// Take out every answer expired at `now` and the kernel entries no valid answer of the
    /// same address still holds. Returns how many answers went.
    pub fn sweep(&self, maps: Option<&NetworkMaps>, now: Instant) -> usize {
        let mut gone = 0;
        let mut removals: Vec<(IpAddr, KernelEntry)> = Vec::new();
        {
            let mut table = self.by_ip.lock().expect("answers lock");
            table.retain(|ip, entries| {
                let (expired, live): (Vec<Entry>, Vec<Entry>) =
                    entries.drain(..).partition(|e| e.expires <= now);
                gone += expired.len();
                for k in expired.iter().flat_map(|e| e.kernel.iter()) {
                    let still_held = live.iter().any(|l| l.kernel.contains(k));
                    if !still_held && !removals.contains(&(*ip, *k)) {
                        removals.push((*ip, *k));
                    }
                }
                *entries = live;
                !entries.is_empty()
            });
        }
        if let Some(maps) = maps {
            for (ip, k) in removals {
                if let Err(e) = remove(maps, ip, k) {
                    tracing::warn!("taking {ip} out of the kernel backstop failed: {e}");
                }
            }
        }
        gone
    }
}

fn write(maps: &NetworkMaps, ip: IpAddr, entry: KernelEntry) -> std::io::Result<()> {
    match entry {
        KernelEntry::Exact { port, protocol } => maps.allow_exact(ip, port, protocol),
        KernelEntry::AnyPort => maps.allow_rule(IpNet::from(ip), None),
    }
}

fn remove(maps: &NetworkMaps, ip: IpAddr, entry: KernelEntry) -> std::io::Result<()> {
    match entry {
        KernelEntry::Exact { port, protocol } => maps.remove_exact(ip, port, protocol),
        KernelEntry::AnyPort => maps.remove_rule(IpNet::from(ip), None),
    }
}

/// The longest an answer is trusted, whatever TTL it carries (a day, as resolvers cap it).
pub const MAX_TTL: u32 = 86_400;

/// When an answer with `ttl` seconds received at `now` stops letting new connections
/// through: its TTL (at most [`MAX_TTL`]) plus `grace`.
pub fn expiry(now: Instant, ttl: u32, grace: Duration) -> Instant {
    now + Duration::from_secs(u64::from(ttl.min(MAX_TTL))) + grace
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(name: &str) -> Known {
        Known {
            name: name.into(),
            decided_by: DecidedBy::Rule(0),
            approved: false,
        }
    }

    #[test]
    fn ttls_are_capped_and_get_the_grace() {
        let now = Instant::now();
        let g = Duration::from_secs(10);
        assert_eq!(expiry(now, 0, g), now + g);
        assert_eq!(expiry(now, 60, g), now + Duration::from_secs(70));
        assert_eq!(
            expiry(now, u32::MAX, g),
            now + Duration::from_secs(u64::from(MAX_TTL)) + g
        );
    }

    #[test]
    fn names_expire_and_v4_mapped_addresses_are_ipv4() {
        let a = Answers::default();
        let now = Instant::now();
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        a.record(None, ip, known("a.test"), now + Duration::from_secs(5), &[]);
        a.record(None, ip, known("b.test"), now + Duration::from_secs(1), &[]);
        let names = |at| -> Vec<String> {
            a.names_for("::ffff:198.51.100.7".parse().unwrap(), at)
                .into_iter()
                .map(|k| k.name)
                .collect()
        };
        assert_eq!(names(now), ["a.test", "b.test"]);
        assert_eq!(names(now + Duration::from_secs(2)), ["a.test"]);
        assert_eq!(a.sweep(None, now + Duration::from_secs(2)), 1);
        assert_eq!(a.sweep(None, now + Duration::from_secs(6)), 1);
        assert!(names(now).is_empty());
    }
}
