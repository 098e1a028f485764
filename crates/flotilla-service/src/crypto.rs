//! Secrets that must be read back (agents' output keys) are sealed with
//! AES-256-GCM. The associated data names the record the ciphertext
//! belongs to, so a ciphertext copied into another row fails to open.
//!
//! Format (base64): `version (1 byte) ‖ nonce (12 bytes) ‖ ciphertext+tag`.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

const VERSION: u8 = 1;

pub struct Sealer {
    cipher: Aes256Gcm,
}

#[derive(Debug, thiserror::Error)]
#[error("sealed secret cannot be opened (wrong key, wrong record, or corrupt)")]
pub struct OpenError;

impl Sealer {
    /// Derive the 256-bit key from a configured secret of any length
    /// (at least 32 characters is enforced by configuration).
    pub fn from_secret(secret: &[u8]) -> Self {
        let key = Sha256::digest(secret);
        Sealer {
            cipher: Aes256Gcm::new_from_slice(&key)
                .expect("a SHA-256 digest is a valid AES-256 key"),
        }
    }

    pub fn seal(&self, plaintext: &[u8], aad: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .expect("AES-GCM encryption does not fail for in-memory buffers");
        let mut out = Vec::with_capacity(1 + nonce.len() + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    pub fn open(&self, sealed: &str, aad: &str) -> Result<Vec<u8>, OpenError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| OpenError)?;
        if raw.len() < 1 + 12 + 16 || raw[0] != VERSION {
            return Err(OpenError);
        }
        self.cipher
            .decrypt(
                Nonce::from_slice(&raw[1..13]),
                Payload {
                    msg: &raw[13..],
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_binds_to_the_record() {
        let s = Sealer::from_secret(b"0123456789abcdef0123456789abcdef");
        let sealed = s.seal(b"id:secret", "agents.output_api_key:a1");
        assert!(!sealed.contains("secret"));
        assert_eq!(
            s.open(&sealed, "agents.output_api_key:a1").unwrap(),
            b"id:secret"
        );
        assert!(
            s.open(&sealed, "agents.output_api_key:a2").is_err(),
            "another record's AAD"
        );
        let other = Sealer::from_secret(b"another key entirely, 32+ chars!!");
        assert!(other.open(&sealed, "agents.output_api_key:a1").is_err());
        assert_ne!(
            sealed,
            s.seal(b"id:secret", "agents.output_api_key:a1"),
            "fresh nonce"
        );
    }
}
