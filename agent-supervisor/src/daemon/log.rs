//! The daemon's audit log: one JSON-lines chain of files that every session's records go to,
//! written by one thread (the only writer), and the source of the audit stream.
//!
//! Every line is linked into the hash chain and checkpoints are signed with the daemon's key
//! (see [`crate::audit::file`]); the log rotates by size and by day (`daemon.jsonl` becomes
//! `daemon.N.jsonl`). The daemon's own records are redacted like the sessions' (which redact
//! theirs before sending them).
//!
//! A record's cursor is the byte offset just past its line in the concatenation of the log's
//! files (the rotated ones in order, then the active one), so cursors stay valid across
//! rotations (not across removing rotated files). A stream replays from the files (from any
//! cursor, across daemon restarts), then follows the writer's broadcast; a follower that falls
//! behind, or sees a gap, reads the missing part from the files again: nothing is lost. If the
//! log cannot be written, the daemon fails closed (`on_broken`: every session is killed and no
//! new one starts).
#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::broadcast;

use crate::audit::file::{self, ChainFile};

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
    /// Write what is queued, a checkpoint (when records were written since the last), sync.
    Flush(mpsc::Sender<io::Result<()>>),
}

/// One file of the log: where it starts in the global offsets.
#[derive(Debug, Clone)]
struct Segment {
    path: PathBuf,
    base: u64,
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
    /// The files, oldest first; the writer holds the lock while it rotates.
    segments: Arc<Mutex<Vec<Segment>>>,
}

impl AuditLog {
    /// Open (create: directory 0700, file 0600) and start the writer. A last line cut short by
    /// a crash is ended with a newline so that the next record starts a line of its own.
    pub fn open(
        path: &Path,
        opts: file::Options,
        on_broken: Box<dyn Fn(&str) + Send>,
    ) -> io::Result<AuditLog> {
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        {
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .mode(0o600)
                .open(path)?;
            let len = file.metadata()?.len();
            if len > 0 {
                let mut last = [0u8];
                file.seek(SeekFrom::Start(len - 1))?;
                file.read_exact(&mut last)?;
                if last[0] != b'\n' {
                    file.write_all(b"\n")?;
                }
            }
        }
        let mut segments = Vec::new();
        let mut base = 0;
        for p in file::segments(path)? {
            let len = std::fs::metadata(&p)?.len();
            segments.push(Segment { path: p, base });
            base += len;
        }
        let chain = ChainFile::open(path, opts)?;
        let committed = Arc::new(AtomicU64::new(base));
        let broken = Arc::new(AtomicBool::new(false));
        let segments = Arc::new(Mutex::new(segments));
        let (events, _) = broadcast::channel(4096);
        let (tx, rx) = mpsc::channel();
        {
            let w = Writer {
                chain,
                events: events.clone(),
                committed: Arc::clone(&committed),
                broken: Arc::clone(&broken),
                segments: Arc::clone(&segments),
                on_broken,
            };
            std::thread::Builder::new()
                .name("audit-log".into())
                .spawn(move || w.run(rx))?;
        }
        Ok(AuditLog {
            tx,
            events,
            committed,
            broken,
            path: path.to_path_buf(),
            seq: Arc::new(AtomicU64::new(0)),
            segments,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record line (already JSON, redacted, no newline, without the chain's fields).
    pub fn append(&self, line: String) {
        let _ = self.tx.send(Msg::Line(line));
    }

    /// Append a record of the daemon's own (id `daemon-<pid>-<n>`), redacted.
    pub fn record(&self, mut r: crate::audit::Record) {
        r.redact();
        let n = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        r.id = format!("daemon-{}-{n}", std::process::id());
        r.source = Some("daemon".into());
        self.append(serde_json::to_string(&r).unwrap_or_default());
    }

    /// Wait until everything appended so far is on disk, after a checkpoint over it.
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

    /// The segment holding global offset `at` (the last starting at or before it), opened.
    fn open_segments_from(&self, at: u64) -> io::Result<Vec<(Segment, Option<u64>, File)>> {
        let segs = self.segments.lock().expect("segments lock");
        let mut out = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let next = segs.get(i + 1).map(|n| n.base);
            if next.is_some_and(|n| n <= at && n > s.base) {
                continue;
            }
            out.push((s.clone(), next, File::open(&s.path)?));
        }
        Ok(out)
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
        let segs = self.open_segments_from(cursor).map_err(|e| e.to_string())?;
        let Some((s, _, mut f)) = segs.into_iter().next() else {
            return Err("the audit log has no file".into());
        };
        if cursor == s.base {
            return Ok(());
        }
        let mut b = [0u8];
        f.seek(SeekFrom::Start(cursor - s.base - 1))
            .and_then(|_| f.read_exact(&mut b))
            .map_err(|e| e.to_string())?;
        if b[0] != b'\n' {
            return Err(format!("cursor {cursor} is not a record boundary"));
        }
        Ok(())
    }

    /// Records whose lines lie in `[from, to)`, at most about `max_bytes` of them.
    pub fn read_range(&self, from: u64, to: u64, max_bytes: u64) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut pos = from;
        for (s, next, mut f) in self.open_segments_from(from)? {
            let seg_end = next.unwrap_or(u64::MAX).min(to);
            if pos >= seg_end {
                break;
            }
            f.seek(SeekFrom::Start(pos - s.base))?;
            let mut r = BufReader::new(f.take(seg_end - pos));
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
            if pos - from >= max_bytes || pos < seg_end.min(next.unwrap_or(u64::MAX)) {
                break;
            }
        }
        Ok(out)
    }
}

struct Writer {
    chain: ChainFile,
    events: broadcast::Sender<Arc<Entry>>,
    committed: Arc<AtomicU64>,
    broken: Arc<AtomicBool>,
    segments: Arc<Mutex<Vec<Segment>>>,
    on_broken: Box<dyn Fn(&str) + Send>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let tick = std::time::Duration::from_secs(5);
        loop {
            let msg = match rx.recv_timeout(tick) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut lines = Vec::new();
            let mut flushes = Vec::new();
            let mut next = msg;
            while let Some(m) = next {
                match m {
                    Msg::Line(l) => lines.push(l),
                    Msg::Flush(reply) => flushes.push(reply),
                }
                next = rx.try_recv().ok();
            }
            let checkpoint = !flushes.is_empty() || self.chain.checkpoint_due();
            if self.broken.load(Ordering::SeqCst) {
                for l in &lines {
                    eprintln!("{l}");
                }
            } else if !lines.is_empty() || checkpoint {
                self.write(&lines, checkpoint);
            }
            for reply in flushes {
                let r = if self.broken.load(Ordering::SeqCst) {
                    Err(io::Error::other("the audit log could not be written"))
                } else {
                    self.chain.sync()
                };
                let _ = reply.send(r);
            }
        }
    }

    fn write(&mut self, lines: &[String], checkpoint: bool) {
        // Rotation renames the active file: readers open files under the same lock.
        let appended = {
            let mut segs = self.segments.lock().expect("segments lock");
            let r = self.chain.append(lines, checkpoint);
            if let Ok(a) = &r {
                if let Some((to, len)) = &a.rotated {
                    let last = segs.last_mut().expect("the active segment");
                    last.path = to.clone();
                    let base = last.base + len;
                    segs.push(Segment {
                        path: self.chain.path().to_path_buf(),
                        base,
                    });
                }
            }
            r.map(|a| (a, segs.last().expect("the active segment").base))
        };
        match appended {
            Ok((a, base)) => {
                for w in a.lines {
                    let e = Entry::new(base + w.offset, w.line);
                    self.committed.store(e.end, Ordering::SeqCst);
                    let _ = self.events.send(Arc::new(e));
                }
            }
            Err(e) => {
                self.broken.store(true, Ordering::SeqCst);
                for l in lines {
                    eprintln!("{l}");
                }
                (self.on_broken)(&e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> file::Options {
        file::Options::default()
    }

    #[test]
    fn cursors_replay_and_torn_last_line() {
        let dir = std::env::temp_dir().join(format!("as-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("a.jsonl");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, "{\"session\":\"s0\"}\n{\"sess").unwrap();
        let log = AuditLog::open(&path, opts(), Box::new(|_| {})).unwrap();
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

    #[test]
    fn cursors_are_global_across_rotated_files() {
        let dir = std::env::temp_dir().join(format!("as-log-rot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("daemon.jsonl");
        let key = Arc::new(agent_supervisor_audit::SigningKey::from_bytes(&[1; 32]));
        let o = file::Options {
            max_size: Some(400),
            key: Some(key.clone()),
            checkpoint_records: 4,
            ..opts()
        };
        let log = AuditLog::open(&path, o.clone(), Box::new(|_| {})).unwrap();
        let mut rx = log.subscribe();
        for i in 0..20 {
            log.append(format!("{{\"session\":\"s{i}\",\"kind\":\"open\"}}"));
            log.flush().unwrap();
        }
        let mut live = Vec::new();
        while let Ok(e) = rx.try_recv() {
            live.push(e);
        }
        let files = file::segments(&path).unwrap();
        assert!(files.len() >= 4, "{files:?}");
        // The replay from 0 is every line of every file, with the cursors the writer gave.
        let all = log.read_range(0, log.committed(), u64::MAX).unwrap();
        let text: String = files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect();
        assert_eq!(
            all.iter().map(|e| e.line.clone()).collect::<Vec<_>>(),
            text.lines().collect::<Vec<_>>()
        );
        assert_eq!(
            all.iter().map(|e| e.end).collect::<Vec<_>>(),
            live.iter().map(|e| e.end).collect::<Vec<_>>()
        );
        assert_eq!(log.committed(), text.len() as u64);
        // From a cursor in a middle file, with a small page.
        let mid = &all[all.len() / 2];
        assert!(log.check_cursor(mid.end).is_ok());
        assert!(log.check_cursor(mid.end - 2).is_err());
        let rest = log.read_range(mid.end, log.committed(), 1).unwrap();
        assert_eq!(rest[0].line, all[all.len() / 2 + 1].line);
        // After a restart: the same global offsets.
        drop(log);
        let again = AuditLog::open(&path, o, Box::new(|_| {})).unwrap();
        assert_eq!(again.committed(), text.len() as u64);
        assert!(again.check_cursor(mid.end).is_ok());
        // And the chain verifies across the files.
        let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        let bytes: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
        let inputs: Vec<_> = names
            .iter()
            .zip(&bytes)
            .map(|(n, b)| agent_supervisor_audit::FileInput { name: n, bytes: b })
            .collect();
        let r = agent_supervisor_audit::verify_files(&inputs, Some(&key.verifying_key()));
        assert!(r.ok() && r.warnings.is_empty(), "{r:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
