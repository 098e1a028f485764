//! Enrolment: a new agent with its access key, in one transaction (shared
//! with the enrolments queued at the same time: group commit).

use serde_json::{json, Value};

use flotilla_domain::agent::validate_tags;
use flotilla_domain::validate_id;
use flotilla_store::{Enrolment, KeyKind, NewAgent, StoreError};

use super::*;
use crate::secrets::{ct_eq, hash_token};

/// An enrolment body that passed validation.
struct ValidEnrolment {
    version: String,
    enroll_type: String,
    /// Deduplicated and sorted.
    tags: Vec<String>,
    local: Value,
    user_provided: Value,
    requested_id: Option<String>,
    replace_token: Option<String>,
    enrollment_id: Option<String>,
}

fn validate(
    user_agent: Option<&str>,
    body: EnrollRequest,
    server_version: &str,
) -> Result<ValidEnrolment> {
    let version = check_user_agent(user_agent, server_version)?;
    let enroll_type = body.enroll_type.to_uppercase();
    if !["PERMANENT", "EPHEMERAL", "TEMPORARY"].contains(&enroll_type.as_str()) {
        return Err(FleetError::bad(format!(
            "invalid enrollment type '{}'",
            body.enroll_type
        )));
    }
    let mut tags =
        validate_tags(&body.metadata.tags).map_err(|e| FleetError::bad(e.to_string()))?;
    tags.sort();
    tags.dedup();
    let local = match body.metadata.local {
        Value::Null => json!({}),
        Value::Object(m) => Value::Object(m),
        _ => return Err(FleetError::bad("metadata.local must be an object")),
    };
    let requested_id = nonempty(body.id);
    if let Some(id) = &requested_id {
        validate_id("id", id).map_err(|e| FleetError::bad(e.to_string()))?;
    }
    Ok(ValidEnrolment {
        version,
        enroll_type,
        tags,
        local,
        user_provided: match body.metadata.user_provided {
            Value::Null => json!({}),
            v => v,
        },
        requested_id,
        replace_token: nonempty(body.replace_token),
        enrollment_id: nonempty(body.enrollment_id),
    })
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

impl Fleet<'_> {
    /// Enrol an agent into the policy `grant` allows: validate, settle
    /// which agent (if any) it replaces, mint its access key and record it
    /// with the key in one transaction.
    pub async fn enroll(
        &self,
        grant: EnrollGrant,
        user_agent: Option<&str>,
        body: EnrollRequest,
    ) -> Result<EnrollResponse> {
        let EnrollGrant {
            policy_id,
            key_id,
            key_use,
        } = grant;
        let mut e = validate(user_agent, body, &self.settings.server_version)?;
        let (agent_id, replace) = self.identity(&e, &policy_id).await?;
        if let Some(obj) = e
            .local
            .pointer_mut("/elastic/agent")
            .and_then(Value::as_object_mut)
        {
            obj.insert("id".into(), Value::String(agent_id.clone()));
        }
        let now = self.now();
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
            tags: e.tags.clone(),
            local_metadata: e.local.clone(),
            enrolled_at: now,
            access_api_key_id: Some(access.record.id.clone()),
            enrollment_id: e.enrollment_id.clone(),
            replace_token_hash: e
                .replace_token
                .as_ref()
                .map(|t| replace_token_hash(&agent_id, t)),
            enroll_type: Some(e.enroll_type.clone()),
            agent_version: Some(e.version.clone()),
            enrollment_api_key_id: key_id,
        };
        let enrolment = Enrolment {
            agent: new,
            access_key: access.record.clone(),
            replace: replace.into_iter().collect(),
            key_use,
        };
        self.enrolments
            .run(&self.store, enrolment, now)
            .await
            .and_then(|r| r)
            .map_err(|err| match err {
                StoreError::InUse(msg) => FleetError::new(FleetErrorKind::AgentNotReplaceable, msg),
                StoreError::Conflict(_) => FleetError::new(
                    FleetErrorKind::EnrollDuplicate,
                    "a concurrent enrolment for the same agent is in progress; retry",
                ),
                StoreError::NotFound { .. } => FleetError::new(
                    FleetErrorKind::PolicyNotFound,
                    format!(
                        "agent policy '{policy_id}' does not exist yet; retry once it is created"
                    ),
                ),
                other => other.into(),
            })?;
        self.checkins.forget(&agent_id);
        tracing::info!(agent_id, policy_id, "agent enrolled");
        Ok(EnrollResponse {
            action: "created",
            item: EnrollItem {
                id: agent_id,
                active: true,
                policy_id,
                enroll_type: e.enroll_type,
                enrolled_at: now,
                user_provided_metadata: e.user_provided,
                local_metadata: e.local,
                access_api_key_id: access.record.id.clone(),
                access_api_key: access.encoded(),
                status: "online".into(),
                tags: e.tags,
            },
        })
    }

    /// The new agent's id, and the agent it replaces: with `id`, an
    /// existing active agent is replaced only with its replace token and on
    /// the same policy (an inactive one always); without, a fresh id. (A
    /// same-`enrollment_id` agent is settled by the store, in the
    /// enrolment's transaction.)
    async fn identity(
        &self,
        e: &ValidEnrolment,
        policy_id: &str,
    ) -> Result<(String, Option<String>)> {
        let Some(id) = e.requested_id.clone() else {
            return Ok((uuid::Uuid::new_v4().to_string(), None));
        };
        let Some(existing) = self.store.get_fleet_agent(&id).await? else {
            return Ok((id, None));
        };
        if existing.active {
            let verified = match (&existing.replace_token_hash, &e.replace_token) {
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
        Ok((id.clone(), Some(id)))
    }
}

pub(super) fn replace_token_hash(agent_id: &str, token: &str) -> String {
    hash_token(&format!("{agent_id}:{token}"))
}
