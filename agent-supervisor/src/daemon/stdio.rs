//! The stdio side channel: gRPC can't carry file descriptors, so `agent-supervisor run` hands
//! its stdin, stdout and stderr to the daemon over a second unix socket (`stdio.sock` next to
//! the API socket) with `SCM_RIGHTS`, and gets a one-time token back; `StartSession` names the
//! token. The token is bound to the uid that sent the descriptors (SO_PEERCRED), expires after
//! a minute, and is used once. The connection stays open for the session: the daemon writes
//! `exit N` on it when the agent ends, and kills the session if the client goes away first.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sys;

/// How long a token is valid.
const TOKEN_TTL: Duration = Duration::from_secs(60);
/// What the client sends with its descriptors.
const HELLO: &[u8] = b"stdio v1\n";

/// The side channel's socket for an API socket.
pub fn socket_for(api: &Path) -> PathBuf {
    api.with_file_name("stdio.sock")
}

/// Descriptors handed over, waiting for their `StartSession`.
pub struct Grant {
    pub uid: u32,
    /// stdin, stdout, stderr.
    pub fds: Vec<OwnedFd>,
    /// The client's connection (for `exit N`, and to notice it leave).
    pub conn: UnixStream,
    created: Instant,
}

#[derive(Default)]
pub struct Grants(Mutex<HashMap<String, Grant>>);

impl Grants {
    /// Take the grant for `token` if it belongs to `uid` and is fresh.
    pub fn take(&self, token: &str, uid: u32) -> Result<Grant, &'static str> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match g.get(token) {
            None => Err("unknown, used or expired stdio token"),
            Some(x) if x.uid != uid => Err("this stdio token belongs to another uid"),
            Some(x) if x.created.elapsed() > TOKEN_TTL => {
                g.remove(token);
                Err("unknown, used or expired stdio token")
            }
            Some(_) => Ok(g.remove(token).expect("present")),
        }
    }

    fn expire(&self) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.retain(|_, x| x.created.elapsed() <= TOKEN_TTL);
    }

    fn insert(&self, token: String, grant: Grant) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.retain(|_, x| x.created.elapsed() <= TOKEN_TTL);
        g.insert(token, grant);
    }
}

/// Bind the side channel (same mode and group as the API socket) and accept in a thread.
pub fn serve(listener: UnixListener, grants: Arc<Grants>) -> std::io::Result<()> {
    // Grants nobody used (the client failed or left) hold the client's descriptors: drop them
    // once expired.
    {
        let grants = Arc::clone(&grants);
        std::thread::Builder::new()
            .name("stdio-expiry".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(5));
                grants.expire();
            })?;
    }
    std::thread::Builder::new()
        .name("stdio-accept".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let grants = Arc::clone(&grants);
                let _ = std::thread::Builder::new()
                    .name("stdio-conn".into())
                    .spawn(move || {
                        if let Err(e) = handshake(conn, &grants) {
                            tracing::info!("stdio side channel: {e}");
                        }
                    });
            }
        })?;
    Ok(())
}

fn handshake(mut conn: UnixStream, grants: &Grants) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let (uid, _, _) = sys::peer_cred(conn.as_fd())?;
    let mut buf = [0u8; 64];
    let (n, fds) = sys::recv_fds(conn.as_fd(), &mut buf, 3)?;
    if &buf[..n] != HELLO || fds.len() != 3 {
        let _ = conn.write_all(b"error expected `stdio v1` and 3 descriptors\n");
        return Err(std::io::Error::other("malformed stdio hand-over"));
    }
    conn.set_read_timeout(None)?;
    let token = super::sessions::new_session_id()? + &super::sessions::new_session_id()?;
    let mut reply = conn.try_clone()?;
    // Usable before the client can know it: its StartSession may come at once.
    grants.insert(
        token.clone(),
        Grant {
            uid,
            fds,
            conn,
            created: Instant::now(),
        },
    );
    if let Err(e) = reply.write_all(format!("token {token}\n").as_bytes()) {
        let _ = grants.take(&token, uid);
        return Err(e);
    }
    Ok(())
}

/// Client side: hand our stdin/stdout/stderr to the daemon; returns the connection and the
/// token.
pub fn hand_over(api_socket: &Path) -> anyhow::Result<(UnixStream, String)> {
    use anyhow::Context;
    let path = socket_for(api_socket);
    let conn = UnixStream::connect(&path)
        .with_context(|| format!("connecting to the daemon's stdio socket {}", path.display()))?;
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    sys::send_fds(
        conn.as_fd(),
        HELLO,
        &[stdin.as_fd(), stdout.as_fd(), stderr.as_fd()],
    )
    .context("passing stdin/stdout/stderr to the daemon")?;
    let mut line = String::new();
    BufReader::new(&conn)
        .read_line(&mut line)
        .context("reading the daemon's stdio token")?;
    let token = line
        .trim_end()
        .strip_prefix("token ")
        .with_context(|| format!("the daemon refused our stdio: {}", line.trim_end()))?
        .to_string();
    Ok((conn, token))
}

/// Client side: wait for `exit N`; None if the daemon closed the connection without one.
pub fn wait_exit(conn: &UnixStream) -> Option<i32> {
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {
                if let Some(code) = line.trim_end().strip_prefix("exit ") {
                    return code.parse().ok();
                }
            }
        }
    }
}
