//! The agent's POLICY_CHANGE with its own output key: minted, rotated, retired.

use chrono::Utc;
use serde_json::{json, Value};

use flotilla_store::{FleetAgent, OutputKeyChange};

use crate::keys::remote::OutputKeyBackend;

use super::*;

impl Fleet<'_> {
    /// A `POLICY_CHANGE` for the agent when it is behind (or its key no
    /// longer matches the policy's permissions), with its own output key.
    /// `current` is the policy's revision as just read (`None`: deleted).
    pub(super) async fn policy_change_for(
        &self,
        agent: &FleetAgent,
        reported: Option<i64>,
        current: Option<i64>,
    ) -> Result<Option<CheckinAction>> {
        let Some(current) = current else {
            // The policy was deleted under the agent: nothing to send.
            self.forget_policy(&agent.policy_id);
            return Ok(None);
        };
        let policy = match self.cached_policy_at(&agent.policy_id, current).await {
            Ok(p) => p,
            // The policy was deleted under the agent: nothing to send.
            Err(crate::ServiceError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // What it runs: as reported (so a restored agent is re-sent what it
        // lost), else as acked; a revision the policy never had counts as 0.
        let known = match reported {
            Some(r) if r <= policy.revision => r,
            Some(_) => 0,
            None => agent.policy_revision.unwrap_or(0),
        };
        let key_current = if policy.takes_api_key {
            agent.output_api_key_id.is_some()
                && agent.output_permissions_hash.as_deref()
                    == Some(policy.permissions_hash.as_str())
        } else {
            agent.output_api_key_id.is_none()
        };
        if known >= policy.revision && key_current {
            return Ok(None);
        }
        if !policy.takes_api_key {
            // An output that takes no key: the key the agent held for an
            // earlier output is retired once it runs this revision.
            if let Some(key_id) = &agent.output_api_key_id {
                self.store
                    .retire_output_key(
                        &agent.id,
                        key_id,
                        &policy.policy_id,
                        policy.revision,
                        Utc::now(),
                    )
                    .await?;
            }
            if known >= policy.revision {
                return Ok(None);
            }
            return Ok(Some(CheckinAction::PolicyChange {
                template: policy.change.clone(),
                agent_id: agent.id.clone(),
                credential: None,
            }));
        }
        let credential = match self.current_output_key(agent, key_current).await? {
            Some(plain) => plain,
            None => self.rotate_output_key(agent, &policy).await?,
        };
        Ok(Some(CheckinAction::PolicyChange {
            template: policy.change.clone(),
            agent_id: agent.id.clone(),
            credential: Some(credential),
        }))
    }

    /// The agent's current output key (`id:secret`), if it still fits the
    /// policy and has not been invalidated.
    pub(super) async fn current_output_key(
        &self,
        agent: &FleetAgent,
        fits: bool,
    ) -> Result<Option<String>> {
        let (Some(key_id), Some(sealed), true) = (
            agent.output_api_key_id.as_deref(),
            agent.output_api_key_sealed.as_deref(),
            fits,
        ) else {
            return Ok(None);
        };
        match self.store.get_api_key(key_id).await? {
            Some(k) if k.invalidated_at.is_none() => {}
            _ => return Ok(None),
        }
        let plain = self.sealer.open(sealed, &output_key_aad(&agent.id, key_id)).map_err(|e| {
            tracing::error!(agent_id = %agent.id, error = %e, "cannot open the agent's output key");
            FleetError::new(FleetErrorKind::Internal, "internal error")
        })?;
        String::from_utf8(plain)
            .map(Some)
            .map_err(|_| FleetError::new(FleetErrorKind::Internal, "internal error"))
    }

    /// Mint the agent a key with exactly the policy's permissions; the old
    /// one stays valid until the agent runs this revision. When another
    /// check-in of the same agent rotated first, its key is used.
    pub(super) async fn rotate_output_key(
        &self,
        agent: &FleetAgent,
        policy: &CachedPolicy,
    ) -> Result<String> {
        let excess = self.settings.ceiling.excess(&policy.permissions);
        if !excess.is_empty() {
            tracing::error!(policy_id = %policy.policy_id, ?excess, "policy exceeds the grant ceiling; no key minted");
            return Err(FleetError::new(
                FleetErrorKind::Internal,
                "the policy's permissions exceed what this server may grant",
            ));
        }
        let name = format!("{}:{}", agent.id, policy.output_id);
        let metadata = json!({"agent_id": agent.id, "managed": true, "type": "output", "output_name": policy.output_id,
                              "policy_id": policy.policy_id});
        let keys = self.keys();
        let backend = OutputKeyBackend::for_output(&keys, policy.remote.as_ref());
        let (record, plain) = match backend
            .mint(&name, &agent.id, &policy.permissions, metadata)
            .await
        {
            Ok(minted) => minted,
            Err(e) => {
                // Never an agent without a key: it keeps the one it has
                // (with its earlier permissions) until a mint succeeds.
                metrics::counter!("flotilla_remote_key_errors_total").increment(1);
                tracing::error!(agent_id = %agent.id, output_id = %policy.output_id, error = %e,
                    "could not mint the agent's output key; it keeps its current key");
                if let Err(se) = self
                    .store
                    .set_output_key_error(&agent.id, &e.to_string())
                    .await
                {
                    tracing::warn!(error = %se, "could not record the key error");
                }
                // Revision R is held back until its key exists, so no ack
                // or report of R retires the key the agent runs on.
                return Err(FleetError::new(
                    FleetErrorKind::Unavailable,
                    "the output's cluster cannot mint the agent's key yet; retry",
                ));
            }
        };
        let change = OutputKeyChange {
            sealed_secret: self
                .sealer
                .seal(plain.as_bytes(), &output_key_aad(&agent.id, &record.id)),
            key: record,
            replaces: agent.output_api_key_id.clone(),
            permissions_hash: policy.permissions_hash.clone(),
            policy_id: policy.policy_id.clone(),
            revision: policy.revision,
        };
        let minted_id = change.key.id.clone();
        let rotation = super::KeyRotation {
            agent_id: agent.id.clone(),
            change,
        };
        match self
            .key_rotations
            .run(&self.store, rotation, Utc::now())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                // Another check-in rotated first: this key is not used.
                backend.discard(&minted_id).await;
                let winner = self.store.get_fleet_agent(&agent.id).await?;
                let fits = winner.as_ref().is_some_and(|w| {
                    w.active
                        && w.output_permissions_hash.as_deref()
                            == Some(policy.permissions_hash.as_str())
                });
                return match winner {
                    Some(w) if fits => self.current_output_key(&w, true).await?.ok_or_else(|| {
                        FleetError::new(
                            FleetErrorKind::Unavailable,
                            "output key changed concurrently; retry",
                        )
                    }),
                    Some(w) if !w.active => Err(FleetError::new(
                        FleetErrorKind::AgentInactive,
                        "Agent inactive",
                    )),
                    _ => Err(FleetError::new(
                        FleetErrorKind::Unavailable,
                        "output key changed concurrently; retry",
                    )),
                };
            }
            Err(e) => {
                backend.discard(&minted_id).await;
                return Err(e.into());
            }
        }
        tracing::info!(agent_id = %agent.id, policy_id = %policy.policy_id, revision = policy.revision, "output key minted");
        Ok(plain)
    }
}

/// A revision's POLICY_CHANGE action for one agent.
pub(super) fn policy_change_action(
    policy_id: &str,
    revision: i64,
    updated_at: chrono::DateTime<Utc>,
    agent_id: &str,
    document: Value,
) -> Value {
    json!({
        "id": format!("policy:{policy_id}:{revision}"),
        "agent_id": agent_id,
        "created_at": updated_at,
        "type": "POLICY_CHANGE",
        "input_type": "",
        "data": { "policy": document },
    })
}

pub fn output_key_aad(agent_id: &str, key_id: &str) -> String {
    format!("agents.output_api_key:{agent_id}:{key_id}")
}

pub(super) fn escape_pointer(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}
