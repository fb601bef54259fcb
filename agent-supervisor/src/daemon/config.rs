//! The daemon's configuration: `/etc/agent-supervisor/config.toml` (or `daemon --config FILE`).
//! Every field has a default; unknown fields are errors (a typo must not silently widen or
//! narrow who may approve).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default location of the configuration.
pub const DEFAULT_PATH: &str = "/etc/agent-supervisor/config.toml";
/// Default API socket.
pub const DEFAULT_SOCKET: &str = "/run/agent-supervisor/api.sock";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The API's unix socket.
    pub socket: PathBuf,
    /// Its mode (octal string, default "0660").
    pub socket_mode: String,
    /// Its group, when that group exists (default `agent-supervisor`).
    pub socket_group: String,
    /// The audit log (JSON lines), owned by the daemon: every session's records.
    pub audit: PathBuf,
    /// The Ed25519 secret key that signs the audit log's checkpoints (made, 0600, with its
    /// `.pub` beside it, on first start). Default: `audit.key` in `state_dir`.
    pub audit_key: Option<PathBuf>,
    /// Rotate the audit log before it grows beyond this size ("64M"; bytes, or K, M, G).
    /// None: no size limit.
    pub audit_max_size: Option<String>,
    /// Rotate the audit log when the day (UTC) changes.
    pub audit_rotate_daily: bool,
    /// A signed checkpoint after this many records (and at every session's end, at shutdown,
    /// and within seconds of the last record when idle).
    pub audit_checkpoint_records: u64,
    /// Copies of every audit record to journald and/or an OTLP collector
    /// (`[audit_export] journald = true`, `otlp = "http://collector:4317"`).
    pub audit_export: crate::audit_export::ExportConfig,
    /// Sessions in flight, to be recorded as killed after a crash.
    pub state_dir: PathBuf,
    /// Policy for sessions started without one.
    pub default_policy: String,
    /// The `agent-supervisor` binary sessions run (default: this executable).
    pub supervisor_binary: Option<PathBuf>,
    /// Prometheus metrics (`GET /metrics`) on this address; None: not served.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Largest gRPC message accepted, bytes.
    pub max_message_bytes: usize,
    pub access: Access,
    /// The optional TCP listener: TLS always, a bearer token always (mTLS on top with
    /// `client_ca`). None: no TCP listener.
    pub tcp: Option<Tcp>,
    /// Bearer tokens (`authorization: Bearer TOKEN`), by the SHA-256 of their value.
    #[serde(rename = "token")]
    pub tokens: Vec<Token>,
}

/// Who may do what. uid 0 may do everything (except approve its own sessions).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Access {
    /// Start sessions (as themselves), and see and kill their own.
    pub start: Principals,
    /// Answer approvals of other users' sessions.
    pub approve: Principals,
    /// See every session, approval and the audit stream.
    pub view: Principals,
    /// Kill any session.
    pub kill: Principals,
}

/// Unix users and groups (names or numbers) and token names.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Principals {
    pub uids: Vec<u32>,
    pub users: Vec<String>,
    pub groups: Vec<String>,
    pub tokens: Vec<String>,
}

/// `[tcp]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tcp {
    /// `ADDRESS:PORT`.
    pub listen: std::net::SocketAddr,
    /// PEM certificate chain and private key of the server.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// PEM CA certificates: clients must present a certificate they signed (mTLS).
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub name: String,
    /// Hex SHA-256 of the token (`printf %s TOKEN | sha256sum`).
    pub sha256: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            socket: PathBuf::from(DEFAULT_SOCKET),
            socket_mode: "0660".into(),
            socket_group: "agent-supervisor".into(),
            audit: PathBuf::from("/var/log/agent-supervisor/daemon.jsonl"),
            audit_key: None,
            audit_max_size: Some("256M".into()),
            audit_rotate_daily: true,
            audit_checkpoint_records: 1000,
            audit_export: Default::default(),
            state_dir: PathBuf::from("/var/lib/agent-supervisor"),
            default_policy: "preset:sandboxed".into(),
            supervisor_binary: None,
            metrics_listen: None,
            max_message_bytes: 1 << 20,
            access: Access::default(),
            tcp: None,
            tokens: Vec::new(),
        }
    }
}

/// A configuration error, with the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Load `path`; the default path may be missing (defaults apply), an explicit one may not.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default())
            }
            Err(error) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    error,
                })
            }
        };
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.into(),
            message,
        };
        let c: Config = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        c.socket_mode_bits().map_err(invalid)?;
        for t in &c.tokens {
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(format!(
                    "token {}: sha256 must be 64 hex digits (printf %s TOKEN | sha256sum)",
                    t.name
                )));
            }
        }
        if c.tcp.is_some() && c.tokens.is_empty() {
            return Err(invalid(
                "[tcp] needs at least one [[token]]: TCP callers are identified by their token only"
                    .into(),
            ));
        }
        c.audit_max_size_bytes().map_err(invalid)?;
        if c.audit_checkpoint_records == 0 {
            return Err(invalid(
                "audit_checkpoint_records must be at least 1".into(),
            ));
        }
        if c.audit_key.as_ref().is_some_and(|k| !k.is_absolute()) {
            return Err(invalid("audit_key must be an absolute path".into()));
        }
        if !c.audit.is_absolute() || !c.state_dir.is_absolute() || !c.socket.is_absolute() {
            return Err(invalid(
                "socket, audit and state_dir must be absolute paths".into(),
            ));
        }
        Ok(c)
    }

    /// `audit_max_size` in bytes.
    pub fn audit_max_size_bytes(&self) -> Result<Option<u64>, String> {
        self.audit_max_size
            .as_deref()
            .map(crate::audit::parse_size)
            .transpose()
            .map_err(|e| format!("audit_max_size: {e}"))
    }

    /// The checkpoint key's path.
    pub fn audit_key_path(&self) -> PathBuf {
        self.audit_key
            .clone()
            .unwrap_or_else(|| self.state_dir.join("audit.key"))
    }

    pub fn socket_mode_bits(&self) -> Result<u32, String> {
        u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                format!(
                    "socket_mode {:?} is not an octal mode like \"0660\"",
                    self.socket_mode
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_typos_and_bad_values() {
        let p = Path::new("c.toml");
        let c = Config::parse(p, "").unwrap();
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.socket_mode_bits().unwrap(), 0o660);
        let c = Config::parse(
            p,
            "socket = \"/tmp/x.sock\"\n[access.approve]\nuids = [1000]\ngroups = [\"wheel\"]\n[[token]]\nname = \"ci\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n",
        )
        .unwrap();
        assert_eq!(c.access.approve.uids, vec![1000]);
        assert_eq!(c.tokens[0].name, "ci");
        let e = Config::parse(p, "[access.aprove]\nuids = [1]\n").unwrap_err();
        assert!(e.to_string().contains("aprove"), "{e}");
        assert!(Config::parse(p, "socket_mode = \"rw\"").is_err());
        assert!(Config::parse(p, "audit = \"rel.jsonl\"").is_err());
        assert!(Config::parse(p, "[[token]]\nname = \"x\"\nsha256 = \"abc\"\n").is_err());
        let tcp = "[tcp]\nlisten = \"127.0.0.1:7443\"\ncert = \"/c\"\nkey = \"/k\"\n";
        let e = Config::parse(p, tcp).unwrap_err();
        assert!(e.to_string().contains("token"), "{e}");
        assert!(Config::parse(
            p,
            &format!(
                "{tcp}[[token]]\nname = \"ci\"\nsha256 = \"{}\"\n",
                "0".repeat(64)
            )
        )
        .is_ok());
        assert!(Config::parse(
            p,
            "[tcp]\nlisten = \"nowhere\"\ncert = \"/c\"\nkey = \"/k\"\n"
        )
        .is_err());
        assert!(Config::load(Path::new("/nonexistent/c.toml"), true).is_err());
        assert!(Config::load(Path::new("/nonexistent/c.toml"), false).is_ok());
    }

    #[test]
    fn the_shipped_config_is_valid_and_says_the_defaults() {
        let text = include_str!("../../../dist/config.toml");
        let c = Config::parse(Path::new("dist/config.toml"), text).unwrap();
        let d = Config::default();
        assert_eq!(c.socket, d.socket);
        assert_eq!(c.audit, d.audit);
        assert_eq!(c.access.start.groups, ["agent-supervisor"]);
        // The commented defaults, uncommented, are the defaults.
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest)
                    if rest.contains(" = ")
                        && !rest.starts_with(' ')
                        && !rest.starts_with("name")
                        && !rest.starts_with("sha256")
                        && !rest.starts_with("users")
                        && !rest.starts_with("groups") =>
                {
                    rest
                }
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let u = Config::parse(Path::new("dist/config.toml"), &uncommented).unwrap();
        assert_eq!(u.socket, d.socket);
        assert_eq!(u.socket_mode, d.socket_mode);
        assert_eq!(u.socket_group, d.socket_group);
        assert_eq!(u.audit, d.audit);
        assert_eq!(u.state_dir, d.state_dir);
        assert_eq!(u.default_policy, d.default_policy);
        assert_eq!(u.max_message_bytes, d.max_message_bytes);
    }
}
