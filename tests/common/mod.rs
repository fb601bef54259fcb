//! Shared helpers for the privileged integration tests: run the real `agent-supervisor`
//! binary against the real kernel, with a time limit, in a throw-away workspace, and read the
//! results from outside the sandbox (files, listeners, the audit log).
#![allow(dead_code)]

pub mod daemon;
pub mod otlp;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The supervisor binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_agent-supervisor"))
}

/// The variables that turn on CI mode and its GitHub output (`.ci/run` runs the tests with
/// `CI=true`, a GitHub runner adds the others): removed from every supervisor a test starts,
/// unless the test is about CI mode (tests/ci.rs).
pub const CI_VARS: [&str; 3] = ["CI", "GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY"];

/// `.no_ci()` on a [`Command`]: remove [`CI_VARS`] from its environment.
pub trait NoCi {
    fn no_ci(&mut self) -> &mut Self;
}

impl NoCi for Command {
    fn no_ci(&mut self) -> &mut Self {
        for var in CI_VARS {
            self.env_remove(var);
        }
        self
    }
}

/// `Command::new(bin())` without [`CI_VARS`] in its environment.
pub fn supervisor_command() -> Command {
    let mut c = Command::new(bin());
    c.no_ci();
    c
}

/// When `$cond` is false: print why the test cannot run here, record it in
/// `target/tmp/skipped.txt` (which `cargo xtask test` counts and reports as skipped), and
/// return. A skipped test never passes silently.
#[macro_export]
macro_rules! skip_unless {
    ($cond:expr, $why:expr) => {
        if !$cond {
            $crate::common::record_skip(module_path!(), line!(), &$why.to_string());
            return;
        }
    };
}

/// Record a skipped test (see `skip_unless!`).
pub fn record_skip(module: &str, line: u32, why: &str) {
    use std::io::Write;
    eprintln!("skipping {module}:{line}: {why}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("skipped.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        // One write per record: tests skip from parallel threads, and a record split over
        // several writes would interleave with another's.
        let _ = f.write_all(format!("{module}:{line}: {why}\n").as_bytes());
    }
}

/// Is this process root (the privileged tests need it)?
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// A temporary workspace directory, removed on drop.
pub struct Workspace {
    pub dir: PathBuf,
    pub audit: PathBuf,
}

impl Workspace {
    pub fn new(name: &str) -> Workspace {
        let base = std::env::temp_dir().join(format!(
            "as-test-{}-{}-{}",
            name,
            std::process::id(),
            nanos()
        ));
        let dir = base.join("ws");
        std::fs::create_dir_all(&dir).expect("create workspace");
        let audit = base.join("audit.jsonl");
        Workspace { dir, audit }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, content).expect("write");
        p
    }

    pub fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.path(rel)).ok()
    }

    /// Write a policy file next to the workspace (outside it) and return its path.
    pub fn policy(&self, text: &str) -> PathBuf {
        let p = self.dir.parent().expect("base").join("policy.toml");
        std::fs::write(&p, text).expect("write policy");
        p
    }

    /// `agent-supervisor run --audit <audit> [extra...] -- <cmd...>` in the workspace.
    pub fn run(&self, extra: &[&str], cmd: &[&str], timeout: Duration) -> Result_ {
        let mut c = Command::new(bin());
        c.arg("run")
            .arg("-q")
            .arg("--audit")
            .arg(&self.audit)
            .args(extra)
            .arg("--")
            .args(cmd);
        c.current_dir(&self.dir).stdin(Stdio::null());
        c.no_ci();
        run_with_timeout(c, timeout)
    }

    /// The audit records, parsed (and checked: see [`parse_audit`]).
    pub fn audit(&self) -> Vec<serde_json::Value> {
        parse_audit(&std::fs::read_to_string(&self.audit).unwrap_or_default())
    }

    /// Audit decision records of one kind.
    pub fn decisions(&self, kind: &str) -> Vec<serde_json::Value> {
        self.audit()
            .into_iter()
            .filter(|r| r["kind"] == kind)
            .collect()
    }
}

/// Parses audit lines and checks that each session's records start with its session-start (the
/// threads serving the agent must not log before it), for every test that reads an audit log.
pub fn parse_audit(text: &str) -> Vec<serde_json::Value> {
    let recs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect();
    let mut started = std::collections::HashSet::new();
    // The daemon's own records about a session (session-launch, ...) come before it.
    for r in recs.iter().filter(|r| r["source"] != "daemon") {
        if let Some(session) = r["session"].as_str() {
            if started.insert(session.to_string()) {
                assert_eq!(
                    r["kind"], "session-start",
                    "session {session}'s first audit record is not session-start: {r}"
                );
            }
        }
    }
    recs
}

impl Drop for Workspace {
    /// Removes the workspace, and the cgroups of any of its sessions whose supervisor a test
    /// SIGKILLed (it could not remove them itself).
    fn drop(&mut self) {
        let text = std::fs::read_to_string(&self.audit).unwrap_or_default();
        let sessions: std::collections::BTreeSet<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|r| r["session"].as_str().map(String::from))
            .collect();
        for session in &sessions {
            remove_session_cgroups(session);
        }
        if let Some(base) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

/// Every place a session's cgroup directory could be: under the cgroup v2 root, and under
/// our own cgroup of each v1 hierarchy (the supervisor, our child, shares it).
pub fn session_cgroup_dirs(session: &str) -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut out = Vec::new();
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        if f[2] == "cgroup2" {
            out.push(PathBuf::from(f[1]).join("agent-supervisor").join(session));
        } else if f[2] == "cgroup" {
            let ctrls: Vec<&str> = f[3].split(',').collect();
            for line in own.lines() {
                let parts: Vec<&str> = line.splitn(3, ':').collect();
                if parts.len() == 3 && parts[1].split(',').any(|c| ctrls.contains(&c)) {
                    out.push(
                        PathBuf::from(f[1])
                            .join(parts[2].trim_start_matches('/'))
                            .join("agent-supervisor")
                            .join(session),
                    );
                }
            }
        }
    }
    out
}

/// Remove the cgroup directories left by a session whose supervisor was SIGKILLed: only that
/// session's, each once it is empty (its processes die with its init; up to 5 s).
pub fn remove_session_cgroups(session: &str) {
    let valid = session.len() == 12 && session.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return;
    }
    for dir in session_cgroup_dirs(session) {
        if !dir.exists() {
            continue;
        }
        let empty =
            || std::fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty());
        if wait_until(Duration::from_secs(5), empty) {
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// Wait up to `limit` for `cond` (checked every 20 ms); its last value.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Result of a run: exit code (None if killed by the time limit) and output.
#[derive(Debug)]
pub struct Result_ {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

/// Run a command with a hard time limit; on expiry kill it (SIGKILL) and report.
pub fn run_with_timeout(mut c: Command, timeout: Duration) -> Result_ {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn agent-supervisor");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Result_ {
        code: status.and_then(|s| s.code()),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
        timed_out,
    }
}

/// A run's exit code, whether it hit its time limit, and its output, for failure messages.
pub fn show(r: &Result_) -> String {
    format!(
        "exit {:?}{}\n--- stdout\n{}\n--- stderr\n{}",
        r.code,
        if r.timed_out { " (TIMED OUT)" } else { "" },
        r.stdout,
        r.stderr
    )
}

/// Compile a C program with the system compiler into `dir/name`; None if no compiler.
pub fn compile_c(dir: &Path, name: &str, src: &str, extra: &[&str]) -> Option<PathBuf> {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, src).ok()?;
    let out = dir.join(name);
    let st = Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&out)
        .arg(&c)
        .args(extra)
        .status()
        .ok()?;
    st.success().then_some(out)
}

/// A TCP listener on 127.0.0.1 (ephemeral port) that records whether anyone connected.
pub struct Listener {
    pub port: u16,
    inner: std::net::TcpListener,
}

impl Listener {
    pub fn new() -> Listener {
        let inner = std::net::TcpListener::bind("127.0.0.1:0").expect("bind listener");
        inner.set_nonblocking(true).expect("nonblocking");
        Listener {
            port: inner.local_addr().expect("addr").port(),
            inner,
        }
    }

    /// Did any connection arrive (accepts everything pending)?
    pub fn was_reached(&self) -> bool {
        let mut reached = false;
        while let Ok((_s, _)) = self.inner.accept() {
            reached = true;
        }
        reached
    }
}

/// Is a process with this exact command line still alive anywhere?
pub fn process_alive_with_marker(marker: &str) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    rd.flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(marker))
            .unwrap_or(false)
    })
}

/// Wait for `child` at most `limit`; on expiry kill it (SIGKILL), reap it and fail the test.
pub fn wait_child(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child hit the {limit:?} limit");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs argv on a new pseudo-terminal (its controlling terminal), answers each prompt with
/// the next key of `keys` (none left: no answer), and prints a JSON report.
pub const PTY_DRIVER: &str = r#"
import json, os, pty, select, signal, sys, time
keys, limit, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
pid, fd = pty.fork()
if pid == 0:
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
PROMPT = b"allow? [y]"
buf, prompts, sent, status, timed_out = b"", 0, 0, None, False
deadline = time.monotonic() + limit
while True:
    if time.monotonic() > deadline:
        os.kill(pid, signal.SIGKILL)
        timed_out = True
    r, _, _ = select.select([fd], [], [], 0.05)
    data = b""
    if r:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        buf += data
        while prompts < buf.count(PROMPT):
            prompts += 1
            if sent < len(keys):
                time.sleep(0.05)
                os.write(fd, keys[sent].encode())
                sent += 1
    if not data:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(st)
            break
print(json.dumps({"status": status, "prompts": prompts, "sent": sent, "timed_out": timed_out,
                  "out": buf.decode("utf-8", "replace")}))
"#;

/// A thread of the supervisor running in `dir` (its working directory), by name, seen from
/// outside in `/proc`.
pub struct SupervisorThread(PathBuf);

impl SupervisorThread {
    pub fn of(dir: &Path, name: &str) -> Option<SupervisorThread> {
        let dir = std::fs::canonicalize(dir).ok()?;
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let pid = e.path();
            let ours = std::fs::read_to_string(pid.join("comm"))
                .is_ok_and(|c| c.trim() == "agent-superviso")
                && std::fs::read_link(pid.join("cwd")).is_ok_and(|c| c == dir);
            if !ours {
                continue;
            }
            for t in std::fs::read_dir(pid.join("task")).ok()?.flatten() {
                if std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name) {
                    return Some(SupervisorThread(t.path().join("status")));
                }
            }
        }
        None
    }

    /// How many times thread `name` of the supervisor running in `dir` goes to sleep during
    /// `window`: measured once file `started` exists (the agent writes it, at most 20 s) and
    /// `settle` has passed.
    pub fn sleeps_during(
        dir: &Path,
        name: &str,
        started: &Path,
        settle: Duration,
        window: Duration,
    ) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !started.exists() {
            assert!(Instant::now() < deadline, "the agent never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(settle);
        let thread = SupervisorThread::of(dir, name)
            .unwrap_or_else(|| panic!("no {name} thread of a supervisor in {}", dir.display()));
        let before = thread.sleeps();
        std::thread::sleep(window);
        thread.sleeps() - before
    }

    /// How many times it went to sleep so far (`voluntary_ctxt_switches`).
    pub fn sleeps(&self) -> u64 {
        std::fs::read_to_string(&self.0)
            .expect("the thread's status")
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("voluntary_ctxt_switches")
    }
}
