//! The `agent-supervisor` command line.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agent_supervisor::session::{self, RunOptions, EXIT_SUPERVISOR_ERROR};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

const AFTER_HELP: &str = "\
Examples:
  agent-supervisor run -- python my_agent.py
  agent-supervisor run --policy ./policy.toml --headless -- ./agent.sh
  agent-supervisor run --ci --policy preset:ci -- ./agent.sh
  agent-supervisor init
  agent-supervisor policy check ./policy.toml
  agent-supervisor policy explain ./policy.toml -- exec git push origin main

Exit codes: run exits with the agent's code (128+N when a signal N killed it),
125 when the supervisor refuses to start or fails (in CI mode also when the
report cannot be written), 126/127 when the command cannot be executed or is
not found.";

/// `--dns-upstream`: `IP`, `IP:PORT` or `[IPv6]:PORT` (port 53 when absent).
fn parse_dns_server(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Ok(sa);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| std::net::SocketAddr::new(ip, 53))
        .map_err(|_| format!("`{s}` is not a DNS server address, expected e.g. 10.0.0.2, 127.0.0.1:5353 or [::1]:53"))
}

/// Run AI agents with rails the kernel enforces: safe actions run, dangerous ones are
/// blocked, everything else waits for a human, and every decision is audited.
#[derive(Parser)]
#[command(name = "agent-supervisor", version, after_help = AFTER_HELP)]
struct Cli {
    /// More logging (-v info, -vv debug); or set RUST_LOG.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// `run`'s audit export options (see src/audit_export/).
#[derive(clap::Args, Debug, Clone, Default)]
struct ExportArgs {
    /// Also send every audit record to the systemd journal
    /// (`journalctl -t agent-supervisor AUDIT_DECISION=deny`).
    #[arg(long)]
    audit_journald: bool,
    /// Also send every audit record as an OpenTelemetry log to this OTLP/gRPC collector
    /// (e.g. http://127.0.0.1:4317). Best effort: the audit file always has every record.
    #[arg(long, value_name = "URL", env = "AGENT_SUPERVISOR_AUDIT_OTLP")]
    audit_otlp: Option<String>,
}

impl From<ExportArgs> for agent_supervisor::audit_export::ExportConfig {
    fn from(a: ExportArgs) -> Self {
        agent_supervisor::audit_export::ExportConfig {
            journald: a.audit_journald,
            otlp: a.audit_otlp,
        }
    }
}

// Parsed once per process: the size of `Run` costs nothing worth boxing it for.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run COMMAND under a policy.
    #[command(
        after_help = "Examples:\n  agent-supervisor run -- python my_agent.py\n  agent-supervisor run --policy preset:locked -- ./agent.sh\n  agent-supervisor run --headless --audit ./audit.jsonl -- make test\n  agent-supervisor run --dns-upstream 10.0.0.2 --policy ./policy.toml -- ./agent.sh\n  agent-supervisor run --ci --policy preset:ci --report report.json -- ./agent.sh\n  agent-supervisor run --timeout 30m --memory 4G --processes 512 -- ./agent.sh\n\nCI mode (--ci, or CI=true in the environment; --no-ci or CI=false turn it off):\nnever prompts (ask = deny, or allow with --default-allow), writes a JSON report\n(--report, default ./agent-supervisor-report.json) and a summary on stderr; with\nGITHUB_ACTIONS=true also annotations and $GITHUB_STEP_SUMMARY. See docs/ci.md.\n\nPolicy lookup without --policy: ./.agent-supervisor/policy.toml,\n~/.config/agent-supervisor/policy.toml, /etc/agent-supervisor/policy.toml,\nthen the built-in `sandboxed` preset."
    )]
    Run {
        /// Policy file, or `preset:NAME` (unrestricted, sandboxed, locked, ci).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Never prompt: an `ask` becomes a denial (or an allow with --default-allow).
        #[arg(long, env = "AGENT_SUPERVISOR_HEADLESS")]
        headless: bool,
        /// Headless and CI mode only: allow what would have been asked.
        #[arg(long)]
        default_allow: bool,
        /// CI mode: never prompt, write a JSON report and a summary, GitHub Actions
        /// annotations when GITHUB_ACTIONS=true. Also on when CI=true (or 1) is in the
        /// environment.
        #[arg(long, conflicts_with = "no_ci")]
        ci: bool,
        /// Not CI mode, even with CI=true in the environment.
        #[arg(long)]
        no_ci: bool,
        /// CI mode: where to write the JSON report (default ./agent-supervisor-report.json;
        /// replaced, never followed if it is a symlink).
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Audit log file (JSON lines, appended).
        #[arg(long, value_name = "FILE")]
        audit: Option<PathBuf>,
        #[command(flatten)]
        export: ExportArgs,
        /// Sign the audit log's checkpoints with this Ed25519 secret key (made by `audit
        /// keygen`; mode 0600). Without it the log is an unsigned hash chain.
        #[arg(long, env = "AGENT_SUPERVISOR_AUDIT_KEY", value_name = "FILE")]
        audit_key: Option<PathBuf>,
        /// Rotate the audit file before it grows beyond SIZE (bytes, or with K, M, G).
        #[arg(long, env = "AGENT_SUPERVISOR_AUDIT_MAX_SIZE", value_name = "SIZE", value_parser = agent_supervisor::audit::parse_size)]
        audit_max_size: Option<u64>,
        /// Let the agent inherit this file descriptor too (repeatable).
        #[arg(long = "keep-fd", value_name = "FD")]
        keep_fds: Vec<i32>,
        /// The {workspace} directory (default: the current directory).
        #[arg(long, value_name = "DIR")]
        workspace: Option<PathBuf>,
        /// Don't print the session line on start.
        #[arg(short, long)]
        quiet: bool,
        /// Refuse to start unless these are enforced by the kernel here (comma-separated):
        /// ebpf, lsm, landlock. Without it, missing protections are reported once on stderr.
        #[arg(long, value_enum, value_delimiter = ',', value_name = "WHAT")]
        require: Vec<session::Requirement>,
        /// Don't load the eBPF backstops (to troubleshoot, or to measure what they cost); the
        /// supervisor's own checks stay, and the missing backstops are reported as usual.
        #[arg(long)]
        no_ebpf: bool,
        /// DNS server(s) the session's resolver forwards allowed names to, as IP or IP:PORT
        /// (repeatable; default: the nameservers of the host's /etc/resolv.conf).
        #[arg(
            long,
            value_name = "ADDR",
            env = "AGENT_SUPERVISOR_DNS_UPSTREAM",
            value_delimiter = ',',
            value_parser = parse_dns_server
        )]
        dns_upstream: Vec<std::net::SocketAddr>,
        /// How long after its TTL a DNS answer still lets new connections to its addresses
        /// through (e.g. "10s", "1m").
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
        dns_grace: std::time::Duration,
        /// Run through the daemon (error if it is unreachable). Without --daemon or
        /// --standalone, the daemon is used when its socket answers and no standalone-only
        /// option (--audit, --keep-fd, --require, --no-ebpf, --headless, --default-allow) is
        /// given.
        #[arg(long, conflicts_with = "standalone")]
        daemon: bool,
        /// Never use the daemon: supervise from this process.
        #[arg(long)]
        standalone: bool,
        /// The daemon's socket.
        #[arg(
            long,
            env = "AGENT_SUPERVISOR_SOCKET",
            default_value = agent_supervisor::daemon::config::DEFAULT_SOCKET,
            value_name = "PATH"
        )]
        socket: PathBuf,
        #[command(flatten)]
        limits: session::LimitFlags,
        /// Launched by the daemon: its link's inherited fd (internal).
        #[arg(long, hide = true, value_name = "FD")]
        daemon_link: Option<i32>,
        /// Launched by the daemon: its audit signing key, to hide from the agent (internal).
        #[arg(long, hide = true, value_name = "FILE")]
        hide_audit_key: Option<PathBuf>,
        /// Launched by the daemon: the session id it chose (internal).
        #[arg(long, hide = true, value_name = "ID")]
        session_id: Option<String>,
        /// The agent's command line.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<OsString>,
    },
    /// Write a commented starter policy (default ./.agent-supervisor/policy.toml).
    #[command(
        after_help = "Example:\n  agent-supervisor init && $EDITOR .agent-supervisor/policy.toml"
    )]
    Init {
        /// Where to write it.
        path: Option<PathBuf>,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Print the version and what this kernel offers.
    #[command(after_help = "Example:\n  agent-supervisor version --json")]
    Version {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Check or explain a policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run the daemon: the gRPC API on a unix socket, sessions, approvals from anywhere,
    /// the audit stream (see docs/daemon.md). Normally started by systemd.
    #[command(
        after_help = "Examples:\n  agent-supervisor daemon\n  agent-supervisor daemon --config ./config.toml\n\nConfiguration: /etc/agent-supervisor/config.toml (all fields optional)."
    )]
    Daemon {
        /// Configuration file (default /etc/agent-supervisor/config.toml; it may be absent).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// List the daemon's sessions.
    #[command(after_help = "Example:\n  agent-supervisor sessions --json")]
    Sessions {
        #[command(flatten)]
        daemon: DaemonArgs,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Allow a pending approval (from `approvals`/`audit tail`, or the daemon's watchers).
    #[command(
        after_help = "Examples:\n  agent-supervisor approve 3f9a0c1d2e4b-a7\n  agent-supervisor approve 3f9a0c1d2e4b-a7 --for-session\n\nExit codes: 0 answered, 1 not pending (already answered, expired, unknown)\nor refused, 125 the daemon is unreachable."
    )]
    Approve {
        /// The approval's id.
        id: String,
        /// Allow this action for the rest of the session.
        #[arg(long)]
        for_session: bool,
        /// Answer only if the approval's action digest is this one (as shown by a watcher):
        /// the answer can't apply to an action you did not see.
        #[arg(long, value_name = "SHA256")]
        digest: Option<String>,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Deny a pending approval.
    #[command(after_help = "Example:\n  agent-supervisor deny 3f9a0c1d2e4b-a7 --for-session")]
    Deny {
        /// The approval's id.
        id: String,
        /// Deny this action for the rest of the session.
        #[arg(long)]
        for_session: bool,
        /// Answer only if the approval's action digest is this one (as shown by a watcher):
        /// the answer can't apply to an action you did not see.
        #[arg(long, value_name = "SHA256")]
        digest: Option<String>,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// The audit log: follow the daemon's, verify files, make a signing key.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Approvals waiting in the daemon.
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// Show what this kernel can enforce (proven by trying) and, for each protection of the
    /// policy, which mechanism enforces it and whether it is available here.
    #[command(
        after_help = "Examples:\n  agent-supervisor doctor\n  agent-supervisor doctor --policy preset:locked --json\n\nExit codes: 0 when everything the policy needs is available, 1 when something\nis weaker on this host (each listed as WEAKER: ...), 125 on an internal error."
    )]
    Doctor {
        /// Policy file, or `preset:NAME`; default: looked up like `run` does.
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// Where the daemon is.
#[derive(clap::Args)]
struct DaemonArgs {
    /// The daemon's socket.
    #[arg(
        long,
        env = "AGENT_SUPERVISOR_SOCKET",
        default_value = agent_supervisor::daemon::config::DEFAULT_SOCKET,
        value_name = "PATH"
    )]
    socket: PathBuf,
    /// The daemon's TCP listener instead, e.g. https://host:7443 (TLS; the token comes from
    /// AGENT_SUPERVISOR_TOKEN).
    #[arg(
        long,
        env = "AGENT_SUPERVISOR_URL",
        value_name = "URL",
        requires = "ca"
    )]
    url: Option<String>,
    /// CA certificate (PEM) that signed the daemon's certificate.
    #[arg(long, env = "AGENT_SUPERVISOR_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Client certificate and key (PEM) when the daemon wants mTLS.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
}

impl DaemonArgs {
    fn target(&self) -> agent_supervisor::daemon::client::Target {
        use agent_supervisor::daemon::client::Target;
        match (&self.url, &self.ca) {
            (Some(url), Some(ca)) => Target::Tls {
                url: url.clone(),
                ca: ca.clone(),
                identity: self.cert.clone().zip(self.key.clone()),
            },
            _ => Target::Unix(self.socket.clone()),
        }
    }
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// A terminal UI: the live activity of the sessions you may see and the approvals
    /// waiting; answer with y (allow once), n (deny once), a (allow for the session), b (deny
    /// for the session); up/down to choose, q to quit.
    #[command(after_help = "Example:\n  agent-supervisor approvals watch")]
    Watch {
        #[command(flatten)]
        daemon: DaemonArgs,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Print the daemon's audit records (replayed from the start, or after --after), and with
    /// --follow the new ones as they are written.
    #[command(
        after_help = "Examples:\n  agent-supervisor audit tail --follow\n  agent-supervisor audit tail --session 3f9a0c1d2e4b --json\n  agent-supervisor audit tail --decision deny --kind exec"
    )]
    Tail {
        /// Keep following.
        #[arg(short, long)]
        follow: bool,
        /// Only this session.
        #[arg(long)]
        session: Option<String>,
        /// Only this kind (exec, open, connect, session-start, approval, ...).
        #[arg(long)]
        kind: Option<String>,
        /// Only this decision (allow, deny).
        #[arg(long)]
        decision: Option<String>,
        /// The records exactly as in the JSONL log.
        #[arg(long)]
        json: bool,
        /// Resume after this cursor (a record's cursor is the byte offset past it).
        #[arg(long, default_value_t = 0, value_name = "CURSOR")]
        after: u64,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Check audit files: the hash chain within and across them (give them oldest first), and
    /// every checkpoint's signature; report the first edited, deleted, reordered or inserted
    /// record (file, line, record id), and warn about records after the last checkpoint.
    #[command(
        after_help = "Examples:\n  agent-supervisor audit verify ~/.local/state/agent-supervisor/audit/2026-11-21.jsonl\n  agent-supervisor audit verify --key /var/lib/agent-supervisor/audit.key.pub \\\n      --rotated /var/log/agent-supervisor/daemon.jsonl\n  agent-supervisor audit verify --json audit.jsonl | jq .error\n\nExit codes: 0 intact (warnings allowed), 1 tampered or damaged, 2 a file or the key\ncould not be read."
    )]
    Verify {
        /// The files, oldest first (rotated ones before the active one).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The writer's public key (`KEY.pub`): checkpoints must be signed by it. Without it,
        /// signatures are checked with the key the log names (a warning says so).
        #[arg(long, value_name = "PUBFILE")]
        key: Option<PathBuf>,
        /// One JSON object: ok, records, checkpoints, error, warnings.
        #[arg(long)]
        json: bool,
        /// Each FILE stands for its rotated files (STEM.1.EXT, STEM.2.EXT, ... in order)
        /// followed by itself.
        #[arg(long)]
        rotated: bool,
    },
    /// Make an Ed25519 key pair for signing audit checkpoints: FILE (secret, 0600) and
    /// FILE.pub (for `audit verify --key`).
    #[command(
        after_help = "Example:\n  agent-supervisor audit keygen ~/.config/agent-supervisor/audit.key\n  agent-supervisor run --audit-key ~/.config/agent-supervisor/audit.key -- ./agent.sh"
    )]
    Keygen {
        /// Where to write the secret key.
        file: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

/// `audit verify`: 0 intact, 1 tampered, 2 a file or key could not be read.
fn audit_verify(files: &[PathBuf], key: Option<PathBuf>, json: bool, rotated: bool) -> Result<i32> {
    use agent_supervisor::audit::verify;
    let mut expanded = Vec::new();
    for f in files {
        match rotated.then(|| agent_supervisor::audit::file::segments(f)) {
            Some(Ok(all)) => expanded.extend(all),
            _ => expanded.push(f.clone()),
        }
    }
    let report = match verify::verify_paths(&expanded, key.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "usage_error": e.to_string() })
                );
            }
            eprintln!("agent-supervisor audit verify: {e}");
            return Ok(2);
        }
    };
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", verify::human(&report));
    }
    Ok(if report.ok() { 0 } else { 1 })
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Trust a policy found by lookup (./.agent-supervisor/policy.toml or
    /// ~/.config/agent-supervisor/policy.toml): its current content may govern sessions. A new
    /// or changed one is refused until trusted, since an agent could have written it.
    #[command(
        after_help = "Example:\n  agent-supervisor policy check .agent-supervisor/policy.toml && agent-supervisor policy trust .agent-supervisor/policy.toml"
    )]
    Trust {
        /// Policy file.
        file: PathBuf,
    },
    /// Validate a policy file; errors are printed as file:line:column: message.
    #[command(
        after_help = "Example:\n  agent-supervisor policy check .agent-supervisor/policy.toml"
    )]
    Check {
        /// Policy file, or preset:NAME.
        file: PathBuf,
    },
    /// Show the decision for one action, the rule that made it, and what enforces it.
    #[command(
        after_help = "Examples:\n  agent-supervisor policy explain policy.toml -- exec git push origin\n  agent-supervisor policy explain policy.toml -- open ~/.ssh/id_rsa\n  agent-supervisor policy explain policy.toml -- open ./out.txt --write\n  agent-supervisor policy explain preset:sandboxed -- connect 127.0.0.1:8080\n  agent-supervisor policy explain policy.toml -- resolve api.github.com"
    )]
    Explain {
        /// Policy file, or preset:NAME.
        file: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// `exec PROGRAM [ARGS...]`, `open PATH [--write] [--exec]`, or `connect HOST:PORT`.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ACTION"
        )]
        action: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    tracing::debug!("started");
    match dispatch(cli.command) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("agent-supervisor: error: {e:#}");
            ExitCode::from(EXIT_SUPERVISOR_ERROR as u8)
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn dispatch(cmd: Command) -> Result<i32> {
    match cmd {
        Command::Run {
            policy,
            headless,
            default_allow,
            ci,
            no_ci,
            report,
            audit,
            export,
            audit_key,
            audit_max_size,
            keep_fds,
            workspace,
            quiet,
            require,
            no_ebpf,
            dns_upstream,
            dns_grace,
            daemon,
            standalone,
            socket,
            daemon_link,
            hide_audit_key,
            session_id,
            limits,
            command,
        } => {
            // The daemon launches its sessions itself: never in CI mode.
            let ci = daemon_link.is_none()
                && agent_supervisor::ci::enabled(ci, no_ci, std::env::var("CI").ok().as_deref());
            if report.is_some() && !ci {
                bail!("--report is for CI mode: add --ci");
            }
            if daemon && ci {
                bail!("--daemon: CI mode (--ci, or CI=true in the environment) is for standalone runs; add --no-ci to run through the daemon");
            }
            let standalone_only = ci
                || audit.is_some()
                || audit_key.is_some()
                || audit_max_size.is_some()
                || export.audit_journald
                || export.audit_otlp.is_some()
                || !keep_fds.is_empty()
                || !require.is_empty()
                || no_ebpf
                || headless
                || default_allow
                || limits.any()
                || daemon_link.is_some();
            if daemon && standalone_only {
                bail!("--daemon: --audit, --audit-key, --audit-max-size, --audit-journald, --audit-otlp, --keep-fd, --require, --no-ebpf, --headless, --default-allow and the limit flags are for standalone runs (the daemon's config decides those)");
            }
            let use_daemon = daemon
                || (!standalone
                    && !standalone_only
                    && std::os::unix::net::UnixStream::connect(&socket).is_ok());
            if use_daemon {
                return agent_supervisor::daemon::client::run(
                    &socket,
                    agent_supervisor::daemon::client::RunOptions {
                        policy,
                        workspace,
                        quiet,
                        command,
                    },
                );
            }
            let opts = RunOptions {
                policy,
                headless,
                default_allow,
                audit,
                export: export.into(),
                audit_key,
                audit_max_size,
                hide_audit_key,
                keep_fds,
                workspace,
                quiet,
                require,
                no_ebpf,
                dns: agent_supervisor::dns::DnsConfig {
                    upstream: dns_upstream,
                    grace: dns_grace,
                },
                daemon_link,
                session_id,
                limits,
                command,
                observer: Default::default(),
            };
            if ci {
                return Ok(agent_supervisor::ci::run(
                    agent_supervisor::ci::CiOptions::from_env(report),
                    opts,
                ));
            }
            session::run(opts)
        }
        Command::Init { path, force } => init(path, force),
        Command::Daemon { config } => {
            agent_supervisor::daemon::run(agent_supervisor::daemon::DaemonOptions { config })
        }
        Command::Sessions { daemon, json } => {
            agent_supervisor::daemon::client::sessions(&daemon.target(), json)
        }
        Command::Approve {
            id,
            for_session,
            digest,
            daemon,
        } => agent_supervisor::daemon::client::resolve(
            &daemon.target(),
            &id,
            true,
            for_session,
            digest,
        ),
        Command::Deny {
            id,
            for_session,
            digest,
            daemon,
        } => agent_supervisor::daemon::client::resolve(
            &daemon.target(),
            &id,
            false,
            for_session,
            digest,
        ),
        Command::Approvals(ApprovalsCommand::Watch { daemon }) => {
            agent_supervisor::daemon::watch::run(&daemon.target())
        }
        Command::Audit(AuditCommand::Tail {
            follow,
            session,
            kind,
            decision,
            json,
            after,
            daemon,
        }) => agent_supervisor::daemon::client::audit_tail(
            &daemon.target(),
            agent_supervisor::daemon::client::TailOptions {
                follow,
                session,
                kind,
                decision,
                json,
                after,
            },
        ),
        Command::Audit(AuditCommand::Verify {
            files,
            key,
            json,
            rotated,
        }) => audit_verify(&files, key, json, rotated),
        Command::Audit(AuditCommand::Keygen { file, force }) => {
            let key = agent_supervisor::audit::keys::generate(&file, force)?;
            let public = agent_supervisor::audit::keys::public_path(&file);
            println!(
                "wrote the secret key {} (keep it from the agents) and the public key {} (key_id {})",
                file.display(),
                public.display(),
                agent_supervisor_audit::checkpoint::key_id(&key.verifying_key())
            );
            Ok(0)
        }
        Command::Version { json } => version(json),
        Command::Doctor { policy, json } => {
            agent_supervisor::doctor::run(&agent_supervisor::doctor::Options { policy, json })
        }
        Command::Policy(PolicyCommand::Check { file }) => {
            let vars = session::vars(None)?;
            match session::load_policy(Some(&file), &vars) {
                Ok(p) => {
                    println!(
                        "{}: ok ({} rules, default {})",
                        file.display(),
                        p.rules.len(),
                        p.default
                    );
                    println!("limits:");
                    for l in p.limits.describe() {
                        println!("  {l}");
                    }
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(1)
                }
            }
        }
        Command::Policy(PolicyCommand::Explain { file, json, action }) => {
            explain(&file, json, &action)
        }
        Command::Policy(PolicyCommand::Trust { file }) => {
            let vars = session::vars(None)?;
            // Only a valid policy can be trusted.
            session::load_policy(Some(&file), &vars)?;
            let store = agent_supervisor::trust::store_path(agent_supervisor::sys::euid_egid().0);
            agent_supervisor::trust::trust(&store, &file)
                .with_context(|| format!("recording trust in {}", store.display()))?;
            println!(
                "trusted {} (recorded in {})",
                file.display(),
                store.display()
            );
            Ok(0)
        }
    }
}

fn init(path: Option<PathBuf>, force: bool) -> Result<i32> {
    let path = path.unwrap_or_else(|| PathBuf::from(".agent-supervisor/policy.toml"));
    if path.exists() && !force {
        bail!(
            "{} already exists (use --force to overwrite)",
            path.display()
        );
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, agent_supervisor_policy::init_template())
        .with_context(|| format!("writing {}", path.display()))?;
    // The user just wrote it: trusted (see `policy trust`).
    let store = agent_supervisor::trust::store_path(agent_supervisor::sys::euid_egid().0);
    agent_supervisor::trust::trust(&store, &path)
        .with_context(|| format!("recording trust in {}", store.display()))?;
    println!(
        "wrote {}; check it with: agent-supervisor policy check {}",
        path.display(),
        path.display()
    );
    Ok(0)
}

fn version(json: bool) -> Result<i32> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let abi = agent_supervisor::sys::landlock_abi();
    if json {
        println!(
            "{}",
            serde_json::json!({ "name": "agent-supervisor", "version": env!("CARGO_PKG_VERSION"), "kernel": kernel, "landlock_abi": abi })
        );
    } else {
        println!("agent-supervisor {}", env!("CARGO_PKG_VERSION"));
        println!("kernel {kernel}, Landlock ABI {abi}");
    }
    Ok(0)
}

fn explain(file: &Path, json: bool, action: &[String]) -> Result<i32> {
    let vars = session::vars(None)?;
    let policy = session::load_policy(Some(file), &vars).map_err(|e| anyhow::anyhow!("{e}"))?;
    let e = agent_supervisor::explain::explain(
        &policy,
        action,
        agent_supervisor::explain::Paths::Host,
    )?;
    if json {
        println!("{}", serde_json::to_string(&e)?);
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "action:      {}", e.action)?;
        writeln!(out, "decision:    {}", e.decision)?;
        writeln!(out, "decided by:  {}", e.decided_by)?;
        if let Some(r) = &e.reason {
            writeln!(out, "reason:      {r}")?;
        }
        writeln!(out, "enforced by: {}", e.enforced_by)?;
    }
    Ok(0)
}
