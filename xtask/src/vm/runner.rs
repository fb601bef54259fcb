//! The script the guest runs in the host's root: the test executables, one after another.
//!
//! It is written on the host (under the target directory, which the guest sees read-only
//! at the same path) and named on the kernel command line. It runs under the host's
//! `/bin/sh`, with the host's tools, as root, and prints on the results port (`/dev/ttyS1`):
//!
//! ```text
//! @@vm-test kernel RELEASE                 uname -r
//! @@vm-test lsm LIST                       /sys/kernel/security/lsm
//! @@vm-test landlock-abi N                 landlock_create_ruleset(NULL, 0, VERSION)
//! @@vm-test begin NAME
//! …libtest output…
//! @@vm-test skip WHY                       one per line of the tests' skipped.txt
//! @@vm-test end NAME exit=N seconds=N
//! @@vm-test done
//! ```
//!
//! Each executable runs like `cargo test` runs it (in its package's directory, with
//! `CARGO_MANIFEST_DIR` set) plus `--test-threads=1 --color=never`, under `timeout`.
//! `CARGO_TARGET_TMPDIR` (compiled into the tests, where `skip_unless!` records skips) is on
//! the read-only share, so a tmpfs goes over it first.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::test_binaries::TestBinary;

/// The environment the tests get: a login-like root environment, nothing from the host's.
const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("USER", "root"),
    ("LOGNAME", "root"),
    ("SHELL", "/bin/sh"),
    ("TERM", "dumb"),
    ("LANG", "C.UTF-8"),
    // tests/daemon.rs's load test: its figures come from the host (README); in an emulated
    // guest, with one test at a time, it checks the same properties (every action decided,
    // every ask answered, nothing lost) at a size that fits the executable's time limit.
    ("AS_LOAD_SESSIONS", "8"),
    // tests/lifecycle.rs: timings are measured on the host (the guests are emulated).
    ("AS_VM_GUEST", "1"),
    ("AS_LOAD_ACTIONS", "200"),
];

/// Prints the Landlock ABI version (or why there is none): the raw syscall through Python's
/// ctypes, since the host root has python3 and no other way to ask from a shell.
const LANDLOCK_PROBE: &str = "import ctypes, os\n\
    libc = ctypes.CDLL(None, use_errno=True)\n\
    abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, VERSION)\n\
    print(abi if abi >= 0 else 'none (' + os.strerror(ctypes.get_errno()) + ')')";

/// The guest script for `binaries`, `target_tmpdir` being the tests' `CARGO_TARGET_TMPDIR`.
pub fn script(binaries: &[TestBinary], target_tmpdir: &Path, per_binary: Duration) -> String {
    let mut s = String::new();
    s.push_str(
        "#!/bin/sh\n\
         # Written by `cargo xtask vm-test` (xtask/src/vm/runner.rs); run inside a guest.\n\
         exec </dev/null >/dev/ttyS1 2>&1\n\
         say() { printf '@@vm-test %s\\n' \"$*\"; }\n",
    );
    for (key, value) in ENVIRONMENT {
        let _ = writeln!(s, "export {key}={}", quote(value));
    }
    s.push_str(
        "say kernel \"$(uname -r)\"\n\
         say lsm \"$(cat /sys/kernel/security/lsm 2>&1)\"\n",
    );
    let _ = writeln!(
        s,
        "say landlock-abi \"$(python3 -c {} 2>&1 | tail -n 1)\"",
        quote(LANDLOCK_PROBE)
    );
    let tmpdir = quote(&target_tmpdir.to_string_lossy());
    let _ = writeln!(
        s,
        "mount -t tmpfs -o mode=0755 tmpfs {tmpdir} || say note cannot mount a tmpfs on {tmpdir}"
    );
    for binary in binaries {
        let dir = quote(&binary.package_dir.to_string_lossy());
        let _ = write!(
            s,
            "\nsay begin {name}\n\
             rm -f {tmpdir}/skipped.txt\n\
             start=$(date +%s)\n\
             cd {dir} && CARGO_MANIFEST_DIR={dir} timeout -k 10 {secs} {exe} --test-threads=1 --color=never\n\
             status=$?\n\
             end=$(date +%s)\n\
             if [ -f {tmpdir}/skipped.txt ]; then sed 's/^/@@vm-test skip /' {tmpdir}/skipped.txt; fi\n\
             say end {name} exit=$status seconds=$((end - start))\n",
            name = binary.name,
            secs = per_binary.as_secs().max(1),
            exe = quote(&binary.executable.to_string_lossy()),
        );
    }
    s.push_str("\nsay done\n");
    s
}

/// `text` as one single-quoted shell word.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn the_script_runs_each_binary_between_markers() {
        let binaries = [
            TestBinary {
                name: "bin:agent-supervisor".into(),
                executable: PathBuf::from("/w/target/debug/deps/agent_supervisor-1"),
                package_dir: PathBuf::from("/w/agent-supervisor"),
            },
            TestBinary {
                name: "attacks".into(),
                executable: PathBuf::from("/w/target/debug/deps/attacks-2"),
                package_dir: PathBuf::from("/w/agent-supervisor"),
            },
        ];
        let s = script(
            &binaries,
            Path::new("/w/target/tmp"),
            Duration::from_secs(600),
        );
        assert!(s.contains("say begin bin:agent-supervisor\n"));
        assert!(s.contains(
            "cd '/w/agent-supervisor' && CARGO_MANIFEST_DIR='/w/agent-supervisor' timeout -k 10 600 \
             '/w/target/debug/deps/attacks-2' --test-threads=1 --color=never\n"
        ));
        assert!(s.contains("say end attacks exit=$status"));
        assert!(s.contains("mount -t tmpfs -o mode=0755 tmpfs '/w/target/tmp'"));
        assert!(s.ends_with("say done\n"));
        assert!(s.find("begin bin:agent-supervisor") < s.find("begin attacks"));
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
