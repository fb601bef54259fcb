//! `[limits]`: resource limits, the timeout and how a session ends, checked from outside the
//! sandbox (the host's process table, cgroupfs, files on disk, the audit log), never from
//! what the agent says.
//!
//! Every workload is bounded even if the limit under test did not hold (a "fork bomb" of at
//! most ~2,000 processes, a "memory hog" of at most 512 MiB), so a regression fails the test
//! without taking the host down. Limits are generous and workloads small, for slow guests.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn unique() -> String {
    format!(
        "{}{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    )
}

/// Is `controller` usable for a session here (cgroup v2 root lists it, or a v1 hierarchy)?
fn controller_available(controller: &str) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 4
            && match f[2] {
                "cgroup2" => std::fs::read_to_string(format!("{}/cgroup.controllers", f[1]))
                    .is_ok_and(|c| c.split_whitespace().any(|c| c == controller)),
                "cgroup" => f[3].split(',').any(|o| o == controller),
                _ => false,
            }
    })
}

fn session_end(ws: &Workspace) -> serde_json::Value {
    ws.audit()
        .into_iter()
        .find(|r| r["kind"] == "session-end")
        .unwrap_or_else(|| panic!("no session-end record in {:?}", ws.audit()))
}

fn session_id(ws: &Workspace) -> String {
    ws.audit()
        .first()
        .and_then(|r| r["session"].as_str().map(String::from))
        .expect("a session id in the audit")
}

/// The /proc entries of the processes anywhere on the host whose command line contains
/// `marker`, the supervisor (and the sandbox's init, a fork of it) aside: their command line
/// names the agent's too.
fn procs_with_marker(marker: &str) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.path())
        .filter(|p| {
            std::fs::read(p.join("cmdline")).is_ok_and(|c| {
                let argv0 = c.split(|&b| b == 0).next().unwrap_or_default();
                !argv0.ends_with(b"agent-supervisor")
                    && String::from_utf8_lossy(&c).contains(marker)
            })
        })
        .collect()
}

fn count_with_marker(marker: &str) -> usize {
    procs_with_marker(marker).len()
}

/// A host-side probe that runs while a session does: the most processes seen with `marker`,
/// and the longest a 10 ms sleep of this (host) thread took: the host stays responsive.
struct HostProbe {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(usize, Duration)>,
}

impl HostProbe {
    fn start(marker: String) -> HostProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                let (mut most, mut worst) = (0, Duration::ZERO);
                while !stop.load(Ordering::SeqCst) {
                    most = most.max(count_with_marker(&marker));
                    let t = Instant::now();
                    std::thread::sleep(Duration::from_millis(10));
                    worst = worst.max(t.elapsed());
                }
                (most, worst)
            }
        });
        HostProbe { stop, handle }
    }

    fn finish(self) -> (usize, Duration) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("probe thread")
    }
}

const UNRESTRICTED: &str = "version = 1\nextends = \"unrestricted\"\n";

/// A fork bomb (bounded: a binary tree of depth 9, ~2,000 processes, if nothing stopped it)
/// under `processes = 64`: it never has more than 64 processes, the host stays responsive, the
/// session is killed and reported (exit 123, `ended_by: process-limit`), nothing is left
/// running, the session's cgroups are gone.
#[test]
fn a_fork_bomb_is_contained_killed_and_reported() {
    skip_unless!(is_root(), "needs root (cgroups)");
    skip_unless!(
        controller_available("pids"),
        "no pids cgroup controller (v2 root or v1 hierarchy) on this host"
    );
    let ws = Workspace::new("forkbomb");
    let marker = format!("bomb{}", unique());
    let policy = ws.policy(&format!("{UNRESTRICTED}[limits]\nprocesses = 64\n"));
    ws.write(
        &format!("{marker}.sh"),
        "sleep 1\nf() { if [ \"$1\" -gt 0 ]; then f $(($1 - 1)) & f $(($1 - 1)) & fi; sleep 30; }\nf 9\n",
    );
    let probe = HostProbe::start(marker.clone());
    let start = Instant::now();
    let r = ws.run(
        &["--policy", policy.to_str().unwrap()],
        &["/bin/sh", &format!("{marker}.sh")],
        Duration::from_secs(60),
    );
    let took = start.elapsed();
    let (most, worst_tick) = probe.finish();
    assert_eq!(r.code, Some(123), "{r:?}");
    assert!(r.stderr.contains("process limit (64"), "{}", r.stderr);
    assert!(
        took < Duration::from_secs(30),
        "the bomb ran {took:?}: not stopped by the limit"
    );
    assert!(
        most <= 64,
        "{most} bomb processes at once, over the limit of 64"
    );
    assert!(
        most > 0,
        "the probe never saw the bomb (the test measured nothing)"
    );
    assert!(
        worst_tick < Duration::from_secs(2),
        "the host stalled for {worst_tick:?} during the bomb"
    );
    let end = session_end(&ws);
    assert_eq!(end["action"]["ended_by"], "process-limit", "{end}");
    assert_eq!(end["action"]["limit"], "64", "{end}");
    assert_eq!(end["action"]["exit_code"], 123, "{end}");
    assert!(
        wait_until(Duration::from_secs(5), || count_with_marker(&marker) == 0),
        "bomb processes outlived the session"
    );
    let sid = session_id(&ws);
    for dir in common::session_cgroup_dirs(&sid) {
        assert!(!dir.exists(), "{} is still there", dir.display());
    }
}

const HOG: &str = r#"
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(void) {
    /* 1 MiB at a time, touched, up to 512 MiB; then wait. */
    sleep(1);
    for (int i = 0; i < 512; i++) {
        char *p = malloc(1 << 20);
        if (!p) return 3;
        memset(p, i, 1 << 20);
        usleep(1000);
    }
    sleep(30);
    return 0;
}
"#;

/// Resident memory (VmRSS, bytes) of the processes with `marker` in their command line.
fn rss_with_marker(marker: &str) -> u64 {
    procs_with_marker(marker)
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(p.join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum::<u64>()
        * 1024
}

/// A memory hog under `memory = "64M"`: its resident memory never goes far past 64 MiB (seen
/// from the host), it is killed, the session reported (exit 122, `ended_by: memory-limit`),
/// nothing left, cgroups gone.
#[test]
fn a_memory_hog_is_contained_killed_and_reported() {
    skip_unless!(is_root(), "needs root (cgroups)");
    skip_unless!(
        controller_available("memory"),
        "no memory cgroup controller (v2 root or v1 hierarchy) on this host"
    );
    let ws = Workspace::new("memhog");
    let marker = format!("hog{}", unique());
    let Some(hog) = compile_c(&ws.dir, &marker, HOG, &[]) else {
        skip_unless!(false, "no C compiler (cc) to build the memory hog");
        return;
    };
    let policy = ws.policy(&format!("{UNRESTRICTED}[limits]\nmemory = \"64M\"\n"));
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let (peak, stop, marker) = (Arc::clone(&peak), Arc::clone(&stop), marker.clone());
        move || {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(rss_with_marker(&marker), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    let r = ws.run(
        &["--policy", policy.to_str().unwrap()],
        &[hog.to_str().unwrap()],
        Duration::from_secs(60),
    );
    stop.store(true, Ordering::SeqCst);
    sampler.join().expect("sampler");
    let peak = peak.load(Ordering::SeqCst);
    assert_eq!(r.code, Some(122), "{r:?}");
    assert!(r.stderr.contains("memory limit (64M)"), "{}", r.stderr);
    assert!(
        peak > 0,
        "the sampler never saw the hog (the test measured nothing)"
    );
    assert!(
        peak <= 72 << 20,
        "the hog reached {} MiB resident, over the 64 MiB limit",
        peak >> 20
    );
    let end = session_end(&ws);
    assert_eq!(end["action"]["ended_by"], "memory-limit", "{end}");
    assert_eq!(end["action"]["limit"], "64M", "{end}");
    assert!(
        wait_until(Duration::from_secs(5), || count_with_marker(&marker) == 0),
        "the hog outlived the session"
    );
    for dir in common::session_cgroup_dirs(&session_id(&ws)) {
        assert!(!dir.exists(), "{} is still there", dir.display());
    }
}

/// `--timeout 2s` on an agent that ignores SIGTERM and left a daemonised grandchild (its own
/// session, reparented): both are gone (checked in the host's process table by a marker),
/// after the grace period, exit code 124, `ended_by: timeout` in the audit.
#[test]
fn the_timeout_kills_the_whole_tree_with_a_daemonised_grandchild() {
    skip_unless!(is_root(), "the sandbox needs root here");
    let ws = Workspace::new("timeout");
    let marker = format!("1000.{}", unique());
    let script = format!(
        "trap '' TERM; \
         setsid sh -c 'echo $$ > daemon.pid; exec sleep {marker}' < /dev/null > /dev/null 2>&1 & \
         while [ ! -s daemon.pid ]; do sleep 0.05; done; \
         while ! grep -q {marker} /proc/$(cat daemon.pid)/cmdline 2>/dev/null; do sleep 0.05; done; \
         echo up > up.txt; \
         while :; do sleep 1; done"
    );
    let start = Instant::now();
    let r = ws.run(
        &["--policy", "preset:unrestricted", "--timeout", "2s"],
        &["/bin/sh", "-c", &script],
        Duration::from_secs(40),
    );
    let took = start.elapsed();
    assert_eq!(r.code, Some(124), "{r:?}");
    assert_eq!(
        ws.read("up.txt").as_deref(),
        Some("up\n"),
        "the grandchild never started"
    );
    assert!(r.stderr.contains("timeout (2s)"), "{}", r.stderr);
    assert!(
        took >= Duration::from_secs(2) + Duration::from_secs(4),
        "ended after {took:?}: before the timeout plus the grace for an agent ignoring SIGTERM"
    );
    assert!(took < Duration::from_secs(30), "ended after {took:?}");
    assert!(
        wait_until(Duration::from_secs(5), || !process_alive_with_marker(
            &marker
        )),
        "the daemonised grandchild outlived the timeout"
    );
    let end = session_end(&ws);
    assert_eq!(end["action"]["ended_by"], "timeout", "{end}");
    assert_eq!(end["action"]["limit"], "2s", "{end}");
    assert_eq!(end["action"]["exit_code"], 124, "{end}");
}

/// An agent that exits before its timeout keeps its own exit code (nothing is reported).
#[test]
fn a_session_within_its_timeout_keeps_the_agents_exit_code() {
    skip_unless!(is_root(), "the sandbox needs root here");
    let ws = Workspace::new("within");
    let policy = ws.policy(&format!("{UNRESTRICTED}[limits]\ntimeout = \"30s\"\n"));
    let r = ws.run(
        &["--policy", policy.to_str().unwrap()],
        &["/bin/sh", "-c", "exit 7"],
        Duration::from_secs(20),
    );
    assert_eq!(r.code, Some(7), "{r:?}");
    let end = session_end(&ws);
    assert_eq!(end["action"]["ended_by"], "exit", "{end}");
    assert_eq!(end["action"]["exit_code"], 7, "{end}");
}

/// `file_size = "1M"`: a 5 MB write leaves a file of at most 1 MiB on disk, and the agent gets
/// EFBIG (it is not killed by SIGXFSZ: the script goes on and records the failure).
#[test]
fn file_size_caps_the_files_the_agent_writes() {
    skip_unless!(is_root(), "the sandbox needs root here");
    let ws = Workspace::new("fsize");
    let policy = ws.policy(&format!("{UNRESTRICTED}[limits]\nfile_size = \"1M\"\n"));
    let r = ws.run(
        &["--policy", policy.to_str().unwrap()],
        &[
            "/bin/sh",
            "-c",
            "head -c 5000000 /dev/zero > big.bin; echo $? > rc.txt",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    let size = std::fs::metadata(ws.path("big.bin"))
        .expect("big.bin")
        .len();
    assert!(
        size <= 1 << 20,
        "big.bin is {size} bytes, over the 1 MiB limit"
    );
    assert!(size > 0, "nothing was written: the test proves nothing");
    assert_ne!(
        ws.read("rc.txt").as_deref(),
        Some("0\n"),
        "the write did not fail"
    );
    assert!(r.stderr.contains("File too large"), "{}", r.stderr);
}

/// Run the supervisor as `nobody` (no cgroups can be created): with an explicit limit it
/// refuses to start (exit 125, says what to do, the agent never ran); with the defaults only
/// it runs with one warning line; `--best-effort-limits` runs with the explicit limit reported.
#[test]
fn explicit_limits_that_cannot_be_enforced_are_refused() {
    skip_unless!(is_root(), "needs root to drop to nobody");
    let ws = Workspace::new("unenforced");
    let base = ws.dir.parent().unwrap().to_path_buf();
    for dir in [&base, &ws.dir] {
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod");
    }
    let policy = ws.policy(&format!("{UNRESTRICTED}[limits]\nmemory = \"1G\"\n"));
    let as_nobody = |extra: &[&str], out: &str| {
        let mut c = common::supervisor_command();
        c.arg("run")
            .args(["--standalone", "--headless", "--audit"])
            .arg(&ws.audit)
            .args(extra)
            .args(["--", "/bin/sh", "-c"])
            .arg(format!("echo ran > {out}"))
            .current_dir(&ws.dir)
            .env_remove("GITHUB_ACTIONS")
            .env("HOME", &base)
            .stdin(std::process::Stdio::null());
        std::os::unix::process::CommandExt::uid(&mut c, 65534);
        std::os::unix::process::CommandExt::gid(&mut c, 65534);
        run_with_timeout(c, Duration::from_secs(20))
    };
    // Refused before any sandbox exists.
    let r = as_nobody(&["--policy", policy.to_str().unwrap()], "refused.txt");
    assert_eq!(r.code, Some(125), "{r:?}");
    assert!(
        r.stderr.contains("[limits] memory = 1G")
            && r.stderr.contains("policy.toml:4:10")
            && r.stderr.contains("--best-effort-limits"),
        "{}",
        r.stderr
    );
    assert!(ws.read("refused.txt").is_none(), "the agent ran");

    let r = as_nobody(&["--policy", "preset:unrestricted"], "defaults.txt");
    skip_unless!(
        r.code != Some(125),
        format!(
            "the sandbox cannot start as nobody here (unprivileged user namespaces off?): {}",
            r.stderr
        )
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(ws.read("defaults.txt").as_deref(), Some("ran\n"));
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("default limits"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(lines[0].contains("warning:") && lines[0].contains("processes = 4096"));

    let r = as_nobody(
        &[
            "--policy",
            "preset:unrestricted",
            "--processes",
            "100",
            "--best-effort-limits",
        ],
        "best.txt",
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(ws.read("best.txt").as_deref(), Some("ran\n"));
    assert!(
        r.stderr
            .contains("[limits] processes = 100 (set at --processes) is not enforced"),
        "{}",
        r.stderr
    );
}

/// The session's cgroups are made while the policy is read: a session refused for a broken
/// policy (exit 125) leaves none of them behind, in any hierarchy.
#[test]
fn a_session_refused_for_a_broken_policy_leaves_no_cgroup() {
    skip_unless!(is_root(), "needs root (cgroups)");
    let ws = Workspace::new("refused-cgroups");
    let policy = ws.policy("version = 1\n[[rule]]\ndecision = \"alow\"\ncommand = \"ls\"\n");
    for round in 0..5 {
        let sid = format!("{:012x}", (std::process::id() as u64) << 16 | round);
        let mut c = common::supervisor_command();
        c.args(["run", "-q", "--headless", "--session-id", &sid, "--policy"])
            .arg(&policy)
            .args(["--audit"])
            .arg(&ws.audit)
            .args(["--", "/bin/true"])
            .current_dir(&ws.dir);
        let r = run_with_timeout(c, Duration::from_secs(20));
        assert_eq!(r.code, Some(125), "{r:?}");
        for dir in common::session_cgroup_dirs(&sid) {
            assert!(!dir.exists(), "{} is still there", dir.display());
        }
    }
}

/// After `--timeout`'s SIGTERM, in the grace before the kill, signals sent to the supervisor
/// still reach the agent: the agent traps TERM and USR1 and writes a file for each, read from
/// outside; the session still ends by the timeout (124).
#[test]
fn signals_sent_during_the_timeouts_grace_reach_the_agent() {
    skip_unless!(is_root(), "the sandbox needs root here");
    let ws = Workspace::new("grace-signals");
    let script = "trap 'echo term >> term.txt' TERM; trap 'echo usr1 >> usr1.txt' USR1; \
                  echo up > up.txt; while :; do sleep 0.1; done";
    let mut c = common::supervisor_command();
    c.args(["run", "-q", "--headless", "--policy", "preset:unrestricted"])
        .args(["--timeout", "2s", "--audit"])
        .arg(&ws.audit)
        .args(["--", "/bin/sh", "-c", script])
        .current_dir(&ws.dir)
        .env_remove("GITHUB_ACTIONS")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().expect("spawn the supervisor");
    let term = wait_until(Duration::from_secs(20), || ws.path("term.txt").exists());
    if term {
        let _ = Command::new("kill")
            .args(["-USR1", &child.id().to_string()])
            .status();
    }
    let usr1 = term && wait_until(Duration::from_secs(4), || ws.path("usr1.txt").exists());
    let status = wait_child(&mut child, Duration::from_secs(30));
    assert!(ws.path("up.txt").exists(), "the agent never started");
    assert!(term, "the timeout's SIGTERM never reached the agent");
    assert!(usr1, "SIGUSR1 sent in the grace never reached the agent");
    assert_eq!(status.code(), Some(124), "{status:?}");
    assert_eq!(session_end(&ws)["action"]["ended_by"], "timeout");
}

/// The agent runs as host uid 0 (we are root): it tries to write its pid into every existing
/// `cgroup.procs` two levels down (the hierarchies' roots, our parent) to leave its limits. The host then reads its
/// process's cgroups: still in the session's, in every hierarchy that carries a limit.
#[test]
fn the_agent_cannot_move_itself_out_of_its_cgroups() {
    skip_unless!(is_root(), "needs root (cgroups)");
    skip_unless!(
        controller_available("pids"),
        "no pids cgroup controller (v2 root or v1 hierarchy) on this host"
    );
    let ws = Workspace::new("escape");
    let marker = format!("1000.{}", unique());
    let script = format!(
        "for f in /sys/fs/cgroup/cgroup.procs /sys/fs/cgroup/*/cgroup.procs \
                  /sys/fs/cgroup/*/*/cgroup.procs; do \
           [ -e \"$f\" ] && echo $$ 2>/dev/null > \"$f\" && echo \"$f\" >> tried.txt; \
         done; \
         exec sleep {marker}"
    );
    let mut c = common::supervisor_command();
    c.args([
        "run",
        "-q",
        "--standalone",
        "--headless",
        "--policy",
        "preset:unrestricted",
    ])
    .args(["--processes", "64", "--timeout", "20s", "--audit"])
    .arg(&ws.audit)
    .args(["--", "/bin/sh", "-c", &script])
    .current_dir(&ws.dir)
    .env_remove("GITHUB_ACTIONS")
    .stdin(std::process::Stdio::null());
    let mut child = c.spawn().expect("spawn the supervisor");
    let found = wait_until(Duration::from_secs(15), || count_with_marker(&marker) == 1);
    let cgroups = procs_with_marker(&marker)
        .first()
        .and_then(|p| std::fs::read_to_string(p.join("cgroup")).ok())
        .unwrap_or_default();
    // SIGTERM: forwarded to the agent, the session ends and removes its cgroups.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    wait_child(&mut child, Duration::from_secs(10));
    assert!(found, "the agent's sleep never showed up");
    // Writes into hierarchies that carry no limit may succeed (they change nothing); what
    // counts is where the agent is.
    // The v2 line, and the v1 pids line on hybrid hosts, name the session's cgroup.
    for line in cgroups.lines() {
        let controllers = line.split(':').nth(1).unwrap_or_default();
        if controllers.is_empty() || controllers.split(',').any(|c| c == "pids") {
            assert!(
                line.contains("/agent-supervisor/"),
                "the agent is outside its session's cgroup: {line} (all: {cgroups})"
            );
        }
    }
    assert!(wait_until(Duration::from_secs(5), || count_with_marker(
        &marker
    ) == 0));
}

/// `policy check` lists the limits in effect and where each was set; a bad `--timeout` or
/// `[limits]` value is refused with a message that says what is expected.
#[test]
fn policy_check_shows_the_limits_and_bad_values_are_refused() {
    let ws = Workspace::new("check");
    let policy = ws.policy(&format!(
        "{UNRESTRICTED}[limits]\nmemory = \"2G\"\ntimeout = \"30m\"\n"
    ));
    let mut c = common::supervisor_command();
    c.args(["policy", "check"]).arg(&policy);
    let r = run_with_timeout(c, Duration::from_secs(20));
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout.contains("memory = 2G (") && r.stdout.contains("policy.toml:4:10)"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("timeout = 30m ("), "{}", r.stdout);
    assert!(
        r.stdout.contains("processes = 4096 (built-in default)"),
        "{}",
        r.stdout
    );

    let bad = ws.policy(&format!("{UNRESTRICTED}[limits]\nprocesses = -3\n"));
    let mut c = common::supervisor_command();
    c.args(["policy", "check"]).arg(&bad);
    let r = run_with_timeout(c, Duration::from_secs(20));
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr
            .contains("policy.toml:4:13: processes `-3` is not a count"),
        "{}",
        r.stderr
    );

    let mut c = common::supervisor_command();
    c.args(["run", "--standalone", "--timeout", "soon", "--", "true"])
        .env_remove("GITHUB_ACTIONS");
    let r = run_with_timeout(c, Duration::from_secs(20));
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("bad timeout `soon`"), "{}", r.stderr);
}

const FLOOD: &str = r#"
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
#define THREADS 100
static void *one(void *arg) {
    char path[64];
    snprintf(path, sizeof path, "ask/f%ld", (long)arg);
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    if (fd >= 0) close(fd);
    return 0;
}
int main(void) {
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++) pthread_create(&t[i], 0, one, (void *)i);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], 0);
    return 0;
}
"#;

/// `python3 DRIVER DRIVER_ARGS... agent-supervisor run -q --standalone --policy POLICY --audit
/// AUDIT -- AGENT...` in the workspace: the supervisor on a pseudo-terminal that the driver
/// (Python source, written next to the workspace) controls, without the CI variables.
fn on_a_pty(
    ws: &Workspace,
    driver: &str,
    driver_args: &[&str],
    policy: &std::path::Path,
    agent: &[&str],
) -> Command {
    let path = ws.dir.parent().expect("workspace base").join("driver.py");
    std::fs::write(&path, driver).expect("write the driver");
    let mut c = Command::new("/usr/bin/python3");
    c.no_ci()
        .arg(&path)
        .args(driver_args)
        .arg(bin())
        .args(["run", "-q", "--standalone", "--policy"])
        .arg(policy)
        .arg("--audit")
        .arg(&ws.audit)
        .arg("--")
        .args(agent)
        .current_dir(&ws.dir)
        .stdin(std::process::Stdio::null());
    c
}

/// A hostile agent floods asks from 100 threads while a terminal is there and nobody answers:
/// 64 (`MAX_PENDING_ASKS`) wait (and are denied at `approval_timeout`), the other 36 are
/// denied at once with `decided_by: "queue-full"`, all audited; no file was created.
#[test]
fn a_flood_of_asks_is_bounded_and_the_rest_denied_at_once() {
    skip_unless!(is_root(), "the sandbox needs root here");
    skip_unless!(
        std::path::Path::new("/usr/bin/python3").exists(),
        "no python3 for the pseudo-terminal driver"
    );
    let ws = Workspace::new("flood");
    std::fs::create_dir_all(ws.path("ask")).expect("mkdir ask");
    let Some(flood) = compile_c(&ws.dir, "flood", FLOOD, &["-pthread"]) else {
        skip_unless!(false, "no C compiler (cc) to build the flooding agent");
        return;
    };
    let policy = ws.policy(
        "version = 1\nextends = \"unrestricted\"\napproval_timeout = \"8s\"\n\
         [[rule]]\ndecision = \"ask\"\nfile = \"ask/**\"\n",
    );
    let flood = flood.to_str().expect("a UTF-8 path");
    let c = on_a_pty(&ws, PTY_DRIVER, &["", "40"], &policy, &[flood]);
    let r = run_with_timeout(c, Duration::from_secs(50));
    assert_eq!(r.code, Some(0), "the pty driver failed: {r:?}");
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("driver JSON");
    assert_eq!(v["timed_out"], false, "{v}");
    assert_eq!(v["status"], 0, "{v}");
    assert!(v["prompts"].as_u64().unwrap_or(0) >= 1, "no prompt: {v}");
    let created: Vec<_> = std::fs::read_dir(ws.path("ask"))
        .unwrap()
        .flatten()
        .collect();
    assert!(created.is_empty(), "files were created: {created:?}");
    let asks: Vec<serde_json::Value> = ws
        .audit()
        .into_iter()
        .filter(|r| r["kind"] == "open" && r["action"].to_string().contains("/ask/f"))
        .collect();
    let by = |who: &str| asks.iter().filter(|r| r["decided_by"] == who).count();
    assert_eq!(asks.len(), 100, "{asks:?}");
    assert!(asks.iter().all(|r| r["decision"] == "deny"), "{asks:?}");
    assert_eq!(by("queue-full"), 36, "{asks:?}");
    assert_eq!(by("timeout"), 64, "{asks:?}");
}

/// A tmpfs this test mounts (and unmounts on drop, by its path).
struct SmallTmpfs(PathBuf);

impl SmallTmpfs {
    fn mount(dir: PathBuf, size: &str) -> Option<SmallTmpfs> {
        std::fs::create_dir_all(&dir).ok()?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallTmpfs(dir))
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The audit log's disk fills up *during* a session (a 16 KiB tmpfs): the actions before
/// were allowed, every action after is denied (the program after the loop never runs: its
/// file is absent), the failure is loud, the records that could not be written are on
/// stderr, the supervisor exits 125.
#[test]
fn an_audit_disk_that_fills_up_during_the_session_denies_everything_after() {
    skip_unless!(is_root(), "needs root (mounts a tmpfs)");
    let ws = Workspace::new("auditfull");
    let Some(tmpfs) = SmallTmpfs::mount(ws.dir.parent().unwrap().join("auditfs"), "16k") else {
        skip_unless!(false, "cannot mount a tmpfs here");
        return;
    };
    let audit = tmpfs.0.join("audit.jsonl");
    let policy = ws.policy(
        "version = 1\nextends = \"unrestricted\"\n\
         [[rule]]\ndecision = \"allow\"\ncommand = \"true\"\n\
         [[rule]]\ndecision = \"allow\"\ncommand = \"touch\"\n",
    );
    let mut c = common::supervisor_command();
    c.args(["run", "-q", "--standalone", "--headless", "--policy"])
        .arg(&policy)
        .arg("--audit")
        .arg(&audit)
        .args(["--", "/bin/sh", "-c"])
        .arg(
            "i=0; while [ $i -lt 2000 ]; do /bin/true || break; i=$((i+1)); done; \
             echo $i > count.txt; /usr/bin/touch after.txt",
        )
        .current_dir(&ws.dir)
        .env_remove("GITHUB_ACTIONS")
        .stdin(std::process::Stdio::null());
    let r = run_with_timeout(c, Duration::from_secs(60));
    let written = std::fs::read_to_string(&audit).unwrap_or_default();
    drop(tmpfs);
    assert!(!r.timed_out, "{r:?}");
    let count: u32 = ws
        .read("count.txt")
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or_else(|| panic!("the loop never ended: {r:?}"));
    assert!(count > 0, "no action was allowed before the disk filled up");
    assert!(
        count < 2000,
        "the disk never filled up (16 KiB): {count} execs"
    );
    assert!(
        written
            .lines()
            .filter(|l| l.contains("\"kind\":\"exec\""))
            .count()
            > 0,
        "nothing was audited before the disk filled up"
    );
    assert!(
        !ws.path("after.txt").exists(),
        "an action was allowed after the audit log failed"
    );
    assert!(r.stderr.contains("cannot be written"), "{}", r.stderr);
    assert!(r.stderr.contains("audit-unavailable"), "{}", r.stderr);
    assert_eq!(r.code, Some(125), "{r:?}");
}

/// Runs argv on a pseudo-terminal, waits for the first approval prompt, SIGKILLs the process
/// it started (the supervisor) while the ask waits, and reports as JSON.
const KILL_AT_PROMPT: &str = r#"
import json, os, pty, select, signal, sys, time
limit, argv = float(sys.argv[1]), sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
buf, killed, deadline = b"", False, time.monotonic() + limit
while time.monotonic() < deadline:
    r, _, _ = select.select([fd], [], [], 0.05)
    if r:
        try:
            buf += os.read(fd, 65536)
        except OSError:
            pass
    if not killed and b"allow? [y]" in buf:
        os.kill(pid, signal.SIGKILL)
        killed = True
    done, st = os.waitpid(pid, os.WNOHANG)
    if done:
        break
else:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
print(json.dumps({"killed_at_prompt": killed, "out": buf.decode("utf-8", "replace")}))
"#;

/// The supervisor is SIGKILLed while an ask waits on its terminal: the asked action never
/// happens (the file is absent), nor does anything after it, and the agent is gone.
#[test]
fn a_pending_ask_is_not_allowed_when_the_supervisor_dies() {
    skip_unless!(is_root(), "the sandbox needs root here");
    skip_unless!(
        std::path::Path::new("/usr/bin/python3").exists(),
        "no python3 for the pseudo-terminal driver"
    );
    let ws = Workspace::new("diewhileask");
    std::fs::create_dir_all(ws.path("ask")).expect("mkdir ask");
    let marker = format!("1000.{}", unique());
    let policy = ws.policy(
        "version = 1\nextends = \"unrestricted\"\napproval_timeout = \"60s\"\n\
         [[rule]]\ndecision = \"ask\"\nfile = \"ask/**\"\n",
    );
    let script = format!("sleep {marker} & echo x > ask/x; echo after > after.txt; wait");
    let c = on_a_pty(
        &ws,
        KILL_AT_PROMPT,
        &["30"],
        &policy,
        &["/bin/sh", "-c", &script],
    );
    let r = run_with_timeout(c, Duration::from_secs(40));
    assert_eq!(r.code, Some(0), "the driver failed: {r:?}");
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("driver JSON");
    assert_eq!(v["killed_at_prompt"], true, "no prompt came: {v}");
    assert!(
        wait_until(Duration::from_secs(5), || !process_alive_with_marker(
            &marker
        )),
        "a process of the session outlived the SIGKILLed supervisor"
    );
    let carried_out = ws.path("ask/x").exists();
    let went_on = ws.path("after.txt").exists();
    // The session's cgroups go with the workspace (when its audit names the session: the
    // supervisor may have been killed before its first record was written).
    assert!(!carried_out, "the pending ask was carried out");
    assert!(!went_on, "the agent went on after its supervisor died");
}

/// CPU time (user + system, seconds) of the first process with `marker` in its command line.
fn cpu_seconds_of(marker: &str) -> Option<f64> {
    let tick = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    let stat = std::fs::read_to_string(procs_with_marker(marker).first()?.join("stat")).ok()?;
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((utime + stime) / tick)
}

/// `cpu = 0.25`: a busy loop gets about a quarter of a CPU, measured from the host over two
/// seconds of its life (the session then ends by its timeout).
#[test]
fn cpu_throttles_a_busy_agent() {
    skip_unless!(is_root(), "needs root (cgroups)");
    skip_unless!(
        controller_available("cpu"),
        "no cpu cgroup controller (v2 root or v1 hierarchy) on this host"
    );
    let ws = Workspace::new("cpu");
    let marker = format!("busy{}", unique());
    ws.write(&format!("{marker}.sh"), "while :; do :; done\n");
    let policy = ws.policy(&format!(
        "{UNRESTRICTED}[limits]\ncpu = 0.25\ntimeout = \"4s\"\n"
    ));
    let mut c = common::supervisor_command();
    c.args(["run", "-q", "--standalone", "--headless", "--policy"])
        .arg(&policy)
        .arg("--audit")
        .arg(&ws.audit)
        .args(["--", "/bin/sh"])
        .arg(format!("{marker}.sh"))
        .current_dir(&ws.dir)
        .env_remove("GITHUB_ACTIONS")
        .stdin(std::process::Stdio::null());
    let mut child = c.spawn().expect("spawn the supervisor");
    let started = wait_until(Duration::from_secs(10), || {
        cpu_seconds_of(&marker).is_some()
    });
    let before = cpu_seconds_of(&marker);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let after = cpu_seconds_of(&marker);
    let wall = t0.elapsed().as_secs_f64();
    let status = wait_child(&mut child, Duration::from_secs(30));
    assert!(started, "the busy loop never showed up");
    let (Some(before), Some(after)) = (before, after) else {
        panic!("the busy loop ended early (status {status:?})");
    };
    let share = (after - before) / wall;
    // Any progress at all: on a loaded host (other builds) the loop may get far less than
    // its quarter; what it must never get is more.
    assert!(
        after > before,
        "the loop got no CPU time at all: the test measured nothing"
    );
    assert!(
        share < 0.4,
        "the loop got {share:.2} CPUs, over the 0.25 limit"
    );
    assert_eq!(status.code(), Some(124), "the session ends by its timeout");
}

/// The timeout hits while an ask waits on the terminal (nobody answers): the session ends
/// (exit 124) and the asked action never happens.
#[test]
fn the_timeout_ends_a_session_whose_ask_waits_and_the_action_never_happens() {
    skip_unless!(is_root(), "the sandbox needs root here");
    skip_unless!(
        std::path::Path::new("/usr/bin/python3").exists(),
        "no python3 for the pseudo-terminal driver"
    );
    let ws = Workspace::new("timeoutask");
    std::fs::create_dir_all(ws.path("ask")).expect("mkdir ask");
    let policy = ws.policy(
        "version = 1\nextends = \"unrestricted\"\napproval_timeout = \"60s\"\n\
         [limits]\ntimeout = \"2s\"\n[[rule]]\ndecision = \"ask\"\nfile = \"ask/**\"\n",
    );
    let c = on_a_pty(
        &ws,
        PTY_DRIVER,
        &["", "40"],
        &policy,
        &["/bin/sh", "-c", "echo x > ask/x; echo after > after.txt"],
    );
    let start = Instant::now();
    let r = run_with_timeout(c, Duration::from_secs(50));
    assert_eq!(r.code, Some(0), "the pty driver failed: {r:?}");
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("driver JSON");
    assert_eq!(v["timed_out"], false, "{v}");
    assert_eq!(v["prompts"], 1, "{v}");
    assert_eq!(v["status"], 124, "{v}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert!(!ws.path("ask/x").exists(), "the waiting action happened");
    assert!(
        !ws.path("after.txt").exists(),
        "the agent went on after its timeout"
    );
    let end = session_end(&ws);
    assert_eq!(end["action"]["ended_by"], "timeout", "{end}");
}
