//! The in-kernel network backstop (`cgroup/connect4`, `connect6`, `sendmsg4`, `sendmsg6`),
//! tested against the real kernel, results judged from outside (listeners, errno, cgroupfs).
//!
//! 1. The hook alone: a session cgroup is created with `agent_supervisor::cgroup`, the
//!    programs attached with `agent_supervisor::ebpf::network`, map entries written, and a
//!    probe process moved into the cgroup connects and sends to an allowed and a denied
//!    listener. No supervisor is involved, so these prove what the kernel refuses by itself
//!    (TCP connect, UDP sendto, IPv4-mapped IPv6, IPv6, CIDR rules, the protocol in the key).
//! 2. Everything outside the session cgroup is unaffected while the programs are attached.
//! 3. End to end through `agent-supervisor run`: racing connects/sends never reach the denied
//!    listener, the audit still has the decisions, the agent ran in the session cgroup, and
//!    the cgroup is gone afterwards.
//!
//! Needs root and a cgroup v2 hierarchy; otherwise every test says why it is skipped.

mod common;
use common::NoCi;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agent_supervisor::cgroup::{cgroup2_root, SessionCgroup, PARENT_DIR};
use agent_supervisor::ebpf::network::NetworkBackstop;
use common::{compile_c, is_root, Listener, Result_, Workspace};

/// Time limit for one probe run and for one supervised session.
const LIMIT: Duration = Duration::from_secs(30);
const EPERM: i32 = 1;
const TCP: u8 = libc::IPPROTO_TCP as u8;
const UDP: u8 = libc::IPPROTO_UDP as u8;

/// Skip unless this test can create cgroups and load eBPF.
macro_rules! skip_unless_privileged {
    () => {
        skip_unless!(
            is_root(),
            "needs root (creating a cgroup and loading eBPF programs)"
        );
        skip_unless!(
            cgroup2_root().is_ok(),
            "no cgroup v2 hierarchy is mounted (see /proc/mounts)"
        );
    };
}

/// A probe: waits for a line on stdin, then for each `KIND ADDR PORT` triple (KIND tcp4,
/// udp4, tcp6 or udp6) opens a socket of that kind and connects (tcp) or sends one byte
/// (udp) to ADDR:PORT, printing `ok` or `errno=N` on one line.
const PROBE_C: &str = r#"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char go[8];
    if (read(0, go, sizeof go) <= 0) return 3;
    for (int i = 1; i + 2 < argc; i += 3) {
        const char *kind = argv[i], *addr = argv[i + 1];
        int port = atoi(argv[i + 2]);
        int v6 = kind[3] == '6', udp = kind[0] == 'u';
        struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(port) };
        struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6, .sin6_port = htons(port) };
        if (v6 ? inet_pton(AF_INET6, addr, &sin6.sin6_addr) != 1
               : inet_pton(AF_INET, addr, &sin.sin_addr) != 1) return 2;
        struct sockaddr *sa = v6 ? (struct sockaddr *)&sin6 : (struct sockaddr *)&sin;
        socklen_t len = v6 ? sizeof sin6 : sizeof sin;
        int s = socket(v6 ? AF_INET6 : AF_INET, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
        if (s < 0) { printf("errno=%d\n", errno); continue; }
        long r = udp ? sendto(s, "x", 1, 0, sa, len) : connect(s, sa, len);
        if (r < 0) printf("errno=%d\n", errno); else printf("ok\n");
        fflush(stdout);
        close(s);
    }
    return 0;
}
"#;

/// What one probe action ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Errno(i32),
}

/// One probe action: kind (`tcp4`, `udp4`, `tcp6`, `udp6`), address, port.
type Action<'a> = (&'a str, &'a str, u16);

/// The probe binary, built once per test in `dir`.
fn probe(dir: &Path) -> PathBuf {
    compile_c(dir, "probe", PROBE_C, &[]).expect("cc builds the probe")
}

/// Run the probe with `actions`; `cgroup`: move it there before it starts. Time-limited;
/// the probe is killed and reaped whatever happens.
fn run_probe(probe: &Path, cgroup: Option<&SessionCgroup>, actions: &[Action]) -> Vec<Outcome> {
    let mut cmd = Command::new(probe);
    for (kind, addr, port) in actions {
        cmd.args([kind.to_string(), addr.to_string(), port.to_string()]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the probe");
    let moved = cgroup.map(|c| c.add_process(child.id() as libc::pid_t));
    let started = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .is_ok();
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the probe") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("probe output");
    if let Some(moved) = moved {
        moved.expect("moving the probe into the session cgroup");
    }
    assert!(started, "the probe died before it was told to start");
    let status = status.unwrap_or_else(|| panic!("the probe hit the {LIMIT:?} limit"));
    assert!(status.success(), "probe failed: {status:?}\n{out}");
    let outcomes: Vec<Outcome> = out
        .lines()
        .map(|l| match l.strip_prefix("errno=") {
            Some(n) => Outcome::Errno(n.parse().expect("errno number")),
            None => {
                assert_eq!(l, "ok", "probe output");
                Outcome::Ok
            }
        })
        .collect();
    assert_eq!(outcomes.len(), actions.len(), "one line per action:\n{out}");
    outcomes
}

/// A fresh session cgroup with the network programs attached (enforcing, nothing allowed).
fn backstop(test: &str) -> NetworkBackstop {
    let name = format!("test-{test}-{}", std::process::id());
    let cgroup = SessionCgroup::create(&name).expect("create the session cgroup");
    NetworkBackstop::attach_to(cgroup).expect("attach the network programs (root, kernel 4.18+)")
}

fn udp_on(ip: IpAddr) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).expect("bind udp");
    s.set_nonblocking(true).expect("nonblocking");
    s
}

fn udp_port(s: &UdpSocket) -> u16 {
    s.local_addr().expect("udp addr").port()
}

/// Datagrams waiting on a non-blocking UDP socket.
fn datagrams(s: &UdpSocket) -> usize {
    let mut buf = [0u8; 64];
    std::iter::from_fn(|| s.recv(&mut buf).ok()).count()
}

fn tcp_reached(l: &TcpListener) -> bool {
    l.set_nonblocking(true).expect("nonblocking");
    std::iter::from_fn(|| l.accept().ok()).count() > 0
}

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

// ---------------------------------------------------------------------------------------------
// 1. The hook alone
// ---------------------------------------------------------------------------------------------

#[test]
fn kernel_refuses_ipv4_tcp_and_udp_destinations_that_were_not_allowed() {
    skip_unless_privileged!();
    let ws = Workspace::new("ebpf-v4");
    let probe = probe(&ws.dir);
    let (tcp_allowed, tcp_denied) = (Listener::new(), Listener::new());
    let (udp_allowed, udp_denied) = (udp_on(LOCALHOST), udp_on(LOCALHOST));
    let (ta, td) = (tcp_allowed.port, tcp_denied.port);
    let (ua, ud) = (udp_port(&udp_allowed), udp_port(&udp_denied));

    let backstop = backstop("v4");
    let maps = backstop.maps();
    maps.allow_exact(LOCALHOST, ta, TCP).expect("allow tcp");
    maps.allow_exact(LOCALHOST, ua, UDP).expect("allow udp");

    let got = run_probe(
        &probe,
        Some(backstop.cgroup()),
        &[
            ("tcp4", "127.0.0.1", ta),
            ("tcp4", "127.0.0.1", td),
            ("udp4", "127.0.0.1", ua),
            ("udp4", "127.0.0.1", ud),
            // The protocol is part of the entry: UDP to the TCP-allowed port is refused.
            ("udp4", "127.0.0.1", ta),
        ],
    );
    use Outcome::*;
    assert_eq!(got, [Ok, Errno(EPERM), Ok, Errno(EPERM), Errno(EPERM)]);
    assert!(tcp_allowed.was_reached(), "the allowed connect must arrive");
    assert!(!tcp_denied.was_reached(), "the denied listener was reached");
    assert_eq!(
        datagrams(&udp_allowed),
        1,
        "the allowed datagram must arrive"
    );
    assert_eq!(datagrams(&udp_denied), 0, "a denied datagram arrived");
}

/// Two sessions at once share the pinned programs, but each is decided by its own entries:
/// what one session allowed is refused in the other.
#[test]
fn two_sessions_at_once_each_get_only_their_own_network_decisions() {
    skip_unless_privileged!();
    let ws = Workspace::new("ebpf-two");
    let probe = probe(&ws.dir);
    let (for_a, for_b) = (Listener::new(), Listener::new());
    let a = backstop("two-a");
    let b = backstop("two-b");
    a.maps()
        .allow_exact(LOCALHOST, for_a.port, TCP)
        .expect("allow a");
    b.maps()
        .allow_exact(LOCALHOST, for_b.port, TCP)
        .expect("allow b");
    let actions = [
        ("tcp4", "127.0.0.1", for_a.port),
        ("tcp4", "127.0.0.1", for_b.port),
    ];
    use Outcome::*;
    assert_eq!(
        run_probe(&probe, Some(a.cgroup()), &actions),
        [Ok, Errno(EPERM)]
    );
    assert_eq!(
        run_probe(&probe, Some(b.cgroup()), &actions),
        [Errno(EPERM), Ok]
    );
}

#[test]
fn ipv4_mapped_ipv6_destinations_are_checked_as_ipv4() {
    skip_unless_privileged!();
    let ws = Workspace::new("ebpf-mapped");
    let probe = probe(&ws.dir);
    let (tcp_allowed, tcp_denied) = (Listener::new(), Listener::new());
    let (udp_allowed, udp_denied) = (udp_on(LOCALHOST), udp_on(LOCALHOST));
    let (ta, td) = (tcp_allowed.port, tcp_denied.port);
    let (ua, ud) = (udp_port(&udp_allowed), udp_port(&udp_denied));

    let backstop = backstop("mapped");
    let maps = backstop.maps();
    // Allowed as IPv4; reached through IPv6 sockets with the v4-mapped spelling.
    maps.allow_exact(LOCALHOST, ta, TCP).expect("allow tcp");
    maps.allow_exact(LOCALHOST, ua, UDP).expect("allow udp");

    let mapped = "::ffff:127.0.0.1";
    let got = run_probe(
        &probe,
        Some(backstop.cgroup()),
        &[
            ("tcp6", mapped, ta),
            ("tcp6", mapped, td),
            ("udp6", mapped, ua),
            ("udp6", mapped, ud),
        ],
    );
    use Outcome::*;
    assert_eq!(got, [Ok, Errno(EPERM), Ok, Errno(EPERM)]);
    assert!(tcp_allowed.was_reached());
    assert!(!tcp_denied.was_reached(), "the denied listener was reached");
    assert_eq!(datagrams(&udp_allowed), 1);
    assert_eq!(datagrams(&udp_denied), 0, "a denied datagram arrived");
}

#[test]
fn kernel_refuses_ipv6_destinations_that_were_not_allowed() {
    skip_unless_privileged!();
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let bound = TcpListener::bind((v6, 0));
    skip_unless!(bound.is_ok(), "IPv6 loopback (::1) is not available here");
    let tcp_allowed = bound.expect("checked");
    let tcp_denied = TcpListener::bind((v6, 0)).expect("bind [::1]");
    let (udp_allowed, udp_denied) = (udp_on(v6), udp_on(v6));
    let port = |l: &TcpListener| l.local_addr().expect("addr").port();
    let (ta, td) = (port(&tcp_allowed), port(&tcp_denied));
    let (ua, ud) = (udp_port(&udp_allowed), udp_port(&udp_denied));
    let ws = Workspace::new("ebpf-v6");
    let probe = probe(&ws.dir);

    let backstop = backstop("v6");
    let maps = backstop.maps();
    maps.allow_exact(v6, ta, TCP).expect("allow tcp");
    maps.allow_exact(v6, ua, UDP).expect("allow udp");

    let got = run_probe(
        &probe,
        Some(backstop.cgroup()),
        &[
            ("tcp6", "::1", ta),
            ("tcp6", "::1", td),
            ("udp6", "::1", ua),
            ("udp6", "::1", ud),
        ],
    );
    use Outcome::*;
    assert_eq!(got, [Ok, Errno(EPERM), Ok, Errno(EPERM)]);
    assert!(tcp_reached(&tcp_allowed));
    assert!(!tcp_reached(&tcp_denied), "the denied listener was reached");
    assert_eq!(datagrams(&udp_allowed), 1);
    assert_eq!(datagrams(&udp_denied), 0, "a denied datagram arrived");
}

#[test]
fn cidr_rules_allow_their_networks_and_ports_but_never_the_unspecified_address() {
    skip_unless_privileged!();
    let ws = Workspace::new("ebpf-cidr");
    let probe = probe(&ws.dir);
    let (by_port, any_port, other) = (Listener::new(), Listener::new(), Listener::new());

    let backstop = backstop("cidr");
    let maps = backstop.maps();
    maps.allow_rule("127.0.0.0/8".parse().expect("net"), Some(by_port.port))
        .expect("rule with a port");
    // 10.0.0.0/8 on any port: nothing of it is reachable, but a longer prefix with a port
    // (above) must not hide this any-port rule for addresses they share.
    maps.allow_rule("127.0.0.1/32".parse().expect("net"), None)
        .expect("any-port rule");
    // An IPv6 catch-all must not cover IPv4 (v4-mapped) addresses.
    maps.allow_rule("::/0".parse().expect("net"), Some(other.port))
        .expect("ipv6 rule");

    let got = run_probe(
        &probe,
        Some(backstop.cgroup()),
        &[
            ("tcp4", "127.0.0.1", by_port.port),
            ("tcp4", "127.0.0.1", any_port.port),
            ("tcp4", "127.0.0.2", any_port.port),
            ("tcp4", "0.0.0.0", by_port.port),
            ("tcp6", "::ffff:127.0.0.2", other.port),
        ],
    );
    use Outcome::*;
    assert_eq!(
        got,
        [Ok, Ok, Errno(EPERM), Errno(EPERM), Errno(EPERM)],
        "127/8:{}, 127.0.0.1:*, not 127.0.0.2 on another port, never 0.0.0.0 by rule, \
         ::/0 is not IPv4",
        by_port.port
    );
    assert!(by_port.was_reached() && any_port.was_reached());
    assert!(!other.was_reached(), "::/0 let an IPv4 destination through");
}

#[test]
fn dns_port_passes_only_through_an_exact_entry_even_under_an_allow_all_rule() {
    skip_unless_privileged!();
    let ws = Workspace::new("ebpf-dns53");
    let probe = probe(&ws.dir);
    // Two addresses of our own on port 53 (the session resolver's and "another server").
    let pid = std::process::id();
    let resolver = Ipv4Addr::new(127, 54, (pid >> 8) as u8, pid as u8 | 1);
    let other = Ipv4Addr::new(127, 55, (pid >> 8) as u8, pid as u8 | 1);
    let resolver_udp = UdpSocket::bind((resolver, 53)).expect("bind udp 53 (root)");
    resolver_udp.set_nonblocking(true).expect("nonblocking");
    let other_udp = UdpSocket::bind((other, 53)).expect("bind udp 53 (root)");
    other_udp.set_nonblocking(true).expect("nonblocking");
    let other_tcp = TcpListener::bind((other, 53)).expect("bind tcp 53 (root)");
    let elsewhere = Listener::new();

    let backstop = backstop("dns53");
    let maps = backstop.maps();
    maps.allow_rule("0.0.0.0/0".parse().expect("net"), None)
        .expect("allow-all v4");
    maps.allow_rule("::/0".parse().expect("net"), None)
        .expect("allow-all v6");
    maps.allow_exact(IpAddr::V4(resolver), 53, UDP)
        .expect("the resolver's entry");
    let (r, o) = (resolver.to_string(), other.to_string());
    let mapped = format!("::ffff:{o}");
    let got = run_probe(
        &probe,
        Some(backstop.cgroup()),
        &[
            ("udp4", &r, 53),
            ("udp4", &o, 53),
            ("tcp4", &o, 53),
            ("udp6", &mapped, 53),
            ("tcp4", "127.0.0.1", elsewhere.port),
        ],
    );
    use Outcome::*;
    assert_eq!(
        got,
        [Ok, Errno(EPERM), Errno(EPERM), Errno(EPERM), Ok],
        "port 53 only to the exact entry; other ports under the allow-all rule"
    );
    assert_eq!(datagrams(&resolver_udp), 1);
    assert_eq!(datagrams(&other_udp), 0, "DNS reached another server");
    assert!(!tcp_reached(&other_tcp), "TCP DNS reached another server");
    assert!(elsewhere.was_reached());
}

#[test]
fn a_dns_answer_opens_its_rule_ports_in_the_kernel_until_it_expires() {
    use agent_supervisor::dns::answers::{Answers, Known};
    use agent_supervisor_policy::DecidedBy;
    skip_unless_privileged!();
    let ws = Workspace::new("ebpf-dns-answer");
    let probe = probe(&ws.dir);
    let (by_rule, other_port) = (Listener::new(), Listener::new());
    let any_port = TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let any_port_port = any_port.local_addr().expect("addr").port();
    let backstop = backstop("dns-answer");
    let maps = backstop.maps();
    let answers = Answers::default();
    let now = Instant::now();
    let known = |name: &str| Known {
        name: name.into(),
        decided_by: DecidedBy::Rule(0),
        approved: false,
    };
    // 127.0.0.1 answered for a name whose rule has one port; 127.0.0.2 for an any-port name.
    answers.record(
        Some(&maps),
        LOCALHOST,
        known("one.test"),
        now + Duration::from_secs(60),
        &[Some(by_rule.port)],
    );
    answers.record(
        Some(&maps),
        "127.0.0.2".parse().expect("ip"),
        known("any.test"),
        now + Duration::from_secs(60),
        &[None],
    );
    let actions = [
        ("tcp4", "127.0.0.1", by_rule.port),
        ("tcp4", "127.0.0.1", other_port.port),
        ("tcp4", "127.0.0.2", any_port_port),
    ];
    use Outcome::*;
    let got = run_probe(&probe, Some(backstop.cgroup()), &actions);
    assert_eq!(
        got,
        [Ok, Errno(EPERM), Ok],
        "the rule's port only, or any port"
    );
    assert!(by_rule.was_reached() && tcp_reached(&any_port));
    assert!(!other_port.was_reached());

    // Expired: both answers and their kernel entries are gone.
    assert_eq!(answers.sweep(Some(&maps), now + Duration::from_secs(61)), 2);
    let got = run_probe(&probe, Some(backstop.cgroup()), &actions);
    assert_eq!(got, [Errno(EPERM), Errno(EPERM), Errno(EPERM)]);
    assert!(!by_rule.was_reached() && !tcp_reached(&any_port));
}

// ---------------------------------------------------------------------------------------------
// 2. Outside the session cgroup
// ---------------------------------------------------------------------------------------------

#[test]
fn processes_outside_the_session_cgroup_are_unaffected() {
    skip_unless_privileged!();
    let ws = Workspace::new("ebpf-outside");
    let probe = probe(&ws.dir);
    let denied = Listener::new();
    let udp_denied = udp_on(LOCALHOST);
    let backstop = backstop("outside");

    // Inside: refused (nothing is allowed). Outside, at the same time: untouched.
    let inside = run_probe(
        &probe,
        Some(backstop.cgroup()),
        &[("tcp4", "127.0.0.1", denied.port)],
    );
    assert_eq!(inside, [Outcome::Errno(EPERM)]);
    assert!(!denied.was_reached());

    let outside = run_probe(
        &probe,
        None,
        &[
            ("tcp4", "127.0.0.1", denied.port),
            ("udp4", "127.0.0.1", udp_port(&udp_denied)),
        ],
    );
    assert_eq!(outside, [Outcome::Ok, Outcome::Ok]);
    // This test process itself.
    std::net::TcpStream::connect(("127.0.0.1", denied.port)).expect("the test process connects");
    assert!(denied.was_reached());
    assert_eq!(datagrams(&udp_denied), 1);
}

#[test]
fn dropping_the_backstop_removes_the_session_cgroup() {
    skip_unless_privileged!();
    let backstop = backstop("drop");
    let dir = backstop.cgroup().path().to_path_buf();
    assert!(dir.is_dir());
    drop(backstop);
    assert!(!dir.exists(), "{} is still there", dir.display());
}

// ---------------------------------------------------------------------------------------------
// 3. End to end through `agent-supervisor run`
// ---------------------------------------------------------------------------------------------

/// Four threads connect (or send) in a loop through ONE sockaddr whose port a fifth thread
/// flips between the allowed and the denied port as fast as it can. Prints its
/// `/proc/self/cgroup` first.
const RACE_NET_C: &str = r#"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct sockaddr_in shared;
static volatile int stop;
static uint16_t allowed, denied;
static const char *mode;
static long ok[4], failed[4];

static void *flip(void *arg) {
    volatile uint16_t *port = &shared.sin_port;
    while (!stop) { *port = allowed; *port = denied; }
    return arg;
}

static void *attack(void *arg) {
    long i = (long)arg;
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    while (!stop) {
        long r;
        if (!strcmp(mode, "connect")) {
            int s = socket(AF_INET, SOCK_STREAM, 0);
            r = connect(s, (struct sockaddr *)&shared, sizeof shared);
            close(s);
        } else {
            r = sendto(udp, "x", 1, 0, (struct sockaddr *)&shared, sizeof shared);
        }
        if (r >= 0) ok[i]++; else failed[i]++;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 5) return 2;
    char cg[512] = "";
    FILE *f = fopen("/proc/self/cgroup", "r");
    while (f && fgets(cg, sizeof cg, f)) if (!strncmp(cg, "0::", 3)) printf("cgroup=%s", cg + 3);
    if (f) fclose(f);
    mode = argv[1];
    allowed = htons(atoi(argv[2]));
    denied = htons(atoi(argv[3]));
    shared.sin_family = AF_INET;
    shared.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    shared.sin_port = allowed;
    pthread_t t_flip, t[4];
    pthread_create(&t_flip, 0, flip, 0);
    for (long i = 0; i < 4; i++) pthread_create(&t[i], 0, attack, (void *)i);
    usleep(atoi(argv[4]) * 1000);
    stop = 1;
    pthread_join(t_flip, 0);
    long o = 0, x = 0;
    for (int i = 0; i < 4; i++) { pthread_join(t[i], 0); o += ok[i]; x += failed[i]; }
    printf("ok=%ld failed=%ld\n", o, x);
    return 0;
}
"#;

/// `sandboxed` with 127.0.0.1:`allowed` allowed and 127.0.0.1:`denied` denied.
fn net_policy(allowed: u16, denied: u16) -> String {
    format!(
        "version = 1\nextends = \"sandboxed\"\n\
         [[rule]]\ndecision = \"allow\"\nnetwork = \"127.0.0.1:{allowed}\"\n\
         [[rule]]\ndecision = \"deny\"\nnetwork = \"127.0.0.1:{denied}\"\n"
    )
}

fn show(r: &Result_) -> String {
    format!(
        "exit code {:?}\n--- stdout\n{}\n--- stderr\n{}",
        r.code, r.stdout, r.stderr
    )
}

/// `key=value` printed by the racer (last occurrence).
fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.split_whitespace()
        .filter_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .next_back()
}

/// Run the racer under the supervisor; returns the run, its session id and whether `keep`
/// (a listener that must keep accepting) was reached.
fn supervised_race(
    ws: &Workspace,
    mode: &str,
    allowed: u16,
    denied: u16,
    accept: Option<&Listener>,
) -> (Result_, String, bool) {
    let racer = compile_c(&ws.dir, "race_net", RACE_NET_C, &["-pthread"]).expect("cc racer");
    let policy = ws.policy(&net_policy(allowed, denied));
    let args = [
        "--headless",
        "--policy",
        policy.to_str().expect("UTF-8 path"),
    ];
    let cmd = [
        racer.to_str().expect("UTF-8 path"),
        mode,
        &allowed.to_string(),
        &denied.to_string(),
        "1500",
    ];
    let done = AtomicBool::new(false);
    let (r, reached) = std::thread::scope(|scope| {
        let acceptor = scope.spawn(|| {
            let mut reached = false;
            while !done.load(Ordering::SeqCst) {
                reached |= accept.is_some_and(Listener::was_reached);
                std::thread::sleep(Duration::from_millis(2));
            }
            reached | accept.is_some_and(Listener::was_reached)
        });
        let r = ws.run(&args, &cmd, LIMIT);
        done.store(true, Ordering::SeqCst);
        (r, acceptor.join().expect("acceptor thread"))
    });
    assert!(
        !r.timed_out,
        "the session hit the {LIMIT:?} limit\n{}",
        show(&r)
    );
    assert_eq!(r.code, Some(0), "{}", show(&r));
    let start = ws
        .audit()
        .into_iter()
        .find(|rec| rec["kind"] == "session-start")
        .unwrap_or_else(|| panic!("no session-start record\n{}", show(&r)));
    let session = start["session"]
        .as_str()
        .unwrap_or_else(|| panic!("session-start without a session id: {start}"))
        .to_string();
    let weaker = start["action"]["weaker"].to_string();
    assert!(
        !weaker.contains("network"),
        "the network backstop was not active: {weaker}\n{}",
        show(&r)
    );
    (r, session, reached)
}

/// The agent ran in `<cgroup2>/agent-supervisor/<session>`, which is gone now.
fn assert_session_cgroup_used_and_removed(r: &Result_, session: &str) {
    let cgroup = field(&r.stdout, "cgroup").unwrap_or_default();
    assert!(
        at_session_cgroup(cgroup.trim()),
        "the agent was not in its session cgroup ({cgroup:?})\n{}",
        show(r)
    );
    let dir = cgroup2_root()
        .expect("cgroup2")
        .join(PARENT_DIR)
        .join(session);
    assert!(!dir.exists(), "{} outlived the session", dir.display());
}

fn audited(ws: &Workspace, kind: &str, port: u16, decision: &str) -> usize {
    let needle = format!(":{port}");
    ws.decisions(kind)
        .iter()
        .filter(|r| r["decision"] == decision)
        .filter(|r| {
            r["action"]["destination"]
                .as_str()
                .is_some_and(|d| d.ends_with(&needle))
        })
        .count()
}

#[test]
fn supervised_racing_connect_never_reaches_the_denied_listener() {
    skip_unless_privileged!();
    let ws = Workspace::new("ebpf-race-connect");
    let (allowed, denied) = (Listener::new(), Listener::new());
    let (r, session, allowed_reached) =
        supervised_race(&ws, "connect", allowed.port, denied.port, Some(&allowed));
    let ok: u64 = field(&r.stdout, "ok")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        ok > 0 && allowed_reached,
        "allowed connects must work\n{}",
        show(&r)
    );
    assert!(
        audited(&ws, "connect", allowed.port, "allow") > 0
            && audited(&ws, "connect", denied.port, "deny") > 0,
        "the audit lacks the decisions (did the race run?)\n{}",
        show(&r)
    );
    assert!(
        !denied.was_reached(),
        "a racing connect reached the denied listener"
    );
    assert_session_cgroup_used_and_removed(&r, &session);
}

#[test]
fn supervised_racing_sendto_never_reaches_the_denied_socket() {
    skip_unless_privileged!();
    let ws = Workspace::new("ebpf-race-sendto");
    let (allowed, denied) = (udp_on(LOCALHOST), udp_on(LOCALHOST));
    let (a, d) = (udp_port(&allowed), udp_port(&denied));
    let (r, session, _) = supervised_race(&ws, "sendto", a, d, None);
    assert!(
        datagrams(&allowed) > 0,
        "allowed sends must arrive\n{}",
        show(&r)
    );
    assert!(
        audited(&ws, "send", a, "allow") > 0 && audited(&ws, "send", d, "deny") > 0,
        "the audit lacks the decisions (did the race run?)\n{}",
        show(&r)
    );
    assert_eq!(
        datagrams(&denied),
        0,
        "a racing sendto reached the denied socket"
    );
    assert_session_cgroup_used_and_removed(&r, &session);
}

// ---------------------------------------------------------------------------------------------
// 4. Without root
// ---------------------------------------------------------------------------------------------

#[test]
fn without_root_the_session_still_runs_and_says_once_that_the_backstop_is_off() {
    use std::os::unix::fs::PermissionsExt as _;
    skip_unless!(
        is_root(),
        "needs root to run the supervisor as another user"
    );
    skip_unless!(
        Path::new("/usr/bin/setpriv").exists(),
        "setpriv (util-linux) is not installed"
    );
    let ws = Workspace::new("ebpf-nonroot");
    let base = ws.dir.parent().expect("workspace base").to_path_buf();
    for dir in [&base, &ws.dir] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    let mut c = Command::new("/usr/bin/setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(common::bin())
        .args([
            "run",
            "--headless",
            "--policy",
            "preset:sandboxed",
            "--audit",
        ])
        .arg(&ws.audit)
        .args(["--", "true"])
        .current_dir(&ws.dir)
        .env("HOME", &ws.dir)
        .env_remove("XDG_CONFIG_HOME")
        .no_ci()
        .stdin(Stdio::null());
    let r = common::run_with_timeout(c, LIMIT);
    assert!(
        !r.timed_out,
        "the session hit the {LIMIT:?} limit\n{}",
        show(&r)
    );
    assert_eq!(r.code, Some(0), "{}", show(&r));
    let warnings: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("in-kernel network backstop is off"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", show(&r));
    assert!(
        warnings[0].starts_with("agent-supervisor: warning: ") && warnings[0].contains("root"),
        "the warning says what is weaker and why: {}",
        warnings[0]
    );
    // Without root there is no session resolver (port 53): one line says DNS is refused.
    let dns: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("DNS resolver could not start") && l.contains("DNS is refused"))
        .collect();
    assert_eq!(dns.len(), 1, "{}", show(&r));
}

#[test]
fn the_agent_cannot_leave_its_session_cgroup_even_where_it_may_write_everything() {
    skip_unless_privileged!();
    let ws = Workspace::new("ebpf-escape");
    let root = cgroup2_root().expect("cgroup2");
    let script = format!(
        "echo 0 > {}/cgroup.procs; echo escape=$?; grep ^0:: /proc/self/cgroup",
        root.display()
    );
    let r = ws.run(
        &["--headless", "--policy", "preset:unrestricted"],
        &["sh", "-c", &script],
        LIMIT,
    );
    assert!(
        !r.timed_out,
        "the session hit the {LIMIT:?} limit\n{}",
        show(&r)
    );
    assert_eq!(r.code, Some(0), "{}", show(&r));
    assert_ne!(field(&r.stdout, "escape"), Some("0"), "{}", show(&r));
    let session = ws
        .audit()
        .into_iter()
        .find(|rec| rec["kind"] == "session-start")
        .and_then(|rec| rec["session"].as_str().map(str::to_string))
        .expect("session-start record with the session id");
    assert!(
        r.stdout
            .trim_end()
            .rsplit('\n')
            .next()
            .and_then(|line| line.strip_prefix("0::"))
            .is_some_and(at_session_cgroup),
        "the agent left its session cgroup {session}\n{}",
        show(&r)
    );
}

/// Is `path`, a cgroup v2 path as the agent sees it in `/proc/self/cgroup`, its session
/// cgroup? The sandbox's init is created in the session cgroup (`CLONE_INTO_CGROUP`, Linux 5.7+,
/// every kernel these tests run on) together with its own cgroup namespace, whose root is
/// therefore the session cgroup: the agent sees exactly `/` there, and a path outside it
/// (`/..`, `/../..`) anywhere else.
fn at_session_cgroup(path: &str) -> bool {
    path == "/"
}
