//! `cargo xtask demo`: run an example agent under the built-in default policy.
//!
//! 1. set-up, then `cargo build --release --package agent-supervisor`;
//! 2. make a fresh temporary workspace holding a fake `.env` secret and a copy of
//!    `examples/demo-agent.sh` (copied so that the agent's own script is a workspace file the
//!    default policy lets it read);
//! 3. listen on a TCP port of 127.0.0.1 for the agent's "ask" connection;
//! 4. `agent-supervisor run --policy preset:sandboxed [--headless] --audit FILE -- sh demo-agent.sh PORT` with the
//!    workspace as the current directory and no `--policy`, so the built-in default policy
//!    applies (unless the user has a policy in ~/.config or /etc: the supervisor's first line
//!    names the policy it uses). `--headless` is passed when stdin is not a terminal (then
//!    "ask" means deny); `--audit` when the supervisor's `run --help` offers it.

use std::io::{IsTerminal as _, Write as _};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};
use std::{fs, thread};

use anyhow::{bail, Context as _, Result};

use crate::{process, setup};

/// The example agent, relative to the cargo workspace.
const DEMO_AGENT: &str = "examples/demo-agent.sh";

/// A fake secret for the agent to (fail to) read.
const DOT_ENV: &str =
    "# Created by `cargo xtask demo`: a stand-in secret the agent must not read.\n\
                       DEMO_API_KEY=sk-demo-not-a-real-secret\n";

pub fn run(workspace: &Path) -> Result<()> {
    setup::run()?;

    println!("demo: building the release supervisor");
    process::run(
        Command::new(crate::cargo())
            .args([
                "build",
                "--release",
                "--package",
                "agent-supervisor",
                "--bin",
                "agent-supervisor",
            ])
            .current_dir(workspace),
        "the supervisor does not build: see the compiler output above",
    )?;
    let supervisor = target_dir(workspace).join("release/agent-supervisor");
    run_help(&supervisor)?;

    let demo_dir = fresh_demo_dir()?;
    let agent_workspace = demo_dir.join("workspace");
    fs::create_dir(&agent_workspace)
        .with_context(|| format!("creating {}", agent_workspace.display()))?;
    fs::write(agent_workspace.join(".env"), DOT_ENV).context("writing the demo's .env")?;
    let agent_source = workspace.join(DEMO_AGENT);
    fs::copy(&agent_source, agent_workspace.join("demo-agent.sh"))
        .with_context(|| format!("copying {} into the demo workspace", agent_source.display()))?;

    let port = spawn_listener()?;

    let headless = !std::io::stdin().is_terminal();
    let audit_log = Some(demo_dir.join("audit.jsonl"));
    let mut cmd = Command::new(&supervisor);
    // The built-in default policy, whatever policy files this machine has.
    cmd.args(["run", "--policy", "preset:sandboxed"]);
    if headless {
        cmd.arg("--headless");
    }
    if let Some(audit_log) = &audit_log {
        cmd.arg("--audit").arg(audit_log);
    }
    cmd.args(["--", "sh", "demo-agent.sh"])
        .arg(port.to_string())
        .current_dir(&agent_workspace);

    println!("demo: workspace {}", agent_workspace.display());
    if headless {
        println!("demo: stdin is not a terminal, so --headless: every \"ask\" is answered deny");
    } else {
        println!("demo: the supervisor will prompt you for each \"ask\"");
    }
    println!("demo: running `{}`\n", process::describe(&cmd));
    let status = cmd
        .status()
        .with_context(|| format!("could not start {}", supervisor.display()))?;
    println!();

    match &audit_log {
        Some(path) if path.exists() => {
            let records = fs::read_to_string(path).map_or(0, |log| log.lines().count());
            println!(
                "demo: audit log ({records} records) written to {}",
                path.display()
            );
        }
        Some(path) => println!(
            "demo: no audit log at {} (the supervisor wrote none)",
            path.display()
        ),
        None => println!(
            "demo: `agent-supervisor run --help` offers no --audit option; the audit log is \
             wherever the supervisor writes it by default (see its output above)"
        ),
    }
    println!(
        "demo: files kept in {} (delete it when done)",
        demo_dir.display()
    );

    if !status.success() {
        bail!(
            "the supervisor exited with {status} (the demo agent itself always exits 0): \
             see its output above"
        );
    }
    Ok(())
}

/// The cargo target directory: `CARGO_TARGET_DIR` (relative to the workspace, where the build
/// ran) or `<workspace>/target`.
pub fn target_dir(workspace: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace.join(dir),
        _ => workspace.join("target"),
    }
}

/// `agent-supervisor run --help`, failing clearly when the binary has no `run` command yet.
fn run_help(supervisor: &Path) -> Result<String> {
    let output = Command::new(supervisor)
        .args(["run", "--help"])
        .output()
        .with_context(|| format!("could not start {}", supervisor.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() || !text.to_lowercase().contains("usage") {
        bail!(
            "`{} run --help` {}: this build of the supervisor has no working `run` command yet, \
             so there is nothing to demo. Output was:\n{}",
            supervisor.display(),
            if output.status.success() {
                "printed no usage"
            } else {
                "failed"
            },
            if text.trim().is_empty() {
                "(nothing)"
            } else {
                text.trim()
            }
        );
    }
    Ok(text)
}

/// A new, empty directory under the system's temporary directory.
fn fresh_demo_dir() -> Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let dir = std::env::temp_dir().join(format!(
        "agent-supervisor-demo-{}-{nanos}",
        std::process::id()
    ));
    fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Listens on an ephemeral port of 127.0.0.1 and greets every connection, so the demo shows
/// whether the agent's connect got through. Returns the port.
fn spawn_listener() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("listening on 127.0.0.1 for the demo agent's connection")?;
    let port = listener.local_addr()?.port();
    thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            println!("[demo listener] 127.0.0.1:{port} accepted a connection from the agent");
            // The agent may have given up already; nothing to do about a failed greeting.
            let _ = stream.write_all(b"hello from the demo listener\n");
        }
    });
    Ok(port)
}
