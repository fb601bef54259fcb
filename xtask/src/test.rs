//! `cargo xtask test`: set-up, then every test layer, failing on the first that fails.
//!
//! Layers, in order (see STYLE.md "Test in layers"):
//! 1. `cargo test --workspace`: unit tests and the privileged integration tests (CI is root).
//! 2. VM tests for kernels and LSMs the host lacks: `cargo xtask vm-test`, not written yet.
//!    When it exists, call it from [`run`] where the hook comment says so.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::{process, setup};

pub fn run(workspace: &Path) -> Result<()> {
    setup::run()?;

    println!("test: cargo test --workspace --color=never");
    process::run(
        Command::new(crate::cargo())
            .args(["test", "--workspace", "--color=never"])
            .current_dir(workspace),
        "some tests failed: see the cargo output above",
    )?;

    // Hook for the VM test layer: once `cargo xtask vm-test` exists, run it here, e.g.
    // `crate::vm_test::run(workspace)?;` (it installs qemu in its own set-up step).

    println!("test: all test layers passed");
    Ok(())
}
