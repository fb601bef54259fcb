//! Adversarial integration tests: a hostile agent that is multi-threaded and knows how
//! seccomp user notification, Landlock, the mount masks and the exec guard work tries to get
//! what the policy denies.
//!
//! Every test runs the real `agent-supervisor` against the real kernel and judges the outcome
//! from OUTSIDE the sandbox: a marker file that must not exist, secret content that must not
//! appear in a file the agent writes, a listener that must not be reached, a host file that
//! must be unchanged, the audit log. Every test also proves that its setup is live: the
//! allowed twin of the attack (the allowed address, program, file) does work in the same run.
//!
//! Attacks that still get through are kept as ignored tests that assert the secure outcome,
//! so they fail until the supervisor is fixed (`cargo test -- --ignored`): `#[ignore = "BUG:
//! ..."]` for holes to fix, `#[ignore = "KNOWN LIMITATION ..."]` for those waiting on a
//! mechanism the supervisor doesn't have yet.
//!
//! `ATTACKS_VERBOSE=1 cargo test --test attacks -- --nocapture` prints every supervised run.

mod common;
use common::NoCi;

use std::io::Read;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{compile_c, process_alive_with_marker, Listener, Result_, Workspace};

/// Hard limit for one supervised run (the races themselves last ~1.5 s).
const LIMIT: Duration = Duration::from_secs(30);
/// How long each race runs inside the sandbox, in milliseconds.
const RACE_MS: &str = "1500";
/// The dynamic loader, as agents spell it.
const LDSO: &str = "/lib64/ld-linux-x86-64.so.2";
/// The interpreter inside the sandbox (`python3` on PATH is a pyenv shim it can't exec).
const PYTHON: &str = "/usr/bin/python3";
const SECRET: &str = "TOP-SECRET-7f3a9c";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test path")
}

/// The directory holding the workspace (outside every tree of the `narrow` policies).
fn base(ws: &Workspace) -> PathBuf {
    ws.dir
        .parent()
        .expect("workspace has a parent")
        .to_path_buf()
}

/// A policy on top of the `sandboxed` preset.
fn sandboxed(rules: &str) -> String {
    format!("version = 1\nextends = \"sandboxed\"\n{rules}\n")
}

/// The `sandboxed` preset with narrow trees: the system, the workspace and `extra_read`
/// readable, only the workspace (and /dev/null) writable. The workspace's parent directory,
/// where the tests keep their secrets, is in no tree.
fn narrow(extra_read: &[&Path], rules: &str) -> String {
    let mut read: Vec<String> = [
        "/usr",
        "/bin",
        "/lib",
        "/lib64",
        "/etc",
        "/proc",
        "/dev",
        "{workspace}",
    ]
    .iter()
    .map(|p| format!("\"{p}\""))
    .collect();
    read.extend(extra_read.iter().map(|p| format!("\"{}\"", p.display())));
    format!(
        "version = 1\nextends = \"sandboxed\"\n[filesystem]\nread = [{}]\nwrite = [\"{{workspace}}\", \"/dev/null\"]\n{rules}\n",
        read.join(", ")
    )
}

/// A file `ask` rule: makes the supervisor trap every open (seccomp user notification), so
/// opens are decided and performed by the supervisor instead of only checked by Landlock.
const TRAP_OPENS: &str = "[[rule]]\ndecision = \"ask\"\nfile = \"{workspace}/asked/**\"\n";

/// `agent-supervisor run --headless --policy <policy> [extra...] -- cmd`, time-limited.
/// `policy` is `preset:NAME` or the text of a policy file.
fn supervise(ws: &Workspace, policy: &str, extra: &[&str], cmd: &[&str]) -> Result_ {
    let file;
    let policy_arg = if policy.starts_with("preset:") {
        policy
    } else {
        file = ws.policy(policy);
        s(&file)
    };
    let mut args = vec!["--headless", "--policy", policy_arg];
    args.extend_from_slice(extra);
    let r = ws.run(&args, cmd, LIMIT);
    if std::env::var_os("ATTACKS_VERBOSE").is_some() {
        eprintln!("--- {}\n{}", ws.dir.display(), show(&r));
    }
    assert!(
        !r.timed_out,
        "the session hit the {LIMIT:?} limit\n{}",
        show(&r)
    );
    r
}

fn show(r: &Result_) -> String {
    format!(
        "exit code {:?}\n--- stdout\n{}\n--- stderr\n{}",
        r.code, r.stdout, r.stderr
    )
}

/// `key=value` printed by an attacker program (last occurrence).
fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.split_whitespace()
        .filter_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .next_back()
}

fn count(out: &str, key: &str) -> i64 {
    field(out, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("attacker output lacks {key}=N:\n{out}"))
}

/// Build an attacker program (the machine has `cc`; a missing compiler is a broken setup).
fn cc(dir: &Path, name: &str, src: &str, extra: &[&str]) -> PathBuf {
    compile_c(dir, name, src, extra)
        .unwrap_or_else(|| panic!("cc could not build {name} in {}", dir.display()))
}

/// A program that, if it ever runs, appends a line to `marker`.
const PAYLOAD_C: &str = r#"
#include <fcntl.h>
#include <unistd.h>
int main(void) {
    int fd = open(MARKER, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) { write(fd, "ran\n", 4); close(fd); }
    return 0;
}
"#;

fn payload(dir: &Path, name: &str, marker: &Path) -> PathBuf {
    let define = format!("-DMARKER=\"{}\"", marker.display());
    cc(dir, name, PAYLOAD_C, &[&define])
}

/// Audit decisions of `kind` whose action field `key` contains `needle`, with `decision`.
fn audited(ws: &Workspace, kind: &str, key: &str, needle: &str, decision: &str) -> usize {
    ws.decisions(kind)
        .iter()
        .filter(|r| r["decision"] == decision)
        .filter(|r| {
            let v = &r["action"][key];
            v.as_str()
                .map(|s| s.contains(needle))
                .unwrap_or_else(|| v.to_string().contains(needle))
        })
        .count()
}

/// Run `f` while a thread keeps accepting on `l` (so a flood of allowed connections never
/// fills its backlog). Returns `f`'s result and whether `l` was reached.
fn while_accepting<T>(l: &Listener, f: impl FnOnce() -> T) -> (T, bool) {
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let acceptor = scope.spawn(|| {
            let mut reached = false;
            while !done.load(Ordering::SeqCst) {
                reached |= l.was_reached();
                std::thread::sleep(Duration::from_millis(2));
            }
            reached | l.was_reached()
        });
        let out = f();
        done.store(true, Ordering::SeqCst);
        (out, acceptor.join().expect("acceptor thread"))
    })
}

/// Datagrams waiting on a non-blocking UDP socket.
fn datagrams(sock: &UdpSocket) -> usize {
    let mut buf = [0u8; 64];
    let mut n = 0;
    while sock.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}

fn udp() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    s.set_nonblocking(true).expect("nonblocking");
    s.set_read_timeout(None).ok();
    s
}

fn port(s: &UdpSocket) -> u16 {
    s.local_addr().expect("udp addr").port()
}

/// Policy: 127.0.0.1:`allowed` allowed, 127.0.0.1:`denied` denied.
fn net_policy(allowed: u16, denied: u16) -> String {
    sandboxed(&format!(
        "[[rule]]\ndecision = \"allow\"\nnetwork = \"127.0.0.1:{allowed}\"\n\
         [[rule]]\ndecision = \"deny\"\nnetwork = \"127.0.0.1:{denied}\"\n"
    ))
}

// ---------------------------------------------------------------------------------------------
// 1. Racing the sockaddr of connect / sendto / sendmsg / sendmmsg
// ---------------------------------------------------------------------------------------------

/// Four threads connect (or send) in a loop through ONE sockaddr whose port a fifth thread
/// flips between the allowed and the denied port as fast as it can.
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
    struct iovec iov = { (void *)"x", 1 };
    while (!stop) {
        long r;
        if (!strcmp(mode, "connect")) {
            int s = socket(AF_INET, SOCK_STREAM, 0);
            r = connect(s, (struct sockaddr *)&shared, sizeof shared);
            close(s);
        } else if (!strcmp(mode, "sendto")) {
            r = sendto(udp, "x", 1, 0, (struct sockaddr *)&shared, sizeof shared);
        } else if (i % 2 == 0) {
            struct msghdr m = { .msg_name = &shared, .msg_namelen = sizeof shared,
                                .msg_iov = &iov, .msg_iovlen = 1 };
            r = sendmsg(udp, &m, 0);
        } else {
            struct mmsghdr mm[2];
            memset(mm, 0, sizeof mm);
            for (int k = 0; k < 2; k++) {
                mm[k].msg_hdr.msg_name = &shared;
                mm[k].msg_hdr.msg_namelen = sizeof shared;
                mm[k].msg_hdr.msg_iov = &iov;
                mm[k].msg_hdr.msg_iovlen = 1;
            }
            r = sendmmsg(udp, mm, 2, 0);
        }
        if (r >= 0) ok[i]++; else failed[i]++;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 5) return 2;
    mode = argv[1];
    allowed = htons(atoi(argv[2]));
    denied = htons(atoi(argv[3]));
    shared.sin_family = AF_INET;
    shared.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    shared.sin_port = allowed;
    pthread_t f, t[4];
    pthread_create(&f, 0, flip, 0);
    for (long i = 0; i < 4; i++) pthread_create(&t[i], 0, attack, (void *)i);
    usleep(atoi(argv[4]) * 1000);
    stop = 1;
    pthread_join(f, 0);
    long o = 0, x = 0;
    for (int i = 0; i < 4; i++) { pthread_join(t[i], 0); o += ok[i]; x += failed[i]; }
    printf("ok=%ld failed=%ld\n", o, x);
    return 0;
}
"#;

#[test]
fn racing_connect_never_reaches_the_denied_address() {
    let ws = Workspace::new("race-connect");
    let (allowed, denied) = (Listener::new(), Listener::new());
    let bin = cc(&ws.dir, "race_net", RACE_NET_C, &["-pthread"]);
    let policy = net_policy(allowed.port, denied.port);
    let (a, d) = (allowed.port.to_string(), denied.port.to_string());
    let (r, allowed_reached) = while_accepting(&allowed, || {
        supervise(&ws, &policy, &[], &[s(&bin), "connect", &a, &d, RACE_MS])
    });
    assert_eq!(r.code, Some(0), "{}", show(&r));
    assert!(
        count(&r.stdout, "ok") > 0 && allowed_reached,
        "the allowed connects must work\n{}",
        show(&r)
    );
    assert!(
        audited(&ws, "connect", "destination", &format!(":{d}"), "deny") > 0,
        "the supervisor never saw the denied port: the race did not run\n{}",
        show(&r)
    );
    assert!(
        !denied.was_reached(),
        "a racing thread reached the denied listener\n{}",
        show(&r)
    );
}

#[test]
fn racing_sendto_never_reaches_the_denied_address() {
    let ws = Workspace::new("race-sendto");
    let (allowed, denied) = (udp(), udp());
    let bin = cc(&ws.dir, "race_net", RACE_NET_C, &["-pthread"]);
    let policy = net_policy(port(&allowed), port(&denied));
    let (a, d) = (port(&allowed).to_string(), port(&denied).to_string());
    let r = supervise(&ws, &policy, &[], &[s(&bin), "sendto", &a, &d, RACE_MS]);
    assert_eq!(r.code, Some(0), "{}", show(&r));
    assert!(
        count(&r.stdout, "ok") > 0 && datagrams(&allowed) > 0,
        "allowed sends must arrive\n{}",
        show(&r)
    );
    assert!(
        audited(&ws, "send", "destination", &format!(":{d}"), "deny") > 0,
        "race did not run\n{}",
        show(&r)
    );
    assert_eq!(
        datagrams(&denied),
        0,
        "a racing sendto reached the denied socket\n{}",
        show(&r)
    );
}

#[test]
fn racing_sendmsg_and_sendmmsg_never_reach_the_denied_address() {
    let ws = Workspace::new("race-sendmsg");
    let (allowed, denied) = (udp(), udp());
    let bin = cc(&ws.dir, "race_net", RACE_NET_C, &["-pthread"]);
    let policy = net_policy(port(&allowed), port(&denied));
    let (a, d) = (port(&allowed).to_string(), port(&denied).to_string());
    let r = supervise(&ws, &policy, &[], &[s(&bin), "sendmsg", &a, &d, RACE_MS]);
    assert_eq!(r.code, Some(0), "{}", show(&r));
    assert!(
        count(&r.stdout, "ok") > 0 && datagrams(&allowed) > 0,
        "allowed sends must arrive\n{}",
        show(&r)
    );
    assert!(
        audited(&ws, "send", "destination", &format!(":{d}"), "deny") > 0,
        "race did not run\n{}",
        show(&r)
    );
    assert_eq!(
        datagrams(&denied),
        0,
        "a racing sendmsg/sendmmsg reached the denied socket\n{}",
        show(&r)
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Racing the arguments of execve / execveat
// ---------------------------------------------------------------------------------------------

/// Fork/exec in a loop for `ms` while the exec arguments change under the kernel's feet:
/// - `path A B`: the path (in memory shared with every child) flips between A and B
///   (same length, two 8-byte stores);
/// - `argv PROG`: argv[1] flips between "allowed" and "forbidden";
/// - `argc PROG`: argv flips between {PROG, "allowed"} and {PROG, "forbidden", "allowed"}
///   (same last argument, different count);
/// - `fd A B`: in each child the main thread dup2()s O_PATH fds of A and B onto fd 20 while
///   a second thread calls execveat(20, "", AT_EMPTY_PATH).
///
/// Prints how the children ended: ran (exit 0), denied (exit 126), killed (SIGKILL).
const RACE_EXEC_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

struct shared {
    char live[16] __attribute__((aligned(16)));
    char variant[2][16] __attribute__((aligned(16)));
    char allowed[16], forbidden[16], prog[64];
    char *argv[4];
};
static struct shared *sh;
static volatile int stop;
static const char *mode, *paths[2];

/* Spin for a pseudo-random short while, so that every state lasts long enough to be seen. */
static void jitter(void) {
    static unsigned seed = 1;
    seed = seed * 1103515245u + 12345u;
    for (volatile unsigned k = 0; k < (seed >> 24); k++) {}
}

static void *flip(void *unused) {
    volatile uint64_t *live = (volatile uint64_t *)sh->live;
    uint64_t *a = (uint64_t *)sh->variant[0], *b = (uint64_t *)sh->variant[1];
    char *volatile *av = sh->argv;
    if (!strcmp(mode, "path")) {
        while (!stop) {
            live[0] = a[0]; live[1] = a[1]; jitter();
            live[0] = b[0]; live[1] = b[1]; jitter();
        }
    } else if (!strcmp(mode, "argv")) {
        while (!stop) {
            av[1] = sh->allowed; jitter();
            av[1] = sh->forbidden; jitter();
        }
    } else {
        while (!stop) {
            av[2] = sh->allowed; jitter();    /* {prog, allowed, allowed} */
            av[1] = sh->forbidden; jitter();  /* {prog, forbidden, allowed} */
            av[1] = sh->allowed; jitter();    /* {prog, allowed, allowed} */
            av[2] = NULL; jitter();           /* {prog, allowed} */
        }
    }
    return unused;
}

static int fds[2];
static volatile int flipping;
/* The exec comes from a thread that is not the thread-group leader (its tid changes when
   the exec succeeds); the leader flips the fd meanwhile. */
static void *fdexec(void *unused) {
    char *av[] = { "x", NULL };
    while (!flipping) {}
    for (int i = 0; i < 100; i++) syscall(SYS_execveat, 20, "", av, environ, AT_EMPTY_PATH);
    _exit(126);
    return unused;
}

static void child(void) {
    if (!strcmp(mode, "path")) {
        char *av[] = { "x", NULL };
        execve(sh->live, av, environ);
    } else if (!strcmp(mode, "fd")) {
        fds[0] = open(paths[0], O_PATH);
        fds[1] = open(paths[1], O_PATH);
        dup2(fds[0], 20);
        pthread_t t;
        pthread_create(&t, 0, fdexec, 0);
        for (;;) { dup2(fds[1], 20); flipping = 1; jitter(); dup2(fds[0], 20); jitter(); }
    } else {
        execve(sh->prog, sh->argv, environ);
    }
    _exit(errno == EACCES ? 126 : 127);
}

int main(int argc, char **argv) {
    if (argc != 5) return 2;
    mode = argv[1];
    paths[0] = argv[2];
    paths[1] = argv[3];
    sh = mmap(0, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    strncpy(sh->variant[0], argv[2], 15);
    strncpy(sh->variant[1], argv[3], 15);
    memcpy(sh->live, sh->variant[0], 16);
    strcpy(sh->allowed, "allowed");
    strcpy(sh->forbidden, "forbidden");
    strncpy(sh->prog, argv[2], 63);
    sh->argv[0] = sh->prog;
    sh->argv[1] = sh->allowed;
    pthread_t f;
    if (strcmp(mode, "fd")) pthread_create(&f, 0, flip, 0);
    long ran = 0, denied = 0, killed = 0, other = 0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        pid_t pid = fork();
        if (pid == 0) child();
        int st;
        waitpid(pid, &st, 0);
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0) ran++;
        else if (WIFEXITED(st) && WEXITSTATUS(st) == 126) denied++;
        else if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) killed++;
        else other++;
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 < atoi(argv[4]));
    stop = 1;
    printf("ran=%ld denied=%ld killed=%ld other=%ld\n", ran, denied, killed, other);
    return 0;
}
"#;

/// The allowed program and the denied one as same-length paths (relative to the workspace).
const EXEC_ALLOWED: &str = "//usr/bin/true";
const EXEC_DENIED: &str = "./././././evil";

#[test]
fn racing_exec_path_never_runs_the_denied_program() {
    // sandboxed + headless: /usr programs are allowed, programs the agent wrote into its
    // workspace need approval, so they are denied.
    let ws = Workspace::new("race-exec-path");
    let marker = ws.path("evil-ran");
    payload(&ws.dir, "evil", &marker);
    let bin = cc(&ws.dir, "race_exec", RACE_EXEC_C, &["-pthread"]);
    let r = supervise(
        &ws,
        "preset:sandboxed",
        &[],
        &[s(&bin), "path", EXEC_ALLOWED, EXEC_DENIED, RACE_MS],
    );
    assert_eq!(r.code, Some(0), "{}", show(&r));
    assert!(
        count(&r.stdout, "ran") > 0,
        "the allowed program must run\n{}",
        show(&r)
    );
    assert!(
        audited(&ws, "exec", "path", "/evil", "deny") > 0,
        "the race did not run\n{}",
        show(&r)
    );
    assert!(
        !marker.exists(),
        "the denied program ran (exec-guard records: {:?})\n{}",
        ws.decisions("exec-guard"),
        show(&r)
    );
}

#[test]
fn racing_execveat_fd_swap_never_runs_the_denied_program() {
    let ws = Workspace::new("race-exec-fd");
    let marker = ws.path("evil-ran");
    let evil = payload(&ws.dir, "evil", &marker);
    let bin = cc(&ws.dir, "race_exec", RACE_EXEC_C, &["-pthread"]);
    let r = supervise(
        &ws,
        "preset:sandboxed",
        &[],
        &[s(&bin), "fd", "/usr/bin/true", s(&evil), RACE_MS],
    );
    assert_eq!(r.code, Some(0), "{}", show(&r));
    assert!(
        count(&r.stdout, "ran") > 0,
        "the allowed program must run\n{}",
        show(&r)
    );
    assert!(
        audited(&ws, "exec", "path", "/evil", "deny") > 0,
        "the race did not run\n{}",
        show(&r)
    );
    assert!(
        !marker.exists(),
        "the denied program ran (exec-guard records: {:?})\n{}",
        ws.decisions("exec-guard"),
        show(&r)
    );
}

/// `touch` is allowed, except with an argument containing "forbidden".
fn touch_policy() -> String {
    sandboxed("[[rule]]\ndecision = \"deny\"\ncommand = \"touch\"\nargs = \"*forbidden*\"\n")
}

#[test]
fn racing_exec_argv_never_runs_denied_arguments() {
    let ws = Workspace::new("race-exec-argv");
    let bin = cc(&ws.dir, "race_exec", RACE_EXEC_C, &["-pthread"]);
    let r = supervise(
        &ws,
        &touch_policy(),
        &[],
        &[s(&bin), "argv", "/usr/bin/touch", "-", RACE_MS],
    );
    assert_eq!(r.code, Some(0), "{}", show(&r));
    assert!(
        ws.path("allowed").exists(),
        "`touch allowed` must run\n{}",
        show(&r)
    );
    assert!(
        audited(&ws, "exec", "argv", "forbidden", "deny") > 0,
        "the race did not run\n{}",
        show(&r)
    );
    assert!(
        !ws.path("forbidden").exists(),
        "`touch forbidden` ran\n{}",
        show(&r)
    );
}

#[test]
fn racing_exec_argument_count_never_runs_denied_arguments() {
    // The supervisor reads {touch, allowed}; the kernel may copy {touch, forbidden, allowed}.
    let ws = Workspace::new("race-exec-argc");
    let bin = cc(&ws.dir, "race_exec", RACE_EXEC_C, &["-pthread"]);
    let r = supervise(
        &ws,
        &touch_policy(),
        &[],
        &[s(&bin), "argc", "/usr/bin/touch", "-", RACE_MS],
    );
    assert_eq!(r.code, Some(0), "{}", show(&r));
    assert!(
        ws.path("allowed").exists(),
        "`touch allowed` must run\n{}",
        show(&r)
    );
    assert!(
        audited(&ws, "exec", "argv", "forbidden", "deny") > 0,
        "the race did not run\n{}",
        show(&r)
    );
    assert!(
        !ws.path("forbidden").exists(),
        "`touch forbidden allowed` ran: the exec guard only compares the tail of the command line\n\
         exec-guard records: {:?}\n{}",
        ws.decisions("exec-guard"),
        show(&r)
    );
}

// ---------------------------------------------------------------------------------------------
// 8. The dynamic loader: `ld.so PROGRAM` runs PROGRAM without an execve of it
// ---------------------------------------------------------------------------------------------

#[test]
fn dynamic_loader_does_not_run_a_denied_program() {
    // sandboxed + headless: a program the agent wrote into its workspace needs approval
    // (denied); one outside every exec tree is refused whatever the rules say.
    let ws = Workspace::new("ldso");
    let evil = payload(&ws.dir, "tool", &ws.path("evil-ran"));
    let outside = payload(&base(&ws), "outside-tool", &ws.path("outside-ran"));
    std::os::unix::fs::symlink(&outside, ws.path("link-to-outside")).expect("symlink");
    let script = format!(
        "{LDSO} /usr/bin/touch control-ran; \
         {LDSO} ./tool; {LDSO} {evil}; {LDSO} --library-path /nonexistent ./tool; \
         {LDSO} --preload '' --argv0 innocent ./tool; {LDSO} -- ./tool; \
         {LDSO} {outside}; {LDSO} ./link-to-outside; \
         /usr/bin/env {LDSO} ./tool; true",
        evil = evil.display(),
        outside = outside.display()
    );
    let r = supervise(&ws, "preset:sandboxed", &[], &["/bin/sh", "-c", &script]);
    assert!(
        ws.path("control-ran").exists(),
        "`ld.so /usr/bin/touch` must work\n{}",
        show(&r)
    );
    assert!(
        audited(&ws, "exec", "chain", "/tool", "deny") > 0,
        "ld.so's target was never decided\n{}",
        show(&r)
    );
    assert!(
        !ws.path("evil-ran").exists(),
        "ld.so ran the denied workspace program\n{}",
        show(&r)
    );
    assert!(
        !ws.path("outside-ran").exists(),
        "ld.so ran a program outside the exec trees\n{}",
        show(&r)
    );
}

#[test]
fn dynamic_loader_cannot_map_programs_from_the_noexec_tmp_tree() {
    // A workspace outside {tmp}: {tmp} is then a writable tree without exec, bound noexec, so
    // not even ld.so (which mmaps instead of exec'ing) nor LD_PRELOAD can run code from it.
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("attacks-noexec-{}", std::process::id()));
    let ws = Workspace {
        dir: root.join("ws"),
        audit: root.join("audit.jsonl"),
    };
    std::fs::create_dir_all(&ws.dir).expect("workspace");
    let tmp = TmpDir::new("noexec");
    let tool = payload(tmp.path(), "tool", &ws.path("tool-ran"));
    let lib = cc(
        tmp.path(),
        "evil.so",
        &format!("#include <fcntl.h>\n__attribute__((constructor)) static void c(void) {{ open(\"{}\", O_CREAT | O_WRONLY, 0644); }}\n\
         unsigned int la_version(unsigned int v) {{ return v; }}\n",
            ws.path("preload-ran").display()),
        &["-shared", "-fPIC"],
    );
    let script = format!(
        "{LDSO} /usr/bin/touch control-ran; {tool}; {LDSO} {tool}; LD_PRELOAD={lib} /usr/bin/true; \
         cp {tool} {tmp}/copy && {LDSO} {tmp}/copy; true",
        tool = tool.display(),
        lib = lib.display(),
        tmp = tmp.path().display()
    );
    let r = supervise(&ws, "preset:sandboxed", &[], &["/bin/sh", "-c", &script]);
    assert!(
        ws.path("control-ran").exists(),
        "`ld.so /usr/bin/touch` must work\n{}",
        show(&r)
    );
    assert!(
        !ws.path("tool-ran").exists(),
        "a program in {{tmp}} ran\n{}",
        show(&r)
    );
    assert!(
        !ws.path("preload-ran").exists(),
        "a library in {{tmp}} was loaded with LD_PRELOAD\n{}",
        show(&r)
    );
}

/// A file removed on drop.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A directory removed on drop.
struct TmpDir(PathBuf);

impl TmpDir {
    fn new(name: &str) -> TmpDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p =
            std::env::temp_dir().join(format!("as-attack-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TmpDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fork `ld.so LINK` in a loop for `ms` while a separate process keeps swapping the symlink
/// LINK between GOOD and EVIL. The supervisor resolves LINK when it decides; ld.so opens it
/// again, later, in user space.
const LDSO_RACE_C: &str = r#"
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 6) return 2;
    const char *ldso = argv[1], *link = argv[2], *good = argv[3], *evil = argv[4];
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", link);
    unlink(tmp);
    symlink(good, link);
    pid_t flipper = fork();
    if (flipper == 0) {
        for (;;) {
            symlink(evil, tmp); rename(tmp, link);
            symlink(good, tmp); rename(tmp, link);
        }
    }
    long runs = 0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        pid_t pid = fork();
        if (pid == 0) { execl(ldso, ldso, link, (char *)0); _exit(126); }
        waitpid(pid, 0, 0);
        runs++;
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 < atoi(argv[5]));
    kill(flipper, SIGKILL);
    waitpid(flipper, 0, 0);
    printf("runs=%ld\n", runs);
    return 0;
}
"#;

#[test]
fn racing_symlink_under_the_dynamic_loader_never_runs_the_denied_program() {
    let ws = Workspace::new("ldso-race");
    let marker = ws.path("evil-ran");
    let evil = payload(&ws.dir, "evil", &marker);
    let bin = cc(&ws.dir, "ldso_race", LDSO_RACE_C, &[]);
    let link = ws.path("link");
    let r = supervise(
        &ws,
        "preset:sandboxed",
        &[],
        &[s(&bin), LDSO, s(&link), "/usr/bin/true", s(&evil), RACE_MS],
    );
    assert_eq!(r.code, Some(0), "{}", show(&r));
    // ld.so reopens LINK by name after the exec, where the guard can't see: a target in a tree
    // the agent can write is refused outright (even while it points at /usr/bin/true), with
    // the reason in the audit.
    assert!(
        ws.decisions("exec").iter().any(|d| d["decision"] == "deny"
            && d["action"]["chain"].to_string().contains("/usr/bin/true")
            && d["reason"]
                .as_str()
                .is_some_and(|r| r.contains("writable tree"))),
        "`ld.so LINK` with LINK in the workspace must be refused as swappable\n{}",
        show(&r)
    );
    assert!(
        audited(&ws, "exec", "chain", "/evil", "deny") > 0,
        "the race did not run\n{}",
        show(&r)
    );
    assert!(
        !marker.exists(),
        "ld.so loaded the denied program through the swapped symlink\n{}",
        show(&r)
    );
}

#[test]
fn ld_preload_does_not_run_unapproved_workspace_code() {
    // Headless, the sandboxed preset denies programs the agent writes into its workspace
    // (they need approval). The same code as a library preloaded into /usr/bin/true:
    let ws = Workspace::new("ld-preload");
    let marker = ws.path("preload-ran");
    payload(&ws.dir, "evil", &ws.path("evil-ran"));
    let lib = cc(
        &ws.dir,
        "evil.so",
        &format!("#include <fcntl.h>\n__attribute__((constructor)) static void c(void) {{ open(\"{}\", O_CREAT | O_WRONLY, 0644); }}\n\
         unsigned int la_version(unsigned int v) {{ return v; }}\n", marker.display()),
        &["-shared", "-fPIC"],
    );
    // The supervisor can't strip the variable from the exec, so the exec is refused (with the
    // reason in the audit); the same program without it runs.
    let script = format!(
        "./evil; LD_PRELOAD={} /usr/bin/touch preloaded-ran; /usr/bin/touch control-ran; true",
        lib.display()
    );
    let r = supervise(&ws, "preset:sandboxed", &[], &["/bin/sh", "-c", &script]);
    assert!(
        ws.path("control-ran").exists(),
        "/usr/bin/touch must run\n{}",
        show(&r)
    );
    assert!(
        !ws.path("preloaded-ran").exists(),
        "/usr/bin/touch ran with the workspace library preloaded\n{}",
        show(&r)
    );
    assert!(
        ws.decisions("exec").iter().any(|d| d["decision"] == "deny"
            && d["reason"]
                .as_str()
                .is_some_and(|r| r.contains("LD_PRELOAD"))),
        "the refusal names LD_PRELOAD in the audit\n{}",
        show(&r)
    );
    assert!(
        !ws.path("evil-ran").exists(),
        "the workspace program must be denied\n{}",
        show(&r)
    );
    assert!(
        !marker.exists(),
        "the preloaded workspace library ran\n{}",
        show(&r)
    );
}

/// A shared library whose constructor creates `marker`, built as `dir/name` with `soname`
/// (it also passes for an `LD_AUDIT` module).
fn constructor_lib(dir: &Path, name: &str, soname: &str, marker: &Path) -> PathBuf {
    let src = format!(
        "#include <fcntl.h>\n__attribute__((constructor)) static void c(void) {{ open(\"{}\", O_CREAT | O_WRONLY, 0644); }}\n\
         unsigned int la_version(unsigned int v) {{ return v; }}\n",
        marker.display()
    );
    let soname = format!("-Wl,-soname,{soname}");
    cc(dir, name, &src, &["-shared", "-fPIC", &soname])
}

#[test]
fn loader_search_paths_and_options_do_not_run_unapproved_workspace_code() {
    // The same bypass as LD_PRELOAD, other spellings: make glibc load a library the agent
    // wrote. /usr/bin/ls needs libselinux.so.1: a workspace library of that name runs its
    // constructor before ls notices the missing symbols. iconv loads GCONV_PATH's modules.
    // (LD_LIBRARY_PATH into the workspace is deliberately allowed: build tools such as cargo's
    // test runner set it, and an allowed interpreter can load a workspace library anyway
    // (ctypes): see the README's limits. ld.so --library-path, an explicit request, is not.)
    let ws = Workspace::new("ld-library-path");
    for (dir, marker) in [
        ("env-lib", "library-path-env-ran"),
        ("opt-lib", "library-path-option-ran"),
    ] {
        std::fs::create_dir_all(ws.path(dir)).expect("mkdir");
        constructor_lib(
            &ws.path(dir),
            "libselinux.so.1",
            "libselinux.so.1",
            &ws.path(marker),
        );
    }
    std::fs::create_dir_all(ws.path("gconv")).expect("mkdir");
    constructor_lib(
        &ws.path("gconv"),
        "evil.so",
        "evil.so",
        &ws.path("gconv-ran"),
    );
    ws.write(
        "gconv/gconv-modules",
        "module  EVIL//  INTERNAL  evil  1\nmodule  INTERNAL  EVIL//  evil  1\n",
    );
    let preload = constructor_lib(
        &ws.dir,
        "evil.so",
        "evil.so",
        &ws.path("option-preload-ran"),
    );
    let audit = constructor_lib(
        &ws.dir,
        "audit.so",
        "audit.so",
        &ws.path("option-audit-ran"),
    );
    let script = format!(
        "/usr/bin/touch control-ran; \
         {LDSO} --library-path {ws}/opt-lib /usr/bin/ls >/dev/null 2>&1; \
         echo x | GCONV_PATH={ws}/gconv /usr/bin/iconv -f EVIL -t UTF-8 >/dev/null 2>&1; \
         {LDSO} --preload {preload} /usr/bin/true; \
         {LDSO} --audit {audit} /usr/bin/true; true",
        ws = ws.dir.display(),
        preload = preload.display(),
        audit = audit.display()
    );
    let r = supervise(&ws, "preset:sandboxed", &[], &["/bin/sh", "-c", &script]);
    assert!(
        ws.path("control-ran").exists(),
        "/usr/bin/touch must run\n{}",
        show(&r)
    );
    let ran: Vec<&str> = [
        ("library-path-option-ran", "ld.so --library-path"),
        ("gconv-ran", "GCONV_PATH"),
        ("option-preload-ran", "ld.so --preload"),
        ("option-audit-ran", "ld.so --audit"),
    ]
    .into_iter()
    .filter(|(marker, _)| ws.path(marker).exists())
    .map(|(_, how)| how)
    .collect();
    assert!(
        ran.is_empty(),
        "a workspace library ran through: {}\n{}",
        ran.join("; "),
        show(&r)
    );
}

// ---------------------------------------------------------------------------------------------
// 9. `#!` scripts whose interpreter is denied
// ---------------------------------------------------------------------------------------------

#[test]
fn shebang_with_a_denied_interpreter_does_not_run() {
    // Scripts under {workspace}/scripts are allowed; the interpreter decides too.
    let ws = Workspace::new("shebang");
    let b = base(&ws);
    let denied = payload(&ws.dir, "forbidden-interp", &ws.path("denied-interp-ran"));
    let outside = payload(&b, "outside-interp", &ws.path("outside-interp-ran"));
    let tool = payload(&ws.dir, "tool", &ws.path("ldso-target-ran"));
    let script = |name: &str, body: String| {
        let p = ws.write(&format!("scripts/{name}"), &body);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    };
    script("control.sh", "#!/bin/sh\ntouch control-ran\n".into());
    script("denied.sh", format!("#!{}\n", denied.display()));
    script("outside.sh", format!("#!{} -x\n", outside.display()));
    script(
        "nested.sh",
        format!("#!{}\n", ws.path("scripts/denied.sh").display()),
    );
    script("ldso.sh", format!("#!{LDSO} {}\n", tool.display()));
    script("padded.sh", format!("#! \t{}  \n", denied.display()));
    let policy = sandboxed(
        "[[rule]]\ndecision = \"allow\"\ncommand = \"{workspace}/scripts/*\"\n\
         [[rule]]\ndecision = \"deny\"\ncommand = \"forbidden-interp\"\n",
    );
    let cmd = "for s in control denied outside nested ldso padded; do ./scripts/$s.sh; echo \"$s=$?\"; done";
    let r = supervise(&ws, &policy, &[], &["/bin/sh", "-c", cmd]);
    assert!(
        ws.path("control-ran").exists(),
        "the allowed script must run\n{}",
        show(&r)
    );
    assert_eq!(field(&r.stdout, "control"), Some("0"), "{}", show(&r));
    for (marker, what) in [
        ("denied-interp-ran", "a denied interpreter"),
        (
            "outside-interp-ran",
            "an interpreter outside the exec trees",
        ),
        ("ldso-target-ran", "ld.so's target named on a #! line"),
    ] {
        assert!(!ws.path(marker).exists(), "{what} ran\n{}", show(&r));
    }
    for s in ["denied", "outside", "nested", "ldso", "padded"] {
        assert_ne!(
            field(&r.stdout, s),
            Some("0"),
            "{s}.sh succeeded\n{}",
            show(&r)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 7. memfd and other anonymous executables
// ---------------------------------------------------------------------------------------------

/// Copy an ELF into a memfd (and into a file in /dev/shm) and try every way
/// to execute it; each attempt in its own child, so one success can't hide the others.
const MEMFD_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static void say(const char *what, long r) {
    printf("%s=%s\n", what, r < 0 ? strerrorname_np(errno) : "ok");
    fflush(stdout);
}

static int copy_into(int dst, const char *src) {
    int s = open(src, O_RDONLY);
    struct stat st;
    fstat(s, &st);
    long n = sendfile(dst, s, 0, st.st_size);
    close(s);
    return n == st.st_size ? 0 : -1;
}

/* Run `how` in a child; report whether the exec call itself returned (failed). */
static void attempt(const char *what, int fd, const char *path) {
    pid_t pid = fork();
    if (pid == 0) {
        char *av[] = { "payload", NULL };
        char p[64];
        if (!strcmp(what, "fexecve")) fexecve(fd, av, environ);
        else if (!strcmp(what, "execveat")) syscall(SYS_execveat, fd, "", av, environ, AT_EMPTY_PATH);
        else if (!strcmp(what, "proc_fd")) { snprintf(p, sizeof p, "/proc/self/fd/%d", fd); execve(p, av, environ); }
        else if (!strcmp(what, "ldso")) {
            snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
            char *lv[] = { "ld.so", p, NULL };
            execve("/lib64/ld-linux-x86-64.so.2", lv, environ);
        } else execve(path, av, environ);
        printf("%s=%s\n", what, strerrorname_np(errno));
        fflush(stdout);
        _exit(126);
    }
    int st;
    waitpid(pid, &st, 0);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) printf("%s=RAN\n", what);
    fflush(stdout);
}

int main(int argc, char **argv) {
    const char *elf = argv[1];
    /* memfd_noexec=2 in the sandbox: executable memfds are refused, and it can't be undone. */
    int k = open("/proc/sys/vm/memfd_noexec", O_WRONLY);
    say("sysctl_open", k);
    if (k >= 0) say("sysctl_write", write(k, "0", 1));
    say("memfd_exec_flag", syscall(SYS_memfd_create, "x", 0x10 /* MFD_EXEC */));
    int m = memfd_create("payload", MFD_ALLOW_SEALING);
    say("memfd", m);
    say("memfd_copy", copy_into(m, elf));
    say("memfd_chmod", fchmod(m, 0755));
    attempt("fexecve", m, 0);
    attempt("execveat", m, 0);
    attempt("proc_fd", m, 0);
    attempt("ldso", m, 0);
    const char *shm = argv[3];
    int f = open(shm, O_CREAT | O_RDWR | O_TRUNC, 0755);
    say("shm_copy", f < 0 ? -1 : copy_into(f, elf));
    close(f);
    attempt("shm_file", -1, shm);
    unlink(shm);
    attempt("control", -1, argv[2]);
    return 0;
}
"#;

#[test]
fn memfd_and_anonymous_files_cannot_be_executed() {
    let ws = Workspace::new("memfd");
    let evil_marker = ws.path("memfd-ran");
    // The ELF to smuggle lives outside the workspace; the control copy inside may run.
    let evil = payload(&base(&ws), "evil", &evil_marker);
    let control = payload(&ws.dir, "control", &ws.path("control-ran"));
    let bin = cc(&ws.dir, "memfd", MEMFD_C, &[]);
    // Allow the workspace's programs, so only the memfd and /dev/shm routes are judged.
    let policy = sandboxed("[[rule]]\ndecision = \"allow\"\ncommand = \"{workspace}/*\"\n");
    let shm = format!(
        "/dev/shm/{}",
        base(&ws).file_name().unwrap().to_string_lossy()
    );
    let _cleanup = RemoveOnDrop(PathBuf::from(&shm));
    let r = supervise(&ws, &policy, &[], &[s(&bin), s(&evil), s(&control), &shm]);
    assert!(
        ws.path("control-ran").exists(),
        "the control program must run\n{}",
        show(&r)
    );
    for copied in ["memfd_copy", "shm_copy"] {
        assert_eq!(
            field(&r.stdout, copied),
            Some("ok"),
            "{copied}\n{}",
            show(&r)
        );
    }
    assert!(
        !evil_marker.exists(),
        "an anonymous copy of a program ran\n{}",
        show(&r)
    );
    assert_ne!(
        field(&r.stdout, "sysctl_write"),
        Some("ok"),
        "vm.memfd_noexec was reset\n{}",
        show(&r)
    );
    assert_ne!(
        field(&r.stdout, "memfd_exec_flag"),
        Some("ok"),
        "MFD_EXEC was granted\n{}",
        show(&r)
    );
    for how in ["fexecve", "execveat", "proc_fd", "ldso", "shm_file"] {
        assert_ne!(
            field(&r.stdout, how),
            Some("RAN"),
            "{how} ran the payload\n{}",
            show(&r)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 10. Getting around seccomp itself, and the fixed denials
// ---------------------------------------------------------------------------------------------

/// Try every fixed denial and print `name=ok` or `name=ERRNO`. Each of these calls would
/// succeed here without the deny filter (root VM, io_uring enabled, unprivileged userfaultfd
/// in user mode...), or is checked for its side effect (the mask stays, the denied connect
/// stays refused). TIOCSTI has its own test, on the user's terminal.
const SECCOMP_PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static void say(const char *what, long r) {
    printf("%s=%s\n", what, r < 0 ? strerrorname_np(errno) : "ok");
    fflush(stdout);
}

/* A call that may create a process: the child leaves at once. */
static long spawned(long r) {
    if (r == 0) _exit(0);
    if (r > 0) waitpid(r, 0, __WALL);
    return r;
}

int main(int argc, char **argv) {
    if (!strcmp(argv[1], "x32")) {
        printf("calling\n"); fflush(stdout);
        syscall(0x40000000 | SYS_getpid);
        printf("x32 survived\n");
        return 0;
    }
    if (!strcmp(argv[1], "int80")) {
        printf("calling\n"); fflush(stdout);
        long r;
        __asm__ volatile("int $0x80" : "=a"(r) : "a"(20L) : "memory");
        printf("int80 survived: %ld\n", r);
        return 0;
    }
    int denied_port = atoi(argv[2]);
    const char *masked = argv[3];

    /* Our own listener would receive the supervisor's notifications. */
    struct sock_filter allow_all[] = { BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW) };
    struct sock_fprog prog = { 1, allow_all };
    say("seccomp_new_listener", syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog));
    say("seccomp_plain", syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog));
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(denied_port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int s = socket(AF_INET, SOCK_STREAM, 0);
    say("denied_connect", connect(s, (struct sockaddr *)&sa, sizeof sa));

    uint64_t params[15] = { 0 };
    say("io_uring_setup", syscall(SYS_io_uring_setup, 8, params));

    pid_t child = fork();
    if (child == 0) { pause(); _exit(0); }
    say("fork", child);
    say("ptrace_attach", ptrace(PTRACE_ATTACH, child, 0, 0));
    say("ptrace_seize", ptrace(PTRACE_SEIZE, child, 0, 0));
    char buf[8] = "abcdefg";
    struct iovec l = { buf, 8 }, r = { buf, 8 };
    say("process_vm_writev", process_vm_writev(child, &l, 1, &r, 1, 0));
    say("process_vm_readv", process_vm_readv(child, &l, 1, &r, 1, 0));
    int pidfd = syscall(SYS_pidfd_open, child, 0);
    say("pidfd_open", pidfd);
    say("pidfd_getfd", syscall(SYS_pidfd_getfd, pidfd, 0, 0));
    kill(child, SIGKILL);
    waitpid(child, 0, 0);

    say("unshare_newuser", unshare(CLONE_NEWUSER));
    say("clone_newuser", spawned(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)));
    uint64_t cargs[11] = { 0 };
    cargs[4] = SIGCHLD; /* exit_signal */
    say("clone3", spawned(syscall(SYS_clone3, cargs, 88)));
    say("clone_plain", spawned(syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0)));

    say("umount_mask", umount2(masked, MNT_DETACH));
    say("mount_tmpfs", mount("none", "/tmp", "tmpfs", 0, 0));
    say("open_tree", syscall(SYS_open_tree, AT_FDCWD, ".", 0));
    int mfd = open(masked, O_RDONLY);
    char secret[64] = { 0 };
    say("read_masked", mfd < 0 ? -1 : read(mfd, secret, sizeof secret - 1));
    printf("masked_content=[%s]\n", secret);

    say("personality_read_implies_exec", personality(READ_IMPLIES_EXEC));
    say("personality_query", personality(0xffffffff));
    say("userfaultfd", syscall(SYS_userfaultfd, 1 /* UFFD_USER_MODE_ONLY */));
    say("keyctl", syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3 /* session */, 0));
    struct { unsigned int bytes; int type; unsigned char h[128]; } fh = { 128 };
    int mount_id;
    say("name_to_handle_at", syscall(SYS_name_to_handle_at, AT_FDCWD, ".", &fh, &mount_id, 0));

    return 0;
}
"#;

#[test]
fn seccomp_bypasses_and_fixed_denials_fail() {
    let ws = Workspace::new("seccomp");
    ws.write(".env", SECRET);
    let denied = Listener::new();
    let bin = cc(&ws.dir, "probe", SECCOMP_PROBE_C, &[]);
    let policy = sandboxed(&format!(
        "[[rule]]\ndecision = \"deny\"\nnetwork = \"127.0.0.1:{}\"\n",
        denied.port
    ));
    let masked = ws.path(".env");
    let r = supervise(
        &ws,
        &policy,
        &[],
        &[s(&bin), "probe", &denied.port.to_string(), s(&masked)],
    );
    assert_eq!(r.code, Some(0), "{}", show(&r));
    let out = &r.stdout;
    // The setup is live: the same kinds of calls work when they are not the dangerous ones.
    for control in [
        "seccomp_plain",
        "fork",
        "pidfd_open",
        "clone_plain",
        "personality_query",
    ] {
        assert_eq!(
            field(out, control),
            Some("ok"),
            "control {control} must work\n{}",
            show(&r)
        );
    }
    for (call, errno) in [
        ("seccomp_new_listener", "EPERM"),
        ("denied_connect", "ECONNREFUSED"),
        ("io_uring_setup", "EPERM"),
        ("ptrace_attach", "EPERM"),
        ("ptrace_seize", "EPERM"),
        ("process_vm_writev", "EPERM"),
        ("process_vm_readv", "EPERM"),
        ("pidfd_getfd", "EPERM"),
        ("unshare_newuser", "EPERM"),
        ("clone_newuser", "EPERM"),
        ("clone3", "ENOSYS"),
        ("umount_mask", "EPERM"),
        ("mount_tmpfs", "EPERM"),
        ("open_tree", "EPERM"),
        ("personality_read_implies_exec", "EPERM"),
        ("userfaultfd", "EPERM"),
        ("keyctl", "EPERM"),
        ("name_to_handle_at", "EPERM"),
    ] {
        assert_eq!(field(out, call), Some(errno), "{call}\n{}", show(&r));
    }
    assert!(
        !out.contains(SECRET),
        "the masked secret was read\n{}",
        show(&r)
    );
    assert!(
        !denied.was_reached(),
        "the denied listener was reached\n{}",
        show(&r)
    );
}

#[test]
fn foreign_syscall_abis_kill_the_agent() {
    // x32 (this kernel has no x32 ABI: unfiltered, the call would just fail with ENOSYS) and
    // i386 `int 0x80` (IA32 emulation is on here: unfiltered, it would run getpid).
    let ws = Workspace::new("abi");
    let bin = cc(&ws.dir, "probe", SECCOMP_PROBE_C, &[]);
    for abi in ["x32", "int80"] {
        let r = supervise(&ws, "preset:sandboxed", &[], &[s(&bin), abi]);
        assert!(
            r.stdout.contains("calling"),
            "{abi}: the probe must start\n{}",
            show(&r)
        );
        assert!(
            !r.stdout.contains("survived"),
            "{abi}: the process survived\n{}",
            show(&r)
        );
        assert_eq!(
            r.code,
            Some(128 + libc::SIGSYS),
            "{abi}: must be killed by SIGSYS\n{}",
            show(&r)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 10/11. Processes outside the sandbox: invisible and unreachable
// ---------------------------------------------------------------------------------------------

/// Look for a host process by a string in its command line, then try to signal it by its
/// host PID, by pidfd, and by kill(-1). Control: kill a child of our own.
const SIGNAL_C: &str = r#"
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void say(const char *what, long r) {
    printf("%s=%s\n", what, r < 0 ? strerrorname_np(errno) : "ok");
    fflush(stdout);
}

int main(int argc, char **argv) {
    pid_t host_pid = atoi(argv[1]);
    const char *needle = argv[2];
    int procs = 0, visible = 0;
    DIR *d = opendir("/proc");
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        procs++;
        char p[64], buf[4096];
        snprintf(p, sizeof p, "/proc/%s/cmdline", e->d_name);
        int fd = open(p, O_RDONLY);
        if (fd < 0) continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        for (ssize_t i = 0; i < n; i++) if (!buf[i]) buf[i] = ' ';
        /* "sleep <needle>": our own command line (and init's) holds the needle alone. */
        if (n > 6 && !strncmp(buf, "sleep ", 6)) { buf[n] = 0; if (strstr(buf, needle)) visible++; }
    }
    printf("procs=%d visible=%d\n", procs, visible);
    pid_t own = fork();
    if (own == 0) { pause(); _exit(0); }
    int st;
    say("kill_own_child", kill(own, SIGKILL));
    waitpid(own, &st, 0);
    printf("own_child_killed=%d\n", WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    say("kill_host_pid", kill(host_pid, SIGKILL));
    say("pidfd_open_host_pid", syscall(SYS_pidfd_open, host_pid, 0));
    say("kill_all", kill(-1, SIGKILL));
    return 0;
}
"#;

#[test]
fn host_processes_are_invisible_and_cannot_be_signalled() {
    let ws = Workspace::new("signal");
    let marker = format!("31.{}{}", std::process::id(), 4242);
    let mut victim = std::process::Command::new("sleep")
        .arg(&marker)
        .spawn()
        .expect("spawn sleep");
    let victim_guard = KillOnDrop(victim.id());
    // (Right after a vfork-style spawn the new image's command line may not be set up yet.)
    let t0 = std::time::Instant::now();
    while !process_alive_with_marker(&marker) && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        process_alive_with_marker(&marker),
        "the victim must be visible from outside"
    );
    let bin = cc(&ws.dir, "signal", SIGNAL_C, &[]);
    let r = supervise(
        &ws,
        "preset:sandboxed",
        &[],
        &[s(&bin), &victim.id().to_string(), &marker],
    );
    assert_eq!(
        field(&r.stdout, "own_child_killed"),
        Some("1"),
        "kill must work inside\n{}",
        show(&r)
    );
    assert!(
        count(&r.stdout, "procs") >= 2,
        "the agent must see its own processes\n{}",
        show(&r)
    );
    assert_eq!(
        count(&r.stdout, "visible"),
        0,
        "the agent saw a host process\n{}",
        show(&r)
    );
    assert_ne!(
        field(&r.stdout, "kill_host_pid"),
        Some("ok"),
        "{}",
        show(&r)
    );
    assert_ne!(
        field(&r.stdout, "pidfd_open_host_pid"),
        Some("ok"),
        "{}",
        show(&r)
    );
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        victim.try_wait().expect("wait").is_none(),
        "the host process was killed\n{}",
        show(&r)
    );
    drop(victim_guard);
    let _ = victim.wait();
}

struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a pid we spawned; no memory is involved.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

// ---------------------------------------------------------------------------------------------
// The view of the read trees: nothing else exists, and nothing leads out of it
// ---------------------------------------------------------------------------------------------

/// Secrets next to the workspace (in its parent, in no tree) and in a sibling directory.
fn plant_secrets(b: &Path) {
    std::fs::write(b.join("secret.txt"), SECRET).expect("secret");
    std::fs::create_dir_all(b.join("sibling")).expect("sibling");
    std::fs::write(b.join("sibling/secret.txt"), SECRET).expect("sibling secret");
}

#[test]
fn only_the_read_trees_are_in_the_agents_view() {
    let ws = Workspace::new("view-only");
    let b = base(&ws);
    plant_secrets(&b);
    ws.write("public.txt", "public-content\n");
    let script = format!(
        "exec > {ws}/leak 2>&1; \
         test -e {b}/secret.txt && echo VISIBLE-SECRET; \
         ls -a {b} / /tmp; \
         for p in {b}/secret.txt {b}/sibling/secret.txt ../secret.txt ../sibling/secret.txt \
                  /proc/1/root{b}/secret.txt /proc/self/root{b}/sibling/secret.txt \
                  /proc/1/cwd/../secret.txt /dev/fd/../cwd/../secret.txt; do cat \"$p\"; done; \
         cd / && cat .{b}/secret.txt; cd {b}/.. && ls -a; cd {ws}/../.. && ls -aR . | head -50; \
         cat /dev/..{b}/secret.txt /dev{b}/secret.txt /dev/pts/../..{b}/secret.txt; \
         ls -a /dev/.. /dev/tmp /dev{b}; cd /dev/shm/../.. && cat .{b}/secret.txt; \
         find /tmp -name secret.txt; cat {ws}/public.txt; true",
        ws = ws.dir.display(),
        b = b.display()
    );
    let r = supervise(&ws, &narrow(&[], ""), &[], &["/bin/sh", "-c", &script]);
    assert_view_held(
        &ws,
        &r,
        "public-content",
        &[
            "VISIBLE-SECRET",
            "sibling",
            "secret.txt",
            "policy.toml",
            "audit.jsonl",
        ],
    );
}

/// The agent's `leak` file (its output) has `control` (it ran), no secret, and none of `names`
/// as a line (`ls` prints a name per line into a file).
fn assert_view_held(ws: &Workspace, r: &Result_, control: &str, names: &[&str]) {
    let leak = ws.read("leak").unwrap_or_default();
    assert!(
        leak.contains(control),
        "the agent did not run to its end\n{leak}\n{}",
        show(r)
    );
    assert!(!leak.contains(SECRET), "secret read\n{leak}\n{}", show(r));
    for name in names {
        assert!(
            !leak.lines().any(|l| l.trim() == *name),
            "{name}: outside the read trees, yet in the view\n{leak}\n{}",
            show(r)
        );
    }
}

#[test]
fn a_working_directory_outside_the_read_trees_leads_nowhere() {
    let ws = Workspace::new("view-cwd");
    let b = base(&ws);
    plant_secrets(&b);
    let policy = ws.policy(&narrow(&[], ""));
    let script = format!(
        "exec > {ws}/leak 2>&1; cat secret.txt sibling/secret.txt ./secret.txt; ls -a; \
         cat /proc/self/cwd/secret.txt /proc/1/cwd/secret.txt; echo control",
        ws = ws.dir.display()
    );
    // The supervisor starts in the secrets' directory, the workspace named by --workspace.
    let mut c = common::supervisor_command();
    c.args(["run", "-q", "--headless", "--audit"])
        .arg(&ws.audit)
        .arg("--policy")
        .arg(&policy)
        .arg("--workspace")
        .arg(&ws.dir)
        .args(["--", "/bin/sh", "-c", &script])
        .current_dir(&b)
        .stdin(std::process::Stdio::null());
    let r = common::run_with_timeout(c, LIMIT);
    assert!(!r.timed_out, "{}", show(&r));
    assert_view_held(&ws, &r, "control", &["sibling", "secret.txt"]);
}

// ---------------------------------------------------------------------------------------------
// 6/11. /proc/<pid>/root, /proc/<pid>/cwd: no way out of the trees
// ---------------------------------------------------------------------------------------------

#[test]
fn proc_root_and_cwd_links_do_not_lead_outside_the_trees() {
    for trap in [false, true] {
        let ws = Workspace::new("proc-root");
        let b = base(&ws);
        let secret = b.join("secret.txt");
        std::fs::write(&secret, SECRET).expect("secret");
        let policy = narrow(&[], if trap { TRAP_OPENS } else { "" });
        let sec = secret.display().to_string();
        let script = format!(
            "for p in /proc/1/root{sec} /proc/self/root{sec} /proc/$$/root{sec} /proc/1/cwd/../secret.txt \
                      /proc/self/cwd/../secret.txt /proc/thread-self/root{sec} /dev/fd/../root{sec}; do \
               cat \"$p\" >> leak 2>/dev/null && echo \"read:$p\"; done; \
             echo PWNED > /proc/1/root{b}/root-written; echo PWNED > /proc/1/cwd/../cwd-written; \
             echo PWNED > /proc/self/cwd/../self-cwd-written; \
             echo control > control-written; cat control-written; true",
            b = b.display()
        );
        let extra: &[&str] = if trap { &["--default-allow"] } else { &[] };
        let r = supervise(&ws, &policy, extra, &["/bin/sh", "-c", &script]);
        let mode = if trap {
            "trapped opens"
        } else {
            "kernel only (the view, Landlock)"
        };
        assert!(
            r.stdout.contains("control"),
            "{mode}: the workspace must be writable\n{}",
            show(&r)
        );
        assert!(
            !ws.read("leak").unwrap_or_default().contains(SECRET),
            "{mode}: secret read\n{}",
            show(&r)
        );
        for f in ["root-written", "cwd-written", "self-cwd-written"] {
            assert!(
                !b.join(f).exists(),
                "{mode}: {f} was created outside the write trees\n{}",
                show(&r)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Symlinks to masked and out-of-tree files, and a symlink swapped while opens are decided
// ---------------------------------------------------------------------------------------------

#[test]
fn symlinks_do_not_reach_masked_or_out_of_tree_files() {
    for trap in [false, true] {
        let ws = Workspace::new("symlink");
        let b = base(&ws);
        ws.write(".env", SECRET);
        ws.write("sub/.env", SECRET);
        ws.write("public.txt", "public-content\n");
        std::fs::write(b.join("secret.txt"), SECRET).expect("secret");
        let link = |target: &Path, name: &str| {
            std::os::unix::fs::symlink(target, ws.path(name)).expect("symlink")
        };
        link(&ws.path(".env"), "to-env");
        link(Path::new("sub/.env"), "to-sub-env");
        link(Path::new("sub"), "to-sub");
        link(&b.join("secret.txt"), "to-outside");
        link(Path::new("../secret.txt"), "to-outside-rel");
        link(Path::new("public.txt"), "to-public");
        let policy = narrow(&[], if trap { TRAP_OPENS } else { "" });
        let script =
            "for f in to-env to-sub-env to-sub/.env to-outside to-outside-rel to-public; do \
                        cat \"$f\" >> leak 2>/dev/null; done; \
                      cp to-outside copied 2>/dev/null; cat copied >> leak 2>/dev/null; true";
        let extra: &[&str] = if trap { &["--default-allow"] } else { &[] };
        let r = supervise(&ws, &policy, extra, &["/bin/sh", "-c", script]);
        let mode = if trap {
            "trapped opens"
        } else {
            "kernel only (the view, Landlock)"
        };
        let leak = ws.read("leak").unwrap_or_default();
        assert!(
            leak.contains("public-content"),
            "{mode}: a symlink to a readable file must work\n{}",
            show(&r)
        );
        assert!(
            !leak.contains(SECRET),
            "{mode}: a symlink leaked the secret\n{}",
            show(&r)
        );
    }
}

/// Two reader threads open LINK in a loop while a flipper thread atomically replaces LINK
/// (symlink + rename) with links to the public file and to each secret in turn. Anything a
/// reader gets that isn't the public content is appended to LEAK.
const SYMLINK_RACE_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile int stop;
static const char *link_path, *leak, *targets[3];
static long ok[2], other[2];

static void *flip(void *unused) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", link_path);
    for (unsigned i = 0; !stop; i++) {
        unlink(tmp);
        symlink(targets[i % 3], tmp);
        rename(tmp, link_path);
    }
    return unused;
}

static void *reader(void *arg) {
    long i = (long)arg;
    char buf[256];
    while (!stop) {
        int fd = open(link_path, O_RDONLY);
        if (fd < 0) { other[i]++; continue; }
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n > 0 && !strncmp(buf, "public-content", 14)) { ok[i]++; continue; }
        other[i]++;
        if (n > 0) { int l = open(leak, O_WRONLY | O_CREAT | O_APPEND, 0644); write(l, buf, n); close(l); }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 7) return 2;
    link_path = argv[1]; targets[0] = argv[2]; targets[1] = argv[3]; targets[2] = argv[4];
    leak = argv[5];
    symlink(targets[0], link_path);
    pthread_t f, r[2];
    pthread_create(&f, 0, flip, 0);
    for (long i = 0; i < 2; i++) pthread_create(&r[i], 0, reader, (void *)i);
    usleep(atoi(argv[6]) * 1000);
    stop = 1;
    pthread_join(f, 0);
    pthread_join(r[0], 0);
    pthread_join(r[1], 0);
    printf("ok=%ld other=%ld\n", ok[0] + ok[1], other[0] + other[1]);
    return 0;
}
"#;

#[test]
fn racing_symlink_swap_under_trapped_opens_never_yields_a_secret() {
    // With a file `ask` rule every open is decided (and performed) by the supervisor; the
    // link is swapped between a public file and two secrets (masked, out of tree) meanwhile.
    let ws = Workspace::new("symlink-race");
    let b = base(&ws);
    ws.write(".env", SECRET);
    ws.write("asked/public.txt", "public-content\n");
    std::fs::write(b.join("secret.txt"), SECRET).expect("secret");
    let bin = cc(&ws.dir, "symrace", SYMLINK_RACE_C, &["-pthread"]);
    let r = supervise(
        &ws,
        &narrow(&[], TRAP_OPENS),
        &["--default-allow"],
        &[
            s(&bin),
            s(&ws.path("asked/link")),
            "public.txt",
            s(&ws.path(".env")),
            s(&b.join("secret.txt")),
            s(&ws.path("leak")),
            RACE_MS,
        ],
    );
    assert_eq!(r.code, Some(0), "{}", show(&r));
    assert!(
        count(&r.stdout, "ok") > 0,
        "reading the public file through the link must work\n{}",
        show(&r)
    );
    assert!(
        audited(&ws, "open", "path", "secret.txt", "deny") > 0,
        "the supervisor never saw the swap\n{}",
        show(&r)
    );
    assert!(
        !ws.read("leak").unwrap_or_default().contains(SECRET),
        "a reader got a secret\n{}",
        show(&r)
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Hard links: across the mask, and to files outside the write trees
// ---------------------------------------------------------------------------------------------

#[test]
fn hard_links_do_not_expose_masked_or_read_only_files() {
    for trap in [false, true] {
        let ws = Workspace::new("hardlink");
        let b = base(&ws);
        ws.write(".env", SECRET);
        ws.write("own.txt", "own-content\n");
        std::fs::write(b.join("secret.txt"), SECRET).expect("secret");
        let ro_dir = b.join("ro");
        std::fs::create_dir_all(&ro_dir).expect("ro dir");
        std::fs::write(ro_dir.join("config.txt"), "original\n").expect("ro file");
        // `ro` is readable, not writable; `secret.txt` is in no tree.
        let policy = narrow(&[&ro_dir], if trap { TRAP_OPENS } else { "" });
        let script = format!(
            "ln own.txt own-link && cat own-link >> leak; \
             ln .env env-link; cat env-link >> leak; \
             ln {b}/secret.txt secret-link; cat secret-link >> leak; \
             ln {ro}/config.txt config-link && echo PWNED >> config-link; \
             mv {ro}/config.txt moved 2>/dev/null; echo PWNED >> moved; true",
            b = b.display(),
            ro = ro_dir.display()
        );
        let extra: &[&str] = if trap { &["--default-allow"] } else { &[] };
        let r = supervise(&ws, &policy, extra, &["/bin/sh", "-c", &script]);
        let mode = if trap {
            "trapped opens"
        } else {
            "kernel only (the view, Landlock)"
        };
        let leak = ws.read("leak").unwrap_or_default();
        assert!(
            leak.contains("own-content"),
            "{mode}: a hard link inside the workspace must work\n{}",
            show(&r)
        );
        assert!(
            !leak.contains(SECRET),
            "{mode}: a hard link leaked a secret\n{}",
            show(&r)
        );
        for l in ["env-link", "secret-link", "config-link"] {
            assert!(
                !ws.path(l).exists(),
                "{mode}: {l} was created\n{}",
                show(&r)
            );
        }
        // `mv` falls back to copy + unlink: the copy is fine, the original must stay as it was.
        assert_eq!(
            std::fs::read_to_string(ro_dir.join("config.txt"))
                .ok()
                .as_deref(),
            Some("original\n"),
            "{mode}: a read-only file was changed or moved\n{}",
            show(&r)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 5. /proc/self/fd and O_PATH: reopening with more access than the path grants
// ---------------------------------------------------------------------------------------------

const REOPEN_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char *leak;

static void say(const char *what, long r) {
    printf("%s=%s\n", what, r < 0 ? strerrorname_np(errno) : "ok");
    fflush(stdout);
}

/* Open, and keep whatever can be read in LEAK. */
static void grab(const char *what, int fd) {
    say(what, fd);
    if (fd < 0) return;
    char b[256];
    ssize_t n = read(fd, b, sizeof b);
    if (n > 0) { int l = open(leak, O_WRONLY | O_CREAT | O_APPEND, 0644); write(l, b, n); close(l); }
    close(fd);
}

static void scribble(const char *what, int fd) {
    say(what, fd);
    if (fd >= 0) { write(fd, "PWNED\n", 6); close(fd); }
}

int main(int argc, char **argv) {
    const char *ro = argv[1], *masked = argv[2], *masked_dir = argv[3], *own = argv[4];
    leak = argv[5];
    /* Handles to reopen: O_PATH (no access checked at all), or plain read-only fds. */
    int how = strcmp(argv[6], "opath") ? O_RDONLY : O_PATH;
    char p[128];
    /* Control: the workspace file is writable through its fd. */
    int o = open(own, how);
    snprintf(p, sizeof p, "/proc/self/fd/%d", o);
    scribble("reopen_own_for_write", open(p, O_WRONLY | O_APPEND));
    grab("read_ro", open(ro, O_RDONLY));
    /* A read-only file: write access through its fd. */
    o = open(ro, how);
    say("handle_ro", o);
    snprintf(p, sizeof p, "/proc/self/fd/%d", o);
    scribble("reopen_ro_for_write", open(p, O_WRONLY | O_APPEND));
    snprintf(p, sizeof p, "/proc/thread-self/fd/%d", o);
    scribble("thread_self_ro_for_write", open(p, O_RDWR));
    snprintf(p, sizeof p, "/dev/fd/%d", o);
    scribble("devfd_ro_for_write", open(p, O_RDWR));
    scribble("open_ro_for_write", open(ro, O_WRONLY | O_APPEND));
    /* The masked file: through its fd, a directory fd, /proc/self/fd paths. */
    o = open(masked, how);
    snprintf(p, sizeof p, "/proc/self/fd/%d", o);
    grab("reopen_masked", open(p, O_RDONLY));
    int d = open(masked_dir, how | O_DIRECTORY);
    say("handle_dir", d);
    grab("openat_dirfd_masked", openat(d, ".env", O_RDONLY));
    snprintf(p, sizeof p, "/proc/self/fd/%d/.env", d);
    grab("procfd_dir_masked", open(p, O_RDONLY));
    snprintf(p, sizeof p, "/proc/self/fd/%d/../sub/.env", d);
    grab("procfd_dotdot_masked", open(p, O_RDONLY));
    grab("direct_masked", open(masked, O_RDONLY));
    return 0;
}
"#;

#[test]
fn proc_self_fd_reopen_does_not_gain_access() {
    // Landlock alone with O_PATH and with read-only handles; trapped opens with read-only
    // handles (O_PATH opens are broken there, see the test after this one).
    for (trap, how) in [(false, "opath"), (false, "rdonly"), (true, "rdonly")] {
        let ws = Workspace::new("reopen");
        let b = base(&ws);
        ws.write("sub/.env", SECRET);
        let own = ws.write("own.txt", "own\n");
        let ro_dir = b.join("ro");
        std::fs::create_dir_all(&ro_dir).expect("ro dir");
        let ro = ro_dir.join("config.txt");
        std::fs::write(&ro, "original\n").expect("ro file");
        let bin = cc(&ws.dir, "reopen", REOPEN_C, &[]);
        let policy = narrow(&[&ro_dir], if trap { TRAP_OPENS } else { "" });
        let extra: &[&str] = if trap { &["--default-allow"] } else { &[] };
        let r = supervise(
            &ws,
            &policy,
            extra,
            &[
                s(&bin),
                s(&ro),
                s(&ws.path("sub/.env")),
                s(&ws.path("sub")),
                s(&own),
                s(&ws.path("leak")),
                how,
            ],
        );
        let mode = format!(
            "{} with {how} handles",
            if trap {
                "trapped opens"
            } else {
                "kernel only (the view, Landlock)"
            }
        );
        for control in ["reopen_own_for_write", "read_ro", "handle_ro", "handle_dir"] {
            assert_eq!(
                field(&r.stdout, control),
                Some("ok"),
                "{mode}: control {control}\n{}",
                show(&r)
            );
        }
        assert_eq!(
            std::fs::read_to_string(&own).unwrap(),
            "own\nPWNED\n",
            "{mode}: control write\n{}",
            show(&r)
        );
        assert_eq!(
            std::fs::read_to_string(&ro).unwrap(),
            "original\n",
            "{mode}: the read-only file was written\n{}",
            show(&r)
        );
        assert!(
            !ws.read("leak").unwrap_or_default().contains(SECRET),
            "{mode}: the masked secret was read\n{}",
            show(&r)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 12. Unix sockets: path sockets outside the write trees, abstract sockets of the host
// ---------------------------------------------------------------------------------------------

/// Connect (stream), send (dgram) or bind (bind) unix socket paths given on the command line.
const UNIX_CLIENT_PY: &str = r#"
import socket, sys
for kind, path in zip(sys.argv[1::2], sys.argv[2::2]):
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        if kind == "stream":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            s.sendall(b"hello")
        elif kind == "dgram":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.sendto(b"hello", path)
        else:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(path)
        print(f"{kind}:{path!r}=ok")
    except OSError as e:
        print(f"{kind}:{path!r}={e.errno}")
"#;

fn accepted(l: &UnixListener) -> bool {
    l.set_nonblocking(true).expect("nonblocking");
    l.accept().is_ok()
}

fn received(d: &UnixDatagram) -> bool {
    d.set_nonblocking(true).expect("nonblocking");
    d.recv(&mut [0u8; 16]).is_ok()
}

#[test]
fn unix_sockets_outside_the_write_trees_are_not_reached() {
    let ws = Workspace::new("unix-path");
    let b = base(&ws);
    let inside = UnixListener::bind(ws.path("inside.sock")).expect("bind inside");
    let outside = UnixListener::bind(b.join("outside.sock")).expect("bind outside");
    let outside_dgram = UnixDatagram::bind(b.join("outside.dgram")).expect("bind outside dgram");
    std::os::unix::fs::symlink(b.join("outside.sock"), ws.path("link.sock")).expect("symlink");
    // The socket's directory is readable (it must not matter: connecting is writing). A socket
    // of a program outside the sandbox needs a rule naming it, even in a writable tree.
    let policy = narrow(
        &[&b],
        &format!(
            "[[rule]]\ndecision = \"allow\"\nfile = \"{}\"\naccess = [\"write\"]\n",
            ws.path("inside.sock").display()
        ),
    );
    let r = supervise(
        &ws,
        &policy,
        &[],
        &[
            PYTHON,
            "-c",
            UNIX_CLIENT_PY,
            "stream",
            s(&ws.path("inside.sock")),
            "stream",
            s(&b.join("outside.sock")),
            "stream",
            "link.sock",
            "stream",
            "../outside.sock",
            "dgram",
            s(&b.join("outside.dgram")),
            "bind",
            s(&ws.path("bound-inside.sock")),
            "bind",
            s(&b.join("bound-outside.sock")),
        ],
    );
    assert!(
        ws.path("bound-inside.sock").exists(),
        "binding a socket in the workspace must work\n{}",
        show(&r)
    );
    assert!(
        !b.join("bound-outside.sock").exists(),
        "a socket was bound outside the write trees\n{}",
        show(&r)
    );
    assert!(
        accepted(&inside),
        "the socket in the workspace must be reachable\n{}",
        show(&r)
    );
    assert!(
        !accepted(&outside),
        "a socket outside the write trees was reached\n{}",
        show(&r)
    );
    assert!(
        !received(&outside_dgram),
        "a datagram reached a socket outside the write trees\n{}",
        show(&r)
    );
}

/// An abstract socket address outside the sandbox (the network namespace is the host's).
fn abstract_listener(name: &str) -> UnixListener {
    use std::os::linux::net::SocketAddrExt;
    let addr =
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
    UnixListener::bind_addr(&addr).expect("bind abstract")
}

#[test]
fn abstract_unix_sockets_of_the_host_are_not_reached() {
    let ws = Workspace::new("unix-abstract");
    let name = base(&ws)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let host = abstract_listener(&name);
    // Control: an abstract socket the agent creates inside the sandbox works.
    let script = format!(
        "{UNIX_CLIENT_PY}\nimport threading\n\
         srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
         srv.bind('\\0{name}-inside'); srv.listen(1)\n\
         c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c.connect('\\0{name}-inside')\n\
         print('inside=ok' if srv.accept() else 'inside=no')\n"
    );
    let at = format!("@{name}");
    let r = supervise(
        &ws,
        "preset:sandboxed",
        &[],
        &[PYTHON, "-c", &script, "stream", &at],
    );
    assert_eq!(
        field(&r.stdout, "inside"),
        Some("ok"),
        "an abstract socket inside must work\n{}",
        show(&r)
    );
    assert!(
        !accepted(&host),
        "the agent reached an abstract socket of the host\n{}",
        show(&r)
    );
}

#[test]
fn an_abstract_name_that_prints_alike_does_not_vouch_for_a_host_socket() {
    // /proc/net/unix prints every NUL of an abstract name as '@': the host's "\0x@y" and the
    // agent's "\0x\0y" are both "@x@y" there.
    let ws = Workspace::new("unix-abstract-alias");
    let unique = base(&ws)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let host = abstract_listener(&format!("{unique}@svc"));
    let script = format!(
        "{UNIX_CLIENT_PY}\n\
         srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
         srv.bind('\\0{unique}\\0svc'); srv.listen(1)\n\
         c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c.connect('\\0{unique}\\0svc')\n\
         print('inside=ok' if srv.accept() else 'inside=no')\n\
         h = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
         try:\n    h.connect('\\0{unique}@svc'); print('host=ok')\n\
         except OSError as e:\n    print(f'host={{e.errno}}')\n"
    );
    let r = supervise(&ws, "preset:sandboxed", &[], &[PYTHON, "-c", &script]);
    assert_eq!(
        field(&r.stdout, "inside"),
        Some("ok"),
        "an abstract socket inside must work\n{}",
        show(&r)
    );
    assert!(
        !accepted(&host),
        "the agent reached a host abstract socket through a name that prints alike\n{}",
        show(&r)
    );
}

// ---------------------------------------------------------------------------------------------
// Destinations the supervisor waves through as "not network"
// ---------------------------------------------------------------------------------------------

/// sendto/sendmsg to a UDP port with `sin_family = AF_UNSPEC`: IPv4 UDP treats AF_UNSPEC
/// like AF_INET (an old BSD compatibility rule) and sends to sin_addr:sin_port.
const UNSPEC_C: &str = r#"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static void say(const char *what, long r) {
    printf("%s=%s\n", what, r < 0 ? strerrorname_np(errno) : "ok");
}

int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    say("allowed_sendto", sendto(s, "ok", 2, 0, (struct sockaddr *)&a, sizeof a));
    a.sin_port = htons(atoi(argv[2]));
    say("denied_sendto", sendto(s, "inet", 4, 0, (struct sockaddr *)&a, sizeof a));
    a.sin_family = AF_UNSPEC;
    say("unspec_sendto", sendto(s, "unspec", 6, 0, (struct sockaddr *)&a, sizeof a));
    struct iovec iov = { (void *)"unspec-msg", 10 };
    struct msghdr m = { .msg_name = &a, .msg_namelen = sizeof a, .msg_iov = &iov, .msg_iovlen = 1 };
    say("unspec_sendmsg", sendmsg(s, &m, 0));
    struct mmsghdr mm = { .msg_hdr = m };
    say("unspec_sendmmsg", sendmmsg(s, &mm, 1, 0));
    return 0;
}
"#;

#[test]
fn udp_send_with_af_unspec_does_not_reach_a_denied_address() {
    let ws = Workspace::new("unspec");
    let (allowed, denied) = (udp(), udp());
    let bin = cc(&ws.dir, "unspec", UNSPEC_C, &[]);
    let policy = net_policy(port(&allowed), port(&denied));
    let r = supervise(
        &ws,
        &policy,
        &[],
        &[
            s(&bin),
            &port(&allowed).to_string(),
            &port(&denied).to_string(),
        ],
    );
    assert_eq!(
        field(&r.stdout, "allowed_sendto"),
        Some("ok"),
        "{}",
        show(&r)
    );
    assert_eq!(
        datagrams(&allowed),
        1,
        "the allowed datagram must arrive\n{}",
        show(&r)
    );
    assert_eq!(
        field(&r.stdout, "denied_sendto"),
        Some("EPERM"),
        "{}",
        show(&r)
    );
    assert_eq!(
        datagrams(&denied),
        0,
        "a datagram reached the denied port\n{}",
        show(&r)
    );
}

/// NETLINK_USERSOCK (2): unicast between user-space sockets, by port id, no capability needed.
const NETLINK_PY: &str = r#"
import socket, sys
def msg(text):
    body = text.encode()
    return (16 + len(body)).to_bytes(4, "little") + b"\x10\x00\x00\x00" + bytes(8) + body
inside = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 2)
inside.bind((0, 0))
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 2)
s.sendto(msg("inside"), (inside.getsockname()[0], 0))
print("inside=" + ("ok" if inside.recv(64).endswith(b"inside") else "no"))
try:
    s.sendto(msg("escaped"), (int(sys.argv[1]), 0))
    print("host=sent")
except OSError as e:
    print(f"host={e.errno}")
"#;

#[test]
fn netlink_does_not_reach_host_processes() {
    let ws = Workspace::new("netlink");
    // SAFETY: plain socket/bind/recv calls on an fd we own; every pointer is to a local of the
    // right size.
    let (host, port_id) = unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            2,
        );
        assert!(
            fd >= 0,
            "netlink socket: {}",
            std::io::Error::last_os_error()
        );
        let host = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        let rc = libc::bind(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        );
        assert_eq!(rc, 0, "netlink bind: {}", std::io::Error::last_os_error());
        let mut len = std::mem::size_of::<libc::sockaddr_nl>() as u32;
        libc::getsockname(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut len);
        (host, addr.nl_pid)
    };
    let policy = sandboxed("[[rule]]\ndecision = \"deny\"\nnetwork = \"*\"\n");
    let r = supervise(
        &ws,
        &policy,
        &[],
        &[PYTHON, "-c", NETLINK_PY, &port_id.to_string()],
    );
    assert_eq!(
        field(&r.stdout, "inside"),
        Some("ok"),
        "netlink inside the sandbox must work\n{}",
        show(&r)
    );
    let mut buf = [0u8; 64];
    // SAFETY: recv into a local buffer of the given length on our own non-blocking socket.
    let got = unsafe {
        libc::recv(
            host.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            0,
        )
    };
    assert!(
        got < 0,
        "a netlink message from the agent reached a host process\n{}",
        show(&r)
    );
}

// ---------------------------------------------------------------------------------------------
// Terminals of the host
// ---------------------------------------------------------------------------------------------

#[test]
fn other_terminals_of_the_host_cannot_be_read_or_written() {
    let ws = Workspace::new("pty");
    // A terminal of another session on the host: someone types a password into it.
    let (mut master, slave) = host_pty();
    let slave_name = std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd()))
        .expect("slave name")
        .display()
        .to_string();
    std::io::Write::write_all(&mut master, format!("{SECRET}\n").as_bytes()).expect("type");
    let script = r#"
import os, sys
try:
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        open("leak", "ab").write(os.read(fd, 256))
    except OSError:
        pass
    os.write(fd, b"INJECTED\n")
    print("other=opened")
except OSError as e:
    print(f"other={e.errno}")
"#;
    let r = supervise(
        &ws,
        "preset:sandboxed",
        &[],
        &[PYTHON, "-c", script, &slave_name],
    );
    // SAFETY: fcntl on our own fds.
    unsafe {
        libc::fcntl(master.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
        libc::fcntl(slave.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
    }
    let (mut shown, mut typed) = (Vec::new(), Vec::new());
    let _ = master.read_to_end(&mut shown);
    let _ = (&slave).read_to_end(&mut typed);
    assert!(
        !ws.read("leak").unwrap_or_default().contains(SECRET),
        "the agent read what was typed into another terminal\n{}",
        show(&r)
    );
    // The setup was live: the typed line is still waiting for its shell.
    assert!(
        String::from_utf8_lossy(&typed).contains(SECRET),
        "the typed input was consumed\n{}",
        show(&r)
    );
    assert!(
        !String::from_utf8_lossy(&shown).contains("INJECTED"),
        "the agent wrote to another terminal\n{}",
        show(&r)
    );
}

// ---------------------------------------------------------------------------------------------
// Trapped opens (file `ask` rules): legitimate uses that must keep working
// ---------------------------------------------------------------------------------------------

#[test]
fn trapped_open_of_a_fifo_does_not_wedge_the_supervisor() {
    let ws = Workspace::new("fifo");
    let policy = ws.policy(&sandboxed(TRAP_OPENS));
    let r = ws.run(
        &["--headless", "--default-allow", "--policy", s(&policy)],
        &[
            "/bin/sh",
            "-c",
            "mkfifo p; (echo through-the-fifo > p &); cat p",
        ],
        Duration::from_secs(10),
    );
    assert!(!r.timed_out, "the session hung on a FIFO\n{}", show(&r));
    assert!(r.stdout.contains("through-the-fifo"), "{}", show(&r));
}

#[test]
fn trapped_opens_keep_fd_paths_working() {
    let ws = Workspace::new("trapped-fd-paths");
    let op = cc(
        &ws.dir,
        "opath",
        "#define _GNU_SOURCE\n#include <fcntl.h>\n#include <stdio.h>\n\
         int main(void) { printf(\"opath=%s\\n\", open(\"/etc/hostname\", O_PATH) >= 0 ? \"ok\" : \"failed\"); return 0; }\n",
        &[],
    );
    let script = format!(
        "{op}; echo stdout=ok > /dev/stdout; cat <(echo procsub=ok); \
         echo cwd=ok > /proc/self/cwd/cwd.txt && cat cwd.txt; cat /dev/fd/0 < /etc/hostname > /dev/null && echo devfd=ok",
        op = op.display()
    );
    let r = supervise(
        &ws,
        &sandboxed(TRAP_OPENS),
        &["--default-allow"],
        &["/bin/bash", "-c", &script],
    );
    for what in ["opath", "stdout", "procsub", "cwd", "devfd"] {
        assert_eq!(field(&r.stdout, what), Some("ok"), "{what}\n{}", show(&r));
    }
}

// ---------------------------------------------------------------------------------------------
// Masks are mounts made at start: what the host does to the masked paths afterwards
// ---------------------------------------------------------------------------------------------

/// The agent: say it started, then read PATHS every 50 ms for ~1.5 s, keeping what it gets.
const POLL_READ_SH: &str = "touch started; i=0; while [ $i -lt 30 ]; do \
     for f in \"$@\"; do cat \"$f\" >> leak 2>/dev/null; done; sleep 0.05; i=$((i+1)); done; true";

/// Run the polling reader on `paths` and call `meanwhile` (outside the sandbox) once it runs.
fn poll_read_while(ws: &Workspace, paths: &[&str], meanwhile: impl FnOnce()) -> Result_ {
    std::thread::scope(|scope| {
        let agent = scope.spawn(|| {
            let mut cmd = vec!["/bin/sh", "-c", POLL_READ_SH, "poll"];
            cmd.extend_from_slice(paths);
            supervise(ws, "preset:sandboxed", &[], &cmd)
        });
        let t0 = std::time::Instant::now();
        while !ws.path("started").exists() && t0.elapsed() < LIMIT {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        meanwhile();
        agent.join().expect("agent thread")
    })
}

#[test]
#[ignore = "KNOWN LIMITATION (mount masks cover the inodes present at start; needs the BPF LSM file_open hook of issue 3): a masked file that the host replaces by rename loses its mask"]
fn masked_file_replaced_by_the_host_stays_hidden() {
    let ws = Workspace::new("mask-replaced");
    ws.write(".env", "OLD-SECRET\n");
    ws.write("public.txt", "public-content\n");
    let r = poll_read_while(&ws, &[".env", "public.txt"], || {
        // How editors, `sed -i` and most config tools save a file.
        std::fs::write(ws.path(".env.new"), format!("{SECRET}\n")).expect("write");
        std::fs::rename(ws.path(".env.new"), ws.path(".env")).expect("rename");
    });
    let leak = ws.read("leak").unwrap_or_default();
    assert!(
        leak.contains("public-content"),
        "the agent must read its files\n{}",
        show(&r)
    );
    assert!(
        !leak.contains("OLD-SECRET"),
        "the mask did not hide the file\n{}",
        show(&r)
    );
    assert!(
        !leak.contains(SECRET),
        "the agent read the masked file after the host replaced it\n{}",
        show(&r)
    );
}

#[test]
#[ignore = "KNOWN LIMITATION (mount masks cover the files present at start; needs the BPF LSM file_open hook of issue 3): a denied file that the host creates during the session is readable"]
fn secret_created_by_the_host_during_the_session_stays_hidden() {
    let ws = Workspace::new("mask-late");
    ws.write("public.txt", "public-content\n");
    std::fs::create_dir_all(ws.path("app")).expect("mkdir");
    let r = poll_read_while(&ws, &["app/.env", "public.txt"], || {
        // e.g. `git checkout` of a branch, or the user creating the file.
        std::fs::write(ws.path("app/.env"), format!("{SECRET}\n")).expect("write");
    });
    let leak = ws.read("leak").unwrap_or_default();
    assert!(
        leak.contains("public-content"),
        "the agent must read its files\n{}",
        show(&r)
    );
    assert!(
        !leak.contains(SECRET),
        "the agent read a .env created during the session\n{}",
        show(&r)
    );
}

// ---------------------------------------------------------------------------------------------
// Other spellings of a denied address
// ---------------------------------------------------------------------------------------------

const CONNECT_PY: &str = r#"
import socket, sys
port = int(sys.argv[1])
for host in sys.argv[2:]:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.connect((host, port))
        print(f"{host}=ok")
    except OSError as e:
        print(f"{host}={e.errno}")
"#;

#[test]
fn ipv4_mapped_ipv6_does_not_reach_a_denied_address() {
    let ws = Workspace::new("mapped");
    let denied = Listener::new();
    let allowed = Listener::new();
    let policy = net_policy(allowed.port, denied.port);
    let r = supervise(
        &ws,
        &policy,
        &[],
        &[
            PYTHON,
            "-c",
            &format!(
                "{CONNECT_PY}\nsocket.create_connection(('127.0.0.1', {}))\nprint('allowed=ok')",
                allowed.port
            ),
            &denied.port.to_string(),
            "127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:7f00:1",
        ],
    );
    assert_eq!(field(&r.stdout, "allowed"), Some("ok"), "{}", show(&r));
    assert!(
        allowed.was_reached(),
        "the allowed listener must be reached\n{}",
        show(&r)
    );
    assert!(
        !denied.was_reached(),
        "the denied listener was reached\n{}",
        show(&r)
    );
}

#[test]
fn unspecified_address_does_not_reach_a_denied_loopback_port() {
    // "Allow by default, but not that local service."
    let ws = Workspace::new("unspecified");
    let (allowed, denied) = (Listener::new(), Listener::new());
    let policy = format!(
        "version = 1\nextends = \"sandboxed\"\ndefault = \"allow\"\n\
         [[rule]]\ndecision = \"deny\"\nnetwork = \"127.0.0.1:{}\"\n",
        denied.port
    );
    let script = format!(
        "{CONNECT_PY}\nsocket.create_connection(('127.0.0.1', {}))\nprint('allowed=ok')",
        allowed.port
    );
    let r = supervise(
        &ws,
        &policy,
        &[],
        &[
            PYTHON,
            "-c",
            &script,
            &denied.port.to_string(),
            "127.0.0.1",
            "0.0.0.0",
            "::ffff:0.0.0.0",
        ],
    );
    assert_eq!(field(&r.stdout, "allowed"), Some("ok"), "{}", show(&r));
    assert!(
        allowed.was_reached(),
        "the allowed listener must be reached\n{}",
        show(&r)
    );
    assert_eq!(field(&r.stdout, "127.0.0.1"), Some("111"), "{}", show(&r));
    assert!(
        !denied.was_reached(),
        "the denied listener was reached through the unspecified address\n{}",
        show(&r)
    );
}

#[test]
fn host_unix_sockets_in_tmp_are_not_reached() {
    // tmux keeps its server at /tmp/tmux-UID/default, `ssh-agent` at /tmp/ssh-XXXX/agent.PID:
    // whoever connects can run commands outside the sandbox, or sign with the user's keys.
    let ws = Workspace::new("tmp-socket");
    let host_dir = TmpDir::new("tmux");
    let server = UnixListener::bind(host_dir.path().join("default")).expect("bind");
    let own = format!("{}/own.sock", ws.dir.display());
    let script = format!(
        "{UNIX_CLIENT_PY}\nsrv = socket.socket(socket.AF_UNIX); srv.bind('{own}'); srv.listen(1)\n\
         c = socket.socket(socket.AF_UNIX); c.connect('{own}'); print('own=ok')\n"
    );
    let host = host_dir.path().join("default");
    let r = supervise(
        &ws,
        "preset:sandboxed",
        &[],
        &[PYTHON, "-c", &script, "stream", s(&host)],
    );
    assert_eq!(
        field(&r.stdout, "own"),
        Some("ok"),
        "the agent's own sockets must work\n{}",
        show(&r)
    );
    assert!(
        !accepted(&server),
        "the agent reached a host program's unix socket in /tmp\n{}",
        show(&r)
    );
}

// ---------------------------------------------------------------------------------------------
// The policy that governs the next session
// ---------------------------------------------------------------------------------------------

#[test]
fn agent_cannot_choose_the_policy_of_its_next_session() {
    let ws = Workspace::new("plant-policy");
    ws.write(".env", format!("{SECRET}\n").as_str());
    ws.write("public.txt", "public-content\n");
    // Session 1, under the sandboxed preset: the secret is hidden; plant a policy.
    let plant = "mkdir -p .agent-supervisor && \
                 printf 'version = 1\\nextends = \"unrestricted\"\\n' > .agent-supervisor/policy.toml; \
                 cat .env public.txt >> leak 2>/dev/null; true";
    let r1 = supervise(&ws, "preset:sandboxed", &[], &["/bin/sh", "-c", plant]);
    assert!(
        ws.read("leak")
            .unwrap_or_default()
            .contains("public-content"),
        "{}",
        show(&r1)
    );
    assert!(
        !ws.read("leak").unwrap_or_default().contains(SECRET),
        "the mask must hide the secret in session 1\n{}",
        show(&r1)
    );
    // Session 2: the user runs the agent again in the same workspace, with the default lookup.
    let r2 = ws.run(
        &["--headless"],
        &["/bin/sh", "-c", "cat .env >> leak 2>/dev/null; true"],
        LIMIT,
    );
    assert!(!r2.timed_out, "{}", show(&r2));
    assert!(
        !ws.read("leak").unwrap_or_default().contains(SECRET),
        "the agent's planted policy governed the next session\n{}",
        show(&r2)
    );
}

// ---------------------------------------------------------------------------------------------
// Terminal input injection into the user's terminal
// ---------------------------------------------------------------------------------------------

/// A pseudo-terminal pair made outside the sandbox: (master, slave).
fn host_pty() -> (std::fs::File, std::fs::File) {
    let (mut m, mut sl) = (-1, -1);
    // SAFETY: openpty writes two fds; the name, termios and winsize arguments may be NULL.
    let rc = unsafe {
        libc::openpty(
            &mut m,
            &mut sl,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned these two fds to us; nothing else owns them.
    unsafe {
        (
            std::fs::File::from_raw_fd(m),
            std::fs::File::from_raw_fd(sl),
        )
    }
}

#[test]
fn tiocsti_cannot_inject_into_the_users_terminal() {
    // The user runs the supervisor from a terminal (its controlling tty, the agent's stdin):
    // characters pushed into its input queue would run in the user's shell after the agent.
    let ws = Workspace::new("tiocsti");
    let (_master, slave) = host_pty();
    let script = r#"
import fcntl, os, struct, termios
print("tty=" + ("ok" if os.isatty(0) else "no"))
fcntl.ioctl(0, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
print("winsize=ok")
try:
    for c in b"echo PWNED\n":
        fcntl.ioctl(0, termios.TIOCSTI, bytes([c]))
    print("tiocsti=ok")
except OSError as e:
    print(f"tiocsti={e.errno}")
"#;
    let mut c = common::supervisor_command();
    c.args([
        "run",
        "-q",
        "--headless",
        "--policy",
        "preset:sandboxed",
        "--audit",
    ])
    .arg(&ws.audit)
    .args(["--", PYTHON, "-c", script])
    .current_dir(&ws.dir)
    .no_ci()
    .stdin(slave.try_clone().expect("dup slave"));
    // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, || {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    let r = common::run_with_timeout(c, LIMIT);
    assert!(!r.timed_out, "{}", show(&r));
    assert_eq!(field(&r.stdout, "tty"), Some("ok"), "{}", show(&r));
    assert_eq!(
        field(&r.stdout, "winsize"),
        Some("ok"),
        "other terminal ioctls must work\n{}",
        show(&r)
    );
    assert_eq!(
        field(&r.stdout, "tiocsti"),
        Some("1"),
        "TIOCSTI must fail with EPERM\n{}",
        show(&r)
    );
    // What the user's shell would read next from the terminal.
    // SAFETY: fcntl on our own fd.
    unsafe { libc::fcntl(slave.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut pending = Vec::new();
    let _ = (&slave).read_to_end(&mut pending);
    assert!(
        !String::from_utf8_lossy(&pending).contains("PWNED"),
        "the agent injected input into the user's terminal\n{}",
        show(&r)
    );
}

#[test]
fn the_agent_can_open_pseudo_terminals() {
    let ws = Workspace::new("own-pty");
    let script = "import os\na, b = os.openpty()\nos.write(b, b'own\\n')\n\
                  print('own=' + ('ok' if os.read(a, 16).startswith(b'own') else 'no'))\n";
    let r = supervise(&ws, "preset:sandboxed", &[], &[PYTHON, "-c", script]);
    assert_eq!(field(&r.stdout, "own"), Some("ok"), "{}", show(&r));
}

// ---------------------------------------------------------------------------------------------
// Outliving the session
// ---------------------------------------------------------------------------------------------

#[test]
fn a_daemonized_grandchild_does_not_outlive_the_session() {
    let ws = Workspace::new("daemon");
    let marker = ws.path("daemon-ran");
    // Detach the usual ways, then let the agent exit at once.
    let script = format!(
        "touch control-ran; \
         setsid sh -c 'sleep 1; touch {m}' </dev/null >/dev/null 2>&1 & \
         nohup sh -c 'trap \"\" HUP TERM; sleep 1; touch {m}' </dev/null >/dev/null 2>&1 & \
         exit 0",
        m = marker.display()
    );
    let r = supervise(&ws, "preset:sandboxed", &[], &["/bin/sh", "-c", &script]);
    assert_eq!(r.code, Some(0), "{}", show(&r));
    assert!(ws.path("control-ran").exists(), "{}", show(&r));
    std::thread::sleep(Duration::from_millis(1800));
    assert!(
        !marker.exists(),
        "a process of the agent kept running after the session ended\n{}",
        show(&r)
    );
}

#[test]
fn the_agent_dies_with_its_supervisor() {
    // A supervisor killed outright (OOM killer, kill -9) must not leave a free agent behind.
    let ws = Workspace::new("orphan");
    let marker = ws.path("orphan-ran");
    let script = format!(
        "touch started; trap '' HUP TERM INT; sleep 1.5; touch {}",
        marker.display()
    );
    let mut c = common::supervisor_command();
    c.args([
        "run",
        "-q",
        "--headless",
        "--policy",
        "preset:sandboxed",
        "--audit",
    ])
    .arg(&ws.audit)
    .args(["--", "/bin/sh", "-c", &script])
    .current_dir(&ws.dir)
    .no_ci()
    .stdin(std::process::Stdio::null());
    let mut supervisor = c.spawn().expect("spawn agent-supervisor");
    let _guard = KillOnDrop(supervisor.id());
    let t0 = std::time::Instant::now();
    while !ws.path("started").exists() && t0.elapsed() < LIMIT {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(ws.path("started").exists(), "the agent must start");
    supervisor.kill().expect("SIGKILL the supervisor");
    let _ = supervisor.wait();
    std::thread::sleep(Duration::from_millis(2000));
    assert!(
        !marker.exists(),
        "the agent kept running after its supervisor was killed"
    );
}

#[test]
fn agent_cannot_plant_a_policy_for_a_session_started_in_a_subdirectory() {
    let ws = Workspace::new("plant-policy-sub");
    ws.write("frontend/.env", format!("{SECRET}\n").as_str());
    ws.write("frontend/public.txt", "public-content\n");
    // Session 1, in the repository root: plant a policy in a subproject.
    let plant = "mkdir -p frontend/.agent-supervisor && \
                 printf 'version = 1\\nextends = \"unrestricted\"\\n' > frontend/.agent-supervisor/policy.toml; \
                 cat frontend/.env >> leak 2>/dev/null; true";
    let r1 = supervise(&ws, "preset:sandboxed", &[], &["/bin/sh", "-c", plant]);
    assert!(
        !ws.read("leak").unwrap_or_default().contains(SECRET),
        "the mask must hide the secret in session 1\n{}",
        show(&r1)
    );
    // Session 2: the user starts the agent in the subproject, with the default policy lookup.
    // The planted policy was never trusted: the supervisor refuses to start under it and says
    // so; with an explicit policy the session runs and the mask holds.
    let state = ws.dir.parent().expect("base").join("state");
    let session2 = |extra: &[&str]| {
        let mut c = common::supervisor_command();
        c.args(["run", "-q", "--headless", "--audit"])
            .arg(&ws.audit)
            .args(extra)
            .args([
                "--",
                "/bin/sh",
                "-c",
                "cat .env public.txt >> ../leak 2>/dev/null; true",
            ])
            .current_dir(ws.path("frontend"))
            .env("AGENT_SUPERVISOR_STATE_DIR", &state)
            .no_ci()
            .stdin(std::process::Stdio::null());
        common::run_with_timeout(c, LIMIT)
    };
    let r2 = session2(&[]);
    assert!(!r2.timed_out, "{}", show(&r2));
    assert_eq!(
        r2.code,
        Some(125),
        "an untrusted planted policy must be refused\n{}",
        show(&r2)
    );
    assert!(r2.stderr.contains("not trusted"), "{}", show(&r2));
    assert!(
        !ws.read("leak").unwrap_or_default().contains(SECRET),
        "the planted policy governed the next session\n{}",
        show(&r2)
    );
    let r3 = session2(&["--policy", "preset:sandboxed"]);
    let leak = ws.read("leak").unwrap_or_default();
    assert!(
        leak.contains("public-content"),
        "session 2 must run with an explicit policy\n{}",
        show(&r3)
    );
    assert!(
        !leak.contains(SECRET),
        "the secret leaked in session 2\n{}",
        show(&r3)
    );
}

#[test]
fn dynamic_loader_option_values_are_not_taken_for_the_program() {
    let ws = Workspace::new("ldso-options");
    let marker = ws.path("evil-ran");
    payload(&ws.dir, "evil", &marker);
    let script = format!(
        "{LDSO} /usr/bin/touch control-ran; {LDSO} ./evil; {LDSO} --inhibit-rpath /usr/bin/true ./evil; true"
    );
    let r = supervise(&ws, "preset:sandboxed", &[], &["/bin/sh", "-c", &script]);
    assert!(
        ws.path("control-ran").exists(),
        "`ld.so /usr/bin/touch` must work\n{}",
        show(&r)
    );
    assert!(
        !marker.exists(),
        "ld.so ran the denied workspace program named after an option's value\n{}",
        show(&r)
    );
}

/// Poison the supervisor's record of "sockets the session bound itself": one thread binds a
/// unix socket at NAME again and again; another, as soon as NAME appears, renames a hard link
/// of the HOST socket over it (before the supervisor looks up what it just bound); a third
/// keeps trying to connect to HOST.
const OWN_SOCKET_RACE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static const char *host, *name, *tmp;
static volatile int stop;
static long binds, connects_ok;

static struct sockaddr_un addr(const char *p) {
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strncpy(a.sun_path, p, sizeof a.sun_path - 1);
    return a;
}

static void *binder(void *u) {
    struct sockaddr_un a = addr(name);
    while (!stop) {
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (bind(s, (struct sockaddr *)&a, sizeof a) == 0) binds++;
        close(s);
    }
    return u;
}

static void *swapper(void *u) {
    unlink(tmp);
    link(host, tmp);
    while (!stop) {
        if (access(name, F_OK) == 0) {
            rename(tmp, name);
            usleep(100);
            unlink(name);
            link(host, tmp);
        }
    }
    return u;
}

static void *prober(void *u) {
    struct sockaddr_un a = addr(host);
    while (!stop) {
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
            write(s, "PWNED", 5);
            connects_ok++;
            stop = 1;
        }
        close(s);
        usleep(1000);
    }
    return u;
}

int main(int argc, char **argv) {
    host = argv[1]; name = argv[2]; tmp = argv[3];
    pthread_t t[3];
    pthread_create(&t[0], 0, binder, 0);
    pthread_create(&t[1], 0, swapper, 0);
    pthread_create(&t[2], 0, prober, 0);
    usleep(atoi(argv[4]) * 1000);
    stop = 1;
    for (int i = 0; i < 3; i++) pthread_join(t[i], 0);
    printf("binds=%ld escaped=%ld\n", binds, connects_ok);
    return 0;
}
"#;

#[test]
fn racing_a_hard_link_does_not_make_a_host_socket_the_sessions_own() {
    let ws = Workspace::new("own-socket-race");
    // The host program's socket, and a directory of the agent's: both in {tmp}, so a hard link
    // between them keeps the same Landlock rights (into the workspace, with exec, it would not).
    let host_dir = TmpDir::new("host-socket");
    let agent_dir = TmpDir::new("agent-socket");
    let host = host_dir.path().join("default");
    let server = UnixListener::bind(&host).expect("bind host socket");
    let bin = cc(&ws.dir, "sockrace", OWN_SOCKET_RACE_C, &["-pthread"]);
    let r = supervise(
        &ws,
        "preset:sandboxed",
        &[],
        &[
            s(&bin),
            s(&host),
            s(&agent_dir.path().join("a.sock")),
            s(&agent_dir.path().join("tmp.lnk")),
            RACE_MS,
        ],
    );
    assert_eq!(r.code, Some(0), "{}", show(&r));
    assert!(
        count(&r.stdout, "binds") > 0,
        "binding its own sockets must work\n{}",
        show(&r)
    );
    assert!(
        audited(&ws, "connect", "destination", s(&host), "deny") > 0,
        "the host socket must be refused at first\n{}",
        show(&r)
    );
    assert!(
        !accepted(&server),
        "the agent reached the host program's socket\n{}",
        show(&r)
    );
}
