//! A chained audit file on disk: appends batches of records linked to the chain (see
//! `agent-supervisor-audit`), signs checkpoints, rotates by size and by day without breaking
//! the chain, and calls the exporter with each line written.
//!
//! Several standalone `run`s may append to the same file at once: with `lock`, every append
//! holds an exclusive `flock` on the directory's `.agent-supervisor-audit.lock` around "read
//! the chain head from the file's last line, rotate if due, append the batch", so the chain
//! holds across processes. The daemon is its log's only writer and does not lock.
//!
//! Rotation renames the active file `STEM.EXT` to `STEM.N.EXT` (N = 1 + the highest present)
//! and starts a new `STEM.EXT` whose first record links to the last line of `STEM.N.EXT` and
//! names it in `prev_file`. A new, empty file also continues the newest rotated file of its
//! stem, or, for daily files (`YYYY-MM-DD.jsonl`), the newest file of an earlier day in the
//! same directory.
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use agent_supervisor_audit::{chain, checkpoint, Head, SigningKey};

use super::Export;

/// The lock file of a directory of audit files.
pub const LOCK_FILE: &str = ".agent-supervisor-audit.lock";
/// How long an append waits for the lock before the log counts as unavailable.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// How a chained file is written.
#[derive(Clone)]
pub struct Options {
    /// Sign checkpoints with this key; None: an unsigned chain.
    pub key: Option<Arc<SigningKey>>,
    /// Rotate before a batch would take the file beyond this many bytes.
    pub max_size: Option<u64>,
    /// Rotate when the day (UTC) changes.
    pub daily: bool,
    /// The file is the day's `YYYY-MM-DD.jsonl` (the standalone default): move on to the new
    /// day's file in the same directory when the day (UTC) changes, so that sessions running
    /// across midnight and new ones keep one chain.
    pub daily_name: bool,
    /// Take the directory's lock around each append (several writers).
    pub lock: bool,
    /// A checkpoint after this many records...
    pub checkpoint_records: u64,
    /// ...or when a batch comes this long after the last one.
    pub checkpoint_interval: Duration,
    /// Called with each line written.
    pub export: Option<Arc<dyn Export>>,
    /// Prefix of checkpoint ids (`<writer>-checkpoint-<n>`).
    pub writer: String,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            key: None,
            max_size: None,
            daily: false,
            daily_name: false,
            lock: false,
            checkpoint_records: 1000,
            checkpoint_interval: Duration::from_secs(60),
            export: None,
            writer: format!("writer-{}", std::process::id()),
        }
    }
}

/// A line as written: its byte offset in the active file, and its text (no newline).
#[derive(Debug, Clone)]
pub struct Written {
    pub offset: u64,
    pub line: String,
}

/// What an append did.
#[derive(Debug, Default)]
pub struct Appended {
    /// The active file was rotated first: renamed to this path, at this length.
    pub rotated: Option<(PathBuf, u64)>,
    /// A newline was written first to end a line cut short by a crash (at this offset).
    pub terminated_torn_line: Option<u64>,
    pub lines: Vec<Written>,
}

/// The active file of a chain.
pub struct ChainFile {
    path: PathBuf,
    file: File,
    /// A regular file (not /dev/stderr, a pipe, ...): locked, rotated, read back.
    regular: bool,
    /// The head of a stream that is not a regular file.
    stream_head: Option<Head>,
    /// Where our last append left the file: while nobody else appended since (same file,
    /// same size), its head is known without reading the file back.
    last_end: Option<End>,
    opts: Options,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    checkpoints: u64,
}

/// The end of the file after one of our appends, and the chain's head there.
#[derive(Debug, Clone)]
struct End {
    dev: u64,
    ino: u64,
    size: u64,
    head: Head,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(path)
}

fn today() -> String {
    humantime::format_rfc3339(SystemTime::now()).to_string()[..10].to_string()
}

impl ChainFile {
    /// Create the directory (0700) and open the file for appending (0600).
    pub fn open(path: &Path, opts: Options) -> io::Result<ChainFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let file = open_append(path)?;
        let regular = file.metadata()?.is_file();
        if opts.lock && regular {
            // Made now, before the sandbox starts, so that it can be hidden from the agent.
            open_append(&dir_of(path).join(LOCK_FILE))?;
        }
        Ok(ChainFile {
            file,
            regular,
            stream_head: None,
            last_end: None,
            path: path.to_path_buf(),
            opts,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            checkpoints: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file, when appends take it.
    pub fn lock_path(&self) -> Option<PathBuf> {
        (self.opts.lock && self.regular).then(|| dir_of(&self.path).join(LOCK_FILE))
    }

    /// Have records been written since the last checkpoint (with a key)?
    pub fn checkpoint_due(&self) -> bool {
        self.opts.key.is_some() && self.since_checkpoint > 0
    }

    fn lock(&self) -> io::Result<Option<nix::fcntl::Flock<File>>> {
        if !self.opts.lock || !self.regular {
            return Ok(None);
        }
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut f = open_append(&dir.join(LOCK_FILE))?;
        let deadline = Instant::now() + LOCK_TIMEOUT;
        loop {
            match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(l) => return Ok(Some(l)),
                Err((back, nix::errno::Errno::EWOULDBLOCK | nix::errno::Errno::EINTR))
                    if Instant::now() < deadline =>
                {
                    f = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((_, e)) => {
                    return Err(io::Error::other(format!(
                        "cannot lock {}: {}",
                        dir.join(LOCK_FILE).display(),
                        if e == nix::errno::Errno::EWOULDBLOCK {
                            format!("another process held it for {} s", LOCK_TIMEOUT.as_secs())
                        } else {
                            e.to_string()
                        }
                    )))
                }
            }
        }
    }

    /// Is our file still the one at `path` (another writer may have rotated it)? Returns the
    /// metadata of the file appends go to.
    fn reopen_if_rotated(&mut self) -> io::Result<fs::Metadata> {
        let ours = self.file.metadata()?;
        let same = fs::metadata(&self.path)
            .map(|m| m.ino() == ours.ino() && m.dev() == ours.dev())
            .unwrap_or(false);
        if same {
            return Ok(ours);
        }
        self.file = open_append(&self.path)?;
        self.file.metadata()
    }

    /// Append `records` (JSON objects, one line each, not yet chained), then a checkpoint when
    /// due (or `checkpoint` asks for one and records were written since the last).
    pub fn append(&mut self, records: &[String], checkpoint: bool) -> io::Result<Appended> {
        if !self.regular {
            return self.append_unlinked_stream(records, checkpoint);
        }
        let _lock = self.lock()?;
        if self.opts.daily_name {
            let today = dir_of(&self.path).join(format!("{}.jsonl", today()));
            if today != self.path {
                self.file = open_append(&today)?;
                self.path = today;
            }
        }
        let meta = self.reopen_if_rotated()?;
        let mut out = Appended::default();
        let mut size = meta.len();
        let mut file_id = (meta.dev(), meta.ino());
        // Our own last append is still the file's end: its head is known (the usual case, one
        // writer; another writer's append changes the size, a rotation the inode).
        let known = self
            .last_end
            .take()
            .filter(|e| size > 0 && (e.dev, e.ino, e.size) == (file_id.0, file_id.1, size))
            .map(|e| e.head);
        if known.is_none() && size > 0 && last_byte(&mut self.file, size)? != b'\n' {
            // A line cut short by a crash: end it, so the next record starts a line.
            self.file.write_all(b"\n")?;
            out.terminated_torn_line = Some(size);
            size += 1;
        }
        let estimate: u64 = records.iter().map(|r| r.len() as u64 + 200).sum();
        let over_size = self.opts.max_size.is_some_and(|max| size + estimate > max);
        let new_day = self.opts.daily && size > 0 && file_day(&mut self.file)? != today();
        if size > 0 && (over_size || new_day) {
            let to = next_rotated(&self.path)?;
            fs::rename(&self.path, &to)?;
            self.file = open_append(&self.path)?;
            out.rotated = Some((to, size));
            let meta = self.file.metadata()?;
            size = meta.len();
            file_id = (meta.dev(), meta.ino());
        }
        // The chain's head: the file's last line, or the file it continues.
        let (mut head, mut prev_file) = if let Some(head) = known.filter(|_| out.rotated.is_none())
        {
            (head, None)
        } else if size > 0 {
            (read_head(&mut self.file, size)?, None)
        } else {
            match previous_file(&self.path)? {
                Some(p) => {
                    let mut f = File::open(&p)?;
                    let len = f.metadata()?.len();
                    let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                    (read_head(&mut f, len)?, name)
                }
                None => (Head::genesis(), None),
            }
        };
        let mut batch = String::new();
        let mut offset = size;
        let mut push = |line: String, batch: &mut String, out: &mut Appended| {
            batch.push_str(&line);
            batch.push('\n');
            let len = line.len() as u64 + 1;
            out.lines.push(Written { offset, line });
            offset += len;
        };
        for r in records {
            match chain::link(r, &mut head, prev_file.as_deref()) {
                Ok(line) => {
                    prev_file = None;
                    push(line, &mut batch, &mut out);
                }
                Err(e) => {
                    tracing::error!("an audit record was not written ({e}): {r}");
                    eprintln!("{r}");
                }
            }
        }
        self.since_checkpoint += records.len() as u64;
        let due = self.since_checkpoint >= self.opts.checkpoint_records
            || self.last_checkpoint.elapsed() >= self.opts.checkpoint_interval
            || checkpoint;
        if let Some(key) = self
            .opts
            .key
            .as_ref()
            .filter(|_| due && self.since_checkpoint > 0)
        {
            self.checkpoints += 1;
            let id = format!("{}-checkpoint-{}", self.opts.writer, self.checkpoints);
            let ts = super::now();
            let line = checkpoint::checkpoint(key, &id, &ts, &mut head, prev_file.as_deref())
                .map_err(io::Error::other)?;
            push(line, &mut batch, &mut out);
            self.since_checkpoint = 0;
            self.last_checkpoint = Instant::now();
        }
        if !batch.is_empty() {
            self.file.write_all(batch.as_bytes())?;
        }
        self.last_end = Some(End {
            dev: file_id.0,
            ino: file_id.1,
            size: offset,
            head,
        });
        drop(_lock);
        if let Some(export) = &self.opts.export {
            for w in &out.lines {
                export.export(&w.line);
            }
        }
        Ok(out)
    }

    /// A device or pipe (`--audit /dev/stderr`): a chain of its own from genesis in this
    /// process, no lock, no rotation.
    fn append_unlinked_stream(
        &mut self,
        records: &[String],
        checkpoint: bool,
    ) -> io::Result<Appended> {
        let mut head = self.stream_head.clone().unwrap_or_else(Head::genesis);
        let mut out = Appended::default();
        let mut batch = String::new();
        for r in records {
            match chain::link(r, &mut head, None) {
                Ok(line) => {
                    batch.push_str(&line);
                    batch.push('\n');
                    out.lines.push(Written { offset: 0, line });
                }
                Err(e) => {
                    tracing::error!("an audit record was not written ({e}): {r}");
                    eprintln!("{r}");
                }
            }
        }
        self.since_checkpoint += records.len() as u64;
        if let Some(key) = self
            .opts
            .key
            .as_ref()
            .filter(|_| checkpoint && self.since_checkpoint > 0)
        {
            self.checkpoints += 1;
            let id = format!("{}-checkpoint-{}", self.opts.writer, self.checkpoints);
            let line = checkpoint::checkpoint(key, &id, &super::now(), &mut head, None)
                .map_err(io::Error::other)?;
            batch.push_str(&line);
            batch.push('\n');
            out.lines.push(Written { offset: 0, line });
            self.since_checkpoint = 0;
        }
        if !batch.is_empty() {
            self.file.write_all(batch.as_bytes())?;
        }
        self.stream_head = Some(head);
        if let Some(export) = &self.opts.export {
            for w in &out.lines {
                export.export(&w.line);
            }
        }
        Ok(out)
    }

    /// Start writing the active file to disk, without waiting for the disk
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): what was appended is already in the page
    /// cache, where every reader (and the next session) sees it and the supervisor's death
    /// can't lose it; waiting for the disk at every session end cost 1 to 100+ ms (a busy
    /// disk), and a tail lost to a power cut is what `audit verify` reports as cut short.
    pub fn sync(&self) -> io::Result<()> {
        if !self.regular {
            return Ok(());
        }
        crate::sys::start_writeback(self.file.as_fd())
    }
}

fn last_byte(f: &mut File, size: u64) -> io::Result<u8> {
    let mut b = [0u8];
    f.seek(SeekFrom::Start(size - 1))?;
    f.read_exact(&mut b)?;
    Ok(b[0])
}

/// The day (`YYYY-MM-DD`) of the file's first record (today when it has none).
fn file_day(f: &mut File) -> io::Result<String> {
    let mut buf = vec![0u8; 4096];
    f.seek(SeekFrom::Start(0))?;
    let n = f.read(&mut buf)?;
    let first = buf[..n].split(|b| *b == b'\n').next().unwrap_or_default();
    Ok(serde_json::from_slice::<serde_json::Value>(first)
        .ok()
        .and_then(|v| v["ts"].as_str().map(|t| t.chars().take(10).collect()))
        .unwrap_or_else(today))
}

/// The head after the last line of a file of `size` bytes: read back from the end until the
/// tail holds the last chained record (or the whole file). The first read is 8 KB, which
/// holds the last few records (a record is a few hundred bytes): it is done at each session's
/// first record, while the agent's first exec waits for a CPU.
fn read_head(f: &mut File, size: u64) -> io::Result<Head> {
    let mut want = 8 * 1024u64;
    loop {
        let start = size.saturating_sub(want);
        let mut tail = vec![0u8; (size - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut tail)?;
        // Start at a line boundary.
        let tail: &[u8] = if start == 0 {
            &tail
        } else {
            match tail.iter().position(|b| *b == b'\n') {
                Some(i) if i + 1 < tail.len() => &tail[i + 1..],
                _ => {
                    want *= 4;
                    continue;
                }
            }
        };
        let head = Head::from_tail(tail).unwrap_or_else(Head::genesis);
        // A tail of unchained lines only: look further back for the sequence, up to the
        // whole file.
        if head.seq == 0 && start > 0 {
            want *= 4;
            continue;
        }
        return Ok(head);
    }
}

/// `STEM` and `EXT` of `STEM.EXT` (EXT without the dot; empty when the name has none).
fn stem_ext(path: &Path) -> (String, String) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s.to_string(), e.to_string()),
        _ => (name, String::new()),
    }
}

fn join_ext(stem: &str, ext: &str) -> String {
    if ext.is_empty() {
        stem.to_string()
    } else {
        format!("{stem}.{ext}")
    }
}

/// `N` of the rotated files `STEM.N.EXT` in `dir`, with their paths, in order.
fn rotated_of(dir: &Path, stem: &str, ext: &str) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(stem).and_then(|r| r.strip_prefix('.')) else {
            continue;
        };
        let n = if ext.is_empty() {
            rest
        } else {
            match rest.strip_suffix(ext).and_then(|r| r.strip_suffix('.')) {
                Some(n) => n,
                None => continue,
            }
        };
        // Canonical numbers only (no sign, no leading zero).
        if let Ok(v) = n.parse::<u64>() {
            if v > 0 && v.to_string() == n {
                out.push((v, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Where the active file goes when rotated: `STEM.N.EXT`.
fn next_rotated(path: &Path) -> io::Result<PathBuf> {
    let (stem, ext) = stem_ext(path);
    let n = rotated_of(dir_of(path), &stem, &ext)?
        .last()
        .map_or(1, |(n, _)| n + 1);
    Ok(dir_of(path).join(join_ext(&format!("{stem}.{n}"), &ext)))
}

fn is_day(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// The file an empty `path` continues: the newest rotated file of its stem, or for a daily
/// file, the last file of the newest earlier day in the directory.
pub fn previous_file(path: &Path) -> io::Result<Option<PathBuf>> {
    let (stem, ext) = stem_ext(path);
    let dir = dir_of(path);
    if let Some((_, p)) = rotated_of(dir, &stem, &ext)?.pop() {
        return Ok(Some(p));
    }
    if !is_day(&stem) {
        return Ok(None);
    }
    let mut best: Option<(String, u64, PathBuf)> = None;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name
            .strip_suffix(&format!(".{ext}"))
            .filter(|_| !ext.is_empty())
        else {
            continue;
        };
        let (day, order) = match rest.split_once('.') {
            None => (rest.to_string(), u64::MAX),
            Some((d, n)) => match n.parse::<u64>() {
                Ok(n) => (d.to_string(), n),
                Err(_) => continue,
            },
        };
        if !is_day(&day) || day.as_str() >= stem.as_str() {
            continue;
        }
        let key = (day, order, entry.path());
        if best.as_ref().is_none_or(|b| (&b.0, b.1) < (&key.0, key.1)) {
            best = Some(key);
        }
    }
    Ok(best.map(|b| b.2))
}

/// Every file of the chain that ends in `path`, oldest first: its rotated files, then `path`
/// (daily files of other days are not included).
pub fn segments(path: &Path) -> io::Result<Vec<PathBuf>> {
    let (stem, ext) = stem_ext(path);
    let mut out: Vec<PathBuf> = rotated_of(dir_of(path), &stem, &ext)?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    out.push(path.to_path_buf());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("as-chainfile-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn verify(paths: &[PathBuf], key: Option<&SigningKey>) -> agent_supervisor_audit::Report {
        let bytes: Vec<Vec<u8>> = paths.iter().map(|p| fs::read(p).unwrap()).collect();
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        let inputs: Vec<_> = names
            .iter()
            .zip(&bytes)
            .map(|(n, b)| agent_supervisor_audit::FileInput { name: n, bytes: b })
            .collect();
        let vk = key.map(|k| k.verifying_key());
        agent_supervisor_audit::verify_files(&inputs, vk.as_ref())
    }

    #[test]
    fn rotation_by_size_keeps_the_chain_and_torn_lines_are_ended() {
        let d = tmp("rotate");
        let path = d.join("log.jsonl");
        let key = Arc::new(SigningKey::from_bytes(&[5; 32]));
        let opts = Options {
            key: Some(key.clone()),
            max_size: Some(600),
            lock: true,
            checkpoint_records: 3,
            ..Options::default()
        };
        let mut f = ChainFile::open(&path, opts).unwrap();
        for i in 0..12 {
            f.append(&[format!(r#"{{"id":"r-{i}","kind":"open"}}"#)], false)
                .unwrap();
            if i == 5 || i == 6 {
                // A crash cut a line short.
                let mut raw = OpenOptions::new().append(true).open(&path).unwrap();
                raw.write_all(b"{\"id\":\"torn").unwrap();
            }
        }
        f.append(&[], true).unwrap();
        let segs = segments(&path).unwrap();
        assert!(segs.len() >= 3, "{segs:?}");
        let r = verify(&segs, Some(&key));
        assert!(r.ok(), "{r:?}");
        assert!(r.checkpoints >= 4, "{r:?}");
        assert!(r
            .warnings
            .iter()
            .all(|w| w.kind == agent_supervisor_audit::ProblemKind::Incomplete));
        // Without a middle file: the gap is found.
        let mut missing = segs.clone();
        missing.remove(1);
        let e = verify(&missing, Some(&key)).error.unwrap();
        assert_eq!(e.kind, agent_supervisor_audit::ProblemKind::Deleted);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_exporter_gets_each_line_as_written() {
        struct Collect(std::sync::Mutex<Vec<String>>);
        impl Export for Collect {
            fn export(&self, line: &str) {
                self.0.lock().unwrap().push(line.to_string());
            }
        }
        let d = tmp("export");
        let path = d.join("e.jsonl");
        let seen = Arc::new(Collect(Default::default()));
        let opts = Options {
            key: Some(Arc::new(SigningKey::from_bytes(&[2; 32]))),
            export: Some(seen.clone()),
            ..Options::default()
        };
        let mut f = ChainFile::open(&path, opts).unwrap();
        f.append(&["{\"id\":\"a\"}".into(), "{\"id\":\"b\"}".into()], true)
            .unwrap();
        let on_disk: Vec<String> = fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(on_disk.len(), 3, "two records and a checkpoint");
        assert_eq!(*seen.0.lock().unwrap(), on_disk);
        fs::remove_dir_all(&d).unwrap();
    }

    /// Bytes this thread has read so far (`rchar`).
    fn thread_read_bytes() -> u64 {
        fs::read_to_string("/proc/thread-self/io")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Two writers of `path` that take the directory's lock, as two standalone `run`s do.
    fn two_locked_writers(path: &Path) -> (ChainFile, ChainFile) {
        let opts = || Options {
            lock: true,
            ..Options::default()
        };
        (
            ChainFile::open(path, opts()).unwrap(),
            ChainFile::open(path, opts()).unwrap(),
        )
    }

    #[test]
    fn a_writer_reads_the_file_back_only_after_another_writer_appended() {
        let d = tmp("two-writers");
        let path = d.join("w.jsonl");
        let (mut one, mut two) = two_locked_writers(&path);
        // A file bigger than one read-back (8 KiB at first).
        let big = format!(r#"{{"id":"big","pad":"{}"}}"#, "x".repeat(100_000));
        one.append(&[big], false).unwrap();
        // Its own appends: the head is known, nothing is read back.
        let before = thread_read_bytes();
        for i in 0..5 {
            one.append(&[format!(r#"{{"id":"one-{i}"}}"#)], false)
                .unwrap();
        }
        assert!(
            thread_read_bytes() - before < 4096,
            "{} bytes read back",
            thread_read_bytes() - before
        );
        // Interleaved writers: each links to the other's last record.
        for i in 0..5 {
            two.append(&[format!(r#"{{"id":"two-{i}"}}"#)], false)
                .unwrap();
            one.append(&[format!(r#"{{"id":"one-again-{i}"}}"#)], false)
                .unwrap();
        }
        let r = verify(std::slice::from_ref(&path), None);
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.records, 16);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_last_record_longer_than_the_first_read_back_is_linked_to() {
        let d = tmp("long-last");
        let path = d.join("l.jsonl");
        let (mut one, mut two) = two_locked_writers(&path);
        one.append(&[r#"{"id":"first"}"#.to_string()], false)
            .unwrap();
        // The last line is 3x the first read-back: the tail is read again, 4x longer.
        let long = format!(r#"{{"id":"long","pad":"{}"}}"#, "y".repeat(24 * 1024));
        one.append(&[long], false).unwrap();
        two.append(&[r#"{"id":"after"}"#.to_string()], false)
            .unwrap();
        let r = verify(std::slice::from_ref(&path), None);
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.records, 3);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_ended_and_linked_through() {
        let d = tmp("torn");
        let path = d.join("t.jsonl");
        let mut f = ChainFile::open(&path, Options::default()).unwrap();
        f.append(&["{\"id\":\"a\"}".into()], false).unwrap();
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"id\":\"to")
            .unwrap();
        let a = f.append(&["{\"id\":\"b\"}".into()], false).unwrap();
        assert!(a.terminated_torn_line.is_some());
        let r = verify(&[path], None);
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.records, 3);
        assert!(r
            .warnings
            .iter()
            .any(|w| w.kind == agent_supervisor_audit::ProblemKind::Incomplete && w.line == 2));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_session_across_midnight_moves_on_to_the_new_days_file() {
        let d = tmp("midnight");
        let old = d.join("2000-01-01.jsonl");
        let opts = Options {
            daily_name: true,
            lock: true,
            ..Options::default()
        };
        let mut f = ChainFile::open(&old, opts.clone()).unwrap();
        // Written "yesterday" by another writer; then our next append is "after midnight".
        ChainFile::open(&old, Options::default())
            .unwrap()
            .append(&["{\"id\":\"old\"}".into()], false)
            .unwrap();
        f.append(&["{\"id\":\"new\"}".into()], false).unwrap();
        let today = d.join(format!("{}.jsonl", today()));
        assert_eq!(f.path(), today);
        assert_eq!(fs::read_to_string(&old).unwrap().lines().count(), 1);
        assert!(verify(&[old, today], None).ok());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_new_daily_file_continues_the_previous_day() {
        let d = tmp("daily");
        let mut a = ChainFile::open(&d.join("2026-01-01.jsonl"), Options::default()).unwrap();
        a.append(&["{\"id\":\"a\"}".into()], false).unwrap();
        let mut a2 = ChainFile::open(&d.join("2026-01-01.1.jsonl"), Options::default()).unwrap();
        a2.append(&["{\"id\":\"unrelated\"}".into()], false)
            .unwrap();
        let p = d.join("2026-01-03.jsonl");
        assert_eq!(previous_file(&p).unwrap(), Some(d.join("2026-01-01.jsonl")));
        let mut b = ChainFile::open(&p, Options::default()).unwrap();
        b.append(&["{\"id\":\"b\"}".into()], false).unwrap();
        let line = fs::read_to_string(&p).unwrap();
        assert!(
            line.contains("\"prev_file\":\"2026-01-01.jsonl\""),
            "{line}"
        );
        assert!(verify(&[d.join("2026-01-01.jsonl"), p], None).ok());
        fs::remove_dir_all(&d).unwrap();
    }
}
