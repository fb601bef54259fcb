//! The in-kernel exec backstop (`tp_btf/sched_process_exec`) and the process event stream
//! (`sched_process_{exec,fork,exit}` → ring buffer → audit log), against the real kernel.
//!
//! 1. The hook alone: a test cgroup gets its own copy of the programs
//!    (`agent_supervisor::ebpf::{Session, process}`), a child is moved in and execs a program
//!    that would write a marker. Without an approval the kernel kills it (SIGKILL, no marker);
//!    with the approval for exactly that (thread, file) it runs and the approval is consumed;
//!    an approval for another file or another thread does not help (a non-leader thread's
//!    exec is keyed by that thread's id); processes outside the cgroup are unaffected. A
//!    ring buffer nobody reads overflows and the loss is counted.
//! 2. End to end through `agent-supervisor run` (both guards on): ordinary sessions work and
//!    say nothing about the exec backstop being off; a thread flipping the exec path between
//!    an allowed and a denied program never gets the denied one to run.
//! 3. The events in the audit log: right session, the pids and programs the agent really
//!    ran, `ebpf_events_lost` at session end.
//!
//! Needs root, cgroup v2 and kernel BTF; otherwise every test says why it is skipped.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use agent_supervisor::cgroup::{cgroup2_root, SessionCgroup};
use agent_supervisor::ebpf::process::{self, ExecApprovals, KernelFileId, ProcEvents, ProcRecord};
use agent_supervisor::ebpf::{ExecMode, Session};
use common::{compile_c, is_root, show, Workspace};
use serde_json::Value;

/// Time limit for one child process and for one supervised session.
const LIMIT: Duration = Duration::from_secs(30);
const TOUCH: &str = "/usr/bin/touch";

/// Skip unless this test can create cgroups and load tp_btf programs.
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
        skip_unless!(
            Path::new("/sys/kernel/btf/vmlinux").exists(),
            "no kernel BTF (/sys/kernel/btf/vmlinux): tp_btf programs can't load"
        );
    };
}

/// A fresh cgroup for one hook test (named like a session: 12 hex digits), with the process
/// programs of its own object copy attached. Dropped: programs detached, cgroup removed.
fn hook(mode: ExecMode) -> (Session, Option<ExecApprovals>, ProcEvents) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "e{:05x}{:06x}",
        NEXT.fetch_add(1, Ordering::SeqCst) & 0xf_ffff,
        std::process::id() & 0xff_ffff
    );
    let root = cgroup2_root().expect("cgroup2");
    let cgroup = SessionCgroup::create_under(&root, &name).expect("create the test cgroup");
    let mut session = Session::load(cgroup, mode).expect("load the eBPF object (root)");
    let (approvals, events) =
        process::attach(&mut session).expect("attach the tp_btf process programs");
    (session, approvals, events)
}

/// The kernel's identity of `path` (as the exec tracepoint sees it).
fn kernel_id(path: &Path) -> KernelFileId {
    let f = std::fs::File::open(path).expect("open the program");
    let md = f.metadata().expect("stat");
    process::kernel_file_id(f.as_fd(), std::process::id() as i32, (md.dev(), md.ino()))
}

/// Wait for `child` at most `LIMIT`; killed and reaped on expiry.
fn wait(child: &mut Child) -> ExitStatus {
    common::wait_child(child, LIMIT)
}

/// A shell that waits for a line on stdin, then execs `touch MARKER`. Returns once the shell
/// runs: `spawn` can return before the kernel's exec tracepoint for the shell itself has
/// fired (the error pipe closes earlier in the exec), and that exec must not happen in the
/// test cgroup.
fn waiting_touch(marker: &Path) -> Child {
    let mut child = Command::new("/bin/sh")
        .args(["-c", "echo ready; read go; exec /usr/bin/touch \"$0\""])
        .arg(marker)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read ready");
    assert_eq!(line.trim(), "ready");
    child
}

fn go(child: &mut Child) {
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("write go");
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("as-ebpf-exec-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

// ---------------------------------------------------------------------------------------------
// 1. The hook alone
// ---------------------------------------------------------------------------------------------

#[test]
fn kernel_kills_an_unapproved_exec_and_lets_an_approved_one_run() {
    skip_unless_privileged!();
    let dir = scratch("hook");
    let (session, approvals, events) = hook(ExecMode::Enforce);
    let mut approvals = approvals.expect("enforcing mode hands out the approvals");
    let (tx, rx) = mpsc::channel();
    let reader = events
        .spawn_with(move |r| drop(tx.send(r)))
        .expect("reader");

    // No approval: killed before touch runs.
    let marker = dir.join("unapproved");
    let mut child = waiting_touch(&marker);
    let pid = child.id();
    session
        .cgroup()
        .add_process(pid as i32)
        .expect("move into cgroup");
    go(&mut child);
    let status = wait(&mut child);
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "unapproved exec: {status:?}"
    );
    assert!(!marker.exists(), "touch ran without an approval");

    // An approval for another file doesn't help.
    let marker = dir.join("other-file");
    let mut child = waiting_touch(&marker);
    let pid = child.id();
    session
        .cgroup()
        .add_process(pid as i32)
        .expect("move into cgroup");
    approvals
        .approve(pid, kernel_id(Path::new("/bin/true")))
        .expect("approve");
    go(&mut child);
    assert_eq!(wait(&mut child).signal(), Some(libc::SIGKILL));
    assert!(!marker.exists(), "touch ran on an approval for /bin/true");
    approvals.withdraw(pid, kernel_id(Path::new("/bin/true")));

    // The approval for exactly this (thread, file): it runs, and the approval is consumed.
    let marker = dir.join("approved");
    let mut child = waiting_touch(&marker);
    let pid = child.id();
    session
        .cgroup()
        .add_process(pid as i32)
        .expect("move into cgroup");
    let touch = kernel_id(Path::new(TOUCH));
    approvals.approve(pid, touch).expect("approve");
    go(&mut child);
    let status = wait(&mut child);
    assert!(status.success(), "approved exec: {status:?}");
    assert!(marker.exists(), "the approved touch did not run");
    assert!(
        !approvals.is_pending(pid, touch),
        "the exec did not consume its approval"
    );

    // Outside the cgroup nothing is checked.
    let marker = dir.join("outside");
    let status = Command::new(TOUCH).arg(&marker).status().expect("touch");
    assert!(status.success() && marker.exists(), "outside: {status:?}");

    // The kill was reported.
    let mut killed = Vec::new();
    while let Ok(r) = rx.recv_timeout(Duration::from_millis(200)) {
        if r.killed() {
            killed.push(r);
        }
    }
    assert_eq!(reader.finish(), 0, "events lost");
    assert_eq!(killed.len(), 2, "kill events: {killed:?}");
    let filename = String::from_utf8_lossy(&killed[0].event.filename);
    assert!(
        filename.starts_with("/usr/bin/touch\0"),
        "kill event names the program: {filename}"
    );
    assert_eq!(killed[0].event.cgroup_id, session.cgroup().id());
    drop(session);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A thread that is not the leader prints its tid, waits for a line, then execs argv[1..].
/// By the tracepoint, the exec has gone through de_thread: the task carries the leader's pid,
/// the approval must name the thread that called exec.
const THREAD_EXEC_C: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
static char **args;
static void *run(void *x) {
    (void)x;
    printf("%ld\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    char go[8];
    if (read(0, go, sizeof go) <= 0) _exit(3);
    execv(args[0], args);
    _exit(127);
}
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    args = argv + 1;
    pthread_t t;
    pthread_create(&t, 0, run, 0);
    pthread_join(t, 0);
    return 4;
}
"#;

#[test]
fn a_non_leader_threads_exec_is_approved_by_that_threads_id() {
    skip_unless_privileged!();
    let dir = scratch("thread");
    let Some(bin) = compile_c(&dir, "thread_exec", THREAD_EXEC_C, &["-pthread"]) else {
        panic!("cc could not build thread_exec");
    };
    let (session, approvals, _events) = hook(ExecMode::Enforce);
    let mut approvals = approvals.expect("approvals");
    let touch = kernel_id(Path::new(TOUCH));
    for (approve_thread, name) in [(false, "leader"), (true, "thread")] {
        let marker = dir.join(name);
        let mut child = Command::new(&bin)
            .args([TOUCH, marker.to_str().expect("utf-8")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn thread_exec");
        let pid = child.id();
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the tid");
        let tid: u32 = line.trim().parse().expect("tid");
        assert_ne!(tid, pid, "the exec'ing thread is not the leader");
        session
            .cgroup()
            .add_process(pid as i32)
            .expect("move into cgroup");
        approvals
            .approve(if approve_thread { tid } else { pid }, touch)
            .expect("approve");
        go(&mut child);
        let status = wait(&mut child);
        if approve_thread {
            assert!(status.success(), "approved by thread id: {status:?}");
            assert!(marker.exists());
        } else {
            assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
            assert!(
                !marker.exists(),
                "an approval for the leader let the thread's exec run"
            );
            approvals.withdraw(pid, touch);
        }
    }
    drop(session);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_ring_buffer_counts_what_it_lost() {
    skip_unless_privileged!();
    // Report mode: nothing is killed, every process makes fork + exec + exit events.
    let (session, approvals, events) = hook(ExecMode::Report);
    assert!(approvals.is_none(), "report mode writes no approvals");
    let mut child = Command::new("/bin/sh")
        .args([
            "-c",
            "echo ready; read go; i=0; while [ $i -lt 300 ]; do /bin/true; i=$((i+1)); done",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read ready");
    session
        .cgroup()
        .add_process(child.id() as i32)
        .expect("move into cgroup");
    go(&mut child);
    // 300 fork + exec: seconds on a host, a minute or more in an emulated (TCG) guest.
    assert!(common::wait_child(&mut child, 4 * LIMIT).success());
    // Nobody read while they ran: 900 events of 320 bytes don't fit in 256 KiB (819).
    let (tx, rx) = mpsc::channel();
    let reader = events
        .spawn_with(move |r| drop(tx.send(r)))
        .expect("reader");
    let lost = reader.finish();
    let received: Vec<ProcRecord> = rx.try_iter().collect();
    let execs = received.iter().filter(|r| r.kind == "proc-exec").count();
    assert!(lost > 0, "no loss counted ({} received)", received.len());
    assert!(
        received.len() as u64 + lost >= 900,
        "received {} + lost {lost} < the 900 events made",
        received.len()
    );
    assert!(
        execs > 0 && received.iter().all(|r| !r.killed()),
        "report mode"
    );
    drop(session);
}

/// Two sessions at once share the pinned programs, but each reader gets only its own
/// session's events (each has its own ring slot in `PROC_EVENTS`, and a reader drops
/// records of other cgroups).
#[test]
fn two_sessions_at_once_each_get_only_their_own_process_events() {
    skip_unless_privileged!();
    let (a, _, events_a) = hook(ExecMode::Report);
    let (b, _, events_b) = hook(ExecMode::Report);
    let (tx_a, rx_a) = mpsc::channel();
    let (tx_b, rx_b) = mpsc::channel();
    let reader_a = events_a
        .spawn_with(move |r| drop(tx_a.send(r)))
        .expect("reader a");
    let reader_b = events_b
        .spawn_with(move |r| drop(tx_b.send(r)))
        .expect("reader b");
    let dir = scratch("two-sessions");
    let (marker_a, marker_b) = (dir.join("a"), dir.join("b"));
    let mut child_a = waiting_touch(&marker_a);
    let mut child_b = waiting_touch(&marker_b);
    a.cgroup()
        .add_process(child_a.id() as i32)
        .expect("move into a");
    b.cgroup()
        .add_process(child_b.id() as i32)
        .expect("move into b");
    go(&mut child_a);
    go(&mut child_b);
    assert!(wait(&mut child_a).success() && wait(&mut child_b).success());
    reader_a.finish();
    reader_b.finish();
    let got_a: Vec<ProcRecord> = rx_a.try_iter().collect();
    let got_b: Vec<ProcRecord> = rx_b.try_iter().collect();
    for (got, session, pid) in [(&got_a, &a, child_a.id()), (&got_b, &b, child_b.id())] {
        assert!(
            got.iter()
                .any(|r| r.kind == "proc-exec" && r.event.pid == pid),
            "the session's own exec is missing: {got:?}"
        );
        assert!(
            got.iter()
                .all(|r| r.event.cgroup_id == session.cgroup().id()),
            "another session's event reached this reader: {got:?}"
        );
    }
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// 2. End to end: both guards on
// ---------------------------------------------------------------------------------------------

fn session_start(ws: &Workspace) -> Value {
    ws.audit()
        .into_iter()
        .find(|r| r["kind"] == "session-start")
        .expect("session-start record")
}

fn ebpf_records(ws: &Workspace) -> Vec<Value> {
    ws.audit()
        .into_iter()
        .filter(|r| r["source"] == "ebpf")
        .collect()
}

/// While the agent runs, the kernel events' reader sleeps until the ring buffer has a record
/// or the session ends: its thread's voluntary context switches, read in `/proc` from outside
/// the sandbox, stay put over 2.5 s of an agent that only sleeps (a 500 ms poll, as before,
/// added five).
#[test]
fn the_events_reader_does_not_wake_up_on_a_timer() {
    skip_unless_privileged!();
    let ws = Workspace::new("ebpf-events-idle");
    std::thread::scope(|s| {
        let run = s.spawn(|| {
            ws.run(
                &["--headless", "--policy", "preset:sandboxed"],
                &["sh", "-c", "echo > started; exec sleep 4"],
                LIMIT,
            )
        });
        // `exec sleep` comes right after `started`: within 0.3 s the agent only sleeps.
        let woke = common::SupervisorThread::sleeps_during(
            &ws.dir,
            "ebpf-events",
            &ws.dir.join("started"),
            Duration::from_millis(300),
            Duration::from_millis(2500),
        );
        let r = run.join().expect("the session");
        assert_eq!(r.code, Some(0), "{}", show(&r));
        assert!(
            woke <= 2,
            "the idle events reader woke up {woke} times in 2.5 s"
        );
    });
}

#[test]
fn ordinary_sessions_work_with_the_exec_backstop_on() {
    skip_unless_privileged!();
    let ws = Workspace::new("ebpf-exec-normal");
    let r = ws.run(
        &["--headless", "--policy", "preset:sandboxed"],
        &[
            "sh",
            "-c",
            "/bin/true && ls -d / && echo hi > out && cat out && id -u && sh -c 'exec env true' && echo end",
        ],
        LIMIT,
    );
    assert!(!r.timed_out, "{}", show(&r));
    assert_eq!(r.code, Some(0), "{}", show(&r));
    assert!(
        r.stdout.contains("hi") && r.stdout.trim_end().ends_with("end"),
        "{}",
        show(&r)
    );
    assert!(
        !r.stderr.contains("exec backstop") && !r.stderr.contains("killed"),
        "{}",
        show(&r)
    );
    let weaker = session_start(&ws)["action"]["weaker"].to_string();
    assert!(
        !weaker.contains("exec backstop") && !weaker.contains("network backstop"),
        "the backstops were not both on: {weaker}"
    );
    let execs: Vec<Value> = ebpf_records(&ws)
        .into_iter()
        .filter(|r| r["kind"] == "proc-exec")
        .collect();
    // sh, true, ls, cat, id, sh, env, true
    assert!(execs.len() >= 8, "proc-exec records: {execs:?}");
    assert!(
        execs.iter().all(|r| r["action"]["approved"] == true),
        "an exec was not approved in the kernel: {execs:?}"
    );
}

/// Forks children that exec the path in a buffer another thread flips between an allowed and
/// a denied program of the same length; prints `ran=N killed=N denied=N other=N`.
const RACE_C: &str = r#"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
extern char **environ;
static char *live;
static char variants[2][32];
static void *flip(void *x) {
    (void)x;
    for (unsigned i = 0;; i++) memcpy(live, variants[i & 1], 32);
    return 0;
}
int main(int argc, char **argv) {
    if (argc != 4) return 2;
    strncpy(variants[0], argv[1], 31);
    strncpy(variants[1], argv[2], 31);
    live = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    memcpy(live, variants[0], 32);
    pthread_t t;
    pthread_create(&t, 0, flip, 0);
    long ran = 0, killed = 0, denied = 0, other = 0;
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        pid_t pid = fork();
        if (pid == 0) {
            char *av[] = { "x", NULL };
            execve(live, av, environ);
            _exit(errno == EACCES ? 126 : 127);
        }
        int st;
        waitpid(pid, &st, 0);
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0) ran++;
        else if (WIFEXITED(st) && WEXITSTATUS(st) == 126) denied++;
        else if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) killed++;
        else other++;
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while ((now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000 < atoi(argv[3]));
    printf("ran=%ld killed=%ld denied=%ld other=%ld\n", ran, killed, denied, other);
    return 0;
}
"#;

/// A program that, if it ever runs, creates `marker`.
const PAYLOAD_C: &str = r#"
#include <fcntl.h>
#include <unistd.h>
int main(void) {
    int fd = open(MARKER, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) { write(fd, "ran\n", 4); close(fd); }
    return 0;
}
"#;

fn count(out: &str, key: &str) -> i64 {
    out.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("racer output lacks {key}=N:\n{out}"))
}

#[test]
fn racing_exec_path_never_runs_the_denied_program_with_both_guards_on() {
    skip_unless_privileged!();
    // sandboxed + headless: /usr programs are allowed, the agent's own programs in its
    // workspace need approval, so they are denied.
    let ws = Workspace::new("ebpf-exec-race");
    let marker = ws.path("evil-ran");
    let define = format!("-DMARKER=\"{}\"", marker.display());
    compile_c(&ws.dir, "evil", PAYLOAD_C, &[&define]).expect("cc builds the payload");
    let racer = compile_c(&ws.dir, "race", RACE_C, &["-pthread"]).expect("cc builds the racer");
    let r = ws.run(
        &["--headless", "--policy", "preset:sandboxed"],
        &[
            racer.to_str().expect("utf-8"),
            "//usr/bin/true",
            "./././././evil",
            "1500",
        ],
        LIMIT,
    );
    assert!(!r.timed_out, "{}", show(&r));
    assert_eq!(r.code, Some(0), "{}", show(&r));
    assert!(
        count(&r.stdout, "ran") > 0,
        "the allowed program must run\n{}",
        show(&r)
    );
    let weaker = session_start(&ws)["action"]["weaker"].to_string();
    assert!(!weaker.contains("exec backstop"), "backstop off: {weaker}");
    let denied = ws
        .decisions("exec")
        .iter()
        .filter(|d| d["decision"] == "deny" && d["action"]["path"].to_string().contains("/evil"))
        .count();
    let kernel_kills: Vec<Value> = ebpf_records(&ws)
        .into_iter()
        .filter(|r| r["decided_by"] == "ebpf-exec-backstop")
        .collect();
    // The race ran when the denied path reached a check: the supervisor's (it decided the
    // flipped path) or the kernel's (the flip came after the decision). Under emulation
    // (vm-test) a run may see only the second kind.
    assert!(
        denied + kernel_kills.len() > 0,
        "the race did not run\n{}",
        show(&r)
    );
    eprintln!(
        "race: {} ; kernel kills: {} ; exec-guard kills: {}",
        r.stdout.trim(),
        kernel_kills.len(),
        ws.decisions("exec-guard").len()
    );
    assert!(
        !marker.exists(),
        "the denied program ran (kernel kills {kernel_kills:?})\n{}",
        show(&r)
    );
    // Whatever the kernel killed was the denied program, never the allowed one.
    for k in &kernel_kills {
        assert!(
            k["action"]["filename"].to_string().contains("evil"),
            "the kernel killed an approved exec: {k}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Events in the audit log
// ---------------------------------------------------------------------------------------------

#[test]
fn process_events_reach_the_audit_log_with_the_right_session_pids_and_programs() {
    skip_unless_privileged!();
    let ws = Workspace::new("ebpf-exec-events");
    // Each inner shell writes its pid (as the agent sees it) and becomes /bin/true.
    let script = "for i in 1 2 3; do sh -c 'echo $$ >> pids; exec /bin/true'; done; \
                  sh -c 'exit 7'; echo rc=$?";
    let r = ws.run(
        &["--headless", "--policy", "preset:sandboxed"],
        &["sh", "-c", script],
        LIMIT,
    );
    assert!(!r.timed_out, "{}", show(&r));
    assert_eq!(r.code, Some(0), "{}", show(&r));
    assert!(r.stdout.contains("rc=7"), "{}", show(&r));
    let pids: Vec<u64> = ws
        .read("pids")
        .expect("the agent wrote its pids")
        .lines()
        .map(|l| l.trim().parse().expect("pid"))
        .collect();
    assert_eq!(pids.len(), 3);

    let audit = ws.audit();
    let session = session_start(&ws)["session"]
        .as_str()
        .expect("session id")
        .to_string();
    let ebpf = ebpf_records(&ws);
    assert!(
        ebpf.iter().all(|r| r["session"] == session.as_str()),
        "a kernel event of another session: {ebpf:?}"
    );
    let cgroups: std::collections::HashSet<String> = ebpf
        .iter()
        .map(|r| r["action"]["cgroup_id"].to_string())
        .collect();
    assert_eq!(cgroups.len(), 1, "one session cgroup: {cgroups:?}");
    let of = |kind: &str, ns_pid: u64| -> Vec<&Value> {
        ebpf.iter()
            .filter(|r| r["kind"] == kind && r["action"]["ns_pid"] == ns_pid)
            .collect()
    };
    for &p in &pids {
        let fork = of("proc-fork", p);
        let execs = of("proc-exec", p);
        let exits = of("proc-exit", p);
        assert_eq!(fork.len(), 1, "fork of agent pid {p}: {ebpf:?}");
        // sh -c ..., then its exec of /bin/true
        let programs: Vec<String> = execs
            .iter()
            .map(|e| e["action"]["filename"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(
            programs.last().map(String::as_str),
            Some("/bin/true"),
            "{execs:?}"
        );
        let last = execs.last().expect("exec");
        assert_eq!(last["action"]["comm"], "true");
        assert_eq!(last["action"]["approved"], true);
        assert_eq!(exits.len(), 1, "exit of agent pid {p}: {ebpf:?}");
        assert_eq!(exits[0]["action"]["exit_code"], 0);
        // The host pid of the kernel's event is the one the supervisor decided for.
        let host_pid = last["pid"].as_i64().expect("pid");
        assert_eq!(fork[0]["pid"], host_pid);
        assert!(
            audit.iter().any(|d| d["kind"] == "exec"
                && d["pid"] == host_pid
                && d["action"]["path"].to_string().contains("true")),
            "no supervisor exec decision for host pid {host_pid}"
        );
    }
    assert!(
        ebpf.iter()
            .any(|r| r["kind"] == "proc-exit" && r["action"]["exit_code"] == 7),
        "the `exit 7` shell: {ebpf:?}"
    );
    let end = audit
        .iter()
        .find(|r| r["kind"] == "session-end")
        .expect("session-end");
    assert_eq!(end["action"]["ebpf_events_lost"], 0, "{end}");
    assert!(!r.stderr.contains("were lost"), "{}", show(&r));
}
