//! Keys made through Elasticsearch's security API: who is asking
//! ([`Principal`]: an API key, or an operator key), and creating, granting,
//! listing and invalidating keys — never beyond what the creator holds, nor
//! beyond the server's ceiling.

use std::collections::BTreeMap;

use chrono::Utc;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use flotilla_domain::apikey::OperatorApiKey;
use flotilla_domain::permissions::{Ceiling, Permissions, RoleDescriptor};
use flotilla_store::{ApiKeyFilter, ApiKeyRecord, KeyKind};

use super::KeyService;
use crate::secrets::hash_token;

/// Who calls the security API.
#[derive(Debug, Clone)]
pub enum Principal {
    Key(ApiKeyRecord),
    /// Operators hold every privilege the server may grant.
    Operator(OperatorApiKey),
}

impl Principal {
    /// The id keys it creates are owned by.
    pub fn id(&self) -> String {
        match self {
            Principal::Key(k) => k.id.clone(),
            Principal::Operator(o) => format!("operator:{}", o.id),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Principal::Key(k) => k.name.clone(),
            Principal::Operator(o) => o.name.clone(),
        }
    }

    /// What the principal's key grants on data (operators write no data).
    pub fn permissions(&self) -> Option<Permissions> {
        match self {
            Principal::Key(k) => KeyService::permissions(k),
            Principal::Operator(_) => None,
        }
    }

    /// Whether it holds one of these cluster privileges.
    pub fn has_cluster(&self, any_of: &[&str]) -> bool {
        match self {
            Principal::Operator(_) => true,
            Principal::Key(k) => KeyService::permissions(k).is_some_and(|p| {
                p.0.values()
                    .flat_map(|r| &r.cluster)
                    .any(|c| any_of.contains(&c.as_str()))
            }),
        }
    }

    fn manages_all_keys(&self) -> bool {
        self.has_cluster(&["manage_api_key", "manage_security", "all"])
    }

    fn manages_own_keys(&self) -> bool {
        self.has_cluster(&[
            "manage_own_api_key",
            "manage_api_key",
            "manage_security",
            "all",
        ])
    }
}

/// `POST /_security/api_key`'s body.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateKey {
    pub name: String,
    #[serde(default)]
    pub role_descriptors: Option<BTreeMap<String, RoleDescriptor>>,
    /// Elasticsearch time units: `1d`, `12h`, `30m`…
    #[serde(default)]
    pub expiration: Option<String>,
    #[serde(default)]
    pub metadata: Option<Value>,
}

#[derive(Debug, Serialize)]
pub struct CreatedKey {
    pub id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration: Option<i64>,
    pub api_key: String,
    /// `base64(id:api_key)`, for `Authorization: ApiKey …`.
    pub encoded: String,
}

#[derive(Debug)]
pub enum KeyError {
    Invalid(String),
    Forbidden(String),
    Unauthenticated(String),
    Unavailable,
}

impl From<crate::ServiceError> for KeyError {
    fn from(_: crate::ServiceError) -> Self {
        KeyError::Unavailable
    }
}

impl From<flotilla_store::StoreError> for KeyError {
    fn from(_: flotilla_store::StoreError) -> Self {
        KeyError::Unavailable
    }
}

/// A key as `GET /_security/api_key` shows it.
#[derive(Debug, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub creation: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration: Option<i64>,
    pub invalidated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalidation: Option<i64>,
    pub username: String,
    pub realm: &'static str,
    #[serde(rename = "type")]
    pub key_type: &'static str,
    pub metadata: Value,
    pub role_descriptors: Value,
}

fn info(k: &ApiKeyRecord) -> KeyInfo {
    KeyInfo {
        id: k.id.clone(),
        name: k.name.clone(),
        creation: k.created_at.timestamp_millis(),
        expiration: k.expires_at.map(|t| t.timestamp_millis()),
        invalidated: k.invalidated_at.is_some() || k.expires_at.is_some_and(|t| t <= Utc::now()),
        invalidation: k.invalidated_at.map(|t| t.timestamp_millis()),
        username: k.owner.clone().unwrap_or_default(),
        realm: "_es_api_key",
        key_type: "rest",
        metadata: k.metadata.clone(),
        role_descriptors: k.role_descriptors.clone(),
    }
}

/// The (what, privilege) pairs of `wanted` that `held` does not cover.
fn beyond(held: &Permissions, wanted: &Permissions) -> Vec<String> {
    let mut out = Vec::new();
    for role in wanted.0.values() {
        for c in &role.cluster {
            let covered = held
                .0
                .values()
                .any(|r| r.cluster.iter().any(|h| h == c || h == "all"));
            if !covered {
                out.push(format!("cluster privilege [{c}]"));
            }
        }
        for entry in role.indices() {
            for name in &entry.names {
                for p in &entry.privileges {
                    if !held.allows(name, p) {
                        out.push(format!("[{p}] on [{name}]"));
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

impl KeyService {
    /// The principal behind a credential: an operator key, else an API key.
    pub async fn principal_for(
        &self,
        credential: &str,
    ) -> Result<Option<Principal>, crate::ServiceError> {
        if let Some(op) = self
            .store
            .find_operator_key_by_hash(&hash_token(credential))
            .await?
        {
            return Ok(Some(Principal::Operator(op)));
        }
        let Some(key) = self.authenticate(credential).await?.ok() else {
            return Ok(None);
        };
        if !self.owners_valid(&key).await? {
            return Ok(None);
        }
        Ok(Some(Principal::Key(key)))
    }

    /// A key made by another key is valid only while that one is, up the
    /// chain of keys that made it (an operator's key ends the chain).
    pub(crate) async fn owners_valid(
        &self,
        key: &ApiKeyRecord,
    ) -> Result<bool, crate::ServiceError> {
        let mut owner = key.owner.clone();
        for _ in 0..16 {
            match owner {
                None => return Ok(true),
                Some(o) if o.starts_with("operator:") => return Ok(true),
                Some(o) => match self.store.get_api_key(&o).await? {
                    Some(parent)
                        if parent.invalidated_at.is_none()
                            && parent.expires_at.is_none_or(|t| t > Utc::now()) =>
                    {
                        owner = parent.owner.clone();
                    }
                    _ => return Ok(false),
                },
            }
        }
        Ok(false)
    }

    /// Create a key for `owner` — the caller itself, or (`granted`) the
    /// user a holder of `grant_api_key` asks for — holding the requested
    /// descriptors, or the owner's own when none are given; never more than
    /// the owner holds nor the ceiling allows.
    pub async fn create_user_key(
        &self,
        owner: &Principal,
        req: CreateKey,
        ceiling: &Ceiling,
        granted: bool,
    ) -> Result<CreatedKey, KeyError> {
        if !granted && !owner.manages_own_keys() {
            return Err(KeyError::Forbidden(format!(
                "action [cluster:admin/xpack/security/api_key/create] is unauthorized for API key id [{}]",
                owner.id()
            )));
        }
        let name = req.name.trim();
        if name.is_empty() || name.len() > 1024 {
            return Err(KeyError::Invalid(
                "api key name must be 1-1024 characters".into(),
            ));
        }
        let ceiling_role = || {
            Permissions(BTreeMap::from([(
                "ceiling".to_owned(),
                RoleDescriptor {
                    cluster: ceiling.cluster.clone(),
                    indices: Some(ceiling.indices.clone()),
                },
            )]))
        };
        let held = match owner {
            Principal::Key(k) => KeyService::permissions(k).unwrap_or_default(),
            Principal::Operator(_) => ceiling_role(),
        };
        let wanted = match req.role_descriptors {
            Some(r) if !r.is_empty() => Permissions(r),
            _ => held.clone(),
        };
        let over = beyond(&held, &wanted);
        if !over.is_empty() {
            return Err(KeyError::Forbidden(format!(
                "the key would hold more than [{}] holds: {}",
                owner.id(),
                over.join(", ")
            )));
        }
        let excess = ceiling.excess(&wanted);
        if !excess.is_empty() {
            let listed: Vec<String> = excess
                .iter()
                .take(10)
                .map(|(i, p)| format!("[{p}] on [{i}]"))
                .collect();
            return Err(KeyError::Forbidden(format!(
                "the key would hold privileges beyond what this server may grant: {}",
                listed.join(", ")
            )));
        }
        let expires_at = match req.expiration.as_deref() {
            None => None,
            Some(e) => {
                let d = humantime::parse_duration(e.trim()).map_err(|_| {
                    KeyError::Invalid(format!(
                        "failed to parse expiration [{e}]: use a time unit such as 1d, 12h or 30m"
                    ))
                })?;
                let d = chrono::Duration::from_std(d)
                    .map_err(|_| KeyError::Invalid(format!("expiration [{e}] is too long")))?;
                Some(Utc::now() + d)
            }
        };
        let metadata = req.metadata.unwrap_or_else(|| json!({}));
        if !metadata.is_object() {
            return Err(KeyError::Invalid("metadata must be an object".into()));
        }
        // A key never outlives the key it was made by.
        let expires_at = match owner {
            Principal::Key(k) => match (expires_at, k.expires_at) {
                (Some(e), Some(p)) => Some(e.min(p)),
                (e, p) => e.or(p),
            },
            Principal::Operator(_) => expires_at,
        };
        let mut minted = self.mint(name, KeyKind::User, None, &wanted, metadata);
        minted.record.owner = Some(owner.id());
        minted.record.expires_at = expires_at;
        self.store.insert_api_key(&minted.record).await?;
        let credential = minted.credential.expose_secret().to_owned();
        let secret = credential
            .split_once(':')
            .map(|(_, s)| s.to_owned())
            .unwrap_or_default();
        Ok(CreatedKey {
            id: minted.record.id.clone(),
            name: name.to_owned(),
            expiration: expires_at.map(|t| t.timestamp_millis()),
            api_key: secret,
            encoded: minted.encoded(),
        })
    }

    /// Keys by id or name (all of them for principals that manage keys,
    /// their own for the rest), or the principal's own with `owner`.
    pub async fn list_user_keys(
        &self,
        principal: &Principal,
        id: Option<String>,
        name: Option<String>,
        owner: bool,
        active_only: bool,
    ) -> Result<Vec<KeyInfo>, KeyError> {
        let own_only = owner || !principal.manages_all_keys();
        let filter = ApiKeyFilter {
            id,
            name: name.filter(|n| n != "*"),
            owner: own_only.then(|| principal.id()),
            invalidated: !active_only,
        };
        let keys = self.store.find_api_keys(&filter).await?;
        Ok(keys.iter().map(info).collect())
    }

    /// Invalidate keys by ids, name or owner; already invalidated ones are
    /// reported as such (not an error), as Elasticsearch does.
    pub async fn invalidate_user_keys(
        &self,
        principal: &Principal,
        ids: Vec<String>,
        name: Option<String>,
        owner: bool,
    ) -> Result<Value, KeyError> {
        if !principal.manages_own_keys() {
            return Err(KeyError::Forbidden(format!(
                "action [cluster:admin/xpack/security/api_key/invalidate] is unauthorized for API key id [{}]",
                principal.id()
            )));
        }
        let own_only = owner || !principal.manages_all_keys();
        let mut targets: Vec<ApiKeyRecord> = Vec::new();
        let scope = |f: ApiKeyFilter| ApiKeyFilter {
            owner: own_only.then(|| principal.id()),
            invalidated: true,
            ..f
        };
        for id in ids {
            targets.extend(
                self.store
                    .find_api_keys(&scope(ApiKeyFilter {
                        id: Some(id),
                        ..Default::default()
                    }))
                    .await?,
            );
        }
        if let Some(name) = name {
            targets.extend(
                self.store
                    .find_api_keys(&scope(ApiKeyFilter {
                        name: Some(name),
                        ..Default::default()
                    }))
                    .await?,
            );
        }
        if owner && targets.is_empty() {
            targets.extend(
                self.store
                    .find_api_keys(&scope(ApiKeyFilter::default()))
                    .await?,
            );
        }
        targets.sort_by(|a, b| a.id.cmp(&b.id));
        targets.dedup_by(|a, b| a.id == b.id);
        let (previously, live): (Vec<_>, Vec<_>) = targets
            .into_iter()
            .partition(|k| k.invalidated_at.is_some());
        let live_ids: Vec<String> = live.iter().map(|k| k.id.clone()).collect();
        if !live_ids.is_empty() {
            self.store
                .invalidate_api_keys(&live_ids, Utc::now())
                .await?;
        }
        Ok(json!({
            "invalidated_api_keys": live_ids,
            "previously_invalidated_api_keys": previously.iter().map(|k| k.id.clone()).collect::<Vec<_>>(),
            "error_count": 0,
        }))
    }
}
