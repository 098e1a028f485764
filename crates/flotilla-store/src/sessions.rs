//! Operator console sessions: a signed-in browser's session, kept in the
//! database (several instances may serve one console), known only by the
//! SHA-256 of its id.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use flotilla_domain::apikey::OperatorApiKey;

use crate::Result;

/// A session to record. `id_hash` is the hex SHA-256 of the cookie's id;
/// the id itself is never stored.
#[derive(Clone)]
pub struct NewConsoleSession {
    pub id_hash: String,
    pub operator_key_id: String,
    /// Sent back in every state-changing form.
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for NewConsoleSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewConsoleSession")
            .field("operator_key_id", &self.operator_key_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A live session: not expired, its operator key still active.
#[derive(Clone)]
pub struct ConsoleSession {
    pub operator: OperatorApiKey,
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for ConsoleSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSession")
            .field("operator", &self.operator.id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Record a session; its operator key must exist.
    async fn create_console_session(&self, session: &NewConsoleSession) -> Result<()>;
    /// The session with this id hash if it is live at `now`: not expired
    /// and its operator key active (revoking the key ends its sessions).
    async fn find_console_session(
        &self,
        id_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<ConsoleSession>>;
    /// Sign-out: whether a session was deleted.
    async fn delete_console_session(&self, id_hash: &str) -> Result<bool>;
    /// Remove sessions expired by `now`; how many.
    async fn delete_expired_console_sessions(&self, now: DateTime<Utc>) -> Result<u64>;
}
