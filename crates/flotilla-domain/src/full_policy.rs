//! The policy exactly as an agent receives it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::catalogue::Catalogue;
use crate::output::Output;
use crate::package_policy::{DataStreamRef, PackagePolicy, PackageRef};
use crate::permissions::{self, Permissions};
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
pub struct FullInputMeta {
    pub package: PackageRef,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FullDataStreamNamespace {
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FullStream {
    pub id: String,
    pub data_stream: DataStreamRef,
    /// The stream's variables, flattened as the agent expects them.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub vars: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FullInput {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub input_type: String,
    pub use_output: String,
    pub package_policy_id: String,
    pub meta: FullInputMeta,
    pub data_stream: FullDataStreamNamespace,
    pub streams: Vec<FullStream>,
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
    pub inputs: Vec<FullInput>,
}

impl FullAgentPolicy {
    /// Build the agent's view of `policy` with its `integrations`, sending
    /// to `output`.
    pub fn build(
        policy: &AgentPolicy,
        output: &Output,
        integrations: &[PackagePolicy],
        catalogue: &Catalogue,
    ) -> Self {
        let inputs = integrations
            .iter()
            .flat_map(|pp| {
                let namespace = pp.effective_namespace(&policy.namespace).to_owned();
                pp.inputs
                    .iter()
                    .filter(|i| i.enabled)
                    .map(move |input| FullInput {
                        id: format!("{}-{}", input.input_type, pp.id),
                        name: pp.name.clone(),
                        input_type: input.input_type.clone(),
                        use_output: output.id.clone(),
                        package_policy_id: pp.id.clone(),
                        meta: FullInputMeta {
                            package: pp.package.clone(),
                        },
                        data_stream: FullDataStreamNamespace {
                            namespace: namespace.clone(),
                        },
                        streams: input
                            .streams
                            .iter()
                            .filter(|s| s.enabled)
                            .map(|s| {
                                let mut vars = pp.vars.clone();
                                vars.remove("dataset");
                                vars.extend(s.vars.clone());
                                FullStream {
                                    id: format!(
                                        "{}-{}-{}",
                                        input.input_type, s.data_stream.dataset, pp.id
                                    ),
                                    data_stream: s.data_stream.clone(),
                                    vars,
                                }
                            })
                            .collect(),
                    })
            })
            .collect();
        let perms = permissions::compute(&policy.namespace, integrations, catalogue);
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
            output_permissions: BTreeMap::from([(output.id.clone(), perms)]),
            inputs,
        }
    }
}
