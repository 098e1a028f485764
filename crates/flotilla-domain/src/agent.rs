//! Agents as the management API sees them.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// An agent with no check-in for this long counts as offline.
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
    pub enrolled_at: DateTime<Utc>,
    pub unenrollment_started_at: Option<DateTime<Utc>>,
    pub unenrolled_at: Option<DateTime<Utc>>,
}

/// The facts status is derived from, so it is computed in one place.
#[derive(Debug, Clone, Copy)]
pub struct StatusInputs<'a> {
    pub active: bool,
    pub last_checkin: Option<DateTime<Utc>>,
    pub last_checkin_status: Option<&'a str>,
    pub unenrollment_started_at: Option<DateTime<Utc>>,
    pub inactivity_timeout_secs: u64,
}

pub fn derive_status(now: DateTime<Utc>, s: StatusInputs<'_>) -> AgentStatus {
    if !s.active {
        return AgentStatus::Unenrolled;
    }
    let Some(last) = s.last_checkin else {
        return if s.unenrollment_started_at.is_some() {
            AgentStatus::Unenrolling
        } else {
            AgentStatus::Enrolling
        };
    };
    let silent = now - last;
    if silent > Duration::seconds(s.inactivity_timeout_secs.min(i64::MAX as u64) as i64) {
        return AgentStatus::Inactive;
    }
    if silent > Duration::seconds(OFFLINE_AFTER_SECS) {
        return AgentStatus::Offline;
    }
    if s.unenrollment_started_at.is_some() {
        return AgentStatus::Unenrolling;
    }
    match s.last_checkin_status {
        Some("error") | Some("failed") => AgentStatus::Error,
        Some("degraded") => AgentStatus::Degraded,
        _ => AgentStatus::Online,
    }
}

/// Tags are short labels used for filtering.
pub fn validate_tags(tags: &[String]) -> Result<Vec<String>, crate::ValidationError> {
    if tags.len() > 64 {
        return Err(crate::ValidationError::new("tags", "must list at most 64 tags"));
    }
    tags.iter()
        .map(|t| crate::validate_name("tags", t, 128))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(last: Option<i64>, status: Option<&str>) -> StatusInputs<'_> {
        StatusInputs {
            active: true,
            last_checkin: last.map(|s| Utc::now() - Duration::seconds(s)),
            last_checkin_status: status,
            unenrollment_started_at: None,
            inactivity_timeout_secs: 3600,
        }
    }

    #[test]
    fn status_follows_check_ins_and_timeouts() {
        let now = Utc::now();
        assert_eq!(derive_status(now, inputs(None, None)), AgentStatus::Enrolling);
        assert_eq!(derive_status(now, inputs(Some(10), Some("online"))), AgentStatus::Online);
        assert_eq!(derive_status(now, inputs(Some(10), Some("error"))), AgentStatus::Error);
        assert_eq!(derive_status(now, inputs(Some(10), Some("degraded"))), AgentStatus::Degraded);
        assert_eq!(derive_status(now, inputs(Some(600), Some("online"))), AgentStatus::Offline);
        assert_eq!(derive_status(now, inputs(Some(7200), Some("online"))), AgentStatus::Inactive);
        let mut gone = inputs(Some(10), None);
        gone.active = false;
        assert_eq!(derive_status(now, gone), AgentStatus::Unenrolled);
    }

    #[test]
    fn status_names_round_trip() {
        for s in AgentStatus::ALL {
            assert_eq!(AgentStatus::parse(s.as_str()), Some(s));
        }
    }
}
