//! Secret tokens: generated once, shown once, stored only as hashes.

use base64::Engine as _;
use rand::distributions::Alphanumeric;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Characters of a token kept in listings so people can tell keys apart.
/// Tokens are `base64(id:secret)`, so the leading characters encode only
/// the public id.
pub const HINT_LEN: usize = 8;

/// A freshly minted token in Elastic's API-key shape: `base64(id:secret)`,
/// usable as `Authorization: ApiKey <token>`.
pub struct NewToken {
    pub id: String,
    pub token: SecretString,
}

impl NewToken {
    pub fn generate() -> Self {
        let id: String = random_alphanumeric(20);
        let secret = random_alphanumeric(32);
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
        NewToken {
            id,
            token: SecretString::from(token),
        }
    }

    pub fn hash(&self) -> String {
        hash_token(self.token.expose_secret())
    }

    pub fn hint(&self) -> String {
        self.token.expose_secret().chars().take(HINT_LEN).collect()
    }
}

pub fn random_alphanumeric(len: usize) -> String {
    rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// SHA-256, hex. A fast hash is right for high-entropy random tokens (not
/// for passwords); lookups are by this hash, so the secret is never compared
/// byte by byte against stored data.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Constant-time equality for secrets held in memory.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_decode_to_id_and_secret() {
        let a = NewToken::generate();
        let b = NewToken::generate();
        assert_ne!(a.token.expose_secret(), b.token.expose_secret());
        assert_ne!(a.hash(), b.hash());
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.token.expose_secret())
            .unwrap();
        let decoded = String::from_utf8(decoded).unwrap();
        let (id, secret) = decoded.split_once(':').unwrap();
        assert_eq!(id, a.id);
        assert_eq!(secret.len(), 32);
        assert_eq!(a.hash(), hash_token(a.token.expose_secret()));
        assert_eq!(a.hash().len(), 64);
    }

    #[test]
    fn ct_eq_compares() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
