//! Launching and following sessions.
//!
//! A session is `agent-supervisor run --daemon-link FD --session-id ID ...` as a child process
//! of the daemon: the sandbox is launched by a fresh, single-threaded supervisor, never forked
//! from the daemon's multi-threaded runtime. Children are spawned by one long-lived thread
//! (`launcher`) with `PR_SET_PDEATHSIG` SIGKILL, so they die with the daemon (and the sandbox
//! dies with them). Each session's link is read by its own thread: audit lines go to the log,
//! asks become approvals. A state file per running session lets the next daemon record, after a
//! crash, that the session was killed.
#![forbid(unsafe_code)]

use std::io::{BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::link::{self, Line, LinkWriter, ToDaemon};
use super::proto;
use super::state::{SessionEntry, State};
use crate::audit::Record;
use crate::sys;

struct LaunchJob {
    cmd: Command,
    link: OwnedFd,
    reply: oneshot::Sender<std::io::Result<(i32, OwnedFd)>>,
}

/// The one thread that spawns sessions (the parent-death signal follows it: it never ends).
#[derive(Clone)]
pub struct Launcher {
    tx: mpsc::Sender<LaunchJob>,
}

impl Launcher {
    pub fn start() -> std::io::Result<Launcher> {
        let (tx, rx) = mpsc::channel::<LaunchJob>();
        std::thread::Builder::new()
            .name("launcher".into())
            .spawn(move || {
                while let Ok(mut job) = rx.recv() {
                    let r = sys::spawn_tied_to_us(&mut job.cmd, job.link.as_fd()).and_then(
                        |mut child| {
                            let pid = child.id() as i32;
                            match sys::pidfd_open(pid) {
                                Ok(fd) => Ok((pid, fd)),
                                Err(e) => {
                                    let _ = child.kill();
                                    let _ = child.wait();
                                    Err(e)
                                }
                            }
                        },
                    );
                    drop(job.link);
                    let _ = job.reply.send(r);
                }
            })?;
        Ok(Launcher { tx })
    }
}

/// What to launch.
pub struct Spec {
    pub command: Vec<String>,
    pub workspace: PathBuf,
    pub policy: String,
    pub env: Vec<(String, String)>,
    pub uid: u32,
    pub gid: u32,
    pub tainted_tokens: Vec<String>,
    /// The caller's stdin/stdout/stderr (`run` through the daemon); None: /dev/null and the
    /// session's output file.
    pub stdio: Option<super::stdio::Grant>,
}

/// The state file of a running session.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    id: String,
    pid: i32,
    uid: u32,
    started_at: i64,
}

fn sessions_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("sessions")
}

/// 12 hex digits from the kernel's random source (also a valid session cgroup name).
pub fn new_session_id() -> std::io::Result<String> {
    let mut b = [0u8; 6];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Everything the daemon's sessions need from it.
pub struct Ctx {
    pub state: Arc<State>,
    pub launcher: Launcher,
    pub binary: PathBuf,
    pub state_dir: PathBuf,
    /// The audit signing key: hidden from the agents.
    pub audit_key: PathBuf,
    pub runtime: tokio::runtime::Handle,
    pub grants: Arc<super::stdio::Grants>,
}

/// Launch a session; returns once its supervisor runs.
pub async fn start(ctx: &Arc<Ctx>, spec: Spec) -> anyhow::Result<proto::Session> {
    use anyhow::Context;
    let id = new_session_id().context("reading /dev/urandom")?;
    let dir = sessions_dir(&ctx.state_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{id}.out")))
        .context("creating the session's output file")?;
    let (ours, theirs) = UnixStream::pair().context("socketpair for the session link")?;
    let mut cmd = Command::new(&ctx.binary);
    cmd.arg("run")
        .arg("--quiet")
        .arg("--daemon-link")
        .arg(theirs.as_raw_fd().to_string())
        .arg("--session-id")
        .arg(&id)
        .arg("--audit")
        .arg(ctx.state.log.path())
        .arg("--hide-audit-key")
        .arg(&ctx.audit_key)
        .arg("--workspace")
        .arg(&spec.workspace)
        .arg("--policy")
        .arg(&spec.policy)
        .arg("--")
        .args(&spec.command)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.workspace)
        .uid(spec.uid)
        .gid(spec.gid);
    let client = match spec.stdio {
        Some(grant) => {
            let mut fds = grant.fds.into_iter();
            let (i, o, e) = (fds.next(), fds.next(), fds.next());
            let (Some(i), Some(o), Some(e)) = (i, o, e) else {
                anyhow::bail!("the stdio grant lacks descriptors");
            };
            cmd.stdin(Stdio::from(i))
                .stdout(Stdio::from(o))
                .stderr(Stdio::from(e));
            Some(grant.conn)
        }
        None => {
            cmd.stdin(Stdio::null())
                .stdout(out.try_clone().context("dup")?)
                .stderr(out);
            None
        }
    };
    let (reply, answer) = oneshot::channel();
    ctx.launcher
        .tx
        .send(LaunchJob {
            cmd,
            link: OwnedFd::from(theirs),
            reply,
        })
        .map_err(|_| anyhow::anyhow!("the launcher thread stopped"))?;
    let (pid, pidfd) = answer
        .await
        .context("the launcher thread stopped")?
        .with_context(|| format!("starting {}", ctx.binary.display()))?;
    let started_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let state_file = StateFile {
        id: id.clone(),
        pid,
        uid: spec.uid,
        started_at,
    };
    let state_path = dir.join(format!("{id}.json"));
    if let Err(e) = std::fs::write(&state_path, serde_json::to_vec(&state_file)?) {
        let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
        anyhow::bail!("writing {}: {e}", state_path.display());
    }
    let info = proto::Session {
        id: id.clone(),
        state: "running".into(),
        command: spec.command.clone(),
        workspace: spec.workspace.display().to_string(),
        policy: spec.policy.clone(),
        uid: spec.uid,
        supervisor_pid: pid,
        exit_code: None,
        started_at,
        pending_approvals: 0,
    };
    let pidfd = Arc::new(pidfd);
    let reader = ours.try_clone().context("dup of the session link")?;
    ctx.state.lock().sessions.insert(
        id.clone(),
        SessionEntry {
            info: info.clone(),
            gid: spec.gid,
            tainted_tokens: spec.tainted_tokens,
            link: LinkWriter::new(ours),
            pidfd: Arc::clone(&pidfd),
            client: client.as_ref().and_then(|c| c.try_clone().ok()),
        },
    );
    if let Some(conn) = client {
        // The client leaving (its terminal closed, Ctrl-C) ends the session: fail closed.
        let state = Arc::clone(&ctx.state);
        let id = id.clone();
        std::thread::Builder::new()
            .name(format!("client-{id}"))
            .spawn(move || {
                let mut b = [0u8; 64];
                while matches!(std::io::Read::read(&mut &conn, &mut b), Ok(n) if n > 0) {}
                kill(&state, &id, "client-detached");
            })
            .context("starting the session's client thread")?;
    }
    ctx.state.metrics.sessions_started.inc();
    ctx.state.metrics.sessions_running.inc();
    ctx.state.log.record(Record::session(
        &id,
        pid,
        "session-launch",
        serde_json::json!({
            "argv": spec.command,
            "uid": spec.uid,
            "workspace": spec.workspace.display().to_string(),
            "policy": spec.policy,
        }),
    ));
    let link_done = {
        let ctx = Arc::clone(ctx);
        let id = id.clone();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name(format!("link-{id}"))
            .spawn(move || {
                follow_link(&ctx, &id, reader);
                let _ = done_tx.send(());
            })
            .context("starting the session's link thread")?;
        done_rx
    };
    {
        let ctx = Arc::clone(ctx);
        let id = id.clone();
        std::thread::Builder::new()
            .name(format!("reap-{id}"))
            .spawn(move || {
                let status = sys::waitid_pidfd(pidfd.as_fd());
                // Its last audit lines first.
                let _ = link_done.recv_timeout(std::time::Duration::from_secs(5));
                ended(&ctx, &id, pid, status.ok().map(|s| s.code()), &state_path);
            })
            .context("starting the session's reaper thread")?;
    }
    Ok(info)
}

/// Read a session's link until it closes.
fn follow_link(ctx: &Arc<Ctx>, id: &str, reader: UnixStream) {
    let mut r = BufReader::new(reader);
    loop {
        match link::read_line(&mut r) {
            Ok(Some(Line::Audit(line))) => {
                // A session writes records of its own only, without the chain's fields (the
                // daemon links them), redacted (again: cheap, and the daemon's log must hold
                // no secret whatever a session sends).
                let parsed = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .filter(|v| {
                        v.is_object()
                            && v["session"] == id
                            && agent_supervisor_audit::chain::RESERVED
                                .iter()
                                .all(|k| v.get(k).is_none())
                    });
                if let Some(mut v) = parsed {
                    let before = v.clone();
                    agent_supervisor_audit::redact::redact_json(&mut v);
                    ctx.state
                        .log
                        .append(if v == before { line } else { v.to_string() });
                } else {
                    ctx.state.metrics.dropped("malformed-session-record");
                    tracing::warn!("session {id}: dropped a malformed audit line from its link");
                }
            }
            Ok(Some(Line::Control(c))) => match serde_json::from_str::<ToDaemon>(&c) {
                Ok(ToDaemon::Ask {
                    id: local,
                    pid,
                    kind,
                    summary,
                    action,
                    rule,
                    reason,
                    timeout_ms,
                }) => {
                    let added = ctx.state.add_approval(
                        id, local, pid, kind, summary, &action, rule, reason, timeout_ms,
                    );
                    if let Some((approval, deadline)) = added {
                        let state = Arc::clone(&ctx.state);
                        ctx.runtime.spawn(async move {
                            tokio::time::sleep_until(deadline.into()).await;
                            state.expire(&approval);
                        });
                    }
                }
                Ok(ToDaemon::Settled {
                    id: local,
                    decision,
                    by,
                }) => ctx.state.settled(id, local, &decision, &by),
                Err(e) => {
                    tracing::warn!("session {id}: unreadable message on its link: {e}");
                }
            },
            Ok(None) => break,
            Err(e) => {
                // A session the daemon can no longer follow is ended (fail closed).
                tracing::warn!("session {id}: link broken ({e}): killing the session");
                kill(&ctx.state, id, "link-broken");
                break;
            }
        }
    }
    ctx.state.drop_approvals_of(id);
}

fn ended(ctx: &Arc<Ctx>, id: &str, pid: i32, code: Option<i32>, state_path: &Path) {
    ctx.state.metrics.sessions_running.dec();
    // A session reported ended has all its records in the log.
    if let Err(e) = ctx.state.log.flush() {
        tracing::error!("session {id}: flushing the audit log: {e}");
    }
    let killed_by = {
        let mut t = ctx.state.lock();
        match t.sessions.get_mut(id) {
            Some(s) => {
                let killed = s.info.state.strip_prefix("killing:").map(str::to_string);
                s.info.state = if killed.is_some() { "killed" } else { "exited" }.into();
                s.info.exit_code = code;
                if let Some(mut c) = s.client.take() {
                    use std::io::Write;
                    let code = code.unwrap_or(crate::session::EXIT_SUPERVISOR_ERROR);
                    let _ = c.write_all(format!("exit {code}\n").as_bytes());
                    let _ = c.shutdown(std::net::Shutdown::Both);
                }
                killed
            }
            None => None,
        }
    };
    if let Some(by) = killed_by {
        ctx.state.log.record(Record::session(
            id,
            pid,
            "session-end",
            serde_json::json!({ "exit_code": code, "killed_by": by }),
        ));
    }
    let _ = std::fs::remove_file(state_path);
}

/// Kill a session (SIGKILL to its supervisor: the sandbox dies with it).
pub fn kill(state: &State, id: &str, by: &str) -> Option<proto::Session> {
    let mut t = state.lock();
    let s = t.sessions.get_mut(id)?;
    if s.info.state == "running" {
        s.info.state = format!("killing:{by}");
        let _ = sys::pidfd_send_signal(s.pidfd.as_fd(), libc::SIGKILL);
    }
    Some(s.info.clone())
}

/// Sessions a previous daemon left running (it was killed or crashed): make sure nothing of
/// them runs, and record them as killed. Only our own: by the state files we wrote, a process
/// whose command line names the session, the session's own cgroup.
pub fn recover(state_dir: &Path, log: &super::log::AuditLog) {
    let dir = sessions_dir(state_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Some(sf) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<StateFile>(&b).ok())
        else {
            tracing::warn!("ignoring the unreadable state file {}", path.display());
            continue;
        };
        let marker = format!("\0--session-id\0{}\0", sf.id);
        let ours = sys::read_proc_bytes(format!("/proc/{}/cmdline", sf.pid), 4096)
            .is_ok_and(|c| c.windows(marker.len()).any(|w| w == marker.as_bytes()));
        if ours {
            let _ = sys::kill(sf.pid, libc::SIGKILL);
        }
        if let Ok(root) = crate::cgroup::cgroup2_root() {
            let cg = root.join(crate::cgroup::PARENT_DIR).join(&sf.id);
            if cg.is_dir() {
                let _ = std::fs::write(cg.join("cgroup.kill"), "1");
                for _ in 0..50 {
                    if std::fs::remove_dir(&cg).is_ok() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        }
        log.record(Record::session(
            &sf.id,
            sf.pid,
            "session-end",
            serde_json::json!({
                "exit_code": null,
                "killed_by": "daemon-restart",
                "why": "the daemon stopped while this session ran; its sessions never outlive it (fail closed)",
            }),
        ));
        let _ = std::fs::remove_file(&path);
    }
}
