//! Agents as the management API sees them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// An agent with no check-in for this long counts as offline. Status is
/// derived from stored facts by the store's queries (so lists can filter on
/// it); this is the rule they follow, in order:
/// `unenrolled` (not active) → `enrolling`/`unenrolling` (never checked in) →
/// `inactive` (silent past the policy's `inactivity_timeout`) → `offline`
/// (silent past this) → `unenrolling` → `error`/`degraded` (as reported) →
/// `online`.
pub const OFFLINE_AFTER_SECS: i64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Enrolled, never checked in.
    Enrolling,
    Online,
    /// Checked in and reported an error.
    Error,
    /// Checked in and reported it is degraded.
    Degraded,
    /// Unenrolment requested, not yet acknowledged.
    Unenrolling,
    Offline,
    /// No check-in for longer than the policy's inactivity timeout.
    Inactive,
    Unenrolled,
}

impl AgentStatus {
    pub const ALL: [AgentStatus; 8] = [
        AgentStatus::Enrolling,
        AgentStatus::Online,
        AgentStatus::Error,
        AgentStatus::Degraded,
        AgentStatus::Unenrolling,
        AgentStatus::Offline,
        AgentStatus::Inactive,
        AgentStatus::Unenrolled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Enrolling => "enrolling",
            AgentStatus::Online => "online",
            AgentStatus::Error => "error",
            AgentStatus::Degraded => "degraded",
            AgentStatus::Unenrolling => "unenrolling",
            AgentStatus::Offline => "offline",
            AgentStatus::Inactive => "inactive",
            AgentStatus::Unenrolled => "unenrolled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Agent {
    pub id: String,
    pub policy_id: String,
    /// The policy revision the agent last reported running.
    pub policy_revision: Option<i64>,
    pub active: bool,
    pub status: AgentStatus,
    pub tags: Vec<String>,
    #[schema(value_type = Object)]
    pub local_metadata: Value,
    /// The health the agent last reported (`online`, `error`, `degraded`…).
    pub last_checkin_status: Option<String>,
    pub last_checkin_message: Option<String>,
    pub last_checkin: Option<DateTime<Utc>>,
    /// The agent's version, from its user agent.
    pub agent_version: Option<String>,
    /// Component and unit health, as the agent last reported it.
    #[schema(value_type = Option<Object>)]
    pub components: Option<Value>,
    /// The policy and revision the agent last said it runs.
    pub reported_policy_id: Option<String>,
    pub reported_policy_revision: Option<i64>,
    /// Why its output key could not be minted or rotated (in the output's
    /// cluster), until a mint succeeds; it keeps its current key meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_key_error: Option<String>,
    /// The policy change it could not apply (`policy_id`, `revision`,
    /// `message`, `at`), until it applies a later one. A failed apply is
    /// not counted as applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub policy_change_failure: Option<Value>,
    pub enrolled_at: DateTime<Utc>,
    pub unenrollment_started_at: Option<DateTime<Utc>>,
    pub unenrolled_at: Option<DateTime<Utc>>,
    /// The enrollment key that enrolled it (`static:<hash prefix>` for a static
    /// token from the configuration; none for agents enrolled before keys
    /// were recorded).
    #[serde(default)]
    pub enrollment_api_key_id: Option<String>,
}

/// Tags are short labels used for filtering.
pub fn validate_tags(tags: &[String]) -> Result<Vec<String>, crate::ValidationError> {
    if tags.len() > 64 {
        return Err(crate::ValidationError::new(
            "tags",
            "must list at most 64 tags",
        ));
    }
    tags.iter()
        .map(|t| crate::validate_name("tags", t, 128))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for s in AgentStatus::ALL {
            assert_eq!(AgentStatus::parse(s.as_str()), Some(s));
        }
    }
}
