//! The permissions block of a policy: which index privileges its agents'
//! output API keys carry.
//!
//! Shape (Elasticsearch role descriptors, one per integration):
//! `{"<integration name>": {"indices": [{"names": [...], "privileges": [...]}]}}`.
//! It is derived from the policy's integrations and their namespace, never
//! stored, so it cannot drift from them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::catalogue::{Catalogue, DEFAULT_STREAM_PRIVILEGES};
use crate::package_policy::PackagePolicy;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub struct IndexPermission {
    pub names: Vec<String>,
    pub privileges: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoleDescriptor {
    pub indices: Vec<IndexPermission>,
}

/// Role descriptors keyed by integration name, in a deterministic order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct Permissions(pub BTreeMap<String, RoleDescriptor>);

impl Permissions {
    /// A stable digest of the block, used to tell whether an agent's key
    /// still matches its policy.
    pub fn hash(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("permissions serialise");
        hex::encode(Sha256::digest(canonical))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Data stream name per Elastic's naming scheme: `{type}-{dataset}-{namespace}`.
pub fn data_stream_name(stream_type: &str, dataset: &str, namespace: &str) -> String {
    format!("{stream_type}-{dataset}-{namespace}")
}

/// Compute a policy's permissions block from its integrations.
pub fn compute(
    policy_namespace: &str,
    integrations: &[PackagePolicy],
    catalogue: &Catalogue,
) -> Permissions {
    let mut out = BTreeMap::new();
    for pp in integrations {
        let namespace = pp.effective_namespace(policy_namespace);
        let package = catalogue.package(&pp.package.name);
        // privileges (sorted) -> index names
        let mut groups: BTreeMap<Vec<String>, BTreeSet<String>> = BTreeMap::new();
        for input in pp.inputs.iter().filter(|i| i.enabled) {
            let input_spec = package.and_then(|p| p.input(&input.input_type));
            for stream in input.streams.iter().filter(|s| s.enabled) {
                let spec = input_spec.and_then(|i| {
                    if package.is_some_and(|p| p.dataset_var.is_some()) {
                        i.streams.first()
                    } else {
                        i.stream(&stream.data_stream.dataset)
                    }
                });
                let mut privileges = spec.map(|s| s.privileges()).unwrap_or_else(|| {
                    DEFAULT_STREAM_PRIVILEGES
                        .iter()
                        .map(|s| s.to_string())
                        .collect()
                });
                privileges.sort();
                privileges.dedup();
                groups
                    .entry(privileges)
                    .or_default()
                    .insert(data_stream_name(
                        &stream.data_stream.stream_type,
                        &stream.data_stream.dataset,
                        namespace,
                    ));
            }
        }
        if groups.is_empty() {
            continue;
        }
        let indices = groups
            .into_iter()
            .map(|(privileges, names)| IndexPermission {
                names: names.into_iter().collect(),
                privileges,
            })
            .collect();
        out.insert(pp.name.clone(), RoleDescriptor { indices });
    }
    Permissions(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package_policy::{resolve_inputs, PackageRef};
    use serde_json::{json, Map};

    fn pp(
        name: &str,
        package: &str,
        namespace: Option<&str>,
        vars: serde_json::Value,
    ) -> PackagePolicy {
        let spec = Catalogue::builtin().package(package).unwrap();
        let vars: Map<_, _> = vars.as_object().cloned().unwrap_or_default();
        PackagePolicy {
            id: name.into(),
            name: name.into(),
            description: None,
            policy_id: "p".into(),
            package: PackageRef {
                name: package.into(),
                version: spec.version.clone(),
            },
            namespace: namespace.map(Into::into),
            inputs: resolve_inputs(spec, &vars, None).unwrap(),
            vars,
            cloud_connector_id: None,
            created_at: Default::default(),
            updated_at: Default::default(),
        }
    }

    #[test]
    fn nginx_in_prod_gets_create_doc_on_its_data_streams() {
        let perms = compute(
            "prod",
            &[pp("nginx-1", "nginx", None, json!({}))],
            Catalogue::builtin(),
        );
        let value = serde_json::to_value(&perms).unwrap();
        assert_eq!(
            value,
            json!({"nginx-1": {"indices": [{
                "names": ["logs-nginx.access-prod", "logs-nginx.error-prod"],
                "privileges": ["auto_configure", "create_doc"]
            }]}})
        );
    }

    #[test]
    fn integration_namespace_overrides_the_policy_namespace() {
        let perms = compute(
            "default",
            &[
                pp("sys", "system", None, json!({})),
                pp(
                    "app",
                    "log",
                    Some("team_a"),
                    json!({"paths": ["/a.log"], "dataset": "myapp"}),
                ),
            ],
            Catalogue::builtin(),
        );
        let sys = &perms.0["sys"].indices[0].names;
        assert!(sys.contains(&"metrics-system.cpu-default".to_string()));
        assert!(sys.contains(&"logs-system.auth-default".to_string()));
        assert_eq!(perms.0["app"].indices[0].names, ["logs-myapp-team_a"]);
    }

    #[test]
    fn namespace_change_changes_the_hash() {
        let a = compute(
            "prod",
            &[pp("n", "nginx", None, json!({}))],
            Catalogue::builtin(),
        );
        let b = compute(
            "staging",
            &[pp("n", "nginx", None, json!({}))],
            Catalogue::builtin(),
        );
        assert_ne!(a, b);
        assert_ne!(a.hash(), b.hash());
        assert_eq!(
            a.hash(),
            compute(
                "prod",
                &[pp("n", "nginx", None, json!({}))],
                Catalogue::builtin()
            )
            .hash()
        );
    }

    #[test]
    fn disabled_streams_and_inputs_grant_nothing() {
        let mut p = pp("n", "nginx", None, json!({}));
        p.inputs[0].streams[1].enabled = false;
        let perms = compute("prod", std::slice::from_ref(&p), Catalogue::builtin());
        assert_eq!(perms.0["n"].indices[0].names, ["logs-nginx.access-prod"]);
        p.inputs[0].enabled = false;
        assert!(compute("prod", &[p], Catalogue::builtin()).is_empty());
    }
}
