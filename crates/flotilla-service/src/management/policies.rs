//! Agent policies, and the full policy as agents receive it.

use chrono::Utc;

use flotilla_domain::policy::{
    self, AgentPolicy, AgentPolicyUpdate, NewAgentPolicy, DEFAULT_INACTIVITY_TIMEOUT_SECS,
};
use flotilla_domain::ValidationError;
use flotilla_store::{Page, Paged, PolicyFilter};

use crate::ServiceError;
use flotilla_api::management::*;

use super::*;

impl Management<'_> {
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
}
