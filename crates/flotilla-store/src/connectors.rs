//! Cloud connectors, their sealed secrets, and the verifier policies the
//! permission verifier deploys for them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use flotilla_domain::connector::{
    AccountType, CloudConnector, CloudProvider, PermissionSummary, VerificationStatus,
};
use flotilla_domain::package_policy::PackagePolicy;
use flotilla_domain::policy::{AgentPolicy, NewAgentPolicy};

use crate::{Page, Paged, Result};

/// A secret sealed by the service (its id, as the connector's variables
/// reference it, and the sealed text).
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectorSecret {
    pub id: String,
    pub sealed: String,
}

#[derive(Debug, Clone)]
pub struct NewConnector {
    pub id: String,
    pub name: String,
    pub cloud_provider: CloudProvider,
    pub account_type: Option<AccountType>,
    pub namespace: Option<String>,
    pub vars: Map<String, Value>,
    pub secrets: Vec<ConnectorSecret>,
}

/// A validated update: the whole new variables, the secrets they add and
/// those they no longer reference.
#[derive(Debug, Clone, Default)]
pub struct ConnectorUpdate {
    pub name: Option<String>,
    pub account_type: Option<Option<AccountType>>,
    pub vars: Option<Map<String, Value>>,
    pub add_secrets: Vec<ConnectorSecret>,
    pub drop_secrets: Vec<String>,
    /// Refuse with a conflict when the connector changed since.
    pub read_at: Option<DateTime<Utc>>,
}

/// Verification fields to write; `None` leaves one as it is. Never moves
/// `updated_at` (eligibility reads it as "changed by a user").
#[derive(Debug, Clone, Default)]
pub struct VerificationWrite {
    pub status: Option<Option<VerificationStatus>>,
    pub started_at: Option<Option<DateTime<Utc>>>,
    pub failed_at: Option<Option<DateTime<Utc>>>,
    pub verification_id: Option<Option<String>>,
    pub message: Option<Option<String>>,
    pub permissions: Option<Vec<PermissionSummary>>,
    /// Write only if the connector's current verification is this one
    /// (a result folded late never overwrites a newer verification).
    pub if_verification: Option<String>,
}

/// A short-lived policy deployed to verify one connector.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifierPolicy {
    pub policy_id: String,
    pub connector_id: String,
    pub verification_id: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[async_trait]
pub trait ConnectorStore: Send + Sync {
    async fn create_connector(
        &self,
        new: &NewConnector,
        now: DateTime<Utc>,
    ) -> Result<CloudConnector>;
    async fn get_connector(&self, id: &str) -> Result<CloudConnector>;
    async fn list_connectors(&self, page: Page) -> Result<Paged<CloudConnector>>;
    async fn update_connector(
        &self,
        id: &str,
        update: &ConnectorUpdate,
        now: DateTime<Utc>,
    ) -> Result<CloudConnector>;
    /// Refused with `InUse` while an integration references it.
    async fn delete_connector(&self, id: &str) -> Result<()>;
    async fn connector_secrets(&self, id: &str) -> Result<Vec<ConnectorSecret>>;
    async fn write_verification(&self, id: &str, write: &VerificationWrite) -> Result<bool>;
    /// Integrations that reference a connector, oldest first, at most `limit`.
    async fn connector_integrations(&self, limit: u32) -> Result<Vec<PackagePolicy>>;
    /// The agent policy and its verifier record, in one transaction.
    async fn create_verifier_policy(
        &self,
        policy: &NewAgentPolicy,
        verifier: &VerifierPolicy,
        now: DateTime<Utc>,
    ) -> Result<AgentPolicy>;
    async fn verifier_policies(&self) -> Result<Vec<VerifierPolicy>>;
}
