//! Compiled matchers for the three kinds of rule targets.
//!
//! File and command-path globs are built with `literal_separator(true)` (`*` stays within one
//! path component, `**` crosses them); argument globs without it (`-rf *` must match
//! `-rf /home/x`). A pattern without glob characters is a literal path that matches itself
//! and everything under it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use std::sync::OnceLock;

use globset::{GlobBuilder, GlobMatcher};
use ipnet::IpNet;

use crate::paths::{has_glob, unescape};

/// The compiled form of one rule's target.
#[derive(Debug, Clone)]
pub(crate) enum RuleMatcher {
    File(PathMatcher),
    Command(Box<CommandMatcher>),
    Network(NetMatcher),
}

fn glob(pattern: &str, literal_separator: bool) -> Result<LazyGlob, String> {
    let glob = GlobBuilder::new(pattern)
        .literal_separator(literal_separator)
        .backslash_escape(true)
        .build()
        .map_err(|e| e.kind().to_string())?;
    let fast = fast_path(pattern, literal_separator)?;
    Ok(LazyGlob {
        glob,
        fast,
        compiled: OnceLock::new(),
    })
}

/// The regex-free way to match `pattern`, if its shape has one (else `Regex`).
fn fast_path(pattern: &str, sep: bool) -> Result<Fast, String> {
    let literal = |p: &str| !has_glob(p);
    let one_of = pattern
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .filter(|inner| !inner.contains('\\') && inner.split(',').all(literal));
    Ok(if literal(pattern) {
        Fast::Exact(unescape(pattern))
    } else if let Some(inner) = one_of {
        Fast::OneOf(inner.split(',').map(String::from).collect())
    } else if let Some(prefix) = pattern
        .strip_suffix("/**")
        .filter(|p| !p.is_empty() && literal(p))
    {
        Fast::Under(format!("{}/", unescape(prefix)))
    } else if let Some((prefix, name)) = pattern.split_once("/**/").filter(|(p, n)| {
        !p.is_empty() && literal(p) && !n.contains('/') && !n.contains("**") && !n.is_empty()
    }) {
        // `P/**/NAME`: under P/, at any depth, with a last component matching NAME.
        Fast::UnderNamed(format!("{}/", unescape(prefix)), Box::new(glob(name, sep)?))
    } else if let Some(tail) = pattern
        .strip_prefix('*')
        .filter(|t| !t.is_empty() && literal(t))
    {
        Fast::Suffix {
            suffix: unescape(tail),
            sep,
        }
    } else if let Some(head) = pattern
        .strip_suffix('*')
        .filter(|h| !h.is_empty() && literal(h) && !h.ends_with('\\'))
    {
        Fast::Prefix {
            prefix: unescape(head),
            sep,
        }
    } else {
        Fast::Regex(literal_prefix(pattern))
    })
}

/// The glob-free start of a pattern (unescaped): every match starts with it.
fn literal_prefix(pattern: &str) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n) => out.push(n),
                None => break,
            }
        } else if matches!(c, '*' | '?' | '[' | '{' | ']' | '}') {
            break;
        } else {
            out.push(c);
        }
    }
    out
}

/// A glob whose syntax is checked when the policy is parsed but whose regex is compiled only
/// on first use (compiling every rule's regex up front cost milliseconds of start-up).
/// Literal patterns and `literal/**` are matched without any regex, exactly as globset would.
#[derive(Debug, Clone)]
pub(crate) struct LazyGlob {
    glob: globset::Glob,
    fast: Fast,
    compiled: OnceLock<GlobMatcher>,
}

#[derive(Debug, Clone)]
enum Fast {
    /// No glob characters: the whole string.
    Exact(String),
    /// `prefix/**`: anything starting with `prefix/`.
    Under(String),
    /// `{a,b,c}` of literals: exactly one of them.
    OneOf(Vec<String>),
    /// `P/**/NAME`: starts with `P/` and the last component matches NAME.
    UnderNamed(String, Box<LazyGlob>),
    /// `*LITERAL`: ends with it (`*` not crossing `/` when `sep`).
    Suffix { suffix: String, sep: bool },
    /// `LITERAL*`: starts with it (`*` not crossing `/` when `sep`).
    Prefix { prefix: String, sep: bool },
    /// The regex, after a quick check of the literal prefix every match starts with (so a
    /// rule about `{workspace}/**/.env` never compiles its regex for `/usr/bin/ls`).
    Regex(String),
}

impl LazyGlob {
    pub fn is_match(&self, s: impl AsRef<Path>) -> bool {
        let s = s.as_ref();
        match &self.fast {
            Fast::Exact(lit) => s.as_os_str().as_encoded_bytes() == lit.as_bytes(),
            Fast::Under(prefix) => s
                .as_os_str()
                .as_encoded_bytes()
                .starts_with(prefix.as_bytes()),
            Fast::OneOf(alts) => alts
                .iter()
                .any(|a| s.as_os_str().as_encoded_bytes() == a.as_bytes()),
            Fast::UnderNamed(prefix, name) => {
                let b = s.as_os_str().as_encoded_bytes();
                let last = b.rsplit(|&c| c == b'/').next().unwrap_or(b);
                b.starts_with(prefix.as_bytes())
                    && name.is_match(Path::new(
                        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(last),
                    ))
            }
            Fast::Suffix { suffix, sep } => {
                let b = s.as_os_str().as_encoded_bytes();
                b.ends_with(suffix.as_bytes())
                    && !(*sep && b[..b.len() - suffix.len()].contains(&b'/'))
            }
            Fast::Prefix { prefix, sep } => {
                let b = s.as_os_str().as_encoded_bytes();
                b.starts_with(prefix.as_bytes()) && !(*sep && b[prefix.len()..].contains(&b'/'))
            }
            Fast::Regex(prefix) => {
                s.as_os_str()
                    .as_encoded_bytes()
                    .starts_with(prefix.as_bytes())
                    && self
                        .compiled
                        .get_or_init(|| self.glob.compile_matcher())
                        .is_match(s)
            }
        }
    }
}

#[derive(Debug, Clone)]
enum PathAlt {
    /// Matches the path and everything under it.
    Literal(PathBuf),
    Glob(LazyGlob),
}

/// Matches absolute paths against one pattern, possibly in several spellings (the written
/// one and its canonicalised form).
#[derive(Debug, Clone)]
pub(crate) struct PathMatcher {
    alts: Vec<PathAlt>,
}

impl PathMatcher {
    /// `pattern`: normalised, absolute (`/...`) or anywhere (`**...`). Errors are globset's.
    pub fn new(pattern: &str) -> Result<PathMatcher, String> {
        let alt = if has_glob(pattern) {
            PathAlt::Glob(glob(pattern, true)?)
        } else {
            PathAlt::Literal(PathBuf::from(unescape(pattern)))
        };
        Ok(PathMatcher { alts: vec![alt] })
    }

    /// Also match what `other` matches.
    pub fn extend(&mut self, other: PathMatcher) {
        self.alts.extend(other.alts);
    }

    pub fn is_match(&self, path: &Path) -> bool {
        self.alts.iter().any(|alt| match alt {
            PathAlt::Literal(literal) => path.starts_with(literal),
            PathAlt::Glob(g) => g.is_match(path),
        })
    }
}

/// Which program a command rule is about.
#[derive(Debug, Clone)]
pub(crate) enum ProgramMatcher {
    /// A pattern without `/`: the program's basename.
    Basename(LazyGlob),
    /// A pattern with `/`: the program's full path.
    Path(PathMatcher),
}

#[derive(Debug, Clone)]
pub(crate) struct CommandMatcher {
    pub program: ProgramMatcher,
    /// None: any arguments.
    args: Option<Vec<LazyGlob>>,
}

impl CommandMatcher {
    pub fn new(program: ProgramMatcher, args: Option<&str>) -> Result<CommandMatcher, String> {
        let args = match args {
            None => None,
            Some(pattern) => {
                let mut globs = vec![glob(pattern, false)?];
                // `push *` also matches a bare `push`.
                if let Some(head) = pattern.strip_suffix(" *") {
                    globs.push(glob(head, false)?);
                }
                Some(globs)
            }
        };
        Ok(CommandMatcher { program, args })
    }

    pub fn basename_glob(pattern: &str) -> Result<ProgramMatcher, String> {
        Ok(ProgramMatcher::Basename(glob(pattern, true)?))
    }

    /// Does the program at `program` match (arguments not considered)?
    pub fn program_matches(&self, program: &Path) -> bool {
        match &self.program {
            ProgramMatcher::Basename(g) => program.file_name().is_some_and(|name| g.is_match(name)),
            ProgramMatcher::Path(m) => m.is_match(program),
        }
    }

    /// Do `argv[1..]`, joined by single spaces, match?
    pub fn args_match(&self, joined_args: &str) -> bool {
        match &self.args {
            None => true,
            Some(globs) => globs.iter().any(|g| g.is_match(joined_args)),
        }
    }
}

/// The host part of a network spec.
#[derive(Debug, Clone)]
pub(crate) enum HostMatcher {
    Any,
    Ip(IpAddr),
    Net(IpNet),
    /// A host name glob, matched case-insensitively against the request's `host` (boxed: it
    /// is much larger than the other variants).
    Name(Box<LazyGlob>),
}

#[derive(Debug, Clone)]
pub(crate) struct NetMatcher {
    host: HostMatcher,
    /// None: any port.
    port: Option<u16>,
}

impl NetMatcher {
    /// Parse `host:port` (see the crate docs); the flag is true for the catch-all `*` / `*:*`.
    /// Errors are whole messages.
    pub fn parse(spec: &str) -> Result<(NetMatcher, bool), String> {
        let expected = "expected HOST:PORT or HOST:* with HOST an IP, a CIDR, [IPv6], [IPv6 CIDR] or a host name (e.g. 127.0.0.1:8080, 10.0.0.0/8:*, [::1]:443, *.example.com:443)";
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(format!("empty network spec, {expected}"));
        }
        if spec == "*" || spec == "*:*" {
            return Ok((
                NetMatcher {
                    host: HostMatcher::Any,
                    port: None,
                },
                true,
            ));
        }
        let (host, port, bracketed) = if let Some(inner) = spec.strip_prefix('[') {
            let Some((host, after)) = inner.split_once(']') else {
                return Err(format!("unclosed `[` in network spec `{spec}`, {expected}"));
            };
            let Some(port) = after.strip_prefix(':') else {
                return Err(format!("missing port in network spec `{spec}`, {expected}"));
            };
            (host, port, true)
        } else {
            let Some((host, port)) = spec.rsplit_once(':') else {
                return Err(format!("missing port in network spec `{spec}`, {expected}"));
            };
            if host.contains(':') {
                return Err(format!(
                    "IPv6 address without brackets in network spec `{spec}`, write it as [{host}]:{port}"
                ));
            }
            (host, port, false)
        };
        let port = match port {
            "*" => None,
            p => match p.parse::<u16>() {
                Ok(p) => Some(p),
                Err(_) => return Err(format!("bad port `{p}` in network spec `{spec}`, expected a number from 0 to 65535 or `*`")),
            },
        };
        let host = if bracketed {
            if host.contains('/') {
                match host.parse::<IpNet>() {
                    Ok(IpNet::V6(net)) => HostMatcher::Net(IpNet::V6(net.trunc())),
                    _ => return Err(format!("bad IPv6 CIDR `{host}` in network spec `{spec}`, expected e.g. [fd00::/8]:*")),
                }
            } else {
                match host.parse::<std::net::Ipv6Addr>() {
                    Ok(ip) => HostMatcher::Ip(IpAddr::V6(ip).to_canonical()),
                    Err(_) => return Err(format!("bad IPv6 address `{host}` in network spec `{spec}`, expected e.g. [::1]:443")),
                }
            }
        } else if host == "*" {
            HostMatcher::Any
        } else if host.contains('/') {
            match host.parse::<IpNet>() {
                Ok(net) => HostMatcher::Net(net.trunc()),
                Err(_) => {
                    return Err(format!(
                        "bad CIDR `{host}` in network spec `{spec}`, expected e.g. 10.0.0.0/8:*"
                    ))
                }
            }
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            HostMatcher::Ip(ip.to_canonical())
        } else if !host.is_empty() && host.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(format!(
                "bad IP address `{host}` in network spec `{spec}`, expected e.g. 127.0.0.1:8080"
            ));
        } else if !host.is_empty()
            && host.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || matches!(c, '.' | '-' | '_' | '*' | '?' | '[' | ']' | '{' | '}' | ',')
            })
        {
            let pattern = host.to_ascii_lowercase();
            let pattern = pattern.trim_end_matches('.');
            HostMatcher::Name(Box::new(glob(pattern, false).map_err(|e| {
                format!("bad host name glob `{host}` in network spec `{spec}`: {e}")
            })?))
        } else {
            return Err(format!(
                "bad host `{host}` in network spec `{spec}`, {expected}"
            ));
        };
        Ok((NetMatcher { host, port }, false))
    }

    /// The IP networks and port this spec matches, for filters that see only addresses:
    /// `*` is `0.0.0.0/0` and `::/0`, an address is its host prefix. None for host names.
    pub fn ip_networks(&self) -> Option<(Vec<IpNet>, Option<u16>)> {
        let nets = match &self.host {
            HostMatcher::Any => vec![
                IpNet::V4(ipnet::Ipv4Net::default()),
                IpNet::V6(ipnet::Ipv6Net::default()),
            ],
            HostMatcher::Ip(ip) => vec![IpNet::from(*ip)],
            HostMatcher::Net(net) => vec![*net],
            HostMatcher::Name(_) => return None,
        };
        Some((nets, self.port))
    }

    /// Does a DNS lookup of `name` concern this rule? True for host-name globs matching the
    /// name and for `*` hosts (any address, so any name), whatever the port; IP and CIDR
    /// rules never match a name. `name` is lower-case without the trailing dot.
    pub fn is_name_match(&self, name: &str) -> bool {
        match &self.host {
            HostMatcher::Any => true,
            HostMatcher::Name(g) => g.is_match(name),
            HostMatcher::Ip(_) | HostMatcher::Net(_) => false,
        }
    }

    /// True for host-name glob rules.
    pub fn is_host_name(&self) -> bool {
        matches!(self.host, HostMatcher::Name(_))
    }

    /// The rule's port (None: any).
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    pub fn is_match(&self, ip: IpAddr, port: u16, host: Option<&str>) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let ip = ip.to_canonical();
        match &self.host {
            HostMatcher::Any => true,
            HostMatcher::Ip(rule) => *rule == ip,
            HostMatcher::Net(net) => net.contains(&ip),
            HostMatcher::Name(g) => {
                host.is_some_and(|h| g.is_match(h.trim_end_matches('.').to_ascii_lowercase()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> PathMatcher {
        PathMatcher::new(p).unwrap()
    }

    #[test]
    fn star_stays_in_one_component_double_star_crosses() {
        assert!(path("/w/*.key").is_match(Path::new("/w/a.key")));
        assert!(!path("/w/*.key").is_match(Path::new("/w/sub/a.key")));
        assert!(path("/w/**/*.key").is_match(Path::new("/w/sub/deep/a.key")));
        assert!(path("/w/**/*.key").is_match(Path::new("/w/a.key")));
    }

    #[test]
    fn anywhere_patterns_match_at_any_depth() {
        let m = path("**/.env");
        assert!(m.is_match(Path::new("/.env")));
        assert!(m.is_match(Path::new("/any/depth/.env")));
        assert!(!m.is_match(Path::new("/any/depth/.env.local")));
        assert!(!m.is_match(Path::new("/any/.env/x")));
    }

    #[test]
    fn literal_patterns_cover_their_subtree() {
        let m = path("/h/.ssh");
        assert!(m.is_match(Path::new("/h/.ssh")));
        assert!(m.is_match(Path::new("/h/.ssh/id_rsa")));
        assert!(!m.is_match(Path::new("/h/.sshx")));
        assert!(path("/h/a\\[1\\]").is_match(Path::new("/h/a[1]/x")));
    }

    #[test]
    fn args_trailing_star_matches_nothing_too() {
        let c = CommandMatcher::new(
            CommandMatcher::basename_glob("git").unwrap(),
            Some("push *"),
        )
        .unwrap();
        assert!(c.args_match("push"));
        assert!(c.args_match("push origin main"));
        assert!(!c.args_match("pushx"));
        assert!(!c.args_match("pull"));
        let rm = CommandMatcher::new(CommandMatcher::basename_glob("rm").unwrap(), Some("-rf *"))
            .unwrap();
        assert!(rm.args_match("-rf /home/user/x"));
        assert!(rm.program_matches(Path::new("/usr/bin/rm")));
        assert!(!rm.program_matches(Path::new("/usr/bin/rmdir")));
    }

    #[test]
    fn network_specs_as_ip_networks() {
        let nets = |spec: &str| NetMatcher::parse(spec).expect("valid spec").0.ip_networks();
        let v = |s: &[&str]| {
            s.iter()
                .map(|n| n.parse().expect("net"))
                .collect::<Vec<IpNet>>()
        };
        assert_eq!(nets("*"), Some((v(&["0.0.0.0/0", "::/0"]), None)));
        assert_eq!(nets("*:443"), Some((v(&["0.0.0.0/0", "::/0"]), Some(443))));
        assert_eq!(nets("10.1.2.3/8:*"), Some((v(&["10.0.0.0/8"]), None)));
        assert_eq!(nets("127.0.0.1:80"), Some((v(&["127.0.0.1/32"]), Some(80))));
        assert_eq!(
            nets("[::ffff:1.2.3.4]:80"),
            Some((v(&["1.2.3.4/32"]), Some(80)))
        );
        assert_eq!(nets("[fd00::/8]:*"), Some((v(&["fd00::/8"]), None)));
        assert_eq!(nets("*.example.com:443"), None);
    }

    #[test]
    fn network_specs() {
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let parse = |s: &str| NetMatcher::parse(s).unwrap().0;
        let m = parse("127.0.0.1:8080");
        assert!(m.is_match(v4, 8080, None));
        assert!(m.is_match(mapped, 8080, None));
        assert!(!m.is_match(v4, 8081, None));
        let cidr = parse("10.0.0.0/8:*");
        assert!(cidr.is_match("10.1.2.3".parse().unwrap(), 1, None));
        assert!(cidr.is_match("::ffff:10.1.2.3".parse().unwrap(), 1, None));
        assert!(!cidr.is_match("11.0.0.1".parse().unwrap(), 1, None));
        let v6 = parse("[fd00::/8]:443");
        assert!(v6.is_match("fd12::1".parse().unwrap(), 443, None));
        let name = parse("*.Example.com:443");
        assert!(name.is_match(v4, 443, Some("api.example.com.")));
        assert!(!name.is_match(v4, 443, Some("example.com")));
        assert!(
            !name.is_match(v4, 443, None),
            "names match only requests that carry the name"
        );
        assert!(NetMatcher::parse("*:*").unwrap().1);
        assert!(!NetMatcher::parse("*:443").unwrap().1);
        assert!(parse("*:443").is_match(v4, 443, None));
        for bad in [
            "127.0.0.1",
            "::1:443",
            "1.2.3.400:1",
            "1.2.3.4:70000",
            "[::1]",
            "[zz]:1",
            "a b:1",
            "10.0.0.0/33:1",
        ] {
            assert!(NetMatcher::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}

#[cfg(test)]
mod lazy_glob_tests {
    use super::*;

    /// `lazy` answers like globset's own matcher for `pattern` on every input.
    fn assert_agrees_with_globset<P: AsRef<Path> + std::fmt::Debug>(
        lazy: &LazyGlob,
        pattern: &str,
        sep: bool,
        inputs: &[P],
    ) {
        let reference = GlobBuilder::new(pattern)
            .literal_separator(sep)
            .backslash_escape(true)
            .build()
            .unwrap()
            .compile_matcher();
        for input in inputs {
            assert_eq!(
                lazy.is_match(input),
                reference.is_match(input),
                "pattern {pattern:?} (literal_separator {sep}) input {input:?}"
            );
        }
    }

    /// The regex-free fast paths must agree with globset on every input.
    #[test]
    fn fast_paths_agree_with_globset() {
        let inputs = [
            "/usr",
            "/usr/",
            "/usr/bin",
            "/usr/bin/ls",
            "/usrx",
            "/us",
            "/",
            "sudo",
            "sudox",
            "xsudo",
            "",
            "a b",
            "su",
            "doas",
            "sudo,su",
            "{sudo,su,doas}",
        ];
        for pattern in [
            "/usr/**",
            "/usr/bin/**",
            "sudo",
            "/usr/bin/ls",
            "a b",
            "/a\\*b/**",
            "{sudo,su,doas}",
            "{a b,sudo}",
        ] {
            for sep in [true, false] {
                let lazy = glob(pattern, sep).unwrap();
                assert!(
                    !matches!(lazy.fast, Fast::Regex(_)),
                    "{pattern} should take a fast path"
                );
                assert_agrees_with_globset(&lazy, pattern, sep, &inputs);
            }
        }
        assert!(matches!(
            glob("/usr/*/x", true).unwrap().fast,
            Fast::Regex(_)
        ));
    }

    /// The literal-prefix quick reject must not change any answer.
    #[test]
    fn prefix_reject_agrees_with_globset() {
        let inputs = [
            "/w/a/.env",
            "/w/.env",
            "/x/.env",
            "mkfs.ext4",
            "mkfs",
            "xmkfs",
            "/w/id_rsa",
            "/w/a/b.key",
            "-rf /",
            "-fr x",
            "push",
            "push x",
            "/w\\x/.env",
            "/w/",
            "/w/.env.local",
            "/w/a/.env.x",
            "a.key",
            "/a.key",
            "x/b.key",
            "/w/x",
            "/w/x/y",
            "mkfs/x",
            "a/x",
            ".env.",
            ".env.a/b",
            "/w/a/.envx",
            "/w/.env/x",
            "",
            "/",
            ".key",
            "/w/a/id_rsa",
            "/w/id_dsa/x",
        ];
        let non_utf8 = std::path::PathBuf::from(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"/w/a/\xff.key"),
        );
        for pattern in [
            "/w/**/.env",
            "mkfs*",
            "/w/**/id_{rsa,dsa}",
            "/w/**/*.key",
            "-rf *",
            "{-rf,-fr} *",
            "push *",
            "**/.env",
            "/w\\x/**/.env",
            "?kfs*",
            "*.key",
            "/w/*",
            "*/x",
            ".env.*",
            "/w/**/.env.*",
            "*",
            "/w/**/*",
        ] {
            for sep in [true, false] {
                let lazy = glob(pattern, sep).unwrap();
                assert_agrees_with_globset(&lazy, pattern, sep, &inputs);
                assert_agrees_with_globset(&lazy, pattern, sep, &[non_utf8.as_path()]);
            }
        }
    }
}
