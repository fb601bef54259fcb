//! Optional copies of the audit records for fleets: to the systemd journal and as
//! OpenTelemetry logs (OTLP over gRPC).
//!
//! The audit file stays the record of truth: a line is handed to the exporters only after it
//! was written there, and exporting never slows the writer down or makes a decision wait.
//! Lines go through a bounded queue to one `audit-export` thread; when a sink is down or too
//! slow the queue fills and further lines are *dropped and counted* (the count is reported at
//! the end, on stderr and in the log), never blocked on. OTLP batches (up to
//! [`OTLP_BATCH`] records or [`OTLP_LINGER`]) are retried a few times with back-off before they
//! count as dropped.
//!
//! Where each record goes:
//! - journald: one entry per record, `MESSAGE` a one-line summary, `PRIORITY` warning for
//!   denials and info otherwise, `SYSLOG_IDENTIFIER=agent-supervisor`, the record's fields as
//!   `AUDIT_SESSION`, `AUDIT_ID`, `AUDIT_KIND`, `AUDIT_DECISION`, `AUDIT_DECIDED_BY`,
//!   `AUDIT_RULE`, `AUDIT_PID`, and the whole line, byte for byte, as `AUDIT_RECORD`.
//! - OTLP: one `LogRecord` per record (time from `ts`, severity WARN/INFO, body the summary,
//!   attributes `session.id`, `audit.id`, `audit.kind`, `audit.decision`, `audit.decided_by`,
//!   `audit.rule`, `process.pid` and `audit.record` with the whole line), in a resource with
//!   `service.name = agent-supervisor` and `host.name`.
#![forbid(unsafe_code)]

mod journald;
mod otlp;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Lines waiting for the exporters beyond which new ones are dropped.
pub const QUEUE: usize = 16_384;
/// Records in one OTLP request at most.
pub const OTLP_BATCH: usize = 512;
/// How long a record waits for more to fill an OTLP batch.
pub const OTLP_LINGER: Duration = Duration::from_millis(200);
/// How long [`Exporters::finish`] waits for the queue to drain.
pub const FINISH_WAIT: Duration = Duration::from_secs(5);

/// Where to export: `run --audit-journald --audit-otlp URL`, or the daemon's `[audit_export]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// Send every record to the systemd journal.
    pub journald: bool,
    /// OTLP/gRPC endpoint of a collector, `http://host:4317` (or `https://`).
    pub otlp: Option<String>,
}

impl ExportConfig {
    pub fn is_empty(&self) -> bool {
        !self.journald && self.otlp.is_none()
    }
}

/// Why the exporters could not start: always a bad setting, said before the agent starts.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("--audit-otlp {endpoint}: {why} (expected http://HOST:PORT or https://HOST:PORT, e.g. http://127.0.0.1:4317)")]
    BadEndpoint { endpoint: String, why: String },
    #[error("--audit-journald: the systemd journal is not running here ({path} is not a socket); drop the option or start systemd-journald")]
    NoJournal { path: &'static str },
    #[error("starting the audit-export thread")]
    Thread(#[source] std::io::Error),
}

/// What was exported and dropped, for the end-of-session line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExportStats {
    pub exported: u64,
    pub dropped: u64,
}

/// Counters shared with the export thread.
#[derive(Default)]
struct Counters {
    exported: AtomicU64,
    dropped: AtomicU64,
}

impl ExportStats {
    /// The line to print when records could not be exported (None when every one was):
    /// how many, and that the audit log `log` has them all.
    pub fn dropped_warning(&self, log: &std::path::Path) -> Option<String> {
        (self.dropped > 0).then(|| {
            format!(
                "{} of {} audit records were not exported (journald/OTLP unreachable or too slow); the audit file {} has them all",
                self.dropped,
                self.dropped + self.exported,
                log.display()
            )
        })
    }
}

impl Counters {
    fn stats(&self) -> ExportStats {
        ExportStats {
            exported: self.exported.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// The exporters. [`Exporters::export`] never blocks; lines queue until
/// [`Exporters::spawn`] starts the thread that sends them.
pub struct Exporters {
    tx: Mutex<Option<mpsc::SyncSender<String>>>,
    counters: Arc<Counters>,
    /// Until spawned: the receiving end and the sinks.
    pending: Mutex<Option<Pending>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The export thread's inputs, kept until it is spawned.
type Pending = (mpsc::Receiver<String>, Vec<Box<dyn Sink>>);

/// One destination.
trait Sink: Send {
    /// Take a batch of lines (each one complete JSON record); returns how many were exported.
    fn send(&mut self, lines: &[String]) -> usize;
    /// Hold lines for a batch (OTLP) or send each at once (journald).
    fn batches(&self) -> bool;
}

impl Exporters {
    /// Check the settings and set the exporters up without starting any thread (the
    /// supervisor is still single-threaded before the launch); `None` when nothing is to be
    /// exported.
    pub fn prepare(config: &ExportConfig) -> Result<Option<Arc<Exporters>>, ExportError> {
        if config.is_empty() {
            return Ok(None);
        }
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        if config.journald {
            sinks.push(Box::new(journald::Journald::open()?));
        }
        if let Some(endpoint) = &config.otlp {
            sinks.push(Box::new(otlp::Otlp::new(endpoint)?));
        }
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        Ok(Some(Arc::new(Exporters {
            tx: Mutex::new(Some(tx)),
            counters: Arc::new(Counters::default()),
            pending: Mutex::new(Some((rx, sinks))),
            thread: Mutex::new(None),
        })))
    }

    /// [`Exporters::prepare`], then [`Exporters::spawn`].
    pub fn start(config: &ExportConfig) -> Result<Option<Arc<Exporters>>, ExportError> {
        let exporters = Self::prepare(config)?;
        if let Some(e) = &exporters {
            e.spawn()?;
        }
        Ok(exporters)
    }

    /// Start the export thread (once; later calls do nothing).
    pub fn spawn(&self) -> Result<(), ExportError> {
        let Some((rx, sinks)) = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return Ok(());
        };
        let c = Arc::clone(&self.counters);
        let thread = std::thread::Builder::new()
            .name("audit-export".into())
            .spawn(move || run(rx, sinks, &c))
            .map_err(ExportError::Thread)?;
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
        Ok(())
    }

    /// Hand over one written record (its JSON line, without the newline). Never blocks: when
    /// the queue is full the line is dropped and counted.
    pub fn export(&self, line: &str) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = tx.as_ref() else {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if tx.try_send(line.to_string()).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts so far.
    pub fn stats(&self) -> ExportStats {
        self.counters.stats()
    }

    /// Stop taking lines, let the thread send what is queued (up to [`FINISH_WAIT`]), and say
    /// what was exported and dropped. Lines still queued at the deadline count as dropped.
    pub fn finish(&self) -> ExportStats {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let deadline = Instant::now() + FINISH_WAIT;
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
        self.counters.stats()
    }
}

/// The export thread: journald lines go out one by one, OTLP ones in batches.
fn run(rx: mpsc::Receiver<String>, mut sinks: Vec<Box<dyn Sink>>, counters: &Counters) {
    let batching = sinks.iter().any(|s| s.batches());
    let mut batch: Vec<String> = Vec::new();
    let mut first_at: Option<Instant> = None;
    loop {
        let wait = match first_at {
            Some(t) if batching => OTLP_LINGER.saturating_sub(t.elapsed()),
            _ => Duration::from_secs(3600),
        };
        let (closed, got) = match rx.recv_timeout(wait) {
            Ok(line) => (false, Some(line)),
            Err(mpsc::RecvTimeoutError::Timeout) => (false, None),
            Err(mpsc::RecvTimeoutError::Disconnected) => (true, None),
        };
        if let Some(line) = got {
            first_at.get_or_insert_with(Instant::now);
            batch.push(line);
            // Take whatever else is already queued, up to a batch.
            while batch.len() < OTLP_BATCH {
                match rx.try_recv() {
                    Ok(line) => batch.push(line),
                    Err(_) => break,
                }
            }
        }
        let due = !batching
            || closed
            || batch.len() >= OTLP_BATCH
            || first_at.is_some_and(|t| t.elapsed() >= OTLP_LINGER);
        if due && !batch.is_empty() {
            // A record counts as exported when every sink took it.
            let taken = sinks.iter_mut().map(|s| s.send(&batch)).min().unwrap_or(0);
            counters.exported.fetch_add(taken as u64, Ordering::Relaxed);
            counters
                .dropped
                .fetch_add((batch.len() - taken) as u64, Ordering::Relaxed);
            batch.clear();
            first_at = None;
        }
        if closed {
            return;
        }
    }
}

/// The fields exporters use, read from one record line.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Fields {
    pub ts: String,
    pub id: String,
    pub session: String,
    pub pid: i64,
    pub kind: String,
    pub decision: String,
    pub decided_by: String,
    pub rule: String,
    pub summary: String,
}

impl Fields {
    pub(crate) fn of(line: &str) -> Fields {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        let what = describe_action(&v["action"]);
        let decision = s("decision");
        let summary = match (decision.as_str(), s("rule").as_str()) {
            ("", _) => format!("{} {what}", s("kind")),
            (d, "") => format!("{d} {} {what} ({})", s("kind"), s("decided_by")),
            (d, rule) => format!("{d} {} {what} (rule {rule})", s("kind")),
        };
        Fields {
            ts: s("ts"),
            id: s("id"),
            session: s("session"),
            pid: v["pid"].as_i64().unwrap_or(0),
            kind: s("kind"),
            decision,
            decided_by: s("decided_by"),
            rule: s("rule"),
            summary: summary.trim_end().to_string(),
        }
    }

    /// Denials are warnings; everything else is information.
    pub(crate) fn is_denial(&self) -> bool {
        self.decision == "deny"
    }
}

/// A short text for an action: its argv, path or destination; at most 200 characters.
fn describe_action(action: &serde_json::Value) -> String {
    let text = if let Some(argv) = action["argv"].as_array() {
        argv.iter()
            .filter_map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    } else if let Some(s) = ["path", "destination", "host", "name", "program"]
        .iter()
        .find_map(|k| action[*k].as_str())
    {
        s.to_string()
    } else if action.is_null() {
        String::new()
    } else {
        action.to_string()
    };
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out
}

impl crate::audit::Export for Exporters {
    fn export(&self, line: &str) {
        Exporters::export(self, line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_line_gives_its_fields_and_summary() {
        let line = r#"{"id":"abc-3","ts":"2026-11-21T10:00:00.000001Z","session":"abc","pid":42,"kind":"exec","action":{"argv":["curl","-d","x\ny"]},"decision":"deny","decided_by":"rule","rule":"/p.toml:3:1"}"#;
        let f = Fields::of(line);
        assert_eq!(f.id, "abc-3");
        assert_eq!(f.pid, 42);
        assert!(f.is_denial());
        assert_eq!(f.summary, "deny exec curl -d x y (rule /p.toml:3:1)");
        let start = Fields::of(r#"{"kind":"session-start","action":{"argv":["sh"]}}"#);
        assert_eq!(start.summary, "session-start sh");
        assert!(!start.is_denial());
        let d = Fields::of(
            r#"{"kind":"connect","action":{"destination":"1.2.3.4:443"},"decision":"deny","decided_by":"headless"}"#,
        );
        assert_eq!(d.summary, "deny connect 1.2.3.4:443 (headless)");
    }

    struct Counting(Arc<Mutex<Vec<String>>>, bool, usize);
    impl Sink for Counting {
        fn send(&mut self, lines: &[String]) -> usize {
            self.0.lock().unwrap().extend(lines.iter().cloned());
            lines.len().min(self.2)
        }
        fn batches(&self) -> bool {
            self.1
        }
    }

    fn start_with(sink: Counting) -> Exporters {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(sink)];
        let e = Exporters {
            tx: Mutex::new(Some(tx)),
            counters: Arc::new(Counters::default()),
            pending: Mutex::new(Some((rx, sinks))),
            thread: Mutex::new(None),
        };
        e.spawn().expect("spawn");
        e
    }

    #[test]
    fn every_line_reaches_the_sink_in_order_and_finish_drains_the_queue() {
        for batching in [false, true] {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let e = start_with(Counting(Arc::clone(&seen), batching, usize::MAX));
            for i in 0..1000 {
                e.export(&format!("{{\"id\":\"s-{i}\"}}"));
            }
            let stats = e.finish();
            assert_eq!(
                stats,
                ExportStats {
                    exported: 1000,
                    dropped: 0
                }
            );
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 1000);
            assert!(seen
                .iter()
                .enumerate()
                .all(|(i, l)| l == &format!("{{\"id\":\"s-{i}\"}}")));
            // After finish, nothing is taken any more, and that is counted.
            e.export("late");
            assert_eq!(e.stats().dropped, 1);
        }
    }

    #[test]
    fn lines_a_sink_refuses_are_counted_as_dropped() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let e = start_with(Counting(seen, false, 0));
        for _ in 0..10 {
            e.export("{}");
        }
        assert_eq!(
            e.finish(),
            ExportStats {
                exported: 0,
                dropped: 10
            }
        );
    }
}
