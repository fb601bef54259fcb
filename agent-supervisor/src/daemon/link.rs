//! The private link between the daemon and one session's supervisor (`agent-supervisor run`
//! launched by the daemon): a `socketpair(AF_UNIX, SOCK_STREAM)` inherited as fd 3 and named
//! with the hidden `run --daemon-link FD`.
//!
//! One message per line. From the session: `A <audit record JSON>` (the daemon appends it to
//! its log) and `C <ToDaemon JSON>`; from the daemon: `C <ToSession JSON>`. Every write of a
//! line happens under one lock so lines of different threads never interleave.
#![forbid(unsafe_code)]

use std::io::{self, BufRead, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Longest line either side accepts (an audit record with a long argv stays far below).
pub const MAX_LINE: usize = 1 << 20;

/// Session to daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "t", rename_all = "kebab-case")]
pub enum ToDaemon {
    /// An ask that needs a human; `timeout_ms` from now it is denied.
    Ask {
        id: u64,
        pid: i32,
        kind: String,
        summary: String,
        action: serde_json::Value,
        rule: String,
        reason: String,
        timeout_ms: u64,
    },
    /// An ask the session settled itself (session-wide answer, the agent stopped waiting,
    /// its own deadline): the daemon stops offering it.
    Settled {
        id: u64,
        decision: String,
        by: String,
    },
}

/// Daemon to session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "t", rename_all = "kebab-case")]
pub enum ToSession {
    /// The answer to ask `id`: allow or deny, once or for the rest of the session; `expired`:
    /// nobody answered by the deadline (a denial).
    Answer {
        id: u64,
        allow: bool,
        for_session: bool,
        #[serde(default)]
        expired: bool,
    },
}

/// The writing half, shared by the audit writer and the approval broker.
#[derive(Clone)]
pub struct LinkWriter(Arc<Mutex<UnixStream>>);

impl LinkWriter {
    pub fn new(stream: UnixStream) -> LinkWriter {
        LinkWriter(Arc::new(Mutex::new(stream)))
    }

    /// Write prepared lines (each ending in `\n`) in one go.
    pub fn write_raw(&self, lines: &[u8]) -> io::Result<()> {
        let mut s = self
            .0
            .lock()
            .map_err(|_| io::Error::other("link lock poisoned"))?;
        s.write_all(lines)
    }

    /// Write one control message.
    pub fn send<T: Serialize>(&self, msg: &T) -> io::Result<()> {
        let mut line = b"C ".to_vec();
        serde_json::to_writer(&mut line, msg).map_err(io::Error::other)?;
        line.push(b'\n');
        self.write_raw(&line)
    }
}

/// One line read from the link.
#[derive(Debug)]
pub enum Line {
    Audit(String),
    Control(String),
}

/// Read the next line; `Ok(None)` at end of stream. A line longer than [`MAX_LINE`] or not
/// framed as `A `/`C ` is an error (the peer is broken: the link is closed).
pub fn read_line<R: BufRead>(r: &mut R) -> io::Result<Option<Line>> {
    let mut buf = Vec::new();
    let n = <&mut R as io::Read>::take(r, MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "link line too long or cut short",
        ));
    }
    buf.pop();
    let text = String::from_utf8(buf)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "link line is not UTF-8"))?;
    match text.split_at_checked(2) {
        Some(("A ", rest)) => Ok(Some(Line::Audit(rest.to_string()))),
        Some(("C ", rest)) => Ok(Some(Line::Control(rest.to_string()))),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "link line without an A/C prefix",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_lines_are_errors() {
        let (a, b) = UnixStream::pair().unwrap();
        let w = LinkWriter::new(a);
        let ask = ToDaemon::Ask {
            id: 7,
            pid: 42,
            kind: "open".into(),
            summary: "open /etc/x".into(),
            action: serde_json::json!({"path": "/etc/x"}),
            rule: "r".into(),
            reason: String::new(),
            timeout_ms: 1000,
        };
        w.send(&ask).unwrap();
        w.write_raw(b"A {\"id\":\"s-1\"}\nX nope\n").unwrap();
        drop(w);
        let mut r = io::BufReader::new(b);
        match read_line(&mut r).unwrap() {
            Some(Line::Control(c)) => {
                assert_eq!(serde_json::from_str::<ToDaemon>(&c).unwrap(), ask)
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(read_line(&mut r).unwrap(), Some(Line::Audit(a)) if a == "{\"id\":\"s-1\"}")
        );
        assert!(read_line(&mut r).is_err());
        assert!(read_line(&mut r).unwrap().is_none());
    }
}
