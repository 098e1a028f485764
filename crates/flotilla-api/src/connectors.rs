//! The cloud connector API's bodies (Kibana's: `cloudProvider`,
//! `accountType`, variables as `{type, value}` or bare strings).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use flotilla_domain::connector::{AccountType, CloudProvider};

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCloudConnector {
    /// Optional caller-chosen id; generated when omitted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(rename = "cloudProvider")]
    pub cloud_provider: CloudProvider,
    #[serde(
        rename = "accountType",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub account_type: Option<AccountType>,
    /// AWS: `role_arn` + `external_id`, or `access_key_id` +
    /// `secret_access_key`; Azure: `tenant_id`, `client_id`,
    /// `client_secret`, `subscription_id`; GCP: `service_account`,
    /// `audience`, `project_id`. Secrets are sealed and only ever shown
    /// as references.
    #[schema(value_type = Object)]
    pub vars: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCloudConnector {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
    /// Must equal the connector's own (a connector never changes provider).
    #[serde(
        rename = "cloudProvider",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub cloud_provider: Option<CloudProvider>,
    #[serde(
        rename = "accountType",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub account_type: Option<AccountType>,
    /// Only the variables named change; `null` or `""` removes one; a
    /// secret's reference, sent back, keeps it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<Object>)]
    pub vars: Option<Map<String, Value>>,
}

/// `POST /api/fleet/cloud_connectors/{id}/_verify`'s answer.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct VerifyQueued {
    pub id: String,
    /// Whether the verifier task was asked to run now (false when the
    /// verifier is switched off).
    pub queued: bool,
}
