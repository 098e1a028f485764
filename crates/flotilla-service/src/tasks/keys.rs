//! API keys for user-scoped tasks: granted when an operator schedules one,
//! sealed on the task (AES-256-GCM, the task id and key id as associated
//! data), opened for a run, queued for invalidation when the task goes.
//!
//! Two providers issue keys: the **primary** is this server's own key
//! service; the **secondary** an Elasticsearch-compatible security API over
//! HTTP (a real cluster, or another Flotilla server). Granting and using
//! are independent settings: `grant_secondary` adds a secondary key to
//! every grant; `use_key` picks which a run uses, falling back to the other
//! when a task has only that one (tasks scheduled before the secondary
//! provider was enabled have only a primary key).

use async_trait::async_trait;
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use flotilla_store::{KeyProvider, UserScope};

use super::TaskUser;
use crate::keys::remote::{RemoteCluster, RemoteError};
use crate::keys::{CreateKey, KeyError, Principal};
use crate::{ServiceError, Services};

/// A run's session with the secondary provider: requests carry the task's
/// key; the key is not readable from here.
#[derive(Clone)]
pub struct RemoteSession {
    cluster: RemoteCluster,
}

impl RemoteSession {
    /// A request to the provider as the task's user.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, RemoteError> {
        self.cluster.call(method, path, body).await
    }
}

/// Where the secondary keys come from.
#[derive(Clone)]
pub struct SecondaryProvider {
    pub hosts: Vec<String>,
    /// `ApiKey …`: a key that may grant keys there.
    pub credential: SecretString,
}

impl std::fmt::Debug for SecondaryProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecondaryProvider")
            .field("hosts", &self.hosts)
            .field("credential", &"[redacted]")
            .finish()
    }
}

impl SecondaryProvider {
    fn cluster(&self) -> RemoteCluster {
        RemoteCluster {
            output_id: "task_manager.secondary".into(),
            hosts: self.hosts.clone(),
            credential: self.credential.clone(),
        }
    }
}

/// The keys granted for one task.
#[derive(Debug, Default, Clone)]
pub struct GrantedKeys {
    pub primary: Option<(String, SecretString)>,
    pub secondary: Option<(String, SecretString)>,
}

/// How keys are granted, which one a run uses, and how they are
/// invalidated.
#[async_trait]
pub trait ApiKeyStrategy: Send + Sync {
    /// Grant the task's keys on the user's behalf (`credential` is what
    /// the user authenticated with; it is used for this call only).
    async fn grant(
        &self,
        services: &Services,
        task_type: &str,
        task_id: &str,
        user: &Principal,
        credential: &SecretString,
    ) -> Result<GrantedKeys, ServiceError>;

    /// Which stored key a run uses: the configured type, else the other.
    fn key_for_run(&self, scope: &UserScope) -> Option<(KeyProvider, String, String)>;

    /// Invalidate keys with their provider: the ids it confirmed (now or
    /// before, or unknown to it). `Err` keeps them all queued.
    async fn invalidate(
        &self,
        services: &Services,
        provider: KeyProvider,
        ids: &[String],
    ) -> Result<Vec<String>, String>;

    /// The run's identity behind an opened key.
    async fn user_for_run(
        &self,
        services: &Services,
        provider: KeyProvider,
        key_id: &str,
        credential: SecretString,
        user_name: &str,
    ) -> Result<TaskUser, super::TaskError>;

    /// Whether secondary keys are granted.
    fn grants_secondary(&self) -> bool;
}

/// The strategy the settings describe.
pub struct KeyStrategy {
    pub grant_secondary: bool,
    pub use_key: KeyProvider,
    pub secondary: Option<SecondaryProvider>,
}

/// Associated data a task's sealed key is bound to.
pub fn key_aad(task_id: &str, key_id: &str) -> String {
    format!("task:{task_id}:{key_id}")
}

#[async_trait]
impl ApiKeyStrategy for KeyStrategy {
    async fn grant(
        &self,
        services: &Services,
        task_type: &str,
        task_id: &str,
        user: &Principal,
        credential: &SecretString,
    ) -> Result<GrantedKeys, ServiceError> {
        let name = format!("TaskManager: {task_type} - {}", user.name());
        let metadata = json!({"managed": true, "task_id": task_id, "task_type": task_type});
        let created = services
            .keys()
            .create_user_key(
                user,
                CreateKey {
                    name: name.clone(),
                    role_descriptors: None,
                    expiration: None,
                    metadata: Some(metadata.clone()),
                },
                &services.settings.ceiling,
                true,
            )
            .await
            .map_err(|e| match e {
                KeyError::Forbidden(m) | KeyError::Invalid(m) | KeyError::Unauthenticated(m) => {
                    ServiceError::Unauthorized(m)
                }
                KeyError::Unavailable => {
                    ServiceError::Unavailable("could not grant the task's API key".into())
                }
            })?;
        let mut keys = GrantedKeys {
            primary: Some((
                created.id.clone(),
                SecretString::from(format!("{}:{}", created.id, created.api_key)),
            )),
            secondary: None,
        };
        if self.grant_secondary {
            match &self.secondary {
                None => tracing::warn!(
                    "task_manager.grant_secondary_api_keys is on but no secondary provider is configured"
                ),
                Some(p) => match p
                    .cluster()
                    .grant_key(credential.expose_secret(), &name, metadata)
                    .await
                {
                    Ok((id, secret)) => {
                        keys.secondary =
                            Some((id.clone(), SecretString::from(format!("{id}:{secret}"))))
                    }
                    // As Kibana does: a secondary failure does not stop the
                    // task; its runs use the primary key.
                    Err(e) => {
                        tracing::warn!(error = %e, task = task_id, "could not grant the secondary API key")
                    }
                },
            }
        }
        Ok(keys)
    }

    fn key_for_run(&self, scope: &UserScope) -> Option<(KeyProvider, String, String)> {
        let primary = scope
            .api_key_id
            .clone()
            .zip(scope.api_key_sealed.clone())
            .map(|(id, k)| (KeyProvider::Primary, id, k));
        let secondary = scope
            .secondary_api_key_id
            .clone()
            .zip(scope.secondary_api_key_sealed.clone())
            .map(|(id, k)| (KeyProvider::Secondary, id, k));
        match self.use_key {
            KeyProvider::Primary => primary.or(secondary),
            KeyProvider::Secondary => secondary.or_else(|| {
                if primary.is_some() {
                    metrics::counter!("flotilla_task_key_fallbacks_total").increment(1);
                }
                primary
            }),
        }
    }

    async fn invalidate(
        &self,
        services: &Services,
        provider: KeyProvider,
        ids: &[String],
    ) -> Result<Vec<String>, String> {
        match provider {
            KeyProvider::Primary => {
                services
                    .store
                    .invalidate_api_keys(ids, chrono::Utc::now())
                    .await
                    .map_err(|e| e.to_string())?;
                // Invalidated now, before, or never known: all done.
                Ok(ids.to_vec())
            }
            KeyProvider::Secondary => match &self.secondary {
                None => Err("no secondary provider is configured".into()),
                Some(p) => p.cluster().invalidate(ids).await.map_err(|e| e.to_string()),
            },
        }
    }

    async fn user_for_run(
        &self,
        services: &Services,
        provider: KeyProvider,
        key_id: &str,
        credential: SecretString,
        user_name: &str,
    ) -> Result<TaskUser, super::TaskError> {
        match provider {
            KeyProvider::Primary => {
                match services
                    .keys()
                    .principal_for(credential.expose_secret())
                    .await
                {
                    Ok(Some(principal)) => Ok(TaskUser::Local {
                        principal,
                        key_id: key_id.to_owned(),
                        user_name: user_name.to_owned(),
                    }),
                    Ok(None) => Err(super::TaskError::Unrecoverable(format!(
                        "the task's API key [{key_id}] is no longer valid"
                    ))),
                    // Storage was busy or down: worth another attempt.
                    Err(e) => Err(super::TaskError::Retry(e.to_string())),
                }
            }
            KeyProvider::Secondary => {
                let Some(p) = &self.secondary else {
                    return Err(super::TaskError::Unrecoverable(
                        "the task's key is a secondary key and no secondary provider is configured"
                            .into(),
                    ));
                };
                let encoded = base64::engine::general_purpose::STANDARD
                    .encode(credential.expose_secret().as_bytes());
                Ok(TaskUser::Remote {
                    session: RemoteSession {
                        cluster: RemoteCluster {
                            output_id: "task_manager.secondary".into(),
                            hosts: p.hosts.clone(),
                            credential: SecretString::from(format!("ApiKey {encoded}")),
                        },
                    },
                    key_id: key_id.to_owned(),
                    user_name: user_name.to_owned(),
                })
            }
        }
    }

    fn grants_secondary(&self) -> bool {
        self.grant_secondary && self.secondary.is_some()
    }
}
