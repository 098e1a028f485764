//! The fleet API's request and response bodies, as agents send and read
//! them (`shared/reference/fleet-server-openapi.yml`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Deserialize)]
pub struct EnrollMetadata {
    #[serde(default)]
    pub local: Value,
    #[serde(default)]
    pub user_provided: Value,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct EnrollRequest {
    #[serde(rename = "type")]
    pub enroll_type: String,
    pub metadata: EnrollMetadata,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub replace_token: Option<String>,
    #[serde(default)]
    pub enrollment_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct EnrollItem {
    pub id: String,
    pub active: bool,
    pub policy_id: String,
    #[serde(rename = "type")]
    pub enroll_type: String,
    pub enrolled_at: DateTime<Utc>,
    pub user_provided_metadata: Value,
    pub local_metadata: Value,
    pub access_api_key_id: String,
    pub access_api_key: String,
    pub status: String,
    pub tags: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct EnrollResponse {
    pub action: &'static str,
    pub item: EnrollItem,
}

#[derive(Debug, Deserialize)]
pub struct CheckinRequest {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub ack_token: Option<String>,
    /// Kept as sent (checked to be JSON): a few KiB on every check-in,
    /// digested as bytes and parsed only when it must be written.
    #[serde(default)]
    pub local_metadata: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    pub components: Option<Value>,
    #[serde(default)]
    pub poll_timeout: Option<String>,
    #[serde(default)]
    pub agent_policy_id: Option<String>,
    #[serde(default)]
    pub policy_revision_idx: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct AckEvent {
    #[serde(default)]
    pub agent_id: String,
    #[serde(default)]
    pub action_id: String,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct AckRequest {
    pub events: Vec<Value>,
}

#[derive(Debug, Serialize)]
pub struct AckItem {
    pub status: u16,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct AckResponse {
    pub action: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub errors: bool,
    pub items: Vec<AckItem>,
}

#[derive(Debug, Deserialize)]
pub struct AuditUnenrollRequest {
    pub reason: String,
    pub timestamp: String,
}

pub const AUDIT_REASONS: &[&str] = &["uninstall", "orphaned", "key_revoked", "migrated"];
