//! The verifier: walks the lines of one or more files (in order) and reports the first broken
//! or missing record, every checkpoint whose signature does not hold, and warnings (an unsigned
//! tail after the last checkpoint, a last line cut short by a crash).
//!
//! Pure: it works on bytes in memory ([`verify_lines`], [`verify_files`]); reading the files is
//! the caller's job.
#![forbid(unsafe_code)]

use serde_json::Value;

use crate::chain::{line_hash, GENESIS};
use crate::checkpoint::{self, VerifyingKey};

/// One file to verify: its name (as reported, and compared with `prev_file`) and content.
#[derive(Debug, Clone, Copy)]
pub struct FileInput<'a> {
    pub name: &'a str,
    pub bytes: &'a [u8],
}

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The log was tampered with (or damaged): exit 1.
    Error,
    /// Worth knowing, not proof of tampering.
    Warning,
}

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// Not a JSON object, or a chained field of the wrong type.
    Malformed,
    /// A record's bytes were changed.
    Edited,
    /// Records are missing (deleted, or a file in the middle not given).
    Deleted,
    /// Records are out of order.
    Reordered,
    /// A record that the chain does not link through.
    Inserted,
    /// A checkpoint's signature does not hold (or is by another key).
    BadSignature,
    /// Records after the last checkpoint are not covered by a signature.
    UnsignedTail,
    /// The log has no checkpoint at all.
    Unsigned,
    /// Signatures were checked with the key the log names, not one given by the caller.
    UntrustedKey,
    /// Lines before the first chained record (written before the chain existed).
    Unchained,
    /// A line cut short (a crash while writing).
    Incomplete,
    /// The first file continues a file that was not given.
    StartsMidChain,
}

impl ProblemKind {
    /// The name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Malformed => "malformed",
            ProblemKind::Edited => "edited",
            ProblemKind::Deleted => "deleted",
            ProblemKind::Reordered => "reordered",
            ProblemKind::Inserted => "inserted",
            ProblemKind::BadSignature => "bad-signature",
            ProblemKind::UnsignedTail => "unsigned-tail",
            ProblemKind::Unsigned => "unsigned",
            ProblemKind::UntrustedKey => "untrusted-key",
            ProblemKind::Unchained => "unchained",
            ProblemKind::Incomplete => "incomplete",
            ProblemKind::StartsMidChain => "starts-mid-chain",
        }
    }
}

/// One finding, located precisely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub kind: ProblemKind,
    /// The file (as given) and line number (1-based) of the record concerned.
    pub file: String,
    pub line: usize,
    /// The record's `id` and `chain_seq`, when it has them.
    pub id: Option<String>,
    pub chain_seq: Option<u64>,
    pub message: String,
}

impl Problem {
    /// As a JSON object.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "severity": match self.severity { Severity::Error => "error", Severity::Warning => "warning" },
            "kind": self.kind.as_str(),
            "file": self.file,
            "line": self.line,
            "id": self.id,
            "chain_seq": self.chain_seq,
            "message": self.message,
        })
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Lines checked (up to the first error).
    pub records: u64,
    /// Checkpoints whose signature holds.
    pub checkpoints: u64,
    /// The first error, if any (verification stops there).
    pub error: Option<Problem>,
    pub warnings: Vec<Problem>,
}

impl Report {
    /// No error (warnings allowed).
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// As a JSON object.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "ok": self.ok(),
            "records": self.records,
            "checkpoints": self.checkpoints,
            "error": self.error.as_ref().map(Problem::to_json),
            "warnings": self.warnings.iter().map(Problem::to_json).collect::<Vec<_>>(),
        })
    }
}

/// A line, parsed as far as the chain needs (only these fields are kept: logs are large).
struct Line {
    file: usize,
    /// 1-based.
    number: usize,
    hash: String,
    /// A JSON object (else malformed).
    object: bool,
    /// Without a newline at the end of the last file's content.
    unterminated: bool,
    fields: Fields,
    /// The bytes of a checkpoint (to check its signature).
    raw: Option<Vec<u8>>,
}

#[derive(Default)]
struct Fields {
    id: Option<String>,
    kind: Option<String>,
    ts: Option<String>,
    seq: Option<u64>,
    prev: Option<String>,
    prev_file: Option<String>,
    pubkey: Option<String>,
    sig: Option<String>,
}

impl Fields {
    fn of(v: &serde_json::Map<String, Value>) -> Fields {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        Fields {
            id: s("id"),
            kind: s("kind"),
            ts: s("ts"),
            seq: v.get("chain_seq").and_then(Value::as_u64),
            prev: s("prev"),
            prev_file: s("prev_file"),
            pubkey: s("pubkey"),
            sig: s("sig"),
        }
    }
}

impl Line {
    fn str_field(&self, k: &str) -> Option<&str> {
        let f = &self.fields;
        match k {
            "id" => f.id.as_deref(),
            "kind" => f.kind.as_deref(),
            "ts" => f.ts.as_deref(),
            "prev" => f.prev.as_deref(),
            "prev_file" => f.prev_file.as_deref(),
            "pubkey" => f.pubkey.as_deref(),
            "sig" => f.sig.as_deref(),
            _ => None,
        }
    }
    fn id(&self) -> Option<String> {
        self.fields.id.clone()
    }
    fn seq(&self) -> Option<u64> {
        self.fields.seq
    }
    fn prev(&self) -> Option<&str> {
        self.fields.prev.as_deref()
    }
    fn chained(&self) -> bool {
        self.seq().is_some() && self.prev().is_some()
    }
}

fn split(files: &[FileInput<'_>]) -> Vec<Line> {
    let mut out = Vec::new();
    for (fi, f) in files.iter().enumerate() {
        if f.bytes.is_empty() {
            continue;
        }
        let terminated = f.bytes.ends_with(b"\n");
        let body = if terminated {
            &f.bytes[..f.bytes.len() - 1]
        } else {
            f.bytes
        };
        let n = body.split(|b| *b == b'\n').count();
        for (i, bytes) in body.split(|b| *b == b'\n').enumerate() {
            let parsed = serde_json::from_slice::<Value>(bytes).ok();
            let (object, fields) = match parsed {
                Some(Value::Object(m)) => (true, Fields::of(&m)),
                _ => (false, Fields::default()),
            };
            let raw = (fields.kind.as_deref() == Some("checkpoint")).then(|| bytes.to_vec());
            out.push(Line {
                file: fi,
                number: i + 1,
                hash: line_hash(bytes),
                object,
                unterminated: !terminated && i + 1 == n,
                fields,
                raw,
            });
        }
    }
    out
}

/// Verify one file's content.
pub fn verify_lines(name: &str, bytes: &[u8], key: Option<&VerifyingKey>) -> Report {
    verify_files(&[FileInput { name, bytes }], key)
}

/// Verify files given in chain order (the oldest first): the chain inside each, the links
/// between them, and every checkpoint (with `key`; without one, with the key each checkpoint
/// names, which is reported as a warning).
pub fn verify_files(files: &[FileInput<'_>], key: Option<&VerifyingKey>) -> Report {
    let lines = split(files);
    let mut report = Report::default();
    let name = |l: &Line| files[l.file].name.to_string();
    let problem = |sev, kind, l: &Line, message: String| Problem {
        severity: sev,
        kind,
        file: files[l.file].name.to_string(),
        line: l.number,
        id: l.id(),
        chain_seq: l.seq(),
        message,
    };
    let mut started = false;
    let mut unchained_before = 0usize;
    let mut last_checkpoint: Option<usize> = None;
    let mut warned_key = false;
    for i in 0..lines.len() {
        let l = &lines[i];
        report.records += 1;
        let prev_line = i.checked_sub(1).map(|j| &lines[j]);
        if !l.chained() {
            if !started {
                unchained_before += 1;
                if !l.object && !l.unterminated {
                    report.error = Some(problem(
                        Severity::Error,
                        ProblemKind::Malformed,
                        l,
                        "not a JSON object".into(),
                    ));
                    return report;
                }
                continue;
            }
            // After the chain started: a crash's torn line is linked through by the next
            // record; anything else was inserted (or damaged).
            let next_links = lines
                .get(i + 1)
                .is_some_and(|n| n.prev() == Some(l.hash.as_str()));
            let at_end = i + 1 == lines.len();
            if !l.object && (next_links || at_end) {
                report.warnings.push(problem(
                    Severity::Warning,
                    ProblemKind::Incomplete,
                    l,
                    "a line cut short (the writer crashed while writing it?)".into(),
                ));
                continue;
            }
            let kind = if !l.object {
                ProblemKind::Malformed
            } else {
                ProblemKind::Inserted
            };
            report.error = Some(problem(
                Severity::Error,
                kind,
                l,
                "a line without the chain's fields (chain_seq, prev): inserted or damaged".into(),
            ));
            return report;
        }
        let seq = l.seq().unwrap_or(0);
        let prev = l.prev().unwrap_or("");
        if !started {
            started = true;
            if unchained_before > 0 {
                report.warnings.push(Problem {
                    severity: Severity::Warning,
                    kind: ProblemKind::Unchained,
                    file: name(l),
                    line: 1,
                    id: None,
                    chain_seq: None,
                    message: format!(
                        "{unchained_before} line(s) before the chain starts are not protected by it"
                    ),
                });
            }
            match prev_line {
                Some(p) if p.hash != prev => {
                    report.error = Some(problem(
                        Severity::Error,
                        ProblemKind::Edited,
                        p,
                        format!(
                            "the line before the first chained record does not match its hash (record at line {} says prev {prev})",
                            l.number
                        ),
                    ));
                    return report;
                }
                Some(_) => {}
                None if prev == GENESIS => {}
                None => {
                    let from = l.str_field("prev_file").unwrap_or("an earlier file");
                    report.warnings.push(problem(
                        Severity::Warning,
                        ProblemKind::StartsMidChain,
                        l,
                        format!("the chain continues {from} (not given: the records before are not checked)"),
                    ));
                }
            }
        } else {
            let p = prev_line.expect("a line before a started chain");
            let expected = p.seq().map(|s| s + 1);
            if p.hash != prev {
                report.error = Some(classify(&lines, i, files, expected));
                return report;
            }
            if let Some(e) = expected.filter(|e| *e != seq) {
                report.error = Some(problem(
                    Severity::Error,
                    ProblemKind::Edited,
                    l,
                    format!("chain_seq is {seq}, expected {e} (the record was edited)"),
                ));
                return report;
            }
            if prev == GENESIS {
                report.error = Some(problem(
                    Severity::Error,
                    ProblemKind::Inserted,
                    l,
                    "a new chain starts here (a record from another log?)".into(),
                ));
                return report;
            }
        }
        if l.str_field("kind") == Some("checkpoint") {
            let named = l
                .str_field("pubkey")
                .and_then(|k| checkpoint::verifying_key_from_hex(k).ok());
            let (k, trusted) = match (key, named) {
                (Some(k), Some(n)) if n != *k => {
                    report.error = Some(problem(
                        Severity::Error,
                        ProblemKind::BadSignature,
                        l,
                        format!(
                            "signed by another key (key_id {}, expected {})",
                            checkpoint::key_id(&n),
                            checkpoint::key_id(k)
                        ),
                    ));
                    return report;
                }
                (Some(k), _) => (Some(*k), true),
                (None, n) => (n, false),
            };
            let raw = l.raw.as_deref().unwrap_or_default();
            let valid = k.is_some_and(|k| checkpoint::verify(&k, raw));
            if !valid {
                report.error = Some(problem(
                    Severity::Error,
                    ProblemKind::BadSignature,
                    l,
                    "the checkpoint's signature does not hold: this checkpoint, or the chain before it, was rewritten".into(),
                ));
                return report;
            }
            if !trusted && !warned_key {
                warned_key = true;
                report.warnings.push(problem(
                    Severity::Warning,
                    ProblemKind::UntrustedKey,
                    l,
                    "signatures were checked with the key the log itself names: give --key with the writer's public key to trust them".into(),
                ));
            }
            report.checkpoints += 1;
            last_checkpoint = Some(i);
        }
        if l.unterminated {
            report.warnings.push(problem(
                Severity::Warning,
                ProblemKind::Incomplete,
                l,
                "the last line has no newline (the writer crashed, or is writing it now?)".into(),
            ));
        }
    }
    if let Some(last) = lines.last().filter(|_| started) {
        match last_checkpoint {
            Some(c) if c + 1 < lines.len() => {
                let cp = &lines[c];
                report.warnings.push(problem(
                    Severity::Warning,
                    ProblemKind::UnsignedTail,
                    &lines[c + 1],
                    format!(
                        "{} record(s) after the last checkpoint ({} line {}) are not covered by a signature: a cut or rewritten tail would go unnoticed",
                        lines.len() - c - 1,
                        name(cp),
                        cp.number
                    ),
                ));
            }
            Some(_) => {}
            None => report.warnings.push(problem(
                Severity::Warning,
                ProblemKind::Unsigned,
                last,
                "no signed checkpoint: the chain shows edits, deletions and reordering, but not a chain rewritten from scratch or a cut tail".into(),
            )),
        }
    }
    report
}

/// The chain breaks at `lines[i]` (its `prev` is not the hash of the line before): say why.
fn classify(lines: &[Line], i: usize, files: &[FileInput], expected: Option<u64>) -> Problem {
    let l = &lines[i];
    let p = &lines[i - 1];
    let seq = l.seq().unwrap_or(0);
    let at = |x: &Line| format!("{} line {}", files[x.file].name, x.number);
    let mk = |kind, x: &Line, message: String| Problem {
        severity: Severity::Error,
        kind,
        file: files[x.file].name.to_string(),
        line: x.number,
        id: x.id(),
        chain_seq: x.seq(),
        message,
    };
    let new_file = l.file != p.file;
    // The next line links to the one before this: this one was inserted.
    if lines
        .get(i + 1)
        .is_some_and(|n| n.prev() == Some(p.hash.as_str()))
    {
        // Unless a later record links to this one: then it was moved here.
        if let Some(j) = lines[i + 1..]
            .iter()
            .find(|x| x.prev() == Some(l.hash.as_str()))
        {
            return mk(
                ProblemKind::Reordered,
                l,
                format!("out of order: this record belongs before {}", at(j)),
            );
        }
        return mk(
            ProblemKind::Inserted,
            l,
            format!(
                "this record is not part of the chain (the next record links to {})",
                at(p)
            ),
        );
    }
    if let Some(e) = expected {
        if seq != e {
            // The expected record appears further on: the records were reordered.
            if let Some(j) = lines[i + 1..].iter().find(|x| x.seq() == Some(e)) {
                return mk(
                    ProblemKind::Reordered,
                    l,
                    format!(
                        "out of order: chain_seq {seq} comes where {e} should, which is at {}",
                        at(j)
                    ),
                );
            }
            if seq < e {
                return mk(
                    ProblemKind::Reordered,
                    l,
                    format!("out of order: chain_seq {seq} comes after {}", e - 1),
                );
            }
            let missing = if seq - e == 1 {
                format!("chain_seq {e}")
            } else {
                format!("chain_seq {e} to {}", seq - 1)
            };
            let message = if new_file {
                format!(
                    "{} record(s) missing ({missing}) between {} and {}: this file continues {}, not {} as given (a file or records removed?)",
                    seq - e,
                    at(p),
                    at(l),
                    l.str_field("prev_file").unwrap_or("another file"),
                    files[p.file].name
                )
            } else {
                format!("{} record(s) missing ({missing}) before this line", seq - e)
            };
            return mk(ProblemKind::Deleted, l, message);
        }
    }
    if new_file {
        if let Some(pf) = l.str_field("prev_file") {
            if !files[p.file].name.ends_with(pf) {
                return mk(
                    ProblemKind::Deleted,
                    l,
                    format!(
                        "this file continues {pf}, but the file given before it is {}",
                        files[p.file].name
                    ),
                );
            }
        }
    }
    mk(
        ProblemKind::Edited,
        p,
        format!(
            "the record was edited: its hash is not the one {} records for it",
            at(l)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{link, Head};
    use crate::checkpoint::{checkpoint, SigningKey};

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[3; 32])
    }

    /// `n` records with a checkpoint after every third one.
    fn log(n: usize) -> Vec<String> {
        let mut head = Head::genesis();
        let mut out = Vec::new();
        for i in 1..=n {
            out.push(
                link(
                    &format!(r#"{{"id":"s-{i}","kind":"open"}}"#),
                    &mut head,
                    None,
                )
                .unwrap(),
            );
            if i % 3 == 0 {
                out.push(
                    checkpoint(
                        &key(),
                        &format!("c-{i}"),
                        "2026-01-01T00:00:00Z",
                        &mut head,
                        None,
                    )
                    .unwrap(),
                );
            }
        }
        out
    }

    fn text(lines: &[String]) -> Vec<u8> {
        lines
            .iter()
            .flat_map(|l| format!("{l}\n").into_bytes())
            .collect()
    }

    fn check(lines: &[String]) -> Report {
        verify_lines("a.jsonl", &text(lines), Some(&key().verifying_key()))
    }

    fn error(r: &Report) -> (ProblemKind, usize, Option<String>) {
        let e = r.error.as_ref().expect("an error");
        (e.kind, e.line, e.id.clone())
    }

    #[test]
    fn an_untouched_log_verifies() {
        let l = log(9);
        let r = check(&l);
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.records, 12);
        assert_eq!(r.checkpoints, 3);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        // Without the key: the log's own key, with a warning.
        let r = verify_lines("a.jsonl", &text(&l), None);
        assert!(r.ok());
        assert_eq!(r.warnings[0].kind, ProblemKind::UntrustedKey);
    }

    #[test]
    fn an_edited_record_is_pinpointed() {
        let mut l = log(6);
        l[1] = l[1].replace("open", "exec");
        assert_eq!(
            error(&check(&l)),
            (ProblemKind::Edited, 2, Some("s-2".into()))
        );
    }

    #[test]
    fn a_deleted_record_is_pinpointed() {
        let mut l = log(6);
        l.remove(1);
        let r = check(&l);
        assert_eq!(error(&r), (ProblemKind::Deleted, 2, Some("s-3".into())));
        assert!(r.error.unwrap().message.contains("chain_seq 2"));
    }

    #[test]
    fn reordered_records_are_pinpointed() {
        let mut l = log(6);
        l.swap(1, 2);
        assert_eq!(
            error(&check(&l)),
            (ProblemKind::Reordered, 2, Some("s-3".into()))
        );
    }

    #[test]
    fn an_inserted_record_is_pinpointed() {
        let mut l = log(6);
        let copy = l[1].replace("s-2", "s-x");
        l.insert(2, copy);
        assert_eq!(
            error(&check(&l)),
            (ProblemKind::Inserted, 3, Some("s-x".into()))
        );
        let mut l = log(6);
        l.insert(2, r#"{"id":"plain"}"#.into());
        assert_eq!(
            error(&check(&l)),
            (ProblemKind::Inserted, 3, Some("plain".into()))
        );
    }

    #[test]
    fn a_recomputed_chain_fails_at_the_next_checkpoint() {
        let l = log(6);
        // Rewrite record 2 and recompute every link after it, checkpoints included (without
        // the key their signatures can only be copied).
        let mut head = Head::genesis();
        let mut forged = Vec::new();
        for (i, line) in l.iter().enumerate() {
            let mut v: serde_json::Map<String, Value> = serde_json::from_str(line).unwrap();
            let sig = v.remove("sig");
            v.remove("chain_seq");
            v.remove("prev");
            if i == 1 {
                v.insert("kind".into(), "exec".into());
            }
            let mut linked = link(&Value::Object(v).to_string(), &mut head, None).unwrap();
            if let Some(s) = sig {
                linked = format!("{},\"sig\":{s}}}", linked.strip_suffix('}').unwrap());
                head.hash = line_hash(linked.as_bytes());
            }
            forged.push(linked);
        }
        let r = check(&forged);
        assert_eq!(
            error(&r),
            (ProblemKind::BadSignature, 4, Some("c-3".into()))
        );
    }

    #[test]
    fn another_key_is_refused() {
        let l = log(3);
        let other = SigningKey::from_bytes(&[4; 32]).verifying_key();
        let r = verify_lines("a.jsonl", &text(&l), Some(&other));
        assert_eq!(error(&r).0, ProblemKind::BadSignature);
    }

    #[test]
    fn a_cut_tail_and_an_unsigned_tail_are_warned() {
        let mut l = log(7);
        let r = check(&l);
        assert!(r.ok());
        assert_eq!(r.warnings.len(), 1);
        assert_eq!(r.warnings[0].kind, ProblemKind::UnsignedTail);
        assert_eq!(r.warnings[0].line, 9);
        l.pop();
        let mut bytes = text(&l);
        bytes.extend_from_slice(b"{\"id\":\"torn");
        let r = verify_lines("a.jsonl", &bytes, Some(&key().verifying_key()));
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.warnings[0].kind, ProblemKind::Incomplete);
    }

    #[test]
    fn files_chain_across_rotation_and_a_missing_file_is_found() {
        let mut head = Head::genesis();
        let mut files: Vec<String> = Vec::new();
        for f in 0..3 {
            let mut s = String::new();
            for i in 0..2 {
                let pf = (f > 0 && i == 0).then(|| format!("f{}.jsonl", f - 1));
                s.push_str(
                    &link(
                        &format!(r#"{{"id":"r-{f}-{i}"}}"#),
                        &mut head,
                        pf.as_deref(),
                    )
                    .unwrap(),
                );
                s.push('\n');
            }
            files.push(s);
        }
        let input = |idx: &[usize]| -> Vec<FileInput> {
            idx.iter()
                .map(|i| FileInput {
                    name: ["f0.jsonl", "f1.jsonl", "f2.jsonl"][*i],
                    bytes: files[*i].as_bytes(),
                })
                .collect()
        };
        let r = verify_files(&input(&[0, 1, 2]), None);
        assert!(r.ok(), "{r:?}");
        assert_eq!(r.warnings[0].kind, ProblemKind::Unsigned);
        let r = verify_files(&input(&[0, 2]), None);
        let e = r.error.unwrap();
        assert_eq!(
            (e.kind, e.file.as_str(), e.line),
            (ProblemKind::Deleted, "f2.jsonl", 1)
        );
        assert!(e.message.contains("f1.jsonl"), "{}", e.message);
        // Starting at a later file: a warning, not an error.
        let r = verify_files(&input(&[1, 2]), None);
        assert!(r.ok());
        assert_eq!(r.warnings[0].kind, ProblemKind::StartsMidChain);
    }

    #[test]
    fn random_damage_never_panics_and_is_never_ok_silently() {
        let good = text(&log(9));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..300 {
            let mut bytes = good.clone();
            for _ in 0..1 + next() % 3 {
                let i = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[i] = (next() % 256) as u8,
                    1 => {
                        bytes.remove(i);
                    }
                    _ => bytes.insert(i, (next() % 256) as u8),
                }
            }
            let r = verify_lines("a.jsonl", &bytes, Some(&key().verifying_key()));
            // Any change to the bytes is an error, or (in the unsigned tail or the last
            // line) at least a warning.
            if bytes != good {
                assert!(
                    !r.ok() || !r.warnings.is_empty(),
                    "{:?}",
                    String::from_utf8_lossy(&bytes)
                );
            }
            let _ = crate::redact::redact_str(&String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn garbage_never_panics() {
        for s in [
            "",
            "\n",
            "{}",
            "[",
            "{\"chain_seq\":1,\"prev\":\"x\"}\n\n",
            "\u{0}\n{}\n",
        ] {
            let _ = verify_lines("x", s.as_bytes(), None);
        }
    }
}
