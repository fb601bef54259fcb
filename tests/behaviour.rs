//! What a supervised agent can and cannot do, observed from outside the sandbox.
//!
//! Every test runs the real `agent-supervisor` binary against the real kernel and checks the
//! *effects* of the agent's actions from the test process: files it did or did not write,
//! content it did or did not obtain, listeners it did or did not reach, processes that are or
//! are not still alive, and the audit log. The agent's own stdout is never the evidence.
//!
//! Prompts are tested on a pseudo-terminal made by a small Python driver (`/usr/bin/python3`,
//! the standard `pty` module): the supervisor prompts on its controlling terminal, the driver
//! answers with one key per prompt and reports how many prompts it saw.

mod common;
use common::NoCi;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    bin, process_alive_with_marker, run_with_timeout, wait_until, Listener, Result_, Workspace,
};
use serde_json::Value;

/// Time limit of one supervised run.
const LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A string no other test (or earlier run) uses.
fn unique() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}{}", std::process::id(), n % 1_000_000_000)
}

/// `run --headless [extra] -- /bin/sh -c script`, in the workspace. Headless so that a test
/// run from a developer's terminal never prompts there.
fn sh(ws: &Workspace, extra: &[&str], script: &str) -> Result_ {
    let mut args = vec!["--headless"];
    args.extend_from_slice(extra);
    let r = ws.run(&args, &["/bin/sh", "-c", script], LIMIT);
    assert!(!r.timed_out, "the run hit the time limit: {r:?}");
    r
}

/// Write an executable file (mode 0755).
fn write_exec(path: &Path, content: &str) -> PathBuf {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).expect("mkdir");
    }
    fs::write(path, content).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
    path.to_path_buf()
}

/// A workspace script that appends one line "ran <args>" to the workspace file named by its
/// first argument: the number of lines is the number of times it really ran.
fn counter_script(ws: &Workspace) -> PathBuf {
    write_exec(&ws.path("s.sh"), "#!/bin/sh\necho \"ran $*\" >> \"$1\"\n")
}

fn lines_of(ws: &Workspace, rel: &str) -> usize {
    ws.read(rel).map(|s| s.lines().count()).unwrap_or(0)
}

/// The directory holding the workspace, the audit log and the policy: in `{tmp}`, outside
/// the workspace, removed with the workspace.
fn base(ws: &Workspace) -> PathBuf {
    ws.dir.parent().expect("base").to_path_buf()
}

/// Exec decisions whose argv[0] is `arg0`.
fn execs_of(ws: &Workspace, arg0: &str) -> Vec<Value> {
    ws.decisions("exec")
        .into_iter()
        .filter(|r| r["action"]["argv"][0] == arg0)
        .collect()
}

/// The `[[rule]]` block of `text` that starts on line `line` (1-based).
fn rule_block(text: &str, line: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        line >= 1 && line <= lines.len(),
        "line {line} is not in the policy"
    );
    assert_eq!(
        lines[line - 1].trim(),
        "[[rule]]",
        "line {line} does not start a rule"
    );
    lines[line..]
        .iter()
        .take_while(|l| l.trim() != "[[rule]]")
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
}

/// The text of the rule an audit `rule` field ("preset:sandboxed:123:1") points at.
fn preset_rule(location: &str) -> String {
    let mut parts = location.rsplitn(3, ':');
    let (_col, line, file) = (
        parts.next(),
        parts.next().expect("line"),
        parts.next().expect("file"),
    );
    let name = file
        .strip_prefix("preset:")
        .unwrap_or_else(|| panic!("not a preset rule: {location}"));
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies")
        .join(format!("{name}.toml"));
    rule_block(
        &fs::read_to_string(path).expect("preset file"),
        line.parse().expect("line number"),
    )
}

/// 1-based line number of the `nth` (0-based) `[[rule]]` header of `text`.
fn rule_line(text: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim() == "[[rule]]")
        .nth(nth)
        .expect("rule")
        .0
        + 1
}

/// The supervisor command `Workspace::run` would build, for tests that need to spawn it
/// themselves (signals, inherited fds).
fn supervisor(ws: &Workspace, extra: &[&str], cmd: &[&str]) -> Command {
    let mut c = common::supervisor_command();
    c.arg("run")
        .arg("-q")
        .arg("--headless")
        .arg("--audit")
        .arg(&ws.audit)
        .args(extra)
        .arg("--")
        .args(cmd);
    c.current_dir(&ws.dir).stdin(Stdio::null()).no_ci();
    c
}

/// A spawned process that is SIGKILLed and reaped if the test ends early.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Is a `sleep` whose command line contains `marker` running (the agent itself, not the
/// supervisor, whose command line contains the marker too)?
fn sleeper_running(marker: &str) -> bool {
    let Ok(rd) = fs::read_dir("/proc") else {
        return false;
    };
    rd.flatten().any(|e| {
        fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "sleep")
            && fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
    })
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A policy that extends the sandboxed preset, with extra TOML appended.
fn sandboxed_plus(extra: &str) -> String {
    format!("version = 1\nextends = \"sandboxed\"\n{extra}")
}

// --- pseudo-terminal driver ------------------------------------------------------------------

const PYTHON: &str = "/usr/bin/python3";

#[derive(Debug)]
struct PtyRun {
    status: i64,
    prompts: u64,
    out: String,
}

/// `agent-supervisor run -q --audit A [extra] -- cmd` on a pseudo-terminal, without
/// `--headless`, answering prompts with `keys`. `ci` sets CI=true in its environment.
fn run_on_pty(ws: &Workspace, keys: &str, extra: &[&str], cmd: &[&str], ci: bool) -> PtyRun {
    let driver = base(ws).join("pty_driver.py");
    fs::write(&driver, common::PTY_DRIVER).expect("write driver");
    let mut c = Command::new(PYTHON);
    c.arg(&driver)
        .arg(keys)
        .arg(LIMIT.as_secs().to_string())
        .arg(bin());
    c.arg("run")
        .arg("-q")
        .arg("--audit")
        .arg(&ws.audit)
        .args(extra)
        .arg("--")
        .args(cmd);
    c.current_dir(&ws.dir).stdin(Stdio::null());
    c.no_ci();
    if ci {
        c.env("CI", "true");
    }
    let r = run_with_timeout(c, LIMIT + Duration::from_secs(10));
    assert!(
        !r.timed_out && r.code == Some(0),
        "the pty driver failed: {r:?}"
    );
    let v: Value = serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("driver output {e}: {r:?}"));
    assert_eq!(
        v["timed_out"], false,
        "the supervisor hit the time limit on the pty: {v}"
    );
    PtyRun {
        status: v["status"].as_i64().expect("status"),
        prompts: v["prompts"].as_u64().expect("prompts"),
        out: v["out"].as_str().unwrap_or_default().to_string(),
    }
}

fn pty_available() -> bool {
    Path::new(PYTHON).exists() && Path::new("/dev/ptmx").exists()
}

/// A policy for prompt tests: the sandboxed preset with a short approval timeout, so that a
/// prompt the driver does not answer cannot hold the test for two minutes.
fn prompt_policy(ws: &Workspace, timeout: &str) -> String {
    ws.policy(&sandboxed_plus(&format!(
        "approval_timeout = \"{timeout}\"\n"
    )))
    .display()
    .to_string()
}

// ---------------------------------------------------------------------------------------------
// 1. Reading
// ---------------------------------------------------------------------------------------------

#[test]
fn env_files_in_the_workspace_cannot_be_read() {
    let ws = Workspace::new("env");
    let secret = format!("API_KEY=hunter2-{}", unique());
    ws.write(".env", &secret);
    ws.write("sub/dir/.env", &secret);
    ws.write("notes.txt", "plain notes");
    let r = sh(
        &ws,
        &[],
        "cat .env > copy1.txt; cat sub/dir/.env > copy2.txt; cp .env copy3.txt; \
         cp notes.txt notes-copy.txt; echo finished > done.txt",
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(
        ws.read("done.txt").as_deref(),
        Some("finished\n"),
        "the agent did not run to the end: {r:?}"
    );
    // The same copy works for a file that is not a secret...
    assert_eq!(ws.read("notes-copy.txt").as_deref(), Some("plain notes"));
    // ...but no secret content reached any file the agent wrote.
    for f in ["copy1.txt", "copy2.txt", "copy3.txt"] {
        let got = ws.read(f).unwrap_or_default();
        assert!(!got.contains("hunter2"), "{f} holds the secret: {got:?}");
    }
    // The secrets themselves are intact on disk.
    assert_eq!(ws.read(".env").as_deref(), Some(secret.as_str()));
    assert_eq!(ws.read("sub/dir/.env").as_deref(), Some(secret.as_str()));
}

#[test]
fn files_outside_the_read_trees_cannot_be_read() {
    let ws = Workspace::new("readtree");
    let secret_path = base(&ws).join("secret.txt");
    let secret = format!("TOP-SECRET-{}", unique());
    fs::write(&secret_path, &secret).unwrap();
    ws.write("visible.txt", "visible");
    let policy = ws.policy(&sandboxed_plus(
        "[filesystem]\nread = [\"/usr\", \"/bin\", \"/lib\", \"/lib64\", \"/etc\", \"/proc\", \"/dev\", \"{workspace}\"]\n\
         write = [\"{workspace}\", \"/dev/null\"]\n",
    ));
    let script = format!(
        "cat '{s}' > got.txt; cp '{s}' got2.txt; cat visible.txt > visible-copy.txt; echo finished > done.txt",
        s = secret_path.display()
    );
    let r = sh(&ws, &["--policy", policy.to_str().unwrap()], &script);
    assert_eq!(ws.read("done.txt").as_deref(), Some("finished\n"), "{r:?}");
    assert_eq!(
        ws.read("visible-copy.txt").as_deref(),
        Some("visible"),
        "{r:?}"
    );
    for f in ["got.txt", "got2.txt"] {
        let got = ws.read(f).unwrap_or_default();
        assert!(!got.contains(&secret), "{f} holds the secret: {got:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Writing
// ---------------------------------------------------------------------------------------------

/// Removes a file on drop (for targets outside the workspace).
struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[test]
fn writes_outside_the_write_trees_are_refused() {
    let ws = Workspace::new("write");
    let u = unique();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let targets = [
        RemoveOnDrop(PathBuf::from(format!("/var/tmp/as-test-write-{u}"))),
        RemoveOnDrop(PathBuf::from(format!("{home}/as-test-write-{u}"))),
    ];
    let script = format!(
        "echo pwned > '{}'; touch '{}'; echo pwned > inside.txt",
        targets[0].0.display(),
        targets[1].0.display()
    );
    let r = sh(&ws, &[], &script);
    assert_eq!(
        ws.read("inside.txt").as_deref(),
        Some("pwned\n"),
        "the agent did not run: {r:?}"
    );
    for t in &targets {
        assert!(!t.0.exists(), "{} was created by the agent", t.0.display());
    }
}

#[test]
fn existing_files_outside_the_write_trees_are_not_changed_or_removed() {
    let ws = Workspace::new("write2");
    let victim = base(&ws).join("victim.txt");
    fs::write(&victim, "original").unwrap();
    // {tmp} is writable in the preset: narrow the write trees to the workspace.
    let policy = ws.policy(&sandboxed_plus(
        "[filesystem]\nwrite = [\"{workspace}\", \"/dev/null\"]\n",
    ));
    let script = format!(
        "echo pwned > '{v}'; echo more >> '{v}'; rm -f '{v}'; mv '{v}' moved.txt; echo ok > done.txt",
        v = victim.display()
    );
    let r = sh(&ws, &["--policy", policy.to_str().unwrap()], &script);
    assert_eq!(ws.read("done.txt").as_deref(), Some("ok\n"), "{r:?}");
    assert_eq!(
        fs::read_to_string(&victim).ok().as_deref(),
        Some("original"),
        "{r:?}"
    );
    // The workspace is its own (writable) bind over the read-only view, so rename(2) from
    // outside it fails with EXDEV and mv falls back to copy + unlink: the copy is a read the
    // policy allows, the unlink fails (EROFS). The victim stays where it was.
    if let Ok(copy) = fs::read_to_string(ws.path("moved.txt")) {
        assert_eq!(copy, "original", "{r:?}");
        assert!(victim.exists(), "mv removed the original: {r:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Executing
// ---------------------------------------------------------------------------------------------

#[test]
fn programs_outside_the_exec_trees_do_not_run() {
    let ws = Workspace::new("exectree");
    // Outside the workspace but in {tmp}: readable and writable, not executable.
    let touch_copy = base(&ws).join("mytouch");
    fs::copy("/usr/bin/touch", &touch_copy).expect("copy touch");
    fs::set_permissions(&touch_copy, fs::Permissions::from_mode(0o755)).unwrap();
    let script_out = write_exec(
        &base(&ws).join("out.sh"),
        "#!/bin/sh\necho ran > script-marker\n",
    );
    // --default-allow: the policy's "ask" would allow these; the exec trees still refuse.
    let r = sh(
        &ws,
        &["--default-allow"],
        &format!(
            "'{}' touch-marker; '{}'; echo ok > done.txt",
            touch_copy.display(),
            script_out.display()
        ),
    );
    assert_eq!(ws.read("done.txt").as_deref(), Some("ok\n"), "{r:?}");
    assert!(!ws.path("touch-marker").exists(), "the copied touch ran");
    assert!(
        !ws.path("script-marker").exists(),
        "the script outside the exec trees ran"
    );
    for p in [&touch_copy, &script_out] {
        let d = execs_of(&ws, p.to_str().unwrap());
        assert_eq!(d.len(), 1, "{:?}", ws.audit());
        assert_eq!(d[0]["decision"], "deny");
        assert_eq!(d[0]["decided_by"], "filesystem");
    }
    // The same program inside the exec trees (the workspace) does run: the copy is fine.
    let inside = ws.path("mytouch");
    fs::copy(&touch_copy, &inside).unwrap();
    let r = sh(&ws, &["--default-allow"], "./mytouch inside-marker");
    assert!(ws.path("inside-marker").exists(), "{r:?}");
}

#[test]
fn sudo_is_denied_by_rule_even_with_default_allow() {
    let ws = Workspace::new("sudo");
    write_exec(
        &ws.path("sudo"),
        "#!/bin/sh\necho escalated > sudo-marker\n",
    );
    let r = sh(&ws, &["--default-allow"], "./sudo id; echo ok > done.txt");
    assert_eq!(ws.read("done.txt").as_deref(), Some("ok\n"), "{r:?}");
    assert!(!ws.path("sudo-marker").exists(), "the fake sudo ran");
    let d = execs_of(&ws, "./sudo");
    assert_eq!(d.len(), 1, "{:?}", ws.audit());
    assert_eq!(d[0]["decision"], "deny");
    assert_eq!(d[0]["decided_by"], "rule");
    let rule = preset_rule(d[0]["rule"].as_str().expect("rule location"));
    assert!(
        rule.contains("command = \"{sudo,su,doas,pkexec}\""),
        "the audit names another rule: {rule}"
    );
    assert!(rule.contains("decision = \"deny\""), "{rule}");
}

#[test]
fn sudo_as_the_command_line_is_still_denied() {
    let ws = Workspace::new("sudo-cl");
    write_exec(
        &ws.path("sudo"),
        "#!/bin/sh\necho escalated > sudo-marker\n",
    );
    let r = ws.run(&["--headless"], &["./sudo"], LIMIT);
    assert_eq!(r.code, Some(126), "{r:?}");
    assert!(!ws.path("sudo-marker").exists(), "the fake sudo ran");
    assert_eq!(execs_of(&ws, "./sudo")[0]["decided_by"], "rule");
}

#[test]
fn recursive_forced_removal_is_denied_by_rule() {
    let ws = Workspace::new("rmrf");
    ws.write("project/src/main.rs", "fn main() {}");
    let r = sh(
        &ws,
        &["--default-allow"],
        "rm -rf project; rm -fr project/src; echo ok > done.txt",
    );
    assert_eq!(ws.read("done.txt").as_deref(), Some("ok\n"), "{r:?}");
    assert_eq!(
        ws.read("project/src/main.rs").as_deref(),
        Some("fn main() {}")
    );
    // The shell tries each PATH entry (/usr/bin/rm, /bin/rm) after EACCES: one record each.
    let d = execs_of(&ws, "rm");
    let argvs: std::collections::BTreeSet<String> =
        d.iter().map(|r| r["action"]["argv"].to_string()).collect();
    assert_eq!(argvs.len(), 2, "{:?}", ws.audit());
    for rec in &d {
        assert_eq!(rec["decision"], "deny");
        assert_eq!(rec["decided_by"], "rule");
        assert!(preset_rule(rec["rule"].as_str().unwrap()).contains("command = \"rm\""));
    }
}

// ---------------------------------------------------------------------------------------------
// 4. What is allowed
// ---------------------------------------------------------------------------------------------

#[test]
fn workspace_read_write_and_system_programs_are_allowed() {
    let ws = Workspace::new("allowed");
    let content = format!("input {}", unique());
    ws.write("in.txt", &content);
    let r = sh(
        &ws,
        &[],
        "cat in.txt > out.txt && mkdir -p d/e && cp in.txt d/e/copy.txt && rm in.txt && /bin/true",
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(ws.read("out.txt").as_deref(), Some(content.as_str()));
    assert_eq!(ws.read("d/e/copy.txt").as_deref(), Some(content.as_str()));
    assert!(
        !ws.path("in.txt").exists(),
        "rm in the workspace did not work"
    );
    let t = execs_of(&ws, "/bin/true");
    assert_eq!(t.len(), 1, "{:?}", ws.audit());
    assert_eq!(t[0]["decision"], "allow");
    assert_eq!(t[0]["decided_by"], "rule");
    assert!(preset_rule(t[0]["rule"].as_str().unwrap()).contains("decision = \"allow\""));
}

#[test]
fn the_workspace_flag_sets_the_writable_workspace() {
    let ws = Workspace::new("ws-flag");
    // Run from another directory: only --workspace (not the current directory) is writable.
    let elsewhere = base(&ws).join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let policy = ws.policy(&sandboxed_plus(
        "[filesystem]\nwrite = [\"{workspace}\", \"/dev/null\"]\n",
    ));
    let script = format!(
        "echo in > '{}'; echo out > here.txt",
        ws.path("in.txt").display()
    );
    let mut c = supervisor(
        &ws,
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--workspace",
            ws.dir.to_str().unwrap(),
        ],
        &["/bin/sh", "-c", &script],
    );
    c.current_dir(&elsewhere);
    let r = run_with_timeout(c, LIMIT);
    assert!(!r.timed_out, "{r:?}");
    assert_eq!(ws.read("in.txt").as_deref(), Some("in\n"), "{r:?}");
    assert!(
        !elsewhere.join("here.txt").exists(),
        "the current directory was writable"
    );
    let start = &ws.audit()[0];
    assert_eq!(
        start["action"]["workspace"],
        fs::canonicalize(&ws.dir).unwrap().display().to_string()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Network
// ---------------------------------------------------------------------------------------------

const NET_PY: &str = r#"
import socket, sys
out = open("results.txt", "w")
for kind, port in zip(sys.argv[1::2], sys.argv[2::2]):
    port = int(port)
    try:
        if kind == "tcp":
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(("127.0.0.1", port))
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b"agent-datagram", ("127.0.0.1", port))
        out.write("%s %d ok\n" % (kind, port))
    except OSError as e:
        out.write("%s %d errno %d\n" % (kind, port, e.errno))
out.write("done\n")
"#;

fn net_result(ws: &Workspace, kind: &str, port: u16) -> String {
    let all = ws.read("results.txt").unwrap_or_default();
    all.lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{kind} {port} "))
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no result for {kind} {port} in {all:?}"))
}

fn udp_socket() -> std::net::UdpSocket {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

fn received(s: &std::net::UdpSocket) -> Option<Vec<u8>> {
    let mut buf = [0u8; 256];
    s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

#[test]
fn connections_are_denied_unless_a_rule_allows_them() {
    skip_unless!(
        Path::new(PYTHON).exists(),
        "no /usr/bin/python3 for the agent's socket calls"
    );
    let ws = Workspace::new("net");
    let allowed = Listener::new();
    let denied = Listener::new();
    let policy_text = sandboxed_plus(&format!(
        "[[rule]]\ndecision = \"allow\"\nnetwork = \"127.0.0.1:{}\"\nreason = \"the test listener\"\n",
        allowed.port
    ));
    let policy = ws.policy(&policy_text);
    ws.write("net.py", NET_PY);
    let (a, d) = (allowed.port.to_string(), denied.port.to_string());
    let r = ws.run(
        &["--headless", "--policy", policy.to_str().unwrap()],
        &[PYTHON, "net.py", "tcp", &d, "tcp", &a],
        LIMIT,
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        allowed.was_reached(),
        "the allowed listener was not reached: {r:?}"
    );
    assert!(!denied.was_reached(), "the denied listener was reached");
    assert_eq!(net_result(&ws, "tcp", allowed.port), "ok");
    assert_eq!(
        net_result(&ws, "tcp", denied.port),
        format!("errno {}", libc::ECONNREFUSED)
    );

    let conns = ws.decisions("connect");
    let by_dest = |port: u16| {
        conns
            .iter()
            .find(|c| c["action"]["destination"] == format!("127.0.0.1:{port}"))
            .unwrap_or_else(|| panic!("no connect record for {port}: {conns:?}"))
    };
    let ok = by_dest(allowed.port);
    assert_eq!(ok["decision"], "allow");
    assert_eq!(ok["decided_by"], "rule");
    let loc = ok["rule"].as_str().unwrap();
    assert!(
        loc.ends_with(&format!(":{}:1", rule_line(&policy_text, 0))),
        "rule location {loc}"
    );
    let no = by_dest(denied.port);
    assert_eq!(no["decision"], "deny");
    assert_eq!(no["decided_by"], "headless");
}

#[test]
fn udp_datagrams_reach_only_allowed_addresses() {
    skip_unless!(
        Path::new(PYTHON).exists(),
        "no /usr/bin/python3 for the agent's socket calls"
    );
    let ws = Workspace::new("udp");
    let allowed = udp_socket();
    let denied = udp_socket();
    let (pa, pd) = (
        allowed.local_addr().unwrap().port(),
        denied.local_addr().unwrap().port(),
    );
    let policy = ws.policy(&sandboxed_plus(&format!(
        "[[rule]]\ndecision = \"allow\"\nnetwork = \"127.0.0.1:{pa}\"\n"
    )));
    ws.write("net.py", NET_PY);
    let r = ws.run(
        &["--headless", "--policy", policy.to_str().unwrap()],
        &[
            PYTHON,
            "net.py",
            "udp",
            &pd.to_string(),
            "udp",
            &pa.to_string(),
        ],
        LIMIT,
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(
        received(&allowed).as_deref(),
        Some(&b"agent-datagram"[..]),
        "{r:?}"
    );
    assert_eq!(
        received(&denied),
        None,
        "a datagram reached the denied address"
    );
    assert_eq!(net_result(&ws, "udp", pd), format!("errno {}", libc::EPERM));
    let sends = ws.decisions("send");
    let rec = sends
        .iter()
        .find(|s| s["action"]["destination"] == format!("127.0.0.1:{pd}"))
        .unwrap_or_else(|| panic!("no send record: {sends:?}"));
    assert_eq!(rec["decision"], "deny");
    assert_eq!(rec["action"]["call"], "sendto");
}

// ---------------------------------------------------------------------------------------------
// 6. Asking a human on the terminal
// ---------------------------------------------------------------------------------------------

#[test]
fn prompt_y_allows_once_and_n_denies() {
    skip_unless!(
        pty_available(),
        "no /usr/bin/python3 or /dev/ptmx to drive a pseudo-terminal"
    );
    let ws = Workspace::new("prompt-yn");
    counter_script(&ws);
    let policy = prompt_policy(&ws, "10s");
    let p = run_on_pty(
        &ws,
        "yn",
        &["--policy", &policy],
        &["/bin/sh", "-c", "./s.sh log; ./s.sh log; exit 0"],
        false,
    );
    assert_eq!(p.status, 0, "{p:?}");
    assert_eq!(
        p.prompts, 2,
        "`y` must allow only once: the identical second exec asks again: {p:?}"
    );
    assert!(
        p.out.contains("./s.sh log"),
        "the prompt does not show the command: {p:?}"
    );
    assert_eq!(
        lines_of(&ws, "log"),
        1,
        "the script must run exactly once (y), not after n: {p:?}"
    );
    let d = execs_of(&ws, "./s.sh");
    assert_eq!(d.len(), 2, "{:?}", ws.audit());
    assert_eq!(
        (&d[0]["decision"], &d[0]["decided_by"]),
        (&"allow".into(), &"human".into())
    );
    assert_eq!(
        (&d[1]["decision"], &d[1]["decided_by"]),
        (&"deny".into(), &"human".into())
    );
}

#[test]
fn prompt_a_allows_the_same_action_for_the_session() {
    skip_unless!(
        pty_available(),
        "no /usr/bin/python3 or /dev/ptmx to drive a pseudo-terminal"
    );
    let ws = Workspace::new("prompt-a");
    counter_script(&ws);
    let policy = prompt_policy(&ws, "10s");
    // `a` for `./s.sh log`; a different action (other arguments) is asked again: `n`.
    let p = run_on_pty(
        &ws,
        "an",
        &["--policy", &policy],
        &[
            "/bin/sh",
            "-c",
            "./s.sh log; ./s.sh log; ./s.sh log; ./s.sh other; exit 0",
        ],
        false,
    );
    assert_eq!(p.status, 0, "{p:?}");
    assert_eq!(p.prompts, 2, "{p:?}");
    assert_eq!(lines_of(&ws, "log"), 3, "{p:?}");
    assert!(
        !ws.path("other").exists(),
        "the different action was not asked: {p:?}"
    );
    let by: Vec<String> = execs_of(&ws, "./s.sh")
        .iter()
        .map(|r| format!("{} {}", r["decision"], r["decided_by"]))
        .collect();
    assert_eq!(
        by,
        [
            r#""allow" "human""#,
            r#""allow" "session""#,
            r#""allow" "session""#,
            r#""deny" "human""#
        ],
        "{:?}",
        ws.audit()
    );
}

#[test]
fn prompt_b_denies_the_same_action_for_the_session() {
    skip_unless!(
        pty_available(),
        "no /usr/bin/python3 or /dev/ptmx to drive a pseudo-terminal"
    );
    let ws = Workspace::new("prompt-b");
    counter_script(&ws);
    let policy = prompt_policy(&ws, "10s");
    let p = run_on_pty(
        &ws,
        "by",
        &["--policy", &policy],
        &["/bin/sh", "-c", "./s.sh log; ./s.sh log; ./s.sh other"],
        false,
    );
    assert_eq!(p.status, 0, "{p:?}");
    assert_eq!(p.prompts, 2, "{p:?}");
    assert!(!ws.path("log").exists(), "a `b`-denied action ran: {p:?}");
    assert_eq!(lines_of(&ws, "other"), 1, "{p:?}");
    let by: Vec<String> = execs_of(&ws, "./s.sh")
        .iter()
        .map(|r| format!("{} {}", r["decision"], r["decided_by"]))
        .collect();
    assert_eq!(
        by,
        [
            r#""deny" "human""#,
            r#""deny" "session""#,
            r#""allow" "human""#
        ],
        "{:?}",
        ws.audit()
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Headless
// ---------------------------------------------------------------------------------------------

#[test]
fn headless_denies_what_would_be_asked() {
    let ws = Workspace::new("headless");
    counter_script(&ws);
    let r = sh(&ws, &[], "./s.sh log; echo ok > done.txt");
    assert_eq!(ws.read("done.txt").as_deref(), Some("ok\n"), "{r:?}");
    assert!(!ws.path("log").exists(), "an ask ran headless");
    let d = execs_of(&ws, "./s.sh");
    assert_eq!(d.len(), 1, "{:?}", ws.audit());
    assert_eq!(
        (&d[0]["decision"], &d[0]["decided_by"]),
        (&"deny".into(), &"headless".into())
    );
}

#[test]
fn headless_default_allow_allows_what_would_be_asked() {
    let ws = Workspace::new("headless-allow");
    counter_script(&ws);
    let r = sh(&ws, &["--default-allow"], "./s.sh log; ./s.sh log");
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(lines_of(&ws, "log"), 2, "{r:?}");
    let d = execs_of(&ws, "./s.sh");
    assert_eq!(d.len(), 2, "{:?}", ws.audit());
    for rec in d {
        assert_eq!(
            (&rec["decision"], &rec["decided_by"]),
            (&"allow".into(), &"headless".into())
        );
    }
}

#[test]
fn ci_true_is_headless_even_on_a_terminal() {
    skip_unless!(
        pty_available(),
        "no /usr/bin/python3 or /dev/ptmx to drive a pseudo-terminal"
    );
    let ws = Workspace::new("ci");
    counter_script(&ws);
    let policy = prompt_policy(&ws, "10s");
    let p = run_on_pty(
        &ws,
        "y",
        &["--policy", &policy],
        &["/bin/sh", "-c", "./s.sh log"],
        true,
    );
    assert_eq!(p.prompts, 0, "CI=true prompted on the terminal: {p:?}");
    assert!(!ws.path("log").exists(), "{p:?}");
    assert_eq!(execs_of(&ws, "./s.sh")[0]["decided_by"], "headless");
}

// ---------------------------------------------------------------------------------------------
// 8. Approval timeout
// ---------------------------------------------------------------------------------------------

#[test]
fn an_unanswered_prompt_is_denied_after_the_approval_timeout() {
    skip_unless!(
        pty_available(),
        "no /usr/bin/python3 or /dev/ptmx to drive a pseudo-terminal"
    );
    let ws = Workspace::new("timeout");
    counter_script(&ws);
    let policy = prompt_policy(&ws, "1s");
    let start = Instant::now();
    let p = run_on_pty(
        &ws,
        "",
        &["--policy", &policy],
        &["/bin/sh", "-c", "./s.sh log; echo ok > done.txt"],
        false,
    );
    let took = start.elapsed();
    assert_eq!(p.status, 0, "{p:?}");
    assert_eq!(p.prompts, 1, "{p:?}");
    assert_eq!(ws.read("done.txt").as_deref(), Some("ok\n"), "{p:?}");
    assert!(!ws.path("log").exists(), "the unanswered action ran");
    assert!(
        took < Duration::from_secs(10),
        "the 1 s timeout took {took:?}"
    );
    let d = execs_of(&ws, "./s.sh");
    assert_eq!(d.len(), 1, "{:?}", ws.audit());
    assert_eq!(
        (&d[0]["decision"], &d[0]["decided_by"]),
        (&"deny".into(), &"timeout".into())
    );
    let waited = d[0]["response_us"].as_u64().expect("response_us");
    assert!(
        (900_000..8_000_000).contains(&waited),
        "denied after {waited} µs, expected about 1 s"
    );
}

/// While a prompt waits, the broker sleeps until something happens (a key, another ask, the
/// asking thread's end, the deadline): it does not wake up on a timer to look. Its thread's
/// voluntary context switches, read in `/proc` from outside the sandbox, stay put over 1.5 s
/// of waiting (a re-check every 200 ms, as before, added seven).
#[test]
fn a_waiting_prompt_does_not_wake_up_on_a_timer() {
    skip_unless!(
        pty_available(),
        "no /usr/bin/python3 or /dev/ptmx to drive a pseudo-terminal"
    );
    let ws = Workspace::new("prompt-idle");
    counter_script(&ws);
    let policy = prompt_policy(&ws, "4s");
    std::thread::scope(|s| {
        let run = s.spawn(|| {
            run_on_pty(
                &ws,
                "",
                &["--policy", &policy],
                &[
                    "/bin/sh",
                    "-c",
                    "echo > started; ./s.sh log; echo ok > done.txt",
                ],
                false,
            )
        });
        // The ask comes right after `started`: within 0.5 s it is on screen.
        let woke = common::SupervisorThread::sleeps_during(
            &ws.dir,
            "approvals",
            &ws.path("started"),
            Duration::from_millis(500),
            Duration::from_millis(1500),
        );
        let p = run.join().expect("the pty run");
        assert_eq!(p.prompts, 1, "{p:?}");
        assert_eq!(ws.read("done.txt").as_deref(), Some("ok\n"), "{p:?}");
        assert!(!ws.path("log").exists(), "the unanswered action ran");
        assert!(
            woke <= 2,
            "the waiting broker woke up {woke} times in 1.5 s"
        );
    });
}

/// An ask whose process is killed while its prompt is on screen is withdrawn at once (the
/// asking thread's pidfd wakes the broker), not left on screen until its timeout.
#[test]
fn a_prompt_is_withdrawn_when_the_asking_process_is_killed() {
    skip_unless!(
        pty_available(),
        "no /usr/bin/python3 or /dev/ptmx to drive a pseudo-terminal"
    );
    let ws = Workspace::new("prompt-gone");
    counter_script(&ws);
    let policy = prompt_policy(&ws, "30s");
    let start = Instant::now();
    let p = run_on_pty(
        &ws,
        "",
        &["--policy", &policy],
        &[
            "/bin/sh",
            "-c",
            "./s.sh log & sleep 1; kill -9 $!; wait; echo ok > done.txt",
        ],
        false,
    );
    let took = start.elapsed();
    assert_eq!(p.prompts, 1, "{p:?}");
    assert!(p.out.contains("no longer needed"), "{p:?}");
    assert_eq!(ws.read("done.txt").as_deref(), Some("ok\n"), "{p:?}");
    assert!(!ws.path("log").exists(), "the killed ask ran");
    assert!(
        took < Duration::from_secs(15),
        "the session waited for the withdrawn ask's 30 s timeout: {took:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The command line given to `run`
// ---------------------------------------------------------------------------------------------

#[test]
fn the_command_line_is_approved_once_and_only_once() {
    let ws = Workspace::new("cmdline");
    // Re-executes itself with the same argv once: that second exec is an ordinary ask.
    write_exec(
        &ws.path("rec.sh"),
        "#!/bin/sh\necho x >> log\n[ -e again ] || { touch again; exec ./rec.sh; }\n",
    );
    let r = ws.run(&["--headless"], &["./rec.sh"], LIMIT);
    assert_eq!(lines_of(&ws, "log"), 1, "{r:?}");
    assert!(ws.path("again").exists(), "{r:?}");
    assert_eq!(
        r.code,
        Some(126),
        "the denied re-exec fails with EACCES: {r:?}"
    );
    let d = execs_of(&ws, "./rec.sh");
    assert_eq!(d.len(), 2, "{:?}", ws.audit());
    assert_eq!(d[0]["decision"], "allow");
    assert_eq!(
        (&d[1]["decision"], &d[1]["decided_by"]),
        (&"deny".into(), &"headless".into())
    );
}

#[test]
fn the_command_line_approval_is_audited_as_command_line() {
    let ws = Workspace::new("cmdline-audit");
    counter_script(&ws);
    let r = ws.run(&["--headless"], &["./s.sh", "log"], LIMIT);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(lines_of(&ws, "log"), 1);
    let d = execs_of(&ws, "./s.sh");
    assert_eq!(
        (&d[0]["decision"], &d[0]["decided_by"]),
        (&"allow".into(), &"command-line".into()),
        "{d:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Exit codes
// ---------------------------------------------------------------------------------------------

#[test]
fn the_agents_exit_code_is_propagated() {
    let ws = Workspace::new("exit");
    assert_eq!(sh(&ws, &[], "exit 42").code, Some(42));
    assert_eq!(sh(&ws, &[], "exit 0").code, Some(0));
}

#[test]
fn an_agent_killed_by_sigkill_exits_137() {
    let ws = Workspace::new("exit-kill");
    assert_eq!(sh(&ws, &[], "kill -9 $$").code, Some(137));
}

#[test]

fn an_agent_killed_by_sigterm_exits_143() {
    let ws = Workspace::new("exit-term");
    let r = ws.run(
        &["--headless"],
        &["sh", "-c", "kill -TERM $$; echo survived > survived.txt"],
        LIMIT,
    );
    assert!(
        !ws.path("survived.txt").exists(),
        "the agent survived SIGTERM: {r:?}"
    );
    assert_eq!(r.code, Some(143), "{r:?}");
}

/// Host pid of the `sleep` agent whose command line contains `marker`.
fn sleeper_pid(marker: &str) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = fs::read_to_string(e.path().join("comm")).ok()?;
        let cmdline = fs::read(e.path().join("cmdline")).ok()?;
        (comm.trim() == "sleep" && String::from_utf8_lossy(&cmdline).contains(marker))
            .then_some(pid)
    })
}

#[test]

fn the_agent_starts_with_no_blocked_signals() {
    let ws = Workspace::new("sigmask");
    let marker = format!("1000.{}", unique());
    let mut c = supervisor(&ws, &[], &["sleep", &marker]);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let _child = Reaped(c.spawn().expect("spawn"));
    assert!(
        wait_until(Duration::from_secs(10), || sleeper_pid(&marker).is_some()),
        "the agent never started"
    );
    // Read from outside: the agent's own signal mask, as the kernel reports it.
    let pid = sleeper_pid(&marker).expect("agent pid");
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    let blocked = status
        .lines()
        .find(|l| l.starts_with("SigBlk:"))
        .expect("SigBlk line");
    assert_eq!(
        blocked.split_whitespace().nth(1),
        Some("0000000000000000"),
        "the agent starts with {blocked}"
    );
}

#[test]

fn sigterm_to_the_supervisor_ends_the_agent() {
    let ws = Workspace::new("fwd-term");
    let marker = format!("1000.{}", unique());
    let mut c = supervisor(&ws, &[], &["sleep", &marker]);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = Reaped(c.spawn().expect("spawn"));
    assert!(
        wait_until(Duration::from_secs(10), || sleeper_running(&marker)),
        "the agent never started"
    );
    // SAFETY: kill(2) on our own child's pid, which we have not reaped.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
    let status = wait_exit(&mut child.0, Duration::from_secs(10));
    assert!(
        wait_until(Duration::from_secs(5), || !sleeper_running(&marker)),
        "the agent outlived SIGTERM"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(143), "{status:?}");
}

#[test]
fn a_missing_command_exits_127_and_a_non_executable_one_126() {
    let ws = Workspace::new("exit-12x");
    let r = ws.run(&["--headless"], &["./does-not-exist"], LIMIT);
    assert_eq!(r.code, Some(127), "{r:?}");
    let r = ws.run(&["--headless"], &["no-such-program-anywhere"], LIMIT);
    assert_eq!(r.code, Some(127), "{r:?}");
    ws.write("data.txt", "#!/bin/sh\necho ran > marker\n"); // mode 0644
    let r = ws.run(&["--headless"], &["./data.txt"], LIMIT);
    assert_eq!(r.code, Some(126), "{r:?}");
    assert!(!ws.path("marker").exists());
}

// ---------------------------------------------------------------------------------------------
// 10. The agent does not outlive the session
// ---------------------------------------------------------------------------------------------

#[test]
fn the_agent_dies_when_the_supervisor_is_killed() {
    let ws = Workspace::new("die-with");
    let marker = format!("1000.{}", unique());
    let mut c = supervisor(&ws, &[], &["sleep", &marker]);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = Reaped(c.spawn().expect("spawn"));
    assert!(
        wait_until(Duration::from_secs(10), || sleeper_running(&marker)),
        "the agent never started"
    );
    child.0.kill().expect("SIGKILL the supervisor");
    child.0.wait().expect("reap");
    assert!(
        wait_until(Duration::from_secs(5), || !process_alive_with_marker(
            &marker
        )),
        "a process of the session outlived the SIGKILLed supervisor"
    );
}

#[test]
fn a_daemonised_grandchild_dies_with_the_session() {
    let ws = Workspace::new("daemon");
    let marker = format!("1000.{}", unique());
    let script = format!(
        "setsid sh -c 'echo $$ > daemon.pid; exec sleep {marker}' < /dev/null > /dev/null 2>&1 & \
         while [ ! -s daemon.pid ]; do sleep 0.05; done; \
         while ! grep -q {marker} /proc/$(cat daemon.pid)/cmdline 2>/dev/null; do sleep 0.05; done; \
         echo up > up.txt"
    );
    let start = Instant::now();
    let r = sh(&ws, &[], &script);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(
        ws.read("up.txt").as_deref(),
        Some("up\n"),
        "the daemon never started: {r:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the session waited for the daemon"
    );
    assert!(
        wait_until(Duration::from_secs(5), || !process_alive_with_marker(
            &marker
        )),
        "the daemonised grandchild outlived the session"
    );
}

// ---------------------------------------------------------------------------------------------
// 11. Inherited file descriptors
// ---------------------------------------------------------------------------------------------

/// Spawn the supervisor with `file` open (without close-on-exec) as its fd 5.
fn run_with_fd5(ws: &Workspace, extra: &[&str], script: &str, file: &Path) -> Result_ {
    let f = fs::File::open(file).expect("open");
    let raw = std::os::fd::AsRawFd::as_raw_fd(&f);
    let mut c = supervisor(ws, extra, &["/bin/sh", "-c", script]);
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        c.pre_exec(move || {
            let r = if raw == 5 {
                libc::fcntl(5, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, 5)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let r = run_with_timeout(c, LIMIT);
    drop(f);
    assert!(!r.timed_out, "{r:?}");
    r
}

/// fd number → link target, from `ls -l /proc/self/fd` output.
fn parse_fds(listing: &str) -> Vec<(u32, String)> {
    listing
        .lines()
        .filter_map(|l| {
            let (left, target) = l.split_once(" -> ")?;
            let fd = left.split_whitespace().last()?.parse().ok()?;
            Some((fd, target.to_string()))
        })
        .collect()
}

#[test]
fn only_stdin_stdout_and_stderr_are_inherited() {
    let ws = Workspace::new("fds");
    let inherited = base(&ws).join("inherited.txt");
    fs::write(&inherited, "through fd 5").unwrap();
    let r = run_with_fd5(&ws, &[], "ls -l /proc/self/fd > fds.txt", &inherited);
    assert_eq!(r.code, Some(0), "{r:?}");
    let fds = parse_fds(&ws.read("fds.txt").unwrap_or_default());
    assert!(
        fds.iter().any(|(n, _)| *n == 1),
        "unparsable listing: {fds:?}"
    );
    for (n, target) in &fds {
        // 0-2, and the directory ls itself opened to list /proc/self/fd.
        assert!(
            *n <= 2 || target.contains("/fd"),
            "fd {n} -> {target} reached the agent"
        );
    }
    assert!(!fds.iter().any(|(n, _)| *n == 5), "{fds:?}");
}

#[test]
fn keep_fd_passes_that_descriptor() {
    let ws = Workspace::new("keep-fd");
    let inherited = base(&ws).join("inherited.txt");
    fs::write(&inherited, "through fd 5").unwrap();
    let r = run_with_fd5(
        &ws,
        &["--keep-fd", "5"],
        "ls -l /proc/self/fd > fds.txt; cat <&5 > got.txt",
        &inherited,
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    let fds = parse_fds(&ws.read("fds.txt").unwrap_or_default());
    let five = fds
        .iter()
        .find(|(n, _)| *n == 5)
        .unwrap_or_else(|| panic!("fd 5 missing: {fds:?}"));
    assert_eq!(five.1, inherited.display().to_string());
    assert_eq!(ws.read("got.txt").as_deref(), Some("through fd 5"));
}

// ---------------------------------------------------------------------------------------------
// 12. /proc
// ---------------------------------------------------------------------------------------------

#[test]
fn the_agent_sees_only_its_own_processes() {
    let ws = Workspace::new("proc");
    let me = std::process::id();
    let exe = std::env::current_exe().unwrap();
    let exe_name = exe.file_name().unwrap().to_str().unwrap().to_string();
    // Outside, this test process is visible with that name: the check below can fail.
    assert!(
        String::from_utf8_lossy(&fs::read(format!("/proc/{me}/cmdline")).unwrap())
            .contains(&exe_name)
    );
    let host_pids = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count();
    let r = sh(
        &ws,
        &[],
        &format!(
            "ls /proc > procs.txt; cat /proc/[0-9]*/cmdline | tr '\\0' ' ' > cmds.txt; \
             cat /proc/{me}/cmdline > me.txt 2>/dev/null; echo ok > done.txt"
        ),
    );
    assert_eq!(ws.read("done.txt").as_deref(), Some("ok\n"), "{r:?}");
    let procs = ws.read("procs.txt").unwrap_or_default();
    let pids: Vec<u32> = procs
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(!pids.is_empty(), "no pids listed: {procs:?}");
    assert!(
        pids.len() <= 5,
        "the agent sees {} processes (host: {host_pids}): {pids:?}",
        pids.len()
    );
    assert!(pids.contains(&1), "the sandbox has its own pid 1: {pids:?}");
    let cmds = ws.read("cmds.txt").unwrap_or_default();
    assert!(
        !cmds.contains(&exe_name),
        "the test process is visible to the agent: {cmds}"
    );
    assert!(!ws.read("me.txt").unwrap_or_default().contains(&exe_name));
}

// ---------------------------------------------------------------------------------------------
// 13. Audit
// ---------------------------------------------------------------------------------------------

#[test]
fn every_audit_record_is_complete() {
    skip_unless!(
        Path::new(PYTHON).exists(),
        "no /usr/bin/python3 for the agent's socket calls"
    );
    let ws = Workspace::new("audit");
    write_exec(&ws.path("sudo"), "#!/bin/sh\n");
    ws.write("net.py", NET_PY);
    let l = Listener::new();
    let script = format!("/bin/true; ./sudo; {PYTHON} net.py tcp {}; exit 3", l.port);
    let r = sh(&ws, &[], &script);
    assert_eq!(r.code, Some(3), "{r:?}");
    let recs = ws.audit();
    let kinds: Vec<&str> = recs
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(kinds.first(), Some(&"session-start"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"session-end"), "{kinds:?}");
    assert!(kinds.contains(&"connect"), "{kinds:?}");

    let session = recs[0]["session"].as_str().expect("session").to_string();
    let mut ids = std::collections::HashSet::new();
    for rec in &recs {
        for f in ["id", "ts", "session", "pid", "kind", "action"] {
            assert!(!rec[f].is_null(), "{f} missing in {rec}");
        }
        assert_eq!(rec["session"], session.as_str(), "{rec}");
        let id = rec["id"].as_str().unwrap();
        assert!(id.starts_with(&format!("{session}-")), "{rec}");
        assert!(ids.insert(id.to_string()), "duplicate id {id}");
        let ts = rec["ts"].as_str().unwrap();
        assert!(
            ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.contains('T') && ts.ends_with('Z'),
            "ts {ts}"
        );
        assert!(rec["pid"].as_i64().unwrap() > 0, "{rec}");
        if rec["kind"].as_str().unwrap().starts_with("session-") {
            continue;
        }
        // The kernel's process events (tests/ebpf_exec.rs checks them in detail).
        if rec["source"] == "ebpf" {
            assert!(
                ["proc-exec", "proc-fork", "proc-exit"].contains(&rec["kind"].as_str().unwrap()),
                "{rec}"
            );
            for f in ["pid", "ppid", "cgroup_id", "comm"] {
                assert!(!rec["action"][f].is_null(), "{f} missing in {rec}");
            }
            continue;
        }
        assert!(
            ["exec", "open", "connect", "send", "bind", "exec-guard"]
                .contains(&rec["kind"].as_str().unwrap()),
            "{rec}"
        );
        assert!(
            ["allow", "deny"].contains(&rec["decision"].as_str().unwrap_or("")),
            "{rec}"
        );
        let by = rec["decided_by"].as_str().unwrap_or("");
        assert!(
            [
                "rule",
                "filesystem",
                "default",
                "human",
                "session",
                "timeout",
                "headless",
                "command-line",
                "exec-guard"
            ]
            .contains(&by),
            "{rec}"
        );
        assert!(rec["response_us"].is_u64(), "{rec}");
        assert!(rec["action"].is_object(), "{rec}");
        if by == "rule" {
            let loc = rec["rule"]
                .as_str()
                .unwrap_or_else(|| panic!("rule missing: {rec}"));
            let mut p = loc.rsplitn(3, ':');
            assert!(
                p.next().unwrap().parse::<u32>().is_ok()
                    && p.next().unwrap_or("x").parse::<u32>().is_ok(),
                "{loc}"
            );
        }
        if rec["kind"] == "exec" {
            assert!(
                rec["action"]["path"].is_string() && rec["action"]["invoked"].is_string(),
                "{rec}"
            );
            assert!(rec["action"]["argv"].is_array(), "{rec}");
        }
        if rec["kind"] == "connect" {
            assert_eq!(
                rec["action"]["destination"],
                format!("127.0.0.1:{}", l.port),
                "{rec}"
            );
        }
    }
    let start = &recs[0]["action"];
    assert_eq!(start["argv"], serde_json::json!(["/bin/sh", "-c", script]));
    assert_eq!(
        start["workspace"],
        fs::canonicalize(&ws.dir).unwrap().display().to_string()
    );
    assert_eq!(recs.last().unwrap()["action"]["exit_code"], 3);
    // One record per decision: /bin/true, ./sudo, python3, the connect (+ sh itself).
    assert_eq!(execs_of(&ws, "/bin/true").len(), 1);
    assert_eq!(execs_of(&ws, "./sudo")[0]["decision"], "deny");
}

#[test]
fn an_unusable_audit_path_refuses_to_start() {
    let ws = Workspace::new("bad-audit");
    let regular = base(&ws).join("regular-file");
    fs::write(&regular, "").unwrap();
    let bad = regular.join("sub/audit.jsonl");
    let mut c = common::supervisor_command();
    c.args(["run", "-q", "--headless", "--audit"])
        .arg(&bad)
        .args(["--", "/bin/sh", "-c", "echo ran > marker"]);
    c.current_dir(&ws.dir).stdin(Stdio::null()).no_ci();
    let r = run_with_timeout(c, LIMIT);
    assert_eq!(r.code, Some(125), "{r:?}");
    assert!(
        r.stderr.contains(&bad.display().to_string()),
        "the message does not name the path: {}",
        r.stderr
    );
    assert!(r.stderr.contains("audit"), "{}", r.stderr);
    assert!(
        !ws.path("marker").exists(),
        "the agent ran without an audit log"
    );
}

#[test]

fn an_unusable_audit_path_error_states_its_cause_once() {
    let ws = Workspace::new("bad-audit-msg");
    let regular = base(&ws).join("regular-file");
    fs::write(&regular, "").unwrap();
    let bad = regular.join("sub/audit.jsonl");
    let mut c = common::supervisor_command();
    c.args(["run", "-q", "--headless", "--audit"])
        .arg(&bad)
        .args(["--", "/bin/true"]);
    c.current_dir(&ws.dir).stdin(Stdio::null()).no_ci();
    let r = run_with_timeout(c, LIMIT);
    assert_eq!(r.code, Some(125), "{r:?}");
    let cause = std::io::Error::from_raw_os_error(libc::ENOTDIR).to_string();
    assert_eq!(r.stderr.matches(&cause).count(), 1, "{}", r.stderr);
}
