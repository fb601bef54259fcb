//! From a policy's enforcement plan to kernel features, and from missing features to the
//! "WEAKER: ..." lines the doctor prints. Pure: the host's abilities come in as [`Abilities`].
//!
//! Every protection of a session is listed: the ones every session has (the sandbox, the
//! seccomp filters, the `[filesystem]` trees, memfd exec, network, and exec when the policy's
//! default is not `allow`), then one per rule with the mechanism [`Policy::plan`] chose for it.
//! What a mechanism needs is read from the plan's own description of it, so a new mechanism
//! the doctor does not know is reported as unverified rather than silently passed.
#![forbid(unsafe_code)]

use agent_supervisor_policy::{Plan, Policy};
use serde::Serialize;

/// A kernel feature a protection depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Need {
    /// clone3 into new user, mount, PID, IPC, UTS and cgroup namespaces (the sandbox, masks).
    UserNamespaces,
    /// A seccomp user-notification listener the supervisor can hold and answer.
    SeccompListener,
    /// `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` (5.19+).
    WaitKillableRecv,
    /// Landlock at all (5.13+).
    Landlock,
    /// Every Landlock right the supervisor handles (ABI 6, 6.12+).
    LandlockAbi6,
    /// `SECCOMP_IOCTL_NOTIF_ADDFD` with `SECCOMP_ADDFD_FLAG_SEND` (5.14+): trapped opens.
    SeccompAddfd,
    /// `SECCOMP_USER_NOTIF_FLAG_CONTINUE` and `PTRACE_SEIZE`: the exec guard.
    ExecGuard,
    /// `vm.memfd_noexec` settable in the sandbox (6.3+, root).
    MemfdNoexec,
    /// BPF `cgroup_sock_addr` programs, and a cgroup v2 hierarchy where the session's own
    /// cgroup can be created to attach them to.
    BpfCgroupSockAddr,
    /// BPF tracepoint programs (`tp_btf`, or classic ones with tracefs mounted).
    BpfTracepoint,
    /// The in-kernel exec backstop: a `tp_btf/sched_process_exec` program on the session's own
    /// cgroup v2 directory.
    BpfExecBackstop,
    /// BPF LSM programs that load and an active `bpf` LSM.
    BpfLsm,
    /// Port 53 of a loopback address can be bound (root, `CAP_NET_BIND_SERVICE`): the
    /// session's DNS resolver.
    DnsResolver,
    /// The cgroup controllers (v2, or v1 on hybrid hosts) of the policy's `[limits]` memory,
    /// processes and cpu, and root to create the session's cgroups.
    ResourceLimits,
    /// A mechanism description the doctor does not recognise.
    Unrecognised,
}

impl Need {
    /// Short name for the `needs:` line.
    pub fn label(self) -> &'static str {
        match self {
            Need::UserNamespaces => "user namespaces",
            Need::SeccompListener => "seccomp listener",
            Need::WaitKillableRecv => "seccomp WAIT_KILLABLE_RECV",
            Need::Landlock => "Landlock",
            Need::LandlockAbi6 => "Landlock ABI 6",
            Need::SeccompAddfd => "seccomp ADDFD+SEND",
            Need::ExecGuard => "exec guard (seccomp CONTINUE + ptrace)",
            Need::MemfdNoexec => "vm.memfd_noexec",
            Need::BpfCgroupSockAddr => "BPF cgroup_sock_addr",
            Need::BpfExecBackstop => "BPF tp_btf sched_process_exec",
            Need::BpfTracepoint => "BPF tracepoint",
            Need::BpfLsm => "BPF LSM",
            Need::DnsResolver => "DNS resolver (port 53)",
            Need::ResourceLimits => "cgroup controllers (memory, pids, cpu)",
            Need::Unrecognised => "unrecognised mechanism",
        }
    }
}

/// What this host can do, each `Err` saying why not.
#[derive(Debug, Clone)]
pub struct Abilities {
    pub user_namespaces: Result<(), String>,
    pub seccomp_listener: Result<(), String>,
    pub wait_killable_recv: Result<(), String>,
    pub landlock_abi: i32,
    pub seccomp_addfd: Result<(), String>,
    pub exec_guard: Result<(), String>,
    pub memfd_noexec: Result<(), String>,
    pub bpf_cgroup_sock_addr: Result<(), String>,
    pub bpf_exec_backstop: Result<(), String>,
    pub bpf_tracepoint: Result<(), String>,
    pub bpf_lsm: Result<(), String>,
    pub dns_resolver: Result<(), String>,
    /// The controllers the policy's limits need, here.
    pub resource_limits: Result<(), String>,
}

/// The Landlock features the supervisor handles that `abi` lacks (empty from ABI 6).
pub fn landlock_missing(abi: i32) -> Vec<&'static str> {
    [
        (2, "file reparenting (ABI 2)"),
        (3, "truncate (ABI 3)"),
        (5, "device ioctl (ABI 5)"),
        (6, "abstract unix socket and signal scoping (ABI 6)"),
    ]
    .into_iter()
    .filter(|(needed, _)| abi < *needed)
    .map(|(_, what)| what)
    .collect()
}

/// The WEAKER line for `need` about `subject`, or None when the host has it.
pub fn weakness(need: Need, host: &Abilities, subject: &str) -> Option<String> {
    let missing = |r: &Result<(), String>| r.as_ref().err().cloned();
    match need {
        Need::UserNamespaces => missing(&host.user_namespaces).map(|why| {
            format!("cannot create the sandbox's namespaces ({why}): run refuses to start")
        }),
        Need::SeccompListener => missing(&host.seccomp_listener).map(|why| {
            format!("seccomp user notification unavailable ({why}): run refuses to start")
        }),
        Need::WaitKillableRecv => missing(&host.wait_killable_recv).map(|why| {
            format!("seccomp WAIT_KILLABLE_RECV unavailable ({why}): a signal during a pending decision restarts the call")
        }),
        Need::Landlock => (host.landlock_abi < 1)
            .then(|| format!("Landlock unavailable: {subject} not enforced by the kernel")),
        Need::LandlockAbi6 => {
            let lacking = landlock_missing(host.landlock_abi);
            (host.landlock_abi >= 1 && !lacking.is_empty()).then(|| {
                format!(
                    "Landlock ABI {} < 6: {} not enforced for {subject}",
                    host.landlock_abi,
                    lacking.join(", ")
                )
            })
        }
        Need::SeccompAddfd => missing(&host.seccomp_addfd).map(|why| {
            format!("seccomp ADDFD unavailable ({why}): opens trapped for {subject} fail (EMFILE) instead of being performed")
        }),
        Need::ExecGuard => missing(&host.exec_guard).map(|why| {
            format!("exec guard unavailable ({why}): execs checked for {subject} are refused (EACCES)")
        }),
        Need::MemfdNoexec => missing(&host.memfd_noexec).map(|why| {
            format!("vm.memfd_noexec cannot be set in the sandbox ({why}): memfd exec is still refused by Landlock")
        }),
        Need::BpfCgroupSockAddr => missing(&host.bpf_cgroup_sock_addr).map(|why| {
            format!("the in-kernel network backstop is off ({why}): network destinations are checked by the supervisor only, not by the kernel")
        }),
        Need::BpfExecBackstop => missing(&host.bpf_exec_backstop).map(|why| {
            format!("the in-kernel exec backstop is off ({why}): executed files are checked by the supervisor's exec guard only, not by the kernel")
        }),
        Need::BpfTracepoint => missing(&host.bpf_tracepoint).map(|why| {
            format!("BPF tracepoints unavailable ({why}): no in-kernel backstop for {subject}")
        }),
        Need::BpfLsm => missing(&host.bpf_lsm)
            .map(|why| format!("BPF LSM unavailable ({why}): {subject} not enforced by LSM hooks")),
        Need::DnsResolver => missing(&host.dns_resolver).map(|why| {
            format!("the session's DNS resolver could not start ({why}): DNS is refused and host-name rules never match")
        }),
        Need::ResourceLimits => missing(&host.resource_limits).map(|why| {
            if subject.starts_with("the default limits") {
                format!("{subject} are not enforced ({why}): a runaway agent can exhaust the host")
            } else {
                format!("{subject} cannot be enforced ({why}): run refuses to start (unless --best-effort-limits)")
            }
        }),
        Need::Unrecognised => Some(format!(
            "doctor does not know which kernel features enforce {subject}: unverified"
        )),
    }
}

/// The kernel features a mechanism description (one of [`Plan::mechanisms`]) relies on.
pub fn needs_of(mechanism: &str) -> Vec<Need> {
    let has = |s: &str| mechanism.contains(s);
    let mut needs = Vec::new();
    let mut add = |n: Need, on: bool| {
        if on && !needs.contains(&n) {
            needs.push(n);
        }
    };
    add(Need::UserNamespaces, has("mount mask"));
    add(Need::SeccompListener, has("seccomp user notification"));
    add(
        Need::SeccompAddfd,
        has("injects the fd") || has("user notification on open"),
    );
    add(Need::ExecGuard, has("execve"));
    add(Need::Landlock, has("Landlock"));
    add(
        Need::BpfCgroupSockAddr,
        has("cgroup_sock_addr") || has("cgroup/connect") || has("cgroup/sendmsg"),
    );
    add(
        Need::BpfTracepoint,
        has("tracepoint") || has("tp_btf") || has("sched_process_exec"),
    );
    add(Need::BpfLsm, has("BPF LSM") || has("lsm/"));
    if needs.is_empty() {
        needs.push(Need::Unrecognised);
    }
    needs
}

/// One protection of a session and what enforces it.
#[derive(Debug, Clone, Serialize)]
pub struct Protection {
    /// What is protected: `rule 3 at FILE:14:1: deny command "rm" ...`, or a session-wide one.
    pub protection: String,
    /// Index into the policy's rules, for rule protections.
    pub rule: Option<usize>,
    /// The enforcing mechanism (for rules: `policy.plan().mechanisms[i]`).
    pub mechanism: String,
    /// The kernel features it relies on.
    pub needs: Vec<Need>,
    /// Is every one of them available here?
    pub available: bool,
    /// What is weaker on this host (empty when `available`).
    pub weaker: Vec<String>,
}

/// Every protection of a session under `policy`, with what it needs (not yet evaluated).
pub fn protections(policy: &Policy, plan: &Plan) -> Vec<Protection> {
    let p = |protection: String, rule, mechanism: String, needs: Vec<Need>| Protection {
        protection,
        rule,
        mechanism,
        needs,
        available: true,
        weaker: Vec::new(),
    };
    let mut out = vec![
        p(
            "sandbox: namespaces, private /proc and /dev, mount masks".into(),
            None,
            "clone3 into new user, mount, PID, IPC, UTS and cgroup namespaces".into(),
            vec![Need::UserNamespaces],
        ),
        p(
            "seccomp filters: fixed denials and per-call decisions".into(),
            None,
            "seccomp (EPERM for dangerous syscalls) + a user-notification listener held by the supervisor".into(),
            vec![Need::SeccompListener, Need::WaitKillableRecv],
        ),
        p(
            "[filesystem] trees".into(),
            None,
            if crate::sandbox::view::reads_by_view(plan) {
                "the mount view for reads (only the read trees exist in the agent's root), \
                 Landlock write/execute grants, abstract unix socket and signal scoping"
                    .into()
            } else {
                "Landlock read/write/execute grants, abstract unix socket and signal scoping".into()
            },
            vec![Need::Landlock, Need::LandlockAbi6],
        ),
        p(
            "metadata changes outside the write trees (chmod, chown, utimes, xattrs)".into(),
            None,
            match &plan.writable_view {
                None => format!(
                    "{}: every mount of the sandbox's namespace read-only, each write tree bound \
                     back writable on top; remounting is refused by seccomp (the mount family)",
                    agent_supervisor_policy::READ_ONLY_VIEW
                ),
                Some(why) => format!(
                    "file permissions only: the view stays writable ({why}); Landlock has no \
                     right for these calls"
                ),
            },
            vec![Need::UserNamespaces],
        ),
        p(
            "memfd exec".into(),
            None,
            "vm.memfd_noexec = 2 in the sandbox's PID namespace, backed by Landlock".into(),
            vec![Need::MemfdNoexec],
        ),
    ];
    let default = policy.default;
    if plan.notify_exec {
        out.push(p(
            format!("programs no rule matches (default {default})"),
            None,
            "seccomp user notification on execve/execveat + exec guard".into(),
            vec![Need::SeccompListener, Need::ExecGuard],
        ));
        out.push(p(
            "executed files, in the kernel".into(),
            None,
            "BPF tp_btf/sched_process_exec on the session's own cgroup: an exec the exec guard did not approve is killed before it runs".into(),
            vec![Need::BpfExecBackstop],
        ));
    }
    if plan.notify_network {
        out.push(p(
            format!("network destinations no rule matches (default {default})"),
            None,
            "seccomp user notification on connect/sendto/sendmsg/bind (the supervisor connects the agent's socket itself)".into(),
            vec![Need::SeccompListener],
        ));
        out.push(p(
            "network destinations, in the kernel".into(),
            None,
            "BPF cgroup/connect4, connect6, sendmsg4, sendmsg6 (cgroup_sock_addr) on the session's own cgroup v2 directory, fed with the supervisor's allow decisions".into(),
            vec![Need::BpfCgroupSockAddr],
        ));
        out.push(p(
            "host names in network rules".into(),
            None,
            "the session's DNS resolver on port 53 of a 127.53.0.0/16 address: names the policy refuses are never forwarded, answers' addresses go into the cgroup hooks' maps until their TTL".into(),
            vec![Need::DnsResolver],
        ));
    }
    let limits = &policy.limits;
    let limited: Vec<(&str, bool)> = [
        (
            "memory",
            limits.memory.value.is_some(),
            limits.memory.is_explicit(),
        ),
        (
            "processes",
            limits.processes.value.is_some(),
            limits.processes.is_explicit(),
        ),
        ("cpu", limits.cpu.value.is_some(), limits.cpu.is_explicit()),
    ]
    .into_iter()
    .filter(|(_, on, _)| *on)
    .map(|(k, _, explicit)| (k, explicit))
    .collect();
    if !limited.is_empty() {
        let keys: Vec<&str> = limited.iter().map(|(k, _)| *k).collect();
        let subject = if limited.iter().any(|(_, explicit)| *explicit) {
            format!("[limits] {}", keys.join(", "))
        } else {
            format!("the default limits ({})", keys.join(", "))
        };
        out.push(p(
            subject,
            None,
            "the session's cgroups: memory.max, pids.max, cpu.max (cgroup v2), or the v1 memory, pids and cpu hierarchies on hybrid hosts".into(),
            vec![Need::ResourceLimits],
        ));
    }
    if crate::ebpf::lsm::relevant(policy, plan) {
        out.push(p(
            "denied files and programs by inode, and files put into a denied directory after the start, in the kernel".into(),
            None,
            "BPF LSM lsm/file_open, lsm/bprm_check_security, lsm/mmap_file for the session's cgroup: the inodes of denied files and commands, whatever path reaches them, and (lsm/file_open, up to 16 levels of d_parent) any file below a denied directory, even one created or renamed there after the start".into(),
            vec![Need::BpfLsm],
        ));
    }
    for (i, mechanism) in plan.mechanisms.iter().enumerate() {
        out.push(p(
            policy.describe_rule(i),
            Some(i),
            mechanism.clone(),
            needs_of(mechanism),
        ));
    }
    out
}

/// Fill in `available` and `weaker` for this host.
pub fn evaluate(protections: &mut [Protection], host: &Abilities) {
    for p in protections {
        let subject = match p.rule {
            Some(i) => format!("rule {i}"),
            None => p
                .protection
                .split(':')
                .next()
                .unwrap_or_default()
                .to_string(),
        };
        p.weaker = p
            .needs
            .iter()
            .filter_map(|n| weakness(*n, host, &subject))
            .collect();
        p.available = p.weaker.is_empty();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn everything() -> Abilities {
        Abilities {
            user_namespaces: Ok(()),
            seccomp_listener: Ok(()),
            wait_killable_recv: Ok(()),
            landlock_abi: 7,
            seccomp_addfd: Ok(()),
            exec_guard: Ok(()),
            memfd_noexec: Ok(()),
            bpf_cgroup_sock_addr: Ok(()),
            bpf_exec_backstop: Ok(()),
            bpf_tracepoint: Ok(()),
            bpf_lsm: Ok(()),
            dns_resolver: Ok(()),
            resource_limits: Ok(()),
        }
    }

    #[test]
    fn mechanisms_map_to_the_features_they_use() {
        assert_eq!(
            needs_of("seccomp user notification on open* (the supervisor opens the file itself and injects the fd), backed by a Landlock read grant on /srv"),
            vec![Need::SeccompListener, Need::SeccompAddfd, Need::Landlock]
        );
        assert_eq!(
            needs_of("seccomp user notification on execve/execveat (exec checked by the supervisor, backed by Landlock execute rights)"),
            vec![Need::SeccompListener, Need::ExecGuard, Need::Landlock]
        );
        assert_eq!(
            needs_of("mount mask (empty file/dir bound over matches present at start; /root/.ssh masked whole) + Landlock"),
            vec![Need::UserNamespaces, Need::Landlock]
        );
        assert_eq!(
            needs_of("Landlock read grant on /data"),
            vec![Need::Landlock]
        );
        assert_eq!(
            needs_of("cgroup/connect4 program checking the session's map"),
            vec![Need::BpfCgroupSockAddr]
        );
        assert_eq!(needs_of("a brand new thing"), vec![Need::Unrecognised]);
    }

    #[test]
    fn missing_features_become_weaker_lines() {
        let mut host = everything();
        assert_eq!(weakness(Need::Landlock, &host, "rule 1"), None);
        host.landlock_abi = 0;
        assert_eq!(
            weakness(Need::Landlock, &host, "[filesystem] trees").as_deref(),
            Some("Landlock unavailable: [filesystem] trees not enforced by the kernel")
        );
        // ABI 0 is reported once (as Landlock), not again as a partial ABI.
        assert_eq!(weakness(Need::LandlockAbi6, &host, "x"), None);
        host.landlock_abi = 3;
        assert_eq!(
            weakness(Need::LandlockAbi6, &host, "[filesystem] trees").as_deref(),
            Some("Landlock ABI 3 < 6: device ioctl (ABI 5), abstract unix socket and signal scoping (ABI 6) not enforced for [filesystem] trees")
        );
        host.seccomp_addfd = Err("EINVAL".into());
        assert!(weakness(Need::SeccompAddfd, &host, "rule 2")
            .is_some_and(|w| w.contains("EINVAL") && w.contains("rule 2")));
        assert!(weakness(Need::Unrecognised, &everything(), "rule 9").is_some());
    }
}
