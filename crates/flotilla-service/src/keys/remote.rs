//! Agents' keys in an existing Elasticsearch cluster: minted and
//! invalidated through its security API, with the credential configured
//! for the output. Flotilla keeps its own record of each key (id, hash,
//! role descriptors) so rotation and retirement work as for its own keys.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use flotilla_domain::permissions::Permissions;

/// A cluster agents' keys live in.
#[derive(Clone)]
pub struct RemoteCluster {
    pub output_id: String,
    pub hosts: Vec<String>,
    /// The `Authorization` header value: `ApiKey …` or `Bearer …`.
    pub credential: SecretString,
}

impl std::fmt::Debug for RemoteCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCluster")
            .field("output_id", &self.output_id)
            .field("hosts", &self.hosts)
            .field("credential", &"[redacted]")
            .finish()
    }
}

/// Why the cluster did not do what was asked; safe to log.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("the cluster at {host} is unreachable: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("the cluster at {host} refused the output's credential ({status})")]
    Refused { host: String, status: u16 },
    #[error("the cluster at {host} answered {status}: {reason}")]
    Failed {
        host: String,
        status: u16,
        reason: String,
    },
}

fn http() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("flotilla/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client")
    })
}

impl RemoteCluster {
    /// Try each host in turn; the first that answers decides.
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, RemoteError> {
        let mut last = None;
        for host in &self.hosts {
            let url = format!("{}{path}", host.trim_end_matches('/'));
            let sent = http()
                .request(method.clone(), &url)
                .header("authorization", self.credential.expose_secret())
                .json(&body)
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    last = Some(RemoteError::Unreachable {
                        host: host.clone(),
                        reason: e.without_url().to_string(),
                    });
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let value: Value = resp.json().await.unwrap_or(Value::Null);
            return match status {
                200..=299 => Ok(value),
                401 | 403 => Err(RemoteError::Refused {
                    host: host.clone(),
                    status,
                }),
                _ => Err(RemoteError::Failed {
                    host: host.clone(),
                    status,
                    reason: value
                        .pointer("/error/reason")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given")
                        .chars()
                        .take(300)
                        .collect(),
                }),
            };
        }
        Err(last.unwrap_or(RemoteError::Unreachable {
            host: String::new(),
            reason: "the output lists no hosts".into(),
        }))
    }

    /// Mint a key there: `(id, secret)`.
    pub async fn create_key(
        &self,
        name: &str,
        roles: &Permissions,
        metadata: Value,
    ) -> Result<(String, String), RemoteError> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/_security/api_key",
                json!({"name": name, "role_descriptors": roles, "metadata": metadata}),
            )
            .await?;
        self.created_key(&v)
    }

    /// Grant a key there on behalf of the user who authenticates with
    /// `access_token` (sent for this call only): `(id, secret)`.
    pub async fn grant_key(
        &self,
        access_token: &str,
        name: &str,
        metadata: Value,
    ) -> Result<(String, String), RemoteError> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/_security/api_key/grant",
                json!({
                    "grant_type": "access_token",
                    "access_token": access_token,
                    "api_key": {"name": name, "metadata": metadata},
                }),
            )
            .await?;
        self.created_key(&v)
    }

    /// `(id, secret)` from a create or grant answer.
    fn created_key(&self, v: &Value) -> Result<(String, String), RemoteError> {
        match (
            v.get("id").and_then(Value::as_str),
            v.get("api_key").and_then(Value::as_str),
        ) {
            (Some(id), Some(secret)) if !id.contains(':') && !secret.is_empty() => {
                Ok((id.to_owned(), secret.to_owned()))
            }
            _ => Err(RemoteError::Failed {
                host: self.hosts.first().cloned().unwrap_or_default(),
                status: 200,
                reason: "the answer has no id and api_key".into(),
            }),
        }
    }

    /// Invalidate keys there: the ids the cluster confirmed (invalidated
    /// now or before); the others are to be tried again.
    pub async fn invalidate(&self, ids: &[String]) -> Result<Vec<String>, RemoteError> {
        let v = self
            .call(
                reqwest::Method::DELETE,
                "/_security/api_key",
                json!({ "ids": ids }),
            )
            .await?;
        let listed = |k: &str| -> Vec<String> {
            v.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut done = listed("invalidated_api_keys");
        done.extend(listed("previously_invalidated_api_keys"));
        // No errors and nothing listed: the cluster knew none of them, so
        // nothing is left to invalidate there.
        if done.is_empty() && v.get("error_count").and_then(Value::as_u64).unwrap_or(0) == 0 {
            return Ok(ids.to_vec());
        }
        Ok(done)
    }
}

/// Where an output's agents' keys are minted: Flotilla's own key service,
/// or the output's cluster. Callers mint through this and never ask which.
pub enum OutputKeyBackend<'a> {
    Local(&'a super::KeyService),
    Remote(&'a RemoteCluster),
}

impl<'a> OutputKeyBackend<'a> {
    /// The backend an output's keys use: its cluster when it has one.
    pub fn for_output(keys: &'a super::KeyService, cluster: Option<&'a RemoteCluster>) -> Self {
        match cluster {
            Some(c) => OutputKeyBackend::Remote(c),
            None => OutputKeyBackend::Local(keys),
        }
    }

    /// A new output key for `agent_id`: its record (to store) and its plain
    /// `id:secret`.
    pub async fn mint(
        &self,
        name: &str,
        agent_id: &str,
        roles: &Permissions,
        metadata: Value,
    ) -> Result<(flotilla_store::ApiKeyRecord, String), RemoteError> {
        match self {
            OutputKeyBackend::Local(keys) => {
                let minted = keys.mint(
                    name,
                    flotilla_store::KeyKind::Output,
                    Some(agent_id),
                    roles,
                    metadata,
                );
                let plain = minted.credential.expose_secret().to_owned();
                Ok((minted.record, plain))
            }
            OutputKeyBackend::Remote(cluster) => {
                let (id, secret) = cluster.create_key(name, roles, metadata.clone()).await?;
                let record = flotilla_store::ApiKeyRecord {
                    id: id.clone(),
                    name: name.to_owned(),
                    kind: flotilla_store::KeyKind::Output,
                    agent_id: Some(agent_id.to_owned()),
                    secret_hash: crate::secrets::hash_token(&secret),
                    role_descriptors: serde_json::to_value(roles).expect("permissions serialise"),
                    metadata,
                    created_at: chrono::Utc::now(),
                    retire_pending: false,
                    invalidated_at: None,
                    owner: None,
                    expires_at: None,
                    remote_output: Some(cluster.output_id.clone()),
                };
                Ok((record, format!("{id}:{secret}")))
            }
        }
    }

    /// Drop a key minted but not used (another check-in rotated first).
    pub async fn discard(&self, key_id: &str) {
        if let OutputKeyBackend::Remote(cluster) = self {
            if let Err(e) = cluster.invalidate(&[key_id.to_owned()]).await.map(|_| ()) {
                tracing::warn!(error = %e, "could not invalidate an unused key in the output's cluster");
            }
        }
    }
}
