//! Rebuild the eBPF object when `bpf-linker` changes.
//!
//! Building this crate for `bpfel-unknown-none` uses `bpf-linker` from `PATH`, a dependency
//! cargo cannot see. Like aya-template, tell cargo to rerun when the binary changes. A missing
//! bpf-linker is reported by `agent-supervisor/build.rs` (which says to run
//! `cargo xtask setup`), so this script does not fail on it: host builds (clippy) do not link.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    if let Some(bpf_linker) = find_in_path("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
