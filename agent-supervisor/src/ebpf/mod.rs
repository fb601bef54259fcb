//! The supervisor's eBPF object, embedded at build time, and what each session does with it.
//!
//! `build.rs` builds `agent-supervisor-ebpf` for `bpfel-unknown-none` (see its header) and
//! leaves the object in `OUT_DIR`; it is embedded here, 8-byte aligned as aya needs, so the
//! supervisor is a single file. Program and map names are in
//! [`agent_supervisor_common::names`]. See `docs/ebpf.md` for the whole picture.
//!
//! Programs (kernel requirements):
//! - `sched_process_exec`, `sched_process_fork`, `sched_process_exit`: `tp_btf` programs
//!   (Linux 5.5+, kernel BTF) reporting the session's processes through a ring buffer (5.8+);
//!   `sched_process_exec` is also the exec backstop (`bpf_send_signal`, 5.3+). Attached and
//!   read by [`process`].
//! - `connect4`, `connect6`, `sendmsg4`, `sendmsg6`: `cgroup_sock_addr` programs that refuse
//!   connects and sends to destinations the supervisor has not allowed (Linux 4.18+, cgroup
//!   v2); attached and fed by [`network`].
//! - `file_open`, `bprm_check_security`, `mmap_file`: BPF LSM programs (5.7+, `bpf` an active
//!   LSM) refusing the session's denied files and programs by inode; attached and fed by
//!   [`lsm`].
//!
//! Submodules: [`pinned`] (the host's one loaded copy of the object, pinned under bpffs),
//! [`session`] (a session's part of it: the programs it uses and the entries it wrote, or a
//! private copy where the pinned set can't be used), [`network`] (the in-kernel network backstop), [`process`] (exec backstop and
//! process events), [`rules`] (which policy rules can become kernel map entries without
//! allowing more) and [`kernel_btf`] (struct offsets from the running kernel's BTF).
#![forbid(unsafe_code)]

pub mod kernel_btf;
pub mod lsm;
pub mod network;
pub mod pinned;
pub mod process;
pub mod rules;
pub mod session;

use std::sync::Arc;

use agent_supervisor_policy::Policy;

pub use session::{ExecMode, Session};

/// The eBPF object file (ELF, with BTF) holding every program and map of the supervisor.
pub fn object() -> &'static [u8] {
    static OBJECT: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-supervisor-ebpf"));
    OBJECT
}

/// Everything eBPF gives one `run` session. Drop it after the session's processes are gone
/// (and after [`process::EventReader::finish`]): programs are detached, then the cgroup removed.
pub struct Backstops {
    /// The session's loaded object and cgroup.
    pub session: Session,
    /// The network map writer (None: the network backstop is off).
    pub network: Option<Arc<network::NetworkMaps>>,
    /// The exec approval writer, for the exec guard (None: not enforcing).
    pub exec_approvals: Option<process::ExecApprovals>,
    /// The process event stream, before its reader starts (None: the programs are off).
    pub events: Option<process::ProcEvents>,
    /// How many files the BPF LSM programs guard by inode (None: they are not attached).
    pub lsm_files: Option<usize>,
}

/// What is weaker than the policy asks, one line each: the backstops' (network, exec; what
/// `--require ebpf` insists on) and the BPF LSM's (`--require lsm`).
#[derive(Debug, Default)]
pub struct Weaker {
    pub backstops: Vec<String>,
    pub lsm: Option<String>,
}

impl Weaker {
    /// Every line, the backstops' first.
    pub fn into_lines(self) -> Vec<String> {
        self.backstops.into_iter().chain(self.lsm).collect()
    }
}

/// Load the session's eBPF programs into its cgroup (made by the session, see
/// [`crate::limits`]) as `run` wants them: what works, and one line per thing that is weaker.
/// When nothing can be loaded (no cgroup: `cgroup` holds why; not root; a kernel that refuses
/// the object) that is one line, the network backstop's. `exec_mode`: enforce when every exec
/// of the session is trapped and decided by the supervisor.
pub fn start_session(
    cgroup: Result<Arc<crate::cgroup::SessionCgroup>, String>,
    policy: &Policy,
    exec_mode: ExecMode,
    masks: &[crate::sandbox::masks::MaskMount],
) -> (Option<Backstops>, Weaker) {
    let started = std::time::Instant::now();
    let loaded = match cgroup {
        Ok(cgroup) => Session::load(cgroup, exec_mode).map_err(|e| session::error_chain(&e)),
        Err(cause) => Err(cause),
    };
    let mut session = match loaded {
        Ok(session) => session,
        Err(cause) => {
            let mut weaker = Weaker {
                backstops: vec![network::weaker_line(&cause)],
                lsm: lsm::relevant(policy, &policy.plan()).then(|| lsm::weaker_line(&cause)),
            };
            if exec_mode == ExecMode::Enforce {
                weaker.backstops.push(process::weaker_line(&cause));
            }
            return (None, weaker);
        }
    };
    let mut weaker = Weaker::default();
    let network = network::start_session(&mut session, policy)
        .map_err(|line| weaker.backstops.push(line))
        .ok();
    let (exec_approvals, events) = match process::start_session(&mut session) {
        Ok((approvals, events)) => (approvals, Some(events)),
        Err(line) => {
            if exec_mode == ExecMode::Enforce {
                weaker.backstops.push(line);
            } else {
                tracing::warn!("no process events from the kernel: {line}");
            }
            (None, None)
        }
    };
    // The LSM programs report into the process programs' ring buffer: without its reader
    // their refusals would go unrecorded, so they need the process programs.
    let lsm_files = if events.is_some() {
        lsm::start_session(&mut session, masks, policy)
            .map_err(|line| weaker.lsm = Some(line))
            .ok()
            .flatten()
    } else {
        if lsm::relevant(policy, &policy.plan()) {
            weaker.lsm = Some(lsm::weaker_line(
                "the eBPF process programs, whose ring buffer records its refusals, are off",
            ));
        }
        None
    };
    let took = started.elapsed().as_secs_f64() * 1e3;
    match session.pinned_set() {
        Some(id) => tracing::debug!("ebpf: attached session to pinned set {id} in {took:.2} ms"),
        None => tracing::debug!("ebpf: loaded and attached a private copy in {took:.1} ms"),
    }
    (
        Some(Backstops {
            session,
            network,
            exec_approvals,
            events,
            lsm_files,
        }),
        weaker,
    )
}

#[cfg(test)]
mod tests {
    use agent_supervisor_common::names;

    use super::object;

    #[test]
    fn object_holds_the_programs_and_maps_the_supervisor_uses() {
        let parsed = aya_obj::Object::parse(object()).expect("the embedded eBPF object parses");
        for name in names::PROCESS_PROGRAMS {
            let program = parsed
                .programs
                .get(name)
                .unwrap_or_else(|| panic!("no program {name}"));
            assert!(
                matches!(program.section, aya_obj::ProgramSection::BtfTracePoint),
                "{name} is not a tp_btf program: {:?}",
                program.section
            );
        }
        for map in [
            names::EXEC_APPROVALS,
            names::PROC_EVENTS,
            names::PROC_EVENTS_LOST,
            names::SLOT_OWNERS,
            names::SESSIONS,
            names::SET_IDENT,
            names::NET_SESSION,
            names::NET_MODE,
            names::NET_ALLOW,
            names::NET_RULES,
        ] {
            assert!(parsed.maps.contains_key(map), "no map {map}");
        }
    }

    /// Privileged (CI runs as root): the kernel's verifier accepts the process programs with
    /// this kernel's offsets, and they attach (tp_btf needs no tracefs).
    #[test]
    fn kernel_loads_and_attaches_the_process_programs() {
        use crate::cgroup::{cgroup2_root, SessionCgroup};
        if !is_root() {
            eprintln!("skipping: loading eBPF needs root (CAP_BPF)");
            return;
        }
        let Ok(root) = cgroup2_root() else {
            eprintln!("skipping: no cgroup v2 hierarchy mounted");
            return;
        };
        let name = format!("{:012x}", 0xe0_0000_0000u64 | u64::from(std::process::id()));
        let cgroup = SessionCgroup::create_under(&root, &name).expect("test cgroup");
        let mut session =
            super::Session::load(cgroup, super::ExecMode::Enforce).expect("load the object");
        let (approvals, _events) =
            super::process::attach(&mut session).expect("attach the process programs");
        assert!(
            approvals.is_some(),
            "enforcing mode hands out the approvals"
        );
    }

    /// Privileged: everything a session wrote into the pinned set's shared maps is gone once
    /// the session is dropped, its ring slot included (its `SESSIONS` entry names the slot it
    /// owns in `SLOT_OWNERS`).
    #[test]
    fn a_sessions_entries_are_gone_from_the_pinned_maps_after_it_ends() {
        use agent_supervisor_common::{lsm_names, NetAllowKey, SessionEntry, TreeKey};
        use aya::maps::{HashMap, MapData, PerCpuHashMap};

        use crate::cgroup::{cgroup2_root, SessionCgroup};
        if !is_root() {
            eprintln!("skipping: pinning eBPF objects needs root");
            return;
        }
        let Ok(root) = cgroup2_root() else {
            eprintln!("skipping: no cgroup v2 hierarchy mounted");
            return;
        };
        let name = format!("{:012x}", 0xe1_0000_0000u64 | u64::from(std::process::id()));
        let cgroup = SessionCgroup::create_under(&root, &name).expect("test cgroup");
        let id = cgroup.id();
        let mut session = super::Session::load(cgroup, super::ExecMode::Enforce).expect("load");
        if session.pinned_set().is_none() {
            eprintln!("skipping: no pinned set here (per-session load)");
            return;
        }
        let (approvals, events) = super::process::attach(&mut session).expect("process");
        let network = super::network::attach(&mut session).expect("network");
        network
            .allow_exact("127.0.0.1".parse().unwrap(), 4242, 6)
            .expect("allow");
        // DENIED_TREES is written without the LSM programs: the map is in every set.
        let tree = super::lsm::DeniedTree {
            path: "/".into(),
            dir: (1, 0xe1e1),
            deny: agent_supervisor_common::INODE_DENY_READ,
        };
        assert_eq!(
            super::lsm::attach_trees(&mut session, &[tree]).expect("trees"),
            1
        );
        let map = |name: &'static str| session.shared_map(name).expect("open").expect("pinned");
        let sessions: HashMap<MapData, u64, SessionEntry> =
            HashMap::try_from(map(names::SESSIONS)).unwrap();
        let modes: HashMap<MapData, u64, u32> = HashMap::try_from(map(names::NET_MODE)).unwrap();
        let allow: HashMap<MapData, NetAllowKey, u8> =
            HashMap::try_from(map(names::NET_ALLOW)).unwrap();
        let owners: HashMap<MapData, u32, u64> =
            HashMap::try_from(map(names::SLOT_OWNERS)).unwrap();
        let slot = sessions.get(&id, 0).expect("the session's entry").slot;
        assert_eq!(
            owners.get(&slot, 0).ok(),
            Some(id),
            "the session owns the slot its entry names"
        );
        let lost: PerCpuHashMap<MapData, u64, u64> =
            PerCpuHashMap::try_from(map(names::PROC_EVENTS_LOST)).unwrap();
        let trees: HashMap<MapData, TreeKey, u32> =
            HashMap::try_from(map(lsm_names::DENIED_TREES)).unwrap();
        let present = || {
            [
                sessions.keys().flatten().any(|k| k == id),
                modes.keys().flatten().any(|k| k == id),
                allow.keys().flatten().any(|k| k.cgroup_id == id),
                owners.iter().flatten().any(|(_, owner)| owner == id),
                lost.keys().flatten().any(|k| k == id),
                trees
                    .keys()
                    .flatten()
                    .any(|k| k.cgroup_id == id && k.ino == 0xe1e1),
            ]
        };
        assert_eq!(present(), [true; 6], "the session's entries are written");
        drop((approvals, events, network));
        drop(session);
        assert_eq!(
            present(),
            [false; 6],
            "the session's entries are removed at its end"
        );
    }

    /// Privileged: the sweep deletes the `DENIED_TREES` entries of a session whose cgroup is
    /// gone (a killed supervisor), and keeps those of live sessions; the set's `TREE_OFFSETS`
    /// were written when it was made, where BPF LSM is active.
    #[test]
    fn the_sweep_removes_denied_trees_of_dead_sessions() {
        use agent_supervisor_common::{lsm_names, TreeKey, TreeOffsets};
        use aya::maps::{Array, HashMap, Map, MapData};
        if skip_unless_pinning() {
            return;
        }
        let root = TestRoot::new("trees");
        let live = test_cgroup(0xd1).expect("test cgroup");
        let live_id = live.id();
        let session =
            super::Session::load_in(live, super::ExecMode::Report, &root.0, 2).expect("load");
        let Some(set_id) = session.pinned_set().map(str::to_string) else {
            eprintln!("skipping: no pinned set here (per-session load)");
            return;
        };
        let set_dir = root.0.join(&set_id);
        let open = |name: &str| {
            Map::from_map_data(MapData::from_pin(set_dir.join("maps").join(name)).expect(name))
                .expect("map")
        };
        let mut trees: HashMap<MapData, TreeKey, u32> =
            HashMap::try_from(open(lsm_names::DENIED_TREES)).expect("hash");
        // No cgroup has inode number 1 under our parent: a dead session's entry.
        let dead = TreeKey {
            cgroup_id: 1,
            ino: 0xd1d1,
            dev: 1,
            _padding: 0,
        };
        let kept = TreeKey {
            cgroup_id: live_id,
            ..dead
        };
        trees.insert(dead, 1, 0).expect("insert");
        trees.insert(kept, 1, 0).expect("insert");
        // The test's own root: nobody else creates or sweeps here, no lock needed.
        super::pinned::sweep_locked(&root.0, Some(&set_id));
        let keys: Vec<TreeKey> = trees.keys().flatten().collect();
        assert!(!keys.contains(&dead), "{keys:?}");
        assert!(keys.contains(&kept), "{keys:?}");
        trees.remove(&kept).expect("remove");
        let offsets: Array<MapData, TreeOffsets> =
            Array::try_from(open(lsm_names::TREE_OFFSETS)).expect("array");
        let written = offsets.get(&0, 0).expect("slot 0");
        assert_eq!(
            written != TreeOffsets::default(),
            crate::ebpf::lsm::active().is_ok(),
            "{written:?}"
        );
        drop(session);
    }

    /// A pinned set of its own for a test (the host's set stays untouched for the tests
    /// running next to it), made with `slots` ring slots, removed with its lock file on drop.
    struct TestRoot(std::path::PathBuf);

    impl TestRoot {
        fn new(tag: &str) -> TestRoot {
            TestRoot(std::path::PathBuf::from(format!(
                "{}-test-{tag}-{}",
                super::pinned::ROOT,
                std::process::id()
            )))
        }
    }

    impl Drop for TestRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
            let name = self.0.file_name().unwrap_or_default().to_string_lossy();
            let _ = std::fs::remove_file(
                std::path::Path::new(super::pinned::LOCK_FILE)
                    .with_file_name(format!("bpf-{name}.lock")),
            );
        }
    }

    /// Run `sh`, which moves itself into `cgroup` and execs /bin/true there; its pid and
    /// whether a signal ended it.
    fn run_in(cgroup: &crate::cgroup::SessionCgroup) -> (u32, Option<i32>) {
        use std::os::unix::process::ExitStatusExt as _;
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && exec /bin/true",
                cgroup.procs_path().display()
            ))
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        let status = child.wait().expect("wait");
        (pid, status.signal())
    }

    /// A session cgroup for a test, named after `tag` and this process.
    fn test_cgroup(tag: u64) -> Option<crate::cgroup::SessionCgroup> {
        let root = crate::cgroup::cgroup2_root().ok()?;
        let name = format!("{:012x}", (tag << 32) | u64::from(std::process::id()));
        crate::cgroup::SessionCgroup::create_under(&root, &name).ok()
    }

    fn skip_unless_pinning() -> bool {
        if !is_root() {
            eprintln!("skipping: pinning eBPF objects needs root");
            return true;
        }
        if crate::ebpf::kernel_btf::running_kernel_offsets().is_err() {
            eprintln!("skipping: no kernel struct offsets");
            return true;
        }
        false
    }

    /// Privileged: a session reusing the ring slot of a session that was killed (its
    /// supervisor gone without cleaning up, its records left in the ring) sees only its own
    /// events, and so does a session running next to it in another slot. Set with two slots.
    #[test]
    fn sessions_see_only_their_own_events_also_in_a_slot_reused_after_a_kill() {
        use std::sync::{Arc, Mutex};
        if skip_unless_pinning() {
            return;
        }
        let root = TestRoot::new("reuse");
        let load = |tag| {
            let cgroup = test_cgroup(tag).expect("test cgroup");
            super::Session::load_in(cgroup, super::ExecMode::Report, &root.0, 2).expect("load")
        };
        // A: attached, runs a process (its records stay in slot 0's ring), then "killed": its
        // supervisor never cleans up; only its (empty) cgroup is removed, as the cgroup sweep
        // does for a killed supervisor's.
        let mut a = load(0xa1);
        assert!(a.pinned_set().is_some(), "A joins the pinned set");
        let (_, a_events) = super::process::attach(&mut a).expect("attach A");
        let (a_pid, _) = run_in(a.cgroup());
        let a_dir = a.cgroup().path().to_path_buf();
        std::mem::forget(a_events);
        std::mem::forget(a);
        crate::cgroup::remove_own_dir(
            &a_dir,
            std::fs::metadata(&a_dir)
                .map(|m| {
                    use std::os::unix::fs::MetadataExt as _;
                    m.ino()
                })
                .unwrap_or(0),
        );
        assert!(!a_dir.exists(), "A's cgroup is gone");

        // B takes slot 1, C finds every slot taken and reclaims A's.
        let mut b = load(0xb1);
        let mut c = load(0xc1);
        assert!(
            b.pinned_set().is_some() && c.pinned_set().is_some(),
            "both join"
        );
        let set_dir = root.0.join(b.pinned_set().unwrap());
        let owners: aya::maps::HashMap<aya::maps::MapData, u32, u64> =
            aya::maps::HashMap::try_from(
                aya::maps::Map::from_map_data(
                    aya::maps::MapData::from_pin(set_dir.join("maps").join(names::SLOT_OWNERS))
                        .expect("SLOT_OWNERS"),
                )
                .expect("map"),
            )
            .expect("hash");
        assert_eq!(
            owners.get(&0, 0).ok(),
            Some(c.cgroup().id()),
            "C reuses the killed session's slot"
        );
        let collect = |session: &mut super::Session| {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let sink = Arc::clone(&seen);
            let (_, events) = super::process::attach(session).expect("attach");
            let reader = events
                .spawn_with(move |r| sink.lock().unwrap().push((r.event.cgroup_id, r.event.pid)))
                .expect("reader");
            (seen, reader)
        };
        let (b_seen, b_reader) = collect(&mut b);
        let (c_seen, c_reader) = collect(&mut c);
        let (b_pid, _) = run_in(b.cgroup());
        let (c_pid, _) = run_in(c.cgroup());
        b_reader.finish();
        c_reader.finish();
        for (name, session, seen, own, others) in [
            ("B", &b, &b_seen, b_pid, [a_pid, c_pid]),
            ("C", &c, &c_seen, c_pid, [a_pid, b_pid]),
        ] {
            let seen = seen.lock().unwrap();
            let id = session.cgroup().id();
            assert!(
                seen.iter().any(|&(_, pid)| pid == own),
                "{name} sees its own process's events: {seen:?}"
            );
            assert!(
                seen.iter()
                    .all(|&(cg, pid)| cg == id && !others.contains(&pid)),
                "{name} sees only its own events: {seen:?} (others {others:?})"
            );
        }
        drop((b, c));
        assert_eq!(
            owners.keys().flatten().count(),
            0,
            "every slot is free once the sessions ended"
        );
    }

    /// Privileged: with every ring slot taken by a live session, a session loads a private
    /// copy of the object and its exec backstop still kills an unapproved exec. Set with one
    /// slot.
    #[test]
    fn a_session_finding_every_slot_taken_loads_its_own_copy_and_still_enforces() {
        if skip_unless_pinning() {
            return;
        }
        let root = TestRoot::new("full");
        let holder = test_cgroup(0xd1).expect("test cgroup");
        let holder =
            super::Session::load_in(holder, super::ExecMode::Report, &root.0, 1).expect("load");
        assert!(
            holder.pinned_set().is_some(),
            "the first session takes the slot"
        );
        let cgroup = test_cgroup(0xd2).expect("test cgroup");
        let mut session =
            super::Session::load_in(cgroup, super::ExecMode::Enforce, &root.0, 1).expect("load");
        assert!(
            session.pinned_set().is_none(),
            "no free slot: the session loads its own copy"
        );
        let (approvals, _events) = super::process::attach(&mut session).expect("attach");
        assert!(approvals.is_some());
        let (_, signal) = run_in(session.cgroup());
        assert_eq!(signal, Some(9), "the unapproved exec is killed");
        drop(session);
        drop(holder);
    }

    fn is_root() -> bool {
        std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1))
                == Some("0")
        })
    }
}
