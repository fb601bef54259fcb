//! Builds the test executables on the host and picks the ones the guests run.
//!
//! `cargo test --workspace --no-run --message-format=json` builds every test executable and
//! reports each as a `compiler-artifact` message with `profile.test == true` and its
//! `executable` path. The guests see the host's root read-only at the same paths, so these
//! executables (and the `agent-supervisor` binary they run, via `CARGO_BIN_EXE_…`) run there
//! unchanged. Only the packages in [`GUEST_PACKAGES`] are run in the guests: the others' tests
//! are pure (the policy engine, the shared types, xtask) and say nothing about a kernel.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

use super::json::{self, Value};

/// Packages (by directory in the workspace) whose test executables run in the guests: the
/// supervisor's unit tests (eBPF loading, sys wrappers) and the privileged integration tests
/// in the top-level `tests/` directory.
pub const GUEST_PACKAGES: &[&str] = &["agent-supervisor"];

/// One test executable to run in the guests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestBinary {
    /// Row name in the results table: the integration test's name (`behaviour`), `lib` for
    /// the library's unit tests, `bin:NAME` for a binary's unit tests. No spaces.
    pub name: String,
    /// The executable, an absolute host path.
    pub executable: PathBuf,
    /// The package's directory: cargo runs tests there, so the guest does too.
    pub package_dir: PathBuf,
}

/// The cargo profile the guests' tests are built with: `dev` (debug assertions and overflow
/// checks stay on) optimised, because under TCG the unoptimised supervisor spends 5 to 8 s
/// starting one session, the optimised one 1.5 s. Defined on the command line (`--config`),
/// so the workspace's Cargo.toml is untouched; its own output directory,
/// `target/vm-test/`, keeps the host layer's debug build from being rebuilt back and forth.
pub const PROFILE: &str = "vm-test";
const PROFILE_CONFIG: &[&str] = &[
    "profile.vm-test.inherits=\"dev\"",
    "profile.vm-test.opt-level=2",
    "profile.vm-test.debug=\"line-tables-only\"",
];

/// Builds the workspace's tests (without running them) and returns the executables of
/// [`GUEST_PACKAGES`], unit tests first, then the integration tests in name order.
/// `optimized` selects [`PROFILE`], else the `dev` profile `cargo test` uses.
pub fn build(workspace: &Path, optimized: bool) -> Result<Vec<TestBinary>> {
    let mut cmd = Command::new(crate::cargo());
    cmd.args(["test", "--workspace", "--no-run", "--message-format=json"]);
    if optimized {
        cmd.args(["--profile", PROFILE]);
        for config in PROFILE_CONFIG {
            cmd.args(["--config", config]);
        }
    }
    cmd.current_dir(workspace).stdout(Stdio::piped());
    println!(
        "vm-test: building the test executables (cargo test --workspace --no-run, {} profile)",
        if optimized { PROFILE } else { "dev" }
    );
    let mut child = cmd
        .spawn()
        .context("could not start `cargo test --no-run`")?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut messages = Vec::new();
    for line in BufReader::new(stdout).lines() {
        messages.push(line.context("reading cargo's JSON messages")?);
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`cargo test --workspace --no-run` failed ({status}): the build errors are above");
    }
    let packages: Vec<PathBuf> = GUEST_PACKAGES.iter().map(|p| workspace.join(p)).collect();
    let mut binaries = Vec::new();
    for line in &messages {
        if !line.starts_with('{') {
            continue;
        }
        let message = json::parse(line).context("cargo printed a JSON message we cannot read")?;
        if let Some(binary) = guest_test_binary(&message, &packages)? {
            binaries.push(binary);
        }
    }
    binaries.sort_by_key(|b| (row_order(&b.name), b.name.clone()));
    binaries.dedup_by(|a, b| a.executable == b.executable);
    if binaries.is_empty() {
        bail!(
            "cargo built no test executables for {}: nothing to run in the guests",
            GUEST_PACKAGES.join(", ")
        );
    }
    Ok(binaries)
}

/// Unit tests first (lib, then bins), then the integration tests.
fn row_order(name: &str) -> u8 {
    match name {
        "lib" => 0,
        n if n.starts_with("bin:") => 1,
        _ => 2,
    }
}

/// The test executable a `compiler-artifact` message describes, if it belongs to one of
/// `packages` (package directories).
fn guest_test_binary(message: &Value, packages: &[PathBuf]) -> Result<Option<TestBinary>> {
    if message.get("reason").and_then(Value::as_str) != Some("compiler-artifact") {
        return Ok(None);
    }
    let is_test = message
        .get("profile")
        .and_then(|p| p.get("test"))
        .and_then(Value::as_bool)
        == Some(true);
    let Some(executable) = message.get("executable").and_then(Value::as_str) else {
        return Ok(None);
    };
    if !is_test {
        return Ok(None);
    }
    let manifest = message
        .get("manifest_path")
        .and_then(Value::as_str)
        .context("a compiler-artifact message without manifest_path")?;
    let package_dir = Path::new(manifest)
        .parent()
        .context("manifest_path has no directory")?
        .to_path_buf();
    if !packages.contains(&package_dir) {
        return Ok(None);
    }
    let target = message
        .get("target")
        .context("an artifact without target")?;
    let target_name = target
        .get("name")
        .and_then(Value::as_str)
        .context("an artifact target without a name")?;
    let kind = target
        .get("kind")
        .and_then(Value::as_array)
        .and_then(|kinds| kinds.first())
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = match kind {
        "lib" | "rlib" | "cdylib" | "staticlib" | "proc-macro" => "lib".to_string(),
        "bin" => format!("bin:{target_name}"),
        _ => target_name.to_string(),
    };
    Ok(Some(TestBinary {
        name,
        executable: PathBuf::from(executable),
        package_dir,
    }))
}

/// Keeps the binaries named in `wanted` (all when it is empty); an unknown name is an error
/// that lists the known ones.
pub fn select(binaries: Vec<TestBinary>, wanted: &[String]) -> Result<Vec<TestBinary>> {
    if wanted.is_empty() {
        return Ok(binaries);
    }
    if let Some(unknown) = wanted
        .iter()
        .find(|w| !binaries.iter().any(|b| &b.name == *w))
    {
        let known: Vec<&str> = binaries.iter().map(|b| b.name.as_str()).collect();
        bail!(
            "no test executable called `{unknown}`; the guests can run: {}",
            known.join(", ")
        );
    }
    Ok(binaries
        .into_iter()
        .filter(|b| wanted.contains(&b.name))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(manifest: &str, kind: &str, name: &str, exe: Option<&str>, test: bool) -> Value {
        let exe = exe.map_or("null".to_string(), |e| format!("\"{e}\""));
        json::parse(&format!(
            r#"{{"reason":"compiler-artifact","manifest_path":"{manifest}","target":{{"kind":["{kind}"],"name":"{name}"}},"profile":{{"test":{test}}},"executable":{exe}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn picks_test_executables_of_guest_packages_only() {
        let packages = [PathBuf::from("/w/agent-supervisor")];
        let integration = artifact(
            "/w/agent-supervisor/Cargo.toml",
            "test",
            "behaviour",
            Some("/w/target/debug/deps/behaviour-1"),
            true,
        );
        let got = guest_test_binary(&integration, &packages).unwrap().unwrap();
        assert_eq!(got.name, "behaviour");
        assert_eq!(got.package_dir, PathBuf::from("/w/agent-supervisor"));

        let lib = artifact(
            "/w/agent-supervisor/Cargo.toml",
            "lib",
            "agent_supervisor",
            Some("/x"),
            true,
        );
        assert_eq!(
            guest_test_binary(&lib, &packages).unwrap().unwrap().name,
            "lib"
        );
        let bin = artifact(
            "/w/agent-supervisor/Cargo.toml",
            "bin",
            "agent-supervisor",
            Some("/y"),
            true,
        );
        assert_eq!(
            guest_test_binary(&bin, &packages).unwrap().unwrap().name,
            "bin:agent-supervisor"
        );

        // The real binary (not a test harness), a library without an executable, and other
        // packages' tests are not run in the guests.
        let real_bin = artifact(
            "/w/agent-supervisor/Cargo.toml",
            "bin",
            "agent-supervisor",
            Some("/z"),
            false,
        );
        assert_eq!(guest_test_binary(&real_bin, &packages).unwrap(), None);
        let no_exe = artifact(
            "/w/agent-supervisor/Cargo.toml",
            "lib",
            "agent_supervisor",
            None,
            false,
        );
        assert_eq!(guest_test_binary(&no_exe, &packages).unwrap(), None);
        let other = artifact(
            "/w/agent-supervisor-policy/Cargo.toml",
            "test",
            "golden",
            Some("/g"),
            true,
        );
        assert_eq!(guest_test_binary(&other, &packages).unwrap(), None);
    }

    #[test]
    fn selection_by_name_refuses_unknown_names() {
        let all = vec![
            TestBinary {
                name: "lib".into(),
                executable: "/a".into(),
                package_dir: "/w".into(),
            },
            TestBinary {
                name: "attacks".into(),
                executable: "/b".into(),
                package_dir: "/w".into(),
            },
        ];
        assert_eq!(select(all.clone(), &[]).unwrap().len(), 2);
        let picked = select(all.clone(), &["attacks".into()]).unwrap();
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[0].name, "attacks");
        let error = select(all, &["nope".into()]).unwrap_err().to_string();
        assert!(error.contains("lib, attacks"), "{error}");
    }
}
