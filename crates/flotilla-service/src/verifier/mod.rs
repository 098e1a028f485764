//! The permission verifier: two tasks on the task manager that find out,
//! before data goes missing, whether each cloud connector's credentials
//! hold what the integrations using it need.
//!
//! `fleet:verify_permissions` (`verify.rs`) cleans up expired verifier
//! policies, keeps one verification in flight, and deploys a short-lived
//! verifier policy for the first connector that is due, to an agent that
//! runs the verifier; `fleet:verifier_status` (`status.rs`) folds the
//! documents that agent writes into the connector.

mod status;
mod verify;

use std::time::Duration;

use serde_json::json;

use flotilla_api::management::ReassignAgent;
use flotilla_domain::agent::{Agent, AgentStatus};
use flotilla_domain::connector::VerifierWindows;
use flotilla_store::{AgentFilter, Page, StoreError};

pub use status::VerifierStatus;
pub use verify::VerifyPermissions;

use crate::{ServiceError, Services};

pub const VERIFY_TASK: &str = "fleet:verify_permissions";
pub const STATUS_TASK: &str = "fleet:verifier_status";
/// Where verifier agents write their results (pinned: the package's one
/// data stream in the `default` namespace).
pub const DATA_STREAM: &str = "logs-flotilla_verifier.permission-default";
pub const PACKAGE: &str = "flotilla_verifier";

/// Cloud API endpoints the verifier calls (`None`: the real ones).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Endpoints {
    pub aws_sts: Option<String>,
    pub aws_iam: Option<String>,
    pub aws_region: Option<String>,
    pub azure_login: Option<String>,
    pub azure_management: Option<String>,
    pub gcp_sts: Option<String>,
    pub gcp_iamcredentials: Option<String>,
    pub gcp_resourcemanager: Option<String>,
}

/// What the verifier is configured with.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    pub windows: VerifierWindows,
    /// A verifier policy lives this long.
    pub ttl: Duration,
    /// After a verifier policy's TTL, the next verification waits this
    /// much longer (its documents may still be arriving).
    pub grace: Duration,
    pub verify_interval: Duration,
    pub status_interval: Duration,
    /// Agents enrolled with this tag run verifier policies.
    pub agent_tag: String,
    /// Where idle verifier agents wait.
    pub home_policy_id: String,
    /// The output verifier policies write to (`None`: the default).
    pub output_id: Option<String>,
    pub endpoints: Endpoints,
    /// `auto`, `api` or `local` (AWS: IAM's simulation, or a local
    /// evaluation of the role's policies).
    pub simulation: String,
    /// Integrations read per run (Kibana: 25).
    pub max_integrations: u32,
    /// Tests only: `after_policy_created` fails a deployment right after
    /// the verifier policy was created.
    pub test_fault: Option<String>,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        VerifierConfig {
            windows: VerifierWindows::default(),
            ttl: Duration::from_secs(300),
            grace: Duration::from_secs(30),
            verify_interval: Duration::from_secs(3600),
            status_interval: Duration::from_secs(60),
            agent_tag: "flotilla-verifier".into(),
            home_policy_id: "flotilla-verifier".into(),
            output_id: None,
            endpoints: Endpoints::default(),
            simulation: "auto".into(),
            max_integrations: 1000,
            test_fault: None,
        }
    }
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The policy idle verifier agents are enrolled into (made at start).
pub async fn ensure_home_policy(
    services: &Services,
    cfg: &VerifierConfig,
) -> Result<(), ServiceError> {
    match services.store.get_policy(&cfg.home_policy_id).await {
        Ok(_) => return Ok(()),
        Err(StoreError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let req = flotilla_api::management::CreateAgentPolicy {
        id: Some(cfg.home_policy_id.clone()),
        name: "Flotilla permission verifier".into(),
        namespace: None,
        description: Some(
            "Idle verifier agents wait here; each verification moves one to a short-lived verifier policy."
                .into(),
        ),
        output_id: cfg.output_id.clone(),
        inactivity_timeout: None,
    };
    match services.management().create_policy(req).await {
        Ok(_) | Err(ServiceError::Conflict(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// An online verifier agent waiting on the home policy, the most recently
/// seen first.
pub(crate) async fn idle_verifier_agent(
    services: &Services,
    cfg: &VerifierConfig,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<Agent>, ServiceError> {
    let page = services
        .store
        .list_agents(
            &AgentFilter {
                policy_id: Some(cfg.home_policy_id.clone()),
                tag: Some(cfg.agent_tag.clone()),
                ..Default::default()
            },
            Page {
                page: 1,
                per_page: 100,
            },
            now,
        )
        .await?;
    Ok(page
        .items
        .into_iter()
        .filter(|a| {
            a.active
                && matches!(
                    a.status,
                    AgentStatus::Online | AgentStatus::Degraded | AgentStatus::Error
                )
        })
        .max_by_key(|a| a.last_checkin))
}

/// Remove a verifier policy with everything deployed for it: its agents
/// go back to the home policy, then the policy (its integration, its
/// secrets and its verifier record with it) is deleted. Idempotent.
pub(crate) async fn teardown(
    services: &Services,
    cfg: &VerifierConfig,
    policy_id: &str,
) -> Result<(), ServiceError> {
    let m = services.management();
    let now = chrono::Utc::now();
    // An operator may have removed it; agents need somewhere to go.
    ensure_home_policy(services, cfg).await?;
    let agents = services
        .store
        .list_agents(
            &AgentFilter {
                policy_id: Some(policy_id.to_owned()),
                ..Default::default()
            },
            Page {
                page: 1,
                per_page: 1000,
            },
            now,
        )
        .await?;
    for a in agents.items.iter().filter(|a| a.active) {
        match m
            .reassign_agent(
                &a.id,
                ReassignAgent {
                    policy_id: cfg.home_policy_id.clone(),
                },
            )
            .await
        {
            Ok(_) | Err(ServiceError::Conflict(_)) | Err(ServiceError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    match m.delete_policy(policy_id).await {
        Ok(()) | Err(ServiceError::NotFound(_)) => {
            tracing::info!(policy = %policy_id, "removed a verifier policy");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The verifier integration's variables for one connector.
pub(crate) fn endpoint_vars(e: &Endpoints) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    for (k, v) in [
        ("sts_endpoint", &e.aws_sts),
        ("iam_endpoint", &e.aws_iam),
        ("default_region", &e.aws_region),
        ("login_endpoint", &e.azure_login),
        ("management_endpoint", &e.azure_management),
        ("gcp_sts_endpoint", &e.gcp_sts),
        ("iamcredentials_endpoint", &e.gcp_iamcredentials),
        ("resourcemanager_endpoint", &e.gcp_resourcemanager),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), json!(v));
        }
    }
    m
}
