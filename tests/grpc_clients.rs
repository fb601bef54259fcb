//! Standard, non-Rust gRPC clients against the real daemon on its unix socket, as a new user
//! would use them: the example approval client in Python (`examples/python-approver`,
//! grpcio with a default channel, whose `:authority` is the socket path) and `buf curl` (Go).
//! Their packages come from `cargo xtask setup` (pinned grpcio in a virtual environment, buf
//! from npm); a test whose client is not installed says so and is counted as skipped.
//! Effects are checked from outside the sandbox: the files the approved (and the denied)
//! program would write, the session's exit code, the audit log.
#![allow(clippy::zombie_processes)]

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::is_root;

/// Time limit of each client run, and of the session.
const LIMIT: Duration = Duration::from_secs(60);
/// The uid the session runs as (root, the approver, may not answer its own sessions).
const AGENT_UID: u32 = 65534;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `$XDG_CACHE_HOME/agent-supervisor` or `~/.cache/agent-supervisor`, where `cargo xtask setup`
/// installs the clients (xtask/src/setup.rs).
fn cache_dir() -> PathBuf {
    match std::env::var_os("XDG_CACHE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"),
    }
    .join("agent-supervisor")
}

/// The Python of the example's virtual environment, if set-up made it from the current
/// requirements; else why not.
fn approver_python() -> Result<PathBuf, String> {
    let venv = cache_dir().join("python-approver-venv");
    let wanted =
        std::fs::read_to_string(workspace_root().join("examples/python-approver/requirements.txt"))
            .map_err(|e| format!("examples/python-approver/requirements.txt: {e}"))?;
    match std::fs::read_to_string(venv.join("requirements.installed.txt")) {
        Ok(installed) if installed == wanted => Ok(venv.join("bin/python")),
        Ok(_) => Err(format!(
            "{} was made from other requirements: run `cargo xtask setup`",
            venv.display()
        )),
        Err(_) => Err(format!(
            "no {} (grpcio for the Python client): run `cargo xtask setup`",
            venv.display()
        )),
    }
}

/// The daemon for these tests: uid AGENT_UID may start sessions.
impl Daemon {
    fn start(name: &str) -> Daemon {
        Daemon::start_with(
            "as-clients",
            name,
            &format!("[access.start]\nuids = [{AGENT_UID}]\n"),
        )
    }
}

/// The services the daemon offers, as a client lists them by reflection.
fn expected_services() -> [&'static str; 5] {
    [
        "agent_supervisor.v1.Approvals",
        "agent_supervisor.v1.Audit",
        "agent_supervisor.v1.Policy",
        "agent_supervisor.v1.Sessions",
        "grpc.health.v1.Health",
    ]
}

/// A child killed (SIGKILL) on drop unless it was waited for.
struct Killed(Option<Child>);

impl Killed {
    /// Its exit code, waiting at most `limit` (then killed: None).
    fn wait(&mut self, limit: Duration) -> Option<i32> {
        let mut child = self.0.take()?;
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s.code();
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn the_python_example_with_a_default_grpcio_channel_checks_health_lists_services_and_answers() {
    skip_unless!(
        is_root(),
        "the daemon tests run as root (the session runs as another uid)"
    );
    let python = approver_python();
    skip_unless!(python.is_ok(), python.clone().unwrap_err());
    let python = python.unwrap();
    let example = workspace_root().join("examples/python-approver");
    let d = Daemon::start("python");

    // The stubs, generated from proto/ by the example's own script.
    let stubs = d.dir.join("gen");
    let mut gen = Command::new(&python);
    gen.arg(example.join("generate_stubs.py")).arg(&stubs);
    let r = common::run_with_timeout(gen, LIMIT);
    assert_eq!(r.code, Some(0), "generate_stubs.py: {r:?}");

    // A session as AGENT_UID that runs two workspace scripts (each asked by the sandboxed
    // preset): the approver allows s.sh and denies the other; the agent goes on either way.
    d.counter_script("s.sh");
    d.counter_script("t.sh");
    std::os::unix::fs::chown(d.ws(), Some(AGENT_UID), Some(AGENT_UID)).unwrap();
    let policy = d.policy("60s");
    let mut run = common::supervisor_command();
    run.args(["run", "--daemon", "--policy"])
        .arg(&policy)
        .arg("--socket")
        .arg(d.socket())
        .args([
            "--",
            "/bin/sh",
            "-c",
            "./s.sh allowed.txt; ./t.sh denied.txt; echo done > done.txt",
        ])
        .current_dir(d.ws())
        .env("HOME", d.ws())
        .uid(AGENT_UID)
        .gid(AGENT_UID)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(d.dir.join("run.out")).unwrap())
        .stderr(std::fs::File::create(d.dir.join("run.err")).unwrap());
    let mut session = Killed(Some(run.spawn().expect("spawn run --daemon")));

    // The example, as documented, on a default channel (no options) to the socket.
    let mut approver = Command::new(&python);
    approver
        .arg(example.join("approver.py"))
        .arg("--socket")
        .arg(d.socket())
        .arg("--stubs")
        .arg(&stubs)
        .args([
            "--list-services",
            "--allow-command",
            "s.sh",
            "--answer",
            "deny",
        ])
        .args(["--count", "2", "--timeout", "50"])
        .env_remove("AGENT_SUPERVISOR_TOKEN");
    let r = common::run_with_timeout(approver, LIMIT);
    let context = format!("{r:?}\ndaemon: {}", d.stderr());
    assert_eq!(r.code, Some(0), "approver.py: {context}");
    let out = r.stdout.lines().collect::<Vec<_>>();
    assert_eq!(out.first(), Some(&"health: SERVING"), "{context}");
    for service in expected_services() {
        assert!(
            out.contains(&format!("service: {service}").as_str()),
            "{service}: {context}"
        );
    }
    let pending: Vec<_> = out.iter().filter(|l| l.starts_with("pending: ")).collect();
    assert_eq!(pending.len(), 2, "{context}");
    assert!(pending[0].contains("./s.sh allowed.txt"), "{context}");
    assert!(pending[1].contains("./t.sh denied.txt"), "{context}");
    let answered: Vec<_> = out
        .iter()
        .filter_map(|l| l.strip_prefix("answered: "))
        .map(|l| l.split(' ').nth(1).unwrap_or_default())
        .collect();
    assert_eq!(answered, ["allow", "deny"], "{context}");

    // The session went on and ended well; from outside: the allowed script ran, the denied
    // one did not, the agent finished.
    let code = session.wait(LIMIT);
    let run_err = std::fs::read_to_string(d.dir.join("run.err")).unwrap_or_default();
    assert_eq!(code, Some(0), "run: {run_err}\ndaemon: {}", d.stderr());
    assert_eq!(
        std::fs::read_to_string(d.ws().join("allowed.txt")).ok(),
        Some("ran allowed.txt\n".into())
    );
    assert!(!d.ws().join("denied.txt").exists());
    assert_eq!(
        std::fs::read_to_string(d.ws().join("done.txt")).ok(),
        Some("done\n".into())
    );
    // The daemon recorded both answers as root's (the Python client's uid).
    let approvals: Vec<String> = d
        .audit()
        .iter()
        .filter(|r| r["kind"] == "approval")
        .map(|r| format!("{} {}", r["action"]["decision"], r["action"]["approver"]))
        .collect();
    assert_eq!(
        approvals,
        ["\"allow\" \"uid 0\"", "\"deny\" \"uid 0\""],
        "{:?}",
        d.audit()
    );
}

#[test]
fn buf_curl_lists_the_services_by_reflection_and_checks_health() {
    skip_unless!(is_root(), "the daemon tests run as root");
    let buf = cache_dir().join("npm/node_modules/.bin/buf");
    skip_unless!(
        buf.exists(),
        format!(
            "no {} (buf, the Go gRPC client): run `cargo xtask setup`",
            buf.display()
        )
    );
    let d = Daemon::start("buf");
    let curl = |args: &[&str]| {
        let mut c = Command::new(&buf);
        c.arg("curl")
            .arg("--unix-socket")
            .arg(d.socket())
            .args(["--protocol", "grpc", "--http2-prior-knowledge"])
            .args(args);
        let r = common::run_with_timeout(c, LIMIT);
        assert_eq!(r.code, Some(0), "buf curl {args:?}: {r:?}\n{}", d.stderr());
        r.stdout
    };
    let services = curl(&["--list-services", "http://localhost"]);
    for service in expected_services() {
        assert!(services.lines().any(|l| l == service), "{services}");
    }
    let methods = curl(&["--list-methods", "http://localhost"]);
    assert!(
        methods
            .lines()
            .any(|l| l == "agent_supervisor.v1.Approvals/WatchApprovals"),
        "{methods}"
    );
    let health = curl(&["http://localhost/grpc.health.v1.Health/Check"]);
    assert!(health.contains("\"SERVING\""), "{health}");
}
