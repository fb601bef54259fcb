//! GitHub Actions output: workflow-command annotations on stdout and a Markdown step summary.
//!
//! Workflow commands are lines of the form `::command key=value,key=value::message` that the
//! runner reads from a step's output. The agent chooses much of the text we print (paths,
//! arguments, host names), so every value is escaped as GitHub's toolkit does
//! (`escapeData`: `%`, `\r`, `\n` become `%25`, `%0D`, `%0A`; `escapeProperty` also `:` and
//! `,` as `%3A`, `%2C`): a message can never end its line and start a command of its own
//! (`::add-mask::`, `::set-output`, ...).
//!
//! While the agent runs, its own output is on the same stdout. [`StopCommands`] prints
//! `::stop-commands::TOKEN` (a random token the agent never sees) before the agent starts
//! and `::TOKEN::` once it is gone, so that nothing the agent prints is taken as a
//! workflow command.
//!
//! Reference: <https://docs.github.com/en/actions/reference/workflow-commands-for-github-actions>
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::report::{Entry, Report, Status};

/// Error and warning annotations printed per run (GitHub shows 10 of each kind per step);
/// the rest are in the report.
pub const MAX_ANNOTATIONS: usize = 10;

/// Denials listed in the step summary (the rest are in the report).
pub const MAX_SUMMARY_ROWS: usize = 50;

/// Escape a workflow command's message.
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escape a workflow command's property value.
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// One workflow command line (without the newline).
pub fn command(name: &str, properties: &[(&str, &str)], message: &str) -> String {
    let props = properties
        .iter()
        .map(|(k, v)| format!("{k}={}", escape_property(v)))
        .collect::<Vec<_>>()
        .join(",");
    let sep = if props.is_empty() { "" } else { " " };
    format!("::{name}{sep}{props}::{}", escape_data(message))
}

/// Workflow commands are off while the agent runs (see the module documentation).
pub struct StopCommands {
    token: String,
}

impl StopCommands {
    /// Print `::stop-commands::TOKEN` on stdout.
    pub fn start() -> std::io::Result<StopCommands> {
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut out = std::io::stdout().lock();
        writeln!(out, "::stop-commands::{token}")?;
        out.flush()?;
        Ok(StopCommands { token })
    }

    /// Print `::TOKEN::`: workflow commands are read again.
    pub fn resume(self) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "::{}::", self.token);
        let _ = out.flush();
    }
}

fn entry_message(e: &Entry) -> String {
    let mut m = format!("{} {}", e.kind, e.action);
    if let Some(rule) = &e.rule {
        m.push_str(&format!(" (rule {rule})"));
    }
    if let Some(by) = &e.decided_by {
        m.push_str(&format!(" [decided by {by}]"));
    }
    if let Some(reason) = &e.reason {
        m.push_str(&format!(": {reason}"));
    }
    m
}

/// The annotations of a run: an error per denial (at most [`MAX_ANNOTATIONS`]), a warning
/// per allowed ask, an error when the supervisor refused or failed, and a notice with the
/// totals.
pub fn annotations(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    match r.status {
        Status::Refused => out.push(command(
            "error",
            &[("title", "agent-supervisor refused to start the agent")],
            r.error.as_deref().unwrap_or("unknown error"),
        )),
        Status::Error => out.push(command(
            "error",
            &[("title", "agent-supervisor failed")],
            r.error.as_deref().unwrap_or("unknown error"),
        )),
        Status::Completed => {}
    }
    for e in r.denials.iter().take(MAX_ANNOTATIONS) {
        let title = format!("agent-supervisor denied {}", e.kind);
        out.push(command("error", &[("title", &title)], &entry_message(e)));
    }
    for e in r.approvals.iter().take(MAX_ANNOTATIONS) {
        let title = format!("agent-supervisor allowed an ask: {}", e.kind);
        out.push(command("warning", &[("title", &title)], &entry_message(e)));
    }
    let more = r.denials.len().saturating_sub(MAX_ANNOTATIONS) as u64 + r.denials_omitted;
    let mut totals = format!(
        "{} allowed, {} denied; exit code {}",
        r.counts.total.allow, r.counts.total.deny, r.exit_code
    );
    if more > 0 {
        totals.push_str(&format!("; {more} more denials in the report"));
    }
    out.push(command(
        "notice",
        &[("title", &format!("agent-supervisor session {}", r.session))],
        &totals,
    ));
    out
}

/// Make agent-chosen text inert in Markdown: every ASCII punctuation character is
/// backslash-escaped (CommonMark allows it for all of them), line breaks and other control
/// characters become spaces, so no link, image, HTML tag or table cell can be formed.
pub fn markdown_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_punctuation() {
            out.push('\\');
            out.push(c);
        } else if c.is_control() {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

/// The step summary: a heading with the outcome, the counts by kind, the denials.
pub fn step_summary(r: &Report, report_path: &Path) -> String {
    let mut md = String::new();
    let outcome = match r.status {
        Status::Completed => format!("exit code {}", r.exit_code),
        Status::Refused => format!("refused to start (exit code {})", r.exit_code),
        Status::Error => format!("supervisor error (exit code {})", r.exit_code),
    };
    md.push_str(&format!(
        "### agent-supervisor: session {} — {}\n\n",
        markdown_text(&r.session),
        outcome
    ));
    if let Some(e) = &r.error {
        md.push_str(&format!("**Error:** {}\n\n", markdown_text(e)));
    }
    md.push_str(&format!(
        "Policy {}; {} allowed, {} denied. Report: {}; audit log: {}.\n\n",
        markdown_text(r.policy.as_deref().unwrap_or("?")),
        r.counts.total.allow,
        r.counts.total.deny,
        markdown_text(&report_path.display().to_string()),
        markdown_text(&r.audit_log.display().to_string()),
    ));
    if !r.counts.by_kind.is_empty() {
        md.push_str("| kind | allowed | denied |\n|---|---:|---:|\n");
        for (kind, c) in &r.counts.by_kind {
            md.push_str(&format!(
                "| {} | {} | {} |\n",
                markdown_text(kind),
                c.allow,
                c.deny
            ));
        }
        md.push('\n');
    }
    if !r.denials.is_empty() {
        md.push_str("#### Denied\n\n| kind | action | rule | decided by | reason |\n|---|---|---|---|---|\n");
        for e in r.denials.iter().take(MAX_SUMMARY_ROWS) {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                markdown_text(&e.kind),
                markdown_text(&e.action),
                markdown_text(e.rule.as_deref().unwrap_or("")),
                markdown_text(e.decided_by.as_deref().unwrap_or("")),
                markdown_text(e.reason.as_deref().unwrap_or("")),
            ));
        }
        let more = r.denials.len().saturating_sub(MAX_SUMMARY_ROWS) as u64 + r.denials_omitted;
        if more > 0 {
            md.push_str(&format!("\n… and {more} more in the report.\n"));
        }
        md.push('\n');
    }
    md
}

/// Append to `$GITHUB_STEP_SUMMARY` (never truncating it, never following a symlink there).
pub fn append_step_summary(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_the_toolkit() {
        assert_eq!(escape_data("50%\r\nnext"), "50%25%0D%0Anext");
        assert_eq!(escape_property("a: b, c%"), "a%3A b%2C c%25");
    }

    #[test]
    fn injected_commands_stay_in_one_line() {
        let evil = "/w/x\n::add-mask::secret\r\n::set-env name=A::b";
        let line = command("error", &[("title", "denied open, x: y")], evil);
        assert!(!line.contains('\n') && !line.contains('\r'), "{line}");
        assert_eq!(
            line,
            "::error title=denied open%2C x%3A y::/w/x%0A::add-mask::secret%0D%0A::set-env name=A::b"
        );
    }

    #[test]
    fn markdown_is_inert() {
        assert_eq!(
            markdown_text("a|b ![x](http://e)\n<img>"),
            "a\\|b \\!\\[x\\]\\(http\\:\\/\\/e\\) \\<img\\>"
        );
    }
}
