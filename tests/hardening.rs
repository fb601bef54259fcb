//! Regression tests for holes found in review: each proves, from outside the sandbox, that a
//! hostile agent does not get what it tries for, and that the legitimate use still works.
mod common;
use common::NoCi;

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use common::{is_root, Workspace};

const LIMIT: Duration = Duration::from_secs(20);

/// A uid-0 agent (the supervisor runs as root) has no capabilities, but file permissions let
/// the owner open root-owned device nodes (disks, consoles, loop devices): the private /dev
/// holds only the harmless ones.
#[test]
fn host_device_nodes_are_not_reachable() {
    use std::os::unix::fs::FileTypeExt;
    skip_unless!(
        is_root(),
        "needs root: only a uid-0 agent owns the host's device nodes"
    );
    let safe = ["null", "zero", "full", "random", "urandom", "tty", "ptmx"];
    let host_nodes: Vec<String> = std::fs::read_dir("/dev")
        .expect("/dev")
        .flatten()
        .filter(|e| {
            e.file_type()
                .is_ok_and(|t| t.is_block_device() || t.is_char_device())
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !safe.contains(&n.as_str()))
        .collect();
    // One the host can really read (so the test is live), e.g. a loop device or /dev/vcs.
    let readable = host_nodes.iter().find(|n| {
        let mut b = [0u8; 1];
        std::fs::File::open(format!("/dev/{n}"))
            .and_then(|mut f| f.read(&mut b))
            .is_ok()
    });
    skip_unless!(
        readable.is_some(),
        "no host device node is readable here to try from the sandbox"
    );
    let readable = readable.unwrap().clone();
    let ws = Workspace::new("devnodes");
    let script = format!(
        "head -c 1 /dev/{readable} > got.bin 2>/dev/null; echo $? > got.status; ls /dev > devlist.txt; head -c 16 /dev/urandom > rand.bin; echo ok > /dev/null && echo null-ok > null.txt"
    );
    let r = ws.run(&["--headless"], &["/bin/sh", "-c", &script], LIMIT);
    assert!(!r.timed_out, "{r:?}");
    assert_ne!(
        ws.read("got.status").as_deref(),
        Some("0\n"),
        "the agent read /dev/{readable}"
    );
    assert!(
        std::fs::read(ws.path("got.bin"))
            .unwrap_or_default()
            .is_empty(),
        "the agent got bytes of /dev/{readable}"
    );
    let devs = ws.read("devlist.txt").expect("ls /dev ran");
    for n in &host_nodes {
        assert!(
            !devs.lines().any(|l| l == n),
            "/dev/{n} is visible in the sandbox: {devs}"
        );
    }
    for needed in ["null", "zero", "urandom", "tty", "pts", "shm", "fd"] {
        assert!(
            devs.lines().any(|l| l == needed),
            "/dev/{needed} missing in the sandbox: {devs}"
        );
    }
    assert_eq!(
        std::fs::read(ws.path("rand.bin"))
            .map(|b| b.len())
            .unwrap_or(0),
        16,
        "/dev/urandom works"
    );
    assert_eq!(
        ws.read("null.txt").as_deref(),
        Some("null-ok\n"),
        "/dev/null works"
    );
}

/// The supervisor performs connects itself, outside the agent's Landlock domain: it must apply
/// the abstract-unix-socket scope itself. A host service on an abstract socket is not
/// reachable; an abstract socket of the agent's own is.
#[test]
fn abstract_unix_sockets_of_the_host_are_not_reachable() {
    skip_unless!(
        std::path::Path::new("/usr/bin/python3").exists(),
        "needs /usr/bin/python3"
    );
    let ws = Workspace::new("abstract");
    let name = format!("as-test-host-{}", std::process::id());
    let addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            name.as_bytes(),
        )
        .expect("abstract addr");
    let host = UnixListener::bind_addr(&addr).expect("host listener");
    host.set_nonblocking(true).expect("nonblocking");
    let script = format!(
        r#"
import socket
s = socket.socket(socket.AF_UNIX)
try:
    s.connect("\0{name}")
    open("host.txt", "w").write("connected")
except OSError as e:
    open("host.txt", "w").write("refused %d" % e.errno)
l = socket.socket(socket.AF_UNIX); l.bind("\0{name}-inner"); l.listen(1)
c = socket.socket(socket.AF_UNIX)
c.connect("\0{name}-inner")
a, _ = l.accept()
c.send(b"hello"); open("inner.txt", "w").write(a.recv(5).decode())
"#
    );
    let r = ws.run(&["--headless"], &["/usr/bin/python3", "-c", &script], LIMIT);
    assert!(!r.timed_out, "{r:?}");
    assert!(
        host.accept().is_err(),
        "the host's abstract socket was reached from the sandbox"
    );
    assert!(
        ws.read("host.txt")
            .is_some_and(|s| s.starts_with("refused")),
        "{:?} {r:?}",
        ws.read("host.txt")
    );
    assert_eq!(
        ws.read("inner.txt").as_deref(),
        Some("hello"),
        "the agent's own abstract socket works: {r:?}"
    );
    let denied = ws.decisions("connect");
    assert!(
        denied.iter().any(|d| d["decision"] == "deny"
            && d["action"]["destination"]
                .as_str()
                .is_some_and(|s| s.contains(&name))),
        "the denial is audited: {denied:?}"
    );
}

/// The agent's own unix sockets keep working (Python's multiprocessing and many tools talk to
/// themselves over path sockets in /tmp or the workspace): the kernel's sock_diag says which
/// socket is bound to the file, and it is the session's.
#[test]
fn the_agents_own_unix_path_sockets_work() {
    skip_unless!(
        std::path::Path::new("/usr/bin/python3").exists(),
        "needs /usr/bin/python3"
    );
    let ws = Workspace::new("own-unix");
    let tmp_sock = format!("/tmp/as-test-own-{}.sock", std::process::id());
    let script = format!(
        r#"
import os, socket
out = []
for path in ("own.sock", "{tmp_sock}"):
    l = socket.socket(socket.AF_UNIX); l.bind(path); l.listen(1)
    c = socket.socket(socket.AF_UNIX); c.connect(path)
    a, _ = l.accept(); c.send(b"ping"); out.append(a.recv(4).decode())
    os.unlink(path)
open("result.txt", "w").write(",".join(out))
"#
    );
    let r = ws.run(&["--headless"], &["/usr/bin/python3", "-c", &script], LIMIT);
    let _ = std::fs::remove_file(&tmp_sock);
    assert!(!r.timed_out, "{r:?}");
    assert_eq!(ws.read("result.txt").as_deref(), Some("ping,ping"), "{r:?}");
    let connects = ws.decisions("connect");
    assert!(
        connects.iter().filter(|d| d["decision"] == "allow").count() >= 2,
        "both connects are decided and audited as the session's own: {connects:?}"
    );
}

/// Git runs hooks and programs named in its config on the host, the next time the user runs
/// git: under the default policy the agent can commit, but not change those.
#[test]
fn git_hooks_and_config_are_read_only_but_commits_work() {
    skip_unless!(
        std::process::Command::new("git")
            .arg("--version")
            .output()
            .is_ok(),
        "needs git"
    );
    let ws = Workspace::new("git-hooks");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(&ws.dir)
            .output()
            .expect("git runs")
    };
    assert!(git(&["init", "-q"]).status.success());
    let config_before = std::fs::read_to_string(ws.path(".git/config")).expect("config");
    let script = "git -c user.name=agent -c user.email=agent@example.invalid commit -q --allow-empty -m from-agent; \
                  echo 'touch /tmp/pwned' > .git/hooks/pre-commit; chmod +x .git/hooks/pre-commit; \
                  git config core.hooksPath /tmp/evil-hooks; \
                  printf '[core]\\n\\tfsmonitor = /tmp/evil\\n' >> .git/config; true";
    let r = ws.run(
        &["--headless", "--policy", "preset:sandboxed"],
        &["/bin/sh", "-c", script],
        LIMIT,
    );
    assert!(!r.timed_out, "{r:?}");
    let log = git(&["log", "--format=%s"]);
    assert_eq!(
        String::from_utf8_lossy(&log.stdout).trim(),
        "from-agent",
        "the agent's commit landed: {r:?}"
    );
    assert!(
        !ws.path(".git/hooks/pre-commit").exists(),
        "the agent installed a hook: {r:?}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path(".git/config")).expect("config"),
        config_before,
        "the agent changed the git config: {r:?}"
    );
}

/// An audit log that can't be written (here: every write fails with ENOSPC, as on a full disk)
/// is a loud error, its records go to stderr instead of being lost, every later action of the
/// agent is denied, and the supervisor exits with its own error code.
#[test]
fn an_unwritable_audit_log_fails_closed_and_loses_nothing() {
    skip_unless!(
        std::path::Path::new("/dev/full").exists(),
        "needs /dev/full"
    );
    let ws = Workspace::new("audit-full");
    let mut c = common::supervisor_command();
    // Spin in the shell (no exec) until the writer has met the full disk, then try a program.
    c.args(["run", "-q", "--headless", "--audit", "/dev/full", "--", "/bin/sh", "-c"])
        .arg("i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; /usr/bin/touch ran; echo done > shell-ran")
        .current_dir(&ws.dir)
        .no_ci();
    let r = common::run_with_timeout(c, LIMIT);
    assert!(!r.timed_out, "{r:?}");
    // (Whether the shell itself gets to run depends on how fast the writer meets the full disk:
    // its exec may already be denied. What may never happen is an action allowed after.)
    assert!(
        !ws.path("ran").exists(),
        "an action was allowed after the audit log failed: {r:?}"
    );
    assert!(
        r.stderr.contains("cannot be written"),
        "the failure is loud: {r:?}"
    );
    assert!(
        r.stderr.contains("\"kind\":\"exec\"") && r.stderr.contains("audit-unavailable"),
        "the records that could not be written are on stderr: {r:?}"
    );
    assert_eq!(
        r.code,
        Some(125),
        "the supervisor reports its own failure: {r:?}"
    );
}

/// `run --require` refuses to start exactly when `doctor` (its own probes) says the required
/// protection is missing here, and then the agent never runs.
#[test]
fn require_refuses_to_start_exactly_when_doctor_says_the_protection_is_missing() {
    let doctor = {
        let mut c = common::supervisor_command();
        c.args(["doctor", "--json", "--policy", "preset:sandboxed"]);
        common::run_with_timeout(c, LIMIT)
    };
    let report: serde_json::Value = serde_json::from_str(&doctor.stdout).expect("doctor --json");
    for (what, usable) in [
        (
            "lsm",
            report["bpf_lsm"]["usable"]["works"]
                .as_bool()
                .expect("bpf_lsm.usable"),
        ),
        (
            "ebpf",
            report["network_backstop"]["works"]
                .as_bool()
                .expect("network_backstop"),
        ),
        (
            // Fully enforcing the trees: doctor's "[filesystem] trees" protection (every
            // Landlock right the supervisor handles; ABI 6), not just some Landlock.
            "landlock",
            report["policy"]["protections"]
                .as_array()
                .expect("protections")
                .iter()
                .find(|p| p["protection"] == "[filesystem] trees")
                .expect("the [filesystem] trees protection")["available"]
                .as_bool()
                .expect("available"),
        ),
    ] {
        let ws = Workspace::new(&format!("require-{what}"));
        let r = ws.run(
            &["--headless", "--require", what],
            &["/bin/sh", "-c", "echo ran > ran.txt"],
            LIMIT,
        );
        assert!(!r.timed_out, "{r:?}");
        if usable {
            assert_eq!(
                r.code,
                Some(0),
                "--require {what} refused although doctor says it is usable: {r:?}"
            );
            assert!(ws.path("ran.txt").exists(), "{r:?}");
        } else {
            assert_eq!(
                r.code,
                Some(125),
                "--require {what} started although doctor says it is missing: {r:?}"
            );
            assert!(r.stderr.contains(&format!("--require {what}")), "{r:?}");
            assert!(!ws.path("ran.txt").exists(), "the agent ran: {r:?}");
        }
    }
}

/// `--no-ebpf` turns the backstops off loudly: the session says so, and `--require ebpf` then
/// refuses to start.
#[test]
fn no_ebpf_is_reported_and_refused_by_require_ebpf() {
    let ws = Workspace::new("no-ebpf");
    let r = ws.run(
        &["--headless", "--no-ebpf"],
        &["/bin/sh", "-c", "echo ran > ran.txt"],
        LIMIT,
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(ws.path("ran.txt").exists(), "{r:?}");
    assert!(
        r.stderr.contains("--no-ebpf"),
        "the missing backstops are reported: {r:?}"
    );
    let start = &ws.audit()[0];
    assert!(
        start["action"]["weaker"].to_string().contains("--no-ebpf"),
        "{start}"
    );
    std::fs::remove_file(ws.path("ran.txt")).expect("rm");
    let r = ws.run(
        &["--headless", "--no-ebpf", "--require", "ebpf"],
        &["/bin/sh", "-c", "echo ran > ran.txt"],
        LIMIT,
    );
    assert_eq!(r.code, Some(125), "{r:?}");
    assert!(!ws.path("ran.txt").exists(), "the agent ran: {r:?}");
}
