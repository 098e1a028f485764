//! The management API's bodies: requests as callers send them (services
//! validate them into domain values; unknown fields are refused so that a
//! typo is an error rather than a silently ignored setting; absent fields
//! are not sent, so an update changes only what it names) and the
//! envelopes answers come in.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use flotilla_domain::output::OutputType;

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
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(rename = "type")]
    pub output_type: OutputType,
    pub hosts: Vec<String>,
    #[serde(default)]
    pub is_default: bool,
    /// Elasticsearch outputs on an existing cluster: the credential agents'
    /// keys are managed with there. Write-only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub secrets: Option<OutputSecrets>,
}

/// An output's secrets (never returned): one of them.
#[derive(Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputSecrets {
    /// `base64(id:secret)` of an API key allowed to manage API keys in the
    /// cluster (a Flotilla operator key, say). Sent as `ApiKey`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub api_key: Option<String>,
    /// An Elasticsearch service token (`elastic/fleet-server`), as
    /// fleet-server uses: sent as `Bearer`. Elasticsearch gives keys made
    /// with an API key no privileges, so a real cluster needs this.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub service_token: Option<String>,
}

impl std::fmt::Debug for OutputSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputSecrets")
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field(
                "service_token",
                &self.service_token.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOutput {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default, rename = "type")]
    pub output_type: Option<OutputType>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hosts: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub is_default: Option<bool>,
    /// `null` returns key management to Flotilla's own key service.
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        deserialize_with = "double_option"
    )]
    #[schema(value_type = Option<OutputSecrets>)]
    pub secrets: Option<Option<OutputSecrets>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgentPolicy {
    /// Optional caller-chosen id; generated when omitted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub id: Option<String>,
    pub name: String,
    /// Defaults to `default`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub description: Option<String>,
    /// The output to use; omitted means the default output.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub output_id: Option<String>,
    /// Seconds; defaults to two weeks.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub inactivity_timeout: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgentPolicy {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub namespace: Option<String>,
    /// `null` clears it.
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        deserialize_with = "double_option"
    )]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// `null` switches back to the default output.
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        deserialize_with = "double_option"
    )]
    #[schema(value_type = Option<String>)]
    pub output_id: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub inactivity_timeout: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PackageRequest {
    pub name: String,
    /// Defaults to the newest installed version.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePackagePolicy {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub description: Option<String>,
    pub policy_id: String,
    pub package: PackageRequest,
    /// Defaults to the agent policy's namespace.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub namespace: Option<String>,
    /// Package-level variables: plain values or Kibana's `{"value": …}`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<Object>)]
    pub vars: Option<Map<String, Value>>,
    /// Kibana's full form (a list of inputs with `type`, `policy_template`,
    /// `enabled`, `vars`, `streams`) or its simplified form (an object keyed
    /// `<policy template>-<input type>`). Omitted: the package's defaults.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<Object>)]
    pub inputs: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cloud_connector_id: Option<String>,
    /// Accepted for Kibana compatibility; integrations are always enabled.
    #[serde(skip_serializing, default)]
    pub enabled: Option<bool>,
    /// Accepted for Kibana compatibility; ignored.
    #[serde(skip_serializing, default)]
    pub force: Option<bool>,
}

/// Fields left out keep their current value.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePackagePolicy {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        deserialize_with = "double_option"
    )]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub policy_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub package: Option<PackageRequest>,
    /// `null` returns to the agent policy's namespace.
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        deserialize_with = "double_option"
    )]
    #[schema(value_type = Option<String>)]
    pub namespace: Option<Option<String>>,
    /// Merged over the current values.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<Object>)]
    pub vars: Option<Map<String, Value>>,
    /// Applied over the current inputs, in either of Kibana's forms.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<Object>)]
    pub inputs: Option<Value>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        deserialize_with = "double_option"
    )]
    #[schema(value_type = Option<String>)]
    pub cloud_connector_id: Option<Option<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentKey {
    pub policy_id: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
    /// When the key stops enrolling agents (RFC 3339, in the future).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expiration: Option<chrono::DateTime<chrono::Utc>>,
    /// How many agents it may enrol (at least 1); none: any number.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_uses: Option<u64>,
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
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expiration: Option<chrono::DateTime<chrono::Utc>>,
}

/// `{"action": {"type", "data", "expiration"}}`, as Kibana's Fleet API.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAction {
    pub action: ActionRequest,
}

/// `{"item": …}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Item<T> {
    pub item: T,
}

/// `{"items", "total", "page", "perPage"}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct List<T> {
    pub items: Vec<T>,
    pub total: u64,
    pub page: u32,
    #[serde(rename = "perPage")]
    pub per_page: u32,
}

/// `{"items": […]}`, unpaged (installed packages, as Kibana's EPM).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Items<T> {
    pub items: Vec<T>,
}

/// What a delete answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    pub id: String,
    pub success: bool,
}

/// An enrollment key as created: the only time its token is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnrollmentKeyWithToken {
    #[serde(flatten)]
    pub key: flotilla_domain::enrollment::EnrollmentApiKey,
    /// The enrollment token, `base64(id:secret)`. Shown once, never stored.
    pub api_key: String,
}

/// An operator API key as created: the only time its secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct OperatorKeyWithSecret {
    #[serde(flatten)]
    pub key: flotilla_domain::apikey::OperatorApiKey,
    /// Use as `Authorization: ApiKey <api_key>`. Shown once, never stored.
    pub api_key: String,
}

/// Which agents a bulk action takes: a list of ids, or a `kuery` string
/// (as Kibana's bulk routes take `agents`).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum AgentSelection {
    Ids(Vec<String>),
    Kuery(String),
}

/// `POST /api/fleet/agents/bulk_reassign`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkReassign {
    pub agents: AgentSelection,
    pub policy_id: String,
}

/// `POST /api/fleet/agents/bulk_unenroll`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkUnenroll {
    pub agents: AgentSelection,
    /// Unenrol at once instead of asking the agents.
    #[serde(default)]
    pub revoke: bool,
}

/// `POST /api/fleet/agents/bulk_update_agent_tags`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkUpdateTags {
    pub agents: AgentSelection,
    #[serde(default, rename = "tagsToAdd")]
    pub tags_to_add: Vec<String>,
    #[serde(default, rename = "tagsToRemove")]
    pub tags_to_remove: Vec<String>,
}

/// `POST /api/fleet/agents/bulk_settings`: a `SETTINGS` action (log level)
/// for many agents.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkSettings {
    pub agents: AgentSelection,
    pub log_level: String,
}

/// What a bulk action answers: follow it at
/// `/api/fleet/agents/action_status/{actionId}`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct BulkActionCreated {
    #[serde(rename = "actionId")]
    pub action_id: String,
}
