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
    /// The output's cluster, when agents' keys are minted there.
    pub remote: Option<crate::keys::remote::RemoteCluster>,
    pub document: Value,
    /// The revision's POLICY_CHANGE, serialised once for every agent.
    pub change: Arc<super::PolicyChangeTemplate>,
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
    /// The cluster an output mints agents' keys in, if it has a credential.
    pub(crate) async fn remote_cluster(
        &self,
        output_id: &str,
        hosts: Vec<String>,
    ) -> std::result::Result<Option<crate::keys::remote::RemoteCluster>, crate::ServiceError> {
        let Some(sealed) = self.store.output_key_credential(output_id).await? else {
            return Ok(None);
        };
        let plain = self
            .sealer
            .open(
                &sealed,
                &crate::management::output_credential_aad(output_id),
            )
            .map_err(|_| {
                tracing::error!(
                    output_id,
                    "the output's cluster credential does not open with this server's key"
                );
                crate::ServiceError::Internal(
                    "the output's cluster credential cannot be read".into(),
                )
            })?;
        Ok(Some(crate::keys::remote::RemoteCluster {
            output_id: output_id.to_owned(),
            hosts,
            credential: secrecy::SecretString::from(String::from_utf8_lossy(&plain).into_owned()),
        }))
    }

    /// Invalidate in their clusters the keys invalidated here (after an
    /// ack, a rotation or an unenrolment); what fails is tried again next
    /// time. How many the clusters confirmed.
    pub async fn invalidate_remote_keys(&self) -> std::result::Result<usize, crate::ServiceError> {
        let pending = self.store.remote_keys_to_invalidate(500).await?;
        let mut by_output: HashMap<String, Vec<String>> = HashMap::new();
        for (id, output) in pending {
            by_output.entry(output).or_default().push(id);
        }
        let mut done = 0;
        for (output_id, ids) in by_output {
            let hosts = match self.store.get_output(&output_id).await {
                Ok(o) => o.hosts,
                Err(flotilla_store::StoreError::NotFound { .. }) => {
                    tracing::warn!(output_id, keys = ids.len(), "the output is gone: its keys in the cluster cannot be invalidated from here; invalidate them there");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let Some(cluster) = self.remote_cluster(&output_id, hosts).await? else {
                tracing::warn!(output_id, keys = ids.len(), "the output has no cluster credential any more: its keys there stay valid until it has one again");
                continue;
            };
            match cluster.invalidate(&ids).await {
                Ok(confirmed) => {
                    let confirmed: Vec<String> =
                        confirmed.into_iter().filter(|c| ids.contains(c)).collect();
                    self.store
                        .mark_remote_invalidated(&confirmed, chrono::Utc::now())
                        .await?;
                    done += confirmed.len();
                    tracing::info!(
                        output_id,
                        keys = confirmed.len(),
                        "keys invalidated in the output's cluster"
                    );
                }
                Err(e) => {
                    metrics::counter!("flotilla_remote_key_errors_total").increment(1);
                    tracing::warn!(output_id, error = %e, keys = ids.len(), "could not invalidate keys in the output's cluster; will retry");
                }
            }
        }
        Ok(done)
    }

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

    pub(super) fn forget_policy(&self, policy_id: &str) {
        self.policy_cache.forget(policy_id);
    }

    /// The policy at `revision` (just read by the caller) when it is
    /// cached; otherwise as [`Fleet::cached_policy`] reads it.
    pub(super) async fn cached_policy_at(
        &self,
        policy_id: &str,
        revision: i64,
    ) -> std::result::Result<Arc<CachedPolicy>, crate::ServiceError> {
        match self.policy_cache.get(policy_id, revision) {
            Some(hit) => Ok(hit),
            None => self.cached_policy(policy_id).await,
        }
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
        let takes_api_key = full.outputs.get(&output_id).is_some_and(|o| {
            o.output_type == flotilla_domain::output::OutputType::Elasticsearch.as_str()
        });
        let remote = if takes_api_key {
            self.remote_cluster(
                &output_id,
                full.outputs
                    .get(&output_id)
                    .map(|o| o.hosts.clone())
                    .unwrap_or_default(),
            )
            .await?
        } else {
            None
        };
        // Keys from another backend do not fit: moving an output to (or off)
        // a cluster rotates every agent's key.
        let permissions_hash = hex::encode(Sha256::digest(format!(
            "{output_id}\n{}\n{}",
            match &remote {
                None => "local".to_owned(),
                Some(c) => format!(
                    "remote {} {}",
                    c.hosts.join(","),
                    hex::encode(Sha256::digest(
                        secrecy::ExposeSecret::expose_secret(&c.credential).as_bytes()
                    ))
                ),
            },
            serde_json::to_string(&permissions).expect("permissions serialise")
        )));
        let action = super::output_keys::policy_change_action(
            policy_id,
            full.revision,
            current.updated_at,
            "",
            document.clone(),
        );
        let key_at = takes_api_key.then(|| {
            format!(
                "/data/policy/outputs/{}",
                super::output_keys::escape_pointer(&output_id)
            )
        });
        let change = super::PolicyChangeTemplate::new(action, key_at.as_deref())
            .map(Arc::new)
            .ok_or_else(|| {
                crate::ServiceError::Internal(
                    "the policy could not be serialised for agents".into(),
                )
            })?;
        let cached = Arc::new(CachedPolicy {
            change,
            takes_api_key,
            remote,
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
