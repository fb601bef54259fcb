//! The audit log: one JSON line per decision, written by one actor thread that owns the file.
//!
//! Handlers send [`Record`]s over a channel and never wait for the disk. If the log cannot be
//! written (full disk, I/O error) or falls too far behind, the session fails closed: every
//! further decision is a denial (`decided_by: "audit-unavailable"`), the error is printed
//! loudly, and records that could not be written go to stderr, so nothing is lost silently.
//!
//! Every record goes through [`Audit::record`]: secrets are redacted first
//! ([`agent_supervisor_audit::redact`]), then the record gets its id, then the observers see
//! it, then it is queued. The writer links each line into a hash chain, signs checkpoints when
//! given a key and rotates by size ([`file`]); `audit verify` checks it all ([`verify`]).
//!
//! Default location: `~/.local/state/agent-supervisor/audit/YYYY-MM-DD.jsonl`
//! (`$XDG_STATE_HOME` if set), or `/var/log/agent-supervisor/YYYY-MM-DD.jsonl` for root.
#![forbid(unsafe_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime};

use serde::Serialize;

pub mod file;
pub mod keys;
pub mod verify;

pub use file::Options;

/// Where lines go after they are written (journald, OTLP, ...): called by both writers with
/// each line once it is on disk. It must not block (queue and return); failures are its own.
pub trait Export: Send + Sync {
    fn export(&self, line: &str);
}

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

pub(crate) fn now() -> String {
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

    /// Mask the secrets in every free-form string (the action, the reason, the rule).
    pub fn redact(&mut self) {
        use agent_supervisor_audit::redact::{redact_json, redact_str};
        redact_json(&mut self.action);
        for s in [&mut self.reason, &mut self.rule].into_iter().flatten() {
            if let std::borrow::Cow::Owned(r) = redact_str(s) {
                *s = r;
            }
        }
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
}

struct Shared {
    broken: AtomicBool,
    backlog: AtomicUsize,
    seq: AtomicU64,
    path: PathBuf,
    /// Sees every record, redacted, in the writer thread (set once, before any record).
    observer: std::sync::OnceLock<Observer>,
}

enum Msg {
    Record(Box<Record>),
    /// Write what is queued, a checkpoint (when signing), and sync.
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
}

/// Where records go: a file, or the daemon's link (the daemon owns the log; see
/// [`crate::daemon::link`]).
enum Sink {
    File(Box<file::ChainFile>),
    Link(crate::daemon::link::LinkWriter),
}

impl AuditFile {
    /// Create the directory (0700) and open the file for appending (0600); `opts` say how the
    /// chain is written (key, rotation, lock: standalone runs share files, so lock).
    pub fn open(path: &Path, opts: Options) -> Result<AuditFile, OpenError> {
        let file = file::ChainFile::open(path, opts).map_err(|error| OpenError {
            path: path.to_path_buf(),
            error,
        })?;
        Ok(AuditFile {
            sink: Sink::File(Box::new(file)),
            path: path.to_path_buf(),
        })
    }

    /// The lock file of the log's directory (to hide from the agent: holding it would stall
    /// the writer, which then fails closed).
    pub fn lock_path(&self) -> Option<PathBuf> {
        match &self.sink {
            Sink::File(f) => f.lock_path(),
            Sink::Link(_) => None,
        }
    }

    /// Send records to the daemon over its link instead of a file; `log` is the daemon's log
    /// (for messages only).
    pub fn to_daemon(link: crate::daemon::link::LinkWriter, log: &Path) -> AuditFile {
        AuditFile {
            sink: Sink::Link(link),
            path: log.to_path_buf(),
        }
    }

    /// Start the writer thread.
    pub fn start(self) -> Result<Audit, OpenError> {
        let shared = Arc::new(Shared {
            broken: AtomicBool::new(false),
            backlog: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
            path: self.path.clone(),
            observer: std::sync::OnceLock::new(),
        });
        let (tx, rx) = mpsc::channel();
        let s = Arc::clone(&shared);
        let sink = self.sink;
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                crate::sys::batch_scheduling_this_thread();
                writer(sink, rx, s)
            })
            .map_err(|error| OpenError {
                path: self.path.clone(),
                error,
            })?;
        Ok(Audit { tx, shared })
    }
}

impl Audit {
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Show every record to `observer` too (set before the first record).
    pub fn with_observer(self, observer: Option<Observer>) -> Audit {
        if let Some(observer) = observer {
            let _ = self.shared.observer.set(observer);
        }
        self
    }

    /// Assign the id and queue; the writer thread redacts the record, shows it to the
    /// observer, then writes it (so that compiling the redaction patterns, ~2 ms, is never
    /// on a session's start-up path). Never blocks.
    pub fn record(&self, mut r: Record) {
        let seq = self.shared.seq.fetch_add(1, Ordering::SeqCst) + 1;
        r.id = format!("{}-{seq}", r.session);
        if self.shared.backlog.fetch_add(1, Ordering::SeqCst) + 1 > MAX_BACKLOG {
            self.mark_broken("the audit writer is more than 10000 records behind");
        }
        if let Err(mpsc::SendError(Msg::Record(mut r))) = self.tx.send(Msg::Record(Box::new(r))) {
            self.mark_broken("the audit writer stopped");
            r.redact();
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

    /// Wait until everything queued is written (and its writeback to disk started, see
    /// [`file::ChainFile::sync`]).
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

/// The writer stops taking queued records into a batch once it holds this many bytes.
const MAX_BATCH_BYTES: usize = 4096;

fn writer(mut sink: Sink, rx: mpsc::Receiver<Msg>, shared: Arc<Shared>) {
    let mut failed = false;
    // Wake up now and then to sign what was written since the last checkpoint.
    let tick = Duration::from_secs(5);
    loop {
        let msg = match rx.recv_timeout(tick) {
            Ok(m) => Some(m),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        // Write everything queued in one go; on failure the batch goes to stderr.
        let mut records = Vec::new();
        let mut flushes = Vec::new();
        let mut batch_bytes = 0;
        let mut next = msg;
        while let Some(m) = next {
            match m {
                Msg::Record(mut r) => {
                    shared.backlog.fetch_sub(1, Ordering::SeqCst);
                    r.redact();
                    // The observer (the CI report) sees the record as written: redacted,
                    // with its id.
                    if let Some(observe) = shared.observer.get() {
                        observe(&r);
                    }
                    records.push(serde_json::to_string(&r).unwrap_or_default());
                    batch_bytes += records.last().map_or(0, String::len);
                }
                Msg::Flush(reply) => flushes.push(reply),
            }
            // A batch is written whole (never split across rotated files): keep it small,
            // the rest stays queued for the next round.
            next = if batch_bytes < MAX_BATCH_BYTES {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if failed {
            for r in &records {
                eprintln!("{r}");
            }
        } else {
            let written = match &mut sink {
                Sink::File(file) => {
                    let idle_checkpoint = records.is_empty() && file.checkpoint_due();
                    if records.is_empty() && flushes.is_empty() && !idle_checkpoint {
                        Ok(())
                    } else {
                        file.append(&records, !flushes.is_empty() || idle_checkpoint)
                            .map(|_| ())
                    }
                }
                Sink::Link(link) if !records.is_empty() => {
                    let mut batch = String::new();
                    for r in &records {
                        batch.push_str("A ");
                        batch.push_str(r);
                        batch.push('\n');
                    }
                    link.write_raw(batch.as_bytes())
                }
                Sink::Link(_) => Ok(()),
            };
            if let Err(e) = written {
                failed = true;
                mark_broken(&shared, &e.to_string());
                for r in &records {
                    eprintln!("{r}");
                }
            }
        }
        for reply in flushes {
            let r = if failed {
                Err(io::Error::other("the audit log could not be written"))
            } else {
                match &sink {
                    Sink::File(file) => file.sync(),
                    // The daemon syncs its own log.
                    Sink::Link(_) => Ok(()),
                }
            };
            let _ = reply.send(r);
        }
    }
}

/// A size: bytes, or a number with K, M or G (powers of 1024), e.g. `64M`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => 0,
            };
            (&t[..i], mult)
        }
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .filter(|_| mult > 0)
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            format!("`{s}` is not a size: expected bytes, or a number with K, M or G (e.g. 64M)")
        })
}
