//! Golden tests: every `tests/golden/NAME.toml` is parsed (as `NAME.toml`, `extends` relative
//! to `tests/golden/`) with workspace=/w, home=/h, tmp=/t, and compared with
//! - `NAME.err`: the exact error text, for policies that must be refused;
//! - `NAME.decisions`: lines `REQUEST => VERDICT`; the verdicts are recomputed and compared;
//! - `NAME.plan`: the enforcement plan.
//!
//! Requests: `exec [invoked=PATH] PATH ARG...`, `open PATH read+write` (any of read, write,
//! exec joined by `+`, or `none`), `connect IP:PORT [host=NAME]` (IPv6 in brackets), `resolve NAME` (a DNS lookup).
//! Lines that are empty or start with `#` are kept as they are.
//!
//! `UPDATE_GOLDEN=1 cargo test -p agent-supervisor-policy --test golden` rewrites the
//! expected files from the current output (review the diff before committing).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use agent_supervisor_policy::{Access, Plan, Policy, Request, Vars};

fn vars() -> Vars {
    Vars {
        workspace: "/w".into(),
        home: "/h".into(),
        tmp: "/t".into(),
    }
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn decide_line(policy: &Policy, request: &str) -> Result<String, String> {
    let words: Vec<&str> = request.split_whitespace().collect();
    let verdict = match words.as_slice() {
        ["exec", rest @ ..] => {
            let (invoked, rest) = match rest.first().and_then(|w| w.strip_prefix("invoked=")) {
                Some(inv) => (Some(Path::new(inv)), &rest[1..]),
                None => (None, rest),
            };
            let Some((path, args)) = rest.split_first() else {
                return Err(format!("`{request}`: exec needs a path"));
            };
            let argv0 = invoked.map_or(path.to_string(), |p| p.display().to_string());
            let argv: Vec<String> = std::iter::once(argv0)
                .chain(args.iter().map(|a| a.to_string()))
                .collect();
            policy.decide(&Request::Exec {
                path: Path::new(path),
                invoked,
                argv: &argv,
            })
        }
        ["open", path, kinds] => {
            let mut access = Access::default();
            for kind in kinds.split('+') {
                match kind {
                    "read" => access.read = true,
                    "write" => access.write = true,
                    "exec" => access.exec = true,
                    "none" => {}
                    other => return Err(format!("`{request}`: unknown access kind {other}")),
                }
            }
            policy.decide(&Request::Open {
                path: Path::new(path),
                access,
            })
        }
        ["connect", addr, host @ ..] => {
            let addr: SocketAddr = addr.parse().map_err(|e| format!("`{request}`: {e}"))?;
            let host = match host {
                [] => None,
                [h] => Some(
                    h.strip_prefix("host=")
                        .ok_or(format!("`{request}`: expected host=NAME"))?,
                ),
                _ => return Err(format!("`{request}`: too many words")),
            };
            policy.decide(&Request::Connect {
                ip: addr.ip(),
                port: addr.port(),
                host,
            })
        }
        ["resolve", name] => {
            let named = policy.decide_name(name);
            let ports: Vec<String> = named
                .ports
                .iter()
                .map(|p| p.map_or("*".to_string(), |p| p.to_string()))
                .collect();
            return Ok(format!(
                "{request} => {} ports [{}]",
                named.verdict,
                ports.join(" ")
            ));
        }
        _ => {
            return Err(format!(
                "`{request}`: expected exec, open, connect or resolve"
            ))
        }
    };
    Ok(format!("{request} => {verdict}"))
}

fn decisions(policy: &Policy, expected: &str) -> Result<String, String> {
    let mut out = String::new();
    for line in expected.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            out.push_str(line);
        } else {
            let request = line.split(" => ").next().unwrap_or(line).trim();
            out.push_str(&decide_line(policy, request)?);
        }
        out.push('\n');
    }
    Ok(out)
}

fn plan_text(policy: &Policy, plan: &Plan) -> String {
    let list = |paths: &[PathBuf]| {
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = String::new();
    writeln!(out, "landlock read: {}", list(&plan.landlock_read)).unwrap();
    writeln!(out, "landlock write: {}", list(&plan.landlock_write)).unwrap();
    writeln!(out, "landlock exec: {}", list(&plan.landlock_exec)).unwrap();
    for m in &plan.masks {
        let whole = if m.whole_root { " (whole)" } else { "" };
        writeln!(
            out,
            "mask rule {}: {:?} {}{whole}",
            m.rule,
            m.kind,
            m.root.display()
        )
        .unwrap();
    }
    writeln!(out, "notify open: {}", plan.notify_open).unwrap();
    writeln!(out, "notify exec: {}", plan.notify_exec).unwrap();
    writeln!(out, "notify network: {}", plan.notify_network).unwrap();
    match &plan.writable_view {
        None => writeln!(out, "view: read-only outside the write trees").unwrap(),
        Some(why) => writeln!(out, "view: writable ({why})").unwrap(),
    }
    for (i, m) in plan.mechanisms.iter().enumerate() {
        writeln!(out, "{}\n    {m}", policy.describe_rule(i)).unwrap();
    }
    out
}

/// Compare, or rewrite under UPDATE_GOLDEN; a mismatch is returned as a failure message.
fn check(path: &Path, actual: &str, failures: &mut Vec<String>) {
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected == actual {
        return;
    }
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual).unwrap();
        return;
    }
    let mut msg = format!("{} differs:\n", path.display());
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    for i in 0..e.len().max(a.len()) {
        match (e.get(i), a.get(i)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => {
                let _ = writeln!(
                    msg,
                    "  line {}:\n    expected: {}\n    actual:   {}",
                    i + 1,
                    x.unwrap_or(&"<none>"),
                    y.unwrap_or(&"<none>")
                );
            }
        }
    }
    failures.push(msg);
}

#[test]
fn golden_files() {
    let dir = golden_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".toml")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    assert!(
        names.len() > 30,
        "expected the golden corpus in {}, found {} files",
        dir.display(),
        names.len()
    );
    let mut failures = Vec::new();
    let (mut errors, mut decision_files) = (0, 0);
    for name in &names {
        let text = std::fs::read_to_string(dir.join(format!("{name}.toml"))).unwrap();
        let result = Policy::parse(&format!("{name}.toml"), &text, &dir, &vars());
        let (err, dec, plan) = (
            dir.join(format!("{name}.err")),
            dir.join(format!("{name}.decisions")),
            dir.join(format!("{name}.plan")),
        );
        if !err.exists() && !dec.exists() && !plan.exists() {
            failures.push(format!("{name}.toml has no .err, .decisions or .plan file"));
            continue;
        }
        if err.exists() {
            errors += 1;
            let actual = match &result {
                Err(e) => format!("{e}\n"),
                Ok(_) => "(accepted, expected an error)\n".to_string(),
            };
            check(&err, &actual, &mut failures);
            continue;
        }
        let policy = match result {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{name}.toml: unexpected error: {e}"));
                continue;
            }
        };
        if dec.exists() {
            decision_files += 1;
            match decisions(&policy, &std::fs::read_to_string(&dec).unwrap()) {
                Ok(actual) => check(&dec, &actual, &mut failures),
                Err(e) => failures.push(format!("{name}.decisions: {e}")),
            }
        }
        if plan.exists() {
            check(&plan, &plan_text(&policy, &policy.plan()), &mut failures);
        }
    }
    assert!(
        errors >= 30 && decision_files >= 4,
        "too few golden files: {errors} errors, {decision_files} decisions"
    );
    assert!(
        failures.is_empty(),
        "{} golden failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
