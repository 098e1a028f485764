//! Row types and their conversion into domain records.

use chrono::{DateTime, TimeZone, Utc};
use serde::de::DeserializeOwned;

use flotilla_domain::agent::{Agent, AgentStatus};
use flotilla_domain::apikey::OperatorApiKey;
use flotilla_domain::enrollment::EnrollmentApiKey;
use flotilla_domain::output::{Output, OutputType};
use flotilla_domain::package_policy::{PackagePolicy, PackageRef};
use flotilla_domain::policy::AgentPolicy;
use flotilla_store::StoreError;

pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("corrupt {what} in storage: {detail}").into())
}

fn json<T: DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt(what, e))
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("domain values serialise to JSON")
}

/// Map an engine error: missing rows, uniqueness and lock contention get
/// their own variants; `conflict` phrases a uniqueness violation.
pub(crate) fn db_err(e: sqlx::Error, conflict: impl FnOnce() -> String) -> StoreError {
    match &e {
        sqlx::Error::PoolTimedOut => StoreError::Busy,
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(conflict()),
        // A concurrent change still refers to the row (or removed its parent).
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            StoreError::Conflict("a related record changed concurrently; retry".into())
        }
        sqlx::Error::Database(db)
            if matches!(
                db.code().as_deref(),
                Some("5") | Some("6") | Some("55P03") | Some("40001") | Some("40P01")
            ) =>
        {
            StoreError::Busy
        }
        _ => StoreError::Other(Box::new(e)),
    }
}

/// Map an engine error that has no expected uniqueness case.
pub(crate) fn other(e: sqlx::Error) -> StoreError {
    db_err(e, || "conflicting change".to_owned())
}

/// `?` on sqlx results: engine errors become [`StoreError`]s.
pub(crate) trait DbResultExt<T> {
    /// Any engine error, mapped by [`db_err`].
    fn db(self) -> Result<T, StoreError>;
    /// The same, with the message for a uniqueness violation.
    fn or_conflict(self, message: impl FnOnce() -> String) -> Result<T, StoreError>;
}

impl<T> DbResultExt<T> for Result<T, sqlx::Error> {
    fn db(self) -> Result<T, StoreError> {
        self.map_err(other)
    }
    fn or_conflict(self, message: impl FnOnce() -> String) -> Result<T, StoreError> {
        self.map_err(|e| db_err(e, message))
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct OutputRow {
    id: String,
    name: String,
    output_type: String,
    hosts: String,
    is_default: bool,
    remote_keys: bool,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<OutputRow> for Output {
    type Error = StoreError;
    fn try_from(r: OutputRow) -> Result<Self, StoreError> {
        Ok(Output {
            output_type: OutputType::parse(&r.output_type)
                .ok_or_else(|| corrupt("output type", &r.output_type))?,
            hosts: json("output hosts", &r.hosts)?,
            id: r.id,
            name: r.name,
            is_default: r.is_default,
            remote_key_management: r.remote_keys,
            created_at: from_ms(r.created_at),
            updated_at: from_ms(r.updated_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct PolicyRow {
    id: String,
    name: String,
    namespace: String,
    description: Option<String>,
    output_id: Option<String>,
    inactivity_timeout: i64,
    revision: i64,
    created_at: i64,
    updated_at: i64,
}

impl From<PolicyRow> for AgentPolicy {
    fn from(r: PolicyRow) -> Self {
        AgentPolicy {
            id: r.id,
            name: r.name,
            namespace: r.namespace,
            description: r.description,
            output_id: r.output_id,
            inactivity_timeout: r.inactivity_timeout.max(0) as u64,
            revision: r.revision,
            created_at: from_ms(r.created_at),
            updated_at: from_ms(r.updated_at),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct PackagePolicyRow {
    id: String,
    name: String,
    description: Option<String>,
    policy_id: String,
    package_name: String,
    package_version: String,
    namespace: Option<String>,
    vars: String,
    inputs: String,
    cloud_connector_id: Option<String>,
    secret_references: String,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<PackagePolicyRow> for PackagePolicy {
    type Error = StoreError;
    fn try_from(r: PackagePolicyRow) -> Result<Self, StoreError> {
        Ok(PackagePolicy {
            vars: json("package policy vars", &r.vars)?,
            inputs: json("package policy inputs", &r.inputs)?,
            id: r.id,
            name: r.name,
            description: r.description,
            policy_id: r.policy_id,
            package: PackageRef {
                name: r.package_name,
                version: r.package_version,
                title: None,
            },
            namespace: r.namespace,
            cloud_connector_id: r.cloud_connector_id,
            secret_references: json("package policy secret references", &r.secret_references)?,
            created_at: from_ms(r.created_at),
            updated_at: from_ms(r.updated_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct EnrollmentKeyRow {
    id: String,
    name: String,
    policy_id: String,
    hint: String,
    active: bool,
    created_at: i64,
    expires_at: Option<i64>,
    max_uses: Option<i64>,
    uses: i64,
}

impl From<EnrollmentKeyRow> for EnrollmentApiKey {
    fn from(r: EnrollmentKeyRow) -> Self {
        EnrollmentApiKey {
            id: r.id,
            name: r.name,
            policy_id: r.policy_id,
            active: r.active,
            hint: r.hint,
            created_at: from_ms(r.created_at),
            expiration: r.expires_at.map(from_ms),
            max_uses: r.max_uses.map(|m| m.max(0) as u64),
            uses: r.uses.max(0) as u64,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct OperatorKeyRow {
    id: String,
    name: String,
    hint: String,
    active: bool,
    created_at: i64,
}

impl From<OperatorKeyRow> for OperatorApiKey {
    fn from(r: OperatorKeyRow) -> Self {
        OperatorApiKey {
            id: r.id,
            name: r.name,
            active: r.active,
            hint: r.hint,
            created_at: from_ms(r.created_at),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AgentRow {
    pub(crate) id: String,
    policy_id: String,
    policy_revision: Option<i64>,
    active: bool,
    local_metadata: String,
    last_checkin: Option<i64>,
    last_checkin_status: Option<String>,
    last_checkin_message: Option<String>,
    enrolled_at: i64,
    unenrollment_started_at: Option<i64>,
    unenrolled_at: Option<i64>,
    agent_version: Option<String>,
    components: Option<String>,
    reported_policy_id: Option<String>,
    reported_policy_revision: Option<i64>,
    output_key_error: Option<String>,
    policy_change_failure: Option<String>,
    enrollment_api_key_id: Option<String>,
    status: String,
}

impl AgentRow {
    pub(crate) fn into_agent(self, tags: Vec<String>) -> Result<Agent, StoreError> {
        Ok(Agent {
            status: AgentStatus::parse(&self.status)
                .ok_or_else(|| corrupt("agent status", &self.status))?,
            local_metadata: json("agent metadata", &self.local_metadata)?,
            components: self
                .components
                .as_deref()
                .map(|c| json("agent components", c))
                .transpose()?,
            agent_version: self.agent_version,
            reported_policy_id: self.reported_policy_id,
            reported_policy_revision: self.reported_policy_revision,
            output_key_error: self.output_key_error,
            policy_change_failure: self
                .policy_change_failure
                .as_deref()
                .map(|f| json("agent policy change failure", f))
                .transpose()?,
            id: self.id,
            policy_id: self.policy_id,
            policy_revision: self.policy_revision,
            active: self.active,
            tags,
            last_checkin_status: self.last_checkin_status,
            last_checkin_message: self.last_checkin_message,
            last_checkin: self.last_checkin.map(from_ms),
            enrolled_at: from_ms(self.enrolled_at),
            unenrollment_started_at: self.unenrollment_started_at.map(from_ms),
            unenrolled_at: self.unenrolled_at.map(from_ms),
            enrollment_api_key_id: self.enrollment_api_key_id,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct FleetAgentRow {
    id: String,
    policy_id: String,
    active: bool,
    policy_revision: Option<i64>,
    access_api_key_id: Option<String>,
    output_api_key_id: Option<String>,
    output_api_key_sealed: Option<String>,
    output_permissions_hash: Option<String>,
    output_key_policy_id: Option<String>,
    output_key_revision: Option<i64>,
    enrollment_id: Option<String>,
    replace_token_hash: Option<String>,
    last_checkin: Option<i64>,
    audit_unenrolled_reason: Option<String>,
}

pub(crate) const FLEET_AGENT_COLS: &str = "id, policy_id, active, policy_revision, access_api_key_id, \
    output_api_key_id, output_api_key_sealed, output_permissions_hash, output_key_policy_id, output_key_revision, \
    enrollment_id, replace_token_hash, last_checkin, audit_unenrolled_reason";

impl From<FleetAgentRow> for flotilla_store::FleetAgent {
    fn from(r: FleetAgentRow) -> Self {
        flotilla_store::FleetAgent {
            id: r.id,
            policy_id: r.policy_id,
            active: r.active,
            policy_revision: r.policy_revision,
            access_api_key_id: r.access_api_key_id,
            output_api_key_id: r.output_api_key_id,
            output_api_key_sealed: r.output_api_key_sealed,
            output_permissions_hash: r.output_permissions_hash,
            output_key_policy_id: r.output_key_policy_id,
            output_key_revision: r.output_key_revision,
            enrollment_id: r.enrollment_id,
            replace_token_hash: r.replace_token_hash,
            last_checkin: r.last_checkin.map(from_ms),
            audit_unenrolled_reason: r.audit_unenrolled_reason,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ApiKeyRow {
    id: String,
    name: String,
    kind: String,
    agent_id: Option<String>,
    secret_hash: String,
    role_descriptors: String,
    metadata: String,
    created_at: i64,
    retire_pending: bool,
    invalidated_at: Option<i64>,
    owner: Option<String>,
    expires_at: Option<i64>,
    remote_output: Option<String>,
}

pub(crate) const API_KEY_COLS: &str =
    "id, name, kind, agent_id, secret_hash, role_descriptors, metadata, created_at, retire_pending, invalidated_at, \
     owner, expires_at, remote_output";

impl TryFrom<ApiKeyRow> for flotilla_store::ApiKeyRecord {
    type Error = StoreError;
    fn try_from(r: ApiKeyRow) -> Result<Self, StoreError> {
        Ok(flotilla_store::ApiKeyRecord {
            role_descriptors: json("key role descriptors", &r.role_descriptors)?,
            metadata: json("key metadata", &r.metadata)?,
            id: r.id,
            name: r.name,
            kind: flotilla_store::KeyKind::parse(&r.kind)
                .ok_or_else(|| StoreError::Other(format!("corrupt key kind {}", r.kind).into()))?,
            agent_id: r.agent_id,
            secret_hash: r.secret_hash,
            created_at: from_ms(r.created_at),
            retire_pending: r.retire_pending,
            invalidated_at: r.invalidated_at.map(from_ms),
            owner: r.owner,
            expires_at: r.expires_at.map(from_ms),
            remote_output: r.remote_output,
        })
    }
}

/// An agent and an API key read together (both sides of the outer joins
/// nullable): `FLEET_AGENT_COLS` as `a_…`, `API_KEY_COLS` as `k_…`.
#[derive(sqlx::FromRow)]
pub(crate) struct AgentAndKeyRow {
    a_id: Option<String>,
    a_policy_id: Option<String>,
    a_active: Option<bool>,
    a_policy_revision: Option<i64>,
    a_access_api_key_id: Option<String>,
    a_output_api_key_id: Option<String>,
    a_output_api_key_sealed: Option<String>,
    a_output_permissions_hash: Option<String>,
    a_output_key_policy_id: Option<String>,
    a_output_key_revision: Option<i64>,
    a_enrollment_id: Option<String>,
    a_replace_token_hash: Option<String>,
    a_last_checkin: Option<i64>,
    a_audit_unenrolled_reason: Option<String>,
    k_id: Option<String>,
    k_name: Option<String>,
    k_kind: Option<String>,
    k_agent_id: Option<String>,
    k_secret_hash: Option<String>,
    k_role_descriptors: Option<String>,
    k_metadata: Option<String>,
    k_created_at: Option<i64>,
    k_retire_pending: Option<bool>,
    k_invalidated_at: Option<i64>,
    k_owner: Option<String>,
    k_expires_at: Option<i64>,
    k_remote_output: Option<String>,
}

/// The select list of [`AgentAndKeyRow`] over `agents a` and `api_keys k`.
pub(crate) fn agent_and_key_cols() -> String {
    let a = FLEET_AGENT_COLS
        .split(',')
        .map(|c| format!("a.{0} AS a_{0}", c.trim()));
    let k = API_KEY_COLS
        .split(',')
        .map(|c| format!("k.{0} AS k_{0}", c.trim()));
    a.chain(k).collect::<Vec<_>>().join(", ")
}

type AgentAndKey = (
    Option<flotilla_store::FleetAgent>,
    Option<flotilla_store::ApiKeyRecord>,
);

impl TryFrom<AgentAndKeyRow> for AgentAndKey {
    type Error = StoreError;
    fn try_from(r: AgentAndKeyRow) -> Result<Self, StoreError> {
        let agent = match (r.a_id, r.a_policy_id, r.a_active) {
            (Some(id), Some(policy_id), Some(active)) => Some(
                FleetAgentRow {
                    id,
                    policy_id,
                    active,
                    policy_revision: r.a_policy_revision,
                    access_api_key_id: r.a_access_api_key_id,
                    output_api_key_id: r.a_output_api_key_id,
                    output_api_key_sealed: r.a_output_api_key_sealed,
                    output_permissions_hash: r.a_output_permissions_hash,
                    output_key_policy_id: r.a_output_key_policy_id,
                    output_key_revision: r.a_output_key_revision,
                    enrollment_id: r.a_enrollment_id,
                    replace_token_hash: r.a_replace_token_hash,
                    last_checkin: r.a_last_checkin,
                    audit_unenrolled_reason: r.a_audit_unenrolled_reason,
                }
                .into(),
            ),
            _ => None,
        };
        let key = match (
            r.k_id,
            r.k_name,
            r.k_kind,
            r.k_secret_hash,
            r.k_role_descriptors,
            r.k_metadata,
            r.k_created_at,
            r.k_retire_pending,
        ) {
            (
                Some(id),
                Some(name),
                Some(kind),
                Some(secret_hash),
                Some(role_descriptors),
                Some(metadata),
                Some(created_at),
                Some(retire_pending),
            ) => Some(
                ApiKeyRow {
                    id,
                    name,
                    kind,
                    agent_id: r.k_agent_id,
                    secret_hash,
                    role_descriptors,
                    metadata,
                    created_at,
                    retire_pending,
                    invalidated_at: r.k_invalidated_at,
                    owner: r.k_owner,
                    expires_at: r.k_expires_at,
                    remote_output: r.k_remote_output,
                }
                .try_into()?,
            ),
            _ => None,
        };
        Ok((agent, key))
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ActionRow {
    pub(crate) id: String,
    pub(crate) action_type: String,
    pub(crate) data: String,
    pub(crate) created_at: i64,
    pub(crate) expiration: Option<i64>,
}

/// [`AgentAndKeyRow`] and [`CheckinReadRow`] in one row (see
/// `fleet_agents::checkin_context`).
#[derive(sqlx::FromRow)]
pub(crate) struct CheckinContextRow {
    #[sqlx(flatten)]
    pub(crate) agent_and_key: AgentAndKeyRow,
    #[sqlx(flatten)]
    pub(crate) reads: CheckinReadRow,
}

/// [`ActionRow`] beside the agent's policy revision, all nullable (see
/// `actions::checkin_reads`).
#[derive(sqlx::FromRow)]
pub(crate) struct CheckinReadRow {
    pub(crate) policy_revision: Option<i64>,
    id: Option<String>,
    action_type: Option<String>,
    data: Option<String>,
    created_at: Option<i64>,
    expiration: Option<i64>,
}

impl CheckinReadRow {
    pub(crate) fn action(self) -> Option<ActionRow> {
        Some(ActionRow {
            id: self.id?,
            action_type: self.action_type?,
            data: self.data?,
            created_at: self.created_at?,
            expiration: self.expiration,
        })
    }
}

impl ActionRow {
    pub(crate) fn into_action(
        self,
        agents: Vec<String>,
    ) -> Result<flotilla_domain::action::Action, StoreError> {
        Ok(flotilla_domain::action::Action {
            action_type: flotilla_domain::action::ActionType::parse(&self.action_type)
                .ok_or_else(|| corrupt("action type", &self.action_type))?,
            data: json("action data", &self.data)?,
            id: self.id,
            created_at: from_ms(self.created_at),
            expiration: self.expiration.map(from_ms),
            agents,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct PackageRow {
    name: String,
    version: String,
    title: String,
    package_type: String,
    source: String,
    digest: String,
    files: String,
    installed_at: i64,
}

impl TryFrom<PackageRow> for flotilla_store::StoredPackage {
    type Error = StoreError;
    fn try_from(r: PackageRow) -> Result<Self, StoreError> {
        Ok(flotilla_store::StoredPackage {
            files: json("package files", &r.files)?,
            name: r.name,
            version: r.version,
            title: r.title,
            package_type: r.package_type,
            source: r.source,
            digest: r.digest,
            installed_at: from_ms(r.installed_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct DocumentRow {
    id: String,
    data_stream: String,
    ts: i64,
    doc: String,
}

impl TryFrom<DocumentRow> for flotilla_store::StoredDocument {
    type Error = StoreError;
    fn try_from(r: DocumentRow) -> Result<Self, StoreError> {
        Ok(flotilla_store::StoredDocument {
            source: json("document", &r.doc)?,
            id: r.id,
            data_stream: r.data_stream,
            timestamp: from_ms(r.ts),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct DataStreamRow {
    name: String,
    created_at: i64,
    documents: i64,
    size_bytes: i64,
    last_event: Option<i64>,
}

impl From<DataStreamRow> for flotilla_store::DataStreamStats {
    fn from(r: DataStreamRow) -> Self {
        flotilla_store::DataStreamStats {
            name: r.name,
            documents: r.documents.max(0) as u64,
            size_bytes: r.size_bytes.max(0) as u64,
            last_event: r.last_event.map(from_ms),
            created_at: from_ms(r.created_at),
        }
    }
}
