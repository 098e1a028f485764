//! The fleet protocol's use cases: enrolment, long-poll check-in, acks,
//! audit/unenroll — and the per-agent output keys they hand out.
//!
//! Errors carry a [`FleetErrorKind`], which the HTTP layer renders with the
//! reference implementation's `error` tokens.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast::error::RecvError;

use flotilla_domain::action::{Action, ActionType};
use flotilla_domain::agent::validate_tags;
use flotilla_domain::validate_id;
use flotilla_store::{
    ActionAck, CheckinRecord, Entity, FleetAgent, KeyKind, NewAgent, OutputKeyChange, StoreError,
};

use crate::keys::{KeyRejection, KeyService};
use crate::secrets::{ct_eq, hash_token};
use crate::settings::StaticMatch;
use crate::Services;

/// What went wrong, in the protocol's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetErrorKind {
    BadRequest,
    InvalidUserAgent,
    UnsupportedVersion,
    MalformedHeader,
    MalformedToken,
    NoAuthHeader,
    InvalidToken,
    Unauthorized,
    KeyNotEnabled,
    AgentInactive,
    AgentIdentity,
    AgentNotReplaceable,
    AddressRefused,
    AgentNotFound,
    PolicyNotFound,
    AuditReasonConflict,
    MaxLimit,
    EnrollDuplicate,
    PayloadTooLarge,
    Unavailable,
    Internal,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct FleetError {
    pub kind: FleetErrorKind,
    pub message: String,
}

impl FleetError {
    pub fn new(kind: FleetErrorKind, message: impl Into<String>) -> Self {
        FleetError {
            kind,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(FleetErrorKind::BadRequest, message)
    }
}

impl From<StoreError> for FleetError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Busy => FleetError::new(FleetErrorKind::Unavailable, "storage busy; retry"),
            StoreError::NotFound {
                entity: Entity::Agent,
                id,
            } => FleetError::new(
                FleetErrorKind::AgentNotFound,
                format!("agent '{id}' not found"),
            ),
            StoreError::NotFound {
                entity: Entity::AgentPolicy,
                id,
            } => FleetError::new(
                FleetErrorKind::PolicyNotFound,
                format!("agent policy '{id}' not found"),
            ),
            e @ StoreError::NotFound { .. } => {
                tracing::error!(error = %e, "a record the fleet API needs is missing");
                FleetError::new(FleetErrorKind::Internal, "internal error")
            }
            StoreError::Conflict(msg) => FleetError::bad(msg),
            StoreError::Other(e) => {
                tracing::error!(error = %e, "storage failure in the fleet API");
                FleetError::new(FleetErrorKind::Internal, "internal error")
            }
        }
    }
}

impl From<crate::ServiceError> for FleetError {
    fn from(e: crate::ServiceError) -> Self {
        match e {
            crate::ServiceError::Unavailable(m) => FleetError::new(FleetErrorKind::Unavailable, m),
            crate::ServiceError::NotFound(m) => FleetError::new(FleetErrorKind::AgentNotFound, m),
            other => {
                tracing::error!(error = %other, "service failure in the fleet API");
                FleetError::new(FleetErrorKind::Internal, "internal error")
            }
        }
    }
}

type Result<T> = std::result::Result<T, FleetError>;

// --- wire types ----------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub struct EnrollMetadata {
    #[serde(default)]
    pub local: Value,
    #[serde(default)]
    pub user_provided: Value,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct EnrollRequest {
    #[serde(rename = "type")]
    pub enroll_type: String,
    pub metadata: EnrollMetadata,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub replace_token: Option<String>,
    #[serde(default)]
    pub enrollment_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct EnrollItem {
    pub id: String,
    pub active: bool,
    pub policy_id: String,
    #[serde(rename = "type")]
    pub enroll_type: String,
    pub enrolled_at: DateTime<Utc>,
    pub user_provided_metadata: Value,
    pub local_metadata: Value,
    pub access_api_key_id: String,
    pub access_api_key: String,
    pub status: String,
    pub tags: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct EnrollResponse {
    pub action: &'static str,
    pub item: EnrollItem,
}

#[derive(Debug, Deserialize)]
pub struct CheckinRequest {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub ack_token: Option<String>,
    #[serde(default)]
    pub local_metadata: Option<Value>,
    #[serde(default)]
    pub components: Option<Value>,
    #[serde(default)]
    pub poll_timeout: Option<String>,
    #[serde(default)]
    pub agent_policy_id: Option<String>,
    #[serde(default)]
    pub policy_revision_idx: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct CheckinResponse {
    pub action: &'static str,
    pub ack_token: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Value>,
}

#[derive(Debug, Deserialize)]
pub struct AckEvent {
    #[serde(default)]
    pub agent_id: String,
    #[serde(default)]
    pub action_id: String,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct AckRequest {
    pub events: Vec<Value>,
}

#[derive(Debug, Serialize)]
pub struct AckItem {
    pub status: u16,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct AckResponse {
    pub action: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub errors: bool,
    pub items: Vec<AckItem>,
}

#[derive(Debug, Deserialize)]
pub struct AuditUnenrollRequest {
    pub reason: String,
    pub timestamp: String,
}

pub const AUDIT_REASONS: &[&str] = &["uninstall", "orphaned", "key_revoked", "migrated"];

// --- user agent ------------------------------------------------------------------------

fn parse_version(s: &str) -> Option<(u64, u64, u64)> {
    let s = s.trim().trim_start_matches('v');
    let core = s.split(['-', '+']).next()?;
    let mut parts = core.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().unwrap_or("0").parse().ok()?;
    Some((major, minor, patch))
}

/// Accepts `Elastic Agent X.Y.Z` and `Flotilla Agent X.Y.Z`
/// (case-insensitive); returns the agent's version.
pub fn check_user_agent(header: Option<&str>, server_version: &str) -> Result<String> {
    let ua = header.unwrap_or("").trim().to_lowercase();
    let invalid = || FleetError::new(FleetErrorKind::InvalidUserAgent, "user-agent is invalid");
    let (rest, elastic) = if let Some(rest) = ua.strip_prefix("elastic agent ") {
        (rest, true)
    } else if let Some(rest) = ua.strip_prefix("flotilla agent ") {
        (rest, false)
    } else {
        return Err(invalid());
    };
    let token = rest.split_whitespace().next().unwrap_or("");
    let version = parse_version(token).ok_or_else(invalid)?;
    if elastic {
        let (smaj, smin, _) = parse_version(server_version).unwrap_or((9, 6, 0));
        if version < (7, 13, 0) || (version.0, version.1) > (smaj, smin) {
            return Err(FleetError::new(
                FleetErrorKind::UnsupportedVersion,
                "version is not supported",
            ));
        }
    }
    Ok(format!("{}.{}.{}", version.0, version.1, version.2))
}

/// How long a check-in may wait: the agent's `poll_timeout` T gives
/// max(1m, min(T − 2m, 1h)), otherwise the configured default; minus the
/// jitter sample when that leaves something to wait.
fn poll_duration(requested: Option<Duration>, default: Duration, jitter: Duration) -> Duration {
    let base = match requested {
        Some(t) if !t.is_zero() => t
            .saturating_sub(Duration::from_secs(120))
            .clamp(Duration::from_secs(60), Duration::from_secs(3600)),
        _ => default,
    };
    if jitter < base {
        base - jitter
    } else {
        base
    }
}

/// Go-style durations as agents send them (`5m`, `1h30m`, `300s`).
fn parse_poll_timeout(s: &str) -> Result<Duration> {
    humantime::parse_duration(s)
        .map_err(|_| FleetError::bad("poll_timeout cannot be parsed as duration"))
}

// --- check-in buffer -------------------------------------------------------------------

/// How often a waiting long poll refreshes its agent's last-seen time (well
/// inside the 5-minute offline threshold).
const HEARTBEAT_REFRESH: Duration = Duration::from_secs(30);

/// Coalesces check-in writes: a heartbeat that changes nothing but the time
/// waits for the next batch; a first check-in or a change of status,
/// message or metadata is written at once.
#[derive(Default)]
pub struct CheckinBuffer {
    inner: Mutex<BufferState>,
}

#[derive(Default)]
struct BufferState {
    pending: HashMap<String, CheckinRecord>,
    /// What each agent last reported.
    last: HashMap<String, Fingerprint>,
    /// The last ack token each agent confirmed through this instance.
    tokens: HashMap<String, String>,
}

/// Status, message, digests of metadata and components, reported policy.
type Fingerprint = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<(String, i64)>,
);

fn digest(v: &Option<Value>) -> Option<String> {
    v.as_ref()
        .map(|v| hex::encode(Sha256::digest(v.to_string())))
}

impl CheckinBuffer {
    /// Buffer a check-in; returns it back when it should be written now.
    fn offer(&self, rec: CheckinRecord, first: bool) -> Option<CheckinRecord> {
        let mut st = self.inner.lock().expect("buffer lock");
        let fingerprint = (
            rec.status.clone(),
            rec.message.clone(),
            digest(&rec.local_metadata),
            digest(&rec.components),
            rec.reported_policy.clone(),
        );
        let changed = st.last.get(&rec.agent_id) != Some(&fingerprint);
        st.last.insert(rec.agent_id.clone(), fingerprint);
        if first || changed {
            st.pending.remove(&rec.agent_id);
            Some(rec)
        } else {
            st.pending.insert(rec.agent_id.clone(), rec);
            None
        }
    }

    /// Whether `token` was already confirmed for this agent here.
    fn token_confirmed(&self, agent_id: &str, token: &str) -> bool {
        let st = self.inner.lock().expect("buffer lock");
        st.tokens.get(agent_id).is_some_and(|t| t == token)
    }

    fn remember_token(&self, agent_id: &str, token: &str) {
        let mut st = self.inner.lock().expect("buffer lock");
        st.tokens.insert(agent_id.to_owned(), token.to_owned());
    }

    /// A heartbeat while a long poll waits, so a waiting agent never looks
    /// offline: buffered like any unchanged check-in.
    fn refresh(&self, agent_id: &str, at: DateTime<Utc>) {
        let mut st = self.inner.lock().expect("buffer lock");
        if let Some(rec) = st.pending.get_mut(agent_id) {
            rec.at = at;
            return;
        }
        if let Some((status, message, ..)) = st.last.get(agent_id).cloned() {
            st.pending.insert(
                agent_id.to_owned(),
                CheckinRecord {
                    agent_id: agent_id.to_owned(),
                    at,
                    status,
                    message,
                    local_metadata: None,
                    components: None,
                    agent_version: None,
                    reported_policy: None,
                },
            );
        }
    }

    /// Put back a batch that could not be written, unless newer records
    /// arrived meanwhile.
    pub fn requeue(&self, batch: Vec<CheckinRecord>) {
        let mut st = self.inner.lock().expect("buffer lock");
        for rec in batch {
            st.pending.entry(rec.agent_id.clone()).or_insert(rec);
        }
    }

    pub fn drain(&self) -> Vec<CheckinRecord> {
        let mut st = self.inner.lock().expect("buffer lock");
        st.pending.drain().map(|(_, v)| v).collect()
    }

    pub fn forget(&self, agent_id: &str) {
        let mut st = self.inner.lock().expect("buffer lock");
        st.pending.remove(agent_id);
        st.last.remove(agent_id);
        st.tokens.remove(agent_id);
    }
}

// --- policy cache ----------------------------------------------------------------------

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
    fn forget(&self, policy_id: &str) {
        self.inner.lock().expect("cache lock").remove(policy_id);
    }

    fn get(&self, policy_id: &str, revision: i64) -> Option<Arc<CachedPolicy>> {
        let cache = self.inner.lock().expect("cache lock");
        cache
            .get(policy_id)
            .filter(|c| c.revision == revision)
            .cloned()
    }
}

// --- the service -------------------------------------------------------------------------

/// The policy an enrollment credential may enrol into.
pub struct EnrollGrant {
    pub policy_id: String,
}

/// What authenticating an agent's request yields.
pub struct AuthedAgent {
    pub agent: FleetAgent,
}

impl Services {
    fn keys(&self) -> KeyService {
        KeyService::new(self.store.clone())
    }

    /// Authenticate `Authorization: ApiKey <credential>` as the access key
    /// of agent `agent_id`.
    pub async fn authenticate_agent(
        &self,
        credential: &str,
        agent_id: &str,
    ) -> Result<AuthedAgent> {
        let key = match self.keys().authenticate(credential).await? {
            Ok(k) => k,
            Err(KeyRejection::Malformed) => {
                return Err(FleetError::new(
                    FleetErrorKind::MalformedToken,
                    "malformed token",
                ))
            }
            Err(KeyRejection::NotUtf8) => {
                return Err(FleetError::new(
                    FleetErrorKind::InvalidToken,
                    "token not valid utf8",
                ))
            }
            Err(KeyRejection::Unknown) => {
                return Err(FleetError::new(
                    FleetErrorKind::Unauthorized,
                    "unauthorized",
                ))
            }
            Err(KeyRejection::Invalidated) => {
                return Err(FleetError::new(
                    FleetErrorKind::KeyNotEnabled,
                    "ApiKey not enabled",
                ))
            }
        };
        if key.kind != KeyKind::Access {
            return Err(FleetError::new(
                FleetErrorKind::Unauthorized,
                "unauthorized",
            ));
        }
        let agent = self.store.get_fleet_agent(agent_id).await?.ok_or_else(|| {
            FleetError::new(FleetErrorKind::AgentNotFound, "agent could not be found")
        })?;
        if agent.access_api_key_id.as_deref() != Some(key.id.as_str()) {
            return Err(FleetError::new(
                FleetErrorKind::AgentIdentity,
                "Agent header contains wrong identifier",
            ));
        }
        if !agent.active {
            return Err(FleetError::new(
                FleetErrorKind::AgentInactive,
                "Agent inactive",
            ));
        }
        Ok(AuthedAgent { agent })
    }

    /// Whether the credential is any valid key (for `/api/status`).
    pub async fn is_valid_key(&self, credential: &str) -> bool {
        matches!(self.keys().authenticate(credential).await, Ok(Ok(_)))
            || self.management().authenticate(credential).await.is_ok()
    }

    /// Which policy may this credential enrol into? Checked before the
    /// request body is read.
    pub async fn enrollment_grant(
        &self,
        credential: &str,
        peer: Option<IpAddr>,
    ) -> Result<EnrollGrant> {
        let policy_id = match self.settings.static_tokens.lookup(credential, peer) {
            StaticMatch::Allowed(token) => token.policy_id.clone(),
            StaticMatch::AddressRefused(token) => {
                tracing::warn!(token = %token.label, ?peer, "static enrollment token used from a refused address");
                return Err(FleetError::new(
                    FleetErrorKind::AddressRefused,
                    "enrollment is not allowed from this address",
                ));
            }
            StaticMatch::NoMatch => {
                let key = self
                    .store
                    .find_enrollment_key_by_hash(&hash_token(credential))
                    .await?
                    .filter(|k| k.active)
                    .ok_or_else(|| FleetError::new(FleetErrorKind::Unauthorized, "unauthorized"))?;
                key.policy_id
            }
        };
        Ok(EnrollGrant { policy_id })
    }

    pub async fn enroll(
        &self,
        grant: EnrollGrant,
        user_agent: Option<&str>,
        body: EnrollRequest,
    ) -> Result<EnrollResponse> {
        let EnrollGrant { policy_id } = grant;
        let version = check_user_agent(user_agent, &self.settings.server_version)?;
        let enroll_type = body.enroll_type.to_uppercase();
        if !["PERMANENT", "EPHEMERAL", "TEMPORARY"].contains(&enroll_type.as_str()) {
            return Err(FleetError::bad(format!(
                "invalid enrollment type '{}'",
                body.enroll_type
            )));
        }
        let tags =
            validate_tags(&body.metadata.tags).map_err(|e| FleetError::bad(e.to_string()))?;
        let mut tags_dedup = tags.clone();
        tags_dedup.sort();
        tags_dedup.dedup();
        let mut local = match body.metadata.local {
            Value::Null => json!({}),
            Value::Object(m) => Value::Object(m),
            _ => return Err(FleetError::bad("metadata.local must be an object")),
        };
        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
        let requested_id = nonempty(body.id);
        let replace_token = nonempty(body.replace_token);
        let enrollment_id = nonempty(body.enrollment_id);

        let now = Utc::now();
        // The agent this one replaces, removed in the enrolment's own
        // transaction (which also settles any same-`enrollment_id` agent).
        let mut replace = Vec::new();
        let agent_id = match requested_id {
            Some(id) => {
                validate_id("id", &id).map_err(|e| FleetError::bad(e.to_string()))?;
                if let Some(existing) = self.store.get_fleet_agent(&id).await? {
                    if existing.active {
                        let verified = match (&existing.replace_token_hash, &replace_token) {
                            (Some(stored), Some(given)) => {
                                ct_eq(stored.as_bytes(), replace_token_hash(&id, given).as_bytes())
                            }
                            _ => false,
                        };
                        if !verified || existing.policy_id != policy_id {
                            return Err(FleetError::new(
                                FleetErrorKind::AgentNotReplaceable,
                                "existing agent cannot be replaced",
                            ));
                        }
                    }
                    replace.push(id.clone());
                }
                id
            }
            None => uuid::Uuid::new_v4().to_string(),
        };
        if let Some(agent) = local.pointer_mut("/elastic/agent") {
            if let Some(obj) = agent.as_object_mut() {
                obj.insert("id".into(), Value::String(agent_id.clone()));
            }
        }
        let access = self.keys().mint(
            &agent_id,
            KeyKind::Access,
            Some(&agent_id),
            &Default::default(),
            json!({"agent_id": agent_id, "managed": true, "type": "access"}),
        );
        let new = NewAgent {
            id: agent_id.clone(),
            policy_id: policy_id.clone(),
            tags: tags_dedup.clone(),
            local_metadata: local.clone(),
            enrolled_at: now,
            access_api_key_id: Some(access.record.id.clone()),
            enrollment_id,
            replace_token_hash: replace_token
                .as_ref()
                .map(|t| replace_token_hash(&agent_id, t)),
            enroll_type: Some(enroll_type.clone()),
            agent_version: Some(version),
        };
        match self
            .store
            .enroll_agent(&new, &access.record, &replace)
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(FleetError::new(
                    FleetErrorKind::EnrollDuplicate,
                    "a concurrent enrolment for the same agent is in progress; retry",
                ))
            }
            Err(StoreError::NotFound { .. }) => {
                return Err(FleetError::new(
                    FleetErrorKind::PolicyNotFound,
                    format!(
                        "agent policy '{policy_id}' does not exist yet; retry once it is created"
                    ),
                ))
            }
            Err(e) => return Err(e.into()),
        }
        self.checkins.forget(&agent_id);
        tracing::info!(agent_id, policy_id, "agent enrolled");
        Ok(EnrollResponse {
            action: "created",
            item: EnrollItem {
                id: agent_id,
                active: true,
                policy_id,
                enroll_type,
                enrolled_at: now,
                user_provided_metadata: match body.metadata.user_provided {
                    Value::Null => json!({}),
                    v => v,
                },
                local_metadata: local,
                access_api_key_id: access.record.id.clone(),
                access_api_key: access.encoded(),
                status: "online".into(),
                tags: tags_dedup,
            },
        })
    }

    /// Write buffered heartbeats; the server calls this on a timer and at
    /// shutdown.
    pub async fn flush_checkins(&self) -> std::result::Result<(), StoreError> {
        let batch = self.checkins.drain();
        if let Err(e) = self.store.record_checkins(&batch).await {
            self.checkins.requeue(batch);
            return Err(e);
        }
        Ok(())
    }

    fn poll_duration(&self, requested: Option<Duration>) -> Duration {
        let jitter = self.settings.poll_jitter;
        let sample = if jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_millis(rand::thread_rng().gen_range(0..jitter.as_millis().max(1) as u64))
        };
        poll_duration(requested, self.settings.poll_timeout, sample)
    }

    pub async fn checkin(
        &self,
        authed: AuthedAgent,
        user_agent: Option<&str>,
        body: CheckinRequest,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<CheckinResponse> {
        // Ends a waiting poll at once (shutdown, or a newer check-in of the
        // same agent) with an empty answer.
        let mut stop = std::pin::pin!(stop);
        let AuthedAgent { agent } = authed;
        let agent_id = agent.id.clone();
        let version = check_user_agent(user_agent, &self.settings.server_version)?;
        if body.status.trim().is_empty() {
            return Err(FleetError::bad("checkin status missing"));
        }
        let requested_poll = body
            .poll_timeout
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(parse_poll_timeout)
            .transpose()?;
        if let Some(meta) = &body.local_metadata {
            if !meta.is_object() && !meta.is_null() {
                return Err(FleetError::bad("unable to parse meta"));
            }
        }
        // What the agent says it runs (agents from 9.2 report it).
        let reports = body.agent_policy_id.clone().zip(body.policy_revision_idx);
        let now = Utc::now();
        let record = CheckinRecord {
            agent_id: agent.id.clone(),
            at: now,
            status: body.status.trim().to_lowercase(),
            message: body.message.clone(),
            local_metadata: body.local_metadata.clone().filter(|m| !m.is_null()),
            components: body.components.clone().filter(|c| !c.is_null()),
            agent_version: Some(version),
            reported_policy: reports.clone(),
        };
        if let Some(now_rec) = self.checkins.offer(record, agent.last_checkin.is_none()) {
            self.store.record_checkins(&[now_rec]).await?;
        }
        if let Some(token) = body.ack_token.as_deref().filter(|t| !t.is_empty()) {
            // Agents send their last token on every check-in; confirm it once.
            if !self.checkins.token_confirmed(&agent.id, token) {
                self.store.confirm_delivery(&agent.id, token).await?;
                self.checkins.remember_token(&agent.id, token);
            }
        }
        // A newer revision reported changes the agent's record (and may
        // retire keys): only then is it read again below.
        let mut reread = false;
        if let Some((p, rev)) = &reports {
            if *p == agent.policy_id && *rev > agent.policy_revision.unwrap_or(-1) {
                self.store
                    .agent_runs_policy(&agent.id, p, *rev, now)
                    .await?;
                reread = true;
            }
        }
        let poll = self.poll_duration(requested_poll);
        let deadline = tokio::time::Instant::now() + poll;
        // Subscribe before reading, so no change between the read and the
        // wait goes unnoticed.
        let mut events = self.store.subscribe();
        let mut events_closed = false;
        let mut agent = agent;
        loop {
            if reread {
                agent = self
                    .store
                    .get_fleet_agent(&agent_id)
                    .await?
                    .ok_or_else(|| {
                        FleetError::new(FleetErrorKind::AgentNotFound, "agent could not be found")
                    })?;
                if !agent.active {
                    return Err(FleetError::new(
                        FleetErrorKind::AgentInactive,
                        "Agent inactive",
                    ));
                }
            }
            reread = true;
            // A report about another policy (it was reassigned) counts as
            // running nothing of the current one.
            let reported = reports
                .as_ref()
                .map(|(p, rev)| if *p == agent.policy_id { *rev } else { 0 });
            let stored = self
                .store
                .pending_actions(&agent.id, Utc::now(), 100)
                .await?;
            let mut actions = Vec::new();
            match self.policy_change_for(&agent, reported).await {
                Ok(Some(change)) => actions.push(change),
                Ok(None) => {}
                // A policy that cannot be delivered must not hold back the
                // agent's other actions (an UNENROLL, say).
                Err(e) if !stored.is_empty() => {
                    tracing::error!(agent_id = %agent.id, error = %e, "policy not delivered");
                }
                Err(e) => return Err(e),
            }
            if !stored.is_empty() || !actions.is_empty() {
                let mut ack_token = body.ack_token.clone().unwrap_or_default();
                if !stored.is_empty() {
                    ack_token = uuid::Uuid::new_v4().to_string();
                    let ids: Vec<String> = stored.iter().map(|a| a.id.clone()).collect();
                    self.store
                        .mark_delivered(&agent.id, &ids, &ack_token)
                        .await?;
                    actions.extend(stored.iter().map(|a| action_json(a, &agent.id)));
                }
                return Ok(CheckinResponse {
                    action: "checkin",
                    ack_token,
                    actions,
                });
            }
            // Nothing yet: wait for a relevant change, the deadline or
            // shutdown, refreshing the agent's last-seen time meanwhile.
            let _waiting = WaitingGauge::enter();
            let mut refresh = tokio::time::interval_at(
                tokio::time::Instant::now() + HEARTBEAT_REFRESH,
                HEARTBEAT_REFRESH,
            );
            let recheck = tokio::time::sleep(self.recheck_after());
            tokio::pin!(recheck);
            loop {
                tokio::select! {
                    ev = events.recv(), if !events_closed => match ev {
                        Ok(ev) if ev.concerns(&agent.id, &agent.policy_id) => break,
                        Ok(_) => continue,
                        Err(RecvError::Lagged(_)) => break,
                        // No more events: the timers and `stop` still end the wait.
                        Err(RecvError::Closed) => events_closed = true,
                    },
                    // A notification may have been lost: read again anyway.
                    _ = &mut recheck => break,
                    _ = refresh.tick() => self.checkins.refresh(&agent.id, Utc::now()),
                    _ = tokio::time::sleep_until(deadline) => return Ok(self.empty_checkin(&body)),
                    _ = &mut stop => return Ok(self.empty_checkin(&body)),
                }
            }
        }
    }

    /// The recheck interval less up to a quarter, at random, so waiters
    /// woken by no event do not all read at once.
    fn recheck_after(&self) -> Duration {
        let every = self.settings.recheck_interval;
        let spread = (every.as_millis() / 4) as u64;
        let off = if spread == 0 {
            0
        } else {
            rand::thread_rng().gen_range(0..spread)
        };
        every.saturating_sub(Duration::from_millis(off))
    }

    fn empty_checkin(&self, body: &CheckinRequest) -> CheckinResponse {
        CheckinResponse {
            action: "checkin",
            ack_token: body.ack_token.clone().unwrap_or_default(),
            actions: vec![],
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
        let full = self.full_policy(policy_id).await?;
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
            document: serde_json::to_value(&full).expect("policies serialise"),
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

    /// A `POLICY_CHANGE` for the agent when it is behind (or its key no
    /// longer matches the policy's permissions), with its own output key.
    async fn policy_change_for(
        &self,
        agent: &FleetAgent,
        reported: Option<i64>,
    ) -> Result<Option<Value>> {
        let policy = match self.cached_policy(&agent.policy_id).await {
            Ok(p) => p,
            // The policy was deleted under the agent: nothing to send.
            Err(crate::ServiceError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // What it runs: as reported (so a restored agent is re-sent what it
        // lost), else as acked; a revision the policy never had counts as 0.
        let known = match reported {
            Some(r) if r <= policy.revision => r,
            Some(_) => 0,
            None => agent.policy_revision.unwrap_or(0),
        };
        let key_current = if policy.takes_api_key {
            agent.output_api_key_id.is_some()
                && agent.output_permissions_hash.as_deref()
                    == Some(policy.permissions_hash.as_str())
        } else {
            agent.output_api_key_id.is_none()
        };
        if known >= policy.revision && key_current {
            return Ok(None);
        }
        if !policy.takes_api_key {
            // An output that takes no key: the key the agent held for an
            // earlier output is retired once it runs this revision.
            if let Some(key_id) = &agent.output_api_key_id {
                self.store
                    .retire_output_key(
                        &agent.id,
                        key_id,
                        &policy.policy_id,
                        policy.revision,
                        Utc::now(),
                    )
                    .await?;
            }
            if known >= policy.revision {
                return Ok(None);
            }
            return Ok(Some(policy_change_action(
                &policy,
                &agent.id,
                policy.document.clone(),
            )));
        }
        let mut document = policy.document.clone();
        let credential = match self.current_output_key(agent, key_current).await? {
            Some(plain) => plain,
            None => self.rotate_output_key(agent, &policy).await?,
        };
        if let Some(output) =
            document.pointer_mut(&format!("/outputs/{}", escape_pointer(&policy.output_id)))
        {
            if let Some(obj) = output.as_object_mut() {
                obj.insert("api_key".into(), Value::String(credential));
            }
        }
        Ok(Some(policy_change_action(&policy, &agent.id, document)))
    }

    /// The agent's current output key (`id:secret`), if it still fits the
    /// policy and has not been invalidated.
    async fn current_output_key(&self, agent: &FleetAgent, fits: bool) -> Result<Option<String>> {
        let (Some(key_id), Some(sealed), true) = (
            agent.output_api_key_id.as_deref(),
            agent.output_api_key_sealed.as_deref(),
            fits,
        ) else {
            return Ok(None);
        };
        match self.store.get_api_key(key_id).await? {
            Some(k) if k.invalidated_at.is_none() => {}
            _ => return Ok(None),
        }
        let plain = self.sealer.open(sealed, &output_key_aad(&agent.id, key_id)).map_err(|e| {
            tracing::error!(agent_id = %agent.id, error = %e, "cannot open the agent's output key");
            FleetError::new(FleetErrorKind::Internal, "internal error")
        })?;
        String::from_utf8(plain)
            .map(Some)
            .map_err(|_| FleetError::new(FleetErrorKind::Internal, "internal error"))
    }

    /// Mint the agent a key with exactly the policy's permissions; the old
    /// one stays valid until the agent runs this revision. When another
    /// check-in of the same agent rotated first, its key is used.
    async fn rotate_output_key(&self, agent: &FleetAgent, policy: &CachedPolicy) -> Result<String> {
        let excess = self.settings.ceiling.excess(&policy.permissions);
        if !excess.is_empty() {
            tracing::error!(policy_id = %policy.policy_id, ?excess, "policy exceeds the grant ceiling; no key minted");
            return Err(FleetError::new(
                FleetErrorKind::Internal,
                "the policy's permissions exceed what this server may grant",
            ));
        }
        let minted = self.keys().mint(
            &format!("{}:{}", agent.id, policy.output_id),
            KeyKind::Output,
            Some(&agent.id),
            &policy.permissions,
            json!({"agent_id": agent.id, "managed": true, "type": "output", "output_name": policy.output_id,
                   "policy_id": policy.policy_id}),
        );
        let plain = minted.credential.expose_secret().to_owned();
        let change = OutputKeyChange {
            sealed_secret: self.sealer.seal(
                plain.as_bytes(),
                &output_key_aad(&agent.id, &minted.record.id),
            ),
            key: minted.record,
            replaces: agent.output_api_key_id.clone(),
            permissions_hash: policy.permissions_hash.clone(),
            policy_id: policy.policy_id.clone(),
            revision: policy.revision,
        };
        match self.store.set_output_key(&agent.id, &change).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                let winner = self.store.get_fleet_agent(&agent.id).await?;
                let fits = winner.as_ref().is_some_and(|w| {
                    w.active
                        && w.output_permissions_hash.as_deref()
                            == Some(policy.permissions_hash.as_str())
                });
                return match winner {
                    Some(w) if fits => self.current_output_key(&w, true).await?.ok_or_else(|| {
                        FleetError::new(
                            FleetErrorKind::Unavailable,
                            "output key changed concurrently; retry",
                        )
                    }),
                    Some(w) if !w.active => Err(FleetError::new(
                        FleetErrorKind::AgentInactive,
                        "Agent inactive",
                    )),
                    _ => Err(FleetError::new(
                        FleetErrorKind::Unavailable,
                        "output key changed concurrently; retry",
                    )),
                };
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(agent_id = %agent.id, policy_id = %policy.policy_id, revision = policy.revision, "output key minted");
        Ok(plain)
    }

    pub async fn ack(&self, authed: AuthedAgent, body: AckRequest) -> Result<(u16, AckResponse)> {
        let AuthedAgent { agent } = authed;
        let now = Utc::now();
        let mut items = Vec::with_capacity(body.events.len());
        let mut policy_acks: Vec<(String, i64)> = Vec::new();
        for raw in body.events {
            let status = match serde_json::from_value::<AckEvent>(raw) {
                Err(_) => 400,
                Ok(ev) if !ev.agent_id.is_empty() && ev.agent_id != agent.id => 400,
                Ok(ev) if ev.action_id.starts_with("policy:") => {
                    match parse_policy_ack(&ev.action_id, &agent.policy_id) {
                        Some(parsed) => {
                            if ev.error.as_deref().is_none_or(str::is_empty) {
                                policy_acks.push(parsed);
                            }
                            200
                        }
                        None => 400,
                    }
                }
                Ok(ev) if ev.action_id.is_empty() => 400,
                Ok(ev) => {
                    let error = ev.error.as_deref().filter(|e| !e.is_empty());
                    match self
                        .store
                        .ack_action(&agent.id, &ev.action_id, error, now)
                        .await
                    {
                        Ok(ActionAck::NotFound) => 404,
                        Ok(ActionAck::OtherAgent) => 400,
                        Ok(ActionAck::Acked { action_type, .. }) => {
                            if action_type == ActionType::Unenroll && error.is_none() {
                                match self.store.unenroll_now(&agent.id, now).await {
                                    Ok(()) => 200,
                                    Err(e) => {
                                        tracing::error!(error = %e, "unenroll on ack failed");
                                        500
                                    }
                                }
                            } else {
                                200
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "ack failed");
                            500
                        }
                    }
                }
            };
            items.push(AckItem {
                status,
                message: status_text(status).into(),
            });
        }
        if let Some(rev) = policy_acks
            .iter()
            .filter(|(p, _)| *p == agent.policy_id)
            .map(|(_, r)| *r)
            .max()
        {
            let retired = self
                .store
                .agent_runs_policy(&agent.id, &agent.policy_id, rev, now)
                .await?;
            if !retired.is_empty() {
                tracing::info!(agent_id = %agent.id, retired = retired.len(), "old output keys invalidated");
            }
        }
        let status = items.iter().map(|i| i.status).max().unwrap_or(200);
        let errors = items.iter().any(|i| i.status != 200);
        Ok((
            status,
            AckResponse {
                action: "acks",
                errors,
                items,
            },
        ))
    }

    pub async fn audit_unenroll(
        &self,
        authed: AuthedAgent,
        body: AuditUnenrollRequest,
    ) -> Result<()> {
        let AuthedAgent { agent } = authed;
        if !AUDIT_REASONS.contains(&body.reason.as_str()) {
            return Err(FleetError::bad("audit/unenroll request invalid reason"));
        }
        let time = DateTime::parse_from_rfc3339(&body.timestamp)
            .map_err(|_| FleetError::bad("timestamp must be an RFC 3339 date-time"))?
            .with_timezone(&Utc);
        match self
            .store
            .audit_unenroll(&agent.id, &body.reason, time, Utc::now())
            .await
        {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict(m)) => {
                Err(FleetError::new(FleetErrorKind::AuditReasonConflict, m))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// `flotilla_checkins_waiting`: long polls currently waiting for a change.
struct WaitingGauge;

impl WaitingGauge {
    fn enter() -> Self {
        metrics::gauge!("flotilla_checkins_waiting").increment(1.0);
        WaitingGauge
    }
}

impl Drop for WaitingGauge {
    fn drop(&mut self) {
        metrics::gauge!("flotilla_checkins_waiting").decrement(1.0);
    }
}

fn policy_change_action(policy: &CachedPolicy, agent_id: &str, document: Value) -> Value {
    json!({
        "id": format!("policy:{}:{}", policy.policy_id, policy.revision),
        "agent_id": agent_id,
        "created_at": policy.updated_at,
        "type": "POLICY_CHANGE",
        "input_type": "",
        "data": { "policy": document },
    })
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Internal Server Error",
    }
}

/// `policy:<policy_id>:<revision>`. Policy ids may contain `:`, so the
/// revision is the last segment.
pub fn parse_policy_action_id(id: &str) -> Option<(String, i64)> {
    let (policy_id, rev) = id.strip_prefix("policy:")?.rsplit_once(':')?;
    if policy_id.is_empty() {
        return None;
    }
    Some((policy_id.to_owned(), rev.parse().ok()?))
}

/// A policy ack id for an agent on `current`: `policy:<id>:<rev>`, or the
/// older `policy:<id>:<rev>:<coordinator>` when that names `current`.
fn parse_policy_ack(id: &str, current: &str) -> Option<(String, i64)> {
    let (pid, rev) = parse_policy_action_id(id)?;
    if pid != current {
        if let Some((legacy_pid, legacy_rev)) = pid.rsplit_once(':') {
            if legacy_pid == current {
                if let Ok(r) = legacy_rev.parse() {
                    return Some((legacy_pid.to_owned(), r));
                }
            }
        }
    }
    Some((pid, rev))
}

fn replace_token_hash(agent_id: &str, token: &str) -> String {
    hash_token(&format!("{agent_id}:{token}"))
}

pub fn output_key_aad(agent_id: &str, key_id: &str) -> String {
    format!("agents.output_api_key:{agent_id}:{key_id}")
}

fn escape_pointer(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn action_json(a: &Action, agent_id: &str) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(a.id));
    m.insert("agent_id".into(), json!(agent_id));
    m.insert("created_at".into(), json!(a.created_at));
    m.insert("type".into(), json!(a.action_type.as_str()));
    m.insert("input_type".into(), json!(""));
    m.insert(
        "data".into(),
        if a.action_type == ActionType::Unenroll {
            Value::Null
        } else {
            a.data.clone()
        },
    );
    if let Some(exp) = a.expiration {
        m.insert("expiration".into(), json!(exp));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents() {
        assert_eq!(
            check_user_agent(Some("Elastic Agent v9.6.0"), "9.6.0").unwrap(),
            "9.6.0"
        );
        assert_eq!(
            check_user_agent(Some("elastic agent 8.15.1-SNAPSHOT"), "9.6.0").unwrap(),
            "8.15.1"
        );
        assert_eq!(
            check_user_agent(Some("flotilla agent 0.1.0"), "9.6.0").unwrap(),
            "0.1.0"
        );
        let kind = |ua: Option<&str>| check_user_agent(ua, "9.6.0").unwrap_err().kind;
        assert_eq!(kind(None), FleetErrorKind::InvalidUserAgent);
        assert_eq!(
            kind(Some("elastic-agent 8.6.0")),
            FleetErrorKind::InvalidUserAgent
        );
        assert_eq!(kind(Some("curl/8")), FleetErrorKind::InvalidUserAgent);
        assert_eq!(
            kind(Some("elastic agent 7.12.0")),
            FleetErrorKind::UnsupportedVersion
        );
        assert_eq!(
            kind(Some("elastic agent 9.7.0")),
            FleetErrorKind::UnsupportedVersion
        );
        assert!(check_user_agent(Some("elastic agent 9.6.99"), "9.6.0").is_ok());
    }

    #[test]
    fn policy_action_ids() {
        assert_eq!(
            parse_policy_action_id("policy:p1:7"),
            Some(("p1".into(), 7))
        );
        assert_eq!(
            parse_policy_action_id("policy:a:b:12"),
            Some(("a:b".into(), 12))
        );
        assert_eq!(parse_policy_action_id("policy:p1:x"), None);
        assert_eq!(parse_policy_action_id("policy::3"), None);
        assert_eq!(parse_policy_action_id("other"), None);
        assert_eq!(
            parse_policy_ack("policy:p1:7:1", "p1"),
            Some(("p1".into(), 7))
        );
        assert_eq!(
            parse_policy_ack("policy:a:b:12", "a:b"),
            Some(("a:b".into(), 12))
        );
        assert_eq!(
            parse_policy_ack("policy:p1:7", "p2"),
            Some(("p1".into(), 7))
        );
    }

    #[test]
    fn poll_durations_follow_the_reference() {
        let (m, s) = (|n: u64| Duration::from_secs(60 * n), Duration::from_secs);
        assert_eq!(poll_duration(None, m(5), s(0)), m(5));
        assert_eq!(poll_duration(None, m(5), s(20)), m(5) - s(20));
        assert_eq!(poll_duration(Some(m(14)), m(5), s(0)), m(12));
        assert_eq!(
            poll_duration(Some(m(2)), m(5), s(0)),
            m(1),
            "at least a minute"
        );
        assert_eq!(
            poll_duration(Some(m(600)), m(5), s(0)),
            m(60),
            "at most an hour"
        );
        assert_eq!(poll_duration(Some(s(0)), m(5), s(0)), m(5), "0 means unset");
        assert_eq!(
            poll_duration(None, s(1), s(5)),
            s(1),
            "jitter never exceeds the poll"
        );
    }

    #[test]
    fn poll_timeouts_parse_like_go() {
        assert_eq!(parse_poll_timeout("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            parse_poll_timeout("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert!(parse_poll_timeout("soon").is_err());
    }

    #[test]
    fn buffer_writes_changes_at_once_and_coalesces_heartbeats() {
        let b = CheckinBuffer::default();
        let rec = |status: &str| CheckinRecord {
            agent_id: "a".into(),
            at: Utc::now(),
            status: status.into(),
            message: "m".into(),
            local_metadata: None,
            components: None,
            agent_version: None,
            reported_policy: None,
        };
        assert!(b.offer(rec("online"), true).is_some(), "first check-in");
        assert!(b.offer(rec("online"), false).is_none(), "heartbeat");
        assert!(b.offer(rec("online"), false).is_none());
        assert_eq!(b.drain().len(), 1, "coalesced to one write");
        assert!(b.offer(rec("error"), false).is_some(), "status change");
        assert!(b.drain().is_empty());

        // A waiting poll refreshes the last-seen time, buffered.
        let later = Utc::now() + chrono::Duration::seconds(30);
        b.refresh("a", later);
        let drained = b.drain();
        assert_eq!(
            (drained.len(), drained[0].at, drained[0].status.as_str()),
            (1, later, "error")
        );
        // A failed write is put back, unless something newer arrived.
        b.requeue(drained.clone());
        assert_eq!(b.drain(), drained);
        b.refresh("a", later + chrono::Duration::seconds(30));
        b.requeue(drained);
        assert_eq!(b.drain()[0].at, later + chrono::Duration::seconds(30));
    }
}
