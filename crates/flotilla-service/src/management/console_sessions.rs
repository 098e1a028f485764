//! Operator console sessions: an operator key exchanged for a session.
//!
//! The browser keeps a random session id (256 bits of entropy) in a
//! cookie; the store keeps only its SHA-256, with the operator key, a CSRF
//! token and the expiry. Times come from the caller (the console's clock),
//! so tests can move them.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

use flotilla_store::{ConsoleSession, NewConsoleSession};

use crate::secrets::{hash_token, random_alphanumeric};
use crate::ServiceError;

use super::*;

/// Characters of a session id and of a CSRF token (62 symbols each:
/// about 256 bits).
const SESSION_ID_LEN: usize = 43;

/// A new session: the id for the cookie (shown to the browser only) and
/// the session as stored.
pub struct SignedIn {
    pub session_id: SecretString,
    pub session: ConsoleSession,
}

impl Management<'_> {
    /// Exchange an operator key for a console session lasting `ttl`.
    pub async fn console_sign_in(
        &self,
        operator_key: &str,
        ttl: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<SignedIn> {
        let operator = self.authenticate(operator_key).await?;
        let ttl = chrono::Duration::from_std(ttl)
            .map_err(|_| ServiceError::Internal("session lifetime out of range".into()))?;
        // Expired sessions go as new ones come: no task needed for a table
        // that grows only by sign-ins.
        self.store().delete_expired_console_sessions(now).await?;
        let session_id = SecretString::from(random_alphanumeric(SESSION_ID_LEN));
        let new = NewConsoleSession {
            id_hash: hash_token(session_id.expose_secret()),
            operator_key_id: operator.id.clone(),
            csrf_token: random_alphanumeric(SESSION_ID_LEN),
            created_at: now,
            expires_at: now + ttl,
        };
        self.store().create_console_session(&new).await?;
        Ok(SignedIn {
            session_id,
            session: ConsoleSession {
                operator,
                csrf_token: new.csrf_token,
                created_at: new.created_at,
                expires_at: new.expires_at,
            },
        })
    }

    /// The live session a cookie's id names, if any.
    pub async fn console_session(
        &self,
        session_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<ConsoleSession>> {
        if session_id.is_empty() || session_id.len() > 128 {
            return Ok(None);
        }
        Ok(self
            .store()
            .find_console_session(&hash_token(session_id), now)
            .await?)
    }

    /// Sign-out: the session is deleted.
    pub async fn console_sign_out(&self, session_id: &str) -> Result<()> {
        self.store()
            .delete_console_session(&hash_token(session_id))
            .await?;
        Ok(())
    }
}
