//! Enrollment API keys: stored, revocable secrets agents enrol with.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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
}
