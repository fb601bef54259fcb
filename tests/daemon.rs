//! The daemon (`agent-supervisor daemon`), end to end: the real binary on a temporary socket,
//! driven by a real gRPC client (tonic, the generated stubs) and by the CLI clients run as
//! other uids. Every effect is checked from outside the sandbox: the file the agent's approved
//! program writes (or doesn't), processes alive or gone, the daemon's JSONL audit log.
#![allow(clippy::zombie_processes)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_supervisor::daemon::proto::{
    self, approval_event::Event, approvals_client::ApprovalsClient, audit_client::AuditClient,
    sessions_client::SessionsClient,
};
use agent_supervisor::daemon::{client, proto::Resolution};
use common::daemon::Daemon;
use common::{bin, is_root};
use tonic::Code;

/// Hard limit of each test.
const LIMIT: Duration = Duration::from_secs(90);
/// The uid the tests approve as (listed in [access.approve]); another one is not.
const APPROVER: u32 = 65534;
const NOT_APPROVER: u32 = 65533;
const TOKEN: &str = "s3cret-token-for-tests";

/// The daemon for these tests: uid APPROVER and the token TOKEN may answer approvals.
impl Daemon {
    fn start(name: &str) -> Daemon {
        let token_sha = sha256_hex(TOKEN);
        Daemon::start_with(
            "as-daemon",
            name,
            &format!(
                "[access.approve]\nuids = [{APPROVER}]\ntokens = [\"ci\"]\n\
                 [[token]]\nname = \"ci\"\nsha256 = \"{token_sha}\"\n"
            ),
        )
    }

    async fn channel(&self) -> tonic::transport::Channel {
        client::connect(&self.socket()).await.expect("connect")
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
        let mut c = common::supervisor_command();
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
        match s
            .message()
            .await
            .expect("approval stream")
            .expect("stream ended")
        {
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
        match s
            .message()
            .await
            .expect("approval stream")
            .expect("stream ended")
        {
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

/// Every audit record after `after_cursor` (0: from the start), replayed without following.
async fn replay(d: &Daemon, after_cursor: u64) -> Vec<proto::AuditEvent> {
    let mut stream = AuditClient::new(d.channel().await)
        .stream_audit(proto::StreamAuditRequest {
            after_cursor,
            no_follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        events.push(e);
    }
    events
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
    skip_unless!(
        is_root(),
        "the daemon tests run as root (they setuid the clients)"
    );
    let d = Daemon::start("allow");
    d.counter_script("s.sh");
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
    assert_eq!(
        execs,
        ["\"allow\" \"human\"", "\"deny\" \"human\""],
        "{audit:?}"
    );
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

#[test]
fn an_unanswered_approval_is_denied_at_its_deadline_and_cannot_be_answered_after() {
    skip_unless!(
        is_root(),
        "the daemon tests run as root (they setuid the clients)"
    );
    let d = Daemon::start("expire");
    d.counter_script("s.sh");
    let policy = d.policy("2s");
    with_limit(async {
        let mut w = watch(&d).await;
        let s = d
            .start_session(&policy, "./s.sh log; echo done > done.txt")
            .await;
        let a = next_pending(&mut w).await;
        let t0 = Instant::now();
        // While it waits, the session's broker sleeps until something happens: no wake-ups on
        // a timer (a re-check every 200 ms, as before, added five in this second).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let broker = common::SupervisorThread::of(&d.ws(), "approvals")
            .expect("the session's approvals thread");
        let before = broker.sleeps();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let woke = broker.sleeps() - before;
        assert!(woke <= 2, "the waiting broker woke up {woke} times in 1 s");
        let r = resolved(&mut w, &a.id).await;
        assert_eq!((r.decision.as_str(), r.by.as_str()), ("deny", "timeout"));
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "expired late: {:?}",
            t0.elapsed()
        );
        // Expired: an answer now fails cleanly, and says why.
        let r = d.cli_as(APPROVER, &["approve", &a.id], &[]);
        assert_eq!(r.code, Some(1), "{r:?}");
        assert!(r.stderr.contains("no longer pending"), "{r:?}");
        let end = wait_session_end(&d, &s.id).await;
        assert_eq!(end.exit_code, Some(0));
    });
    assert!(!d.ws().join("log").exists(), "an expired approval ran");
    assert!(d.ws().join("done.txt").exists());
    let denied = d
        .audit()
        .into_iter()
        .find(|r| r["kind"] == "exec" && r["action"]["argv"][0] == "./s.sh")
        .expect("the exec's record");
    assert_eq!(
        (&denied["decision"], &denied["decided_by"]),
        (&"deny".into(), &"timeout".into())
    );
}

/// An approval whose asking process is killed is withdrawn from the approval clients at once
/// (`by: gone`, the asking thread's pidfd wakes the session's broker), not at its deadline.
#[test]
fn an_approval_is_withdrawn_when_the_asking_process_is_killed() {
    skip_unless!(
        is_root(),
        "the daemon tests run as root (they setuid the clients)"
    );
    let d = Daemon::start("gone");
    d.counter_script("s.sh");
    let policy = d.policy("30s");
    with_limit(async {
        let mut w = watch(&d).await;
        let s = d
            .start_session(
                &policy,
                "./s.sh log & sleep 1; kill -9 $!; wait; echo done > done.txt",
            )
            .await;
        let a = next_pending(&mut w).await;
        let t0 = Instant::now();
        let r = resolved(&mut w, &a.id).await;
        assert_eq!((r.decision.as_str(), r.by.as_str()), ("deny", "gone"));
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "withdrawn only after {:?} (the deadline is 30 s)",
            t0.elapsed()
        );
        let end = wait_session_end(&d, &s.id).await;
        assert_eq!(end.exit_code, Some(0));
    });
    assert!(!d.ws().join("log").exists(), "the withdrawn approval ran");
    assert!(d.ws().join("done.txt").exists());
}

#[test]
fn answers_are_bound_to_the_approval_and_its_action_and_the_first_one_wins() {
    skip_unless!(
        is_root(),
        "the daemon tests run as root (they setuid the clients)"
    );
    let d = Daemon::start("bound");
    d.counter_script("s.sh");
    let policy = d.policy("30s");
    with_limit(async {
        let mut w = watch(&d).await;
        let s = d
            .start_session(&policy, "./s.sh log; echo done > done.txt")
            .await;
        let a = next_pending(&mut w).await;
        // A second watcher sees what was already waiting, then `synced`.
        let mut w2 = watch(&d).await;
        let first = w2.message().await.unwrap().unwrap();
        assert!(
            matches!(first.event, Some(Event::Pending(ref p)) if p.id == a.id),
            "{first:?}"
        );
        let second = w2.message().await.unwrap().unwrap();
        assert!(
            matches!(second.event, Some(Event::Synced(true))),
            "{second:?}"
        );
        // Unknown approvals, and approvals of a session that doesn't exist.
        let mut c = ApprovalsClient::new(d.channel().await);
        for id in [format!("{}-a999", s.id), "nope".to_string()] {
            let e = c
                .resolve(proto::ResolveRequest {
                    id,
                    action_digest: a.action_digest.clone(),
                    resolution: Resolution::AllowOnce as i32,
                })
                .await
                .unwrap_err();
            assert!(
                matches!(
                    e.code(),
                    Code::NotFound | Code::FailedPrecondition | Code::PermissionDenied
                ),
                "{e:?}"
            );
        }
        // Two approvers race with the right digest; another uses a wrong one (another action).
        // Only the CLI can be another uid: the token gives root's own client no right to
        // answer its own session either.
        let token = [("AGENT_SUPERVISOR_TOKEN", TOKEN)];
        let r = d.cli_as(0, &["approve", &a.id], &token);
        assert_eq!(
            r.code,
            Some(1),
            "a token does not make the session's uid an approver: {r:?}"
        );
        let sock = d.socket();
        let id = a.id.clone();
        let racers: Vec<_> = (0..2)
            .map(|i| {
                let mut c = common::supervisor_command();
                c.args([if i == 0 { "approve" } else { "deny" }, &id])
                    .arg("--socket")
                    .arg(&sock)
                    .uid(APPROVER)
                    .gid(APPROVER)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                c.spawn().unwrap()
            })
            .collect();
        let codes: Vec<i32> = racers
            .into_iter()
            .map(|c| c.wait_with_output().unwrap().status.code().unwrap())
            .collect();
        let mut sorted = codes.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 1], "exactly one answer wins: {codes:?}");
        let r = resolved(&mut w, &a.id).await;
        let allowed = r.decision == "allow";
        assert_eq!(
            allowed,
            codes[0] == 0,
            "the winner's answer is the one applied"
        );
        wait_session_end(&d, &s.id).await;
        assert_eq!(d.ws().join("log").exists(), allowed);
    });
    let answers = d
        .audit()
        .into_iter()
        .filter(|r| r["kind"] == "approval")
        .count();
    assert_eq!(answers, 1);
}

#[test]
fn a_wrong_digest_is_refused_and_a_bad_token_is_unauthenticated() {
    skip_unless!(
        is_root(),
        "the daemon tests run as root (they setuid the clients)"
    );
    let d = Daemon::start("digest");
    d.counter_script("s.sh");
    let policy = d.policy("30s");
    with_limit(async {
        let mut w = watch(&d).await;
        let s = d.start_session(&policy, "./s.sh log").await;
        let a = next_pending(&mut w).await;
        // Bad token: refused before anything else, whoever the uid.
        let r = d.cli_as(
            APPROVER,
            &["approve", &a.id],
            &[("AGENT_SUPERVISOR_TOKEN", "wrong")],
        );
        assert_eq!(r.code, Some(125), "{r:?}");
        assert!(r.stderr.contains("Unauthenticated"), "{r:?}");
        let r = d.cli_as(
            APPROVER,
            &["sessions"],
            &[("AGENT_SUPERVISOR_TOKEN", "wrong")],
        );
        assert_eq!(r.code, Some(125), "{r:?}");
        // An approver answering for another action (its digest): refused, nothing runs.
        let other = agent_supervisor::daemon::state::action_digest(
            &a.session,
            &a.id,
            &a.kind,
            "{\"argv\":[\"./other\"]}",
        );
        let r = d.cli_as(APPROVER, &["approve", &a.id, "--digest", &other], &[]);
        assert_eq!(r.code, Some(1), "{r:?}");
        assert!(r.stderr.contains("does not match"), "{r:?}");
        // Root with the approvers' token is still the session's own uid.
        let e = {
            let mut c = ApprovalsClient::new(d.channel().await);
            let mut req = tonic::Request::new(proto::ResolveRequest {
                id: a.id.clone(),
                action_digest: a.action_digest.clone(),
                resolution: Resolution::AllowOnce as i32,
            });
            req.metadata_mut()
                .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
            c.resolve(req).await.unwrap_err()
        };
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(!d.ws().join("log").exists());
        // The uid that is not an approver, with the approvers' token: allowed by the token.
        let r = d.cli_as(
            NOT_APPROVER,
            &["approve", &a.id],
            &[("AGENT_SUPERVISOR_TOKEN", TOKEN)],
        );
        assert_eq!(r.code, Some(0), "the token's approve role: {r:?}");
        wait_session_end(&d, &s.id).await;
    });
    assert_eq!(lines(&d.ws().join("log")), 1);
    let approver = d
        .audit()
        .into_iter()
        .find(|r| r["kind"] == "approval")
        .expect("approval record");
    assert_eq!(
        approver["action"]["approver"],
        format!("uid {NOT_APPROVER} token ci")
    );
}

#[test]
fn a_token_in_the_sessions_environment_never_approves_that_session() {
    skip_unless!(
        is_root(),
        "the daemon tests run as root (they setuid the clients)"
    );
    let d = Daemon::start("taint");
    d.counter_script("s.sh");
    let policy = d.policy("30s");
    with_limit(async {
        let mut w = watch(&d).await;
        let mut c = SessionsClient::new(d.channel().await);
        let s = c
            .start_session(proto::StartSessionRequest {
                command: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "env > env.txt; ./s.sh log".into(),
                ],
                workspace: d.ws().display().to_string(),
                policy: policy.clone(),
                env: vec![
                    "PATH=/usr/bin:/bin".into(),
                    format!("APPROVAL_TOKEN={TOKEN}"),
                    "LD_PRELOAD=/nonexistent/inject.so".into(),
                ],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let a = next_pending(&mut w).await;
        assert_eq!(a.session, s.id);
        let r = d.cli_as(
            NOT_APPROVER,
            &["approve", &a.id],
            &[("AGENT_SUPERVISOR_TOKEN", TOKEN)],
        );
        assert_eq!(r.code, Some(1), "{r:?}");
        assert!(r.stderr.contains("environment"), "{r:?}");
        assert!(!d.ws().join("log").exists());
        // Malformed environment entries are an error, not a crash.
        let e = c
            .start_session(proto::StartSessionRequest {
                command: vec!["/bin/true".into()],
                workspace: d.ws().display().to_string(),
                env: vec!["NOEQUALS".into()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let r = d.cli_as(APPROVER, &["deny", &a.id], &[]);
        assert_eq!(r.code, Some(0), "{r:?}");
        wait_session_end(&d, &s.id).await;
    });
    assert!(!d.ws().join("log").exists());
    // The environment reached the agent, without the loader's variables.
    let env = std::fs::read_to_string(d.ws().join("env.txt")).unwrap();
    assert!(env.contains(&format!("APPROVAL_TOKEN={TOKEN}")), "{env}");
    assert!(!env.contains("LD_PRELOAD"), "{env}");
}

#[test]
fn the_audit_stream_replays_from_a_cursor_after_a_reconnect_and_loses_nothing() {
    skip_unless!(
        is_root(),
        "the daemon tests run as root (they setuid the clients)"
    );
    let d = Daemon::start("audit");
    let policy = d.policy("30s");
    with_limit(async {
        // A follower attached from the start, and a first session.
        let mut c = AuditClient::new(d.channel().await);
        let mut follow = c
            .stream_audit(proto::StreamAuditRequest::default())
            .await
            .unwrap()
            .into_inner();
        let s1 = d.start_session(&policy, "echo one > one.txt").await;
        wait_session_end(&d, &s1.id).await;
        // Read until s1's session-end; remember the cursor of some record in the middle.
        let mut got = Vec::new();
        loop {
            let e = follow.message().await.unwrap().expect("stream open");
            let end = e.kind == "session-end" && e.session == s1.id;
            got.push(e);
            if end {
                break;
            }
        }
        assert!(got.len() >= 3, "{got:?}");
        let cut = got[got.len() / 2].cursor;
        drop(follow);
        // While disconnected: a second session writes more.
        let s2 = d.start_session(&policy, "echo two > two.txt").await;
        wait_session_end(&d, &s2.id).await;
        // Reconnect after the cursor: exactly the rest of the log, in order, as written.
        let replayed = replay(&d, cut).await;
        let file = std::fs::read_to_string(d.dir.join("log/audit.jsonl")).unwrap();
        let expected: Vec<&str> = file[cut as usize..].lines().collect();
        let json: Vec<&str> = replayed.iter().map(|e| e.json.as_str()).collect();
        assert_eq!(json, expected, "the replay is the log after the cursor");
        assert!(json.iter().any(|l| l.contains(&s2.id)), "{json:?}");
        assert_eq!(replayed.last().unwrap().cursor as usize, file.len());
        // Nothing lost, nothing twice: what the first stream got up to `cut` plus the replay
        // is the whole log.
        let mut all: Vec<String> = got
            .iter()
            .take_while(|e| e.cursor <= cut)
            .map(|e| e.json.clone())
            .collect();
        all.extend(json.iter().map(|s| s.to_string()));
        assert_eq!(all, file.lines().map(str::to_string).collect::<Vec<_>>());
        // Filters.
        let mut f = c
            .stream_audit(proto::StreamAuditRequest {
                session: s2.id.clone(),
                kind: "session-end".into(),
                no_follow: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let only = f.message().await.unwrap().expect("one record");
        assert_eq!(
            (only.session.as_str(), only.kind.as_str()),
            (s2.id.as_str(), "session-end")
        );
        assert!(f.message().await.unwrap().is_none());
        // A cursor that is no record boundary, or beyond the end: an error, not a guess.
        for bad in [cut - 1, file.len() as u64 + 10] {
            let e = c
                .stream_audit(proto::StreamAuditRequest {
                    after_cursor: bad,
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
        }
    });
    // The CLI shows the same records.
    let r = d.cli_as(0, &["audit", "tail", "--json"], &[]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(r.stdout.lines().collect::<Vec<_>>(), d.audit_lines());
}

#[test]
fn kill_ends_the_agent_and_is_recorded() {
    skip_unless!(
        is_root(),
        "the daemon tests run as root (they setuid the clients)"
    );
    let d = Daemon::start("kill");
    let policy = d.policy("30s");
    let marker = format!("as-daemon-kill-marker-{}", std::process::id());
    with_limit(async {
        let s = d
            .start_session(&policy, &format!("sleep 1000; : {marker}"))
            .await;
        let start = Instant::now();
        while !common::process_alive_with_marker(&marker) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the agent never ran"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Another uid may neither see nor kill it.
        let r = d.cli_as(NOT_APPROVER, &["sessions"], &[]);
        assert_eq!(r.code, Some(0), "{r:?}");
        assert!(!r.stdout.contains(&s.id), "{r:?}");
        let mut c = SessionsClient::new(d.channel().await);
        let k = c
            .kill_session(proto::KillSessionRequest { id: s.id.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(k.id, s.id);
        let end = wait_session_end(&d, &s.id).await;
        assert_eq!(end.state, "killed");
        let start = Instant::now();
        while common::process_alive_with_marker(&marker) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the agent outlived kill"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let e = c
            .kill_session(proto::KillSessionRequest { id: "nope".into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let r = d.cli_as(0, &["sessions", "--json"], &[]);
        let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
        assert_eq!(v["state"], "killed", "{r:?}");
    });
    let end = d
        .audit()
        .into_iter()
        .find(|r| r["kind"] == "session-end")
        .expect("session-end");
    assert_eq!(end["action"]["killed_by"], "uid 0");
}

#[test]
fn a_daemon_killed_while_an_approval_waits_takes_the_agent_with_it_and_nothing_is_allowed() {
    skip_unless!(
        is_root(),
        "the daemon tests run as root (they setuid the clients)"
    );
    let mut d = Daemon::start("crash");
    d.counter_script("s.sh");
    let policy = d.policy("30s");
    let marker = format!("as-daemon-crash-marker-{}", std::process::id());
    let (session, approval) = {
        let d = &d;
        let marker = marker.clone();
        rt().block_on(async move {
            let mut w = watch(d).await;
            let s = d
                .start_session(&policy, &format!("./s.sh log; sleep 1000 {marker}"))
                .await;
            let a = next_pending(&mut w).await;
            (s, a)
        })
    };
    let agent_alive = |m: &str| {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(m))
                .unwrap_or(false)
        })
    };
    let supervisor_marker = format!("--session-id\0{}", session.id);
    assert!(agent_alive(&supervisor_marker));
    d.sigkill();
    // The session's supervisor and the sandbox die with the daemon.
    let start = Instant::now();
    while agent_alive(&supervisor_marker) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the session outlived the daemon"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !agent_alive(&marker),
        "the agent went on after the daemon died"
    );
    assert!(!d.ws().join("log").exists(), "the waiting action ran");
    // The next daemon records the session as killed; the old approval is gone for good.
    d.restart();
    with_limit(async {
        let r = d.cli_as(APPROVER, &["approve", &approval.id], &[]);
        assert_eq!(r.code, Some(1), "{r:?}");
    });
    assert!(!d.ws().join("log").exists());
    let audit = d.audit();
    let end = audit
        .iter()
        .find(|r| r["kind"] == "session-end" && r["session"] == session.id.as_str())
        .unwrap_or_else(|| panic!("no session-end: {audit:?}"));
    assert_eq!(end["action"]["killed_by"], "daemon-restart");
    assert!(
        !audit
            .iter()
            .any(|r| r["decision"] == "allow" && r["action"]["argv"][0] == "./s.sh"),
        "{audit:?}"
    );
    assert!(!d
        .dir
        .join(format!("state/sessions/{}.json", session.id))
        .exists());
    // Nothing of the old session runs in its cgroups (the v2 one, and on hybrid hosts the v1
    // ones under our own cgroups; a SIGKILLed supervisor leaves the empty directories for the
    // next session to sweep).
    for procs in old_session_cgroup_procs(&session.id) {
        let left = std::fs::read_to_string(&procs).unwrap_or_default();
        assert!(
            left.trim().is_empty(),
            "{} still lists {left}",
            procs.display()
        );
        // Ours to clean up: the killed supervisor could not.
        if let Some(dir) = procs.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The `cgroup.procs` files of session `id`'s cgroups that exist.
fn old_session_cgroup_procs(id: &str) -> Vec<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut dirs = Vec::new();
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.get(2) {
            Some(&"cgroup2") => dirs.push(std::path::Path::new(f[1]).join("agent-supervisor")),
            Some(&"cgroup") => {
                for line in own.lines() {
                    let parts: Vec<&str> = line.splitn(3, ':').collect();
                    if parts.len() == 3
                        && parts[1].split(',').any(|c| f[3].split(',').any(|o| o == c))
                    {
                        dirs.push(
                            std::path::Path::new(f[1])
                                .join(parts[2].trim_start_matches('/'))
                                .join("agent-supervisor"),
                        );
                    }
                }
            }
            _ => {}
        }
    }
    dirs.into_iter()
        .map(|d| d.join(id).join("cgroup.procs"))
        .filter(|p| p.exists())
        .collect()
}

/// Sends bytes as they are (a malformed message), reads the reply as bytes.
#[derive(Default, Clone)]
struct Raw;

struct RawEnc;
struct RawDec;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEnc;
    type Decoder = RawDec;
    fn encoder(&mut self) -> RawEnc {
        RawEnc
    }
    fn decoder(&mut self) -> RawDec {
        RawDec
    }
}

impl tonic::codec::Encoder for RawEnc {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let v = src.chunk().to_vec();
        src.advance(v.len());
        Ok(Some(v))
    }
}

async fn healthy(d: &Daemon) {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let r = HealthClient::new(d.channel().await)
        .check(HealthCheckRequest {
            service: "agent_supervisor.v1.Sessions".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(r.status, 1, "SERVING");
}

#[test]
fn malformed_and_oversized_messages_get_grpc_errors_and_the_daemon_stays_up() {
    skip_unless!(is_root(), "the daemon tests run as root");
    let d = Daemon::start("malformed");
    with_limit(async {
        healthy(&d).await;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            // Field 1 (command), length-delimited, length far beyond the buffer.
            (
                "/agent_supervisor.v1.Sessions/StartSession",
                vec![0x0a, 0xff, 0xff, 0xff, 0x0f],
            ),
            // A truncated varint.
            ("/agent_supervisor.v1.Approvals/Resolve", vec![0x18, 0xff]),
            // Invalid UTF-8 in a string field.
            (
                "/agent_supervisor.v1.Approvals/Resolve",
                vec![0x0a, 0x02, 0xc3, 0x28],
            ),
            // Wire type 7 does not exist.
            ("/agent_supervisor.v1.Sessions/GetSession", vec![0x0f]),
            // An unknown method.
            ("/agent_supervisor.v1.Sessions/Nope", vec![]),
        ];
        for (path, body) in cases {
            let mut g = tonic::client::Grpc::new(d.channel().await);
            g.ready().await.unwrap();
            let e = g
                .unary(
                    tonic::Request::new(body.clone()),
                    tonic::codegen::http::uri::PathAndQuery::from_static(path),
                    Raw,
                )
                .await
                .expect_err("a malformed message must fail");
            assert!(
                matches!(
                    e.code(),
                    Code::Internal | Code::InvalidArgument | Code::Unimplemented
                ),
                "{path} {body:?}: {e:?}"
            );
        }
        // Oversized (the limit is 1 MiB): refused before it is decoded.
        let mut c = SessionsClient::new(d.channel().await);
        let e = c
            .start_session(proto::StartSessionRequest {
                command: vec!["x".repeat(2 << 20)],
                workspace: "/".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(e.code(), Code::ResourceExhausted | Code::OutOfRange),
            "{e:?}"
        );
        // Well-formed but wrong: clear errors.
        for (req, want) in [
            (proto::StartSessionRequest::default(), Code::InvalidArgument),
            (
                proto::StartSessionRequest {
                    command: vec!["/bin/true".into()],
                    workspace: "relative".into(),
                    ..Default::default()
                },
                Code::InvalidArgument,
            ),
            (
                proto::StartSessionRequest {
                    command: vec!["/bin/true".into()],
                    workspace: "/".into(),
                    policy: "relative.toml".into(),
                    ..Default::default()
                },
                Code::InvalidArgument,
            ),
        ] {
            let e = c.start_session(req).await.unwrap_err();
            assert_eq!(e.code(), want, "{e:?}");
        }
        let e = ApprovalsClient::new(d.channel().await)
            .resolve(proto::ResolveRequest {
                id: "x-a1".into(),
                action_digest: String::new(),
                resolution: 99,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        // A broken policy through Validate: an answer, with the place of the error.
        let v = proto::policy_client::PolicyClient::new(d.channel().await)
            .validate(proto::ValidatePolicyRequest {
                toml: "version = 1\ndefault = \"alow\"\n".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!v.ok);
        assert!(v.error.contains("alow"), "{v:?}");
        healthy(&d).await;
    });
    assert!(
        d.stderr().lines().all(|l| !l.contains("panicked")),
        "{}",
        d.stderr()
    );
}

#[test]
fn health_and_reflection_answer_for_grpcurl() {
    skip_unless!(is_root(), "the daemon tests run as root");
    let d = Daemon::start("reflect");
    with_limit(async {
        healthy(&d).await;
        use tonic_reflection::pb::v1::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut s = ServerReflectionClient::new(d.channel().await)
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let r = s.message().await.unwrap().expect("a reply");
        let Some(MessageResponse::ListServicesResponse(list)) = r.message_response else {
            panic!("{r:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for want in [
            "agent_supervisor.v1.Sessions",
            "agent_supervisor.v1.Approvals",
            "agent_supervisor.v1.Audit",
            "agent_supervisor.v1.Policy",
            "grpc.health.v1.Health",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
    });
}

/// One health check in raw HTTP/2 over the API socket with `authority` as `:authority` (as
/// grpcio, grpc-java and others send it over a unix socket): the health response's bytes, or
/// the RST_STREAM error code.
fn raw_health_check(socket: &Path, authority: &str) -> Result<Vec<u8>, u32> {
    use std::io::{Read, Write};
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }
    let mut conn = std::os::unix::net::UnixStream::connect(socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut hpack = loona_hpack::Encoder::new();
    let block = hpack.encode([
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":path", b"/grpc.health.v1.Health/Check"),
        (b":authority", authority.as_bytes()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    out.extend(frame(0x1, 0x4, 1, &block)); // HEADERS, END_HEADERS
    out.extend(frame(0x0, 0x1, 1, &[0; 5])); // DATA, END_STREAM: an empty HealthCheckRequest
    conn.write_all(&out).unwrap();
    loop {
        let mut h = [0u8; 9];
        conn.read_exact(&mut h).expect("the daemon answers");
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let mut payload = vec![0; len];
        conn.read_exact(&mut payload).unwrap();
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
        match (h[3], stream) {
            (0x4, 0) if h[4] & 1 == 0 => conn.write_all(&frame(0x4, 1, 0, &[])).unwrap(),
            (0x0, 1) => return Ok(payload),
            (0x3, 1) => return Err(u32::from_be_bytes(payload[..4].try_into().unwrap())),
            _ => {}
        }
    }
}

#[test]
fn clients_sending_the_socket_path_as_authority_are_answered() {
    skip_unless!(is_root(), "the daemon tests run as root");
    let d = Daemon::start("authority");
    let path = d.socket().display().to_string();
    let encoded = path.trim_start_matches('/').replace('/', "%2F");
    // grpcio since 1.57 (percent-encoded, as captured from grpcio 1.85.1), grpc-java (the
    // path), `unix:` URIs, nothing, and the usual `localhost`.
    for authority in [
        encoded.as_str(),
        &format!("%2F{encoded}"),
        &path,
        &format!("unix:{path}"),
        "",
        "localhost",
    ] {
        // SERVING: a gRPC message of 2 bytes, field 1 = 1.
        assert_eq!(
            raw_health_check(&d.socket(), authority),
            Ok(vec![0, 0, 0, 0, 2, 0x08, 0x01]),
            "authority {authority:?}"
        );
    }
}

#[test]
fn run_through_the_daemon_keeps_the_callers_stdio_and_exit_code() {
    skip_unless!(is_root(), "the daemon tests run as root");
    let d = Daemon::start("run");
    d.counter_script("s.sh");
    let policy = d.policy("30s");
    // stdin, stdout, stderr are the caller's; the agent's exit code is ours; an ask is answered
    // by an approver meanwhile.
    let mut c = common::supervisor_command();
    c.args(["run", "--daemon", "--policy", &policy, "--socket"])
        .arg(d.socket())
        .args([
            "--",
            "/bin/sh",
            "-c",
            "read x; echo \"got $x\" > in.txt; echo out; echo err >&2; ./s.sh log; exit 7",
        ])
        .current_dir(d.ws())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    }
    with_limit(async {
        let mut w = watch(&d).await;
        let a = next_pending(&mut w).await;
        let r = d.cli_as(APPROVER, &["approve", &a.id], &[]);
        assert_eq!(r.code, Some(0), "{r:?}");
    });
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{stdout}\n{stderr}\n{}",
        d.stderr()
    );
    assert_eq!(stdout, "out\n");
    assert!(stderr.contains("err\n"), "{stderr}");
    assert!(stderr.contains("session "), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(d.ws().join("in.txt")).unwrap(),
        "got hello\n"
    );
    assert_eq!(lines(&d.ws().join("log")), 1);
}

#[test]
fn a_run_client_that_goes_away_takes_its_session_with_it_and_stdio_tokens_are_single_use() {
    skip_unless!(is_root(), "the daemon tests run as root");
    let d = Daemon::start("detach");
    let policy = d.policy("30s");
    let marker = format!("as-daemon-detach-marker-{}", std::process::id());
    let mut c = common::supervisor_command();
    c.args(["run", "--daemon", "--policy", &policy, "--socket"])
        .arg(d.socket())
        // The marker reaches the agent through the environment: only the agent's inner shell
        // has it on its command line, not the client.
        .args([
            "--",
            "/bin/sh",
            "-c",
            "exec /bin/sh -c 'sleep 1000; : \"$0\"' \"$MARKER\"",
        ])
        .env("MARKER", &marker)
        .current_dir(d.ws())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let start = Instant::now();
    while !common::process_alive_with_marker(&marker) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the agent never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let start = Instant::now();
    while common::process_alive_with_marker(&marker) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the agent outlived its client"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    with_limit(async {
        let (_conn, token) = agent_supervisor::daemon::stdio::hand_over(&d.socket()).unwrap();
        let mut c = SessionsClient::new(d.channel().await);
        let req = proto::StartSessionRequest {
            command: vec!["/bin/true".into()],
            workspace: d.ws().display().to_string(),
            policy: policy.clone(),
            stdio_token: token,
            ..Default::default()
        };
        let s = c.start_session(req.clone()).await.unwrap().into_inner();
        let e = c.start_session(req).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        wait_session_end(&d, &s.id).await;
    });
    let killed = d
        .audit()
        .into_iter()
        .find(|r| r["kind"] == "session-end" && r["action"]["killed_by"] == "client-detached");
    assert!(killed.is_some(), "{:?}", d.audit());
}

#[test]
fn a_session_runs_as_its_caller_and_another_uid_answers_its_approvals() {
    skip_unless!(is_root(), "the daemon tests run as root");
    let mut d = Daemon::start("asuser");
    // Uid APPROVER may start sessions too.
    d.reconfigure(&format!("[access.start]\nuids = [{APPROVER}]\n"));
    d.counter_script("s.sh");
    std::os::unix::fs::chown(d.ws(), Some(APPROVER), Some(APPROVER)).unwrap();
    let policy = d.policy("30s");
    let mut c = common::supervisor_command();
    c.args(["run", "--daemon", "--policy", &policy, "--socket"])
        .arg(d.socket())
        .args(["--", "/bin/sh", "-c", "./s.sh log; id -u > uid.txt"])
        .current_dir(d.ws())
        .env("HOME", d.ws())
        .uid(APPROVER)
        .gid(APPROVER)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    with_limit(async {
        let mut w = watch(&d).await;
        let a = next_pending(&mut w).await;
        // Its own uid can't answer it; root (an approver, not the session's uid) can.
        let r = d.cli_as(APPROVER, &["approve", &a.id], &[]);
        assert_eq!(r.code, Some(1), "{r:?}");
        assert!(r.stderr.contains("session's own"), "{r:?}");
        resolve(&d, &a, &a.action_digest, Resolution::AllowOnce)
            .await
            .expect("root answers another user's session");
    });
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // From outside: the files belong to the caller, and the agent ran as the caller.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(d.ws().join("log")).unwrap().uid(),
        APPROVER
    );
    assert_eq!(
        std::fs::read_to_string(d.ws().join("uid.txt"))
            .unwrap()
            .trim(),
        APPROVER.to_string()
    );
}

/// The load test of the issue: 50 concurrent sessions, each making 1,000 decided actions
/// (connects, decided by the policy; one in a hundred asks and is answered by an approval
/// client attached to the daemon), with an audit follower attached. Checks that every
/// decision is in the log and in the stream (none lost) and prints decisions per second and
/// approval round-trip latencies (trap to decision, through daemon and client; no human).
/// Scale with AS_LOAD_SESSIONS / AS_LOAD_ACTIONS.
#[test]
fn load_50_sessions_of_1000_decisions_with_an_approval_client_attached() {
    skip_unless!(is_root(), "the daemon tests run as root");
    skip_unless!(
        Path::new("/usr/bin/python3").exists(),
        "no /usr/bin/python3 for the load agents"
    );
    let env_n = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let sessions = env_n("AS_LOAD_SESSIONS", 50);
    let actions = env_n("AS_LOAD_ACTIONS", 1000);
    let mut d = Daemon::start("load");
    // Uid APPROVER may start sessions too.
    d.reconfigure(&format!("[access.start]\nuids = [{APPROVER}]\n"));
    // Two closed local ports: connects are decided, then refused by the kernel.
    let port = |_| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (p_allow, p_ask) = (port(0), port(1));
    let policy = d.dir.join("load-policy.toml");
    std::fs::write(
        &policy,
        format!(
            "version = 1\nextends = \"sandboxed\"\napproval_timeout = \"120s\"\n\
             [[rule]]\ndecision = \"allow\"\nnetwork = \"127.0.0.1:{p_allow}\"\n\
             [[rule]]\ndecision = \"ask\"\nnetwork = \"127.0.0.1:{p_ask}\"\n"
        ),
    )
    .unwrap();
    let agent = d.dir.join("agent.py");
    std::fs::write(
        &agent,
        format!(
            "import socket\nfor i in range({actions}):\n    s = socket.socket()\n    \
             port = {p_ask} if i % 100 == 99 else {p_allow}\n    \
             try:\n        s.connect(('127.0.0.1', port))\n    except OSError:\n        pass\n    \
             s.close()\n"
        ),
    )
    .unwrap();
    let stats = rt().block_on(async {
        tokio::time::timeout(Duration::from_secs(600), async {
            // The approval client: answers every ask at once, measuring its own round trip.
            let approver = {
                let mut w = watch(&d).await;
                let ch = d.channel().await;
                tokio::spawn(async move {
                    let c = ApprovalsClient::new(ch);
                    let mut calls = Vec::new();
                    while let Ok(Some(e)) = w.message().await {
                        if let Some(Event::Pending(a)) = e.event {
                            let mut c = c.clone();
                            calls.push(tokio::spawn(async move {
                                let t = Instant::now();
                                c.resolve(proto::ResolveRequest {
                                    id: a.id,
                                    action_digest: a.action_digest,
                                    resolution: Resolution::AllowOnce as i32,
                                })
                                .await
                                .expect("resolve");
                                t.elapsed()
                            }));
                        }
                    }
                    let mut rtts = Vec::new();
                    for c in calls {
                        rtts.push(c.await.unwrap());
                    }
                    rtts
                })
            };
            // The audit follower, from the start of the log.
            let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let follower = {
                let mut c = AuditClient::new(d.channel().await);
                let mut s = c
                    .stream_audit(proto::StreamAuditRequest::default())
                    .await
                    .unwrap()
                    .into_inner();
                let seen = std::sync::Arc::clone(&seen);
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    while let Ok(Some(e)) = s.message().await {
                        got.push(e.json);
                        seen.store(got.len(), std::sync::atomic::Ordering::SeqCst);
                    }
                    got
                })
            };
            let t0 = Instant::now();
            let mut clients = Vec::new();
            for i in 0..sessions {
                let ws = d.dir.join(format!("ws{i}"));
                std::fs::create_dir_all(&ws).unwrap();
                std::os::unix::fs::chown(&ws, Some(APPROVER), Some(APPROVER)).unwrap();
                let mut c = common::supervisor_command();
                c.args(["run", "--daemon", "-q", "--policy"])
                    .arg(&policy)
                    .arg("--socket")
                    .arg(d.socket())
                    .args(["--", "/usr/bin/python3"])
                    .arg(&agent)
                    .current_dir(&ws)
                    .env("HOME", &ws)
                    .uid(APPROVER)
                    .gid(APPROVER)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                let child = c.spawn().unwrap();
                clients.push(tokio::task::spawn_blocking(move || {
                    child.wait_with_output()
                }));
            }
            for c in clients {
                let out = c.await.unwrap().unwrap();
                assert_eq!(out.status.code(), Some(0), "{out:?}");
            }
            let wall = t0.elapsed();
            // Every session ended (its last records are in), then the follower has caught
            // up with the whole log; then stop the daemon (which ends the streams).
            let mut sc = SessionsClient::new(d.channel().await);
            loop {
                let list = sc
                    .list_sessions(proto::ListSessionsRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .sessions;
                if list.len() == sessions && list.iter().all(|s| s.state == "exited") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let lines_in_file = d.audit_lines().len();
            let t = Instant::now();
            while seen.load(std::sync::atomic::Ordering::SeqCst) < lines_in_file
                && t.elapsed() < Duration::from_secs(60)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let end = d.audit_lines().len();
            assert_eq!(end, lines_in_file, "the log grew after every session ended");
            d.sigkill();
            let streamed = follower.await.unwrap();
            let rtts = approver.await.unwrap();
            (wall, end, lines_in_file, streamed, rtts)
        })
        .await
        .expect("the load test hit its 600 s limit")
    });
    let (wall, _end, lines_in_file, streamed, mut client_rtts) = stats;
    let audit = d.audit();
    let connects: Vec<&serde_json::Value> =
        audit.iter().filter(|r| r["kind"] == "connect").collect();
    let decisions = audit.iter().filter(|r| r["decision"].is_string()).count();
    let asks = actions / 100;
    assert_eq!(
        connects.len(),
        sessions * actions,
        "every connect decided and recorded"
    );
    let human: Vec<u64> = connects
        .iter()
        .filter(|r| r["decided_by"] == "human")
        .map(|r| r["response_us"].as_u64().unwrap())
        .collect();
    assert_eq!(
        human.len(),
        sessions * asks,
        "every ask answered by the client"
    );
    assert!(connects.iter().all(|r| r["decision"] == "allow"));
    // Nothing lost: the stream has every line of the log, in order; each session's record
    // ids are contiguous.
    assert_eq!(
        streamed.len(),
        lines_in_file,
        "events lost between log and stream"
    );
    assert_eq!(streamed, d.audit_lines()[..lines_in_file]);
    let mut by_session: std::collections::HashMap<String, Vec<u64>> = Default::default();
    for r in &audit {
        let (Some(s), Some(id)) = (r["session"].as_str(), r["id"].as_str()) else {
            continue;
        };
        if let Some(n) = id
            .strip_prefix(&format!("{s}-"))
            .and_then(|n| n.parse().ok())
        {
            by_session.entry(s.to_string()).or_default().push(n);
        }
    }
    assert_eq!(by_session.len(), sessions);
    for (s, ids) in &by_session {
        let want: Vec<u64> = (1..=ids.len() as u64).collect();
        assert_eq!(ids, &want, "session {s}: records missing from the log");
    }
    let pct = |v: &mut Vec<u64>, p: f64| {
        v.sort();
        v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
    };
    let mut human_us = human.clone();
    client_rtts.sort();
    let mut client_us: Vec<u64> = client_rtts.iter().map(|d| d.as_micros() as u64).collect();
    println!(
        "load: {sessions} sessions x {actions} connects ({} asks answered by the client) in {:.1} s: \
         {decisions} decisions, {:.0} decisions/s; approval round trip (trap to decision) p50 {} us, \
         p99 {} us; client resolve call p50 {} us, p99 {} us; audit lines {lines_in_file}, streamed {}, lost 0",
        sessions * asks,
        wall.as_secs_f64(),
        decisions as f64 / wall.as_secs_f64(),
        pct(&mut human_us, 0.50),
        pct(&mut human_us, 0.99),
        pct(&mut client_us, 0.50),
        pct(&mut client_us, 0.99),
        streamed.len(),
    );
}

/// A CA, a server certificate for `localhost` and a client certificate (PEM): (ca, server
/// cert, server key, client cert, client key).
fn certificates() -> (String, String, String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let srv_key = KeyPair::generate().unwrap();
    let srv = CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&srv_key, &ca, &ca_key)
        .unwrap();
    let cli_key = KeyPair::generate().unwrap();
    let cli = CertificateParams::new(vec!["approver".into()])
        .unwrap()
        .signed_by(&cli_key, &ca, &ca_key)
        .unwrap();
    (
        ca.pem(),
        srv.pem(),
        srv_key.serialize_pem(),
        cli.pem(),
        cli_key.serialize_pem(),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn tls_channel(
    port: u16,
    ca: &str,
    client: Option<(&str, &str)>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://localhost:{port}"))?
        .tls_config(tls)?
        .connect()
        .await
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[test]
fn over_tcp_only_tls_with_a_token_gets_in_and_a_token_can_approve() {
    skip_unless!(is_root(), "the daemon tests run as root");
    let mut d = Daemon::start("tls");
    let (ca, cert, key, _, _) = certificates();
    for (name, pem) in [("ca.pem", &ca), ("server.pem", &cert), ("server.key", &key)] {
        std::fs::write(d.dir.join(name), pem).unwrap();
    }
    let port = free_port();
    d.reconfigure(&format!(
        "[tcp]\nlisten = \"127.0.0.1:{port}\"\ncert = \"{0}/server.pem\"\nkey = \"{0}/server.key\"\n",
        d.dir.display()
    ));
    d.counter_script("s.sh");
    let policy = d.policy("30s");
    with_limit(async {
        // Plain text to the TLS port: no answer.
        let plain: Result<(), String> = async {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            SessionsClient::new(ch)
                .list_sessions(with_token(proto::ListSessionsRequest {}, TOKEN))
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        }
        .await;
        assert!(plain.is_err(), "a plain-text request got an answer");
        let ch = tls_channel(port, &ca, None).await.expect("TLS connect");
        let mut sessions = SessionsClient::new(ch.clone());
        // TLS without a token, or with a bad one: refused.
        let e = sessions
            .list_sessions(proto::ListSessionsRequest {})
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        let e = sessions
            .list_sessions(with_token(proto::ListSessionsRequest {}, "wrong"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        // With the token: it sees, it may not start (no uid to run as), it approves.
        sessions
            .list_sessions(with_token(proto::ListSessionsRequest {}, TOKEN))
            .await
            .expect("the token's view");
        let e = sessions
            .start_session(with_token(
                proto::StartSessionRequest {
                    command: vec!["/bin/true".into()],
                    workspace: d.ws().display().to_string(),
                    ..Default::default()
                },
                TOKEN,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        let mut w = ApprovalsClient::new(ch.clone())
            .watch_approvals(with_token(proto::WatchApprovalsRequest::default(), TOKEN))
            .await
            .unwrap()
            .into_inner();
        let s = d.start_session(&policy, "./s.sh log").await;
        let a = next_pending(&mut w).await;
        assert_eq!(a.session, s.id);
        ApprovalsClient::new(ch)
            .resolve(with_token(
                proto::ResolveRequest {
                    id: a.id.clone(),
                    action_digest: a.action_digest.clone(),
                    resolution: Resolution::AllowOnce as i32,
                },
                TOKEN,
            ))
            .await
            .expect("the token approves over TLS");
        // The same answer replayed, exact id and digest: refused, cleanly.
        let e = ApprovalsClient::new(tls_channel(port, &ca, None).await.unwrap())
            .resolve(with_token(
                proto::ResolveRequest {
                    id: a.id.clone(),
                    action_digest: a.action_digest.clone(),
                    resolution: Resolution::AllowOnce as i32,
                },
                TOKEN,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        wait_session_end(&d, &s.id).await;
        // The CLI over TLS, from another uid: with the token it sees the session; without,
        // it is told to set one.
        let url = format!("https://localhost:{port}");
        let ca_file = d.dir.join("ca.pem").display().to_string();
        let args = ["sessions", "--url", url.as_str(), "--ca", ca_file.as_str()];
        let r = d.cli_as(NOT_APPROVER, &args, &[("AGENT_SUPERVISOR_TOKEN", TOKEN)]);
        assert_eq!(r.code, Some(0), "{r:?}");
        assert!(r.stdout.contains(&s.id), "{r:?}");
        let r = d.cli_as(NOT_APPROVER, &args, &[]);
        assert_eq!(r.code, Some(125), "{r:?}");
        assert!(r.stderr.contains("AGENT_SUPERVISOR_TOKEN"), "{r:?}");
    });
    assert_eq!(lines(&d.ws().join("log")), 1);
    let approver = d
        .audit()
        .into_iter()
        .find(|r| r["kind"] == "approval")
        .expect("approval record");
    assert_eq!(approver["action"]["approver"], "tcp token ci");
}

#[test]
fn with_client_ca_only_clients_with_a_signed_certificate_get_in() {
    skip_unless!(is_root(), "the daemon tests run as root");
    let mut d = Daemon::start("mtls");
    let (ca, cert, key, cli_cert, cli_key) = certificates();
    for (name, pem) in [("ca.pem", &ca), ("server.pem", &cert), ("server.key", &key)] {
        std::fs::write(d.dir.join(name), pem).unwrap();
    }
    let port = free_port();
    d.reconfigure(&format!(
        "[tcp]\nlisten = \"127.0.0.1:{port}\"\ncert = \"{0}/server.pem\"\nkey = \"{0}/server.key\"\nclient_ca = \"{0}/ca.pem\"\n",
        d.dir.display()
    ));
    with_limit(async {
        let without = async {
            let ch = tls_channel(port, &ca, None)
                .await
                .map_err(|e| e.to_string())?;
            SessionsClient::new(ch)
                .list_sessions(with_token(proto::ListSessionsRequest {}, TOKEN))
                .await
                .map_err(|e| e.to_string())
        };
        assert!(
            without.await.is_err(),
            "no client certificate, yet an answer"
        );
        let ch = tls_channel(port, &ca, Some((&cli_cert, &cli_key)))
            .await
            .expect("mTLS connect");
        SessionsClient::new(ch)
            .list_sessions(with_token(proto::ListSessionsRequest {}, TOKEN))
            .await
            .expect("certificate and token");
    });
}

#[test]
fn metrics_are_served_only_when_configured_and_count_sessions_decisions_and_approvals() {
    skip_unless!(is_root(), "the daemon tests run as root");
    let mut d = Daemon::start("metrics");
    let port = free_port();
    d.reconfigure(&format!("metrics_listen = \"127.0.0.1:{port}\"\n"));
    d.counter_script("s.sh");
    let policy = d.policy("30s");
    let scrape = || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    with_limit(async {
        let mut w = watch(&d).await;
        let s = d.start_session(&policy, "./s.sh log").await;
        let a = next_pending(&mut w).await;
        let m = scrape();
        assert!(m.contains("agent_supervisor_approvals_pending 1"), "{m}");
        let r = d.cli_as(APPROVER, &["approve", &a.id], &[]);
        assert_eq!(r.code, Some(0), "{r:?}");
        wait_session_end(&d, &s.id).await;
    });
    let m = scrape();
    for want in [
        "agent_supervisor_sessions_started_total 1",
        "agent_supervisor_sessions_running 0",
        "agent_supervisor_approvals_pending 0",
        "agent_supervisor_approvals_resolved_total{by=\"human\"} 1",
        "agent_supervisor_decisions_total{kind=\"exec\",decision=\"allow\",decided_by=\"human\"} 1",
        "agent_supervisor_approval_latency_seconds_count 1",
    ] {
        assert!(m.contains(want), "{want} missing:\n{m}");
    }
    // Not configured: no listener (the default daemon of every other test).
    let other = Daemon::start("nometrics");
    let cfg = std::fs::read_to_string(&other.config).unwrap();
    assert!(!cfg.contains("metrics_listen"));
    assert!(
        d.stderr().contains("metrics on") && !other.stderr().contains("metrics on"),
        "{}",
        other.stderr()
    );
}

/// Runs argv on a new pseudo-terminal (160x40), presses `key` once `needle` appears on the
/// screen, then `q` after `after` seconds; prints a JSON report.
const TUI_DRIVER: &str = r#"
import fcntl, json, os, pty, select, struct, sys, termios, time
needle, key, after, argv = sys.argv[1].encode(), sys.argv[2].encode(), float(sys.argv[3]), sys.argv[4:]
pid, fd = pty.fork()
if pid == 0:
    os.environ["TERM"] = "xterm"
    os.execv(argv[0], argv)
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
buf, start, sent, quit_at = b"", time.time(), False, None
while time.time() - start < 40:
    r, _, _ = select.select([fd], [], [], 0.05)
    if r:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
    if not sent and needle in buf:
        os.write(fd, key)
        sent, quit_at = True, time.time() + after
    if quit_at and time.time() > quit_at:
        os.write(fd, b"q")
        quit_at = None
        start = time.time() - 35
_, status = os.waitpid(pid, 0)
print(json.dumps({"sent": sent, "status": os.waitstatus_to_exitcode(status), "screen": buf.decode("utf-8", "replace")[-3000:]}))
"#;

#[test]
fn the_approvals_tui_shows_a_waiting_action_and_y_allows_it() {
    skip_unless!(is_root(), "the daemon tests run as root");
    skip_unless!(
        Path::new("/usr/bin/python3").exists() && Path::new("/dev/ptmx").exists(),
        "no /usr/bin/python3 or /dev/ptmx to drive a pseudo-terminal"
    );
    let mut d = Daemon::start("tui");
    d.reconfigure(&format!("[access.start]\nuids = [{APPROVER}]\n"));
    d.counter_script("s.sh");
    std::os::unix::fs::chown(d.ws(), Some(APPROVER), Some(APPROVER)).unwrap();
    let policy = d.policy("30s");
    // The session, as another uid (root answers it from the UI).
    let mut c = common::supervisor_command();
    c.args(["run", "--daemon", "-q", "--policy", &policy, "--socket"])
        .arg(d.socket())
        .args(["--", "/bin/sh", "-c", "./s.sh log"])
        .current_dir(d.ws())
        .env("HOME", d.ws())
        .uid(APPROVER)
        .gid(APPROVER)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let a = rt().block_on(async {
        let mut w = watch(&d).await;
        tokio::time::timeout(LIMIT, next_pending(&mut w))
            .await
            .unwrap()
    });
    let driver = d.dir.join("tui.py");
    std::fs::write(&driver, TUI_DRIVER).unwrap();
    let mut t = Command::new("/usr/bin/python3");
    t.arg(&driver)
        .args([a.id.as_str(), "y", "2"])
        .arg(bin())
        .args(["approvals", "watch", "--socket"])
        .arg(d.socket());
    let r = common::run_with_timeout(t, LIMIT);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("driver output {e}: {r:?}"));
    assert_eq!(v["sent"], true, "the approval never showed: {v}");
    assert_eq!(v["status"], 0, "{v}");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    // From outside: the approved script ran; the answer is recorded as root's.
    assert_eq!(lines(&d.ws().join("log")), 1, "{v}");
    let approval = d
        .audit()
        .into_iter()
        .find(|r| r["kind"] == "approval")
        .expect("approval record");
    assert_eq!(approval["action"]["approver"], "uid 0");
    assert_eq!(approval["action"]["decision"], "allow");
}

#[test]
fn a_second_daemon_on_the_same_socket_refuses_to_start_and_leaves_the_first_ones_sessions() {
    skip_unless!(is_root(), "the daemon tests run as root");
    let d = Daemon::start("twice");
    let policy = d.policy("30s");
    let marker = format!("as-daemon-twice-marker-{}", std::process::id());
    rt().block_on(async {
        d.start_session(&policy, &format!("sleep 1000; : {marker}"))
            .await;
    });
    let start = Instant::now();
    while !common::process_alive_with_marker(&marker) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the agent never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = common::supervisor_command();
    c.arg("daemon").arg("--config").arg(&d.config);
    let r = common::run_with_timeout(c, Duration::from_secs(20));
    assert_eq!(r.code, Some(125), "{r:?}");
    assert!(r.stderr.contains("another daemon"), "{r:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        common::process_alive_with_marker(&marker),
        "the second daemon killed the first one's session"
    );
}

#[test]
fn policy_explain_over_the_api_matches_the_cli() {
    skip_unless!(is_root(), "the daemon tests run as root");
    let d = Daemon::start("explain");
    with_limit(async {
        let mut c = proto::policy_client::PolicyClient::new(d.channel().await);
        let e = c
            .explain(proto::ExplainRequest {
                policy: "preset:sandboxed".into(),
                action: vec!["exec".into(), "/usr/bin/sudo".into(), "ls".into()],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(e.decision, "deny", "{e:?}");
        assert!(e.decided_by.contains("preset:sandboxed"), "{e:?}");
        // The CLI says the same about the same action.
        let out = common::supervisor_command()
            .args([
                "policy",
                "explain",
                "preset:sandboxed",
                "--json",
                "--",
                "exec",
                "/usr/bin/sudo",
                "ls",
            ])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["decision"], e.decision.as_str());
        assert_eq!(v["decided_by"], e.decided_by.as_str());
        assert_eq!(v["enforced_by"], e.enforced_by.as_str());
        // A policy given as text; a connect it asks about.
        let e = c
            .explain(proto::ExplainRequest {
                policy: "version = 1\nextends = \"sandboxed\"\n[[rule]]\ndecision = \"allow\"\nnetwork = \"10.0.0.0/8:443\"\n".into(),
                action: vec!["connect".into(), "10.1.2.3:443".into()],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(e.decision, "allow", "{e:?}");
        // Relative paths are not resolved for a caller; broken input is an error.
        for action in [
            vec!["open".to_string(), "relative.txt".to_string()],
            vec!["exec".to_string(), "ls".to_string()],
            vec!["fly".to_string()],
            vec![],
        ] {
            let e = c
                .explain(proto::ExplainRequest {
                    policy: "preset:sandboxed".into(),
                    action,
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        }
    });
}

#[test]
fn the_daemon_tells_systemd_it_is_ready_once_its_socket_listens() {
    skip_unless!(is_root(), "the daemon tests run as root");
    let mut d = Daemon::start("notify");
    d.sigkill();
    // systemd's side of Type=notify: a datagram socket named by $NOTIFY_SOCKET.
    let path = d.dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = common::supervisor_command()
        .arg("daemon")
        .arg("--config")
        .arg(&d.config)
        .env("NOTIFY_SOCKET", &path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("no sd_notify message in 30 s");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    // Ready means ready: the API answers now.
    let answered = std::os::unix::net::UnixStream::connect(d.socket()).is_ok();
    // SIGTERM: STOPPING=1, then a clean exit.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let n2 = sock.recv(&mut buf).expect("no STOPPING message");
    let stopping = String::from_utf8_lossy(&buf[..n2]).to_string();
    let status = child.wait().unwrap();
    assert!(msg.contains("READY=1"), "{msg:?}");
    assert!(answered, "READY=1 before the socket answered");
    assert!(stopping.contains("STOPPING=1"), "{stopping:?}");
    assert_eq!(status.code(), Some(0));
    assert!(
        !d.socket().exists(),
        "the socket is removed on a clean stop"
    );
}

/// The daemon's log is a signed hash chain: its key is made (0600, with `.pub`) on first
/// start, every session's end is covered by a checkpoint, it rotates by size without breaking
/// the chain (`audit verify` over the files with the public key), and the audit stream's
/// cursors run across the rotated files (a replay from 0 is exactly the files' lines).
#[test]
fn the_daemons_log_is_chained_signed_rotated_and_verifies() {
    skip_unless!(is_root(), "the daemon tests run as root");
    let mut d = Daemon::start("audit-chain");
    d.reconfigure("audit_max_size = \"3K\"\n");
    let policy = d.policy("30s");
    let key = d.dir.join("state/audit.key");
    let public = d.dir.join("state/audit.key.pub");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(public.exists());
    with_limit(async {
        for n in 0..2 {
            let s = d
                .start_session(
                    &policy,
                    &format!("for i in 1 2 3 4 5 6 7 8 9 10 11 12; do /bin/true {n} $i --token=tok-{n}; done"),
                )
                .await;
            wait_session_end(&d, &s.id).await;
        }
        let mut files: Vec<PathBuf> = (1..)
            .map(|n| d.dir.join(format!("log/audit.{n}.jsonl")))
            .take_while(|p| p.exists())
            .collect();
        files.push(d.dir.join("log/audit.jsonl"));
        assert!(files.len() >= 3, "rotated: {files:?}");
        let text: String = files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect();
        assert!(
            !text.contains("tok-0") && !text.contains("tok-1"),
            "a secret reached the log"
        );
        assert!(text.contains("--token=[REDACTED:arg:"));
        // Verify with the daemon's public key: intact, signed to the end.
        let mut c = common::supervisor_command();
        c.args(["audit", "verify", "--json", "--key"])
            .arg(&public)
            .args(&files);
        let r = common::run_with_timeout(c, Duration::from_secs(20));
        let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("JSON report");
        assert_eq!(r.code, Some(0), "{v}");
        assert!(v["checkpoints"].as_u64().unwrap() >= 2, "{v}");
        assert_eq!(v["warnings"], serde_json::json!([]), "{v}");
        // The stream from 0 replays every file, in order, with global cursors.
        let replayed = replay(&d, 0).await;
        let json: Vec<&str> = replayed.iter().map(|e| e.json.as_str()).collect();
        assert_eq!(json, text.lines().collect::<Vec<_>>());
        assert_eq!(replayed.last().unwrap().cursor as usize, text.len());
        // Resuming from a cursor in the first file crosses into the next ones.
        let cut = replayed[1].cursor;
        let again = replay(&d, cut).await;
        let json = |events: &[proto::AuditEvent]| -> Vec<String> {
            events.iter().map(|e| e.json.clone()).collect()
        };
        assert_eq!(json(&again), json(&replayed[2..]));
        // A root agent under a policy that lets it read anything still can't read the key
        // (its public half beside it, it can).
        let open = d.dir.join("open.toml");
        std::fs::write(&open, "version = 1\nextends = \"unrestricted\"\n").unwrap();
        let s = d
            .start_session(
                open.to_str().unwrap(),
                &format!(
                    "/bin/cat {k} > got.txt 2>/dev/null; /bin/cat {k}.pub > pub.txt",
                    k = key.display()
                ),
            )
            .await;
        wait_session_end(&d, &s.id).await;
        let secret = std::fs::read_to_string(&key).unwrap();
        let got = std::fs::read_to_string(d.ws().join("got.txt")).unwrap_or_default();
        assert!(
            !got.contains(secret.trim()),
            "the agent read the daemon's signing key"
        );
        assert_eq!(
            std::fs::read_to_string(d.ws().join("pub.txt")).unwrap(),
            std::fs::read_to_string(&public).unwrap(),
            "the agent could read files beside it"
        );
    });
}

/// `[audit_export] otlp`: every line of the daemon's audit log, its sessions' records
/// included, reaches a real OTLP collector, in order, byte for byte.
#[test]
fn the_daemon_exports_its_audit_log_to_an_otlp_collector() {
    skip_unless!(is_root(), "the daemon tests run as root");
    let (collector, port, stop) = common::otlp::start_collector();
    let mut d = Daemon::start("audit-otlp");
    d.reconfigure(&format!(
        "[audit_export]\notlp = \"http://127.0.0.1:{port}\"\n"
    ));
    let policy = d.policy("30s");
    with_limit(async {
        let s = d.start_session(&policy, "/bin/true exported").await;
        wait_session_end(&d, &s.id).await;
        // The exporter sends within a fraction of a second; wait for the file's lines.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let written = d.audit_lines();
            let exported = common::otlp::lines(&collector);
            if exported.len() >= written.len() && !written.is_empty() {
                assert_eq!(
                    exported[..written.len()],
                    written[..],
                    "other records exported"
                );
                assert!(
                    written.iter().any(|l| l.contains(&s.id)),
                    "the session's records are not in the log"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "exported {} of {} records: {}",
                exported.len(),
                written.len(),
                d.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let _ = stop.send(());
}
