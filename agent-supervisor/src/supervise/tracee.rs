//! Reading a trapped task's arguments and resolving its paths, as the agent sees them.
//!
//! Everything read here is untrusted and may change under us (another agent thread can
//! rewrite the memory at any time). So: strings are copied once and only the copy is used;
//! paths are resolved by the kernel with `openat2(RESOLVE_IN_ROOT)` against the agent's own
//! root (its mount namespace, masks included) and the result is an `O_PATH` fd to the real
//! object, which is what the supervisor then acts on; and every notification is re-validated
//! (`SECCOMP_IOCTL_NOTIF_ID_VALID`) after reading, before acting.
#![forbid(unsafe_code)]

use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use crate::sys;

/// Longest path we read (PATH_MAX).
pub const PATH_MAX: usize = 4096;
/// Most argv entries / bytes we read for an exec (the kernel's own limit is larger; beyond
/// this the exec is refused with E2BIG rather than decided on a truncated command line).
pub const ARGV_MAX_ENTRIES: usize = 8192;
pub const ARGV_MAX_BYTES: usize = 1 << 20;

/// The trapped task, with what `/proc/<tid>/status` says about it (read once).
#[derive(Debug, Clone, Copy)]
pub struct Tracee {
    /// Thread id (supervisor's PID namespace).
    pub tid: i32,
    /// Thread-group id (the process), supervisor's namespace.
    pub tgid: i32,
    /// Thread-group and thread id inside the agent's PID namespace.
    pub ns_tgid: i32,
    pub ns_tid: i32,
    /// File-creation mask.
    pub umask: u32,
}

/// An exec's path, argv and envp.
pub type ExecArgs = (Vec<u8>, Vec<Vec<u8>>, Vec<Vec<u8>>);

/// A path resolved in the agent's view.
#[derive(Debug)]
pub struct Resolved {
    /// `O_PATH` fd to the object the kernel found (symlinks followed or not, as asked).
    pub fd: OwnedFd,
    /// The real absolute path of that object, as the agent sees it.
    pub path: PathBuf,
    /// The absolute path as the agent wrote it (lexically joined to cwd/dirfd), for display.
    pub lexical: PathBuf,
}

impl Tracee {
    /// Look the task up (one read of `/proc/<tid>/status`); ESRCH if it is gone.
    pub fn load(tid: u32) -> io::Result<Tracee> {
        let tid = tid as i32;
        let status = sys::read_proc(format!("/proc/{tid}/status"))?;
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
        };
        let last = |key: &str| {
            field(key)
                .and_then(|v| v.split_whitespace().last())
                .and_then(|v| v.parse().ok())
        };
        let gone = || io::Error::from_raw_os_error(libc::ESRCH);
        Ok(Tracee {
            tid,
            tgid: field("Tgid:")
                .and_then(|v| v.parse().ok())
                .ok_or_else(gone)?,
            ns_tgid: last("NStgid:").ok_or_else(gone)?,
            ns_tid: last("NSpid:").ok_or_else(gone)?,
            umask: field("Umask:")
                .and_then(|v| u32::from_str_radix(v, 8).ok())
                .unwrap_or(0o022),
        })
    }

    fn proc(&self, rest: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{rest}", self.tid))
    }

    /// Copy `len` bytes at `addr`.
    pub fn read_bytes(&self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let mut off = 0;
        while off < len {
            let n = sys::read_process_memory(self.tid, addr + off as u64, &mut buf[off..])?;
            if n == 0 {
                return Err(io::Error::from_raw_os_error(libc::EFAULT));
            }
            off += n;
        }
        Ok(buf)
    }

    /// Copy a NUL-terminated string of at most `max` bytes (without the NUL).
    pub fn read_cstr(&self, addr: u64, max: usize) -> io::Result<Vec<u8>> {
        Pages::new(self).cstr(addr, max)
    }

    /// An exec's path, argv and envp, read through one page cache (the arrays and their
    /// strings usually share the stack's top pages).
    pub fn read_exec(&self, path: u64, argv: u64, envp: u64) -> io::Result<ExecArgs> {
        Pages::new(self).exec(path, argv, envp)
    }

    /// An fd of the agent's, duplicated into the supervisor (same open file description).
    pub fn dup_fd(&self, fd: i32) -> io::Result<OwnedFd> {
        let pidfd = sys::pidfd_open(self.tgid)?;
        sys::pidfd_getfd(pidfd.as_fd(), fd)
    }

    fn root(&self) -> io::Result<OwnedFd> {
        fs::File::open(self.proc("root")).map(OwnedFd::from)
    }

    /// The absolute path (agent's view) of the agent's cwd or of directory fd `dirfd`.
    fn base_dir(&self, dirfd: i32) -> io::Result<PathBuf> {
        let link = if dirfd == libc::AT_FDCWD {
            self.proc("cwd")
        } else {
            self.proc(&format!("fd/{dirfd}"))
        };
        let p = fs::read_link(link)?;
        if !p.is_absolute() {
            // pipe:[..], socket:[..], anon_inode:..: not a directory.
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        Ok(p)
    }

    /// Resolve `path` (as passed to a `*at` call with `dirfd`) in the agent's root.
    /// `follow`: follow a final symlink. `empty_path`: `AT_EMPTY_PATH` was given.
    pub fn resolve(
        &self,
        dirfd: i32,
        path: &[u8],
        follow: bool,
        empty_path: bool,
    ) -> io::Result<Resolved> {
        if path.is_empty() {
            if !empty_path {
                return Err(io::Error::from_raw_os_error(libc::ENOENT));
            }
            let fd = self.dup_fd(dirfd)?;
            let p = fd_path(&fd)?;
            return Ok(Resolved {
                fd,
                path: p.clone(),
                lexical: p,
            });
        }
        let (ns_tgid, ns_tid) = (self.ns_tgid, self.ns_tid);
        let raw = Path::new(OsStr::from_bytes(path));
        let lexical = if raw.is_absolute() {
            normalize(raw)
        } else {
            normalize(&self.base_dir(dirfd)?.join(raw))
        };
        let mut translated = translate_proc_self(&lexical, ns_tgid, ns_tid);
        // The agent's own magic links (RESOLVE_IN_ROOT refuses magic links, and the policy must
        // see the real file, not the link): `/proc/<own pid>/fd/N` is the fd's own object;
        // `.../fd/N/rest`, `.../cwd/rest` and `.../root/rest` continue from where they point.
        match own_magic_link(&translated, ns_tgid, ns_tid) {
            Some((MagicLink::Fd(fd), None)) => {
                let fd = self.dup_fd(fd)?;
                let p = fd_path(&fd)?;
                return Ok(Resolved {
                    fd,
                    path: p,
                    lexical,
                });
            }
            Some((link, rest)) => {
                let base = match link {
                    MagicLink::Fd(fd) => self.base_dir(fd)?,
                    MagicLink::Cwd => self.base_dir(libc::AT_FDCWD)?,
                    MagicLink::Root => PathBuf::from("/"),
                };
                translated = normalize(&base.join(rest.unwrap_or_default()));
            }
            None => {}
        }
        let root = self.root()?;
        let c = CString::new(translated.into_os_string().into_vec())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let flags = libc::O_PATH | libc::O_CLOEXEC | if follow { 0 } else { libc::O_NOFOLLOW };
        let fd = sys::openat2(root.as_fd(), &c, flags, 0, sys::RESOLVE_IN_ROOT)?;
        let p = fd_path(&fd)?;
        Ok(Resolved {
            fd,
            path: p,
            lexical,
        })
    }

    /// Resolve the parent directory of `path` and return it with the final component, for
    /// calls that may create the final component (`O_CREAT`, `bind` of a unix socket).
    pub fn resolve_parent(&self, dirfd: i32, path: &[u8]) -> io::Result<(Resolved, OsString)> {
        let raw = Path::new(OsStr::from_bytes(path));
        let lexical = if raw.is_absolute() {
            normalize(raw)
        } else {
            normalize(&self.base_dir(dirfd)?.join(raw))
        };
        let name = lexical
            .file_name()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EISDIR))?
            .to_os_string();
        let parent = lexical.parent().unwrap_or(Path::new("/"));
        let dir = self.resolve(libc::AT_FDCWD, parent.as_os_str().as_bytes(), true, false)?;
        Ok((dir, name))
    }
}

/// The path of one of our own fds, as the kernel prints it.
pub fn fd_path(fd: &OwnedFd) -> io::Result<PathBuf> {
    fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Lexical normalisation: drop `.`, fold `..`, no symlink resolution (the kernel does that).
/// Used for display and for recognising `/proc/self`; never as the policy's path.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    out
}

/// `/proc/self/...` → `/proc/<tgid>/...`, `/proc/thread-self/...` → `/proc/<tgid>/task/<tid>/...`
/// (the supervisor is not in the agent's PID namespace, so `self` would not resolve), and the
/// sandbox's /dev symlinks into them: `/dev/fd/...`, `/dev/stdin`, `/dev/stdout`, `/dev/stderr`.
fn translate_proc_self(p: &Path, tgid: i32, tid: i32) -> PathBuf {
    for (dev, fd) in [("/dev/stdin", 0), ("/dev/stdout", 1), ("/dev/stderr", 2)] {
        if let Ok(rest) = p.strip_prefix(dev) {
            return Path::new(&format!("/proc/{tgid}/fd/{fd}")).join(rest);
        }
    }
    if let Ok(rest) = p.strip_prefix("/dev/fd") {
        return Path::new(&format!("/proc/{tgid}/fd")).join(rest);
    }
    if let Ok(rest) = p.strip_prefix("/proc/self") {
        return Path::new(&format!("/proc/{tgid}")).join(rest);
    }
    if let Ok(rest) = p.strip_prefix("/proc/thread-self") {
        return Path::new(&format!("/proc/{tgid}/task/{tid}")).join(rest);
    }
    p.to_path_buf()
}

/// One of the agent's own per-process magic links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MagicLink {
    Fd(i32),
    Cwd,
    Root,
}

/// `/proc/<tgid>[/task/<tid>]/{fd/N,cwd,root}[/rest]` for the agent's own process → the link and
/// the rest of the path.
fn own_magic_link(p: &Path, tgid: i32, tid: i32) -> Option<(MagicLink, Option<PathBuf>)> {
    let proc_dir = Path::new("/proc").join(tgid.to_string());
    let task_dir = proc_dir.join("task").join(tid.to_string());
    let rest = p
        .strip_prefix(&task_dir)
        .or_else(|_| p.strip_prefix(&proc_dir))
        .ok()?;
    let mut comps = rest.components();
    let link = match comps.next()?.as_os_str().to_str()? {
        "fd" => MagicLink::Fd(comps.next()?.as_os_str().to_str()?.parse().ok()?),
        "cwd" => MagicLink::Cwd,
        "root" => MagicLink::Root,
        _ => return None,
    };
    let rest: PathBuf = comps.collect();
    Some((link, (!rest.as_os_str().is_empty()).then_some(rest)))
}

/// The tracee's memory read a page at a time, the last page kept: an exec's argv and envp
/// strings (and their pointer arrays) usually sit next to each other, so a whole environment
/// costs a few reads instead of two per string. A read never crosses a page (mappings are
/// whole pages, so one that starts readable is readable to its end), so it never faults on an
/// unmapped page after what is needed. Each page is read once: a string that another thread
/// rewrites meanwhile is seen as it was at that read, never half old, half new.
struct Pages<'a> {
    t: &'a Tracee,
    /// The pages read so far: (address, how much of it could be read, bytes). An argv or
    /// envp array and its strings are usually on different pages, so one page alone would be
    /// read again for every string.
    pages: Vec<(u64, usize, Box<[u8; PAGE]>)>,
    /// The slot the next new page replaces once all are used.
    next: usize,
    /// `process_vm_readv` calls made.
    reads: usize,
}

const PAGE: usize = 4096;
/// Pages kept at once.
const PAGES: usize = 4;

impl<'a> Pages<'a> {
    fn new(t: &'a Tracee) -> Pages<'a> {
        Pages {
            t,
            pages: Vec::new(),
            next: 0,
            reads: 0,
        }
    }

    /// The bytes from `addr` to the end of its page (or of what could be read of it).
    fn at(&mut self, addr: u64) -> io::Result<&[u8]> {
        let base = addr & !(PAGE as u64 - 1);
        let off = (addr - base) as usize;
        let cached = self.pages.iter().position(|(b, _, _)| *b == base);
        let slot = match cached {
            Some(slot) if off < self.pages[slot].1 => slot,
            _ => {
                let slot = match cached {
                    // Read short before: try again.
                    Some(slot) => slot,
                    None if self.pages.len() < PAGES => {
                        self.pages.push((u64::MAX, 0, Box::new([0u8; PAGE])));
                        self.pages.len() - 1
                    }
                    None => {
                        let slot = self.next;
                        self.next = (self.next + 1) % PAGES;
                        slot
                    }
                };
                let page = &mut self.pages[slot];
                page.0 = u64::MAX;
                self.reads += 1;
                let n = sys::read_process_memory(self.t.tid, base, &mut page.2[..])?;
                if n <= off {
                    return Err(io::Error::from_raw_os_error(libc::EFAULT));
                }
                (page.0, page.1) = (base, n);
                slot
            }
        };
        let (_, len, buf) = &self.pages[slot];
        Ok(&buf[off..*len])
    }

    /// The 8-byte word at `addr` (native endianness).
    fn u64_at(&mut self, addr: u64) -> io::Result<u64> {
        let bytes = self.at(addr)?;
        let word: [u8; 8] = match bytes.get(..8) {
            Some(b) => b.try_into().expect("8 bytes"),
            // Across a page boundary (an unaligned array): read it on its own.
            None => self
                .t
                .read_bytes(addr, 8)?
                .try_into()
                .expect("read_bytes returns what was asked"),
        };
        Ok(u64::from_ne_bytes(word))
    }

    /// A NUL-terminated string of at most `max` bytes at `addr` (without the NUL).
    fn cstr(&mut self, addr: u64, max: usize) -> io::Result<Vec<u8>> {
        if addr == 0 {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        let mut out = Vec::new();
        let mut cur = addr;
        while out.len() < max {
            let want = max + 1 - out.len();
            let chunk = self.at(cur)?;
            let chunk = &chunk[..chunk.len().min(want)];
            if let Some(nul) = chunk.iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..nul]);
                return Ok(out);
            }
            out.extend_from_slice(chunk);
            cur += chunk.len() as u64;
        }
        Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG))
    }

    /// An exec's path, argv and envp.
    fn exec(&mut self, path: u64, argv: u64, envp: u64) -> io::Result<ExecArgs> {
        Ok((
            self.cstr(path, PATH_MAX)?,
            self.argv(argv)?,
            self.argv(envp)?,
        ))
    }

    /// A NULL-terminated array of string pointers at `addr` (argv, envp; empty for NULL).
    fn argv(&mut self, addr: u64) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        if addr == 0 {
            return Ok(out);
        }
        let mut total = 0;
        for i in 0..ARGV_MAX_ENTRIES {
            let ptr = self.u64_at(addr + (i as u64) * 8)?;
            if ptr == 0 {
                return Ok(out);
            }
            let s = self.cstr(ptr, ARGV_MAX_BYTES)?;
            total += s.len() + 1;
            if total > ARGV_MAX_BYTES {
                return Err(io::Error::from_raw_os_error(libc::E2BIG));
            }
            out.push(s);
        }
        Err(io::Error::from_raw_os_error(libc::E2BIG))
    }
}

#[cfg(test)]
mod tests {
    fn this_process() -> Tracee {
        let pid = std::process::id() as i32;
        Tracee {
            tid: pid,
            tgid: pid,
            ns_tgid: pid,
            ns_tid: pid,
            umask: 0o022,
        }
    }

    /// An offset in `buf` where a new page starts, with `before` bytes of `buf` before it.
    fn page_boundary(buf: &[u8], before: usize) -> usize {
        let start = buf.as_ptr() as usize;
        (start + before).next_multiple_of(PAGE) - start
    }

    /// Strings and pointer arrays across page boundaries (an unaligned pointer straddling
    /// one, too) read exactly as they are; limits still hold.
    #[test]
    fn memory_is_read_across_pages_exactly() {
        let t = this_process();
        let mut buf = vec![0u8; 4 * PAGE];
        let b = page_boundary(&buf, 100);
        // A string across the boundary.
        let text = b"a string that crosses a page boundary";
        buf[b - 10..b - 10 + text.len()].copy_from_slice(text);
        let base = buf.as_ptr() as u64;
        let at = |i: usize| base + i as u64;
        assert_eq!(t.read_cstr(at(b - 10), PATH_MAX).unwrap(), text.to_vec());
        assert_eq!(
            t.read_cstr(at(b - 10), 5).unwrap_err().raw_os_error(),
            Some(libc::ENAMETOOLONG)
        );
        // Three strings, and an argv whose second pointer straddles the next boundary.
        let strings = [&b"first"[..], b"second", b""];
        let mut ptrs = Vec::new();
        let mut pos = b + 200;
        for s in strings {
            buf[pos..pos + s.len()].copy_from_slice(s);
            buf[pos + s.len()] = 0;
            ptrs.push(at(pos));
            pos += s.len() + 1;
        }
        ptrs.push(0);
        let b2 = b + PAGE;
        let arr = b2 - 12; // pointer 0 before the boundary, pointer 1 across it
        for (i, p) in ptrs.iter().enumerate() {
            buf[arr + i * 8..arr + i * 8 + 8].copy_from_slice(&p.to_ne_bytes());
        }
        let argv = Pages::new(&t).argv(at(arr)).unwrap();
        assert_eq!(argv, strings.iter().map(|s| s.to_vec()).collect::<Vec<_>>());
        assert!(Pages::new(&t).argv(0).unwrap().is_empty());
        assert_eq!(
            t.read_cstr(0, PATH_MAX).unwrap_err().raw_os_error(),
            Some(libc::EFAULT)
        );
    }

    /// An environment of 60 strings on one page, its pointer array on another: two reads of
    /// the agent's memory, not one per string (a single cached page read each page again for
    /// every string: 120 reads).
    #[test]
    fn an_array_and_its_strings_are_read_once_each() {
        let t = this_process();
        let mut buf = vec![0u8; 4 * PAGE];
        let strings_at = page_boundary(&buf, 0);
        let array_at = strings_at + PAGE;
        let base = buf.as_ptr() as u64;
        let mut pos = strings_at;
        let mut expected = Vec::new();
        for i in 0..60 {
            let s = format!("VAR{i}=value");
            buf[pos..pos + s.len()].copy_from_slice(s.as_bytes());
            buf[array_at + i * 8..array_at + i * 8 + 8]
                .copy_from_slice(&(base + pos as u64).to_ne_bytes());
            pos += s.len() + 1;
            expected.push(s.into_bytes());
        }
        let mut pages = Pages::new(&t);
        let mut got = Vec::new();
        for i in 0..=60u64 {
            match pages.u64_at(base + array_at as u64 + i * 8).unwrap() {
                0 => break,
                ptr => got.push(pages.cstr(ptr, PATH_MAX).unwrap()),
            }
        }
        assert_eq!(got, expected);
        assert_eq!(pages.reads, 2);
        assert_eq!(
            Pages::new(&t).argv(base + array_at as u64).unwrap(),
            expected
        );
        // An exec's path, argv and envp (here the same array) share the cache too.
        let mut pages = Pages::new(&t);
        let array = base + array_at as u64;
        let (path, argv, envp) = pages.exec(base + strings_at as u64, array, array).unwrap();
        assert_eq!((path, &argv), (expected[0].clone(), &expected));
        assert_eq!(envp, expected);
        assert_eq!(pages.reads, 2);
    }

    use super::*;

    #[test]
    fn normalize_folds_dots() {
        assert_eq!(
            normalize(Path::new("/a/./b/../c//d/")),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(normalize(Path::new("/../..")), PathBuf::from("/"));
    }

    #[test]
    fn proc_self_is_translated() {
        assert_eq!(
            translate_proc_self(Path::new("/proc/self/fd/3"), 7, 9),
            PathBuf::from("/proc/7/fd/3")
        );
        assert_eq!(
            translate_proc_self(Path::new("/proc/thread-self/x"), 7, 9),
            PathBuf::from("/proc/7/task/9/x")
        );
        assert_eq!(
            own_magic_link(Path::new("/proc/7/fd/3"), 7, 9),
            Some((MagicLink::Fd(3), None))
        );
        assert_eq!(own_magic_link(Path::new("/proc/8/fd/3"), 7, 9), None);
        assert_eq!(
            own_magic_link(Path::new("/proc/7/fd/3/x"), 7, 9),
            Some((MagicLink::Fd(3), Some(PathBuf::from("x"))))
        );
        assert_eq!(
            own_magic_link(Path::new("/proc/7/task/9/cwd/a/b"), 7, 9),
            Some((MagicLink::Cwd, Some(PathBuf::from("a/b"))))
        );
        assert_eq!(
            own_magic_link(Path::new("/proc/7/root"), 7, 9),
            Some((MagicLink::Root, None))
        );
        assert_eq!(own_magic_link(Path::new("/proc/7/status"), 7, 9), None);
        assert_eq!(
            translate_proc_self(Path::new("/dev/fd/4"), 7, 9),
            PathBuf::from("/proc/7/fd/4")
        );
        assert_eq!(
            translate_proc_self(Path::new("/dev/stdout"), 7, 9),
            PathBuf::from("/proc/7/fd/1")
        );
    }
}
