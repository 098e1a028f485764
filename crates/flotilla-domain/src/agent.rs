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

/// What an agent list is ordered by (Kibana's `sortField`; the names it
/// sends are accepted as well as the short ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentSortField {
    EnrolledAt,
    LastCheckin,
    Hostname,
    Status,
    PolicyId,
    PolicyRevision,
    Version,
}

impl AgentSortField {
    pub const ALL: [AgentSortField; 7] = [
        AgentSortField::EnrolledAt,
        AgentSortField::LastCheckin,
        AgentSortField::Hostname,
        AgentSortField::Status,
        AgentSortField::PolicyId,
        AgentSortField::PolicyRevision,
        AgentSortField::Version,
    ];

    /// The short name (the console's `sort` parameter, the first name
    /// [`AgentSortField::parse`] takes).
    pub fn as_str(self) -> &'static str {
        match self {
            AgentSortField::EnrolledAt => "enrolled_at",
            AgentSortField::LastCheckin => "last_checkin",
            AgentSortField::Hostname => "hostname",
            AgentSortField::Status => "status",
            AgentSortField::PolicyId => "policy_id",
            AgentSortField::PolicyRevision => "policy_revision",
            AgentSortField::Version => "version",
        }
    }

    /// A field by its short name or the name Kibana's Fleet UI sends
    /// (`local_metadata.host.hostname`, `local_metadata.elastic.agent.version`,
    /// `policy_revision_idx`…).
    pub fn parse(name: &str) -> Option<AgentSortField> {
        let name = name.strip_prefix("fleet-agents.").unwrap_or(name);
        Some(match name {
            "enrolled_at" => AgentSortField::EnrolledAt,
            "last_checkin" => AgentSortField::LastCheckin,
            "hostname"
            | "local_metadata.host.hostname"
            | "local_metadata.host.hostname.keyword" => AgentSortField::Hostname,
            "status" => AgentSortField::Status,
            "policy_id" => AgentSortField::PolicyId,
            "policy_revision" | "policy_revision_idx" => AgentSortField::PolicyRevision,
            "version"
            | "agent.version"
            | "local_metadata.elastic.agent.version"
            | "local_metadata.elastic.agent.version.keyword" => AgentSortField::Version,
            _ => return None,
        })
    }
}

/// An agent list's order: a field and a direction; ties (and agents
/// without the field, which come last either way) in id order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentSort {
    pub field: AgentSortField,
    pub ascending: bool,
}

impl Default for AgentSort {
    /// Newest enrolment first, as Kibana lists agents.
    fn default() -> Self {
        AgentSort {
            field: AgentSortField::EnrolledAt,
            ascending: false,
        }
    }
}

impl AgentSort {
    /// From a field name and an order (`asc` or `desc`, the field's usual
    /// direction when absent: newest first for times, A to Z otherwise).
    pub fn parse(field: &str, order: Option<&str>) -> Result<AgentSort, crate::ValidationError> {
        let field = AgentSortField::parse(field).ok_or_else(|| {
            crate::ValidationError::new(
                "sortField",
                format!(
                    "'{field}' is not a field agents can be sorted by (one of {})",
                    AgentSortField::ALL.map(AgentSortField::as_str).join(", ")
                ),
            )
        })?;
        let ascending = match order.map(str::to_ascii_lowercase).as_deref() {
            None | Some("") => !matches!(
                field,
                AgentSortField::EnrolledAt | AgentSortField::LastCheckin
            ),
            Some("asc") => true,
            Some("desc") => false,
            Some(other) => {
                return Err(crate::ValidationError::new(
                    "sortOrder",
                    format!("'{other}' is not asc or desc"),
                ))
            }
        };
        Ok(AgentSort { field, ascending })
    }
}

#[cfg(test)]
mod sort_tests {
    use super::*;

    #[test]
    fn kibana_names_and_short_names_parse_and_unknown_ones_are_refused() {
        for f in AgentSortField::ALL {
            assert_eq!(AgentSortField::parse(f.as_str()), Some(f));
        }
        assert_eq!(
            AgentSortField::parse("local_metadata.host.hostname"),
            Some(AgentSortField::Hostname)
        );
        assert_eq!(
            AgentSortField::parse("local_metadata.elastic.agent.version"),
            Some(AgentSortField::Version)
        );
        let s = AgentSort::parse("last_checkin", None).unwrap();
        assert!(!s.ascending);
        assert!(AgentSort::parse("hostname", None).unwrap().ascending);
        assert!(
            !AgentSort::parse("hostname", Some("DESC"))
                .unwrap()
                .ascending
        );
        let e = AgentSort::parse("secret", None).unwrap_err();
        assert!(e.to_string().contains("sortField"), "{e}");
        let e = AgentSort::parse("status", Some("up")).unwrap_err();
        assert!(e.to_string().contains("sortOrder"), "{e}");
    }
}
