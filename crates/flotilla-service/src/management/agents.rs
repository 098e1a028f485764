//! Agents: listing, tags, reassignment, actions and unenrolment.

use chrono::Utc;
use serde_json::json;

use flotilla_domain::action::{Action, ActionType};
use flotilla_store::NewAction;

use flotilla_domain::agent::{validate_tags, Agent, AgentStatus};
use flotilla_domain::ValidationError;
use flotilla_store::{AgentFilter, Entity, Page, Paged, StoreError};

use crate::ServiceError;
use flotilla_api::management::*;

use super::*;

impl Management<'_> {
    pub async fn get_agent(&self, id: &str) -> Result<Agent> {
        Ok(self.store().get_agent(id, self.services.now()).await?)
    }

    /// Agents by filter; statuses (and a kuery's relative times, see
    /// [`Management::parse_kuery`]) are judged at the services' clock.
    pub async fn list_agents(&self, filter: &AgentFilter, page: Page) -> Result<Paged<Agent>> {
        Ok(self
            .store()
            .list_agents(filter, page, self.services.now())
            .await?)
    }

    /// A `kuery` (Kibana's KQL over agent fields) as a filter: `None` when
    /// blank; a 400 naming the position and the field otherwise.
    pub fn parse_kuery(&self, raw: &str) -> Result<Option<flotilla_domain::kuery::Expr>> {
        flotilla_domain::kuery::parse(raw, self.services.now()).map_err(|e| {
            ServiceError::Invalid(ValidationError::new(
                "kuery",
                format!("at position {}: {}", e.position, e.message),
            ))
        })
    }

    pub async fn update_agent(&self, id: &str, req: UpdateAgent) -> Result<Agent> {
        let tags = validate_tags(&req.tags)?;
        Ok(self.store().set_agent_tags(id, &tags, Utc::now()).await?)
    }

    pub async fn reassign_agent(&self, id: &str, req: ReassignAgent) -> Result<Agent> {
        Ok(self.reassign(id, &req.policy_id, None).await?.0)
    }

    /// Move the agent and record a `POLICY_REASSIGN` action for it.
    pub(super) async fn reassign(
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

    pub(super) async fn create_stored_action(
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
            // validate_data refuses it.
            ActionType::UpdateTags => Err(ValidationError::new(
                "action.type",
                "UPDATE_TAGS is made by bulk_update_agent_tags",
            )
            .into()),
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
pub(super) fn new_action(
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
pub(super) fn stored(action: NewAction) -> Action {
    Action {
        id: action.id,
        action_type: action.action_type,
        data: action.data,
        created_at: action.created_at,
        expiration: action.expiration,
        agents: action.agent_ids,
    }
}
