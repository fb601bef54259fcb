//! Who is calling, and what they may do.
//!
//! The caller's uid, gid and pid come from the unix socket (SO_PEERCRED, set by the kernel at
//! connect time); a bearer token (`authorization: Bearer TOKEN`) adds the roles configured for
//! it; its SHA-256 is compared in constant time. A caller running inside any session (a
//! descendant of a session's supervisor) may do nothing; a session's own uid, and any token
//! found in its environment, never answer that session's approvals.
#![forbid(unsafe_code)]

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use super::config::{Config, Principals};
use super::state::{SessionEntry, Tables};

#[derive(Debug, Clone)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    pub groups: Vec<u32>,
    /// The configured token it presented.
    pub token: Option<String>,
}

impl Caller {
    /// For the audit log.
    pub fn describe(&self) -> String {
        if self.uid == NO_UID {
            return format!("tcp token {}", self.token.as_deref().unwrap_or("?"));
        }
        match &self.token {
            Some(t) => format!("uid {} token {t}", self.uid),
            None => format!("uid {}", self.uid),
        }
    }
}

/// The uid of callers over TCP: none ((uid_t)-1 is no user's). Their roles come from their
/// token alone; they never match a session's uid nor uid 0.
pub const NO_UID: u32 = u32::MAX;

/// Identify the caller of `req`.
pub fn caller<T>(cfg: &Config, req: &Request<T>) -> Result<Caller, Status> {
    let token = bearer(cfg, req)?;
    let Some(info) = req
        .extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
    else {
        // TCP (always TLS): the token is the identity.
        if token.is_none() {
            return Err(Status::unauthenticated(
                "over TCP a bearer token is required (authorization: Bearer TOKEN)",
            ));
        }
        return Ok(Caller {
            uid: NO_UID,
            gid: NO_UID,
            pid: None,
            groups: Vec::new(),
            token,
        });
    };
    let cred = info
        .peer_cred
        .ok_or_else(|| Status::unauthenticated("the caller's credentials are unknown"))?;
    let pid = cred.pid();
    Ok(Caller {
        uid: cred.uid(),
        gid: cred.gid(),
        pid,
        groups: pid.map(supplementary_groups).unwrap_or_default(),
        token,
    })
}

/// The configured token the request presents, if any; a token that matches none is refused.
fn bearer<T>(cfg: &Config, req: &Request<T>) -> Result<Option<String>, Status> {
    Ok(match req.metadata().get("authorization") {
        None => None,
        Some(v) => {
            let v = v
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    Status::unauthenticated("the authorization header must be `Bearer TOKEN`")
                })?;
            Some(token_name(cfg, v).ok_or_else(|| Status::unauthenticated("unknown token"))?)
        }
    })
}

/// The configured token whose hash matches `value` (every one compared, in constant time).
pub fn token_name(cfg: &Config, value: &str) -> Option<String> {
    let digest: [u8; 32] = Sha256::digest(value.as_bytes()).into();
    let mut found = None;
    for t in &cfg.tokens {
        let Some(want) = hex32(&t.sha256) else {
            continue;
        };
        if bool::from(want.ct_eq(&digest)) {
            found = Some(t.name.clone());
        }
    }
    found
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn supplementary_groups(pid: i32) -> Vec<u32> {
    crate::sys::read_proc(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Groups:").map(|g| {
                    g.split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect()
                })
            })
        })
        .unwrap_or_default()
}

fn group_gid(name: &str) -> Option<u32> {
    name.parse().ok().or_else(|| {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    })
}

fn user_uid(name: &str) -> Option<u32> {
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

fn matches(p: &Principals, c: &Caller) -> bool {
    if c.uid == NO_UID {
        return c.token.as_ref().is_some_and(|t| p.tokens.contains(t));
    }
    p.uids.contains(&c.uid)
        || p.users.iter().any(|u| user_uid(u) == Some(c.uid))
        || p.groups
            .iter()
            .filter_map(|g| group_gid(g))
            .any(|g| g == c.gid || c.groups.contains(&g))
        || c.token.as_ref().is_some_and(|t| p.tokens.contains(t))
}

/// Refuse callers running inside a session: the pid's ancestors include a session's
/// supervisor.
pub fn refuse_agents(t: &Tables, c: &Caller) -> Result<(), Status> {
    let Some(mut pid) = c.pid else {
        return Ok(());
    };
    for _ in 0..128 {
        if pid <= 1 {
            return Ok(());
        }
        if t.sessions.values().any(|s| {
            s.info.supervisor_pid == pid
                && (s.info.state == "running" || s.info.state.starts_with("killing"))
        }) {
            return Err(Status::permission_denied(
                "callers inside a supervised session may not use the API",
            ));
        }
        let Some(ppid) = crate::sys::read_proc(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PPid:").and_then(|p| p.trim().parse().ok()))
            })
        else {
            return Ok(());
        };
        pid = ppid;
    }
    Ok(())
}

fn root(c: &Caller) -> bool {
    c.uid == 0
}

pub fn can_view_all(cfg: &Config, c: &Caller) -> bool {
    root(c) || matches(&cfg.access.view, c) || matches(&cfg.access.approve, c)
}

pub fn can_start(cfg: &Config, c: &Caller) -> bool {
    root(c) || matches(&cfg.access.start, c)
}

pub fn can_see(cfg: &Config, c: &Caller, s: &SessionEntry) -> bool {
    can_view_all(cfg, c) || s.info.uid == c.uid
}

pub fn can_kill(cfg: &Config, c: &Caller, s: &SessionEntry) -> bool {
    root(c) || matches(&cfg.access.kill, c) || (s.info.uid == c.uid && can_start(cfg, c))
}

/// May `c` answer approvals of `s`?
pub fn check_approver(cfg: &Config, c: &Caller, s: &SessionEntry) -> Result<(), Status> {
    if !(root(c) || matches(&cfg.access.approve, c)) {
        return Err(Status::permission_denied(format!(
            "{} may not answer approvals (see [access.approve] in the daemon's config)",
            c.describe()
        )));
    }
    if c.uid == s.info.uid {
        return Err(Status::permission_denied(format!(
            "uid {} is the session's own: a session's agent never approves its own actions; answer from another user",
            c.uid
        )));
    }
    if c.token
        .as_ref()
        .is_some_and(|t| s.tainted_tokens.contains(t))
    {
        return Err(Status::permission_denied(
            "this token is in the session's environment: it cannot approve that session's actions",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        let sha: String = Sha256::digest(b"t0ken")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Config::parse(
            std::path::Path::new("c.toml"),
            &format!(
                "[access.approve]\nuids = [1000]\ngroups = [\"4242\"]\ntokens = [\"ci\"]\n\
                 [[token]]\nname = \"ci\"\nsha256 = \"{sha}\"\n"
            ),
        )
        .unwrap()
    }

    fn caller(uid: u32, gid: u32, groups: Vec<u32>, token: Option<&str>) -> Caller {
        Caller {
            uid,
            gid,
            pid: None,
            groups,
            token: token.map(str::to_string),
        }
    }

    #[test]
    fn tokens_uids_groups_and_tcp_callers() {
        let c = cfg();
        assert_eq!(token_name(&c, "t0ken").as_deref(), Some("ci"));
        assert_eq!(token_name(&c, "t0ke"), None);
        assert_eq!(token_name(&c, ""), None);
        let approve = &c.access.approve;
        assert!(matches(approve, &caller(1000, 1000, vec![], None)));
        assert!(!matches(approve, &caller(1001, 1001, vec![], None)));
        assert!(matches(approve, &caller(1001, 4242, vec![], None)));
        assert!(matches(approve, &caller(1001, 1001, vec![7, 4242], None)));
        assert!(matches(approve, &caller(1001, 1001, vec![], Some("ci"))));
        // Over TCP only the token counts, never a uid or group.
        assert!(!matches(approve, &caller(NO_UID, NO_UID, vec![4242], None)));
        assert!(matches(
            approve,
            &caller(NO_UID, NO_UID, vec![], Some("ci"))
        ));
        assert!(!can_start(&c, &caller(NO_UID, NO_UID, vec![], Some("ci"))));
        assert!(can_start(&c, &caller(0, 0, vec![], None)));
    }
}
