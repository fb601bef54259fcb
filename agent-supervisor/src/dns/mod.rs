//! The session's DNS resolver: how host-name rules become kernel-enforced address rules.
//!
//! ```text
//!  agent: getaddrinfo("api.github.com")
//!    └─ /etc/resolv.conf (ours, bound in the agent's mount namespace): nameserver 127.53.x.y
//!        └─ UDP/TCP 127.53.x.y:53 ──▶ Resolver (one thread waits, a thread per query)
//!             ├─ Policy::decide_name: deny ──▶ REFUSED, nothing leaves the machine
//!             │                       ask  ──▶ the approval broker (once per name; a/b remembered)
//!             ├─ allow ──▶ the host's resolvers (upstream.rs) ──▶ answer
//!             ├─ addresses in loopback/private/link-local/metadata ranges dropped unless a
//!             │  rule names the range (ranges.rs: DNS rebinding)
//!             └─ each address ──▶ Answers (TTL + grace) ──▶ kernel NET_ALLOW / NET_RULES
//!                                  entries for the ports of the name's rule
//!  agent: connect(addr) ──▶ supervise::net decides with the name behind addr (Answers::names_for)
//!  kernel: cgroup connect/sendmsg hooks: addr:port allowed only by those entries; port 53
//!          only to the resolver
//!  sweeper (from the first answer on): expired answers and their kernel entries go
//! ```
//!
//! DNS to any other server on port 53 (TCP or UDP) is refused by the supervisor and by the
//! kernel hooks, whatever the rules say about the address: queries to names no rule allows
//! (and whatever a program hides in their labels) never leave the machine.
//!
//! The resolver listens on port 53 of its own loopback address in `127.53.0.0/16` (picked at
//! random per session), so a plain `nameserver` line reaches it and answers come back from
//! the address the agent asked. Binding port 53 needs root (`CAP_NET_BIND_SERVICE`), as the
//! rest of the supervisor does.
#![forbid(unsafe_code)]

pub mod answers;
pub mod ranges;
pub mod upstream;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use agent_supervisor_policy::{Decision, Verdict};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record};

use self::answers::{Answers, Known};
use crate::audit::Record as AuditRecord;
use crate::supervise::{self, Ctx, Effect, Kind, Later, Pending};

/// Queries handled at once; more are dropped (the client retries).
const MAX_IN_FLIGHT: usize = 128;
/// How long a TCP client may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// How the resolver is set up (`run --dns-upstream`, `--dns-grace`).
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Servers to forward allowed names to; empty: the host's `/etc/resolv.conf`.
    pub upstream: Vec<SocketAddr>,
    /// How long after its TTL an answer still lets new connections through.
    pub grace: Duration,
}

/// Why the resolver could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(
        "binding the session's DNS resolver to port 53 of a 127.53.0.0/16 address (needs root)"
    )]
    Bind(#[source] io::Error),
    #[error("reading the host's resolvers from /etc/resolv.conf (pass --dns-upstream ADDR to name them)")]
    Upstream(#[source] io::Error),
}

/// The session's resolver; see the module header.
pub struct Resolver {
    address: IpAddr,
    udp: UdpSocket,
    tcp: TcpListener,
    upstream: Vec<SocketAddr>,
    grace: Duration,
    answers: Answers,
    in_flight: AtomicUsize,
    /// The sweeper's thread is running ([`Resolver::start_sweeper`]).
    sweeping: AtomicBool,
    /// Names being asked about: later queries for the same name wait for that answer.
    asking: Mutex<HashMap<String, Arc<AskSlot>>>,
}

#[derive(Default)]
struct AskSlot {
    outcome: Mutex<Option<bool>>,
    done: Condvar,
}

impl Resolver {
    /// Bind the resolver's sockets (before the sandbox exists, while we may bind port 53).
    pub fn bind(config: &DnsConfig) -> Result<Resolver, DnsError> {
        let upstream = upstream::servers(&config.upstream).map_err(DnsError::Upstream)?;
        if upstream.is_empty() {
            tracing::warn!(
                "no nameserver in /etc/resolv.conf: the session's resolver can answer nothing \
                 (pass --dns-upstream ADDR)"
            );
        }
        let mut last = io::Error::other("no address tried");
        for _ in 0..32 {
            let r = random_u64();
            let address = IpAddr::V4(Ipv4Addr::new(127, 53, (r >> 8) as u8, (r as u8).max(1)));
            let bound = UdpSocket::bind((address, 53))
                .and_then(|udp| Ok((udp, TcpListener::bind((address, 53))?)));
            match bound {
                Ok((udp, tcp)) => {
                    return Ok(Resolver {
                        address,
                        udp,
                        tcp,
                        upstream,
                        grace: config.grace,
                        answers: Answers::default(),
                        in_flight: AtomicUsize::new(0),
                        sweeping: AtomicBool::new(false),
                        asking: Mutex::new(HashMap::new()),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
                Err(e) => return Err(DnsError::Bind(e)),
            }
        }
        Err(DnsError::Bind(last))
    }

    /// The resolver's address (port 53, TCP and UDP).
    pub fn address(&self) -> IpAddr {
        self.address
    }

    /// The agent's `/etc/resolv.conf`.
    pub fn resolv_conf(&self) -> String {
        format!(
            "# Written by agent-supervisor: this session's DNS resolver, which answers the\n\
             # names the policy allows. DNS to any other server is refused.\n\
             nameserver {}\noptions timeout:5 attempts:2\n",
            self.address
        )
    }

    /// Is `dest` this resolver (port 53 of its address, IPv4-mapped or not)?
    pub fn is_resolver(&self, dest: SocketAddr) -> bool {
        dest.port() == 53 && dest.ip().to_canonical() == self.address
    }

    /// The still valid names the session resolved to `ip`.
    pub fn names_for(&self, ip: IpAddr) -> Vec<Known> {
        self.answers.names_for(ip, Instant::now())
    }

    /// See [`Answers::tie`].
    pub fn tie(&self, ip: IpAddr, name: &str, port: u16, protocol: u8) {
        self.answers.tie(ip, name, port, protocol);
    }

    /// Start serving UDP and TCP in one thread, once the session's context is handed over
    /// (queries that arrive before wait in the sockets' queues). The thread takes the
    /// session's context when it first has work (see [`Later`]); the sweeper starts with the
    /// first answer recorded ([`Resolver::start_sweeper`]).
    pub fn spawn(self: &Arc<Self>, later: Later) -> io::Result<()> {
        self.udp.set_nonblocking(true)?;
        self.tcp.set_nonblocking(true)?;
        let r = Arc::clone(self);
        thread("dns", move || r.serve(later))
    }

    /// Wait for a query (UDP) or a client (TCP) and hand each to a thread of its own.
    fn serve(self: Arc<Self>, mut ctx: Later) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut buf = vec![0u8; 4096];
        loop {
            let (udp, tcp) = {
                let mut fds = [
                    PollFd::new(self.udp.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.tcp.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::error!("the session's DNS resolver stopped (poll): {e}");
                        return;
                    }
                }
                let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
                (ready(&fds[0]), ready(&fds[1]))
            };
            if udp {
                match self.udp.recv_from(&mut buf) {
                    Ok((n, peer)) => {
                        let Some(ctx) = ctx.get() else { return };
                        self.query_udp(ctx, buf[..n].to_vec(), peer);
                    }
                    Err(e) if retry_later(&e) => {}
                    Err(e) => {
                        tracing::error!("the session's DNS resolver stopped (UDP): {e}");
                        return;
                    }
                }
            }
            if tcp {
                match self.tcp.accept() {
                    Ok((stream, _)) => {
                        let Some(ctx) = ctx.get() else { return };
                        self.client_tcp(ctx, stream);
                    }
                    Err(e) if retry_later(&e) => {}
                    // A client that went away before it was accepted, fd exhaustion: the
                    // listener itself still works.
                    Err(e) => tracing::debug!("the session's DNS resolver (TCP accept): {e}"),
                }
            }
        }
    }

    fn query_udp(self: &Arc<Self>, ctx: Arc<Ctx>, query: Vec<u8>, peer: SocketAddr) {
        let Some(guard) = InFlight::take(self) else {
            return;
        };
        let r = Arc::clone(self);
        let _ = thread("dns-query", move || {
            let _guard = guard;
            let reply = r.answer(&ctx, &query);
            r.start_sweeper(&ctx);
            if let Some(reply) = reply {
                let _ = r.udp.send_to(&reply, peer);
            }
        });
    }

    fn client_tcp(self: &Arc<Self>, ctx: Arc<Ctx>, mut stream: TcpStream) {
        let Some(guard) = InFlight::take(self) else {
            return;
        };
        let r = Arc::clone(self);
        let _ = thread("dns-tcp-conn", move || {
            let _guard = guard;
            r.serve_tcp_client(&ctx, &mut stream);
        });
    }

    /// The sweeper (expired answers and their kernel entries go): started once there is an
    /// answer to expire. If its thread can't start now, the next answer tries again.
    fn start_sweeper(self: &Arc<Self>, ctx: &Arc<Ctx>) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let (r, c) = (Arc::clone(self), Arc::clone(ctx));
        let started = thread("dns-sweep", move || loop {
            r.answers.wait_for_expiry();
            r.answers.sweep(c.network.as_deref(), Instant::now());
        });
        if let Err(e) = started {
            self.sweeping.store(false, Ordering::Release);
            tracing::warn!("the session's DNS sweeper could not start yet: {e}");
        }
    }

    fn serve_tcp_client(self: &Arc<Self>, ctx: &Arc<Ctx>, stream: &mut TcpStream) {
        let _ = stream.set_read_timeout(Some(TCP_IDLE));
        while let Ok(query) = upstream::read_framed(stream) {
            let reply = self.answer(ctx, &query);
            self.start_sweeper(ctx);
            match reply {
                Some(reply) if upstream::write_framed(stream, &reply).is_ok() => {}
                _ => return,
            }
        }
    }

    /// The reply to one query (None: not a query we can answer at all).
    fn answer(&self, ctx: &Arc<Ctx>, query: &[u8]) -> Option<Vec<u8>> {
        let started = Instant::now();
        let message = Message::from_vec(query).ok()?;
        if message.message_type() != MessageType::Query {
            return None;
        }
        let id = message.id();
        let reply_with = |code: ResponseCode| {
            let mut r = Message::error_msg(id, message.op_code(), code);
            r.add_queries(message.queries().to_vec());
            r.set_recursion_desired(message.recursion_desired());
            r.set_recursion_available(true);
            r.to_vec().ok()
        };
        if message.op_code() != OpCode::Query || message.queries().len() != 1 {
            return reply_with(ResponseCode::NotImp);
        }
        let question = &message.queries()[0];
        let name = question
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let qtype = question.query_type().to_string();
        let named = ctx.policy.decide_name(&name);
        if !self.allowed(ctx, &name, &qtype, &named.verdict, started) {
            return reply_with(ResponseCode::Refused);
        }
        // Forward with an id of our own; the reply gets the client's back.
        let upstream_id = random_u64() as u16;
        let mut forwarded = query.to_vec();
        forwarded[..2].copy_from_slice(&upstream_id.to_be_bytes());
        // UDP first whatever the client used; TCP when the answer is truncated.
        let raw = match upstream::exchange(&self.upstream, &forwarded, upstream_id) {
            Ok(raw) => raw,
            Err(e) => {
                tracing::warn!("resolving {name}: {e}");
                return reply_with(ResponseCode::ServFail);
            }
        };
        let Ok(mut reply) = Message::from_vec(&raw) else {
            return reply_with(ResponseCode::ServFail);
        };
        if reply.queries() != message.queries() {
            return reply_with(ResponseCode::ServFail);
        }
        reply.set_id(id);
        let approved = named.verdict.decision == Decision::Ask;
        let now = Instant::now();
        let mut kept = Vec::new();
        let mut refused = Vec::new();
        // Addresses in special ranges go from both sections; only the answer section's count
        // as what the name resolved to (additional records are the server's say-so).
        let mut filter = |records: Vec<Record>, answer_section: bool| -> Vec<Record> {
            records
                .into_iter()
                .filter(|r| {
                    let ip = match r.data() {
                        RData::A(a) => IpAddr::V4(a.0),
                        RData::AAAA(a) => IpAddr::V6(a.0),
                        _ => return true,
                    };
                    if let Some(range) = ranges::special_range(ip) {
                        if !ranges::named_by_policy(&ctx.policy, ip) {
                            refused.push(serde_json::json!({ "address": ip, "range": range }));
                            return false;
                        }
                    }
                    if answer_section {
                        kept.push((ip, r.ttl()));
                    }
                    true
                })
                .collect()
        };
        let answers = filter(reply.take_answers(), true);
        let additionals = filter(reply.take_additionals(), false);
        reply.insert_answers(answers);
        reply.insert_additionals(additionals);
        for (ip, ttl) in &kept {
            self.answers.record(
                ctx.network.as_deref(),
                *ip,
                Known {
                    name: name.clone(),
                    decided_by: named.verdict.decided_by.clone(),
                    approved,
                },
                answers::expiry(now, *ttl, self.grace),
                &named.ports,
            );
        }
        ctx.audit.record(AuditRecord::session(
            &ctx.session,
            0,
            "dns-answer",
            serde_json::json!({
                "name": name,
                "type": qtype,
                "addresses": kept.iter().map(|(ip, ttl)| serde_json::json!({ "address": ip, "ttl": ttl })).collect::<Vec<_>>(),
                "refused": refused,
            }),
        ));
        reply.to_vec().ok()
    }

    /// Decide the lookup through the supervisor's usual path (audit, session memory, the
    /// approval broker); true when it may be forwarded. Concurrent asks about one name share
    /// one prompt.
    fn allowed(
        &self,
        ctx: &Arc<Ctx>,
        name: &str,
        qtype: &str,
        verdict: &Verdict,
        started: Instant,
    ) -> bool {
        let (slot, first) = if verdict.decision == Decision::Ask {
            let mut asking = self.asking.lock().expect("asking lock");
            match asking.get(name) {
                Some(slot) => (Some(Arc::clone(slot)), false),
                None => {
                    let slot = Arc::new(AskSlot::default());
                    asking.insert(name.to_string(), Arc::clone(&slot));
                    (Some(slot), true)
                }
            }
        } else {
            (None, true)
        };
        let wait_for = ctx.policy.approval_timeout + Duration::from_secs(5);
        if !first {
            let slot = slot.expect("a slot when not first");
            let outcome = slot.outcome.lock().expect("ask slot lock");
            let (outcome, _) = slot
                .done
                .wait_timeout_while(outcome, wait_for, |o| o.is_none())
                .expect("ask slot lock");
            return outcome.unwrap_or(false);
        }
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let pending = Pending {
            notif: None,
            kind: Kind::Resolve,
            details: serde_json::json!({ "name": name, "type": qtype }),
            summary: format!(
                "resolve {} ({qtype})",
                supervise::escape_for_human(name.as_bytes())
            ),
            key: format!("dns\0{name}"),
            verdict: verdict.clone(),
            perform: Box::new(move || {
                let _ = tx.send(());
                Effect::Return(0)
            }),
            denied_errno: 0,
            blocking: false,
            quiet_allow: false,
            by_command_line: false,
            started,
            pid: 0,
        };
        supervise::decide(ctx, pending);
        let ok = rx.recv_timeout(wait_for).is_ok();
        if let Some(slot) = slot {
            *slot.outcome.lock().expect("ask slot lock") = Some(ok);
            slot.done.notify_all();
            self.asking.lock().expect("asking lock").remove(name);
        }
        ok
    }
}

/// One query being handled; counted so a flood can't start unbounded threads.
struct InFlight(Arc<Resolver>);

impl InFlight {
    fn take(r: &Arc<Resolver>) -> Option<InFlight> {
        if r.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            r.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlight(Arc::clone(r)))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A socket error after which the socket still works (nothing there after all, a signal).
fn retry_later(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

fn thread(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(|_| ())
}

/// 64 random bits from the standard library's per-process random hasher keys.
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}
