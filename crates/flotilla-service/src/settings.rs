//! Validated settings of the fleet protocol, built by the binary from its
//! configuration.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use flotilla_domain::permissions::Ceiling;

use crate::secrets::{ct_eq, hash_token};

/// Minimum length of a static enrollment token.
pub const MIN_STATIC_TOKEN_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub struct StaticToken {
    /// Where the token came from in the configuration (never the token).
    pub label: String,
    /// What agents it enrolled record as their enrollment key:
    /// `static:` and the first 12 hex digits of the token's SHA-256 (stable
    /// across restarts and reordering; `printf %s "$TOKEN" | sha256sum`).
    pub id: String,
    pub policy_id: String,
    pub allowed_ips: Vec<IpNet>,
}

/// Static enrollment tokens from the configuration, indexed by the SHA-256
/// of the token: lookup is O(1) and never compares the secret itself.
#[derive(Debug, Clone, Default)]
pub struct StaticTokens {
    pub enabled: bool,
    pub allowed_ips: Vec<IpNet>,
    by_hash: HashMap<String, StaticToken>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StaticTokenError {
    #[error("{label}: the token must be at least {MIN_STATIC_TOKEN_LEN} characters")]
    TooShort { label: String },
    #[error("{label}: the same token is configured twice")]
    Duplicate { label: String },
}

/// Outcome of matching a presented credential against the static tokens.
#[derive(Debug, PartialEq)]
pub enum StaticMatch<'a> {
    NoMatch,
    Allowed(&'a StaticToken),
    /// A valid token, presented from an address outside its allowlists.
    AddressRefused(&'a StaticToken),
}

impl StaticTokens {
    /// `tokens` is `(label, token, policy_id, allowed_ips)`.
    pub fn new(
        enabled: bool,
        allowed_ips: Vec<IpNet>,
        tokens: Vec<(String, String, String, Vec<IpNet>)>,
    ) -> Result<Self, StaticTokenError> {
        let mut by_hash = HashMap::new();
        for (label, token, policy_id, ips) in tokens {
            if token.chars().count() < MIN_STATIC_TOKEN_LEN {
                return Err(StaticTokenError::TooShort { label });
            }
            let hash = hash_token(&token);
            let entry = StaticToken {
                id: format!("static:{}", &hash[..12]),
                label: label.clone(),
                policy_id,
                allowed_ips: ips,
            };
            if by_hash.insert(hash, entry).is_some() {
                return Err(StaticTokenError::Duplicate { label });
            }
        }
        Ok(StaticTokens {
            enabled,
            allowed_ips,
            by_hash,
        })
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Match the credential of `Authorization: ApiKey <credential>`: either
    /// the token itself or, as Elastic agents send it, `base64(any:token)`.
    pub fn lookup(&self, credential: &str, peer: Option<IpAddr>) -> StaticMatch<'_> {
        // An IPv4 client of a dual-stack listener arrives as ::ffff:a.b.c.d.
        let peer = peer.map(|ip| ip.to_canonical());
        if !self.enabled || self.by_hash.is_empty() {
            return StaticMatch::NoMatch;
        }
        let mut candidates = vec![hash_token(credential)];
        if let Ok((_, secret)) = crate::keys::KeyService::parse(credential) {
            candidates.push(hash_token(&secret));
        }
        for hash in candidates {
            if let Some((stored, token)) = self.by_hash.get_key_value(&hash) {
                if !ct_eq(stored.as_bytes(), hash.as_bytes()) {
                    continue;
                }
                let permitted = |nets: &[IpNet]| {
                    nets.is_empty() || peer.is_some_and(|ip| nets.iter().any(|n| n.contains(&ip)))
                };
                return if permitted(&self.allowed_ips) && permitted(&token.allowed_ips) {
                    StaticMatch::Allowed(token)
                } else {
                    StaticMatch::AddressRefused(token)
                };
            }
        }
        StaticMatch::NoMatch
    }
}

#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub static_tokens: StaticTokens,
    /// The most the server may grant an output key.
    pub ceiling: Ceiling,
    /// Long-poll duration when the agent sends no `poll_timeout`.
    pub poll_timeout: Duration,
    /// Up to this much is taken off each poll, to spread agents out.
    pub poll_jitter: Duration,
    /// Heartbeat check-ins are written in batches this often.
    pub checkin_flush_interval: Duration,
    /// A waiting check-in re-reads the store this often (less up to a
    /// quarter, at random) even without a change event, so a lost
    /// notification delays delivery by at most this much.
    pub recheck_interval: Duration,
    /// Long polls served at once; more get 429.
    pub max_long_polls: usize,
    /// The version this server reports; agents newer than its minor are refused.
    pub server_version: String,
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            static_tokens: StaticTokens::default(),
            ceiling: Ceiling::default(),
            poll_timeout: Duration::from_secs(300),
            poll_jitter: Duration::from_secs(30),
            checkin_flush_interval: Duration::from_secs(10),
            recheck_interval: Duration::from_secs(120),
            max_long_polls: 20_000,
            server_version: "9.6.0".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    const T: &str = "static-token-0123456789abcdefghijklmnop";

    fn tokens(global: &[&str], per_token: &[&str]) -> StaticTokens {
        let nets = |v: &[&str]| v.iter().map(|s| s.parse().unwrap()).collect();
        StaticTokens::new(
            true,
            nets(global),
            vec![("tokens[0]".into(), T.into(), "p1".into(), nets(per_token))],
        )
        .unwrap()
    }

    #[test]
    fn short_and_duplicate_tokens_are_refused_by_label() {
        let err = StaticTokens::new(
            true,
            vec![],
            vec![("tokens[3]".into(), "short".into(), "p".into(), vec![])],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "tokens[3]: the token must be at least 32 characters"
        );
        assert!(!err.to_string().contains("short\""));
        let dup = vec![
            ("a".into(), T.into(), "p".into(), vec![]),
            ("b".into(), T.into(), "q".into(), vec![]),
        ];
        assert!(matches!(
            StaticTokens::new(true, vec![], dup),
            Err(StaticTokenError::Duplicate { .. })
        ));
    }

    #[test]
    fn matches_plain_and_elastic_encodings() {
        let t = tokens(&[], &[]);
        assert!(matches!(t.lookup(T, None), StaticMatch::Allowed(tok) if tok.policy_id == "p1"));
        let elastic = base64::engine::general_purpose::STANDARD.encode(format!("01234:{T}"));
        assert!(matches!(t.lookup(&elastic, None), StaticMatch::Allowed(_)));
        assert_eq!(t.lookup("static-token-wrong", None), StaticMatch::NoMatch);
        let disabled = StaticTokens {
            enabled: false,
            ..t.clone()
        };
        assert_eq!(disabled.lookup(T, None), StaticMatch::NoMatch);
    }

    #[test]
    fn allowlists_apply_globally_and_per_token() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let t = tokens(&["10.0.0.0/8"], &[]);
        assert!(matches!(
            t.lookup(T, Some(local)),
            StaticMatch::AddressRefused(_)
        ));
        let t = tokens(&[], &["192.168.1.0/24"]);
        assert!(matches!(
            t.lookup(T, Some(local)),
            StaticMatch::AddressRefused(_)
        ));
        assert!(matches!(
            t.lookup(T, Some("192.168.1.7".parse().unwrap())),
            StaticMatch::Allowed(_)
        ));
        let t = tokens(&["127.0.0.0/8"], &["127.0.0.1/32"]);
        assert!(matches!(t.lookup(T, Some(local)), StaticMatch::Allowed(_)));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(matches!(t.lookup(T, Some(mapped)), StaticMatch::Allowed(_)));
    }
}
