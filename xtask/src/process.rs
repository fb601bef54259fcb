//! Running external commands with errors that say what failed and what to do.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// `program arg1 arg2 …`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` with inherited stdio and fails unless it exits successfully.
/// `hint` is appended to the error: what the user can do about it.
pub fn run(cmd: &mut Command, hint: &str) -> Result<()> {
    let line = describe(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`: {hint}"))?;
    if !status.success() {
        bail!("`{line}` failed ({status}): {hint}");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout when it exits successfully, `None` when it cannot be
/// started or fails. For probes such as "is this installed?".
pub fn probe(cmd: &mut Command) -> Option<String> {
    let output = cmd.output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `cmd`, capturing its output, and returns stdout; fails with stderr in the message.
pub fn output(cmd: &mut Command, hint: &str) -> Result<String> {
    let line = describe(cmd);
    let output = cmd
        .output()
        .with_context(|| format!("could not start `{line}`: {hint}"))?;
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}): {}\n{hint}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The first executable file called `name` in the directories of `PATH`.
pub fn find_in_path(name: impl AsRef<OsStr>) -> Option<PathBuf> {
    let name = name.as_ref();
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}
