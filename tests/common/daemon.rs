//! The real daemon (`agent-supervisor daemon`) on a temporary socket, for the tests that drive
//! it (tests/daemon.rs, tests/grpc_clients.rs). Each test file adds its own constructor, with
//! the access it needs, and its own methods in an `impl Daemon` block of its own.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A daemon in a temporary directory (socket, configuration, audit log, state, a workspace
/// `ws`), killed (SIGKILL, its sessions with it) and its directory removed on drop.
pub struct Daemon {
    pub dir: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Start a daemon in a new directory `$TMPDIR/{prefix}-{name}-…` (mode 0755: other uids
    /// must reach its socket and files) on a configuration of its socket (mode 0666), audit
    /// log and state directory followed by `access` (the tables of who may do what); waits
    /// until the socket answers.
    pub fn start_with(prefix: &str, name: &str, access: &str) -> Daemon {
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(dir.join("ws")).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "socket = \"{d}/api.sock\"\nsocket_mode = \"0666\"\naudit = \"{d}/log/audit.jsonl\"\n\
                 state_dir = \"{d}/state\"\n{access}",
                d = dir.display()
            ),
        )
        .unwrap();
        let mut d = Daemon {
            dir,
            config,
            child: None,
        };
        d.restart();
        d
    }

    /// Start (again) on the same configuration; waits until the socket answers.
    pub fn restart(&mut self) {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.err"))
            .unwrap();
        let child = super::supervisor_command()
            .arg("daemon")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn the daemon");
        self.child = Some(child);
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the daemon did not listen in 20 s: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Add to the configuration (top-level keys first, tables last) and restart on it.
    pub fn reconfigure(&mut self, extra: &str) {
        let cfg = std::fs::read_to_string(&self.config).unwrap();
        let cfg = if extra.starts_with('[') {
            format!("{cfg}{extra}")
        } else {
            format!("{extra}{cfg}")
        };
        std::fs::write(&self.config, cfg).unwrap();
        self.sigkill();
        self.restart();
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    pub fn ws(&self) -> PathBuf {
        self.dir.join("ws")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.err")).unwrap_or_default()
    }

    pub fn audit_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("log/audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        super::parse_audit(&self.audit_lines().join("\n"))
    }

    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A policy file (outside the workspace): the sandboxed preset, running workspace scripts
    /// is asked.
    pub fn policy(&self, timeout: &str) -> String {
        let p = self.dir.join("policy.toml");
        std::fs::write(
            &p,
            format!("version = 1\nextends = \"sandboxed\"\napproval_timeout = \"{timeout}\"\n"),
        )
        .unwrap();
        p.display().to_string()
    }

    /// An executable script `name` in the workspace that appends a line to the file named by
    /// $1.
    pub fn counter_script(&self, name: &str) {
        let p = self.ws().join(name);
        std::fs::write(&p, "#!/bin/sh\necho \"ran $*\" >> \"$1\"\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.sigkill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
