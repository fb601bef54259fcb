//! The daemon's audit log: one JSON-lines file that every session's records go to, written by
//! one thread (the only writer), and the source of the audit stream.
//!
//! A record's cursor is the byte offset just past its line. A stream replays from the file
//! (from any cursor, across daemon restarts), then follows the writer's broadcast; a follower
//! that falls behind, or sees a gap, reads the missing part from the file again: nothing is
//! lost. If the file cannot be written, the daemon fails closed (`on_broken`: every session is
//! killed and no new one starts).
#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use tokio::sync::broadcast;

/// One record as written.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Byte offset of the line's start, and just past its newline (the cursor).
    pub start: u64,
    pub end: u64,
    pub line: String,
    pub session: String,
    pub kind: String,
    pub decision: String,
    pub decided_by: String,
}

impl Entry {
    fn new(start: u64, line: String) -> Entry {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        Entry {
            start,
            end: start + line.len() as u64 + 1,
            session: field("session"),
            kind: field("kind"),
            decision: field("decision"),
            decided_by: field("decided_by"),
            line,
        }
    }
}

enum Msg {
    Line(String),
    Flush(mpsc::Sender<io::Result<()>>),
}

/// Handle to the log.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    events: broadcast::Sender<Arc<Entry>>,
    committed: Arc<AtomicU64>,
    broken: Arc<AtomicBool>,
    path: PathBuf,
    seq: Arc<AtomicU64>,
}

impl AuditLog {
    /// Open (create: directory 0700, file 0600) and start the writer. A last line cut short by
    /// a crash is ended with a newline so that the next record starts a line of its own.
    pub fn open(path: &Path, on_broken: Box<dyn Fn(&str) + Send>) -> io::Result<AuditLog> {
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(path)?;
        let mut len = file.metadata()?.len();
        if len > 0 {
            let mut last = [0u8];
            file.seek(SeekFrom::Start(len - 1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
                len += 1;
            }
        }
        let committed = Arc::new(AtomicU64::new(len));
        let broken = Arc::new(AtomicBool::new(false));
        let (events, _) = broadcast::channel(4096);
        let (tx, rx) = mpsc::channel();
        {
            let events = events.clone();
            let committed = Arc::clone(&committed);
            let broken = Arc::clone(&broken);
            std::thread::Builder::new()
                .name("audit-log".into())
                .spawn(move || writer(file, rx, events, committed, broken, on_broken))?;
        }
        Ok(AuditLog {
            tx,
            events,
            committed,
            broken,
            path: path.to_path_buf(),
            seq: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record line (already JSON, no newline).
    pub fn append(&self, line: String) {
        let _ = self.tx.send(Msg::Line(line));
    }

    /// Append a record of the daemon's own (id `daemon-<pid>-<n>`).
    pub fn record(&self, mut r: crate::audit::Record) {
        let n = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        r.id = format!("daemon-{}-{n}", std::process::id());
        r.source = Some("daemon".into());
        self.append(serde_json::to_string(&r).unwrap_or_default());
    }

    /// Wait until everything appended so far is on disk.
    pub fn flush(&self) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(Msg::Flush(tx))
            .map_err(|_| io::Error::other("the audit writer stopped"))?;
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .map_err(|_| io::Error::other("the audit writer did not finish in 10 s"))?
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    /// Offset just past the last complete record written.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Entry>> {
        self.events.subscribe()
    }

    /// Is `cursor` a record boundary of this log (0, or just past a newline, not beyond the
    /// end)?
    pub fn check_cursor(&self, cursor: u64) -> Result<(), String> {
        if cursor == 0 {
            return Ok(());
        }
        let end = self.committed();
        if cursor > end {
            return Err(format!(
                "cursor {cursor} is beyond the end of the audit log ({end} bytes): was the log replaced?"
            ));
        }
        let mut f = File::open(&self.path).map_err(|e| e.to_string())?;
        let mut b = [0u8];
        f.seek(SeekFrom::Start(cursor - 1))
            .and_then(|_| f.read_exact(&mut b))
            .map_err(|e| e.to_string())?;
        if b[0] != b'\n' {
            return Err(format!("cursor {cursor} is not a record boundary"));
        }
        Ok(())
    }

    /// Records whose lines lie in `[from, to)`, at most about `max_bytes` of them.
    pub fn read_range(&self, from: u64, to: u64, max_bytes: u64) -> io::Result<Vec<Entry>> {
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(from))?;
        let mut r = BufReader::new(f.take(to.saturating_sub(from)));
        let mut out = Vec::new();
        let mut pos = from;
        let mut line = String::new();
        while pos - from < max_bytes {
            line.clear();
            let n = r.read_line(&mut line)?;
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            line.pop();
            let e = Entry::new(pos, line.clone());
            pos = e.end;
            out.push(e);
        }
        Ok(out)
    }
}

fn writer(
    mut file: File,
    rx: mpsc::Receiver<Msg>,
    events: broadcast::Sender<Arc<Entry>>,
    committed: Arc<AtomicU64>,
    broken: Arc<AtomicBool>,
    on_broken: Box<dyn Fn(&str) + Send>,
) {
    let mut pos = committed.load(Ordering::SeqCst);
    while let Ok(msg) = rx.recv() {
        let mut lines = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(msg);
        while let Some(m) = next {
            match m {
                Msg::Line(l) => lines.push(l),
                Msg::Flush(reply) => flushes.push(reply),
            }
            next = rx.try_recv().ok();
        }
        if !lines.is_empty() {
            let mut batch = String::new();
            for l in &lines {
                batch.push_str(l);
                batch.push('\n');
            }
            if broken.load(Ordering::SeqCst) {
                eprint!("{batch}");
            } else if let Err(e) = file.write_all(batch.as_bytes()) {
                broken.store(true, Ordering::SeqCst);
                eprint!("{batch}");
                on_broken(&e.to_string());
            } else {
                for l in lines {
                    let e = Entry::new(pos, l);
                    pos = e.end;
                    committed.store(pos, Ordering::SeqCst);
                    let _ = events.send(Arc::new(e));
                }
            }
        }
        for reply in flushes {
            let r = if broken.load(Ordering::SeqCst) {
                Err(io::Error::other("the audit log could not be written"))
            } else {
                file.sync_data()
            };
            let _ = reply.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_replay_and_torn_last_line() {
        let dir = std::env::temp_dir().join(format!("as-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("a.jsonl");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, "{\"session\":\"s0\"}\n{\"sess").unwrap();
        let log = AuditLog::open(&path, Box::new(|_| {})).unwrap();
        let mut rx = log.subscribe();
        log.append("{\"session\":\"s1\",\"kind\":\"open\",\"decision\":\"deny\"}".into());
        log.append("{\"session\":\"s2\"}".into());
        log.flush().unwrap();
        let first = rx.blocking_recv().unwrap();
        assert_eq!(first.session, "s1");
        assert_eq!(first.decision, "deny");
        let all = log.read_range(0, log.committed(), u64::MAX).unwrap();
        let sessions: Vec<_> = all.iter().map(|e| e.session.as_str()).collect();
        assert_eq!(sessions, ["s0", "", "s1", "s2"]);
        assert!(log.check_cursor(first.end).is_ok());
        assert!(log.check_cursor(first.end - 1).is_err());
        assert!(log.check_cursor(log.committed() + 1).is_err());
        let after = log
            .read_range(first.end, log.committed(), u64::MAX)
            .unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].session, "s2");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
