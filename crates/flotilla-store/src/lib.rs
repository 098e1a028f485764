//! The storage interface.
//!
//! [`Store`] is the one contract every engine implements; services depend on
//! it and nothing else. Records are domain types; engines convert their rows.
//!
//! Architecture invariant: this crate knows no SQL and no engine. Its
//! [`conformance`] module holds the cases every engine must pass.

#![warn(unreachable_pub)]

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use flotilla_domain::action::{Action, ActionType, AgentActionStatus};
use flotilla_domain::agent::{Agent, AgentStatus};
use flotilla_domain::apikey::OperatorApiKey;
use flotilla_domain::enrollment::EnrollmentApiKey;
use flotilla_domain::output::{NewOutput, Output, OutputUpdate};
use flotilla_domain::package_policy::{NewPackagePolicy, PackagePolicy};
use flotilla_domain::policy::{AgentPolicy, AgentPolicyUpdate, NewAgentPolicy};

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod connectors;
pub mod sessions;
pub mod tasks;

pub use connectors::{
    ConnectorSecret, ConnectorStore, ConnectorUpdate, NewConnector, VerificationWrite,
    VerifierPolicy,
};

pub use sessions::{ConsoleSession, NewConsoleSession, SessionStore};
pub use tasks::{
    ClaimRequest, KeyProvider, NewTask, QueuedKey, RunOutcome, Scheduled, TaskCount, TaskFilter,
    TaskRecord, TaskRun, TaskStatus, UserScope,
};

/// What a [`StoreError::NotFound`] did not find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Output,
    AgentPolicy,
    Integration,
    EnrollmentKey,
    Agent,
    OperatorKey,
    Package,
    DataStream,
    Task,
    CloudConnector,
    Action,
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Entity::Output => "output",
            Entity::AgentPolicy => "agent policy",
            Entity::Integration => "integration",
            Entity::EnrollmentKey => "enrollment key",
            Entity::Agent => "agent",
            Entity::OperatorKey => "API key",
            Entity::Package => "package",
            Entity::DataStream => "data stream",
            Entity::Task => "task",
            Entity::CloudConnector => "cloud connector",
            Entity::Action => "action",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{entity} '{id}' not found")]
    NotFound { entity: Entity, id: String },
    /// A uniqueness rule or a concurrent change was violated; the message is
    /// safe to show to the caller.
    #[error("{0}")]
    Conflict(String),
    /// The change would take what another live record holds (a live agent's
    /// enrollment id, say); retrying will not help.
    #[error("{0}")]
    InUse(String),
    /// The enrollment key refused the enrolment in its transaction
    /// (revoked, expired or spent meanwhile); the message says which.
    #[error("{message}")]
    KeyRefused {
        why: flotilla_domain::enrollment::EnrollRefusal,
        message: String,
    },
    /// The engine could not take the lock in time; retrying may succeed.
    #[error("storage busy")]
    Busy,
    #[error("storage error: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub fn not_found(entity: Entity, id: &str) -> Self {
        StoreError::NotFound {
            entity,
            id: id.to_owned(),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// 1-based page number and page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub page: u32,
    pub per_page: u32,
}

impl Page {
    pub const MAX_PER_PAGE: u32 = 10_000;

    pub fn offset(self) -> i64 {
        i64::from(self.page.saturating_sub(1)) * i64::from(self.per_page)
    }
}

impl Default for Page {
    fn default() -> Self {
        Page {
            page: 1,
            per_page: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub total: u64,
}

#[derive(Debug, Clone, Default)]
pub struct PolicyFilter {
    /// Case-insensitive substring of the name.
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PackagePolicyFilter {
    pub policy_id: Option<String>,
    pub package_name: Option<String>,
}

/// An installed package as stored: its identity and the files Flotilla
/// keeps (path inside the package -> text). Engines do not interpret them.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPackage {
    pub name: String,
    pub version: String,
    pub title: String,
    /// `integration` or `input`.
    pub package_type: String,
    /// How it was installed: `builtin`, `upload` or `directory`.
    pub source: String,
    /// A digest of the files (the same files, the same digest).
    pub digest: String,
    pub files: std::collections::BTreeMap<String, String>,
    pub installed_at: DateTime<Utc>,
}

/// A document for the embedded output, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDocument {
    pub id: String,
    pub data_stream: String,
    pub timestamp: DateTime<Utc>,
    /// The JSON source, `@timestamp` included.
    pub source: String,
}

/// A stored document.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDocument {
    pub id: String,
    pub data_stream: String,
    pub timestamp: DateTime<Utc>,
    pub source: Value,
}

/// A data stream of the embedded output, with its figures.
#[derive(Debug, Clone, PartialEq)]
pub struct DataStreamStats {
    pub name: String,
    pub documents: u64,
    /// Bytes of stored JSON.
    pub size_bytes: u64,
    pub last_event: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// A search of one data stream, newest first unless `ascending`.
#[derive(Debug, Clone, Default)]
pub struct DocumentQuery {
    /// Inclusive.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub to: Option<DateTime<Utc>>,
    /// Case-insensitive substring of the JSON source.
    pub text: Option<String>,
    /// `field = value` on the source's top-level or dotted fields.
    pub matches: Vec<(String, String)>,
    pub ascending: bool,
}

/// Which keys `Store::find_api_keys` returns.
#[derive(Debug, Clone, Default)]
pub struct ApiKeyFilter {
    pub id: Option<String>,
    pub name: Option<String>,
    pub owner: Option<String>,
    /// Include invalidated keys.
    pub invalidated: bool,
}

/// An integration's secret, sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecret {
    pub package_policy_id: String,
    pub id: String,
    pub sealed: String,
}

/// What installing a package did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    New,
    /// The same name, version and files were installed already.
    AlreadyInstalled,
}

#[derive(Debug, Clone, Default)]
pub struct EnrollmentKeyFilter {
    pub policy_id: Option<String>,
}

/// How a policy's revision reached its agents over time: the active
/// agents by the revision they run, and when the agents on `revision` (or
/// later) got there, in buckets. Computed from when each agent's running
/// revision last changed (recorded with the ack that changed it), so
/// nothing is written per check-in and nothing is sampled.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RolloutHistory {
    /// Active agents on the policy by the revision they run (`None`: none
    /// yet), newest revision first.
    pub by_revision: Vec<(Option<i64>, u64)>,
    /// `(bucket start, agents that reached the revision in the bucket)`,
    /// oldest first, empty buckets left out. Agents that reached it before
    /// `since` are counted in the first bucket.
    pub reached: Vec<(DateTime<Utc>, u64)>,
    /// When the last agent on the revision got it.
    pub last_reached: Option<DateTime<Utc>>,
}

/// How far a policy's revision has reached its agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rollout {
    /// Active agents on the policy.
    pub agents: u64,
    /// Those that run the revision asked about, or a later one.
    pub on_revision: u64,
}

#[derive(Debug, Clone, Default)]
pub struct AgentFilter {
    pub policy_id: Option<String>,
    /// Agents the enrollment key enrolled.
    pub enrollment_api_key_id: Option<String>,
    pub status: Option<AgentStatus>,
    pub tag: Option<String>,
    /// Unenrolled agents are hidden unless asked for (or filtered by status).
    pub show_inactive: bool,
    /// A parsed `kuery` (Kibana's KQL over agent fields), with the other
    /// filters. One that names `status` shows unenrolled agents too, as the
    /// status filter does.
    pub kuery: Option<flotilla_domain::kuery::Expr>,
    /// Only agents whose last policy change failed (the overview's list).
    pub policy_change_failed: bool,
    /// The order (newest enrolment first when unset).
    pub sort: Option<flotilla_domain::agent::AgentSort>,
}

/// An agent as first recorded at enrolment.
#[derive(Debug, Clone, Default)]
pub struct NewAgent {
    pub id: String,
    pub policy_id: String,
    pub tags: Vec<String>,
    pub local_metadata: Value,
    pub enrolled_at: DateTime<Utc>,
    pub access_api_key_id: Option<String>,
    pub enrollment_id: Option<String>,
    pub replace_token_hash: Option<String>,
    pub enroll_type: Option<String>,
    pub agent_version: Option<String>,
    /// The enrollment key it enrolled with (recorded on the agent).
    pub enrollment_api_key_id: Option<String>,
}

/// What [`Store::checkin_context`] reads.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckinContext {
    pub agent: Option<FleetAgent>,
    pub key: Option<ApiKeyRecord>,
    /// The current revision of the agent's policy (`None`: no agent, or no
    /// such policy).
    pub policy_revision: Option<i64>,
    /// The agent's pending actions, as [`Store::pending_actions`].
    pub actions: Vec<Action>,
}

/// One enrolment as [`Store::enroll_agents`] takes it: what
/// [`Store::enroll_agent`] takes.
#[derive(Debug, Clone)]
pub struct Enrolment {
    pub agent: NewAgent,
    pub access_key: ApiKeyRecord,
    /// Agents (and their keys) removed in the same transaction.
    pub replace: Vec<String>,
    /// Whether and how the stored enrollment key counts this use.
    pub key_use: KeyUse,
}

/// The most agents [`Store::apply_bulk_action`] takes at once.
pub const BULK_CHUNK: usize = 500;

/// What a bulk action does to each of its agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkOperation {
    /// Move to the policy (a `POLICY_REASSIGN` the agent acknowledges).
    Reassign { policy_id: String },
    /// Ask to unenrol (an `UNENROLL` the agent acknowledges), or with
    /// `revoke` unenrol at once.
    Unenroll { revoke: bool },
    /// Add and remove tags (validated), applied by the server.
    UpdateTags {
        add: Vec<String>,
        remove: Vec<String>,
    },
    /// Deliver a `SETTINGS` action.
    Settings,
}

/// How an enrolment counts against its stored enrollment key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KeyUse {
    /// Not a stored key (a static token): nothing to count.
    #[default]
    None,
    /// A key without `max_uses`: its `uses` is raised with the enrolment
    /// (set-wise in a group commit).
    Counted(String),
    /// A key with `max_uses` (or an expiration): the enrolment commits only
    /// if a conditional update takes one use in its transaction, so the
    /// count is exact under concurrency and across instances; refused with
    /// [`StoreError::KeyRefused`] otherwise.
    Limited(String),
}

/// What the fleet protocol needs of an agent, beyond the management view.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetAgent {
    pub id: String,
    pub policy_id: String,
    pub active: bool,
    /// The revision of `policy_id` the agent acknowledged or reported.
    pub policy_revision: Option<i64>,
    pub access_api_key_id: Option<String>,
    pub output_api_key_id: Option<String>,
    /// The output key's `id:secret`, sealed (see the service's crypto).
    pub output_api_key_sealed: Option<String>,
    pub output_permissions_hash: Option<String>,
    /// The policy and revision that carried the current output key; older
    /// keys are retired once the agent runs it.
    pub output_key_policy_id: Option<String>,
    pub output_key_revision: Option<i64>,
    pub enrollment_id: Option<String>,
    pub replace_token_hash: Option<String>,
    pub last_checkin: Option<DateTime<Utc>>,
    pub audit_unenrolled_reason: Option<String>,
}

/// An API key minted by the key service. The secret is stored only as a
/// hash.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    pub kind: KeyKind,
    pub agent_id: Option<String>,
    pub secret_hash: String,
    pub role_descriptors: Value,
    pub metadata: Value,
    pub created_at: DateTime<Utc>,
    pub retire_pending: bool,
    pub invalidated_at: Option<DateTime<Utc>>,
    /// Who created it through the security API (an API key id, or
    /// `operator:<id>`); `None` for keys the fleet mints.
    pub owner: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// A key minted in an output's cluster (its id there): invalidating it
    /// locally is followed by invalidating it there.
    pub remote_output: Option<String>,
}

/// What a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// An agent's fleet credential (check-in, acks).
    Access,
    /// What an agent writes its data with.
    Output,
    /// Created through the Elasticsearch security API.
    User,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Access => "access",
            KeyKind::Output => "output",
            KeyKind::User => "user",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "access" => Some(KeyKind::Access),
            "output" => Some(KeyKind::Output),
            "user" => Some(KeyKind::User),
            _ => None,
        }
    }
}

/// A new output key for an agent, replacing (and retiring) its previous one.
#[derive(Debug, Clone)]
pub struct OutputKeyChange {
    pub key: ApiKeyRecord,
    /// The key this one replaces (`None` for the first): the change applies
    /// only if it is still the agent's current key.
    pub replaces: Option<String>,
    pub sealed_secret: String,
    pub permissions_hash: String,
    pub policy_id: String,
    pub revision: i64,
}

/// One agent's check-in, as buffered and flushed in batches.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckinRecord {
    pub agent_id: String,
    pub at: DateTime<Utc>,
    pub status: String,
    pub message: String,
    pub local_metadata: Option<Value>,
    pub components: Option<Value>,
    pub agent_version: Option<String>,
    /// The policy id and revision the agent says it runs.
    pub reported_policy: Option<(String, i64)>,
}

#[derive(Debug, Clone)]
pub struct NewAction {
    pub id: String,
    pub action_type: ActionType,
    pub data: Value,
    pub created_at: DateTime<Utc>,
    pub expiration: Option<DateTime<Utc>>,
    pub agent_ids: Vec<String>,
}

/// The outcome of acknowledging a stored action.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionAck {
    /// No such action.
    NotFound,
    /// The action exists, but not for this agent.
    OtherAgent,
    Acked {
        action_type: ActionType,
        first_time: bool,
    },
}

/// An agent runs (acknowledged or reported) a revision of a policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RunsPolicy {
    pub agent_id: String,
    pub policy_id: String,
    pub revision: i64,
}

/// A change other server instances' waiters may care about. Delivered
/// in-process for SQLite and through LISTEN/NOTIFY for PostgreSQL; treat it
/// as a hint and re-read the store. Which waiting polls an event wakes is
/// decided by the service's waiter index (`fleet::Waiters::dispatch`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoreEvent {
    /// A policy got a new revision; `None` means possibly any policy.
    PolicyChanged { policy_id: Option<String> },
    /// New actions for these agents; `None` means possibly any agent.
    ActionsCreated { agent_ids: Option<Vec<String>> },
    /// Something about this agent changed (reassigned, unenrolled).
    AgentChanged { agent_id: String },
    /// A task became due (scheduled, run soon, enabled): task managers
    /// claim now instead of at their next poll.
    TasksDue,
    /// Events may have been missed: everyone re-reads.
    Resync,
}

/// The task manager's storage (part of [`Store`]).
#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Create the task, or — its id taken by a task of the same type — keep
    /// that one, updating its interval in place when `new` has one and it
    /// is idle. Another type under the id is a conflict. Publishes
    /// [`StoreEvent::TasksDue`].
    async fn schedule_task(&self, new: &NewTask, now: DateTime<Utc>) -> Result<Scheduled>;
    async fn get_task(&self, id: &str) -> Result<TaskRecord>;
    async fn list_tasks(&self, filter: &TaskFilter, page: Page) -> Result<Paged<TaskRecord>>;
    /// Delete these tasks (the ones that exist: their ids are returned) and
    /// queue every key they hold, in the same transaction — read from the
    /// key-id columns, so a task whose sealed keys cannot be opened still
    /// gives its keys up.
    async fn delete_tasks(&self, ids: &[String], now: DateTime<Utc>) -> Result<Vec<String>>;
    /// Make an idle or failed task due now (a failed one starts its
    /// attempts afresh). A running task is a conflict.
    async fn run_task_soon(&self, id: &str, now: DateTime<Utc>) -> Result<TaskRecord>;
    /// Enable or disable; returns the ids that exist.
    async fn set_tasks_enabled(
        &self,
        ids: &[String],
        enabled: bool,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>>;
    /// Claim due tasks — idle ones past `run_at`, running ones past their
    /// lease — in due order, as many as fit the capacity, in one statement;
    /// each claim counts an attempt and writes its audit row.
    async fn claim_tasks(&self, req: &ClaimRequest) -> Result<Vec<TaskRecord>>;
    /// Extend the leases of runs this owner still holds; returns their
    /// claim tokens (a missing one was taken over or deleted).
    async fn extend_task_leases(
        &self,
        owner: &str,
        tokens: &[String],
        until: DateTime<Utc>,
    ) -> Result<Vec<String>>;
    /// Write a run's outcome if its claim still holds (`false`: the lease
    /// was taken over or the task deleted, and nothing but the audit row
    /// changed).
    async fn finish_task_run(
        &self,
        id: &str,
        claim_token: &str,
        outcome: &RunOutcome,
        now: DateTime<Utc>,
        duration_ms: i64,
    ) -> Result<bool>;
    /// The audit trail, newest first (one task's, or all).
    async fn task_runs(&self, task_id: Option<&str>, limit: u32) -> Result<Vec<TaskRun>>;
    async fn prune_task_runs(&self, before: DateTime<Utc>) -> Result<u64>;
    async fn task_counts(&self, now: DateTime<Utc>) -> Result<Vec<TaskCount>>;
    /// Queue keys for invalidation (queued again: kept once).
    async fn queue_keys_for_invalidation(
        &self,
        keys: &[(KeyProvider, String, Option<String>)],
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Keys queued at or before `queued_before` that no task still holds.
    async fn keys_to_invalidate(
        &self,
        queued_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<QueuedKey>>;
    /// The provider confirmed these: off the queue.
    async fn keys_invalidated(&self, provider: KeyProvider, ids: &[String]) -> Result<()>;
    /// The provider failed: kept, with the attempt counted and why.
    async fn key_invalidation_failed(
        &self,
        provider: KeyProvider,
        ids: &[String],
        error: &str,
    ) -> Result<()>;
}

#[async_trait]
pub trait Store: TaskStore + ConnectorStore + SessionStore + Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn engine(&self) -> &'static str;

    /// Cheap round trip, for health checks.
    async fn ping(&self) -> Result<()>;

    // --- outputs ---------------------------------------------------------
    /// Creates an output. If it is the default (or the first output), any
    /// previous default loses the flag and policies using the default output
    /// get a new revision.
    async fn create_output(&self, id: &str, new: &NewOutput, now: DateTime<Utc>) -> Result<Output>;
    async fn get_output(&self, id: &str) -> Result<Output>;
    async fn default_output(&self) -> Result<Option<Output>>;
    async fn list_outputs(&self, page: Page) -> Result<Paged<Output>>;
    /// Updates an output and bumps the revision of every policy that uses it.
    /// Clearing `is_default` on the default output is a conflict: exactly one
    /// output is the default once one exists.
    async fn update_output(
        &self,
        id: &str,
        update: &OutputUpdate,
        now: DateTime<Utc>,
    ) -> Result<Output>;
    /// Refused (conflict) for the default output and for outputs policies use.
    async fn delete_output(&self, id: &str) -> Result<()>;

    // --- agent policies ----------------------------------------------------
    async fn create_policy(&self, new: &NewAgentPolicy, now: DateTime<Utc>) -> Result<AgentPolicy>;
    async fn get_policy(&self, id: &str) -> Result<AgentPolicy>;
    async fn list_policies(&self, filter: &PolicyFilter, page: Page) -> Result<Paged<AgentPolicy>>;
    /// Applies the update and increments the revision, atomically.
    async fn update_policy(
        &self,
        id: &str,
        update: &AgentPolicyUpdate,
        now: DateTime<Utc>,
    ) -> Result<AgentPolicy>;
    /// Deletes the policy with its integrations and enrollment keys. Refused
    /// (conflict) while active agents are enrolled in it.
    async fn delete_policy(&self, id: &str) -> Result<()>;

    // --- package policies --------------------------------------------------
    /// Creates the integration and increments its policy's revision.
    async fn create_package_policy(
        &self,
        new: &NewPackagePolicy,
        now: DateTime<Utc>,
    ) -> Result<PackagePolicy>;
    async fn get_package_policy(&self, id: &str) -> Result<PackagePolicy>;
    async fn list_package_policies(
        &self,
        filter: &PackagePolicyFilter,
        page: Page,
    ) -> Result<Paged<PackagePolicy>>;
    /// Every integration of one policy, ordered by creation.
    async fn policy_integrations(&self, policy_id: &str) -> Result<Vec<PackagePolicy>>;
    /// Replaces the integration (same id) and increments the revision of the
    /// policy it was on and, when moved, of the policy it moves to.
    /// With `expected`, the change applies only if the integration's
    /// `updated_at` is still that (a conflict otherwise): callers that merge
    /// a partial update into what they read cannot lose another's change.
    async fn update_package_policy(
        &self,
        id: &str,
        new: &NewPackagePolicy,
        expected: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<PackagePolicy>;
    /// Deletes the integration and increments its policy's revision.
    async fn delete_package_policy(&self, id: &str, now: DateTime<Utc>) -> Result<()>;

    // --- packages ------------------------------------------------------------
    /// Installs a package. The same name and version with other files is a
    /// conflict (a version, once installed, never changes).
    async fn install_package(&self, package: &StoredPackage) -> Result<Installed>;
    async fn get_package(&self, name: &str, version: &str) -> Result<StoredPackage>;
    /// The digest of an installed version's files, if it is installed.
    async fn package_digest(&self, name: &str, version: &str) -> Result<Option<String>>;
    /// Every installed package (name, version order), without files.
    async fn list_packages(&self) -> Result<Vec<StoredPackage>>;
    /// Removes a package; refused ([`StoreError::InUse`]) while any
    /// integration uses that version. (Creating or updating an integration
    /// requires its package version to be installed, in the same
    /// transaction: [`StoreError::NotFound`] with [`Entity::Package`].)
    async fn delete_package(&self, name: &str, version: &str) -> Result<()>;
    /// The sealed secrets of every integration on a policy.
    async fn policy_secrets(&self, policy_id: &str) -> Result<Vec<SealedSecret>>;

    // --- the embedded output ----------------------------------------------------
    /// The names among `names` that exist as data streams.
    async fn existing_data_streams(&self, names: &[String]) -> Result<Vec<String>>;
    /// Store documents in one transaction (their data streams are created
    /// as needed).
    async fn insert_documents(&self, docs: &[NewDocument], now: DateTime<Utc>) -> Result<()>;
    async fn list_data_streams(&self) -> Result<Vec<DataStreamStats>>;
    /// The data streams' names (cheap: no figures).
    async fn data_stream_names(&self) -> Result<Vec<String>>;
    async fn search_documents(
        &self,
        data_stream: &str,
        query: &DocumentQuery,
        page: Page,
    ) -> Result<Paged<StoredDocument>>;
    /// Delete at most `limit` of a data stream's documents older than
    /// `before` (oldest first); how many went.
    async fn delete_documents_before(
        &self,
        data_stream: &str,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64>;

    // --- keys in an existing cluster -------------------------------------------
    /// Set (or clear) the sealed credential agents' keys are managed with
    /// in the output's cluster; bumps the policies on the output.
    async fn set_output_key_credential(
        &self,
        output_id: &str,
        sealed: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Output>;
    async fn output_key_credential(&self, output_id: &str) -> Result<Option<String>>;
    /// The policy change an agent acked with an error: `{policy_id,
    /// revision, message, at}` (cleared when it acks a later revision).
    async fn record_policy_change_failure(&self, agent_id: &str, failure: &Value) -> Result<()>;
    /// Why the agent's key could not be minted (cleared by `set_output_key`).
    async fn set_output_key_error(&self, agent_id: &str, error: &str) -> Result<()>;
    /// Keys invalidated here that their cluster has not confirmed:
    /// (key id, output id).
    async fn remote_keys_to_invalidate(&self, limit: u32) -> Result<Vec<(String, String)>>;
    async fn mark_remote_invalidated(&self, ids: &[String], now: DateTime<Utc>) -> Result<()>;

    // --- keys created through the security API ------------------------------
    async fn find_api_keys(&self, filter: &ApiKeyFilter) -> Result<Vec<ApiKeyRecord>>;

    // --- enrollment keys -----------------------------------------------------
    /// Stores a key whose secret is known only by `token_hash`.
    async fn create_enrollment_key(
        &self,
        key: &EnrollmentApiKey,
        token_hash: &str,
    ) -> Result<EnrollmentApiKey>;
    async fn get_enrollment_key(&self, id: &str) -> Result<EnrollmentApiKey>;
    async fn list_enrollment_keys(
        &self,
        filter: &EnrollmentKeyFilter,
        page: Page,
    ) -> Result<Paged<EnrollmentApiKey>>;
    async fn find_enrollment_key_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<EnrollmentApiKey>>;
    async fn revoke_enrollment_key(&self, id: &str) -> Result<EnrollmentApiKey>;

    // --- agents ----------------------------------------------------------------
    async fn insert_agent(&self, agent: &NewAgent) -> Result<Agent>;
    /// `now` is the clock status is derived against.
    async fn get_agent(&self, id: &str, now: DateTime<Utc>) -> Result<Agent>;
    async fn list_agents(
        &self,
        filter: &AgentFilter,
        page: Page,
        now: DateTime<Utc>,
    ) -> Result<Paged<Agent>>;
    /// A policy's rollout: its active agents, and how many of them run
    /// `revision` or later (two counts, one statement).
    async fn policy_rollout(&self, policy_id: &str, revision: i64) -> Result<Rollout>;
    /// [`RolloutHistory`] of `revision` from `since`, in at most `buckets`
    /// equal buckets up to the last agent that reached it.
    async fn policy_rollout_history(
        &self,
        policy_id: &str,
        revision: i64,
        since: DateTime<Utc>,
        buckets: u32,
    ) -> Result<RolloutHistory>;
    async fn set_agent_tags(&self, id: &str, tags: &[String], now: DateTime<Utc>) -> Result<Agent>;
    /// Moves an active agent to another policy; its reported revision is reset.
    async fn reassign_agent(&self, id: &str, policy_id: &str, now: DateTime<Utc>) -> Result<Agent>;
    /// Records that unenrolment was requested and stores the `UNENROLL`
    /// action that tells the agent, in one transaction (neither without the
    /// other).
    async fn start_agent_unenrollment(
        &self,
        id: &str,
        action: &NewAction,
        now: DateTime<Utc>,
    ) -> Result<Agent>;

    // --- fleet protocol: agents -------------------------------------------------
    /// Subscribe to change events (see [`StoreEvent`]).
    /// An agent silent this long counts as `offline` in every query that
    /// derives status (default [`flotilla_domain::agent::OFFLINE_AFTER_SECS`]).
    fn set_offline_after(&self, after: std::time::Duration);
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<StoreEvent>;
    async fn get_fleet_agent(&self, id: &str) -> Result<Option<FleetAgent>>;
    /// An agent and an API key, as one read (an agent request authenticates
    /// with its access key on every call): each `None` when missing.
    async fn fleet_agent_and_key(
        &self,
        agent_id: &str,
        key_id: &str,
    ) -> Result<(Option<FleetAgent>, Option<ApiKeyRecord>)> {
        Ok((
            self.get_fleet_agent(agent_id).await?,
            self.get_api_key(key_id).await?,
        ))
    }
    /// What a check-in reads first, as one read: [`Store::fleet_agent_and_key`]
    /// and, when the agent exists, [`Store::checkin_reads`] of the policy
    /// its record names. (A steady check-in then reads nothing more.)
    async fn checkin_context(
        &self,
        agent_id: &str,
        key_id: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<CheckinContext> {
        let (agent, key) = self.fleet_agent_and_key(agent_id, key_id).await?;
        let (policy_revision, actions) = match &agent {
            Some(a) => self.checkin_reads(&a.id, &a.policy_id, now, limit).await?,
            None => (None, Vec::new()),
        };
        Ok(CheckinContext {
            agent,
            key,
            policy_revision,
            actions,
        })
    }
    /// Records a newly enrolled agent with its access key, atomically; the
    /// policy must exist (`NotFound` otherwise, and nothing is written).
    /// The agents in `replace` (and their keys) are removed in the same
    /// transaction, and so is another active agent with the same
    /// `enrollment_id` that never checked in (on the same policy); any other
    /// active holder of the enrollment id refuses the enrolment (`InUse`).
    /// At most one active agent holds an enrollment id; a concurrent
    /// enrolment that would break that is a conflict.
    async fn enroll_agent(
        &self,
        agent: &NewAgent,
        access_key: &ApiKeyRecord,
        replace: &[String],
    ) -> Result<Agent>;
    /// [`Store::enroll_agent`] for many, each counted against its
    /// enrollment key as its [`KeyUse`] says (`enroll_agent` counts nothing)
    /// (group commit: a fleet enrolling at
    /// once is a few writes per batch, not one transaction each). Each
    /// one's outcome in the order given, with the error `enroll_agent` would
    /// give; one refused costs the others nothing. An `Err` means nothing
    /// was written for the enrolments the engine wrote together (the
    /// caller retries them one by one).
    async fn enroll_agents(&self, items: &[Enrolment]) -> Result<Vec<Result<()>>>;
    /// Applies a batch of buffered check-ins in one transaction; inactive or
    /// missing agents are skipped.
    async fn record_checkins(&self, batch: &[CheckinRecord]) -> Result<()>;
    /// Installs a new output key for the agent; its previous output key is
    /// marked for retirement (still valid until retired).
    /// A conflict when the key it replaces is no longer the agent's
    /// current one (another rotation won) or the agent is inactive.
    async fn set_output_key(&self, agent_id: &str, change: &OutputKeyChange) -> Result<()> {
        let one = [(agent_id.to_owned(), change.clone())];
        match self.set_output_keys(&one).await?.pop() {
            Some(true) => Ok(()),
            _ => Err(StoreError::Conflict(format!(
                "agent '{agent_id}' is inactive or its output key changed concurrently"
            ))),
        }
    }
    /// [`Store::set_output_key`] for many agents in one transaction (group
    /// commit: a fleet rotating its keys after a change is one write per
    /// batch). Whether each change was installed, in the order given; one
    /// that lost its compare-and-swap writes nothing and costs the others
    /// nothing. Rows are locked in agent-id order.
    async fn set_output_keys(&self, changes: &[(String, OutputKeyChange)]) -> Result<Vec<bool>>;
    /// The agent's policy (at `revision`) sends to an output that takes no
    /// key: the agent's current output key `key_id` stops being current and
    /// is retired like a replaced one — once the agent runs `revision`, or
    /// at once if it already does. False (nothing changed) when `key_id` is
    /// no longer the agent's current key.
    async fn retire_output_key(
        &self,
        agent_id: &str,
        key_id: &str,
        policy_id: &str,
        revision: i64,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    /// The agent acknowledged or reported running `revision` of `policy_id`:
    /// record it (if newer, for its current policy) and invalidate output
    /// keys marked for retirement once it runs the revision that replaced
    /// them. Returns the invalidated key ids.
    async fn agent_runs_policy(
        &self,
        agent_id: &str,
        policy_id: &str,
        revision: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        let one = [RunsPolicy {
            agent_id: agent_id.to_owned(),
            policy_id: policy_id.to_owned(),
            revision,
        }];
        Ok(self
            .agents_run_policies(&one, now)
            .await?
            .pop()
            .unwrap_or_default())
    }
    /// [`Store::agent_runs_policy`] for many agents in one transaction
    /// (group commit: a fleet acking a change at once is one write per
    /// batch, not per agent); the invalidated key ids, in the order given.
    async fn agents_run_policies(
        &self,
        runs: &[RunsPolicy],
        now: DateTime<Utc>,
    ) -> Result<Vec<Vec<String>>>;
    /// Unenrols the agent now: inactive, every key invalidated.
    async fn unenroll_now(&self, agent_id: &str, now: DateTime<Utc>) -> Result<()>;
    /// Records the agent's own report that it was uninstalled (or similar).
    /// A second `orphaned` report is a conflict.
    async fn audit_unenroll(
        &self,
        agent_id: &str,
        reason: &str,
        time: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<()>;

    // --- key service -----------------------------------------------------------
    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<()>;
    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>>;
    /// Invalidates the keys (idempotent); returns how many were still valid.
    async fn invalidate_api_keys(&self, ids: &[String], now: DateTime<Utc>) -> Result<u64>;

    // --- actions ---------------------------------------------------------------
    /// Stores the action for its agents and notifies their waiters.
    async fn create_action(&self, action: &NewAction) -> Result<Action>;
    /// Delete actions (with their per-agent results) created before
    /// `created_before`, or expired before `expired_before`; how many.
    async fn expire_actions(
        &self,
        created_before: DateTime<Utc>,
        expired_before: DateTime<Utc>,
    ) -> Result<u64>;
    /// Unexpired actions for the agent that it has neither confirmed
    /// receiving (through an ack token) nor acknowledged, oldest first.
    async fn pending_actions(
        &self,
        agent_id: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Action>>;
    /// What a check-in reads each time it looks for something owed: the
    /// current revision of the agent's policy (`None`: no such policy) and
    /// [`Store::pending_actions`], as one read.
    async fn checkin_reads(
        &self,
        agent_id: &str,
        policy_id: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<(Option<i64>, Vec<Action>)> {
        let revision = match self.get_policy(policy_id).await {
            Ok(p) => Some(p.revision),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok((revision, self.pending_actions(agent_id, now, limit).await?))
    }
    /// Records that these actions went out in a response with `token`.
    async fn mark_delivered(
        &self,
        agent_id: &str,
        action_ids: &[String],
        token: &str,
    ) -> Result<()>;
    /// The agent sent `token` back: what was delivered with it arrived.
    async fn confirm_delivery(&self, agent_id: &str, token: &str) -> Result<()>;
    /// The agent's actions, newest first, with their delivery and ack state.
    async fn agent_actions(&self, agent_id: &str, page: Page) -> Result<Paged<AgentActionStatus>>;
    /// Apply a bulk action to one chunk of agents (at most
    /// [`BULK_CHUNK`]) in one transaction: each gets a target row of the
    /// action (created before, with no agents), and the operation where it
    /// applies. An agent it cannot apply to (missing, unenrolled, already
    /// on the policy) gets a failed target with the reason; one applied by
    /// the server itself (tags, a revoking unenrolment) an acked target;
    /// the rest wait for the agent. How many it applied to.
    async fn apply_bulk_action(
        &self,
        action_id: &str,
        op: &BulkOperation,
        agent_ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<u64>;
    /// The ids of the agents the filter selects, in id order after
    /// `after`, at most `limit` (keyset paging: a bulk action by query
    /// reads the fleet a chunk at a time).
    async fn agent_ids(
        &self,
        filter: &AgentFilter,
        after: Option<&str>,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>>;
    /// Actions newest first with their agents' progress.
    async fn action_progress(
        &self,
        page: Page,
        now: DateTime<Utc>,
    ) -> Result<Paged<flotilla_domain::action::ActionProgress>>;
    /// One action's progress.
    async fn get_action_progress(
        &self,
        action_id: &str,
        now: DateTime<Utc>,
    ) -> Result<flotilla_domain::action::ActionProgress>;
    /// How many agents (unenrolled ones too; of one policy, when given)
    /// are in each derived status at `now`, in one read.
    async fn agent_status_counts(
        &self,
        policy_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Vec<(flotilla_domain::agent::AgentStatus, u64)>>;
    /// Record a status sample unless one for its interval (`at`) exists:
    /// whether this call wrote it.
    async fn record_status_sample(
        &self,
        sample: &flotilla_domain::status_history::StatusSample,
    ) -> Result<bool>;
    /// Samples from `from` to `to` (inclusive), oldest first, at most
    /// `limit` (the newest ones when there are more).
    async fn status_history(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<flotilla_domain::status_history::StatusSample>>;
    /// Delete samples older than `before`; how many went.
    async fn prune_status_history(&self, before: DateTime<Utc>) -> Result<u64>;
    /// One action's agents and their outcomes, in agent id order.
    async fn action_targets(
        &self,
        action_id: &str,
        page: Page,
    ) -> Result<Paged<flotilla_domain::action::ActionTarget>>;
    /// Records the agent's acknowledgement (idempotent).
    async fn ack_action(
        &self,
        agent_id: &str,
        action_id: &str,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<ActionAck>;

    // --- operator API keys -----------------------------------------------------
    /// Stores a key known only by `key_hash`. A duplicate name or hash is a
    /// conflict.
    async fn create_operator_key(
        &self,
        key: &OperatorApiKey,
        key_hash: &str,
    ) -> Result<OperatorApiKey>;
    /// Finds an active key by hash.
    async fn find_operator_key_by_hash(&self, key_hash: &str) -> Result<Option<OperatorApiKey>>;
    async fn list_operator_keys(&self, page: Page) -> Result<Paged<OperatorApiKey>>;
    /// Makes the key with this hash active again; whether one exists.
    async fn activate_operator_key(&self, key_hash: &str) -> Result<bool>;
    /// How many keys are active.
    async fn active_operator_keys(&self) -> Result<u64>;
    async fn revoke_operator_key(&self, id: &str) -> Result<OperatorApiKey>;
}
