//! The BPF LSM programs (`lsm/file_open`, `lsm/bprm_check_security`, `lsm/mmap_file`)
//! against the real kernel: the session's denied files and programs are refused by *inode*,
//! whatever path reaches them.
//!
//! 1. The hook alone: a test cgroup gets its own copy of the programs with one denied file; a
//!    child moved into the cgroup can't open it, a process outside can.
//! 2. End to end through `agent-supervisor run`, each case a way around the path-based
//!    protections (mount masks, Landlock, the supervisor's name checks) that only an inode
//!    check stops: a hard link made before the session to a hidden secret (read, and reopen
//!    of an `O_PATH` fd through `/proc/self/fd`), a hard link to a read-only file (write), a
//!    hard link to a denied command (exec), `ld.so ./link` (an executable mapping), and
//!    programs without a name (memfd, `O_TMPFILE`). Every case also runs an allowed action in
//!    the same session, and checks the result from outside: file contents and markers.
//!
//! BPF LSM is not active on the machines this project is built on (see
//! shared/KERNEL-FACTS.md): there every test says why it is skipped, and `cargo xtask vm-test`
//! runs them in kernels booted with `lsm=...,bpf`.

mod common;
use common::NoCi;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agent_supervisor::cgroup::{cgroup2_root, SessionCgroup};
use agent_supervisor::ebpf::lsm::{self, DeniedFile};
use agent_supervisor::ebpf::{process, ExecMode, Session};
use agent_supervisor_common::{INODE_DENY_EXEC, INODE_DENY_READ, INODE_DENY_WRITE};
use common::{is_root, run_with_timeout, show, Result_, Workspace};
use serde_json::Value;

/// Time limit for one child process and for one supervised session.
const LIMIT: Duration = Duration::from_secs(60);
const SECRET: &str = "TOP-SECRET-7f3a";

/// Skip unless BPF LSM programs can run here.
macro_rules! skip_unless_lsm {
    () => {
        skip_unless!(is_root(), "needs root (loading eBPF programs)");
        skip_unless!(
            cgroup2_root().is_ok(),
            "no cgroup v2 hierarchy is mounted (see /proc/mounts)"
        );
        if let Err(why) = lsm::active() {
            skip_unless!(false, format!("BPF LSM is not active here: {why}"));
        }
    };
}

// ---------------------------------------------------------------------------------------------
// 1. The hook alone
// ---------------------------------------------------------------------------------------------

/// A shell that waits for a line on stdin, then runs `script` (with `$0` = `arg`).
fn waiting_shell(script: &str, arg: &Path) -> Child {
    let mut child = Command::new("/bin/sh")
        .args(["-c", &format!("echo ready; read go; {script}")])
        .arg(arg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sh");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read ready");
    assert_eq!(line.trim(), "ready");
    child
}

fn wait(child: &mut Child) -> std::process::ExitStatus {
    common::wait_child(child, LIMIT)
}

#[test]
fn kernel_refuses_a_denied_inode_to_the_session_only() {
    skip_unless_lsm!();
    let ws = Workspace::new("lsm-hook");
    let secret = ws.write("secret", SECRET);
    let link = ws.path("link");
    std::fs::hard_link(&secret, &link).expect("hard link");
    let name = format!("{:012x}", 0xb0_0000_0000u64 | u64::from(std::process::id()));
    let cgroup = SessionCgroup::create_under(&cgroup2_root().expect("cgroup2"), &name)
        .expect("create the test cgroup");
    let mut session = Session::load(cgroup, ExecMode::Report).expect("load the eBPF object");
    let (_, events) = process::attach(&mut session).expect("attach the process programs");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = events
        .spawn_with(move |r| drop(tx.send(r)))
        .expect("event reader");
    let denied = DeniedFile {
        path: secret.clone(),
        file: lsm::file_id(&secret).expect("file id"),
        deny: INODE_DENY_READ | INODE_DENY_WRITE | INODE_DENY_EXEC,
    };
    assert_eq!(lsm::attach(&mut session, &[denied]).expect("attach"), 1);

    // In the cgroup: refused through the link (same inode).
    let out = ws.path("out");
    let mut child = waiting_shell(
        &format!("cat \"$0\" > {} 2>/dev/null; exit $?", out.display()),
        &link,
    );
    session
        .cgroup()
        .add_process(child.id() as i32)
        .expect("move into the cgroup");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("go");
    let status = wait(&mut child);
    assert!(!status.success(), "cat of a denied inode succeeded");
    let copied = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(!copied.contains(SECRET), "the secret was read: {copied:?}");

    // Outside the cgroup (this test process): unaffected.
    assert_eq!(std::fs::read_to_string(&link).expect("read"), SECRET);

    // The refusal is reported with the file's inode.
    drop(session);
    let lost = reader.finish();
    assert_eq!(lost, 0);
    let records: Vec<_> = rx.try_iter().collect();
    let ino = lsm::file_id(&secret).expect("id").1;
    assert!(
        records
            .iter()
            .any(|r| r.kind == "file-open" && r.event.ino == ino),
        "no file-open refusal reported: {records:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. End to end
// ---------------------------------------------------------------------------------------------

/// A session in `ws` under the sandboxed preset plus `rules`, with `PATH` set to `path` (the
/// directories the supervisor scans for denied commands) and `sh -c script`.
fn supervise(ws: &Workspace, rules: &str, path: &str, script: &str) -> Result_ {
    let policy = format!("version = 1\nextends = \"sandboxed\"\n{rules}\n");
    supervise_policy(ws, &policy, path, script)
}

/// Audit records of the BPF LSM programs' refusals.
fn lsm_refusals(ws: &Workspace) -> Vec<Value> {
    ws.audit()
        .into_iter()
        .filter(|r| r["decided_by"] == "ebpf-lsm")
        .collect()
}

const HIDE_SECRETS: &str = "[[rule]]\ndecision = \"deny\"\nfile = \"{workspace}/secrets/**\"\n";

/// The secret hidden by a mask, and a hard link to it made before the session.
fn secret_with_link(ws: &Workspace) -> PathBuf {
    let secret = ws.write("secrets/token", SECRET);
    let link = ws.path("innocent.txt");
    std::fs::hard_link(&secret, &link).expect("hard link");
    link
}

#[test]
fn a_hard_link_to_a_hidden_secret_is_refused() {
    skip_unless_lsm!();
    let ws = Workspace::new("lsm-hardlink");
    secret_with_link(&ws);
    ws.write("plain.txt", "plain");
    let r = supervise(
        &ws,
        HIDE_SECRETS,
        "/usr/bin:/bin",
        "cat plain.txt > plain-out; cat secrets/token > masked-out; cat innocent.txt > link-out; true",
    );
    assert_eq!(r.code, Some(0), "{}", show(&r));
    assert_eq!(
        ws.read("plain-out").as_deref(),
        Some("plain"),
        "{}",
        show(&r)
    );
    for out in ["masked-out", "link-out"] {
        let got = ws.read(out).unwrap_or_default();
        assert!(
            !got.contains(SECRET),
            "{out}: the secret was read\n{}",
            show(&r)
        );
    }
    let refusals = lsm_refusals(&ws);
    assert!(
        refusals
            .iter()
            .any(|r| r["kind"] == "file-open" && r["action"]["name"] == "innocent.txt"),
        "no kernel refusal of the link in the audit: {refusals:?}\n{}",
        show(&r)
    );
}

#[test]
fn reopening_an_o_path_fd_through_proc_self_fd_is_refused() {
    skip_unless_lsm!();
    let ws = Workspace::new("lsm-reopen");
    secret_with_link(&ws);
    // O_PATH opens are not checked by file_open (nothing can be read through them); the
    // reopen is a real open of the same inode.
    let script = "python3 -c 'import os,sys
fd = os.open(\"innocent.txt\", os.O_PATH)
try:
    data = open(\"/proc/self/fd/%d\" % fd).read()
except OSError as e:
    data = \"refused: %s\" % e
open(\"reopen-out\", \"w\").write(data)'";
    let r = supervise(&ws, HIDE_SECRETS, "/usr/bin:/bin", script);
    assert_eq!(r.code, Some(0), "{}", show(&r));
    let got = ws
        .read("reopen-out")
        .expect("the agent ran and wrote its result");
    assert!(
        !got.contains(SECRET),
        "the secret was read: {got}\n{}",
        show(&r)
    );
    assert!(got.starts_with("refused"), "{got}");
}

#[test]
fn a_hard_link_to_a_read_only_file_is_not_writable() {
    skip_unless_lsm!();
    let ws = Workspace::new("lsm-readonly");
    // The sandboxed preset makes .git/config read-only (git runs what it names).
    let config = ws.write(".git/config", "[core]\n");
    std::fs::hard_link(&config, ws.path("gitconfig-link")).expect("hard link");
    let r = supervise(
        &ws,
        "",
        "/usr/bin:/bin",
        "echo '[core] fsmonitor = evil' >> gitconfig-link; echo ok > written; true",
    );
    assert_eq!(r.code, Some(0), "{}", show(&r));
    assert_eq!(ws.read("written").as_deref(), Some("ok\n"), "{}", show(&r));
    assert_eq!(
        std::fs::read_to_string(&config).expect("read"),
        "[core]\n",
        "the read-only file was changed through a hard link\n{}",
        show(&r)
    );
    assert!(
        lsm_refusals(&ws)
            .iter()
            .any(|r| r["kind"] == "file-open" && r["action"]["write"] == true),
        "{}",
        show(&r)
    );
}

/// A denied command (a copy of `touch` named `forbidden-tool` in a `PATH` directory) and a
/// hard link to it, `linked/ok-tool`, in a directory the agent may run programs from but not
/// write (`ld.so` refuses targets in writable trees: they could be swapped after the check).
/// Returns the policy (every program under /usr and in `linked/` allowed, `forbidden-tool`
/// denied) and the `PATH`.
fn denied_tool(ws: &Workspace) -> (String, String) {
    let base = ws.dir.parent().expect("base");
    let tools = base.join("tools");
    let linked = base.join("linked");
    for dir in [&tools, &linked] {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    let tool = tools.join("forbidden-tool");
    std::fs::copy("/usr/bin/touch", &tool).expect("copy touch");
    std::fs::hard_link(&tool, linked.join("ok-tool")).expect("hard link");
    let policy = format!(
        r#"version = 1
extends = "none"
default = "deny"

[filesystem]
read = ["/usr", "/bin", "/lib", "/lib64", "/etc", "/proc", "/dev", "{base}"]
write = ["{{workspace}}", "/dev/null"]
exec = ["/usr", "/bin", "/lib", "/lib64", "{tools}", "{linked}"]

[[rule]]
decision = "allow"
command = "/usr/**"

[[rule]]
decision = "allow"
command = "{linked}/*"

[[rule]]
decision = "deny"
command = "forbidden-tool"
"#,
        base = base.display(),
        tools = tools.display(),
        linked = linked.display(),
    );
    (policy, format!("{}:/usr/bin:/bin", tools.display()))
}

/// A session in `ws` under the full policy text `policy`, with `PATH` = `path`.
fn supervise_policy(ws: &Workspace, policy: &str, path: &str, script: &str) -> Result_ {
    let policy = ws.policy(policy);
    let mut c = common::supervisor_command();
    c.arg("run")
        .arg("-q")
        .arg("--headless")
        .arg("--audit")
        .arg(&ws.audit)
        .arg("--policy")
        .arg(&policy)
        .args(["--", "/bin/sh", "-c", script])
        .current_dir(&ws.dir)
        .env("PATH", path)
        .no_ci()
        .stdin(Stdio::null());
    let r = run_with_timeout(c, LIMIT);
    assert!(
        !r.timed_out,
        "the session hit the {LIMIT:?} limit\n{}",
        show(&r)
    );
    r
}

/// The supervisor's exec decisions, for failure messages.
fn exec_decisions(ws: &Workspace) -> String {
    ws.decisions("exec")
        .iter()
        .map(|d| format!("{} {} {}", d["decision"], d["action"]["argv"], d["reason"]))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_hard_link_to_a_denied_command_does_not_run() {
    skip_unless_lsm!();
    let ws = Workspace::new("lsm-exec");
    let (policy, path) = denied_tool(&ws);
    let linked = ws.dir.parent().expect("base").join("linked/ok-tool");
    let r = supervise_policy(
        &ws,
        &policy,
        &path,
        &format!(
            "touch allowed-marker; {} link-marker; forbidden-tool name-marker; true",
            linked.display()
        ),
    );
    let context = format!("{}\n--- exec decisions\n{}", show(&r), exec_decisions(&ws));
    assert_eq!(r.code, Some(0), "{context}");
    assert!(ws.path("allowed-marker").exists(), "{context}");
    assert!(
        !ws.path("name-marker").exists(),
        "the denied command ran by name\n{context}"
    );
    assert!(
        !ws.path("link-marker").exists(),
        "the denied command ran through a hard link\n{context}"
    );
    assert!(
        lsm_refusals(&ws).iter().any(|r| r["kind"] == "exec"),
        "no kernel refusal of the exec in the audit\n{context}"
    );
}

#[test]
fn ld_so_cannot_map_a_denied_command() {
    skip_unless_lsm!();
    let ws = Workspace::new("lsm-ldso");
    let (policy, path) = denied_tool(&ws);
    let linked = ws.dir.parent().expect("base").join("linked/ok-tool");
    let ld_so = ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    skip_unless!(ld_so.is_some(), "no dynamic loader at a known path");
    let ld_so = ld_so.expect("checked");
    let r = supervise_policy(
        &ws,
        &policy,
        &path,
        &format!(
            "{ld_so} /usr/bin/touch allowed-marker; {ld_so} {} ldso-marker; true",
            linked.display()
        ),
    );
    let context = format!("{}\n--- exec decisions\n{}", show(&r), exec_decisions(&ws));
    assert_eq!(r.code, Some(0), "{context}");
    assert!(
        ws.path("allowed-marker").exists(),
        "ld.so of an allowed program must work\n{context}"
    );
    assert!(
        !ws.path("ldso-marker").exists(),
        "ld.so ran the denied command\n{context}"
    );
    assert!(
        lsm_refusals(&ws).iter().any(|r| r["kind"] == "mmap-exec"),
        "no kernel refusal of the mapping in the audit\n{context}"
    );
}

#[test]
fn programs_without_a_name_do_not_run() {
    skip_unless_lsm!();
    let ws = Workspace::new("lsm-unnamed");
    // A copy of `touch` in a memfd and in an O_TMPFILE file of the workspace (an exec tree),
    // each executed through its fd.
    let script = "python3 -c 'import os
data = open(\"/usr/bin/touch\", \"rb\").read()
def run(fd, marker):
    pid = os.fork()
    if pid == 0:
        try:
            os.write(fd, data)
            os.fchmod(fd, 0o755)
            os.execve(fd, [\"touch\", marker], {})
        except OSError as e:
            open(marker + \".refused\", \"w\").write(str(e))
        os._exit(1)
    os.waitpid(pid, 0)
run(os.memfd_create(\"x\", 0), \"memfd-marker\")
run(os.open(\".\", os.O_TMPFILE | os.O_RDWR, 0o755), \"tmpfile-marker\")
os.execv(\"/usr/bin/touch\", [\"touch\", \"allowed-marker\"])'";
    let r = supervise(&ws, "", "/usr/bin:/bin", script);
    assert!(ws.path("allowed-marker").exists(), "{}", show(&r));
    for marker in ["memfd-marker", "tmpfile-marker"] {
        assert!(
            !ws.path(marker).exists(),
            "{marker}: a program without a name ran\n{}",
            show(&r)
        );
    }
}
