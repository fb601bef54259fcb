//! The exec guard: checks, before a new program runs its first instruction, that the kernel
//! executed exactly the file and arguments the supervisor decided on.
//!
//! `execve` cannot be emulated, and its path and argv live in memory another agent thread can
//! rewrite between our check and the kernel's copy. So an allowed exec is answered
//! `CONTINUE` only after the trapped thread is `PTRACE_SEIZE`d with `PTRACE_O_TRACEEXEC`.
//! When the exec succeeds, the thread stops at `PTRACE_EVENT_EXEC` (the new image is loaded,
//! no instruction of it has run, every other thread of the old image is gone): the guard
//! compares `/proc/<pid>/exe` (device and inode) and `/proc/<pid>/cmdline` with what was
//! decided, and kills the process on any difference. A failed exec shows up as the
//! `PTRACE_INTERRUPT` stop instead. Either way the thread is detached.
//!
//! The guard owns every ptrace operation, on one thread (ptrace is per tracer thread). Where
//! the in-kernel exec backstop is on (`crate::ebpf::process`), the guard is also the one
//! writer of the session's exec approvals: right before `CONTINUE` it writes (thread, file)
//! into the kernel map, and the `sched_process_exec` program kills an exec of any other file
//! before its first instruction, whatever happened to the path in between.
#![forbid(unsafe_code)]

use std::fs;
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::sync::Arc;

use super::Ctx;
use crate::audit::Record;
use crate::sys::{self, Notif};

/// What the exec must turn out to be.
#[derive(Debug, Clone)]
pub struct Expectation {
    /// (st_dev, st_ino) of the file that must be running (for scripts: the interpreter).
    pub exe: (u64, u64),
    /// The file (`O_PATH`, in the agent's view) and the process that execs it: what the
    /// kernel's exec approval is made from, where the in-kernel backstop is on.
    pub file: Arc<std::os::fd::OwnedFd>,
    pub tgid: i32,
    /// argv[1..] as decided; the new image's command line must end with exactly these.
    pub argv_tail: Vec<Vec<u8>>,
    /// How many entries the new command line must have in all: `argv_tail` plus what the
    /// kernel puts before it (argv[0]; for `#!` scripts, each interpreter, its optional
    /// argument and the script path).
    pub argc: usize,
    /// For messages.
    pub summary: String,
}

struct Job {
    notif: Notif,
    expect: Expectation,
    /// The session's first exec: made by the sandbox's own code (init's child, before the
    /// agent's first instruction), so nothing can swap its file or arguments; it is let
    /// through without the ptrace check.
    first: bool,
}

/// Handle to the guard thread, which starts with the first exec it has to check (a session
/// whose agent never execs again has no guard thread). The session's first exec needs no
/// check: its kernel approval, where the backstop is on, is written by the caller.
pub struct Guard {
    tx: mpsc::Sender<Job>,
    jobs: super::Idle<GuardJobs>,
}

impl Guard {
    /// A guard that writes each exec approval into the kernel's map (`approvals`) before it
    /// lets the exec continue.
    pub fn with_exec_backstop(approvals: Option<crate::ebpf::process::ExecApprovals>) -> Guard {
        let (tx, rx) = mpsc::channel();
        Guard {
            tx,
            jobs: super::Idle::new(GuardJobs {
                rx,
                approvals,
                ids: Default::default(),
            }),
        }
    }

    /// Let an allowed exec run. The session's first exec (`first`, made by the sandbox's own
    /// code, see [`super::Ctx::first_exec`]) has nothing to check: it continues right here,
    /// after its kernel approval where the backstop is on (the guard's thread has not
    /// started: the approvals are still here to write).
    pub fn exec(&self, ctx: &Arc<Ctx>, notif: Notif, expect: Expectation, first: bool) {
        if first {
            let here = self.jobs.with(|jobs| {
                if jobs.approve(ctx, &notif, &expect).is_some() {
                    continue_first(ctx, notif.id, &expect.summary);
                }
            });
            if here.is_some() {
                return;
            }
        }
        let later = super::Later::given(Arc::clone(ctx));
        if let Err(e) = self.jobs.start("exec-guard", move |jobs| run(later, jobs)) {
            // Never unchecked: the exec fails, the agent may retry.
            tracing::warn!("the exec guard's thread could not start: {e}");
            super::respond(ctx, notif.id, Err(libc::EAGAIN));
            return;
        }
        // If the guard is gone the job is dropped: the trapped thread then fails with ENOSYS
        // when the listener closes (never runs unchecked).
        let _ = self.tx.send(Job {
            notif,
            expect,
            first,
        });
    }
}

/// The receiving side, moved into the guard thread.
pub struct GuardJobs {
    rx: mpsc::Receiver<Job>,
    approvals: Option<crate::ebpf::process::ExecApprovals>,
    ids: crate::ebpf::process::KernelFileIds,
}

impl GuardJobs {
    /// Write the kernel's approval of this exec where the backstop is on (the file it names,
    /// or None without the backstop). None: it could not be written, and the exec has been
    /// refused (the kernel would kill it).
    fn approve(
        &mut self,
        ctx: &Ctx,
        notif: &Notif,
        expect: &Expectation,
    ) -> Option<Option<crate::ebpf::process::KernelFileId>> {
        let Some(approvals) = &mut self.approvals else {
            return Some(None);
        };
        // The file as the kernel's exec tracepoint sees it.
        let file = self.ids.of(expect.file.as_fd(), expect.tgid, expect.exe);
        match approvals.approve(notif.pid, file) {
            Ok(()) => Some(Some(file)),
            Err(e) => {
                tracing::warn!("exec guard cannot write the kernel's exec approval: {e}");
                super::respond(ctx, notif.id, Err(libc::EACCES));
                None
            }
        }
    }
}

/// The guard thread's body (it takes the session's context with its first job).
fn run(mut ctx: super::Later, mut jobs: GuardJobs) {
    while let Ok(job) = jobs.rx.recv() {
        let Some(ctx) = ctx.get() else { return };
        let tid = job.notif.pid;
        let Some(file) = jobs.approve(&ctx, &job.notif, &job.expect) else {
            continue;
        };
        if job.first {
            continue_first(&ctx, job.notif.id, &job.expect.summary);
            continue;
        }
        check_one(&ctx, job);
        // Consumed by the exec if it happened; an exec that failed or never ran leaves it.
        if let (Some(approvals), Some(file)) = (&mut jobs.approvals, file) {
            approvals.withdraw(tid, file);
        }
    }
}

/// The session's first exec: no agent code has run yet, so nothing can rewrite its path or
/// arguments, and the kernel's approval (if any) is consumed by the exec itself.
fn continue_first(ctx: &Ctx, id: u64, summary: &str) {
    tracing::debug!("exec guard: the session's first exec `{summary}`");
    if let Err(e) = sys::notif_continue(ctx.listener.as_fd(), id) {
        if e.raw_os_error() != Some(libc::ENOENT) {
            tracing::warn!("continuing the session's first exec failed: {e}");
        }
    }
}

fn check_one(ctx: &Arc<Ctx>, job: Job) {
    let tid = job.notif.pid as i32;
    if let Err(e) = sys::ptrace_seize(tid) {
        // The thread died, or cannot be traced: never let the exec run unchecked. (A thread that
        // died, as when a limit ends the session, is not worth a warning.)
        if e.raw_os_error() == Some(libc::ESRCH) {
            tracing::debug!("exec guard: thread {tid} is gone; refusing the exec");
        } else {
            tracing::warn!("exec guard cannot trace thread {tid}: {e}; refusing the exec");
        }
        super::respond(ctx, job.notif.id, Err(libc::EACCES));
        return;
    }
    if !sys::notif_id_valid(ctx.listener.as_fd(), job.notif.id)
        || sys::notif_continue(ctx.listener.as_fd(), job.notif.id).is_err()
    {
        // Gone in the meantime: detach below after the interrupt stop.
    }
    let _ = sys::ptrace_interrupt(tid);
    loop {
        let (pid, status) = match sys::waitpid(-1, libc::__WALL | libc::__WNOTHREAD) {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(_) => return, // no tracee left
        };
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            return;
        }
        if !libc::WIFSTOPPED(status) {
            continue;
        }
        let event = (status >> 16) & 0xff;
        if event == sys::PTRACE_EVENT_EXEC {
            // `pid` is now the thread-group leader's id (a non-leader's tid changes on exec).
            match verify(pid, &job.expect, &ctx.policy.filesystem.write) {
                Ok(()) => {
                    tracing::debug!(
                        "exec guard: pid {pid} runs `{}` as decided",
                        job.expect.summary
                    );
                    release(pid, 0);
                    return;
                }
                Err(why) => {
                    let _ = sys::kill(pid, libc::SIGKILL);
                    release(pid, 0);
                    tracing::warn!("exec guard killed pid {pid}: {why}");
                    eprintln!("agent-supervisor: killed the agent process {pid}: {why}");
                    ctx.audit.record(Record::guard_kill(
                        &ctx.session,
                        pid,
                        &job.expect.summary,
                        &why,
                    ));
                    return;
                }
            }
        }
        let sig = if event == 0 {
            libc::WSTOPSIG(status)
        } else {
            0
        };
        // PTRACE_EVENT_STOP (our interrupt: the exec failed) or a signal: detach, re-injecting it.
        let sig = if sig == libc::SIGTRAP || sig == libc::SIGSTOP && event != 0 {
            0
        } else {
            sig
        };
        release(pid, sig);
        return;
    }
}

/// Let go of a stopped tracee, delivering `sig` (0 for none). A tracee that was killed while
/// stopped (a limit or the session's end kills every process, and SIGKILL takes a tracee out
/// of its stop) can no longer be detached: it exits as our tracee, and stays a zombie until this
/// thread, its tracer, reaps it. Left unreaped, it would keep its PID namespace's init from
/// ever finishing its exit, and the session from ending.
fn release(pid: i32, sig: i32) {
    if sys::ptrace_detach(pid, sig).is_err() {
        loop {
            match sys::waitpid(pid, libc::__WALL | libc::__WNOTHREAD) {
                Ok((_, status)) if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) => break,
                // Stopped again after all: detach now.
                Ok(_) => {
                    if sys::ptrace_detach(pid, sig).is_ok() {
                        break;
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(_) => break, // not ours any more: reaped or detached
            }
        }
    }
}

fn verify(
    pid: i32,
    expect: &Expectation,
    write_trees: &[std::path::PathBuf],
) -> Result<(), String> {
    let exe = fs::File::open(format!("/proc/{pid}/exe"))
        .map_err(|e| format!("cannot inspect the new image: {e}"))?;
    let (dev, ino, _) =
        sys::fstat_id(exe.as_fd()).map_err(|e| format!("cannot inspect the new image: {e}"))?;
    if (dev, ino) != expect.exe {
        return Err(format!(
            "it executed a different file than the one approved for `{}` (raced exec)",
            expect.summary
        ));
    }
    let environ = sys::read_proc_bytes(format!("/proc/{pid}/environ"), 16 << 10)
        .map_err(|e| format!("cannot read the new environment: {e}"))?;
    let envp: Vec<Vec<u8>> = environ
        .split(|&b| b == 0)
        .filter(|e| !e.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    if let Some(why) =
        super::exec::loader_injection(&envp, &|p| write_trees.iter().any(|w| p.starts_with(w)))
    {
        return Err(format!("{why} (raced exec environment)"));
    }
    let cmdline = sys::read_proc_bytes(format!("/proc/{pid}/cmdline"), 4096)
        .map_err(|e| format!("cannot read the new command line: {e}"))?;
    let mut args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    if args.last().is_some_and(|a| a.is_empty()) {
        args.pop();
    }
    let tail = &expect.argv_tail;
    // Exactly as long as decided (no argument inserted or dropped), ending with exactly the
    // decided arguments.
    let ok = args.len() == expect.argc
        && args.len() >= tail.len()
        && args[args.len() - tail.len()..]
            .iter()
            .zip(tail)
            .all(|(a, b)| *a == b.as_slice());
    if !ok {
        return Err(format!(
            "its arguments differ from the ones approved for `{}` (raced exec)",
            expect.summary
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracee killed in its stop (as every process is when a limit ends the session) cannot
    /// be detached; `release` must reap it, or the sandbox's init could never exit.
    #[test]
    fn a_tracee_killed_in_its_stop_is_reaped_not_left_a_zombie() {
        // Reaped by `release` (through its pid), not by `Child::wait`.
        #[allow(clippy::zombie_processes)]
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        sys::ptrace_seize(pid).expect("seize");
        sys::ptrace_interrupt(pid).expect("interrupt");
        let (_, status) = sys::waitpid(pid, libc::__WALL).expect("wait for the stop");
        assert!(libc::WIFSTOPPED(status), "status {status:#x}");
        sys::kill(pid, libc::SIGKILL).expect("kill");
        release(pid, 0);
        let gone = sys::waitpid(pid, libc::__WALL | libc::WNOHANG);
        assert_eq!(
            gone.map_err(|e| e.raw_os_error()),
            Err(Some(libc::ECHILD)),
            "the killed tracee is still there to be reaped"
        );
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    /// A tracee that is still stopped is let go and runs on.
    #[test]
    fn a_stopped_tracee_is_detached_and_runs_on() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 0.2; exit 7"])
            .spawn()
            .expect("spawn sh");
        let pid = child.id() as i32;
        sys::ptrace_seize(pid).expect("seize");
        sys::ptrace_interrupt(pid).expect("interrupt");
        let (_, status) = sys::waitpid(pid, libc::__WALL).expect("wait for the stop");
        assert!(libc::WIFSTOPPED(status), "status {status:#x}");
        release(pid, 0);
        let status = child.wait().expect("wait");
        assert_eq!(status.code(), Some(7));
    }
}
