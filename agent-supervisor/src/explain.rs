//! `policy explain`: the decision for one action, the rule that made it, and what enforces
//! it. Shared by the CLI (paths resolved on this host, as the supervisor would) and the
//! daemon's `Policy.Explain` (absolute paths taken as given: the daemon probes no file for a
//! caller).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use agent_supervisor_policy::{Access, DecidedBy, Policy, Request};
use anyhow::{bail, Context, Result};

/// The answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Explanation {
    pub action: String,
    pub decision: String,
    pub decided_by: String,
    pub reason: Option<String>,
    pub enforced_by: String,
    pub policy: String,
}

/// How the action's paths become the absolute paths the supervisor would decide.
pub enum Paths {
    /// Resolved on this host: programs looked up in `PATH`, symlinks followed, relative paths
    /// from the current directory.
    Host,
    /// Taken as given; they must be absolute.
    AsGiven,
}

impl Paths {
    fn program(&self, prog: &str) -> Option<PathBuf> {
        match self {
            Paths::Host => which(prog).and_then(|p| absolute(&p.to_string_lossy()).ok()),
            Paths::AsGiven => Some(PathBuf::from(prog)).filter(|p| p.is_absolute()),
        }
    }

    fn path(&self, p: &str) -> Result<PathBuf> {
        match self {
            Paths::Host => absolute(p),
            Paths::AsGiven => {
                let p = PathBuf::from(p);
                anyhow::ensure!(p.is_absolute(), "{}: give an absolute path", p.display());
                Ok(p)
            }
        }
    }
}

fn which(prog: &str) -> Option<PathBuf> {
    if prog.contains('/') {
        return Some(PathBuf::from(prog));
    }
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

fn absolute(p: &str) -> Result<PathBuf> {
    let p = Path::new(p);
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    // Resolve symlinks as the supervisor does; a file that doesn't exist yet: its parent.
    Ok(
        std::fs::canonicalize(&abs).unwrap_or_else(|_| match (abs.parent(), abs.file_name()) {
            (Some(d), Some(n)) => std::fs::canonicalize(d)
                .map(|d| d.join(n))
                .unwrap_or(abs.clone()),
            _ => abs.clone(),
        }),
    )
}

/// Explain `action` (`exec PROGRAM [ARGS...]`, `open PATH [--write] [--exec]`, `connect
/// HOST:PORT`, `resolve NAME`) under `policy`.
pub fn explain(policy: &Policy, action: &[String], paths: Paths) -> Result<Explanation> {
    let (verb, rest) = action
        .split_first()
        .context("missing action: exec, open, connect or resolve")?;
    let plan = policy.plan();
    let (verdict, what) = match verb.as_str() {
        "exec" => {
            let (prog, _) = rest.split_first().context("exec needs a program")?;
            let invoked = paths
                .program(prog)
                .with_context(|| format!("{prog}: not found in PATH"))?;
            // What execve would be given: the PATH entry itself (a shell does not resolve
            // symlinks: `cargo` runs as ~/.cargo/bin/cargo, a link to rustup).
            let raw = if Path::new(prog).is_absolute() {
                PathBuf::from(prog)
            } else {
                match paths {
                    Paths::Host => which(prog)
                        .filter(|p| p.is_absolute())
                        .unwrap_or_else(|| invoked.clone()),
                    Paths::AsGiven => invoked.clone(),
                }
            };
            let argv: Vec<String> = rest.to_vec();
            let v = policy.decide(&Request::Exec {
                path: &invoked,
                invoked: (raw != invoked).then_some(raw.as_path()),
                argv: &argv,
            });
            (
                v,
                format!("exec {} (program {})", argv.join(" "), invoked.display()),
            )
        }
        "open" => {
            let (path, flags) = rest.split_first().context("open needs a path")?;
            let mut access = Access::READ;
            for f in flags {
                match f.as_str() {
                    "--write" => access.write = true,
                    "--exec" => access.exec = true,
                    "--read" => access.read = true,
                    "--write-only" => {
                        access.read = false;
                        access.write = true;
                    }
                    other => bail!("unknown open flag {other}: expected --write, --exec, --read or --write-only"),
                }
            }
            let p = paths.path(path)?;
            (
                policy.decide(&Request::Open { path: &p, access }),
                format!("open {} {:?}", p.display(), access),
            )
        }
        "connect" => {
            let dest = rest.first().context("connect needs HOST:PORT")?;
            let (host, port) = dest.rsplit_once(':').context("connect needs HOST:PORT")?;
            let port: u16 = port
                .parse()
                .with_context(|| format!("bad port in {dest}"))?;
            let host_clean = host.trim_start_matches('[').trim_end_matches(']');
            let (ip, name) = match host_clean.parse::<std::net::IpAddr>() {
                Ok(ip) => (ip, None),
                Err(_) => (std::net::IpAddr::from([0, 0, 0, 0]), Some(host_clean)),
            };
            (
                policy.decide(&Request::Connect {
                    ip,
                    port,
                    host: name,
                }),
                format!("connect {dest}"),
            )
        }
        "resolve" => {
            let name = rest.first().context("resolve needs a host name")?;
            let named = policy.decide_name(name);
            let ports: Vec<String> = named
                .ports
                .iter()
                .map(|p| p.map_or("*".to_string(), |p| p.to_string()))
                .collect();
            let ports = if ports.is_empty() {
                String::new()
            } else {
                format!(" (answers open port {} in the kernel)", ports.join(", "))
            };
            (named.verdict, format!("resolve {name}{ports}"))
        }
        other => bail!("unknown action {other}: expected exec, open, connect or resolve"),
    };
    let (by, mechanism) = match &verdict.decided_by {
        DecidedBy::Rule(i) => (
            policy.describe_rule(*i),
            plan.mechanisms.get(*i).cloned().unwrap_or_default(),
        ),
        DecidedBy::Filesystem => (
            "the [filesystem] trees".to_string(),
            if verb == "open"
                && !rest
                    .iter()
                    .any(|f| f.starts_with("--write") || f.starts_with("--exec"))
                && crate::sandbox::view::reads_by_view(&plan)
            {
                "the mount view (only the read trees exist in the agent's root; kernel-enforced)"
                    .to_string()
            } else {
                "Landlock (kernel-enforced at use time)".to_string()
            },
        ),
        DecidedBy::Default => (
            format!("the policy default ({})", policy.default),
            match verb.as_str() {
                "exec" => "seccomp user notification on execve/execveat + exec guard".to_string(),
                "connect" => {
                    "seccomp user notification on connect/sendto/sendmsg (the supervisor connects)"
                        .to_string()
                }
                "resolve" => {
                    "the session's DNS resolver (refused names never leave the machine)".to_string()
                }
                _ => "Landlock".to_string(),
            },
        ),
    };
    // What else stops a write outside the write trees: the view (chmod, chown, utimes and
    // xattrs have no Landlock right).
    let mechanism = match (verb.as_str(), rest.iter().any(|f| f.starts_with("--write"))) {
        ("open", true) => match &plan.writable_view {
            None => format!(
                "{mechanism}; outside the write trees: {}",
                agent_supervisor_policy::READ_ONLY_VIEW
            ),
            Some(why) => format!(
                "{mechanism}; outside the write trees the view stays writable ({why}): \
                 metadata changes there are refused by file permissions only"
            ),
        },
        _ => mechanism,
    };
    Ok(Explanation {
        action: what,
        decision: verdict.decision.to_string(),
        decided_by: by,
        reason: verdict.reason,
        enforced_by: mechanism,
        policy: policy.source.clone(),
    })
}
