//! The agent-supervisor policy language (TOML, schema version 1) and its decision engine.
//!
//! This crate is pure: it parses and validates policies, expands variables, and decides
//! already-decoded requests ([`Request`]) into [`Verdict`]s. It does no I/O except reading
//! policy files in [`Policy::load`] (and files named by `extends`), never touches the kernel,
//! and has no `unsafe`. The supervisor turns a [`Policy`] into kernel mechanisms using the
//! [`Plan`] this crate computes.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

/// What to do with an action. Ordered by strictness: `Allow < Ask < Deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Decision {
    Allow,
    Ask,
    Deny,
}

/// A set of file access kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Access {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
}

impl Access {
    pub const READ: Access = Access { read: true, write: false, exec: false };
    pub const WRITE: Access = Access { read: false, write: true, exec: false };
    pub const EXEC: Access = Access { read: false, write: false, exec: true };
    pub const ALL: Access = Access { read: true, write: true, exec: true };
}

/// Built-in variables, supplied by the caller (the supervisor knows the cwd, $HOME, $TMPDIR).
#[derive(Debug, Clone)]
pub struct Vars {
    /// `{workspace}`: default for the workspace; a policy's `[vars] workspace = ...` overrides it.
    pub workspace: PathBuf,
    pub home: PathBuf,
    pub tmp: PathBuf,
}

/// Where a rule or setting was written: `file:line:column` (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub line: u32,
    pub column: u32,
}

/// The static filesystem trees (absolute, variables expanded, lexically normalised).
#[derive(Debug, Clone, Default)]
pub struct Filesystem {
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
    pub exec: Vec<PathBuf>,
}

/// One `[[rule]]`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub decision: Decision,
    pub target: Target,
    pub reason: Option<String>,
    pub origin: Origin,
    /// A bare `*` / `**` pattern: applies only when no specific rule matches.
    pub catch_all: bool,
}

/// What a rule is about. Exactly one of `file`, `command`, `network` per rule.
#[derive(Debug, Clone)]
pub enum Target {
    File { pattern: String, access: Access },
    Command { program: String, args: Option<String> },
    Network { spec: String },
}

/// An already-decoded action to decide.
#[derive(Debug, Clone)]
pub enum Request<'a> {
    /// `path`: the program's resolved real path. `invoked`: the absolute path as invoked,
    /// final symlink not followed (None when it equals `path`). `argv[0]` is the program name.
    Exec { path: &'a Path, invoked: Option<&'a Path>, argv: &'a [String] },
    /// `path`: resolved absolute path (for a file being created: the resolved parent + name).
    Open { path: &'a Path, access: Access },
    /// `host`: the name the agent resolved, when known (DNS issue); None = match by IP only.
    Connect { ip: std::net::IpAddr, port: u16, host: Option<&'a str> },
}

/// Who made a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecidedBy {
    /// Index into [`Policy::rules`].
    Rule(usize),
    /// The `[filesystem]` section (the access is outside the granted trees, or inside them).
    Filesystem,
    /// The policy's `default`.
    Default,
}

/// The outcome of [`Policy::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    pub decided_by: DecidedBy,
    pub reason: Option<String>,
}

/// A validated policy with variables expanded and matchers compiled.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Where it came from: a file path or `preset:<name>`.
    pub source: String,
    pub default: Decision,
    pub approval_timeout: Duration,
    pub filesystem: Filesystem,
    /// Base policy's rules first (extends), then this file's, in file order.
    pub rules: Vec<Rule>,
    // private: compiled matchers etc.
}

/// How one protection is enforced in the kernel (see [`Policy::plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskKind {
    /// Bind an empty file / empty read-only dir over matches (deny read, or deny everything).
    Hide,
    /// Bind the path read-only over itself (deny write only).
    ReadOnly,
    /// Bind the path `noexec` over itself (deny exec only).
    NoExec,
}

/// A mask to apply at session start over every existing path under `root` matching `rule`'s glob.
#[derive(Debug, Clone)]
pub struct Mask {
    pub rule: usize,
    /// Literal (glob-free) prefix of the pattern: where the walk starts.
    pub root: PathBuf,
    pub kind: MaskKind,
}

/// Enforcement plan: which cheap kernel mechanisms carry which part of the policy.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Landlock grants (filesystem trees plus literal prefixes of absolute allow/ask rules).
    pub landlock_read: Vec<PathBuf>,
    pub landlock_write: Vec<PathBuf>,
    pub landlock_exec: Vec<PathBuf>,
    pub masks: Vec<Mask>,
    /// Trap open/openat/openat2/creat with user notification (file `ask` rules, or allow
    /// rules that must override a mask, ...).
    pub notify_open: bool,
    /// Trap connect/sendto/sendmsg/bind.
    pub notify_network: bool,
    /// Per rule (same index as `rules`): a one-line description of the enforcing mechanism.
    pub mechanisms: Vec<String>,
}

/// Every way a policy can be refused. Display is `file:line:column: message` where known.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{origin}: {message}")]
    Invalid { origin: OriginDisplay, message: String },
    #[error("{path}: {source}")]
    Read { path: String, #[source] source: std::io::Error },
}

/// `file:line:column`, or just `file` when no position is known.
#[derive(Debug, Clone)]
pub struct OriginDisplay(pub String);
impl std::fmt::Display for OriginDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Names of the built-in presets.
pub const PRESETS: &[&str] = &["unrestricted", "sandboxed", "locked"];

impl Policy {
    /// A built-in preset by name (the TOML files in `policies/`, embedded with include_str!).
    pub fn preset(name: &str, vars: &Vars) -> Result<Policy, PolicyError> {
        todo!()
    }
    /// Read, parse and validate a policy file (and whatever it `extends`).
    pub fn load(path: &Path, vars: &Vars) -> Result<Policy, PolicyError> {
        todo!()
    }
    /// Parse policy text; `source_name` is used in error messages; `extends` paths are
    /// relative to `base_dir`.
    pub fn parse(source_name: &str, text: &str, base_dir: &Path, vars: &Vars) -> Result<Policy, PolicyError> {
        todo!()
    }
    /// Rewrite every absolute path and the literal prefix of every absolute pattern through
    /// `canon` (the supervisor passes a symlink-resolving canonicaliser, e.g. `/bin` -> `/usr/bin`);
    /// paths for which it returns None are kept as they are.
    pub fn canonicalize_paths(&mut self, canon: &dyn Fn(&Path) -> Option<PathBuf>) {
        todo!()
    }
    /// Decide a request. Never fails: anything undecidable is a denial.
    pub fn decide(&self, request: &Request<'_>) -> Verdict {
        todo!()
    }
    /// Does `path` match rule `rule`'s file pattern? (Used by the mask walk.)
    pub fn file_rule_matches(&self, rule: usize, path: &Path) -> bool {
        todo!()
    }
    /// Compile to the cheapest exact kernel mechanisms.
    pub fn plan(&self) -> Plan {
        todo!()
    }
    /// The variables in effect (built-ins and `[vars]`), for `explain` and the audit.
    pub fn vars(&self) -> Vec<(String, String)> {
        todo!()
    }
}

/// The commented policy that `agent-supervisor init` writes.
pub fn init_template() -> &'static str { todo!() }
