//! Bulk actions over agents (by ids or by `kuery`) and their progress.

use serde_json::json;

use flotilla_api::management::{
    AgentSelection, BulkReassign, BulkSettings, BulkUnenroll, BulkUpdateTags,
};
use flotilla_domain::action::{validate_data, ActionProgress, ActionTarget, ActionType};
use flotilla_domain::agent::validate_tags;
use flotilla_domain::ValidationError;
use flotilla_store::{
    AgentFilter, BulkOperation, Entity, NewAction, Page, Paged, StoreError, BULK_CHUNK,
};

use crate::ServiceError;

use super::*;

/// The most ids one request may list (more: select them by `kuery`).
pub const MAX_BULK_IDS: usize = 10_000;

/// Targets, resolved: ids, or a filter read a chunk at a time.
enum Targets {
    Ids(Vec<String>),
    Query(Box<AgentFilter>),
}

impl Management<'_> {
    fn targets(&self, agents: AgentSelection) -> Result<Targets> {
        match agents {
            AgentSelection::Ids(mut ids) => {
                if ids.is_empty() {
                    return Err(ValidationError::new("agents", "must not be empty").into());
                }
                if ids.len() > MAX_BULK_IDS {
                    return Err(ValidationError::new(
                        "agents",
                        format!("at most {MAX_BULK_IDS} ids; select more with a kuery"),
                    )
                    .into());
                }
                ids.sort();
                ids.dedup();
                Ok(Targets::Ids(ids))
            }
            AgentSelection::Kuery(q) => {
                let Some(expr) = self.parse_kuery(&q)? else {
                    return Err(ValidationError::new(
                        "agents",
                        "an empty kuery would select every agent; say so with `status:*` or `id:*`",
                    )
                    .into());
                };
                Ok(Targets::Query(Box::new(AgentFilter {
                    kuery: Some(expr),
                    ..Default::default()
                })))
            }
        }
    }

    /// Create the action, then apply it a chunk of agents at a time (a
    /// query is read in id order, [`BULK_CHUNK`] ids per read, so the fleet
    /// is never in memory at once). Its id, to follow its progress.
    async fn bulk(
        &self,
        targets: Targets,
        action_type: ActionType,
        data: serde_json::Value,
        op: BulkOperation,
    ) -> Result<String> {
        let now = self.services.now();
        let action = NewAction {
            id: uuid::Uuid::new_v4().to_string(),
            action_type,
            data,
            created_at: now,
            expiration: None,
            agent_ids: vec![],
        };
        self.store().create_action(&action).await?;
        let apply = |chunk: Vec<String>| {
            let op = &op;
            let id = &action.id;
            async move {
                self.store()
                    .apply_bulk_action(id, op, &chunk, self.services.now())
                    .await
                    .map_err(|e| match e {
                        e @ StoreError::NotFound {
                            entity: Entity::AgentPolicy,
                            ..
                        } => ServiceError::invalid_reference("policy_id", e),
                        other => other.into(),
                    })
            }
        };
        let mut applied = 0;
        let mut total = 0;
        match targets {
            Targets::Ids(ids) => {
                for chunk in ids.chunks(BULK_CHUNK) {
                    total += chunk.len();
                    applied += apply(chunk.to_vec()).await?;
                }
            }
            Targets::Query(filter) => {
                let mut after: Option<String> = None;
                loop {
                    let chunk = self
                        .store()
                        .agent_ids(&filter, after.as_deref(), BULK_CHUNK as u32, now)
                        .await?;
                    let Some(last) = chunk.last().cloned() else {
                        break;
                    };
                    total += chunk.len();
                    applied += apply(chunk).await?;
                    after = Some(last);
                }
            }
        }
        tracing::info!(
            action_id = action.id,
            action_type = action_type.as_str(),
            total,
            applied,
            "bulk action created"
        );
        Ok(action.id)
    }

    pub async fn bulk_reassign(&self, req: BulkReassign) -> Result<String> {
        // Refused before anything is written when the policy is missing.
        self.store()
            .get_policy(&req.policy_id)
            .await
            .map_err(|e| ServiceError::invalid_reference("policy_id", e))?;
        let targets = self.targets(req.agents)?;
        self.bulk(
            targets,
            ActionType::PolicyReassign,
            json!({"policy_id": req.policy_id}),
            BulkOperation::Reassign {
                policy_id: req.policy_id,
            },
        )
        .await
    }

    pub async fn bulk_unenroll(&self, req: BulkUnenroll) -> Result<String> {
        let targets = self.targets(req.agents)?;
        self.bulk(
            targets,
            ActionType::Unenroll,
            serde_json::Value::Null,
            BulkOperation::Unenroll { revoke: req.revoke },
        )
        .await
    }

    pub async fn bulk_update_tags(&self, req: BulkUpdateTags) -> Result<String> {
        let add = validate_tags(&req.tags_to_add)
            .map_err(|e| ValidationError::new("tagsToAdd", e.message))?;
        let remove = validate_tags(&req.tags_to_remove)
            .map_err(|e| ValidationError::new("tagsToRemove", e.message))?;
        if add.is_empty() && remove.is_empty() {
            return Err(ValidationError::new(
                "tagsToAdd",
                "tagsToAdd or tagsToRemove must name a tag",
            )
            .into());
        }
        let targets = self.targets(req.agents)?;
        self.bulk(
            targets,
            ActionType::UpdateTags,
            json!({"tagsToAdd": add, "tagsToRemove": remove}),
            BulkOperation::UpdateTags { add, remove },
        )
        .await
    }

    pub async fn bulk_settings(&self, req: BulkSettings) -> Result<String> {
        let data = validate_data(ActionType::Settings, &json!({"log_level": req.log_level}))
            .map_err(|e| ValidationError::new("log_level", e.message))?;
        let targets = self.targets(req.agents)?;
        self.bulk(targets, ActionType::Settings, data, BulkOperation::Settings)
            .await
    }

    /// Actions, newest first, with their agents' progress.
    pub async fn action_status(&self, page: Page) -> Result<Paged<ActionProgress>> {
        Ok(self
            .store()
            .action_progress(page, self.services.now())
            .await?)
    }

    pub async fn get_action_status(&self, id: &str) -> Result<ActionProgress> {
        Ok(self
            .store()
            .get_action_progress(id, self.services.now())
            .await?)
    }

    /// One action's agents and their outcomes.
    pub async fn action_agents(&self, id: &str, page: Page) -> Result<Paged<ActionTarget>> {
        Ok(self.store().action_targets(id, page).await?)
    }
}
