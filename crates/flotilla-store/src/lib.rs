//! The storage interface.
//!
//! [`Store`] is the one contract every engine implements; services depend on
//! it and nothing else. Records are domain types; engines convert their rows.
//!
//! Architecture invariant: this crate knows no SQL and no engine. Its
//! [`conformance`] module holds the cases every engine must pass.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use flotilla_domain::agent::{Agent, AgentStatus};
use flotilla_domain::apikey::OperatorApiKey;
use flotilla_domain::enrollment::EnrollmentApiKey;
use flotilla_domain::output::{NewOutput, Output, OutputUpdate};
use flotilla_domain::package_policy::{NewPackagePolicy, PackagePolicy};
use flotilla_domain::policy::{AgentPolicy, AgentPolicyUpdate, NewAgentPolicy};

pub mod conformance;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    /// A uniqueness rule or a concurrent change was violated; the message is
    /// safe to show to the caller.
    #[error("{0}")]
    Conflict(String),
    /// The engine could not take the lock in time; retrying may succeed.
    #[error("storage busy")]
    Busy,
    #[error("storage error: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
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

#[derive(Debug, Clone, Default)]
pub struct EnrollmentKeyFilter {
    pub policy_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AgentFilter {
    pub policy_id: Option<String>,
    pub status: Option<AgentStatus>,
    pub tag: Option<String>,
    /// Unenrolled agents are hidden unless asked for (or filtered by status).
    pub show_inactive: bool,
}

/// An agent as first recorded at enrolment.
#[derive(Debug, Clone)]
pub struct NewAgent {
    pub id: String,
    pub policy_id: String,
    pub tags: Vec<String>,
    pub local_metadata: Value,
    pub enrolled_at: DateTime<Utc>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
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
    async fn update_package_policy(
        &self,
        id: &str,
        new: &NewPackagePolicy,
        now: DateTime<Utc>,
    ) -> Result<PackagePolicy>;
    /// Deletes the integration and increments its policy's revision.
    async fn delete_package_policy(&self, id: &str, now: DateTime<Utc>) -> Result<()>;

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
    async fn set_agent_tags(&self, id: &str, tags: &[String], now: DateTime<Utc>) -> Result<Agent>;
    /// Moves an active agent to another policy; its reported revision is reset.
    async fn reassign_agent(&self, id: &str, policy_id: &str, now: DateTime<Utc>) -> Result<Agent>;
    /// Records that unenrolment was requested (the agent will be told).
    async fn start_agent_unenrollment(&self, id: &str, now: DateTime<Utc>) -> Result<Agent>;
    /// Marks the agent unenrolled: inactive from now on.
    async fn mark_agent_unenrolled(&self, id: &str, now: DateTime<Utc>) -> Result<Agent>;

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
    async fn revoke_operator_key(&self, id: &str) -> Result<OperatorApiKey>;
}
