//! A session's own life: how fast it ends once the agent is gone.
//!
//! The exit path must wait on nothing but kernel events (the agent's exit, the last audit
//! write): a thread that polls (a limits watcher waking every 50 ms, a sweeper sleeping 200
//! ms) shows up here as tens of milliseconds between the agent's end and the supervisor's.
//! Measured from outside: the test holds the agent's stdin, ends the agent by closing it, and
//! times the supervisor's exit with a blocking wait.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// How long the supervisor may take to exit after its agent did (median of [`RUNS`]). On an
/// idle machine it is a few milliseconds; one 50 ms poll on the way out fails it.
const EXIT_PATH_LIMIT: Duration = Duration::from_millis(20);
const RUNS: usize = 7;

/// Start a session whose agent prints `ready` and then waits for its stdin to close.
fn waiting_session(ws: &Workspace, extra: &[&str]) -> Child {
    let mut c = supervisor_command();
    c.args([
        "run",
        "-q",
        "--headless",
        "--policy",
        "preset:sandboxed",
        "--audit",
    ])
    .arg(&ws.audit)
    .args(extra)
    .args(["--", "/bin/sh", "-c", "echo ready; read line; exit 0"])
    .current_dir(&ws.dir)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c.spawn().expect("start the supervisor")
}

/// The time from closing the agent's stdin (which ends it) to the supervisor's exit.
fn exit_path(ws: &Workspace, extra: &[&str]) -> Duration {
    let mut child = waiting_session(ws, extra);
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let ready = rx.recv_timeout(Duration::from_secs(30));
    if ready.as_deref().map(str::trim) != Ok("ready") {
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait");
        panic!(
            "the agent did not start ({ready:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdin = child.stdin.take().expect("stdin");
    let pid = child.id() as libc::id_t;
    let (done_tx, done_rx) = mpsc::channel();
    // The waiter only watches (WNOWAIT): the child stays ours to kill and reap.
    std::thread::spawn(move || {
        // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child with a valid siginfo_t pointer.
        let r = unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        let _ = done_tx.send((Instant::now(), r));
    });
    let started = Instant::now();
    drop(stdin);
    let waited = done_rx.recv_timeout(Duration::from_secs(30));
    if waited.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().expect("reap the supervisor");
    let (ended, r) = waited.expect("the supervisor exits within 30 s of its agent");
    assert_eq!(r, 0, "waitid failed");
    assert!(status.success(), "the session failed: {status}");
    ended - started
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn check_exit_path(name: &str, extra: &[&str]) {
    skip_unless!(
        std::env::var_os("AS_VM_GUEST").is_none(),
        "exit-path timing is measured on the host: the VM layer's guests are emulated (TCG)"
    );
    let ws = Workspace::new(name);
    // The first session of a fresh process pays one-time costs (page cache, a pinned eBPF
    // set): not the exit path.
    exit_path(&ws, extra);
    let times: Vec<Duration> = (0..RUNS).map(|_| exit_path(&ws, extra)).collect();
    let m = median(times.clone());
    eprintln!("{name}: exit path {times:?}, median {m:?}");
    assert!(
        m < EXIT_PATH_LIMIT,
        "{name}: the supervisor took {m:?} (median of {RUNS}: {times:?}) to exit after its agent; \
         something on the exit path waits on a timer"
    );
}

#[test]
fn the_exit_path_waits_on_no_timer_without_ebpf() {
    check_exit_path("exit-no-ebpf", &["--no-ebpf"]);
}

#[test]
fn the_exit_path_waits_on_no_timer_with_the_ebpf_backstops() {
    skip_unless!(is_root(), "the eBPF backstops need root");
    check_exit_path("exit-ebpf", &[]);
}
