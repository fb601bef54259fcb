//! `cargo xtask test`: set-up, then every test layer, failing on the first that fails.
//!
//! Layers, in order (see STYLE.md "Test in layers"):
//! 1. `cargo test --workspace`: unit tests and the privileged integration tests (CI is root).
//! 2. VM tests for kernels and LSMs the host lacks: `cargo xtask vm-test`, not written yet.
//!    When it exists, call it from [`run`] where the hook comment says so.
//!
//! A test that cannot run on this machine records why in `target/tmp/skipped.txt` (see
//! `tests/common/mod.rs`); cargo counts it as passed, so the summary line at the end moves it
//! to "skipped" and lists the reasons. The last line is `tests: N passed, N failed, N skipped`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::setup;

pub fn run(workspace: &Path) -> Result<()> {
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
    let skipped = skips.len() as u64;
    println!(
        "tests: {} passed, {failed} failed, {skipped} skipped",
        passed.saturating_sub(skipped)
    );
    if !status.success() {
        bail!("some tests failed: see the cargo output above");
    }

    // Hook for the VM test layer: once `cargo xtask vm-test` exists, run it here, e.g.
    // `crate::vm_test::run(workspace)?;` (it installs qemu in its own set-up step).
    Ok(())
}
