//! agent-supervisor: run any AI agent under a TOML policy enforced by the Linux kernel.
//!
//! Layout (each module says what it does and why):
//! - [`sandbox`]: launching the agent in new namespaces with Landlock, masks and seccomp.
//! - [`supervise`]: the seccomp user-notification loop and one handler per syscall family
//!   (`exec`, `open`, `net`), plus the exec guard.
//! - [`approval`]: asking a human (terminal) or answering headless.
//! - [`audit`]: the JSON-lines audit log.
//! - [`audit_export`]: optional copies of the audit records to journald and OTLP.
//! - [`ci`]: CI-runner mode (`run --ci`): no prompts, a JSON report, GitHub annotations.
//! - [`cgroup`]: the session's own cgroup v2 directory (where the eBPF programs attach).
//! - [`limits`]: the session's resource limits (cgroup v2 or v1), timeout and how it ended.
//! - [`ebpf`]: the embedded eBPF object and the in-kernel network backstop.
//! - [`session`]: `agent-supervisor run` from policy to exit code.
//! - [`phases`]: how long each phase of a session's start-up and tear-down took (`-vv`).
//! - [`sys`]: every raw system call (the only `unsafe` code).
//!
//! Policies are parsed and decided by the pure `agent-supervisor-policy` crate.

pub mod approval;
pub mod audit;
pub mod audit_export;
pub mod cgroup;
pub mod ci;
pub mod daemon;
pub mod dns;
pub mod doctor;
pub mod ebpf;
pub mod explain;
pub mod limits;
pub mod phases;
pub mod sandbox;
pub mod session;
pub mod supervise;
pub mod sys;
pub mod trust;
