//! The tamper-evident audit log of agent-supervisor, as pure functions over bytes: no I/O, no
//! tokio, no libc, so that the verifier can be fuzzed and third parties can read exactly what is
//! checked.
//!
//! - [`chain`]: every record carries the SHA-256 of the previous line (`prev`) and its position
//!   in the chain (`chain_seq`); the first record of a file names the file it continues
//!   (`prev_file`).
//! - [`checkpoint`]: records of kind `checkpoint` carry an Ed25519 signature over the chain head.
//! - [`verify`]: [`verify::verify_lines`] / [`verify::verify_files`] find the first broken,
//!   missing, reordered or inserted record and check every signature.
//! - [`redact`]: secrets are masked as `[REDACTED:<kind>:<first 8 hex of sha256>]` before a
//!   record is written.
//!
//! The format is specified in `docs/audit.md`.
#![forbid(unsafe_code)]

pub mod chain;
pub mod checkpoint;
pub mod redact;
pub mod verify;

pub use chain::{line_hash, Head, GENESIS};
pub use checkpoint::{KeyError, SigningKey, VerifyingKey};
pub use verify::{verify_files, verify_lines, FileInput, Problem, ProblemKind, Report, Severity};
