//! The supervisor's eBPF object, embedded at build time.
//!
//! `build.rs` builds `agent-supervisor-ebpf` for `bpfel-unknown-none` (see its header) and
//! leaves the object in `OUT_DIR`; it is embedded here, 8-byte aligned as aya needs, so the
//! supervisor is a single file. Load it with `aya::Ebpf::load(ebpf::object())`. Program and
//! map names are in [`agent_supervisor_common::names`].
//!
//! Programs (kernel requirements):
//! - `sched_process_exec`: tracepoint `sched/sched_process_exec` counting execs in the
//!   cgroups listed in `SESSION_CGROUPS` (Linux 4.18+; tracefs must be mounted to attach).
//! - `connect4`, `connect6`, `sendmsg4`, `sendmsg6`: `cgroup_sock_addr` programs that refuse
//!   connects and sends to destinations the supervisor has not allowed (Linux 4.18+, cgroup
//!   v2); loaded, attached and fed by [`network`].
//!
//! Submodules: [`network`] (the in-kernel network backstop: loader and map updater) and
//! [`rules`] (which policy rules can become kernel map entries without allowing more).
#![forbid(unsafe_code)]

pub mod network;
pub mod rules;

/// The eBPF object file (ELF, with BTF) holding every program and map of the supervisor.
pub fn object() -> &'static [u8] {
    static OBJECT: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-supervisor-ebpf"));
    OBJECT
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use agent_supervisor_common::names;

    use super::object;

    #[test]
    fn object_holds_the_programs_and_maps_the_supervisor_uses() {
        let parsed = aya_obj::Object::parse(object()).expect("the embedded eBPF object parses");
        let program = parsed
            .programs
            .get(names::SCHED_PROCESS_EXEC)
            .unwrap_or_else(|| panic!("no program {}", names::SCHED_PROCESS_EXEC));
        assert!(
            matches!(program.section, aya_obj::ProgramSection::TracePoint),
            "{} is not a tracepoint: {:?}",
            names::SCHED_PROCESS_EXEC,
            program.section
        );
        for map in [names::SESSION_CGROUPS, names::EXEC_COUNT] {
            assert!(parsed.maps.contains_key(map), "no map {map}");
        }
    }

    /// Privileged (CI runs as root): the kernel's verifier accepts the program, and, when
    /// tracefs is mounted, it counts an exec made from a session cgroup.
    #[test]
    fn kernel_loads_the_exec_counter_and_it_counts_session_execs() {
        use agent_supervisor_common::{
            EXEC_COUNT_SLOT, SCHED_PROCESS_EXEC_TRACEPOINT, SESSION_CGROUP_ACTIVE,
        };
        use aya::maps::{HashMap, PerCpuArray};
        use aya::programs::TracePoint;

        let mut bpf = match aya::Ebpf::load(object()) {
            Ok(bpf) => bpf,
            Err(error) if !is_root() => {
                eprintln!("skipping: loading eBPF needs root (CAP_BPF): {error}");
                return;
            }
            Err(error) => panic!("loading the eBPF object failed: {error}"),
        };
        let program: &mut TracePoint = bpf
            .program_mut(names::SCHED_PROCESS_EXEC)
            .expect("program present")
            .try_into()
            .expect("program is a tracepoint");
        program
            .load()
            .expect("the verifier accepts sched_process_exec");

        let (category, name) = SCHED_PROCESS_EXEC_TRACEPOINT;
        if let Err(error) = program.attach(category, name) {
            eprintln!(
                "skipping the attach half: attaching {category}/{name} failed ({error}); \
                 mount tracefs (`mount -t tracefs tracefs /sys/kernel/tracing`) to run it"
            );
            return;
        }
        let Some(cgroup_id) = own_cgroup2_id() else {
            eprintln!("skipping the counting half: no cgroup v2 hierarchy mounted");
            return;
        };
        let mut sessions: HashMap<_, u64, u8> =
            HashMap::try_from(bpf.map_mut(names::SESSION_CGROUPS).expect("map present"))
                .expect("SESSION_CGROUPS is a HashMap<u64, u8>");
        sessions
            .insert(cgroup_id, SESSION_CGROUP_ACTIVE, 0)
            .expect("insert our cgroup");

        let status = std::process::Command::new("/bin/true")
            .status()
            .expect("run /bin/true");
        assert!(status.success());

        let counts: PerCpuArray<_, u64> =
            PerCpuArray::try_from(bpf.map(names::EXEC_COUNT).expect("map present"))
                .expect("EXEC_COUNT is a PerCpuArray<u64>");
        let total: u64 = counts
            .get(&EXEC_COUNT_SLOT, 0)
            .expect("read EXEC_COUNT")
            .iter()
            .sum();
        assert!(total >= 1, "the exec of /bin/true was not counted");
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

    /// The cgroup v2 id of this process: the inode number of its cgroup directory in the
    /// cgroup2 hierarchy (at /sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
    fn own_cgroup2_id() -> Option<u64> {
        use std::os::unix::fs::MetadataExt as _;
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let path = cgroups.lines().find_map(|line| line.strip_prefix("0::"))?;
        let mount = cgroup2_mount()?;
        let dir = mount.join(path.trim_start_matches('/'));
        Some(std::fs::metadata(dir).ok()?.ino())
    }

    fn cgroup2_mount() -> Option<PathBuf> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        mountinfo.lines().find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            (after.split_whitespace().next() == Some("cgroup2"))
                .then(|| {
                    before
                        .split_whitespace()
                        .nth(4)
                        .map(|mount| Path::new(mount).to_path_buf())
                })
                .flatten()
        })
    }
}
