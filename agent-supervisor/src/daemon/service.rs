//! The gRPC services (tonic) over the daemon's state.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::auth::{self, Caller};
use super::config::Config;
use super::proto::{self, approval_event::Event};
use super::sessions;
use super::state::ResolveError;

/// Everything the services share.
pub struct Api {
    pub cfg: Config,
    pub sessions: Arc<sessions::Ctx>,
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Api {
    /// Identify the caller and refuse agents.
    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let c = auth::caller(&self.cfg, req)?;
        auth::refuse_agents(&self.sessions.state.lock(), &c)?;
        Ok(c)
    }
}

#[derive(Clone)]
pub struct Svc(pub Arc<Api>);

const MAX_ARGS: usize = 4096;

fn env_pairs(env: &[String]) -> Result<Vec<(String, String)>, Status> {
    env.iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() && !k.contains('\0') && !v.contains('\0') => {
                Ok((k.to_string(), v.to_string()))
            }
            _ => Err(Status::invalid_argument(format!(
                "env entry {kv:?} is not KEY=VALUE"
            ))),
        })
        .collect()
}

fn default_env(uid: u32) -> Vec<(String, String)> {
    let home = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.dir.display().to_string())
        .unwrap_or_else(|| "/".into());
    vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), home),
        ("LANG".into(), "C.UTF-8".into()),
    ]
}

#[tonic::async_trait]
impl proto::sessions_server::Sessions for Svc {
    async fn start_session(
        &self,
        req: Request<proto::StartSessionRequest>,
    ) -> Result<Response<proto::Session>, Status> {
        let api = &self.0;
        let c = api.caller(&req)?;
        if c.uid == auth::NO_UID {
            return Err(Status::permission_denied(
                "sessions run as their caller's uid, and a TCP caller has none: start sessions on the unix socket",
            ));
        }
        if !auth::can_start(&api.cfg, &c) {
            return Err(Status::permission_denied(format!(
                "{} may not start sessions (see [access.start] in the daemon's config)",
                c.describe()
            )));
        }
        if api.sessions.state.log.is_broken() {
            return Err(Status::unavailable(
                "the audit log cannot be written: no session starts until it can (see the daemon's log)",
            ));
        }
        let r = req.into_inner();
        if r.command.is_empty() || r.command.len() > MAX_ARGS {
            return Err(Status::invalid_argument(
                "command: give the agent's command line (1 to 4096 arguments)",
            ));
        }
        if r.command.iter().any(|a| a.contains('\0')) {
            return Err(Status::invalid_argument("command: NUL in an argument"));
        }
        let workspace = PathBuf::from(&r.workspace);
        if !workspace.is_absolute() || r.workspace.contains('\0') {
            return Err(Status::invalid_argument(
                "workspace must be an absolute path",
            ));
        }
        let policy = if r.policy.is_empty() {
            api.cfg.default_policy.clone()
        } else {
            r.policy
        };
        if !(policy.starts_with("preset:") || Path::new(&policy).is_absolute())
            || policy.contains('\0')
        {
            return Err(Status::invalid_argument(
                "policy must be an absolute path or preset:NAME",
            ));
        }
        // The supervisor runs with this environment before the agent gets it: nothing that
        // loads code into the supervisor (LD_PRELOAD, LD_LIBRARY_PATH, ...).
        let env: Vec<(String, String)> = if r.env.is_empty() {
            default_env(c.uid)
        } else {
            env_pairs(&r.env)?
        }
        .into_iter()
        .filter(|(k, _)| !k.starts_with("LD_"))
        .collect();
        let tainted_tokens: Vec<String> = env
            .iter()
            .filter_map(|(_, v)| auth::token_name(&api.cfg, v))
            .collect();
        let stdio = if r.stdio_token.is_empty() {
            None
        } else {
            Some(
                api.sessions
                    .grants
                    .take(&r.stdio_token, c.uid)
                    .map_err(Status::permission_denied)?,
            )
        };
        let spec = sessions::Spec {
            stdio,
            command: r.command,
            workspace,
            policy,
            env,
            uid: c.uid,
            gid: c.gid,
            tainted_tokens,
        };
        sessions::start(&api.sessions, spec)
            .await
            .map(Response::new)
            .map_err(|e| Status::internal(format!("{e:#}")))
    }

    async fn list_sessions(
        &self,
        req: Request<proto::ListSessionsRequest>,
    ) -> Result<Response<proto::ListSessionsResponse>, Status> {
        let api = &self.0;
        let c = api.caller(&req)?;
        let t = api.sessions.state.lock();
        let sessions = t
            .sessions
            .values()
            .filter(|s| auth::can_see(&api.cfg, &c, s))
            .map(|s| public(&s.info))
            .collect();
        Ok(Response::new(proto::ListSessionsResponse { sessions }))
    }

    async fn get_session(
        &self,
        req: Request<proto::GetSessionRequest>,
    ) -> Result<Response<proto::Session>, Status> {
        let api = &self.0;
        let c = api.caller(&req)?;
        let id = &req.get_ref().id;
        let t = api.sessions.state.lock();
        match t.sessions.get(id) {
            Some(s) if auth::can_see(&api.cfg, &c, s) => Ok(Response::new(public(&s.info))),
            _ => Err(Status::not_found(format!("no session {id:?}"))),
        }
    }

    async fn kill_session(
        &self,
        req: Request<proto::KillSessionRequest>,
    ) -> Result<Response<proto::Session>, Status> {
        let api = &self.0;
        let c = api.caller(&req)?;
        let id = req.get_ref().id.clone();
        {
            let t = api.sessions.state.lock();
            match t.sessions.get(&id) {
                Some(s) if auth::can_kill(&api.cfg, &c, s) => {}
                Some(s) if auth::can_see(&api.cfg, &c, s) => {
                    return Err(Status::permission_denied(format!(
                        "{} may not kill session {id}",
                        c.describe()
                    )))
                }
                _ => return Err(Status::not_found(format!("no session {id:?}"))),
            }
        }
        sessions::kill(&api.sessions.state, &id, &c.describe())
            .map(|s| Response::new(public(&s)))
            .ok_or_else(|| Status::not_found(format!("no session {id:?}")))
    }
}

/// A session as clients see it (the internal `killing:WHO` state shows as `killing`).
fn public(s: &proto::Session) -> proto::Session {
    let mut s = s.clone();
    if s.state.starts_with("killing") {
        s.state = "killing".into();
    }
    s
}

#[tonic::async_trait]
impl proto::approvals_server::Approvals for Svc {
    type WatchApprovalsStream = EventStream<proto::ApprovalEvent>;

    async fn watch_approvals(
        &self,
        req: Request<proto::WatchApprovalsRequest>,
    ) -> Result<Response<Self::WatchApprovalsStream>, Status> {
        let api = &self.0;
        let c = api.caller(&req)?;
        let only = req.into_inner().session;
        let state = Arc::clone(&api.sessions.state);
        // Which sessions may this caller see (re-checked for sessions that start later)?
        let cfg_view_all = auth::can_view_all(&api.cfg, &c);
        let visible = move |t: &super::state::Tables, session: &str| -> bool {
            (only.is_empty() || only == session)
                && (cfg_view_all || t.sessions.get(session).is_some_and(|s| s.info.uid == c.uid))
        };
        let (tx, rx) = mpsc::channel(256);
        let (mut events, snapshot) = {
            let t = state.lock();
            let events = state.approval_events.subscribe();
            let snapshot: Vec<proto::ApprovalEvent> = t
                .approvals
                .values()
                .filter(|p| visible(&t, &p.approval.session))
                .map(|p| proto::ApprovalEvent {
                    event: Some(Event::Pending(p.approval.clone())),
                })
                .collect();
            (events, snapshot)
        };
        tokio::spawn(async move {
            for e in snapshot {
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            if tx
                .send(Ok(proto::ApprovalEvent {
                    event: Some(Event::Synced(true)),
                }))
                .await
                .is_err()
            {
                return;
            }
            loop {
                let e = match events.recv().await {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        state.metrics.dropped("approval-watcher-lagged");
                        let _ = tx
                            .send(Err(Status::resource_exhausted(format!(
                                "this watcher fell {n} events behind: watch again (pending approvals are sent first)"
                            ))))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let session = match &e.event {
                    Some(Event::Pending(a)) => a.session.clone(),
                    Some(Event::Resolved(r)) => r.session.clone(),
                    _ => continue,
                };
                let show = visible(&state.lock(), &session);
                if show && tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resolve(
        &self,
        req: Request<proto::ResolveRequest>,
    ) -> Result<Response<proto::ResolveResponse>, Status> {
        let api = &self.0;
        let c = api.caller(&req)?;
        let r = req.into_inner();
        let (allow, for_session) = match proto::Resolution::try_from(r.resolution) {
            Ok(proto::Resolution::AllowOnce) => (true, false),
            Ok(proto::Resolution::DenyOnce) => (false, false),
            Ok(proto::Resolution::AllowForSession) => (true, true),
            Ok(proto::Resolution::DenyForSession) => (false, true),
            _ => return Err(Status::invalid_argument(
                "resolution must be ALLOW_ONCE, DENY_ONCE, ALLOW_FOR_SESSION or DENY_FOR_SESSION",
            )),
        };
        let state = &api.sessions.state;
        {
            let t = state.lock();
            // The approver check needs the session: by the pending approval, or by the id's
            // session part for one that is gone (so that refusals don't leak what exists).
            let session = t
                .approvals
                .get(&r.id)
                .map(|p| p.approval.session.clone())
                .or_else(|| r.id.rsplit_once("-a").map(|(s, _)| s.to_string()));
            match session.as_ref().and_then(|s| t.sessions.get(s)) {
                Some(s) => auth::check_approver(&api.cfg, &c, s)?,
                None => return Err(Status::not_found(format!("no approval {:?}", r.id))),
            }
        }
        match state.resolve(&r.id, &r.action_digest, allow, for_session, &c.describe()) {
            Ok(()) => Ok(Response::new(proto::ResolveResponse {
                id: r.id,
                decision: if allow { "allow" } else { "deny" }.into(),
            })),
            Err(ResolveError::NotFound) => {
                Err(Status::not_found(format!("no approval {:?}", r.id)))
            }
            Err(ResolveError::AlreadyResolved) => Err(Status::failed_precondition(format!(
                "approval {} is no longer pending (already answered, expired, or the agent stopped waiting)",
                r.id
            ))),
            Err(ResolveError::DigestMismatch) => Err(Status::failed_precondition(format!(
                "approval {}: action_digest does not match the action asked for",
                r.id
            ))),
        }
    }
}

#[tonic::async_trait]
impl proto::audit_server::Audit for Svc {
    type StreamAuditStream = EventStream<proto::AuditEvent>;

    async fn stream_audit(
        &self,
        req: Request<proto::StreamAuditRequest>,
    ) -> Result<Response<Self::StreamAuditStream>, Status> {
        let api = &self.0;
        let c = api.caller(&req)?;
        let r = req.into_inner();
        if !auth::can_view_all(&api.cfg, &c) {
            let own = api
                .sessions
                .state
                .lock()
                .sessions
                .get(&r.session)
                .is_some_and(|s| s.info.uid == c.uid);
            if !own {
                return Err(Status::permission_denied(format!(
                    "{} may only stream the audit of its own sessions (give --session; see [access.view])",
                    c.describe()
                )));
            }
        }
        let log = api.sessions.state.log.clone();
        log.check_cursor(r.after_cursor)
            .map_err(Status::out_of_range)?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(stream_audit(log, r, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Replay from the file, then follow the writer; re-read the file on any gap.
async fn stream_audit(
    log: super::log::AuditLog,
    r: proto::StreamAuditRequest,
    tx: mpsc::Sender<Result<proto::AuditEvent, Status>>,
) {
    let keep = |e: &super::log::Entry| {
        (r.session.is_empty() || e.session == r.session)
            && (r.kind.is_empty() || e.kind == r.kind)
            && (r.decision.is_empty() || e.decision == r.decision)
    };
    let event = |e: &super::log::Entry| proto::AuditEvent {
        cursor: e.end,
        json: e.line.clone(),
        session: e.session.clone(),
        kind: e.kind.clone(),
        decision: e.decision.clone(),
    };
    let mut pos = r.after_cursor;
    let mut live = log.subscribe();
    loop {
        // Replay [pos, committed) from the file.
        loop {
            let end = log.committed();
            if pos >= end {
                break;
            }
            let l = log.clone();
            let chunk = tokio::task::spawn_blocking(move || l.read_range(pos, end, 1 << 20)).await;
            let chunk = match chunk {
                Ok(Ok(c)) if !c.is_empty() => c,
                Ok(Err(e)) => {
                    let _ = tx
                        .send(Err(Status::internal(format!("reading the audit log: {e}"))))
                        .await;
                    return;
                }
                _ => break,
            };
            for e in &chunk {
                pos = e.end;
                if keep(e) && tx.send(Ok(event(e))).await.is_err() {
                    return;
                }
            }
        }
        if r.no_follow {
            return;
        }
        // Follow.
        loop {
            match live.recv().await {
                Ok(e) if e.end <= pos => continue,
                Ok(e) if e.start == pos => {
                    pos = e.end;
                    if keep(&e) && tx.send(Ok(event(&e))).await.is_err() {
                        return;
                    }
                }
                // A gap (or fell behind): back to the file.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

#[tonic::async_trait]
impl proto::policy_server::Policy for Svc {
    async fn validate(
        &self,
        req: Request<proto::ValidatePolicyRequest>,
    ) -> Result<Response<proto::ValidatePolicyResponse>, Status> {
        let api = &self.0;
        api.caller(&req)?;
        let r = policy_from(&req.into_inner().toml);
        Ok(Response::new(match r {
            Ok(p) => proto::ValidatePolicyResponse {
                ok: true,
                error: String::new(),
                rules: p.rules.len() as u32,
            },
            Err(e) => proto::ValidatePolicyResponse {
                ok: false,
                error: e.to_string(),
                rules: 0,
            },
        }))
    }

    async fn explain(
        &self,
        req: Request<proto::ExplainRequest>,
    ) -> Result<Response<proto::ExplainResponse>, Status> {
        self.0.caller(&req)?;
        let r = req.into_inner();
        let policy = policy_from(&r.policy).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let e = crate::explain::explain(&policy, &r.action, crate::explain::Paths::AsGiven)
            .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        Ok(Response::new(proto::ExplainResponse {
            action: e.action,
            decision: e.decision,
            decided_by: e.decided_by,
            reason: e.reason.unwrap_or_default(),
            enforced_by: e.enforced_by,
        }))
    }
}

/// A policy from a request: TOML text or `preset:NAME`. `{workspace}` is `/workspace`,
/// `{home}` `/home/user`; `extends` resolves presets only (no file is read for a caller).
fn policy_from(
    text: &str,
) -> Result<agent_supervisor_policy::Policy, agent_supervisor_policy::PolicyError> {
    let vars = agent_supervisor_policy::Vars {
        workspace: PathBuf::from("/workspace"),
        home: PathBuf::from("/home/user"),
        tmp: PathBuf::from("/tmp"),
    };
    match text.strip_prefix("preset:") {
        Some(name) if !text.contains('\n') => agent_supervisor_policy::Policy::preset(name, &vars),
        _ => agent_supervisor_policy::Policy::parse(
            "policy.toml",
            text,
            Path::new("/nonexistent"),
            &vars,
        ),
    }
}
