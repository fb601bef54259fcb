//! The first-ever load of the eBPF backstops, for `cargo xtask bench`.
//!
//! Sessions join one set of programs pinned under bpffs per boot (and per build of the
//! supervisor); the first root session makes it. The start-up figures are measured with the
//! set already there; this measures what that first session pays: the set of this build is
//! removed, then a session is timed while it makes the set again (`-vv` says how long the
//! making took). Removing the set is safe only when no session uses it, so nothing is
//! removed (and nothing measured) while a session's cgroup holds a process.
//!
//! The set is this build's own (its id is the one the supervisor logs), made by the
//! supervisor; the next session would make it anyway after a reboot.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::bench::Runner;

/// Where the supervisor pins its sets (see agent-supervisor/src/ebpf/pinned.rs).
const SETS: &str = "/sys/fs/bpf/agent-supervisor";
/// Sessions timed while they make the set.
const RUNS: usize = 3;

/// What the first session pays.
pub struct FirstLoad {
    /// The whole `run -- /bin/true`, median, ms.
    pub session_ms: f64,
    /// Of which making the set (load, pin, attach), median, ms.
    pub making_ms: f64,
}

/// Measure the first-ever load with the supervised runner `r`. `Ok(None)` with a printed
/// reason when it can't be measured here.
pub(crate) fn measure(r: &Runner, ws: &Path) -> Result<Option<FirstLoad>> {
    let verbose = r.verbose();
    let run = |ws: &Path| -> Result<(f64, String)> {
        let mut c = verbose.command(&["/bin/true"], ws);
        let start = Instant::now();
        let out = c
            .output()
            .context("running the supervisor for the first load")?;
        let took = start.elapsed().as_secs_f64() * 1e3;
        if !out.status.success() {
            bail!(
                "the supervised /bin/true failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok((took, String::from_utf8_lossy(&out.stderr).into_owned()))
    };
    let (_, log) = run(ws)?;
    let Some(id) = set_id(&log) else {
        println!("first-ever load: not measured (the session used no pinned eBPF set here)");
        return Ok(None);
    };
    let mut sessions = Vec::new();
    let mut making = Vec::new();
    for _ in 0..RUNS {
        let live = live_sessions();
        if live > 0 {
            println!(
                "first-ever load: not measured ({live} sessions are running and use the pinned set)"
            );
            return Ok(None);
        }
        let dir = PathBuf::from(SETS).join(&id);
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the pinned set {}", dir.display()))?;
        let (took, log) = run(ws)?;
        let Some(made) = making_ms(&log, &id) else {
            bail!("the session after removing the set {id} did not make it again:\n{log}");
        };
        sessions.push(took);
        making.push(made);
    }
    Ok(Some(FirstLoad {
        session_ms: crate::bench::median(sessions),
        making_ms: crate::bench::median(making),
    }))
}

/// The set id in `ebpf: opened the pinned set ID in ...` or `ebpf: loaded and pinned set ID
/// in ...`.
fn set_id(log: &str) -> Option<String> {
    log.lines().find_map(|l| {
        let rest = l
            .split("ebpf: opened the pinned set ")
            .nth(1)
            .or_else(|| l.split("ebpf: loaded and pinned set ").nth(1))?;
        let id = rest.split_whitespace().next()?;
        (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })
}

/// X in `ebpf: loaded and pinned set ID in X ms (first use)`.
fn making_ms(log: &str, id: &str) -> Option<f64> {
    let marker = format!("ebpf: loaded and pinned set {id} in ");
    log.lines().find_map(|l| {
        l.split(marker.as_str())
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// Session cgroups (`<cgroup2>/agent-supervisor/*`) that hold a process.
fn live_sessions() -> usize {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && f[2] == "cgroup2").then(|| Path::new(f[1]).join("agent-supervisor"))
        })
        .filter_map(|parent| std::fs::read_dir(parent).ok())
        .flat_map(|rd| rd.flatten())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("cgroup.procs"))
                .is_ok_and(|p| !p.trim().is_empty())
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_set_id_and_the_making_time_from_the_log() {
        let opened =
            "\x1b[2m2026\x1b[0m DEBUG ebpf: opened the pinned set 0baf8f77121b284a in 0.13 ms";
        assert_eq!(set_id(opened).as_deref(), Some("0baf8f77121b284a"));
        let made = "DEBUG ebpf: loaded and pinned set 0baf8f77121b284a in 412.5 ms (first use)";
        assert_eq!(set_id(made).as_deref(), Some("0baf8f77121b284a"));
        assert_eq!(making_ms(made, "0baf8f77121b284a"), Some(412.5));
        assert_eq!(making_ms(opened, "0baf8f77121b284a"), None);
        assert_eq!(
            set_id("DEBUG ebpf: opened the pinned set ../../etc in 1 ms"),
            None
        );
    }
}
