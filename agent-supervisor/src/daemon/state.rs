//! The daemon's one piece of shared mutable state: sessions and their pending approvals, under
//! one lock (held for bookkeeping only, never across an await). Approval events are broadcast
//! while the lock is held, so a watcher that subscribes and snapshots under the lock sees every
//! approval exactly once in order.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use super::link::{LinkWriter, ToSession};
use super::log::AuditLog;
use super::proto;
use crate::audit::Record;

/// One session the daemon launched.
pub struct SessionEntry {
    pub info: proto::Session,
    pub gid: u32,
    /// Names of configured tokens found in the session's environment: never approvers here.
    pub tainted_tokens: Vec<String>,
    pub link: LinkWriter,
    pub pidfd: Arc<OwnedFd>,
    /// The `run` client whose stdio the agent has (gets `exit N`).
    pub client: Option<std::os::unix::net::UnixStream>,
}

/// An approval waiting for an answer.
pub struct PendingApproval {
    pub approval: proto::Approval,
    /// The session's own id for it (on the link).
    pub local_id: u64,
    pub deadline: Instant,
    pub arrived: Instant,
}

#[derive(Default)]
pub struct Tables {
    pub sessions: BTreeMap<String, SessionEntry>,
    /// By approval id.
    pub approvals: BTreeMap<String, PendingApproval>,
    /// (session, local id) to approval id.
    pub by_local: HashMap<(String, u64), String>,
    /// Approval ids handed out so far (ids are `<session>-a<n>`, never reused).
    pub issued: u64,
}

/// Shared state.
pub struct State {
    tables: Mutex<Tables>,
    pub approval_events: broadcast::Sender<proto::ApprovalEvent>,
    pub log: AuditLog,
    pub metrics: Arc<super::metrics::Metrics>,
}

/// Why a resolution was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ResolveError {
    NotFound,
    AlreadyResolved,
    DigestMismatch,
}

pub fn action_digest(session: &str, id: &str, kind: &str, action_json: &str) -> String {
    let mut h = Sha256::new();
    for part in [session, id, kind, action_json] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

fn resolved_event(id: &str, session: &str, decision: &str, by: &str) -> proto::ApprovalEvent {
    proto::ApprovalEvent {
        event: Some(proto::approval_event::Event::Resolved(proto::Resolved {
            id: id.into(),
            session: session.into(),
            decision: decision.into(),
            by: by.into(),
        })),
    }
}

impl State {
    pub fn new(log: AuditLog, metrics: Arc<super::metrics::Metrics>) -> Arc<State> {
        let (approval_events, _) = broadcast::channel(4096);
        Arc::new(State {
            tables: Mutex::new(Tables::default()),
            approval_events,
            log,
            metrics,
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new ask from session `session`; returns the approval (already broadcast).
    #[allow(clippy::too_many_arguments)]
    pub fn add_approval(
        &self,
        session: &str,
        local_id: u64,
        pid: i32,
        kind: String,
        summary: String,
        action: &serde_json::Value,
        rule: String,
        reason: String,
        timeout_ms: u64,
    ) -> Option<(String, Instant)> {
        let mut t = self.lock();
        let agent_command = t.sessions.get(session)?.info.command.clone();
        t.issued += 1;
        let id = format!("{session}-a{}", t.issued);
        let action_json = action.to_string();
        // From the session: never trusted to be sane (a day at most).
        let timeout_ms = timeout_ms.min(86_400_000);
        let deadline = Instant::now() + std::time::Duration::from_millis(timeout_ms);
        let deadline_unix_ms = (std::time::SystemTime::now()
            + std::time::Duration::from_millis(timeout_ms))
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
        let approval = proto::Approval {
            action_digest: action_digest(session, &id, &kind, &action_json),
            id: id.clone(),
            session: session.into(),
            pid,
            agent_command,
            kind,
            summary,
            action_json,
            rule,
            reason,
            deadline_unix_ms,
        };
        if let Some(s) = t.sessions.get_mut(session) {
            s.info.pending_approvals += 1;
        }
        let _ = self.approval_events.send(proto::ApprovalEvent {
            event: Some(proto::approval_event::Event::Pending(approval.clone())),
        });
        t.by_local.insert((session.into(), local_id), id.clone());
        t.approvals.insert(
            id.clone(),
            PendingApproval {
                approval,
                local_id,
                deadline,
                arrived: Instant::now(),
            },
        );
        self.metrics.approvals_pending.inc();
        Some((id, deadline))
    }

    fn take(&self, t: &mut Tables, id: &str, by: &str) -> Option<PendingApproval> {
        let p = t.approvals.remove(id)?;
        self.metrics.approvals_pending.dec();
        self.metrics.resolved(by);
        t.by_local.remove(&(p.approval.session.clone(), p.local_id));
        if let Some(s) = t.sessions.get_mut(&p.approval.session) {
            s.info.pending_approvals = s.info.pending_approvals.saturating_sub(1);
        }
        Some(p)
    }

    /// Answer approval `id` (first writer wins): tell its session, broadcast, audit.
    pub fn resolve(
        &self,
        id: &str,
        digest: &str,
        allow: bool,
        for_session: bool,
        approver: &str,
    ) -> Result<(), ResolveError> {
        let mut t = self.lock();
        let Some(p) = t.approvals.get(id) else {
            let known = id
                .rsplit_once("-a")
                .and_then(|(_, n)| n.parse::<u64>().ok())
                .is_some_and(|n| n >= 1 && n <= t.issued);
            return Err(if known {
                ResolveError::AlreadyResolved
            } else {
                ResolveError::NotFound
            });
        };
        let same =
            subtle::ConstantTimeEq::ct_eq(p.approval.action_digest.as_bytes(), digest.as_bytes());
        if !bool::from(same) {
            return Err(ResolveError::DigestMismatch);
        }
        let p = self.take(&mut t, id, "human").expect("present");
        self.metrics
            .approval_latency
            .observe(p.arrived.elapsed().as_secs_f64());
        let session = p.approval.session.clone();
        if let Some(s) = t.sessions.get(&session) {
            let _ = s.link.send(&ToSession::Answer {
                id: p.local_id,
                allow,
                for_session,
                expired: false,
            });
        }
        let decision = if allow { "allow" } else { "deny" };
        let _ = self
            .approval_events
            .send(resolved_event(id, &session, decision, "human"));
        drop(t);
        self.log.record(Record::session(
            &session,
            p.approval.pid,
            "approval",
            serde_json::json!({
                "approval": id,
                "action_kind": p.approval.kind,
                "summary": p.approval.summary,
                "decision": decision,
                "for_session": for_session,
                "approver": approver,
            }),
        ));
        Ok(())
    }

    /// The deadline passed: deny (if still pending).
    pub fn expire(&self, id: &str) {
        let mut t = self.lock();
        if t.approvals
            .get(id)
            .is_none_or(|p| p.deadline > Instant::now())
        {
            return;
        }
        let p = self.take(&mut t, id, "timeout").expect("present");
        if let Some(s) = t.sessions.get(&p.approval.session) {
            let _ = s.link.send(&ToSession::Answer {
                id: p.local_id,
                allow: false,
                for_session: false,
                expired: true,
            });
        }
        let _ =
            self.approval_events
                .send(resolved_event(id, &p.approval.session, "deny", "timeout"));
    }

    /// The session settled its ask `local_id` itself.
    pub fn settled(&self, session: &str, local_id: u64, decision: &str, by: &str) {
        let mut t = self.lock();
        let Some(id) = t.by_local.get(&(session.to_string(), local_id)).cloned() else {
            return;
        };
        self.take(&mut t, &id, by);
        let _ = self
            .approval_events
            .send(resolved_event(&id, session, decision, by));
    }

    /// The session's link closed: its approvals are moot.
    pub fn drop_approvals_of(&self, session: &str) {
        let mut t = self.lock();
        let ids: Vec<String> = t
            .approvals
            .iter()
            .filter(|(_, p)| p.approval.session == session)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.take(&mut t, &id, "session-ended");
            let _ =
                self.approval_events
                    .send(resolved_event(&id, session, "deny", "session-ended"));
        }
    }

    /// SIGKILL every running session (fail closed).
    pub fn kill_all(&self) {
        let t = self.lock();
        for s in t.sessions.values().filter(|s| s.info.state == "running") {
            let _ = crate::sys::pidfd_send_signal(s.pidfd.as_fd(), libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_bind_every_part() {
        let d = action_digest("s", "s-a1", "open", "{}");
        assert_eq!(d.len(), 64);
        assert_ne!(d, action_digest("s", "s-a2", "open", "{}"));
        assert_ne!(d, action_digest("s", "s-a1", "exec", "{}"));
        assert_ne!(d, action_digest("s", "s-a1", "open", "{ }"));
        // Length-prefixed: moving a boundary changes the digest.
        assert_ne!(
            action_digest("ab", "c", "", ""),
            action_digest("a", "bc", "", "")
        );
    }
}
