//! `agent-supervisor run`: one supervised session, start to exit code.
//!
//! Order matters: everything that can fail on bad input (policy, audit file, mask walk) is
//! done before the agent exists; the sandbox is launched while the supervisor is still
//! single-threaded; only then do the supervisor's threads start (audit writer, notification
//! loop, DNS resolver, and the limits thread, which also forwards signals; the exec guard and
//! the approval broker start with their first job). The agent's exit status is ours.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use agent_supervisor_policy::{Policy, Vars};
use anyhow::{Context, Result};

use crate::approval::{self, Approvals};
use crate::audit::Record;
use crate::sandbox::{self, filter::NotifySet, landlock::LandlockSpec, SandboxSpec};
use crate::supervise::{self, guard::Guard, Ctx};
use crate::sys;

/// Exit code when the supervisor itself refuses to start or fails (bad policy, missing kernel
/// feature, unwritable audit log). 126/127 keep their shell meaning for the agent's command.
pub const EXIT_SUPERVISOR_ERROR: i32 = 125;

/// Options of `run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub policy: Option<PathBuf>,
    pub headless: bool,
    pub default_allow: bool,
    pub audit: Option<PathBuf>,
    /// Copies of the audit records to journald / an OTLP collector.
    pub export: crate::audit_export::ExportConfig,
    /// Sign the audit log's checkpoints with this secret key (see docs/audit.md).
    pub audit_key: Option<PathBuf>,
    /// Rotate the audit file before it grows beyond this many bytes.
    pub audit_max_size: Option<u64>,
    /// Launched by the daemon: its audit signing key, hidden from the agent.
    pub hide_audit_key: Option<PathBuf>,
    pub keep_fds: Vec<i32>,
    pub workspace: Option<PathBuf>,
    pub quiet: bool,
    /// Protections that must be fully enforced by the kernel: refuse to start otherwise.
    pub require: Vec<Requirement>,
    /// Don't load the eBPF backstops (troubleshooting, measuring their cost).
    pub no_ebpf: bool,
    /// The session's DNS resolver (upstream servers, grace after TTL).
    pub dns: crate::dns::DnsConfig,
    /// Launched by the daemon: its link (an inherited fd; see [`crate::daemon::link`]) and the
    /// session id it chose. Audit records and asks go to the daemon.
    pub daemon_link: Option<i32>,
    pub session_id: Option<String>,
    /// `run --timeout/--memory/...`: override the policy's `[limits]`.
    pub limits: LimitFlags,
    pub command: Vec<OsString>,
    /// Sees every audit record (CI mode's report, [`crate::ci`]).
    pub observer: AuditObserver,
}

/// An optional [`crate::audit::Observer`] (its `Debug` says only whether one is set).
#[derive(Clone, Default)]
pub struct AuditObserver(pub Option<crate::audit::Observer>);

impl std::fmt::Debug for AuditObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

/// A `[limits]` value given on the command line: `Some` value or "none" (no limit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitFlag<T>(pub Option<T>);

/// `run`'s resource limit flags; each overrides the policy's `[limits]` key of the same name
/// and counts as set explicitly (refused when this host cannot enforce it).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LimitFlags {
    /// Wall-clock limit of the session ("30s", "30m", "1h 30m", or "none"): then SIGTERM to
    /// the agent, SIGKILL to everything 5 s later, exit code 124.
    #[arg(long, value_name = "DURATION", value_parser = |s: &str| agent_supervisor_policy::parse_timeout(s).map(LimitFlag))]
    pub timeout: Option<LimitFlag<std::time::Duration>>,
    /// Memory of the whole session ("512M", "2G", "50%" of host RAM, or "none"); exceeding it
    /// kills the session, exit code 122.
    #[arg(long, value_name = "SIZE", value_parser = |s: &str| agent_supervisor_policy::parse_memory(s).map(LimitFlag))]
    pub memory: Option<LimitFlag<agent_supervisor_policy::Memory>>,
    /// Processes and threads alive at once (or "none"); reaching it kills the session, exit
    /// code 123.
    #[arg(long, value_name = "N", value_parser = |s: &str| agent_supervisor_policy::parse_processes(s).map(LimitFlag))]
    pub processes: Option<LimitFlag<u64>>,
    /// CPUs' worth of CPU time ("1.5", or "none").
    #[arg(long, value_name = "CPUS", value_parser = |s: &str| agent_supervisor_policy::parse_cpu(s).map(LimitFlag))]
    pub cpu: Option<LimitFlag<f64>>,
    /// Largest file the agent may write ("100M", or "none"); a larger write fails with EFBIG.
    #[arg(long, value_name = "SIZE", value_parser = |s: &str| agent_supervisor_policy::parse_size(s).map(LimitFlag))]
    pub file_size: Option<LimitFlag<u64>>,
    /// Run even when limits set explicitly (policy or flags) cannot be enforced on this host
    /// (not root, no cgroup controller): each is reported on stderr instead of refusing.
    #[arg(long)]
    pub best_effort_limits: bool,
}

impl LimitFlags {
    /// Lay the flags over the policy's limits (origin: the flag's name).
    pub fn apply(&self, limits: &mut agent_supervisor_policy::Limits) {
        fn set<T: Copy>(
            limit: &mut agent_supervisor_policy::Limit<T>,
            flag: Option<LimitFlag<T>>,
            name: &str,
        ) {
            if let Some(LimitFlag(value)) = flag {
                *limit = agent_supervisor_policy::Limit {
                    value,
                    origin: Some(agent_supervisor_policy::Origin {
                        file: format!("--{name}"),
                        line: 0,
                        column: 0,
                    }),
                };
            }
        }
        set(&mut limits.timeout, self.timeout, "timeout");
        set(&mut limits.memory, self.memory, "memory");
        set(&mut limits.processes, self.processes, "processes");
        set(&mut limits.cpu, self.cpu, "cpu");
        set(&mut limits.file_size, self.file_size, "file-size");
    }

    /// Any flag given.
    pub fn any(&self) -> bool {
        self.timeout.is_some()
            || self.memory.is_some()
            || self.processes.is_some()
            || self.cpu.is_some()
            || self.file_size.is_some()
            || self.best_effort_limits
    }
}

/// What `run --require` can insist on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Requirement {
    /// Every eBPF backstop this host can have (the in-kernel network check).
    Ebpf,
    /// BPF LSM hooks (bpf in the active LSMs and lsm programs load).
    Lsm,
    /// Landlock fully enforcing the [filesystem] trees.
    Landlock,
}

/// Refuse to start: a required protection is missing (exit code 125 through `main`).
fn refuse(what: Requirement, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "--require {}: {why}; refusing to start the agent (run `agent-supervisor doctor` to see what this host can enforce)",
        format!("{what:?}").to_lowercase()
    )
}

/// Built-in variables from the environment.
pub fn vars(workspace: Option<&Path>) -> Result<Vars> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let workspace = match workspace {
        Some(w) => {
            std::fs::canonicalize(w).with_context(|| format!("workspace {}", w.display()))?
        }
        None => std::fs::canonicalize(&cwd).unwrap_or(cwd),
    };
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    let tmp = std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    Ok(Vars {
        workspace,
        home,
        tmp,
    })
}

/// Where a policy comes from when `--policy` is absent, in lookup order.
pub fn policy_search_path(vars: &Vars) -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from(".agent-supervisor/policy.toml")];
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| vars.home.join(".config"));
    v.push(config.join("agent-supervisor/policy.toml"));
    v.push(PathBuf::from("/etc/agent-supervisor/policy.toml"));
    v
}

/// Load the policy: `--policy FILE` (or `preset:NAME`), else the first file of the search
/// path, else the built-in `sandboxed` preset. A file found by lookup in the current directory
/// or the user's config must be trusted (see [`crate::trust`]). Paths are canonicalised
/// (symlinks resolved).
pub fn load_policy(explicit: Option<&Path>, vars: &Vars) -> Result<Policy> {
    let mut policy = match explicit {
        Some(p) => match p.to_str().and_then(|s| s.strip_prefix("preset:")) {
            Some(name) => Policy::preset(name, vars)?,
            None => Policy::load(p, vars)?,
        },
        None => match policy_search_path(vars).into_iter().find(|p| p.is_file()) {
            Some(p) => {
                if !p.starts_with("/etc") {
                    require_trusted(&p)?;
                }
                Policy::load(&p, vars)?
            }
            None => Policy::preset("sandboxed", vars)?,
        },
    };
    // Rules repeat their prefixes (`/usr/bin`, the workspace...): each is resolved once.
    let seen = std::cell::RefCell::new(std::collections::HashMap::new());
    policy.canonicalize_paths(&|p: &Path| {
        seen.borrow_mut()
            .entry(p.to_path_buf())
            .or_insert_with(|| std::fs::canonicalize(p).ok())
            .clone()
    });
    Ok(policy)
}

fn require_trusted(path: &Path) -> Result<()> {
    let store = crate::trust::store_path(sys::euid_egid().0);
    let trusted = crate::trust::is_trusted(&store, path).with_context(|| {
        format!(
            "checking whether {} is trusted (store {})",
            path.display(),
            store.display()
        )
    })?;
    anyhow::ensure!(
        trusted,
        "{p}: this policy is not trusted yet (it is new, or changed since it was trusted; an agent \
         could have written it). Review it, then run `agent-supervisor policy trust {p}`, or pass \
         --policy explicitly",
        p = path.display()
    );
    Ok(())
}

/// Writable directory trees that are not executable: bound `noexec` in the sandbox.
pub fn noexec_trees(landlock: &LandlockSpec) -> Vec<PathBuf> {
    landlock
        .write
        .iter()
        .filter(|w| w.is_dir())
        .filter(|w| !["/dev", "/proc", "/sys"].iter().any(|p| w.starts_with(p)))
        .filter(|w| {
            !landlock
                .exec
                .iter()
                .any(|e| w.starts_with(e) || e.starts_with(w))
        })
        .cloned()
        .collect()
}

/// What the agent must never change, whatever the policy says: where its next session's policy
/// is looked up, and the audit log. Mounted read-only in the sandbox. The workspace's
/// `.agent-supervisor/` is created (empty) when missing, so that the agent can't create it and
/// plant a policy there either.
fn protected_paths(vars: &Vars, audit_path: &Path) -> Vec<sandbox::masks::MaskMount> {
    let workspace_dir = vars.workspace.join(".agent-supervisor");
    if !workspace_dir.exists() {
        if let Err(e) = std::fs::create_dir(&workspace_dir) {
            tracing::warn!(
                "cannot create {} to protect it: {e}",
                workspace_dir.display()
            );
        }
    }
    let mut dirs: Vec<PathBuf> = policy_search_path(vars)
        .iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                vars.workspace.join(p)
            }
        })
        .collect();
    dirs.extend(audit_path.parent().map(Path::to_path_buf));
    dirs.push(crate::trust::state_dir(sys::euid_egid().0));
    let mut out: Vec<sandbox::masks::MaskMount> = Vec::new();
    let protect = |out: &mut Vec<sandbox::masks::MaskMount>, path: PathBuf, is_dir: bool| {
        if !out.iter().any(|m| m.path == path) {
            out.push(sandbox::masks::MaskMount {
                path,
                kind: agent_supervisor_policy::MaskKind::ReadOnly,
                is_dir,
                rule: None,
            });
        }
    };
    for dir in dirs {
        let Ok(real) = std::fs::canonicalize(&dir) else {
            continue;
        };
        // A directory holding the workspace itself (an audit log written into the workspace)
        // can't be made read-only: protect the file instead.
        if vars.workspace.starts_with(&real)
            || ["/dev", "/proc", "/sys"]
                .iter()
                .any(|p| real.starts_with(p))
        {
            continue;
        }
        if real.is_dir() {
            protect(&mut out, real, true);
        }
    }
    if let Ok(file) = std::fs::canonicalize(audit_path) {
        let pseudo = ["/dev", "/proc", "/sys"]
            .iter()
            .any(|p| file.starts_with(p));
        if !pseudo && !out.iter().any(|m| file.starts_with(&m.path)) {
            protect(&mut out, file, false);
        }
    }
    out
}

/// A new session id (12 hex digits).
pub fn session_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:012x}",
        (nanos as u64 ^ ((std::process::id() as u64) << 40)) & 0xffff_ffff_ffff
    )
}

/// Run one session. Returns the exit code for the process.
pub fn run(opts: RunOptions) -> Result<i32> {
    anyhow::ensure!(
        !opts.command.is_empty(),
        "no command given: agent-supervisor run -- COMMAND [ARGS...]"
    );
    let mut phases = crate::phases::Phases::new();
    sys::single_malloc_arena();
    let session = opts.session_id.clone().unwrap_or_else(session_id);
    // The session's cgroups don't depend on the policy: they are made while it is read.
    let cgroups = Preparing::start(&session);
    let vars = vars(opts.workspace.as_deref())?;
    let mut policy = load_policy(opts.policy.as_deref(), &vars)?;
    opts.limits.apply(&mut policy.limits);
    tracing::debug!("policy loaded: {}", policy.source);
    let plan = policy.plan();
    phases.mark("policy");
    // Reads are enforced by a mount view of the read trees where it can hold them exactly,
    // else by Landlock (see `sandbox::view`).
    let read_only_view = plan
        .writable_view
        .is_none()
        .then(|| plan.landlock_write.clone());
    let reads = sandbox::view::plan(
        &plan.landlock_read,
        &plan.landlock_write,
        read_only_view.is_some() && sys::has_mount_setattr(),
    );
    let landlock = LandlockSpec {
        read: plan.landlock_read.clone(),
        write: plan.landlock_write.clone(),
        exec: plan.landlock_exec.clone(),
        reads_by_view: !reads.by_landlock(),
    };
    let audit_path = opts
        .audit
        .clone()
        .unwrap_or_else(|| crate::audit::default_path(sys::euid_egid().0));
    let link = match opts.daemon_link {
        Some(fd) => {
            let stream = std::os::unix::net::UnixStream::from(
                sys::take_inherited_fd(fd)
                    .with_context(|| format!("--daemon-link {fd}: not an open file descriptor"))?,
            );
            let reader = stream.try_clone().context("duplicating the daemon link")?;
            Some((crate::daemon::link::LinkWriter::new(stream), reader))
        }
        None => None,
    };
    // Bad export settings are refused before the agent exists; the exporters' thread starts
    // after the launch (the supervisor is single-threaded until then).
    let exporters = crate::audit_export::Exporters::prepare(&opts.export)?;
    let audit_file = match &link {
        Some((writer, _)) => crate::audit::AuditFile::to_daemon(writer.clone(), &audit_path),
        None => {
            let key = opts
                .audit_key
                .as_deref()
                .map(crate::audit::keys::load_signing_key)
                .transpose()?;
            crate::audit::AuditFile::open(
                &audit_path,
                crate::audit::Options {
                    key: key.map(std::sync::Arc::new),
                    max_size: opts.audit_max_size,
                    daily_name: opts.audit.is_none(),
                    lock: true,
                    writer: session.clone(),
                    export: exporters
                        .clone()
                        .map(|e| e as Arc<dyn crate::audit::Export>),
                    ..Default::default()
                },
            )?
        }
    };
    phases.mark("audit");
    let mut masks = sandbox::masks::plan_masks(&policy, &plan, &noexec_trees(&landlock));
    masks.extend(protected_paths(&vars, &audit_path));
    // The agent must not read the signing key (it could forge checkpoints), nor hold the log's
    // lock (the writer would stall, then fail closed).
    let key = opts.audit_key.as_deref().or(opts.hide_audit_key.as_deref());
    let hidden = [key.map(Path::to_path_buf), audit_file.lock_path()];
    for path in hidden
        .iter()
        .flatten()
        .filter_map(|p| std::fs::canonicalize(p).ok())
    {
        masks.retain(|m| m.path != path);
        masks.push(sandbox::masks::MaskMount {
            path,
            kind: agent_supervisor_policy::MaskKind::Hide,
            is_dir: false,
            rule: None,
        });
    }
    let masks = sandbox::masks::compose(masks);
    let mode = match link {
        Some((link, reader)) => approval::Mode::Daemon { link, reader },
        None => approval::choose_mode(opts.headless, opts.default_allow),
    };
    if !opts.quiet {
        eprintln!(
            "agent-supervisor: session {session}, policy {}, audit {}",
            policy.source,
            audit_path.display()
        );
    }
    // The session's cgroups with its resource limits (v2, or v1 on hybrid hosts). A limit the
    // policy or a flag set that cannot be enforced refuses the session; a default one is a
    // warning.
    phases.mark("masks");
    let limits = crate::limits::SessionLimits::apply(cgroups.join(), &session, &policy.limits);
    phases.mark("limits");
    let mut limits_weaker = Vec::new();
    for u in &limits.unenforced {
        match &u.origin {
            Some(origin) if !opts.limits.best_effort_limits => {
                anyhow::bail!(
                    "[limits] {} (set at {origin}) cannot be enforced on this host: {}. Run as \
                     root on a host with that cgroup controller, remove the limit, or pass \
                     --best-effort-limits to run without it (see `agent-supervisor doctor`)",
                    u.what,
                    u.why
                );
            }
            Some(origin) => limits_weaker.push(format!(
                "[limits] {} (set at {origin}) is not enforced (--best-effort-limits): {}",
                u.what, u.why
            )),
            None => {}
        }
    }
    // The defaults that cannot be enforced: one line.
    let defaults: Vec<&crate::limits::Unenforced> = limits
        .unenforced
        .iter()
        .filter(|u| u.origin.is_none())
        .collect();
    if let Some(first) = defaults.first() {
        let what: Vec<&str> = defaults.iter().map(|u| u.what.as_str()).collect();
        limits_weaker.push(format!(
            "the default limits ({}) are not enforced ({}): a runaway agent can exhaust the host",
            what.join(", "),
            first.why
        ));
    }
    let exec_mode = if plan.notify_exec {
        crate::ebpf::ExecMode::Enforce
    } else {
        crate::ebpf::ExecMode::Report
    };
    // The agent (host uid 0 when we are root) must not move itself out of its cgroups.
    let spec_masks = sandbox::masks::compose(masks.iter().cloned().chain(limits.masks()).collect());
    let spec_masks = match &read_only_view {
        Some(writable) => sandbox::masks::needed_in_read_only_view(spec_masks, writable),
        None => spec_masks,
    };
    for m in &spec_masks {
        tracing::debug!("mask: {:?} {}", m.kind, m.path.display());
    }

    // The session's DNS resolver binds port 53 of its own loopback address now (root, before
    // any thread); the agent's resolv.conf names it. Without it (not root) DNS is refused
    // outright (port 53 goes nowhere but the resolver), which one warning line says.
    let (dns, dns_weaker) = match crate::dns::Resolver::bind(&opts.dns) {
        Ok(r) => {
            tracing::debug!("session DNS resolver at {}:53", r.address());
            (Some(Arc::new(r)), None)
        }
        Err(e) => (
            None,
            Some(format!(
                "the session's DNS resolver could not start ({}): DNS is refused and host-name \
                 rules never match",
                crate::ebpf::session::error_chain(&e)
            )),
        ),
    };

    let view = match reads {
        sandbox::view::Reads::Landlock(why) => {
            tracing::debug!("reads are checked by Landlock: {why}");
            None
        }
        sandbox::view::Reads::View(v) => {
            tracing::debug!("reads are checked by the mount view: only the read trees are in it");
            Some(v)
        }
        sandbox::view::Reads::All => {
            tracing::debug!("reads are not checked: a read tree covers /");
            None
        }
    };
    let spec = SandboxSpec {
        argv: sandbox::to_cstrings(&opts.command),
        landlock,
        masks: spec_masks,
        notify: NotifySet {
            open: plan.notify_open,
        },
        keep_fds: opts.keep_fds.clone(),
        hostname: "agent-sandbox".into(),
        cgroup: limits.v2_cgroup().ok(),
        limit_procs: limits.limit_procs(),
        join_v1: limits.v1_tasks(),
        file_size: policy.limits.file_size.value,
        resolv_conf: dns.as_ref().map(|d| d.resolv_conf().into_bytes()),
        read_only_view,
        view,
    };
    // Signals we forward are blocked before any thread exists, so every thread inherits the
    // mask and only the limits thread's signalfd receives them.
    let forwarded = [
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ];
    sys::block_signals(&forwarded).context("blocking signals")?;
    phases.mark("dns");
    tracing::debug!("launching the sandbox");
    let launching = sandbox::launch(&spec)?;
    phases.mark_at("namespaces", launching.namespaces_at);
    // The kernel's checks of network destinations and executed files, and its process events:
    // the eBPF programs attached to the session's cgroup (without them, one "weaker" line says
    // so), joined while init sets up its namespaces. Init is in the cgroup already but runs
    // only the supervisor's own set-up; the agent starts after the handshake below. The exec
    // backstop enforces only when every exec is trapped.
    let (mut bpf, bpf_weaker) = if opts.no_ebpf {
        // Asked for (troubleshooting, measuring): said like any other missing protection.
        let off = crate::ebpf::Weaker {
            backstops: vec!["the eBPF backstops are off (--no-ebpf): network destinations and executed files are checked by the supervisor only, not by the kernel".to_string()],
            lsm: crate::ebpf::lsm::relevant(&policy, &plan)
                .then(|| crate::ebpf::lsm::weaker_line("--no-ebpf")),
        };
        (None, off)
    } else {
        crate::ebpf::start_session(limits.v2_cgroup(), &policy, exec_mode, &masks)
    };
    if opts.require.contains(&Requirement::Ebpf) {
        if let Some(why) = bpf_weaker.backstops.first() {
            return Err(launching.abort(refuse(Requirement::Ebpf, why)));
        }
    }
    if opts.require.contains(&Requirement::Lsm) {
        if let Some(why) = &bpf_weaker.lsm {
            return Err(launching.abort(refuse(Requirement::Lsm, why)));
        }
        let lsm = crate::doctor::bpf_lsm_usable();
        if !lsm.works {
            return Err(launching.abort(refuse(
                Requirement::Lsm,
                &format!("BPF LSM is not usable here: {}", lsm.why()),
            )));
        }
    }
    phases.mark("ebpf");
    // From here on the supervisor opens files for the agent: never with more than the agent's
    // own rights. Every thread started below inherits that. (Our caps in the agent's user
    // namespace, which taking init's listener needs, come from owning it, not from these.)
    sys::drop_effective_caps_this_thread()
        .context("dropping the supervisor's effective capabilities")?;
    // The supervisor's threads start while init sets up its namespaces (its mounts, Landlock
    // and seccomp); those serving the agent's calls wait for the session's context, which
    // needs the listener init hands over.
    if let Some(e) = &exporters {
        e.spawn()?;
    }
    let audit = audit_file.start()?.with_observer(opts.observer.0.clone());
    let daemon_session = matches!(mode, approval::Mode::Daemon { .. });
    let approvals = Approvals::new(mode, policy.approval_timeout);
    let guard = Guard::with_exec_backstop(bpf.as_mut().and_then(|b| b.exec_approvals.take()));
    let mut handoff = supervise::Handoff::default();
    spawn("notify", {
        let mut ctx = handoff.later();
        move || {
            if let Some(ctx) = ctx.get() {
                supervise::run_loop(ctx)
            }
        }
    })?;
    if let Some(dns) = &dns {
        dns.spawn(handoff.later())
            .context("starting the DNS resolver's thread")?;
    }
    // The broker starts with the first ask, or now for a session of the daemon.
    if daemon_session {
        approvals
            .start(handoff.later())
            .context("starting the approvals thread")?;
    }
    let init_pidfd = Arc::clone(&launching.init_pidfd);
    let limits = Arc::new(limits);
    let timeout = policy.limits.timeout.value;
    // The limits' thread also forwards the signals sent to us (blocked in every thread).
    let watch = crate::limits::Watch::spawn(
        Arc::clone(&limits),
        Arc::clone(&init_pidfd),
        timeout,
        &forwarded,
    )
    .context("starting the limits thread")?;
    phases.mark("threads");

    let namespaces_at = launching.namespaces_at;
    let mut sandbox = launching.ready()?;
    let mut from = namespaces_at;
    for &(name, at) in &sandbox.phases {
        phases.mark_alongside(name, from, at);
        from = at;
    }
    // What the supervisor waited for init beyond starting its threads.
    phases.mark_at("handshake", sandbox.handshake_at);
    // Landlock's enforcement is known only once the child applied it; the agent has not run
    // yet (its first exec waits for a notification loop that has not started).
    if opts.require.contains(&Requirement::Landlock) {
        // The Landlock lines start with its name (other lines mention it as what remains).
        if let Some(w) = sandbox.weaker.iter().find(|w| w.starts_with("Landlock")) {
            sandbox::kill_and_reap(sandbox.init_pidfd.as_fd());
            return Err(refuse(Requirement::Landlock, w));
        }
    }
    sandbox.weaker.extend(bpf_weaker.into_lines());
    sandbox.weaker.extend(dns_weaker);
    sandbox.weaker.extend(limits_weaker);
    if let Some(why) = &plan.writable_view {
        if !plan.landlock_write.iter().any(|w| w == Path::new("/")) {
            sandbox.weaker.push(format!(
                "the view is not read-only outside the write trees ({why}): chmod, chown, \
                 utimes and xattr changes there are refused by file permissions only"
            ));
        }
    }
    tracing::debug!("sandbox ready (init pid {})", sandbox.init_pid);
    for w in &sandbox.weaker {
        eprintln!("agent-supervisor: warning: {w}");
    }

    let initial: Vec<Vec<u8>> = opts.command.iter().map(|a| a.as_bytes().to_vec()).collect();
    let ctx = Arc::new(Ctx {
        session: session.clone(),
        policy: Arc::new(policy),
        listener: sandbox.listener,
        audit: audit.clone(),
        approvals,
        guard,
        remembered: Mutex::new(Default::default()),
        initial_argv: Mutex::new(Some(initial)),
        stopping: AtomicBool::new(false),
        first_exec: AtomicBool::new(true),
        network: bpf.as_ref().and_then(|b| b.network.clone()),
        dns: dns.clone(),
    });
    // session-start is the log's first record: the threads serving the agent's calls (its
    // first exec among them) get the context only after it is queued.
    audit.record(Record::session(
        &session,
        sandbox.init_pid,
        "session-start",
        serde_json::json!({
            "argv": opts.command.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>(),
            "policy": ctx.policy.source,
            "workspace": vars.workspace.display().to_string(),
            "weaker": sandbox.weaker,
            "lsm_denied_files": bpf.as_ref().and_then(|b| b.lsm_files),
            "limits": ctx.policy.limits.describe(),
        }),
    ));
    handoff.give(&ctx);
    // The kernel's process events go to the audit log (those from before this point wait in
    // the ring buffer).
    let events = match bpf.as_mut().and_then(|b| b.events.take()) {
        Some(events) => Some(
            events
                .spawn(session.clone(), audit.clone())
                .context("starting the ebpf-events thread")?,
        ),
        None => None,
    };
    phases.mark("handover");
    tracing::debug!("supervising");
    let status = sys::waitid_pidfd(init_pidfd.as_fd()).context("waiting for the agent")?;
    tracing::debug!("agent exited: {status:?}");
    phases.mark("agent");
    // What ended it: the watch thread (timeout, a limit), or a limit the kernel enforced by
    // itself (memory.oom.group killed init) that the watch thread had no time to see.
    let ended_by = watch
        .finish()
        .or_else(|| limits.breach())
        .unwrap_or(crate::limits::EndReason::Exit);
    // Init is gone, and its PID namespace with it; anything that is somehow still in the
    // session's cgroups is killed too.
    limits.kill_all();
    if let Some(message) = ended_by.message() {
        eprintln!("agent-supervisor: {message}");
    }
    supervise::mark_stopping(&ctx);
    // Every process of the session is gone with init: read the last events, detach the
    // programs, remove the cgroup.
    let events_lost = events.map(|reader| reader.finish());
    if let Some(lost) = events_lost.filter(|&n| n > 0) {
        eprintln!(
            "agent-supervisor: warning: {lost} kernel process events were lost (the ring buffer \
             was full): the audit log does not have them"
        );
    }
    let exit_code = ended_by.exit_code().unwrap_or(status.code());
    let signal = match status {
        sys::ExitStatus::Signaled(s) => Some(s),
        sys::ExitStatus::Exited(_) => None,
    };
    audit.record(Record::session(
        &session,
        sandbox.init_pid,
        "session-end",
        serde_json::json!({
            "exit_code": exit_code,
            "agent_exit_code": status.code(),
            "signal": signal,
            "ended_by": ended_by.as_str(),
            "limit": ended_by.limit(),
            "ebpf_events_lost": events_lost,
        }),
    ));
    // The audit thread writes the record while the programs are detached and the cgroups
    // removed.
    drop(bpf);
    drop(limits);
    if let Err(e) = audit.flush() {
        eprintln!(
            "agent-supervisor: ERROR: the audit log {} is incomplete: {e}",
            audit.path().display()
        );
        return Ok(EXIT_SUPERVISOR_ERROR);
    }
    if let Some(e) = &exporters {
        if let Some(w) = e.finish().dropped_warning(audit.path()) {
            eprintln!("agent-supervisor: warning: {w}");
        }
    }
    phases.mark("tear-down");
    Ok(exit_code)
}

/// The session's cgroups being made in a thread of their own ([`SessionLimits::prepare`]),
/// while the policy is read. Joined before the sandbox is launched (from a single-threaded
/// supervisor), or when `run` returns before that: then the cgroups are removed.
///
/// [`SessionLimits::prepare`]: crate::limits::SessionLimits::prepare
struct Preparing {
    thread: Option<std::thread::JoinHandle<crate::limits::Prepared>>,
    session: String,
}

impl Preparing {
    fn start(session: &str) -> Preparing {
        let id = session.to_string();
        let thread = std::thread::Builder::new()
            .name("cgroups".into())
            .spawn(move || crate::limits::SessionLimits::prepare(&id))
            // Made in `join` instead.
            .ok();
        Preparing {
            thread,
            session: session.to_string(),
        }
    }

    fn join(mut self) -> crate::limits::Prepared {
        match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            None => crate::limits::SessionLimits::prepare(&self.session),
        }
    }
}

impl Drop for Preparing {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .with_context(|| format!("starting the {name} thread"))?;
    Ok(())
}
