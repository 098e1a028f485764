//! The permissions block of a policy: which index privileges its agents'
//! output API keys carry.
//!
//! Shape (Elasticsearch role descriptors, as Kibana builds them):
//! `{"_elastic_agent_checks": {"cluster": ["monitor"]}, "<package policy id>":
//! {"indices": [{"names": [...], "privileges": [...]}], "cluster": [...]}}`.
//! It is derived from the policy's integrations and their packages
//! (`flotilla-packages`), never stored, so it cannot drift from them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub struct IndexPermission {
    pub names: Vec<String>,
    pub privileges: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoleDescriptor {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indices: Option<Vec<IndexPermission>>,
}

impl RoleDescriptor {
    pub fn indices(&self) -> &[IndexPermission] {
        self.indices.as_deref().unwrap_or_default()
    }
}

/// Privileges a data stream needs when its package does not say otherwise.
pub const DEFAULT_STREAM_PRIVILEGES: &[&str] = &["auto_configure", "create_doc"];

/// The role every agent's key carries so the agent can check its output.
pub const AGENT_CHECKS_ROLE: &str = "_elastic_agent_checks";
/// The role for the agent's own monitoring data (none: monitoring is not
/// collected by Flotilla policies).
pub const AGENT_MONITORING_ROLE: &str = "_elastic_agent_monitoring";

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

/// A part of a data stream name (a dataset or a namespace) as
/// Elasticsearch allows it in index names: non-empty, lowercase, not
/// starting with `_`, `.` or `+`, without `\ / * ? " < > | , # :`, spaces,
/// control characters or `-` (which separates the parts).
pub fn is_data_stream_part(part: &str) -> bool {
    !part.is_empty()
        && !part.starts_with(['_', '.', '+'])
        && part.bytes().all(|b| {
            b > 0x20
                && !b.is_ascii_uppercase()
                && !matches!(
                    b,
                    b'\\'
                        | b'/'
                        | b'*'
                        | b'?'
                        | b'"'
                        | b'<'
                        | b'>'
                        | b'|'
                        | b','
                        | b'#'
                        | b':'
                        | b'-'
                )
        })
}

/// Data stream name per Elastic's naming scheme: `{type}-{dataset}-{namespace}`.
pub fn data_stream_name(stream_type: &str, dataset: &str, namespace: &str) -> String {
    format!("{stream_type}-{dataset}-{namespace}")
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
        self.0.values().flat_map(|r| r.indices()).any(|p| {
            p.privileges.iter().any(|x| x == privilege || x == "all")
                && p.names.iter().any(|n| glob_match(n, index))
        })
    }
}

/// What the server may grant at most: index patterns × privileges, and
/// cluster privileges. A permissions block may only name indices (patterns
/// included) that a ceiling entry's pattern covers, with privileges that
/// entry lists, and cluster privileges the ceiling lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Ceiling {
    pub indices: Vec<IndexPermission>,
    pub cluster: Vec<String>,
}

impl Default for Ceiling {
    fn default() -> Self {
        Ceiling {
            indices: vec![IndexPermission {
                names: ["logs-*", "metrics-*", "traces-*", "synthetics-*"]
                    .map(String::from)
                    .to_vec(),
                privileges: ["auto_configure", "create_doc"].map(String::from).to_vec(),
            }],
            cluster: vec!["monitor".to_owned()],
        }
    }
}

impl Ceiling {
    /// The (index, privilege) pairs of `perms` the ceiling does not cover;
    /// empty when everything is within it.
    pub fn excess(&self, perms: &Permissions) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for role in perms.0.values() {
            for privilege in &role.cluster {
                if !self.cluster.iter().any(|c| c == privilege || c == "all") {
                    out.push(("cluster".to_owned(), privilege.clone()));
                }
            }
            for entry in role.indices() {
                for name in &entry.names {
                    for privilege in &entry.privileges {
                        let covered = self.indices.iter().any(|c| {
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
                cluster: vec![],
                indices: Some(vec![IndexPermission {
                    names: names.iter().map(|s| s.to_string()).collect(),
                    privileges: privileges.iter().map(|s| s.to_string()).collect(),
                }]),
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
