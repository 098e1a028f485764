//! The management use cases: outputs, agent policies, integrations,
//! enrollment keys, agents and operator API keys.

use chrono::Utc;
use serde_json::json;

use flotilla_domain::action::{Action, ActionType};
use flotilla_store::NewAction;
use secrecy::{ExposeSecret, SecretString};

use flotilla_domain::agent::{validate_tags, Agent, AgentStatus};
use flotilla_domain::apikey::OperatorApiKey;
use flotilla_domain::enrollment::EnrollmentApiKey;
use flotilla_domain::output::{self, NewOutput, Output, OutputUpdate};
use flotilla_domain::package_policy::{
    self, InputRequest, NewPackagePolicy, PackagePolicy, PackageRef, StreamRequest,
};
use flotilla_domain::policy::{
    self, AgentPolicy, AgentPolicyUpdate, NewAgentPolicy, DEFAULT_INACTIVITY_TIMEOUT_SECS,
};
use flotilla_domain::{validate_id, ValidationError};
use flotilla_store::{
    AgentFilter, EnrollmentKeyFilter, Entity, PackagePolicyFilter, Page, Paged, PolicyFilter,
    StoreError,
};

use crate::secrets::{hash_token, NewToken};
use crate::{ServiceError, Services};
use flotilla_api::management::*;

type Result<T> = std::result::Result<T, ServiceError>;

/// The id of the output created on first start.
pub const DEFAULT_OUTPUT_ID: &str = "fleet-default-output";
/// The name of the operator key generated on first start.
pub const BOOTSTRAP_KEY_NAME: &str = "bootstrap-admin";
const ENV_KEY_PREFIX: &str = "env-admin-";

fn new_id(requested: Option<&str>, field: &str) -> Result<String> {
    match requested {
        Some(id) => {
            validate_id(field, id)?;
            Ok(id.to_owned())
        }
        None => Ok(uuid::Uuid::new_v4().to_string()),
    }
}

fn optional_text(field: &str, value: Option<&str>, max: usize) -> Result<Option<String>> {
    match value {
        None => Ok(None),
        Some(v) if v.chars().count() > max => {
            Err(ValidationError::new(field, format!("must be at most {max} characters")).into())
        }
        Some(v) => Ok(Some(v.to_owned())),
    }
}

pub struct Management<'a> {
    pub(crate) services: &'a Services,
}

impl Management<'_> {
    fn store(&self) -> &dyn flotilla_store::Store {
        &*self.services.store
    }

    // --- bootstrap -------------------------------------------------------------

    /// First-start set-up, safe to run on every start and from several
    /// instances at once: a default output, and an operator key. Returns
    /// a generated key to show once, when one was generated.
    pub async fn bootstrap(
        &self,
        admin_key: Option<&SecretString>,
    ) -> Result<Option<SecretString>> {
        if self.store().default_output().await?.is_none() {
            let new = NewOutput {
                id: Some(DEFAULT_OUTPUT_ID.into()),
                name: "default".into(),
                output_type: output::OutputType::Elasticsearch,
                hosts: vec!["http://localhost:9200".into()],
                is_default: true,
            };
            match self
                .store()
                .create_output(DEFAULT_OUTPUT_ID, &new, Utc::now())
                .await
            {
                Ok(_) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match admin_key {
            Some(key) => {
                self.install_env_admin_key(key).await?;
                return Ok(None);
            }
            None => self.retire_env_admin_keys(None).await?,
        }
        if self.store().active_operator_keys().await? > 0 {
            return Ok(None);
        }
        let token = NewToken::generate();
        let record = OperatorApiKey {
            id: token.id.clone(),
            // Unique per start: several instances starting on an empty
            // database each print a (valid) key.
            name: format!("{BOOTSTRAP_KEY_NAME}-{}", &token.id[..8]),
            active: true,
            hint: token.hint(),
            created_at: Utc::now(),
        };
        self.store()
            .create_operator_key(&record, &token.hash())
            .await?;
        Ok(Some(token.token))
    }

    /// The key from `FLOTILLA_ADMIN_API_KEY` is valid while it is set (made
    /// active again if it was revoked); keys installed from earlier values
    /// are revoked.
    async fn install_env_admin_key(&self, key: &SecretString) -> Result<()> {
        let hash = hash_token(key.expose_secret());
        let current = if self.store().activate_operator_key(&hash).await? {
            self.store()
                .find_operator_key_by_hash(&hash)
                .await?
                .map(|k| k.id)
        } else {
            let record = OperatorApiKey {
                id: uuid::Uuid::new_v4().to_string(),
                // Random: the name is listed and must say nothing of the key.
                name: format!(
                    "{ENV_KEY_PREFIX}{}",
                    crate::secrets::random_alphanumeric(8).to_lowercase()
                ),
                active: true,
                hint: "(env)".into(),
                created_at: Utc::now(),
            };
            match self.store().create_operator_key(&record, &hash).await {
                Ok(k) => Some(k.id),
                // Another instance installed it at the same moment.
                Err(StoreError::Conflict(_)) => self
                    .store()
                    .find_operator_key_by_hash(&hash)
                    .await?
                    .map(|k| k.id),
                Err(e) => return Err(e.into()),
            }
        };
        self.retire_env_admin_keys(current.as_deref()).await
    }

    /// Revoke keys installed from `FLOTILLA_ADMIN_API_KEY` other than `keep`.
    /// With no current env key, they are revoked only while another key
    /// remains, so the server is never left without one.
    async fn retire_env_admin_keys(&self, keep: Option<&str>) -> Result<()> {
        let mut env_keys = Vec::new();
        let mut others_active = 0;
        let mut page = 1;
        loop {
            let keys = self
                .store()
                .list_operator_keys(Page {
                    page,
                    per_page: 500,
                })
                .await?;
            for k in keys.items.iter().filter(|k| k.active) {
                if k.name.starts_with(ENV_KEY_PREFIX) {
                    if Some(k.id.as_str()) != keep {
                        env_keys.push(k.id.clone());
                    }
                } else {
                    others_active += 1;
                }
            }
            if keys.items.len() < 500 {
                break;
            }
            page += 1;
        }
        if keep.is_none() && others_active == 0 && !env_keys.is_empty() {
            tracing::warn!(
                "FLOTILLA_ADMIN_API_KEY is no longer set, but its key is the only operator key: it stays valid \
                 until another key is created"
            );
            return Ok(());
        }
        for id in env_keys {
            self.store().revoke_operator_key(&id).await?;
        }
        Ok(())
    }

    // --- operator keys -------------------------------------------------------

    /// The key behind an `Authorization: ApiKey <token>` header.
    pub async fn authenticate(&self, token: &str) -> Result<OperatorApiKey> {
        self.store()
            .find_operator_key_by_hash(&hash_token(token))
            .await?
            .ok_or_else(|| ServiceError::Unauthorized("the API key is unknown or revoked".into()))
    }

    pub async fn create_operator_key(
        &self,
        req: CreateOperatorKey,
    ) -> Result<(OperatorApiKey, SecretString)> {
        let name = flotilla_domain::output::validate_name_field(&req.name)?;
        if name.starts_with(ENV_KEY_PREFIX) || name.starts_with(BOOTSTRAP_KEY_NAME) {
            return Err(ValidationError::new("name", "is reserved").into());
        }
        let token = NewToken::generate();
        let record = OperatorApiKey {
            id: token.id.clone(),
            name,
            active: true,
            hint: token.hint(),
            created_at: Utc::now(),
        };
        let key = self
            .store()
            .create_operator_key(&record, &token.hash())
            .await?;
        Ok((key, token.token))
    }

    pub async fn list_operator_keys(&self, page: Page) -> Result<Paged<OperatorApiKey>> {
        Ok(self.store().list_operator_keys(page).await?)
    }

    /// Revoke operator key `id` on behalf of the operator holding `caller`
    /// (the key the request authenticated with), which cannot revoke itself.
    pub async fn revoke_operator_key(&self, caller: &str, id: &str) -> Result<OperatorApiKey> {
        if caller == id {
            return Err(ServiceError::Conflict(
                "an API key cannot revoke itself".into(),
            ));
        }
        Ok(self.store().revoke_operator_key(id).await?)
    }

    /// Whether storage answers, and which engine it is.
    pub async fn storage_health(&self) -> std::result::Result<&'static str, ServiceError> {
        self.store().ping().await?;
        Ok(self.store().engine())
    }

    // --- outputs ---------------------------------------------------------------

    pub async fn create_output(&self, req: CreateOutput) -> Result<Output> {
        let id = new_id(req.id.as_deref(), "id")?;
        let new = NewOutput {
            id: Some(id.clone()),
            name: output::validate_name_field(&req.name)?,
            hosts: output::validate_hosts(req.output_type, &req.hosts)?,
            output_type: req.output_type,
            is_default: req.is_default,
        };
        Ok(self.store().create_output(&id, &new, Utc::now()).await?)
    }

    pub async fn get_output(&self, id: &str) -> Result<Output> {
        Ok(self.store().get_output(id).await?)
    }

    pub async fn list_outputs(&self, page: Page) -> Result<Paged<Output>> {
        Ok(self.store().list_outputs(page).await?)
    }

    pub async fn update_output(&self, id: &str, req: UpdateOutput) -> Result<Output> {
        let current = self.store().get_output(id).await?;
        let output_type = req.output_type.unwrap_or(current.output_type);
        let hosts = match (&req.hosts, req.output_type) {
            (Some(h), _) => Some(output::validate_hosts(output_type, h)?),
            // A type change must still fit the existing hosts.
            (None, Some(t)) => Some(output::validate_hosts(t, &current.hosts)?),
            (None, None) => None,
        };
        let update = OutputUpdate {
            name: req
                .name
                .as_deref()
                .map(output::validate_name_field)
                .transpose()?,
            output_type: req.output_type,
            hosts,
            is_default: req.is_default,
        };
        Ok(self.store().update_output(id, &update, Utc::now()).await?)
    }

    pub async fn delete_output(&self, id: &str) -> Result<()> {
        Ok(self.store().delete_output(id).await?)
    }

    // --- agent policies ----------------------------------------------------------

    pub async fn create_policy(&self, req: CreateAgentPolicy) -> Result<AgentPolicy> {
        let new = NewAgentPolicy {
            id: new_id(req.id.as_deref(), "id")?,
            name: policy::validate_policy_name(&req.name)?,
            namespace: policy::validate_namespace(
                "namespace",
                req.namespace.as_deref().unwrap_or("default"),
            )?,
            description: req
                .description
                .as_deref()
                .map(policy::validate_description)
                .transpose()?,
            output_id: req.output_id,
            inactivity_timeout: policy::validate_inactivity_timeout(
                req.inactivity_timeout
                    .unwrap_or(DEFAULT_INACTIVITY_TIMEOUT_SECS),
            )?,
        };
        self.store()
            .create_policy(&new, Utc::now())
            .await
            .map_err(|e| ServiceError::invalid_reference("output_id", e))
    }

    pub async fn get_policy(&self, id: &str) -> Result<AgentPolicy> {
        Ok(self.store().get_policy(id).await?)
    }

    pub async fn list_policies(
        &self,
        filter: &PolicyFilter,
        page: Page,
    ) -> Result<Paged<AgentPolicy>> {
        Ok(self.store().list_policies(filter, page).await?)
    }

    pub async fn update_policy(&self, id: &str, req: UpdateAgentPolicy) -> Result<AgentPolicy> {
        let update = AgentPolicyUpdate {
            name: req
                .name
                .as_deref()
                .map(policy::validate_policy_name)
                .transpose()?,
            namespace: req
                .namespace
                .as_deref()
                .map(|ns| policy::validate_namespace("namespace", ns))
                .transpose()?,
            description: req
                .description
                .map(|d| d.as_deref().map(policy::validate_description).transpose())
                .transpose()?,
            output_id: req.output_id,
            inactivity_timeout: req
                .inactivity_timeout
                .map(policy::validate_inactivity_timeout)
                .transpose()?,
        };
        if update.is_empty() {
            return Err(ValidationError::new("body", "names no field to change").into());
        }
        // Make sure the policy exists first: a missing policy is a 404, a
        // missing output a 400.
        self.store().get_policy(id).await?;
        if let Some(ns) = &update.namespace {
            self.check_ceiling(id, Some(ns), None, None).await?;
        }
        self.store()
            .update_policy(id, &update, Utc::now())
            .await
            .map_err(|e| ServiceError::invalid_reference("output_id", e))
    }

    pub async fn delete_policy(&self, id: &str) -> Result<()> {
        Ok(self.store().delete_policy(id).await?)
    }

    // --- integrations ------------------------------------------------------------

    fn resolve_package_policy(
        &self,
        id: String,
        req: CreatePackagePolicy,
    ) -> Result<NewPackagePolicy> {
        let catalogue = self.services.catalogue;
        let package_ref = PackageRef {
            name: req.package.name.clone(),
            version: req.package.version.clone().unwrap_or_default(),
        };
        let spec = package_policy::resolve_package(catalogue, &package_ref)?;
        let inputs = package_policy::resolve_inputs(spec, &req.vars, req.inputs.as_deref())?;
        Ok(NewPackagePolicy {
            id,
            name: package_policy::validate_package_policy_name(&req.name)?,
            description: optional_text("description", req.description.as_deref(), 4096)?,
            policy_id: req.policy_id,
            package: PackageRef {
                name: spec.name.clone(),
                version: spec.version.clone(),
            },
            namespace: package_policy::validate_optional_namespace(req.namespace.as_deref())?,
            vars: req.vars,
            inputs,
            cloud_connector_id: match req.cloud_connector_id {
                Some(c) => {
                    validate_id("cloud_connector_id", &c)?;
                    Some(c)
                }
                None => None,
            },
        })
    }

    /// Refuse a change whose resulting permissions exceed what the server
    /// may grant, naming the excess.
    async fn check_ceiling(
        &self,
        policy_id: &str,
        namespace: Option<&str>,
        changed: Option<&NewPackagePolicy>,
        removed: Option<&str>,
    ) -> Result<()> {
        let policy = match self.store().get_policy(policy_id).await {
            Ok(p) => p,
            Err(e) => return Err(ServiceError::invalid_reference("policy_id", e)),
        };
        let mut integrations = self.store().policy_integrations(policy_id).await?;
        integrations
            .retain(|pp| Some(pp.id.as_str()) != removed && Some(&pp.id) != changed.map(|c| &c.id));
        if let Some(c) = changed {
            integrations.push(PackagePolicy {
                id: c.id.clone(),
                name: c.name.clone(),
                description: c.description.clone(),
                policy_id: c.policy_id.clone(),
                package: c.package.clone(),
                namespace: c.namespace.clone(),
                vars: c.vars.clone(),
                inputs: c.inputs.clone(),
                cloud_connector_id: c.cloud_connector_id.clone(),
                created_at: Utc::now(),
                updated_at: Utc::now(),
            });
        }
        let namespace = namespace.unwrap_or(&policy.namespace);
        let perms = flotilla_domain::permissions::compute(
            namespace,
            &integrations,
            self.services.catalogue,
        );
        let excess = self.services.settings.ceiling.excess(&perms);
        if excess.is_empty() {
            return Ok(());
        }
        let listed: Vec<String> = excess
            .iter()
            .take(10)
            .map(|(i, p)| format!("{p} on {i}"))
            .collect();
        Err(ValidationError::new(
            "permissions",
            format!(
                "the policy would need privileges beyond what this server may grant: {}{}",
                listed.join(", "),
                if excess.len() > 10 {
                    format!(" (and {} more)", excess.len() - 10)
                } else {
                    String::new()
                }
            ),
        )
        .into())
    }

    pub async fn create_package_policy(&self, req: CreatePackagePolicy) -> Result<PackagePolicy> {
        let id = new_id(req.id.as_deref(), "id")?;
        let new = self.resolve_package_policy(id, req)?;
        self.check_ceiling(&new.policy_id, None, Some(&new), None)
            .await?;
        self.store()
            .create_package_policy(&new, Utc::now())
            .await
            .map_err(|e| ServiceError::invalid_reference("policy_id", e))
    }

    pub async fn get_package_policy(&self, id: &str) -> Result<PackagePolicy> {
        Ok(self.store().get_package_policy(id).await?)
    }

    pub async fn list_package_policies(
        &self,
        filter: &PackagePolicyFilter,
        page: Page,
    ) -> Result<Paged<PackagePolicy>> {
        Ok(self.store().list_package_policies(filter, page).await?)
    }

    pub async fn update_package_policy(
        &self,
        id: &str,
        req: UpdatePackagePolicy,
    ) -> Result<PackagePolicy> {
        let current = self.store().get_package_policy(id).await?;
        let read_at = current.updated_at;
        let package_changed = req
            .package
            .as_ref()
            .is_some_and(|p| p.name != current.package.name);
        // Keep the current inputs unless replaced (or the package changes,
        // in which case the new package's defaults apply).
        let inputs = match req.inputs {
            Some(inputs) => Some(inputs),
            None if package_changed => None,
            None => Some(
                current
                    .inputs
                    .iter()
                    .map(|i| InputRequest {
                        input_type: i.input_type.clone(),
                        enabled: i.enabled,
                        streams: Some(
                            i.streams
                                .iter()
                                .map(|s| StreamRequest {
                                    enabled: s.enabled,
                                    data_stream: s.data_stream.clone(),
                                    vars: s.vars.clone(),
                                })
                                .collect(),
                        ),
                    })
                    .collect(),
            ),
        };
        let merged = CreatePackagePolicy {
            id: None,
            name: req.name.unwrap_or(current.name),
            description: req.description.unwrap_or(current.description),
            policy_id: req.policy_id.unwrap_or(current.policy_id),
            package: req.package.unwrap_or(PackageRequest {
                name: current.package.name,
                version: None,
            }),
            namespace: req.namespace.unwrap_or(current.namespace),
            vars: req.vars.unwrap_or(current.vars),
            inputs,
            cloud_connector_id: req.cloud_connector_id.unwrap_or(current.cloud_connector_id),
        };
        let new = self.resolve_package_policy(id.to_owned(), merged)?;
        self.check_ceiling(&new.policy_id, None, Some(&new), None)
            .await?;
        self.store()
            .update_package_policy(id, &new, Some(read_at), Utc::now())
            .await
            .map_err(|e| match e {
                e @ StoreError::NotFound {
                    entity: Entity::AgentPolicy,
                    ..
                } => ServiceError::invalid_reference("policy_id", e),
                other => other.into(),
            })
    }

    pub async fn delete_package_policy(&self, id: &str) -> Result<()> {
        Ok(self.store().delete_package_policy(id, Utc::now()).await?)
    }

    // --- enrollment keys ---------------------------------------------------------

    /// Creates a key; the token is returned this once and never stored.
    pub async fn create_enrollment_key(
        &self,
        req: CreateEnrollmentKey,
    ) -> Result<(EnrollmentApiKey, SecretString)> {
        let token = NewToken::generate();
        let name = match req.name.as_deref() {
            Some(n) => flotilla_domain::output::validate_name_field(n)?,
            None => format!("{} ({})", token.id, req.policy_id),
        };
        let record = EnrollmentApiKey {
            id: token.id.clone(),
            name,
            policy_id: req.policy_id,
            active: true,
            hint: token.hint(),
            created_at: Utc::now(),
        };
        let key = self
            .store()
            .create_enrollment_key(&record, &token.hash())
            .await
            .map_err(|e| ServiceError::invalid_reference("policy_id", e))?;
        Ok((key, token.token))
    }

    pub async fn get_enrollment_key(&self, id: &str) -> Result<EnrollmentApiKey> {
        Ok(self.store().get_enrollment_key(id).await?)
    }

    pub async fn list_enrollment_keys(
        &self,
        filter: &EnrollmentKeyFilter,
        page: Page,
    ) -> Result<Paged<EnrollmentApiKey>> {
        Ok(self.store().list_enrollment_keys(filter, page).await?)
    }

    pub async fn revoke_enrollment_key(&self, id: &str) -> Result<EnrollmentApiKey> {
        Ok(self.store().revoke_enrollment_key(id).await?)
    }

    // --- agents --------------------------------------------------------------------

    pub async fn get_agent(&self, id: &str) -> Result<Agent> {
        Ok(self.store().get_agent(id, Utc::now()).await?)
    }

    pub async fn list_agents(&self, filter: &AgentFilter, page: Page) -> Result<Paged<Agent>> {
        Ok(self.store().list_agents(filter, page, Utc::now()).await?)
    }

    pub async fn update_agent(&self, id: &str, req: UpdateAgent) -> Result<Agent> {
        let tags = validate_tags(&req.tags)?;
        Ok(self.store().set_agent_tags(id, &tags, Utc::now()).await?)
    }

    pub async fn reassign_agent(&self, id: &str, req: ReassignAgent) -> Result<Agent> {
        Ok(self.reassign(id, &req.policy_id, None).await?.0)
    }

    /// Move the agent and record a `POLICY_REASSIGN` action for it.
    async fn reassign(
        &self,
        id: &str,
        policy_id: &str,
        expiration: Option<chrono::DateTime<Utc>>,
    ) -> Result<(Agent, Action)> {
        let req = ReassignAgent {
            policy_id: policy_id.to_owned(),
        };
        let agent = self.store().get_agent(id, Utc::now()).await?;
        if agent.policy_id == req.policy_id {
            return Err(ServiceError::Conflict(format!(
                "agent '{id}' is already assigned to policy '{}'",
                req.policy_id
            )));
        }
        let moved = self
            .store()
            .reassign_agent(id, &req.policy_id, Utc::now())
            .await
            .map_err(|e| match e {
                e @ StoreError::NotFound {
                    entity: Entity::AgentPolicy,
                    ..
                } => ServiceError::invalid_reference("policy_id", e),
                other => other.into(),
            })?;
        // The agent learns of it from the new policy (its id changed); the
        // action records the operator's intent and is acknowledged.
        let action = self
            .create_stored_action(
                id,
                ActionType::PolicyReassign,
                json!({"policy_id": req.policy_id}),
                expiration,
            )
            .await?;
        Ok((moved, action))
    }

    async fn create_stored_action(
        &self,
        agent_id: &str,
        action_type: ActionType,
        data: serde_json::Value,
        expiration: Option<chrono::DateTime<Utc>>,
    ) -> Result<Action> {
        let action = new_action(agent_id, action_type, data, expiration);
        Ok(self.store().create_action(&action).await?)
    }

    pub async fn agent_actions(
        &self,
        agent_id: &str,
        page: Page,
    ) -> Result<Paged<flotilla_domain::action::AgentActionStatus>> {
        self.store().get_agent(agent_id, Utc::now()).await?;
        Ok(self.store().agent_actions(agent_id, page).await?)
    }

    /// An action for one agent: `UNENROLL`, `SETTINGS` or `POLICY_REASSIGN`.
    pub async fn create_action(&self, agent_id: &str, req: CreateAction) -> Result<Action> {
        let agent = self.store().get_agent(agent_id, Utc::now()).await?;
        if !agent.active {
            return Err(ServiceError::Conflict(format!(
                "agent '{agent_id}' is unenrolled"
            )));
        }
        let action_type = req.action.action_type;
        let data = flotilla_domain::action::validate_data(action_type, &req.action.data)?;
        if let Some(exp) = req.action.expiration {
            if exp <= Utc::now() {
                return Err(
                    ValidationError::new("action.expiration", "must be in the future").into(),
                );
            }
        }
        match action_type {
            ActionType::Unenroll => {
                let action = new_action(agent_id, action_type, data, req.action.expiration);
                self.store()
                    .start_agent_unenrollment(agent_id, &action, Utc::now())
                    .await?;
                Ok(stored(action))
            }
            ActionType::PolicyReassign => {
                let policy_id = data["policy_id"].as_str().unwrap_or_default().to_owned();
                let (_, action) = self
                    .reassign(agent_id, &policy_id, req.action.expiration)
                    .await
                    .map_err(|e| match e {
                        ServiceError::Invalid(v) => {
                            ValidationError::new("action.data.policy_id", v.message).into()
                        }
                        other => other,
                    })?;
                Ok(action)
            }
            ActionType::Settings => {
                self.create_stored_action(agent_id, action_type, data, req.action.expiration)
                    .await
            }
        }
    }

    /// Requests unenrolment; with `revoke` the agent is unenrolled at once.
    pub async fn unenroll_agent(&self, id: &str, req: UnenrollAgent) -> Result<Agent> {
        let now = Utc::now();
        let agent = self.store().get_agent(id, now).await?;
        if agent.status == AgentStatus::Unenrolled {
            return Err(ServiceError::Conflict(format!(
                "agent '{id}' is already unenrolled"
            )));
        }
        if agent.unenrollment_started_at.is_some() && !req.revoke {
            return Err(ServiceError::Conflict(format!(
                "agent '{id}' is already unenrolling; pass revoke to unenroll it at once"
            )));
        }
        if req.revoke {
            // At once: inactive, and every key it holds invalidated.
            self.store().unenroll_now(id, now).await?;
            Ok(self.store().get_agent(id, now).await?)
        } else {
            let action = new_action(id, ActionType::Unenroll, serde_json::Value::Null, None);
            Ok(self
                .store()
                .start_agent_unenrollment(id, &action, now)
                .await?)
        }
    }
}

/// A new action for one agent.
fn new_action(
    agent_id: &str,
    action_type: ActionType,
    data: serde_json::Value,
    expiration: Option<chrono::DateTime<Utc>>,
) -> NewAction {
    NewAction {
        id: uuid::Uuid::new_v4().to_string(),
        action_type,
        data,
        created_at: Utc::now(),
        expiration,
        agent_ids: vec![agent_id.to_owned()],
    }
}

/// The action as stored.
fn stored(action: NewAction) -> Action {
    Action {
        id: action.id,
        action_type: action.action_type,
        data: action.data,
        created_at: action.created_at,
        expiration: action.expiration,
        agents: action.agent_ids,
    }
}
