//! Actions: instructions delivered to agents at check-in.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// The action types an operator can create. `POLICY_CHANGE` is never
/// stored: the server generates it from the policy revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ActionType {
    Unenroll,
    Settings,
    PolicyReassign,
    /// Tags changed by a bulk action: applied by the server, never
    /// delivered to agents (its targets are settled when created).
    UpdateTags,
}

impl ActionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionType::Unenroll => "UNENROLL",
            ActionType::Settings => "SETTINGS",
            ActionType::PolicyReassign => "POLICY_REASSIGN",
            ActionType::UpdateTags => "UPDATE_TAGS",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "UNENROLL" => Some(Self::Unenroll),
            "SETTINGS" => Some(Self::Settings),
            "POLICY_REASSIGN" => Some(Self::PolicyReassign),
            "UPDATE_TAGS" => Some(Self::UpdateTags),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Action {
    pub id: String,
    #[serde(rename = "type")]
    pub action_type: ActionType,
    #[schema(value_type = Object)]
    pub data: Value,
    pub created_at: DateTime<Utc>,
    pub expiration: Option<DateTime<Utc>>,
    pub agents: Vec<String>,
}

/// Where one agent's copy of an action stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentActionStatus {
    #[serde(flatten)]
    pub action: Action,
    /// The agent confirmed receiving it (sent back its ack token, or acked).
    pub delivered: bool,
    pub acked_at: Option<DateTime<Utc>>,
    /// The error the agent reported when acknowledging, if any.
    pub ack_error: Option<String>,
}

pub const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warning", "error"];

/// Validate an action's data for its type.
pub fn validate_data(
    action_type: ActionType,
    data: &Value,
) -> Result<Value, crate::ValidationError> {
    match action_type {
        ActionType::Unenroll => Ok(Value::Null),
        ActionType::UpdateTags => Err(crate::ValidationError::new(
            "action.type",
            "UPDATE_TAGS is made by POST /api/fleet/agents/bulk_update_agent_tags",
        )),
        ActionType::Settings => {
            let level = data
                .get("log_level")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    crate::ValidationError::new("action.data.log_level", "is required for SETTINGS")
                })?;
            if !LOG_LEVELS.contains(&level) {
                return Err(crate::ValidationError::new(
                    "action.data.log_level",
                    format!("must be one of {}", LOG_LEVELS.join(", ")),
                ));
            }
            Ok(serde_json::json!({ "log_level": level }))
        }
        ActionType::PolicyReassign => {
            let policy = data
                .get("policy_id")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    crate::ValidationError::new(
                        "action.data.policy_id",
                        "is required for POLICY_REASSIGN",
                    )
                })?;
            Ok(serde_json::json!({ "policy_id": policy }))
        }
    }
}

/// Where one agent's copy of an action stands, from its target row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetOutcome {
    /// Not yet received by the agent.
    Pending,
    /// Handed out by a check-in, not yet acknowledged.
    Delivered,
    /// Acknowledged (or applied by the server) without error.
    Acked,
    /// Acknowledged with an error, or refused for this agent.
    Failed,
}

impl TargetOutcome {
    pub fn of(delivered: bool, acked: bool, error: bool) -> Self {
        match (error, acked, delivered) {
            (true, _, _) => TargetOutcome::Failed,
            (false, true, _) => TargetOutcome::Acked,
            (false, false, true) => TargetOutcome::Delivered,
            _ => TargetOutcome::Pending,
        }
    }
}

/// An action's progress over its agents, in the shape of Kibana's
/// `GET /api/fleet/agents/action_status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionProgress {
    pub action_id: String,
    #[serde(rename = "type")]
    pub action_type: ActionType,
    /// `IN_PROGRESS`, `COMPLETE`, `FAILED` (done, some failed) or
    /// `EXPIRED` (expired before every agent answered).
    pub status: String,
    pub nb_agents_action_created: u64,
    pub nb_agents_actioned: u64,
    pub nb_agents_delivered: u64,
    pub nb_agents_ack: u64,
    pub nb_agents_failed: u64,
    /// Neither delivered nor answered yet.
    pub nb_agents_pending: u64,
    pub creation_time: DateTime<Utc>,
    pub expiration: Option<DateTime<Utc>>,
    /// The last answer, once every agent answered.
    pub completion_time: Option<DateTime<Utc>>,
    #[schema(value_type = Object)]
    pub data: Value,
}

/// The status of an action with `created` targets of which `acked` were
/// acknowledged and `failed` failed, at `now`.
pub fn progress_status(
    created: u64,
    acked: u64,
    failed: u64,
    expiration: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> &'static str {
    if acked + failed >= created {
        if failed > 0 {
            "FAILED"
        } else {
            "COMPLETE"
        }
    } else if expiration.is_some_and(|e| e <= now) {
        "EXPIRED"
    } else {
        "IN_PROGRESS"
    }
}

/// One agent's outcome of an action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ActionTarget {
    pub agent_id: String,
    pub outcome: TargetOutcome,
    pub acked_at: Option<DateTime<Utc>>,
    /// The agent's error (or why the action was refused for it).
    pub error: Option<String>,
}

#[cfg(test)]
mod progress_tests {
    use super::*;

    #[test]
    fn status_follows_the_counts_and_expiry() {
        let now = Utc::now();
        assert_eq!(progress_status(3, 1, 0, None, now), "IN_PROGRESS");
        assert_eq!(progress_status(3, 3, 0, None, now), "COMPLETE");
        assert_eq!(progress_status(3, 2, 1, None, now), "FAILED");
        assert_eq!(progress_status(3, 1, 0, Some(now), now), "EXPIRED");
        assert_eq!(progress_status(0, 0, 0, None, now), "COMPLETE");
    }

    #[test]
    fn outcomes() {
        assert_eq!(
            TargetOutcome::of(false, false, false),
            TargetOutcome::Pending
        );
        assert_eq!(
            TargetOutcome::of(true, false, false),
            TargetOutcome::Delivered
        );
        assert_eq!(TargetOutcome::of(true, true, false), TargetOutcome::Acked);
        assert_eq!(TargetOutcome::of(true, true, true), TargetOutcome::Failed);
    }
}
