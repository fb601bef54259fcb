//! The audit verifier on any bytes, as one file or as several (split at `\0--file--\0`), with
//! and without a key: never a panic. The seeds are real signed logs (fuzz/seeds/audit_verify),
//! so the fuzzer starts from valid chains and checkpoints and damages them.
//!
//! Also the redactor (the daemon re-redacts every line a session sends): never a panic, and
//! redacting twice changes nothing more than redacting once.
#![no_main]

use agent_supervisor_audit::checkpoint::verifying_key_from_hex;
use agent_supervisor_audit::redact::redact_str;
use agent_supervisor_audit::{verify_files, FileInput};
use libfuzzer_sys::fuzz_target;

/// The public key of the seeds' checkpoints.
const SEED_KEY: &str = "85e988b82c4d8788e4eeff113fdbd0d5381936406c51b3fd722f65dd10c6f142";
const FILE_SEPARATOR: &[u8] = b"\0--file--\0";
const NAMES: [&str; 4] = ["a.1.jsonl", "a.2.jsonl", "a.3.jsonl", "a.jsonl"];

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while parts.len() < NAMES.len() - 1 {
        match rest
            .windows(FILE_SEPARATOR.len())
            .position(|w| w == FILE_SEPARATOR)
        {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + FILE_SEPARATOR.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts
}

fuzz_target!(|data: &[u8]| {
    let key = verifying_key_from_hex(SEED_KEY).expect("the seed key");
    let parts = split(data);
    let files: Vec<FileInput<'_>> = parts
        .iter()
        .zip(NAMES.iter().skip(NAMES.len() - parts.len()))
        .map(|(bytes, name)| FileInput { name, bytes })
        .collect();
    for key in [None, Some(&key)] {
        let report = verify_files(&files, key);
        let _ = report.ok();
        let _ = report.to_json().to_string();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let once = redact_str(text).into_owned();
        let twice = redact_str(&once).into_owned();
        assert_eq!(once, twice, "redacting a redacted text changed it again");
    }
});
