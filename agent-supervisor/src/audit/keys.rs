//! The checkpoint signing key: an Ed25519 secret key in a file of 64 hex digits (mode 0600),
//! its public key beside it in `FILE.pub` (what `audit verify --key` takes).
#![forbid(unsafe_code)]

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use agent_supervisor_audit::checkpoint::{
    signing_key_from_hex, signing_key_to_hex, verifying_key_from_hex, verifying_key_to_hex,
};
use agent_supervisor_audit::{SigningKey, VerifyingKey};

/// A key that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the audit key {path}: {error}")]
    Read { path: PathBuf, error: io::Error },
    #[error("cannot write the audit key {path}: {error}")]
    Write { path: PathBuf, error: io::Error },
    #[error("the audit key {path} is not a key: {error} (make one with `agent-supervisor audit keygen FILE`)")]
    Invalid {
        path: PathBuf,
        error: agent_supervisor_audit::KeyError,
    },
    #[error("the audit key {path} may be read by others (mode {mode:o}): chmod 600 it")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{path} exists already (give --force to replace it)")]
    Exists { path: PathBuf },
}

/// `FILE.pub`.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut s = secret.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// Read a secret key; refused when group or others may read it.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyFileError> {
    let read = |error| KeyFileError::Read {
        path: path.into(),
        error,
    };
    let mut f = fs::File::open(path).map_err(read)?;
    let mode = f.metadata().map_err(read)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Exposed {
            path: path.into(),
            mode: mode & 0o7777,
        });
    }
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(read)?;
    signing_key_from_hex(&text).map_err(|error| KeyFileError::Invalid {
        path: path.into(),
        error,
    })
}

/// Read a public key (`FILE.pub`).
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, KeyFileError> {
    let text = fs::read_to_string(path).map_err(|error| KeyFileError::Read {
        path: path.into(),
        error,
    })?;
    verifying_key_from_hex(&text).map_err(|error| KeyFileError::Invalid {
        path: path.into(),
        error,
    })
}

/// Make a new key pair: `path` (0600) and `path.pub` (0644); with `force`, replace them.
pub fn generate(path: &Path, force: bool) -> Result<SigningKey, KeyFileError> {
    let write = |p: &Path| {
        let p = p.to_path_buf();
        move |error| KeyFileError::Write { path: p, error }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(write(path))?;
    }
    let mut seed = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(write(path))?;
    let key = SigningKey::from_bytes(&seed);
    let public = public_path(path);
    for (p, text, mode) in [
        (path, signing_key_to_hex(&key), 0o600),
        (
            public.as_path(),
            verifying_key_to_hex(&key.verifying_key()),
            0o644,
        ),
    ] {
        if force {
            match fs::remove_file(p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(write(p)(e)),
                _ => {}
            }
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(p)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    KeyFileError::Exists { path: p.into() }
                } else {
                    write(p)(e)
                }
            })?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(write(p))?;
    }
    Ok(key)
}

/// The daemon's key: read it, or make it (and its `.pub`) on first start.
pub fn load_or_generate(path: &Path) -> Result<SigningKey, KeyFileError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = generate(path, false)?;
            tracing::info!(
                "made the audit signing key {} (public key {})",
                path.display(),
                public_path(path).display()
            );
            Ok(key)
        }
        _ => load_signing_key(path),
    }
}
