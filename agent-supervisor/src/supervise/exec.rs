//! `execve` / `execveat`: what program, with which arguments.
//!
//! The program is resolved in the agent's root; `#!` interpreters (nested up to the kernel's
//! limit) and the dynamic loader (`ld.so ./tool`) are followed so that the policy sees every
//! program that will really run. Exec cannot be emulated, so an allowed exec continues in the
//! agent and the [`super::guard`] checks, before the new image runs, that the kernel executed
//! exactly the file and arguments that were decided; Landlock execute rights back the trees.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use agent_supervisor_policy::{Request, Verdict};

use super::guard::Expectation;
use super::tracee::{Resolved, Tracee};
use super::{display_argv, Ctx, Effect, Kind, Pending, Prepared};
use crate::sys::{self, Notif};

const AT_EMPTY_PATH: u64 = 0x1000;
const AT_SYMLINK_NOFOLLOW: u64 = 0x100;
/// The kernel follows at most this many `#!` levels (BINPRM_MAX_RECURSION).
const MAX_INTERPRETERS: usize = 4;

/// One program in the chain that will run.
#[derive(Debug)]
struct Program {
    resolved: Resolved,
    invoked: PathBuf,
    argv: Vec<Vec<u8>>,
}

pub fn prepare(ctx: &Arc<Ctx>, n: Notif) -> Result<Prepared, i32> {
    let started = Instant::now();
    let t = Tracee::load(n.pid).map_err(|_| libc::ESRCH)?;
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EACCES);
    let (dirfd, path_ptr, argv_ptr, envp_ptr, flags) = if n.nr as i64 == libc::SYS_execveat {
        (n.args[0] as i32, n.args[1], n.args[2], n.args[3], n.args[4])
    } else {
        (libc::AT_FDCWD, n.args[0], n.args[1], n.args[2], 0)
    };
    let (path, argv, envp) = t.read_exec(path_ptr, argv_ptr, envp_ptr).map_err(errno)?;
    let follow = flags & AT_SYMLINK_NOFOLLOW == 0;
    let empty = flags & AT_EMPTY_PATH != 0;
    let resolved = t.resolve(dirfd, &path, follow, empty).map_err(errno)?;
    let (_, _, mode) = sys::fstat_id(resolved.fd.as_fd_ref()).map_err(errno)?;
    if mode & libc::S_IFMT != libc::S_IFREG {
        return Err(libc::EACCES);
    }
    let invoked = resolved.lexical.clone();
    let pid = t.tgid;

    // The chain of programs that will run: the file, its #! interpreters, ld.so's target.
    let mut chain = vec![Program {
        resolved,
        invoked,
        argv: argv.clone(),
    }];
    // The kernel's binfmt_script: argv becomes [interpreter, optional argument, the script's
    // name (the path given to exec, then each outer interpreter), the old argv[1..]].
    let mut script_name = path.clone();
    for _ in 0..MAX_INTERPRETERS {
        let last = chain.last().expect("non-empty");
        let Some((interp, arg)) = shebang(&last.resolved) else {
            break;
        };
        let r = t
            .resolve(libc::AT_FDCWD, interp.as_os_str().as_bytes(), true, false)
            .map_err(errno)?;
        let mut iargv = vec![interp.as_os_str().as_bytes().to_vec()];
        iargv.extend(arg);
        iargv.push(std::mem::replace(
            &mut script_name,
            interp.as_os_str().as_bytes().to_vec(),
        ));
        iargv.extend(last.argv.iter().skip(1).cloned());
        chain.push(Program {
            invoked: r.lexical.clone(),
            resolved: r,
            argv: iargv,
        });
    }
    if chain.len() > MAX_INTERPRETERS
        && shebang(&chain.last().expect("non-empty").resolved).is_some()
    {
        return Err(libc::ELOOP);
    }
    let runner = chain.last().expect("non-empty");
    let exe = {
        let (dev, ino, _) = sys::fstat_id(runner.resolved.fd.as_fd_ref()).map_err(errno)?;
        (dev, ino)
    };
    let expect = Expectation {
        exe,
        file: Arc::new(runner.resolved.fd.try_clone().map_err(errno)?),
        tgid: pid,
        argv_tail: argv.iter().skip(1).cloned().collect(),
        // The runner's argv is what the kernel builds: for a binary, argv itself (an empty
        // argv gets an empty argv[0] from the kernel); for scripts, interpreters first.
        argc: runner.argv.len().max(1),
        summary: display_argv(&argv),
    };
    let runner_path = runner.resolved.path.clone();
    let runner_index = chain.len() - 1;
    let loader = is_dynamic_loader(&runner.resolved.path).then(|| loader_call(&runner.argv));
    if let Some(call) = &loader {
        if let Some(target) = call.target.clone() {
            let r = t
                .resolve(libc::AT_FDCWD, &target, true, false)
                .map_err(errno)?;
            let targv: Vec<Vec<u8>> = runner
                .argv
                .iter()
                .skip_while(|a| **a != target)
                .cloned()
                .collect();
            chain.push(Program {
                invoked: r.lexical.clone(),
                resolved: r,
                argv: targv,
            });
        }
    }

    // The strictest verdict over the chain decides.
    let mut verdict: Option<Verdict> = None;
    for p in &chain {
        let args: Vec<String> = p
            .argv
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let invoked = (p.invoked != p.resolved.path).then_some(p.invoked.as_path());
        let v = ctx.policy.decide(&Request::Exec {
            path: &p.resolved.path,
            invoked,
            argv: &args,
        });
        if verdict.as_ref().is_none_or(|cur| v.decision > cur.decision) {
            verdict = Some(v);
        }
    }
    let mut verdict = verdict.expect("non-empty chain");
    let writable = |p: &Path| ctx.policy.filesystem.write.iter().any(|w| p.starts_with(w));
    // `ld.so PROGRAM` opens PROGRAM by name after the exec, out of the guard's sight: a program
    // in a tree the agent can write could be swapped in between.
    if is_dynamic_loader(&runner_path) && chain.len() > runner_index + 1 {
        let target = &chain[runner_index + 1];
        if writable(&target.resolved.path) || writable(&target.invoked) {
            verdict = Verdict {
                decision: agent_supervisor_policy::Decision::Deny,
                decided_by: agent_supervisor_policy::DecidedBy::Filesystem,
                reason: Some(format!(
                    "the dynamic loader would load {} by name from a writable tree (it could be swapped after the check)",
                    target.invoked.display()
                )),
            };
        }
    }
    if let Some(call) = &loader {
        let why = if let Some(opt) = &call.unknown_option {
            Some(format!(
                "unknown dynamic loader option {}: what it loads can't be told",
                super::escape_for_human(opt)
            ))
        } else {
            call.paths.iter().find_map(|p| {
                let as_env = [[b"LD_PRELOAD=".as_slice(), p].concat()];
                loader_injection(&as_env, &writable).map(|_| {
                    format!(
                        "the dynamic loader is told to load from {} (writable by the agent, or relative)",
                        super::escape_for_human(p)
                    )
                })
            })
        };
        if let Some(why) = why {
            verdict = Verdict {
                decision: agent_supervisor_policy::Decision::Deny,
                decided_by: agent_supervisor_policy::DecidedBy::Filesystem,
                reason: Some(why),
            };
        }
    }
    if let Some(why) = loader_injection(&envp, &writable) {
        verdict = Verdict {
            decision: agent_supervisor_policy::Decision::Deny,
            decided_by: agent_supervisor_policy::DecidedBy::Filesystem,
            reason: Some(why),
        };
    }

    // The command line the user typed is the user's own approval for an ask (policy denials
    // still apply). Only its first exec, once.
    let by_command_line = {
        let mut initial = ctx.initial_argv.lock().expect("initial lock");
        let first = initial.as_ref().is_some_and(|a| *a == argv);
        if first && verdict.decision != agent_supervisor_policy::Decision::Deny {
            *initial = None;
        }
        first && verdict.decision == agent_supervisor_policy::Decision::Ask
    };

    let first = &chain[0];
    let program = first.resolved.path.display().to_string();
    let details = serde_json::json!({
        "path": program,
        "invoked": first.invoked.display().to_string(),
        "argv": argv.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect::<Vec<_>>(),
        "chain": chain.iter().skip(1).map(|p| p.resolved.path.display().to_string()).collect::<Vec<_>>(),
    });
    let summary = format!(
        "{} (program {})",
        display_argv(&argv),
        super::escape_for_human(program.as_bytes())
    );
    let key = format!(
        "exec\0{program}\0{}",
        display_argv(&argv[1.min(argv.len())..])
    );
    Ok(Prepared::Decide(Box::new(Pending {
        notif: Some(n),
        kind: Kind::Exec,
        details,
        summary,
        key,
        verdict,
        perform: Box::new(move || Effect::ExecContinue(expect)),
        denied_errno: libc::EACCES,
        blocking: false,
        quiet_allow: false,
        by_command_line,
        started,
        pid,
    })))
}

trait AsFdRef {
    fn as_fd_ref(&self) -> std::os::fd::BorrowedFd<'_>;
}
impl AsFdRef for std::os::fd::OwnedFd {
    fn as_fd_ref(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self)
    }
}

/// `#!interpreter [arg]` of a file, parsed like the kernel does (first line, at most 255
/// bytes, interpreter up to the first blank, the rest one argument, trimmed).
fn shebang(r: &Resolved) -> Option<(PathBuf, Option<Vec<u8>>)> {
    let mut f = fs::File::open(format!("/proc/self/fd/{}", r.fd.as_raw_fd())).ok()?;
    let mut buf = [0u8; 256];
    let n = f.read(&mut buf).ok()?;
    let head = &buf[..n];
    if !head.starts_with(b"#!") {
        return None;
    }
    let line = head[2..].split(|&b| b == b'\n').next()?;
    let line = trim(line);
    let split = line.iter().position(|&b| b == b' ' || b == b'\t');
    let (interp, rest) = match split {
        Some(i) => (&line[..i], Some(trim(&line[i..]))),
        None => (line, None),
    };
    if interp.is_empty() {
        return None;
    }
    let arg = rest.filter(|r| !r.is_empty()).map(|r| r.to_vec());
    Some((PathBuf::from(OsStr::from_bytes(interp)), arg))
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// Environment variables that make the dynamic loader load native code into any program.
/// (`LD_LIBRARY_PATH` is not among them: build tools, cargo's test runner among them, point it
/// into the workspace all the time; code loaded through it must still be mapped executable,
/// which the `noexec` mounts of writable, non-exec trees refuse.)
pub const LOADER_VARIABLES: &[&str] = &["LD_PRELOAD", "LD_AUDIT", "GCONV_PATH"];

/// Does the environment make the dynamic loader load code from a tree the agent can write
/// (or from a relative path)? Returns why. Used before the exec and, by the guard, on the new
/// image's real environment.
pub fn loader_injection(envp: &[Vec<u8>], writable: &dyn Fn(&Path) -> bool) -> Option<String> {
    for entry in envp {
        let Some(eq) = entry.iter().position(|&b| b == b'=') else {
            continue;
        };
        let name = String::from_utf8_lossy(&entry[..eq]);
        if !LOADER_VARIABLES.contains(&name.as_ref()) {
            continue;
        }
        for item in entry[eq + 1..].split(|&b| b == b':' || b == b' ' || b == b'\t') {
            if item.is_empty() {
                continue;
            }
            let p = Path::new(OsStr::from_bytes(item));
            // A relative path is looked up from wherever the program runs.
            let bad = !p.is_absolute() || {
                let lexical = super::tracee::normalize(p);
                writable(&lexical) || std::fs::canonicalize(&lexical).is_ok_and(|c| writable(&c))
            };
            if bad {
                return Some(format!(
                    "{name} points the dynamic loader at {} (writable by the agent, or relative): native code the agent wrote would run inside the program",
                    super::escape_for_human(item)
                ));
            }
        }
    }
    None
}

/// Is this the ELF dynamic loader (run directly, it loads and runs its first argument)?
pub fn is_dynamic_loader(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.starts_with("ld-linux")
        || name.starts_with("ld-musl")
        || name == "ld.so"
        || name.starts_with("ld64.so")
}

/// What a direct `ld.so [options] PROGRAM [args]` invocation does.
#[derive(Debug, Default, PartialEq, Eq)]
struct LoaderCall {
    /// The program it loads and runs (None for `--list`, `--help`, ...).
    target: Option<Vec<u8>>,
    /// Libraries and search paths the options add (`--library-path`, `--preload`, `--audit`).
    paths: Vec<Vec<u8>>,
    /// An option we don't know: we can't tell what it takes, so the call is refused.
    unknown_option: Option<Vec<u8>>,
}

/// Parse a direct loader invocation like glibc's `ld.so` does.
fn loader_call(argv: &[Vec<u8>]) -> LoaderCall {
    const FLAGS: &[&[u8]] = &[
        b"--list",
        b"--verify",
        b"--help",
        b"--version",
        b"--list-tunables",
        b"--list-diagnostics",
    ];
    const PATH_VALUES: &[&[u8]] = &[b"--library-path", b"--preload", b"--audit"];
    const OTHER_VALUES: &[&[u8]] = &[
        b"--inhibit-rpath",
        b"--argv0",
        b"--glibc-hwcaps-prepend",
        b"--glibc-hwcaps-mask",
    ];
    let mut call = LoaderCall::default();
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        if a.as_slice() == b"--" {
            call.target = it.next().cloned();
            break;
        } else if PATH_VALUES.contains(&a.as_slice()) {
            if let Some(v) = it.next() {
                call.paths.extend(
                    v.split(|&b| b == b':' || b == b' ')
                        .filter(|p| !p.is_empty())
                        .map(<[u8]>::to_vec),
                );
            }
        } else if OTHER_VALUES.contains(&a.as_slice()) {
            it.next();
        } else if FLAGS.contains(&a.as_slice()) {
            continue;
        } else if a.starts_with(b"-") {
            call.unknown_option = Some(a.clone());
            break;
        } else {
            call.target = Some(a.clone());
            break;
        }
    }
    call
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_target_skips_options() {
        let v = |s: &[&str]| s.iter().map(|x| x.as_bytes().to_vec()).collect::<Vec<_>>();
        let loader_target = |a: &[Vec<u8>]| loader_call(a).target;
        let inhibit = loader_call(&v(&["ld.so", "--inhibit-rpath", "/usr/bin/true", "./evil"]));
        assert_eq!(inhibit.target, Some(b"./evil".to_vec()));
        let pre = loader_call(&v(&[
            "ld.so",
            "--preload",
            "./a.so:/x/b.so",
            "--audit",
            "c.so",
            "/usr/bin/true",
        ]));
        assert_eq!(pre.paths, v(&["./a.so", "/x/b.so", "c.so"]));
        assert_eq!(pre.target, Some(b"/usr/bin/true".to_vec()));
        assert_eq!(
            loader_call(&v(&["ld.so", "--new-thing", "x"])).unknown_option,
            Some(b"--new-thing".to_vec())
        );
        assert_eq!(
            loader_target(&v(&["ld.so", "./tool", "x"])),
            Some(b"./tool".to_vec())
        );
        assert_eq!(
            loader_target(&v(&["ld.so", "--library-path", "/x", "--", "./t"])),
            Some(b"./t".to_vec())
        );
        assert_eq!(loader_target(&v(&["ld.so", "--list"])), None);
        assert!(is_dynamic_loader(Path::new(
            "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
        )));
        assert!(!is_dynamic_loader(Path::new("/usr/bin/ls")));
    }
}
