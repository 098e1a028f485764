//! The policy exactly as an agent receives it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::output::Output;
use crate::package_policy::SecretReference;
use crate::permissions::Permissions;
use crate::policy::AgentPolicy;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FullOutput {
    #[serde(rename = "type")]
    pub output_type: String,
    pub hosts: Vec<String>,
    /// The agent's own output API key (`id:key`); filled in per agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FullAgentPolicy {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub revision: i64,
    pub outputs: BTreeMap<String, FullOutput>,
    /// Role descriptors per output: what each agent's output key may do.
    pub output_permissions: BTreeMap<String, Permissions>,
    /// Kibana's agent inputs (`id`, `name`, `revision`, `type`,
    /// `use_output`, `package_policy_id`, `data_stream`, `meta`, `streams`).
    #[schema(value_type = Vec<Object>)]
    pub inputs: Vec<Value>,
    /// The secrets the inputs reference as `$co.elastic.secret{id}`; the
    /// fleet server puts their values in before an agent sees the policy.
    pub secret_references: Vec<SecretReference>,
    /// Top-level OpenTelemetry collector sections (`receivers`,
    /// `processors`, `exporters`, `connectors`, `extensions`, `service`)
    /// built from `otelcol` inputs.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub otel: Map<String, Value>,
}

/// What a policy's integrations compile to (see `flotilla-packages`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompiledIntegrations {
    pub inputs: Vec<Value>,
    pub permissions: Permissions,
    pub secret_references: Vec<SecretReference>,
    pub otel: Map<String, Value>,
}

impl FullAgentPolicy {
    /// Build the agent's view of `policy` sending to `output`, with its
    /// integrations already compiled.
    pub fn build(policy: &AgentPolicy, output: &Output, compiled: CompiledIntegrations) -> Self {
        FullAgentPolicy {
            id: policy.id.clone(),
            name: policy.name.clone(),
            namespace: policy.namespace.clone(),
            revision: policy.revision,
            outputs: BTreeMap::from([(
                output.id.clone(),
                FullOutput {
                    output_type: output.output_type.as_str().to_owned(),
                    hosts: output.hosts.clone(),
                    api_key: None,
                },
            )]),
            output_permissions: BTreeMap::from([(output.id.clone(), compiled.permissions)]),
            inputs: compiled.inputs,
            secret_references: compiled.secret_references,
            otel: compiled.otel,
        }
    }
}
