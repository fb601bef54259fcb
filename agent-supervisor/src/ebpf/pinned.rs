//! The host's one loaded copy of the eBPF object, pinned under bpffs and shared by every
//! session, so a session joins by writing map entries instead of loading programs.
//!
//! ```text
//!  /sys/fs/bpf/agent-supervisor/<id>/        id: first 16 hex of SHA-256(object hash ‖ this
//!      maps/<MAP>                                kernel's KernelOffsets ‖ crate version)
//!      progs/connect4, connect6, sendmsg4, sendmsg6   loaded, attached by each session
//!      links/sched_process_{exec,fork,exit}           attached once, for every cgroup
//!      links/file_open, bprm_check_security, mmap_file  (only where `bpf` is an active LSM)
//! ```
//!
//! Life cycle:
//! - **Open** (every session): `BPF_OBJ_GET` of `maps/SET_IDENT`; its slot must hold the full
//!   SHA-256 this binary expects, and the program and link pins must be there with the right
//!   program types. Anything else is a stale or foreign set: never used.
//! - **Create** (when the open fails; once per host, kernel and version): under an exclusive
//!   `flock` on [`LOCK_FILE`], load the object into a staging directory `<id>-new-<pid>` (bpffs
//!   refuses names with a dot),
//!   pin maps and network programs, attach the process (and LSM, after writing the tree
//!   walk's `TREE_OFFSETS` from the kernel's BTF) programs and pin their links, write
//!   `SET_IDENT` last, then `rename` the staging directory to `<id>`: no process
//!   ever sees a half-made set. A broken set with our id is removed first.
//! - **Sweep** (lazily: while creating, and by the first session that starts more than
//!   [`SWEEP_EVERY`] after the last sweep): sets with another id are removed once no live
//!   session uses them (no `SESSIONS` key whose cgroup still exists), and our set's entries
//!   of sessions whose cgroup is gone (a `SIGKILL`ed supervisor) are deleted. A cgroup is
//!   alive when a directory under `<cgroup2>/agent-supervisor/` has its id as inode number.
//!
//! bpffs is mounted at `/sys/fs/bpf` when it is not (root only). Where none of this works, a
//! session loads its own copy of the object instead ([`super::session`]), and says so.
//! Kernel: pinning needs bpffs (Linux 4.4+), link pinning 5.7+, cgroup storage shared by the
//! four network programs 5.9+.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_supervisor_common::{
    lsm_names, names, InodeKey, KernelOffsets, NetAllowKey, SetIdent, TreeKey, TreeOffsets,
    PROC_EVENTS_BYTES, RING_SLOTS,
};
use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Array, ArrayOfMaps, HashMap, Map, MapData, PerCpuHashMap};
use aya::programs::links::FdLink;
use aya::programs::{BtfTracePoint, CgroupSockAddr, Lsm, ProgramInfo};
use aya::{Ebpf, EbpfLoader};

use super::session::{map_error, program_error, BackstopError};

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// The directory of the supervisor's pinned sets.
pub const ROOT: &str = "/sys/fs/bpf/agent-supervisor";
/// Taken (exclusive `flock`) to create, replace or sweep sets.
pub const LOCK_FILE: &str = "/run/agent-supervisor/bpf.lock";
/// How often a starting session sweeps entries of dead sessions and stale sets (the lock
/// file's mtime says when the last sweep was).
pub const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The embedded object's SHA-256, computed by build.rs.
fn object_hash() -> &'static [u8; 32] {
    static HASH: &[u8; 32] =
        include_bytes!(concat!(env!("OUT_DIR"), "/agent-supervisor-ebpf.sha256"));
    HASH
}

/// The full identity of the set this binary uses on this kernel.
pub fn ident(offsets: &KernelOffsets) -> SetIdent {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(object_hash());
    for o in offsets.to_array() {
        h.update(o.to_le_bytes());
    }
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.finalize().into()
}

/// The set's directory name: the first 16 hex digits of [`ident`].
pub fn id_of(ident: &SetIdent) -> String {
    ident[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The directory of the set with `id`.
pub fn dir_of(id: &str) -> PathBuf {
    Path::new(ROOT).join(id)
}

/// An open, checked pinned set.
#[derive(Debug)]
pub struct PinnedSet {
    id: String,
    dir: PathBuf,
    /// The BPF LSM programs are attached (bpf was an active LSM when the set was made).
    has_lsm: bool,
    /// The lock file of the set's root (taken to reclaim slots of dead sessions).
    lock: PathBuf,
}

impl PinnedSet {
    /// The set's id (directory name).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The set's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Does the set hold attached BPF LSM programs?
    pub fn has_lsm(&self) -> bool {
        self.has_lsm
    }

    /// A new handle on the set's map `name`.
    pub fn map(&self, name: &'static str) -> Result<Map, BackstopError> {
        open_map(&self.dir, name)
    }

    /// A new handle on the set's network program `name`.
    pub fn network_program(
        &self,
        name: &'static str,
        attach_type: aya::programs::CgroupSockAddrAttachType,
    ) -> Result<CgroupSockAddr, BackstopError> {
        CgroupSockAddr::from_pin(self.dir.join("progs").join(name), attach_type)
            .map_err(program_error("opening the pinned", name))
    }

    /// Attach the set's network program `name` to `cgroup` with one `BPF_OBJ_GET` and one
    /// `BPF_LINK_CREATE` (Linux 5.7+; the caller falls back to aya's attach on an error).
    pub fn link_network_program(
        &self,
        name: &'static str,
        attach_type: aya::programs::CgroupSockAddrAttachType,
        cgroup: &crate::cgroup::SessionCgroup,
    ) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd as _;
        use std::os::unix::ffi::OsStrExt as _;
        let kernel_type = aya_obj::generated::bpf_attach_type::from(attach_type) as u32;
        let path = self.dir.join("progs").join(name);
        let path = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let prog = crate::sys::bpf_obj_get(&path)?;
        crate::sys::bpf_link_create(prog.as_fd(), cgroup.as_fd(), kernel_type)
    }

    /// Claim a free ring slot for the session of `cgroup_id` (one `BPF_NOEXIST` insert into
    /// `SLOT_OWNERS` per slot tried: the first writer wins, no lock). When every slot is
    /// taken, the slots of sessions whose cgroup is gone (a `SIGKILL`ed supervisor) are
    /// reclaimed under the set's lock, then the claim is tried once more. None: all slots
    /// belong to live sessions.
    pub fn claim_slot(&self, cgroup_id: u64) -> Result<Option<u32>, BackstopError> {
        let mut owners: HashMap<MapData, u32, u64> =
            HashMap::try_from(self.map(names::SLOT_OWNERS)?)
                .map_err(map_error("opening", names::SLOT_OWNERS))?;
        if let Some(slot) = try_claim(&mut owners, cgroup_id) {
            return Ok(Some(slot));
        }
        let Ok(lock) = lock(&self.lock) else {
            return Ok(None);
        };
        // Under the lock no one else reclaims, and a dead owner never frees its slot: an
        // entry read as a dead session's is still that when it is deleted.
        remove_dead_entries(&self.dir, &live_cgroups());
        let slot = try_claim(&mut owners, cgroup_id);
        drop(lock);
        tracing::debug!(
            "ebpf: all ring slots were taken; after reclaiming those of dead sessions: {slot:?}"
        );
        Ok(slot)
    }

    /// Free `slot` if `cgroup_id` still owns it (after the session's `SESSIONS` entry is gone
    /// and its reader has stopped).
    pub fn release_slot(&self, slot: u32, cgroup_id: u64) {
        let Ok(Ok(mut owners)) = self
            .map(names::SLOT_OWNERS)
            .map(HashMap::<MapData, u32, u64>::try_from)
        else {
            return;
        };
        if owners.get(&slot, 0).is_ok_and(|owner| owner == cgroup_id) {
            let _ = owners.remove(&slot);
        }
    }

    /// The ring buffer of `slot` (one `BPF_OBJ_GET` of its pin).
    pub fn ring(&self, slot: u32) -> Result<MapData, BackstopError> {
        MapData::from_pin(ring_pin(&self.dir, slot))
            .map_err(map_error("opening the pinned ring of", names::PROC_EVENTS))
    }

    /// Open the set for this binary on this kernel, making it first when it is missing or
    /// not ours. Logs (debug) which it did and how long it took.
    pub fn open_or_create(offsets: &KernelOffsets) -> Result<PinnedSet, PinnedError> {
        Self::open_or_create_in(Path::new(ROOT), offsets)
    }

    /// [`Self::open_or_create`] with the sets in `root` (tests use their own).
    pub fn open_or_create_in(
        root: &Path,
        offsets: &KernelOffsets,
    ) -> Result<PinnedSet, PinnedError> {
        Self::open_or_create_with_slots(root, offsets, RING_SLOTS)
    }

    /// [`Self::open_or_create_in`] making, when it makes the set, only `slots` ring slots
    /// (tests of slot exhaustion, in a root of their own).
    pub fn open_or_create_with_slots(
        root: &Path,
        offsets: &KernelOffsets,
        slots: u32,
    ) -> Result<PinnedSet, PinnedError> {
        let started = Instant::now();
        let ident = ident(offsets);
        let id = id_of(&ident);
        let dir = root.join(&id);
        match check(&dir, &ident) {
            Ok(set) => {
                tracing::debug!(
                    "ebpf: opened the pinned set {id} in {:.2} ms",
                    ms(started.elapsed())
                );
                sweep_when_due();
                return Ok(set);
            }
            Err(why) => tracing::debug!("ebpf: pinned set {id} not usable ({why}): making it"),
        }
        ensure_bpffs()?;
        let lock = lock(&lock_path(root))?;
        // Someone else may have made it while we waited for the lock.
        if let Ok(set) = check(&dir, &ident) {
            drop(lock);
            return Ok(set);
        }
        if dir.exists() {
            tracing::warn!(
                "removing the broken pinned eBPF set {} (it does not hold what this binary \
                 expects)",
                dir.display()
            );
            remove_set(&dir);
        }
        let made = create(root, &id, &ident, offsets, slots.clamp(1, RING_SLOTS))?;
        sweep_locked(root, Some(&id));
        let _ = lock.set_modified(std::time::SystemTime::now());
        drop(lock);
        tracing::debug!(
            "ebpf: loaded and pinned set {id} in {:.1} ms (first use)",
            ms(started.elapsed())
        );
        Ok(made)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Why the pinned set can't be used (the session then loads its own copy).
#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    #[error("bpffs is not mounted at {BPFFS} and mounting it failed")]
    Mount(#[source] std::io::Error),
    #[error("{step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("making the pinned set")]
    Create(#[source] BackstopError),
}

fn io_error(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PinnedError {
    let path = path.to_path_buf();
    move |source| PinnedError::Io { step, path, source }
}

fn open_map(dir: &Path, name: &'static str) -> Result<Map, BackstopError> {
    let data = MapData::from_pin(dir.join("maps").join(name))
        .map_err(map_error("opening the pinned", name))?;
    Map::from_map_data(data).map_err(map_error("opening the pinned", name))
}

/// Is `dir` a complete set whose `SET_IDENT` holds `ident`?
fn check(dir: &Path, ident: &SetIdent) -> Result<PinnedSet, String> {
    let show = |e: BackstopError| super::session::error_chain(&e);
    let slot: Array<MapData, SetIdent> =
        Array::try_from(open_map(dir, names::SET_IDENT).map_err(show)?)
            .map_err(|e| format!("SET_IDENT: {e}"))?;
    match slot.get(&0, 0) {
        Ok(v) if &v == ident => {}
        Ok(_) => return Err("its SET_IDENT holds another id".into()),
        Err(e) => return Err(format!("reading SET_IDENT: {e}")),
    }
    for name in names::NETWORK_PROGRAMS {
        let info = ProgramInfo::from_pin(dir.join("progs").join(name))
            .map_err(|e| format!("program {name}: {e}"))?;
        if info.program_type() != aya_obj::generated::bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR
        {
            return Err(format!("program {name} is not a cgroup_sock_addr program"));
        }
    }
    for name in names::PROCESS_PROGRAMS {
        if !dir.join("links").join(name).exists() {
            return Err(format!("no pinned link {name}"));
        }
    }
    if !ring_pin(dir, 0).exists() {
        return Err("no pinned ring buffers".into());
    }
    let lsm_links = lsm_names::PROGRAMS
        .iter()
        .filter(|(name, _)| dir.join("links").join(name).exists())
        .count();
    let has_lsm = match lsm_links {
        0 => false,
        n if n == lsm_names::PROGRAMS.len() => true,
        _ => return Err("only some of the BPF LSM links are pinned".into()),
    };
    Ok(PinnedSet {
        id: id_of(ident),
        dir: dir.to_path_buf(),
        has_lsm,
        lock: lock_path(dir.parent().unwrap_or(Path::new(ROOT))),
    })
}

/// The pin of ring slot `slot` in the set in `dir`.
fn ring_pin(dir: &Path, slot: u32) -> PathBuf {
    dir.join("maps")
        .join(format!("{}{slot}", names::RING_PIN_PREFIX))
}

/// One pass of `BPF_NOEXIST` inserts of `cgroup_id` over the slots: the first free one, or
/// None (every key taken, or the map full: a set made with fewer slots).
fn try_claim(owners: &mut HashMap<MapData, u32, u64>, cgroup_id: u64) -> Option<u32> {
    const BPF_NOEXIST: u64 = 1;
    for slot in 0..RING_SLOTS {
        match owners.insert(slot, cgroup_id, BPF_NOEXIST) {
            Ok(()) => return Some(slot),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(_) => return None,
        }
    }
    None
}

/// A ring buffer as `PROC_EVENTS` holds them.
pub fn ring_buffer_definition() -> aya_obj::Map {
    aya_obj::Map::new_from_params(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32,
        0,
        0,
        PROC_EVENTS_BYTES,
        0,
    )
}

/// Mount bpffs at [`BPFFS`] unless it is there.
fn ensure_bpffs() -> Result<(), PinnedError> {
    let is_bpffs =
        |p: &str| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC);
    if is_bpffs(BPFFS) {
        return Ok(());
    }
    std::fs::create_dir_all(BPFFS).map_err(PinnedError::Mount)?;
    crate::sys::mount(Some(c"bpf"), c"/sys/fs/bpf", Some(c"bpf"), 0).map_err(PinnedError::Mount)?;
    tracing::info!("mounted bpffs at {BPFFS}");
    Ok(())
}

/// The lock file of the sets in `root`: [`LOCK_FILE`] for [`ROOT`].
fn lock_path(root: &Path) -> PathBuf {
    if root == Path::new(ROOT) {
        return PathBuf::from(LOCK_FILE);
    }
    let name = root.file_name().unwrap_or_default().to_string_lossy();
    Path::new(LOCK_FILE).with_file_name(format!("bpf-{name}.lock"))
}

/// The exclusive lock on `path` (its directory made 0700, the file 0600, on first use).
fn lock(path: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, PinnedError> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io_error("creating", parent))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error("opening", path))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io_error("locking", path)(e.into()))
}

/// Load the object into `<id>-new-<pid>`, pin everything, write the ident, rename to `<id>`.
fn create(
    root: &Path,
    id: &str,
    ident: &SetIdent,
    offsets: &KernelOffsets,
    slots: u32,
) -> Result<PinnedSet, PinnedError> {
    std::fs::create_dir_all(root).map_err(io_error("creating", root))?;
    let staging = root.join(format!("{id}-new-{}", std::process::id()));
    if staging.exists() {
        remove_set(&staging);
    }
    for sub in ["", "maps", "progs", "links"] {
        let d = staging.join(sub);
        std::fs::create_dir(&d).map_err(io_error("creating", &d))?;
    }
    let made = fill(&staging, ident, offsets, slots);
    if let Err(e) = made {
        remove_set(&staging);
        return Err(PinnedError::Create(e));
    }
    let dir = root.join(id);
    if let Err(e) = std::fs::rename(&staging, &dir) {
        remove_set(&staging);
        return Err(io_error("renaming the staging set to", &dir)(e));
    }
    check(&dir, ident).map_err(|why| {
        PinnedError::Create(BackstopError::Pinned(format!(
            "the new set does not check: {why}"
        )))
    })
}

/// Load the object and pin its maps, programs and links into `dir`; `SET_IDENT` last.
fn fill(
    dir: &Path,
    ident: &SetIdent,
    offsets: &KernelOffsets,
    slots: u32,
) -> Result<(), BackstopError> {
    let btf = aya::Btf::from_sys_fs().map_err(BackstopError::Btf)?;
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(&btf))
        .override_global(names::KERNEL_OFFSETS, offsets, true);
    if slots != RING_SLOTS {
        loader
            .map_max_entries(names::PROC_EVENTS, slots)
            .map_max_entries(names::SLOT_OWNERS, slots);
    }
    let mut ebpf: Ebpf = loader.load(super::object()).map_err(BackstopError::Load)?;
    // The ring pool: each slot's write waits for an RCU grace period (~20 ms), paid here once
    // so that sessions never write into a map of maps.
    let mut pool: ArrayOfMaps<&mut MapData> = ArrayOfMaps::try_from(
        ebpf.map_mut(names::PROC_EVENTS)
            .ok_or(BackstopError::Missing(names::PROC_EVENTS))?,
    )
    .map_err(map_error("opening", names::PROC_EVENTS))?;
    for slot in 0..slots {
        let ring = MapData::create(ring_buffer_definition(), "proc_events", None)
            .map_err(map_error("creating a ring buffer for", names::PROC_EVENTS))?;
        pool.set(slot, &ring, 0)
            .map_err(map_error("filling the ring pool", names::PROC_EVENTS))?;
        ring.pin(ring_pin(dir, slot))
            .map_err(|e| BackstopError::Pinned(format!("pinning ring {slot}: {e}")))?;
    }
    // `.rodata` (the offsets) is not pinned: only the programs use it, and bpffs refuses
    // names with a dot.
    for (name, map) in ebpf.maps().filter(|(name, _)| !name.starts_with('.')) {
        map.pin(dir.join("maps").join(name))
            .map_err(|e| BackstopError::Pinned(format!("pinning map {name}: {e}")))?;
    }
    for name in names::NETWORK_PROGRAMS {
        super::session::load_network_program(&mut ebpf, name)?
            .pin(dir.join("progs").join(name))
            .map_err(|e| BackstopError::Pinned(format!("pinning program {name}: {e}")))?;
    }
    for name in names::PROCESS_PROGRAMS {
        let program: &mut BtfTracePoint = super::session::find_program(&mut ebpf, name)?;
        program
            .load(name, &btf)
            .map_err(program_error("loading", name))?;
        let link = program.attach().map_err(program_error("attaching", name))?;
        let link = program
            .take_link(link)
            .map_err(program_error("taking the link of", name))?;
        pin_link(dir, name, link.into())?;
    }
    if super::lsm::active().is_ok() {
        // The tree walk's `dentry` offsets: a constant of the kernel (the set lives no longer
        // than the boot), written once here so that sessions never read the BTF for them.
        let offsets = super::lsm::tree_offsets()?;
        let mut tree: Array<&mut MapData, TreeOffsets> = Array::try_from(
            ebpf.map_mut(lsm_names::TREE_OFFSETS)
                .ok_or(BackstopError::Missing(lsm_names::TREE_OFFSETS))?,
        )
        .map_err(map_error("opening", lsm_names::TREE_OFFSETS))?;
        tree.set(0, offsets, 0)
            .map_err(map_error("writing", lsm_names::TREE_OFFSETS))?;
        for (name, hook) in lsm_names::PROGRAMS {
            let program: &mut Lsm = super::session::find_program(&mut ebpf, name)?;
            program
                .load(hook, &btf)
                .map_err(program_error("loading", name))?;
            let link = program.attach().map_err(program_error("attaching", name))?;
            let link = program
                .take_link(link)
                .map_err(program_error("taking the link of", name))?;
            pin_link(dir, name, link.into())?;
        }
    }
    let mut slot: Array<&mut MapData, SetIdent> = Array::try_from(
        ebpf.map_mut(names::SET_IDENT)
            .ok_or(BackstopError::Missing(names::SET_IDENT))?,
    )
    .map_err(map_error("opening", names::SET_IDENT))?;
    slot.set(0, ident, 0)
        .map_err(map_error("writing", names::SET_IDENT))?;
    Ok(())
}

/// Unpin everything of the set in `dir` (links detach when their last pin goes).
fn remove_set(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(
            "could not remove the pinned eBPF set {}: {e}",
            dir.display()
        );
    }
}

/// Sweep now if the last sweep is older than [`SWEEP_EVERY`] and nobody else holds the lock.
fn sweep_when_due() {
    let due = std::fs::metadata(LOCK_FILE)
        .and_then(|m| m.modified())
        .map_or(true, |t| t.elapsed().map_or(true, |age| age > SWEEP_EVERY));
    if !due {
        return;
    }
    let Ok(file) = std::fs::OpenOptions::new().write(true).open(LOCK_FILE) else {
        return;
    };
    let Ok(lock) = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
    else {
        return;
    };
    let started = Instant::now();
    sweep_locked(Path::new(ROOT), None);
    let _ = lock.set_modified(std::time::SystemTime::now());
    drop(lock);
    tracing::debug!("ebpf: swept pinned sets in {:.2} ms", ms(started.elapsed()));
}

/// The cgroup ids of the live session cgroups (directories under our cgroup2 parent).
pub fn live_cgroups() -> HashSet<u64> {
    let Ok(root) = crate::cgroup::cgroup2_root() else {
        return HashSet::new();
    };
    std::fs::read_dir(root.join(crate::cgroup::PARENT_DIR))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_dir())
                .map(|m| m.ino())
                .collect()
        })
        .unwrap_or_default()
}

/// With the lock held: remove the sets that are not `ours` and serve no live session, and
/// delete the entries of dead sessions from every set that stays.
pub fn sweep_locked(root: &Path, ours: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    // Without `ours` (a periodic sweep), the set this binary uses is `ours`.
    let ours = ours.map_or_else(this_binarys_id, |id| Some(id.to_string()));
    for entry in entries.flatten() {
        let dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((_, pid)) = name.split_once("-new-") {
            // A staging directory of a creator that died (ours is renamed before we sweep).
            let alive = pid
                .parse::<u32>()
                .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            if !alive {
                remove_set(&dir);
            }
            continue;
        }
        // Read the map keys before listing the cgroups: a session registered later is not
        // among the keys, one registered earlier has its cgroup directory already.
        let sessions = session_keys(&dir);
        let live = live_cgroups();
        let used = sessions
            .as_ref()
            .is_ok_and(|keys| keys.iter().any(|k| live.contains(k)));
        if Some(name.as_str()) != ours.as_deref() && !used {
            tracing::info!("removing the stale pinned eBPF set {}", dir.display());
            remove_set(&dir);
            continue;
        }
        remove_dead_entries(&dir, &live);
    }
}

/// The id of the set this binary uses on this kernel, when the offsets are known.
fn this_binarys_id() -> Option<String> {
    super::kernel_btf::running_kernel_offsets()
        .ok()
        .map(|o| id_of(&ident(&o)))
}

/// The cgroup ids with an entry in the set's `SESSIONS` or `NET_MODE`, or owning a ring slot
/// (a session claims its slot first, right after opening the set).
fn session_keys(dir: &Path) -> Result<Vec<u64>, BackstopError> {
    let sessions: HashMap<MapData, u64, agent_supervisor_common::SessionEntry> =
        HashMap::try_from(open_map(dir, names::SESSIONS)?)
            .map_err(map_error("opening", names::SESSIONS))?;
    let modes: HashMap<MapData, u64, u32> = HashMap::try_from(open_map(dir, names::NET_MODE)?)
        .map_err(map_error("opening", names::NET_MODE))?;
    let owners: Vec<u64> = open_map(dir, names::SLOT_OWNERS)
        .ok()
        .and_then(|m| HashMap::<MapData, u32, u64>::try_from(m).ok())
        .map(|m| m.iter().flatten().map(|(_, owner)| owner).collect())
        .unwrap_or_default();
    Ok(sessions
        .keys()
        .flatten()
        .chain(modes.keys().flatten())
        .chain(owners)
        .collect())
}

/// Pin the link of the global program `name` in the set being made in `dir` (the program
/// stays attached for as long as the pin exists).
fn pin_link(dir: &Path, name: &str, link: FdLink) -> Result<(), BackstopError> {
    link.pin(dir.join("links").join(name))
        .map(drop)
        .map_err(|e| BackstopError::Pinned(format!("pinning link {name}: {e}")))
}

/// Delete every entry of `dir`'s maps whose session cgroup is not in `live`.
fn remove_dead_entries(dir: &Path, live: &HashSet<u64>) {
    let dead = |id: u64| !live.contains(&id);
    let mut removed = 0usize;
    removed +=
        remove_keys::<u64, agent_supervisor_common::SessionEntry>(dir, names::SESSIONS, |k| {
            dead(*k)
        });
    removed += remove_keys::<u64, u32>(dir, names::NET_MODE, |k| dead(*k));
    removed += remove_keys::<NetAllowKey, u8>(dir, names::NET_ALLOW, |k| dead(k.cgroup_id));
    removed += remove_keys::<InodeKey, u32>(dir, lsm_names::INODE_DENY, |k| dead(k.cgroup_id));
    removed += remove_keys::<TreeKey, u32>(dir, lsm_names::DENIED_TREES, |k| dead(k.cgroup_id));
    if let Ok(map) = open_map(dir, names::SLOT_OWNERS) {
        if let Ok(mut m) = HashMap::<MapData, u32, u64>::try_from(map) {
            for (slot, _) in m
                .iter()
                .flatten()
                .filter(|(_, owner)| dead(*owner))
                .collect::<Vec<_>>()
            {
                removed += usize::from(m.remove(&slot).is_ok());
            }
        }
    }
    if let Ok(map) = open_map(dir, names::PROC_EVENTS_LOST) {
        if let Ok(mut m) = PerCpuHashMap::<MapData, u64, u64>::try_from(map) {
            for k in m.keys().flatten().filter(|k| dead(*k)).collect::<Vec<_>>() {
                removed += usize::from(m.remove(&k).is_ok());
            }
        }
    }
    if let Ok(map) = open_map(dir, names::NET_RULES) {
        if let Ok(mut m) =
            LpmTrie::<MapData, agent_supervisor_common::NetRuleKey, u8>::try_from(map)
        {
            for k in m
                .keys()
                .flatten()
                .filter(|k| dead(k.data().cgroup_id))
                .collect::<Vec<_>>()
            {
                removed += usize::from(m.remove(&k).is_ok());
            }
        }
    }
    if removed > 0 {
        tracing::info!(
            "removed {removed} entries of ended sessions from the pinned eBPF set {}",
            dir.display()
        );
    }
}

/// Delete the keys `gone` selects from the hash map `name` of the set in `dir`; how many went.
fn remove_keys<K: aya::Pod, V: aya::Pod>(
    dir: &Path,
    name: &'static str,
    gone: impl Fn(&K) -> bool,
) -> usize {
    let Ok(map) = open_map(dir, name) else {
        return 0;
    };
    let Ok(mut m) = HashMap::<MapData, K, V>::try_from(map) else {
        return 0;
    };
    let keys: Vec<K> = m.keys().flatten().filter(|k| gone(k)).collect();
    keys.iter().map(|k| usize::from(m.remove(k).is_ok())).sum()
}

/// What `doctor` says about the set: which mode `run` uses here and why.
pub fn doctor_line() -> String {
    let offsets = match super::kernel_btf::running_kernel_offsets() {
        Ok(o) => o,
        Err(e) => {
            return format!(
                "per-session load: no kernel struct offsets ({}); each session loads its own \
                 copy of the programs",
                super::session::error_chain(&e)
            )
        }
    };
    let ident = ident(&offsets);
    let id = id_of(&ident);
    let dir = dir_of(&id);
    match check(&dir, &ident) {
        Ok(set) => format!(
            "pinned set {} (exists{}; sessions attach by writing map entries)",
            dir.display(),
            if set.has_lsm {
                ", with the BPF LSM programs"
            } else {
                ""
            }
        ),
        Err(_) if crate::sys::euid_egid().0 != 0 => format!(
            "per-session load: not root, so the pinned set {} can't be made or used",
            dir.display()
        ),
        Err(why) => format!(
            "pinned set {} (not made yet: {why}; the next root session makes it once)",
            dir.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_16_hex_digits_of_the_ident() {
        let ident = ident(&KernelOffsets::default());
        let id = id_of(&ident);
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        let other = KernelOffsets {
            task_pid: 1,
            ..KernelOffsets::default()
        };
        assert_ne!(
            id_of(&super::ident(&other)),
            id,
            "the offsets are part of the id"
        );
    }

    /// Privileged: the set for this kernel is made (or already there) and checks.
    #[test]
    fn the_pinned_set_is_made_once_and_then_opened() {
        if crate::sys::euid_egid().0 != 0 {
            eprintln!("skipping: pinning eBPF objects needs root");
            return;
        }
        let offsets = match crate::ebpf::kernel_btf::running_kernel_offsets() {
            Ok(o) => o,
            Err(e) => {
                eprintln!("skipping: no kernel struct offsets ({e})");
                return;
            }
        };
        let set = PinnedSet::open_or_create(&offsets)
            .unwrap_or_else(|e| panic!("{}", crate::ebpf::session::error_chain(&e)));
        assert_eq!(set.id(), id_of(&ident(&offsets)));
        let again = PinnedSet::open_or_create(&offsets).expect("reopen");
        assert_eq!(again.dir(), set.dir());
    }

    /// Privileged: in a root of its own (the real set stays untouched for the tests running
    /// next to this one), a foreign set is removed, and a set with our id but a wrong
    /// `SET_IDENT` or a missing pin is never used and is replaced.
    #[test]
    fn stale_and_foreign_sets_are_not_used_and_get_replaced() {
        if crate::sys::euid_egid().0 != 0 {
            eprintln!("skipping: pinning eBPF objects needs root");
            return;
        }
        let offsets = match crate::ebpf::kernel_btf::running_kernel_offsets() {
            Ok(o) => o,
            Err(e) => {
                eprintln!("skipping: no kernel struct offsets ({e})");
                return;
            }
        };
        if ensure_bpffs().is_err() {
            eprintln!("skipping: no bpffs");
            return;
        }
        let root = PathBuf::from(format!("{ROOT}-test-{}", std::process::id()));
        struct Cleanup(PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
                let _ = std::fs::remove_file(lock_path(&self.0));
            }
        }
        let _cleanup = Cleanup(root.clone());
        std::fs::create_dir_all(root.join("0123456789abcdef/maps")).expect("foreign set");
        let ident = ident(&offsets);
        let first = PinnedSet::open_or_create_in(&root, &offsets).expect("make the set");
        assert!(
            !root.join("0123456789abcdef").exists(),
            "the foreign set with no live session is removed"
        );
        let map_id = |set: &PinnedSet| {
            MapData::from_pin(set.dir().join("maps").join(names::SET_IDENT))
                .and_then(|m| m.info())
                .map(|i| i.id())
                .expect("SET_IDENT info")
        };
        let first_id = map_id(&first);

        // Our id, another ident: not used, replaced.
        let mut slot: Array<MapData, SetIdent> =
            Array::try_from(open_map(first.dir(), names::SET_IDENT).expect("open")).expect("array");
        slot.set(0, [0u8; 32], 0).expect("overwrite the ident");
        assert!(
            check(first.dir(), &ident).is_err(),
            "a wrong ident is never used"
        );
        let second = PinnedSet::open_or_create_in(&root, &offsets).expect("replace the set");
        let second_id = map_id(&second);
        assert_ne!(second_id, first_id, "the set was made again");
        assert!(check(second.dir(), &ident).is_ok());

        // Our id, a pin missing: not used, replaced.
        std::fs::remove_file(second.dir().join("progs").join(names::CONNECT4)).expect("unpin");
        assert!(
            check(second.dir(), &ident).is_err(),
            "a set missing a pin is never used"
        );
        let third = PinnedSet::open_or_create_in(&root, &offsets).expect("replace the set");
        assert_ne!(map_id(&third), second_id, "the set was made again");
        assert!(third.dir().join("progs").join(names::CONNECT4).exists());
    }
}
