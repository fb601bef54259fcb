//! `agent-supervisor daemon`: the supervisor as a service (see docs/daemon.md).
//!
//! ```text
//!  gRPC clients ──unix socket (SO_PEERCRED)──▶ service ──▶ state (sessions, approvals)
//!                                               │  ▲                    ▲
//!  audit stream ◀── log (one writer, cursors) ◀─┘  └─ launcher ──▶ `run --daemon-link`
//!                        ▲                                    (one child per session)
//!                        └──────────── audit lines and asks over each session's link
//! ```
//! The daemon never forks from its multi-threaded runtime into a sandbox: each session is a
//! fresh `agent-supervisor run` process (single-threaded when it launches the sandbox), tied to
//! the daemon by `PR_SET_PDEATHSIG` and a private socketpair.

pub mod auth;
pub mod authority;
pub mod client;
pub mod config;
pub mod link;
pub mod log;
pub mod metrics;
pub mod service;
pub mod sessions;
pub mod state;
pub mod stdio;
pub mod watch;

pub mod proto {
    //! Generated from `proto/agent_supervisor/v1/supervisor.proto`.
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("agent_supervisor.v1");

    /// For server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("agent_supervisor_v1_descriptor");
}

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};

use self::config::Config;

/// Options of `agent-supervisor daemon`.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub config: Option<PathBuf>,
}

/// Run the daemon until SIGTERM/SIGINT. Returns the exit code.
pub fn run(opts: DaemonOptions) -> Result<i32> {
    let (path, explicit) = match &opts.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(config::DEFAULT_PATH), false),
    };
    let cfg = Config::load(&path, explicit)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("daemon")
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(serve(cfg))
}

async fn serve(cfg: Config) -> Result<i32> {
    // Stopping is handled from the start: systemd may send SIGTERM as soon as we exist.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    // Before anything else (recovering sessions would kill a running daemon's): is another
    // daemon on this socket?
    anyhow::ensure!(
        std::os::unix::net::UnixStream::connect(&cfg.socket).is_err(),
        "{}: another daemon is listening there (stop it first, or set `socket` in the config)",
        cfg.socket.display()
    );
    let binary = match &cfg.supervisor_binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("finding our own executable")?,
    };
    // The log's failure handler kills every session; it needs the state, made after the log.
    let on_broken_state: Arc<std::sync::OnceLock<Arc<state::State>>> = Default::default();
    let exporters_end;
    let log = {
        let st = Arc::clone(&on_broken_state);
        let key_path = cfg.audit_key_path();
        let key = crate::audit::keys::load_or_generate(&key_path)
            .context("the audit log's signing key (set `audit_key` in the daemon's config)")?;
        let exporters = crate::audit_export::Exporters::start(&cfg.audit_export)
            .context("[audit_export] in the daemon's config")?;
        exporters_end = exporters.clone();
        let opts = crate::audit::Options {
            export: exporters.map(|e| e as Arc<dyn crate::audit::Export>),
            key: Some(Arc::new(key)),
            max_size: cfg.audit_max_size_bytes().map_err(|e| anyhow::anyhow!(e))?,
            daily: cfg.audit_rotate_daily,
            lock: false,
            checkpoint_records: cfg.audit_checkpoint_records,
            writer: format!("daemon-{}", std::process::id()),
            ..Default::default()
        };
        log::AuditLog::open(
            &cfg.audit,
            opts,
            Box::new(move |why| {
                eprintln!(
                    "agent-supervisor daemon: ERROR: the audit log cannot be written ({why}): every session is killed and none starts until the daemon is restarted with a writable log"
                );
                if let Some(s) = st.get() {
                    s.kill_all();
                }
            }),
        )
        .with_context(|| {
            format!(
                "opening the audit log {} (set `audit` in the daemon's config)",
                cfg.audit.display()
            )
        })?
    };
    sessions::recover(&cfg.state_dir, &log);
    let metrics = metrics::Metrics::new();
    metrics.follow_log(&log);
    if let Some(addr) = cfg.metrics_listen {
        metrics::serve(addr, Arc::clone(&metrics)).await?;
        eprintln!("agent-supervisor daemon: metrics on http://{addr}/metrics");
    }
    let state = state::State::new(log.clone(), metrics);
    let _ = on_broken_state.set(Arc::clone(&state));
    let launcher = sessions::Launcher::start().context("starting the launcher thread")?;
    let grants = Arc::new(stdio::Grants::default());
    let ctx = Arc::new(sessions::Ctx {
        state: Arc::clone(&state),
        launcher,
        binary,
        state_dir: cfg.state_dir.clone(),
        audit_key: cfg.audit_key_path(),
        runtime: tokio::runtime::Handle::current(),
        grants: Arc::clone(&grants),
    });
    let stdio_path = stdio::socket_for(&cfg.socket);
    stdio::serve(bind(&cfg, &stdio_path)?, grants).context("serving the stdio socket")?;
    let max = cfg.max_message_bytes;
    let svc = service::Svc(Arc::new(service::Api {
        cfg: cfg.clone(),
        sessions: Arc::clone(&ctx),
    }));
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<proto::sessions_server::SessionsServer<service::Svc>>()
        .await;
    health_reporter
        .set_serving::<proto::approvals_server::ApprovalsServer<service::Svc>>()
        .await;
    health_reporter
        .set_serving::<proto::audit_server::AuditServer<service::Svc>>()
        .await;
    // The same services on every listener.
    let routes =
        |builder: &mut tonic::transport::Server| -> Result<tonic::transport::server::Router> {
            // Both reflection versions: grpcurl and older tools still ask v1alpha.
            let reflection = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1()
                .context("building the reflection service")?;
            let reflection_alpha = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1alpha()
                .context("building the reflection service")?;
            Ok(builder
                .add_service(health.clone())
                .add_service(reflection)
                .add_service(reflection_alpha)
                .add_service(
                    proto::sessions_server::SessionsServer::new(svc.clone())
                        .max_decoding_message_size(max),
                )
                .add_service(
                    proto::approvals_server::ApprovalsServer::new(svc.clone())
                        .max_decoding_message_size(max),
                )
                .add_service(
                    proto::audit_server::AuditServer::new(svc.clone())
                        .max_decoding_message_size(max),
                )
                .add_service(
                    proto::policy_server::PolicyServer::new(svc.clone())
                        .max_decoding_message_size(max),
                ))
        };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let tcp = match &cfg.tcp {
        Some(t) => {
            let tls = tls_config(t)?;
            let mut builder = tonic::transport::Server::builder()
                .tls_config(tls)
                .context("configuring TLS")?;
            let router = routes(&mut builder)?;
            let listener = tokio::net::TcpListener::bind(t.listen)
                .await
                .with_context(|| format!("[tcp] listen {}", t.listen))?;
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            eprintln!("agent-supervisor daemon: listening on {} (TLS)", t.listen);
            Some(tokio::spawn(router.serve_with_incoming_shutdown(
                incoming,
                stopped(stop_rx.clone()),
            )))
        }
        None => None,
    };
    // The API socket last: once it answers, everything else (TCP, metrics) is up.
    let listener = bind(&cfg, &cfg.socket)?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    // Each connection's `:authority` is fixed up before h2 reads it (see authority.rs):
    // grpcio sends the socket path, which h2 would reset.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::UnixListenerStream::new(listener),
        |conn| conn.map(authority::AuthorityFix::new),
    );
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tracing::info!("listening on {}", cfg.socket.display());
    eprintln!(
        "agent-supervisor daemon: listening on {} (audit {})",
        cfg.socket.display(),
        cfg.audit.display()
    );
    let mut builder = tonic::transport::Server::builder();
    let unix = tokio::spawn(
        routes(&mut builder)?.serve_with_incoming_shutdown(incoming, stopped(stop_rx)),
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = interrupt.recv() => {}
    }
    let _ = stop_tx.send(true);
    unix.await
        .context("the API server task")?
        .context("serving the API")?;
    if let Some(t) = tcp {
        t.await
            .context("the TCP server task")?
            .context("serving the API over TCP")?;
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    // Sessions never outlive the daemon (they would die with it anyway): kill and record them.
    let running: Vec<String> = state
        .lock()
        .sessions
        .iter()
        .filter(|(_, s)| s.info.state == "running")
        .map(|(id, _)| id.clone())
        .collect();
    for id in &running {
        sessions::kill(&state, id, "daemon-stop");
    }
    for _ in 0..100 {
        let left = state
            .lock()
            .sessions
            .values()
            .any(|s| s.info.state.starts_with("killing"));
        if !left {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _ = std::fs::remove_file(&cfg.socket);
    let _ = std::fs::remove_file(&stdio_path);
    log.flush().context("flushing the audit log")?;
    if let Some(e) = exporters_end {
        if let Some(w) = e.finish().dropped_warning(&cfg.audit) {
            eprintln!("agent-supervisor daemon: warning: {w}");
        }
    }
    Ok(0)
}

/// Bind a socket of the API (the API itself, the stdio side channel): refuse if another
/// daemon answers there, replace a stale one; mode and group as configured.
fn bind(cfg: &Config, path: &Path) -> Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    if path.exists() {
        anyhow::ensure!(
            std::os::unix::net::UnixStream::connect(path).is_err(),
            "{}: another daemon is listening there (stop it first, or set `socket` in the config)",
            path.display()
        );
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    let mode = cfg.socket_mode_bits().map_err(anyhow::Error::msg)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))?;
    set_group(path, &cfg.socket_group);
    Ok(listener)
}

/// The TCP listener's TLS: the server's certificate and key, and with `client_ca` client
/// certificates required (mTLS).
fn tls_config(t: &config::Tcp) -> Result<tonic::transport::ServerTlsConfig> {
    let read =
        |p: &Path| std::fs::read(p).with_context(|| format!("[tcp]: cannot read {}", p.display()));
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(read(&t.cert)?, read(&t.key)?),
    );
    if let Some(ca) = &t.client_ca {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    Ok(tls)
}

fn set_group(path: &Path, group: &str) {
    let gid = group.parse::<u32>().ok().or_else(|| {
        nix::unistd::Group::from_name(group)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    });
    match gid {
        Some(gid) => {
            if let Err(e) = std::os::unix::fs::chown(path, None, Some(gid)) {
                tracing::warn!("cannot give {} to group {group}: {e}", path.display());
            }
        }
        None => tracing::info!(
            "group {group} does not exist: {} stays in the daemon's group",
            path.display()
        ),
    }
}
