//! `cargo xtask test`: set-up, then every test layer, failing on the first that fails.
//!
//! Layers, in order (see STYLE.md "Test in layers"):
//! 1. `cargo test --workspace`: unit tests and the privileged integration tests (CI is root).
//! 2. The fuzz layer: every `cargo fuzz` target of `fuzz/` for [`FUZZ_SECONDS`] (see
//!    [`crate::fuzz`]); each target is one test, failed on a crash.
//! 3. Unless `--no-vm`: VM tests for kernels and LSMs the host lacks, `cargo xtask vm-test`'s
//!    matrix ([`crate::vm_test::run_layer`]), run only when the host tests passed. Its counts (one
//!    per test and kernel) are added to the summary; a VM layer that cannot run at all counts
//!    as one failure, with the reason printed.
//!
//! A test that cannot run on this machine records why in `target/tmp/skipped.txt` (see
//! `tests/common/mod.rs`); cargo counts it as passed, so the summary line at the end moves it
//! to "skipped" and lists the reasons. The last line is `tests: N passed, N failed, N skipped`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::setup;

/// Seconds each fuzz target runs in the test suite.
const FUZZ_SECONDS: u64 = 60;

pub fn run(workspace: &Path, vm: bool) -> Result<()> {
    setup::run()?;

    let skipped_file = workspace.join("target/tmp/skipped.txt");
    let _ = std::fs::remove_file(&skipped_file);

    println!("test: cargo test --workspace --color=never");
    let mut child = Command::new(crate::cargo())
        .args(["test", "--workspace", "--color=never"])
        .current_dir(workspace)
        .stdout(Stdio::piped())
        .spawn()
        .context("could not start cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(child.stdout.take().context("cargo test stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .trim_start_matches("ok. ")
                            .trim_start_matches("FAILED. ")
                            .strip_suffix(word)
                    })
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
            ignored += count(" ignored");
        }
    }
    let status = child.wait()?;

    let skips: Vec<String> = std::fs::read_to_string(&skipped_file)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect();
    if !skips.is_empty() {
        println!("test: {} tests could not run on this machine:", skips.len());
        for s in &skips {
            println!("test:   skipped {s}");
        }
    }
    if ignored > 0 {
        println!("test: {ignored} tests are marked #[ignore]");
    }
    let host_ok = status.success();
    let mut skipped = skips.len() as u64;
    let mut passed = passed.saturating_sub(skipped);

    // The fuzz layer: each target for a bounded time; a crash is a failed test.
    if host_ok {
        println!("test: fuzz layer (cargo xtask fuzz --seconds {FUZZ_SECONDS})");
        match crate::fuzz::run_bounded(workspace, FUZZ_SECONDS, &[]) {
            Ok(outcome) => {
                for (_, result) in &outcome.results {
                    match result {
                        Ok(_) => passed += 1,
                        Err(_) => failed += 1,
                    }
                }
            }
            Err(error) => {
                println!("test: the fuzz layer could not run: {error:#}");
                failed += 1;
            }
        }
    }

    // The VM test layer: the same privileged tests on the kernels the host is not.
    if !vm {
        println!("test: VM layer not run (--no-vm): these results are for this kernel only");
    } else if host_ok {
        println!("test: VM layer (cargo xtask vm-test)");
        match crate::vm_test::run_layer(workspace) {
            Ok(vm) => {
                passed += vm.counts.passed;
                failed += vm.counts.failed;
                skipped += vm.counts.skipped;
            }
            Err(error) => {
                println!("test: the VM layer could not run: {error:#}");
                failed += 1;
            }
        }
    } else {
        println!("test: VM layer not run: the host tests failed");
    }

    println!("tests: {passed} passed, {failed} failed, {skipped} skipped");
    if !host_ok {
        bail!("some tests failed: see the cargo output above");
    }
    if failed > 0 {
        bail!("some tests failed in the fuzz or VM layer: see above");
    }
    Ok(())
}
