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
                                // Catalogue defaults, then the integration's
                                // variables, then the stream's own.
                                let package = catalogue.package(&pp.package.name);
                                let defaults = package
                                    .and_then(|p| p.input(&input.input_type))
                                    .and_then(|i| {
                                        match package.and_then(|p| p.dataset_var.as_ref()) {
                                            Some(_) => i.streams.first(),
                                            None => i.stream(&s.data_stream.dataset),
                                        }
                                    })
                                    .map(|spec| spec.vars.clone())
                                    .unwrap_or_default();
                                let mut vars = defaults;
                                let mut package_vars = pp.vars.clone();
                                if let Some(dataset_var) =
                                    package.and_then(|p| p.dataset_var.as_ref())
                                {
                                    package_vars.remove(dataset_var);
                                }
                                vars.extend(package_vars);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::OutputType;
    use crate::package_policy::resolve_inputs;
    use serde_json::json;

    fn nginx(vars: Value) -> PackagePolicy {
        let catalogue = Catalogue::builtin();
        let vars = vars.as_object().cloned().unwrap_or_default();
        PackagePolicy {
            id: "pp".into(),
            name: "nginx-1".into(),
            description: None,
            policy_id: "p".into(),
            package: PackageRef {
                name: "nginx".into(),
                version: "1.20.0".into(),
            },
            namespace: None,
            inputs: resolve_inputs(catalogue.package("nginx").unwrap(), &vars, None).unwrap(),
            vars,
            cloud_connector_id: None,
            created_at: Default::default(),
            updated_at: Default::default(),
        }
    }

    fn build(pp: PackagePolicy) -> FullAgentPolicy {
        let policy = AgentPolicy {
            id: "p".into(),
            name: "p".into(),
            namespace: "prod".into(),
            description: None,
            output_id: None,
            inactivity_timeout: 3600,
            revision: 4,
            created_at: Default::default(),
            updated_at: Default::default(),
        };
        let output = Output {
            id: "out".into(),
            name: "out".into(),
            output_type: OutputType::Elasticsearch,
            hosts: vec!["https://es:9200".into()],
            is_default: true,
            created_at: Default::default(),
            updated_at: Default::default(),
        };
        FullAgentPolicy::build(&policy, &output, &[pp], Catalogue::builtin())
    }

    #[test]
    fn variables_layer_catalogue_then_integration_then_stream() {
        let full = build(nginx(json!({})));
        assert_eq!(full.revision, 4);
        assert_eq!(
            full.inputs[0].streams[0].vars["paths"],
            json!(["/var/log/nginx/access.log*"])
        );
        assert_eq!(full.inputs[0].data_stream.namespace, "prod");
        assert!(full.output_permissions["out"].0.contains_key("nginx-1"));

        let full = build(nginx(json!({"paths": ["/srv/nginx/*.log"]})));
        assert_eq!(
            full.inputs[0].streams[0].vars["paths"],
            json!(["/srv/nginx/*.log"])
        );
        let doc = serde_json::to_value(&full).unwrap();
        assert_eq!(
            doc["inputs"][0]["streams"][0]["data_stream"]["dataset"],
            "nginx.access"
        );
    }
}
