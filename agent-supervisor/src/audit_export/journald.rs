//! Audit records to the systemd journal (its native protocol, through `libsystemd`).
//!
//! Query them with `journalctl -t agent-supervisor`, e.g.
//! `journalctl -t agent-supervisor AUDIT_DECISION=deny -o json`.

use libsystemd::logging::{self, Priority};

use super::{ExportError, Fields, Sink};

pub(super) struct Journald;

impl Journald {
    /// Refuse up front when no journal listens: asked for and silently lost would be worse.
    pub(super) fn open() -> Result<Journald, ExportError> {
        use std::os::unix::fs::FileTypeExt;
        let listening = std::fs::metadata(logging::SD_JOURNAL_SOCK_PATH)
            .is_ok_and(|m| m.file_type().is_socket());
        if !listening {
            return Err(ExportError::NoJournal {
                path: logging::SD_JOURNAL_SOCK_PATH,
            });
        }
        Ok(Journald)
    }
}

impl Sink for Journald {
    fn send(&mut self, lines: &[String]) -> usize {
        let mut sent = 0;
        for line in lines {
            let f = Fields::of(line);
            let priority = if f.is_denial() {
                Priority::Warning
            } else {
                Priority::Info
            };
            let pid = f.pid.to_string();
            let vars = [
                ("SYSLOG_IDENTIFIER", "agent-supervisor"),
                ("AUDIT_SESSION", f.session.as_str()),
                ("AUDIT_ID", f.id.as_str()),
                ("AUDIT_KIND", f.kind.as_str()),
                ("AUDIT_DECISION", f.decision.as_str()),
                ("AUDIT_DECIDED_BY", f.decided_by.as_str()),
                ("AUDIT_RULE", f.rule.as_str()),
                ("AUDIT_PID", pid.as_str()),
                ("AUDIT_RECORD", line.as_str()),
            ];
            match logging::journal_send(
                priority,
                &f.summary,
                vars.into_iter().filter(|(_, v)| !v.is_empty()),
            ) {
                Ok(()) => sent += 1,
                Err(e) => tracing::debug!("journald export: {e}"),
            }
        }
        sent
    }

    fn batches(&self) -> bool {
        false
    }
}
