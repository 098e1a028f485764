//! Agent policies: the unit of configuration an agent is enrolled into.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{validate_name, ValidationError};

/// Default for `inactivity_timeout`: two weeks, in seconds.
pub const DEFAULT_INACTIVITY_TIMEOUT_SECS: u64 = 1_209_600;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentPolicy {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub description: Option<String>,
    /// The output the policy's data goes to; `None` means the default output.
    pub output_id: Option<String>,
    /// Seconds without a check-in after which an agent counts as inactive.
    pub inactivity_timeout: u64,
    /// Increases on every change to the policy or anything in it.
    pub revision: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewAgentPolicy {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub description: Option<String>,
    pub output_id: Option<String>,
    pub inactivity_timeout: u64,
}

/// A validated partial update; `None` leaves a field unchanged. For the
/// nullable fields, `Some(None)` clears them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentPolicyUpdate {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub description: Option<Option<String>>,
    pub output_id: Option<Option<String>>,
    pub inactivity_timeout: Option<u64>,
}

impl AgentPolicyUpdate {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

pub fn validate_policy_name(name: &str) -> Result<String, ValidationError> {
    validate_name("name", name, 255)
}

pub fn validate_description(description: &str) -> Result<String, ValidationError> {
    if description.chars().count() > 4096 {
        return Err(ValidationError::new(
            "description",
            "must be at most 4096 characters",
        ));
    }
    Ok(description.to_owned())
}

pub fn validate_inactivity_timeout(secs: u64) -> Result<u64, ValidationError> {
    if !(60..=31_536_000).contains(&secs) {
        return Err(ValidationError::new(
            "inactivity_timeout",
            "must be between 60 and 31536000 seconds",
        ));
    }
    Ok(secs)
}

/// Namespaces end up in data stream names (`logs-nginx.access-<namespace>`),
/// so they follow Elasticsearch's index-name rules: lowercase, at most 100
/// bytes, and none of `\ / * ? " < > | , # : -` or spaces.
pub fn validate_namespace(field: &str, namespace: &str) -> Result<String, ValidationError> {
    if namespace.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if namespace.len() > 100 {
        return Err(ValidationError::new(field, "must be at most 100 bytes"));
    }
    if namespace != namespace.to_lowercase() {
        return Err(ValidationError::new(field, "must be lowercase"));
    }
    if let Some(c) = namespace.chars().find(|c| {
        matches!(
            c,
            '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ',' | '#' | ':' | '-' | ' '
        ) || c.is_control()
    }) {
        return Err(ValidationError::new(
            field,
            format!("must not contain '{c}'"),
        ));
    }
    if namespace.starts_with(['_', '+', '.']) {
        return Err(ValidationError::new(
            field,
            "must not start with '_', '+' or '.'",
        ));
    }
    Ok(namespace.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_rules() {
        assert!(validate_namespace("namespace", "prod").is_ok());
        assert!(validate_namespace("namespace", "team_a.eu").is_ok());
        for bad in ["", "Prod", "a-b", "a b", "a*", "_x", &"x".repeat(101)] {
            let err = validate_namespace("namespace", bad).unwrap_err();
            assert_eq!(err.field, "namespace", "{bad}");
        }
    }

    #[test]
    fn inactivity_timeout_bounds() {
        assert!(validate_inactivity_timeout(59).is_err());
        assert!(validate_inactivity_timeout(3600).is_ok());
    }
}
