//! The agent's seccomp filters, built with seccompiler.
//!
//! Two filters are stacked (the kernel evaluates both and the strictest action wins:
//! `KILL > ERRNO > USER_NOTIF > ALLOW`):
//! 1. [`deny_filter`]: non-native architectures (i386 `int 0x80`) and the x32 ABI are killed;
//!    what a sandboxed agent never needs, and what would bypass the checks, fails with EPERM.
//! 2. [`notify_filter`]: the syscalls the supervisor decides per call return
//!    `SECCOMP_RET_USER_NOTIF`. seccompiler 0.5 has no user-notify action, so the filter is
//!    generated with a sentinel `SECCOMP_RET_TRACE` value that is then rewritten.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompFilter, SeccompRule, TargetArch,
};

use crate::sys::SockFilter;

const SENTINEL: u32 = 0x5a5a;
const SECCOMP_RET_TRACE: u32 = 0x7ff0_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// `ioctl` requests that inject input into, or reprogram, a terminal.
const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541c;
const CLONE_NEWUSER: u64 = libc::CLONE_NEWUSER as u64;
const PERSONALITY_QUERY: u64 = 0xffff_ffff;

/// Syscalls denied with EPERM unconditionally.
pub const DENIED: &[(i64, &str)] = &[
    (libc::SYS_io_uring_setup, "io_uring_setup"),
    (libc::SYS_io_uring_enter, "io_uring_enter"),
    (libc::SYS_io_uring_register, "io_uring_register"),
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_process_vm_readv, "process_vm_readv"),
    (libc::SYS_process_vm_writev, "process_vm_writev"),
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_kexec_load, "kexec_load"),
    (libc::SYS_kexec_file_load, "kexec_file_load"),
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_delete_module, "delete_module"),
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_request_key, "request_key"),
    (libc::SYS_open_by_handle_at, "open_by_handle_at"),
    (libc::SYS_name_to_handle_at, "name_to_handle_at"),
    (libc::SYS_pidfd_getfd, "pidfd_getfd"),
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_move_mount, "move_mount"),
    (libc::SYS_open_tree, "open_tree"),
    (libc::SYS_fsopen, "fsopen"),
    (libc::SYS_fsconfig, "fsconfig"),
    (libc::SYS_fsmount, "fsmount"),
    (libc::SYS_fspick, "fspick"),
    (libc::SYS_mount_setattr, "mount_setattr"),
    (libc::SYS_chroot, "chroot"),
    (libc::SYS_setns, "setns"),
    (libc::SYS_acct, "acct"),
    (libc::SYS_swapon, "swapon"),
    (libc::SYS_swapoff, "swapoff"),
    (libc::SYS_reboot, "reboot"),
    (libc::SYS_quotactl, "quotactl"),
    (libc::SYS_uselib, "uselib"),
    (libc::SYS_iopl, "iopl"),
    (libc::SYS_ioperm, "ioperm"),
    (libc::SYS_lookup_dcookie, "lookup_dcookie"),
    (libc::SYS_syslog, "syslog"),
];

/// Which syscalls the supervisor decides per call.
#[derive(Debug, Clone, Copy)]
pub struct NotifySet {
    /// open/openat/openat2/creat (only when the policy has rules no cheaper mechanism enforces).
    pub open: bool,
}

/// Filter 1: arch/x32 kill, fixed EPERM denials.
pub fn deny_filter() -> Result<Vec<SockFilter>, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|&(nr, _)| (nr, vec![])).collect();
    let rule = |conds: Vec<Cond>| SeccompRule::new(conds).expect("static seccomp rule");
    let cond = |arg, len, op, val| Cond::new(arg, len, op, val).expect("static seccomp condition");
    // New user namespaces: unshare(CLONE_NEWUSER), clone(CLONE_NEWUSER).
    rules.insert(
        libc::SYS_unshare,
        vec![rule(vec![cond(
            0,
            Len::Qword,
            Op::MaskedEq(CLONE_NEWUSER),
            CLONE_NEWUSER,
        )])],
    );
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(
            0,
            Len::Qword,
            Op::MaskedEq(CLONE_NEWUSER),
            CLONE_NEWUSER,
        )])],
    );
    // personality(): only the query and PER_LINUX.
    rules.insert(
        libc::SYS_personality,
        vec![rule(vec![
            cond(0, Len::Dword, Op::Ne, 0),
            cond(0, Len::Dword, Op::Ne, PERSONALITY_QUERY),
        ])],
    );
    // Terminal input injection.
    rules.insert(
        libc::SYS_ioctl,
        vec![
            rule(vec![cond(1, Len::Dword, Op::Eq, TIOCSTI)]),
            rule(vec![cond(1, Len::Dword, Op::Eq, TIOCLINUX)]),
        ],
    );
    // A filter of the agent's own with a listener would receive our notifications first.
    let new_listener = libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
    rules.insert(
        libc::SYS_seccomp,
        vec![rule(vec![cond(
            1,
            Len::Qword,
            Op::MaskedEq(new_listener),
            new_listener,
        )])],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )?;
    let prog: BpfProgram = filter.try_into()?;
    let mut out = x32_guard();
    out.extend(prog.into_iter().map(convert));
    // clone3 passes its flags in memory, out of the filter's sight: make callers fall back to
    // clone(2), whose flags we can check. ENOSYS (not EPERM) is what libcs fall back on.
    Ok(insert_after_guard(out, hot_path_allow()))
}

/// Filter 2: user notification for the per-call decisions.
pub fn notify_filter(set: NotifySet) -> Result<Vec<SockFilter>, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in [
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_connect,
        libc::SYS_bind,
        libc::SYS_sendmsg,
        libc::SYS_sendmmsg,
    ] {
        rules.insert(nr, vec![]);
    }
    // sendto with a destination address (arg 4 != NULL); without one it is a plain write.
    rules.insert(
        libc::SYS_sendto,
        vec![
            SeccompRule::new(vec![Cond::new(4, Len::Qword, Op::Ne, 0).expect("static")])
                .expect("static"),
        ],
    );
    if set.open {
        for nr in [
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_openat2,
            libc::SYS_creat,
        ] {
            rules.insert(nr, vec![]);
        }
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Trace(SENTINEL),
        TargetArch::x86_64,
    )?;
    let prog: BpfProgram = filter.try_into()?;
    // The same guard and hot path as the deny filter (minus what this filter traps), so that
    // ordinary syscalls don't walk its chain either.
    let hot: Vec<i64> = HOT
        .iter()
        .copied()
        .filter(|&nr| !(set.open && nr == libc::SYS_openat))
        .collect();
    let mut out = x32_guard();
    out.extend(allow_if_one_of(&hot));
    Ok(out
        .into_iter()
        .chain(prog.into_iter().map(convert))
        .map(|mut insn| {
            if is_ret_k(&insn) && insn.k == SECCOMP_RET_TRACE | SENTINEL {
                insn.k = SECCOMP_RET_USER_NOTIF;
            }
            insn
        })
        .collect())
}

fn convert(i: seccompiler::sock_filter) -> SockFilter {
    SockFilter {
        code: i.code,
        jt: i.jt,
        jf: i.jf,
        k: i.k,
    }
}

fn is_ret_k(i: &SockFilter) -> bool {
    i.code == (libc::BPF_RET | libc::BPF_K) as u16
}

fn stmt(code: u32, k: u32) -> SockFilter {
    SockFilter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> SockFilter {
    SockFilter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// Kill anything that is not x86_64, and x86_64 calls made through the x32 ABI.
fn x32_guard() -> Vec<SockFilter> {
    const ARCH_OFF: u32 = 4;
    const NR_OFF: u32 = 0;
    vec![
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, ARCH_OFF),
        jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            AUDIT_ARCH_X86_64,
            1,
            0,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, SECCOMP_RET_KILL_PROCESS),
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, NR_OFF),
        jump(
            libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
            X32_SYSCALL_BIT,
            0,
            1,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, SECCOMP_RET_KILL_PROCESS),
    ]
}

/// The most frequent syscalls, none of which this filter restricts: answered ALLOW right after
/// the guard instead of after walking the whole rule chain (seccompiler's chain is linear, and
/// the filter runs on every syscall the agent makes). The notify filter is separate, so a
/// trapped `openat` is still trapped.
const HOT: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_pread64,
    libc::SYS_getdents64,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_clock_gettime,
    libc::SYS_readlink,
    libc::SYS_access,
    libc::SYS_faccessat2,
    libc::SYS_getpid,
    libc::SYS_wait4,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_epoll_wait,
    libc::SYS_fcntl,
];

/// `if nr == clone3 return ERRNO(ENOSYS)`, the ioctl fast path, then `if nr in HOT return
/// ALLOW` (nr is in the accumulator after the guard).
fn hot_path_allow() -> Vec<SockFilter> {
    let mut v = vec![
        jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            libc::SYS_clone3 as u32,
            0,
            1,
        ),
        stmt(
            libc::BPF_RET | libc::BPF_K,
            0x0005_0000 | libc::ENOSYS as u32,
        ),
    ];
    v.extend(ioctl_fast_path());
    v.extend(allow_if_one_of(HOT));
    v
}

/// `ioctl` is frequent (every `isatty`) and restricted only for TIOCSTI/TIOCLINUX: any other
/// request returns ALLOW here; those two fall through (nr reloaded) to the rule chain. The
/// request is compared on its low 32 bits, as the kernel reads it (an `unsigned int`).
fn ioctl_fast_path() -> Vec<SockFilter> {
    const ARG1_LOW: u32 = 16 + 8; // seccomp_data.args[1], little-endian low word
    vec![
        jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            libc::SYS_ioctl as u32,
            0,
            5,
        ),
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, ARG1_LOW),
        jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            TIOCSTI as u32,
            2,
            0,
        ),
        jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            TIOCLINUX as u32,
            1,
            0,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, SECCOMP_RET_ALLOW),
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
    ]
}

/// `if nr in syscalls return ALLOW` (nr in the accumulator).
fn allow_if_one_of(syscalls: &[i64]) -> Vec<SockFilter> {
    let mut v = Vec::new();
    let k = syscalls.len();
    for (i, &nr) in syscalls.iter().enumerate() {
        // On a match, jump over the remaining checks and the JA, to the RET ALLOW.
        v.push(jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            nr as u32,
            (k - i) as u8,
            0,
        ));
    }
    v.push(stmt(libc::BPF_JMP | libc::BPF_JA, 1));
    v.push(stmt(libc::BPF_RET | libc::BPF_K, SECCOMP_RET_ALLOW));
    v
}

/// Insert `block` after the 6-instruction arch/x32 guard.
fn insert_after_guard(mut prog: Vec<SockFilter>, block: Vec<SockFilter>) -> Vec<SockFilter> {
    let guard_len = 6;
    prog.splice(guard_len..guard_len, block);
    prog
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_filter_has_user_notif_and_no_sentinel() {
        let p = notify_filter(NotifySet { open: true }).unwrap();
        assert!(p
            .iter()
            .any(|i| is_ret_k(i) && i.k == SECCOMP_RET_USER_NOTIF));
        assert!(!p
            .iter()
            .any(|i| is_ret_k(i) && i.k & 0xffff_0000 == SECCOMP_RET_TRACE));
    }

    /// Run a filter on one syscall (a tiny classic-BPF interpreter for the instructions we
    /// emit), to check the fast paths against the rule chain.
    fn eval(prog: &[SockFilter], nr: i64, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&(nr as u32).to_ne_bytes());
        data[4..8].copy_from_slice(&AUDIT_ARCH_X86_64.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let ins = prog[pc];
            let code = ins.code as u32;
            match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    a = u32::from_ne_bytes(
                        data[ins.k as usize..ins.k as usize + 4].try_into().unwrap(),
                    )
                }
                c if c == libc::BPF_RET | libc::BPF_K => return ins.k,
                c if c == libc::BPF_JMP | libc::BPF_JA => {
                    pc += ins.k as usize;
                }
                c if c & 0x07 == libc::BPF_JMP => {
                    let taken = match code & 0xf0 {
                        x if x == libc::BPF_JEQ => a == ins.k,
                        x if x == libc::BPF_JGE => a >= ins.k,
                        x if x == libc::BPF_JGT => a > ins.k,
                        x if x == libc::BPF_JSET => a & ins.k != 0,
                        other => panic!("unexpected jump {other:#x}"),
                    };
                    pc += if taken {
                        ins.jt as usize
                    } else {
                        ins.jf as usize
                    };
                }
                c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => a &= ins.k,
                c if c == libc::BPF_MISC | libc::BPF_TAX
                    || c == libc::BPF_ST
                    || c == libc::BPF_LDX | libc::BPF_W | libc::BPF_MEM => {}
                c if c == libc::BPF_LD | libc::BPF_MEM => {}
                other => panic!("unexpected instruction {other:#x}"),
            }
            pc += 1;
        }
    }

    /// The fast paths give the same answers as the rule chain.
    #[test]
    fn fast_paths_agree_with_the_rules() {
        let deny = deny_filter().unwrap();
        let eperm = 0x0005_0000 | libc::EPERM as u32;
        assert_eq!(
            eval(&deny, libc::SYS_ioctl, [1, TIOCSTI, 0, 0, 0, 0]),
            eperm
        );
        assert_eq!(
            eval(
                &deny,
                libc::SYS_ioctl,
                [1, 0xffff_ffff_0000_0000 | TIOCSTI, 0, 0, 0, 0]
            ),
            eperm
        );
        assert_eq!(
            eval(&deny, libc::SYS_ioctl, [1, TIOCLINUX, 0, 0, 0, 0]),
            eperm
        );
        assert_eq!(
            eval(&deny, libc::SYS_ioctl, [1, 0x5401, 0, 0, 0, 0]),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(eval(&deny, libc::SYS_ptrace, [0; 6]), eperm);
        assert_eq!(eval(&deny, libc::SYS_read, [0; 6]), SECCOMP_RET_ALLOW);
        assert_eq!(eval(&deny, libc::SYS_getppid, [0; 6]), SECCOMP_RET_ALLOW);
        for open in [false, true] {
            let notify = notify_filter(NotifySet { open }).unwrap();
            let want = if open {
                SECCOMP_RET_USER_NOTIF
            } else {
                SECCOMP_RET_ALLOW
            };
            assert_eq!(
                eval(&notify, libc::SYS_openat, [0; 6]),
                want,
                "openat, open trapped: {open}"
            );
            assert_eq!(
                eval(&notify, libc::SYS_execve, [0; 6]),
                SECCOMP_RET_USER_NOTIF
            );
            assert_eq!(eval(&notify, libc::SYS_read, [0; 6]), SECCOMP_RET_ALLOW);
            assert_eq!(
                eval(&notify, libc::SYS_sendto, [0, 0, 0, 0, 0x1000, 16]),
                SECCOMP_RET_USER_NOTIF
            );
            assert_eq!(eval(&notify, libc::SYS_sendto, [0; 6]), SECCOMP_RET_ALLOW);
        }
    }

    /// No hot syscall may be one the deny filter restricts: the fast path would let it through.
    #[test]
    fn hot_syscalls_are_never_restricted() {
        let restricted: Vec<i64> = DENIED
            .iter()
            .map(|&(nr, _)| nr)
            .chain([
                libc::SYS_unshare,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_personality,
                libc::SYS_ioctl,
                libc::SYS_seccomp,
            ])
            .collect();
        for nr in HOT {
            assert!(
                !restricted.contains(nr),
                "syscall {nr} is restricted but on the hot path"
            );
        }
        let p = deny_filter().unwrap();
        assert!(p.iter().all(|i| i.jt as usize + i.jf as usize <= p.len()));
    }

    #[test]
    fn deny_filter_starts_with_arch_and_x32_kill() {
        let p = deny_filter().unwrap();
        assert_eq!(p[1].k, AUDIT_ARCH_X86_64);
        assert_eq!(p[4].k, X32_SYSCALL_BIT);
        assert_eq!(p[6].k, libc::SYS_clone3 as u32);
        assert!(p.len() < 4096);
    }
}
