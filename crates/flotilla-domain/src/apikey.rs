//! Operator API keys: what the management API authenticates.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OperatorApiKey {
    pub id: String,
    pub name: String,
    pub active: bool,
    /// The first characters of the key, to recognise it in listings.
    pub hint: String,
    pub created_at: DateTime<Utc>,
}
