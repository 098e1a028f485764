//! The key service: API keys for agents (fleet access, output writes).
//!
//! Keys are `id:secret` (presented base64-encoded as `ApiKey <…>`); only a
//! SHA-256 of the secret is stored, looked up by the public id and compared
//! in constant time. Role descriptors use the permissions-block shape.

use std::sync::Arc;

use base64::Engine as _;
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize as _;
use serde_json::Value;

use flotilla_domain::permissions::Permissions;
use flotilla_store::{ApiKeyRecord, KeyKind, Store};

use crate::secrets::{ct_eq, hash_token, random_alphanumeric};

mod privileges;
pub mod remote;
mod user;
use crate::ServiceError;
pub use privileges::{HasPrivilegesRequest, TooManyChecks, MAX_NAME_BYTES, MAX_PRIVILEGE_CHECKS};
pub use user::{CreateKey, CreatedKey, KeyError, KeyInfo, Principal};

/// A freshly minted key: its record (to store) and its plain `id:secret`.
pub struct MintedKey {
    pub record: ApiKeyRecord,
    pub credential: SecretString,
}

impl MintedKey {
    /// `base64(id:secret)`, as sent in `Authorization: ApiKey …`.
    pub fn encoded(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.credential.expose_secret())
    }
}

/// Why a presented key was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyRejection {
    /// Not base64, or not `id:secret`.
    Malformed,
    /// Decodes to bytes that are not UTF-8.
    NotUtf8,
    Unknown,
    Invalidated,
    Expired,
}

#[derive(Clone)]
pub struct KeyService {
    store: Arc<dyn Store>,
}

impl KeyService {
    pub fn new(store: Arc<dyn Store>) -> Self {
        KeyService { store }
    }

    /// Create a key (not yet stored: the caller stores it with what it belongs to).
    pub fn mint(
        &self,
        name: &str,
        kind: KeyKind,
        agent_id: Option<&str>,
        roles: &Permissions,
        metadata: Value,
    ) -> MintedKey {
        let id = random_alphanumeric(20);
        let secret = random_alphanumeric(40);
        let record = ApiKeyRecord {
            id: id.clone(),
            name: name.to_owned(),
            kind,
            agent_id: agent_id.map(str::to_owned),
            secret_hash: hash_token(&secret),
            role_descriptors: serde_json::to_value(roles).expect("permissions serialise"),
            metadata,
            created_at: Utc::now(),
            retire_pending: false,
            invalidated_at: None,
            owner: None,
            expires_at: None,
            remote_output: None,
        };
        MintedKey {
            record,
            credential: SecretString::from(format!("{id}:{secret}")),
        }
    }

    /// Split a presented credential: base64 of `id:secret`, or `id:secret`.
    pub fn parse(presented: &str) -> Result<(String, String), KeyRejection> {
        let decoded = match base64::engine::general_purpose::STANDARD.decode(presented.trim()) {
            Ok(bytes) => String::from_utf8(bytes).map_err(|_| KeyRejection::NotUtf8)?,
            Err(_) if presented.contains(':') => presented.to_owned(),
            Err(_) => return Err(KeyRejection::Malformed),
        };
        match decoded.split_once(':') {
            Some((id, secret)) if !id.is_empty() && !secret.is_empty() && !secret.contains(':') => {
                Ok((id.to_owned(), secret.to_owned()))
            }
            _ => Err(KeyRejection::Malformed),
        }
    }

    /// The valid key behind a presented credential.
    pub async fn authenticate(
        &self,
        presented: &str,
    ) -> Result<Result<ApiKeyRecord, KeyRejection>, ServiceError> {
        let (id, secret) = match Self::parse(presented) {
            Ok(parts) => parts,
            Err(r) => return Ok(Err(r)),
        };
        let record = self.store.get_api_key(&id).await?;
        Ok(Self::check(record, &secret))
    }

    /// Whether `record` (the key the presented id names, if any) is valid
    /// for the presented secret now.
    pub fn check(record: Option<ApiKeyRecord>, secret: &str) -> Result<ApiKeyRecord, KeyRejection> {
        let Some(record) = record else {
            return Err(KeyRejection::Unknown);
        };
        if !ct_eq(record.secret_hash.as_bytes(), hash_token(secret).as_bytes()) {
            return Err(KeyRejection::Unknown);
        }
        if record.invalidated_at.is_some() {
            return Err(KeyRejection::Invalidated);
        }
        // A key minted in an output's cluster is that cluster's to check.
        if record.remote_output.is_some() {
            return Err(KeyRejection::Unknown);
        }
        if record.expires_at.is_some_and(|t| t <= Utc::now()) {
            return Err(KeyRejection::Expired);
        }
        Ok(record)
    }

    /// The key's role descriptors, parsed (once per request, not per
    /// check); `None` when they are not a permissions block (grants nothing).
    pub fn permissions(key: &ApiKeyRecord) -> Option<Permissions> {
        Permissions::deserialize(&key.role_descriptors).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_encodings_and_refuses_garbage() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("abc:def");
        assert_eq!(
            KeyService::parse(&encoded).unwrap(),
            ("abc".into(), "def".into())
        );
        assert_eq!(
            KeyService::parse("abc:def").unwrap(),
            ("abc".into(), "def".into())
        );
        assert_eq!(KeyService::parse("!!!"), Err(KeyRejection::Malformed));
        let no_colon = base64::engine::general_purpose::STANDARD.encode("abcdef");
        assert_eq!(KeyService::parse(&no_colon), Err(KeyRejection::Malformed));
    }
}
