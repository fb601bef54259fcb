//! `cargo xtask bench` DNS case: what host-name rules cost.
//!
//! - connections per second to an allowed name: a Python loop that resolves the name once,
//!   then connects and closes 2,000 times, timing its own loop; bare it connects to the
//!   address directly (the host's resolvers don't know the bench's name), supervised every
//!   connect goes through the supervisor, which finds the name behind the address;
//! - DNS latency: the same loop sending 500 A queries over UDP (a connected socket) and waiting
//!   for each answer, bare straight to the bench's DNS server, supervised to the session's
//!   resolver (which checks the name against the policy and forwards it to the same server);
//!   and, supervised only, `getaddrinfo()` of the name (glibc through the resolver).
//!
//! The DNS server is a small UDP responder in this process answering every A query with the
//! bench's TEST-NET address; the listener sits on that address, on a veth pair the bench
//! creates (root) and deletes.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

const ROUNDS: usize = 7;
const CONNECTS: usize = 2000;
const QUERIES: usize = 500;
const NAME: &str = "bench.example.test";
const LINK: &str = "asbench0";
const ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 250);

/// The agent: `connect NAME_OR_IP PORT N`, `query SERVER PORT NAME N` (SERVER `resolv.conf`:
/// the first nameserver there) or `getaddrinfo NAME N`; prints microseconds per operation (median of its own timings).
const SCRIPT: &str = r#"
import socket, statistics, struct, sys, time
op = sys.argv[1]
times = []
if op == "connect":
    host, port, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    ip = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    for _ in range(n):
        t = time.perf_counter()
        s = socket.create_connection((ip, port))
        s.close()
        times.append(time.perf_counter() - t)
elif op == "query":
    server, port, name, n = sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    if server == "resolv.conf":
        server = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((server, port))
    s.settimeout(5)
    for i in range(n):
        q = struct.pack(">HHHHHH", i & 0xffff, 0x0100, 1, 0, 0, 0)
        for label in name.split("."):
            q += bytes([len(label)]) + label.encode()
        q += b"\0" + struct.pack(">HH", 1, 1)
        t = time.perf_counter()
        s.send(q)
        s.recv(512)
        times.append(time.perf_counter() - t)
elif op == "getaddrinfo":
    name, n = sys.argv[2], int(sys.argv[3])
    for _ in range(n):
        t = time.perf_counter()
        socket.getaddrinfo(name, 443, socket.AF_INET, socket.SOCK_STREAM)
        times.append(time.perf_counter() - t)
print(statistics.median(times) * 1e6)
"#;

/// One result row: (workload, runner, value, unit).
pub type Row = (String, &'static str, f64, &'static str);

/// Run the DNS case with `supervisor` (release build); `dir` is a scratch directory.
pub fn run(supervisor: &Path, dir: &Path) -> Result<Vec<Row>> {
    let _net = Veth::create()?;
    let listener = TcpListener::bind((ADDRESS, 0)).context("listening on the bench address")?;
    let port = listener.local_addr()?.port();
    let accepting = Arc::new(AtomicBool::new(true));
    {
        let accepting = Arc::clone(&accepting);
        std::thread::spawn(move || {
            for s in listener.incoming() {
                drop(s);
                if !accepting.load(Ordering::SeqCst) {
                    return;
                }
            }
        });
    }
    let server = Responder::start()?;
    let script = dir.join("dns_bench.py");
    std::fs::write(&script, SCRIPT)?;
    let policy = dir.join("dns_bench_policy.toml");
    std::fs::write(
        &policy,
        format!(
            "version = 1\nextends = \"sandboxed\"\ndefault = \"deny\"\n[network]\nallow = [\"{NAME}:{port}\", \"{NAME}:443\"]\n"
        ),
    )?;
    let audit = dir.join("dns_bench_audit.jsonl");
    let upstream = server.addr.to_string();
    let supervised = |args: &[String]| -> Result<f64> {
        let mut c = Command::new(supervisor);
        // --no-ci: measure supervision, not CI mode's report (on when CI=true).
        c.args(["run", "-q", "--headless", "--no-ci", "--policy"])
            .arg(&policy)
            .arg("--audit")
            .arg(&audit)
            .args(["--dns-upstream", &upstream, "--", "/usr/bin/python3"])
            .arg(&script)
            .args(args);
        micros(c)
    };
    let bare = |args: &[String]| -> Result<f64> {
        let mut c = Command::new("/usr/bin/python3");
        c.arg(&script).args(args);
        micros(c)
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let (port_s, connects, queries) = (port.to_string(), CONNECTS.to_string(), QUERIES.to_string());
    let server_port = server.addr.port().to_string();
    let mut samples: [Vec<f64>; 5] = Default::default();
    for _ in 0..ROUNDS {
        samples[0].push(bare(&s(&[
            "connect",
            &ADDRESS.to_string(),
            &port_s,
            &connects,
        ]))?);
        samples[1].push(supervised(&s(&["connect", NAME, &port_s, &connects]))?);
        samples[2].push(bare(&s(&[
            "query",
            "127.0.0.1",
            &server_port,
            NAME,
            &queries,
        ]))?);
        // The resolver's address is in the agent's resolv.conf; the script reads it there.
        samples[3].push(supervised(&s(&[
            "query",
            "resolv.conf",
            "53",
            NAME,
            &queries,
        ]))?);
        samples[4].push(supervised(&s(&["getaddrinfo", NAME, &queries]))?);
    }
    accepting.store(false, Ordering::SeqCst);
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let [c_bare, c_sup, q_bare, q_sup, gai] = samples.map(median);
    let conn = format!("connections/s to an allowed name ({CONNECTS} per run)");
    let lat = "DNS query round trip, UDP (bare: straight to the server)".to_string();
    Ok(vec![
        (conn.clone(), "bare", 1e6 / c_bare, "conn/s"),
        (conn, "agent-supervisor", 1e6 / c_sup, "conn/s"),
        (lat.clone(), "bare", q_bare, "µs"),
        (lat, "agent-supervisor", q_sup, "µs"),
        (
            "`getaddrinfo()` of an allowed name".into(),
            "agent-supervisor",
            gai,
            "µs",
        ),
    ])
}

fn micros(mut c: Command) -> Result<f64> {
    let out = c.output().context("running the DNS bench script")?;
    if !out.status.success() {
        bail!(
            "the DNS bench script failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("the DNS bench script printed {text:?}"))
}

/// The bench's veth pair holding [`ADDRESS`]; deleted on drop.
struct Veth;

impl Veth {
    fn create() -> Result<Veth> {
        let ip = |args: &[&str]| -> Result<()> {
            let st = Command::new("ip")
                .args(args)
                .status()
                .context("running ip")?;
            if !st.success() {
                bail!(
                    "ip {} failed (the DNS bench needs root and veth)",
                    args.join(" ")
                );
            }
            Ok(())
        };
        let _ = Command::new("ip")
            .args(["link", "del", LINK])
            .stderr(std::process::Stdio::null())
            .status();
        let peer = format!("{LINK}p");
        ip(&["link", "add", LINK, "type", "veth", "peer", "name", &peer])?;
        let veth = Veth;
        ip(&["addr", "add", &format!("{ADDRESS}/32"), "dev", LINK])?;
        ip(&["link", "set", LINK, "up"])?;
        ip(&["link", "set", &peer, "up"])?;
        Ok(veth)
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", LINK]).status();
    }
}

/// A UDP DNS server on 127.0.0.1 answering every A query with [`ADDRESS`] (TTL 300).
struct Responder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Responder {
    fn start() -> Result<Responder> {
        let socket = UdpSocket::bind("127.0.0.1:0").context("binding the bench DNS server")?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::SeqCst) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = answer(&buf[..n]) {
                    let _ = socket.send_to(&reply, peer);
                }
            }
        });
        Ok(Responder { addr, stop })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The answer to a one-question query: the question echoed, one A record pointing at it.
fn answer(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut end = 12;
    while *query.get(end)? != 0 {
        end += 1 + usize::from(query[end]);
    }
    end += 5;
    let question = query.get(12..end)?;
    let mut r = Vec::with_capacity(end + 16);
    r.extend_from_slice(&query[..2]);
    // QR, opcode 0, RD copied, RA; NOERROR; 1 question, 1 answer (0 for other types).
    let is_a = question[question.len() - 4..question.len() - 2] == [0, 1];
    r.extend_from_slice(&[
        0x80 | (query[2] & 0x01),
        0x80,
        0,
        1,
        0,
        is_a as u8,
        0,
        0,
        0,
        0,
    ]);
    r.extend_from_slice(question);
    if is_a {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0x01, 0x2c, 0, 4]);
        r.extend_from_slice(&ADDRESS.octets());
    }
    Some(r)
}
