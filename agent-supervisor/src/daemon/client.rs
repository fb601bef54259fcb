//! The CLI's daemon clients: `sessions`, `approve`, `deny`, `audit tail`.
//!
//! They talk to the daemon's unix socket (`--socket`, `$AGENT_SUPERVISOR_SOCKET`, default
//! `/run/agent-supervisor/api.sock`) and present `$AGENT_SUPERVISOR_TOKEN` as a bearer token
//! when set.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tonic::transport::{Channel, Endpoint, Uri};

use super::proto;

/// A connected channel to the daemon.
pub async fn connect(socket: &Path) -> Result<Channel> {
    let path: PathBuf = socket.to_path_buf();
    let shown = path.display().to_string();
    Endpoint::try_from("http://daemon.invalid")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .with_context(|| {
            format!("cannot reach the daemon at {shown} (is `agent-supervisor daemon` running? see --socket)")
        })
}

/// Where the daemon is: its unix socket, or its TCP listener (TLS; `ca` verifies the server,
/// `identity` is a client certificate and key for mTLS).
#[derive(Debug, Clone)]
pub enum Target {
    Unix(PathBuf),
    Tls {
        url: String,
        ca: PathBuf,
        identity: Option<(PathBuf, PathBuf)>,
    },
}

/// A connected channel to the daemon, wherever it is.
pub async fn connect_to(target: &Target) -> Result<Channel> {
    match target {
        Target::Unix(socket) => connect(socket).await,
        Target::Tls { url, ca, identity } => {
            use tonic::transport::{Certificate, ClientTlsConfig, Identity};
            let read =
                |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
            if let Some((cert, key)) = identity {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            anyhow::ensure!(
                std::env::var_os("AGENT_SUPERVISOR_TOKEN").is_some_and(|t| !t.is_empty()),
                "over TCP the daemon wants a bearer token: set AGENT_SUPERVISOR_TOKEN"
            );
            Endpoint::from_shared(url.clone())
                .with_context(|| format!("bad URL {url}"))?
                .tls_config(tls)
                .context("TLS configuration")?
                .connect()
                .await
                .with_context(|| format!("cannot reach the daemon at {url}"))
        }
    }
}

/// A request carrying `$AGENT_SUPERVISOR_TOKEN`, if set.
pub fn request<T>(msg: T) -> Result<tonic::Request<T>> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = std::env::var_os("AGENT_SUPERVISOR_TOKEN").filter(|t| !t.is_empty()) {
        let v = format!("Bearer {}", t.to_string_lossy())
            .parse()
            .context("AGENT_SUPERVISOR_TOKEN is not a valid header value")?;
        r.metadata_mut().insert("authorization", v);
    }
    Ok(r)
}

fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("the daemon refused: {} ({:?})", e.message(), e.code())
}

fn block_on<F: std::future::Future<Output = Result<i32>>>(f: F) -> Result<i32> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(f)
}

/// `agent-supervisor sessions`.
pub fn sessions(target: &Target, json: bool) -> Result<i32> {
    block_on(async {
        let mut c = proto::sessions_client::SessionsClient::new(connect_to(target).await?);
        let list = c
            .list_sessions(request(proto::ListSessionsRequest {})?)
            .await
            .map_err(status)?
            .into_inner()
            .sessions;
        for s in list {
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "id": s.id, "state": s.state, "command": s.command, "workspace": s.workspace,
                        "policy": s.policy, "uid": s.uid, "supervisor_pid": s.supervisor_pid,
                        "exit_code": s.exit_code, "started_at": s.started_at,
                        "pending_approvals": s.pending_approvals,
                    })
                );
            } else {
                println!(
                    "{}  {:<8} uid {:<6} pending {:<3} {}",
                    s.id,
                    s.state,
                    s.uid,
                    s.pending_approvals,
                    crate::supervise::escape_for_human(s.command.join(" ").as_bytes())
                );
            }
        }
        Ok(0)
    })
}

/// `agent-supervisor approve|deny ID [--for-session] [--digest D]`: the approval is looked up
/// among the pending ones and its action digest repeated in the answer (or `D`, to bind the
/// answer to the action a watcher showed). Exit 1 when it is not pending or refused.
pub fn resolve(
    target: &Target,
    id: &str,
    allow: bool,
    for_session: bool,
    digest: Option<String>,
) -> Result<i32> {
    block_on(async {
        let channel = connect_to(target).await?;
        let mut c = proto::approvals_client::ApprovalsClient::new(channel);
        let mut stream = c
            .watch_approvals(request(proto::WatchApprovalsRequest::default())?)
            .await
            .map_err(status)?
            .into_inner();
        let mut found = None;
        while let Some(e) = stream.message().await.map_err(status)? {
            match e.event {
                Some(proto::approval_event::Event::Pending(a)) if a.id == id => found = Some(a),
                Some(proto::approval_event::Event::Synced(_)) => break,
                _ => {}
            }
        }
        drop(stream);
        // Not among those we may see: ask anyway, the daemon says why it refuses.
        let mut a = found.unwrap_or_else(|| proto::Approval {
            id: id.to_string(),
            ..Default::default()
        });
        if let Some(d) = digest {
            a.action_digest = d;
        }
        let resolution = match (allow, for_session) {
            (true, false) => proto::Resolution::AllowOnce,
            (false, false) => proto::Resolution::DenyOnce,
            (true, true) => proto::Resolution::AllowForSession,
            (false, true) => proto::Resolution::DenyForSession,
        };
        match c
            .resolve(request(proto::ResolveRequest {
                id: a.id.clone(),
                action_digest: a.action_digest,
                resolution: resolution as i32,
            })?)
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                println!("{}: {}", r.id, r.decision);
                Ok(0)
            }
            Err(e) => {
                eprintln!("agent-supervisor: {}", status(e));
                Ok(1)
            }
        }
    })
}

/// Options of `audit tail`.
pub struct TailOptions {
    pub follow: bool,
    pub session: Option<String>,
    pub kind: Option<String>,
    pub decision: Option<String>,
    pub json: bool,
    pub after: u64,
}

/// `agent-supervisor audit tail`.
pub fn audit_tail(target: &Target, o: TailOptions) -> Result<i32> {
    block_on(async {
        let mut c = proto::audit_client::AuditClient::new(connect_to(target).await?);
        let mut stream = c
            .stream_audit(request(proto::StreamAuditRequest {
                after_cursor: o.after,
                session: o.session.unwrap_or_default(),
                kind: o.kind.unwrap_or_default(),
                decision: o.decision.unwrap_or_default(),
                no_follow: !o.follow,
            })?)
            .await
            .map_err(status)?
            .into_inner();
        use std::io::Write;
        let mut out = std::io::stdout();
        while let Some(e) = stream.message().await.map_err(status)? {
            if o.json {
                writeln!(out, "{}", e.json)?;
            } else {
                let v: serde_json::Value = serde_json::from_str(&e.json).unwrap_or_default();
                writeln!(
                    out,
                    "{} {} {:<14} {:<6} {}",
                    v["ts"].as_str().unwrap_or(""),
                    e.session,
                    e.kind,
                    e.decision,
                    crate::supervise::escape_for_human(v["action"].to_string().as_bytes())
                )?;
            }
            out.flush()?;
        }
        Ok(0)
    })
}

/// `agent-supervisor run` through the daemon.
pub struct RunOptions {
    pub policy: Option<PathBuf>,
    pub workspace: Option<PathBuf>,
    pub quiet: bool,
    pub command: Vec<std::ffi::OsString>,
}

/// Start the session in the daemon with our stdin/stdout/stderr and our environment; wait
/// for the agent and return its exit code (125 if the daemon went away first: the session
/// died with it).
pub fn run(socket: &Path, o: RunOptions) -> Result<i32> {
    let vars = crate::session::vars(o.workspace.as_deref())?;
    // The same lookup and trust check as a standalone run; the daemon gets an absolute path.
    let policy = crate::session::load_policy(o.policy.as_deref(), &vars)?;
    let policy = if policy.source.starts_with("preset:") {
        policy.source.clone()
    } else {
        std::fs::canonicalize(&policy.source)
            .with_context(|| format!("policy {}", policy.source))?
            .display()
            .to_string()
    };
    let command = o
        .command
        .iter()
        .map(|a| {
            a.to_str().map(str::to_string).with_context(|| {
                format!("{a:?}: the daemon takes UTF-8 arguments only (run with --standalone)")
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let env: Vec<String> = std::env::vars_os()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_str()?, v.to_str()?)))
        .filter(|kv| !kv.starts_with("AGENT_SUPERVISOR_TOKEN="))
        .collect();
    let (conn, token) = super::stdio::hand_over(socket)?;
    let session = block_on(async {
        let mut c = proto::sessions_client::SessionsClient::new(connect(socket).await?);
        let s = c
            .start_session(request(proto::StartSessionRequest {
                command,
                workspace: vars.workspace.display().to_string(),
                policy: policy.clone(),
                env,
                stdio_token: token,
            })?)
            .await
            .map_err(status)?
            .into_inner();
        if !o.quiet {
            eprintln!(
                "agent-supervisor: session {} (daemon {}), policy {policy}; approvals: agent-supervisor approvals / approve ID",
                s.id,
                socket.display()
            );
        }
        Ok(0)
    });
    session?;
    match super::stdio::wait_exit(&conn) {
        Some(code) => Ok(code),
        None => {
            eprintln!("agent-supervisor: the daemon went away: the session ended with it");
            Ok(crate::session::EXIT_SUPERVISOR_ERROR)
        }
    }
}
