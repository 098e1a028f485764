//! Enrollment API keys: stored, revocable secrets agents enrol with, which
//! may expire and may be limited to a number of uses.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ValidationError;

/// The most uses a limited key may be given.
pub const MAX_USES_LIMIT: u64 = 1_000_000_000;

/// An enrollment key as stored: the secret itself is never kept, only its
/// hash (which lives in the store's record, not here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentApiKey {
    pub id: String,
    pub name: String,
    pub policy_id: String,
    pub active: bool,
    /// The first characters of the token, to recognise it in listings.
    pub hint: String,
    pub created_at: DateTime<Utc>,
    /// When the key stops enrolling agents; none: never.
    #[serde(default)]
    pub expiration: Option<DateTime<Utc>>,
    /// How many agents the key may enrol; none: any number.
    #[serde(default)]
    pub max_uses: Option<u64>,
    /// How many agents the key enrolled.
    #[serde(default)]
    pub uses: u64,
}

/// Why a key refuses an enrolment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollRefusal {
    Revoked,
    Expired,
    /// Every one of its `max_uses` is used.
    Spent,
}

impl EnrollmentApiKey {
    /// Whether the key may enrol one more agent at `now`: active, not past
    /// its expiration (an expiration equal to `now` has passed), and with a
    /// use left.
    pub fn refusal(&self, now: DateTime<Utc>) -> Option<EnrollRefusal> {
        if !self.active {
            Some(EnrollRefusal::Revoked)
        } else if self.expiration.is_some_and(|e| e <= now) {
            Some(EnrollRefusal::Expired)
        } else if self.max_uses.is_some_and(|m| self.uses >= m) {
            Some(EnrollRefusal::Spent)
        } else {
            None
        }
    }

    /// What an agent is told when this key refuses it.
    pub fn refusal_message(&self, why: EnrollRefusal) -> String {
        match why {
            EnrollRefusal::Revoked => "enrollment token revoked".to_owned(),
            EnrollRefusal::Expired => format!(
                "enrollment token expired at {}",
                self.expiration
                    .map(|e| e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default()
            ),
            EnrollRefusal::Spent => format!(
                "enrollment token spent: all {} of its uses are used",
                self.max_uses.unwrap_or_default()
            ),
        }
    }
}

/// The limits a new key is created with: an expiration after `now`, and a
/// use limit of at least one.
pub fn validate_limits(
    expiration: Option<DateTime<Utc>>,
    max_uses: Option<u64>,
    now: DateTime<Utc>,
) -> Result<(), ValidationError> {
    if let Some(e) = expiration {
        if e <= now {
            return Err(ValidationError::new("expiration", "must be in the future"));
        }
    }
    if let Some(m) = max_uses {
        if m == 0 || m > MAX_USES_LIMIT {
            return Err(ValidationError::new(
                "max_uses",
                format!("must be between 1 and {MAX_USES_LIMIT}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn key() -> EnrollmentApiKey {
        EnrollmentApiKey {
            id: "k".into(),
            name: "k".into(),
            policy_id: "p".into(),
            active: true,
            hint: "h".into(),
            created_at: Utc.timestamp_opt(0, 0).unwrap(),
            expiration: None,
            max_uses: None,
            uses: 0,
        }
    }

    #[test]
    fn an_unlimited_key_never_refuses() {
        let mut k = key();
        k.uses = 1_000_000;
        assert_eq!(k.refusal(Utc::now()), None);
    }

    #[test]
    fn expiry_is_exclusive_of_its_instant() {
        let at = Utc.timestamp_opt(1_000, 0).unwrap();
        let k = EnrollmentApiKey {
            expiration: Some(at),
            ..key()
        };
        assert_eq!(k.refusal(at - chrono::Duration::milliseconds(1)), None);
        assert_eq!(k.refusal(at), Some(EnrollRefusal::Expired));
        assert!(k
            .refusal_message(EnrollRefusal::Expired)
            .contains("expired at 1970-01-01T00:16:40Z"));
    }

    #[test]
    fn spent_once_uses_reach_max_uses() {
        let mut k = EnrollmentApiKey {
            max_uses: Some(2),
            uses: 1,
            ..key()
        };
        assert_eq!(k.refusal(Utc::now()), None);
        k.uses = 2;
        assert_eq!(k.refusal(Utc::now()), Some(EnrollRefusal::Spent));
        assert!(k.refusal_message(EnrollRefusal::Spent).contains("spent"));
    }

    #[test]
    fn revoked_wins_over_the_other_reasons() {
        let k = EnrollmentApiKey {
            active: false,
            max_uses: Some(1),
            uses: 1,
            ..key()
        };
        assert_eq!(k.refusal(Utc::now()), Some(EnrollRefusal::Revoked));
    }

    #[test]
    fn limits_are_validated() {
        let now = Utc.timestamp_opt(1_000, 0).unwrap();
        assert!(validate_limits(None, None, now).is_ok());
        assert!(validate_limits(Some(now + chrono::Duration::seconds(1)), Some(1), now).is_ok());
        assert_eq!(
            validate_limits(Some(now), None, now).unwrap_err().field,
            "expiration"
        );
        assert_eq!(
            validate_limits(None, Some(0), now).unwrap_err().field,
            "max_uses"
        );
        assert!(validate_limits(None, Some(MAX_USES_LIMIT + 1), now).is_err());
    }
}
