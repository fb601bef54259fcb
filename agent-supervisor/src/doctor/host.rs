//! Host facts the doctor reads from files: the kernel release, mounts (cgroup layout, tracefs,
//! securityfs), the active LSMs and the `vm.memfd_noexec` sysctl.
//!
//! Nothing here mounts, writes or changes anything: a filesystem that is not mounted is
//! reported as such ("unknown"), never mounted for the occasion.
#![forbid(unsafe_code)]

use serde::Serialize;

/// Where securityfs lives; `lsm` in it lists the active LSMs.
pub const SECURITYFS: &str = "/sys/kernel/security";

/// One line of `/proc/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub target: String,
    pub fstype: String,
    pub options: Vec<String>,
}

/// Undo the octal escapes of `/proc/mounts` (`\040` is a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse `/proc/mounts` text.
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_source, target, fstype, options) = (f.next()?, f.next()?, f.next()?, f.next()?);
            Some(Mount {
                target: unescape(target),
                fstype: fstype.to_string(),
                options: options.split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// The mounts of this process's mount namespace (empty when `/proc/mounts` is unreadable).
pub fn mounts() -> Vec<Mount> {
    parse_mounts(&std::fs::read_to_string("/proc/mounts").unwrap_or_default())
}

/// How cgroups are mounted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cgroups {
    /// `unified` (cgroup v2 only), `hybrid` (v2 plus v1 controller hierarchies), `legacy`
    /// (v1 only) or `none`.
    pub layout: &'static str,
    /// Where cgroup v2 is mounted (the first mount; `/sys/fs/cgroup` on unified hosts,
    /// `/sys/fs/cgroup/unified` on hybrid ones). BPF cgroup programs attach below it.
    pub cgroup2: Option<String>,
    /// Controllers enabled in the v2 root (`cgroup.controllers`).
    pub cgroup2_controllers: Vec<String>,
    /// Controllers mounted as v1 hierarchies (and named hierarchies as `name=X`).
    pub v1_controllers: Vec<String>,
}

/// The cgroup layout from the mounts; `known` are the kernel's controller names (first column
/// of `/proc/cgroups`), `v2_controllers` reads a v2 mount's `cgroup.controllers`.
pub fn cgroups(
    mounts: &[Mount],
    known: &[String],
    v2_controllers: &dyn Fn(&str) -> Vec<String>,
) -> Cgroups {
    let cgroup2 = mounts
        .iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| m.target.clone());
    let mut v1: Vec<String> = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup")
        .flat_map(|m| {
            m.options
                .iter()
                .filter(|o| known.contains(o) || o.starts_with("name="))
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    v1.sort();
    v1.dedup();
    let any_v1 = mounts.iter().any(|m| m.fstype == "cgroup");
    let layout = match (cgroup2.is_some(), any_v1) {
        (true, false) => "unified",
        (true, true) => "hybrid",
        (false, true) => "legacy",
        (false, false) => "none",
    };
    Cgroups {
        layout,
        cgroup2_controllers: cgroup2.as_deref().map(v2_controllers).unwrap_or_default(),
        cgroup2,
        v1_controllers: v1,
    }
}

/// The running kernel's cgroup layout.
pub fn host_cgroups(mounts: &[Mount]) -> Cgroups {
    let known: Vec<String> = std::fs::read_to_string("/proc/cgroups")
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    cgroups(mounts, &known, &|root| {
        std::fs::read_to_string(format!("{root}/cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    })
}

/// Can this process create the session cgroups `run` makes
/// (`<cgroup2 root>/agent-supervisor/<session>`)? Decided from the mount and the directory's
/// owner and mode, without creating anything: root can unless the hierarchy is mounted
/// read-only; anyone else needs a delegated (owned or world-writable) directory.
pub fn session_cgroups_creatable(
    cgroups: &Cgroups,
    mounts: &[Mount],
    euid: u32,
) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let Some(root) = &cgroups.cgroup2 else {
        return Err("no cgroup v2 hierarchy is mounted".into());
    };
    let read_only = mounts
        .iter()
        .any(|m| m.fstype == "cgroup2" && &m.target == root && m.options.iter().any(|o| o == "ro"));
    if read_only {
        return Err(format!("{root} is mounted read-only"));
    }
    let parent = format!("{root}/agent-supervisor");
    let dir = if std::path::Path::new(&parent).is_dir() {
        parent
    } else {
        root.clone()
    };
    if euid == 0 {
        return Ok(());
    }
    let meta = std::fs::metadata(&dir).map_err(|e| format!("{dir}: {e}"))?;
    let writable = (meta.uid() == euid && meta.mode() & 0o200 != 0) || meta.mode() & 0o002 != 0;
    if writable {
        Ok(())
    } else {
        Err(format!(
            "creating cgroups under {dir} needs root or a delegated cgroup v2 subtree"
        ))
    }
}

/// Mount points of tracefs (needed to attach classic tracepoint programs).
pub fn tracefs(mounts: &[Mount]) -> Vec<String> {
    mounts
        .iter()
        .filter(|m| m.fstype == "tracefs")
        .map(|m| m.target.clone())
        .collect()
}

/// Is BPF LSM active (`bpf` in `/sys/kernel/security/lsm`)?
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LsmState {
    /// None when unknown.
    pub bpf_active: Option<bool>,
    /// The active LSMs, in order, when readable.
    pub active: Option<Vec<String>>,
    /// Why it is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
}

/// Read the active LSM list; never mounts securityfs.
pub fn lsm_state(mounts: &[Mount]) -> LsmState {
    let path = format!("{SECURITYFS}/lsm");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let active: Vec<String> = text
                .trim()
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            LsmState {
                bpf_active: Some(active.iter().any(|l| l == "bpf")),
                active: Some(active),
                unknown: None,
            }
        }
        Err(e) => {
            let mounted = mounts
                .iter()
                .any(|m| m.fstype == "securityfs" && m.target == SECURITYFS);
            let why = if mounted {
                format!("{path}: {e}")
            } else {
                format!("securityfs not mounted at {SECURITYFS}")
            };
            LsmState {
                bpf_active: None,
                active: None,
                unknown: Some(why),
            }
        }
    }
}

/// The kernel release (`/proc/sys/kernel/osrelease`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// `vm.memfd_noexec` (Linux 6.3+): None when the kernel lacks the sysctl.
pub fn memfd_noexec() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/vm/memfd_noexec")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
tracefs /sys/kernel/my\\040tracing tracefs rw 0 0
";

    fn known() -> Vec<String> {
        ["cpu", "cpuacct", "memory", "pids", "hugetlb"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn hybrid_layout_lists_v1_controllers_and_the_v2_mount() {
        let mounts = parse_mounts(HYBRID);
        let c = cgroups(&mounts, &known(), &|root| {
            assert_eq!(root, "/sys/fs/cgroup/unified");
            vec!["hugetlb".into()]
        });
        assert_eq!(c.layout, "hybrid");
        assert_eq!(c.cgroup2.as_deref(), Some("/sys/fs/cgroup/unified"));
        assert_eq!(c.cgroup2_controllers, vec!["hugetlb"]);
        assert_eq!(
            c.v1_controllers,
            vec!["cpu", "cpuacct", "memory", "name=systemd"]
        );
    }

    #[test]
    fn unified_legacy_and_none() {
        let unified = parse_mounts("cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n");
        assert_eq!(cgroups(&unified, &known(), &|_| vec![]).layout, "unified");
        let legacy = parse_mounts("cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n");
        let c = cgroups(&legacy, &known(), &|_| vec![]);
        assert_eq!(
            (c.layout, c.v1_controllers),
            ("legacy", vec!["pids".into()])
        );
        assert_eq!(cgroups(&[], &known(), &|_| vec![]).layout, "none");
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(
            tracefs(&parse_mounts(HYBRID)),
            vec!["/sys/kernel/my tracing"]
        );
    }
}
