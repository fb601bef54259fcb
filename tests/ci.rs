//! CI-runner mode (`run --ci`, `CI=true`): no prompt even on a terminal, the JSON report
//! checked against the audit log and against side effects seen from outside (files,
//! listeners), GitHub annotations (escaped: the agent chooses the text), the step summary,
//! exit codes, a refused start, a symlink planted at the report path; the `ci` preset; the
//! documented example workflows.
//!
//! These tests set `CI`, `GITHUB_ACTIONS` and `GITHUB_STEP_SUMMARY` themselves: each
//! supervisor starts from `common::supervisor_command()` (none of them) and adds what the
//! test is about.

mod common;
use common::NoCi;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{run_with_timeout, Listener, Result_, Workspace};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);
const PYTHON: &str = "/usr/bin/python3";

/// The agent: `agent.py EXIT_CODE OP ARG ...` with ops `write PATH`, `connect PORT`,
/// `print TEXT`, `symlink TARGET LINK`, `flood N` (4 threads each try to write N files in
/// `denied/`); failures are ignored (the test looks from outside).
const AGENT: &str = r#"
import os, socket, sys, threading
def flood(n, t):
    for i in range(n):
        try:
            open(f"denied/flood-{t}-{i}", "w").close()
        except OSError:
            pass
args = sys.argv[1:]
code = int(args.pop(0))
while args:
    op, arg = args.pop(0), args.pop(0)
    try:
        if op == "write":
            with open(arg, "w") as f:
                f.write("written by the agent")
        elif op == "connect":
            s = socket.socket()
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", int(arg)))
            finally:
                s.close()
        elif op == "print":
            print(arg, flush=True)
        elif op == "symlink":
            os.symlink(arg, args.pop(0))
        elif op == "flood":
            threads = [threading.Thread(target=flood, args=(int(arg), t)) for t in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    except OSError as e:
        print(f"{op} {arg!r}: {e}", file=sys.stderr, flush=True)
sys.exit(code)
"#;

/// A policy with an allow, a deny and two ask rules (and the sandboxed preset under them).
/// The file `ask` rule makes the supervisor decide every open, so that the denied write is
/// its decision (with a record), not only a mount mask's. (Python starting under trapped
/// opens also guards against deciding opendir()'s O_DIRECTORY opens as O_TMPFILE writes.)
struct TestPolicy {
    path: PathBuf,
    text: String,
}

fn test_policy(ws: &Workspace, allowed_port: u16, asked_port: u16) -> TestPolicy {
    let text = format!(
        "version = 1\nextends = \"sandboxed\"\napproval_timeout = \"10s\"\n\
         [[rule]]\ndecision = \"deny\"\nfile = \"{{workspace}}/denied/**\"\naccess = [\"write\"]\nreason = \"the test's denied tree\"\n\
         [[rule]]\ndecision = \"allow\"\nnetwork = \"127.0.0.1:{allowed_port}\"\nreason = \"the test's allowed listener\"\n\
         [[rule]]\ndecision = \"ask\"\nnetwork = \"127.0.0.1:{asked_port}\"\nreason = \"the test's asked listener\"\n\
         [[rule]]\ndecision = \"ask\"\nfile = \"{{workspace}}/asked/**\"\naccess = [\"write\"]\nreason = \"the test's asked tree (every open is trapped)\"\n"
    );
    TestPolicy {
        path: ws.policy(&text),
        text,
    }
}

/// 1-based line of the `nth` `[[rule]]` of `text`.
fn rule_line(text: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim() == "[[rule]]")
        .nth(nth)
        .expect("rule")
        .0
        + 1
}

fn base(ws: &Workspace) -> PathBuf {
    ws.dir.parent().expect("workspace base").to_path_buf()
}

fn agent(ws: &Workspace) -> String {
    ws.write("agent.py", AGENT).display().to_string()
}

/// `agent-supervisor run -q --audit A [extra] -- cmd` in the workspace, with `env` added to
/// an environment without the CI variables.
fn run(ws: &Workspace, env: &[(&str, &str)], extra: &[&str], cmd: &[&str]) -> Result_ {
    let mut c = common::supervisor_command();
    c.args(["run", "-q", "--audit"])
        .arg(&ws.audit)
        .args(extra)
        .arg("--")
        .args(cmd)
        .current_dir(&ws.dir)
        .stdin(Stdio::null())
        .envs(env.iter().copied());
    let r = run_with_timeout(c, LIMIT);
    assert!(!r.timed_out, "the supervisor hit the time limit: {r:?}");
    r
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
}

/// (kind -> (allowed, denied)) of the audit log's decision records.
fn audit_counts(ws: &Workspace) -> BTreeMap<String, (u64, u64)> {
    let mut m: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in ws.audit().iter().filter(|r| r["decision"].is_string()) {
        let e = m
            .entry(r["kind"].as_str().unwrap().to_string())
            .or_default();
        if r["decision"] == "allow" {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    m
}

fn report_counts(report: &Value) -> BTreeMap<String, (u64, u64)> {
    report["counts"]["by_kind"]
        .as_object()
        .expect("counts.by_kind")
        .iter()
        .map(|(k, c)| {
            (
                k.clone(),
                (c["allow"].as_u64().unwrap(), c["deny"].as_u64().unwrap()),
            )
        })
        .collect()
}

/// Every entry of the report's `list` is the audit record with its id, field for field.
fn entries_match_audit(ws: &Workspace, report: &Value, list: &str) {
    let audit = ws.audit();
    for e in report[list].as_array().expect(list) {
        let rec = audit
            .iter()
            .find(|r| r["id"] == e["id"])
            .unwrap_or_else(|| panic!("{list} entry {e} is not in the audit log"));
        for (entry_field, audit_field) in [
            ("kind", "kind"),
            ("decision", "decision"),
            ("decided_by", "decided_by"),
            ("rule", "rule"),
            ("reason", "reason"),
            ("time", "ts"),
            ("pid", "pid"),
        ] {
            assert_eq!(
                e[entry_field], rec[audit_field],
                "{list}: {entry_field} differs from the audit record {rec}"
            );
        }
    }
}

fn pty_available() -> bool {
    Path::new(PYTHON).exists() && Path::new("/dev/ptmx").exists()
}

#[test]
fn ci_mode_never_prompts_and_reports_every_decision() {
    skip_unless!(
        pty_available(),
        "no /usr/bin/python3 or /dev/ptmx to drive a pseudo-terminal"
    );
    let ws = Workspace::new("ci-report");
    ws.write("denied/.keep", "");
    ws.write("asked/.keep", "");
    let allowed = Listener::new();
    let asked = Listener::new();
    let policy = test_policy(&ws, allowed.port, asked.port);
    let agent = agent(&ws);
    let report_path = base(&ws).join("report.json");
    let driver = base(&ws).join("pty_driver.py");
    fs::write(&driver, common::PTY_DRIVER).expect("write the pty driver");
    let (a, q) = (allowed.port.to_string(), asked.port.to_string());
    let argv = [
        PYTHON,
        &agent,
        "7",
        "write",
        "denied/x.txt",
        "write",
        "ok.txt",
        "write",
        "asked/y.txt",
        "connect",
        &q,
        "connect",
        &a,
    ];
    let mut c = Command::new(PYTHON);
    c.arg(&driver)
        .arg("yyyy")
        .arg(LIMIT.as_secs().to_string())
        .arg(common::bin())
        .args(["run", "-q", "--ci", "--audit"])
        .arg(&ws.audit)
        .arg("--report")
        .arg(&report_path)
        .arg("--policy")
        .arg(&policy.path)
        .arg("--")
        .args(argv)
        .current_dir(&ws.dir)
        .stdin(Stdio::null())
        .no_ci();
    let r = run_with_timeout(c, LIMIT + Duration::from_secs(10));
    assert!(!r.timed_out && r.code == Some(0), "pty driver: {r:?}");
    let p: Value = serde_json::from_str(r.stdout.trim()).expect("driver output");
    assert_eq!(p["timed_out"], false, "{p}");
    assert_eq!(p["prompts"], 0, "CI mode prompted on the terminal: {p}");
    assert_eq!(p["status"], 7, "not the agent's exit code: {p}");

    // From outside: what happened.
    assert!(
        !ws.path("denied/x.txt").exists(),
        "the denied write happened"
    );
    assert!(
        !ws.path("asked/y.txt").exists(),
        "the asked write happened in CI"
    );
    assert_eq!(
        ws.read("ok.txt").as_deref(),
        Some("written by the agent"),
        "the allowed write did not happen: {p}"
    );
    assert!(!asked.was_reached(), "the asked listener was reached in CI");
    assert!(
        allowed.was_reached(),
        "the allowed listener was not reached"
    );

    // The report against the audit log.
    let report = read_json(&report_path);
    assert_eq!(report["schema_version"], 1);
    assert_eq!(report["status"], "completed");
    assert_eq!(report["exit_code"], 7);
    assert_eq!(report["agent_exit_code"], 7);
    assert_eq!(report["ended_by"], "exit");
    assert_eq!(report["default_allow"], false);
    assert_eq!(report["policy"], policy.path.display().to_string());
    assert_eq!(report["audit_log"], ws.audit.display().to_string());
    assert_eq!(report["command"], serde_json::json!(argv));
    let audit = ws.audit();
    assert_eq!(report["session"], audit[0]["session"], "{}", audit[0]);
    assert!(report["duration_ms"].as_u64().unwrap() < LIMIT.as_millis() as u64);
    assert!(report["started"].as_str().unwrap() <= report["ended"].as_str().unwrap());

    let counts = audit_counts(&ws);
    assert_eq!(report_counts(&report), counts, "{report}");
    let (allow, deny) = counts
        .values()
        .fold((0, 0), |(a, d), (x, y)| (a + x, d + y));
    assert_eq!(report["counts"]["total"]["allow"], allow);
    assert_eq!(report["counts"]["total"]["deny"], deny);

    let seq = |id: &Value| -> u64 {
        id.as_str()
            .unwrap()
            .rsplit('-')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let mut denied_ids: Vec<&Value> = audit
        .iter()
        .filter(|r| r["decision"] == "deny")
        .map(|r| &r["id"])
        .collect();
    denied_ids.sort_by_key(|id| seq(id));
    let report_ids: Vec<&Value> = report["denials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["id"])
        .collect();
    assert_eq!(
        report_ids, denied_ids,
        "every denial, in the order of their ids"
    );
    entries_match_audit(&ws, &report, "denials");
    assert_eq!(report["approvals"], serde_json::json!([]));

    let denial = |kind: &str, needle: &str| {
        report["denials"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == kind && e["action"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("no {kind} denial with {needle}: {report}"))
            .clone()
    };
    let write = denial("open", "denied/x.txt");
    assert_eq!(write["decided_by"], "rule");
    assert!(
        write["rule"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}:1", rule_line(&policy.text, 0))),
        "{write}"
    );
    assert_eq!(write["reason"], "the test's denied tree");
    let asked_write = denial("open", "asked/y.txt");
    assert_eq!(asked_write["decided_by"], "headless");
    assert!(
        asked_write["rule"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}:1", rule_line(&policy.text, 3))),
        "{asked_write}"
    );
    let ask = denial("connect", &format!("127.0.0.1:{}", asked.port));
    assert_eq!(ask["decided_by"], "headless");
    assert!(
        ask["rule"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}:1", rule_line(&policy.text, 2))),
        "{ask}"
    );
    // The human summary at the end (on the terminal here), denials first.
    let out = p["out"].as_str().unwrap();
    let summary = out
        .find("CI summary")
        .map(|i| &out[i..])
        .unwrap_or_else(|| panic!("no summary: {out}"));
    let denied_at = summary.find("DENIED").expect("denials in the summary");
    assert!(denied_at < summary.find("totals:").unwrap(), "{summary}");
    assert!(summary.contains(&report_path.display().to_string()));
}

#[test]
fn default_allow_lets_asks_through_and_lists_them_as_approvals() {
    skip_unless!(
        Path::new(PYTHON).exists(),
        "no /usr/bin/python3 for the agent"
    );
    let ws = Workspace::new("ci-default-allow");
    let allowed = Listener::new();
    let asked = Listener::new();
    let policy = test_policy(&ws, allowed.port, asked.port);
    let agent = agent(&ws);
    let report_path = base(&ws).join("report.json");
    let q = asked.port.to_string();
    let r = run(
        &ws,
        &[],
        &[
            "--ci",
            "--default-allow",
            "--report",
            report_path.to_str().unwrap(),
            "--policy",
            policy.path.to_str().unwrap(),
        ],
        &[PYTHON, &agent, "0", "connect", &q],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        asked.was_reached(),
        "--default-allow: the ask was not allowed"
    );
    // Not on GitHub: no workflow commands.
    assert!(
        !r.stdout.lines().any(|l| l.starts_with("::")),
        "{}",
        r.stdout
    );
    let report = read_json(&report_path);
    assert_eq!(report["default_allow"], true);
    let approvals = report["approvals"].as_array().unwrap();
    let connect = approvals
        .iter()
        .find(|e| e["kind"] == "connect")
        .unwrap_or_else(|| panic!("no connect approval: {report}"));
    assert_eq!(connect["decision"], "allow");
    assert_eq!(connect["decided_by"], "headless");
    assert!(connect["action"].as_str().unwrap().contains(&q));
    entries_match_audit(&ws, &report, "approvals");
    assert_eq!(report_counts(&report), audit_counts(&ws));
}

#[test]
fn a_flood_of_denials_from_threads_is_counted_and_the_lists_bounded() {
    skip_unless!(
        Path::new(PYTHON).exists(),
        "no /usr/bin/python3 for the agent"
    );
    let ws = Workspace::new("ci-flood");
    ws.write("denied/.keep", "");
    ws.write("asked/.keep", "");
    let policy = test_policy(&ws, 1, 2);
    let agent = agent(&ws);
    let report_path = base(&ws).join("report.json");
    let r = run(
        &ws,
        &[("GITHUB_ACTIONS", "true")],
        &[
            "--ci",
            "--report",
            report_path.to_str().unwrap(),
            "--policy",
            policy.path.to_str().unwrap(),
        ],
        &[PYTHON, &agent, "0", "flood", "300"],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let written = fs::read_dir(ws.path("denied")).unwrap().count();
    assert_eq!(written, 1, "denied files were written");
    let report = read_json(&report_path);
    let counts = audit_counts(&ws);
    assert_eq!(report_counts(&report), counts);
    let denied = report["counts"]["total"]["deny"].as_u64().unwrap();
    assert!(denied >= 1200, "{denied} denials for 1200 writes");
    let listed = report["denials"].as_array().unwrap().len() as u64;
    assert_eq!(listed, 1000, "the denial list is bounded");
    assert_eq!(report["denials_omitted"].as_u64().unwrap(), denied - listed);
    entries_match_audit(&ws, &report, "denials");
    let errors = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("::error"))
        .count();
    assert_eq!(
        errors, 10,
        "one annotation per denial, at most 10: {}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains(&format!("{} more denials in the report", denied - 10)),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr
            .contains(&format!("... and {} more (see the report)", denied - 20)),
        "{}",
        r.stderr
    );
}

#[test]
fn ci_true_turns_ci_mode_on_and_a_planted_symlink_is_not_followed() {
    skip_unless!(
        Path::new(PYTHON).exists(),
        "no /usr/bin/python3 for the agent"
    );
    let ws = Workspace::new("ci-env");
    let agent = agent(&ws);
    // Outside the workspace: the agent may not write it, the supervisor must not either.
    let victim = base(&ws).join("victim");
    fs::write(&victim, "precious").unwrap();
    let report_path = ws.path("agent-supervisor-report.json");
    let r = run(
        &ws,
        &[("CI", "true")],
        &["--policy", "preset:sandboxed"],
        &[
            PYTHON,
            &agent,
            "3",
            "symlink",
            victim.to_str().unwrap(),
            report_path.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, Some(3), "{r:?}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    let meta = fs::symlink_metadata(&report_path).expect("the report exists");
    assert!(meta.file_type().is_file(), "the report is not a plain file");
    let report = read_json(&report_path);
    assert_eq!(report["status"], "completed");
    assert_eq!(report["exit_code"], 3);
    assert!(r.stderr.contains("CI summary"), "{}", r.stderr);
    // No temporary file left next to it.
    let leftovers: Vec<_> = fs::read_dir(&ws.dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn ci_false_and_no_ci_turn_ci_mode_off() {
    let ws = Workspace::new("ci-off");
    let report_path = ws.path("agent-supervisor-report.json");
    for (env, extra) in [
        (&[("CI", "false")][..], &[][..]),
        (&[("CI", "true")][..], &["--no-ci"][..]),
    ] {
        let r = run(&ws, env, extra, &["/bin/true"]);
        assert_eq!(r.code, Some(0), "{env:?} {extra:?}: {r:?}");
        assert!(!report_path.exists(), "{env:?} {extra:?}: a report");
        assert!(!r.stderr.contains("CI summary"), "{}", r.stderr);
    }
    let r = run(&ws, &[], &["--report", "r.json"], &["/bin/true"]);
    assert_eq!(r.code, Some(125), "{r:?}");
    assert!(r.stderr.contains("--report is for CI mode"), "{}", r.stderr);
    assert!(!ws.path("r.json").exists());
}

#[test]
fn github_annotations_are_escaped_and_the_step_summary_appended() {
    skip_unless!(
        Path::new(PYTHON).exists(),
        "no /usr/bin/python3 for the agent"
    );
    let ws = Workspace::new("ci-github");
    ws.write("denied/.keep", "");
    ws.write("asked/.keep", "");
    let policy = test_policy(&ws, 1, 2);
    let agent = agent(&ws);
    let summary = base(&ws).join("step-summary.md");
    fs::write(&summary, "previous step\n").unwrap();
    let evil = "denied/x\n::add-mask::secret\r\n::set-env name=A::b, c: d%0A";
    let r = run(
        &ws,
        &[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_STEP_SUMMARY", summary.to_str().unwrap()),
        ],
        &[
            "--ci",
            "--report",
            "../report.json",
            "--policy",
            policy.path.to_str().unwrap(),
        ],
        &[
            PYTHON,
            &agent,
            "0",
            "print",
            "::warning::printed by the agent",
            "write",
            evil,
        ],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(!ws.path("denied").join("x").exists());
    let lines: Vec<&str> = r.stdout.lines().collect();
    // Workflow commands are stopped while the agent runs, with a token it never saw.
    let token = lines
        .first()
        .and_then(|l| l.strip_prefix("::stop-commands::"))
        .unwrap_or_else(|| panic!("stdout does not start with stop-commands: {}", r.stdout));
    assert!(token.len() >= 32, "{token}");
    let resume = format!("::{token}::");
    let resumed_at = lines
        .iter()
        .position(|l| *l == resume)
        .unwrap_or_else(|| panic!("commands never resumed: {}", r.stdout));
    let agent_at = lines
        .iter()
        .position(|l| *l == "::warning::printed by the agent")
        .expect("the agent's line");
    assert!(agent_at < resumed_at, "{}", r.stdout);
    // After that, only our annotations, each on one line.
    let ours = &lines[resumed_at + 1..];
    assert!(!ours.is_empty());
    for l in ours {
        assert!(
            ["::error title=", "::warning title=", "::notice title="]
                .iter()
                .any(|p| l.starts_with(p)),
            "not one of our annotations: {l:?}\n{}",
            r.stdout
        );
    }
    let denied = ours
        .iter()
        .find(|l| l.starts_with("::error title=agent-supervisor denied open::"))
        .unwrap_or_else(|| panic!("no denial annotation: {}", r.stdout));
    assert!(
        denied.contains("denied/x%0A::add-mask::secret%0D%0A::set-env name=A::b, c: d%250A"),
        "{denied}"
    );
    assert!(ours
        .iter()
        .any(|l| l.starts_with("::notice title=agent-supervisor session ")));
    // Annotations go to stdout only.
    assert!(
        !r.stderr.lines().any(|l| l.starts_with("::")),
        "{}",
        r.stderr
    );

    let md = fs::read_to_string(&summary).unwrap();
    assert!(md.starts_with("previous step\n"), "overwritten: {md}");
    assert!(md.contains("### agent-supervisor: session"), "{md}");
    let row = md
        .lines()
        .find(|l| l.contains("add\\-mask"))
        .unwrap_or_else(|| panic!("no denial row: {md}"));
    assert!(row.starts_with("| open |") && row.ends_with('|'), "{row}");
    assert!(!md.lines().any(|l| l.starts_with("::")), "{md}");
    let report = read_json(&base(&ws).join("report.json"));
    assert_eq!(report["status"], "completed");
}

#[test]
fn a_refused_start_exits_125_with_a_refused_report_and_annotation() {
    let ws = Workspace::new("ci-refused");
    let policy = ws.policy("version = 1\n[[rule]]\ndecision = \"alow\"\ncommand = \"x\"\n");
    let report_path = base(&ws).join("report.json");
    let r = run(
        &ws,
        &[("GITHUB_ACTIONS", "true")],
        &[
            "--ci",
            "--report",
            report_path.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
        ],
        &["/bin/sh", "-c", "echo ran > marker"],
    );
    assert_eq!(r.code, Some(125), "{r:?}");
    assert!(!ws.path("marker").exists(), "the agent ran");
    let report = read_json(&report_path);
    assert_eq!(report["status"], "refused");
    assert_eq!(report["ended_by"], "refused");
    assert_eq!(report["exit_code"], 125);
    assert_eq!(report["agent_exit_code"], Value::Null);
    let error = report["error"].as_str().expect("error");
    assert!(error.contains("policy.toml:3:"), "{error}");
    assert!(error.contains("alow"), "{error}");
    assert_eq!(report["policy"], policy.display().to_string());
    assert_eq!(report["counts"]["total"]["deny"], 0);
    let refused = r
        .stdout
        .lines()
        .find(|l| l.starts_with("::error title=agent-supervisor refused to start the agent::"))
        .unwrap_or_else(|| panic!("no refusal annotation: {}", r.stdout));
    assert!(refused.contains("alow"), "{refused}");
    assert!(r.stderr.contains("REFUSED"), "{}", r.stderr);
}

// --- the `ci` preset -------------------------------------------------------------------------

fn cli(args: &[&str], env: &[(&str, &str)]) -> Result_ {
    let mut c = common::supervisor_command();
    c.args(args)
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .envs(env.iter().copied());
    let r = run_with_timeout(c, LIMIT);
    assert!(!r.timed_out, "{args:?}: {r:?}");
    r
}

#[test]
fn the_ci_preset_checks() {
    let r = cli(&["policy", "check", "preset:ci"], &[]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("preset:ci: ok"), "{}", r.stdout);
    assert!(r.stdout.contains("default deny"), "{}", r.stdout);
}

#[test]
fn the_ci_preset_denies_publishing_allows_registries_and_hides_keys() {
    // Programs on a PATH of our own (the host may have no cargo or git): `cargo` is a
    // symlink to `rustup`, as rustup installs it.
    let dir = std::env::temp_dir().join(format!("as-ci-preset-{}", std::process::id()));
    let home = dir.join("home");
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::create_dir_all(home.join(".ssh")).unwrap();
    for name in ["rustup", "git", "twine"] {
        let p = bin.join(name);
        fs::write(&p, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    std::os::unix::fs::symlink(bin.join("rustup"), bin.join("cargo")).unwrap();
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let env = [("PATH", path.as_str()), ("HOME", home.to_str().unwrap())];
    let explain = |action: &[&str]| -> Value {
        let mut args = vec!["policy", "explain", "preset:ci", "--json", "--"];
        args.extend_from_slice(action);
        let r = cli(&args, &env);
        assert_eq!(r.code, Some(0), "{action:?}: {r:?}");
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"))
    };
    let key = home.join(".ssh/id_ed25519").display().to_string();
    let set_env = home
        .join("work/_temp/_runner_file_commands/set_env_1234")
        .display()
        .to_string();
    let cases: [(&[&str], &str, &str); 9] = [
        (&["exec", "cargo", "publish"], "deny", "publishing a crate"),
        (
            &["exec", "git", "push", "origin", "main"],
            "deny",
            "pushing",
        ),
        (&["exec", "twine", "upload", "dist/*"], "deny", "PyPI"),
        (&["exec", "cargo", "test"], "allow", ""),
        (&["connect", "index.crates.io:443"], "allow", ""),
        (&["connect", "pypi.org:443"], "allow", ""),
        (&["connect", "exfil.example.com:443"], "deny", ""),
        (&["open", &key], "deny", "SSH keys"),
        (&["open", &set_env, "--write"], "deny", "later steps"),
    ];
    for (action, decision, reason) in cases {
        let e = explain(action);
        assert_eq!(e["decision"], decision, "{action:?}: {e}");
        assert!(
            e["reason"].as_str().unwrap_or("").contains(reason),
            "{action:?}: {e}"
        );
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_session_under_the_ci_preset_builds_but_cannot_publish_or_read_keys() {
    let ws = Workspace::new("ci-preset-run");
    let home = base(&ws).join("home");
    fs::create_dir_all(home.join(".ssh")).unwrap();
    fs::write(home.join(".ssh/id_ed25519"), "SECRET-KEY\n").unwrap();
    // A stand-in for cargo in the checkout: it records each command it ran.
    let cargo = ws.write("tools/cargo", "#!/bin/sh\necho \"$*\" >> ran.txt\n");
    fs::set_permissions(&cargo, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let report_path = base(&ws).join("report.json");
    let home_s = home.display().to_string();
    let r = run(
        &ws,
        &[("HOME", &home_s)],
        &[
            "--ci",
            "--report",
            report_path.to_str().unwrap(),
            "--policy",
            "preset:ci",
        ],
        &[
            "/bin/sh",
            "-c",
            "./tools/cargo build; ./tools/cargo publish; cat \"$HOME/.ssh/id_ed25519\" > leak.txt; exit 0",
        ],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        ws.read("ran.txt").as_deref(),
        Some("build\n"),
        "{}",
        r.stderr
    );
    assert!(
        !ws.read("leak.txt").unwrap_or_default().contains("SECRET"),
        "the key leaked"
    );
    let report = read_json(&report_path);
    assert_eq!(report["policy"], "preset:ci");
    let publish = report["denials"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "exec" && e["action"].as_str().unwrap().contains("publish"))
        .unwrap_or_else(|| panic!("no publish denial: {report}"));
    assert_eq!(publish["decided_by"], "rule");
    assert!(
        publish["reason"]
            .as_str()
            .unwrap()
            .contains("publishing a crate"),
        "{publish}"
    );
    assert!(publish["rule"].as_str().unwrap().starts_with("preset:ci:"));
}

// --- the documented examples -------------------------------------------------------------------

/// Every `agent-supervisor run` command line in a YAML document's strings.
fn run_lines(v: &serde_yaml::Value, out: &mut Vec<String>) {
    match v {
        serde_yaml::Value::String(s) => {
            // Shell line continuations joined.
            let joined = s.replace("\\\n", " ");
            out.extend(
                joined
                    .lines()
                    .filter(|l| l.contains("agent-supervisor run"))
                    .map(str::to_string),
            );
        }
        serde_yaml::Value::Sequence(items) => items.iter().for_each(|i| run_lines(i, out)),
        serde_yaml::Value::Mapping(m) => m.values().for_each(|i| run_lines(i, out)),
        serde_yaml::Value::Tagged(t) => run_lines(&t.value, out),
        _ => {}
    }
}

/// The long options `run --help` lists.
fn run_options() -> Vec<String> {
    let help = cli(&["run", "--help"], &[]);
    assert_eq!(help.code, Some(0), "{help:?}");
    help.stdout
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .flat_map(|l| l.split([' ', ',']).filter(|w| w.starts_with("--")))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_example_workflows_are_valid_yaml_and_use_real_flags() {
    let options = run_options();
    assert!(options.iter().any(|o| o == "--report"), "{options:?}");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
    for name in ["github-actions.yml", "gitlab-ci.yml"] {
        let path = examples.join(name);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
        let mut lines = Vec::new();
        run_lines(&doc, &mut lines);
        assert!(!lines.is_empty(), "{name}: no agent-supervisor run line");
        for line in lines {
            let words: Vec<&str> = line.split_whitespace().collect();
            let start = words.iter().position(|w| *w == "run").expect("run") + 1;
            let end = words.iter().position(|w| *w == "--").unwrap_or_else(|| {
                panic!("{name}: `{line}` has no `--` before the agent's command")
            });
            let flags: Vec<&str> = words[start..end]
                .iter()
                .map(|w| w.trim_matches('"'))
                .collect();
            // Each option is one `run --help` lists: an unknown one would not be refused but
            // taken as the start of the agent's command.
            for flag in flags.iter().filter(|w| w.starts_with("--")) {
                let flag = flag.split('=').next().unwrap_or_default();
                assert!(
                    options.iter().any(|o| o == flag),
                    "{name}: `{flag}` is not an option of run: {line}"
                );
            }
            // And they parse (a value where one is due) up to the help.
            let mut args = vec!["run"];
            args.extend(&flags);
            args.push("--help");
            let r = cli(&args, &[]);
            assert_eq!(r.code, Some(0), "{name}: `{line}`: {}", r.stderr);
            assert!(
                r.stdout.contains("Usage: agent-supervisor run"),
                "{name}: `{line}`: {}",
                r.stdout
            );
            assert!(flags.contains(&"--ci"), "{name}: no --ci in {line}");
        }
    }
}

/// A session killed at its timeout: the report says so (how it ended, the limit), exit 124.
#[test]
fn a_session_killed_at_its_timeout_is_reported_as_such() {
    skip_unless!(
        common::is_root(),
        "needs root: the timeout watches the session's cgroup"
    );
    let ws = Workspace::new("ci-timeout");
    let report_path = ws.path("report.json");
    let r = run(
        &ws,
        &[],
        &[
            "--ci",
            "--policy",
            "preset:unrestricted",
            "--timeout",
            "1s",
            "--report",
            report_path.to_str().unwrap(),
        ],
        &["/bin/sleep", "30"],
    );
    assert_eq!(r.code, Some(124), "{r:?}");
    let report = read_json(&report_path);
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(report["ended_by"], "timeout", "{report}");
    assert_eq!(report["exit_code"], 124, "{report}");
    assert!(!report["limit"].is_null(), "{report}");
    assert!(r.stderr.contains("KILLED at its timeout"), "{}", r.stderr);
}
