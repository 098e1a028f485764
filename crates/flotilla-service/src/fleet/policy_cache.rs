//! Each policy revision serialised once, shared by every agent on it.

use super::Fleet;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// One serialised policy revision, shared by every agent on it.
pub struct CachedPolicy {
    pub policy_id: String,
    pub revision: i64,
    pub updated_at: DateTime<Utc>,
    pub output_id: String,
    pub permissions: flotilla_domain::permissions::Permissions,
    /// Digest of the output and its role descriptors: a key minted for a
    /// different digest must be replaced.
    pub permissions_hash: String,
    /// Only Elasticsearch outputs take API keys; others get none.
    pub takes_api_key: bool,
    pub document: Value,
}

#[derive(Default)]
pub struct PolicyCache {
    inner: Mutex<HashMap<String, Arc<CachedPolicy>>>,
    /// Held while a revision is built, so a thousand agents woken by the
    /// same change build it once, not a thousand times.
    building: tokio::sync::Mutex<()>,
}

impl PolicyCache {
    /// Drop a deleted policy's entry.
    pub(super) fn forget(&self, policy_id: &str) {
        self.inner.lock().expect("cache lock").remove(policy_id);
    }

    pub(super) fn get(&self, policy_id: &str, revision: i64) -> Option<Arc<CachedPolicy>> {
        let cache = self.inner.lock().expect("cache lock");
        cache
            .get(policy_id)
            .filter(|c| c.revision == revision)
            .cloned()
    }
}
/// Put each `$co.elastic.secret{id}` reference's value in its place, in
/// one pass per string (a value is never searched for references).
fn substitute(v: &mut Value, values: &HashMap<String, String>) {
    match v {
        Value::String(s) if s.contains("$co.elastic.secret{") => {
            *s = flotilla_packages::render::replace_secret_refs(s, |id| values.get(id).cloned());
        }
        Value::Array(a) => a.iter_mut().for_each(|x| substitute(x, values)),
        Value::Object(m) => m.values_mut().for_each(|x| substitute(x, values)),
        _ => {}
    }
}

impl Fleet<'_> {
    /// The document an agent receives: the full policy with its secrets'
    /// values in place of their references (as fleet-server does; the
    /// management API only ever shows references). `None` when a secret it
    /// references is gone (changed since the policy was read): build again.
    async fn with_secrets(
        &self,
        policy_id: &str,
        full: &flotilla_domain::full_policy::FullAgentPolicy,
    ) -> std::result::Result<Option<Value>, crate::ServiceError> {
        let mut document = serde_json::to_value(full).expect("policies serialise");
        if full.secret_references.is_empty() {
            return Ok(Some(document));
        }
        let mut values = HashMap::new();
        for secret in self.store.policy_secrets(policy_id).await? {
            let aad = crate::management::secret_aad(&secret.package_policy_id, &secret.id);
            match self.sealer.open(&secret.sealed, &aad) {
                Ok(plain) => {
                    values.insert(secret.id, String::from_utf8_lossy(&plain).into_owned());
                }
                Err(_) => tracing::error!(
                    secret_id = %secret.id,
                    "a stored secret does not open with this server's key; the agent gets its reference"
                ),
            }
        }
        if full
            .secret_references
            .iter()
            .any(|r| !values.contains_key(&r.id))
        {
            return Ok(None);
        }
        substitute(&mut document, &values);
        Ok(Some(document))
    }

    /// The policy, serialised once per revision.
    pub async fn cached_policy(
        &self,
        policy_id: &str,
    ) -> std::result::Result<Arc<CachedPolicy>, crate::ServiceError> {
        let current = match self.store.get_policy(policy_id).await {
            Ok(p) => p,
            Err(e) => {
                if matches!(e, flotilla_store::StoreError::NotFound { .. }) {
                    self.policy_cache.forget(policy_id);
                }
                return Err(e.into());
            }
        };
        if let Some(hit) = self.policy_cache.get(policy_id, current.revision) {
            return Ok(hit);
        }
        let _building = self.policy_cache.building.lock().await;
        // Someone else may have built it while we waited.
        if let Some(hit) = self.policy_cache.get(policy_id, current.revision) {
            return Ok(hit);
        }
        // Secrets are read apart from the policy: if one it references
        // changed in between, read both again.
        let mut attempt = 0;
        let (full, document) = loop {
            let full = self.full_policy(policy_id).await?;
            if let Some(document) = self.with_secrets(policy_id, &full).await? {
                break (full, document);
            }
            attempt += 1;
            if attempt == 5 {
                return Err(crate::ServiceError::Unavailable(
                    "the policy's secrets are changing; retry shortly".into(),
                ));
            }
        };
        metrics::counter!("flotilla_policy_builds_total").increment(1);
        let (output_id, permissions) = full
            .output_permissions
            .iter()
            .next()
            .map(|(k, v)| (k.clone(), v.clone()))
            .unwrap_or_default();
        let permissions_hash = hex::encode(Sha256::digest(format!(
            "{output_id}\n{}",
            serde_json::to_string(&permissions).expect("permissions serialise")
        )));
        let takes_api_key = full.outputs.get(&output_id).is_some_and(|o| {
            o.output_type == flotilla_domain::output::OutputType::Elasticsearch.as_str()
        });
        let cached = Arc::new(CachedPolicy {
            takes_api_key,
            policy_id: policy_id.to_owned(),
            revision: full.revision,
            updated_at: current.updated_at,
            output_id,
            permissions,
            permissions_hash,
            document,
        });
        let mut cache = self.policy_cache.inner.lock().expect("cache lock");
        let keep = cache
            .get(policy_id)
            .is_none_or(|c| c.revision <= cached.revision);
        if keep {
            cache.insert(policy_id.to_owned(), cached.clone());
        }
        Ok(cached)
    }
}
