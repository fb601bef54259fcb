//! `open` / `openat` / `openat2` / `creat`, trapped only when the policy has file rules that
//! no cheaper mechanism enforces exactly (file `ask` rules, catch-alls).
//!
//! The supervisor resolves the path in the agent's root, decides on the real object, and then
//! opens *that object* itself (reopening the checked `O_PATH` fd, or creating the final
//! component under the checked parent with `O_NOFOLLOW`), and injects the fd into the agent
//! (`SECCOMP_IOCTL_NOTIF_ADDFD` with `SEND`). The notification thread runs without effective
//! capabilities, so the supervisor never opens what the agent's own credentials could not.
#![forbid(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Instant;

use agent_supervisor_policy::{Access, Request};

use super::tracee::{Tracee, PATH_MAX};
use super::{escape_for_human, Ctx, Effect, Kind, Pending, Prepared};
use crate::sys::{self, Notif};

pub fn prepare(ctx: &Arc<Ctx>, n: Notif) -> Result<Prepared, i32> {
    let started = Instant::now();
    let t = Tracee::load(n.pid).map_err(|_| libc::ESRCH)?;
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EACCES);
    let (dirfd, path_ptr, flags, mode) = match n.nr as i64 {
        libc::SYS_open => (
            libc::AT_FDCWD,
            n.args[0],
            n.args[1] as i32,
            n.args[2] as u32,
        ),
        libc::SYS_creat => (
            libc::AT_FDCWD,
            n.args[0],
            libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC,
            n.args[1] as u32,
        ),
        libc::SYS_openat => (
            n.args[0] as i32,
            n.args[1],
            n.args[2] as i32,
            n.args[3] as u32,
        ),
        // openat2's resolve flags can't be honoured together with resolution in the agent's
        // root: ENOSYS makes callers fall back to openat.
        _ => return Err(libc::ENOSYS),
    };
    // O_PATH grants no access to the contents, and every use of such an fd that would (exec,
    // reopen through /proc/self/fd, openat relative to it) is trapped and checked itself. So it
    // is the one open let through as issued (SECCOMP_IOCTL_NOTIF_ADDFD can't install O_PATH
    // files, and emulating it would gain nothing). Its flags are in a register, not in memory,
    // so O_PATH can't be raced away.
    if flags & libc::O_PATH != 0 {
        return Ok(Prepared::Immediate(Effect::Continue));
    }
    let path = t.read_cstr(path_ptr, PATH_MAX).map_err(errno)?;
    let acc = flags & libc::O_ACCMODE;
    // O_TMPFILE is __O_TMPFILE|O_DIRECTORY: only all of its bits make a temporary file (a
    // plain O_DIRECTORY open, as opendir() does, creates nothing).
    let creates = flags & libc::O_CREAT != 0 || flags & libc::O_TMPFILE == libc::O_TMPFILE;
    let access = Access {
        read: acc == libc::O_RDONLY || acc == libc::O_RDWR,
        write: acc == libc::O_WRONLY
            || acc == libc::O_RDWR
            || creates
            || flags & libc::O_TRUNC != 0,
        exec: false,
    };
    let follow = flags & libc::O_NOFOLLOW == 0;
    let pid = t.tgid;
    let umask = t.umask;

    // The object: existing (resolved), or to be created under a resolved parent.
    let target = match t.resolve(dirfd, &path, follow, false) {
        Ok(r) => Target::Existing(r),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && flags & libc::O_CREAT != 0 => {
            let (dir, name) = t.resolve_parent(dirfd, &path).map_err(errno)?;
            Target::Create {
                dir,
                name: name.as_bytes().to_vec(),
            }
        }
        Err(e) => return Err(errno(e)),
    };
    if let Target::Existing(_) = target {
        if flags & libc::O_CREAT != 0 && flags & libc::O_EXCL != 0 {
            return Err(libc::EEXIST);
        }
    }
    let decided_path = match &target {
        Target::Existing(r) => r.path.clone(),
        Target::Create { dir, name } => dir.path.join(std::ffi::OsStr::from_bytes(name)),
    };
    // Opening a FIFO, socket or device can block (a FIFO waits for its other end, which may
    // be an open waiting for our own decision): such opens run off the notification thread.
    let blocking = match &target {
        Target::Existing(r) => crate::sys::fstat_id(r.fd.as_fd()).map_or(true, |(_, _, mode)| {
            !matches!(mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR)
        }),
        Target::Create { .. } => false,
    };
    // A pipe, socket or anonymous object the agent already holds, reopened through
    // /proc/self/fd or /dev/stdout: not a file of any tree, and nothing new to decide.
    let own_object = !decided_path.is_absolute();
    let verdict = if own_object {
        agent_supervisor_policy::Verdict {
            decision: agent_supervisor_policy::Decision::Allow,
            decided_by: agent_supervisor_policy::DecidedBy::Filesystem,
            reason: Some("an object the agent already holds open".into()),
        }
    } else {
        ctx.policy.decide(&Request::Open {
            path: &decided_path,
            access,
        })
    };
    let shown = decided_path.display().to_string();
    let access_s = [(access.read, "read"), (access.write, "write")]
        .iter()
        .filter(|(b, _)| *b)
        .map(|(_, s)| *s)
        .collect::<Vec<_>>()
        .join("+");
    let details = serde_json::json!({ "path": shown, "access": access_s, "flags": flags });
    let summary = format!("{} ({access_s})", escape_for_human(shown.as_bytes()));
    let key = format!("open\0{shown}\0{access_s}");
    let perform = Box::new(move || perform_open(target, flags, mode & !umask));
    Ok(Prepared::Decide(Box::new(Pending {
        notif: Some(n),
        kind: Kind::Open,
        details,
        summary,
        key,
        verdict,
        perform,
        denied_errno: libc::EACCES,
        blocking,
        quiet_allow: own_object,
        by_command_line: false,
        started,
        pid,
    })))
}

enum Target {
    Existing(super::tracee::Resolved),
    Create {
        dir: super::tracee::Resolved,
        name: Vec<u8>,
    },
}

fn perform_open(target: Target, flags: i32, mode: u32) -> Effect {
    let cloexec = flags & libc::O_CLOEXEC != 0;
    let result = match target {
        Target::Existing(r) => {
            // Reopen exactly the checked object through its O_PATH fd.
            let via = CString::new(format!("/proc/self/fd/{}", r.fd.as_raw_fd())).expect("no NUL");
            let flags =
                (flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW)) | libc::O_CLOEXEC;
            match std::fs::File::open("/") {
                Ok(root) => sys::openat2(root.as_fd(), &via, flags, mode, 0),
                Err(e) => Err(e),
            }
        }
        Target::Create { dir, name } => match CString::new(name) {
            Ok(name) => sys::openat2(
                dir.fd.as_fd(),
                &name,
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode,
                sys::RESOLVE_BENEATH | sys::RESOLVE_NO_SYMLINKS,
            ),
            Err(_) => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
        },
    };
    match result {
        Ok(fd) => Effect::AddFd { fd, cloexec },
        Err(e) => Effect::Errno(e.raw_os_error().unwrap_or(libc::EACCES)),
    }
}
