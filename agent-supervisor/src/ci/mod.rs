//! CI-runner mode (`agent-supervisor run --ci`, or `CI=true` in the environment).
//!
//! A CI job has nobody to ask, and its log is read after the fact. So in CI mode:
//! - nothing is ever prompted, even with a terminal: an `ask` is denied (allowed with
//!   `--default-allow`), decided by `headless` in the audit log;
//! - every decision is gathered as the audit log records it (an [`crate::audit::Observer`],
//!   after redaction) and, at the end, written as a JSON report ([`report`]) and summed up on
//!   stderr, denials first;
//! - with `GITHUB_ACTIONS=true`, annotations and a step summary ([`github`]);
//! - the exit code is the agent's, or [`EXIT_SUPERVISOR_ERROR`] (125) when the supervisor
//!   refused to start or failed; a refusal still writes the report (`status: "refused"`)
//!   and its annotation.
//!
//! See docs/ci.md.
#![forbid(unsafe_code)]

pub mod github;
pub mod report;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::session::{self, RunOptions, EXIT_SUPERVISOR_ERROR};
use report::{Collector, Report, RunFacts, Status};

/// Where the report goes without `--report`: this file in the current directory.
pub const DEFAULT_REPORT: &str = "agent-supervisor-report.json";

/// Denials listed in the summary on stderr (the rest are in the report).
pub const MAX_STDERR_DENIALS: usize = 20;

/// Is CI mode on? `--ci` turns it on and `--no-ci` off; without either, `CI` in the
/// environment decides (`true`, `1`, `yes` in any case mean on).
pub fn enabled(ci: bool, no_ci: bool, env_ci: Option<&str>) -> bool {
    if ci || no_ci {
        return ci;
    }
    env_ci.is_some_and(|v| {
        let v = v.trim();
        v == "1" || v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("yes")
    })
}

/// CI mode's own options (from the command line and the environment).
#[derive(Debug, Clone)]
pub struct CiOptions {
    /// The JSON report's path.
    pub report: PathBuf,
    /// `GITHUB_ACTIONS=true`: print annotations.
    pub github: bool,
    /// `$GITHUB_STEP_SUMMARY` (only when `github`).
    pub step_summary: Option<PathBuf>,
}

impl CiOptions {
    /// From `--report` and the environment.
    pub fn from_env(report: Option<PathBuf>) -> CiOptions {
        let github = std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true");
        CiOptions {
            report: report.unwrap_or_else(|| PathBuf::from(DEFAULT_REPORT)),
            github,
            step_summary: std::env::var_os("GITHUB_STEP_SUMMARY")
                .filter(|v| github && !v.is_empty())
                .map(PathBuf::from),
        }
    }
}

/// Run one session in CI mode. Returns the process's exit code; errors are reported (on
/// stderr, in the report, as annotations), not returned.
pub fn run(ci: CiOptions, mut opts: RunOptions) -> i32 {
    let started = SystemTime::now();
    let collector = Collector::new();
    opts.headless = true;
    opts.observer = session::AuditObserver(Some(collector.observer()));
    let session = opts.session_id.clone().unwrap_or_else(session::session_id);
    opts.session_id = Some(session.clone());
    let audit_log = opts
        .audit
        .clone()
        .unwrap_or_else(|| crate::audit::default_path(crate::sys::euid_egid().0));
    opts.audit = Some(audit_log.clone());
    let policy_arg = opts.policy.as_ref().map(|p| p.display().to_string());
    let command = opts
        .command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let default_allow = opts.default_allow;

    // The agent's output must not issue workflow commands (see `github`): no agent without
    // that.
    let outcome = match ci.github.then(github::StopCommands::start).transpose() {
        Ok(stopped) => {
            let outcome = session::run(opts);
            if let Some(s) = stopped {
                s.resume();
            }
            outcome
        }
        Err(e) => Err(anyhow::anyhow!(
            "cannot write the workflow command that keeps the agent's output from issuing \
             others (::stop-commands::) to stdout: {e}; refusing to start the agent"
        )),
    };
    let (exit_code, error) = match outcome {
        Ok(code) => (code, None),
        Err(e) => {
            eprintln!("agent-supervisor: error: {e:#}");
            (EXIT_SUPERVISOR_ERROR, Some(format!("{e:#}")))
        }
    };
    let report = collector.report(RunFacts {
        session,
        policy_arg,
        command,
        started,
        ended: SystemTime::now(),
        exit_code,
        error,
        default_allow,
        audit_log,
    });
    finish(&ci, report)
}

/// Write the report, the annotations, the step summary and the stderr summary; the final
/// exit code (125 when the report can't be written: the job must not pass without it).
fn finish(ci: &CiOptions, mut report: Report) -> i32 {
    let mut write_error = None;
    let json = serde_json::to_vec_pretty(&report).map(|mut v| {
        v.push(b'\n');
        v
    });
    match json
        .map_err(|e| e.to_string())
        .and_then(|j| report::write_atomically(&ci.report, &j).map_err(|e| e.to_string()))
    {
        Ok(()) => {}
        Err(e) => {
            eprintln!("agent-supervisor: error: the CI report was not written: {e}");
            write_error = Some(e);
            report.exit_code = EXIT_SUPERVISOR_ERROR;
        }
    }
    if ci.github {
        let mut lines = github::annotations(&report);
        if let Some(e) = &write_error {
            lines.insert(
                0,
                github::command(
                    "error",
                    &[("title", "agent-supervisor could not write its report")],
                    e,
                ),
            );
        }
        let mut text = lines.join("\n");
        text.push('\n');
        print_stdout(&text);
        if let Some(path) = &ci.step_summary {
            if let Err(e) =
                github::append_step_summary(path, &github::step_summary(&report, &ci.report))
            {
                eprintln!(
                    "agent-supervisor: warning: cannot append to $GITHUB_STEP_SUMMARY ({}): {e}",
                    path.display()
                );
            }
        }
    }
    eprint!("{}", human_summary(&report, &ci.report));
    report.exit_code
}

fn print_stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// The summary printed on stderr at the end: one line of outcome, the denials (aligned,
/// agent-chosen text escaped), the allowed asks, the counts, where the report and the audit
/// log are.
pub fn human_summary(r: &Report, report_path: &Path) -> String {
    use crate::supervise::escape_for_human as esc;
    let mut s = String::new();
    let outcome = match (r.status, r.ended_by.as_str()) {
        (Status::Refused, _) => "the supervisor REFUSED to start the agent".to_string(),
        (Status::Error, _) => "the supervisor FAILED".to_string(),
        (Status::Completed, "signal") => {
            format!("the agent was killed by signal {}", r.signal.unwrap_or(0))
        }
        (Status::Completed, limit @ ("timeout" | "memory-limit" | "process-limit")) => {
            let value = r
                .limit
                .as_ref()
                .map(|v| format!(" ({v})"))
                .unwrap_or_default();
            format!("the session was KILLED at its {limit}{value}")
        }
        _ => format!(
            "the agent exited with {}",
            r.agent_exit_code.unwrap_or(r.exit_code)
        ),
    };
    s.push_str(&format!(
        "agent-supervisor: CI summary: session {}, {outcome}, exit code {}, {:.1} s\n",
        r.session,
        r.exit_code,
        r.duration_ms as f64 / 1000.0
    ));
    if let Some(e) = &r.error {
        s.push_str(&format!("  error: {}\n", esc(e.as_bytes())));
    }
    let rows = |s: &mut String, label: &str, entries: &[report::Entry], omitted: u64| {
        let shown = entries.iter().take(MAX_STDERR_DENIALS).collect::<Vec<_>>();
        let kind_w = shown.iter().map(|e| e.kind.len()).max().unwrap_or(0);
        let action = |e: &report::Entry| {
            let a = esc(e.action.as_bytes());
            match a.char_indices().nth(60) {
                Some((i, _)) => format!("{}...", &a[..i]),
                None => a,
            }
        };
        let action_w = shown
            .iter()
            .map(|e| action(e).chars().count())
            .max()
            .unwrap_or(0);
        for e in &shown {
            let a = action(e);
            let pad = action_w - a.chars().count();
            let mut why = e
                .rule
                .as_deref()
                .map(|r| format!("rule {r}"))
                .unwrap_or_else(|| e.decided_by.clone().unwrap_or_default());
            if let Some(reason) = &e.reason {
                why.push_str(&format!(": {}", esc(reason.as_bytes())));
            }
            s.push_str(&format!(
                "  {label} {:<kind_w$}  {a}{}  {why}\n",
                esc(e.kind.as_bytes()),
                " ".repeat(pad)
            ));
        }
        let more = (entries.len() - shown.len()) as u64 + omitted;
        if more > 0 {
            s.push_str(&format!("  ... and {more} more (see the report)\n"));
        }
    };
    rows(&mut s, "DENIED ", &r.denials, r.denials_omitted);
    rows(&mut s, "ALLOWED", &r.approvals, r.approvals_omitted);
    let by_kind = r
        .counts
        .by_kind
        .iter()
        .map(|(k, c)| format!("{k} {}/{}", c.allow, c.deny))
        .collect::<Vec<_>>()
        .join(", ");
    s.push_str(&format!(
        "  totals:  {} allowed, {} denied{}\n",
        r.counts.total.allow,
        r.counts.total.deny,
        if by_kind.is_empty() {
            String::new()
        } else {
            format!(" (allowed/denied: {by_kind})")
        }
    ));
    s.push_str(&format!("  report:  {}\n", report_path.display()));
    s.push_str(&format!("  audit:   {}\n", r.audit_log.display()));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_env_values() {
        assert!(enabled(false, false, Some("true")));
        assert!(enabled(false, false, Some("1")));
        assert!(enabled(false, false, Some("TRUE")));
        assert!(!enabled(false, false, Some("false")));
        assert!(!enabled(false, false, Some("0")));
        assert!(!enabled(false, false, Some("")));
        assert!(!enabled(false, false, None));
        assert!(!enabled(false, true, Some("true")));
        assert!(enabled(true, false, Some("false")));
    }
}
