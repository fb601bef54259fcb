//! `cargo xtask setup`: install what building and testing agent-supervisor need.
//!
//! Each step checks first and only acts when something is missing, so a second run takes
//! well under a second and changes nothing. Each step prints one line: `ok` (already there)
//! or `installed`.
//!
//! The steps, in order (later ones need earlier ones: bpf-linker's build needs a C compiler):
//! 1. Debian packages ([`APT_PACKAGES`]) via `apt-get`, as root or through `sudo`.
//! 2. The nightly toolchain's `rust-src` component (`aya-build` builds the eBPF crate with
//!    `cargo +nightly build -Z build-std=core --target bpfel-unknown-none`).
//! 3. bpf-linker [`BPF_LINKER_VERSION`], built against the nightly toolchain's own libLLVM,
//!    so no system LLVM is needed (Debian's is too old to read nightly's bitcode).
//! 4. cargo-fuzz [`CARGO_FUZZ_VERSION`].
//! 5. A Python virtual environment with the pinned packages of the example approval client
//!    (`examples/python-approver/requirements.txt`, from PyPI) in [`python_approver_venv`],
//!    which `tests/grpc_clients.rs` runs the example with.
//! 6. The buf CLI [`BUF_VERSION`] from npm (`@bufbuild/buf`) in [`buf_prefix`]: `buf curl` is
//!    the second, non-Rust gRPC client of tests/grpc_clients.rs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::process::{self, find_in_path, probe};

/// Debian packages the build, the test suite and the benchmarks need, with the reason for
/// each. Extend this list rather than installing packages anywhere else.
pub const APT_PACKAGES: &[(&str, &str)] = &[
    (
        "build-essential",
        "make and cc, for the C-build benchmark and bpf-linker's build",
    ),
    (
        "bubblewrap",
        "bwrap, a peer sandbox for side-by-side benchmarks",
    ),
    (
        "busybox-static",
        "vm-test: the guests' /init and tools (copied into the initramfs)",
    ),
    ("cpio", "vm-test: packs the guests' initramfs"),
    ("firejail", "a peer sandbox for side-by-side benchmarks"),
    ("hyperfine", "the benchmark runner"),
    ("iproute2", "ip, for network namespace tests"),
    (
        "kmod",
        "vm-test: depmod and modprobe --show-depends for the guest kernels' modules",
    ),
    ("python3", "test agents and the demo agent's TCP connect"),
    (
        "python3-venv",
        "the example Python approval client's virtual environment (tests/grpc_clients.rs)",
    ),
    (
        "qemu-system-x86",
        "vm-test: boots the test kernels (TCG, or KVM where it works)",
    ),
    (
        "util-linux",
        "unshare, nsenter, mount for the integration tests",
    ),
    (
        "xz-utils",
        "vm-test: decompresses the guest kernels' .ko.xz modules",
    ),
];

/// The bpf-linker release that builds with the installed toolchains (see
/// shared/KERNEL-FACTS.md).
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// The LLVM major version bpf-linker is built for; it must be the nightly toolchain's, whose
/// libLLVM bpf-linker links against (the eBPF crate's bitcode comes from that nightly).
const BPF_LINKER_LLVM_MAJOR: &str = "22";

/// Runs every set-up step.
pub fn run() -> Result<()> {
    step("Debian packages", apt_packages)?;
    step("nightly rust-src", nightly_rust_src)?;
    step(&format!("bpf-linker {BPF_LINKER_VERSION}"), bpf_linker)?;
    step(&format!("cargo-fuzz {CARGO_FUZZ_VERSION}"), cargo_fuzz)?;
    step("python approver venv", python_approver)?;
    step(&format!("buf {BUF_VERSION} (npm)"), buf)?;
    Ok(())
}

/// The cargo-fuzz release `cargo xtask fuzz` (and the test suite's fuzz layer) runs.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// What a step did.
enum Outcome {
    /// Already in place; nothing changed.
    Ok,
    /// Installed now; the string says what.
    Installed(String),
}

fn step(name: &str, action: fn() -> Result<Outcome>) -> Result<()> {
    let started = std::time::Instant::now();
    let outcome = action().with_context(|| format!("set-up step `{name}` failed"))?;
    match outcome {
        Outcome::Ok => println!("setup: {name:<24} ok"),
        Outcome::Installed(what) => println!(
            "setup: {name:<24} installed ({what}, {:.0?})",
            started.elapsed()
        ),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Debian packages

fn apt_packages() -> Result<Outcome> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .map(|(name, _why)| *name)
        .filter(|name| !dpkg_installed(name))
        .collect();
    if missing.is_empty() {
        return Ok(Outcome::Ok);
    }
    if find_in_path("apt-get").is_none() {
        bail!(
            "these packages are missing and there is no apt-get to install them: {}; \
             install them with your system's package manager (the list is APT_PACKAGES in \
             xtask/src/setup.rs)",
            missing.join(" ")
        );
    }
    let hint = format!(
        "install them by hand with `apt-get update && apt-get install -y {}`",
        missing.join(" ")
    );
    println!("setup: installing Debian packages: {}", missing.join(" "));
    process::run(&mut as_root(["apt-get", "update", "-q"])?, &hint)?;
    let mut install = as_root(["apt-get", "install", "-y", "-q", "--no-install-recommends"])?;
    install
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    process::run(&mut install, &hint)?;
    if let Some(still) = missing.iter().find(|name| !dpkg_installed(name)) {
        bail!("apt-get reported success but `{still}` is still not installed: {hint}");
    }
    Ok(Outcome::Installed(missing.join(" ")))
}

/// Whether dpkg knows `package` as fully installed (not merely known, or only its
/// configuration files left).
fn dpkg_installed(package: &str) -> bool {
    probe(Command::new("dpkg").args(["-s", package])).is_some_and(|status| {
        status
            .lines()
            .any(|line| line == "Status: install ok installed")
    })
}

/// `args` as a command run as root: directly when we are root, else through `sudo`.
fn as_root<const N: usize>(args: [&str; N]) -> Result<Command> {
    let [program, rest @ ..] = args.as_slice() else {
        unreachable!("as_root needs a program")
    };
    if effective_uid()? == 0 {
        let mut cmd = Command::new(program);
        cmd.args(rest);
        return Ok(cmd);
    }
    if find_in_path("sudo").is_none() {
        bail!("installing Debian packages needs root, and there is no sudo: run `cargo xtask setup` as root");
    }
    let mut cmd = Command::new("sudo");
    cmd.args(args);
    Ok(cmd)
}

/// Our effective user id, from `/proc/self/status` (no `unsafe` libc call needed).
fn effective_uid() -> Result<u32> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .context("no effective uid in the `Uid:` line of /proc/self/status")
}

// ---------------------------------------------------------------------------------------------
// Rust toolchain

fn nightly_rust_src() -> Result<Outcome> {
    // A fresh machine may have only the stable toolchain: install nightly (minimal profile)
    // with rust-src in one go.
    let has_nightly =
        process::probe(Command::new("rustup").args(["run", "nightly", "rustc", "--version"]))
            .is_some();
    if !has_nightly {
        process::run(
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]),
            "the eBPF build and the fuzzers need a nightly toolchain; check rustup's output above",
        )?;
        return Ok(Outcome::Installed(
            "the nightly toolchain with rust-src".into(),
        ));
    }
    let installed = process::output(
        Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]),
        "is the nightly toolchain installed? `rustup toolchain install nightly --component rust-src`",
    )?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(Outcome::Ok);
    }
    process::run(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        "the eBPF build needs nightly's rust-src (for -Z build-std=core); check rustup's output above",
    )?;
    Ok(Outcome::Installed("rust-src".into()))
}

// ---------------------------------------------------------------------------------------------
// cargo-fuzz

fn cargo_fuzz() -> Result<Outcome> {
    let current = process::probe(Command::new("cargo").args(["fuzz", "--version"]))
        .is_some_and(|v| v.contains(CARGO_FUZZ_VERSION));
    if current {
        return Ok(Outcome::Ok);
    }
    let mut install = Command::new("rustup");
    install
        .args(["run", "stable", "cargo", "install", "cargo-fuzz"])
        .args(["--version", CARGO_FUZZ_VERSION, "--locked", "--force"])
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .current_dir(cargo_home()?);
    println!("setup: building cargo-fuzz {CARGO_FUZZ_VERSION} (takes about a minute)");
    process::run(
        &mut install,
        "cargo-fuzz could not be built; the output above says why (it needs crates.io)",
    )?;
    Ok(Outcome::Installed(format!(
        "cargo-fuzz {CARGO_FUZZ_VERSION}"
    )))
}

// ---------------------------------------------------------------------------------------------
// The example Python approval client's packages

/// The example approval client's pinned requirements, relative to the workspace.
pub const PYTHON_APPROVER_REQUIREMENTS: &str = "examples/python-approver/requirements.txt";

/// The virtual environment with [`PYTHON_APPROVER_REQUIREMENTS`] installed:
/// `$XDG_CACHE_HOME/agent-supervisor/python-approver-venv` (`~/.cache/...`). It holds a copy of
/// the requirements it was made from (`requirements.installed.txt`); tests/grpc_clients.rs
/// finds it the same way and skips, saying so, when it is missing or stale.
pub fn python_approver_venv() -> Result<PathBuf> {
    Ok(cache_dir()?.join("python-approver-venv"))
}

/// `$XDG_CACHE_HOME/agent-supervisor` (`~/.cache/agent-supervisor`): the test clients'
/// packages.
fn cache_dir() -> Result<PathBuf> {
    let cache = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => home()?.join(".cache"),
    };
    Ok(cache.join("agent-supervisor"))
}

fn python_approver() -> Result<Outcome> {
    let requirements_path = crate::workspace_root().join(PYTHON_APPROVER_REQUIREMENTS);
    let requirements = fs::read_to_string(&requirements_path)
        .with_context(|| format!("reading {}", requirements_path.display()))?;
    let venv = python_approver_venv()?;
    let stamp = venv.join("requirements.installed.txt");
    let python = venv.join("bin/python");
    let imports = "import grpc, grpc_tools, grpc_health.v1, grpc_reflection.v1alpha";
    if fs::read_to_string(&stamp).is_ok_and(|installed| installed == requirements)
        && probe(Command::new(&python).args(["-c", imports])).is_some()
    {
        return Ok(Outcome::Ok);
    }
    // Made afresh: an environment of other pins (or a broken one) is not patched up.
    if venv.exists() {
        fs::remove_dir_all(&venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    process::run(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        "python3 -m venv failed: is python3-venv installed (the Debian packages step)?",
    )?;
    println!(
        "setup: installing {PYTHON_APPROVER_REQUIREMENTS} from PyPI into {}",
        venv.display()
    );
    process::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements_path),
        "pip could not install the example approval client's requirements (it needs PyPI)",
    )?;
    process::run(
        Command::new(&python).args(["-c", imports]),
        "the packages installed but do not import",
    )?;
    fs::write(&stamp, &requirements).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(Outcome::Installed(format!(
        "{PYTHON_APPROVER_REQUIREMENTS} in {}",
        venv.display()
    )))
}

// ---------------------------------------------------------------------------------------------
// buf: a second, non-Rust gRPC client (Go) for the reflection test

/// The release of the buf CLI (npm package `@bufbuild/buf`, which ships the binary) whose
/// `buf curl` lists the daemon's services by reflection in tests/grpc_clients.rs.
pub const BUF_VERSION: &str = "1.75.0";

/// Where `npm install --prefix` puts buf: `$XDG_CACHE_HOME/agent-supervisor/npm`; the binary
/// is `node_modules/.bin/buf` under it.
pub fn buf_prefix() -> Result<PathBuf> {
    Ok(cache_dir()?.join("npm"))
}

fn buf() -> Result<Outcome> {
    let prefix = buf_prefix()?;
    let bin = prefix.join("node_modules/.bin/buf");
    if probe(Command::new(&bin).arg("--version")).is_some_and(|v| v.trim() == BUF_VERSION) {
        return Ok(Outcome::Ok);
    }
    if find_in_path("npm").is_none() {
        bail!("npm is missing: install Node.js with npm, then run `cargo xtask setup` again");
    }
    fs::create_dir_all(&prefix).with_context(|| format!("creating {}", prefix.display()))?;
    process::run(
        Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--no-save",
                "--prefix",
            ])
            .arg(&prefix)
            .arg(format!("@bufbuild/buf@{BUF_VERSION}")),
        "npm could not install @bufbuild/buf (it needs the npm registry)",
    )?;
    let version = process::output(
        Command::new(&bin).arg("--version"),
        "the buf that npm installed does not run",
    )?;
    if version.trim() != BUF_VERSION {
        bail!(
            "{} reports {version:?}, expected {BUF_VERSION}",
            bin.display()
        );
    }
    Ok(Outcome::Installed(bin.display().to_string()))
}

// ---------------------------------------------------------------------------------------------
// bpf-linker

fn bpf_linker() -> Result<Outcome> {
    if find_in_path("bpf-linker").is_some_and(|path| bpf_linker_is_current(&path)) {
        return Ok(Outcome::Ok);
    }

    let libllvm = nightly_libllvm()?;
    let prefix = llvm_prefix_dir()?;
    link_llvm_prefix(&prefix, &libllvm)?;

    // `cargo +stable install`, spelled as `rustup run` so it works whatever `cargo` is on PATH.
    // Run outside the workspace (its .cargo/config.toml must not apply) and with a private
    // target directory (a CARGO_TARGET_DIR of the caller would keep 1 GB of LLVM objects).
    let mut install = Command::new("rustup");
    install
        .args(["run", "stable", "cargo", "install", "bpf-linker"])
        .args(["--version", BPF_LINKER_VERSION, "--locked", "--force"])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{BPF_LINKER_LLVM_MAJOR}"))
        .env("LLVM_PREFIX", &prefix)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .current_dir(&prefix);
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {} (takes 1 to 2 minutes)",
        libllvm.display()
    );
    process::run(
        &mut install,
        "bpf-linker could not be built; the output above says why (it needs crates.io and a C compiler)",
    )?;

    let installed = cargo_home()?.join("bin/bpf-linker");
    if !bpf_linker_is_current(&installed) {
        bail!(
            "{} was installed but `{0} --version` does not report {BPF_LINKER_VERSION}",
            installed.display()
        );
    }
    match find_in_path("bpf-linker") {
        Some(found) if found == installed => {}
        Some(found) => bail!(
            "bpf-linker {BPF_LINKER_VERSION} is installed in {} but PATH finds {} first: \
             remove that one or put {} earlier in PATH",
            installed.display(),
            found.display(),
            installed.parent().unwrap_or(Path::new("/")).display()
        ),
        None => bail!(
            "bpf-linker {BPF_LINKER_VERSION} is installed in {} but that directory is not in \
             PATH: add it (`export PATH=\"{}:$PATH\"`)",
            installed.display(),
            installed.parent().unwrap_or(Path::new("/")).display()
        ),
    }
    Ok(Outcome::Installed(installed.display().to_string()))
}

/// Whether the bpf-linker at `path` runs (its libLLVM still loads) and is the version we want.
fn bpf_linker_is_current(path: &Path) -> bool {
    probe(Command::new(path).arg("--version")).is_some_and(|version| {
        version
            .split_whitespace()
            .any(|word| word == BPF_LINKER_VERSION)
    })
}

/// The nightly toolchain's shared libLLVM (the ELF file, not the `INPUT(...)` linker script
/// next to it), after checking its LLVM major version is the one bpf-linker is built for.
fn nightly_libllvm() -> Result<PathBuf> {
    let hint = "is the nightly toolchain installed? `rustup toolchain install nightly`";
    let version = process::output(
        Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]),
        hint,
    )?;
    let llvm = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` printed no `LLVM version:` line")?;
    if llvm.split('.').next() != Some(BPF_LINKER_LLVM_MAJOR) {
        bail!(
            "the nightly toolchain uses LLVM {llvm}, but bpf-linker is built here for LLVM \
             {BPF_LINKER_LLVM_MAJOR}: update BPF_LINKER_VERSION and BPF_LINKER_LLVM_MAJOR in \
             xtask/src/setup.rs together with the nightly toolchain"
        );
    }

    let sysroot = process::output(
        Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]),
        hint,
    )?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let entries = fs::read_dir(&lib).with_context(|| format!("listing {}", lib.display()))?;
    let mut candidates: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("libLLVM"))
        })
        .filter(|path| is_elf(path))
        .collect();
    candidates.sort();
    match candidates.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "no libLLVM shared library in {}: reinstall the nightly toolchain \
             (`rustup toolchain install nightly --force`)",
            lib.display()
        ),
        many => bail!(
            "several libLLVM shared libraries in {}, expected one: {many:?}",
            lib.display()
        ),
    }
}

fn is_elf(path: &Path) -> bool {
    use std::io::Read as _;
    let mut magic = [0_u8; 4];
    fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut magic))
        .is_ok_and(|()| magic == *b"\x7fELF")
}

/// `LLVM_PREFIX` for bpf-linker's build: a directory whose `lib/` holds `libLLVM.so` and a
/// link named like the library itself (its soname), both pointing at nightly's libLLVM.
/// bpf-linker keeps a RUNPATH to this `lib/`, so it must stay where it is.
fn llvm_prefix_dir() -> Result<PathBuf> {
    let data = match std::env::var_os("XDG_DATA_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => home()?.join(".local/share"),
    };
    Ok(data.join("agent-supervisor/llvm-prefix"))
}

fn link_llvm_prefix(prefix: &Path, libllvm: &Path) -> Result<()> {
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let own_name = libllvm
        .file_name()
        .context("libLLVM path has no file name")?;
    // Drop links left from an older nightly, then (re)create ours.
    for entry in fs::read_dir(&lib).with_context(|| format!("listing {}", lib.display()))? {
        let path = entry?.path();
        let is_ours = path.file_name() == Some(own_name) || path.ends_with("libLLVM.so");
        if !is_ours && path.is_symlink() {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    for name in [own_name, "libLLVM.so".as_ref()] {
        let link = lib.join(name);
        if fs::read_link(&link).is_ok_and(|target| target == libllvm) {
            continue;
        }
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        std::os::unix::fs::symlink(libllvm, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), libllvm.display()))?;
    }
    Ok(())
}

fn home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set")
}

/// Where `cargo install` puts binaries (`$CARGO_HOME/bin`).
fn cargo_home() -> Result<PathBuf> {
    match std::env::var_os("CARGO_HOME") {
        Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir)),
        _ => Ok(home()?.join(".cargo")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_prefix_links_are_made_once_and_follow_a_new_nightly() {
        let dir =
            std::env::temp_dir().join(format!("xtask-llvm-prefix-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let toolchain = dir.join("toolchain");
        fs::create_dir_all(&toolchain).unwrap();
        let old = toolchain.join("libLLVM.so.22.1-rust-old");
        let new = toolchain.join("libLLVM.so.22.1-rust-new");
        fs::write(&old, b"\x7fELF").unwrap();
        fs::write(&new, b"\x7fELF").unwrap();
        let prefix = dir.join("prefix");

        link_llvm_prefix(&prefix, &old).unwrap();
        link_llvm_prefix(&prefix, &old).unwrap();
        assert_eq!(fs::read_link(prefix.join("lib/libLLVM.so")).unwrap(), old);
        assert_eq!(
            fs::read_link(prefix.join("lib/libLLVM.so.22.1-rust-old")).unwrap(),
            old
        );

        link_llvm_prefix(&prefix, &new).unwrap();
        assert_eq!(fs::read_link(prefix.join("lib/libLLVM.so")).unwrap(), new);
        assert_eq!(
            fs::read_link(prefix.join("lib/libLLVM.so.22.1-rust-new")).unwrap(),
            new
        );
        assert!(prefix
            .join("lib/libLLVM.so.22.1-rust-old")
            .symlink_metadata()
            .is_err());

        assert!(is_elf(&new));
        assert!(!is_elf(&prefix));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn apt_packages_are_listed_once_with_a_reason() {
        let mut names: Vec<&str> = APT_PACKAGES.iter().map(|(name, _)| *name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), APT_PACKAGES.len());
        assert!(APT_PACKAGES.iter().all(|(_, why)| !why.is_empty()));
    }
}
