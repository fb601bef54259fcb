//! The agent's Landlock ruleset: the static `[filesystem]` trees of the policy.
//!
//! Landlock (Linux 5.13+, ABI 1; 6.12 has ABI 6) is allow-only and checked by the kernel on
//! the real file at use time, so no argument race can get around it. We handle every
//! filesystem right the running kernel knows (best effort, degrading loudly) and, from ABI 6,
//! scope abstract unix sockets and signals to the sandbox.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use landlock::{
    path_beneath_rules, Access, AccessFs, BitFlags, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

/// The trees, already canonicalised.
#[derive(Debug, Clone, Default)]
pub struct LandlockSpec {
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
    pub exec: Vec<PathBuf>,
    /// The agent's mount view holds only the read trees (see [`super::view`]): Landlock
    /// handles no read right (and no `Truncate`, which only the writable mounts allow), so a
    /// read-only open is not checked at all.
    pub reads_by_view: bool,
}

/// Newest ABI this build knows; the kernel's own is used when lower (best effort).
const ABI_TARGET: ABI = ABI::V6;

/// How completely the ruleset was enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    Full,
    Partial,
    None,
}

/// Build the ruleset and restrict the calling thread (sets `no_new_privs` first).
pub fn restrict_self(spec: &LandlockSpec) -> Result<Enforcement, landlock::RulesetError> {
    let read: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::ReadDir;
    let handled = if spec.reads_by_view {
        AccessFs::from_all(ABI_TARGET) & !(read | AccessFs::Truncate)
    } else {
        AccessFs::from_all(ABI_TARGET)
    };
    let write = AccessFs::from_write(ABI_TARGET) & handled;
    let exec: BitFlags<AccessFs> = AccessFs::Execute.into();
    let reads: &[PathBuf] = if spec.reads_by_view { &[] } else { &spec.read };
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(handled)?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)?
        .create()?
        .add_rules(path_beneath_rules(reads, read))?
        .add_rules(path_beneath_rules(&spec.write, write))?
        .add_rules(path_beneath_rules(&spec.exec, exec))?
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Enforcement::Full,
        RulesetStatus::PartiallyEnforced => Enforcement::Partial,
        RulesetStatus::NotEnforced => Enforcement::None,
    })
}
