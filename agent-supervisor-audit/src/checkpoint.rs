//! Signed checkpoints: a record of kind `checkpoint` whose Ed25519 signature covers the chain
//! head. Since every line carries the hash of the one before, the signature vouches for every
//! line before the checkpoint: rewriting any of them (even recomputing the whole chain) breaks
//! it.
//!
//! A checkpoint line is `{"id":…,"key_id":…,"kind":"checkpoint","pubkey":…,"ts":…,`
//! `"chain_seq":N,"prev":H[,"prev_file":F],"sig":S}`: `sig` is the last member, and `S` is the
//! hex Ed25519 signature of [`DOMAIN`] followed by the line without its `,"sig":"S"` member
//! (the bytes before `,"sig":` and a closing `}`). Every byte of the line but the signature is
//! signed. Keys are stored as 64 hex digits (the 32-byte secret seed, or the 32-byte public
//! key) and a newline.
#![forbid(unsafe_code)]

use ed25519_dalek::{Signer, Verifier};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::chain::{link, Head, LinkError};

/// Why a key could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("expected 64 hexadecimal digits (32 bytes)")]
    NotHex,
    #[error("not a valid Ed25519 public key")]
    BadPublicKey,
}

/// Prefix of the signed bytes.
pub const DOMAIN: &[u8] = b"agent-supervisor-audit checkpoint v1\n";

/// What a checkpoint's signature covers: [`DOMAIN`] and the line without its signature.
pub fn message(unsigned_line: &[u8]) -> Vec<u8> {
    [DOMAIN, unsigned_line].concat()
}

/// A short name for a public key: the first 16 hex digits of its SHA-256.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))[..16].to_string()
}

fn bytes32(text: &str) -> Result<[u8; 32], KeyError> {
    let v = hex::decode(text.trim()).map_err(|_| KeyError::NotHex)?;
    v.try_into().map_err(|_| KeyError::NotHex)
}

/// A secret key from its file's text (64 hex digits).
pub fn signing_key_from_hex(text: &str) -> Result<SigningKey, KeyError> {
    Ok(SigningKey::from_bytes(&bytes32(text)?))
}

/// A public key from its file's text (64 hex digits).
pub fn verifying_key_from_hex(text: &str) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_bytes(&bytes32(text)?).map_err(|_| KeyError::BadPublicKey)
}

/// The text of a secret key's file.
pub fn signing_key_to_hex(key: &SigningKey) -> String {
    format!("{}\n", hex::encode(key.to_bytes()))
}

/// The text of a public key's file.
pub fn verifying_key_to_hex(key: &VerifyingKey) -> String {
    format!("{}\n", hex::encode(key.as_bytes()))
}

/// The checkpoint line to write after `head` (and advance `head` past it).
pub fn checkpoint(
    key: &SigningKey,
    id: &str,
    ts: &str,
    head: &mut Head,
    prev_file: Option<&str>,
) -> Result<String, LinkError> {
    let public = key.verifying_key();
    let object = serde_json::json!({
        "id": id,
        "ts": ts,
        "kind": "checkpoint",
        "key_id": key_id(&public),
        "pubkey": hex::encode(public.as_bytes()),
    });
    let mut h = head.clone();
    let unsigned = link(&object.to_string(), &mut h, prev_file)?;
    let sig = key.sign(&message(unsigned.as_bytes()));
    let line = format!(
        "{},\"sig\":\"{}\"}}",
        unsigned.strip_suffix('}').expect("an object"),
        hex::encode(sig.to_bytes())
    );
    *head = Head {
        hash: crate::chain::line_hash(line.as_bytes()),
        seq: h.seq,
    };
    Ok(line)
}

/// Check the signature of a checkpoint `line` (as written, without its newline) with `key`.
pub fn verify(key: &VerifyingKey, line: &[u8]) -> bool {
    const MEMBER: &[u8] = b",\"sig\":\"";
    let Some(body) = line.strip_suffix(b"\"}") else {
        return false;
    };
    let Some(at) = body.windows(MEMBER.len()).rposition(|w| w == MEMBER) else {
        return false;
    };
    let Ok(bytes) = hex::decode(&body[at + MEMBER.len()..]) else {
        return false;
    };
    let Ok(sig) = ed25519_dalek::Signature::from_slice(&bytes) else {
        return false;
    };
    let unsigned = [&body[..at], b"}".as_slice()].concat();
    key.verify(&message(&unsigned), &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_and_any_change_breaks_it() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut head = Head::genesis();
        let line = checkpoint(&key, "c-1", "2026-01-01T00:00:00Z", &mut head, None).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["kind"], "checkpoint");
        assert_eq!(v["chain_seq"], 1);
        assert_eq!(head.seq, 1);
        let public = key.verifying_key();
        assert!(verify(&public, line.as_bytes()));
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(!verify(&other, line.as_bytes()));
        // Any byte changed, anywhere, breaks it.
        for i in 0..line.len() {
            let mut b = line.clone().into_bytes();
            b[i] ^= 0x01;
            assert!(!verify(&public, &b), "byte {i} changed");
        }
        // A member added after the signature, or the signature moved: refused.
        let extra = format!("{},\"x\":1}}", line.strip_suffix('}').unwrap());
        assert!(!verify(&public, extra.as_bytes()));
        assert!(!verify(&public, b"{}"));
    }

    #[test]
    fn keys_round_trip_as_hex() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let k2 = signing_key_from_hex(&signing_key_to_hex(&key)).unwrap();
        assert_eq!(k2.to_bytes(), key.to_bytes());
        let p = verifying_key_from_hex(&verifying_key_to_hex(&key.verifying_key())).unwrap();
        assert_eq!(p, key.verifying_key());
        assert_eq!(signing_key_from_hex("abc"), Err(KeyError::NotHex));
        assert_eq!(key_id(&p).len(), 16);
    }
}
