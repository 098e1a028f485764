//! `_has_privileges`: what a key's role descriptors grant, answered in
//! Elasticsearch's shape: index and cluster privileges as the key's role
//! descriptors grant them; application privileges are never granted.

use serde::Deserialize;
use serde_json::{json, Value};

use flotilla_store::ApiKeyRecord;

use super::KeyService;

/// The most (name, privilege) checks one request may ask for; its answer
/// grows with them.
pub const MAX_PRIVILEGE_CHECKS: usize = 10_000;

/// A `_has_privileges` request body.
#[derive(Deserialize, Default)]
pub struct HasPrivilegesRequest {
    #[serde(default)]
    cluster: Vec<String>,
    #[serde(default)]
    index: Vec<IndexCheck>,
    #[serde(default)]
    application: Vec<ApplicationCheck>,
}

#[derive(Deserialize)]
struct IndexCheck {
    #[serde(default, deserialize_with = "one_or_many")]
    names: Vec<String>,
    #[serde(default)]
    privileges: Vec<String>,
    #[serde(default, rename = "allow_restricted_indices")]
    _allow_restricted_indices: Option<bool>,
}

#[derive(Deserialize)]
struct ApplicationCheck {
    application: String,
    #[serde(default)]
    privileges: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
}

/// Elasticsearch accepts `"names": "x"` as well as a list.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Elasticsearch's longest index name, in bytes; names and privileges
/// longer than this are refused, so a check's cost is bounded too.
pub const MAX_NAME_BYTES: usize = 255;

/// A request beyond what one `_has_privileges` may ask.
#[derive(Debug, thiserror::Error)]
pub enum TooManyChecks {
    #[error(
        "the request asks for {0} privilege checks; at most {MAX_PRIVILEGE_CHECKS} are allowed"
    )]
    Checks(usize),
    #[error("an index name or privilege is longer than {MAX_NAME_BYTES} bytes")]
    NameTooLong,
}

impl HasPrivilegesRequest {
    /// How many checks it asks for (saturating).
    pub fn checks(&self) -> usize {
        let index = self.index.iter().fold(0usize, |n, e| {
            n.saturating_add(e.names.len().saturating_mul(e.privileges.len()))
        });
        let app = self.application.iter().fold(0usize, |n, e| {
            n.saturating_add(e.privileges.len().saturating_mul(e.resources.len().max(1)))
        });
        index.saturating_add(app).saturating_add(self.cluster.len())
    }
}

impl KeyService {
    /// The answer to `request` for `key`: its descriptors parsed once, the
    /// checks capped.
    pub fn has_privileges_report(
        key: &ApiKeyRecord,
        request: &HasPrivilegesRequest,
    ) -> Result<Value, TooManyChecks> {
        let asked_for = request.checks();
        if asked_for > MAX_PRIVILEGE_CHECKS {
            return Err(TooManyChecks::Checks(asked_for));
        }
        let too_long = |v: &[String]| v.iter().any(|n| n.len() > MAX_NAME_BYTES);
        if request
            .index
            .iter()
            .any(|e| too_long(&e.names) || too_long(&e.privileges))
        {
            return Err(TooManyChecks::NameTooLong);
        }
        let granted = Self::permissions(key);
        let mut asked = false;
        let mut all = true;
        let mut cluster = serde_json::Map::new();
        for p in &request.cluster {
            asked = true;
            let held = granted.as_ref().is_some_and(|g| {
                g.0.values()
                    .flat_map(|r| &r.cluster)
                    .any(|c| c == p || c == "all")
            });
            all &= held;
            cluster.insert(p.clone(), Value::Bool(held));
        }
        let mut application = serde_json::Map::new();
        for entry in &request.application {
            if entry.privileges.is_empty() {
                continue;
            }
            asked = true;
            all = false;
            let resources = application
                .entry(entry.application.clone())
                .or_insert_with(|| json!({}));
            for r in &entry.resources {
                let slot = &mut resources[r.as_str()];
                if !slot.is_object() {
                    *slot = json!({});
                }
                for p in &entry.privileges {
                    slot[p.as_str()] = Value::Bool(false);
                }
            }
        }
        let mut index = serde_json::Map::new();
        for entry in &request.index {
            for name in &entry.names {
                let slot = index.entry(name.clone()).or_insert_with(|| json!({}));
                for p in &entry.privileges {
                    asked = true;
                    let ok = granted.as_ref().is_some_and(|g| g.allows(name, p));
                    all &= ok;
                    slot[p.as_str()] = Value::Bool(ok);
                }
            }
        }
        Ok(json!({
            "username": key.name,
            "has_all_requested": all && asked,
            "cluster": cluster,
            "index": index,
            "application": application,
        }))
    }
}
