//! Trust-on-first-use for policies found by lookup.
//!
//! `./.agent-supervisor/policy.toml` lives in the workspace, and the workspace is where the
//! agent writes: a policy it planted there (in the workspace or any directory under it) would
//! govern the next session started in that directory. So a policy found by lookup in the
//! current directory or the user's config is used only if the user trusted that exact content
//! (`agent-supervisor policy trust FILE`, or `init`, which writes it); a new or changed one is
//! refused with a message saying what to do. `--policy FILE` is the user's explicit choice and
//! needs no trust. The store (sha256 and canonical path per line) lives in the state directory,
//! which is read-only inside the sandbox.
#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The trust store: `/var/lib/agent-supervisor/trusted-policies` for root, else
/// `$XDG_STATE_HOME/agent-supervisor/trusted-policies` (default `~/.local/state/...`).
pub fn store_path(euid: u32) -> PathBuf {
    state_dir(euid).join("trusted-policies")
}

/// The supervisor's state directory (`AGENT_SUPERVISOR_STATE_DIR` overrides it, e.g. for tests).
pub fn state_dir(euid: u32) -> PathBuf {
    if let Some(dir) = std::env::var_os("AGENT_SUPERVISOR_STATE_DIR").filter(|s| !s.is_empty()) {
        return PathBuf::from(dir);
    }
    if euid == 0 {
        return PathBuf::from("/var/lib/agent-supervisor");
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/"))
                .join(".local/state")
        });
    state.join("agent-supervisor")
}

fn entry(path: &Path) -> io::Result<String> {
    let real = std::fs::canonicalize(path)?;
    let digest = Sha256::digest(std::fs::read(&real)?);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{hex}  {}", real.display()))
}

/// Was this exact content at this path trusted?
pub fn is_trusted(store: &Path, path: &Path) -> io::Result<bool> {
    let want = entry(path)?;
    match std::fs::read_to_string(store) {
        Ok(s) => Ok(s.lines().any(|l| l == want)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Trust the current content of `path` (replacing what was trusted for that path before).
pub fn trust(store: &Path, path: &Path) -> io::Result<()> {
    let line = entry(path)?;
    let real = line
        .split_once("  ")
        .map(|(_, p)| p.to_string())
        .unwrap_or_default();
    let old = std::fs::read_to_string(store).unwrap_or_default();
    let mut kept: Vec<&str> = old
        .lines()
        .filter(|l| l.split_once("  ").is_none_or(|(_, p)| p != real))
        .collect();
    kept.push(&line);
    if let Some(dir) = store.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Write a new file and rename it over the old one: the store is never half-written. (Two
    // concurrent updates: the last one wins, and a lost line only means "not trusted".)
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = store.with_extension(format!("tmp.{}.{nanos}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    for l in kept {
        writeln!(f, "{l}")?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_follows_the_content() {
        let dir = std::env::temp_dir().join(format!("as-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = dir.join("store");
        let p = dir.join("policy.toml");
        std::fs::write(&p, "version = 1\n").unwrap();
        assert!(!is_trusted(&store, &p).unwrap());
        trust(&store, &p).unwrap();
        assert!(is_trusted(&store, &p).unwrap());
        std::fs::write(&p, "version = 1\nextends = \"unrestricted\"\n").unwrap();
        assert!(
            !is_trusted(&store, &p).unwrap(),
            "a changed policy is not trusted"
        );
        trust(&store, &p).unwrap();
        assert!(is_trusted(&store, &p).unwrap());
        assert_eq!(
            std::fs::read_to_string(&store).unwrap().lines().count(),
            1,
            "one line per path"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
