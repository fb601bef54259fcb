//! The hash chain: what each record carries to link it to the one before.
//!
//! A record is one line of JSON (an object). Before it is written, the writer appends three
//! fields to the object's text (so the fields already there keep their order and bytes):
//!
//! - `chain_seq`: the record's position in the chain (the previous line's `chain_seq` + 1; the
//!   first record of a new chain has 1);
//! - `prev`: the SHA-256, lowercase hex, of the previous line exactly as written, without its
//!   newline (64 zeros, [`GENESIS`], for the first record of a new chain);
//! - `prev_file` (first record of a file only, when it continues another file): the name
//!   (without directory) of the file whose last line `prev` is the hash of.
#![forbid(unsafe_code)]

use sha2::{Digest, Sha256};

/// `prev` of the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// SHA-256 of one line (without its newline), lowercase hex.
pub fn line_hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// Where the chain stands: the hash of its last line and that line's `chain_seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub hash: String,
    pub seq: u64,
}

/// Why a record could not be linked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("an audit record must be a JSON object on one line")]
    NotAnObject,
    #[error("an audit record must not carry the chain's own field `{0}`")]
    Reserved(&'static str),
}

/// The fields the chain adds; a record that already has one is refused.
pub const RESERVED: [&str; 4] = ["chain_seq", "prev", "prev_file", "sig"];

impl Head {
    /// The head of an empty chain.
    pub fn genesis() -> Head {
        Head {
            hash: GENESIS.to_string(),
            seq: 0,
        }
    }

    /// The head after the last line of `tail`, the end of a log file starting at a line
    /// boundary. Lines that are not chained
    /// records (cut short by a crash, written before the chain existed) count one position each
    /// after the last chained record found; `None` when `tail` has no line.
    pub fn from_tail(tail: &[u8]) -> Option<Head> {
        let body = tail.strip_suffix(b"\n").unwrap_or(tail);
        if body.is_empty() && tail.is_empty() {
            return None;
        }
        let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
        let last = lines.last()?;
        let seq = lines
            .iter()
            .rev()
            .enumerate()
            .find_map(|(after, line)| chain_seq_of(line).map(|s| s + after as u64))
            .unwrap_or(0);
        Some(Head {
            hash: line_hash(last),
            seq,
        })
    }
}

/// The `chain_seq` of a line, if it is a chained record.
pub fn chain_seq_of(line: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    v.get("chain_seq")?.as_u64()
}

/// Link `object` (one JSON object, serialized on one line) after `head`: append `chain_seq`,
/// `prev` and, when given, `prev_file`; return the line to write and advance `head` past it.
pub fn link(object: &str, head: &mut Head, prev_file: Option<&str>) -> Result<String, LinkError> {
    let v: serde_json::Value = serde_json::from_str(object).map_err(|_| LinkError::NotAnObject)?;
    let map = v.as_object().ok_or(LinkError::NotAnObject)?;
    if object.contains('\n') {
        return Err(LinkError::NotAnObject);
    }
    if let Some(k) = RESERVED.iter().find(|k| map.contains_key(**k)) {
        return Err(LinkError::Reserved(k));
    }
    let body = object.trim_end();
    let body = body.strip_suffix('}').ok_or(LinkError::NotAnObject)?;
    let sep = if map.is_empty() { "" } else { "," };
    let seq = head.seq + 1;
    let mut line = format!("{body}{sep}\"chain_seq\":{seq},\"prev\":\"{}\"", head.hash);
    if let Some(f) = prev_file {
        line.push_str(",\"prev_file\":");
        line.push_str(&serde_json::Value::from(f).to_string());
    }
    line.push('}');
    *head = Head {
        hash: line_hash(line.as_bytes()),
        seq,
    };
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_appends_the_fields_and_advances() {
        let mut h = Head::genesis();
        let a = link(r#"{"id":"s-1","kind":"open"}"#, &mut h, None).unwrap();
        assert_eq!(
            a,
            format!(r#"{{"id":"s-1","kind":"open","chain_seq":1,"prev":"{GENESIS}"}}"#)
        );
        assert_eq!(h.hash, line_hash(a.as_bytes()));
        assert_eq!(h.seq, 1);
        let b = link(r#"{"id":"s-2"}"#, &mut h, Some("x.1.jsonl")).unwrap();
        assert!(b.ends_with(&format!(
            r#""chain_seq":2,"prev":"{}","prev_file":"x.1.jsonl"}}"#,
            line_hash(a.as_bytes())
        )));
        assert_eq!(
            link("{}", &mut h, None).unwrap().find("{\"chain_seq\":3"),
            Some(0)
        );
    }

    #[test]
    fn link_refuses_non_objects_and_reserved_fields() {
        let mut h = Head::genesis();
        assert_eq!(link("[1]", &mut h, None), Err(LinkError::NotAnObject));
        assert_eq!(link("{\"a\":", &mut h, None), Err(LinkError::NotAnObject));
        assert_eq!(
            link(r#"{"prev":"x"}"#, &mut h, None),
            Err(LinkError::Reserved("prev"))
        );
        assert_eq!(h, Head::genesis());
    }

    #[test]
    fn head_from_tail_counts_unchained_lines() {
        let mut h = Head::genesis();
        let a = link(r#"{"id":"a"}"#, &mut h, None).unwrap();
        let file = format!("{a}\n{{\"torn");
        let t = Head::from_tail(file.as_bytes()).unwrap();
        assert_eq!(t.seq, 2);
        assert_eq!(t.hash, line_hash(b"{\"torn"));
        let t = Head::from_tail(format!("{a}\n").as_bytes()).unwrap();
        assert_eq!(t, h);
        assert_eq!(Head::from_tail(b""), None);
    }
}
