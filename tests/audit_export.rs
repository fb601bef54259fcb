//! Audit export: every record written to the audit file reaches a real OTLP collector (a
//! LogsService gRPC server in this test) and the journal's socket, byte for byte; a collector
//! that is down never holds up the session or loses the audit file's records; bad settings are
//! refused before the agent runs.
mod common;

use std::time::Duration;

use common::otlp::{attr, start_collector};
use common::{is_root, NoCi, Workspace};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

const LIMIT: Duration = Duration::from_secs(30);

/// A policy with one denial and one allowed command: the agent runs `sh -c "true; rm ..."`.
const POLICY: &str = r#"
version = 1
extends = "unrestricted"

[[rule]]
decision = "deny"
command = "rm"
reason = "no deleting in this test"
"#;

fn audit_lines(ws: &Workspace) -> Vec<String> {
    std::fs::read_to_string(&ws.audit)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn every_audit_record_reaches_an_otlp_collector_as_written() {
    skip_unless!(is_root(), "needs root to create the sandbox's namespaces");
    let (collector, port, stop) = start_collector();
    let ws = Workspace::new("otlp");
    let victim = ws.write("keep.txt", "x");
    let policy = ws.policy(POLICY);
    let endpoint = format!("http://127.0.0.1:{port}");
    let script = format!("/bin/true; rm {}; exit 3", victim.display());
    let r = ws.run(
        &[
            "--headless",
            "--policy",
            policy.to_str().unwrap(),
            "--audit-otlp",
            &endpoint,
        ],
        &["/bin/sh", "-c", &script],
        LIMIT,
    );
    let _ = stop.send(());
    assert_eq!(r.code, Some(3), "{r:?}");
    assert!(victim.exists(), "the denied rm ran");
    assert!(
        !r.stderr.contains("not exported"),
        "records were dropped: {}",
        r.stderr
    );
    let written = audit_lines(&ws);
    let got = collector.records.lock().unwrap().clone();
    let exported: Vec<String> = got
        .iter()
        .filter_map(|r| match attr(r, "audit.record") {
            Some(Value::StringValue(s)) => Some(s),
            _ => None,
        })
        .collect();
    assert!(
        written.len() >= 3,
        "too few audit records to test: {written:?}"
    );
    assert_eq!(
        exported, written,
        "the collector's records differ from the audit file's"
    );
    // The denial is a warning with its rule; the rest is information.
    let denial = got
        .iter()
        .find(|r| attr(r, "audit.decision") == Some(Value::StringValue("deny".into())))
        .expect("the rm denial was exported");
    assert_eq!(denial.severity_text, "WARN");
    assert!(
        matches!(attr(denial, "audit.rule"), Some(Value::StringValue(ref s)) if s.contains("policy.toml")),
        "{denial:?}"
    );
    assert!(denial.time_unix_nano > 0);
}

#[test]
fn a_collector_that_is_down_neither_blocks_the_session_nor_costs_the_audit_file_a_record() {
    skip_unless!(is_root(), "needs root to create the sandbox's namespaces");
    // A port with nobody listening: bind, take the number, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let ws = Workspace::new("otlp-down");
    let marker = ws.path("ran");
    let script = format!("echo ok > {}", marker.display());
    let started = std::time::Instant::now();
    let r = ws.run(
        &[
            "--headless",
            "--policy",
            "preset:unrestricted",
            "--audit-otlp",
            &format!("http://127.0.0.1:{port}"),
        ],
        &["/bin/sh", "-c", &script],
        LIMIT,
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(marker.exists(), "the agent did not run");
    assert!(
        r.stderr.contains("were not exported") && r.stderr.contains("has them all"),
        "the lost export is not reported: {}",
        r.stderr
    );
    let kinds: Vec<String> = ws
        .audit()
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        kinds.first().map(String::as_str) == Some("session-start")
            && kinds.last().map(String::as_str) == Some("session-end"),
        "the audit file is incomplete: {kinds:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a dead collector held the session up for {:?}",
        started.elapsed()
    );
}

#[test]
fn bad_export_settings_are_refused_before_the_agent_runs() {
    let ws = Workspace::new("otlp-bad");
    let marker = ws.path("ran");
    let script = format!("echo ok > {}", marker.display());
    for (args, says) in [
        (vec!["--audit-otlp", "127.0.0.1:4317"], "--audit-otlp"),
        (vec!["--audit-otlp", "ftp://collector:21"], "http or https"),
    ] {
        let mut all = vec!["--headless", "--policy", "preset:unrestricted"];
        all.extend(args.iter().copied());
        let r = ws.run(&all, &["/bin/sh", "-c", &script], LIMIT);
        assert_eq!(r.code, Some(125), "{args:?}: {r:?}");
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
        assert!(!marker.exists(), "{args:?}: the agent ran");
    }
}

/// The journal's socket is a fixed path (/run/systemd/journal/socket). The supervisor runs in a
/// private mount namespace where that path is this test's datagram socket, so nothing of the
/// host's /run changes.
#[test]
fn every_audit_record_reaches_the_journal_socket() {
    use std::os::unix::net::UnixDatagram;
    skip_unless!(is_root(), "needs root to create the sandbox's namespaces");
    let unshare_works = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .status()
        .is_ok_and(|s| s.success());
    skip_unless!(
        unshare_works,
        "unshare(1) --mount is not available to give the supervisor a private /run"
    );
    let ws = Workspace::new("journald");
    let jdir = ws.dir.parent().expect("base").join("journal");
    std::fs::create_dir_all(&jdir).expect("journal dir");
    let sock = UnixDatagram::bind(jdir.join("socket")).expect("bind journal socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let victim = ws.write("keep.txt", "x");
    let policy = ws.policy(POLICY);
    let script = format!("rm {}; exit 0", victim.display());
    let mut c = std::process::Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "/bin/sh", "-c"])
        .arg(
            r#"mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && mount --bind "$1" /run/systemd/journal && shift && exec "$@""#,
        )
        .arg("sh")
        .arg(&jdir)
        .arg(common::bin())
        .args(["run", "-q", "--headless", "--audit"])
        .arg(&ws.audit)
        .arg("--policy")
        .arg(&policy)
        .args(["--audit-journald", "--", "/bin/sh", "-c", &script])
        .current_dir(&ws.dir)
        .stdin(std::process::Stdio::null())
        .no_ci();
    let r = common::run_with_timeout(c, LIMIT);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(victim.exists(), "the denied rm ran");
    let mut entries: Vec<std::collections::HashMap<String, String>> = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    while let Ok(n) = sock.recv(&mut buf) {
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        entries.push(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
    }
    let written = audit_lines(&ws);
    let journaled: Vec<String> = entries
        .iter()
        .filter_map(|e| e.get("AUDIT_RECORD").cloned())
        .collect();
    assert!(written.len() >= 3, "too few records: {written:?}");
    assert_eq!(journaled, written, "the journal got other records");
    let denial = entries
        .iter()
        .find(|e| e.get("AUDIT_DECISION").map(String::as_str) == Some("deny"))
        .expect("the denial reached the journal");
    assert_eq!(denial.get("PRIORITY").map(String::as_str), Some("4"));
    assert_eq!(
        denial.get("SYSLOG_IDENTIFIER").map(String::as_str),
        Some("agent-supervisor")
    );
    assert!(denial["MESSAGE"].starts_with("deny exec rm"), "{denial:?}");
}

#[test]
fn journald_export_without_a_journal_is_refused() {
    skip_unless!(
        !std::path::Path::new("/run/systemd/journal/socket").exists(),
        "this host runs a journal: the refusal can't be shown here"
    );
    let ws = Workspace::new("journald-none");
    let marker = ws.path("ran");
    let script = format!("echo ok > {}", marker.display());
    let r = ws.run(
        &[
            "--headless",
            "--policy",
            "preset:unrestricted",
            "--audit-journald",
        ],
        &["/bin/sh", "-c", &script],
        LIMIT,
    );
    assert_eq!(r.code, Some(125), "{r:?}");
    assert!(
        r.stderr.contains("systemd journal is not running"),
        "{}",
        r.stderr
    );
    assert!(!marker.exists(), "the agent ran");
}
