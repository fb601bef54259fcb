//! The tamper-evident audit log, end to end with the real binary: a session's log verifies
//! (`audit verify`), and every kind of tampering with a copy of it is pinpointed (file, line,
//! record id); rotation keeps the chain and a removed middle file is found; secrets in what
//! the agent runs never reach the file; concurrent runs appending to one file keep one chain.
//! Everything is read from outside the sandbox: the audit files on disk.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{run_with_timeout, Result_, Workspace};
use serde_json::Value;
use sha2::{Digest, Sha256};

const LIMIT: Duration = Duration::from_secs(60);

fn cli(args: &[&str]) -> Result_ {
    let mut c = common::supervisor_command();
    c.args(args).stdin(Stdio::null());
    let r = run_with_timeout(c, LIMIT);
    assert!(!r.timed_out, "agent-supervisor {args:?} hit the time limit");
    r
}

fn base(ws: &Workspace) -> PathBuf {
    ws.dir.parent().expect("base").to_path_buf()
}

fn keygen(ws: &Workspace) -> (PathBuf, PathBuf) {
    let key = base(ws).join("keys/audit.key");
    let r = cli(&["audit", "keygen", key.to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let public = base(ws).join("keys/audit.key.pub");
    (key, public)
}

/// A headless standalone session with the `sandboxed` preset running `script` in sh.
fn session(ws: &Workspace, extra: &[&str], script: &str) -> Result_ {
    let mut args = vec!["--standalone", "--headless", "--policy", "preset:sandboxed"];
    args.extend_from_slice(extra);
    let r = ws.run(&args, &["/bin/sh", "-c", script], LIMIT);
    assert!(!r.timed_out, "{r:?}");
    assert_eq!(r.code, Some(0), "{r:?}");
    r
}

/// `audit verify --json [--key K] FILES`: exit code and report.
fn verify(files: &[&Path], key: Option<&Path>) -> (Option<i32>, Value) {
    let mut args: Vec<String> = vec!["audit".into(), "verify".into(), "--json".into()];
    if let Some(k) = key {
        args.push("--key".into());
        args.push(k.display().to_string());
    }
    args.extend(files.iter().map(|f| f.display().to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = cli(&refs);
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    (r.code, v)
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn id_of(line: &str) -> Value {
    serde_json::from_str::<Value>(line).unwrap()["id"].clone()
}

/// A tampered copy of the log: (exit code, error) of verifying it.
fn tampered(ws: &Workspace, name: &str, content: &[String], key: &Path) -> (Option<i32>, Value) {
    let copy = base(ws).join(name);
    std::fs::write(&copy, content.join("\n") + "\n").unwrap();
    let (code, v) = verify(&[&copy], Some(key));
    (code, v["error"].clone())
}

#[test]
fn a_session_log_verifies_and_each_tampering_is_pinpointed() {
    let ws = Workspace::new("audit-verify");
    let (key, public) = keygen(&ws);
    session(
        &ws,
        &["--audit-key", key.to_str().unwrap()],
        "echo one > a.txt; /bin/cat a.txt; /bin/ls; /bin/true; /bin/echo done",
    );
    let (code, v) = verify(&[&ws.audit], Some(&public));
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["ok"], true);
    assert!(v["checkpoints"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(
        v["warnings"],
        serde_json::json!([]),
        "signed to the end: {v}"
    );
    let log = lines(&ws.audit);
    assert!(log.len() >= 6, "{log:?}");
    // The last line is the session end's checkpoint.
    assert_eq!(
        serde_json::from_str::<Value>(log.last().unwrap()).unwrap()["kind"],
        "checkpoint"
    );
    let k = 3; // 0-based index of the record tampered with (line 4)

    // Edited: the changed record itself.
    let mut edited = log.clone();
    edited[k] = edited[k].replacen("\"ts\":\"", "\"ts\":\"1", 1);
    let (code, e) = tampered(&ws, "edited.jsonl", &edited, &public);
    assert_eq!(code, Some(1), "{e}");
    assert_eq!(
        (e["kind"].as_str(), e["line"].as_u64()),
        (Some("edited"), Some(k as u64 + 1)),
        "{e}"
    );
    assert_eq!(e["id"], id_of(&log[k]));

    // Deleted: found at the record after the gap, which names the missing position.
    let mut deleted = log.clone();
    deleted.remove(k);
    let (code, e) = tampered(&ws, "deleted.jsonl", &deleted, &public);
    assert_eq!(code, Some(1), "{e}");
    assert_eq!(
        (e["kind"].as_str(), e["line"].as_u64()),
        (Some("deleted"), Some(k as u64 + 1)),
        "{e}"
    );
    assert_eq!(e["id"], id_of(&log[k + 1]));

    // Reordered: the record moved up.
    let mut reordered = log.clone();
    reordered.swap(k, k + 1);
    let (code, e) = tampered(&ws, "reordered.jsonl", &reordered, &public);
    assert_eq!(code, Some(1), "{e}");
    assert_eq!(
        (e["kind"].as_str(), e["line"].as_u64()),
        (Some("reordered"), Some(k as u64 + 1)),
        "{e}"
    );
    assert_eq!(e["id"], id_of(&log[k + 1]));

    // Inserted: a forged record (a copy of another with a new id).
    let mut inserted = log.clone();
    let forged = log[1].replacen(
        &format!("\"id\":{}", id_of(&log[1])),
        "\"id\":\"forged-1\"",
        1,
    );
    inserted.insert(k, forged);
    let (code, e) = tampered(&ws, "inserted.jsonl", &inserted, &public);
    assert_eq!(code, Some(1), "{e}");
    assert_eq!(
        (e["kind"].as_str(), e["line"].as_u64()),
        (Some("inserted"), Some(k as u64 + 1)),
        "{e}"
    );
    assert_eq!(e["id"], "forged-1");

    // A cut tail (the final checkpoint and the record before it gone): not provable from the
    // file alone, but no longer covered by a signature, which is said.
    let mut cut = log.clone();
    cut.truncate(log.len() - 2);
    let copy = base(&ws).join("cut.jsonl");
    std::fs::write(&copy, cut.join("\n") + "\n").unwrap();
    let (code, v) = verify(&[&copy], Some(&public));
    assert_eq!(code, Some(0), "{v}");
    let kinds: Vec<&str> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["kind"].as_str())
        .collect();
    assert!(
        kinds
            .iter()
            .any(|k| *k == "unsigned" || *k == "unsigned-tail"),
        "{v}"
    );

    // A checkpoint by another key is refused.
    let other = base(&ws).join("keys/other.key");
    assert_eq!(
        cli(&["audit", "keygen", other.to_str().unwrap()]).code,
        Some(0)
    );
    let (code, v) = verify(&[&ws.audit], Some(&base(&ws).join("keys/other.key.pub")));
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["error"]["kind"], "bad-signature");

    // The human output names the file, the line and the record.
    let copy = base(&ws).join("edited.jsonl");
    let r = cli(&[
        "audit",
        "verify",
        "--key",
        public.to_str().unwrap(),
        copy.to_str().unwrap(),
    ]);
    assert_eq!(r.code, Some(1));
    let id = id_of(&log[k]);
    assert!(
        r.stdout.contains(&format!("{}:{}", copy.display(), k + 1))
            && r.stdout.contains(id.as_str().unwrap())
            && r.stdout.contains("edited"),
        "{r:?}"
    );
    // A missing file is a usage error.
    let r = cli(&[
        "audit",
        "verify",
        base(&ws).join("nope.jsonl").to_str().unwrap(),
    ]);
    assert_eq!(r.code, Some(2), "{r:?}");
}

#[test]
fn rotation_keeps_the_chain_and_a_removed_middle_file_is_found() {
    let ws = Workspace::new("audit-rotate");
    let (key, public) = keygen(&ws);
    session(
        &ws,
        &[
            "--audit-key",
            key.to_str().unwrap(),
            "--audit-max-size",
            "2K",
        ],
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do /bin/true $i; done",
    );
    // audit.1.jsonl, audit.2.jsonl, ..., then audit.jsonl.
    let mut files: Vec<PathBuf> = (1..)
        .map(|n| base(&ws).join(format!("audit.{n}.jsonl")))
        .take_while(|p| p.exists())
        .collect();
    files.push(ws.audit.clone());
    assert!(files.len() >= 3, "rotated into several files: {files:?}");
    // A file rotates before a batch would take it beyond the limit; a batch (what the writer
    // found queued at once) is never split, so a file may exceed it by one batch.
    for f in &files {
        let size = std::fs::metadata(f).unwrap().len();
        assert!(size <= 2048 + 8192, "{} is {size} bytes", f.display());
    }
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (code, v) = verify(&refs, Some(&public));
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["warnings"], serde_json::json!([]), "{v}");
    // `--rotated FILE` stands for the same files in the same order.
    let r = cli(&[
        "audit",
        "verify",
        "--json",
        "--rotated",
        "--key",
        public.to_str().unwrap(),
        ws.audit.to_str().unwrap(),
    ]);
    let w: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!((r.code, &w["records"]), (Some(0), &v["records"]), "{r:?}");
    // Each file after the first names the one it continues.
    for w in files.windows(2) {
        let first = serde_json::from_str::<Value>(&lines(&w[1])[0]).unwrap();
        assert_eq!(
            first["prev_file"],
            w[0].file_name().unwrap().to_str().unwrap()
        );
    }
    // Without a middle file: the first record of the next file, with what is missing.
    let mut missing = refs.clone();
    let gone = missing.remove(1);
    let (code, v) = verify(&missing, Some(&public));
    assert_eq!(code, Some(1), "{v}");
    let e = &v["error"];
    assert_eq!(e["kind"], "deleted", "{v}");
    assert_eq!(e["file"], files[2].display().to_string());
    assert_eq!(e["line"], 1);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains(gone.file_name().unwrap().to_str().unwrap()),
        "{v}"
    );
}

fn mask(kind: &str, secret: &str) -> String {
    format!(
        "[REDACTED:{kind}:{}]",
        &hex(&Sha256::digest(secret.as_bytes()))[..8]
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn secrets_in_what_the_agent_runs_never_reach_the_audit_file() {
    let ws = Workspace::new("audit-redact");
    // (kind, secret, how the agent passes it)
    let secrets: &[(&str, &str, &str)] = &[
        ("arg", "s3cr3t-tok-value", "/bin/true --token=s3cr3t-tok-value"),
        ("arg", "hunter2-pass", "/bin/true --password hunter2-pass"),
        ("arg", "k3y-v4lue-99", "/bin/true api_key=k3y-v4lue-99"),
        ("env", "ghtoken-in-env-1", "/usr/bin/env GITHUB_TOKEN=ghtoken-in-env-1 /bin/true"),
        ("env", "exported-secret-2", "/bin/sh -c 'export DB_PASSWORD=exported-secret-2; /bin/true'"),
        ("aws-key-id", "AKIAIOSFODNN7EXAMPLE", "/bin/true AKIAIOSFODNN7EXAMPLE"),
        ("aws-secret", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "/bin/true wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        ("jwt", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "/bin/true eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
        ("github-token", "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "/bin/true ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"),
        ("slack-token", "xoxb-123456789012-abcdefghijkl", "/bin/true xoxb-123456789012-abcdefghijkl"),
        ("high-entropy", "q8Zr3LmT0pWx7Kc2Nv9Bd4Hs6Yf1Ja5G", "/bin/true q8Zr3LmT0pWx7Kc2Nv9Bd4Hs6Yf1Ja5G"),
        ("url-password", "pa55w0rd-in-url", "/bin/true https://bob:pa55w0rd-in-url@example.com/x"),
    ];
    let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1234567890abcdefghij\n-----END RSA PRIVATE KEY-----";
    let mut script: String = secrets
        .iter()
        .map(|(_, _, cmd)| format!("{cmd}\n"))
        .collect();
    script.push_str(&format!("/bin/true '{pem}'\n"));
    session(&ws, &[], &script);
    let raw = std::fs::read_to_string(&ws.audit).unwrap();
    let execs = ws.decisions("exec");
    assert!(
        execs.len() >= secrets.len(),
        "the commands were audited: {execs:?}"
    );
    for (kind, secret, _) in secrets {
        assert!(
            !raw.contains(secret),
            "{kind} secret {secret} is in the audit file"
        );
        assert!(
            raw.contains(&mask(kind, secret)),
            "no {} in the audit file:\n{raw}",
            mask(kind, secret)
        );
    }
    assert!(
        !raw.contains("MIIEpAIBAAKCAQEA1234567890abcdefghij"),
        "the private key is in the audit file"
    );
    assert!(raw.contains(&mask("private-key", pem)), "{raw}");
    // Ordinary arguments stay readable.
    assert!(raw.contains("/bin/true"), "{raw}");
    assert!(raw.contains("--password"), "the option name stays: {raw}");
    // And the redacted log is still a valid chain.
    let (code, v) = verify(&[&ws.audit], None);
    assert_eq!(code, Some(0), "{v}");
}

#[test]
fn concurrent_runs_appending_to_one_file_keep_one_chain() {
    let ws = Workspace::new("audit-concurrent");
    let (key, public) = keygen(&ws);
    let start = Instant::now();
    let children: Vec<std::process::Child> = (0..3)
        .map(|i| {
            let mut c = common::supervisor_command();
            c.args([
                "run",
                "-q",
                "--standalone",
                "--headless",
                "--policy",
                "preset:sandboxed",
                "--audit",
            ])
            .arg(&ws.audit)
            .args(["--audit-key", key.to_str().unwrap(), "--"])
            .args([
                "/bin/sh",
                "-c",
                &format!("for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do /bin/true {i} $i; done"),
            ])
            .current_dir(&ws.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            c.spawn().expect("spawn run")
        })
        .collect();
    for mut ch in children {
        let left = LIMIT.saturating_sub(start.elapsed());
        let st = common::wait_child(&mut ch, left);
        assert!(st.success(), "{st:?}");
    }
    let records = ws.audit();
    let sessions: std::collections::BTreeSet<&str> = records
        .iter()
        .filter(|r| r["kind"] == "session-start")
        .filter_map(|r| r["session"].as_str())
        .collect();
    assert_eq!(sessions.len(), 3, "{records:?}");
    let (code, v) = verify(&[&ws.audit], Some(&public));
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["warnings"], serde_json::json!([]), "{v}");
    // The chain positions are exactly 1..=n: one chain, no fork.
    let seqs: Vec<u64> = records
        .iter()
        .map(|r| r["chain_seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=records.len() as u64).collect::<Vec<_>>());
}

#[test]
fn keygen_refuses_to_overwrite_and_run_refuses_an_exposed_key() {
    let ws = Workspace::new("audit-keys");
    let (key, public) = keygen(&ws);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::read_to_string(&public).unwrap().trim().len(), 64);
    let before = std::fs::read(&key).unwrap();
    let r = cli(&["audit", "keygen", key.to_str().unwrap()]);
    assert_ne!(r.code, Some(0), "{r:?}");
    assert_eq!(
        std::fs::read(&key).unwrap(),
        before,
        "the key was not replaced"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = ws.run(
        &[
            "--standalone",
            "--headless",
            "--policy",
            "preset:sandboxed",
            "--audit-key",
            key.to_str().unwrap(),
        ],
        &["/bin/sh", "-c", "echo ran > ran.txt"],
        LIMIT,
    );
    assert_eq!(r.code, Some(125), "{r:?}");
    assert!(r.stderr.contains("chmod 600"), "{r:?}");
    assert!(
        !ws.path("ran.txt").exists(),
        "the agent ran without its audit key"
    );
}

#[test]
fn the_agent_cannot_read_the_signing_key() {
    let ws = Workspace::new("audit-key-hidden");
    let (key, _) = keygen(&ws);
    let secret = std::fs::read_to_string(&key).unwrap();
    // `unrestricted` allows reading anything: only the mask stands between the agent and it.
    let r = ws.run(
        &[
            "--standalone",
            "--headless",
            "--policy",
            "preset:unrestricted",
            "--audit-key",
            key.to_str().unwrap(),
        ],
        &[
            "/bin/sh",
            "-c",
            &format!("/bin/cat {} > got.txt 2>/dev/null; true", key.display()),
        ],
        LIMIT,
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    let got = ws.read("got.txt").unwrap_or_default();
    assert!(
        !got.contains(secret.trim()),
        "the agent read the signing key"
    );
}

/// The agent tries to stall the audit writer by holding the log directory's lock (it can see
/// the directory): the lock it sees is not the writer's, the session is not failed closed, and
/// every record is written and chained.
#[test]
fn the_agent_cannot_hold_the_writers_lock() {
    skip_unless!(Path::new("/usr/bin/flock").exists(), "needs /usr/bin/flock");
    let ws = Workspace::new("audit-lock");
    // The first run makes the lock file; the second one's agent grabs it.
    session(&ws, &[], "/bin/true");
    let lock = base(&ws).join(".agent-supervisor-audit.lock");
    assert!(lock.exists());
    let r = ws.run(
        &["--standalone", "--headless", "--policy", "preset:unrestricted"],
        &["/bin/sh", "-c", &format!(
            "/usr/bin/flock -x {} /bin/sleep 13 & sleep 0.5; /bin/echo one > one.txt; /bin/sleep 11; /bin/echo two > two.txt; wait",
            lock.display()
        )],
        LIMIT,
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(!r.stderr.contains("cannot be written"), "{r:?}");
    assert_eq!(
        ws.read("two.txt").as_deref(),
        Some("two\n"),
        "actions after 10 s still allowed"
    );
    let (code, v) = verify(&[&ws.audit], None);
    assert_eq!(code, Some(0), "{v}");
    let execs: Vec<String> = ws
        .decisions("exec")
        .iter()
        .map(|r| r["action"]["argv"].to_string())
        .collect();
    assert!(
        execs
            .iter()
            .any(|a| a.contains("two.txt") || a.contains("\"two\"")),
        "{execs:?}"
    );
}
