//! `cargo xtask`: the project's set-up, test and demo commands.
//!
//! `cargo xtask` is an alias (see `.cargo/config.toml`) for `cargo run --package xtask --`.
//! This crate deliberately depends on nothing but `anyhow` and `clap`, and never on
//! `agent-supervisor`: that crate's build script needs `bpf-linker`, which `setup` installs.
//!
//! - [`setup`]: install what the build and the test suite need (idempotent, fast when done).
//! - [`test`]: set-up, then the whole test suite.
//! - [`demo`]: set-up, build the release supervisor, and run an example agent under it.
//! - [`bench`]: what supervision costs: start-up, opens, a C build; bare, peers, supervised.
//! - [`fuzz`]: bounded `cargo fuzz` runs of the policy parser and the audit verifier.
//! - [`install`]: the release binary, the systemd unit and the daemon's configuration.

mod bench;
mod bench_dns;
mod bench_first_load;
mod demo;
mod fuzz;
mod install;
mod process;
mod setup;
mod test;
mod vm_test;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Developer tasks for agent-supervisor.
///
/// Every command first runs the set-up steps, which are idempotent: each checks before it
/// does anything and prints one line ("ok" or "installed").
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    version,
    about,
    long_about
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building and testing need: Debian packages (apt-get, root or sudo), the
    /// nightly `rust-src` component, bpf-linker 0.13.0 built against the nightly
    /// toolchain's own libLLVM, cargo-fuzz, and the test clients of tests/grpc_clients.rs (the
    /// Python example's pinned packages in a venv, buf from npm, under ~/.cache/agent-supervisor).
    Setup,
    /// Set up, then run the whole test suite (`cargo test --workspace --color=never`).
    /// Exits non-zero when anything fails. This is what CI runs (`.ci/run`).
    ///
    /// After the host tests, the VM layer (`cargo xtask vm-test`'s matrix: the privileged
    /// tests on Debian's 6.1, 6.12 and newest kernels in QEMU, BPF LSM active) runs too; it
    /// takes about 25 minutes under TCG. `--no-vm` skips it for a quick local loop.
    Test {
        /// Skip the VM layer (the summary says it was not run). CI never passes this.
        #[arg(long)]
        no_vm: bool,
    },
    /// Set up, build the release supervisor, and run `examples/demo-agent.sh` under the
    /// built-in default policy in a fresh temporary workspace.
    ///
    /// The agent tries allowed, denied and "ask" actions. In a terminal the supervisor
    /// prompts for the "ask" ones; without a terminal on stdin the demo passes `--headless`
    /// and they are denied.
    Demo,
    /// Set up, build the release supervisor, and measure `/bin/true` start-up, 10,000 opens
    /// in the workspace and a `make -j2` C build: bare, under bwrap/firejail, and under the
    /// supervisor with the default policy; and connections per second to an allowed host
    /// name and the DNS latency the session resolver adds (root: it creates a veth pair).
    /// Prints a Markdown table of medians and ratios.
    Bench {
        /// Only the DNS case (connections to an allowed name, resolver latency).
        #[arg(long)]
        dns_only: bool,
    },
    /// Set up, build the tests, and run agent-supervisor's privileged tests inside QEMU
    /// guests on Debian kernels 6.1, 6.12 and the newest 7.x (with BPF LSM enabled).
    ///
    /// Kernels are fetched once with a private apt configuration into
    /// ~/.cache/agent-supervisor/vm. Prints a table kernel x test executable of
    /// passed/failed/skipped, each kernel's Landlock ABI and whether BPF LSM is active, and
    /// exits non-zero on any failure. See docs/vm-test.md.
    VmTest(vm_test::Options),
    /// Set up, build the `cargo fuzz` targets of fuzz/ (policy parser, audit verifier) and run
    /// each for a bounded time; fails on any crash, naming the crash input.
    Fuzz(fuzz::Options),
    /// Set up, build the release supervisor, and install it with its systemd unit and the
    /// daemon's configuration (kept if present). See docs/daemon.md.
    Install(install::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let workspace = workspace_root();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Test { no_vm } => test::run(&workspace, !no_vm),
        Command::Demo => demo::run(&workspace),
        Command::Bench { dns_only } => bench::run(&workspace, dns_only),
        Command::VmTest(options) => vm_test::run(&workspace, &options),
        Command::Install(options) => install::run(&workspace, &options),
        Command::Fuzz(options) => fuzz::run(&workspace, &options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The chain of causes, without the backtrace anyhow adds under RUST_BACKTRACE:
            // these errors say what to do, not where in xtask they came from.
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The cargo workspace this xtask belongs to (the parent of `xtask/`).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ has a parent directory")
        .to_path_buf()
}

/// The `cargo` that runs this xtask (so nested builds use the same toolchain), or the
/// `cargo` on `PATH`.
fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}
