//! `cargo xtask bench`: what supervision costs, as ratios against bare runs and peers.
//!
//! Workloads (the ones the design targets):
//! - start-up: `/bin/true`, repeated;
//! - 10,000 opens: a small C program that opens and closes a workspace file 10,000 times;
//!   its own loop time (clock_gettime around the loop) and the whole run's wall time;
//! - a C build: `make -j2` of a generated 40-file C project, from clean;
//! - start-up in a large workspace: `/bin/true` with 50,000 files under the working directory
//!   (a repository with its build output), which the default policy's deny rules are matched
//!   against at start;
//! - host names ([`crate::bench_dns`]): connections per second to an allowed name, and the
//!   latency the session's DNS resolver adds (`--dns-only` runs just this case).
//!
//! Each runs bare, under `bwrap` (user + PID namespaces) and `firejail` where installed, and
//! under `agent-supervisor run --headless --policy preset:sandboxed` (the default policy). The
//! table printed at the end is what the README shows. Medians; the first runs are warm-up.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::find_in_path;

const STARTUP_RUNS: usize = 100;
const OPEN_RUNS: usize = 40;
const BUILD_RUNS: usize = 7;
const FIND_RUNS: usize = 10;
/// Supervised `/bin/true` runs with `-vv` for the start-up breakdown (per runner).
const PHASE_RUNS: usize = 30;
const C_FILES: usize = 40;
/// The large workspace: this many directories of [`BIG_FILES_PER_DIR`] files each.
const BIG_DIRS: usize = 200;
const BIG_FILES_PER_DIR: usize = 250;
const BIG_RUNS: usize = 15;

/// How to wrap a command.
#[derive(Clone)]
pub(crate) struct Runner {
    name: &'static str,
    prefix: Vec<String>,
}

impl Runner {
    /// The same supervised runner with `-vv` (it logs its phases and the eBPF set it used).
    pub(crate) fn verbose(&self) -> Runner {
        let mut verbose = self.clone();
        // `run` is the first argument after the binary: `run -vv ...`.
        verbose.prefix.insert(2, "-vv".into());
        verbose
    }

    pub(crate) fn command(&self, cmd: &[&str], cwd: &Path) -> Command {
        let mut c = if self.prefix.is_empty() {
            let mut c = Command::new(cmd[0]);
            c.args(&cmd[1..]);
            c
        } else {
            let mut c = Command::new(&self.prefix[0]);
            c.args(&self.prefix[1..]).args(cmd);
            c
        };
        c.current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Run `cmd` under `r` and return (wall time, stdout); fail if it fails.
fn timed(r: &Runner, cmd: &[&str], cwd: &Path) -> Result<(Duration, String)> {
    let mut c = r.command(cmd, cwd);
    let start = Instant::now();
    let out = c
        .output()
        .with_context(|| format!("running {} under {}", cmd.join(" "), r.name))?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "{} under {} failed ({}): {}",
            cmd.join(" "),
            r.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((took, String::from_utf8_lossy(&out.stdout).into_owned()))
}

pub fn run(workspace: &Path, dns_only: bool) -> Result<()> {
    crate::setup::run()?;
    crate::process::run(
        Command::new(crate::cargo()).current_dir(workspace).args([
            "build",
            "--release",
            "-p",
            "agent-supervisor",
        ]),
        "building the release supervisor failed",
    )?;
    let supervisor = workspace.join("target/release/agent-supervisor");
    let dir = std::env::temp_dir().join(format!("agent-supervisor-bench-{}", std::process::id()));
    let ws = dir.join("ws");
    std::fs::create_dir_all(&ws)?;
    let result = if dns_only {
        bench_dns(&supervisor, &dir, Vec::new())
    } else {
        bench_all(&supervisor, &dir, &ws)
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn runners(supervisor: &Path, dir: &Path) -> Vec<Runner> {
    let mut v = vec![Runner {
        name: "bare",
        prefix: vec![],
    }];
    if find_in_path("bwrap").is_some() {
        v.push(Runner {
            name: "bwrap",
            prefix: [
                "bwrap",
                "--unshare-user",
                "--unshare-pid",
                "--bind",
                "/",
                "/",
                "--dev",
                "/dev",
                "--proc",
                "/proc",
                "--",
            ]
            .map(String::from)
            .to_vec(),
        });
    }
    if find_in_path("firejail").is_some() {
        v.push(Runner {
            name: "firejail",
            prefix: ["firejail", "--quiet", "--noprofile", "--"]
                .map(String::from)
                .to_vec(),
        });
    }
    let supervised = |name: &'static str, extra: &[&str]| {
        let mut prefix = vec![
            supervisor.display().to_string(),
            "run".into(),
            "-q".into(),
            "--headless".into(),
            // Measure supervision, not CI mode's report (on when CI=true).
            "--no-ci".into(),
        ];
        prefix.extend(extra.iter().map(|s| s.to_string()));
        prefix.extend([
            "--policy".into(),
            "preset:sandboxed".into(),
            "--audit".into(),
            dir.join("audit.jsonl").display().to_string(),
            "--".into(),
        ]);
        Runner { name, prefix }
    };
    // Without the eBPF backstops, to measure what they add on their own.
    v.push(supervised("supervisor, no eBPF", &["--no-ebpf"]));
    v.push(supervised("agent-supervisor", &[]));
    v
}

struct Row {
    workload: String,
    runner: &'static str,
    value: f64,
    unit: &'static str,
}

fn bench_all(supervisor: &Path, dir: &Path, ws: &Path) -> Result<()> {
    let runners = runners(supervisor, dir);
    let mut rows = Vec::new();

    // For the workloads, runners are interleaved within each round (bare, bwrap, supervised,
    // bare, ...), so that drift on a shared machine hits them alike; the first rounds are
    // warm-up.
    // 1. start-up, interleaved like the workloads (see `rounds`): this machine's speed drifts
    // by 20% within minutes, and runner after runner (as hyperfine does) measured each in
    // another window (the supervisor 9.2 ms against bwrap 4.7 ms back to back, 6.5 against 4.5
    // interleaved, the same quarter of an hour). Back to back was chosen while moving init
    // into its v1 cgroups waited for an RCU grace period after any other sandbox's exit; init
    // now moves itself, which waits for nothing.
    let startup: Vec<&Runner> = runners.iter().collect();
    let times = rounds(&startup, STARTUP_RUNS, 5, |r| {
        Ok(timed(r, &["/bin/true"], ws)?.0.as_secs_f64() * 1e3)
    })?;
    for (r, t) in startup.iter().zip(times) {
        rows.push(Row {
            workload: "`/bin/true` start-up".into(),
            runner: r.name,
            value: median(t),
            unit: "ms",
        });
    }

    // The start-up breakdown: each phase's median (`run -vv` logs them), and how far the
    // supervisor is from bwrap.
    let supervised: Vec<&Runner> = runners
        .iter()
        .filter(|r| r.prefix.first().is_some_and(|p| Path::new(p) == supervisor))
        .collect();
    let mut phases: Vec<(String, Vec<f64>)> = Vec::new();
    for r in &supervised {
        for (name, ms) in phase_medians(r, ws)? {
            match phases.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.push(ms),
                None => phases.push((name, vec![ms])),
            }
        }
    }
    print_phases(&supervised, &phases);
    let startup_of = |name: &str| {
        rows.iter()
            .find(|row| row.runner == name && row.workload.contains("start-up"))
            .map(|row| row.value)
    };
    if let Some(bwrap) = startup_of("bwrap") {
        for r in &supervised {
            if let Some(t) = startup_of(r.name) {
                println!(
                    "start-up: {} {:.2} ms = bwrap {bwrap:.2} ms {:+.2} ms",
                    r.name,
                    t,
                    t - bwrap
                );
            }
        }
    }
    // The first-ever load of the eBPF set (the figures above join a set already there).
    if let Some(r) = supervised.iter().find(|r| r.name == "agent-supervisor") {
        if let Some(first) = crate::bench_first_load::measure(r, ws)? {
            println!(
                "start-up: agent-supervisor, first-ever load {:.2} ms (making the pinned eBPF set \
                 {:.1} ms; once per boot and build)",
                first.session_ms, first.making_ms
            );
            rows.push(Row {
                workload: "`/bin/true` start-up, first-ever load (the eBPF set made)".into(),
                runner: r.name,
                value: first.session_ms,
                unit: "ms",
            });
        }
    }

    // 2. 10,000 opens in the workspace: the loop's own time, and the whole run's
    let opener = compile_opener(ws)?;
    std::fs::write(ws.join("data.txt"), "x")?;
    let opener_s = opener.display().to_string();
    let no_firejail: Vec<&Runner> = runners.iter().filter(|r| r.name != "firejail").collect();
    let mut walls: Vec<Vec<f64>> = vec![Vec::new(); no_firejail.len()];
    let loops = rounds(&no_firejail, OPEN_RUNS, 3, |r| {
        let (t, out) = timed(r, &[&opener_s, "data.txt", "10000"], ws)?;
        let us: f64 = out
            .trim()
            .parse()
            .with_context(|| format!("opener printed {out:?}"))?;
        let i = no_firejail
            .iter()
            .position(|x| x.name == r.name)
            .unwrap_or(0);
        walls[i].push(t.as_secs_f64() * 1e3);
        Ok(us / 1e3)
    })?;
    // `walls` also got the warm-up rounds: drop them.
    for ((r, l), w) in no_firejail
        .iter()
        .zip(loops)
        .zip(walls.into_iter().map(|w| w[3..].to_vec()))
    {
        rows.push(Row {
            workload: "10,000 opens (loop)".into(),
            runner: r.name,
            value: median(l),
            unit: "ms",
        });
        rows.push(Row {
            workload: "10,000 opens (whole run)".into(),
            runner: r.name,
            value: median(w),
            unit: "ms",
        });
    }

    // 3. `find /usr | wc -l`: a walk of many directories (opens, getdents, stats).
    let finds = rounds(&no_firejail, FIND_RUNS, 2, |r| {
        Ok(timed(r, &["/bin/sh", "-c", "find /usr | wc -l"], ws)?
            .0
            .as_secs_f64()
            * 1e3)
    })?;
    for (r, t) in no_firejail.iter().zip(finds) {
        rows.push(Row {
            workload: "`find /usr \\| wc -l`".into(),
            runner: r.name,
            value: median(t),
            unit: "ms",
        });
    }

    // 4. make -j2 of a small C project, from clean
    let project = make_c_project(ws)?;
    let bare = Runner {
        name: "bare",
        prefix: vec![],
    };
    let builds = rounds(&no_firejail, BUILD_RUNS, 1, |r| {
        timed(&bare, &["make", "-s", "clean"], &project)?;
        Ok(timed(r, &["make", "-s", "-j2"], &project)?.0.as_secs_f64() * 1e3)
    })?;
    for (r, t) in no_firejail.iter().zip(builds) {
        rows.push(Row {
            workload: format!("`make -j2`, {C_FILES} C files"),
            runner: r.name,
            value: median(t),
            unit: "ms",
        });
    }

    // 5. start-up in a large workspace: the default policy's `{workspace}/**/.env`-style deny
    //    rules are masked by walking it before the agent starts.
    let big = dir.join("big-ws");
    for d in 0..BIG_DIRS {
        let sub = big.join(format!("src{d}"));
        std::fs::create_dir_all(&sub)?;
        for f in 0..BIG_FILES_PER_DIR {
            std::fs::write(sub.join(format!("f{f}.rs")), "")?;
        }
    }
    let big_starts = rounds(&no_firejail, BIG_RUNS, 2, |r| {
        Ok(timed(r, &["/bin/true"], &big)?.0.as_secs_f64() * 1e3)
    })?;
    for (r, t) in no_firejail.iter().zip(big_starts) {
        rows.push(Row {
            workload: format!(
                "`/bin/true` start-up, {} files in the workspace",
                BIG_DIRS * (BIG_FILES_PER_DIR + 1)
            ),
            runner: r.name,
            value: median(t),
            unit: "ms",
        });
    }

    bench_dns(supervisor, dir, rows)
}

/// The DNS case ([`crate::bench_dns`]) appended to `rows`, then the table.
fn bench_dns(supervisor: &Path, dir: &Path, mut rows: Vec<Row>) -> Result<()> {
    for (workload, runner, value, unit) in crate::bench_dns::run(supervisor, dir)? {
        rows.push(Row {
            workload,
            runner,
            value,
            unit,
        });
    }
    print_table(&rows);
    Ok(())
}

/// Run `/bin/true` under the supervised runner `r` with `-vv` [`PHASE_RUNS`] times and return
/// the median of each `phase NAME: X ms` line, in the order the phases come.
fn phase_medians(r: &Runner, ws: &Path) -> Result<Vec<(String, f64)>> {
    let verbose = r.verbose();
    let mut seen: Vec<(String, Vec<f64>)> = Vec::new();
    for _ in 0..PHASE_RUNS {
        let out = verbose
            .command(&["/bin/true"], ws)
            .output()
            .with_context(|| format!("running /bin/true under {} -vv", r.name))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        for (name, ms) in stderr.lines().filter_map(phase_line) {
            match seen.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.push(ms),
                None => seen.push((name, vec![ms])),
            }
        }
    }
    if seen.is_empty() {
        bail!("{} -vv printed no `phase` lines", r.name);
    }
    Ok(seen.into_iter().map(|(n, v)| (n, median(v))).collect())
}

/// `phase NAME: X ms` in a log line (colours and all), as (NAME, X).
fn phase_line(line: &str) -> Option<(String, f64)> {
    let rest = line.split("phase ").nth(1)?;
    let (name, value) = rest.split_once(": ")?;
    let ms = value
        .split_whitespace()
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()?;
    Some((name.trim().to_string(), ms))
}

fn print_phases(runners: &[&Runner], phases: &[(String, Vec<f64>)]) {
    println!();
    println!("Start-up breakdown of `/bin/true` (medians of {PHASE_RUNS} runs with -vv, ms):");
    println!();
    let names: Vec<&str> = runners.iter().map(|r| r.name).collect();
    println!("| phase | {} |", names.join(" | "));
    println!("| --- |{}", " ---: |".repeat(names.len()));
    for (name, values) in phases {
        let cells: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    let totals: Vec<String> = (0..names.len())
        .map(|i| {
            // Init's own steps run alongside the supervisor's `threads`: not in the sum.
            let sum: f64 = phases
                .iter()
                .filter(|(name, _)| !name.starts_with("init "))
                .filter_map(|(_, v)| v.get(i))
                .sum();
            format!("{sum:.2}")
        })
        .collect();
    println!("| sum | {} |", totals.join(" | "));
    println!();
    println!("`init` steps run in the sandbox's init while the supervisor starts its threads;");
    println!("the sum leaves them out (`handshake` is what was left to wait for).");
}

/// `n` measured rounds (after `warmup` unmeasured ones), each running every runner once, in
/// order. Returns the samples per runner.
fn rounds(
    runners: &[&Runner],
    n: usize,
    warmup: usize,
    mut measure: impl FnMut(&Runner) -> Result<f64>,
) -> Result<Vec<Vec<f64>>> {
    let mut samples = vec![Vec::with_capacity(n); runners.len()];
    for round in 0..n + warmup {
        // Each round starts one runner further on, so that every runner follows every other
        // equally often: a run pays for the kernel work the previous one's exit left (firejail's
        // namespaces, say), and always following the same runner made that a bias.
        for k in 0..runners.len() {
            let i = (round + k) % runners.len();
            let v = measure(runners[i])?;
            if round >= warmup {
                samples[i].push(v);
            }
        }
    }
    Ok(samples)
}

fn print_table(rows: &[Row]) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!();
    println!(
        "Measured {} on Linux {}, {} CPUs (medians).",
        today(),
        kernel.trim(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!();
    println!("| workload | runner | median | vs bare |");
    println!("| --- | --- | ---: | ---: |");
    for r in rows {
        let ratio = rows
            .iter()
            .find(|b| b.workload == r.workload && b.runner == "bare")
            .map_or("–".to_string(), |b| format!("{:.3}x", r.value / b.value));
        println!(
            "| {} | {} | {:.2} {} | {ratio} |",
            r.workload, r.runner, r.value, r.unit
        );
    }
}

fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn compile_opener(dir: &Path) -> Result<PathBuf> {
    let src = dir.join("opener.c");
    std::fs::write(
        &src,
        r#"#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int n = atoi(argv[2]);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++) {
        int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
        if (fd < 0) { perror("open"); return 1; }
        close(fd);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f\n", (b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) / 1e3);
    return 0;
}
"#,
    )?;
    let out = dir.join("opener");
    crate::process::run(
        Command::new("cc").args(["-O2", "-o"]).arg(&out).arg(&src),
        "compiling the open benchmark failed (is build-essential installed?)",
    )?;
    Ok(out)
}

fn make_c_project(ws: &Path) -> Result<PathBuf> {
    let p = ws.join("cproject");
    std::fs::create_dir_all(&p)?;
    let mut objs = Vec::new();
    for i in 0..C_FILES {
        let body: String = (0..40)
            .map(|j| format!("static int f{j}(int x) {{ int s = 0; for (int k = 0; k < x; k++) s += k * {j} ^ (s >> 3); return s; }}\n"))
            .collect();
        let calls: String = (0..40).map(|j| format!("f{j}(x) + ")).collect();
        std::fs::write(
            p.join(format!("m{i}.c")),
            format!("#include <stdio.h>\n{body}int m{i}(int x) {{ return {calls}0; }}\n"),
        )?;
        objs.push(format!("m{i}.o"));
    }
    let decls: String = (0..C_FILES).map(|i| format!("int m{i}(int);\n")).collect();
    let sum: String = (0..C_FILES).map(|i| format!("m{i}(argc) + ")).collect();
    std::fs::write(p.join("main.c"), format!("#include <stdio.h>\n{decls}int main(int argc, char **argv) {{ printf(\"%d\\n\", {sum}0); return 0; }}\n"))?;
    objs.push("main.o".into());
    std::fs::write(
        p.join("Makefile"),
        format!(
            "CFLAGS = -O2\nOBJS = {}\nprog: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n%.o: %.c\n\t$(CC) $(CFLAGS) -c -o $@ $<\nclean:\n\trm -f prog $(OBJS)\n",
            objs.join(" ")
        ),
    )?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::phase_line;

    #[test]
    fn phase_lines_are_read_with_or_without_colours() {
        assert_eq!(
            phase_line("2026-12-06T20:38:01.159912Z DEBUG phase policy: 0.855 ms"),
            Some(("policy".to_string(), 0.855))
        );
        assert_eq!(
            phase_line(
                "\x1b[2m2026-12-06T20:38:01Z\x1b[0m \x1b[34mDEBUG\x1b[0m phase tear-down: 12.5 ms"
            ),
            Some(("tear-down".to_string(), 12.5))
        );
        assert_eq!(phase_line("DEBUG policy loaded: preset:sandboxed"), None);
    }
}
