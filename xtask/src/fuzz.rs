//! `cargo xtask fuzz`: build the `cargo fuzz` targets of `fuzz/` (nightly, sanitizers) and run
//! each for a bounded time, seeded with the project's own inputs; any crash fails.
//!
//! Targets: `policy_parse` (the policy parser, compiler and engine on any text) and
//! `audit_verify` (the audit verifier on any log). Seeds: `policies/` and the policy golden
//! files for the first, audit logs for the second (see [`seeds`]). The corpus grows in
//! `target/fuzz-corpus/<target>` and persists between runs; crash inputs are written to
//! `target/fuzz-artifacts/<target>/` and named in the failure, with the command to reproduce
//! them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Options of `cargo xtask fuzz`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only these targets (default: all of `fuzz/Cargo.toml`).
    pub targets: Vec<String>,
}

/// What a bounded run found.
pub struct Outcome {
    /// `(target, Ok(runs) | Err(what failed))`.
    pub results: Vec<(String, Result<u64, String>)>,
}

/// The fuzz targets: the `[[bin]]` names of `fuzz/Cargo.toml`.
pub fn targets(workspace: &Path) -> Result<Vec<String>> {
    let manifest = workspace.join("fuzz/Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let names: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name = \""))
        .filter_map(|rest| rest.strip_suffix('"'))
        .filter(|n| *n != "agent-supervisor-fuzz")
        .map(String::from)
        .collect();
    if names.is_empty() {
        bail!("{} names no fuzz target", manifest.display());
    }
    Ok(names)
}

/// Seed directories of a target (read-only corpora).
fn seeds(workspace: &Path, target: &str) -> Vec<PathBuf> {
    let dirs: &[&str] = match target {
        "policy_parse" => &["policies", "agent-supervisor-policy/tests/golden"],
        "audit_verify" => &["fuzz/seeds/audit_verify"],
        _ => &[],
    };
    dirs.iter()
        .map(|d| workspace.join(d))
        .filter(|d| d.is_dir())
        .collect()
}

/// `cargo xtask fuzz`.
pub fn run(workspace: &Path, options: &Options) -> Result<()> {
    crate::setup::run()?;
    let outcome = run_bounded(workspace, options.seconds, &options.targets)?;
    let failed: Vec<&String> = outcome
        .results
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(t, _)| t)
        .collect();
    if !failed.is_empty() {
        bail!("fuzzing found crashes in: {failed:?} (see above)");
    }
    Ok(())
}

/// Build every target (or `only`), then run each for `seconds`. An error is returned only
/// when fuzzing could not run at all (the build failed); crashes are per-target results.
pub fn run_bounded(workspace: &Path, seconds: u64, only: &[String]) -> Result<Outcome> {
    let fuzz_dir = workspace.join("fuzz");
    let target_dir = workspace.join("target/fuzz");
    let mut names = targets(workspace)?;
    if !only.is_empty() {
        if let Some(unknown) = only.iter().find(|t| !names.contains(t)) {
            bail!(
                "no fuzz target `{unknown}`; there are: {}",
                names.join(", ")
            );
        }
        names.retain(|n| only.contains(n));
    }
    println!("fuzz: building {} (nightly, sanitizers)", names.join(", "));
    let mut build = Command::new("cargo");
    build
        .args(["+nightly", "fuzz", "build", "--target-dir"])
        .arg(&target_dir)
        .current_dir(&fuzz_dir)
        .env_remove("RUSTFLAGS");
    crate::process::run(
        &mut build,
        "the fuzz targets did not build; the output above says why",
    )?;
    let mut results = Vec::new();
    for name in names {
        let corpus = workspace.join("target/fuzz-corpus").join(&name);
        let artifacts = workspace.join("target/fuzz-artifacts").join(&name);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        println!("fuzz: {name} for {seconds} s");
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "fuzz", "run", "--target-dir"])
            .arg(&target_dir)
            .arg(&name)
            .arg(&corpus)
            .args(seeds(workspace, &name))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-max_len=16384")
            .arg("-timeout=10")
            .arg("-rss_limit_mb=2048")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .current_dir(&fuzz_dir)
            .env_remove("RUSTFLAGS");
        let output = cmd
            .output()
            .with_context(|| format!("running {}", crate::process::describe(&cmd)))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let runs = stderr.lines().rev().find_map(|l| {
            l.strip_prefix("Done ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        });
        match (output.status.success(), runs) {
            (true, Some(runs)) => {
                println!("fuzz: {name}: {runs} runs, no crash");
                results.push((name, Ok(runs)));
            }
            _ => {
                let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
                for l in tail.iter().rev() {
                    println!("fuzz: {name}: {l}");
                }
                println!(
                    "fuzz: {name} FAILED; crash inputs in {}; reproduce with `cd fuzz && cargo +nightly fuzz run {name} <crash file>`",
                    artifacts.display()
                );
                results.push((name, Err(format!("exit {:?}", output.status.code()))));
            }
        }
    }
    Ok(Outcome { results })
}
