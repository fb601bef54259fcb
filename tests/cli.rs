//! The command line: help texts, `version`, `init`, `policy check`, `policy explain`, and how
//! `run` refuses a bad policy. Run against the real binary, each in a throw-away directory.

mod common;
use common::NoCi;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{run_with_timeout, Result_, Workspace};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(20);

/// `agent-supervisor args...` in `dir`, without CI in the environment.
fn cli_in(dir: &Path, args: &[&str]) -> Result_ {
    let mut c = common::supervisor_command();
    c.args(args).current_dir(dir).stdin(Stdio::null()).no_ci();
    let r = run_with_timeout(c, LIMIT);
    assert!(
        !r.timed_out,
        "agent-supervisor {args:?} hit the time limit: {r:?}"
    );
    r
}

fn cli(args: &[&str]) -> Result_ {
    cli_in(&std::env::temp_dir(), args)
}

/// The text of the `[[rule]]` block a location ("preset:sandboxed:29:1" or "FILE:12:1")
/// points at, read from the preset's source file (or FILE).
fn rule_at(location: &str) -> String {
    let mut parts = location.rsplitn(3, ':');
    let (_col, line, file) = (
        parts.next(),
        parts.next().expect("line"),
        parts.next().expect("file"),
    );
    let path = match file.strip_prefix("preset:") {
        Some(name) => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../policies")
            .join(format!("{name}.toml")),
        None => PathBuf::from(file),
    };
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let line: usize = line.parse().expect("line number");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.get(line - 1).map(|l| l.trim()),
        Some("[[rule]]"),
        "{location} is not a rule"
    );
    lines[line..]
        .iter()
        .take_while(|l| l.trim() != "[[rule]]")
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `preset:NAME:LINE:COL` location in a `decided by:` line of `policy explain`.
fn location_in(explain_out: &str) -> String {
    let line = explain_out
        .lines()
        .find(|l| l.starts_with("decided by:"))
        .expect("decided by line");
    line.split_whitespace()
        .map(|w| w.trim_end_matches(':'))
        .find(|w| w.starts_with("preset:") && w.matches(':').count() == 3)
        .unwrap_or_else(|| panic!("no rule location in {line:?}"))
        .to_string()
}

fn field<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name:?} line in {out}"))
}

// ---------------------------------------------------------------------------------------------
// Help and version
// ---------------------------------------------------------------------------------------------

#[test]
fn every_help_text_has_an_example() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["init", "--help"],
        &["version", "--help"],
        &["policy", "check", "--help"],
        &["policy", "explain", "--help"],
    ] {
        let r = cli(args);
        assert_eq!(r.code, Some(0), "{args:?}: {r:?}");
        assert!(r.stdout.contains("Usage:"), "{args:?}: {}", r.stdout);
        let example = r
            .stdout
            .find("Example")
            .unwrap_or_else(|| panic!("{args:?} has no Example: {}", r.stdout));
        assert!(
            r.stdout[example..].contains("agent-supervisor "),
            "{args:?}: the example shows no command line: {}",
            r.stdout
        );
    }
}

#[test]
fn version_prints_the_package_version() {
    let r = cli(&["version"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout
            .contains(&format!("agent-supervisor {}", env!("CARGO_PKG_VERSION"))),
        "{}",
        r.stdout
    );
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(r.stdout.contains(kernel.trim()), "{}", r.stdout);
}

#[test]
fn version_json_is_valid_json() {
    let r = cli(&["version", "--json"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let v: Value =
        serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", r.stdout));
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["name"], "agent-supervisor");
    assert_eq!(
        v["kernel"],
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap()
            .trim()
    );
    assert!(v["landlock_abi"].is_u64(), "{v}");
}

// ---------------------------------------------------------------------------------------------
// init
// ---------------------------------------------------------------------------------------------

#[test]
fn init_writes_a_policy_that_check_accepts() {
    let ws = Workspace::new("init");
    let r = cli_in(&ws.dir, &["init"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let policy = ws.path(".agent-supervisor/policy.toml");
    let text = fs::read_to_string(&policy).expect("init wrote .agent-supervisor/policy.toml");
    assert!(text.contains("version = 1"), "{text}");
    let r = cli_in(
        &ws.dir,
        &["policy", "check", ".agent-supervisor/policy.toml"],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("ok"), "{r:?}");
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let ws = Workspace::new("init-force");
    let policy = ws.write(
        ".agent-supervisor/policy.toml",
        "# my own policy\nversion = 1\n",
    );
    let r = cli_in(&ws.dir, &["init"]);
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(
        r.stderr.contains("already exists") && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    assert_eq!(
        fs::read_to_string(&policy).unwrap(),
        "# my own policy\nversion = 1\n"
    );

    let r = cli_in(&ws.dir, &["init", "--force"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    let text = fs::read_to_string(&policy).unwrap();
    assert!(
        !text.contains("my own policy") && text.contains("extends"),
        "{text}"
    );
}

#[test]
fn init_writes_to_a_given_path() {
    let ws = Workspace::new("init-path");
    let r = cli_in(&ws.dir, &["init", "conf/p.toml"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(ws.path("conf/p.toml").is_file());
    assert!(!ws.path(".agent-supervisor").exists());
    assert_eq!(
        cli_in(&ws.dir, &["policy", "check", "conf/p.toml"]).code,
        Some(0)
    );
}

// ---------------------------------------------------------------------------------------------
// policy check
// ---------------------------------------------------------------------------------------------

/// `(line, column)`, 1-based, of the first occurrence of `needle` in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .find_map(|(i, l)| l.find(needle).map(|c| (i + 1, c + 1)))
        .unwrap_or_else(|| panic!("{needle} not in {text}"))
}

#[test]
fn policy_check_reports_a_bad_decision_with_its_position() {
    let ws = Workspace::new("check-bad");
    let text = "version = 1\n\n[[rule]]\ndecision = \"alow\"\ncommand = \"ls\"\n";
    ws.write("p.toml", text);
    let r = cli_in(&ws.dir, &["policy", "check", "p.toml"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    let (line, col) = position(text, "\"alow\"");
    let first = r.stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("p.toml:{line}:{col}: ")),
        "expected p.toml:{line}:{col}: ...: {first}"
    );
    assert!(first.contains("alow"), "{first}");
    assert!(first.contains("expected allow, deny or ask"), "{first}");
}

#[test]
fn policy_check_reports_other_mistakes_with_their_position() {
    let ws = Workspace::new("check-bad2");
    let cases = [
        // A TOML syntax error.
        ("version = 1\n[[rule]\ndecision = \"deny\"\n", "[[rule]"),
        // An unknown key.
        (
            "version = 1\n\n[[rule]]\ndecision = \"deny\"\ncomand = \"ls\"\n",
            "comand",
        ),
        // A bad network pattern.
        (
            "version = 1\n\n[[rule]]\ndecision = \"deny\"\nnetwork = \"10.0.0.0/99:80\"\n",
            "network",
        ),
    ];
    for (text, near) in cases {
        ws.write("p.toml", text);
        let r = cli_in(&ws.dir, &["policy", "check", "p.toml"]);
        assert_eq!(r.code, Some(1), "{text}: {r:?}");
        let (line, _) = position(text, near);
        let first = r.stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("p.toml:{line}:")),
            "{text}: expected p.toml:{line}:COL: ...: {first}"
        );
        let col = first.split(':').nth(2).unwrap_or_default();
        assert!(col.parse::<u32>().is_ok(), "no column in {first}");
    }
}

#[test]
fn policy_check_accepts_the_presets() {
    for name in ["sandboxed", "locked", "unrestricted", "ci"] {
        let r = cli(&["policy", "check", &format!("preset:{name}")]);
        assert_eq!(r.code, Some(0), "{name}: {r:?}");
    }
    let r = cli(&["policy", "check", "preset:no-such-preset"]);
    assert_ne!(r.code, Some(0), "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// policy explain
// ---------------------------------------------------------------------------------------------

#[test]
fn explain_rm_rf_is_denied_by_the_rm_rule() {
    let r = cli(&[
        "policy",
        "explain",
        "preset:sandboxed",
        "--",
        "exec",
        "rm",
        "-rf",
        "/",
    ]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(field(&r.stdout, "decision:"), "deny", "{}", r.stdout);
    let rule = rule_at(&location_in(&r.stdout));
    assert!(
        rule.contains("command = \"rm\"") && rule.contains("decision = \"deny\""),
        "{rule}"
    );
    assert!(
        r.stdout.contains("recursive forced removal"),
        "{}",
        r.stdout
    );
}

#[test]
fn explain_reading_an_ssh_key_is_denied() {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let key = format!("{home}/.ssh/id_rsa");
    let r = cli(&["policy", "explain", "preset:sandboxed", "--", "open", &key]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(field(&r.stdout, "decision:"), "deny", "{}", r.stdout);
    let rule = rule_at(&location_in(&r.stdout));
    assert!(rule.contains("file = \"{home}/.ssh/**\""), "{rule}");
}

#[test]
fn explain_a_connection_is_asked() {
    let r = cli(&[
        "policy",
        "explain",
        "preset:sandboxed",
        "--",
        "connect",
        "127.0.0.1:8080",
    ]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(field(&r.stdout, "decision:"), "ask", "{}", r.stdout);
}

#[test]
fn explain_an_ordinary_program_is_allowed() {
    let r = cli(&[
        "policy",
        "explain",
        "preset:sandboxed",
        "--",
        "exec",
        "ls",
        "-la",
    ]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(field(&r.stdout, "decision:"), "allow", "{}", r.stdout);
}

#[test]
fn explain_json_parses() {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let key = format!("{home}/.ssh/id_rsa");
    let cases: [(&[&str], &str); 3] = [
        (&["exec", "rm", "-rf", "/"], "deny"),
        (&["open", &key], "deny"),
        (&["connect", "127.0.0.1:8080"], "ask"),
    ];
    for (action, decision) in cases {
        let mut args = vec!["policy", "explain", "preset:sandboxed", "--json", "--"];
        args.extend_from_slice(action);
        let r = cli(&args);
        assert_eq!(r.code, Some(0), "{action:?}: {r:?}");
        let v: Value = serde_json::from_str(r.stdout.trim())
            .unwrap_or_else(|e| panic!("{action:?}: {e}: {}", r.stdout));
        assert_eq!(v["decision"], decision, "{v}");
        assert_eq!(v["policy"], "preset:sandboxed", "{v}");
        for f in ["action", "decided_by", "enforced_by"] {
            assert!(
                v[f].as_str().is_some_and(|s| !s.is_empty()),
                "{f} missing: {v}"
            );
        }
    }
}

#[test]
fn explain_with_a_policy_file_names_its_rule() {
    let ws = Workspace::new("explain-file");
    let text = "version = 1\nextends = \"sandboxed\"\n\n[[rule]]\ndecision = \"allow\"\nnetwork = \"127.0.0.1:8080\"\nreason = \"dev server\"\n";
    ws.write("p.toml", text);
    let r = cli_in(
        &ws.dir,
        &[
            "policy",
            "explain",
            "p.toml",
            "--",
            "connect",
            "127.0.0.1:8080",
        ],
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(field(&r.stdout, "decision:"), "allow", "{}", r.stdout);
    assert!(r.stdout.contains("dev server"), "{}", r.stdout);
    let (line, _) = position(text, "[[rule]]");
    assert!(
        field(&r.stdout, "decided by:").contains(&format!(":{line}:")),
        "{}",
        r.stdout
    );
}

#[test]
fn explain_a_lookup_names_the_rule_and_the_ports_it_opens() {
    let ws = Workspace::new("explain-resolve");
    let text = "version = 1\nextends = \"sandboxed\"\ndefault = \"deny\"\n\n[network]\nallow = [\"*.github.com:443\"]\ndeny = [\"evil.example\"]\n";
    ws.write("p.toml", text);
    let explain = |name: &str| {
        cli_in(
            &ws.dir,
            &["policy", "explain", "p.toml", "--", "resolve", name],
        )
    };
    let r = explain("api.github.com");
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(field(&r.stdout, "decision:"), "allow", "{}", r.stdout);
    assert!(r.stdout.contains("open port 443"), "{}", r.stdout);
    let r = explain("evil.example");
    assert_eq!(field(&r.stdout, "decision:"), "deny", "{}", r.stdout);
    let r = explain("c2VjcmV0.exfil.test");
    assert_eq!(field(&r.stdout, "decision:"), "deny", "{}", r.stdout);
    assert!(
        field(&r.stdout, "decided by:").contains("default"),
        "{}",
        r.stdout
    );
}

#[test]
fn run_with_a_bad_dns_upstream_is_a_usage_error() {
    let ws = Workspace::new("run-bad-dns");
    let r = cli_in(
        &ws.dir,
        &[
            "run",
            "--headless",
            "--dns-upstream",
            "not-an-address",
            "--",
            "true",
        ],
    );
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(
        r.stderr.contains("not-an-address") && r.stderr.contains("127.0.0.1:5353"),
        "the error says what is expected: {}",
        r.stderr
    );
}

#[test]
fn explain_rejects_an_unknown_action() {
    let r = cli(&[
        "policy",
        "explain",
        "preset:sandboxed",
        "--",
        "launch",
        "rockets",
    ]);
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("launch"), "{}", r.stderr);
}

// ---------------------------------------------------------------------------------------------
// run: refusing to start, and finding the policy
// ---------------------------------------------------------------------------------------------

#[test]
fn run_with_a_bad_policy_exits_125_and_never_starts_the_agent() {
    let ws = Workspace::new("run-bad-policy");
    let text = "version = 1\n[[rule]]\ndecision = \"alow\"\ncommand = \"ls\"\n";
    let policy = ws.policy(text);
    let r = ws.run(
        &["--headless", "--policy", policy.to_str().unwrap()],
        &["/bin/sh", "-c", "echo ran > marker"],
        LIMIT,
    );
    assert_eq!(r.code, Some(125), "{r:?}");
    let (line, col) = position(text, "\"alow\"");
    assert!(
        r.stderr
            .contains(&format!("{}:{line}:{col}:", policy.display())),
        "{}",
        r.stderr
    );
    assert!(
        !ws.path("marker").exists(),
        "the agent ran under a broken policy"
    );
    assert!(
        ws.audit().is_empty(),
        "a session was recorded: {:?}",
        ws.audit()
    );
}

#[test]
fn run_with_a_missing_policy_file_exits_125() {
    let ws = Workspace::new("run-missing-policy");
    let r = ws.run(
        &["--headless", "--policy", "no-such-policy.toml"],
        &["/bin/sh", "-c", "echo ran > marker"],
        LIMIT,
    );
    assert_eq!(r.code, Some(125), "{r:?}");
    assert!(r.stderr.contains("no-such-policy.toml"), "{}", r.stderr);
    assert!(!ws.path("marker").exists());
}

#[test]
fn run_with_an_unknown_preset_exits_125() {
    let ws = Workspace::new("run-bad-preset");
    let r = ws.run(
        &["--headless", "--policy", "preset:nope"],
        &["/bin/sh", "-c", "echo ran > marker"],
        LIMIT,
    );
    assert_eq!(r.code, Some(125), "{r:?}");
    assert!(r.stderr.contains("nope"), "{}", r.stderr);
    assert!(!ws.path("marker").exists());
}

#[test]
fn run_without_a_command_is_a_usage_error() {
    let ws = Workspace::new("run-nocmd");
    let r = cli_in(&ws.dir, &["run", "--headless"]);
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains("COMMAND"), "{}", r.stderr);
}

#[test]
fn run_finds_the_workspace_policy() {
    let ws = Workspace::new("run-lookup");
    let state = ws.dir.parent().expect("base").join("state");
    let policy = ".agent-supervisor/policy.toml";
    ws.write(
        policy,
        "version = 1\nextends = \"sandboxed\"\n\n[[rule]]\ndecision = \"deny\"\ncommand = \"touch\"\nreason = \"test\"\n",
    );
    let supervisor = |args: &[&str]| {
        let mut c = common::supervisor_command();
        c.args(args)
            .current_dir(&ws.dir)
            .env("AGENT_SUPERVISOR_STATE_DIR", &state)
            .no_ci();
        run_with_timeout(c, LIMIT)
    };
    let audit = ws.audit.display().to_string();
    let run = || {
        supervisor(&[
            "run",
            "-q",
            "--headless",
            "--audit",
            &audit,
            "--",
            "/bin/sh",
            "-c",
            "touch touched; echo ok > written",
        ])
    };

    // Found by lookup but never trusted (an agent could have planted it): refused.
    let r = run();
    assert_eq!(r.code, Some(125), "{r:?}");
    assert!(
        r.stderr.contains("not trusted") && r.stderr.contains("policy trust"),
        "{r:?}"
    );
    assert!(
        ws.read("written").is_none(),
        "the agent ran under an untrusted policy"
    );

    // Trusted: used.
    let t = supervisor(&["policy", "trust", policy]);
    assert_eq!(t.code, Some(0), "{t:?}");
    let r = run();
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(ws.read("written").as_deref(), Some("ok\n"), "{r:?}");
    assert!(
        !ws.path("touched").exists(),
        "the workspace policy was not used"
    );
    let start = &ws.audit()[0];
    assert_eq!(start["kind"], "session-start");
    assert!(
        start["action"]["policy"]
            .as_str()
            .unwrap_or_default()
            .ends_with(".agent-supervisor/policy.toml"),
        "{start}"
    );

    // Changed after it was trusted: refused again.
    ws.write(policy, "version = 1\nextends = \"unrestricted\"\n");
    std::fs::remove_file(ws.path("written")).expect("rm");
    let r = run();
    assert_eq!(r.code, Some(125), "{r:?}");
    assert!(
        ws.read("written").is_none(),
        "the agent ran under a changed, untrusted policy"
    );
}
