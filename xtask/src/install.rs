//! `cargo xtask install`: the release binary, the systemd unit and the daemon's configuration.
//!
//! 1. set-up, then `cargo build --release --package agent-supervisor`;
//! 2. `<destdir><prefix>/bin/agent-supervisor` (0755);
//! 3. `<destdir>/etc/systemd/system/agent-supervisor.service` from `dist/` (its `ExecStart`
//!    pointing at that binary);
//! 4. `<destdir>/etc/agent-supervisor/config.toml` from `dist/`, only when there is none (an
//!    existing configuration is never overwritten);
//! 5. without `--destdir`: the `agent-supervisor` group (`groupadd --system`) when missing, and
//!    `systemctl daemon-reload` when systemd runs. Then prints how to start it.
//!
//! Idempotent: run it again after an update.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::{process, setup};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Install under this directory instead of / (packaging, trying it out).
    #[arg(long, value_name = "DIR")]
    destdir: Option<PathBuf>,
    /// Where the binary goes (`<prefix>/bin`).
    #[arg(long, default_value = "/usr/local", value_name = "DIR")]
    prefix: PathBuf,
    /// Use the binary already built in target/release (don't run cargo build).
    #[arg(long)]
    no_build: bool,
}

fn under(destdir: &Option<PathBuf>, path: &Path) -> PathBuf {
    match destdir {
        Some(d) => d.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_path_buf(),
    }
}

pub fn run(workspace: &Path, o: &Options) -> Result<()> {
    if !o.no_build {
        setup::run()?;
        println!("install: building the release supervisor");
        process::run(
            Command::new(crate::cargo())
                .args(["build", "--release", "--package", "agent-supervisor"])
                .current_dir(workspace),
            "the supervisor does not build: see the compiler output above",
        )?;
    }
    let built = crate::demo::target_dir(workspace).join("release/agent-supervisor");
    anyhow::ensure!(
        built.is_file(),
        "{} is missing: run without --no-build",
        built.display()
    );
    let bin = o.prefix.join("bin/agent-supervisor");
    let bin_dest = under(&o.destdir, &bin);
    fs::create_dir_all(bin_dest.parent().expect("has a parent"))?;
    // Replace, never write through: a running daemon keeps its old executable.
    let tmp = bin_dest.with_extension("new");
    fs::copy(&built, &tmp).with_context(|| format!("copying to {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
    fs::rename(&tmp, &bin_dest)?;
    println!("install: {}", bin_dest.display());

    let unit = fs::read_to_string(workspace.join("dist/agent-supervisor.service"))
        .context("reading dist/agent-supervisor.service")?
        .replace(
            "ExecStart=/usr/local/bin/agent-supervisor",
            &format!("ExecStart={}", bin.display()),
        );
    let unit_dest = under(
        &o.destdir,
        Path::new("/etc/systemd/system/agent-supervisor.service"),
    );
    fs::create_dir_all(unit_dest.parent().expect("has a parent"))?;
    fs::write(&unit_dest, unit).with_context(|| format!("writing {}", unit_dest.display()))?;
    println!("install: {}", unit_dest.display());

    let config_dest = under(&o.destdir, Path::new("/etc/agent-supervisor/config.toml"));
    if config_dest.exists() {
        println!("install: {} exists: kept", config_dest.display());
    } else {
        fs::create_dir_all(config_dest.parent().expect("has a parent"))?;
        fs::copy(workspace.join("dist/config.toml"), &config_dest)
            .with_context(|| format!("writing {}", config_dest.display()))?;
        fs::set_permissions(&config_dest, fs::Permissions::from_mode(0o644))?;
        println!("install: {}", config_dest.display());
    }

    if o.destdir.is_none() {
        let has_group = Command::new("getent")
            .args(["group", "agent-supervisor"])
            .output()
            .is_ok_and(|o| o.status.success());
        if has_group {
            println!("install: group agent-supervisor: ok");
        } else {
            process::run(
                Command::new("groupadd").args(["--system", "agent-supervisor"]),
                "creating the agent-supervisor group failed (are you root?)",
            )?;
            println!("install: group agent-supervisor: created");
        }
        if Path::new("/run/systemd/system").is_dir() {
            process::run(
                Command::new("systemctl").arg("daemon-reload"),
                "systemctl daemon-reload failed",
            )?;
        }
    }
    println!(
        "install: done. Start it with: systemctl enable --now agent-supervisor; add users to the \
         agent-supervisor group to let them connect; approvers go in [access.approve] of \
         /etc/agent-supervisor/config.toml (see docs/daemon.md)"
    );
    Ok(())
}
