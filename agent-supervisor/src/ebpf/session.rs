//! One session's part of the eBPF programs: the programs it uses and the map entries it
//! wrote, keyed by its cgroup v2 id.
//!
//! The programs are loaded once per host into a set pinned under bpffs ([`super::pinned`]);
//! a session opens that set (a few `BPF_OBJ_GET`s), attaches the network programs to its own
//! cgroup and writes its entries. Where the pinned set can't be used (no bpffs, not root
//! enough to make it), the session loads a private copy of the object instead, exactly as
//! every session did before the set existed: the same programs and maps, gone with the
//! session. The network backstop ([`super::network`]), the process programs
//! ([`super::process`]) and the LSM programs ([`super::lsm`]) work the same on both:
//!
//! ```text
//!  SessionCgroup ──▶ Session::load ──▶ pinned set + a ring slot claimed in SLOT_OWNERS
//!                         │            (or a private copy of the object: no set, no free slot)
//!                         ├─ network::attach ──▶ connect4/6, sendmsg4/6 on the cgroup,
//!                         │                      NET_SESSION, NET_MODE[cgid], NET_ALLOW/NET_RULES
//!                         ├─ process::attach ──▶ ring of the slot (PROC_EVENTS[slot]),
//!                         │                      PROC_EVENTS_LOST[cgid], SESSIONS[cgid]
//!                         └─ lsm::attach ──────▶ INODE_DENY[(cgid, dev, ino)]
//! ```
//!
//! Dropping the session detaches its network programs, removes every entry it wrote, then
//! removes the cgroup.
#![forbid(unsafe_code)]

use agent_supervisor_common::{lsm_names, names, KernelOffsets};
use aya::maps::{Map, MapError};
use aya::programs::{BtfTracePoint, CgroupAttachMode, CgroupSockAddr, Lsm, ProgramError};
use aya::{Ebpf, EbpfError, EbpfLoader};

use super::kernel_btf::{self, OffsetsError};
use super::pinned::PinnedSet;
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
    #[error("pinned eBPF set: {0}")]
    Pinned(String),
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

/// Where a session's programs and maps come from.
enum Source {
    /// The host's pinned set, and the ring slot the session claimed in it.
    Pinned(PinnedSet, u32),
    /// A copy of the object loaded for this session only (the fallback).
    Private {
        ebpf: Box<Ebpf>,
        /// The kernel's BTF as aya reads it, parsed once (the loader and the attach of
        /// `tp_btf` and LSM programs need it).
        btf: Option<std::sync::Arc<aya::Btf>>,
    },
}

/// Something the session wrote into a shared map, taken back when it ends.
type Cleanup = Box<dyn FnOnce() + Send>;

/// A session's programs and map entries, and its cgroup; see the module header.
pub struct Session {
    /// The network programs attached to the cgroup from the pinned set (their links detach
    /// when they are dropped; a private copy keeps them in its `Ebpf`).
    network_programs: Vec<CgroupSockAddr>,
    /// The links of the pinned set's network programs to the cgroup, made with a plain
    /// `BPF_LINK_CREATE` (closing one detaches its program at once: no wait).
    network_links: Vec<std::os::fd::OwnedFd>,
    /// Run in order when the session is dropped, after the network programs are detached.
    cleanups: Vec<Cleanup>,
    source: Source,
    offsets: Result<KernelOffsets, OffsetsError>,
    exec_mode: ExecMode,
    /// Shared with the session (which applies the resource limits to it); removed when the
    /// last owner drops it, after the programs are detached.
    cgroup: std::sync::Arc<SessionCgroup>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.network_links.clear();
        self.network_programs.clear();
        for cleanup in self.cleanups.drain(..) {
            cleanup();
        }
        // Last: the SESSIONS entry is gone (the programs no longer write into the slot) and
        // the session's reader has stopped before the session is dropped.
        if let Source::Pinned(set, slot) = &self.source {
            set.release_slot(*slot, self.cgroup.id());
        }
    }
}

impl Session {
    /// Open the host's pinned set (making it on first use) for `cgroup`; where that is not
    /// possible, load a private copy of the object. The running kernel's struct offsets are
    /// looked up now (cached per boot); if that fails the network programs still work and
    /// [`super::process::attach`] reports why later.
    pub fn load(
        cgroup: impl Into<std::sync::Arc<SessionCgroup>>,
        exec_mode: ExecMode,
    ) -> Result<Session, BackstopError> {
        let cgroup = cgroup.into();
        let offsets = kernel_btf::running_kernel_offsets();
        let pinned = match &offsets {
            Ok(o) => PinnedSet::open_or_create(o).map_err(|e| error_chain(&e)),
            Err(e) => Err(format!("no kernel struct offsets: {}", error_chain(e))),
        };
        Self::load_from(cgroup, exec_mode, offsets, pinned)
    }

    /// [`Self::load`] with the pinned set in `root`, made with `slots` ring slots when it is
    /// made (tests: slot exhaustion on a set of their own).
    pub fn load_in(
        cgroup: impl Into<std::sync::Arc<SessionCgroup>>,
        exec_mode: ExecMode,
        root: &std::path::Path,
        slots: u32,
    ) -> Result<Session, BackstopError> {
        let offsets = kernel_btf::running_kernel_offsets();
        let pinned = match &offsets {
            Ok(o) => {
                PinnedSet::open_or_create_with_slots(root, o, slots).map_err(|e| error_chain(&e))
            }
            Err(e) => Err(format!("no kernel struct offsets: {}", error_chain(e))),
        };
        Self::load_from(cgroup.into(), exec_mode, offsets, pinned)
    }

    fn load_from(
        cgroup: std::sync::Arc<SessionCgroup>,
        exec_mode: ExecMode,
        offsets: Result<KernelOffsets, OffsetsError>,
        pinned: Result<PinnedSet, String>,
    ) -> Result<Session, BackstopError> {
        let pinned = pinned.and_then(|set| match set.claim_slot(cgroup.id()) {
            Ok(Some(slot)) => Ok((set, slot)),
            Ok(None) => Err(format!(
                "all {} ring slots of the pinned set are used by running sessions",
                agent_supervisor_common::RING_SLOTS
            )),
            Err(e) => Err(format!("claiming a ring slot: {}", error_chain(&e))),
        });
        let source = match pinned {
            Ok((set, slot)) => {
                tracing::debug!("ebpf: ring slot {slot} of the pinned set {}", set.id());
                Source::Pinned(set, slot)
            }
            Err(why) => {
                tracing::debug!("ebpf: no pinned set ({why}): loading a copy for this session");
                let started = std::time::Instant::now();
                let zero = KernelOffsets::default();
                let btf = aya::Btf::from_sys_fs().ok();
                let ebpf = EbpfLoader::new()
                    .btf(btf.as_ref())
                    .override_global(
                        names::KERNEL_OFFSETS,
                        offsets.as_ref().unwrap_or(&zero),
                        true,
                    )
                    .load(super::object())
                    .map_err(BackstopError::Load)?;
                tracing::debug!(
                    "ebpf: loaded a private copy in {:.1} ms",
                    started.elapsed().as_secs_f64() * 1e3
                );
                Source::Private {
                    ebpf: Box::new(ebpf),
                    btf: btf.map(std::sync::Arc::new),
                }
            }
        };
        Ok(Session {
            network_programs: Vec::new(),
            network_links: Vec::new(),
            cleanups: Vec::new(),
            source,
            offsets,
            exec_mode,
            cgroup,
        })
    }

    /// The pinned set's id, or None for a private copy.
    pub fn pinned_set(&self) -> Option<&str> {
        match &self.source {
            Source::Pinned(set, _) => Some(set.id()),
            Source::Private { .. } => None,
        }
    }

    /// The session cgroup.
    pub fn cgroup(&self) -> &SessionCgroup {
        &self.cgroup
    }

    /// What `sched_process_exec` does with an unapproved exec of this session.
    pub fn exec_mode(&self) -> ExecMode {
        self.exec_mode
    }

    /// The kernel offsets the programs were loaded with, or why there are none.
    pub fn offsets(&self) -> Result<KernelOffsets, BackstopError> {
        self.offsets.clone().map_err(BackstopError::Offsets)
    }

    /// A handle on map `name`. From the pinned set: a new handle each call; from a private
    /// copy: taken out of it (each map has one owner).
    pub fn take_map(&mut self, name: &'static str) -> Result<Map, BackstopError> {
        match &mut self.source {
            Source::Pinned(set, _) => set.map(name),
            Source::Private { ebpf, .. } => ebpf.take_map(name).ok_or(BackstopError::Missing(name)),
        }
    }

    /// A handle on the shared map `name` for taking back what the session wrote, or None
    /// when the map is the session's own (a private copy: it goes with the session).
    pub fn shared_map(&self, name: &'static str) -> Result<Option<Map>, BackstopError> {
        match &self.source {
            Source::Pinned(set, _) => set.map(name).map(Some),
            Source::Private { .. } => Ok(None),
        }
    }

    /// The session's ring slot and its ring buffer: the pinned set's ring of the slot the
    /// session claimed (one `BPF_OBJ_GET`), or for a private copy a new ring put into slot 0
    /// of its own `PROC_EVENTS` (a map-of-maps write: it waits for an RCU grace period).
    pub fn ring(&mut self) -> Result<(u32, aya::maps::MapData), BackstopError> {
        match &mut self.source {
            Source::Pinned(set, slot) => Ok((*slot, set.ring(*slot)?)),
            Source::Private { ebpf, .. } => {
                let ring = aya::maps::MapData::create(
                    super::pinned::ring_buffer_definition(),
                    "proc_events",
                    None,
                )
                .map_err(map_error(
                    "creating the session's ring buffer for",
                    names::PROC_EVENTS,
                ))?;
                let mut pool: aya::maps::ArrayOfMaps<&mut aya::maps::MapData> =
                    aya::maps::ArrayOfMaps::try_from(
                        ebpf.map_mut(names::PROC_EVENTS)
                            .ok_or(BackstopError::Missing(names::PROC_EVENTS))?,
                    )
                    .map_err(map_error("opening", names::PROC_EVENTS))?;
                pool.set(0, &ring, 0).map_err(map_error(
                    "inserting the session's ring buffer into",
                    names::PROC_EVENTS,
                ))?;
                Ok((0, ring))
            }
        }
    }

    /// Run `cleanup` when the session ends (after its network programs are detached).
    pub fn on_end(&mut self, cleanup: impl FnOnce() + Send + 'static) {
        self.cleanups.push(Box::new(cleanup));
    }

    /// Attach the network programs to the session cgroup, in `Single` mode: no descendant
    /// cgroup can override them (a BPF link is always "multi", where every attached program
    /// must agree, so nothing below can loosen them).
    pub fn attach_network_programs(&mut self) -> Result<(), BackstopError> {
        use aya::programs::CgroupSockAddrAttachType as T;
        let attach_types = [T::Connect4, T::Connect6, T::UDPSendMsg4, T::UDPSendMsg6];
        for (name, attach_type) in names::NETWORK_PROGRAMS.into_iter().zip(attach_types) {
            match &mut self.source {
                Source::Pinned(set, _) => {
                    // A link straight from the pin: aya's `from_pin` would detect the
                    // kernel's BPF features first (~20 probe loads, a third of the attach).
                    match set.link_network_program(name, attach_type, &self.cgroup) {
                        Ok(link) => {
                            self.network_links.push(link);
                            continue;
                        }
                        Err(e) => tracing::debug!(
                            "ebpf: BPF_LINK_CREATE of {name}: {e}; attaching through aya"
                        ),
                    }
                    let mut program = set.network_program(name, attach_type)?;
                    program
                        .attach(&*self.cgroup, CgroupAttachMode::Single)
                        .map_err(program_error("attaching to the session cgroup", name))?;
                    self.network_programs.push(program);
                }
                Source::Private { ebpf, .. } => {
                    load_network_program(ebpf, name)?
                        .attach(&*self.cgroup, CgroupAttachMode::Single)
                        .map_err(program_error("attaching to the session cgroup", name))?;
                }
            }
        }
        Ok(())
    }

    /// Make sure the process programs run: in the pinned set they do already; a private
    /// copy loads and attaches them now.
    pub fn ensure_process_programs(&mut self) -> Result<(), BackstopError> {
        let Source::Private { ebpf, btf } = &mut self.source else {
            return Ok(());
        };
        let btf = read_btf(btf)?;
        load_process_programs(ebpf, &btf, true)
    }

    /// Make sure the BPF LSM programs run: the pinned set has them when `bpf` was an active
    /// LSM when it was made; a private copy loads and attaches them now.
    pub fn ensure_lsm_programs(&mut self) -> Result<(), BackstopError> {
        match &mut self.source {
            Source::Pinned(set, _) if set.has_lsm() => Ok(()),
            Source::Pinned(set, _) => Err(BackstopError::Pinned(format!(
                "the set {} has no BPF LSM programs (bpf was not an active LSM when it was made)",
                set.id()
            ))),
            Source::Private { ebpf, btf } => {
                let btf = read_btf(btf)?;
                load_lsm_programs(ebpf, &btf, true)
            }
        }
    }
}

/// The kernel's BTF, read now if loading could not.
fn read_btf(
    btf: &mut Option<std::sync::Arc<aya::Btf>>,
) -> Result<std::sync::Arc<aya::Btf>, BackstopError> {
    if let Some(btf) = btf {
        return Ok(btf.clone());
    }
    let read = std::sync::Arc::new(aya::Btf::from_sys_fs().map_err(BackstopError::Btf)?);
    *btf = Some(read.clone());
    Ok(read)
}

/// Load the process programs of `ebpf` into the kernel, and attach them when `attach`.
pub fn load_process_programs(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    attach: bool,
) -> Result<(), BackstopError> {
    for name in names::PROCESS_PROGRAMS {
        let program: &mut BtfTracePoint = find_program(ebpf, name)?;
        program
            .load(name, btf)
            .map_err(program_error("loading", name))?;
        if attach {
            program.attach().map_err(program_error("attaching", name))?;
        }
    }
    Ok(())
}

/// Load the BPF LSM programs of `ebpf` into the kernel, and attach them when `attach`.
pub fn load_lsm_programs(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    attach: bool,
) -> Result<(), BackstopError> {
    for (name, hook) in lsm_names::PROGRAMS {
        let program: &mut Lsm = find_program(ebpf, name)?;
        program
            .load(hook, btf)
            .map_err(program_error("loading", name))?;
        if attach {
            program.attach().map_err(program_error("attaching", name))?;
        }
    }
    Ok(())
}

/// A copy of the object (its programs act on no session: `SESSIONS` is empty), with this
/// kernel's offsets, to ask the verifier whether programs load here (`doctor`). Nothing is
/// attached; everything is closed when the returned value is dropped.
pub fn load_for_probe() -> Result<(Ebpf, aya::Btf), BackstopError> {
    let offsets = kernel_btf::running_kernel_offsets().map_err(BackstopError::Offsets)?;
    let btf = aya::Btf::from_sys_fs().map_err(BackstopError::Btf)?;
    let ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global(names::KERNEL_OFFSETS, &offsets, true)
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

/// The program `name` of `ebpf`, as its type `T`.
pub(crate) fn find_program<'a, T>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut T, BackstopError>
where
    &'a mut aya::programs::Program: TryInto<&'a mut T, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(BackstopError::Missing(name))?
        .try_into()
        .map_err(program_error("finding", name))
}

/// Load the network program `name` of `ebpf` into the kernel (not attached).
pub(crate) fn load_network_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSockAddr, BackstopError> {
    let program: &mut CgroupSockAddr = find_program(ebpf, name)?;
    program.load().map_err(program_error("loading", name))?;
    Ok(program)
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
