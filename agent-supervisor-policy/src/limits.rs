//! `[limits]`: the session's resource limits, parsed and checked (the supervisor enforces them).
//!
//! ```toml
//! [limits]
//! memory = "2G"        # bytes: 2147483648, "512M", "2G" (K/M/G/T are powers of 1024), "50%" of host RAM, "none"
//! processes = 4096     # tasks (processes and threads) at once, or "none"
//! cpu = 1.5            # CPUs' worth of time (cgroup CPU quota), or "none"
//! timeout = "30m"      # wall clock (humantime), or "none"
//! file_size = "1G"     # the largest file the agent may write (RLIMIT_FSIZE), or "none"
//! ```
//!
//! A key absent from every file of the `extends` chain takes the built-in default
//! ([`Limits::DEFAULT`]): `memory = "50%"`, `processes = 4096`, the rest `"none"`. A key
//! present in a file overrides its base, key by key. `"none"` means no limit.

use std::time::Duration;

use toml::Spanned;

use crate::source::{Pos, Source};
use crate::{Origin, PolicyError};

/// One limit: its value (None: no limit) and where it was set (None: the built-in default).
#[derive(Debug, Clone, PartialEq)]
pub struct Limit<T> {
    /// The limit; None is `"none"`, no limit.
    pub value: Option<T>,
    /// Where the policy set it; None when it is the built-in default. A limit set in a policy
    /// file (or on the command line) must be enforced or the session refused; a default that
    /// cannot be enforced is a warning.
    pub origin: Option<Origin>,
}

impl<T> Limit<T> {
    /// The built-in default `value`.
    pub const fn default_to(value: Option<T>) -> Limit<T> {
        Limit {
            value,
            origin: None,
        }
    }
    /// Set explicitly (policy or command line).
    pub fn is_explicit(&self) -> bool {
        self.origin.is_some()
    }
}

/// `memory = ...`: bytes, or a share of the host's RAM (resolved by the supervisor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    /// An absolute number of bytes.
    Bytes(u64),
    /// A percentage (1 to 100) of the host's total RAM.
    HostPercent(u8),
}

impl Memory {
    /// Bytes, given the host's total RAM.
    pub fn bytes(self, host_total: u64) -> u64 {
        match self {
            Memory::Bytes(b) => b,
            Memory::HostPercent(p) => host_total / 100 * p as u64,
        }
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Memory::Bytes(b) => f.write_str(&format_size(*b)),
            Memory::HostPercent(p) => write!(f, "{p}% of host RAM"),
        }
    }
}

/// The `[limits]` in effect.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Memory (RAM, and swap: none beyond it) of all the session's processes together.
    pub memory: Limit<Memory>,
    /// Tasks (processes and threads) alive at once in the session.
    pub processes: Limit<u64>,
    /// CPU time, in CPUs (1.5: one and a half CPUs' worth per period).
    pub cpu: Limit<f64>,
    /// Wall-clock time of the session.
    pub timeout: Limit<Duration>,
    /// The largest file the agent may write, in bytes.
    pub file_size: Limit<u64>,
}

impl Limits {
    /// The built-in defaults: enough to keep a fork bomb or a memory hog inside its session.
    pub const DEFAULT: Limits = Limits {
        memory: Limit::default_to(Some(Memory::HostPercent(50))),
        processes: Limit::default_to(Some(4096)),
        cpu: Limit::default_to(None),
        timeout: Limit::default_to(None),
        file_size: Limit::default_to(None),
    };

    /// One line per limit, `name = value (where)`, for `policy explain` and `check`.
    pub fn describe(&self) -> Vec<String> {
        fn line<T>(name: &str, l: &Limit<T>, show: impl Fn(&T) -> String) -> String {
            let value = l.value.as_ref().map_or("none".to_string(), show);
            let from = l
                .origin
                .as_ref()
                .map_or("built-in default".to_string(), |o| o.to_string());
            format!("{name} = {value} ({from})")
        }
        vec![
            line("memory", &self.memory, |m| m.to_string()),
            line("processes", &self.processes, |p| p.to_string()),
            line("cpu", &self.cpu, |c| format!("{c} CPUs")),
            line("timeout", &self.timeout, |t| {
                humantime::format_duration(*t).to_string()
            }),
            line("file_size", &self.file_size, |s| format_size(*s)),
        ]
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// `2G`, `512M`, `100K` when exact, else bytes.
pub fn format_size(b: u64) -> String {
    for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if b >= 1 << shift && b.is_multiple_of(1 << shift) {
            return format!("{}{unit}", b >> shift);
        }
    }
    b.to_string()
}

/// `[limits]` as written in one file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    memory: Option<Spanned<toml::Value>>,
    processes: Option<Spanned<toml::Value>>,
    cpu: Option<Spanned<toml::Value>>,
    timeout: Option<Spanned<toml::Value>>,
    file_size: Option<Spanned<toml::Value>>,
}

/// One file's `[limits]`, checked: each present key with its value (None: "none") and position.
#[derive(Debug, Default)]
pub(crate) struct LayerLimits {
    pub memory: Option<(Option<Memory>, Pos)>,
    pub processes: Option<(Option<u64>, Pos)>,
    pub cpu: Option<(Option<f64>, Pos)>,
    pub timeout: Option<(Option<Duration>, Pos)>,
    pub file_size: Option<(Option<u64>, Pos)>,
}

impl LayerLimits {
    /// Lay this file's keys over `limits`.
    pub fn merge_into(self, limits: &mut Limits) {
        fn set<T>(limit: &mut Limit<T>, v: Option<(Option<T>, Pos)>) {
            if let Some((value, pos)) = v {
                *limit = Limit {
                    value,
                    origin: Some(pos.origin()),
                };
            }
        }
        set(&mut limits.memory, self.memory);
        set(&mut limits.processes, self.processes);
        set(&mut limits.cpu, self.cpu);
        set(&mut limits.timeout, self.timeout);
        set(&mut limits.file_size, self.file_size);
    }
}

pub(crate) fn parse(
    src: &std::sync::Arc<Source>,
    raw: RawLimits,
) -> Result<LayerLimits, PolicyError> {
    fn each<T>(
        src: &std::sync::Arc<Source>,
        v: Option<Spanned<toml::Value>>,
        f: impl Fn(&toml::Value) -> Result<Option<T>, String>,
    ) -> Result<Option<(Option<T>, Pos)>, PolicyError> {
        let Some(v) = v else { return Ok(None) };
        let pos = src.pos(v.span());
        match f(v.get_ref()) {
            Ok(value) => Ok(Some((value, pos))),
            Err(message) => Err(pos.error(message)),
        }
    }
    Ok(LayerLimits {
        memory: each(src, raw.memory, |v| {
            memory(v).map_err(|e| format!("memory {e}"))
        })?,
        processes: each(src, raw.processes, processes)?,
        cpu: each(src, raw.cpu, cpu)?,
        timeout: each(src, raw.timeout, timeout)?,
        file_size: each(src, raw.file_size, |v| {
            size(v).map_err(|e| format!("file_size {e}"))
        })?,
    })
}

const NONE_HINT: &str = "use \"none\" for no limit";

fn shown(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

/// `"none"`, a positive integer of bytes, or `"<n>[K|M|G|T][B|iB]"` (powers of 1024).
pub fn parse_size(s: &str) -> Result<Option<u64>, String> {
    size(&toml::Value::String(s.to_string()))
}

/// [`Memory`] from a string: a size, a percentage of host RAM, or `"none"`.
pub fn parse_memory(s: &str) -> Result<Option<Memory>, String> {
    memory(&toml::Value::String(s.to_string()))
}

/// A timeout from a string: humantime, or `"none"`.
pub fn parse_timeout(s: &str) -> Result<Option<Duration>, String> {
    timeout(&toml::Value::String(s.to_string()))
}

/// A process count from a string, or `"none"`.
pub fn parse_processes(s: &str) -> Result<Option<u64>, String> {
    match s.trim().parse::<i64>() {
        Ok(n) => processes(&toml::Value::Integer(n)),
        Err(_) => processes(&toml::Value::String(s.to_string())),
    }
}

/// CPUs from a string, or `"none"`.
pub fn parse_cpu(s: &str) -> Result<Option<f64>, String> {
    match s.trim().parse::<f64>() {
        Ok(n) => cpu(&toml::Value::Float(n)),
        Err(_) => cpu(&toml::Value::String(s.to_string())),
    }
}

fn size(v: &toml::Value) -> Result<Option<u64>, String> {
    let expected = "expected bytes (1048576) or a size like \"512M\", \"2G\" (K, M, G, T: powers of 1024), or \"none\"";
    match v {
        toml::Value::Integer(n) if *n > 0 => Ok(Some(*n as u64)),
        toml::Value::Integer(n) => Err(format!("`{n}` must be greater than zero ({NONE_HINT})")),
        toml::Value::String(s) if s == "none" => Ok(None),
        toml::Value::String(s) => {
            let t = s.trim();
            let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (num, unit) = t.split_at(digits);
            let shift = match unit.trim().to_ascii_uppercase().as_str() {
                "" | "B" => 0,
                "K" | "KB" | "KIB" => 10,
                "M" | "MB" | "MIB" => 20,
                "G" | "GB" | "GIB" => 30,
                "T" | "TB" | "TIB" => 40,
                _ => return Err(format!("`{s}` is not a size, {expected}")),
            };
            let n: u64 = num
                .parse()
                .map_err(|_| format!("`{s}` is not a size, {expected}"))?;
            match n.checked_mul(1 << shift) {
                Some(0) => Err(format!("`{s}` must be greater than zero ({NONE_HINT})")),
                Some(b) => Ok(Some(b)),
                None => Err(format!("`{s}` is too large")),
            }
        }
        other => Err(format!("`{}` is not a size, {expected}", shown(other))),
    }
}

fn memory(v: &toml::Value) -> Result<Option<Memory>, String> {
    if let toml::Value::String(s) = v {
        if let Some(p) = s.trim().strip_suffix('%') {
            return match p.trim().parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Some(Memory::HostPercent(p))),
                _ => Err(format!(
                    "`{s}`: a share of host RAM must be between \"1%\" and \"100%\""
                )),
            };
        }
    }
    let bytes = size(v).map_err(|e| {
        e.replace(
            ", or \"none\"",
            ", a share of host RAM like \"50%\", or \"none\"",
        )
    })?;
    match bytes {
        Some(b) if b < 1 << 20 => Err(format!(
            "{} is less than 1M: no agent runs in that ({NONE_HINT})",
            shown(v)
        )),
        other => Ok(other.map(Memory::Bytes)),
    }
}

fn processes(v: &toml::Value) -> Result<Option<u64>, String> {
    match v {
        toml::Value::Integer(n) if *n >= 1 => Ok(Some(*n as u64)),
        toml::Value::String(s) if s == "none" => Ok(None),
        other => Err(format!(
            "processes `{}` is not a count, expected a whole number of processes and threads (at least 1) or \"none\"",
            shown(other)
        )),
    }
}

fn cpu(v: &toml::Value) -> Result<Option<f64>, String> {
    let n = match v {
        toml::Value::String(s) if s == "none" => return Ok(None),
        toml::Value::Integer(n) => *n as f64,
        toml::Value::Float(f) => *f,
        _ => f64::NAN,
    };
    if n.is_finite() && (0.01..=4096.0).contains(&n) {
        Ok(Some(n))
    } else {
        Err(format!(
            "cpu `{}` is not a number of CPUs, expected e.g. 1, 0.5 or 2.5 (between 0.01 and 4096) or \"none\"",
            shown(v)
        ))
    }
}

fn timeout(v: &toml::Value) -> Result<Option<Duration>, String> {
    match v {
        toml::Value::String(s) if s == "none" => Ok(None),
        toml::Value::String(s) => match humantime::parse_duration(s) {
            Ok(d) if d.is_zero() => Err(format!(
                "timeout `{s}` must be greater than zero ({NONE_HINT})"
            )),
            Ok(d) => Ok(Some(d)),
            Err(e) => Err(format!(
                "bad timeout `{s}` ({e}), expected e.g. \"30s\", \"30m\" or \"1h 30m\", or \"none\""
            )),
        },
        other => Err(format!(
            "timeout `{}` is not a duration, expected a string like \"30m\" or \"none\"",
            shown(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2G"), Ok(Some(2 << 30)));
        assert_eq!(parse_size("512M"), Ok(Some(512 << 20)));
        assert_eq!(parse_size("512MiB"), Ok(Some(512 << 20)));
        assert_eq!(parse_size("100k"), Ok(Some(100 << 10)));
        assert_eq!(parse_size("1234"), Ok(Some(1234)));
        assert_eq!(parse_size("none"), Ok(None));
        assert!(parse_size("0").unwrap_err().contains("greater than zero"));
        assert!(parse_size("2X").unwrap_err().contains("not a size"));
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
        assert_eq!(format_size(2 << 30), "2G");
        assert_eq!(format_size(1500), "1500");
    }

    #[test]
    fn memory_cpu_processes_timeout() {
        assert_eq!(parse_memory("50%"), Ok(Some(Memory::HostPercent(50))));
        assert!(parse_memory("0%").is_err());
        assert!(parse_memory("101%").is_err());
        assert!(parse_memory("100K").unwrap_err().contains("less than 1M"));
        assert_eq!(Memory::HostPercent(50).bytes(1000), 500);
        assert_eq!(parse_cpu("1.5"), Ok(Some(1.5)));
        assert_eq!(parse_cpu("2"), Ok(Some(2.0)));
        assert!(parse_cpu("0").is_err());
        assert!(parse_cpu("lots").is_err());
        assert_eq!(parse_processes("64"), Ok(Some(64)));
        assert_eq!(parse_processes("none"), Ok(None));
        assert!(parse_processes("0").is_err());
        assert_eq!(parse_timeout("2m"), Ok(Some(Duration::from_secs(120))));
        assert!(parse_timeout("0s").is_err());
    }
}
