//! `agent-supervisor doctor`: what this host's kernel can enforce, proven by trying, and for
//! each protection of the policy which mechanism will enforce it and whether it can here.
//!
//! Nothing is taken from version numbers: every feature is exercised. A forked child gets a
//! seccomp notify filter and the parent answers its calls with a value, `CONTINUE` and `ADDFD`
//! ([`seccomp`]); a child is cloned into the sandbox's namespaces; each BPF program type the
//! design uses is loaded with a two-instruction program ([`bpf`]). Mounts, the active LSMs and
//! sysctls are read, never changed ([`host`]). The policy is loaded exactly as `run` loads it,
//! and [`needs`] maps each protection of its plan to the features it relies on. Anything
//! missing is a `WEAKER:` line and makes the exit code 1, like `run`'s one warning on stderr.
//!
//! The probes fork, so [`run`] must be called while the process is single-threaded (the
//! command line does; the probes check it and report "not tested" otherwise).
#![forbid(unsafe_code)]

pub mod bpf;
pub mod btf;
pub mod host;
pub mod needs;
pub mod seccomp;

use std::fmt::Write as _;
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use self::needs::{Abilities, Protection};
use crate::{session, sys};

/// Options of `doctor`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--policy FILE|preset:NAME`; None looks the policy up like `run`.
    pub policy: Option<PathBuf>,
    /// `--json`.
    pub json: bool,
}

/// Whether `[limits]` memory, processes and cpu can be enforced here, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceLimits {
    /// Root, and each of the memory, pids and cpu controllers in cgroup v2 or v1.
    pub enforceable: bool,
    /// One line: which controller is where.
    pub detail: String,
}

/// The outcome of trying one feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    pub works: bool,
    /// The errno of the failing call, when one failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// Why it does not work (or was not tested).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Probe {
    pub fn works() -> Probe {
        Probe {
            works: true,
            errno: None,
            error: None,
        }
    }
    /// `call` failed with `e`.
    pub fn failed(call: &str, e: &io::Error) -> Probe {
        Probe {
            works: false,
            errno: e.raw_os_error(),
            error: Some(format!("{call}: {}", errno_text(e))),
        }
    }
    pub fn failed_msg(why: impl Into<String>) -> Probe {
        Probe {
            works: false,
            errno: None,
            error: Some(why.into()),
        }
    }
    pub fn not_tested(why: &str) -> Probe {
        Probe::failed_msg(format!("not tested: {why}"))
    }
    /// Why it does not work (empty when it does).
    pub fn why(&self) -> String {
        self.error.clone().unwrap_or_default()
    }
    fn as_result(&self) -> Result<(), String> {
        if self.works {
            Ok(())
        } else {
            Err(self.why())
        }
    }
    /// `works`, or `no: <why>`.
    fn describe(&self) -> String {
        if self.works {
            "works".into()
        } else {
            format!("no: {}", self.why())
        }
    }
}

/// `EPERM (Operation not permitted)`.
pub fn errno_text(e: &io::Error) -> String {
    let Some(n) = e.raw_os_error() else {
        return e.to_string();
    };
    let name = match n {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EUSERS => "EUSERS",
        524 => "ENOTSUPP",
        _ => "",
    };
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    if name.is_empty() {
        format!("errno {n} ({text})")
    } else {
        format!("{name} ({text})")
    }
}

/// `vm.memfd_noexec`.
#[derive(Debug, Clone, Serialize)]
pub struct Memfd {
    /// The host's value; None when the kernel has no such sysctl (< 6.3).
    pub sysctl: Option<u32>,
    /// Can the sandbox set it to 2 (it writes `/proc/sys/vm/memfd_noexec`, which needs root)?
    pub settable_in_sandbox: Probe,
}

/// Is BPF LSM usable here (bpf in the active LSMs, and an `lsm` program loads)? For
/// `run --require lsm`.
pub fn bpf_lsm_usable() -> Probe {
    let mounts = host::mounts();
    let lsm = host::lsm_state(&mounts);
    let loads = bpf::probe()
        .into_iter()
        .find(|p| p.prog_type == "lsm")
        .map(|p| p.result)
        .unwrap_or_else(|| Probe::not_tested("no lsm probe"));
    match (lsm.bpf_active, loads.works) {
        (_, false) => Probe::failed_msg(format!("lsm programs do not load: {}", loads.why())),
        (None, true) => Probe::failed_msg(format!(
            "unknown whether the bpf LSM is active: {}",
            lsm.unknown.unwrap_or_default()
        )),
        (Some(false), true) => Probe::failed_msg("bpf is not in the active LSM list"),
        (Some(true), true) => real_lsm_programs(),
    }
}

/// The supervisor's own LSM programs pass this kernel's verifier?
fn real_lsm_programs() -> Probe {
    match crate::ebpf::lsm::probe() {
        Ok(()) => Probe::works(),
        Err(why) => Probe::failed_msg(format!(
            "the supervisor's LSM programs do not load here: {why}"
        )),
    }
}

/// BPF LSM: active, and usable (active and its programs load).
#[derive(Debug, Clone, Serialize)]
pub struct BpfLsm {
    /// `bpf` in the active LSM list; None when unknown.
    pub active: Option<bool>,
    /// The active LSMs, when readable.
    pub lsms: Option<Vec<String>>,
    /// Why `active` is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
    /// Active and `lsm` programs load: BPF LSM hooks would run here.
    pub usable: Probe,
}

/// The policy's protections on this host.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyReport {
    pub source: String,
    pub default: String,
    pub rules: usize,
    pub protections: Vec<Protection>,
}

/// Everything doctor found (the `--json` output).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub kernel: String,
    pub root: bool,
    pub euid: u32,
    /// 0 when Landlock is unavailable.
    pub landlock_abi: i32,
    pub seccomp: seccomp::SeccompReport,
    /// `PTRACE_SEIZE` of a child (the exec guard).
    pub ptrace: Probe,
    /// clone3 into new user, mount, PID, IPC, UTS and cgroup namespaces, as `run` does.
    pub user_namespaces: Probe,
    pub memfd_noexec: Memfd,
    pub bpf_programs: Vec<bpf::ProgramLoad>,
    pub bpf_lsm: BpfLsm,
    /// Where tracefs is mounted (empty: not mounted).
    pub tracefs: Vec<String>,
    pub cgroups: host::Cgroups,
    /// What `run`'s in-kernel network backstop needs: `cgroup_sock_addr` programs load and
    /// the session's cgroup can be created under the cgroup v2 hierarchy.
    pub network_backstop: Probe,
    /// How `run` gets the eBPF programs here: the host's pinned set (its path, and whether it
    /// exists yet) or a per-session load (and why).
    pub ebpf_programs: String,
    /// Where `[limits]` memory, processes and cpu would be enforced (cgroup v2 or v1), one line.
    pub resource_limits: ResourceLimits,
    pub policy: PolicyReport,
    /// Every distinct WEAKER line.
    pub weaker: Vec<String>,
    /// Not protections, but worth knowing (speed).
    pub notes: Vec<String>,
    /// Everything the policy needs is available: the exit code is 0.
    pub ok: bool,
}

/// Exit code when everything the policy needs is available.
pub const EXIT_OK: i32 = 0;
/// Exit code when something is weaker on this host.
pub const EXIT_WEAKER: i32 = 1;

/// The namespaces `run` clones its sandbox into.
const SANDBOX_NAMESPACES: u64 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP) as u64;
const SANDBOX_NAMESPACES_TEXT: &str = "NEWUSER|NEWNS|NEWPID|NEWIPC|NEWUTS|NEWCGROUP";

/// Can the session's DNS resolver bind port 53 of a loopback address? (An address in use
/// counts as yes: the resolver picks another.)
fn probe_dns_port() -> Result<(), String> {
    match std::net::UdpSocket::bind(("127.53.255.254", 53)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(()),
        Err(e) => Err(format!(
            "binding port 53 of 127.53.255.254: {} (needs root or CAP_NET_BIND_SERVICE)",
            errno_text(&e)
        )),
    }
}

fn probe_namespaces() -> Probe {
    let call = format!("clone3({SANDBOX_NAMESPACES_TEXT})");
    match sys::fork_single_threaded(SANDBOX_NAMESPACES) {
        Ok(None) => sys::exit_now(0),
        Ok(Some((_, pidfd))) => match sys::waitid_pidfd(pidfd.as_fd()) {
            Ok(sys::ExitStatus::Exited(0)) => Probe::works(),
            Ok(other) => Probe::failed_msg(format!("the cloned child ended with {other:?}")),
            Err(e) => Probe::failed("waitid", &e),
        },
        Err(e) => Probe::failed(&call, &e),
    }
}

/// Probe the host and evaluate `policy` against it.
pub fn report(policy: &agent_supervisor_policy::Policy) -> Report {
    // Forking probes first, while nothing else runs.
    let seccomp = seccomp::probe();
    let user_namespaces = probe_namespaces();
    let bpf_programs = bpf::probe();
    let mounts = host::mounts();
    let euid = sys::euid_egid().0;
    let root = euid == 0;
    let landlock_abi = sys::landlock_abi();
    let sysctl = host::memfd_noexec();
    let memfd = Memfd {
        sysctl,
        settable_in_sandbox: match (sysctl, root) {
            (None, _) => Probe::failed_msg("the kernel has no vm.memfd_noexec (Linux < 6.3)"),
            (Some(_), false) => {
                Probe::failed_msg("not root: only root can write /proc/sys/vm/memfd_noexec")
            }
            (Some(_), true) => Probe::works(),
        },
    };
    let load = |name: &str| {
        bpf_programs
            .iter()
            .find(|p| p.prog_type == name)
            .map(|p| p.result.clone())
            .unwrap_or_else(|| Probe::not_tested("no such probe"))
    };
    let lsm = host::lsm_state(&mounts);
    let lsm_loads = load("lsm");
    let bpf_lsm = BpfLsm {
        usable: match (lsm.bpf_active, lsm_loads.works) {
            (_, false) => {
                Probe::failed_msg(format!("lsm programs do not load: {}", lsm_loads.why()))
            }
            (None, true) => Probe::failed_msg(format!(
                "unknown whether the bpf LSM is active: {}",
                lsm.unknown.clone().unwrap_or_default()
            )),
            (Some(false), true) => Probe::failed_msg("bpf is not in the active LSM list"),
            (Some(true), true) => real_lsm_programs(),
        },
        active: lsm.bpf_active,
        lsms: lsm.active,
        unknown: lsm.unknown,
    };
    let tracefs = host::tracefs(&mounts);
    let cgroups = host::host_cgroups(&mounts);
    let ptrace = seccomp.ptrace.clone();
    // A backstop needs its program type to load and a session cgroup to attach it to.
    let backstop = |prog_type: &str| -> Result<(), String> {
        let program = load(prog_type)
            .as_result()
            .map_err(|why| format!("{prog_type} programs do not load: {why}"));
        let cgroup = host::session_cgroups_creatable(&cgroups, &mounts, euid);
        let problems: Vec<String> = [program, cgroup]
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    };
    let network_backstop = match backstop("cgroup_sock_addr") {
        Ok(()) => Probe::works(),
        Err(why) => Probe::failed_msg(why),
    };

    let abilities = Abilities {
        user_namespaces: user_namespaces.as_result(),
        seccomp_listener: seccomp.listener.as_result(),
        wait_killable_recv: seccomp.wait_killable_recv.as_result(),
        landlock_abi,
        seccomp_addfd: seccomp.addfd_send.as_result(),
        exec_guard: seccomp
            .continue_
            .as_result()
            .and_then(|()| ptrace.as_result()),
        memfd_noexec: memfd.settable_in_sandbox.as_result(),
        bpf_cgroup_sock_addr: network_backstop.as_result(),
        // The real programs, not only the program type: a kernel's verifier may refuse them
        // (Linux 6.1 refused an earlier build).
        bpf_exec_backstop: backstop("tp_btf").and_then(|()| {
            crate::ebpf::process::probe()
                .map_err(|why| format!("the exec backstop program does not load here: {why}"))
        }),
        bpf_tracepoint: load("tp_btf").as_result().or_else(|tp_btf| {
            load("tracepoint")
                .as_result()
                .and_then(|()| match tracefs.is_empty() {
                    true => Err("tracefs is not mounted".to_string()),
                    false => Ok(()),
                })
                .map_err(|tracepoint| format!("tp_btf: {tp_btf}; tracepoint: {tracepoint}"))
        }),
        bpf_lsm: bpf_lsm.usable.as_result(),
        dns_resolver: probe_dns_port(),
        resource_limits: crate::limits::host_can_enforce(&policy.limits),
    };
    let plan = policy.plan();
    let mut protections = needs::protections(policy, &plan);
    needs::evaluate(&mut protections, &abilities);
    let mut weaker: Vec<String> = Vec::new();
    for w in protections.iter().flat_map(|p| &p.weaker) {
        if !weaker.contains(w) {
            weaker.push(w.clone());
        }
    }
    let (limits_ok, limits_line) = crate::limits::doctor_line();
    let resource_limits = ResourceLimits {
        enforceable: limits_ok,
        detail: limits_line,
    };
    let mut notes = Vec::new();
    if seccomp.listener.works && !seccomp.sync_wake_up.works {
        notes.push(
            "SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP unavailable (Linux < 6.6): each trapped call costs tens of microseconds instead of a few"
                .to_string(),
        );
    }
    Report {
        kernel: host::kernel_release(),
        root,
        euid,
        landlock_abi,
        seccomp,
        ptrace,
        user_namespaces,
        memfd_noexec: memfd,
        bpf_programs,
        bpf_lsm,
        tracefs,
        cgroups,
        network_backstop,
        ebpf_programs: crate::ebpf::pinned::doctor_line(),
        resource_limits,
        policy: PolicyReport {
            source: policy.source.clone(),
            default: policy.default.to_string(),
            rules: policy.rules.len(),
            protections,
        },
        ok: weaker.is_empty(),
        weaker,
        notes,
    }
}

/// Width of the host labels.
const LABEL: usize = 28;

/// The human report.
pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "  {:<LABEL$}{value}", format!("{label}:"));
    };
    line("kernel", r.kernel.clone());
    line(
        "root",
        format!("{} (euid {})", if r.root { "yes" } else { "no" }, r.euid),
    );
    line(
        "Landlock",
        if r.landlock_abi > 0 {
            format!("ABI {}", r.landlock_abi)
        } else {
            "unavailable (ABI 0)".into()
        },
    );
    let s = &r.seccomp;
    line("seccomp listener", s.listener.describe());
    line("seccomp ID_VALID", s.id_valid.describe());
    line("seccomp CONTINUE", s.continue_.describe());
    line("seccomp ADDFD+SEND", s.addfd_send.describe());
    line("seccomp SYNC_WAKE_UP", s.sync_wake_up.describe());
    line(
        "seccomp WAIT_KILLABLE_RECV",
        s.wait_killable_recv.describe(),
    );
    line("ptrace (exec guard)", r.ptrace.describe());
    line(
        "user namespaces",
        if r.user_namespaces.works {
            format!("work (clone3 {SANDBOX_NAMESPACES_TEXT})")
        } else {
            r.user_namespaces.describe()
        },
    );
    line(
        "memfd_noexec sysctl",
        match r.memfd_noexec.sysctl {
            None => "not supported (Linux < 6.3)".into(),
            Some(v) => format!(
                "supported (vm.memfd_noexec = {v}); settable in the sandbox: {}",
                r.memfd_noexec.settable_in_sandbox.describe()
            ),
        },
    );
    for p in &r.bpf_programs {
        line(&format!("BPF {}", p.prog_type), p.describe());
    }
    line(
        "BPF LSM active",
        match (&r.bpf_lsm.active, &r.bpf_lsm.lsms) {
            (Some(a), Some(lsms)) => {
                format!("{} (lsm={})", if *a { "yes" } else { "no" }, lsms.join(","))
            }
            _ => format!(
                "unknown ({})",
                r.bpf_lsm.unknown.clone().unwrap_or_default()
            ),
        },
    );
    line(
        "BPF LSM usable",
        if r.bpf_lsm.usable.works {
            "yes".into()
        } else {
            format!("no ({})", r.bpf_lsm.usable.why())
        },
    );
    line(
        "tracefs",
        if r.tracefs.is_empty() {
            "not mounted".into()
        } else {
            format!("mounted at {}", r.tracefs.join(", "))
        },
    );
    let c = &r.cgroups;
    let mut cg = c.layout.to_string();
    if let Some(v2) = &c.cgroup2 {
        let _ = write!(
            cg,
            ": cgroup2 at {v2} (controllers: {})",
            if c.cgroup2_controllers.is_empty() {
                "none".into()
            } else {
                c.cgroup2_controllers.join(" ")
            }
        );
    }
    if !c.v1_controllers.is_empty() {
        let sep = if c.cgroup2.is_some() { ";" } else { ":" };
        let _ = write!(cg, "{sep} v1: {}", c.v1_controllers.join(" "));
    }
    line("cgroups", cg);
    line("resource limits", r.resource_limits.detail.clone());
    line(
        "network backstop (BPF)",
        if r.network_backstop.works {
            "available (cgroup_sock_addr loads, session cgroups can be created)".into()
        } else {
            r.network_backstop.describe()
        },
    );
    line("eBPF programs", r.ebpf_programs.clone());

    let pr = &r.policy;
    let mut text = format!("agent-supervisor doctor\n\nhost\n{out}\n");
    let _ = writeln!(
        text,
        "policy {} (default {}, {} rules): what enforces each protection",
        pr.source, pr.default, pr.rules
    );
    for p in &pr.protections {
        let _ = writeln!(
            text,
            "  [{}] {}",
            if p.available { "ok" } else { "WEAKER" },
            p.protection
        );
        let _ = writeln!(text, "      enforced by: {}", p.mechanism);
        let needs: Vec<&str> = p.needs.iter().map(|n| n.label()).collect();
        let _ = writeln!(text, "      needs: {}", needs.join(", "));
        for w in &p.weaker {
            let _ = writeln!(text, "      WEAKER: {w}");
        }
    }
    text.push('\n');
    for n in &r.notes {
        let _ = writeln!(text, "note: {n}");
    }
    if r.ok {
        let _ = writeln!(
            text,
            "result: everything this policy needs is available on this host"
        );
    } else {
        let _ = writeln!(
            text,
            "result: {} protection(s) weaker on this host (exit {EXIT_WEAKER}):",
            pr.protections.iter().filter(|p| !p.available).count()
        );
        for w in &r.weaker {
            let _ = writeln!(text, "WEAKER: {w}");
        }
    }
    text
}

/// `agent-supervisor doctor`: print the report; 0 when everything the policy needs is
/// available, 1 otherwise (errors, such as a bad policy, are the caller's 125).
pub fn run(opts: &Options) -> Result<i32> {
    let vars = session::vars(None)?;
    let policy = session::load_policy(opts.policy.as_deref(), &vars)?;
    let r = report(&policy);
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", render_text(&r));
    }
    Ok(if r.ok { EXIT_OK } else { EXIT_WEAKER })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_text_names_the_errno_and_says_what_it_means() {
        assert_eq!(
            errno_text(&io::Error::from_raw_os_error(libc::EPERM)),
            "EPERM (Operation not permitted)"
        );
        assert!(errno_text(&io::Error::from_raw_os_error(4095)).starts_with("errno 4095 ("));
    }
}
