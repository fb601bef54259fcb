//! Proving seccomp user notification works here, feature by feature, by using it.
//!
//! A forked child installs a one-syscall notify filter (on `getppid`, which nothing else in
//! it calls) exactly as the sandbox does (`no_new_privs`, `NEW_LISTENER |
//! WAIT_KILLABLE_RECV`, falling back without the latter), and the parent takes the listener
//! with `pidfd_getfd` as the supervisor does. Then the child calls `getppid` three times and
//! the parent answers each one differently: with a value (`SECCOMP_IOCTL_NOTIF_SEND`), with
//! `SECCOMP_USER_NOTIF_FLAG_CONTINUE` (5.5+), and with `SECCOMP_IOCTL_NOTIF_ADDFD` +
//! `SECCOMP_ADDFD_FLAG_SEND` (5.14+). The child reports what each call returned and the
//! identity of the injected fd, so every feature is proven from both ends. On the way the
//! parent checks `SECCOMP_IOCTL_NOTIF_ID_VALID`, `SECCOMP_IOCTL_NOTIF_SET_FLAGS` with
//! `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` (6.6+), and `PTRACE_SEIZE` of the child (what the
//! exec guard needs).
//!
//! Every wait is bounded; a child that stops answering is killed.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use serde::Serialize;

use super::Probe;
use crate::sys;

/// How long the parent waits for any one step of the child.
const STEP_MS: i32 = 5_000;
/// What the parent answers the first trapped `getppid` with.
const ANSWER: i64 = 4242;

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// The features, each proven (or not) by the probe.
#[derive(Debug, Clone, Serialize)]
pub struct SeccompReport {
    /// A filter with `SECCOMP_FILTER_FLAG_NEW_LISTENER` can be installed, the supervisor can
    /// take the listener, receive a notification and answer it with a value.
    pub listener: Probe,
    /// `SECCOMP_IOCTL_NOTIF_ID_VALID`.
    pub id_valid: Probe,
    /// `SECCOMP_USER_NOTIF_FLAG_CONTINUE` (exec is let through this way).
    #[serde(rename = "continue")]
    pub continue_: Probe,
    /// `SECCOMP_IOCTL_NOTIF_ADDFD` with `SECCOMP_ADDFD_FLAG_SEND` (opens are answered this way).
    pub addfd_send: Probe,
    /// `SECCOMP_IOCTL_NOTIF_SET_FLAGS` with `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` (speed only).
    pub sync_wake_up: Probe,
    /// `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`.
    pub wait_killable_recv: Probe,
    /// `PTRACE_SEIZE` of a child (the exec guard traces each allowed exec); reported at the
    /// top level of the doctor's report.
    #[serde(skip)]
    pub ptrace: Probe,
}

impl SeccompReport {
    fn untested(why: &str) -> SeccompReport {
        let p = || Probe::not_tested(why);
        SeccompReport {
            listener: p(),
            id_valid: p(),
            continue_: p(),
            addfd_send: p(),
            sync_wake_up: p(),
            wait_killable_recv: p(),
            ptrace: p(),
        }
    }
}

/// `seccomp_data.arch` is at offset 4, `.nr` at 0. Anything but a native `getppid` is allowed.
fn getppid_filter() -> [sys::SockFilter; 6] {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let insn = |code, jt, jf, k| sys::SockFilter { code, jt, jf, k };
    [
        insn(LD_W_ABS, 0, 0, 4),
        insn(JEQ_K, 0, 3, AUDIT_ARCH),
        insn(LD_W_ABS, 0, 0, 0),
        insn(JEQ_K, 0, 1, libc::SYS_getppid as u32),
        insn(RET_K, 0, 0, SECCOMP_RET_USER_NOTIF),
        insn(RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
}

/// The child's first message: `listener_fd` (-1 on failure), errno of the failure, errno of
/// the WAIT_KILLABLE_RECV attempt (0 = accepted).
const HELLO_LEN: usize = 12;
/// The child's second message: the three `getppid` results (value or -errno) and the
/// (st_dev, st_ino) of the fd the third one returned.
const RESULTS_LEN: usize = 40;

fn child(to_parent: OwnedFd, from_parent: OwnedFd) -> ! {
    let hello = |fd: i32, errno: i32, killable_errno: i32| {
        let mut b = [0u8; HELLO_LEN];
        b[0..4].copy_from_slice(&fd.to_ne_bytes());
        b[4..8].copy_from_slice(&errno.to_ne_bytes());
        b[8..12].copy_from_slice(&killable_errno.to_ne_bytes());
        let _ = sys::write_all_fd(to_parent.as_fd(), &b);
    };
    let errno = |e: &io::Error| e.raw_os_error().unwrap_or(libc::EIO);
    let _ = sys::set_parent_death_signal(libc::SIGKILL);
    if let Err(e) = sys::set_no_new_privs() {
        hello(-1, errno(&e), 0);
        sys::exit_now(1);
    }
    let filter = getppid_filter();
    let installed = match sys::seccomp_set_filter(
        &filter,
        sys::FILTER_FLAG_NEW_LISTENER | sys::FILTER_FLAG_WAIT_KILLABLE_RECV,
    ) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            sys::seccomp_set_filter(&filter, sys::FILTER_FLAG_NEW_LISTENER)
                .map(|l| (l, libc::EINVAL))
        }
        other => other.map(|l| (l, 0)),
    };
    let (listener, killable) = match installed {
        Ok((Some(l), killable)) => (l, killable),
        Ok((None, _)) => {
            hello(-1, libc::EINVAL, 0);
            sys::exit_now(1);
        }
        Err(e) => {
            hello(-1, errno(&e), 0);
            sys::exit_now(1);
        }
    };
    hello(listener.as_raw_fd(), 0, killable);
    let mut go = [0u8; 1];
    if !matches!(sys::read_exact_fd(from_parent.as_fd(), &mut go), Ok(true)) {
        sys::exit_now(1);
    }
    let call = || match sys::getppid_raw() {
        Ok(v) => v,
        Err(e) => -i64::from(errno(&e)),
    };
    let (answered, continued, injected) = (call(), call(), call());
    // What the injected fd refers to: stat through /proc follows the fd to its file.
    let (dev, ino) = std::fs::metadata(format!("/proc/self/fd/{injected}"))
        .ok()
        .filter(|_| injected >= 0)
        .map(|m| (m.dev(), m.ino()))
        .unwrap_or((0, 0));
    let mut b = [0u8; RESULTS_LEN];
    for (i, v) in [answered, continued, injected, dev as i64, ino as i64]
        .into_iter()
        .enumerate()
    {
        b[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
    }
    let _ = sys::write_all_fd(to_parent.as_fd(), &b);
    sys::exit_now(0)
}

/// Read one message of the child, waiting at most [`STEP_MS`].
fn read_msg<const N: usize>(from_child: BorrowedFd<'_>) -> Result<[u8; N], String> {
    match sys::poll_one(from_child, libc::POLLIN, STEP_MS) {
        Ok(0) => return Err("the probe child did not answer within 5 s".into()),
        Ok(_) => {}
        Err(e) => return Err(format!("poll: {e}")),
    }
    let mut b = [0u8; N];
    match sys::read_exact_fd(from_child, &mut b) {
        Ok(true) => Ok(b),
        Ok(false) => Err("the probe child exited early".into()),
        Err(e) => Err(format!("reading from the probe child: {e}")),
    }
}

fn word<const N: usize>(b: &[u8; N], i: usize) -> i64 {
    i64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
}

fn int<const N: usize>(b: &[u8; N], i: usize) -> i32 {
    i32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().expect("4 bytes"))
}

/// Receive the child's next trapped `getppid`, waiting at most [`STEP_MS`].
fn recv(listener: BorrowedFd<'_>, child: libc::pid_t) -> Result<sys::Notif, String> {
    match sys::poll_one(listener, libc::POLLIN, STEP_MS) {
        Ok(0) => return Err("no notification within 5 s".into()),
        Ok(r) if r & libc::POLLIN == 0 => return Err("the probe child exited early".into()),
        Ok(_) => {}
        Err(e) => return Err(format!("poll on the listener: {e}")),
    }
    let n = sys::notif_recv(listener).map_err(|e| format!("SECCOMP_IOCTL_NOTIF_RECV: {e}"))?;
    if n.nr != libc::SYS_getppid as i32 || n.pid != child as u32 {
        return Err(format!(
            "unexpected notification (syscall {}, pid {})",
            n.nr, n.pid
        ));
    }
    Ok(n)
}

/// Run the probe. Must be called while the process is single-threaded (it forks).
pub fn probe() -> SeccompReport {
    let pipes = sys::pipe().and_then(|a| Ok((a, sys::pipe()?)));
    let Ok(((from_child, to_parent), (from_parent, to_child))) = pipes else {
        return SeccompReport::untested("cannot create pipes");
    };
    let (pid, pidfd) = match sys::fork_single_threaded(0) {
        Ok(Some(child)) => child,
        Ok(None) => {
            drop((from_child, to_child));
            child(to_parent, from_parent);
        }
        Err(e) => return SeccompReport::untested(&format!("cannot fork: {e}")),
    };
    drop((to_parent, from_parent));
    let report = converse(pid, from_child.as_fd(), to_child.as_fd(), pidfd.as_fd());
    // Whatever happened, the child must not outlive the probe.
    let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
    let _ = sys::waitid_pidfd(pidfd.as_fd());
    report
}

fn converse(
    pid: libc::pid_t,
    from_child: BorrowedFd<'_>,
    to_child: BorrowedFd<'_>,
    pidfd: BorrowedFd<'_>,
) -> SeccompReport {
    let hello = match read_msg::<HELLO_LEN>(from_child) {
        Ok(h) => h,
        Err(e) => return SeccompReport::untested(&e),
    };
    let (listener_fd, errno, killable_errno) = (int(&hello, 0), int(&hello, 1), int(&hello, 2));
    if listener_fd < 0 {
        let e = io::Error::from_raw_os_error(errno);
        let mut r = SeccompReport::untested("no listener");
        r.listener = Probe::failed("seccomp(SET_MODE_FILTER, NEW_LISTENER)", &e);
        return r;
    }
    let mut r = SeccompReport::untested("the probe stopped early");
    r.wait_killable_recv = match killable_errno {
        0 => Probe::works(),
        e => Probe::failed(
            "seccomp(SET_MODE_FILTER, WAIT_KILLABLE_RECV)",
            &io::Error::from_raw_os_error(e),
        ),
    };
    let listener = match sys::pidfd_getfd(pidfd, listener_fd) {
        Ok(l) => l,
        Err(e) => {
            r.listener = Probe::failed("pidfd_getfd (taking the listener)", &e);
            return r;
        }
    };
    let listener = listener.as_fd();
    r.sync_wake_up = if sys::notif_set_sync_wakeup(listener) {
        Probe::works()
    } else {
        Probe::failed(
            "SECCOMP_IOCTL_NOTIF_SET_FLAGS(SYNC_WAKE_UP)",
            &io::Error::last_os_error(),
        )
    };
    r.ptrace = match sys::ptrace_seize(pid) {
        Ok(()) => Probe::works(),
        Err(e) => Probe::failed("PTRACE_SEIZE", &e),
    };
    if let Err(e) = sys::write_all_fd(to_child, b"g") {
        r.listener = Probe::not_tested(&format!("writing to the probe child: {e}"));
        return r;
    }

    // 1. Answer with a value.
    let answered = recv(listener, pid).and_then(|n| {
        let valid = sys::notif_id_valid(listener, n.id);
        sys::notif_respond(listener, n.id, Ok(ANSWER))
            .map_err(|e| format!("SECCOMP_IOCTL_NOTIF_SEND: {e}"))?;
        Ok(valid)
    });
    let id_valid = match answered {
        Ok(valid) => valid,
        Err(e) => {
            r.listener = Probe::not_tested(&e);
            return r;
        }
    };
    // 2. Let the call run: the child sees its real parent, us.
    let continued = recv(listener, pid).map(|n| {
        sys::notif_continue(listener, n.id).inspect_err(|_| {
            let _ = sys::notif_respond(listener, n.id, Err(libc::ENOSYS));
        })
    });
    // 3. Inject an fd as the call's result: the read end of a fresh pipe, a file no one else
    //    has.
    let source = sys::pipe();
    let expected = source
        .as_ref()
        .ok()
        .and_then(|(r, _)| sys::fstat_id(r.as_fd()).ok());
    let injected = recv(listener, pid).map(|n| match &source {
        Ok((r, _)) => sys::notif_addfd_send(listener, n.id, r.as_fd(), true).inspect_err(|_| {
            let _ = sys::notif_respond(listener, n.id, Err(libc::ENOSYS));
        }),
        Err(e) => {
            let _ = sys::notif_respond(listener, n.id, Err(libc::ENOSYS));
            Err(io::Error::new(e.kind(), format!("pipe: {e}")))
        }
    });
    let results = match read_msg::<RESULTS_LEN>(from_child) {
        Ok(b) => b,
        Err(e) => {
            r.listener = Probe::not_tested(&e);
            return r;
        }
    };
    let seen = |i| word(&results, i);

    r.listener = if seen(0) == ANSWER {
        Probe::works()
    } else {
        Probe::failed_msg(format!(
            "answered getppid with {ANSWER}, the child saw {}",
            seen(0)
        ))
    };
    r.id_valid = if id_valid {
        Probe::works()
    } else {
        Probe::failed_msg("SECCOMP_IOCTL_NOTIF_ID_VALID said a pending call was gone")
    };
    let our_pid = i64::from(std::process::id());
    r.continue_ = match continued {
        Err(e) => Probe::not_tested(&e),
        Ok(Err(e)) => Probe::failed("SECCOMP_IOCTL_NOTIF_SEND(FLAG_CONTINUE)", &e),
        Ok(Ok(())) if seen(1) == our_pid => Probe::works(),
        Ok(Ok(())) => Probe::failed_msg(format!(
            "continued getppid returned {} in the child, not {our_pid}",
            seen(1)
        )),
    };
    r.addfd_send = match injected {
        Err(e) => Probe::not_tested(&e),
        Ok(Err(e)) => Probe::failed("SECCOMP_IOCTL_NOTIF_ADDFD(FLAG_SEND)", &e),
        Ok(Ok(fd)) => {
            let identity = expected.map(|(d, i, _)| (d as i64, i as i64));
            if seen(2) == i64::from(fd) && identity == Some((seen(3), seen(4))) {
                Probe::works()
            } else {
                Probe::failed_msg(format!(
                    "ADDFD returned fd {fd}, the child's call returned {} (same file: {})",
                    seen(2),
                    identity == Some((seen(3), seen(4)))
                ))
            }
        }
    };
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_jumps_land_on_the_allow_return() {
        let f = getppid_filter();
        // Both "no" branches (wrong arch, other syscall) must reach the last instruction.
        assert_eq!(1 + 1 + f[1].jf as usize, f.len() - 1);
        assert_eq!(3 + 1 + f[3].jf as usize, f.len() - 1);
        assert_eq!(f[4].k, SECCOMP_RET_USER_NOTIF);
        assert_eq!(f[5].k, SECCOMP_RET_ALLOW);
    }
}
