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

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

impl Permissions {
    /// Whether any role grants `privilege` on `index` (patterns may use `*`).
    pub fn allows(&self, index: &str, privilege: &str) -> bool {
        self.0.values().flat_map(|r| &r.indices).any(|p| {
            p.privileges.iter().any(|x| x == privilege || x == "all")
                && p.names.iter().any(|n| glob_match(n, index))
        })
    }
}

/// What the server may grant at most: index patterns × privileges. A
/// permissions block may only name indices (patterns included) that a
/// ceiling entry's pattern covers, with privileges that entry lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Ceiling(pub Vec<IndexPermission>);

impl Default for Ceiling {
    fn default() -> Self {
        Ceiling(vec![IndexPermission {
            names: ["logs-*", "metrics-*", "traces-*", "synthetics-*"]
                .map(String::from)
                .to_vec(),
            privileges: ["auto_configure", "create_doc"].map(String::from).to_vec(),
        }])
    }
}

impl Ceiling {
    /// The (index, privilege) pairs of `perms` the ceiling does not cover;
    /// empty when everything is within it.
    pub fn excess(&self, perms: &Permissions) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for role in perms.0.values() {
            for entry in &role.indices {
                for name in &entry.names {
                    for privilege in &entry.privileges {
                        let covered = self.0.iter().any(|c| {
                            c.privileges.iter().any(|p| p == privilege || p == "all")
                                && c.names.iter().any(|pattern| glob_match(pattern, name))
                        });
                        if !covered {
                            out.push((name.clone(), privilege.clone()));
                        }
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod ceiling_tests {
    use super::*;

    fn perms(names: &[&str], privileges: &[&str]) -> Permissions {
        Permissions(BTreeMap::from([(
            "i".to_string(),
            RoleDescriptor {
                indices: vec![IndexPermission {
                    names: names.iter().map(|s| s.to_string()).collect(),
                    privileges: privileges.iter().map(|s| s.to_string()).collect(),
                }],
            },
        )]))
    }

    #[test]
    fn globs() {
        assert!(glob_match("logs-*", "logs-nginx.access-prod"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("logs-*", "metrics-x"));
        assert!(!glob_match("logs", "logs-x"));
    }

    #[test]
    fn ceiling_names_the_excess() {
        let c = Ceiling::default();
        assert!(c
            .excess(&perms(&["logs-nginx.access-prod"], &["create_doc"]))
            .is_empty());
        assert_eq!(
            c.excess(&perms(&["logs-a-b", "secret-x"], &["create_doc", "read"])),
            vec![
                ("logs-a-b".into(), "read".into()),
                ("secret-x".into(), "create_doc".into()),
                ("secret-x".into(), "read".into())
            ]
        );
    }

    #[test]
    fn allows_checks_patterns_and_privileges() {
        let p = perms(&["logs-nginx*-prod"], &["create_doc"]);
        assert!(p.allows("logs-nginx.access-prod", "create_doc"));
        assert!(!p.allows("logs-nginx.access-prod", "read"));
        assert!(!p.allows("logs-other-prod", "create_doc"));
    }
}
