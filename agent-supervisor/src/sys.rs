//! Thin wrappers over the raw Linux system calls the supervisor needs.
//!
//! Every `unsafe` block of the crate lives here, each with a `// SAFETY:` comment; the
//! sandbox, supervision and handler modules call these safe functions. Errors are
//! `io::Error` from `errno`; callers add context (which step, which path).
//!
//! Minimum kernel: 5.9 for `SECCOMP_IOCTL_NOTIF_ADDFD` / `pidfd_getfd` / `close_range`,
//! 5.6 for `openat2`, 5.2 for the new mount API, 6.6 for `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP`
//! (optional), 5.19 for `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` (optional).

use std::ffi::{CStr, CString};
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_int(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Retry a call on `EINTR`.
pub fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            other => return other,
        }
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful system call that creates a new file
    // descriptor, which nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

// ---------------------------------------------------------------------------------------
// bpf

/// `BPF_OBJ_GET` (Linux 4.4): a new descriptor of the object pinned at `path` in bpffs.
pub fn bpf_obj_get(path: &CStr) -> io::Result<OwnedFd> {
    // union bpf_attr, the BPF_OBJ_GET member: pathname (u64), bpf_fd, file_flags, path_fd;
    // the rest zero.
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    // SAFETY: `attr` is a zeroed buffer the size of the union the kernel reads (it checks
    // that every byte past the member it uses is zero); `path` outlives the call.
    unsafe {
        bpf_fd(
            aya_obj::generated::bpf_cmd::BPF_OBJ_GET as libc::c_long,
            &attr,
        )
    }
}

/// `bpf(cmd, attr, sizeof attr)` for a command that returns a new descriptor.
///
/// # Safety
/// `attr` must be a valid attribute of `cmd` (the rest of the union zeroed), and whatever it
/// points to must stay valid for the call.
unsafe fn bpf_fd<A>(cmd: libc::c_long, attr: &A) -> io::Result<OwnedFd> {
    // SAFETY: upheld by the caller; the kernel reads `size_of::<A>()` bytes of `attr`.
    check(unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const A, size_of::<A>()) }).map(owned)
}

/// `BPF_LINK_CREATE` (Linux 5.7 for cgroup programs): attach `prog` to `target` (a cgroup
/// directory) as `attach_type`; the program is detached when the returned link is closed.
pub fn bpf_link_create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    // union bpf_attr, the BPF_LINK_CREATE member: prog_fd, target_fd, attach_type, flags
    // (all u32), the rest zero.
    let mut attr = [0u32; 32];
    attr[0] = prog.as_raw_fd() as u32;
    attr[1] = target.as_raw_fd() as u32;
    attr[2] = attach_type;
    // SAFETY: as in `bpf_obj_get`; both descriptors are borrowed for the call.
    unsafe {
        bpf_fd(
            aya_obj::generated::bpf_cmd::BPF_LINK_CREATE as libc::c_long,
            &attr,
        )
    }
}

// ---------------------------------------------------------------------------------------
// seccomp

/// A classic BPF instruction (`struct sock_filter`).
pub type SockFilter = libc::sock_filter;

/// `SECCOMP_FILTER_FLAG_*` we use.
pub const FILTER_FLAG_NEW_LISTENER: u64 = libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
pub const FILTER_FLAG_WAIT_KILLABLE_RECV: u64 = libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
/// `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` (6.6+): wake the supervisor on the same CPU.
const USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;

/// Install a seccomp filter on the calling thread. Returns the listener fd when
/// `FILTER_FLAG_NEW_LISTENER` is in `flags`. Requires `no_new_privs` (or CAP_SYS_ADMIN).
pub fn seccomp_set_filter(prog: &[SockFilter], flags: u64) -> io::Result<Option<OwnedFd>> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        filter: prog.as_ptr() as *mut SockFilter,
    };
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel copies it.
    let ret = check(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const _,
        )
    })?;
    if flags & FILTER_FLAG_NEW_LISTENER != 0 {
        Ok(Some(owned(ret)))
    } else {
        Ok(None)
    }
}

/// One notification (`struct seccomp_notif`), decoded.
#[derive(Debug, Clone, Copy)]
pub struct Notif {
    pub id: u64,
    /// Thread id of the trapped task, in the supervisor's PID namespace.
    pub pid: u32,
    pub nr: i32,
    pub arch: u32,
    pub args: [u64; 6],
}

/// `SECCOMP_IOCTL_NOTIF_RECV`. Blocks until a notification arrives.
pub fn notif_recv(listener: BorrowedFd<'_>) -> io::Result<Notif> {
    let mut n = MaybeUninit::<libc::seccomp_notif>::zeroed();
    // SAFETY: the kernel requires a zeroed `seccomp_notif` and writes a complete one into it.
    check_int(unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_RECV as _,
            n.as_mut_ptr(),
        )
    })?;
    // SAFETY: the ioctl succeeded, so the kernel filled the struct.
    let n = unsafe { n.assume_init() };
    Ok(Notif {
        id: n.id,
        pid: n.pid,
        nr: n.data.nr,
        arch: n.data.arch,
        args: n.data.args,
    })
}

/// `SECCOMP_IOCTL_NOTIF_ID_VALID`: is the trapped task still waiting on notification `id`?
pub fn notif_id_valid(listener: BorrowedFd<'_>, id: u64) -> bool {
    // SAFETY: the ioctl reads one u64 from the pointer, which is valid for the call.
    unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID as _,
            &id,
        ) == 0
    }
}

/// `SECCOMP_IOCTL_NOTIF_SEND`: `Ok(val)` makes the syscall return `val`; `Err(errno)` makes it
/// fail with that errno. (We never use `SECCOMP_USER_NOTIF_FLAG_CONTINUE` for checked
/// operations; see [`notif_continue`].)
pub fn notif_respond(
    listener: BorrowedFd<'_>,
    id: u64,
    result: Result<i64, i32>,
) -> io::Result<()> {
    let (val, error) = match result {
        Ok(v) => (v, 0),
        Err(e) => (0, -e.abs()),
    };
    let resp = libc::seccomp_notif_resp {
        id,
        val,
        error,
        flags: 0,
    };
    // SAFETY: the kernel reads a complete `seccomp_notif_resp` from a valid pointer.
    check_int(unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SEND as _,
            &resp,
        )
    })
    .map(drop)
}

/// Let the trapped syscall run as the agent issued it. Only for `execve`/`execveat`, which
/// cannot be emulated; the exec guard then checks the new image before it runs.
pub fn notif_continue(listener: BorrowedFd<'_>, id: u64) -> io::Result<()> {
    let resp = libc::seccomp_notif_resp {
        id,
        val: 0,
        error: 0,
        flags: libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
    };
    // SAFETY: as in `notif_respond`.
    check_int(unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SEND as _,
            &resp,
        )
    })
    .map(drop)
}

/// `SECCOMP_IOCTL_NOTIF_ADDFD` with `SECCOMP_ADDFD_FLAG_SEND`: install `fd` in the trapped
/// task's fd table and make the syscall return the new fd number, atomically.
pub fn notif_addfd_send(
    listener: BorrowedFd<'_>,
    id: u64,
    fd: BorrowedFd<'_>,
    cloexec: bool,
) -> io::Result<i32> {
    let addfd = libc::seccomp_notif_addfd {
        id,
        flags: libc::SECCOMP_ADDFD_FLAG_SEND as u32,
        srcfd: fd.as_raw_fd() as u32,
        newfd: 0,
        newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
    };
    // SAFETY: the kernel reads a complete `seccomp_notif_addfd` from a valid pointer.
    check_int(unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ADDFD as _,
            &addfd,
        )
    })
}

/// Ask for same-CPU wake-ups (6.6+). Returns false when the kernel lacks the flag.
pub fn notif_set_sync_wakeup(listener: BorrowedFd<'_>) -> bool {
    // SAFETY: the ioctl takes the flags by value.
    unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS as _,
            USER_NOTIF_FD_SYNC_WAKE_UP,
        ) == 0
    }
}

// ---------------------------------------------------------------------------------------
// processes

/// `CLONE_INTO_CGROUP` (Linux 5.7+; not in every libc crate version).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `clone3` with `CLONE_PIDFD` and the given namespace flags, fork-like (no new stack).
/// Returns `Ok(None)` in the child and `Ok(Some((pid, pidfd)))` in the parent.
/// `into_cgroup`: a cgroup v2 directory the child is born in (`CLONE_INTO_CGROUP`), which
/// costs nothing, where writing its pid into `cgroup.procs` afterwards waits for an RCU grace
/// period (10-20 ms measured on 6.18).
///
/// # Safety
/// As for `fork`: in the child, only async-signal-safe work is allowed if the parent had
/// other threads. The supervisor calls this before it starts any thread.
pub unsafe fn clone3_fork(
    ns_flags: u64,
    into_cgroup: Option<BorrowedFd<'_>>,
) -> io::Result<Option<(libc::pid_t, OwnedFd)>> {
    let mut pidfd: RawFd = -1;
    // SAFETY: clone_args is plain data; zero is valid for every field.
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = ns_flags | libc::CLONE_PIDFD as u64;
    if let Some(cgroup) = into_cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = cgroup.as_raw_fd() as u64;
    }
    args.pidfd = &mut pidfd as *mut RawFd as u64;
    args.exit_signal = libc::SIGCHLD as u64;
    // SAFETY: `args` is a valid clone_args of the size we pass; no stack is given, so the child
    // continues on a copy of this stack like `fork`. The caller upholds the fork contract.
    let ret = check(unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut libc::clone_args,
            size_of::<libc::clone_args>(),
        )
    })?;
    if ret == 0 {
        Ok(None)
    } else {
        Ok(Some((ret as libc::pid_t, owned(pidfd as libc::c_long))))
    }
}

/// `sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)`: start writing the file's dirty pages
/// to disk now, without waiting for it.
pub fn start_writeback(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd with integer arguments.
    check_int(unsafe { libc::sync_file_range(fd.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) })
        .map(|_| ())
}

/// `CLOCK_MONOTONIC` in nanoseconds (comparable across processes, unlike `Instant`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) }).map(owned)
}

/// `pidfd_getfd(pidfd, targetfd, 0)`: duplicate another process's file descriptor.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, targetfd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    check(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), targetfd, 0) })
        .map(owned)
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall; a NULL siginfo is allowed.
    check(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            0usize,
            0,
        )
    })
    .map(drop)
}

/// `waitid(P_PIDFD, pidfd, WEXITED)`: returns the raw wait status as (code, status) decoded to
/// an exit code: `Exited(n)` or `Signaled(sig)`.
pub fn waitid_pidfd(pidfd: BorrowedFd<'_>) -> io::Result<ExitStatus> {
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    retry(|| {
        // SAFETY: `info` is a valid siginfo_t buffer for the kernel to fill.
        check_int(unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                info.as_mut_ptr(),
                libc::WEXITED,
            )
        })
    })?;
    // SAFETY: waitid succeeded and filled `info`.
    let info = unsafe { info.assume_init() };
    // SAFETY: for CLD_* codes the union member holding si_status is valid.
    let status = unsafe { info.si_status() };
    Ok(match info.si_code {
        libc::CLD_EXITED => ExitStatus::Exited(status),
        _ => ExitStatus::Signaled(status),
    })
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// Shell convention: the exit code, or 128+N when killed by signal N.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }
}

/// `waitpid(pid, flags)` returning the raw status.
pub fn waitpid(pid: libc::pid_t, flags: i32) -> io::Result<(libc::pid_t, i32)> {
    let mut status = 0;
    // SAFETY: `status` is a valid out pointer.
    let r = check_int(unsafe { libc::waitpid(pid, &mut status, flags) })?;
    Ok((r, status))
}

/// `prctl(PR_SET_PDEATHSIG, sig)`.
pub fn set_parent_death_signal(sig: i32) -> io::Result<()> {
    // SAFETY: plain prctl with integer arguments.
    check_int(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) })
        .map(drop)
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: plain prctl with integer arguments.
    check_int(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }).map(drop)
}

/// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`: mark every fd from `first` on close-on-exec.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    check(unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    })
    .map(drop)
}

/// Clear `FD_CLOEXEC` on one fd (for fds the user asked to pass to the agent).
pub fn clear_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an integer fd; an invalid fd just fails with EBADF.
    check_int(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }).map(drop)
}

/// A small procfs or cgroupfs text file (`/proc/<pid>/status`, an fdinfo, `/proc/mounts`, a
/// cgroup's `pids.events`), read in one call (see [`read_proc_bytes`]).
pub fn read_proc(path: impl AsRef<Path>) -> io::Result<String> {
    let path = path.as_ref();
    String::from_utf8(read_proc_bytes(path, 4096)?).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not UTF-8", path.display()),
        )
    })
}

/// A procfs (or cgroupfs) file, read with `initial` bytes of room and twice as much each time
/// it fills up. Both say their files are empty, so `fs::read` would stat the file, then start
/// with a 32-byte read and double from there (8 reads for a 1.5 KiB status or a 2 KiB
/// environment, each of which `environ` and `cmdline` pay with a walk of the process's
/// memory).
pub fn read_proc_bytes(path: impl AsRef<Path>, initial: usize) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; initial.max(64)];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// `argv` as the NULL-terminated pointer array `execvp` takes (valid while `argv` lives).
pub fn argv_ptrs(argv: &[CString]) -> Vec<*const libc::c_char> {
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    ptrs
}

/// `execvp(argv[0], argv)` with an array from [`argv_ptrs`] (no allocation); returns only on
/// failure.
pub fn execvp(ptrs: &[*const libc::c_char]) -> io::Error {
    match ptrs.first() {
        Some(first) if !first.is_null() && ptrs.last().is_some_and(|p| p.is_null()) => {
            // SAFETY: `ptrs` is a NULL-terminated array of C strings, valid per `argv_ptrs`'s
            // contract.
            unsafe { libc::execvp(*first, ptrs.as_ptr()) };
            io::Error::last_os_error()
        }
        _ => io::Error::from_raw_os_error(libc::EINVAL),
    }
}

/// Start `child` in a new process that shares this one's memory until it execs or exits,
/// running on `stack`, while the calling thread waits (`clone(CLONE_VM | CLONE_VFORK)`, as
/// `posix_spawn` does): nothing of this process's address space is copied, unlike `fork`.
/// Returns the child's pid. The child's return value is its exit status.
///
/// # Safety
/// The calling process must be single-threaded. `child` must only make system calls and then
/// exec or `_exit`: it writes to this process's memory, so it must not unwind, and whatever
/// it allocates stays allocated here.
pub unsafe fn spawn_sharing_memory(
    child: &mut dyn FnMut() -> i32,
    stack: &mut [u8],
) -> io::Result<libc::pid_t> {
    extern "C" fn start(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `&mut dyn FnMut` below, alive while the parent waits.
        let child = unsafe { &mut *(arg as *mut &mut dyn FnMut() -> i32) };
        child()
    }
    let mut child = child;
    // The stack grows down from its end, 16-byte aligned.
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: `start` gets a pointer to `child`, which outlives the call (the parent is
    // suspended until the child execs or exits); `top` is the aligned end of `stack`, which
    // only the child uses meanwhile; the rest is the caller's contract.
    check_int(unsafe {
        libc::clone(
            start,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &mut child as *mut &mut dyn FnMut() -> i32 as *mut libc::c_void,
        )
    })
}

/// `_exit(code)`: leave without running destructors or atexit handlers (forked children).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is always safe to call; it does not return.
    unsafe { libc::_exit(code) }
}

/// Take ownership of a file descriptor inherited from our parent (`run --daemon-link FD`):
/// checked to be open, marked close-on-exec.
pub fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 3 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; EBADF if it is not open.
    check_int(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: as above, setting FD_CLOEXEC on a descriptor just checked to be open.
    check_int(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) })?;
    // SAFETY: the descriptor is open and, by the `--daemon-link` contract, ours alone: nothing
    // else in this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Make `cmd`'s child die with the thread that spawns it (`PR_SET_PDEATHSIG` SIGKILL, set
/// after the uid/gid change, which clears it) and exit at once should we already be gone;
/// `link` is inherited under its own number. Spawn only from a thread that lives as long as
/// the process (the death signal follows the spawning thread).
pub fn spawn_tied_to_us(
    cmd: &mut std::process::Command,
    link: BorrowedFd<'_>,
) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let link = link.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (prctl, getppid, fcntl, _exit), allocating nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(125);
            }
            if libc::fcntl(link, libc::F_SETFD, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    };
    cmd.spawn()
}

/// Send `data` with `fds` attached (`SCM_RIGHTS`) on a unix stream socket.
pub fn send_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let iov = [io::IoSlice::new(data)];
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let n = sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(io::Error::from)?;
    if n != data.len() {
        return Err(io::Error::other("short sendmsg"));
    }
    Ok(())
}

/// Receive up to `buf.len()` bytes and at most `max_fds` descriptors (`SCM_RIGHTS`, received
/// close-on-exec). Descriptors beyond `max_fds` or a truncated control message are an error
/// (whatever did arrive is closed).
pub fn recv_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut space = nix::cmsg_space!([RawFd; 8]);
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let n = msg.bytes;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: the kernel just installed this descriptor in our table for us
                // (SCM_RIGHTS); nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if truncated || fds.len() > max_fds {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("at most {max_fds} file descriptors may be passed"),
        ));
    }
    Ok((n, fds))
}

/// The peer of a unix socket: (uid, gid, pid), from `SO_PEERCRED`.
pub fn peer_cred(sock: BorrowedFd<'_>) -> io::Result<(u32, u32, i32)> {
    let c = nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(io::Error::from)?;
    Ok((c.uid(), c.gid(), c.pid()))
}

/// `kill(pid, sig)`.
pub fn kill(pid: libc::pid_t, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    check_int(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// One malloc arena for the whole process (glibc): a session's threads are few and mostly
/// idle, and each arena of its own would cost a 64 MiB reservation and the page faults of its
/// first allocations, on the session's start-up. (Small allocations stay per thread, in
/// glibc's thread caches.) Called before any thread exists.
pub fn single_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator tunable.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Block `sigs` in the calling thread (adding to the current mask).
pub fn block_signals(sigs: &[i32]) -> io::Result<()> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(())
    }
}

/// Reset every signal disposition to its default and unblock every signal: the agent must
/// inherit neither the supervisor's handlers nor the signals it blocks for forwarding.
pub fn reset_signals() {
    // SAFETY: resetting dispositions and the mask is async-signal-safe and always valid.
    unsafe {
        for sig in 1..=libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// Make the calling thread `SCHED_BATCH`: it gets its fair share of CPU but, when woken, does
/// not preempt the thread that is running (for background writers, whose wake-ups otherwise
/// take the CPU from the thread the agent is waiting for). Best effort: on failure the thread
/// stays `SCHED_OTHER`.
pub fn batch_scheduling_this_thread() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is valid for the call.
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
}

/// Set both the soft and the hard limit of `resource` (`RLIMIT_*`) to `value` bytes/units.
/// Without `CAP_SYS_RESOURCE` the process can lower it further but never raise it again.
pub fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: value as libc::rlim_t,
        rlim_max: value as libc::rlim_t,
    };
    // SAFETY: `lim` is a valid rlimit for the duration of the call.
    check_int(unsafe { libc::setrlimit(resource, &lim) }).map(drop)
}

/// Ignore `sig` (an ignored disposition survives exec).
pub fn ignore_signal(sig: i32) -> io::Result<()> {
    // SAFETY: SIG_IGN is a valid disposition for any catchable signal.
    if unsafe { libc::signal(sig, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Wait for one of the blocked signals in `sigs`; returns (signal, si_code). `si_code` is
/// `SI_USER` for kill(2), `SI_KERNEL` for terminal-generated signals.
pub fn sigwait_info(sigs: &[i32]) -> io::Result<(i32, i32)> {
    // SAFETY: sigset_t and siginfo_t are plain data, initialised before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let sig = retry(|| check_int(libc::sigwaitinfo(&set, &mut info)))?;
        Ok((sig, info.si_code))
    }
}

// ---------------------------------------------------------------------------------------
// ptrace (exec guard)

pub const PTRACE_EVENT_EXEC: i32 = libc::PTRACE_EVENT_EXEC;
pub const PTRACE_EVENT_STOP: i32 = libc::PTRACE_EVENT_STOP;

/// `PTRACE_SEIZE` one thread with `PTRACE_O_TRACEEXEC | PTRACE_O_EXITKILL`.
pub fn ptrace_seize(tid: libc::pid_t) -> io::Result<()> {
    let opts = (libc::PTRACE_O_TRACEEXEC | libc::PTRACE_O_EXITKILL) as usize;
    // SAFETY: PTRACE_SEIZE takes integer arguments only.
    check(unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0usize, opts) }).map(drop)
}

/// `PTRACE_INTERRUPT`.
pub fn ptrace_interrupt(tid: libc::pid_t) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0usize, 0usize) }).map(drop)
}

/// `PTRACE_DETACH`, delivering `sig` (0 for none).
pub fn ptrace_detach(tid: libc::pid_t, sig: i32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0usize, sig as usize) }).map(drop)
}

// ---------------------------------------------------------------------------------------
// files and mounts

/// `openat2(dirfd, path, how)`.
pub fn openat2(
    dirfd: BorrowedFd<'_>,
    path: &CStr,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let mut how: libc::open_how = {
        // SAFETY: open_how is plain data; zero is a valid value for every field.
        unsafe { std::mem::zeroed() }
    };
    how.flags = flags as u64 & 0xffff_ffff;
    how.mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        mode as u64
    } else {
        0
    };
    how.resolve = resolve;
    retry(|| {
        // SAFETY: `path` is a valid C string and `how` a valid open_how of the size we pass.
        check(unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd.as_raw_fd(),
                path.as_ptr(),
                &how as *const libc::open_how,
                size_of::<libc::open_how>(),
            )
        })
    })
    .map(owned)
}

pub const RESOLVE_IN_ROOT: u64 = libc::RESOLVE_IN_ROOT;
pub const RESOLVE_NO_MAGICLINKS: u64 = libc::RESOLVE_NO_MAGICLINKS;
pub const RESOLVE_NO_SYMLINKS: u64 = libc::RESOLVE_NO_SYMLINKS;
pub const RESOLVE_BENEATH: u64 = libc::RESOLVE_BENEATH;

/// `fstat(fd)` → (st_dev, st_ino, st_mode).
pub fn fstat_id(fd: BorrowedFd<'_>) -> io::Result<(u64, u64, u32)> {
    let mut st = MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `st` is a valid out buffer.
    check_int(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded.
    let st = unsafe { st.assume_init() };
    Ok((st.st_dev, st.st_ino, st.st_mode))
}

const OPEN_TREE_CLONE: u32 = 1;
const OPEN_TREE_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
const AT_RECURSIVE: u32 = 0x8000;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `open_tree(dirfd, path, OPEN_TREE_CLONE)`: a detached bind-mount copy of `path`.
pub fn open_tree_clone(dirfd: RawFd, path: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `path` is a valid C string.
    check(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dirfd,
            path.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC,
        )
    })
    .map(owned)
}

/// `open_tree(dirfd, path, OPEN_TREE_CLONE|AT_RECURSIVE)`: a detached copy of the mount tree
/// at `path` (its submounts included), each mount with its flags as they are now.
pub fn open_tree_clone_recursive(dirfd: RawFd, path: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `path` is a valid C string.
    check(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dirfd,
            path.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE,
        )
    })
    .map(owned)
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH|AT_RECURSIVE, attr_set)`.
pub fn mount_setattr(fd: BorrowedFd<'_>, attr_set: u64) -> io::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `attr` is a valid mount_attr of the size we pass; the path is an empty C string.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as u32 | AT_RECURSIVE,
            &attr as *const MountAttr,
            size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// `move_mount(fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`: attach a detached mount.
pub fn move_mount_to(fd: BorrowedFd<'_>, target: &CStr) -> io::Result<()> {
    // SAFETY: valid C strings for the duration of the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// `move_mount(fd, "", dirfd, path, MOVE_MOUNT_F_EMPTY_PATH)`: attach a detached mount at `path`
/// relative to `dirfd`.
pub fn move_mount_at(fd: BorrowedFd<'_>, dirfd: BorrowedFd<'_>, path: &CStr) -> io::Result<()> {
    // SAFETY: valid C strings for the duration of the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            c"".as_ptr(),
            dirfd.as_raw_fd(),
            path.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// Whether the kernel has `mount_setattr` (Linux 5.12): a call with no attributes fails with
/// ENOSYS where it does not exist, and with another error (EINVAL) where it does.
pub fn has_mount_setattr() -> bool {
    // SAFETY: a NULL attribute pointer of size 0 is refused before anything is read.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as u32,
            std::ptr::null::<MountAttr>(),
            0usize,
        )
    };
    !(ret < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS))
}

/// `symlinkat(target, dirfd, name)`.
pub fn symlinkat(target: &CStr, dirfd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: valid C strings.
    check_int(unsafe { libc::symlinkat(target.as_ptr(), dirfd.as_raw_fd(), name.as_ptr()) })
        .map(drop)
}

/// Make the mount whose root is `dir` the root of the calling process, the old root mounted at
/// `put_old` (relative to `dir`) and left there, then move to the new `/`: `fchdir(dir)`,
/// `pivot_root(".", put_old)`, `chdir("/")`. The caller must cover `put_old` with a mount of
/// its own before anything untrusted runs: `..` from a mount's root climbs past the mounts
/// stacked on a mount point, so the covered tree is then out of every path's reach.
pub fn pivot_root_to(dir: BorrowedFd<'_>, put_old: &CStr) -> io::Result<()> {
    // SAFETY: plain syscalls on a valid fd and valid C strings.
    unsafe {
        check_int(libc::fchdir(dir.as_raw_fd()))?;
        check(libc::syscall(
            libc::SYS_pivot_root,
            c".".as_ptr(),
            put_old.as_ptr(),
        ))?;
        check_int(libc::chdir(c"/".as_ptr()))?;
    }
    Ok(())
}

/// `mount(src, target, fstype, flags, NULL)`.
pub fn mount(
    src: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
) -> io::Result<()> {
    mount_with_data(src, target, fstype, flags, None)
}

/// `mount(src, target, fstype, flags, data)`.
pub fn mount_with_data(
    src: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let p = |s: Option<&CStr>| s.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is NULL or a valid C string for the duration of the call.
    check_int(unsafe { libc::mount(p(src), target.as_ptr(), p(fstype), flags, p(data).cast()) })
        .map(drop)
}

/// `mkdirat` / create an empty file inside a directory fd (used on the detached tmpfs).
pub fn mkdirat(dirfd: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid C string.
    check_int(unsafe { libc::mkdirat(dirfd.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

/// Create an empty file `name` in `dirfd` with `mode`.
/// Create (or truncate) `name` in `dirfd` with `mode` and write `content` into it.
pub fn write_file_at(
    dirfd: BorrowedFd<'_>,
    name: &CStr,
    mode: u32,
    content: &[u8],
) -> io::Result<()> {
    // SAFETY: valid C string; the returned fd is owned right away.
    let fd = check_int(unsafe {
        libc::openat(
            dirfd.as_raw_fd(),
            name.as_ptr(),
            libc::O_CREAT | libc::O_TRUNC | libc::O_WRONLY | libc::O_CLOEXEC,
            mode,
        )
    })?;
    let fd = owned(fd as libc::c_long);
    write_all_fd(std::os::fd::AsFd::as_fd(&fd), content)
}

pub fn create_file_at(dirfd: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid C string; the returned fd is closed right away.
    let fd = check_int(unsafe {
        libc::openat(
            dirfd.as_raw_fd(),
            name.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
            mode,
        )
    })?;
    drop(owned(fd as libc::c_long));
    Ok(())
}

/// `fchmodat(dirfd, name, mode)`.
pub fn fchmodat(dirfd: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid C string.
    check_int(unsafe { libc::fchmodat(dirfd.as_raw_fd(), name.as_ptr(), mode, 0) }).map(drop)
}

// ---------------------------------------------------------------------------------------
// capabilities and credentials

/// The calling thread's effective uid/gid.
pub fn euid_egid() -> (u32, u32) {
    // SAFETY: geteuid/getegid cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// `setfsuid`-style per-thread drop of file-access capabilities: `capset` on this thread only
/// with an empty effective set, keeping permitted. Used by the thread that opens files for the
/// agent, so the supervisor's CAP_DAC_OVERRIDE never helps the agent.
pub fn drop_effective_caps_this_thread() -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut hdr = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and two data structs are the v3 capget/capset layout.
    unsafe {
        check(libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut Header,
            data.as_mut_ptr(),
        ))?;
        for d in &mut data {
            d.effective = 0;
        }
        check(libc::syscall(
            libc::SYS_capset,
            &mut hdr as *mut Header,
            data.as_ptr(),
        ))?;
    }
    Ok(())
}

/// Read `buf.len()` bytes at `addr` of process `pid` (`process_vm_readv`).
pub fn read_process_memory(pid: libc::pid_t, addr: u64, buf: &mut [u8]) -> io::Result<usize> {
    process_vm(pid, addr, buf.as_mut_ptr(), buf.len(), false)
}

/// Write `buf` at `addr` of process `pid` (`process_vm_writev`; used to fill in the `msg_len`
/// results of an emulated `sendmmsg`).
pub fn write_process_memory(pid: libc::pid_t, addr: u64, buf: &[u8]) -> io::Result<usize> {
    process_vm(pid, addr, buf.as_ptr() as *mut u8, buf.len(), true)
}

fn process_vm(
    pid: libc::pid_t,
    addr: u64,
    local: *mut u8,
    len: usize,
    write: bool,
) -> io::Result<usize> {
    let local = libc::iovec {
        iov_base: local.cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: `local` describes a buffer of ours valid for `len` bytes (only read from when
    // writing to the other process); the kernel checks the remote range.
    let n = unsafe {
        if write {
            libc::process_vm_writev(pid, &local, 1, &remote, 1, 0)
        } else {
            libc::process_vm_readv(pid, &local, 1, &remote, 1, 0)
        }
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `fcntl(fd, F_GETFL)`.
pub fn fd_status_flags(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: fcntl on a valid fd.
    check_int(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })
}

/// `connect(fd, addr)` with raw sockaddr bytes.
pub fn connect_raw(fd: BorrowedFd<'_>, addr: &[u8]) -> io::Result<()> {
    // SAFETY: `addr` is a buffer of `addr.len()` bytes holding a sockaddr; the kernel validates it.
    check_int(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            addr.as_ptr().cast(),
            addr.len() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// `bind(fd, addr)` with raw sockaddr bytes.
pub fn bind_raw(fd: BorrowedFd<'_>, addr: &[u8]) -> io::Result<()> {
    // SAFETY: as in `connect_raw`.
    check_int(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            addr.as_ptr().cast(),
            addr.len() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// `sendmsg(fd, msg)` built from owned parts: data, optional raw address, optional control.
pub fn sendmsg_raw(
    fd: BorrowedFd<'_>,
    data: &[&[u8]],
    addr: Option<&[u8]>,
    control: &[u8],
    flags: i32,
) -> io::Result<usize> {
    let iov: Vec<libc::iovec> = data
        .iter()
        .map(|d| libc::iovec {
            iov_base: d.as_ptr() as *mut _,
            iov_len: d.len(),
        })
        .collect();
    // SAFETY: msghdr is plain data; zero is valid for every field.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    if let Some(a) = addr {
        msg.msg_name = a.as_ptr() as *mut _;
        msg.msg_namelen = a.len() as u32;
    }
    msg.msg_iov = iov.as_ptr() as *mut _;
    msg.msg_iovlen = iov.len();
    if !control.is_empty() {
        msg.msg_control = control.as_ptr() as *mut _;
        msg.msg_controllen = control.len();
    }
    // SAFETY: every pointer in `msg` refers to buffers that outlive the call.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `getsockopt(fd, SOL_SOCKET, SO_DOMAIN)`.
pub fn socket_domain(fd: BorrowedFd<'_>) -> io::Result<i32> {
    socket_option(fd, libc::SO_DOMAIN)
}

/// `getsockopt(fd, SOL_SOCKET, SO_PROTOCOL)`.
pub fn socket_protocol(fd: BorrowedFd<'_>) -> io::Result<i32> {
    socket_option(fd, libc::SO_PROTOCOL)
}

fn socket_option(fd: BorrowedFd<'_>, option: i32) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: out pointers are valid for the given length.
    check_int(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(v)
}

/// Dump every unix socket of our network namespace with `sock_diag` (NETLINK_SOCK_DIAG,
/// `UDIAG_SHOW_NAME | UDIAG_SHOW_VFS`): the raw netlink messages, parsed by the caller. Tells
/// the exact bound name of each socket and the (device, inode) of the file it is bound to.
pub fn unix_sock_diag_dump() -> io::Result<Vec<u8>> {
    const NETLINK_SOCK_DIAG: i32 = 4;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const UDIAG_SHOW_NAME: u32 = 1;
    const UDIAG_SHOW_VFS: u32 = 2;
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let fd = check_int(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    })?;
    let fd = owned(fd as libc::c_long);
    // nlmsghdr (16) + unix_diag_req (24).
    let mut req = [0u8; 40];
    req[0..4].copy_from_slice(&40u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req[16] = libc::AF_UNIX as u8;
    req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req[28..32].copy_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_VFS).to_ne_bytes());
    // SAFETY: `req` is a valid buffer of its length; the kernel address is implied for netlink.
    let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    check(sent as libc::c_long)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = retry(|| {
            // SAFETY: `buf` is valid for writing `buf.len()` bytes.
            let got = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            check(got as libc::c_long)
        })?;
        let chunk = &buf[..n as usize];
        out.extend_from_slice(chunk);
        // Done when this datagram holds NLMSG_DONE or NLMSG_ERROR.
        let mut off = 0;
        let mut done = n == 0;
        while off + 16 <= chunk.len() {
            let len = u32::from_ne_bytes(chunk[off..off + 4].try_into().expect("4 bytes")) as usize;
            let typ = u16::from_ne_bytes(chunk[off + 4..off + 6].try_into().expect("2 bytes"));
            if typ == libc::NLMSG_DONE as u16 || typ == libc::NLMSG_ERROR as u16 {
                done = true;
            }
            if len < 16 {
                break;
            }
            off += (len + 3) & !3;
        }
        if done {
            return Ok(out);
        }
    }
}

/// The user-space `st_dev` value of a kernel-internal `dev_t` (as `sock_diag` reports it).
pub fn userspace_dev(kernel_dev: u32) -> u64 {
    libc::makedev(kernel_dev >> 20, kernel_dev & 0xf_ffff)
}

/// `tgkill(tgid, tid, sig)`.
pub fn tgkill(tgid: libc::pid_t, tid: libc::pid_t, sig: i32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, sig) }).map(drop)
}

/// `isatty(fd)`.
pub fn isatty(fd: RawFd) -> bool {
    // SAFETY: isatty on an integer fd.
    unsafe { libc::isatty(fd) == 1 }
}

/// `poll` on one fd for `events`, with a timeout in milliseconds (-1 = forever).
pub fn poll_one(fd: BorrowedFd<'_>, events: i16, timeout_ms: i32) -> io::Result<i16> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = check_int(unsafe { libc::poll(&mut p, 1, timeout_ms) })?;
    Ok(if n == 0 { 0 } else { p.revents })
}

/// `poll` on each fd for its events, with a timeout in milliseconds (-1 = forever): the
/// events that came, one entry per fd (all 0 on time-out).
pub fn poll_fds(fds: &[(BorrowedFd<'_>, i16)], timeout_ms: i32) -> io::Result<Vec<i16>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|(fd, events)| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: *events,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` holds `p.len()` valid pollfds.
    check_int(unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) })?;
    Ok(p.iter().map(|p| p.revents).collect())
}

/// A `poll` time-out in milliseconds that does not end before `d` (rounded up; at most
/// `i32::MAX`).
pub fn poll_timeout(d: std::time::Duration) -> i32 {
    d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
}

/// A pidfd that becomes readable when thread `tid` ends: `PIDFD_THREAD` (Linux 6.9+), else
/// a pidfd of its process `tgid` (readable when the whole process has ended).
pub fn pidfd_open_thread(tid: libc::pid_t, tgid: libc::pid_t) -> io::Result<OwnedFd> {
    const PIDFD_THREAD: libc::c_long = libc::O_EXCL as libc::c_long;
    // SAFETY: plain syscall with integer arguments.
    check(unsafe { libc::syscall(libc::SYS_pidfd_open, tid, PIDFD_THREAD) })
        .map(owned)
        .or_else(|_| pidfd_open(tgid))
}

/// `pipe2(O_CLOEXEC)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two fds.
    check_int(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((owned(fds[0] as libc::c_long), owned(fds[1] as libc::c_long)))
}

/// Write all of `buf` to a raw fd (no allocation; usable after fork).
pub fn write_all_fd(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Read exactly `buf.len()` bytes; `Ok(false)` on EOF before any byte.
pub fn read_exact_fd(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<bool> {
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: the slice from `off` is valid for writing.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[off..].as_mut_ptr().cast(),
                buf.len() - off,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return if off == 0 {
                Ok(false)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        off += n as usize;
    }
    Ok(true)
}

/// Landlock ABI version of the running kernel (0 when Landlock is unavailable).
pub fn landlock_abi() -> i32 {
    // SAFETY: LANDLOCK_CREATE_RULESET_VERSION with NULL/0 only queries the ABI.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    if r < 0 {
        0
    } else {
        r as i32
    }
}

// ---------------------------------------------------------------------------------------
// doctor probes (`agent-supervisor doctor`)

/// Is the calling process single-threaded right now? (Counts `/proc/self/task`.) Only the one
/// thread could start another, so the answer stays true until this thread spawns one.
pub fn is_single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1)
}

/// [`clone3_fork`] for a process that is single-threaded, checked at run time: the doctor's
/// probes fork children that install filters and enter namespaces. Refuses when another
/// thread exists (or `/proc/self/task` cannot tell), as a forked child could then deadlock on
/// a lock held by that thread.
pub fn fork_single_threaded(ns_flags: u64) -> io::Result<Option<(libc::pid_t, OwnedFd)>> {
    if !is_single_threaded() {
        return Err(io::Error::other(
            "not forking: the process is not single-threaded (per /proc/self/task)",
        ));
    }
    // SAFETY: the process has exactly one thread (checked above, and only this thread could
    // have started another since), so the child is an ordinary fork of a single-threaded
    // process and may allocate and use the standard library.
    unsafe { clone3_fork(ns_flags, None) }
}

/// `getppid()` as a raw system call, never a cached value (the doctor's seccomp probe traps it).
pub fn getppid_raw() -> io::Result<libc::c_long> {
    // SAFETY: getppid takes no arguments; a seccomp answer may turn it into an error or fd.
    check(unsafe { libc::syscall(libc::SYS_getppid) })
}

/// One eBPF instruction (`struct bpf_insn`): `regs` holds dst_reg in the low and src_reg in
/// the high nibble.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BpfInsn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}
const _: () = assert!(size_of::<BpfInsn>() == 8);

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, up to `attach_btf_obj_fd` (Linux 5.10); the
/// kernel zero-fills what a shorter attribute leaves out.
#[repr(C)]
struct BpfProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_btf_obj_fd: u32,
    core_relo_cnt: u32,
}
const _: () = assert!(size_of::<BpfProgLoadAttr>() == 120);

const BPF_PROG_LOAD: libc::c_long = 5;

/// What to load with [`bpf_prog_load`].
#[derive(Debug, Clone, Copy)]
pub struct BpfProgLoad<'a> {
    /// `enum bpf_prog_type`.
    pub prog_type: u32,
    /// `enum bpf_attach_type` (0 where the type needs none).
    pub expected_attach_type: u32,
    /// BTF type id in vmlinux of the hook (LSM, tp_btf, fentry), else 0.
    pub attach_btf_id: u32,
    pub insns: &'a [BpfInsn],
    pub license: &'a CStr,
}

/// `bpf(BPF_PROG_LOAD)`: the new program's fd, or the kernel's errno. The verifier's log (level
/// 1) is written into `log` (NUL-terminated; empty when the load failed before the verifier).
pub fn bpf_prog_load(prog: &BpfProgLoad<'_>, log: &mut [u8]) -> io::Result<OwnedFd> {
    if let Some(first) = log.first_mut() {
        *first = 0;
    }
    let attr = BpfProgLoadAttr {
        prog_type: prog.prog_type,
        insn_cnt: u32::try_from(prog.insns.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        insns: prog.insns.as_ptr() as u64,
        license: prog.license.as_ptr() as u64,
        log_level: u32::from(!log.is_empty()),
        log_size: u32::try_from(log.len()).unwrap_or(u32::MAX),
        log_buf: if log.is_empty() {
            0
        } else {
            log.as_mut_ptr() as u64
        },
        kern_version: 0,
        prog_flags: 0,
        prog_name: [0; 16],
        prog_ifindex: 0,
        expected_attach_type: prog.expected_attach_type,
        prog_btf_fd: 0,
        func_info_rec_size: 0,
        func_info: 0,
        func_info_cnt: 0,
        line_info_rec_size: 0,
        line_info: 0,
        line_info_cnt: 0,
        attach_btf_id: prog.attach_btf_id,
        attach_btf_obj_fd: 0,
        core_relo_cnt: 0,
    };
    retry(|| {
        // SAFETY: `attr` is a valid BPF_PROG_LOAD attribute of the size we pass; the
        // instructions, license and log buffer it points to outlive the call, and the kernel
        // writes at most `log_size` bytes into the log.
        unsafe { bpf_fd(BPF_PROG_LOAD, &attr) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read calls this thread has made (its own counter: other test threads do not count).
    fn reads_so_far() -> u64 {
        let io = read_proc("/proc/thread-self/io").expect("thread io");
        io.lines()
            .find_map(|l| l.strip_prefix("syscr: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("syscr")
    }

    /// A procfs file comes back whole, in one read plus the one that sees its end, where
    /// `fs::read` starts at 32 bytes and doubles.
    #[test]
    fn a_procfs_file_is_read_whole_in_one_call() {
        let path = "/proc/self/environ";
        let whole = std::fs::read(path).expect("environ");
        // Growing from a small buffer still gets all of it.
        assert_eq!(read_proc_bytes(path, 64).expect("read"), whole);

        let before = reads_so_far();
        let got = read_proc_bytes(path, whole.len() + 4096).expect("read");
        let ours = reads_so_far() - before;
        assert_eq!(got, whole);
        let before = reads_so_far();
        let _ = std::fs::read(path).expect("environ");
        let std = reads_so_far() - before;
        // Each count includes the two reads of the first `reads_so_far`.
        assert_eq!(ours, 2 + 2, "reads for {} bytes", whole.len());
        if whole.len() > 64 {
            assert!(
                std > ours,
                "fs::read made {std} reads, read_proc_bytes {ours}"
            );
        }
    }
}
