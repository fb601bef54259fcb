//! `agent-supervisor audit verify`: read the files, run the pure verifier
//! ([`agent_supervisor_audit::verify_files`]), print the outcome.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use agent_supervisor_audit::{FileInput, Problem, Report, Severity};

/// A file or key that could not be read (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] super::keys::KeyFileError),
}

/// Verify `files` in the order given, with the public key in `key` if any.
pub fn verify_paths(files: &[PathBuf], key: Option<&Path>) -> Result<Report, VerifyError> {
    let key = key.map(super::keys::load_verifying_key).transpose()?;
    let contents = files
        .iter()
        .map(|p| {
            std::fs::read(p).map_err(|error| VerifyError::Read {
                path: p.clone(),
                error,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let inputs: Vec<FileInput> = names
        .iter()
        .zip(&contents)
        .map(|(name, bytes)| FileInput { name, bytes })
        .collect();
    Ok(agent_supervisor_audit::verify_files(&inputs, key.as_ref()))
}

fn describe(p: &Problem) -> String {
    let what = match p.severity {
        Severity::Error => "TAMPERED",
        Severity::Warning => "warning",
    };
    let id =
        p.id.as_ref()
            .map(|i| format!(" (record {i})"))
            .unwrap_or_default();
    format!(
        "{what}: {}:{}{id}: {}: {}",
        p.file,
        p.line,
        p.kind.as_str(),
        p.message
    )
}

/// The human report.
pub fn human(r: &Report) -> String {
    let mut out = String::new();
    for w in &r.warnings {
        out.push_str(&describe(w));
        out.push('\n');
    }
    match &r.error {
        Some(e) => {
            out.push_str(&describe(e));
            out.push('\n');
            out.push_str(&format!(
                "verification stopped at the first problem ({} lines read)\n",
                r.records
            ));
        }
        None => out.push_str(&format!(
            "ok: {} lines, {} signed checkpoint(s), the chain is intact\n",
            r.records, r.checkpoints
        )),
    }
    out
}
