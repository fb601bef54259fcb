//! The CI report: what the session decided, gathered from the audit records as they are made
//! ([`Collector`], an [`crate::audit::Observer`]), turned into one JSON document ([`Report`])
//! and written without following links ([`write_atomically`]).
//!
//! The agent chooses much of the text here (paths, arguments, host names): the report keeps
//! it as data, and bounds how much of it is kept (at most [`MAX_ENTRIES`] denials and as many
//! approvals, each summary at most [`MAX_SUMMARY`] bytes) so that a hostile agent can't make
//! the supervisor hold or write unbounded amounts.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::audit::{Observer, Record};

/// Version of the report's layout; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// Denials (and approvals) kept in the report; the rest are counted (`denials_omitted`).
pub const MAX_ENTRIES: usize = 1000;

/// Longest action summary kept, in bytes (longer ones end in `...`).
pub const MAX_SUMMARY: usize = 512;

/// One denial or approval.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// The audit record's id (`<session>-<sequence>`): the same line in the audit log.
    pub id: String,
    /// When it was decided (RFC 3339, UTC).
    pub time: String,
    pub pid: i32,
    /// exec / open / connect / send / bind / resolve / exec-guard ...
    pub kind: String,
    /// One line saying what was asked ("/etc/passwd (write)", "git push origin").
    pub action: String,
    pub decision: String,
    pub decided_by: Option<String>,
    /// `file:line:column` of the deciding rule.
    pub rule: Option<String>,
    pub reason: Option<String>,
}

/// Allowed and denied decisions.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Count {
    pub allow: u64,
    pub deny: u64,
}

/// Decisions by kind and in all.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub total: Count,
    pub by_kind: BTreeMap<String, Count>,
}

/// What the session start record said.
#[derive(Debug, Clone, Default)]
struct Started {
    policy: Option<String>,
    workspace: Option<String>,
}

/// The session-end record: the supervisor's exit code, the agent's, the signal that killed
/// it, and how the session ended (`exit`, or a limit: `timeout`, `memory-limit`,
/// `process-limit`, with the limit's value).
#[derive(Debug, Clone, Default)]
struct Ended {
    exit_code: Option<i32>,
    agent_exit_code: Option<i32>,
    signal: Option<i32>,
    ended_by: Option<String>,
    limit: Option<serde_json::Value>,
}

#[derive(Debug, Default)]
struct Collected {
    started: Option<Started>,
    /// What the session-end record said.
    ended: Option<Ended>,
    counts: Counts,
    denials: Vec<Entry>,
    denials_omitted: u64,
    approvals: Vec<Entry>,
    approvals_omitted: u64,
}

/// Gathers the report's content from the audit records (see [`Collector::observer`]).
#[derive(Debug, Default)]
pub struct Collector {
    inner: Mutex<Collected>,
}

/// Who answered an `ask` (as the audit log's `decided_by` says it).
const ASK_DECIDERS: [&str; 4] = ["human", "session", "headless", "timeout"];

impl Collector {
    pub fn new() -> Arc<Collector> {
        Arc::new(Collector::default())
    }

    /// The audit hook that feeds this collector.
    pub fn observer(self: &Arc<Collector>) -> Observer {
        let me = Arc::clone(self);
        Arc::new(move |r: &Record| me.observe(r))
    }

    fn lock(&self) -> MutexGuard<'_, Collected> {
        // A panic elsewhere while holding the lock leaves counts that are still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Did the session start (the agent existed)?
    pub fn started(&self) -> bool {
        self.lock().started.is_some()
    }

    fn observe(&self, r: &Record) {
        let mut c = self.lock();
        match (r.kind.as_str(), r.decision.as_deref()) {
            ("session-start", None) => {
                c.started = Some(Started {
                    policy: r.action["policy"].as_str().map(str::to_string),
                    workspace: r.action["workspace"].as_str().map(str::to_string),
                });
            }
            ("session-end", None) => {
                let int = |k: &str| r.action[k].as_i64().map(|c| c as i32);
                let exit_code = int("exit_code");
                c.ended = Some(Ended {
                    exit_code,
                    // Records from before the limits were added carry only `exit_code`.
                    agent_exit_code: int("agent_exit_code").or(exit_code),
                    signal: int("signal"),
                    ended_by: r.action["ended_by"].as_str().map(str::to_string),
                    limit: Some(r.action["limit"].clone()).filter(|v| !v.is_null()),
                });
            }
            (_, Some(decision)) => {
                let denied = decision != "allow";
                let count = c.counts.by_kind.entry(r.kind.clone()).or_default();
                if denied {
                    count.deny += 1;
                    c.counts.total.deny += 1;
                } else {
                    count.allow += 1;
                    c.counts.total.allow += 1;
                }
                let asked = r
                    .decided_by
                    .as_deref()
                    .is_some_and(|d| ASK_DECIDERS.contains(&d));
                if denied {
                    if c.denials.len() < MAX_ENTRIES {
                        c.denials.push(entry(r));
                    } else {
                        c.denials_omitted += 1;
                    }
                } else if asked {
                    if c.approvals.len() < MAX_ENTRIES {
                        c.approvals.push(entry(r));
                    } else {
                        c.approvals_omitted += 1;
                    }
                }
            }
            _ => {}
        }
    }
}

fn entry(r: &Record) -> Entry {
    Entry {
        id: r.id.clone(),
        time: r.ts.clone(),
        pid: r.pid,
        kind: r.kind.clone(),
        action: bounded(&summarize(&r.kind, &r.action)),
        decision: r.decision.clone().unwrap_or_default(),
        decided_by: r.decided_by.clone(),
        rule: r.rule.clone(),
        reason: r.reason.clone(),
    }
}

/// One line for an audit record's `action` object.
pub fn summarize(kind: &str, action: &serde_json::Value) -> String {
    let s = |k: &str| action[k].as_str().map(str::to_string);
    let text = match kind {
        "open" => s("path").map(|p| match s("access") {
            Some(a) if !a.is_empty() => format!("{p} ({a})"),
            _ => p,
        }),
        "exec" => action["argv"]
            .as_array()
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.iter()
                    .map(|v| v.as_str().unwrap_or("?"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .or_else(|| s("path")),
        "connect" | "send" | "bind" => s("destination").map(|d| match s("host") {
            Some(h) => format!("{d} ({h})"),
            None => d,
        }),
        "resolve" => s("name"),
        "exec-guard" => s("approved"),
        _ => None,
    };
    text.unwrap_or_else(|| action.to_string())
}

/// At most [`MAX_SUMMARY`] bytes, cut on a character boundary.
fn bounded(s: &str) -> String {
    if s.len() <= MAX_SUMMARY {
        return s.to_string();
    }
    let mut end = MAX_SUMMARY - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// The agent ran and exited (`ended_by` says how).
    Completed,
    /// The supervisor refused to start the agent (bad policy, missing protection, ...).
    Refused,
    /// The supervisor failed after the agent started (the agent is dead).
    Error,
}

/// The report file's content.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub status: Status,
    /// Why the supervisor refused or failed.
    pub error: Option<String>,
    pub session: String,
    /// `preset:NAME` or the policy file (what `--policy` said when the policy didn't load).
    pub policy: Option<String>,
    pub command: Vec<String>,
    pub workspace: Option<String>,
    pub started: String,
    pub ended: String,
    pub duration_ms: u64,
    /// What `agent-supervisor run` exits with.
    pub exit_code: i32,
    /// `exit` (the agent exited with `agent_exit_code`), `signal` (killed by `signal`),
    /// `timeout`, `memory-limit` or `process-limit` (the session was killed at `limit`),
    /// `refused` or `error`.
    pub ended_by: String,
    /// The limit that ended the session, as the audit's session-end record gives it.
    pub limit: Option<serde_json::Value>,
    pub agent_exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// `--default-allow`: asks were allowed instead of denied.
    pub default_allow: bool,
    pub counts: Counts,
    pub denials: Vec<Entry>,
    pub denials_omitted: u64,
    /// Asks that were allowed (with `--default-allow`, by `headless`).
    pub approvals: Vec<Entry>,
    pub approvals_omitted: u64,
    pub audit_log: PathBuf,
}

/// What the CI runner knows besides the records.
pub struct RunFacts {
    pub session: String,
    pub policy_arg: Option<String>,
    pub command: Vec<String>,
    pub started: std::time::SystemTime,
    pub ended: std::time::SystemTime,
    pub exit_code: i32,
    pub error: Option<String>,
    pub default_allow: bool,
    pub audit_log: PathBuf,
}

impl Collector {
    /// The report of a finished run.
    pub fn report(&self, facts: RunFacts) -> Report {
        let c = self.lock();
        let ended = c.ended.clone().unwrap_or_default();
        let (agent_exit_code, signal) = (ended.agent_exit_code, ended.signal);
        let mut error = facts.error;
        // The session ended but the supervisor did not exit with the code it recorded (the
        // audit log could not be completed): a failure of the supervisor, said on stderr
        // already.
        if error.is_none() && ended.exit_code.is_some_and(|code| code != facts.exit_code) {
            error = Some(format!(
                "the agent exited with {}, but the supervisor failed at the end (exit code {}; \
                 see its messages, e.g. an incomplete audit log)",
                agent_exit_code.unwrap_or_default(),
                facts.exit_code
            ));
        }
        let status = match (&error, &c.started) {
            (None, _) => Status::Completed,
            (Some(_), None) => Status::Refused,
            (Some(_), Some(_)) => Status::Error,
        };
        let limit_hit = ended.ended_by.as_deref().filter(|e| *e != "exit");
        let ended_by = match status {
            Status::Refused => "refused",
            Status::Error => "error",
            Status::Completed if limit_hit.is_some() => limit_hit.unwrap_or("exit"),
            Status::Completed if signal.is_some() => "signal",
            Status::Completed => "exit",
        };
        let rfc3339 = |t| humantime::format_rfc3339_micros(t).to_string();
        Report {
            schema_version: SCHEMA_VERSION,
            status,
            error,
            session: facts.session,
            policy: c
                .started
                .as_ref()
                .and_then(|s| s.policy.clone())
                .or(facts.policy_arg),
            command: facts.command,
            workspace: c.started.as_ref().and_then(|s| s.workspace.clone()),
            started: rfc3339(facts.started),
            ended: rfc3339(facts.ended),
            duration_ms: facts
                .ended
                .duration_since(facts.started)
                .unwrap_or_default()
                .as_millis() as u64,
            exit_code: facts.exit_code,
            ended_by: ended_by.to_string(),
            limit: ended.limit.clone(),
            agent_exit_code,
            signal,
            default_allow: facts.default_allow,
            counts: c.counts.clone(),
            denials: in_id_order(&c.denials),
            denials_omitted: c.denials_omitted,
            approvals: in_id_order(&c.approvals),
            approvals_omitted: c.approvals_omitted,
            audit_log: facts.audit_log,
        }
    }
}

/// Entries sorted by their audit sequence number (records of concurrent handlers reach the
/// observer in any order).
fn in_id_order(entries: &[Entry]) -> Vec<Entry> {
    let seq = |e: &Entry| {
        e.id.rsplit('-')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    };
    let mut v = entries.to_vec();
    v.sort_by_key(seq);
    v
}

/// Why the report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("--report {path}: {what}: {error} (choose another file with --report FILE)")]
    Io {
        path: PathBuf,
        what: &'static str,
        error: std::io::Error,
    },
    #[error("--report {0}: names no file")]
    NoFileName(PathBuf),
}

/// Write `bytes` to `path` as a new file: a temporary file created in the same directory
/// (`O_EXCL|O_NOFOLLOW`, mode 0644), synced, then renamed over `path`. Nothing that already
/// exists at `path` is opened or followed: a symlink planted there is replaced, its target
/// untouched. The directories leading to `path` are trusted (they are the caller's choice).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let io = |what, error| WriteError::Io {
        path: path.to_path_buf(),
        what,
        error,
    };
    let name = path
        .file_name()
        .ok_or_else(|| WriteError::NoFileName(path.to_path_buf()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}-{nanos:x}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| io("creating a temporary file next to it", e))?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io("writing", e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| io("renaming into place", e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn decision(kind: &str, action: serde_json::Value, d: &str, by: &str) -> Record {
        Record::decision(
            "s1",
            7,
            kind,
            action,
            d,
            by,
            Some("p.toml:3:1".into()),
            None,
            Duration::ZERO,
        )
    }

    #[test]
    fn counts_denials_and_approvals() {
        let c = Collector::new();
        let observe = c.observer();
        let start = Record::session(
            "s1",
            7,
            "session-start",
            serde_json::json!({"policy": "preset:ci", "workspace": "/w"}),
        );
        observe(&start);
        observe(&decision(
            "open",
            serde_json::json!({"path": "/etc/x", "access": "write"}),
            "deny",
            "rule",
        ));
        observe(&decision(
            "open",
            serde_json::json!({"path": "/w/a", "access": "read"}),
            "allow",
            "filesystem",
        ));
        observe(&decision(
            "connect",
            serde_json::json!({"destination": "1.2.3.4:80"}),
            "allow",
            "headless",
        ));
        observe(&Record::session(
            "s1",
            7,
            "session-end",
            serde_json::json!({"exit_code": 137, "signal": 9}),
        ));
        let now = std::time::SystemTime::now();
        let r = c.report(RunFacts {
            session: "s1".into(),
            policy_arg: None,
            command: vec!["a".into()],
            started: now,
            ended: now,
            exit_code: 137,
            error: None,
            default_allow: true,
            audit_log: "/a".into(),
        });
        assert_eq!(r.status, Status::Completed);
        assert_eq!(r.ended_by, "signal");
        assert_eq!(r.signal, Some(9));
        assert_eq!(r.policy.as_deref(), Some("preset:ci"));
        assert_eq!(r.counts.total, Count { allow: 2, deny: 1 });
        assert_eq!(r.counts.by_kind["open"], Count { allow: 1, deny: 1 });
        assert_eq!(r.denials.len(), 1);
        assert_eq!(r.denials[0].action, "/etc/x (write)");
        assert_eq!(r.approvals.len(), 1);
        assert_eq!(r.approvals[0].action, "1.2.3.4:80");
    }

    #[test]
    fn a_failure_after_the_agent_exited_is_an_error() {
        let c = Collector::new();
        let observe = c.observer();
        observe(&Record::session(
            "s1",
            7,
            "session-start",
            serde_json::json!({}),
        ));
        observe(&Record::session(
            "s1",
            7,
            "session-end",
            serde_json::json!({"exit_code": 0}),
        ));
        let now = std::time::SystemTime::now();
        let r = c.report(RunFacts {
            session: "s1".into(),
            policy_arg: None,
            command: vec![],
            started: now,
            ended: now,
            exit_code: 125,
            error: None,
            default_allow: false,
            audit_log: "/a".into(),
        });
        assert_eq!(r.status, Status::Error);
        assert_eq!(r.ended_by, "error");
        assert_eq!(r.agent_exit_code, Some(0));
        assert!(r.error.unwrap().contains("the agent exited with 0"));
    }

    #[test]
    fn refused_before_start_and_bounded_lists() {
        let c = Collector::new();
        let observe = c.observer();
        let long = "x".repeat(5000);
        for _ in 0..MAX_ENTRIES + 5 {
            observe(&decision(
                "open",
                serde_json::json!({"path": long, "access": "read"}),
                "deny",
                "rule",
            ));
        }
        let now = std::time::SystemTime::now();
        let r = c.report(RunFacts {
            session: "s1".into(),
            policy_arg: Some("bad.toml".into()),
            command: vec![],
            started: now,
            ended: now,
            exit_code: 125,
            error: Some("nope".into()),
            default_allow: false,
            audit_log: "/a".into(),
        });
        // Decisions without a session-start record can't happen in a real run; the status
        // only depends on whether the session started.
        assert_eq!(r.status, Status::Refused);
        assert_eq!(r.policy.as_deref(), Some("bad.toml"));
        assert_eq!(r.denials.len(), MAX_ENTRIES);
        assert_eq!(r.denials_omitted, 5);
        assert_eq!(r.counts.total.deny, MAX_ENTRIES as u64 + 5);
        assert!(r.denials[0].action.len() <= MAX_SUMMARY);
        assert!(r.denials[0].action.ends_with("..."));
    }

    #[test]
    fn write_replaces_a_symlink_without_following_it() {
        let dir = std::env::temp_dir().join(format!("as-ci-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("target");
        std::fs::write(&target, "precious").unwrap();
        let link = dir.join("report.json");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomically(&link, b"{}").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        assert!(!std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "{}");
        // Nothing else left in the directory (no temporary file).
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
