//! The agent-supervisor policy language (TOML, schema version 1) and its decision engine.
//!
//! This crate is pure: it parses and validates policies, expands variables, and decides
//! already-decoded requests ([`Request`]) into [`Verdict`]s. It does no I/O except reading
//! policy files in [`Policy::load`] (and files named by `extends`), never touches the kernel,
//! and has no `unsafe`. The supervisor turns a [`Policy`] into kernel mechanisms using the
//! [`Plan`] this crate computes.
//!
//! # The language
//!
//! ```toml
//! version = 1                    # required; anything else is refused
//! extends = "sandboxed"          # "unrestricted" | "sandboxed" | "locked" | "ci" | "none" | a path
//! default = "ask"                # no rule matched: "ask" | "deny" | "allow"
//! approval_timeout = "120s"      # humantime: "120s", "2m", "1h 30m", "500ms"; must be > 0
//! [vars]                         # {name} in any path or pattern
//! workspace = "/srv/agent/work"  # overrides the built-in {workspace}
//! cache = "{home}/.cache"        # custom variables may use other variables
//! [filesystem]                   # the static part, enforced by Landlock
//! read  = ["/usr", "/lib", "/etc", "{workspace}"]
//! write = ["{workspace}", "{tmp}"]
//! exec  = ["/usr/bin", "/bin", "/usr/lib"]
//! [[rule]]
//! decision = "deny"              # "allow" | "deny" | "ask"
//! file = "**/.env"               # glob on the resolved absolute path
//! access = ["read"]              # any of read, write, exec; default: all three
//! reason = "Don't let the agent read .env files"
//! [[rule]]
//! decision = "deny"
//! command = "rm"                 # program basename, or absolute path; globs allowed
//! args = "-rf *"                 # glob over argv[1..] joined by single spaces
//! [[rule]]
//! decision = "allow"
//! network = "127.0.0.1:8080"     # IP, CIDR, [IPv6], [IPv6 CIDR] or host name glob, then :port or :*
//! [limits]                       # the session's resources (see `Limits`); "none": no limit
//! memory = "2G"                  # bytes, "512M", "2G", "50%" of host RAM (default "50%")
//! processes = 4096               # processes + threads at once (default 4096)
//! cpu = 1.5                      # CPUs' worth of time (default "none")
//! timeout = "30m"                # wall clock (default "none")
//! file_size = "1G"               # largest file the agent writes (default "none")
//! ```
//!
//! ## Validation
//!
//! Everything is checked before anything is enforced: unknown keys, wrong types, a rule with
//! zero or several of `file`/`command`/`network`, `args` without `command`, `access` without
//! `file`, bad globs, decisions, access kinds, durations, variables, relative or `~` paths,
//! bad network specs, unknown presets, `extends` cycles and unreadable `extends` files are all
//! refused with a [`PolicyError`] whose text is `file:line:column: message` (1-based, pointing
//! at the offending value), e.g.
//! `policy.toml:12:12: unknown decision `alow`, expected allow, deny or ask`.
//!
//! ## `extends`
//!
//! The base is loaded first (recursively), then the file is laid over it:
//! - `default` and `approval_timeout` override the base when present;
//! - each `[limits]` key present in the file overrides the base's, key by key;
//! - a `[filesystem]` key (`read`, `write`, `exec`) present in the file **replaces** the base's
//!   list; absent keys inherit it;
//! - rules are the base's first, then the file's ([`Policy::rules`] is numbered across both);
//! - `[vars]` merge, the file wins. Variables are expanded only after merging, so a file that
//!   sets `workspace` moves the base's `{workspace}` rules too.
//!
//! An absent `extends` means `extends = "sandboxed"`, the default preset (also what the
//! supervisor uses when no policy file exists). `extends = "none"` starts from nothing:
//! `default = "ask"`, `approval_timeout = "120s"`, empty trees, no rules. A value containing a
//! `/` or ending in `.toml` is a path, relative to the directory of the file that names it;
//! anything else must be a preset name.
//!
//! ## Variables
//!
//! `{name}` (name: `[A-Za-z_][A-Za-z0-9_]*`) is replaced in every tree entry, pattern and
//! network spec. Built in: `{workspace}` (the supervisor passes the working directory),
//! `{home}` and `{tmp}`; `[vars]` may override them (they must stay absolute paths) and add
//! others, which may reference any variable (cycles are refused; a variable naming itself,
//! like `workspace = "{workspace}/sub"`, means the built-in value). Braces that hold a comma,
//! like `id_{rsa,dsa}`, are glob alternation and left alone. The values of `workspace`,
//! `home` and `tmp` are paths: inside patterns their glob characters are escaped. `~` is not
//! expanded; write `{home}`.
//!
//! ## Paths and patterns
//!
//! `[filesystem]` entries are literal paths (no globs), absolute after expansion, lexically
//! normalised (`.`, `..`, duplicate and trailing slashes); an entry may name a file.
//!
//! `file` patterns are globs on the resolved absolute path: absolute, or starting with `**`
//! (match at any depth: `**/.env` matches `/any/depth/.env`); any other pattern is relative to
//! `{workspace}`. `*` and `?` do not cross `/`, `**` does. A pattern without glob characters
//! names a file or a directory and matches that path **and everything under it** (so
//! `file = "{home}/.ssh"` protects the directory's contents, as the mount mask does).
//!
//! `command` patterns without a `/` match the program's basename (`rm`, `mkfs*`); with a `/`
//! they match the full path (absolute, or starting with `**`). `args` is a glob over
//! `argv[1..]` joined by single spaces where `*` does cross `/`; absent, any arguments match;
//! a pattern ending in ` *` also matches when nothing follows (`push *` matches `git push`).
//!
//! `network` specs are `ip:port`, `cidr:port`, `[v6]:port`, `[v6cidr]:port`, `name:port` or
//! `*.glob.name:port`, where the port may be `*`; a host of `*` matches any address. IPv6
//! addresses go in brackets. IPv4-mapped IPv6 requests (`::ffff:1.2.3.4`) match IPv4 rules.
//! Host-name rules match requests that carry the name ([`Request::Connect::host`]: the
//! supervisor knows it when the session resolved the address through its resolver) and
//! decide DNS lookups ([`Policy::decide_name`]); IP and CIDR rules always apply.
//!
//! `[network]` is a shorthand for network rules: `allow = ["pypi.org", "*.github.com:443"]`
//! and `deny = [...]` add one rule per entry (after the file's `[[rule]]`s), an entry without
//! a port meaning any port (`pypi.org` is `pypi.org:*`).
//!
//! ## Deciding
//!
//! A *catch-all* rule is one whose pattern is bare: `file = "**"` or `"/**"`, `command = "*"`
//! without `args`, `network = "*"` or `"*:*"`. Catch-alls apply only when no specific rule
//! matches. Among the matching rules, the strictest (`deny` > `ask` > `allow`) of the
//! specific ones wins, else the strictest of the catch-alls; among equally strict rules the
//! first (in [`Policy::rules`] order) wins. When no rule matches:
//! - **open**: each requested access kind is decided on its own (a rule takes part for the
//!   kinds in its `access`); a kind no rule covers is allowed iff the path is under a
//!   `[filesystem]` tree of that kind ([`DecidedBy::Filesystem`]); the strictest kind wins
//!   (ties: read, then write, then exec). A request with no access kind is allowed.
//! - **exec**: command rules and file rules with `exec` access take part, matched on the
//!   resolved `path` and on the `invoked` path. An `allow` rule matches through `invoked`
//!   only when `invoked`'s directory is not under a `write` tree (so an agent-made symlink
//!   cannot borrow an allow rule). With no match, a program outside the `exec` trees is
//!   denied ([`DecidedBy::Filesystem`]), else `default` decides. A program outside the
//!   `exec` trees and outside the literal prefix of every absolute allow/ask rule that grants
//!   exec is denied even when a rule allows or asks (Landlock would refuse it anyway).
//! - **connect**: `default` decides.
//!
//! ## Enforcement
//!
//! [`Policy::plan`] maps the policy onto cheap kernel mechanisms (Landlock grants, mount
//! masks) and says where they cannot be exact, so the supervisor must trap the syscalls with
//! seccomp user notification and call [`Policy::decide`]. Before planning, the supervisor
//! calls [`Policy::canonicalize_paths`] so that trees and pattern prefixes name real paths
//! (`/bin` → `/usr/bin`), as the resolved paths of requests do.
//!
//! ## Presets
//!
//! The presets are the files of `policies/` (embedded): `unrestricted` (everything allowed
//! and audited), `sandboxed` (the default: the system readable, the workspace and tmp
//! writable, secrets hidden, dangerous commands denied, publishing and network asked) and
//! `locked` (a short list of programs, no network, `default = "deny"`) and `ci` (a
//! build-and-test job on a CI runner: registries reachable, publishing denied, no `ask`,
//! `default = "deny"`). [`init_template`]
//! is the commented starting point `agent-supervisor init` writes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod compile;
mod decide;
mod limits;
mod matcher;
mod paths;
mod plan;
mod presets;
mod raw;
mod source;
mod vars;

use std::fmt;
use std::path::{Path, PathBuf};

/// An IP network (IPv4 or IPv6 CIDR), as returned by [`Policy::network_rule_ips`].
pub use ipnet::IpNet;
pub use limits::{
    format_size, parse_cpu, parse_memory, parse_processes, parse_size, parse_timeout, Limit,
    Limits, Memory,
};
use std::str::FromStr;
use std::time::Duration;

/// What to do with an action. Ordered by strictness: `Allow < Ask < Deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Decision {
    /// Let it happen (still audited).
    Allow,
    /// Hold it until a human approves (or `approval_timeout` passes: then it is denied).
    Ask,
    /// Refuse it.
    Deny,
}

impl Decision {
    /// The spelling used in policy files: `allow`, `ask` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Ask => "ask",
            Decision::Deny => "deny",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of `"...".parse::<Decision>()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown decision `{0}`, expected allow, deny or ask")]
pub struct ParseDecisionError(pub String);

impl FromStr for Decision {
    type Err = ParseDecisionError;
    /// Exactly `allow`, `ask` or `deny` (case-sensitive, as in policy files).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(Decision::Allow),
            "ask" => Ok(Decision::Ask),
            "deny" => Ok(Decision::Deny),
            other => Err(ParseDecisionError(other.to_string())),
        }
    }
}

/// A set of file access kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Access {
    /// Read a file or list a directory.
    pub read: bool,
    /// Write, create, truncate or remove.
    pub write: bool,
    /// Execute.
    pub exec: bool,
}

impl Access {
    /// Read only.
    pub const READ: Access = Access {
        read: true,
        write: false,
        exec: false,
    };
    /// Write only.
    pub const WRITE: Access = Access {
        read: false,
        write: true,
        exec: false,
    };
    /// Exec only.
    pub const EXEC: Access = Access {
        read: false,
        write: false,
        exec: true,
    };
    /// Read, write and exec (the default `access` of a file rule).
    pub const ALL: Access = Access {
        read: true,
        write: true,
        exec: true,
    };

    /// No kind at all.
    pub fn is_empty(self) -> bool {
        !(self.read || self.write || self.exec)
    }

    /// Every kind in `other` is also in `self`.
    pub fn contains(self, other: Access) -> bool {
        (self.read || !other.read) && (self.write || !other.write) && (self.exec || !other.exec)
    }

    /// Both sets.
    pub fn union(self, other: Access) -> Access {
        Access {
            read: self.read || other.read,
            write: self.write || other.write,
            exec: self.exec || other.exec,
        }
    }

    /// The single kinds in this set, in the order read, write, exec.
    pub fn kinds(self) -> impl Iterator<Item = Access> {
        [
            (self.read, Access::READ),
            (self.write, Access::WRITE),
            (self.exec, Access::EXEC),
        ]
        .into_iter()
        .filter_map(|(on, kind)| on.then_some(kind))
    }
}

impl fmt::Display for Access {
    /// `read`, `read+write`, `read+write+exec`, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.read, "read"),
            (self.write, "write"),
            (self.exec, "exec"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join("+"))
        }
    }
}

/// Built-in variables, supplied by the caller (the supervisor knows the cwd, $HOME, $TMPDIR).
#[derive(Debug, Clone)]
pub struct Vars {
    /// `{workspace}`: default for the workspace; a policy's `[vars] workspace = ...` overrides it.
    pub workspace: PathBuf,
    /// `{home}`: the user's home directory.
    pub home: PathBuf,
    /// `{tmp}`: the temporary directory.
    pub tmp: PathBuf,
}

/// Where a rule or setting was written: `file:line:column` (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file name as given to [`Policy::parse`] / [`Policy::load`], a path named by
    /// `extends` (relative to the first file's directory), or `preset:<name>`.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
}

impl fmt::Display for Origin {
    /// `file:line:column`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// The static filesystem trees (absolute, variables expanded, lexically normalised).
#[derive(Debug, Clone, Default)]
pub struct Filesystem {
    /// Trees (or files) the agent may read.
    pub read: Vec<PathBuf>,
    /// Trees (or files) the agent may write, create and remove in.
    pub write: Vec<PathBuf>,
    /// Trees (or files) the agent may execute.
    pub exec: Vec<PathBuf>,
}

/// One `[[rule]]`.
#[derive(Debug, Clone)]
pub struct Rule {
    /// What the rule decides when it wins.
    pub decision: Decision,
    /// What it matches.
    pub target: Target,
    /// The `reason` key, shown to the user and in the audit.
    pub reason: Option<String>,
    /// The rule's `[[rule]]` header.
    pub origin: Origin,
    /// A bare `*` / `**` pattern: applies only when no specific rule matches.
    pub catch_all: bool,
}

/// What a rule is about. Exactly one of `file`, `command`, `network` per rule.
///
/// Patterns are stored expanded: variables replaced (glob characters in the values of
/// `{workspace}`, `{home}`, `{tmp}` escaped with `\`), relative file patterns made absolute
/// under `{workspace}`, and lexically normalised.
#[derive(Debug, Clone)]
pub enum Target {
    /// `file = pattern`, `access = [...]` (all three kinds when absent).
    File {
        /// Absolute glob (`/...`) or anywhere glob (`**...`).
        pattern: String,
        /// The access kinds the rule is about.
        access: Access,
    },
    /// `command = program`, `args = ...`.
    Command {
        /// A basename glob (no `/`) or an absolute path glob.
        program: String,
        /// Glob over `argv[1..]` joined by spaces; None: any arguments.
        args: Option<String>,
    },
    /// `network = spec`.
    Network {
        /// `host:port` as written, variables expanded.
        spec: String,
    },
}

/// An already-decoded action to decide.
#[derive(Debug, Clone)]
pub enum Request<'a> {
    /// `path`: the program's resolved real path. `invoked`: the absolute path as invoked,
    /// final symlink not followed (None when it equals `path`). `argv[0]` is the program name.
    Exec {
        /// The resolved program.
        path: &'a Path,
        /// The path as invoked, when it differs.
        invoked: Option<&'a Path>,
        /// The arguments, `argv[0]` included.
        argv: &'a [String],
    },
    /// `path`: resolved absolute path (for a file being created: the resolved parent + name).
    Open {
        /// The resolved absolute path.
        path: &'a Path,
        /// The kinds of access requested (`O_RDWR` is read + write).
        access: Access,
    },
    /// `host`: the name the agent resolved, when known (DNS issue); None = match by IP only.
    Connect {
        /// The destination address.
        ip: std::net::IpAddr,
        /// The destination port.
        port: u16,
        /// The host name, when known.
        host: Option<&'a str>,
    },
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

impl fmt::Display for DecidedBy {
    /// `rule N` (N indexes [`Policy::rules`]), `filesystem` or `default`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecidedBy::Rule(i) => write!(f, "rule {i}"),
            DecidedBy::Filesystem => f.write_str("filesystem"),
            DecidedBy::Default => f.write_str("default"),
        }
    }
}

/// The outcome of [`Policy::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Allow, ask or deny.
    pub decision: Decision,
    /// The rule, tree or default that decided.
    pub decided_by: DecidedBy,
    /// The deciding rule's `reason` (its description when it has none), or a generated
    /// explanation for [`DecidedBy::Filesystem`] and [`DecidedBy::Default`].
    pub reason: Option<String>,
}

/// The outcome of [`Policy::decide_name`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameVerdict {
    /// Whether the name may be resolved.
    pub verdict: Verdict,
    /// Ports (None: any) of the host-name rules deciding like `verdict`; empty when `*`,
    /// a catch-all or the default decided.
    pub ports: Vec<Option<u16>>,
}

impl fmt::Display for Verdict {
    /// `deny by rule 2 (reason)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} by {}", self.decision, self.decided_by)?;
        if let Some(reason) = &self.reason {
            write!(f, " ({reason})")?;
        }
        Ok(())
    }
}

/// A validated policy with variables expanded and matchers compiled.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Where it came from: a file path or `preset:<name>`.
    pub source: String,
    /// What to do with a program or connection no rule matches.
    pub default: Decision,
    /// How long an `ask` waits for a human before it becomes a denial.
    pub approval_timeout: Duration,
    /// The static trees.
    pub filesystem: Filesystem,
    /// `[limits]`: the session's resource limits (built-in defaults where no file sets one).
    pub limits: Limits,
    /// Base policy's rules first (extends), then this file's, in file order.
    pub rules: Vec<Rule>,
    /// Compiled matchers, one per rule (same index).
    matchers: Vec<matcher::RuleMatcher>,
    /// Variables in effect, expanded: built-ins first, then `[vars]` by name.
    vars: Vec<(String, String)>,
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
    /// Index into [`Policy::rules`]: the deny rule whose matches are masked
    /// (see [`Policy::file_rule_matches`]).
    pub rule: usize,
    /// Literal (glob-free) prefix of the pattern: where the walk starts.
    pub root: PathBuf,
    /// How to mask.
    pub kind: MaskKind,
    /// The pattern is exactly `<root>/**` or `<root>` itself: mask `root` as a whole instead
    /// of walking it.
    pub whole_root: bool,
}

/// Enforcement plan: which cheap kernel mechanisms carry which part of the policy.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Landlock grants (filesystem trees plus literal prefixes of absolute allow/ask rules).
    /// Read grants (nested entries removed).
    pub landlock_read: Vec<PathBuf>,
    /// Write grants.
    pub landlock_write: Vec<PathBuf>,
    /// Execute grants.
    pub landlock_exec: Vec<PathBuf>,
    /// One mask per specific file `deny` rule, to apply at session start.
    pub masks: Vec<Mask>,
    /// Trap open/openat/openat2/creat with user notification (file `ask` rules, or allow
    /// rules that must override a mask, ...).
    pub notify_open: bool,
    /// Trap connect/sendto/sendmsg/bind.
    pub notify_network: bool,
    /// Trap execve/execveat with user notification: the policy has command rules, file rules
    /// with `exec` access, or a `default` other than allow.
    pub notify_exec: bool,
    /// Per rule (same index as `rules`): a one-line description of the enforcing mechanism.
    pub mechanisms: Vec<String>,
    /// Why the agent's mount view stays writable outside `landlock_write`; None: it is
    /// read-only there (every mount bound read-only, the write trees bound writable on top),
    /// so chmod, chown, utimes and xattr changes, which Landlock has no rights for, fail with
    /// `EROFS` outside the write trees.
    pub writable_view: Option<String>,
}

/// How [`Plan::writable_view`] is said: the read-only view and what it stops.
pub const READ_ONLY_VIEW: &str = "read-only mount view outside the write trees (chmod, chown, \
    utimes, xattrs, rename, link: EROFS in the kernel, no per-call cost)";

/// Every way a policy can be refused. Display is `file:line:column: message` where known.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy (or a file it extends) is wrong; `origin` points at the offending value.
    #[error("{origin}: {message}")]
    Invalid {
        /// Where.
        origin: OriginDisplay,
        /// What is wrong and what was expected.
        message: String,
    },
    /// The policy file given to [`Policy::load`] could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
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
pub const PRESETS: &[&str] = &["unrestricted", "sandboxed", "locked", "ci"];

impl Policy {
    /// A built-in preset by name (the TOML files in `policies/`, embedded with include_str!).
    pub fn preset(name: &str, vars: &Vars) -> Result<Policy, PolicyError> {
        compile::preset(name, vars)
    }
    /// Read, parse and validate a policy file (and whatever it `extends`).
    pub fn load(path: &Path, vars: &Vars) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base_dir = path.parent().unwrap_or(Path::new(""));
        Policy::parse(&path.display().to_string(), &text, base_dir, vars)
    }
    /// Parse policy text; `source_name` is used in error messages; `extends` paths are
    /// relative to `base_dir`.
    pub fn parse(
        source_name: &str,
        text: &str,
        base_dir: &Path,
        vars: &Vars,
    ) -> Result<Policy, PolicyError> {
        compile::parse(source_name, text, base_dir, vars)
    }
    /// Rewrite every absolute path and the literal prefix of every absolute pattern through
    /// `canon` (the supervisor passes a symlink-resolving canonicaliser, e.g. `/bin` -> `/usr/bin`);
    /// paths for which it returns None are kept as they are.
    ///
    /// Patterns keep matching their original spelling too (a rule written `/bin/**` matches
    /// both `/bin/x` and `/usr/bin/x` afterwards); the trees are replaced.
    pub fn canonicalize_paths(&mut self, canon: &dyn Fn(&Path) -> Option<PathBuf>) {
        compile::canonicalize(self, canon)
    }
    /// Decide a request. Never fails: anything undecidable is a denial.
    pub fn decide(&self, request: &Request<'_>) -> Verdict {
        decide::decide(self, request)
    }
    /// Decide a DNS lookup of `name` (the supervisor's resolver asks before forwarding a
    /// query): the strictest specific network rule whose host is a name glob matching `name`
    /// or `*` (any port), else the strictest catch-all, else `default`. IP and CIDR rules take
    /// no part: they decide the connections to the answer's addresses. `ports` lists the
    /// ports (None: any) of the host-name rules that decide as the winner does, for the
    /// in-kernel allow entries of the answer's addresses. Never fails.
    pub fn decide_name(&self, name: &str) -> NameVerdict {
        decide::decide_name(self, name)
    }
    /// Does `path` match rule `rule`'s file pattern? (Used by the mask walk.)
    /// False for rules that are not file rules and for out-of-range indices.
    pub fn file_rule_matches(&self, rule: usize, path: &Path) -> bool {
        match self.matchers.get(rule) {
            Some(matcher::RuleMatcher::File(m)) => m.is_match(path),
            _ => false,
        }
    }
    /// Does command rule `rule` match the program at `path` (its arguments aside)? False for
    /// other rules and out-of-range indices. For in-kernel checks that see files, not
    /// arguments.
    pub fn command_rule_matches_program(&self, rule: usize, path: &Path) -> bool {
        match self.matchers.get(rule) {
            Some(matcher::RuleMatcher::Command(c)) => c.program_matches(path),
            _ => false,
        }
    }
    /// The IP networks and port rule `rule` matches, for in-kernel filters that see addresses
    /// only: `Some((networks, port))` for a network rule whose host is an IP address (its host
    /// prefix), a CIDR, or `*` (`0.0.0.0/0` and `::/0`); `port` None means any port. None for
    /// host-name rules (they match only when the host name is known), for other rules and for
    /// out-of-range indices. Networks are as [`Policy::decide`] matches them: v4-mapped IPv6
    /// addresses are IPv4, host bits are cleared.
    pub fn network_rule_ips(&self, rule: usize) -> Option<(Vec<IpNet>, Option<u16>)> {
        match self.matchers.get(rule) {
            Some(matcher::RuleMatcher::Network(n)) => n.ip_networks(),
            _ => None,
        }
    }
    /// Compile to the cheapest exact kernel mechanisms.
    ///
    /// - **Landlock grants**: the trees, plus the literal prefix of every absolute allow/ask
    ///   file rule for its access kinds (`/` for a catch-all) and of every absolute allow/ask
    ///   command rule (exec). Nested entries are dropped.
    /// - **Masks**: one per specific file `deny` rule, rooted at the pattern's literal prefix
    ///   (`/` for `**/x`): [`MaskKind::Hide`] when the rule denies read (or write and exec),
    ///   [`MaskKind::ReadOnly`] for write only, [`MaskKind::NoExec`] for exec only.
    ///   [`Mask::whole_root`] when the pattern is `<root>/**` or `<root>` itself.
    /// - **`notify_open`**: any file `ask` rule; any catch-all file rule other than allow; any
    ///   file allow rule that matches anywhere (`**/x`), whose grant would be wider than its
    ///   pattern outside the trees (`/srv/*.csv` grants `/srv`), or that a mask would hide (a
    ///   mask can block more than its rule denies: an empty file bound over a read-denied
    ///   path also stops writes).
    /// - **`notify_exec`**: any command rule, any file rule about exec other than a specific
    ///   deny (whose mask stops exec), or a `default` other than allow.
    /// - **`notify_network`**: always, everything is audited.
    ///
    /// Limitation: masks cover the matches present at session start. A file created later
    /// that matches a deny pattern is only refused where its open is trapped.
    pub fn plan(&self) -> Plan {
        plan::plan(self)
    }
    /// The variables in effect (built-ins and `[vars]`), for `explain` and the audit.
    pub fn vars(&self) -> Vec<(String, String)> {
        self.vars.clone()
    }
    /// One line describing rule `i` for humans, e.g.
    /// `rule 3 at policy.toml:14:1: deny command "rm" args "-rf *"`.
    pub fn describe_rule(&self, i: usize) -> String {
        let Some(rule) = self.rules.get(i) else {
            return format!(
                "rule {i}: no such rule (the policy has {})",
                self.rules.len()
            );
        };
        let what = match &rule.target {
            Target::File { pattern, access } if *access == Access::ALL => {
                format!("file {pattern:?}")
            }
            Target::File { pattern, access } => format!("file {pattern:?} access {access}"),
            Target::Command {
                program,
                args: None,
            } => format!("command {program:?}"),
            Target::Command {
                program,
                args: Some(args),
            } => format!("command {program:?} args {args:?}"),
            Target::Network { spec } => format!("network {spec:?}"),
        };
        format!("rule {i} at {}: {} {what}", rule.origin, rule.decision)
    }
}

/// The commented policy that `agent-supervisor init` writes (`policies/init.toml`).
pub fn init_template() -> &'static str {
    presets::INIT_TEMPLATE
}
