//! `cargo xtask vm-test`: the privileged tests on other kernels, inside QEMU guests.
//!
//! The host kernel decides what the integration tests can prove (here: no BPF LSM, Landlock
//! ABI 7). This boots Debian kernels from 6.1 to the newest 7.x, each with
//! `lsm=landlock,lockdown,yama,bpf`, and runs the same test executables inside them:
//!
//! 1. [`test_binaries`]: build the tests on the host (`cargo test --no-run`) and pick the
//!    supervisor's test executables.
//! 2. [`kernels`]: fetch the kernels into the cache with a private apt (once; `--refresh`
//!    looks for newer ones).
//! 3. [`initramfs`]: a busybox initramfs whose `/init` mounts the host root read-only over
//!    9p, with tmpfs where tests write, and runs [`runner`]'s script from it.
//! 4. [`qemu`]: boot each kernel (KVM where it works, TCG otherwise) with a hard time limit,
//!    following the results port.
//! 5. [`report`]: a table kernel × test executable of passed/failed/skipped, and per kernel
//!    its Landlock ABI and whether BPF LSM is active. Any failure makes the command fail.
//!
//! `cargo xtask test` (which CI runs) runs the same matrix through [`run_layer`] after the
//! host tests, unless `--no-vm`.
//! docs/vm-test.md has the details: the kernels, the cache, adding a kernel, Vagrant.

#[path = "vm/initramfs.rs"]
mod initramfs;
#[path = "vm/json.rs"]
mod json;
#[path = "vm/kernels.rs"]
mod kernels;
#[path = "vm/qemu.rs"]
mod qemu;
#[path = "vm/report.rs"]
mod report;
#[path = "vm/runner.rs"]
mod runner;
#[path = "vm/test_binaries.rs"]
mod test_binaries;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use self::kernels::Kernel;
use self::qemu::{Accel, AccelChoice};
use self::report::{Column, Counts, KernelRun};
use self::test_binaries::TestBinary;
use crate::{process, setup};

/// Options of `cargo xtask vm-test`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Boot only this kernel (repeatable): 6.1, 6.12 or 7.x. Default: all three.
    #[arg(long = "kernel", value_name = "NAME")]
    pub kernels: Vec<String>,
    /// Run only this test executable (repeatable): `lib`, `bin:agent-supervisor`, or an
    /// integration test's name such as `attacks`. Default: all of agent-supervisor's.
    #[arg(long = "test", value_name = "NAME")]
    pub tests: Vec<String>,
    /// Look for newer kernel packages (apt-get update) and fetch them. Without it, cached
    /// kernels are used as they are and nothing is downloaded.
    #[arg(long)]
    pub refresh: bool,
    /// How to run the guests' CPUs.
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    pub accel: AccelChoice,
    /// Hard time limit for one guest, in minutes (QEMU is killed after it). A whole run takes
    /// 12 to 16 minutes per kernel under TCG here (6.1 is the slowest); three guests that all
    /// hang still leave `cargo xtask test` (about 10 minutes before the VM layer) inside CI's
    /// 90 minutes.
    #[arg(long, value_name = "MINUTES", default_value_t = 24)]
    pub timeout: u64,
    /// Time limit for one test executable inside a guest, in minutes.
    #[arg(long, value_name = "MINUTES", default_value_t = 8)]
    pub executable_timeout: u64,
    /// Build the tests with the `dev` profile, exactly as the host layer does, instead of
    /// the optimised `vm-test` profile (3 to 4 times slower under TCG).
    #[arg(long)]
    pub unoptimized: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            kernels: Vec::new(),
            tests: Vec::new(),
            refresh: false,
            accel: AccelChoice::Auto,
            timeout: 24,
            executable_timeout: 8,
            unoptimized: false,
        }
    }
}

/// What the VM layer adds to `cargo xtask test`'s counts.
#[derive(Debug, Default)]
pub struct Summary {
    pub counts: Counts,
    /// `KERNEL: module:line: why` for every skipped test.
    pub skips: Vec<String>,
}

/// `cargo xtask vm-test`: set-up, the matrix, the table; fails when anything failed.
pub fn run(workspace: &Path, options: &Options) -> Result<()> {
    setup::run()?;
    let summary = matrix(workspace, options)?;
    let c = summary.counts;
    println!(
        "vm-test: {} passed, {} failed, {} skipped",
        c.passed, c.failed, c.skipped
    );
    if c.failed > 0 {
        bail!("tests failed in the guests: see the table and the output above");
    }
    Ok(())
}

/// The VM layer of `cargo xtask test` (set-up has run): every kernel, every executable.
pub fn run_layer(workspace: &Path) -> Result<Summary> {
    matrix(workspace, &Options::default())
}

/// One kernel's boot and what it reported.
struct Outcome {
    kernel: Kernel,
    run: KernelRun,
    elapsed: Duration,
    /// Why the guest as a whole is suspect (time-out, QEMU error, wrong kernel, no end).
    problems: Vec<String>,
    console_log: PathBuf,
    results_log: PathBuf,
}

fn matrix(workspace: &Path, options: &Options) -> Result<Summary> {
    qemu::check_installed()?;
    let accel = qemu::accel(options.accel)?;
    match &accel {
        Accel::Kvm => println!("vm-test: accelerator: KVM"),
        Accel::Tcg(why) => println!("vm-test: accelerator: TCG (no KVM: {why})"),
    }
    let specs = kernels::select(&options.kernels)?;
    let binaries = test_binaries::select(
        test_binaries::build(workspace, !options.unoptimized)?,
        &options.tests,
    )?;
    let names: Vec<String> = binaries.iter().map(|b| b.name.clone()).collect();

    let target = target_directory(workspace)?;
    let target_tmpdir = target.join("tmp");
    fs::create_dir_all(&target_tmpdir)
        .with_context(|| format!("creating {}", target_tmpdir.display()))?;
    let cache = cache_dir()?;
    let kernels = kernels::ensure(&cache, &specs, options.refresh)?;

    // Next to the vm-test profile's build output, which cargo names after the profile.
    let run_dir = target.join(test_binaries::PROFILE).join("runs");
    fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let script = run_dir.join("run-tests.sh");
    let per_executable = Duration::from_secs(options.executable_timeout * 60);
    fs::write(
        &script,
        runner::script(&binaries, &target_tmpdir, per_executable),
    )
    .with_context(|| format!("writing {}", script.display()))?;

    // Everything the tests read from the host: the workspace and the target directory.
    let keep = [workspace.to_path_buf(), target.clone()];
    let mut outcomes = Vec::new();
    let mut crashes = Vec::new();
    for kernel in kernels {
        let timeout = Duration::from_secs(options.timeout * 60);
        let mut outcome = boot(
            kernel.clone(),
            &run_dir,
            &script,
            &keep,
            &accel,
            &binaries,
            timeout,
        )?;
        // A kernel that crashed (an Oops or panic on its console) is booted once more, and the
        // crash is reported whatever the second boot gives: seen once on 7.2 under TCG, an
        // int3 Oops inside a BPF trampoline while sessions attached and detached their LSM
        // programs (the kernel's text patching, not a test's verdict).
        if let Some(crash) = kernel_crash(&outcome.console_log) {
            let kept = outcome.console_log.with_file_name("console-crash.log");
            let _ = fs::rename(&outcome.console_log, &kept);
            println!(
                "vm-test: {}: THE KERNEL CRASHED ({crash}); its console is in {}; booting it once more",
                kernel.release,
                kept.display()
            );
            crashes.push(format!(
                "{}: {crash} (console: {})",
                kernel.release,
                kept.display()
            ));
            outcome = boot(kernel, &run_dir, &script, &keep, &accel, &binaries, timeout)?;
        }
        outcomes.push(outcome);
    }
    let summary = print_report(&outcomes, &names, &accel);
    for crash in &crashes {
        println!("vm-test: a guest kernel crashed and was booted again: {crash}");
    }
    Ok(summary)
}

/// The first line of a kernel crash on a guest's console (`Oops:`, `Kernel panic`, `BUG:`),
/// if there is one.
fn kernel_crash(console_log: &Path) -> Option<String> {
    let text = fs::read_to_string(console_log).ok()?;
    crash_line(&text)
}

fn crash_line(console: &str) -> Option<String> {
    console
        .lines()
        .find(|l| {
            ["] Oops: ", "] Kernel panic - not syncing", "] BUG: "]
                .iter()
                .any(|m| l.contains(m))
        })
        .map(|l| l.trim().to_string())
}

/// Boots one kernel and runs the script in it.
fn boot(
    kernel: Kernel,
    run_dir: &Path,
    script: &Path,
    keep: &[PathBuf],
    accel: &Accel,
    binaries: &[TestBinary],
    timeout: Duration,
) -> Result<Outcome> {
    let dir = run_dir.join(kernel.spec.name);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let initramfs = initramfs::build(&kernel, &dir)
        .with_context(|| format!("building the initramfs for {}", kernel.release))?;
    println!(
        "vm-test: booting {} ({}, {} executables, time limit {} min)",
        kernel.release,
        accel.short(),
        binaries.len(),
        timeout.as_secs() / 60
    );
    let boot = qemu::Boot {
        kernel: &kernel,
        initramfs: &initramfs,
        script,
        keep,
        accel,
        dir: &dir,
        timeout,
    };
    let mut run = KernelRun::default();
    let prefix = format!("vm-test[{}]", kernel.spec.name);
    let ended = boot.run(|line| {
        println!("{prefix}: {line}");
        run.feed(line);
    })?;

    let mut problems = Vec::new();
    if ended.timed_out {
        problems.push(format!(
            "the guest was killed at the time limit ({} min)",
            timeout.as_secs() / 60
        ));
    }
    if let Some(error) = &ended.qemu_error {
        problems.push(error.clone());
    }
    if let Some(why) = &run.init_failure {
        problems.push(format!("the guest's /init gave up: {why}"));
    }
    match &run.release {
        Some(release) if *release != kernel.release => {
            problems.push(format!("the guest runs {release}, not {}", kernel.release))
        }
        None => problems.push("the guest never started the test script".into()),
        Some(_) => {}
    }
    if !run.done && !ended.timed_out && run.release.is_some() {
        problems.push("the test script stopped before its end".into());
    }
    println!(
        "vm-test: {} finished in {:.0?}",
        kernel.release, ended.elapsed
    );
    Ok(Outcome {
        console_log: boot.console_log(),
        results_log: boot.results_log(),
        kernel,
        run,
        elapsed: ended.elapsed,
        problems,
    })
}

/// Prints the table, the kernels' facts and what failed; returns the counts.
fn print_report(outcomes: &[Outcome], names: &[String], accel: &Accel) -> Summary {
    let mut summary = Summary::default();
    println!();
    println!("vm-test: results, passed/failed/skipped per test executable and kernel");
    println!("vm-test: (a skipped test says why below; #[ignore]d tests are not counted)");
    println!();
    let columns: Vec<Column<'_>> = outcomes
        .iter()
        .map(|o| Column {
            label: o.kernel.release.clone(),
            run: &o.run,
        })
        .collect();
    print!("{}", report::table(&columns, names));
    println!();
    println!("| kernel | from | Landlock ABI | BPF LSM active | accel | wall time |");
    println!("|---|---|---|---|---|---|");
    for o in outcomes {
        let bpf = match o.run.bpf_lsm_active() {
            Some(true) => "yes".to_string(),
            Some(false) => format!("no (lsm={})", o.run.lsm.as_deref().unwrap_or("")),
            None => "unknown".to_string(),
        };
        println!(
            "| {} | {} {} | {} | {bpf} | {} | {:.0}s |",
            o.kernel.release,
            o.kernel.suite,
            o.kernel.version,
            o.run.landlock_abi.as_deref().unwrap_or("unknown"),
            accel.short(),
            o.elapsed.as_secs_f64()
        );
    }
    println!();

    for o in outcomes {
        let counts = o.run.counts(names);
        let mut failed = counts.failed;
        for problem in &o.problems {
            println!("vm-test: {}: FAILED: {problem}", o.kernel.release);
        }
        if !o.problems.is_empty() && failed == 0 {
            failed = 1; // a suspect guest is never a pass
        }
        for name in names {
            match o.run.binary(name) {
                None => println!("vm-test: {}: {name}: not run", o.kernel.release),
                Some(binary) => {
                    for test in &binary.failures {
                        println!("vm-test: {}: {name}: FAILED {test}", o.kernel.release);
                    }
                    if let Some(trouble) = binary.trouble() {
                        println!("vm-test: {}: {name}: {trouble}", o.kernel.release);
                    }
                    for skip in &binary.skips {
                        summary.skips.push(format!("{}: {skip}", o.kernel.release));
                    }
                }
            }
        }
        if failed > 0 {
            println!(
                "vm-test: {}: the whole output is in {}, the kernel console in {}",
                o.kernel.release,
                o.results_log.display(),
                o.console_log.display()
            );
            if !o.problems.is_empty() {
                println!(
                    "vm-test: {}: end of the kernel console: {}",
                    o.kernel.release,
                    qemu::tail(&o.console_log, 8)
                );
            }
        }
        summary.counts += Counts { failed, ..counts };
    }
    if !summary.skips.is_empty() {
        println!(
            "vm-test: {} tests could not run in a guest:",
            summary.skips.len()
        );
        for skip in &summary.skips {
            println!("vm-test:   skipped {skip}");
        }
    }
    summary
}

/// cargo's target directory (`cargo metadata`), where the tests' `CARGO_TARGET_TMPDIR` is.
fn target_directory(workspace: &Path) -> Result<PathBuf> {
    let metadata = process::output(
        Command::new(crate::cargo())
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(workspace),
        "cargo metadata failed",
    )?;
    let value = json::parse(&metadata).context("reading cargo metadata's output")?;
    value
        .get("target_directory")
        .and_then(json::Value::as_str)
        .map(PathBuf::from)
        .context("cargo metadata printed no target_directory")
}

/// Where kernels are kept between runs: `$AGENT_SUPERVISOR_VM_CACHE`, else
/// `$XDG_CACHE_HOME/agent-supervisor/vm`, else `~/.cache/agent-supervisor/vm`.
fn cache_dir() -> Result<PathBuf> {
    let env = |key: &str| {
        std::env::var_os(key)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = env("AGENT_SUPERVISOR_VM_CACHE") {
        return Ok(dir);
    }
    let base = match env("XDG_CACHE_HOME") {
        Some(dir) => dir,
        None => env("HOME")
            .context("HOME is not set: set AGENT_SUPERVISOR_VM_CACHE to a cache directory")?
            .join(".cache"),
    };
    Ok(base.join("agent-supervisor/vm"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_kernel_crash_is_found_on_the_console_and_a_clean_console_has_none() {
        let crashed = "[  1.0] ok\n[  201.581184] Oops: int3: 0000 [#1] SMP NOPTI\n[  201.5] Kernel panic - not syncing: Fatal exception\n";
        assert_eq!(
            super::crash_line(crashed).as_deref(),
            Some("[  201.581184] Oops: int3: 0000 [#1] SMP NOPTI")
        );
        assert_eq!(
            super::crash_line("[ 0.1] Linux version 7.2\n@@vm-test done\n"),
            None
        );
    }
}
