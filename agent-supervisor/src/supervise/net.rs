//! `connect`, `bind`, `sendto`, `sendmsg`, `sendmmsg`: where the agent's sockets go.
//!
//! The destination is copied out of the agent's memory once; the supervisor then performs
//! the call itself on the agent's own socket (duplicated with `pidfd_getfd`, so it is the same
//! open file description: blocking mode, timeouts and the connection all stay the agent's)
//! with *its copy* of the address. A thread that rewrites the sockaddr after the check changes
//! nothing. Unix-socket paths are file accesses (write on the socket file), resolved in the
//! agent's root and connected through the checked `O_PATH` fd.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use agent_supervisor_policy::{Access, DecidedBy, Decision, Request, Verdict};

use super::tracee::{Resolved, Tracee};
use super::{escape_for_human, Ctx, Effect, Kind, Pending, Prepared};
use crate::sys::{self, Notif};

const SOCKADDR_MAX: usize = 128;
const MSGHDR_SIZE: usize = 56;
const MMSGHDR_SIZE: usize = 64;
const UIO_MAXIOV: usize = 1024;
const SEND_MAX: usize = 16 << 20;
const CONTROL_MAX: usize = 64 << 10;
const SCM_RIGHTS: i32 = 1;
const SCM_CREDENTIALS: i32 = 2;

/// A decoded socket address.
#[derive(Debug, Clone)]
enum Dest {
    Inet(SocketAddr),
    UnixPath(Vec<u8>),
    /// Abstract unix address (the name without its leading NUL).
    UnixAbstract(Vec<u8>),
    /// Unnamed unix address.
    UnixOther,
    /// Netlink: destination port id and multicast groups.
    Netlink {
        pid: u32,
        groups: u32,
    },
    Unspec,
    Other(u16),
}

fn parse_sockaddr(b: &[u8]) -> Result<Dest, i32> {
    if b.len() < 2 {
        return Err(libc::EINVAL);
    }
    let family = u16::from_ne_bytes([b[0], b[1]]);
    match family as i32 {
        libc::AF_INET => {
            if b.len() < 16 {
                return Err(libc::EINVAL);
            }
            let port = u16::from_be_bytes([b[2], b[3]]);
            let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            Ok(Dest::Inet(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        libc::AF_INET6 => {
            if b.len() < 24 {
                return Err(libc::EINVAL);
            }
            let port = u16::from_be_bytes([b[2], b[3]]);
            let ip: [u8; 16] = b[8..24].try_into().expect("16 bytes");
            Ok(Dest::Inet(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(ip)),
                port,
            )))
        }
        libc::AF_UNIX => {
            let path = &b[2..];
            if path.is_empty() {
                return Ok(Dest::UnixOther);
            }
            if path[0] == 0 {
                return Ok(Dest::UnixAbstract(path[1..].to_vec()));
            }
            let end = path.iter().position(|&c| c == 0).unwrap_or(path.len());
            Ok(Dest::UnixPath(path[..end].to_vec()))
        }
        libc::AF_NETLINK => {
            if b.len() < 12 {
                return Err(libc::EINVAL);
            }
            let pid = u32::from_ne_bytes(b[4..8].try_into().expect("4 bytes"));
            let groups = u32::from_ne_bytes(b[8..12].try_into().expect("4 bytes"));
            Ok(Dest::Netlink { pid, groups })
        }
        libc::AF_UNSPEC => Ok(Dest::Unspec),
        f => Ok(Dest::Other(f as u16)),
    }
}

/// A destination after the policy has seen it.
struct Decided {
    verdict: Verdict,
    shown: String,
    family: &'static str,
    /// Address to use for the real call (unix paths rewritten to the checked object).
    addr: Vec<u8>,
    /// Keeps the checked unix socket path (O_PATH) alive until the call.
    hold: Option<OwnedFd>,
    /// The host name the session resolved to this address, when one decided.
    host: Option<String>,
}

fn builtin(decision: Decision, reason: &str) -> Verdict {
    Verdict {
        decision,
        decided_by: DecidedBy::Default,
        reason: Some(reason.to_string()),
    }
}

/// An IP destination. `0.0.0.0` and `::` mean this host to connect/send: they are decided as
/// loopback (the strictest of the two spellings wins). When the session resolved the address
/// through its resolver, the names behind it take part (the most permissive name wins: the
/// kernel can't tell them apart either). TCP/UDP port 53 goes to the session's resolver only.
fn decide_inet(ctx: &Ctx, sa: SocketAddr, raw: &[u8], proto: i32) -> Decided {
    let decided = |verdict: Verdict, host: Option<String>| Decided {
        verdict,
        shown: sa.to_string(),
        family: "inet",
        addr: raw.to_vec(),
        hold: None,
        host,
    };
    let is_dns_port = sa.port() == 53 && (proto == libc::IPPROTO_TCP || proto == libc::IPPROTO_UDP);
    if ctx.dns.is_none() && is_dns_port {
        return decided(
            builtin(
                Decision::Deny,
                "DNS is refused: the session's resolver is not running",
            ),
            None,
        );
    }
    if let Some(dns) = ctx.dns.as_deref() {
        if dns.is_resolver(sa) {
            return decided(builtin(Decision::Allow, "the session's DNS resolver"), None);
        }
        if is_dns_port {
            return decided(
                builtin(
                    Decision::Deny,
                    &format!(
                        "DNS goes through the session's resolver ({} in /etc/resolv.conf); DNS to other servers is refused",
                        dns.address()
                    ),
                ),
                None,
            );
        }
    }
    let ask = |ip: IpAddr, host: Option<&str>| {
        ctx.policy.decide(&Request::Connect {
            ip,
            port: sa.port(),
            host,
        })
    };
    let by_address = |host: Option<&str>| {
        let mut verdict = ask(sa.ip(), host);
        let unspecified = match sa.ip().to_canonical() {
            IpAddr::V4(v4) => v4
                .is_unspecified()
                .then_some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            IpAddr::V6(v6) => v6
                .is_unspecified()
                .then_some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        };
        if let Some(loopback) = unspecified {
            let as_loopback = ask(loopback, host);
            if as_loopback.decision > verdict.decision {
                verdict = as_loopback;
            }
        }
        verdict
    };
    let mut verdict = by_address(None);
    let mut host = None;
    if let Some(dns) = ctx.dns.as_deref() {
        for known in dns.names_for(sa.ip()) {
            let mut v = by_address(Some(&known.name));
            // The name's ask rule was answered yes when it was resolved: not asked again.
            if v.decision == Decision::Ask && known.approved && v.decided_by == known.decided_by {
                v = Verdict {
                    decision: Decision::Allow,
                    decided_by: v.decided_by,
                    reason: Some(format!("approved when {} was resolved", known.name)),
                };
            }
            if host.is_none() || v.decision < verdict.decision {
                if v.decision == Decision::Allow && verdict.decision != Decision::Allow {
                    // This exact entry exists because of the name: it goes with the answer.
                    if let Ok(protocol) = u8::try_from(proto) {
                        dns.tie(sa.ip(), &known.name, sa.port(), protocol);
                    }
                }
                verdict = v;
                host = Some(known.name);
            }
        }
    }
    decided(verdict, host)
}

/// `creating`: bind (the address is being created); `is_send`: sendto/sendmsg/sendmmsg.
fn decide_dest(
    ctx: &Ctx,
    t: &Tracee,
    raw: &[u8],
    creating: bool,
    is_send: bool,
    proto: i32,
) -> Result<Decided, i32> {
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EACCES);
    Ok(match parse_sockaddr(raw)? {
        Dest::Inet(sa) => decide_inet(ctx, sa, raw, proto),
        Dest::UnixPath(p) => {
            let (target, real): (Resolved, std::path::PathBuf) = if creating {
                let (dir, name) = t.resolve_parent(libc::AT_FDCWD, &p).map_err(errno)?;
                let real = dir.path.join(&name);
                let via = format!(
                    "/proc/self/fd/{}/{}",
                    dir.fd.as_raw_fd(),
                    name.to_string_lossy()
                );
                let r = Resolved {
                    fd: dir.fd,
                    path: real.clone(),
                    lexical: dir.lexical,
                };
                return Ok(Decided {
                    verdict: ctx.policy.decide(&Request::Open {
                        path: &real,
                        access: Access::WRITE,
                    }),
                    shown: format!("unix:{}", real.display()),
                    family: "unix",
                    addr: sockaddr_un(via.as_bytes())?,
                    hold: Some(r.fd),
                    host: None,
                });
            } else {
                let r = t.resolve(libc::AT_FDCWD, &p, true, false).map_err(errno)?;
                let real = r.path.clone();
                (r, real)
            };
            let via = format!("/proc/self/fd/{}", target.fd.as_raw_fd());
            // A socket the session bound itself is its own business. Any other is a program
            // outside the sandbox (an ssh-agent, tmux, Docker): being allowed to write in the
            // directory is not enough, it takes a rule that names it.
            // Which socket is bound to this very file, and does the session hold it? (Asked of
            // the kernel with sock_diag at connect time: nothing to race.)
            let own = crate::sys::fstat_id(target.fd.as_fd())
                .is_ok_and(|(dev, ino, _)| socket_file_inside_session(t, dev, ino));
            let mut verdict = ctx.policy.decide(&Request::Open {
                path: &real,
                access: Access::WRITE,
            });
            if own {
                verdict = builtin(Decision::Allow, "unix socket bound inside the sandbox");
            } else if verdict.decided_by == DecidedBy::Filesystem {
                verdict = builtin(
                    Decision::Deny,
                    "unix socket of a program outside the sandbox: allow it with a file rule naming the socket",
                );
            }
            Decided {
                verdict,
                shown: format!("unix:{}", real.display()),
                family: "unix",
                addr: sockaddr_un(via.as_bytes())?,
                hold: Some(target.fd),
                host: None,
            }
        }
        Dest::UnixAbstract(name) => {
            // The supervisor makes this connect, outside the agent's Landlock domain, so it
            // applies Landlock's abstract-socket scope itself: only sockets bound inside this
            // session are reachable, never the host's (D-Bus, X11, ...).
            let shown = format!("unix:@{}", escape_for_human(&name));
            let verdict = if creating {
                builtin(Decision::Allow, "binding an abstract unix socket")
            } else if bound_inside_session(t, &name) {
                builtin(
                    Decision::Allow,
                    "abstract unix socket bound inside the sandbox",
                )
            } else {
                builtin(Decision::Deny, "abstract unix socket outside the sandbox")
            };
            Decided {
                verdict,
                shown,
                family: "unix",
                addr: raw.to_vec(),
                hold: None,
                host: None,
            }
        }
        Dest::UnixOther => Decided {
            verdict: builtin(Decision::Allow, "unnamed unix address"),
            shown: "unix:unnamed".into(),
            family: "unix",
            addr: raw.to_vec(),
            hold: None,
            host: None,
        },
        Dest::Netlink { pid, groups } => Decided {
            // To the kernel only: a non-zero port id or multicast groups reach user-space
            // sockets of the host (NETLINK_USERSOCK and friends).
            verdict: if creating {
                builtin(Decision::Allow, "binding a netlink socket")
            } else if pid == 0 && groups == 0 {
                builtin(Decision::Allow, "netlink to the kernel")
            } else if groups == 0 && netlink_port_inside_session(t, proto, pid) {
                builtin(Decision::Allow, "netlink to a socket inside the sandbox")
            } else {
                builtin(
                    Decision::Deny,
                    "netlink to a user-space socket or multicast group of the host",
                )
            },
            shown: format!("netlink:{pid}/{groups}"),
            family: "netlink",
            addr: raw.to_vec(),
            hold: None,
            host: None,
        },
        // connect(AF_UNSPEC) dissolves an association. On a send, IPv4 UDP reads an AF_UNSPEC
        // address as AF_INET (sin_addr, sin_port): decide it as that.
        Dest::Unspec if creating || !is_send => Decided {
            verdict: builtin(Decision::Allow, "AF_UNSPEC (disconnect)"),
            shown: "unspec".into(),
            family: "unspec",
            addr: raw.to_vec(),
            hold: None,
            host: None,
        },
        Dest::Unspec => {
            let mut as_inet = raw.to_vec();
            as_inet.resize(16, 0);
            let port = u16::from_be_bytes([as_inet[2], as_inet[3]]);
            let ip = Ipv4Addr::new(as_inet[4], as_inet[5], as_inet[6], as_inet[7]);
            decide_inet(ctx, SocketAddr::new(IpAddr::V4(ip), port), raw, proto)
        }
        Dest::Other(f) => Decided {
            verdict: builtin(
                Decision::Deny,
                &format!("address family {f} is not allowed in the sandbox"),
            ),
            shown: format!("family-{f}"),
            family: "other",
            addr: raw.to_vec(),
            hold: None,
            host: None,
        },
    })
}

/// Is the abstract unix socket `name` bound by a process of the trapped task's session (its PID
/// namespace)? Reads `/proc/net/unix` for the name's inodes, then looks for them among the fds
/// of the session's processes. Any doubt is a no.
fn bound_inside_session(t: &Tracee, name: &[u8]) -> bool {
    let abstract_name: Vec<u8> = [&[0u8][..], name].concat();
    let inodes: Vec<String> = unix_sockets()
        .into_iter()
        .filter(|s| s.name.as_deref() == Some(abstract_name.as_slice()))
        .map(|s| s.inode.to_string())
        .collect();
    sockets_in_session(t, &inodes)
}

/// Is the unix socket bound to the file (st_dev, st_ino) a socket of the session?
fn socket_file_inside_session(t: &Tracee, dev: u64, ino: u64) -> bool {
    let inodes: Vec<String> = unix_sockets()
        .into_iter()
        .filter(|s| s.vfs == Some((dev, ino as u32)))
        .map(|s| s.inode.to_string())
        .collect();
    sockets_in_session(t, &inodes)
}

/// One unix socket as `sock_diag` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UnixSocket {
    /// The socket's inode (as in `socket:[N]`).
    inode: u32,
    /// Exact bound name (abstract names start with NUL).
    name: Option<Vec<u8>>,
    /// (st_dev, low 32 bits of st_ino) of the file it is bound to.
    vfs: Option<(u64, u32)>,
}

/// Every unix socket of the network namespace (empty on error: then nothing counts as the
/// session's own, which is the safe answer).
fn unix_sockets() -> Vec<UnixSocket> {
    crate::sys::unix_sock_diag_dump()
        .map(|raw| parse_unix_diag(&raw))
        .unwrap_or_default()
}

/// Parse `sock_diag` messages: nlmsghdr, unix_diag_msg, then attributes (UNIX_DIAG_NAME = 0,
/// UNIX_DIAG_VFS = 1).
fn parse_unix_diag(raw: &[u8]) -> Vec<UnixSocket> {
    let u16_at = |b: &[u8], o: usize| u16::from_ne_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= raw.len() {
        let len = u32_at(raw, off) as usize;
        let typ = u16_at(raw, off + 4);
        if len < 16 || off + len > raw.len() {
            break;
        }
        if typ == 20 && len >= 32 {
            let msg = &raw[off + 16..off + len];
            let mut sock = UnixSocket {
                inode: u32_at(msg, 4),
                name: None,
                vfs: None,
            };
            let mut a = 16;
            while a + 4 <= msg.len() {
                let alen = u16_at(msg, a) as usize;
                let atype = u16_at(msg, a + 2);
                if alen < 4 || a + alen > msg.len() {
                    break;
                }
                let payload = &msg[a + 4..a + alen];
                match atype {
                    0 => sock.name = Some(payload.to_vec()),
                    1 if payload.len() >= 8 => {
                        sock.vfs = Some((
                            crate::sys::userspace_dev(u32_at(payload, 4)),
                            u32_at(payload, 0),
                        ))
                    }
                    _ => {}
                }
                a += (alen + 3) & !3;
            }
            out.push(sock);
        }
        off += (len + 3) & !3;
    }
    out
}

/// Is netlink port id `port` (protocol `proto`) a socket of the trapped task's session?
fn netlink_port_inside_session(t: &Tracee, proto: i32, port: u32) -> bool {
    let (proto, port) = (proto.to_string(), port.to_string());
    let inodes = proc_net_inodes(
        t,
        "netlink",
        |f| f.len() >= 10 && f[1] == proto.as_bytes() && f[2] == port.as_bytes(),
        9,
    );
    sockets_in_session(t, &inodes)
}

/// Inode column `col` of the rows of `/proc/<tid>/net/<table>` that `keep` accepts.
fn proc_net_inodes(
    t: &Tracee,
    table: &str,
    keep: impl Fn(&[&[u8]]) -> bool,
    col: usize,
) -> Vec<String> {
    let Ok(text) = crate::sys::read_proc_bytes(format!("/proc/{}/net/{table}", t.tid), 16 << 10)
    else {
        return vec![];
    };
    text.split(|&c| c == b'\n')
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line
                .split(|&c| c == b' ')
                .filter(|f| !f.is_empty())
                .collect();
            (fields.len() > col && keep(&fields))
                .then(|| String::from_utf8_lossy(fields[col]).into_owned())
        })
        .collect()
}

/// Does a process of the trapped task's session (its PID namespace) hold one of these socket
/// inodes? Any doubt is a no.
fn sockets_in_session(t: &Tracee, inodes: &[String]) -> bool {
    if inodes.is_empty() {
        return false;
    }
    let Ok(our_ns) = std::fs::read_link(format!("/proc/{}/ns/pid", t.tid)) else {
        return false;
    };
    let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .any(|e| {
            std::fs::read_link(e.path().join("ns/pid")).is_ok_and(|ns| ns == our_ns)
                && std::fs::read_dir(e.path().join("fd")).is_ok_and(|fds| {
                    fds.flatten().any(|fd| {
                        std::fs::read_link(fd.path())
                            .is_ok_and(|l| targets.iter().any(|t| l.as_os_str() == t.as_str()))
                    })
                })
        })
}

/// The IP destination the kernel's connect/sendmsg hooks will see for `addr` (None for other
/// families): on a send, IPv4 UDP reads `AF_UNSPEC` as `AF_INET`, as [`decide_dest`] does.
fn kernel_destination(addr: &[u8], is_send: bool) -> Option<SocketAddr> {
    match parse_sockaddr(addr).ok()? {
        Dest::Inet(sa) => Some(sa),
        Dest::Unspec if is_send => {
            let mut as_inet = addr.to_vec();
            as_inet.resize(16, 0);
            let port = u16::from_be_bytes([as_inet[2], as_inet[3]]);
            let ip = Ipv4Addr::new(as_inet[4], as_inet[5], as_inet[6], as_inet[7]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        _ => None,
    }
}

/// Right before the supervisor connects or sends to an allowed `addr`: let exactly that
/// destination through the in-kernel backstop (when it is on). Err(errno): the kernel would
/// refuse the call, so answer it as refused.
fn allow_in_kernel(
    network: Option<&crate::ebpf::network::NetworkMaps>,
    addr: &[u8],
    is_send: bool,
    proto: i32,
) -> Result<(), i32> {
    let (Some(network), Some(dest)) = (network, kernel_destination(addr, is_send)) else {
        return Ok(());
    };
    network
        .before_connect(dest.ip(), dest.port(), proto)
        .map_err(|e| {
            tracing::warn!("the kernel backstop could not take {dest}: {e}");
            libc::EPERM
        })
}

fn sockaddr_un(path: &[u8]) -> Result<Vec<u8>, i32> {
    if path.len() >= 108 {
        return Err(libc::ENAMETOOLONG);
    }
    let mut v = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    v.extend_from_slice(path);
    v.push(0);
    Ok(v)
}

fn read_addr(t: &Tracee, ptr: u64, len: u64) -> Result<Vec<u8>, i32> {
    if len as usize > SOCKADDR_MAX || len == 0 {
        return Err(libc::EINVAL);
    }
    t.read_bytes(ptr, len as usize)
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EFAULT))
}

/// The agent's socket, duplicated; ENOTSOCK/EBADF as the kernel would say.
/// Returns the socket, whether it blocks, and its protocol (`SO_PROTOCOL`).
fn agent_socket(t: &Tracee, fd: i32) -> Result<(Arc<OwnedFd>, bool, i32), i32> {
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EBADF);
    let sock = t.dup_fd(fd).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBADF) {
            libc::EBADF
        } else {
            errno(e)
        }
    })?;
    sys::socket_domain(sock.as_fd()).map_err(errno)?;
    let proto = sys::socket_protocol(sock.as_fd()).map_err(errno)?;
    let nonblocking = sys::fd_status_flags(sock.as_fd()).map_err(errno)? & libc::O_NONBLOCK != 0;
    Ok((Arc::new(sock), !nonblocking, proto))
}

pub fn prepare(ctx: &Arc<Ctx>, n: Notif) -> Result<Prepared, i32> {
    let started = Instant::now();
    let t = Tracee::load(n.pid).map_err(|_| libc::ESRCH)?;
    let pid = t.tgid;
    let a = n.args;
    let nr = n.nr as i64;
    let (sock, blocking, proto) = agent_socket(&t, a[0] as i32)?;
    let pending = |kind: Kind,
                   call: &str,
                   d: Decided,
                   denied_errno: i32,
                   perform: super::Perform,
                   quiet: bool| {
        let mut details =
            serde_json::json!({ "call": call, "destination": d.shown, "family": d.family });
        let mut summary = format!("{call} to {}", escape_for_human(d.shown.as_bytes()));
        if let Some(host) = &d.host {
            details["host"] = serde_json::json!(host);
            summary.push_str(&format!(" ({})", escape_for_human(host.as_bytes())));
        }
        Pending {
            notif: Some(n),
            kind,
            summary,
            key: format!("net\0{}", d.shown),
            details,
            verdict: d.verdict,
            perform,
            denied_errno,
            blocking,
            quiet_allow: quiet,
            by_command_line: false,
            started,
            pid,
        }
    };
    let p = match nr {
        libc::SYS_connect | libc::SYS_bind => {
            let raw = read_addr(&t, a[1], a[2])?;
            let is_bind = nr == libc::SYS_bind;
            let mut d = decide_dest(ctx, &t, &raw, is_bind, false, proto)?;
            let addr = d.addr.clone();
            // The checked unix socket path (O_PATH) must stay open until the call.
            let hold = d.hold.take();
            let network = ctx.network.clone();
            let perform: super::Perform = Box::new(move || {
                let _hold = hold;
                let r = if is_bind {
                    sys::bind_raw(sock.as_fd(), &addr)
                } else if let Err(errno) = allow_in_kernel(network.as_deref(), &addr, false, proto)
                {
                    return Effect::Errno(errno);
                } else {
                    sys::connect_raw(sock.as_fd(), &addr)
                };
                to_effect(r.map(|_| 0))
            });
            let (kind, call, errno) = if is_bind {
                (Kind::Bind, "bind", libc::EPERM)
            } else {
                (Kind::Connect, "connect", libc::ECONNREFUSED)
            };
            // Inet binds are audited but decided by default-allow: listening is not reaching out.
            if is_bind && d.family == "inet" {
                d.verdict = builtin(Decision::Allow, "binding a local port");
            }
            pending(kind, call, d, errno, perform, false)
        }
        libc::SYS_sendto => {
            let raw = read_addr(&t, a[4], a[5])?;
            let mut d = decide_dest(ctx, &t, &raw, false, true, proto)?;
            let addr = d.addr.clone();
            let hold = d.hold.take();
            let (buf, len, flags) = (a[1], (a[2] as usize).min(SEND_MAX), a[3] as i32);
            let network = ctx.network.clone();
            let perform: super::Perform = Box::new(move || {
                let _hold = hold;
                let data = match t.read_bytes(buf, len) {
                    Ok(d) => d,
                    Err(e) => return Effect::Errno(e.raw_os_error().unwrap_or(libc::EFAULT)),
                };
                if let Err(errno) = allow_in_kernel(network.as_deref(), &addr, true, proto) {
                    return Effect::Errno(errno);
                }
                send(&t, pid, &sock, &[&data], Some(&addr), &[], flags)
            });
            pending(Kind::Send, "sendto", d, libc::EPERM, perform, false)
        }
        libc::SYS_sendmsg => {
            let hdr = t.read_bytes(a[1], MSGHDR_SIZE).map_err(|_| libc::EFAULT)?;
            let msg = MsgHdr::parse(&hdr);
            let flags = a[2] as i32;
            let (mut d, quiet) = match msg.name(&t)? {
                Some(raw) => (decide_dest(ctx, &t, &raw, false, true, proto)?, false),
                None => (
                    Decided {
                        verdict: builtin(Decision::Allow, "data on an established connection"),
                        shown: "connected peer".into(),
                        family: "connected",
                        addr: vec![],
                        hold: None,
                        host: None,
                    },
                    true,
                ),
            };
            let addr = (!quiet).then(|| d.addr.clone());
            let hold = d.hold.take();
            let network = ctx.network.clone();
            let perform: super::Perform = Box::new(move || match msg.payload(&t) {
                Ok((data, control, _fds)) => {
                    let _hold = &hold;
                    if let Some(addr) = &addr {
                        if let Err(errno) = allow_in_kernel(network.as_deref(), addr, true, proto) {
                            return Effect::Errno(errno);
                        }
                    }
                    let parts: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
                    send(&t, pid, &sock, &parts, addr.as_deref(), &control, flags)
                }
                Err(e) => Effect::Errno(e),
            });
            pending(Kind::Send, "sendmsg", d, libc::EPERM, perform, quiet)
        }
        libc::SYS_sendmmsg => {
            let vlen = (a[2] as usize).min(UIO_MAXIOV);
            let flags = a[3] as i32;
            let mut msgs = Vec::with_capacity(vlen);
            let mut decided: Option<Decided> = None;
            let mut holds = Vec::new();
            for i in 0..vlen {
                let hdr = t
                    .read_bytes(a[1] + (i * MMSGHDR_SIZE) as u64, MSGHDR_SIZE)
                    .map_err(|_| libc::EFAULT)?;
                let msg = MsgHdr::parse(&hdr);
                let addr = match msg.name(&t)? {
                    Some(raw) => {
                        let mut d = decide_dest(ctx, &t, &raw, false, true, proto)?;
                        let addr = d.addr.clone();
                        holds.extend(d.hold.take());
                        if decided
                            .as_ref()
                            .is_none_or(|cur| d.verdict.decision > cur.verdict.decision)
                        {
                            decided = Some(d);
                        }
                        Some(addr)
                    }
                    None => None,
                };
                msgs.push((msg, addr));
            }
            let quiet = decided.is_none();
            let d = decided.unwrap_or(Decided {
                verdict: builtin(Decision::Allow, "data on an established connection"),
                shown: "connected peer".into(),
                family: "connected",
                addr: vec![],
                hold: None,
                host: None,
            });
            let vec_addr = a[1];
            let network = ctx.network.clone();
            let perform: super::Perform = Box::new(move || {
                let _holds = holds;
                let mut sent = 0i64;
                for (i, (msg, addr)) in msgs.iter().enumerate() {
                    let allowed = addr.as_deref().map_or(Ok(()), |addr| {
                        allow_in_kernel(network.as_deref(), addr, true, proto)
                    });
                    let eff = match allowed.and_then(|()| msg.payload(&t)) {
                        Ok((data, control, _fds)) => {
                            let parts: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
                            send(&t, pid, &sock, &parts, addr.as_deref(), &control, flags)
                        }
                        Err(e) => Effect::Errno(e),
                    };
                    match eff {
                        Effect::Return(n) => {
                            let at = vec_addr + (i * MMSGHDR_SIZE + MSGHDR_SIZE) as u64;
                            let _ = sys::write_process_memory(t.tid, at, &(n as u32).to_ne_bytes());
                            sent += 1;
                        }
                        other if sent == 0 => return other,
                        _ => break,
                    }
                }
                Effect::Return(sent)
            });
            pending(Kind::Send, "sendmmsg", d, libc::EPERM, perform, quiet)
        }
        _ => return Err(libc::ENOSYS),
    };
    Ok(Prepared::Decide(Box::new(p)))
}

fn to_effect(r: std::io::Result<i64>) -> Effect {
    match r {
        Ok(v) => Effect::Return(v),
        Err(e) => Effect::Errno(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// Send on the agent's socket; SIGPIPE goes to the agent's thread, as the kernel would do.
fn send(
    t: &Tracee,
    pid: i32,
    sock: &OwnedFd,
    data: &[&[u8]],
    addr: Option<&[u8]>,
    control: &[u8],
    flags: i32,
) -> Effect {
    match sys::sendmsg_raw(
        sock.as_fd(),
        data,
        addr,
        control,
        flags | libc::MSG_NOSIGNAL,
    ) {
        Ok(n) => Effect::Return(n as i64),
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            if errno == libc::EPIPE && flags & libc::MSG_NOSIGNAL == 0 {
                let _ = sys::tgkill(pid, t.tid, libc::SIGPIPE);
            }
            Effect::Errno(errno)
        }
    }
}

/// A message to send: data (one buffer per iovec), control bytes with fds translated, and the
/// duplicated fds that must stay open until the send.
type Payload = (Vec<Vec<u8>>, Vec<u8>, Vec<OwnedFd>);

/// The parts of a `struct msghdr` we use (addresses in the agent's memory).
#[derive(Debug, Clone, Copy)]
struct MsgHdr {
    name: u64,
    namelen: u32,
    iov: u64,
    iovlen: u64,
    control: u64,
    controllen: u64,
}

impl MsgHdr {
    fn parse(b: &[u8]) -> MsgHdr {
        let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        MsgHdr {
            name: u64_at(0),
            namelen: u32::from_ne_bytes(b[8..12].try_into().expect("4 bytes")),
            iov: u64_at(16),
            iovlen: u64_at(24),
            control: u64_at(32),
            controllen: u64_at(40),
        }
    }

    fn name(&self, t: &Tracee) -> Result<Option<Vec<u8>>, i32> {
        if self.name == 0 || self.namelen == 0 {
            return Ok(None);
        }
        read_addr(t, self.name, self.namelen as u64).map(Some)
    }

    /// Data (one buffer per iovec), control with SCM_RIGHTS fds translated into ours, and the
    /// fds that must stay open until the send.
    fn payload(&self, t: &Tracee) -> Result<Payload, i32> {
        let efault = |_| libc::EFAULT;
        if self.iovlen as usize > UIO_MAXIOV {
            return Err(libc::EMSGSIZE);
        }
        let mut data = Vec::with_capacity(self.iovlen as usize);
        let mut total = 0usize;
        for i in 0..self.iovlen {
            let v = t.read_bytes(self.iov + i * 16, 16).map_err(efault)?;
            let base = u64::from_ne_bytes(v[0..8].try_into().expect("8"));
            let len = u64::from_ne_bytes(v[8..16].try_into().expect("8")) as usize;
            let len = len.min(SEND_MAX.saturating_sub(total));
            total += len;
            data.push(if len == 0 {
                vec![]
            } else {
                t.read_bytes(base, len).map_err(efault)?
            });
        }
        let mut fds = Vec::new();
        let control = if self.control != 0 && self.controllen > 0 {
            if self.controllen as usize > CONTROL_MAX {
                return Err(libc::ENOBUFS);
            }
            let mut c = t
                .read_bytes(self.control, self.controllen as usize)
                .map_err(efault)?;
            translate_control(t, &mut c, &mut fds)?;
            c
        } else {
            vec![]
        };
        Ok((data, control, fds))
    }
}

/// Walk the control messages; replace the agent's fd numbers in SCM_RIGHTS with duplicates
/// of ours. SCM_CREDENTIALS can't be sent on the agent's behalf: refused (EPERM).
fn translate_control(t: &Tracee, c: &mut [u8], keep: &mut Vec<OwnedFd>) -> Result<(), i32> {
    let mut off = 0usize;
    while off + 16 <= c.len() {
        let len = u64::from_ne_bytes(c[off..off + 8].try_into().expect("8")) as usize;
        let level = i32::from_ne_bytes(c[off + 8..off + 12].try_into().expect("4"));
        let typ = i32::from_ne_bytes(c[off + 12..off + 16].try_into().expect("4"));
        if len < 16 || off + len > c.len() {
            return Err(libc::EINVAL);
        }
        if level == libc::SOL_SOCKET && typ == SCM_CREDENTIALS {
            return Err(libc::EPERM);
        }
        if level == libc::SOL_SOCKET && typ == SCM_RIGHTS {
            let mut p = off + 16;
            while p + 4 <= off + len {
                let fd = i32::from_ne_bytes(c[p..p + 4].try_into().expect("4"));
                let ours = t.dup_fd(fd).map_err(|_| libc::EBADF)?;
                c[p..p + 4].copy_from_slice(&ours.as_raw_fd().to_ne_bytes());
                keep.push(ours);
                p += 4;
            }
        }
        off += (len + 7) & !7;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_inet_and_unix() {
        let mut v4 = vec![0u8; 16];
        v4[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&8080u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[127, 0, 0, 1]);
        assert!(
            matches!(parse_sockaddr(&v4), Ok(Dest::Inet(sa)) if sa.to_string() == "127.0.0.1:8080")
        );
        let mut un = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        un.extend_from_slice(b"/run/x.sock\0garbage");
        assert!(matches!(parse_sockaddr(&un), Ok(Dest::UnixPath(p)) if p == b"/run/x.sock"));
        let ab = [(libc::AF_UNIX as u16).to_ne_bytes().to_vec(), vec![0, b'a']].concat();
        assert!(matches!(parse_sockaddr(&ab), Ok(Dest::UnixAbstract(n)) if n == b"a"));
        assert_eq!(parse_sockaddr(&[1]).err(), Some(libc::EINVAL));
    }
}
