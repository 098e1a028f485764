//! Enrolment: a new agent with its access key, in one transaction.

use chrono::Utc;
use serde_json::{json, Value};

use flotilla_domain::agent::validate_tags;
use flotilla_domain::validate_id;
use flotilla_store::{KeyKind, NewAgent, StoreError};

use super::*;
use crate::secrets::{ct_eq, hash_token};

impl Fleet<'_> {
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
}

pub(super) fn replace_token_hash(agent_id: &str, token: &str) -> String {
    hash_token(&format!("{agent_id}:{token}"))
}
