//! Launching the agent inside its sandbox.
//!
//! The supervisor (still single-threaded) `clone3`s a child into new user, mount, PID, IPC,
//! UTS and cgroup namespaces. That child is PID 1 of the sandbox (our `init`): it sets up the
//! mounts, applies Landlock, `no_new_privs`, drops every capability, installs the seccomp
//! filters (the notifying one last, with a listener), and hands the listener to the
//! supervisor. The supervisor takes it with `pidfd_getfd` (the listener cannot be *sent*
//! over a socket: `sendmsg` is itself trapped, so sending it after installing the filter
//! would wait on a supervisor that has no listener yet). While init sets up, the supervisor
//! joins the eBPF programs and starts its threads ([`launch`] returns at once, and
//! [`Launching::ready`] takes the listener). Then `init` starts the agent (sharing init's
//! memory until its `exec`, as `posix_spawn` does), which inherits all of it and `exec`s, and
//! `init` stays behind to reap orphans, forward signals and report the agent's exit status.
//! When the agent exits, `init` exits and the kernel kills everything left in the PID
//! namespace: no daemonised grandchild outlives the session.
//!
//! Every step of the child is in [`child_main`], in order. The parent/child conversation is
//! a typed message enum ([`ChildMsg`]) over a pipe.

pub mod filter;
pub mod landlock;
pub mod masks;
pub mod view;

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use agent_supervisor_policy::MaskKind;

use self::landlock::{Enforcement, LandlockSpec};
use self::masks::MaskMount;
use crate::sys;

/// Everything the child needs, computed before `clone3` (no I/O decisions in the child).
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub argv: Vec<CString>,
    pub landlock: LandlockSpec,
    pub masks: Vec<MaskMount>,
    pub notify: filter::NotifySet,
    /// Extra fds (beyond 0, 1, 2) the agent may inherit (`--keep-fd`).
    pub keep_fds: Vec<RawFd>,
    pub hostname: String,
    /// The session's cgroup v2 directory: init is born in it (`CLONE_INTO_CGROUP`; on a
    /// kernel without it, written into its `cgroup.procs`) before it starts anything, so the
    /// agent and all its processes (and sockets) live in that cgroup. None: no cgroup.
    pub cgroup: Option<std::sync::Arc<crate::cgroup::SessionCgroup>>,
    /// The `cgroup.procs` of the v2 cgroup that enforces the session's `[limits]`: init is in
    /// it before it starts the agent. Unlike `cgroup`, a failure here is fatal: the agent
    /// never runs outside its limits.
    pub limit_procs: Vec<std::path::PathBuf>,
    /// The `tasks` files of the v1 cgroups that enforce `[limits]` (hybrid hosts), opened by
    /// the supervisor before `clone3`: init writes `0` into each as its first step, moving
    /// itself (a single thread moving itself needs no RCU grace period, where a
    /// `cgroup.procs` write from the supervisor waits for one). A failure is fatal too.
    pub join_v1: Vec<std::path::PathBuf>,
    /// `[limits] file_size`: RLIMIT_FSIZE (soft and hard) of the agent, set before its exec,
    /// with SIGXFSZ ignored so that a write past it fails with EFBIG instead of killing.
    pub file_size: Option<u64>,
    /// The content of the agent's `/etc/resolv.conf` (naming the session's DNS resolver),
    /// bound read-only over the host's in the agent's mount namespace. None: left alone.
    pub resolv_conf: Option<Vec<u8>>,
    /// The write trees (canonical) when the agent's mount view is read-only outside them
    /// (`Plan::writable_view` is None): every mount is made read-only, then each tree is bound
    /// back as it was. None: the view stays as the host's.
    pub read_only_view: Option<Vec<std::path::PathBuf>>,
    /// The agent's root when its reads are enforced by the view (see [`view`]): a read-only
    /// tmpfs holding only the read trees. None: the host's tree (made read-only as
    /// `read_only_view` says), with Landlock checking reads.
    pub view: Option<view::View>,
}

/// A running sandbox.
#[derive(Debug)]
pub struct Sandbox {
    /// PID (in the supervisor's namespace) of the sandbox's init.
    pub init_pid: libc::pid_t,
    pub init_pidfd: Arc<OwnedFd>,
    /// The seccomp user-notification listener.
    pub listener: OwnedFd,
    /// Protections that are weaker than asked on this kernel (said once on stderr).
    pub weaker: Vec<String>,
    /// When each of init's set-up steps ended (`CLOCK_MONOTONIC` ns), in order, for
    /// [`crate::phases`].
    pub phases: Vec<(&'static str, u64)>,
    /// When the listener was taken.
    pub handshake_at: u64,
}

/// Setup steps, reported by the child when one fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    Sync = 1,
    MountPrivate,
    MountProc,
    MaskSource,
    Mask,
    Fds,
    Landlock,
    NoNewPrivs,
    Capabilities,
    SeccompDeny,
    SeccompNotify,
    ForkAgent,
    Exec,
    Hostname,
    DeathSignal,
    Dev,
    ReadOnlyView,
    JoinCgroup,
    View,
}

impl Step {
    /// Every step, in order.
    const ALL: [Step; 19] = [
        Step::Sync,
        Step::MountPrivate,
        Step::MountProc,
        Step::MaskSource,
        Step::Mask,
        Step::Fds,
        Step::Landlock,
        Step::NoNewPrivs,
        Step::Capabilities,
        Step::SeccompDeny,
        Step::SeccompNotify,
        Step::ForkAgent,
        Step::Exec,
        Step::Hostname,
        Step::DeathSignal,
        Step::Dev,
        Step::ReadOnlyView,
        Step::JoinCgroup,
        Step::View,
    ];

    fn from_u32(v: u32) -> Option<Step> {
        Step::ALL.into_iter().find(|s| *s as u32 == v)
    }

    fn describe(self) -> &'static str {
        match self {
            Step::Sync => "synchronising with the supervisor",
            Step::MountPrivate => "making the mount namespace private",
            Step::MountProc => "mounting the sandbox's own /proc",
            Step::MaskSource => "creating the mask tmpfs",
            Step::Mask => "mounting a mask over a denied path",
            Step::Fds => "closing inherited file descriptors",
            Step::Landlock => "applying the Landlock ruleset",
            Step::NoNewPrivs => "setting no_new_privs",
            Step::Capabilities => "dropping capabilities",
            Step::SeccompDeny => "installing the seccomp deny filter",
            Step::SeccompNotify => "installing the seccomp notify filter",
            Step::ForkAgent => "starting the agent process",
            Step::Exec => "executing the agent",
            Step::Hostname => "setting the sandbox host name",
            Step::DeathSignal => "arming the parent-death signal",
            Step::Dev => "building the sandbox's private /dev",
            Step::ReadOnlyView => "making the view read-only outside the write trees",
            Step::JoinCgroup => "joining a resource-limit cgroup (v1)",
            Step::View => "building the agent's view of its read trees",
        }
    }
}

/// Why a launch failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{call} failed")]
    Parent {
        call: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("sandbox setup failed while {}{}", step.describe(), detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Child {
        step: Step,
        detail: Option<String>,
        #[source]
        source: io::Error,
    },
    #[error("the sandbox exited during setup without saying why")]
    ChildVanished,
    #[error("cannot start the agent: {program}")]
    Exec {
        program: String,
        #[source]
        source: io::Error,
    },
}

/// Messages from the child, fixed-size records `[tag, a, b]` (no allocation needed).
#[derive(Debug, Clone, Copy)]
enum ChildMsg {
    /// The listener is fd `a` in the child.
    Ready { listener_fd: i32 },
    /// Step `a` failed with errno `b`; for masks, `index` says which one.
    Failed { step: u32, errno: i32, index: i32 },
    /// A protection is weaker than requested (code).
    Weaker { what: u32 },
    /// Setup phase `phase` (`PHASE_*`) ended at `at` (`CLOCK_MONOTONIC` ns).
    Phase { phase: u32, at: u64 },
}

const TAG_READY: u32 = 1;
const TAG_FAILED: u32 = 2;
const TAG_WEAKER: u32 = 3;
const TAG_PHASE: u32 = 4;
/// The child's phases, in order, with their names for [`crate::phases`].
const PHASES: [&str; 3] = ["mounts", "landlock", "seccomp"];
const PHASE_MOUNTS: u32 = 0;
const PHASE_LANDLOCK: u32 = 1;
const PHASE_SECCOMP: u32 = 2;
const WEAK_LANDLOCK_PARTIAL: u32 = 1;
const WEAK_LANDLOCK_NONE: u32 = 2;
const WEAK_MEMFD: u32 = 3;
const WEAK_KILLABLE: u32 = 4;
const WEAK_RESOLV_CONF: u32 = 5;
const WEAK_READ_ONLY_VIEW: u32 = 6;

fn encode(msg: ChildMsg) -> [u8; 16] {
    let (t, a, b, c) = match msg {
        ChildMsg::Ready { listener_fd } => (TAG_READY, listener_fd, 0, 0),
        ChildMsg::Failed { step, errno, index } => (TAG_FAILED, step as i32, errno, index),
        ChildMsg::Weaker { what } => (TAG_WEAKER, what as i32, 0, 0),
        ChildMsg::Phase { phase, at } => (TAG_PHASE, phase as i32, at as i32, (at >> 32) as i32),
    };
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&t.to_ne_bytes());
    out[4..8].copy_from_slice(&a.to_ne_bytes());
    out[8..12].copy_from_slice(&b.to_ne_bytes());
    out[12..16].copy_from_slice(&c.to_ne_bytes());
    out
}

fn decode(b: &[u8; 16]) -> Option<ChildMsg> {
    let w = |i: usize| i32::from_ne_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    match w(0) as u32 {
        TAG_READY => Some(ChildMsg::Ready { listener_fd: w(4) }),
        TAG_FAILED => Some(ChildMsg::Failed {
            step: w(4) as u32,
            errno: w(8),
            index: w(12),
        }),
        TAG_WEAKER => Some(ChildMsg::Weaker { what: w(4) as u32 }),
        TAG_PHASE => Some(ChildMsg::Phase {
            phase: w(4) as u32,
            at: u64::from(w(8) as u32) | (u64::from(w(12) as u32) << 32),
        }),
        _ => None,
    }
}

const NS_FLAGS: u64 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP) as u64;

/// A sandbox whose init is cloned and mapped, and is now setting up its namespaces (mounts,
/// Landlock, seccomp; it joined its v1 cgroups itself): [`Launching::ready`] moves it into its
/// v2 cgroup when `clone3` could not create it there, and waits for it to hand over the
/// listener. The supervisor may start its threads in between (init is already
/// a process of its own, so the supervisor no longer needs to be single-threaded), which
/// overlaps their start with init's work.
pub struct Launching<'a> {
    spec: &'a SandboxSpec,
    init_pid: libc::pid_t,
    pub init_pidfd: Arc<OwnedFd>,
    /// When init's namespaces were made and mapped (`CLOCK_MONOTONIC` ns).
    pub namespaces_at: u64,
    born_in_cgroup: bool,
    to_child_w: OwnedFd,
    from_child_r: OwnedFd,
}

/// Start the sandbox: clone its init and map its ids. Must be called while the process is
/// single-threaded.
pub fn launch(spec: &SandboxSpec) -> Result<Launching<'_>, LaunchError> {
    let parent = |call| move |source| LaunchError::Parent { call, source };
    // Prepare everything the child needs before cloning (the child should not fail on
    // allocation or on reading our state).
    let deny = filter::deny_filter().map_err(|e| LaunchError::Parent {
        call: "building the seccomp deny filter",
        source: io::Error::other(e.to_string()),
    })?;
    let notify = filter::notify_filter(spec.notify).map_err(|e| LaunchError::Parent {
        call: "building the seccomp notify filter",
        source: io::Error::other(e.to_string()),
    })?;
    let mask_paths: Vec<CString> = spec
        .masks
        .iter()
        .map(|m| cstring(m.path.as_os_str()))
        .collect();
    let view_trees: Option<Vec<CString>> =
        spec.read_only_view.as_ref().map(|trees| view_trees(trees));
    let root = spec.view.as_ref().map(ChildRoot::new);
    let (to_child_r, to_child_w) = sys::pipe().map_err(parent("pipe"))?;
    let (from_child_r, from_child_w) = sys::pipe().map_err(parent("pipe"))?;
    let (uid, gid) = sys::euid_egid();
    let join_v1 = spec
        .join_v1
        .iter()
        .map(|tasks| {
            let file = std::fs::OpenOptions::new().write(true).open(tasks);
            file.map(OwnedFd::from).map_err(|e| LaunchError::Parent {
                call: "opening a v1 resource-limit cgroup's tasks file",
                source: io::Error::new(e.kind(), format!("{}: {e}", tasks.display())),
            })
        })
        .collect::<Result<Vec<OwnedFd>, LaunchError>>()?;

    // SAFETY: the supervisor has not started any thread yet (see `crate::session`), so the
    // child may allocate and use the standard library like after a plain fork.
    let clone = |cgroup: Option<BorrowedFd<'_>>| unsafe { sys::clone3_fork(NS_FLAGS, cgroup) };
    let into = spec.cgroup.as_ref().map(|c| c.as_fd());
    let (forked, born_in_cgroup) = match clone(into) {
        // CLONE_INTO_CGROUP needs Linux 5.7 (and a cgroup that can take processes): without
        // it, init is moved into the cgroup below like into the limits' cgroups.
        Err(e) if into.is_some() => {
            tracing::debug!("clone3 into the session cgroup failed ({e}); moving init instead");
            (clone(None), false)
        }
        forked => (forked, into.is_some()),
    };
    let forked = forked.map_err(parent("clone3 (new user/mount/pid namespaces)"))?;
    let Some((init_pid, init_pidfd)) = forked else {
        drop(to_child_w);
        drop(from_child_r);
        let paths = ChildPaths {
            masks: &mask_paths,
            view: view_trees.as_deref(),
            root,
            join_v1,
        };
        child_main(spec, &deny, &notify, paths, to_child_r, from_child_w);
    };
    drop(to_child_r);
    drop(from_child_w);
    drop(join_v1);

    let kill_child = |e: LaunchError| {
        kill_and_reap(init_pidfd.as_fd());
        e
    };

    // Map the agent's uid/gid to ours: identity, one id each. The agent is not host-root even
    // when we are: its capabilities are dropped before exec.
    write_id_maps(init_pid, uid, gid).map_err(|e| {
        kill_child(LaunchError::Parent {
            call: "writing uid_map/gid_map",
            source: e,
        })
    })?;
    sys::write_all_fd(to_child_w.as_fd(), b"g").map_err(|e| kill_child(parent("pipe write")(e)))?;
    let namespaces_at = sys::monotonic_ns();
    Ok(Launching {
        spec,
        init_pid,
        init_pidfd: Arc::new(init_pidfd),
        namespaces_at,
        born_in_cgroup,
        to_child_w,
        from_child_r,
    })
}

/// Kill the sandbox's init (and with it its PID namespace) and reap it: a launch that stops
/// before the agent runs.
pub fn kill_and_reap(init_pidfd: BorrowedFd<'_>) {
    let _ = sys::pidfd_send_signal(init_pidfd, libc::SIGKILL);
    let _ = sys::waitid_pidfd(init_pidfd);
}

impl Launching<'_> {
    /// The session will not start after all: kill and reap init, and return `e`.
    pub fn abort<E>(self, e: E) -> E {
        kill_and_reap(self.init_pidfd.as_fd());
        e
    }

    /// Wait for init to finish its set-up and take its seccomp listener. On any failure init
    /// is killed and reaped.
    pub fn ready(self) -> Result<Sandbox, LaunchError> {
        let Launching {
            spec,
            init_pid,
            init_pidfd,
            namespaces_at: _,
            born_in_cgroup,
            to_child_w,
            from_child_r,
        } = self;
        let parent = |call| move |source| LaunchError::Parent { call, source };
        let kill_child = |e: LaunchError| {
            kill_and_reap(init_pidfd.as_fd());
            e
        };
        let mut phases = Vec::new();
        let mut weaker = Vec::new();
        // Into the session's v2 cgroup (kernels without CLONE_INTO_CGROUP) while init sets up
        // its namespaces: init starts the agent only after the listener handshake below, so the
        // agent is born in every cgroup of the session (init joined the v1 ones itself).
        if let (Some(cgroup), false) = (&spec.cgroup, born_in_cgroup) {
            let procs = cgroup.procs_path();
            if let Err(e) = crate::cgroup::move_into(&procs, init_pid) {
                weaker.push(format!(
                    "the sandbox could not be moved into its cgroup ({}: {e}): network destinations \
                     are checked by the supervisor only, not by the kernel",
                    procs.display()
                ));
            }
        }
        let v2_procs = spec.cgroup.as_ref().map(|c| c.procs_path());
        for procs in &spec.limit_procs {
            if born_in_cgroup && Some(procs) == v2_procs.as_ref() {
                continue;
            }
            crate::cgroup::move_into(procs, init_pid).map_err(|e| {
                kill_child(LaunchError::Parent {
                    call: "moving the sandbox into its resource-limit cgroup",
                    source: io::Error::new(e.kind(), format!("{}: {e}", procs.display())),
                })
            })?;
        }

        loop {
            let mut buf = [0u8; 16];
            match sys::read_exact_fd(from_child_r.as_fd(), &mut buf) {
                Ok(true) => {}
                Ok(false) => return Err(kill_child(LaunchError::ChildVanished)),
                Err(e) => return Err(kill_child(parent("pipe read")(e))),
            }
            match decode(&buf) {
                Some(ChildMsg::Weaker { what }) => weaker.push(weakness_text(what).to_string()),
                Some(ChildMsg::Phase { phase, at }) => {
                    phases.extend(PHASES.get(phase as usize).map(|name| (*name, at)));
                }
                Some(ChildMsg::Failed { step, errno, index }) => {
                    let step = Step::from_u32(step).unwrap_or(Step::Sync);
                    let detail = match step {
                        Step::Mask => spec.masks.get(index as usize).map(|m| &m.path),
                        Step::JoinCgroup => spec.join_v1.get(index as usize),
                        Step::View => spec
                            .view
                            .as_ref()
                            .and_then(|v| v.binds.get(index as usize))
                            .map(|b| &b.path),
                        Step::ReadOnlyView => spec
                            .read_only_view
                            .as_ref()
                            .and_then(|t| view_tree_paths(t).nth(index as usize)),
                        _ => None,
                    }
                    .map(|p| p.display().to_string());
                    let source = io::Error::from_raw_os_error(errno);
                    let _ = sys::waitid_pidfd(init_pidfd.as_fd());
                    if step == Step::Exec {
                        return Err(LaunchError::Exec {
                            program: String::from_utf8_lossy(spec.argv[0].as_bytes()).into_owned(),
                            source,
                        });
                    }
                    return Err(LaunchError::Child {
                        step,
                        detail,
                        source,
                    });
                }
                Some(ChildMsg::Ready { listener_fd }) => {
                    let listener =
                        sys::pidfd_getfd(init_pidfd.as_fd(), listener_fd).map_err(|e| {
                            kill_child(parent("pidfd_getfd (taking the seccomp listener)")(e))
                        })?;
                    if !sys::notif_set_sync_wakeup(listener.as_fd()) {
                        tracing::debug!(
                            "SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP unavailable (kernel < 6.6)"
                        );
                    }
                    sys::write_all_fd(to_child_w.as_fd(), b"a")
                        .map_err(|e| kill_child(parent("pipe write")(e)))?;
                    return Ok(Sandbox {
                        init_pid,
                        init_pidfd,
                        listener,
                        weaker,
                        phases,
                        handshake_at: sys::monotonic_ns(),
                    });
                }
                None => return Err(kill_child(LaunchError::ChildVanished)),
            }
        }
    }
}

fn weakness_text(code: u32) -> &'static str {
    match code {
        WEAK_LANDLOCK_PARTIAL => "Landlock is only partly supported by this kernel: some filesystem rights are not enforced",
        WEAK_LANDLOCK_NONE => "Landlock is not available: the [filesystem] trees are NOT enforced by the kernel",
        WEAK_MEMFD => "vm.memfd_noexec could not be set in the sandbox (not root, or Linux < 6.3 has none): memfd exec is still refused by Landlock",
        WEAK_RESOLV_CONF => "the session's resolv.conf could not be bound over /etc/resolv.conf (missing or a dangling symlink): name lookups fail, since DNS to any server but the session's resolver is refused",
        WEAK_READ_ONLY_VIEW => "mount_setattr is unavailable (kernel < 5.12): the view is not read-only outside the write trees, so chmod, chown, utimes and xattr changes there are not refused",
        WEAK_KILLABLE => "seccomp WAIT_KILLABLE_RECV is unavailable (kernel < 5.19): a signal during a pending decision restarts the call",
        _ => "unknown weakness",
    }
}

fn write_id_maps(pid: libc::pid_t, uid: u32, gid: u32) -> io::Result<()> {
    std::fs::write(format!("/proc/{pid}/uid_map"), format!("{uid} {uid} 1\n"))?;
    std::fs::write(format!("/proc/{pid}/setgroups"), "deny")?;
    std::fs::write(format!("/proc/{pid}/gid_map"), format!("{gid} {gid} 1\n"))?;
    Ok(())
}

fn cstring(s: &OsStr) -> CString {
    CString::new(s.as_bytes())
        .unwrap_or_else(|_| CString::new("/nonexistent-path-with-nul").expect("static"))
}

/// The write trees bound back writable over the read-only view: those on a mount the sandbox
/// makes afresh (its own `/proc` and `/dev`) are left out.
fn view_tree_paths(trees: &[std::path::PathBuf]) -> impl Iterator<Item = &std::path::PathBuf> {
    trees
        .iter()
        .filter(|t| !["/proc", "/dev"].iter().any(|p| t.starts_with(p)))
}

fn view_trees(trees: &[std::path::PathBuf]) -> Vec<CString> {
    view_tree_paths(trees)
        .map(|t| cstring(t.as_os_str()))
        .collect()
}

/// Paths the child mounts on, as C strings made before `clone3`.
struct ChildPaths<'a> {
    masks: &'a [CString],
    /// The write trees of a read-only view.
    view: Option<&'a [CString]>,
    /// The `tasks` files of [`SandboxSpec::join_v1`], open for writing.
    join_v1: Vec<OwnedFd>,
    /// [`SandboxSpec::view`].
    root: Option<ChildRoot>,
}

/// [`view::View`] as C strings, relative to the view's root.
struct ChildRoot {
    dirs: Vec<CString>,
    /// (target, path)
    links: Vec<(CString, CString)>,
    /// (host path, path in the view, the bind itself)
    binds: Vec<(CString, CString, view::Bind)>,
}

impl ChildRoot {
    fn new(v: &view::View) -> ChildRoot {
        let rel = |p: &std::path::Path| cstring(p.strip_prefix("/").unwrap_or(p).as_os_str());
        ChildRoot {
            dirs: v.dirs.iter().map(|d| rel(d)).collect(),
            links: v
                .links
                .iter()
                .map(|(path, target)| (cstring(target.as_os_str()), rel(path)))
                .collect(),
            binds: v
                .binds
                .iter()
                .map(|b| (cstring(b.path.as_os_str()), rel(&b.path), b.clone()))
                .collect(),
        }
    }
}

/// The sandbox's PID 1. Every step in order; never returns.
fn child_main(
    spec: &SandboxSpec,
    deny: &[sys::SockFilter],
    notify: &[sys::SockFilter],
    paths: ChildPaths<'_>,
    from_parent: OwnedFd,
    to_parent: OwnedFd,
) -> ! {
    let report = |msg: ChildMsg| {
        let _ = sys::write_all_fd(to_parent.as_fd(), &encode(msg));
    };
    let fail = |step: Step, err: io::Error, index: i32| -> ! {
        report(ChildMsg::Failed {
            step: step as u32,
            errno: err.raw_os_error().unwrap_or(libc::EIO),
            index,
        });
        sys::exit_now(127)
    };

    // 0. Die with the supervisor. (The clone came from the supervisor's main thread, which
    //    lives as long as the supervisor does.)
    if let Err(e) = sys::set_parent_death_signal(libc::SIGKILL) {
        fail(Step::DeathSignal, e, -1);
    }
    // 0b. Into the v1 limits' cgroups, by moving ourselves (single-threaded; while the
    //     supervisor writes our id maps).
    for (i, tasks) in paths.join_v1.into_iter().enumerate() {
        if let Err(e) = sys::write_all_fd(tasks.as_fd(), b"0") {
            fail(Step::JoinCgroup, e, i as i32);
        }
    }
    // 1. Wait until the parent has written our uid/gid maps. EOF means it died.
    let mut go = [0u8; 1];
    match sys::read_exact_fd(from_parent.as_fd(), &mut go) {
        Ok(true) => {}
        _ => sys::exit_now(127),
    }
    // 2. Mounts: private propagation, the view (only the read trees, or the host's tree made
    //    read-only), our own /proc and /dev, masks. The working directory is looked up again
    //    after them (below), by its path.
    let cwd = std::env::current_dir().ok();
    if let Err(e) = sys::mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE) {
        fail(Step::MountPrivate, e, -1);
    }
    let nodes = match &paths.root {
        Some(root) => {
            // The host's device nodes are cloned before the view leaves the host's tree.
            let nodes = dev_nodes().unwrap_or_else(|(i, e)| fail(Step::Dev, e, i));
            if let Err((idx, step, e)) = enter_view(root) {
                fail(step, e, idx);
            }
            nodes
        }
        None => {
            if let Some(trees) = paths.view {
                match read_only_view(trees) {
                    Ok(()) => {}
                    Err((-1, e)) if e.raw_os_error() == Some(libc::ENOSYS) => {
                        report(ChildMsg::Weaker {
                            what: WEAK_READ_ONLY_VIEW,
                        })
                    }
                    Err((idx, e)) => fail(Step::ReadOnlyView, e, idx),
                }
            }
            if let Err(e) = mount_proc(c"/proc") {
                fail(Step::MountProc, e, -1);
            }
            dev_nodes().unwrap_or_else(|(i, e)| fail(Step::Dev, e, i))
        }
    };
    if let Err((what, e)) = private_dev(nodes) {
        report(ChildMsg::Failed {
            step: Step::Dev as u32,
            errno: e.raw_os_error().unwrap_or(libc::EIO),
            index: what,
        });
        sys::exit_now(127);
    }
    if let Err(e) = apply_masks(&spec.masks, paths.masks) {
        let (idx, e) = e;
        fail(
            if idx < 0 {
                Step::MaskSource
            } else {
                Step::Mask
            },
            e,
            idx,
        );
    }
    if let Some(content) = &spec.resolv_conf {
        if place_resolv_conf(content).is_err() {
            report(ChildMsg::Weaker {
                what: WEAK_RESOLV_CONF,
            });
        }
    }
    // The working directory was looked up before the mounts above: look it up again, so that
    // it is the write tree's writable bind (or the mask) now there, not what is beneath. (In
    // a view of the read trees only, a working directory outside them leaves the agent in
    // `/`, where the view's pivot put it: nothing outside the view stays reachable.)
    if let Some(cwd) = cwd {
        let _ = std::env::set_current_dir(cwd);
    }
    // memfd_create() without MFD_EXEC gets a non-executable memfd; MFD_EXEC is refused.
    if std::fs::write("/proc/sys/vm/memfd_noexec", "2").is_err() {
        report(ChildMsg::Weaker { what: WEAK_MEMFD });
    }
    let _ = nix_sethostname(&spec.hostname);
    let phase = |phase: u32| {
        report(ChildMsg::Phase {
            phase,
            at: sys::monotonic_ns(),
        })
    };
    phase(PHASE_MOUNTS);
    // 3. File descriptors: only 0, 1, 2 (and --keep-fd) reach the agent.
    if let Err(e) = sys::cloexec_from(3) {
        fail(Step::Fds, e, -1);
    }
    for &fd in &spec.keep_fds {
        if let Err(e) = sys::clear_cloexec(fd) {
            fail(Step::Fds, e, fd);
        }
    }
    // 4. Landlock (sets no_new_privs itself first).
    match landlock::restrict_self(&spec.landlock) {
        Ok(Enforcement::Full) => {}
        Ok(Enforcement::Partial) => report(ChildMsg::Weaker {
            what: WEAK_LANDLOCK_PARTIAL,
        }),
        Ok(Enforcement::None) => report(ChildMsg::Weaker {
            what: WEAK_LANDLOCK_NONE,
        }),
        Err(e) => fail(Step::Landlock, io::Error::other(e.to_string()), -1),
    }
    // 5. no_new_privs (again, explicitly: seccomp requires it).
    if let Err(e) = sys::set_no_new_privs() {
        fail(Step::NoNewPrivs, e, -1);
    }
    // 6. Capabilities: none in any set, bounding set emptied.
    if let Err(e) = drop_all_capabilities() {
        fail(Step::Capabilities, e, -1);
    }
    phase(PHASE_LANDLOCK);
    // 7. seccomp, last: the notifying filter with its listener, then the fixed denials (which
    //    forbid creating another listener, so they must come second).
    let listener = match sys::seccomp_set_filter(
        notify,
        sys::FILTER_FLAG_NEW_LISTENER | sys::FILTER_FLAG_WAIT_KILLABLE_RECV,
    ) {
        Ok(Some(l)) => l,
        Ok(None) => fail(
            Step::SeccompNotify,
            io::Error::from_raw_os_error(libc::EINVAL),
            -1,
        ),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            report(ChildMsg::Weaker {
                what: WEAK_KILLABLE,
            });
            match sys::seccomp_set_filter(notify, sys::FILTER_FLAG_NEW_LISTENER) {
                Ok(Some(l)) => l,
                Ok(None) => fail(
                    Step::SeccompNotify,
                    io::Error::from_raw_os_error(libc::EINVAL),
                    -1,
                ),
                Err(e) => fail(Step::SeccompNotify, e, -1),
            }
        }
        Err(e) => fail(Step::SeccompNotify, e, -1),
    };
    if let Err(e) = sys::seccomp_set_filter(deny, 0) {
        fail(Step::SeccompDeny, e, -1);
    }
    phase(PHASE_SECCOMP);
    // 8. Hand the listener over (the supervisor takes it with pidfd_getfd) and wait for the ack.
    report(ChildMsg::Ready {
        listener_fd: listener.as_raw_fd(),
    });
    let mut ack = [0u8; 1];
    match sys::read_exact_fd(from_parent.as_fd(), &mut ack) {
        Ok(true) => {}
        _ => sys::exit_now(127),
    }
    drop(listener);
    drop(from_parent);

    // 9. Start the agent; stay as init.
    let forwarded = [libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2];
    let waited = [
        libc::SIGCHLD,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGINT,
        libc::SIGQUIT,
    ];
    if let Err(e) = sys::block_signals(&waited) {
        fail(Step::ForkAgent, e, -1);
    }
    // The agent starts in init's memory, without a copy of it (init's address space is the
    // supervisor's, and copying its page tables took ~0.3 ms), and init waits until its exec.
    let argv = sys::argv_ptrs(&spec.argv);
    let mut stack = vec![0u8; AGENT_STACK];
    let mut agent_main = || -> i32 {
        sys::reset_signals();
        if let Some(bytes) = spec.file_size {
            let limited = sys::ignore_signal(libc::SIGXFSZ)
                .and_then(|()| sys::set_rlimit(libc::RLIMIT_FSIZE, bytes));
            if let Err(e) = limited {
                let msg = format!("agent-supervisor: cannot set the file size limit: {e}\n");
                let _ = sys::write_all_fd(std::io::stderr().as_fd(), msg.as_bytes());
                sys::exit_now(126);
            }
        }
        let err = sys::execvp(&argv);
        // Like env(1): say why on the agent's stderr, exit 127 (not found) or 126.
        let msg = format!(
            "agent-supervisor: cannot run {}: {err}\n",
            String::from_utf8_lossy(spec.argv[0].as_bytes())
        );
        let _ = sys::write_all_fd(std::io::stderr().as_fd(), msg.as_bytes());
        sys::exit_now(if err.raw_os_error() == Some(libc::ENOENT) {
            127
        } else {
            126
        })
    };
    // SAFETY: init is single-threaded; the agent's code above makes system calls and execs or
    // `_exit`s (its only allocations are its error messages, right before `_exit`); its pipe
    // to the supervisor is close-on-exec.
    let agent = match unsafe { sys::spawn_sharing_memory(&mut agent_main, &mut stack) } {
        Ok(pid) => pid,
        Err(e) => fail(Step::ForkAgent, e, -1),
    };
    drop(stack);
    drop(to_parent);
    init_loop(agent, &forwarded, &waited)
}

/// The agent's stack until its exec (only the pages it touches are ever allocated): as much as
/// a process's main stack, since `execvp` builds a script's new argv on it.
const AGENT_STACK: usize = 8 << 20;

/// PID 1's loop: forward termination signals to the agent, reap everything, and exit with the
/// agent's status (128+N for a signal).
fn init_loop(agent: libc::pid_t, forwarded: &[i32], waited: &[i32]) -> ! {
    loop {
        let (sig, code) = match sys::sigwait_info(waited) {
            Ok(s) => s,
            Err(_) => continue,
        };
        if forwarded.contains(&sig) {
            let _ = sys::kill(agent, sig);
            continue;
        }
        if sig != libc::SIGCHLD {
            // SIGINT/SIGQUIT from the terminal reach the agent directly (same process group);
            // forward only those the supervisor sent with kill().
            if code == libc::SI_USER {
                let _ = sys::kill(agent, sig);
            }
            continue;
        }
        loop {
            match sys::waitpid(-1, libc::WNOHANG | libc::__WALL) {
                Ok((0, _)) | Err(_) => break,
                Ok((pid, status)) if pid == agent => {
                    let code = if libc::WIFEXITED(status) {
                        libc::WEXITSTATUS(status)
                    } else {
                        128 + libc::WTERMSIG(status)
                    };
                    sys::exit_now(code);
                }
                Ok(_) => continue,
            }
        }
    }
}

fn nix_sethostname(name: &str) -> io::Result<()> {
    std::fs::write("/proc/sys/kernel/hostname", name)
}

fn drop_all_capabilities() -> io::Result<()> {
    use caps::CapSet;
    let err = |e: caps::errors::CapsError| io::Error::other(e.to_string());
    for cap in caps::all() {
        // Dropping from the bounding set needs CAP_SETPCAP, which we still hold here.
        caps::drop(None, CapSet::Bounding, cap).map_err(err)?;
    }
    caps::clear(None, CapSet::Ambient).map_err(err)?;
    caps::clear(None, CapSet::Inheritable).map_err(err)?;
    caps::clear(None, CapSet::Effective).map_err(err)?;
    caps::clear(None, CapSet::Permitted).map_err(err)?;
    Ok(())
}

/// Device nodes the agent gets in its private /dev (bind-mounted from the host's).
const DEV_NODES: &[&std::ffi::CStr] = &[c"null", c"zero", c"full", c"random", c"urandom", c"tty"];

/// The sandbox's own /proc (of its PID namespace) at `at`.
fn mount_proc(at: &std::ffi::CStr) -> io::Result<()> {
    sys::mount(
        Some(c"proc"),
        at,
        Some(c"proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    )
}

/// Detached clones of the host's device nodes the agent keeps ([`DEV_NODES`]), for
/// [`private_dev`], each made read-only: the nodes are the host's own inodes, and a read-only
/// mount refuses chmod, chown and utimes on them (a uid-0 agent owns root's files), not reads
/// and writes of the device. (Cloned from the host's tree before the view is built, they are
/// not read-only by inheritance.) Returns (which node, error) on failure.
fn dev_nodes() -> Result<Vec<(&'static std::ffi::CStr, OwnedFd)>, (i32, io::Error)> {
    let mut nodes = Vec::with_capacity(DEV_NODES.len());
    for (i, name) in DEV_NODES.iter().enumerate() {
        let path = CString::new([b"/dev/", name.to_bytes()].concat()).expect("no NUL");
        match sys::open_tree_clone(libc::AT_FDCWD, &path) {
            Ok(fd) => {
                match sys::mount_setattr(fd.as_fd(), sys::MOUNT_ATTR_RDONLY) {
                    // Linux < 5.12: the view is not read-only either (said once as weaker).
                    Err(e) if e.raw_os_error() != Some(libc::ENOSYS) => return Err((i as i32, e)),
                    _ => {}
                }
                nodes.push((*name, fd))
            }
            // A host without that node: the sandbox goes without it too.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err((i as i32, e)),
        }
    }
    Ok(nodes)
}

/// Make the agent's root the view of its read trees ([`view`]) and leave the host's tree:
/// clone every tree, make the view's tmpfs (mounted over `/dev` of the host's tree until the
/// pivot: a directory every host has, and one the sandbox replaces anyway) with the
/// directories and symlinks on the way, bind the read-only clones into it and make it and them
/// read-only at once, bind the writable ones, mount the sandbox's /proc in it (while the
/// host's is still visible, as the kernel requires of a proc mounted in a user namespace), and
/// pivot into it.
///
/// The host's tree is put at the view's `/dev`, which [`private_dev`] covers next with the
/// sandbox's own, before anything of the agent's runs. It is not detached: a detach waits for
/// an expedited RCU grace period (0.15 to 1.7 ms measured here, a third of a session's
/// start-up), and a covered tree is out of every path's reach (`..` from a mount's root climbs
/// past the mounts stacked on a mount point; remounting, `open_tree`, `setns` and `umount2`
/// are refused by seccomp, and the agent has no capability). Init's exit drops it with the
/// mount namespace. Returns (bind index or -1 for the tmpfs, -2 for the pivot; step; error).
fn enter_view(root: &ChildRoot) -> Result<(), (i32, Step, io::Error)> {
    let view = |idx: i32| move |e| (idx, Step::View, e);
    let mut clones = Vec::with_capacity(root.binds.len());
    for (i, (host, _, _)) in root.binds.iter().enumerate() {
        match sys::open_tree_clone_recursive(libc::AT_FDCWD, host) {
            Ok(fd) => clones.push((i, fd)),
            // Gone since the plan was made: nothing to show.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err((i as i32, Step::View, e)),
        }
    }
    const AT: &std::ffi::CStr = c"/dev";
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    sys::mount_with_data(
        Some(c"tmpfs"),
        AT,
        Some(c"tmpfs"),
        flags,
        Some(c"mode=0755"),
    )
    .map_err(view(-1))?;
    let top = std::fs::File::open(std::ffi::OsStr::from_bytes(AT.to_bytes())).map_err(view(-1))?;
    for dir in &root.dirs {
        sys::mkdirat(top.as_fd(), dir, 0o755).map_err(view(-1))?;
    }
    for (target, link) in &root.links {
        sys::symlinkat(target, top.as_fd(), link).map_err(view(-1))?;
    }
    for (i, _) in &clones {
        let (_, at, bind) = &root.binds[*i];
        if bind.in_skeleton {
            let made = if bind.is_dir {
                sys::mkdirat(top.as_fd(), at, 0o755)
            } else {
                sys::create_file_at(top.as_fd(), at, 0o444)
            };
            made.map_err(view(*i as i32))?;
        }
    }
    // Read-only trees first (none lies inside another tree), then the tmpfs and all of them
    // are made read-only in one call, then the writable trees (parents first, as planned).
    let attach = |writable: bool| {
        clones
            .iter()
            .filter(|(i, _)| root.binds[*i].2.writable == writable)
            .try_for_each(|(i, clone)| {
                let (_, at, _) = &root.binds[*i];
                sys::move_mount_at(clone.as_fd(), top.as_fd(), at).map_err(view(*i as i32))
            })
    };
    attach(false)?;
    sys::mount_setattr(top.as_fd(), sys::MOUNT_ATTR_RDONLY).map_err(view(-1))?;
    attach(true)?;
    mount_proc(c"/dev/proc").map_err(|e| (-1, Step::MountProc, e))?;
    sys::pivot_root_to(top.as_fd(), c"dev").map_err(view(-2))
}

/// Replace /dev with a fresh tmpfs holding only harmless devices (the `nodes` cloned by
/// [`dev_nodes`]), a devpts instance of its own (the host's terminals are not reachable; the
/// agent's own stays its stdio and /dev/tty), a fresh /dev/shm and the usual symlinks. Without
/// this a uid-0 agent (capabilities or not) could open root-owned block devices (file
/// permissions allow the owner) and read the raw disk. Returns (which node, error) on failure.
fn private_dev(nodes: Vec<(&'static std::ffi::CStr, OwnedFd)>) -> Result<(), (i32, io::Error)> {
    let flags = libc::MS_NOSUID | libc::MS_NOEXEC;
    sys::mount(Some(c"tmpfs"), c"/dev", Some(c"tmpfs"), flags).map_err(|e| (-1, e))?;
    let dev = std::fs::File::open("/dev").map_err(|e| (-1, e))?;
    for (i, (name, tree)) in nodes.iter().enumerate() {
        sys::create_file_at(dev.as_fd(), name, 0o666).map_err(|e| (i as i32, e))?;
        let target = CString::new([b"/dev/", name.to_bytes()].concat()).expect("no NUL");
        sys::move_mount_to(tree.as_fd(), &target).map_err(|e| (i as i32, e))?;
    }
    sys::mkdirat(dev.as_fd(), c"pts", 0o755).map_err(|e| (-2, e))?;
    sys::mount_with_data(
        Some(c"devpts"),
        c"/dev/pts",
        Some(c"devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(c"newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(|e| (-2, e))?;
    sys::mkdirat(dev.as_fd(), c"shm", 0o1777).map_err(|e| (-3, e))?;
    sys::mount(
        Some(c"tmpfs"),
        c"/dev/shm",
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
    )
    .map_err(|e| (-3, e))?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, format!("/dev/{link}")).map_err(|e| (-4, e))?;
    }
    Ok(())
}

/// Bind a read-only file holding `content` over `/etc/resolv.conf` (a symlink there is
/// followed: the mount lands on its target). The source is made on the private `/dev` tmpfs,
/// as the mask sources are, and unlinked once bound.
fn place_resolv_conf(content: &[u8]) -> io::Result<()> {
    const SRC: &std::ffi::CStr = c"/dev/.agent-supervisor-resolv.conf";
    let dev = std::fs::File::open("/dev")?;
    let result = (|| {
        sys::write_file_at(
            dev.as_fd(),
            c".agent-supervisor-resolv.conf",
            0o444,
            content,
        )?;
        sys::mount(Some(SRC), c"/etc/resolv.conf", None, libc::MS_BIND)?;
        sys::mount(
            None,
            c"/etc/resolv.conf",
            None,
            libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC,
        )
    })();
    let _ = std::fs::remove_file(std::ffi::OsStr::from_bytes(SRC.to_bytes()));
    result
}

/// Make every mount of the namespace read-only, except the write `trees`, which are cloned
/// first (with their submounts, as they are) and bound back on top. chmod, chown, utimes and
/// xattr changes, which Landlock has no rights for, then fail with `EROFS` outside them; the
/// agent can't undo it (the mount family is refused by seccomp). Device nodes stay usable: a
/// read-only mount refuses changes to an inode, not writes to a device. Returns (tree index or
/// -1 for the remount itself, error).
fn read_only_view(trees: &[CString]) -> Result<(), (i32, io::Error)> {
    let mut clones = Vec::with_capacity(trees.len());
    for (i, tree) in trees.iter().enumerate() {
        match sys::open_tree_clone_recursive(libc::AT_FDCWD, tree) {
            Ok(fd) => clones.push((i, fd)),
            // A write tree that doesn't exist: nothing to bind (Landlock skips it too).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err((i as i32, e)),
        }
    }
    let root = std::fs::File::open("/").map_err(|e| (-1, e))?;
    sys::mount_setattr(root.as_fd(), sys::MOUNT_ATTR_RDONLY).map_err(|e| (-1, e))?;
    for (i, fd) in clones {
        sys::move_mount_to(fd.as_fd(), &trees[i]).map_err(|e| (i as i32, e))?;
    }
    Ok(())
}

/// Mount every mask. Returns (mask index or -1 for the tmpfs itself, error) on failure.
fn apply_masks(masks: &[MaskMount], paths: &[CString]) -> Result<(), (i32, io::Error)> {
    if masks.is_empty() {
        return Ok(());
    }
    // The empty mode-000 sources of "hide" masks are made on the sandbox's private /dev tmpfs
    // (a mount of this namespace: kernels before 6.15 can't clone a mount from a detached
    // tmpfs), bound over each target read-only, then unlinked: the binds keep the inodes, and
    // nothing of them stays reachable by name.
    const SRC_FILE: &std::ffi::CStr = c"/dev/.agent-supervisor-mask-file";
    const SRC_DIR: &std::ffi::CStr = c"/dev/.agent-supervisor-mask-dir";
    let dev = std::fs::File::open("/dev").map_err(|e| (-1, e))?;
    sys::create_file_at(dev.as_fd(), c".agent-supervisor-mask-file", 0o000).map_err(|e| (-1, e))?;
    sys::mkdirat(dev.as_fd(), c".agent-supervisor-mask-dir", 0o000).map_err(|e| (-1, e))?;
    sys::fchmodat(dev.as_fd(), c".agent-supervisor-mask-dir", 0o000).map_err(|e| (-1, e))?;
    let hidden = libc::MS_BIND
        | libc::MS_REMOUNT
        | libc::MS_RDONLY
        | libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC;
    // Directories already hidden: a mask below one has nothing left to cover (the planner
    // drops those, see `masks::compose`; this keeps the mount step from depending on it).
    let mut hidden_dirs: Vec<&std::path::Path> = Vec::new();
    let result = masks
        .iter()
        .zip(paths)
        .enumerate()
        .try_for_each(|(i, (m, path))| {
            let idx = i as i32;
            if hidden_dirs.iter().any(|h| m.path.starts_with(h)) {
                return Ok(());
            }
            let mounted = match m.kind {
                MaskKind::Hide => {
                    let src = if m.is_dir { SRC_DIR } else { SRC_FILE };
                    sys::mount(Some(src), path, None, libc::MS_BIND)
                        .and_then(|()| sys::mount(None, path, None, hidden))
                }
                MaskKind::ReadOnly | MaskKind::NoExec => {
                    let attr = if m.kind == MaskKind::ReadOnly {
                        sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV
                    } else {
                        sys::MOUNT_ATTR_NOEXEC | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV
                    };
                    sys::open_tree_clone(libc::AT_FDCWD, path).and_then(|t| {
                        sys::mount_setattr(t.as_fd(), attr)?;
                        sys::move_mount_to(t.as_fd(), path)
                    })
                }
            };
            match mounted {
                Ok(()) => {
                    if m.kind == MaskKind::Hide && m.is_dir {
                        hidden_dirs.push(&m.path);
                    }
                    Ok(())
                }
                // Gone since the plan was made (the host removed it): nothing left to deny.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                Err(e) => Err((idx, e)),
            }
        });
    let _ = std::fs::remove_file(std::ffi::OsStr::from_bytes(SRC_FILE.to_bytes()));
    let _ = std::fs::remove_dir(std::ffi::OsStr::from_bytes(SRC_DIR.to_bytes()));
    result
}

/// The agent's command line as C strings.
pub fn to_cstrings(argv: &[std::ffi::OsString]) -> Vec<CString> {
    argv.iter().map(|a| cstring(a)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_round_trips_through_the_child_message() {
        for step in Step::ALL {
            let msg = encode(ChildMsg::Failed {
                step: step as u32,
                errno: 5,
                index: 2,
            });
            match decode(&msg) {
                Some(ChildMsg::Failed {
                    step: s,
                    errno: 5,
                    index: 2,
                }) => assert_eq!(Step::from_u32(s), Some(step)),
                other => panic!("{step:?} decoded as {other:?}"),
            }
        }
    }

    #[test]
    fn phase_times_round_trip_through_the_child_message() {
        let at = 0x1234_5678_9abc_def0u64;
        match decode(&encode(ChildMsg::Phase {
            phase: PHASE_SECCOMP,
            at,
        })) {
            Some(ChildMsg::Phase { phase, at: got }) => {
                assert_eq!((phase, got), (PHASE_SECCOMP, at));
            }
            other => panic!("decoded as {other:?}"),
        }
    }
}
