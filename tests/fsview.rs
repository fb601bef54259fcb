//! The agent's filesystem view, against the real binary and kernel (issue 13):
//!
//! 1. Deny rules compose: overlapping rules (a directory glob and a file inside it, two nested
//!    directory globs, a preset's deny and the user's) start in every order and all deny.
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Result_, Workspace};

/// Time limit of one supervised run.
const LIMIT: Duration = Duration::from_secs(30);

fn unique() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{}", std::process::id(), n % 1_000_000_000)
}

/// The directory holding the workspace, the audit log and the policy (removed with them).
fn base(ws: &Workspace) -> PathBuf {
    ws.dir.parent().expect("base").to_path_buf()
}

fn show(r: &Result_) -> String {
    format!(
        "exit {:?}{}\n--- stdout\n{}\n--- stderr\n{}",
        r.code,
        if r.timed_out { " (TIMED OUT)" } else { "" },
        r.stdout,
        r.stderr
    )
}

/// `run --headless --policy <text> [extra] -- cmd`, in the workspace.
fn run_policy(ws: &Workspace, policy: &str, extra: &[&str], cmd: &[&str]) -> Result_ {
    let p = ws.policy(policy);
    let mut args = vec!["--headless", "--policy", p.to_str().unwrap()];
    args.extend_from_slice(extra);
    let r = ws.run(&args, cmd, LIMIT);
    assert!(!r.timed_out, "the run hit the time limit: {}", show(&r));
    r
}

// ---------------------------------------------------------------------------------------------
// 1. Overlapping deny rules
// ---------------------------------------------------------------------------------------------

fn deny_rule(pattern: &str) -> String {
    format!("[[rule]]\ndecision = \"deny\"\nfile = \"{pattern}\"\n\n")
}

/// A policy extending the sandboxed preset with `rules` (in that order).
fn sandboxed_with(rules: &[String]) -> String {
    format!("version = 1\nextends = \"sandboxed\"\n\n{}", rules.concat())
}

/// Runs `script` under `policy`; the session must start and the script finish.
fn starts_and_runs(ws: &Workspace, policy: &str, script: &str) -> Result_ {
    let _ = fs::remove_file(ws.path("done.txt"));
    let r = run_policy(
        ws,
        policy,
        &[],
        &["/bin/sh", "-c", &format!("{script}; echo ok > done.txt")],
    );
    assert_eq!(
        ws.read("done.txt").as_deref(),
        Some("ok\n"),
        "the session did not start or the script did not finish:\n{policy}\n{}",
        show(&r)
    );
    r
}

/// Every file of `secrets` is unreadable in the session (its content is not in `got.txt`).
fn assert_unreadable(ws: &Workspace, policy: &str, secrets: &[(&Path, &str)]) {
    let cats: Vec<String> = secrets
        .iter()
        .map(|(p, _)| format!("cat '{}' >> got.txt 2>/dev/null", p.display()))
        .collect();
    let _ = fs::remove_file(ws.path("got.txt"));
    let r = starts_and_runs(ws, policy, &cats.join("; "));
    let got = ws.read("got.txt").unwrap_or_default();
    for (p, secret) in secrets {
        assert!(
            !got.contains(secret),
            "{} was read:\n{policy}\n{}",
            p.display(),
            show(&r)
        );
    }
}

#[test]
fn a_directory_glob_and_a_file_inside_it_start_and_deny_in_either_order() {
    let ws = Workspace::new("fsview-dirfile");
    let u = unique();
    let token = ws.write("secret/token.txt", &format!("TOKEN-{u}"));
    let other = ws.write("secret/other.txt", &format!("OTHER-{u}"));
    let rules = [
        deny_rule("{workspace}/secret/**"),
        deny_rule("{workspace}/secret/token.txt"),
    ];
    for order in [
        [rules[0].clone(), rules[1].clone()],
        [rules[1].clone(), rules[0].clone()],
    ] {
        let policy = sandboxed_with(&order);
        assert_unreadable(
            &ws,
            &policy,
            &[
                (&token, &format!("TOKEN-{u}")),
                (&other, &format!("OTHER-{u}")),
            ],
        );
    }
}

#[test]
fn two_nested_directory_globs_start_and_deny_in_either_order() {
    let ws = Workspace::new("fsview-nested");
    let u = unique();
    let outer = ws.write("a/outer.txt", &format!("OUTER-{u}"));
    let inner = ws.write("a/b/inner.txt", &format!("INNER-{u}"));
    let deep = ws.write("a/b/c/deep.key", &format!("DEEP-{u}"));
    let rules = [
        deny_rule("{workspace}/a/**"),
        deny_rule("{workspace}/a/b/**"),
        deny_rule("{workspace}/a/**/*.key"),
    ];
    let orders = [[0, 1, 2], [2, 1, 0], [1, 0, 2], [1, 2, 0]];
    for order in orders {
        let policy = sandboxed_with(&order.map(|i| rules[i].clone()));
        assert_unreadable(
            &ws,
            &policy,
            &[
                (&outer, &format!("OUTER-{u}")),
                (&inner, &format!("INNER-{u}")),
                (&deep, &format!("DEEP-{u}")),
            ],
        );
    }
}

#[test]
fn a_presets_deny_and_the_users_deny_compose() {
    let ws = Workspace::new("fsview-preset");
    let u = unique();
    // The preset hides {home}/.ssh/**; the user's rules name a key inside it, and one outside.
    let home = base(&ws).join("home");
    let key = home.join(".ssh/id_rsa");
    let other_key = home.join("project/id_rsa");
    for (p, content) in [(&key, "SSH"), (&other_key, "PROJECT")] {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, format!("{content}-{u}")).unwrap();
    }
    let visible = home.join("notes.txt");
    fs::write(&visible, "visible").unwrap();
    for rules in [
        vec![deny_rule("{home}/**/id_rsa")],
        vec![
            deny_rule("{home}/.ssh/id_rsa"),
            deny_rule("{home}/**/id_rsa"),
        ],
        vec![
            deny_rule("{home}/**/id_rsa"),
            deny_rule("{home}/.ssh/id_rsa"),
            deny_rule("{home}/.ssh/**"),
        ],
    ] {
        let policy = sandboxed_with(&rules);
        let p = ws.policy(&policy);
        let _ = fs::remove_file(ws.path("got.txt"));
        let _ = fs::remove_file(ws.path("done.txt"));
        let mut c = common::supervisor_command();
        c.args(["run", "-q", "--headless", "--audit"])
            .arg(&ws.audit)
            .arg("--policy")
            .arg(&p)
            .args(["--", "/bin/sh", "-c"])
            .arg(format!(
                "cat '{}' '{}' '{}' > got.txt 2>/dev/null; echo ok > done.txt",
                key.display(),
                other_key.display(),
                visible.display()
            ))
            .current_dir(&ws.dir)
            .env("HOME", &home)
            .stdin(std::process::Stdio::null());
        let r = common::run_with_timeout(c, LIMIT);
        assert_eq!(
            ws.read("done.txt").as_deref(),
            Some("ok\n"),
            "{policy}\n{}",
            show(&r)
        );
        let got = ws.read("got.txt").unwrap_or_default();
        assert!(!got.contains(&format!("SSH-{u}")), "{policy}\n{}", show(&r));
        assert!(
            !got.contains(&format!("PROJECT-{u}")),
            "{policy}\n{}",
            show(&r)
        );
        assert!(got.contains("visible"), "{policy}\n{}", show(&r));
    }
}

#[test]
fn a_hidden_file_under_a_read_only_directory_is_hidden_and_the_rest_read_only() {
    let ws = Workspace::new("fsview-rohide");
    let u = unique();
    let secret = ws.write("conf/secret.txt", &format!("SECRET-{u}"));
    let plain = ws.write("conf/plain.txt", "plain");
    let write_deny =
        "[[rule]]\ndecision = \"deny\"\nfile = \"{workspace}/conf/**\"\naccess = [\"write\"]\n\n";
    for rules in [
        [
            write_deny.to_string(),
            deny_rule("{workspace}/conf/secret.txt"),
        ],
        [
            deny_rule("{workspace}/conf/secret.txt"),
            write_deny.to_string(),
        ],
    ] {
        let policy = sandboxed_with(&rules);
        let _ = fs::remove_file(ws.path("got.txt"));
        let r = starts_and_runs(
            &ws,
            &policy,
            &format!(
                "cat '{s}' conf/plain.txt > got.txt 2>/dev/null; echo pwned >> conf/plain.txt",
                s = secret.display()
            ),
        );
        let got = ws.read("got.txt").unwrap_or_default();
        assert!(!got.contains(&format!("SECRET-{u}")), "{}", show(&r));
        assert!(got.contains("plain"), "{}", show(&r));
        assert_eq!(fs::read_to_string(&plain).unwrap(), "plain", "{}", show(&r));
    }
}
