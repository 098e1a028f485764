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
}

impl ActionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionType::Unenroll => "UNENROLL",
            ActionType::Settings => "SETTINGS",
            ActionType::PolicyReassign => "POLICY_REASSIGN",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "UNENROLL" => Some(Self::Unenroll),
            "SETTINGS" => Some(Self::Settings),
            "POLICY_REASSIGN" => Some(Self::PolicyReassign),
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
