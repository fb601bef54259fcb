//! The daemon (`agent-supervisor daemon`), end to end: the real binary on a temporary socket,
//! driven by a real gRPC client (tonic, the generated stubs) and by the CLI clients run as
//! other uids. Every effect is checked from outside the sandbox: the file the agent's approved
//! program writes (or doesn't), processes alive or gone, the daemon's JSONL audit log.
#![allow(clippy::zombie_processes)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_supervisor::daemon::proto::{
    self, approval_event::Event, approvals_client::ApprovalsClient, audit_client::AuditClient,
    sessions_client::SessionsClient,
};
use agent_supervisor::daemon::{client, proto::Resolution};
use common::{bin, is_root};
use tonic::Code;

/// Hard limit of each test.
const LIMIT: Duration = Duration::from_secs(90);
/// The uid the tests approve as (listed in [access.approve]); another one is not.
const APPROVER: u32 = 65534;
const NOT_APPROVER: u32 = 65533;
const TOKEN: &str = "s3cret-token-for-tests";

/// A daemon on a temporary socket, killed (SIGKILL) and its directory removed on drop.
struct Daemon {
    dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn start(name: &str) -> Daemon {
        let dir = std::env::temp_dir().join(format!(
            "as-daemon-{name}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos())
        ));
        std::fs::create_dir_all(dir.join("ws")).unwrap();
        // The approver uids must reach the socket.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let token_sha = sha256_hex(TOKEN);
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "socket = \"{d}/api.sock\"\nsocket_mode = \"0666\"\naudit = \"{d}/log/audit.jsonl\"\n\
                 state_dir = \"{d}/state\"\n\
                 [access.approve]\nuids = [{APPROVER}]\ntokens = [\"ci\"]\n\
                 [[token]]\nname = \"ci\"\nsha256 = \"{token_sha}\"\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let mut d = Daemon {
            dir,
            config,
            child: None,
        };
        d.restart();
        d
    }

    /// Start (again) on the same configuration; waits until the socket answers.
    fn restart(&mut self) {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.err"))
            .unwrap();
        let child = Command::new(bin())
            .arg("daemon")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn the daemon");
        self.child = Some(child);
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the daemon did not listen in 20 s: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    fn ws(&self) -> PathBuf {
        self.dir.join("ws")
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.err")).unwrap_or_default()
    }

    fn audit_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("log/audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        self.audit_lines()
            .iter()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn channel(&self) -> tonic::transport::Channel {
        client::connect(&self.socket()).await.expect("connect")
    }

    /// A policy file (outside the workspace): the sandboxed preset, running workspace scripts
    /// is asked.
    fn policy(&self, timeout: &str) -> String {
        let p = self.dir.join("policy.toml");
        std::fs::write(
            &p,
            format!("version = 1\nextends = \"sandboxed\"\napproval_timeout = \"{timeout}\"\n"),
        )
        .unwrap();
        p.display().to_string()
    }

    /// An executable script in the workspace that appends a line to the file named by $1.
    fn counter_script(&self) {
        let p = self.ws().join("s.sh");
        std::fs::write(&p, "#!/bin/sh\necho \"ran $*\" >> \"$1\"\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    async fn start_session(&self, policy: &str, script: &str) -> proto::Session {
        let mut c = SessionsClient::new(self.channel().await);
        c.start_session(proto::StartSessionRequest {
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            workspace: self.ws().display().to_string(),
            policy: policy.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("start_session: {e:?}\n{}", self.stderr()))
        .into_inner()
    }

    /// The CLI as another uid: `agent-supervisor ARGS --socket S`.
    fn cli_as(&self, uid: u32, args: &[&str], env: &[(&str, &str)]) -> common::Result_ {
        let mut c = Command::new(bin());
        c.args(args)
            .arg("--socket")
            .arg(self.socket())
            .env_remove("AGENT_SUPERVISOR_TOKEN")
            .envs(env.iter().copied())
            .current_dir("/")
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::null());
        common::run_with_timeout(c, Duration::from_secs(20))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.sigkill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Run a test body on a runtime, under the time limit.
fn with_limit(f: impl std::future::Future<Output = ()>) {
    rt().block_on(async {
        tokio::time::timeout(LIMIT, f)
            .await
            .expect("the test hit its time limit")
    })
}

type Approvals = tonic::Streaming<proto::ApprovalEvent>;

async fn watch(d: &Daemon) -> Approvals {
    ApprovalsClient::new(d.channel().await)
        .watch_approvals(proto::WatchApprovalsRequest::default())
        .await
        .expect("watch_approvals")
        .into_inner()
}

/// The next pending approval on the stream (skipping other events).
async fn next_pending(s: &mut Approvals) -> proto::Approval {
    loop {
        match s.message().await.expect("approval stream").expect("stream ended") {
            proto::ApprovalEvent {
                event: Some(Event::Pending(a)),
            } => return a,
            _ => continue,
        }
    }
}

/// The next `resolved` event for approval `id`.
async fn resolved(s: &mut Approvals, id: &str) -> proto::Resolved {
    loop {
        match s.message().await.expect("approval stream").expect("stream ended") {
            proto::ApprovalEvent {
                event: Some(Event::Resolved(r)),
            } if r.id == id => return r,
            _ => continue,
        }
    }
}

async fn resolve(
    d: &Daemon,
    a: &proto::Approval,
    digest: &str,
    r: Resolution,
) -> Result<proto::ResolveResponse, tonic::Status> {
    ApprovalsClient::new(d.channel().await)
        .resolve(proto::ResolveRequest {
            id: a.id.clone(),
            action_digest: digest.into(),
            resolution: r as i32,
        })
        .await
        .map(|r| r.into_inner())
}

async fn wait_session_end(d: &Daemon, id: &str) -> proto::Session {
    let mut c = SessionsClient::new(d.channel().await);
    loop {
        let s = c
            .get_session(proto::GetSessionRequest { id: id.into() })
            .await
            .expect("get_session")
            .into_inner();
        if s.state != "running" && s.state != "killing" {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------

#[test]
fn an_approval_answered_by_another_user_allows_once_and_a_denial_denies() {
    skip_unless!(is_root(), "the daemon tests run as root (they setuid the clients)");
    let d = Daemon::start("allow");
    d.counter_script();
    let policy = d.policy("30s");
    with_limit(async {
        let mut w = watch(&d).await;
        let s = d
            .start_session(&policy, "./s.sh log; ./s.sh log; echo done > done.txt")
            .await;
        assert_eq!(s.state, "running");
        assert_eq!(s.uid, 0);
        let a = next_pending(&mut w).await;
        assert_eq!(a.session, s.id);
        assert_eq!(a.kind, "exec");
        assert!(a.summary.contains("./s.sh log"), "{a:?}");
        assert!(!a.rule.is_empty(), "{a:?}");
        assert!(a.deadline_unix_ms > 0);
        assert_eq!(a.agent_command, s.command);
        // Nothing ran while it waits.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!d.ws().join("log").exists());
        // The session's own uid (root here) never answers it.
        let e = resolve(&d, &a, &a.action_digest, Resolution::AllowOnce)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        // A uid that is not an approver is refused too.
        let r = d.cli_as(NOT_APPROVER, &["approve", &a.id], &[]);
        assert_eq!(r.code, Some(1), "{r:?}");
        assert!(r.stderr.contains("may not answer"), "{r:?}");
        assert!(!d.ws().join("log").exists());
        // The approver: allowed once.
        let r = d.cli_as(APPROVER, &["approve", &a.id], &[]);
        assert_eq!(r.code, Some(0), "{r:?}\n{}", d.stderr());
        assert_eq!(resolved(&mut w, &a.id).await.decision, "allow");
        // A replay of the same answer fails cleanly.
        let r = d.cli_as(APPROVER, &["approve", &a.id], &[]);
        assert_eq!(r.code, Some(1), "{r:?}");
        // The identical second exec asks again: deny it.
        let b = next_pending(&mut w).await;
        assert_ne!(b.id, a.id);
        let r = d.cli_as(APPROVER, &["deny", &b.id], &[]);
        assert_eq!(r.code, Some(0), "{r:?}");
        let end = wait_session_end(&d, &s.id).await;
        assert_eq!(end.state, "exited");
        assert_eq!(end.exit_code, Some(0));
    });
    // From outside: the approved run wrote one line, the denied one none; the agent went on.
    assert_eq!(lines(&d.ws().join("log")), 1);
    assert_eq!(
        std::fs::read_to_string(d.ws().join("done.txt")).unwrap(),
        "done\n"
    );
    let audit = d.audit();
    let execs: Vec<String> = audit
        .iter()
        .filter(|r| r["kind"] == "exec" && r["action"]["argv"][0] == "./s.sh")
        .map(|r| format!("{} {}", r["decision"], r["decided_by"]))
        .collect();
    assert_eq!(execs, ["\"allow\" \"human\"", "\"deny\" \"human\""], "{audit:?}");
    let approvers: Vec<String> = audit
        .iter()
        .filter(|r| r["kind"] == "approval")
        .map(|r| format!("{} {}", r["action"]["decision"], r["action"]["approver"]))
        .collect();
    assert_eq!(
        approvers,
        [
            format!("\"allow\" \"uid {APPROVER}\""),
            format!("\"deny\" \"uid {APPROVER}\"")
        ]
    );
}
