//! Builds the eBPF programs (`agent-supervisor-ebpf`) and leaves the object in `OUT_DIR`,
//! where `src/ebpf.rs` embeds it.
//!
//! This is aya-template's pattern: `aya_build::build_ebpf` runs
//! `cargo +nightly build -Z build-std=core --release --target bpfel-unknown-none` for the eBPF
//! crate (with BTF), linked by `bpf-linker`. Both prerequisites, bpf-linker and the nightly
//! `rust-src` component, are installed by `cargo xtask setup`; this script checks for them
//! first so that a missing one gives an error that says so.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context as _};

/// The eBPF crate, a member of this workspace.
const EBPF_PACKAGE: &str = "agent-supervisor-ebpf";

const RUN_SETUP: &str = "run `cargo xtask setup` (it installs everything the build needs)";

fn main() {
    // Print the error chain ourselves: returning it from main would add a backtrace when
    // RUST_BACKTRACE is set, burying the one line that says what to do.
    if let Err(error) = build_protos()
        .and_then(|()| build_ebpf())
        .and_then(|()| hash_ebpf())
    {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

/// The gRPC API (`proto/agent_supervisor/v1/*.proto`): prost messages and tonic services, and
/// the descriptor set that server reflection serves. protoc comes from protoc-bin-vendored,
/// so a fresh clone needs nothing installed for this.
fn build_protos() -> anyhow::Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path()
        .context("protoc-bin-vendored has no protoc for this platform")?;
    std::env::set_var("PROTOC", protoc);
    let out = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
    let proto_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let file = proto_dir.join("agent_supervisor/v1/supervisor.proto");
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("agent_supervisor_v1_descriptor.bin"))
        .compile_protos(&[file], &[proto_dir])
        .context("compiling proto/agent_supervisor/v1/supervisor.proto")
}

fn build_ebpf() -> anyhow::Result<()> {
    check_bpf_linker()?;
    check_nightly_rust_src()?;

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("`cargo metadata` failed while looking for the eBPF crate")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|package| package.name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("package {EBPF_PACKAGE} is not in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", ebpf.manifest_path))?;

    // aya-build forwards every line the nested cargo prints as a `cargo:warning`; keep that
    // to the compiler's own diagnostics instead of one warning per crate compiled.
    std::env::set_var("CARGO_TERM_QUIET", "true");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .with_context(|| {
        format!(
            "building the eBPF programs ({EBPF_PACKAGE}) failed: see the warnings above for \
             the compiler's output; if a tool is missing, {RUN_SETUP}"
        )
    })
}

/// The SHA-256 of the eBPF object, next to it in `OUT_DIR` (`agent-supervisor-ebpf.sha256`, 32
/// bytes): part of the pinned set's id (`src/ebpf/pinned.rs`), computed here so no session
/// hashes the object at run time.
fn hash_ebpf() -> anyhow::Result<()> {
    use sha2::Digest as _;
    let out = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
    let object = out.join(EBPF_PACKAGE);
    let bytes = std::fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
    let digest = sha2::Sha256::digest(&bytes);
    let path = out.join(format!("{EBPF_PACKAGE}.sha256"));
    std::fs::write(&path, digest).with_context(|| format!("writing {}", path.display()))
}

/// bpf-linker must be on `PATH`: rustc calls it to link the eBPF object.
fn check_bpf_linker() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    let Some(bpf_linker) = find_in_path("bpf-linker") else {
        bail!("bpf-linker is not on PATH; it is needed to build the eBPF programs: {RUN_SETUP}");
    };
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
    let works = Command::new(&bpf_linker)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !works {
        bail!(
            "`{} --version` fails (was the nightly toolchain whose libLLVM it uses updated?): \
             {RUN_SETUP}",
            bpf_linker.display()
        );
    }
    Ok(())
}

/// `-Z build-std=core` needs the nightly toolchain's `rust-src` component.
fn check_nightly_rust_src() -> anyhow::Result<()> {
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .env_remove("RUSTC")
        .output()
        .context("could not run `rustup run nightly rustc`: is rustup installed?")?;
    if !sysroot.status.success() {
        bail!(
            "the nightly toolchain is not usable ({}): install it with \
             `rustup toolchain install nightly`, then {RUN_SETUP}",
            String::from_utf8_lossy(&sysroot.stderr).trim()
        );
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let core_src = sysroot.join("lib/rustlib/src/rust/library/core");
    if !core_src.is_dir() {
        bail!(
            "the nightly toolchain has no rust-src component ({} is missing): {RUN_SETUP}",
            core_src.display()
        );
    }
    Ok(())
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}
