//! One session's loaded copy of the eBPF object and the cgroup it serves.
//!
//! Every supervisor loads its own copy of the object, with the session's cgroup v2 id as the
//! read-only global `SESSION_CGROUP` (and, when the running kernel's BTF gives them, the struct
//! offsets the process programs read as `KERNEL_OFFSETS`). The network backstop
//! ([`super::network`]) and the process programs ([`super::process`]) attach programs of this
//! one copy and take its maps, so both act on the same session and go away together:
//!
//! ```text
//!  SessionCgroup ──▶ Session::load ──▶ Ebpf (globals: SESSION_CGROUP, KERNEL_OFFSETS, EXEC_MODE)
//!                         ├─ network::attach ──▶ connect4/6, sendmsg4/6 + NET_* maps
//!                         └─ process::attach ──▶ sched_process_{exec,fork,exit}
//!                                                + EXEC_APPROVALS, PROC_EVENTS, PROC_EVENTS_LOST
//! ```
//!
//! Dropping the session detaches every program (the `Ebpf` goes first), then removes the cgroup.
#![forbid(unsafe_code)]

use agent_supervisor_common::{names, KernelOffsets, EXEC_ENFORCE, EXEC_REPORT};
use aya::maps::{Map, MapError};
use aya::programs::ProgramError;
use aya::{Ebpf, EbpfError, EbpfLoader};

use super::kernel_btf::{self, OffsetsError};
use crate::cgroup::{CgroupError, SessionCgroup};

/// Why a session's eBPF object, or one of its parts, could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BackstopError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("loading the eBPF object (needs root: CAP_BPF)")]
    Load(#[source] EbpfError),
    #[error("the embedded eBPF object has no {0}")]
    Missing(&'static str),
    #[error("{step} the eBPF program {program}")]
    Program {
        step: &'static str,
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("{step} the eBPF map {map}")]
    Map {
        step: &'static str,
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("kernel struct offsets")]
    Offsets(#[source] OffsetsError),
    #[error("reading the kernel's BTF for tp_btf programs")]
    Btf(#[source] aya::BtfError),
    #[error(
        "the supervisor is not in the initial PID namespace, so the thread ids it sees are not \
         the ones the kernel's tracepoint reports"
    )]
    NestedPidNamespace,
}

/// How `sched_process_exec` treats an exec without an approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecMode {
    /// Kill it (every exec of the session is trapped and approved by the supervisor).
    Enforce,
    /// Report it only (the policy lets every program run, nothing is trapped).
    Report,
}

/// A session's loaded eBPF object and its cgroup; see the module header.
pub struct Session {
    // Field order is drop order: programs (and their links) before the cgroup.
    ebpf: Ebpf,
    /// The kernel's BTF as aya reads it, parsed once per session (the loader and the
    /// `tp_btf` attach both need it).
    btf: Option<std::sync::Arc<aya::Btf>>,
    offsets: Result<KernelOffsets, OffsetsError>,
    exec_mode: ExecMode,
    /// Shared with the session (which applies the resource limits to it); removed when the
    /// last owner drops it, after the programs are detached.
    cgroup: std::sync::Arc<SessionCgroup>,
}

impl Session {
    /// Load a copy of the object for `cgroup`. The running kernel's struct offsets are looked
    /// up now; if that fails the object still loads (the network programs don't need them)
    /// and [`super::process::attach`] reports why later.
    pub fn load(
        cgroup: impl Into<std::sync::Arc<SessionCgroup>>,
        exec_mode: ExecMode,
    ) -> Result<Session, BackstopError> {
        let cgroup = cgroup.into();
        let cgroup_id = cgroup.id();
        let offsets = kernel_btf::running_kernel_offsets();
        let zero = KernelOffsets::default();
        let mode = match exec_mode {
            ExecMode::Enforce => EXEC_ENFORCE,
            ExecMode::Report => EXEC_REPORT,
        };
        tracing::debug!("kernel offsets read");
        let btf = aya::Btf::from_sys_fs().ok();
        tracing::debug!("kernel BTF parsed (aya)");
        let ebpf = EbpfLoader::new()
            .btf(btf.as_ref())
            .override_global(names::SESSION_CGROUP, &cgroup_id, true)
            .override_global(
                names::KERNEL_OFFSETS,
                offsets.as_ref().unwrap_or(&zero),
                true,
            )
            .override_global(names::EXEC_MODE, &mode, true)
            .load(super::object())
            .map_err(BackstopError::Load)?;
        Ok(Session {
            ebpf,
            btf: btf.map(std::sync::Arc::new),
            offsets,
            exec_mode,
            cgroup,
        })
    }

    /// The kernel's BTF (aya's), if it could be read.
    pub fn btf(&self) -> Option<std::sync::Arc<aya::Btf>> {
        self.btf.clone()
    }

    /// The kernel's BTF, read now if loading could not (the programs' attach needs it).
    pub fn btf_or_read(&self) -> Result<std::sync::Arc<aya::Btf>, BackstopError> {
        match self.btf() {
            Some(btf) => Ok(btf),
            None => aya::Btf::from_sys_fs()
                .map(std::sync::Arc::new)
                .map_err(BackstopError::Btf),
        }
    }

    /// The session cgroup.
    pub fn cgroup(&self) -> &SessionCgroup {
        &self.cgroup
    }

    /// What `sched_process_exec` does with an unapproved exec in this copy.
    pub fn exec_mode(&self) -> ExecMode {
        self.exec_mode
    }

    /// The kernel offsets the object was loaded with, or why there are none.
    pub fn offsets(&self) -> Result<KernelOffsets, BackstopError> {
        self.offsets.clone().map_err(BackstopError::Offsets)
    }

    /// The loaded object (programs are looked up by [`names`]).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The loaded object and the cgroup, together (to attach programs to the cgroup).
    pub fn parts_mut(&mut self) -> (&mut Ebpf, &SessionCgroup) {
        (&mut self.ebpf, &*self.cgroup)
    }

    /// Take map `name` out of the object (each map has one owner).
    pub fn take_map(&mut self, name: &'static str) -> Result<Map, BackstopError> {
        self.ebpf.take_map(name).ok_or(BackstopError::Missing(name))
    }
}

/// A copy of the object for no session (cgroup id 0: its programs act on nothing), with this
/// kernel's offsets, to ask the verifier whether programs load here (`doctor`). Nothing is
/// attached; everything is closed when the returned value is dropped.
pub fn load_for_probe() -> Result<(Ebpf, aya::Btf), BackstopError> {
    let offsets = kernel_btf::running_kernel_offsets().map_err(BackstopError::Offsets)?;
    let btf = aya::Btf::from_sys_fs().map_err(BackstopError::Btf)?;
    let ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global(names::SESSION_CGROUP, &0u64, true)
        .override_global(names::KERNEL_OFFSETS, &offsets, true)
        .override_global(names::EXEC_MODE, &EXEC_ENFORCE, true)
        .load(super::object())
        .map_err(BackstopError::Load)?;
    Ok((ebpf, btf))
}

/// Load some programs with `load` in a [`load_for_probe`] copy of the object: does this
/// kernel's verifier accept them? The error is one line for `doctor`.
pub fn probe(
    load: impl FnOnce(&mut Ebpf, &aya::Btf) -> Result<(), BackstopError>,
) -> Result<(), String> {
    let (mut ebpf, btf) = load_for_probe().map_err(|e| error_chain(&e))?;
    load(&mut ebpf, &btf).map_err(|e| error_chain(&e))
}

/// `BackstopError::Map` for `step` on `map`.
pub fn map_error(step: &'static str, map: &'static str) -> impl Fn(MapError) -> BackstopError {
    move |source| BackstopError::Map { step, map, source }
}

/// `BackstopError::Program` for `step` on `program`.
pub fn program_error(
    step: &'static str,
    program: &'static str,
) -> impl Fn(ProgramError) -> BackstopError {
    move |source| BackstopError::Program {
        step,
        program,
        source,
    }
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}
