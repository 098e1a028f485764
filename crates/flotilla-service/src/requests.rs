//! Request bodies of the management API, as callers send them. Services
//! validate them into domain values; unknown fields are refused so that a
//! typo is an error rather than a silently ignored setting.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use flotilla_domain::output::OutputType;
use flotilla_domain::package_policy::InputRequest;

/// Distinguishes an absent field (`None`) from an explicit `null`
/// (`Some(None)`), for updates that can clear a value.
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOutput {
    /// Optional caller-chosen id; generated when omitted.
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(rename = "type")]
    pub output_type: OutputType,
    pub hosts: Vec<String>,
    #[serde(default)]
    pub is_default: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOutput {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "type")]
    pub output_type: Option<OutputType>,
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    #[serde(default)]
    pub is_default: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgentPolicy {
    /// Optional caller-chosen id; generated when omitted.
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    /// Defaults to `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// The output to use; omitted means the default output.
    #[serde(default)]
    pub output_id: Option<String>,
    /// Seconds; defaults to two weeks.
    #[serde(default)]
    pub inactivity_timeout: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgentPolicy {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// `null` switches back to the default output.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub output_id: Option<Option<String>>,
    #[serde(default)]
    pub inactivity_timeout: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PackageRequest {
    pub name: String,
    /// Defaults to the catalogue's version.
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePackagePolicy {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub policy_id: String,
    pub package: PackageRequest,
    /// Defaults to the agent policy's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub vars: Map<String, Value>,
    /// Omitted: the integration's default inputs.
    #[serde(default)]
    pub inputs: Option<Vec<InputRequest>>,
    #[serde(default)]
    pub cloud_connector_id: Option<String>,
}

/// Fields left out keep their current value.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePackagePolicy {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    #[serde(default)]
    pub policy_id: Option<String>,
    #[serde(default)]
    pub package: Option<PackageRequest>,
    /// `null` returns to the agent policy's namespace.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub namespace: Option<Option<String>>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub vars: Option<Map<String, Value>>,
    #[serde(default)]
    pub inputs: Option<Vec<InputRequest>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub cloud_connector_id: Option<Option<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentKey {
    pub policy_id: String,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgent {
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReassignAgent {
    pub policy_id: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnenrollAgent {
    /// Unenrol at once instead of waiting for the agent to acknowledge.
    #[serde(default)]
    pub revoke: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOperatorKey {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    #[serde(rename = "type")]
    pub action_type: flotilla_domain::action::ActionType,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: Value,
    #[serde(default)]
    pub expiration: Option<chrono::DateTime<chrono::Utc>>,
}

/// `{"action": {"type", "data", "expiration"}}`, as Kibana's Fleet API.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAction {
    pub action: ActionRequest,
}
