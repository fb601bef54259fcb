//! The audit log: one JSON line per decision, written by one actor thread that owns the file.
//!
//! Handlers send [`Record`]s over a channel and never wait for the disk. If the log cannot be
//! written (full disk, I/O error) or falls too far behind, the session fails closed: every
//! further decision is a denial (`decided_by: "audit-unavailable"`), the error is printed
//! loudly, and records that could not be written go to stderr, so nothing is lost silently.
//!
//! Default location: `~/.local/state/agent-supervisor/audit/YYYY-MM-DD.jsonl`
//! (`$XDG_STATE_HOME` if set), or `/var/log/agent-supervisor/YYYY-MM-DD.jsonl` for root.
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// Records queued but not yet written beyond which the log counts as unavailable.
const MAX_BACKLOG: usize = 10_000;

/// One audit line.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// `<session>-<sequence>`; set by the writer.
    pub id: String,
    /// RFC 3339, UTC, microseconds.
    pub ts: String,
    pub session: String,
    /// The agent process (thread group id, host PID namespace).
    pub pid: i32,
    /// exec / open / connect / send / bind / session-start / session-end / exec-guard.
    pub kind: String,
    /// What was asked: program and argv, path and access, destination, ...
    pub action: serde_json::Value,
    /// allow / deny (absent for session records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// rule / filesystem / default / human / session / timeout / headless / command-line /
    /// audit-unavailable / exec-guard.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// `file:line:column` of the deciding rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Time from trap to decision, microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_us: Option<u64>,
    /// Who observed it when not the supervisor's own decision pipeline: `ebpf` for the
    /// kernel's process events (`proc-exec`, `proc-fork`, `proc-exit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

fn now() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

impl Record {
    fn base(session: &str, pid: i32, kind: &str, action: serde_json::Value) -> Record {
        Record {
            id: String::new(),
            ts: now(),
            session: session.to_string(),
            pid,
            kind: kind.to_string(),
            action,
            decision: None,
            decided_by: None,
            rule: None,
            reason: None,
            response_us: None,
            source: None,
        }
    }

    /// A decision.
    #[allow(clippy::too_many_arguments)]
    pub fn decision(
        session: &str,
        pid: i32,
        kind: &str,
        action: serde_json::Value,
        decision: &str,
        decided_by: &str,
        rule: Option<String>,
        reason: Option<String>,
        took: Duration,
    ) -> Record {
        Record {
            decision: Some(decision.into()),
            decided_by: Some(decided_by.into()),
            rule,
            reason,
            response_us: Some(took.as_micros() as u64),
            ..Record::base(session, pid, kind, action)
        }
    }

    /// The exec guard killed a process whose exec did not match the decision.
    pub fn guard_kill(session: &str, pid: i32, summary: &str, why: &str) -> Record {
        Record {
            decision: Some("deny".into()),
            decided_by: Some("exec-guard".into()),
            reason: Some(why.into()),
            ..Record::base(
                session,
                pid,
                "exec-guard",
                serde_json::json!({ "approved": summary }),
            )
        }
    }

    /// Session start / end.
    pub fn session(session: &str, pid: i32, kind: &str, action: serde_json::Value) -> Record {
        Record::base(session, pid, kind, action)
    }
}

/// Sees every record once its id is set, on the recording thread (CI mode's report, see
/// [`crate::ci`]). It must be quick and must not record.
pub type Observer = Arc<dyn Fn(&Record) + Send + Sync>;

/// Handle used by the supervisor's threads.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    observer: Option<Observer>,
}

struct Shared {
    broken: AtomicBool,
    backlog: AtomicUsize,
    seq: AtomicU64,
    path: PathBuf,
}

enum Msg {
    Record(Box<Record>),
    Flush(mpsc::Sender<io::Result<()>>),
}

/// Why the audit log could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the audit log {path}: {error} (choose another file with --audit FILE)")]
pub struct OpenError {
    pub path: PathBuf,
    pub error: io::Error,
}

/// The default audit file for today.
pub fn default_path(euid: u32) -> PathBuf {
    let day = &now()[..10];
    let dir = if euid == 0 {
        PathBuf::from("/var/log/agent-supervisor")
    } else if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
        PathBuf::from(state).join("agent-supervisor/audit")
    } else {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"));
        home.join(".local/state/agent-supervisor/audit")
    };
    dir.join(format!("{day}.jsonl"))
}

/// The opened log file, before its writer thread starts (the sandbox is launched in between,
/// while the supervisor is still single-threaded).
pub struct AuditFile {
    sink: Sink,
    path: PathBuf,
    export: Option<Arc<crate::audit_export::Exporters>>,
}

/// Where records go: a file, or the daemon's link (the daemon owns the log; see
/// [`crate::daemon::link`]).
enum Sink {
    File(File),
    Link(crate::daemon::link::LinkWriter),
}

impl AuditFile {
    /// Create the directory (0700) and open the file for appending (0600).
    pub fn open(path: &Path) -> Result<AuditFile, OpenError> {
        let err = |error| OpenError {
            path: path.to_path_buf(),
            error,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(err)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        Ok(AuditFile {
            sink: Sink::File(file),
            path: path.to_path_buf(),
            export: None,
        })
    }

    /// Send records to the daemon over its link instead of a file; `log` is the daemon's log
    /// (for messages only).
    pub fn to_daemon(link: crate::daemon::link::LinkWriter, log: &Path) -> AuditFile {
        AuditFile {
            sink: Sink::Link(link),
            path: log.to_path_buf(),
            export: None,
        }
    }

    /// Hand every record written to these exporters too (file sinks only: the daemon exports
    /// what it writes itself).
    pub fn export_to(&mut self, exporters: Arc<crate::audit_export::Exporters>) {
        if matches!(self.sink, Sink::File(_)) {
            self.export = Some(exporters);
        }
    }

    /// Start the writer thread.
    pub fn start(self) -> Result<Audit, OpenError> {
        let shared = Arc::new(Shared {
            broken: AtomicBool::new(false),
            backlog: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
            path: self.path.clone(),
        });
        let (tx, rx) = mpsc::channel();
        let s = Arc::clone(&shared);
        let sink = self.sink;
        let export = self.export;
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || writer(sink, rx, s, export))
            .map_err(|error| OpenError {
                path: self.path.clone(),
                error,
            })?;
        Ok(Audit {
            tx,
            shared,
            observer: None,
        })
    }
}

impl Audit {
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Show every record to `observer` too (set before the handle is cloned).
    pub fn with_observer(mut self, observer: Option<Observer>) -> Audit {
        self.observer = observer;
        self
    }

    /// Queue a record. Never blocks.
    pub fn record(&self, mut r: Record) {
        let seq = self.shared.seq.fetch_add(1, Ordering::SeqCst) + 1;
        r.id = format!("{}-{seq}", r.session);
        if let Some(observe) = &self.observer {
            observe(&r);
        }
        if self.shared.backlog.fetch_add(1, Ordering::SeqCst) + 1 > MAX_BACKLOG {
            self.mark_broken("the audit writer is more than 10000 records behind");
        }
        if let Err(mpsc::SendError(Msg::Record(r))) = self.tx.send(Msg::Record(Box::new(r))) {
            self.mark_broken("the audit writer stopped");
            eprintln!("{}", serde_json::to_string(&r).unwrap_or_default());
        }
    }

    /// Is the log unusable (decisions must fail closed)?
    pub fn unavailable(&self) -> bool {
        self.shared.broken.load(Ordering::SeqCst)
    }

    fn mark_broken(&self, why: &str) {
        mark_broken(&self.shared, why);
    }

    /// Wait until everything queued is written and flushed.
    pub fn flush(&self) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(Msg::Flush(tx))
            .map_err(|_| io::Error::other("the audit writer stopped"))?;
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| io::Error::other("the audit writer did not finish in 10 s"))?
    }
}

fn mark_broken(shared: &Shared, why: &str) {
    if !shared.broken.swap(true, Ordering::SeqCst) {
        eprintln!(
            "agent-supervisor: ERROR: the audit log {} cannot be written ({why}); every further action of the agent is DENIED. Unwritten records follow on stderr.",
            shared.path.display()
        );
    }
}

fn writer(
    mut sink: Sink,
    rx: mpsc::Receiver<Msg>,
    shared: Arc<Shared>,
    export: Option<Arc<crate::audit_export::Exporters>>,
) {
    let to_daemon = matches!(sink, Sink::Link(_));
    let mut failed = false;
    while let Ok(msg) = rx.recv() {
        // Write everything queued in one write(2); on failure the batch goes to stderr.
        let mut batch = String::new();
        let mut flushes = Vec::new();
        let mut next = Some(msg);
        while let Some(m) = next {
            match m {
                Msg::Record(r) => {
                    shared.backlog.fetch_sub(1, Ordering::SeqCst);
                    if to_daemon {
                        batch.push_str("A ");
                    }
                    batch.push_str(&serde_json::to_string(&r).unwrap_or_default());
                    batch.push('\n');
                }
                Msg::Flush(reply) => flushes.push(reply),
            }
            next = rx.try_recv().ok();
        }
        if !batch.is_empty() {
            if !failed {
                let written = match &mut sink {
                    Sink::File(file) => file.write_all(batch.as_bytes()),
                    Sink::Link(link) => link.write_raw(batch.as_bytes()),
                };
                match written {
                    Err(e) => {
                        failed = true;
                        mark_broken(&shared, &e.to_string());
                    }
                    Ok(()) => {
                        if let Some(export) = &export {
                            batch.lines().for_each(|l| export.export(l));
                        }
                    }
                }
            }
            if failed {
                eprint!("{batch}");
            }
        }
        for reply in flushes {
            let r = if failed {
                Err(io::Error::other("the audit log could not be written"))
            } else {
                match &sink {
                    Sink::File(file) => file.sync_data(),
                    // The daemon syncs its own log.
                    Sink::Link(_) => Ok(()),
                }
            };
            let _ = reply.send(r);
        }
    }
}
